//! The `cdn` binary as an operator runs it: `cdn up` in one process, `cdn drill`,
//! `cdn warm` and `cdn console` in others, found through the endpoints file; Ctrl-C stops
//! it cleanly.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdn::endpoints::Endpoints;
use support::local_cdn::topology_text;

const CDN: &str = env!("CARGO_BIN_EXE_cdn");

/// Topology tweaks that add a site, `more`, and let the demo publisher purge it.
const MORE_SITE: (&str, &str) = (
    "[[publisher]]",
    "[[site]]\nname = \"more\"\ncname = \"more\"\nhosts = [\"more.publisher.example\"]\norigins = [\"demo\"]\n\n[[publisher]]",
);
const MORE_PUBLISHED: (&str, &str) = ("sites = [\"demo\"]", "sites = [\"demo\", \"more\"]");

/// A `cdn up` child process, killed if the test fails before stopping it.
struct UpProcess(Child);

impl Drop for UpProcess {
    /// Ctrl-C first, so `cdn up` removes what it made (processes, namespaces), then a kill
    /// if it has not exited within 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        if wait_exit(&mut self.0, Duration::from_secs(10)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `GET url` (`http://host:port/path`) as JSON, over a plain socket: this test has no
/// runtime.
fn http_get(url: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut stream = std::net::TcpStream::connect(host).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits (bounded) for a child to exit, returning whether it succeeded.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<bool> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status.success());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A running `cdn up` process, started on the test topology (after `tweak`) written to
/// `dir/topology.toml`, with `--endpoints dir/endpoints.json` and `args`, once its banner's
/// last line says everything listens. What it prints after is read and dropped, so no
/// process it runs ever blocks on a full pipe.
struct StartedUp {
    up: UpProcess,
    banner: String,
    endpoints: Endpoints,
    config: std::path::PathBuf,
    endpoints_file: std::path::PathBuf,
}

fn start_up(dir: &std::path::Path, tweak: &[(&str, &str)], args: &[&str]) -> StartedUp {
    let config = dir.join("topology.toml");
    let endpoints_file = dir.join("endpoints.json");
    std::fs::write(&config, topology_text(tweak)).expect("write topology");
    let mut up = UpProcess(
        Command::new(CDN)
            .arg("up")
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--endpoints")
            .arg(&endpoints_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("up.stderr")).expect("stderr file"))
            .spawn()
            .expect("cdn up starts"),
    );
    let mut lines = BufReader::new(up.0.stdout.take().expect("stdout")).lines();
    let mut banner = String::new();
    for line in lines.by_ref().take(100) {
        let line = line.expect("banner line");
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Ctrl-C stops everything") {
            break;
        }
    }
    if !banner.contains("Ctrl-C stops everything") {
        // Say why it did not start: its exit status and what it logged.
        let status = wait_exit(&mut up.0, Duration::from_secs(5));
        let log = std::fs::read_to_string(dir.join("up.stderr")).unwrap_or_default();
        panic!("cdn up did not start (exit: {status:?})\nbanner:\n{banner}\nlog:\n{log}");
    }
    std::thread::spawn(move || for _ in lines {});
    let endpoints = Endpoints::from_file(&endpoints_file).expect("endpoints written");
    StartedUp {
        up,
        banner,
        endpoints,
        config,
        endpoints_file,
    }
}

