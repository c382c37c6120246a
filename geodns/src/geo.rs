//! Where a DNS client is, and which regions are nearest to it.
//!
//! A client address (the EDNS Client Subnet address if the query carries one, else the
//! resolver's own address) is placed with a [`GeoLocator`] as a [`Located`]: a point on
//! the map or a pinned region; regions are ordered by great-circle distance from it with
//! [`rank_regions`], and the client goes to the first healthy one.
//!
//! - [`MmdbLocator`] places an address on the map with a MaxMind-format City database
//!   (GeoLite2-City, GeoIP2-City, DB-IP City Lite, ...).
//! - [`CidrOverrides`] pins networks to a region by name (longest prefix wins), for the
//!   networks an operator knows better than the database: offices, partner resolvers,
//!   test clients.
//! - [`Locator`] is what the server uses: overrides first, then the database; IPv6
//!   addresses that carry an IPv4 address are placed as that address.
//!
//! Every placement carries `prefix_len`, the length of the network around the address
//! that is placed the same way, so the space can be walked network by network
//! ([`Locator::networks_v4`], [`Locator::networks_v6`]). The server does not locate per
//! query: it walks the whole space once per config into [`crate::cells`] and answers
//! from [`crate::answer_map`], whose ECS scopes join the networks that get the same
//! answer. Per-address lookups remain the definition the map is checked against.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Mean Earth radius (IUGG), in kilometres, used by [`Coordinates::distance_km`].
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on Earth in decimal degrees (WGS 84), as MaxMind databases and region
/// configs give it.
///
/// Deserializes from `{ lat = 50.11, lon = 8.68 }` and rejects latitudes outside
/// -90..=90 and longitudes outside -180..=180 (a swapped pair is the usual mistake).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCoordinates")]
pub struct Coordinates {
    /// Latitude in degrees, north positive: -90.0..=90.0.
    pub lat: f64,
    /// Longitude in degrees, east positive: -180.0..=180.0.
    pub lon: f64,
}

impl Coordinates {
    /// The point at `lat`, `lon` (degrees). Not checked: see [`Coordinates::is_valid`].
    pub const fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon }
    }

    /// Whether both values are finite and within range (latitude -90..=90, longitude
    /// -180..=180).
    pub fn is_valid(self) -> bool {
        (-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lon)
    }

    /// Great-circle distance to `other` in kilometres, by the haversine formula on a
    /// sphere of radius [`EARTH_RADIUS_KM`] (within 0.5 % of the ellipsoid, which is
    /// plenty for picking a region).
    pub fn distance_km(self, other: Coordinates) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let half_dlat = (lat2 - lat1) / 2.0;
        let half_dlon = (other.lon - self.lon).to_radians() / 2.0;
        let a = half_dlat.sin().powi(2) + lat1.cos() * lat2.cos() * half_dlon.sin().powi(2);
        // `min` guards against rounding pushing `a` a hair above 1 near the antipode.
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

/// The unchecked shape of [`Coordinates`] in a config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinates {
    lat: f64,
    lon: f64,
}

impl TryFrom<RawCoordinates> for Coordinates {
    type Error = String;

    fn try_from(raw: RawCoordinates) -> Result<Self, String> {
        let at = Coordinates::new(raw.lat, raw.lon);
        if at.is_valid() {
            Ok(at)
        } else {
            Err(format!(
                "coordinates lat = {}, lon = {} are off the map: latitude must be within \
                 -90..=90 and longitude within -180..=180 (are they swapped?)",
                raw.lat, raw.lon
            ))
        }
    }
}

/// Where a client is, and for how large a network around it that holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Located {
    /// A point on Earth, from the database: the server ranks regions by distance from it.
    Point {
        /// Where the client is.
        at: Coordinates,
        /// Length of the network around the client address placed at the same point. In
        /// the address family of the client address, so 0..=32 for IPv4, also when an
        /// IPv6 database stores IPv4 under `::/96` and when the address came IPv4-mapped
        /// (`::ffff:a.b.c.d`).
        prefix_len: u8,
    },
    /// A region pinned by a CIDR override, by its configured name: the server answers
    /// with that region (what it does when the region is unhealthy is its policy).
    Region {
        /// The region name as configured. Shared, so answering does not allocate.
        name: Arc<str>,
        /// Length of the network around the client address pinned the same way: the
        /// override's CIDR length, longer if a more specific override sits inside it
        /// (IPv4 terms for IPv4 and IPv4-mapped addresses).
        prefix_len: u8,
    },
}

impl Located {
    /// The length of the network placed alike: see the `prefix_len` fields.
    pub fn prefix_len(&self) -> u8 {
        match *self {
            Located::Point { prefix_len, .. } | Located::Region { prefix_len, .. } => prefix_len,
        }
    }
}

/// The swap point for "where is this client": one real implementation ([`Locator`], built
/// from [`CidrOverrides`] and an optional [`MmdbLocator`]), test doubles in tests.
pub trait GeoLocator: Send + Sync + fmt::Debug {
    /// Locates `ip`, the client subnet address from the query's ECS option (host bits
    /// zeroed by the resolver) or else the resolver's own address.
    ///
    /// May run from many threads at once. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as
    /// a dual-stack socket reports IPv4 peers) mean the IPv4 address they carry.
    ///
    /// Returns `None` when the client's location is unknown (not in the database, or its
    /// record has no coordinates); the server then falls back to its default answer.
    fn locate(&self, ip: IpAddr) -> Option<Located>;
}

/// Why a geo location source could not be loaded. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// The database file could not be read (missing, unreadable).
    #[error(
        "cannot read the GeoIP database {}: {cause}; check the configured path, or leave \
         the database out to locate clients by CIDR overrides only",
        .path.display()
    )]
    Read {
        /// The path that was tried.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The bytes are not a MaxMind DB.
    #[error(
        "{db} is not a MaxMind DB (.mmdb) file: {cause}; use the binary .mmdb edition of a \
         City database (e.g. GeoLite2-City.mmdb, not the CSV download) and check that the \
         file is complete"
    )]
    NotMmdb {
        /// Which database: its path, or "in-memory database".
        db: String,
        /// What the reader rejected.
        cause: maxminddb::MaxMindDbError,
    },
    /// The database is a valid MaxMind DB but no record has coordinates.
    #[error(
        "{db} (database type {database_type:?}) has no record with location.latitude and \
         location.longitude, so it cannot place clients on the map; use a City-level \
         database such as GeoLite2-City, not a Country or ASN one"
    )]
    NoLocationData {
        /// Which database: its path, or "in-memory database".
        db: String,
        /// The `database_type` from the database's metadata.
        database_type: String,
    },
    /// The same network was given two different regions.
    #[error(
        "CIDR override {network} is mapped to both {first:?} and {second:?}; keep one \
         region per network"
    )]
    ConflictingOverride {
        /// The network, host bits cleared.
        network: IpNet,
        /// The region it was mapped to first.
        first: String,
        /// The region it was mapped to again.
        second: String,
    },
}

