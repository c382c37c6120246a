//! Large bodies kept in sealed memory files, so a plain-TCP hit can hand the kernel the
//! body's pages (`sendfile`) instead of copying them into the socket.
//!
//! Why: at 4 MiB, 98% of the edge's CPU on a hit was the kernel copying the body from
//! user memory into socket buffers (`copy_from_iter`). A body in a memfd is in the page
//! cache, and `sendfile` from it references those pages in the socket buffer: measured
//! on this project's bench rig, 2.4x less server CPU per 4 MiB response than `send` from
//! memory (BENCHMARKS.md, "What such a path buys").
//!
//! A [`SealedBody`] is a memfd written once and then sealed against writes, growth and
//! shrinking (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`), and mapped
//! read-only. Every other user of the body (TLS, HTTP/2, ranges, the disk tier's
//! write-out) reads that mapping as ordinary `Bytes`, so the body is held once.
//!
//! Invariants:
//! - The mapping's bytes never change while it exists: the seals make the file immutable
//!   to every process (a sealed file cannot be made writable again), which is what makes
//!   handing it out as `&[u8]` sound.
//! - At most [`budget`] bodies are sealed at once: each holds a file descriptor and a
//!   memory map, and both are limited per process (`RLIMIT_NOFILE`, `vm.max_map_count`,
//!   65,530 by default and shared with the allocator). Past the budget a body stays in
//!   ordinary memory and is sent by copying, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Bodies smaller than this stay in ordinary memory. Each sealed body costs a descriptor,
/// a map and a few system calls at fill time; at 256 KiB, `sendfile` already takes the
/// server's CPU per hit from about 1/10,000 s to 1/21,000 s (BENCHMARKS.md), while at
/// 16 KiB the copy is a small part of a hit. Between the two the line is a judgement,
/// not a measurement.
pub const SEALED_MIN: usize = 128 * 1024;

/// Most bodies sealed at once when the descriptor limit allows more: a quarter of the
/// default `vm.max_map_count`, leaving the rest to the allocator and the runtime.
const MAX_SEALED: usize = 16_384;

static LIVE: Budget = Budget(AtomicUsize::new(0));

/// How many bodies may be sealed at once: [`MAX_SEALED`], or a quarter of the process's
/// descriptor limit if that is lower (the rest stay for connections and files).
pub fn budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        MAX_SEALED.min(usize::try_from(limit / 4).unwrap_or(usize::MAX))
    })
}

/// Bodies sealed now (for metrics and tests).
pub fn live() -> usize {
    LIVE.0.load(Ordering::Relaxed)
}

/// A body in a sealed, read-only mapped memory file. Cloning shares it.
#[derive(Clone)]
pub struct SealedBody(Arc<imp::Mapped>);

impl std::fmt::Debug for SealedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBody")
            .field("len", &self.len())
            .finish()
    }
}

