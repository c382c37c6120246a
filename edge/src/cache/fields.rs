//! Which request fields a shared fill forwards, and so which fields can select a variant.
//!
//! A variant's signature is computed from what the upstream saw for its fill (see
//! [`crate::cache::vary`]): a field a fill never forwards cannot have changed the answer,
//! so it counts as absent. The lists here are therefore part of the cache's keying rules;
//! the upstream layer's header hygiene applies the same lists when it builds the request.

use http::header::{self, HeaderName};

/// Hop-by-hop fields (RFC 9110 7.6.1), never forwarded or stored.
pub const HOP_BY_HOP: [HeaderName; 8] = [
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
/// fetching the whole object: conditionals and ranges are answered by the cache itself. (A
/// fill that asks for a range sets its own `Range`/`If-Range`, see
/// [`crate::cache::partial::plan`].)
pub const CLIENT_SPECIFIC: [HeaderName; 6] = [
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
