//! Certificates for the HTTPS listener: one per site, chosen by SNI, re-read from disk
//! when its files change.
//!
//! Each site with a `[site.tls]` table names a PEM certificate chain and key. The
//! [`Certificates`] resolver answers a ClientHello with the certificate of the site whose
//! host the client named; a client naming no configured host (or none at all) gets no
//! certificate, so rustls ends the handshake with an alert: the node never shows one
//! site's certificate to a client asking for another name.
//!
//! Reload: [`Certificates::watch`] checks every file's modification time and length at an
//! interval and re-reads the sites whose files changed. A new map is built aside and
//! swapped in whole (`ArcSwap`), so a handshake sees either the old or the new set, and
//! open connections keep the certificate they were made with. A pair that does not load
//! (a half-written file, a key that does not match) keeps the old certificate in
//! service and is tried again at the next check.
//!
//! Early data (TLS 1.3 0-RTT, offered on QUIC only): a site opts in per source
//! ([`Source::with_early_data`]); [`Certificates::early_data`] answers for a server name,
//! and [`Certificates::quic_early_data_config`] is the config a handshake naming such a
//! site is run with. Which of the two QUIC configs a connection gets is decided by whoever
//! reads the client's server name first (the HTTP/3 listener); rustls itself has one
//! `max_early_data_size` per config, not per name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// A site's certificate files (`tls = { cert = ..., key = ... }` in a site's config):
/// PEM, re-read when they change on disk.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A host name as certificates are matched on it: lower case, without a trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// ALPN protocols offered, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A certificate or key that cannot be used, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("site {site:?}: cannot read {path}: {source}; check the path in [site.tls]")]
    Read {
        site: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "site {site:?}: {path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate { site: String, path: PathBuf },
    #[error(
        "site {site:?}: {path} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {detail}"
    )]
    Key {
        site: String,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "site {site:?}: the key does not fit the certificate, or is of an unsupported type: {detail}"
    )]
    Mismatch { site: String, detail: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One certificate to serve: its files, the names it is served for, and what the files
/// looked like when last loaded.
#[derive(Debug)]
pub struct Source {
    /// Who it belongs to, for errors and logs (a site's name).
    site: String,
    /// Lower-case host names; empty: served for any name, and to clients sending none
    /// (a single-purpose listener such as the purge API).
    hosts: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    /// Its hosts accept 0-RTT on QUIC.
    early_data: bool,
    stamp: Option<[Stamp; 2]>,
}

/// What tells a file changed: its modification time and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp(meta.modified().ok(), meta.len()))
}

/// What is served for one host name: its certificate, and whether 0-RTT is accepted.
#[derive(Debug, Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    early_data: bool,
}

/// The certificates of every site, by lower-case host name; what the TLS acceptor asks.
pub struct Certificates {
    by_host: ArcSwap<HashMap<String, Served>>,
    sources: std::sync::Mutex<Vec<Source>>,
    /// Counts successful reloads, so tests and operators can wait for one.
    reloads: watch::Sender<u64>,
    /// The single-use session tickets of the QUIC early-data config: shared by every
    /// config built from here, so a config rebuilt (a limits reload) still resumes the
    /// sessions of the one before.
    early_sessions: Arc<ServerSessionMemoryCache>,
    /// Some host in `by_host` accepts early data (set after each swap of the map).
    any_early_data: AtomicBool,
}

/// Resumable sessions the early-data config keeps (two tickets a handshake, each
/// single-use; least recently used dropped first): ~100 bytes each.
const EARLY_SESSIONS: usize = 16 * 1024;

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("hosts", &self.by_host.load().len())
            .field("reloads", &*self.reloads.borrow())
            .finish()
    }
}

