//! Location cells: the whole client address space, as the [`Locator`] places it, cut
//! into runs placed alike; each run's place is a cell (a point on the map, or a region:
//! pinned by an override, or the default one for clients nowhere known), and each cell
//! knows its nearest regions. Built once per config.
//!
//! Why: ranking the regions from a client's point (a great-circle distance per region)
//! on every query made an answer cost more with every region (issue 24: with 200,000
//! client subnets, 64 regions answered at 0.71x the queries per core of 4), and a cache
//! of rankings per point only helps while few points are asked. A City database places
//! clients at a bounded set of points (DB-IP City Lite 2023-04: 488,000 over 11.6
//! million networks), so every cell's ranking is computed here, once; [`crate::answer_map`]
//! turns the cells into answers whenever the regions' health changes, and a query only
//! looks its address up.
//!
//! Invariants: the runs of each family cover the family's whole space from address 0,
//! in order, and two neighbouring runs differ; a run's addresses are placed alike by
//! the locator (so they rank the regions alike); IPv6 runs that carry IPv4 addresses
//! are marked so, not repeated (see [`crate::geo::EMBEDDED_IPV4`]).

use rustc_hash::FxHashMap;

use crate::geo::{AddrBits, Coordinates, Locator, Placement, rank_regions};
use crate::steering::Regions;

/// How many of its nearest regions each cell keeps. Enough that the first usable region
/// is among them unless that many nearest regions are down or spilling at once; past
/// them the ranking is computed again for that cell ([`Cells::ranking`]).
pub const NEAREST: usize = 16;

/// What a run of addresses is, in four bytes: an index (of a cell in [`Cells`], of a
/// choice in [`crate::answer_map::AnswerMap`]) or, in IPv6, "the IPv4 address carried
/// from bit `n` on". Four bytes because there are millions of runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Entry(u32);

/// [`Entry`] read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Index(usize),
    Ipv4At(u8),
}

impl Entry {
    const IPV4: u32 = 1 << 31;

    /// The entry of index `i` (below 2^31: cells and choices are far fewer).
    pub fn index(i: usize) -> Self {
        let i = u32::try_from(i).expect("fewer than 2^31 cells and choices");
        assert!(i < Self::IPV4, "fewer than 2^31 cells and choices");
        Self(i)
    }

    /// The entry of the IPv4 address carried from bit `bit` on.
    pub fn ipv4_at(bit: u8) -> Self {
        Self(Self::IPV4 | u32::from(bit))
    }

    pub fn target(self) -> Target {
        if self.0 & Self::IPV4 == 0 {
            Target::Index(self.0 as usize)
        } else {
            // The low byte holds the bit: the cast keeps exactly it.
            Target::Ipv4At(self.0 as u8)
        }
    }
}

/// One family's address space as runs: run `i` holds the addresses from `starts[i]` up
/// to the next start (or the end of the space), and `entries[i]` says what they are.
/// `starts[0]` is 0.
#[derive(Clone)]
pub(crate) struct Runs<A> {
    pub(crate) starts: Vec<A>,
    pub(crate) entries: Vec<Entry>,
}

impl<A> std::fmt::Debug for Runs<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Millions of runs: their number, not their list.
        write!(f, "Runs({})", self.starts.len())
    }
}

impl<A> Default for Runs<A> {
    fn default() -> Self {
        Self {
            starts: Vec::new(),
            entries: Vec::new(),
        }
    }
}

impl<A: AddrBits> Runs<A> {
    /// Adds a network starting at `start` (after every one before it), joining it to
    /// the last run when they are the same.
    pub fn push(&mut self, start: A, entry: Entry) {
        if self.entries.last() != Some(&entry) {
            self.starts.push(start);
            self.entries.push(entry);
        }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }
}

/// Where a cell is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Place {
    /// A point from the database.
    Point(Coordinates),
    /// A region's own place: pinned there by an override, or the default region's for
    /// clients nowhere known. Ranked as that region ranks its neighbours.
    Region(usize),
}

/// The cells of one config: see the module docs.
pub struct Cells {
    pub(crate) v4: Runs<u32>,
    pub(crate) v6: Runs<u128>,
    places: Vec<Place>,
    /// The first `stride` regions of each cell's ranking, nearest first.
    nearest: Vec<u8>,
    stride: usize,
    /// Whether `stride` is every region: each cell's whole ranking is in `nearest`.
    whole: bool,
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells")
            .field("cells", &self.places.len())
            .field("v4", &self.v4)
            .field("v6", &self.v6)
            .finish_non_exhaustive()
    }
}

