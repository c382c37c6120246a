//! The miss path: one upstream fetch for a key, run by the coalescer on behalf of every
//! request waiting on that key.
//!
//! A fill fetches the object (conditionally, when a stale entry has validators), decides
//! whether the response may be stored, reads and stores it, and publishes a [`Fill`].
//! Only a stored response is shared between waiters; one that may not be stored is handed
//! to the request that started the fill, and every other waiter asks the upstream itself,
//! because a response the cache may not keep is not one it may give to someone else.
//!
//! A fill may ask for a range ([`FillRequest::range`], decided by
//! [`crate::cache::partial::plan`]); a `206`, asked for or not, is stored as a partial
//! object, combined with the spans already held when they share its validator, and stored
//! as a complete `200` once every byte is held (`FillRequest::partial`).
//!
//! The fill of a request with credentials ([`FillFor::Credentialed`]) has no other
//! waiters: it is run alone, sends the request's `Authorization`, stores only what may
//! answer requests with credentials (RFC 9111 3.5), serves nothing stale on error, is
//! never sliced (its slices would be fetched without the credentials), and a response it
//! may not store changes nothing in the store: no hit-for-pass marker, no stale entry
//! removed, since the refusal may concern these credentials alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

/// Responses at least this large (by declared length) stream to their waiters while they
/// fill; smaller ones are read whole first, which costs less than sharing a growing body.
pub const STREAM_AT: u64 = 256 * 1024;

/// How long a URL whose response could not be stored passes straight through
/// (hit-for-pass) before a fill tries again.
pub const PASS_TTL: std::time::Duration = std::time::Duration::from_secs(60);
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cache::coalesce::Publisher;
use crate::cache::control::CacheControl;
use crate::cache::freshness::{Exchange, Freshness, delta_seconds, evaluate, strip_targeted};
use crate::cache::growing_body::GrowingBody;
use crate::cache::key::CacheKey;
use crate::cache::lookup::FillFor;
use crate::cache::partial::{PartialObject, RangeFill, stitch, stitch_validator};
use crate::cache::range::ContentRange;
use crate::cache::slice::SliceInfo;
use crate::cache::status::{
    CACHE_STATUS, CacheStatus, Forward, NoCacheReason, STALE_IF_ERROR,
    upstream_served_stale_on_error,
};
use crate::cache::store::{Cached, Entry, SliceIndex, StoredResponse, Variants};
use crate::cache::vary::{Selection, Vary, VaryIndex, signature, vary_of, with_keyed};
use crate::front::body::EdgeBody;
use crate::node::invalidation::Invalidation;
use crate::node::proxy::Edge;
use crate::node::site::Site;
use crate::upstream::client::UpstreamError;
use crate::upstream::headers::{append_list, strip_hop_by_hop};
use crate::upstream::interim::Interim;

/// What a fill produced, as every waiter sees it.
#[derive(Debug, Clone)]
pub enum Fill {
    /// Stored or refreshed, or a stale entry served because the upstream failed
    /// (`stale-if-error`); every waiter serves it.
    Stored { entry: Cached, status: CacheStatus },
    /// Not storable: the live response, for the request that started the fill only.
    Handoff {
        response: Arc<Mutex<Option<Response<EdgeBody>>>>,
        status: CacheStatus,
    },
    /// A storable response still arriving (see [`FillRequest::stream`]): every waiter
    /// streams `body`; `entry` has the head and freshness, not the body.
    Streaming {
        entry: Arc<StoredResponse>,
        body: Arc<GrowingBody>,
        status: CacheStatus,
    },
    /// The upstream failed; every waiter reports it.
    Failed {
        error: Arc<UpstreamError>,
        status: CacheStatus,
    },
}

/// A response head as a fill stores it.
#[derive(Debug)]
struct Head {
    code: StatusCode,
    headers: HeaderMap,
    upstream_cache_status: Option<HeaderValue>,
    /// The tags purges name the response by, read before the node's role removed them
    /// from `headers`.
    tags: Vec<String>,
}

