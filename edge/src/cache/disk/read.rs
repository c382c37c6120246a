//! Reads that keep the runtime's threads free without paying a thread hand-off for bytes
//! already in memory: first on the calling thread with `RWF_NOWAIT` (answered from the
//! page cache only, never waiting on the device), and only when that would wait, again on
//! tokio's blocking pool. A disk hit on a warm tier then costs one system call instead of
//! a wake-up of a blocking thread and one of the worker (measured: context switches were
//! the largest single cost of disk hits, BENCHMARKS.md "Disk tier: the read path").

use std::fs::File;
use std::io::{self, IoSliceMut};

use super::DiskError;
use super::format::CRC;

/// Whether a read may wait on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Page cache only: [`io::ErrorKind::WouldBlock`] when a byte is not there.
    No,
    Yes,
}

/// Runs `read` on this thread without waiting on the device, and on the blocking pool
/// when that would wait. `read` must be idempotent: it may run twice.
pub(super) async fn off_runtime<T, F>(read: F) -> Result<T, DiskError>
where
    T: Send + 'static,
    F: Fn(Wait) -> Result<T, DiskError> + Send + 'static,
{
    match read(Wait::No) {
        Err(DiskError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
            tokio::task::spawn_blocking(move || read(Wait::Yes))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string()).into()))
        }
        done => done,
    }
}

/// A buffer of `len` bytes to read into. Not `vec![0; len]`: that is `calloc`, and for a
/// recycled large block jemalloc zeroes it by giving its pages back to the kernel
/// (`madvise`), so every read then page-faults and the kernel clears each page again
/// (measured: 14 % of a disk-hit workload's CPU); writing zeros into memory still mapped
/// costs a fraction of that.
#[allow(clippy::slow_vector_initialization)]
pub(super) fn buffer(len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(len);
    buf.resize(len, 0);
    buf
}

/// Fills `buf` from `file` at `offset`.
pub(super) fn exact_at(file: &File, buf: &mut [u8], offset: u64, wait: Wait) -> io::Result<()> {
    exact_vectored_at(file, &mut [IoSliceMut::new(buf)], offset, wait)
}

