//! HTTPS on the edge: a certificate per site chosen by SNI, refused unknown names, hot
//! reload of certificates from disk, HTTP/2 and HTTP/1.1 by ALPN.

use crate::support;

use std::path::Path;

use cdn::demo_origin::DemoOrigin;
use edge::{EdgeConfig, EdgeServer};
use http::{StatusCode, Version};
use support::tls::{self, Leaf, TestCa};
use support::{HOST, loopback};

const OTHER: &str = "images.test";

/// An origin and an edge serving two sites over HTTPS, each with its own certificate.
struct TlsHarness {
    _origin: DemoOrigin,
    edge: EdgeServer,
    ca: TestCa,
    dir: tempfile::TempDir,
    assets: Leaf,
    images: Leaf,
}

impl TlsHarness {
    async fn start() -> Self {
        let origin = DemoOrigin::start(loopback()).await.expect("origin starts");
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let assets = ca.issue(&[HOST]);
        let images = ca.issue(&[OTHER]);
        let (assets_cert, assets_key) = assets.write(dir.path(), "assets");
        let (images_cert, images_key) = images.write(dir.path(), "images");
        let upstream = origin.addr();
        let text = format!(
            r#"
            [node]
            name = "edge-tls"
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"
            https_listen = "127.0.0.1:0"
            tls_reload_interval = "50ms"

            [limits]
            h2_max_concurrent_streams = 16
            h3_retry_above = 8

            [[site]]
            name = "assets"
            hosts = ["{HOST}"]
            upstream = "http://{upstream}"
            tls = {{ cert = {assets_cert:?}, key = {assets_key:?} }}

            [[site]]
            name = "images"
            hosts = ["{OTHER}"]
            upstream = "http://{upstream}"
            tls = {{ cert = {images_cert:?}, key = {images_key:?} }}
            h3_early_data = true

            [[site]]
            name = "plain"
            hosts = ["plain.test"]
            upstream = "http://{upstream}"
            "#
        );
        let config = EdgeConfig::from_toml(&text).expect("valid config");
        let edge = EdgeServer::start(config).await.expect("edge starts");
        Self {
            _origin: origin,
            edge,
            ca,
            dir,
            assets,
            images,
        }
    }

    fn https(&self) -> std::net::SocketAddr {
        self.edge.https_addr().expect("HTTPS listener")
    }

