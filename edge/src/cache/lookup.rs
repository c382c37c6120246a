//! One decision for every request the cache might answer: a hit, a stale answer while one
//! background fill revalidates, a fill (a miss, or the revalidation of a stale entry), a
//! pass straight to the upstream, or a refusal.
//!
//! Both paths of a node decide here, from the same inputs: the HTTP/1.1 fast path, which
//! acts only on a hit of a whole response and leaves every other answer to the full path,
//! and the full path, which acts on every answer. So they cannot disagree about what is
//! fresh, what a hit-for-pass marker means, or which requests with credentials a stored
//! response may answer. What the store holds for the request comes in as an [`Entry`] (the
//! caller has already selected the variant), what the request asks beyond its key as an
//! [`Ask`].

use std::time::Instant;

use http::HeaderMap;
use http::header::{AUTHORIZATION, CACHE_CONTROL};

use crate::cache::control::CacheControl;
use crate::cache::status::Forward;
use crate::cache::store::{Cached, Entry};

/// What a request asks of the cache beyond its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// The request carries `Authorization`: only a fresh response that said it may be
    /// shared with such requests answers it (RFC 9111 3.5); anything else passes.
    pub authorization: bool,
    /// `Cache-Control: only-if-cached`: without a usable entry, refuse rather than fetch.
    pub only_if_cached: bool,
}

impl Ask {
    /// A request that asks nothing more than its key: every request the fast path serves
    /// (it sends those with `Authorization` or `Cache-Control` to the full path).
    pub const NOTHING: Ask = Ask {
        authorization: false,
        only_if_cached: false,
    };

    /// What a request with these header fields asks.
    pub fn of(request: &HeaderMap) -> Self {
        Self {
            authorization: request.contains_key(AUTHORIZATION),
            only_if_cached: request.contains_key(CACHE_CONTROL)
                && CacheControl::from_headers(request).only_if_cached,
        }
    }
}

/// What to do with a request, given what the store holds for it. A hit of a partial object
/// ([`Cached::Partial`]) answers only a request whose ranges it holds: the caller checks,
/// and fills the rest (`fwd=partial`); a `Fill` whose `stale` is a partial object asks for
/// ranges under its validator rather than revalidating it.
#[derive(Debug, Clone)]
pub enum Decision {
    /// A fresh entry answers it.
    Hit(Cached),
    /// A stale entry within its `stale-while-revalidate` window answers it now, while one
    /// background fill refreshes it.
    StaleWhileRevalidate(Cached),
    /// Fetch it through the coalescer: a miss (`stale` is `None`), or the revalidation of
    /// a stale entry, which is also what `stale-if-error` serves when the upstream fails.
    Fill { stale: Option<Cached> },
    /// Forward the request as it is, with this `fwd` and `detail` in `Cache-Status`: the
    /// URL has a fresh hit-for-pass marker (`detail` says why it is not stored), or the
    /// request has credentials no stored response may answer (`fwd=request`).
    Pass {
        fwd: Forward,
        detail: Option<&'static str>,
    },
    /// `only-if-cached` and nothing usable is stored: refuse (`504`), fetch nothing.
    Refuse,
}

