//! A demo origin: serves generated assets of chosen sizes with chosen cache headers, and
//! counts the requests it receives per target, so `cdn up` has something to cache and
//! tests can see exactly what reached the origin.
//!
//! Requests choose the response with query parameters (the whole target, parameters
//! included, is what is counted):
//! - size: the last path segment's `<N>[k|m].bin` (`/obj/16k.bin` is 16 KiB), or `size=N[k|m]`;
//!   default 1 KiB, at most 64 MiB.
//! - `cc=VALUE`: the `Cache-Control` sent (default `public, max-age=3600`; `cc=none` omits it).
//! - `status=N`: the status code (default 200).
//! - `delay_ms=N`: wait before answering (at most 30 s).
//! - `etag=0`: send no `ETag`/`Last-Modified` (validators are on by default, and a matching
//!   `If-None-Match` gets `304`).
//! - A single `Range: bytes=a-b` (or `a-`) gets `206` with that slice (unless an `If-Range`
//!   names another version); `200`s say `Accept-Ranges: bytes`. `ranges=0` ignores `Range`
//!   and says nothing about ranges.
//! - `h.NAME=VALUE`: add any response header, e.g. `h.x-test=1`.
//! - `vary=NAME`: a response that really varies: `Vary: NAME`, and the body starts with
//!   `NAME=<the value received>\n`, so each variant has its own bytes and validator.
//!
//! - A request body is read whole (and dropped) before the answer, as an application reads
//!   a form or an upload; one that breaks off gets `400`.
//!
//! `GET /__stats` returns the counts as JSON; `POST /__reset` clears them.
//! `POST /__fail?status=503` makes every asset request fail with that status (an outage
//! to rehearse stale serving and failover); `POST /__recover` ends it. `POST /__bump`
//! publishes a new version of every asset (new bytes, new `ETag`). None is counted.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

const MAX_SIZE: usize = 64 << 20;
const MAX_DELAY: Duration = Duration::from_secs(30);
const DEFAULT_CACHE_CONTROL: &str = "public, max-age=3600";
/// Last-Modified of every generated asset: a fixed date, so validators are stable.
const LAST_MODIFIED: &str = "Mon, 02 Nov 2026 10:00:00 GMT";

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    by_target: BTreeMap<String, u64>,
    /// Asset requests that carried `Range`.
    ranged: u64,
    /// While set, every asset request is answered with this status.
    failing: Option<StatusCode>,
    /// Version of every asset's content, raised by `/__bump`.
    version: u64,
    /// Added to every asset request's own delay: a slow origin server.
    delay: Duration,
}

