//! Live reconfiguration of a running edge: sites, origins and limits change on
//! `POST /v1/config/reload`, SIGHUP or a change of the file, with the cache still warm and
//! open connections kept; a config that does not read, validate, or changes what only a
//! restart can is refused with the reason, and the running config stays.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdn::demo_origin::DemoOrigin;
use edge::{EdgeConfig, EdgeServer};
use http::{Method, StatusCode};
use serde_json::Value;
use support::process::NodeProcess;
use support::tls::{self, TestCa};
use support::{HOST, Reply, loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "reload-secret";
const OTHER_HOST: &str = "more.test";

/// A config file for one edge: the test site on `origin`, `[limits]` as given, and more
/// sites after it.
fn config_text(origin: SocketAddr, limits: &str, more_sites: &str) -> String {
    format!(
        r#"
        [node]
        name = "edge-reload"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"

        [purge]
        node_token = "{TOKEN}"

        [limits]
        {limits}

        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        {more_sites}
        "#
    )
}

fn other_site(origin: SocketAddr) -> String {
    format!(
        r#"
        [[site]]
        name = "more"
        hosts = ["{OTHER_HOST}"]
        upstream = "http://{origin}"
        "#
    )
}

async fn get(at: SocketAddr, host: &str, target: &str) -> Reply {
    support::send(&support::client(), at, Method::GET, target, host, &[]).await
}

async fn reload(admin: SocketAddr, token: &str) -> (StatusCode, Value) {
    let reply = support::send(
        &support::client(),
        admin,
        Method::POST,
        "/v1/config/reload",
        "admin",
        &[("cdn-node-token", token)],
    )
    .await;
    let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, body)
}

/// One request on an open keep-alive connection, read up to the end of its body.
async fn on_connection(stream: &mut TcpStream, target: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer on the open connection")
            .unwrap();
        assert!(n > 0, "the connection stays open");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")?
                        .parse()
                        .ok()
                })
                .expect("a Content-Length");
            if got.len() >= end + 4 + length {
                return text[..end].to_owned();
            }
        }
    }
}

/// An edge started from `file`, following it.
async fn edge_from(file: &Path) -> EdgeServer {
    let config = EdgeConfig::from_file(file).expect("valid config");
    let mut edge = EdgeServer::start(config).await.expect("edge starts");
    edge.follow_file(file.to_owned());
    edge
}

/// An origin, and a config file in a directory of its own for the test site on it.
async fn origin_and_file() -> (DemoOrigin, tempfile::TempDir, PathBuf) {
    let origin = DemoOrigin::start(loopback()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, config_text(origin.addr(), "", "")).unwrap();
    (origin, dir, file)
}

