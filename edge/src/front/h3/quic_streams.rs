//! QUIC streams for `h3`, over quinn: `h3`'s transport traits (`h3::quic`), with DATA
//! frames handed to quinn without a copy.
//!
//! Forked from `h3-quinn` 0.0.10 (<https://github.com/hyperium/h3>, MIT OR Apache-2.0,
//! copyright the h3 authors): the connection, stream opening and accepting, stop, reset
//! and finish behave as there. What differs is the send path. `h3-quinn` writes each
//! frame through quinn's `poll_write(&[u8])`, which copies every byte into quinn's send
//! buffer: 8-11% of the edge's CPU went to that `memmove` on 16 KiB hits. Here a frame is
//! handed to quinn as two `Bytes` (`write_chunks`): its few header bytes, copied, and its
//! payload, which quinn keeps as it is: the stored body's shared bytes reach quinn's
//! send buffer without a copy (one copy remains, into the packet as it is sealed).
//!
//! `h3` gives a frame to the transport as a [`WriteBuf`], whose payload is reachable only
//! through `Buf` (`chunk`, `advance`): the payload is made a `Bytes` by
//! [`Bytes::from_owner`] over the `WriteBuf` itself (its `chunk()` is the payload's whole
//! slice once the header is consumed, as it is for a `Bytes` payload), so the bytes stay
//! where they are and the `WriteBuf` (holding the original `Bytes`) lives as long as
//! quinn needs them.
//!
//! quinn's `write_chunks` and `read_chunk` are `async` and borrow the stream; both are
//! polled by building the future afresh on each poll and dropping it when pending, as
//! quinn's own `poll_write` does: they hold no state between polls (a pending call has
//! taken nothing and only registered the waker), so no future needs to own the stream.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::stream::{self, Stream, StreamExt};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::{AcceptBi, AcceptUni, OpenBi, OpenUni, VarInt};

/// A boxed stream that is `Sync`, as `h3` requires of the connection.
type BoxStreamSync<T> = Pin<Box<dyn Stream<Item = T> + Sync + Send>>;

/// A QUIC connection as `h3` sees it.
pub struct Connection {
    conn: quinn::Connection,
    incoming_bi: BoxStreamSync<<AcceptBi<'static> as Future>::Output>,
    opening_bi: Option<BoxStreamSync<<OpenBi<'static> as Future>::Output>>,
    incoming_uni: BoxStreamSync<<AcceptUni<'static> as Future>::Output>,
    opening_uni: Option<BoxStreamSync<<OpenUni<'static> as Future>::Output>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.conn.stable_id())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(conn: quinn::Connection) -> Self {
        Self {
            incoming_bi: Box::pin(stream::unfold(conn.clone(), |conn| async {
                Some((conn.accept_bi().await, conn))
            })),
            opening_bi: None,
            incoming_uni: Box::pin(stream::unfold(conn.clone(), |conn| async {
                Some((conn.accept_uni().await, conn))
            })),
            opening_uni: None,
            conn,
        }
    }
}

impl<B> quic::Connection<B> for Connection
where
    B: Buf + Send + 'static,
{
    type RecvStream = RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let (send, recv) = ready!(self.incoming_bi.poll_next_unpin(cx))
            .expect("an unfold of accept_bi never ends")
            .map_err(convert_connection_error)?;
        Poll::Ready(Ok(BidiStream {
            send: SendStream::new(send),
            recv: RecvStream::new(recv),
        }))
    }

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        let recv = ready!(self.incoming_uni.poll_next_unpin(cx))
            .expect("an unfold of accept_uni never ends")
            .map_err(convert_connection_error)?;
        Poll::Ready(Ok(RecvStream::new(recv)))
    }

    fn opener(&self) -> Self::OpenStreams {
        OpenStreams {
            conn: self.conn.clone(),
            opening_bi: None,
            opening_uni: None,
        }
    }
}

impl<B> quic::OpenStreams<B> for Connection
where
    B: Buf + Send + 'static,
{
    type SendStream = SendStream<B>;
    type BidiStream = BidiStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        poll_open_bidi(&self.conn, &mut self.opening_bi, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        poll_open_send(&self.conn, &mut self.opening_uni, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        close(&self.conn, code, reason);
    }
}

/// Opens streams on a connection (`h3`'s handle for sending requests or control data).
pub struct OpenStreams {
    conn: quinn::Connection,
    opening_bi: Option<BoxStreamSync<<OpenBi<'static> as Future>::Output>>,
    opening_uni: Option<BoxStreamSync<<OpenUni<'static> as Future>::Output>>,
}

impl std::fmt::Debug for OpenStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStreams")
            .field("id", &self.conn.stable_id())
            .finish_non_exhaustive()
    }
}

