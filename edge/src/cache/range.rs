//! Range requests answered from a stored object (RFC 9110 14).
//!
//! Fills never forward the client's `Range` (see [`crate::cache::fields`]): by default a
//! range miss fetches the whole object once, and every later range of it is cut from
//! memory: a single range is a zero-copy slice of the stored body, several ranges a
//! `multipart/byteranges` body of slices. A fill may ask for a range of its own (a partial
//! object's missing bytes, or a site's forwarded ranges, see [`crate::cache::partial`]):
//! [`Spec`] and [`covering_spec`] say what it asks for, [`ContentRange`] reads the answer. A `Range` this cache cannot or will not honour is ignored (the whole object is
//! sent, as RFC 9110 allows); one no byte of the object satisfies gets `416`.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};

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
    let len = body.len() as u64;
    multipart_of(ranges, len, content_type, boundary, |start, end| {
        vec![body.slice(start as usize..=end as usize)]
    })
}

/// The body of a multi-range answer for an object of `len` bytes, whose bytes
/// `start..=end` are the pieces `bytes(start, end)` gives (the caller has checked they are
/// all held).
pub fn multipart_of(
    ranges: &[(u64, u64)],
    len: u64,
    content_type: Option<&str>,
    boundary: &str,
    mut bytes: impl FnMut(u64, u64) -> Vec<Bytes>,
) -> Vec<Bytes> {
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
        parts.extend(bytes(*start, *end));
    }
    parts.push(Bytes::from(format!("\r\n--{boundary}--\r\n")));
    parts
}

/// One byte-range spec as a request names it, before the object's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `first-last`, inclusive.
    FromTo(u64, u64),
    /// `first-`: from `first` to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl Spec {
    /// The `Range` field value asking for this span.
    pub fn header(self) -> String {
        match self {
            Spec::FromTo(first, last) => format!("bytes={first}-{last}"),
            Spec::From(first) => format!("bytes={first}-"),
            Spec::Suffix(n) => format!("bytes=-{n}"),
        }
    }

    /// Whether a `206` carrying `got` is an answer to this spec: it starts where asked
    /// (or, for a suffix, ends the object) and ends no later than asked. A server may send
    /// less than asked, never other bytes.
    pub fn answered_by(self, got: ContentRange) -> bool {
        match self {
            Spec::FromTo(first, last) => got.first == first && got.last <= last,
            Spec::From(first) => got.first == first,
            Spec::Suffix(n) => got.last + 1 == got.total && got.len() <= n,
        }
    }
}

/// The one span a fill may ask for on behalf of a `Range` field value whose object length
/// is not known yet: the span covering every spec of it (`None` when the field is to be
/// ignored, or mixes suffixes with other specs, which cannot be covered without the
/// length). Several specs become one covering span, so the answer is a single part, never
/// `multipart/byteranges`.
pub fn covering_spec(value: &str) -> Option<Spec> {
    let (unit, specs) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let digits = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut covering: Option<Spec> = None;
    for (i, spec) in specs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        if i >= MAX_RANGES {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let spec = match (first.trim(), last.trim()) {
            ("", suffix) => Spec::Suffix(digits(suffix)?),
            (first, "") => Spec::From(digits(first)?),
            (first, last) => {
                let (first, last) = (digits(first)?, digits(last)?);
                if last < first {
                    return None;
                }
                Spec::FromTo(first, last)
            }
        };
        covering = Some(match (covering, spec) {
            (None, spec) => spec,
            (Some(Spec::Suffix(_)), _) | (Some(_), Spec::Suffix(_)) => return None,
            (Some(Spec::FromTo(a, b)), Spec::FromTo(c, d)) => Spec::FromTo(a.min(c), b.max(d)),
            (Some(Spec::From(a) | Spec::FromTo(a, _)), Spec::From(c) | Spec::FromTo(c, _)) => {
                Spec::From(a.min(c))
            }
        });
    }
    match covering {
        Some(Spec::Suffix(0)) => None,
        covering => covering,
    }
}

/// A `Content-Range` of a single-part `206`: bytes `first..=last` of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub total: u64,
}

