//! The purge API's configuration: its listener, the log, the nodes it fans out to, and the
//! publishers with their tokens and sites.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::admission::{QueueConfig, RateConfig};

/// The whole configuration of the purge API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeApiConfig {
    /// Publishers' API (and the nodes' `/v1/purge-log`), plus `/healthz` and `/metrics`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The same API over HTTPS (HTTP/1.1, TLS 1.2/1.3), with the `[tls]` certificate;
    /// off when unset. Nodes read the log over `listen`, which can then stay private.
    #[serde(default)]
    pub https_listen: Option<SocketAddr>,
    /// The certificate of `https_listen`: PEM files, re-read when they change.
    #[serde(default)]
    pub tls: Option<edge::config::SiteTlsConfig>,
    pub log: LogConfig,
    /// Shared secret between the API and the nodes (`cdn-node-token`).
    pub node_token: String,
    /// Every edge and shield that applies purges.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// The sites publishers may purge, with their host names.
    #[serde(rename = "site")]
    pub sites: Vec<SiteConfig>,
    #[serde(rename = "publisher")]
    pub publishers: Vec<PublisherConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Rate limits of publishers that do not set their own.
    #[serde(default)]
    pub rate: RateConfig,
    #[serde(default)]
    pub queue: QueueConfig,
}

/// Where and how long purges are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The log file (created if missing).
    pub path: PathBuf,
    /// Purges kept for nodes that were away; older ones force such a node to forget its
    /// content when it comes back.
    #[serde(default = "default_retain_entries")]
    pub retain_entries: u64,
    #[serde(default = "default_retain_for", with = "humantime_serde")]
    pub retain_for: Duration,
}

/// A node purges are pushed to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// The node's admin listener, `http://host:port`.
    pub admin: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    pub name: String,
    /// The bearer token; keep it out of version control.
    pub token: String,
    /// Names of the sites this publisher may purge.
    pub sites: Vec<String>,
    /// Rate limits for this publisher, instead of the default `[rate]`.
    #[serde(default)]
    pub rate: Option<RateConfig>,
}

/// Limits on one request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most targets (URLs, tags, prefixes, hosts) in one purge.
    pub max_targets: usize,
    /// Longest a `?wait=` on a purge's status may hold.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_targets: 1000,
            max_wait: Duration::from_secs(30),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}
fn default_retain_entries() -> u64 {
    1_000_000
}
fn default_retain_for() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config is not valid TOML for the purge API: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

impl PurgeApiConfig {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_token.len() < 16 {
            return bad("node_token must be at least 16 characters".into());
        }
        let mut sites = std::collections::HashSet::new();
        for site in &self.sites {
            if !sites.insert(site.name.as_str()) {
                return bad(format!("site {:?} is listed twice", site.name));
            }
            if site.hosts.is_empty() {
                return bad(format!("site {:?} lists no hosts", site.name));
            }
        }
        let mut tokens = std::collections::HashSet::new();
        for publisher in &self.publishers {
            if publisher.token.len() < 16 {
                return bad(format!(
                    "publisher {:?}: token must be at least 16 characters",
                    publisher.name
                ));
            }
            if !tokens.insert(publisher.token.as_str()) {
                return bad(format!(
                    "publisher {:?} shares its token with another publisher",
                    publisher.name
                ));
            }
            for site in &publisher.sites {
                if !sites.contains(site.as_str()) {
                    return bad(format!(
                        "publisher {:?}: site {site:?} is not a configured [[site]]",
                        publisher.name
                    ));
                }
            }
        }
        for node in &self.nodes {
            let ok = node
                .admin
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return bad(format!(
                    "node {:?}: admin {:?} must be http://host:port",
                    node.name, node.admin
                ));
            }
        }
        match (&self.https_listen, &self.tls) {
            (Some(_), None) => {
                return bad("https_listen is set but there is no [tls] cert/key: add them".into());
            }
            (None, Some(_)) => {
                return bad("[tls] is set but https_listen is not: set it to serve HTTPS".into());
            }
            _ => {}
        }
        if self.limits.max_targets == 0 {
            return bad("limits.max_targets must be at least 1".into());
        }
        Ok(())
    }
}
