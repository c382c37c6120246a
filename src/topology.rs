//! The topology file: a whole CDN in one TOML document, from which every component's own
//! config is derived.
//!
//! One file describes the regions (with coordinates, client networks and edges), the
//! shields, the sites and their origins, the publishers, the GeoDNS zone and the purge
//! API. [`Topology`] validates it as a whole (names unique, edges on distinct addresses,
//! sites and publishers referring to each other), then hands each component the config it
//! would read from its own file: edges and shields an [`EdgeConfig`], GeoDNS a
//! [`GeoDnsConfig`], the purge API a [`PurgeApiConfig`]. Those are built as the
//! components' own typed config structs (the topology's `[defaults.*]` tables and site
//! `options` are parsed into them too) and checked by each component's own `validate`, so
//! every rule a component enforces on its file holds for its part of the topology too.
//! `cdn config NODE` serializes a node's config back to the file format.
//!
//! Addresses of other components come from a [`Placement`]: the addresses planned in the
//! file, or those actually bound when the file asks for port 0.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use edge::EdgeConfig;
use edge::cache::store::CacheConfig;
use edge::front::limits::LimitsConfig;
use edge::node::config::{NodeConfig, PurgeConfig, SiteConfig};
use edge::upstream::balance::Policy;
use edge::upstream::client::UpstreamConfig;
use edge::upstream::overload::OverloadConfig;
use edge::upstream::pool::{PoolConfig, ServerConfig};
use geodns::GeoDnsConfig;
use geodns::config as dns;
use purge_api::PurgeApiConfig;
use purge_api::config as api;
use serde::{Deserialize, Serialize};

/// The embedded default topology of `cdn up`.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../config/topology.toml");

/// A site origin naming the demo origin `cdn up` starts, wherever it listens.
pub const DEMO_ORIGIN: &str = "demo";

/// A whole CDN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub topology: Global,
    #[serde(default)]
    pub origin: OriginSection,
    pub geodns: GeoDnsSection,
    pub purge_api: PurgeApiSection,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(rename = "region")]
    pub regions: Vec<Region>,
    #[serde(default, rename = "shield")]
    pub shields: Vec<Node>,
    #[serde(rename = "site")]
    pub sites: Vec<Site>,
    #[serde(default, rename = "publisher")]
    pub publishers: Vec<Publisher>,
}

/// `[topology]`: what every component shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// The GeoDNS zone: sites answer as `<cname>.<zone>`, regions as `<region>.edge.<zone>`.
    pub zone: String,
    /// The base the file's ports are written for; `--port-base` moves every port by the
    /// difference.
    #[serde(default)]
    pub port_base: u16,
    /// Shared secret of the purge API and the nodes, also used by `cdn drill` and
    /// `cdn warm` on the nodes' admin listeners.
    pub node_token: String,
}

/// `[origin]`: the demo origin, if the topology runs one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSection {
    pub demo: Option<SocketAddr>,
}

/// `[geodns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoDnsSection {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub default_region: String,
    /// GeoDNS's `zone.ttl`: the TTL of every answer whose site or region sets none
    /// (GeoDNS's default, 20 s, when unset too).
    #[serde(default)]
    pub ttl: Option<u32>,
    /// A MaxMind-format City database, to locate clients outside the regions' networks.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// GeoDNS's `[health]` settings (interval, timeout, rise, fall).
    #[serde(default)]
    pub health: dns::HealthConfig,
}

/// `[purge_api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeApiSection {
    pub listen: SocketAddr,
    /// The purge log; `cdn up` uses a new one in a temporary directory when unset.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

/// `[defaults.edge]` and `[defaults.shield]`: the node config's tables every edge or
/// shield takes (`cache`, `upstream`, `limits`, `overload`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub edge: NodeDefaults,
    #[serde(default)]
    pub shield: NodeDefaults,
}

/// The settings of one kind of node, in the node config's own types.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDefaults {
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub overload: OverloadConfig,
    /// `[defaults.edge.access_log]`: every such node's access log; `{node}` in its path
    /// becomes the node's name (`path = "logs/{node}.log"`), else the nodes share the file
    /// (or stdout) line by line.
    #[serde(default)]
    pub access_log: Option<edge::AccessLogConfig>,
    /// The node's own tables, which the topology sets: refused with that reason.
    #[serde(default)]
    node: Option<toml::Value>,
    #[serde(default)]
    site: Option<toml::Value>,
    #[serde(default)]
    purge: Option<toml::Value>,
}

