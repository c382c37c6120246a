//! Shared setup for the cross-component tests: a demo origin and an edge on port 0 of
//! 127.0.0.1, an HTTP client, and a raw-socket helper for malformed input.

pub mod browser;
pub mod dns;
pub mod local_cdn;
pub mod memory;
pub mod nats;
pub mod process;
pub mod purge_log;
pub mod raw_origin;
pub mod scripted;
pub mod tls;
pub mod topology;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cdn::demo_origin::DemoOrigin;
use edge::{EdgeConfig, EdgeServer};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The host name of the test site.
pub const HOST: &str = "assets.test";
/// The edge's node name in tests.
pub const NODE: &str = "edge-test";

/// A response as a test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
            .unwrap_or("")
    }

    /// This edge's member of `Cache-Status`.
    pub fn cache_status(&self) -> &str {
        let all = self.header("cache-status");
        all.rsplit(", ").next().unwrap_or(all)
    }

    pub fn age(&self) -> u64 {
        self.header("age").parse().expect("numeric Age")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An edge config for `upstream`, listening on port 0, with `extra` TOML appended to the
/// `[cache]` table (e.g. `capacity = "1 MiB"`) and `site_extra` to the site.
pub fn config(upstream: SocketAddr, cache_extra: &str, site_extra: &str) -> EdgeConfig {
    config_with(upstream, cache_extra, site_extra, "")
}

/// As [`config`], with whole extra tables (e.g. `[upstream]`) appended before the site.
pub fn config_with(
    upstream: SocketAddr,
    cache_extra: &str,
    site_extra: &str,
    tables: &str,
) -> EdgeConfig {
    let text = format!(
        r#"
        [node]
        name = "{NODE}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"

        [cache]
        {cache_extra}

        {tables}

        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{upstream}"
        {site_extra}
        "#
    );
    EdgeConfig::from_toml(&text).expect("test config is valid")
}

/// A demo origin and an edge in front of it.
pub struct Harness {
    pub origin: DemoOrigin,
    pub edge: EdgeServer,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Harness {
    /// Starts an origin and an edge with the default test config.
    pub async fn start() -> Self {
        Self::start_with("", "").await
    }

    pub async fn start_with(cache_extra: &str, site_extra: &str) -> Self {
        Self::start_tables(cache_extra, site_extra, "").await
    }

    pub async fn start_tables(cache_extra: &str, site_extra: &str, tables: &str) -> Self {
        let origin = DemoOrigin::start(loopback()).await.expect("origin starts");
        let config = config_with(origin.addr(), cache_extra, site_extra, tables);
        let edge = EdgeServer::start(config).await.expect("edge starts");
        Self {
            origin,
            edge,
            client: client(),
        }
    }

    /// GET `target` on the test site.
    pub async fn get(&self, target: &str) -> Reply {
        self.send(Method::GET, target, HOST, &[]).await
    }

    /// Sends a request to the edge's public listener.
    pub async fn send(
        &self,
        method: Method,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        send(
            &self.client,
            self.edge.public_addr(),
            method,
            target,
            host,
            headers,
        )
        .await
    }

    /// As [`Harness::send`], but a failed exchange is an `Err`.
    pub async fn try_send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        try_send(
            &self.client,
            self.edge.public_addr(),
            method,
            target,
            HOST,
            headers,
        )
        .await
    }

    /// The origin's current bytes of `target`, fetched directly; the origin's counts are
    /// then cleared, so call it before counting.
    pub async fn origin_body(&self, target: &str) -> Bytes {
        let reply = send(
            &self.client,
            self.origin.addr(),
            Method::GET,
            target,
            HOST,
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "origin serves {target}");
        self.origin.reset();
        reply.body
    }

    /// GET a path on the admin listener.
    pub async fn admin(&self, path: &str) -> Reply {
        send(
            &self.client,
            self.edge.admin_addr(),
            Method::GET,
            path,
            "admin",
            &[],
        )
        .await
    }

    /// The value of one metric line (`name{labels}`) from `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.admin("/metrics").await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no metric {series} in\n{text}"))
            .trim()
            .parse()
            .expect("numeric metric")
    }
}

/// The text of `path` on an admin listener (`/metrics`, `/healthz`).
pub async fn admin_text(admin: SocketAddr, path: &str) -> String {
    send(&client(), admin, Method::GET, path, "admin", &[])
        .await
        .text()
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Reply {
    try_send(client, addr, method, target, host, headers)
        .await
        .unwrap_or_else(|e| panic!("{target}: {e}"))
}

/// As [`send`], but a failed exchange (refused, broken off mid-body) is an `Err`.
pub async fn try_send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"))
        .header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "no response within 30 s".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .map_err(|_| "no whole body within 30 s".to_owned())?
        .map_err(|e| format!("body broke off: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// GET `path` from `addr` with extra headers (Host `admin`).
pub async fn send_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(&client(), addr, Method::GET, path, "admin", headers).await
}

/// Writes `request` on a fresh connection and reads until the server closes or `limit`
/// bytes arrive (bounded by a timeout). Returns what was read as text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything; that is fine.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") && out.len() > 64 {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"))
}

/// Polls `check` every 10 ms until it holds, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// A JSON API call (the purge API): `body` sent as JSON when not empty, `token` as a
/// bearer token when given; bounded by a timeout.
pub async fn api_call(
    api: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    api_call_with(api, method, path, token, &[], body).await
}

/// As [`api_call`], with extra request headers (e.g. `Idempotency-Key`).
pub async fn api_call_with(
    api: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{api}{path}"))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(30), client().request(request))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A reply's body as JSON.
pub fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.text()))
}

