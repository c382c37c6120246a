//! Whether one upstream server should get traffic, from two kinds of evidence.
//!
//! Active probes see a server that is down before a client pays for it, and see it come
//! back; passive ejection (a circuit breaker, as Envoy's outlier detection) reacts within
//! a few requests to a server that answers probes but fails real traffic. Neither is
//! enough alone, so a server is available only when both agree.
//!
//! This is a pure state machine: time comes in as `Instant` arguments and nothing here
//! reads a clock, sleeps or probes, so tests are exact and the caller owns the timers.
//!
//! Invariants:
//! - A new server is up and not ejected: a pool serves before its first probe.
//! - Probe state changes only after `rise` (or `fall`) agreeing probes in a row.
//! - An ejection lasts `base_ejection * 2^k`, capped at `max_ejection`, where `k` counts
//!   the ejections since the circuit last closed. When it expires the server is
//!   half-open: available again, and its next request decides: a failure ejects it at
//!   once for the doubled time, a success closes the circuit (`k` back to 0).
//! - Request results that arrive while the server is ejected are ignored: they belong to
//!   requests sent before the decision and say nothing new.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The `health` section of an upstream pool's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Path the caller probes with `GET`.
    pub path: String,
    /// Time between two probes of one server.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time a probe may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Successful probes in a row that bring a down server up. 0 counts as 1.
    pub rise: u32,
    /// Failed probes in a row that take an up server down. 0 counts as 1.
    pub fall: u32,
    /// Failed requests in a row (connect errors, timeouts, 5xx) that eject a server.
    /// 0 counts as 1.
    pub consecutive_failures: u32,
    /// Length of a first ejection; each further one without a success in between
    /// doubles it.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest ejection, so a server that recovers is retried within this time.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: "/".to_owned(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// What a server looks like right now, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Gets traffic.
    Up,
    /// Failing its probes. Takes precedence over `Ejected`: it is the longer-lived cause.
    Down,
    /// Passing probes but ejected for failing requests, until the ejection expires.
    Ejected,
}

impl State {
    pub const ALL: [State; 3] = [State::Up, State::Down, State::Ejected];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Ejected => "ejected",
        }
    }
}

/// A change the caller should log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Probes failed `fall` times in a row.
    WentDown,
    /// Probes succeeded `rise` times in a row.
    CameUp,
    /// Requests failed; no traffic until `until`.
    Ejected { until: Instant },
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::WentDown => "went_down",
            Transition::CameUp => "came_up",
            Transition::Ejected { .. } => "ejected",
        }
    }
}

/// The health of one server. Thread-safe; the pool keeps one per server.
#[derive(Debug)]
pub struct Health {
    rise: u32,
    fall: u32,
    consecutive_failures: u32,
    base_ejection: Duration,
    max_ejection: Duration,
    inner: Mutex<Inner>,
    /// Outside the lock so that a metrics scrape never waits on the request path.
    ejections_total: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// Verdict of the probes.
    up: bool,
    /// Probes in a row that contradict `up`.
    probe_streak: u32,
    /// Failed requests in a row since the last success or ejection.
    failures: u32,
    /// End of the current or most recent ejection.
    ejected_until: Option<Instant>,
    /// Ejections since the circuit last closed: the back-off exponent, and nonzero means
    /// half-open once the ejection expires.
    ejections: u32,
}

impl Health {
    pub fn new(config: &HealthConfig) -> Self {
        Health {
            rise: config.rise.max(1),
            fall: config.fall.max(1),
            consecutive_failures: config.consecutive_failures.max(1),
            base_ejection: config.base_ejection,
            max_ejection: config.max_ejection,
            inner: Mutex::new(Inner {
                up: true,
                probe_streak: 0,
                failures: 0,
                ejected_until: None,
                ejections: 0,
            }),
            ejections_total: AtomicU64::new(0),
        }
    }

    /// Applies one probe result. Probes do not touch ejection: a server that answers
    /// the probe path may still fail real requests.
    pub fn probe(&self, ok: bool) -> Option<Transition> {
        let mut inner = self.lock();
        if ok == inner.up {
            inner.probe_streak = 0;
            return None;
        }
        inner.probe_streak += 1;
        let threshold = if inner.up { self.fall } else { self.rise };
        if inner.probe_streak < threshold {
            return None;
        }
        inner.probe_streak = 0;
        inner.up = ok;
        Some(if ok {
            Transition::CameUp
        } else {
            Transition::WentDown
        })
    }

