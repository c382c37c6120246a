//! What a node remembers across restarts: its purge watermark, its sites' generations and
//! a journal of the purges it applied, in one `redb` file (`{state_dir}/state.redb`).
//!
//! Why: a node whose cache outlives the process (the disk tier) must not serve, after a
//! restart, what was purged while it was down or just before it stopped. Purges are
//! applied eagerly to memory, but entries kept on disk cannot be scanned by prefix or tag,
//! so they are checked lazily, when they are read: [`NodeState::check`] matches a stored
//! entry (its key, tags and `valid_as_of`, the watermark when it was stored) against the
//! purges applied since, exactly as [`Invalidation::may_store`] matches a fill against
//! the purges applied while it ran (the same resolved [`Target`]s, the same normalization).
//! The watermark says where to resume reading the log (`GET /v1/purge-log?after=` or the
//! NATS stream), and the persisted generations keep an everything-hard purge or a reset in
//! effect: a site's generation on start is `max(config, persisted)`.
//!
//! Invariants:
//! - The journal and the watermark are written in one transaction, committed (fsync'd)
//!   once per applied batch, before the watermark is acknowledged upstream (the batch's
//!   answer to a push, the NATS watermark report, `GET /v1/purge/applied`): a watermark
//!   anyone was told about is durable, and every purge up to it is in the journal or
//!   below the floor.
//! - The journal holds every applied purge with a sequence number in `(floor, watermark]`
//!   (a purge for a site this node does not serve, with no targets). Trimming it (beyond
//!   [`JOURNAL_CAP`] purges, down to 90% of the cap) raises the floor to the last purge
//!   dropped, and an entry stored before the floor (`valid_as_of < floor`) is
//!   [`Verdict::Gone`]: what purged it is no longer known.
//! - Forgetting everything ([`NodeState::restart_at`]: the log no longer has what the
//!   node missed, or a fresh node takes the log's head) empties the journal and sets
//!   floor and watermark to the new position, in one transaction with the bumped
//!   generations. An entry stored at exactly the old watermark passes the floor; the
//!   generation bump of a reset is what makes it unreachable (its key names the old
//!   generation).
//!
//! What a crash loses: only purges applied in memory whose batch was not yet committed.
//! Their watermark was never acknowledged, so the purge API pushes them again (from the
//! acknowledged watermark) or the node reads them again from the log when it restarts.
//! A commit that fails (disk full, I/O error) keeps them pending for the next commit, and
//! the batch is answered as failed, so the sender retries.
//!
//! Checks are O(1) and O(small): URL purges are a map from the hash of the URL's key
//! locator to the newest hard and soft purge of it (a hash collision can only purge too
//! much), prefix and host purges a per-site map probed once per distinct prefix length,
//! tag purges a per-site map, everything one pair per site. Only the newest purge of each
//! mode per target is kept: an entry is purged by some purge newer than `valid_as_of` if
//! and only if it is purged by the newest one.
//!
//! [`Invalidation::may_store`]: crate::node::invalidation::Invalidation::may_store

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::cache::key::CacheKey;
use crate::node::invalidation::Target;
use node_api::purge::Mode;

/// The state's file in the state directory.
pub const FILE_NAME: &str = "state.redb";

/// Most purges the journal keeps; beyond it the oldest tenth is dropped and the floor
/// rises. 100k purges of a few hundred bytes each: tens of MiB of disk at most, and an
/// index in memory of one entry per distinct target.
pub const JOURNAL_CAP: usize = 100_000;

/// The file's format; a file written in another one is refused, not misread.
const FORMAT: u64 = 1;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const GENERATIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("generations");
/// Sequence number -> [`JournalEntry`] as JSON.
const JOURNAL: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("journal");

const FORMAT_KEY: &str = "format";
const WATERMARK_KEY: &str = "watermark";
const FLOOR_KEY: &str = "floor";

/// What a stored entry is worth after the purges applied since it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// No purge applied since matches it.
    Fresh,
    /// A soft purge matches it (and no hard one): serve it only as stale, as a soft purge
    /// marks an entry in memory (`Invalidation::soft_purged` says what that means for
    /// each kind of entry: a variant index or a pass marker goes).
    Stale,
    /// A hard purge matches it, or it was stored before the floor: a miss, and removed.
    Gone,
}

impl Verdict {
    /// A bounded label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Fresh => "fresh",
            Verdict::Stale => "stale",
            Verdict::Gone => "gone",
        }
    }
}

/// One applied purge as the journal keeps it: its targets resolved against the node's
/// sites when it was applied (a host purge is the prefix `http://{host}/` it was applied
/// as), so checking needs no site table and matches what memory did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub site: String,
    pub mode: Mode,
    pub targets: Vec<Target>,
}