/// Everything a fill needs, owned, so it can run in its own task.
#[derive(Debug)]
pub struct FillRequest {
    pub edge: Arc<Edge>,
    pub site: Arc<Site>,
    /// The key looked up: the primary key, or a variant's key.
    pub key: CacheKey,
    /// The URL's primary key, where a variant index lives.
    pub primary: CacheKey,
    /// The URL's variant index, if its responses were known to vary.
    pub index: Option<VaryIndex>,
    /// Why the request goes forward when there is no stale entry.
    pub miss: Forward,
    /// The normalized target (origin-form) asked of the upstream.
    pub target: String,
    /// Headers to send upstream, already filtered for the fill (`Authorization` only on a
    /// credentialed one).
    pub headers: HeaderMap,
    /// For whom the fill fetches: every waiter on the key, or one request with credentials.
    pub fill: FillFor,
    /// The starting request's `Cache-Control` (its `no-store` forbids storing).
    pub request_cc: CacheControl,
    /// The stale entry being replaced, if any; its validators make the fetch conditional.
    pub stale: Option<Cached>,
    /// The node's purge watermark when the fill started: a purge applied after it that
    /// matches the response keeps it from being stored.
    pub purge_seq: u64,
    /// The range asked for instead of the whole object (with `If-Range` when it completes
    /// a partial object); never together with `stale`.
    pub range: Option<RangeFill>,
    /// Where the exchange's 1xx heads go: the request that started the fill, when its
    /// front door can write them; never a background refresh or a joining request.
    pub interim: Option<Interim>,
}

