//! The purge API's metrics: purges accepted and shed, how long accepted purges take to be
//! applied on every node, and nodes that refuse what is pushed to them. Node labels are
//! the configured node names, so they stay bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    accepted: Counter,
    shed: Family<ReasonLabel, Counter>,
    propagation: Histogram,
    head: Gauge,
    lag: Gauge,
    too_large: Family<NodeLabel, Counter>,
    stuck: Family<NodeLabel, Gauge>,
    pushes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("purge");
        let accepted = Counter::default();
        registry.register(
            "accepted",
            "Purges durably logged and answered 202",
            accepted.clone(),
        );
        let shed = Family::<ReasonLabel, Counter>::default();
        registry.register("shed", "Purges refused under load, by reason", shed.clone());
        let propagation = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        registry.register(
            "propagation_seconds",
            "From accepting a purge to every node having applied it",
            propagation.clone(),
        );
        let head = Gauge::default();
        registry.register(
            "log_head",
            "Newest sequence number in the log",
            head.clone(),
        );
        let lag = Gauge::default();
        registry.register(
            "max_node_lag",
            "Purges the most lagging node has not applied yet",
            lag.clone(),
        );
        let too_large = Family::<NodeLabel, Counter>::default();
        registry.register(
            "push_too_large",
            "Batches a node refused as too large (413); the API then sends smaller ones",
            too_large.clone(),
        );
        let stuck = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "node_stuck",
            "1 while a node refuses the next purge itself (a 4xx even for a batch of one): \
             it gets no further purges until an operator fixes it",
            stuck.clone(),
        );
        let pushes = Counter::default();
        registry.register(
            "pushes",
            "Batches of purges pushed to nodes (requests to their admin APIs), over all nodes: \
             divided by purges times nodes, how well pushes are coalesced",
            pushes.clone(),
        );
        Self {
            registry,
            accepted,
            shed,
            propagation,
            head,
            lag,
            too_large,
            stuck,
            pushes,
        }
    }
}

impl Metrics {
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    pub fn shed(&self, reason: &'static str) {
        self.shed.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn propagated(&self, took: Duration) {
        self.propagation.observe(took.as_secs_f64());
    }

    /// A batch was pushed to a node (whatever it answered).
    pub fn pushed(&self) {
        self.pushes.inc();
    }

    /// `node` answered `413` to a batch.
    pub fn push_too_large(&self, node: &str) {
        self.too_large
            .get_or_create(&NodeLabel {
                node: node.to_owned(),
            })
            .inc();
    }

    /// Whether `node` refuses the next purge outright.
    pub fn set_stuck(&self, node: &str, stuck: bool) {
        self.stuck
            .get_or_create(&NodeLabel {
                node: node.to_owned(),
            })
            .set(i64::from(stuck));
    }

    pub fn render(&self, head: u64, lag: u64) -> String {
        self.head.set(i64::try_from(head).unwrap_or(i64::MAX));
        self.lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
