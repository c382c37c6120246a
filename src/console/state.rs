//! What the console shows: one [`Snapshot`] of the whole topology, built from a
//! [`Sample`] (every node's, GeoDNS's and the purge API's answers to one round of
//! questions) and what the previous rounds saw.
//!
//! Nothing here touches the network, so every decision (a node that did not answer is
//! down, requests per second and the hit ratio from two rounds' counters, which purges
//! reached which node, what changed since the last round) is tested without sockets.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use node_api::purge::{Mode, PurgeSummary, RecentPurges};
use node_api::{HealthReport, NodeState, RequestCounts};
use serde::Serialize;

use crate::drill::Answer;
use crate::endpoints::{Endpoints, NodeEndpoint};

/// A node's health as the console shows it: its own [`NodeState`], or `down` when it did
/// not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ready,
    Degraded,
    Draining,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Degraded => "degraded",
            Health::Draining => "draining",
            Health::Down => "down",
        }
    }

    fn of(state: NodeState) -> Self {
        match state {
            NodeState::Ready => Health::Ready,
            NodeState::Degraded => Health::Degraded,
            NodeState::Draining => Health::Draining,
        }
    }

    /// A region's health from its edges': `ready` when all are, `degraded` when some take
    /// traffic and some do not (or are degraded), `draining` when none takes traffic and
    /// some drain (a drill), `down` when none answers.
    pub fn of_region(edges: impl IntoIterator<Item = Health>) -> Self {
        let (mut all_ready, mut serving, mut draining, mut any) = (true, false, false, false);
        for health in edges {
            any = true;
            all_ready &= health == Health::Ready;
            serving |= matches!(health, Health::Ready | Health::Degraded);
            draining |= health == Health::Draining;
        }
        if any && all_ready {
            Health::Ready
        } else if serving {
            Health::Degraded
        } else if draining {
            Health::Draining
        } else {
            Health::Down
        }
    }
}

/// What kind of node a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Edge,
    Shield,
}

/// Every node of the topology in the order a [`Sample`] holds them: the edges region by
/// region, then the shields.
pub fn nodes(endpoints: &Endpoints) -> Vec<(Role, &NodeEndpoint)> {
    endpoints
        .edges()
        .map(|(_, e)| (Role::Edge, e))
        .chain(endpoints.shields.iter().map(|s| (Role::Shield, s)))
        .collect()
}

/// One round of answers.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the round started.
    pub at: Instant,
    /// The same, in Unix milliseconds, for the page.
    pub at_ms: u64,
    /// One per node, in the order of [`nodes`].
    pub nodes: Vec<NodeSample>,
    /// One per region, in the endpoints' order: what GeoDNS answers one of its clients.
    pub answers: Vec<Result<Answer, String>>,
    /// Whether GeoDNS's admin listener answered.
    pub geodns: Result<(), String>,
    /// The purge API's recent purges (of the endpoints' publisher).
    pub purges: Result<RecentPurges, String>,
}

/// A node's answers.
#[derive(Debug, Clone)]
pub struct NodeSample {
    pub health: Result<HealthReport, String>,
    /// Its purge watermark (`GET /v1/purge/applied`).
    pub applied: Result<u64, String>,
}

/// The whole topology, as `GET /api/state` serves it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub taken_at_ms: u64,
    pub zone: String,
    /// The name GeoDNS is asked for (the first site's).
    pub site: Option<String>,
    pub regions: Vec<RegionView>,
    pub shields: Vec<NodeView>,
    pub geodns: ServiceView,
    pub purge_api: ServiceView,
    /// Recent purges, newest first.
    pub purges: Vec<PurgeView>,
    /// Regions whose clients GeoDNS sends elsewhere, and edges out of rotation: a drill or
    /// an outage, as one line each.
    pub drill: Vec<String>,
    /// What changed, newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionView {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub clients: Vec<String>,
    pub health: Health,
    pub edges: Vec<NodeView>,
    pub dns: DnsView,
}

