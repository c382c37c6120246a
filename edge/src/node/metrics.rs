//! The node's Prometheus metrics.
//!
//! Labels are bounded by construction: cache outcomes, error kinds and no-cache reasons
//! come from enums, never from URLs or hosts. Counters used on every request are resolved
//! once at start-up, so the hot path pays one atomic add.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{StatusCode, Version};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::disk::RecoveryReport;
use crate::cache::hybrid::HybridStore;
use crate::cache::status::{NoCacheReason, Outcome};
use crate::cache::store::Usage;
use crate::upstream::health::State;
use crate::upstream::pool::PoolObserver;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    cache_status: String,
    version: &'static str,
}

/// The `version` label of `edge_requests_total`, by [`version_index`]: the HTTP version
/// the client spoke (HTTP/0.9, which no listener reads, would count as 1.0).
const VERSIONS: [&str; 4] = ["1.0", "1.1", "2", "3"];

fn version_index(version: Version) -> usize {
    match version {
        Version::HTTP_09 | Version::HTTP_10 => 0,
        Version::HTTP_2 => 2,
        Version::HTTP_3 => 3,
        _ => 1,
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViaLabel {
    via: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    site: String,
    server: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerResultLabel {
    site: String,
    server: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerStateLabel {
    site: String,
    server: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabel {
    result: String,
}

/// Every metric of one node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `edge_requests_total`, by outcome and then by [`version_index`]: resolved once, so
    /// a request pays one atomic add and no label lookup.
    by_outcome: [[Counter; VERSIONS.len()]; Outcome::ALL.len()],
    upstream_errors: Family<KindLabel, Counter>,
    not_stored: Family<ReasonLabel, Counter>,
    upstream_seconds: Histogram,
    coalesced: Counter,
    stored: Counter,
    cache_bytes: Gauge,
    cache_entries: Gauge,
    sealed_bodies: Gauge,
    hit_ratio: Gauge<f64, AtomicU64>,
    server_requests: Family<ServerResultLabel, Counter>,
    server_seconds: Family<ServerLabel, Histogram>,
    server_state: Family<ServerStateLabel, Gauge>,
    server_ejections: Family<ServerLabel, Counter>,
    retries: Family<RetryLabel, Counter>,
    purges: Family<KindLabel, Counter>,
    purge_watermark: Gauge,
    /// Config reloads by result (`applied`, `refused`).
    reloads: Family<ResultLabel, Counter>,
    /// Purges read from the NATS purge stream, by how (`live`, `catch_up`).
    stream_reads: Family<ViaLabel, Counter>,
    /// Registered only on a node that keeps a persisted state ([`Metrics::track_state`]).
    state: Option<StateGauges>,
    /// Registered only on a node with a disk tier ([`Metrics::track_disk`]).
    disk: Option<DiskMetrics>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

/// The disk tier's metrics: counters kept by the disk store and the hybrid store are
/// brought up to date when `/metrics` is rendered ([`Metrics::disk_snapshot`]).
#[derive(Debug, Clone)]
struct DiskMetrics {
    memory_hits: Counter,
    disk_hits: Counter,
    reads: Counter,
    read_bytes: Counter,
    read_seconds: Histogram,
    /// Time of each write of the disk tier's write buffer to its device.
    write_seconds: Histogram,
    writes: Counter,
    write_bytes: Counter,
    rejects: Family<ReasonLabel, Counter>,
    corrupt: Counter,
    reclaimed: Counter,
    write_errors: Counter,
    bytes: Gauge,
    entries: Gauge,
    index_bytes: Gauge,
    queued_bytes: Gauge,
    recovery_seconds: Gauge<f64, AtomicU64>,
    recovered_objects: Gauge,
}

/// Raises `counter` to `value` (a total kept elsewhere).
fn catch_up(counter: &Counter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

fn set(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// The persisted purge state's gauges (`node::state`).
#[derive(Debug, Clone, Default)]
struct StateGauges {
    watermark: Gauge,
    journal: Gauge,
    floor: Gauge,
}

impl Metrics {
    pub fn new(capacity: u64) -> Self {
        let mut registry = Registry::with_prefix("edge");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "requests",
            "Client requests by what the cache did (hit, miss, stale, pass, refused, error) and the HTTP version the client spoke (1.0, 1.1, 2, 3)",
            requests.clone(),
        );
        let by_outcome = Outcome::ALL.map(|o| {
            VERSIONS.map(|version| {
                requests
                    .get_or_create(&OutcomeLabel {
                        cache_status: o.as_str().to_owned(),
                        version,
                    })
                    .clone()
            })
        });
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges by kind",
            upstream_errors.clone(),
        );
        let not_stored = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "not_stored",
            "Upstream responses not stored, by reason",
            not_stored.clone(),
        );
        let upstream_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "upstream_response_seconds",
            "Time from sending an upstream request to its response head",
            upstream_seconds.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced",
            "Requests that waited on another request's upstream fetch",
            coalesced.clone(),
        );
        let stored = Counter::default();
        registry.register("stored", "Responses stored in the cache", stored.clone());
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes held by the cache (bodies, headers, keys)",
            cache_bytes.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Responses held by the cache",
            cache_entries.clone(),
        );
        let sealed_bodies = Gauge::default();
        registry.register(
            "cache_sealed_bodies",
            "Large bodies kept in sealed memory files, sent with sendfile (each holds one \
             file descriptor and one memory map; the process's, over all its caches)",
            sealed_bodies.clone(),
        );
        let cache_capacity: Gauge = Gauge::default();
        cache_capacity.set(i64::try_from(capacity).unwrap_or(i64::MAX));
        registry.register(
            "cache_capacity_bytes",
            "Configured cache capacity",
            cache_capacity,
        );
        let hit_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "cache_hit_ratio",
            "Hits over cacheable lookups (hit + miss + stale) since start",
            hit_ratio.clone(),
        );
        let server_requests = Family::<ServerResultLabel, Counter>::default();
        registry.register(
            "upstream_server_requests",
            "Upstream exchanges per pool server, by result (status class or error kind)",
            server_requests.clone(),
        );
        let server_seconds =
            Family::<ServerLabel, Histogram>::new_with_constructor(server_histogram as fn() -> _);
        registry.register(
            "upstream_server_response_seconds",
            "Time to the response head, per pool server",
            server_seconds.clone(),
        );
        let server_state = Family::<ServerStateLabel, Gauge>::default();
        registry.register(
            "upstream_server_state",
            "1 for each pool server's current health state (up, down, ejected)",
            server_state.clone(),
        );
        let server_ejections = Family::<ServerLabel, Counter>::default();
        registry.register(
            "upstream_server_ejections",
            "Passive ejections of a pool server after consecutive failures",
            server_ejections.clone(),
        );
        let retries = Family::<RetryLabel, Counter>::default();
        registry.register(
            "upstream_retries",
            "Retries on another server, allowed or refused by the retry budget",
            retries.clone(),
        );
        let purges = Family::<KindLabel, Counter>::default();
        registry.register(
            "purges_applied",
            "Purges applied on this node, by selector kind",
            purges.clone(),
        );
        let purge_watermark = Gauge::default();
        registry.register(
            "purge_watermark",
            "Highest purge sequence number applied together with every earlier one",
            purge_watermark.clone(),
        );
        let stream_reads = Family::<ViaLabel, Counter>::default();
        registry.register(
            "purge_stream_reads",
            "Purges read from the NATS purge stream: live (republished as stored) or catch_up \
             (through a consumer, after a gap, a silence or a restart)",
            stream_reads.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads: applied, or refused with the running config kept",
            reloads.clone(),
        );
        Self {
            purges,
            purge_watermark,
            reloads,
            stream_reads,
            state: None,
            disk: None,
            server_requests,
            server_seconds,
            server_state,
            server_ejections,
            retries,
            registry,
            by_outcome,
            upstream_errors,
            not_stored,
            upstream_seconds,
            coalesced,
            stored,
            cache_bytes,
            cache_entries,
            sealed_bodies,
            hit_ratio,
        }
    }

    /// Counts a client request answered with `outcome` over HTTP `version`.
    pub fn request(&self, outcome: Outcome, version: Version) {
        self.by_outcome[outcome as usize][version_index(version)].inc();
    }

    /// Client requests answered with `outcome`, over every version.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.by_outcome[outcome as usize]
            .iter()
            .map(Counter::get)
            .sum()
    }

    pub fn upstream_response(&self, elapsed: Duration) {
        self.upstream_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn not_stored(&self, reason: NoCacheReason) {
        self.not_stored
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    pub fn stored(&self) {
        self.stored.inc();
    }

    pub fn purge_applied(&self, kind: &str) {
        self.purges
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// `purges` read from the NATS purge stream, `live` or in a catch-up.
    pub fn purge_stream_read(&self, live: bool, purges: usize) {
        let via = if live { "live" } else { "catch_up" };
        self.stream_reads
            .get_or_create(&ViaLabel { via })
            .inc_by(purges as u64);
    }

    /// A config reload, applied or refused.
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn purge_watermark(&self, seq: u64) {
        self.purge_watermark
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
    }

    /// Registers the gauges of the persisted purge state: for a node that keeps one.
    pub fn track_state(&mut self) {
        let gauges = StateGauges::default();
        self.registry.register(
            "purge_persisted_watermark",
            "Purge watermark committed to the node state: what the node acknowledges and resumes from",
            gauges.watermark.clone(),
        );
        self.registry.register(
            "purge_journal_entries",
            "Applied purges kept in the node state's journal, for entries stored before a restart",
            gauges.journal.clone(),
        );
        self.registry.register(
            "purge_journal_floor",
            "Entries stored at a watermark below this are gone: the journal no longer has what purged them",
            gauges.floor.clone(),
        );
        self.state = Some(gauges);
    }

    /// Registers the access log's counters: for a node that keeps one.
    pub fn track_access_log(&mut self, counts: &crate::node::access_log::LogCounts) {
        self.registry.register(
            "access_log_lines",
            "Access log lines written",
            counts.written.clone(),
        );
        self.registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind (the requests were served)",
            counts.dropped.clone(),
        );
        self.registry.register(
            "access_log_write_errors",
            "Access log writes that failed (a full disk, a closed stdout)",
            counts.write_errors.clone(),
        );
    }

    /// Registers the disk tier's metrics: for a node with one.
    pub fn track_disk(&mut self) {
        let hits = Family::<TierLabel, Counter>::default();
        self.registry.register(
            "cache_hits",
            "Cache hits by the tier that held the object (memory, disk)",
            hits.clone(),
        );
        let rejects = Family::<ReasonLabel, Counter>::default();
        // One at a time: the family's lock is held while its guard lives.
        let memory_hits = hits.get_or_create(&TierLabel { tier: "memory" }).clone();
        let disk_hits = hits.get_or_create(&TierLabel { tier: "disk" }).clone();
        let metrics = DiskMetrics {
            memory_hits,
            disk_hits,
            reads: Counter::default(),
            read_bytes: Counter::default(),
            read_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            write_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            writes: Counter::default(),
            write_bytes: Counter::default(),
            rejects: rejects.clone(),
            corrupt: Counter::default(),
            reclaimed: Counter::default(),
            write_errors: Counter::default(),
            bytes: Gauge::default(),
            entries: Gauge::default(),
            index_bytes: Gauge::default(),
            queued_bytes: Gauge::default(),
            recovery_seconds: Gauge::default(),
            recovered_objects: Gauge::default(),
        };
        let r = &mut self.registry;
        r.register(
            "disk_reads",
            "Records opened from the disk tier",
            metrics.reads.clone(),
        );
        r.register(
            "disk_read_bytes",
            "Body bytes read from the disk tier",
            metrics.read_bytes.clone(),
        );
        r.register(
            "disk_read_seconds",
            "Time to open a record on the disk tier (its head read and checked)",
            metrics.read_seconds.clone(),
        );
        r.register(
            "disk_write_seconds",
            "Time of each write of the disk tier's write buffer to its device",
            metrics.write_seconds.clone(),
        );
        r.register(
            "disk_writes",
            "Records written to the disk tier",
            metrics.writes.clone(),
        );
        r.register(
            "disk_write_bytes",
            "Bytes of records written to the disk tier (aligned)",
            metrics.write_bytes.clone(),
        );
        r.register(
            "disk_admission_rejects",
            "Entries evicted from memory and not written to disk, by reason",
            rejects,
        );
        r.register(
            "disk_corrupt_records",
            "Disk records that failed a check when read (never served)",
            metrics.corrupt.clone(),
        );
        r.register(
            "disk_reclaimed_segments",
            "Disk segments dropped whole to make room",
            metrics.reclaimed.clone(),
        );
        r.register(
            "disk_write_errors",
            "Disk writes that failed (their records were not indexed)",
            metrics.write_errors.clone(),
        );
        r.register(
            "disk_bytes",
            "Bytes of records in live disk segments",
            metrics.bytes.clone(),
        );
        r.register(
            "disk_entries",
            "Objects indexed on the disk tier",
            metrics.entries.clone(),
        );
        r.register(
            "disk_index_bytes",
            "Bytes of RAM the disk tier's index holds",
            metrics.index_bytes.clone(),
        );
        r.register(
            "disk_queued_bytes",
            "Bytes admitted to the disk tier and not yet written",
            metrics.queued_bytes.clone(),
        );
        r.register(
            "disk_recovery_seconds",
            "Time the disk tier took to recover its index when the node started",
            metrics.recovery_seconds.clone(),
        );
        r.register(
            "disk_recovered_objects",
            "Objects the disk tier recovered when the node started",
            metrics.recovered_objects.clone(),
        );
        self.disk = Some(metrics);
    }

    /// What the disk tier's recovery found.
    pub fn disk_recovered(&self, report: &RecoveryReport) {
        if let Some(disk) = &self.disk {
            disk.recovery_seconds.set(report.duration.as_secs_f64());
            set(&disk.recovered_objects, report.objects);
        }
    }

    /// A hit answered from the disk tier, whose record took `opened` to open.
    pub fn disk_hit(&self) {
        if let Some(disk) = &self.disk {
            disk.disk_hits.inc();
        }
    }

    /// What the disk tier's writer reports each write's time to (see
    /// [`crate::cache::disk::DiskTier::observe_writes`]); `None` without a disk tier.
    pub fn disk_write_observer(&self) -> Option<crate::cache::disk::WriteObserver> {
        let histogram = self.disk.as_ref()?.write_seconds.clone();
        Some(std::sync::Arc::new(move |took: Duration| {
            histogram.observe(took.as_secs_f64());
        }))
    }

    /// A record opened from the disk tier in `took`.
    pub fn disk_read(&self, took: Duration) {
        if let Some(disk) = &self.disk {
            disk.read_seconds.observe(took.as_secs_f64());
        }
    }

    /// Brings the disk tier's metrics up to date.
    pub fn disk_snapshot(&self, hybrid: &HybridStore) {
        let Some(disk) = &self.disk else {
            return;
        };
        let store = hybrid.disk();
        let counters = store.counters();
        let usage = store.usage();
        catch_up(&disk.reads, counters.reads);
        catch_up(&disk.read_bytes, counters.read_bytes);
        catch_up(&disk.writes, counters.writes);
        catch_up(&disk.write_bytes, counters.write_bytes);
        catch_up(&disk.corrupt, counters.corrupt_records);
        catch_up(&disk.reclaimed, counters.reclaimed_segments);
        catch_up(&disk.write_errors, counters.write_errors);
        for (why, count) in hybrid.rejects() {
            let label = ReasonLabel {
                reason: why.as_str().to_owned(),
            };
            catch_up(&disk.rejects.get_or_create(&label), count);
        }
        set(&disk.bytes, usage.bytes);
        set(&disk.entries, usage.entries);
        set(&disk.index_bytes, usage.index_bytes);
        set(&disk.queued_bytes, usage.queued_bytes);
        let memory = self
            .requests(Outcome::Hit)
            .saturating_sub(disk.disk_hits.get());
        catch_up(&disk.memory_hits, memory);
    }

    /// Sets the persisted state's gauges (no-op unless [`Metrics::track_state`] was called).
    pub fn persisted_state(&self, watermark: u64, journal: u64, floor: u64) {
        if let Some(gauges) = &self.state {
            for (gauge, value) in [
                (&gauges.watermark, watermark),
                (&gauges.journal, journal),
                (&gauges.floor, floor),
            ] {
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    /// Renders the Prometheus text exposition, with cache gauges refreshed from `usage`.
    pub fn render(&self, usage: Usage) -> String {
        self.cache_bytes
            .set(i64::try_from(usage.bytes).unwrap_or(i64::MAX));
        self.cache_entries
            .set(i64::try_from(usage.entries).unwrap_or(i64::MAX));
        set(
            &self.sealed_bodies,
            crate::cache::sealed_body::live() as u64,
        );
        let hits = self.requests(Outcome::Hit) as f64;
        let lookups = hits + (self.requests(Outcome::Miss) + self.requests(Outcome::Stale)) as f64;
        self.hit_ratio
            .set(if lookups > 0.0 { hits / lookups } else { 0.0 });
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Per-server metrics of upstream pools. Labels are the configured site and server URLs,
/// so their number is bounded by the config.
impl PoolObserver for Metrics {
    fn server_response(&self, site: &str, server: &str, status: StatusCode, took: Duration) {
        let result = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.server_requests
            .get_or_create(&ServerResultLabel {
                site: site.to_owned(),
                server: server.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.server_seconds
            .get_or_create(&ServerLabel {
                site: site.to_owned(),
                server: server.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    fn server_error(&self, site: &str, server: &str, kind: &str) {
        self.server_requests
            .get_or_create(&ServerResultLabel {
                site: site.to_owned(),
                server: server.to_owned(),
                result: kind.to_owned(),
            })
            .inc();
    }

    fn server_ejected(&self, site: &str, server: &str) {
        self.server_ejections
            .get_or_create(&ServerLabel {
                site: site.to_owned(),
                server: server.to_owned(),
            })
            .inc();
    }

    fn server_state(&self, site: &str, server: &str, state: State) {
        for each in State::ALL {
            self.server_state
                .get_or_create(&ServerStateLabel {
                    site: site.to_owned(),
                    server: server.to_owned(),
                    state: each.as_str().to_owned(),
                })
                .set(i64::from(each == state));
        }
    }

    fn retry(&self, allowed: bool) {
        let result = if allowed { "allowed" } else { "refused" };
        self.retries
            .get_or_create(&RetryLabel {
                result: result.to_owned(),
            })
            .inc();
    }
}

fn server_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histogram_buckets() {
        let m = Metrics::new(1000);
        m.request(Outcome::Hit, Version::HTTP_11);
        m.request(Outcome::Hit, Version::HTTP_11);
        m.request(Outcome::Hit, Version::HTTP_11);
        m.request(Outcome::Miss, Version::HTTP_2);
        m.upstream_response(Duration::from_millis(3));
        m.upstream_error("connect");
        m.not_stored(NoCacheReason::NoStore);
        let text = m.render(Usage {
            bytes: 512,
            entries: 2,
        });
        for want in [
            r#"edge_requests_total{cache_status="hit",version="1.1"} 3"#,
            r#"edge_requests_total{cache_status="hit",version="3"} 0"#,
            r#"edge_requests_total{cache_status="miss",version="2"} 1"#,
            r#"edge_requests_total{cache_status="error",version="1.0"} 0"#,
            "edge_cache_bytes 512",
            "edge_cache_entries 2",
            "edge_cache_capacity_bytes 1000",
            "edge_cache_hit_ratio 0.75",
            r#"edge_upstream_errors_total{kind="connect"} 1"#,
            r#"edge_not_stored_total{reason="no-store"} 1"#,
            "edge_upstream_response_seconds_bucket{le=",
            "edge_upstream_response_seconds_count 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("edge_purge_journal_entries"),
            "no state gauges without a state"
        );
    }

    #[test]
    fn a_node_with_a_state_renders_its_persisted_watermark_journal_and_floor() {
        let mut m = Metrics::new(1000);
        m.track_state();
        m.persisted_state(42, 7, 30);
        let text = m.render(Usage {
            bytes: 0,
            entries: 0,
        });
        for want in [
            "edge_purge_persisted_watermark 42",
            "edge_purge_journal_entries 7",
            "edge_purge_journal_floor 30",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn a_node_with_a_disk_tier_renders_hits_by_tier_and_its_recovery() {
        let mut m = Metrics::new(1000);
        m.track_disk();
        m.request(Outcome::Hit, Version::HTTP_11);
        m.request(Outcome::Hit, Version::HTTP_11);
        m.request(Outcome::Hit, Version::HTTP_11);
        m.disk_hit();
        m.disk_recovered(&RecoveryReport {
            objects: 12,
            duration: Duration::from_millis(250),
            ..RecoveryReport::default()
        });
        let text = m.render(Usage {
            bytes: 0,
            entries: 0,
        });
        for want in [
            "edge_cache_hits_total{tier=\"disk\"} 1",
            "edge_disk_recovered_objects 12",
            "edge_disk_recovery_seconds 0.25",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
