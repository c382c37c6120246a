//! `cdn up --processes`: every component of a topology as an OS process of its own (the
//! same binary: `cdn edge --config F`, `cdn shield`, `cdn geodns`, `cdn purge-api`,
//! `cdn origin`), supervised, so a failure can take one process down without the others.
//!
//! Each component's config file is written from the topology into a run directory, with
//! every listener on a fixed address: a port 0 in the topology is given a port that was
//! free a moment before, so that a restarted process comes back where its peers (and the
//! endpoints file) expect it. Components start in the order their peers need them: the
//! demo origin, the purge API (so every node catches up from its log at start, and a
//! restarted node catches up on what it missed), the shields, the edges, GeoDNS. A
//! component counts as started when it prints the line that says where it serves.
//!
//! Each process's stdout and stderr are forwarded line by line with its name in front. A
//! process that exits when it was not asked to is restarted after a backoff (1 s, doubling
//! to 30 s, back to 1 s after a minute up), unless it is held: what a drill that kills a
//! node on purpose asks for (the control listener, `/v1/processes/{name}/kill`) until it
//! starts it again (`.../start`).
//! [`Supervisor::shutdown`] stops them all (SIGTERM, then SIGKILL after a bound).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::endpoints::{DnsEndpoint, Endpoints};
use crate::netns::RegionNetwork;
use crate::topology::Topology;
use crate::up::{Disks, with_disk};

/// Set in every supervised process's environment: the supervisor's pid. The process asks
/// the kernel for SIGTERM when the supervisor dies ([`follow_supervisor`]), so no process
/// outlives a `cdn up` that was killed without the chance to stop them.
pub const SUPERVISOR_PID: &str = "CDN_SUPERVISOR_PID";

/// In a supervised process (its environment names [`SUPERVISOR_PID`]): asks for SIGTERM
/// when the supervisor dies, and exits at once if it is already gone. Linux sends the
/// signal when the supervisor's thread that started this process ends; those are the
/// runtime's workers, which live as long as the supervisor.
pub fn follow_supervisor() {
    let Some(supervisor) = std::env::var(SUPERVISOR_PID)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return;
    };
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Signal, getppid, set_parent_process_death_signal};
        if let Err(error) = set_parent_process_death_signal(Some(Signal::TERM)) {
            tracing::warn!(%error, "cannot ask to be stopped with the supervisor");
        }
        if getppid().map(|p| p.as_raw_nonzero().get()) != Some(supervisor) {
            tracing::warn!(supervisor, "the supervisor is gone: exiting");
            std::process::exit(1);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = supervisor;
}

/// How long a process may take to say it serves.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping process may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Restart backoff: first wait, longest wait, and how long up resets it.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// A running topology of processes.
pub struct Supervisor {
    components: Vec<Arc<Component>>,
    endpoints: Endpoints,
    /// The topology in service as given, and with its ports fixed (what the processes
    /// were told): a reload compares a new topology with the first and takes the second's
    /// addresses.
    given: Topology,
    fixed: Topology,
    /// The purge log, and where the nodes' disk tiers are.
    log: PathBuf,
    disk_root: Option<PathBuf>,
    /// Config files, the purge log and (when temporary) the disk tiers; removed on drop
    /// unless kept.
    _run: Option<tempfile::TempDir>,
    run_dir: PathBuf,
    stop: watch::Sender<bool>,
    /// The control listener's task (`/v1/processes`).
    control: Option<JoinHandle<()>>,
    /// The regions' network namespaces (`--netns`), removed once the processes stopped.
    network: Option<Arc<RegionNetwork>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("components", &self.components.len())
            .field("run_dir", &self.run_dir)
            .finish()
    }
}

