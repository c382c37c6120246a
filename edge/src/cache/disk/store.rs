//! [`DiskStore`]: the log-structured store. One writer thread appends records; readers
//! read from the page cache on their own thread, or on tokio's blocking threads when the
//! bytes must come from the device ([`super::read`]).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc,
};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::format::{
    self, ALIGN, CRC, FOOTER_ENTRY, FRAME, Location, RecordHeader, RecordKind, SegmentHeader,
    Trailer, seeded_crc,
};
use super::index::Index;
use super::read::{self, Wait};
use super::recover::{self, Recovered};
use super::{
    DiskConfig, DiskCounters, DiskError, DiskTier, DiskUsage, RecoveryReport, Rejected,
    WriteObserver, clip,
};

/// Bytes read when a record is opened: its header, key and meta, and for small objects the
/// whole body, in one read.
const HEAD_READ: u64 = 8 * 1024;

/// The log-structured disk store (see the [module docs](super)).
pub struct DiskStore {
    shared: Arc<Shared>,
    /// To the writer thread; `None` once closed.
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.shared.dir)
            .field("usage", &self.usage())
            .finish()
    }
}

/// What the store's handles, the writer and open records share.
struct Shared {
    dir: PathBuf,
    segment_size: u64,
    write_buffer: usize,
    max_queue: u64,
    max_record: u64,
    slots: Box<[Slot]>,
    index: RwLock<Index>,
    /// Records accepted and not yet indexed, by key hash: read from memory meanwhile.
    in_flight: Mutex<HashMap<u64, Arc<Pending>>>,
    queued: AtomicU64,
    disk_bytes: AtomicU64,
    counters: Counters,
    recovery: RecoveryReport,
    hash: fn(&[u8]) -> u64,
    write_observer: OnceLock<WriteObserver>,
    /// The directory's lock file, held (`flock`) while the store lives.
    lock: File,
}

/// Takes the directory's lock, creating the directory if need be: one store per directory,
/// whether the other is in another process or in this one.
fn lock_dir(dir: &std::path::Path) -> Result<File, DiskError> {
    use rustix::fs::{FlockOperation, flock};
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(DiskError::InUse(dir.to_owned())),
        Err(errno) => Err(io::Error::from(errno).into()),
    }
}

/// One segment file and the generation of the segment it holds (0: none). The writer bumps
/// the generation before it reuses the file, so a reader can tell a record it opened from
/// whatever the file holds now.
struct Slot {
    file: OnceLock<File>,
    generation: AtomicU64,
}

/// A record waiting for the writer.
#[derive(Debug)]
struct Pending {
    key: Bytes,
    meta: Bytes,
    body: Bytes,
    /// Its aligned size on disk, counted in the queue.
    cost: u64,
}

enum Command {
    Insert(u64, Arc<Pending>),
    /// Write out the buffer and index what it held.
    Flush(oneshot::Sender<io::Result<()>>),
    Clear(oneshot::Sender<io::Result<()>>),
    /// Write out the buffer, sync the open segment and stop.
    Close(oneshot::Sender<io::Result<()>>),
    /// Stop at once, losing the buffer: what a crash does (tests).
    #[cfg(test)]
    Abandon,
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    write_bytes: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    corrupt_records: AtomicU64,
    rejected_queue_full: AtomicU64,
    rejected_too_large: AtomicU64,
    reclaimed_segments: AtomicU64,
    write_errors: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn generation(&self, slot: u32) -> u64 {
        self.slots[slot as usize].generation.load(Ordering::Acquire)
    }

    /// Counts a record that failed a check and unindexes it (unless the key was written
    /// again since).
    fn corrupt(&self, hash: u64, location: Location, what: &'static str) -> DiskError {
        bump(&self.counters.corrupt_records, 1);
        self.write_index().remove_if_at(hash, location);
        tracing::warn!(
            slot = location.slot,
            offset = location.offset,
            what,
            "corrupt disk record"
        );
        DiskError::Corrupt(what)
    }

    /// Opens the record at `location` if it is `key`'s: reads and checks its head.
    fn open_record(
        self: &Arc<Self>,
        hash: u64,
        location: Location,
        key: &[u8],
        wait: Wait,
    ) -> Result<Option<DiskRecord>, DiskError> {
        let Some(slot) = self.slots.get(location.slot as usize) else {
            return Err(self.corrupt(hash, location, "location"));
        };
        let (Some(file), generation) = (slot.file.get(), self.generation(location.slot)) else {
            return Ok(None);
        };
        let mut first = read::buffer(location.len.min(HEAD_READ) as usize);
        read::exact_at(file, &mut first, location.offset, wait)?;
        let reclaimed = || self.generation(location.slot) != generation;
        let header = match RecordHeader::decode(&first) {
            Ok(header) => header,
            Err(_) if reclaimed() => return Ok(None),
            Err(_) => return Err(self.corrupt(hash, location, "header")),
        };
        if header.generation != generation {
            // The file was reused since the index entry was made: not this record.
            return Ok(None);
        }
        if header.aligned_len() != location.len {
            return Err(self.corrupt(hash, location, "length"));
        }
        let head_len = header.body_offset() as usize;
        if head_len > first.len() {
            let more = first.len();
            first.resize(head_len, 0);
            read::exact_at(
                file,
                &mut first[more..],
                location.offset + more as u64,
                wait,
            )?;
        }
        let first = Bytes::from(first);
        let key_and_meta = &first[format::RECORD_HEADER..head_len - CRC];
        if seeded_crc(header.seq, &[key_and_meta]).to_le_bytes() != first[head_len - CRC..head_len]
        {
            return Err(if reclaimed() {
                DiskError::Reclaimed
            } else {
                self.corrupt(hash, location, "key or meta")
            });
        }
        let key_len = usize::from(header.key_len);
        if &key_and_meta[..key_len] != key {
            // Another key with the same hash replaced this one in the index.
            return Ok(None);
        }
        let meta_start = format::RECORD_HEADER + key_len;
        bump(&self.counters.reads, 1);
        Ok(Some(DiskRecord {
            meta: first.slice(meta_start..head_len - CRC),
            body_len: header.body_len,
            source: Source::Disk(Arc::new(OnDisk {
                shared: Arc::clone(self),
                hash,
                location,
                generation,
                header,
                first,
            })),
        }))
    }
}

impl DiskStore {
    /// Opens (or creates) the store `config` describes: checks the config, recovers the
    /// index from the segment files, starts the writer. Recovery runs on a blocking thread;
    /// [`DiskTier::recovery`] says what it found.
    pub async fn open(config: &DiskConfig) -> Result<Self, DiskError> {
        Self::open_with_hash(config, format::key_hash).await
    }

