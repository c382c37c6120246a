//! Responses to POSTs kept as the answer to later GETs of their target (RFC 9110 9.3.3).
//!
//! A POST always passes through to the upstream (its body streamed, never coalesced), and a
//! successful one first invalidates its target and the same-host `Location` and
//! `Content-Location` URIs (RFC 9111 4.4, `Edge::invalidate_after_unsafe`). On a site with
//! `store_post_content_location`, its response is then also stored under the GET key of
//! the target, replacing what the invalidation removed, when
//! [`evaluate_post`] allows it: a `200`/`203` with explicit freshness whose one
//! `Content-Location`, resolved against the target URI (same scheme, host and port) and
//! normalized as request targets are (the site's query rules), is the target itself
//! (RFC 9110 8.7: the content is then a current representation of that resource). The
//! variant is the one the POST's own request fields select, as for a fill; a body over
//! `max_object_size` is not stored (it streams on to the client).
//!
//! Invariant: only the POST's own target is ever written. A `Content-Location` naming any
//! other URI stores nothing, so no request can plant content under someone else's URL.

use std::collections::VecDeque;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::body::Incoming;

use crate::cache::control::CacheControl;
use crate::cache::freshness::{Exchange, evaluate_post};
use crate::cache::key::{CacheKey, normalize_target, resolve_reference};
use crate::cache::lookup::FillFor;
use crate::cache::status::{CACHE_STATUS, CacheStatus, Forward, NoCacheReason};
use crate::cache::store::Entry;
use crate::front::body::EdgeBody;
use crate::node::fill::{FillRequest, ReadBody, read_body};
use crate::node::invalidation::Invalidation;
use crate::node::proxy::Edge;
use crate::node::site::SiteMatch;
use crate::upstream::client::UpstreamError;
use crate::upstream::headers::{append_list, strip_hop_by_hop};

/// A POST whose response may be kept, as the decision needs it.
#[derive(Debug)]
pub(crate) struct Post<'a> {
    pub site: SiteMatch<'a>,
    /// The normalized target (origin-form): what the upstream was asked, and the key's.
    pub target: &'a str,
    /// The target URI's scheme (`http`, `https`) and authority, which a `Content-Location`
    /// is resolved against.
    pub scheme: &'static str,
    pub authority: &'a str,
    /// The client's request fields: its credentials and `Cache-Control`.
    pub request: &'a HeaderMap,
    /// The fields sent upstream, which select the variant a varying response is stored as.
    pub forwarded: &'a HeaderMap,
    pub exchange: Exchange,
    /// The node's purge watermark when the POST was sent.
    pub purge_seq: u64,
}

impl Edge {
    /// Keeps a POST's response for later GETs when it may be kept (see the module), and
    /// returns the body the client gets: the response's own, read whole when it is kept
    /// (then `status` says `stored`), streamed on otherwise (with the reason in `status`
    /// when the response named a `Content-Location` at all). Called after the RFC 9111 4.4
    /// invalidation, with the response head as the upstream sent it. An error is a body
    /// that failed while it was read.
    pub(crate) async fn keep_post_response(
        self: &Arc<Self>,
        post: Post<'_>,
        head: &http::response::Parts,
        body: Incoming,
        status: &mut CacheStatus,
    ) -> Result<EdgeBody, UpstreamError> {
        let site = post.site.site;
        let stream = |body| EdgeBody::stream(VecDeque::new(), body);
        let mut locations = head.headers.get_all(header::CONTENT_LOCATION).iter();
        let location = match (locations.next(), locations.next()) {
            (Some(location), None) => location,
            // No Content-Location: an ordinary POST. Several: none can be believed.
            (None, _) => return Ok(stream(body)),
            (Some(_), Some(_)) => {
                self.not_kept(status, NoCacheReason::ContentLocation);
                return Ok(stream(body));
            }
        };
        let names_target = location
            .to_str()
            .ok()
            .and_then(|l| resolve_reference(l, post.scheme, post.authority, post.target))
            .is_some_and(|named| {
                normalize_target(&named, &site.query).is_ok_and(|named| named == post.target)
            });
        let mut headers = head.headers.clone();
        if site.strip_set_cookie {
            headers.remove(header::SET_COOKIE);
        }
        let tags = Invalidation::tags_of(&headers);
        self.role.strip_downstream(&mut headers);
        let request_cc = CacheControl::from_headers(post.request);
        let authorized = post.request.contains_key(header::AUTHORIZATION);
        let decided = evaluate_post(
            head.status,
            &headers,
            names_target,
            &request_cc,
            authorized,
            &site.freshness,
            post.exchange,
        );
        let freshness = match decided {
            Ok(freshness) => freshness,
            Err(reason) => {
                self.not_kept(status, reason);
                return Ok(stream(body));
            }
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_object_size) {
            self.not_kept(status, NoCacheReason::TooLarge);
            return Ok(stream(body));
        }
        let timeout = self.upstream.body_timeout();
        let read = tokio::time::timeout(timeout, read_body(body, self.max_object_size))
            .await
            .unwrap_or(Err(UpstreamError::BodyTimeout(timeout)))?;
        let bytes = match read {
            ReadBody::Complete(bytes) => bytes,
            ReadBody::TooLarge { prefix, rest } => {
                self.not_kept(status, NoCacheReason::TooLarge);
                return Ok(EdgeBody::stream(prefix, rest));
            }
        };
        // The stored head, as a fill stores one.
        strip_hop_by_hop(&mut headers);
        append_list(&mut headers, header::VIA, &self.via);
        let upstream_cache_status = headers.remove(&CACHE_STATUS);
        headers.remove(header::AGE);
        if !headers.contains_key(header::DATE)
            && let Ok(date) =
                HeaderValue::from_str(&httpdate::fmt_http_date(post.exchange.response_time))
        {
            headers.insert(header::DATE, date);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        let primary = CacheKey::new(site.generation(), "http", post.site.host, post.target);
        let index = match self.store.get(&primary) {
            Some(Entry::Variants(variants)) => Some(variants.index.clone()),
            _ => None,
        };
        let keeper = FillRequest {
            edge: self.clone(),
            site: site.clone(),
            key: primary.clone(),
            primary,
            index,
            miss: Forward::Method,
            target: post.target.to_owned(),
            headers: post.forwarded.clone(),
            fill: if authorized {
                FillFor::Credentialed
            } else {
                FillFor::Anyone
            },
            request_cc,
            stale: None,
            purge_seq: post.purge_seq,
            range: None,
            interim: None,
        };
        status.stored = keeper.store_complete(
            head.status,
            headers,
            upstream_cache_status,
            tags,
            bytes.clone(),
            freshness,
        );
        Ok(EdgeBody::full(bytes))
    }

    /// A POST's response that named a `Content-Location` but is not kept, and why.
    fn not_kept(&self, status: &mut CacheStatus, reason: NoCacheReason) {
        self.metrics.not_stored(reason);
        status.detail = Some(reason.as_str());
    }
}
