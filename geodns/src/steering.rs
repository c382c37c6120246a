//! Which region a client is sent to, and which of its edges are in the answer.
//!
//! Invariants:
//! - A client goes to the nearest region (great-circle distance from where it is located,
//!   or from its pinned or the default region) that has a ready edge of weight > 0 (up
//!   and able to fill misses); only when no region has one, to the nearest region with an
//!   edge that is up but degraded (it serves what it holds, say when every shield is
//!   gone).
//! - A region over its capacity sends a fixed share (`spill`) of its clients to the next
//!   nearest healthy region; which clients is decided by a hash of the client's network,
//!   so a client does not flap between regions from one query to the next.
//! - Answers hold only healthy edges of weight > 0, rotated by weight across queries; the
//!   ready ones when the region has any.
//!
//! One decision ([`Regions::decide`]): given the regions ranked for a client's place and
//! the regions' health frozen in a [`RegionHealth`], a [`Choice`]. The answer map
//! ([`crate::answer_map`]) makes it for every place when health changes; [`Regions::choose`]
//! makes it for one client now.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

use crate::config::RegionConfig;
use crate::geo::{Coordinates, Located, rank_regions};
use crate::health::EdgeHealth;

/// One edge of a region.
#[derive(Debug)]
pub struct Edge {
    pub address: IpAddr,
    pub probe: http::Uri,
    pub weight: u32,
    pub health: Arc<EdgeHealth>,
    /// See [`edge_key`].
    key: String,
}

/// One region.
#[derive(Debug)]
pub struct Region {
    pub name: String,
    pub at: Coordinates,
    pub edges: Vec<Edge>,
    capacity: Option<u64>,
    spill: f64,
    /// Edge indexes, each repeated `weight` times: the weighted rotation.
    rotation: Vec<usize>,
    cursor: AtomicUsize,
    /// Every region's index, nearest to this one first (this one included). A byte each:
    /// at most `MAX_REGIONS` (256) regions.
    by_distance: Box<[u8]>,
}

impl Region {
    /// Whether any edge of weight > 0 passes its probes.
    pub fn is_healthy(&self) -> bool {
        self.edges.iter().any(|e| e.weight > 0 && e.health.is_up())
    }

    /// Whether any edge of weight > 0 passes its probes and can fill misses.
    pub fn is_ready(&self) -> bool {
        self.edges
            .iter()
            .any(|e| e.weight > 0 && e.health.is_ready())
    }

    /// Whether the healthy edges report more connections than the region's capacity.
    pub fn over_capacity(&self) -> bool {
        self.capacity.is_some_and(|capacity| {
            let load: u64 = self
                .edges
                .iter()
                .filter(|e| e.health.is_up())
                .map(|e| e.health.load())
                .sum();
            load > capacity
        })
    }

    /// Up to `max` healthy edge addresses of one family (`v6`), starting at the next
    /// position of the weighted rotation.
    pub fn addresses(&self, v6: bool, max: usize) -> Vec<IpAddr> {
        let mut out = Vec::with_capacity(max.min(self.edges.len()));
        self.addresses_into(v6, max, &mut out);
        out
    }

    /// [`Region::addresses`] into `out` (cleared first), so a caller answering many
    /// queries reuses one buffer.
    pub fn addresses_into(&self, v6: bool, max: usize, out: &mut Vec<IpAddr>) {
        out.clear();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let n = self.rotation.len();
        let ready_only = self.is_ready();
        for step in 0..n {
            if out.len() == max {
                break;
            }
            let edge = &self.edges[self.rotation[(start + step) % n]];
            let usable = if ready_only {
                edge.health.is_ready()
            } else {
                edge.health.is_up()
            };
            if edge.address.is_ipv6() == v6 && usable && !out.contains(&edge.address) {
                out.push(edge.address);
            }
        }
    }
}

/// Every region, with the precomputed distances between them.
#[derive(Debug)]
pub struct Regions {
    pub regions: Vec<Region>,
    by_name: FxHashMap<String, usize>,
    default: usize,
}

