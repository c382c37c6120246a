//! The front door: client connections, from the accepted socket to the response's last
//! byte.
//!
//! The public listeners ([`listener`], [`https`] with TLS and ALPN), the HTTP/1.1 loop
//! with the hit fast path ([`connection`], large bodies sent from their memory files by
//! [`send_file`]), HTTP/2 ([`h2`], its writes batched by
//! [`write_batch`]), HTTP/3 over QUIC ([`h3`]), the limits enforced around
//! the socket ([`limits`]), the body of every response ([`body`]) and of every client
//! request that streams upstream ([`client_body`]), and the server name a TLS connection
//! was set up for ([`TlsName`]).
//!
//! This layer imports the cache core (stored responses, `Cache-Status`) and the upstream
//! layer (the error a response body can break off with) below it, never the node. What it
//! needs of the node is the [`Handler`] trait, which the node's `Edge` implements: every
//! listener is generic over it, so each is compiled for the one handler it serves and the
//! hit path calls it without dynamic dispatch or boxing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use crate::cache::BoxError;
use crate::cache::status::Outcome;
use crate::cache::store::StoredResponse;
use crate::upstream::interim::InterimHead;

pub mod body;
pub mod client_body;
pub mod connection;
pub mod h2;
pub mod h3;
pub mod https;
pub mod limits;
pub mod listener;
pub mod send_file;
pub mod write_batch;

use body::EdgeBody;

/// What the front door asks of the node behind it, in the order a request meets it.
///
/// Modelled on Pingora's `ProxyHttp`: each method says when it runs, what its default does
/// and what its answer means. Implementations are shared by every connection (`Arc`), so
/// they must be cheap to call concurrently.
pub trait Handler: Send + Sync + 'static {
    /// The hit fast path. Runs on the HTTP/1.1 loop for every GET or HEAD whose head it
    /// parsed without finding anything the full path must see first (a body, `Via`,
    /// `Authorization`, request `Cache-Control`, conditionals, ranges, any `cdn-*` field):
    /// `host` is its one `Host`, `target` its origin-form target as sent, `tls` the server
    /// name of a TLS connection.
    ///
    /// `Some((response, now))`: the stored response answers the request as it is; the loop
    /// writes its pre-serialized head, `Age` (at `now`) and `Cache-Status` (a hit, named
    /// with [`Handler::name`]) and its body in one `writev`, and counts an
    /// [`Outcome::Hit`]. `None`: take the full path ([`Handler::handle`]), which also makes
    /// every refusal. The default answers `None` for every request.
    ///
    /// An HTTP/2 connection asks the same for each stream that qualifies alike (its
    /// `:authority` as `host`, `:path` as `target`) and answers a hit on the connection's
    /// own task, the stored head as fields, without spawning a task for the stream.
    ///
    /// Called once per request on the hottest path: it must not block, and should not
    /// allocate more than the lookup itself needs.
    fn fresh_hit(
        &self,
        host: &str,
        target: &str,
        tls: Option<&TlsName>,
    ) -> Option<(Arc<StoredResponse>, Instant)> {
        let _ = (host, target, tls);
        None
    }

    /// The full path: every request the fast path declined, every request hyper parsed
    /// (bodies, HTTP/1.0, upgrades) and every HTTP/2 stream, with `client`'s address.
    /// A TLS connection's requests carry their [`TlsName`] as a request extension, and
    /// those whose client can be sent 1xx heads an
    /// [`Interim`](crate::upstream::interim::Interim) (the front door writes what
    /// arrives there before the response). The response is written as it is; the front
    /// door adds only framing (`Content-Length` or chunked, `Connection: close`) and
    /// `Date` when missing.
    fn handle<B>(
        self: &Arc<Self>,
        request: Request<B>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<EdgeBody>> + Send
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>;

    /// Rewrites a 1xx head from upstream just before the front door writes it to the
    /// client (HTTP/1.1 on the connection loop, HTTP/2). Runs once per forwarded head,
    /// which [`crate::upstream::interim`] has already bounded in number and size and
    /// cleared of hop-by-hop fields. The default writes it as it is.
    fn interim(&self, head: &mut InterimHead) {
        let _ = head;
    }

    /// The `Alt-Svc` value HTTPS responses carry (HTTP/1.1 and HTTP/2 over TLS, fast and
    /// full path alike) to tell clients where the node speaks HTTP/3; `None` (the default)
    /// when it does not.
    fn alt_svc(&self) -> Option<&http::HeaderValue> {
        None
    }

    /// The node's name, as its member of `Cache-Status` on fast-path hits.
    fn name(&self) -> &str;

    /// Counts a request the front door answered without [`Handler::handle`]: a fast-path
    /// hit, or a refusal (a malformed head, a client over its connection limit), with
    /// the HTTP `version` the client spoke. A TCP client refused before a protocol was
    /// chosen (over its connection limit) counts as HTTP/1.1, one refused on the UDP
    /// port as HTTP/3.
    fn count(&self, outcome: Outcome, version: http::Version);

    /// Whether the node keeps an access log: the fast path then times each request and
    /// reports every hit it writes to [`Handler::served_hit`]. The default says no.
    fn logs_access(&self) -> bool {
        false
    }

    /// A fast-path hit was written (or the client left while it was): what the access log
    /// needs of it. Called only when [`Handler::logs_access`] says so; must not block.
    fn served_hit(&self, hit: &ServedHit<'_>) {
        let _ = hit;
    }

    /// The front door refused a client before any request reached the node (a malformed
    /// or oversized head, a client over its connection limit): for the access log. Called
    /// only when [`Handler::logs_access`] says so; must not block.
    fn refused_at_door(&self, refusal: &DoorRefusal<'_>) {
        let _ = refusal;
    }
}

