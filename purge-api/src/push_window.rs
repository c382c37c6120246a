//! When new purges are released to the push tasks: the coalescing window of the embedded
//! log's fan-out.
//!
//! Why: one push task per node sends each node everything past its watermark. Woken by
//! every append, it sends one request per purge per node when purges trickle in one at a
//! time: 1,000 purges to 1,000 nodes were a million requests (issue 24). Instead the log's
//! new purges are *released* to the push tasks in rounds, and a node that has everything
//! released gets nothing until the next round: at most one request per node per round,
//! however many purges the round carries.
//!
//! A round is released:
//! - at once when a purge arrives after a quiet [`WINDOW`] (an isolated purge is not
//!   delayed at all);
//! - otherwise when [`BATCH`] purges are waiting (a push's fixed cost, one request per
//!   node, is then shared by enough purges: at most `1 / BATCH` requests per purge per
//!   node), but never sooner than [`MIN_GAP`] after the last round (bounding the rounds to
//!   `1 / MIN_GAP` a second whatever the rate);
//! - or when the oldest waiting purge has waited [`WINDOW`] (the most a trickling purge
//!   waits for its round).
//!
//! So purges arriving back to back at a few hundred a second wait `BATCH / rate` (tens of
//! milliseconds), and purges trickling at 100 a second wait at most `BATCH / 100 s` and
//! travel `BATCH` to a request.
//!
//! A full batch also waits while the last round is still being pushed to more than a
//! sixteenth of the nodes ([`PushesInFlight`]): at 1,000 nodes a round is a thousand
//! requests, and releasing more rounds than the pushes can carry only queues them behind
//! each other (every push task then sends one request per round it finds, so more rounds
//! are more requests for the same purges). Waiting for the pushes to drain makes the
//! rounds as large as the fan-out's speed requires and no larger (BENCHMARKS.md, "Purge
//! fan-out at 1,000 nodes"). A dead or hanging node is one push; it cannot hold the
//! rounds, and the age rule still holds.
//!
//! Invariants: the released head never passes the log's head and never goes down; every
//! purge in the log is released within [`WINDOW`] of its append (so a purge is never
//! held back for good).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The longest a purge waits for its round while purges trickle in.
pub const WINDOW: Duration = Duration::from_millis(200);

/// Purges that close a round early.
pub const BATCH: u64 = 12;

/// The shortest time between two rounds.
pub const MIN_GAP: Duration = Duration::from_millis(10);

/// When the next round is due, for the rules in the module's doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    window: Duration,
    batch: u64,
    min_gap: Duration,
    /// When the last round was released, if one was.
    last: Option<Instant>,
    /// When the oldest purge not yet released arrived, if one waits.
    oldest: Option<Instant>,
}

impl Rounds {
    pub fn new(window: Duration, batch: u64, min_gap: Duration) -> Self {
        Rounds {
            window,
            batch: batch.max(1),
            min_gap,
            last: None,
            oldest: None,
        }
    }

    /// `waiting` purges are in the log and not released (0: none), while the last round's
    /// pushes are still `busy` (see [`PushesInFlight`]) or not; when the next round is
    /// due: `None` when nothing waits.
    pub fn due(&mut self, waiting: u64, busy: bool, now: Instant) -> Option<Instant> {
        if waiting == 0 {
            self.oldest = None;
            return None;
        }
        let oldest = *self.oldest.get_or_insert(now);
        let Some(last) = self.last else {
            return Some(oldest);
        };
        if oldest >= last + self.window {
            // The first purge after a quiet window.
            return Some(oldest);
        }
        let by_age = oldest + self.window;
        if waiting >= self.batch && !busy {
            Some(by_age.min((last + self.min_gap).max(now)))
        } else {
            Some(by_age)
        }
    }

    /// A round was released at `now`.
    pub fn released(&mut self, now: Instant) {
        self.last = Some(now);
        self.oldest = None;
    }
}

/// The pushes on their way to nodes, and whether there are too many to release another
/// round (more than a sixteenth of the nodes, at least one).
#[derive(Debug)]
pub struct PushesInFlight {
    count: AtomicUsize,
    limit: usize,
    /// Told when the count falls to the limit.
    drained: Notify,
}

impl PushesInFlight {
    pub fn new(nodes: usize) -> Self {
        PushesInFlight {
            count: AtomicUsize::new(0),
            limit: (nodes / 16).max(1),
            drained: Notify::new(),
        }
    }

    /// A push starts; it ends when the guard drops.
    pub fn start(&self) -> PushGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        PushGuard(self)
    }

    /// Whether more pushes are on their way than a new round should wait for.
    pub fn busy(&self) -> bool {
        self.count.load(Ordering::Acquire) > self.limit
    }
}

/// One push on its way ([`PushesInFlight::start`]).
#[derive(Debug)]
pub struct PushGuard<'a>(&'a PushesInFlight);

impl Drop for PushGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == self.0.limit + 1 {
            self.0.drained.notify_one();
        }
    }
}

