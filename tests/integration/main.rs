//! The cross-component tests, in one test binary: one module per area over one shared
//! harness (`support`), so the harness and the workspace are compiled and linked once
//! rather than once per file. One area: `cargo test --test integration edge_hostile::`.
//!
//! Every test shares this process with the others, run in parallel, so none may depend on
//! process-wide state another could change: listeners bind port 0 (NATS servers, which
//! cannot, a port found free a moment before), child processes are signalled by their own
//! pid, nothing sets environment variables or a global tracing subscriber, and nothing
//! signals this process (GeoDNS servers install a SIGHUP handler here, harmlessly). A test
//! that measures the process itself (its peak memory) runs alone in a child process:
//! `support::memory::alone`.

mod support;

mod cdn_cli;
mod cdn_up;
mod console;
mod edge_access_log;
mod edge_cache;
mod edge_coalescing;
mod edge_connection;
mod edge_credentials;
mod edge_disk;
mod edge_hostile;
mod edge_interim;
mod edge_partial;
mod edge_range;
mod edge_readiness;
mod edge_reload;
mod edge_restart;
mod edge_safety;
mod edge_semantics;
mod edge_slices;
mod edge_stale;
mod edge_streaming;
mod edge_tls;
mod edge_upgrade;
mod edge_upstream;
mod edge_vary;
mod geodns;
mod purge;
mod purge_nats;
mod purge_tls;
mod shield;
