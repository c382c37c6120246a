//! A multi-tier topology on loopback: demo origins, shields in front of them (an origin
//! pool), and edges in front of the shields (a consistent-hash pool), all on port 0.

use std::fmt::Write as _;
use std::net::SocketAddr;

use cdn::demo_origin::DemoOrigin;
use edge::{EdgeConfig, EdgeServer};
use http::Method;
use origin_shield::ShieldServer;

use super::{HOST, Reply, client, loopback, send, try_send};

/// A whole tier stack for one site.
pub struct Topology {
    pub origins: Vec<DemoOrigin>,
    pub shields: Vec<Option<ShieldServer>>,
    pub edges: Vec<EdgeServer>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

/// How the shields' origin pool is set up: `[site.pool]` keys (`balance = ...`) and any
/// extra tables (`[site.pool.health]` ...), with the origins' `servers` list filled in.
#[derive(Debug, Clone, Default)]
pub struct OriginPool {
    pub pool: String,
    /// `weight` of each origin, in order (default 1).
    pub weights: Vec<u32>,
    pub tables: String,
}

impl Topology {
    /// `origins` demo origins, `shields` shields pooling them as `pool` says, and `edges`
    /// edges hashing over the shields (without probes).
    pub async fn start(origins: usize, shields: usize, edges: usize, pool: OriginPool) -> Self {
        Self::start_with_edges(origins, shields, edges, pool, "probes = false", "").await
    }

    /// As [`Topology::start`], with the edges' `[site.pool]` keys (`probes`, `[site.pool.health]`
    /// ...) set by `edge_pool` and whole tables (`[limits]` ...) by `edge_tables`.
    pub async fn start_with_edges(
        origins: usize,
        shields: usize,
        edges: usize,
        pool: OriginPool,
        edge_pool: &str,
        edge_tables: &str,
    ) -> Self {
        let mut started = Vec::new();
        for _ in 0..origins {
            started.push(DemoOrigin::start(loopback()).await.expect("origin starts"));
        }
        let servers: Vec<String> = started
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let weight = pool.weights.get(i).copied().unwrap_or(1);
                format!("{{ url = \"http://{}\", weight = {weight} }}", o.addr())
            })
            .collect();
        let mut shield_nodes = Vec::new();
        for i in 0..shields {
            let config = node_config(
                &format!("shield-{i}"),
                &servers,
                &pool.pool,
                &pool.tables,
                "",
            );
            shield_nodes.push(Some(
                ShieldServer::start(config).await.expect("shield starts"),
            ));
        }
        let shield_servers: Vec<String> = shield_nodes
            .iter()
            .flatten()
            .map(|s| {
                format!(
                    "{{ url = \"http://{}\", probe = \"http://{}/healthz\" }}",
                    s.public_addr(),
                    s.admin_addr()
                )
            })
            .collect();
        let mut edge_nodes = Vec::new();
        for i in 0..edges {
            let config = node_config(
                &format!("edge-{i}"),
                &shield_servers,
                &format!("balance = \"consistent_hash\"\n{edge_pool}"),
                "",
                edge_tables,
            );
            edge_nodes.push(EdgeServer::start(config).await.expect("edge starts"));
        }
        Self {
            origins: started,
            shields: shield_nodes,
            edges: edge_nodes,
            client: client(),
        }
    }

    /// GET `target` from edge `n`.
    pub async fn get(&self, n: usize, target: &str) -> Reply {
        send(
            &self.client,
            self.edges[n].public_addr(),
            Method::GET,
            target,
            HOST,
            &[],
        )
        .await
    }

    /// GET `target` from edge `n` with extra request fields.
    pub async fn edge_send(&self, n: usize, target: &str, headers: &[(&str, &str)]) -> Reply {
        let addr = self.edges[n].public_addr();
        send(&self.client, addr, Method::GET, target, HOST, headers).await
    }

    /// GET `target` from shield `n` directly, with extra request fields.
    pub async fn shield_send(&self, n: usize, target: &str, headers: &[(&str, &str)]) -> Reply {
        send(
            &self.client,
            self.shield_addr(n),
            Method::GET,
            target,
            HOST,
            headers,
        )
        .await
    }

    /// GET `target` from shield `n` directly.
    pub async fn shield_get(&self, n: usize, target: &str) -> Result<Reply, String> {
        let shield = self.shields[n].as_ref().expect("shield is running");
        try_send(
            &self.client,
            shield.public_addr(),
            Method::GET,
            target,
            HOST,
            &[],
        )
        .await
    }

    pub fn shield_addr(&self, n: usize) -> SocketAddr {
        self.shields[n]
            .as_ref()
            .expect("shield is running")
            .public_addr()
    }

    /// Requests each origin received for targets starting with `prefix`.
    pub fn origin_hits(&self, targets: &[String]) -> Vec<u64> {
        self.origins
            .iter()
            .map(|o| targets.iter().map(|t| o.hits(t)).sum())
            .collect()
    }

    /// The value of a metric series on edge `n`'s `/metrics`, 0 if absent.
    pub async fn edge_metric(&self, n: usize, series: &str) -> f64 {
        metric(&self.client, self.edges[n].admin_addr(), series).await
    }

    /// The value of a metric series on shield `n`'s `/metrics`, 0 if absent.
    pub async fn shield_metric(&self, n: usize, series: &str) -> f64 {
        let shield = self.shields[n].as_ref().expect("shield is running");
        metric(&self.client, shield.admin_addr(), series).await
    }

    /// Stops shield `n`: its address then refuses connections.
    pub async fn stop_shield(&mut self, n: usize) {
        if let Some(shield) = self.shields[n].take() {
            shield.shutdown().await;
        }
    }
}

/// The value of a metric series on the admin listener at `admin`, 0 if absent.
async fn metric(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    admin: SocketAddr,
    series: &str,
) -> f64 {
    let text = send(client, admin, Method::GET, "/metrics", "admin", &[])
        .await
        .text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("numeric metric"))
}

/// The node token every node of a test topology shares, so their claims to each other
/// (`cdn-purge-seq`) are signed and believed.
pub const NODE_TOKEN: &str = "topology-node-token-0123";

/// A node config with one site whose pool is `servers`.
/// `tables` follow the pool (`[site.pool.health]`), `node_tables` come before the site
/// (`[limits]`).
fn node_config(
    name: &str,
    servers: &[String],
    pool: &str,
    tables: &str,
    node_tables: &str,
) -> EdgeConfig {
    let mut text = String::new();
    let _ = write!(
        text,
        r#"
        [node]
        name = "{name}"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"

        [purge]
        node_token = "{NODE_TOKEN}"

        {node_tables}

        [[site]]
        name = "assets"
        hosts = ["{HOST}"]

        [site.pool]
        servers = [{}]
        {pool}

        {tables}
        "#,
        servers.join(", ")
    );
    EdgeConfig::from_toml(&text).unwrap_or_else(|e| panic!("test topology config: {e}\n{text}"))
}
