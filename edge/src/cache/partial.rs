//! Partial objects: `206` responses kept as the object's head plus the byte spans received
//! (RFC 9111 3.3-3.4), answered from when a request's ranges lie inside them, and
//! completed with one ranged request for what is missing.
//!
//! A partial object ([`PartialObject`], stored as
//! [`Entry::Partial`](crate::cache::store::Entry::Partial) under the URL's key, or its
//! variant's) is what sliced objects ([`crate::cache::slice`]) are for large objects, for
//! objects under `max_object_size` whose upstream answered with `206`: the head of the
//! object as a `200` would carry it (the newest `206`'s fields, without `Content-Range`,
//! with `Content-Length` the complete length from `Content-Range`; its freshness is that
//! `206`'s own, from its `Cache-Control`/`Expires`), the validator the spans are stitched
//! by, and the spans ([`Spans`]).
//!
//! When a range miss forwards `Range` ([`plan`]):
//! - The URL has a partial object (fresh or not): the upstream has answered it with a
//!   `206` before, so a request needing bytes that are not held asks for exactly those:
//!   one `Range` of the span covering every missing byte the request needs, with `If-Range`
//!   holding the object's validator (so a `206` is the same version, and a `200` the new
//!   one, which replaces the partial object). A stale partial object asks for every byte
//!   the request needs (its spans are kept when the `206` shows the validator still holds).
//! - Nothing is held and the site says `range_miss = "forward"`: the client's ranges, as
//!   the one span covering them ([`range::covering_spec`]), without `If-Range`.
//! - Otherwise (`range_miss = "whole"`, the default): the fill asks for the whole object,
//!   as it always did; an ordinary origin answers `200`, every later range of it is then a
//!   hit, and one fetch costs less than one per range for objects this size. A site whose
//!   upstream answers only ranges sets `forward`; one that answers a fill without `Range`
//!   with a `206` anyway is learnt from: that `206` is stored, and from then on the URL's
//!   misses ask for ranges (the rule above).
//!
//! One covering span, not several: a multi-range request would come back as
//! `multipart/byteranges`, which would need a parser for upstream bodies; the covering
//! span re-fetches the held bytes between gaps, bounded by the object's size (at most
//! `max_object_size`), and keeps one request, one strictly checked `Content-Range`.
//!
//! Invariants:
//! - Spans are combined only under the same complete length and the same strong validator
//!   (equal strong `ETag`, or, with no strong `ETag` on either, the same `Last-Modified`):
//!   bytes of two versions are never stitched together. A `206` without a validator is
//!   kept alone and replaced by the next one.
//! - A `206` is stored only with exactly one `Content-Range` of a known length, read
//!   strictly ([`range::ContentRange`]), answering the span asked for, with a body of
//!   exactly that many bytes; anything else is passed through and not stored.
//! - At most [`MAX_SPANS`] spans per object: a `206` that would make more replaces them.
//!   Every held byte counts against the store's capacity ([`PartialObject::weight`]).
//! - When every byte is held the object is stored as a complete `200`, served as any
//!   other, and the partial object is gone.
//! - A partial object answers only requests whose every range lies inside one of its spans,
//!   only while fresh (never stale, neither while revalidating nor on error).

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};

use crate::cache::range::{self, ContentRange, RangeAnswer, Spec};
use crate::cache::store::StoredResponse;

/// Most byte spans one partial object holds.
pub const MAX_SPANS: usize = 8;

/// Bytes charged per span beyond its bytes (the `Bytes` handle, the vector slot).
const SPAN_OVERHEAD: usize = 64;

/// What a range miss asks the upstream for when nothing is held for the URL (a site's
/// `range_miss`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeMiss {
    /// The whole object, so that every later range of it is a hit.
    #[default]
    Whole,
    /// The client's ranges (as one covering span): for upstreams that answer only ranges.
    Forward,
}

/// The validator spans of an object are stitched by: its strong `ETag`, else its
/// `Last-Modified`; `None` when it has neither (then nothing is stitched).
pub fn stitch_validator(headers: &HeaderMap) -> Option<HeaderValue> {
    strong_etag(headers).or_else(|| headers.get(header::LAST_MODIFIED).cloned())
}

