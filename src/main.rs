//! `cdn`: one binary, a subcommand per component.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use cdn::console::{ConsoleOptions, ConsoleServer};
use cdn::demo_origin::DemoOrigin;
use cdn::drill::{self, DrillOptions};
use cdn::endpoints::Endpoints;
use cdn::supervise::Supervisor;
use cdn::topology::Topology;
use cdn::up::{Disks, Up};
use cdn::warm::{Source, WarmOptions};
use clap::{Parser, Subcommand};
use edge::node::role::Role;
use edge::node::upgrade;
use edge::{EdgeConfig, EdgeServer};
use geodns::{GeoDnsConfig, GeoDnsServer};
use origin_shield::ShieldServer;
use purge_api::{PurgeApiConfig, PurgeApiServer};

mod terminal;

/// jemalloc rather than the C library's allocator: an edge holds millions of small,
/// long-lived objects allocated between short-lived request buffers, and jemalloc's size
/// classes (no per-allocation header) and per-thread arenas keep that from fragmenting
/// (RAM per cached object measured in `BENCHMARKS.md`, "Memory tier per object"). Built
/// with `disable_cache_oblivious`: by default every allocation of a page or more is
/// offset by a random fraction of a page, which costs a whole extra page each: 1.25x the
/// memory for a cache of 16 KiB objects.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Where the demo origin listens when run alone.
const DEFAULT_ORIGIN: &str = "127.0.0.1:8081";

/// Where `cdn console` listens by default: the port `cdn up`'s own console takes at the
/// default port base, plus one, so both can run.
const DEFAULT_CONSOLE: &str = "127.0.0.1:8100";

/// `cdn up`'s console port, from the topology's port base (8099 at 8000).
const CONSOLE_PORT_OFFSET: u16 = 99;

