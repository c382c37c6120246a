//! Interim (1xx) responses on their way from an upstream to the client that caused the
//! exchange (RFC 9110 15.2: a proxy forwards them, unless the client is HTTP/1.0).
//!
//! The front door makes a [`channel`] per request it can send 1xx heads to (HTTP/1.1 on
//! its own loop, HTTP/2), puts the sending half ([`Interim`]) in the request's extensions,
//! and writes whatever the receiving half ([`InterimReceiver`]) yields before the final
//! response head, in order, as it arrives. The node hands the [`Interim`] to the one
//! upstream exchange made on that request's behalf ([`crate::upstream::pool`] attaches
//! it to each attempt with hyper's `on_informational`); requests served from the cache,
//! and requests that join another request's fill, never get one.
//!
//! Invariants:
//! - `100 Continue` is hop-by-hop between this node and its upstream (hyper answers
//!   `Expect` itself) and `101` ends HTTP: neither is ever forwarded.
//! - A forwarded head has no hop-by-hop fields (`Connection` and the fields it names,
//!   `Keep-Alive`, ...) and never a body; it is never stored and never merged into the
//!   final response.
//! - A hostile upstream cannot make the node write without bound: at most
//!   [`MAX_INTERIM`] heads per client request are forwarded, each at most the node's
//!   header limit; the rest are dropped (debug log). Forwarding never blocks the upstream
//!   connection: the callback only queues.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, Request, StatusCode};
use tokio::sync::Notify;

use crate::upstream::headers::strip_hop_by_hop;

/// Most 1xx heads forwarded for one client request; later ones are dropped.
pub const MAX_INTERIM: usize = 16;

/// One interim response: a status and fields, never a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterimHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

impl InterimHead {
    /// Bytes of the head as HTTP/1.1 would write it (status line and field lines).
    pub fn size(&self) -> usize {
        let line = "HTTP/1.1 103 \r\n".len()
            + self.status.canonical_reason().map_or(0, str::len)
            + "\r\n".len();
        self.headers.iter().fold(line, |n, (name, value)| {
            n + name.as_str().len() + value.len() + 4
        })
    }
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<InterimHead>>,
    arrived: Notify,
    /// Heads accepted so far (forwarded or queued).
    accepted: AtomicUsize,
    /// The receiver is gone: nothing more will be written.
    closed: AtomicBool,
    /// Largest head forwarded: the node's `limits.max_header_bytes`.
    max_head_bytes: usize,
}

/// The sending half: where the 1xx heads of the exchanges made for one client request go.
/// Cheap to clone; a request extension from the front door to the upstream client.
#[derive(Debug, Clone)]
pub struct Interim(Arc<Shared>);

/// The receiving half, held by the front door while it waits for the final response.
#[derive(Debug)]
pub struct InterimReceiver(Arc<Shared>);

/// A new pair for one client request; heads over `max_head_bytes` are dropped.
pub fn channel(max_head_bytes: usize) -> (Interim, InterimReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        arrived: Notify::new(),
        accepted: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        max_head_bytes,
    });
    (Interim(shared.clone()), InterimReceiver(shared))
}

impl Interim {
    /// Has the 1xx heads of `request`'s exchange forwarded here (hyper calls back while it
    /// parses the response, before the final head).
    pub fn attach<B>(&self, request: &mut Request<B>) {
        let this = self.clone();
        hyper::ext::on_informational(request, move |response| {
            this.forward(response.status(), response.headers());
        });
    }

    /// Queues one interim head from upstream for the client, or drops it (see the module
    /// doc for which are dropped). Never blocks.
    pub fn forward(&self, status: StatusCode, headers: &HeaderMap) {
        if !status.is_informational()
            || status == StatusCode::CONTINUE
            || status == StatusCode::SWITCHING_PROTOCOLS
        {
            return;
        }
        let shared = &self.0;
        if shared.closed.load(Ordering::Relaxed) {
            return; // the client was answered, or left
        }
        if shared.accepted.fetch_add(1, Ordering::Relaxed) >= MAX_INTERIM {
            tracing::debug!(%status, limit = MAX_INTERIM, "interim response dropped: too many for one request");
            return;
        }
        let mut headers = headers.clone();
        strip_hop_by_hop(&mut headers);
        let head = InterimHead { status, headers };
        if head.size() > shared.max_head_bytes {
            tracing::debug!(%status, limit = shared.max_head_bytes, "interim response dropped: head too large");
            return;
        }
        shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(head);
        shared.arrived.notify_one();
    }
}

impl InterimReceiver {
    /// The next head, waiting for it. Cancel-safe: a head is taken only when returned.
    pub async fn recv(&mut self) -> InterimHead {
        loop {
            if let Some(head) = self.try_recv() {
                return head;
            }
            self.0.arrived.notified().await;
        }
    }

    /// The next head already queued, if any.
    pub fn try_recv(&mut self) -> Option<InterimHead> {
        self.0
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

impl Drop for InterimReceiver {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers::headers;

    #[test]
    fn only_forwardable_heads_pass_without_hop_by_hop_fields() {
        let (tx, mut rx) = channel(1024);
        let fields = headers(&[
            ("link", "</style.css>; rel=preload"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
        ]);
        tx.forward(StatusCode::CONTINUE, &fields);
        tx.forward(StatusCode::SWITCHING_PROTOCOLS, &fields);
        tx.forward(StatusCode::OK, &fields);
        tx.forward(StatusCode::from_u16(103).unwrap(), &fields);
        tx.forward(StatusCode::PROCESSING, &HeaderMap::new());
        let first = rx.try_recv().expect("103");
        assert_eq!(first.status.as_u16(), 103);
        assert_eq!(
            first.headers,
            headers(&[("link", "</style.css>; rel=preload")])
        );
        assert_eq!(rx.try_recv().expect("102").status, StatusCode::PROCESSING);
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn an_upstream_cannot_make_the_node_forward_without_bound() {
        let (tx, mut rx) = channel(200);
        let big = headers(&[("link", &"x".repeat(300))]);
        tx.forward(StatusCode::from_u16(103).unwrap(), &big);
        assert_eq!(rx.try_recv(), None, "over the head limit");
        for _ in 0..MAX_INTERIM * 4 {
            tx.forward(StatusCode::PROCESSING, &HeaderMap::new());
        }
        let mut forwarded = 0;
        while rx.try_recv().is_some() {
            forwarded += 1;
        }
        // The oversized head counted too: the count bounds work done, not just writes.
        assert_eq!(forwarded, MAX_INTERIM - 1);
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_head() {
        let (tx, mut rx) = channel(1024);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.forward(StatusCode::PROCESSING, &HeaderMap::new());
        let head = waiting.await.expect("joined");
        assert_eq!(head.status, StatusCode::PROCESSING);
    }
}
