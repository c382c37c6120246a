//! The node: what composes the cache core, the upstream layer and the front door into an
//! edge or a shield that runs.
//!
//! The request handler and its phases ([`proxy`]: `Edge`, which implements the front
//! door's `Handler`), the miss path ([`fill`]), answers from sliced objects
//! ([`slices`]), reads of the disk tier on a memory miss ([`disk`]), responses to POSTs kept for later GETs ([`post`]), purges ([`invalidation`], [`purge_stream`]), what the node remembers across restarts ([`state`]), the proof on headers between
//! tiers ([`node_auth`]), the site table ([`site`]), the config file ([`config`], which
//! composes each layer's own section), the metrics ([`metrics`]), the access log
//! ([`access_log`]), what a reload may change and how ([`reload`]), the handover of the
//! listeners to a new process ([`upgrade`]), the admin listener and the server that binds
//! and runs everything ([`server`]).
//!
//! This is the top layer: it may import every layer below, and nothing imports it.

pub mod access_log;
mod admin;
pub mod config;
mod disk;
pub mod fill;
pub mod invalidation;
pub mod metrics;
pub mod node_auth;
pub mod post;
pub mod proxy;
pub mod purge_stream;
pub mod reload;
pub mod role;
pub mod server;
pub mod site;
pub mod slices;
pub mod state;
pub mod upgrade;
