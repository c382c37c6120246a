//! Concurrent misses for one object reach the upstream once.

use crate::support;

use std::time::Duration;

use http::StatusCode;
use support::{HOST, Harness, raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_cold_requests_cause_one_origin_fetch() {
    let h = std::sync::Arc::new(Harness::start().await);
    // The origin holds its answer long enough for every request to arrive while the fill
    // is in flight; whatever the timing, each request is either collapsed or a hit.
    let target = "/cold/64k.bin?delay_ms=300";
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get(target).await }));
    }
    let mut collapsed = 0;
    let mut body = None;
    for task in tasks {
        let reply = task.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), 64 * 1024);
        if let Some(first) = &body {
            assert_eq!(&reply.body, first);
        } else {
            body = Some(reply.body.clone());
        }
        collapsed += usize::from(reply.cache_status().contains("collapsed"));
    }
    assert_eq!(h.origin.hits(target), 1, "origin fetched more than once");
    assert!(collapsed > 0, "no request waited on the shared fetch");
    assert_eq!(h.metric("edge_coalesced_total").await, collapsed as f64);
}

#[tokio::test]
async fn a_client_hanging_up_does_not_strand_the_waiters() {
    let h = Harness::start().await;
    let target = "/hangup.bin?delay_ms=400";
    let addr = h.edge.public_addr();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    // The first client starts the fill, then gives up as soon as the origin has the request.
    let first = tokio::spawn(async move { raw(addr, request.as_bytes()).await });
    assert!(
        support::eventually(Duration::from_secs(5), || h.origin.hits(target) == 1).await,
        "the fill never reached the origin"
    );
    first.abort();
    let second = h.get(target).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body.len(), 1024);
    assert!(
        second.cache_status().contains("collapsed") || second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(h.origin.hits(target), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_responses_are_not_shared_between_waiters() {
    let h = std::sync::Arc::new(Harness::start().await);
    let target = "/private.bin?delay_ms=200&cc=private";
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get(target).await }));
    }
    for task in tasks {
        let reply = task.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.cache_status().contains("collapsed"));
    }
    assert_eq!(h.origin.hits(target), 5, "a private response was shared");
}
