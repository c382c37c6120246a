//! Live reconfiguration: what a new config may change in a running node, what it may not,
//! and how a change is put in service without dropping the cache or a connection.
//!
//! A node's settings are in two parts. What requests read ([`Live`]: the site table, the
//! request limits, the access log) is one value swapped whole, so a request sees either
//! the old settings or the new ones, never a mix; a request in flight keeps the settings
//! it started with. What the listeners read (connection limits, HTTP/1.1 and HTTP/2
//! settings) goes to them over a watch channel and applies to connections accepted
//! after the change. The overload limit is resized in place, the certificates replaced
//! in their resolver.
//!
//! The cache is never touched: keys name a site's generation, and a site kept by name
//! keeps its generation counter (shared between the old and the new table, so a purge
//! applied while the tables are swapped is in effect in both), so every entry stays
//! reachable. A site whose pool is configured the same keeps its pool, with its servers'
//! health and connections.
//!
//! What the node was started with and cannot change while it runs (its name, listen
//! addresses, the cache and its disk, the purge source, the upstream client) is compared,
//! and a new config that changes any of it is refused with those fields named: it takes
//! effect on a restart or an upgrade (`cdn edge --upgrade`). A refused or invalid config
//! leaves the running one in service.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tls_certs::{Certificates, Source};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::front::limits::LimitsConfig;
use crate::node::access_log::{AccessLog, LogCounts};
use crate::node::config::{ConfigError, EdgeConfig};
use crate::node::proxy::Edge;
use crate::node::site::SiteTable;

/// What requests read of the config, swapped whole on a reload.
#[derive(Debug)]
pub struct Live {
    pub sites: SiteTable,
    pub limits: RequestLimits,
    /// `[access_log]`, when on.
    pub access_log: Option<AccessLog>,
}

/// The `[limits]` a request is checked against on the full path (the connection loop
/// and hyper check theirs as they parse).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// `max_header_bytes`: a larger head gets `431`.
    pub max_header_bytes: usize,
    /// `max_uri_bytes`: longer targets get `414`.
    pub max_uri_bytes: usize,
    /// `max_body_bytes`: a larger declared body gets `413`, a longer streamed one is cut
    /// off (the upstream request fails).
    pub max_body_bytes: u64,
    /// `body_read_timeout`: longest pause inside a request body (`408`).
    pub body_read_timeout: Duration,
}

impl RequestLimits {
    pub fn of(config: &EdgeConfig) -> Self {
        Self {
            max_header_bytes: usize::try_from(config.limits.max_header_bytes.as_u64())
                .unwrap_or(usize::MAX),
            max_uri_bytes: config.limits.max_uri_bytes,
            max_body_bytes: config.limits.max_body_bytes.as_u64(),
            body_read_timeout: config.limits.body_read_timeout,
        }
    }
}

/// A new config that was not put in service; the running one stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new config was refused, the running one stays: {0}")]
    Invalid(#[from] ConfigError),
    #[error(
        "the new config changes {} , which cannot change while the node runs: restart the node \
         or upgrade it (`--upgrade`) to apply them; the running config stays",
        .0.join(", ")
    )]
    Fixed(Vec<&'static str>),
    #[error("the new config was refused, the running one stays: {0}")]
    Certificates(#[from] tls_certs::TlsError),
    #[error(
        "the node was started without a config file, so there is nothing to re-read: \
         reload it with a config instead"
    )]
    NoFile,
}

/// The sections and fields of `running` that `next` changes and a running node cannot.
pub fn fixed_changes(running: &EdgeConfig, next: &EdgeConfig) -> Vec<&'static str> {
    let (a, b) = (&running.node, &next.node);
    let mut changed = Vec::new();
    let mut check = |field: &'static str, differs: bool| {
        if differs {
            changed.push(field);
        }
    };
    check("node.name", a.name != b.name);
    check("node.listen", a.listen != b.listen);
    check("node.admin_listen", a.admin_listen != b.admin_listen);
    check("node.https_listen", a.https_listen != b.https_listen);
    check(
        "node.tls_reload_interval",
        a.tls_reload_interval != b.tls_reload_interval,
    );
    check("node.upgrade_socket", a.upgrade_socket != b.upgrade_socket);
    check("[cache]", !same(&running.cache, &next.cache));
    check("[purge]", !same(&running.purge, &next.purge));
    check("[upstream]", !same(&running.upstream, &next.upstream));
    changed
}

