//! Client conditional requests answered from the cache (RFC 9110 13.1, RFC 9111 4.3.2).
//!
//! A cache that holds a fresh response evaluates `If-None-Match` (weak comparison) and,
//! when that is absent, `If-Modified-Since`, and answers `304 Not Modified` itself instead
//! of sending the body again.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::{DATE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};

use crate::cache::http_date;

/// Whether a request's conditionals say the client's copy of `stored` is current.
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let mut inm = request.get_all(IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let Some(etag) = stored.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return inm
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || weak_eq(tag, etag));
    }
    let Some(since) = date(request, &IF_MODIFIED_SINCE) else {
        return false;
    };
    // Without Last-Modified, the response's Date is its modification time at the latest.
    match date(stored, &LAST_MODIFIED).or_else(|| date(stored, &DATE)) {
        Some(modified) => modified <= since,
        None => false,
    }
}

/// Weak entity-tag comparison: equal opaque tags, `W/` ignored on either side.
fn weak_eq(a: &str, b: &str) -> bool {
    let opaque = |t: &str| t.strip_prefix("W/").unwrap_or(t).to_owned();
    let (a, b) = (opaque(a), opaque(b));
    a.len() >= 2 && a.starts_with('"') && a.ends_with('"') && a == b
}

fn date(headers: &HeaderMap, name: &http::HeaderName) -> Option<SystemTime> {
    http_date::header(headers, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers::headers as map;

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let stored = map(&[("etag", "W/\"v2\"")]);
        assert!(not_modified(&map(&[("if-none-match", "\"v2\"")]), &stored));
        assert!(not_modified(
            &map(&[("if-none-match", "\"v1\", W/\"v2\"")]),
            &stored
        ));
        assert!(not_modified(&map(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&map(&[("if-none-match", "\"v1\"")]), &stored));
        assert!(!not_modified(&map(&[("if-none-match", "v2")]), &stored));
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let stored = map(&[
            ("etag", "\"a\""),
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
        ]);
        let later = "Tue, 03 Nov 2026 10:00:00 GMT";
        let earlier = "Sun, 01 Nov 2026 10:00:00 GMT";
        assert!(not_modified(&map(&[("if-modified-since", later)]), &stored));
        assert!(!not_modified(
            &map(&[("if-modified-since", earlier)]),
            &stored
        ));
        assert!(!not_modified(
            &map(&[("if-modified-since", later), ("if-none-match", "\"b\"")]),
            &stored
        ));
        assert!(!not_modified(
            &map(&[("if-modified-since", "garbage")]),
            &stored
        ));
        assert!(!not_modified(&map(&[]), &stored));
    }
}
