//! Purges over NATS JetStream, against real nats-server processes on loopback: several
//! purge API instances share one stream, nodes read it themselves and report their
//! watermarks in its KV bucket. Purges accepted by either API reach every node and either
//! API reports them; losing one NATS server of three loses no accepted purge; a node away
//! for 500 purges catches up before it serves; with NATS gone the API answers 503, nodes
//! keep serving, and everything resumes when NATS returns; an `Idempotency-Key` reused for
//! another purge is refused by every instance; a node restarted over its state directory
//! reads the stream from its persisted watermark, not from the stream's head.
//!
//! Needs `nats-server` (`apt-get install -y nats-server`; `.ci/run` installs it).

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use cdn::demo_origin::DemoOrigin;
use edge::Storage;
use edge::{EdgeServer, MemoryStore};
use http::{Method, StatusCode};
use purge_api::log::{PurgeLog, Retention};
use purge_api::nats_log::NatsLog;
use purge_api::{PurgeApiConfig, PurgeApiServer};
use support::nats::{NatsCluster, NatsServer};
use support::{HOST, Reply, api_call, api_call_with, client, json, loopback, send};

const NODE_TOKEN: &str = "node-secret-0123456789";
const TOKEN: &str = "publisher-token-0123456789";
const STREAM: &str = "PURGES_TEST";

fn edge_config(name: &str, origin: std::net::SocketAddr, servers: &[String]) -> edge::EdgeConfig {
    let text = format!(
        r#"
        [node]
        name = "{name}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [purge]
        node_token = "{NODE_TOKEN}"
        [purge.nats]
        servers = {servers:?}
        stream = "{STREAM}"
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        "#
    );
    edge::EdgeConfig::from_toml(&text).expect("edge config")
}

fn api_config(servers: &[String], replicas: usize, nodes: usize) -> PurgeApiConfig {
    let nodes: String = (0..nodes)
        .map(|i| format!("[[node]]\nname = \"edge-{i}\"\n"))
        .collect();
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        node_token = "{NODE_TOKEN}"
        [log]
        engine = "nats"
        [log.nats]
        servers = {servers:?}
        stream = "{STREAM}"
        replicas = {replicas}
        ack_timeout = "1s"
        {nodes}
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        [[publisher]]
        name = "acme"
        token = "{TOKEN}"
        sites = ["assets"]
        [publisher.rate]
        requests_per_second = 100000.0
        request_burst = 100000.0
        objects_per_second = 100000.0
        object_burst = 100000.0
        "#
    );
    PurgeApiConfig::from_toml(&text).expect("purge API config")
}

/// An origin, `nodes` edges reading the stream, and `apis` purge API instances.
struct Deployment {
    origin: DemoOrigin,
    edges: Vec<Option<EdgeServer>>,
    stores: Vec<Arc<MemoryStore>>,
    apis: Vec<PurgeApiServer>,
    servers: Vec<String>,
}

impl Deployment {
    async fn start(servers: Vec<String>, replicas: usize, apis: usize, nodes: usize) -> Self {
        let origin = DemoOrigin::start(loopback()).await.expect("origin");
        let mut started = Vec::new();
        for _ in 0..apis {
            started.push(
                PurgeApiServer::start(api_config(&servers, replicas, nodes))
                    .await
                    .expect("purge API"),
            );
        }
        let mut d = Deployment {
            origin,
            edges: Vec::new(),
            stores: Vec::new(),
            apis: started,
            servers,
        };
        // Nodes start once the stream is there: an accepted purge shows it is.
        d.purge_until_accepted(0, "/setup.bin").await;
        for i in 0..nodes {
            let store = Arc::new(MemoryStore::new(64 << 20));
            d.stores.push(store.clone());
            let edge = d.start_edge(i, store).await;
            d.edges.push(Some(edge));
        }
        d
    }