/// The response's `ETag`, when it is a strong one.
pub fn strong_etag(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(header::ETAG)
        .filter(|etag| !etag.as_bytes().starts_with(b"W/"))
        .cloned()
}

/// Byte spans of an object: sorted, disjoint and never adjacent (touching spans are one),
/// each one buffer, so a range inside what is held lies inside one span and is one
/// zero-copy slice.
#[derive(Debug, Clone, Default)]
pub struct Spans(Vec<(u64, Bytes)>);

impl Spans {
    /// One span: `bytes` starting at byte `first`.
    pub fn new(first: u64, bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return Self::default();
        }
        Self(vec![(first, bytes)])
    }

    /// Number of spans.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        self.0.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// The inclusive spans held.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0
            .iter()
            .map(|(first, bytes)| (*first, first + bytes.len() as u64 - 1))
    }

    /// Bytes `first..=last`, when they are held.
    pub fn slice(&self, first: u64, last: u64) -> Option<Bytes> {
        let (start, bytes) = self
            .0
            .iter()
            .find(|(start, bytes)| *start <= first && last < start + bytes.len() as u64)?;
        Some(bytes.slice((first - start) as usize..=(last - start) as usize))
    }

    /// These spans with `bytes` at `first` added: the new bytes win where they overlap
    /// held ones, and spans that overlap or touch become one buffer.
    pub fn with(&self, first: u64, bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return self.clone();
        }
        let last = first + bytes.len() as u64 - 1;
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut joined: Vec<(u64, Bytes)> = Vec::new();
        for (start, held) in &self.0 {
            let end = start + held.len() as u64 - 1;
            if end.saturating_add(1) < first || *start > last.saturating_add(1) {
                out.push((*start, held.clone()));
            } else {
                joined.push((*start, held.clone()));
            }
        }
        let merged = if joined.is_empty() {
            (first, bytes)
        } else {
            let start = joined[0].0.min(first);
            let (tail_start, tail) = &joined[joined.len() - 1];
            let end = (tail_start + tail.len() as u64 - 1).max(last);
            let mut buf = BytesMut::with_capacity((end - start + 1) as usize);
            // Held bytes before the new ones, the new ones, held bytes after them.
            if joined[0].0 < first {
                buf.extend_from_slice(&joined[0].1[..(first - joined[0].0) as usize]);
            }
            buf.extend_from_slice(&bytes);
            let tail_end = tail_start + tail.len() as u64 - 1;
            if tail_end > last {
                buf.extend_from_slice(&tail[(last + 1 - tail_start) as usize..]);
            }
            (start, buf.freeze())
        };
        out.push(merged);
        out.sort_unstable_by_key(|(start, _)| *start);
        Self(out)
    }

    /// The parts of `wanted` (sorted, disjoint inclusive ranges) that are not held.
    pub fn missing(&self, wanted: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        for &(first, last) in wanted {
            let mut from = first;
            for (start, end) in self.ranges() {
                if end < from || start > last {
                    continue;
                }
                if start > from {
                    gaps.push((from, start - 1));
                }
                from = end.saturating_add(1);
                if from > last {
                    break;
                }
            }
            if from <= last {
                gaps.push((from, last));
            }
        }
        gaps
    }

    /// The whole object, when one span holds all `total` bytes of it.
    pub fn whole(&self, total: u64) -> Option<Bytes> {
        match &self.0[..] {
            [(0, bytes)] if bytes.len() as u64 == total => Some(bytes.clone()),
            _ => None,
        }
    }
}

/// The one span from the first to the last of `ranges` (sorted).
pub fn covering(ranges: &[(u64, u64)]) -> Option<(u64, u64)> {
    Some((ranges.first()?.0, ranges.last()?.1))
}

