//! Admission control: how the purge API sheds overload with a status and an exact
//! `Retry-After` instead of hanging or dropping purges.
//!
//! Two gates stand in front of the purge log:
//! - [`Admission`]: a pair of token buckets per publisher, one counting requests and one
//!   counting objects (the [`cost`] of a purge, weighted by how much cache its selector
//!   touches on every node). A purge passes only if both buckets hold enough tokens; a
//!   refused purge takes nothing, and its `Retry-After` is exactly when both will.
//! - [`QueueGate`]: a bound on the purges accepted but not yet durable in the log, shared
//!   by all publishers, with a time limit on how long a request waits for its append.
//!
//! How a handler uses them, in this order (so a refusal by either takes nothing):
//! 1. `let ticket = gate.try_enter()?;` (a slot in the commit queue, released on drop);
//! 2. `admission.admit(publisher, cost(&purge), Instant::now())?;`
//! 3. hand `(purge, idempotency_key, ticket)` to the log writer task and
//!    `gate.wait_for_commit(receiver).await?` for its sequence number, then answer `202`.
//!
//! Any [`Shed`] becomes an answer with [`Shed::status`] and, where a retry makes sense,
//! `Retry-After: Shed::retry_after_secs`.
//!
//! The rule for a purge whose wait times out: the API answers `202` only after the
//! append, so a `503` ([`Shed::QueueTimeout`]) never claims a purge that was not logged.
//! The purge is not withdrawn either: once handed to the log writer it is appended and
//! applied everywhere as usual (the writer never checks whether anyone still waits, and
//! the waiter's future must be cancel-safe, such as a `oneshot::Receiver`, so that giving
//! up waiting does not cancel the append). The writer records the purge id under its
//! `Idempotency-Key`, so a publisher who retries with the same key gets the same id rather
//! than a second purge. Shedding therefore never loses an accepted purge and never accepts
//! one it did not log. (A retry without a key logs a second purge: harmless, since purging
//! twice removes nothing more, only costs budget.) The ticket travels with the purge and is
//! dropped by the writer after the append, so the queue bound counts every purge not yet
//! durable, including those whose waiter gave up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use node_api::purge::{Purge, Selector};

/// Objects one URL costs: one cache lookup per `Vary` variant on each node.
pub const URL_COST: u64 = 1;
/// Objects one tag costs: an index lookup, then only the objects that carry the tag.
pub const TAG_COST: u64 = 1;
/// Objects one prefix costs. A prefix cannot be looked up: every node scans its keys for
/// the prefix, and may drop a whole directory of objects, on every purge.
pub const PREFIX_COST: u64 = 100;
/// Objects one host costs: every node drops (or scans for) every object of the host.
pub const HOST_COST: u64 = 1_000;
/// Objects "everything" costs: every node drops the site's whole cache, and the origin
/// then takes the refill from every edge and shield at once. Equal to the default
/// [`RateConfig::object_burst`], so a publisher can purge everything at most once per
/// burst (every 5 s at the default 2000 objects/s).
pub const EVERYTHING_COST: u64 = 10_000;

/// What admitting a purge takes from its publisher's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Always 1 for one purge request.
    pub requests: u32,
    /// The weighted number of objects its selector touches on every node.
    pub objects: u64,
}

/// The cost of a purge: one request, and objects weighted by selector (see [`URL_COST`],
/// [`TAG_COST`], [`PREFIX_COST`], [`HOST_COST`], [`EVERYTHING_COST`]). Saturates rather
/// than overflows, so an absurd purge is refused as [`Shed::TooCostly`].
pub fn cost(purge: &Purge) -> Cost {
    let per_target = match &purge.selector {
        Selector::Urls(_) => URL_COST,
        Selector::Tags(_) => TAG_COST,
        Selector::Prefixes(_) => PREFIX_COST,
        Selector::Hosts(_) => HOST_COST,
        Selector::Everything => EVERYTHING_COST,
    };
    let targets = u64::try_from(purge.selector.len()).unwrap_or(u64::MAX);
    Cost {
        requests: 1,
        objects: targets.saturating_mul(per_target),
    }
}

