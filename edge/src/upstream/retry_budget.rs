//! A budget that keeps retries from amplifying an outage.
//!
//! Retrying a failed upstream request is good when one server has a hiccup and harmful
//! when the whole pool is struggling: with two attempts per request, a failing pool sees
//! twice the load exactly when it can least take it. As in Finagle, Envoy and Linkerd, a
//! retry is allowed only while retries stay a fraction of the traffic, plus a small floor
//! so that a quiet service can still retry at all.
//!
//! Precisely, with the window being the current second and the 9 before it
//! ([`WINDOW_SECS`] one-second buckets, so between 9 and 10 seconds of history), a retry
//! at second `s` is allowed if either
//! - fewer than `min_per_second` retries were allowed so far in second `s` on the floor
//!   (the floor is tried first and is per second, so it cannot be saved up into a burst), or
//! - the retries allowed on the ratio in the window, this one included, are at most
//!   `ratio` times the requests recorded in the window.
//!
//! Invariants: only first attempts are recorded as requests (a retry never funds
//! retries); every allowed retry is counted where it was funded; and in any window the
//! allowed retries are at most `ratio * requests + min_per_second * WINDOW_SECS`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Seconds of history the budget looks at, one bucket each. Ten seconds rides out the
/// bursts of a single second without remembering an incident for long.
pub const WINDOW_SECS: usize = 10;

/// Parts per million: the ratio is held as an integer so that `0.2 * 100` allows
/// exactly 20 retries, not 19 or 21 by floating-point rounding.
const PPM: u128 = 1_000_000;

/// The `retry` section of an upstream pool's configuration.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request in the window, beyond the floor (0.2 = one in five).
    /// Negative or NaN counts as 0; precision is one millionth.
    pub ratio: f64,
    /// Retries allowed in every second whatever the traffic.
    pub min_per_second: u32,
    /// Most attempts for one request, the first included; 1 disables retries, 0 counts
    /// as 1.
    pub attempts: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 3,
            attempts: 2,
        }
    }
}

/// The retry budget of one upstream pool. Thread-safe.
#[derive(Debug)]
pub struct RetryBudget {
    ratio_ppm: u64,
    min_per_second: u32,
    attempts: u32,
    window: Mutex<Window>,
    /// Outside the lock so that a metrics scrape never waits on the request path.
    refused_total: AtomicU64,
}

#[derive(Debug)]
struct Window {
    /// The first instant seen; seconds are counted from it.
    origin: Option<Instant>,
    /// The latest second seen. Time never goes back: an instant read a little earlier by
    /// another thread is counted in this second.
    latest: u64,
    /// Second `s` lives in `buckets[s % WINDOW_SECS]` until second `s + WINDOW_SECS`
    /// reuses the slot.
    buckets: [Bucket; WINDOW_SECS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u64,
    floor_retries: u32,
    ratio_retries: u64,
}

impl RetryBudget {
    pub fn new(config: &RetryBudgetConfig) -> Self {
        RetryBudget {
            // `as` saturates: NaN and negatives give 0, huge ratios u64::MAX.
            ratio_ppm: (config.ratio * PPM as f64).round() as u64,
            min_per_second: config.min_per_second,
            attempts: config.attempts.max(1),
            window: Mutex::new(Window {
                origin: None,
                latest: 0,
                buckets: [Bucket::default(); WINDOW_SECS],
            }),
            refused_total: AtomicU64::new(0),
        }
    }

    /// Most attempts for one request, the first included. The budget is asked only for
    /// attempts after the first.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// Counts a request's first attempt, which funds `ratio` retries for the window.
    pub fn record_request(&self, now: Instant) {
        let mut window = self.lock();
        window.current(now).requests += 1;
    }

    /// Whether a retry may be sent now. An allowed retry is counted against the budget,
    /// so call this only when about to retry; a refused one is counted in
    /// [`RetryBudget::refused_total`].
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut window = self.lock();
        let min_per_second = self.min_per_second;
        let bucket = window.current(now);
        if bucket.floor_retries < min_per_second {
            bucket.floor_retries += 1;
            return true;
        }
        let (requests, ratio_retries) = window.totals();
        if u128::from(ratio_retries + 1) * PPM <= u128::from(self.ratio_ppm) * u128::from(requests)
        {
            window.current(now).ratio_retries += 1;
            return true;
        }
        drop(window);
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Retries refused since the budget was created, for a counter metric: nonzero means
    /// the pool was failing enough that clients saw errors a retry might have hidden.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The state is a few integers, consistent after every statement.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Window {
    /// The bucket of the second `now` falls in, emptied first if it still holds an
    /// older second.
    fn current(&mut self, now: Instant) -> &mut Bucket {
        let origin = *self.origin.get_or_insert(now);
        let second = now
            .saturating_duration_since(origin)
            .as_secs()
            .max(self.latest);
        self.latest = second;
        let bucket = &mut self.buckets[(second % WINDOW_SECS as u64) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::default()
            };
        }
        bucket
    }