/// A running demo origin.
#[derive(Debug)]
pub struct DemoOrigin {
    addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DemoOrigin {
    /// Binds `addr` (port 0 for any) and starts serving.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let (shutdown, mut stop) = watch::channel(false);
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            // Open connections, closed on shutdown.
            let mut connections = JoinSet::new();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                    _ = stop.changed() => break,
                };
                let _ = stream.set_nodelay(true);
                let counts = shared.clone();
                let service = service_fn(move |req| {
                    let counts = counts.clone();
                    async move { Ok::<_, Infallible>(serve(req, &counts).await) }
                });
                connections.spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            drop(listener);
            connections.shutdown().await;
        });
        Ok(Self {
            addr,
            counts,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received for one exact target (`/path?query`).
    pub fn hits(&self, target: &str) -> u64 {
        self.lock().by_target.get(target).copied().unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_hits(&self) -> u64 {
        self.lock().total
    }

    /// Makes every asset request wait `delay` more (a slow server), until set back to zero.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay.min(MAX_DELAY);
    }

    /// Asset requests that carried `Range`.
    pub fn ranged_hits(&self) -> u64 {
        self.lock().ranged
    }

    /// Publishes a new version of every asset, as `POST /__bump` does.
    pub fn bump(&self) {
        self.lock().version += 1;
    }

    /// Clears the counts (an outage in progress continues).
    pub fn reset(&self) {
        let mut counts = self.lock();
        *counts = Counts {
            failing: counts.failing,
            version: counts.version,
            delay: counts.delay,
            ..Counts::default()
        };
    }

    /// Answers every asset request with `status` until [`DemoOrigin::recover`].
    pub fn fail_with(&self, status: StatusCode) {
        self.lock().failing = Some(status);
    }

    pub fn recover(&self) {
        self.lock().failing = None;
    }

    /// Stops as a killed process would: the port refuses connections and the open ones
    /// (idle keep-alive ones included) are closed, all before this returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn serve(req: Request<Incoming>, counts: &Mutex<Counts>) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    match req.uri().path() {
        "/__stats" => {
            let counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            let body = serde_json::json!({
                "total": counts.total,
                "ranged": counts.ranged,
                "version": counts.version,
                "targets": counts.by_target,
            });
            return json(StatusCode::OK, body.to_string());
        }
        "/__reset" => {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            counts.total = 0;
            counts.ranged = 0;
            counts.by_target.clear();
            return json(StatusCode::OK, "{}".to_owned());
        }
        "/__fail" => {
            let status = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("status="))
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failing = Some(status);
            return json(
                StatusCode::OK,
                format!("{{\"failing\":{}}}", status.as_u16()),
            );
        }
        "/__bump" => {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            counts.version += 1;
            return json(
                StatusCode::OK,
                format!("{{\"version\":{}}}", counts.version),
            );
        }
        "/__recover" => {
            counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failing = None;
            return json(StatusCode::OK, "{\"failing\":null}".to_owned());
        }
        _ => {}
    }
    let (failing, version, delay) = {
        let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total += 1;
        counts.ranged += u64::from(req.headers().contains_key(header::RANGE));
        *counts.by_target.entry(target.clone()).or_default() += 1;
        (counts.failing, counts.version, counts.delay)
    };
    if let Some(status) = failing {
        return text(status, format!("demo origin outage: answering {status}"));
    }
    let (parts, body) = req.into_parts();
    if let Err(error) = http_body_util::Limited::new(body, MAX_SIZE).collect().await {
        return text(
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {error}"),
        );
    }
    let req = Request::from_parts(parts, ());
    match Asset::from_request(&req) {
        Ok(mut asset) => {
            asset.seed ^= version.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            asset.delay = (asset.delay + delay).min(MAX_DELAY);
            asset.respond(&req).await
        }
        Err(message) => text(StatusCode::BAD_REQUEST, message),
    }
}

/// What one request asked the origin to send.
struct Asset {
    size: usize,
    cache_control: Option<String>,
    status: StatusCode,
    delay: Duration,
    validators: bool,
    ranges: bool,
    extra: Vec<(HeaderName, HeaderValue)>,
    seed: u64,
    /// The request field the response varies on, with the value received.
    vary: Option<(HeaderName, String)>,
}

impl Asset {
    fn from_request<B>(req: &Request<B>) -> Result<Self, String> {
        let path = req.uri().path();
        let mut asset = Asset {
            size: path
                .rsplit('/')
                .next()
                .and_then(|name| name.strip_suffix(".bin"))
                .and_then(parse_size)
                .unwrap_or(1024),
            cache_control: Some(DEFAULT_CACHE_CONTROL.to_owned()),
            status: StatusCode::OK,
            delay: Duration::ZERO,
            validators: true,
            ranges: true,
            extra: Vec::new(),
            seed: fnv1a(path.as_bytes()),
            vary: None,
        };
        for pair in req.uri().query().unwrap_or("").split('&') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = decode(value);
            match name {
                "size" => {
                    asset.size = parse_size(&value).ok_or(format!("bad size {value:?}"))?;
                }
                "cc" if value == "none" => asset.cache_control = None,
                "cc" => asset.cache_control = Some(value),
                "status" => {
                    asset.status = value
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or(format!("bad status {value:?}"))?;
                }
                "delay_ms" => {
                    let ms: u64 = value
                        .parse()
                        .map_err(|_| format!("bad delay_ms {value:?}"))?;
                    asset.delay = Duration::from_millis(ms).min(MAX_DELAY);
                }
                "etag" => asset.validators = value != "0",
                "ranges" => asset.ranges = value != "0",
                "vary" => {
                    let name = HeaderName::from_bytes(value.as_bytes())
                        .map_err(|_| format!("bad vary header name {value:?}"))?;
                    let received = req
                        .headers()
                        .get_all(&name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ");
                    let received = if received.is_empty() {
                        "-".to_owned()
                    } else {
                        received
                    };
                    asset.seed ^= fnv1a(received.as_bytes());
                    asset.vary = Some((name, received));
                }
                _ => {
                    if let Some(header) = name.strip_prefix("h.") {
                        let name = HeaderName::from_bytes(header.as_bytes())
                            .map_err(|_| format!("bad header name {header:?}"))?;
                        let value = HeaderValue::from_str(&value)
                            .map_err(|_| format!("bad header value {value:?}"))?;
                        asset.extra.push((name, value));
                    }
                }
            }
        }
        if asset.size > MAX_SIZE {
            return Err(format!(
                "size {} is over the demo origin's 64 MiB",
                asset.size
            ));
        }
        Ok(asset)
    }

