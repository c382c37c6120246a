//! What the edge stores, for how long, and what it says about it.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::{HOST, Harness, NODE};

#[tokio::test]
async fn miss_then_hit_with_cache_status_and_age() {
    let h = Harness::start().await;
    let miss = h.get("/obj/16k.bin").await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.body.len(), 16 * 1024);
    assert_eq!(
        miss.cache_status(),
        format!("{NODE}; fwd=uri-miss; fwd-status=200; stored")
    );
    assert_eq!(miss.age(), 0);
    assert_eq!(miss.header("via"), format!("1.1 {NODE}"));

    let hit = h.get("/obj/16k.bin").await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.body, miss.body, "a hit serves the stored bytes");
    assert!(
        hit.cache_status()
            .starts_with(&format!("{NODE}; hit; ttl=")),
        "{}",
        hit.cache_status()
    );
    assert!(hit.age() <= 1);
    assert_eq!(hit.header("content-length"), "16384");
    assert_eq!(h.origin.hits("/obj/16k.bin"), 1);
    assert_eq!(
        h.metric(r#"edge_requests_total{cache_status="hit",version="1.1"}"#)
            .await,
        1.0
    );
    assert_eq!(
        h.metric(r#"edge_requests_total{cache_status="miss",version="1.1"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn age_includes_the_age_the_upstream_reported() {
    let h = Harness::start().await;
    let target = "/aged.bin?h.age=100&cc=max-age%3D3600";
    h.get(target).await;
    let hit = h.get(target).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert!((100..=101).contains(&hit.age()), "age {}", hit.age());
    let ttl: i64 = hit
        .cache_status()
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3499..=3500).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn no_store_and_private_responses_are_never_stored() {
    let h = Harness::start().await;
    for (cc, reason) in [
        ("no-store", "no-store"),
        ("private%2C%20max-age%3D60", "private"),
    ] {
        let target = format!("/secret.bin?cc={cc}");
        for _ in 0..3 {
            let reply = h.get(&target).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(
                reply.cache_status().ends_with(&format!("detail={reason}")),
                "{}",
                reply.cache_status()
            );
        }
        assert_eq!(h.origin.hits(&target), 3, "{cc} was served from cache");
    }
    assert_eq!(h.metric("edge_stored_total").await, 0.0);
}

#[tokio::test]
async fn set_cookie_responses_are_not_shared() {
    let h = Harness::start().await;
    let target = "/me.bin?h.set-cookie=session%3Dabc";
    h.get(target).await;
    let second = h.get(target).await;
    assert!(second.cache_status().ends_with("detail=set-cookie"));
    assert_eq!(h.origin.hits(target), 2);
}

#[tokio::test]
async fn max_age_expiry_revalidates_with_the_stored_validator() {
    let h = Harness::start().await;
    let target = "/short.bin?cc=max-age%3D1";
    let first = h.get(target).await;
    assert!(first.cache_status().contains("stored"));
    assert!(h.get(target).await.cache_status().contains("hit"));
    // Let the one-second lifetime run out: time passing is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revalidated = h.get(target).await;
    assert_eq!(
        revalidated.cache_status(),
        format!("{NODE}; fwd=stale; fwd-status=304; stored")
    );
    assert_eq!(revalidated.body, first.body);
    assert_eq!(h.origin.hits(target), 2);
    assert!(h.get(target).await.cache_status().contains("hit"));
    assert_eq!(h.origin.hits(target), 2);
}

#[tokio::test]
async fn a_large_body_is_kept_in_a_memory_file_and_sent_whole_on_every_path() {
    let h = Harness::start().await;
    let target = "/large/1m.bin?cc=max-age%3D1";
    let expected = h.origin_body(target).await;
    // Streamed to the client as it arrives, and stored once whole.
    let miss = h.get(target).await;
    assert!(miss.cache_status().contains("fwd=uri-miss") && miss.body == expected);
    assert!(
        h.metric("edge_cache_sealed_bodies").await >= 1.0,
        "a 1 MiB body is kept in a sealed memory file"
    );
    // Fast-path hits (`sendfile` after the head), twice on one kept-alive connection: the
    // framing holds after a body sent from the file.
    for _ in 0..2 {
        let hit = h.get(target).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
        assert!(
            hit.body == expected,
            "the hit's body differs from the origin's"
        );
    }
    let head = h.send(Method::HEAD, target, HOST, &[]).await;
    assert_eq!(head.header("content-length"), "1048576");
    assert!(head.body.is_empty());
    // The full path reads the file's mapping.
    let range = h
        .send(Method::GET, target, HOST, &[("range", "bytes=1000-1999")])
        .await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert!(range.body == expected.slice(1000..2000));
    // A revalidated entry keeps its body (and its file).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revalidated = h.get(target).await;
    assert!(revalidated.cache_status().contains("fwd-status=304"));
    assert!(revalidated.body == expected);
    let hit = h.get(target).await;
    assert!(hit.cache_status().contains("hit") && hit.body == expected);
}

#[tokio::test]
async fn an_expired_entry_without_validators_is_fetched_again() {
    let h = Harness::start().await;
    let target = "/short-novalidator.bin?cc=max-age%3D1&etag=0";
    h.get(target).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refetched = h.get(target).await;
    assert_eq!(
        refetched.cache_status(),
        format!("{NODE}; fwd=stale; fwd-status=200; stored")
    );
    assert_eq!(h.origin.hits(target), 2);
}

#[tokio::test]
async fn no_cache_is_stored_but_revalidated_every_time() {
    let h = Harness::start().await;
    let target = "/nc.bin?cc=no-cache";
    h.get(target).await;
    for _ in 0..2 {
        let reply = h.get(target).await;
        assert!(
            reply.cache_status().contains("fwd=stale; fwd-status=304"),
            "{}",
            reply.cache_status()
        );
        assert_eq!(reply.body.len(), 1024);
    }
    assert_eq!(h.origin.hits(target), 3);
}

#[tokio::test]
async fn byte_capacity_is_respected_when_twice_the_capacity_is_inserted() {
    let capacity = 256 * 1024;
    let h = Harness::start_with(
        &format!("capacity = {capacity}\nmax_object_size = \"64 KiB\""),
        "",
    )
    .await;
    for i in 0..32 {
        let reply = h.get(&format!("/fill/{i}/16k.bin")).await;
        assert!(reply.cache_status().contains("stored"));
    }
    let bytes = h.metric("edge_cache_bytes").await;
    let entries = h.metric("edge_cache_entries").await;
    assert!(
        bytes <= capacity as f64,
        "{bytes} bytes cached over {capacity}"
    );
    assert!(bytes > capacity as f64 / 2.0, "cache nearly empty: {bytes}");
    assert!((8.0..32.0).contains(&entries), "{entries} entries");
    // The most recent object is still there.
    assert!(
        h.get("/fill/31/16k.bin")
            .await
            .cache_status()
            .contains("hit")
    );
}

#[tokio::test]
async fn objects_over_the_size_limit_stream_through_unstored_when_slicing_is_off() {
    let h = Harness::start_with("max_object_size = \"64 KiB\"\nslice_size = \"0 B\"", "").await;
    for target in ["/big/256k.bin", "/big/256k.bin?h.x=chunked"] {
        let reply = h.get(target).await;
        assert_eq!(reply.body.len(), 256 * 1024);
        assert!(reply.cache_status().ends_with("detail=too-large"));
    }
    assert_eq!(h.metric("edge_stored_total").await, 0.0);
}

#[tokio::test]
async fn query_strings_are_normalized_per_site() {
    let h = Harness::start_with("", "query = \"sort\"\ndrop_params = [\"utm_source\"]").await;
    let a = h.get("/q.bin?b=2&a=1&utm_source=mail").await;
    assert!(a.cache_status().contains("stored"));
    let b = h.get("/q.bin?a=1&b=2").await;
    assert!(b.cache_status().contains("hit"), "{}", b.cache_status());
    // The origin saw the normalized target, once.
    assert_eq!(h.origin.hits("/q.bin?a=1&b=2"), 1);
    assert_eq!(h.origin.total_hits(), 1);
}

#[tokio::test]
async fn versioned_asset_urls_are_distinct_objects() {
    let h = Harness::start().await;
    let v1 = h.get("/app.3f2a9c.js").await;
    let v2 = h.get("/app.77aa01.js").await;
    assert_ne!(v1.body, v2.body);
    assert!(h.get("/app.3f2a9c.js").await.cache_status().contains("hit"));
    assert_eq!(h.origin.total_hits(), 2);
}

#[tokio::test]
async fn head_fills_the_cache_and_get_then_hits() {
    let h = Harness::start().await;
    let head = h.send(Method::HEAD, "/h.bin", HOST, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "1024");
    let get = h.get("/h.bin").await;
    assert!(get.cache_status().contains("hit"));
    assert_eq!(get.body.len(), 1024);
}

#[tokio::test]
async fn other_methods_pass_through_and_are_not_stored() {
    let h = Harness::start().await;
    for _ in 0..2 {
        let reply = h.send(Method::POST, "/form", HOST, &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.cache_status(),
            format!("{NODE}; fwd=method; fwd-status=200")
        );
    }
    assert_eq!(h.origin.hits("/form"), 2);
    assert_eq!(
        h.metric(r#"edge_requests_total{cache_status="pass",version="1.1"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn authorized_requests_are_served_from_cache_only_when_the_response_allows_it() {
    let h = Harness::start().await;
    let auth = [("authorization", "Bearer x")];
    // `max-age` alone does not let a shared cache answer a request with credentials.
    let private_ish = "/auth.bin?cc=max-age%3D60";
    h.get(private_ish).await;
    let reply = h.send(Method::GET, private_ish, HOST, &auth).await;
    assert!(
        reply.cache_status().contains("fwd=request"),
        "{}",
        reply.cache_status()
    );
    assert_eq!(h.origin.hits(private_ish), 2);
    // `public` (as `s-maxage` or `must-revalidate` would) does.
    let public = "/auth-public.bin?cc=public%2C%20max-age%3D60";
    h.get(public).await;
    let reply = h.send(Method::GET, public, HOST, &auth).await;
    assert!(
        reply.cache_status().contains("; hit"),
        "{}",
        reply.cache_status()
    );
    assert_eq!(h.origin.hits(public), 1);
    // A miss with credentials is filled for that request alone; its response (`public`,
    // the demo origin's default) may be shared (RFC 9111 3.5), so it is stored for
    // everyone. (Before issue 19 it passed and was never stored.)
    let cold = "/auth-cold.bin";
    let reply = h.send(Method::GET, cold, HOST, &auth).await;
    assert!(
        reply
            .cache_status()
            .ends_with("fwd=uri-miss; fwd-status=200; stored"),
        "{}",
        reply.cache_status()
    );
    assert!(h.get(cold).await.cache_status().contains("; hit"));
    assert_eq!(h.origin.hits(cold), 1);
}

#[tokio::test]
async fn a_site_may_strip_set_cookie_to_share_responses() {
    let h = Harness::start_with("", "strip_set_cookie = true").await;
    let target = "/sc.bin?h.set-cookie=session%3Dsecret";
    let first = h.get(target).await;
    let second = h.get(target).await;
    assert!(
        second.cache_status().contains("; hit"),
        "{}",
        second.cache_status()
    );
    for reply in [&first, &second] {
        assert_eq!(reply.header("set-cookie"), "", "a cookie was handed out");
    }
    assert_eq!(h.origin.hits(target), 1);
}

#[tokio::test]
async fn client_conditionals_and_ranges_do_not_leak_into_shared_fills() {
    let h = Harness::start().await;
    let reply = h
        .send(
            Method::GET,
            "/cond.bin",
            HOST,
            &[("if-none-match", "*"), ("range", "bytes=0-9")],
        )
        .await;
    // Had `If-None-Match: *` reached the origin, it would have answered 304 and nothing
    // could be stored. The fill fetched the whole object; the client's own conditional was
    // then answered from the stored copy.
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert!(
        reply.cache_status().ends_with("stored"),
        "{}",
        reply.cache_status()
    );
    let hit = h.get("/cond.bin").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.body.len(), 1024);
}

#[tokio::test]
async fn expires_is_read_in_all_three_date_forms_whatever_their_case() {
    let h = Harness::start().await;
    let later = std::time::SystemTime::now() + Duration::from_secs(600);
    let imf = httpdate::fmt_http_date(later);
    for (i, expires) in [
        support::asctime(later),
        support::asctime(later).to_uppercase(),
        support::rfc850(later).to_lowercase(),
        imf.to_lowercase(),
        imf.replace("GMT", "gmt"),
    ]
    .into_iter()
    .enumerate()
    {
        // No Cache-Control and no validators: Expires alone says how long to keep it.
        let target = format!(
            "/expires-{i}.bin?cc=none&etag=0&h.expires={}",
            support::query_value(&expires)
        );
        let before = h.origin.total_hits();
        h.get(&target).await;
        let second = h.get(&target).await;
        assert!(
            second.cache_status().contains("; hit"),
            "Expires: {expires} -> {}",
            second.cache_status()
        );
        assert_eq!(h.origin.total_hits() - before, 1, "Expires: {expires}");
    }
}

#[tokio::test]
async fn responses_with_only_last_modified_are_fresh_by_the_default_heuristic() {
    // The demo origin's Last-Modified is weeks old: 10 % of that, capped at a day.
    let h = Harness::start().await;
    for status in ["200", "203", "405", "501"] {
        let target = format!("/heuristic.bin?cc=none&status={status}");
        h.get(&target).await;
        let second = h.get(&target).await;
        assert!(
            second.cache_status().contains("; hit"),
            "{status}: {}",
            second.cache_status()
        );
        assert!(
            second.cache_status().contains("ttl="),
            "{}",
            second.cache_status()
        );
        assert_eq!(h.origin.hits(&target), 1, "{status}");
    }
    // `public` makes a status outside the heuristic list cacheable the same way.
    let target = "/heuristic-public.bin?cc=public&status=302&h.location=%2Fx";
    h.get(target).await;
    assert!(h.get(target).await.cache_status().contains("; hit"));
    // Without Last-Modified there is nothing to base a heuristic on.
    let target = "/heuristic-none.bin?cc=none&etag=0";
    h.get(target).await;
    h.get(target).await;
    assert_eq!(h.origin.hits(target), 2);
}

#[tokio::test]
async fn the_heuristic_can_be_turned_off_per_site() {
    let h = Harness::start_with("", "heuristic_fraction = 0").await;
    let target = "/no-heuristic.bin?cc=none";
    h.get(target).await;
    let second = h.get(target).await;
    assert!(
        !second.cache_status().contains("; hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(h.origin.hits(target), 2);
}
