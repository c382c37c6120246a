//! Access logs: a line per request with what an operator needs, on every path a request
//! can take (the hit fast path, the full path, refusals, HTTP/2), and a file that follows
//! logrotate (renamed, then SIGUSR1).

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdn::demo_origin::DemoOrigin;
use edge::{EdgeConfig, EdgeServer};
use http::{Method, StatusCode, Version};
use serde_json::Value;
use support::process::NodeProcess;
use support::tls::{self, TestCa};
use support::{HOST, Harness, NODE, loopback};

/// The JSON lines of the log at `path` once it holds `n` of them (bounded wait).
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect::<Vec<Value>>()
    };
    let held = support::eventually(Duration::from_secs(10), || read().len() >= n).await;
    let lines = read();
    assert!(held, "{} lines of {n}: {lines:#?}", lines.len());
    assert_eq!(lines.len(), n, "{lines:#?}");
    lines
}

fn access_log_table(path: &Path) -> String {
    format!("[access_log]\npath = {:?}\n", path.to_string_lossy())
}

#[tokio::test]
async fn a_line_per_request_for_a_miss_a_hit_a_pass_and_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let h = Harness::start_tables("", "", &access_log_table(&path)).await;
    let agent = [
        ("user-agent", "log-test/1.0"),
        ("referer", "https://pages.test/a"),
    ];

    let miss = h.send(Method::GET, "/obj/1k.bin", HOST, &agent).await;
    let hit = h.send(Method::GET, "/obj/1k.bin", HOST, &agent).await;
    let pass = h
        .send(Method::GET, "/private.bin?cc=no-store", HOST, &[])
        .await;
    let refused = h.send(Method::GET, "/x", "unknown.test", &[]).await;
    assert_eq!(
        (miss.status, hit.status, pass.status, refused.status),
        (
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::MISDIRECTED_REQUEST
        )
    );
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());

    let log = lines(&path, 4).await;
    let (miss_line, hit_line, pass_line, refused_line) = (&log[0], &log[1], &log[2], &log[3]);
    for line in &log {
        assert_eq!(line["node"], NODE);
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["http_version"], "HTTP/1.1");
        assert!(line.get("tls").is_none(), "{line}");
        assert!(line.get("tls_version").is_none(), "{line}");
        assert_eq!(line["complete"], true);
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        assert!(line["total"].as_f64().unwrap() >= line["ttfb"].as_f64().unwrap());
    }
    assert_eq!(miss_line["url"], format!("http://{HOST}/obj/1k.bin"));
    assert_eq!(miss_line["site"], "assets");
    assert_eq!(miss_line["status"], 200);
    assert_eq!(miss_line["body_bytes"], 1024);
    assert!(
        miss_line["bytes"].as_u64().unwrap() > 1024 + 100,
        "{miss_line}"
    );
    assert_eq!(miss_line["cache_status"], miss.cache_status());
    assert_eq!(miss_line["user_agent"], "log-test/1.0");
    assert_eq!(miss_line["referer"], "https://pages.test/a");
    let origin = format!("http://{}", h.origin.addr());
    assert_eq!(miss_line["upstream"], origin.as_str(), "{miss_line}");
    assert!(miss_line["upstream_time"].as_f64().unwrap() <= miss_line["ttfb"].as_f64().unwrap());

    // The hit came through the fast path: the same facts.
    assert_eq!(hit_line["url"], format!("http://{HOST}/obj/1k.bin"));
    assert_eq!(hit_line["site"], "assets");
    assert_eq!(hit_line["status"], 200);
    assert_eq!(hit_line["body_bytes"], 1024);
    assert_eq!(hit_line["cache_status"], hit.cache_status());
    assert_eq!(hit_line["user_agent"], "log-test/1.0");
    assert_eq!(hit_line["referer"], "https://pages.test/a");
    assert_ne!(hit_line["request_id"], miss_line["request_id"]);
    assert!(
        hit_line.get("upstream").is_none(),
        "a hit went nowhere: {hit_line}"
    );

    assert_eq!(pass_line["cache_status"], pass.cache_status());
    assert!(
        !pass.cache_status().contains("stored") && !pass.cache_status().contains("hit"),
        "{}",
        pass.cache_status()
    );
    assert!(pass_line.get("user_agent").is_none(), "{pass_line}");
    assert_eq!(pass_line["upstream"], origin.as_str(), "{pass_line}");
    assert!(refused_line.get("upstream").is_none(), "{refused_line}");

    assert_eq!(refused_line["status"], 421);
    assert!(refused_line.get("site").is_none(), "{refused_line}");
    assert_eq!(refused_line["url"], "http://unknown.test/x");

    assert_eq!(h.metric("edge_access_log_lines_total").await, 4.0);
    assert_eq!(h.metric("edge_access_log_dropped_total").await, 0.0);
}

