//! Serving DNS over UDP: one receive loop per core on a shared socket, queries taken and
//! answered in batches, the common queries (steered answers and the zone's static ones)
//! answered by [`crate::fast_path`] into a reused buffer, everything else (responses
//! included, which it drops) by the same general path as TCP ([`crate::general`]), with
//! its response captured and sent from this loop.
//!
//! Metrics of the fast path are counted in the loop and added to the registry every
//! [`FLUSH_EVERY`] queries or second, so the hot path takes no lock and allocates nothing
//! per query.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use hickory_server::net::xfer::Protocol;
use nix::libc;

use crate::handler::Handler;
use crate::{fast_path, static_answers};

/// Fast-path queries counted locally before they are added to the metrics.
const FLUSH_EVERY: u64 = 4096;

/// Fast-path answers counted in the loop: steered ones by region index and [A, AAAA],
/// static ones by their type's slot in [`static_answers::TYPES`].
#[derive(Default)]
struct Counts {
    steered: Vec<[u64; 2]>,
    by_static_type: [u64; static_answers::TYPES.len()],
    pending: u64,
}

impl Counts {
    fn add(&mut self, answered: fast_path::Answered) {
        match answered {
            fast_path::Answered::Steered { qtype, region } => {
                if self.steered.len() <= region {
                    self.steered.resize(region + 1, [0; 2]);
                }
                self.steered[region][usize::from(qtype != 1)] += 1;
            }
            fast_path::Answered::Static { slot } => self.by_static_type[slot] += 1,
        }
        self.pending += 1;
    }
}

fn flush(handler: &Handler, counts: &mut Counts) {
    counts.pending = 0;
    for (qtype, n) in static_answers::TYPES.iter().zip(&mut counts.by_static_type) {
        if *n > 0 {
            handler.metrics.fast_answers(*qtype, "-", *n);
            *n = 0;
        }
    }
    let state = handler.state.load();
    for (region, by_type) in counts.steered.iter_mut().enumerate() {
        let name = state
            .regions
            .regions
            .get(region)
            .map_or("-", |r| r.name.as_str());
        for (qtype, n) in [RecordType::A, RecordType::AAAA].into_iter().zip(by_type) {
            if *n > 0 {
                handler.metrics.fast_answers(qtype, name, *n);
                *n = 0;
            }
        }
    }
}

/// The general path for a UDP query ([`crate::general::answer`]): `false` when there is
/// nothing to send. Public for the fuzz target (`fuzz/fuzz_targets/geodns_request.rs`).
pub async fn general(handler: &Handler, packet: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
    crate::general::answer(handler, packet, src, Protocol::Udp, out).await
}

/// Queries received (and answers sent) per system call by [`serve`].
const BATCH: usize = 32;

/// The largest query read whole; a longer datagram is cut here and then is not a valid
/// message (FORMERR).
const MAX_QUERY: usize = 4096;

/// How often a blocked receive wakes to see whether the server is stopping.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Receives and answers queries on `socket` until `stop`, on a blocking thread: a batch of
/// queries per `recvmmsg` and their answers with one `sendmmsg`. Once the fast path
/// answered in place, the kernel's cost per packet was what remained (BENCHMARKS.md), and
/// batching divides the system calls. The general path runs on `runtime`.
pub fn serve(
    socket: std::net::UdpSocket,
    handler: Handler,
    runtime: tokio::runtime::Handle,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;

    if let Err(error) = socket.set_read_timeout(Some(STOP_CHECK)) {
        tracing::error!(%error, "cannot set the UDP receive timeout");
        return;
    }
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    let mut addresses = Vec::new();
    let mut counts = Counts::default();
    let mut flushed = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let received = match batch.receive(fd) {
            Ok(n) => n,
            Err(error) => {
                if !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    tracing::debug!(%error, "UDP receive failed");
                }
                0
            }
        };
        if received == 0 {
            if counts.pending > 0 {
                flush(&handler, &mut counts);
            }
            continue;
        }
        let state = handler.state.load();
        for i in 0..received {
            let Some(src) = batch.peer(i) else {
                continue;
            };
            if src.port() == 0 || src.ip().is_unspecified() {
                continue; // nobody to answer
            }
            let (packet, out) = batch.query_and_answer(i);
            let answered = match fast_path::answer(&state, packet, src.ip(), out, &mut addresses) {
                Some(answered) => {
                    counts.add(answered);
                    true
                }
                None => runtime.block_on(general(&handler, packet, src, out)),
            };
            if answered {
                batch.reply(i);
            }
        }
        batch.send(fd);
        if counts.pending >= FLUSH_EVERY
            || (counts.pending > 0 && flushed.elapsed() > Duration::from_secs(1))
        {
            flush(&handler, &mut counts);
            flushed = Instant::now();
        }
    }
    flush(&handler, &mut counts);
}