    /// Requests and ratio-funded retries in the window ending at the latest second.
    fn totals(&self) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|bucket| self.latest - bucket.second < WINDOW_SECS as u64)
            .fold((0, 0), |(requests, retries), bucket| {
                (requests + bucket.requests, retries + bucket.ratio_retries)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&RetryBudgetConfig {
            ratio,
            min_per_second,
            attempts: 2,
        })
    }

    fn requests(budget: &RetryBudget, n: usize, now: Instant) {
        for _ in 0..n {
            budget.record_request(now);
        }
    }

    /// Retries allowed at `now` before the first refusal.
    fn allowed(budget: &RetryBudget, now: Instant) -> usize {
        let mut n = 0;
        while budget.try_retry(now) {
            n += 1;
            assert!(n < 10_000, "unbounded");
        }
        n
    }

    #[test]
    fn ratio_allows_a_fifth_of_the_requests() {
        let budget = budget(0.2, 0);
        let t0 = Instant::now();
        requests(&budget, 100, t0);
        for _ in 0..20 {
            assert!(budget.try_retry(t0));
        }
        assert!(!budget.try_retry(t0), "the 21st retry");
        assert_eq!(budget.refused_total(), 1);
    }

    #[test]
    fn floor_comes_on_top_of_the_ratio_once_per_second() {
        let budget = budget(0.2, 3);
        let t0 = Instant::now();
        requests(&budget, 100, t0);
        // 3 on the floor and 20 on the ratio.
        assert_eq!(allowed(&budget, t0), 23);
        // The next second has a new floor, but the ratio is spent for the window.
        assert_eq!(allowed(&budget, t0 + Duration::from_millis(1500)), 3);
    }

    #[test]
    fn floor_allows_retries_without_traffic() {
        let budget = budget(0.2, 3);
        let t0 = Instant::now();
        assert_eq!(allowed(&budget, t0), 3);
        assert_eq!(allowed(&budget, t0 + Duration::from_millis(999)), 0);
        assert_eq!(allowed(&budget, t0 + Duration::from_secs(1)), 3);
        let quiet = RetryBudget::new(&RetryBudgetConfig {
            min_per_second: 0,
            ..RetryBudgetConfig::default()
        });
        assert!(!quiet.try_retry(t0));
    }

    #[test]
    fn old_buckets_leave_the_window() {
        let budget = budget(0.2, 0);
        let t0 = Instant::now();
        requests(&budget, 100, t0);
        assert_eq!(allowed(&budget, t0), 20);
        let t5 = t0 + Duration::from_secs(5);
        requests(&budget, 100, t5);
        assert_eq!(allowed(&budget, t5), 20, "200 requests fund 40");
        // Still second 9: second 0 is in the window.
        assert_eq!(allowed(&budget, t0 + Duration::from_millis(9_999)), 0);
        // Second 10: second 0's 100 requests and 20 retries are gone, second 5's stay.
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(allowed(&budget, t10), 0);
        requests(&budget, 10, t10);
        assert_eq!(allowed(&budget, t10), 2, "110 requests fund 22, 20 spent");
        // Second 20: everything is gone.
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(allowed(&budget, t20), 0);
        requests(&budget, 5, t20);
        assert_eq!(allowed(&budget, t20), 1);
    }

    #[test]
    fn an_earlier_instant_counts_in_the_latest_second() {
        let budget = budget(0.2, 0);
        let t0 = Instant::now();
        budget.record_request(t0);
        let t12 = t0 + Duration::from_secs(12);
        budget.record_request(t12);
        requests(&budget, 9, t0 + Duration::from_secs(1));
        // Second 0 has left the window; the nine late ones are in second 12 with the
        // other, not in the long-expired second 1.
        assert_eq!(allowed(&budget, t12), 2);
    }

    #[test]
    fn ratio_is_exact_for_awkward_values() {
        // 0.1 * 30 is 3.0000000000000004 in floating point.
        let budget = budget(0.1, 0);
        let t0 = Instant::now();
        requests(&budget, 30, t0);
        assert_eq!(allowed(&budget, t0), 3);
    }

    #[test]
    fn config_defaults_and_strictness() {
        let config: RetryBudgetConfig = toml::from_str("ratio = 0.5").unwrap();
        assert_eq!(
            config,
            RetryBudgetConfig {
                ratio: 0.5,
                min_per_second: 3,
                attempts: 2
            }
        );
        assert!(toml::from_str::<RetryBudgetConfig>("retries = 3").is_err());
        let budget = RetryBudget::new(&RetryBudgetConfig {
            attempts: 0,
            ..config
        });
        assert_eq!(budget.max_attempts(), 1);
    }
}
