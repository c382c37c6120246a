//! Serving stale: while refreshing (`stale-while-revalidate`) and when the upstream fails
//! (`stale-if-error`), never when the response forbids it.

use crate::support;

use std::time::Duration;

use http::StatusCode;
use support::{Harness, NODE, eventually};

/// Lets a one-second lifetime run out: time passing is the behaviour under test.
async fn outlive_one_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_copy_when_the_origin_fails() {
    let h = Harness::start().await;
    let target = "/sie.bin?cc=max-age%3D1";
    let original = h.get(target).await;
    outlive_one_second().await;
    h.origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let stale = h.get(target).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, original.body);
    assert_eq!(
        stale.cache_status(),
        format!("{NODE}; fwd=stale; fwd-status=503; detail=stale-if-error")
    );
    assert!(stale.age() >= 1);
    h.origin.recover();
    let fresh = h.get(target).await;
    assert!(
        fresh.cache_status().contains("fwd-status=304"),
        "{}",
        fresh.cache_status()
    );
}

#[tokio::test]
async fn stale_if_error_covers_an_unreachable_origin() {
    let h = Harness::start().await;
    let target = "/down.bin?cc=max-age%3D1%2C%20stale-if-error%3D60";
    let original = h.get(target).await;
    outlive_one_second().await;
    let Harness { origin, edge, .. } = h;
    let addr = edge.public_addr();
    // Stop the origin and make sure no pooled connection can still reach it.
    origin.fail_with(StatusCode::BAD_GATEWAY);
    origin.shutdown().await;
    let client = support::client();
    let reply = support::send(&client, addr, http::Method::GET, target, support::HOST, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, original.body);
    assert!(
        reply.cache_status().ends_with("detail=stale-if-error"),
        "{}",
        reply.cache_status()
    );
}

#[tokio::test]
async fn must_revalidate_forbids_serving_stale_on_error() {
    let h = Harness::start().await;
    let target = "/strict.bin?cc=max-age%3D1%2C%20must-revalidate%2C%20stale-if-error%3D600";
    h.get(target).await;
    outlive_one_second().await;
    h.origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let reply = h.get(target).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_site_can_turn_stale_if_error_off() {
    let h = Harness::start_with("", "stale_if_error = \"0s\"").await;
    let target = "/nosie.bin?cc=max-age%3D1";
    h.get(target).await;
    outlive_one_second().await;
    h.origin.fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        h.get(target).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let h = Harness::start().await;
    // The origin takes 6 s to answer, so five stale answers within 4 s (a margin no
    // loaded machine eats: each is a local hit) did not wait for it.
    let target = "/swr.bin?cc=max-age%3D1%2C%20stale-while-revalidate%3D30&delay_ms=6000";
    let original = h.get(target).await;
    outlive_one_second().await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let stale = h.get(target).await;
        assert_eq!(stale.body, original.body);
        let status = stale.cache_status();
        assert!(
            status.contains("; hit; ttl=") && status.ends_with("detail=stale-while-revalidate"),
            "{status}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stale answers waited for the origin"
    );
    // Five stale answers, one background refresh.
    assert!(eventually(Duration::from_secs(10), || h.origin.hits(target) == 2).await);
    assert_eq!(h.origin.hits(target), 2);
}

#[tokio::test]
async fn the_background_refresh_makes_the_entry_fresh_again() {
    let h = Harness::start().await;
    let target = "/swr-fast.bin?cc=max-age%3D2%2C%20stale-while-revalidate%3D30";
    h.get(target).await;
    // Let the two-second lifetime run out: time passing is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = h.get(target).await;
    assert!(
        stale
            .cache_status()
            .ends_with("detail=stale-while-revalidate")
    );
    assert!(eventually(Duration::from_secs(10), || h.origin.hits(target) == 2).await);
    // The refresh (a 304) is stored a moment after the origin answered it.
    let mut fresh = None;
    for _ in 0..100 {
        let reply = h.get(target).await;
        if !reply.cache_status().contains("detail=") {
            fresh = Some(reply);
            break;
        }
        tokio::task::yield_now().await;
    }
    let fresh = fresh.expect("the entry became fresh again");
    assert!(
        fresh.cache_status().contains("; hit; ttl="),
        "{}",
        fresh.cache_status()
    );
    assert_eq!(h.origin.hits(target), 2);
}