    async fn open_with_hash(
        config: &DiskConfig,
        hash: fn(&[u8]) -> u64,
    ) -> Result<Self, DiskError> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let dir = config.path.clone();
        let lock = lock_dir(&dir)?;
        let segment_size = config.segment_size.as_u64();
        let slots = u32::try_from(config.segments()).expect("validated: at most 2^20 segments");
        let started = Instant::now();
        let recovered = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || recover::recover(&dir, segment_size, slots, hash)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        let mut report = recovered.report;
        report.duration = started.elapsed();
        tracing::info!(
            objects = report.objects,
            bytes = report.bytes,
            sealed = report.sealed_segments,
            scanned = report.scanned_segments,
            torn = report.torn_records,
            seconds = report.duration.as_secs_f64(),
            "disk tier recovered"
        );
        let Recovered {
            files,
            generations,
            used,
            full,
            free,
            open,
            index,
            next_generation,
            next_seq,
            ..
        } = recovered;
        let slots: Box<[Slot]> = files
            .into_iter()
            .zip(&generations)
            .map(|(file, &generation)| Slot {
                file: file.map(OnceLock::from).unwrap_or_default(),
                generation: AtomicU64::new(generation),
            })
            .collect();
        let shared = Arc::new(Shared {
            dir,
            segment_size,
            write_buffer: config.write_buffer.as_u64() as usize,
            max_queue: config.max_queue.as_u64(),
            max_record: config.max_record(),
            slots,
            index: RwLock::new(index),
            in_flight: Mutex::default(),
            queued: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(used.iter().sum()),
            counters: Counters::default(),
            recovery: report,
            hash,
            write_observer: OnceLock::new(),
            lock,
        });
        let writer = Writer {
            active: open.map(|open| Active {
                slot: open.slot,
                generation: open.generation,
                buf_start: open.end,
                end: open.end,
                footer: open.footer,
                max_seq: open.max_seq,
            }),
            full: full.into(),
            free,
            used,
            next_generation,
            next_seq,
            buf: Vec::with_capacity(shared.write_buffer + FRAME as usize + 64),
            done: Vec::new(),
            shared: Arc::clone(&shared),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            shared,
            commands: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
        })
    }

    /// Bytes of RAM the index holds.
    pub fn index_bytes(&self) -> u64 {
        self.shared.read_index().bytes() as u64
    }

    /// A clean stop: writes out what is queued, syncs the open segment, stops the writer
    /// and lets go of the directory, which another store may then open (a restart, or the
    /// process taking over), recovering everything written.
    pub async fn close(&self) -> Result<(), DiskError> {
        let result = self.ask(Command::Close).await;
        lock(&self.commands).take();
        self.join().await;
        self.unlock_dir();
        result
    }

    /// Lets go of the directory's lock once the writer has stopped; reads of records
    /// already opened still work.
    fn unlock_dir(&self) {
        if let Err(error) = rustix::fs::flock(&self.shared.lock, rustix::fs::FlockOperation::Unlock)
        {
            tracing::warn!(%error, dir = %self.shared.dir.display(), "cannot unlock the disk tier directory");
        }
    }

    async fn join(&self) {
        let thread = lock(&self.writer).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Stops the writer at once, losing its buffer, syncing nothing: what `kill -9` leaves.
    #[cfg(test)]
    async fn crash(&self) {
        if let Some(tx) = lock(&self.commands).take() {
            let _ = tx.send(Command::Abandon);
        }
        self.join().await;
        // The kernel lets go of a killed process's locks.
        self.unlock_dir();
    }

    async fn ask(
        &self,
        command: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Command,
    ) -> Result<(), DiskError> {
        let (tx, rx) = oneshot::channel();
        let sent = lock(&self.commands)
            .as_ref()
            .is_some_and(|commands| commands.send(command(tx)).is_ok());
        if !sent {
            return Err(DiskError::Closed);
        }
        rx.await
            .map_err(|_| DiskError::Closed)?
            .map_err(DiskError::Io)
    }

    /// See [`DiskTier::get`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<DiskRecord>, DiskError> {
        let hash = (self.shared.hash)(key);
        let pending = lock(&self.shared.in_flight).get(&hash).cloned();
        if let Some(pending) = pending {
            if pending.key != key {
                return Ok(None);
            }
            bump(&self.shared.counters.reads, 1);
            return Ok(Some(DiskRecord::from_memory(
                pending.meta.clone(),
                pending.body.clone(),
                Some(Arc::clone(&self.shared)),
            )));
        }
        let Some(location) = self.shared.read_index().get(hash) else {
            return Ok(None);
        };
        let shared = Arc::clone(&self.shared);
        let key = key.to_vec();
        read::off_runtime(move |wait| shared.open_record(hash, location, &key, wait)).await
    }
}