/// Bytes of a response head with `headers` as HTTP/1.1 serializes it (status line,
/// fields, blank line; framing fields a connection adds not counted): the size the access
/// log gives a head, whichever protocol carried it.
pub fn head_bytes(headers: &http::HeaderMap) -> u64 {
    17 + headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum::<u64>()
        + 2
}

/// A refusal the front door answered itself, for the access log.
#[derive(Debug)]
pub struct DoorRefusal<'a> {
    pub client: SocketAddr,
    pub status: http::StatusCode,
    /// Bytes of the refusal written.
    pub bytes: u64,
    pub tls: Option<&'a TlsName>,
    /// It came to the HTTPS listener (with no `tls` when refused before the handshake).
    pub https: bool,
}

/// A hit the fast path wrote, for the access log: the request's parts as the client sent
/// them (bytes, not yet checked as text) and what was sent.
#[derive(Debug)]
pub struct ServedHit<'a> {
    pub client: SocketAddr,
    pub host: &'a [u8],
    pub target: &'a [u8],
    /// A `HEAD` (else a `GET`).
    pub head: bool,
    pub status: http::StatusCode,
    pub bytes: u64,
    pub body_bytes: u64,
    /// When the request's head was read.
    pub started: Instant,
    /// The `Cache-Status` value sent.
    pub cache_status: &'a [u8],
    pub tls: Option<&'a TlsName>,
    pub user_agent: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
    /// Whether every byte was written (HTTP/2: handed to the connection whole).
    pub complete: bool,
    /// HTTP/1.1, or HTTP/2 for a hit the HTTP/2 connection answered itself.
    pub version: http::Version,
}

/// The server name (SNI) a client's TLS connection was set up for, and the TLS version it
/// negotiated. It travels with each request of the connection (as a request extension)
/// so the host asked for can be checked against the certificate the client was shown,
/// and the access log can say how the client connected.
#[derive(Debug, Clone)]
pub struct TlsName(pub Arc<str>, pub TlsVersion);

/// The TLS version of a connection (the listener offers 1.2 and 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}
