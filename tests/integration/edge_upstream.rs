//! Upstreams that answer in unusual but legal ways.

use crate::support;

use std::time::Duration;

use http::StatusCode;
use support::{HOST, config, loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An origin that answers every request with `raw`, counting the requests it read.
async fn scripted_origin(
    raw: &'static str,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = seen.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(raw.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn interim_1xx_responses_do_not_confuse_the_cache() {
    let (origin, mut received) = scripted_origin(
        "HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n\
         HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\
         Connection: close\r\n\r\nhello",
    )
    .await;
    let edge = edge::EdgeServer::start(config(origin, "", ""))
        .await
        .unwrap();
    let client = support::client();
    for expect_hit in [false, true] {
        let reply = support::send(
            &client,
            edge.public_addr(),
            http::Method::GET,
            "/early.txt",
            HOST,
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body[..], b"hello");
        assert_eq!(
            reply.cache_status().contains("; hit"),
            expect_hit,
            "{}",
            reply.cache_status()
        );
    }
    let request = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(request.starts_with("GET /early.txt HTTP/1.1"), "{request}");
    assert!(received.try_recv().is_err(), "the origin was asked twice");
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_the_stored_validators() {
    let (origin, mut received) = scripted_origin(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: \"v7\"\r\n\
         Last-Modified: Mon, 02 Nov 2026 10:00:00 GMT\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\nok",
    )
    .await;
    let edge = edge::EdgeServer::start(config(origin, "", ""))
        .await
        .unwrap();
    let client = support::client();
    for _ in 0..2 {
        let reply = support::send(
            &client,
            edge.public_addr(),
            http::Method::GET,
            "/v.txt",
            HOST,
            &[],
        )
        .await;
        assert_eq!(&reply.body[..], b"ok");
    }
    let first = received.recv().await.unwrap().to_ascii_lowercase();
    let second = received.recv().await.unwrap().to_ascii_lowercase();
    assert!(!first.contains("if-none-match"), "{first}");
    assert!(second.contains("if-none-match: \"v7\""), "{second}");
    assert!(
        second.contains("if-modified-since: mon, 02 nov 2026 10:00:00 gmt"),
        "{second}"
    );
}
