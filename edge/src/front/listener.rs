//! The plain HTTP listener, and what it shares with the HTTPS one: accepting without
//! spinning on errors, HTTP/1.1 on a connection (the cache's own loop, then hyper), the
//! count of open connections and the drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::cache::status::Outcome;
use crate::front::connection::{self, ConnLimits, Ending};
use crate::front::limits::{ConnectionsPerIp, LimitsConfig, TOO_MANY_CONNECTIONS, WriteTimeout};
use crate::front::send_file::SendFile;
use crate::front::{Handler, TlsName};

/// How long in-flight requests may take to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts plain HTTP connections until shutdown, then waits (bounded) for them to finish.
/// Each is counted in `open` for as long as it lasts. A change of `limits` (a config
/// reload) applies to the connections accepted after it.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    open: Arc<OpenConnections>,
    mut limits: watch::Receiver<LimitsConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let mut http1 = Http1::new(&limits.borrow_and_update());
    let per_ip = ConnectionsPerIp::new(limits.borrow().max_connections_per_ip);
    let mut stop = shutdown.clone();
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = accept_or_back_off(&listener) => accepted,
            _ = stop.changed() => break,
        };
        if limits.has_changed().unwrap_or(false) {
            let now = limits.borrow_and_update();
            http1 = Http1::new(&now);
            per_ip.set_max(now.max_connections_per_ip);
        }
        let _ = stream.set_nodelay(true);
        let guard = open.enter();
        let slot = per_ip.admit(peer.ip());
        let handler = handler.clone();
        let http1 = http1.clone();
        let shutdown = shutdown.clone();
        let write_timeout = limits.borrow().write_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            let Some(_slot) = slot else {
                handler.count(Outcome::Refused, http::Version::HTTP_11);
                let written = stream.write_all(TOO_MANY_CONNECTIONS).await;
                if handler.logs_access() {
                    handler.refused_at_door(&crate::front::DoorRefusal {
                        client: peer,
                        status: http::StatusCode::TOO_MANY_REQUESTS,
                        bytes: if written.is_ok() {
                            TOO_MANY_CONNECTIONS.len() as u64
                        } else {
                            0
                        },
                        tls: None,
                        https: false,
                    });
                }
                let _ = stream.shutdown().await;
                return;
            };
            let stream = WriteTimeout::new(stream, write_timeout);
            http1.serve(stream, peer, None, handler, shutdown).await;
        });
    }
    drop(listener);
    drain(&open).await;
}

/// Accepts a connection; on errors (out of file descriptors and the like) backs off
/// instead of spinning.
pub(crate) async fn accept_or_back_off(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Waits, up to [`DRAIN_TIMEOUT`], for the open connections to finish.
pub(crate) async fn drain(open: &OpenConnections) {
    if tokio::time::timeout(DRAIN_TIMEOUT, open.drained())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// HTTP/1.1 on one connection, plain or TLS: the cache's own loop
/// ([`connection::serve`]), then hyper for whatever that loop hands over.
#[derive(Debug, Clone)]
pub(crate) struct Http1 {
    builder: http1::Builder,
    limits: ConnLimits,
}

impl Http1 {
    pub(crate) fn new(limits: &LimitsConfig) -> Self {
        let max_head = usize::try_from(limits.max_header_bytes.as_u64()).unwrap_or(usize::MAX);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(max_head)
            .max_headers(limits.max_headers)
            .keep_alive(true);
        Self {
            builder,
            limits: ConnLimits {
                max_head,
                max_headers: limits.max_headers,
                header_timeout: limits.header_read_timeout,
                max_uri: limits.max_uri_bytes,
                max_body: limits.max_body_bytes.as_u64(),
            },
        }
    }

    /// Serves the connection until it ends; on shutdown, finishes the request in flight.
    /// `tls`: the server name of a TLS connection, which its requests must match.
    pub(crate) async fn serve<S, H>(
        &self,
        stream: S,
        peer: SocketAddr,
        tls: Option<TlsName>,
        handler: Arc<H>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + SendFile + Unpin + Send + 'static,
        H: Handler,
    {
        let ending = connection::serve(
            stream,
            peer,
            &handler,
            self.limits,
            tls.as_ref(),
            &mut shutdown,
        )
        .await;
        let io = match ending {
            Ending::Closed => return,
            Ending::Handoff(io) => io,
        };
        let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            if let Some(tls) = &tls {
                req.extensions_mut().insert(tls.clone());
            }
            let handler = handler.clone();
            let https = tls.is_some();
            async move {
                let mut response = handler.handle(req, peer).await;
                if let (true, Some(alt_svc)) = (https, handler.alt_svc()) {
                    response
                        .headers_mut()
                        .insert(http::header::ALT_SVC, alt_svc.clone());
                }
                Ok::<_, Infallible>(response)
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        if !*shutdown.borrow() {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "client connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.changed() => {}
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// Counts open client connections so shutdown can wait for them to finish, and so
/// `/healthz` can report the node's load (GeoDNS spills clients of a loaded region).
#[derive(Debug, Default)]
pub struct OpenConnections {
    count: AtomicUsize,
    idle: Notify,
}

/// One open connection; dropping it counts it closed.
#[derive(Debug)]
pub struct OpenGuard(Arc<OpenConnections>);

impl OpenConnections {
    /// Counts one more open connection, until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> OpenGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.clone())
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
