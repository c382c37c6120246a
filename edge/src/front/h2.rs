//! HTTP/2 client connections (negotiated by ALPN on the HTTPS listener), served on the
//! `h2` crate directly, with the limits that keep one client from exhausting the node.
//!
//! Why not hyper's HTTP/2 server: it has no way to send an interim (1xx) response, and a
//! proxy must forward them (RFC 9110 15.2; see [`crate::upstream::interim`]). The `h2`
//! crate, which hyper uses underneath, has `SendResponse::send_informational`. What
//! hyper's server did around `h2` is done here, and only that:
//! - each stream runs in its own task: the request (body streamed, its flow-control
//!   window released as the node reads it) goes through [`Handler::handle`], whose
//!   future is dropped at once if the client resets the stream;
//! - 1xx heads the handler's upstream exchange forwards are sent before the final
//!   response, in order, as they arrive;
//! - the final response loses the fields HTTP/2 forbids (`Connection` and what it names,
//!   `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE`), gains `Date`
//!   when it has none and `Content-Length` when its body's size is known, and its body is
//!   sent as the stream's send window allows (trailers too);
//! - settings are hyper's defaults where the node sets nothing: 1 MiB stream and
//!   connection windows, 16 KiB frames, 400 KiB send buffer per stream.
//!
//! Beyond what hyper did: a fresh hit is answered on the connection's own task, without
//! a task or the full path (the HTTP/1.1 loop's fast path, for HTTP/2), and what the
//! connection writes goes out in batches ([`crate::front::write_batch`]): the responses
//! written in one turn of the connection (to requests read together) leave in one write
//! instead of one each.
//!
//! Limits (from `[limits]`):
//! - `max_concurrent_streams`: streams open at once on a connection.
//! - `max_header_list_size` (= `limits.max_header_bytes`): a header block, CONTINUATION
//!   frames included, larger than this ends the stream; the h2 crate stops buffering
//!   CONTINUATION frames past it (the 2024 CONTINUATION flood).
//! - `max_pending_accept_reset_streams`: streams the client opened and reset before they
//!   were served; past it the connection is closed (rapid reset, CVE-2023-44487).
//! - `max_local_error_reset_streams`: streams this node had to reset for protocol errors
//!   of the client; past it the connection is closed.
//! - keep-alive: a PING every `header_read_timeout`; no PONG within as long again closes
//!   the connection (its peer is gone). The connection preface must arrive within that
//!   time too.
//! - shutdown: GOAWAY, and the streams in flight finish.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::cache::status::{CACHE_STATUS, CacheStatus, Outcome};
use crate::cache::store::StoredResponse;
use crate::front::body::EdgeBody;
use crate::front::connection::FULL_PATH_FIELDS;
use crate::front::limits::LimitsConfig;
use crate::front::write_batch::WriteBatch;
use crate::front::{Handler, ServedHit, TlsName};
use crate::upstream::interim::{self, InterimHead, InterimReceiver};

/// hyper's defaults, kept when the server moved onto `h2` directly.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// The HTTP/2 server settings of a listener, from `[limits]`.
#[derive(Debug, Clone)]
pub struct Http2 {
    builder: h2::server::Builder,
    /// Interval between keep-alive PINGs, time allowed for the PONG, and for the preface.
    keep_alive: Duration,
    /// `limits.max_header_bytes`: also the largest 1xx head forwarded.
    max_head: usize,
}

/// The HTTP/2 server settings of a listener, from `[limits]`.
pub fn builder(limits: &LimitsConfig) -> Http2 {
    let max_head = usize::try_from(limits.max_header_bytes.as_u64()).unwrap_or(usize::MAX);
    let header_list = u32::try_from(max_head).unwrap_or(u32::MAX);
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.h2_max_local_error_reset_streams));
    Http2 {
        builder,
        keep_alive: limits.header_read_timeout,
        max_head,
    }
}

