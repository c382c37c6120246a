//! A synthetic client population for drills: browsers of one region, as a drill needs
//! them to see what users would see of a failure.
//!
//! Each client belongs to a network of the region (a /24 of its client networks, sent to
//! GeoDNS as EDNS Client Subnet, as its resolver would), caches GeoDNS's answer for the
//! answer's TTL (the first one for a random part of it, as a shared resolver's cache is
//! of any age), and on each request picks an address of the answer (each client starting
//! at a different one) and tries the others on a connection failure, as browsers do. The
//! population fetches a Zipf-distributed mix over a set of URLs at a fixed total rate,
//! each client on keep-alive connections of its own. Every request is recorded: when it
//! started, how long it took, what came of it, whether it was a hit, and which region's
//! edge answered.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::drill::{Answer, Resolver};
use crate::endpoints::{Endpoints, RegionEndpoints};

/// How the population loads the CDN.
#[derive(Debug, Clone)]
pub struct Load {
    /// Requests per second, all clients together.
    pub rate: f64,
    /// Clients (each with its own network, DNS cache and connections).
    pub clients: usize,
    /// Distinct URLs, requested by Zipf popularity.
    pub urls: usize,
    /// The Zipf exponent (1.0: the k-th URL is requested 1/k as often as the first).
    pub zipf: f64,
    /// Longest a request may take, connection attempts included.
    pub timeout: Duration,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            rate: 200.0,
            clients: 20,
            urls: 2000,
            zipf: 1.0,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What came of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// No answer: `dns` (GeoDNS did not answer), `connect` (no address of the answer
    /// took the connection), `timeout`, `http` (the exchange broke).
    Failed(&'static str),
}

/// One request as the population saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it started, from the population's start.
    pub at: Duration,
    pub took: Duration,
    pub outcome: Outcome,
    /// The region of the edge that answered.
    pub region: Option<String>,
    /// Whether the answer was a cache hit (its `Cache-Status`).
    pub hit: bool,
}

impl Record {
    /// A 2xx or 3xx answer.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Status(s) if s < 400)
    }
}