/// A region of edges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// A DNS label.
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// Client networks located here (GeoDNS overrides).
    #[serde(default)]
    pub clients: Vec<ipnet::IpNet>,
    /// Open connections over the region's edges above which GeoDNS spills clients to the
    /// next nearest region.
    #[serde(default)]
    pub capacity: Option<u64>,
    /// Share of the region's clients sent elsewhere while it is over capacity.
    #[serde(default)]
    pub spill: Option<f64>,
    /// TTL of GeoDNS's answers with this region's edge addresses; `[geodns] ttl` when
    /// unset. Shorter: its clients leave it sooner when it fails, at more queries.
    #[serde(default)]
    pub ttl: Option<u32>,
    pub edges: Vec<Node>,
}

/// An edge or a shield.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// A site: its names and its origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub name: String,
    /// The label GeoDNS answers for this site under the zone (default: the site's name).
    #[serde(default)]
    pub cname: Option<String>,
    /// TTL of GeoDNS's CNAME for `<cname>.<zone>`; `[geodns] ttl` when unset. The
    /// region's addresses after it keep the region's TTL.
    #[serde(default)]
    pub ttl: Option<u32>,
    /// Host names besides `<cname>.<zone>`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Origin URLs (`http://host:port`), or `"demo"` for the demo origin.
    pub origins: Vec<String>,
    /// More keys of the node config's `[[site]]` (`query`, `drop_params`, ...), in its own
    /// type; `name`, `hosts`, `upstream` and `pool` are the topology's to set.
    #[serde(default)]
    pub options: SiteConfig,
}

/// A publisher of the purge API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    pub name: String,
    pub token: String,
    pub sites: Vec<String>,
}

/// Why a topology cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("topology is not valid TOML for a CDN topology: {0}")]
    Parse(String),
    #[error("topology: {0}")]
    Invalid(String),
    #[error("topology: the config it gives {component} is refused: {message}")]
    Component { component: String, message: String },
}

/// Where each listener of a topology is: planned from the file, or as bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub origin: Option<SocketAddr>,
    /// `(public, admin)` of each shield, in file order.
    pub shields: Vec<(SocketAddr, SocketAddr)>,
    /// `(public, admin)` of each edge by name.
    pub edges: BTreeMap<String, (SocketAddr, SocketAddr)>,
}