/// What GeoDNS answers a client of the region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DnsView {
    /// The client network asked as (EDNS Client Subnet).
    pub client: Option<String>,
    /// The region the answer's CNAME names.
    pub region: Option<String>,
    /// The edges the answer holds, by name (an address of no edge by itself).
    pub edges: Vec<String>,
    /// The answer names another region: the region's clients failed over.
    pub away: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    pub role: Role,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub health: Health,
    /// Open client connections.
    pub connections: u64,
    /// Client requests per second since the previous round.
    pub requests_per_s: Option<f64>,
    /// Hits among the lookups since the previous round (none without lookups).
    pub hit_ratio: Option<f64>,
    /// Hits among every lookup since the node started.
    pub hit_ratio_total: Option<f64>,
    pub requests_total: u64,
    pub upstream: UpstreamView,
    /// The node's purge watermark.
    pub applied: Option<u64>,
    /// Why the node is shown down (or its watermark unknown).
    pub error: Option<String>,
}

/// The node's side towards its upstreams.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamView {
    pub in_flight: u64,
    pub capacity: u64,
    /// Sites whose every upstream server is down by probes.
    pub down: Vec<String>,
    /// Upstream requests shed since start.
    pub shed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub address: String,
    pub up: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PurgeView {
    pub id: String,
    pub seq: u64,
    pub site: String,
    pub selector: String,
    pub targets: usize,
    pub mode: Mode,
    pub accepted_at_ms: u64,
    /// Nodes whose watermark has reached it, of every node of the topology.
    pub applied: usize,
    pub expected: usize,
    pub nodes: Vec<PurgeNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeNode {
    pub name: String,
    pub applied: bool,
}

/// A change the console saw between two rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    /// `health`, `dns` or `purge`.
    pub kind: &'static str,
    pub text: String,
}

/// Requests per second and hit ratio between two rounds of one node's counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rate {
    pub per_second: Option<f64>,
    pub hit_ratio: Option<f64>,
}

impl Rate {
    /// From `before` (the previous round's time and counters, if any) to `now`. Nothing
    /// when there is no previous round, no time passed, or a counter went back (the node
    /// restarted): a rate over a restart would be made up.
    pub fn between(
        before: Option<(Instant, RequestCounts)>,
        now: (Instant, RequestCounts),
    ) -> Self {
        let Some((then, old)) = before else {
            return Rate::default();
        };
        let (at, new) = now;
        let seconds = at.saturating_duration_since(then).as_secs_f64();
        let fields = |c: &RequestCounts| [c.hit, c.miss, c.stale, c.pass, c.refused, c.error];
        let went_back = fields(&new)
            .iter()
            .zip(fields(&old))
            .any(|(new, old)| *new < old);
        if seconds <= 0.0 || went_back {
            return Rate::default();
        }
        let lookups = new.lookups() - old.lookups();
        Rate {
            per_second: Some((new.total() - old.total()) as f64 / seconds),
            hit_ratio: (lookups > 0).then(|| (new.hit - old.hit) as f64 / lookups as f64),
        }
    }
}

/// How many events the console keeps.
const EVENTS: usize = 50;

/// Builds snapshots, remembering what the previous rounds saw.
#[derive(Debug)]
pub struct Collector {
    endpoints: Endpoints,
    /// Each node's counters at the previous round.
    counters: HashMap<String, (Instant, RequestCounts)>,
    /// Each node's health, each region's answer and each purge's completion at the
    /// previous round (empty before the first).
    health: HashMap<String, Health>,
    answers: HashMap<String, String>,
    purges_done: HashMap<u64, bool>,
    first: bool,
    events: VecDeque<Event>,
}

impl Collector {
    pub fn new(endpoints: Endpoints) -> Self {
        Self {
            endpoints,
            counters: HashMap::new(),
            health: HashMap::new(),
            answers: HashMap::new(),
            purges_done: HashMap::new(),
            first: true,
            events: VecDeque::new(),
        }
    }

    /// Asks about `endpoints` from now on (a reloaded topology): what was seen of the
    /// nodes and regions that remain, by name, is kept.
    pub fn set_endpoints(&mut self, endpoints: Endpoints) {
        self.endpoints = endpoints;
    }

