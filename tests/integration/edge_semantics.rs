//! HTTP caching semantics beyond freshness: targeted cache fields, negative caching,
//! conditional requests answered from cache, only-if-cached, and invalidation by unsafe
//! methods.

use crate::support;

use http::{Method, StatusCode};
use support::{HOST, Harness};

#[tokio::test]
async fn cdn_cache_control_takes_precedence_and_is_not_forwarded() {
    let h = Harness::start().await;
    // The browser is told not to store; the CDN is told to keep it for a minute.
    let target = "/tcc.bin?cc=no-store&h.cdn-cache-control=max-age%3D60";
    let miss = h.get(target).await;
    assert!(
        miss.cache_status().ends_with("stored"),
        "{}",
        miss.cache_status()
    );
    let hit = h.get(target).await;
    assert!(
        hit.cache_status().contains("; hit"),
        "{}",
        hit.cache_status()
    );
    for reply in [&miss, &hit] {
        assert_eq!(reply.header("cache-control"), "no-store");
        assert_eq!(reply.header("cdn-cache-control"), "");
    }
    assert_eq!(h.origin.hits(target), 1);
    let surrogate = "/sc.bin?cc=private&h.surrogate-control=max-age%3D60";
    h.get(surrogate).await;
    let hit = h.get(surrogate).await;
    assert!(hit.cache_status().contains("; hit"));
    assert_eq!(hit.header("surrogate-control"), "");
}