/// A running population; [`Population::stop`] ends it and hands over the records.
#[derive(Debug)]
pub struct Population {
    started: Instant,
    records: Arc<Mutex<Vec<Record>>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Population {
    /// Starts `load.clients` clients of `region` fetching the first site of `endpoints`.
    pub fn start(endpoints: &Endpoints, region: &RegionEndpoints, load: &Load) -> Self {
        let started = Instant::now();
        let records = Arc::new(Mutex::new(Vec::new()));
        let (stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let site = endpoints
            .sites
            .first()
            .map(|s| s.cname.clone())
            .unwrap_or_default();
        // Edges by address: DNS answers carry no ports, and a region by its edges.
        let edges: Arc<HashMap<IpAddr, (SocketAddr, String)>> = Arc::new(
            endpoints
                .regions
                .iter()
                .flat_map(|r| {
                    r.edges
                        .iter()
                        .map(move |e| (e.public.ip(), (e.public, r.name.clone())))
                })
                .collect(),
        );
        let popularity = Arc::new(Popularity::new(load.urls.max(1), load.zipf));
        let networks: Vec<ipnet::IpNet> = region
            .clients
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let clients = load.clients.max(1);
        let every = Duration::from_secs_f64(clients as f64 / load.rate.max(0.001));
        for n in 0..clients {
            let Some(network) = client_network(&networks, n) else {
                break;
            };
            let client = Browser {
                n,
                resolver: Resolver {
                    server: endpoints.geodns.dns,
                    name: site.clone(),
                    subnet: network,
                },
                host: site.clone(),
                edges: edges.clone(),
                http: {
                    let mut connector = HttpConnector::new();
                    connector.set_connect_timeout(Some(load.timeout / 2));
                    connector.set_nodelay(true);
                    Client::builder(TokioExecutor::new()).build(connector)
                },
                timeout: load.timeout,
                cached: None,
            };
            let (records, popularity, mut stop) =
                (records.clone(), popularity.clone(), stop.subscribe());
            tasks.spawn(async move {
                let mut client = client;
                // Clients spread over the interval rather than all at once.
                let offset = every.mul_f64(n as f64 / clients as f64);
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                    let target = format!("/zipf/{}/2k.bin", popularity.sample());
                    let at = started.elapsed();
                    let record = client.fetch(at, &target).await;
                    records
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(record);
                }
            });
        }
        Self {
            started,
            records,
            stop,
            tasks,
        }
    }

    /// When the population started (records' `at` count from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops every client (requests in flight finish) and returns every record, in the
    /// order they finished.
    pub async fn stop(mut self) -> Vec<Record> {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What the clients saw over one stretch of time.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub requests: u64,
    /// Requests with no answer or an error status, by kind (`connect`, `dns`, `timeout`,
    /// `http`, `status 5xx`...).
    pub errors: std::collections::BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Hits among the answered requests.
    pub hit_ratio: f64,
    /// Answered requests by the region of the edge that answered.
    pub served_by: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    /// The requests that ended in `[from, to)`: what clients saw then (a request in flight
    /// when the region fails fails with it).
    pub fn of(records: &[Record], from: Duration, to: Duration) -> Self {
        let mut summary = Summary::default();
        let mut took: Vec<Duration> = Vec::new();
        let (mut answered, mut hits) = (0u64, 0u64);
        let ended = |r: &&Record| (from..to).contains(&(r.at + r.took));
        for record in records.iter().filter(ended) {
            summary.requests += 1;
            took.push(record.took);
            match &record.outcome {
                Outcome::Status(status) if *status < 400 => {}
                Outcome::Status(status) => {
                    *summary
                        .errors
                        .entry(format!("status {status}"))
                        .or_default() += 1;
                }
                Outcome::Failed(kind) => {
                    *summary.errors.entry((*kind).to_owned()).or_default() += 1
                }
            }
            if let Some(region) = &record.region {
                answered += 1;
                hits += u64::from(record.hit);
                *summary.served_by.entry(region.clone()).or_default() += 1;
            }
        }
        took.sort_unstable();
        let at = |q: f64| {
            took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        summary.p50_ms = at(0.50);
        summary.p99_ms = at(0.99);
        summary.hit_ratio = if answered == 0 {
            0.0
        } else {
            hits as f64 / answered as f64
        };
        summary
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// How long clients saw failures: from the start of the first failed request to the end
/// of the last one (zero when none failed).
pub fn failure_window(records: &[Record]) -> Duration {
    let failed = records.iter().filter(|r| !r.ok());
    let first = failed.clone().map(|r| r.at).min();
    let last = failed.map(|r| r.at + r.took).max();
    match (first, last) {
        (Some(first), Some(last)) => last.saturating_sub(first),
        _ => Duration::ZERO,
    }
}

/// Client `n`'s network: a /24 (or /64) of the region's networks, in turn.
fn client_network(networks: &[ipnet::IpNet], n: usize) -> Option<ipnet::IpNet> {
    let network = networks.get(n % networks.len().max(1))?;
    let narrow = match network {
        ipnet::IpNet::V4(v4) => v4
            .subnets(v4.prefix_len().max(24))
            .ok()?
            .nth(n / networks.len())
            .map(ipnet::IpNet::V4),
        ipnet::IpNet::V6(v6) => v6
            .subnets(v6.prefix_len().max(64))
            .ok()?
            .nth(n / networks.len())
            .map(ipnet::IpNet::V6),
    };
    Some(narrow.unwrap_or(*network))
}

/// One client: its resolver, its cached answer, its connections.
struct Browser {
    n: usize,
    resolver: Resolver,
    host: String,
    edges: Arc<HashMap<IpAddr, (SocketAddr, String)>>,
    http: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    /// GeoDNS's last answer and when its TTL runs out.
    cached: Option<(Answer, Instant)>,
}

impl Browser {
    async fn fetch(&mut self, at: Duration, target: &str) -> Record {
        let started = Instant::now();
        let record = |outcome, region, hit| Record {
            at,
            took: started.elapsed(),
            outcome,
            region,
            hit,
        };
        let answer = match &self.cached {
            Some((answer, until)) if *until > Instant::now() => answer.clone(),
            cached => match self.resolver.ask().await {
                Ok(answer) => {
                    let mut ttl = Duration::from_secs(u64::from(answer.ttl));
                    if cached.is_none() {
                        // A client's resolver is shared: the first answer it gives is one it
                        // cached at some earlier time, so it has some part of its TTL left.
                        // Without this every client's cache would expire at the same moment.
                        ttl = ttl.mul_f64(fastrand::f64());
                    }
                    self.cached = Some((answer.clone(), Instant::now() + ttl));
                    answer
                }
                Err(_) => return record(Outcome::Failed("dns"), None, false),
            },
        };
        let count = answer.addresses.len();
        let mut failure = "connect";
        for i in 0..count {
            let address = answer.addresses[(self.n + i) % count];
            let Some((public, region)) = self.edges.get(&address) else {
                continue;
            };
            let request = http::Request::get(format!("http://{public}{target}"))
                .header(http::header::HOST, &self.host)
                .body(Empty::new())
                .expect("a valid request");
            let exchange = async {
                let response = self.http.request(request).await?;
                let status = response.status().as_u16();
                let hit = response
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("; hit"));
                response.into_body().collect().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, hit))
            };
            match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok((status, hit))) => {
                    return record(Outcome::Status(status), Some(region.clone()), hit);
                }
                Ok(Err(error)) => {
                    let connect = error
                        .downcast_ref::<hyper_util::client::legacy::Error>()
                        .is_some_and(hyper_util::client::legacy::Error::is_connect);
                    failure = if connect { "connect" } else { "http" };
                    // The next address, as a browser does on a refused connection.
                }
                Err(_) => {
                    failure = "timeout";
                }
            }
        }
        record(Outcome::Failed(failure), None, false)
    }
}

