//! Sites: which host names this node answers for, and where each one's content comes from.
//!
//! The table is the node's whole answer to "is this an open proxy?": a request whose host
//! is not in it is refused before anything is fetched, and a site only ever fetches from
//! its own configured upstream, whatever the request says.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderName, HeaderValue};

use crate::cache::freshness::FreshnessPolicy;
use crate::cache::key::QueryPolicy;
use crate::cache::partial::RangeMiss;
use crate::front::TlsName;
use crate::node::config::{ConfigError, SiteConfig, normalize_host};
use crate::node::reload::same;
use crate::upstream::pool::{PoolConfig, UpstreamPool};

/// One configured site.
#[derive(Debug)]
pub struct Site {
    pub name: String,
    /// Where the site's content comes from: one server, or a balanced pool. Shared with
    /// the site of a reloaded table when the pool's config did not change, so its
    /// servers' health, connections and balance carry over.
    pub pool: Arc<UpstreamPool>,
    /// What the pool was built from: a reload compares it to decide whether to keep it.
    pool_config: PoolConfig,
    /// The `Host` the pool's probes carry: `upstream_host`, else the site's first host.
    pub probe_host: HeaderValue,
    /// `Host` sent upstream instead of the client's host, when configured.
    pub upstream_host: Option<HeaderValue>,
    pub query: QueryPolicy,
    pub freshness: FreshnessPolicy,
    /// Drop `Set-Cookie` from fills so they can be stored and shared.
    pub strip_set_cookie: bool,
    /// Store responses to POSTs that name their own target in `Content-Location` for later
    /// GETs (`store_post_content_location`, see [`crate::node::post`]).
    pub store_post_content_location: bool,
    /// Request fields the site keys on (`key_headers`): forwarded even when they are
    /// [`crate::cache::fields::UNKEYED`], and part of every variant key. Lower-case, sorted.
    pub key_headers: Vec<HeaderName>,
    /// What a range miss with nothing held asks the upstream for (`range_miss`).
    pub range_miss: RangeMiss,
    /// The share of requests the access log writes (`access_log_sample`).
    pub access_log_sample: f64,
    /// Shared by every table that has this site (a reload's), so a purge that bumps it
    /// in one is in effect in all: one applied while a reload swaps tables is not lost.
    generation: Arc<AtomicU64>,
}

impl Site {
    /// The site `config` describes; with `previous` (the same site in the table a reload
    /// replaces), its generation counter, and its pool when the pool's config is the same.
    fn from_config(config: &SiteConfig, previous: Option<&Site>) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError::Site {
            site: config.name.clone(),
            message,
        };
        let pool_config = match (&config.pool, &config.upstream) {
            (Some(pool), _) => pool.clone(),
            (None, Some(url)) => PoolConfig::single(url),
            (None, None) => return Err(fail("no upstream configured".into())),
        };
        let kept = previous.filter(|site| same(&site.pool_config, &pool_config));
        let pool = match kept {
            Some(site) => site.pool.clone(),
            None => Arc::new(UpstreamPool::new(&config.name, &pool_config).map_err(fail)?),
        };
        // A kept site's counter is shared as it is: a generation the new config raises is
        // applied once the reload commits ([`SiteTable::raise_generations`]).
        let generation = match previous {
            Some(site) => site.generation.clone(),
            None => Arc::new(AtomicU64::new(config.generation)),
        };
        if !(0.0..=1.0).contains(&config.access_log_sample) {
            return Err(fail(format!(
                "access_log_sample must be between 0 and 1 (got {})",
                config.access_log_sample
            )));
        }
        let upstream_host = config
            .upstream_host
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| ConfigError::Site {
                site: config.name.clone(),
                message: "upstream_host is not a valid Host value".into(),
            })?;
        let probe_host = upstream_host
            .clone()
            .or_else(|| {
                let host = config.hosts.first()?;
                HeaderValue::from_str(host).ok()
            })
            .unwrap_or(HeaderValue::from_static("localhost"));
        Ok(Self {
            name: config.name.clone(),
            pool,
            pool_config,
            probe_host,
            upstream_host,
            query: QueryPolicy {
                mode: config.query,
                drop: config.drop_params.clone(),
            },
            freshness: FreshnessPolicy {
                heuristic_fraction: (config.heuristic_fraction > 0.0)
                    .then_some(config.heuristic_fraction),
                heuristic_max: config.heuristic_max,
                negative_ttl: config.negative_ttl,
                stale_while_revalidate: config.stale_while_revalidate,
                stale_if_error: config.stale_if_error,
            },
            strip_set_cookie: config.strip_set_cookie,
            access_log_sample: config.access_log_sample,
            store_post_content_location: config.store_post_content_location,
            key_headers: {
                let mut names = config
                    .key_headers
                    .iter()
                    .map(|name| HeaderName::from_bytes(name.as_bytes()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ConfigError::Site {
                        site: config.name.clone(),
                        message: "key_headers must be header field names".into(),
                    })?;
                names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                names.dedup();
                names
            },
            range_miss: config.range_miss,
            generation,
        })
    }

    /// The generation every key of this site starts with.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Raises the generation to at least `generation` (a persisted one, on start).
    pub fn raise_generation(&self, generation: u64) {
        self.generation.fetch_max(generation, Ordering::AcqRel);
    }

    /// Raises the generation, making every entry of the site unreachable at once.
    /// Returns the new generation.
    pub fn bump_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// A host resolved to its site.