impl FillRequest {
    /// Runs the fill. `publisher` lets it hand waiters a streaming body before the end.
    pub async fn run(self, publisher: Publisher<Fill>) -> Fill {
        let fwd = if self.stale.is_some() {
            Forward::Stale
        } else if self.range.as_ref().is_some_and(|range| range.completes) {
            Forward::Partial
        } else {
            self.miss
        };
        let mut status = CacheStatus::forwarded(fwd);
        let edge = &self.edge;

        // Every server is down by probes or ejected: a copy that may be served on error is
        // served now, not after the upstream timeout a frozen server would cost.
        if !self.site.pool.any_available(Instant::now())
            && let Some(fill) = self.stale_on_error(&status)
        {
            edge.metrics.upstream_error("no-available-server");
            return fill;
        }
        let mut headers = self.headers.clone();
        if let Some(stale) = &self.stale {
            add_validators(&mut headers, &stale.response().headers());
        }
        if let Some(range) = &self.range {
            headers.insert(header::RANGE, range.range());
            if let Some(validator) = &range.if_range {
                headers.insert(header::IF_RANGE, validator.clone());
            }
        }
        let request_time = SystemTime::now();
        let started = Instant::now();
        let sent = edge
            .send_upstream(
                &self.site,
                &self.key,
                &Method::GET,
                &self.target,
                &headers,
                (None, self.interim.as_ref()),
            )
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                edge.metrics.upstream_error(error.kind());
                return self.stale_on_error(&status).unwrap_or(Fill::Failed {
                    error: Arc::new(error),
                    status,
                });
            }
        };
        edge.metrics.upstream_response(started.elapsed());
        let exchange = Exchange {
            request_time,
            response_time: SystemTime::now(),
            received: Instant::now(),
        };
        let (mut parts, body) = response.into_parts();
        status.fwd_status = Some(parts.status.as_u16());
        if upstream_served_stale_on_error(&parts.headers) {
            status.detail = Some(STALE_IF_ERROR);
        }
        if self.site.strip_set_cookie {
            parts.headers.remove(header::SET_COOKIE);
        }
        // The tags purges name the object by are learnt before the node's role removes
        // what must not go further downstream (an edge: the tags themselves).
        let tags = Invalidation::tags_of(&parts.headers);
        edge.role.strip_downstream(&mut parts.headers);

        if parts.status == StatusCode::NOT_MODIFIED
            && let Some(stale) = &self.stale
        {
            return self.revalidated(stale, &parts.headers, exchange, status);
        }
        if parts.status.is_server_error()
            && let Some(fill) = self.stale_on_error(&status)
        {
            return fill;
        }
        if parts.status == StatusCode::PARTIAL_CONTENT {
            return self.partial(parts, body, exchange, tags, status).await;
        }

        let decision = evaluate(
            parts.status,
            &parts.headers,
            &self.request_cc,
            self.credentialed(),
            &self.site.freshness,
            exchange,
        );
        strip_hop_by_hop(&mut parts.headers);
        append_list(&mut parts.headers, header::VIA, &edge.via);
        let freshness = match decision {
            Ok(freshness) => freshness,
            Err(reason) => {
                if self.stale.is_some() && !parts.status.is_server_error() && !self.credentialed() {
                    edge.store.remove(&self.key);
                }
                return self.handoff(
                    parts,
                    EdgeBody::stream(VecDeque::new(), body),
                    reason,
                    status,
                );
            }
        };
        let declared = content_length(&parts.headers);
        let mut sliced = None;
        if let Some(total) = declared.filter(|len| *len > edge.max_object_size) {
            sliced = self.slicing(parts.status, &parts.headers, total);
            if sliced.is_none() {
                return self.handoff(
                    parts,
                    EdgeBody::stream(VecDeque::new(), body),
                    NoCacheReason::TooLarge,
                    status,
                );
            }
        }
        let upstream_cache_status = parts.headers.remove(&CACHE_STATUS);
        parts.headers.remove(header::AGE);
        // A cache must add the Date a dateless response lacked (RFC 9110 6.6.1).
        if !parts.headers.contains_key(header::DATE)
            && let Ok(date) =
                HeaderValue::from_str(&httpdate::fmt_http_date(exchange.response_time))
        {
            parts.headers.insert(header::DATE, date);
        }
        if let Some(info) = sliced {
            // The slices are fetched as requests need them; this whole body is not read.
            drop(body);
            let head = StoredResponse::new(
                parts.status,
                parts.headers,
                upstream_cache_status,
                Bytes::new(),
                freshness,
            );
            return self.store_sliced(head, info, status);
        }
        if let Some(len) = declared.filter(|len| *len >= STREAM_AT)
            && with_keyed(vary_of(&parts.headers), &self.site.key_headers) == Vary::None
        {
            let head = Head {
                code: parts.status,
                headers: parts.headers,
                upstream_cache_status,
                tags,
            };
            return self
                .stream(head, body, len, freshness, status, publisher)
                .await;
        }
        let timeout = edge.upstream.body_timeout();
        let read = match tokio::time::timeout(timeout, read_body(body, edge.max_object_size)).await
        {
            Err(_) => Err(UpstreamError::BodyTimeout(timeout)),
            Ok(read) => read,
        };
        let body = match read {
            Ok(ReadBody::Complete(body)) => body,
            Ok(ReadBody::TooLarge { prefix, rest }) => {
                return self.handoff(
                    parts,
                    EdgeBody::stream(prefix, rest),
                    NoCacheReason::TooLarge,
                    status,
                );
            }
            Err(error) => {
                edge.metrics.upstream_error(error.kind());
                return self.stale_on_error(&status).unwrap_or(Fill::Failed {
                    error: Arc::new(error),
                    status,
                });
            }
        };
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let head = Head {
            code: parts.status,
            headers: parts.headers,
            upstream_cache_status,
            tags,
        };
        self.store(head, body, freshness, status)
    }

    /// Stores the slice index of an object cached in slices (`head` has no body).
    fn store_sliced(&self, head: StoredResponse, info: SliceInfo, mut status: CacheStatus) -> Fill {
        let index = Arc::new(SliceIndex {
            head,
            info: Arc::new(info),
        });
        self.edge
            .store
            .insert(self.primary.clone(), Entry::SliceIndex(index.clone()));
        status.stored = true;
        Fill::Stored {
            entry: Cached::Sliced(index),
            status,
        }
    }

    /// How a storable response of `total` bytes, too large to store whole, is sliced;
    /// `None` when it is passed through instead.
    fn slicing(&self, code: StatusCode, headers: &HeaderMap, total: u64) -> Option<SliceInfo> {
        let edge = &self.edge;
        if code != StatusCode::OK
            || self.credentialed()
            || total > edge.max_sliced_size
            || with_keyed(vary_of(headers), &self.site.key_headers) != Vary::None
        {
            return None;
        }
        SliceInfo::plan(headers, total, edge.slice_size)
    }

    /// A large response with a declared length: published at once as a growing body that
    /// every waiter (and every client that joins before the end) streams, then stored
    /// when complete. A body that breaks off or exceeds its length fails every reader and
    /// is not stored.
    async fn stream(
        &self,
        head: Head,
        mut body: Incoming,
        len: u64,
        freshness: Freshness,
        status: CacheStatus,
        publisher: Publisher<Fill>,
    ) -> Fill {
        let edge = &self.edge;
        let growing = GrowingBody::new(len);
        let shell = StoredResponse::new(
            head.code,
            head.headers.clone(),
            head.upstream_cache_status.clone(),
            Bytes::new(),
            freshness,
        );
        publisher.publish(Fill::Streaming {
            entry: Arc::new(shell),
            body: growing.clone(),
            status: status.clone(),
        });
        let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        let timeout = edge.upstream.body_timeout();
        let read = tokio::time::timeout(timeout, async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if (buf.len() + data.len()) as u64 > len {
                    return Err(UpstreamError::Protocol(
                        "the body is longer than its Content-Length".into(),
                    ));
                }
                buf.extend_from_slice(&data);
                growing.push(data);
            }
            if buf.len() as u64 == len {
                Ok(())
            } else {
                Err(UpstreamError::Protocol(
                    "the body ended before its Content-Length".into(),
                ))
            }
        })
        .await
        .unwrap_or(Err(UpstreamError::BodyTimeout(timeout)));
        match read {
            Ok(()) => {
                growing.finish(true);
                self.store(head, buf.freeze(), freshness, status)
            }
            Err(error) => {
                growing.finish(false);
                edge.metrics.upstream_error(error.kind());
                Fill::Failed {
                    error: Arc::new(error),
                    status,
                }
            }
        }
    }

    /// A `206`: stored as a partial object (combined with the spans held for the URL when
    /// it may be, see [`crate::cache::partial`]), or as a complete `200` when every byte is
    /// then held. One whose `Content-Range` is not strictly a single span of a known
    /// length, the span asked for, is passed through and not stored. One of an object over
    /// `max_object_size` makes it a sliced object (when it can be sliced; passed through
    /// otherwise), as a `200` of it would.
    async fn partial(
        &self,
        parts: http::response::Parts,
        body: Incoming,
        exchange: Exchange,
        tags: Vec<String>,
        mut status: CacheStatus,
    ) -> Fill {
        let edge = &self.edge;
        let asked = self.range.as_ref().map(|range| range.spec);
        let got = ContentRange::of(&parts.headers)
            .filter(|got| asked.is_none_or(|spec| spec.answered_by(*got)))
            .filter(|got| content_length(&parts.headers).is_none_or(|len| len == got.len()));
        let stream = |body| EdgeBody::stream(VecDeque::new(), body);
        let Some(got) = got else {
            return self.handoff(parts, stream(body), NoCacheReason::ContentRange, status);
        };
        // A 206 carries the representation's metadata and its own freshness (RFC 9111
        // 3.3-3.4), decided as for the 200 it is part of.
        let decision = evaluate(
            StatusCode::OK,
            &parts.headers,
            &self.request_cc,
            self.credentialed(),
            &self.site.freshness,
            exchange,
        );
        let freshness = match decision {
            Ok(freshness) => freshness,
            Err(reason) => return self.handoff(parts, stream(body), reason, status),
        };
        // An object over `max_object_size` is cached in slices, whichever answer showed
        // its size; this 206's bytes are not read (its slices are fetched as needed).
        let mut sliced = None;
        if got.total > edge.max_object_size {
            let mut whole = parts.headers.clone();
            whole.remove(header::CONTENT_RANGE);
            sliced = self.slicing(StatusCode::OK, &whole, got.total);
            if sliced.is_none() {
                return self.handoff(parts, stream(body), NoCacheReason::TooLarge, status);
            }
        }
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        append_list(&mut headers, header::VIA, &edge.via);
        let upstream_cache_status = headers.remove(&CACHE_STATUS);
        headers.remove(header::AGE);
        headers.remove(header::CONTENT_RANGE);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(got.total));
        if !headers.contains_key(header::DATE)
            && let Ok(date) =
                HeaderValue::from_str(&httpdate::fmt_http_date(exchange.response_time))
        {
            headers.insert(header::DATE, date);
        }
        if let Some(info) = sliced {
            drop(body);
            let head = StoredResponse::new(
                StatusCode::OK,
                headers,
                upstream_cache_status,
                Bytes::new(),
                freshness,
            );
            return self.store_sliced(head, info, status);
        }
        let len = got.len();
        let timeout = edge.upstream.body_timeout();
        let read = match tokio::time::timeout(timeout, read_body(body, len)).await {
            Err(_) => Err(UpstreamError::BodyTimeout(timeout)),
            Ok(Ok(ReadBody::Complete(bytes))) if bytes.len() as u64 == len => Ok(bytes),
            Ok(Ok(_)) => Err(UpstreamError::Protocol(format!(
                "a 206's body is not the {len} bytes its Content-Range says"
            ))),
            Ok(Err(error)) => Err(error),
        };
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(error) => {
                edge.metrics.upstream_error(error.kind());
                return Fill::Failed {
                    error: Arc::new(error),
                    status,
                };
            }
        };
        let validator = stitch_validator(&headers);
        let (key, selected_by) = self.key_for(&headers, freshness);
        let held = match edge.store.get(&key) {
            Some(Entry::Partial(held)) => Some(held),
            _ => None,
        };
        let spans = stitch(held.as_deref(), validator.as_ref(), got, bytes);
        let head = Head {
            code: StatusCode::OK,
            headers,
            upstream_cache_status,
            tags,
        };
        if let Some(body) = spans.whole(got.total) {
            // Every byte is held: from now on a complete 200 like any other.
            return self.store_at(key, selected_by, head, body, freshness, status);
        }
        let entry = StoredResponse::new(
            head.code,
            head.headers,
            head.upstream_cache_status,
            Bytes::new(),
            freshness,
        )
        .selected_as(selected_by);
        let partial = Arc::new(PartialObject {
            head: entry,
            total: got.total,
            validator,
            spans,
        });
        if self.may_store(&key, &head.tags) {
            edge.invalidation
                .register(&self.site.name, &key, &head.tags, edge.store.as_ref());
            edge.store.insert(key, Entry::Partial(partial.clone()));
            edge.metrics.stored();
            status.stored = true;
        }
        Fill::Stored {
            entry: Cached::Partial(partial),
            status,
        }
    }

    /// The key a response with `headers` is stored under: a variant's when it varies (the
    /// URL's variant index is stored first when it is new), with the selection that says
    /// which; the URL's own otherwise.
    fn key_for(&self, headers: &HeaderMap, freshness: Freshness) -> (CacheKey, Option<Selection>) {
        let edge = &self.edge;
        let vary = with_keyed(vary_of(headers), &self.site.key_headers);
        match vary {
            Vary::Fields(names) => {
                let index = match &self.index {
                    Some(index) if *index.names == names[..] => index.clone(),
                    _ => VaryIndex::new(names),
                };
                let signature = signature(&index.names, &self.headers, &self.site.key_headers);
                let key = self.primary.variant(index.epoch, &signature);
                if self.index.as_ref() != Some(&index) {
                    let variants = Variants {
                        index: index.clone(),
                        freshness,
                    };
                    edge.store
                        .insert(self.primary.clone(), Entry::Variants(Arc::new(variants)));
                }
                (key, Some(Selection { index, signature }))
            }
            // `Vary: *` was refused by `evaluate`; no Vary replaces any index there was.
            Vary::None | Vary::Any => (self.primary.clone(), None),
        }
    }

    /// Stores a complete response under its key (a variant's, when it varies).
    fn store(&self, head: Head, body: Bytes, freshness: Freshness, status: CacheStatus) -> Fill {
        let (key, selected_by) = self.key_for(&head.headers, freshness);
        self.store_at(key, selected_by, head, body, freshness, status)
    }

    /// Stores a complete response under `key`, the variant `selected_by` says.
    fn store_at(
        &self,
        key: CacheKey,
        selected_by: Option<Selection>,
        Head {
            code,
            headers,
            upstream_cache_status,
            tags,
        }: Head,
        body: Bytes,
        freshness: Freshness,
        mut status: CacheStatus,
    ) -> Fill {
        let edge = &self.edge;
        let entry = StoredResponse::new(code, headers, upstream_cache_status, body, freshness)
            .with_tags(tags.clone())
            .selected_as(selected_by);
        let entry = Arc::new(entry);
        if !self.may_store(&key, &tags) {
            return Fill::Stored {
                entry: Cached::Whole(entry),
                status,
            };
        }
        edge.invalidation
            .register(&self.site.name, &key, &tags, edge.store.as_ref());
        edge.store.insert(key, Entry::Response(entry.clone()));
        edge.metrics.stored();
        status.stored = true;
        Fill::Stored {
            entry: Cached::Whole(entry),
            status,
        }
    }

    /// Stores a complete response this fill did not fetch itself (a POST's answer that
    /// names its target, [`crate::node::post`]) as it would store its own: under the key
    /// of the variant `self.headers` select when it varies, unless a purge since
    /// `self.purge_seq` matches it. Returns whether it was stored.
    pub(crate) fn store_complete(
        &self,
        code: StatusCode,
        headers: HeaderMap,
        upstream_cache_status: Option<HeaderValue>,
        tags: Vec<String>,
        body: Bytes,
        freshness: Freshness,
    ) -> bool {
        let head = Head {
            code,
            headers,
            upstream_cache_status,
            tags,
        };
        let status = CacheStatus::forwarded(self.miss);
        matches!(self.store(head, body, freshness, status), Fill::Stored { status, .. } if status.stored)
    }

    /// Whether no purge applied since this fill started matches what it fetched.
    fn may_store(&self, key: &CacheKey, tags: &[String]) -> bool {
        let edge = &self.edge;
        edge.invalidation.may_store(
            self.purge_seq,
            &self.site,
            key,
            tags,
            &edge.live().sites,
            edge.store.as_ref(),
        )
    }

    /// A `304` refreshed a stale entry: merge its headers into the stored ones
    /// (RFC 9111 4.3.4) and store the result with its new freshness.
    fn revalidated(
        &self,
        cached: &Cached,
        update: &HeaderMap,
        exchange: Exchange,
        mut status: CacheStatus,
    ) -> Fill {
        let stale = cached.response();
        let mut headers = stale.headers();
        let mut fresh = update.clone();
        strip_hop_by_hop(&mut fresh);
        for name in [header::CONTENT_LENGTH, header::VIA] {
            fresh.remove(&name);
        }
        let upstream_cache_status = fresh.remove(&CACHE_STATUS).or_else(|| {
            stale
                .upstream_cache_status()
                .and_then(|members| HeaderValue::from_str(members).ok())
        });
        let mut last = None;
        for (name, value) in fresh {
            // `HeaderMap`'s owned iterator yields a name only for the first of its values.
            let name = match name {
                Some(name) => {
                    headers.remove(&name);
                    last = Some(name.clone());
                    name
                }
                None => match &last {
                    Some(name) => name.clone(),
                    None => continue,
                },
            };
            headers.append(name, value);
        }
        // Freshness comes from the merged headers, with this exchange's timing and the
        // 304's Age (if any) in place of the stored one.
        let mut for_age = headers.clone();
        for_age.remove(header::AGE);
        if let Some(age) = update.get(header::AGE) {
            for_age.insert(header::AGE, age.clone());
        }
        match evaluate(
            stale.status,
            &for_age,
            &self.request_cc,
            self.credentialed(),
            &self.site.freshness,
            exchange,
        ) {
            Ok(freshness) => {
                let entry = StoredResponse::new(
                    stale.status,
                    headers,
                    upstream_cache_status,
                    stale.stored_body(),
                    freshness,
                )
                .selected_as(stale.selected_by().cloned());
                let entry = cached.with_head(entry);
                if !self.may_store(&self.key, &[]) {
                    return Fill::Stored { entry, status };
                }
                self.edge
                    .store
                    .insert(self.key.clone(), Entry::from(entry.clone()));
                status.stored = true;
                Fill::Stored { entry, status }
            }
            Err(reason) if matches!(cached, Cached::Sliced(_)) => {
                // The index holds no bytes to hand over: the client asks the upstream itself.
                if !self.credentialed() {
                    self.edge.store.remove(&self.key);
                }
                status.detail = Some(reason.as_str());
                Fill::Handoff {
                    response: Arc::new(Mutex::new(None)),
                    status,
                }
            }
            Err(reason) => {
                if !self.credentialed() {
                    self.edge.store.remove(&self.key);
                }
                let mut response = Response::new(EdgeBody::full(stale.body_bytes()));
                *response.status_mut() = stale.status;
                *response.headers_mut() = headers;
                let (parts, body) = response.into_parts();
                self.handoff(parts, body, reason, status)
            }
        }
    }

    /// Whether this fill fetches for one request with credentials.
    fn credentialed(&self) -> bool {
        self.fill == FillFor::Credentialed
    }

    /// The stale entry, if the upstream failed and the entry allows `stale-if-error`;
    /// never for a request with credentials (see [`crate::cache::lookup`]).
    fn stale_on_error(&self, status: &CacheStatus) -> Option<Fill> {
        if self.credentialed() {
            return None;
        }
        let stale = self.stale.as_ref()?;
        if !stale.freshness().may_serve_on_error(Instant::now()) {
            return None;
        }
        let mut status = status.clone();
        status.detail = Some(STALE_IF_ERROR);
        Some(Fill::Stored {
            entry: stale.clone(),
            status,
        })
    }

    fn handoff(
        &self,
        mut parts: http::response::Parts,
        body: EdgeBody,
        reason: NoCacheReason,
        mut status: CacheStatus,
    ) -> Fill {
        strip_targeted(&mut parts.headers);
        self.edge.metrics.not_stored(reason);
        // Remember that this URL cannot be shared, so the next requests do not queue behind
        // a fill they cannot use. Never for 5xx: an outage must not turn caching off; nor
        // for a ranged fill's answer other than 2xx (a 416 is about the range asked for);
        // nor for a credentialed fill: a request without credentials may well be storable.
        let about_the_range = self.range.is_some() && !parts.status.is_success();
        if !parts.status.is_server_error() && !about_the_range && !self.credentialed() {
            let marker = Entry::pass_marker(reason, pass_freshness());
            self.edge.store.insert(self.key.clone(), marker);
        }
        status.detail = Some(reason.as_str());
        Fill::Handoff {
            response: Arc::new(Mutex::new(Some(Response::from_parts(parts, body)))),
            status,
        }
    }
}

