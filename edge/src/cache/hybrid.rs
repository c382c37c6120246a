//! The hybrid store: the memory tier ([`MemoryStore`], quick_cache) is the hot set, the disk
//! tier ([`DiskTier`], [`crate::cache::disk`]) holds what earned a place there.
//!
//! - **Reads**: [`Storage::get`] stays memory-only and synchronous (the hit fast path never
//!   touches the disk). On a memory miss the node's full path asks [`HybridStore::load`],
//!   checks the record against the purges applied since it was stored (the node's
//!   business: this layer knows nothing of purges), then promotes it into memory
//!   ([`HybridStore::promote`], keeping the disk copy) or streams a large body from disk.
//! - **Admission** (at an entry's first hit, at its eviction from memory for size, and at
//!   a clean stop's [`HybridStore::write_out`]): a response is
//!   written to disk when it was hit at least once in memory, or when the doorkeeper saw
//!   its key filled twice (a one-hit wonder is neither); a variant index always (it is
//!   small and its variants need it). Slices, partial objects and pass markers are never
//!   written. The listener only encodes the head and queues the record: the disk store's
//!   queue is bounded in bytes and a full queue is a reject, counted. An entry the disk
//!   already holds (promoted from it) is not written again.
//! - **Versions**: every [`Storage::insert`] and [`Storage::remove`] also drops the key
//!   from the disk index, so an older version cannot come back from disk while the
//!   process lives (a restart may bring it back: it is valid HTTP under its own freshness,
//!   and purges are checked on every read).
//!
//! Records ([`encode`], [`decode`]): key = the cache key's bytes (it names the site
//! generation, so a generation bump makes old records unreachable); meta = a versioned
//! encoding of the entry kind and head, with wall-clock times; body = the body.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};

use crate::cache::disk::{DiskError, DiskRecord, DiskTier, Rejected};
use crate::cache::freshness::{Freshness, delta_seconds};
use crate::cache::key::CacheKey;
use crate::cache::store::{
    Entry, EvictionListener, Held, MemoryStore, Storage, StoredResponse, Usage, Variants,
};
use crate::cache::vary::{Selection, VaryIndex};

/// Bodies up to this size are read whole from disk and promoted into memory; larger ones
/// are streamed frame by frame and stay on disk.
pub const MAX_INLINE: u64 = 1 << 20;

/// Keys the doorkeeper remembers before it starts over.
const DOORKEEPER_KEYS: usize = 64 * 1024;

/// The meta encoding's version: a record of another version is not misread (a miss).
const META_VERSION: u8 = 1;
const KIND_RESPONSE: u8 = 1;
const KIND_VARIANTS: u8 = 2;

/// Why an evicted entry was not written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionReject {
    /// Never hit in memory and not filled twice.
    OneHit,
    /// A kind the disk tier does not keep (slices, partial objects, pass markers).
    Kind,
    QueueFull,
    TooLarge,
    Closed,
}

impl AdmissionReject {
    pub const ALL: [AdmissionReject; 5] = [
        AdmissionReject::OneHit,
        AdmissionReject::Kind,
        AdmissionReject::QueueFull,
        AdmissionReject::TooLarge,
        AdmissionReject::Closed,
    ];

    /// For metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionReject::OneHit => "one_hit",
            AdmissionReject::Kind => "kind",
            AdmissionReject::QueueFull => Rejected::QueueFull.as_str(),
            AdmissionReject::TooLarge => Rejected::TooLarge.as_str(),
            AdmissionReject::Closed => Rejected::Closed.as_str(),
        }
    }
}

impl From<Rejected> for AdmissionReject {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::QueueFull => AdmissionReject::QueueFull,
            Rejected::TooLarge => AdmissionReject::TooLarge,
            Rejected::Closed => AdmissionReject::Closed,
        }
    }
}

/// Fills seen once and twice, by key hash; both forgotten when the first set is full, so
/// "twice" means twice within the last [`DOORKEEPER_KEYS`] distinct fills.
#[derive(Debug, Default)]
struct Doorkeeper {
    once: HashSet<u64>,
    twice: HashSet<u64>,
}

