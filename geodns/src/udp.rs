//! Serving DNS over UDP: one receive loop per core on a shared socket, queries taken and
//! answered in batches, the common query
//! answered by [`crate::fast_path`] into a reused buffer, everything else by the same
//! handler as TCP ([`crate::handler`]) through `hickory-server`'s request decoding, with
//! its response captured here and sent from this loop.
//!
//! Metrics of the fast path are counted in the loop and added to the registry every
//! [`FLUSH_EVERY`] queries or second, so the hot path takes no lock and allocates nothing
//! per query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{MessageType, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use crate::fast_path;
use crate::handler::Handler;

/// Fast-path queries counted locally before they are added to the metrics.
const FLUSH_EVERY: u64 = 4096;

fn flush(handler: &Handler, counts: &mut HashMap<(u16, usize), u64>) {
    let state = handler.state.load();
    for ((qtype, region), n) in counts.drain() {
        let region = state
            .regions
            .regions
            .get(region)
            .map_or("-", |r| r.name.as_str());
        handler.metrics.queries(
            RecordType::from(qtype),
            ResponseCode::NoError,
            region,
            false,
            n,
        );
    }
}

/// The general path: hickory decodes, [`Handler`] answers, the response is captured into
/// `out`. `false` when there is nothing to send (too short to be a DNS header).
async fn general(handler: &Handler, packet: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
    match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
        Ok(request) => {
            let capture = Capture::default();
            handler
                .handle_request::<Capture, TokioTime>(&request, capture.clone())
                .await;
            let bytes =
                std::mem::take(&mut *capture.0.lock().unwrap_or_else(PoisonError::into_inner));
            *out = bytes;
            !out.is_empty()
        }
        // A header we can read but a message we cannot: FORMERR, as RFC 1035 asks.
        Err(_) if packet.len() >= 12 && packet[2] & 0x80 == 0 => {
            out.clear();
            out.extend_from_slice(&packet[..2]);
            out.push(0x80 | (packet[2] & 0x79)); // QR, the opcode and RD as sent
            out.push(ResponseCode::FormErr.low());
            out.extend_from_slice(&[0; 8]);
            handler
                .metrics
                .query(RecordType::NULL, ResponseCode::FormErr, "-", false);
            true
        }
        Err(_) => false,
    }
}

/// A response handler that keeps the encoded response for the loop to send, truncated
/// (TC) to the payload size the response's EDNS allows, 512 without EDNS.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = response
            .edns()
            .map_or(512, |edns| edns.max_payload().max(512));
        debug_assert_eq!(response.metadata().message_type, MessageType::Response);
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(format!("cannot encode the response: {e}")))?;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = bytes;
        Ok(info)
    }
}

/// Queries received (and answers sent) per system call by [`serve_batched`].
const BATCH: usize = 32;

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
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;

    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

    if let Err(error) = socket.set_read_timeout(Some(STOP_CHECK)) {
        tracing::error!(%error, "cannot set the UDP receive timeout");
        return;
    }
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; 4096]; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut received_from: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut counts: HashMap<(u16, usize), u64> = HashMap::new();
    let mut pending = 0u64;
    let mut flushed = Instant::now();
    while !stop.load(Ordering::Acquire) {
        received_from.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => received_from.extend(results.map(|r| (r.bytes, r.address))),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(error) => tracing::debug!(%error, "UDP receive failed"),
            }
        }
        if received_from.is_empty() {
            if pending > 0 {
                flush(&handler, &mut counts);
                pending = 0;
            }
            continue;
        }
        let state = handler.state.load();
        let mut replies = 0;
        let mut reply_to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(received_from.len());
        for (i, (len, address)) in received_from.iter().enumerate() {
            let Some(src) = address.as_ref().and_then(socket_addr) else {
                continue;
            };
            if src.port() == 0 || src.ip().is_unspecified() {
                continue; // nobody to answer
            }
            let packet = &bufs[i][..*len];
            let mut out = std::mem::take(&mut outs[i]);
            let answered = match fast_path::answer(&state, packet, src.ip(), &mut out) {
                Some(answered) => {
                    *counts.entry((answered.qtype, answered.region)).or_default() += 1;
                    pending += 1;
                    true
                }
                None => runtime.block_on(general(&handler, packet, src, &mut out)),
            };
            // Keep the answer at the front, in the order it is sent.
            outs[i] = out;
            if answered {
                outs.swap(replies, i);
                reply_to.push(*address);
                replies += 1;
            }
        }
        if replies > 0 {
            let slices: Vec<[IoSlice<'_>; 1]> =
                outs[..replies].iter().map(|o| [IoSlice::new(o)]).collect();
            if let Err(error) = sendmmsg(
                fd,
                &mut send_headers,
                &slices,
                &reply_to,
                [],
                MsgFlags::empty(),
            ) {
                tracing::debug!(%error, "UDP send failed");
            }
        }
        if pending >= FLUSH_EVERY || (pending > 0 && flushed.elapsed() > Duration::from_secs(1)) {
            flush(&handler, &mut counts);
            pending = 0;
            flushed = Instant::now();
        }
    }
    flush(&handler, &mut counts);
}

fn socket_addr(address: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
}