#[tokio::test]
async fn a_reload_adds_a_site_moves_an_origin_and_tightens_a_limit_with_the_cache_warm() {
    let (first, second) = (
        DemoOrigin::start(loopback()).await.unwrap(),
        DemoOrigin::start(loopback()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, config_text(first.addr(), "", "")).unwrap();
    let edge = edge_from(&file).await;
    let (public, admin) = (edge.public_addr(), edge.admin_addr());

    let miss = get(public, HOST, "/warm.bin").await;
    assert!(
        miss.cache_status().contains("miss"),
        "{}",
        miss.cache_status()
    );
    let hit = get(public, HOST, "/warm.bin").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(
        get(public, OTHER_HOST, "/x.bin").await.status,
        StatusCode::MISDIRECTED_REQUEST,
        "no such site yet"
    );
    let long = format!("/{}.bin", "l".repeat(400));
    assert_eq!(get(public, HOST, &long).await.status, StatusCode::OK);
    let mut open = TcpStream::connect(public).await.unwrap();
    assert!(
        on_connection(&mut open, "/warm.bin")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // The site moves to the second origin, a site is added, targets are limited to 300
    // bytes.
    let next = config_text(
        second.addr(),
        "max_uri_bytes = 300",
        &other_site(second.addr()),
    );
    std::fs::write(&file, next).unwrap();
    let (status, answer) = reload(admin, TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["added"], serde_json::json!(["more"]));
    assert_eq!(answer["new_pools"], serde_json::json!(["assets"]));
    assert_eq!(answer["sections"], serde_json::json!(["[limits]"]));

    // The cache is warm: a hit before and after, the new origin never asked for it.
    let hit = get(public, HOST, "/warm.bin").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(second.hits("/warm.bin"), 0);
    // A miss goes to the site's new origin.
    assert_eq!(get(public, HOST, "/fresh.bin").await.status, StatusCode::OK);
    assert_eq!(
        (first.hits("/fresh.bin"), second.hits("/fresh.bin")),
        (0, 1)
    );
    // The added site answers, from its origin.
    assert_eq!(
        get(public, OTHER_HOST, "/x.bin").await.status,
        StatusCode::OK
    );
    assert_eq!(second.hits("/x.bin"), 1);
    // The tightened limit holds.
    assert_eq!(
        get(public, HOST, &long).await.status,
        StatusCode::URI_TOO_LONG
    );
    // The connection opened before the reload is still served.
    let head = on_connection(&mut open, "/warm.bin").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    edge.shutdown().await;
}

#[tokio::test]
async fn a_bad_file_is_refused_with_its_reason_and_the_running_config_stays() {
    let (origin, _dir, file) = origin_and_file().await;
    let edge = edge_from(&file).await;
    let (public, admin) = (edge.public_addr(), edge.admin_addr());
    assert_eq!(get(public, HOST, "/a.bin").await.status, StatusCode::OK);

    let (status, _) = reload(admin, "wrong").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a reload needs the node token"
    );

    std::fs::write(&file, "[[site]\nname = ").unwrap();
    let (status, answer) = reload(admin, TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let why = answer["error"].as_str().unwrap();
    assert!(why.contains("running one stays"), "{why}");

    let bad_site = config_text(
        origin.addr(),
        "",
        "[[site]]\nname = \"x\"\nhosts = [\"x.test\"]\n",
    );
    std::fs::write(&file, bad_site).unwrap();
    let (status, answer) = reload(admin, TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("no upstream"),
        "{answer}"
    );

    let moved = config_text(origin.addr(), "", "").replace(
        "listen = \"127.0.0.1:0\"\n        admin",
        "listen = \"127.0.0.1:1\"\n        admin",
    );
    std::fs::write(&file, moved).unwrap();
    let (status, answer) = reload(admin, TOKEN).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let why = answer["error"].as_str().unwrap();
    assert!(
        why.contains("node.listen") && why.contains("restart"),
        "{why}"
    );

    // Still the first config: the site answers, from the cache.
    let hit = get(public, HOST, "/a.bin").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    let metrics = support::admin_text(admin, "/metrics").await;
    assert!(
        metrics.contains("edge_config_reloads_total{result=\"refused\"} 3"),
        "{metrics}"
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn a_cdn_edge_process_reloads_when_its_file_changes_and_on_sighup() {
    let (origin, _dir, file) = origin_and_file().await;
    let edge = NodeProcess::edge(&file, &[]);
    assert_eq!(
        get(edge.public, HOST, "/a.bin").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(edge.public, OTHER_HOST, "/a.bin").await.status,
        StatusCode::MISDIRECTED_REQUEST
    );

    // A changed file is picked up by itself (checked each second).
    let with_site = config_text(
        origin.addr(),
        "max_uri_bytes = 8192",
        &other_site(origin.addr()),
    );
    std::fs::write(&file, &with_site).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while get(edge.public, OTHER_HOST, "/a.bin").await.status != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGHUP reloads (and does not stop the node). The file is rewritten at the same
    // length and modification time, so only the signal can have the node read it.
    let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
    let limited = config_text(
        origin.addr(),
        "max_uri_bytes = 300 ",
        &other_site(origin.addr()),
    );
    assert_eq!(limited.len(), with_site.len());
    std::fs::write(&file, &limited).unwrap();
    let rewritten = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    rewritten.set_modified(stamp).unwrap();
    drop(rewritten);
    let long = format!("/{}.bin", "l".repeat(400));
    // What is checked is that nothing happens: two of the watch's one-second checks.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        get(edge.public, HOST, &long).await.status,
        StatusCode::OK,
        "unchanged stamps: the file watch does not reload"
    );
    edge.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while get(edge.public, HOST, &long).await.status != StatusCode::URI_TOO_LONG {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hit = get(edge.public, HOST, "/a.bin").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    let metrics = support::admin_text(edge.admin, "/metrics").await;
    assert!(
        metrics.contains("edge_config_reloads_total{result=\"applied\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_site_added_with_a_certificate_is_served_over_https_after_the_reload() {
    let origin = DemoOrigin::start(loopback()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&[HOST]).write(dir.path(), "assets");
    let (more_cert, more_key) = ca.issue(&[OTHER_HOST]).write(dir.path(), "more");
    let site = |name: &str, host: &str, cert: &Path, key: &Path| {
        format!(
            "[[site]]\nname = \"{name}\"\nhosts = [\"{host}\"]\nupstream = \"http://{}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n",
            origin.addr()
        )
    };
    let head = format!(
        "[node]\nname = \"edge-reload-tls\"\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nhttps_listen = \"127.0.0.1:0\"\n[purge]\nnode_token = \"{TOKEN}\"\n"
    );
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        format!("{head}{}", site("assets", HOST, &cert, &key)),
    )
    .unwrap();
    let edge = edge_from(&file).await;
    let https = edge.https_addr().expect("HTTPS");
    let client = ca.client(&[b"h2"]);
    assert!(
        tls::connect(&client, https, OTHER_HOST).await.is_err(),
        "no certificate for the site yet"
    );

    let both = format!(
        "{head}{}{}",
        site("assets", HOST, &cert, &key),
        site("more", OTHER_HOST, &more_cert, &more_key)
    );
    std::fs::write(&file, both).unwrap();
    let (status, answer) = reload(edge.admin_addr(), TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let conn = tls::connect(&client, https, OTHER_HOST)
        .await
        .expect("the new site's certificate is served");
    let (status, _, body) = tls::get(conn, OTHER_HOST, "/2k.bin").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 2048));
    // The first site's still is.
    let conn = tls::connect(&client, https, HOST)
        .await
        .expect("the first site");
    assert_eq!(tls::get(conn, HOST, "/2k.bin").await.0, StatusCode::OK);

    // A certificate that does not load is refused, naming the site; the running set stays.
    std::fs::write(&more_cert, "not a certificate").unwrap();
    let (status, answer) = reload(edge.admin_addr(), TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("more"),
        "{answer}"
    );
    assert!(tls::connect(&client, https, OTHER_HOST).await.is_ok());
    edge.shutdown().await;
}
