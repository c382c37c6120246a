//! Early data (TLS 1.3 0-RTT) on HTTP/3: off unless a site opts in (`h3_early_data`), and
//! then for safe methods only.
//!
//! A client resuming a session may send requests in its first flight, before the
//! handshake proves anything: a round trip saved, but whoever copies that flight can
//! replay it. So:
//!
//! - **The TLS layer accepts early data only for the sites that opted in.** rustls decides
//!   from its config alone (`max_early_data_size`), and the QUIC endpoint has one config,
//!   yet the site is known only from the server name (SNI) inside the ClientHello. So the
//!   endpoint's crypto is [`ByServerName`]: each connection's TLS session is started once
//!   its ClientHello is whole, with
//!   [`Certificates::quic_early_data_config`](tls_certs::Certificates::quic_early_data_config)
//!   when the name's site opted in and with the plain config (stateless tickets, no early
//!   data) otherwise. A client of any other site has its 0-RTT packets discarded and sends
//!   them again after the handshake; its tickets never even offer early data. The
//!   early-data config's tickets are single-use, so the same first flight replayed to this
//!   node resumes nothing.
//! - **Requests that arrive before the handshake completes are [`Arrival::Early`]**: only
//!   a safe method without a body ([`may_answer_early`]) is answered, and it is marked
//!   `Early-Data: 1` (RFC 8470 5.1) for the handler and the upstream; anything else gets
//!   `425 Too Early` and the client sends it again once the handshake is done. A request
//!   read after the handshake completed is answered as any other: the handshake proved the
//!   client, and a replayed flight never completes one (RFC 8470 3 lets a server wait).
//!
//! With no site opted in, connections get the plain session directly and nothing is read
//! ahead of rustls.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderValue, Method, header};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::crypto::{self, Keys, ServerConfig as _, Session};
use quinn::{ConnectionId, Side};
use quinn_proto::TransportError;
use quinn_proto::transport_parameters::TransportParameters;
use tls_certs::Certificates;

/// The request field that marks a request received in early data (RFC 8470 5.1).
pub static EARLY_DATA: header::HeaderName = header::HeaderName::from_static("early-data");

/// The QUIC endpoint's crypto: a TLS session per connection, with or without early data
/// by the site the ClientHello names (see the module docs).
pub struct ByServerName {
    certificates: Arc<Certificates>,
    plain: Arc<QuicServerConfig>,
    early: Arc<QuicServerConfig>,
}

impl std::fmt::Debug for ByServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByServerName").finish_non_exhaustive()
    }
}

impl ByServerName {
    /// Sessions over `certificates`' two QUIC configs; the error says which one QUIC
    /// cannot use.
    pub fn new(certificates: Arc<Certificates>) -> Result<Self, String> {
        let quic = |tls: Result<rustls::ServerConfig, tls_certs::TlsError>, which: &str| {
            let tls = tls.map_err(|e| format!("the {which} TLS config: {e}"))?;
            QuicServerConfig::try_from(tls)
                .map(Arc::new)
                .map_err(|e| format!("the {which} TLS config cannot carry QUIC: {e}"))
        };
        Ok(Self {
            plain: quic(certificates.quic_server_config(), "HTTP/3")?,
            early: quic(certificates.quic_early_data_config(), "HTTP/3 early-data")?,
            certificates,
        })
    }
}

impl crypto::ServerConfig for ByServerName {
    // Initial keys and Retry tags depend on the QUIC version and connection ids only:
    // both configs give the same.
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, crypto::UnsupportedVersion> {
        self.plain.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.plain.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn Session> {
        let plain = self.plain.clone().start_session(version, params);
        if !self.certificates.any_early_data() {
            return plain;
        }
        Box::new(Choosing {
            session: plain,
            hello: Some(Vec::new()),
            version,
            params: *params,
            config: self,
        })
    }
}

/// A server session that holds the client's first handshake bytes until its ClientHello
/// is whole, then runs on the session its server name calls for. Until then it is the
/// plain session, fed nothing (it has nothing to send and no keys beyond the initial
/// ones, which both sessions share).
struct Choosing {
    session: Box<dyn Session>,
    /// The ClientHello so far; `None` once the session is chosen.
    hello: Option<Vec<u8>>,
    version: u32,
    params: TransportParameters,
    config: Arc<ByServerName>,
}

impl Session for Choosing {
    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let Some(hello) = &mut self.hello else {
            return self.session.read_handshake(buf);
        };
        hello.extend_from_slice(buf);
        match client_hello_server_name(hello) {
            Hello::Partial => return Ok(false),
            Hello::Name(name) if self.config.certificates.early_data(name) => {
                self.session = self
                    .config
                    .early
                    .clone()
                    .start_session(self.version, &self.params);
            }
            // The plain session refuses what is malformed, or names no site, itself.
            Hello::Name(_) | Hello::Other => {}
        }
        let hello = self.hello.take().unwrap_or_default();
        self.session.read_handshake(&hello)
    }

    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.session.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.session.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.session.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        self.session.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.session.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.session.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.session.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<crypto::KeyPair<Box<dyn crypto::PacketKey>>> {
        self.session.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.session.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), crypto::ExportKeyingMaterialError> {
        self.session.export_keying_material(output, label, context)
    }
}

/// The largest ClientHello read ahead of rustls; a larger one is left to rustls (which
/// refuses it) without choosing.
const MAX_HELLO: usize = 64 * 1024;