impl Clone for OpenStreams {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            opening_bi: None,
            opening_uni: None,
        }
    }
}

impl<B> quic::OpenStreams<B> for OpenStreams
where
    B: Buf + Send + 'static,
{
    type SendStream = SendStream<B>;
    type BidiStream = BidiStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        poll_open_bidi(&self.conn, &mut self.opening_bi, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        poll_open_send(&self.conn, &mut self.opening_uni, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        close(&self.conn, code, reason);
    }
}

// Opening keeps its `open_bi`/`open_uni` future across polls (it waits on a `Notify`
// for stream credit), boxed once per connection as in `h3-quinn`.
fn poll_open_bidi<B: Buf + Send + 'static>(
    conn: &quinn::Connection,
    opening: &mut Option<BoxStreamSync<<OpenBi<'static> as Future>::Output>>,
    cx: &mut Context<'_>,
) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
    let bi = opening.get_or_insert_with(|| {
        Box::pin(stream::unfold(conn.clone(), |conn| async {
            Some((conn.open_bi().await, conn))
        }))
    });
    let (send, recv) = ready!(bi.poll_next_unpin(cx))
        .expect("an unfold of open_bi never ends")
        .map_err(|e| StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: convert_connection_error(e),
        })?;
    Poll::Ready(Ok(BidiStream {
        send: SendStream::new(send),
        recv: RecvStream::new(recv),
    }))
}

fn poll_open_send<B: Buf + Send + 'static>(
    conn: &quinn::Connection,
    opening: &mut Option<BoxStreamSync<<OpenUni<'static> as Future>::Output>>,
    cx: &mut Context<'_>,
) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
    let uni = opening.get_or_insert_with(|| {
        Box::pin(stream::unfold(conn.clone(), |conn| async {
            Some((conn.open_uni().await, conn))
        }))
    });
    let send = ready!(uni.poll_next_unpin(cx))
        .expect("an unfold of open_uni never ends")
        .map_err(|e| StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: convert_connection_error(e),
        })?;
    Poll::Ready(Ok(SendStream::new(send)))
}

fn close(conn: &quinn::Connection, code: Code, reason: &[u8]) {
    conn.close(
        VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX),
        reason,
    );
}

fn convert_connection_error(e: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        error @ (quinn::ConnectionError::VersionMismatch
        | quinn::ConnectionError::Reset
        | quinn::ConnectionError::LocallyClosed
        | quinn::ConnectionError::CidsExhausted
        | quinn::ConnectionError::TransportError(_)
        | quinn::ConnectionError::ConnectionClosed(_)) => {
            ConnectionErrorIncoming::Undefined(Arc::new(error))
        }
    }
}

/// A bidirectional (request) stream; `h3` splits it into its two halves.
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> std::fmt::Debug for BidiStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BidiStream")
            .field("id", &self.send.stream.id())
            .finish_non_exhaustive()
    }
}

impl<B: Buf + Send + 'static> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf + Send + 'static> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }

    fn send_data<D: Into<WriteBuf<B>>>(&mut self, data: D) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl<B: Buf + Send + 'static> quic::SendStreamUnframed<B> for BidiStream<B> {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        self.send.poll_send(cx, buf)
    }
}

/// The receiving half of a stream: its data as quinn hands it over (no copy either).
#[derive(Debug)]
pub struct RecvStream {
    stream: quinn::RecvStream,
}

impl RecvStream {
    fn new(stream: quinn::RecvStream) -> Self {
        Self { stream }
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        // Built afresh on each poll (see the module docs): a pending read took nothing.
        let chunk = ready!(pin!(self.stream.read_chunk(usize::MAX, true)).poll(cx));
        Poll::Ready(
            chunk
                .map(|chunk| chunk.map(|c| c.bytes))
                .map_err(convert_read_error),
        )
    }

