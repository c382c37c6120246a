//! The answer for every client address under one health state, and how far it holds.
//!
//! Built from the [`Cells`] whenever the regions' health changes: each cell gets its
//! [`Choice`] ([`Regions::decide`] over the cell's ranking), and neighbouring runs with
//! the same choice join. A query is then one lookup, whatever the number of regions:
//! the run that holds the client's address gives the region, and the run's bounds give
//! the ECS scope (RFC 7871), the largest network around the address that lies inside the
//! run. So the scope covers every neighbouring database network that gets the same
//! answer, as gdnsd merges its database's networks by answer, and never an address
//! answered otherwise: every address of the scope's network is in the run. RFC 7871 lets
//! a scope be wider or narrower than the query's source prefix; this one is whatever the
//! answer holds for around the address the query gave.
//!
//! Invariants: built from one [`RegionHealth`], kept with it ([`AnswerMap::health`]), so
//! every answer of a map comes from the same moment; a choice that depends on the client's
//! network hash ([`Choice::Spill`]) is never scoped wider than the network that hash
//! reads ([`HASHED_PREFIX`]).

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::cells::{Cells, Entry, Runs, Target};
use crate::geo::{AddrBits, embedded};
use crate::steering::{Choice, HASHED_PREFIX, RegionHealth, Regions};

/// Where a client goes, and the ECS scope of that answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steered {
    /// The region, `None` when no region is healthy.
    pub region: Option<usize>,
    /// The prefix length of the network around the client's address that gets the same
    /// answer, in the client address's family.
    pub scope: u8,
}

/// See the module docs.
#[derive(Debug)]
pub struct AnswerMap {
    health: RegionHealth,
    /// By index from the runs' entries.
    choices: Vec<Option<Choice>>,
    v4: Lookup<u32>,
    v6: Lookup<u128>,
}

/// The runs of one family and where to start looking for an address: for each value of
/// an address's first `bits` bits, the first run that starts there or later. A lookup
/// searches only the runs of its address's slice.
struct Lookup<A> {
    runs: Runs<A>,
    first: Vec<u32>,
    bits: u8,
}

impl<A> std::fmt::Debug for Lookup<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.runs.fmt(f)
    }
}

impl<A: AddrBits> Lookup<A> {
    fn new(runs: Runs<A>, bits: u8) -> Self {
        let slots = 1usize << bits;
        let mut first = Vec::with_capacity(slots + 1);
        for (i, start) in runs.starts.iter().enumerate() {
            let slot = start.top(bits);
            // Runs are few enough that an index fits u32 (see `Entry`).
            first.resize(first.len().max(slot + 1), i as u32);
        }
        first.resize(slots + 1, runs.len() as u32);
        Self { runs, first, bits }
    }

    /// The run holding `addr`: its entry, and the prefix length of the largest network
    /// around `addr` inside it.
    fn find(&self, addr: A) -> (Entry, u8) {
        let i = self.run(addr);
        let starts = &self.runs.starts;
        // Not into the run before (ending at start - 1), nor the one after.
        let before = starts[i]
            .pred()
            .map_or(0, |end| addr.common_prefix_len(end) + 1);
        let after = starts
            .get(i + 1)
            .map_or(0, |next| addr.common_prefix_len(*next) + 1);
        (self.runs.entries[i], before.max(after))
    }

    fn run(&self, addr: A) -> usize {
        let slot = addr.top(self.bits);
        let (lo, hi) = (self.first[slot] as usize, self.first[slot + 1] as usize);
        // Runs start at 0, so some run starts at or before `addr`: the last one here, or
        // else the last one before this slice (`lo - 1`).
        lo + self.runs.starts[lo..hi].partition_point(|start| *start <= addr) - 1
    }
}

/// `runs` of cells as runs of choices (`by_cell`: each cell's), neighbours with the same
/// choice joined.
fn join<A: AddrBits>(runs: &Runs<A>, by_cell: &[Entry]) -> Runs<A> {
    let mut joined = Runs::default();
    for (start, entry) in runs.starts.iter().zip(&runs.entries) {
        joined.push(
            *start,
            match entry.target() {
                Target::Index(cell) => by_cell[cell],
                Target::Ipv4At(_) => *entry,
            },
        );
    }
    joined
}

