//! The edge node's configuration: what it listens on, how much it caches, and which sites
//! it serves.
//!
//! Every field has a safe default except the sites themselves, so a config file names only
//! what differs. [`EdgeConfig::validate`] runs before anything binds: a node never starts
//! with a config it would later misread.
//!
//! [`EdgeConfig`] composes the sections each layer defines for itself: `[cache]`
//! ([`CacheConfig`]), `[upstream]` ([`UpstreamConfig`]), `[overload]`
//! ([`OverloadConfig`]), `[limits]` ([`LimitsConfig`]) and each site's `[site.pool]`
//! ([`PoolConfig`]); the node's own sections (`[node]`, `[purge]`, `[[site]]`) are here.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::cache::key::QueryMode;
pub use crate::cache::partial::RangeMiss;
use crate::node::access_log::AccessLogConfig;
use crate::node::role::Role;
use node_api::nats::{DEFAULT_STREAM, validate_servers, validate_stream_name};

pub use crate::cache::store::CacheConfig;
pub use crate::front::limits::LimitsConfig;
pub use crate::upstream::client::UpstreamConfig;
pub use crate::upstream::overload::OverloadConfig;
use crate::upstream::pool::base_url;
pub use crate::upstream::pool::{PoolConfig, ServerConfig};

/// The whole configuration of one edge node.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub purge: PurgeConfig,
    #[serde(default)]
    pub overload: OverloadConfig,
    /// `[access_log]`: one line per request (see [`crate::node::access_log`]); off when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteConfig>,
}

/// How the node takes part in purges.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeConfig {
    /// Shared secret the purge API sends (header `cdn-node-token`) when it pushes purges
    /// to the admin listener, and this node sends when it reads the log. Purges are not
    /// accepted while unset.
    pub node_token: Option<String>,
    /// The purge API (`http://host:port`): read at start to catch up from the store's
    /// watermark before the node reports ready. For the embedded log; a node of a
    /// NATS deployment sets [`nats`](PurgeConfig::nats) instead.
    pub api: Option<String>,
    /// Read purges straight from the NATS JetStream purge stream (`[purge.nats]`): the
    /// node catches up from its watermark before it serves, follows the stream, and
    /// reports its watermark in the stream's KV bucket.
    pub nats: Option<NatsPurgeConfig>,
}

/// How a node reaches the purge stream (`[purge.nats]`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsPurgeConfig {
    /// NATS servers of the node's region (`nats://host:4222`); the client reconnects to
    /// any of them and learns the rest of the cluster from them.
    pub servers: Vec<String>,
    /// The JetStream stream the purge API publishes to.
    #[serde(default = "default_stream")]
    pub stream: String,
}

fn default_stream() -> String {
    DEFAULT_STREAM.to_owned()
}

impl NatsPurgeConfig {
    /// Checks the servers and the stream name; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        validate_servers(&self.servers)?;
        validate_stream_name(&self.stream)
    }
}

/// Identity and listeners of the node.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name in `Via` and `Cache-Status`; an RFC 9110 token.
    pub name: String,
    /// Public listener for clients.
    pub listen: SocketAddr,
    /// Admin listener for `/healthz` and `/metrics`; never exposed to clients.
    pub admin_listen: SocketAddr,
    /// Public HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN); off when unset. Sites with a
    /// `[site.tls]` certificate are served on it, chosen by SNI.
    pub https_listen: Option<SocketAddr>,
    /// HTTP/3 beside HTTPS: QUIC on UDP at the HTTPS listener's address and port, the
    /// same certificates, advertised with `Alt-Svc` on HTTPS responses. On by default
    /// when `https_listen` is set.
    pub http3: bool,
    /// How often certificate and key files are checked for changes (hot reload).
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    /// The Unix socket a `cdn edge`/`cdn shield` process offers its listeners on, for a
    /// new process started with `--upgrade` (see [`crate::node::upgrade`]); by default
    /// `cdn-<name>.upgrade.sock` in the system's temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// Whether the node is an edge or a shield: not read from the file, but set by what
    /// runs the node (`origin_shield::ShieldServer` makes it a shield).
    #[serde(skip)]
    pub role: Role,
}

impl NodeConfig {
    /// Where this node offers upgrades: `upgrade_socket`, or the default by name.
    pub fn upgrade_socket(&self) -> std::path::PathBuf {
        self.upgrade_socket
            .clone()
            .unwrap_or_else(|| crate::node::upgrade::default_socket(&self.name))
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "edge".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            https_listen: None,
            http3: true,
            tls_reload_interval: Duration::from_secs(1),
            upgrade_socket: None,
            role: Role::Edge,
        }
    }
}

