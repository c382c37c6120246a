//! Answering from objects cached in slices: each slice a request covers comes from the
//! store, or from one coalesced ranged fetch under the slice's own key.
//!
//! A storable `200` larger than `max_object_size` that supports byte ranges
//! (`Accept-Ranges: bytes`) and has a validator to stitch by is not passed through: the
//! cache keeps its head as a slice index under the URL's key (an
//! [`Entry::SliceIndex`]) and its bytes as slices of `slice_size` under keys of
//! their own ([`CacheKey::slice`]), each fetched with `Range` the first time a request needs
//! it. A client's range costs only the slices it covers; each `206` from the upstream is
//! stored as a slice that every later request it covers reuses, and the object is complete
//! once its last slice has arrived (RFC 9111 3.3-3.4). (`206`s of objects small enough to
//! store whole are kept as partial objects instead: [`crate::cache::partial`].)
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

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use tokio::sync::mpsc;

use crate::cache::freshness::Freshness;
use crate::cache::key::CacheKey;
use crate::cache::range::ContentRange;
use crate::cache::slice::SliceInfo;
use crate::cache::status::NoCacheReason;
use crate::cache::store::{Entry, Slice};
use crate::front::body::SliceBody;
use crate::node::fill::{ReadBody, pass_freshness, read_body};
use crate::node::proxy::Edge;
use crate::node::site::Site;
use crate::upstream::client::UpstreamError;

/// What the one fetch of a slice gives every request waiting on it.
pub type SliceFill = Result<Bytes, Arc<UpstreamError>>;

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
        Ok(SliceBody::new(opening, rx, last - first + 1))
    }

    /// The part of slice `n` (`bytes`) inside `first..=last`.
    fn cut(&self, n: u64, bytes: Bytes, first: u64, last: u64) -> Bytes {
        let (start, _) = self.info.span(n);
        let from = first.saturating_sub(start) as usize;
        let to = ((last + 1 - start) as usize).min(bytes.len());
        bytes.slice(from.min(to)..to)
    }

    /// Slice `n`, from the cache or from the upstream.
    async fn slice(&self, n: u64) -> SliceFill {
        let key = self.primary.slice(n);
        if let Some(Entry::Slice(slice)) = self.edge.store.get(&key)
            && slice.info == self.info
        {
            return Ok(slice.body.clone());
        }
        let source = self.clone();
        let slice_key = key.clone();
        let (fill, _) = self
            .edge
            .slice_fills
            .run(&key, move |_| source.fill(n, slice_key))
            .await;
        fill.unwrap_or_else(|_lost| Err(Arc::new(UpstreamError::Lost)))
    }

    async fn fill(self, n: u64, key: CacheKey) -> SliceFill {
        match self.fetch(n).await {
            Ok(body) => {
                let slice = Slice {
                    info: self.info.clone(),
                    body: body.clone(),
                    freshness: self.freshness,
                };
                self.edge.store.insert(key, Entry::Slice(Arc::new(slice)));
                self.edge.metrics.stored();
                Ok(body)
            }
            Err(error) => {
                self.edge.metrics.upstream_error(error.kind());
                Err(Arc::new(error))
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
            .send_upstream(
                &self.site,
                &key,
                &Method::GET,
                &self.target,
                &headers,
                (None, None),
            )
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
        let expected = ContentRange {
            first: start,
            last: end,
            total: self.info.total,
        };
        if ContentRange::of(&parts.headers) != Some(expected) {
            self.give_up();
            return Err(UpstreamError::Protocol(format!(
                "asked for bytes {start}-{end}/{} of a sliced object, the upstream sent \
                 Content-Range {:?}",
                self.info.total,
                parts.headers.get(header::CONTENT_RANGE)
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
        let marker = Entry::pass_marker(NoCacheReason::TooLarge, pass_freshness());
        self.edge.store.insert(self.primary.clone(), marker);
    }
}
