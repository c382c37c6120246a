//! The disk tier under an edge (`[cache.disk]`): objects evicted from a small memory
//! after they were hit go to disk and are served from there with no origin request, also
//! after a restart (a clean stop, SIGTERM and SIGKILL of a `cdn edge` process); a purge
//! applied while the node was down is honoured after it restarts; bytes flipped on disk
//! are detected and never served; the files never exceed the configured size; a large
//! object is streamed from disk with the right bytes.
//!
//! Each test fails without the wiring: without admission nothing reaches the disk (the
//! `edge_disk_entries` waits time out), without disk reads every request after the
//! eviction reaches the origin, without the purge check the purged URL is a hit.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cdn::demo_origin::DemoOrigin;
use edge::cache::key::CacheKey;
use edge::{EdgeConfig, EdgeServer};
use http::{Method, StatusCode};
use purge_api::PurgeApiServer;
use purge_api::log::Retention;
use support::process::NodeProcess;
use support::purge_log::{NODE_TOKEN, RecordingLog, TOKEN, api_config};
use support::{HOST, Reply, api_call, client, json, loopback, send};

/// Objects hit before the eviction: what must come back from disk.
const HOT: usize = 8;

/// The disk settings of these tests: small segments, so that reclaim happens.
#[derive(Clone, Copy)]
struct Disk {
    size: &'static str,
    segment: &'static str,
    queue: &'static str,
}

const SMALL_DISK: Disk = Disk {
    size: "4 MiB",
    segment: "1 MiB",
    queue: "2 MiB",
};

/// An edge config with a `capacity` memory over a disk tier in `dir`.
fn config_text(
    origin: SocketAddr,
    dir: &Path,
    (capacity, max_object): (&str, &str),
    disk: &Disk,
    listen: (SocketAddr, SocketAddr),
    api: Option<SocketAddr>,
) -> String {
    let api = api.map_or(String::new(), |a| format!("api = \"http://{a}\""));
    format!(
        r#"
        [node]
        name = "edge-disk"
        listen = "{public}"
        admin_listen = "{admin}"
        [cache]
        capacity = "{capacity}"
        max_object_size = "{max_object}"
        [cache.disk]
        path = "{dir}"
        size = "{size}"
        segment_size = "{segment}"
        write_buffer = "64 KiB"
        max_queue = "{queue}"
        [purge]
        node_token = "{NODE_TOKEN}"
        {api}
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        upstream = "http://{origin}"
        "#,
        public = listen.0,
        admin = listen.1,
        dir = dir.display(),
        size = disk.size,
        segment = disk.segment,
        queue = disk.queue,
    )
}

fn any_port() -> (SocketAddr, SocketAddr) {
    (loopback(), loopback())
}

async fn get(at: SocketAddr, target: &str) -> Reply {
    send(&client(), at, Method::GET, target, HOST, &[]).await
}

/// The value of one series on `admin`'s `/metrics`; 0 when absent.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = send(&client(), admin, Method::GET, "/metrics", "admin", &[])
        .await
        .text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("numeric metric"))
}

/// Waits (bounded) until the disk tier has indexed at least `n` objects and has nothing
/// left to write: they are then in the segment files.
async fn on_disk(admin: SocketAddr, n: usize) {
    for _ in 0..1000 {
        let entries = metric(admin, "edge_disk_entries").await;
        let queued = metric(admin, "edge_disk_queued_bytes").await;
        if entries >= n as f64 && queued == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the disk tier never held {n} objects: {} entries",
        metric(admin, "edge_disk_entries").await
    );
}

fn hot(i: usize) -> String {
    format!("/hot/{i}/16k.bin")
}

/// Fills the hot objects and hits each once (so they earn a place on disk), then fills
/// fillers until memory evicted them, and waits until they are on disk.
async fn fill_hit_and_evict(public: SocketAddr, admin: SocketAddr) {
    fill_and_hit_hot(public).await;
    evict_with_fillers(public).await;
    on_disk(admin, HOT).await;
}

/// Fills the hot objects and hits each once: they earn a place on disk.
async fn fill_and_hit_hot(public: SocketAddr) {
    for i in 0..HOT {
        assert_eq!(get(public, &hot(i)).await.status, StatusCode::OK);
        let hit = get(public, &hot(i)).await;
        assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    }
}