/// The decision for a request asking `ask` whose key holds `found` at `now`. `miss` is the
/// request's `fwd` reason when nothing usable is stored (`uri-miss`, or `vary-miss` for a
/// URL whose responses vary), which a hit-for-pass marker passes on.
pub fn decide(found: Option<Entry>, miss: Forward, ask: Ask, now: Instant) -> Decision {
    let cached = match found {
        Some(Entry::Pass(marker)) if marker.freshness.is_fresh(now) => {
            return Decision::Pass {
                fwd: miss,
                detail: Some(marker.reason.as_str()),
            };
        }
        Some(Entry::Response(response)) => Some(Cached::Whole(response)),
        Some(Entry::SliceIndex(index)) => Some(Cached::Sliced(index)),
        Some(Entry::Partial(partial)) => Some(Cached::Partial(partial)),
        // A stale pass marker is no entry at all: the next fill tries again. A variant
        // index is never an answer (the caller selects the variant), nor is a slice (read
        // only through its index).
        Some(Entry::Pass(_) | Entry::Variants(_) | Entry::Slice(_)) | None => None,
    };
    if ask.authorization {
        return match cached {
            Some(cached)
                if cached.freshness().is_fresh(now)
                    && cached.freshness().shared_with_authorization =>
            {
                Decision::Hit(cached)
            }
            _ => Decision::Pass {
                fwd: Forward::Request,
                detail: None,
            },
        };
    }
    match cached {
        Some(cached) if cached.freshness().is_fresh(now) => Decision::Hit(cached),
        // A stale partial object is never served: what it holds is asked for again
        // (under its validator, so its spans are kept when they are still current).
        Some(Cached::Partial(_)) if ask.only_if_cached => Decision::Refuse,
        Some(Cached::Partial(partial)) => Decision::Fill {
            stale: Some(Cached::Partial(partial)),
        },
        Some(cached) if cached.freshness().may_serve_while_revalidating(now) => {
            Decision::StaleWhileRevalidate(cached)
        }
        _ if ask.only_if_cached => Decision::Refuse,
        stale => Decision::Fill { stale },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::StatusCode;

    use super::*;
    use crate::cache::freshness::Freshness;
    use crate::cache::partial::{PartialObject, Spans};
    use crate::cache::slice::SliceInfo;
    use crate::cache::status::NoCacheReason;
    use crate::cache::store::{Slice, SliceIndex, StoredResponse, Variants};
    use crate::cache::test_headers::headers;
    use crate::cache::vary::VaryIndex;

    /// `age` seconds old at `now`, fresh for `lifetime`, stale-while-revalidate `swr` after.
    fn freshness(now: Instant, age: u64, lifetime: u64, swr: u64, shared: bool) -> Freshness {
        Freshness {
            initial_age: age,
            lifetime,
            received: now,
            must_revalidate: false,
            stale_while_revalidate: swr,
            stale_if_error: 0,
            shared_with_authorization: shared,
        }
    }

    fn response(freshness: Freshness) -> Entry {
        let r = StoredResponse::new(StatusCode::OK, headers(&[]), None, Bytes::new(), freshness);
        Entry::Response(Arc::new(r))
    }

    fn kind(decision: &Decision) -> &'static str {
        match decision {
            Decision::Hit(Cached::Whole(_)) => "hit",
            Decision::Hit(Cached::Sliced(_)) => "hit-sliced",
            Decision::Hit(Cached::Partial(_)) => "hit-partial",
            Decision::Fill {
                stale: Some(Cached::Partial(_)),
            } => "complete-partial",
            Decision::StaleWhileRevalidate(_) => "swr",
            Decision::Fill { stale: None } => "miss",
            Decision::Fill { stale: Some(_) } => "revalidate",
            Decision::Pass { .. } => "pass",
            Decision::Refuse => "refuse",
        }
    }

    #[test]
    fn freshness_decides_between_hit_stale_while_revalidate_and_revalidation() {
        let now = Instant::now();
        let ask = Ask::NOTHING;
        let fresh = response(freshness(now, 0, 60, 0, false));
        assert_eq!(
            kind(&decide(Some(fresh), Forward::UriMiss, ask, now)),
            "hit"
        );
        let in_window = response(freshness(now, 100, 60, 60, false));
        assert_eq!(
            kind(&decide(Some(in_window), Forward::UriMiss, ask, now)),
            "swr"
        );
        let stale = response(freshness(now, 100, 60, 0, false));
        assert_eq!(
            kind(&decide(Some(stale.clone()), Forward::UriMiss, ask, now)),
            "revalidate"
        );
        assert_eq!(kind(&decide(None, Forward::UriMiss, ask, now)), "miss");
        let only = Ask {
            only_if_cached: true,
            ..Ask::NOTHING
        };
        assert_eq!(
            kind(&decide(Some(stale), Forward::UriMiss, only, now)),
            "refuse"
        );
        assert_eq!(kind(&decide(None, Forward::UriMiss, only, now)), "refuse");
    }

    #[test]
    fn a_fresh_pass_marker_passes_with_its_reason_and_a_stale_one_is_nothing() {
        let now = Instant::now();
        let marker = Entry::pass_marker(NoCacheReason::Private, freshness(now, 0, 60, 0, false));
        match decide(Some(marker), Forward::VaryMiss, Ask::NOTHING, now) {
            Decision::Pass { fwd, detail } => {
                assert_eq!((fwd, detail), (Forward::VaryMiss, Some("private")));
            }
            other => panic!("{other:?}"),
        }
        let stale = Entry::pass_marker(NoCacheReason::Private, freshness(now, 100, 60, 0, false));
        assert_eq!(
            kind(&decide(Some(stale), Forward::UriMiss, Ask::NOTHING, now)),
            "miss"
        );
    }

    #[test]
    fn credentials_are_answered_only_by_a_fresh_response_that_allows_it() {
        let now = Instant::now();
        let ask = Ask {
            authorization: true,
            ..Ask::NOTHING
        };
        let shared = response(freshness(now, 0, 60, 0, true));
        assert_eq!(
            kind(&decide(Some(shared), Forward::UriMiss, ask, now)),
            "hit"
        );
        let private = response(freshness(now, 0, 60, 0, false));
        match decide(Some(private), Forward::UriMiss, ask, now) {
            Decision::Pass { fwd, detail } => assert_eq!((fwd, detail), (Forward::Request, None)),
            other => panic!("{other:?}"),
        }
        let stale_shared = response(freshness(now, 100, 60, 60, true));
        assert_eq!(
            kind(&decide(Some(stale_shared), Forward::UriMiss, ask, now)),
            "pass"
        );
        assert_eq!(kind(&decide(None, Forward::UriMiss, ask, now)), "pass");
    }

    #[test]
    fn indexes_are_answers_only_for_slices_never_for_variants() {
        let now = Instant::now();
        let fresh = freshness(now, 0, 60, 0, false);
        let h = headers(&[("accept-ranges", "bytes"), ("etag", "\"v\"")]);
        let info = Arc::new(SliceInfo::plan(&h, 4096, 1024).expect("sliceable"));
        let head = StoredResponse::new(StatusCode::OK, h, None, Bytes::new(), fresh);
        let index = Entry::SliceIndex(Arc::new(SliceIndex {
            head,
            info: info.clone(),
        }));
        assert_eq!(
            kind(&decide(Some(index), Forward::UriMiss, Ask::NOTHING, now)),
            "hit-sliced"
        );
        let variants = Entry::Variants(Arc::new(Variants {
            index: VaryIndex::new(vec![http::header::ACCEPT_ENCODING]),
            freshness: fresh,
        }));
        assert_eq!(
            kind(&decide(Some(variants), Forward::UriMiss, Ask::NOTHING, now)),
            "miss"
        );
        let slice = Entry::Slice(Arc::new(Slice {
            info,
            body: Bytes::from_static(b"x"),
            freshness: fresh,
        }));
        assert_eq!(
            kind(&decide(Some(slice), Forward::UriMiss, Ask::NOTHING, now)),
            "miss"
        );
    }

    #[test]
    fn asks_are_read_from_the_request() {
        assert_eq!(Ask::of(&headers(&[])), Ask::NOTHING);
        let both = headers(&[
            ("authorization", "Bearer x"),
            ("cache-control", "only-if-cached"),
        ]);
        assert_eq!(
            Ask::of(&both),
            Ask {
                authorization: true,
                only_if_cached: true
            }
        );
        let other = headers(&[("cache-control", "no-cache")]);
        assert_eq!(Ask::of(&other), Ask::NOTHING);
    }

    #[test]
    fn a_partial_object_is_a_hit_while_fresh_and_never_served_stale() {
        let now = Instant::now();
        let partial = |freshness| {
            let head =
                StoredResponse::new(StatusCode::OK, headers(&[]), None, Bytes::new(), freshness);
            Entry::Partial(Arc::new(PartialObject {
                head,
                total: 10,
                validator: None,
                spans: Spans::new(0, Bytes::from_static(b"01234")),
            }))
        };
        let fresh = partial(freshness(now, 0, 60, 0, false));
        assert_eq!(
            kind(&decide(Some(fresh), Forward::UriMiss, Ask::NOTHING, now)),
            "hit-partial"
        );
        let in_window = partial(freshness(now, 100, 60, 60, false));
        assert_eq!(
            kind(&decide(
                Some(in_window),
                Forward::UriMiss,
                Ask::NOTHING,
                now
            )),
            "complete-partial"
        );
        let only = Ask {
            only_if_cached: true,
            ..Ask::NOTHING
        };
        let stale = partial(freshness(now, 100, 60, 60, false));
        assert_eq!(
            kind(&decide(Some(stale), Forward::UriMiss, only, now)),
            "refuse"
        );
    }
}
