//! Purge propagation: purges fanned out to `NODES` in-process edges (50 by default) through
//! the purge API on loopback; p50/p99/max from the moment the publisher sends a purge to
//! the moment the watcher sees every node's watermark at or past it. The API does not
//! give its accept time in the `202` (the log keeps it in whole milliseconds), so latency
//! runs from the send and includes the accept itself (reported on its own too). A purge
//! never seen applied on every node within 30 s of the last `202` is a failure: counted,
//! reported, and the bench prints FAILED and exits 1.
//!
//! First how long the nodes take to start, `STARTING` at a time (64 by default; 1 starts
//! them one after another), as a fleet starts: with NATS each one connects, reads the
//! stream and reports its watermark before it serves. Then three phases:
//! - back to back: `PURGES` purges (1,000 by default), a new one as soon as the previous
//!   is accepted;
//! - paced: `PACED` purges (300 by default) at 100 a second, as purges trickle in from
//!   publishers, with what they cost the fan-out: with the embedded log the push requests
//!   the API made (its `purge_pushes_total`), with NATS the watermark reports the nodes
//!   put in the KV bucket (the bucket stream's sequence), each per purge per node;
//! - throughput: 64 concurrent clients for 3 s, twice. Once with the bench publisher's
//!   rate limits lifted (1e6/s), so only the commit queue can shed: how many purges per
//!   second the API accepts. Once as a publisher with the default limits (`[rate]`: 50
//!   requests/s, burst 100; the embedded topology of `cdn up` uses them too): how many
//!   are accepted and shed (`429` by the rate limit or a full queue, `503` by a queue
//!   timeout); more accepted than the burst plus the rate over the run is a failure.
//!
//! Once with the embedded log (the API pushes to every node), once with the NATS
//! JetStream log (one local `nats-server`, started here; every node reads the stream with
//! its own consumer).
//!
//! `NODES=1000 cargo bench --bench purge_fanout [-- embedded|nats]` (release; both logs by
//! default; the NATS run needs `nats-server` installed). `RUST_LOG=...` prints the
//! components' logs. Results go to BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge::Storage;
use edge::{EdgeConfig, EdgeServer, MemoryStore};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use purge_api::{PurgeApiConfig, PurgeApiServer};

/// The allocator the `cdn` binary runs the API and the nodes with (`src/main.rs`), so the
/// bench measures what ships (the C library's allocator took 15% of the CPU here).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The bench publisher, with its rate limits lifted.
const TOKEN: &str = "bench-publisher-token-000";
/// A publisher with the default rate limits.
const LIMITED_TOKEN: &str = "limited-publisher-token-000";
/// How long after the last `202` a purge may take to be seen applied everywhere before
/// it counts as a failure.
const SETTLE: Duration = Duration::from_secs(30);
const NODE_TOKEN: &str = "bench-node-token-0000000";
/// The pace of the paced phase: purges per second.
const PACE: u32 = 100;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A count from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
        Err(_) => default,
    }
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let sizes = Sizes {
        nodes: env_count("NODES", 50),
        purges: env_count("PURGES", 1000),
        paced: env_count("PACED", 300),
        starting: env_count("STARTING", 64),
    };
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "embedded" || a == "nats")
        .collect();
    let mut failures = Vec::new();
    for engine in ["embedded", "nats"] {
        if wanted.is_empty() || wanted.iter().any(|w| w == engine) {
            println!(
                "== {engine} log, {} nodes, {} purges back to back, {} at {PACE}/s",
                sizes.nodes, sizes.purges, sizes.paced
            );
            failures.extend(
                run(engine == "nats", &sizes)
                    .await
                    .into_iter()
                    .map(|f| format!("{engine}: {f}")),
            );
        }
    }
    if !failures.is_empty() {
        for failure in &failures {
            println!("FAILED {failure}");
        }
        std::process::exit(1);
    }
}

/// How big a run is.
struct Sizes {
    nodes: usize,
    /// Purges sent back to back.
    purges: usize,
    /// Purges sent at [`PACE`] a second.
    paced: usize,
    /// Nodes starting at once.
    starting: usize,
}

