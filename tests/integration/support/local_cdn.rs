//! The default topology of `cdn up`, started in-process with every listener on port 0
//! (edges on their own 127.0.R.N addresses), and a client that talks to it as a browser
//! would: ask GeoDNS, then fetch from the edge it answered.

use std::net::{IpAddr, SocketAddr};

use cdn::endpoints::Endpoints;
use cdn::topology::{DEFAULT_TOPOLOGY, Topology};
use cdn::up::Up;
use http::Method;

use super::{Reply, api_call, client, dns, send};

/// The default topology on port 0, after `tweak` (text replacements on the TOML).
pub fn topology(tweak: &[(&str, &str)]) -> Topology {
    Topology::from_toml(&topology_text(tweak)).expect("test topology is valid")
}

/// The text of [`topology`].
pub fn topology_text(tweak: &[(&str, &str)]) -> String {
    let mut text = DEFAULT_TOPOLOGY.to_owned();
    for port in [8080, 8090, 8081, 8082, 8092, 8053, 8093, 8070] {
        text = text.replace(&format!(":{port}\""), ":0\"");
    }
    // Probes fast enough for drills to finish in a few seconds.
    text = text.replace(
        "interval = \"1s\"\ntimeout = \"500ms\"",
        "interval = \"200ms\"\ntimeout = \"200ms\"",
    );
    for (from, to) in tweak {
        assert!(text.contains(from), "tweak {from:?} matches the default");
        text = text.replace(from, to);
    }
    text
}

/// A running local CDN and a client for it.
pub struct LocalCdn {
    pub up: Up,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl LocalCdn {
    pub async fn start(tweak: &[(&str, &str)]) -> Self {
        let up = Up::start(&topology(tweak)).await.expect("cdn up starts");
        Self {
            up,
            client: client(),
        }
    }

    pub fn endpoints(&self) -> &Endpoints {
        self.up.endpoints()
    }

    /// The site's name (`demo.cdn.test`).
    pub fn site(&self) -> &str {
        &self.endpoints().sites[0].cname
    }

    /// The first client network of `region`.
    pub fn client_of(&self, region: &str) -> (IpAddr, u8) {
        let net: ipnet::IpNet = self.endpoints().region(region).expect("region").clients[0]
            .parse()
            .expect("CIDR");
        (net.network(), net.prefix_len())
    }

    /// GeoDNS's answer for the site to a client of `region`: (CNAME region, edge addresses).
    pub async fn resolve(&self, region: &str) -> (String, Vec<IpAddr>) {
        let query = dns::query(
            self.site(),
            hickory_proto::rr::RecordType::A,
            None,
            Some(self.client_of(region)),
        );
        let reply = dns::udp(self.endpoints().geodns.dns, &query).await;
        let cname = dns::cname(&reply).expect("a CNAME to a region");
        let region = cname.split('.').next().expect("label").to_owned();
        (region, dns::addresses(&reply))
    }

    /// The public listener of the edge GeoDNS answered with `address`.
    pub fn edge_at(&self, address: IpAddr) -> (String, SocketAddr) {
        self.endpoints()
            .edges()
            .find(|(_, e)| e.public.ip() == address)
            .map(|(_, e)| (e.name.clone(), e.public))
            .unwrap_or_else(|| panic!("GeoDNS answered {address}, which is no edge"))
    }

    /// The public listener of edge `name`.
    pub fn edge(&self, name: &str) -> SocketAddr {
        self.endpoints()
            .edges()
            .find(|(_, e)| e.name == name)
            .map(|(_, e)| e.public)
            .unwrap_or_else(|| panic!("no edge {name}"))
    }

    /// GET `target` of the site from the edge listening on `at`.
    pub async fn get(&self, at: SocketAddr, target: &str) -> Reply {
        let host = self.site().to_owned();
        send(&self.client, at, Method::GET, target, &host, &[]).await
    }

    /// Requests the demo origin received for `target`.
    pub fn origin_hits(&self, target: &str) -> u64 {
        self.up.origin.as_ref().expect("demo origin").hits(target)
    }

    /// A call to the purge API with the default publisher's token.
    pub async fn purge_api(&self, method: Method, path: &str, body: &str) -> Reply {
        let endpoints = self.endpoints();
        let addr: SocketAddr = endpoints
            .purge_api
            .trim_start_matches("http://")
            .parse()
            .expect("purge API address");
        let token = &endpoints.publisher.as_ref().expect("a publisher").token;
        api_call(addr, method, path, Some(token), body).await
    }

    pub async fn shutdown(self) {
        self.up.shutdown().await;
    }
}