/// Which of a publisher's buckets refused a purge: a bounded label for messages, logs
/// and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Objects,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Objects => "objects",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a purge was not accepted. Each message says what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// The publisher spent its budget; both buckets hold enough again after `retry_after`.
    #[error(
        "too many purges: this publisher's {limit} rate limit is spent and nothing was taken; \
         retry in {} s (Retry-After), or purge less often",
        ceil_secs(*.retry_after)
    )]
    RateLimited { limit: Limit, retry_after: Duration },
    /// The purge costs more than the publisher's burst: it can never be admitted as it is.
    #[error(
        "purge too large: it costs {cost} {limit} but this publisher may spend at most \
         {burst} at once; split it into smaller purges (fewer URLs, tags, prefixes or hosts \
         each), or ask the operator for a larger burst"
    )]
    TooCostly { limit: Limit, cost: u64, burst: u64 },
    /// Too many accepted purges are waiting to be made durable; nothing was logged.
    #[error(
        "purge API overloaded: the queue of purges waiting for the log is full and this one \
         was not logged; retry in {} s (Retry-After)",
        ceil_secs(*.retry_after)
    )]
    QueueFull { retry_after: Duration },
    /// The purge was queued but not durable within the queue timeout.
    #[error(
        "purge not confirmed in time: the log is slow and this purge may still be applied; \
         retry in {} s (Retry-After) with the same Idempotency-Key to get its id without \
         purging twice",
        ceil_secs(*.retry_after)
    )]
    QueueTimeout { retry_after: Duration },
}

impl Shed {
    /// The HTTP status to answer with: `429` when the caller should slow down (its own
    /// rate, or everyone's queue), `503` when the service is slow, `413` when the purge
    /// must be split.
    pub fn status(&self) -> u16 {
        match self {
            Shed::RateLimited { .. } | Shed::QueueFull { .. } => 429,
            Shed::QueueTimeout { .. } => 503,
            Shed::TooCostly { .. } => 413,
        }
    }

    /// The `Retry-After` value in whole seconds (rounded up, at least 1), or `None` when
    /// retrying the same purge cannot help.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Shed::RateLimited { retry_after, .. }
            | Shed::QueueFull { retry_after }
            | Shed::QueueTimeout { retry_after } => Some(ceil_secs(*retry_after)),
            Shed::TooCostly { .. } => None,
        }
    }

    /// A bounded label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Shed::RateLimited { .. } => "rate_limited",
            Shed::TooCostly { .. } => "too_costly",
            Shed::QueueFull { .. } => "queue_full",
            Shed::QueueTimeout { .. } => "queue_timeout",
        }
    }
}

/// Whole seconds, rounded up, at least 1: a `Retry-After` of 0 would invite a retry storm.
fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.max(1)
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("purge rate limits of {scope}: {field} is {value}, but {requirement}")]
    Rate {
        /// `default` or `publisher "name"`.
        scope: String,
        field: &'static str,
        value: f64,
        requirement: &'static str,
    },
    #[error("purge queue: {field} {requirement}")]
    Queue {
        field: &'static str,
        requirement: &'static str,
    },
}

/// A publisher's purge rate limits (`[publishers.<name>.rate]`, or the default for all).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// Purge requests refilled per second.
    pub requests_per_second: f64,
    /// Purge requests that may be sent at once after a quiet period (at least 1).
    pub request_burst: f64,
    /// Objects (see [`cost`]) refilled per second.
    pub objects_per_second: f64,
    /// Objects that may be spent at once, which is also the most one purge may cost (at
    /// least [`EVERYTHING_COST`] to allow purging everything).
    pub object_burst: f64,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 50.0,
            request_burst: 100.0,
            objects_per_second: 2_000.0,
            object_burst: 10_000.0,
        }
    }
}

/// The longest a bucket may take to refill from empty: beyond it the limits are surely a
/// typo, and instants stay far from overflow.
const MAX_REFILL: Duration = Duration::from_secs(365 * 24 * 3600);

impl RateConfig {
    /// Checks that every rate is positive and finite, every burst at least 1 (or nothing
    /// could ever pass), and that each bucket refills from empty within a year.
    pub fn validate(&self, scope: &str) -> Result<(), ConfigError> {
        let err = |field, value, requirement| ConfigError::Rate {
            scope: scope.to_owned(),
            field,
            value,
            requirement,
        };
        for (field, rate, burst_field, burst) in [
            (
                "requests_per_second",
                self.requests_per_second,
                "request_burst",
                self.request_burst,
            ),
            (
                "objects_per_second",
                self.objects_per_second,
                "object_burst",
                self.object_burst,
            ),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(err(field, rate, "it must be a finite number above 0"));
            }
            if !(burst.is_finite() && burst >= 1.0) {
                return Err(err(
                    burst_field,
                    burst,
                    "it must be a finite number of at least 1",
                ));
            }
            if burst / rate > MAX_REFILL.as_secs_f64() {
                return Err(err(
                    burst_field,
                    burst,
                    "refilling it from empty at the configured rate would take over a year",
                ));
            }
        }
        Ok(())
    }
}

