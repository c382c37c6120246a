//! `cdn drill --region NAME [--mode drain|kill] [--load RATE] [--warm-before-restore]`: a
//! regional failover drill against a running topology.
//!
//! The failure is a drain (`drain`: the region's edges fail their health checks and keep
//! serving) or a real one (`kill`: every edge process of the region is killed with
//! SIGKILL through `cdn up --processes`'s supervisor, which keeps them down until the
//! drill restores them; `partition`: the region's network namespace is cut off, under
//! `cdn up --processes --netns`, so its edges neither answer nor refuse). With `--load`, a population of the region's clients
//! ([`crate::clients`]) fetches through GeoDNS for the whole drill, and the report gives
//! what they saw per phase: before, failure (until GeoDNS answers another region),
//! failed over, restore (until it answers the region again) and the 5 s after: requests,
//! errors by kind, p50/p99, hit ratio, the region that served and the origin's requests;
//! and the failure window clients saw. `--warm-before-restore` fills the region from
//! the one its clients failed over to (`cdn warm`) while it is still out of rotation.
//!
//! The drill asks GeoDNS what a client of the region is answered (a query carrying one of
//! the region's client networks as EDNS Client Subnet), drains every edge of the region
//! (their `/healthz` fails, they keep serving), and asks again every `poll` until the
//! answer names another region: the time from the drain to that answer is the failover
//! time, which health probes bound by `fall x interval`. It then keeps asking for `settle`
//! and counts every answer still holding a drained edge: a dead answer, which must never
//! happen once GeoDNS has failed over. Then it resumes the edges and measures the way back
//! the same way. The edges are resumed whatever happens, also on an error or a timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use crate::clients::{self, Load, Population, Summary};
use crate::endpoints::{Endpoints, RegionEndpoints};
use crate::node_admin::{AdminError, NodeAdmin};
use crate::warm::{self, WarmOptions, WarmReport};

/// How a drill runs.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Time between two questions to GeoDNS.
    pub poll: Duration,
    /// Longest wait for a failover or a recovery before the drill gives up.
    pub timeout: Duration,
    /// How long answers are checked for drained edges once failed over.
    pub settle: Duration,
    /// How the region fails.
    pub mode: Mode,
    /// Client load through the drill, when measured.
    pub load: Option<Load>,
    /// How long the load runs before the failure and once failed over.
    pub phase: Duration,
    /// How long after the switch-back the load runs (the `after` phase).
    pub after: Duration,
    /// Warm the region from the one its clients failed over to before they come back.
    pub warm_before_restore: Option<WarmOptions>,
}

impl Default for DrillOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(50),
            timeout: Duration::from_secs(30),
            settle: Duration::from_secs(3),
            mode: Mode::Drain,
            load: None,
            phase: Duration::from_secs(3),
            after: Duration::from_secs(5),
            warm_before_restore: None,
        }
    }
}

/// How the region is made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Health checks fail (`POST /v1/drain`); the edges keep serving.
    Drain,
    /// Every edge process of the region is killed (SIGKILL), through `cdn up --processes`.
    Kill,
    /// The region is cut off the network (its namespace's link down), through `cdn up
    /// --processes --netns`: its edges run on but nothing reaches them.
    Partition,
}

/// What GeoDNS answered a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The region the CNAME points to (`<region>.edge.<zone>`).
    pub region: String,
    pub addresses: Vec<IpAddr>,
    /// The shortest TTL of the answer's records: how long a resolver keeps it.
    pub ttl: u32,
}

/// One leg of the drill (out, or back).
#[derive(Debug, Clone)]
pub struct Leg {
    /// From the drain (or resume) to the first answer naming the expected side.
    pub took: Duration,
    /// The region clients were sent to at the end of the leg.
    pub region: String,
    /// Answers received during the leg.
    pub answers: u64,
}

/// The outcome of a drill.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub region: String,
    pub mode: Mode,
    /// The client network the drill asked as.
    pub client: String,
    pub before: Answer,
    pub failover: Leg,
    /// Answers holding a drained edge after GeoDNS first failed over.
    pub dead_answers: u64,
    /// Answers checked after the failover.
    pub settled_answers: u64,
    pub recovery: Leg,
    /// What the clients saw, by phase (with `--load`).
    pub phases: Vec<Phase>,
    /// From the first failed client request's start to the last one's end.
    pub failure_window: Option<Duration>,
    /// The answers' TTL before the drill: with the health checks' detection time, what
    /// bounds the failure window.
    pub ttl: u32,
    /// What warming did before the clients came back.
    pub warmed: Option<WarmReport>,
}