/// The part of a City record GeoDNS reads. Other fields are skipped while decoding, never
/// materialized.
#[derive(Deserialize)]
struct CityRecord {
    #[serde(default)]
    location: Option<LocationRecord>,
}

#[derive(Deserialize)]
struct LocationRecord {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

impl CityRecord {
    fn coordinates(&self) -> Option<Coordinates> {
        let location = self.location.as_ref()?;
        let at = Coordinates::new(location.latitude?, location.longitude?);
        at.is_valid().then_some(at)
    }
}

/// Locates clients with a MaxMind-format City database (`.mmdb`) held in memory.
///
/// Reads `location.latitude` and `location.longitude` of the record and the prefix
/// length of the database network the address falls in. Both IPv4-only and IPv6
/// databases work; an IPv6 address looked up in an IPv4-only database is not found.
#[derive(Debug)]
pub struct MmdbLocator {
    reader: maxminddb::Reader<Vec<u8>>,
}

/// Coordinates already decoded, by record offset, for one walk of a database: many
/// networks share one record (a city), and decoding a City record (skipping its names in
/// every language) costs more than the tree walk.
pub(crate) type Records = FxHashMap<usize, Option<Coordinates>>;

impl MmdbLocator {
    /// Reads the whole database at `path` into memory and checks it (see
    /// [`MmdbLocator::from_bytes`]).
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let bytes = std::fs::read(path).map_err(|cause| GeoError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::load(bytes, || path.display().to_string())
    }

    /// Uses `bytes` as the database. Fails if they are not a MaxMind DB, or if no record
    /// in it has coordinates (a Country or ASN database): such a database would leave
    /// every client unlocated.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GeoError> {
        Self::load(bytes, || "in-memory database".to_owned())
    }

    fn load(bytes: Vec<u8>, db: impl Fn() -> String) -> Result<Self, GeoError> {
        let reader = maxminddb::Reader::from_source(bytes)
            .map_err(|cause| GeoError::NotMmdb { db: db(), cause })?;
        let locator = Self { reader };
        match locator.has_location_data() {
            Ok(true) => Ok(locator),
            Ok(false) => Err(GeoError::NoLocationData {
                db: db(),
                database_type: locator.database_type().to_owned(),
            }),
            Err(cause) => Err(GeoError::NotMmdb { db: db(), cause }),
        }
    }

    /// Whether some record has coordinates. Stops at the first one, which in a City
    /// database is among the first few networks; scans a whole Country database once.
    fn has_location_data(&self) -> Result<bool, maxminddb::MaxMindDbError> {
        for network in self.reader.networks(maxminddb::WithinOptions::default())? {
            // A record of another shape is no location, not a broken database.
            if let Ok(Some(record)) = network?.decode::<CityRecord>()
                && record.coordinates().is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The `database_type` from the metadata, e.g. `"GeoLite2-City"`, for logs.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built (seconds since the Unix epoch), for logs and staleness
    /// alerts.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }
}

impl GeoLocator for MmdbLocator {
    /// A record that cannot be decoded counts as unknown.
    fn locate(&self, ip: IpAddr) -> Option<Located> {
        match self.find(ip.to_canonical(), &mut Records::default()) {
            (Some(at), prefix_len) => Some(Located::Point { at, prefix_len }),
            (None, _) => None,
        }
    }
}

impl MmdbLocator {
    /// Where the database puts canonical address `ip` (`None`: nowhere, or a record
    /// without coordinates) and the prefix length of its network, which is also the
    /// extent of an unknown network. A lookup the database refuses (an IPv6 address in an
    /// IPv4-only database) is unknown with prefix length 0: the whole family.
    fn find(&self, ip: IpAddr, records: &mut Records) -> (Option<Coordinates>, u8) {
        let Ok(hit) = self.reader.lookup(ip) else {
            return (None, 0);
        };
        let Ok(network) = hit.network() else {
            return (None, 0);
        };
        // An IPv6 database keeps IPv4 under `::/96`. The reader already reports IPv4
        // lookups in IPv4 terms, except when the match sits above the IPv4 subtree (a
        // database without one): then the network is `::/n` with n <= 96, which covers
        // all of IPv4.
        let prefix_len = if ip.is_ipv4() && network.is_ipv6() {
            network.prefix().saturating_sub(96)
        } else {
            network.prefix()
        };
        let at = hit.offset().and_then(|offset| {
            *records.entry(offset).or_insert_with(|| {
                hit.decode::<CityRecord>()
                    .ok()
                    .flatten()
                    .and_then(|r| r.coordinates())
            })
        });
        (at, prefix_len)
    }
}

/// Networks pinned to regions by name; the longest matching prefix wins. IPv4 and IPv6.
///
/// An override also narrows the answers around it: the `prefix_len` reported for an
/// address outside an override is long enough that its network does not reach into the
/// override (see [`Locator`]).
#[derive(Debug, Clone, Default)]
pub struct CidrOverrides {
    v4: PrefixTable<u32>,
    v6: PrefixTable<u128>,
}

impl CidrOverrides {
    /// Builds the table from `(network, region name)` pairs. Host bits are ignored
    /// (`10.1.2.3/16` means `10.1.0.0/16`); IPv4-mapped IPv6 networks
    /// (`::ffff:10.0.0.0/104`) mean the IPv4 network they carry. Listing a network twice
    /// with the same region is harmless; with two regions it is an error.
    pub fn new<I, N>(entries: I) -> Result<Self, GeoError>
    where
        I: IntoIterator<Item = (IpNet, N)>,
        N: Into<Arc<str>>,
    {
        let mut v4 = BTreeMap::new();
        let mut v6 = BTreeMap::new();
        for (network, region) in entries {
            let region = region.into();
            let network = canonical_net(network);
            match network {
                IpNet::V4(net) => {
                    let key = (net.prefix_len(), u32::from(net.network()));
                    insert_override(&mut v4, key, region, network)?;
                }
                IpNet::V6(net) => {
                    let key = (net.prefix_len(), u128::from(net.network()));
                    insert_override(&mut v6, key, region, network)?;
                }
            }
        }
        Ok(Self {
            v4: PrefixTable::build(v4),
            v6: PrefixTable::build(v6),
        })
    }

    /// How many networks are pinned.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether no network is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The region pinned for `ip` (if any), and the shortest prefix length an answer for
    /// `ip` may carry without its network reaching into another override.
    fn lookup(&self, ip: IpAddr) -> (Option<&Arc<str>>, u8) {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.v4.lookup(u32::from(v4)),
            IpAddr::V6(v6) => self.v6.lookup(u128::from(v6)),
        }
    }
}

impl GeoLocator for CidrOverrides {
    fn locate(&self, ip: IpAddr) -> Option<Located> {
        match self.lookup(ip) {
            (Some(name), prefix_len) => Some(Located::Region {
                name: Arc::clone(name),
                prefix_len,
            }),
            (None, _) => None,
        }
    }
}

/// `::ffff:a.b.c.d/n` (n >= 96) is the IPv4 network `a.b.c.d/(n - 96)`; any other network
/// as given, host bits cleared.
fn canonical_net(network: IpNet) -> IpNet {
    if let IpNet::V6(v6) = network
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(net) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(net.trunc());
    }
    network.trunc()
}