#[derive(Debug, Clone, Copy)]
pub struct SiteMatch<'a> {
    pub site: &'a Arc<Site>,
    /// The configured (normalized) host name, as used in cache keys.
    pub host: &'a str,
    /// The same, ready to send as `Host` upstream.
    pub host_value: &'a HeaderValue,
}

/// Why a host is not answered here (`421 Misdirected Request` either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misdirected {
    /// No site is configured for the host: this node is no open proxy.
    UnknownHost,
    /// The host is another site's than the one whose certificate the TLS connection was
    /// set up for (or a site with no certificate at all).
    OtherCertificate,
}

#[derive(Debug)]
struct HostEntry {
    site: Arc<Site>,
    host: Box<str>,
    host_value: HeaderValue,
}

/// Host name -> site.
#[derive(Debug, Default)]
pub struct SiteTable {
    by_host: HashMap<Box<str>, HostEntry>,
    sites: Vec<Arc<Site>>,
}

impl SiteTable {
    pub fn new(configs: &[SiteConfig]) -> Result<Self, ConfigError> {
        Self::replacing(configs, &SiteTable::default())
    }

    /// The table `configs` describe, to replace `previous` while the node runs: a site
    /// kept by name keeps its generation (purges applied to either table count in both)
    /// and, when its pool is configured the same, its pool.
    pub fn replacing(configs: &[SiteConfig], previous: &SiteTable) -> Result<Self, ConfigError> {
        let mut table = SiteTable::default();
        for config in configs {
            let before = previous.by_name(&config.name).map(|site| &**site);
            let site = Arc::new(Site::from_config(config, before)?);
            for host in &config.hosts {
                let host = normalize_host(host);
                let host_value = HeaderValue::from_str(&host).map_err(|_| ConfigError::Site {
                    site: config.name.clone(),
                    message: format!("host {host:?} is not a valid Host value"),
                })?;
                table.by_host.insert(
                    host.clone().into_boxed_str(),
                    HostEntry {
                        site: site.clone(),
                        host: host.into_boxed_str(),
                        host_value,
                    },
                );
            }
            table.sites.push(site);
        }
        Ok(table)
    }

