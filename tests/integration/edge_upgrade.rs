//! Zero-downtime upgrades: a new `cdn edge --upgrade` process takes the running one's
//! listening sockets while clients keep sending requests; the old one drains and exits,
//! and no client sees an error or a non-2xx answer. With a disk tier the new process
//! serves what the old one cached.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cdn::demo_origin::DemoOrigin;
use http::{Method, StatusCode};
use support::process::NodeProcess;
use support::{HOST, loopback};

/// Client connections kept busy through the upgrade.
const CONNECTIONS: usize = 64;

fn write_config(dir: &Path, origin: SocketAddr, cache: &str) -> std::path::PathBuf {
    let file = dir.join("edge.toml");
    let socket = dir.join("upgrade.sock");
    std::fs::write(
        &file,
        format!(
            r#"
            [node]
            name = "edge-upgrade"
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"
            upgrade_socket = "{socket}"

            [cache]
            {cache}

            [[site]]
            name = "assets"
            hosts = ["{HOST}"]
            upstream = "http://{origin}"
            "#,
            socket = socket.display(),
        ),
    )
    .unwrap();
    file
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    not_2xx: AtomicU64,
    errors: AtomicU64,
}

/// `CONNECTIONS` clients, each on its own keep-alive connection, fetching `targets` in
/// turn until `stop` (and at most a bounded count).
fn load(
    at: SocketAddr,
    targets: &'static [&'static str],
    stop: Arc<AtomicBool>,
) -> (Arc<Seen>, tokio::task::JoinSet<()>) {
    let seen = Arc::new(Seen::default());
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..CONNECTIONS {
        let (seen, stop) = (seen.clone(), stop.clone());
        clients.spawn(async move {
            let client = support::client();
            for i in 0..200_000usize {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let target = targets[(n + i) % targets.len()];
                match support::try_send(&client, at, Method::GET, target, HOST, &[]).await {
                    Ok(reply) if reply.status.is_success() => {
                        seen.ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(reply) => {
                        eprintln!("{target}: {}", reply.status);
                        seen.not_2xx.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(error) => {
                        eprintln!("{target}: {error}");
                        seen.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    (seen, clients)
}

/// Waits (bounded) for a process to exit.
async fn exited(process: &mut NodeProcess, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if process.child.try_wait().unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until the clients have had `more` answers.
async fn answered(seen: &Seen, more: u64) {
    let from = seen.ok.load(Ordering::Relaxed);
    let got = support::eventually(Duration::from_secs(20), || {
        seen.ok.load(Ordering::Relaxed) >= from + more
    })
    .await;
    assert!(got, "the clients get answers");
}

/// Starts an edge with `cache`, loads it with `targets`, upgrades it under that load and
/// checks no client noticed; returns the origin, the new process and its directory.
async fn upgrade_under_load(
    cache: &str,
    targets: &'static [&'static str],
) -> (DemoOrigin, NodeProcess, tempfile::TempDir) {
    let origin = DemoOrigin::start(loopback()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), origin.addr(), cache);
    let mut old = NodeProcess::edge(&file, &[]);
    for target in targets {
        let reply = support::send(
            &support::client(),
            old.public,
            Method::GET,
            target,
            HOST,
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (seen, mut clients) = load(old.public, targets, stop.clone());
    answered(&seen, 5000).await;

    let new = NodeProcess::edge(&file, &["--upgrade"]);
    assert_eq!(
        new.public, old.public,
        "the new process serves on the same socket"
    );
    assert!(
        exited(&mut old, Duration::from_secs(30)).await,
        "the old process drains and exits"
    );
    // Served by the new process alone for a while.
    answered(&seen, 5000).await;
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    eprintln!(
        "through the upgrade: {} answers, {} non-2xx, {} errors",
        seen.ok.load(Ordering::Relaxed),
        seen.not_2xx.load(Ordering::Relaxed),
        seen.errors.load(Ordering::Relaxed)
    );
    assert_eq!(
        seen.errors.load(Ordering::Relaxed),
        0,
        "no client saw an error"
    );
    assert_eq!(
        seen.not_2xx.load(Ordering::Relaxed),
        0,
        "no client saw a non-2xx answer"
    );
    (origin, new, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_refuses_nothing_and_the_old_process_exits() {
    let (origin, new, _dir) = upgrade_under_load("", &["/a.bin", "/b.bin", "/1k.bin"]).await;
    let metrics = support::admin_text(new.admin, "/metrics").await;
    assert!(
        !metrics.contains("edge_requests_total{cache_status=\"hit\",version=\"1.1\"} 0\n"),
        "the new process served hits:\n{metrics}"
    );
    drop(origin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_disk_tier_the_new_process_serves_what_the_old_one_cached() {
    let disk = tempfile::tempdir().unwrap();
    let cache = format!(
        "[cache.disk]\npath = \"{}\"\nsize = \"64 MiB\"\nsegment_size = \"4 MiB\"",
        disk.path().display()
    );
    let (origin, new, _dir) = upgrade_under_load(&cache, &["/disk-a.bin", "/disk-b.bin"]).await;
    // Everything was fetched once, by the old process: the new one had it from the disk.
    assert_eq!(origin.hits("/disk-a.bin"), 1);
    assert_eq!(origin.hits("/disk-b.bin"), 1);
    drop(new);
}

#[tokio::test]
async fn an_upgrade_with_no_running_node_says_so_and_binds_nothing() {
    let origin = DemoOrigin::start(loopback()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), origin.addr(), "");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_cdn"))
        .args(["edge", "--upgrade", "--config"])
        .arg(&file)
        .output()
        .expect("cdn runs");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("no running node answers on the upgrade socket")
            && stderr.contains("upgrade.sock"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_upgrade_socket_is_its_owner_s_and_garbage_on_it_changes_nothing() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let origin = DemoOrigin::start(loopback()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), origin.addr(), "");
    let node = NodeProcess::edge(&file, &[]);
    let socket = dir.path().join("upgrade.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only its owner may take the listeners");

    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"give me your sockets\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "nothing is handed over without the protocol"
    );
    let reply = support::send(
        &support::client(),
        node.public,
        Method::GET,
        "/a.bin",
        HOST,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "the node serves on");

    // And a real upgrade still works after it.
    let new = NodeProcess::edge(&file, &["--upgrade"]);
    assert_eq!(new.public, node.public);
}
