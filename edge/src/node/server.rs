//! A running node: its listeners (the front door's public HTTP and HTTPS ones, and the
//! admin port) bound from the config, the purge catch-up before it serves, the probe and
//! purge-stream tasks, and graceful shutdown.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::disk::{DiskError, DiskStore};
use crate::cache::hybrid::HybridStore;
use crate::cache::store::{MemoryStore, Storage};
use crate::node::admin;
use crate::node::config::{ConfigError, EdgeConfig, NatsPurgeConfig};
use crate::node::proxy::Edge;
use crate::node::purge_stream::{FollowError, Follower};
use crate::node::reload::{ReloadError, Reloaded, Reloader, site_certificates};
use crate::node::upgrade::{Inherited, UpgradeError, UpgradeSocket};
use crate::upstream::client::empty_body;
use node_api::purge::{LogTruncated, PurgeBatch, PurgeLogPage};
use tls_certs::{Certificates, TlsError};

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
    #[error("cannot open the disk tier (cache.disk): {0}")]
    Disk(#[from] DiskError),
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
    /// Puts new configs in service ([`crate::node::reload`]).
    reloader: Arc<Reloader>,
    /// The listeners, as an upgrade hands them to a new process.
    handover: Vec<(&'static str, OwnedFd)>,
    /// The disk tier, closed (written out and synced) on shutdown.
    disk: Option<Arc<DiskStore>>,
}

/// How long a clean stop may spend writing the memory tier's hot set to the disk tier.
const WRITE_OUT_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

impl EdgeServer {
    /// Binds both listeners and starts serving, with the store the config describes: memory
    /// sized from `cache.capacity`, over a disk tier when `[cache.disk]` is set (its index
    /// recovered before anything else happens).
    pub async fn start(config: EdgeConfig) -> Result<Self, StartError> {
        Self::start_on(config, None).await
    }

    /// As [`EdgeServer::start`], serving on `inherited` listeners (a running node's, taken
    /// over by an upgrade: see [`crate::node::upgrade`]) instead of binding its own.
    pub async fn start_on(
        config: EdgeConfig,
        inherited: Option<Inherited>,
    ) -> Result<Self, StartError> {
        let capacity = config.cache.capacity.as_u64();
        let Some(disk_config) = &config.cache.disk else {
            let store = Arc::new(MemoryStore::new(capacity));
            return Self::start_inner(config, store, inherited).await;
        };
        config.validate()?;
        let disk = Arc::new(DiskStore::open(disk_config).await?);
        let store = Arc::new(HybridStore::new(capacity, disk.clone()));
        let mut server = Self::start_inner(config, store, inherited).await;
        match &mut server {
            Ok(server) => server.disk = Some(disk),
            Err(_) => {
                let _ = disk.close().await;
            }
        }
        server
    }

    /// As [`EdgeServer::start`], with a given store.
    pub async fn start_with_store(
        config: EdgeConfig,
        store: Arc<dyn Storage>,
    ) -> Result<Self, StartError> {
        Self::start_inner(config, store, None).await
    }

    async fn start_inner(
        config: EdgeConfig,
        store: Arc<dyn Storage>,
        mut inherited: Option<Inherited>,
    ) -> Result<Self, StartError> {
        let edge = Arc::new(Edge::new(&config, store)?);
        if let Some(hybrid) = edge.store().hybrid() {
            let report = hybrid.disk().recovery();
            edge.metrics().disk_recovered(&report);
            let resumes = edge.state().is_some_and(|state| state.resumes());
            let held = hybrid.disk().usage().entries;
            if !resumes && held > 0 {
                // Objects with no persisted purge position to check them against: what
                // purged them cannot be known, so they go.
                tracing::warn!(node = %edge.name(), objects = held, "disk tier holds objects but no node state: clearing it");
                hybrid.disk().clear().await?;
            }
            if !resumes {
                // What the disk will hold is checked against this state from now on: it
                // records where it starts, so a restart resumes (and keeps the disk) even
                // if no purge ever arrives. A catch-up may still move it to the log's head.
                start_at(&edge, edge.store().purge_watermark())
                    .await
                    .map_err(|e| StartError::Config(ConfigError::Disk(e)))?;
            }
        }
        let bind = |addr: SocketAddr, what: &'static str, given: Option<std::net::TcpListener>| async move {
            let bound = match given {
                Some(listener) => listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(listener)),
                None => TcpListener::bind(addr).await,
            };
            bound.map_err(|source| StartError::Bind { addr, what, source })
        };
        let inherited = inherited.as_mut();
        let (given_public, given_admin, given_https, given_http3) = match inherited {
            Some(given) => (
                given.public.try_clone().ok(),
                given.admin.try_clone().ok(),
                given.https.as_ref().and_then(|l| l.try_clone().ok()),
                given.http3.as_ref().and_then(|s| s.try_clone().ok()),
            ),
            None => (None, None, None, None),
        };
        let public = bind(config.node.listen, "public listener", given_public).await?;
        let admin = bind(config.node.admin_listen, "admin listener", given_admin).await?;
        let mut handover = vec![
            ("public", duplicate(&public, config.node.listen)?),
            ("admin", duplicate(&admin, config.node.admin_listen)?),
        ];
        let public_addr = local_addr(&public, config.node.listen)?;
        let admin_addr = local_addr(&admin, config.node.admin_listen)?;
        let https = match config.node.https_listen {
            Some(addr) => {
                let certificates =
                    Arc::new(Certificates::from_sources(site_certificates(&config))?);
                let tls = Arc::new(certificates.server_config()?);
                let listener = bind(addr, "HTTPS listener", given_https).await?;
                let https_addr = local_addr(&listener, addr)?;
                handover.push(("https", duplicate(&listener, addr)?));
                let http3 = if config.node.http3 {
                    let (endpoint, socket) =
                        bind_http3(https_addr, &certificates, &config.limits, given_http3)?;
                    handover.push(("http3", socket));
                    Some(endpoint)
                } else {
                    None
                };
                Some((listener, https_addr, certificates, tls, http3))
            }
            None => None,
        };
        if let Some(api) = &config.purge.api {
            catch_up(&edge, api, config.purge.node_token.as_deref().unwrap_or("")).await;
        }
        let (shutdown, _) = watch::channel(false);
        let (limits, listener_limits) = watch::channel(config.limits.clone());
        let follower = match &config.purge.nats {
            Some(nats) => Some(follow_stream(&edge, nats, shutdown.subscribe()).await?),
            None => None,
        };

        let mut tasks = vec![tokio::spawn(crate::front::listener::serve(
            public,
            edge.clone(),
            edge.open.clone(),
            listener_limits.clone(),
            shutdown.subscribe(),
        ))];
        let (https_addr, certificates) = match https {
            Some((listener, addr, certificates, tls, http3)) => {
                if let Some(endpoint) = http3 {
                    edge.advertise_http3(addr.port());
                    tasks.push(tokio::spawn(crate::front::h3::serve(
                        endpoint,
                        certificates.clone(),
                        edge.clone(),
                        edge.open.clone(),
                        listener_limits.clone(),
                        shutdown.subscribe(),
                    )));
                }
                tasks.push(tokio::spawn(crate::front::https::serve(
                    listener,
                    tokio_rustls::TlsAcceptor::from(tls),
                    edge.clone(),
                    edge.open.clone(),
                    listener_limits,
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
        let reloader = Reloader::new(
            edge.clone(),
            config,
            limits,
            certificates.clone(),
            shutdown.subscribe(),
        );
        tasks.push(tokio::spawn(serve_admin(
            admin,
            edge.clone(),
            reloader.clone(),
            shutdown.subscribe(),
        )));
        #[cfg(unix)]
        tasks.push(tokio::spawn(on_signals(
            reloader.clone(),
            shutdown.subscribe(),
        )));
        tasks.extend(follower);
        edge.set_ready(true);
        tracing::info!(node = %edge.name(), role = edge.role().as_str(), %public_addr, %admin_addr, ?https_addr, "listening");
        Ok(Self {
            edge,
            public_addr,
            admin_addr,
            https_addr,
            certificates,
            shutdown,
            tasks,
            reloader,
            handover,
            disk: None,
        })
    }

    /// Offers this node's listeners to a new process started with `--upgrade`, on the Unix
    /// socket at `path` (see [`crate::node::upgrade`]); the returned socket says when one
    /// took them over, and this node should then [`shutdown`](EdgeServer::shutdown).
    pub fn offer_upgrades(&self, path: &std::path::Path) -> Result<UpgradeSocket, UpgradeError> {
        let listeners = self
            .handover
            .iter()
            .map(|(name, fd)| Ok((*name, fd.try_clone()?)))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| UpgradeError::Bind {
                path: path.to_owned(),
                source,
            })?;
        UpgradeSocket::bind(path, listeners)
    }

    /// Makes `path` (the file the config came from) what a reload re-reads: on SIGHUP,
    /// on `POST /v1/config/reload`, and when the file changes (checked each second).
    pub fn follow_file(&mut self, path: PathBuf) {
        self.reloader.set_file(path.clone());
        self.tasks.push(tokio::spawn(reload_on_change(
            self.reloader.clone(),
            path,
            self.shutdown.subscribe(),
        )));
    }

    /// Puts `config` in service, or refuses it saying why (see [`crate::node::reload`]).
    pub fn reload(&self, config: EdgeConfig) -> Result<Reloaded, ReloadError> {
        self.reloader.reload(config)
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

    /// Where the node speaks HTTP/3 (UDP): the HTTPS listener's address, when
    /// `node.http3` is on.
    pub fn http3_addr(&self) -> Option<SocketAddr> {
        crate::front::Handler::alt_svc(self.edge.as_ref()).and(self.https_addr)
    }

    /// The sites' certificates served on the HTTPS listener (to watch reloads).
    pub fn certificates(&self) -> Option<&Arc<Certificates>> {
        self.certificates.as_ref()
    }

    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    /// Stops accepting, lets in-flight requests finish (up to a bound), writes the memory
    /// tier's hot set to the disk tier (when there is one) and closes it, and returns.
    pub async fn shutdown(self) {
        self.edge.set_ready(false);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.reloader.stopped().await;
        if let Some(disk) = self.disk {
            if let Some(hybrid) = self.edge.store().hybrid() {
                let written = hybrid.write_out(WRITE_OUT_WITHIN).await;
                tracing::info!(written, "memory tier written out to the disk tier");
            }
            if let Err(error) = disk.close().await {
                tracing::warn!(%error, "closing the disk tier");
            }
        }
    }
}

/// A second descriptor of `listener`'s socket, to hand over in an upgrade.
/// The HTTP/3 endpoint on UDP at `addr` (the HTTPS listener's, port included), on the
/// socket an upgrade handed over if there is one; and a copy of the socket for the next
/// upgrade.
fn bind_http3(
    addr: SocketAddr,
    certificates: &Arc<Certificates>,
    limits: &crate::front::limits::LimitsConfig,
    given: Option<std::net::UdpSocket>,
) -> Result<(quinn::Endpoint, OwnedFd), StartError> {
    let what = "HTTP/3 socket (UDP, the HTTPS port; node.http3 = false turns it off)";
    let failed = |source| StartError::Bind { addr, what, source };
    let socket = match given {
        Some(socket) => socket,
        None => std::net::UdpSocket::bind(addr).map_err(failed)?,
    };
    socket.set_nonblocking(true).map_err(failed)?;
    let copy = socket.as_fd().try_clone_to_owned().map_err(failed)?;
    let server = crate::front::h3::server_config(certificates, limits)
        .map_err(|e| failed(std::io::Error::other(e)))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(failed)?;
    Ok((endpoint, copy))
}

fn duplicate(listener: &TcpListener, addr: SocketAddr) -> Result<OwnedFd, StartError> {
    listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| StartError::Bind {
            addr,
            what: "a copy of a listener for upgrades",
            source,
        })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        addr,
        what: "local address",
        source,
    })
}

/// How long a starting node tries to read the purge log before it gives up on it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most purges a catch-up asks the log for in one page.
pub const CATCH_UP_PAGE: usize = 1000;

/// Reads and applies every purge after the node's watermark before the node serves, so
/// content purged while it was away is never served. A node that
/// [starts fresh](Edge::starts_fresh) (nothing stored, no persisted position) has nothing
/// to purge and just takes the log's head (asking for a page of 0 purges); a node with a
/// persisted state resumes from its persisted watermark even with an empty memory, since
/// what it stored before may still be read. When the log cannot be read (or no longer
/// has what this node missed), the node forgets its content instead.
async fn catch_up(edge: &Arc<Edge>, api: &str, token: &str) {
    let fresh = edge.starts_fresh();
    let result = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
        loop {
            let after = edge.store().purge_watermark();
            let limit = if fresh { 0 } else { CATCH_UP_PAGE };
            match read_log(edge, api, token, after, limit).await? {
                Ok(page) if fresh => {
                    start_at(edge, page.head.max(after)).await?;
                    return Ok(page.head);
                }
                Ok(page) => {
                    if page.purges.is_empty() {
                        return Ok(page.head);
                    }
                    let batch = PurgeBatch {
                        purges: page.purges,
                    };
                    edge.apply_purges_async(batch)
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                }
                Err(truncated) => {
                    tracing::warn!(
                        after,
                        oldest = truncated.oldest,
                        "purges this node missed are no longer in the log: forgetting its content"
                    );
                    reset(edge, truncated.head).await;
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
            reset(edge, edge.store().purge_watermark()).await;
        }
    }
}

/// [`Edge::start_at`] on a blocking thread (it commits the state).
async fn start_at(edge: &Arc<Edge>, seq: u64) -> Result<(), String> {
    let edge = edge.clone();
    tokio::task::spawn_blocking(move || edge.start_at(seq))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// [`Edge::reset_purges`] on a blocking thread (it commits the state). Memory forgets
/// whatever happens; a state that cannot record it is logged, and the node then resumes
/// from its older persisted position after a restart (and resets again).
async fn reset(edge: &Arc<Edge>, seq: u64) {
    let resetting = edge.clone();
    let result = tokio::task::spawn_blocking(move || resetting.reset_purges(seq)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(node = %edge.name(), %error, "reset not persisted");
        }
        Err(error) => tracing::error!(node = %edge.name(), %error, "reset failed"),
    }
}

/// Catches up from the NATS purge stream before the node serves (forgetting its content
/// if that fails, as [`catch_up`] does), then starts the task that follows the stream.
async fn follow_stream(
    edge: &Arc<Edge>,
    nats: &NatsPurgeConfig,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, StartError> {
    let client = node_api::nats::connect(&nats.servers, edge.name())
        .await
        .map_err(|e| StartError::Config(ConfigError::Purge(e)))?;
    let mut follower = Follower::new(edge.clone(), client, &nats.stream);
    let result = tokio::time::timeout(CATCH_UP_TIMEOUT, follower.catch_up())
        .await
        .unwrap_or_else(|_| {
            Err(FollowError::Unavailable {
                op: "catching up",
                stream: nats.stream.clone(),
                reason: format!("not done within {CATCH_UP_TIMEOUT:?}"),
            })
        });
    match result {
        Ok(head) => tracing::info!(node = %edge.name(), head, "purges caught up from NATS"),
        Err(error) => {
            tracing::error!(node = %edge.name(), %error, "cannot read the purge stream: forgetting this node's content");
            reset(edge, edge.store().purge_watermark()).await;
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
    let mut request = http::Request::new(empty_body());
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

/// SIGUSR1 reopens the access log (logrotate moved it); SIGHUP reopens it too and, for a
/// node started from a file, reloads the config. Caught whatever the config says, so a
/// SIGHUP never stops a node.
#[cfg(unix)]
async fn on_signals(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut usr1), Ok(mut hup)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("SIGUSR1/SIGHUP cannot be caught: no reopening or reloading on them");
        return;
    };
    let reopen = |reloader: &Reloader| {
        if let Some(log) = &reloader.edge().live().access_log {
            log.reopen();
        }
    };
    loop {
        let reload = tokio::select! {
            Some(()) = usr1.recv() => false,
            Some(()) = hup.recv() => true,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        reopen(&reloader);
        if reload && reloader.file().is_some() {
            let reloading = reloader.clone();
            // Reading the file and opening logs are blocking work.
            let _ = tokio::task::spawn_blocking(move || reloading.reload_file()).await;
        }
    }
}

/// Reloads when the file's modification time or length changes (checked each second).
async fn reload_on_change(reloader: Arc<Reloader>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let stamp = |path: &PathBuf| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok(), meta.len()))
    };
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = stamp(&path);
        if now != seen {
            seen = now;
            let reloading = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloading.reload_file()).await;
        }
    }
}

async fn serve_admin(
    listener: TcpListener,
    edge: Arc<Edge>,
    reloader: Arc<Reloader>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = admin::router(edge, reloader);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "admin listener failed");
    }
}
