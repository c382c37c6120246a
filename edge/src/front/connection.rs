//! A client connection: the HTTP/1.1 hot path written for the cache, with hyper behind it.
//!
//! Measurement showed that building an `http::Response` per hit (a header map clone, two
//! inserts, hyper's encoder) cost several times the cache lookup itself. So this loop
//! parses request heads with `httparse` (the parser hyper uses), and for the requests a
//! cache answers (GET and HEAD without a body) it writes the response itself: a fresh hit
//! is the stored, pre-serialized head, `Age` and `Cache-Status`, and the shared body, in
//! one `writev`. Other GET/HEAD requests go through [`Handler::handle`] like everything else
//! and their response is written by [`write_response`].
//!
//! Bad input is answered here, with a body that says what was wrong, and the connection is
//! closed: a malformed head `400`, an oversized one or too many fields `431`, and a request
//! with both `Content-Length` and `Transfer-Encoding` (or two different lengths) `400`,
//! since no node may frame it differently from another. Everything else this loop does not
//! handle itself is handed, with the bytes already read, to hyper for the rest of the
//! connection's life: requests with bodies, HTTP/1.0, upgrades and `Expect`.
//!
//! Interim responses (RFC 9110 15.2): a request on the full path carries an
//! [`Interim`](crate::upstream::interim::Interim) in its extensions, and while the handler
//! works, every 1xx head its upstream exchange forwards (`103 Early Hints`,
//! `102 Processing`; never `100` or `101`, see [`crate::upstream::interim`]) is written
//! and flushed at once, in order, before the final head. A fresh hit writes none. Once a
//! connection is handed to hyper, its requests get no 1xx: hyper's HTTP/1 server has no
//! way to send one. That is right for HTTP/1.0 clients (which must not get them) and
//! loses the hints for HTTP/1.1 requests with a body, `Expect`, an upgrade or an
//! absolute-form target, and for every later request on such a connection: the final
//! response is unchanged, only the hints are missing.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::cache::status::{CacheStatus, Outcome};
use crate::cache::store::StoredResponse;
use crate::front::body::EdgeBody;
use crate::front::send_file::{SendFile, send_file_all};
use crate::front::{DoorRefusal, Handler, ServedHit, TlsName};
use crate::upstream::interim::{self, InterimHead, InterimReceiver};

/// Header slots parsed by the fast path; a request with more goes to hyper.
const MAX_HEADERS: usize = 128;

/// Answers bad input with its status and a one-line reason, then closes the connection:
/// after a head this loop could not read, nothing later on the connection can be trusted.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin, H: Handler>(
    stream: &mut S,
    (handler, client, tls): (&H, SocketAddr, Option<&TlsName>),
    (status, why): (StatusCode, std::borrow::Cow<'static, str>),
) -> Ending<S> {
    handler.count(Outcome::Refused, http::Version::HTTP_11);
    let body = format!(
        "{} {}: {why}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let written = stream.write_all(response.as_bytes()).await;
    if handler.logs_access() {
        handler.refused_at_door(&DoorRefusal {
            client,
            status,
            bytes: if written.is_ok() {
                response.len() as u64
            } else {
                0
            },
            tls,
            https: tls.is_some(),
        });
    }
    let _ = stream.shutdown().await;
    Ending::Closed
}

/// How long an idle keep-alive connection may still send a request once the node stops
/// (a shutdown or an upgrade's drain): a busy client's next request is already on its way.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Settings of the connection loop, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest request head accepted here; larger heads go to hyper, which answers `431`.
    pub max_head: usize,
    /// Most header fields; more go to hyper, which answers `431`.
    pub max_headers: usize,
    /// Time a client has to send a complete request head, counted from the end of the
    /// previous response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Longest request target; longer gets `414`.
    pub max_uri: usize,
    /// Largest declared request body; larger gets `413`.
    pub max_body: u64,
}

impl ConnLimits {
    fn head_too_large(&self) -> (StatusCode, std::borrow::Cow<'static, str>) {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request line and headers exceed this node's limit of {} bytes",
                self.max_head
            )
            .into(),
        )
    }
}

/// What the loop ended with.
pub enum Ending<S = TcpStream> {
    /// The connection is finished (closed by either side, timed out, or shut down).
    Closed,
    /// hyper takes the connection from here, starting with these unparsed bytes.
    Handoff(Rewind<S>),
}

