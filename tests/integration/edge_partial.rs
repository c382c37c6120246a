//! Partial objects (RFC 9111 3.3-3.4): `206`s from an origin that answers only ranges are
//! stored, ranges inside them are hits, and the object is completed with one ranged
//! request for what is missing; two versions are never stitched together, and purges
//! reach partial objects as they reach complete ones.
//!
//! "Answers only ranges" here: a request with a single `Range` gets `206` with exactly
//! that span (ignoring `If-Range`, as the simplest range servers do, so the edge itself
//! must notice a changed validator); a request without `Range` gets `206` of the first
//! [`CHUNK`] bytes, as range-only streaming servers do.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edge::EdgeServer;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use node_api::purge::{Mode, Purge, PurgeBatch, Selector, SequencedPurge};
use support::{HOST, Reply, config, loopback};
use tokio::net::TcpListener;

const TARGET: &str = "/part.bin";
const LEN: usize = 10_000;
/// What the origin sends for a request without `Range`.
const CHUNK: usize = 1000;

/// The bytes of version `v` of the object: every byte differs between versions.
fn object(v: u64) -> Vec<u8> {
    (0..LEN as u64)
        .map(|i| ((i * 7 + v * 13) % 251) as u8)
        .collect()
}

/// What the origin saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    range: Option<String>,
    if_range: Option<String>,
}

#[derive(Default)]
struct OriginState {
    seen: Mutex<Vec<Seen>>,
    version: AtomicU64,
}

/// An origin that answers only ranges (see the module docs), recording every request.
struct RangeOrigin {
    addr: SocketAddr,
    state: Arc<OriginState>,
}

