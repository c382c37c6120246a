//! The durable purge log: every accepted purge, in one global order.
//!
//! Why a log: a purge must reach every edge and shield, including nodes that are down or
//! partitioned when it is accepted. Rather than remembering per node what is still owed,
//! the API appends each purge to one ordered log and every node reads it after the last
//! sequence number it applied (its watermark). Catching up after an outage is the same
//! read as normal fan-out, just from further back.
//!
//! Invariants:
//! - Acknowledged means durable: [`PurgeLog::append`] returns only after the batch is
//!   committed and fsync'd, and the API answers `202 Accepted` only after that. A purge the
//!   publisher saw accepted survives a crash or power loss; one whose append failed was not
//!   accepted (`503`) and is not in the log.
//! - Sequence numbers are consecutive from 1 and never reused: the head is stored in the
//!   file, so it survives restarts and retention dropping every entry.
//! - Retention ([`Retention`]) drops the oldest entries beyond a count or an age. The log
//!   then starts later than 1; a reader asking for entries that were dropped gets
//!   [`LogError::Truncated`] and must resynchronise (nodes bump the generation of every
//!   site, which invalidates everything they cached) before reading on after `oldest - 1`.
//!
//! [`PurgeLog`] is the swap point: [`FileLog`] (an embedded `redb` file) is the
//! single-machine default; [`NatsLog`](crate::nats_log::NatsLog) (a replicated NATS
//! JetStream stream) is the multi-machine one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use node_api::purge::Purge;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::request::Fingerprint;

/// One accepted purge as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its place in the global order (consecutive from 1, across all publishers); the
    /// purge id the API answers with.
    pub seq: u64,
    /// The publisher whose token accepted it.
    pub publisher: String,
    pub purge: Purge,
    /// The request's `Idempotency-Key`, if it had one.
    pub idempotency_key: Option<String>,
    /// What the keyed request asked for, so a key reused for another request is refused.
    /// `None` without a key, and on keyed entries logged before fingerprints were stored
    /// (absent from their JSON): read it with [`LogEntry::fingerprint`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fingerprint: Option<Fingerprint>,
    /// When the API accepted it, in Unix milliseconds. Retention by age uses it.
    pub accepted_at_ms: u64,
}

impl LogEntry {
    /// The fingerprint of the request that created this entry. An entry logged before
    /// fingerprints were stored gets the one its purge has as a `POST /v1/purge`
    /// ([`Fingerprint::legacy`]), the only request that took keys then: its key keeps
    /// matching exactly the request that created it, neither more nor less.
    pub fn fingerprint(&self) -> Fingerprint {
        self.request_fingerprint
            .clone()
            .unwrap_or_else(|| Fingerprint::legacy(&self.purge))
    }
}

/// What is appended: a [`LogEntry`] before the log gives it a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub publisher: String,
    pub purge: Purge,
    pub idempotency_key: Option<String>,
    /// The keyed request's [`Fingerprint`], stored with the key.
    pub request_fingerprint: Option<Fingerprint>,
    /// When the API accepted it, in Unix milliseconds.
    pub accepted_at_ms: u64,
}