/// The buffers of one batch, allocated once per loop, and the `mmsghdr`s the kernel reads
/// and fills, which point into them.
///
/// Invariant: the pointers in `recv` and `send` stay valid because every buffer they point
/// into is a boxed slice (never moved or resized after [`Batch::new`]) or an answer whose
/// pointer is taken in [`Batch::reply`] after the answer is final, and the whole batch
/// lives on the one thread that makes the system calls. The peer address of query `i` is
/// read by the kernel straight from where `recvmmsg` wrote it, so nothing is copied.
struct Batch {
    queries: Box<[[u8; MAX_QUERY]]>,
    peers: Box<[libc::sockaddr_storage]>,
    recv_iov: Box<[libc::iovec]>,
    recv: Box<[libc::mmsghdr]>,
    answers: Box<[Vec<u8>]>,
    send_iov: Box<[libc::iovec]>,
    send: Box<[libc::mmsghdr]>,
    replies: usize,
}

impl Batch {
    fn new() -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed_peer = || unsafe { std::mem::zeroed::<libc::sockaddr_storage>() };
        let zeroed_hdr = || unsafe { std::mem::zeroed::<libc::mmsghdr>() };
        let empty_iov = || libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut batch = Self {
            queries: vec![[0u8; MAX_QUERY]; BATCH].into_boxed_slice(),
            peers: (0..BATCH).map(|_| zeroed_peer()).collect(),
            recv_iov: (0..BATCH).map(|_| empty_iov()).collect(),
            recv: (0..BATCH).map(|_| zeroed_hdr()).collect(),
            answers: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            send_iov: (0..BATCH).map(|_| empty_iov()).collect(),
            send: (0..BATCH).map(|_| zeroed_hdr()).collect(),
            replies: 0,
        };
        for i in 0..BATCH {
            batch.recv_iov[i] = libc::iovec {
                iov_base: batch.queries[i].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
            let header = &mut batch.recv[i].msg_hdr;
            header.msg_name = (&raw mut batch.peers[i]).cast();
            header.msg_iov = &raw mut batch.recv_iov[i];
            header.msg_iovlen = 1;
            let header = &mut batch.send[i].msg_hdr;
            header.msg_iov = &raw mut batch.send_iov[i];
            header.msg_iovlen = 1;
        }
        batch
    }

    /// Waits for queries (up to [`STOP_CHECK`]) and takes as many as are queued, up to
    /// [`BATCH`]. Starts a new batch: no replies yet.
    fn receive(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        self.replies = 0;
        for header in self.recv.iter_mut() {
            header.msg_hdr.msg_namelen = PEER_LEN;
            header.msg_len = 0;
        }
        // SAFETY: `recv` holds BATCH headers whose pointers are valid (see the invariant).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// Where query `i` came from; `None` for an address family that is not IP.
    fn peer(&self, i: usize) -> Option<SocketAddr> {
        let peer = &self.peers[i];
        match i32::from(peer.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in here (family AF_INET), and
                // sockaddr_storage is large and aligned enough for it.
                let v4 = unsafe { &*(&raw const *peer).cast::<libc::sockaddr_in>() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let v6 = unsafe { &*(&raw const *peer).cast::<libc::sockaddr_in6>() };
                let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Query `i` as received and the buffer its answer is written into.
    fn query_and_answer(&mut self, i: usize) -> (&[u8], &mut Vec<u8>) {
        let len = (self.recv[i].msg_len as usize).min(MAX_QUERY);
        (&self.queries[i][..len], &mut self.answers[i])
    }

    /// Queues the answer to query `i` (final by now) for [`Batch::send`], to its sender.
    fn reply(&mut self, i: usize) {
        let j = self.replies;
        let answer = &self.answers[i];
        self.send_iov[j] = libc::iovec {
            iov_base: answer.as_ptr().cast_mut().cast(),
            iov_len: answer.len(),
        };
        let header = &mut self.send[j].msg_hdr;
        header.msg_name = (&raw mut self.peers[i]).cast();
        header.msg_namelen = self.recv[i].msg_hdr.msg_namelen;
        self.replies += 1;
    }

    /// Sends the queued answers. An answer the kernel refuses (e.g. an unreachable
    /// destination) is dropped and the rest are still sent.
    fn send(&mut self, fd: std::os::fd::RawFd) {
        let mut sent = 0;
        while sent < self.replies {
            // SAFETY: headers sent..replies were filled by `reply` with valid pointers.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send[sent..].as_mut_ptr(),
                    (self.replies - sent) as libc::c_uint,
                    0,
                )
            };
            match usize::try_from(n) {
                Ok(n) if n > 0 => sent += n,
                _ => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    tracing::debug!(%error, "UDP send failed");
                    sent += 1;
                }
            }
        }
        self.replies = 0;
    }
}

const PEER_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
