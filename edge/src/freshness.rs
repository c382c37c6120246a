//! Whether a response may be stored, and for how long it stays fresh (RFC 9111 3 and 4.2).
//!
//! Ages are whole seconds, as the `Age` header is. The decision is made once, when a
//! response arrives; a hit only compares the stored deadline with the clock.

use std::time::{Duration, Instant, SystemTime};

use http::header::{AGE, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};

use crate::cache_control::{CacheControl, DELTA_SECONDS_MAX};
use crate::cache_status::NoCacheReason;

/// A site's freshness options.
#[derive(Debug, Clone, Default)]
pub struct FreshnessPolicy {
    /// Fraction of the `Last-Modified` age used as a heuristic lifetime; off when `None`.
    pub heuristic_fraction: Option<f64>,
    /// Upper bound of a heuristic lifetime.
    pub heuristic_max: Duration,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Age of the response when it arrived (RFC 9111 `corrected_initial_age`), seconds.
    pub initial_age: u64,
    /// Freshness lifetime, seconds.
    pub lifetime: u64,
    /// Monotonic time the response arrived.
    pub received: Instant,
    /// The response may not be served stale under any circumstances
    /// (`must-revalidate`, `proxy-revalidate`, `s-maxage`, or `no-cache`).
    pub must_revalidate: bool,
}

impl Freshness {
    /// Current age in seconds (RFC 9111 4.2.3 `current_age`).
    pub fn age(&self, now: Instant) -> u64 {
        let resident = now.saturating_duration_since(self.received).as_secs();
        self.initial_age
            .saturating_add(resident)
            .min(DELTA_SECONDS_MAX)
    }

    /// Seconds of freshness left; zero or negative when stale.
    pub fn ttl(&self, now: Instant) -> i64 {
        self.lifetime as i64 - self.age(now) as i64
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime
    }
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
    let cc = CacheControl::from_headers(headers);
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
    if headers.contains_key(VARY) {
        return Err(NoCacheReason::Vary);
    }

    let date = header_date(headers, &DATE).unwrap_or(exchange.response_time);
    let explicit = cc
        .s_maxage
        .stale_if_invalid()
        .or_else(|| cc.max_age.stale_if_invalid())
        .or_else(|| {
            headers.get(EXPIRES).map(|v| {
                // An invalid Expires means "already expired" (RFC 9111 5.3).
                let Some(expires) = v
                    .to_str()
                    .ok()
                    .and_then(|s| httpdate::parse_http_date(s).ok())
                else {
                    return 0;
                };
                expires
                    .duration_since(date)
                    .map_or(0, |d| d.as_secs().min(DELTA_SECONDS_MAX))
            })
        });
    let heuristic = || {
        let fraction = policy.heuristic_fraction?;
        if !(heuristically_cacheable(status) || cc.public) {
            return None;
        }
        let modified = header_date(headers, &LAST_MODIFIED)?;
        let since = date.duration_since(modified).ok()?;
        Some(since.mul_f64(fraction).min(policy.heuristic_max).as_secs())
    };
    let has_validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let lifetime = match explicit.or_else(heuristic) {
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
        initial_age: initial_age(headers, date, exchange),
        lifetime,
        received: exchange.received,
        must_revalidate: cc.must_revalidate
            || cc.proxy_revalidate
            || cc.no_cache
            || cc.s_maxage != Default::default(),
    })
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
    headers
        .get(name)?
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

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
            eval(200, &[("cache-control", "max-age=60"), ("vary", "accept")]),
            Err(NoCacheReason::Vary)
        );
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
}
