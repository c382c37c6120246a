//! The HTTPS listener: TLS (certificate by SNI, see [`tls_certs`]), then HTTP/2 or
//! HTTP/1.1 as ALPN decided.
//!
//! Each accepted connection is handshaken in its own task under
//! `limits.tls_handshake_timeout`, so a client that stalls mid-handshake holds only its
//! own socket. An `h2` connection goes to [`crate::front::h2`]; anything else (ALPN `http/1.1`
//! or none) to the same HTTP/1.1 loop as the plain listener, compiled for the TLS stream.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::cache::status::Outcome;
use crate::front::limits::{ConnectionsPerIp, LimitsConfig, WriteTimeout};
use crate::front::listener::{Http1, OpenConnections, accept_or_back_off, drain};
use crate::front::{Handler, TlsName, TlsVersion};

/// Accepts TLS connections until shutdown, then waits (bounded) for them to finish.
/// Each is counted in `open` for as long as it lasts. A change of `limits` (a config
/// reload) applies to the connections accepted after it.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    open: Arc<OpenConnections>,
    mut limits: watch::Receiver<LimitsConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let (mut http1, mut http2) = {
        let now = limits.borrow_and_update();
        (Http1::new(&now), crate::front::h2::builder(&now))
    };
    let per_ip = ConnectionsPerIp::new(limits.borrow().max_connections_per_ip);
    let mut stop = shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept_or_back_off(&listener) => accepted,
            _ = stop.changed() => break,
        };
        if limits.has_changed().unwrap_or(false) {
            let now = limits.borrow_and_update();
            (http1, http2) = (Http1::new(&now), crate::front::h2::builder(&now));
            per_ip.set_max(now.max_connections_per_ip);
        }
        // Over its allowance a client is closed before the handshake: nothing can be said
        // to it in HTTP before TLS, and a handshake is the expensive part.
        let Some(slot) = per_ip.admit(peer.ip()) else {
            handler.count(Outcome::Refused, http::Version::HTTP_11);
            if handler.logs_access() {
                handler.refused_at_door(&crate::front::DoorRefusal {
                    client: peer,
                    status: http::StatusCode::TOO_MANY_REQUESTS,
                    bytes: 0,
                    tls: None,
                    https: true,
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let guard = open.enter();
        let (handler, acceptor, http1, http2) = (
            handler.clone(),
            acceptor.clone(),
            http1.clone(),
            http2.clone(),
        );
        let shutdown = shutdown.clone();
        let (timeout, write_timeout) = {
            let now = limits.borrow();
            (now.tls_handshake_timeout, now.write_timeout)
        };
        let stream = WriteTimeout::new(stream, write_timeout);
        tokio::spawn(async move {
            let _held = (guard, slot);
            let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // The resolver gave no certificate without a server name naming a site, so
            // a finished handshake always has one.
            let session = tls.get_ref().1;
            let version = match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
                _ => TlsVersion::Tls13,
            };
            let Some(name) = session.server_name().map(|n| TlsName(n.into(), version)) else {
                return;
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                crate::front::h2::serve(tls, peer, name, handler, &http2, shutdown).await;
            } else {
                http1.serve(tls, peer, Some(name), handler, shutdown).await;
            }
        });
    }
    drop(listener);
    drain(&open).await;
}