    /// A request got a usable answer. Ends the failure streak and, once any ejection has
    /// expired, closes the circuit so the next ejection starts from `base_ejection`.
    pub fn request_succeeded(&self, now: Instant) {
        let mut inner = self.lock();
        if inner.is_ejected(now) {
            return;
        }
        inner.failures = 0;
        inner.ejections = 0;
    }

    /// A request failed (connect error, timeout, 5xx). Ejects the server after
    /// `consecutive_failures` in a row, or at once when half-open.
    pub fn request_failed(&self, now: Instant) -> Option<Transition> {
        let mut inner = self.lock();
        if inner.is_ejected(now) {
            return None;
        }
        inner.failures += 1;
        if inner.ejections == 0 && inner.failures < self.consecutive_failures {
            return None;
        }
        let exponent = inner.ejections.min(31);
        let length = self
            .base_ejection
            .saturating_mul(1 << exponent)
            .min(self.max_ejection);
        let until = now + length;
        inner.ejected_until = Some(until);
        inner.ejections += 1;
        inner.failures = 0;
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        Some(Transition::Ejected { until })
    }

    /// Whether the server may get a request now: up by probes and not ejected.
    pub fn is_available(&self, now: Instant) -> bool {
        self.state(now) == State::Up
    }

    pub fn state(&self, now: Instant) -> State {
        let inner = self.lock();
        if !inner.up {
            State::Down
        } else if inner.is_ejected(now) {
            State::Ejected
        } else {
            State::Up
        }
    }

