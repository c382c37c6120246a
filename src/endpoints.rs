//! The facts of a running topology that scripts, monitoring and `cdn drill`/`cdn warm`
//! need: every listener by component, region and node, the zone and site names, and the
//! secrets of the default config. `cdn up --endpoints FILE` writes them as JSON.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::topology::{Placement, Topology};

/// Everything that listens, and how to talk to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The GeoDNS zone.
    pub zone: String,
    pub origin: Option<SocketAddr>,
    pub geodns: DnsEndpoint,
    /// The purge API's base URL (`http://host:port`).
    pub purge_api: String,
    pub regions: Vec<RegionEndpoints>,
    pub shields: Vec<NodeEndpoint>,
    pub sites: Vec<SiteEndpoint>,
    /// The first publisher of the config, to try a purge with.
    pub publisher: Option<PublisherEndpoint>,
    /// The nodes' admin secret (`cdn-node-token`): drills and warming need it.
    pub node_token: String,
    /// `cdn up --processes`'s control listener (`http://host:port`: `/v1/processes`), which
    /// a drill kills and restarts nodes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<String>,
    /// The operator console's URL (`http://host:port/`), when `cdn up` serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsEndpoint {
    /// UDP and TCP.
    pub dns: SocketAddr,
    /// `/healthz` and `/metrics`.
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionEndpoints {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// Client networks GeoDNS locates here: an EDNS Client Subnet from one of them is
    /// answered as this region's client.
    pub clients: Vec<String>,
    pub edges: Vec<NodeEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEndpoint {
    pub name: String,
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteEndpoint {
    pub name: String,
    /// The name GeoDNS answers for the site (`<cname>.<zone>`).
    pub cname: String,
    /// Every host name the edges serve the site under.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherEndpoint {
    pub name: String,
    pub token: String,
}

/// Why endpoints could not be found.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("cannot read endpoints file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("endpoints file {path} is not what `cdn up --endpoints` writes: {message}")]
    Parse { path: String, message: String },
    #[error(
        "this topology asks for port 0 somewhere, so only the running `cdn up` knows its addresses: start it with --endpoints FILE and pass the same --endpoints FILE here"
    )]
    Dynamic,
}

impl Endpoints {
    /// The endpoints of `topology` once its components listen where `at` says, GeoDNS on
    /// `dns` and the purge API on `purge_api`.
    pub fn new(
        topology: &Topology,
        at: &Placement,
        dns: DnsEndpoint,
        purge_api: SocketAddr,
    ) -> Self {
        let node = |name: &str, (public, admin): (SocketAddr, SocketAddr)| NodeEndpoint {
            name: name.to_owned(),
            public,
            admin,
        };
        Self {
            zone: topology.topology.zone.clone(),
            origin: at.origin,
            geodns: dns,
            purge_api: format!("http://{purge_api}"),
            regions: topology
                .regions
                .iter()
                .map(|r| RegionEndpoints {
                    name: r.name.clone(),
                    lat: r.lat,
                    lon: r.lon,
                    clients: r.clients.iter().map(ToString::to_string).collect(),
                    edges: r
                        .edges
                        .iter()
                        .map(|e| node(&e.name, at.edges[&e.name]))
                        .collect(),
                })
                .collect(),
            shields: topology
                .shields
                .iter()
                .zip(&at.shields)
                .map(|(s, addrs)| node(&s.name, *addrs))
                .collect(),
            sites: topology
                .sites
                .iter()
                .map(|s| SiteEndpoint {
                    name: s.name.clone(),
                    cname: topology.site_name(s),
                    hosts: topology.site_hosts(s),
                })
                .collect(),
            publisher: topology.publishers.first().map(|p| PublisherEndpoint {
                name: p.name.clone(),
                token: p.token.clone(),
            }),
            node_token: topology.topology.node_token.clone(),
            console: None,
            supervisor: None,
        }
    }

    /// Where a topology whose ports are all fixed listens when it runs.
    pub fn planned(topology: &Topology) -> Result<Self, EndpointsError> {
        if topology.has_dynamic_ports() {
            return Err(EndpointsError::Dynamic);
        }
        Ok(Self::new(
            topology,
            &topology.planned(),
            DnsEndpoint {
                dns: topology.geodns.listen,
                admin: topology.geodns.admin,
            },
            topology.purge_api.listen,
        ))
    }

    pub fn from_file(path: &Path) -> Result<Self, EndpointsError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| EndpointsError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("endpoints serialize")
    }

    pub fn region(&self, name: &str) -> Option<&RegionEndpoints> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Names of the regions, for error messages.
    pub fn region_names(&self) -> String {
        self.regions
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every edge, with its region's name.
    pub fn edges(&self) -> impl Iterator<Item = (&str, &NodeEndpoint)> {
        self.regions
            .iter()
            .flat_map(|r| r.edges.iter().map(move |e| (r.name.as_str(), e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_endpoints_round_trip_through_json() {
        let endpoints = Endpoints::planned(&Topology::default_local()).expect("fixed ports");
        assert_eq!(endpoints.sites[0].cname, "demo.cdn.test");
        assert_eq!(
            endpoints
                .region("ap-southeast")
                .expect("region")
                .edges
                .len(),
            2
        );
        assert_eq!(endpoints.purge_api, "http://127.0.0.1:8070");
        let back: Endpoints = serde_json::from_str(&endpoints.to_json()).expect("parses");
        assert_eq!(back, endpoints);
    }

    #[test]
    fn a_topology_with_port_zero_has_no_planned_endpoints() {
        let text = crate::topology::DEFAULT_TOPOLOGY.replace("127.0.0.1:8053", "127.0.0.1:0");
        let topology = Topology::from_toml(&text).expect("valid");
        assert!(matches!(
            Endpoints::planned(&topology),
            Err(EndpointsError::Dynamic)
        ));
    }
}