impl<S> std::fmt::Debug for Ending<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ending::Closed => "Closed",
            Ending::Handoff(_) => "Handoff",
        })
    }
}

/// What the fast path learned from a request head.
struct Head {
    get: bool,
    head: bool,
    /// The head can be answered here (see [`parse`]).
    eligible: bool,
    close: bool,
    /// A field the full path must see before any cache answer: `Via` (loop check),
    /// `Authorization` (not served from the shared cache), request `Cache-Control`,
    /// conditionals and ranges.
    full_path: bool,
    len: usize,
    host_range: Option<(usize, usize)>,
    path_range: (usize, usize),
    /// `User-Agent` and `Referer`, for the access log.
    user_agent: Option<(usize, usize)>,
    referer: Option<(usize, usize)>,
}

enum Parsed {
    Complete(Head),
    Partial,
    /// Bad input, answered here with this status and reason; the connection then closes.
    Refused(StatusCode, &'static str),
    /// Well-formed but hyper's business (HTTP/1.0).
    Other,
}

/// Serves one client connection until it ends or must be handed to hyper.
///
/// Generic over the stream so that plain TCP and TLS share this loop; each is compiled
/// for its own type, so the plain path pays nothing for TLS.
///
/// `tls` is the server name a TLS connection was set up for; every request is checked
/// against it by the handler.
pub async fn serve<S: AsyncRead + AsyncWrite + SendFile + Unpin, H: Handler>(
    mut stream: S,
    peer: SocketAddr,
    handler: &Arc<H>,
    limits: ConnLimits,
    tls: Option<&TlsName>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ending<S> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    // One timer per connection, re-armed only when it fires early: a request does not pay
    // for a timer registration.
    let mut waiting_since = Instant::now();
    let timer = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(timer);
    // One wait for the node to stop, for the connection's life: a `changed()` made per
    // read registered with and left the channel's waiter list on every request.
    let mut watching = shutdown.clone();
    let stopping = async move { watching.changed().await.is_ok() };
    tokio::pin!(stopping);
    let mut stop_seen = false;

    loop {
        // Read until a complete head is buffered.
        let head = loop {
            if !buf.is_empty() {
                match parse(&buf, &limits) {
                    Parsed::Complete(head) => break head,
                    Parsed::Partial if buf.len() < limits.max_head => {}
                    Parsed::Partial => {
                        return refuse(
                            &mut stream,
                            (handler.as_ref(), peer, tls),
                            limits.head_too_large(),
                        )
                        .await;
                    }
                    Parsed::Refused(status, why) => {
                        return refuse(
                            &mut stream,
                            (handler.as_ref(), peer, tls),
                            (status, why.into()),
                        )
                        .await;
                    }
                    Parsed::Other => return Ending::Handoff(Rewind::new(buf.freeze(), stream)),
                }
            }
            if *shutdown.borrow() && buf.is_empty() {
                // A client may have sent its next request as the node began to stop: it
                // is answered (with `Connection: close`) rather than lost with the
                // connection, which a client sees as an error. One that sends nothing
                // within the grace is closed.
                match tokio::time::timeout(CLOSE_GRACE, stream.read_buf(&mut buf)).await {
                    Ok(Ok(read)) if read > 0 => continue,
                    _ => return Ending::Closed,
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Ending::Closed,
                    Ok(_) => {}
                },
                () = &mut timer => {
                    let deadline = waiting_since + limits.header_timeout;
                    if Instant::now() >= deadline {
                        if !buf.is_empty() {
                            let _ = stream.write_all(TIMEOUT_RESPONSE).await;
                        }
                        return Ending::Closed;
                    }
                    timer.as_mut().reset(deadline.into());
                },
                changed = &mut stopping, if buf.is_empty() && !stop_seen => {
                    if !changed {
                        return Ending::Closed;
                    }
                    stop_seen = true;
                },
            }
        };
        // A head over the limit can arrive complete in one read.
        if head.len > limits.max_head {
            return refuse(
                &mut stream,
                (handler.as_ref(), peer, tls),
                limits.head_too_large(),
            )
            .await;
        }
        if !head.eligible {
            return Ending::Handoff(Rewind::new(buf.freeze(), stream));
        }

        let close = head.close || *shutdown.borrow();
        let started = handler.logs_access().then(Instant::now);
        let written = match fresh_hit(handler.as_ref(), &buf, &head, tls) {
            Some((entry, now)) => {
                handler.count(Outcome::Hit, http::Version::HTTP_11);
                out.clear();
                let status = CacheStatus::hit(entry.freshness.ttl(now));
                out.extend_from_slice(b"age: ");
                out.extend_from_slice(
                    itoa::Buffer::new()
                        .format(entry.freshness.age(now))
                        .as_bytes(),
                );
                out.extend_from_slice(b"\r\ncache-status: ");
                let status_at = out.len();
                status.write_to(&mut out, handler.name(), entry.upstream_cache_status());
                let status_end = out.len();
                if let (Some(_), Some(alt_svc)) = (tls, handler.alt_svc()) {
                    out.extend_from_slice(b"\r\nalt-svc: ");
                    out.extend_from_slice(alt_svc.as_bytes());
                }
                out.extend_from_slice(if close {
                    b"\r\nconnection: close\r\n\r\n"
                } else {
                    b"\r\n\r\n"
                });
                // A body kept in a memory file goes out with `sendfile` where the stream
                // can take it; the head is written first.
                let sealed = entry
                    .sealed_body()
                    .filter(|_| !head.head && stream.sends_files());
                let body: &[u8] = if head.head || sealed.is_some() {
                    &[]
                } else {
                    entry.body()
                };
                let mut written =
                    write_all_vectored(&mut stream, &[entry.head(), &out, body]).await;
                if let (Ok(()), Some(sealed)) = (&written, sealed) {
                    let end = sealed.len() as u64;
                    written = send_file_all(&mut stream, sealed.file(), 0, end, WRITE_SLICE).await;
                }
                let body_len = if head.head { 0 } else { entry.body().len() };
                if let Some(started) = started {
                    let range = |r: Option<(usize, usize)>| r.map(|(a, b)| &buf[a..b]);
                    handler.served_hit(&ServedHit {
                        client: peer,
                        host: range(head.host_range).unwrap_or_default(),
                        target: &buf[head.path_range.0..head.path_range.1],
                        head: head.head,
                        status: entry.status,
                        bytes: (entry.head().len() + out.len() + body_len) as u64,
                        body_bytes: body_len as u64,
                        started,
                        cache_status: &out[status_at..status_end],
                        tls,
                        user_agent: range(head.user_agent),
                        referer: range(head.referer),
                        complete: written.is_ok(),
                        version: http::Version::HTTP_11,
                    });
                }
                written
            }
            None => {
                let Some(mut request) = build_request(&buf, &head) else {
                    return Ending::Handoff(Rewind::new(buf.freeze(), stream));
                };
                if let Some(tls) = tls {
                    request.extensions_mut().insert(tls.clone());
                }
                let (interim, mut interims) = interim::channel(limits.max_head);
                request.extensions_mut().insert(interim);
                let response = handler.handle(request, peer);
                match interims_then(
                    &mut stream,
                    &mut out,
                    handler.as_ref(),
                    &mut interims,
                    response,
                )
                .await
                {
                    Ok(mut response) => {
                        if let (Some(_), Some(alt_svc)) = (tls, handler.alt_svc()) {
                            response
                                .headers_mut()
                                .insert(http::header::ALT_SVC, alt_svc.clone());
                        }
                        write_response(&mut stream, &mut out, response, head.head, close).await
                    }
                    Err(error) => Err(error),
                }
            }
        };
        // TLS buffers what it could not send yet; plain TCP flushes as a no-op.
        let written = match written {
            Ok(()) => stream.flush().await,
            error => error,
        };
        buf.advance(head.len);
        if written.is_err() || close {
            let _ = stream.shutdown().await;
            return Ending::Closed;
        }
        waiting_since = Instant::now();
    }
}

/// Waits for the final response, writing each 1xx head the handler's upstream exchange
/// forwards meanwhile, flushed at once: the client sees it before the final response
/// exists. Heads queued when the response is ready are written first, so the order is
/// the upstream's. An error is the client's socket failing.
async fn interims_then<S: AsyncWrite + Unpin, H: Handler>(
    stream: &mut S,
    out: &mut Vec<u8>,
    handler: &H,
    interims: &mut InterimReceiver,
    response: impl Future<Output = Response<EdgeBody>>,
) -> io::Result<Response<EdgeBody>> {
    tokio::pin!(response);
    // Bounded: at most `interim::MAX_INTERIM` heads arrive.
    loop {
        tokio::select! {
            biased;
            response = &mut response => {
                while let Some(head) = interims.try_recv() {
                    write_interim(stream, out, handler, head).await?;
                }
                return Ok(response);
            }
            head = interims.recv() => write_interim(stream, out, handler, head).await?,
        }
    }
}

/// Writes one 1xx head (after the node's rewrite) and flushes it.
async fn write_interim<S: AsyncWrite + Unpin, H: Handler>(
    stream: &mut S,
    out: &mut Vec<u8>,
    handler: &H,
    mut head: InterimHead,
) -> io::Result<()> {
    handler.interim(&mut head);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    stream.write_all(out).await?;
    stream.flush().await
}

fn fresh_hit<H: Handler>(
    handler: &H,
    buf: &[u8],
    head: &Head,
    tls: Option<&TlsName>,
) -> Option<(Arc<StoredResponse>, Instant)> {
    if head.full_path {
        return None;
    }
    let (start, end) = head.host_range?;
    let host = std::str::from_utf8(&buf[start..end]).ok()?;
    let path = std::str::from_utf8(&buf[head.path_range.0..head.path_range.1]).ok()?;
    handler.fresh_hit(host, path, tls)
}

/// Request fields that send a GET or HEAD to the full path however fresh the entry:
/// they select a variant, a part, a conditional answer or a node-to-node exchange, or
/// change what may be served (`Authorization`, request `Cache-Control`). Internal
/// `cdn-*` fields are the other kind ([`node_api::headers::is_reserved`]). Lower case,
/// as HTTP/2 sends names.
pub(crate) const FULL_PATH_FIELDS: [&str; 7] = [
    "via",
    "authorization",
    "cache-control",
    "if-none-match",
    "if-modified-since",
    "range",
    "if-range",
];

/// Parses a request head and decides whether this loop can answer it.
fn parse(buf: &[u8], limits: &ConnLimits) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(error) => return malformed(error),
    };
    if req.headers.len() > limits.max_headers {
        return Parsed::Refused(TOO_MANY_HEADERS.0, TOO_MANY_HEADERS.1);
    }
    if req.path.is_some_and(|path| path.len() > limits.max_uri) {
        return Parsed::Refused(
            StatusCode::URI_TOO_LONG,
            "the request target is longer than this node accepts",
        );
    }
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let get = method == "GET";
    let head = method == "HEAD";
    let offset = |s: &[u8]| s.as_ptr() as usize - buf.as_ptr() as usize;
    let mut parsed = Head {
        get,
        head,
        eligible: (get || head) && path.starts_with('/'),
        close: false,
        full_path: false,
        len,
        host_range: None,
        path_range: (
            offset(path.as_bytes()),
            offset(path.as_bytes()) + path.len(),
        ),
        user_agent: None,
        referer: None,
    };
    let mut hosts = 0;
    let mut content_length: Option<&[u8]> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            let start = offset(h.value);
            parsed.host_range = Some((start, start + h.value.len()));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    parsed.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    parsed.eligible = false; // upgrade or hop-by-hop names: hyper's business
                }
            }
        } else if FULL_PATH_FIELDS
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        {
            parsed.full_path = true;
        } else if node_api::headers::is_reserved(name) {
            // Internal headers are removed, or believed with a node's proof, by the full
            // path alone: one place decides what they may change.
            parsed.full_path = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let value = h.value.trim_ascii();
            if content_length.is_some_and(|first| first != value) {
                return Parsed::Refused(
                    StatusCode::BAD_REQUEST,
                    "Content-Length is given twice with different values",
                );
            }
            content_length = Some(value);
            parsed.eligible &= value == b"0";
            // Digits only (no sign, no list): anything else is a framing another node
            // could read differently.
            let Some(length) = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                return Parsed::Refused(
                    StatusCode::BAD_REQUEST,
                    "Content-Length is not a single decimal number",
                );
            };
            if length > limits.max_body {
                return Parsed::Refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than this node accepts",
                );
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only a lone `chunked` is a framing every HTTP/1.1 node reads alike;
            // `gzip, chunked`, `chunked, chunked`, `xchunked` and friends are how requests
            // get smuggled past a front end that reads them differently than the origin.
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Parsed::Refused(
                    StatusCode::BAD_REQUEST,
                    "Transfer-Encoding must be exactly \"chunked\" and given once",
                );
            }
            chunked = true;
            parsed.eligible = false;
        } else if name.eq_ignore_ascii_case(b"expect") || name.eq_ignore_ascii_case(b"upgrade") {
            parsed.eligible = false;
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            let start = offset(h.value);
            parsed.user_agent = Some((start, start + h.value.len()));
        } else if name.eq_ignore_ascii_case(b"referer") {
            let start = offset(h.value);
            parsed.referer = Some((start, start + h.value.len()));
        }
    }
    if content_length.is_some() && chunked {
        // RFC 9112 6.3 lets a server read this as chunked; refusing it leaves no way for
        // this node and an upstream to frame the request differently (smuggling).
        return Parsed::Refused(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding: the request's framing is ambiguous",
        );
    }
    if hosts != 1 {
        parsed.eligible = false;
    }
    Parsed::Complete(parsed)
}

