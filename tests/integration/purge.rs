//! Purges end to end: publishers call the purge API, which logs them durably and fans them
//! out to every node; each selector and mode really stops the old object being served on
//! every node; a node that was down catches up before it serves; overload is shed with
//! Retry-After while accepted purges all complete; the log survives a restart; bodies are
//! refused before they are read (no token, or over the limit) and an `Idempotency-Key`
//! returns its purge only to the same request; a publisher lists its recent purges.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;

use cdn::demo_origin::DemoOrigin;
use edge::Storage;
use edge::{EdgeServer, MemoryStore};
use http::{Method, StatusCode};
use purge_api::log::{FileLog, LogEntry, LogError, NewEntry, PurgeLog, Retention};
use purge_api::{PurgeApiConfig, PurgeApiServer};
use support::{HOST, Reply, api_call, api_call_with, client, json, loopback, memory, send};

const NODE_TOKEN: &str = "node-secret-0123456789";
const TOKEN: &str = "publisher-token-0123456789";
const OTHER_TOKEN: &str = "other-publisher-token-0123";

/// An origin, edges that take purges, and the purge API in front of them.
struct Purging {
    origin: DemoOrigin,
    edges: Vec<EdgeServer>,
    stores: Vec<Arc<MemoryStore>>,
    api: PurgeApiServer,
    dir: tempfile::TempDir,
}

fn edge_config(
    origin: SocketAddr,
    api: Option<SocketAddr>,
    listen: Option<(SocketAddr, SocketAddr)>,
) -> edge::EdgeConfig {
    let api = api.map_or(String::new(), |a| format!("api = \"http://{a}\""));
    let (public, admin) = listen.map_or(
        ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned()),
        |(p, a)| (p.to_string(), a.to_string()),
    );
    let text = format!(
        r#"
        [node]
        name = "edge-purge"
        listen = "{public}"
        admin_listen = "{admin}"
        [purge]
        node_token = "{NODE_TOKEN}"
        {api}
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        "#
    );
    edge::EdgeConfig::from_toml(&text).expect("edge config")
}

fn api_config(dir: &std::path::Path, nodes: &[SocketAddr], rate: &str) -> PurgeApiConfig {
    let nodes: String = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[node]]\nname = \"edge-{i}\"\nadmin = \"http://{a}\"\n"))
        .collect();
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        node_token = "{NODE_TOKEN}"
        [log]
        path = "{log}"
        {nodes}
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        [[site]]
        name = "other"
        hosts = ["other.test"]
        [[publisher]]
        name = "acme"
        token = "{TOKEN}"
        sites = ["assets"]
        {rate}
        [[publisher]]
        name = "globex"
        token = "{OTHER_TOKEN}"
        sites = ["other"]
        "#,
        log = dir.join("purges.redb").display(),
    );
    PurgeApiConfig::from_toml(&text).expect("purge API config")
}

impl Purging {
    async fn start(edges: usize, rate: &str) -> Self {
        let origin = DemoOrigin::start(loopback()).await.expect("origin");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for _ in 0..edges {
            let store = Arc::new(MemoryStore::new(64 << 20));
            let edge =
                EdgeServer::start_with_store(edge_config(origin.addr(), None, None), store.clone())
                    .await
                    .expect("edge");
            nodes.push(edge);
            stores.push(store);
        }
        let admins: Vec<SocketAddr> = nodes.iter().map(EdgeServer::admin_addr).collect();
        let api = PurgeApiServer::start(api_config(dir.path(), &admins, rate))
            .await
            .expect("purge API");
        Self {
            origin,
            edges: nodes,
            stores,
            api,
            dir,
        }
    }

