//! Interim (1xx) responses from the origin reach the client that caused the exchange,
//! before the final response and in order (RFC 9110 15.2), over HTTP/1.1, HTTP/2 and
//! through the shield tier; never `100 Continue`, never to HTTP/1.0 clients, never from
//! the cache, never more than the node's bound.
//!
//! Each origin holds its final response until the test saw what must come first, so "the
//! 1xx arrived before the final response" is what the bytes say, not a race won.

use crate::support;

use std::sync::Arc;

use edge::{EdgeConfig, EdgeServer};
use http::StatusCode;
use origin_shield::ShieldServer;
use support::raw_origin::{RawOrigin, Step, heads, read_until};
use support::tls::TestCa;
use support::{HOST, NODE, config};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

const EARLY_HINTS: &str = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\
                           Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n";
const FINAL: &str = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\
                     Connection: close\r\n\r\nhello";

/// An origin answering 103 (plus `before`), then waiting for `go`, then 200 `hello`.
async fn hinting_origin(go: &Arc<Notify>) -> RawOrigin {
    RawOrigin::start(vec![
        Step::Write(EARLY_HINTS.into()),
        Step::Wait(go.clone()),
        Step::Write(FINAL.into()),
    ])
    .await
}

/// Sends a GET of `target` in `version` on a new connection to `addr`.
async fn request(addr: std::net::SocketAddr, target: &str, version: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let raw = format!("GET {target} {version}\r\nHost: {HOST}\r\n\r\n");
    stream.write_all(raw.as_bytes()).await.unwrap();
    stream
}

/// Reads heads until `n` complete ones are in.
async fn read_heads(stream: &mut TcpStream, got: &mut Vec<u8>, n: usize) -> Vec<String> {
    read_until(stream, got, |b| heads(b).0.len() >= n).await;
    heads(got).0
}

/// Reads the whole answer (its final head and a 5-byte body).
async fn read_final(stream: &mut TcpStream, got: &mut Vec<u8>) -> Vec<String> {
    read_until(stream, got, |b| {
        let (heads, rest) = heads(b);
        heads.last().is_some_and(|h| h.get(9..10) != Some("1")) && rest.len() >= 5
    })
    .await;
    heads(got).0
}

fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn early_hints_reach_an_http1_client_before_the_final_response() {
    let go = Arc::new(Notify::new());
    let mut origin = hinting_origin(&go).await;
    let edge = EdgeServer::start(config(origin.addr(), "", ""))
        .await
        .unwrap();

    let mut client = request(edge.public_addr(), "/early.txt", "HTTP/1.1").await;
    let mut got = Vec::new();
    let first = read_heads(&mut client, &mut got, 1).await;
    // The origin has not sent its 200 yet: the 103 came first, on its own.
    assert!(
        first[0].starts_with("HTTP/1.1 103 Early Hints\r\n"),
        "{first:?}"
    );
    assert_eq!(field(&first[0], "link"), Some("</style.css>; rel=preload"));
    for hop in ["connection", "x-hop", "keep-alive"] {
        assert_eq!(field(&first[0], hop), None, "{hop} is hop-by-hop");
    }
    assert_eq!(
        field(&first[0], "via"),
        Some(format!("1.1 {NODE}").as_str())
    );
    go.notify_one();
    let all = read_final(&mut client, &mut got).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[1].starts_with("HTTP/1.1 200 OK\r\n"), "{all:?}");
    assert_eq!(field(&all[1], "link"), None, "1xx fields stay in the 1xx");
    assert!(got.ends_with(b"hello"));

    // The stored copy answers the next request: a hit, with no 1xx before it.
    let mut client = request(edge.public_addr(), "/early.txt", "HTTP/1.1").await;
    let mut got = Vec::new();
    let all = read_final(&mut client, &mut got).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        field(&all[0], "cache-status").is_some_and(|s| s.contains("hit")),
        "{all:?}"
    );
    assert_eq!(origin.requests().len(), 1);
}

#[tokio::test]
async fn processing_is_forwarded_and_continue_is_not() {
    let go = Arc::new(Notify::new());
    let origin = RawOrigin::start(vec![
        Step::Write("HTTP/1.1 100 Continue\r\n\r\n".into()),
        Step::Write("HTTP/1.1 102 Processing\r\n\r\n".into()),
        Step::Wait(go.clone()),
        Step::Write(FINAL.into()),
    ])
    .await;
    let edge = EdgeServer::start(config(origin.addr(), "", ""))
        .await
        .unwrap();
    let mut client = request(edge.public_addr(), "/slow.txt", "HTTP/1.1").await;
    let mut got = Vec::new();
    let first = read_heads(&mut client, &mut got, 1).await;
    assert!(first[0].starts_with("HTTP/1.1 102 Processing"), "{first:?}");
    go.notify_one();
    let all = read_final(&mut client, &mut got).await;
    let statuses: Vec<&str> = all.iter().map(|h| &h[9..12]).collect();
    assert_eq!(
        statuses,
        ["102", "200"],
        "100 Continue stays between edge and origin"
    );
}

#[tokio::test]
async fn an_http1_0_client_gets_no_interim_responses() {
    // Nothing to wait for: the client must never see the 103.
    let origin = RawOrigin::start(vec![
        Step::Write(EARLY_HINTS.into()),
        Step::Write(FINAL.into()),
    ])
    .await;
    let edge = EdgeServer::start(config(origin.addr(), "", ""))
        .await
        .unwrap();
    let mut client = request(edge.public_addr(), "/old.txt", "HTTP/1.0").await;
    let mut got = Vec::new();
    let all = read_final(&mut client, &mut got).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(&all[0][9..12], "200", "{all:?}");
}