/// How many leading address bits pick the slice of runs a lookup searches: a 256 KiB
/// table for IPv4 and a 4 MiB one for IPv6 (whose runs crowd into `2000::/3`).
const SLICE_BITS: (u8, u8) = (16, 20);

impl AnswerMap {
    /// Each cell's choice under `health`, and the runs joined by choice. Once per health
    /// change: tens of milliseconds for a City database's millions of runs.
    pub fn new(cells: &Cells, regions: &Regions, health: RegionHealth) -> Self {
        let mut choices: Vec<Option<Choice>> = Vec::new();
        let mut ids: FxHashMap<Vec<(u8, u64)>, usize> = FxHashMap::default();
        let mut id_of = |choice: Option<Choice>| -> usize {
            let key: Vec<(u8, u64)> = match &choice {
                None => Vec::new(),
                Some(Choice::Region(r)) => vec![(*r, 0)],
                Some(Choice::Spill(chain)) => chain
                    .iter()
                    .map(|(r, s)| (*r, s.to_bits() | 1 << 63))
                    .collect(),
            };
            *ids.entry(key).or_insert_with(|| {
                choices.push(choice);
                choices.len() - 1
            })
        };
        let by_cell: Vec<Entry> = (0..cells.len())
            .map(|cell| {
                let (nearest, whole) = cells.nearest(cell);
                let choice = regions
                    .decide(nearest, whole, &health)
                    .or_else(|_| regions.decide(&cells.ranking(cell, regions), true, &health))
                    .unwrap_or(None);
                Entry::index(id_of(choice))
            })
            .collect();
        let v4 = Lookup::new(join(&cells.v4, &by_cell), SLICE_BITS.0);
        let v6 = Lookup::new(join(&cells.v6, &by_cell), SLICE_BITS.1);
        Self {
            health,
            choices,
            v4,
            v6,
        }
    }

    /// The health this map's answers were decided from.
    pub fn health(&self) -> &RegionHealth {
        &self.health
    }

    /// How many runs of one answer each family has: (IPv4, IPv6).
    pub fn runs(&self) -> (usize, usize) {
        (self.v4.runs.len(), self.v6.runs.len())
    }