/// A set of regions by index, for up to `MAX_REGIONS` (256).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionSet([u64; 4]);

impl RegionSet {
    pub fn insert(&mut self, region: usize) {
        self.0[region / 64] |= 1 << (region % 64);
    }

    pub fn contains(&self, region: usize) -> bool {
        self.0[region / 64] & (1 << (region % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// The regions' health at one moment, as far as steering goes: which regions are ready,
/// which healthy, which over capacity. Answers are decided from one of these, so that
/// every client is answered from the same moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionHealth {
    pub ready: RegionSet,
    pub healthy: RegionSet,
    pub over_capacity: RegionSet,
}

/// Where the clients of one place go, under one [`RegionHealth`].
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Every client to this region.
    Region(u8),
    /// Some of the nearest usable regions are over capacity: each client by the hash of
    /// its network ([`network_hash`]). The usable regions in rank order, each with the
    /// share of clients it sends on (0 for the last, which keeps everyone it gets); a
    /// client sent on by every one of them goes to the first.
    Spill(Box<[(u8, f64)]>),
}

impl Choice {
    /// The region for a client whose network hashes to `client_hash`.
    pub fn region(&self, client_hash: u64) -> usize {
        match self {
            Choice::Region(r) => usize::from(*r),
            Choice::Spill(chain) => {
                let share = (client_hash % 10_000) as f64 / 10_000.0;
                let kept = chain.iter().find(|(_, spill)| share >= *spill);
                usize::from(kept.unwrap_or(&chain[0]).0)
            }
        }
    }

    /// Whether clients of the place are answered differently by their network's hash.
    pub fn by_client(&self) -> bool {
        matches!(self, Choice::Spill(_))
    }
}

/// [`Regions::decide`] was given the first regions of a ranking only, and the choice
/// depends on regions after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsWholeRanking;

/// The prefix lengths [`network_hash`] reads, IPv4 and IPv6: the network a spilled
/// client is decided by, and so the narrowest ECS scope of a spilled answer.
pub const HASHED_PREFIX: (u8, u8) = (24, 56);

/// A hash of the client's network (/24 or /56, [`HASHED_PREFIX`]), stable across
/// queries, for spillover.
pub fn network_hash(ip: IpAddr) -> u64 {
    let octets_v6;
    let octets_v4;
    let network: &[u8] = match ip {
        IpAddr::V4(v4) => {
            octets_v4 = v4.octets();
            &octets_v4[..usize::from(HASHED_PREFIX.0 / 8)]
        }
        IpAddr::V6(v6) => {
            octets_v6 = v6.octets();
            &octets_v6[..usize::from(HASHED_PREFIX.1 / 8)]
        }
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in network {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^ (hash >> 29)
}

impl Regions {
    /// Builds the regions of a validated config; `health` keeps the states of edges that
    /// survive a reload (keyed by [`edge_key`]).
    pub fn new(
        configs: &[RegionConfig],
        default_region: &str,
        health: &HashMap<String, Arc<EdgeHealth>>,
    ) -> Self {
        let points: Vec<(&str, Coordinates)> = configs
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    Coordinates {
                        lat: r.lat,
                        lon: r.lon,
                    },
                )
            })
            .collect();
        let regions: Vec<Region> = configs
            .iter()
            .map(|config| {
                let at = Coordinates {
                    lat: config.lat,
                    lon: config.lon,
                };
                let edges: Vec<Edge> = config
                    .edges
                    .iter()
                    .map(|e| Edge {
                        key: edge_key(&config.name, e.address, &e.probe),
                        address: e.address,
                        probe: e
                            .probe
                            .parse()
                            .unwrap_or_else(|_| http::Uri::from_static("/")),
                        weight: e.weight,
                        health: health
                            .get(&edge_key(&config.name, e.address, &e.probe))
                            .cloned()
                            .unwrap_or_default(),
                    })
                    .collect();
                let rotation = edges
                    .iter()
                    .enumerate()
                    .flat_map(|(i, e)| std::iter::repeat_n(i, e.weight as usize))
                    .collect();
                Region {
                    name: config.name.to_ascii_lowercase(),
                    at,
                    edges,
                    capacity: config.capacity,
                    spill: config.spill,
                    rotation,
                    cursor: AtomicUsize::new(0),
                    // At most `MAX_REGIONS` (256) regions: each index fits a byte.
                    by_distance: rank_regions(at, &points)
                        .into_iter()
                        .filter_map(|i| u8::try_from(i).ok())
                        .collect(),
                }
            })
            .collect();
        let by_name: FxHashMap<String, usize> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let default = by_name
            .get(&default_region.to_ascii_lowercase())
            .copied()
            .unwrap_or(0);
        Self {
            regions,
            by_name,
            default,
        }
    }

    /// The region of clients nowhere known.
    pub fn default_region(&self) -> usize {
        self.default
    }

    /// Every region's index, nearest to region `region` first (itself included).
    pub fn by_distance(&self, region: usize) -> &[u8] {
        &self.regions[region].by_distance
    }

    /// The regions' health now.
    pub fn health(&self) -> RegionHealth {
        let mut health = RegionHealth::default();
        for (i, region) in self.regions.iter().enumerate() {
            if region.is_ready() {
                health.ready.insert(i);
            }
            if region.is_healthy() {
                health.healthy.insert(i);
            }
            if region.over_capacity() {
                health.over_capacity.insert(i);
            }
        }
        health
    }

    /// Where clients that rank the regions as `ranked` (nearest first) go under
    /// `health`: the first ready region (the first healthy one when no region is ready),
    /// except that a region over capacity sends its `spill` share of clients on to the
    /// next. `None` when no region is healthy.
    ///
    /// `whole` says whether `ranked` is every region; when it is only the nearest few,
    /// `Err` if the choice depends on the regions after them.
    pub fn decide(
        &self,
        ranked: &[u8],
        whole: bool,
        health: &RegionHealth,
    ) -> Result<Option<Choice>, NeedsWholeRanking> {
        for usable in [&health.ready, &health.healthy] {
            if usable.is_empty() {
                continue;
            }
            let mut chain: Vec<(u8, f64)> = Vec::new();
            for &r in ranked {
                let i = usize::from(r);
                if !usable.contains(i) {
                    continue;
                }
                let spill = if health.over_capacity.contains(i) {
                    self.regions[i].spill
                } else {
                    0.0
                };
                chain.push((r, spill));
                if spill <= 0.0 {
                    return Ok(Some(match chain.as_slice() {
                        [(r, _)] => Choice::Region(*r),
                        _ => Choice::Spill(chain.into()),
                    }));
                }
            }
            if !whole {
                return Err(NeedsWholeRanking);
            }
            // Every usable region spills this client: it goes to the first.
            return Ok(Some(Choice::Spill(chain.into())));
        }
        Ok(None)
    }

    /// The region named `name`, in any case.
    pub fn index(&self, name: &str) -> Option<usize> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_name.get(&name.to_ascii_lowercase()).copied();
        }
        self.by_name.get(name).copied()
    }

    /// Every edge's health, keyed for carrying over a reload.
    pub fn health_table(&self) -> HashMap<String, Arc<EdgeHealth>> {
        self.regions
            .iter()
            .flat_map(|r| r.edges.iter().map(|e| (e.key.clone(), e.health.clone())))
            .collect()
    }

    /// The region for a client located at `located` (`None`: unknown), whose network
    /// hashes to `client_hash` (for spillover), decided now: the ranking from its place
    /// and the health of this moment. `None` when no region is healthy. The server answers
    /// from the answer map instead, which makes the same decision ahead of queries.
    pub fn choose(&self, located: Option<&Located>, client_hash: u64) -> Option<usize> {
        let ranked: Vec<u8> = match located {
            Some(Located::Point { at, .. }) => {
                let points: Vec<(&str, Coordinates)> = self
                    .regions
                    .iter()
                    .map(|r| (r.name.as_str(), r.at))
                    .collect();
                rank_regions(*at, &points)
                    .into_iter()
                    .filter_map(|i| u8::try_from(i).ok())
                    .collect()
            }
            Some(Located::Region { name, .. }) => {
                let start = self.index(name).unwrap_or(self.default);
                self.by_distance(start).to_vec()
            }
            None => self.by_distance(self.default).to_vec(),
        };
        let choice = self.decide(&ranked, true, &self.health()).ok()??;
        Some(choice.region(client_hash))
    }

    /// The region answering for region `r`'s own name: itself while ready, else its
    /// nearest ready neighbour, else the nearest healthy one.
    pub fn serving(&self, r: usize) -> Option<usize> {
        let ranked = &self.regions[r].by_distance;
        let mut healthy = None;
        for i in ranked.iter().map(|&i| usize::from(i)) {
            if self.regions[i].is_ready() {
                return Some(i);
            }
            if self.regions[i].is_healthy() {
                healthy.get_or_insert(i);
            }
        }
        healthy
    }
}