/// Whether two configs serialize alike (the config types compare by what they say).
pub(crate) fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    matches!((serde_json::to_value(a), serde_json::to_value(b)), (Ok(a), Ok(b)) if a == b)
}

/// What a reload changed, for the log and the admin answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reloaded {
    /// Sites the new config adds.
    pub added: Vec<String>,
    /// Sites it no longer has.
    pub removed: Vec<String>,
    /// Sites kept whose settings changed (a new pool among them when `new_pools` says).
    pub changed: Vec<String>,
    /// Sites whose pool was rebuilt (its servers' health starts over).
    pub new_pools: Vec<String>,
    /// The sections besides the sites that changed.
    pub sections: Vec<&'static str>,
}

impl Reloaded {
    pub fn between(running: &EdgeConfig, next: &EdgeConfig) -> Self {
        let mut reloaded = Reloaded::default();
        for site in &next.sites {
            match running.sites.iter().find(|old| old.name == site.name) {
                None => reloaded.added.push(site.name.clone()),
                Some(old) => {
                    if !same(old, site) {
                        reloaded.changed.push(site.name.clone());
                    }
                    if !same(&(&old.pool, &old.upstream), &(&site.pool, &site.upstream)) {
                        reloaded.new_pools.push(site.name.clone());
                    }
                }
            }
        }
        for site in &running.sites {
            if !next.sites.iter().any(|new| new.name == site.name) {
                reloaded.removed.push(site.name.clone());
            }
        }
        for (section, differs) in [
            ("[limits]", !same(&running.limits, &next.limits)),
            ("[overload]", !same(&running.overload, &next.overload)),
            ("[access_log]", !same(&running.access_log, &next.access_log)),
        ] {
            if differs {
                reloaded.sections.push(section);
            }
        }
        reloaded
    }
}

/// The [`Live`] settings `next` describes, replacing `previous`: sites kept by name keep
/// their generations (and pools, when configured the same); the access log is kept when
/// its section did not change, else a new one is started (the old one writes what it
/// holds and stops once the last request using it is done).
pub fn live(
    next: &EdgeConfig,
    previous: Option<(&Live, &EdgeConfig)>,
    counts: &LogCounts,
) -> Result<Live, ConfigError> {
    let empty = SiteTable::default();
    let sites = SiteTable::replacing(
        &next.sites,
        previous.map_or(&empty, |(live, _)| &live.sites),
    )?;
    let kept_log = previous.and_then(|(live, running)| {
        same(&running.access_log, &next.access_log).then(|| live.access_log.clone())
    });
    let access_log = match kept_log {
        Some(log) => log,
        None => next
            .access_log
            .as_ref()
            .map(|log| AccessLog::start(log, &next.node.name, counts.clone()))
            .transpose()?,
    };
    Ok(Live {
        sites,
        limits: RequestLimits::of(next),
        access_log,
    })
}

/// The live settings a node starts with.
pub fn initial(config: &EdgeConfig, counts: &LogCounts) -> Result<Arc<Live>, ConfigError> {
    live(config, None, counts).map(Arc::new)
}

/// Puts new configs in service in a running node: the one place that knows every part a
/// reload touches (the [`Live`] settings, the listeners' limits, the overload limit, the
/// certificates, the pools' probes) and the config in service now.
pub struct Reloader {
    edge: Arc<Edge>,
    /// The config in service; held for the whole of a reload, so reloads run one at a
    /// time.
    running: Mutex<EdgeConfig>,
    /// The file `reload_file` re-reads, when the node was started from one.
    file: Mutex<Option<PathBuf>>,
    limits: watch::Sender<LimitsConfig>,
    certificates: Option<Arc<Certificates>>,
    /// One task per site probing its pool, restarted with each new site table.
    probes: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Takes over `config` (in service in `edge`) and starts probing its sites' pools.
    pub fn new(
        edge: Arc<Edge>,
        config: EdgeConfig,
        limits: watch::Sender<LimitsConfig>,
        certificates: Option<Arc<Certificates>>,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let reloader = Arc::new(Self {
            edge,
            running: Mutex::new(config),
            file: Mutex::new(None),
            limits,
            certificates,
            probes: Mutex::default(),
            stop,
        });
        reloader.restart_probes();
        reloader
    }

    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    /// Makes `path` the file a reload re-reads.
    pub fn set_file(&self, path: PathBuf) {
        *lock(&self.file) = Some(path);
    }

