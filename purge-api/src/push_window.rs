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
//! Invariants: the released head never passes the log's head and never goes down; every
//! purge in the log is released within [`WINDOW`] of its append (so a purge is never
//! held back for good).

use std::time::Duration;

use tokio::sync::watch;
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

    /// `waiting` purges are in the log and not released (0: none); when the next round is
    /// due: `None` when nothing waits.
    pub fn due(&mut self, waiting: u64, now: Instant) -> Option<Instant> {
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
        if waiting >= self.batch {
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

/// Raises `released` to the log's head (`heads`) in rounds, until `stop`.
pub async fn release_forever(
    mut heads: watch::Receiver<u64>,
    released: watch::Sender<u64>,
    mut rounds: Rounds,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let head = *heads.borrow_and_update();
        let waiting = head.saturating_sub(*released.borrow());
        match rounds.due(waiting, Instant::now()) {
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
                // Woken early by appends: a full batch may make the round due sooner.
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    changed = heads.changed() => if changed.is_err() { return },
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
        assert_eq!(r.due(0, t0), None);
        assert_eq!(r.due(1, t0), Some(t0));
        r.released(t0);
        let later = t0 + 300 * MS;
        assert_eq!(r.due(1, later), Some(later));
    }

    #[test]
    fn purges_soon_after_a_round_wait_for_the_window() {
        let mut r = rounds();
        let t0 = Instant::now();
        r.released(t0);
        let t1 = t0 + 50 * MS;
        assert_eq!(r.due(1, t1), Some(t1 + 200 * MS));
        // More arriving does not move the oldest's deadline...
        assert_eq!(r.due(5, t1 + 20 * MS), Some(t1 + 200 * MS));
        // ...until a full batch waits.
        assert_eq!(r.due(12, t1 + 30 * MS), Some(t1 + 30 * MS));
    }

    #[test]
    fn a_full_batch_still_waits_for_the_minimum_gap() {
        let mut r = rounds();
        let t0 = Instant::now();
        r.released(t0);
        assert_eq!(r.due(50, t0 + 2 * MS), Some(t0 + 10 * MS));
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
            if r.due(waiting, now).is_some_and(|due| due <= now) {
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
        let task = tokio::spawn(release_forever(heads, released, rounds(), stopping));
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