impl Doorkeeper {
    fn filled(&mut self, hash: u64) {
        if self.once.len() >= DOORKEEPER_KEYS {
            self.once.clear();
            self.twice.clear();
        }
        if !self.once.insert(hash) {
            self.twice.insert(hash);
        }
    }
}

/// What the eviction listener shares with the store.
#[derive(Debug)]
struct Admission {
    disk: Arc<dyn DiskTier>,
    doorkeeper: Mutex<Doorkeeper>,
    rejects: [AtomicU64; AdmissionReject::ALL.len()],
    admitted: AtomicU64,
}

impl Admission {
    fn reject(&self, why: AdmissionReject) {
        self.rejects[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn hash(key: &CacheKey) -> u64 {
        crate::cache::disk::format::key_hash(key.as_str().as_bytes())
    }

    /// An entry evicted from memory for size: written to disk if it earned it.
    fn evicted(&self, key: &CacheKey, held: &Held) {
        if let Err(why) = self.offer(key, held) {
            self.reject(why);
        }
    }

    /// Queues `held` for the disk if it earned a place there and the disk does not hold
    /// this version already: `Ok(true)` queued, `Ok(false)` on disk already.
    fn offer(&self, key: &CacheKey, held: &Held) -> Result<bool, AdmissionReject> {
        let admit = match &held.entry {
            Entry::Response(response) => {
                response.hits() > 0
                    || self
                        .doorkeeper
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .twice
                        .contains(&Self::hash(key))
            }
            Entry::Variants(_) => true,
            Entry::SliceIndex(_) | Entry::Slice(_) | Entry::Partial(_) | Entry::Pass(_) => {
                return Err(AdmissionReject::Kind);
            }
        };
        if !admit {
            return Err(AdmissionReject::OneHit);
        }
        let bytes = key.as_str().as_bytes();
        if self.disk.may_contain(bytes) {
            return Ok(false); // promoted from disk: the same version is there already
        }
        let (meta, body) = encode(&held.entry, held.valid_as_of).ok_or(AdmissionReject::Kind)?;
        self.disk.insert(bytes, meta, body)?;
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// Memory over disk (see the [module docs](self)).
#[derive(Debug)]
pub struct HybridStore {
    memory: MemoryStore,
    admission: Arc<Admission>,
}

/// A record read back from disk, decoded: its entry (a response's body is empty: it is
/// read from `record` when wanted) and the watermark it was valid as of.
#[derive(Debug)]
pub struct Loaded {
    pub entry: Entry,
    pub valid_as_of: u64,
    pub record: DiskRecord,
}

impl HybridStore {
    /// A memory tier of `capacity` bytes over `disk`.
    pub fn new(capacity: u64, disk: Arc<dyn DiskTier>) -> Self {
        let admission = Arc::new(Admission {
            disk,
            doorkeeper: Mutex::default(),
            rejects: Default::default(),
            admitted: AtomicU64::new(0),
        });
        let listener: EvictionListener = {
            let admission = Arc::clone(&admission);
            Arc::new(move |key: &CacheKey, held: &Held| admission.evicted(key, held))
        };
        Self {
            memory: MemoryStore::with_eviction(capacity, listener),
            admission,
        }
    }

    pub fn memory(&self) -> &MemoryStore {
        &self.memory
    }

    /// At a clean stop: writes to disk what memory holds that earned a place there (the
    /// rule of an eviction) and the disk does not hold yet, so that a restart finds the
    /// hot set too, not only what memory had evicted. Waits for the disk's queue when it
    /// is full; stops at `within`. Returns the entries written.
    pub async fn write_out(&self, within: Duration) -> u64 {
        let until = Instant::now() + within;
        let mut written = 0;
        for (key, held) in self.memory.entries() {
            if Instant::now() >= until {
                tracing::warn!(written, "memory tier not written out whole: out of time");
                break;
            }
            let mut offered = self.admission.offer(&key, &held);
            if offered == Err(AdmissionReject::QueueFull) {
                if self.admission.disk.flush().await.is_err() {
                    break;
                }
                offered = self.admission.offer(&key, &held);
            }
            if offered == Ok(true) {
                written += 1;
            }
        }
        written
    }

    pub fn disk(&self) -> &Arc<dyn DiskTier> {
        &self.admission.disk
    }

    /// Whether the disk may hold `key` (index only, no I/O).
    pub fn may_contain(&self, key: &CacheKey) -> bool {
        self.admission.disk.may_contain(key.as_str().as_bytes())
    }

    /// Opens and decodes the record of `key`. `Ok(None)`: a miss. A record whose meta does
    /// not decode is dropped and reported as [`DiskError::Corrupt`].
    pub async fn load(&self, key: &CacheKey) -> Result<Option<Loaded>, DiskError> {
        let bytes = key.as_str().as_bytes();
        let Some(record) = self.admission.disk.get(bytes).await? else {
            return Ok(None);
        };
        match decode(record.meta()) {
            Some((entry, valid_as_of)) => Ok(Some(Loaded {
                entry,
                valid_as_of,
                record,
            })),
            None => {
                self.admission.disk.remove(bytes);
                Err(DiskError::Corrupt("meta of another version"))
            }
        }
    }

    /// Puts an entry read from disk into memory, keeping the disk copy (an eviction then
    /// does not write it again).
    pub fn promote(&self, key: CacheKey, entry: Entry, valid_as_of: u64) {
        self.memory.insert_held(key, entry, valid_as_of);
    }

    /// Drops `key` from the disk index only (a record found purged).
    pub fn forget(&self, key: &CacheKey) {
        self.admission.disk.remove(key.as_str().as_bytes());
    }

    /// Evicted entries not written, by reason.
    pub fn rejects(&self) -> [(AdmissionReject, u64); AdmissionReject::ALL.len()] {
        AdmissionReject::ALL.map(|why| {
            (
                why,
                self.admission.rejects[why as usize].load(Ordering::Relaxed),
            )
        })
    }

    /// Evicted entries queued for the disk.
    pub fn admitted(&self) -> u64 {
        self.admission.admitted.load(Ordering::Relaxed)
    }
}

impl Storage for HybridStore {
    fn get(&self, key: &CacheKey) -> Option<Entry> {
        self.memory.get(key)
    }

    fn insert(&self, key: CacheKey, value: Entry) {
        if let Entry::Response(_) = &value {
            self.admission
                .doorkeeper
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .filled(Admission::hash(&key));
        }
        // A new version: the disk's older one must not come back once this is evicted.
        self.admission.disk.remove(key.as_str().as_bytes());
        self.memory.insert(key, value);
    }

    fn remove(&self, key: &CacheKey) {
        self.admission.disk.remove(key.as_str().as_bytes());
        self.memory.remove(key);
    }

    fn usage(&self) -> Usage {
        self.memory.usage()
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<CacheKey> {
        self.memory.keys_with_prefix(prefix)
    }

    fn hottest(&self, limit: usize) -> Vec<(CacheKey, u64)> {
        self.memory.hottest(limit)
    }

    fn purge_watermark(&self) -> u64 {
        self.memory.purge_watermark()
    }

    fn set_purge_watermark(&self, seq: u64) {
        self.memory.set_purge_watermark(seq);
    }

    fn first_hit(&self, key: &CacheKey) {
        // A variant is found on disk only through its index: the index goes too.
        let index = key.primary_of_variant();
        for key in index.iter().chain([key]) {
            if let Some(held) = self.memory.get_held(key)
                && let Err(why @ AdmissionReject::QueueFull) = self.admission.offer(key, &held)
            {
                // Evicted later, it is offered again.
                self.admission.reject(why);
            }
        }
    }

    fn hybrid(&self) -> Option<&HybridStore> {
        Some(self)
    }
}

/// An entry as a disk record's meta and body; `None` for kinds the disk does not keep.
pub fn encode(entry: &Entry, valid_as_of: u64) -> Option<(Bytes, Bytes)> {
    let mut meta = Writer(BytesMut::with_capacity(512));
    meta.u8(META_VERSION);
    match entry {
        Entry::Response(response) => {
            meta.u8(KIND_RESPONSE);
            meta.u64(valid_as_of);
            meta.freshness(&response.freshness);
            meta.u16(response.status.as_u16());
            meta.bytes(response.head());
            meta.u32(response.cache_only().len() as u32);
            for (name, value) in response.cache_only() {
                meta.bytes(name.as_str().as_bytes());
                meta.bytes(value.as_bytes());
            }
            match response.upstream_cache_status() {
                Some(value) => {
                    meta.u8(1);
                    meta.bytes(value.as_bytes());
                }
                None => meta.u8(0),
            }
            match response.selected_by() {
                Some(selection) => {
                    meta.u8(1);
                    meta.index(&selection.index);
                    meta.bytes(selection.signature.as_bytes());
                }
                None => meta.u8(0),
            }
            meta.u32(response.tags().len() as u32);
            for tag in response.tags() {
                meta.bytes(tag.as_bytes());
            }
            Some((meta.0.freeze(), response.body_bytes()))
        }
        Entry::Variants(variants) => {
            meta.u8(KIND_VARIANTS);
            meta.u64(valid_as_of);
            meta.freshness(&variants.freshness);
            meta.index(&variants.index);
            Some((meta.0.freeze(), Bytes::new()))
        }
        Entry::SliceIndex(_) | Entry::Slice(_) | Entry::Partial(_) | Entry::Pass(_) => None,
    }
}

/// A record's meta as an entry (a response with an empty body) and the watermark it was
/// valid as of; `None` when it is not a meta this version writes.
pub fn decode(meta: &[u8]) -> Option<(Entry, u64)> {
    let mut r = Reader(meta);
    if r.u8()? != META_VERSION {
        return None;
    }
    let kind = r.u8()?;
    let valid_as_of = r.u64()?;
    let freshness = r.freshness()?;
    let entry = match kind {
        KIND_RESPONSE => {
            let status = StatusCode::from_u16(r.u16()?).ok()?;
            let head = r.bytes()?;
            let mut cache_only = Vec::new();
            for _ in 0..r.u32()? {
                let name = HeaderName::from_bytes(r.bytes()?).ok()?;
                let value = HeaderValue::from_bytes(r.bytes()?).ok()?;
                cache_only.push((name, value));
            }
            let upstream = match r.u8()? {
                0 => None,
                _ => Some(HeaderValue::from_bytes(r.bytes()?).ok()?),
            };
            let selected_by = match r.u8()? {
                0 => None,
                _ => {
                    let index = r.index()?;
                    let signature = std::str::from_utf8(r.bytes()?).ok()?.into();
                    Some(Selection { index, signature })
                }
            };
            let mut tags = Vec::new();
            for _ in 0..r.u32()? {
                tags.push(std::str::from_utf8(r.bytes()?).ok()?.to_owned());
            }
            Entry::Response(Arc::new(StoredResponse::from_parts(
                status,
                head,
                cache_only,
                upstream,
                Bytes::new(),
                freshness,
                selected_by,
                tags,
            )))
        }
        KIND_VARIANTS => Entry::Variants(Arc::new(Variants {
            index: r.index()?,
            freshness,
        })),
        _ => return None,
    };
    r.0.is_empty().then_some((entry, valid_as_of))
}

/// `received` as milliseconds since the Unix epoch, by the wall clock now.
fn to_unix_ms(received: Instant) -> u64 {
    let ago = Instant::now().saturating_duration_since(received);
    let at = SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH);
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `initial_age` and `received` for a response received at `unix_ms` by the wall clock:
/// a time in the future (a clock set back) counts as now; a time too far back for an
/// `Instant` is folded into the initial age.
fn from_unix_ms(unix_ms: u64, initial_age: u64) -> (u64, Instant) {
    let now = Instant::now();
    let received = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let ago = SystemTime::now()
        .duration_since(received)
        .unwrap_or(Duration::ZERO);
    match now.checked_sub(ago) {
        Some(at) => (initial_age, at),
        None => (initial_age.saturating_add(ago.as_secs()), now),
    }
}

struct Writer(BytesMut);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.extend_from_slice(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn freshness(&mut self, f: &Freshness) {
        self.u64(to_unix_ms(f.received));
        self.u64(f.initial_age.into());
        self.u64(f.lifetime.into());
        self.u64(f.stale_while_revalidate.into());
        self.u64(f.stale_if_error.into());
        self.u8(u8::from(f.must_revalidate) | (u8::from(f.shared_with_authorization) << 1));
    }
    fn index(&mut self, index: &VaryIndex) {
        self.u64(index.epoch);
        self.u32(index.names.len() as u32);
        for name in index.names.iter() {
            self.bytes(name.as_str().as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn freshness(&mut self) -> Option<Freshness> {
        let unix_ms = self.u64()?;
        let (initial_age, received) = from_unix_ms(unix_ms, self.u64()?);
        let initial_age = delta_seconds(initial_age);
        let lifetime = delta_seconds(self.u64()?);
        let stale_while_revalidate = delta_seconds(self.u64()?);
        let stale_if_error = delta_seconds(self.u64()?);
        let flags = self.u8()?;
        Some(Freshness {
            initial_age,
            lifetime,
            received,
            must_revalidate: flags & 1 != 0,
            stale_while_revalidate,
            stale_if_error,
            shared_with_authorization: flags & 2 != 0,
        })
    }
    fn index(&mut self) -> Option<VaryIndex> {
        let epoch = self.u64()?;
        let mut names = Vec::new();
        for _ in 0..self.u32()? {
            names.push(HeaderName::from_bytes(self.bytes()?).ok()?);
        }
        VaryIndex::note_epoch(epoch);
        Some(VaryIndex {
            names: names.into(),
            epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::{DiskConfig, DiskStore};
    use http::HeaderMap;

    fn freshness(received: Instant) -> Freshness {
        Freshness {
            initial_age: 5,
            lifetime: 60,
            received,
            must_revalidate: true,
            stale_while_revalidate: 7,
            stale_if_error: 9,
            shared_with_authorization: true,
        }
    }

    fn response(body: &'static [u8]) -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("cdn-cache-control", HeaderValue::from_static("max-age=60"));
        StoredResponse::new(
            StatusCode::OK,
            headers,
            Some(HeaderValue::from_static("shield; hit")),
            Bytes::from_static(body),
            freshness(Instant::now() - Duration::from_secs(10)),
        )
        .with_tags(vec!["a".into(), "b c".into()])
        .selected_as(Some(Selection {
            index: VaryIndex {
                names: vec![HeaderName::from_static("accept-encoding")].into(),
                epoch: 42,
            },
            signature: "gzip".into(),
        }))
    }

    #[test]
    fn a_response_round_trips_with_its_head_tags_variant_and_age() {
        let original = response(b"hello");
        let entry = Entry::Response(Arc::new(original));
        let (meta, body) = encode(&entry, 17).unwrap();
        assert_eq!(&body[..], b"hello");
        let (decoded, valid_as_of) = decode(&meta).unwrap();
        assert_eq!(valid_as_of, 17);
        let (Entry::Response(original), Entry::Response(decoded)) = (entry, decoded) else {
            panic!("a response decodes as a response");
        };
        assert_eq!(decoded.status, original.status);
        assert_eq!(decoded.head(), original.head());
        assert_eq!(decoded.headers(), original.headers());
        assert_eq!(
            decoded.upstream_cache_status(),
            original.upstream_cache_status()
        );
        assert_eq!(decoded.selected_by(), original.selected_by());
        assert_eq!(decoded.tags(), original.tags());
        assert!(decoded.body().is_empty(), "the body is the record's");
        let (a, b) = (decoded.freshness, original.freshness);
        assert_eq!(
            (
                a.lifetime,
                a.initial_age,
                a.must_revalidate,
                a.shared_with_authorization
            ),
            (
                b.lifetime,
                b.initial_age,
                b.must_revalidate,
                b.shared_with_authorization
            )
        );
        assert_eq!((a.stale_while_revalidate, a.stale_if_error), (7, 9));
        let now = Instant::now();
        assert!(
            a.age(now).abs_diff(b.age(now)) <= 1,
            "{} vs {}",
            a.age(now),
            b.age(now)
        );
    }

    #[test]
    fn a_variant_index_round_trips() {
        let entry = Entry::Variants(Arc::new(Variants {
            index: VaryIndex {
                names: vec![HeaderName::from_static("accept")].into(),
                epoch: 9,
            },
            freshness: freshness(Instant::now()),
        }));
        let (meta, body) = encode(&entry, 3).unwrap();
        assert!(body.is_empty());
        let (Entry::Variants(v), 3) = decode(&meta).unwrap() else {
            panic!("a variant index decodes as one");
        };
        assert_eq!(v.index.epoch, 9);
        assert_eq!(&v.index.names[..], &[HeaderName::from_static("accept")]);
    }

    #[test]
    fn markers_are_not_encoded_and_other_versions_not_decoded() {
        let marker = Entry::pass_marker(
            crate::cache::status::NoCacheReason::NoStore,
            freshness(Instant::now()),
        );
        assert!(encode(&marker, 0).is_none());
        let (meta, _) = encode(&Entry::Response(Arc::new(response(b"x"))), 0).unwrap();
        let mut other = meta.to_vec();
        other[0] = META_VERSION + 1;
        assert!(decode(&other).is_none());
        assert!(decode(&meta[..meta.len() - 1]).is_none(), "truncated");
    }

    #[test]
    fn wall_clock_times_convert_and_a_future_one_clamps_to_now() {
        let ten_ago = Instant::now() - Duration::from_secs(10);
        let ms = to_unix_ms(ten_ago);
        let (age, received) = from_unix_ms(ms, 0);
        assert_eq!(age, 0);
        let elapsed = received.elapsed().as_secs_f64();
        assert!((9.0..11.0).contains(&elapsed), "{elapsed}");

        let future = to_unix_ms(Instant::now()) + 3_600_000;
        let (age, received) = from_unix_ms(future, 4);
        assert_eq!(age, 4);
        assert!(
            received.elapsed() < Duration::from_secs(1),
            "clamped to now"
        );

        // Long ago (folded into the initial age where an Instant cannot go that far back).
        let (age, received) = from_unix_ms(0, 1);
        let age = age + received.elapsed().as_secs();
        assert!(age > 1_000_000_000, "{age}");
    }

    async fn hybrid(memory: u64) -> (tempfile::TempDir, Arc<DiskStore>, HybridStore) {
        let dir = tempfile::tempdir().unwrap();
        let config = DiskConfig::new(dir.path(), bytesize::ByteSize::mib(2));
        let mut config = config;
        config.segment_size = bytesize::ByteSize::mib(1);
        config.write_buffer = bytesize::ByteSize::kib(64);
        config.max_queue = bytesize::ByteSize::mib(1);
        let disk = Arc::new(DiskStore::open(&config).await.unwrap());
        let store = HybridStore::new(memory, disk.clone());
        (dir, disk, store)
    }

    fn key(i: usize) -> CacheKey {
        CacheKey::new(1, "http", "h", &format!("/{i}"))
    }

    fn body_entry() -> Entry {
        Entry::Response(Arc::new(response(&[7u8; 4096])))
    }

    /// What memory holds and earned a place on disk (filled twice here: never hit, so not
    /// written at a first hit) is written out at a clean stop; a one-hit wonder is not.
    #[tokio::test]
    async fn write_out_writes_what_earned_it_and_is_not_on_disk_yet() {
        let (_dir, disk, store) = hybrid(1 << 20).await;
        store.insert(key(1), body_entry());
        store.insert(key(1), body_entry());
        store.insert(key(2), body_entry());
        assert!(
            !store.may_contain(&key(1)),
            "nothing evicted, nothing written"
        );
        assert_eq!(store.write_out(Duration::from_secs(10)).await, 1);
        disk.flush().await.unwrap();
        assert!(store.may_contain(&key(1)), "filled twice: written out");
        assert!(!store.may_contain(&key(2)), "a one-hit wonder is not");
        assert_eq!(
            store.write_out(Duration::from_secs(10)).await,
            0,
            "on disk already"
        );
    }

    /// A version replaced in memory is not written to disk as if it had been evicted: an
    /// older version must never come back from disk.
    #[tokio::test]
    async fn a_replaced_version_is_not_written() {
        let (_dir, disk, store) = hybrid(1 << 20).await;
        store.insert(key(1), body_entry());
        let Some(Entry::Response(old)) = store.get(&key(1)) else {
            panic!("stored");
        };
        old.record_hit();
        store.insert(key(1), body_entry());
        disk.flush().await.unwrap();
        assert!(
            !store.may_contain(&key(1)),
            "the old version is not on disk"
        );
    }

    #[tokio::test]
    async fn a_variant_s_first_hit_writes_its_index_too() {
        let (_dir, disk, store) = hybrid(1 << 20).await;
        let index = VaryIndex {
            names: vec![HeaderName::from_static("accept-language")].into(),
            epoch: 3,
        };
        let variant = key(1).variant(index.epoch, "fr");
        assert_eq!(variant.primary_of_variant(), Some(key(1)));
        assert_eq!(key(1).primary_of_variant(), None);
        store.insert(
            key(1),
            Entry::Variants(Arc::new(Variants {
                index,
                freshness: freshness(Instant::now()),
            })),
        );
        store.insert(variant.clone(), body_entry());
        let Some(Entry::Response(response)) = store.get(&variant) else {
            panic!("stored");
        };
        assert!(response.record_hit());
        store.first_hit(&variant);
        disk.flush().await.unwrap();
        assert!(store.may_contain(&variant), "the variant");
        assert!(store.may_contain(&key(1)), "and its index");
    }

    #[tokio::test]
    async fn a_first_hit_writes_the_entry_to_disk() {
        let (_dir, disk, store) = hybrid(1 << 20).await;
        store.insert(key(1), body_entry());
        let Some(Entry::Response(response)) = store.get(&key(1)) else {
            panic!("stored");
        };
        assert!(response.record_hit(), "the first hit");
        store.first_hit(&key(1));
        assert!(!response.record_hit(), "not the first any more");
        disk.flush().await.unwrap();
        assert!(store.may_contain(&key(1)));
    }

    #[tokio::test]
    async fn only_entries_that_earned_it_go_to_disk_once() {
        let (_dir, disk, store) = hybrid(64 * 1024).await;
        // Hit once: admitted when evicted.
        store.insert(key(0), body_entry());
        let Some(Entry::Response(hot)) = store.get(&key(0)) else {
            panic!("stored");
        };
        hot.record_hit();
        // Filled twice: admitted too.
        store.insert(key(1), body_entry());
        store.insert(key(1), body_entry());
        // A one-hit wonder and a marker: never.
        store.insert(key(2), body_entry());
        let marker = Entry::pass_marker(
            crate::cache::status::NoCacheReason::NoStore,
            freshness(Instant::now()),
        );
        store.insert(key(3), marker);
        // Pressure that displaces the earlier entries: keys filled twice (the second fill
        // finds the first in the memory tier's ghost list and goes to its main queue).
        for i in 10..60 {
            store.insert(key(i), body_entry());
            store.insert(key(i), body_entry());
        }
        disk.flush().await.unwrap();
        assert!(store.may_contain(&key(0)), "a hit entry is written");
        assert!(
            store.may_contain(&key(1)),
            "an entry filled twice is written"
        );
        assert!(!store.may_contain(&key(2)), "a one-hit wonder is not");
        assert!(!store.may_contain(&key(3)), "a marker is not");
        let rejects = store.rejects();
        assert!(
            rejects[AdmissionReject::OneHit as usize].1 > 0,
            "{rejects:?}"
        );
        assert!(rejects[AdmissionReject::Kind as usize].1 > 0, "{rejects:?}");

        // Read back and promoted: evicted again, it is not written again.
        let loaded = store.load(&key(0)).await.unwrap().unwrap();
        let mut body = loaded.record.body();
        assert_eq!(body.next_frame().await.unwrap().unwrap().len(), 4096);
        let Entry::Response(head) = &loaded.entry else {
            panic!("a response");
        };
        let promoted = Arc::new(head.with_body(Bytes::from(vec![7u8; 4096])));
        promoted.record_hit();
        store.promote(key(0), Entry::Response(promoted), loaded.valid_as_of);
        // Everything else that earned it on disk too: only key 0 could be written below.
        store.write_out(Duration::from_secs(10)).await;
        disk.flush().await.unwrap();
        let writes = disk.counters().writes;
        for i in 60..120 {
            store.insert(key(i), body_entry());
            store.usage();
        }
        disk.flush().await.unwrap();
        assert!(store.get(&key(0)).is_none(), "evicted again");
        assert!(store.may_contain(&key(0)));
        assert!(
            disk.counters().writes == writes,
            "a promoted entry is not rewritten"
        );

        // A new version or a removal drops the disk's copy.
        store.insert(key(1), body_entry());
        assert!(!store.may_contain(&key(1)), "a new version drops the old");
        store.remove(&key(0));
        assert!(!store.may_contain(&key(0)), "a removal drops it");
    }
}