/// The durable, ordered log of accepted purges.
///
/// Async, because the implementations wait: [`FileLog`] for the disk (it runs its redb
/// transactions on a blocking thread), [`NatsLog`](crate::nats_log::NatsLog) for the
/// network. [`head`](PurgeLog::head) and [`subscribe`](PurgeLog::subscribe) never wait.
#[async_trait::async_trait]
pub trait PurgeLog: Send + Sync + fmt::Debug {
    /// Appends a batch of purges, assigning them sequence numbers after every earlier
    /// one, and returns them in batch order.
    ///
    /// Runs when the API has admitted purges and before it answers them: the API collects
    /// the purges of many concurrent requests and appends them in one call (group commit),
    /// so one disk flush (or one round of stream acknowledgements) acknowledges them all.
    ///
    /// Guarantees: on `Ok` the whole batch is durable and the head has moved past it;
    /// subscribers see the new head. On `Err` none of the batch's purges may be
    /// acknowledged (the API answers `503`, the publisher retries). [`FileLog`] is all or
    /// nothing; a replicated log may have stored part of a failed batch, and those purges
    /// then reach the nodes although their publisher was told to retry: an extra
    /// invalidation, never a lost one. An empty batch is a no-op returning an empty vec.
    ///
    /// Does not deduplicate: the API asks [`find_idempotent`](PurgeLog::find_idempotent)
    /// first. If two entries carry the same publisher and key, the index keeps the first.
    async fn append(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, LogError>;

    /// Entries with a sequence number greater than `after`, in order, at most `limit`.
    ///
    /// Runs when the fan-out pushes new purges to nodes, when a node that was away asks
    /// for everything after its watermark, and for a purge's status. Empty when
    /// `after >= head`.
    ///
    /// Errors: [`LogError::Truncated`] when retention already dropped entries after `after`;
    /// the reader must resynchronise (bump its site generations), then read after
    /// `oldest - 1`. Storage errors mean the log cannot be read right now; retry later.
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, LogError>;

    /// The highest sequence number this instance knows was assigned (0 when nothing was
    /// ever appended). It does not go down when retention drops entries, nor across
    /// restarts. Never blocks.
    fn head(&self) -> u64;

    /// A receiver of the head after every successful append, to wake the fan-out without
    /// polling. The value only ever grows; bursts may be coalesced into the latest head.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// The entry an earlier request of `publisher` with this `Idempotency-Key` created, if
    /// it is still retained.
    ///
    /// Runs before admitting a request that carries an `Idempotency-Key`: on `Some`, the API
    /// compares the request's fingerprint with the entry's ([`LogEntry::fingerprint`]) and
    /// answers the same request with the existing purge id instead of appending again, a
    /// different one with `422`; also after a restart (the index is in the log). `None`
    /// once retention dropped the entry.
    async fn find_idempotent(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<LogEntry>, LogError>;
}

/// How much of the log is kept. After each append, the oldest entries are dropped while
/// the log holds more than `max_entries` or the oldest is older than `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most entries kept.
    pub max_entries: u64,
    /// Oldest entry kept, by its `accepted_at_ms`. A node down for longer than this
    /// resynchronises instead of catching up.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_entries: 1_000_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why the log could not do what was asked, and what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened or created.
    #[error(
        "cannot open the purge log {path}: {source}; no purge can be accepted until it opens \
         (is another process using the file? is the disk full, read-only or failing?)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    /// The storage failed (I/O error, full disk, corruption). Nothing was changed: the API
    /// answers `503` and the purge is not accepted; the publisher may retry.
    #[error(
        "the purge log's storage failed while {op}: {source}; nothing was written, so the \
         purge is not accepted (answer 503, the publisher may retry); check the disk"
    )]
    Storage {
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// Entries the reader asked for were dropped by retention; `oldest` is the first
    /// sequence number still served (head + 1 if every entry was dropped).
    #[error(
        "purges before {oldest} were dropped from the log by retention; the reader must \
         resynchronise (bump its site generations) and read on from {oldest}"
    )]
    Truncated { oldest: u64 },
    /// The thread running a log operation failed (it panicked or the runtime is shutting
    /// down). Nothing is known to be written; the purge is not accepted.
    #[error(
        "the purge log task failed while {op}: {reason}; the purge is not accepted (answer \
         503, the publisher may retry)"
    )]
    Task { op: &'static str, reason: String },
    /// The replicated log (NATS JetStream) cannot be reached or did not confirm in time.
    /// The purge is not accepted; nodes keep their position and resume when it returns.
    #[error(
        "the NATS purge stream is unavailable while {op}: {reason}; the purge is not \
         accepted (answer 503, the publisher may retry); check that the NATS servers in \
         [log.nats] servers are up and have JetStream enabled"
    )]
    Unavailable { op: &'static str, reason: String },
    /// A purge could not be encoded for the log; it is not accepted.
    #[error("cannot encode a purge for the log: {0}; the purge is not accepted")]
    Encode(#[source] serde_json::Error),
    /// A stored entry does not decode: the file is damaged or was written by an
    /// incompatible version. Readers cannot get past it; restore the file or start a new
    /// log (nodes then resynchronise).
    #[error(
        "purge log entry {seq} cannot be decoded: {source}; the log file is damaged or from \
         an incompatible version"
    )]
    Corrupt {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
}