/// The state could not be opened or written, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot open the node state {path}: {source}; is another node using the same \
         state directory? is the disk full, read-only or failing?"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error(
        "the node state {path} is in format {found}, this node reads format {FORMAT}: \
         delete the state directory (with the disk cache beside it) to start empty"
    )]
    Format { path: PathBuf, found: u64 },
    #[error(
        "journal entry {seq} of the node state does not decode: {source}; delete the state \
         directory (with the disk cache beside it) to start empty"
    )]
    Corrupt {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    /// Nothing of the transaction was written: the purges stay pending for the next
    /// commit, and the watermark they reach is not acknowledged.
    #[error(
        "the node state's storage failed while {op}: {source}; the watermark was not \
         acknowledged and the purges will be committed with the next batch; check the disk"
    )]
    Storage {
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
}

/// The newest purge of each mode that matched a target (0: none).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Newest {
    hard: u64,
    soft: u64,
}

impl Newest {
    fn note(&mut self, seq: u64, mode: Mode) {
        let slot = match mode {
            Mode::Hard => &mut self.hard,
            Mode::Soft => &mut self.soft,
        };
        *slot = (*slot).max(seq);
    }

    /// What the purges noted here make of an entry stored at `valid_as_of`.
    fn verdict(&self, valid_as_of: u64) -> Verdict {
        if self.hard > valid_as_of {
            Verdict::Gone
        } else if self.soft > valid_as_of {
            Verdict::Stale
        } else {
            Verdict::Fresh
        }
    }

    /// Forgets purges at or below `floor` (they cannot match an entry the floor lets
    /// through); whether anything is left.
    fn above(&mut self, floor: u64) -> bool {
        if self.hard <= floor {
            self.hard = 0;
        }
        if self.soft <= floor {
            self.soft = 0;
        }
        *self != Newest::default()
    }
}

/// The purges of one site, by target.
#[derive(Debug, Default)]
struct SiteIndex {
    everything: Newest,
    /// Hash of a URL's locator (the primary key without its generation) -> its purges.
    urls: HashMap<u64, Newest>,
    /// Prefix of locators (a prefix or a host purge) -> its purges.
    prefixes: HashMap<Box<str>, Newest>,
    /// How many prefixes of each length there are: a check probes each length once.
    prefix_lengths: BTreeMap<usize, usize>,
    tags: HashMap<Box<str>, Newest>,
}

impl SiteIndex {
    fn trim(&mut self, floor: u64) {
        self.everything.above(floor);
        self.urls.retain(|_, newest| newest.above(floor));
        self.tags.retain(|_, newest| newest.above(floor));
        let lengths = &mut self.prefix_lengths;
        self.prefixes.retain(|prefix, newest| {
            let keep = newest.above(floor);
            if !keep && let Some(count) = lengths.get_mut(&prefix.len()) {
                *count -= 1;
            }
            keep
        });
        lengths.retain(|_, count| *count > 0);
    }
}

/// The journal in memory, arranged for checks.
#[derive(Debug, Default)]
struct Index {
    floor: u64,
    sites: HashMap<Box<str>, SiteIndex>,
}

impl Index {
    fn add(&mut self, hasher: &RandomState, seq: u64, entry: &JournalEntry) {
        if entry.targets.is_empty() {
            return;
        }
        let site = match self.sites.get_mut(entry.site.as_str()) {
            Some(site) => site,
            None => self.sites.entry(entry.site.as_str().into()).or_default(),
        };
        for target in &entry.targets {
            match target {
                Target::Url(url) => site
                    .urls
                    .entry(hasher.hash_one(url.as_str()))
                    .or_default()
                    .note(seq, entry.mode),
                Target::Prefix(prefix) => {
                    if !site.prefixes.contains_key(prefix.as_str()) {
                        *site.prefix_lengths.entry(prefix.len()).or_default() += 1;
                    }
                    site.prefixes
                        .entry(prefix.as_str().into())
                        .or_default()
                        .note(seq, entry.mode);
                }
                Target::Tag(tag) => site
                    .tags
                    .entry(tag.as_str().into())
                    .or_default()
                    .note(seq, entry.mode),
                Target::Everything => site.everything.note(seq, entry.mode),
            }
        }
    }

    fn trim(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
        for site in self.sites.values_mut() {
            site.trim(self.floor);
        }
    }

