//! Real `nats-server` processes with JetStream on loopback, for the NATS purge tests: one
//! server, or a cluster of three with routes between them.
//!
//! nats-server cannot take port 0 for its cluster listener (the routes must name every
//! peer's port up front), so ports are chosen here ([`free_port`]): below the kernel's
//! ephemeral range, where every other test's `bind(0)` lands, each handed out once. A server
//! is ready when its monitor port answers `/healthz` with `200` (JetStream enabled and,
//! in a cluster, a meta leader elected); every wait is bounded in tries and time. The
//! tests need the `nats-server` binary (`apt-get install -y nats-server`; `.ci/run`
//! installs it): without it they fail, saying so, rather than being skipped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};

use super::{client, try_send};

/// The `nats-server` binary, or a panic that says how to install it.
pub fn binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "nats-server is not installed, and the NATS purge tests need a real one: \
             run `apt-get update && apt-get install -y nats-server` (.ci/run does this)"
        )
    })
}

/// A port on 127.0.0.1 for a nats-server, free when chosen.
///
/// Ports are taken below the kernel's ephemeral range (`ip_local_port_range`), where the
/// `bind(0)` of every other test in this process lands, and each is handed out once per
/// process. A port taken from the ephemeral range instead could be given to another test's
/// listener between the check and nats-server's bind, or while a server killed by a test
/// is down before its restart on the same ports (the server then exits at start: seen
/// once in the one-binary suite).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = ephemeral_low().clamp(LOW + 1_000, 32_768);
    let span = high - LOW;
    // Another test process (another run, a neighbour worktree) starts elsewhere.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high} for nats-server");
}

/// The lowest port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// One nats-server process. Killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    name: String,
    pub port: u16,
    pub monitor: u16,
    /// This server's cluster port and its peers' routes, when clustered.
    cluster: Option<(u16, Vec<String>)>,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream storing under `dir`, and waits until it is ready.
    pub async fn start(name: &str, dir: &Path, cluster: Option<(u16, Vec<String>)>) -> Self {
        let mut server = NatsServer {
            name: name.to_owned(),
            port: free_port(),
            monitor: free_port(),
            cluster,
            store: dir.join(name),
            child: None,
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.store).expect("store dir");
        let log = std::fs::File::create(self.store.join("server.log")).expect("server log");
        let mut command = Command::new(binary());
        command
            .args(["-a", "127.0.0.1", "-js", "-n", &self.name])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((port, routes)) = &self.cluster {
            command
                .args(["--cluster_name", "cdn-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{port}")])
                .args(["--routes", &routes.join(",")]);
        }
        self.child = Some(command.spawn().expect("nats-server starts"));
    }

    /// Polls `/healthz` on the monitor port until `200`: at most 300 tries, 15 s.
    pub async fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.monitor));
        let http = client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        for _ in 0..300 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server {} exited ({status}); its log: {}",
                    self.name,
                    std::fs::read_to_string(self.store.join("server.log")).unwrap_or_default()
                );
            }
            let healthy = tokio::time::timeout(
                Duration::from_secs(1),
                try_send(&http, addr, Method::GET, "/healthz", "nats", &[]),
            )
            .await
            .is_ok_and(|r| r.is_ok_and(|r| r.status == StatusCode::OK));
            if healthy || tokio::time::Instant::now() > deadline {
                assert!(healthy, "nats-server {} not healthy within 15 s", self.name);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server {} not healthy after 300 tries", self.name);
    }

    /// Kills the process (SIGKILL: no goodbye to clients or peers).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports with the same store; does not wait for health.
    pub fn respawn(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again and waits until it is ready.
    pub async fn restart(&mut self) {
        self.respawn();
        self.wait_ready().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three clustered servers, each routing to the others.
#[derive(Debug)]
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start(dir: &Path) -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = |me: usize| {
            ports
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != me)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
        };
        // Started together (a lone server of a cluster is not healthy until it has
        // peers), then each waited for.
        let mut servers: Vec<NatsServer> = (0..3)
            .map(|i| {
                let mut server = NatsServer {
                    name: format!("n{i}"),
                    port: free_port(),
                    monitor: free_port(),
                    cluster: Some((ports[i], routes(i))),
                    store: dir.join(format!("n{i}")),
                    child: None,
                };
                server.spawn();
                server
            })
            .collect();
        for server in &mut servers {
            server.wait_ready().await;
        }
        NatsCluster { servers }
    }

    /// The index of the server leading `stream`'s replicas, from the monitor's `/jsz`
    /// (asked of server 0 until one answers with a leader: at most 100 tries, 10 s).
    pub async fn stream_leader(&self, stream: &str) -> usize {
        let http = client();
        for _ in 0..100 {
            for server in &self.servers {
                let addr = SocketAddr::from(([127, 0, 0, 1], server.monitor));
                let Ok(reply) = try_send(
                    &http,
                    addr,
                    Method::GET,
                    "/jsz?accounts=true&streams=true",
                    "nats",
                    &[],
                )
                .await
                else {
                    continue;
                };
                let Ok(jsz) = serde_json::from_slice::<serde_json::Value>(&reply.body) else {
                    continue;
                };
                let leader = jsz["account_details"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                    .find(|s| s["name"] == stream)
                    .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned));
                if let Some(i) =
                    leader.and_then(|name| self.servers.iter().position(|s| s.name == name))
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no server reports a leader for stream {stream}");
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }
}