impl LogError {
    /// A bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LogError::Open { .. } => "open",
            LogError::Storage { .. } => "storage",
            LogError::Truncated { .. } => "truncated",
            LogError::Task { .. } => "task",
            LogError::Unavailable { .. } => "unavailable",
            LogError::Encode(_) => "encode",
            LogError::Corrupt { .. } => "corrupt",
        }
    }
}

/// Sequence number -> JSON of the [`LogEntry`].
const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
/// (publisher, idempotency key) -> sequence number of the entry it created.
const IDEMPOTENCY: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("idempotency");
/// Named counters; [`HEAD`] survives retention dropping every entry.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const HEAD: &str = "head";

/// Memory redb may use to cache pages. Appends and reads near the head touch few pages.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// [`PurgeLog`] in one local `redb` file (copy-on-write B-trees with checksummed commits:
/// a crash leaves the last committed state). One write transaction per append, flushed
/// with [`Durability::Immediate`].
#[derive(Debug, Clone)]
pub struct FileLog {
    inner: Arc<FileInner>,
}

/// What the blocking threads share with the async side.
#[derive(Debug)]
struct FileInner {
    db: Database,
    path: PathBuf,
    retention: Retention,
    head: watch::Sender<u64>,
}

impl FileLog {
    /// Opens the log at `path`, creating the file if it does not exist. The head and the
    /// idempotency index are those of the file; retention is applied once on opening.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, LogError> {
        let db = redb::Builder::new()
            // The format redb 3 and later read, so a later upgrade needs no migration.
            .create_with_file_format_v3(true)
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| LogError::Open {
                path: path.to_owned(),
                source: Box::new(e.into()),
            })?;
        let (head, dropped, oldest) = init(&db, &retention).map_err(|f| f.into_error("opening"))?;
        tracing::info!(
            path = %path.display(),
            head,
            oldest,
            dropped,
            "purge log opened"
        );
        Ok(FileLog {
            inner: Arc::new(FileInner {
                db,
                path: path.to_owned(),
                retention,
                head: watch::Sender::new(head),
            }),
        })
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// [`PurgeLog::append`] on the calling thread (it waits for the disk).
    pub fn append_blocking(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, LogError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.inner
            .append_inner(batch)
            .map_err(|f| f.into_error("appending purges"))
    }

    /// [`PurgeLog::read_after`] on the calling thread.
    pub fn read_after_blocking(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        self.inner
            .read_after_inner(after, limit)
            .map_err(|f| f.into_error("reading purges"))
    }

    /// [`PurgeLog::find_idempotent`] on the calling thread.
    pub fn find_idempotent_blocking(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<LogEntry>, LogError> {
        self.inner
            .find_idempotent_inner(publisher, key)
            .map_err(|f| f.into_error("looking up an idempotency key"))
    }

    /// Runs `f` on a blocking thread with a handle to this log.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(FileLog) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || f(log))
            .await
            .unwrap_or_else(|e| {
                Err(LogError::Task {
                    op,
                    reason: e.to_string(),
                })
            })
    }
}

