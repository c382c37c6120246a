//! GeoDNS: the authoritative DNS server of the CDN zone.
//!
//! Not built yet (issue 5). It will answer a customer name with a CNAME to the nearest
//! healthy region (`<region>.edge.<zone>`) plus that region's healthy edge addresses,
//! locating the client by EDNS Client Subnet or its resolver's address in a MaxMind-format
//! database, and fail over when a region's edges stop answering their health probes.
//! It depends on no other member of the workspace.

pub mod geo;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
