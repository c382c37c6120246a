//! Batched writes for an HTTP/2 connection: what the `h2` crate writes in one turn of
//! the connection is held and sent in one piece when the turn ends, instead of a system
//! call (and a TLS record) per response.
//!
//! Why: `h2` writes each response's DATA payload with its own `writev` (its encoder
//! holds one payload at a time and flushes before taking the next), so ten requests
//! that arrive together are answered with ten `writev`s; on loopback a `writev` with
//! the receiver's wakeup was half the node's CPU under HTTP/2 hits (BENCHMARKS.md
//! "Tails, handshakes, HTTP/2 and large objects"). Here the writes land in a buffer,
//! which goes out when the owner's poll of the connection ends ([`Batch::poll`]), or
//! at once past [`HIGH_WATER`].
//!
//! The one departure from the `AsyncWrite` contract: `poll_flush` returns before the
//! bytes are sent. The owner's duty in exchange: every poll of the connection goes
//! through [`Batch::poll`], which sends what is held when the connection waits. So a
//! connection never waits with bytes held, batches are as large as one turn's writes,
//! and sending costs no extra poll of the connection or wake of the task.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes out without waiting for the turn to end.
pub const HIGH_WATER: usize = 64 * 1024;

/// A stream whose writes are sent in batches (see the module doc): the half the
/// connection owns.
#[derive(Debug)]
pub struct WriteBatch<S>(Arc<Mutex<Held<S>>>);

/// The owner's half: every poll of the connection goes through [`Batch::poll`].
#[derive(Debug)]
pub struct Batch<S>(Arc<Mutex<Held<S>>>);

#[derive(Debug)]
struct Held<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` the inner stream has taken.
    sent: usize,
    /// A send at the end of a turn failed: the next write reports it.
    failed: Option<io::ErrorKind>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WriteBatch<S> {
    /// The stream for the connection, and the handle its owner polls it through.
    pub fn new(inner: S) -> (Self, Batch<S>) {
        let held = Arc::new(Mutex::new(Held {
            inner,
            pending: Vec::new(),
            sent: 0,
            failed: None,
        }));
        (Self(held.clone()), Batch(held))
    }

    fn held(&self) -> MutexGuard<'_, Held<S>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Batch<S> {
    /// Polls `poll` (which drives the connection); when it waits, sends what it wrote.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let polled = poll(cx);
        if polled.is_pending() {
            let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if held.unsent() > 0 {
                // Pending: the socket wakes the task when it takes more, and the poll
                // that follows sends the rest.
                if let Poll::Ready(Err(error)) = held.poll_send(cx) {
                    held.failed = Some(error.kind());
                }
            }
        }
        polled
    }

    /// Bytes written and not yet sent.
    pub fn unsent(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unsent()
    }
}

impl<S: AsyncWrite + Unpin> Held<S> {
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Sends everything held, then flushes the inner stream.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        if self.pending.capacity() > 4 * HIGH_WATER {
            self.pending = Vec::new(); // a burst's buffer is not kept by an idle connection
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn check(&mut self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WriteBatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.held().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WriteBatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut held = self.held();
        held.check()?;
        if held.unsent() >= HIGH_WATER {
            ready!(held.poll_send(cx))?;
        }
        let mut taken = 0;
        for slice in data {
            held.pending.extend_from_slice(slice);
            taken += slice.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.held();
        held.check()?;
        if held.unsent() >= HIGH_WATER {
            return held.poll_send(cx);
        }
        // Sent when the turn ends (`Batch::poll`).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = self.held();
        ready!(held.poll_send(cx))?;
        Pin::new(&mut held.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn a_turn_s_writes_are_held_and_sent_in_one_piece_when_it_waits() {
        let (near, mut far) = duplex(1 << 20);
        let (mut stream, batch) = WriteBatch::new(near);
        // One turn: two responses written and flushed, then a read that finds nothing.
        let turn = std::future::poll_fn(|cx| {
            Poll::Ready(batch.poll(cx, |cx| {
                let mut written = Pin::new(&mut stream).poll_write(cx, b"one ");
                assert!(matches!(written, Poll::Ready(Ok(4))));
                assert!(Pin::new(&mut stream).poll_flush(cx).is_ready());
                written = Pin::new(&mut stream).poll_write(cx, b"two");
                assert!(matches!(written, Poll::Ready(Ok(3))));
                assert!(Pin::new(&mut stream).poll_flush(cx).is_ready());
                assert_eq!(batch_unsent(&stream), 7, "flush holds the bytes");
                let mut scratch = [0u8; 8];
                let mut buf = ReadBuf::new(&mut scratch);
                Pin::new(&mut stream).poll_read(cx, &mut buf).map(|_| ())
            }))
        })
        .await;
        assert!(turn.is_pending(), "nothing to read: the turn waits");
        assert_eq!(batch.unsent(), 0, "and what it wrote is sent");
        let mut got = [0u8; 7];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");

        // A turn that ends ready (a request read) keeps what it wrote for the next.
        far.write_all(b"ping").await.unwrap();
        stream.write_all(b"three").await.unwrap();
        let mut scratch = [0u8; 8];
        let turn = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut scratch);
            Poll::Ready(batch.poll(cx, |cx| {
                Pin::new(&mut stream)
                    .poll_read(cx, &mut buf)
                    .map(|read| read.map(|()| buf.filled().len()))
            }))
        })
        .await;
        assert!(matches!(turn, Poll::Ready(Ok(4))));
        assert_eq!(&scratch[..4], b"ping");
        assert_eq!(batch.unsent(), 5);

        // Shutdown sends what is held.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"three");
    }

    fn batch_unsent<S: AsyncRead + AsyncWrite + Unpin>(stream: &WriteBatch<S>) -> usize {
        stream.held().unsent()
    }

    #[tokio::test]
    async fn past_the_high_water_mark_writes_go_out_within_the_turn() {
        let (near, mut far) = duplex(4 * HIGH_WATER);
        let (mut stream, batch) = WriteBatch::new(near);
        let chunk = vec![7u8; HIGH_WATER];
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(&chunk).await.unwrap();
        assert_eq!(batch.unsent(), HIGH_WATER, "the first chunk went out");
        let mut got = vec![0u8; HIGH_WATER];
        far.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn a_failed_send_at_the_end_of_a_turn_is_reported_by_the_next_write() {
        let (near, far) = duplex(1 << 16);
        let (mut stream, batch) = WriteBatch::new(near);
        stream.write_all(b"lost").await.unwrap();
        drop(far);
        let turn =
            std::future::poll_fn(|cx| Poll::Ready(batch.poll(cx, |_| Poll::<()>::Pending))).await;
        assert!(turn.is_pending());
        assert!(stream.write_all(b"next").await.is_err());
    }
}