    /// The snapshot of one round.
    pub fn snapshot(&mut self, sample: Sample) -> Snapshot {
        let endpoints = self.endpoints.clone();
        let mut views: Vec<NodeView> = nodes(&endpoints)
            .into_iter()
            .zip(&sample.nodes)
            .map(|((role, node), got)| self.node(role, node, got, sample.at))
            .collect();
        let shields = views.split_off(endpoints.edges().count());
        let mut edges = views.into_iter();
        let by_address: HashMap<IpAddr, &str> = endpoints
            .edges()
            .map(|(_, e)| (e.public.ip(), e.name.as_str()))
            .collect();
        let regions: Vec<RegionView> = endpoints
            .regions
            .iter()
            .zip(&sample.answers)
            .map(|(region, answer)| {
                let edges: Vec<NodeView> = edges.by_ref().take(region.edges.len()).collect();
                let dns = match answer {
                    Ok(answer) => DnsView {
                        client: region.clients.first().cloned(),
                        away: answer.region != region.name,
                        region: Some(answer.region.clone()),
                        edges: edge_names(&answer.addresses, &by_address),
                        error: None,
                    },
                    Err(e) => DnsView {
                        client: region.clients.first().cloned(),
                        error: Some(e.clone()),
                        ..DnsView::default()
                    },
                };
                RegionView {
                    name: region.name.clone(),
                    lat: region.lat,
                    lon: region.lon,
                    clients: region.clients.clone(),
                    health: Health::of_region(edges.iter().map(|e| e.health)),
                    edges,
                    dns,
                }
            })
            .collect();
        let watermarks: Vec<(&str, Option<u64>)> = regions
            .iter()
            .flat_map(|r| &r.edges)
            .chain(&shields)
            .map(|n| (n.name.as_str(), n.applied))
            .collect();
        let (purges, purge_api) = match &sample.purges {
            Ok(recent) => (
                recent
                    .purges
                    .iter()
                    .map(|p| PurgeView::of(p, &watermarks))
                    .collect(),
                ServiceView {
                    address: endpoints.purge_api.clone(),
                    up: true,
                    error: None,
                },
            ),
            Err(e) => (
                Vec::new(),
                ServiceView {
                    address: endpoints.purge_api.clone(),
                    up: false,
                    error: Some(e.clone()),
                },
            ),
        };
        let mut snapshot = Snapshot {
            taken_at_ms: sample.at_ms,
            zone: endpoints.zone.clone(),
            site: endpoints.sites.first().map(|s| s.cname.clone()),
            drill: drill_lines(&regions, &shields),
            regions,
            shields,
            geodns: ServiceView {
                address: endpoints.geodns.dns.to_string(),
                up: sample.geodns.is_ok(),
                error: sample.geodns.err(),
            },
            purge_api,
            purges,
            events: Vec::new(),
        };
        self.record_changes(&snapshot, sample.at_ms);
        snapshot.events = self.events.iter().cloned().collect();
        snapshot
    }

    fn node(&mut self, role: Role, node: &NodeEndpoint, got: &NodeSample, at: Instant) -> NodeView {
        let mut view = NodeView {
            name: node.name.clone(),
            role,
            public: node.public,
            admin: node.admin,
            health: Health::Down,
            connections: 0,
            requests_per_s: None,
            hit_ratio: None,
            hit_ratio_total: None,
            requests_total: 0,
            upstream: UpstreamView::default(),
            applied: got.applied.as_ref().ok().copied(),
            error: None,
        };
        match &got.health {
            Ok(report) => {
                let counts = report.requests;
                let rate = Rate::between(
                    self.counters.insert(node.name.clone(), (at, counts)),
                    (at, counts),
                );
                view.health = Health::of(report.state);
                view.connections = report.connections;
                view.requests_per_s = rate.per_second;
                view.hit_ratio = rate.hit_ratio;
                view.hit_ratio_total =
                    (counts.lookups() > 0).then(|| counts.hit as f64 / counts.lookups() as f64);
                view.requests_total = counts.total();
                view.upstream = UpstreamView {
                    in_flight: report.upstream_in_flight,
                    capacity: report.upstream_capacity,
                    down: report.upstreams_down.clone(),
                    shed: report.shed,
                };
                view.error = got.applied.as_ref().err().cloned();
            }
            Err(e) => {
                // No rate across an outage: the next answer starts a new window.
                self.counters.remove(&node.name);
                view.error = Some(e.clone());
            }
        }
        view
    }

