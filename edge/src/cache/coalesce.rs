//! Request coalescing: concurrent misses for one key wait on a single upstream fetch.
//!
//! The first request for a key starts the fetch in a task of its own and every request
//! for that key, the first included, waits on its result. A client that hangs up drops
//! only its wait, never the fetch, so nobody else is stranded. The key leaves the
//! in-flight table before the result is published; the fetch itself is expected to have
//! stored its response first, so a request arriving in between finds either the
//! in-flight fetch or the stored entry, never neither.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Whether a caller started the fetch it waited on or joined one already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// The fetch a caller waited on was lost: its task panicked or was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared upstream fetch ended without a result (its task panicked or was aborted)")]
pub struct FetchLost;

/// Lets a fetch publish its result before it ends (a body still streaming, say); waiters
/// that arrive later, while the fetch still runs, receive the published value.
#[derive(Debug)]
pub struct Publisher<V> {
    tx: Arc<watch::Sender<Option<V>>>,
}

impl<V> Publisher<V> {
    pub fn publish(&self, value: V) {
        self.tx.send_replace(Some(value));
    }
}

/// A table of in-flight fetches keyed by `K`, each producing a shared `V`.
pub struct Coalescer<K, V> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> std::fmt::Debug for Coalescer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self {
            inflight: Arc::default(),
        }
    }
}

/// Removes the key from the table when the fetch task ends, however it ends.
struct Departure<K: Eq + Hash, V> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    key: Option<K>,
}

impl<K: Eq + Hash, V> Drop for Departure<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for the fetch of `key`, starting it with `fetch` if none is in flight.
    /// `fetch` is called only by the leader, and its future runs to completion in its own
    /// task even if every waiter goes away. Waiters get the first value published, or the
    /// future's output; the key stays in flight until the future ends.
    pub async fn run<F, Fut>(&self, key: &K, fetch: F) -> (Result<V, FetchLost>, Role)
    where
        F: FnOnce(Publisher<V>) -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, role) = {
            let mut table = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(rx) = table.get(key) {
                (rx.clone(), Role::Follower)
            } else {
                let (tx, rx) = watch::channel(None);
                let tx = Arc::new(tx);
                table.insert(key.clone(), rx.clone());
                let departure = Departure {
                    inflight: self.inflight.clone(),
                    key: Some(key.clone()),
                };
                let fut = fetch(Publisher { tx: tx.clone() });
                tokio::spawn(async move {
                    let value = fut.await;
                    drop(departure);
                    tx.send_replace(Some(value));
                });
                (rx, Role::Leader)
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone().ok_or(FetchLost),
            Err(_) => Err(FetchLost),
        };
        (result, role)
    }

    /// Runs `fetch` as [`Coalescer::run`] runs a leader's (in its own task, to completion,
    /// the first published value or its output as the answer) but outside the table: no
    /// request joins it, and it joins none. For a fetch whose answer may belong to one
    /// client alone until it is known (a request with credentials).
    pub async fn alone<F, Fut>(&self, fetch: F) -> Result<V, FetchLost>
    where
        F: FnOnce(Publisher<V>) -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (tx, mut rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let fut = fetch(Publisher { tx: tx.clone() });
        tokio::spawn(async move {
            let value = fut.await;
            tx.send_replace(Some(value));
        });
        match rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone().ok_or(FetchLost),
            Err(_) => Err(FetchLost),
        }
    }

    /// Number of fetches in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let coalescer = Arc::new(Coalescer::<String, u32>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, calls, release) = (coalescer.clone(), calls.clone(), release.clone());
            tasks.push(tokio::spawn(async move {
                c.run(&"k".to_owned(), |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    7
                })
                .await
            }));
        }
        // Every caller is waiting once the table has the key and all tasks have yielded.
        while coalescer.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        let mut leaders = 0;
        for t in tasks {
            let (v, role) = t.await.unwrap();
            assert_eq!(v, Ok(7));
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_departed_leader_does_not_strand_followers() {
        let coalescer = Arc::new(Coalescer::<u8, &'static str>::new());
        let release = Arc::new(Notify::new());
        let r = release.clone();
        let c = coalescer.clone();
        let leader = tokio::spawn(async move {
            c.run(&1, |_| async move {
                r.notified().await;
                "done"
            })
            .await
        });
        while coalescer.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        let c = coalescer.clone();
        let follower =
            tokio::spawn(async move { c.run(&1, |_| async { unreachable!("joined") }).await });
        tokio::task::yield_now().await;
        release.notify_one();
        let (v, role) = follower.await.unwrap();
        assert_eq!((v, role), (Ok("done"), Role::Follower));
    }

    #[tokio::test]
    async fn an_early_published_value_reaches_waiters_while_the_fetch_runs() {
        let coalescer = Arc::new(Coalescer::<u8, &'static str>::new());
        let release = Arc::new(Notify::new());
        let r = release.clone();
        let c = coalescer.clone();
        let leader = tokio::spawn(async move {
            c.run(&1, |publisher| async move {
                publisher.publish("streaming");
                r.notified().await;
                "stored"
            })
            .await
        });
        assert_eq!(leader.await.unwrap(), (Ok("streaming"), Role::Leader));
        // Still in flight: a new waiter joins the running fetch and sees the early value.
        assert_eq!(coalescer.in_flight(), 1);
        let (v, role) = coalescer
            .run(&1, |_| async { unreachable!("joined") })
            .await;
        assert_eq!((v, role), (Ok("streaming"), Role::Follower));
        release.notify_one();
    }

    #[tokio::test]
    async fn a_panicking_fetch_reports_lost_and_clears_the_key() {
        let coalescer = Coalescer::<u8, u8>::new();
        let (v, _) = coalescer
            .run(&1, |_| async { panic!("fetch blew up") })
            .await;
        assert_eq!(v, Err(FetchLost));
        assert_eq!(coalescer.in_flight(), 0);
        let (v, role) = coalescer.run(&1, |_| async { 3 }).await;
        assert_eq!((v, role), (Ok(3), Role::Leader));
    }

    #[tokio::test]
    async fn a_fetch_run_alone_is_never_joined_and_joins_nothing() {
        let coalescer = Arc::new(Coalescer::<u8, &'static str>::new());
        let release = Arc::new(Notify::new());
        let r = release.clone();
        let c = coalescer.clone();
        let shared = tokio::spawn(async move {
            c.run(&1, |_| async move {
                r.notified().await;
                "shared"
            })
            .await
        });
        while coalescer.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        // A shared fetch of the key is in flight: the lone one does not join it...
        assert_eq!(coalescer.alone(|_| async { "mine" }).await, Ok("mine"));
        // ...and while a lone one runs, the table does not know it.
        let hold = Arc::new(Notify::new());
        let h = hold.clone();
        let c = coalescer.clone();
        let lone = tokio::spawn(async move {
            c.alone(|_| async move {
                h.notified().await;
                "lone"
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(coalescer.in_flight(), 1);
        release.notify_one();
        assert_eq!(shared.await.unwrap(), (Ok("shared"), Role::Leader));
        hold.notify_one();
        assert_eq!(lone.await.unwrap(), Ok("lone"));
        assert_eq!(coalescer.in_flight(), 0);
    }
}