/// Raises `released` to the log's head (`heads`) in rounds, until `stop`.
pub async fn release_forever(
    mut heads: watch::Receiver<u64>,
    released: watch::Sender<u64>,
    mut rounds: Rounds,
    pushes: std::sync::Arc<PushesInFlight>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let head = *heads.borrow_and_update();
        let waiting = head.saturating_sub(*released.borrow());
        let busy = pushes.busy();
        match rounds.due(waiting, busy, Instant::now()) {
            None => {
                tokio::select! {
                    changed = heads.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Some(due) if due <= Instant::now() => {
                released.send_if_modified(|released| {
                    let raise = head > *released;
                    if raise {
                        *released = head;
                    }
                    raise
                });
                rounds.released(Instant::now());
            }
            Some(due) => {
                // Woken early by appends (a full batch may make the round due sooner) and
                // by the last round's pushes draining.
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    changed = heads.changed() => if changed.is_err() { return },
                    () = pushes.drained.notified(), if busy => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rounds() -> Rounds {
        Rounds::new(200 * MS, 12, 10 * MS)
    }

    #[test]
    fn a_purge_after_a_quiet_window_goes_at_once() {
        let mut r = rounds();
        let t0 = Instant::now();
        assert_eq!(r.due(0, false, t0), None);
        assert_eq!(r.due(1, false, t0), Some(t0));
        r.released(t0);
        let later = t0 + 300 * MS;
        assert_eq!(r.due(1, false, later), Some(later));
    }

    #[test]
    fn purges_soon_after_a_round_wait_for_the_window() {
        let mut r = rounds();
        let t0 = Instant::now();
        r.released(t0);
        let t1 = t0 + 50 * MS;
        assert_eq!(r.due(1, false, t1), Some(t1 + 200 * MS));
        // More arriving does not move the oldest's deadline...
        assert_eq!(r.due(5, false, t1 + 20 * MS), Some(t1 + 200 * MS));
        // ...until a full batch waits.
        assert_eq!(r.due(12, false, t1 + 30 * MS), Some(t1 + 30 * MS));
    }

    #[test]
    fn a_full_batch_still_waits_for_the_minimum_gap() {
        let mut r = rounds();
        let t0 = Instant::now();
        r.released(t0);
        assert_eq!(r.due(50, false, t0 + 2 * MS), Some(t0 + 10 * MS));
    }

    #[test]
    fn a_full_batch_waits_while_the_last_round_is_on_its_way() {
        let mut r = rounds();
        let t0 = Instant::now();
        r.released(t0);
        let t1 = t0 + 5 * MS;
        assert_eq!(r.due(12, true, t1), Some(t1 + 200 * MS));
        assert_eq!(r.due(40, true, t1 + 30 * MS), Some(t1 + 200 * MS));
        assert_eq!(r.due(40, false, t1 + 40 * MS), Some(t1 + 40 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_waits_for_the_pushes_to_drain_but_not_past_the_window() {
        let (head, heads) = watch::channel(0u64);
        let (released, mut seen) = watch::channel(0u64);
        let (stop, stopping) = watch::channel(false);
        // 32 nodes: busy past 2 pushes.
        let pushes = std::sync::Arc::new(PushesInFlight::new(32));
        let task = tokio::spawn(release_forever(
            heads,
            released,
            rounds(),
            pushes.clone(),
            stopping,
        ));
        head.send_replace(1);
        seen.wait_for(|&r| r == 1).await.unwrap();
        let on_their_way: Vec<_> = (0..3).map(|_| pushes.start()).collect();
        assert!(pushes.busy());
        let t0 = Instant::now();
        head.send_replace(1 + 12);
        tokio::time::sleep(50 * MS).await;
        assert_eq!(*seen.borrow(), 1, "released while the pushes were busy");
        drop(on_their_way);
        seen.wait_for(|&r| r == 13).await.unwrap();
        assert_eq!(Instant::now() - t0, 50 * MS);
        // Pushes that never drain hold a round for the window at most.
        let _stuck: Vec<_> = (0..3).map(|_| pushes.start()).collect();
        tokio::time::sleep(20 * MS).await;
        let t1 = Instant::now();
        head.send_replace(13 + 12);
        seen.wait_for(|&r| r == 25).await.unwrap();
        assert_eq!(Instant::now() - t1, 200 * MS);
        stop.send_replace(true);
        task.await.unwrap();
    }

    /// Purges at 100 a second for 3 s: rounds of about `BATCH` purges, each purge waiting
    /// at most `BATCH` arrivals.
    #[test]
    fn a_trickle_travels_in_batches() {
        let mut r = rounds();
        let t0 = Instant::now();
        let (mut waiting, mut released_rounds, mut longest) = (0u64, 0, Duration::ZERO);
        let mut oldest = None;
        for i in 0..300u32 {
            let now = t0 + 10 * MS * i;
            waiting += 1;
            oldest.get_or_insert(now);
            if r.due(waiting, false, now).is_some_and(|due| due <= now) {
                longest = longest.max(now - oldest.take().unwrap_or(now));
                r.released(now);
                released_rounds += 1;
                waiting = 0;
            }
        }
        assert!(released_rounds <= 300 / 11, "{released_rounds} rounds");
        assert!(longest <= 120 * MS, "a purge waited {longest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn every_purge_is_released_within_the_window() {
        let (head, heads) = watch::channel(0u64);
        let (released, mut seen) = watch::channel(0u64);
        let (stop, stopping) = watch::channel(false);
        let pushes = std::sync::Arc::new(PushesInFlight::new(32));
        let task = tokio::spawn(release_forever(heads, released, rounds(), pushes, stopping));
        head.send_replace(1);
        seen.wait_for(|&r| r == 1).await.unwrap();
        let t0 = Instant::now();
        // Right after a round: the next purge waits for the window, then goes.
        head.send_replace(2);
        seen.wait_for(|&r| r == 2).await.unwrap();
        assert_eq!(Instant::now() - t0, 200 * MS);
        // A full batch goes before the window ends.
        let t1 = Instant::now();
        head.send_replace(2 + 12);
        seen.wait_for(|&r| r == 14).await.unwrap();
        assert!(Instant::now() - t1 <= 10 * MS);
        stop.send_replace(true);
        task.await.unwrap();
    }
}