impl Topology {
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        let topology: Self =
            toml::from_str(text).map_err(|e| TopologyError::Parse(e.to_string()))?;
        topology.validate()?;
        Ok(topology)
    }

    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The embedded default.
    pub fn default_local() -> Self {
        Self::from_toml(DEFAULT_TOPOLOGY).expect("the embedded default topology is valid")
    }

    /// Gives every edge and shield an access log `dir/<node>.log` (JSON lines), unless the
    /// topology already sets one for that kind of node.
    pub fn with_access_logs(mut self, dir: &std::path::Path) -> Self {
        for defaults in [&mut self.defaults.edge, &mut self.defaults.shield] {
            defaults.access_log.get_or_insert_with(|| {
                edge::AccessLogConfig::at(dir.join("{node}.log").to_string_lossy())
            });
        }
        self
    }

    /// Moves every non-zero port by `base - port_base`.
    pub fn with_port_base(mut self, base: u16) -> Result<Self, TopologyError> {
        let shift = i32::from(base) - i32::from(self.topology.port_base);
        let moved = |addr: &mut SocketAddr| -> Result<(), TopologyError> {
            if addr.port() == 0 {
                return Ok(());
            }
            let port = i32::from(addr.port()) + shift;
            let port = u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
                TopologyError::Invalid(format!(
                    "port base {base} moves {addr} out of the port range; choose a base nearer {}",
                    self.topology.port_base
                ))
            })?;
            addr.set_port(port);
            Ok(())
        };
        if let Some(demo) = &mut self.origin.demo {
            moved(demo)?;
        }
        moved(&mut self.geodns.listen)?;
        moved(&mut self.geodns.admin)?;
        moved(&mut self.purge_api.listen)?;
        for node in self.regions.iter_mut().flat_map(|r| r.edges.iter_mut()) {
            moved(&mut node.listen)?;
            moved(&mut node.admin)?;
        }
        for node in &mut self.shields {
            moved(&mut node.listen)?;
            moved(&mut node.admin)?;
        }
        self.topology.port_base = base;
        Ok(self)
    }

    /// Every listener where the file puts it.
    pub fn planned(&self) -> Placement {
        Placement {
            origin: self.origin.demo,
            shields: self.shields.iter().map(|s| (s.listen, s.admin)).collect(),
            edges: self
                .edges()
                .map(|(_, e)| (e.name.clone(), (e.listen, e.admin)))
                .collect(),
        }
    }

    /// Whether some listener asks for any free port, so only a running topology knows
    /// its addresses.
    pub fn has_dynamic_ports(&self) -> bool {
        let planned = self.planned();
        let mut all = vec![self.geodns.listen, self.geodns.admin, self.purge_api.listen];
        all.extend(planned.origin);
        all.extend(planned.shields.iter().flat_map(|(p, a)| [*p, *a]));
        all.extend(planned.edges.values().flat_map(|(p, a)| [*p, *a]));
        all.iter().any(|a| a.port() == 0)
    }

    /// Every edge with its region.
    pub fn edges(&self) -> impl Iterator<Item = (&Region, &Node)> {
        self.regions
            .iter()
            .flat_map(|r| r.edges.iter().map(move |e| (r, e)))
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The name a site is answered under: `<cname>.<zone>`.
    pub fn site_name(&self, site: &Site) -> String {
        format!(
            "{}.{}",
            site.cname.as_deref().unwrap_or(&site.name),
            self.topology.zone
        )
    }

    /// Every host name a site is served under.
    pub fn site_hosts(&self, site: &Site) -> Vec<String> {
        let mut hosts = vec![self.site_name(site)];
        hosts.extend(site.hosts.iter().cloned());
        hosts
    }

    /// The config of edge `name`, its sites pooled over the shields (or over the origins
    /// when there is no shield).
    pub fn edge_config(&self, name: &str, at: &Placement) -> Result<EdgeConfig, TopologyError> {
        let (public, admin) = *at
            .edges
            .get(name)
            .ok_or_else(|| TopologyError::Invalid(format!("no edge {name:?} in the placement")))?;
        let shields: Vec<ServerConfig> = at
            .shields
            .iter()
            .map(|(public, admin)| ServerConfig {
                probe: Some(format!("http://{admin}/healthz")),
                ..ServerConfig::new(format!("http://{public}"))
            })
            .collect();
        let mut sites = Vec::new();
        for site in &self.sites {
            let pool = if shields.is_empty() {
                origin_pool(site, at)?
            } else {
                PoolConfig {
                    balance: Policy::ConsistentHash,
                    ..PoolConfig::new(shields.clone())
                }
            };
            sites.push(self.node_site(site, pool));
        }
        let config = self.node_config(name, public, admin, &self.defaults.edge, sites);
        checked(&format!("edge {name}"), config)
    }

    /// The config of shield number `n` (file order), its sites pooled over their origins.
    pub fn shield_config(&self, n: usize, at: &Placement) -> Result<EdgeConfig, TopologyError> {
        let shield = &self.shields[n];
        let (public, admin) = at.shields[n];
        let mut sites = Vec::new();
        for site in &self.sites {
            sites.push(self.node_site(site, origin_pool(site, at)?));
        }
        let config = self.node_config(&shield.name, public, admin, &self.defaults.shield, sites);
        checked(&format!("shield {}", shield.name), config)
    }

    /// The TOML config file of node `name` (an edge or a shield), as `cdn edge --config`
    /// or `cdn shield --config` reads it: how to run one node of the topology as a
    /// process of its own. Read back by the node's own parser before it is returned.
    pub fn node_config_toml(&self, name: &str, at: &Placement) -> Result<String, TopologyError> {
        let (component, config) = if at.edges.contains_key(name) {
            (format!("edge {name}"), self.edge_config(name, at)?)
        } else if let Some(n) = self.shields.iter().position(|s| s.name == name) {
            (format!("shield {name}"), self.shield_config(n, at)?)
        } else {
            let mut known: Vec<&str> = at.edges.keys().map(String::as_str).collect();
            known.extend(self.shields.iter().map(|s| s.name.as_str()));
            return Err(TopologyError::Invalid(format!(
                "no node {name:?} in the topology; its nodes are {}",
                known.join(", ")
            )));
        };
        let text = toml::to_string(&config).map_err(|e| refused(&component, e))?;
        EdgeConfig::from_toml(&text).map_err(|e| refused(&component, e))?;
        Ok(text)
    }

    /// The GeoDNS server's config file, as `cdn geodns --config` reads it (`cdn config
    /// geodns`, and what `cdn up --processes` runs it with).
    pub fn geodns_config_toml(&self, at: &Placement) -> Result<String, TopologyError> {
        let config = self.geodns_config(self.geodns.listen, self.geodns.admin, at)?;
        let text = toml::to_string(&config).map_err(|e| refused("GeoDNS", e))?;
        GeoDnsConfig::from_toml(&text).map_err(|e| refused("GeoDNS", e))?;
        Ok(text)
    }

    /// The purge API's config file, its log at `log`, as `cdn purge-api --config` reads it.
    pub fn purge_api_config_toml(
        &self,
        log: &Path,
        at: &Placement,
    ) -> Result<String, TopologyError> {
        let config = self.purge_api_config(self.purge_api.listen, log, at)?;
        let text = toml::to_string(&config).map_err(|e| refused("purge API", e))?;
        PurgeApiConfig::from_toml(&text).map_err(|e| refused("purge API", e))?;
        Ok(text)
    }

    /// The GeoDNS config: the zone with one customer name per site, the regions with their
    /// edges (answered by their public addresses, probed on their admin `/healthz`), and
    /// each region's client networks as overrides.
    pub fn geodns_config(
        &self,
        listen: SocketAddr,
        admin: SocketAddr,
        at: &Placement,
    ) -> Result<GeoDnsConfig, TopologyError> {
        let zone = &self.topology.zone;
        let nameserver = dns::NameServerConfig {
            name: format!("ns1.{zone}"),
            addresses: vec![listen.ip()],
        };
        let mut zone_config = dns::ZoneConfig::new(zone.clone(), vec![nameserver]);
        if let Some(ttl) = self.geodns.ttl {
            zone_config.ttl = ttl;
        }
        let mut geo = dns::GeoConfig::new(self.geodns.default_region.clone());
        geo.database = self.geodns.database.clone();
        geo.overrides = self
            .regions
            .iter()
            .flat_map(|r| r.clients.iter().map(move |cidr| (r, cidr)))
            .map(|(region, cidr)| dns::OverrideConfig {
                cidr: *cidr,
                region: region.name.clone(),
            })
            .collect();
        let regions = self
            .regions
            .iter()
            .map(|region| {
                let edges = region
                    .edges
                    .iter()
                    .map(|edge| {
                        let (public, admin) = at.edges[&edge.name];
                        dns::EdgeConfig::new(public.ip(), format!("http://{admin}/healthz"))
                    })
                    .collect();
                let mut config =
                    dns::RegionConfig::new(region.name.clone(), region.lat, region.lon, edges);
                config.capacity = region.capacity;
                if let Some(spill) = region.spill {
                    config.spill = spill;
                }
                config.ttl = region.ttl;
                config
            })
            .collect();
        let customers = self
            .sites
            .iter()
            .map(|site| dns::CustomerConfig {
                ttl: site.ttl,
                ..dns::CustomerConfig::new(site.cname.as_deref().unwrap_or(&site.name))
            })
            .collect();
        let config = GeoDnsConfig {
            node: dns::NodeConfig {
                listen,
                admin_listen: admin,
                ..Default::default()
            },
            zone: zone_config,
            geo,
            health: self.geodns.health.clone(),
            regions,
            customers,
        };
        config.validate().map_err(|e| refused("geodns", e))?;
        Ok(config)
    }

    /// The purge API's config: every edge and shield as a node to push purges to.
    pub fn purge_api_config(
        &self,
        listen: SocketAddr,
        log: &Path,
        at: &Placement,
    ) -> Result<PurgeApiConfig, TopologyError> {
        let node = |name: &str, admin: SocketAddr| api::NodeConfig {
            name: name.to_owned(),
            admin: Some(format!("http://{admin}")),
        };
        let mut nodes: Vec<api::NodeConfig> = self
            .edges()
            .map(|(_, e)| node(&e.name, at.edges[&e.name].1))
            .collect();
        nodes.extend(
            self.shields
                .iter()
                .zip(&at.shields)
                .map(|(s, (_, admin))| node(&s.name, *admin)),
        );
        let config = PurgeApiConfig {
            listen,
            https_listen: None,
            tls: None,
            log: api::LogConfig::file(log),
            node_token: self.topology.node_token.clone(),
            nodes,
            sites: self
                .sites
                .iter()
                .map(|site| api::SiteConfig {
                    name: site.name.clone(),
                    hosts: self.site_hosts(site),
                })
                .collect(),
            publishers: self
                .publishers
                .iter()
                .map(|p| api::PublisherConfig {
                    name: p.name.clone(),
                    token: p.token.clone(),
                    sites: p.sites.clone(),
                    rate: None,
                })
                .collect(),
            limits: Default::default(),
            rate: Default::default(),
            queue: Default::default(),
        };
        config.validate().map_err(|e| refused("purge API", e))?;
        Ok(config)
    }

    fn node_config(
        &self,
        name: &str,
        public: SocketAddr,
        admin: SocketAddr,
        defaults: &NodeDefaults,
        sites: Vec<SiteConfig>,
    ) -> EdgeConfig {
        EdgeConfig {
            node: NodeConfig {
                name: name.to_owned(),
                listen: public,
                admin_listen: admin,
                ..Default::default()
            },
            cache: defaults.cache.clone(),
            upstream: defaults.upstream.clone(),
            limits: defaults.limits.clone(),
            purge: PurgeConfig {
                node_token: Some(self.topology.node_token.clone()),
                ..Default::default()
            },
            overload: defaults.overload.clone(),
            access_log: defaults
                .access_log
                .clone()
                .map(|log| edge::AccessLogConfig {
                    path: log.path.replace("{node}", name),
                    ..log
                }),
            sites,
        }
    }

    fn node_site(&self, site: &Site, pool: PoolConfig) -> SiteConfig {
        SiteConfig {
            name: site.name.clone(),
            hosts: self.site_hosts(site),
            pool: Some(pool),
            ..site.options.clone()
        }
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let invalid = |m: String| Err(TopologyError::Invalid(m));
        if self.regions.is_empty() {
            return invalid("at least one [[region]] is needed".into());
        }
        if self.sites.is_empty() {
            return invalid("at least one [[site]] is needed".into());
        }
        let mut names = HashSet::new();
        let mut addresses: BTreeMap<IpAddr, &str> = BTreeMap::new();
        let mut port = None;
        for region in &self.regions {
            if region.edges.is_empty() {
                return invalid(format!("region {:?} has no edges", region.name));
            }
            if !names.insert(region.name.as_str()) {
                return invalid(format!("region name {:?} is used twice", region.name));
            }
        }
        if self.region(&self.geodns.default_region).is_none() {
            return invalid(format!(
                "geodns.default_region {:?} is not a [[region]]",
                self.geodns.default_region
            ));
        }
        let mut node_names = HashSet::new();
        for (region, edge) in self.edges() {
            if !node_names.insert(edge.name.as_str()) {
                return invalid(format!("node name {:?} is used twice", edge.name));
            }
            // GeoDNS answers with addresses only: two edges on one address would be one
            // edge to every client, and clients connect to the one port they know.
            if let Some(other) = addresses.insert(edge.listen.ip(), &edge.name) {
                return invalid(format!(
                    "edges {other:?} and {:?} (region {:?}) listen on the same address {}: give each edge a loopback or interface address of its own",
                    edge.name,
                    region.name,
                    edge.listen.ip()
                ));
            }
            if edge.listen.port() != 0 {
                match port {
                    None => port = Some((edge.listen.port(), &edge.name)),
                    Some((p, first)) if p != edge.listen.port() => {
                        return invalid(format!(
                            "edges {first:?} and {:?} listen on different ports ({p} and {}): clients reach every edge on the one port of the site's URL",
                            edge.name,
                            edge.listen.port()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        for shield in &self.shields {
            if !node_names.insert(shield.name.as_str()) {
                return invalid(format!("node name {:?} is used twice", shield.name));
            }
        }
        let mut site_names = HashSet::new();
        for site in &self.sites {
            if !site_names.insert(site.name.as_str()) {
                return invalid(format!("site name {:?} is used twice", site.name));
            }
            if site.origins.is_empty() {
                return invalid(format!("site {:?} has no origins", site.name));
            }
            if site.origins.iter().any(|o| o == DEMO_ORIGIN) && self.origin.demo.is_none() {
                return invalid(format!(
                    "site {:?} uses the demo origin but [origin] demo sets no address for it",
                    site.name
                ));
            }
            let options = &site.options;
            for (reserved, set) in [
                ("name", !options.name.is_empty()),
                ("hosts", !options.hosts.is_empty()),
                ("pool", options.pool.is_some()),
                ("upstream", options.upstream.is_some()),
            ] {
                if set {
                    return invalid(format!(
                        "site {:?}: options.{reserved} is set by the topology itself",
                        site.name
                    ));
                }
            }
        }
        for defaults in [&self.defaults.edge, &self.defaults.shield] {
            for (reserved, set) in [
                ("node", defaults.node.is_some()),
                ("site", defaults.site.is_some()),
                ("purge", defaults.purge.is_some()),
            ] {
                if set {
                    return invalid(format!(
                        "defaults.*.{reserved} is set by the topology itself"
                    ));
                }
            }
        }
        // A cache directory holds one node's disk tier and purge state (the second node
        // to open it is refused): defaults give every node of their kind the same one.
        let mut cache_dirs: BTreeMap<&Path, &str> = BTreeMap::new();
        for (kind, defaults, count) in [
            ("edge", &self.defaults.edge, self.edges().count()),
            ("shield", &self.defaults.shield, self.shields.len()),
        ] {
            let Some(dir) = defaults.cache.state_dir().filter(|_| count > 0) else {
                continue;
            };
            if count > 1 {
                return invalid(format!(
                    "defaults.{kind}.cache gives all {count} {kind}s the one cache directory {}: a disk tier and its purge state belong to one node (`cdn up --cache-dir DIR` gives each node a directory of its own)",
                    dir.display()
                ));
            }
            if let Some(other) = cache_dirs.insert(dir, kind) {
                return invalid(format!(
                    "defaults.{other}.cache and defaults.{kind}.cache name the same cache directory {}: each node needs its own",
                    dir.display()
                ));
            }
        }
        for publisher in &self.publishers {
            if let Some(unknown) = publisher
                .sites
                .iter()
                .find(|s| !site_names.contains(s.as_str()))
            {
                return invalid(format!(
                    "publisher {:?} names site {unknown:?}, which is not a [[site]]",
                    publisher.name
                ));
            }
        }
        Ok(())
    }
}

/// A site's pool of origins.
fn origin_pool(site: &Site, at: &Placement) -> Result<PoolConfig, TopologyError> {
    let mut servers = Vec::new();
    for origin in &site.origins {
        let url = if origin == DEMO_ORIGIN {
            let addr = at.origin.ok_or_else(|| {
                TopologyError::Invalid(format!(
                    "site {:?} uses the demo origin, which is not running",
                    site.name
                ))
            })?;
            format!("http://{addr}")
        } else {
            origin.clone()
        };
        servers.push(ServerConfig::new(url));
    }
    Ok(PoolConfig::new(servers))
}

/// A node's config once its own `validate` accepts it (the rules it enforces on its file).
fn checked(component: &str, config: EdgeConfig) -> Result<EdgeConfig, TopologyError> {
    config.validate().map_err(|e| refused(component, e))?;
    Ok(config)
}

fn refused(component: &str, error: impl std::fmt::Display) -> TopologyError {
    TopologyError::Component {
        component: component.to_owned(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn the_default_gives_every_component_a_valid_config() {
        let topology = Topology::default_local();
        let at = topology.planned();
        assert_eq!(topology.regions.len(), 3);
        assert_eq!(at.edges.len(), 6);
        for (_, edge) in topology.edges() {
            let config = topology.edge_config(&edge.name, &at).expect("edge config");
            assert_eq!(config.node.listen, edge.listen);
            assert_eq!(config.purge.node_token.as_deref(), Some("local-node-token"));
            assert_eq!(config.overload.max_upstream, 256);
            let pool = config.sites[0]
                .pool
                .as_ref()
                .expect("pooled over the shield");
            assert_eq!(pool.servers.len(), 1);
            assert_eq!(pool.servers[0].url, "http://127.0.0.1:8082");
            // The site's options, typed as the node reads them.
            assert_eq!(config.sites[0].query, edge::cache::key::QueryMode::Sort);
            assert_eq!(config.sites[0].drop_params.len(), 3);
        }
        let shield = topology.shield_config(0, &at).expect("shield config");
        assert_eq!(
            shield.sites[0].pool.as_ref().expect("origin pool").servers[0].url,
            "http://127.0.0.1:8081"
        );
        assert!(shield.sites[0].hosts.contains(&"demo.cdn.test".to_owned()));
        let dns = topology
            .geodns_config(topology.geodns.listen, topology.geodns.admin, &at)
            .expect("geodns config");
        assert_eq!(dns.regions.len(), 3);
        assert_eq!(dns.geo.overrides.len(), 3);
        assert_eq!(dns.regions[1].edges[0].address, addr("127.0.2.1:0").ip());
        assert_eq!(dns.customers[0].name, "demo");
        let api = topology
            .purge_api_config(topology.purge_api.listen, Path::new("/tmp/x.redb"), &at)
            .expect("purge API config");
        assert_eq!(api.nodes.len(), 7);
        assert_eq!(api.publishers[0].token, "demo-publisher-token");
    }

    #[test]
    fn port_base_moves_every_port_together_and_keeps_port_zero() {
        let topology = Topology::default_local()
            .with_port_base(10_000)
            .expect("in range");
        let at = topology.planned();
        assert_eq!(at.origin, Some(addr("127.0.0.1:10081")));
        assert_eq!(
            at.edges["us-east-2"],
            (addr("127.0.2.2:10080"), addr("127.0.2.2:10090"))
        );
        assert_eq!(topology.geodns.listen, addr("127.0.0.1:10053"));
        assert_eq!(topology.purge_api.listen, addr("127.0.0.1:10070"));
        let err = Topology::default_local()
            .with_port_base(65_500)
            .unwrap_err();
        assert!(err.to_string().contains("out of the port range"), "{err}");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                r#"edges = [{ name = "eu-west-1", listen = "127.0.1.1:8080", admin = "127.0.1.1:8090" }, { name = "eu-west-2", listen = "127.0.1.1:8080", admin = "127.0.1.2:8090" }]"#,
                "listen on the same address",
            ),
            (
                r#"edges = [{ name = "eu-west-1", listen = "127.0.1.1:8080", admin = "127.0.1.1:8090" }, { name = "eu-west-2", listen = "127.0.1.2:8081", admin = "127.0.1.2:8090" }]"#,
                "different ports",
            ),
            (
                r#"edges = [{ name = "us-east-1", listen = "127.0.1.1:8080", admin = "127.0.1.1:8090" }]"#,
                "used twice",
            ),
        ];
        for (edges, expected) in cases {
            let text = DEFAULT_TOPOLOGY.replacen(
                r#"edges = [
    { name = "eu-west-1", listen = "127.0.1.1:8080", admin = "127.0.1.1:8090" },
    { name = "eu-west-2", listen = "127.0.1.2:8080", admin = "127.0.1.2:8090" },
]"#,
                edges,
                1,
            );
            assert_ne!(text, DEFAULT_TOPOLOGY);
            let err = Topology::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
        let text = DEFAULT_TOPOLOGY.replace(r#"sites = ["demo"]"#, r#"sites = ["nope"]"#);
        let err = Topology::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("\"nope\", which is not a [[site]]"), "{err}");
        let text = DEFAULT_TOPOLOGY.replace("[defaults.edge.cache]", "[defaults.edge.node]");
        let err = Topology::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("defaults.*.node"), "{err}");
        let text = DEFAULT_TOPOLOGY.replace(
            r#"query = "sort""#,
            r#"query = "sort"
hosts = ["x.example"]"#,
        );
        let err = Topology::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("options.hosts is set by the topology"),
            "{err}"
        );
        // A typo in a site's options or a default is an error, as in the node's own file.
        let text = DEFAULT_TOPOLOGY.replace(r#"query = "sort""#, r#"qeury = "sort""#);
        let err = Topology::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("qeury"), "{err}");
    }

    #[test]
    fn a_node_config_file_is_what_the_topology_gives_that_node() {
        let topology = Topology::default_local();
        let at = topology.planned();
        let text = topology
            .node_config_toml("us-east-2", &at)
            .expect("edge file");
        let from_file = EdgeConfig::from_toml(&text).expect("the edge reads it");
        let direct = topology.edge_config("us-east-2", &at).expect("edge config");
        assert_eq!(from_file.node.listen, direct.node.listen);
        assert_eq!(from_file.node.admin_listen, direct.node.admin_listen);
        assert_eq!(from_file.sites.len(), direct.sites.len());
        let shield = topology
            .node_config_toml("shield-1", &at)
            .expect("shield file");
        assert!(shield.contains("127.0.0.1:8081"), "{shield}");
        let dns = topology.geodns_config_toml(&at).expect("GeoDNS file");
        let dns = GeoDnsConfig::from_toml(&dns).expect("GeoDNS reads it");
        assert_eq!(dns.regions.len(), 3);
        assert_eq!(dns.zone.ttl, 20, "[geodns] ttl");
        assert!(dns.regions.iter().all(|r| r.ttl.is_none()));
        let api = topology
            .purge_api_config_toml(Path::new("/tmp/purge.redb"), &at)
            .expect("purge API file");
        let api = PurgeApiConfig::from_toml(&api).expect("the purge API reads it");
        assert_eq!(api.nodes.len(), 7);
        let err = topology
            .node_config_toml("mars-1", &at)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no node \"mars-1\"") && err.contains("shield-1"),
            "{err}"
        );
    }

    #[test]
    fn site_and_region_ttls_reach_the_geodns_config_file_and_the_rest_keep_the_zones() {
        let text = DEFAULT_TOPOLOGY
            .replace("ttl = 20\n", "ttl = 30\n")
            .replace("name = \"us-east\"\n", "name = \"us-east\"\nttl = 5\n")
            .replace("cname = \"demo\"\n", "cname = \"demo\"\nttl = 300\n");
        let topology = Topology::from_toml(&text).expect("valid topology");
        let file = topology
            .geodns_config_toml(&topology.planned())
            .expect("GeoDNS file");
        // What `cdn up --processes` runs GeoDNS with: read back by GeoDNS's own parser.
        let dns = GeoDnsConfig::from_toml(&file).unwrap_or_else(|e| panic!("{e}\n{file}"));
        assert_eq!(dns.zone.ttl, 30);
        let ttl = |name: &str| {
            let region = dns.regions.iter().find(|r| r.name == name).expect(name);
            (region.ttl, dns.region_ttl(region))
        };
        assert_eq!(ttl("us-east"), (Some(5), 5));
        assert_eq!(ttl("eu-west"), (None, 30), "the zone's");
        assert_eq!(dns.customers[0].ttl, Some(300));
        assert_eq!(dns.customer_ttl(&dns.customers[0]), 300);

        // GeoDNS's own rule holds for the topology's part, naming the region.
        let zero =
            DEFAULT_TOPOLOGY.replace("name = \"us-east\"\n", "name = \"us-east\"\nttl = 0\n");
        let topology = Topology::from_toml(&zero).expect("the topology itself parses");
        let err = topology
            .geodns_config_toml(&topology.planned())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("region \"us-east\": ttl = 0 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn every_edge_gets_its_own_access_log_from_the_defaults() {
        let text = format!(
            "{DEFAULT_TOPOLOGY}\n[defaults.edge.access_log]\npath = \"/var/log/cdn/{{node}}.log\"\nformat = \"combined\"\n"
        );
        let topology = Topology::from_toml(&text).expect("valid topology");
        let at = topology.planned();
        let edge = topology.edge_config("us-east-2", &at).expect("edge config");
        let log = edge.access_log.expect("an access log");
        assert_eq!(log.path, "/var/log/cdn/us-east-2.log");
        assert_eq!(log.format, edge::node::access_log::LineFormat::Combined);
        let shield = topology.shield_config(0, &at).expect("shield config");
        assert!(
            shield.access_log.is_none(),
            "[defaults.shield] did not ask for one"
        );
        // `cdn config NODE` prints it, and `cdn edge --config` reads it back.
        let text = topology
            .node_config_toml("us-east-2", &at)
            .expect("edge file");
        let read = EdgeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let log = read.access_log.expect("the access log survives the file");
        assert_eq!(log.path, "/var/log/cdn/us-east-2.log");
        assert_eq!(log.buffer, bytesize::ByteSize::mib(16));
    }

    #[test]
    fn access_logs_in_a_directory_name_each_node_and_keep_what_the_file_set() {
        let topology = Topology::default_local().with_access_logs(Path::new("/var/log/cdn"));
        let at = topology.planned();
        let edge = topology.edge_config("eu-west-1", &at).expect("edge config");
        assert_eq!(
            edge.access_log.expect("a log").path,
            "/var/log/cdn/eu-west-1.log"
        );
        let shield = topology.shield_config(0, &at).expect("shield config");
        assert_eq!(
            shield.access_log.expect("a log").path,
            "/var/log/cdn/shield-1.log"
        );

        let text = format!("{DEFAULT_TOPOLOGY}\n[defaults.edge.access_log]\npath = \"stdout\"\n");
        let topology = Topology::from_toml(&text)
            .expect("valid topology")
            .with_access_logs(Path::new("/var/log/cdn"));
        let at = topology.planned();
        let edge = topology.edge_config("eu-west-1", &at).expect("edge config");
        assert_eq!(
            edge.access_log.expect("a log").path,
            "stdout",
            "the file's own"
        );
    }

    #[test]
    fn a_cache_directory_shared_by_several_nodes_is_refused() {
        let edges = DEFAULT_TOPOLOGY.replace(
            "[defaults.edge.cache]\n",
            "[defaults.edge.cache]\nstate_dir = \"/var/cache/cdn\"\n",
        );
        let err = Topology::from_toml(&edges).unwrap_err().to_string();
        assert!(
            err.contains("all 6 edges the one cache directory /var/cache/cdn"),
            "{err}"
        );
        // One shield may have it, but not the same one as another kind of node.
        let shield = DEFAULT_TOPOLOGY.replace(
            "[defaults.shield.cache]\n",
            "[defaults.shield.cache]\nstate_dir = \"/var/cache/shield\"\n",
        );
        Topology::from_toml(&shield).expect("one shield, one directory");
        let both = shield.replace(
            "[defaults.edge.cache]\n",
            "[defaults.edge.cache]\nstate_dir = \"/var/cache/shield\"\n",
        );
        let err = Topology::from_toml(&both).unwrap_err().to_string();
        assert!(err.contains("all 6 edges"), "{err}");
    }

    #[test]
    fn a_bad_component_setting_is_refused_with_the_component_named() {
        let text = DEFAULT_TOPOLOGY.replace("max_upstream = 256", "max_upstream = 0");
        let topology = Topology::from_toml(&text).expect("the topology itself is valid");
        let err = topology
            .edge_config("eu-west-1", &topology.planned())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("edge eu-west-1") && err.contains("max_upstream"),
            "{err}"
        );
    }
}