/// The key under which an edge's health survives a reload.
pub fn edge_key(region: &str, address: IpAddr, probe: &str) -> String {
    format!("{}|{address}|{probe}", region.to_ascii_lowercase())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The regions of `tables` (`[[region]]` TOML tables) in a zone with one name server,
    /// clients nowhere known going to `default`: a validated config's.
    pub(crate) fn regions_of(default: &str, tables: &str) -> Regions {
        let text = format!(
            "[zone]\nname = \"cdn.test\"\n\
             nameservers = [{{ name = \"ns1.cdn.test\", addresses = [\"192.0.2.53\"] }}]\n\
             [geo]\ndefault_region = \"{default}\"\n{tables}"
        );
        let config = crate::config::GeoDnsConfig::from_toml(&text).expect("valid");
        Regions::new(&config.regions, default, &HashMap::new())
    }

    fn regions() -> Regions {
        regions_of(
            "eu",
            r#"
            [[region]]
            name = "eu"
            lat = 50.11
            lon = 8.68
            capacity = 100
            spill = 0.5
            edge = [{ address = "192.0.2.1", probe = "http://127.0.0.1:1/healthz", weight = 2 },
                    { address = "192.0.2.2", probe = "http://127.0.0.1:2/healthz" }]
            [[region]]
            name = "us"
            lat = 39.04
            lon = -77.49
            edge = [{ address = "198.51.100.1", probe = "http://127.0.0.1:3/healthz" }]
            "#,
        )
    }

    /// A client located in Paris: eu is its nearest region.
    fn paris() -> Located {
        Located::Point {
            at: Coordinates {
                lat: 48.86,
                lon: 2.35,
            },
            prefix_len: 24,
        }
    }

    fn fail(edge: &Edge) {
        edge.health.record(None, 1, 1);
    }

    #[test]
    fn a_region_without_healthy_edges_sends_its_clients_to_the_next_nearest() {
        let r = regions();
        let paris = paris();
        assert_eq!(r.choose(Some(&paris), 0), Some(0));
        for edge in &r.regions[0].edges {
            fail(edge);
        }
        assert_eq!(r.choose(Some(&paris), 0), Some(1));
        assert_eq!(r.serving(0), Some(1));
        fail(&r.regions[1].edges[0]);
        assert_eq!(r.choose(Some(&paris), 0), None);
    }

    #[test]
    fn degraded_regions_are_a_last_resort_and_answer_their_ready_edges_first() {
        let r = regions();
        let paris = paris();
        let degraded = Some(crate::health::Probed {
            load: 0,
            degraded: true,
        });
        // One edge of eu degraded: eu is still ready, and answers its ready edge only.
        r.regions[0].edges[0].health.record(degraded, 1, 1);
        assert_eq!(r.choose(Some(&paris), 0), Some(0));
        for _ in 0..4 {
            assert_eq!(
                r.regions[0].addresses(false, 4),
                vec!["192.0.2.2".parse::<IpAddr>().unwrap()]
            );
        }
        // Both degraded: the farther ready region wins.
        r.regions[0].edges[1].health.record(degraded, 1, 1);
        assert_eq!(r.choose(Some(&paris), 0), Some(1));
        assert_eq!(r.serving(0), Some(1));
        // Every region degraded: the nearest again, with all its edges.
        r.regions[1].edges[0].health.record(degraded, 1, 1);
        assert_eq!(r.choose(Some(&paris), 0), Some(0));
        assert_eq!(r.serving(0), Some(0));
        assert_eq!(r.regions[0].addresses(false, 4).len(), 2);
    }

    #[test]
    fn rankings_are_not_shared_between_configs() {
        let paris = paris();
        let before = regions();
        assert_eq!(before.choose(Some(&paris), 0), Some(0), "eu is nearer");
        // The reloaded config moves "eu" across the Pacific: the same point must be ranked
        // afresh, not answered from the first config's ranking.
        let after = regions_of(
            "eu",
            r#"
            [[region]]
            name = "eu"
            lat = 35.68
            lon = 139.69
            edge = [{ address = "192.0.2.1", probe = "http://127.0.0.1:1/healthz" }]
            [[region]]
            name = "us"
            lat = 39.04
            lon = -77.49
            edge = [{ address = "198.51.100.1", probe = "http://127.0.0.1:3/healthz" }]
            "#,
        );
        for _ in 0..2 {
            assert_eq!(after.choose(Some(&paris), 0), Some(1), "us is nearer now");
            assert_eq!(before.choose(Some(&paris), 0), Some(0));
        }
    }

    #[test]
    fn answers_rotate_by_weight_and_skip_failed_edges() {
        let r = regions();
        let eu = &r.regions[0];
        let firsts: Vec<IpAddr> = (0..3).map(|_| eu.addresses(false, 1)[0]).collect();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            firsts.iter().filter(|a| **a == one).count(),
            2,
            "{firsts:?}"
        );
        fail(&eu.edges[0]);
        for _ in 0..3 {
            assert_eq!(
                eu.addresses(false, 4),
                vec!["192.0.2.2".parse::<IpAddr>().unwrap()]
            );
        }
        assert!(eu.addresses(true, 4).is_empty(), "no IPv6 edges");
    }

    #[test]
    fn a_ranking_cut_short_decides_as_the_whole_one_or_says_it_cannot() {
        let r = regions();
        let whole: Vec<u8> = vec![0, 1];
        let loaded = crate::health::Probed {
            load: 150,
            degraded: false,
        };
        let mut seen = Vec::new();
        // eu fine; eu over capacity (spills half); eu down.
        for step in 0..3 {
            if step == 1 {
                r.regions[0].edges[0].health.record(Some(loaded), 1, 1);
            }
            if step == 2 {
                for edge in &r.regions[0].edges {
                    fail(edge);
                }
            }
            let health = r.health();
            let decided = r.decide(&whole, true, &health).expect("whole ranking");
            match r.decide(&whole[..1], false, &health) {
                Ok(short) => assert_eq!(short, decided, "step {step}"),
                Err(NeedsWholeRanking) => assert!(step > 0, "eu alone decides while fine"),
            }
            seen.push(decided);
        }
        assert_eq!(
            seen,
            [
                Some(Choice::Region(0)),
                Some(Choice::Spill(vec![(0, 0.5), (1, 0.0)].into())),
                Some(Choice::Region(1)),
            ]
        );
    }

    #[test]
    fn an_overloaded_region_spills_its_share_of_clients() {
        let r = regions();
        let loaded = crate::health::Probed {
            load: 150,
            degraded: false,
        };
        r.regions[0].edges[0].health.record(Some(loaded), 1, 1);
        let hashes = 0..1000u64;
        let spilled = hashes
            .map(|h| r.choose(None, h * 10))
            .filter(|c| *c == Some(1))
            .count();
        assert_eq!(spilled, 500, "spill = 0.5 of the clients");
    }
}