impl Source {
    /// A certificate served for `hosts` (any name when empty).
    pub fn new(owner: &str, hosts: &[String], cert: &Path, key: &Path) -> Self {
        Self {
            site: owner.to_owned(),
            hosts: hosts.iter().map(|h| normalize_host(h)).collect(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            early_data: false,
            stamp: None,
        }
    }

    /// Its hosts accept early data (0-RTT) on QUIC when `on`; off by default.
    pub fn with_early_data(mut self, on: bool) -> Self {
        self.early_data = on;
        self
    }
}

/// Map key of the certificate served for any name.
const ANY_NAME: &str = "";

impl Certificates {
    /// Loads the given certificates.
    pub fn from_sources(mut sources: Vec<Source>) -> Result<Self, TlsError> {
        let by_host = load_all(&mut sources)?;
        Ok(Self {
            sources: std::sync::Mutex::new(sources),
            reloads: watch::channel(0).0,
            early_sessions: ServerSessionMemoryCache::new(EARLY_SESSIONS),
            any_early_data: AtomicBool::new(any_early_data(&by_host)),
            by_host: ArcSwap::from_pointee(by_host),
        })
    }

    /// Serves `sources` from now on instead of the current set (a config reload that
    /// adds, drops or moves sites): every one loads, or nothing changes and the error
    /// names the site whose files do not load.
    pub fn replace(&self, mut sources: Vec<Source>) -> Result<(), TlsError> {
        let mut current = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let by_host = load_all(&mut sources)?;
        self.store(by_host);
        *current = sources;
        drop(current);
        self.reloads.send_modify(|n| *n += 1);
        Ok(())
    }

    /// A rustls server config over these certificates: TLS 1.3 and 1.2 only (ring),
    /// ALPN h2 and http/1.1, no client certificates.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let alpn = ALPN.iter().map(|p| p.to_vec()).collect();
        let mut config = self.config(&[&rustls::version::TLS13, &rustls::version::TLS12], alpn)?;
        // Stateless resumption keeps returning clients off the full handshake.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(config)
    }

    /// A TLS config for QUIC (HTTP/3) choosing certificates as [`Self::server_config`]
    /// does, from the same sites (so a reload reaches both): TLS 1.3 only, as QUIC
    /// requires, ALPN `h3`, stateless tickets, and no early data (0-RTT is replayable;
    /// rustls's default, said here because QUIC would otherwise offer it). What every
    /// handshake gets unless its server name is a site's that opted in to early data.
    pub fn quic_server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = self.config(&[&rustls::version::TLS13], vec![b"h3".to_vec()])?;
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The QUIC config of a handshake whose server name is a site's that opted in to
    /// early data ([`Self::early_data`]): as [`Self::quic_server_config`], but its
    /// tickets let the client send 0-RTT (`max_early_data_size` is `u32::MAX`, the one
    /// value QUIC allows besides 0), and they are kept here, each usable once, rather
    /// than sealed for the client: rustls accepts early data only with such tickets, so
    /// the same first flight replayed to this node is refused its early data (RFC 8446
    /// 8.1). A replay to another node, or before the original, still reaches the
    /// listener: what it may do with early data is the listener's to limit.
    pub fn quic_early_data_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = self.config(&[&rustls::version::TLS13], vec![b"h3".to_vec()])?;
        config.session_storage = self.early_sessions.clone();
        config.max_early_data_size = u32::MAX;
        Ok(config)
    }

    /// Whether the site `server_name` (a client's SNI) names accepts early data.
    pub fn early_data(&self, server_name: &str) -> bool {
        let map = self.by_host.load();
        map.get(server_name)
            .or_else(|| map.get(&normalize_host(server_name)))
            .is_some_and(|served| served.early_data)
    }

    /// Whether any site accepts early data (else no handshake needs its name read first).
    pub fn any_early_data(&self) -> bool {
        self.any_early_data.load(Ordering::Acquire)
    }

    /// Serves `by_host` from now on.
    fn store(&self, by_host: HashMap<String, Served>) {
        let any = any_early_data(&by_host);
        self.by_host.store(Arc::new(by_host));
        self.any_early_data.store(any, Ordering::Release);
    }

    /// The config every listener's is built from: these certificates by SNI, no client
    /// certificates, `versions` and `alpn` as given; no resumption yet.
    fn config(
        self: &Arc<Self>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: Vec<Vec<u8>>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn;
        Ok(config)
    }

    /// Re-reads the sites whose files changed; returns how many were replaced. A site
    /// whose new files do not load keeps its old certificate (logged, retried next time).
    pub fn reload_changed(&self) -> usize {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: Option<HashMap<String, Served>> = None;
        let mut changed = 0;
        for source in sources.iter_mut() {
            let Some(now) = stamp(&source.cert).zip(stamp(&source.key)) else {
                continue; // a file is missing for the moment (being replaced): keep the old
            };
            let now = [now.0, now.1];
            if source.stamp == Some(now) {
                continue;
            }
            match load_pair(&source.site, &source.cert, &source.key) {
                Ok(key) => {
                    let served = Served {
                        key: Arc::new(key),
                        early_data: source.early_data,
                    };
                    let map = next.get_or_insert_with(|| (**self.by_host.load()).clone());
                    for host in source.names() {
                        map.insert(host.to_owned(), served.clone());
                    }
                    source.stamp = Some(now);
                    changed += 1;
                    tracing::info!(site = %source.site, "certificate reloaded");
                }
                Err(error) => {
                    tracing::warn!(%error, "certificate changed on disk but does not load; still serving the previous one");
                }
            }
        }
        let Some(map) = next else { return 0 };
        // Swapped while the sources are still locked, so a concurrent call that finds the
        // files unchanged returns only after the new map is in service.
        self.store(map);
        drop(sources);
        self.reloads.send_modify(|n| *n += 1);
        changed
    }

    /// Checks the files every `interval` until `stop` says so.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let this = self.clone();
            // File reads and key parsing are blocking work.
            let _ = tokio::task::spawn_blocking(move || this.reload_changed()).await;
        }
    }

    /// Number of reloads that changed a certificate so far; `subscribe` to wait for one.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The host names that have a certificate.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.by_host.load().keys().cloned().collect();
        hosts.retain(|h| h != ANY_NAME);
        hosts.sort();
        hosts
    }
}