/// One supervised process.
struct Component {
    name: String,
    args: Vec<String>,
    /// Not to be restarted while set (a drill stopped it on purpose).
    held: AtomicBool,
    /// Wakes the supervising task when the hold is released.
    released: Notify,
    /// The running process's id, 0 while none runs.
    pid: AtomicU32,
    /// Times the process was started, the first included.
    starts: AtomicU32,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Supervisor {
    /// Starts every component of `topology` as its own process, with disk tiers as `disks`
    /// says (see [`crate::up::Up::start_with_disks`]).
    pub async fn start(topology: &Topology, disks: Disks) -> anyhow::Result<Self> {
        Self::start_with(topology, disks, false).await
    }

    /// As [`Supervisor::start`]; with `netns`, each region's edges run in a network
    /// namespace of the region's own ([`crate::netns`]), which a drill can cut off
    /// (`/v1/regions/{name}/partition`, `/heal`).
    pub async fn start_with(
        topology: &Topology,
        disks: Disks,
        netns: bool,
    ) -> anyhow::Result<Self> {
        let run = tempfile::Builder::new()
            .prefix("cdn-up-processes-")
            .tempdir()
            .context("cannot create a directory for the processes' config files")?;
        let run_dir = run.path().to_owned();
        let disk_root = match &disks {
            Disks::None => None,
            Disks::Keep(dir) => Some(dir.clone()),
            Disks::Temporary => Some(run_dir.join("cache")),
        };
        let given = topology.clone();
        let network = if netns {
            let regions: Vec<(String, usize)> = topology
                .regions
                .iter()
                .map(|r| (r.name.clone(), r.edges.len()))
                .collect();
            Some(Arc::new(RegionNetwork::create(&regions)?))
        } else {
            None
        };
        let topology = match &network {
            Some(network) => in_namespaces(topology, network)?,
            None => topology.clone(),
        };
        let topology = with_free_ports(&topology).context("cannot find free ports")?;
        let at = topology.planned();
        let api = topology.purge_api.listen;
        let log = topology
            .purge_api
            .log
            .clone()
            .unwrap_or_else(|| run_dir.join("purge.redb"));
        let binary = std::env::current_exe().context("cannot find the cdn binary")?;
        let binary = binary.to_string_lossy().into_owned();
        let (stop, _) = watch::channel(false);
        let mut supervisor = Self {
            components: Vec::new(),
            endpoints: Endpoints::new(
                &topology,
                &at,
                DnsEndpoint {
                    dns: topology.geodns.listen,
                    admin: topology.geodns.admin,
                },
                api,
            ),
            given,
            fixed: topology.clone(),
            log,
            disk_root,
            _run: Some(run),
            run_dir: run_dir.clone(),
            stop,
            control: None,
            network,
        };
        if let Some(origin) = at.origin {
            supervisor
                .launch(
                    "origin",
                    vec![
                        binary.clone(),
                        "origin".into(),
                        "--listen".into(),
                        origin.to_string(),
                    ],
                )
                .await?;
        }
        let files = supervisor.write_configs(&topology)?;
        let file = |name: &str| {
            files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, f)| f.clone())
        };
        let run = |kind: &str, name: &str| -> Vec<String> {
            let config = file(name).unwrap_or_default();
            vec![binary.clone(), kind.into(), "--config".into(), config]
        };
        supervisor
            .launch("purge-api", run("purge-api", "purge-api"))
            .await?;
        for shield in &topology.shields {
            supervisor
                .launch(&shield.name, run("shield", &shield.name))
                .await?;
        }
        for (r, region) in topology.regions.iter().enumerate() {
            for edge in &region.edges {
                let mut args = run("edge", &edge.name);
                if let Some(network) = &supervisor.network {
                    let ns = network.namespace(r);
                    let mut inside = vec!["ip".into(), "netns".into(), "exec".into(), ns];
                    inside.append(&mut args);
                    args = inside;
                }
                supervisor.launch(&edge.name, args).await?;
            }
        }
        supervisor.launch("geodns", run("geodns", "geodns")).await?;
        supervisor
            .serve_control(&topology.topology.node_token)
            .await?;
        Ok(supervisor)
    }

    /// The control listener on 127.0.0.1 (any free port; its URL in the endpoints as
    /// `supervisor`), with the node token: what a drill uses to kill a node on purpose
    /// (held down, not restarted) and start it again.
    ///
    /// - `GET /v1/processes`: every component, its pid, starts and whether it is held.
    /// - `POST /v1/processes/{name}/kill`: hold it, then SIGKILL.
    /// - `POST /v1/processes/{name}/start`: release it (started at once if down).
    async fn serve_control(&mut self, token: &str) -> anyhow::Result<()> {
        use axum::routing::{get, post};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot bind the supervisor's control listener")?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            components: self.components.clone(),
            token: token.to_owned(),
            network: self.network.clone(),
        });
        let app = axum::Router::new()
            .route("/v1/processes", get(list))
            .route("/v1/processes/{name}/kill", post(kill))
            .route("/v1/processes/{name}/start", post(start))
            .route("/v1/regions/{name}/partition", post(partition))
            .route("/v1/regions/{name}/heal", post(heal))
            .with_state(control);
        let mut stop = self.stop.subscribe();
        self.control = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await;
        }));
        self.endpoints.supervisor = Some(format!("http://{addr}"));
        Ok(())
    }

    /// Writes every component's config file for `topology` (ports fixed), returning
    /// (component, file) pairs. A running process whose file changes reloads it.
    fn write_configs(&self, topology: &Topology) -> anyhow::Result<Vec<(String, String)>> {
        let at = topology.planned();
        let api_url = format!("http://{}", topology.purge_api.listen);
        let mut files = Vec::new();
        let mut write = |name: &str, text: String| -> anyhow::Result<()> {
            let file = self.run_dir.join(format!("{name}.toml"));
            // Whole or not at all: a process watching the file never reads half of it.
            let partial = self.run_dir.join(format!(".{name}.toml.new"));
            std::fs::write(&partial, text)
                .and_then(|()| std::fs::rename(&partial, &file))
                .with_context(|| format!("cannot write {}", file.display()))?;
            files.push((name.to_owned(), file.to_string_lossy().into_owned()));
            Ok(())
        };
        write("purge-api", topology.purge_api_config_toml(&self.log, &at)?)?;
        let node = |name: &str, mut config: edge::EdgeConfig| -> anyhow::Result<String> {
            // A restarted node catches up on the purges it missed.
            config.purge.api = Some(api_url.clone());
            config.node.upgrade_socket = Some(self.run_dir.join(format!("{name}.upgrade.sock")));
            let config = with_disk(config, self.disk_root.as_deref(), name);
            toml::to_string(&config).context("a node config")
        };
        for (n, shield) in topology.shields.iter().enumerate() {
            write(
                &shield.name,
                node(&shield.name, topology.shield_config(n, &at)?)?,
            )?;
        }
        for (_, edge) in topology.edges() {
            write(
                &edge.name,
                node(&edge.name, topology.edge_config(&edge.name, &at)?)?,
            )?;
        }
        write("geodns", topology.geodns_config_toml(&at)?)?;
        Ok(files)
    }

    /// Puts `next` in service: every component's file is rewritten and each process
    /// reloads its own (see `edge::node::reload`; GeoDNS and the purge API reload theirs
    /// too). As in one process, a topology that adds, removes or moves a node or a
    /// listener is refused: that takes a restart.
    pub fn reload(&mut self, next: &Topology) -> anyhow::Result<()> {
        if next.planned() != self.given.planned()
            || next.geodns.listen != self.given.geodns.listen
            || next.geodns.admin != self.given.geodns.admin
            || next.purge_api.listen != self.given.purge_api.listen
        {
            anyhow::bail!(
                "the new topology adds, removes or moves nodes or listeners, which takes a \
                 restart of cdn up; a reload changes sites, origins, limits and settings"
            );
        }
        let mut fixed = next.clone();
        fixed.origin = self.fixed.origin.clone();
        fixed.geodns.listen = self.fixed.geodns.listen;
        fixed.geodns.admin = self.fixed.geodns.admin;
        fixed.purge_api.listen = self.fixed.purge_api.listen;
        fixed.shields = self.fixed.shields.clone();
        for (region, was) in fixed.regions.iter_mut().zip(&self.fixed.regions) {
            region.edges = was.edges.clone();
        }
        self.write_configs(&fixed)?;
        let (console, control) = (
            self.endpoints.console.take(),
            self.endpoints.supervisor.take(),
        );
        self.endpoints = Endpoints::new(
            &fixed,
            &fixed.planned(),
            DnsEndpoint {
                dns: fixed.geodns.listen,
                admin: fixed.geodns.admin,
            },
            fixed.purge_api.listen,
        );
        self.endpoints.console = console;
        self.endpoints.supervisor = control;
        self.given = next.clone();
        self.fixed = fixed;
        Ok(())
    }

    /// What `cdn up` prints: the listeners (as in one process) and where the processes'
    /// config files are.
    pub fn banner(&self, args: &str) -> String {
        let mut out = crate::up::banner(&self.endpoints, args);
        let line = format!(
            "\n  processes          {} supervised, config files in {}",
            self.components.len(),
            self.run_dir.display()
        );
        match out.find("\n\nTry:") {
            Some(at) => out.insert_str(at, &line),
            None => out.push_str(&line),
        }
        out
    }

    /// Records the operator console's URL in the endpoints.
    pub fn set_console(&mut self, url: String) {
        self.endpoints.console = Some(url);
    }

    /// Starts `args` as component `name`, supervised, once it says it serves.
    async fn launch(&mut self, name: &str, args: Vec<String>) -> anyhow::Result<()> {
        let component = Arc::new(Component {
            name: name.to_owned(),
            args,
            held: AtomicBool::new(false),
            released: Notify::new(),
            pid: AtomicU32::new(0),
            starts: AtomicU32::new(0),
            task: std::sync::Mutex::new(None),
        });
        let child = component
            .spawn()
            .await
            .with_context(|| format!("cannot start {name}"))?;
        let task = tokio::spawn(supervise(component.clone(), child, self.stop.subscribe()));
        *component.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        self.components.push(component);
        Ok(())
    }

    /// Where everything listens (the same facts as `cdn up` in one process).
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Stops every process: each gets SIGTERM at once and [`STOP_TIMEOUT`] to finish (the
    /// nodes drain and write their memory tier out) before it is killed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(control) = self.control {
            let _ = control.await;
        }
        for component in self.components.iter().rev() {
            let task = component
                .task
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }
}

