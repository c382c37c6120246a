//! How an object too large to store whole is cached as fixed-size slices: the shape of
//! the slicing ([`SliceInfo`]), shared by the slice index and every slice of it.
//!
//! A storable `200` larger than `max_object_size` that supports byte ranges
//! (`Accept-Ranges: bytes`) and has a validator to stitch by is not passed through: the
//! cache keeps its head as a slice index under the URL's key
//! ([`Entry::SliceIndex`](crate::cache::store::Entry::SliceIndex)) and its bytes as slices
//! of `slice_size` under keys of their own ([`CacheKey::slice`]), each fetched with `Range`
//! the first time a request needs it. Fetching them is the node's business (its
//! `slices` module); what makes a slice usable is decided here.
//!
//! Invariants:
//! - A slice is used only under the index it was stored for (same length and validator).
//! - Objects larger than a quarter of the cache are passed through, not sliced, so one huge
//!   file cannot evict the working set.

use http::header::{self, HeaderMap, HeaderValue};

use crate::cache::partial::{stitch_validator, strong_etag};

#[cfg(doc)]
use crate::cache::key::CacheKey;

/// The shape of a sliced object, shared by its index and every slice of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// Length of the whole object.
    pub total: u64,
    /// Length of every slice but the last.
    pub size: u64,
    /// Sent as `If-Range` with every slice request: the strong ETag, else `Last-Modified`.
    pub validator: HeaderValue,
    /// The strong ETag every slice must carry, when the object has one.
    pub etag: Option<HeaderValue>,
}

impl SliceInfo {
    /// The slicing of a `200` of `total` bytes with these headers into `size` slices, or
    /// `None` when it cannot be sliced safely: slicing is off (`size` 0), the upstream
    /// does not say it serves byte ranges, or there is no validator to stitch slices by.
    pub fn plan(headers: &HeaderMap, total: u64, size: u64) -> Option<Self> {
        if size == 0 || total == 0 {
            return None;
        }
        let ranges = headers
            .get_all(header::ACCEPT_RANGES)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"));
        if !ranges {
            return None;
        }
        let validator = stitch_validator(headers)?;
        let etag = strong_etag(headers);
        Some(Self {
            total,
            size,
            validator,
            etag,
        })
    }

    /// Number of slices.
    pub fn count(&self) -> u64 {
        self.total.div_ceil(self.size)
    }

    /// The inclusive byte span of slice `n`.
    pub fn span(&self, n: u64) -> (u64, u64) {
        let start = n * self.size;
        (start, (start + self.size).min(self.total) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers::headers;

    #[test]
    fn a_ranged_object_with_a_strong_validator_is_sliced() {
        let h = headers(&[("accept-ranges", "bytes"), ("etag", "\"v1\"")]);
        let info = SliceInfo::plan(&h, 10 * 1024 + 1, 1024).expect("sliceable");
        assert_eq!(info.count(), 11);
        assert_eq!(info.span(0), (0, 1023));
        assert_eq!(info.span(10), (10240, 10240));
        assert_eq!(info.validator, "\"v1\"");
        assert_eq!(
            info.etag.as_ref().map(|e| e.as_bytes()),
            Some(&b"\"v1\""[..])
        );
    }

    #[test]
    fn last_modified_stands_in_for_a_missing_or_weak_etag() {
        let date = "Mon, 02 Nov 2026 10:00:00 GMT";
        let h = headers(&[
            ("accept-ranges", "bytes"),
            ("etag", "W/\"weak\""),
            ("last-modified", date),
        ]);
        let info = SliceInfo::plan(&h, 4096, 1024).expect("sliceable");
        assert_eq!(info.validator, date);
        assert_eq!(info.etag, None);
    }

    #[test]
    fn no_slicing_without_ranges_a_validator_or_a_slice_size() {
        let ranged = headers(&[("accept-ranges", "bytes")]);
        assert_eq!(SliceInfo::plan(&ranged, 4096, 1024), None, "no validator");
        let unranged = headers(&[("accept-ranges", "none"), ("etag", "\"v\"")]);
        assert_eq!(SliceInfo::plan(&unranged, 4096, 1024), None, "no ranges");
        let fine = headers(&[("accept-ranges", "bytes"), ("etag", "\"v\"")]);
        assert_eq!(SliceInfo::plan(&fine, 4096, 0), None, "slicing off");
    }
}
