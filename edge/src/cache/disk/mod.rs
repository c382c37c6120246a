//! The disk tier's storage engine: a log-structured store of opaque objects (key, meta
//! bytes, body) in fixed-size segment files, with a compact in-memory index. The hybrid
//! store ([`crate::cache::hybrid`]) puts it under the memory tier; the node reads it on a memory miss
//! (`node::disk`).
//!
//! # Why hand-written
//! foyer 0.22.3 (the last release fitting our MSRV) was measured against this store with
//! the same harness (BENCHMARKS.md, "Disk tier engine"): its index costs ~87-133 B of RAM
//! per object held only on disk at 1M objects (104 B in a freshly recovered process),
//! against the target of < 64 B; a disk hit reads and decodes the whole value, so large
//! objects would need a chunking layer; and it aligns every entry to 4 KiB. This store
//! costs ~36 B per object (the index: 16 B per
//! entry in a `hashbrown::HashTable`), streams bodies frame by frame, and aligns to 512 B.
//!
//! # Layout ([`format`])
//! `path/seg-00000000` ... : at most `size / segment_size` files of `segment_size` bytes.
//! A segment is a header (its generation), then records appended one after the other
//! (each aligned to 512 B: header with its own CRC, key, meta, a CRC of key and meta, the
//! body in 64 KiB frames each followed by its CRC), and once full a footer (the key hash
//! and location of every record) and a trailer at the segment's very end.
//!
//! # Invariants
//! - **A record is indexed only once all its bytes are written** (handed to the kernel
//!   with `write_at`). Until then it is served from the writer's in-flight map, from
//!   memory.
//! - **Nothing is served unchecked.** The head (header, key, meta) is checked when a
//!   record is opened and every body frame when it is read, each against a CRC32C seeded
//!   with the record's sequence number, so a frame of another record (a reused segment)
//!   never passes for one of this record. A failure is [`DiskError::Corrupt`]: counted,
//!   the record unindexed; the caller turns it into a miss (before a response head is
//!   sent) or an aborted body (after).
//! - **The files never exceed `size`**: reclaim is FIFO by segment. When the writer needs
//!   a segment and none is free, the oldest is dropped whole (its records unindexed by
//!   its footer) and reused. FIFO because it needs no per-object bookkeeping (the index
//!   holds only a location), writes sequentially, and the hot tier above already keeps
//!   what is popular: an object read from disk is promoted to memory by the node, and
//!   written again when evicted from there, so popular objects keep moving to the head
//!   of the log.
//!
//! # What is durable when
//! - A record is in the page cache once indexed: it survives the process's death (kill
//!   -9), not a power loss. A segment is fdatasync'ed when sealed (full); [`DiskStore::close`]
//!   (clean stop) writes out the buffer and fdatasyncs the open segment.
//! - On open, sealed segments are recovered from their footers (no record is read);
//!   the open segment is scanned record by record, every CRC checked, and the scan stops
//!   at the first record that does not check out (torn by a crash): it and anything after
//!   it are never indexed, and the writer goes on from there.
//! - A crash loses the records still in the write buffer or queue (milliseconds of
//!   admissions), and after a power loss whatever of the open segment the kernel had not
//!   written yet.
//! - `remove` is not persisted: after a restart a removed object can come back. That is
//!   still a valid HTTP response under its own freshness; purges are the node's business
//!   (a persisted purge journal checked on every disk hit, see the design brief).
//!   [`DiskTier::clear`] is persisted (every segment header is wiped).
//!
//! This module is opaque to HTTP: keys, meta and bodies are bytes; what the meta holds is
//! the caller's business. Like the rest of the cache layer it imports nothing from
//! `upstream`, `front` or `node`.

mod config;
pub mod format;
mod index;
mod read;
mod recover;
mod store;

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub use config::DiskConfig;
pub use store::{DiskBody, DiskRecord, DiskStore};