/// One phase of a drill as the clients saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub name: &'static str,
    /// From the start of the load, in seconds.
    pub from_s: f64,
    pub to_s: f64,
    #[serde(flatten)]
    pub clients: Summary,
    /// Requests the demo origin received during the phase (when the topology has one).
    pub origin_requests: Option<u64>,
}

impl DrillReport {
    /// The report as JSON (`--report FILE`).
    pub fn to_json(&self) -> serde_json::Value {
        let leg = |leg: &Leg| serde_json::json!({ "took_ms": leg.took.as_millis() as u64, "region": leg.region, "answers": leg.answers });
        serde_json::json!({
            "region": self.region,
            "mode": self.mode,
            "client": self.client,
            "ttl_s": self.ttl,
            "before": { "region": self.before.region, "addresses": self.before.addresses },
            "failover": leg(&self.failover),
            "dead_answers": self.dead_answers,
            "settled_answers": self.settled_answers,
            "recovery": leg(&self.recovery),
            "failure_window_ms": self.failure_window.map(|w| w.as_millis() as u64),
            "phases": self.phases,
            "warmed": self.warmed.as_ref().map(|w| serde_json::json!({
                "urls": w.urls, "requests": w.requests, "filled": w.filled,
                "already_cached": w.already_cached, "failed": w.failed,
                "elapsed_ms": w.elapsed.as_millis() as u64,
            })),
        })
    }
}

/// Live progress, for a terminal or a log.
#[derive(Debug, Clone)]
pub enum Progress {
    Baseline(Answer),
    /// The load started (with `--load`).
    Loading {
        clients: usize,
        rate: f64,
    },
    Drained {
        edges: Vec<String>,
    },
    Killed {
        edges: Vec<String>,
    },
    Partitioned {
        region: String,
    },
    Healed {
        region: String,
    },
    /// The killed edges run and answer again (still out of rotation when warming).
    Restarted {
        edges: Vec<String>,
    },
    Warmed(WarmReport),
    Waiting {
        elapsed: Duration,
        answer: Answer,
    },
    FailedOver(Leg),
    Settled {
        answers: u64,
        dead: u64,
    },
    Resumed,
    Recovered(Leg),
}

/// Why a drill could not be run or finished.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("no region {region:?} in this topology (regions: {known})")]
    UnknownRegion { region: String, known: String },
    #[error(
        "region {0:?} has no client networks, so the drill cannot ask GeoDNS as one of its clients: give it `clients` in the topology"
    )]
    NoClients(String),
    #[error("the topology has no site, so there is no name to ask GeoDNS for")]
    NoSite,
    #[error("GeoDNS at {server}: {message}")]
    Dns { server: SocketAddr, message: String },
    #[error(
        "before the drill, clients of {region} are answered with region {answered:?}: is a region already drained or down?"
    )]
    NotHome { region: String, answered: String },
    #[error("{what} did not happen within {timeout:?} (last answer: region {last:?})")]
    Timeout {
        what: &'static str,
        timeout: Duration,
        last: String,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(
        "kill and partition modes need the topology run by `cdn up --processes` (with \
         --netns for partition), whose supervisor kills, restarts, cuts off and heals (the \
         endpoints file names no supervisor)"
    )]
    NoSupervisor,
    #[error("warming the region before the clients come back: {0}")]
    Warm(#[from] warm::WarmError),
    #[error("{edge} did not answer within {timeout:?} of being started again")]
    NotBack { edge: String, timeout: Duration },
}