/// An object of which only some byte spans are held.
#[derive(Debug)]
pub struct PartialObject {
    /// The object's head as a `200` carries it (no body): the newest `206`'s fields
    /// without `Content-Range`, `Content-Length` the complete length; its freshness.
    pub head: StoredResponse,
    /// The complete length.
    pub total: u64,
    /// What the spans are stitched by ([`stitch_validator`]); sent as `If-Range`.
    pub validator: Option<HeaderValue>,
    pub spans: Spans,
}

impl PartialObject {
    /// Whether bytes of a `206` of `total` bytes with `validator` may join these spans:
    /// the same length and the same validator, which must exist.
    pub fn combines_with(&self, validator: Option<&HeaderValue>, total: u64) -> bool {
        total == self.total && validator.is_some() && self.validator.as_ref() == validator
    }

    /// Bytes of memory this entry holds, for the byte-weighted capacity.
    pub fn weight(&self) -> usize {
        self.head.weight()
            + usize::try_from(self.spans.held()).unwrap_or(usize::MAX)
            + self.spans.count() * SPAN_OVERHEAD
    }
}

/// The spans after a `206` of `got` (of an object with `validator`) arrived with `bytes`,
/// given what `held` for the URL: combined when they may be, else the new span alone
/// (also when combining would hold more than [`MAX_SPANS`]).
pub fn stitch(
    held: Option<&PartialObject>,
    validator: Option<&HeaderValue>,
    got: ContentRange,
    bytes: Bytes,
) -> Spans {
    match held {
        Some(held) if held.combines_with(validator, got.total) => {
            let spans = held.spans.with(got.first, bytes.clone());
            if spans.count() <= MAX_SPANS {
                spans
            } else {
                Spans::new(got.first, bytes)
            }
        }
        _ => Spans::new(got.first, bytes),
    }
}

/// A fill that asks for a range: the span, and the validator sent as `If-Range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeFill {
    pub spec: Spec,
    pub if_range: Option<HeaderValue>,
    /// It asks for bytes missing from a stored partial object (`fwd=partial`).
    pub completes: bool,
}

impl RangeFill {
    /// The `Range` field value.
    pub fn range(&self) -> HeaderValue {
        HeaderValue::from_str(&self.spec.header()).unwrap_or(HeaderValue::from_static("bytes=0-"))
    }
}