impl DiskTier for DiskStore {
    fn may_contain(&self, key: &[u8]) -> bool {
        let hash = (self.shared.hash)(key);
        // One lock at a time: the writer takes the index's before the in-flight map's.
        let in_flight = lock(&self.shared.in_flight).contains_key(&hash);
        in_flight || self.shared.read_index().get(hash).is_some()
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<DiskRecord>, DiskError>> {
        Box::pin(DiskStore::get(self, key))
    }

    fn insert(&self, key: &[u8], meta: Bytes, body: Bytes) -> Result<(), Rejected> {
        let shared = &self.shared;
        let too_large = || {
            bump(&shared.counters.rejected_too_large, 1);
            Rejected::TooLarge
        };
        let header = RecordHeader {
            kind: RecordKind::Object,
            key_len: u16::try_from(key.len()).map_err(|_| too_large())?,
            meta_len: u32::try_from(meta.len()).map_err(|_| too_large())?,
            frame_size: FRAME,
            body_len: body.len() as u64,
            seq: 0,
            generation: 0,
        };
        let cost = header.aligned_len();
        if cost > shared.max_record {
            return Err(too_large());
        }
        if shared.queued.fetch_add(cost, Ordering::AcqRel) + cost > shared.max_queue {
            shared.queued.fetch_sub(cost, Ordering::AcqRel);
            bump(&shared.counters.rejected_queue_full, 1);
            return Err(Rejected::QueueFull);
        }
        let hash = (shared.hash)(key);
        let pending = Arc::new(Pending {
            key: Bytes::copy_from_slice(key),
            meta,
            body,
            cost,
        });
        // Under the sender's lock, so that the in-flight map and the writer see inserts of
        // one key in the same order.
        let commands = lock(&self.commands);
        let Some(commands) = commands.as_ref() else {
            shared.queued.fetch_sub(cost, Ordering::AcqRel);
            return Err(Rejected::Closed);
        };
        lock(&shared.in_flight).insert(hash, Arc::clone(&pending));
        if commands.send(Command::Insert(hash, pending)).is_err() {
            lock(&shared.in_flight).remove(&hash);
            shared.queued.fetch_sub(cost, Ordering::AcqRel);
            return Err(Rejected::Closed);
        }
        Ok(())
    }

    fn remove(&self, key: &[u8]) {
        let hash = (self.shared.hash)(key);
        lock(&self.shared.in_flight).remove(&hash);
        self.shared.write_index().remove(hash);
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(self.ask(Command::Clear))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(self.ask(Command::Flush))
    }

    fn usage(&self) -> DiskUsage {
        let index = self.shared.read_index();
        DiskUsage {
            entries: index.len() as u64,
            bytes: self.shared.disk_bytes.load(Ordering::Relaxed),
            index_bytes: index.bytes() as u64,
            queued_bytes: self.shared.queued.load(Ordering::Relaxed),
        }
    }

    fn counters(&self) -> DiskCounters {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DiskCounters {
            writes: get(&c.writes),
            write_bytes: get(&c.write_bytes),
            reads: get(&c.reads),
            read_bytes: get(&c.read_bytes),
            corrupt_records: get(&c.corrupt_records),
            rejected_queue_full: get(&c.rejected_queue_full),
            rejected_too_large: get(&c.rejected_too_large),
            reclaimed_segments: get(&c.reclaimed_segments),
            write_errors: get(&c.write_errors),
        }
    }

    fn recovery(&self) -> RecoveryReport {
        self.shared.recovery
    }

    fn observe_writes(&self, observer: WriteObserver) {
        let _ = self.shared.write_observer.set(observer);
    }
}

/// An object opened from the disk tier: its meta bytes, checked, and its body, read a frame
/// at a time as it is polled.
#[derive(Debug, Clone)]
pub struct DiskRecord {
    meta: Bytes,
    body_len: u64,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Not yet written (or a test double's): the body is in memory.
    Memory(Bytes, Option<Arc<Shared>>),
    Disk(Arc<OnDisk>),
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("dir", &self.dir).finish()
    }
}

/// A record opened on disk: where it is, its header and the bytes read when it was opened.
#[derive(Debug)]
struct OnDisk {
    shared: Arc<Shared>,
    hash: u64,
    location: Location,
    /// Of its segment when it was opened.
    generation: u64,
    header: RecordHeader,
    /// The record's first bytes (head, and maybe frames).
    first: Bytes,
}

impl OnDisk {
    /// Body frame `n`, read and checked.
    fn read_frame(&self, n: u64, wait: Wait) -> Result<Bytes, DiskError> {
        let offset = self.header.frame_offset(n);
        let len = self.header.frame_len(n) as usize;
        let end = offset as usize + len + CRC;
        let framed = if end <= self.first.len() {
            self.first.slice(offset as usize..end)
        } else {
            let mut bytes = read::buffer(len + CRC);
            read::exact_at(
                self.file()?,
                &mut bytes,
                self.location.offset + offset,
                wait,
            )?;
            Bytes::from(bytes)
        };
        self.check_frame(&framed[..len], &framed[len..])?;
        Ok(framed.slice(..len))
    }

    /// The whole body, every frame checked: the frames not read with the record's head
    /// come in one vectored read, straight into one buffer of the body's size (their
    /// checksums into another), so a promotion copies nothing.
    fn read_whole(&self, wait: Wait) -> Result<Bytes, DiskError> {
        let len = usize::try_from(self.header.body_len).map_err(io::Error::other)?;
        let frame = (self.header.frame_size as usize).max(1);
        let mut body = Vec::with_capacity(len);
        let mut crcs = vec![[0u8; CRC]; len.div_ceil(frame)];
        // The frames held whole in the first read; the rest are contiguous after them.
        let mut from_first = 0;
        while body.len() < len {
            let chunk = frame.min(len - body.len());
            let offset = self.header.frame_offset(from_first as u64) as usize;
            let end = offset + chunk + CRC;
            if end > self.first.len() {
                break;
            }
            body.extend_from_slice(&self.first[offset..offset + chunk]);
            crcs[from_first].copy_from_slice(&self.first[end - CRC..end]);
            from_first += 1;
        }
        if body.len() < len {
            let at = self.location.offset + self.header.frame_offset(from_first as u64);
            read::frames_at(
                self.file()?,
                &mut body,
                len,
                frame,
                &mut crcs[from_first..],
                at,
                wait,
            )?;
        }
        for (chunk, crc) in body.chunks(frame).zip(&crcs) {
            self.check_frame(chunk, crc)?;
        }
        Ok(Bytes::from(body))
    }

    fn file(&self) -> Result<&File, DiskError> {
        let slot = &self.shared.slots[self.location.slot as usize];
        slot.file.get().ok_or(DiskError::Reclaimed)
    }

    /// Checks one frame's bytes against its checksum: a mismatch is a reclaimed segment
    /// (its file reused while the record was read) or a corrupt record.
    fn check_frame(&self, bytes: &[u8], crc: &[u8]) -> Result<(), DiskError> {
        if seeded_crc(self.header.seq, &[bytes]).to_le_bytes() == crc {
            return Ok(());
        }
        Err(
            if self.shared.generation(self.location.slot) != self.generation {
                DiskError::Reclaimed
            } else {
                self.shared.corrupt(self.hash, self.location, "body frame")
            },
        )
    }
}

impl DiskRecord {
    /// A record held in memory: what the in-flight map serves, and what test doubles of
    /// [`DiskTier`] return.
    pub fn new_in_memory(meta: Bytes, body: Bytes) -> Self {
        Self::from_memory(meta, body, None)
    }

    fn from_memory(meta: Bytes, body: Bytes, shared: Option<Arc<Shared>>) -> Self {
        Self {
            meta,
            body_len: body.len() as u64,
            source: Source::Memory(body, shared),
        }
    }

    /// The meta bytes stored with the object, checked.
    pub fn meta(&self) -> &Bytes {
        &self.meta
    }

    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The whole body, as a stream of frames.
    pub fn body(&self) -> DiskBody {
        self.range(0..self.body_len)
    }