fn insert_override<A: Ord>(
    table: &mut BTreeMap<(u8, A), Arc<str>>,
    key: (u8, A),
    region: Arc<str>,
    network: IpNet,
) -> Result<(), GeoError> {
    match table.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(region);
        }
        Entry::Occupied(slot) if *slot.get() == region => {}
        Entry::Occupied(slot) => {
            return Err(GeoError::ConflictingOverride {
                network,
                first: slot.get().to_string(),
                second: region.to_string(),
            });
        }
    }
    Ok(())
}

/// An address as an unsigned integer, most significant bit first.
pub(crate) trait AddrBits: Copy + Ord + fmt::Debug + Send + Sync + 'static {
    /// The address 0.
    const ZERO: Self;
    /// Bits in an address: 32 or 128.
    const WIDTH: u8;
    /// The mask that keeps the first `prefix_len` bits.
    fn mask(prefix_len: u8) -> Self;
    fn and(self, other: Self) -> Self;
    /// How many leading bits `self` and `other` share (`WIDTH` when equal).
    fn common_prefix_len(self, other: Self) -> u8;
    /// The shortest prefix length whose network starts at `self`.
    fn alignment(self) -> u8;
    /// The first address after network `self`/`prefix_len` (`self` its first address);
    /// `None` past the end of the space.
    fn after(self, prefix_len: u8) -> Option<Self>;
    /// The address before `self`, `None` for 0.
    fn pred(self) -> Option<Self>;
    /// The first `bits` bits (at most 32), as an index.
    fn top(self, bits: u8) -> usize;
}

macro_rules! addr_bits {
    ($t:ty) => {
        impl AddrBits for $t {
            const ZERO: Self = 0;
            // 32 or 128: the cast is exact.
            const WIDTH: u8 = <$t>::BITS as u8;
            fn mask(prefix_len: u8) -> Self {
                <$t>::MAX
                    .checked_shl(<$t>::BITS - u32::from(prefix_len))
                    .unwrap_or(0)
            }
            fn and(self, other: Self) -> Self {
                self & other
            }
            fn common_prefix_len(self, other: Self) -> u8 {
                // At most 128, so the cast is exact.
                (self ^ other).leading_zeros() as u8
            }
            fn alignment(self) -> u8 {
                // At most 128, so the cast is exact.
                Self::WIDTH - self.trailing_zeros().min(<$t>::BITS) as u8
            }
            fn after(self, prefix_len: u8) -> Option<Self> {
                match u32::from(Self::WIDTH - prefix_len) {
                    0 => self.checked_add(1),
                    bits if bits == <$t>::BITS => None,
                    bits => self.checked_add(1 << bits),
                }
            }
            fn pred(self) -> Option<Self> {
                self.checked_sub(1)
            }
            fn top(self, bits: u8) -> usize {
                // `bits` <= 32: the value fits a usize on the 64-bit targets this runs on.
                (self >> (<$t>::BITS - u32::from(bits))) as usize
            }
        }
    };
}
addr_bits!(u32);
addr_bits!(u128);

/// One family's overrides: a sorted table of networks per prefix length, longest first.
/// A lookup is a binary search per distinct prefix length, and allocates nothing.
#[derive(Debug, Clone, Default)]
struct PrefixTable<A> {
    levels: Vec<Level<A>>,
}

#[derive(Debug, Clone)]
struct Level<A> {
    prefix_len: u8,
    mask: A,
    /// Network addresses (host bits zero) and their regions, sorted by address.
    networks: Vec<(A, Arc<str>)>,
}

impl<A: AddrBits> PrefixTable<A> {
    fn build(entries: BTreeMap<(u8, A), Arc<str>>) -> Self {
        let mut levels: Vec<Level<A>> = Vec::new();
        // Ascending (prefix_len, address): each level's networks arrive sorted.
        for ((prefix_len, address), region) in entries {
            match levels.last_mut() {
                Some(level) if level.prefix_len == prefix_len => {
                    level.networks.push((address, region));
                }
                _ => levels.push(Level {
                    prefix_len,
                    mask: A::mask(prefix_len),
                    networks: vec![(address, region)],
                }),
            }
        }
        levels.reverse();
        Self { levels }
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|level| level.networks.len()).sum()
    }

    /// The longest-prefix match for `ip` and the prefix length of the largest network
    /// around `ip` that gets the same answer.
    ///
    /// That network must not reach into a more specific override that does not hold
    /// `ip`: for each such override N, the network must be longer than the bits `ip`
    /// shares with N. Within one level the override sharing the most leading bits with
    /// `ip` is one of the two neighbours of `ip`'s place in the sorted table.
    fn lookup(&self, ip: A) -> (Option<&Arc<str>>, u8) {
        let mut scope = 0;
        for level in &self.levels {
            let key = ip.and(level.mask);
            let networks = &level.networks;
            let (found, next) = match networks.binary_search_by_key(&key, |(net, _)| *net) {
                Ok(i) => (Some(i), i + 1),
                Err(i) => (None, i),
            };
            let before = found.unwrap_or(next).checked_sub(1);
            for neighbour in [before, Some(next)].into_iter().flatten() {
                if let Some((net, _)) = networks.get(neighbour) {
                    scope = scope.max(ip.common_prefix_len(*net) + 1);
                }
            }
            if let Some(i) = found {
                // Shorter levels hold only networks that contain this one or lie outside
                // it: neither narrows the answer further.
                return (Some(&networks[i].1), scope.max(level.prefix_len));
            }
        }
        (None, scope)
    }
}