/// One token bucket, kept as the instant it will be full again (GCRA): tokens are integer
/// nanoseconds of refill time, so the wait it reports is exactly when a retry passes,
/// with no floating-point drift between the refusal and the retry.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Refill time of one token.
    nanos_per_token: f64,
    /// Tokens the bucket holds when full.
    burst: f64,
    /// Refill time of a full bucket.
    burst_nanos: u64,
    /// When the bucket is full again; in the past (or now) means full.
    full_at: Instant,
}

impl Bucket {
    /// A full bucket. `rate` and `burst` are validated ([`RateConfig::validate`]).
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let nanos_per_token = 1e9 / rate;
        Self {
            nanos_per_token,
            burst,
            // Float-to-int `as` saturates; validation keeps this under a year anyway.
            burst_nanos: (burst * nanos_per_token).ceil() as u64,
            full_at: now,
        }
    }

    /// Whether `tokens` exceed what the bucket can ever hold.
    fn too_costly(&self, tokens: u64) -> bool {
        tokens as f64 > self.burst
    }

    /// Refill time of `tokens`; at most `burst_nanos` when not [`Self::too_costly`].
    fn nanos(&self, tokens: u64) -> u64 {
        (tokens as f64 * self.nanos_per_token).ceil() as u64
    }

    /// Refill time still owed at `now`: how far the bucket is from full.
    fn debt(&self, now: Instant) -> u64 {
        u64::try_from(self.full_at.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long from `now` until the bucket holds `tokens`: zero if it does now.
    fn wait_for(&self, tokens: u64, now: Instant) -> Duration {
        let needed = self.debt(now).saturating_add(self.nanos(tokens));
        Duration::from_nanos(needed.saturating_sub(self.burst_nanos))
    }

    /// Takes `tokens`, which [`Self::wait_for`] said are there.
    fn take(&mut self, tokens: u64, now: Instant) {
        let debt = self.debt(now).saturating_add(self.nanos(tokens));
        // At most `burst_nanos` (under a year) after `now`.
        self.full_at = now + Duration::from_nanos(debt);
    }

    /// The burst as a largest admissible integer cost, for messages.
    fn burst_tokens(&self) -> u64 {
        self.burst.floor() as u64
    }
}

/// The two buckets of one publisher.
#[derive(Debug, Clone, Copy)]
struct Buckets {
    requests: Bucket,
    objects: Bucket,
}

impl Buckets {
    fn new(config: &RateConfig, now: Instant) -> Self {
        Self {
            requests: Bucket::new(config.requests_per_second, config.request_burst, now),
            objects: Bucket::new(config.objects_per_second, config.object_burst, now),
        }
    }

    fn admit(&mut self, cost: Cost, now: Instant) -> Result<(), Shed> {
        let requests = u64::from(cost.requests);
        for (limit, bucket, tokens) in [
            (Limit::Requests, &self.requests, requests),
            (Limit::Objects, &self.objects, cost.objects),
        ] {
            if bucket.too_costly(tokens) {
                return Err(Shed::TooCostly {
                    limit,
                    cost: tokens,
                    burst: bucket.burst_tokens(),
                });
            }
        }
        let wait_requests = self.requests.wait_for(requests, now);
        let wait_objects = self.objects.wait_for(cost.objects, now);
        if wait_requests.is_zero() && wait_objects.is_zero() {
            self.requests.take(requests, now);
            self.objects.take(cost.objects, now);
            return Ok(());
        }
        let (limit, retry_after) = if wait_objects > wait_requests {
            (Limit::Objects, wait_objects)
        } else {
            (Limit::Requests, wait_requests)
        };
        Err(Shed::RateLimited { limit, retry_after })
    }
}

/// Per-publisher rate limits: a request bucket and an object bucket per publisher name,
/// created full on its first purge. Thread-safe; one short critical section per purge.
///
/// Publisher names come from authenticated tokens, so the map is bounded by the
/// configured publishers.
#[derive(Debug)]
pub struct Admission {
    default: RateConfig,
    per_publisher: HashMap<String, RateConfig>,
    buckets: Mutex<HashMap<String, Buckets>>,
}

impl Admission {
    /// Limits for every publisher: `per_publisher` where listed, else `default`. Fails if
    /// any configuration cannot work ([`RateConfig::validate`]).
    pub fn new(
        default: RateConfig,
        per_publisher: HashMap<String, RateConfig>,
    ) -> Result<Self, ConfigError> {
        default.validate("default")?;
        for (name, config) in &per_publisher {
            config.validate(&format!("publisher {name:?}"))?;
        }
        Ok(Self {
            default,
            per_publisher,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The limits that apply to `publisher`.
    pub fn config_for(&self, publisher: &str) -> &RateConfig {
        self.per_publisher.get(publisher).unwrap_or(&self.default)
    }

    /// Takes `cost` from `publisher`'s buckets at `now`, or refuses and takes nothing:
    /// [`Shed::RateLimited`] with exactly how long until both buckets hold enough (a
    /// retry at `now + retry_after` passes if nothing else was admitted meanwhile), or
    /// [`Shed::TooCostly`] if the cost exceeds a burst and can never pass.
    pub fn admit(&self, publisher: &str, cost: Cost, now: Instant) -> Result<(), Shed> {
        // The state stays consistent even if a holder panicked: nothing in the critical
        // section can leave it half-updated.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pair) = buckets.get_mut(publisher) {
            return pair.admit(cost, now);
        }
        let mut pair = Buckets::new(self.config_for(publisher), now);
        let admitted = pair.admit(cost, now);
        buckets.insert(publisher.to_owned(), pair);
        admitted
    }
}

/// The commit queue's configuration (`[purge_api.queue]`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most purges accepted but not yet durable in the log, all publishers together.
    pub capacity: usize,
    /// Longest a request waits for its purge to be durable before answering `503`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Weight of the newest commit in the moving averages: the estimate follows a change in
/// the log's speed within a few commits without jumping on one outlier.
const EWMA_WEIGHT: f64 = 0.2;

/// Moving averages of the log's commits (group commits: several purges per append).
#[derive(Debug, Clone, Copy, Default)]
struct CommitRate {
    secs_per_commit: f64,
    purges_per_commit: f64,
    commits: u64,
}

#[derive(Debug)]
struct GateInner {
    capacity: usize,
    timeout: Duration,
    waiting: AtomicUsize,
    rate: Mutex<CommitRate>,
}

/// The bound on purges accepted but not yet durable, shared by all publishers. Cheap to
/// clone (all clones are the same gate); thread-safe.
#[derive(Debug, Clone)]
pub struct QueueGate {
    inner: Arc<GateInner>,
}

/// One place in the commit queue, given back when dropped. Hand it to the log writer
/// with the purge and drop it after the append, not when the waiter gives up.
#[derive(Debug)]
#[must_use = "the place in the queue is given back as soon as the ticket is dropped"]
pub struct QueueTicket {
    inner: Arc<GateInner>,
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.inner.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl QueueGate {
    /// Fails unless the capacity is at least 1 and the timeout above zero.
    pub fn new(config: QueueConfig) -> Result<Self, ConfigError> {
        if config.capacity == 0 {
            return Err(ConfigError::Queue {
                field: "capacity",
                requirement: "must be at least 1, or no purge could ever be accepted",
            });
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::Queue {
                field: "timeout",
                requirement: "must be above 0, or every purge would time out",
            });
        }
        Ok(Self {
            inner: Arc::new(GateInner {
                capacity: config.capacity,
                timeout: config.timeout,
                waiting: AtomicUsize::new(0),
                rate: Mutex::new(CommitRate::default()),
            }),
        })
    }

    /// A place in the queue, or [`Shed::QueueFull`] when `capacity` purges are waiting,
    /// with the estimated time to drain them.
    pub fn try_enter(&self) -> Result<QueueTicket, Shed> {
        let capacity = self.inner.capacity;
        match self
            .inner
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            }) {
            Ok(_) => Ok(QueueTicket {
                inner: Arc::clone(&self.inner),
            }),
            Err(waiting) => Err(Shed::QueueFull {
                retry_after: self.drain_estimate(waiting),
            }),
        }
    }

    /// Longest a request waits for its commit ([`QueueConfig::timeout`]).
    pub fn queue_timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Purges holding a ticket now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Acquire)
    }

    /// Called by the log writer after each durable append of `purges` purges that took
    /// `took`; feeds the `Retry-After` estimates.
    pub fn record_commit(&self, purges: usize, took: Duration) {
        if purges == 0 {
            return;
        }
        let mut rate = self
            .inner
            .rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (secs, batch) = (took.as_secs_f64(), purges as f64);
        if rate.commits == 0 {
            rate.secs_per_commit = secs;
            rate.purges_per_commit = batch;
        } else {
            rate.secs_per_commit += EWMA_WEIGHT * (secs - rate.secs_per_commit);
            rate.purges_per_commit += EWMA_WEIGHT * (batch - rate.purges_per_commit);
        }
        rate.commits += 1;
    }

    /// How long the log should take to make `waiting` purges durable at its recent pace:
    /// commits needed (rounded up) times the average commit time, at least 1 s. Before the
    /// first commit there is no pace to go by, and the estimate is the queue timeout.
    pub fn drain_estimate(&self, waiting: usize) -> Duration {
        let rate = *self
            .inner
            .rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let estimate = if rate.commits == 0 {
            self.inner.timeout
        } else {
            let commits = (waiting as f64 / rate.purges_per_commit.max(1.0)).ceil();
            Duration::try_from_secs_f64(commits * rate.secs_per_commit).unwrap_or(Duration::MAX)
        };
        estimate.max(Duration::from_secs(1))
    }

    /// The answer for a request whose purge was not durable within the queue timeout.
    pub fn timed_out(&self) -> Shed {
        Shed::QueueTimeout {
            retry_after: self.drain_estimate(self.waiting()),
        }
    }

    /// Waits at most [`Self::queue_timeout`] for `commit` (the log writer's answer), else
    /// [`Self::timed_out`]. `commit` must be cancel-safe: dropping it on timeout must not
    /// cancel the append (see the module docs for why the purge is then still applied).
    pub async fn wait_for_commit<F: Future>(&self, commit: F) -> Result<F::Output, Shed> {
        tokio::time::timeout(self.inner.timeout, commit)
            .await
            .map_err(|_elapsed| self.timed_out())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_api::purge::Mode;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn purge(selector: Selector) -> Purge {
        Purge {
            site: "assets".into(),
            selector,
            mode: Mode::Hard,
        }
    }

    fn urls(n: usize) -> Purge {
        purge(Selector::Urls(
            (0..n).map(|i| format!("https://a.example/{i}")).collect(),
        ))
    }

    fn one(objects: u64) -> Cost {
        Cost {
            requests: 1,
            objects,
        }
    }

    /// Limits with plenty of objects, so only the request bucket matters.
    fn requests_only(per_second: f64, burst: f64) -> RateConfig {
        RateConfig {
            requests_per_second: per_second,
            request_burst: burst,
            objects_per_second: 1e6,
            object_burst: 1e6,
        }
    }

    fn admission(config: RateConfig) -> Admission {
        Admission::new(config, HashMap::new()).unwrap()
    }

    fn retry_after(shed: Shed) -> Duration {
        match shed {
            Shed::RateLimited { retry_after, .. } => retry_after,
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[test]
    fn the_burst_passes_then_the_next_purge_is_refused() {
        let a = admission(requests_only(1.0, 5.0));
        let t0 = Instant::now();
        for _ in 0..5 {
            a.admit("p", one(1), t0).unwrap();
        }
        let shed = a.admit("p", one(1), t0).unwrap_err();
        assert_eq!(shed.status(), 429);
        assert!(matches!(
            shed,
            Shed::RateLimited {
                limit: Limit::Requests,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_is_exact_for_an_empty_bucket() {
        let a = admission(requests_only(1.0, 1.0));
        let t0 = Instant::now();
        a.admit("p", one(1), t0).unwrap();
        let shed = a.admit("p", one(1), t0).unwrap_err();
        assert_eq!(shed.retry_after_secs(), Some(1));
        assert_eq!(retry_after(shed), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_exact_for_a_partly_refilled_bucket_and_rounds_up() {
        // 2 tokens/s, burst 4: emptied at t0, 0.5 back at t0 + 250 ms; 4 more needs 3.5,
        // which takes 1.75 s.
        let a = admission(RateConfig {
            objects_per_second: 2.0,
            object_burst: 4.0,
            ..RateConfig::default()
        });
        let t0 = Instant::now();
        a.admit("p", one(4), t0).unwrap();
        let shed = a.admit("p", one(4), t0 + ms(250)).unwrap_err();
        assert_eq!(shed.retry_after_secs(), Some(2));
        assert!(matches!(
            shed,
            Shed::RateLimited {
                limit: Limit::Objects,
                ..
            }
        ));
        assert_eq!(retry_after(shed), ms(1750));
    }

    #[test]
    fn a_retry_at_exactly_retry_after_passes_and_a_nanosecond_earlier_does_not() {
        let a = admission(RateConfig {
            requests_per_second: 3.0,
            request_burst: 2.0,
            objects_per_second: 7.0,
            object_burst: 10.0,
        });
        let t0 = Instant::now();
        a.admit("p", one(9), t0).unwrap();
        a.admit("p", one(1), t0 + ms(10)).unwrap();
        let now = t0 + ms(20);
        let wait = retry_after(a.admit("p", one(6), now).unwrap_err());
        let early = now + wait - Duration::from_nanos(1);
        assert_eq!(
            retry_after(a.admit("p", one(6), early).unwrap_err()),
            Duration::from_nanos(1)
        );
        a.admit("p", one(6), now + wait).unwrap();
    }

    #[test]
    fn a_refused_purge_takes_nothing() {
        // The request bucket has room but the object bucket does not: the refusal must
        // not spend the request token.
        let a = admission(RateConfig {
            requests_per_second: 1.0,
            request_burst: 1.0,
            objects_per_second: 5.0,
            object_burst: 10.0,
        });
        let t0 = Instant::now();
        a.admit("q", one(10), t0).unwrap();
        // At t0 + 1 s the request bucket is full again, but 8 objects need 600 ms more.
        let wait = retry_after(a.admit("q", one(8), t0 + ms(1000)).unwrap_err());
        assert_eq!(wait, ms(600));
        // Refused repeatedly, it still passes on time: no refusal spent the request token.
        for step in 0..6 {
            a.admit("q", one(8), t0 + ms(1000 + step * 100))
                .unwrap_err();
        }
        a.admit("q", one(8), t0 + ms(1600)).unwrap();
    }

    #[test]
    fn buckets_refill_over_time_up_to_the_burst() {
        let a = admission(requests_only(10.0, 5.0));
        let t0 = Instant::now();
        for _ in 0..5 {
            a.admit("p", one(1), t0).unwrap();
        }
        a.admit("p", one(1), t0).unwrap_err();
        // 100 ms refills one token.
        a.admit("p", one(1), t0 + ms(100)).unwrap();
        a.admit("p", one(1), t0 + ms(100)).unwrap_err();
        // After an hour the bucket holds the burst, not 36000 tokens.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            a.admit("p", one(1), later).unwrap();
        }
        assert_eq!(
            retry_after(a.admit("p", one(1), later).unwrap_err()),
            ms(100)
        );
    }

    #[test]
    fn the_object_bucket_limits_independently_of_requests() {
        let a = admission(RateConfig {
            requests_per_second: 1000.0,
            request_burst: 1000.0,
            objects_per_second: 100.0,
            object_burst: 300.0,
        });
        let t0 = Instant::now();
        a.admit("p", one(200), t0).unwrap();
        let shed = a.admit("p", one(200), t0).unwrap_err();
        assert!(matches!(
            shed,
            Shed::RateLimited {
                limit: Limit::Objects,
                ..
            }
        ));
        assert_eq!(retry_after(shed), Duration::from_secs(1));
        // Cheap purges still pass: plenty of requests, and 100 objects left.
        for _ in 0..100 {
            a.admit("p", one(1), t0).unwrap();
        }
        a.admit("p", one(1), t0).unwrap_err();
    }

    #[test]
    fn when_both_buckets_lack_the_wait_is_the_longer_refill() {
        let a = admission(RateConfig {
            requests_per_second: 1.0,
            request_burst: 1.0,
            objects_per_second: 1.0,
            object_burst: 3.0,
        });
        let t0 = Instant::now();
        a.admit("p", one(3), t0).unwrap();
        // Requests need 1 s, objects need 3 s.
        let shed = a.admit("p", one(3), t0).unwrap_err();
        assert!(matches!(
            shed,
            Shed::RateLimited {
                limit: Limit::Objects,
                ..
            }
        ));
        assert_eq!(retry_after(shed), Duration::from_secs(3));
        a.admit("p", one(3), t0 + Duration::from_secs(3)).unwrap();
    }

    #[test]
    fn costs_grow_with_what_the_selector_touches() {
        assert_eq!(cost(&urls(3)), one(3));
        assert_eq!(
            cost(&purge(Selector::Tags(vec!["a".into(), "b".into()]))),
            one(2)
        );
        let prefix = cost(&purge(Selector::Prefixes(vec![
            "https://a.example/img/".into(),
        ])));
        assert_eq!(prefix, one(PREFIX_COST));
        let hosts = cost(&purge(Selector::Hosts(vec![
            "a.example".into(),
            "b.example".into(),
        ])));
        assert_eq!(hosts, one(2 * HOST_COST));
        let everything = cost(&purge(Selector::Everything));
        assert_eq!(everything, one(EVERYTHING_COST));
        let one_of_each = [
            cost(&urls(1)),
            cost(&purge(Selector::Prefixes(vec![
                "https://a.example/".into(),
            ]))),
            cost(&purge(Selector::Hosts(vec!["a.example".into()]))),
            everything,
        ];
        assert!(one_of_each.windows(2).all(|w| w[0].objects < w[1].objects));
        assert!(one_of_each.iter().all(|c| c.requests == 1));
        assert_eq!(cost(&urls(0)).objects, 0);
    }

    #[test]
    fn an_everything_purge_spends_the_default_object_burst() {
        let a = admission(RateConfig::default());
        let t0 = Instant::now();
        a.admit("p", cost(&purge(Selector::Everything)), t0)
            .unwrap();
        let shed = a.admit("p", cost(&urls(1)), t0).unwrap_err();
        // One object at 2000/s.
        assert_eq!(retry_after(shed), Duration::from_micros(500));
        // The same number of URL purges would have left most of the budget.
        let b = admission(RateConfig::default());
        b.admit("p", cost(&urls(1)), t0).unwrap();
        b.admit("p", cost(&urls(1)), t0).unwrap();
    }

    #[test]
    fn a_purge_costlier_than_the_burst_is_refused_for_good() {
        let a = admission(RateConfig::default());
        let t0 = Instant::now();
        let shed = a.admit("p", cost(&urls(10_001)), t0).unwrap_err();
        assert_eq!(
            shed,
            Shed::TooCostly {
                limit: Limit::Objects,
                cost: 10_001,
                burst: 10_000
            }
        );
        assert_eq!(shed.status(), 413);
        assert_eq!(shed.retry_after_secs(), None);
        assert!(shed.to_string().contains("split it"), "{shed}");
        // Nothing was taken: the full burst is still there.
        a.admit("p", cost(&urls(10_000)), t0).unwrap();
        // Also when the request count is the problem.
        let shed = a
            .admit(
                "p",
                Cost {
                    requests: 101,
                    objects: 0,
                },
                t0,
            )
            .unwrap_err();
        assert!(matches!(
            shed,
            Shed::TooCostly {
                limit: Limit::Requests,
                cost: 101,
                burst: 100
            }
        ));
    }

    #[test]
    fn publishers_have_their_own_buckets_and_limits() {
        let mut per_publisher = HashMap::new();
        per_publisher.insert("big".to_owned(), requests_only(1.0, 3.0));
        let a = Admission::new(requests_only(1.0, 1.0), per_publisher).unwrap();
        let t0 = Instant::now();
        a.admit("small", one(1), t0).unwrap();
        a.admit("small", one(1), t0).unwrap_err();
        // Another publisher on the default is unaffected.
        a.admit("other", one(1), t0).unwrap();
        // The configured one gets its own burst.
        for _ in 0..3 {
            a.admit("big", one(1), t0).unwrap();
        }
        a.admit("big", one(1), t0).unwrap_err();
        assert_eq!(a.config_for("big").request_burst, 3.0);
        assert_eq!(a.config_for("nobody").request_burst, 1.0);
    }

    #[test]
    fn concurrent_purges_never_exceed_the_burst() {
        let a = Arc::new(admission(requests_only(1e-3, 100.0)));
        let t0 = Instant::now();
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let a = Arc::clone(&a);
                    s.spawn(move || (0..50).filter(|_| a.admit("p", one(1), t0).is_ok()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_clock_going_backwards_does_not_refill_or_panic() {
        let a = admission(requests_only(1.0, 1.0));
        let t0 = Instant::now() + Duration::from_secs(10);
        a.admit("p", one(1), t0).unwrap();
        let wait = retry_after(a.admit("p", one(1), t0 - ms(500)).unwrap_err());
        assert_eq!(wait, ms(1500));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_at_least_one() {
        let shed = |d| Shed::QueueFull { retry_after: d };
        assert_eq!(shed(Duration::ZERO).retry_after_secs(), Some(1));
        assert_eq!(shed(Duration::from_nanos(1)).retry_after_secs(), Some(1));
        assert_eq!(shed(Duration::from_secs(1)).retry_after_secs(), Some(1));
        assert_eq!(shed(ms(1001)).retry_after_secs(), Some(2));
        assert_eq!(shed(Duration::MAX).retry_after_secs(), Some(u64::MAX));
    }

    #[test]
    fn statuses_and_labels() {
        let d = Duration::from_secs(1);
        let cases = [
            (
                Shed::RateLimited {
                    limit: Limit::Requests,
                    retry_after: d,
                },
                429,
                "rate_limited",
            ),
            (Shed::QueueFull { retry_after: d }, 429, "queue_full"),
            (Shed::QueueTimeout { retry_after: d }, 503, "queue_timeout"),
            (
                Shed::TooCostly {
                    limit: Limit::Objects,
                    cost: 2,
                    burst: 1,
                },
                413,
                "too_costly",
            ),
        ];
        for (shed, status, label) in cases {
            assert_eq!(shed.status(), status, "{shed}");
            assert_eq!(shed.as_str(), label);
        }
        let msg = Shed::QueueTimeout {
            retry_after: ms(1500),
        }
        .to_string();
        assert!(
            msg.contains("retry in 2 s") && msg.contains("Idempotency-Key"),
            "{msg}"
        );
    }

    #[test]
    fn configs_parse_with_defaults_and_reject_unknown_fields() {
        let rate: RateConfig = toml::from_str("objects_per_second = 10.0").unwrap();
        assert_eq!(rate.objects_per_second, 10.0);
        assert_eq!(rate.request_burst, 100.0);
        assert!(toml::from_str::<RateConfig>("requests_per_minute = 1.0").is_err());
        let queue: QueueConfig = toml::from_str(r#"timeout = "500ms""#).unwrap();
        assert_eq!(
            queue,
            QueueConfig {
                capacity: 10_000,
                timeout: ms(500)
            }
        );
        assert!(toml::from_str::<QueueConfig>("size = 3").is_err());
    }

    #[test]
    fn configs_that_cannot_work_are_refused_with_the_reason() {
        let bad = RateConfig {
            request_burst: 0.5,
            ..RateConfig::default()
        };
        let err = Admission::new(bad, HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("request_burst is 0.5"), "{err}");
        let mut per_publisher = HashMap::new();
        per_publisher.insert(
            "acme".to_owned(),
            RateConfig {
                objects_per_second: f64::NAN,
                ..RateConfig::default()
            },
        );
        let err = Admission::new(RateConfig::default(), per_publisher).unwrap_err();
        assert!(err.to_string().contains(r#"publisher "acme""#), "{err}");
        let slow = RateConfig {
            requests_per_second: 1e-9,
            ..RateConfig::default()
        };
        assert!(slow.validate("default").is_err());
        assert!(
            QueueGate::new(QueueConfig {
                capacity: 0,
                ..QueueConfig::default()
            })
            .is_err()
        );
        assert!(
            QueueGate::new(QueueConfig {
                timeout: Duration::ZERO,
                ..QueueConfig::default()
            })
            .is_err()
        );
    }

    fn gate(capacity: usize) -> QueueGate {
        QueueGate::new(QueueConfig {
            capacity,
            timeout: ms(20),
        })
        .unwrap()
    }

    #[test]
    fn the_queue_refuses_at_capacity_and_admits_again_when_a_ticket_drops() {
        let g = gate(2);
        let first = g.try_enter().unwrap();
        let _second = g.clone().try_enter().unwrap();
        assert_eq!(g.waiting(), 2);
        let shed = g.try_enter().unwrap_err();
        assert!(matches!(shed, Shed::QueueFull { .. }));
        assert_eq!(shed.status(), 429);
        assert_eq!(shed.retry_after_secs(), Some(1));
        drop(first);
        assert_eq!(g.waiting(), 1);
        let _third = g.try_enter().unwrap();
        g.try_enter().unwrap_err();
    }

    #[test]
    fn queue_retry_after_follows_the_recent_commit_pace() {
        let g = gate(1000);
        // 100 purges per 500 ms commit: 1000 waiting drain in 10 commits, 5 s.
        g.record_commit(100, ms(500));
        let tickets: Vec<_> = (0..1000).map(|_| g.try_enter().unwrap()).collect();
        let shed = g.try_enter().unwrap_err();
        assert_eq!(
            shed,
            Shed::QueueFull {
                retry_after: Duration::from_secs(5)
            }
        );
        // Commits slow down to 1.5 s: the average moves a fifth of the way, to 700 ms.
        g.record_commit(100, ms(1500));
        let wait = g.drain_estimate(1000);
        assert!((wait.as_secs_f64() - 7.0).abs() < 1e-6, "{wait:?}");
        // Fast commits never suggest less than a second.
        assert_eq!(g.drain_estimate(1), Duration::from_secs(1));
        drop(tickets);
        assert_eq!(g.waiting(), 0);
    }

    #[tokio::test]
    async fn a_commit_slower_than_the_queue_timeout_is_shed_with_503() {
        let g = gate(10);
        let _ticket = g.try_enter().unwrap();
        let shed = g
            .wait_for_commit(std::future::pending::<u64>())
            .await
            .unwrap_err();
        assert!(matches!(shed, Shed::QueueTimeout { .. }));
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.retry_after_secs(), Some(1));
        assert_eq!(g.wait_for_commit(async { 7 }).await, Ok(7));
        assert_eq!(g.queue_timeout(), ms(20));
    }
}