/// Fills every buffer of `bufs`, in order, from `file` at `offset`: one system call when
/// the bytes are there.
pub(super) fn exact_vectored_at(
    file: &File,
    mut bufs: &mut [IoSliceMut<'_>],
    mut offset: u64,
    wait: Wait,
) -> io::Result<()> {
    IoSliceMut::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = read_vectored_at(file, bufs, offset, wait)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        offset += n as u64;
        IoSliceMut::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn read_vectored_at(
    file: &File,
    bufs: &mut [IoSliceMut<'_>],
    offset: u64,
    wait: Wait,
) -> io::Result<usize> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let flags = match wait {
        Wait::No => ReadWriteFlags::NOWAIT,
        Wait::Yes => ReadWriteFlags::empty(),
    };
    loop {
        return match preadv2(file, bufs, offset, flags) {
            Ok(n) => Ok(n),
            Err(Errno::INTR) => continue,
            Err(errno) => Err(read_error(errno.into(), wait)),
        };
    }
}

/// A failed read as its caller sees it: without waiting, "not in the page cache" (EAGAIN)
/// and "this file system or kernel cannot say" (EOPNOTSUPP) both mean wait elsewhere.
#[cfg(target_os = "linux")]
fn read_error(error: io::Error, wait: Wait) -> io::Error {
    const AGAIN: i32 = rustix::io::Errno::AGAIN.raw_os_error();
    const OPNOTSUPP: i32 = rustix::io::Errno::OPNOTSUPP.raw_os_error();
    match error.raw_os_error() {
        Some(AGAIN | OPNOTSUPP) if wait == Wait::No => io::ErrorKind::WouldBlock.into(),
        _ => error,
    }
}

#[cfg(not(target_os = "linux"))]
fn read_vectored_at(
    file: &File,
    bufs: &mut [IoSliceMut<'_>],
    offset: u64,
    wait: Wait,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    if wait == Wait::No {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let first = bufs.iter_mut().find(|b| !b.is_empty());
    first.map_or(Ok(0), |buf| file.read_at(buf, offset))
}

/// Reads a body's frames, each followed on disk by its checksum, from `file` at `offset`:
/// the frames are appended to `body` until it holds `len` bytes, straight into its spare
/// capacity (never initialized first: clearing a buffer the size of the body cost as much
/// CPU as reading it, BENCHMARKS.md "Disk tier: the read path"), and the checksums go to
/// `crcs`, one per frame. `body` must hold whole frames already (those read before).
/// One system call when the bytes are there.
pub(super) fn frames_at(
    file: &File,
    body: &mut Vec<u8>,
    len: usize,
    frame: usize,
    crcs: &mut [[u8; CRC]],
    offset: u64,
    wait: Wait,
) -> io::Result<()> {
    let start = body.len();
    assert!(
        frame > 0 && start.is_multiple_of(frame) && start <= len,
        "whole frames before"
    );
    assert_eq!(
        crcs.len(),
        (len - start).div_ceil(frame),
        "one checksum per frame"
    );
    body.reserve_exact(len - start);
    let frames = Frames { start, len, frame };
    let stream = frames.stream_len();
    let mut done = 0;
    while done < stream {
        let n = scattered_read(file, body, crcs, &frames, done, offset + done as u64, wait)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

/// The on-disk stream [`frames_at`] reads: frame, checksum, frame, checksum, ...
struct Frames {
    /// Body bytes already held.
    start: usize,
    /// Body bytes once read.
    len: usize,
    frame: usize,
}

impl Frames {
    fn count(&self) -> usize {
        (self.len - self.start).div_ceil(self.frame)
    }

    fn stream_len(&self) -> usize {
        self.len - self.start + self.count() * CRC
    }

    /// Length of frame `k` (the last may be short).
    fn frame_len(&self, k: usize) -> usize {
        self.frame.min(self.len - self.start - k * self.frame)
    }

    /// Where `done` bytes into the stream are: frame `k`, `r` bytes into its pair.
    fn position(&self, done: usize) -> (usize, usize) {
        (done / (self.frame + CRC), done % (self.frame + CRC))
    }

    /// Body bytes read once `done` bytes of the stream are.
    fn body_read(&self, done: usize) -> usize {
        let (k, r) = self.position(done);
        if k >= self.count() {
            return self.len - self.start;
        }
        k * self.frame + r.min(self.frame_len(k))
    }
}

/// One `preadv2` of the stream from `done` on: into `body`'s spare capacity and `crcs`.
/// Returns the bytes read, and `body`'s length covers the body bytes among them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn scattered_read(
    file: &File,
    body: &mut Vec<u8>,
    crcs: &mut [[u8; CRC]],
    frames: &Frames,
    done: usize,
    offset: u64,
    wait: Wait,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // A kernel takes at most IOV_MAX (1,024) buffers per call.
    const IOV_MAX: usize = 1024;
    let spare = body.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let already = frames.body_read(done);
    let (first, r) = frames.position(done);
    let mut iovecs = Vec::with_capacity((2 * (frames.count() - first)).min(IOV_MAX));
    for (k, crc) in crcs.iter_mut().enumerate().skip(first) {
        let flen = frames.frame_len(k);
        let skip = if k == first { r } else { 0 };
        if skip < flen {
            iovecs.push(libc::iovec {
                // In bounds: frame `k` starts `k * frame` bytes into the spare capacity,
                // which `frames_at` reserved for every frame.
                iov_base: spare.wrapping_add(k * frames.frame + skip - already).cast(),
                iov_len: flen - skip,
            });
        }
        let crc_skip = skip.saturating_sub(flen);
        iovecs.push(libc::iovec {
            iov_base: crc[crc_skip..].as_mut_ptr().cast(),
            iov_len: CRC - crc_skip,
        });
        if iovecs.len() + 2 > IOV_MAX {
            break;
        }
    }
    let flags = match wait {
        Wait::No => libc::RWF_NOWAIT,
        Wait::Yes => 0,
    };
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    loop {
        // SAFETY: every iovec points into memory this function may write for the call:
        // `body`'s spare capacity (from its current length, which `already` is, up to the
        // reserved `len`) or a checksum slot, all borrowed mutably for the call.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                offset,
                flags,
            )
        };
        if n >= 0 {
            let n = n as usize;
            let read = frames.body_read(done + n);
            // SAFETY: the kernel wrote the first `n` bytes of the iovecs in order, which
            // cover `body`'s spare capacity up to `read` (and checksums).
            unsafe { body.set_len(frames.start + read) };
            return Ok(n);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(read_error(error, wait));
        }
    }
}

/// Elsewhere: the frames into an initialized buffer, by safe reads.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn scattered_read(
    file: &File,
    body: &mut Vec<u8>,
    crcs: &mut [[u8; CRC]],
    frames: &Frames,
    done: usize,
    offset: u64,
    wait: Wait,
) -> io::Result<usize> {
    assert_eq!(done, 0, "reads the whole stream at once");
    body.resize(frames.len, 0);
    let mut bufs: Vec<IoSliceMut<'_>> = body[frames.start..]
        .chunks_mut(frames.frame)
        .zip(crcs.iter_mut())
        .flat_map(|(chunk, crc)| [IoSliceMut::new(chunk), IoSliceMut::new(crc)])
        .collect();
    exact_vectored_at(file, &mut bufs, offset, wait)?;
    Ok(frames.stream_len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_vectored_read_fills_every_buffer_in_order() {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..=255).cycle().take(10_000).collect();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
        for wait in [Wait::Yes, Wait::No] {
            let (mut a, mut gap, mut b) = (vec![0u8; 4000], [0u8; 4], vec![0u8; 5000]);
            let read = exact_vectored_at(
                &file,
                &mut [
                    IoSliceMut::new(&mut a),
                    IoSliceMut::new(&mut gap),
                    IoSliceMut::new(&mut b),
                ],
                7,
                wait,
            );
            match (read, wait) {
                (Ok(()), _) => {
                    assert_eq!(a, bytes[7..4007]);
                    assert_eq!(gap, bytes[4007..4011]);
                    assert_eq!(b, bytes[4011..9011]);
                }
                // Without RWF_NOWAIT (another OS, an old kernel): the caller waits elsewhere.
                (Err(e), Wait::No) if e.kind() == io::ErrorKind::WouldBlock => {}
                (Err(e), _) => panic!("{e}"),
            }
        }
    }

    /// A file of `frames` frames of `frame` bytes (the last `last` bytes), each followed
    /// by a 4-byte marker, after `lead` bytes; and the body it holds.
    fn framed(lead: usize, frame: usize, lens: &[usize]) -> (File, Vec<u8>, Vec<[u8; CRC]>) {
        let mut file = tempfile::tempfile().unwrap();
        let mut body = Vec::new();
        let mut crcs = Vec::new();
        file.write_all(&vec![0xee; lead]).unwrap();
        for (k, len) in lens.iter().enumerate() {
            assert!(*len <= frame);
            let bytes: Vec<u8> = (0..*len).map(|i| (i * 7 + k) as u8).collect();
            let crc = [k as u8, 0xc0, 0xc1, 0xc2];
            file.write_all(&bytes).unwrap();
            file.write_all(&crc).unwrap();
            body.extend_from_slice(&bytes);
            crcs.push(crc);
        }
        (file, body, crcs)
    }

    #[test]
    fn frames_are_read_into_the_body_and_checksums_apart() {
        for lens in [&[40][..], &[64, 64, 10], &[64, 64, 64], &[64; 700]] {
            let (file, expected, expected_crcs) = framed(13, 64, lens);
            for wait in [Wait::Yes, Wait::No] {
                let mut body = Vec::new();
                let mut crcs = vec![[0u8; CRC]; lens.len()];
                let read = frames_at(&file, &mut body, expected.len(), 64, &mut crcs, 13, wait);
                match (read, wait) {
                    (Ok(()), _) => {
                        assert_eq!(body, expected, "{} frames", lens.len());
                        assert_eq!(crcs, expected_crcs);
                    }
                    (Err(e), Wait::No) if e.kind() == io::ErrorKind::WouldBlock => {}
                    (Err(e), _) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn frames_after_those_already_held_are_appended() {
        let (file, expected, expected_crcs) = framed(0, 64, &[64, 64, 30]);
        let mut body = expected[..64].to_vec();
        let mut crcs = vec![[0u8; CRC]; 2];
        frames_at(
            &file,
            &mut body,
            expected.len(),
            64,
            &mut crcs,
            68,
            Wait::Yes,
        )
        .unwrap();
        assert_eq!(body, expected);
        assert_eq!(crcs, expected_crcs[1..]);
    }

    #[test]
    fn a_short_file_is_an_error_and_the_body_holds_only_what_was_read() {
        let (file, expected, _) = framed(0, 64, &[64, 64]);
        let mut body = Vec::new();
        let mut crcs = vec![[0u8; CRC]; 3];
        let error = frames_at(&file, &mut body, 150, 64, &mut crcs, 0, Wait::Yes).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(body, expected, "the bytes read, none past them");
    }

    #[test]
    fn reading_past_the_end_is_an_error_not_a_short_buffer() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 100]).unwrap();
        let mut buf = [0u8; 200];
        let error = exact_at(&file, &mut buf, 0, Wait::Yes).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