/// What the client's first handshake bytes say of its server name.
#[derive(Debug, PartialEq, Eq)]
enum Hello<'a> {
    /// The ClientHello is not whole yet.
    Partial,
    /// It names this host (SNI `host_name`).
    Name(&'a str),
    /// No server name, or not a ClientHello this reads: left to rustls.
    Other,
}

/// The server name of the TLS ClientHello `bytes` begin with (RFC 8446 4.1.2, the
/// `server_name` extension of RFC 6066 3), as QUIC carries it: handshake messages
/// without records.
fn client_hello_server_name(bytes: &[u8]) -> Hello<'_> {
    const CLIENT_HELLO: u8 = 1;
    let Some(&[kind, a, b, c]) = bytes.get(..4) else {
        return Hello::Partial;
    };
    let length = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if kind != CLIENT_HELLO || length > MAX_HELLO {
        return Hello::Other;
    }
    match bytes.get(4..4 + length) {
        None => Hello::Partial,
        Some(body) => server_name(body).map_or(Hello::Other, Hello::Name),
    }
}

fn server_name(body: &[u8]) -> Option<&str> {
    let mut hello = Reader(body);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vec8()?; // legacy_session_id
    hello.vec16()?; // cipher_suites
    hello.vec8()?; // legacy_compression_methods
    let mut extensions = Reader(hello.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut names = Reader(Reader(data).vec16()?);
        while !names.0.is_empty() {
            let name_type = names.take(1)?[0];
            let name = names.vec16()?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok();
            }
        }
        return None;
    }
    None
}

/// Big-endian fields off the front of a byte string; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.take(1)?[0];
        self.take(n.into())
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n.into())
    }
}

/// When a request was read, as far as replay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// After the handshake completed.
    Confirmed,
    /// Before: it came in early data and may be a replay.
    Early,
}

/// Whether a connection's handshake has completed, as its request tasks ask it: set once
/// by the connection's task when quinn says so.
#[derive(Debug, Clone, Default)]
pub struct Confirmation(Option<Arc<AtomicBool>>);

impl Confirmation {
    /// A connection served only once its handshake completed.
    pub fn completed() -> Self {
        Self(None)
    }

    /// A connection served from early data on, its handshake still in progress.
    pub fn in_progress() -> Self {
        Self(Some(Arc::new(AtomicBool::new(false))))
    }

    /// The handshake completed (for requests read from now on).
    pub fn complete(&self) {
        if let Some(done) = &self.0 {
            done.store(true, Ordering::Release);
        }
    }

    /// How a request read now arrived.
    pub fn arrival(&self) -> Arrival {
        match &self.0 {
            Some(done) if !done.load(Ordering::Acquire) => Arrival::Early,
            _ => Arrival::Confirmed,
        }
    }
}

/// Whether a request received in early data may be answered before the handshake
/// completes (RFC 8470 and RFC 9110 9.2.1): a safe method, and no body, which a replay
/// could otherwise deliver to an upstream again. Everything else gets `425 Too Early`.
pub fn may_answer_early(method: &Method, headers: &HeaderMap) -> bool {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let no_body = headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|length| length.as_bytes() == b"0");
    safe && no_body && !headers.contains_key(header::TRANSFER_ENCODING)
}

/// Marks a request received in early data for the handler and the upstream.
pub fn mark(headers: &mut HeaderMap) {
    headers.insert(EARLY_DATA.clone(), HeaderValue::from_static("1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with `extensions` (type, data) as QUIC carries it.
    fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        let mut exts = Vec::new();
        for (kind, data) in extensions {
            exts.extend(kind.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut message = vec![1];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    fn sni(host: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend((host.len() as u16).to_be_bytes());
        entry.extend(host.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (0, data)
    }

    #[test]
    fn the_server_name_is_read_from_a_whole_client_hello_wherever_the_extension_is() {
        let hello = client_hello(&[(43, vec![2, 3, 4]), sni("assets.test"), (16, vec![0; 5])]);
        assert_eq!(client_hello_server_name(&hello), Hello::Name("assets.test"));
        for cut in [0, 3, 4, 40, hello.len() - 1] {
            assert_eq!(
                client_hello_server_name(&hello[..cut]),
                Hello::Partial,
                "{cut}"
            );
        }
    }

    #[test]
    fn no_name_or_a_malformed_hello_is_left_to_rustls() {
        assert_eq!(
            client_hello_server_name(&client_hello(&[(43, vec![2, 3, 4])])),
            Hello::Other
        );
        let mut broken = client_hello(&[sni("assets.test")]);
        let last = broken.len() - 1;
        broken[last - 12] = 0xff; // the name's length points past the end
        assert_eq!(client_hello_server_name(&broken), Hello::Other);
        assert_eq!(client_hello_server_name(&[2, 0, 0, 1, 0]), Hello::Other);
        assert_eq!(client_hello_server_name(&[1, 0xff, 0, 0]), Hello::Other);
    }

    #[test]
    fn only_safe_methods_without_a_body_are_answered_from_early_data() {
        let mut headers = HeaderMap::new();
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(may_answer_early(&method, &headers), "{method}");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(!may_answer_early(&method, &headers), "{method}");
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(may_answer_early(&Method::GET, &headers));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(!may_answer_early(&Method::GET, &headers));
    }

    #[test]
    fn a_request_is_early_until_the_handshake_completes() {
        assert_eq!(Confirmation::completed().arrival(), Arrival::Confirmed);
        let handshake = Confirmation::in_progress();
        let seen_by_a_request = handshake.clone();
        assert_eq!(seen_by_a_request.arrival(), Arrival::Early);
        handshake.complete();
        assert_eq!(seen_by_a_request.arrival(), Arrival::Confirmed);
    }
}
