//! The purge API's configuration: its listener, the log, the nodes it fans out to, and the
//! publishers with their tokens and sites.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::admission::{QueueConfig, RateConfig};

/// The whole configuration of the purge API.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
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
    pub tls: Option<tls_certs::CertFiles>,
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
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `embedded` (a local file, this API pushes purges to the nodes) or `nats` (a NATS
    /// JetStream stream shared by every API instance, read by the nodes themselves).
    #[serde(default)]
    pub engine: LogEngine,
    /// The log file (created if missing); for the embedded engine.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The stream, for the NATS engine (`[log.nats]`).
    #[serde(default)]
    pub nats: Option<NatsLogConfig>,
    /// Purges kept for nodes that were away; older ones force such a node to forget its
    /// content when it comes back.
    #[serde(default = "default_retain_entries")]
    pub retain_entries: u64,
    #[serde(default = "default_retain_for", with = "humantime_serde")]
    pub retain_for: Duration,
}

/// Which purge log the API uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEngine {
    /// One local `redb` file: one API instance, which pushes purges to every node.
    #[default]
    Embedded,
    /// A replicated NATS JetStream stream: any number of API instances publish to it,
    /// nodes read it from their own position and report their watermarks in a KV bucket.
    Nats,
}

/// The NATS JetStream purge stream (`[log.nats]`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsLogConfig {
    /// NATS servers of this region (`nats://host:4222`).
    pub servers: Vec<String>,
    /// The stream's name; nodes' `[purge.nats] stream` must name the same.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Copies of every purge on different servers (1, 3 or 5; at most the cluster's size).
    /// JetStream acknowledges a purge once a majority of the replicas stored it, so
    /// losing a minority of the servers (one of three) loses no accepted purge and keeps
    /// the stream writable.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The NATS cluster (of a supercluster) the stream and the watermark bucket are placed
    /// in when this instance creates them: the region that holds the purge log. Unset:
    /// the cluster of the server this instance is connected to.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Longest a publish waits for the stream's acknowledgement before the purge is
    /// refused with `503`.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
}