/// One site: the hosts it answers for and where its content comes from.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Short name for logs and metric labels (required; checked by `validate`).
    #[serde(default)]
    pub name: String,
    /// Host names (no port) this site answers for; matched case-insensitively (at least
    /// one; checked by `validate`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Base URL of the one upstream, `http://host:port`: an origin or a shield. A site
    /// names either this or a `pool`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Several upstream servers (origins, or the shield tier) with load balancing, health
    /// checks and retries.
    #[serde(default)]
    pub pool: Option<PoolConfig>,
    /// `Host` header sent upstream; the client's host when unset.
    #[serde(default)]
    pub upstream_host: Option<String>,
    /// Part of every cache key; raising it makes all of the site's old entries unreachable.
    #[serde(default = "default_generation")]
    pub generation: u64,
    /// How the query string enters the cache key and the upstream request.
    #[serde(default)]
    pub query: QueryMode,
    /// Query parameters removed before keying and forwarding (e.g. `utm_source`).
    #[serde(default)]
    pub drop_params: Vec<String>,
    /// Heuristic freshness (RFC 9111 4.2.2) for responses without explicit freshness:
    /// this fraction of the time since `Last-Modified` (0.1 by default, as RFC 9111
    /// suggests and browsers and Squid do), for the statuses RFC 9110 15.1 calls
    /// heuristically cacheable and for any response that says `public`. `0` turns it off.
    #[serde(default = "default_heuristic_fraction")]
    pub heuristic_fraction: f64,
    /// Upper bound of a heuristic freshness lifetime.
    #[serde(default = "default_heuristic_max", with = "humantime_serde")]
    pub heuristic_max: Duration,
    /// How long a 404 or 410 without freshness information is cached, so that a flood of
    /// requests for a missing file does not reach the origin; `"0s"` turns it off.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// `stale-while-revalidate` for responses that do not set it: serve a stale entry at
    /// once and refresh it in the background.
    #[serde(default, with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` for responses that do not set it: serve a stale entry when the
    /// upstream fails or answers 5xx. Never for `must-revalidate` or `no-cache` responses.
    #[serde(default = "default_stale_if_error", with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// Remove `Set-Cookie` from upstream responses before deciding whether to store them,
    /// so that responses which set cookies can be cached and shared (the cookie itself is
    /// then never handed to anyone). Off by default: such responses are not stored.
    #[serde(default)]
    pub strip_set_cookie: bool,
    /// Store a `200`/`203` response to a POST as the answer to later GETs of the POST's
    /// target when it has explicit freshness and a `Content-Location` naming that very
    /// target (RFC 9110 9.3.3, a MAY). Off by default: most applications never mean a
    /// POST's answer for anyone else, and few CDNs do this.
    #[serde(default)]
    pub store_post_content_location: bool,
    /// The site's certificate on the HTTPS listener; without one the site is HTTP-only
    /// and a TLS client asking for its name is refused during the handshake.
    #[serde(default)]
    pub tls: Option<tls_certs::CertFiles>,
    /// Accept early data (TLS 1.3 0-RTT) on HTTP/3 from clients resuming a session with
    /// one of the site's hosts: their first requests leave a round trip sooner, at the
    /// cost that an attacker who copies them can replay them (to another node, or before
    /// the client's own). Off by default; on, only safe methods without a body (`GET`,
    /// `HEAD`, `OPTIONS`) are answered from early data (sent upstream with `Early-Data:
    /// 1`, RFC 8470), anything else gets `425 Too Early` and the client retries it after
    /// the handshake. Needs `tls`.
    #[serde(default)]
    pub h3_early_data: bool,
    /// Request fields that select different content from the upstream and so must be part
    /// of the cache key (each response is keyed as if it said `Vary` on them). Fields that
    /// change responses without being keyed (`X-Forwarded-Host`, `X-Original-URL`,
    /// `X-HTTP-Method-Override`, ...) are only forwarded when listed here.
    #[serde(default)]
    pub key_headers: Vec<String>,
    /// What a range request for an object nothing is held of asks the upstream for:
    /// `"whole"` (the whole object, so later ranges are hits) or `"forward"` (the
    /// requested span, for upstreams that answer only ranges). Either way `206`s are
    /// stored as partial objects and completed with ranged requests (`cache::partial`).
    #[serde(default)]
    pub range_miss: RangeMiss,
    /// The share of this site's requests the access log writes a line for, 0 to 1 (default
    /// 1: every one); which requests is decided by their id, evenly.
    #[serde(default = "default_access_log_sample")]
    pub access_log_sample: f64,
}

