//! The cache core: what a shared HTTP cache decides and keeps, with no network in sight.
//!
//! Keys and the normalized targets they are built from ([`key`]), `Cache-Control`
//! ([`control`]), freshness and storability ([`freshness`]), variants ([`vary`], and the
//! request fields a shared fill forwards, [`fields`]), ranges ([`range`]) and
//! conditionals ([`conditional`]) answered from a stored object, HTTP-dates in all three
//! forms ([`http_date`]), the enums behind `Cache-Status`, logs and metric labels
//! ([`status`]), the store and its entry kinds ([`store`]), the one decision on what a
//! request finds there ([`lookup`]: hit, stale while revalidating, fill, pass or refuse),
//! one fetch per key ([`coalesce`]), bodies still arriving ([`growing_body`]), how an
//! object too large to store whole is sliced ([`slice`](mod@slice)) and how `206`s are
//! kept and completed ([`partial`]), the disk tier's storage engine ([`disk`]) and the
//! store that puts it under memory ([`hybrid`]: admission, disk records of entries).
//!
//! What an allocation really costs ([`allocation`]) weighs entries; large bodies are kept
//! in sealed memory files a plain-TCP hit sends without copying ([`sealed_body`]).
//!
//! This layer is the bottom one: it imports nothing from `upstream`, `front` or `node`.
//! It knows nothing of nodes, sockets, config files or upstream servers; what it needs of
//! them comes in as plain values (a `QueryPolicy`, a `FreshnessPolicy`, the request's
//! headers), so every rule here can be tested without a runtime.

pub mod allocation;
pub mod coalesce;
pub mod conditional;
pub mod control;
pub mod disk;
pub mod fields;
pub mod freshness;
pub mod growing_body;
pub mod http_date;
pub mod hybrid;
pub mod key;
pub mod lookup;
pub mod partial;
pub mod range;
pub mod sealed_body;
pub mod slice;
pub mod status;
pub mod store;
pub mod vary;

#[cfg(test)]
pub(crate) mod test_headers;

/// The error of a body that failed mid-way (a growing fill, an upstream stream, a client's
/// request body): boxed, since each source fails in its own way.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
