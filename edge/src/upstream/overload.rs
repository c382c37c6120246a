//! Overload shedding: a node's limit on upstream work in flight.
//!
//! A hit costs a node memory bandwidth; a miss costs it an upstream exchange, a slot in
//! the upstream's connection pool and, at the origin, real work. Under a flood the node
//! must keep answering hits at their usual latency, so only requests that go upstream
//! (fills, revalidations, passes) take a slot here. A request that finds every slot taken
//! waits up to `queue_timeout` for one; after that it is shed with `503` and
//! `Retry-After` (or answered stale, where `stale-if-error` allows) rather than queued
//! without bound. Requests coalesced onto a fill already running take no slot: they add no
//! upstream work.
//!
//! A slot is held until the upstream's response head arrives: what the limit bounds is
//! the work the node has asked of its upstreams and not yet been answered for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `[overload]` in a node's config.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Upstream requests in flight at once: the node's capacity for misses. Hits never
    /// wait for it.
    pub max_upstream: usize,
    /// How long a miss may wait for a slot before it is shed.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// `Retry-After` of a shed request.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_upstream: 1024,
            queue_timeout: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// The slots of one node.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    /// The settings in force; [`Admission::resize`] replaces them while requests run.
    settings: Mutex<Settings>,
    /// Slots a narrowed limit still has to take out of service: held ones, forgotten as
    /// they are given back.
    owed: Arc<AtomicUsize>,
    shed: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    capacity: usize,
    queue_timeout: Duration,
    retry_after: Duration,
}

/// A slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    owed: Arc<AtomicUsize>,
}

impl Drop for Slot {
    /// Gives the slot back, or takes it out of service while a narrowed limit is owed
    /// slots (see [`Admission::resize`]).
    fn drop(&mut self) {
        let repaid = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                owed.checked_sub(1)
            })
            .is_ok();
        if let (true, Some(permit)) = (repaid, self.permit.take()) {
            permit.forget();
        }
    }
}

/// Why a request was not admitted: every slot stayed taken for the whole queue timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node is at its limit of {capacity} upstream requests and none finished within {waited:?}; retry after {retry_after:?}"
)]
pub struct Shed {
    pub capacity: usize,
    pub waited: Duration,
    pub retry_after: Duration,
}

impl Admission {
    pub fn new(config: &OverloadConfig) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.max_upstream)),
            settings: Mutex::new(Settings {
                capacity: config.max_upstream,
                queue_timeout: config.queue_timeout,
                retry_after: config.retry_after,
            }),
            owed: Arc::default(),
            shed: AtomicU64::new(0),
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            permit: Some(permit),
            owed: self.owed.clone(),
        }
    }

    fn settings(&self) -> Settings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `config`'s limit and timeouts (a config reload). A larger capacity is free at
    /// once; a smaller one takes free slots out of service at once and held ones as they
    /// are given back, so requests in flight are never cut off and no new one is admitted
    /// over the new limit.
    pub fn resize(&self, config: &OverloadConfig) {
        let mut settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        let (was, now) = (settings.capacity, config.max_upstream);
        *settings = Settings {
            capacity: now,
            queue_timeout: config.queue_timeout,
            retry_after: config.retry_after,
        };
        if now > was {
            // Slots still owed are forgiven before any is added.
            let more = now - was;
            let forgiven = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    Some(owed.saturating_sub(more))
                })
                .map_or(0, |owed| owed.min(more));
            self.slots.add_permits(more - forgiven);
        } else if now < was {
            let fewer = was - now;
            let free = self.slots.forget_permits(fewer);
            self.owed.fetch_add(fewer - free, Ordering::AcqRel);
        }
        drop(settings);
    }

    /// A slot, at once when one is free, else within the queue timeout.
    pub async fn admit(&self) -> Result<Slot, Shed> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(self.slot(permit));
        }
        let settings = self.settings();
        match tokio::time::timeout(settings.queue_timeout, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => Ok(self.slot(permit)),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(Shed {
                    capacity: settings.capacity,
                    waited: settings.queue_timeout,
                    retry_after: settings.retry_after,
                })
            }
        }
    }

    /// Upstream requests in flight now.
    pub fn in_flight(&self) -> usize {
        (self.capacity() + self.owed.load(Ordering::Acquire))
            .saturating_sub(self.slots.available_permits())
    }

    pub fn capacity(&self) -> usize {
        self.settings().capacity
    }

    /// Requests shed since the node started.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_upstream: usize, queue_timeout_ms: u64) -> Admission {
        Admission::new(&OverloadConfig {
            max_upstream,
            queue_timeout: Duration::from_millis(queue_timeout_ms),
            retry_after: Duration::from_secs(2),
        })
    }

    #[tokio::test]
    async fn slots_are_given_up_to_capacity_then_shed_after_the_queue_timeout() {
        let admission = admission(2, 20);
        let a = admission.admit().await.expect("first slot");
        let _b = admission.admit().await.expect("second slot");
        assert_eq!(admission.in_flight(), 2);
        let shed = admission.admit().await.expect_err("no third slot");
        assert_eq!(shed.capacity, 2);
        assert_eq!(shed.retry_after, Duration::from_secs(2));
        assert_eq!(admission.shed(), 1);
        drop(a);
        assert_eq!(admission.in_flight(), 1);
        admission
            .admit()
            .await
            .expect("a freed slot is given again");
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_slot_freed_within_its_timeout() {
        let admission = Arc::new(admission(1, 5_000));
        let held = admission.admit().await.expect("slot");
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        drop(held);
        waiter.await.expect("joins").expect("admitted once freed");
        assert_eq!(admission.shed(), 0);
    }

    #[tokio::test]
    async fn a_resize_widens_at_once_and_narrows_as_slots_come_back() {
        let admission = admission(2, 20);
        let a = admission.admit().await.expect("first slot");
        let b = admission.admit().await.expect("second slot");
        admission.resize(&OverloadConfig {
            max_upstream: 3,
            queue_timeout: Duration::from_millis(20),
            retry_after: Duration::from_secs(5),
        });
        let c = admission
            .admit()
            .await
            .expect("the third slot a wider limit gives");
        let shed = admission.admit().await.expect_err("no fourth");
        assert_eq!(
            (shed.capacity, shed.retry_after),
            (3, Duration::from_secs(5))
        );

        admission.resize(&OverloadConfig {
            max_upstream: 1,
            queue_timeout: Duration::from_millis(20),
            retry_after: Duration::from_secs(5),
        });
        drop((a, b));
        assert!(
            admission.admit().await.is_err(),
            "the slots given back are taken out of service while one is still held"
        );
        drop(c);
        let only = admission
            .admit()
            .await
            .expect("one slot under the narrower limit");
        assert_eq!(admission.in_flight(), 1);
        assert!(admission.admit().await.is_err(), "and only one");
        drop(only);
    }
}
