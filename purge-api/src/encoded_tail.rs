//! The log's newest purges, read and encoded once for every node's push.
//!
//! Why: each node's push task sends what lies past that node's watermark, and when the
//! nodes keep up they all want the same few purges every round. Each task reading them
//! from the log (a blocking-thread hop and a read transaction) and encoding them itself
//! made a round at 1,000 nodes 1,000 reads and 1,000 encodings of the same entries, which
//! queued behind each other in the blocking pool (issue 24). The tail keeps the newest
//! entries encoded as a batch carries them, in shared [`Bytes`]: one task reads what is
//! new from the log while the others wait for it, then everyone takes it from memory.
//!
//! Invariants:
//! - The entries held have consecutive sequence numbers, each encoded exactly as
//!   [`SequencedPurge`] (what [`node_api::purge::BatchBuilder`] concatenates). Log entries
//!   never change once appended, so a held entry is what the log has (or had, before
//!   retention dropped it: a purge still valid to apply).
//! - At most [`EncodedTail::new`]'s entries and bytes are held, the newest kept. A reader
//!   further behind than the tail reads the log itself, without waiting on others and
//!   without displacing the tail.
//! - An answer read from the tail reaches the log's head or holds `limit` entries, so a
//!   node that keeps up gets everything released in one request.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use node_api::purge::SequencedPurge;

use crate::log::{LogError, PurgeLog};