fn any_early_data(by_host: &HashMap<String, Served>) -> bool {
    by_host.values().any(|served| served.early_data)
}

/// Loads every source's pair, by host name, noting the files' stamps.
fn load_all(sources: &mut [Source]) -> Result<HashMap<String, Served>, TlsError> {
    let mut by_host = HashMap::new();
    for source in sources {
        let stamps = [stamp(&source.cert), stamp(&source.key)];
        let served = Served {
            key: Arc::new(load_pair(&source.site, &source.cert, &source.key)?),
            early_data: source.early_data,
        };
        for host in source.names() {
            by_host.insert(host.to_owned(), served.clone());
        }
        source.stamp = stamps[0].zip(stamps[1]).map(|(c, k)| [c, k]);
    }
    Ok(by_host)
}

impl Source {
    fn names(&self) -> impl Iterator<Item = &str> {
        let any = self.hosts.is_empty().then_some(ANY_NAME);
        self.hosts.iter().map(String::as_str).chain(any)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self.by_host.load();
        let found = hello.server_name().and_then(|name| {
            map.get(name)
                // rustls hands the name over lower-cased already; a trailing dot is not sent.
                .or_else(|| map.get(&normalize_host(name)))
        });
        found
            .or_else(|| map.get(ANY_NAME))
            .map(|served| served.key.clone())
    }
}

/// Reads and checks one site's certificate chain and key.
fn load_pair(site: &str, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            site: site.to_owned(),
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            site: site.to_owned(),
            path: cert.to_owned(),
        });
    }
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        site: site.to_owned(),
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private, &provider).map_err(|e| TlsError::Mismatch {
        site: site.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_says_which_and_why() {
        let dir = std::env::temp_dir().join(format!("edge-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"not a certificate").unwrap();
        let err = load_pair("s", &dir.join("absent.pem"), &empty).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        let err = load_pair("s", &empty, &empty).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