    /// The whole body in one buffer, every frame checked: for bodies to be held in memory.
    pub async fn read_whole(&self) -> Result<Bytes, DiskError> {
        let (body, shared) = match &self.source {
            Source::Memory(body, shared) => (Ok(body.clone()), shared.clone()),
            Source::Disk(disk) => {
                let shared = Arc::clone(&disk.shared);
                let disk = Arc::clone(disk);
                (
                    read::off_runtime(move |wait| disk.read_whole(wait)).await,
                    Some(shared),
                )
            }
        };
        if let (Ok(body), Some(shared)) = (&body, shared) {
            bump(&shared.counters.read_bytes, body.len() as u64);
        }
        body
    }

    /// Bytes `range` of the body (clipped to its length): reading starts at the frame that
    /// holds `range.start`.
    pub fn range(&self, range: Range<u64>) -> DiskBody {
        let range = clip(range, self.body_len);
        DiskBody {
            source: self.source.clone(),
            next: range.start,
            end: range.end,
        }
    }
}

/// A body being read from the disk tier: one frame (at most 64 KiB) per
/// [`next_frame`](DiskBody::next_frame), each checked before it is handed out, so memory
/// stays at one frame whatever the body's size.
#[derive(Debug)]
pub struct DiskBody {
    source: Source,
    next: u64,
    end: u64,
}

impl DiskBody {
    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// The next piece of the body (the rest of the current frame), `None` at the end. After
    /// an error the body ends: [`DiskError::Corrupt`] (counted, unindexed) or
    /// [`DiskError::Reclaimed`] mean the bytes already handed out were right but the rest
    /// cannot be had, so a response being sent must be aborted.
    pub async fn next_frame(&mut self) -> Option<Result<Bytes, DiskError>> {
        if self.next >= self.end {
            return None;
        }
        let frame_size = u64::from(FRAME);
        let (frame, shared) = match &self.source {
            Source::Memory(body, shared) => {
                let n = self.next / frame_size;
                let stop = ((n + 1) * frame_size).min(body.len() as u64);
                (
                    Ok(body.slice((n * frame_size) as usize..stop as usize)),
                    shared.clone(),
                )
            }
            Source::Disk(disk) => {
                let n = self.next / u64::from(disk.header.frame_size);
                let disk = Arc::clone(disk);
                let shared = Arc::clone(&disk.shared);
                let frame = read::off_runtime(move |wait| disk.read_frame(n, wait)).await;
                (frame, Some(shared))
            }
        };
        let frame_size = match &self.source {
            Source::Disk(disk) => u64::from(disk.header.frame_size),
            Source::Memory(..) => frame_size,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                self.next = self.end;
                return Some(Err(e));
            }
        };
        let frame_start = self.next / frame_size * frame_size;
        let from = (self.next - frame_start) as usize;
        let to = (self.end - frame_start).min(frame.len() as u64) as usize;
        let piece = frame.slice(from..to);
        self.next = frame_start + to as u64;
        if let Some(shared) = shared {
            bump(&shared.counters.read_bytes, piece.len() as u64);
        }
        Some(Ok(piece))
    }
}

/// The segment being appended to.
struct Active {
    slot: u32,
    generation: u64,
    /// Offset in the segment of the writer's buffer's first byte.
    buf_start: u64,
    /// Offset of the next record.
    end: u64,
    /// Footer entries of the segment's records so far.
    footer: Vec<u8>,
    max_seq: u64,
}

/// A record whose bytes are all in the buffer (or written): indexed once the buffer is.
struct Done {
    hash: u64,
    location: Location,
    pending: Arc<Pending>,
}

