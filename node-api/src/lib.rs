//! The wire between the CDN's processes: what one component sends another and both must
//! read alike. Edges, shields, GeoDNS and the purge API depend on this crate, never on
//! each other for these names and shapes, so renaming a field is a compile error on both
//! sides instead of a silent change of behaviour.
//!
//! - [`headers`]: the HTTP header names nodes use between themselves, and which of them
//!   are internal (honoured only from a proven node, removed from client requests).
//! - [`health`]: the typed `/healthz` report every edge and shield serves and GeoDNS,
//!   upstream pools and the operator console read.
//! - [`purge`]: purges as the API logs and pushes them and nodes apply them, batches,
//!   acknowledgements and log pages, the limits that keep a batch within what a node
//!   reads, and the recent purges the API lists for the operator console.
//! - [`hot`]: a node's most requested objects, for warming another region.
//! - [`nats`]: the purge stream's subject, bucket and key names on NATS JetStream, and
//!   (feature `nats`) the client both sides connect with.

pub mod headers;
pub mod health;
pub mod hot;
pub mod nats;
pub mod purge;

pub use health::{HealthReport, NodeState, RequestCounts};