impl ContentRange {
    /// Bytes in the span.
    pub fn len(self) -> u64 {
        self.last - self.first + 1
    }

    /// Always false: a valid span holds at least one byte.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The one `Content-Range` of `headers`, read strictly: exactly one field, `bytes
    /// first-last/total` with plain digits, `first <= last < total`. An unknown total
    /// (`*`), an unsatisfied-range form, another unit or anything else is `None`: such a
    /// response is not stored.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut fields = headers.get_all(CONTENT_RANGE).iter();
        let value = fields.next()?;
        if fields.next().is_some() {
            return None;
        }
        Self::parse(value.to_str().ok()?)
    }

    /// Parses one `Content-Range` value strictly (see [`ContentRange::of`]).
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix("bytes ")?;
        let (span, total) = rest.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let number = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (first, last, total) = (number(first)?, number(last)?, number(total)?);
        (first <= last && last < total).then_some(Self { first, last, total })
    }
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

    #[test]
    fn content_range_is_read_strictly() {
        let ok = ContentRange::parse("bytes 0-99/1000").expect("valid");
        assert_eq!((ok.first, ok.last, ok.total, ok.len()), (0, 99, 1000, 100));
        assert!(ContentRange::parse("bytes 999-999/1000").is_some());
        for bad in [
            "bytes 0-99/*",
            "bytes */1000",
            "bytes 100-99/1000",
            "bytes 0-1000/1000",
            "bytes 0-99/99",
            "bytes  0-99/1000",
            "bytes 0-99/1000 ",
            "bytes +0-99/1000",
            "bytes 0x0-99/1000",
            "items 0-99/1000",
            "Bytes 0-99/1000",
            "bytes 0-99",
            "bytes 0-99/100000000000000000000",
            "",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad:?}");
        }
        let mut two = HeaderMap::new();
        two.append(CONTENT_RANGE, HeaderValue::from_static("bytes 0-1/10"));
        assert!(ContentRange::of(&two).is_some());
        two.append(CONTENT_RANGE, HeaderValue::from_static("bytes 0-1/10"));
        assert_eq!(ContentRange::of(&two), None, "two fields");
    }

    #[test]
    fn a_fill_asks_for_the_span_covering_the_request() {
        assert_eq!(covering_spec("bytes=0-99"), Some(Spec::FromTo(0, 99)));
        assert_eq!(covering_spec("bytes=500-"), Some(Spec::From(500)));
        assert_eq!(covering_spec("bytes=-100"), Some(Spec::Suffix(100)));
        assert_eq!(
            covering_spec("bytes=200-299, 0-9"),
            Some(Spec::FromTo(0, 299))
        );
        assert_eq!(covering_spec("bytes=200-299, 50-"), Some(Spec::From(50)));
        assert_eq!(covering_spec("bytes=0-9, -5"), None, "mixes a suffix");
        assert_eq!(covering_spec("bytes=-0"), None);
        assert_eq!(covering_spec("bytes=9-0"), None);
        assert_eq!(covering_spec("items=0-9"), None);
        assert_eq!(Spec::FromTo(0, 99).header(), "bytes=0-99");
        assert_eq!(Spec::Suffix(7).header(), "bytes=-7");
    }

    #[test]
    fn a_206_answers_a_spec_only_with_the_bytes_asked_for() {
        let got = |first, last, total| ContentRange { first, last, total };
        assert!(Spec::FromTo(0, 99).answered_by(got(0, 99, 1000)));
        assert!(Spec::FromTo(0, 99).answered_by(got(0, 49, 1000)), "less");
        assert!(!Spec::FromTo(0, 99).answered_by(got(0, 100, 1000)), "more");
        assert!(
            !Spec::FromTo(10, 99).answered_by(got(0, 99, 1000)),
            "elsewhere"
        );
        assert!(Spec::From(10).answered_by(got(10, 999, 1000)));
        assert!(Spec::Suffix(10).answered_by(got(990, 999, 1000)));
        assert!(!Spec::Suffix(10).answered_by(got(980, 989, 1000)));
    }
}
