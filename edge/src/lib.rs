//! The edge cache node.
//!
//! An edge answers browsers for the sites it is configured with: it maps the request's
//! host to a site (never an open proxy), builds a versioned cache key, serves fresh
//! entries from memory, and fills misses from the site's upstream (an origin or an origin
//! shield) with one fetch per key however many clients ask at once. Freshness follows
//! RFC 9111 for a shared cache; every response says what the cache did in an RFC 9211
//! `Cache-Status` header.
//!
//! [`EdgeServer`] runs a node from an [`EdgeConfig`]; [`Edge`] is the request handler
//! itself, usable without sockets.

pub mod balance;
pub mod body;
pub mod cache_control;
pub mod cache_key;
pub mod cache_status;
pub mod client_body;
pub mod coalesce;
pub mod conditional;
pub mod config;
pub mod connection;
pub mod fill;
pub mod freshness;
pub mod growing_body;
pub mod h2;
pub mod health;
pub mod https;
pub mod invalidation;
pub mod limits;
pub mod metrics;
pub mod node_auth;
pub mod overload;
pub mod pool;
pub mod proxy;
pub mod purge_stream;
pub mod range;
pub mod retry_budget;
pub mod server;
pub mod site;
pub mod slice;
pub mod store;
pub mod upstream;
pub mod vary;

mod admin;
#[cfg(test)]
mod test_headers;

pub use config::EdgeConfig;
pub use proxy::Edge;
pub use server::{EdgeServer, StartError};
pub use store::{MemoryStore, Storage};
