//! `cdn up`: a whole CDN in one process, from a [`Topology`] (the embedded default needs
//! no file at all).
//!
//! Components start in the order their configs need each other's addresses: the demo
//! origin, the shields (pooling the origins), the edges (pooling the shields), GeoDNS
//! (probing the edges) and the purge API (pushing to every node). So a topology may ask
//! for port 0 anywhere, and [`Up::endpoints`] reports where everything really listens.
//! Edges start empty, so they have nothing to catch up on: the purge API pushes them every
//! purge from their watermark once it runs.
//!
//! [`Up::start_with_disks`] also gives every edge and shield a disk tier (`[cache.disk]`,
//! with its node state beside it) in a directory of its own under one root: a temporary
//! one removed when `Up` is dropped, or a kept one (`cdn up --cache-dir DIR`), whose
//! contents a later run recovers and serves.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use edge::EdgeServer;
use edge::cache::disk::DiskConfig;
use geodns::GeoDnsServer;
use origin_shield::ShieldServer;
use purge_api::PurgeApiServer;

use crate::demo_origin::DemoOrigin;
use crate::endpoints::{DnsEndpoint, Endpoints};
use crate::topology::{Placement, Topology};

/// A running CDN.
#[derive(Debug)]
pub struct Up {
    pub origin: Option<DemoOrigin>,
    pub shields: Vec<ShieldServer>,
    /// Every edge, in the topology's order (region by region).
    pub edges: Vec<EdgeServer>,
    pub geodns: GeoDnsServer,
    pub purge_api: PurgeApiServer,
    endpoints: Endpoints,
    /// The topology in service, and where its listeners are bound: what a reload compares
    /// a new topology with and builds the new node configs from.
    topology: Topology,
    at: Placement,
    /// The purge log's file (the purge API config names it).
    log: PathBuf,
    /// Holds the purge log when the topology names none; removed on drop.
    _scratch: Option<tempfile::TempDir>,
    /// Where the nodes' disk tiers are, when they have one.
    disks: Option<PathBuf>,
    /// Holds the disk tiers when they are temporary; removed on drop.
    _disks: Option<tempfile::TempDir>,
}

/// What a topology reload changed, node by node.
#[derive(Debug, Default)]
pub struct UpReloaded {
    pub nodes: Vec<(String, edge::node::reload::Reloaded)>,
}

impl std::fmt::Display for UpReloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut added: Vec<&str> = Vec::new();
        let mut changed: Vec<&str> = Vec::new();
        let mut removed: Vec<&str> = Vec::new();
        for (_, node) in &self.nodes {
            added.extend(node.added.iter().map(String::as_str));
            changed.extend(node.changed.iter().map(String::as_str));
            removed.extend(node.removed.iter().map(String::as_str));
        }
        for list in [&mut added, &mut changed, &mut removed] {
            list.sort_unstable();
            list.dedup();
        }
        write!(
            f,
            "{} nodes reloaded; sites added {added:?}, changed {changed:?}, removed {removed:?}",
            self.nodes.len()
        )
    }
}

/// Where `cdn up` puts its nodes' disk tiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disks {
    /// None: memory only (what the topology's node configs say).
    None,
    /// A temporary directory, removed on exit.
    Temporary,
    /// This directory, kept across runs (a subdirectory per node).
    Keep(PathBuf),
}

/// The disk tier each node of `cdn up` gets: enough for a demo, files grow as needed.
const UP_DISK_SIZE: bytesize::ByteSize = bytesize::ByteSize::gib(1);

/// `config` with a disk tier in `root/name`, unless its topology gave it one.
pub(crate) fn with_disk(
    mut config: edge::EdgeConfig,
    root: Option<&Path>,
    name: &str,
) -> edge::EdgeConfig {
    if let Some(root) = root
        && config.cache.disk.is_none()
    {
        config.cache.disk = Some(DiskConfig::new(root.join(name), UP_DISK_SIZE));
    }
    config
}

impl Up {
    /// Starts every component of `topology`, each listening where the topology says,
    /// every cache in memory only (unless the topology gives it a disk).
    pub async fn start(topology: &Topology) -> anyhow::Result<Self> {
        Self::start_with_disks(topology, Disks::None).await
    }

