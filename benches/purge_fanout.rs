//! Purge propagation: 1,000 purges fanned out to 50 in-process edges through the purge
//! API on loopback; p50/p99 from accept (the 202) to every node having applied it, and how
//! many purges per second the API accepts before it sheds. Once with the embedded log
//! (the API pushes to every node), once with the NATS JetStream log (one local
//! `nats-server`, started here; every node reads the stream with its own consumer).
//!
//! `cargo bench --bench purge_fanout [-- embedded|nats]` (release; both by default; the
//! NATS run needs `nats-server` installed). Results go to BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge::store::Storage;
use edge::{EdgeConfig, EdgeServer, MemoryStore};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use purge_api::{PurgeApiConfig, PurgeApiServer};

const NODES: usize = 50;
const PURGES: usize = 1000;
const TOKEN: &str = "bench-publisher-token-000";
const NODE_TOKEN: &str = "bench-node-token-0000000";

#[tokio::main]
async fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "embedded" || a == "nats")
        .collect();
    for engine in ["embedded", "nats"] {
        if wanted.is_empty() || wanted.iter().any(|w| w == engine) {
            println!("== {engine} log");
            run(engine == "nats").await;
        }
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

async fn run(nats: bool) {
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
             objects_per_second = 1000000.0\nobject_burst = 1000000.0\n"
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

    // Propagation: one purge at a time, a new one as soon as the previous is accepted, with
    // a watcher reading every node's watermark.
    let applied_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; PURGES + 1]));
    let watcher = {
        let (stores, applied_at) = (stores.clone(), applied_at.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen < PURGES && Instant::now() < deadline {
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
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let mut accepted_at = vec![None; PURGES + 1];
    let started = Instant::now();
    for i in 0..PURGES {
        let body = format!(r#"{{"site":"assets","urls":["https://assets.test/obj/{i}.js"]}}"#);
        let (status, reply) = post(&client, addr, &body).await;
        assert_eq!(status, 202, "{reply}");
        let seq: usize = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["seq"]
            .as_u64()
            .unwrap() as usize;
        accepted_at[seq] = Some(Instant::now());
    }
    let submitted = started.elapsed();
    watcher.await.expect("watcher");
    let at = applied_at.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = (1..=PURGES)
        .filter_map(|s| Some(at[s]?.saturating_duration_since(accepted_at[s]?)))
        .collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "propagation to {NODES} nodes, {} purges (submitted in {submitted:.2?}): p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );

    // Throughput before shedding: 64 concurrent publishers' requests for 3 s.
    let stop = Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    for w in 0..64 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut shed, mut n) = (0u64, 0u64, 0u64);
            while Instant::now() < stop {
                let body =
                    format!(r#"{{"site":"assets","urls":["https://assets.test/t/{w}/{n}.js"]}}"#);
                n += 1;
                match post(&client, addr, &body).await.0 {
                    202 => ok += 1,
                    429 | 503 => shed += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            (ok, shed)
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for w in workers {
        let (o, s) = w.await.expect("worker");
        ok += o;
        shed += s;
    }
    println!(
        "throughput, 64 concurrent clients for 3 s: {:.0} accepted purges/s, {shed} shed",
        ok as f64 / 3.0
    );
    api.shutdown().await;
    for edge in edges {
        edge.shutdown().await;
    }
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    body: &str,
) -> (u16, String) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/v1/purge"))
        .header("authorization", format!("Bearer {TOKEN}"))
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