    async fn get(&self, edge: usize, target: &str) -> Reply {
        send(
            &client(),
            self.edges[edge].public_addr(),
            Method::GET,
            target,
            HOST,
            &[],
        )
        .await
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> Reply {
        api_call(self.api.addr(), method, path, token, body).await
    }

    /// Submits a purge and waits until every node applied it.
    async fn purge(&self, body: &str) -> u64 {
        let reply = self
            .call(Method::POST, "/v1/purge", Some(TOKEN), body)
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        let seq = json(&reply)["seq"].as_u64().expect("seq");
        self.wait_done(seq).await;
        seq
    }

    /// The whole purge log, as a node reads it.
    async fn log(&self) -> node_api::purge::PurgeLogPage {
        log_page(self.api.addr()).await
    }

    async fn wait_done(&self, seq: u64) {
        let status = self
            .call(
                Method::GET,
                &format!("/v1/purges/{seq}?wait=10s"),
                Some(TOKEN),
                "",
            )
            .await;
        assert_eq!(json(&status)["state"], "done", "{}", status.text());
    }
}

fn url(target: &str) -> String {
    format!("https://{HOST}{target}")
}

/// Caches `target` on every edge (a hit the second time).
async fn cache_everywhere(p: &Purging, target: &str) {
    for edge in 0..p.edges.len() {
        p.get(edge, target).await;
        let hit = p.get(edge, target).await;
        assert!(
            hit.cache_status().contains("hit"),
            "{target}: {}",
            hit.cache_status()
        );
    }
}

/// Every edge answers `target` from the origin again (hard) or after revalidating (soft).
async fn gone_everywhere(p: &Purging, target: &str, soft: bool) {
    for edge in 0..p.edges.len() {
        let reply = p.get(edge, target).await;
        let status = reply.cache_status();
        if soft {
            assert!(
                status.contains("fwd=stale"),
                "edge {edge} {target}: {status}"
            );
        } else {
            assert!(
                status.contains("fwd=uri-miss"),
                "edge {edge} {target}: {status}"
            );
        }
    }
}

#[tokio::test]
async fn each_selector_and_mode_stops_the_old_object_on_every_node() {
    // Host and everything purges cost 1,000 and 10,000 objects: room for them all.
    let p = Purging::start(
        3,
        "[publisher.rate]\nobjects_per_second = 100000.0\nobject_burst = 100000.0",
    )
    .await;
    let cases: [(&str, String, bool); 6] = [
        (
            "/s/url.bin",
            format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/s/url.bin")),
            false,
        ),
        (
            "/s/soft.bin",
            format!(
                r#"{{"site":"assets","urls":["{}"],"mode":"soft"}}"#,
                url("/s/soft.bin")
            ),
            true,
        ),
        (
            "/s/tag.bin?h.surrogate-key=grp-1%20grp-2",
            r#"{"site":"assets","tags":["grp-2"]}"#.into(),
            false,
        ),
        (
            "/pre/x.bin",
            format!(r#"{{"site":"assets","prefixes":["{}"]}}"#, url("/pre/")),
            false,
        ),
        (
            "/h/host.bin",
            format!(r#"{{"site":"assets","hosts":["{HOST}"]}}"#),
            false,
        ),
        (
            "/e/all.bin",
            r#"{"site":"assets","everything":true}"#.into(),
            false,
        ),
    ];
    for (target, body, soft) in &cases {
        cache_everywhere(&p, target).await;
        let before = p.origin.hits(target);
        p.purge(body).await;
        gone_everywhere(&p, target, *soft).await;
        assert_eq!(
            p.origin.hits(target),
            before + 3,
            "{target}: one fetch per edge"
        );
    }
    // A URL purge leaves other objects alone.
    cache_everywhere(&p, "/s/keep.bin").await;
    p.purge(&format!(
        r#"{{"site":"assets","urls":["{}"]}}"#,
        url("/s/other.bin")
    ))
    .await;
    assert!(p.get(0, "/s/keep.bin").await.cache_status().contains("hit"));
}

#[tokio::test]
async fn tokens_are_scoped_and_bad_requests_are_refused_with_reasons() {
    let p = Purging::start(1, "").await;
    let body = format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/a.bin"));
    assert_eq!(
        p.call(Method::POST, "/v1/purge", None, &body).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        p.call(
            Method::POST,
            "/v1/purge",
            Some("wrong-token-000000000"),
            &body
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let foreign = p
        .call(Method::POST, "/v1/purge", Some(OTHER_TOKEN), &body)
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text());
    let off_site = format!(r#"{{"site":"other","urls":["{}"]}}"#, url("/a.bin"));
    assert_eq!(
        p.call(Method::POST, "/v1/purge", Some(OTHER_TOKEN), &off_site)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    for (bad, status) in [
        ("{not json", StatusCode::BAD_REQUEST),
        (r#"{"site":"assets","urls":[]}"#, StatusCode::BAD_REQUEST),
        (
            r#"{"site":"assets","urls":["x"],"color":"red"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (r#"{"site":"assets"}"#, StatusCode::BAD_REQUEST),
        (
            r#"{"site":"nope","everything":true}"#,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let reply = p.call(Method::POST, "/v1/purge", Some(TOKEN), bad).await;
        assert_eq!(reply.status, status, "{bad}: {}", reply.text());
        assert!(
            json(&reply)["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
        );
    }
    let huge = format!(
        r#"{{"site":"assets","tags":["{}"]}}"#,
        "t".repeat(300 * 1024)
    );
    assert_eq!(
        p.call(Method::POST, "/v1/purge", Some(TOKEN), &huge)
            .await
            .status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let many: Vec<String> = (0..1001).map(|i| format!("\"t{i}\"")).collect();
    let too_many = format!(r#"{{"site":"assets","tags":[{}]}}"#, many.join(","));
    assert_eq!(
        p.call(Method::POST, "/v1/purge", Some(TOKEN), &too_many)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // The PURGE method for one URL; its status is the publisher's alone.
    cache_everywhere(&p, "/m.bin").await;
    let purge = p
        .call(
            Method::from_bytes(b"PURGE").unwrap(),
            &format!("/{}", url("/m.bin")),
            Some(TOKEN),
            "",
        )
        .await;
    assert_eq!(purge.status, StatusCode::ACCEPTED, "{}", purge.text());
    let seq = json(&purge)["seq"].as_u64().expect("seq");
    p.wait_done(seq).await;
    gone_everywhere(&p, "/m.bin", false).await;
    let theirs = p
        .call(
            Method::GET,
            &format!("/v1/purges/{seq}"),
            Some(OTHER_TOKEN),
            "",
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    // Nodes refuse purges without the node token.
    let direct = api_call(
        p.edges[0].admin_addr(),
        Method::POST,
        "/v1/purge",
        None,
        r#"{"purges":[]}"#,
    )
    .await;
    assert_eq!(direct.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn recent_purges_list_only_the_callers_newest_first_with_node_progress() {
    let p = Purging::start(2, "").await;
    let first = p
        .purge(&format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/a")))
        .await;
    let theirs = p
        .call(
            Method::POST,
            "/v1/purge",
            Some(OTHER_TOKEN),
            r#"{"site":"other","hosts":["other.test"]}"#,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{}", theirs.text());
    let second = p
        .purge(r#"{"site":"assets","tags":["t1","t2"],"mode":"soft"}"#)
        .await;

    let reply = p
        .call(Method::GET, "/v1/purges?limit=5", Some(TOKEN), "")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let recent: node_api::purge::RecentPurges =
        serde_json::from_slice(&reply.body).expect("the recent purges");
    assert_eq!(recent.head, 3);
    let seqs: Vec<u64> = recent.purges.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [second, first], "only acme's, newest first");
    let newest = &recent.purges[0];
    assert_eq!(
        (newest.selector.as_str(), newest.targets, newest.mode),
        ("tags", 2, node_api::purge::Mode::Soft)
    );
    assert_eq!((newest.applied, newest.expected), (2, 2), "{newest:?}");
    assert!(newest.lagging.is_empty() && newest.accepted_at_ms > 0);

    let one = p
        .call(Method::GET, "/v1/purges?limit=1", Some(TOKEN), "")
        .await;
    let one: node_api::purge::RecentPurges = serde_json::from_slice(&one.body).expect("JSON");
    assert_eq!(one.purges.len(), 1);
    for (path, token, status) in [
        ("/v1/purges", None, StatusCode::UNAUTHORIZED),
        ("/v1/purges?limit=0", Some(TOKEN), StatusCode::BAD_REQUEST),
        ("/v1/purges?limit=101", Some(TOKEN), StatusCode::BAD_REQUEST),
    ] {
        let reply = p.call(Method::GET, path, token, "").await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
    }
}

#[tokio::test]
async fn a_node_down_during_100_purges_applies_them_all_before_it_serves() {
    let mut p = Purging::start(
        2,
        "[publisher.rate]\nrequests_per_second = 1000.0\nrequest_burst = 1000.0",
    )
    .await;
    let targets: Vec<String> = (0..100).map(|i| format!("/down/{i}.bin")).collect();
    for target in &targets {
        p.get(1, target).await;
    }
    let down = p.edges.remove(1);
    let (public, admin) = (down.public_addr(), down.admin_addr());
    down.shutdown().await;
    for target in &targets {
        let reply = p
            .call(
                Method::POST,
                "/v1/purge",
                Some(TOKEN),
                &format!(r#"{{"site":"assets","urls":["{}"]}}"#, url(target)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    }
    // Back on the same addresses over the same store: it reads the log before serving.
    let store = p.stores[1].clone();
    assert_eq!(store.purge_watermark(), 0);
    let back = EdgeServer::start_with_store(
        edge_config(p.origin.addr(), Some(p.api.addr()), Some((public, admin))),
        store.clone(),
    )
    .await
    .expect("edge restarts");
    assert_eq!(
        store.purge_watermark(),
        100,
        "every purge applied before start returned"
    );
    p.edges.push(back);
    for target in &targets {
        let reply = p.get(1, target).await;
        assert!(
            reply.cache_status().contains("fwd=uri-miss"),
            "{target} served purged: {}",
            reply.cache_status()
        );
    }
    p.wait_done(100).await;
}

#[tokio::test]
async fn a_burst_is_shed_with_retry_after_while_accepted_purges_all_complete() {
    // A burst of 10 and one request token back every 1,000 s: the test would have to run
    // for 1,000 s (on any machine, however loaded) before a token came back, so exactly
    // the burst is accepted and every other request of the 30 is shed.
    const BURST: usize = 10;
    const SECS_PER_TOKEN: u64 = 1000;
    let p = Purging::start(
        2,
        "[publisher.rate]\nrequests_per_second = 0.001\nrequest_burst = 10.0",
    )
    .await;
    let mut accepted = Vec::new();
    let mut shed = 0;
    for i in 0..30 {
        let body = format!(
            r#"{{"site":"assets","urls":["{}"]}}"#,
            url(&format!("/burst/{i}.bin"))
        );
        let reply = p.call(Method::POST, "/v1/purge", Some(TOKEN), &body).await;
        match reply.status {
            StatusCode::ACCEPTED => accepted.push(json(&reply)["seq"].as_u64().expect("seq")),
            StatusCode::TOO_MANY_REQUESTS => {
                // Exactly when the next token is back: 1,000 s after the burst was spent,
                // less the (under a minute) the test has run since.
                let retry: u64 = reply
                    .header("retry-after")
                    .parse()
                    .expect("Retry-After seconds");
                assert!(
                    (SECS_PER_TOKEN - 60..=SECS_PER_TOKEN).contains(&retry),
                    "Retry-After {retry}"
                );
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    assert_eq!(
        (accepted.len(), shed),
        (BURST, 30 - BURST),
        "the burst accepted, the rest shed"
    );
    assert_eq!(accepted, (1..=BURST as u64).collect::<Vec<_>>());
    for seq in accepted {
        p.wait_done(seq).await;
    }
}

#[tokio::test]
async fn the_log_survives_a_restart_and_idempotent_retries_get_the_same_purge() {
    let p = Purging::start(1, "").await;
    let body = format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/idem.bin"));
    let mut seqs = Vec::new();
    for _ in 0..20 {
        seqs.push(p.purge(&body).await);
    }
    let first = idempotent(p.api.addr(), &body, "retry-1").await;
    let again = idempotent(p.api.addr(), &body, "retry-1").await;
    assert_eq!(first, again, "same Idempotency-Key, same purge");

    let admin = p.edges[0].admin_addr();
    let dir = p.dir;
    p.api.shutdown().await;
    let api = PurgeApiServer::start(api_config(dir.path(), &[admin], ""))
        .await
        .expect("restart");
    let page = log_page(api.addr()).await;
    let logged: Vec<u64> = page.purges.iter().map(|p| p.seq).collect();
    assert_eq!(
        logged,
        (1..=21).collect::<Vec<_>>(),
        "no accepted purge missing"
    );
    assert_eq!(
        idempotent(api.addr(), &body, "retry-1").await,
        first,
        "also after a restart"
    );
    // The request the key was first used for is remembered across the restart too.
    let other = keyed(
        api.addr(),
        "retry-1",
        &format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/other.bin")),
    )
    .await;
    assert_problem(&other, StatusCode::UNPROCESSABLE_ENTITY);
    let next = api_call(api.addr(), Method::POST, "/v1/purge", Some(TOKEN), &body).await;
    assert_eq!(json(&next)["seq"], 22);
    api.shutdown().await;
}

/// The purge log from its start, as a node reads it from the API at `api`.
async fn log_page(api: SocketAddr) -> node_api::purge::PurgeLogPage {
    let page = support::send_with(
        api,
        "/v1/purge-log?after=0&limit=1000",
        &[(node_api::headers::NODE_TOKEN, NODE_TOKEN)],
    )
    .await;
    serde_json::from_slice(&page.body).expect("log page")
}

/// POSTs `body` as a purge with `Idempotency-Key: key`.
async fn keyed(api: SocketAddr, key: &str, body: &str) -> Reply {
    api_call_with(
        api,
        Method::POST,
        "/v1/purge",
        Some(TOKEN),
        &[("idempotency-key", key)],
        body,
    )
    .await
}

/// The sequence number of a keyed purge, which must succeed.
async fn idempotent(api: SocketAddr, body: &str, key: &str) -> u64 {
    let reply = keyed(api, key, body).await;
    assert!(
        reply.status.is_success(),
        "{}: {}",
        reply.status,
        reply.text()
    );
    json(&reply)["seq"].as_u64().expect("seq")
}

/// Checks that `reply` is an RFC 9457 problem with `status`, and returns it.
fn assert_problem(reply: &Reply, status: StatusCode) -> serde_json::Value {
    assert_eq!(reply.status, status, "{}", reply.text());
    problem(status, reply.header("content-type"), &reply.body)
}

/// Checks an RFC 9457 problem document (`application/problem+json` with type, title,
/// status and a detail saying what to do) and returns it.
fn problem(status: StatusCode, content_type: &str, body: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(content_type, "application/problem+json", "{text}");
    let doc: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(doc["status"], status.as_u16(), "{text}");
    for member in ["type", "title", "detail"] {
        assert!(
            doc[member].as_str().is_some_and(|v| !v.is_empty()),
            "no {member}: {text}"
        );
    }
    doc
}

/// How much a test may add to the process's peak memory: a server that buffers a refused
/// body adds hundreds of MiB, one that refuses it a few connection buffers.
const FLAT: u64 = 32 << 20;

/// A purge request head for [`support::upload`], with `framing` (`content-length: N` or
/// `transfer-encoding: chunked`).
fn upload_head(token: Option<&str>, framing: &str) -> String {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    format!(
        "POST /v1/purge HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
         {auth}{framing}\r\n\r\n"
    )
}

/// Peak memory growth since `base` (see [`memory::reset_peak`]).
fn grown(base: u64) -> u64 {
    memory::peak().saturating_sub(base)
}

#[tokio::test]
async fn a_flood_of_unauthenticated_300_mib_bodies_is_refused_unread_and_memory_stays_flat() {
    if memory::alone() {
        return;
    }
    let p = Purging::start(0, "").await;
    const LEN: u64 = 300 << 20;
    let base = memory::reset_peak();
    let heads = [
        upload_head(None, &format!("content-length: {LEN}")),
        upload_head(
            Some("wrong-token-000000000"),
            &format!("content-length: {LEN}"),
        ),
        upload_head(None, "transfer-encoding: chunked"),
        upload_head(Some("wrong-token-000000000"), "transfer-encoding: chunked"),
    ];
    let uploads = futures_util::future::join_all(heads.iter().map(|head| {
        support::upload(
            p.api.addr(),
            head,
            LEN,
            head.contains("chunked"),
            // Stop feeding a server that buffers: the check below then fails.
            |_| grown(base) < FLAT,
        )
    }))
    .await;
    let growth = grown(base);
    assert!(
        growth < FLAT,
        "peak memory grew {} MiB while refusing unauthenticated bodies (sent {:?} MiB)",
        growth >> 20,
        uploads.iter().map(|u| u.sent >> 20).collect::<Vec<_>>()
    );
    for upload in &uploads {
        assert_eq!(upload.status(), 401, "{}", upload.answer);
        assert!(!upload.complete, "the whole body was taken: {upload:?}");
        let doc = problem(
            StatusCode::UNAUTHORIZED,
            upload.header("content-type"),
            upload.body().as_bytes(),
        );
        assert!(
            doc["detail"].as_str().unwrap_or("").contains("Bearer"),
            "{doc}"
        );
    }
    assert!(p.log().await.purges.is_empty());
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_413_before_it_is_sent() {
    let p = Purging::start(0, "").await;
    // Just the head, the connection left open: the answer comes without a body byte.
    let head = upload_head(Some(TOKEN), &format!("content-length: {}", 300u64 << 20));
    let upload = support::upload(p.api.addr(), &head, 0, false, |_| true).await;
    assert_eq!(upload.status(), 413, "{}", upload.answer);
    let doc = problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        upload.header("content-type"),
        upload.body().as_bytes(),
    );
    assert!(
        doc["detail"].as_str().unwrap_or("").contains("262144"),
        "the limit is named: {doc}"
    );
    // A body of exactly the limit is read (and judged on its content).
    let at_limit = format!(
        r#"{{"site":"assets","tags":["{}"]}}"#,
        "t".repeat(256 * 1024 - 29)
    );
    assert_eq!(at_limit.len(), 256 * 1024);
    let reply = p
        .call(Method::POST, "/v1/purge", Some(TOKEN), &at_limit)
        .await;
    assert_problem(&reply, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_authenticated_chunked_body_over_the_limit_gets_413_once_the_limit_is_read() {
    if memory::alone() {
        return;
    }
    let p = Purging::start(0, "").await;
    const LEN: u64 = 300 << 20;
    let base = memory::reset_peak();
    let upload = support::upload(
        p.api.addr(),
        &upload_head(Some(TOKEN), "transfer-encoding: chunked"),
        LEN,
        true,
        |_| grown(base) < FLAT,
    )
    .await;
    let growth = grown(base);
    assert!(
        growth < FLAT,
        "peak memory grew {} MiB reading an oversized body (sent {} MiB)",
        growth >> 20,
        upload.sent >> 20
    );
    assert_eq!(upload.status(), 413, "{}", upload.answer);
    assert!(!upload.complete, "the whole body was taken");
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        upload.header("content-type"),
        upload.body().as_bytes(),
    );
    assert!(p.log().await.purges.is_empty());
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_purge_gets_422_and_purges_nothing() {
    let p = Purging::start(0, "").await;
    let first = format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/idem/a.bin"));
    let seq = idempotent(p.api.addr(), &first, "deploy-1").await;
    for other in [
        format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/idem/b.bin")),
        r#"{"site":"assets","everything":true}"#.to_owned(),
        format!(
            r#"{{"site":"assets","urls":["{}"],"mode":"soft"}}"#,
            url("/idem/a.bin")
        ),
    ] {
        let reply = keyed(p.api.addr(), "deploy-1", &other).await;
        let doc = assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            doc["detail"]
                .as_str()
                .is_some_and(|d| d.contains("Idempotency-Key")),
            "{doc}"
        );
    }
    let logged: Vec<u64> = p.log().await.purges.iter().map(|p| p.seq).collect();
    assert_eq!(logged, vec![seq], "only the first purge is in the log");
    // The same purge written differently (member order, spacing, the default mode) is the
    // same request: its earlier id, as before.
    let same = format!(
        r#"{{ "mode": "hard", "urls": ["{}"], "site": "assets" }}"#,
        url("/idem/a.bin")
    );
    let again = keyed(p.api.addr(), "deploy-1", &same).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(json(&again)["seq"], seq);
    // Keys are the publisher's own: another publisher may use the same one.
    let theirs = api_call_with(
        p.api.addr(),
        Method::POST,
        "/v1/purge",
        Some(OTHER_TOKEN),
        &[("idempotency-key", "deploy-1")],
        r#"{"site":"other","everything":true}"#,
    )
    .await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{}", theirs.text());
}

#[tokio::test]
async fn idempotency_keys_empty_over_255_bytes_or_not_ascii_get_400() {
    let p = Purging::start(0, "").await;
    let body = format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/keys.bin"));
    for bad in ["k".repeat(256), String::new(), "\"\"".into(), "clé".into()] {
        let reply = keyed(p.api.addr(), &bad, &body).await;
        let doc = assert_problem(&reply, StatusCode::BAD_REQUEST);
        assert!(
            doc["detail"]
                .as_str()
                .is_some_and(|d| d.contains("Idempotency-Key")),
            "{doc}"
        );
    }
    assert!(p.log().await.purges.is_empty(), "nothing was purged");
    let longest = "k".repeat(255);
    let seq = idempotent(p.api.addr(), &body, &longest).await;
    // The draft's form is a quoted string; the bare form names the same key.
    assert_eq!(
        idempotent(p.api.addr(), &body, &format!("\"{longest}\"")).await,
        seq
    );
}

/// A file log whose appends wait for the test's go-ahead, so a purge can be held in
/// flight (admitted, not yet committed) for as long as a test needs.
#[derive(Debug)]
struct HeldLog {
    file: FileLog,
    /// Told the size of every batch that reaches the log.
    entered: tokio::sync::mpsc::UnboundedSender<usize>,
    /// One permit lets one append through.
    go: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl PurgeLog for HeldLog {
    async fn append(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, LogError> {
        let _ = self.entered.send(batch.len());
        self.go.acquire().await.expect("semaphore open").forget();
        self.file.append(batch).await
    }
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        self.file.read_after(after, limit).await
    }
    fn head(&self) -> u64 {
        self.file.head()
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.file.subscribe()
    }
    async fn find_idempotent(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<LogEntry>, LogError> {
        self.file.find_idempotent(publisher, key).await
    }
}

#[tokio::test]
async fn a_retry_while_the_first_request_with_its_key_is_in_flight_gets_409() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (entered, mut appends) = tokio::sync::mpsc::unbounded_channel();
    let log = Arc::new(HeldLog {
        file: FileLog::open(&dir.path().join("purges.redb"), Retention::default()).expect("log"),
        entered,
        go: tokio::sync::Semaphore::new(0),
    });
    let api = PurgeApiServer::start_with_log(api_config(dir.path(), &[], ""), log.clone())
        .await
        .expect("purge API");
    let addr = api.addr();
    let body = format!(r#"{{"site":"assets","urls":["{}"]}}"#, url("/held.bin"));
    let first = tokio::spawn({
        let body = body.clone();
        async move { keyed(addr, "held-1", &body).await }
    });
    assert_eq!(
        appends.recv().await,
        Some(1),
        "the first purge reached the log"
    );
    // Admitted, not committed: a retry cannot be answered with an id yet.
    let retry = keyed(addr, "held-1", &body).await;
    assert_problem(&retry, StatusCode::CONFLICT);
    assert_eq!(retry.header("retry-after"), "1");
    let other = keyed(addr, "held-1", r#"{"site":"assets","everything":true}"#).await;
    assert_problem(&other, StatusCode::UNPROCESSABLE_ENTITY);
    log.go.add_permits(1);
    let first = first.await.expect("first request");
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    let seq = json(&first)["seq"].as_u64().expect("seq");
    // Committed: the retry now gets the purge's id, without a second append.
    let after = keyed(addr, "held-1", &body).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text());
    assert_eq!(json(&after)["seq"], seq);
    assert!(
        appends.try_recv().is_err(),
        "only one append ever reached the log"
    );
    api.shutdown().await;
}

/// An origin that answers every request `200`, cacheable for a minute, but holds each
/// answer until the test opens its gate: a fill through it is in flight for as long as
/// the test needs. Every request's target is reported as it arrives.
struct HeldOrigin {
    addr: SocketAddr,
    arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl HeldOrigin {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(loopback())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (report, arrived) = tokio::sync::mpsc::unbounded_channel();
        let (gate, open) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (report, open) = (report.clone(), open.clone());
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (report, mut open) = (report.clone(), open.clone());
                    async move {
                        let _ = report.send(req.uri().to_string());
                        let _ = open.wait_for(|open| *open).await;
                        http::Response::builder()
                            .header("cache-control", "max-age=60")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                b"old bytes",
                            )))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            arrived,
            gate,
        }
    }
}

#[tokio::test]
async fn a_fill_in_flight_when_a_purge_lands_does_not_store_the_old_bytes() {
    let mut origin = HeldOrigin::start().await;
    let edge = EdgeServer::start(edge_config(origin.addr, None, None))
        .await
        .expect("edge");
    let dir = tempfile::tempdir().expect("temp dir");
    let api = PurgeApiServer::start(api_config(dir.path(), &[edge.admin_addr()], ""))
        .await
        .expect("purge API");
    let target = "/race/held.bin";
    let public = edge.public_addr();
    let fill =
        tokio::spawn(async move { send(&client(), public, Method::GET, target, HOST, &[]).await });
    // The origin has the fill's request and holds its answer: the fill is in flight.
    assert_eq!(origin.arrived.recv().await.as_deref(), Some(target));
    let reply = api_call(
        api.addr(),
        Method::POST,
        "/v1/purge",
        Some(TOKEN),
        &format!(r#"{{"site":"assets","urls":["{}"]}}"#, url(target)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let seq = json(&reply)["seq"].as_u64().expect("seq");
    let status = api_call(
        api.addr(),
        Method::GET,
        &format!("/v1/purges/{seq}?wait=10s"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(json(&status)["state"], "done", "{}", status.text());
    // Applied on the edge while the origin still holds the fill's answer: only now does
    // the old response reach the edge.
    origin.gate.send_replace(true);
    let filled = fill.await.expect("client");
    assert_eq!(filled.status, StatusCode::OK);
    assert_eq!(
        &filled.body[..],
        b"old bytes",
        "the waiting client is served"
    );
    let after = send(&client(), public, Method::GET, target, HOST, &[]).await;
    assert!(
        after.cache_status().contains("fwd=uri-miss"),
        "bytes fetched before the purge were stored: {}",
        after.cache_status()
    );
    assert_eq!(
        origin.arrived.try_recv().as_deref(),
        Ok(target),
        "fetched again from the origin"
    );
    api.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn a_shield_behind_an_edge_on_purges_does_not_refill_it_with_purged_content() {
    let origin = DemoOrigin::start(loopback()).await.expect("origin");
    let shield = origin_shield::ShieldServer::start(edge_config(origin.addr(), None, None))
        .await
        .expect("shield");
    let text = format!(
        r#"
        [node]
        name = "edge-ahead"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [purge]
        node_token = "{NODE_TOKEN}"
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{}"
        "#,
        shield.public_addr()
    );
    let edge = EdgeServer::start(edge::EdgeConfig::from_toml(&text).expect("config"))
        .await
        .expect("edge");
    let target = "/ahead.bin";
    let http = client();
    let get = || send(&http, edge.public_addr(), Method::GET, target, HOST, &[]);
    get().await;
    assert!(get().await.cache_status().contains("hit"));
    assert_eq!(origin.hits(target), 1, "cached in both tiers");
    // Purge 1 reaches the edge; the shield has not got it yet.
    let batch = format!(
        r#"{{"purges":[{{"seq":1,"purge":{{"site":"assets","selector":{{"kind":"urls","values":["{}"]}}}}}}]}}"#,
        url(target)
    );
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/v1/purge", edge.admin_addr()))
        .header(node_api::headers::NODE_TOKEN, NODE_TOKEN)
        .body(http_body_util::Full::new(bytes::Bytes::from(batch)))
        .expect("request");
    let applied = client().request(request).await.expect("answer");
    assert_eq!(applied.status(), StatusCode::OK);
    // The edge refills through the shield, which must not answer from its stale copy.
    let after = get().await;
    assert!(
        after.cache_status().contains("fwd=uri-miss"),
        "{}",
        after.cache_status()
    );
    assert_eq!(origin.hits(target), 2, "the shield went to the origin");
}

/// A purge of `count` URLs of about `len` bytes each, the first of them `/big/{n}/0.bin`
/// (an object a test can cache), the others long and unique.
fn long_urls_purge(n: usize, count: usize, len: usize) -> String {
    let urls: Vec<String> = (0..count)
        .map(|j| {
            if j == 0 {
                format!("\"{}\"", url(&format!("/big/{n}/0.bin")))
            } else {
                let path = format!("/big/{n}/{j}/");
                format!("\"{}{}\"", url(&path), "p".repeat(len - path.len() - 20))
            }
        })
        .collect();
    format!(r#"{{"site":"assets","urls":[{}]}}"#, urls.join(","))
}

/// A series of the purge API's `/metrics` (0 when absent).
async fn api_metric(api: SocketAddr, series: &str) -> f64 {
    let metrics = api_call(api, Method::GET, "/metrics", None, "")
        .await
        .text();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn a_backlog_of_purges_over_4_mib_reaches_every_node_in_batches_the_node_reads() {
    // 20 purges of 900 URLs (~245 KiB each, under the 256 KiB body limit): 4.8 MiB of
    // backlog for the node that was away, over the 2 MiB a node used to read and over the
    // 4 MiB it reads now, so it must come in several batches.
    const PURGES: usize = 20;
    let mut p = Purging::start(
        2,
        "[publisher.rate]\nobjects_per_second = 100000.0\nobject_burst = 100000.0",
    )
    .await;
    let checked: Vec<String> = (1..=PURGES).map(|n| format!("/big/{n}/0.bin")).collect();
    for target in &checked {
        cache_everywhere(&p, target).await;
    }
    let down = p.edges.remove(1);
    let (public, admin) = (down.public_addr(), down.admin_addr());
    down.shutdown().await;
    let mut backlog = 0;
    for n in 1..=PURGES {
        let body = long_urls_purge(n, 900, 270);
        assert!(body.len() <= 256 * 1024, "{} bytes", body.len());
        backlog += body.len();
        let reply = p.call(Method::POST, "/v1/purge", Some(TOKEN), &body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    }
    assert!(backlog > 4 << 20, "{backlog} bytes of backlog");
    // Back on the same addresses without a purge API to read from: the API's push task
    // finds it at watermark 0 and pushes the whole backlog.
    let store = p.stores[1].clone();
    assert_eq!(store.purge_watermark(), 0);
    let back = EdgeServer::start_with_store(
        edge_config(p.origin.addr(), None, Some((public, admin))),
        store.clone(),
    )
    .await
    .expect("edge restarts");
    p.edges.insert(1, back);
    p.wait_done(PURGES as u64).await;
    assert_eq!(store.purge_watermark(), PURGES as u64);
    for target in &checked {
        gone_everywhere(&p, target, false).await;
    }
    assert_eq!(
        api_metric(p.api.addr(), "purge_push_too_large_total{node=\"edge-1\"}").await,
        0.0,
        "every batch fitted the node's limit: none was refused with 413"
    );
}

/// A purge batch head for a node's admin listener, with `extra` header lines.
fn node_head(path: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\n{extra}\r\n")
}

#[tokio::test]
async fn a_node_refuses_an_unauthenticated_purge_post_before_reading_its_body() {
    let p = Purging::start(1, "").await;
    let admin = p.edges[0].admin_addr();
    let huge = format!("content-length: {}\r\n", 1u64 << 30);
    let small = "content-length: 1000\r\n".to_owned();
    for path in ["/v1/purge", "/v1/purge/reset"] {
        for (headers, why) in [
            (huge.clone(), "no token, 1 GiB declared"),
            (
                format!("{huge}cdn-node-token: wrong-token-0123456789\r\n"),
                "wrong token",
            ),
            // Under the limit: a node that read before checking would wait for it.
            (small.clone(), "no token, 1000 bytes declared"),
            (
                "transfer-encoding: chunked\r\n".to_owned(),
                "no token, chunked",
            ),
        ] {
            // Only the head is sent, and the connection left open: the answer must come
            // without a body byte.
            let upload =
                support::upload(admin, &node_head(path, &headers), 0, false, |_| true).await;
            assert_eq!(upload.status(), 401, "{path}, {why}: {}", upload.answer);
        }
    }
    // With the token, a declared length over the limit is refused at once too.
    let token = format!("cdn-node-token: {NODE_TOKEN}\r\n");
    for (path, limit) in [
        ("/v1/purge", node_api::purge::MAX_BATCH_BYTES),
        ("/v1/purge/reset", node_api::purge::MAX_RESET_BYTES),
    ] {
        let head = node_head(path, &format!("{token}content-length: {}\r\n", limit + 1));
        let upload = support::upload(admin, &head, 0, false, |_| true).await;
        assert_eq!(upload.status(), 413, "{path}: {}", upload.answer);
        assert!(
            upload.body().contains(&limit.to_string()),
            "{}",
            upload.answer
        );
    }
    assert_eq!(p.stores[0].purge_watermark(), 0, "nothing was applied");
}

/// A stand-in for a node's admin API (another version, or behind a proxy) that reads at
/// most `limit` bytes of a batch (`413` past it) and answers `503` while `limit` is 0.
#[derive(Debug, Default)]
struct SmallNode {
    limit: std::sync::atomic::AtomicUsize,
    applied: std::sync::atomic::AtomicU64,
    /// Batches refused with 413.
    refused: std::sync::atomic::AtomicU64,
}

impl SmallNode {
    async fn start(self: &Arc<Self>) -> SocketAddr {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind(loopback())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let node = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let node = node.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let node = node.clone();
                        async move {
                            let limit = node.limit.load(SeqCst);
                            let reply = |status: StatusCode, applied: u64| {
                                let body = format!(r#"{{"applied":{applied}}}"#);
                                http::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            };
                            let applied = node.applied.load(SeqCst);
                            if limit == 0 {
                                return reply(StatusCode::SERVICE_UNAVAILABLE, applied);
                            }
                            if req.method() == Method::GET {
                                return reply(StatusCode::OK, applied);
                            }
                            let body = http_body_util::Limited::new(req.into_body(), limit);
                            let Ok(body) = http_body_util::BodyExt::collect(body).await else {
                                node.refused.fetch_add(1, SeqCst);
                                return reply(StatusCode::PAYLOAD_TOO_LARGE, applied);
                            };
                            let batch: node_api::purge::PurgeBatch =
                                serde_json::from_slice(&body.to_bytes()).expect("a purge batch");
                            let first = batch.purges.first().map_or(0, |p| p.seq);
                            if first != applied + 1 {
                                return reply(StatusCode::CONFLICT, applied);
                            }
                            let last = batch.purges.last().map_or(applied, |p| p.seq);
                            node.applied.store(last, SeqCst);
                            reply(StatusCode::OK, last)
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }
}

#[tokio::test]
async fn a_node_answering_413_gets_smaller_batches_and_one_that_refuses_a_single_purge_is_shown_stuck()
 {
    use std::sync::atomic::Ordering::SeqCst;
    let node = Arc::new(SmallNode::default());
    let addr = node.start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let api = PurgeApiServer::start(api_config(
        dir.path(),
        &[addr],
        "[publisher.rate]\nobjects_per_second = 100000.0\nobject_burst = 100000.0",
    ))
    .await
    .expect("purge API");
    let at = api.addr();
    let submit = |n: usize| async move {
        let reply = api_call(
            at,
            Method::POST,
            "/v1/purge",
            Some(TOKEN),
            &long_urls_purge(n, 900, 270),
        )
        .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        json(&reply)["seq"].as_u64().expect("seq")
    };
    let status = |seq: u64, wait: &'static str| async move {
        json(
            &api_call(
                at,
                Method::GET,
                &format!("/v1/purges/{seq}?wait={wait}"),
                Some(TOKEN),
                "",
            )
            .await,
        )
    };
    // A backlog of 12 purges (~2.9 MiB) while the node is unavailable...
    let mut last = 0;
    for n in 1..=12 {
        last = submit(n).await;
    }
    // ... then it takes batches of at most 1 MiB: the API must split what it sends.
    node.limit.store(1 << 20, SeqCst);
    let done = status(last, "10s").await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(node.applied.load(SeqCst), last);
    let refused = node.refused.load(SeqCst);
    assert!(refused >= 1, "the first batch was over the node's limit");
    let stuck = "purge_node_stuck{node=\"edge-0\"}";
    assert_eq!(
        api_metric(api.addr(), "purge_push_too_large_total{node=\"edge-0\"}").await,
        refused as f64
    );
    assert_eq!(api_metric(api.addr(), stuck).await, 0.0);

    // A node that refuses a single purge (its limit under the purge's size) cannot be
    // split for: it is shown stuck, and retried, not skipped.
    node.limit.store(100 * 1024, SeqCst);
    let seq = submit(13).await;
    let mut shown = serde_json::Value::Null;
    for _ in 0..100 {
        shown = status(seq, "100ms").await;
        if shown["nodes"]["stuck"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            break;
        }
    }
    assert_eq!(shown["state"], "in_progress", "{shown}");
    assert_eq!(shown["nodes"]["stuck"][0]["node"], "edge-0", "{shown}");
    let why = shown["nodes"]["stuck"][0]["error"].as_str().unwrap_or("");
    assert!(why.contains("413") && why.contains("alone"), "{why}");
    assert_eq!(api_metric(api.addr(), stuck).await, 1.0);
    // Fixed, it gets the purge and is no longer stuck.
    node.limit.store(1 << 20, SeqCst);
    let done = status(seq, "10s").await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["nodes"]["stuck"], serde_json::json!([]), "{done}");
    assert_eq!(api_metric(api.addr(), stuck).await, 0.0);
    assert_eq!(node.applied.load(SeqCst), seq);
    api.shutdown().await;
}

#[tokio::test]
async fn a_reset_to_a_position_the_node_has_passed_forgets_nothing() {
    let p = Purging::start(1, "").await;
    let seq = p
        .purge(&format!(
            r#"{{"site":"assets","urls":["{}"]}}"#,
            url("/other.bin")
        ))
        .await;
    cache_everywhere(&p, "/kept.bin").await;
    // The purge API's view of a node can be older than the node: a reset to a position
    // at or before the node's own answers the node's position and changes nothing.
    let admin = p.edges[0].admin_addr();
    for stale_view in [0, seq] {
        let reply = support::api_call_with(
            admin,
            Method::POST,
            "/v1/purge/reset",
            None,
            &[("cdn-node-token", NODE_TOKEN)],
            &format!(r#"{{"applied": {stale_view}}}"#),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(json(&reply)["applied"], seq, "{}", reply.text());
    }
    let hit = p.get(0, "/kept.bin").await;
    assert!(
        hit.cache_status().contains("; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(p.stores[0].purge_watermark(), seq);
    // A reset past the node's position still forgets everything.
    let reply = support::api_call_with(
        admin,
        Method::POST,
        "/v1/purge/reset",
        None,
        &[("cdn-node-token", NODE_TOKEN)],
        &format!(r#"{{"applied": {}}}"#, seq + 5),
    )
    .await;
    assert_eq!(json(&reply)["applied"], seq + 5);
    let miss = p.get(0, "/kept.bin").await;
    assert!(
        miss.cache_status().contains("fwd=uri-miss"),
        "{}",
        miss.cache_status()
    );
}