    fn http3(&self) -> std::net::SocketAddr {
        self.edge.http3_addr().expect("HTTP/3 is on beside HTTPS")
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a new certificate for the assets site over the old one's files and waits
    /// (up to 10 s) until the edge has reloaded it; returns it.
    async fn renew_assets(&self) -> Leaf {
        let certificates = self.edge.certificates().expect("TLS is on").clone();
        let mut reloads = certificates.reloads();
        let renewed = self.ca.issue(&[HOST]);
        renewed.write(self.dir(), "assets");
        tokio::time::timeout(std::time::Duration::from_secs(10), reloads.changed())
            .await
            .expect("reloaded within 10 s")
            .unwrap();
        renewed
    }
}

#[tokio::test]
async fn sni_picks_each_sites_own_certificate() {
    let h = TlsHarness::start().await;
    let client = h.ca.client(&[b"http/1.1"]);
    for (host, leaf) in [(HOST, &h.assets), (OTHER, &h.images)] {
        let conn = tls::connect(&client, h.https(), host).await.expect(host);
        assert!(
            tls::presented(&conn) == leaf.der,
            "{host} got another certificate"
        );
        let (status, version, body) = tls::get(conn, host, "/sni/1k.bin").await;
        assert_eq!(
            (status, version),
            (StatusCode::OK, Version::HTTP_11),
            "{host}"
        );
        assert_eq!(body.len(), 1024);
    }
    // Names are matched as DNS names are: case does not matter.
    let conn = tls::connect(&client, h.https(), "IMAGES.test")
        .await
        .unwrap();
    assert!(tls::presented(&conn) == h.images.der);
}

#[tokio::test]
async fn an_unknown_or_missing_name_gets_a_handshake_alert_not_a_certificate() {
    let h = TlsHarness::start().await;
    let client = h.ca.client(&[b"http/1.1"]);
    // A configured site without a certificate, a stranger, and no SNI at all (a client
    // connecting to an IP address does not send one).
    for sni in ["plain.test", "evil.example", "127.0.0.1"] {
        let error = tls::connect(&client, h.https(), sni)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sni}: handshake succeeded"));
        assert!(error.contains("alert"), "{sni}: {error}");
    }
    // The node keeps serving the others.
    let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
    assert_eq!(tls::get(conn, HOST, "/ok/1k.bin").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_to_new_connections_without_a_restart() {
    let h = TlsHarness::start().await;
    let client = h.ca.client(&[b"http/1.1"]);
    let old = tls::connect(&client, h.https(), HOST).await.unwrap();
    assert!(tls::presented(&old) == h.assets.der);

    let renewed = h.renew_assets().await;

    let new = tls::connect(&client, h.https(), HOST).await.unwrap();
    assert!(
        tls::presented(&new) == renewed.der,
        "the old certificate is still served"
    );
    assert_eq!(tls::get(new, HOST, "/new/1k.bin").await.0, StatusCode::OK);
    // The connection made before the swap was not dropped, and the other site's
    // certificate did not change.
    assert_eq!(tls::get(old, HOST, "/old/1k.bin").await.0, StatusCode::OK);
    let other = tls::connect(&client, h.https(), OTHER).await.unwrap();
    assert!(tls::presented(&other) == h.images.der);
}

#[tokio::test]
async fn a_broken_replacement_keeps_the_previous_certificate_in_service() {
    let h = TlsHarness::start().await;
    let client = h.ca.client(&[b"http/1.1"]);
    let certificates = h.edge.certificates().unwrap().clone();
    // A key that does not belong to the certificate: refused, the old pair stays.
    let stranger = h.ca.issue(&[HOST]);
    std::fs::write(h.dir().join("assets.key"), &stranger.key_pem).unwrap();
    assert_eq!(certificates.reload_changed(), 0);
    let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
    assert!(tls::presented(&conn) == h.assets.der);
    // Once the matching certificate lands too, the pair is taken (by this call, or by
    // the background check before it).
    stranger.write(h.dir(), "assets");
    certificates.reload_changed();
    let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
    assert!(tls::presented(&conn) == stranger.der);
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_serves_hits() {
    let h = TlsHarness::start().await;
    let client = h.ca.client(&[b"h2", b"http/1.1"]);
    for expected in ["miss", "hit"] {
        let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
        assert_eq!(tls::alpn(&conn).as_deref(), Some(b"h2".as_slice()));
        let (status, version, body) = tls::get(conn, HOST, "/h2/2k.bin").await;
        assert_eq!(
            (status, version),
            (StatusCode::OK, Version::HTTP_2),
            "{expected}"
        );
        assert_eq!(body.len(), 2048);
    }
    // A client that offers only HTTP/1.1 gets it.
    let client = h.ca.client(&[b"http/1.1"]);
    let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
    assert_eq!(tls::alpn(&conn).as_deref(), Some(b"http/1.1".as_slice()));
}

#[tokio::test]
async fn http2_advertises_the_configured_stream_limit_and_rejects_oversized_header_blocks() {
    let h = TlsHarness::start().await;
    let client = h.ca.client(&[b"h2"]);
    let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(conn).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(format!("https://{HOST}/limits/1k.bin"))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).expect("stream opens");
    let response = response.await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sender.current_max_send_streams(), 16);

    // A header block over max_header_bytes (32 KiB by default) is refused: the stream is
    // answered 431 or reset, and the connection goes on serving.
    let mut sender = sender.ready().await.expect("ready");
    let request = http::Request::get(format!("https://{HOST}/limits/1k.bin"))
        .header("x-big", "b".repeat(40 * 1024))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).expect("stream opens");
    match response.await {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        Err(error) => assert!(error.is_reset() || error.is_go_away(), "{error}"),
    }
    let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
    assert_eq!(
        tls::get(conn, HOST, "/limits/1k.bin").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_host_the_connection_s_certificate_does_not_cover_gets_421_on_http1_and_h2() {
    let h = TlsHarness::start().await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let client = h.ca.client(&[alpn]);
        let label = String::from_utf8_lossy(alpn);
        // Cached first, so a hit on the fast path would be the easy mistake.
        let conn = tls::connect(&client, h.https(), OTHER).await.unwrap();
        assert_eq!(
            tls::get(conn, OTHER, "/sni-host/1k.bin").await.0,
            StatusCode::OK
        );
        // Another site with a certificate of its own, and a site with none at all.
        for host in [OTHER, "plain.test", "evil.example"] {
            let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
            let (status, _, body) = tls::get(conn, host, "/sni-host/1k.bin").await;
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{label} {host}");
            assert!(
                body.starts_with(b"421 "),
                "{label} {host}: the answer says why"
            );
        }
        let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
        assert_eq!(
            tls::get(conn, &HOST.to_uppercase(), "/sni-host/1k.bin")
                .await
                .0,
            StatusCode::OK,
            "{label}: the connection's own host, in any case"
        );
    }
    // Plain HTTP has no certificate to match: every configured host is served.
    let reply = support::send(
        &support::client(),
        h.edge.public_addr(),
        http::Method::GET,
        "/sni-host/1k.bin",
        "plain.test",
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Fresh hits on HTTP/2 are answered on the connection's own task (the fast path) with
/// the same fields the full path gives, and requests sent together are answered
/// together, each with its own stream's body; what the fast path must not answer (a
/// range, a conditional, request `Cache-Control`) still gets the full path's answer on
/// the same connection.
#[tokio::test]
async fn http2_hits_sent_together_are_each_answered_whole_and_what_needs_the_full_path_gets_it() {
    let h = TlsHarness::start().await;
    let client = h.ca.client(&[b"h2"]);
    let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
    let (sender, connection) = h2::client::handshake(conn).await.expect("h2 handshake");
    tokio::spawn(connection);
    let ask = |sender: &h2::client::SendRequest<bytes::Bytes>,
               method: http::Method,
               target: String,
               fields: &[(&str, &str)]| {
        let sender = sender.clone();
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("https://{HOST}{target}"));
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        async move {
            let mut sender = sender.ready().await.expect("ready");
            let (response, _) = sender.send_request(request, true).expect("stream opens");
            let response = response.await.expect("response");
            let (parts, mut body) = response.into_parts();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("body");
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            (parts, bytes)
        }
    };
    let targets: Vec<String> = (0..12).map(|i| format!("/batch/{i}/3k.bin")).collect();
    // Misses first (the full path), then all twelve again at once: fast-path hits.
    for target in &targets {
        let (parts, body) = ask(&sender, http::Method::GET, target.clone(), &[]).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body.len(), 3 * 1024);
    }
    let together = futures_util::future::join_all(
        targets
            .iter()
            .map(|target| ask(&sender, http::Method::GET, target.clone(), &[])),
    )
    .await;
    for ((parts, body), target) in together.iter().zip(&targets) {
        let status = parts.headers["cache-status"].to_str().unwrap();
        assert!(status.contains("hit"), "{target}: {status}");
        assert!(parts.headers.contains_key("age"), "{target}");
        assert!(parts.headers.contains_key("date"), "{target}");
        assert_eq!(parts.headers["content-length"], "3072", "{target}");
        assert!(!parts.headers.contains_key("connection"), "{target}");
        assert_eq!(body.len(), 3 * 1024, "{target}");
    }
    // Each stream got its own object: the demo origin's bodies differ by path.
    let first = &together[0].1;
    assert!(together[1..].iter().any(|(_, body)| body != first));
    for ((_, body), target) in together.iter().zip(&targets) {
        let alone = ask(&sender, http::Method::GET, target.clone(), &[]).await.1;
        assert_eq!(&alone, body, "{target}");
    }

    let (parts, body) = ask(&sender, http::Method::HEAD, targets[0].clone(), &[]).await;
    assert!(
        parts.headers["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    assert_eq!(parts.headers["content-length"], "3072");
    assert!(body.is_empty(), "HEAD has no body");

    let (parts, body) = ask(
        &sender,
        http::Method::GET,
        targets[0].clone(),
        &[("range", "bytes=0-99")],
    )
    .await;
    assert_eq!(parts.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body.len(), 100);
    let etag = together[0].0.headers["etag"].to_str().unwrap().to_owned();
    let (parts, body) = ask(
        &sender,
        http::Method::GET,
        targets[0].clone(),
        &[("if-none-match", etag.as_str())],
    )
    .await;
    assert_eq!(parts.status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
}

#[tokio::test]
async fn http3_answers_as_the_other_protocols_do_and_https_advertises_it() {
    let h = TlsHarness::start().await;
    assert_eq!(
        h.http3().port(),
        h.https().port(),
        "the HTTPS port's number"
    );
    let advertised = format!("h3=\":{}\"; ma=86400", h.https().port());
    let target = "/h3/16k.bin";
    let client = h.ca.h3_client();
    let connection = tls::h3::connect(&client, h.http3(), HOST).await.unwrap();
    assert!(tls::h3::presented(&connection) == h.assets.der);
    let mut session = tls::h3::session(&connection).await;
    let miss = session.get(HOST, target, &[]).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert!(
        miss.header("cache-status").contains("fwd=uri-miss"),
        "{miss:?}"
    );
    assert_eq!(miss.body.len(), 16 * 1024);
    let hit = session.get(HOST, target, &[]).await;
    assert!(hit.header("cache-status").contains("hit"), "{hit:?}");
    assert!(hit.body == miss.body);
    assert_eq!(hit.header("content-length"), "16384");
    let range = session
        .get(HOST, target, &[("range", "bytes=100-199")])
        .await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.header("content-range"), "bytes 100-199/16384");
    assert!(range.body == miss.body.slice(100..200));
    // Over TCP, HTTPS says where HTTP/3 is: HTTP/1.1 and h2, hits and misses.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let client = h.ca.client(&[alpn]);
        for path in ["/h3-advertised/1k.bin", "/h3-advertised/1k.bin", target] {
            let conn = tls::connect(&client, h.https(), HOST).await.unwrap();
            let (status, _, headers, _) = tls::fetch(conn, HOST, path).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                headers.get("alt-svc").map(|v| v.to_str().unwrap()),
                Some(advertised.as_str()),
                "{} {path}",
                String::from_utf8_lossy(alpn)
            );
        }
    }
    // Plain HTTP does not advertise it.
    let plain = support::send(
        &support::client(),
        h.edge.public_addr(),
        http::Method::GET,
        target,
        HOST,
        &[],
    )
    .await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.headers.get("alt-svc").is_none());
}