/// The writer thread's state: which segments are full, free, open; the buffer.
struct Writer {
    shared: Arc<Shared>,
    active: Option<Active>,
    /// Segments that take no more records, oldest first: the next to reclaim is in front.
    full: VecDeque<u32>,
    /// Slots without a segment; the last is given out next.
    free: Vec<u32>,
    /// Per slot: bytes of records.
    used: Vec<u64>,
    next_generation: u64,
    next_seq: u64,
    buf: Vec<u8>,
    done: Vec<Done>,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            // Gather while commands keep coming; write out as soon as none is waiting.
            let command = if self.buf.is_empty() && self.done.is_empty() {
                match commands.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                }
            } else {
                match commands.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::TryRecvError::Empty) => {
                        if let Err(e) = self.write_buffer() {
                            self.fail(e, None);
                        }
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            };
            match command {
                Command::Insert(hash, pending) => {
                    if let Err(e) = self.append(hash, &pending) {
                        self.fail(e, Some(pending));
                    }
                }
                Command::Flush(reply) => {
                    let result = self.write_buffer();
                    if let Err(e) = &result {
                        self.fail(io::Error::new(e.kind(), e.to_string()), None);
                    }
                    let _ = reply.send(result);
                }
                Command::Clear(reply) => {
                    let _ = reply.send(self.clear());
                }
                Command::Close(reply) => {
                    let _ = reply.send(self.write_buffer().and_then(|()| self.sync()));
                    return;
                }
                #[cfg(test)]
                Command::Abandon => return,
            }
        }
        // Every handle is gone: write out what is buffered, as a crash after it would find.
        if let Err(e) = self.write_buffer() {
            self.fail(e, None);
        }
    }

    fn file(&self, slot: u32) -> io::Result<&File> {
        let cell = &self.shared.slots[slot as usize].file;
        if cell.get().is_none() {
            let file = recover::open_segment(&self.shared.dir, slot, self.shared.segment_size)?;
            let _ = cell.set(file);
        }
        Ok(cell.get().expect("set above"))
    }

    /// Appends one record, after making room for it.
    fn append(&mut self, hash: u64, pending: &Arc<Pending>) -> io::Result<()> {
        let mut header = RecordHeader {
            kind: RecordKind::Object,
            key_len: pending.key.len() as u16,
            meta_len: pending.meta.len() as u32,
            frame_size: FRAME,
            body_len: pending.body.len() as u64,
            seq: self.next_seq,
            generation: 0,
        };
        let len = header.aligned_len();
        self.make_room(len)?;
        let active = self.active.as_mut().expect("make_room opens a segment");
        header.generation = active.generation;
        self.next_seq += 1;
        let start = active.end;
        let location = Location {
            slot: active.slot,
            offset: start,
            len,
        };
        self.put(&header.encode())?;
        self.put(&pending.key)?;
        self.put(&pending.meta)?;
        self.put(&seeded_crc(header.seq, &[&pending.key, &pending.meta]).to_le_bytes())?;
        for frame in pending.body.chunks(FRAME as usize) {
            self.put(frame)?;
            self.put(&seeded_crc(header.seq, &[frame]).to_le_bytes())?;
        }
        let padding = (len - header.record_len()) as usize;
        self.put(&[0u8; ALIGN as usize][..padding])?;
        let active = self.active.as_mut().expect("still open");
        active.end = start + len;
        active.max_seq = header.seq;
        format::encode_footer_entry(&mut active.footer, hash, location);
        self.used[location.slot as usize] += len;
        self.shared.disk_bytes.fetch_add(len, Ordering::Relaxed);
        self.done.push(Done {
            hash,
            location,
            pending: Arc::clone(pending),
        });
        if self.buf.is_empty() {
            self.index_done();
        }
        Ok(())
    }

    /// Adds `bytes` to the buffer, writing it out once it holds `write_buffer` bytes.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= self.shared.write_buffer {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// Writes the buffer at its place in the open segment, then indexes the records it
    /// completed.
    fn write_buffer(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let active = self.active.as_ref().expect("a buffer belongs to a segment");
            let (slot, at) = (active.slot, active.buf_start);
            let started = Instant::now();
            self.file(slot)?.write_all_at(&self.buf, at)?;
            if let Some(observe) = self.shared.write_observer.get() {
                observe(started.elapsed());
            }
            self.active.as_mut().expect("still open").buf_start += self.buf.len() as u64;
            self.buf.clear();
        }
        self.index_done();
        Ok(())
    }

    /// Indexes the records whose bytes are all written, unless removed or replaced since
    /// they were queued.
    fn index_done(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let mut index = self.shared.write_index();
        let mut in_flight = lock(&self.shared.in_flight);
        for done in self.done.drain(..) {
            if in_flight
                .get(&done.hash)
                .is_some_and(|pending| Arc::ptr_eq(pending, &done.pending))
            {
                in_flight.remove(&done.hash);
                index.insert(done.hash, done.location);
            }
            self.shared
                .queued
                .fetch_sub(done.pending.cost, Ordering::AcqRel);
            bump(&self.shared.counters.writes, 1);
            bump(&self.shared.counters.write_bytes, done.location.len);
        }
    }

    /// Seals the open segment if `len` more bytes (and a footer entry) do not fit, then
    /// opens a segment if none is.
    fn make_room(&mut self, len: u64) -> io::Result<()> {
        if let Some(active) = &self.active {
            let footer = (active.footer.len() + FOOTER_ENTRY) as u64;
            if active.end + len + footer > self.shared.segment_size - ALIGN {
                self.seal()?;
            }
        }
        if self.active.is_none() {
            self.open_next()?;
        }
        Ok(())
    }

    /// Writes the open segment's footer and trailer and syncs it: from now on it is
    /// recovered from its footer.
    fn seal(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        self.full.push_back(active.slot);
        let file = self.file(active.slot)?;
        file.write_all_at(&active.footer, active.end)?;
        let trailer = Trailer {
            generation: active.generation,
            footer_offset: active.end,
            count: (active.footer.len() / FOOTER_ENTRY) as u64,
            max_seq: active.max_seq,
            footer_crc: crc32c::crc32c(&active.footer),
        };
        file.write_all_at(&trailer.encode(), self.shared.segment_size - ALIGN)?;
        file.sync_data()
    }

    /// Starts a segment in a free slot, or in the oldest segment's, reclaimed.
    fn open_next(&mut self) -> io::Result<()> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let oldest = self
                    .full
                    .pop_front()
                    .expect("at least two slots, one not open");
                self.reclaim(oldest);
                oldest
            }
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        self.shared.slots[slot as usize]
            .generation
            .store(generation, Ordering::Release);
        let header = SegmentHeader {
            segment_size: self.shared.segment_size,
            generation,
        };
        self.file(slot)?.write_all_at(&header.encode(), 0)?;
        self.active = Some(Active {
            slot,
            generation,
            buf_start: ALIGN,
            end: ALIGN,
            footer: Vec::new(),
            max_seq: 0,
        });
        Ok(())
    }

    /// Unindexes every record of segment `slot` (by its footer; by a scan of the index if
    /// the footer cannot be read) and marks the slot reused.
    fn reclaim(&mut self, slot: u32) {
        let generation = self.shared.generation(slot);
        let footer = self.shared.slots[slot as usize]
            .file
            .get()
            .and_then(|file| recover::read_footer(file, generation, self.shared.segment_size));
        {
            let mut index = self.shared.write_index();
            match &footer {
                Some(footer) => {
                    for (hash, location) in format::decode_footer(&footer.entries, slot) {
                        index.remove_if_at(hash, location);
                    }
                }
                None => {
                    index.remove_slot(slot);
                }
            }
        }
        // Readers of its records see the change and stop.
        self.shared.slots[slot as usize]
            .generation
            .store(0, Ordering::Release);
        let used = std::mem::take(&mut self.used[slot as usize]);
        self.shared.disk_bytes.fetch_sub(used, Ordering::Relaxed);
        bump(&self.shared.counters.reclaimed_segments, 1);
    }

    /// Syncs the open segment.
    fn sync(&self) -> io::Result<()> {
        match &self.active {
            Some(active) => self.shared.slots[active.slot as usize]
                .file
                .get()
                .map_or(Ok(()), File::sync_data),
            None => Ok(()),
        }
    }

    /// Forgets everything, on disk too.
    fn clear(&mut self) -> io::Result<()> {
        self.buf.clear();
        {
            let mut in_flight = lock(&self.shared.in_flight);
            for done in self.done.drain(..) {
                if in_flight
                    .get(&done.hash)
                    .is_some_and(|pending| Arc::ptr_eq(pending, &done.pending))
                {
                    in_flight.remove(&done.hash);
                }
                self.shared
                    .queued
                    .fetch_sub(done.pending.cost, Ordering::AcqRel);
            }
        }
        self.shared.write_index().clear();
        self.active = None;
        self.full.clear();
        let slots = self.shared.slots.len() as u32;
        self.free = (0..slots).rev().collect();
        self.used.iter_mut().for_each(|used| *used = 0);
        self.shared.disk_bytes.store(0, Ordering::Relaxed);
        let mut result = Ok(());
        for slot in &self.shared.slots {
            slot.generation.store(0, Ordering::Release);
            if let Some(file) = slot.file.get() {
                let wiped = file
                    .write_all_at(&[0u8; ALIGN as usize], 0)
                    .and_then(|()| file.sync_data());
                result = result.and(wiped);
            }
        }
        result
    }

    /// A write failed: the records not yet indexed are dropped (and the one being
    /// appended), and the open segment takes no more records (its footer is never written;
    /// its records are recovered by a scan, which stops where the failure left garbage).
    fn fail(&mut self, error: io::Error, current: Option<Arc<Pending>>) {
        tracing::warn!(%error, "disk tier write failed");
        bump(&self.shared.counters.write_errors, 1);
        self.buf.clear();
        let mut in_flight = lock(&self.shared.in_flight);
        let dropped = self.done.drain(..).map(|done| done.pending).chain(current);
        for pending in dropped {
            in_flight.retain(|_, queued| !Arc::ptr_eq(queued, &pending));
            self.shared.queued.fetch_sub(pending.cost, Ordering::AcqRel);
        }
        drop(in_flight);
        if let Some(active) = self.active.take() {
            self.full.push_back(active.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    use bytesize::ByteSize;

    use super::*;

    fn config(dir: &Path, size: ByteSize, segment_size: ByteSize) -> DiskConfig {
        DiskConfig {
            path: dir.to_path_buf(),
            size,
            segment_size,
            write_buffer: ByteSize::kib(256),
            max_queue: ByteSize::mib(64),
        }
    }

    fn small(dir: &Path) -> DiskConfig {
        config(dir, ByteSize::mib(8), ByteSize::mib(1))
    }

    /// `len` bytes that differ by `seed` and by position.
    fn body(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(31)
                    .wrapping_add(u32::from(seed) * 7) as u8
            })
            .collect()
    }

    fn key(n: usize) -> Vec<u8> {
        format!("g1|example.com/object/{n}").into_bytes()
    }

    async fn read(body: &mut DiskBody) -> Result<Vec<u8>, DiskError> {
        let mut out = Vec::new();
        while let Some(piece) = body.next_frame().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    async fn read_whole(store: &DiskStore, key: &[u8]) -> Option<(Bytes, Vec<u8>)> {
        let record = store.get(key).await.expect("no error")?;
        let body = read(&mut record.body()).await.expect("body reads");
        Some((record.meta().clone(), body))
    }

    fn location(store: &DiskStore, key: &[u8]) -> Location {
        store
            .shared
            .read_index()
            .get(format::key_hash(key))
            .expect("indexed")
    }

    fn flip(dir: &Path, at: Location, offset: u64) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(recover::segment_path(dir, at.slot))
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at.offset + offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], at.offset + offset)
            .unwrap();
    }

    #[tokio::test]
    async fn round_trip_small_and_large() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&config(dir.path(), ByteSize::mib(64), ByteSize::mib(32)))
            .await
            .unwrap();
        store
            .insert(b"small", Bytes::from_static(b"meta"), body(100, 1))
            .unwrap();
        store.insert(b"empty", Bytes::new(), Bytes::new()).unwrap();
        // Whether still in flight or written, a read finds it.
        let (meta, got) = read_whole(&store, b"small").await.unwrap();
        assert_eq!((&meta[..], got), (&b"meta"[..], body(100, 1).to_vec()));
        store.flush().await.unwrap();
        let (meta, got) = read_whole(&store, b"small").await.unwrap();
        assert_eq!((&meta[..], got), (&b"meta"[..], body(100, 1).to_vec()));
        let (meta, got) = read_whole(&store, b"empty").await.unwrap();
        assert!(meta.is_empty() && got.is_empty());
        assert!(store.get(b"missing").await.unwrap().is_none());

        // 20 MiB, read a frame at a time: never more than one frame in hand.
        const LARGE: usize = 20 << 20;
        let large = body(LARGE, 2);
        store
            .insert(b"large", Bytes::from_static(b"m"), large.clone())
            .unwrap();
        store.flush().await.unwrap();
        let record = store.get(b"large").await.unwrap().unwrap();
        assert!(matches!(record.source, Source::Disk(_)), "read from disk");
        assert_eq!(record.body_len(), LARGE as u64);
        let mut reader = record.body();
        let (mut at, mut frames) = (0, 0);
        while let Some(frame) = reader.next_frame().await {
            let frame = frame.unwrap();
            assert!(frame.len() <= FRAME as usize);
            assert_eq!(frame, large[at..at + frame.len()]);
            at += frame.len();
            frames += 1;
        }
        assert_eq!((at, frames), (LARGE, LARGE / FRAME as usize));
        let counters = store.counters();
        assert_eq!(counters.writes, 3);
        assert!(counters.read_bytes >= LARGE as u64);
        assert_eq!(store.usage().entries, 3);
        assert_eq!(store.usage().index_bytes, store.index_bytes());
    }

    #[tokio::test]
    async fn ranged_reads_start_at_the_frame_holding_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        let data = body(300_000, 3);
        store.insert(b"k", Bytes::new(), data.clone()).unwrap();
        store.flush().await.unwrap();
        let record = store.get(b"k").await.unwrap().unwrap();
        for range in [
            70_000..200_000,
            0..1,
            65_535..65_537,
            299_000..400_000,
            5..5,
        ] {
            let got = read(&mut record.range(range.clone())).await.unwrap();
            let end = range.end.min(300_000) as usize;
            assert_eq!(got, data[range.start as usize..end], "{range:?}");
        }
        let mut from_second = record.range(70_000..300_000);
        let first = from_second.next_frame().await.unwrap().unwrap();
        assert_eq!(first.len(), 2 * 65_536 - 70_000, "the rest of frame 1 only");
    }

    /// A byte flipped anywhere in a record is found, never handed out, counted, and the
    /// record unindexed.
    #[tokio::test]
    async fn a_flipped_byte_in_header_key_meta_or_frame_is_detected() {
        let key = b"the-key";
        let meta = Bytes::from_static(b"the meta bytes");
        let data = body(200_000, 4);
        let header = format::RECORD_HEADER as u64;
        let body_at = header + key.len() as u64 + meta.len() as u64 + CRC as u64;
        let targets = [
            ("header", 10),
            ("key", header + 2),
            ("meta", header + key.len() as u64 + 3),
            ("frame", body_at + u64::from(FRAME) + CRC as u64 + 100),
        ];
        for (what, offset) in targets {
            let dir = tempfile::tempdir().unwrap();
            let store = DiskStore::open(&small(dir.path())).await.unwrap();
            store.insert(key, meta.clone(), data.clone()).unwrap();
            store.flush().await.unwrap();
            flip(dir.path(), location(&store, key), offset);
            match store.get(key).await {
                Err(DiskError::Corrupt(_)) => assert!(what != "frame", "{what}"),
                Ok(Some(record)) => {
                    assert_eq!(what, "frame");
                    let mut reader = record.body();
                    let first = reader.next_frame().await.unwrap().unwrap();
                    assert_eq!(first, data[..FRAME as usize], "frame 0 is intact");
                    let second = reader.next_frame().await.unwrap();
                    assert!(
                        matches!(second, Err(DiskError::Corrupt("body frame"))),
                        "{second:?}"
                    );
                    assert!(reader.next_frame().await.is_none(), "the body ends");
                }
                other => panic!("{what}: {other:?}"),
            }
            assert_eq!(store.counters().corrupt_records, 1, "{what}");
            assert!(store.get(key).await.unwrap().is_none(), "{what}: unindexed");
            assert!(!store.may_contain(key));
        }
    }

    /// A whole body read in one go (a promotion) has the bytes of every frame, those read
    /// with the head and those after, and a flipped byte in any frame is found.
    #[tokio::test]
    async fn a_whole_read_has_every_frame_and_checks_each() {
        // 300 B: inside the head read; 200,000 B: four frames, the first partly in it.
        for len in [300usize, 200_000] {
            let dir = tempfile::tempdir().unwrap();
            let store = DiskStore::open(&small(dir.path())).await.unwrap();
            let data = body(len, 5);
            store.insert(b"k", Bytes::new(), data.clone()).unwrap();
            store.flush().await.unwrap();
            let record = store.get(b"k").await.unwrap().unwrap();
            assert!(matches!(record.source, Source::Disk(_)), "read from disk");
            assert_eq!(record.read_whole().await.unwrap(), data, "{len}");

            let body_at = format::RECORD_HEADER as u64 + 1 + CRC as u64;
            let last_frame = (len as u64 - 1) / u64::from(FRAME);
            let at = body_at + last_frame * (u64::from(FRAME) + CRC as u64) + 7;
            flip(dir.path(), location(&store, b"k"), at);
            let record = store.get(b"k").await.unwrap().unwrap();
            let read = record.read_whole().await;
            assert!(
                matches!(read, Err(DiskError::Corrupt("body frame"))),
                "{len}: {read:?}"
            );
            assert_eq!(store.counters().corrupt_records, 1);
        }
    }

    #[tokio::test]
    async fn one_store_per_directory_until_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        let second = DiskStore::open(&small(dir.path())).await;
        assert!(
            matches!(&second, Err(DiskError::InUse(d)) if d == dir.path()),
            "{second:?}"
        );
        store.close().await.unwrap();
        DiskStore::open(&small(dir.path()))
            .await
            .expect("free once closed");
    }

    /// A record cut short (by a crash mid-write) is not indexed on reopen; everything
    /// before it is, and the writer goes on from there.
    #[tokio::test]
    async fn a_torn_tail_is_not_indexed() {
        for cut_at in [20, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let store = DiskStore::open(&small(dir.path())).await.unwrap();
            for n in 0..10 {
                store
                    .insert(&key(n), Bytes::from_static(b"m"), body(3000, n as u8))
                    .unwrap();
            }
            store
                .insert(b"last", Bytes::new(), body(200_000, 9))
                .unwrap();
            store.flush().await.unwrap();
            let last = location(&store, b"last");
            store.crash().await;
            // The second part of the record never reached the file.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(recover::segment_path(dir.path(), last.slot))
                .unwrap();
            let zeros = vec![0u8; (last.len - cut_at) as usize];
            file.write_all_at(&zeros, last.offset + cut_at).unwrap();

            let store = DiskStore::open(&small(dir.path())).await.unwrap();
            let report = store.recovery();
            assert_eq!(report.objects, 10, "cut at {cut_at}");
            assert_eq!(report.torn_records, 1);
            assert!(store.get(b"last").await.unwrap().is_none());
            for n in 0..10 {
                let (_, got) = read_whole(&store, &key(n)).await.unwrap();
                assert_eq!(got, body(3000, n as u8));
            }
            // Written over the torn record, and found again after a clean stop.
            store
                .insert(b"after", Bytes::new(), body(5000, 10))
                .unwrap();
            store.close().await.unwrap();
            let store = DiskStore::open(&small(dir.path())).await.unwrap();
            assert_eq!(store.recovery().objects, 11);
            assert_eq!(store.recovery().torn_records, 0);
            assert_eq!(
                read_whole(&store, b"after").await.unwrap().1,
                body(5000, 10)
            );
        }
    }

    /// kill -9 after the records were written: sealed segments come back from their
    /// footers, the open one from a scan, every complete record with them.
    #[tokio::test]
    async fn reopen_after_a_crash_recovers_every_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        const N: usize = 1000;
        for n in 0..N {
            store
                .insert(
                    &key(n),
                    Bytes::from(format!("meta {n}")),
                    body(3500, n as u8),
                )
                .unwrap();
        }
        store.flush().await.unwrap();
        let before = store.usage();
        store.crash().await;

        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        let report = store.recovery();
        assert_eq!(report.objects, N as u64);
        assert_eq!(report.bytes, before.bytes);
        assert!(report.sealed_segments >= 3, "{report:?}");
        assert_eq!(
            report.scanned_segments, 1,
            "only the open segment is scanned"
        );
        assert_eq!(store.usage().entries, before.entries);
        for n in (0..N).step_by(37) {
            let (meta, got) = read_whole(&store, &key(n)).await.unwrap();
            assert_eq!(meta, format!("meta {n}").as_bytes());
            assert_eq!(got, body(3500, n as u8));
        }
        // Appending goes on in the open segment; a clean stop keeps everything too.
        store
            .insert(b"one more", Bytes::new(), body(10, 0))
            .unwrap();
        store.close().await.unwrap();
        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        assert_eq!(store.recovery().objects, N as u64 + 1);
    }

    #[tokio::test]
    async fn a_corrupt_footer_falls_back_to_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        for n in 0..600 {
            store
                .insert(&key(n), Bytes::new(), body(3500, n as u8))
                .unwrap();
        }
        store.close().await.unwrap();
        // Slot 0 is sealed: damage its footer's first entry.
        let file = recover::open_segment(dir.path(), 0, 1 << 20).unwrap();
        let footer = recover::read_footer(&file, 1, 1 << 20).expect("slot 0 sealed");
        file.write_all_at(&[0xff; 4], footer.offset).unwrap();

        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        let report = store.recovery();
        assert_eq!(report.objects, 600);
        assert_eq!(report.scanned_segments, 2, "{report:?}");
        assert_eq!(read_whole(&store, &key(0)).await.unwrap().1, body(3500, 0));
    }

    /// FIFO reclaim: after writing three times `size`, the files still add up to at most
    /// `size`, the newest objects are there and the oldest gone.
    #[tokio::test]
    async fn the_size_bound_holds_after_writing_three_times_size() {
        let dir = tempfile::tempdir().unwrap();
        let size = ByteSize::mib(4);
        let store = DiskStore::open(&config(dir.path(), size, ByteSize::mib(1)))
            .await
            .unwrap();
        let per_object = 10_000;
        let n = 3 * size.as_u64() as usize / per_object;
        for i in 0..n {
            store
                .insert(&key(i), Bytes::new(), body(per_object, i as u8))
                .unwrap();
            if i % 64 == 0 {
                store.flush().await.unwrap();
            }
            let files: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|name| name.to_string_lossy().starts_with("seg-"))
                .collect();
            assert!(files.len() <= 4, "{files:?}");
        }
        store.flush().await.unwrap();
        let (mut total, mut allocated) = (0, 0);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let metadata = entry.unwrap().metadata().unwrap();
            total += metadata.len();
            allocated += std::os::unix::fs::MetadataExt::blocks(&metadata) * 512;
        }
        assert!(total <= size.as_u64(), "{total}");
        assert!(allocated <= size.as_u64(), "{allocated}");
        let usage = store.usage();
        assert!(usage.bytes <= size.as_u64());
        assert!(store.counters().reclaimed_segments >= 8);
        assert!(
            store.get(&key(0)).await.unwrap().is_none(),
            "the oldest went first"
        );
        assert_eq!(
            read_whole(&store, &key(n - 1)).await.unwrap().1,
            body(per_object, (n - 1) as u8)
        );
        // Every indexed object is readable: none points into a reclaimed segment.
        let mut found = 0;
        for i in 0..n {
            if let Some((_, got)) = read_whole(&store, &key(i)).await {
                assert_eq!(got, body(per_object, i as u8));
                found += 1;
            }
        }
        assert_eq!(found, usage.entries);
        assert_eq!(store.counters().corrupt_records, 0);
        store.close().await.unwrap();
        let store = DiskStore::open(&config(dir.path(), size, ByteSize::mib(1)))
            .await
            .unwrap();
        assert_eq!(store.recovery().objects, usage.entries);
    }

    /// Every key hashes alike here: the newer record takes the index entry, a read checks
    /// the key, so the other key is a miss and never the wrong object.
    #[tokio::test]
    async fn colliding_keys_never_return_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let collide: fn(&[u8]) -> u64 = |_| 42;
        let store = DiskStore::open_with_hash(&small(dir.path()), collide)
            .await
            .unwrap();
        store
            .insert(b"a", Bytes::from_static(b"A"), body(100, 1))
            .unwrap();
        store.flush().await.unwrap();
        store
            .insert(b"b", Bytes::from_static(b"B"), body(100, 2))
            .unwrap();
        assert!(store.get(b"a").await.unwrap().is_none(), "in flight: b");
        store.flush().await.unwrap();
        assert!(store.get(b"a").await.unwrap().is_none(), "on disk: b");
        assert_eq!(read_whole(&store, b"b").await.unwrap().0, &b"B"[..]);
        store
            .insert(b"a", Bytes::from_static(b"A2"), body(100, 3))
            .unwrap();
        store.close().await.unwrap();
        let store = DiskStore::open_with_hash(&small(dir.path()), collide)
            .await
            .unwrap();
        assert!(store.get(b"b").await.unwrap().is_none());
        assert_eq!(
            read_whole(&store, b"a").await.unwrap().0,
            &b"A2"[..],
            "newest wins on recovery"
        );
        assert_eq!(store.counters().corrupt_records, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_readers_while_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            DiskStore::open(&config(dir.path(), ByteSize::mib(16), ByteSize::mib(1)))
                .await
                .unwrap(),
        );
        const N: usize = 2000;
        let done = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for r in 0..4 {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            readers.push(tokio::spawn(async move {
                let mut hits = 0;
                // Bounded: at most 50 passes over the keys, fewer once the writer is done.
                for pass in 0..50 {
                    for n in (r..N).step_by(7) {
                        if let Some((meta, got)) = read_whole(&store, &key(n)).await {
                            assert_eq!(meta, format!("{n}").as_bytes());
                            assert_eq!(got, body(2000 + n % 3000, n as u8));
                            hits += 1;
                        }
                    }
                    if done.load(Ordering::Acquire) && pass > 0 {
                        break;
                    }
                }
                hits
            }));
        }
        for n in 0..N {
            store
                .insert(
                    &key(n),
                    Bytes::from(format!("{n}")),
                    body(2000 + n % 3000, n as u8),
                )
                .unwrap();
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        store.flush().await.unwrap();
        done.store(true, Ordering::Release);
        let mut hits = 0;
        for reader in readers {
            hits += reader.await.unwrap();
        }
        assert!(hits > 0);
        assert_eq!(store.usage().entries, N as u64);
        assert_eq!(store.counters().corrupt_records, 0);
    }

    #[tokio::test]
    async fn remove_is_not_persisted_but_clear_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        store.insert(b"a", Bytes::new(), body(10, 1)).unwrap();
        store.insert(b"b", Bytes::new(), body(10, 2)).unwrap();
        store.flush().await.unwrap();
        store.remove(b"a");
        assert!(store.get(b"a").await.unwrap().is_none());
        store.close().await.unwrap();

        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        assert!(
            store.get(b"a").await.unwrap().is_some(),
            "a removal is index only"
        );
        store.clear().await.unwrap();
        assert!(store.get(b"b").await.unwrap().is_none());
        assert_eq!(
            store.usage(),
            DiskUsage {
                index_bytes: store.index_bytes(),
                ..DiskUsage::default()
            }
        );
        store.insert(b"c", Bytes::new(), body(10, 3)).unwrap();
        store.close().await.unwrap();

        let store = DiskStore::open(&small(dir.path())).await.unwrap();
        assert_eq!(
            store.recovery().objects,
            1,
            "only what came after the clear"
        );
        assert!(store.get(b"c").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn inserts_beyond_a_segment_or_the_queue_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small(dir.path());
        config.write_buffer = ByteSize::kib(64);
        config.max_queue = ByteSize::kib(64);
        let store = DiskStore::open(&config).await.unwrap();
        let too_large = store.insert(b"k", Bytes::new(), body(2 << 20, 0));
        assert_eq!(too_large, Err(Rejected::TooLarge));
        let over_queue = store.insert(b"k", Bytes::new(), body(100_000, 0));
        assert_eq!(over_queue, Err(Rejected::QueueFull));
        let counters = store.counters();
        assert_eq!(
            (counters.rejected_too_large, counters.rejected_queue_full),
            (1, 1)
        );
        assert!(!store.may_contain(b"k"), "a refusal changes nothing");
        store.close().await.unwrap();
        assert_eq!(
            store.insert(b"k", Bytes::new(), body(10, 0)),
            Err(Rejected::Closed)
        );
    }
}