/// The newest encoded purges of one log; see the module doc.
#[derive(Debug)]
pub struct EncodedTail {
    held: Mutex<Held>,
    /// One reader of the log for the tail at a time: the others wait, then find its
    /// entries held.
    filling: tokio::sync::Mutex<()>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Held {
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Held {
    /// The entries after `after`, up to `limit`; the caller checked that `after + 1` is
    /// held (the entries are consecutive, so it sits `after + 1 - first` in).
    fn after(&self, after: u64, limit: usize) -> Vec<(u64, Bytes)> {
        let first = self.entries.front().map_or(after + 1, |&(seq, _)| seq);
        self.entries
            .iter()
            .skip((after + 1 - first) as usize)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// What the tail can do for a reader.
enum Lookup {
    /// The answer, from memory.
    Found(Vec<(u64, Bytes)>),
    /// The reader is behind the oldest entry held: it reads the log itself.
    Behind,
    /// The tail must first read the log after this sequence number.
    Extend(u64),
}

impl EncodedTail {
    /// A tail holding at most `max_entries` purges and `max_bytes` of their encodings
    /// (always at least the newest one).
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        EncodedTail {
            held: Mutex::new(Held::default()),
            filling: tokio::sync::Mutex::new(()),
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    /// Up to `limit` purges of `log` after `after`, in order, each encoded as a batch
    /// carries it; empty when `after` is at the log's head. Errors are the log's.
    pub async fn after(
        &self,
        log: &dyn PurgeLog,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, LogError> {
        let limit = limit.max(1);
        match self.lookup(after, limit, log.head()) {
            Lookup::Found(found) => return Ok(found),
            Lookup::Behind => return Ok(encode_all(log.read_after(after, limit).await?)),
            Lookup::Extend(_) => {}
        }
        let _filling = self.filling.lock().await;
        let from = match self.lookup(after, limit, log.head()) {
            Lookup::Found(found) => return Ok(found),
            Lookup::Behind => return Ok(encode_all(log.read_after(after, limit).await?)),
            Lookup::Extend(from) => from,
        };
        let read = encode_all(log.read_after(from, limit).await?);
        self.keep(from, &read);
        if from == after {
            return Ok(read);
        }
        // The tail held the start of the answer: it now holds the rest too (or as much as
        // the log has), unless it could not keep it all.
        match self.take(after, limit) {
            Some(found) => Ok(found),
            None => Ok(encode_all(log.read_after(after, limit).await?)),
        }
    }

    /// The answer from memory if the tail holds it whole.
    fn lookup(&self, after: u64, limit: usize, head: u64) -> Lookup {
        if after >= head {
            return Lookup::Found(Vec::new());
        }
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (Some(&(first, _)), Some(&(last, _))) = (held.entries.front(), held.entries.back())
        else {
            return Lookup::Extend(after);
        };
        if after + 1 < first {
            return Lookup::Behind;
        }
        if after >= last {
            return Lookup::Extend(after);
        }
        if last - after >= limit as u64 || last >= head {
            Lookup::Found(held.after(after, limit))
        } else {
            Lookup::Extend(last)
        }
    }

    /// Whatever the tail holds after `after`, up to `limit`; `None` unless it holds
    /// `after + 1`.
    fn take(&self, after: u64, limit: usize) -> Option<Vec<(u64, Bytes)>> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (first, last) = (held.entries.front()?.0, held.entries.back()?.0);
        (first <= after + 1 && after < last).then(|| held.after(after, limit))
    }

    /// Keeps `read`, the entries after `from`: appended when they continue the tail,
    /// instead of it when they are newer, not at all when they are older.
    fn keep(&self, from: u64, read: &[(u64, Bytes)]) {
        if read.is_empty() {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let last = held.entries.back().map(|&(seq, _)| seq);
        match last {
            Some(last) if last == from => {}
            Some(last) if last > from => return,
            _ => *held = Held::default(),
        }
        for (seq, encoded) in read {
            held.bytes += encoded.len();
            held.entries.push_back((*seq, encoded.clone()));
        }
        while held.entries.len() > self.max_entries
            || (held.bytes > self.max_bytes && held.entries.len() > 1)
        {
            if let Some((_, dropped)) = held.entries.pop_front() {
                held.bytes -= dropped.len();
            }
        }
    }
}

/// Entries encoded as a batch carries them. A purge is strings, numbers and enums, which
/// always encode as JSON.
fn encode_all(entries: Vec<crate::log::LogEntry>) -> Vec<(u64, Bytes)> {
    entries
        .into_iter()
        .map(|entry| {
            let seq = entry.seq;
            let purge = SequencedPurge {
                seq,
                purge: entry.purge,
            };
            let encoded = serde_json::to_vec(&purge).expect("a purge always encodes as JSON");
            (seq, Bytes::from(encoded))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use node_api::purge::{Mode, Purge, Selector};
    use tokio::sync::watch;

    use super::*;
    use crate::log::{FileLog, LogEntry, NewEntry, Retention};

    /// The real log, counting its reads.
    #[derive(Debug)]
    struct Counted {
        log: FileLog,
        reads: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl PurgeLog for Counted {
        async fn append(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, LogError> {
            self.log.append(batch).await
        }
        async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.log.read_after(after, limit).await
        }
        fn head(&self) -> u64 {
            self.log.head()
        }
        fn subscribe(&self) -> watch::Receiver<u64> {
            self.log.subscribe()
        }
        async fn find_idempotent(
            &self,
            publisher: &str,
            key: &str,
        ) -> Result<Option<LogEntry>, LogError> {
            self.log.find_idempotent(publisher, key).await
        }
    }

    fn counted(dir: &tempfile::TempDir) -> Counted {
        Counted {
            log: FileLog::open(&dir.path().join("purges.redb"), Retention::default()).unwrap(),
            reads: AtomicUsize::new(0),
        }
    }

    fn entries(range: std::ops::Range<u64>) -> Vec<NewEntry> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        range
            .map(|n| NewEntry {
                publisher: "acme".into(),
                purge: Purge {
                    site: "assets".into(),
                    // Sizes differ, so the byte bound drops a varying number of entries.
                    selector: Selector::Urls(vec![format!(
                        "https://a.example/{}",
                        "x".repeat(n as usize % 50)
                    )]),
                    mode: Mode::Hard,
                },
                idempotency_key: None,
                request_fingerprint: None,
                accepted_at_ms: now_ms,
            })
            .collect()
    }

    /// What a push would send had it read the log itself.
    async fn from_log(log: &Counted, after: u64, limit: usize) -> Vec<(u64, Bytes)> {
        encode_all(log.log.read_after(after, limit).await.unwrap())
    }

    /// Readers at random places (caught up, a little behind, far behind, at the head),
    /// with appends between, through a small tail: every answer is the log's own.
    #[tokio::test]
    async fn every_answer_is_what_the_log_has() {
        let dir = tempfile::tempdir().unwrap();
        let log = counted(&dir);
        let tail = EncodedTail::new(16, 2_000);
        let mut rng = fastrand::Rng::with_seed(24);
        let mut head = 0;
        for _ in 0..400 {
            if rng.u8(..4) == 0 {
                let more = rng.u64(1..8);
                log.append(entries(head..head + more)).await.unwrap();
                head += more;
            }
            let after = match rng.u8(..4) {
                0 => rng.u64(..=head),
                1 => head.saturating_sub(rng.u64(..4)),
                2 => head.saturating_sub(rng.u64(..40)),
                _ => head,
            };
            let limit = rng.usize(1..12);
            let got = tail.after(&log, after, limit).await.unwrap();
            assert_eq!(
                got,
                from_log(&log, after, limit).await,
                "after {after}, limit {limit}, head {head}"
            );
        }
        let held = tail.held.lock().unwrap();
        assert!(held.entries.len() <= 16);
        assert!(held.bytes <= 2_000 || held.entries.len() == 1);
    }

    /// A round at many nodes: they all want what was just appended; one of them reads the
    /// log, the others take it from memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_that_keep_up_share_one_read_per_round() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(counted(&dir));
        let tail = Arc::new(EncodedTail::new(2_000, 16 << 20));
        log.append(entries(0..5)).await.unwrap();
        for round in 0..3u64 {
            log.append(entries(0..12)).await.unwrap();
            let before = log.reads.load(Ordering::Relaxed);
            let after = 5 + round * 12;
            let expected = from_log(&log, after, 500).await;
            let readers: Vec<_> = (0..200)
                .map(|_| {
                    let (log, tail) = (log.clone(), tail.clone());
                    tokio::spawn(async move { tail.after(log.as_ref(), after, 500).await.unwrap() })
                })
                .collect();
            for reader in readers {
                assert_eq!(reader.await.unwrap(), expected);
            }
            let reads = log.reads.load(Ordering::Relaxed) - before;
            assert_eq!(reads, 1, "round {round}: {reads} reads");
        }
    }
}