#[test]
fn up_drill_warm_and_ctrl_c_as_separate_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache").to_string_lossy().into_owned();
    let logs = dir.path().join("logs").to_string_lossy().into_owned();
    let StartedUp {
        mut up,
        banner,
        endpoints,
        config,
        endpoints_file,
    } = start_up(
        dir.path(),
        &[],
        &["--cache-dir", &cache, "--access-log", &logs],
    );
    assert!(
        banner.contains("cdn drill --region eu-west --endpoints"),
        "{banner}"
    );
    assert!(
        banner.contains(&format!(
            "disk caches        {}",
            dir.path().join("cache").display()
        )) && banner.contains("kept across runs"),
        "{banner}"
    );
    assert_eq!(endpoints.regions.len(), 3);
    assert_eq!(endpoints.sites[0].cname, "demo.cdn.test");
    for (_, edge) in endpoints.edges() {
        assert!(banner.contains(&edge.public.to_string()), "{banner}");
    }
    // The console, on a port of its own like every listener of a port-0 topology.
    let console = endpoints.console.clone().expect("the console's URL");
    assert!(
        banner.contains(&format!("console            {console}")),
        "{banner}"
    );
    let state = http_get(&format!("{console}api/state"));
    assert_eq!(
        state["regions"].as_array().map(Vec::len),
        Some(3),
        "{state}"
    );
    // A console of its own for the same topology, from the endpoints file.
    let mut standalone = UpProcess(
        Command::new(CDN)
            .args(["console", "--listen", "127.0.0.1:0", "--endpoints"])
            .arg(&endpoints_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cdn console starts"),
    );
    let line = BufReader::new(standalone.0.stdout.take().expect("stdout"))
        .lines()
        .next()
        .expect("a line")
        .expect("a line");
    let url = line.strip_prefix("console on ").expect("the console's URL");
    let state = http_get(&format!("{url}api/state"));
    assert_eq!(state["shields"][0]["name"], "shield-1", "{state}");
    drop(standalone);

    let drill = Command::new(CDN)
        .args([
            "drill",
            "--region",
            "us-east",
            "--timeout",
            "20s",
            "--endpoints",
        ])
        .arg(&endpoints_file)
        .output()
        .expect("cdn drill runs");
    let said = String::from_utf8_lossy(&drill.stdout);
    assert!(
        drill.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&drill.stderr)
    );
    assert!(said.contains("drill us-east: failover"), "{said}");
    assert!(said.contains("drained us-east-1, us-east-2"), "{said}");
    assert!(said.contains("failed over to eu-west"), "{said}");
    assert!(said.contains("dead answers 0"), "{said}");

    let urls = dir.path().join("urls.txt");
    std::fs::write(
        &urls,
        "# hot list\nhttp://demo.cdn.test/obj/a.bin\n\nhttp://demo.cdn.test/obj/b.bin\n",
    )
    .expect("write URL list");
    let warm = Command::new(CDN)
        .args(["warm", "--to", "ap-southeast", "--urls"])
        .arg(&urls)
        .arg("--endpoints")
        .arg(&endpoints_file)
        .output()
        .expect("cdn warm runs");
    let said = String::from_utf8_lossy(&warm.stdout);
    assert!(
        warm.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    assert!(said.contains("2 URLs x 2 edges = 4 requests"), "{said}");
    assert!(
        said.contains("4 filled, 0 already cached, 0 failed"),
        "{said}"
    );

    // --access-log: every node logs to its own file; the warmed edges logged the warm's
    // requests (the first of each URL fetched through the shield, which logged it too).
    let log_lines = |node: &str| {
        std::fs::read_to_string(dir.path().join("logs").join(format!("{node}.log")))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (log_lines("ap-southeast-1").len() < 2 || log_lines("shield-1").is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let edge_log = log_lines("ap-southeast-1");
    assert_eq!(edge_log.len(), 2, "{edge_log:#?}");
    assert!(
        edge_log
            .iter()
            .all(|l| l["node"] == "ap-southeast-1" && l["status"] == 200),
        "{edge_log:#?}"
    );
    assert!(
        !log_lines("shield-1").is_empty(),
        "the shield logs its fills"
    );

    let bad = Command::new(CDN)
        .args(["drill", "--region", "nowhere", "--endpoints"])
        .arg(&endpoints_file)
        .output()
        .expect("cdn drill runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no region \"nowhere\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // A site added to the topology file, then SIGHUP: every edge serves it, and the
    // endpoints file names it.
    let more = topology_text(&[MORE_SITE, MORE_PUBLISHED]);
    std::fs::write(&config, more).expect("write topology");
    support::process::signal(up.0.id(), "HUP");
    let edge = endpoints.edges().next().expect("an edge").1.public;
    let deadline = Instant::now() + Duration::from_secs(15);
    let get_more =
        "GET /obj/m.bin HTTP/1.1\r\nHost: more.publisher.example\r\nConnection: close\r\n\r\n";
    while request(edge, get_more).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the reloaded topology's site is not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The endpoints file is rewritten once every component took the new topology.
    let rewritten = || {
        Endpoints::from_file(&endpoints_file)
            .ok()
            .filter(|e| e.sites.iter().any(|s| s.name == "more"))
    };
    let reloaded = loop {
        if let Some(reloaded) = rewritten() {
            break reloaded;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoints file names the new site"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        reloaded.console, endpoints.console,
        "the console's URL stays"
    );

    support::process::signal(up.0.id(), "INT");
    assert_eq!(
        wait_exit(&mut up.0, Duration::from_secs(20)),
        Some(true),
        "cdn up exits cleanly on Ctrl-C"
    );
    // --cache-dir kept every edge's and the shield's disk tier and node state.
    for node in ["shield-1", "eu-west-1", "us-east-2", "ap-southeast-1"] {
        let state = dir.path().join("cache").join(node).join("state.redb");
        assert!(state.exists(), "{} missing", state.display());
    }
}

/// The first line an edge process writes to stderr at `RUST_LOG=info`: its "listening"
/// log line. The process is killed after.
fn edge_log_line(log_format: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        r#"
        [node]
        name = "edge-log"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [[site]]
        name = "s"
        hosts = ["s.test"]
        upstream = "http://127.0.0.1:9"
        "#,
    )
    .expect("config written");
    let mut edge = UpProcess(
        Command::new(CDN)
            .args(["--log-format", log_format, "edge", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("TERM", "xterm-256color")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cdn edge starts"),
    );
    let stderr = edge.0.stderr.take().expect("stderr");
    BufReader::new(stderr)
        .lines()
        .take(20)
        .map(|line| line.expect("a log line"))
        .find(|line| line.contains("listening"))
        .expect("the edge logs that it listens")
}

#[test]
fn the_process_log_is_plain_text_off_a_terminal_and_json_on_request() {
    let text = edge_log_line("text");
    assert!(
        !text.contains('\x1b'),
        "no ANSI escapes into a pipe: {text:?}"
    );
    assert!(
        text.contains("INFO") && text.contains("node=edge-log"),
        "{text}"
    );

    let json = edge_log_line("json");
    let object: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    assert_eq!(object["level"], "INFO", "{json}");
    assert_eq!(object["fields"]["message"], "listening", "{json}");
    assert_eq!(object["fields"]["node"], "edge-log", "{json}");
}

/// The processes of `cdn up --processes` whose config file is under `dir` and names
/// `component`.
fn pids_of(run_dir: &str, component: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("{run_dir}/{component}.toml")])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// One request (`raw`, whole) over a plain socket: the answer's status (0 when there is
/// none) and text.
fn request(at: std::net::SocketAddr, raw: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(at) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream.write_all(raw.as_bytes()).expect("sent");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn up_processes_restarts_a_killed_edge_with_purges_caught_up_and_reloads_each_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let StartedUp {
        mut up,
        banner,
        endpoints,
        config,
        ..
    } = start_up(dir.path(), &[], &["--processes"]);
    let run_dir = run_dir(&banner);
    let edge = endpoints
        .edges()
        .find(|(_, e)| e.name == "eu-west-1")
        .expect("eu-west-1")
        .1
        .clone();
    for component in ["eu-west-1", "us-east-2", "shield-1", "geodns", "purge-api"] {
        assert_eq!(
            pids_of(&run_dir, component).len(),
            1,
            "{component} runs alone"
        );
    }

    let target = "/obj/restart.bin";
    let get = format!("GET {target} HTTP/1.1\r\nHost: demo.cdn.test\r\nConnection: close\r\n\r\n");
    assert_eq!(request(edge.public, &get).0, 200);
    let (_, hit) = request(edge.public, &get);
    assert!(hit.to_ascii_lowercase().contains("; hit"), "{hit}");

    // The edge is killed; while it is down (the restart backoff is a second), its object
    // is purged.
    // The supervisor's control listener: the node token, a known process, namespaces.
    let control: std::net::SocketAddr = endpoints
        .supervisor
        .as_deref()
        .expect("a supervisor in the endpoints")
        .trim_start_matches("http://")
        .parse()
        .expect("its address");
    let post = |path: &str, token: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: control\r\ncdn-node-token: {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let token = endpoints.node_token.clone();
    assert_eq!(
        request(control, &post("/v1/processes/eu-west-1/kill", "wrong")).0,
        401
    );
    let (status, unknown) = request(control, &post("/v1/processes/mars-1/kill", &token));
    assert!(status == 404 && unknown.contains("eu-west-1"), "{unknown}");
    assert_eq!(
        request(control, &post("/v1/regions/eu-west/partition", &token)).0,
        409
    );
    assert_eq!(
        pids_of(&run_dir, "eu-west-1").len(),
        1,
        "nothing was killed"
    );

    let killed = pids_of(&run_dir, "eu-west-1");
    support::process::signal(killed[0], "KILL");
    let api: std::net::SocketAddr = endpoints
        .purge_api
        .trim_start_matches("http://")
        .parse()
        .expect("the API's address");
    let body = format!(r#"{{"site":"demo","urls":["http://demo.cdn.test{target}"]}}"#);
    let token = &endpoints.publisher.as_ref().expect("a publisher").token;
    let (status, accepted) = request(
        api,
        &format!(
            "POST /v1/purge HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 202, "{accepted}");

    // Restarted without anyone asking, healthy, and the purge applied on it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = pids_of(&run_dir, "eu-west-1");
        let healthy = request(
            edge.admin,
            "GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .0 == 200;
        if now.len() == 1 && now != killed && healthy {
            break;
        }
        assert!(Instant::now() < deadline, "eu-west-1 did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, after) = request(edge.public, &get);
    assert_eq!(status, 200);
    assert!(
        !after.to_ascii_lowercase().contains("; hit"),
        "purged while the edge was down: {after}"
    );

    // A topology reload: every process's file is rewritten and each reloads its own.
    std::fs::write(&config, topology_text(&[MORE_SITE, MORE_PUBLISHED])).expect("write");
    support::process::signal(up.0.id(), "HUP");
    let get_more =
        "GET /obj/m.bin HTTP/1.1\r\nHost: more.publisher.example\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(edge.public, get_more).0 != 200 {
        assert!(Instant::now() < deadline, "the new site is not served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = r#"{"site":"more","urls":["http://more.publisher.example/obj/m.bin"]}"#;
    let purge_more = format!(
        "POST /v1/purge HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    while request(api, &purge_more).0 != 202 {
        assert!(
            Instant::now() < deadline,
            "the purge API does not take the new site"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    support::process::signal(up.0.id(), "INT");
    assert_eq!(
        wait_exit(&mut up.0, Duration::from_secs(30)),
        Some(true),
        "cdn up --processes exits cleanly on Ctrl-C"
    );
    for component in ["eu-west-1", "shield-1", "geodns", "purge-api", "origin"] {
        assert!(
            pids_of(&run_dir, component).is_empty(),
            "{component} stopped"
        );
    }
}

/// `cdn up --processes` on a topology with fast health checks and a 2 s answer TTL.
fn up_processes_fast(dir: &std::path::Path) -> StartedUp {
    start_up(dir, &[("ttl = 20", "ttl = 2")], &["--processes"])
}

/// The run directory `cdn up --processes` named in its banner.
fn run_dir(banner: &str) -> String {
    banner
        .split("config files in ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("{banner}"))
        .trim()
        .to_owned()
}

/// A drill of eu-west in `mode` with 10 clients at 100 requests/s over 100 URLs, 2 s of
/// load before the failure and after the switch-back.
async fn drill_under_load(
    endpoints: &Endpoints,
    mode: cdn::drill::Mode,
) -> cdn::drill::DrillReport {
    let options = cdn::drill::DrillOptions {
        poll: Duration::from_millis(20),
        timeout: Duration::from_secs(20),
        settle: Duration::from_millis(500),
        mode,
        load: Some(cdn::clients::Load {
            rate: 100.0,
            clients: 10,
            urls: 100,
            ..Default::default()
        }),
        phase: Duration::from_secs(2),
        after: Duration::from_secs(2),
        warm_before_restore: None,
    };
    cdn::drill::run(endpoints, "eu-west", &options, |_| {})
        .await
        .expect("the drill runs")
}

/// What the clients saw in phase `name` of a drill.
fn phase_of(report: &cdn::drill::DrillReport, name: &str) -> cdn::clients::Summary {
    report
        .phases
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no phase {name}"))
        .clients
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_region_s_clients_fail_over_to_the_nearest_region_within_detection_and_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let StartedUp {
        up: _up, endpoints, ..
    } = up_processes_fast(dir.path());
    let report = drill_under_load(&endpoints, cdn::drill::Mode::Kill).await;
    assert_eq!(
        report.failover.region, "us-east",
        "the nearest other region"
    );
    assert_eq!(report.ttl, 2);
    let phase = |name: &str| phase_of(&report, name);
    assert_eq!(phase("before").failed(), 0, "{:?}", phase("before"));
    assert!(phase("failure").failed() > 0, "the kill was seen");
    let failed_over = phase("failed over");
    assert!(
        failed_over.served_by.keys().all(|r| r == "us-east"),
        "{failed_over:?}"
    );
    // Detection: how long GeoDNS took to answer another region (its health checks here:
    // fall 2 x interval 200 ms, timeout 200 ms; longer on a loaded machine).
    let detection = report.failover.took;
    let bound = detection + Duration::from_secs(u64::from(report.ttl)) + Duration::from_secs(1);
    let window = report.failure_window.expect("measured");
    assert!(window < bound, "failures for {window:?}, over {bound:?}");
    assert_eq!(phase("after").failed(), 0, "{:?}", phase("after"));
    assert!(phase("after").served_by.contains_key("eu-west"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_region_of_processes_loses_no_client_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let StartedUp {
        mut up,
        endpoints,
        banner,
        ..
    } = up_processes_fast(dir.path());
    let report = drill_under_load(&endpoints, cdn::drill::Mode::Drain).await;
    assert_eq!(report.failover.region, "us-east");
    for phase in &report.phases {
        assert_eq!(
            phase.clients.failed(),
            0,
            "{}: {:?}",
            phase.name,
            phase.clients
        );
        assert!(phase.clients.requests > 0, "{}", phase.name);
    }
    assert_eq!(report.failure_window, Some(Duration::ZERO));

    // A supervisor killed outright takes its processes with it.
    let run_dir = run_dir(&banner);
    assert_eq!(pids_of(&run_dir, "eu-west-1").len(), 1);
    up.0.kill().expect("SIGKILL");
    let _ = up.0.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    for component in ["eu-west-1", "us-east-2", "shield-1", "geodns", "purge-api"] {
        while !pids_of(&run_dir, component).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{component} outlived its supervisor"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_the_network_fails_over_and_heals() {
    if let Err(why) = cdn::netns::available() {
        eprintln!("SKIPPED a_region_cut_off_the_network_fails_over_and_heals: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let StartedUp {
        mut up, endpoints, ..
    } = start_up(
        dir.path(),
        &[("ttl = 20", "ttl = 2")],
        &["--processes", "--netns"],
    );
    let edge = endpoints.region("eu-west").expect("eu-west").edges[0].public;
    assert!(
        edge.ip().to_string().starts_with("10."),
        "{edge}: in a namespace"
    );
    let report = drill_under_load(&endpoints, cdn::drill::Mode::Partition).await;
    assert_eq!(report.failover.region, "us-east");
    let phase = |name: &str| phase_of(&report, name);
    assert_eq!(phase("before").failed(), 0);
    let failed = report
        .phases
        .iter()
        .map(|p| p.clients.failed())
        .sum::<u64>();
    assert!(failed > 0, "the cut was seen by clients");
    // A partition is seen as timeouts: a request started just before the clients left
    // the region may take its whole timeout on each of the answer's two addresses (2 x
    // 2 s) on top of detection (GeoDNS's failover) and the TTL, and 1 s of slack.
    let bound = report.failover.took
        + Duration::from_secs(u64::from(report.ttl))
        + Duration::from_secs(4)
        + Duration::from_secs(1);
    let window = report.failure_window.expect("measured");
    assert!(window < bound, "failures for {window:?}, over {bound:?}");
    assert_eq!(phase("after").failed(), 0, "{:?}", phase("after"));
    assert!(phase("after").served_by.contains_key("eu-west"));

    // Ctrl-C removes the namespaces with the processes.
    let namespaces = || {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let prefix = format!(
        "cdn{}r",
        edge.ip().to_string().split('.').nth(1).unwrap_or("")
    );
    assert!(namespaces().contains(&prefix), "{}", namespaces());
    support::process::signal(up.0.id(), "INT");
    assert_eq!(wait_exit(&mut up.0, Duration::from_secs(30)), Some(true));
    assert!(!namespaces().contains(&prefix), "{}", namespaces());
}