fn default_access_log_sample() -> f64 {
    1.0
}

/// A site with no name, hosts or upstream yet and every policy at its default: what a
/// `[[site]]` table without keys means (the topology's site `options` start from it).
impl Default for SiteConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            hosts: Vec::new(),
            upstream: None,
            pool: None,
            upstream_host: None,
            generation: default_generation(),
            query: QueryMode::default(),
            drop_params: Vec::new(),
            heuristic_fraction: default_heuristic_fraction(),
            heuristic_max: default_heuristic_max(),
            negative_ttl: default_negative_ttl(),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: default_stale_if_error(),
            strip_set_cookie: false,
            store_post_content_location: false,
            tls: None,
            h3_early_data: false,
            key_headers: Vec::new(),
            range_miss: RangeMiss::Whole,
            access_log_sample: default_access_log_sample(),
        }
    }
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_stale_if_error() -> Duration {
    Duration::from_secs(3600)
}

fn default_generation() -> u64 {
    1
}

fn default_heuristic_fraction() -> f64 {
    0.1
}

fn default_heuristic_max() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A configuration that cannot be used, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("node name {0:?} must be a non-empty HTTP token (letters, digits, '-', '.', '_')")]
    NodeName(String),
    #[error("no [[site]] configured: an edge without sites would refuse every request")]
    NoSites,
    #[error("site {site:?}: {message}")]
    Site { site: String, message: String },
    #[error("host {host:?} is listed by both site {first:?} and site {second:?}")]
    DuplicateHost {
        host: String,
        first: String,
        second: String,
    },
    #[error(
        "cache.max_object_size ({max}) must be at most cache.capacity ({capacity}) and below 4 GiB"
    )]
    ObjectSize { max: ByteSize, capacity: ByteSize },
    #[error("limits.max_header_bytes must be at least 8 KiB (got {0})")]
    HeaderBytes(ByteSize),
    #[error(
        "overload.max_upstream must be at least 1 (got 0): a node with no upstream slots could never fill its cache"
    )]
    NoUpstreamSlots,
    #[error("[purge]: {0}")]
    Purge(String),
    #[error("[access_log]: {0}")]
    AccessLog(#[from] crate::node::access_log::AccessLogError),
    #[error("limits.{name} must be at least {min} (got {got})")]
    Limit {
        name: &'static str,
        min: u64,
        got: u64,
    },
    #[error(
        "node.https_listen is set but no site has a [site.tls] certificate: add one, or remove https_listen"
    )]
    HttpsWithoutCertificates,
    #[error(
        "site {0:?} has a [site.tls] certificate but node.https_listen is unset: set it to serve HTTPS"
    )]
    CertificateWithoutHttps(String),
    #[error("cache.state_dir: {0}")]
    State(#[from] crate::node::state::StateError),
    #[error("{0}")]
    Disk(String),
}

