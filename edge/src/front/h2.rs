//! HTTP/2 client connections (negotiated by ALPN on the HTTPS listener), served by hyper
//! with the limits that keep one client from exhausting the node.
//!
//! - `max_concurrent_streams`: streams open at once on a connection.
//! - `max_header_list_size` (= `limits.max_header_bytes`): a header block, CONTINUATION
//!   frames included, larger than this ends the stream; the h2 crate stops buffering
//!   CONTINUATION frames past it (the 2024 CONTINUATION flood).
//! - `max_pending_accept_reset_streams`: streams the client opened and reset before they
//!   were served; past it the connection is closed (rapid reset, CVE-2023-44487).
//! - `max_local_error_reset_streams`: streams this node had to reset for protocol errors
//!   of the client; past it the connection is closed.
//! - keep-alive PINGs at `header_read_timeout` intervals close a connection whose peer is
//!   gone.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::front::limits::LimitsConfig;
use crate::front::{Handler, TlsName};

/// The HTTP/2 server settings of a listener, from `[limits]`.
pub fn builder(limits: &LimitsConfig) -> http2::Builder<TokioExecutor> {
    let header_list = u32::try_from(limits.max_header_bytes.as_u64()).unwrap_or(u32::MAX);
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

/// Serves one HTTP/2 connection until the client leaves or the node shuts down (then
/// GOAWAY, and the streams in flight finish). Every stream's `:authority` is checked
/// against `tls`, the server name the connection was set up for.
pub async fn serve<I, H>(
    io: I,
    peer: SocketAddr,
    tls: TlsName,
    handler: Arc<H>,
    builder: &http2::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(tls.clone());
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    if !*shutdown.borrow() {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