/// Fills one-hit fillers (which the disk tier must refuse), then fills and hits fillers
/// until memory evicted what it held before: the memory tier (S3-FIFO) keeps what was
/// hit against one-hit wonders, so only objects hit too displace it.
async fn evict_with_fillers(public: SocketAddr) {
    for i in 0..24 {
        assert_eq!(
            get(public, &format!("/once/{i}/16k.bin")).await.status,
            StatusCode::OK
        );
    }
    for i in 0..48 {
        for _ in 0..2 {
            assert_eq!(
                get(public, &format!("/filler/{i}/16k.bin")).await.status,
                StatusCode::OK
            );
        }
    }
}

/// Every hot object answers from disk, with the origin's bytes and no origin request.
async fn all_hot_from_disk(public: SocketAddr, origin: &DemoOrigin) {
    let before = origin.total_hits();
    for i in 0..HOT {
        let reply = get(public, &hot(i)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply.cache_status().contains("hit") && reply.cache_status().contains("detail=disk"),
            "{}: {}",
            hot(i),
            reply.cache_status()
        );
        assert_eq!(reply.body.len(), 16 * 1024);
    }
    assert_eq!(origin.total_hits(), before, "no request reached the origin");
}

/// An edge in this process over a disk tier in a temporary directory.
struct InProcess {
    origin: DemoOrigin,
    dir: tempfile::TempDir,
    edge: Option<EdgeServer>,
    listen: (SocketAddr, SocketAddr),
    sizes: (&'static str, &'static str),
    disk: Disk,
}

impl InProcess {
    async fn start(sizes: (&'static str, &'static str), disk: &Disk) -> Self {
        let origin = DemoOrigin::start(loopback()).await.expect("origin");
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config_text(origin.addr(), dir.path(), sizes, disk, any_port(), None);
        let edge = EdgeServer::start(EdgeConfig::from_toml(&text).expect("config"))
            .await
            .expect("edge starts");
        Self {
            origin,
            listen: (edge.public_addr(), edge.admin_addr()),
            edge: Some(edge),
            dir,
            sizes,
            disk: *disk,
        }
    }

    /// Another edge of this node's settings over its directory, listening on `listen`
    /// (the stopped node's addresses: a restart), pushed to by `api` if given.
    async fn start_another(
        &self,
        listen: (SocketAddr, SocketAddr),
        api: Option<SocketAddr>,
    ) -> Result<EdgeServer, edge::StartError> {
        let text = config_text(
            self.origin.addr(),
            self.dir.path(),
            self.sizes,
            &self.disk,
            listen,
            api,
        );
        EdgeServer::start(EdgeConfig::from_toml(&text).expect("config")).await
    }

    /// This node started again on its directory and addresses.
    async fn restart(&self, api: Option<SocketAddr>) -> EdgeServer {
        self.start_another(self.listen, api)
            .await
            .expect("edge restarts")
    }

    fn public(&self) -> SocketAddr {
        self.listen.0
    }

    fn admin(&self) -> SocketAddr {
        self.listen.1
    }

