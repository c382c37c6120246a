//! The running server: UDP ([`crate::udp`]) and TCP ([`crate::tcp`]) on one port, the
//! admin listener, the probe loop, and reloads on SIGHUP or when the config file changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State as Extract;
use axum::routing::get;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{ConfigError, GeoDnsConfig};
use crate::handler::Handler;
use crate::health::{Probed, probe, probe_client};
use crate::metrics::Metrics;
use crate::state::State;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind the {what} on {addr}: {source}; is another server using it?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running GeoDNS server.
pub struct GeoDnsServer {
    dns_addr: SocketAddr,
    admin_addr: SocketAddr,
    handler: Handler,
    path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Ends the blocking UDP loops (which a dropped task cannot stop).
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for GeoDnsServer {
    fn drop(&mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl std::fmt::Debug for GeoDnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDnsServer")
            .field("dns_addr", &self.dns_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl GeoDnsServer {
    /// Starts serving `config`; `path` is the file it came from, watched for reloads.
    pub async fn start(config: GeoDnsConfig, path: Option<PathBuf>) -> Result<Self, StartError> {
        let listen = config.node.listen;
        let admin_listen = config.node.admin_listen;
        let tcp_timeout = config.node.tcp_timeout;
        let state = State::new(config, &Default::default())?;
        let handler = Handler {
            state: Arc::new(ArcSwap::from_pointee(state)),
            metrics: Arc::new(Metrics::default()),
        };
        let (udp, tcp) = bind_pair(listen).await?;
        let dns_addr = udp.local_addr().map_err(|source| StartError::Bind {
            what: "DNS listener",
            addr: listen,
            source,
        })?;
        let admin = TcpListener::bind(admin_listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "admin listener",
                addr: admin_listen,
                source,
            })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            what: "admin listener",
            addr: admin_listen,
            source,
        })?;
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(crate::tcp::serve(
            tcp,
            handler.clone(),
            tcp_timeout,
            shutdown.subscribe(),
        ));
        let udp = udp.into_std().map_err(|source| StartError::Bind {
            what: "UDP DNS listener",
            addr: listen,
            source,
        })?;
        udp.set_nonblocking(false)
            .map_err(|source| StartError::Bind {
                what: "UDP DNS listener",
                addr: listen,
                source,
            })?;
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loops = std::thread::available_parallelism().map_or(1, usize::from);
        for _ in 0..loops {
            let socket = udp.try_clone().map_err(|source| StartError::Bind {
                what: "UDP DNS listener",
                addr: listen,
                source,
            })?;
            let (handler, runtime, stopping) = (
                handler.clone(),
                tokio::runtime::Handle::current(),
                stopping.clone(),
            );
            tasks.spawn_blocking(move || crate::udp::serve(socket, handler, runtime, stopping));
        }

        let app = Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({ "live": true, "ready": true })) }),
            )
            .route("/metrics", get(metrics))
            .with_state(handler.metrics.clone());
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let _ = axum::serve(admin, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        tasks.spawn(probe_forever(handler.clone(), shutdown.subscribe()));
        if let Some(path) = path.clone() {
            tasks.spawn(reload_forever(handler.clone(), path, shutdown.subscribe()));
        }
        tracing::info!(%dns_addr, %admin_addr, "geodns serving");
        Ok(Self {
            dns_addr,
            admin_addr,
            handler,
            path,
            shutdown,
            tasks,
            stopping,
        })
    }

    /// Where queries are answered, over UDP and TCP.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Re-reads the config file now (as SIGHUP does). On error the running config stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        match &self.path {
            Some(path) => reload(&self.handler, path),
            None => Ok(()),
        }
    }

    /// Answers from `config` from now on (what a `cdn up` topology reload gives a server
    /// started without a file). Checked as a file reload is; refused, the running config
    /// stays. Edges kept keep their health.
    pub fn replace_config(&self, config: GeoDnsConfig) -> Result<(), ConfigError> {
        apply(&self.handler, Ok(config))
    }

    /// Stops answering and ends every task.
    pub async fn shutdown(mut self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn metrics(Extract(metrics): Extract<Arc<Metrics>>) -> impl axum::response::IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// UDP and TCP bound to the same port (for port 0, one the kernel picks for both).
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), StartError> {
    let bind_error = |what, source| StartError::Bind { what, addr, source };
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_error("UDP DNS listener", e))?;
        let port = udp
            .local_addr()
            .map_err(|e| bind_error("UDP DNS listener", e))?
            .port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(bind_error("TCP DNS listener", e)),
        }
    }
    Err(bind_error(
        "TCP DNS listener",
        last.unwrap_or_else(|| std::io::Error::other("no free port pair")),
    ))
}

