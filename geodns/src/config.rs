//! The GeoDNS configuration: the zone it is authoritative for, the regions and their
//! edges, how clients are located, and how edges are health-checked.
//!
//! [`GeoDnsConfig::validate`] runs before anything binds and on every reload: a config
//! that would misanswer is refused with the field that is wrong, and a reload with such a
//! config keeps the previous one serving.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration of one GeoDNS server.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoDnsConfig {
    #[serde(default)]
    pub node: NodeConfig,
    pub zone: ZoneConfig,
    pub geo: GeoConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(rename = "region")]
    pub regions: Vec<RegionConfig>,
    /// Customer names in the zone (`publisher` for `publisher.<zone>`), each answered with a
    /// CNAME to the client's region.
    #[serde(default, rename = "customer")]
    pub customers: Vec<CustomerConfig>,
}

/// Listeners.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// UDP and TCP listener for queries.
    pub listen: SocketAddr,
    /// `/healthz` and `/metrics`.
    pub admin_listen: SocketAddr,
    /// Idle time after which a TCP connection is closed (waiting for the next query, or
    /// for the client to take an answer); above 0, checked by [`GeoDnsConfig::validate`].
    #[serde(with = "humantime_serde")]
    pub tcp_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5353)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9053)),
            tcp_timeout: Duration::from_secs(10),
        }
    }
}

/// The zone this server is authoritative for.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone apex, e.g. `cdn.example.net`.
    pub name: String,
    /// TTL of steered answers (customer CNAMEs and region edge addresses) unless a
    /// customer or region sets its own: short, so failover is fast. The trade-off: a
    /// client keeps a dead region's answer up to this long after health checks notice,
    /// while each resolver asks about each name about once per TTL (README.md, "TTL").
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Most edge addresses in one answer.
    #[serde(default = "default_max_answers")]
    pub max_answers: usize,
    /// The zone's name servers (NS at the apex), with their addresses as glue.
    pub nameservers: Vec<NameServerConfig>,
    /// Mailbox of the zone's administrator, as a domain name (`hostmaster.cdn.example.net`).
    #[serde(default)]
    pub hostmaster: Option<String>,
    /// SOA serial; a reload with a changed config should raise it.
    #[serde(default = "default_serial")]
    pub serial: u32,
    /// TTL of SOA/NS records and of negative answers (RFC 2308).
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: u32,
}

/// One name server of the zone.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NameServerConfig {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// How clients are located.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// A MaxMind-format City database (GeoLite2-City, DB-IP City Lite); optional.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// Region for clients that cannot be located.
    pub default_region: String,
    /// Networks pinned to a region, checked before the database (longest prefix wins).
    #[serde(default)]
    pub overrides: Vec<OverrideConfig>,
    /// Use EDNS Client Subnet (RFC 7871) when a resolver sends it.
    #[serde(default = "default_true")]
    pub ecs: bool,
}

/// A network pinned to a region.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    pub cidr: ipnet::IpNet,
    pub region: String,
}

/// Active probes of every edge.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Good probes in a row that bring a down edge back.
    pub rise: u32,
    /// Failed probes in a row that take an edge out of answers.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
        }
    }
}

/// A region: where it is, and its edges.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// A DNS label: the region answers as `<name>.edge.<zone>`.
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    #[serde(rename = "edge")]
    pub edges: Vec<EdgeConfig>,
    /// Open client connections over all the region's healthy edges (as their `/healthz`
    /// reports) above which `spill` of its clients go to the next nearest region; none
    /// when unset.
    #[serde(default)]
    pub capacity: Option<u64>,
    /// Share of the region's clients sent elsewhere while it is over capacity.
    #[serde(default = "default_spill")]
    pub spill: f64,
    /// TTL of the A/AAAA records owned by `<name>.edge.<zone>` (in a customer's answer
    /// after its CNAME, or asked directly); `zone.ttl` when unset. See
    /// [`GeoDnsConfig::region_ttl`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

/// One edge node of a region.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The address clients connect to (an A or AAAA record).
    pub address: IpAddr,
    /// URL probed for health: the edge's admin `/healthz`.
    pub probe: String,
    /// Relative share of answers; 0 drains the edge (never answered, still probed).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// A customer name in the zone.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    /// Label(s) under the zone, e.g. `publisher` for `publisher.cdn.example.net`.
    pub name: String,
    /// TTL of this name's CNAME; `zone.ttl` when unset. The edge addresses after the
    /// CNAME keep their region's TTL: a resolver caches the two records separately, so a
    /// long CNAME TTL with a short region TTL still fails over at the region's pace, as
    /// long as the region's name itself moves its answer. See
    /// [`GeoDnsConfig::customer_ttl`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

