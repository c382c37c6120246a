//! Listeners: the public HTTP front door and the admin port, with graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::{ConfigError, EdgeConfig, LimitsConfig};
use crate::connection::{self, ConnLimits, Ending};
use crate::limits::{ConnectionsPerIp, TOO_MANY_CONNECTIONS, WriteTimeout};
use crate::proxy::Edge;
use crate::site::TlsName;
use crate::store::{MemoryStore, Storage};
use node_api::purge::{LogTruncated, PurgeBatch, PurgeLogPage};
use tls_certs::{Certificates, Source, TlsError};

/// The node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

/// A running edge node.
#[derive(Debug)]
pub struct EdgeServer {
    edge: Arc<Edge>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    certificates: Option<Arc<Certificates>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long in-flight requests may take to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl EdgeServer {
    /// Binds both listeners and starts serving, with an in-memory store sized from config.
    pub async fn start(config: EdgeConfig) -> Result<Self, StartError> {
        let store = Arc::new(MemoryStore::new(config.cache.capacity.as_u64()));
        Self::start_with_store(config, store).await
    }

    /// As [`EdgeServer::start`], with a given store.
    pub async fn start_with_store(
        config: EdgeConfig,
        store: Arc<dyn Storage>,
    ) -> Result<Self, StartError> {
        let edge = Arc::new(Edge::new(&config, store)?);
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, what, source })
        };
        let public = bind(config.node.listen, "public listener").await?;
        let admin = bind(config.node.admin_listen, "admin listener").await?;
        let public_addr = local_addr(&public, config.node.listen)?;
        let admin_addr = local_addr(&admin, config.node.admin_listen)?;
        let https = match config.node.https_listen {
            Some(addr) => {
                let certificates = Arc::new(site_certificates(&config)?);
                let tls = Arc::new(certificates.server_config()?);
                let listener = bind(addr, "HTTPS listener").await?;
                let https_addr = local_addr(&listener, addr)?;
                Some((listener, https_addr, certificates, tls))
            }
            None => None,
        };
        if let Some(api) = &config.purge.api {
            catch_up(&edge, api, config.purge.node_token.as_deref().unwrap_or("")).await;
        }
        let (shutdown, _) = watch::channel(false);
        let follower = match &config.purge.nats {
            Some(nats) => Some(follow_stream(&edge, nats, shutdown.subscribe()).await?),
            None => None,
        };

        let mut tasks = vec![
            tokio::spawn(serve_public(
                public,
                edge.clone(),
                config.limits.clone(),
                shutdown.subscribe(),
            )),
            tokio::spawn(serve_admin(admin, edge.clone(), shutdown.subscribe())),
        ];
        let (https_addr, certificates) = match https {
            Some((listener, addr, certificates, tls)) => {
                tasks.push(tokio::spawn(crate::https::serve(
                    listener,
                    tokio_rustls::TlsAcceptor::from(tls),
                    edge.clone(),
                    config.limits.clone(),
                    shutdown.subscribe(),
                )));
                tasks.push(tokio::spawn(
                    certificates
                        .clone()
                        .watch(config.node.tls_reload_interval, shutdown.subscribe()),
                ));
                (Some(addr), Some(certificates))
            }
            None => (None, None),
        };
        for (site, site_config) in edge.sites().sites().iter().zip(&config.sites) {
            let host = site_config
                .upstream_host
                .as_deref()
                .or(site_config.hosts.first().map(String::as_str))
                .and_then(|h| http::HeaderValue::from_str(h).ok())
                .unwrap_or(http::HeaderValue::from_static("localhost"));
            let (site, edge, mut stop) = (site.clone(), edge.clone(), shutdown.subscribe());
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    () = site.pool.probe_forever(&edge.upstream, &edge.metrics, host) => {}
                    _ = stop.wait_for(|stop| *stop) => {}
                }
            }));
        }
        tasks.extend(follower);
        edge.set_ready(true);
        tracing::info!(node = %edge.name(), %public_addr, %admin_addr, ?https_addr, "edge listening");
        Ok(Self {
            edge,
            public_addr,
            admin_addr,
            https_addr,
            certificates,
            shutdown,
            tasks,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The HTTPS listener's address, when `node.https_listen` is set.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The sites' certificates served on the HTTPS listener (to watch reloads).
    pub fn certificates(&self) -> Option<&Arc<Certificates>> {
        self.certificates.as_ref()
    }

    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    /// Stops accepting, lets in-flight requests finish (up to a bound), and returns.
    pub async fn shutdown(self) {
        self.edge.set_ready(false);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Every site's certificate; one that does not load stops the node from starting, with
/// the reason.
fn site_certificates(config: &EdgeConfig) -> Result<Certificates, TlsError> {
    let sources = config
        .sites
        .iter()
        .filter_map(|site| {
            let tls = site.tls.as_ref()?;
            Some(Source::new(&site.name, &site.hosts, &tls.cert, &tls.key))
        })
        .collect();
    Certificates::from_sources(sources)
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        addr,
        what: "local address",
        source,
    })
}

async fn serve_public(
    listener: TcpListener,
    edge: Arc<Edge>,
    limits: LimitsConfig,
    shutdown: watch::Receiver<bool>,
) {
    let http1 = Http1::new(&limits);
    let per_ip = ConnectionsPerIp::new(limits.max_connections_per_ip);
    let open = edge.open.clone();
    let mut stop = shutdown.clone();
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = accept_or_back_off(&listener) => accepted,
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let guard = open.enter();
        let slot = per_ip.admit(peer.ip());
        let edge = edge.clone();
        let http1 = http1.clone();
        let shutdown = shutdown.clone();
        let write_timeout = limits.write_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            let Some(_slot) = slot else {
                edge.metrics.request(crate::cache_status::Outcome::Refused);
                let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
                let _ = stream.shutdown().await;
                return;
            };
            let stream = WriteTimeout::new(stream, write_timeout);
            http1.serve(stream, peer, None, edge, shutdown).await;
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
    pub(crate) async fn serve<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        tls: Option<TlsName>,
        edge: Arc<Edge>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ending = connection::serve(
            stream,
            peer,
            &edge,
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
            let edge = edge.clone();
            async move { Ok::<_, Infallible>(edge.handle(req, peer).await) }
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

/// How long a starting node tries to read the purge log before it gives up on it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and applies every purge after the store's watermark before the node serves, so
/// content purged while it was away is never served. A store with nothing in it has
/// nothing to purge and just takes the log's head. When the log cannot be read (or no
/// longer has what this node missed), the node forgets its content instead.
async fn catch_up(edge: &Arc<Edge>, api: &str, token: &str) {
    let fresh = edge.store().usage().entries == 0;
    let result = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
        loop {
            let after = edge.store().purge_watermark();
            let limit = if fresh { 0 } else { 1000 };
            match read_log(edge, api, token, after, limit).await? {
                Ok(page) if fresh => {
                    edge.store().set_purge_watermark(page.head.max(after));
                    return Ok(page.head);
                }
                Ok(page) => {
                    if page.purges.is_empty() {
                        return Ok(page.head);
                    }
                    let batch = PurgeBatch {
                        purges: page.purges,
                    };
                    edge.apply_purges(&batch).map_err(|gap| gap.to_string())?;
                }
                Err(truncated) => {
                    tracing::warn!(
                        after,
                        oldest = truncated.oldest,
                        "purges this node missed are no longer in the log: forgetting its content"
                    );
                    edge.reset_purges(truncated.head);
                    return Ok(truncated.head);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {CATCH_UP_TIMEOUT:?}")));
    match result {
        Ok(head) => tracing::info!(node = %edge.name(), head, "purges caught up"),
        Err(error) => {
            tracing::error!(node = %edge.name(), %error, "cannot read the purge log: forgetting this node's content");
            edge.reset_purges(edge.store().purge_watermark());
        }
    }
}

/// Catches up from the NATS purge stream before the node serves (forgetting its content
/// if that fails, as [`catch_up`] does), then starts the task that follows the stream.
async fn follow_stream(
    edge: &Arc<Edge>,
    nats: &crate::purge_stream::NatsPurgeConfig,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, StartError> {
    let client = node_api::nats::connect(&nats.servers, edge.name())
        .await
        .map_err(|e| StartError::Config(ConfigError::Purge(e)))?;
    let mut follower = crate::purge_stream::Follower::new(edge.clone(), client, &nats.stream);
    let result = tokio::time::timeout(CATCH_UP_TIMEOUT, follower.catch_up())
        .await
        .unwrap_or_else(|_| {
            Err(crate::purge_stream::FollowError::Unavailable {
                op: "catching up",
                stream: nats.stream.clone(),
                reason: format!("not done within {CATCH_UP_TIMEOUT:?}"),
            })
        });
    match result {
        Ok(head) => tracing::info!(node = %edge.name(), head, "purges caught up from NATS"),
        Err(error) => {
            tracing::error!(node = %edge.name(), %error, "cannot read the purge stream: forgetting this node's content");
            edge.reset_purges(edge.store().purge_watermark());
        }
    }
    Ok(tokio::spawn(follower.follow(stop)))
}

/// One page of the log: `Ok(Err(..))` when it was truncated past `after`.
async fn read_log(
    edge: &Edge,
    api: &str,
    token: &str,
    after: u64,
    limit: usize,
) -> Result<Result<PurgeLogPage, LogTruncated>, String> {
    let uri: http::Uri = format!(
        "{}/v1/purge-log?after={after}&limit={limit}",
        api.trim_end_matches('/')
    )
    .parse()
    .map_err(|e| format!("purge.api {api:?} is not a URL: {e}"))?;
    let mut request = http::Request::new(crate::upstream::empty_body());
    *request.uri_mut() = uri;
    if let Ok(token) = http::HeaderValue::from_str(token) {
        request
            .headers_mut()
            .insert(node_api::headers::NODE_TOKEN, token);
    }
    let response = edge
        .upstream
        .send(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    match status {
        http::StatusCode::OK => serde_json::from_slice(&body)
            .map(Ok)
            .map_err(|e| format!("bad purge log page: {e}")),
        http::StatusCode::GONE => serde_json::from_slice(&body)
            .map(Err)
            .map_err(|e| format!("bad truncation answer: {e}")),
        other => Err(format!(
            "the purge API answered {other}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

/// Counts open client connections so shutdown can wait for them to finish, and so
/// `/healthz` can report the node's load (GeoDNS spills clients of a loaded region).
#[derive(Debug, Default)]
pub(crate) struct OpenConnections {
    count: AtomicUsize,
    idle: Notify,
}

pub(crate) struct OpenGuard(Arc<OpenConnections>);

impl OpenConnections {
    pub(crate) fn enter(self: &Arc<Self>) -> OpenGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
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

async fn serve_admin(listener: TcpListener, edge: Arc<Edge>, mut shutdown: watch::Receiver<bool>) {
    let app = admin::router(edge);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "admin listener failed");
    }
}