/// What the node asks of a disk tier. [`DiskStore`] is the one implementation; test
/// doubles live in tests.
pub trait DiskTier: Send + Sync + std::fmt::Debug + 'static {
    /// Whether the index (or the in-flight map) has an entry for `key`'s hash. Never does
    /// I/O; `true` may still be a miss (a hash collision, a record found corrupt on read).
    fn may_contain(&self, key: &[u8]) -> bool;

    /// Opens the record stored under `key`: its head is read and checked, the body is
    /// read only as the returned record's [`DiskRecord::body`] is polled. `Ok(None)` is a
    /// miss; [`DiskError::Corrupt`] means the record failed its checks (it was unindexed
    /// and counted), which the caller treats as a miss.
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<DiskRecord>, DiskError>>;

    /// Queues `key` with its `meta` and `body` for writing, replacing any record of the
    /// key once written. Returns at once: readable from memory until written, from disk
    /// after. Refused, with the reason, when the queue is full or the record cannot fit a
    /// segment; a refusal changes nothing.
    fn insert(&self, key: &[u8], meta: Bytes, body: Bytes) -> Result<(), Rejected>;

    /// Forgets `key` (index only: the record stays in its segment until reclaimed, and
    /// can come back after a restart).
    fn remove(&self, key: &[u8]);

    /// Forgets everything, on disk too: every segment header is wiped and synced, so a
    /// restart finds nothing. Records queued before the call are dropped.
    fn clear(&self) -> BoxFuture<'_, Result<(), DiskError>>;

    /// Waits until everything queued before the call is written and indexed (not synced).
    fn flush(&self) -> BoxFuture<'_, Result<(), DiskError>>;

    fn usage(&self) -> DiskUsage;

    fn counters(&self) -> DiskCounters;

    /// What the store found when it opened.
    fn recovery(&self) -> RecoveryReport;

    /// Calls `observer` with the time each write to the device took (one per write
    /// buffer), from the writer's thread. Set once; later calls are ignored.
    fn observe_writes(&self, observer: WriteObserver) {
        let _ = observer;
    }
}

/// Told how long each write to the disk tier's device took ([`DiskTier::observe_writes`]).
pub type WriteObserver = std::sync::Arc<dyn Fn(Duration) + Send + Sync>;

/// What the disk tier holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskUsage {
    /// Objects indexed (written and not removed, reclaimed or found corrupt).
    pub entries: u64,
    /// Bytes of records in live segments (including records since replaced or removed,
    /// whose space comes back when their segment is reclaimed).
    pub bytes: u64,
    /// Bytes of RAM the index holds.
    pub index_bytes: u64,
    /// Bytes accepted but not yet written.
    pub queued_bytes: u64,
}

/// Counters since the store opened, for the node's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskCounters {
    /// Records written and indexed.
    pub writes: u64,
    /// Bytes of those records on disk (aligned).
    pub write_bytes: u64,
    /// Records opened by `get` (from disk or from the in-flight map).
    pub reads: u64,
    /// Body bytes handed out by record bodies.
    pub read_bytes: u64,
    /// Records that failed a check on read (then unindexed).
    pub corrupt_records: u64,
    /// Inserts refused because the queue was full.
    pub rejected_queue_full: u64,
    /// Inserts refused because the record cannot fit a segment.
    pub rejected_too_large: u64,
    /// Segments dropped whole to make room.
    pub reclaimed_segments: u64,
    /// Writes that failed (their records were not indexed).
    pub write_errors: u64,
}

/// What recovery found when the store opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Objects indexed.
    pub objects: u64,
    /// Bytes of those objects' records.
    pub bytes: u64,
    /// Segments recovered from their footer.
    pub sealed_segments: u64,
    /// Segments scanned record by record (the open one, or one whose footer was bad).
    pub scanned_segments: u64,
    /// Scans that stopped at a record that did not check out (a torn write).
    pub torn_records: u64,
    pub duration: Duration,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the disk write queue is full")]
    QueueFull,
    #[error("the object does not fit a segment")]
    TooLarge,
    #[error("the disk store is closed")]
    Closed,
}

impl Rejected {
    /// For metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::QueueFull => "queue_full",
            Rejected::TooLarge => "too_large",
            Rejected::Closed => "closed",
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A record failed a check (header, key and meta, or a body frame): it was unindexed
    /// and counted.
    #[error("corrupt disk record: {0}")]
    Corrupt(&'static str),
    /// The record's segment was reclaimed while its body was being read.
    #[error("disk record reclaimed while read")]
    Reclaimed,
    #[error("the disk store is closed")]
    Closed,
    /// Another store holds the directory's lock: two writers would tear each other's
    /// segments.
    #[error(
        "the disk tier directory {} is in use by another node (it holds {}/lock): give each node its own [cache.disk] path",
        .0.display(),
        .0.display()
    )]
    InUse(std::path::PathBuf),
}

/// A byte range of a body, clipped to its length.
fn clip(range: Range<u64>, len: u64) -> Range<u64> {
    let end = range.end.min(len);
    range.start.min(end)..end
}