    /// Adds an event for every node whose health, region whose answer and purge whose
    /// completion changed since the previous round.
    fn record_changes(&mut self, snapshot: &Snapshot, at_ms: u64) {
        let mut new = Vec::new();
        let nodes = snapshot
            .regions
            .iter()
            .flat_map(|r| &r.edges)
            .chain(&snapshot.shields);
        for node in nodes {
            let before = self.health.insert(node.name.clone(), node.health);
            if let Some(before) = before.filter(|b| *b != node.health) {
                new.push((
                    "health",
                    format!(
                        "{} {} → {}",
                        node.name,
                        before.as_str(),
                        node.health.as_str()
                    ),
                ));
            }
        }
        for region in &snapshot.regions {
            let answer = answer_text(&region.dns);
            let before = self.answers.insert(region.name.clone(), answer.clone());
            if let Some(before) = before.filter(|b| *b != answer) {
                new.push((
                    "dns",
                    format!("clients of {}: {before} → {answer}", region.name),
                ));
            }
        }
        for purge in &snapshot.purges {
            let done = purge.applied == purge.expected;
            let before = self.purges_done.insert(purge.seq, done);
            // A purge first seen already complete was sent before the console looked,
            // or completed within one round: either way, say it once it is seen.
            if done && before != Some(true) && !self.first {
                new.push((
                    "purge",
                    format!(
                        "purge {} ({} {}) applied on {}/{} nodes",
                        purge.id, purge.selector, purge.site, purge.applied, purge.expected
                    ),
                ));
            }
        }
        self.purges_done
            .retain(|seq, _| snapshot.purges.iter().any(|p| p.seq == *seq));
        self.first = false;
        for (kind, text) in new {
            self.events.push_front(Event { at_ms, kind, text });
        }
        self.events.truncate(EVENTS);
    }
}

impl PurgeView {
    /// A purge's progress over `nodes` (each node's name and watermark, when known): a
    /// node has applied it once its watermark reaches the purge's sequence number.
    pub fn of(summary: &PurgeSummary, nodes: &[(&str, Option<u64>)]) -> Self {
        let nodes: Vec<PurgeNode> = nodes
            .iter()
            .map(|(name, applied)| PurgeNode {
                name: (*name).to_owned(),
                applied: applied.is_some_and(|a| a >= summary.seq),
            })
            .collect();
        PurgeView {
            id: summary.id.clone(),
            seq: summary.seq,
            site: summary.site.clone(),
            selector: summary.selector.clone(),
            targets: summary.targets,
            mode: summary.mode,
            accepted_at_ms: summary.accepted_at_ms,
            applied: nodes.iter().filter(|n| n.applied).count(),
            expected: nodes.len(),
            nodes,
        }
    }
}

/// The edges an answer holds, by name (an address of no edge as itself), sorted: GeoDNS
/// rotates the order of its addresses, which is no change of answer.
fn edge_names(addresses: &[IpAddr], by_address: &HashMap<IpAddr, &str>) -> Vec<String> {
    let mut names: Vec<String> = addresses
        .iter()
        .map(|a| by_address.get(a).map_or(a.to_string(), |n| (*n).to_owned()))
        .collect();
    names.sort();
    names
}

/// `eu-west (eu-west-1, eu-west-2)`, or what went wrong.
fn answer_text(dns: &DnsView) -> String {
    match (&dns.region, &dns.error) {
        (Some(region), _) => format!("{region} ({})", dns.edges.join(", ")),
        (None, Some(error)) => format!("no answer ({error})"),
        (None, None) => "no answer".to_owned(),
    }
}