impl Component {
    fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    fn release(&self) {
        self.held.store(false, Ordering::Release);
        self.released.notify_one();
    }

    /// Starts the process and waits (bounded) for its first line on stdout, which says it
    /// serves; forwards the rest of its output with its name in front.
    async fn spawn(&self) -> anyhow::Result<Child> {
        let mut child = Command::new(&self.args[0])
            .args(&self.args[1..])
            .env(SUPERVISOR_PID, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", self.args.join(" ")))?;
        self.starts.fetch_add(1, Ordering::AcqRel);
        self.pid.store(child.id().unwrap_or(0), Ordering::Release);
        let name = self.name.clone();
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward(name.clone(), BufReader::new(stderr), false));
        }
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut first = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, stdout.read_line(&mut first)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(component = %name, said = first.trim_end(), "started");
                tokio::spawn(forward(name, stdout, true));
                Ok(child)
            }
            _ => {
                let _ = child.kill().await;
                anyhow::bail!(
                    "{name} did not say it serves within {START_TIMEOUT:?} (its log, prefixed [{name}], says why)"
                )
            }
        }
    }
}

/// What the control listener works on.
struct Control {
    components: Vec<Arc<Component>>,
    token: String,
    network: Option<Arc<RegionNetwork>>,
}

impl Control {
    /// The component `name`, or the answer saying why not (a wrong token, no such name).
    fn component(
        &self,
        headers: &http::HeaderMap,
        name: &str,
    ) -> Result<&Arc<Component>, (http::StatusCode, String)> {
        self.authorized(headers)?;
        self.components
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.components.iter().map(|c| c.name.as_str()).collect();
                (
                    http::StatusCode::NOT_FOUND,
                    format!(
                        "no process {name:?}; the processes are {}",
                        known.join(", ")
                    ),
                )
            })
    }

    /// The regions' namespaces, or the answer saying why not (a wrong token, no
    /// `--netns`).
    fn network(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<&RegionNetwork, (http::StatusCode, String)> {
        self.authorized(headers)?;
        self.network.as_deref().ok_or((
            http::StatusCode::CONFLICT,
            "regions are in network namespaces only with cdn up --processes --netns".to_owned(),
        ))
    }

    fn authorized(&self, headers: &http::HeaderMap) -> Result<(), (http::StatusCode, String)> {
        let given = headers
            .get(node_api::headers::NODE_TOKEN)
            .map(http::HeaderValue::as_bytes);
        if given.is_some_and(|t| node_api::purge::tokens_match(t, self.token.as_bytes())) {
            Ok(())
        } else {
            Err((
                http::StatusCode::UNAUTHORIZED,
                "send the topology's node token in cdn-node-token".into(),
            ))
        }
    }
}