impl Cells {
    /// Walks the whole address space through `locator` and ranks the regions for each
    /// place found. Takes seconds for a City database of millions of networks (one tree walk
    /// per network; each record decoded once), microseconds without one.
    pub fn new(locator: &Locator, regions: &Regions) -> Self {
        let mut interned: FxHashMap<(u64, u64, usize), usize> = FxHashMap::default();
        let mut places = Vec::new();
        let mut cell = |placement: &Placement| -> Entry {
            let place = match placement {
                Placement::Point(at) => Place::Point(*at),
                Placement::Pinned(name) => {
                    Place::Region(regions.index(name).unwrap_or(regions.default_region()))
                }
                // `Ipv4At` cannot come from IPv4: unknown if it did.
                Placement::Unknown | Placement::Ipv4At { .. } => {
                    Place::Region(regions.default_region())
                }
            };
            let key = match place {
                Place::Point(at) => (at.lat.to_bits(), at.lon.to_bits(), usize::MAX),
                Place::Region(r) => (0, 0, r),
            };
            let i = *interned.entry(key).or_insert_with(|| {
                places.push(place);
                places.len() - 1
            });
            Entry::index(i)
        };
        let mut v4 = Runs::default();
        for (start, _, placement) in locator.networks_v4() {
            v4.push(start, cell(&placement));
        }
        let mut v6 = Runs::default();
        for (start, _, placement) in locator.networks_v6() {
            let entry = match placement {
                Placement::Ipv4At { bit } => Entry::ipv4_at(bit),
                other => cell(&other),
            };
            v6.push(start, entry);
        }
        let stride = NEAREST.min(regions.regions.len());
        let ranker = Ranker::new(regions);
        let mut nearest = Vec::with_capacity(places.len() * stride);
        for place in &places {
            match *place {
                Place::Point(at) => nearest.extend(ranker.nearest(at, stride)),
                Place::Region(r) => nearest.extend_from_slice(&regions.by_distance(r)[..stride]),
            }
        }
        Self {
            v4,
            v6,
            places,
            nearest,
            stride,
            whole: stride == regions.regions.len(),
        }
    }

    /// How many cells there are.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Cell `cell`'s nearest regions, nearest first: all of them (`true`), or the first
    /// [`NEAREST`] (`false`; [`Cells::ranking`] has the rest).
    pub fn nearest(&self, cell: usize) -> (&[u8], bool) {
        let nearest = &self.nearest[cell * self.stride..(cell + 1) * self.stride];
        (nearest, self.whole)
    }

    /// Cell `cell`'s whole ranking, computed again: for the rare cell whose first
    /// [`NEAREST`] regions all fail it.
    pub fn ranking(&self, cell: usize, regions: &Regions) -> Vec<u8> {
        match self.places[cell] {
            Place::Point(at) => {
                let points: Vec<(&str, Coordinates)> = regions
                    .regions
                    .iter()
                    .map(|r| (r.name.as_str(), r.at))
                    .collect();
                rank_regions(at, &points)
                    .into_iter()
                    .filter_map(|i| u8::try_from(i).ok())
                    .collect()
            }
            Place::Region(r) => regions.by_distance(r).to_vec(),
        }
    }

    /// Where cell `cell` is.
    pub fn place(&self, cell: usize) -> Place {
        self.places[cell]
    }
}

/// Ranks regions from many points fast: the `n` nearest by exact great-circle distance
/// ([`Coordinates::distance_km`] and the tie-break of [`rank_regions`]) while computing
/// that distance only for a few candidates. The candidates are the regions nearest by
/// the haversine term `a` (distance = 2R asin(sqrt(a)), so the same order), computed
/// from precomputed sines and cosines in a few multiplications; anything within
/// `A_MARGIN` of the `n`-th is a candidate too, far above the rounding of either
/// formula, so no region that belongs among the `n` nearest is left out.
struct Ranker<'a> {
    regions: &'a Regions,
    /// Per region: sin and cos of latitude and longitude.
    trig: Vec<[f64; 4]>,
}

/// See [`Ranker`]: rounding makes `a` wrong by about 1e-16; a difference in `a` of 1e-9
/// is at least 12 m of distance, far above the rounding of distances too.
const A_MARGIN: f64 = 1e-9;

fn trig(at: Coordinates) -> [f64; 4] {
    let (lat, lon) = (at.lat.to_radians(), at.lon.to_radians());
    [lat.sin(), lat.cos(), lon.sin(), lon.cos()]
}

impl<'a> Ranker<'a> {
    fn new(regions: &'a Regions) -> Self {
        Self {
            regions,
            trig: regions.regions.iter().map(|r| trig(r.at)).collect(),
        }
    }