/// An edge named `name` serving the test site over HTTPS too (a certificate from `ca`),
/// in front of `origin`, with its access log at `dir/access.log` and `tables` (TOML)
/// added; and the log's path.
async fn logged_tls_edge(
    dir: &Path,
    ca: &TestCa,
    origin: SocketAddr,
    name: &str,
    tables: &str,
) -> (EdgeServer, PathBuf) {
    let (cert, key) = ca.issue(&[HOST]).write(dir, "assets");
    let path = dir.join("access.log");
    let text = format!(
        r#"
        [node]
        name = "{name}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        https_listen = "127.0.0.1:0"

        {tables}

        {table}

        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        tls = {{ cert = {cert:?}, key = {key:?} }}
        "#,
        table = access_log_table(&path),
    );
    let edge = EdgeServer::start(EdgeConfig::from_toml(&text).unwrap())
        .await
        .expect("edge starts");
    (edge, path)
}

#[tokio::test]
async fn an_http2_request_is_logged_with_its_version_and_server_name() {
    let origin = DemoOrigin::start(loopback()).await.expect("origin starts");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (edge, path) = logged_tls_edge(dir.path(), &ca, origin.addr(), "edge-h2-log", "").await;
    let client = ca.client(&[b"h2"]);
    let conn = tls::connect(&client, edge.https_addr().unwrap(), HOST)
        .await
        .unwrap();
    let (status, version, body) = tls::get(conn, HOST, "/h2/2k.bin").await;
    assert_eq!(
        (status, version, body.len()),
        (StatusCode::OK, Version::HTTP_2, 2048)
    );

    let log = lines(&path, 1).await;
    let line = &log[0];
    assert_eq!(line["http_version"], "HTTP/2.0");
    assert_eq!(line["tls"], HOST);
    assert_eq!(line["tls_version"], "TLSv1.3");
    assert_eq!(line["url"], format!("https://{HOST}/h2/2k.bin"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["body_bytes"], 2048);
    assert_eq!(line["complete"], true);
    assert_eq!(line["node"], "edge-h2-log");

    // The hit, answered by the HTTP/2 connection's own fast path, is logged alike.
    let conn = tls::connect(&client, edge.https_addr().unwrap(), HOST)
        .await
        .unwrap();
    let (status, version, body) = tls::get(conn, HOST, "/h2/2k.bin").await;
    assert_eq!(
        (status, version, body.len()),
        (StatusCode::OK, Version::HTTP_2, 2048)
    );
    let log = lines(&path, 2).await;
    let hit = &log[1];
    assert!(
        hit["cache_status"].as_str().unwrap().contains("hit"),
        "{hit}"
    );
    assert_eq!(hit["http_version"], "HTTP/2.0");
    assert_eq!(hit["tls"], HOST);
    assert_eq!(hit["url"], format!("https://{HOST}/h2/2k.bin"));
    assert_eq!(hit["status"], 200);
    assert_eq!(hit["body_bytes"], 2048);
    assert_eq!(hit["complete"], true);
}

#[tokio::test]
async fn an_http3_request_is_logged_with_its_version_on_the_full_and_the_fast_path() {
    let origin = DemoOrigin::start(loopback()).await.expect("origin starts");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (edge, path) = logged_tls_edge(dir.path(), &ca, origin.addr(), "edge-h3-log", "").await;
    let client = ca.h3_client();
    let connection = tls::h3::connect(&client, edge.http3_addr().unwrap(), HOST)
        .await
        .unwrap();
    let mut session = tls::h3::session(&connection).await;
    // The miss (full path), then the hit (the request's own fast path).
    for (n, wanted) in [(1, "fwd=uri-miss"), (2, "hit")] {
        let reply = session.get(HOST, "/h3/2k.bin", &[]).await;
        assert_eq!((reply.status, reply.body.len()), (StatusCode::OK, 2048));
        let log = lines(&path, n).await;
        let line = &log[n - 1];
        assert!(
            line["cache_status"].as_str().unwrap().contains(wanted),
            "{line}"
        );
        assert_eq!(line["http_version"], "HTTP/3.0");
        assert_eq!(line["tls"], HOST);
        assert_eq!(line["tls_version"], "TLSv1.3");
        assert_eq!(line["url"], format!("https://{HOST}/h3/2k.bin"));
        assert_eq!(line["status"], 200);
        assert_eq!(line["body_bytes"], 2048);
        assert_eq!(line["complete"], true);
    }
}

/// A `cdn edge` process with an access log at `log`, in front of `origin`.
fn edge_process(dir: &Path, origin: SocketAddr, log: &Path) -> NodeProcess {
    let config: PathBuf = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [node]
            name = "edge-rotate"
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"
            {table}
            [[site]]
            name = "assets"
            hosts = ["{HOST}"]
            upstream = "http://{origin}"
            "#,
            table = access_log_table(log),
        ),
    )
    .unwrap();
    NodeProcess::edge(&config, &[])
}

