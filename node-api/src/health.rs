//! The health report a node serves at `GET /healthz` on its admin listener.
//!
//! Read by GeoDNS (which edges to answer with, and their load for spillover) and by the
//! pools of the tier below (an edge probing its shields). The HTTP status carries the
//! coarse verdict every generic checker understands: `200` while the node takes traffic
//! (`ready` or `degraded`), `503` while it is draining. The body says more.

use serde::{Deserialize, Serialize};

/// A node's state, coarsest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Serving, and able to fill misses for every site.
    #[default]
    Ready,
    /// Serving what it holds, but some site has no reachable upstream (every server of its
    /// pool down by probes), so its misses cannot be filled. GeoDNS sends clients to a
    /// region whose edges are `Ready` when there is one, and to degraded edges only when
    /// no region has better. Answered with `200`: the node still serves hits, and a
    /// shield whose origins are down still holds what its edges need.
    Degraded,
    /// Taken out of rotation (a drill, maintenance, shutdown): answered with `503`.
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Degraded => "degraded",
            NodeState::Draining => "draining",
        }
    }

    /// Whether the node takes traffic at all (`/healthz` answers `200`).
    pub fn takes_traffic(self) -> bool {
        self != NodeState::Draining
    }
}

/// The body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub node: String,
    /// Answering at all.
    pub live: bool,
    /// Takes traffic: `state` is not `draining` (kept for checkers that read a boolean).
    pub ready: bool,
    pub state: NodeState,
    /// Sites whose every upstream server is down by probes (why the node is `degraded`).
    #[serde(default)]
    pub upstreams_down: Vec<String>,
    /// Open client connections: the load GeoDNS sums per region to spill clients.
    pub connections: u64,
    /// Upstream requests in flight, of `upstream_capacity` slots.
    #[serde(default)]
    pub upstream_in_flight: u64,
    #[serde(default)]
    pub upstream_capacity: u64,
    /// Upstream requests shed since start.
    #[serde(default)]
    pub shed: u64,
    /// Client requests since start by what the cache did: readers (the operator console)
    /// turn two reports into requests per second and a hit ratio.
    #[serde(default)]
    pub requests: RequestCounts,
}

/// Client requests a node answered since it started, by cache outcome (the labels of its
/// `edge_requests_total` metric).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub hit: u64,
    pub miss: u64,
    pub stale: u64,
    pub pass: u64,
    pub refused: u64,
    pub error: u64,
}

impl RequestCounts {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.hit + self.miss + self.stale + self.pass + self.refused + self.error
    }

    /// Requests the cache looked up (a hit, a miss or a stale copy): the hit ratio's
    /// denominator, as in the `edge_cache_hit_ratio` metric.
    pub fn lookups(&self) -> u64 {
        self.hit + self.miss + self.stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_round_trips_and_names_its_state_in_snake_case() {
        let report = HealthReport {
            node: "edge-1".into(),
            live: true,
            ready: true,
            state: NodeState::Degraded,
            upstreams_down: vec!["assets".into()],
            connections: 3,
            upstream_in_flight: 1,
            upstream_capacity: 256,
            shed: 0,
            requests: RequestCounts {
                hit: 3,
                miss: 1,
                ..RequestCounts::default()
            },
        };
        let text = serde_json::to_string(&report).expect("serializes");
        assert!(text.contains(r#""state":"degraded""#), "{text}");
        let back: HealthReport = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, report);
        assert!(NodeState::Degraded.takes_traffic() && !NodeState::Draining.takes_traffic());
        assert_eq!((back.requests.total(), back.requests.lookups()), (4, 4));
    }

    #[test]
    fn a_report_without_request_counts_still_parses() {
        let text = r#"{"node":"e","live":true,"ready":true,"state":"ready","connections":0}"#;
        let report: HealthReport = serde_json::from_str(text).expect("parses");
        assert_eq!(report.requests, RequestCounts::default());
    }
}
