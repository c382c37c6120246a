//! Whether each edge may appear in answers, from active HTTP probes of its `/healthz`.
//!
//! Invariants:
//! - An edge leaves answers after `fall` failed probes in a row and returns after `rise`
//!   good ones; nothing else changes its state, so an answer never holds an edge whose
//!   last `fall` probes failed.
//! - A new edge starts up: a server answers before its first probe round.
//! - An edge's state survives a config reload that keeps the edge (same region, address
//!   and probe URL).
//! - A passing probe also says whether the edge is `degraded` (it serves what it holds but
//!   cannot fill misses: every upstream of a site is down) and its load; both are taken
//!   from the latest passing probe, since the edge applied its own rise/fall to them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use node_api::{HealthReport, NodeState};

/// What a passing probe learnt from the edge's [`HealthReport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probed {
    /// Open client connections.
    pub load: u64,
    /// The edge cannot fill misses (see [`NodeState::Degraded`]).
    pub degraded: bool,
}

/// One edge's health and last reported load.
#[derive(Debug)]
pub struct EdgeHealth {
    up: AtomicBool,
    degraded: AtomicBool,
    /// Open client connections the edge reported in its last good probe.
    load: AtomicU64,
    /// Consecutive agreeing probes against the current state: (good, bad).
    streak: Mutex<(u32, u32)>,
}

impl Default for EdgeHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            degraded: AtomicBool::new(false),
            load: AtomicU64::new(0),
            streak: Mutex::new((0, 0)),
        }
    }
}

impl EdgeHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Up, but reporting it cannot fill misses.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Up and able to fill misses: what a region needs to be preferred.
    pub fn is_ready(&self) -> bool {
        self.is_up() && !self.is_degraded()
    }

    pub fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }

    /// Applies one probe result (`Some` when it passed); returns the new up/down state
    /// when it changed.
    pub fn record(&self, result: Option<Probed>, rise: u32, fall: u32) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(PoisonError::into_inner);
        let up = self.is_up();
        match result {
            Some(Probed { load, degraded }) => {
                self.load.store(load, Ordering::Relaxed);
                self.degraded.store(degraded, Ordering::Release);
                *streak = (streak.0 + 1, 0);
                if !up && streak.0 >= rise.max(1) {
                    self.up.store(true, Ordering::Release);
                    return Some(true);
                }
            }
            None => {
                *streak = (0, streak.1 + 1);
                if up && streak.1 >= fall.max(1) {
                    self.up.store(false, Ordering::Release);
                    self.load.store(0, Ordering::Relaxed);
                    return Some(false);
                }
            }
        }
        None
    }
}

/// The HTTP client probes use.
pub type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

pub fn probe_client() -> ProbeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// One probe: `GET url` answering 2xx within `timeout`. Load and state come from the
/// body when it is a node's [`HealthReport`]; any other 2xx body is a ready edge with no
/// load reported (a plain health endpoint in front of something else).
pub async fn probe(client: &ProbeClient, url: &http::Uri, timeout: Duration) -> Option<Probed> {
    let exchange = async {
        let response = client.get(url.clone()).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let probed = serde_json::from_slice::<HealthReport>(&body)
            .map(|report| Probed {
                load: report.connections,
                degraded: report.state == NodeState::Degraded,
            })
            .unwrap_or_default();
        Some(probed)
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_goes_down_after_fall_failures_and_up_after_rise_successes() {
        let h = EdgeHealth::default();
        assert!(h.is_up());
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(
            h.record(Some(probed(5)), 2, 3),
            None,
            "a success restarts the count"
        );
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(None, 2, 3), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(Some(probed(7)), 2, 3), None);
        assert_eq!(h.record(Some(probed(9)), 2, 3), Some(true));
        assert!(h.is_up());
        assert_eq!(h.load(), 9);
    }

    fn probed(load: u64) -> Probed {
        Probed {
            load,
            degraded: false,
        }
    }

    #[test]
    fn a_degraded_edge_is_up_but_not_ready_until_a_probe_says_otherwise() {
        let h = EdgeHealth::default();
        let degraded = Probed {
            load: 1,
            degraded: true,
        };
        assert_eq!(h.record(Some(degraded), 2, 3), None);
        assert!(h.is_up() && h.is_degraded() && !h.is_ready());
        h.record(Some(probed(1)), 2, 3);
        assert!(h.is_ready());
    }
}