/// The client locator the server uses: [`CidrOverrides`] first, then the database.
///
/// A placement's network never overlaps one placed otherwise: when the database answers
/// for `10.0.0.0/8` but `10.1.0.0/16` is pinned to a region, a client at `10.2.3.4` gets
/// `prefix_len` 15 (`10.2.0.0/15`), not 8. Nested overrides narrow each other the same
/// way, and so do the IPv6 networks that carry IPv4 addresses ([`EMBEDDED_IPV4`]).
///
/// Those IPv6 addresses (IPv4-compatible, IPv4-mapped, Teredo, 6to4) are placed as the
/// IPv4 address they carry, overrides included, unless an IPv6 override pins them:
/// MaxMind's databases alias these networks to their IPv4 data, and holding to that
/// whatever the database lets the answer map keep one copy of the IPv4 space.
#[derive(Debug, Default)]
pub struct Locator {
    overrides: CidrOverrides,
    mmdb: Option<MmdbLocator>,
}

impl Locator {
    /// A locator from the configured overrides and, if one is configured, a database.
    /// With neither, every client is unlocated.
    pub fn new(overrides: CidrOverrides, mmdb: Option<MmdbLocator>) -> Self {
        Self { overrides, mmdb }
    }

    /// The overrides consulted first.
    pub fn overrides(&self) -> &CidrOverrides {
        &self.overrides
    }

    /// The database consulted when no override matches.
    pub fn mmdb(&self) -> Option<&MmdbLocator> {
        self.mmdb.as_ref()
    }
}

impl GeoLocator for Locator {
    fn locate(&self, ip: IpAddr) -> Option<Located> {
        let records = &mut Records::default();
        let (placement, prefix_len) = match ip.to_canonical() {
            IpAddr::V4(v4) => self.place_v4(u32::from(v4), records),
            IpAddr::V6(v6) => {
                let v6 = u128::from(v6);
                match self.place_v6(v6, records) {
                    (Placement::Ipv4At { bit }, prefix_len) => {
                        let (placement, v4_len) = self.place_v4(embedded(v6, bit), records);
                        (placement, prefix_len.max(bit + v4_len))
                    }
                    placed => placed,
                }
            }
        };
        match placement {
            Placement::Point(at) => Some(Located::Point { at, prefix_len }),
            Placement::Pinned(name) => Some(Located::Region { name, prefix_len }),
            Placement::Unknown | Placement::Ipv4At { .. } => None,
        }
    }
}

/// How [`Locator`] places one address, before any region is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// At a point on the map (the database).
    Point(Coordinates),
    /// Pinned to the region of this name (an override).
    Pinned(Arc<str>),
    /// Nowhere known: the default region serves it.
    Unknown,
    /// IPv6 only: placed as the IPv4 address carried from bit `bit` on (see
    /// [`EMBEDDED_IPV4`]).
    Ipv4At {
        /// Where the 32 bits of the IPv4 address start.
        bit: u8,
    },
}

/// IPv6 networks that carry an IPv4 address, as (network, prefix length); the IPv4
/// address follows the prefix: IPv4-compatible `::/96`, IPv4-mapped `::ffff:0:0/96`,
/// Teredo `2001::/32` (the server's address) and 6to4 `2002::/16`, the networks
/// MaxMind's databases alias to their IPv4 data.
pub const EMBEDDED_IPV4: [(u128, u8); 4] = [
    (0, 96),
    (0xffff << 32, 96),
    (0x2001 << 112, 32),
    (0x2002 << 112, 16),
];

/// The IPv4 address IPv6 address `v6` carries from bit `bit` on.
pub fn embedded(v6: u128, bit: u8) -> u32 {
    // At most 32 bits remain after the shift: the cast keeps exactly the address.
    (v6 >> (96 - u32::from(bit))) as u32
}

impl Locator {
    /// How IPv4 address `v4` is placed, and the prefix length of the network around it
    /// placed the same way.
    fn place_v4(&self, v4: u32, records: &mut Records) -> (Placement, u8) {
        match self.overrides.v4.lookup(v4) {
            (Some(name), prefix_len) => (Placement::Pinned(Arc::clone(name)), prefix_len),
            (None, min_scope) => {
                let (at, prefix_len) = match &self.mmdb {
                    Some(db) => db.find(IpAddr::V4(v4.into()), records),
                    None => (None, 0),
                };
                let placement = at.map_or(Placement::Unknown, Placement::Point);
                (placement, prefix_len.max(min_scope))
            }
        }
    }

    /// How IPv6 address `v6` is placed, and the prefix length of the network around it
    /// placed the same way (an embedded IPv4 network: the whole network that carries
    /// IPv4 addresses, less what IPv6 overrides take from it).
    fn place_v6(&self, v6: u128, records: &mut Records) -> (Placement, u8) {
        let (pinned, min_scope) = self.overrides.v6.lookup(v6);
        if let Some(name) = pinned {
            return (Placement::Pinned(Arc::clone(name)), min_scope);
        }
        let mut outside = 0;
        for (network, prefix_len) in EMBEDDED_IPV4 {
            if v6.common_prefix_len(network) >= prefix_len {
                return (
                    Placement::Ipv4At { bit: prefix_len },
                    min_scope.max(prefix_len),
                );
            }
            outside = outside.max(v6.common_prefix_len(network) + 1);
        }
        let (at, prefix_len) = match &self.mmdb {
            Some(db) => db.find(IpAddr::V6(v6.into()), records),
            None => (None, 0),
        };
        let placement = at.map_or(Placement::Unknown, Placement::Point);
        (placement, prefix_len.max(min_scope).max(outside))
    }

    /// The IPv4 space as consecutive networks, each placed alike throughout: (network
    /// address, prefix length, placement), from `0.0.0.0` up. One walk per config; a
    /// database's record is decoded once per walk.
    pub fn networks_v4(&self) -> impl Iterator<Item = (u32, u8, Placement)> + '_ {
        let mut records = Records::default();
        walk::<u32>(move |at| self.place_v4(at, &mut records))
    }

    /// [`Locator::networks_v4`] for IPv6; the networks that carry IPv4 addresses come as
    /// [`Placement::Ipv4At`], whole where no IPv6 override cuts them.
    pub fn networks_v6(&self) -> impl Iterator<Item = (u128, u8, Placement)> + '_ {
        let mut records = Records::default();
        walk::<u128>(move |at| self.place_v6(at, &mut records))
    }
}

