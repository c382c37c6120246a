//! The header hygiene of a proxy in both directions: what a request forwarded upstream
//! carries (and never carries), and the list fields (`Via`) each hop appends to.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cache::fields::{CLIENT_SPECIFIC, HOP_BY_HOP, UNKEYED};

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
    /// A fill shared by every client waiting on the key, or a fetch the cache makes on its
    /// own (a background revalidation, a slice): only what the key covers, and never a
    /// client's credentials (`Authorization`), since whoever happened to start it is not
    /// whom its answer is for.
    Fill,
    /// The fill of one request with credentials, which no other request joins: a fill's
    /// hygiene, with the request's own `Authorization` kept (see
    /// [`crate::cache::lookup::FillFor::Credentialed`]).
    CredentialedFill,
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
        headers.remove(header::AUTHORIZATION);
    }
    if matches!(purpose, Purpose::Fill | Purpose::CredentialedFill) {
        for name in &CLIENT_SPECIFIC {
            headers.remove(name);
        }
        crate::cache::vary::normalize_fill_accept_encoding(&mut headers);
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
    use crate::cache::fields::forwarded_on_fill;

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

    #[test]
    fn credentials_go_only_on_a_credentialed_fill_or_a_pass() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        let via = HeaderValue::from_static("1.1 e");
        let host = HeaderValue::from_static("o");
        let ip = "10.0.0.1".parse().unwrap();
        let shared = forward_request_headers(&h, Purpose::Fill, &host, &via, ip, &[]);
        assert!(!shared.contains_key(header::AUTHORIZATION));
        let own = forward_request_headers(&h, Purpose::CredentialedFill, &host, &via, ip, &[]);
        assert_eq!(own[header::AUTHORIZATION], "Bearer a");
        assert!(!own.contains_key(header::RANGE), "a fill is still a fill");
        let pass = forward_request_headers(&h, Purpose::Pass, &host, &via, ip, &[]);
        assert_eq!(pass[header::AUTHORIZATION], "Bearer a");
    }
}
