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
//!
//! A request with `Authorization` (RFC 9111 3.5) is answered from the cache only by a
//! fresh response that said it may be (`public`, `s-maxage`, `must-revalidate`); such a
//! response, once stale, is revalidated with the request's own credentials, never served
//! stale (neither `stale-while-revalidate` nor `stale-if-error`: 3.5 lets a shared cache
//! reuse the response only "in conformance with" those directives, and 4.2.4 leaves
//! serving stale to the cache; this cache reads that conservatively). Without a usable
//! entry it fills, but alone ([`FillFor::Credentialed`]).

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
    /// shared with such requests answers it (RFC 9111 3.5), a stale one is revalidated, a
    /// miss is filled alone ([`FillFor::Credentialed`]); an entry stored for requests
    /// without credentials passes (`fwd=request`).
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
    /// Fetch it: a miss (`stale` is `None`), or the revalidation of a stale entry, which is
    /// also what `stale-if-error` serves when the upstream fails (for anyone, not for a
    /// credentialed fill). `fill` says for whom, and so whether it is coalesced.
    Fill {
        stale: Option<Cached>,
        fill: FillFor,
    },
    /// Forward the request as it is, with this `fwd` and `detail` in `Cache-Status`: the
    /// URL has a fresh hit-for-pass marker (`detail` says why it is not stored), or the
    /// request has credentials and what is stored was stored for requests without them
    /// (`fwd=request`).
    Pass {
        fwd: Forward,
        detail: Option<&'static str>,
    },
    /// `only-if-cached` and nothing usable is stored: refuse (`504`), fetch nothing.
    Refuse,
}

/// Who a fill fetches for, which decides how it is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillFor {
    /// Every request for the key: one fetch through the coalescer, sent without any
    /// client's credentials; a response it may not store leaves a hit-for-pass marker.
    Anyone,
    /// One request with `Authorization`: sent with the request's own credentials and never
    /// coalesced, in either direction. Until the response is known, nobody may be handed
    /// it (it may be this client's alone), and this client may not be handed a fetch made
    /// without its credentials. Its response is stored only when it may answer requests
    /// with credentials (`Freshness::shared_with_authorization`), it is never served stale
    /// on error, and a refusal leaves nothing behind (no marker: the refusal may be about
    /// these credentials, and a request without them may still be storable).
    Credentialed,
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
            Some(cached) if cached.freshness().shared_with_authorization => {
                if cached.freshness().is_fresh(now) {
                    Decision::Hit(cached)
                } else if ask.only_if_cached {
                    Decision::Refuse
                } else {
                    Decision::Fill {
                        stale: Some(cached),
                        fill: FillFor::Credentialed,
                    }
                }
            }
            // Stored for requests without credentials: it answers none with them, fresh or
            // stale, and a revalidation with these credentials could not refresh it (a
            // `304` to them says nothing about what others get). The credentials made it
            // pass.
            Some(_) if ask.only_if_cached => Decision::Refuse,
            Some(_) => Decision::Pass {
                fwd: Forward::Request,
                detail: None,
            },
            None if ask.only_if_cached => Decision::Refuse,
            None => Decision::Fill {
                stale: None,
                fill: FillFor::Credentialed,
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
            fill: FillFor::Anyone,
        },
        Some(cached) if cached.freshness().may_serve_while_revalidating(now) => {
            Decision::StaleWhileRevalidate(cached)
        }
        _ if ask.only_if_cached => Decision::Refuse,
        stale => Decision::Fill {
            stale,
            fill: FillFor::Anyone,
        },
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
    fn freshness(now: Instant, age: u32, lifetime: u32, swr: u32, shared: bool) -> Freshness {
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
                ..
            } => "complete-partial",
            Decision::StaleWhileRevalidate(_) => "swr",
            Decision::Fill {
                stale: None,
                fill: FillFor::Anyone,
            } => "miss",
            Decision::Fill {
                stale: Some(_),
                fill: FillFor::Anyone,
            } => "revalidate",
            Decision::Fill {
                stale: None,
                fill: FillFor::Credentialed,
            } => "miss-alone",
            Decision::Fill {
                stale: Some(_),
                fill: FillFor::Credentialed,
            } => "revalidate-alone",
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
        // Stored for requests without credentials: fresh or stale, it passes, and it is the
        // credentials that made it pass.
        for private in [
            response(freshness(now, 0, 60, 0, false)),
            response(freshness(now, 100, 60, 600, false)),
        ] {
            match decide(Some(private), Forward::UriMiss, ask, now) {
                Decision::Pass { fwd, detail } => {
                    assert_eq!((fwd, detail), (Forward::Request, None));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn credentials_fill_alone_and_never_get_a_stale_answer() {
        let now = Instant::now();
        let ask = Ask {
            authorization: true,
            ..Ask::NOTHING
        };
        assert_eq!(
            kind(&decide(None, Forward::UriMiss, ask, now)),
            "miss-alone"
        );
        // Within its stale-while-revalidate window, a shared entry is still revalidated
        // first for a request with credentials, by that request's own fill.
        let stale_shared = response(freshness(now, 100, 60, 600, true));
        assert_eq!(
            kind(&decide(
                Some(stale_shared.clone()),
                Forward::UriMiss,
                ask,
                now
            )),
            "revalidate-alone"
        );
        // The same entry for a request without credentials: served while revalidating.
        assert_eq!(
            kind(&decide(
                Some(stale_shared.clone()),
                Forward::UriMiss,
                Ask::NOTHING,
                now
            )),
            "swr"
        );
        // A stale marker is nothing; a fresh one passes, credentials or not.
        let stale_marker =
            Entry::pass_marker(NoCacheReason::Private, freshness(now, 100, 60, 0, false));
        assert_eq!(
            kind(&decide(Some(stale_marker), Forward::UriMiss, ask, now)),
            "miss-alone"
        );
        let marker = Entry::pass_marker(NoCacheReason::Private, freshness(now, 0, 60, 0, false));
        assert_eq!(
            kind(&decide(Some(marker), Forward::UriMiss, ask, now)),
            "pass"
        );
        // only-if-cached refuses rather than fetch, with credentials too.
        let only = Ask {
            only_if_cached: true,
            ..ask
        };
        assert_eq!(kind(&decide(None, Forward::UriMiss, only, now)), "refuse");
        assert_eq!(
            kind(&decide(Some(stale_shared), Forward::UriMiss, only, now)),
            "refuse"
        );
        let private = response(freshness(now, 0, 60, 0, false));
        assert_eq!(
            kind(&decide(Some(private), Forward::UriMiss, only, now)),
            "refuse"
        );
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
