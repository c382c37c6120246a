//! The `cdn` binary's library: everything the subcommands run that is not a component
//! crate of its own.
//!
//! - [`demo_origin`]: an origin serving generated assets, for `cdn up`, tests and benches.
//! - [`up`]: `cdn up`, a local CDN from an embedded default config.

pub mod demo_origin;
pub mod up;
