//! The edge refuses what it must, fails clearly, and keeps serving.

use crate::support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::{HOST, Harness, NODE, raw, raw_status};

#[tokio::test]
async fn unknown_host_is_refused_without_origin_contact() {
    let h = Harness::start().await;
    for host in ["evil.example", "assets.test.evil.example", "127.0.0.1"] {
        let reply = h.send(Method::GET, "/obj/1k.bin", host, &[]).await;
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(
            reply.text().contains("no site is configured"),
            "{}",
            reply.text()
        );
    }
    // An absolute-form target naming another host is refused the same way.
    let response = raw(
        h.edge.public_addr(),
        format!("GET http://evil.example/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&response), 421);
    assert_eq!(h.origin.total_hits(), 0, "the origin was contacted");
    assert_eq!(
        h.metric(r#"edge_requests_total{cache_status="refused",version="1.1"}"#)
            .await,
        4.0
    );
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_node_keeps_serving() {
    let h = Harness::start().await;
    let addr = h.edge.public_addr();
    let cases: &[(&str, &[u8])] = &[
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        (
            "bad version",
            b"GET / HTTP/9.9\r\nHost: assets.test\r\n\r\n",
        ),
        ("missing host", b"GET / HTTP/1.1\r\n\r\n"),
        (
            "two hosts",
            b"GET / HTTP/1.1\r\nHost: assets.test\r\nHost: assets.test\r\n\r\n",
        ),
        (
            "bad percent-encoding",
            b"GET /%zz HTTP/1.1\r\nHost: assets.test\r\n\r\n",
        ),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost: assets.test\r\nnocolon\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let response = raw(addr, request).await;
        assert_eq!(raw_status(&response), 400, "{what}");
        // Every refusal says what was wrong, in a body.
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(body.starts_with("400 Bad Request: "), "{what}: {response}");
    }
    assert_eq!(h.origin.total_hits(), 0);
    assert_eq!(h.get("/after.bin").await.status, StatusCode::OK);
}

#[tokio::test]
async fn conflicting_framing_is_refused_and_nothing_is_smuggled() {
    let h = Harness::start().await;
    // Whichever framing a node believed, the other could smuggle the pipelined request
    // through: the edge refuses the message and closes the connection.
    let request = format!(
        "POST /first HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 30\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /second.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    );
    let response = raw(h.edge.public_addr(), request.as_bytes()).await;
    assert_eq!(raw_status(&response), 400);
    assert!(response.contains("framing is ambiguous"), "{response}");
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert_eq!(h.origin.total_hits(), 0, "something reached the origin");
}

#[tokio::test]
async fn oversized_heads_get_431_and_the_node_keeps_serving() {
    let h = Harness::start().await;
    let addr = h.edge.public_addr();
    for size in [33 * 1024, 100 * 1024, 1024 * 1024] {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        assert_eq!(
            raw_status(&raw(addr, request.as_bytes()).await),
            431,
            "{size}"
        );
    }
    // The same for an object that is cached: the limit holds on the hit path too.
    h.get("/cached.bin").await;
    let request = format!(
        "GET /cached.bin HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(33 * 1024)
    );
    assert_eq!(raw_status(&raw(addr, request.as_bytes()).await), 431);
    let many: String = (0..200).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}\r\n");
    assert_eq!(raw_status(&raw(addr, request.as_bytes()).await), 431);
    assert_eq!(
        h.origin.total_hits(),
        1,
        "only the one fill reached the origin"
    );
    assert_eq!(h.get("/after.bin").await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_unreachable_origin_gets_502_with_a_clear_body() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let config = support::config(dead, "", "");
    let edge = edge::EdgeServer::start(config).await.unwrap();
    let reply = support::send(
        &support::client(),
        edge.public_addr(),
        Method::GET,
        "/x.bin",
        HOST,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.text().contains("could not connect to the upstream"),
        "{}",
        reply.text()
    );
    assert!(
        reply.cache_status().ends_with("detail=connect"),
        "{}",
        reply.cache_status()
    );
    assert_eq!(reply.header("cache-control"), "no-store");
}

#[tokio::test]
async fn a_slow_origin_gets_504_after_the_response_timeout() {
    let h = Harness::start_tables("", "", "[upstream]\nresponse_timeout = \"200ms\"").await;
    let reply = h.get("/slow.bin?delay_ms=3000").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reply.text().contains("no response head within"),
        "{}",
        reply.text()
    );
    assert_eq!(
        h.metric(r#"edge_upstream_errors_total{kind="head-timeout"}"#)
            .await,
        1.0
    );
    // Nothing was stored; a normal object still works.
    assert_eq!(h.get("/fast.bin").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_that_loops_back_is_refused() {
    let h = Harness::start().await;
    let via = format!("1.1 shield, 1.1 {NODE}");
    let reply = h.send(Method::GET, "/x", HOST, &[("via", &via)]).await;
    assert_eq!(reply.status, StatusCode::LOOP_DETECTED);
    assert_eq!(h.origin.total_hits(), 0);
}

#[tokio::test]
async fn connect_and_trace_are_not_allowed() {
    let h = Harness::start().await;
    let reply = h.send(Method::TRACE, "/", HOST, &[]).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let response = raw(
        h.edge.public_addr(),
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&response), 405, "{response}");
    assert!(response.contains("CONNECT is not supported"), "{response}");
    assert_eq!(h.origin.total_hits(), 0);
}

#[tokio::test]
async fn admin_listener_reports_health_and_metrics_apart_from_the_public_one() {
    let h = Harness::start().await;
    let health = h.admin("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["live"], true);
    assert_eq!(json["node"], NODE);

    assert_eq!(json["connections"], 0);

    h.get("/m.bin").await;
    h.get("/m.bin").await;
    // The client keeps its connection alive: the node reports it as load.
    let loaded: serde_json::Value =
        serde_json::from_slice(&h.admin("/healthz").await.body).unwrap();
    assert_eq!(loaded["connections"], 1);
    let metrics = h.admin("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    for series in [
        "edge_requests_total{cache_status=\"hit\",version=\"1.1\"} 1",
        "edge_cache_hit_ratio 0.5",
        "edge_upstream_response_seconds_bucket{le=",
        "edge_cache_capacity_bytes",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
    // The public port does not serve admin paths: it is just another (unknown) object.
    let public = h.send(Method::GET, "/metrics", "admin", &[]).await;
    assert_eq!(public.status, StatusCode::MISDIRECTED_REQUEST);
    tokio::time::timeout(Duration::from_secs(15), async move {
        let Harness { edge, .. } = h;
        edge.shutdown().await;
    })
    .await
    .expect("shutdown completes");
}