    fn check(
        &self,
        hasher: &RandomState,
        site: &str,
        key: &CacheKey,
        tags: &[String],
        valid_as_of: u64,
    ) -> Verdict {
        if valid_as_of < self.floor {
            return Verdict::Gone;
        }
        let Some(index) = self.sites.get(site) else {
            return Verdict::Fresh;
        };
        let locator = key.locator();
        // A URL purge covers the URL's variants and slices (`{url}\n...`), as in memory.
        let url = locator.split_once('\n').map_or(locator, |(url, _)| url);
        let mut verdict = index.everything.verdict(valid_as_of);
        let mut worst = |newest: Option<&Newest>| {
            if let Some(newest) = newest {
                verdict = verdict.max(newest.verdict(valid_as_of));
            }
            verdict == Verdict::Gone
        };
        if worst(index.urls.get(&hasher.hash_one(url))) {
            return Verdict::Gone;
        }
        for &length in index.prefix_lengths.keys() {
            if length > locator.len() {
                break;
            }
            // A prefix ending inside a character of the locator is not one of its prefixes.
            let Some(prefix) = locator.get(..length) else {
                continue;
            };
            if worst(index.prefixes.get(prefix)) {
                return Verdict::Gone;
            }
        }
        for tag in tags {
            if worst(index.tags.get(tag.as_str())) {
                return Verdict::Gone;
            }
        }
        verdict
    }
}

/// What was applied but not yet committed, and what was last committed.
#[derive(Debug, Default)]
struct Pending {
    purges: Vec<(u64, JournalEntry)>,
    /// Generations as last committed.
    generations: HashMap<String, u64>,
}

/// A node's persisted purge state. Open one per state directory (redb locks the file).
#[derive(Debug)]
pub struct NodeState {
    path: PathBuf,
    db: Database,
    cap: usize,
    /// Hashes URL locators in the index (rebuilt on every open, so any seed will do).
    hasher: RandomState,
    index: RwLock<Index>,
    /// Serializes commits, and holds what they write next.
    pending: Mutex<Pending>,
    /// The committed watermark and journal length, for metrics and acknowledgements.
    watermark: AtomicU64,
    journal_len: AtomicU64,
    floor: AtomicU64,
    /// Whether a watermark was found on opening: the node resumes from it.
    resumed: bool,
    /// Whether a watermark is on disk (found on opening, or committed since).
    on_disk: std::sync::atomic::AtomicBool,
}