/// A process as the control listener lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessState {
    pub name: String,
    /// 0 while it is down.
    pub pid: u32,
    pub starts: u32,
    pub held: bool,
}

type ControlState = axum::extract::State<Arc<Control>>;
type ControlAnswer = Result<axum::Json<serde_json::Value>, (http::StatusCode, String)>;

async fn list(
    axum::extract::State(control): ControlState,
    headers: http::HeaderMap,
) -> Result<axum::Json<Vec<ProcessState>>, (http::StatusCode, String)> {
    control.authorized(&headers)?;
    Ok(axum::Json(
        control
            .components
            .iter()
            .map(|c| ProcessState {
                name: c.name.clone(),
                pid: c.pid.load(Ordering::Acquire),
                starts: c.starts.load(Ordering::Acquire),
                held: c.held.load(Ordering::Acquire),
            })
            .collect(),
    ))
}

async fn kill(
    axum::extract::State(control): ControlState,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: http::HeaderMap,
) -> ControlAnswer {
    let component = control.component(&headers, &name)?;
    component.hold();
    let pid = component.pid.load(Ordering::Acquire);
    if pid != 0 {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    tracing::warn!(component = %name, pid, "killed on request; held down until started");
    Ok(axum::Json(serde_json::json!({ "killed": pid })))
}

async fn start(
    axum::extract::State(control): ControlState,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: http::HeaderMap,
) -> ControlAnswer {
    control.component(&headers, &name)?.release();
    Ok(axum::Json(serde_json::json!({ "started": name })))
}

/// Cuts a region off the network (`--netns` only).
async fn partition(
    axum::extract::State(control): ControlState,
    axum::extract::Path(region): axum::extract::Path<String>,
    headers: http::HeaderMap,
) -> ControlAnswer {
    control
        .network(&headers)?
        .cut(&region)
        .map_err(|e| (http::StatusCode::BAD_REQUEST, e.to_string()))?;
    tracing::warn!(%region, "cut off the network on request");
    Ok(axum::Json(serde_json::json!({ "partitioned": region })))
}

/// Reconnects a region cut off by [`partition`].
async fn heal(
    axum::extract::State(control): ControlState,
    axum::extract::Path(region): axum::extract::Path<String>,
    headers: http::HeaderMap,
) -> ControlAnswer {
    control
        .network(&headers)?
        .heal(&region)
        .map_err(|e| (http::StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(axum::Json(serde_json::json!({ "healed": region })))
}

/// `topology` with its edges on the addresses of their regions' namespaces and the core
/// (origin, shields, purge API) on the address the namespaces reach; every port a free
/// one (an edge's namespace has nothing else listening).
fn in_namespaces(topology: &Topology, network: &RegionNetwork) -> std::io::Result<Topology> {
    let mut topology = topology.clone();
    let free = || -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port())
    };
    let core = std::net::IpAddr::V4(network.core());
    let on_core = |addr: &mut SocketAddr| -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind((core, 0))?;
        *addr = listener.local_addr()?;
        Ok(())
    };
    if let Some(origin) = &mut topology.origin.demo {
        on_core(origin)?;
    }
    on_core(&mut topology.purge_api.listen)?;
    for shield in &mut topology.shields {
        on_core(&mut shield.listen)?;
        on_core(&mut shield.admin)?;
    }
    for (r, region) in topology.regions.iter_mut().enumerate() {
        for (n, edge) in region.edges.iter_mut().enumerate() {
            let ip = std::net::IpAddr::V4(network.edge_address(r, n));
            edge.listen = SocketAddr::new(ip, free()?);
            edge.admin = SocketAddr::new(ip, free()?);
        }
    }
    Ok(topology)
}