/// A local JetStream server for the NATS run, killed when dropped.
struct Nats(std::process::Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nats-server` with JetStream on a free loopback port; waits (at most 10 s)
/// until it accepts connections.
async fn start_nats(dir: &std::path::Path) -> (Nats, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("nats"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server is needed for the NATS run: apt-get install -y nats-server");
    let server = Nats(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (server, format!("nats://127.0.0.1:{port}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not listen within 10 s");
}

/// Sees when every node has applied each purge: every 200 µs, reads the watermark of the
/// node that was lowest last time and, only if it moved past what was seen, every node's;
/// notes, for each sequence number, when the lowest watermark first reached it. (Reading
/// all 1,000 watermarks 5,000 times a second took a tenth of a core from the nodes.)
struct Watcher {
    applied_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>>,
    /// The lowest watermark seen.
    everywhere: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Watches `stores` for sequence numbers up to `most`.
    fn start(stores: Vec<Arc<MemoryStore>>, most: usize) -> Self {
        let applied_at = Arc::new(std::sync::Mutex::new(vec![None; most + 1]));
        let everywhere = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (applied_at, everywhere, stop) =
                (applied_at.clone(), everywhere.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = 0usize;
                let mut lowest = 0;
                while !stop.load(Ordering::Acquire) {
                    let moved = stores
                        .get(lowest)
                        .is_some_and(|s| s.purge_watermark() as usize > seen);
                    if !moved {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    let (at, low) = stores
                        .iter()
                        .map(|s| s.purge_watermark())
                        .enumerate()
                        .min_by_key(|&(_, w)| w)
                        .unwrap_or((0, 0));
                    lowest = at;
                    let low = low as usize;
                    if low > seen {
                        let now = Instant::now();
                        let mut at = applied_at.lock().unwrap();
                        for slot in at.iter_mut().take(low + 1).skip(seen + 1) {
                            *slot = Some(now);
                        }
                        seen = low;
                        everywhere.store(low as u64, Ordering::Release);
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            })
        };
        Watcher {
            applied_at,
            everywhere,
            stop,
            task,
        }
    }

    /// Waits until every node applied `seq`, at most [`SETTLE`].
    async fn settle(&self, seq: u64) {
        let deadline = Instant::now() + SETTLE;
        while self.everywhere.load(Ordering::Acquire) < seq && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// From each purge's send to its being applied on every node, sorted; and how many
    /// were never seen applied everywhere.
    fn latencies(&self, sent: &[(u64, Instant)]) -> (Vec<Duration>, usize) {
        let at = self.applied_at.lock().unwrap();
        let mut latencies = Vec::with_capacity(sent.len());
        let mut never = 0;
        for &(seq, sent) in sent {
            match at.get(seq as usize).copied().flatten() {
                Some(applied) => latencies.push(applied.saturating_duration_since(sent)),
                None => never += 1,
            }
        }
        latencies.sort();
        (latencies, never)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
    }
}

/// What the fan-out has done so far, for the cost of a phase: with the embedded log the
/// pushes the API made, with NATS the watermark reports in the KV bucket.
async fn fan_out_work(client: &HttpClient, addr: std::net::SocketAddr, nats: Option<&str>) -> u64 {
    match nats {
        None => {
            let request = http::Request::builder()
                .uri(format!("http://{addr}/metrics"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = client.request(request).await.expect("metrics");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let text = String::from_utf8_lossy(&body);
            text.lines()
                .find_map(|line| line.strip_prefix("purge_pushes_total "))
                .and_then(|n| n.trim().parse().ok())
                .expect("purge_pushes_total in the API's metrics")
        }
        Some(url) => {
            let client = async_nats::connect(url).await.expect("NATS");
            let js = async_nats::jetstream::new(client);
            let bucket = node_api::nats::watermark_bucket(node_api::nats::DEFAULT_STREAM);
            let mut stream = js
                .get_stream(format!("KV_{bucket}"))
                .await
                .expect("the watermark bucket's stream");
            stream
                .info()
                .await
                .expect("bucket info")
                .state
                .last_sequence
        }
    }
}

/// Waits (at most 10 s) until the purge API has created the purge stream and its
/// watermark bucket: it does so once its client is connected (at its first head refresh,
/// within 500 ms), and a node started before that finds no stream, forgets its content
/// and retries, which is not what a node's start costs.
async fn stream_created(url: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("NATS"));
    let bucket = node_api::nats::watermark_bucket(node_api::nats::DEFAULT_STREAM);
    for _ in 0..200 {
        if js.get_stream(node_api::nats::DEFAULT_STREAM).await.is_ok()
            && js.get_stream(format!("KV_{bucket}")).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the purge API did not create the purge stream within 10 s");
}

/// One engine's run; what failed, if anything.
async fn run(nats: bool, sizes: &Sizes) -> Vec<String> {
    let nodes = sizes.nodes;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, url) = if nats {
        let (server, url) = start_nats(dir.path()).await;
        (Some(server), url)
    } else {
        (None, String::new())
    };
    let node_purge = if nats {
        format!("[purge.nats]\nservers = [\"{url}\"]\n")
    } else {
        String::new()
    };
    let log = if nats {
        format!("[log]\nengine = \"nats\"\n[log.nats]\nservers = [\"{url}\"]\n")
    } else {
        format!(
            "[log]\npath = \"{}\"\n",
            dir.path().join("bench.redb").display()
        )
    };
    let api_text = |nodes: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nnode_token = \"{NODE_TOKEN}\"\n{log}{nodes}\
             [[site]]\nname = \"assets\"\nhosts = [\"assets.test\"]\n\
             [[publisher]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\nsites = [\"assets\"]\n\
             [publisher.rate]\nrequests_per_second = 1000000.0\nrequest_burst = 1000000.0\n\
             objects_per_second = 1000000.0\nobject_burst = 1000000.0\n\
             [[publisher]]\nname = \"limited\"\ntoken = \"{LIMITED_TOKEN}\"\nsites = [\"assets\"]\n"
        )
    };
    let start_api = |text: String| async move {
        PurgeApiServer::start(PurgeApiConfig::from_toml(&text).expect("api config"))
            .await
            .expect("purge API")
    };
    // With NATS the API goes first: it creates the stream the nodes then read.
    let mut api = None;
    if nats {
        let names: String = (0..nodes)
            .map(|i| format!("[[node]]\nname = \"edge-{i}\"\n"))
            .collect();
        api = Some(start_api(api_text(&names)).await);
        stream_created(&url).await;
    }
    // Nodes start as a fleet does, many at once (`STARTING` at a time), each ready when
    // its start returns (with NATS: connected, caught up and its watermark reported).
    let at_once = sizes.starting.max(1);
    let starting = Instant::now();
    let started: Vec<(EdgeServer, Arc<MemoryStore>)> =
        futures_util::stream::iter((0..nodes).map(|i| {
            let node_purge = node_purge.clone();
            async move {
                let store = Arc::new(MemoryStore::new(16 << 20));
                let text = format!(
                    "[node]\nname = \"edge-{i}\"\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                     [purge]\nnode_token = \"{NODE_TOKEN}\"\n{node_purge}\
                     [[site]]\nname = \"assets\"\nhosts = [\"assets.test\"]\nupstream = \"http://127.0.0.1:9\"\n"
                );
                let config = EdgeConfig::from_toml(&text).expect("edge config");
                let edge = EdgeServer::start_with_store(config, store.clone())
                    .await
                    .expect("edge");
                (edge, store)
            }
        }))
        .buffered(at_once)
        .collect()
        .await;
    let startup = starting.elapsed();
    println!(
        "node startup: {nodes} nodes serving in {startup:.2?} ({:.1} nodes/s, {at_once} starting \
         at a time)",
        nodes as f64 / startup.as_secs_f64()
    );
    let (edges, stores): (Vec<_>, Vec<_>) = started.into_iter().unzip();
    let api = match api {
        Some(api) => api,
        None => {
            let nodes: String = edges
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    format!(
                        "[[node]]\nname = \"edge-{i}\"\nadmin = \"http://{}\"\n",
                        e.admin_addr()
                    )
                })
                .collect();
            start_api(api_text(&nodes)).await
        }
    };
    let addr = api.addr();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let nats_url = nats.then_some(url.as_str());

    let mut failures = Vec::new();
    let watcher = Watcher::start(stores, sizes.purges + sizes.paced);

    // Back to back: one purge at a time, a new one as soon as the previous is accepted.
    let mut sent = Vec::with_capacity(sizes.purges);
    let mut accept = Vec::with_capacity(sizes.purges);
    let mut refused = 0;
    let started = Instant::now();
    for i in 0..sizes.purges {
        let body = format!(r#"{{"site":"assets","urls":["https://assets.test/obj/{i}.js"]}}"#);
        let at = Instant::now();
        let (status, reply) = post(&client, addr, TOKEN, &body).await;
        if status != 202 {
            println!("purge {i} not accepted: {status} {reply}");
            refused += 1;
            continue;
        }
        accept.push(at.elapsed());
        sent.push((seq_of(&reply), at));
    }
    let submitted = started.elapsed();
    let last = sent.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
    watcher.settle(last).await;
    let (latencies, never) = watcher.latencies(&sent);
    accept.sort();
    println!(
        "propagation to {nodes} nodes, back to back, send -> applied on all: {} of {} accepted \
         purges applied (submitted in {submitted:.2?}): {}",
        latencies.len(),
        sent.len(),
        spread(&latencies),
    );
    println!("  of which send -> 202: {}", spread(&accept));
    if never > 0 {
        failures.push(format!(
            "{never} accepted purges never seen applied on every node within {SETTLE:?} of the last 202"
        ));
    }
    if refused > 0 {
        failures.push(format!(
            "{refused} of {} back-to-back purges refused with rate limits lifted",
            sizes.purges
        ));
    }

    // Paced: purges trickling in at PACE a second, each sent on schedule in its own task.
    // With NATS the nodes' reports between their KV puts are plain messages: counted by
    // a subscriber of their subjects.
    let published = Arc::new(AtomicU64::new(0));
    let _counting = match nats_url {
        Some(url) => {
            let client = async_nats::connect(url).await.expect("NATS");
            let mut reports = client
                .subscribe(node_api::nats::watermark_subjects(
                    node_api::nats::DEFAULT_STREAM,
                ))
                .await
                .expect("subscribe to the watermark reports");
            client.flush().await.expect("flush");
            let published = published.clone();
            Some(tokio::spawn(async move {
                let _client = client;
                while reports.next().await.is_some() {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }))
        }
        None => None,
    };
    let work_before = fan_out_work(&client, addr, nats_url).await;
    let started = tokio::time::Instant::now();
    let mut senders = Vec::with_capacity(sizes.paced);
    for i in 0..sizes.paced {
        tokio::time::sleep_until(started + Duration::from_secs(i as u64) / PACE).await;
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            let body =
                format!(r#"{{"site":"assets","urls":["https://assets.test/paced/{i}.js"]}}"#);
            let at = Instant::now();
            let (status, reply) = post(&client, addr, TOKEN, &body).await;
            (status == 202).then(|| (seq_of(&reply), at))
        }));
    }
    let mut sent = Vec::with_capacity(sizes.paced);
    for sender in senders {
        if let Some(sent_one) = sender.await.expect("paced sender") {
            sent.push(sent_one);
        }
    }
    let last = sent.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
    watcher.settle(last).await;
    if nats {
        // The last reports of the phase: published within 100 ms, put within 1 s.
        tokio::time::sleep(edge::node::purge_stream::STORE_EVERY + Duration::from_millis(200))
            .await;
    }
    let work = fan_out_work(&client, addr, nats_url).await - work_before;
    let published = published.load(Ordering::Relaxed);
    let (latencies, never) = watcher.latencies(&sent);
    let per_purge_per_node = |n: u64| n as f64 / (sent.len().max(1) * nodes) as f64;
    let what = if nats {
        format!(
            "{work} watermark puts in the KV bucket: {:.4} per purge per node; {published} \
             published reports: {:.4}",
            per_purge_per_node(work),
            per_purge_per_node(published)
        )
    } else {
        format!(
            "{work} push requests: {:.4} per purge per node",
            per_purge_per_node(work)
        )
    };
    println!(
        "paced at {PACE}/s, send -> applied on all: {} of {} accepted purges applied: {}; {what}",
        latencies.len(),
        sent.len(),
        spread(&latencies),
    );
    if never > 0 {
        failures.push(format!(
            "{never} paced purges never seen applied on every node within {SETTLE:?}"
        ));
    }
    if sent.len() < sizes.paced {
        failures.push(format!(
            "{} of {} paced purges refused",
            sizes.paced - sent.len(),
            sizes.paced
        ));
    }
    watcher.stop().await;

    // Throughput with the rate limits lifted: only the commit queue can shed.
    let lifted = burst(&client, addr, TOKEN).await;
    println!(
        "throughput, 64 concurrent clients for {:.2?}, rate limits lifted (only the queue sheds): \
         {:.0} accepted purges/s; shed: {} x 429, {} x 503",
        lifted.took,
        lifted.accepted as f64 / lifted.took.as_secs_f64(),
        lifted.too_many,
        lifted.unavailable
    );
    // The same as a publisher with the default limits.
    let limited = burst(&client, addr, LIMITED_TOKEN).await;
    let rate = purge_api::admission::RateConfig::default();
    let most = rate.request_burst + rate.requests_per_second * limited.took.as_secs_f64();
    println!(
        "throughput, 64 concurrent clients for {:.2?}, default limits (burst {}, {}/s: at most \
         {most:.0} may pass): {} accepted, shed: {} x 429, {} x 503",
        limited.took,
        rate.request_burst,
        rate.requests_per_second,
        limited.accepted,
        limited.too_many,
        limited.unavailable
    );
    if limited.accepted as f64 > most.floor() {
        failures.push(format!(
            "{} purges accepted under the default limits, over the {most:.0} they allow",
            limited.accepted
        ));
    }
    api.shutdown().await;
    for edge in edges {
        edge.shutdown().await;
    }
    failures
}

/// The sequence number in a `202`'s body.
fn seq_of(reply: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(reply).expect("a 202's body is JSON")["seq"]
        .as_u64()
        .expect("a 202 names the purge's seq")
}

/// The `p` quantile of sorted `values` (`1.0` is the largest), or "-" when empty.
/// `p50 A  p99 B  max C` of sorted `values`.
fn spread(values: &[Duration]) -> String {
    format!(
        "p50 {}  p99 {}  max {}",
        pct(values, 0.50),
        pct(values, 0.99),
        pct(values, 1.0)
    )
}

fn pct(values: &[Duration], p: f64) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let i = ((values.len() as f64 * p) as usize).min(values.len() - 1);
    format!("{:.2?}", values[i])
}

/// What 64 concurrent clients got in 3 s.
struct Burst {
    accepted: u64,
    too_many: u64,
    unavailable: u64,
    /// From the first send to the last answer.
    took: Duration,
}

/// 64 clients sending purges as `token` for 3 s, each as soon as its last was answered.
async fn burst(client: &HttpClient, addr: std::net::SocketAddr, token: &'static str) -> Burst {
    let started = Instant::now();
    let stop = started + Duration::from_secs(3);
    let mut workers = Vec::new();
    for w in 0..64 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut too_many, mut unavailable, mut n) = (0u64, 0u64, 0u64, 0u64);
            while Instant::now() < stop {
                let body = format!(
                    r#"{{"site":"assets","urls":["https://assets.test/t/{token}/{w}/{n}.js"]}}"#
                );
                n += 1;
                match post(&client, addr, token, &body).await.0 {
                    202 => ok += 1,
                    429 => too_many += 1,
                    503 => unavailable += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            (ok, too_many, unavailable)
        }));
    }
    let mut total = Burst {
        accepted: 0,
        too_many: 0,
        unavailable: 0,
        took: Duration::ZERO,
    };
    for w in workers {
        let (ok, too_many, unavailable) = w.await.expect("worker");
        total.accepted += ok;
        total.too_many += too_many;
        total.unavailable += unavailable;
    }
    total.took = started.elapsed();
    total
}

async fn post(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    token: &str,
    body: &str,
) -> (u16, String) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/v1/purge"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("request");
    let response = client.request(request).await.expect("answer");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
