//! Test fixtures: City-shaped MaxMind DB files written on the fly, so tests need no
//! downloaded GeoIP database.
//!
//! Compiled for this crate's own tests and, with the `test-support` feature, for other
//! crates' tests (the end-to-end tests in the root `tests/` enable it through a
//! dev-dependency: `geodns = { workspace = true, features = ["test-support"] }`).
//! Production builds leave the feature off and do not carry the writer.
//!
//! ```
//! use geodns::geo::{Coordinates, GeoLocator, Located, MmdbLocator};
//! use geodns::testing::mmdb_bytes;
//!
//! let frankfurt = Coordinates::new(50.11, 8.68);
//! let bytes = mmdb_bytes(&[("192.0.2.0/24".parse().unwrap(), frankfurt)]).unwrap();
//! let db = MmdbLocator::from_bytes(bytes).unwrap();
//! assert_eq!(
//!     db.locate("192.0.2.1".parse().unwrap()),
//!     Some(Located::Point { at: frankfurt, prefix_len: 24 }),
//! );
//! ```

use std::io;
use std::path::Path;
use std::time::UNIX_EPOCH;

use ipnet::IpNet;
use mmdb_writer::{Value, Writer};

use crate::geo::Coordinates;

/// The `database_type` the fixtures carry in their metadata.
pub const DATABASE_TYPE: &str = "GeoLite2-City";

/// A MaxMind DB as bytes, mapping each network to a City record
/// `{"location": {"latitude": lat, "longitude": lon}}` — the fields GeoDNS reads from a
/// real GeoLite2-City database.
///
/// The database is an IPv6 tree with IPv4 networks under `::/96` and the usual IPv4
/// aliases (`::ffff:0:0/96`, `2002::/16`), like MaxMind's own, so IPv4 lookups report
/// IPv4 prefix lengths. Networks may nest: the most specific one wins, in whatever order
/// they are given. Documentation and private ranges are allowed. The output is the same
/// bytes for the same input (the build time is fixed at the Unix epoch).
///
/// Fails with [`io::ErrorKind::InvalidInput`] for a network the format cannot hold: one
/// inside an IPv4 alias range such as `::ffff:0:0/96` (give the IPv4 network instead).
pub fn mmdb_bytes(networks: &[(IpNet, Coordinates)]) -> io::Result<Vec<u8>> {
    let mut writer = Writer::builder(DATABASE_TYPE)
        .description(&[("en", "GeoDNS test fixture")])
        .build_epoch(UNIX_EPOCH)
        .build();
    // The writer lets later inserts win; insert wider networks first so nested ones
    // override them regardless of the caller's order. Depth in the IPv6 tree, where IPv4
    // lives under `::/96`.
    let mut sorted: Vec<&(IpNet, Coordinates)> = networks.iter().collect();
    sorted.sort_by_key(|(network, _)| match network {
        IpNet::V4(v4) => 96 + u16::from(v4.prefix_len()),
        IpNet::V6(v6) => u16::from(v6.prefix_len()),
    });
    for (network, at) in sorted {
        writer
            .insert_value(*network, city_record(*at))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    writer
        .to_bytes()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Writes [`mmdb_bytes`] to `path` (creating or replacing the file), for tests that
/// start a server from a config naming a database file.
pub fn write_mmdb(path: &Path, networks: &[(IpNet, Coordinates)]) -> io::Result<()> {
    std::fs::write(path, mmdb_bytes(networks)?)
}

fn city_record(at: Coordinates) -> Value {
    Value::map([(
        "location",
        Value::map([
            ("latitude", Value::from(at.lat)),
            ("longitude", Value::from(at.lon)),
        ]),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::{GeoLocator, Located, MmdbLocator};

    #[test]
    fn nested_networks_resolve_most_specific_whatever_the_order() {
        let wide = Coordinates::new(1.0, 2.0);
        let narrow = Coordinates::new(3.0, 4.0);
        let entries = [
            ("10.1.0.0/16".parse().unwrap(), narrow),
            ("10.0.0.0/8".parse().unwrap(), wide),
        ];
        let db = MmdbLocator::from_bytes(mmdb_bytes(&entries).unwrap()).unwrap();
        assert_eq!(
            db.locate("10.1.2.3".parse().unwrap()),
            Some(Located::Point {
                at: narrow,
                prefix_len: 16
            })
        );
        assert_eq!(
            db.locate("10.2.3.4".parse().unwrap()),
            Some(Located::Point {
                at: wide,
                prefix_len: 15
            })
        );
    }

    #[test]
    fn output_is_reproducible() {
        let entries = [("192.0.2.0/24".parse().unwrap(), Coordinates::new(1.0, 2.0))];
        assert_eq!(mmdb_bytes(&entries).unwrap(), mmdb_bytes(&entries).unwrap());
    }

    #[test]
    fn aliased_networks_are_refused() {
        let entries = [(
            "::ffff:192.0.2.0/120".parse().unwrap(),
            Coordinates::new(1.0, 2.0),
        )];
        let err = mmdb_bytes(&entries).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