#[tokio::test]
async fn after_logrotate_renames_the_file_sigusr1_reopens_it() {
    let origin = DemoOrigin::start(loopback()).await.expect("origin starts");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let edge = edge_process(dir.path(), origin.addr(), &path);
    let client = support::client();
    let get =
        |target: &'static str| support::send(&client, edge.public, Method::GET, target, HOST, &[]);
    assert_eq!(get("/before.bin").await.status, StatusCode::OK);
    lines(&path, 1).await;

    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    // Written after the rename and before the signal: still the old file (now rotated).
    assert_eq!(get("/between.bin").await.status, StatusCode::OK);
    lines(&rotated, 2).await;
    edge.signal("USR1");
    let reopened = support::eventually(Duration::from_secs(10), || path.exists()).await;
    assert!(
        reopened,
        "SIGUSR1 reopens the log under its configured path"
    );
    assert_eq!(get("/after.bin").await.status, StatusCode::OK);

    let new = lines(&path, 1).await;
    assert_eq!(new[0]["url"], format!("http://{HOST}/after.bin"));
    let old = lines(&rotated, 2).await;
    assert_eq!(old[0]["url"], format!("http://{HOST}/before.bin"));
    assert_eq!(old[1]["url"], format!("http://{HOST}/between.bin"));

    // SIGHUP reopens too (and does not stop the edge, its default action).
    let rotated_again = dir.path().join("access.log.2");
    std::fs::rename(&path, &rotated_again).unwrap();
    edge.signal("HUP");
    let reopened = support::eventually(Duration::from_secs(10), || path.exists()).await;
    assert!(reopened, "SIGHUP reopens the log under its configured path");
    assert_eq!(get("/after-hup.bin").await.status, StatusCode::OK);
    let newest = lines(&path, 1).await;
    assert_eq!(newest[0]["url"], format!("http://{HOST}/after-hup.bin"));
}

#[tokio::test]
async fn a_site_sampled_at_zero_writes_no_line_and_the_others_still_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    // The test site logs nothing; a second site (whose upstream is closed) logs all.
    let site_extra = r#"access_log_sample = 0.0
        [[site]]
        name = "other"
        hosts = ["other.test"]
        upstream = "http://127.0.0.1:9"
        "#;
    let h = Harness::start_tables("", site_extra, &access_log_table(&path)).await;
    for _ in 0..3 {
        assert_eq!(h.get("/obj/1k.bin").await.status, StatusCode::OK);
    }
    let other = h.send(Method::GET, "/x", "other.test", &[]).await;
    assert_eq!(other.status, StatusCode::BAD_GATEWAY);
    // Lines are written in the order they were logged: had the test site's requests been
    // logged, they would come first.
    let log = lines(&path, 1).await;
    assert_eq!(log[0]["site"], "other");
    assert_eq!(log[0]["status"], 502);
}

