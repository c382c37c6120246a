//! The edge's HTTP/1.1 connection handling: keep-alive, pipelining, closing, timeouts, and
//! the hand-over to hyper for what the hot path does not handle itself.

use crate::support;

use std::time::Duration;

use support::{HOST, Harness, raw, raw_status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `stream` until `n` complete responses with `Content-Length` bodies arrived.
async fn read_responses(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut data = Vec::new();
    let mut responses = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        while responses.len() < n {
            let read = stream.read(&mut buf).await.expect("read");
            assert!(
                read > 0,
                "connection closed after {} responses",
                responses.len()
            );
            data.extend_from_slice(&buf[..read]);
            while let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if data.len() < end + 4 + length {
                    break;
                }
                data.drain(..end + 4 + length);
                responses.push(head);
            }
        }
    })
    .await
    .expect("responses within 10 s");
    responses
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = Harness::start().await;
    h.get("/p/1.bin").await; // a hit for the first and last of the pipeline
    let mut stream = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    let pipeline = format!(
        "GET /p/1.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         GET /p/2k.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         HEAD /p/1.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         GET /p/1.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    );
    stream.write_all(pipeline.as_bytes()).await.unwrap();
    let responses = read_responses(&mut stream, 4).await;
    assert!(responses[0].contains("; hit"), "{}", responses[0]);
    assert!(responses[1].contains("fwd=uri-miss"), "{}", responses[1]);
    assert!(
        responses[1].contains("content-length: 2048"),
        "{}",
        responses[1]
    );
    assert!(responses[2].contains("; hit"), "{}", responses[2]);
    assert!(responses[3].contains("; hit"), "{}", responses[3]);
    assert_eq!(h.origin.total_hits(), 2);
}

#[tokio::test]
async fn a_keep_alive_connection_serves_many_requests() {
    let h = Harness::start().await;
    let mut stream = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    for i in 0..50 {
        let request = format!("GET /ka/{}.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n", i % 5);
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_responses(&mut stream, 1).await;
        assert!(
            response[0].starts_with("HTTP/1.1 200 OK"),
            "{}",
            response[0]
        );
    }
    assert_eq!(h.origin.total_hits(), 5);
}

#[tokio::test]
async fn connection_close_is_honoured_on_hits_and_misses() {
    let h = Harness::start().await;
    for _ in 0..2 {
        // First a miss, then a hit: both answer and close.
        let response = raw(
            h.edge.public_addr(),
            format!("GET /c.bin HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&response), 200);
        assert!(response.contains("connection: close"), "{response}");
    }
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_head_gets_408_and_is_closed() {
    let h = Harness::start_tables("", "", "[limits]\nheader_read_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    stream
        .write_all(format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // An idle keep-alive connection is closed quietly after the same time.
    let mut idle = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut out))
        .await
        .expect("idle connection closed within 5 s")
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(h.get("/after.bin").await.status, 200);
}

#[tokio::test]
async fn http_1_0_and_bodies_are_served_through_the_fallback() {
    let h = Harness::start().await;
    let response = raw(
        h.edge.public_addr(),
        format!("GET /old.bin HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&response), 200);
    assert!(
        response.contains("cache-status: edge-test; fwd=uri-miss"),
        "{response}"
    );
    // After a request with a body hands the connection to hyper, later requests on the
    // same connection are still served (and hits are still hits).
    let mut stream = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    let requests = format!(
        "POST /form HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc\
         GET /old.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let responses = read_responses(&mut stream, 2).await;
    assert!(responses[0].contains("fwd=method"), "{}", responses[0]);
    assert!(responses[1].contains("; hit"), "{}", responses[1]);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes() {
    let h = Harness::start().await;
    let mut idle = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    idle.write_all(format!("GET /s.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_responses(&mut idle, 1).await;
    let Harness { edge, origin, .. } = h;
    tokio::time::timeout(Duration::from_secs(5), edge.shutdown())
        .await
        .expect("shutdown does not wait for idle keep-alive connections");
    // Closed by the node (EOF, no stray bytes), not merely quiet: the keep-alive idle
    // timeout (10 s) is longer than this wait.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection was closed by the shutdown")
        .expect("a clean close");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    origin.shutdown().await;
}
