//! Readiness that tells the truth: an edge whose every upstream is gone says it is
//! degraded, GeoDNS sends its clients to a region that can fill misses, and with every
//! upstream down (even frozen, answering nothing) a stale copy is served at once.

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdn::demo_origin::DemoOrigin;
use edge::{EdgeConfig, EdgeServer};
use geodns::{GeoDnsConfig, GeoDnsServer};
use hickory_proto::rr::RecordType;
use http::StatusCode;
use origin_shield::ShieldServer;
use support::{HOST, Reply, dns, loopback, send_with};

const NODE_TOKEN: &str = "readiness-node-token-01";
/// The edges' probes of their shield.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// What a loaded 2-core machine may add to any bound below (scheduling, probe rounds
/// that started just before the change).
const MARGIN: Duration = Duration::from_secs(1);

/// A shield over `origin`, without probes of its own.
fn shield_config(name: &str, origin: SocketAddr) -> String {
    format!(
        r#"
        [node]
        name = "{name}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [purge]
        node_token = "{NODE_TOKEN}"
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        "#
    )
}

/// An edge whose one upstream is the shield at `(public, admin)`, probed every
/// [`PROBE_INTERVAL`], down after one failed probe.
fn edge_config(name: &str, (public, admin): (SocketAddr, SocketAddr)) -> EdgeConfig {
    let text = format!(
        r#"
        [node]
        name = "{name}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [purge]
        node_token = "{NODE_TOKEN}"
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        [site.pool]
        servers = [{{ url = "http://{public}", probe = "http://{admin}/healthz" }}]
        [site.pool.health]
        interval = "{interval}ms"
        timeout = "{interval}ms"
        rise = 1
        fall = 1
        "#,
        interval = PROBE_INTERVAL.as_millis()
    );
    EdgeConfig::from_toml(&text).expect("edge config")
}

/// The edge's `/healthz` report.
async fn health(edge: &EdgeServer) -> (StatusCode, node_api::HealthReport) {
    let reply = send_with(edge.admin_addr(), "/healthz", &[]).await;
    let report = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not a health report ({e}): {}", reply.text()));
    (reply.status, report)
}

/// Polls the edge's `/healthz` until its state is `state`; how long that took.
async fn until_state(edge: &EdgeServer, state: node_api::NodeState, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if health(edge).await.1.state == state {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} not {state:?} within {limit:?}", edge.edge().name());
}

async fn get(edge: &EdgeServer, target: &str) -> Reply {
    support::send(
        &support::client(),
        edge.public_addr(),
        http::Method::GET,
        target,
        HOST,
        &[],
    )
    .await
}

const EU: &str = "192.0.2.10";
const US: &str = "198.51.100.10";
const EU_CLIENTS: (&str, u8) = ("10.1.0.0", 16);

/// GeoDNS with an eu and a us region of one edge each, probed every 100 ms.
async fn geodns(eu: &EdgeServer, us: &EdgeServer) -> GeoDnsServer {
    let text = format!(
        r#"
        [node]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [zone]
        name = "cdn.test"
        nameservers = [{{ name = "ns1.cdn.test", addresses = ["192.0.2.53"] }}]
        [geo]
        default_region = "eu"
        overrides = [{{ cidr = "10.1.0.0/16", region = "eu" }}]
        [health]
        interval = "100ms"
        timeout = "200ms"
        rise = 1
        fall = 1
        [[region]]
        name = "eu"
        lat = 51.51
        lon = -0.13
        edge = [{{ address = "{EU}", probe = "http://{}/healthz" }}]
        [[region]]
        name = "us"
        lat = 40.71
        lon = -74.01
        edge = [{{ address = "{US}", probe = "http://{}/healthz" }}]
        [[customer]]
        name = "publisher"
        "#,
        eu.admin_addr(),
        us.admin_addr()
    );
    let config = GeoDnsConfig::from_toml(&text).expect("geodns config");
    GeoDnsServer::start(config, None).await.expect("geodns")
}

/// GeoDNS's answer to an eu client: the CNAME's region and the addresses.
async fn resolve_eu(dns_addr: SocketAddr) -> (String, Vec<IpAddr>) {
    let client = (EU_CLIENTS.0.parse().expect("address"), EU_CLIENTS.1);
    let query = dns::query("publisher.cdn.test.", RecordType::A, None, Some(client));
    let reply = dns::udp(dns_addr, &query).await;
    let cname = dns::cname(&reply).expect("a CNAME");
    let region = cname.split('.').next().expect("label").to_owned();
    (region, dns::addresses(&reply))
}

