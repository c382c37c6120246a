//! Whether each edge may appear in answers, from active HTTP probes of its `/healthz`.
//!
//! Invariants:
//! - An edge leaves answers after `fall` failed probes in a row and returns after `rise`
//!   good ones; nothing else changes its state, so an answer never holds an edge whose
//!   last `fall` probes failed.
//! - A new edge starts up: a server answers before its first probe round.
//! - An edge's state survives a config reload that keeps the edge (same region, address
//!   and probe URL).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

/// One edge's health and last reported load.
#[derive(Debug)]
pub struct EdgeHealth {
    up: AtomicBool,
    /// Open client connections the edge reported in its last good probe.
    load: AtomicU64,
    /// Consecutive agreeing probes against the current state: (good, bad).
    streak: Mutex<(u32, u32)>,
}

impl Default for EdgeHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            load: AtomicU64::new(0),
            streak: Mutex::new((0, 0)),
        }
    }
}

impl EdgeHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }

    /// Applies one probe result (`Some(load)` when it passed); returns the new state when
    /// it changed.
    pub fn record(&self, result: Option<u64>, rise: u32, fall: u32) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(PoisonError::into_inner);
        let up = self.is_up();
        match result {
            Some(load) => {
                self.load.store(load, Ordering::Relaxed);
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

/// One probe: `GET url` answering 2xx within `timeout`. The edge's load is the
/// `"connections"` number of its JSON body, when it says.
pub async fn probe(client: &ProbeClient, url: &http::Uri, timeout: Duration) -> Option<u64> {
    let exchange = async {
        let response = client.get(url.clone()).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let load = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("connections")?.as_u64())
            .unwrap_or(0);
        Some(load)
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
            h.record(Some(5), 2, 3),
            None,
            "a success restarts the count"
        );
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(None, 2, 3), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(Some(7), 2, 3), None);
        assert_eq!(h.record(Some(9), 2, 3), Some(true));
        assert!(h.is_up());
        assert_eq!(h.load(), 9);
    }
}