/// Probes every edge of the current state each `health.interval`.
async fn probe_forever(handler: Handler, mut stop: watch::Receiver<bool>) {
    let client = probe_client();
    {
        let state = handler.state.load();
        for region in &state.regions.regions {
            for edge in &region.edges {
                handler.metrics.edge_state(
                    &region.name,
                    &edge.address.to_string(),
                    edge.health.is_up(),
                );
            }
        }
    }
    loop {
        let state = handler.state.load_full();
        let interval = state.health.interval;
        let mut probes = JoinSet::new();
        for (r, region) in state.regions.regions.iter().enumerate() {
            for (e, edge) in region.edges.iter().enumerate() {
                let (client, url, timeout) =
                    (client.clone(), edge.probe.clone(), state.health.timeout);
                probes.spawn(async move { (r, e, probe(&client, &url, timeout).await) });
            }
        }
        while let Some(first) = probes.join_next().await {
            // The results in by now, recorded together, then one refresh of the answers.
            let mut done = vec![first];
            while let Some(more) = probes.try_join_next() {
                done.push(more);
            }
            for (r, e, result) in done.into_iter().flatten() {
                record(&handler, &state, r, e, result);
            }
            let current = handler.state.load_full();
            if current.stale() {
                // Building a map takes tens of milliseconds with a City database.
                let _ = tokio::task::spawn_blocking(move || current.refresh()).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Records probe `result` of edge `e` of region `r` of `state`, logging and counting the
/// edge's changes.
fn record(handler: &Handler, state: &State, r: usize, e: usize, result: Option<Probed>) {
    let region = &state.regions.regions[r];
    let edge = &region.edges[e];
    let was_degraded = edge.health.is_degraded();
    let changed = edge
        .health
        .record(result, state.health.rise, state.health.fall);
    if edge.health.is_degraded() != was_degraded {
        if was_degraded {
            tracing::info!(region = %region.name, edge = %edge.address, "edge can fill misses again");
        } else {
            tracing::warn!(region = %region.name, edge = %edge.address, "edge is degraded (cannot fill misses): regions with ready edges come first");
        }
    }
    if let Some(up) = changed {
        if up {
            tracing::info!(region = %region.name, edge = %edge.address, "edge passes its probes again");
        } else {
            tracing::warn!(region = %region.name, edge = %edge.address, "edge failed its probes: out of answers");
        }
        handler
            .metrics
            .edge_transition(&region.name, &edge.address.to_string(), up);
    }
}

/// Reloads on SIGHUP and when the file's modification time changes (checked each second).
async fn reload_forever(handler: Handler, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let modified =
        |path: &PathBuf| -> Option<SystemTime> { std::fs::metadata(path).ok()?.modified().ok() };
    let mut seen = modified(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signal = async {
            match hup.as_mut() {
                Some(hup) => {
                    hup.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signal = std::future::pending::<()>();
        let forced = tokio::select! {
            () = signal => true,
            () = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = stop.wait_for(|s| *s) => return,
        };
        let now = modified(&path);
        if forced || now != seen {
            seen = now;
            // Off the runtime: walking a City database into cells takes seconds.
            let (handler, path) = (handler.clone(), path.clone());
            let reloaded = tokio::task::spawn_blocking(move || {
                reload(&handler, &path).map_err(|error| (error, path))
            });
            if let Ok(Err((error, path))) = reloaded.await {
                tracing::error!(%error, path = %path.display(), "config reload refused; the running config stays");
            }
        }
    }
}

fn reload(handler: &Handler, path: &std::path::Path) -> Result<(), ConfigError> {
    apply(handler, GeoDnsConfig::from_file(path))?;
    tracing::info!(path = %path.display(), "config reloaded");
    Ok(())
}

/// Puts a new config in service, or counts its refusal.
fn apply(handler: &Handler, config: Result<GeoDnsConfig, ConfigError>) -> Result<(), ConfigError> {
    let result = config.and_then(|config| {
        let current = handler.state.load();
        if config.node.listen != current.config.node.listen
            || config.node.admin_listen != current.config.node.admin_listen
        {
            tracing::warn!("listener changes take effect on restart, not on reload");
        }
        State::new(config, &current.regions.health_table())
    });
    match result {
        Ok(state) => {
            handler.state.store(Arc::new(state));
            handler.metrics.reload(true);
            Ok(())
        }
        Err(error) => {
            handler.metrics.reload(false);
            Err(error)
        }
    }
}