    /// Where client `ip` goes (spilling by `client_hash`, [`crate::steering::network_hash`]
    /// of `ip`), and the ECS scope of that answer.
    pub fn steer(&self, ip: IpAddr, client_hash: u64) -> Steered {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let (entry, scope) = self.v4.find(u32::from(v4));
                self.answer(entry, scope, client_hash, HASHED_PREFIX.0)
            }
            IpAddr::V6(v6) => {
                let v6 = u128::from(v6);
                let (entry, scope) = self.v6.find(v6);
                match entry.target() {
                    Target::Ipv4At(bit) => {
                        let (entry, v4_scope) = self.v4.find(embedded(v6, bit));
                        let scope = scope.max(bit + v4_scope);
                        self.answer(entry, scope, client_hash, HASHED_PREFIX.1)
                    }
                    Target::Index(_) => self.answer(entry, scope, client_hash, HASHED_PREFIX.1),
                }
            }
        }
    }

    fn answer(&self, entry: Entry, scope: u8, client_hash: u64, hashed: u8) -> Steered {
        let choice = match entry.target() {
            Target::Index(id) => self.choices[id].as_ref(),
            // The IPv4 runs hold choices only.
            Target::Ipv4At(_) => None,
        };
        match choice {
            None => Steered {
                region: None,
                scope,
            },
            Some(choice) => Steered {
                region: Some(choice.region(client_hash)),
                scope: if choice.by_client() {
                    scope.max(hashed)
                } else {
                    scope
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::IpNet;

    use super::*;
    use crate::geo::{CidrOverrides, Coordinates, GeoLocator, Locator, MmdbLocator};
    use crate::health::Probed;
    use crate::steering::network_hash;
    use crate::steering::tests::regions_of;
    use crate::testing::mmdb_bytes;

    const PARIS: Coordinates = Coordinates::new(48.86, 2.35);
    const BERLIN: Coordinates = Coordinates::new(52.52, 13.40);
    const NEW_YORK: Coordinates = Coordinates::new(40.71, -74.01);
    const TOKYO: Coordinates = Coordinates::new(35.68, 139.69);
    const CITIES: [Coordinates; 8] = [
        PARIS,
        BERLIN,
        NEW_YORK,
        TOKYO,
        Coordinates::new(-33.87, 151.21), // Sydney
        Coordinates::new(-23.55, -46.63), // Sao Paulo
        Coordinates::new(34.05, -118.24), // Los Angeles
        Coordinates::new(1.35, 103.82),   // Singapore
    ];

    /// eu (capacity 100, spills half), us, ap, sa; clients nowhere known go to eu.
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
            edge = [{ address = "192.0.2.1", probe = "http://127.0.0.1:1/healthz" }]
            [[region]]
            name = "us"
            lat = 39.04
            lon = -77.49
            edge = [{ address = "192.0.2.2", probe = "http://127.0.0.1:2/healthz" }]
            [[region]]
            name = "ap"
            lat = 35.68
            lon = 139.69
            edge = [{ address = "192.0.2.3", probe = "http://127.0.0.1:3/healthz" }]
            [[region]]
            name = "sa"
            lat = -23.55
            lon = -46.63
            edge = [{ address = "192.0.2.4", probe = "http://127.0.0.1:4/healthz" }]
            "#,
        )
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn locator(networks: &[(IpNet, Coordinates)], overrides: &[(&str, &str)]) -> Locator {
        let db = MmdbLocator::from_bytes(mmdb_bytes(networks).unwrap()).unwrap();
        let overrides = CidrOverrides::new(overrides.iter().map(|&(n, r)| (net(n), r))).unwrap();
        Locator::new(overrides, Some(db))
    }

    fn map(locator: &Locator, regions: &Regions) -> AnswerMap {
        AnswerMap::new(&Cells::new(locator, regions), regions, regions.health())
    }

    /// Where `ip` goes by the definition: located now, the regions chosen now.
    fn oracle(locator: &Locator, regions: &Regions, ip: IpAddr) -> Option<usize> {
        let ip = ip.to_canonical();
        regions.choose(locator.locate(ip).as_ref(), network_hash(ip))
    }

    fn steer(map: &AnswerMap, ip: IpAddr) -> Steered {
        let ip = ip.to_canonical();
        map.steer(ip, network_hash(ip))
    }

    #[test]
    fn scopes_join_the_networks_with_the_same_answer() {
        let regions = regions();
        let locator = locator(
            &[
                (net("10.0.0.0/24"), PARIS),
                (net("10.0.1.0/24"), BERLIN),
                (net("10.0.2.0/24"), NEW_YORK),
                (net("2001:db8:1::/48"), TOKYO),
                (net("2001:db8:2::/48"), PARIS),
                (net("2001:db8:3::/48"), BERLIN),
            ],
            &[("10.0.2.128/25", "eu")],
        );
        let map = map(&locator, &regions);
        let (eu, us, ap) = (Some(0), Some(1), Some(2));
        for (client, region, scope) in [
            // Paris and Berlin both go to eu, and so do the unknown networks below them
            // (the default region): one answer up to New York's network.
            ("10.0.0.0", eu, 23),
            ("10.0.1.77", eu, 23),
            ("9.1.2.3", eu, 7),
            // New York's /24 less the override pinning its upper half to eu.
            ("10.0.2.0", us, 25),
            ("10.0.2.200", eu, 25),
            ("10.0.3.0", eu, 24),
            ("10.0.4.0", eu, 22),
            ("2001:db8:1::", ap, 48),
            ("2001:db8:2::", eu, 47),
            ("2001:db8:3:4::", eu, 47),
            // An IPv4-mapped address is its IPv4 address; a 6to4 one carries it from bit 16.
            ("::ffff:10.0.2.9", us, 25),
            ("2002:a00:209::", us, 16 + 25),
            ("2002:a00:109::", eu, 16 + 23),
        ] {
            assert_eq!(
                steer(&map, ip(client)),
                Steered { region, scope },
                "{client}"
            );
        }
    }

    /// splitmix64, for addresses drawn the same way every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A database of nested networks at eight cities (so neighbours often share a region)
    /// in `10.0.0.0/8` and `2001:db8::/32`, with overrides at every depth, one of them in
    /// 6to4 space.
    fn random_world(rng: &mut Rng) -> Locator {
        let mut networks = Vec::new();
        for _ in 0..400 {
            let prefix = 12 + rng.below(17) as u8;
            let at = Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff));
            let network = ipnet::Ipv4Net::new(at, prefix).unwrap().trunc();
            networks.push((IpNet::V4(network), CITIES[rng.below(8) as usize]));
        }
        for _ in 0..150 {
            let prefix = 36 + rng.below(29) as u8;
            let bits = (0x2001_0db8_u128 << 96) | (u128::from(rng.next()) << 32);
            let network = ipnet::Ipv6Net::new(Ipv6Addr::from(bits), prefix)
                .unwrap()
                .trunc();
            networks.push((IpNet::V6(network), CITIES[rng.below(8) as usize]));
        }
        locator(
            &networks,
            &[
                ("10.3.0.0/16", "ap"),
                ("10.3.4.0/24", "us"),
                ("10.200.0.0/13", "sa"),
                ("2001:db8:4000::/36", "sa"),
                ("2002:a80::/25", "ap"),
            ],
        )
    }

    /// A client address: mostly inside the test networks, in every IPv6 form that
    /// carries an IPv4 address, and anywhere.
    fn random_client(rng: &mut Rng) -> IpAddr {
        let v4 = 0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff);
        let low = u128::from(rng.next());
        match rng.below(10) {
            0..=3 => IpAddr::V4(v4.into()),
            4 => IpAddr::V4((rng.next() as u32).into()),
            5 => IpAddr::V6(((0x2001_0db8_u128 << 96) | (low << 32)).into()),
            6 => IpAddr::V6(((0x2002_u128 << 112) | (u128::from(v4) << 80) | low).into()),
            7 => IpAddr::V6(Ipv4Addr::from(v4).to_ipv6_mapped()),
            8 => match rng.below(3) {
                0 => IpAddr::V6(u128::from(v4).into()),
                1 => IpAddr::V6(((0x2001_u128 << 112) | (u128::from(v4) << 64) | low).into()),
                _ => IpAddr::V6(((0x2002_0a80_u128 << 96) | (low << 32)).into()),
            },
            _ => IpAddr::V6(((u128::from(rng.next()) << 64) | low).into()),
        }
    }

    /// The first and last address of `ip`'s network of prefix length `scope`, and
    /// `more` others inside it.
    fn inside(ip: IpAddr, scope: u8, more: usize, rng: &mut Rng) -> Vec<IpAddr> {
        match ip {
            IpAddr::V4(v4) => {
                let host = u32::MAX.checked_shr(u32::from(scope)).unwrap_or(0);
                let first = u32::from(v4) & !host;
                let mut out = vec![first, first | host];
                out.extend((0..more).map(|_| first | (rng.next() as u32 & host)));
                out.into_iter().map(|a| IpAddr::V4(a.into())).collect()
            }
            IpAddr::V6(v6) => {
                let host = u128::MAX.checked_shr(u32::from(scope)).unwrap_or(0);
                let first = u128::from(v6) & !host;
                let mut out = vec![first, first | host];
                out.extend((0..more).map(|_| {
                    first | (((u128::from(rng.next()) << 64) | u128::from(rng.next())) & host)
                }));
                out.into_iter().map(|a| IpAddr::V6(a.into())).collect()
            }
        }
    }

    /// The issue's test: for many addresses, every address of the scope returned (its
    /// first, its last and some between) gets the same answer by the definition (located
    /// now, chosen now), and so does the address itself. Under every kind of health:
    /// all well, a region down, a region over capacity (answers by client network), all
    /// but one region down.
    #[test]
    fn every_address_of_a_scope_gets_the_answer_it_came_with() {
        let mut rng = Rng(24);
        let regions = regions();
        let locator = random_world(&mut rng);
        let cells = Cells::new(&locator, &regions);
        let fail = |r: usize| {
            for edge in &regions.regions[r].edges {
                edge.health.record(None, 1, 1);
            }
        };
        let load = |r: usize, load: u64| {
            let probed = Probed {
                load,
                degraded: false,
            };
            regions.regions[r].edges[0]
                .health
                .record(Some(probed), 1, 1);
        };
        let mut checked = 0;
        let mut by_client = 0;
        for health in ["well", "eu over capacity", "us down", "only sa"] {
            match health {
                "eu over capacity" => load(0, 500),
                "us down" => {
                    load(0, 0);
                    fail(1);
                }
                "only sa" => [0, 2].into_iter().for_each(fail),
                _ => {}
            }
            let map = AnswerMap::new(&cells, &regions, regions.health());
            for _ in 0..3000 {
                let client = random_client(&mut rng).to_canonical();
                let steered = steer(&map, client);
                assert_eq!(
                    steered.region,
                    oracle(&locator, &regions, client),
                    "{health}: {client}"
                );
                for probe in inside(client, steered.scope, 6, &mut rng) {
                    assert_eq!(
                        oracle(&locator, &regions, probe),
                        steered.region,
                        "{health}: {probe} in the scope /{} of {client}",
                        steered.scope
                    );
                    checked += 1;
                }
                let hashed = if client.is_ipv4() { 24 } else { 56 };
                by_client += usize::from(health == "eu over capacity" && steered.scope == hashed);
            }
        }
        assert_eq!(checked, 4 * 3000 * 8);
        assert!(
            by_client > 100,
            "spilled answers scoped to the hashed network: {by_client}"
        );
    }

    /// The other half of the contract: a scope is as wide as the answer allows. One bit
    /// wider, and the network holds an address answered otherwise (by the definition).
    #[test]
    fn scopes_are_as_wide_as_the_answer_allows() {
        let mut rng = Rng(7);
        let regions = regions();
        let locator = random_world(&mut rng);
        let map = map(&locator, &regions);
        let mut widened = 0;
        for _ in 0..3000 {
            let client = IpAddr::V4((0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff)).into());
            let steered = steer(&map, client);
            let IpAddr::V4(v4) = client else {
                unreachable!()
            };
            let i = map.v4.run(u32::from(v4));
            let (start, next) = (map.v4.runs.starts[i], map.v4.runs.starts.get(i + 1));
            let wider = inside(client, steered.scope - 1, 0, &mut rng);
            let (lo, hi) = (
                u32::from_be_bytes(octets(wider[0])),
                u32::from_be_bytes(octets(wider[1])),
            );
            let mut outside = Vec::new();
            if start > lo {
                outside.push(start - 1);
            }
            if let Some(next) = next.filter(|n| **n <= hi) {
                outside.push(*next);
            }
            assert!(
                !outside.is_empty(),
                "{client}: /{} is not the widest",
                steered.scope
            );
            for other in outside {
                let other = IpAddr::V4(other.into());
                assert_ne!(
                    oracle(&locator, &regions, other),
                    steered.region,
                    "{client} vs {other}"
                );
            }
            widened += usize::from(steered.scope < 24);
        }
        assert!(widened > 1000, "most scopes join networks: {widened}");
    }

    fn octets(ip: IpAddr) -> [u8; 4] {
        match ip {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => unreachable!("IPv4 only"),
        }
    }

    #[test]
    fn without_a_healthy_region_there_is_no_answer_and_the_scope_still_holds() {
        let regions = regions();
        let locator = locator(&[(net("10.0.0.0/24"), PARIS)], &[]);
        for region in &regions.regions {
            region.edges[0].health.record(None, 1, 1);
        }
        let map = map(&locator, &regions);
        assert_eq!(
            steer(&map, ip("10.0.0.1")),
            Steered {
                region: None,
                scope: 0
            }
        );
    }
}
