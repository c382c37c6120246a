//! Range requests answered from a stored object (RFC 9110 14).
//!
//! Fills never forward `Range` (see [`crate::cache::fields`]), so a range miss fetches the
//! whole object once, and every later range of it is cut from memory: a single range is a
//! zero-copy slice of the stored body, several ranges a `multipart/byteranges` body of
//! slices. A `Range` this cache cannot or will not honour is ignored (the whole object is
//! sent, as RFC 9110 allows); one no byte of the object satisfies gets `416`.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{ETAG, IF_RANGE, LAST_MODIFIED, RANGE};

use crate::cache::http_date;

/// More ranges than this in one request are ignored (a cheap defence against requests
/// for thousands of tiny overlapping ranges).
pub const MAX_RANGES: usize = 32;

/// How to answer a request for a stored object of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Send the whole object (no `Range`, an ignored one, or a failed `If-Range`).
    Full,
    /// `206` with these inclusive byte ranges, sorted and merged.
    Partial(Vec<(u64, u64)>),
    /// `416`: no range overlaps the object.
    Unsatisfiable,
}

/// Decides how to answer `request` for a stored object with `stored` headers.
pub fn evaluate(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeAnswer {
    let Some(range) = request.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if request.get_all(RANGE).iter().count() > 1 || !if_range_holds(request, stored) {
        return RangeAnswer::Full;
    }
    match parse(range, len) {
        None => RangeAnswer::Full,
        Some(ranges) if ranges.is_empty() => RangeAnswer::Unsatisfiable,
        Some(ranges) => RangeAnswer::Partial(ranges),
    }
}

/// `If-Range` holds when its strong validator equals the stored one (RFC 9110 13.1.5).
fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let condition = condition.trim();
    if condition.starts_with('"') {
        return stored
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|etag| !etag.starts_with("W/") && etag == condition);
    }
    let Some(date) = http_date::parse(condition) else {
        return false;
    };
    http_date::header(stored, &LAST_MODIFIED).is_some_and(|modified| modified == date)
}

/// Parses `bytes=...` into satisfiable inclusive ranges, sorted and merged. `None` means
/// the header is to be ignored (another unit, bad syntax, too many ranges); an empty list
/// means nothing in it is satisfiable.
pub fn parse(value: &str, len: u64) -> Option<Vec<(u64, u64)>> {
    let (unit, specs) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut ranges = Vec::new();
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if ranges.len() >= MAX_RANGES {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let digits = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let range = match (first.trim(), last.trim()) {
            ("", suffix) => {
                let n = digits(suffix)?;
                (n > 0 && len > 0).then(|| (len.saturating_sub(n), len - 1))
            }
            (first, "") => {
                let start = digits(first)?;
                (start < len).then(|| (start, len - 1))
            }
            (first, last) => {
                let (start, end) = (digits(first)?, digits(last)?);
                if end < start {
                    return None; // invalid syntax: ignore the whole header
                }
                (start < len).then(|| (start, end.min(len - 1)))
            }
        };
        ranges.extend(range);
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    Some(merged)
}

/// The body of a multi-range answer, as slices of `body` between part headers.
pub fn multipart(
    body: &Bytes,
    ranges: &[(u64, u64)],
    content_type: Option<&str>,
    boundary: &str,
) -> Vec<Bytes> {
    let len = body.len();
    let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
    for (start, end) in ranges {
        let mut head = format!("\r\n--{boundary}\r\n");
        if let Some(content_type) = content_type {
            head.push_str("content-type: ");
            head.push_str(content_type);
            head.push_str("\r\n");
        }
        head.push_str(&format!("content-range: bytes {start}-{end}/{len}\r\n\r\n"));
        parts.push(Bytes::from(head));
        parts.push(body.slice(*start as usize..=*end as usize));
    }
    parts.push(Bytes::from(format!("\r\n--{boundary}--\r\n")));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req(range: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_static(range));
        h
    }

    #[test]
    fn single_ranges_of_every_form() {
        assert_eq!(parse("bytes=0-99", 1000), Some(vec![(0, 99)]));
        assert_eq!(parse("bytes=900-", 1000), Some(vec![(900, 999)]));
        assert_eq!(parse("bytes=-100", 1000), Some(vec![(900, 999)]));
        assert_eq!(parse("bytes=-5000", 1000), Some(vec![(0, 999)]));
        assert_eq!(parse("bytes=990-5000", 1000), Some(vec![(990, 999)]));
        assert_eq!(parse("BYTES = 0-0", 1000), Some(vec![(0, 0)]));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        assert_eq!(
            parse("bytes=50-60, 0-9, 10-19, 55-70", 1000),
            Some(vec![(0, 19), (50, 70)])
        );
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(parse("bytes=1000-", 1000), Some(vec![]));
        assert_eq!(parse("bytes=-0", 1000), Some(vec![]));
        assert_eq!(parse("items=0-1", 1000), None);
        assert_eq!(parse("bytes=5-1", 1000), None);
        assert_eq!(parse("bytes=a-b", 1000), None);
        assert_eq!(parse("bytes=1", 1000), None);
        let many: String = (0..40).map(|i| format!("{},", i * 10)).collect::<String>();
        let many = format!("bytes={}", many.replace(',', "-1,"));
        assert_eq!(parse(&many, 10_000), None);
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut stored = HeaderMap::new();
        stored.insert(ETAG, HeaderValue::from_static("\"v1\""));
        stored.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Mon, 02 Nov 2026 10:00:00 GMT"),
        );
        let with = |cond: &'static str| {
            let mut h = req("bytes=0-1");
            h.insert(IF_RANGE, HeaderValue::from_static(cond));
            evaluate(&h, &stored, 10)
        };
        assert_eq!(with("\"v1\""), RangeAnswer::Partial(vec![(0, 1)]));
        assert_eq!(with("\"v0\""), RangeAnswer::Full);
        assert_eq!(with("W/\"v1\""), RangeAnswer::Full);
        assert_eq!(
            with("Mon, 02 Nov 2026 10:00:00 GMT"),
            RangeAnswer::Partial(vec![(0, 1)])
        );
        assert_eq!(with("Tue, 03 Nov 2026 10:00:00 GMT"), RangeAnswer::Full);
        assert_eq!(
            evaluate(&req("bytes=20-"), &stored, 10),
            RangeAnswer::Unsatisfiable
        );
    }

    #[test]
    fn multipart_bodies_carry_part_headers_and_slices() {
        let body = Bytes::from_static(b"0123456789");
        let parts = multipart(&body, &[(0, 1), (8, 9)], Some("text/plain"), "B");
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let text = String::from_utf8(joined).unwrap();
        assert_eq!(
            text,
            "\r\n--B\r\ncontent-type: text/plain\r\ncontent-range: bytes 0-1/10\r\n\r\n01\
             \r\n--B\r\ncontent-type: text/plain\r\ncontent-range: bytes 8-9/10\r\n\r\n89\
             \r\n--B--\r\n"
        );
    }
}