#[tokio::test]
async fn a_flood_of_requests_for_a_missing_file_reaches_the_origin_once() {
    let h = Harness::start().await;
    let target = "/missing.js?status=404&cc=none&etag=0";
    for _ in 0..20 {
        assert_eq!(h.get(target).await.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(h.origin.hits(target), 1);
}

#[tokio::test]
async fn negative_caching_can_be_turned_off() {
    let h = Harness::start_with("", "negative_ttl = \"0s\"").await;
    let target = "/missing.js?status=410&cc=none&etag=0";
    for _ in 0..3 {
        assert_eq!(h.get(target).await.status, StatusCode::GONE);
    }
    assert_eq!(h.origin.hits(target), 3);
}

#[tokio::test]
async fn client_conditionals_get_304_from_the_cache() {
    let h = Harness::start().await;
    let first = h.get("/cond304.bin").await;
    let etag = first.header("etag").to_owned();
    let modified = first.header("last-modified").to_owned();
    let reply = h
        .send(
            Method::GET,
            "/cond304.bin",
            HOST,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("etag"), etag);
    assert!(reply.cache_status().contains("; hit"));
    let reply = h
        .send(
            Method::GET,
            "/cond304.bin",
            HOST,
            &[("if-modified-since", &modified)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    let reply = h
        .send(
            Method::GET,
            "/cond304.bin",
            HOST,
            &[("if-none-match", "\"other\"")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 1024);
    assert_eq!(h.origin.total_hits(), 1);
}

#[tokio::test]
async fn only_if_cached_never_contacts_the_origin() {
    let h = Harness::start().await;
    let cc = [("cache-control", "only-if-cached")];
    let reply = h.send(Method::GET, "/oic.bin", HOST, &cc).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(h.origin.total_hits(), 0);
    h.get("/oic.bin").await;
    let reply = h.send(Method::GET, "/oic.bin", HOST, &cc).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.cache_status().contains("; hit"));
    assert_eq!(h.origin.total_hits(), 1);
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_its_target_and_location() {
    let h = Harness::start().await;
    h.get("/doc.bin").await;
    h.get("/other.bin").await;
    let reply = h
        .send(Method::POST, "/doc.bin?h.location=%2Fother.bin", HOST, &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The POST's own target differs from /doc.bin by its query, so only Location matches.
    assert!(
        h.get("/other.bin")
            .await
            .cache_status()
            .contains("fwd=uri-miss")
    );
    assert!(h.get("/doc.bin").await.cache_status().contains("; hit"));
    h.send(Method::PUT, "/doc.bin", HOST, &[]).await;
    assert!(
        h.get("/doc.bin")
            .await
            .cache_status()
            .contains("fwd=uri-miss")
    );
    // A failed unsafe request invalidates nothing.
    h.send(Method::DELETE, "/doc.bin?status=500", HOST, &[])
        .await;
    assert!(h.get("/doc.bin").await.cache_status().contains("; hit"));
}

#[tokio::test]
async fn a_location_on_another_host_is_not_invalidated() {
    let h = Harness::start().await;
    h.get("/keep.bin").await;
    h.send(
        Method::POST,
        "/form?h.location=http%3A%2F%2Fother.example%2Fkeep.bin",
        HOST,
        &[],
    )
    .await;
    assert!(h.get("/keep.bin").await.cache_status().contains("; hit"));
}

#[tokio::test]
async fn a_url_that_cannot_be_stored_passes_straight_through_next_time() {
    let h = Harness::start_with("max_object_size = \"64 KiB\"\nslice_size = \"0 B\"", "").await;
    let big = "/movie/256k.bin";
    let range = [("range", "bytes=0-99")];
    // First time: the fill learns the object is too large, then the range goes upstream.
    let first = h.send(Method::GET, big, HOST, &range).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h.origin.hits(big), 2);
    // Next time the hit-for-pass marker sends the request straight through: one fetch.
    let second = h.send(Method::GET, big, HOST, &range).await;
    assert_eq!(second.status, StatusCode::PARTIAL_CONTENT);
    assert!(
        second.cache_status().ends_with("detail=too-large"),
        "{}",
        second.cache_status()
    );
    assert_eq!(h.origin.hits(big), 3);
}

#[tokio::test]
async fn an_outage_does_not_mark_urls_uncacheable() {
    let h = Harness::start().await;
    h.origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        h.get("/o.bin").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    h.origin.recover();
    let reply = h.get("/o.bin").await;
    assert!(
        reply.cache_status().ends_with("stored"),
        "{}",
        reply.cache_status()
    );
    assert!(h.get("/o.bin").await.cache_status().contains("; hit"));
}

#[tokio::test]
async fn a_cdn_cache_control_that_is_not_a_structured_dictionary_is_ignored() {
    let h = Harness::start().await;
    // RFC 9213 2.1: a targeted field that fails to parse is ignored, so the
    // Cache-Control beside it applies; so is one whose only directive has the wrong type.
    for (i, targeted) in ["max-age=10000, &&&&&", "max-age=\"10000\"", "max-age=1.5"]
        .into_iter()
        .enumerate()
    {
        let target = format!(
            "/tcc-bad-{i}.bin?cc=no-store&h.cdn-cache-control={}",
            support::query_value(targeted)
        );
        let before = h.origin.total_hits();
        for _ in 0..2 {
            let reply = h.get(&target).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(
                reply.cache_status().contains("fwd=uri-miss")
                    && !reply.cache_status().contains("stored"),
                "{targeted}: {}",
                reply.cache_status()
            );
        }
        assert_eq!(h.origin.total_hits() - before, 2, "{targeted} was obeyed");
    }
    // A valid one still wins over Cache-Control.
    let target = format!(
        "/tcc-good.bin?cc=no-store&h.cdn-cache-control={}",
        support::query_value("max-age=60, must-revalidate")
    );
    let before = h.origin.total_hits();
    h.get(&target).await;
    assert!(h.get(&target).await.cache_status().contains("; hit"));
    assert_eq!(h.origin.total_hits() - before, 1);
}

#[tokio::test]
async fn if_modified_since_is_compared_with_date_when_there_is_no_last_modified() {
    let h = Harness::start().await;
    // `etag=0`: no ETag and no Last-Modified; the stored response's Date stands in.
    let target = "/ims-date.bin?etag=0";
    let first = h.get(target).await;
    assert_eq!(first.header("last-modified"), "");
    let date = first.header("date").to_owned();
    assert!(!date.is_empty());
    let reply = h
        .send(Method::GET, target, HOST, &[("if-modified-since", &date)])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_MODIFIED,
        "{:?}",
        reply.headers
    );
    assert!(reply.body.is_empty());
    assert!(
        reply.cache_status().contains("; hit"),
        "{}",
        reply.cache_status()
    );
    // The same instant in the obsolete asctime form a recipient must accept (RFC 9110
    // 5.6.7), and in another case.
    let time = httpdate::parse_http_date(&date).expect("Date is an IMF-fixdate");
    let imf = httpdate::fmt_http_date(time);
    for form in [support::asctime(time), imf.to_uppercase()] {
        let reply = h
            .send(Method::GET, target, HOST, &[("if-modified-since", &form)])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_MODIFIED,
            "If-Modified-Since: {form}"
        );
    }
    // A date before the response's Date is not a match.
    let earlier = "Sun, 06 Nov 1994 08:49:37 GMT";
    let reply = h
        .send(Method::GET, target, HOST, &[("if-modified-since", earlier)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.origin.hits(target), 1);
}