fn default_stream() -> String {
    node_api::nats::DEFAULT_STREAM.to_owned()
}
fn default_replicas() -> usize {
    1
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A node purges are pushed to (embedded log) or whose watermark is reported (NATS).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// The node's admin listener, `http://host:port`; required with the embedded log,
    /// unused with NATS (nodes read the stream themselves).
    #[serde(default)]
    pub admin: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
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
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, which is also what bounds one purge: at most
    /// `node_api::purge::MAX_PURGE_BODY_BYTES` (1 MiB - 4 KiB), so that any purge read from a
    /// body this long fits in one batch a node reads (`node_api::purge::MAX_BATCH_BYTES`,
    /// 4 MiB). The fan-out bounds every batch by those bytes as well as by count.
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

impl LogConfig {
    /// The embedded log in the redb file at `path`, with the default retention.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            engine: LogEngine::Embedded,
            path: Some(path.into()),
            nats: None,
            retain_entries: default_retain_entries(),
            retain_for: default_retain_for(),
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
        match self.log.engine {
            LogEngine::Embedded => {
                if self.log.path.is_none() {
                    return bad("[log] path is required with the embedded engine (e.g. \
                         \"/var/lib/cdn/purges.redb\"), or set engine = \"nats\" with [log.nats]"
                        .into());
                }
            }
            LogEngine::Nats => {
                let Some(nats) = &self.log.nats else {
                    return bad(
                        "[log] engine = \"nats\" needs a [log.nats] table with servers".into(),
                    );
                };
                node_api::nats::validate_servers(&nats.servers)
                    .and_then(|()| node_api::nats::validate_stream_name(&nats.stream))
                    .map_err(|e| ConfigError::Invalid(format!("[log.nats] {e}")))?;
                if !(1..=5).contains(&nats.replicas) {
                    return bad(format!(
                        "[log.nats] replicas must be 1 to 5 (JetStream's limit), got {}",
                        nats.replicas
                    ));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for node in &self.nodes {
            if !names.insert(node.name.as_str()) {
                return bad(format!("node {:?} is listed twice", node.name));
            }
            match (&node.admin, self.log.engine) {
                (Some(admin), _) => {
                    let ok = admin
                        .parse::<http::Uri>()
                        .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
                    if !ok {
                        return bad(format!(
                            "node {:?}: admin {admin:?} must be http://host:port",
                            node.name
                        ));
                    }
                }
                (None, LogEngine::Embedded) => {
                    return bad(format!(
                        "node {:?}: admin = \"http://host:port\" is required with the embedded log \
                         (the API pushes purges there)",
                        node.name
                    ));
                }
                (None, LogEngine::Nats) => {}
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
        if self.limits.max_body_bytes > node_api::purge::MAX_PURGE_BODY_BYTES {
            return bad(format!(
                "limits.max_body_bytes is {}, over {}: a purge that large would not fit in a \
                 batch a node reads ({} bytes); lower it",
                self.limits.max_body_bytes,
                node_api::purge::MAX_PURGE_BODY_BYTES,
                node_api::purge::MAX_BATCH_BYTES
            ));
        }
        if self.limits.max_targets == 0 {
            return bad("limits.max_targets must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(log: &str, node: &str) -> Result<PurgeApiConfig, ConfigError> {
        PurgeApiConfig::from_toml(&format!(
            "node_token = \"node-token-0123456789\"\n{log}\n[[node]]\nname = \"edge-1\"\n{node}\n\
             [[site]]\nname = \"s\"\nhosts = [\"s.test\"]\n\
             [[publisher]]\nname = \"p\"\ntoken = \"publisher-token-0123456789\"\nsites = [\"s\"]\n"
        ))
    }

    #[test]
    fn the_embedded_log_needs_a_path_and_node_admin_addresses() {
        let ok = config(
            "[log]\npath = \"/tmp/p.redb\"",
            "admin = \"http://127.0.0.1:9080\"",
        );
        assert_eq!(ok.unwrap().log.engine, LogEngine::Embedded);
        let err = config("[log]", "admin = \"http://127.0.0.1:9080\"").unwrap_err();
        assert!(err.to_string().contains("path is required"), "{err}");
        let err = config("[log]\npath = \"/tmp/p.redb\"", "").unwrap_err();
        assert!(err.to_string().contains("admin"), "{err}");
    }

    #[test]
    fn the_body_limit_may_not_let_a_purge_outgrow_a_nodes_batch() {
        let node = "admin = \"http://127.0.0.1:9080\"";
        let limit = |bytes: usize| {
            config(
                &format!("[log]\npath = \"/tmp/p.redb\"\n[limits]\nmax_body_bytes = {bytes}"),
                node,
            )
        };
        let largest = node_api::purge::MAX_PURGE_BODY_BYTES;
        assert_eq!(limit(largest).unwrap().limits.max_body_bytes, largest);
        let err = limit(largest + 1).unwrap_err();
        assert!(err.to_string().contains("max_body_bytes"), "{err}");
    }

    #[test]
    fn the_nats_log_needs_servers_and_takes_nodes_by_name() {
        let nats = "[log]\nengine = \"nats\"\n[log.nats]\nservers = [\"nats://127.0.0.1:4222\"]\nreplicas = 3";
        let config_ok = config(nats, "").unwrap();
        let log = config_ok.log.nats.unwrap();
        assert_eq!((log.stream.as_str(), log.replicas), ("CDN_PURGES", 3));
        assert_eq!(log.ack_timeout, Duration::from_secs(2));
        let err = config("[log]\nengine = \"nats\"", "").unwrap_err();
        assert!(err.to_string().contains("[log.nats]"), "{err}");
        let err = config(&nats.replace("replicas = 3", "replicas = 7"), "").unwrap_err();
        assert!(err.to_string().contains("replicas"), "{err}");
        let err = config(
            "[log]\nengine = \"nats\"\n[log.nats]\nservers = [\"nats://x\"]\nstream = \"a.b\"",
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("stream"), "{err}");
    }
}
