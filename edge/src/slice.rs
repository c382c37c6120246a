//! Objects too large to store whole, cached as fixed-size slices.
//!
//! A storable `200` larger than `max_object_size` that supports byte ranges
//! (`Accept-Ranges: bytes`) and has a validator to stitch by is not passed through: the
//! cache keeps its head as a slice index under the URL's key ([`SliceInfo`] on a
//! [`StoredResponse`] with no body) and its bytes as slices of `slice_size` under keys of
//! their own ([`CacheKey::slice`]), each fetched with `Range` the first time a request needs
//! it. A client's range costs only the slices it covers; each `206` from the upstream is
//! stored as a partial object that every later request it covers reuses, and the object is
//! complete once its last slice has arrived (RFC 9111 3.3-3.4).
//!
//! Invariants:
//! - A slice is fetched with `If-Range` holding the index's validator and is accepted only
//!   as a `206` of exactly the span asked for, of an object of the index's length (and
//!   ETag, when it has one), so bytes of two versions of an object are never stitched
//!   together. Anything else breaks the response off; a `200` (the object changed, or the
//!   upstream ignores ranges after all) also replaces the index by a hit-for-pass marker,
//!   so the URL passes through until the marker goes stale.
//! - A slice is used only under the index it was stored for (same length and validator).
//! - Objects larger than a quarter of the cache are passed through, not sliced, so one huge
//!   file cannot evict the working set.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::cache_key::CacheKey;
use crate::cache_status::{CacheStatus, Forward, NoCacheReason};
use crate::fill::{Fill, ReadBody, pass_freshness, read_body};
use crate::freshness::Freshness;
use crate::proxy::Edge;
use crate::site::Site;
use crate::store::StoredResponse;
use crate::upstream::{BoxError, UpstreamError};

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
        let etag = headers
            .get(header::ETAG)
            .filter(|etag| !etag.as_bytes().starts_with(b"W/"))
            .cloned();
        let validator = etag
            .clone()
            .or_else(|| headers.get(header::LAST_MODIFIED).cloned())?;
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

/// Where a sliced object's slices come from: the cache, else one coalesced ranged fetch
/// per slice.
#[derive(Debug, Clone)]
pub struct SliceSource {
    pub edge: Arc<Edge>,
    /// The URL's key, where the index lives.
    pub site: Arc<Site>,
    pub primary: CacheKey,
    /// The normalized target (origin-form) asked of the upstream.
    pub target: String,
    /// Headers for the upstream, already filtered for a shared fill.
    pub headers: HeaderMap,
    pub info: Arc<SliceInfo>,
    /// The index's freshness, which its slices share.
    pub freshness: Freshness,
}

impl SliceSource {
    /// Bytes `first..=last` of the object. The first slice they need is in hand before
    /// this returns, so a failing upstream can still be answered with a status; a later
    /// failure breaks the body off (the client sees a short body, never wrong bytes).
    pub async fn body(self, first: u64, last: u64) -> Result<SliceBody, Arc<UpstreamError>> {
        let (from, to) = (first / self.info.size, last / self.info.size);
        let opening = self.cut(from, self.slice(from).await?, first, last);
        // One slice waits in the channel while the next is fetched: a read-ahead of one.
        let (tx, rx) = mpsc::channel(1);
        if to > from {
            tokio::spawn(async move {
                for n in from + 1..=to {
                    let piece = self
                        .slice(n)
                        .await
                        .map(|bytes| self.cut(n, bytes, first, last));
                    let failed = piece.is_err();
                    if tx.send(piece).await.is_err() || failed {
                        return; // the client went away, or the body is broken off
                    }
                }
            });
        }
        Ok(SliceBody {
            opening: Some(opening),
            rest: rx,
            remaining: last - first + 1,
        })
    }

    /// The part of slice `n` (`bytes`) inside `first..=last`.
    fn cut(&self, n: u64, bytes: Bytes, first: u64, last: u64) -> Bytes {
        let (start, _) = self.info.span(n);
        let from = first.saturating_sub(start) as usize;
        let to = ((last + 1 - start) as usize).min(bytes.len());
        bytes.slice(from.min(to)..to)
    }

