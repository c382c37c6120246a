//! What the cache did with a request, in one place: the RFC 9211 `Cache-Status` header,
//! the logs and the metric labels all come from these enums, so they cannot disagree.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::cache::control::structured_field;

/// The `Cache-Status` field (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// `detail` of an answer served stale because the upstream failed.
pub const STALE_IF_ERROR: &str = "stale-if-error";

/// Whether the nearest cache upstream (the last member of the response's `Cache-Status`)
/// says it served this response stale because its own upstream failed: then this node's
/// answer is stale-if-error too, whatever its own entry says, and is labelled so.
pub fn upstream_served_stale_on_error(headers: &HeaderMap) -> bool {
    let Some(joined) = structured_field(headers, &CACHE_STATUS) else {
        return false;
    };
    let Ok(list) = sfv::Parser::new(&joined).parse::<sfv::List>() else {
        return false;
    };
    let Some(sfv::ListEntry::Item(last)) = list.last() else {
        return false;
    };
    last.params.iter().any(|(key, value)| {
        key.as_str() == "detail"
            && match value {
                sfv::BareItem::Token(t) => t.as_str() == STALE_IF_ERROR,
                sfv::BareItem::String(s) => s.as_str() == STALE_IF_ERROR,
                _ => false,
            }
    })
}

/// Outcome of a request, as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Served from cache without contacting the upstream.
    Hit,
    /// Not in cache; fetched from the upstream.
    Miss,
    /// In cache but stale; fetched again or revalidated.
    Stale,
    /// Not eligible for caching (method, request headers); forwarded as is.
    Pass,
    /// Refused before any upstream contact (unknown host, bad request, loop).
    Refused,
    /// The upstream failed and nothing could be served from cache.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Stale,
        Outcome::Pass,
        Outcome::Refused,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Pass => "pass",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// Why a request went forward to the upstream (RFC 9211 `fwd` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// No entry for the key.
    UriMiss,
    /// The URL is cached, but not the variant this request selects.
    VaryMiss,
    /// An entry existed but was stale.
    Stale,
    /// The request made the cache forward it: it carried `Authorization` and what is
    /// stored was stored for requests without credentials.
    Request,
    /// The method is never served from cache.
    Method,
    /// A partial object was stored, but it did not hold every byte the request needs: the
    /// missing ones were asked for (see [`crate::cache::partial`]).
    Partial,
}

impl Forward {
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
            Forward::Method => "method",
            Forward::Partial => "partial",
        }
    }
}

/// Why a response was not stored; `detail` in `Cache-Status` and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCacheReason {
    NoStore,
    Private,
    /// No explicit freshness and heuristics are off or do not apply.
    NoFreshness,
    SetCookie,
    /// `Vary: *`: no later request can be known to match.
    Vary,
    /// The status code is never stored (e.g. 304, 1xx; a 206 only as a partial object).
    Status,
    /// Larger than `cache.max_object_size`.
    TooLarge,
    /// The request carried `Authorization` and the response did not allow sharing.
    Authorization,
    /// `must-understand` with a status this cache does not understand.
    MustUnderstand,
    /// Not a GET.
    Method,
    /// A `206` whose `Content-Range` is missing, malformed, of unknown length, or not the
    /// span asked for (or whose body is not that many bytes).
    ContentRange,
    /// A response to a POST whose `Content-Location` does not name the POST's target.
    ContentLocation,
}

impl NoCacheReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NoCacheReason::NoStore => "no-store",
            NoCacheReason::Private => "private",
            NoCacheReason::NoFreshness => "no-freshness",
            NoCacheReason::SetCookie => "set-cookie",
            NoCacheReason::Vary => "vary",
            NoCacheReason::Status => "status",
            NoCacheReason::TooLarge => "too-large",
            NoCacheReason::Authorization => "authorization",
            NoCacheReason::MustUnderstand => "must-understand",
            NoCacheReason::Method => "method",
            NoCacheReason::ContentRange => "content-range",
            NoCacheReason::ContentLocation => "content-location",
        }
    }
}

/// One cache's member of a `Cache-Status` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<Forward>,
    pub fwd_status: Option<u16>,
    /// Remaining freshness in seconds; negative when stale.
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> Self {
        Self {
            hit: true,
            ttl: Some(ttl),
            ..Self::forwarded(Forward::UriMiss)
        }
    }

    pub fn forwarded(fwd: Forward) -> Self {
        Self {
            hit: false,
            fwd: Some(fwd),
            fwd_status: None,
            ttl: None,
            stored: false,
            collapsed: false,
            detail: None,
        }
    }

    /// Renders this member after the upstream's members (RFC 9211: the cache closest to
    /// the user comes last).
    pub fn render(&self, node: &str, upstream: Option<&str>) -> HeaderValue {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out, node, upstream);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
            .unwrap_or_else(|_| HeaderValue::from_static("edge"))
    }

    /// Appends the field value (as [`CacheStatus::render`] makes it) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>, node: &str, upstream: Option<&str>) {
        if let Some(up) = upstream {
            out.extend_from_slice(up.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(node.as_bytes());
        if self.hit {
            out.extend_from_slice(b"; hit");
        } else if let Some(fwd) = self.fwd {
            out.extend_from_slice(b"; fwd=");
            out.extend_from_slice(fwd.as_str().as_bytes());
        }
        let mut digits = itoa::Buffer::new();
        if let Some(status) = self.fwd_status {
            out.extend_from_slice(b"; fwd-status=");
            out.extend_from_slice(digits.format(status).as_bytes());
        }
        if let Some(ttl) = self.ttl {
            out.extend_from_slice(b"; ttl=");
            out.extend_from_slice(digits.format(ttl).as_bytes());
        }
        if self.stored {
            out.extend_from_slice(b"; stored");
        }
        if self.collapsed {
            out.extend_from_slice(b"; collapsed");
        }
        if let Some(detail) = self.detail {
            out.extend_from_slice(b"; detail=");
            out.extend_from_slice(detail.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_nearest_upstream_cache_s_stale_if_error_counts() {
        use crate::cache::test_headers::headers;
        let says = |value: &str| {
            super::upstream_served_stale_on_error(&headers(&[("cache-status", value)]))
        };
        assert!(says(
            "shield; fwd=stale; fwd-status=503; detail=stale-if-error"
        ));
        assert!(says(
            "origin-cache; hit, shield; fwd=stale; detail=\"stale-if-error\""
        ));
        assert!(!says(
            "shield; fwd=stale; detail=stale-if-error, nearer; hit"
        ));
        assert!(!says("shield; fwd=stale; fwd-status=304"));
        assert!(!says("shield; detail=stale-if-error; &&"));
        assert!(!super::upstream_served_stale_on_error(&headers(&[])));
    }

    use super::*;

    #[test]
    fn renders_rfc9211_members() {
        assert_eq!(
            CacheStatus::hit(42).render("edge-1", None),
            "edge-1; hit; ttl=42"
        );
        let mut miss = CacheStatus::forwarded(Forward::UriMiss);
        miss.fwd_status = Some(200);
        miss.stored = true;
        assert_eq!(
            miss.render("edge-1", Some("shield; fwd=uri-miss")),
            "shield; fwd=uri-miss, edge-1; fwd=uri-miss; fwd-status=200; stored"
        );
        let mut pass = CacheStatus::forwarded(Forward::Method);
        pass.detail = Some(NoCacheReason::Method.as_str());
        assert_eq!(pass.render("e", None), "e; fwd=method; detail=method");
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