    fn disk_files(&self) -> Vec<PathBuf> {
        segments(self.dir.path())
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("disk dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .collect()
}

/// Stops an edge and waits until nothing holds it, so its state file is closed.
async fn stop(edge: EdgeServer) {
    let held = Arc::downgrade(edge.edge());
    edge.shutdown().await;
    assert!(
        support::eventually(Duration::from_secs(10), || held.strong_count() == 0).await,
        "the stopped edge is still held"
    );
}

#[tokio::test]
async fn objects_hit_then_evicted_are_served_from_disk_with_no_origin_request() {
    let node = InProcess::start(("256 KiB", "64 KiB"), &SMALL_DISK).await;
    fill_hit_and_evict(node.public(), node.admin()).await;
    assert!(
        metric(
            node.admin(),
            "edge_disk_admission_rejects_total{reason=\"one_hit\"}"
        )
        .await
            > 0.0,
        "one-hit fillers are not written"
    );
    assert!(
        metric(node.admin(), "edge_disk_write_seconds_count").await > 0.0,
        "each write to the device is timed"
    );
    all_hot_from_disk(node.public(), &node.origin).await;
    // Promoted: the next hit is a memory hit.
    let again = get(node.public(), &hot(0)).await;
    assert!(
        !again.cache_status().contains("detail=disk"),
        "{}",
        again.cache_status()
    );
    assert!(metric(node.admin(), "edge_cache_hits_total{tier=\"disk\"}").await >= HOT as f64);
    assert!(metric(node.admin(), "edge_disk_read_bytes_total").await >= (HOT * 16 * 1024) as f64);
    stop(node.edge.expect("running")).await;
}

#[tokio::test]
async fn after_a_clean_stop_an_edge_serves_hits_from_disk_with_no_origin_request() {
    let mut node = InProcess::start(("256 KiB", "64 KiB"), &SMALL_DISK).await;
    fill_hit_and_evict(node.public(), node.admin()).await;
    stop(node.edge.take().expect("running")).await;

    let edge = node.restart(None).await;
    assert!(metric(node.admin(), "edge_disk_recovered_objects").await >= HOT as f64);
    all_hot_from_disk(node.public(), &node.origin).await;
    stop(edge).await;
}

#[tokio::test]
async fn flipped_bytes_on_disk_are_detected_and_never_served() {
    let node = InProcess::start(("256 KiB", "64 KiB"), &SMALL_DISK).await;
    fill_hit_and_evict(node.public(), node.admin()).await;
    let target = hot(3);
    let original = get(node.origin.addr(), &target).await.body;
    node.origin.reset();
    // Flip a byte in the middle of the object's body wherever it is in a segment.
    let needle = &original[8000..8064];
    let mut flipped = 0;
    for file in node.disk_files() {
        let mut bytes = std::fs::read(&file).expect("segment");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + 10] ^= 0xff;
            std::fs::write(&file, &bytes).expect("write segment");
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "the object's body is in one segment");

    let reply = get(node.public(), &target).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, original, "the right bytes");
    assert!(
        !reply.cache_status().contains("hit"),
        "a corrupt record is a miss: {}",
        reply.cache_status()
    );
    assert_eq!(node.origin.hits(&target), 1, "the origin was asked");
    assert_eq!(
        metric(node.admin(), "edge_disk_corrupt_records_total").await,
        1.0
    );
    // The others are intact.
    let other = get(node.public(), &hot(4)).await;
    assert!(
        other.cache_status().contains("detail=disk"),
        "{}",
        other.cache_status()
    );
    stop(node.edge.expect("running")).await;
}

#[tokio::test]
async fn the_disk_files_never_exceed_the_configured_size() {
    let node = InProcess::start(("256 KiB", "64 KiB"), &SMALL_DISK).await;
    // 96 objects of 64 KiB hit once each and evicted: 6 MiB through a 4 MiB disk.
    for i in 0..96 {
        let target = format!("/big/{i}/64k.bin");
        get(node.public(), &target).await;
        get(node.public(), &target).await;
        let total: u64 = node
            .disk_files()
            .iter()
            .map(|f| std::fs::metadata(f).expect("meta").len())
            .sum();
        assert!(total <= 4 << 20, "{total} bytes of segments after {i}");
    }
    on_disk(node.admin(), 1).await;
    assert!(
        metric(node.admin(), "edge_disk_reclaimed_segments_total").await > 0.0,
        "the disk filled up and reclaimed"
    );
    assert!(metric(node.admin(), "edge_disk_bytes").await <= (4 << 20) as f64);
    stop(node.edge.expect("running")).await;
}

#[tokio::test]
async fn a_large_object_is_streamed_from_disk_with_the_right_bytes() {
    let big_disk = Disk {
        size: "64 MiB",
        segment: "16 MiB",
        queue: "32 MiB",
    };
    let node = InProcess::start(("12 MiB", "10 MiB"), &big_disk).await;
    let target = "/large/8m.bin";
    let original = get(node.origin.addr(), target).await.body;
    node.origin.reset();
    assert_eq!(get(node.public(), target).await.status, StatusCode::OK);
    assert!(
        get(node.public(), target)
            .await
            .cache_status()
            .contains("hit")
    );
    for i in 0..16 {
        get(node.public(), &format!("/filler/{i}/1m.bin")).await;
    }
    on_disk(node.admin(), 1).await;
    node.origin.reset();

    let reply = get(node.public(), target).await;
    assert!(
        reply.cache_status().contains("detail=disk"),
        "{}",
        reply.cache_status()
    );
    assert_eq!(reply.body.len(), original.len());
    assert!(
        reply.body == original,
        "the bytes streamed from disk are the origin's"
    );
    let ranged = send(
        &client(),
        node.public(),
        Method::GET,
        target,
        HOST,
        &[("range", "bytes=5000000-5000099")],
    )
    .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.body[..], &original[5_000_000..5_000_100]);
    assert_eq!(node.origin.total_hits(), 0, "no request reached the origin");
    let store = node.edge.as_ref().expect("running").edge().store().clone();
    let key = CacheKey::new(1, "http", HOST, target);
    assert!(store.get(&key).is_none(), "streamed, never promoted whole");
    stop(node.edge.expect("running")).await;
}

