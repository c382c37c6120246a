//! Per-client limits enforced around the socket: open connections per client IP address
//! (at accept) and the write timeout (a client that stops reading); and `[limits]`, the
//! config of every limit on what clients may send ([`LimitsConfig`]).
//!
//! The other request limits live where the input is read: head size, field count, target
//! length and declared body size in [`crate::front::connection`] (and again by the node's
//! full path for requests hyper parsed), HTTP/2 stream limits in [`crate::front::h2`], the
//! TLS handshake deadline in [`crate::front::https`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// What a client over its connection limit is told before the connection is closed.
pub const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\nretry-after: 1\r\n\
content-length: 75\r\nconnection: close\r\n\r\n\
429 Too Many Requests: too many open connections from your address; retry.\n";

/// Open connections by client address, bounded by `max` each (0: unbounded).
///
/// Invariant: an address is in the map exactly while it has at least one open
/// connection, so the map holds no more entries than there are connections.
#[derive(Debug)]
pub struct ConnectionsPerIp {
    /// 0: no limit. Changed by a config reload: connections open over a lowered limit
    /// stay, and those admitted while there was no limit are not counted against one.
    max: AtomicUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct IpSlot {
    owner: Option<(Arc<ConnectionsPerIp>, IpAddr)>,
}

impl ConnectionsPerIp {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            open: Mutex::default(),
        })
    }

    /// Admits up to `max` per address from now on.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Admits one more connection from `ip`, or `None` when it already has `max` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            return Some(IpSlot { owner: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: Some((self.clone(), ip)),
        })
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some((owner, ip)) = self.owner.take() else {
            return;
        };
        let mut open = owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_allowance_and_places_come_back() {
        let limit = ConnectionsPerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limit.admit(a).unwrap();
        let _second = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
        assert!(limit.admit(b).is_some());
        drop(first);
        assert_eq!(limit.open(a), 1);
        assert!(limit.admit(a).is_some());
        assert_eq!(
            limit.open(b),
            0,
            "the map forgets addresses without connections"
        );
    }

    #[test]
    fn the_refusal_is_well_framed() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn zero_means_unbounded() {
        let limit = ConnectionsPerIp::new(0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| limit.admit(ip).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
    }
}

/// A client stream whose writes fail with `TimedOut` once the client has not taken any
/// data for `timeout` (a reader that never reads would otherwise hold its connection, and
/// the response it pins, forever). Reads pass straight through: idle time between
/// requests is bounded by `header_read_timeout` where the head is read.
///
/// Cost: nothing while writes complete; a timer is armed only when a write would block,
/// and re-armed once per stall, never per request.
#[derive(Debug)]
pub struct WriteTimeout<S> {
    inner: S,
    timeout: std::time::Duration,
    /// When the current stall began; `None` while writes make progress.
    blocked_since: Option<tokio::time::Instant>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timeout,
            blocked_since: None,
            sleep: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Called when the inner stream made progress (`Ready`) or would block (`Pending`):
    /// every write-like call on the stream goes through here, `sendfile` included.
    pub(crate) fn check_progress<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        use std::task::Poll;
        if polled.is_ready() {
            self.blocked_since = None;
            return polled;
        }
        let deadline = *self
            .blocked_since
            .get_or_insert_with(tokio::time::Instant::now)
            + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no data for limits.write_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check_progress(cx, polled)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check_progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.check_progress(cx, polled)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check_progress(cx, polled)
    }
}

/// Limits on what clients may send.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request head (request line and headers); larger gets `431`.
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request; more gets `431`.
    pub max_headers: usize,
    /// Time a client has to send a complete request head (slowloris defence); also the
    /// keep-alive idle timeout between requests.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest request target (path and query) in bytes; longer gets `414`.
    pub max_uri_bytes: usize,
    /// Largest request body; a larger `Content-Length` gets `413` before anything is read.
    pub max_body_bytes: ByteSize,
    /// Time a client may pause between two pieces of a request body before it is answered
    /// `408` and the connection closed. A slow body is the client's fault: it never waits
    /// for, or counts against, the upstream.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Time a write to a client may stay blocked (a reader that never reads) before the
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Open connections allowed from one client IP address, on each public listener;
    /// more are answered `429` and closed. 0: no limit.
    ///
    /// The default, 4,096, is for one address that is many users: behind carrier-grade
    /// NAT (RFC 6888) one public IPv4 address carries the ports of up to a few hundred
    /// subscribers, each browser opening up to six HTTP/1.1 connections per host, and a
    /// corporate proxy or a mobile gateway more. 512 refused a third of a
    /// 1,000-connection load from one address. 4,096 still keeps one address to a small
    /// share of a node's descriptors (tens to hundreds of thousands), which is what the
    /// limit is for; a flood from many addresses is the admission limits' business.
    pub max_connections_per_ip: usize,
    /// Time a client has to complete a TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: streams reset by the client before the server saw them, pending at once
    /// (the "rapid reset" attack, CVE-2023-44487); beyond it the connection is closed.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2: streams the server had to reset for the client's errors before it closes
    /// the connection (CVE-2024-27316-style floods, with `max_header_bytes` bounding
    /// CONTINUATION frames).
    pub h2_max_local_error_reset_streams: usize,
    /// HTTP/3: request streams a client may have open at once on one connection.
    pub h3_max_concurrent_streams: u32,
    /// HTTP/3: handshakes in progress at once above which a client whose address is not
    /// yet proven is sent a Retry (stateless) and must come back with its token, so a
    /// flood of Initial packets from spoofed addresses holds no state. 0: every client.
    pub h3_retry_above: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: ByteSize::kib(32),
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_uri_bytes: 8192,
            max_body_bytes: ByteSize::mib(16),
            body_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections_per_ip: 4096,
            tls_handshake_timeout: Duration::from_secs(10),
            h2_max_concurrent_streams: 128,
            h2_max_pending_accept_reset_streams: 32,
            h2_max_local_error_reset_streams: 256,
            h3_max_concurrent_streams: 128,
            h3_retry_above: 64,
        }
    }
}