    fn stop_sending(&mut self, error_code: u64) {
        let _ = self
            .stream
            .stop(VarInt::from_u64(error_code).unwrap_or(VarInt::MAX));
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

fn stream_id(id: quinn::StreamId) -> StreamId {
    StreamId::try_from(u64::from(id)).expect("a QUIC stream id is a valid h3 stream id")
}

fn convert_read_error(error: quinn::ReadError) -> StreamErrorIncoming {
    match error {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: convert_connection_error(e),
        },
        // Reads here are ordered, so `IllegalOrderedRead` cannot happen; were it to, the
        // stream fails rather than the process.
        error @ (quinn::ReadError::ClosedStream
        | quinn::ReadError::IllegalOrderedRead
        | quinn::ReadError::ZeroRttRejected) => StreamErrorIncoming::Unknown(Box::new(error)),
    }
}

fn convert_write_error(error: quinn::WriteError) -> StreamErrorIncoming {
    match error {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: convert_connection_error(e),
        },
        error @ (quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected) => {
            StreamErrorIncoming::Unknown(Box::new(error))
        }
    }
}

/// The sending half of a stream. `h3` gives it one frame at a time ([`Self::send_data`])
/// and polls [`Self::poll_ready`] until quinn has taken the whole frame.
pub struct SendStream<B: Buf> {
    stream: quinn::SendStream,
    /// The frame being written: `chunks[next..]` are still to go (empty ones left out).
    writing: Option<Frame>,
    _payload: std::marker::PhantomData<fn(B)>,
}

impl<B: Buf> std::fmt::Debug for SendStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream")
            .field("id", &self.stream.id())
            .field("writing", &self.writing.is_some())
            .finish()
    }
}

/// A frame as quinn takes it: header, then payload.
struct Frame {
    chunks: [Bytes; 2],
    next: usize,
}

impl Frame {
    /// Empty chunks are left out: `chunks[next..]` are the non-empty ones, in order.
    fn new(header: Bytes, payload: Bytes) -> Self {
        let empty = Bytes::new;
        match (header.is_empty(), payload.is_empty()) {
            (false, false) => Self {
                chunks: [header, payload],
                next: 0,
            },
            (false, true) => Self {
                chunks: [empty(), header],
                next: 1,
            },
            (true, false) => Self {
                chunks: [empty(), payload],
                next: 1,
            },
            (true, true) => Self {
                chunks: [empty(), empty()],
                next: 2,
            },
        }
    }
}

/// A frame's payload as a `Bytes`: the rest of its [`WriteBuf`] once the header is
/// consumed, when that rest is one slice (a `Bytes` payload always is).
struct Payload<B>(WriteBuf<B>);

impl<B: Buf> AsRef<[u8]> for Payload<B> {
    fn as_ref(&self) -> &[u8] {
        self.0.chunk()
    }
}

impl<B: Buf> SendStream<B> {
    fn new(stream: quinn::SendStream) -> Self {
        Self {
            stream,
            writing: None,
            _payload: std::marker::PhantomData,
        }
    }
}

impl<B: Buf + Send + 'static> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(frame) = &mut self.writing {
            while frame.next < frame.chunks.len() {
                // Built afresh on each poll (see the module docs): a pending write took
                // nothing; a partial one advanced the chunk it stopped in.
                let written = ready!(
                    pin!(self.stream.write_chunks(&mut frame.chunks[frame.next..])).poll(cx)
                )
                .map_err(convert_write_error)?;
                frame.next += written.chunks;
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self
            .stream
            .reset(VarInt::from_u64(reset_code).unwrap_or(VarInt::MAX));
    }

    fn send_data<D: Into<WriteBuf<B>>>(&mut self, data: D) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            // Only `h3` misusing the traits gets here.
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data called before the previous frame was written".to_owned(),
                ),
            });
        }
        let mut buf: WriteBuf<B> = data.into();
        // The frame header (and a stream type) comes first, as one chunk of a few bytes.
        let header = Bytes::copy_from_slice(buf.chunk());
        buf.advance(header.len());
        let rest = buf.remaining();
        let payload = if rest == 0 {
            Bytes::new()
        } else if buf.chunk().len() == rest {
            Bytes::from_owner(Payload(buf))
        } else {
            buf.copy_to_bytes(rest)
        };
        self.writing = Some(Frame::new(header, payload));
        Ok(())
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

impl<B: Buf + Send + 'static> quic::SendStreamUnframed<B> for SendStream<B> {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        if self.writing.is_some() {
            return Poll::Ready(Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "poll_send called before the previous frame was written".to_owned(),
                ),
            }));
        }
        let written = ready!(Pin::new(&mut self.stream).poll_write(cx, buf.chunk()))
            .map_err(convert_write_error)?;
        buf.advance(written);
        Poll::Ready(Ok(written))
    }
}