/// What a server answered to a request whose body was streamed at it ([`upload`]).
#[derive(Debug)]
pub struct Upload {
    /// The raw answer (head and body), empty if none came.
    pub answer: String,
    /// Body bytes written before the answer came or the server stopped reading.
    pub sent: u64,
    /// Whether the whole body was written.
    pub complete: bool,
}

impl Upload {
    pub fn status(&self) -> u16 {
        raw_status(&self.answer)
    }

    /// The answer's body (after the blank line).
    pub fn body(&self) -> &str {
        self.answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
    }

    /// A header of the answer (the first with that name), or "".
    pub fn header(&self, name: &str) -> &str {
        let head = self
            .answer
            .split_once("\r\n\r\n")
            .map_or("", |(head, _)| head);
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    }
}

/// Size of each body write of [`upload`].
const UPLOAD_CHUNK: usize = 64 * 1024;

/// Sends `head` (a request head ending in the blank line), then streams up to `len` body
/// bytes in 64 KiB writes (as chunked frames when `chunked`) while reading the answer,
/// on a fresh connection. One buffer is reused: the test allocates nothing per byte.
/// Sending stops as soon as an answer arrives, the server stops taking bytes (a write
/// error), or `keep_going(sent)` says no (checked before every write); the write side is
/// then shut, so a server still waiting for the body sees its end. (With `len` 0 only the
/// head goes, and the connection stays open for the answer.) The answer is read until its
/// `Content-Length` is complete or the server closes (at most 30 s).
pub async fn upload(
    addr: SocketAddr,
    head: &str,
    len: u64,
    chunked: bool,
    mut keep_going: impl FnMut(u64) -> bool,
) -> Upload {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let (answered, mut answer_seen) = tokio::sync::watch::channel(false);
    let reading = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
                if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                    answered.send_replace(true);
                    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if length.is_some_and(|length| out.len() >= end + 4 + length) {
                        break;
                    }
                }
            }
        })
        .await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let chunk = vec![b'x'; UPLOAD_CHUNK];
    let mut sent = 0u64;
    let mut complete = false;
    let mut frame = Vec::with_capacity(UPLOAD_CHUNK + 16);
    if writer.write_all(head.as_bytes()).await.is_ok() {
        loop {
            if sent >= len {
                complete = !chunked || writer.write_all(b"0\r\n\r\n").await.is_ok();
                break;
            }
            if *answer_seen.borrow() || !keep_going(sent) {
                break;
            }
            let n = usize::try_from(len - sent).map_or(UPLOAD_CHUNK, |left| left.min(UPLOAD_CHUNK));
            let bytes: &[u8] = if chunked {
                frame.clear();
                frame.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                frame.extend_from_slice(&chunk[..n]);
                frame.extend_from_slice(b"\r\n");
                &frame
            } else {
                &chunk[..n]
            };
            let written = tokio::select! {
                written = writer.write_all(bytes) => written.is_ok(),
                _ = answer_seen.wait_for(|seen| *seen) => false,
            };
            if !written {
                break;
            }
            sent += n as u64;
        }
    }
    if !complete {
        let _ = writer.shutdown().await;
    }
    let answer = reading.await.expect("reader task");
    drop(writer);
    Upload {
        answer,
        sent,
        complete,
    }
}

/// `value` percent-encoded for the demo origin's query parameters (`h.NAME=VALUE`, `cc=`).
pub fn query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `time` in the obsolete asctime form, e.g. `Sun Nov  6 08:49:37 1994`.
pub fn asctime(time: std::time::SystemTime) -> String {
    // IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT` rearranged.
    let imf = httpdate::fmt_http_date(time);
    let parts: Vec<&str> = imf.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let day: u32 = parts[1].parse().unwrap();
    format!(
        "{} {} {day:>2} {} {}",
        parts[0], parts[2], parts[4], parts[3]
    )
}

/// `time` in the obsolete RFC 850 form, e.g. `Sunday, 06-Nov-94 08:49:37 GMT`.
pub fn rfc850(time: std::time::SystemTime) -> String {
    let imf = httpdate::fmt_http_date(time);
    let parts: Vec<&str> = imf.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let long = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    .into_iter()
    .find(|d| d.starts_with(parts[0]))
    .unwrap();
    format!(
        "{long}, {}-{}-{} {} GMT",
        parts[1],
        parts[2],
        &parts[3][2..],
        parts[4]
    )
}