#[tokio::test]
async fn an_edge_whose_shields_are_gone_is_degraded_and_geodns_moves_its_clients() {
    let origin = DemoOrigin::start(loopback()).await.expect("origin");
    let config = |name| EdgeConfig::from_toml(&shield_config(name, origin.addr())).unwrap();
    let eu_shield = ShieldServer::start(config("shield-eu"))
        .await
        .expect("shield");
    let us_shield = ShieldServer::start(config("shield-us"))
        .await
        .expect("shield");
    let at = |s: &ShieldServer| (s.public_addr(), s.admin_addr());
    let eu = EdgeServer::start(edge_config("edge-eu", at(&eu_shield)))
        .await
        .expect("edge");
    let us = EdgeServer::start(edge_config("edge-us", at(&us_shield)))
        .await
        .expect("edge");
    let dns = geodns(&eu, &us).await;
    assert_eq!(get(&eu, "/held/1k.bin").await.status, StatusCode::OK);
    let (status, report) = health(&eu).await;
    assert_eq!(
        (status, report.state),
        (StatusCode::OK, node_api::NodeState::Ready)
    );
    assert_eq!(resolve_eu(dns.dns_addr()).await.0, "eu");

    eu_shield.shutdown().await;
    let took = until_state(&eu, node_api::NodeState::Degraded, Duration::from_secs(10)).await;
    assert!(
        took < 2 * PROBE_INTERVAL + MARGIN,
        "degraded after {took:?}: more than 2 probe intervals"
    );
    let (status, report) = health(&eu).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a degraded edge still serves what it holds"
    );
    assert_eq!(report.upstreams_down, ["assets"]);
    assert!(report.ready);
    // GeoDNS probes every 100 ms and takes one failure: the next rounds move eu's clients.
    let started = Instant::now();
    let answer = loop {
        let answer = resolve_eu(dns.dns_addr()).await;
        if answer.0 != "eu" || started.elapsed() > Duration::from_secs(10) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        answer,
        ("us".to_owned(), vec![US.parse::<IpAddr>().unwrap()])
    );
    // The degraded edge still answers hits.
    assert!(
        get(&eu, "/held/1k.bin")
            .await
            .cache_status()
            .contains("hit")
    );
    dns.shutdown().await;
}

/// A `cdn shield` child process, resumed and killed when dropped.
struct ShieldProcess {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
}

impl ShieldProcess {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cdn"))
            .args(["shield", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cdn shield starts");
        // Readiness: the line it prints once both listeners are bound.
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("a line");
        let addr = |after: &str| -> SocketAddr {
            let rest = line.split(after).nth(1).unwrap_or_else(|| panic!("{line}"));
            rest.split([',', '\n'])
                .next()
                .unwrap()
                .parse()
                .expect("address")
        };
        let (public, admin) = (addr("serving on http://"), addr("admin on http://"));
        Self {
            child,
            public,
            admin,
        }
    }

    fn signal(&self, signal: &str) {
        crate::support::process::signal(self.child.id(), signal);
    }
}

impl Drop for ShieldProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_frozen_shield_marked_down_by_probes_gets_stale_answers_served_at_once() {
    let origin = DemoOrigin::start(loopback()).await.expect("origin");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shield.toml");
    std::fs::write(&path, shield_config("shield-frozen", origin.addr())).expect("config");
    let shield = ShieldProcess::start(&path);
    let edge = EdgeServer::start(edge_config("edge-frozen", (shield.public, shield.admin)))
        .await
        .expect("edge");
    // Stored stale at once, and servable stale on error for a minute.
    let target = "/frozen/1k.bin?cc=max-age%3D0%2C%20stale-if-error%3D60";
    let first = get(&edge, target).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());

    shield.signal("STOP");
    until_state(
        &edge,
        node_api::NodeState::Degraded,
        Duration::from_secs(10),
    )
    .await;
    // The upstream timeout is 15 s: a fill sent to the frozen shield would wait for it.
    let started = Instant::now();
    let stale = get(&edge, target).await;
    let took = started.elapsed();
    assert_eq!(stale.status, StatusCode::OK);
    assert!(
        stale.cache_status().contains("stale-if-error"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(stale.body, first.body);
    assert!(took < MARGIN, "the stale answer took {took:?}");
}