/// The address space of `A` from 0 up, network by network, each as `place` gives it. A
/// network starts where the last one ended and is cut to the largest one aligned there,
/// so each step is a CIDR network that `place` said holds one placement.
fn walk<A: AddrBits>(
    mut place: impl FnMut(A) -> (Placement, u8),
) -> impl Iterator<Item = (A, u8, Placement)> {
    let mut next = Some(A::ZERO);
    std::iter::from_fn(move || {
        let at = next?;
        let (placement, prefix_len) = place(at);
        let prefix_len = prefix_len.max(at.alignment());
        next = at.after(prefix_len);
        Some((at, prefix_len, placement))
    })
}

/// Indices into `regions`, nearest to `at` first, by great-circle distance. Equal
/// distances are ordered by region name (then by position), so every server answers
/// the same.
///
/// ```
/// use geodns::geo::{Coordinates, rank_regions};
///
/// let regions = [
///     ("us-east", Coordinates::new(39.04, -77.49)),
///     ("eu", Coordinates::new(50.11, 8.68)),
/// ];
/// let london = Coordinates::new(51.51, -0.13);
/// assert_eq!(rank_regions(london, &regions), vec![1, 0]);
/// ```
pub fn rank_regions(at: Coordinates, regions: &[(&str, Coordinates)]) -> Vec<usize> {
    let distances: Vec<f64> = regions
        .iter()
        .map(|(_, region)| at.distance_km(*region))
        .collect();
    let mut order: Vec<usize> = (0..regions.len()).collect();
    // Stable: regions with equal distance and equal name keep their order.
    order.sort_by(|&a, &b| {
        distances[a]
            .total_cmp(&distances[b])
            .then_with(|| regions[a].0.cmp(regions[b].0))
    });
    order
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::testing::mmdb_bytes;

    const FRANKFURT: Coordinates = Coordinates::new(50.11, 8.68);
    const NEW_YORK: Coordinates = Coordinates::new(40.71, -74.01);
    const TOKYO: Coordinates = Coordinates::new(35.68, 139.69);

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn point(at: Coordinates, prefix_len: u8) -> Option<Located> {
        Some(Located::Point { at, prefix_len })
    }

    fn region(name: &str, prefix_len: u8) -> Option<Located> {
        Some(Located::Region {
            name: name.into(),
            prefix_len,
        })
    }

    fn assert_km(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} km is not within {tolerance} km of {expected} km"
        );
    }

    // --- great-circle distance ---

    #[test]
    fn distance_london_new_york_is_about_5570_km() {
        let london = Coordinates::new(51.5074, -0.1278);
        let new_york = Coordinates::new(40.7128, -74.0060);
        assert_km(london.distance_km(new_york), 5570.0, 10.0);
        assert_km(new_york.distance_km(london), 5570.0, 10.0);
    }

    #[test]
    fn distance_from_a_point_to_itself_is_zero() {
        assert_eq!(FRANKFURT.distance_km(FRANKFURT), 0.0);
        let pole = Coordinates::new(90.0, 0.0);
        assert_eq!(pole.distance_km(pole), 0.0);
    }

    #[test]
    fn distance_to_the_antipode_is_half_the_circumference() {
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        assert_km(half, 20015.0, 1.0);
        // Degrees to radians rounds: within a metre.
        assert_km(
            FRANKFURT.distance_km(Coordinates::new(-50.11, 8.68 - 180.0)),
            half,
            1e-3,
        );
        assert_km(
            Coordinates::new(90.0, 0.0).distance_km(Coordinates::new(-90.0, 0.0)),
            half,
            1e-6,
        );
    }

    #[test]
    fn distance_crosses_the_antimeridian_the_short_way() {
        // One degree of longitude on the equator, across 180°.
        let east = Coordinates::new(0.0, 179.5);
        let west = Coordinates::new(0.0, -179.5);
        assert_km(east.distance_km(west), 111.2, 0.1);
    }

    #[test]
    fn distance_sydney_tokyo_and_frankfurt_tokyo() {
        assert_km(
            Coordinates::new(-33.87, 151.21).distance_km(TOKYO),
            7826.0,
            10.0,
        );
        assert_km(FRANKFURT.distance_km(TOKYO), 9333.0, 10.0);
    }

    #[test]
    fn coordinates_deserialize_and_reject_points_off_the_map() {
        #[derive(Deserialize)]
        struct Region {
            at: Coordinates,
        }
        let ok: Region = serde_json::from_str(r#"{"at": {"lat": 50.11, "lon": 8.68}}"#).unwrap();
        assert_eq!(ok.at, FRANKFURT);

        let err = serde_json::from_str::<Coordinates>(r#"{"lat": 139.69, "lon": 35.68}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("swapped"), "{err}");
        let typo = serde_json::from_str::<Coordinates>(r#"{"lat": 1.0, "long": 2.0}"#);
        assert!(typo.is_err());
        assert!(!Coordinates::new(f64::NAN, 0.0).is_valid());
        assert!(Coordinates::new(-90.0, 180.0).is_valid());
    }

    // --- MaxMind DB ---

    fn fixture() -> MmdbLocator {
        let bytes = mmdb_bytes(&[
            (net("192.0.2.0/24"), FRANKFURT),
            (net("198.51.100.0/24"), NEW_YORK),
            (net("2001:db8:1::/48"), TOKYO),
        ])
        .unwrap();
        MmdbLocator::from_bytes(bytes).unwrap()
    }

    #[test]
    fn mmdb_locates_ipv4_with_ipv4_prefix_lengths() {
        let db = fixture();
        assert_eq!(db.locate(ip("192.0.2.77")), point(FRANKFURT, 24));
        assert_eq!(db.locate(ip("192.0.2.0")), point(FRANKFURT, 24));
        assert_eq!(db.locate(ip("198.51.100.255")), point(NEW_YORK, 24));
    }

    #[test]
    fn mmdb_locates_ipv6() {
        let db = fixture();
        assert_eq!(db.locate(ip("2001:db8:1::1")), point(TOKYO, 48));
        assert_eq!(db.locate(ip("2001:db8:1:ffff::")), point(TOKYO, 48));
    }

    #[test]
    fn mmdb_cached_lookups_and_records_are_not_shared_between_databases() {
        // Same network, same record layout (so the same record offset), other place: a
        // reloaded database must not answer from the first one's cached lookups or records.
        let first = fixture();
        let moved = MmdbLocator::from_bytes(
            mmdb_bytes(&[
                (net("192.0.2.0/24"), TOKYO),
                (net("198.51.100.0/24"), NEW_YORK),
                (net("2001:db8:1::/48"), FRANKFURT),
            ])
            .unwrap(),
        )
        .unwrap();
        for _ in 0..2 {
            assert_eq!(first.locate(ip("192.0.2.1")), point(FRANKFURT, 24));
            assert_eq!(moved.locate(ip("192.0.2.1")), point(TOKYO, 24));
        }
    }

    #[test]
    fn mmdb_treats_ipv4_mapped_addresses_as_ipv4() {
        let db = fixture();
        assert_eq!(db.locate(ip("::ffff:192.0.2.77")), point(FRANKFURT, 24));
    }

    #[test]
    fn mmdb_addresses_outside_every_network_are_unknown() {
        let db = fixture();
        assert_eq!(db.locate(ip("203.0.113.1")), None);
        assert_eq!(db.locate(ip("192.0.3.1")), None);
        assert_eq!(db.locate(ip("2001:db8:2::1")), None);
        assert_eq!(db.locate(ip("::1")), None);
    }

    #[test]
    fn mmdb_records_without_coordinates_are_unknown() {
        let mut writer = mmdb_writer::Writer::new("GeoLite2-City");
        let city = |lat: f64, lon: f64| {
            mmdb_writer::Value::map([(
                "location",
                mmdb_writer::Value::map([
                    ("latitude", mmdb_writer::Value::from(lat)),
                    ("longitude", mmdb_writer::Value::from(lon)),
                ]),
            )])
        };
        writer
            .insert_value(net("192.0.2.0/24"), city(50.11, 8.68))
            .unwrap();
        // Country only (as GeoLite2-City has for some networks); a location with only an
        // accuracy radius; coordinates off the map.
        let country = mmdb_writer::Value::map([(
            "country",
            mmdb_writer::Value::map([("iso_code", mmdb_writer::Value::from("DE"))]),
        )]);
        writer
            .insert_value(net("198.51.100.0/25"), country)
            .unwrap();
        let radius_only = mmdb_writer::Value::map([(
            "location",
            mmdb_writer::Value::map([("accuracy_radius", mmdb_writer::Value::from(100_u16))]),
        )]);
        writer
            .insert_value(net("198.51.100.128/25"), radius_only)
            .unwrap();
        writer
            .insert_value(net("203.0.113.0/24"), city(135.0, 8.0))
            .unwrap();
        let db = MmdbLocator::from_bytes(writer.to_bytes().unwrap()).unwrap();

        assert_eq!(db.locate(ip("192.0.2.1")), point(FRANKFURT, 24));
        assert_eq!(db.locate(ip("198.51.100.1")), None);
        assert_eq!(db.locate(ip("198.51.100.200")), None);
        assert_eq!(db.locate(ip("203.0.113.1")), None);
    }

    #[test]
    fn mmdb_ipv4_database_locates_ipv4_and_not_ipv6() {
        let mut writer = mmdb_writer::Writer::builder("GeoLite2-City")
            .ip_version(mmdb_writer::IpVersion::V4)
            .build();
        let record = mmdb_writer::Value::map([(
            "location",
            mmdb_writer::Value::map([
                ("latitude", mmdb_writer::Value::from(50.11)),
                ("longitude", mmdb_writer::Value::from(8.68)),
            ]),
        )]);
        writer.insert_value(net("192.0.2.0/23"), record).unwrap();
        let db = MmdbLocator::from_bytes(writer.to_bytes().unwrap()).unwrap();
        assert_eq!(db.locate(ip("192.0.3.9")), point(FRANKFURT, 23));
        assert_eq!(db.locate(ip("2001:db8:1::1")), None);
    }

    #[test]
    fn mmdb_default_route_in_an_ipv6_database_is_ipv4_prefix_zero() {
        // A record at ::/0 sits above the IPv4 subtree: for IPv4 it covers everything.
        let db = MmdbLocator::from_bytes(mmdb_bytes(&[(net("::/0"), TOKYO)]).unwrap()).unwrap();
        assert_eq!(db.locate(ip("192.0.2.1")), point(TOKYO, 0));
        // The IPv4 alias subtrees (`::ffff:0:0/96`, `2001::/32`, `2002::/16`) all lie in
        // `::/1`, so the tree splits there: a narrower scope than needed, still a true one.
        assert_eq!(db.locate(ip("2001:db8::1")), point(TOKYO, 1));
        assert_eq!(db.locate(ip("8000::1")), point(TOKYO, 1));
    }

    #[test]
    fn mmdb_garbage_is_not_a_database() {
        let err = MmdbLocator::from_bytes(b"<html>404 Not Found</html>".to_vec()).unwrap_err();
        assert!(matches!(err, GeoError::NotMmdb { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("not a MaxMind DB"), "{message}");
        assert!(message.contains("in-memory database"), "{message}");

        let mut truncated = mmdb_bytes(&[(net("192.0.2.0/24"), FRANKFURT)]).unwrap();
        truncated.truncate(truncated.len() / 2);
        let err = MmdbLocator::from_bytes(truncated).unwrap_err();
        assert!(matches!(err, GeoError::NotMmdb { .. }), "{err:?}");
    }

    #[test]
    fn mmdb_without_any_coordinates_is_rejected() {
        let mut writer = mmdb_writer::Writer::new("GeoLite2-ASN");
        let asn = mmdb_writer::Value::map([(
            "autonomous_system_number",
            mmdb_writer::Value::from(64_512_u32),
        )]);
        writer.insert_value(net("192.0.2.0/24"), asn).unwrap();
        let err = MmdbLocator::from_bytes(writer.to_bytes().unwrap()).unwrap_err();
        match &err {
            GeoError::NoLocationData { database_type, .. } => {
                assert_eq!(database_type, "GeoLite2-ASN");
            }
            other => panic!("expected NoLocationData, got {other:?}"),
        }
        assert!(err.to_string().contains("City-level database"), "{err}");
    }

    #[test]
    fn mmdb_open_reads_a_file_and_names_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("geodns-geo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("city.mmdb");
        crate::testing::write_mmdb(&path, &[(net("192.0.2.0/24"), FRANKFURT)]).unwrap();
        let db = MmdbLocator::open(&path).unwrap();
        assert_eq!(db.database_type(), crate::testing::DATABASE_TYPE);
        assert_eq!(db.locate(ip("192.0.2.1")), point(FRANKFURT, 24));

        let missing = dir.join("missing.mmdb");
        let err = MmdbLocator::open(&missing).unwrap_err();
        assert!(matches!(err, GeoError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.mmdb"), "{err}");

        std::fs::write(&path, b"not a database").unwrap();
        let err = MmdbLocator::open(&path).unwrap_err();
        assert!(err.to_string().contains("city.mmdb"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // --- CIDR overrides ---

    fn overrides(entries: &[(&str, &str)]) -> CidrOverrides {
        CidrOverrides::new(entries.iter().map(|&(n, r)| (net(n), r))).unwrap()
    }

    #[test]
    fn overrides_longest_prefix_wins() {
        let table = overrides(&[("10.0.0.0/8", "eu"), ("10.1.0.0/16", "us")]);
        assert_eq!(table.locate(ip("10.1.2.3")), region("us", 16));
        assert_eq!(table.locate(ip("10.1.255.255")), region("us", 16));
        assert_eq!(table.locate(ip("11.0.0.1")), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn overrides_scope_does_not_reach_into_a_nested_override() {
        let table = overrides(&[("10.0.0.0/8", "eu"), ("10.1.0.0/16", "us")]);
        // "eu" holds for 10.2.0.0/15, not 10.0.0.0/8: that would cover 10.1.0.0/16 too.
        assert_eq!(table.locate(ip("10.2.3.4")), region("eu", 15));
        assert_eq!(table.locate(ip("10.0.3.4")), region("eu", 16));
        assert_eq!(table.locate(ip("10.200.0.1")), region("eu", 9));
        // Without the nested override, the override's own length.
        let flat = overrides(&[("10.0.0.0/8", "eu")]);
        assert_eq!(flat.locate(ip("10.2.3.4")), region("eu", 8));
    }

    #[test]
    fn overrides_cover_ipv6_and_ipv4_mapped_addresses() {
        let table = overrides(&[
            ("2001:db8::/32", "ap"),
            ("2001:db8:ff00::/40", "us-west"),
            ("::ffff:192.0.2.0/120", "eu"),
            ("0.0.0.0/0", "sa"),
        ]);
        assert_eq!(table.locate(ip("2001:db8:1::1")), region("ap", 33));
        assert_eq!(table.locate(ip("2001:db8:ff42::1")), region("us-west", 40));
        assert_eq!(table.locate(ip("192.0.2.9")), region("eu", 24));
        assert_eq!(table.locate(ip("::ffff:192.0.2.9")), region("eu", 24));
        assert_eq!(table.locate(ip("::ffff:8.8.8.8")), region("sa", 1));
        assert_eq!(table.locate(ip("2001:db9::1")), None);
    }

    #[test]
    fn overrides_ignore_host_bits_and_reject_conflicts() {
        let table = overrides(&[("10.1.2.3/16", "us"), ("10.1.0.0/16", "us")]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.locate(ip("10.1.9.9")), region("us", 16));

        let err = CidrOverrides::new([(net("10.1.0.0/16"), "us"), (net("10.1.2.3/16"), "eu")])
            .unwrap_err();
        assert!(
            matches!(&err, GeoError::ConflictingOverride { network, .. } if *network == net("10.1.0.0/16")),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"us\" and \"eu\""), "{err}");
    }

    #[test]
    fn overrides_many_siblings_find_the_right_one() {
        let entries: Vec<(IpNet, String)> = (0..=255u8)
            .map(|i| {
                let network = ipnet::Ipv4Net::new(Ipv4Addr::new(10, i, 0, 0), 16).unwrap();
                (IpNet::V4(network), format!("r{i}"))
            })
            .collect();
        let table = CidrOverrides::new(entries).unwrap();
        for i in [0u8, 1, 127, 128, 254, 255] {
            let addr = IpAddr::V4(Ipv4Addr::new(10, i, 7, 7));
            assert_eq!(table.locate(addr), region(&format!("r{i}"), 16));
        }
        assert_eq!(table.locate(ip("11.0.0.0")), None);
    }

    #[test]
    fn empty_overrides_locate_nothing() {
        let table = CidrOverrides::default();
        assert!(table.is_empty());
        assert_eq!(table.locate(ip("10.0.0.1")), None);
        assert_eq!(table.locate(ip("::1")), None);
    }

    // --- the composite ---

    #[test]
    fn locator_prefers_overrides_to_the_database() {
        let table = overrides(&[("192.0.2.128/25", "us-east"), ("2001:db8:1::/64", "eu")]);
        let locator = Locator::new(table, Some(fixture()));
        assert_eq!(locator.locate(ip("192.0.2.200")), region("us-east", 25));
        assert_eq!(locator.locate(ip("2001:db8:1::1")), region("eu", 64));
        // Outside the overrides the database answers, narrowed so that its network stops
        // short of the override.
        assert_eq!(locator.locate(ip("192.0.2.5")), point(FRANKFURT, 25));
        assert_eq!(locator.locate(ip("2001:db8:1:1::1")), point(TOKYO, 64));
        assert_eq!(locator.locate(ip("198.51.100.5")), point(NEW_YORK, 24));
        assert_eq!(locator.locate(ip("203.0.113.1")), None);
    }

    #[test]
    fn locator_database_scope_stops_short_of_a_nested_override() {
        let db = MmdbLocator::from_bytes(mmdb_bytes(&[(net("10.0.0.0/8"), FRANKFURT)]).unwrap())
            .unwrap();
        let locator = Locator::new(overrides(&[("10.1.0.0/16", "us")]), Some(db));
        assert_eq!(locator.locate(ip("10.1.2.3")), region("us", 16));
        assert_eq!(locator.locate(ip("10.2.3.4")), point(FRANKFURT, 15));
        assert_eq!(locator.locate(ip("10.200.0.1")), point(FRANKFURT, 9));
    }

    #[test]
    fn locator_places_ipv6_that_carries_ipv4_as_that_ipv4_address() {
        let table = overrides(&[("2002:c000:280::/41", "us"), ("192.0.2.64/26", "ap")]);
        let locator = Locator::new(table, Some(fixture()));
        // 6to4 (from bit 16), Teredo (the server's address, from bit 32), IPv4-compatible
        // (from bit 96): Frankfurt's 192.0.2.0/24, less the IPv4 override's /26.
        assert_eq!(
            locator.locate(ip("2002:c000:201::1")),
            point(FRANKFURT, 16 + 26)
        );
        assert_eq!(
            locator.locate(ip("2001:0:c000:2c1::")),
            point(FRANKFURT, 32 + 25)
        );
        assert_eq!(locator.locate(ip("::192.0.2.1")), point(FRANKFURT, 96 + 26));
        assert_eq!(locator.locate(ip("2002:c000:250::")), region("ap", 16 + 26));
        // An IPv6 override wins over the IPv4 address carried.
        assert_eq!(locator.locate(ip("2002:c000:280::")), region("us", 41));
        assert_eq!(locator.locate(ip("2002:c633:6401::")), point(NEW_YORK, 40));
        assert_eq!(locator.locate(ip("2002:cb00:7101::")), None);
        // Beside those networks, the database's own IPv6 networks, narrowed so as not to
        // reach into them.
        assert_eq!(locator.locate(ip("2001:db8:1::5")), point(TOKYO, 48));
        assert_eq!(
            Locator::new(CidrOverrides::default(), None).locate(ip("2001:db8::1")),
            None
        );
    }

    #[test]
    fn the_walk_covers_each_family_in_networks_placed_as_their_addresses_are() {
        let table = overrides(&[("192.0.2.128/25", "us"), ("2001:db8:1:8000::/49", "eu")]);
        let locator = Locator::new(table, Some(fixture()));
        let v4: Vec<(u32, u8, Placement)> = locator.networks_v4().collect();
        let mut next = Some(0u32);
        for (start, prefix_len, placement) in &v4 {
            assert_eq!(Some(*start), next, "consecutive");
            assert_eq!(start & !u32::mask(*prefix_len), 0, "aligned");
            next = start.after(*prefix_len);
            let at = IpAddr::V4((*start).into());
            let expected = match placement {
                Placement::Point(at) => point(*at, *prefix_len),
                Placement::Pinned(name) => region(name, *prefix_len),
                _ => None,
            };
            let found = locator.locate(at);
            assert_eq!(found.is_some(), expected.is_some(), "{at}");
            if let (Some(found), Some(expected)) = (found, expected) {
                assert_eq!(
                    std::mem::discriminant(&found),
                    std::mem::discriminant(&expected)
                );
                assert!(found.prefix_len() >= *prefix_len, "{at}");
            }
        }
        assert_eq!(next, None, "to the end of the space");
        assert!(v4.len() < 200, "{} networks", v4.len());
        let v6: Vec<(u128, u8, Placement)> = locator.networks_v6().collect();
        let mut next = Some(0u128);
        for (start, prefix_len, _) in &v6 {
            assert_eq!(Some(*start), next, "consecutive");
            next = start.after(*prefix_len);
        }
        assert_eq!(next, None, "to the end of the space");
        let tokyo = v6
            .iter()
            .filter(|(_, _, p)| *p == Placement::Point(TOKYO))
            .map(|(start, len, _)| (Ipv6Addr::from(*start).to_string(), *len))
            .collect::<Vec<_>>();
        assert_eq!(
            tokyo,
            [("2001:db8:1::".to_owned(), 49)],
            "less the override"
        );
    }

    #[test]
    fn locator_without_a_database_uses_overrides_only() {
        let locator = Locator::new(overrides(&[("10.0.0.0/8", "eu")]), None);
        assert_eq!(locator.locate(ip("10.9.9.9")), region("eu", 8));
        assert_eq!(locator.locate(ip("192.0.2.1")), None);
        assert!(locator.mmdb().is_none());
        assert_eq!(locator.overrides().len(), 1);
    }

    #[test]
    fn locators_are_shareable_trait_objects() {
        let locator: Arc<dyn GeoLocator> = Arc::new(Locator::new(
            overrides(&[("10.0.0.0/8", "eu")]),
            Some(fixture()),
        ));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let locator = Arc::clone(&locator);
                std::thread::spawn(move || locator.locate(ip("192.0.2.1")))
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), point(FRANKFURT, 24));
        }
    }

    // --- ranking ---

    #[test]
    fn rank_regions_breaks_ties_by_name_then_position() {
        let same = Coordinates::new(10.0, 10.0);
        let regions = [("b", same), ("a", same), ("c", FRANKFURT), ("a", same)];
        assert_eq!(
            rank_regions(Coordinates::new(0.0, 0.0), &regions),
            vec![1, 3, 0, 2]
        );
        assert_eq!(rank_regions(FRANKFURT, &[]), Vec::<usize>::new());
    }

    /// The regions of the golden ranking below.
    const REGIONS: [(&str, Coordinates); 5] = [
        ("eu", Coordinates::new(50.11, 8.68)),         // Frankfurt
        ("us-east", Coordinates::new(39.04, -77.49)),  // Ashburn
        ("us-west", Coordinates::new(37.34, -121.89)), // San Jose
        ("ap", Coordinates::new(35.68, 139.69)),       // Tokyo
        ("sa", Coordinates::new(-23.55, -46.63)),      // Sao Paulo
    ];

    /// GOLDEN DATA. Which region serves which city. Changing an expected order here (or
    /// the distance formula, or the tie-break) moves real users between regions, and so
    /// empties their caches and shifts load: do it on purpose, never to make a test pass.
    #[test]
    fn golden_region_ranking_for_client_cities() {
        let golden: [(&str, Coordinates, [&str; 5]); 8] = [
            (
                "London",
                Coordinates::new(51.51, -0.13),
                ["eu", "us-east", "us-west", "sa", "ap"],
            ),
            (
                "Paris",
                Coordinates::new(48.86, 2.35),
                ["eu", "us-east", "us-west", "sa", "ap"],
            ),
            (
                "New York",
                Coordinates::new(40.71, -74.01),
                ["us-east", "us-west", "eu", "sa", "ap"],
            ),
            (
                "Chicago",
                Coordinates::new(41.88, -87.63),
                ["us-east", "us-west", "eu", "sa", "ap"],
            ),
            (
                "Los Angeles",
                Coordinates::new(34.05, -118.24),
                ["us-west", "us-east", "ap", "eu", "sa"],
            ),
            (
                "Sydney",
                Coordinates::new(-33.87, 151.21),
                ["ap", "us-west", "sa", "us-east", "eu"],
            ),
            (
                "Singapore",
                Coordinates::new(1.35, 103.82),
                ["ap", "eu", "us-west", "us-east", "sa"],
            ),
            (
                "Buenos Aires",
                Coordinates::new(-34.60, -58.38),
                ["sa", "us-east", "us-west", "eu", "ap"],
            ),
        ];
        for (city, at, expected) in golden {
            let ranked: Vec<&str> = rank_regions(at, &REGIONS)
                .into_iter()
                .map(|i| REGIONS[i].0)
                .collect();
            assert_eq!(ranked, expected, "ranking for {city}");
        }
    }
}
