//! HTTP/3: QUIC (`quinn`) on the HTTPS port's number over UDP, HTTP/3 (`h3`) on top.
//!
//! Every request goes through [`Handler::handle`], as an HTTP/2 stream's does: the same
//! lookup, the same answers (hits from the stored body's shared bytes, `Cache-Status`,
//! ranges, refusals), the same check of `:authority` against the server name the
//! connection was set up for (`421` otherwise). 1xx heads the upstream exchange forwards
//! are sent before the final response, as on HTTP/2. A fresh hit that needs nothing of
//! the full path is answered from [`Handler::fresh_hit`] on the request's task, as the
//! HTTP/2 fast path does (same fields, same checks: the lookup matches the host against
//! the connection's server name).
//!
//! Certificates are the HTTPS listener's, chosen by SNI from the same sites
//! ([`tls_certs::Certificates::quic_server_config`]), so a certificate replaced on disk
//! reaches the next QUIC connection as it reaches the next TCP one. TLS 1.3 only (QUIC
//! has no other). No 0-RTT unless a site opts in (`h3_early_data`), and then for safe
//! methods only ([`early_data`]): early data can be replayed by anyone who saw it.
//!
//! Limits (from `[limits]`):
//! - `max_connections_per_ip`: counted per listener, as on TCP; over it a client's
//!   Initial is refused (a stateless `CONNECTION_REFUSED`).
//! - `h3_retry_above`: with this many handshakes in progress, a client whose address is
//!   not yet validated gets a Retry (stateless, carrying a token) and must come back with
//!   it: a flood of Initials from spoofed addresses costs the node a packet each, not a
//!   connection's state. 0 asks every client.
//! - `tls_handshake_timeout`: the handshake must finish within it.
//! - `header_read_timeout`: the QUIC idle timeout, and the time a stream has to send its
//!   request head.
//! - `h3_max_concurrent_streams`: request streams open at once on a connection; QUIC flow
//!   control makes the client wait for more.
//! - `max_header_bytes`: the largest header section (`SETTINGS_MAX_FIELD_SECTION_SIZE`);
//!   a client that sends a larger one anyway gets `431` (written by `h3`, without a
//!   body) on that stream, counted as a refusal; the connection goes on.
//! - shutdown: the node stops taking new connections, sends GOAWAY on the open ones and
//!   lets their requests in flight finish (bounded by the drain timeout).
//!
//! Streams reach quinn through [`quic_streams`], which hands each DATA frame's payload
//! (a stored body's shared bytes on a hit) to quinn without copying it.
//!
//! Left to QUIC's own flow control: how fast a response goes out. A client that stops
//! reading holds its stream until the idle timeout.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::future::OptionFuture;
use h3::server::RequestStream;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::cache::status::Outcome;
use crate::cache::store::StoredResponse;
use crate::front::body::EdgeBody;
use crate::front::h2::{fast_path_fields, fresh_hit_head, http2_head};
use crate::front::limits::{ConnectionsPerIp, LimitsConfig};
use crate::front::listener::{OpenConnections, drain};
use crate::front::{DoorRefusal, Handler, ServedHit, TlsName, TlsVersion};
use crate::upstream::interim::{self, InterimHead, InterimReceiver};

pub mod early_data;
pub mod quic_streams;

use early_data::{Arrival, Confirmation};

type SendStream = RequestStream<quic_streams::SendStream<Bytes>, Bytes>;
type RecvStream = RequestStream<quic_streams::RecvStream, Bytes>;

/// The QUIC transport settings of the listener, from `[limits]`.
pub fn transport(limits: &LimitsConfig) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.h3_max_concurrent_streams.into())
        // The client's control stream and QPACK streams; h3 opens no others.
        .max_concurrent_uni_streams(3u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.header_read_timeout).ok());
    transport
}

/// The server config of the HTTP/3 listener: TLS over `certificates` (the session of
/// each connection chosen by its server name, [`early_data::ByServerName`]) and the
/// transport `limits` allow.
pub fn server_config(
    certificates: &Arc<tls_certs::Certificates>,
    limits: &LimitsConfig,
) -> Result<quinn::ServerConfig, String> {
    let crypto = early_data::ByServerName::new(certificates.clone())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(limits)));
    Ok(config)
}

