//! HTTP caching semantics beyond freshness: targeted cache fields, negative caching,
//! conditional requests answered from cache, only-if-cached, invalidation by unsafe
//! methods, and POST responses kept for later GETs (RFC 9110 9.3.3).

use crate::support;

use http::{Method, StatusCode};
use support::scripted::{Scripted, response};
use support::{HOST, Harness, NODE};

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

/// The `Content-Location` the POST origin answers each target with.
fn content_location(target: &str) -> Option<&'static str> {
    Some(match target {
        "/form" => "/form",
        "/vary" => "/vary",
        "/big" => "/big",
        "/dir/page?v=1" => "page?v=1",
        "/abs" => "http://ASSETS.test./abs",
        "/dots" => "./x/../dots",
        "/other" => "/elsewhere",
        "/other-host" => "http://other.example/other-host",
        "/other-scheme" => "https://assets.test/other-scheme",
        "/dir/up" => "../up",
        "/other-query?v=1" => "/other-query?v=2",
        _ => return None,
    })
}

/// An origin whose POSTs answer `posted <body>` with a minute of freshness and the
/// target's [`content_location`] (`/vary` varies on `Accept-Language`; `/big` is 100
/// times longer), and whose GETs answer `fetched`.
async fn post_origin(cache_extra: &str, site_extra: &str) -> Scripted {
    Scripted::start(cache_extra, site_extra, |seen| {
        if seen.method != Method::POST {
            return response(200, &[("cache-control", "max-age=60")], "fetched");
        }
        let mut fields = vec![("cache-control", "max-age=60")];
        if let Some(location) = content_location(&seen.target) {
            fields.push(("content-location", location));
        }
        if seen.target == "/vary" {
            fields.push(("vary", "accept-language"));
        }
        let mut body = format!("posted {}", String::from_utf8_lossy(&seen.body));
        if let Some(language) = seen.header("accept-language") {
            body = format!("{body} in {language}");
        }
        if seen.target == "/big" {
            body = body.repeat(200);
        }
        response(200, &fields, &body)
    })
    .await
}

const KEEP_POSTS: &str = "store_post_content_location = true";

/// POSTs `body` to `target`; whether the edge says it stored the answer.
async fn post(h: &Scripted, target: &str, headers: &[(&str, &str)], body: &str) -> bool {
    let posted = h.send(Method::POST, target, headers, body).await;
    assert_eq!(posted.status, StatusCode::OK, "{target}");
    assert!(posted.text().starts_with("posted "), "{target}");
    posted.cache_status().ends_with("; stored")
}

#[tokio::test]
async fn a_post_response_naming_its_target_answers_later_gets() {
    let h = post_origin("", KEEP_POSTS).await;
    // Content-Location as the target itself, as a relative reference, as an absolute URI
    // with the host in another case, and with dot segments: all name the target.
    for target in ["/form", "/dir/page?v=1", "/abs", "/dots"] {
        let posted = h.send(Method::POST, target, &[], "x=1").await;
        assert_eq!(posted.text(), "posted x=1");
        assert_eq!(
            posted.cache_status(),
            format!("{NODE}; fwd=method; fwd-status=200; stored"),
            "{target}"
        );
        let hit = h.get(target, &[]).await;
        assert!(
            hit.cache_status().starts_with(&format!("{NODE}; hit")),
            "{target}: {}",
            hit.cache_status()
        );
        assert_eq!(hit.text(), "posted x=1", "{target}");
    }
    // The POSTs went through with their bodies; no GET reached the origin.
    let seen = h.origin.seen();
    assert!(
        seen.iter()
            .all(|s| s.method == Method::POST && &s.body[..] == b"x=1")
    );
    assert_eq!(seen.len(), 4);
    // A later POST replaces the kept answer (after invalidating it, RFC 9111 4.4).
    assert!(post(&h, "/form", &[], "x=2").await);
    assert_eq!(h.get("/form", &[]).await.text(), "posted x=2");
}

#[tokio::test]
async fn a_post_response_naming_another_uri_stores_nothing() {
    let h = post_origin("", KEEP_POSTS).await;
    for target in [
        "/other",
        "/other-host",
        "/other-scheme",
        "/dir/up",
        "/other-query?v=1",
    ] {
        assert!(!post(&h, target, &[], "x=1").await, "{target}");
        let reply = h.get(target, &[]).await;
        assert_eq!(reply.text(), "fetched", "{target}");
        assert_eq!(
            reply.cache_status(),
            format!("{NODE}; fwd=uri-miss; fwd-status=200; stored"),
            "{target}"
        );
    }
    // Nor under the URI it named.
    for named in ["/elsewhere", "/up", "/other-query?v=2"] {
        assert_eq!(h.get(named, &[]).await.text(), "fetched", "{named}");
    }
    // The control: the same origin, naming the target, is kept.
    assert!(post(&h, "/form", &[], "x=1").await);
}

#[tokio::test]
async fn post_responses_are_kept_only_when_the_site_says_so() {
    for (site, kept) in [
        ("", false),
        ("store_post_content_location = false", false),
        (KEEP_POSTS, true),
    ] {
        let h = post_origin("", site).await;
        assert_eq!(post(&h, "/form", &[], "x=1").await, kept, "{site:?}");
        let reply = h.get("/form", &[]).await;
        let want = if kept { "posted x=1" } else { "fetched" };
        assert_eq!(reply.text(), want, "{site:?}");
    }
}

#[tokio::test]
async fn a_kept_post_response_is_its_requests_variant_and_only_if_it_fits() {
    let h = post_origin(
        "max_object_size = \"1 KiB\"\nslice_size = \"0 B\"",
        KEEP_POSTS,
    )
    .await;
    // Vary: the variant the POST's own request fields select.
    assert!(post(&h, "/vary", &[("accept-language", "fr")], "x=1").await);
    let french = h.get("/vary", &[("accept-language", "fr")]).await;
    assert!(
        french.cache_status().contains("; hit"),
        "{}",
        french.cache_status()
    );
    assert_eq!(french.text(), "posted x=1 in fr");
    let german = h.get("/vary", &[("accept-language", "de")]).await;
    assert_eq!(german.text(), "fetched");
    assert!(
        german.cache_status().contains("fwd=vary-miss"),
        "{}",
        german.cache_status()
    );
    // Over max_object_size: the client gets it all, nothing is kept.
    let posted = h.send(Method::POST, "/big", &[], "x=1").await;
    assert_eq!(posted.body.len(), "posted x=1".len() * 200);
    assert_eq!(
        posted.cache_status(),
        format!("{NODE}; fwd=method; fwd-status=200; detail=too-large")
    );
    assert_eq!(h.get("/big", &[]).await.text(), "fetched");
}