#[tokio::test]
async fn http3_refuses_unknown_names_and_answers_421_for_a_host_the_certificate_does_not_cover() {
    let h = TlsHarness::start().await;
    let client = h.ca.h3_client();
    for sni in ["plain.test", "evil.example"] {
        let error = tls::h3::connect(&client, h.http3(), sni)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sni}: handshake succeeded"));
        assert!(error.contains("handshake failed"), "{sni}: {error}");
    }
    let connection = tls::h3::connect(&client, h.http3(), HOST).await.unwrap();
    let mut session = tls::h3::session(&connection).await;
    // Cached for the connection's own name first, so a fast-path hit would be the easy
    // mistake.
    assert_eq!(
        session.get(HOST, "/h3-sni/1k.bin", &[]).await.status,
        StatusCode::OK
    );
    for host in [OTHER, "plain.test", "evil.example"] {
        let reply = session.get(host, "/h3-sni/1k.bin", &[]).await;
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(
            reply.body.starts_with(b"421 "),
            "{host}: the answer says why"
        );
    }
    assert_eq!(
        session.get(HOST, "/h3-sni/1k.bin", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http3_serves_a_certificate_replaced_on_disk_to_the_next_connection() {
    let h = TlsHarness::start().await;
    let client = h.ca.h3_client();
    let old = tls::h3::connect(&client, h.http3(), HOST).await.unwrap();
    assert!(tls::h3::presented(&old) == h.assets.der);
    let renewed = h.renew_assets().await;
    // A new client: one that resumes its session is shown no certificate at all.
    let new = tls::h3::connect(&h.ca.h3_client(), h.http3(), HOST)
        .await
        .unwrap();
    assert!(
        tls::h3::presented(&new) == renewed.der,
        "the old certificate is still served"
    );
    let mut session = tls::h3::session(&new).await;
    assert_eq!(
        session.get(HOST, "/h3-new/1k.bin", &[]).await.status,
        StatusCode::OK
    );
    // The connection made before the swap still serves.
    let mut session = tls::h3::session(&old).await;
    assert_eq!(
        session.get(HOST, "/h3-old/1k.bin", &[]).await.status,
        StatusCode::OK
    );
}

/// A body of several MiB arrives byte for byte over HTTP/3 on every path: streamed on a
/// miss, from the stored body on a fast-path hit (handed to QUIC without a copy, in
/// frames of the whole body), and a range of it through the full path.
#[tokio::test]
async fn http3_sends_a_multi_mib_body_whole_on_a_miss_a_hit_and_a_range() {
    let h = TlsHarness::start().await;
    let target = "/h3-large/4m.bin";
    let expected = support::send(
        &support::client(),
        h._origin.addr(),
        http::Method::GET,
        target,
        HOST,
        &[],
    )
    .await
    .body;
    assert_eq!(expected.len(), 4 << 20);
    let connection = tls::h3::connect(&h.ca.h3_client(), h.http3(), HOST)
        .await
        .unwrap();
    let mut session = tls::h3::session(&connection).await;
    let miss = session.get(HOST, target, &[]).await;
    assert!(
        miss.header("cache-status").contains("fwd=uri-miss"),
        "{}",
        miss.header("cache-status")
    );
    assert!(
        miss.body == expected,
        "the miss's body differs from the origin's"
    );
    let hit = session.get(HOST, target, &[]).await;
    assert!(
        hit.header("cache-status").contains("hit"),
        "{}",
        hit.header("cache-status")
    );
    assert!(
        hit.body == expected,
        "the hit's body differs from the origin's"
    );
    let range = session
        .get(HOST, target, &[("range", "bytes=1000000-3999999")])
        .await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert!(range.body == expected.slice(1_000_000..4_000_000));
}

/// `edge_requests_total` says which HTTP version each request came over: a miss (the
/// full path) and then a hit (the protocol's fast path) over HTTP/1.1, HTTP/2 and
/// HTTP/3, each counted under its own `version`.
#[tokio::test]
async fn requests_are_counted_by_http_version_on_the_full_and_the_fast_path() {
    let h = TlsHarness::start().await;
    for _ in 0..2 {
        let reply = support::send(
            &support::client(),
            h.edge.public_addr(),
            http::Method::GET,
            "/by-version/h1.bin",
            HOST,
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        let conn = tls::connect(&h.ca.client(&[b"h2"]), h.https(), HOST)
            .await
            .unwrap();
        let (status, version, _, _) = tls::fetch(conn, HOST, "/by-version/h2.bin").await;
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    }
    let connection = tls::h3::connect(&h.ca.h3_client(), h.http3(), HOST)
        .await
        .unwrap();
    let mut session = tls::h3::session(&connection).await;
    for _ in 0..2 {
        let reply = session.get(HOST, "/by-version/h3.bin", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let metrics = support::admin_text(h.edge.admin_addr(), "/metrics").await;
    for version in ["1.1", "2", "3"] {
        for status in ["miss", "hit"] {
            let series = format!(
                "edge_requests_total{{cache_status=\"{status}\",version=\"{version}\"}} 1\n"
            );
            assert!(metrics.contains(&series), "no {series} in\n{metrics}");
        }
    }
}

/// A header section larger than `max_header_bytes` (32 KiB, the
/// `SETTINGS_MAX_FIELD_SECTION_SIZE` the edge advertises), from a client that does not
/// heed the setting, gets `431` and is counted as refused; the same connection, and the
/// edge, go on serving.
#[tokio::test]
async fn http3_an_oversized_header_section_gets_431_and_the_connection_keeps_serving() {
    let h = TlsHarness::start().await;
    let connection = tls::h3::connect(&h.ca.h3_client(), h.http3(), HOST)
        .await
        .unwrap();
    let mut session = tls::h3::session_ignoring_settings(&connection).await;
    let big = "x".repeat(40 * 1024);
    let reply = session
        .get(HOST, "/h3-big/1k.bin", &[("x-big", big.as_str())])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{reply:?}"
    );
    let reply = session.get(HOST, "/h3-big/1k.bin", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let other = tls::h3::connect(&h.ca.h3_client(), h.http3(), HOST)
        .await
        .unwrap();
    let reply = tls::h3::session(&other)
        .await
        .get(HOST, "/h3-big/1k.bin", &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let metrics = support::admin_text(h.edge.admin_addr(), "/metrics").await;
    let refused = "edge_requests_total{cache_status=\"refused\",version=\"3\"} 1\n";
    assert!(metrics.contains(refused), "no {refused} in\n{metrics}");
}

/// 0-RTT on the one site that opts in (`images`, `h3_early_data = true`): a client that
/// resumes its session sends a GET and a POST in its first flight, and the relay holds
/// back its handshake's completion, so the edge reads both before it: the GET is answered
/// from early data, the POST gets `425 Too Early`, and the same POST once the handshake
/// completed is forwarded. The site that did not opt in never lets the client send early
/// data at all.
#[tokio::test]
async fn http3_early_data_is_answered_only_for_a_site_that_opts_in_and_only_for_safe_methods() {
    let h = TlsHarness::start().await;
    let client = h.ca.h3_client_with_early_data();
    for host in [OTHER, HOST] {
        // A full handshake; its session tickets are kept by the client.
        let first = tls::h3::connect(&client, h.http3(), host).await.unwrap();
        let mut session = tls::h3::session(&first).await;
        let reply = session.get(host, "/h3-0rtt/1k.bin", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
        drop(session);
        first.close(0u32.into(), b"done");
    }
    // The site that did not opt in: its tickets offer no early data.
    match client.connect(h.http3(), HOST).unwrap().into_0rtt() {
        Err(connecting) => drop(connecting.await.expect("resumed without early data")),
        Ok((_, accepted)) => assert!(
            !accepted.await,
            "{HOST} accepted early data without opting in"
        ),
    }
    let relay = tls::QuicRelay::hold_handshake(h.http3()).await;
    let Ok((connection, accepted)) = client.connect(relay.addr(), OTHER).unwrap().into_0rtt()
    else {
        panic!("{OTHER} opted in, yet its ticket offers no early data");
    };
    let mut session = tls::h3::session(&connection).await;
    // Both sent before anything came back: early data.
    let get = session
        .request(
            http::Method::GET,
            OTHER,
            "/h3-0rtt/1k.bin",
            &[],
            Default::default(),
        )
        .await;
    let form = bytes::Bytes::from_static(b"a=1");
    let post = session
        .request(
            http::Method::POST,
            OTHER,
            "/h3-0rtt/form",
            &[],
            form.clone(),
        )
        .await;
    let get = get.response().await;
    assert_eq!(get.status, StatusCode::OK, "{get:?}");
    assert_eq!(get.body.len(), 1024);
    let post = post.response().await;
    assert_eq!(post.status, StatusCode::TOO_EARLY, "{post:?}");
    assert!(post.body.starts_with(b"425 "), "the answer says why");
    relay.release();
    assert!(accepted.await, "the early data was accepted");
    let post = session
        .send(http::Method::POST, OTHER, "/h3-0rtt/form", &[], form)
        .await;
    assert_ne!(post.status, StatusCode::TOO_EARLY, "{post:?}");
}

/// A flood of Initial packets (each a real client's first flight, from its own address,
/// never followed up) is answered with Retry once `h3_retry_above` (8 here) handshakes
/// are in progress: the node answers from a key, holding nothing per packet. A real
/// client meanwhile comes back with its token and is served.
#[tokio::test]
async fn a_flood_of_initials_is_answered_with_retry_and_a_real_client_is_still_served() {
    const FLOOD: usize = 40;
    let h = TlsHarness::start().await;
    // Real Initials: a QUIC client's first datagrams, caught on a socket of ours.
    let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = h.ca.h3_client();
    let mut attempts = Vec::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    for _ in 0..FLOOD {
        attempts.push(client.connect(catcher.local_addr().unwrap(), HOST).unwrap());
        let (n, _) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            catcher.recv_from(&mut buf),
        )
        .await
        .expect("the client sends its Initial")
        .unwrap();
        initials.push(buf[..n].to_vec());
    }
    // Each from its own address (port), as spoofed sources would be.
    let mut senders = Vec::new();
    for initial in &initials {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(initial, h.http3()).await.unwrap();
        senders.push(socket);
    }
    let (mut retries, mut others, mut silent) = (0, 0, 0);
    for socket in &senders {
        match tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut buf)).await {
            // Long header (0x80), type Retry (0x30) in QUIC v1.
            Ok(Ok(n)) if n > 0 && buf[0] & 0xB0 == 0xB0 => retries += 1,
            Ok(_) => others += 1,
            Err(_) => silent += 1,
        }
    }
    assert!(
        others <= 8,
        "{others} Initials got a handshake: more than h3_retry_above"
    );
    assert!(
        retries >= FLOOD - 8,
        "{retries} of {FLOOD} answered with Retry ({others} handshakes, {silent} silent)"
    );
    // A real client, while the flood's handshakes are still pending.
    let real = h.ca.h3_client();
    let connection = tls::h3::connect(&real, h.http3(), HOST).await.unwrap();
    let mut session = tls::h3::session(&connection).await;
    assert_eq!(
        session.get(HOST, "/h3-flood/1k.bin", &[]).await.status,
        StatusCode::OK
    );
    drop(attempts);
}
