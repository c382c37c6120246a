//! Requests with `Authorization` (RFC 9111 3.5): a response that says it may be shared
//! (`public`, `s-maxage`, `must-revalidate`) is stored and answers everyone while fresh;
//! anything else stays the one client's, leaves nothing behind, and is never handed to
//! another request; fetches the cache makes on its own never carry anyone's credentials.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use http::{Method, StatusCode};
use support::NODE;
use support::scripted::{Scripted, Seen, response};

/// Who asked: the credentials a request carried, or `anonymous`.
fn asker(seen: &Seen) -> String {
    seen.header("authorization")
        .unwrap_or("anonymous")
        .to_owned()
}

#[tokio::test]
async fn a_shareable_response_to_credentials_is_stored_and_answers_everyone() {
    let h = Scripted::start("", "", |seen| {
        let cc = match seen.target.as_str() {
            "/public" => "public, max-age=60",
            "/s-maxage" => "s-maxage=60",
            _ => "max-age=60, must-revalidate",
        };
        response(200, &[("cache-control", cc), ("etag", "\"v1\"")], "shared")
    })
    .await;
    for target in ["/public", "/s-maxage", "/must-revalidate"] {
        let first = h.get(target, &[("authorization", "Bearer alice")]).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(
            first.cache_status(),
            format!("{NODE}; fwd=uri-miss; fwd-status=200; stored"),
            "{target}"
        );
        for others in [&[("authorization", "Bearer bob")][..], &[]] {
            let reply = h.get(target, others).await;
            assert!(
                reply.cache_status().starts_with(&format!("{NODE}; hit")),
                "{target} {others:?}: {}",
                reply.cache_status()
            );
            assert_eq!(&reply.body[..], b"shared");
        }
        assert_eq!(h.origin.count(target), 1, "{target}");
    }
    // The fill asked with the credentials of the request it was for.
    for seen in h.origin.seen() {
        assert_eq!(seen.header("authorization"), Some("Bearer alice"));
    }
}