#[tokio::test]
async fn a_flood_of_interim_responses_is_cut_at_the_limit() {
    let go = Arc::new(Notify::new());
    let origin = RawOrigin::start(vec![
        Step::Write("HTTP/1.1 102 Processing\r\n\r\n".repeat(40)),
        Step::Wait(go.clone()),
        Step::Write(FINAL.into()),
    ])
    .await;
    let edge = EdgeServer::start(config(origin.addr(), "", ""))
        .await
        .unwrap();
    let mut client = request(edge.public_addr(), "/flood.txt", "HTTP/1.1").await;
    let mut got = Vec::new();
    read_heads(&mut client, &mut got, 16).await;
    go.notify_one();
    let all = read_final(&mut client, &mut got).await;
    // Every 102 the origin sent was read by the edge before its 200: only 16 went on.
    assert_eq!(all.len(), 17, "16 interim heads, then the response");
    assert!(all[..16].iter().all(|h| h.starts_with("HTTP/1.1 102")));
    assert_eq!(&all[16][9..12], "200");
}

#[tokio::test]
async fn early_hints_cross_the_shield_tier() {
    let go = Arc::new(Notify::new());
    let origin = hinting_origin(&go).await;
    let node = |name: &str, upstream: std::net::SocketAddr| {
        let text = format!(
            r#"
            [node]
            name = "{name}"
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"

            [[site]]
            name = "assets"
            hosts = ["{HOST}"]
            upstream = "http://{upstream}"
            "#
        );
        EdgeConfig::from_toml(&text).expect("valid config")
    };
    let shield = ShieldServer::start(node("shield-1xx", origin.addr()))
        .await
        .unwrap();
    let edge = EdgeServer::start(node("edge-1xx", shield.public_addr()))
        .await
        .unwrap();
    let mut client = request(edge.public_addr(), "/tiers.txt", "HTTP/1.1").await;
    let mut got = Vec::new();
    let first = read_heads(&mut client, &mut got, 1).await;
    assert!(first[0].starts_with("HTTP/1.1 103"), "{first:?}");
    assert_eq!(field(&first[0], "link"), Some("</style.css>; rel=preload"));
    assert_eq!(
        field(&first[0], "via"),
        Some("1.1 shield-1xx, 1.1 edge-1xx")
    );
    go.notify_one();
    let all = read_final(&mut client, &mut got).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(&all[1][9..12], "200");
}

/// An edge serving the test site over HTTPS in front of `origin`, and a client's h2
/// connection to it.
async fn h2_edge(
    origin: std::net::SocketAddr,
) -> (
    EdgeServer,
    h2::client::SendRequest<bytes::Bytes>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&[HOST]).write(dir.path(), "assets");
    let text = format!(
        r#"
        [node]
        name = "{NODE}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        https_listen = "127.0.0.1:0"

        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        tls = {{ cert = {cert:?}, key = {key:?} }}
        "#
    );
    let edge = EdgeServer::start(EdgeConfig::from_toml(&text).unwrap())
        .await
        .unwrap();
    let tls = support::tls::connect(&ca.client(&[b"h2"]), edge.https_addr().unwrap(), HOST)
        .await
        .unwrap();
    let (sender, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(connection);
    (edge, sender, dir)
}

/// The whole body of an h2 response.
async fn h2_body(response: http::Response<h2::RecvStream>) -> Vec<u8> {
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

#[tokio::test]
async fn early_hints_reach_an_h2_client_before_the_final_response() {
    let go = Arc::new(Notify::new());
    let origin = hinting_origin(&go).await;
    let (_edge, mut sender, _dir) = h2_edge(origin.addr()).await;
    let request = http::Request::get(format!("https://{HOST}/early-h2.txt"))
        .body(())
        .unwrap();
    let (mut response, _) = sender.send_request(request, true).expect("stream opens");
    let interim = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        std::future::poll_fn(|cx| response.poll_informational(cx)),
    )
    .await
    .expect("a 1xx within 10 s")
    .expect("a 1xx before the response")
    .expect("a well-formed 1xx");
    assert_eq!(interim.status(), StatusCode::EARLY_HINTS);
    assert_eq!(interim.headers()["link"], "</style.css>; rel=preload");
    assert!(interim.headers().get("x-hop").is_none());
    assert_eq!(interim.headers()["via"], format!("1.1 {NODE}").as_str());
    go.notify_one();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), response)
        .await
        .expect("the response within 10 s")
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("link").is_none());
    assert_eq!(h2_body(response).await, b"hello");
}

#[tokio::test]
async fn an_h2_request_body_streams_to_the_origin_and_the_answer_back() {
    let mut origin = RawOrigin::start(vec![
        Step::ReadBody(11),
        Step::Write(
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             3\r\nok!\r\n0\r\n\r\n"
                .into(),
        ),
    ])
    .await;
    let (_edge, mut sender, _dir) = h2_edge(origin.addr()).await;
    let request = http::Request::post(format!("https://{HOST}/upload"))
        .header("content-length", "11")
        .body(())
        .unwrap();
    let (response, mut body) = sender.send_request(request, false).expect("stream opens");
    body.send_data(bytes::Bytes::from_static(b"hello "), false)
        .unwrap();
    body.send_data(bytes::Bytes::from_static(b"world"), true)
        .unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), response)
        .await
        .expect("the response within 10 s")
        .expect("a response");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("transfer-encoding").is_none());
    assert!(response.headers().get("connection").is_none());
    assert_eq!(h2_body(response).await, b"ok!");
    let seen = origin.requests();
    assert!(seen[0].starts_with("POST /upload HTTP/1.1\r\n"), "{seen:?}");
    assert_eq!(seen[1], "hello world");
}