const TOO_MANY_HEADERS: (StatusCode, &str) = (
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "the request has more header fields than this node accepts",
);

/// The answer to a head `httparse` could not read, naming what was wrong.
fn malformed(error: httparse::Error) -> Parsed {
    use httparse::Error;
    let why = match error {
        Error::TooManyHeaders => return Parsed::Refused(TOO_MANY_HEADERS.0, TOO_MANY_HEADERS.1),
        Error::Token => "the request line is malformed (method or target)",
        Error::Version => "the HTTP version is malformed or not HTTP/1.x",
        Error::HeaderName => {
            "a header field name is malformed (missing colon or invalid characters)"
        }
        Error::HeaderValue => "a header field value contains characters that are not allowed",
        Error::NewLine => "a line of the request head does not end in CRLF",
        _ => "the request head is malformed",
    };
    Parsed::Refused(StatusCode::BAD_REQUEST, why)
}

/// The head as an `http::Request` for [`Handler::handle`]; `None` if a header is invalid
/// for `http` (hyper then answers it).
fn build_request(buf: &[u8], head: &Head) -> Option<Request<Empty<Bytes>>> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    req.parse_with_uninit_headers(&buf[..head.len], &mut slots)
        .ok()?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = if head.get { Method::GET } else { Method::HEAD };
    *request.uri_mut() = req.path?.parse().ok()?;
    *request.headers_mut() = headers;
    Some(request)
}