/// Runs a drill on `region`, reporting progress to `progress`.
pub async fn run(
    endpoints: &Endpoints,
    region: &str,
    options: &DrillOptions,
    mut progress: impl FnMut(Progress),
) -> Result<DrillReport, DrillError> {
    let target = endpoints
        .region(region)
        .ok_or_else(|| DrillError::UnknownRegion {
            region: region.to_owned(),
            known: endpoints.region_names(),
        })?;
    let client = target
        .clients
        .first()
        .ok_or_else(|| DrillError::NoClients(region.to_owned()))?;
    let subnet: ipnet::IpNet = client.parse().map_err(|_| DrillError::Dns {
        server: endpoints.geodns.dns,
        message: format!("client network {client:?} is not a CIDR"),
    })?;
    let name = &endpoints.sites.first().ok_or(DrillError::NoSite)?.cname;
    let dns = Resolver {
        server: endpoints.geodns.dns,
        name: name.clone(),
        subnet,
    };
    let before = dns.ask().await?;
    if before.region != region {
        return Err(DrillError::NotHome {
            region: region.to_owned(),
            answered: before.region,
        });
    }
    progress(Progress::Baseline(before.clone()));

    let admin = NodeAdmin::new(&endpoints.node_token);
    let control = match (options.mode, &endpoints.supervisor) {
        (Mode::Drain, _) => None,
        (_, Some(url)) => Some(
            url.trim_start_matches("http://")
                .parse::<SocketAddr>()
                .map_err(|_| DrillError::NoSupervisor)?,
        ),
        (_, None) => return Err(DrillError::NoSupervisor),
    };
    let population = options.load.as_ref().map(|load| {
        progress(Progress::Loading {
            clients: load.clients,
            rate: load.rate,
        });
        Population::start(endpoints, target, load)
    });
    let clock = Clock {
        started: population
            .as_ref()
            .map_or_else(Instant::now, Population::started),
        origin: endpoints.origin,
    };
    let mut marks = vec![clock.mark().await];
    if population.is_some() {
        tokio::time::sleep(options.phase).await;
    }
    marks.push(clock.mark().await);
    let failed = fail(&admin, control, target, options.mode).await;
    let outcome = match failed {
        Ok(()) => {
            let edges = target.edges.iter().map(|e| e.name.clone()).collect();
            progress(match options.mode {
                Mode::Drain => Progress::Drained { edges },
                Mode::Kill => Progress::Killed { edges },
                Mode::Partition => Progress::Partitioned {
                    region: target.name.clone(),
                },
            });
            let restore = Restore {
                admin: &admin,
                control,
                endpoints,
                from: None,
            };
            away_and_back(
                &dns,
                restore,
                target,
                options,
                &clock,
                &mut marks,
                &mut progress,
            )
            .await
        }
        Err(e) => Err(e),
    };
    // Whatever happened, the region goes back into rotation.
    let restored = restore_anyway(&admin, control, target, options.mode).await;
    let records = match population {
        Some(population) => {
            if outcome.is_ok() {
                tokio::time::sleep(options.after).await;
            }
            marks.push(clock.mark().await);
            Some(population.stop().await)
        }
        None => None,
    };
    let (failover, dead, settled, recovery, warmed) = outcome?;
    restored?;
    let phases = records
        .as_deref()
        .map(|records| phases(records, &marks))
        .unwrap_or_default();
    Ok(DrillReport {
        region: region.to_owned(),
        mode: options.mode,
        client: client.clone(),
        ttl: before.ttl,
        before,
        failover,
        dead_answers: dead,
        settled_answers: settled,
        recovery,
        failure_window: records.as_deref().map(clients::failure_window),
        phases,
        warmed,
    })
}

/// Where the drill is in time: seconds from the load's start, and the origin's request
/// count then.
struct Clock {
    started: Instant,
    origin: Option<SocketAddr>,
}

impl Clock {
    async fn mark(&self) -> (Duration, Option<u64>) {
        let total = match self.origin {
            Some(origin) => origin_requests(origin).await,
            None => None,
        };
        (self.started.elapsed(), total)
    }
}

