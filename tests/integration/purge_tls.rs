//! The purge API over HTTPS: publishers purge over TLS with the certificate from `[tls]`,
//! re-read when it changes; the plain listener stays for the nodes.

use crate::support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use purge_api::{PurgeApiConfig, PurgeApiServer};
use support::tls::{self, TestCa};
use support::{HOST, client, send};

const NODE_TOKEN: &str = "node-secret-0123456789";
const TOKEN: &str = "publisher-token-0123456789";
const API_HOST: &str = "purge.test";

fn purge(token: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"site":"assets","urls":["https://{HOST}/app.js"]}}"#);
    Request::builder()
        .method(Method::POST)
        .uri("/v1/purge")
        .header("host", API_HOST)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn publishers_purge_over_https_and_a_renewed_certificate_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(&[API_HOST]);
    let (cert, key) = leaf.write(dir.path(), "api");
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        https_listen = "127.0.0.1:0"
        node_token = "{NODE_TOKEN}"
        tls = {{ cert = {cert:?}, key = {key:?} }}
        [log]
        path = {log:?}
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        [[publisher]]
        name = "acme"
        token = "{TOKEN}"
        sites = ["assets"]
        "#,
        log = dir.path().join("purges.redb"),
    );
    let config = PurgeApiConfig::from_toml(&text).expect("valid config");
    let api = PurgeApiServer::start(config).await.expect("API starts");
    let https = api.https_addr().expect("HTTPS listener");
    let connector = ca.client(&[b"http/1.1"]);

    let conn = tls::connect(&connector, https, API_HOST).await.unwrap();
    assert!(tls::presented(&conn) == leaf.der);
    let (status, body) = tls::send_h1(conn, purge(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    // Authorization is the same as over HTTP: a wrong token gets nothing.
    let conn = tls::connect(&connector, https, API_HOST).await.unwrap();
    let (status, _) = tls::send_h1(conn, purge("wrong-token-0123456789")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The plain listener still answers (the nodes read the log there).
    let health = send(&client(), api.addr(), Method::GET, "/healthz", "api", &[]).await;
    assert_eq!(health.status, StatusCode::OK);

    // A renewed certificate is served to new connections, without a restart (the API
    // checks its files every second; bounded wait).
    let renewed = ca.issue(&[API_HOST]);
    renewed.write(dir.path(), "api");
    let mut served = false;
    for _ in 0..50 {
        let conn = tls::connect(&connector, https, API_HOST).await.unwrap();
        if tls::presented(&conn) == renewed.der {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served, "the renewed certificate was not served within 5 s");
    api.shutdown().await;
}
