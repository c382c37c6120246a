//! A body that is still arriving from the upstream, readable from the start by any number
//! of clients while it grows: the fill of a large object streams to every waiter, and a
//! client that joins mid-fill reads what has arrived so far and then keeps up, instead of
//! causing a second origin fetch.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::cache::BoxError;

#[derive(Debug, Default)]
struct State {
    chunks: Vec<Bytes>,
    /// `Some(true)` complete, `Some(false)` failed (readers get an error).
    end: Option<bool>,
    wakers: Vec<Waker>,
}

/// The shared, growing body of one fill.
#[derive(Debug)]
pub struct GrowingBody {
    /// The length the upstream declared.
    len: u64,
    state: Mutex<State>,
}

impl GrowingBody {
    pub fn new(len: u64) -> Arc<Self> {
        Arc::new(Self {
            len,
            state: Mutex::default(),
        })
    }

    /// Appends a chunk and wakes every reader waiting for it.
    pub fn push(&self, chunk: Bytes) {
        let wakers = {
            let mut state = self.lock();
            state.chunks.push(chunk);
            std::mem::take(&mut state.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Marks the body complete (`true`) or failed (`false`) and wakes every reader.
    pub fn finish(&self, complete: bool) {
        let wakers = {
            let mut state = self.lock();
            state.end.get_or_insert(complete);
            std::mem::take(&mut state.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// A reader starting at the first byte.
    pub fn reader(self: &Arc<Self>) -> GrowingReader {
        GrowingReader {
            body: self.clone(),
            next: 0,
            sent: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One client's position in a [`GrowingBody`].
#[derive(Debug)]
pub struct GrowingReader {
    body: Arc<GrowingBody>,
    next: usize,
    sent: u64,
}

/// The upstream body failed before it was complete.
#[derive(Debug, thiserror::Error)]
#[error("the upstream body ended early; the response is incomplete")]
pub struct Truncated;

impl Body for GrowingReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut state = this.body.lock();
        if let Some(chunk) = state.chunks.get(this.next).cloned() {
            this.next += 1;
            this.sent += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match state.end {
            Some(true) => Poll::Ready(None),
            Some(false) => Poll::Ready(Some(Err(Box::new(Truncated)))),
            None => {
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.body.len && self.body.lock().end == Some(true)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.body.len.saturating_sub(self.sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn readers_that_join_late_read_from_the_start_and_keep_up() {
        let body = GrowingBody::new(6);
        body.push(Bytes::from_static(b"abc"));
        let early = body.reader();
        let grower = body.clone();
        let task = tokio::spawn(async move { early.collect().await.unwrap().to_bytes() });
        tokio::task::yield_now().await;
        let late = body.reader();
        grower.push(Bytes::from_static(b"def"));
        grower.finish(true);
        assert_eq!(&task.await.unwrap()[..], b"abcdef");
        assert_eq!(&late.collect().await.unwrap().to_bytes()[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_failed_fill_ends_every_reader_with_an_error() {
        let body = GrowingBody::new(10);
        body.push(Bytes::from_static(b"abc"));
        let reader = body.reader();
        body.finish(false);
        assert!(reader.collect().await.is_err());
    }

    #[test]
    fn size_hints_count_what_is_left() {
        let body = GrowingBody::new(10);
        assert_eq!(body.reader().size_hint().exact(), Some(10));
    }
}
