//! The origin shield: the mid tier between every edge and the origin.
//!
//! A shield is the `edge` cache engine (keys, freshness, coalescing, stale serving,
//! slices) whose sites fetch from a pool of origin servers instead of from the shield
//! tier. Edges pick the shield for an object by rendezvous hashing of its key over the
//! healthy shields (`balance = "consistent_hash"` in their pool), so each object is cached
//! once in the tier and every edge's miss on it collapses into the shield's one fill:
//! however many edges miss at once, the origin sees a single fetch. The origin pool
//! balances across origin servers (round robin, weighted round robin, least connections,
//! consistent hash, EWMA latency), keeps them honest with active probes and passive
//! ejection, retries idempotent fetches on another origin within a budget, and serves
//! stale (`stale-if-error`) when every origin fails. See `edge::upstream::pool`.
//!
//! What a shield does differently from an edge is the engine's `edge::node::role::Role`,
//! which [`ShieldServer::start`] sets.

use std::net::SocketAddr;
use std::sync::Arc;

use edge::node::reload::{ReloadError, Reloaded};
use edge::node::role::Role;
use edge::node::upgrade::Inherited;
use edge::{Edge, EdgeConfig, EdgeServer, StartError};

/// A running shield node.
#[derive(Debug)]
pub struct ShieldServer {
    server: EdgeServer,
}

impl ShieldServer {
    /// Binds the shield's listeners and starts serving and probing its origin pools.
    /// The node runs as [`Role::Shield`], whatever `config.node.role` said: it believes
    /// the edges' proven claims, signs nothing toward the origin, and passes the tags
    /// purges name objects by on to the edges.
    pub async fn start(config: EdgeConfig) -> Result<Self, StartError> {
        Self::start_on(config, None).await
    }

    /// As [`ShieldServer::start`], on a running shield's listeners (an upgrade: see
    /// `edge::node::upgrade`).
    pub async fn start_on(
        mut config: EdgeConfig,
        inherited: Option<Inherited>,
    ) -> Result<Self, StartError> {
        config.node.role = Role::Shield;
        let server = EdgeServer::start_on(config, inherited).await?;
        tracing::info!(node = %server.edge().name(), "serving as origin shield");
        Ok(Self { server })
    }

    /// Where edges send their misses.
    pub fn public_addr(&self) -> SocketAddr {
        self.server.public_addr()
    }

    /// `/healthz` (what edges probe) and `/metrics`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    pub fn engine(&self) -> &Arc<Edge> {
        self.server.edge()
    }

    /// Reloads from `path` on SIGHUP, on `POST /v1/config/reload` and when it changes
    /// (see [`EdgeServer::follow_file`]).
    pub fn follow_file(&mut self, path: std::path::PathBuf) {
        self.server.follow_file(path);
    }

    /// Puts `config` in service, or refuses it saying why (see [`EdgeServer::reload`]).
    pub fn reload(&self, mut config: EdgeConfig) -> Result<Reloaded, ReloadError> {
        config.node.role = Role::Shield;
        self.server.reload(config)
    }

    /// The engine's server (what runs any node: reloads, upgrades, shutdown).
    pub fn into_server(self) -> EdgeServer {
        self.server
    }

    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