    /// As [`Up::start`], every edge and shield with a disk tier where `disks` says.
    pub async fn start_with_disks(topology: &Topology, disks: Disks) -> anyhow::Result<Self> {
        let (disk_root, disk_scratch) = match disks {
            Disks::None => (None, None),
            Disks::Keep(dir) => (Some(dir), None),
            Disks::Temporary => {
                let dir = tempfile::Builder::new()
                    .prefix("cdn-up-cache-")
                    .tempdir()
                    .context("cannot create a temporary directory for the disk caches")?;
                (Some(dir.path().to_owned()), Some(dir))
            }
        };
        let root = disk_root.as_deref();
        let mut at = topology.planned();
        let origin = match at.origin {
            Some(addr) => {
                let origin = DemoOrigin::start(addr)
                    .await
                    .with_context(|| format!("cannot start the demo origin on {addr}"))?;
                at.origin = Some(origin.addr());
                Some(origin)
            }
            None => None,
        };
        let mut shields = Vec::new();
        for n in 0..topology.shields.len() {
            let config = with_disk(
                topology.shield_config(n, &at)?,
                root,
                &topology.shields[n].name,
            );
            let shield = ShieldServer::start(config)
                .await
                .with_context(|| format!("cannot start shield {}", topology.shields[n].name))?;
            at.shields[n] = (shield.public_addr(), shield.admin_addr());
            shields.push(shield);
        }
        let mut edges = Vec::new();
        for (_, node) in topology.edges() {
            let config = with_disk(topology.edge_config(&node.name, &at)?, root, &node.name);
            let edge = EdgeServer::start(config)
                .await
                .with_context(|| format!("cannot start edge {}", node.name))?;
            at.edges
                .insert(node.name.clone(), (edge.public_addr(), edge.admin_addr()));
            edges.push(edge);
        }
        let dns_config =
            topology.geodns_config(topology.geodns.listen, topology.geodns.admin, &at)?;
        let geodns = GeoDnsServer::start(dns_config, None)
            .await
            .context("cannot start GeoDNS")?;
        let (log, scratch) = match &topology.purge_api.log {
            Some(path) => (path.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("cdn-up-")
                    .tempdir()
                    .context("cannot create a temporary directory for the purge log")?;
                (dir.path().join("purge.redb"), Some(dir))
            }
        };
        let api_config = topology.purge_api_config(topology.purge_api.listen, &log, &at)?;
        let purge_api = PurgeApiServer::start(api_config)
            .await
            .context("cannot start the purge API")?;
        let endpoints = Endpoints::new(
            topology,
            &at,
            DnsEndpoint {
                dns: geodns.dns_addr(),
                admin: geodns.admin_addr(),
            },
            purge_api.addr(),
        );
        Ok(Self {
            origin,
            shields,
            edges,
            geodns,
            purge_api,
            endpoints,
            topology: topology.clone(),
            at,
            log,
            _scratch: scratch,
            disks: disk_root,
            _disks: disk_scratch,
        })
    }

    /// Puts `next` in service in every component, without a restart: its sites, origins,
    /// limits and node settings on every edge and shield (each as a config reload, see
    /// `edge::node::reload`), its GeoDNS answers, and its sites and publishers in the
    /// purge API. A topology that adds, removes or moves a node or a listener is refused
    /// before anything changes, naming what differs: that takes a restart.
    ///
    /// Every config is built and checked before the first is applied; a node that still
    /// refuses its config (a change only a restart can make, such as `[cache]`) is named
    /// in the error, and the nodes before it keep what they took.
    pub fn reload(&mut self, next: &Topology) -> anyhow::Result<UpReloaded> {
        let planned = self.topology.planned();
        if next.planned() != planned
            || next.geodns.listen != self.topology.geodns.listen
            || next.geodns.admin != self.topology.geodns.admin
            || next.purge_api.listen != self.topology.purge_api.listen
        {
            anyhow::bail!(
                "the new topology adds, removes or moves nodes or listeners, which takes a                  restart of cdn up; a reload changes sites, origins, limits and settings"
            );
        }
        let root = self.disks.as_deref();
        // Each node's config as at its start (its own listeners as planned, the others
        // where they are bound), so that only what the topology changed differs.
        let mut shields = Vec::new();
        for (n, shield) in self.shields.iter().enumerate() {
            let mut at = self.at.clone();
            at.shields[n] = planned.shields[n];
            let name = &next.shields[n].name;
            shields.push((shield, with_disk(next.shield_config(n, &at)?, root, name)));
        }
        let mut edges = Vec::new();
        for edge in &self.edges {
            let name = edge.edge().name().to_owned();
            let mut at = self.at.clone();
            at.edges.insert(name.clone(), planned.edges[&name]);
            edges.push((edge, with_disk(next.edge_config(&name, &at)?, root, &name)));
        }
        let dns = next.geodns_config(next.geodns.listen, next.geodns.admin, &self.at)?;
        let api = next.purge_api_config(next.purge_api.listen, &self.log, &self.at)?;

        let mut reloaded = UpReloaded::default();
        for (shield, config) in shields {
            let name = shield.engine().name().to_owned();
            let changed = shield
                .reload(config)
                .with_context(|| format!("shield {name}"))?;
            reloaded.nodes.push((name, changed));
        }
        for (edge, config) in edges {
            let name = edge.edge().name().to_owned();
            let changed = edge
                .reload(config)
                .with_context(|| format!("edge {name}"))?;
            reloaded.nodes.push((name, changed));
        }
        self.geodns
            .replace_config(dns)
            .context("GeoDNS refused the new topology's zone")?;
        self.purge_api
            .reload_directory(api.sites, api.publishers)
            .context("the purge API refused the new topology's sites")?;
        let console = self.endpoints.console.take();
        self.endpoints = Endpoints::new(
            next,
            &self.at,
            DnsEndpoint {
                dns: self.geodns.dns_addr(),
                admin: self.geodns.admin_addr(),
            },
            self.purge_api.addr(),
        );
        self.endpoints.console = console;
        self.topology = next.clone();
        Ok(reloaded)
    }