#[tokio::test]
async fn refusals_at_the_door_are_logged_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let tables = format!(
        "{}\n[limits]\nmax_connections_per_ip = 1\n",
        access_log_table(&path)
    );
    let h = Harness::start_tables("", "", &tables).await;
    let malformed = support::raw(h.edge.public_addr(), b"GET /a b c\x01 HTTP/1.1\r\n\r\n").await;
    assert_eq!(support::raw_status(&malformed), 400, "{malformed}");
    // One connection held open: the next from the same address is over the limit.
    let held = tokio::net::TcpStream::connect(h.edge.public_addr())
        .await
        .unwrap();
    let over = support::raw(h.edge.public_addr(), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(support::raw_status(&over), 429, "{over}");
    drop(held);

    let log = lines(&path, 2).await;
    assert_eq!(log[0]["status"], 400);
    assert_eq!(log[1]["status"], 429);
    for line in &log {
        assert_eq!(line["client"], "127.0.0.1");
        assert!(
            line.get("method").is_none() && line.get("url").is_none(),
            "{line}"
        );
        assert!(line["bytes"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(line["complete"], true);
    }
}

/// The next line published on `sub` (bounded wait).
async fn next(sub: &mut async_nats::Subscriber) -> Value {
    use futures_util::StreamExt;
    let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a line within 10 s")
        .expect("the subscription is open");
    serde_json::from_slice(&message.payload).expect("a JSON line")
}

#[tokio::test]
async fn lines_are_streamed_over_nats_to_a_subject_per_site() {
    let dir = tempfile::tempdir().unwrap();
    let nats = support::nats::NatsServer::start("logs", dir.path(), None).await;
    let subscriber = async_nats::connect(nats.url()).await.expect("NATS client");
    let mut lines_of_assets = subscriber.subscribe("cdn.logs.assets").await.unwrap();
    let mut lines_of_none = subscriber.subscribe("cdn.logs._").await.unwrap();
    subscriber.flush().await.unwrap();

    let path = dir.path().join("access.log");
    let tables = format!(
        "{}[access_log.nats]\nservers = [{:?}]\n",
        access_log_table(&path),
        nats.url()
    );
    let h = Harness::start_tables("", "", &tables).await;
    h.get("/stream/1k.bin").await;
    h.get("/stream/1k.bin").await;
    h.send(Method::GET, "/x", "unknown.test", &[]).await;

    let miss = next(&mut lines_of_assets).await;
    let hit = next(&mut lines_of_assets).await;
    assert_eq!(miss["url"], format!("http://{HOST}/stream/1k.bin"));
    assert!(
        miss["cache_status"]
            .as_str()
            .unwrap()
            .contains("fwd=uri-miss"),
        "{miss}"
    );
    assert!(
        hit["cache_status"].as_str().unwrap().contains("hit"),
        "{hit}"
    );
    let refused = next(&mut lines_of_none).await;
    assert_eq!(refused["status"], 421);
    // The file has the same lines.
    assert_eq!(lines(&path, 3).await.len(), 3);
}

#[tokio::test]
async fn a_client_over_its_limit_on_the_https_listener_is_logged_too() {
    use tokio::io::AsyncReadExt;
    let origin = DemoOrigin::start(loopback()).await.expect("origin starts");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let limits = "[limits]\nmax_connections_per_ip = 1\n";
    let (edge, path) =
        logged_tls_edge(dir.path(), &ca, origin.addr(), "edge-tls-door", limits).await;
    let https = edge.https_addr().unwrap();
    let _held = tokio::net::TcpStream::connect(https).await.unwrap();
    let mut over = tokio::net::TcpStream::connect(https).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), over.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed before the handshake"
    );

    let log = lines(&path, 1).await;
    let line = &log[0];
    assert_eq!(line["status"], 429);
    assert_eq!(line["bytes"], 0);
    assert_eq!(line["complete"], false);
    assert!(
        line.get("tls").is_none() && line.get("url").is_none(),
        "{line}"
    );
}