impl SealedBody {
    /// `body` copied into a sealed memory file; `None` when it is smaller than
    /// [`SEALED_MIN`], the budget is spent, or the system refuses (the caller keeps the
    /// body in memory: sealing only ever saves work).
    pub fn seal(body: &[u8]) -> Option<Self> {
        if body.len() < SEALED_MIN {
            return None;
        }
        let slot = LIVE.take(budget())?;
        match imp::Mapped::new(body, slot) {
            Ok(mapped) => Some(Self(Arc::new(mapped))),
            Err(error) => {
                tracing::debug!(%error, len = body.len(), "body not sealed: kept in memory");
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body as `Bytes` over the mapping (no copy); the mapping lives while any of
    /// them does.
    pub fn bytes(&self) -> Bytes {
        Bytes::from_owner(self.clone())
    }

    /// The memory file, for `sendfile`.
    pub fn file(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.file()
    }
}

impl AsRef<[u8]> for SealedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Bodies sealed now, against a budget.
struct Budget(AtomicUsize);

impl Budget {
    /// A place for one more body, if fewer than `max` hold one.
    fn take(&'static self, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |live| {
                (live < max).then_some(live + 1)
            })
            .ok()
            .map(|_| Slot(self))
    }
}

/// One place in the budget, given back when the body is unmapped.
struct Slot(&'static Budget);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod imp {
    use std::io::{self, Write};
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::ptr::NonNull;

    use rustix::fs::{MemfdFlags, SealFlags};
    use rustix::mm::{MapFlags, ProtFlags};

    use super::Slot;

    pub(super) struct Mapped {
        file: OwnedFd,
        at: NonNull<u8>,
        len: usize,
        _slot: Slot,
    }

    // SAFETY: the mapping is read-only and its file sealed against every change, so the
    // bytes behind `at` are immutable for the mapping's life and may be read from any
    // thread; the pointer is unmapped only in `drop`, once.
    unsafe impl Send for Mapped {}
    unsafe impl Sync for Mapped {}

    impl Mapped {
        pub(super) fn new(body: &[u8], slot: Slot) -> io::Result<Self> {
            let file = rustix::fs::memfd_create(
                "cdn-body",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )?;
            let mut writer = std::fs::File::from(file);
            writer.write_all(body)?;
            let file = OwnedFd::from(writer);
            rustix::fs::fcntl_add_seals(
                &file,
                SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
            )?;
            // SAFETY: a new private-address mapping of a file this function owns; no
            // existing memory is affected. `body` is not empty (SEALED_MIN > 0).
            let at = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    body.len(),
                    ProtFlags::READ,
                    MapFlags::SHARED,
                    &file,
                    0,
                )?
            };
            let at = NonNull::new(at.cast::<u8>()).ok_or_else(|| io::Error::other("null map"))?;
            Ok(Self {
                file,
                at,
                len: body.len(),
                _slot: slot,
            })
        }

        pub(super) fn bytes(&self) -> &[u8] {
            // SAFETY: `at` maps `len` readable bytes until `drop`, and the seals keep them
            // unchanged (see the `Send` impl).
            unsafe { std::slice::from_raw_parts(self.at.as_ptr(), self.len) }
        }

        pub(super) fn file(&self) -> BorrowedFd<'_> {
            self.file.as_fd()
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, unmapped once; no borrow of it outlives
            // `self` (`bytes` borrows `self`).
            let _ = unsafe { rustix::mm::munmap(self.at.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::os::fd::BorrowedFd;

    use super::Slot;

    /// No memory files here: nothing is sealed.
    pub(super) enum Mapped {}

    impl Mapped {
        pub(super) fn new(_: &[u8], _: Slot) -> io::Result<Self> {
            Err(io::Error::other("sealed bodies need Linux memfds"))
        }

        pub(super) fn bytes(&self) -> &[u8] {
            match *self {}
        }

        pub(super) fn file(&self) -> BorrowedFd<'_> {
            match *self {}
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn small_bodies_stay_in_memory() {
        assert!(SealedBody::seal(&body(SEALED_MIN - 1)).is_none());
    }

    #[test]
    fn a_sealed_body_reads_back_whole_and_cannot_be_changed() {
        let original = body(SEALED_MIN + 4097);
        let sealed = SealedBody::seal(&original).expect("memfds work here");
        assert_eq!(sealed.as_ref(), &original[..]);
        assert_eq!(sealed.bytes(), Bytes::from(original.clone()));

        let file = sealed.file().try_clone_to_owned().unwrap();
        let mut writer = std::fs::File::from(file);
        use std::io::Write;
        assert!(writer.write_all(b"x").is_err(), "a write must be refused");
        assert!(writer.set_len(1).is_err(), "shrinking must be refused");
        assert!(writer.set_len(1 << 30).is_err(), "growing must be refused");
        assert_eq!(sealed.as_ref(), &original[..]);
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_gets_places_back() {
        static TEST: Budget = Budget(AtomicUsize::new(0));
        let first = TEST.take(2).unwrap();
        let second = TEST.take(2).unwrap();
        assert!(TEST.take(2).is_none());
        drop(first);
        let third = TEST.take(2).expect("a place given back is taken again");
        drop((second, third));
        assert_eq!(TEST.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_mapping_outlives_its_body_while_bytes_of_it_are_held() {
        let original = body(SEALED_MIN);
        let sealed = SealedBody::seal(&original).unwrap();
        let part = sealed.bytes().slice(10..20);
        drop(sealed);
        assert_eq!(&part[..], &original[10..20]);
    }
}
