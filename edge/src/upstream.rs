//! Talking to upstreams (origins or shields): a pooled HTTP/1.1 client with timeouts, and
//! the header hygiene of a proxy in both directions.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::client_body::{ClientFault, client_fault};
use crate::config::UpstreamConfig;

pub type BoxError = Box<dyn StdError + Send + Sync>;
/// Body of a request sent upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why an upstream exchange failed. Each variant maps to the status the client gets.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream sent no response head within {0:?}")]
    HeadTimeout(Duration),
    #[error("the upstream did not finish the response body within {0:?}")]
    BodyTimeout(Duration),
    #[error("the upstream broke the exchange: {0}")]
    Protocol(String),
    #[error("the shared fetch for this object was lost; retry the request")]
    Lost,
    #[error("all {0} upstream servers of this site are at their connection limit; retry shortly")]
    NoServer(usize),
    /// Shed before it was sent: see [`crate::overload`].
    #[error("{0}")]
    Overloaded(crate::overload::Shed),
    /// The client's request body failed, not the upstream: the client's fault, never
    /// counted against the server (see [`crate::client_body`]).
    #[error("{0}")]
    Client(ClientFault),
}

impl UpstreamError {
    /// The status a client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::HeadTimeout(_) | UpstreamError::BodyTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::NoServer(_) | UpstreamError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamError::Client(fault) => fault.status(),
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A bounded label for metrics and `Cache-Status` details.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::HeadTimeout(_) => "head-timeout",
            UpstreamError::BodyTimeout(_) => "body-timeout",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Lost => "lost",
            UpstreamError::NoServer(_) => "no-server",
            UpstreamError::Overloaded(_) => "overloaded",
            UpstreamError::Client(fault) => fault.kind(),
        }
    }

    /// Whether another server may do better: the exchange failed before any response.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::HeadTimeout(_) | UpstreamError::Protocol(_)
        )
    }
}

/// A pooled client for all upstreams of a node.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, UpstreamBody>,
    response_timeout: Duration,
    body_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            client,
            response_timeout: config.response_timeout,
            body_timeout: config.body_timeout,
        }
    }

    /// Sends a request and waits for the response head.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::HeadTimeout(self.response_timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(match client_fault(&e) {
                Some(fault) => UpstreamError::Client(fault),
                None if e.is_connect() => UpstreamError::Connect(error_chain(&e)),
                None => UpstreamError::Protocol(error_chain(&e)),
            }),
        }
    }

    /// Time allowed for a body being stored.
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }
}

/// An empty request body.
pub fn empty_body() -> UpstreamBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Hop-by-hop fields (RFC 9110 7.6.1), never forwarded or stored.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Request fields that would make a shared fill answer one client's question instead of
/// fetching the whole object: conditionals and ranges are answered by the cache itself.
const CLIENT_SPECIFIC: [HeaderName; 6] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Request fields that change what some origins (or their frameworks) answer but are not
/// part of the cache key: forwarding them would let one client poison the cache for
/// everyone (a redirect to another host or scheme, another route, another method). They
/// are dropped unless the site keys on them (`key_headers`), and this node sets its own
/// `X-Forwarded-For` and `X-Forwarded-Proto`.
pub const UNKEYED: [HeaderName; 16] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("forwarded"),
];

/// Whether a shared fill forwards this request field at all (whatever its value), for a
/// site keying on `keyed` (its `key_headers`).
pub fn forwarded_on_fill(name: &HeaderName, keyed: &[HeaderName]) -> bool {
    !(HOP_BY_HOP.contains(name)
        || (UNKEYED.contains(name) && !keyed.contains(name))
        || CLIENT_SPECIFIC.contains(name)
        || name == header::UPGRADE
        || name == header::HOST)
}

/// Removes hop-by-hop fields, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// What a request forwarded upstream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A fill shared by every client waiting on the key: only what the key covers.
    Fill,
    /// One client's request, passed through as it is.
    Pass,
}

