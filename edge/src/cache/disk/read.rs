//! Reads that keep the runtime's threads free without paying a thread hand-off for bytes
//! already in memory: first on the calling thread with `RWF_NOWAIT` (answered from the
//! page cache only, never waiting on the device), and only when that would wait, again on
//! tokio's blocking pool. A disk hit on a warm tier then costs one system call instead of
//! a wake-up of a blocking thread and one of the worker (measured: context switches were
//! the largest single cost of disk hits, BENCHMARKS.md "Disk tier: the read path").

use std::fs::File;
use std::io::{self, IoSliceMut};

use super::DiskError;

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
            // EOPNOTSUPP: a file system or kernel without RWF_NOWAIT; wait elsewhere.
            Err(Errno::AGAIN | Errno::OPNOTSUPP) if wait == Wait::No => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(errno) => Err(errno.into()),
        };
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

    #[test]
    fn reading_past_the_end_is_an_error_not_a_short_buffer() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 100]).unwrap();
        let mut buf = [0u8; 200];
        let error = exact_at(&file, &mut buf, 0, Wait::Yes).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