/// One line per region whose clients are sent elsewhere or whose edges are out of
/// rotation, and per shield out of rotation.
fn drill_lines(regions: &[RegionView], shields: &[NodeView]) -> Vec<String> {
    let mut lines = Vec::new();
    for region in regions {
        let out: Vec<String> = region
            .edges
            .iter()
            .filter(|e| !matches!(e.health, Health::Ready | Health::Degraded))
            .map(|e| format!("{} {}", e.name, e.health.as_str()))
            .collect();
        if region.dns.away {
            lines.push(format!(
                "{}: clients failed over to {} ({}){}",
                region.name,
                region.dns.region.as_deref().unwrap_or("?"),
                region.dns.edges.join(", "),
                if out.is_empty() {
                    String::new()
                } else {
                    format!("; {}", out.join(", "))
                }
            ));
        } else if !out.is_empty() {
            lines.push(format!("{}: {}", region.name, out.join(", ")));
        }
    }
    for shield in shields {
        if !matches!(shield.health, Health::Ready | Health::Degraded) {
            lines.push(format!("{} {}", shield.name, shield.health.as_str()));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::topology::Topology;

    fn counts(hit: u64, miss: u64, pass: u64) -> RequestCounts {
        RequestCounts {
            hit,
            miss,
            pass,
            ..RequestCounts::default()
        }
    }

    #[test]
    fn rates_come_from_counter_deltas_over_the_time_between_rounds() {
        let then = Instant::now();
        let now = then + Duration::from_secs(2);
        let rate = Rate::between(Some((then, counts(10, 10, 0))), (now, counts(40, 20, 10)));
        // 50 requests in 2 s; 30 hits of 40 lookups (the passes looked nothing up).
        assert_eq!(rate.per_second, Some(25.0));
        assert_eq!(rate.hit_ratio, Some(0.75));
    }

    #[test]
    fn no_rate_without_a_previous_round_time_or_lookups_nor_across_a_restart() {
        let then = Instant::now();
        let now = then + Duration::from_secs(1);
        assert_eq!(Rate::between(None, (now, counts(5, 5, 0))), Rate::default());
        assert_eq!(
            Rate::between(Some((now, counts(1, 1, 0))), (now, counts(2, 2, 0))),
            Rate::default()
        );
        let restarted = Rate::between(Some((then, counts(100, 5, 0))), (now, counts(3, 9, 0)));
        assert_eq!(restarted, Rate::default());
        let only_passes = Rate::between(Some((then, counts(1, 1, 0))), (now, counts(1, 1, 4)));
        assert_eq!(
            (only_passes.per_second, only_passes.hit_ratio),
            (Some(4.0), None)
        );
    }

    #[test]
    fn a_region_is_as_healthy_as_its_edges_together() {
        use Health::*;
        assert_eq!(Health::of_region([Ready, Ready]), Ready);
        assert_eq!(Health::of_region([Ready, Draining]), Degraded);
        assert_eq!(Health::of_region([Degraded, Down]), Degraded);
        assert_eq!(Health::of_region([Draining, Down]), Draining);
        assert_eq!(Health::of_region([Down, Down]), Down);
        assert_eq!(Health::of_region([]), Down);
    }

    #[test]
    fn a_purge_reaches_a_node_when_its_watermark_does() {
        let summary = PurgeSummary {
            id: "7".into(),
            seq: 7,
            site: "demo".into(),
            selector: "urls".into(),
            targets: 1,
            mode: Mode::Hard,
            accepted_at_ms: 1,
            expected: 3,
            applied: 1,
            lagging: vec![],
        };
        let view = PurgeView::of(&summary, &[("a", Some(9)), ("b", Some(6)), ("c", None)]);
        assert_eq!((view.applied, view.expected), (1, 3));
        assert_eq!(
            view.nodes.iter().map(|n| n.applied).collect::<Vec<_>>(),
            [true, false, false]
        );
    }

    fn endpoints() -> Endpoints {
        Endpoints::planned(&Topology::default_local()).expect("fixed ports")
    }

    fn report(name: &str, state: NodeState, requests: RequestCounts) -> HealthReport {
        HealthReport {
            node: name.into(),
            live: true,
            ready: state.takes_traffic(),
            state,
            upstreams_down: vec![],
            connections: 2,
            upstream_in_flight: 0,
            upstream_capacity: 256,
            shed: 0,
            requests,
        }
    }

    /// A round where every node answers `state` with `requests`, except those `down`, and
    /// GeoDNS answers every region's clients with `answer(region)`.
    fn sample(
        endpoints: &Endpoints,
        at: Instant,
        down: &[&str],
        draining: &[&str],
        requests: RequestCounts,
        answer: impl Fn(&str) -> Answer,
    ) -> Sample {
        Sample {
            at,
            at_ms: 1_000,
            nodes: nodes(endpoints)
                .iter()
                .map(|(_, n)| NodeSample {
                    health: if down.contains(&n.name.as_str()) {
                        Err(format!("{}: no answer", n.name))
                    } else if draining.contains(&n.name.as_str()) {
                        Ok(report(&n.name, NodeState::Draining, requests))
                    } else {
                        Ok(report(&n.name, NodeState::Ready, requests))
                    },
                    applied: Ok(3),
                })
                .collect(),
            answers: endpoints
                .regions
                .iter()
                .map(|r| Ok(answer(&r.name)))
                .collect(),
            geodns: Ok(()),
            purges: Ok(RecentPurges {
                head: 0,
                purges: vec![],
            }),
        }
    }

    fn home(endpoints: &Endpoints) -> impl Fn(&str) -> Answer + '_ {
        |region| Answer {
            region: region.to_owned(),
            addresses: endpoints
                .region(region)
                .expect("region")
                .edges
                .iter()
                .map(|e| e.public.ip())
                .collect(),
            ttl: 20,
        }
    }

    #[test]
    fn a_node_that_does_not_answer_is_shown_down_and_the_rest_as_they_report() {
        let endpoints = endpoints();
        let mut collector = Collector::new(endpoints.clone());
        let now = Instant::now();
        let snapshot = collector.snapshot(sample(
            &endpoints,
            now,
            &["us-east-2"],
            &["eu-west-1"],
            counts(1, 1, 0),
            home(&endpoints),
        ));
        let row = |name: &str| {
            snapshot
                .regions
                .iter()
                .flat_map(|r| &r.edges)
                .find(|e| e.name == name)
                .expect("edge")
                .clone()
        };
        let down = row("us-east-2");
        assert_eq!(down.health, Health::Down);
        assert!(
            down.error
                .as_deref()
                .is_some_and(|e| e.contains("no answer"))
        );
        assert_eq!(row("eu-west-1").health, Health::Draining);
        assert_eq!(row("eu-west-2").health, Health::Ready);
        assert_eq!(row("eu-west-2").connections, 2);
        assert_eq!(snapshot.regions[0].health, Health::Degraded);
        assert_eq!(snapshot.shields[0].name, "shield-1");
        assert_eq!(
            snapshot.regions[0].dns.edges,
            ["eu-west-1", "eu-west-2"],
            "addresses are named by their edges"
        );
        assert_eq!(
            snapshot.drill,
            ["eu-west: eu-west-1 draining", "us-east: us-east-2 down"]
        );
        // The JSON names states as the page reads them.
        let json = serde_json::to_string(&snapshot).expect("serializes");
        assert!(json.contains(r#""health":"draining""#), "{json}");
    }

    #[test]
    fn the_second_round_has_rates_and_events_for_what_changed() {
        let endpoints = endpoints();
        let mut collector = Collector::new(endpoints.clone());
        let then = Instant::now();
        let first = collector.snapshot(sample(
            &endpoints,
            then,
            &[],
            &[],
            counts(0, 10, 0),
            home(&endpoints),
        ));
        assert!(first.events.is_empty(), "{:?}", first.events);
        assert_eq!(first.regions[0].edges[0].requests_per_s, None);

        // eu-west is drained; its clients are answered with us-east.
        // GeoDNS rotates its addresses: no change of answer.
        let failed_over = |region: &str| {
            let mut answer = home(&endpoints)(if region == "eu-west" {
                "us-east"
            } else {
                region
            });
            answer.addresses.reverse();
            answer
        };
        let second = collector.snapshot(sample(
            &endpoints,
            then + Duration::from_millis(500),
            &[],
            &["eu-west-1", "eu-west-2"],
            counts(15, 15, 0),
            failed_over,
        ));
        let edge = &second.regions[1].edges[0];
        assert_eq!(edge.requests_per_s, Some(40.0));
        assert_eq!(edge.hit_ratio, Some(0.75));
        assert_eq!(second.regions[0].health, Health::Draining);
        assert!(second.regions[0].dns.away);
        let texts: Vec<&str> = second.events.iter().map(|e| e.text.as_str()).collect();
        assert!(texts.contains(&"eu-west-1 ready → draining"), "{texts:?}");
        assert!(
            texts.contains(
                &"clients of eu-west: eu-west (eu-west-1, eu-west-2) → us-east (us-east-1, us-east-2)"
            ),
            "{texts:?}"
        );
        assert_eq!(
            second.events.len(),
            3,
            "two drained edges, one answer: {texts:?}"
        );
        assert!(
            second.drill[0].starts_with("eu-west: clients failed over to us-east"),
            "{:?}",
            second.drill
        );
    }
}