/// Writes an arbitrary response in HTTP/1.1 framing: `Content-Length` when the body's
/// size is known, chunked otherwise, no body for HEAD, 1xx, 204 and 304.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    response: Response<EdgeBody>,
    head_request: bool,
    close: bool,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(
            *name,
            header::CONNECTION | header::TRANSFER_ENCODING | header::CONTENT_LENGTH
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = !bodiless && exact.is_none();
    if bodiless {
        // A HEAD answer says how long the body would be; 204/304 carry what they carried.
        if let Some(length) = parts.headers.get(header::CONTENT_LENGTH)
            && status != StatusCode::NO_CONTENT
        {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(length.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    } else if let Some(length) = exact {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        return stream.write_all(out).await;
    }
    // The first frame goes out with the head in one write.
    let mut first = true;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io::Error::other(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        let head: &[u8] = if first { out } else { &[] };
        first = false;
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            write_all_vectored(stream, &[head, size.as_bytes(), &data, b"\r\n"]).await?;
        } else {
            write_all_vectored(stream, &[head, &data]).await?;
        }
    }
    let tail: &[u8] = if chunked { b"0\r\n\r\n" } else { &[] };
    let head: &[u8] = if first { out } else { &[] };
    write_all_vectored(stream, &[head, tail]).await
}

/// Most bytes handed to one `writev` before other connections get a turn.
///
/// Without a cap, a connection whose socket keeps draining writes a whole multi-megabyte
/// body while the others wait: measured at 4 MiB hits, 64 connections, against ATS in the
/// same run, uncapped gave 516-526 req/s (p99 0.34-0.39 s), 128 KiB 561-619 (p99 0.9-1.2 s),
/// 256 KiB 688-739, 512 KiB 737-767 (p99 128-136 ms), 1 MiB 670-717; ATS 676-684
/// (p99 145-172 ms). Responses up to this size still go out in a single call.
const WRITE_SLICE: usize = 512 * 1024;

/// Writes every part (at most four) with as few `writev` calls as the socket and
/// [`WRITE_SLICE`] allow, yielding to other connections between slices.
async fn write_all_vectored<S: AsyncWrite + Unpin>(
    stream: &mut S,
    parts: &[&[u8]],
) -> io::Result<()> {
    let mut storage = [IoSlice::new(&[]); 4];
    let mut count = 0;
    for part in parts.iter().filter(|p| !p.is_empty()) {
        storage[count] = IoSlice::new(part);
        count += 1;
    }
    let mut slices = &mut storage[..count];
    while !slices.is_empty() {
        let mut slice = [IoSlice::new(&[]); 4];
        let mut len = 0;
        let mut used = 0;
        for part in slices.iter() {
            if len == WRITE_SLICE {
                break;
            }
            let take = (WRITE_SLICE - len).min(part.len());
            slice[used] = IoSlice::new(&part[..take]);
            len += take;
            used += 1;
        }
        let n = stream.write_vectored(&slice[..used]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
        if !slices.is_empty() {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

const TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// A TCP stream that first yields bytes already read from it, so hyper can take over a
/// connection mid-stream.
#[derive(Debug)]
pub struct Rewind<S = TcpStream> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_headers: usize) -> ConnLimits {
        ConnLimits {
            max_head: 32 * 1024,
            max_headers,
            header_timeout: Duration::from_secs(10),
            max_uri: 8192,
            max_body: 1 << 20,
        }
    }

    fn complete(raw: &str) -> Head {
        match parse(raw.as_bytes(), &limits(100)) {
            Parsed::Complete(head) => head,
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::Refused(status, why) => panic!("{status} {why}: {raw:?}"),
            Parsed::Other => panic!("other: {raw:?}"),
        }
    }

    #[test]
    fn plain_gets_and_heads_are_eligible() {
        let raw = "GET /a.js?v=1 HTTP/1.1\r\nHost: x.test\r\nAccept: */*\r\n\r\n";
        let head = complete(raw);
        assert!(head.eligible && head.get && !head.close && !head.full_path);
        assert_eq!(&raw[head.path_range.0..head.path_range.1], "/a.js?v=1");
        let (s, e) = head.host_range.unwrap();
        assert_eq!(&raw[s..e], "x.test");
        assert_eq!(head.len, raw.len());
        let head = complete("HEAD / HTTP/1.1\r\nhost: x\r\nConnection: close\r\n\r\n");
        assert!(head.eligible && head.head && head.close);
        for field in [
            "Authorization: Bearer x",
            "Via: 1.1 other",
            "CDN-Purge-Seq: 99999999",
            "cdn-node-proof: 00",
        ] {
            let head = complete(&format!("GET / HTTP/1.1\r\nHost: x\r\n{field}\r\n\r\n"));
            assert!(head.eligible && head.full_path, "{field}");
        }
    }

    #[test]
    fn anything_with_a_body_or_an_upgrade_goes_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(!complete(raw).eligible, "{raw:?}");
        }
        assert!(matches!(
            parse(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", &limits(100)),
            Parsed::Other
        ));
    }

    #[test]
    fn malformed_and_partial_heads() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &limits(100)),
            Parsed::Partial
        ));
        let refused = |raw: &[u8], max| match parse(raw, &limits(max)) {
            Parsed::Refused(status, _) => status.as_u16(),
            _ => 0,
        };
        assert_eq!(refused(b"GARBAGE\r\n\r\n", 100), 400);
        assert_eq!(refused(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 100), 400);
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 100),
            400
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n", 2),
            431
        );
        let many: String = (0..200).map(|i| format!("X-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(refused(raw.as_bytes(), 1000), 431);
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 100),
            400
        );
        assert_eq!(
            refused(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                100
            ),
            400
        );
    }

    #[test]
    fn smuggling_shapes_and_oversized_input_are_refused() {
        let refused = |raw: &str| match parse(raw.as_bytes(), &limits(100)) {
            Parsed::Refused(status, _) => status.as_u16(),
            _ => 0,
        };
        for te in ["gzip, chunked", "chunked, chunked", "xchunked", "identity"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(refused(&raw), 400, "{te}");
        }
        let raw = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(raw), 400);
        for cl in ["+5", "5, 5", "0x10", "-1", ""] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(refused(&raw), 400, "{cl:?}");
        }
        let raw = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n";
        assert_eq!(refused(raw), 413);
        let raw = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(8192));
        assert_eq!(refused(&raw), 414);
        let raw = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(refused(raw), 0, "a lone chunked is fine, in any case");
    }
}
