//! Regions in network namespaces of their own, for drills that cut a region off the
//! network (`cdn up --processes --netns`, `cdn drill --mode partition`).
//!
//! Each region gets a namespace with a veth pair to the root namespace: the region's edges
//! listen on addresses of its subnet (`10.<id>.<r>.0/24`, the namespace side), the root
//! side is their gateway, and the core (origin, shield, purge API) listens on an address of
//! the root namespace's loopback (`10.<id>.0.1`) that every namespace reaches through its
//! gateway. Clients, GeoDNS and the purge API reach the edges through the veth pairs.
//!
//! A cut takes the namespace's side of the link down: the edges neither answer nor are
//! refused (connections time out, as across a real partition); a heal brings it back. A
//! blackhole route for the whole `10.<id>.0.0/16` in the root namespace keeps traffic for
//! a cut region from following the default route off the machine. Everything is removed
//! when the [`RegionNetwork`] is dropped. Needs root and `ip` (iproute2).

use std::net::Ipv4Addr;
use std::process::Command;

/// Why the namespaces could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "`ip {args}` failed: {reason} (network namespaces need root and iproute2; run without --netns otherwise)"
    )]
    Ip { args: String, reason: String },
    #[error("no region {0:?} in the network")]
    UnknownRegion(String),
}

/// The namespaces of a topology's regions.
#[derive(Debug)]
pub struct RegionNetwork {
    id: u8,
    /// Each region's name and how many edges it has.
    regions: Vec<(String, usize)>,
}

impl RegionNetwork {
    /// Creates a namespace per region (name, edges), numbered by a `10.<id>` free on this
    /// machine.
    pub fn create(regions: &[(String, usize)]) -> Result<Self, NetnsError> {
        let taken = ip(&["-o", "addr"])?;
        let start = std::process::id() % 100;
        let id = (0..100)
            .map(|k| 100 + ((start + k) % 100) as u8)
            .find(|id| !taken.contains(&format!(" 10.{id}.")))
            .unwrap_or(100);
        let network = Self {
            id,
            regions: regions.to_vec(),
        };
        network.set_up().inspect_err(|_| network.tear_down())?;
        Ok(network)
    }

    fn set_up(&self) -> Result<(), NetnsError> {
        let id = self.id;
        ip(&["route", "add", "blackhole", &format!("10.{id}.0.0/16")])?;
        ip(&["addr", "add", &format!("{}/32", self.core()), "dev", "lo"])?;
        for r in 0..self.regions.len() {
            let (ns, outer, inner) = (self.namespace(r), self.outer(r), self.inner(r));
            let gateway = self.gateway(r);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["addr", "add", &format!("{gateway}/24"), "dev", &outer])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
            for n in 0..self.regions[r].1 {
                let edge = format!("{}/24", self.edge_address(r, n));
                ip(&[
                    "netns", "exec", &ns, "ip", "addr", "add", &edge, "dev", &inner,
                ])?;
            }
            ip(&[
                "netns",
                "exec",
                &ns,
                "ip",
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ])?;
        }
        Ok(())
    }

    fn tear_down(&self) {
        for r in 0..self.regions.len() {
            let _ = ip(&["link", "del", &self.outer(r)]);
            let _ = ip(&["netns", "del", &self.namespace(r)]);
        }
        let _ = ip(&["addr", "del", &format!("{}/32", self.core()), "dev", "lo"]);
        let _ = ip(&[
            "route",
            "del",
            "blackhole",
            &format!("10.{}.0.0/16", self.id),
        ]);
    }

    /// The address the core's components listen on (the root namespace's loopback).
    pub fn core(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.id, 0, 1)
    }

    /// The address of edge `n` of region `r` (in the region's namespace).
    pub fn edge_address(&self, r: usize, n: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.id, r as u8 + 1, 10 + n as u8)
    }

    /// The namespace of region `r`.
    pub fn namespace(&self, r: usize) -> String {
        format!("cdn{}r{}", self.id, r + 1)
    }

    fn gateway(&self, r: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.id, r as u8 + 1, 1)
    }

    fn outer(&self, r: usize) -> String {
        format!("cdn{}r{}o", self.id, r + 1)
    }

    fn inner(&self, r: usize) -> String {
        format!("cdn{}r{}i", self.id, r + 1)
    }

    fn index(&self, region: &str) -> Result<usize, NetnsError> {
        self.regions
            .iter()
            .position(|(name, _)| name == region)
            .ok_or_else(|| NetnsError::UnknownRegion(region.to_owned()))
    }

    /// Cuts region `region` off: nothing reaches its edges, nothing leaves them.
    pub fn cut(&self, region: &str) -> Result<(), NetnsError> {
        let r = self.index(region)?;
        ip(&[
            "netns",
            "exec",
            &self.namespace(r),
            "ip",
            "link",
            "set",
            &self.inner(r),
            "down",
        ])?;
        Ok(())
    }

    /// Reconnects region `region`.
    pub fn heal(&self, region: &str) -> Result<(), NetnsError> {
        let r = self.index(region)?;
        let ns = self.namespace(r);
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "link",
            "set",
            &self.inner(r),
            "up",
        ])?;
        // The default route went with the link.
        let gateway = self.gateway(r).to_string();
        let _ = ip(&[
            "netns", "exec", &ns, "ip", "route", "replace", "default", "via", &gateway,
        ]);
        Ok(())
    }
}

impl Drop for RegionNetwork {
    fn drop(&mut self) {
        self.tear_down();
    }
}

/// Whether this machine lets `cdn up` make namespaces (root, iproute2): `Err` says why not.
pub fn available() -> Result<(), NetnsError> {
    let probe = format!("cdnprobe{}", std::process::id());
    ip(&["netns", "add", &probe])?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}

/// Runs `ip args`, returning its output.
fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let failed = |reason: String| NetnsError::Ip {
        args: args.join(" "),
        reason,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_made_with_their_edges_addresses_and_removed() {
        if let Err(why) = available() {
            eprintln!("SKIPPED: network namespaces are not available here: {why}");
            return;
        }
        let network =
            RegionNetwork::create(&[("eu".into(), 2), ("us".into(), 1)]).expect("created");
        let ns = network.namespace(0);
        let inside = ip(&["netns", "exec", &ns, "ip", "-o", "addr"]).expect("addresses");
        assert!(
            inside.contains(&network.edge_address(0, 1).to_string()),
            "{inside}"
        );
        let name = network.namespace(1);
        drop(network);
        let left = ip(&["netns", "list"]).unwrap_or_default();
        assert!(!left.contains(&name), "{left}");
    }
}
