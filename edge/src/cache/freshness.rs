//! Whether a response may be stored, and for how long it stays fresh (RFC 9111 3 and 4.2).
//!
//! Ages are whole seconds, as the `Age` header is. The decision is made once, when a
//! response arrives; a hit only compares the stored deadline with the clock.

use std::time::{Duration, Instant, SystemTime};

use http::header::{AGE, DATE, ETAG, EXPIRES, HeaderName, LAST_MODIFIED, SET_COOKIE};
use http::{HeaderMap, StatusCode};

use crate::cache::control::{CacheControl, DELTA_SECONDS_MAX, Seconds};
use crate::cache::http_date;
use crate::cache::status::NoCacheReason;

/// A site's freshness options.
#[derive(Debug, Clone, Default)]
pub struct FreshnessPolicy {
    /// Fraction of the `Last-Modified` age used as a heuristic lifetime; off when `None`.
    pub heuristic_fraction: Option<f64>,
    /// Upper bound of a heuristic lifetime.
    pub heuristic_max: Duration,
    /// Lifetime of a 404 or 410 that carries no freshness of its own; zero is off.
    pub negative_ttl: Duration,
    /// `stale-while-revalidate` for responses that do not say.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` for responses that do not say.
    pub stale_if_error: Duration,
}

/// `CDN-Cache-Control` (RFC 9213), a field this cache obeys instead of `Cache-Control`.
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Control`, the older targeted field, obeyed when `CDN-Cache-Control` is absent.
pub static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Removes the fields meant for this cache alone, so clients never see them.
pub fn strip_targeted(headers: &mut HeaderMap) {
    headers.remove(&CDN_CACHE_CONTROL);
    headers.remove(&SURROGATE_CONTROL);
}

/// Whether a field is meant for this cache alone.
pub fn is_targeted(name: &HeaderName) -> bool {
    name == CDN_CACHE_CONTROL || name == SURROGATE_CONTROL
}

/// The directives this cache obeys: a targeted field (RFC 9213) when the response has a
/// usable one, else `Cache-Control`. Returns whether a targeted field was used.
///
/// `CDN-Cache-Control` is a Structured Field and is ignored when it does not parse as a
/// Dictionary (see [`CacheControl::from_targeted`]); `Surrogate-Control` predates
/// Structured Fields and is read with the lenient `Cache-Control` grammar.
pub fn effective_cache_control(headers: &HeaderMap) -> (CacheControl, bool) {
    if let Some(cc) = CacheControl::from_targeted(headers, &CDN_CACHE_CONTROL) {
        return (cc, true);
    }
    if headers.contains_key(&SURROGATE_CONTROL) {
        return (CacheControl::from_named(headers, &SURROGATE_CONTROL), true);
    }
    (CacheControl::from_headers(headers), false)
}

/// Timing of one upstream exchange, for the age calculation.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// Wall clock when the request was sent.
    pub request_time: SystemTime,
    /// Wall clock when the response head arrived.
    pub response_time: SystemTime,
    /// Monotonic clock at the same moment as `response_time`.
    pub received: Instant,
}

impl Exchange {
    /// An exchange that took no time, happening now.
    pub fn now() -> Self {
        let t = SystemTime::now();
        Self {
            request_time: t,
            response_time: t,
            received: Instant::now(),
        }
    }
}

/// How long a stored response stays fresh, fixed when it was stored.
///
/// Seconds are `u32`: RFC 9111 1.2.2 caps delta-seconds at 2^31, and the memory tier holds
/// one of these per object (40 B, where `u64`s made it 56 B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Age of the response when it arrived (RFC 9111 `corrected_initial_age`), seconds.
    pub initial_age: u32,
    /// Freshness lifetime, seconds.
    pub lifetime: u32,
    /// Monotonic time the response arrived.
    pub received: Instant,
    /// The response may not be served stale under any circumstances
    /// (`must-revalidate`, `proxy-revalidate`, `s-maxage`, or `no-cache`).
    pub must_revalidate: bool,
    /// Seconds past its lifetime during which it may be served while it is refreshed.
    pub stale_while_revalidate: u32,
    /// Seconds past its lifetime during which it may be served when the upstream fails.
    pub stale_if_error: u32,
    /// The response said `public`, `s-maxage` or `must-revalidate`: it may answer requests
    /// that carry `Authorization` (RFC 9111 3.5).
    pub shared_with_authorization: bool,
}

impl Freshness {
    /// The same freshness with no lifetime left (a soft purge): stale from now on, and
    /// still usable for `stale-if-error` and revalidation.
    pub fn expired(self) -> Self {
        Self {
            lifetime: 0,
            ..self
        }
    }

    /// Current age in seconds (RFC 9111 4.2.3 `current_age`).
    pub fn age(&self, now: Instant) -> u64 {
        let resident = now.saturating_duration_since(self.received).as_secs();
        u64::from(self.initial_age)
            .saturating_add(resident)
            .min(DELTA_SECONDS_MAX)
    }

    /// Seconds of freshness left; zero or negative when stale.
    pub fn ttl(&self, now: Instant) -> i64 {
        i64::from(self.lifetime) - self.age(now) as i64
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < u64::from(self.lifetime)
    }

    /// Seconds since the response became stale (zero while fresh).
    pub fn staleness(&self, now: Instant) -> u64 {
        self.age(now).saturating_sub(u64::from(self.lifetime))
    }

    /// Whether a stale response may be served while a refresh runs in the background.
    pub fn may_serve_while_revalidating(&self, now: Instant) -> bool {
        !self.must_revalidate && self.staleness(now) < u64::from(self.stale_while_revalidate)
    }

    /// Whether a stale response may be served because the upstream failed.
    pub fn may_serve_on_error(&self, now: Instant) -> bool {
        !self.must_revalidate && self.staleness(now) < u64::from(self.stale_if_error)
    }
}

/// Seconds as a [`Freshness`] holds them: clamped to `DELTA_SECONDS_MAX` (RFC 9111 1.2.2).
pub fn delta_seconds(seconds: u64) -> u32 {
    seconds.min(DELTA_SECONDS_MAX) as u32
}

/// Status codes RFC 9110 15.1 calls heuristically cacheable.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Decides whether a response to a GET may be stored by a shared cache, and if so how
/// fresh it is.
///
/// `request_cc` is the request's `Cache-Control`; `request_authorized` says whether the
/// request carried `Authorization`.
pub fn evaluate(
    status: StatusCode,
    headers: &HeaderMap,
    request_cc: &CacheControl,
    request_authorized: bool,
    policy: &FreshnessPolicy,
    exchange: Exchange,
) -> Result<Freshness, NoCacheReason> {
    let (cc, targeted) = effective_cache_control(headers);
    let understood = heuristically_cacheable(status) || matches!(status.as_u16(), 302 | 307);
    if status.is_informational() || matches!(status.as_u16(), 206 | 304) {
        return Err(NoCacheReason::Status);
    }
    if cc.must_understand {
        if !understood {
            return Err(NoCacheReason::MustUnderstand);
        }
    } else if cc.no_store {
        return Err(NoCacheReason::NoStore);
    }
    if request_cc.no_store {
        return Err(NoCacheReason::NoStore);
    }
    if cc.private {
        return Err(NoCacheReason::Private);
    }
    if request_authorized && !(cc.public || cc.must_revalidate || cc.s_maxage != Default::default())
    {
        return Err(NoCacheReason::Authorization);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NoCacheReason::SetCookie);
    }
    if crate::cache::vary::vary_of(headers) == crate::cache::vary::Vary::Any {
        return Err(NoCacheReason::Vary);
    }

    let date = header_date(headers, &DATE).unwrap_or(exchange.response_time);
    let explicit = explicit_lifetime(headers, &cc, targeted, date);
    let heuristic = || {
        let fraction = policy.heuristic_fraction?;
        if !(heuristically_cacheable(status) || cc.public) {
            return None;
        }
        let modified = header_date(headers, &LAST_MODIFIED)?;
        let since = date.duration_since(modified).ok()?;
        Some(since.mul_f64(fraction).min(policy.heuristic_max).as_secs())
    };
    let negative = || {
        (matches!(status.as_u16(), 404 | 410) && !policy.negative_ttl.is_zero())
            .then(|| policy.negative_ttl.as_secs().max(1))
    };
    let has_validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let lifetime = match explicit.or_else(heuristic).or_else(negative) {
        Some(_) if cc.no_cache => 0,
        Some(lifetime) => lifetime,
        None if cc.no_cache => 0,
        None => return Err(NoCacheReason::NoFreshness),
    };
    // A response that is stale on arrival is only worth keeping if it can be revalidated.
    if lifetime == 0 && !has_validator {
        return Err(NoCacheReason::NoFreshness);
    }

    Ok(Freshness {
        initial_age: delta_seconds(initial_age(headers, date, exchange)),
        lifetime: delta_seconds(lifetime),
        received: exchange.received,
        must_revalidate: cc.must_revalidate
            || cc.proxy_revalidate
            || cc.no_cache
            || cc.s_maxage != Default::default(),
        stale_while_revalidate: delta_seconds(stale_window(
            cc.stale_while_revalidate,
            policy.stale_while_revalidate,
        )),
        stale_if_error: delta_seconds(stale_window(cc.stale_if_error, policy.stale_if_error)),
        shared_with_authorization: cc.public
            || cc.must_revalidate
            || cc.s_maxage != Default::default(),
    })
}

/// Decides whether a response to a POST may be stored as the answer to later GETs and
/// HEADs of its target (RFC 9110 9.3.3 and 8.7), and if so how fresh it is: a `200` or
/// `203` with explicit freshness (RFC 9111 4.2.1: `s-maxage`, `max-age` or `Expires`;
/// never a heuristic or negative lifetime), whose `Content-Location` names the POST's own
/// target (`names_target`, resolved by the caller: [`crate::cache::key::resolve_reference`]),
/// and which [`evaluate`] would store, with the POST's `Cache-Control` and credentials.
pub fn evaluate_post(
    status: StatusCode,
    headers: &HeaderMap,
    names_target: bool,
    request_cc: &CacheControl,
    request_authorized: bool,
    policy: &FreshnessPolicy,
    exchange: Exchange,
) -> Result<Freshness, NoCacheReason> {
    if !matches!(status.as_u16(), 200 | 203) {
        return Err(NoCacheReason::Status);
    }
    if !names_target {
        return Err(NoCacheReason::ContentLocation);
    }
    let (cc, targeted) = effective_cache_control(headers);
    let date = header_date(headers, &DATE).unwrap_or(exchange.response_time);
    if explicit_lifetime(headers, &cc, targeted, date).is_none() {
        return Err(NoCacheReason::NoFreshness);
    }
    evaluate(
        status,
        headers,
        request_cc,
        request_authorized,
        policy,
        exchange,
    )
}

/// The lifetime a response states itself (RFC 9111 4.2.1): `s-maxage`, else `max-age`,
/// else `Expires` relative to `date` (not with a targeted field, which replaces both).
/// `None` when it states none.
fn explicit_lifetime(
    headers: &HeaderMap,
    cc: &CacheControl,
    targeted: bool,
    date: SystemTime,
) -> Option<u64> {
    cc.s_maxage
        .stale_if_invalid()
        .or_else(|| cc.max_age.stale_if_invalid())
        .or_else(|| {
            // A targeted field replaces Cache-Control and Expires alike.
            if targeted {
                return None;
            }
            headers.get(EXPIRES).map(|v| {
                // An invalid Expires means "already expired" (RFC 9111 5.3).
                let Some(expires) = v.to_str().ok().and_then(http_date::parse) else {
                    return 0;
                };
                expires
                    .duration_since(date)
                    .map_or(0, |d| d.as_secs().min(DELTA_SECONDS_MAX))
            })
        })
}

/// A response's own stale window, else the site's default; an invalid value allows none.
fn stale_window(directive: Seconds, default: Duration) -> u64 {
    match directive {
        Seconds::Valid(v) => v,
        Seconds::Invalid => 0,
        Seconds::Absent => default.as_secs(),
    }
}

/// RFC 9111 4.2.3 `corrected_initial_age`.
fn initial_age(headers: &HeaderMap, date: SystemTime, exchange: Exchange) -> u64 {
    let apparent_age = exchange
        .response_time
        .duration_since(date)
        .map_or(0, |d| d.as_secs());
    let response_delay = exchange
        .response_time
        .duration_since(exchange.request_time)
        .map_or(0, |d| d.as_secs());
    let corrected_age_value = age_value(headers).saturating_add(response_delay);
    apparent_age.max(corrected_age_value).min(DELTA_SECONDS_MAX)
}

/// The `Age` header: the first member of a list, ignored when invalid (RFC 9111 5.1).
pub fn age_value(headers: &HeaderMap) -> u64 {
    let Some(first) = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next())
        .map(str::trim)
    else {
        return 0;
    };
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    first
        .parse::<u64>()
        .map_or(DELTA_SECONDS_MAX, |v| v.min(DELTA_SECONDS_MAX))
}

fn header_date(headers: &HeaderMap, name: &http::HeaderName) -> Option<SystemTime> {
    http_date::header(headers, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cache::test_headers::headers;

    fn eval(status: u16, pairs: &[(&'static str, &str)]) -> Result<Freshness, NoCacheReason> {
        evaluate(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            &CacheControl::default(),
            false,
            &FreshnessPolicy::default(),
            Exchange::now(),
        )
    }

    #[test]
    fn max_age_and_s_maxage() {
        assert_eq!(
            eval(200, &[("cache-control", "max-age=60")])
                .unwrap()
                .lifetime,
            60
        );
        let f = eval(200, &[("cache-control", "max-age=60, s-maxage=5")]).unwrap();
        assert_eq!(f.lifetime, 5);
        assert!(f.must_revalidate, "s-maxage implies proxy-revalidate");
    }

    #[test]
    fn refusals_name_their_reason() {
        assert_eq!(
            eval(200, &[("cache-control", "no-store, max-age=60")]),
            Err(NoCacheReason::NoStore)
        );
        assert_eq!(
            eval(200, &[("cache-control", "private, max-age=60")]),
            Err(NoCacheReason::Private)
        );
        assert_eq!(eval(200, &[]), Err(NoCacheReason::NoFreshness));
        assert_eq!(
            eval(
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NoCacheReason::SetCookie)
        );
        assert_eq!(
            eval(206, &[("cache-control", "max-age=60")]),
            Err(NoCacheReason::Status)
        );
        assert_eq!(
            eval(
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, *")]
            ),
            Err(NoCacheReason::Vary)
        );
        assert!(eval(200, &[("cache-control", "max-age=60"), ("vary", "accept")]).is_ok());
    }

    #[test]
    fn must_understand_overrides_no_store_for_understood_statuses() {
        let cc = "must-understand, no-store, max-age=60";
        assert_eq!(eval(200, &[("cache-control", cc)]).unwrap().lifetime, 60);
        assert_eq!(
            eval(299, &[("cache-control", cc)]),
            Err(NoCacheReason::MustUnderstand)
        );
    }

    #[test]
    fn no_cache_stores_only_with_a_validator_and_always_revalidates() {
        assert_eq!(
            eval(200, &[("cache-control", "no-cache, max-age=60")]),
            Err(NoCacheReason::NoFreshness)
        );
        let f = eval(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]).unwrap();
        assert_eq!(f.lifetime, 0);
        assert!(f.must_revalidate && !f.is_fresh(Instant::now()));
    }

    #[test]
    fn expires_relative_to_date_and_invalid_expires_is_stale() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let f = eval(200, &[("date", &date), ("expires", &expires)]).unwrap();
        assert!((99..=100).contains(&f.lifetime), "{}", f.lifetime);
        let f = eval(200, &[("expires", "not a date"), ("etag", "\"x\"")]).unwrap();
        assert_eq!(f.lifetime, 0);
    }

    #[test]
    fn invalid_max_age_is_stale_not_ignored() {
        let f = eval(200, &[("cache-control", "max-age=abc"), ("etag", "\"x\"")]).unwrap();
        assert_eq!(f.lifetime, 0);
    }

    #[test]
    fn age_header_counts_toward_current_age() {
        let f = eval(200, &[("cache-control", "max-age=60"), ("age", "50")]).unwrap();
        assert_eq!(f.initial_age, 50);
        assert_eq!(f.ttl(f.received), 10);
        assert!(f.is_fresh(f.received));
        assert!(!f.is_fresh(f.received + Duration::from_secs(10)));
    }

    #[test]
    fn bad_age_values_are_ignored_and_huge_ones_clamped() {
        for (age, want) in [
            ("-5", 0),
            ("1.5", 0),
            ("x", 0),
            ("7, 9", 7),
            ("99999999999999999999", DELTA_SECONDS_MAX),
        ] {
            assert_eq!(age_value(&headers(&[("age", age)])), want, "{age}");
        }
    }

    #[test]
    fn apparent_age_from_an_old_date() {
        let date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        let f = eval(200, &[("cache-control", "max-age=60"), ("date", &date)]).unwrap();
        assert!((30..=31).contains(&f.initial_age), "{}", f.initial_age);
    }

    #[test]
    fn heuristic_freshness_only_when_configured() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let modified = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let h = headers(&[("date", &date), ("last-modified", &modified)]);
        let policy = FreshnessPolicy {
            heuristic_fraction: Some(0.1),
            heuristic_max: Duration::from_secs(3600),
            ..FreshnessPolicy::default()
        };
        let ok = evaluate(
            StatusCode::OK,
            &h,
            &CacheControl::default(),
            false,
            &policy,
            Exchange::now(),
        )
        .unwrap();
        assert_eq!(ok.lifetime, 100);
        let off = evaluate(
            StatusCode::OK,
            &h,
            &CacheControl::default(),
            false,
            &FreshnessPolicy::default(),
            Exchange::now(),
        );
        assert_eq!(off, Err(NoCacheReason::NoFreshness));
    }

    fn eval_with(
        status: u16,
        pairs: &[(&'static str, &str)],
        policy: &FreshnessPolicy,
    ) -> Result<Freshness, NoCacheReason> {
        evaluate(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            &CacheControl::default(),
            false,
            policy,
            Exchange::now(),
        )
    }

    #[test]
    fn targeted_fields_take_precedence_over_cache_control_and_expires() {
        let f = eval(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=600"),
            ],
        )
        .unwrap();
        assert_eq!(f.lifetime, 600);
        assert_eq!(
            eval(
                200,
                &[
                    ("cache-control", "max-age=600"),
                    ("cdn-cache-control", "no-store")
                ]
            ),
            Err(NoCacheReason::NoStore)
        );
        let f = eval(
            200,
            &[
                ("cache-control", "max-age=5"),
                ("surrogate-control", "max-age=99"),
            ],
        )
        .unwrap();
        assert_eq!(f.lifetime, 99);
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(500));
        assert_eq!(
            eval(
                200,
                &[("expires", &expires), ("cdn-cache-control", "public")]
            ),
            Err(NoCacheReason::NoFreshness)
        );
    }

    #[test]
    fn negative_caching_applies_to_404_and_410_without_freshness() {
        let policy = FreshnessPolicy {
            negative_ttl: Duration::from_secs(10),
            ..FreshnessPolicy::default()
        };
        assert_eq!(eval_with(404, &[], &policy).unwrap().lifetime, 10);
        assert_eq!(eval_with(410, &[], &policy).unwrap().lifetime, 10);
        assert_eq!(
            eval_with(404, &[("cache-control", "max-age=60")], &policy)
                .unwrap()
                .lifetime,
            60
        );
        assert_eq!(
            eval_with(500, &[], &policy),
            Err(NoCacheReason::NoFreshness)
        );
        assert_eq!(
            eval_with(404, &[("cache-control", "no-store")], &policy),
            Err(NoCacheReason::NoStore)
        );
        assert_eq!(eval(404, &[]), Err(NoCacheReason::NoFreshness));
    }

    #[test]
    fn stale_windows_from_directives_or_site_defaults() {
        let policy = FreshnessPolicy {
            stale_if_error: Duration::from_secs(300),
            ..FreshnessPolicy::default()
        };
        let f = eval_with(
            200,
            &[(
                "cache-control",
                "max-age=10, stale-while-revalidate=30, stale-if-error=60",
            )],
            &policy,
        )
        .unwrap();
        assert_eq!((f.stale_while_revalidate, f.stale_if_error), (30, 60));
        let f = eval_with(200, &[("cache-control", "max-age=10")], &policy).unwrap();
        assert_eq!((f.stale_while_revalidate, f.stale_if_error), (0, 300));
        let later = f.received + Duration::from_secs(100);
        assert_eq!(f.staleness(later), 90);
        assert!(f.may_serve_on_error(later) && !f.may_serve_while_revalidating(later));
        let strict = eval_with(
            200,
            &[(
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=600",
            )],
            &policy,
        )
        .unwrap();
        assert!(
            !strict.may_serve_on_error(later),
            "must-revalidate forbids stale"
        );
    }

    #[test]
    fn only_explicitly_shared_responses_may_answer_authorized_requests() {
        assert!(
            !eval(200, &[("cache-control", "max-age=60")])
                .unwrap()
                .shared_with_authorization
        );
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert!(
                eval(200, &[("cache-control", cc)])
                    .unwrap()
                    .shared_with_authorization,
                "{cc}"
            );
        }
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        let eval_auth = |cc: &str| {
            evaluate(
                StatusCode::OK,
                &headers(&[("cache-control", cc)]),
                &CacheControl::default(),
                true,
                &FreshnessPolicy::default(),
                Exchange::now(),
            )
        };
        assert_eq!(eval_auth("max-age=60"), Err(NoCacheReason::Authorization));
        assert!(eval_auth("public, max-age=60").is_ok());
        assert!(eval_auth("s-maxage=60").is_ok());
    }

    #[test]
    fn a_post_response_is_stored_only_with_explicit_freshness_and_its_own_location() {
        let post = |status: u16, pairs: &[(&'static str, &str)], names_target: bool| {
            evaluate_post(
                StatusCode::from_u16(status).unwrap(),
                &headers(pairs),
                names_target,
                &CacheControl::default(),
                false,
                &FreshnessPolicy {
                    heuristic_fraction: Some(0.1),
                    heuristic_max: Duration::from_secs(3600),
                    negative_ttl: Duration::from_secs(10),
                    ..FreshnessPolicy::default()
                },
                Exchange::now(),
            )
        };
        let max_age = [("cache-control", "max-age=60")];
        assert_eq!(post(200, &max_age, true).unwrap().lifetime, 60);
        assert_eq!(post(203, &max_age, true).unwrap().lifetime, 60);
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        assert!(post(200, &[("expires", &expires)], true).is_ok());
        assert_eq!(
            post(200, &max_age, false),
            Err(NoCacheReason::ContentLocation)
        );
        for status in [201, 204, 301, 404] {
            assert_eq!(
                post(status, &max_age, true),
                Err(NoCacheReason::Status),
                "{status}"
            );
        }
        // Heuristic freshness (which the policy would give a GET) is not enough.
        let modified = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(9999));
        assert_eq!(
            post(200, &[("last-modified", &modified)], true),
            Err(NoCacheReason::NoFreshness)
        );
        // Whatever a GET's response could not do, neither can it.
        assert_eq!(
            post(200, &[("cache-control", "private, max-age=60")], true),
            Err(NoCacheReason::Private)
        );
    }
}
