//! `cdn drill --region NAME`: a regional failover drill against a running topology.
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

use crate::endpoints::{Endpoints, RegionEndpoints};
use crate::node_admin::{AdminError, NodeAdmin};

/// How a drill runs.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Time between two questions to GeoDNS.
    pub poll: Duration,
    /// Longest wait for a failover or a recovery before the drill gives up.
    pub timeout: Duration,
    /// How long answers are checked for drained edges once failed over.
    pub settle: Duration,
}

impl Default for DrillOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(50),
            timeout: Duration::from_secs(30),
            settle: Duration::from_secs(3),
        }
    }
}

/// What GeoDNS answered a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The region the CNAME points to (`<region>.edge.<zone>`).
    pub region: String,
    pub addresses: Vec<IpAddr>,
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
    /// The client network the drill asked as.
    pub client: String,
    pub before: Answer,
    pub failover: Leg,
    /// Answers holding a drained edge after GeoDNS first failed over.
    pub dead_answers: u64,
    /// Answers checked after the failover.
    pub settled_answers: u64,
    pub recovery: Leg,
}

/// Live progress, for a terminal or a log.
#[derive(Debug, Clone)]
pub enum Progress {
    Baseline(Answer),
    Drained { edges: Vec<String> },
    Waiting { elapsed: Duration, answer: Answer },
    FailedOver(Leg),
    Settled { answers: u64, dead: u64 },
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
    let drained = drain(&admin, target).await;
    let outcome = match drained {
        Ok(()) => {
            progress(Progress::Drained {
                edges: target.edges.iter().map(|e| e.name.clone()).collect(),
            });
            away_and_back(&dns, &admin, target, options, &mut progress).await
        }
        Err(e) => Err(e.into()),
    };
    // Whatever happened, the region goes back into rotation.
    let resumed = resume(&admin, target).await;
    let (failover, dead, settled, recovery) = outcome?;
    resumed?;
    Ok(DrillReport {
        region: region.to_owned(),
        client: client.clone(),
        before,
        failover,
        dead_answers: dead,
        settled_answers: settled,
        recovery,
    })
}

async fn away_and_back(
    dns: &Resolver,
    admin: &NodeAdmin,
    target: &RegionEndpoints,
    options: &DrillOptions,
    progress: &mut impl FnMut(Progress),
) -> Result<(Leg, u64, u64, Leg), DrillError> {
    let drained: Vec<IpAddr> = target.edges.iter().map(|e| e.public.ip()).collect();
    let away = |a: &Answer| a.region != target.name && !holds_any(a, &drained);
    let failover = dns
        .wait_for("failover", options, &away, &mut *progress)
        .await?;
    progress(Progress::FailedOver(failover.clone()));

    let (mut settled, mut dead) = (0, 0);
    let until = Instant::now() + options.settle;
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

    resume(admin, target).await?;
    progress(Progress::Resumed);
    let home = |a: &Answer| a.region == target.name;
    let recovery = dns.wait_for("recovery", options, &home, progress).await?;
    progress(Progress::Recovered(recovery.clone()));
    Ok((failover, dead, settled, recovery))
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
        Ok(Answer { region, addresses })
    }
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let salt = (std::process::id() & 0xffff) as u16;
    NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503) ^ salt
}