#[derive(Debug, Parser)]
#[command(name = "cdn", version, about = "A multi-region edge cache and CDN")]
struct Cli {
    /// How the process log (stderr) is written: `text` for people (coloured only when
    /// stderr is a terminal), `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Worker threads of the process's runtime (default: the cores it may run on, by its
    /// CPU affinity and cgroup quota). One thread runs tokio's current-thread scheduler,
    /// which serves many busy connections more evenly on one core.
    #[arg(long, global = true)]
    threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The process log on stderr, filtered by `RUST_LOG` (default `info`). No ANSI colour
/// codes unless stderr is a terminal: a log file or a collector gets plain text.
fn init_process_log(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// Which topology a command acts on.
#[derive(Debug, Clone, clap::Args)]
struct TopologyArgs {
    /// Topology file (see config/topology.toml); the embedded default when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Move every port of the topology so the file's port base becomes this one.
    #[arg(long)]
    port_base: Option<u16>,
}

impl TopologyArgs {
    fn load(&self) -> anyhow::Result<Topology> {
        let topology = match &self.config {
            Some(path) => Topology::from_file(path)?,
            None => Topology::default_local(),
        };
        Ok(match self.port_base {
            Some(base) => topology.with_port_base(base)?,
            None => topology,
        })
    }

    /// The endpoints of a running topology: from the file `cdn up --endpoints` wrote, or
    /// where the topology puts its listeners.
    fn endpoints(&self, file: Option<&Path>) -> anyhow::Result<Endpoints> {
        Ok(match file {
            Some(path) => Endpoints::from_file(path)?,
            None => Endpoints::planned(&self.load()?)?,
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole multi-region CDN on this machine: demo origin, shield, edges in three
    /// regions, GeoDNS and the purge API (the embedded default topology, or --config).
    /// Every edge and shield has a disk tier under a temporary directory (removed on exit).
    /// SIGHUP, or a change of the --config file, reloads the topology: sites, origins,
    /// limits and settings change on every node, GeoDNS and the purge API, caches kept.
    Up {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Also write every listener's address (and the default publisher token) here, as JSON.
        #[arg(long)]
        endpoints: Option<PathBuf>,
        /// Keep the nodes' disk caches in this directory (a subdirectory per node) across
        /// runs, instead of a temporary one: a later run serves what they hold.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Write every edge's and the shield's access log (JSON lines) to DIR/<node>.log,
        /// unless the topology sets `[defaults.edge.access_log]` / `[defaults.shield.access_log]`.
        #[arg(long, value_name = "DIR")]
        access_log: Option<PathBuf>,
        /// Where the operator console listens (port 0: any free port); by default
        /// 127.0.0.1 on the port base + 99 (8099), moved by --port-base like every port,
        /// or any free port when the topology asks for port 0 somewhere.
        #[arg(long, value_name = "ADDR")]
        console: Option<SocketAddr>,
        /// Run every edge, shield, GeoDNS, the purge API and the origin as an OS process of
        /// its own (this binary), supervised: restarted when one exits unasked, all stopped
        /// on Ctrl-C, each one's log lines prefixed with its name.
        #[arg(long)]
        processes: bool,
        /// With --processes: each region's edges in a network namespace of the region's own
        /// (veth to this namespace; needs root and iproute2), so `cdn drill --mode
        /// partition` can cut a region off the network and heal it.
        #[arg(long, requires = "processes")]
        netns: bool,
    },
    /// Serve the operator console for a running topology: a web page showing regions,
    /// health, load, hit ratios, GeoDNS answers, purges and drills live.
    Console {
        /// The endpoints file `cdn up --endpoints` wrote.
        #[arg(long)]
        endpoints: PathBuf,
        /// Where the console listens (port 0: any free port).
        #[arg(long, default_value = DEFAULT_CONSOLE)]
        listen: SocketAddr,
    },
    /// Rehearse a regional failure on a running topology: drain the region's edges, time
    /// GeoDNS's failover, check no answer holds a drained edge, then restore the region.
    Drill {
        /// The region to take out.
        #[arg(long)]
        region: String,
        #[command(flatten)]
        topology: TopologyArgs,
        /// The endpoints file `cdn up --endpoints` wrote (instead of --config/--port-base).
        #[arg(long)]
        endpoints: Option<PathBuf>,
        /// Time between two questions to GeoDNS.
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        poll: Duration,
        /// Give up when failover or recovery takes longer than this.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// How the region fails: drain (health checks fail, the edges keep serving), kill
        /// (SIGKILL to every edge process; needs `cdn up --processes`) or partition (the
        /// region cut off the network; needs `cdn up --processes --netns`).
        #[arg(long, value_enum, default_value = "drain")]
        mode: drill::Mode,
        /// Run the region's clients through the drill at this many requests per second
        /// (resolving through GeoDNS, caching answers for their TTL, Zipf over 2,000 URLs),
        /// and report what they saw per phase.
        #[arg(long, value_name = "RATE")]
        load: Option<f64>,
        /// Warm the region from the one its clients failed over to before they come back.
        #[arg(long)]
        warm_before_restore: bool,
        /// Write the report as JSON here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Fill a region's caches with another region's hottest objects (or a URL list) before
    /// moving traffic to it; bounded concurrency, paced to a rate.
    Warm {
        /// The region whose edges' hottest objects are copied.
        #[arg(long, required_unless_present = "urls", conflicts_with = "urls")]
        from: Option<String>,
        /// A file of absolute URLs (`http://host/path`), one per line, instead of --from.
        #[arg(long)]
        urls: Option<PathBuf>,
        /// The region whose edges are warmed.
        #[arg(long)]
        to: String,
        /// How many of the source's hottest objects.
        #[arg(long, default_value_t = 1000)]
        top: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Requests started per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[command(flatten)]
        topology: TopologyArgs,
        /// The endpoints file `cdn up --endpoints` wrote (instead of --config/--port-base).
        #[arg(long)]
        endpoints: Option<PathBuf>,
    },
    /// Print the config file the topology gives one node (an edge or a shield, `geodns` or
    /// `purge-api`), to run it as a process of its own with `cdn edge --config`,
    /// `cdn shield --config`, `cdn geodns --config` or `cdn purge-api --config`.
    Config {
        /// The node's name, as in the topology, or `geodns` or `purge-api`.
        node: String,
        #[command(flatten)]
        topology: TopologyArgs,
    },
    /// Run one edge cache node (reloads its config on SIGHUP, file change or
    /// `POST /v1/config/reload`).
    Edge {
        /// TOML config file (see README.md for the format).
        #[arg(long)]
        config: PathBuf,
        /// Take the listening sockets of the edge running with this config (over its
        /// `node.upgrade_socket`) and have it drain and exit: a new binary with no
        /// connection refused.
        #[arg(long)]
        upgrade: bool,
    },
    /// Run one origin shield node (the mid tier: its sites fetch from origin pools;
    /// reloads as an edge does).
    Shield {
        /// TOML config file, in the edge's format (see README.md).
        #[arg(long)]
        config: PathBuf,
        /// Take over the running shield's listening sockets, as `cdn edge --upgrade` does.
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the authoritative GeoDNS server (reloads its config on SIGHUP or file change).
    Geodns {
        /// TOML config file (see README.md for the format).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the publishers' purge API (durable log, fan-out to every node).
    PurgeApi {
        /// TOML config file (see README.md for the format).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the demo origin alone.
    Origin {
        #[arg(long, default_value = DEFAULT_ORIGIN)]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cdn::runtime::build(cli.threads)?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    init_process_log(cli.log_format);
    cdn::supervise::follow_supervisor();
    match cli.command {
        Command::Up {
            topology,
            endpoints,
            cache_dir,
            access_log,
            console,
            processes,
            netns,
        } => {
            let args = match (&endpoints, &topology.config, topology.port_base) {
                (Some(path), _, _) => format!(" --endpoints {}", path.display()),
                (None, config, base) => {
                    let mut args = String::new();
                    if let Some(config) = config {
                        args.push_str(&format!(" --config {}", config.display()));
                    }
                    if let Some(base) = base {
                        args.push_str(&format!(" --port-base {base}"));
                    }
                    args
                }
            };
            if let Some(dir) = &access_log {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the access log directory {}", dir.display())
                })?;
            }
            // The topology as given, with what the command line adds; a reload reads it
            // the same way.
            let load = || -> anyhow::Result<cdn::topology::Topology> {
                let loaded = topology.load()?;
                Ok(match &access_log {
                    Some(dir) => loaded.with_access_logs(dir),
                    None => loaded,
                })
            };
            let disks = match cache_dir {
                Some(dir) => Disks::Keep(dir),
                None => Disks::Temporary,
            };
            let first = load()?;
            let console_addr = match console {
                Some(addr) => addr,
                // A topology that lets the kernel pick ports gets a console on one too.
                None if first.has_dynamic_ports() => SocketAddr::from(([127, 0, 0, 1], 0)),
                None => SocketAddr::from((
                    [127, 0, 0, 1],
                    first
                        .topology
                        .port_base
                        .checked_add(CONSOLE_PORT_OFFSET)
                        .context("the port base leaves no room for the console's port: pass --console ADDR")?,
                )),
            };
            let mut up = if processes {
                Running::Processes(Box::new(
                    Supervisor::start_with(&first, disks, netns).await?,
                ))
            } else {
                Running::InProcess(Box::new(Up::start_with_disks(&first, disks).await?))
            };
            let console = ConsoleServer::start(
                up.endpoints().clone(),
                console_addr,
                ConsoleOptions::default(),
            )
            .await?;
            up.set_console(console.url());
            let write_endpoints = |up: &Running| -> anyhow::Result<()> {
                if let Some(path) = &endpoints {
                    std::fs::write(path, up.endpoints().to_json())
                        .with_context(|| format!("cannot write endpoints to {}", path.display()))?;
                }
                Ok(())
            };
            write_endpoints(&up)?;
            println!("{}", up.banner(&args));
            let stopped = shutdown_signal();
            tokio::pin!(stopped);
            let mut reloads = Reloads::new(topology.config.clone());
            loop {
                tokio::select! {
                    () = &mut stopped => break,
                    () = reloads.next() => {}
                }
                let result = load().and_then(|next| up.reload(&next));
                match result {
                    Ok(reloaded) => {
                        tracing::info!(%reloaded, "topology reloaded");
                        console.set_endpoints(up.endpoints().clone());
                        write_endpoints(&up)?;
                    }
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "topology reload refused; what was in service stays"
                        );
                    }
                }
            }
            console.shutdown().await;
            up.shutdown().await;
        }
        Command::Console { endpoints, listen } => {
            let endpoints = Endpoints::from_file(&endpoints)?;
            let console =
                ConsoleServer::start(endpoints, listen, ConsoleOptions::default()).await?;
            println!("console on {}", console.url());
            shutdown_signal().await;
            console.shutdown().await;
        }
        Command::Drill {
            region,
            topology,
            endpoints,
            poll,
            timeout,
            mode,
            load,
            warm_before_restore,
            report,
        } => {
            let endpoints = topology.endpoints(endpoints.as_deref())?;
            let options = DrillOptions {
                poll,
                timeout,
                mode,
                load: load.map(|rate| cdn::clients::Load {
                    rate,
                    ..Default::default()
                }),
                warm_before_restore: warm_before_restore.then(WarmOptions::default),
                ..DrillOptions::default()
            };
            terminal::drill(&endpoints, &region, &options, report.as_deref()).await?;
        }
        Command::Warm {
            from,
            urls,
            to,
            top,
            concurrency,
            rate,
            topology,
            endpoints,
        } => {
            let endpoints = topology.endpoints(endpoints.as_deref())?;
            let source = match (from, urls) {
                (Some(region), _) => Source::Region(region),
                (None, Some(path)) => Source::Urls(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read URL list {}", path.display()))?
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned)
                        .collect(),
                ),
                (None, None) => anyhow::bail!("name --from REGION or --urls FILE"),
            };
            let options = WarmOptions {
                top,
                concurrency,
                rate,
            };
            terminal::warm(&endpoints, &source, &to, &options).await?;
        }
        Command::Config { node, topology } => {
            let topology = topology.load()?;
            let at = topology.planned();
            let text = match node.as_str() {
                "geodns" => topology.geodns_config_toml(&at)?,
                "purge-api" => {
                    let log = topology.purge_api.log.clone();
                    topology.purge_api_config_toml(&log.unwrap_or("purge.redb".into()), &at)?
                }
                _ => topology.node_config_toml(&node, &at)?,
            };
            print!("{text}");
        }
        Command::Edge {
            config: path,
            upgrade,
        } => run_node(Role::Edge, path, upgrade).await?,
        Command::Shield {
            config: path,
            upgrade,
        } => run_node(Role::Shield, path, upgrade).await?,
        Command::Geodns { config: path } => {
            let config = GeoDnsConfig::from_file(&path)?;
            let server = GeoDnsServer::start(config, Some(path)).await?;
            println!(
                "geodns answering on {} (UDP and TCP), admin on http://{}",
                server.dns_addr(),
                server.admin_addr()
            );
            shutdown_signal().await;
            server.shutdown().await;
        }
        Command::PurgeApi { config: path } => {
            let config = PurgeApiConfig::from_file(&path)?;
            let server = PurgeApiServer::start(config).await?;
            println!("purge API on http://{}", server.addr());
            let stopped = shutdown_signal();
            tokio::pin!(stopped);
            let mut reloads = Reloads::new(Some(path.clone()));
            loop {
                tokio::select! {
                    () = &mut stopped => break,
                    () = reloads.next() => {}
                }
                // Who may purge what changes live; the rest is what the API started with.
                let result = PurgeApiConfig::from_file(&path)
                    .and_then(|next| server.reload_directory(next.sites, next.publishers));
                match result {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "sites and publishers reloaded")
                    }
                    Err(error) => {
                        tracing::error!(%error, "reload refused; the running config stays")
                    }
                }
            }
            server.shutdown().await;
        }
        Command::Origin { listen } => {
            let origin = DemoOrigin::start(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("demo origin on http://{}", origin.addr());
            shutdown_signal().await;
            origin.shutdown().await;
        }
    }
    Ok(())
}

/// `cdn up`'s topology, in one process or as supervised processes.
enum Running {
    InProcess(Box<Up>),
    Processes(Box<Supervisor>),
}

impl Running {
    fn endpoints(&self) -> &Endpoints {
        match self {
            Running::InProcess(up) => up.endpoints(),
            Running::Processes(supervisor) => supervisor.endpoints(),
        }
    }

    fn set_console(&mut self, url: String) {
        match self {
            Running::InProcess(up) => up.set_console(url),
            Running::Processes(supervisor) => supervisor.set_console(url),
        }
    }

    fn banner(&self, args: &str) -> String {
        match self {
            Running::InProcess(up) => up.banner(args),
            Running::Processes(supervisor) => supervisor.banner(args),
        }
    }

    /// Puts `next` in service; says what changed.
    fn reload(&mut self, next: &cdn::topology::Topology) -> anyhow::Result<String> {
        match self {
            Running::InProcess(up) => Ok(up.reload(next)?.to_string()),
            Running::Processes(supervisor) => {
                supervisor.reload(next)?;
                Ok("every process's config file rewritten; each reloads its own".into())
            }
        }
    }

    async fn shutdown(self) {
        match self {
            Running::InProcess(up) => up.shutdown().await,
            Running::Processes(supervisor) => supervisor.shutdown().await,
        }
    }
}

/// How long a new process waits for the node it took over to exit, when it must (a disk
/// tier is one process's at a time): the old node's drain and write-out, with room.
const RELEASE_WITHIN: Duration = Duration::from_secs(60);

/// `cdn edge` / `cdn shield`: one node from its config file, reloading it when it changes,
/// offering its listeners to an upgrade, and (with `upgrade`) started on the listeners of
/// the node running now (see `edge::node::upgrade`).
async fn run_node(role: Role, path: PathBuf, upgrade: bool) -> anyhow::Result<()> {
    let config = EdgeConfig::from_file(&path)?;
    let socket = config.node.upgrade_socket();
    let keeps_disk = config.cache.disk.is_some();
    let (inherited, mut handover) = if upgrade {
        let asking = socket.clone();
        let (inherited, mut handover) =
            tokio::task::spawn_blocking(move || upgrade::take_over(&asking)).await??;
        if keeps_disk {
            // The disk tier is the old node's until it exits: it goes first, and what
            // connects meanwhile waits in the listen queue.
            handover = tokio::task::spawn_blocking(move || {
                handover.release()?;
                handover.wait_gone(RELEASE_WITHIN)?;
                Ok::<_, upgrade::UpgradeError>(handover)
            })
            .await??;
        }
        (Some(inherited), Some(handover))
    } else {
        (None, None)
    };
    let mut server = match role {
        Role::Shield => ShieldServer::start_on(config, inherited)
            .await?
            .into_server(),
        Role::Edge => EdgeServer::start_on(config, inherited).await?,
    };
    server.follow_file(path);
    if let Some(handover) = handover.as_mut()
        && !keeps_disk
    {
        // Serving already: the old node may stop accepting now.
        handover.release()?;
    }
    let upgrades = server.offer_upgrades(&socket)?;
    println!(
        "{} {} serving on http://{}, admin on http://{}{}",
        role.as_str(),
        server.edge().name(),
        server.public_addr(),
        server.admin_addr(),
        server
            .https_addr()
            .map_or(String::new(), |a| format!(", HTTPS on {a}"))
    );
    tokio::select! {
        () = shutdown_signal() => {}
        () = upgrades.released() => {
            tracing::info!("upgraded: a new process serves on these listeners; draining");
        }
    }
    drop(upgrades);
    server.shutdown().await;
    Ok(())
}

/// When `cdn up` reloads its topology: on SIGHUP, and when the topology file (if there is
/// one) changes, checked each second.
struct Reloads {
    /// The topology file and its last stamp.
    file: Option<(PathBuf, Option<Stamp>)>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Reloads {
    fn new(file: Option<PathBuf>) -> Self {
        Self {
            file: file.map(|path| {
                let stamp = stamp(&path);
                (path, stamp)
            }),
            #[cfg(unix)]
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// Resolves at the next reason to reload.
    async fn next(&mut self) {
        loop {
            #[cfg(unix)]
            let hup = async {
                match self.hup.as_mut() {
                    Some(hup) => {
                        hup.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<()>();
            tokio::select! {
                () = hup => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Some((path, seen)) = &mut self.file {
                let now = stamp(path);
                if now != *seen {
                    *seen = now;
                    return;
                }
            }
        }
    }
}

/// A file's modification time and length: a change of either is a new file.
type Stamp = (Option<std::time::SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