    /// Where everything listens.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Records where the operator console serves this topology (`cdn up --console`), for
    /// the banner and the endpoints file.
    pub fn set_console(&mut self, url: String) {
        self.endpoints.console = Some(url);
    }

    /// The edge called `name`.
    pub fn edge(&self, name: &str) -> Option<&EdgeServer> {
        self.edges.iter().find(|e| e.edge().name() == name)
    }

    /// What listens where, and a few commands to try; `args` are what `cdn drill` and
    /// `cdn warm` need to find this topology (e.g. `--port-base 9000`).
    pub fn banner(&self, args: &str) -> String {
        let mut out = banner(&self.endpoints, args);
        if let Some(dir) = &self.disks {
            let kept = if self._disks.is_some() {
                "temporary, removed on exit; --cache-dir DIR keeps it"
            } else {
                "kept across runs"
            };
            let line = format!(
                "\n  disk caches        {} (one directory per node, {UP_DISK_SIZE} each; {kept})",
                dir.display()
            );
            match out.find("\n\nTry:") {
                Some(at) => out.insert_str(at, &line),
                None => out.push_str(&line),
            }
        }
        out
    }

    /// Stops everything, clients' side first: the purge API and GeoDNS, then the edges
    /// (letting their requests finish), the shields and the origin.
    pub async fn shutdown(self) {
        self.purge_api.shutdown().await;
        self.geodns.shutdown().await;
        for edge in self.edges {
            edge.shutdown().await;
        }
        for shield in self.shields {
            shield.shutdown().await;
        }
        if let Some(origin) = self.origin {
            origin.shutdown().await;
        }
    }
}

/// The listing `cdn up` prints.
pub fn banner(e: &Endpoints, args: &str) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "cdn up: a local multi-region CDN is running (zone {})\n",
        e.zone
    );
    if let Some(origin) = e.origin {
        let _ = writeln!(
            out,
            "  demo origin        http://{origin}   (counts at /__stats)"
        );
    }
    for s in &e.shields {
        let _ = writeln!(
            out,
            "  shield {:<11} http://{}   admin http://{}",
            s.name, s.public, s.admin
        );
    }
    for r in &e.regions {
        let _ = writeln!(
            out,
            "  region {} ({}, {}), clients {}",
            r.name,
            r.lat,
            r.lon,
            r.clients.join(" ")
        );
        for edge in &r.edges {
            let _ = writeln!(
                out,
                "    edge {:<13} http://{}   admin http://{}",
                edge.name, edge.public, edge.admin
            );
        }
    }
    let _ = writeln!(
        out,
        "  geodns             {} (UDP and TCP)   admin http://{}",
        e.geodns.dns, e.geodns.admin
    );
    let _ = writeln!(out, "  purge API          {}", e.purge_api);
    if let Some(console) = &e.console {
        let _ = writeln!(
            out,
            "  console            {console}   (health, load, GeoDNS answers, purges, drills)"
        );
    }
    if let Some(control) = &e.supervisor {
        let _ = writeln!(
            out,
            "  supervisor         {control}/v1/processes   (kill and start processes: drills)"
        );
    }
    let Some(site) = e.sites.first() else {
        return out;
    };
    let dns = e.geodns.dns;
    let (name, port) = (&site.cname, e.regions[0].edges[0].public.port());
    let first = e.regions[0].edges[0].public.ip();
    let _ = writeln!(out, "\nTry:");
    if let Some(other) = e.regions.get(1).and_then(|r| r.clients.first()) {
        let _ = writeln!(
            out,
            "  dig @{} -p {} {name} +subnet={other}   # a client of {}: CNAME to its region, with its edges",
            dns.ip(),
            dns.port(),
            e.regions[1].name
        );
    }
    let _ = writeln!(
        out,
        "  curl -s -o /dev/null -D - --resolve {name}:{port}:{first} http://{name}:{port}/obj/16k.bin | grep -i cache-status   # miss, then hit"
    );
    if let Some(publisher) = &e.publisher {
        let _ = writeln!(
            out,
            "  curl -s {}/v1/purge -H 'authorization: Bearer {}' -d '{{\"site\":\"{}\",\"urls\":[\"http://{name}/obj/16k.bin\"]}}'",
            e.purge_api, publisher.token, site.name
        );
    }
    if let Some(region) = e.regions.first() {
        let _ = writeln!(
            out,
            "  cdn drill --region {}{args}   # take {} out, watch GeoDNS fail over, bring it back",
            region.name, region.name
        );
        if let Some(to) = e.regions.get(1) {
            let _ = writeln!(
                out,
                "  cdn warm --from {} --to {}{args}   # copy {}'s hottest objects into {}'s caches",
                region.name, to.name, region.name, to.name
            );
        }
    }
    out.push_str("Ctrl-C stops everything.");
    out
}
