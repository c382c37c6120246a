//! `cdn up`: a working CDN on this machine with no config file at all.
//!
//! Today that is the demo origin and one edge node in front of it, from the embedded
//! default in `config/up.toml`; the shield, GeoDNS and purge API join as they are built.

use std::net::SocketAddr;

use anyhow::Context as _;
use edge::{EdgeConfig, EdgeServer};

use crate::demo_origin::DemoOrigin;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("../config/up.toml");

/// Where the demo origin of the default config listens.
pub const DEFAULT_ORIGIN: &str = "127.0.0.1:8081";

/// A running local CDN.
#[derive(Debug)]
pub struct Up {
    pub origin: DemoOrigin,
    pub edge: EdgeServer,
}

impl Up {
    /// Starts the demo origin on `origin_addr` and an edge from `config`.
    pub async fn start(config: EdgeConfig, origin_addr: SocketAddr) -> anyhow::Result<Self> {
        let origin = DemoOrigin::start(origin_addr)
            .await
            .with_context(|| format!("cannot start the demo origin on {origin_addr}"))?;
        let edge = EdgeServer::start(config).await?;
        Ok(Self { origin, edge })
    }

    /// What listens where, and a few commands to try.
    pub fn banner(&self) -> String {
        let public = self.edge.public_addr();
        let admin = self.edge.admin_addr();
        let origin = self.origin.addr();
        format!(
            "cdn up: a local CDN is running\n\
             \x20 demo origin   http://{origin}   (counts at /__stats)\n\
             \x20 edge {name:<8} http://{public}   admin http://{admin}/healthz, /metrics\n\
             \n\
             Try:\n\
             \x20 curl -si http://{public}/obj/16k.bin | grep -i -e cache-status -e age   # MISS, then HIT\n\
             \x20 curl -si 'http://{public}/x.js?cc=no-store' | grep -i cache-status      # never stored\n\
             \x20 curl -s http://{admin}/metrics | grep edge_requests\n\
             \x20 curl -s http://{origin}/__stats\n\
             Ctrl-C stops everything.",
            name = self.edge.edge().name(),
        )
    }

    pub async fn shutdown(self) {
        self.edge.shutdown().await;
        self.origin.shutdown().await;
    }
}
