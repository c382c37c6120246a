//! GeoDNS metrics, in Prometheus text format at the admin `/metrics`.
//!
//! Labels are bounded: query types outside a fixed set count as `other`, regions and
//! edges come from the config, and `path` says which path answered a query
//! ([`AnswerPath`]).

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::general::Dropped;

/// Which path answered a query: the `path` label of `geodns_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerPath {
    /// [`crate::fast_path`]: the common UDP query, answered in place.
    Fast,
    /// [`crate::general`]: every TCP message and the UDP queries the fast path declines.
    General,
}

impl AnswerPath {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::General => "general",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: &'static str,
    rcode: &'static str,
    region: String,
    transport: &'static str,
    path: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeLabels {
    region: String,
    edge: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    region: String,
    edge: String,
    to: &'static str,
}

/// Every metric of the server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queries: Family<QueryLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    edge_up: Family<EdgeLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("geodns");
        let queries = Family::<QueryLabels, Counter>::default();
        registry.register(
            "queries",
            "Queries answered, by type, response code, region answered, transport and the path that answered (fast or general)",
            queries.clone(),
        );
        let dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "messages_dropped",
            "Messages dropped unanswered, by reason (short: no DNS header; response: QR=1) and transport",
            dropped.clone(),
        );
        let edge_up = Family::<EdgeLabels, Gauge>::default();
        registry.register(
            "edge_up",
            "1 while an edge passes its health probes and may appear in answers",
            edge_up.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "edge_health_changes",
            "Edges going down or coming back up",
            transitions.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, applied or refused",
            reloads.clone(),
        );
        Self {
            registry,
            queries,
            dropped,
            edge_up,
            transitions,
            reloads,
        }
    }
}

impl Metrics {
    /// A query answered by the general path.
    pub fn query(&self, qtype: RecordType, rcode: ResponseCode, region: &str, tcp: bool) {
        self.queries
            .get_or_create(&QueryLabels {
                qtype: qtype_label(qtype),
                rcode: rcode_label(rcode),
                region: region.to_owned(),
                transport: if tcp { "tcp" } else { "udp" },
                path: AnswerPath::General.as_str(),
            })
            .inc();
    }

    /// `n` queries of one type answered by the fast path (UDP, NOERROR) for `region`, at
    /// once: the UDP loop counts locally, then adds.
    pub fn fast_answers(&self, qtype: RecordType, region: &str, n: u64) {
        self.queries
            .get_or_create(&QueryLabels {
                qtype: qtype_label(qtype),
                rcode: rcode_label(ResponseCode::NoError),
                region: region.to_owned(),
                transport: "udp",
                path: AnswerPath::Fast.as_str(),
            })
            .inc_by(n);
    }

    /// A message dropped without an answer.
    pub fn dropped(&self, reason: Dropped, tcp: bool) {
        self.dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
                transport: if tcp { "tcp" } else { "udp" },
            })
            .inc();
    }

    pub fn edge_state(&self, region: &str, edge: &str, up: bool) {
        self.edge_up
            .get_or_create(&EdgeLabels {
                region: region.to_owned(),
                edge: edge.to_owned(),
            })
            .set(i64::from(up));
    }

    pub fn edge_transition(&self, region: &str, edge: &str, up: bool) {
        self.transitions
            .get_or_create(&TransitionLabels {
                region: region.to_owned(),
                edge: edge.to_owned(),
                to: if up { "up" } else { "down" },
            })
            .inc();
        self.edge_state(region, edge, up);
    }

    pub fn reload(&self, applied: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if applied { "applied" } else { "refused" },
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn qtype_label(qtype: RecordType) -> &'static str {
    match qtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::CNAME => "CNAME",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        RecordType::TXT => "TXT",
        RecordType::MX => "MX",
        RecordType::HTTPS => "HTTPS",
        _ => "other",
    }
}

fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}
