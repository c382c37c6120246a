//! The purge API: how publishers invalidate content everywhere.
//!
//! Publishers purge by URL, prefix, cache tag, host or everything, hard or soft, with
//! bearer tokens scoped to their sites. A purge is admitted (per-publisher token buckets,
//! a bounded commit queue: `429`/`503` with `Retry-After` when over), appended durably to
//! the purge log with a sequence number, and only then answered `202`. One task per node
//! pushes the log to that node from the node's own watermark until it has applied
//! everything, in rounds that carry every purge logged since the last ([`push_window`]),
//! so no accepted purge is ever lost; `GET /v1/purges/{id}` says which nodes
//! have applied it. Nodes that were away read the log (`GET /v1/purge-log`) before they
//! serve again.
//!
//! [`PurgeApiServer`] runs it from a [`PurgeApiConfig`].

pub mod admission;
pub mod config;
pub mod encoded_tail;
pub mod idempotency;
pub mod log;
#[cfg(any(test, feature = "test-support"))]
pub mod log_battery;
pub mod metrics;
pub mod min_watermark;
pub mod nats_log;
pub mod push_window;
pub mod request;
pub mod server;
pub mod watermarks;

pub use config::PurgeApiConfig;
pub use server::{PurgeApiServer, StartError};