/// Forwards a process's output, each line with the process's name in front.
async fn forward<R: tokio::io::AsyncBufRead + Unpin>(name: String, reader: R, stdout: bool) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if stdout {
            println!("[{name}] {line}");
        } else {
            eprintln!("[{name}] {line}");
        }
    }
}

/// Watches one process: restarts it when it exits unasked (after the backoff), keeps it
/// down while held, and stops it when the supervisor stops.
async fn supervise(component: Arc<Component>, mut child: Child, mut stop: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|stop| *stop) => None,
        };
        let Some(status) = exited else {
            terminate(&component.name, &mut child).await;
            component.pid.store(0, Ordering::Release);
            return;
        };
        component.pid.store(0, Ordering::Release);
        let held = component.held.load(Ordering::Acquire);
        match &status {
            Ok(status) if held => {
                tracing::info!(component = %component.name, %status, "exited; held down")
            }
            Ok(status) => {
                tracing::warn!(component = %component.name, %status, "exited unasked; restarting")
            }
            Err(error) => tracing::warn!(component = %component.name, %error, "lost; restarting"),
        }
        if started.elapsed() >= BACKOFF_RESET {
            backoff = BACKOFF_FIRST;
        }
        loop {
            if component.held.load(Ordering::Acquire) {
                tokio::select! {
                    () = component.released.notified() => continue,
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
            if !held {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            match component.spawn().await {
                Ok(next) => {
                    child = next;
                    break;
                }
                Err(error) => {
                    tracing::error!(component = %component.name, error = format!("{error:#}"), "restart failed");
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within [`STOP_TIMEOUT`].
async fn terminate(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(component = %name, "did not stop within {STOP_TIMEOUT:?}; killed");
        let _ = child.kill().await;
    }
}

/// `topology` with every port 0 replaced by a port free a moment ago (TCP, and UDP too for
/// GeoDNS, which serves both on one port), so each process is told where to listen.
///
/// The ports are drawn below the kernel's ephemeral range: a port taken from that range
/// (by binding port 0) could be handed to any other socket of the machine between the
/// moment it is picked here and the moment the process binds it, or while a process is
/// down and being restarted. Below the range only another explicit choice can take it.
pub fn with_free_ports(topology: &Topology) -> std::io::Result<Topology> {
    let mut topology = topology.clone();
    let fixed = |addr: &mut SocketAddr| -> std::io::Result<()> {
        if addr.port() == 0 {
            *addr = below_ephemeral(*addr, |at| std::net::TcpListener::bind(at).map(drop))?;
        }
        Ok(())
    };
    if let Some(origin) = &mut topology.origin.demo {
        fixed(origin)?;
    }
    if topology.geodns.listen.port() == 0 {
        topology.geodns.listen = free_udp_and_tcp(topology.geodns.listen)?;
    }
    fixed(&mut topology.geodns.admin)?;
    fixed(&mut topology.purge_api.listen)?;
    for node in topology.regions.iter_mut().flat_map(|r| r.edges.iter_mut()) {
        fixed(&mut node.listen)?;
        fixed(&mut node.admin)?;
    }
    for node in &mut topology.shields {
        fixed(&mut node.listen)?;
        fixed(&mut node.admin)?;
    }
    Ok(topology)
}

fn free_udp_and_tcp(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    below_ephemeral(addr, |at| {
        let _udp = std::net::UdpSocket::bind(at)?;
        std::net::TcpListener::bind(at).map(drop)
    })
}

/// `addr` with a port below the kernel's ephemeral range on which `free` succeeds: tried
/// from a place that differs between processes, at most a few thousand ports.
fn below_ephemeral(
    addr: SocketAddr,
    free: impl Fn(SocketAddr) -> std::io::Result<()>,
) -> std::io::Result<SocketAddr> {
    const LOW: u16 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 1_000, 32_768);
    let span = high - LOW;
    let start = fastrand::u16(0..span);
    let mut last = None;
    for step in 0..span.min(4_096) {
        let mut at = addr;
        at.set_port(LOW + (start + step) % span);
        match free(at) {
            Ok(()) => return Ok(at),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port below the ephemeral range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_0_gets_a_port_and_fixed_ports_stay() {
        let text = crate::topology::DEFAULT_TOPOLOGY.replace(":8080\"", ":0\"");
        let topology = Topology::from_toml(&text).expect("topology");
        let fixed = with_free_ports(&topology).expect("free ports");
        let at = fixed.planned();
        assert!(at.edges.values().all(|(public, _)| public.port() != 0));
        assert_eq!(fixed.geodns.listen, topology.geodns.listen, "fixed already");
        let unchanged = with_free_ports(&fixed).expect("nothing to do");
        assert_eq!(unchanged.planned(), at);
    }
}