    /// Ejections since the server was configured, for a counter metric.
    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few integers, consistent after every statement.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthConfig {
        HealthConfig {
            rise: 2,
            fall: 3,
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            ..HealthConfig::default()
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Fails requests until the server is ejected, returning when it is ejected until.
    fn eject(health: &Health, now: Instant) -> Instant {
        loop {
            if let Some(Transition::Ejected { until }) = health.request_failed(now) {
                return until;
            }
        }
    }

    #[test]
    fn starts_up() {
        let health = Health::new(&config());
        let now = Instant::now();
        assert_eq!(health.state(now), State::Up);
        assert!(health.is_available(now));
        assert_eq!(health.ejections_total(), 0);
    }

    #[test]
    fn goes_down_after_exactly_fall_failed_probes() {
        let health = Health::new(&config());
        let now = Instant::now();
        assert_eq!(health.probe(false), None);
        assert_eq!(health.probe(false), None);
        assert!(health.is_available(now));
        assert_eq!(health.probe(false), Some(Transition::WentDown));
        assert_eq!(health.state(now), State::Down);
        assert_eq!(health.probe(false), None, "reported once");
    }

    #[test]
    fn a_good_probe_restarts_the_fall_count() {
        let health = Health::new(&config());
        health.probe(false);
        health.probe(false);
        assert_eq!(health.probe(true), None);
        assert_eq!(health.probe(false), None);
        assert_eq!(health.probe(false), None);
        assert_eq!(health.probe(false), Some(Transition::WentDown));
    }

    #[test]
    fn comes_up_after_exactly_rise_good_probes() {
        let health = Health::new(&config());
        let now = Instant::now();
        for _ in 0..3 {
            health.probe(false);
        }
        assert_eq!(health.probe(true), None);
        assert_eq!(health.state(now), State::Down);
        assert_eq!(
            health.probe(false),
            None,
            "a failure restarts the rise count"
        );
        assert_eq!(health.probe(true), None);
        assert_eq!(health.probe(true), Some(Transition::CameUp));
        assert!(health.is_available(now));
    }

    #[test]
    fn down_by_probes_is_unavailable_without_ejection() {
        let health = Health::new(&config());
        let now = Instant::now();
        for _ in 0..3 {
            health.probe(false);
        }
        health.request_succeeded(now);
        assert!(!health.is_available(now));
        assert_eq!(health.state(now), State::Down);
        assert_eq!(health.ejections_total(), 0);
    }

    #[test]
    fn ejected_after_exactly_n_consecutive_failures() {
        let health = Health::new(&config());
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(health.request_failed(now), None);
        }
        assert!(health.is_available(now));
        assert_eq!(
            health.request_failed(now),
            Some(Transition::Ejected {
                until: now + secs(5)
            })
        );
        assert_eq!(health.state(now), State::Ejected);
        assert!(!health.is_available(now));
        assert_eq!(health.ejections_total(), 1);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let health = Health::new(&config());
        let now = Instant::now();
        for _ in 0..4 {
            health.request_failed(now);
        }
        health.request_succeeded(now);
        for _ in 0..4 {
            assert_eq!(health.request_failed(now), None);
        }
        assert!(health.is_available(now));
        assert!(health.request_failed(now).is_some());
    }

    #[test]
    fn ejection_expires_at_the_right_instant() {
        let health = Health::new(&config());
        let t0 = Instant::now();
        let until = eject(&health, t0);
        assert_eq!(until, t0 + secs(5));
        assert!(!health.is_available(until - Duration::from_nanos(1)));
        assert!(health.is_available(until));
        assert_eq!(health.state(until), State::Up);
    }

    #[test]
    fn results_during_an_ejection_are_ignored() {
        let health = Health::new(&config());
        let t0 = Instant::now();
        let until = eject(&health, t0);
        // Stragglers sent before the ejection neither extend it nor close the circuit.
        assert_eq!(health.request_failed(t0 + secs(1)), None);
        health.request_succeeded(t0 + secs(2));
        assert!(health.is_available(until));
        assert_eq!(
            health.request_failed(until),
            Some(Transition::Ejected {
                until: until + secs(10)
            }),
            "still half-open"
        );
    }

    #[test]
    fn half_open_failure_doubles_the_ejection_up_to_the_cap() {
        let health = Health::new(&config());
        let mut now = Instant::now();
        // Half-open: one failure is enough, and each ejection is twice the previous.
        let mut expected = [5, 10, 20, 40, 60, 60, 60].into_iter();
        let until = eject(&health, now);
        assert_eq!(until - now, secs(expected.next().unwrap()));
        now = until;
        for length in expected {
            assert!(health.is_available(now));
            assert_eq!(
                health.request_failed(now),
                Some(Transition::Ejected {
                    until: now + secs(length)
                })
            );
            now += secs(length);
        }
        assert_eq!(health.ejections_total(), 7);
    }

    #[test]
    fn success_after_expiry_resets_the_back_off() {
        let health = Health::new(&config());
        let t0 = Instant::now();
        let first = eject(&health, t0);
        let second = health.request_failed(first);
        assert_eq!(
            second,
            Some(Transition::Ejected {
                until: first + secs(10)
            })
        );
        let reopened = first + secs(10);
        health.request_succeeded(reopened);
        // Closed: it takes five failures again, and the ejection is back to the base.
        for _ in 0..4 {
            assert_eq!(health.request_failed(reopened), None);
        }
        assert_eq!(
            health.request_failed(reopened),
            Some(Transition::Ejected {
                until: reopened + secs(5)
            })
        );
    }

    #[test]
    fn probes_and_ejection_are_independent() {
        let health = Health::new(&config());
        let t0 = Instant::now();
        let until = eject(&health, t0);
        for _ in 0..3 {
            health.probe(false);
        }
        assert_eq!(health.state(t0), State::Down, "down wins over ejected");
        health.probe(true);
        assert_eq!(health.probe(true), Some(Transition::CameUp));
        assert_eq!(
            health.state(t0),
            State::Ejected,
            "probes do not cut it short"
        );
        assert_eq!(health.state(until), State::Up);
    }

    #[test]
    fn config_reads_humane_durations_and_fills_defaults() {
        let config: HealthConfig =
            toml::from_str("fall = 4\nbase_ejection = \"10s\"\nmax_ejection = \"2m\"").unwrap();
        assert_eq!(config.fall, 4);
        assert_eq!(config.rise, 2);
        assert_eq!(config.base_ejection, secs(10));
        assert_eq!(config.max_ejection, secs(120));
        assert_eq!(config.path, "/");
        assert!(toml::from_str::<HealthConfig>("falls = 4").is_err());
    }
}
