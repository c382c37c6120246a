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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

use crate::config::{MAX_REGIONS, RegionConfig};
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
    /// Every region's index, nearest to this one first (this one included).
    by_distance: Vec<usize>,
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
    /// Tells these regions' entries in [`RANKINGS`] from those of an earlier config.
    generation: u64,
}

/// How many rankings each thread keeps (see [`RANKINGS`]).
const RANKINGS_PER_THREAD: usize = 1 << 16;

/// Regions nearest first (indexes into [`Regions::regions`]) by (regions generation,
/// latitude bits, longitude bits).
type RankingCache = FxHashMap<(u64, u64, u64), Box<[u8]>>;

thread_local! {
    /// Regions nearest first, by (regions generation, latitude bits, longitude bits). A
    /// database places its clients at a limited set of points (cities), and ranking one
    /// point against every region (a great-circle distance each) cost as much as the rest
    /// of a steered answer (BENCHMARKS.md). Per thread, so the lookup takes no lock;
    /// cleared when full.
    static RANKINGS: std::cell::RefCell<RankingCache> =
        std::cell::RefCell::new(FxHashMap::default());
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
                    by_distance: rank_regions(at, &points),
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
        static GENERATIONS: AtomicU64 = AtomicU64::new(0);
        Self {
            regions,
            by_name,
            default,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
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
    /// hashes to `client_hash` (for spillover). `None` when no region is healthy.
    pub fn choose(&self, located: Option<&Located>, client_hash: u64) -> Option<usize> {
        match located {
            Some(Located::Point { at, .. }) => self.choose_from_point(*at, client_hash),
            Some(Located::Region { name, .. }) => {
                let start = self.index(name).unwrap_or(self.default);
                let ranked = self.regions[start].by_distance.iter().copied();
                self.first_healthy(ranked, client_hash)
            }
            None => {
                let ranked = self.regions[self.default].by_distance.iter().copied();
                self.first_healthy(ranked, client_hash)
            }
        }
    }

    /// [`Regions::choose`] for a client at `at`, ranking the regions from `at` once per
    /// thread (see [`RANKINGS`]).
    fn choose_from_point(&self, at: Coordinates, client_hash: u64) -> Option<usize> {
        let key = (self.generation, at.lat.to_bits(), at.lon.to_bits());
        RANKINGS.with_borrow_mut(|rankings| {
            if let Some(ranked) = rankings.get(&key) {
                return self.first_healthy(ranked.iter().map(|&i| usize::from(i)), client_hash);
            }
            if rankings.len() >= RANKINGS_PER_THREAD {
                rankings.clear();
            }
            // At most `MAX_REGIONS` (128) regions: each index fits a byte.
            let ranked: Box<[u8]> = self
                .by_distance_from(at)
                .filter_map(|i| u8::try_from(i).ok())
                .collect();
            let chosen = self.first_healthy(ranked.iter().map(|&i| usize::from(i)), client_hash);
            rankings.insert(key, ranked);
            chosen
        })
    }

    /// The regions in the order `rank_regions` gives from `at` (distance, then name),
    /// produced one at a time without building the ranking: this runs for every query and
    /// the first healthy region is usually the first.
    fn by_distance_from(&self, at: Coordinates) -> impl Iterator<Item = usize> + '_ {
        let mut taken: u128 = 0;
        std::iter::from_fn(move || {
            let mut best: Option<(f64, usize)> = None;
            for (i, region) in self.regions.iter().enumerate().take(MAX_REGIONS) {
                if taken & (1 << i) != 0 {
                    continue;
                }
                let d = at.distance_km(region.at);
                let closer = match best {
                    None => true,
                    Some((bd, bi)) => d < bd || (d == bd && region.name < self.regions[bi].name),
                };
                if closer {
                    best = Some((d, i));
                }
            }
            let (_, i) = best?;
            taken |= 1 << i;
            Some(i)
        })
    }

    /// The region answering for region `r`'s own name: itself while ready, else its
    /// nearest ready neighbour, else the nearest healthy one.
    pub fn serving(&self, r: usize) -> Option<usize> {
        let ranked = &self.regions[r].by_distance;
        let mut healthy = None;
        for &i in ranked {
            if self.regions[i].is_ready() {
                return Some(i);
            }
            if self.regions[i].is_healthy() {
                healthy.get_or_insert(i);
            }
        }
        healthy
    }

    /// The first ready region of `ranked` (spilling as configured), else the first
    /// healthy one.
    fn first_healthy(
        &self,
        ranked: impl Iterator<Item = usize> + Clone,
        client_hash: u64,
    ) -> Option<usize> {
        self.first_where(ranked.clone(), client_hash, Region::is_ready)
            .or_else(|| self.first_where(ranked, client_hash, Region::is_healthy))
    }

    fn first_where(
        &self,
        ranked: impl Iterator<Item = usize>,
        client_hash: u64,
        usable: fn(&Region) -> bool,
    ) -> Option<usize> {
        let share = (client_hash % 10_000) as f64 / 10_000.0;
        let mut fallback = None;
        for i in ranked {
            let region = &self.regions[i];
            if !usable(region) {
                continue;
            }
            if region.over_capacity() && share < region.spill {
                fallback.get_or_insert(i);
                continue;
            }
            return Some(i);
        }
        fallback
    }
}

/// The key under which an edge's health survives a reload.
pub fn edge_key(region: &str, address: IpAddr, probe: &str) -> String {
    format!("{}|{address}|{probe}", region.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Regions {
        let text = r#"
            [zone]
            name = "cdn.test"
            nameservers = [{ name = "ns1.cdn.test", addresses = ["192.0.2.53"] }]
            [geo]
            default_region = "eu"
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
        "#;
        let config = crate::config::GeoDnsConfig::from_toml(text).expect("valid");
        Regions::new(&config.regions, "eu", &HashMap::new())
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
        let text = r#"
            [zone]
            name = "cdn.test"
            nameservers = [{ name = "ns1.cdn.test", addresses = ["192.0.2.53"] }]
            [geo]
            default_region = "eu"
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
        "#;
        let config = crate::config::GeoDnsConfig::from_toml(text).expect("valid");
        let after = Regions::new(&config.regions, "eu", &HashMap::new());
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
    fn choosing_without_a_ranking_agrees_with_rank_regions() {
        let r = regions();
        let points: Vec<(&str, Coordinates)> =
            r.regions.iter().map(|g| (g.name.as_str(), g.at)).collect();
        for lat in (-80..=80).step_by(20) {
            for lon in (-170..=170).step_by(20) {
                let at = Coordinates {
                    lat: f64::from(lat),
                    lon: f64::from(lon),
                };
                let located = Located::Point { at, prefix_len: 24 };
                assert_eq!(
                    r.choose(Some(&located), 0),
                    Some(rank_regions(at, &points)[0]),
                    "{at:?}"
                );
            }
        }
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