/// The demo origin's request count (`/__stats`).
async fn origin_requests(origin: SocketAddr) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(origin).await.ok()?;
        stream
            .write_all(b"GET /__stats HTTP/1.0\r\nHost: origin\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str::<serde_json::Value>(body).ok()?["total"].as_u64()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The phases between the marks: before, failure, failed over, restore, after.
fn phases(records: &[clients::Record], marks: &[(Duration, Option<u64>)]) -> Vec<Phase> {
    const NAMES: [&str; 5] = ["before", "failure", "failed over", "restore", "after"];
    NAMES
        .iter()
        .zip(marks.windows(2))
        .map(|(name, pair)| {
            let ((from, before), (to, after)) = (pair[0], pair[1]);
            Phase {
                name,
                from_s: from.as_secs_f64(),
                to_s: to.as_secs_f64(),
                clients: Summary::of(records, from, to),
                origin_requests: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
            }
        })
        .collect()
}

/// Takes the region out: drains its edges, or kills their processes.
async fn fail(
    admin: &NodeAdmin,
    control: Option<SocketAddr>,
    region: &RegionEndpoints,
    mode: Mode,
) -> Result<(), DrillError> {
    match (mode, control) {
        (Mode::Kill, Some(control)) => {
            for edge in &region.edges {
                admin.kill_process(control, &edge.name).await?;
            }
            Ok(())
        }
        (Mode::Partition, Some(control)) => Ok(admin.partition(control, &region.name).await?),
        _ => Ok(drain(admin, region).await?),
    }
}

/// Puts the region back whatever state a failed drill left it in (processes started,
/// edges resumed), reporting the first error.
async fn restore_anyway(
    admin: &NodeAdmin,
    control: Option<SocketAddr>,
    region: &RegionEndpoints,
    mode: Mode,
) -> Result<(), DrillError> {
    bring_back(admin, control, region, mode, Duration::from_secs(30)).await?;
    Ok(resume(admin, region).await?)
}

/// Undoes a kill or a partition (starts the processes again, or reconnects the region)
/// and waits, up to `timeout`, until every edge answers; `false` for a drain, which has
/// nothing to undo before its edges are resumed.
async fn bring_back(
    admin: &NodeAdmin,
    control: Option<SocketAddr>,
    region: &RegionEndpoints,
    mode: Mode,
    timeout: Duration,
) -> Result<bool, DrillError> {
    match (mode, control) {
        (Mode::Kill, Some(control)) => {
            for edge in &region.edges {
                admin.start_process(control, &edge.name).await?;
            }
        }
        (Mode::Partition, Some(control)) => admin.heal(control, &region.name).await?,
        _ => return Ok(false),
    }
    wait_answering(admin, region, timeout).await?;
    Ok(true)
}

/// How the region comes back.
struct Restore<'a> {
    admin: &'a NodeAdmin,
    control: Option<SocketAddr>,
    endpoints: &'a Endpoints,
    /// The region the clients failed over to: the source of warming.
    from: Option<String>,
}