/// What a fill for `request` asks the upstream for: a range ([`RangeFill`]), or `None`
/// for the whole object (see the module docs for the rule). `partial` is what is held for
/// the URL and whether it is fresh; `head_only` says the request is a HEAD.
pub fn plan(
    mode: RangeMiss,
    request: &HeaderMap,
    head_only: bool,
    partial: Option<(&PartialObject, bool)>,
) -> Option<RangeFill> {
    let Some((held, fresh)) = partial else {
        if mode == RangeMiss::Whole || head_only {
            return None;
        }
        let mut ranges = request.get_all(header::RANGE).iter();
        let value = ranges.next()?.to_str().ok()?;
        if ranges.next().is_some() {
            return None;
        }
        return Some(RangeFill {
            spec: range::covering_spec(value)?,
            if_range: None,
            completes: false,
        });
    };
    let total = held.total;
    let needed = if head_only {
        vec![(0, 0)]
    } else {
        match range::evaluate(request, &held.head.client_headers(), total) {
            RangeAnswer::Full => vec![(0, total - 1)],
            RangeAnswer::Partial(ranges) => ranges,
            RangeAnswer::Unsatisfiable => vec![(0, 0)],
        }
    };
    let stitched = fresh && held.validator.is_some();
    let missing = if stitched {
        held.spans.missing(&needed)
    } else {
        Vec::new()
    };
    let (first, last) = covering(if missing.is_empty() {
        &needed
    } else {
        &missing
    })?;
    Some(RangeFill {
        spec: Spec::FromTo(first, last),
        if_range: held.validator.clone(),
        completes: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::freshness::Freshness;
    use crate::cache::test_headers::headers;
    use http::StatusCode;

    fn bytes(range: std::ops::RangeInclusive<u8>) -> Bytes {
        Bytes::from(range.collect::<Vec<u8>>())
    }

    fn spans(parts: &[(u64, std::ops::RangeInclusive<u8>)]) -> Spans {
        parts.iter().fold(Spans::default(), |s, (first, b)| {
            s.with(*first, bytes(b.clone()))
        })
    }

    #[test]
    fn spans_merge_when_they_touch_or_overlap_and_stay_apart_otherwise() {
        let s = spans(&[(0, 0..=9), (20, 20..=29)]);
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(0, 9), (20, 29)]);
        let touching = s.with(10, bytes(10..=19));
        assert_eq!(touching.ranges().collect::<Vec<_>>(), [(0, 29)]);
        assert_eq!(touching.whole(30), Some(bytes(0..=29)));
        assert_eq!(touching.whole(31), None);
        let overlapping = s.with(5, bytes(5..=24));
        assert_eq!(overlapping.ranges().collect::<Vec<_>>(), [(0, 29)]);
        assert_eq!(overlapping.slice(0, 29), Some(bytes(0..=29)));
        let before = s.with(40, bytes(40..=41));
        assert_eq!(
            before.ranges().collect::<Vec<_>>(),
            [(0, 9), (20, 29), (40, 41)]
        );
        assert_eq!(before.held(), 22);
    }

    #[test]
    fn new_bytes_win_where_they_overlap_held_ones() {
        let s = Spans::new(0, Bytes::from_static(b"aaaaaaaaaa"));
        let s = s.with(3, Bytes::from_static(b"BBB"));
        assert_eq!(s.slice(0, 9), Some(Bytes::from_static(b"aaaBBBaaaa")));
        let s = s.with(8, Bytes::from_static(b"CCCC"));
        assert_eq!(s.slice(0, 11), Some(Bytes::from_static(b"aaaBBBaaCCCC")));
    }

    #[test]
    fn a_range_is_held_only_inside_one_span() {
        let s = spans(&[(0, 0..=9), (20, 20..=29)]);
        assert_eq!(s.slice(2, 4), Some(bytes(2..=4)));
        assert_eq!(s.slice(20, 29), Some(bytes(20..=29)));
        assert_eq!(s.slice(5, 25), None, "crosses the gap");
        assert_eq!(s.slice(25, 30), None, "runs past the end");
    }

    #[test]
    fn missing_parts_are_the_gaps_inside_what_is_wanted() {
        let s = spans(&[(0, 0..=9), (20, 20..=29)]);
        assert_eq!(s.missing(&[(0, 39)]), [(10, 19), (30, 39)]);
        assert_eq!(s.missing(&[(5, 25)]), [(10, 19)]);
        assert_eq!(s.missing(&[(2, 3), (21, 22)]), []);
        assert_eq!(s.missing(&[(12, 14)]), [(12, 14)]);
        assert_eq!(Spans::default().missing(&[(0, 9)]), [(0, 9)]);
        assert_eq!(covering(&[(10, 19), (30, 39)]), Some((10, 39)));
        assert_eq!(covering(&[]), None);
    }

    fn object(total: u64, validator: Option<&'static str>, spans: Spans) -> PartialObject {
        let mut h = vec![("content-length", "0")];
        if let Some(v) = validator {
            h.push(("etag", v));
        }
        let head = StoredResponse::new(
            StatusCode::OK,
            headers(&h),
            None,
            Bytes::new(),
            Freshness {
                initial_age: 0,
                lifetime: 60,
                received: std::time::Instant::now(),
                must_revalidate: false,
                stale_while_revalidate: 0,
                stale_if_error: 0,
                shared_with_authorization: false,
            },
        );
        PartialObject {
            head,
            total,
            validator: validator.map(HeaderValue::from_static),
            spans,
        }
    }

    fn got(first: u64, last: u64, total: u64) -> ContentRange {
        ContentRange { first, last, total }
    }

    #[test]
    fn spans_are_stitched_only_under_one_validator_and_length() {
        let held = object(40, Some("\"v1\""), spans(&[(0, 0..=9)]));
        let v1 = HeaderValue::from_static("\"v1\"");
        let v2 = HeaderValue::from_static("\"v2\"");
        let same = stitch(Some(&held), Some(&v1), got(20, 29, 40), bytes(20..=29));
        assert_eq!(same.ranges().collect::<Vec<_>>(), [(0, 9), (20, 29)]);
        let other = stitch(Some(&held), Some(&v2), got(20, 29, 40), bytes(20..=29));
        assert_eq!(other.ranges().collect::<Vec<_>>(), [(20, 29)]);
        let longer = stitch(Some(&held), Some(&v1), got(20, 29, 41), bytes(20..=29));
        assert_eq!(longer.ranges().collect::<Vec<_>>(), [(20, 29)]);
        let unvalidated = object(40, None, spans(&[(0, 0..=9)]));
        let none = stitch(Some(&unvalidated), None, got(20, 29, 40), bytes(20..=29));
        assert_eq!(none.ranges().collect::<Vec<_>>(), [(20, 29)]);
    }

    #[test]
    fn too_many_spans_start_over_from_the_new_one() {
        let mut held = Spans::default();
        for n in 0..MAX_SPANS as u64 {
            held = held.with(n * 10, Bytes::from_static(b"x"));
        }
        let full = object(1000, Some("\"v\""), held);
        let v = HeaderValue::from_static("\"v\"");
        let next = stitch(
            Some(&full),
            Some(&v),
            got(500, 500, 1000),
            Bytes::from_static(b"y"),
        );
        assert_eq!(next.ranges().collect::<Vec<_>>(), [(500, 500)]);
    }

    fn request(range: Option<&'static str>) -> HeaderMap {
        match range {
            Some(range) => headers(&[("range", range)]),
            None => headers(&[]),
        }
    }

    #[test]
    fn without_a_partial_object_the_site_decides() {
        let r = request(Some("bytes=0-99"));
        assert_eq!(plan(RangeMiss::Whole, &r, false, None), None);
        let fill = plan(RangeMiss::Forward, &r, false, None).expect("forwarded");
        assert_eq!(fill.range(), "bytes=0-99");
        assert_eq!((fill.if_range, fill.completes), (None, false));
        assert_eq!(plan(RangeMiss::Forward, &request(None), false, None), None);
        assert_eq!(plan(RangeMiss::Forward, &r, true, None), None, "HEAD");
        let ignored = request(Some("bytes=9-0"));
        assert_eq!(plan(RangeMiss::Forward, &ignored, false, None), None);
    }

    #[test]
    fn a_partial_object_asks_for_the_span_covering_what_is_missing() {
        let held = object(40, Some("\"v1\""), spans(&[(0, 0..=9), (30, 30..=39)]));
        let whole =
            plan(RangeMiss::Whole, &request(None), false, Some((&held, true))).expect("completes");
        assert_eq!(whole.range(), "bytes=10-29");
        assert_eq!(whole.if_range, Some(HeaderValue::from_static("\"v1\"")));
        assert!(whole.completes);
        let across = request(Some("bytes=5-34"));
        let fill = plan(RangeMiss::Whole, &across, false, Some((&held, true))).expect("gap");
        assert_eq!(fill.range(), "bytes=10-29");
        // Two gaps: one span covering both.
        let two = object(40, Some("\"v1\""), spans(&[(0, 0..=9), (20, 20..=24)]));
        let fill = plan(RangeMiss::Whole, &request(None), false, Some((&two, true)));
        assert_eq!(fill.expect("completes").range(), "bytes=10-39");
        // Stale: every byte the request needs, under the validator.
        let stale = plan(RangeMiss::Whole, &across, false, Some((&held, false)));
        assert_eq!(stale.expect("refresh").range(), "bytes=5-34");
        // No validator: nothing is stitched, so every needed byte is asked for.
        let bare = object(40, None, spans(&[(0, 0..=9)]));
        let fill = plan(RangeMiss::Whole, &request(None), false, Some((&bare, true)));
        let fill = fill.expect("refetch");
        assert_eq!(fill.range(), "bytes=0-39");
        assert_eq!(fill.if_range, None);
    }
}