/// Accepts QUIC connections on `endpoint` until shutdown, then waits (bounded) for them
/// to finish. Each is counted in `open` while it lasts. A change of `limits` (a config
/// reload) applies to the connections accepted after it.
pub async fn serve<H: Handler>(
    endpoint: quinn::Endpoint,
    certificates: Arc<tls_certs::Certificates>,
    handler: Arc<H>,
    open: Arc<OpenConnections>,
    mut limits: watch::Receiver<LimitsConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let per_ip = ConnectionsPerIp::new(limits.borrow().max_connections_per_ip);
    let handshaking = Arc::new(AtomicUsize::new(0));
    let mut now = limits.borrow_and_update().clone();
    let mut stop = shutdown.clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = stop.changed() => break,
        };
        if limits.has_changed().unwrap_or(false) {
            now = limits.borrow_and_update().clone();
            per_ip.set_max(now.max_connections_per_ip);
            match server_config(&certificates, &now) {
                Ok(config) => endpoint.set_server_config(Some(config)),
                Err(error) => tracing::warn!(%error, "HTTP/3 limits not applied"),
            }
        }
        let peer = incoming.remote_address();
        let Some(slot) = per_ip.admit(peer.ip()) else {
            handler.count(Outcome::Refused, http::Version::HTTP_3);
            if handler.logs_access() {
                handler.refused_at_door(&DoorRefusal {
                    client: peer,
                    status: http::StatusCode::TOO_MANY_REQUESTS,
                    bytes: 0,
                    tls: None,
                    https: true,
                });
            }
            incoming.refuse();
            continue;
        };
        if !incoming.remote_address_validated()
            && handshaking.load(Ordering::Acquire) >= now.h3_retry_above
            && incoming.may_retry()
        {
            // Stateless: the token in the Retry proves the address when it comes back.
            let _ = incoming.retry();
            continue;
        }
        let connecting = match incoming.accept() {
            Ok(connecting) => connecting,
            Err(error) => {
                tracing::debug!(%peer, %error, "QUIC connection not accepted");
                continue;
            }
        };
        let guard = open.enter();
        let handshake = Handshake::begin(&handshaking);
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        let certificates = certificates.clone();
        let settings = Settings::of(&now);
        tokio::spawn(async move {
            let _held = (guard, slot);
            let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
            let established =
                tokio::time::timeout_at(deadline, establish(connecting, &certificates, peer));
            let (connection, pending) = match established.await {
                Ok(Some(Established::Confirmed(connection))) => (connection, None),
                Ok(Some(Established::Early(connection, accepted))) => {
                    let pending = Pending {
                        accepted,
                        deadline,
                        handshake,
                        confirmation: Confirmation::in_progress(),
                    };
                    (connection, Some(pending))
                }
                Ok(None) => return,
                Err(_) => {
                    tracing::debug!(%peer, "QUIC handshake timed out");
                    return;
                }
            };
            let Some(name) = server_name(&connection) else {
                connection.close(0u32.into(), b"no server name");
                return;
            };
            serve_connection(connection, pending, peer, name, handler, settings, shutdown).await;
        });
    }
    endpoint.set_server_config(None);
    drain(&open).await;
    endpoint.close(0u32.into(), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// A connection that may be served: after its handshake, or (its server name a site's
/// that accepts early data) once its ClientHello is read, the handshake still going on.
enum Established {
    Confirmed(quinn::Connection),
    Early(quinn::Connection, quinn::ZeroRttAccepted),
}

/// Waits until `connecting` may be served (see [`Established`]); `None` when its
/// handshake failed.
async fn establish(
    mut connecting: quinn::Connecting,
    certificates: &tls_certs::Certificates,
    peer: SocketAddr,
) -> Option<Established> {
    if certificates.any_early_data() {
        let early = match connecting.handshake_data().await {
            Ok(data) => data
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .ok()
                .and_then(|data| data.server_name)
                .is_some_and(|name| certificates.early_data(&name)),
            Err(error) => {
                tracing::debug!(%peer, %error, "QUIC handshake failed");
                return None;
            }
        };
        if early {
            // Always succeeds on a server: its requests are read from now on.
            match connecting.into_0rtt() {
                Ok((connection, accepted)) => {
                    return Some(Established::Early(connection, accepted));
                }
                Err(still) => connecting = still,
            }
        }
    }
    match connecting.await {
        Ok(connection) => Some(Established::Confirmed(connection)),
        Err(error) => {
            tracing::debug!(%peer, %error, "QUIC handshake failed");
            None
        }
    }
}

/// The rest of the handshake of a connection served from early data on.
struct Pending {
    /// Resolves when the handshake completes or fails.
    accepted: quinn::ZeroRttAccepted,
    /// When it must have.
    deadline: tokio::time::Instant,
    /// Counted as in progress until then.
    handshake: Handshake,
    /// Tells the connection's requests.
    confirmation: Confirmation,
}

/// One handshake in progress, counted until it ends either way.
struct Handshake(Arc<AtomicUsize>);

impl Handshake {
    fn begin(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The limits one connection runs under, as they were when it was accepted.
#[derive(Debug, Clone, Copy)]
struct Settings {
    handshake_timeout: Duration,
    head_timeout: Duration,
    max_head: usize,
}

impl Settings {
    fn of(limits: &LimitsConfig) -> Self {
        Self {
            handshake_timeout: limits.tls_handshake_timeout,
            head_timeout: limits.header_read_timeout,
            max_head: usize::try_from(limits.max_header_bytes.as_u64()).unwrap_or(usize::MAX),
        }
    }
}

/// The SNI the client's handshake named: the certificate resolver gave none without one
/// naming a site, so a finished handshake has it.
fn server_name(connection: &quinn::Connection) -> Option<TlsName> {
    let data = connection.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    Some(TlsName(data.server_name?.into(), TlsVersion::Tls13))
}

/// Serves the requests of one connection until the client leaves or the node shuts down
/// (then GOAWAY; the requests in flight finish).
async fn serve_connection<H: Handler>(
    connection: quinn::Connection,
    pending: Option<Pending>,
    peer: SocketAddr,
    tls: TlsName,
    handler: Arc<H>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let (confirmation, mut confirming, mut handshake) = match pending {
        Some(Pending {
            accepted,
            deadline,
            handshake,
            confirmation,
        }) => (
            confirmation,
            Some(Box::pin(tokio::time::timeout_at(deadline, accepted))),
            Some(handshake),
        ),
        None => (Confirmation::completed(), None, None),
    };
    let mut builder = h3::server::builder();
    builder.max_field_section_size(settings.max_head as u64);
    let mut h3 = match builder
        .build::<_, Bytes>(quic_streams::Connection::new(connection.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(error) => {
            tracing::debug!(%peer, %error, "HTTP/3 connection not set up");
            return;
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    let mut stopping = *shutdown.borrow();
    loop {
        if stopping {
            let _ = h3.shutdown(0).await;
            break;
        }
        // Biased, the handshake first: a request read once it completed must see it so
        // (quinn reads no 1-RTT data before; both wake this task on the same pass).
        let resolver = tokio::select! {
            biased;
            Some(done) = OptionFuture::from(confirming.as_mut()), if confirming.is_some() => {
                confirming = None;
                // On a server quinn resolves it `false` either way: whether the handshake
                // completed is whether the connection is still up.
                if done.is_ok() && connection.close_reason().is_none() {
                    confirmation.complete();
                    // No longer counted as a handshake in progress.
                    handshake = None;
                    continue;
                }
                tracing::debug!(%peer, "QUIC handshake after early data failed or timed out");
                connection.close(0u32.into(), b"handshake not completed");
                break;
            }
            _ = shutdown.changed() => {
                stopping = true;
                continue;
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => resolver,
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%peer, %error, "HTTP/3 connection ended");
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => continue,
        };
        let (handler, tls, confirmation) = (handler.clone(), tls.clone(), confirmation.clone());
        requests.spawn(async move {
            let resolved =
                tokio::time::timeout(settings.head_timeout, resolver.resolve_request()).await;
            match resolved {
                Ok(Ok((request, stream))) => {
                    let arrival = confirmation.arrival();
                    answer(
                        handler,
                        peer,
                        tls,
                        settings.max_head,
                        (request, arrival),
                        stream,
                    )
                    .await;
                }
                Ok(Err(error)) => {
                    if let h3::error::StreamError::HeaderTooBig { .. } = error {
                        too_large(handler.as_ref(), peer, &tls);
                    }
                    tracing::debug!(%peer, %error, "HTTP/3 request refused");
                }
                Err(_) => tracing::debug!(%peer, "HTTP/3 request head timed out"),
            }
        });
    }
    // Requests in flight finish (the connection stays open while they are sent).
    while requests.join_next().await.is_some() {}
    drop(handshake);
}

/// Answers one request: 1xx heads as they arrive, then the final response and its body.
async fn answer<H: Handler>(
    handler: Arc<H>,
    peer: SocketAddr,
    tls: TlsName,
    max_head: usize,
    (mut request, arrival): (Request<()>, Arrival),
    stream: RequestStream<quic_streams::BidiStream<Bytes>, Bytes>,
) {
    let (mut send, recv) = stream.split();
    if arrival == Arrival::Early {
        if !early_data::may_answer_early(request.method(), request.headers()) {
            too_early(handler.as_ref(), peer, &tls, &mut send).await;
            return;
        }
        early_data::mark(request.headers_mut());
    }
    if let Some(head) = fast_path_fields(request.method(), request.headers())
        && let (Some(host), Some(target)) =
            (request.uri().authority(), request.uri().path_and_query())
        && let Some((entry, now)) = handler.fresh_hit(host.as_str(), target.as_str(), Some(&tls))
    {
        let hit = FreshHit {
            peer,
            tls: &tls,
            request: &request,
            head,
        };
        hit.answer(handler.as_ref(), &entry, now, &mut send).await;
        return;
    }
    let (interim, mut interims) = interim::channel(max_head);
    let (mut parts, ()) = request.into_parts();
    parts.extensions.insert(tls);
    parts.extensions.insert(interim);
    let body = RequestBody::new(recv, &parts.method, &parts.headers);
    let response = handler.handle(Request::from_parts(parts, body), peer);
    tokio::pin!(response);
    // Bounded: at most `interim::MAX_INTERIM` heads arrive.
    let response = loop {
        tokio::select! {
            biased;
            response = &mut response => break response,
            head = interims.recv() => {
                if !send_interim(&mut send, handler.as_ref(), head).await {
                    return;
                }
            }
        }
    };
    if !flush_interims(&mut send, handler.as_ref(), &mut interims).await {
        return;
    }
    drop(interims);
    let (mut parts, body) = response.into_parts();
    http2_head(&mut parts.headers);
    if !parts.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(length) = body.size_hint().exact()
        && !body.is_end_stream()
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Err(error) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(%peer, %error, "HTTP/3 response not sent");
        return;
    }
    if let Err(error) = pipe(body, &mut send).await {
        tracing::debug!(%peer, %error, "HTTP/3 response body not sent whole");
    }
}

/// Counts (and logs) a request whose header section was larger than `max_header_bytes`,
/// which `h3` has answered `431` (no body) before handing it over, as the HTTP/1.1 and
/// HTTP/2 listeners count theirs.
fn too_large<H: Handler>(handler: &H, peer: SocketAddr, tls: &TlsName) {
    handler.count(Outcome::Refused, http::Version::HTTP_3);
    if handler.logs_access() {
        handler.refused_at_door(&DoorRefusal {
            client: peer,
            status: http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            bytes: crate::front::head_bytes(&HeaderMap::new()),
            tls: Some(tls),
            https: true,
        });
    }
}

/// Refuses a request received in early data that may not be answered before the
/// handshake completes: `425 Too Early` (RFC 8470 5.2), which the client answers by
/// sending it again once the handshake is done.
async fn too_early<H: Handler>(
    handler: &H,
    peer: SocketAddr,
    tls: &TlsName,
    send: &mut SendStream,
) {
    handler.count(Outcome::Refused, http::Version::HTTP_3);
    let body = Bytes::from_static(
        b"425 Too Early: sent in early data (0-RTT), where only GET, HEAD and OPTIONS without a body are answered; send it again now the handshake is complete\n",
    );
    let mut response = Response::new(());
    *response.status_mut() = http::StatusCode::TOO_EARLY;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let bytes = crate::front::head_bytes(response.headers()) + body.len() as u64;
    let sent = send.send_response(response).await.is_ok()
        && send.send_data(body).await.is_ok()
        && send.finish().await.is_ok();
    if handler.logs_access() {
        handler.refused_at_door(&DoorRefusal {
            client: peer,
            status: http::StatusCode::TOO_EARLY,
            bytes: if sent { bytes } else { 0 },
            tls: Some(tls),
            https: true,
        });
    }
}

/// A fresh hit answered without the full path (as on HTTP/2): the stored head as fields,
/// `Age` and `Cache-Status`, and the stored body's shared bytes.
struct FreshHit<'a> {
    peer: SocketAddr,
    tls: &'a TlsName,
    request: &'a Request<()>,
    /// A `HEAD` (else a `GET`).
    head: bool,
}

impl FreshHit<'_> {
    async fn answer<H: Handler>(
        &self,
        handler: &H,
        entry: &StoredResponse,
        now: std::time::Instant,
        send: &mut SendStream,
    ) {
        let started = handler.logs_access().then(std::time::Instant::now);
        handler.count(Outcome::Hit, http::Version::HTTP_3);
        let (response, cache_status) = fresh_hit_head(handler, entry, now);
        let head_bytes = crate::front::head_bytes(response.headers());
        let body_bytes = if self.head {
            0
        } else {
            entry.body().len() as u64
        };
        let mut complete = send.send_response(response).await.is_ok();
        if complete && body_bytes > 0 {
            complete = send.send_data(entry.body_bytes()).await.is_ok();
        }
        complete = complete && send.finish().await.is_ok();
        if let Some(started) = started {
            let field =
                |name: header::HeaderName| self.request.headers().get(name).map(|v| v.as_bytes());
            let uri = self.request.uri();
            handler.served_hit(&ServedHit {
                client: self.peer,
                host: uri.authority().map_or(&b""[..], |a| a.as_str().as_bytes()),
                target: uri
                    .path_and_query()
                    .map_or(&b""[..], |p| p.as_str().as_bytes()),
                head: self.head,
                status: entry.status,
                bytes: head_bytes + body_bytes,
                body_bytes,
                started,
                cache_status: cache_status.as_bytes(),
                tls: Some(self.tls),
                user_agent: field(header::USER_AGENT),
                referer: field(header::REFERER),
                complete,
                version: http::Version::HTTP_3,
            });
        }
    }
}

async fn flush_interims<H: Handler>(
    send: &mut SendStream,
    handler: &H,
    interims: &mut InterimReceiver,
) -> bool {
    while let Some(head) = interims.try_recv() {
        if !send_interim(send, handler, head).await {
            return false;
        }
    }
    true
}

/// Sends one 1xx head (after the node's rewrite); `false` when the stream is broken.
async fn send_interim<H: Handler>(
    send: &mut SendStream,
    handler: &H,
    mut head: InterimHead,
) -> bool {
    handler.interim(&mut head);
    crate::front::h2::strip_connection_fields(&mut head.headers);
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    match send.send_response(response).await {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%error, "HTTP/3 interim response not sent");
            false
        }
    }
}

/// Sends a response body frame by frame (each `Bytes` handed to QUIC as it is), then
/// the trailers if any, and ends the stream.
async fn pipe(mut body: EdgeBody, send: &mut SendStream) -> Result<(), h3::error::StreamError> {
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(%error, "response body failed");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await
}

/// A request body as the handler reads it: the stream's DATA frames. A GET or HEAD
/// without `Content-Length` has none to wait for (HTTP/3 would say so only with the
/// stream's end, which a request that declares nothing would otherwise have to await
/// before it may be retried or coalesced).
struct RequestBody {
    recv: Option<RecvStream>,
    remaining: Option<u64>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl RequestBody {
    fn new(recv: RecvStream, method: &Method, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let none = remaining == Some(0)
            || (remaining.is_none() && matches!(*method, Method::GET | Method::HEAD));
        Self {
            recv: (!none).then_some(recv),
            remaining,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(recv) = &mut this.recv else {
            return Poll::Ready(None);
        };
        match std::task::ready!(recv.poll_recv_data(cx)) {
            Ok(Some(mut data)) => {
                let data = data.copy_to_bytes(data.remaining());
                if let Some(remaining) = &mut this.remaining {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.recv = None;
                Poll::Ready(None)
            }
            Err(error) => {
                this.recv = None;
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.recv, self.remaining) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Some(remaining)) => SizeHint::with_exact(remaining),
            (Some(_), None) => SizeHint::default(),
        }
    }
}