impl EdgeConfig {
    /// Reads, parses and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<inline>".to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that would otherwise fail, or misbehave, at request time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_token(&self.node.name) {
            return Err(ConfigError::NodeName(self.node.name.clone()));
        }
        if self.sites.is_empty() {
            return Err(ConfigError::NoSites);
        }
        let max = self.cache.max_object_size;
        if max > self.cache.capacity || max.as_u64() >= u64::from(u32::MAX) {
            return Err(ConfigError::ObjectSize {
                max,
                capacity: self.cache.capacity,
            });
        }
        if let Some(disk) = &self.cache.disk {
            disk.validate().map_err(ConfigError::Disk)?;
        }
        if self.limits.max_header_bytes < ByteSize::kib(8) {
            return Err(ConfigError::HeaderBytes(self.limits.max_header_bytes));
        }
        if self.overload.max_upstream == 0 {
            return Err(ConfigError::NoUpstreamSlots);
        }
        if let Some(nats) = &self.purge.nats {
            if self.purge.api.is_some() {
                return Err(ConfigError::Purge(
                    "set either api (the embedded log, pushed by the purge API) or [purge.nats] \
                     (the NATS stream), not both"
                        .into(),
                ));
            }
            nats.validate().map_err(ConfigError::Purge)?;
        }
        let limits = &self.limits;
        for (name, min, got) in [
            ("max_uri_bytes", 256, limits.max_uri_bytes as u64),
            ("max_headers", 8, limits.max_headers as u64),
            (
                "h2_max_concurrent_streams",
                1,
                u64::from(limits.h2_max_concurrent_streams),
            ),
        ] {
            if got < min {
                return Err(ConfigError::Limit { name, min, got });
            }
        }
        let with_tls = self.sites.iter().find(|s| s.tls.is_some());
        match (self.node.https_listen, with_tls) {
            (Some(_), None) => return Err(ConfigError::HttpsWithoutCertificates),
            (None, Some(site)) => {
                return Err(ConfigError::CertificateWithoutHttps(site.name.clone()));
            }
            _ => {}
        }
        let mut seen: std::collections::HashMap<String, &str> = Default::default();
        for site in &self.sites {
            site.validate()?;
            for host in &site.hosts {
                let host = normalize_host(host);
                if let Some(first) = seen.insert(host.clone(), &site.name) {
                    return Err(ConfigError::DuplicateHost {
                        host,
                        first: first.to_owned(),
                        second: site.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl SiteConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| ConfigError::Site {
            site: self.name.clone(),
            message,
        };
        if self.name.is_empty() {
            return Err(fail("name must not be empty".into()));
        }
        if self.hosts.is_empty() {
            return Err(fail("hosts must list at least one host name".into()));
        }
        for host in &self.hosts {
            let ipv6_literal = host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok();
            if host.is_empty() || (!ipv6_literal && host.contains(['/', ':', ' ', '@', '[', ']'])) {
                return Err(fail(format!(
                    "host {host:?} must be a bare host name, without scheme, port or path"
                )));
            }
        }
        match (&self.upstream, &self.pool) {
            (Some(url), None) => {
                base_url("upstream", url).map_err(fail)?;
            }
            (None, Some(pool)) => {
                pool.validate().map_err(fail)?;
            }
            (Some(_), Some(_)) => {
                return Err(fail(
                    "set either upstream (one server) or [site.pool] (several), not both".into(),
                ));
            }
            (None, None) => {
                return Err(fail(
                    "no upstream: set upstream = \"http://host:port\" or a [site.pool]".into(),
                ));
            }
        }
        for name in &self.key_headers {
            let ok = http::HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| {
                !matches!(
                    n.as_str(),
                    "host"
                        | "connection"
                        | "transfer-encoding"
                        | "content-length"
                        | "te"
                        | "upgrade"
                )
            });
            if !ok {
                return Err(fail(format!(
                    "key_headers: {name:?} is not a request field that can be keyed (a field name, not Host or a framing field)"
                )));
            }
        }
        if self.h3_early_data && self.tls.is_none() {
            return Err(fail(
                "h3_early_data needs the site's certificate: add tls = { cert = ..., key = ... } (0-RTT is part of a TLS handshake)".into(),
            ));
        }
        let f = self.heuristic_fraction;
        if !(0.0..=1.0).contains(&f) {
            return Err(fail(format!(
                "heuristic_fraction must be in [0, 1] (0 is off), got {f}; RFC 9111 suggests 0.1"
            )));
        }
        Ok(())
    }
}

/// Lower-cases a host name and strips a trailing dot, as site lookup does.
pub use tls_certs::normalize_host;

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!#$&'*+^`|".contains(&b))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_default_site_is_what_an_empty_site_table_means() {
        let parsed: SiteConfig = toml::from_str("").expect("an empty table");
        let text = |site: &SiteConfig| toml::to_string(site).expect("serializes");
        assert_eq!(text(&SiteConfig::default()), text(&parsed));
    }

    use super::*;
    use crate::upstream::balance::Policy;

    const MINIMAL: &str = r#"
        [[site]]
        name = "assets"
        hosts = ["assets.example.com"]
        upstream = "http://127.0.0.1:8081"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = EdgeConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(c.cache.capacity, ByteSize::mib(512));
        assert_eq!(c.sites[0].generation, 1);
        assert_eq!(c.sites[0].query, QueryMode::Keep);
    }

    #[test]
    fn sizes_and_durations_are_humane() {
        let c = EdgeConfig::from_toml(&format!(
            "[cache]\ncapacity = \"64 MiB\"\nmax_object_size = \"1 MiB\"\n\
             [upstream]\nresponse_timeout = \"250ms\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.cache.capacity.as_u64(), 64 << 20);
        assert_eq!(c.upstream.response_timeout, Duration::from_millis(250));
    }

    #[test]
    fn rejects_unknown_fields_with_the_field_name() {
        let err = EdgeConfig::from_toml(&format!("[cache]\ncapacty = 1\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("capacty"), "{err}");
    }

    #[test]
    fn rejects_no_sites() {
        assert!(matches!(
            EdgeConfig::from_toml("").unwrap_err(),
            ConfigError::NoSites
        ));
    }

    #[test]
    fn rejects_bad_upstreams() {
        for bad in [
            "ftp://x",
            "127.0.0.1:80",
            "http://x/path",
            "https://x",
            "not a url",
        ] {
            let text = MINIMAL.replace("http://127.0.0.1:8081", bad);
            let err = EdgeConfig::from_toml(&text).unwrap_err();
            assert!(matches!(err, ConfigError::Site { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn early_data_without_a_certificate_is_refused_with_what_to_add() {
        let text = format!("{MINIMAL}h3_early_data = true\n");
        let err = EdgeConfig::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("h3_early_data needs the site's certificate"),
            "{err}"
        );
    }

    const POOL: &str = r#"
        [[site]]
        name = "assets"
        hosts = ["assets.example.com"]

        [site.pool]
        balance = "weighted_round_robin"
        servers = [
            { url = "http://10.0.0.1:80", weight = 3, max_connections = 64 },
            { url = "http://10.0.0.2:80", probe = "http://10.0.0.2:9080/healthz" },
        ]

        [site.pool.health]
        interval = "500ms"
        fall = 2

        [site.pool.retry]
        attempts = 3
    "#;

    #[test]
    fn a_pool_reads_its_servers_policy_health_and_retries() {
        let c = EdgeConfig::from_toml(POOL).unwrap();
        let pool = c.sites[0].pool.as_ref().expect("pool");
        assert_eq!(pool.balance, Policy::WeightedRoundRobin);
        assert_eq!(pool.servers.len(), 2);
        assert_eq!(
            (pool.servers[0].weight, pool.servers[0].max_connections),
            (3, 64)
        );
        assert_eq!(pool.servers[1].weight, 1);
        assert!(pool.probes);
        assert_eq!(pool.health.interval, Duration::from_millis(500));
        assert_eq!(pool.health.fall, 2);
        assert_eq!(pool.retry.attempts, 3);
    }

    #[test]
    fn rejects_bad_pools_with_the_reason() {
        for (bad, why) in [
            (
                POOL.replace("[site.pool]", "upstream = \"http://x\"\n[site.pool]"),
                "not both",
            ),
            (
                MINIMAL.replace("upstream = \"http://127.0.0.1:8081\"", ""),
                "no upstream",
            ),
            (POOL.replace("weight = 3", "weight = 0"), "at least 1"),
            (
                POOL.replace("10.0.0.2:80\"", "10.0.0.1:80\""),
                "listed twice",
            ),
            (POOL.replace("http://10.0.0.1:80", "10.0.0.1"), "10.0.0.1"),
            (POOL.replace("weighted_round_robin", "random"), "random"),
            (POOL.replace("fall = 2", "fal = 2"), "fal"),
        ] {
            let err = EdgeConfig::from_toml(&bad).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn rejects_a_host_claimed_twice() {
        let text = format!(
            "{MINIMAL}\n[[site]]\nname = \"b\"\nhosts = [\"Assets.Example.com.\"]\nupstream = \"http://127.0.0.1:1\"\n"
        );
        assert!(matches!(
            EdgeConfig::from_toml(&text).unwrap_err(),
            ConfigError::DuplicateHost { .. }
        ));
    }

    #[test]
    fn rejects_hosts_with_ports_and_bad_node_names() {
        let text = MINIMAL.replace("assets.example.com", "assets.example.com:80");
        assert!(EdgeConfig::from_toml(&text).is_err());
        let text = format!("[node]\nname = \"edge 1\"\n{MINIMAL}");
        assert!(matches!(
            EdgeConfig::from_toml(&text).unwrap_err(),
            ConfigError::NodeName(_)
        ));
    }

    #[test]
    fn a_node_reads_purges_from_the_api_or_from_nats_not_both() {
        let nats = "[purge.nats]\nservers = [\"nats://127.0.0.1:4222\"]\n";
        let config = EdgeConfig::from_toml(&format!("[purge]\n{nats}{MINIMAL}")).unwrap();
        assert_eq!(config.purge.nats.unwrap().stream, "CDN_PURGES");
        let both = format!("[purge]\napi = \"http://127.0.0.1:9100\"\n{nats}{MINIMAL}");
        let err = EdgeConfig::from_toml(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let none = format!("[purge.nats]\nservers = []\n{MINIMAL}");
        let err = EdgeConfig::from_toml(&none).unwrap_err().to_string();
        assert!(err.contains("no NATS server"), "{err}");
    }
}