/// Waits until every edge of `region` answers on its admin listener.
async fn wait_answering(
    admin: &NodeAdmin,
    region: &RegionEndpoints,
    timeout: Duration,
) -> Result<(), DrillError> {
    for edge in &region.edges {
        let deadline = Instant::now() + timeout;
        while admin.health(&edge.name, edge.admin).await.is_err() {
            if Instant::now() > deadline {
                return Err(DrillError::NotBack {
                    edge: edge.name.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn away_and_back(
    dns: &Resolver,
    mut restore: Restore<'_>,
    target: &RegionEndpoints,
    options: &DrillOptions,
    clock: &Clock,
    marks: &mut Vec<(Duration, Option<u64>)>,
    progress: &mut impl FnMut(Progress),
) -> Result<(Leg, u64, u64, Leg, Option<WarmReport>), DrillError> {
    let drained: Vec<IpAddr> = target.edges.iter().map(|e| e.public.ip()).collect();
    let away = |a: &Answer| a.region != target.name && !holds_any(a, &drained);
    let failover = dns
        .wait_for("failover", options, &away, &mut *progress)
        .await?;
    marks.push(clock.mark().await);
    progress(Progress::FailedOver(failover.clone()));
    restore.from = Some(failover.region.clone());

    let (mut settled, mut dead) = (0, 0);
    let until = Instant::now()
        + options.settle.max(if options.load.is_some() {
            options.phase
        } else {
            Duration::ZERO
        });
    while Instant::now() < until {
        let answer = dns.ask().await?;
        settled += 1;
        if holds_any(&answer, &drained) || answer.region == target.name {
            dead += 1;
        }
        tokio::time::sleep(options.poll).await;
    }
    progress(Progress::Settled {
        answers: settled,
        dead,
    });

    marks.push(clock.mark().await);
    let admin = restore.admin;
    // Started again (or reconnected), then drained at once when warming, so GeoDNS sends
    // no client back to the region before it is warm.
    if bring_back(
        admin,
        restore.control,
        target,
        options.mode,
        options.timeout,
    )
    .await?
    {
        if options.warm_before_restore.is_some() {
            drain(admin, target).await?;
        }
        progress(match options.mode {
            Mode::Partition => Progress::Healed {
                region: target.name.clone(),
            },
            _ => Progress::Restarted {
                edges: target.edges.iter().map(|e| e.name.clone()).collect(),
            },
        });
    }
    let warmed = match (&options.warm_before_restore, &restore.from) {
        (Some(warming), Some(from)) => {
            let source = warm::Source::Region(from.clone());
            let report =
                warm::run(restore.endpoints, &source, &target.name, warming, |_| {}).await?;
            progress(Progress::Warmed(report.clone()));
            Some(report)
        }
        _ => None,
    };
    resume(admin, target).await?;
    progress(Progress::Resumed);
    let home = |a: &Answer| a.region == target.name;
    let recovery = dns.wait_for("recovery", options, &home, progress).await?;
    marks.push(clock.mark().await);
    progress(Progress::Recovered(recovery.clone()));
    Ok((failover, dead, settled, recovery, warmed))
}

fn holds_any(answer: &Answer, addresses: &[IpAddr]) -> bool {
    answer.addresses.iter().any(|a| addresses.contains(a))
}

async fn drain(admin: &NodeAdmin, region: &RegionEndpoints) -> Result<(), AdminError> {
    for edge in &region.edges {
        admin.drain(&edge.name, edge.admin).await?;
    }
    Ok(())
}

async fn resume(admin: &NodeAdmin, region: &RegionEndpoints) -> Result<(), AdminError> {
    let mut first_error = None;
    for edge in &region.edges {
        if let Err(e) = admin.resume(&edge.name, edge.admin).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Asks GeoDNS for the site's name as a client of one network (the drill, and the
/// operator console's answers per region).
#[derive(Debug, Clone)]
pub struct Resolver {
    /// GeoDNS's UDP listener.
    pub server: SocketAddr,
    /// The name asked for (a site's `<cname>.<zone>`).
    pub name: String,
    /// The client network sent as EDNS Client Subnet.
    pub subnet: ipnet::IpNet,
}

impl Resolver {
    /// Asks until `done` holds for an answer, at most `options.timeout`.
    async fn wait_for(
        &self,
        what: &'static str,
        options: &DrillOptions,
        done: &impl Fn(&Answer) -> bool,
        progress: &mut impl FnMut(Progress),
    ) -> Result<Leg, DrillError> {
        let started = Instant::now();
        let mut answers = 0;
        loop {
            let answer = self.ask().await?;
            answers += 1;
            if done(&answer) {
                return Ok(Leg {
                    took: started.elapsed(),
                    region: answer.region,
                    answers,
                });
            }
            if started.elapsed() > options.timeout {
                return Err(DrillError::Timeout {
                    what,
                    timeout: options.timeout,
                    last: answer.region,
                });
            }
            progress(Progress::Waiting {
                elapsed: started.elapsed(),
                answer,
            });
            tokio::time::sleep(options.poll).await;
        }
    }

    /// One A query over UDP with the client's subnet, answered within 2 s.
    pub async fn ask(&self) -> Result<Answer, DrillError> {
        let fail = |message: String| DrillError::Dns {
            server: self.server,
            message,
        };
        let name = Name::from_ascii(&self.name).map_err(|e| fail(e.to_string()))?;
        let id = rand_id();
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(name, RecordType::A));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                self.subnet.network(),
                self.subnet.prefix_len(),
                0,
            )));
        query.set_edns(edns);
        let bytes = query.to_vec().map_err(|e| fail(e.to_string()))?;
        let bind = if self.server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| fail(e.to_string()))?;
        socket
            .send_to(&bytes, self.server)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut buf = vec![0u8; 4096];
        let exchange = async {
            loop {
                let (n, from) = socket.recv_from(&mut buf).await?;
                if from == self.server {
                    return Ok::<_, std::io::Error>(n);
                }
            }
        };
        let n = tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .map_err(|_| fail("no answer within 2 s".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let reply = Message::from_vec(&buf[..n]).map_err(|e| fail(e.to_string()))?;
        if reply.metadata.id != id {
            return Err(fail("the answer's id is not the query's".into()));
        }
        let mut region = None;
        let mut addresses = Vec::new();
        let ttl = reply.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
        for record in &reply.answers {
            match &record.data {
                RData::CNAME(target) => {
                    let target = target.0.to_ascii().to_ascii_lowercase();
                    region = target.split('.').next().map(str::to_owned);
                }
                RData::A(a) => addresses.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => addresses.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
        let region = region.ok_or_else(|| {
            fail(format!(
                "no CNAME for {} (rcode {:?})",
                self.name, reply.metadata.response_code
            ))
        })?;
        Ok(Answer {
            region,
            addresses,
            ttl,
        })
    }
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let salt = (std::process::id() & 0xffff) as u16;
    NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503) ^ salt
}