    async fn respond<B>(self, req: &Request<B>) -> Response<Full<Bytes>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let etag = format!("\"{:x}-{}\"", self.seed, self.size);
        let not_modified = self.validators
            && req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let body = if not_modified || req.method() == http::Method::HEAD {
            Bytes::new()
        } else if let Some((name, received)) = &self.vary {
            // The prefix, then filler up to the asked size (longer if the prefix is).
            let mut body = format!("{name}={received}\n").into_bytes();
            let prefix = body.len();
            body.extend_from_slice(&generate(self.seed, self.size));
            body.truncate(self.size.max(prefix));
            Bytes::from(body)
        } else {
            generate(self.seed, self.size)
        };
        let total = body.len();
        // `If-Range` naming another version means "send it all" (RFC 9110 13.1.5).
        let if_range_holds = req.headers().get(header::IF_RANGE).is_none_or(|v| {
            self.validators && (v.as_bytes() == etag.as_bytes() || v == LAST_MODIFIED)
        });
        let range =
            (self.ranges && self.status == StatusCode::OK && !not_modified && if_range_holds)
                .then(|| single_range(req.headers().get(header::RANGE)?.to_str().ok()?, total))
                .flatten();
        let body = match range {
            Some((start, end)) => body.slice(start..=end),
            None => body,
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            self.status
        };
        let headers = response.headers_mut();
        if let Some((start, end)) = range
            && let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}"))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if self.ranges && self.status == StatusCode::OK {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if req.method() == http::Method::HEAD {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.size));
        }
        if let Some(cc) = self
            .cache_control
            .and_then(|cc| HeaderValue::from_str(&cc).ok())
        {
            headers.insert(header::CACHE_CONTROL, cc);
        }
        if self.validators {
            if let Ok(etag) = HeaderValue::from_str(&etag) {
                headers.insert(header::ETAG, etag);
            }
            headers.insert(
                header::LAST_MODIFIED,
                HeaderValue::from_static(LAST_MODIFIED),
            );
        }
        if let Some((name, _)) = &self.vary
            && let Ok(value) = HeaderValue::from_str(name.as_str())
        {
            headers.append(header::VARY, value);
        }
        for (name, value) in self.extra {
            headers.append(name, value);
        }
        response
    }
}

/// `bytes=a-b` or `bytes=a-` within `len`, as an inclusive range.
fn single_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = first.parse().ok()?;
    let end = if last.is_empty() {
        len.checked_sub(1)?
    } else {
        last.parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

/// `1024`, `16k`, `4m` (binary multiples).
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Deterministic content for a seed: the same path always has the same bytes.
fn generate(seed: u64, size: usize) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = (size - out.len()).min(8);
        out.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    Bytes::from(out)
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("4m"), Some(4 << 20));
        assert_eq!(parse_size("300"), Some(300));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn content_is_deterministic_per_path() {
        assert_eq!(generate(1, 100), generate(1, 100));
        assert_ne!(generate(1, 100), generate(2, 100));
        assert_eq!(generate(9, 13).len(), 13);
    }

    #[test]
    fn requests_choose_their_response() {
        let req = Request::get("/obj/16k.bin?cc=no-store&status=404&h.x-a=b&etag=0")
            .body(())
            .unwrap();
        let asset = Asset::from_request(&req).unwrap();
        assert_eq!(asset.size, 16384);
        assert_eq!(asset.cache_control.as_deref(), Some("no-store"));
        assert_eq!(asset.status, StatusCode::NOT_FOUND);
        assert!(!asset.validators);
        assert_eq!(asset.extra.len(), 1);
        let too_big = Request::get("/a?size=65m").body(()).unwrap();
        assert!(Asset::from_request(&too_big).is_err());
    }
}
