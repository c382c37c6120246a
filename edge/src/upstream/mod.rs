//! The upstream layer: how a node talks to the servers behind it (origins, or the shield
//! tier) and decides which of them gets each request.
//!
//! The pooled HTTP client and the error every exchange fails with ([`client`], with the
//! client's own failures in [`fault`]), the 1xx heads an exchange forwards to the client
//! that caused it ([`interim`]), the header hygiene of a proxy ([`headers`]), a
//! site's servers ([`pool`]) with their balancing [`balance`] policies, [`health`]
//! (active probes, passive ejection) and [`retry_budget`], and the node's limit on
//! upstream work in flight ([`overload`]).
//!
//! Overload admission lives here, not in the node: a slot is held exactly while the node
//! waits on an upstream, and a shed request fails as an [`client::UpstreamError`]
//! (`Overloaded`) like any other exchange that could not be made, so the error type and
//! what produces it stay in one layer.
//!
//! This layer imports only the cache core below it (the request fields a fill forwards,
//! the boxed body error). It knows nothing of client connections, listeners, sites as a
//! node configures them, or metrics: a pool reports what happens to it through the
//! [`pool::PoolObserver`] trait the node implements, and is built from its own
//! [`pool::PoolConfig`].

pub mod balance;
pub mod client;
pub mod fault;
pub mod headers;
pub mod health;
pub mod interim;
pub mod overload;
pub mod pool;
pub mod retry_budget;
