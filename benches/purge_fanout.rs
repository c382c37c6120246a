//! Purge propagation: 1,000 purges fanned out to 50 in-process edges through the purge
//! API on loopback, one after another; p50/p99/max from the moment the publisher sends
//! the purge to the moment the watcher sees every node's watermark at or past it. The API
//! does not give its accept time in the `202` (the log keeps it in whole milliseconds), so
//! latency runs from the send and includes the accept itself (reported on its own too).
//! A purge never seen applied on every node within 30 s of the last `202` is a failure:
//! counted, reported, and the bench prints FAILED and exits 1.
//!
//! Then throughput: 64 concurrent clients for 3 s, twice. Once with the bench publisher's
//! rate limits lifted (1e6/s), so only the commit queue can shed: how many purges per
//! second the API accepts. Once as a publisher with the default limits (`[rate]`: 50
//! requests/s, burst 100; the embedded topology of `cdn up` uses them too): how many are
//! accepted and shed (`429` by the rate limit or a full queue, `503` by a queue timeout);
//! more accepted than the burst plus the rate over the run is a failure.
//!
//! Once with the embedded log (the API pushes to every node), once with the NATS
//! JetStream log (one local `nats-server`, started here; every node reads the stream with
//! its own consumer).
//!
//! `cargo bench --bench purge_fanout [-- embedded|nats]` (release; both by default; the
//! NATS run needs `nats-server` installed). Results go to BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge::Storage;
use edge::{EdgeConfig, EdgeServer, MemoryStore};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use purge_api::{PurgeApiConfig, PurgeApiServer};

const NODES: usize = 50;
const PURGES: usize = 1000;
/// The bench publisher, with its rate limits lifted.
const TOKEN: &str = "bench-publisher-token-000";
/// A publisher with the default rate limits.
const LIMITED_TOKEN: &str = "limited-publisher-token-000";
/// How long after the last `202` a purge may take to be seen applied everywhere before
/// it counts as a failure.
const SETTLE: Duration = Duration::from_secs(30);
const NODE_TOKEN: &str = "bench-node-token-0000000";

#[tokio::main]
async fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "embedded" || a == "nats")
        .collect();
    let mut failures = Vec::new();
    for engine in ["embedded", "nats"] {
        if wanted.is_empty() || wanted.iter().any(|w| w == engine) {
            println!("== {engine} log");
            failures.extend(
                run(engine == "nats")
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

/// One engine's run; what failed, if anything.
async fn run(nats: bool) -> Vec<String> {
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
        let names: String = (0..NODES)
            .map(|i| format!("[[node]]\nname = \"edge-{i}\"\n"))
            .collect();
        api = Some(start_api(api_text(&names)).await);
    }
    let mut edges = Vec::new();
    let mut stores = Vec::new();
    for i in 0..NODES {
        let store = Arc::new(MemoryStore::new(16 << 20));
        let text = format!(
            "[node]\nname = \"edge-{i}\"\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [purge]\nnode_token = \"{NODE_TOKEN}\"\n{node_purge}\
             [[site]]\nname = \"assets\"\nhosts = [\"assets.test\"]\nupstream = \"http://127.0.0.1:9\"\n"
        );
        let config = EdgeConfig::from_toml(&text).expect("edge config");
        edges.push(
            EdgeServer::start_with_store(config, store.clone())
                .await
                .expect("edge"),
        );
        stores.push(store);
    }
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
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let mut failures = Vec::new();

    // Propagation: one purge at a time, a new one as soon as the previous is accepted, with
    // a watcher reading every node's watermark.
    let applied_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; PURGES + 1]));
    // The last sequence number accepted, once every purge is submitted.
    let last = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let watcher = {
        let (stores, applied_at, last) = (stores.clone(), applied_at.clone(), last.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            let mut deadline = None;
            loop {
                let everywhere = stores
                    .iter()
                    .map(|s| s.purge_watermark())
                    .min()
                    .unwrap_or(0) as usize;
                if everywhere > seen {
                    let now = Instant::now();
                    let mut at = applied_at.lock().unwrap();
                    for slot in at.iter_mut().take(everywhere + 1).skip(seen + 1) {
                        *slot = Some(now);
                    }
                    seen = everywhere;
                }
                let target = last.load(std::sync::atomic::Ordering::Acquire);
                if target != usize::MAX {
                    if seen >= target {
                        return;
                    }
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + SETTLE);
                    if Instant::now() >= deadline {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let mut sent_at = vec![None; PURGES + 1];
    let mut accept = Vec::with_capacity(PURGES);
    let mut refused = 0;
    let mut last_seq = 0;
    let started = Instant::now();
    for i in 0..PURGES {
        let body = format!(r#"{{"site":"assets","urls":["https://assets.test/obj/{i}.js"]}}"#);
        let sent = Instant::now();
        let (status, reply) = post(&client, addr, TOKEN, &body).await;
        if status != 202 {
            println!("purge {i} not accepted: {status} {reply}");
            refused += 1;
            continue;
        }
        accept.push(sent.elapsed());
        let seq: usize = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["seq"]
            .as_u64()
            .unwrap() as usize;
        sent_at[seq] = Some(sent);
        last_seq = last_seq.max(seq);
    }
    let submitted = started.elapsed();
    last.store(last_seq, std::sync::atomic::Ordering::Release);
    watcher.await.expect("watcher");
    let at = applied_at.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = (1..=PURGES)
        .filter_map(|s| Some(at[s]?.duration_since(sent_at[s]?)))
        .collect();
    let accepted = sent_at.iter().flatten().count();
    let never = (1..=PURGES)
        .filter(|&s| sent_at[s].is_some() && at[s].is_none())
        .count();
    latencies.sort();
    accept.sort();
    println!(
        "propagation to {NODES} nodes, send -> applied on all: {} of {accepted} accepted purges \
         applied (submitted in {submitted:.2?}): p50 {}  p99 {}  max {}",
        latencies.len(),
        pct(&latencies, 0.50),
        pct(&latencies, 0.99),
        pct(&latencies, 1.0),
    );
    println!(
        "  of which send -> 202: p50 {}  p99 {}  max {}",
        pct(&accept, 0.50),
        pct(&accept, 0.99),
        pct(&accept, 1.0),
    );
    if never > 0 {
        failures.push(format!(
            "{never} accepted purges never seen applied on every node within {SETTLE:?} of the last 202"
        ));
    }
    if refused > 0 {
        failures.push(format!(
            "{refused} of {PURGES} sequential purges refused with rate limits lifted"
        ));
    }

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

/// The `p` quantile of sorted `values` (`1.0` is the largest), or "-" when empty.
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
async fn burst(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    token: &'static str,
) -> Burst {
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
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
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