    /// Slice `n`, from the cache or from the upstream.
    async fn slice(&self, n: u64) -> Result<Bytes, Arc<UpstreamError>> {
        let key = self.primary.slice(n);
        if let Some(entry) = self.edge.store.get(&key)
            && entry.sliced.as_deref() == Some(&*self.info)
        {
            return Ok(entry.body.clone());
        }
        let source = self.clone();
        let slice_key = key.clone();
        let (fill, _) = self
            .edge
            .fills
            .run(&key, move |_| source.fill(n, slice_key))
            .await;
        match fill {
            Ok(Fill::Stored { entry, .. }) => Ok(entry.body.clone()),
            Ok(Fill::Failed { error, .. }) => Err(error),
            _ => Err(Arc::new(UpstreamError::Lost)),
        }
    }

    async fn fill(self, n: u64, key: CacheKey) -> Fill {
        let mut status = CacheStatus::forwarded(Forward::UriMiss);
        match self.fetch(n).await {
            Ok(body) => {
                let entry = Arc::new(StoredResponse::slice(
                    self.info.clone(),
                    body,
                    self.freshness,
                ));
                self.edge.store.insert(key, entry.clone());
                self.edge.metrics.stored();
                status.stored = true;
                Fill::Stored { entry, status }
            }
            Err(error) => {
                self.edge.metrics.upstream_error(error.kind());
                Fill::Failed {
                    error: Arc::new(error),
                    status,
                }
            }
        }
    }

    /// Fetches slice `n` with a ranged request and checks it is that slice of this object.
    async fn fetch(&self, n: u64) -> Result<Bytes, UpstreamError> {
        let (start, end) = self.info.span(n);
        let mut headers = self.headers.clone();
        if let Ok(range) = HeaderValue::from_str(&format!("bytes={start}-{end}")) {
            headers.insert(header::RANGE, range);
        }
        headers.insert(header::IF_RANGE, self.info.validator.clone());
        let started = Instant::now();
        let key = self.primary.slice(n);
        let response = self
            .edge
            .send_upstream(&self.site, &key, &Method::GET, &self.target, &headers, None)
            .await?;
        self.edge.metrics.upstream_response(started.elapsed());
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::PARTIAL_CONTENT {
            if parts.status == StatusCode::OK {
                self.give_up();
            }
            return Err(UpstreamError::Protocol(format!(
                "asked for bytes {start}-{end} of a sliced object, the upstream answered {} \
                 instead of 206",
                parts.status
            )));
        }
        let expected = format!("bytes {start}-{end}/{}", self.info.total);
        let range = parts.headers.get(header::CONTENT_RANGE);
        if range.is_none_or(|r| r.as_bytes() != expected.as_bytes()) {
            self.give_up();
            return Err(UpstreamError::Protocol(format!(
                "asked for {expected} of a sliced object, the upstream sent Content-Range {:?}",
                range
            )));
        }
        if let Some(etag) = &self.info.etag
            && parts.headers.get(header::ETAG) != Some(etag)
        {
            self.give_up();
            return Err(UpstreamError::Protocol(
                "a slice came back with another ETag than the object: it changed mid-way".into(),
            ));
        }
        let len = end - start + 1;
        let timeout = self.edge.upstream.body_timeout();
        match tokio::time::timeout(timeout, read_body(body, len)).await {
            Err(_) => Err(UpstreamError::BodyTimeout(timeout)),
            Ok(Ok(ReadBody::Complete(bytes))) if bytes.len() as u64 == len => Ok(bytes),
            Ok(Ok(_)) => Err(UpstreamError::Protocol(format!(
                "a slice's body is not the {len} bytes its Content-Range says"
            ))),
            Ok(Err(error)) => Err(error),
        }
    }

    /// The upstream will not serve this object's slices: pass the URL through for a while.
    fn give_up(&self) {
        let marker = StoredResponse::pass_marker(NoCacheReason::TooLarge, pass_freshness());
        self.edge
            .store
            .insert(self.primary.clone(), Arc::new(marker));
    }
}

/// A response body assembled from slices as they come.
#[derive(Debug)]
pub struct SliceBody {
    opening: Option<Bytes>,
    rest: mpsc::Receiver<Result<Bytes, Arc<UpstreamError>>>,
    remaining: u64,
}

impl Body for SliceBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let next = match this.opening.take() {
            Some(bytes) => Some(Ok(bytes)),
            None if this.remaining == 0 => None,
            None => match this.rest.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            },
        };
        Poll::Ready(match next {
            Some(Ok(bytes)) => {
                this.remaining = this.remaining.saturating_sub(bytes.len() as u64);
                Some(Ok(Frame::data(bytes)))
            }
            Some(Err(error)) => Some(Err(Box::new(error) as BoxError)),
            None if this.remaining == 0 => None,
            None => Some(Err("the sliced body ended before its length".into())),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.opening.is_none() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_headers::headers;

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