impl NodeState {
    /// Opens (or creates) the state in `dir`, creating the directory if needed, and loads
    /// the journal into memory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_capped(dir, JOURNAL_CAP)
    }

    /// As [`NodeState::open`], keeping at most `cap` purges in the journal.
    pub fn open_capped(dir: &Path, cap: usize) -> Result<Self, StateError> {
        let path = dir.join(FILE_NAME);
        let open_error = |source: redb::Error| StateError::Open {
            path: path.clone(),
            source: Box::new(source),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(redb::Error::Io(e)))?;
        let db = redb::Builder::new()
            // The format redb 3 and later read, so a later upgrade needs no migration.
            .create_with_file_format_v3(true)
            .create(&path)
            .map_err(|e| open_error(e.into()))?;
        let state = Self {
            path: path.clone(),
            db,
            cap: cap.max(1),
            hasher: RandomState::new(),
            index: RwLock::default(),
            pending: Mutex::default(),
            watermark: AtomicU64::new(0),
            journal_len: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            resumed: false,
            on_disk: std::sync::atomic::AtomicBool::new(false),
        };
        state.load().map_err(|f| match f {
            Failure::Storage(source) => StateError::Open { path, source },
            Failure::State(e) => e,
        })
    }

    /// Creates the tables if needed and reads everything into memory.
    fn load(mut self) -> Result<Self, Failure> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn.open_table(META)?;
            let format = meta.get(FORMAT_KEY)?.map(|g| g.value());
            match format {
                Some(FORMAT) => {}
                None => {
                    meta.insert(FORMAT_KEY, FORMAT)?;
                }
                Some(found) => {
                    return Err(Failure::State(StateError::Format {
                        path: self.path.clone(),
                        found,
                    }));
                }
            }
            let watermark = meta.get(WATERMARK_KEY)?.map(|g| g.value());
            let floor = meta.get(FLOOR_KEY)?.map_or(0, |g| g.value());
            self.resumed = watermark.is_some();
            self.on_disk.store(self.resumed, Ordering::Release);
            self.watermark
                .store(watermark.unwrap_or(0), Ordering::Release);
            self.floor.store(floor, Ordering::Release);
            let generations = txn.open_table(GENERATIONS)?;
            let mut pending = Pending::default();
            for row in generations.iter()? {
                let (site, generation) = row?;
                pending
                    .generations
                    .insert(site.value().to_owned(), generation.value());
            }
            self.pending = Mutex::new(pending);
            let journal = txn.open_table(JOURNAL)?;
            let mut index = Index {
                floor,
                ..Index::default()
            };
            for row in journal.iter()? {
                let (seq, bytes) = row?;
                let seq = seq.value();
                let entry: JournalEntry = serde_json::from_slice(bytes.value())
                    .map_err(|source| Failure::State(StateError::Corrupt { seq, source }))?;
                index.add(&self.hasher, seq, &entry);
            }
            self.journal_len.store(journal.len()?, Ordering::Release);
            self.index = RwLock::new(index);
        }
        txn.commit()?;
        tracing::info!(
            path = %self.path.display(),
            watermark = self.watermark(),
            floor = self.floor(),
            journal = self.journal_len(),
            resumed = self.resumed,
            "node state opened"
        );
        Ok(self)
    }

    /// The state's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the state held a watermark when it was opened: the node then resumes from
    /// it, as a node that keeps what it stored, rather than starting empty at the log's
    /// head.
    pub fn resumes(&self) -> bool {
        self.resumed
    }

    /// The watermark last committed: what the node may acknowledge.
    pub fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// Entries stored before it (`valid_as_of < floor`) are [`Verdict::Gone`].
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// Purges in the committed journal.
    pub fn journal_len(&self) -> u64 {
        self.journal_len.load(Ordering::Acquire)
    }

    /// The generation last committed for `site`.
    pub fn generation(&self, site: &str) -> Option<u64> {
        self.pending().generations.get(site).copied()
    }

    /// What the purges applied since `valid_as_of` (the watermark when the entry was
    /// stored) make of the entry of `site` under `key` carrying `tags`: the lazy side of
    /// what applying them did to memory. Called on every read of an entry that was not in
    /// memory when the purges were applied (a disk hit); check after the read completes,
    /// so a purge applied during the read is seen.
    pub fn check(&self, site: &str, key: &CacheKey, tags: &[String], valid_as_of: u64) -> Verdict {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .check(&self.hasher, site, key, tags, valid_as_of)
    }

    /// Notes an applied purge: checked at once, written by the next [`NodeState::commit`].
    pub fn record(&self, seq: u64, entry: JournalEntry) {
        self.index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&self.hasher, seq, &entry);
        self.pending().purges.push((seq, entry));
    }

    /// Writes the recorded purges, the watermark and the sites' generations in one
    /// transaction, trimming the journal when it is over its cap. On an error nothing is
    /// written and the purges stay pending.
    pub fn commit(&self, watermark: u64, generations: &[(&str, u64)]) -> Result<(), StateError> {
        let mut pending = self.pending();
        let changed_generations: Vec<(&str, u64)> = generations
            .iter()
            .copied()
            .filter(|(site, generation)| pending.generations.get(*site) != Some(generation))
            .collect();
        if pending.purges.is_empty()
            && changed_generations.is_empty()
            && self.on_disk.load(Ordering::Acquire)
            && watermark == self.watermark()
        {
            return Ok(());
        }
        let (len, floor) = self
            .write_batch(&pending.purges, watermark, &changed_generations)
            .map_err(|f| f.into_error("committing purges"))?;
        pending.purges.clear();
        for (site, generation) in changed_generations {
            pending.generations.insert(site.to_owned(), generation);
        }
        drop(pending);
        if floor > self.floor() {
            self.index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .trim(floor);
            self.floor.store(floor, Ordering::Release);
            tracing::debug!(floor, journal = len, "node state journal trimmed");
        }
        self.journal_len.store(len, Ordering::Release);
        self.watermark.store(watermark, Ordering::Release);
        self.on_disk.store(true, Ordering::Release);
        Ok(())
    }

    fn write_batch(
        &self,
        purges: &[(u64, JournalEntry)],
        watermark: u64,
        generations: &[(&str, u64)],
    ) -> Result<(u64, u64), Failure> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let result = {
            let mut journal = txn.open_table(JOURNAL)?;
            for (seq, entry) in purges {
                let bytes = serde_json::to_vec(entry)
                    .map_err(|source| Failure::State(StateError::Corrupt { seq: *seq, source }))?;
                journal.insert(*seq, bytes.as_slice())?;
            }
            let mut len = journal.len()?;
            let mut floor = self.floor();
            if len > self.cap as u64 {
                let keep = (self.cap - self.cap / 10).max(1) as u64;
                while len > keep {
                    let Some((seq, _)) = journal.pop_first()? else {
                        break;
                    };
                    floor = floor.max(seq.value());
                    len -= 1;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(WATERMARK_KEY, watermark)?;
            meta.insert(FLOOR_KEY, floor)?;
            let mut table = txn.open_table(GENERATIONS)?;
            for (site, generation) in generations {
                table.insert(*site, *generation)?;
            }
            (len, floor)
        };
        txn.commit()?;
        Ok(result)
    }

    /// Forgets every purge and starts over at `seq`: the journal emptied, floor and
    /// watermark set to `seq`, with the sites' `generations`, in one transaction. For a
    /// node that cannot know what it missed (a reset, which also bumped every generation)
    /// and for a fresh node taking the log's head.
    pub fn restart_at(&self, seq: u64, generations: &[(&str, u64)]) -> Result<(), StateError> {
        let mut pending = self.pending();
        let write = || -> Result<(), Failure> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            {
                txn.delete_table(JOURNAL)?;
                txn.open_table(JOURNAL)?;
                let mut meta = txn.open_table(META)?;
                meta.insert(WATERMARK_KEY, seq)?;
                meta.insert(FLOOR_KEY, seq)?;
                let mut table = txn.open_table(GENERATIONS)?;
                for (site, generation) in generations {
                    table.insert(*site, *generation)?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(|f| f.into_error("forgetting purges"))?;
        pending.purges.clear();
        for (site, generation) in generations {
            pending.generations.insert((*site).to_owned(), *generation);
        }
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Index {
            floor: seq,
            ..Index::default()
        };
        self.floor.store(seq, Ordering::Release);
        self.journal_len.store(0, Ordering::Release);
        self.watermark.store(seq, Ordering::Release);
        self.on_disk.store(true, Ordering::Release);
        Ok(())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the inner functions fail with: storage errors get their operation at the caller.
enum Failure {
    Storage(Box<redb::Error>),
    State(StateError),
}

impl Failure {
    fn into_error(self, op: &'static str) -> StateError {
        match self {
            Failure::Storage(source) => StateError::Storage { op, source },
            Failure::State(e) => e,
        }
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
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use crate::cache::freshness::{Exchange, Freshness};
    use crate::cache::store::{Entry, MemoryStore, Storage, StoredResponse};
    use crate::node::config::EdgeConfig;
    use crate::node::invalidation::Invalidation;
    use crate::node::site::SiteTable;
    use node_api::purge::{Purge, PurgeBatch, Selector, SequencedPurge};

    /// Two sites: `assets` (two hosts, sorted queries, `utm` dropped) and `other`.
    fn sites() -> SiteTable {
        let config = EdgeConfig::from_toml(
            r#"
            [[site]]
            name = "assets"
            hosts = ["a.example", "B.example"]
            upstream = "http://127.0.0.1:1"
            query = "sort"
            drop_params = ["utm"]
            [[site]]
            name = "other"
            hosts = ["o.example"]
            upstream = "http://127.0.0.1:2"
            "#,
        )
        .expect("config");
        SiteTable::new(&config.sites).expect("sites")
    }

    /// A node's purge state over a memory store and a state in `dir`.
    struct Node {
        sites: SiteTable,
        store: MemoryStore,
        invalidation: Invalidation,
    }

    impl Node {
        fn open(dir: &Path, cap: usize) -> Self {
            let state = NodeState::open_capped(dir, cap).expect("state");
            let sites = sites();
            for site in sites.sites() {
                if let Some(generation) = state.generation(&site.name) {
                    site.raise_generation(generation);
                }
            }
            let store = MemoryStore::new(64 << 20);
            store.set_purge_watermark(state.watermark());
            Self {
                sites,
                store,
                invalidation: Invalidation::new(Some(Arc::new(state))),
            }
        }

        fn state(&self) -> &NodeState {
            self.invalidation.state().expect("a state")
        }

        /// Applies `purge` as the next purge; returns its sequence number.
        fn purge(&self, site: &str, selector: Selector, mode: Mode) -> u64 {
            let seq = self.store.purge_watermark() + 1;
            let batch = PurgeBatch {
                purges: vec![SequencedPurge {
                    seq,
                    purge: Purge {
                        site: site.into(),
                        selector,
                        mode,
                    },
                }],
            };
            let applied = self
                .invalidation
                .apply_batch(&batch, &self.sites, &self.store)
                .expect("applied");
            assert_eq!(applied, seq);
            seq
        }

        fn check(&self, site: &str, key: &CacheKey, tags: &[&str], valid_as_of: u64) -> Verdict {
            let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
            self.state().check(site, key, &tags, valid_as_of)
        }

        fn generation(&self, site: &str) -> u64 {
            self.sites.by_name(site).expect("site").generation()
        }
    }

    fn key(locator: &str) -> CacheKey {
        CacheKey::from_locator(1, locator)
    }

    fn urls(urls: &[&str]) -> Selector {
        Selector::Urls(urls.iter().map(|u| (*u).to_owned()).collect())
    }

    #[test]
    fn url_purges_cover_the_normalized_url_its_variants_and_slices_only() {
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::open(dir.path(), JOURNAL_CAP);
        let seq = node.purge(
            "assets",
            urls(&["https://A.example/x?b=2&utm=1&a=1"]),
            Mode::Hard,
        );
        let purged = key("http://a.example/x?a=1&b=2");
        assert_eq!(node.check("assets", &purged, &[], 0), Verdict::Gone);
        assert_eq!(
            node.check("assets", &purged.variant(3, "gzip"), &[], 0),
            Verdict::Gone
        );
        assert_eq!(
            node.check("assets", &purged.slice(2), &[], 0),
            Verdict::Gone
        );
        for other in [
            "http://a.example/x?a=1&b=2&c=3",
            "http://a.example/x",
            "http://a.example/xy?a=1&b=2",
            "http://b.example/x?a=1&b=2",
        ] {
            assert_eq!(
                node.check("assets", &key(other), &[], 0),
                Verdict::Fresh,
                "{other}"
            );
        }
        assert_eq!(
            node.check("assets", &purged, &[], seq),
            Verdict::Fresh,
            "stored after the purge"
        );
        assert_eq!(
            node.check("other", &purged, &[], 0),
            Verdict::Fresh,
            "another site's purges"
        );
    }

    #[test]
    fn a_prefix_is_found_past_a_length_that_splits_a_character() {
        let dir = tempfile::tempdir().expect("dir");
        let state = NodeState::open(dir.path()).expect("state");
        // Keys are ASCII today (targets are percent-encoded), but the index must not
        // depend on it: the first prefix's length falls inside the locator's `é`.
        let split = "http://a.example/cafx".to_owned();
        let covering = "http://a.example/caf\u{e9}/".to_owned();
        let locator = "http://a.example/caf\u{e9}/menu";
        assert!(!locator.is_char_boundary(split.len()));
        state.record(
            1,
            JournalEntry {
                site: "assets".into(),
                mode: Mode::Hard,
                targets: vec![Target::Prefix(split), Target::Prefix(covering)],
            },
        );
        assert_eq!(state.check("assets", &key(locator), &[], 0), Verdict::Gone);
    }

    #[test]
    fn soft_purges_make_entries_stale_and_a_hard_one_wins() {
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::open(dir.path(), JOURNAL_CAP);
        let x = key("http://a.example/x");
        let soft = node.purge("assets", urls(&["http://a.example/x"]), Mode::Soft);
        assert_eq!(node.check("assets", &x, &[], soft - 1), Verdict::Stale);
        let hard = node.purge(
            "assets",
            Selector::Prefixes(vec!["http://a.example/".into()]),
            Mode::Hard,
        );
        assert_eq!(node.check("assets", &x, &[], soft - 1), Verdict::Gone);
        assert_eq!(
            node.check("assets", &x, &[], hard - 1),
            Verdict::Gone,
            "between the two: the hard one"
        );
        let again = node.purge("assets", urls(&["http://a.example/x"]), Mode::Soft);
        assert_eq!(node.check("assets", &x, &[], hard), Verdict::Stale);
        assert_eq!(node.check("assets", &x, &[], again), Verdict::Fresh);
    }

    #[test]
    fn prefix_host_tag_and_everything_purges_each_match_their_entries() {
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::open(dir.path(), JOURNAL_CAP);
        let img = key("http://a.example/img/logo.png");
        let css = key("http://a.example/css/site.css");
        let on_b = key("http://b.example/img/logo.png");
        let mut seq = node.purge(
            "assets",
            Selector::Prefixes(vec!["https://a.example/img/".into()]),
            Mode::Hard,
        );
        assert_eq!(node.check("assets", &img, &[], seq - 1), Verdict::Gone);
        assert_eq!(node.check("assets", &css, &[], seq - 1), Verdict::Fresh);
        assert_eq!(node.check("assets", &on_b, &[], seq - 1), Verdict::Fresh);

        seq = node.purge(
            "assets",
            Selector::Hosts(vec!["B.EXAMPLE".into()]),
            Mode::Soft,
        );
        assert_eq!(node.check("assets", &on_b, &[], seq - 1), Verdict::Stale);
        assert_eq!(node.check("assets", &css, &[], seq - 1), Verdict::Fresh);

        seq = node.purge("assets", Selector::Tags(vec!["blue".into()]), Mode::Hard);
        assert_eq!(
            node.check("assets", &css, &["red", "blue"], seq - 1),
            Verdict::Gone
        );
        assert_eq!(
            node.check("assets", &css, &["red"], seq - 1),
            Verdict::Fresh
        );
        assert_eq!(
            node.check("other", &key("http://o.example/"), &["blue"], seq - 1),
            Verdict::Fresh,
            "tags are per site"
        );

        // A target on another site's host is ignored, as in memory.
        seq = node.purge(
            "assets",
            Selector::Prefixes(vec!["http://o.example/".into()]),
            Mode::Hard,
        );
        assert_eq!(
            node.check("other", &key("http://o.example/a"), &[], seq - 1),
            Verdict::Fresh
        );

        let generation = node.generation("assets");
        seq = node.purge("assets", Selector::Everything, Mode::Soft);
        assert_eq!(node.check("assets", &css, &[], seq - 1), Verdict::Stale);
        assert_eq!(node.generation("assets"), generation, "soft: no bump");
        seq = node.purge("assets", Selector::Everything, Mode::Hard);
        assert_eq!(node.check("assets", &css, &[], seq - 1), Verdict::Gone);
        assert_eq!(node.generation("assets"), generation + 1, "hard: bumped");
        assert_eq!(
            node.check("other", &key("http://o.example/a"), &[], seq - 1),
            Verdict::Fresh
        );
        assert_eq!(node.state().watermark(), seq, "committed with the batch");
        assert_eq!(node.state().generation("assets"), Some(generation + 1));
    }

    /// What a purge does to a memory entry, and what `check` says of the same entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Kept,
        MarkedStale,
        Removed,
    }

    #[test]
    fn check_reports_exactly_what_the_same_purge_does_to_memory() {
        // Entries: (site, host, target, tags).
        let entries: &[(&str, &str, &str, &[&str])] = &[
            ("assets", "a.example", "/", &[]),
            ("assets", "a.example", "/x.js", &["js", "app"]),
            ("assets", "a.example", "/x.js?a=1&b=2", &["js"]),
            ("assets", "a.example", "/img/a.png", &["img"]),
            ("assets", "a.example", "/img/b.png", &["img", "app"]),
            ("assets", "a.example", "/imgs/c.png", &[]),
            ("assets", "b.example", "/x.js", &["js"]),
            ("assets", "b.example", "/img/a.png", &[]),
            ("other", "o.example", "/x.js", &["js"]),
            ("other", "o.example", "/img/a.png", &["img"]),
        ];
        let purges: Vec<(&str, Selector)> = vec![
            ("assets", urls(&["https://a.example/x.js"])),
            ("assets", urls(&["https://a.example/x.js?b=2&a=1&utm=x"])),
            (
                "assets",
                urls(&["https://a.example/nothing", "http://b.example/x.js"]),
            ),
            ("assets", urls(&["https://o.example/x.js"])),
            ("other", urls(&["https://o.example/x.js"])),
            (
                "assets",
                Selector::Prefixes(vec!["https://a.example/img".into()]),
            ),
            (
                "assets",
                Selector::Prefixes(vec!["https://a.example/img/".into()]),
            ),
            ("assets", Selector::Hosts(vec!["b.example".into()])),
            ("assets", Selector::Hosts(vec!["o.example".into()])),
            ("assets", Selector::Tags(vec!["js".into()])),
            ("assets", Selector::Tags(vec!["app".into(), "img".into()])),
            ("other", Selector::Tags(vec!["img".into()])),
            ("assets", Selector::Everything),
            ("other", Selector::Everything),
            ("nobody", Selector::Everything),
        ];
        for (site, selector) in purges {
            for mode in [Mode::Hard, Mode::Soft] {
                let dir = tempfile::tempdir().expect("dir");
                let node = Node::open(dir.path(), JOURNAL_CAP);
                let mut stored = Vec::new();
                for &(entry_site, host, target, tags) in entries {
                    let generation = node.generation(entry_site);
                    let key = CacheKey::new(generation, "http", host, target);
                    let response = Arc::new(StoredResponse::new(
                        StatusCode::OK,
                        HeaderMap::new(),
                        None,
                        Bytes::from_static(b"x"),
                        Freshness {
                            initial_age: 0,
                            lifetime: 600,
                            received: Exchange::now().received,
                            must_revalidate: false,
                            stale_while_revalidate: 0,
                            stale_if_error: 0,
                            shared_with_authorization: false,
                        },
                    ));
                    node.store
                        .insert(key.clone(), Entry::Response(response.clone()));
                    let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
                    node.invalidation
                        .register(entry_site, &key, &tags, &node.store);
                    stored.push((entry_site, key, tags, response));
                }
                let valid_as_of = node.store.purge_watermark();
                node.purge(site, selector.clone(), mode);
                for (entry_site, key, tags, response) in &stored {
                    // Memory: the entry as a request would now find it (under the site's
                    // generation, which an everything-hard purge raised).
                    let now = CacheKey::from_locator(node.generation(entry_site), key.locator());
                    let memory = match node.store.get(&now) {
                        None => Outcome::Removed,
                        Some(Entry::Response(found)) if Arc::ptr_eq(&found, response) => {
                            Outcome::Kept
                        }
                        Some(Entry::Response(found)) => {
                            assert!(!found.freshness.is_fresh(std::time::Instant::now()));
                            Outcome::MarkedStale
                        }
                        Some(other) => panic!("{other:?}"),
                    };
                    let verdict = node.state().check(entry_site, key, tags, valid_as_of);
                    let expected = match memory {
                        Outcome::Kept => Verdict::Fresh,
                        Outcome::MarkedStale => Verdict::Stale,
                        Outcome::Removed => Verdict::Gone,
                    };
                    assert_eq!(
                        verdict, expected,
                        "{site} {selector:?} {mode:?} on {entry_site} {key:?} {tags:?}: memory {memory:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn trimming_the_journal_raises_the_floor_below_which_entries_are_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::open(dir.path(), 10);
        let x = key("http://a.example/x");
        for n in 0..25 {
            node.purge(
                "assets",
                urls(&[&format!("http://a.example/{n}")]),
                Mode::Hard,
            );
        }
        let state = node.state();
        assert_eq!(state.watermark(), 25);
        assert!(state.journal_len() <= 10, "{}", state.journal_len());
        let floor = state.floor();
        assert!(
            floor > 0 && floor + state.journal_len() == 25,
            "floor {floor}"
        );
        assert_eq!(node.check("assets", &x, &[], floor - 1), Verdict::Gone);
        assert_eq!(node.check("assets", &x, &[], floor), Verdict::Fresh);
        // Purges above the floor are still known; the trimmed ones no longer matter.
        assert_eq!(
            node.check("assets", &key("http://a.example/24"), &[], floor),
            Verdict::Gone
        );
        drop(node);
        let reopened = Node::open(dir.path(), 10);
        assert_eq!(reopened.state().floor(), floor);
        assert_eq!(
            reopened.check("assets", &key("http://a.example/24"), &[], floor),
            Verdict::Gone
        );
        assert_eq!(reopened.check("assets", &x, &[], floor - 1), Verdict::Gone);
    }

    #[test]
    fn watermark_journal_and_bumped_generations_survive_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::open(dir.path(), JOURNAL_CAP);
        assert!(!node.state().resumes(), "a new state has no position");
        let soft = node.purge("assets", Selector::Tags(vec!["t".into()]), Mode::Soft);
        let everything = node.purge("other", Selector::Everything, Mode::Hard);
        assert_eq!(node.generation("other"), 2);
        drop(node);

        // The same config (generation 1) on the same state: the bump stays.
        let node = Node::open(dir.path(), JOURNAL_CAP);
        let state = node.state();
        assert!(state.resumes());
        assert_eq!(state.watermark(), everything);
        assert_eq!(node.store.purge_watermark(), everything);
        assert_eq!(state.journal_len(), 2);
        assert_eq!(node.generation("other"), 2);
        assert_eq!(node.generation("assets"), 1);
        let x = key("http://a.example/x");
        assert_eq!(node.check("assets", &x, &["t"], soft - 1), Verdict::Stale);
        assert_eq!(
            node.check("other", &key("http://o.example/"), &[], everything - 1),
            Verdict::Gone
        );
        // A config that raised the generation further wins over the persisted one.
        let site = node.sites.by_name("other").expect("other");
        site.raise_generation(1);
        assert_eq!(site.generation(), 2);
        site.raise_generation(5);
        assert_eq!(site.generation(), 5);
    }

    #[test]
    fn a_reset_forgets_the_journal_and_persists_the_floor_and_generations() {
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::open(dir.path(), JOURNAL_CAP);
        node.purge("assets", urls(&["http://a.example/x"]), Mode::Hard);
        node.invalidation
            .reset(&node.sites, &node.store, 40)
            .expect("reset");
        let state = node.state();
        assert_eq!(
            (state.watermark(), state.floor(), state.journal_len()),
            (40, 40, 0)
        );
        assert_eq!(
            node.check("assets", &key("http://a.example/y"), &[], 1),
            Verdict::Gone
        );
        assert_eq!(
            node.check("assets", &key("http://a.example/x"), &[], 40),
            Verdict::Fresh
        );
        drop(node);
        let node = Node::open(dir.path(), JOURNAL_CAP);
        assert_eq!((node.state().watermark(), node.state().floor()), (40, 40));
        assert_eq!(node.generation("assets"), 2);
        assert_eq!(node.generation("other"), 2);
        // A fresh node joining at a head: the floor rises, nothing else changes.
        node.invalidation
            .start_at(&node.sites, &node.store, 90)
            .expect("start");
        assert_eq!(node.state().floor(), 90);
        assert_eq!(node.generation("assets"), 2);
    }

    #[test]
    fn a_batch_with_a_gap_commits_what_came_before_it() {
        let dir = tempfile::tempdir().expect("dir");
        let node = Node::open(dir.path(), JOURNAL_CAP);
        let purge = |seq| SequencedPurge {
            seq,
            purge: Purge {
                site: "assets".into(),
                selector: Selector::Everything,
                mode: Mode::Soft,
            },
        };
        let batch = PurgeBatch {
            purges: vec![purge(1), purge(2), purge(4)],
        };
        let result = node
            .invalidation
            .apply_batch(&batch, &node.sites, &node.store);
        assert!(
            matches!(result, Err(crate::node::invalidation::ApplyError::Gap(gap)) if gap.applied == 2)
        );
        assert_eq!(node.state().watermark(), 2);
        assert_eq!(node.state().journal_len(), 2);
    }
}