    /// Resolves a `Host` value (`name`, `name:port`, `[v6]:port`, any case, trailing dot).
    pub fn resolve(&self, raw: &str) -> Option<SiteMatch<'_>> {
        let name = strip_port(raw);
        let name = name.strip_suffix('.').unwrap_or(name);
        let entry = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(name.to_ascii_lowercase().as_str())
        } else {
            self.by_host.get(name)
        }?;
        Some(SiteMatch {
            site: &entry.site,
            host: &entry.host,
            host_value: &entry.host_value,
        })
    }

    /// Resolves the host of a request that arrived over a TLS connection set up for `tls`
    /// (`None`: plain HTTP, where any configured host is answered). Each site has one
    /// certificate for its own hosts, so over TLS the host must belong to the same site
    /// as the connection's server name: a client is never answered for a site whose
    /// certificate it was not shown, nor for a site that has none (RFC 9110 15.5.20).
    pub fn resolve_on(
        &self,
        raw: &str,
        tls: Option<&TlsName>,
    ) -> Result<SiteMatch<'_>, Misdirected> {
        let site = self.resolve(raw).ok_or(Misdirected::UnknownHost)?;
        match tls {
            None => Ok(site),
            Some(TlsName(name, _)) => match self.resolve(name) {
                Some(shown) if Arc::ptr_eq(shown.site, site.site) => Ok(site),
                _ => Err(Misdirected::OtherCertificate),
            },
        }
    }

    /// Every site, in config order.
    pub fn sites(&self) -> &[Arc<Site>] {
        &self.sites
    }

    /// Raises each site's generation to at least what `configs` give it (a reload's
    /// config, once it is put in service).
    pub fn raise_generations(&self, configs: &[SiteConfig]) {
        for config in configs {
            if let Some(site) = self.by_name(&config.name) {
                site.raise_generation(config.generation);
            }
        }
    }

    /// The site configured under `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Site>> {
        self.sites.iter().find(|site| site.name == name)
    }

    /// The (normalized) host names of the site called `name`.
    pub fn hosts_of(&self, name: &str) -> Vec<&str> {
        self.by_host
            .values()
            .filter(|entry| entry.site.name == name)
            .map(|entry| &*entry.host)
            .collect()
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::config::EdgeConfig;

    fn table() -> SiteTable {
        let config = EdgeConfig::from_toml(
            r#"
            [[site]]
            name = "assets"
            hosts = ["assets.example.com", "static.example.com"]
            upstream = "http://127.0.0.1:8081"
            [[site]]
            name = "v6"
            hosts = ["[::1]"]
            upstream = "http://127.0.0.1:8082"
            "#,
        )
        .unwrap();
        SiteTable::new(&config.sites).unwrap()
    }

    #[test]
    fn resolves_hosts_with_ports_case_and_trailing_dots() {
        let t = table();
        for raw in [
            "assets.example.com",
            "assets.example.com:8080",
            "ASSETS.Example.COM",
            "assets.example.com.",
            "assets.example.com.:443",
        ] {
            let m = t
                .resolve(raw)
                .unwrap_or_else(|| panic!("{raw} not resolved"));
            assert_eq!(m.site.name, "assets");
            assert_eq!(m.host, "assets.example.com");
        }
        assert_eq!(t.resolve("[::1]:80").unwrap().site.name, "v6");
    }

    #[test]
    fn unknown_hosts_resolve_to_nothing() {
        let t = table();
        for raw in [
            "evil.example",
            "example.com",
            "",
            ":80",
            "assets.example.com.evil",
        ] {
            assert!(t.resolve(raw).is_none(), "{raw} resolved");
        }
    }

    #[test]
    fn over_tls_only_the_hosts_of_the_connection_s_site_are_answered() {
        let t = table();
        let tls = TlsName("static.example.com".into(), crate::front::TlsVersion::Tls13);
        let same = t.resolve_on("ASSETS.example.com:443", Some(&tls));
        assert_eq!(same.expect("same site").site.name, "assets");
        assert_eq!(
            t.resolve_on("[::1]", Some(&tls)).err(),
            Some(Misdirected::OtherCertificate)
        );
        assert_eq!(
            t.resolve_on("evil.example", Some(&tls)).err(),
            Some(Misdirected::UnknownHost)
        );
        assert!(t.resolve_on("[::1]", None).is_ok(), "plain HTTP: any site");
    }

    #[test]
    fn an_access_log_share_outside_0_to_1_is_refused_with_the_site_named() {
        for share in [-0.1, 1.5, f64::NAN] {
            let config = SiteConfig {
                name: "assets".into(),
                hosts: vec!["a.example".into()],
                upstream: Some("http://127.0.0.1:1".into()),
                access_log_sample: share,
                ..SiteConfig::default()
            };
            let Err(error) = SiteTable::new(&[config]) else {
                panic!("a share of {share} is refused");
            };
            let error = error.to_string();
            assert!(
                error.contains("assets")
                    && error.contains("access_log_sample must be between 0 and 1"),
                "{error}"
            );
        }
    }

    #[test]
    fn generation_bumps_are_per_site() {
        let t = table();
        let site = t.resolve("assets.example.com").unwrap().site;
        assert_eq!(site.generation(), 1);
        assert_eq!(site.bump_generation(), 2);
        assert_eq!(
            t.resolve("static.example.com").unwrap().site.generation(),
            2
        );
        assert_eq!(t.resolve("[::1]").unwrap().site.generation(), 1);
    }

    #[test]
    fn a_replacing_table_keeps_generations_and_pools_configured_the_same() {
        let before = table();
        let assets = before.by_name("assets").unwrap().clone();
        assets.bump_generation();
        let config = EdgeConfig::from_toml(
            r#"
            [[site]]
            name = "assets"
            hosts = ["assets.example.com"]
            upstream = "http://127.0.0.1:8081"
            [[site]]
            name = "v6"
            hosts = ["[::1]"]
            upstream = "http://127.0.0.1:9999"
            [[site]]
            name = "new"
            hosts = ["new.example.com"]
            upstream = "http://127.0.0.1:8083"
            "#,
        )
        .unwrap();
        let after = SiteTable::replacing(&config.sites, &before).unwrap();
        let kept = after.by_name("assets").unwrap();
        assert_eq!(kept.generation(), 2, "the purge before the reload holds");
        assert!(
            Arc::ptr_eq(&kept.pool, &assets.pool),
            "same pool config, same pool"
        );
        let moved = after.by_name("v6").unwrap();
        assert!(!Arc::ptr_eq(
            &moved.pool,
            &before.by_name("v6").unwrap().pool
        ));
        assert_eq!(after.by_name("new").unwrap().generation(), 1);
        assert!(
            after.resolve("static.example.com").is_none(),
            "a dropped host"
        );

        // A purge applied through the old table (a request still holding it) counts in
        // the new one.
        assets.bump_generation();
        assert_eq!(kept.generation(), 3);
    }
}
