//! Purges end to end: publishers call the purge API, which logs them durably and fans them
//! out to every node; each selector and mode really stops the old object being served on
//! every node; a node that was down catches up before it serves; overload is shed with
//! Retry-After while accepted purges all complete; the log survives a restart.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cdn::demo_origin::DemoOrigin;
use edge::store::Storage;
use edge::{EdgeServer, MemoryStore};
use http::{Method, StatusCode};
use purge_api::{PurgeApiConfig, PurgeApiServer};
use support::{HOST, Reply, api_call, client, json, loopback, send};

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
    let p = Purging::start(
        2,
        "[publisher.rate]\nrequests_per_second = 2.0\nrequest_burst = 10.0",
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
                let retry: u64 = reply
                    .header("retry-after")
                    .parse()
                    .expect("Retry-After seconds");
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    assert!(
        accepted.len() >= 10 && shed >= 15,
        "{} accepted, {shed} shed",
        accepted.len()
    );
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
    let page = support::send_with(
        api.addr(),
        "/v1/purge-log?after=0&limit=100",
        &[(edge::purge::NODE_TOKEN_HEADER, NODE_TOKEN)],
    )
    .await;
    let page: edge::purge::PurgeLogPage = serde_json::from_slice(&page.body).expect("log page");
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
    let next = api_call(api.addr(), Method::POST, "/v1/purge", Some(TOKEN), &body).await;
    assert_eq!(json(&next)["seq"], 22);
    api.shutdown().await;
}

async fn idempotent(api: SocketAddr, body: &str, key: &str) -> u64 {
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{api}/v1/purge"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("idempotency-key", key)
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body.as_bytes(),
        )))
        .expect("request");
    let response = client().request(request).await.expect("answer");
    assert!(response.status().is_success(), "{}", response.status());
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice::<serde_json::Value>(&body).expect("json")["seq"]
        .as_u64()
        .expect("seq")
}

#[tokio::test]
async fn a_fill_in_flight_when_a_purge_lands_does_not_store_the_old_bytes() {
    let p = Purging::start(1, "").await;
    let target = "/race/slow.bin?delay_ms=400";
    let edge = p.edges[0].public_addr();
    let fill =
        tokio::spawn(async move { send(&client(), edge, Method::GET, target, HOST, &[]).await });
    // The origin has the request (and is sleeping on it): the fill is in flight.
    assert!(support::eventually(Duration::from_secs(5), || p.origin.hits(target) == 1).await);
    p.purge(&format!(
        r#"{{"site":"assets","urls":["{}"]}}"#,
        url(target)
    ))
    .await;
    assert_eq!(fill.await.expect("client").status, StatusCode::OK);
    let after = p.get(0, target).await;
    assert!(
        after.cache_status().contains("fwd=uri-miss"),
        "bytes fetched before the purge were stored: {}",
        after.cache_status()
    );
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
        .header(edge::purge::NODE_TOKEN_HEADER, NODE_TOKEN)
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
