//! The `cdn` binary's library: everything the subcommands run that is not a component
//! crate of its own.
//!
//! - [`topology`]: the one TOML file describing a whole CDN, and each component's part of it.
//! - [`up`]: `cdn up`, every component of a topology in one process; [`supervise`]:
//!   `cdn up --processes`, each component a supervised process of its own (with
//!   [`netns`], each region in a network namespace that can be cut off); [`endpoints`]:
//!   where they listen, as `cdn up --endpoints` writes it.
//! - [`drill`]: `cdn drill`, a regional failover drill against a running topology, with
//!   [`clients`], the synthetic browsers whose requests it measures.
//! - [`warm`]: `cdn warm`, filling one region's caches with another's hottest objects.
//! - [`console`]: the operator console, a web page showing a running topology live.
//! - [`node_admin`]: the client of the nodes' admin API those commands use.
//! - [`runtime`]: the tokio runtime, shaped by the cores the process has.
//! - [`demo_origin`]: an origin serving generated assets, for `cdn up`, tests and benches.

pub mod clients;
pub mod console;
pub mod demo_origin;
pub mod drill;
pub mod endpoints;
pub mod netns;
pub mod node_admin;
pub mod runtime;
pub mod supervise;
pub mod topology;
pub mod up;
pub mod warm;