    /// The `n` regions nearest to `at`, nearest first, as [`rank_regions`] orders them.
    fn nearest(&self, at: Coordinates, n: usize) -> Vec<u8> {
        let regions = &self.regions.regions;
        let exact = |i: usize| (at.distance_km(regions[i].at), i);
        let mut candidates: Vec<(f64, usize)> = if n >= regions.len() {
            (0..regions.len()).map(exact).collect()
        } else {
            let [s1, c1, so1, co1] = trig(at);
            let mut a: Vec<(f64, usize)> = self
                .trig
                .iter()
                .enumerate()
                .map(|(i, [s2, c2, so2, co2])| {
                    let cos_lat = c1 * c2;
                    let hav_lat = (1.0 - (cos_lat + s1 * s2)) / 2.0;
                    let hav_lon = (1.0 - (co1 * co2 + so1 * so2)) / 2.0;
                    (hav_lat + cos_lat * hav_lon, i)
                })
                .collect();
            a.select_nth_unstable_by(n - 1, |x, y| x.0.total_cmp(&y.0));
            let bound = a[n - 1].0 + A_MARGIN;
            a.into_iter()
                .filter(|(a, _)| *a <= bound)
                .map(|(_, i)| exact(i))
                .collect()
        };
        candidates.sort_by(|(da, a), (db, b)| {
            da.total_cmp(db)
                .then_with(|| regions[*a].name.cmp(&regions[*b].name))
                .then(a.cmp(b))
        });
        candidates
            .into_iter()
            .take(n)
            // At most `MAX_REGIONS` (256) regions: each index fits a byte.
            .filter_map(|(_, i)| u8::try_from(i).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::geo::{CidrOverrides, GeoLocator};
    use crate::steering::tests::regions_of;

    /// `n` regions spread over the globe, the last few at the very same places as the
    /// first ones (ties broken by name), as a validated config gives them.
    fn regions(n: usize) -> Regions {
        let mut text = String::new();
        for i in 0..n {
            let j = if i >= n - 4 { i - (n - 4) } else { i };
            let lat = -60.0 + 130.0 * ((j * 37) % n) as f64 / n as f64;
            let lon = -180.0 + 360.0 * ((j * 101) % n) as f64 / n as f64;
            text.push_str(&format!(
                "[[region]]\nname = \"r{i:03}\"\nlat = {lat}\nlon = {lon}\n\
                 edge = [{{ address = \"192.0.2.1\", probe = \"http://127.0.0.1:1/\" }}]\n"
            ));
        }
        regions_of("r000", &text)
    }

    #[test]
    fn the_nearest_regions_are_the_first_of_rank_regions() {
        let regions = regions(256);
        let ranker = Ranker::new(&regions);
        let points: Vec<(&str, Coordinates)> = regions
            .regions
            .iter()
            .map(|r| (r.name.as_str(), r.at))
            .collect();
        let mut at: Vec<Coordinates> = regions.regions.iter().map(|r| r.at).collect();
        for i in 0..3000u32 {
            // A lattice over the whole globe, poles and antimeridian included.
            let lat = -90.0 + 180.0 * f64::from(i % 61) / 60.0;
            let lon = -180.0 + 360.0 * f64::from((i * 7919) % 3000) / 3000.0;
            at.push(Coordinates::new(lat, lon));
        }
        for at in at {
            let ranked: Vec<u8> = rank_regions(at, &points)
                .into_iter()
                .take(NEAREST)
                .map(|i| i as u8)
                .collect();
            assert_eq!(ranker.nearest(at, NEAREST), ranked, "{at:?}");
        }
    }

    #[test]
    fn cells_are_shared_by_every_network_placed_at_one_point_or_region() {
        let regions = regions(8);
        let overrides = CidrOverrides::new([
            ("10.0.0.0/8".parse().unwrap(), "r003"),
            ("2001:db8::/32".parse().unwrap(), "r003"),
        ])
        .unwrap();
        let locator = Locator::new(overrides, None);
        let cells = Cells::new(&locator, &regions);
        // The unknown (default region r000) and r003's overrides: two cells.
        assert_eq!(cells.len(), 2);
        // IPv4: unknown, 10/8, unknown. IPv6: unknown and the networks that carry IPv4
        // (`::/96`, `::ffff:0:0/96`, Teredo, 6to4) between the unknown runs, and
        // 2001:db8::/32 inside 2001::/16 beside Teredo.
        assert_eq!(cells.v4.starts, [0, 0x0a00_0000, 0x0b00_0000]);
        let targets: Vec<Target> = cells.v6.entries.iter().map(|e| e.target()).collect();
        let unknown = Target::Index(0);
        let pinned = Target::Index(1);
        assert_eq!(
            targets,
            [
                Target::Ipv4At(96),
                unknown,
                Target::Ipv4At(96),
                unknown,
                Target::Ipv4At(32),
                unknown,
                pinned,
                unknown,
                Target::Ipv4At(16),
                unknown
            ]
        );
        for (start, target) in cells.v6.starts.iter().zip(targets) {
            let ip = IpAddr::V6((*start).into());
            if let Target::Index(cell) = target {
                let expected = if cell == 1 { Some(3) } else { None };
                let located = locator.locate(ip);
                assert_eq!(
                    located.map(|l| match l {
                        crate::geo::Located::Region { name, .. } => regions.index(&name).unwrap(),
                        other => panic!("{other:?}"),
                    }),
                    expected,
                    "{ip}"
                );
            }
        }
        assert_eq!(cells.nearest(0).0, regions.by_distance(0));
        assert_eq!(cells.nearest(1).0, regions.by_distance(3));
        assert!(cells.nearest(1).1, "8 regions: the whole ranking");
    }
}