impl FileInner {
    fn append_inner(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, Failure> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let (seqs, dropped) = {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut index = txn.open_table(IDEMPOTENCY)?;
            let mut meta = txn.open_table(META)?;
            let head = meta.get(HEAD)?.map(|g| g.value()).unwrap_or(0);
            let mut seqs = Vec::with_capacity(batch.len());
            for (seq, new) in (head + 1..).zip(batch) {
                let entry = LogEntry {
                    seq,
                    publisher: new.publisher,
                    purge: new.purge,
                    idempotency_key: new.idempotency_key,
                    request_fingerprint: new.request_fingerprint,
                    accepted_at_ms: new.accepted_at_ms,
                };
                let bytes = serde_json::to_vec(&entry).map_err(LogError::Encode)?;
                entries.insert(seq, bytes.as_slice())?;
                if let Some(key) = &entry.idempotency_key {
                    let index_key = (entry.publisher.as_str(), key.as_str());
                    if index.get(index_key)?.is_none() {
                        index.insert(index_key, seq)?;
                    }
                }
                seqs.push(seq);
            }
            let new_head = head + seqs.len() as u64;
            meta.insert(HEAD, new_head)?;
            let dropped = prune(&mut entries, &mut index, &self.retention, now_ms())?;
            (seqs, dropped)
        };
        txn.commit()?;
        if dropped > 0 {
            tracing::debug!(dropped, "purge log retention dropped old entries");
        }
        if let Some(&new_head) = seqs.last() {
            // Concurrent appends commit one after the other but may publish out of order.
            self.head.send_if_modified(|head| {
                let grew = new_head > *head;
                if grew {
                    *head = new_head;
                }
                grew
            });
        }
        Ok(seqs)
    }

    fn read_after_inner(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, Failure> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let head = txn
            .open_table(META)?
            .get(HEAD)?
            .map(|g| g.value())
            .unwrap_or(0);
        if after >= head {
            return Ok(Vec::new());
        }
        let oldest = entries.first()?.map(|(k, _)| k.value()).unwrap_or(head + 1);
        if after + 1 < oldest {
            return Err(LogError::Truncated { oldest }.into());
        }
        let mut out = Vec::with_capacity(limit.min((head - after) as usize));
        for item in entries.range(after + 1..)?.take(limit) {
            let (seq, bytes) = item?;
            out.push(decode::<LogEntry>(seq.value(), bytes.value())?);
        }
        Ok(out)
    }

    fn find_idempotent_inner(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<LogEntry>, Failure> {
        let txn = self.db.begin_read()?;
        let Some(seq) = txn
            .open_table(IDEMPOTENCY)?
            .get((publisher, key))?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let entries = txn.open_table(ENTRIES)?;
        let Some(bytes) = entries.get(seq)? else {
            return Ok(None);
        };
        Ok(Some(decode(seq, bytes.value())?))
    }
}

#[async_trait::async_trait]
impl PurgeLog for FileLog {
    async fn append(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, LogError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking("appending purges", move |log| log.append_blocking(batch))
            .await
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        self.blocking("reading purges", move |log| {
            log.read_after_blocking(after, limit)
        })
        .await
    }

    fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn find_idempotent(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<LogEntry>, LogError> {
        let (publisher, key) = (publisher.to_owned(), key.to_owned());
        self.blocking("looking up an idempotency key", move |log| {
            log.find_idempotent_blocking(&publisher, &key)
        })
        .await
    }
}

/// Creates the tables if needed, restores the head and applies retention. Returns the
/// head, how many entries retention dropped and the oldest retained sequence number.
fn init(db: &Database, retention: &Retention) -> Result<(u64, u64, u64), Failure> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    let result = {
        let mut entries = txn.open_table(ENTRIES)?;
        let mut index = txn.open_table(IDEMPOTENCY)?;
        let mut meta = txn.open_table(META)?;
        let stored = meta.get(HEAD)?.map(|g| g.value()).unwrap_or(0);
        let last = entries.last()?.map(|(k, _)| k.value()).unwrap_or(0);
        // Both are written by every append's transaction; take the larger to be safe.
        let head = stored.max(last);
        if head != stored {
            meta.insert(HEAD, head)?;
        }
        let dropped = prune(&mut entries, &mut index, retention, now_ms())?;
        let oldest = entries.first()?.map(|(k, _)| k.value()).unwrap_or(head + 1);
        (head, dropped, oldest)
    };
    txn.commit()?;
    Ok(result)
}

/// The fields retention needs, decoded without the purge itself.
#[derive(Deserialize)]
struct EntryHead {
    publisher: String,
    idempotency_key: Option<String>,
    accepted_at_ms: u64,
}

/// Drops the oldest entries (and their idempotency keys) while the log is over
/// `max_entries` or the oldest is older than `max_age`. Stops at the first entry within
/// both limits, so the retained entries stay consecutive. Returns how many were dropped.
fn prune(
    entries: &mut Table<'_, u64, &'static [u8]>,
    index: &mut Table<'_, (&'static str, &'static str), u64>,
    retention: &Retention,
    now_ms: u64,
) -> Result<u64, Failure> {
    let max_age_ms = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(max_age_ms);
    let mut len = entries.len()?;
    let mut dropped = 0;
    loop {
        let (seq, head) = {
            let Some((seq, bytes)) = entries.first()? else {
                break;
            };
            (
                seq.value(),
                decode::<EntryHead>(seq.value(), bytes.value())?,
            )
        };
        if len <= retention.max_entries && head.accepted_at_ms >= cutoff {
            break;
        }
        entries.remove(seq)?;
        if let Some(key) = &head.idempotency_key {
            let index_key = (head.publisher.as_str(), key.as_str());
            if index.get(index_key)?.map(|g| g.value()) == Some(seq) {
                index.remove(index_key)?;
            }
        }
        len -= 1;
        dropped += 1;
    }
    Ok(dropped)
}

fn decode<T: for<'de> Deserialize<'de>>(seq: u64, bytes: &[u8]) -> Result<T, LogError> {
    serde_json::from_slice(bytes).map_err(|source| LogError::Corrupt { seq, source })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the inner functions fail with: storage errors get their operation name at the
/// trait method; everything else is already a [`LogError`].
enum Failure {
    Storage(Box<redb::Error>),
    Log(LogError),
}

impl Failure {
    fn into_error(self, op: &'static str) -> LogError {
        match self {
            Failure::Storage(source) => LogError::Storage { op, source },
            Failure::Log(e) => e,
        }
    }
}

impl From<LogError> for Failure {
    fn from(e: LogError) -> Self {
        Failure::Log(e)
    }
}

macro_rules! storage_failures {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::Storage(Box::new(e.into()))
            }
        }
    )*};
}

storage_failures!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError
);

#[cfg(test)]
mod tests {
    use super::*;
    use node_api::purge::{Mode, Selector};

    fn purge(n: u64) -> Purge {
        Purge {
            site: "assets".into(),
            selector: Selector::Urls(vec![format!("https://a.example/{n}.js")]),
            mode: Mode::Hard,
        }
    }

    fn new_entry(n: u64) -> NewEntry {
        NewEntry {
            publisher: "acme".into(),
            purge: purge(n),
            idempotency_key: None,
            request_fingerprint: None,
            accepted_at_ms: now_ms(),
        }
    }

    fn batch(range: std::ops::Range<u64>) -> Vec<NewEntry> {
        range.map(new_entry).collect()
    }

    fn open(dir: &tempfile::TempDir) -> FileLog {
        FileLog::open(&dir.path().join("purges.redb"), Retention::default()).unwrap()
    }