#[tokio::test]
async fn a_response_not_shareable_with_credentials_leaves_nothing_behind() {
    // With credentials: `private`, or freshness without a word about sharing. Without:
    // storable.
    let h = Scripted::start("", "", |seen| {
        let who = asker(seen);
        let cc = match (seen.target.as_str(), who.as_str()) {
            (_, "anonymous") => "max-age=60",
            ("/private", _) => "private, max-age=60",
            _ => "max-age=60",
        };
        response(200, &[("cache-control", cc)], &who)
    })
    .await;
    for (target, reason) in [("/private", "private"), ("/plain", "authorization")] {
        let mine = h.get(target, &[("authorization", "Bearer alice")]).await;
        assert_eq!(&mine.body[..], b"Bearer alice");
        assert_eq!(
            mine.cache_status(),
            format!("{NODE}; fwd=uri-miss; fwd-status=200; detail={reason}")
        );
        // No entry and no hit-for-pass marker: a request without credentials is stored.
        let anonymous = h.get(target, &[]).await;
        assert_eq!(&anonymous.body[..], b"anonymous");
        assert_eq!(
            anonymous.cache_status(),
            format!("{NODE}; fwd=uri-miss; fwd-status=200; stored"),
            "{target}"
        );
        assert!(h.get(target, &[]).await.cache_status().contains("; hit"));
        // What was stored for requests without credentials answers none with them: the
        // credentials make the request pass, and the entry stays.
        let bob = h.get(target, &[("authorization", "Bearer bob")]).await;
        assert_eq!(&bob.body[..], b"Bearer bob");
        assert_eq!(
            bob.cache_status(),
            format!("{NODE}; fwd=request; fwd-status=200")
        );
        let again = h.get(target, &[]).await;
        assert!(again.cache_status().contains("; hit"), "{target}");
        assert_eq!(&again.body[..], b"anonymous");
        assert_eq!(h.origin.count(target), 3, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_and_without_credentials_never_share_a_fetch() {
    // Nothing here may be shared with a request that has credentials; every body says
    // whom it was for. The origin holds each response until both requests of a round
    // reached it: had either joined the other's fetch, only one would.
    let h = Arc::new(
        Scripted::start("", "", |seen| {
            response(200, &[("cache-control", "max-age=60")], &asker(seen))
        })
        .await,
    );
    const ALICE: &[(&str, &str)] = &[("authorization", "Bearer alice")];
    type Fields = &'static [(&'static str, &'static str)];
    let rounds: [(&'static str, Fields, Fields); 2] = [
        ("/first-credentials", ALICE, &[]),
        ("/first-anonymous", &[], ALICE),
    ];
    for (round, (target, first, second)) in rounds.into_iter().enumerate() {
        h.origin.hold_until(2 * (round + 1));
        let ask = |headers: Fields| {
            let h = h.clone();
            tokio::spawn(async move { h.get(target, headers).await })
        };
        let first_reply = ask(first);
        // The first request's fetch is at the origin, held: the second one's must get
        // there too, by a fetch of its own.
        assert!(h.origin.arrivals(2 * round + 1).await, "{target}");
        let second_reply = ask(second);
        for (reply, headers) in [(first_reply, first), (second_reply, second)] {
            let reply = reply.await.expect("request task");
            let whom = if headers.is_empty() {
                "anonymous"
            } else {
                "Bearer alice"
            };
            assert_eq!(reply.text(), whom, "{target}");
            assert!(!reply.cache_status().contains("collapsed"), "{target}");
            if !headers.is_empty() {
                assert_eq!(
                    reply.cache_status(),
                    format!("{NODE}; fwd=uri-miss; fwd-status=200; detail=authorization")
                );
            }
        }
        assert!(
            !h.origin.hold_expired(),
            "{target}: a request waited on another's fetch"
        );
        assert_eq!(h.origin.count(target), 2, "{target}");
    }
}

#[tokio::test]
async fn a_stale_shareable_response_is_revalidated_with_the_requests_own_credentials() {
    // Stored stale on arrival (Age past max-age), with every stale window it could ask for.
    const DENIED: u8 = 1;
    const VALID: u8 = 2;
    let mode = Arc::new(AtomicU8::new(0));
    let m = mode.clone();
    let h = Scripted::start("", "", move |seen| {
        let cc = "public, max-age=60, stale-while-revalidate=600, stale-if-error=600";
        match m.load(Ordering::SeqCst) {
            DENIED => response(500, &[], "origin down"),
            VALID if seen.header("if-none-match") == Some("\"v1\"") => {
                response(304, &[("cache-control", cc), ("etag", "\"v1\"")], "")
            }
            _ => response(
                200,
                &[("cache-control", cc), ("etag", "\"v1\""), ("age", "100")],
                "v1",
            ),
        }
    })
    .await;
    let first = h.get("/doc", &[("authorization", "Bearer alice")]).await;
    assert_eq!(
        first.cache_status(),
        format!("{NODE}; fwd=uri-miss; fwd-status=200; stored")
    );
    // Stale: never served stale to credentials, not while revalidating nor on error.
    mode.store(DENIED, Ordering::SeqCst);
    let bob = h.get("/doc", &[("authorization", "Bearer bob")]).await;
    assert_eq!(bob.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        bob.cache_status()
            .starts_with(&format!("{NODE}; fwd=stale; fwd-status=500")),
        "{}",
        bob.cache_status()
    );
    assert_eq!(bob.text(), "origin down");
    // A revalidation: the stored validator, and the credentials of the request it is for.
    mode.store(VALID, Ordering::SeqCst);
    let carol = h.get("/doc", &[("authorization", "Bearer carol")]).await;
    assert_eq!(carol.status, StatusCode::OK);
    assert_eq!(&carol.body[..], b"v1");
    assert_eq!(
        carol.cache_status(),
        format!("{NODE}; fwd=stale; fwd-status=304; stored")
    );
    let seen = h.origin.seen();
    let asked: Vec<_> = seen
        .iter()
        .map(|s| (asker(s), s.header("if-none-match")))
        .collect();
    assert_eq!(
        asked,
        [
            ("Bearer alice".to_owned(), None),
            ("Bearer bob".to_owned(), Some("\"v1\"")),
            ("Bearer carol".to_owned(), Some("\"v1\"")),
        ]
    );
    // Fresh again, for everyone.
    for headers in [&[("authorization", "Bearer dave")][..], &[]] {
        let reply = h.get("/doc", headers).await;
        assert!(reply.cache_status().contains("; hit"), "{headers:?}");
    }
    assert_eq!(h.origin.seen().len(), 3);
}

/// 128 KiB of letters.
fn big_body() -> String {
    (0..128 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

#[tokio::test]
async fn requests_the_cache_makes_itself_never_carry_credentials() {
    let body = big_body();
    let h = Scripted::start(
        "max_object_size = \"64 KiB\"\nslice_size = \"16 KiB\"",
        "",
        move |seen| {
            let cc = match seen.target.as_str() {
                "/swr" => "public, max-age=60, stale-while-revalidate=600",
                _ => "public, max-age=60",
            };
            let mut fields = vec![("cache-control", cc), ("etag", "\"v1\"")];
            if seen.target == "/swr" {
                fields.push(("age", "100"));
                return response(200, &fields, "swr");
            }
            fields.push(("accept-ranges", "bytes"));
            let range = seen.header("range").and_then(|r| {
                let (first, last) = r.strip_prefix("bytes=")?.split_once('-')?;
                Some((first.parse::<usize>().ok()?, last.parse::<usize>().ok()?))
            });
            match range {
                Some((first, last)) => {
                    let content_range = format!("bytes {first}-{last}/{}", body.len());
                    fields.push(("content-range", &content_range));
                    response(206, &fields, &body[first..=last])
                }
                None => response(200, &fields, &body),
            }
        },
    )
    .await;
    let alice = [("authorization", "Bearer alice")];

    // A background revalidation: a stale entry a request with credentials stored...
    let stored = h.get("/swr", &alice).await;
    assert!(stored.cache_status().ends_with("stored"));
    // ...is revalidated, not served stale, for the next request with credentials...
    let bob = h.get("/swr", &[("authorization", "Bearer bob")]).await;
    assert_eq!(
        bob.cache_status(),
        format!("{NODE}; fwd=stale; fwd-status=200; stored")
    );
    // ...and served stale to a request without, while a refresh runs in the background.
    let stale = h.get("/swr", &[]).await;
    assert!(
        stale
            .cache_status()
            .ends_with("detail=stale-while-revalidate")
    );
    assert!(h.origin.arrivals(3).await, "the background refresh ran");

    // Slices of an object stored for everyone, fetched when a request with credentials
    // needs them.
    let whole = h.get("/big", &[("range", "bytes=0-99")]).await;
    assert_eq!(whole.status, StatusCode::PARTIAL_CONTENT);
    let reply = h
        .get(
            "/big",
            &[
                ("authorization", "Bearer alice"),
                ("range", "bytes=70000-70099"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(reply.text(), big_body()[70000..=70099]);

    let seen = h.origin.seen();
    assert!(
        seen.iter()
            .all(|s| s.method == Method::GET && s.body.is_empty())
    );
    let asked: Vec<_> = seen
        .iter()
        .map(|s| (s.target.as_str(), asker(s), s.header("range").is_some()))
        .collect();
    // Nothing the cache fetched on its own (the refresh, the slices) was asked with
    // anyone's credentials.
    assert_eq!(
        asked,
        [
            ("/swr", "Bearer alice".to_owned(), false),
            ("/swr", "Bearer bob".to_owned(), false),
            ("/swr", "anonymous".to_owned(), false),
            ("/big", "anonymous".to_owned(), false),
            ("/big", "anonymous".to_owned(), true),
            ("/big", "anonymous".to_owned(), true),
        ]
    );
}
