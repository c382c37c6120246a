//! The edge cache node.
//!
//! An edge answers browsers for the sites it is configured with: it maps the request's
//! host to a site (never an open proxy), builds a versioned cache key, serves fresh
//! entries from memory, and fills misses from the site's upstream (an origin or an origin
//! shield) with one fetch per key however many clients ask at once. Freshness follows
//! RFC 9111 for a shared cache; every response says what the cache did in an RFC 9211
//! `Cache-Status` header.
//!
//! The crate is four layers, each importing only the ones above it in this list (checked
//! by `tests/layers.rs`):
//! - [`cache`]: the cache core (keys, freshness, variants, the store, coalescing), with no
//!   network in sight;
//! - [`upstream`]: the client of origins and shields, pools, balancing, health, retries;
//! - [`front`]: client connections (HTTP/1.1 with the hit fast path, HTTP/2, TLS, limits);
//! - [`node`]: what composes them into a running node.
//!
//! [`EdgeServer`] runs a node from an [`EdgeConfig`]; [`Edge`] is the request handler
//! itself, usable without sockets.

pub mod cache;
pub mod front;
pub mod node;
pub mod upstream;

pub use cache::store::{MemoryStore, Storage};
pub use node::access_log::AccessLogConfig;
pub use node::config::EdgeConfig;
pub use node::proxy::Edge;
pub use node::server::{EdgeServer, StartError};
