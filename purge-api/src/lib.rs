//! The purge API: how publishers invalidate content everywhere.
//!
//! Not built yet (issue 6). Publishers will purge by URL, prefix, cache tag, host or
//! everything, with bearer tokens scoped to their sites. Accepted purges are appended to a
//! durable log before the API answers `202`, fanned out to every edge and shield, and
//! tracked per node until each has applied them; overload is shed with `429` and
//! `Retry-After`, never by dropping a purge.

pub mod log;
