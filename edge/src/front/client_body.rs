//! A client's request body on its way upstream, and whose fault it is when it fails.
//!
//! A request body streams from the client through this node to the upstream. When it
//! goes wrong (malformed chunked framing, more bytes than `limits.max_body_bytes`, a
//! client that stops sending), the upstream exchange fails too, and without care that
//! failure looks like the upstream's: a `502`, a strike against the server's passive
//! health, and any client could eject the shields one by one.
//!
//! So the body is wrapped in a [`ClientBody`], whose every error is a [`ClientFault`].
//! [`client_fault`](crate::upstream::fault::client_fault) finds it in the failed exchange's error chain, and
//! [`crate::upstream::client::UpstreamError::Client`] then carries the client's own status
//! (`400`, `413`, `408`) and never counts against a server's health or retries.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::cache::BoxError;
use crate::upstream::fault::ClientFault;

pin_project_lite::pin_project! {
    /// A client's request body with the node's limits: at most `limit` bytes, and no gap
    /// longer than `idle` between two frames. Every error it yields is a [`ClientFault`].
    pub struct ClientBody<B> {
        #[pin]
        inner: B,
        limit: u64,
        read: u64,
        idle: Duration,
        #[pin]
        timer: Sleep,
        done: bool,
    }
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, limit: u64, idle: Duration) -> Self {
        Self {
            inner,
            limit,
            read: 0,
            idle,
            timer: tokio::time::sleep(idle),
            done: false,
        }
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let fail = |done: &mut bool, fault: ClientFault| {
            *done = true;
            Poll::Ready(Some(Err(Box::new(fault) as BoxError)))
        };
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.read += data.len() as u64;
                    if *this.read > *this.limit {
                        return fail(this.done, ClientFault::TooLarge(*this.limit));
                    }
                }
                let idle = *this.idle;
                this.timer.as_mut().reset(Instant::now() + idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let error: BoxError = error.into();
                fail(this.done, ClientFault::Broken(error.to_string()))
            }
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => fail(this.done, ClientFault::TimedOut(*this.idle)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::fault::client_fault;
    use futures_util::StreamExt;
    use http::StatusCode;
    use http_body_util::{BodyExt, StreamBody};

    fn frames(
        parts: Vec<Result<&'static str, &'static str>>,
    ) -> impl Body<Data = Bytes, Error = BoxError> {
        let stream = futures_util::stream::iter(parts.into_iter().map(|part| {
            part.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))
                .map_err(BoxError::from)
        }));
        StreamBody::new(stream)
    }

    async fn fault(body: impl Body<Data = Bytes, Error = BoxError>) -> Option<ClientFault> {
        let error = body.collect().await.err()?;
        client_fault(error.as_ref())
    }

    #[tokio::test]
    async fn a_body_within_the_limits_passes_unchanged() {
        let body = ClientBody::new(frames(vec![Ok("abc"), Ok("de")]), 5, Duration::from_secs(5));
        let bytes = body.collect().await.expect("whole").to_bytes();
        assert_eq!(&bytes[..], b"abcde");
    }

    #[tokio::test]
    async fn each_failure_is_the_client_s_with_its_own_status() {
        let broken = ClientBody::new(
            frames(vec![Ok("a"), Err("bad chunk size")]),
            9,
            Duration::from_secs(5),
        );
        let fault_seen = fault(broken).await.expect("a client fault");
        assert_eq!(fault_seen.status(), StatusCode::BAD_REQUEST);
        let large = ClientBody::new(
            frames(vec![Ok("abc"), Ok("def")]),
            5,
            Duration::from_secs(5),
        );
        assert_eq!(fault(large).await, Some(ClientFault::TooLarge(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out() {
        let stalled =
            futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a")))])
                .chain(futures_util::stream::pending());
        let body = ClientBody::new(StreamBody::new(stalled), 9, Duration::from_millis(300));
        let fault_seen = fault(body).await.expect("a client fault");
        assert_eq!(
            fault_seen,
            ClientFault::TimedOut(Duration::from_millis(300))
        );
        assert_eq!(fault_seen.status(), StatusCode::REQUEST_TIMEOUT);
    }
}