/// Two addresses free a moment ago, for a process that must keep them across restarts.
/// Two addresses a restarted process can bind again: ports below the ephemeral range, so
/// no other test's port-0 socket takes one while the process is down.
fn free_addresses() -> (SocketAddr, SocketAddr) {
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    // Each call moves on to the next port, so the two differ.
    (
        at(support::nats::free_port()),
        at(support::nats::free_port()),
    )
}

/// A `cdn edge` process with `capacity` of memory over a disk tier, filled by `fill`
/// (with its public and admin addresses), stopped with `kill SIGNAL` and started again:
/// every hot object is then served from disk. `args` go to both processes.
async fn restart_process(
    capacity: &str,
    fill: impl AsyncFnOnce(SocketAddr, SocketAddr),
    signal: &str,
    args: &[&str],
) {
    let origin = DemoOrigin::start(loopback()).await.expect("origin");
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = free_addresses();
    let text = config_text(
        origin.addr(),
        &dir.path().join("disk"),
        (capacity, "64 KiB"),
        &SMALL_DISK,
        listen,
        None,
    );
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, text).expect("config file");

    let mut first = NodeProcess::edge(&config, args);
    fill(listen.0, listen.1).await;
    first.signal(signal);
    let status = first.child.wait().expect("the edge exits");
    if signal == "KILL" {
        assert!(!status.success(), "killed: {status}");
    }

    let _second = NodeProcess::edge(&config, args);
    assert!(metric(listen.1, "edge_disk_recovered_objects").await >= HOT as f64);
    all_hot_from_disk(listen.0, &origin).await;
}

#[tokio::test]
async fn after_sigterm_a_cdn_edge_process_serves_hits_from_disk() {
    restart_process("256 KiB", fill_hit_and_evict, "TERM", &[]).await;
}

/// One thread is tokio's current-thread scheduler (a node pinned to one core): misses,
/// hits, the disk tier's reads and writes, the write-out on SIGTERM and the recovery all
/// run beside the connections on that one thread without stalling.
#[tokio::test]
async fn a_one_thread_cdn_edge_process_fills_writes_out_and_recovers_its_disk() {
    restart_process("256 KiB", fill_hit_and_evict, "TERM", &["--threads", "1"]).await;
}

#[tokio::test]
async fn after_sigkill_a_cdn_edge_process_serves_hits_from_disk() {
    restart_process("256 KiB", fill_hit_and_evict, "KILL", &[]).await;
}