/// The headers to send upstream for a client request.
pub fn forward_request_headers(
    client: &HeaderMap,
    purpose: Purpose,
    host: &HeaderValue,
    via: &HeaderValue,
    client_ip: IpAddr,
    keyed: &[HeaderName],
) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    // The upstream request's framing comes from its body alone, never from the client's
    // word: a forwarded Content-Length could disagree with what is actually sent.
    headers.remove(header::CONTENT_LENGTH);
    for name in UNKEYED.iter().filter(|name| !keyed.contains(name)) {
        headers.remove(name);
    }
    // Only this node's own claims, signed, go upstream (`node_auth`).
    for name in node_api::headers::INTERNAL {
        headers.remove(name);
    }
    if purpose == Purpose::Fill {
        for name in &CLIENT_SPECIFIC {
            headers.remove(name);
        }
        crate::vary::normalize_fill_accept_encoding(&mut headers);
    }
    headers.insert(header::HOST, host.clone());
    append_list(&mut headers, header::VIA, via);
    let ip = HeaderValue::from_str(&client_ip.to_string()).expect("an IP address is a valid value");
    append_list(
        &mut headers,
        HeaderName::from_static("x-forwarded-for"),
        &ip,
    );
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !keyed.contains(&proto) {
        headers.insert(proto, HeaderValue::from_static("http"));
    }
    headers
}

/// Appends `value` to a comma-separated list field, joining existing lines into one.
pub fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    let existing: Vec<&[u8]> = headers
        .get_all(&name)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if existing.is_empty() {
        headers.insert(name, value.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for v in existing {
        joined.extend_from_slice(v);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(name, v);
    }
}

/// Whether a `Via` field already names this node: the request has looped back to us.
pub fn via_names(headers: &HeaderMap, node: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.split_whitespace().nth(1) == Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_headers_drop_hop_by_hop_conditionals_and_unkeyed_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"a\""));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(header::HOST, HeaderValue::from_static("client.example"));
        let out = forward_request_headers(
            &h,
            Purpose::Fill,
            &HeaderValue::from_static("origin.example"),
            &HeaderValue::from_static("1.1 edge-1"),
            "10.0.0.1".parse().unwrap(),
            &[],
        );
        for gone in [
            "x-secret",
            "connection",
            "if-none-match",
            "range",
            "x-forwarded-host",
        ] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out[header::HOST], "origin.example");
        assert_eq!(out[header::ACCEPT], "*/*");
        assert_eq!(out[header::VIA], "1.1 edge-1");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1");

        let pass = forward_request_headers(
            &h,
            Purpose::Pass,
            &HeaderValue::from_static("o"),
            &HeaderValue::from_static("1.1 e"),
            "::1".parse().unwrap(),
            &[],
        );
        assert!(pass.contains_key(header::IF_NONE_MATCH) && pass.contains_key(header::RANGE));
    }

    #[test]
    fn unkeyed_fields_are_dropped_unless_the_site_keys_on_them() {
        let mut h = HeaderMap::new();
        for name in &UNKEYED {
            h.insert(name.clone(), HeaderValue::from_static("evil"));
        }
        let via = HeaderValue::from_static("1.1 e");
        let host = HeaderValue::from_static("o");
        let ip = "10.0.0.1".parse().unwrap();
        let out = forward_request_headers(&h, Purpose::Pass, &host, &via, ip, &[]);
        for name in &UNKEYED {
            if name == "x-forwarded-proto" {
                assert_eq!(out[name], "http", "this node's own value");
            } else {
                assert!(!out.contains_key(name), "{name} forwarded");
            }
        }
        let keyed = [HeaderName::from_static("x-forwarded-host")];
        let out = forward_request_headers(&h, Purpose::Fill, &host, &via, ip, &keyed);
        assert_eq!(out["x-forwarded-host"], "evil");
        assert!(!out.contains_key("x-original-url"));
        assert!(forwarded_on_fill(&keyed[0], &keyed) && !forwarded_on_fill(&keyed[0], &[]));
    }

    #[test]
    fn lists_are_appended_in_order() {
        let mut h = HeaderMap::new();
        h.append(header::VIA, HeaderValue::from_static("1.1 a"));
        h.append(header::VIA, HeaderValue::from_static("1.1 b"));
        append_list(&mut h, header::VIA, &HeaderValue::from_static("1.1 c"));
        assert_eq!(h[header::VIA], "1.1 a, 1.1 b, 1.1 c");
    }

    #[test]
    fn loops_are_recognized_by_pseudonym() {
        let mut h = HeaderMap::new();
        h.insert(
            header::VIA,
            HeaderValue::from_static("1.1 shield, HTTP/1.1 edge-1"),
        );
        assert!(via_names(&h, "edge-1"));
        assert!(!via_names(&h, "edge-2"));
        assert!(!via_names(&h, "edge"));
    }
}
