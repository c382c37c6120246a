//! Batched writes for an HTTP/2 connection: what the `h2` crate writes is held and sent
//! in one piece when the connection has read everything the client sent, instead of a
//! system call (and a TLS record) per response.
//!
//! Why: `h2` writes each response's DATA payload with its own `writev` (its encoder
//! holds one payload at a time and flushes before taking the next), so ten requests
//! that arrive together are answered with ten `writev`s; on loopback a `writev` with
//! the receiver's wakeup was half the node's CPU under HTTP/2 hits (BENCHMARKS.md
//! "HTTP/2 hits"). Here the writes land in a buffer, and the buffer goes out when a
//! read finds nothing more to read (the connection is about to wait for the client), or
//! when it reaches [`HIGH_WATER`].
//!
//! The one departure from the `AsyncWrite` contract: `poll_flush` returns before the
//! bytes are sent. The owner polls the connection through [`Batch::poll`], which, when a
//! poll would leave bytes held as the task waits, polls once more with the dry read
//! allowed to send them. So batches are as large as what one turn of the connection
//! wrote (ten requests read together: one write), and a connection never waits with
//! bytes held. No wake is spent on it: on one stream per connection, a wake per response
//! cost a tenth of the node's CPU.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes out without waiting for the reads to run dry.
pub const HIGH_WATER: usize = 64 * 1024;

/// A stream whose writes are sent in batches (see the module doc).
#[derive(Debug)]
pub struct WriteBatch<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` the inner stream has taken.
    sent: usize,
    batch: Batch,
}

/// The owner's side of a [`WriteBatch`]: every poll of what reads and writes the stream
/// goes through [`Batch::poll`].
#[derive(Debug, Clone, Default)]
pub struct Batch(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    /// A flush left bytes held.
    unsent: AtomicBool,
    /// The next read that finds nothing sends what is held.
    send: AtomicBool,
}

impl Batch {
    /// Polls `poll` (which drives the stream); when it would wait with bytes held, polls
    /// it once more letting the read that finds nothing send them.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        match poll(cx) {
            Poll::Pending if self.0.unsent.swap(false, Ordering::Relaxed) => {
                self.0.send.store(true, Ordering::Relaxed);
                poll(cx)
            }
            polled => polled,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WriteBatch<S> {
    /// The stream, and the handle its owner polls it through.
    pub fn new(inner: S) -> (Self, Batch) {
        let batch = Batch::default();
        let stream = Self {
            inner,
            pending: Vec::new(),
            sent: 0,
            batch: batch.clone(),
        };
        (stream, batch)
    }

    /// Bytes written and not yet sent.
    pub fn held(&self) -> usize {
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
        self.batch.0.send.store(false, Ordering::Relaxed);
        if self.pending.capacity() > 4 * HIGH_WATER {
            self.pending = Vec::new(); // a burst's buffer is not kept by an idle connection
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WriteBatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.held() == 0 || !this.batch.0.send.load(Ordering::Relaxed) => {
                Poll::Pending
            }
            Poll::Pending => match this.poll_send(cx) {
                // Sent, or waiting for the socket to take it: either way the task is
                // woken by the socket, to read or to send the rest.
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            },
            ready => ready,
        }
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
        let this = self.get_mut();
        if this.held() >= HIGH_WATER {
            ready!(this.poll_send(cx))?;
        }
        let mut taken = 0;
        for slice in data {
            this.pending.extend_from_slice(slice);
            taken += slice.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held() >= HIGH_WATER {
            return this.poll_send(cx);
        }
        if this.held() > 0 {
            // The owner polls again before waiting: that poll's dry read sends.
            this.batch.0.unsent.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// One poll of a read of `stream` through `batch`, as the owner makes it.
    async fn poll_read_once(
        batch: &Batch,
        stream: &mut WriteBatch<tokio::io::DuplexStream>,
        into: &mut [u8],
    ) -> Poll<usize> {
        std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(into);
            let polled = batch.poll(cx, |cx| Pin::new(&mut *stream).poll_read(cx, &mut buf));
            Poll::Ready(polled.map(|read| read.map(|()| buf.filled().len()).unwrap()))
        })
        .await
    }

    #[tokio::test]
    async fn writes_are_held_through_a_turn_and_sent_before_the_owner_waits() {
        let (near, mut far) = duplex(1 << 20);
        let (mut stream, batch) = WriteBatch::new(near);
        stream.write_all(b"one ").await.unwrap();
        stream.flush().await.unwrap();
        // A dry read in the middle of the turn sends nothing: more may be written.
        let mut scratch = [0u8; 8];
        let mut buf = ReadBuf::new(&mut scratch);
        let dry = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut stream).poll_read(cx, &mut buf).is_pending())
        })
        .await;
        assert!(dry);
        stream.write_all(b"two").await.unwrap();
        stream.flush().await.unwrap();
        assert_eq!(stream.held(), 7, "flush holds the bytes");

        // The owner's poll that would wait sends them, in one piece.
        assert!(
            poll_read_once(&batch, &mut stream, &mut scratch)
                .await
                .is_pending()
        );
        assert_eq!(stream.held(), 0);
        let mut got = [0u8; 7];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");

        // Input is read as it is; shutdown sends what is held.
        far.write_all(b"ping").await.unwrap();
        let read = poll_read_once(&batch, &mut stream, &mut scratch).await;
        assert_eq!(read, Poll::Ready(4));
        assert_eq!(&scratch[..4], b"ping");
        stream.write_all(b"last").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
    }

    #[tokio::test]
    async fn past_the_high_water_mark_writes_go_out_without_a_read() {
        let (near, mut far) = duplex(4 * HIGH_WATER);
        let (mut stream, _) = WriteBatch::new(near);
        let chunk = vec![7u8; HIGH_WATER];
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(&chunk).await.unwrap();
        assert_eq!(stream.held(), HIGH_WATER, "the first chunk went out");
        let mut got = vec![0u8; HIGH_WATER];
        far.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 7));
    }
}
