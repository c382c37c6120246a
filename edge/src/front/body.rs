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
use crate::cache::growing_body::GrowingReader;
use crate::upstream::client::UpstreamError;

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