/// Serves one HTTP/2 connection until the client leaves or the node shuts down (then
/// GOAWAY, and the streams in flight finish). Every stream's `:authority` is checked
/// against `tls`, the server name the connection was set up for.
pub async fn serve<I, H>(
    io: I,
    peer: SocketAddr,
    tls: TlsName,
    handler: Arc<H>,
    settings: &Http2,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let (io, batch) = WriteBatch::new(io);
    let mut handshake = std::pin::pin!(settings.builder.handshake::<_, Bytes>(io));
    let handshake = poll_fn(|cx| batch.poll(cx, |cx| handshake.as_mut().poll(cx)));
    let mut conn = tokio::select! {
        done = tokio::time::timeout(settings.keep_alive, handshake) => match done {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "HTTP/2 handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "HTTP/2 preface timed out");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    let Some(mut pings) = conn.ping_pong() else {
        return; // taken only here, so always there
    };
    let keep_alive = keep_alive(&mut pings, settings.keep_alive);
    tokio::pin!(keep_alive);
    let mut alive = true;
    let mut draining = *shutdown.borrow();
    // One wait for the node to stop, for the connection's life (not one per stream).
    let stopping = async move {
        let _ = shutdown.changed().await;
    };
    tokio::pin!(stopping);
    if draining {
        conn.graceful_shutdown();
    }
    // Ends when the connection does: `accept` drives it, and answers `None` once it is
    // closed (by the client, or after GOAWAY when the streams in flight are done).
    loop {
        tokio::select! {
            accepted = poll_fn(|cx| batch.poll(cx, |cx| conn.poll_accept(cx))) => match accepted {
                Some(Ok((request, respond))) => {
                    let Some(respond) =
                        answer_fresh_hit(handler.as_ref(), peer, &tls, &request, respond)
                    else {
                        continue;
                    };
                    let stream = Stream {
                        handler: handler.clone(),
                        peer,
                        tls: tls.clone(),
                        max_head: settings.max_head,
                    };
                    tokio::spawn(stream.serve(request, respond));
                }
                Some(Err(error)) => {
                    tracing::debug!(%peer, %error, "HTTP/2 connection ended with an error");
                    return;
                }
                None => return,
            },
            () = &mut stopping, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            () = &mut keep_alive, if alive => {
                alive = false;
                tracing::debug!(%peer, "HTTP/2 keep-alive timed out, closing the connection");
                conn.abrupt_shutdown(Reason::NO_ERROR);
            }
        }
    }
}

/// The hit fast path on HTTP/2 (see [`Handler::fresh_hit`]): a GET or HEAD without a
/// body whose fields the HTTP/1.1 loop would also answer itself, and whose fresh entry
/// is small enough to go out within the stream's first window, is answered here on the
/// connection's task: the stored fields, `Age`, `Cache-Status` and the shared body
/// bytes, with no task, no request body and no full-path response built for it. Larger
/// bodies take the full path, whose pipe waits for window instead of buffering.
/// Gives `respond` back when the full path must answer.
fn answer_fresh_hit<H: Handler>(
    handler: &H,
    peer: SocketAddr,
    tls: &TlsName,
    request: &Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> Option<SendResponse<Bytes>> {
    let Some(head) = fast_path_method(request) else {
        return Some(respond);
    };
    let (Some(host), Some(target)) = (
        request.uri().authority(),
        request.uri().path_and_query().map(|pq| pq.as_str()),
    ) else {
        return Some(respond);
    };
    let Some((entry, now)) = handler.fresh_hit(host.as_str(), target, Some(tls)) else {
        return Some(respond);
    };
    if entry.body().len() > STREAM_WINDOW as usize {
        return Some(respond);
    }
    let started = handler.logs_access().then(std::time::Instant::now);
    handler.count(Outcome::Hit, http::Version::HTTP_2);
    let (mut response, cache_status) = fresh_hit_head(handler, &entry, now);
    if let Some(alt_svc) = handler.alt_svc() {
        response
            .headers_mut()
            .insert(header::ALT_SVC, alt_svc.clone());
    }
    let head_bytes = crate::front::head_bytes(response.headers());
    let body_bytes = if head { 0 } else { entry.body().len() as u64 };
    let end = body_bytes == 0;
    let complete = match respond.send_response(response, end) {
        Ok(mut send) if !end => send.send_data(entry.body_bytes(), true).is_ok(),
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(%peer, %error, "HTTP/2 response not sent");
            false
        }
    };
    if let Some(started) = started {
        let field = |name: header::HeaderName| request.headers().get(name).map(|v| v.as_bytes());
        handler.served_hit(&ServedHit {
            client: peer,
            host: host.as_str().as_bytes(),
            target: target.as_bytes(),
            head,
            status: entry.status,
            bytes: head_bytes + body_bytes,
            body_bytes,
            started,
            cache_status: cache_status.as_bytes(),
            tls: Some(tls),
            user_agent: field(header::USER_AGENT),
            referer: field(header::REFERER),
            complete,
            version: http::Version::HTTP_2,
        });
    }
    None
}

/// The head of a fast-path hit on HTTP/2 or HTTP/3: the stored fields, `Age` and
/// `Cache-Status` at `now`, as [`http2_head`] sends them; and the `Cache-Status` sent.
pub(crate) fn fresh_hit_head<H: Handler>(
    handler: &H,
    entry: &StoredResponse,
    now: std::time::Instant,
) -> (Response<()>, HeaderValue) {
    let cache_status = CacheStatus::hit(entry.freshness.ttl(now))
        .render(handler.name(), entry.upstream_cache_status());
    let mut response = Response::new(());
    *response.status_mut() = entry.status;
    let headers = response.headers_mut();
    *headers = entry.client_headers();
    headers.insert(header::AGE, HeaderValue::from(entry.freshness.age(now)));
    headers.insert(CACHE_STATUS.clone(), cache_status.clone());
    http2_head(headers);
    (response, cache_status)
}

/// `Some(is HEAD)` for a GET or HEAD the fast path may answer: no body, no `Host` beside
/// `:authority` (the full path checks that they agree), none of the fields that need the
/// full path ([`FULL_PATH_FIELDS`], internal `cdn-*` fields).
fn fast_path_method(request: &Request<RecvStream>) -> Option<bool> {
    if !request.body().is_end_stream() {
        return None;
    }
    fast_path_fields(request.method(), request.headers())
}

/// `Some(is HEAD)` for a GET or HEAD whose fields let a fast path answer it (HTTP/2 and
/// HTTP/3): no `Host` beside `:authority`, no `Content-Length`, none of
/// [`FULL_PATH_FIELDS`] or the internal `cdn-*` fields.
pub(crate) fn fast_path_fields(method: &http::Method, headers: &HeaderMap) -> Option<bool> {
    let head = match *method {
        http::Method::GET => false,
        http::Method::HEAD => true,
        _ => return None,
    };
    for name in headers.keys() {
        let name = name.as_str();
        if name == "host"
            || name == "content-length"
            || FULL_PATH_FIELDS.contains(&name)
            || node_api::headers::is_reserved(name.as_bytes())
        {
            return None;
        }
    }
    Some(head)
}

/// Returns when the peer stops answering PINGs: one every `interval`, each answered
/// within `interval`. PONGs arrive while the connection is driven (by `accept`).
async fn keep_alive(pings: &mut PingPong, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(interval, pings.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// What one stream's task needs of its connection.
struct Stream<H> {
    handler: Arc<H>,
    peer: SocketAddr,
    tls: TlsName,
    max_head: usize,
}

impl<H: Handler> Stream<H> {
    /// Answers one request: 1xx heads as they arrive, then the final response and its body.
    async fn serve(self, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let (interim, mut interims) = interim::channel(self.max_head);
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(self.tls);
        parts.extensions.insert(interim);
        let body = RequestBody::new(body, &parts.headers);
        let response = self
            .handler
            .handle(Request::from_parts(parts, body), self.peer);
        tokio::pin!(response);
        // Bounded: at most `interim::MAX_INTERIM` heads arrive.
        let response = loop {
            tokio::select! {
                biased;
                response = &mut response => break response,
                reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                    // The handler's future is dropped: the client no longer wants it.
                    tracing::debug!(peer = %self.peer, ?reset, "HTTP/2 stream reset by the client");
                    return;
                }
                head = interims.recv() => {
                    if !send_interim(&mut respond, self.handler.as_ref(), head) {
                        return;
                    }
                }
            }
        };
        if !flush_interims(&mut respond, self.handler.as_ref(), &mut interims) {
            return;
        }
        drop(interims);
        let (mut parts, body) = response.into_parts();
        if let Some(alt_svc) = self.handler.alt_svc() {
            parts.headers.insert(header::ALT_SVC, alt_svc.clone());
        }
        http2_head(&mut parts.headers);
        let end = body.is_end_stream();
        if !end
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
            && let Some(length) = body.size_hint().exact()
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        let send = match respond.send_response(Response::from_parts(parts, ()), end) {
            Ok(send) => send,
            Err(error) => {
                tracing::debug!(peer = %self.peer, %error, "HTTP/2 response not sent");
                respond.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
        };
        if !end && let Err(error) = pipe(body, send).await {
            tracing::debug!(peer = %self.peer, %error, "HTTP/2 response body not sent whole");
        }
    }
}

/// Sends what is queued of the 1xx heads; `false` when the stream is broken.
fn flush_interims<H: Handler>(
    respond: &mut SendResponse<Bytes>,
    handler: &H,
    interims: &mut InterimReceiver,
) -> bool {
    while let Some(head) = interims.try_recv() {
        if !send_interim(respond, handler, head) {
            return false;
        }
    }
    true
}

/// Sends one 1xx head (after the node's rewrite); `false` when the stream is broken.
fn send_interim<H: Handler>(
    respond: &mut SendResponse<Bytes>,
    handler: &H,
    mut head: InterimHead,
) -> bool {
    handler.interim(&mut head);
    strip_connection_fields(&mut head.headers);
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    match respond.send_informational(response) {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 interim response not sent");
            false
        }
    }
}

/// A final response's fields as HTTP/2 sends them: without the fields it forbids, with
/// `Date` when the response has none.
pub(crate) fn http2_head(headers: &mut HeaderMap) {
    strip_connection_fields(headers);
    if !headers.contains_key(header::DATE)
        && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
    {
        headers.insert(header::DATE, date);
    }
}

/// Removes the fields HTTP/2 forbids in a response (RFC 9113 8.2.2).
pub(crate) fn strip_connection_fields(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(header::CONNECTION)
        && let Ok(names) = connection.to_str()
    {
        for name in names.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for name in [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
    ] {
        headers.remove(name);
    }
}

/// Sends a response body as the stream's window allows, ending the stream with the last
/// frame (or trailers). Stops when the client resets the stream.
async fn pipe(mut body: EdgeBody, mut send: SendStream<Bytes>) -> Result<(), h2::Error> {
    loop {
        let frame = tokio::select! {
            biased;
            reset = poll_fn(|cx| send.poll_reset(cx)) => return Err(reset?.into()),
            frame = body.frame() => frame,
        };
        let frame = match frame {
            None => return send.send_data(Bytes::new(), true),
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                tracing::debug!(%error, "response body failed");
                send.send_reset(Reason::INTERNAL_ERROR);
                return Ok(());
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.reserve_capacity(0);
                    return send.send_trailers(trailers);
                }
                continue;
            }
        };
        let end = body.is_end_stream();
        if !data.is_empty() {
            // A claim of one byte, not the chunk's length: h2 raises it to what is
            // buffered in `send_data`, and a large claim held while waiting would pin the
            // connection's window against other streams (as hyper does, hyper#4003).
            send.reserve_capacity(1);
            while send.capacity() == 0 {
                match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error),
                    None => return Ok(()), // reset, or otherwise no longer open
                }
            }
        }
        if !data.is_empty() || end {
            send.send_data(data, end)?;
        }
        if end {
            return Ok(());
        }
    }
}

/// A request body as the handler reads it: DATA frames (their window released to the
/// client as they are read), then trailers.
#[derive(Debug)]
struct RequestBody {
    recv: RecvStream,
    data_done: bool,
    /// What the declared `Content-Length` says is left (h2 enforces the length itself).
    remaining: Option<u64>,
}

impl RequestBody {
    fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Self {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