    pub fn file(&self) -> Option<PathBuf> {
        lock(&self.file).clone()
    }

    /// Re-reads the node's config file and reloads it.
    pub fn reload_file(&self) -> Result<Reloaded, ReloadError> {
        let next = self
            .file()
            .ok_or(ReloadError::NoFile)
            .and_then(|path| Ok(EdgeConfig::from_file(&path)?));
        self.reloaded(next.and_then(|next| self.apply(next)))
    }

    /// Puts `next` in service, or refuses it (the running config stays) saying why.
    pub fn reload(&self, next: EdgeConfig) -> Result<Reloaded, ReloadError> {
        self.reloaded(self.apply(next))
    }

    /// Counts and logs a reload's result.
    /// Counts a refusal (an applied reload is counted as it commits, in [`Reloader::apply`])
    /// and logs the result.
    fn reloaded(&self, result: Result<Reloaded, ReloadError>) -> Result<Reloaded, ReloadError> {
        if result.is_err() {
            self.edge.metrics().config_reload(false);
        }
        match &result {
            Ok(reloaded) => tracing::info!(node = %self.edge.name(), ?reloaded, "config reloaded"),
            Err(error) => {
                tracing::error!(node = %self.edge.name(), %error, "config reload refused")
            }
        }
        result
    }

    fn apply(&self, mut next: EdgeConfig) -> Result<Reloaded, ReloadError> {
        let mut running = lock(&self.running);
        next.node.role = running.node.role;
        next.validate()?;
        let fixed = fixed_changes(&running, &next);
        if !fixed.is_empty() {
            return Err(ReloadError::Fixed(fixed));
        }
        let current = self.edge.live();
        let live = live(&next, Some((&current, &running)), self.edge.log_counts())?;
        if let Some(certificates) = &self.certificates {
            certificates.replace(site_certificates(&next))?;
        }
        let reloaded = Reloaded::between(&running, &next);
        // Counted before anything of it is in service: whoever sees the new config (a
        // request, a scrape) sees the count too.
        self.edge.metrics().config_reload(true);
        self.edge.admission.resize(&next.overload);
        self.limits.send_replace(next.limits.clone());
        live.sites.raise_generations(&next.sites);
        self.edge.swap_live(live);
        *running = next;
        drop(running);
        self.restart_probes();
        Ok(reloaded)
    }

    /// One probe task per site of the table in service (a kept pool is probed on from
    /// its current state).
    fn restart_probes(&self) {
        let live = self.edge.live();
        let mut probes = lock(&self.probes);
        for task in probes.drain(..) {
            task.abort();
        }
        for site in live.sites.sites() {
            let (site, edge, mut stop) = (site.clone(), self.edge.clone(), self.stop.clone());
            probes.push(tokio::spawn(async move {
                tokio::select! {
                    () = site.pool.probe_forever(&edge.upstream, &edge.metrics, site.probe_host.clone()) => {}
                    _ = stop.wait_for(|stop| *stop) => {}
                }
            }));
        }
    }

    /// Waits for the probe tasks to end (after the node's stop was sent).
    pub async fn stopped(&self) {
        let probes = std::mem::take(&mut *lock(&self.probes));
        for task in probes {
            let _ = task.await;
        }
    }
}

/// Every site's certificate, as the HTTPS listener serves them.
pub(crate) fn site_certificates(config: &EdgeConfig) -> Vec<Source> {
    config
        .sites
        .iter()
        .filter_map(|site| {
            let tls = site.tls.as_ref()?;
            Some(
                Source::new(&site.name, &site.hosts, &tls.cert, &tls.key)
                    .with_early_data(site.h3_early_data),
            )
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