/// Zipf popularity over `urls` ranks: sampled by a binary search of the cumulative
/// weights.
struct Popularity {
    cumulative: Vec<f64>,
}

impl Popularity {
    fn new(urls: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=urls)
            .map(|k| {
                total += 1.0 / (k as f64).powf(exponent);
                total
            })
            .collect();
        Self { cumulative }
    }

    /// A rank, 0 the most popular.
    fn sample(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let point = fastrand::f64() * total;
        self.cumulative
            .partition_point(|&c| c < point)
            .min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popular_ranks_come_first_and_every_rank_can_come() {
        let popularity = Popularity::new(100, 1.0);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[popularity.sample()] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        // Rank 1 is asked about 1/H(100) ~ 19 % of the time.
        assert!((17_000..21_500).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[99] > 0);
    }

    #[test]
    fn a_summary_counts_its_window_only() {
        let record =
            |at_ms: u64, took_ms: u64, outcome: Outcome, region: Option<&str>, hit| Record {
                at: Duration::from_millis(at_ms),
                took: Duration::from_millis(took_ms),
                outcome,
                region: region.map(str::to_owned),
                hit,
            };
        let records = vec![
            record(0, 5, Outcome::Status(200), Some("eu"), true),
            record(100, 7, Outcome::Status(200), Some("eu"), false),
            record(200, 1000, Outcome::Failed("connect"), None, false),
            record(300, 9, Outcome::Status(503), Some("us"), false),
            record(900, 5, Outcome::Status(200), Some("us"), true),
        ];
        let early = Summary::of(&records, Duration::ZERO, Duration::from_millis(250));
        assert_eq!(early.requests, 2);
        assert_eq!(early.hit_ratio, 0.5);
        assert_eq!(early.p99_ms, 7.0);
        // The connection that started at 200 ms failed at 1,200 ms: seen then.
        let late = Summary::of(&records, Duration::from_millis(250), Duration::from_secs(2));
        assert_eq!((late.requests, late.failed()), (3, 2));
        assert_eq!(late.errors.get("connect"), Some(&1));
        assert_eq!(late.served_by.get("us"), Some(&2));
        assert_eq!(late.p99_ms, 1000.0);
        // From the start of the first failure (200 ms) to the end of the last to end
        // (the connection that took until 1,200 ms).
        assert_eq!(failure_window(&records), Duration::from_millis(1000));
        assert_eq!(failure_window(&records[..2]), Duration::ZERO);
    }

    #[test]
    fn each_client_gets_a_network_of_its_region() {
        let networks: Vec<ipnet::IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let a = client_network(&networks, 0).unwrap();
        let b = client_network(&networks, 1).unwrap();
        assert_eq!(a.to_string(), "10.1.0.0/24");
        assert_eq!(b.to_string(), "10.1.1.0/24");
        assert!(client_network(&[], 0).is_none());
    }
}