    fn seqs(entries: &[LogEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn appends_get_consecutive_sequence_numbers_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(&dir);
        assert_eq!(log.head(), 0);
        assert_eq!(log.append_blocking(batch(0..3)).unwrap(), vec![1, 2, 3]);
        assert_eq!(log.append_blocking(batch(3..4)).unwrap(), vec![4]);
        assert_eq!(log.append_blocking(batch(4..6)).unwrap(), vec![5, 6]);
        assert_eq!(log.head(), 6);
        let all = log.read_after_blocking(0, 100).unwrap();
        assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(all[3].purge, purge(3));
        assert_eq!(all[3].publisher, "acme");
    }

    #[test]
    fn an_empty_append_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(&dir);
        let mut rx = log.subscribe();
        assert_eq!(log.append_blocking(Vec::new()).unwrap(), Vec::<u64>::new());
        assert_eq!(log.head(), 0);
        assert!(!rx.has_changed().unwrap());
        log.append_blocking(batch(0..1)).unwrap();
        assert_eq!(log.append_blocking(Vec::new()).unwrap(), Vec::<u64>::new());
        assert_eq!(log.head(), 1);
        assert_eq!(*rx.borrow_and_update(), 1);
    }

    #[test]
    fn read_after_returns_later_entries_in_order_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(&dir);
        log.append_blocking(batch(0..10)).unwrap();
        assert_eq!(seqs(&log.read_after_blocking(0, 3).unwrap()), vec![1, 2, 3]);
        assert_eq!(seqs(&log.read_after_blocking(3, 3).unwrap()), vec![4, 5, 6]);
        assert_eq!(seqs(&log.read_after_blocking(8, 100).unwrap()), vec![9, 10]);
        assert!(log.read_after_blocking(10, 100).unwrap().is_empty());
        assert!(log.read_after_blocking(50, 100).unwrap().is_empty());
        assert!(log.read_after_blocking(u64::MAX, 100).unwrap().is_empty());
        assert!(log.read_after_blocking(0, 0).unwrap().is_empty());
    }

    #[test]
    fn the_head_survives_a_restart_and_appends_continue_from_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(&dir);
            log.append_blocking(batch(0..5)).unwrap();
        }
        let log = open(&dir);
        assert_eq!(log.head(), 5);
        assert_eq!(*log.subscribe().borrow(), 5);
        assert_eq!(log.append_blocking(batch(5..7)).unwrap(), vec![6, 7]);
        assert_eq!(
            seqs(&log.read_after_blocking(4, 10).unwrap()),
            vec![5, 6, 7]
        );
    }

    #[test]
    fn nothing_appended_is_lost_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        {
            let log = open(&dir);
            for chunk in [0..1, 1..17, 17..50, 50..51, 51..100] {
                let entries = batch(chunk);
                let seqs = log.append_blocking(entries.clone()).unwrap();
                for (seq, new) in seqs.into_iter().zip(entries) {
                    expected.push(LogEntry {
                        seq,
                        publisher: new.publisher,
                        purge: new.purge,
                        idempotency_key: new.idempotency_key,
                        request_fingerprint: new.request_fingerprint,
                        accepted_at_ms: new.accepted_at_ms,
                    });
                }
            }
        }
        assert_eq!(seqs(&expected), (1..=100).collect::<Vec<_>>());
        let log = open(&dir);
        assert_eq!(log.head(), 100);
        assert_eq!(log.read_after_blocking(0, 1000).unwrap(), expected);
    }

    #[test]
    fn retention_by_count_drops_the_oldest_and_earlier_reads_are_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_entries: 5,
            ..Retention::default()
        };
        let path = dir.path().join("purges.redb");
        let log = FileLog::open(&path, retention).unwrap();
        log.append_blocking(batch(0..4)).unwrap();
        log.append_blocking(batch(4..8)).unwrap();
        assert_eq!(log.head(), 8);
        assert_eq!(
            seqs(&log.read_after_blocking(3, 100).unwrap()),
            vec![4, 5, 6, 7, 8]
        );
        for after in [0, 1, 2] {
            match log.read_after_blocking(after, 100) {
                Err(LogError::Truncated { oldest }) => assert_eq!(oldest, 4),
                other => panic!("expected Truncated, got {other:?}"),
            }
        }
        // Still true after a restart, and new entries continue from the head.
        drop(log);
        let log = FileLog::open(&path, retention).unwrap();
        assert_eq!(log.append_blocking(batch(8..10)).unwrap(), vec![9, 10]);
        assert_eq!(
            seqs(&log.read_after_blocking(5, 100).unwrap()),
            vec![6, 7, 8, 9, 10]
        );
        assert!(matches!(
            log.read_after_blocking(4, 100),
            Err(LogError::Truncated { oldest: 6 })
        ));
    }

    #[test]
    fn retention_by_age_drops_old_entries_but_keeps_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("purges.redb");
        let log = FileLog::open(&path, Retention::default()).unwrap();
        let old = now_ms() - 8 * 24 * 3600 * 1000;
        let mut entries = batch(0..3);
        for entry in &mut entries {
            entry.accepted_at_ms = old;
            entry.idempotency_key = Some(format!("k{}", entry.accepted_at_ms));
        }
        // Older than max_age: durable, then dropped by the same append's retention.
        assert_eq!(log.append_blocking(entries).unwrap(), vec![1, 2, 3]);
        assert_eq!(log.head(), 3);
        assert!(log.read_after_blocking(3, 10).unwrap().is_empty());
        assert!(matches!(
            log.read_after_blocking(0, 10),
            Err(LogError::Truncated { oldest: 4 })
        ));
        assert_eq!(
            log.find_idempotent_blocking("acme", &format!("k{old}"))
                .unwrap(),
            None
        );
        drop(log);
        let log = FileLog::open(&path, Retention::default()).unwrap();
        assert_eq!(log.head(), 3);
        assert_eq!(log.append_blocking(batch(3..4)).unwrap(), vec![4]);
        assert_eq!(seqs(&log.read_after_blocking(3, 10).unwrap()), vec![4]);
    }

    #[test]
    fn an_idempotency_key_finds_its_entry_before_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keyed = |publisher: &str, key: &str, n| NewEntry {
            publisher: publisher.into(),
            idempotency_key: Some(key.into()),
            ..new_entry(n)
        };
        {
            let log = open(&dir);
            log.append_blocking(vec![new_entry(0), keyed("acme", "req-1", 1)])
                .unwrap();
            log.append_blocking(vec![keyed("globex", "req-1", 2), keyed("acme", "req-1", 3)])
                .unwrap();
            let found = log
                .find_idempotent_blocking("acme", "req-1")
                .unwrap()
                .unwrap();
            assert_eq!((found.seq, found.purge), (2, purge(1)));
            assert_eq!(
                log.find_idempotent_blocking("globex", "req-1")
                    .unwrap()
                    .unwrap()
                    .seq,
                3
            );
            assert_eq!(log.find_idempotent_blocking("acme", "req-2").unwrap(), None);
        }
        let log = open(&dir);
        let found = log
            .find_idempotent_blocking("acme", "req-1")
            .unwrap()
            .unwrap();
        assert_eq!(found.seq, 2);
        assert_eq!(found.idempotency_key.as_deref(), Some("req-1"));
        assert_eq!(
            log.find_idempotent_blocking("globex", "req-1")
                .unwrap()
                .unwrap()
                .seq,
            3
        );
    }

    #[test]
    fn a_keyed_entry_keeps_its_fingerprint_and_older_entries_get_their_purges() {
        let dir = tempfile::tempdir().unwrap();
        let fingerprint = Fingerprint::of("PURGE", "/https://a.example/1.js", &purge(1));
        {
            let log = open(&dir);
            log.append_blocking(vec![NewEntry {
                idempotency_key: Some("req-1".into()),
                request_fingerprint: Some(fingerprint.clone()),
                ..new_entry(1)
            }])
            .unwrap();
        }
        let found = open(&dir)
            .find_idempotent_blocking("acme", "req-1")
            .unwrap()
            .unwrap();
        assert_eq!(found.request_fingerprint.as_ref(), Some(&fingerprint));
        assert_eq!(found.fingerprint(), fingerprint);
        // An entry as versions before fingerprints wrote it (no such member) still decodes,
        // and stands for the one request that could carry a key then.
        let old = r#"{"seq":3,"publisher":"acme","purge":{"site":"assets","selector":{"kind":"urls","values":["https://a.example/1.js"]},"mode":"hard"},"idempotency_key":"req-0","accepted_at_ms":1}"#;
        let old: LogEntry = serde_json::from_str(old).unwrap();
        assert_eq!(old.request_fingerprint, None);
        assert_eq!(old.fingerprint(), Fingerprint::legacy(&purge(1)));
        assert_ne!(old.fingerprint(), fingerprint);
        // Entries without a key are written as before.
        let plain = LogEntry {
            seq: 4,
            publisher: "acme".into(),
            purge: purge(1),
            idempotency_key: None,
            request_fingerprint: None,
            accepted_at_ms: 1,
        };
        assert!(
            !serde_json::to_string(&plain)
                .unwrap()
                .contains("fingerprint")
        );
    }

    #[test]
    fn retention_forgets_the_idempotency_keys_of_dropped_entries() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_entries: 2,
            ..Retention::default()
        };
        let log = FileLog::open(&dir.path().join("purges.redb"), retention).unwrap();
        let mut first = new_entry(0);
        first.idempotency_key = Some("req-1".into());
        log.append_blocking(vec![first.clone()]).unwrap();
        assert_eq!(
            log.find_idempotent_blocking("acme", "req-1")
                .unwrap()
                .unwrap()
                .seq,
            1
        );
        log.append_blocking(batch(1..3)).unwrap();
        assert_eq!(log.find_idempotent_blocking("acme", "req-1").unwrap(), None);
        // The key can be used again once forgotten.
        assert_eq!(log.append_blocking(vec![first]).unwrap(), vec![4]);
        assert_eq!(
            log.find_idempotent_blocking("acme", "req-1")
                .unwrap()
                .unwrap()
                .seq,
            4
        );
    }

    #[tokio::test]
    async fn the_file_log_keeps_the_purge_log_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::log_battery::run(|| {
            n += 1;
            let path = dir.path().join(format!("battery-{n}.redb"));
            async move {
                Arc::new(FileLog::open(&path, Retention::default()).unwrap()) as Arc<dyn PurgeLog>
            }
        })
        .await;
    }

    #[tokio::test]
    async fn the_async_trait_does_the_same_on_blocking_threads() {
        let dir = tempfile::tempdir().unwrap();
        let log: std::sync::Arc<dyn PurgeLog> = std::sync::Arc::new(open(&dir));
        let mut keyed = new_entry(3);
        keyed.idempotency_key = Some("req-9".into());
        assert_eq!(log.append(batch(0..3)).await.unwrap(), vec![1, 2, 3]);
        assert_eq!(log.append(vec![keyed]).await.unwrap(), vec![4]);
        assert_eq!(log.append(Vec::new()).await.unwrap(), Vec::<u64>::new());
        assert_eq!(seqs(&log.read_after(1, 2).await.unwrap()), vec![2, 3]);
        let found = log.find_idempotent("acme", "req-9").await.unwrap();
        assert_eq!(found.map(|e| e.seq), Some(4));
        assert_eq!(log.head(), 4);
    }

    #[tokio::test]
    async fn subscribers_see_the_new_head_after_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(open(&dir));
        let mut rx = log.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        let appender = log.clone();
        tokio::task::spawn_blocking(move || appender.append_blocking(batch(0..3)).unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*rx.borrow_and_update(), 3);
        assert_eq!(log.head(), 3);
    }

    #[test]
    fn a_second_open_of_the_same_file_fails_with_open() {
        let dir = tempfile::tempdir().unwrap();
        let _log = open(&dir);
        let err = FileLog::open(&dir.path().join("purges.redb"), Retention::default()).unwrap_err();
        assert_eq!(err.kind(), "open");
    }
}
