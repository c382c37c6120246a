//! Hostile and malformed input over raw TCP: each gets its exact status, the connection
//! is closed where the rest of it cannot be trusted, and the node keeps serving others.

use crate::support;

use std::time::Duration;

use http::StatusCode;
use support::topology::{OriginPool, Topology};
use support::{HOST, Harness, raw, raw_status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Small limits, so every case is cheap to provoke.
const LIMITS: &str = r#"
[limits]
max_uri_bytes = 1024
max_body_bytes = "64 KiB"
max_headers = 20
max_header_bytes = "8 KiB"
header_read_timeout = "300ms"
"#;

async fn harness() -> Harness {
    Harness::start_tables("", "", LIMITS).await
}

fn post(fields: &str) -> String {
    format!("POST /form HTTP/1.1\r\nHost: {HOST}\r\n{fields}\r\n")
}

/// Sends `request` on its own connection and checks the status, that the answer says why
/// in its body, and that the node still serves a normal request afterwards.
async fn expect(h: &Harness, what: &str, request: &[u8], status: u16) {
    let response = raw(h.edge.public_addr(), request).await;
    assert_eq!(raw_status(&response), status, "{what}: {response}");
    if status != 408 {
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(body.starts_with(&status.to_string()), "{what}: {response}");
    }
    assert_eq!(
        h.get("/ok/1k.bin").await.status,
        StatusCode::OK,
        "after {what}"
    );
}

#[tokio::test]
async fn ambiguous_framing_gets_400() {
    let h = harness().await;
    for (what, fields) in [
        (
            "Content-Length and Transfer-Encoding",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "a coding before chunked",
            "Transfer-Encoding: gzip, chunked\r\n",
        ),
        (
            "chunked twice in one field",
            "Transfer-Encoding: chunked, chunked\r\n",
        ),
        (
            "chunked in two fields",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        ("an unknown coding", "Transfer-Encoding: xchunked\r\n"),
        ("a signed length", "Content-Length: +5\r\n"),
        ("a list of lengths", "Content-Length: 5, 5\r\n"),
        (
            "two different lengths",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
    ] {
        expect(&h, what, post(fields).as_bytes(), 400).await;
    }
    assert_eq!(
        h.origin.total_hits(),
        1,
        "only the good requests reached the origin"
    );
}

#[tokio::test]
async fn nothing_is_smuggled_after_the_connection_went_to_hyper() {
    let h = harness().await;
    // A first request with a body hands the connection to hyper. hyper reads a later
    // Content-Length + Transfer-Encoding message as chunked and closes the connection
    // after it (RFC 9112 6.1), so the request hidden behind it is never read, and the
    // upstream gets the body re-framed by this node, never the client's framing.
    let mut stream = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    let requests = format!(
        "POST /first HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc\
         POST /second HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 30\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /smuggled.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("closed within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses[0], "200", "{text}");
    assert!(
        statuses.len() <= 2,
        "a request after the ambiguous one was served: {text}"
    );
    assert!(!text.contains("smuggled"), "{text}");
    assert_eq!(h.get("/ok/1k.bin").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_before_it_is_sent() {
    let h = harness().await;
    expect(
        &h,
        "declared body",
        post("Content-Length: 65537\r\n").as_bytes(),
        413,
    )
    .await;
    // The limit holds where hyper parses the request, too (HTTP/1.0 goes there).
    let request = format!("POST /form HTTP/1.0\r\nHost: {HOST}\r\nContent-Length: 70000\r\n\r\n");
    expect(&h, "declared body, HTTP/1.0", request.as_bytes(), 413).await;
    assert_eq!(
        h.origin.total_hits(),
        1,
        "only the good requests reached the origin"
    );
}

#[tokio::test]
async fn a_target_over_the_limit_gets_414() {
    let h = harness().await;
    let long = "a".repeat(1100);
    let request = format!("GET /{long} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    expect(&h, "long target", request.as_bytes(), 414).await;
    let request = format!("GET /{long} HTTP/1.0\r\nHost: {HOST}\r\n\r\n");
    expect(&h, "long target, HTTP/1.0", request.as_bytes(), 414).await;
}

#[tokio::test]
async fn too_many_or_too_large_header_fields_get_431() {
    let h = harness().await;
    let many: String = (0..25).map(|i| format!("X-Field-{i}: 1\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}\r\n");
    expect(&h, "too many fields", request.as_bytes(), 431).await;
    let big = format!("X-Big: {}\r\n", "b".repeat(9000));
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{big}\r\n");
    expect(&h, "a head over 8 KiB", request.as_bytes(), 431).await;
    // Sent in pieces, without the end of the head ever arriving.
    let mut stream = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes())
        .await
        .unwrap();
    let line = format!("X-Pad: {}\r\n", "p".repeat(1000));
    for _ in 0..9 {
        if stream.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert_eq!(raw_status(&String::from_utf8_lossy(&out)), 431);
}

#[tokio::test]
async fn a_slow_head_gets_408_while_other_clients_are_served() {
    let h = harness().await;
    let mut slow = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHo").await.unwrap();
    // Others are served while the slow client dawdles.
    assert_eq!(h.get("/meanwhile/1k.bin").await.status, StatusCode::OK);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
        .await
        .expect("closed within 5 s")
        .unwrap();
    assert_eq!(raw_status(&String::from_utf8_lossy(&out)), 408);
    let request = format!("GET /x/1k.bin HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    assert_eq!(
        raw_status(&raw(h.edge.public_addr(), request.as_bytes()).await),
        200
    );
}

#[tokio::test]
async fn connections_over_the_per_address_limit_get_429_and_places_come_back() {
    let h = Harness::start_tables("", "", "[limits]\nmax_connections_per_ip = 2").await;
    let addr = h.edge.public_addr();
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // Accepted in order, so the third is over the limit whatever the scheduling.
    let response = raw(
        addr,
        format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&response), 429, "{response}");
    assert!(response.contains("retry-after: 1"), "{response}");
    // Closing one gives its place back once the node has seen it close (bounded).
    drop(first);
    let request = format!("GET /y/1k.bin HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let mut status = 0;
    for _ in 0..100 {
        status = raw_status(&raw(addr, request.as_bytes()).await);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unkeyed_fields_never_reach_the_origin_so_cannot_poison_the_cache() {
    let h = harness().await;
    for name in [
        "x-forwarded-host",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-scheme",
        "x-http-method-override",
    ] {
        // The origin answers with what it received of `name` (and says it varies on it).
        let target = format!("/poison/{name}.bin?vary={name}");
        let reply = h
            .send(http::Method::GET, &target, HOST, &[(name, "evil.example")])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.text().starts_with(&format!("{name}=-\n")),
            "{name} reached the origin"
        );
        let clean = h.get(&target).await;
        assert_eq!(clean.body, reply.body, "{name}");
        assert!(
            clean.cache_status().contains("hit"),
            "{name}: {}",
            clean.cache_status()
        );
    }
    // X-Forwarded-Proto is this node's own.
    let reply = h.get("/poison/proto.bin?vary=x-forwarded-proto").await;
    assert!(reply.text().starts_with("x-forwarded-proto=http\n"));
}

#[tokio::test]
async fn a_site_keying_on_a_field_forwards_it_and_keeps_a_variant_per_value() {
    let h = Harness::start_with("", r#"key_headers = ["X-Forwarded-Host"]"#).await;
    let name = "x-forwarded-host";
    // The origin uses the field without saying Vary: only the site's key protects others.
    let target = "/keyed/1k.bin";
    let mut bodies = Vec::new();
    for value in ["a.example", "b.example", "a.example"] {
        let reply = h
            .send(http::Method::GET, target, HOST, &[(name, value)])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        bodies.push(reply);
    }
    let plain = h.get(target).await;
    assert!(
        bodies[2].cache_status().contains("hit"),
        "{}",
        bodies[2].cache_status()
    );
    assert!(
        !plain.cache_status().contains("hit"),
        "{}",
        plain.cache_status()
    );
    assert_eq!(
        h.origin.total_hits(),
        3,
        "one fill per value, and one without"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    // The keep-alive idle timeout is far away, so only the write timeout can close it.
    let limits = "[limits]\nwrite_timeout = \"300ms\"\nheader_read_timeout = \"60s\"";
    let h = Harness::start_tables("", "", limits).await;
    // Cached first, so the stalled answer is a hit sent from its memory file (`sendfile`);
    // far more than the socket buffers hold, so the edge's sends block.
    assert_eq!(h.get("/stall/32m.bin").await.body.len(), 32 << 20);
    let mut stream = TcpStream::connect(h.edge.public_addr()).await.unwrap();
    let request = format!("GET /stall/32m.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // Not reading is the behaviour under test: nothing to wait on but time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not closed within 10 s");
    assert!(
        received < 32 << 20,
        "the whole body arrived: {received} bytes"
    );
    assert_eq!(h.get("/after/1k.bin").await.status, StatusCode::OK);
}

/// One origin, one shield and one edge, every node sharing the node token.
async fn tiers(edge_pool: &str, edge_tables: &str) -> Topology {
    Topology::start_with_edges(1, 1, 1, OriginPool::default(), edge_pool, edge_tables).await
}

#[tokio::test]
async fn a_client_cannot_claim_a_purge_position_on_either_path_or_reach_the_shield_with_it() {
    let t = tiers("probes = false", "").await;
    let target = "/claims/1k.bin";
    assert_eq!(t.get(0, target).await.status, StatusCode::OK);
    let forged = ("cdn-purge-seq", "99999999");
    // The hit fast path, and the full path (a range), answer from the cache alike.
    for extra in [None, Some(("range", "bytes=0-9"))] {
        let headers: Vec<_> = std::iter::once(forged).chain(extra).collect();
        let reply = t.edge_send(0, target, &headers).await;
        assert!(
            reply.status.is_success() && reply.cache_status().contains("hit"),
            "{extra:?}: {} {}",
            reply.status,
            reply.cache_status()
        );
    }
    // A client that reaches the shield directly is no node either.
    let direct = t.shield_send(0, target, &[forged]).await;
    assert!(
        direct.cache_status().contains("hit"),
        "{}",
        direct.cache_status()
    );
    assert_eq!(t.origins[0].hits(target), 1, "the claim bypassed a cache");
    // Never forwarded: the origin echoes what it received of the field.
    let echoed = t
        .edge_send(0, "/claims/echo.bin?vary=cdn-purge-seq", &[forged])
        .await;
    assert!(
        echoed.text().starts_with("cdn-purge-seq=-\n"),
        "{}",
        echoed.text()
    );
    let token = t
        .edge_send(
            0,
            "/claims/echo.bin?vary=cdn-node-token",
            &[("cdn-node-token", "x")],
        )
        .await;
    assert!(
        token.text().starts_with("cdn-node-token=-\n"),
        "{}",
        token.text()
    );
}

/// `n` POSTs of `body` (raw bytes after the head) to the edge; each answer's status.
async fn posts(edge: std::net::SocketAddr, n: usize, fields: &str, body: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let mut request = post(fields).into_bytes();
        request.extend_from_slice(body);
        statuses.push(raw_status(&raw(edge, &request).await));
    }
    statuses
}

#[tokio::test]
async fn a_client_s_broken_body_is_its_own_fault_and_never_ejects_the_shield() {
    // Passive health as shipped (5 failures in a row eject), no probes to bring it back.
    let t = tiers("probes = false", LIMITS).await;
    let edge = t.edges[0].public_addr();
    let chunked = "Transfer-Encoding: chunked\r\n";
    assert_eq!(
        posts(edge, 8, chunked, b"zz\r\nhello\r\n0\r\n\r\n").await,
        [400; 8]
    );
    // Over `max_body_bytes` (64 KiB), streamed without a declared length.
    let chunk = format!("4000\r\n{}\r\n", "b".repeat(0x4000));
    let over = chunk.repeat(5) + "0\r\n\r\n";
    assert_eq!(posts(edge, 3, chunked, over.as_bytes()).await, [413; 3]);
    let state = |s: &str| {
        format!(
            "edge_upstream_server_state{{site=\"assets\",server=\"http://{}\",state=\"{s}\"}}",
            t.shield_addr(0)
        )
    };
    assert_eq!(
        t.edge_metric(0, &state("up")).await,
        1.0,
        "the shield was blamed"
    );
    assert_eq!(t.edge_metric(0, &state("ejected")).await, 0.0);
    let reply = t.get(0, "/after-bad-bodies/1k.bin").await;
    assert_eq!(reply.status, StatusCode::OK);
    // A good body still passes.
    let good = posts(edge, 1, "Content-Length: 5\r\n", b"hello").await;
    assert_eq!(good, [200]);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_a_close_long_before_the_upstream_timeout() {
    let tables =
        format!("{LIMITS}body_read_timeout = \"300ms\"\n[upstream]\nresponse_timeout = \"20s\"\n");
    let t = tiers("probes = false", &tables).await;
    let mut stream = TcpStream::connect(t.edges[0].public_addr()).await.unwrap();
    stream
        .write_all(post("Content-Length: 100\r\n").as_bytes())
        .await
        .unwrap();
    stream.write_all(b"only 20 of 100 bytes").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    // 408 can only come from the body timeout; a missing one would leave the exchange
    // to the 20 s upstream timeout (504), far beyond this bound.
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("closed well before the upstream timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(raw_status(&text), 408, "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let state = format!(
        "edge_upstream_server_state{{site=\"assets\",server=\"http://{}\",state=\"up\"}}",
        t.shield_addr(0)
    );
    assert_eq!(t.edge_metric(0, &state).await, 1.0);
}