impl RangeOrigin {
    async fn start() -> Self {
        let listener = TcpListener::bind(loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(OriginState::default());
        state.version.store(1, Ordering::SeqCst);
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    fn requests(&self) -> usize {
        self.state.seen.lock().expect("lock").len()
    }

    fn last_range(&self) -> Option<String> {
        self.seen().last().and_then(|seen| seen.range.clone())
    }

    /// The next requests get version 2 (another ETag, other bytes).
    fn bump(&self) {
        self.state.version.store(2, Ordering::SeqCst);
    }
}

fn answer(state: &OriginState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |name| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
    };
    let seen = Seen {
        range: text(http::header::RANGE),
        if_range: text(http::header::IF_RANGE),
    };
    state.seen.lock().expect("lock").push(seen.clone());
    let version = state.version.load(Ordering::SeqCst);
    let body = object(version);
    let (first, last) = match seen.range.as_deref().map(single_range) {
        None => (0, CHUNK - 1),
        Some(Some(span)) => span,
        Some(None) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("content-range", format!("bytes */{LEN}"))
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
    };
    let total = if req.uri().path().contains("unknown-length") {
        "*".to_owned()
    } else {
        LEN.to_string()
    };
    let vary = if req.uri().path().contains("vary") {
        "accept-language"
    } else {
        "accept-encoding"
    };
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("vary", vary)
        .header("cache-control", "max-age=60")
        .header("etag", format!("\"v{version}\""))
        .header("accept-ranges", "bytes")
        .header("content-type", "application/octet-stream")
        .header("surrogate-key", "part")
        .header("content-range", format!("bytes {first}-{last}/{total}"))
        .body(Full::new(Bytes::copy_from_slice(&body[first..=last])))
        .expect("response")
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` within the object.
fn single_range(value: &str) -> Option<(usize, usize)> {
    let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    let span = match (first, last) {
        ("", n) => (LEN - n.parse::<usize>().ok()?.min(LEN), LEN - 1),
        (a, "") => (a.parse().ok()?, LEN - 1),
        (a, b) => (a.parse().ok()?, b.parse::<usize>().ok()?.min(LEN - 1)),
    };
    (span.0 <= span.1).then_some(span)
}

struct Partial {
    origin: RangeOrigin,
    edge: EdgeServer,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Partial {
    /// The range-only origin and an edge whose site has `site_extra`.
    async fn start(site_extra: &str) -> Self {
        let origin = RangeOrigin::start().await;
        let edge = EdgeServer::start(config(origin.addr, "", site_extra))
            .await
            .expect("edge starts");
        Self {
            origin,
            edge,
            client: support::client(),
        }
    }

    async fn forwarding() -> Self {
        Self::start("range_miss = \"forward\"").await
    }

    async fn get(&self, target: &str, headers: &[(&str, &str)]) -> Reply {
        support::send(
            &self.client,
            self.edge.public_addr(),
            Method::GET,
            target,
            HOST,
            headers,
        )
        .await
    }

    async fn range(&self, first: usize, last: usize) -> Reply {
        self.get(TARGET, &[("range", &format!("bytes={first}-{last}"))])
            .await
    }

    /// Applies purge `seq` with `selector` on the edge, as the purge API would push it.
    fn purge(&self, seq: u64, selector: Selector) {
        let batch = PurgeBatch {
            purges: vec![SequencedPurge {
                seq,
                purge: Purge {
                    site: "assets".into(),
                    selector,
                    mode: Mode::Hard,
                },
            }],
        };
        self.edge.edge().apply_purges(&batch).expect("in sequence");
    }
}

/// A `206` of bytes `first..=last` of version `v`, as the edge should send it.
fn assert_span(reply: &Reply, first: usize, last: usize, v: u64) {
    assert_eq!(
        reply.status,
        StatusCode::PARTIAL_CONTENT,
        "{}",
        reply.text()
    );
    assert_eq!(
        reply.header("content-range"),
        format!("bytes {first}-{last}/{LEN}")
    );
    assert_eq!(reply.header("etag"), format!("\"v{v}\""));
    assert!(
        reply.body[..] == object(v)[first..=last],
        "bytes {first}-{last} of version {v}"
    );
}

fn is_hit(reply: &Reply) -> bool {
    reply.cache_status().contains("; hit")
}

/// Stores bytes 0-999 and 6000-9999 of version 1: the gap is 1000-5999.
async fn two_spans(p: &Partial) {
    let first = p.range(0, 999).await;
    assert_span(&first, 0, 999, 1);
    assert!(
        first.cache_status().contains("fwd=uri-miss") && first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = p.range(6000, LEN - 1).await;
    assert_span(&second, 6000, LEN - 1, 1);
    assert!(
        second.cache_status().contains("stored"),
        "{}",
        second.cache_status()
    );
    assert_eq!(
        p.origin.seen(),
        [
            Seen {
                range: Some("bytes=0-999".into()),
                if_range: None
            },
            // The URL is partially held now: its bytes are asked for under its validator.
            Seen {
                range: Some("bytes=6000-9999".into()),
                if_range: Some("\"v1\"".into()),
            },
        ],
        "each range asked for as the client asked"
    );
}

#[tokio::test]
async fn two_disjoint_206s_are_stored_and_ranges_inside_each_are_hits() {
    let p = Partial::forwarding().await;
    two_spans(&p).await;
    for (first, last) in [(100, 199), (0, 999), (7000, 7099), (LEN - 10, LEN - 1)] {
        let reply = p.range(first, last).await;
        assert_span(&reply, first, last, 1);
        assert!(is_hit(&reply), "{first}-{last}: {}", reply.cache_status());
    }
    let suffix = p.get(TARGET, &[("range", "bytes=-10")]).await;
    assert_span(&suffix, LEN - 10, LEN - 1, 1);
    // Two ranges, one in each span: a multipart answer from the cache.
    let both = p.get(TARGET, &[("range", "bytes=0-9, 9000-9009")]).await;
    assert_eq!(both.status, StatusCode::PARTIAL_CONTENT);
    assert!(is_hit(&both), "{}", both.cache_status());
    assert!(
        both.header("content-type")
            .starts_with("multipart/byteranges"),
        "{}",
        both.header("content-type")
    );
    let v1 = object(1);
    assert!(both.body.windows(10).any(|w| w == &v1[..10]));
    assert!(both.body.windows(10).any(|w| w == &v1[9000..9010]));
    // HEAD is answered from the object's head: the complete length.
    let head = support::send(
        &p.client,
        p.edge.public_addr(),
        Method::HEAD,
        TARGET,
        HOST,
        &[],
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), LEN.to_string());
    assert_eq!(p.origin.requests(), 2, "every answer came from the cache");
}

#[tokio::test]
async fn a_full_get_completes_the_object_with_one_range_request_for_the_gap() {
    let p = Partial::forwarding().await;
    two_spans(&p).await;
    let whole = p.get(TARGET, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.header("content-length"), LEN.to_string());
    assert!(whole.body[..] == object(1)[..], "the object, stitched");
    assert!(
        whole.cache_status().contains("fwd=partial") && whole.cache_status().contains("stored"),
        "{}",
        whole.cache_status()
    );
    assert_eq!(p.origin.requests(), 3, "one request for the missing part");
    assert_eq!(
        p.origin.seen()[2],
        Seen {
            range: Some("bytes=1000-5999".into()),
            if_range: Some("\"v1\"".into()),
        }
    );
    // Complete: a normal stored 200 (the fast path serves it), ranges anywhere are hits.
    let again = p.get(TARGET, &[]).await;
    assert!(is_hit(&again), "{}", again.cache_status());
    assert!(again.body[..] == object(1)[..]);
    let across = p.range(500, 6500).await;
    assert_span(&across, 500, 6500, 1);
    assert!(is_hit(&across));
    assert_eq!(p.origin.requests(), 3, "nothing more fetched");
}

#[tokio::test]
async fn a_range_across_the_gap_asks_only_for_the_gap() {
    let p = Partial::forwarding().await;
    two_spans(&p).await;
    let across = p.range(500, 6500).await;
    assert_span(&across, 500, 6500, 1);
    assert!(
        across.cache_status().contains("fwd=partial"),
        "{}",
        across.cache_status()
    );
    assert_eq!(p.origin.requests(), 3);
    assert_eq!(p.origin.last_range().as_deref(), Some("bytes=1000-5999"));
    // That filled the only gap: the object is complete.
    let whole = p.get(TARGET, &[]).await;
    assert!(is_hit(&whole), "{}", whole.cache_status());
    assert!(whole.body[..] == object(1)[..]);
    assert_eq!(p.origin.requests(), 3);
}

#[tokio::test]
async fn bytes_of_two_versions_are_never_stitched_together() {
    let p = Partial::forwarding().await;
    two_spans(&p).await;
    p.origin.bump();
    // The completion asks for the gap under v1's ETag; this origin answers with v2's
    // bytes anyway. The edge must not combine them with v1's spans.
    let whole = p.get(TARGET, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.header("etag"), "\"v2\"");
    assert!(
        whole.body[..] == object(2)[..],
        "all of version 2, nothing of 1"
    );
    assert_eq!(p.origin.seen()[2].if_range.as_deref(), Some("\"v1\""));
    let again = p.get(TARGET, &[]).await;
    assert!(is_hit(&again), "{}", again.cache_status());
    assert!(again.body[..] == object(2)[..]);
}

#[tokio::test]
async fn a_206_with_another_validator_replaces_the_partial_object() {
    let p = Partial::forwarding().await;
    let old = p.range(0, 999).await;
    assert_span(&old, 0, 999, 1);
    let inside = p.range(100, 199).await;
    assert!(is_hit(&inside), "{}", inside.cache_status());
    p.origin.bump();
    let new = p.range(2000, 2999).await;
    assert_span(&new, 2000, 2999, 2);
    assert!(
        new.cache_status().contains("stored"),
        "{}",
        new.cache_status()
    );
    // Version 1's span is gone: asked for again, and answered with version 2.
    let again = p.range(100, 199).await;
    assert_span(&again, 100, 199, 2);
    assert!(!is_hit(&again), "{}", again.cache_status());
    assert_eq!(p.origin.requests(), 3);
}

#[tokio::test]
async fn purges_remove_partial_objects_like_complete_ones() {
    let p = Partial::forwarding().await;
    let selectors = [
        Selector::Urls(vec![format!("http://{HOST}{TARGET}")]),
        Selector::Prefixes(vec![format!("http://{HOST}/par")]),
        Selector::Tags(vec!["part".into()]),
        Selector::Hosts(vec![HOST.into()]),
        Selector::Everything,
    ];
    for (seq, selector) in (1..).zip(selectors) {
        let kind = selector.kind();
        let before = p.origin.requests();
        p.range(0, 999).await;
        let hit = p.range(0, 99).await;
        assert!(is_hit(&hit), "{kind}: stored first");
        p.purge(seq, selector);
        let after = p.range(0, 99).await;
        assert_span(&after, 0, 99, 1);
        assert!(!is_hit(&after), "{kind}: {}", after.cache_status());
        assert_eq!(p.origin.requests(), before + 2, "{kind}: fetched again");
    }
}

#[tokio::test]
async fn an_origin_answering_a_whole_request_with_a_206_is_learnt_from() {
    // The default site: range misses fetch whole objects; this origin answers 206 anyway.
    let p = Partial::start("").await;
    let whole = p.get(TARGET, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body[..] == object(1)[..]);
    assert_eq!(
        p.origin.seen(),
        [
            Seen {
                range: None,
                if_range: None
            },
            Seen {
                range: Some(format!("bytes={CHUNK}-{}", LEN - 1)),
                if_range: Some("\"v1\"".into()),
            },
        ]
    );
    let again = p.get(TARGET, &[]).await;
    assert!(is_hit(&again), "{}", again.cache_status());
    assert_eq!(p.origin.requests(), 2);
}

#[tokio::test]
async fn a_206_of_unknown_length_is_passed_through_and_not_stored() {
    let p = Partial::forwarding().await;
    let target = "/unknown-length.bin";
    for n in 1..=2 {
        let reply = p.get(target, &[("range", "bytes=0-99")]).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(reply.header("content-range"), "bytes 0-99/*");
        assert_eq!(reply.body.len(), 100);
        assert!(
            reply.cache_status().contains("detail=content-range"),
            "{}",
            reply.cache_status()
        );
        assert_eq!(p.origin.requests(), n);
    }
}

#[tokio::test]
async fn partial_objects_are_kept_per_variant_and_purged_with_their_url() {
    let p = Partial::forwarding().await;
    let target = "/vary/part.bin";
    let ranged = |lang: &'static str, range: &'static str| {
        let p = &p;
        async move {
            p.get(target, &[("accept-language", lang), ("range", range)])
                .await
        }
    };
    let en = ranged("en", "bytes=0-999").await;
    assert_eq!(en.status, StatusCode::PARTIAL_CONTENT);
    assert!(
        en.cache_status().contains("stored"),
        "{}",
        en.cache_status()
    );
    assert!(is_hit(&ranged("en", "bytes=0-99").await));
    // Another variant is not answered from the first one's bytes.
    let fr = ranged("fr", "bytes=0-99").await;
    assert!(
        fr.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr.cache_status()
    );
    assert!(is_hit(&ranged("fr", "bytes=0-99").await));
    assert_eq!(p.origin.requests(), 2);
    // A purge of the URL reaches every variant.
    p.purge(1, Selector::Urls(vec![format!("http://{HOST}{target}")]));
    for lang in ["en", "fr"] {
        let after = ranged(lang, "bytes=0-99").await;
        assert!(!is_hit(&after), "{lang}: {}", after.cache_status());
    }
    assert_eq!(p.origin.requests(), 4);
}
