//! The body type of every response the edge sends.
//!
//! Hits send a stored `Bytes` as one frame without boxing or copying; everything else
//! (passed-through and too-large responses) streams from the upstream, possibly after a
//! prefix the edge already read while deciding whether to store.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::cache::BoxError;
use crate::cache::disk::{DiskBody, DiskError};
use crate::cache::growing_body::GrowingReader;
use crate::upstream::client::UpstreamError;
use futures_util::future::BoxFuture;

/// A response body.
#[derive(Debug)]
pub enum EdgeBody {
    /// A complete body in memory (possibly empty).
    Full(Option<Bytes>),
    /// A complete body in memory in several pieces (e.g. slices of a stored body).
    Chunks(VecDeque<Bytes>),
    /// A fill still arriving, shared with every other client reading it.
    Growing(GrowingReader),
    /// Chunks already read, then the rest of an upstream body.
    Stream {
        prefix: VecDeque<Bytes>,
        rest: Incoming,
    },
    /// A range of an object cached in slices, assembled as the slices come.
    Sliced(SliceBody),
    /// A body (or a range of it) read from the disk tier one checked frame at a time.
    Disk(DiskStream),
    /// Another body, its bytes counted for the access log.
    Tallied(Box<Tallied>),
}

impl EdgeBody {
    pub fn empty() -> Self {
        EdgeBody::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        EdgeBody::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub fn stream(prefix: VecDeque<Bytes>, rest: Incoming) -> Self {
        EdgeBody::Stream { prefix, rest }
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            EdgeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            EdgeBody::Chunks(chunks) => Poll::Ready(chunks.pop_front().map(|b| Ok(Frame::data(b)))),
            EdgeBody::Growing(reader) => Pin::new(reader).poll_frame(cx),
            EdgeBody::Sliced(body) => Pin::new(body).poll_frame(cx),
            EdgeBody::Disk(body) => body.poll_frame(cx),
            EdgeBody::Tallied(body) => body.poll_frame(cx),
            EdgeBody::Stream { prefix, rest } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Pin::new(rest)
                    .poll_frame(cx)
                    .map_err(|e| Box::new(e) as BoxError)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Full(bytes) => bytes.is_none(),
            EdgeBody::Chunks(chunks) => chunks.is_empty(),
            EdgeBody::Growing(reader) => reader.is_end_stream(),
            EdgeBody::Sliced(body) => body.is_end_stream(),
            EdgeBody::Disk(body) => body.remaining == 0,
            EdgeBody::Tallied(body) => body.inner.is_end_stream(),
            EdgeBody::Stream { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            EdgeBody::Chunks(chunks) => {
                SizeHint::with_exact(chunks.iter().map(|b| b.len() as u64).sum())
            }
            EdgeBody::Growing(reader) => reader.size_hint(),
            EdgeBody::Sliced(body) => body.size_hint(),
            EdgeBody::Disk(body) => SizeHint::with_exact(body.remaining),
            EdgeBody::Tallied(body) => body.inner.size_hint(),
            EdgeBody::Stream { prefix, rest } => {
                let buffered: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(buffered + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(buffered + upper);
                }
                hint
            }
        }
    }
}

/// What a [`Tallied`] body reports once: body bytes sent, and whether it ended (`false`:
/// dropped first, the client gone or the body broken off).
pub type TallyDone = Box<dyn FnOnce(u64, bool) + Send + Sync>;

/// A body whose data bytes are counted and whose end is reported once, when it ends or,
/// if first, when it is dropped: what the access log learns of a response's body,
/// whichever protocol writes it.
pub struct Tallied {
    inner: EdgeBody,
    sent: u64,
    done: Option<TallyDone>,
}

impl std::fmt::Debug for Tallied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tallied")
            .field("inner", &self.inner)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Tallied {
    pub fn wrap(inner: EdgeBody, done: TallyDone) -> EdgeBody {
        EdgeBody::Tallied(Box::new(Tallied {
            inner,
            sent: 0,
            done: Some(done),
        }))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            done(self.sent, complete);
        }
    }
}

impl Drop for Tallied {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

/// The next frame of a disk body, with the body to read the one after from.
type NextFrame = BoxFuture<'static, (DiskBody, Option<Result<Bytes, DiskError>>)>;

/// A body streamed from the disk tier: one frame (at most 64 KiB) read and checked at a
/// time, so memory stays at a frame whatever the object's size. A frame that fails its
/// check (or whose segment was reclaimed meanwhile) ends the body with an error, which
/// aborts the response: the bytes sent so far were right, the rest cannot be had.
pub struct DiskStream {
    body: Option<DiskBody>,
    reading: Option<NextFrame>,
    remaining: u64,
}

impl std::fmt::Debug for DiskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStream")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl DiskStream {
    pub fn new(body: DiskBody) -> Self {
        Self {
            remaining: body.remaining(),
            body: Some(body),
            reading: None,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(reading) = &mut self.reading {
                let (body, next) = std::task::ready!(reading.as_mut().poll(cx));
                self.reading = None;
                return Poll::Ready(match next {
                    Some(Ok(bytes)) => {
                        self.remaining = body.remaining();
                        self.body = Some(body);
                        Some(Ok(Frame::data(bytes)))
                    }
                    Some(Err(error)) => {
                        self.remaining = 0;
                        Some(Err(Box::new(error) as BoxError))
                    }
                    None => {
                        self.remaining = 0;
                        None
                    }
                });
            }
            let Some(mut body) = self.body.take().filter(|body| body.remaining() > 0) else {
                self.remaining = 0;
                return Poll::Ready(None);
            };
            self.reading = Some(Box::pin(async move {
                let next = body.next_frame().await;
                (body, next)
            }));
        }
    }
}

/// A response body assembled from slices as they come.
#[derive(Debug)]
pub struct SliceBody {
    opening: Option<Bytes>,
    rest: mpsc::Receiver<Result<Bytes, Arc<UpstreamError>>>,
    remaining: u64,
}

impl SliceBody {
    /// A body of `len` bytes: `opening` (already in hand), then whatever arrives on
    /// `rest`; an error there, or `rest` closing early, breaks the body off.
    pub fn new(
        opening: Bytes,
        rest: mpsc::Receiver<Result<Bytes, Arc<UpstreamError>>>,
        len: u64,
    ) -> Self {
        Self {
            opening: Some(opening),
            rest,
            remaining: len,
        }
    }
}

impl Body for SliceBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let next = match this.opening.take() {
            Some(bytes) => Some(Ok(bytes)),
            None if this.remaining == 0 => None,
            None => match this.rest.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            },
        };
        Poll::Ready(match next {
            Some(Ok(bytes)) => {
                this.remaining = this.remaining.saturating_sub(bytes.len() as u64);
                Some(Ok(Frame::data(bytes)))
            }
            Some(Err(error)) => Some(Err(Box::new(error) as BoxError)),
            None if this.remaining == 0 => None,
            None => Some(Err("the sliced body ended before its length".into())),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.opening.is_none() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