impl ZoneConfig {
    /// The zone `name` served by `nameservers`, every other setting at its default.
    pub fn new(name: impl Into<String>, nameservers: Vec<NameServerConfig>) -> Self {
        Self {
            name: name.into(),
            ttl: default_ttl(),
            max_answers: default_max_answers(),
            nameservers,
            hostmaster: None,
            serial: default_serial(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

impl GeoConfig {
    /// Clients that cannot be located go to `default_region`; ECS on, no database, no
    /// overrides.
    pub fn new(default_region: impl Into<String>) -> Self {
        Self {
            database: None,
            default_region: default_region.into(),
            overrides: Vec::new(),
            ecs: default_true(),
        }
    }
}

impl RegionConfig {
    /// A region at (`lat`, `lon`) with `edges`, no capacity, the default spill share.
    pub fn new(name: impl Into<String>, lat: f64, lon: f64, edges: Vec<EdgeConfig>) -> Self {
        Self {
            name: name.into(),
            lat,
            lon,
            edges,
            capacity: None,
            spill: default_spill(),
            ttl: None,
        }
    }
}

impl CustomerConfig {
    /// The customer name `name` under the zone, answered with the zone's TTL.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
        }
    }
}

impl EdgeConfig {
    /// An edge answered as `address`, probed at `probe`, weight 1.
    pub fn new(address: IpAddr, probe: impl Into<String>) -> Self {
        Self {
            address,
            probe: probe.into(),
            weight: default_weight(),
        }
    }
}

fn default_ttl() -> u32 {
    20
}
fn default_max_answers() -> usize {
    4
}
fn default_serial() -> u32 {
    1
}
fn default_negative_ttl() -> u32 {
    60
}
fn default_true() -> bool {
    true
}
fn default_spill() -> f64 {
    0.25
}
fn default_weight() -> u32 {
    1
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config is not valid TOML for geodns: {0}")]
    Parse(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// The TTLs a steered answer may carry, in seconds. 0 would ask resolvers not to cache at
/// all (every client lookup a query here, and many resolvers raise it anyway); above a
/// day a dead region's clients would be stranded for longer than anyone would wait.
pub const TTL_RANGE: std::ops::RangeInclusive<u32> = 1..=86_400;

/// The most regions one zone steers between (the steering code keeps a region's index in a
/// byte).
pub const MAX_REGIONS: usize = 256;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl GeoDnsConfig {
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

    /// Checks everything that would otherwise fail, or misanswer, at query time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.tcp_timeout.is_zero() {
            return Err(invalid(
                "node.tcp_timeout",
                "must be above 0: it is the idle time after which a TCP connection is \
                 closed, and connections that never close would pile up (RFC 7766 6.2.3)",
            ));
        }
        hickory_proto::rr::Name::from_ascii(&self.zone.name).map_err(|e| {
            invalid(
                "zone.name",
                format!("{:?} is not a domain name: {e}", self.zone.name),
            )
        })?;
        if self.zone.nameservers.is_empty() {
            return Err(invalid("zone.nameservers", "list at least one name server"));
        }
        check_ttl("zone.ttl", self.zone.ttl, "20, the default")?;
        if self.zone.max_answers == 0 {
            return Err(invalid("zone.max_answers", "must be at least 1"));
        }
        if self.regions.is_empty() {
            return Err(invalid("region", "configure at least one [[region]]"));
        }
        if self.regions.len() > MAX_REGIONS {
            return Err(invalid(
                "region",
                format!(
                    "{} regions configured, at most {MAX_REGIONS} are supported; run one \
                     GeoDNS zone per continent if you need more",
                    self.regions.len()
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for region in &self.regions {
            let field = format!("region {:?}", region.name);
            if !is_label(&region.name) {
                return Err(invalid(
                    field,
                    "name must be one DNS label (letters, digits, '-')",
                ));
            }
            if !names.insert(region.name.to_ascii_lowercase()) {
                return Err(invalid(field, "listed twice"));
            }
            if !(-90.0..=90.0).contains(&region.lat) || !(-180.0..=180.0).contains(&region.lon) {
                return Err(invalid(
                    field,
                    "lat must be in [-90, 90] and lon in [-180, 180]",
                ));
            }
            if region.edges.is_empty() {
                return Err(invalid(field, "list at least one [[region.edge]]"));
            }
            if !(0.0..=1.0).contains(&region.spill) {
                return Err(invalid(field, "spill must be a share in [0, 1]"));
            }
            if let Some(ttl) = region.ttl {
                check_ttl(&field, ttl, &self.zone_ttl_hint())?;
            }
            for edge in &region.edges {
                let uri: http::Uri = edge.probe.parse().map_err(|e| {
                    invalid(
                        format!("{field} edge {}", edge.address),
                        format!("probe {:?} is not a URL: {e}", edge.probe),
                    )
                })?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(invalid(
                        format!("{field} edge {}", edge.address),
                        format!(
                            "probe {:?} must be an http://host:port/path URL",
                            edge.probe
                        ),
                    ));
                }
            }
        }
        let known = |name: &str| names.contains(&name.to_ascii_lowercase());
        if !known(&self.geo.default_region) {
            return Err(invalid(
                "geo.default_region",
                format!("{:?} is not a configured region", self.geo.default_region),
            ));
        }
        for o in &self.geo.overrides {
            if !known(&o.region) {
                return Err(invalid(
                    format!("geo.overrides {}", o.cidr),
                    format!("{:?} is not a configured region", o.region),
                ));
            }
        }
        let mut customers = std::collections::HashSet::new();
        for customer in &self.customers {
            let field = format!("customer {:?}", customer.name);
            let ok = !customer.name.is_empty()
                && customer.name.split('.').all(is_label)
                && !customer.name.eq_ignore_ascii_case("edge")
                && !customer.name.to_ascii_lowercase().ends_with(".edge");
            if !ok {
                return Err(invalid(
                    field,
                    "must be DNS labels under the zone, outside the edge. subdomain",
                ));
            }
            // One name, one answer: with per-customer TTLs a second entry could only
            // contradict the first.
            if !customers.insert(customer.name.to_ascii_lowercase()) {
                return Err(invalid(field, "listed twice; keep one [[customer]] entry"));
            }
            if let Some(ttl) = customer.ttl {
                check_ttl(&field, ttl, &self.zone_ttl_hint())?;
            }
        }
        Ok(())
    }

    /// The TTL of `customer`'s CNAME: its own, else the zone's. The one place this is
    /// decided; the zone and the UDP fast path both read it from there.
    pub fn customer_ttl(&self, customer: &CustomerConfig) -> u32 {
        customer.ttl.unwrap_or(self.zone.ttl)
    }

    /// The TTL of the addresses owned by `region`'s name (`<region>.edge.<zone>`): its
    /// own, else the zone's. The owner decides, not the edges: while a dead region's name
    /// answers with a neighbour's edges it keeps its own TTL, so its clients come back
    /// at its pace once it recovers.
    pub fn region_ttl(&self, region: &RegionConfig) -> u32 {
        region.ttl.unwrap_or(self.zone.ttl)
    }

    fn zone_ttl_hint(&self) -> String {
        format!("zone.ttl ({})", self.zone.ttl)
    }
}

/// Refuses a TTL outside [`TTL_RANGE`], saying what to set instead (`fallback`: what
/// leaving it out gives).
fn check_ttl(field: &str, ttl: u32, fallback: &str) -> Result<(), ConfigError> {
    if TTL_RANGE.contains(&ttl) {
        return Ok(());
    }
    let why = if ttl == 0 {
        "0 would ask resolvers not to cache the answer at all (every client lookup a query \
         here, and many resolvers raise it anyway)"
    } else {
        "above a day, a failed region's clients would keep its answer that long"
    };
    Err(invalid(
        field,
        format!(
            "ttl = {ttl} is out of range: {why}; set ttl between {} and {} seconds, or \
             leave it out to use {fallback}",
            TTL_RANGE.start(),
            TTL_RANGE.end()
        ),
    ))
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [zone]
        name = "cdn.example.net"
        nameservers = [{ name = "ns1.cdn.example.net", addresses = ["192.0.2.53"] }]

        [geo]
        default_region = "eu"

        [[region]]
        name = "eu"
        lat = 50.11
        lon = 8.68
        edge = [{ address = "192.0.2.10", probe = "http://192.0.2.10:9080/healthz" }]

        [[customer]]
        name = "publisher"
    "#;

    #[test]
    fn a_minimal_config_gets_short_ttls_and_defaults() {
        let c = GeoDnsConfig::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.zone.ttl, 20);
        assert_eq!(c.zone.max_answers, 4);
        assert!(c.geo.ecs);
        assert_eq!(c.health.fall, 2);
        assert_eq!(c.regions[0].edges[0].weight, 1);
        assert_eq!(c.regions[0].ttl, None);
        assert_eq!(c.customers[0].ttl, None);
    }

    #[test]
    fn a_site_or_region_ttl_overrides_the_zones_and_the_rest_keep_it() {
        let text = MINIMAL
            .replace("nameservers =", "ttl = 30\nnameservers =")
            .replace("lon = 8.68", "lon = 8.68\nttl = 5")
            .replace(
                "name = \"publisher\"",
                "name = \"publisher\"\nttl = 300\n[[customer]]\nname = \"shop\"",
            );
        let c = GeoDnsConfig::from_toml(&text).expect("valid");
        assert_eq!(c.region_ttl(&c.regions[0]), 5);
        assert_eq!(c.customer_ttl(&c.customers[0]), 300);
        assert_eq!(c.customer_ttl(&c.customers[1]), 30, "the zone's");
        let plain = GeoDnsConfig::from_toml(MINIMAL).expect("valid");
        assert_eq!(
            plain.region_ttl(&plain.regions[0]),
            20,
            "the zone's default"
        );
        assert_eq!(plain.customer_ttl(&plain.customers[0]), 20);
        // What is set is written back, what is not stays out of the file.
        let written = toml::to_string(&c).expect("serializes");
        let read = GeoDnsConfig::from_toml(&written).expect("reads back");
        assert_eq!(read.regions[0].ttl, Some(5));
        assert_eq!(read.customers[0].ttl, Some(300));
        assert_eq!(read.customers[1].ttl, None);
        let plain_text = toml::to_string(&plain).expect("serializes");
        let ttl_lines = plain_text.lines().filter(|l| l.starts_with("ttl = "));
        assert_eq!(ttl_lines.count(), 1, "only the zone's: {plain_text}");
    }

    #[test]
    fn bad_configs_name_the_field_and_the_problem() {
        for (bad, why) in [
            (
                MINIMAL.replace("default_region = \"eu\"", "default_region = \"mars\""),
                "mars",
            ),
            (
                MINIMAL.replace("name = \"eu\"", "name = \"eu west\""),
                "one DNS label",
            ),
            (MINIMAL.replace("lat = 50.11", "lat = 150.0"), "lat must be"),
            (
                MINIMAL.replace("http://192.0.2.10:9080/healthz", "ftp://x/"),
                "http://host",
            ),
            (
                MINIMAL.replace("name = \"publisher\"", "name = \"a.edge\""),
                "edge. subdomain",
            ),
            (
                MINIMAL.replace("lon = 8.68", "lon = 8.68\nspill = 2.0"),
                "spill",
            ),
            (
                MINIMAL.replace(
                    "[geo]",
                    "[geo]\noverrides = [{ cidr = \"10.0.0.0/8\", region = \"us\" }]",
                ),
                "\"us\"",
            ),
            (MINIMAL.replace("[geo]", "[geo]\nbogus = 1"), "bogus"),
            (
                format!("[node]\ntcp_timeout = \"0s\"\n{MINIMAL}"),
                "node.tcp_timeout: must be above 0",
            ),
            (
                MINIMAL.replace("192.0.2.10\", probe", "not-an-ip\", probe"),
                "address",
            ),
            (
                MINIMAL.replace("lon = 8.68", "lon = 8.68\nttl = 0"),
                "region \"eu\": ttl = 0 is out of range: 0 would ask resolvers not to cache",
            ),
            (
                MINIMAL.replace("lon = 8.68", "lon = 8.68\nttl = 0"),
                "set ttl between 1 and 86400 seconds, or leave it out to use zone.ttl (20)",
            ),
            (
                MINIMAL.replace("name = \"publisher\"", "name = \"publisher\"\nttl = 0"),
                "customer \"publisher\": ttl = 0 is out of range",
            ),
            (
                MINIMAL.replace("name = \"publisher\"", "name = \"publisher\"\nttl = 86401"),
                "customer \"publisher\": ttl = 86401 is out of range: above a day",
            ),
            (
                MINIMAL.replace("nameservers =", "ttl = 0\nnameservers ="),
                "zone.ttl: ttl = 0 is out of range",
            ),
            (MINIMAL.replace("lon = 8.68", "lon = 8.68\nttl = -5"), "ttl"),
            (
                format!("{MINIMAL}\n[[customer]]\nname = \"Publisher\"\nttl = 5\n"),
                "customer \"Publisher\": listed twice",
            ),
        ] {
            let err = GeoDnsConfig::from_toml(&bad).expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