#[tokio::test]
async fn a_purge_applied_while_the_edge_was_down_is_honoured_from_disk_after_restart() {
    let mut node = InProcess::start(("256 KiB", "64 KiB"), &SMALL_DISK).await;
    let log = Arc::new(RecordingLog::open(
        &node.dir.path().join("purges.redb"),
        Retention::default(),
    ));
    let api = PurgeApiServer::start_with_log(api_config("edge-disk", Some(node.admin())), log)
        .await
        .expect("purge API");
    fill_hit_and_evict(node.public(), node.admin()).await;
    stop(node.edge.take().expect("running")).await;

    // Purged while the edge is down: one URL hard, one soft.
    for (target, mode) in [(hot(1), "hard"), (hot(2), "soft")] {
        let body =
            format!(r#"{{"site":"assets","urls":["https://{HOST}{target}"],"mode":"{mode}"}}"#);
        let reply = api_call(api.addr(), Method::POST, "/v1/purge", Some(TOKEN), &body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        assert!(json(&reply)["seq"].as_u64().is_some());
    }

    let edge = node.restart(Some(api.addr())).await;
    node.origin.reset();
    let purged = get(node.public(), &hot(1)).await;
    assert_eq!(purged.status, StatusCode::OK);
    assert!(
        !purged.cache_status().contains("hit"),
        "the URL purged while down misses: {}",
        purged.cache_status()
    );
    assert_eq!(node.origin.hits(&hot(1)), 1, "the origin was asked");
    // Soft: revalidated with the origin (its validator matches: a 304), not served fresh.
    let soft = get(node.public(), &hot(2)).await;
    assert_eq!(soft.status, StatusCode::OK);
    assert_eq!(
        node.origin.hits(&hot(2)),
        1,
        "the soft-purged URL was revalidated"
    );
    // Untouched ones still come from disk.
    let kept = get(node.public(), &hot(5)).await;
    assert!(
        kept.cache_status().contains("detail=disk"),
        "{}",
        kept.cache_status()
    );
    assert_eq!(node.origin.hits(&hot(5)), 0);
    stop(edge).await;
    api.shutdown().await;
}

#[tokio::test]
async fn a_variant_comes_back_from_disk_through_its_variant_index() {
    let node = InProcess::start(("256 KiB", "64 KiB"), &SMALL_DISK).await;
    let target = "/varies/16k.bin?vary=accept-language";
    let ask = |language: &'static str| {
        let public = node.public();
        async move {
            send(
                &client(),
                public,
                Method::GET,
                target,
                HOST,
                &[("accept-language", language)],
            )
            .await
        }
    };
    let fr = ask("fr").await;
    assert!(fr.text().starts_with("accept-language=fr"), "{}", fr.text());
    assert!(ask("fr").await.cache_status().contains("hit"));
    evict_with_fillers(node.public()).await;
    on_disk(node.admin(), 2).await;
    node.origin.reset();

    let again = ask("fr").await;
    assert!(
        again.cache_status().contains("detail=disk"),
        "{}",
        again.cache_status()
    );
    assert_eq!(again.body, fr.body);
    assert_eq!(
        node.origin.total_hits(),
        0,
        "index and variant both from disk"
    );
    // Another language was never stored: its own fill.
    let de = ask("de").await;
    assert!(de.text().starts_with("accept-language=de"), "{}", de.text());
    assert_eq!(node.origin.total_hits(), 1);
    stop(node.edge.expect("running")).await;
}

/// A second node on a cache directory in use is refused, saying which directory and why,
/// and the running node is untouched: two writers would tear each other's segments.
#[tokio::test]
async fn a_second_node_on_a_cache_directory_in_use_is_refused() {
    let node = InProcess::start(("256 KiB", "64 KiB"), &SMALL_DISK).await;
    assert_eq!(get(node.public(), &hot(0)).await.status, StatusCode::OK);
    let error = node
        .start_another(any_port(), None)
        .await
        .expect_err("the second node is refused")
        .to_string();
    let dir = node.dir.path().display().to_string();
    assert!(error.contains(&dir) && error.contains("in use"), "{error}");
    let again = get(node.public(), &hot(0)).await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
}

/// After a clean stop the hot set a roomy memory still held (never evicted) is served from
/// disk, and a one-hit wonder was not written.
#[tokio::test]
async fn after_a_clean_stop_the_hot_set_memory_held_is_served_from_disk() {
    let mut node = InProcess::start(("4 MiB", "64 KiB"), &SMALL_DISK).await;
    fill_and_hit_hot(node.public()).await;
    assert_eq!(
        get(node.public(), "/once/1/16k.bin").await.status,
        StatusCode::OK
    );
    stop(node.edge.take().expect("running")).await;

    let edge = node.restart(None).await;
    assert_eq!(
        metric(node.admin(), "edge_disk_recovered_objects").await,
        HOT as f64,
        "the hot set and nothing else"
    );
    all_hot_from_disk(node.public(), &node.origin).await;
    stop(edge).await;
}

/// An object's first hit writes it to disk, evicted or not: after `kill -9`, with no
/// clean stop to write memory out, the hot set a roomy memory still held is served from
/// disk.
#[tokio::test]
async fn after_sigkill_the_hot_set_memory_held_is_served_from_disk() {
    let fill = async |public, admin| {
        fill_and_hit_hot(public).await;
        on_disk(admin, HOT).await;
    };
    restart_process("4 MiB", fill, "KILL", &[]).await;
}