/// The freshness of a hit-for-pass marker: fresh for [`PASS_TTL`] from now.
pub(crate) fn pass_freshness() -> Freshness {
    Freshness {
        initial_age: 0,
        lifetime: delta_seconds(PASS_TTL.as_secs()),
        received: Instant::now(),
        must_revalidate: true,
        stale_while_revalidate: 0,
        stale_if_error: 0,
        shared_with_authorization: false,
    }
}

/// Makes a refetch conditional on the stale entry's validators.
fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(crate) enum ReadBody {
    /// The whole body, copied into one buffer of exactly its size.
    Complete(Bytes),
    /// Over the size limit: what was read so far, and the rest unread.
    TooLarge {
        prefix: VecDeque<Bytes>,
        rest: Incoming,
    },
}

pub(crate) async fn read_body(mut body: Incoming, limit: u64) -> Result<ReadBody, UpstreamError> {
    let mut chunks = VecDeque::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not stored
        };
        total += data.len() as u64;
        chunks.push_back(data);
        if total > limit {
            return Ok(ReadBody::TooLarge {
                prefix: chunks,
                rest: body,
            });
        }
    }
    let mut buf = BytesMut::with_capacity(usize::try_from(total).unwrap_or(0));
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
    }
    Ok(ReadBody::Complete(buf.freeze()))
}
