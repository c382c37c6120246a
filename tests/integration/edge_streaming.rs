//! Large objects stream to every waiting client while they fill, and a client that joins
//! mid-fill is served from the partial object rather than by a second origin fetch.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{HOST, config, loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const LEN: usize = 400_000;
const FIRST: usize = 100_000;

fn payload() -> Vec<u8> {
    (0..LEN).map(|i| (i % 251) as u8).collect()
}

/// An origin that sends the head and the first `FIRST` bytes, then waits for `release`
/// before the rest; with `break_off`, it closes the connection there instead.
async fn stalling_origin(
    release: Arc<Notify>,
    break_off: bool,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (release, counted) = (release.clone(), counted.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = payload();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {LEN}\r\n\r\n"
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.write_all(&body[..FIRST]).await;
                release.notified().await;
                if !break_off {
                    let _ = stream.write_all(&body[FIRST..]).await;
                }
            });
        }
    });
    (addr, requests)
}

/// Sends a GET and reads until the head and at least one body byte arrived.
async fn start_download(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 16384];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before any body byte");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                && got.len() > end + 4
            {
                return;
            }
        }
    })
    .await
    .expect("head and first body bytes while the origin is still sending");
    (stream, got)
}

/// How a download ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte of the declared length arrived.
    Whole,
    /// The edge closed the connection first.
    Closed,
    /// Neither within 10 s: a reader left hanging.
    Hung,
}

/// Reads the rest of a response whose head is in `got`; returns (head, body, how it
/// ended).
async fn finish_download(mut stream: TcpStream, mut got: Vec<u8>) -> (String, Vec<u8>, End) {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 65536];
        while got.len() < end + 4 + LEN {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        End::Whole
    })
    .await
    .unwrap_or(End::Hung);
    (head, got[end + 4..].to_vec(), ended)
}

#[tokio::test]
async fn a_large_fill_streams_to_every_client_including_one_that_joins_mid_fill() {
    let release = Arc::new(Notify::new());
    let (origin, requests) = stalling_origin(release.clone(), false).await;
    let edge = edge::EdgeServer::start(config(origin, "max_object_size = \"1 MiB\"", ""))
        .await
        .unwrap();
    // Both clients have the head and the first bytes while the origin is stalled.
    let (a, a_got) = start_download(edge.public_addr()).await;
    let (b, b_got) = start_download(edge.public_addr()).await;
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "the joiner caused a second fetch"
    );
    release.notify_one();
    let want = payload();
    for (stream, got) in [(a, a_got), (b, b_got)] {
        let (head, body, ended) = finish_download(stream, got).await;
        assert_eq!(ended, End::Whole);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains(&format!("content-length: {LEN}")), "{head}");
        assert!(body == want, "streamed body differs ({} bytes)", body.len());
    }
    // Complete, so stored: the next client is a hit.
    let reply = support::send(
        &support::client(),
        edge.public_addr(),
        http::Method::GET,
        "/big.bin",
        HOST,
        &[],
    )
    .await;
    assert!(
        reply.cache_status().contains("; hit"),
        "{}",
        reply.cache_status()
    );
    assert!(reply.body[..] == want[..]);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fill_that_breaks_off_fails_its_readers_and_is_not_stored() {
    let release = Arc::new(Notify::new());
    let (origin, requests) = stalling_origin(release.clone(), true).await;
    let edge = edge::EdgeServer::start(config(origin, "max_object_size = \"1 MiB\"", ""))
        .await
        .unwrap();
    let (a, a_got) = start_download(edge.public_addr()).await;
    release.notify_one();
    let (_, body, ended) = finish_download(a, a_got).await;
    // Closed, not left waiting: nothing else would close it within 10 s (the write and
    // upstream body timeouts are 30 s and 60 s).
    assert_eq!(ended, End::Closed, "the reader was not failed");
    assert!(body.len() < LEN, "a truncated body was completed");
    // Nothing stored: the next request goes to the origin again.
    let (_b, _) = start_download(edge.public_addr()).await;
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}
