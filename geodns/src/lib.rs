//! Authoritative GeoDNS: answers each client with its nearest healthy region.
//!
//! For a customer name in the CDN zone the answer is `CNAME <region>.edge.<zone>` plus
//! that region's healthy edge addresses; the region is the healthy one nearest to the
//! client, located by EDNS Client Subnet (RFC 7871) or the resolver's address through CIDR
//! overrides and a MaxMind-format City database. Edges are probed over HTTP; a region
//! without a healthy edge is skipped and an overloaded one spills a share of its clients to
//! the next. The config reloads on SIGHUP or file change without dropping queries.
//!
//! [`GeoDnsServer`] runs it from a [`GeoDnsConfig`]. The transports are this crate's own
//! loops (`udp`: batched `recvmmsg`/`sendmmsg` with an in-place fast path for steered
//! answers and the zone's static ones, encoded once per config; `tcp`: framed
//! messages in order), so every message is screened before anything answers it (a
//! response, QR=1, is dropped, never reflected); `hickory-server` decodes requests and
//! encodes the answers of the general path.

pub mod answer_map;
pub mod cells;
pub mod config;
pub mod ecs;
pub mod fast_path;
pub mod general;
pub mod geo;
pub mod handler;
pub mod health;
pub mod metrics;
pub mod server;
pub mod state;
pub mod static_answers;
pub mod steering;
pub mod tcp;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
// The one module with `unsafe`: batched UDP system calls on buffers it owns (see its docs).
#[allow(unsafe_code)]
pub mod udp;
pub mod zone;

pub use config::GeoDnsConfig;
pub use server::{GeoDnsServer, StartError};