    async fn start_edge(&self, i: usize, store: Arc<MemoryStore>) -> EdgeServer {
        EdgeServer::start_with_store(
            edge_config(&format!("edge-{i}"), self.origin.addr(), &self.servers),
            store,
        )
        .await
        .expect("edge")
    }

    async fn get(&self, edge: usize, target: &str) -> Reply {
        let edge = self.edges[edge].as_ref().expect("edge is running");
        send(
            &client(),
            edge.public_addr(),
            Method::GET,
            target,
            HOST,
            &[],
        )
        .await
    }

    /// POSTs a URL purge to API `api`.
    async fn post(&self, api: usize, target: &str) -> Reply {
        let body = format!(r#"{{"site":"assets","urls":["https://{HOST}{target}"]}}"#);
        api_call(
            self.apis[api].addr(),
            Method::POST,
            "/v1/purge",
            Some(TOKEN),
            &body,
        )
        .await
    }

    /// Purges `target` through API `api`, retrying 503s (at most 100 tries, 20 s).
    async fn purge_until_accepted(&self, api: usize, target: &str) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        for _ in 0..100 {
            let reply = self.post(api, target).await;
            last = reply.text();
            if reply.status == StatusCode::ACCEPTED {
                return json(&reply)["seq"].as_u64().expect("seq");
            }
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                reply.text()
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{target} not accepted within 20 s: {}",
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{target} not accepted in 100 tries: {last}");
    }

    /// Asks API `api` for purge `seq`'s status, holding until done (at most 15 s).
    async fn status(&self, api: usize, seq: u64) -> serde_json::Value {
        self.status_query(api, seq, "?wait=15s").await
    }

    async fn status_query(&self, api: usize, seq: u64, query: &str) -> serde_json::Value {
        let reply = api_call(
            self.apis[api].addr(),
            Method::GET,
            &format!("/v1/purges/{seq}{query}"),
            Some(TOKEN),
            "",
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        json(&reply)
    }

    /// Caches `target` on every running edge (a hit the second time).
    async fn cache_everywhere(&self, target: &str) {
        for i in 0..self.edges.len() {
            if self.edges[i].is_some() {
                self.get(i, target).await;
                let hit = self.get(i, target).await;
                assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
            }
        }
    }

    /// Every running edge fetches `target` afresh.
    async fn gone_everywhere(&self, target: &str) {
        for i in 0..self.edges.len() {
            if self.edges[i].is_some() {
                let reply = self.get(i, target).await;
                assert!(
                    reply.cache_status().contains("fwd=uri-miss"),
                    "edge-{i} still serves purged {target}: {}",
                    reply.cache_status()
                );
            }
        }
    }
}

/// Waits until every store's watermark reaches `seq` (at most 30 s: after a server was
/// killed, nodes that read through it retry while the stream elects a new leader).
async fn applied_everywhere(stores: &[Arc<MemoryStore>], seq: u64) {
    let done = support::eventually(Duration::from_secs(30), || {
        stores.iter().all(|s| s.purge_watermark() >= seq)
    })
    .await;
    let marks: Vec<u64> = stores.iter().map(|s| s.purge_watermark()).collect();
    assert!(done, "watermarks {marks:?} did not reach {seq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apis_six_nodes_and_a_nats_server_killed_mid_stream_lose_no_accepted_purge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = NatsCluster::start(dir.path()).await;
    let d = Deployment::start(cluster.urls(), 3, 2, 6).await;

    // Accepted by either instance, reported done by the other, gone from all six nodes.
    for (accept, report, target) in [(0, 1, "/a/one.bin"), (1, 0, "/a/two.bin")] {
        d.cache_everywhere(target).await;
        let seq = d.purge_until_accepted(accept, target).await;
        let status = d.status(report, seq).await;
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["nodes"]["applied"], 6, "{status}");
        d.gone_everywhere(target).await;
    }

    // A stream of purges through both instances; the server leading the stream's
    // replicas (the one that orders and acknowledges publishes) is killed part way.
    let leader = cluster.stream_leader(STREAM).await;
    let mut accepted = Vec::new();
    for i in 0..120 {
        if i == 40 {
            cluster.servers[leader].kill();
        }
        let target = format!("/f/{i}.bin");
        let seq = d.purge_until_accepted(i % 2, &target).await;
        accepted.push((seq, target));
    }
    let last = accepted.iter().map(|(s, _)| *s).max().expect("purges");
    applied_everywhere(&d.stores, last).await;
    // Every accepted purge is in the stream, at the sequence number it was given.
    let page = log_page(&d, 1, 0).await;
    for (seq, target) in &accepted {
        let entry = page
            .purges
            .iter()
            .find(|p| p.seq == *seq)
            .unwrap_or_else(|| panic!("accepted purge {seq} ({target}) is not in the stream"));
        assert_eq!(
            entry.purge.selector,
            node_api::purge::Selector::Urls(vec![format!("https://{HOST}{target}")]),
            "purge {seq}"
        );
    }
    let status = d.status(0, last).await;
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["nodes"]["applied"], 6, "{status}");
}

/// The purge log as nodes may read it, through API `api`.
async fn log_page(d: &Deployment, api: usize, after: u64) -> node_api::purge::PurgeLogPage {
    let reply = support::send(
        &client(),
        d.apis[api].addr(),
        Method::GET,
        &format!("/v1/purge-log?after={after}&limit=10000"),
        "api",
        &[("cdn-node-token", NODE_TOKEN)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    serde_json::from_slice(&reply.body).expect("a log page")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_for_500_purges_catches_up_before_it_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start("solo", dir.path(), None).await;
    let mut d = Deployment::start(vec![nats.url()], 1, 1, 2).await;
    let targets: Vec<String> = (0..500).map(|i| format!("/off/{i}.bin")).collect();
    // Node 1 caches a few of the objects about to be purged, then goes away.
    for target in targets.iter().step_by(50) {
        d.get(1, target).await;
    }
    let down = d.edges[1].take().expect("edge 1");
    down.shutdown().await;
    let before = d.stores[1].purge_watermark();
    // 500 purges, 8 publishers at a time.
    let mut last = 0;
    for chunk in targets.chunks(8) {
        let seqs =
            futures_util::future::join_all(chunk.iter().map(|t| d.purge_until_accepted(0, t)))
                .await;
        last = last.max(seqs.into_iter().max().unwrap_or(0));
    }
    assert!(last >= before + 500, "head {last}, node was at {before}");
    applied_everywhere(&d.stores[..1], last).await;
    // Node 0's report of `last` follows its apply within `REPORT_EVERY` (100 ms: reports
    // are batched); the status then names edge-1 alone.
    let alone = serde_json::json!(["edge-1"]);
    let mut status = d.status_query(0, last, "").await;
    for _ in 0..100 {
        if status["nodes"]["lagging"] == alone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = d.status_query(0, last, "").await;
    }
    assert_eq!(status["state"], "in_progress", "{status}");
    assert_eq!(status["nodes"]["lagging"], alone, "{status}");

    // Back over the same store: every purge applied before start returns.
    let back = d.start_edge(1, d.stores[1].clone()).await;
    assert_eq!(
        d.stores[1].purge_watermark(),
        last,
        "caught up before serving"
    );
    d.edges[1] = Some(back);
    for target in targets.iter().step_by(50) {
        let reply = d.get(1, target).await;
        assert!(
            reply.cache_status().contains("fwd=uri-miss"),
            "{target} served purged: {}",
            reply.cache_status()
        );
    }
    let status = d.status(0, last).await;
    assert_eq!(status["state"], "done", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_the_api_answers_503_nodes_keep_serving_and_all_resumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nats = NatsServer::start("solo", dir.path(), None).await;
    let d = Deployment::start(vec![nats.url()], 1, 1, 2).await;
    d.cache_everywhere("/down/a.bin").await;

    nats.kill();
    // Refused at once, never accepted: nothing could store it.
    let start = tokio::time::Instant::now();
    let mut refused = None;
    for _ in 0..50 {
        let reply = d.post(0, "/down/a.bin").await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(reply);
            break;
        }
        assert_ne!(
            reply.status,
            StatusCode::ACCEPTED,
            "accepted with NATS down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("503 while NATS is down");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(refused.header("retry-after"), "1");
    assert!(refused.text().contains("NATS"), "{}", refused.text());
    // Nodes keep serving what they have.
    for i in 0..2 {
        let reply = d.get(i, "/down/a.bin").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.cache_status().contains("hit"),
            "{}",
            reply.cache_status()
        );
    }

    nats.restart().await;
    let seq = d.purge_until_accepted(0, "/down/a.bin").await;
    let status = d.status(0, seq).await;
    assert_eq!(status["state"], "done", "{status}");
    d.gone_everywhere("/down/a.bin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_purge_gets_422_from_any_instance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start("solo", dir.path(), None).await;
    let d = Deployment::start(vec![nats.url()], 1, 2, 0).await;
    let keyed = |api: usize, target: &str| {
        let body = format!(r#"{{"site":"assets","urls":["https://{HOST}{target}"]}}"#);
        let addr = d.apis[api].addr();
        async move {
            api_call_with(
                addr,
                Method::POST,
                "/v1/purge",
                Some(TOKEN),
                &[("idempotency-key", "release-7")],
                &body,
            )
            .await
        }
    };
    let first = keyed(0, "/k/a.bin").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    let seq = json(&first)["seq"].as_u64().expect("seq");
    // The other instance knows the key's request from the stream alone.
    let other = keyed(1, "/k/b.bin").await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text()
    );
    assert_eq!(other.header("content-type"), "application/problem+json");
    for api in [1, 0] {
        let again = keyed(api, "/k/a.bin").await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text());
        assert_eq!(json(&again)["seq"], seq);
    }
    let page = log_page(&d, 1, 0).await;
    assert_eq!(
        page.purges.last().map(|p| p.seq),
        Some(seq),
        "nothing after it"
    );
    assert!(
        !page
            .purges
            .iter()
            .any(|p| format!("{:?}", p.purge).contains("/k/b.bin")),
        "the refused purge is not in the stream"
    );
    // The request is its method and path too, and what the stream stores says so: a key
    // first used by `PURGE <url>` does not name a POST of the same URL.
    let url = format!("/https://{HOST}/k/c.bin");
    let purged = api_call_with(
        d.apis[0].addr(),
        Method::from_bytes(b"PURGE").expect("method"),
        &url,
        Some(TOKEN),
        &[("idempotency-key", "\"release-8\"")],
        "",
    )
    .await;
    assert_eq!(purged.status, StatusCode::ACCEPTED, "{}", purged.text());
    let posted = api_call_with(
        d.apis[1].addr(),
        Method::POST,
        "/v1/purge",
        Some(TOKEN),
        &[("idempotency-key", "release-8")],
        &format!(r#"{{"site":"assets","urls":["https://{HOST}/k/c.bin"]}}"#),
    )
    .await;
    assert_eq!(
        posted.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        posted.text()
    );
}

#[tokio::test]
async fn the_nats_log_keeps_the_purge_log_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = NatsServer::start("battery", dir.path(), None).await;
    server.wait_ready().await;
    let url = server.url();
    let mut n = 0;
    // Each check gets a log on a stream of its own, so each starts empty.
    purge_api::log_battery::run(|| {
        n += 1;
        let config = purge_api::config::NatsLogConfig {
            servers: vec![url.clone()],
            stream: format!("BATTERY_{n}"),
            replicas: 1,
            cluster: None,
            ack_timeout: Duration::from_secs(5),
        };
        async move {
            let log = NatsLog::connect(&config, Retention::default())
                .await
                .expect("a NATS log");
            // The client connects in the background: wait until the stream answers.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while log.read_after(0, 1).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no stream within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log as Arc<dyn PurgeLog>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_over_its_state_dir_reads_the_stream_from_its_persisted_watermark() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start("solo", dir.path(), None).await;
    // One purge (the setup's) is in the stream before the node first starts.
    let d = Deployment::start(vec![nats.url()], 1, 1, 0).await;
    let state_dir = dir.path().join("edge-state");
    let config = || {
        let mut config = edge_config("edge-0", d.origin.addr(), &d.servers);
        config.cache.state_dir = Some(state_dir.clone());
        config
    };
    let edge = EdgeServer::start_with_store(config(), Arc::new(MemoryStore::new(64 << 20)))
        .await
        .expect("edge");
    let state = edge.edge().state().expect("a state").clone();
    let joined_at = state.floor();
    assert!(joined_at >= 1, "a fresh node takes the head: {joined_at}");
    let stored_at = d.purge_until_accepted(0, "/n/early.bin").await;
    assert!(
        support::eventually(Duration::from_secs(10), || state.watermark() == stored_at).await,
        "persisted {} of {stored_at}",
        state.watermark()
    );
    drop(state);
    let held = Arc::downgrade(edge.edge());
    edge.shutdown().await;
    assert!(
        support::eventually(Duration::from_secs(10), || held.strong_count() == 0).await,
        "the stopped edge is still held: its state stays open"
    );

    let gone = d.purge_until_accepted(0, "/n/gone.bin").await;
    let last = d.purge_until_accepted(0, "/n/also.bin").await;
    // Back with an empty memory over the same state: it reads what it missed.
    let back = EdgeServer::start_with_store(config(), Arc::new(MemoryStore::new(64 << 20)))
        .await
        .expect("edge restarts");
    let state = back.edge().state().expect("a state");
    assert!(back.edge().store().purge_watermark() >= last);
    assert_eq!(
        state.floor(),
        joined_at,
        "resumed, not restarted at the stream's head"
    );
    assert!(
        state.journal_len() >= last - joined_at,
        "the missed purges are in the journal: {}",
        state.journal_len()
    );
    let generation = back
        .edge()
        .live()
        .sites
        .by_name("assets")
        .expect("site")
        .generation();
    let key = edge::cache::key::CacheKey::new(generation, "http", HOST, "/n/gone.bin");
    assert!(gone > stored_at);
    assert_eq!(
        state.check("assets", &key, &[], stored_at),
        edge::node::state::Verdict::Gone
    );
    let kept = edge::cache::key::CacheKey::new(generation, "http", HOST, "/n/kept.bin");
    assert_eq!(
        state.check("assets", &kept, &[], stored_at),
        edge::node::state::Verdict::Fresh
    );
    back.shutdown().await;
}

/// The value of `series` in a node's `/metrics`, 0 when absent.
async fn node_metric(edge: &EdgeServer, series: &str) -> f64 {
    support::admin_text(edge.admin_addr(), "/metrics")
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("numeric metric"))
}

/// A node that keeps up reads purges from the stream's republished live subjects, not
/// through a consumer; a live message claiming a purge the stream does not have (stale, or
/// stray) neither stops it nor makes it skip anything, and the next real purge still
/// arrives live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_keep_up_read_purges_live_and_a_stray_live_message_stops_nothing() {
    const LIVE: &str = "edge_purge_stream_reads_total{via=\"live\"}";
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start("solo", dir.path(), None).await;
    let d = Deployment::start(vec![nats.url()], 1, 1, 1).await;
    let edge = d.edges[0].as_ref().expect("edge 0");
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(STREAM).await.expect("the purge stream");
    let republish = stream
        .info()
        .await
        .expect("stream info")
        .config
        .republish
        .clone();
    assert_eq!(
        republish.map(|r| r.destination),
        Some(node_api::nats::live_subjects(STREAM)),
        "the stream republishes to the live subjects"
    );

    d.cache_everywhere("/live/one.bin").await;
    let seq = d.purge_until_accepted(0, "/live/one.bin").await;
    applied_everywhere(&d.stores, seq).await;
    d.gone_everywhere("/live/one.bin").await;
    let live = node_metric(edge, LIVE).await;
    assert!(live >= 1.0, "purge {seq} was not read live ({live})");

    // A stray live message two past the stream's last purge.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_SEQUENCE,
        (seq + 2).to_string().as_str(),
    );
    let record = serde_json::json!({
        "publisher": "stray",
        "purge": {"site": "assets", "selector": {"kind": "urls", "values": ["https://x/y"]}, "mode": "hard"},
        "accepted_at_ms": 0,
    });
    client
        .publish_with_headers(
            format!("{STREAM}_LIVE.p"),
            headers,
            serde_json::to_vec(&record).expect("json").into(),
        )
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    d.cache_everywhere("/live/two.bin").await;
    let next = d.purge_until_accepted(0, "/live/two.bin").await;
    assert_eq!(next, seq + 1);
    applied_everywhere(&d.stores, next).await;
    d.gone_everywhere("/live/two.bin").await;
    assert_eq!(d.stores[0].purge_watermark(), next, "nothing skipped");
    let after = node_metric(edge, LIVE).await;
    assert!(after > live, "purge {next} was not read live ({after})");
}

/// Nodes report their watermarks as plain messages between their puts in the bucket; a
/// put older than a report the API already took (it reached the bucket's watch later)
/// does not move the node back. Two stand-in nodes publish and put by hand, so the order
/// the API sees is the test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watermark_put_older_than_a_published_report_does_not_move_the_node_back() {
    use node_api::nats::{WatermarkReport, watermark_bucket, watermark_key, watermark_subject};
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = NatsServer::start("solo", dir.path(), None).await;
    let servers = vec![nats.url()];
    let d = Deployment {
        origin: DemoOrigin::start(loopback()).await.expect("origin"),
        edges: Vec::new(),
        stores: Vec::new(),
        apis: vec![
            PurgeApiServer::start(api_config(&servers, 1, 2))
                .await
                .expect("purge API"),
        ],
        servers,
    };
    let mut seq = 0;
    for i in 0..3 {
        seq = d.purge_until_accepted(0, &format!("/wm/{i}.bin")).await;
    }
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let bucket = async_nats::jetstream::new(client.clone())
        .get_key_value(watermark_bucket(STREAM))
        .await
        .expect("the watermark bucket");
    let report = |watermark, at_ms| {
        bytes::Bytes::from(
            WatermarkReport {
                watermark,
                at_ms: Some(at_ms),
            }
            .encode(),
        )
    };
    let now = WatermarkReport::now(0).at_ms.expect("a time");
    let lagging = |status: &serde_json::Value| status["nodes"]["lagging"].clone();

    // edge-0's fresh report arrives as a message (sent again until the API, which may
    // still be setting up its subscription, has it).
    let mut status = serde_json::Value::Null;
    for _ in 0..200 {
        client
            .publish(watermark_subject(STREAM, "edge-0"), report(seq, now))
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        status = d.status_query(0, seq, "").await;
        if lagging(&status) == serde_json::json!(["edge-1"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(lagging(&status), serde_json::json!(["edge-1"]), "{status}");

    // Then an older put of edge-0, then edge-1's put, through the same watch: once
    // edge-1's is seen, edge-0's came before it.
    bucket
        .put(watermark_key("edge-0"), report(seq - 2, now - 1_000))
        .await
        .expect("put");
    bucket
        .put(watermark_key("edge-1"), report(seq, now))
        .await
        .expect("put");
    let status = d.status(0, seq).await;
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["nodes"]["applied"], 2, "{status}");
}
