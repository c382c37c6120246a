//! One round of questions to a running topology, all at once and each bounded by a short
//! timeout: every edge's and shield's `/healthz` and purge watermark, GeoDNS as a client
//! of each region, GeoDNS's and the purge API's liveness, and the purge API's recent
//! purges. A question not answered in time is an answer too (the node is down); a round
//! never fails.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use node_api::purge::RecentPurges;

use super::state::{NodeSample, Sample, nodes};
use crate::drill::{Answer, Resolver};
use crate::endpoints::{Endpoints, NodeEndpoint};
use crate::node_admin::NodeAdmin;

/// How many recent purges the console asks the purge API for.
const RECENT_PURGES: usize = 10;

/// Asks a topology's components what the console shows.
#[derive(Debug)]
pub struct Probe {
    endpoints: Endpoints,
    admin: NodeAdmin,
    http: Client<HttpConnector, Empty<Bytes>>,
    /// One per region: GeoDNS asked as its first client network (why not, when it cannot).
    resolvers: Vec<Result<Resolver, String>>,
    timeout: Duration,
}

impl Probe {
    pub fn new(endpoints: &Endpoints, timeout: Duration) -> Self {
        let resolvers = endpoints
            .regions
            .iter()
            .map(|region| {
                let site = endpoints
                    .sites
                    .first()
                    .ok_or("the topology has no site to ask GeoDNS for")?;
                let client = region.clients.first().ok_or_else(|| {
                    format!("{} has no client networks to ask GeoDNS as", region.name)
                })?;
                let subnet = client
                    .parse()
                    .map_err(|_| format!("client network {client:?} is not a CIDR"))?;
                Ok(Resolver {
                    server: endpoints.geodns.dns,
                    name: site.cname.clone(),
                    subnet,
                })
            })
            .collect();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        Self {
            endpoints: endpoints.clone(),
            admin: NodeAdmin::new(&endpoints.node_token).with_timeout(timeout),
            http: Client::builder(TokioExecutor::new()).build(http),
            resolvers,
            timeout,
        }
    }

    /// Asks everything at once; takes about the timeout at most.
    pub async fn sample(&self) -> Sample {
        use futures_util::future::join_all;
        let at = Instant::now();
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let all = nodes(&self.endpoints);
        let geodns = format!("http://{}/healthz", self.endpoints.geodns.admin);
        let (nodes, answers, geodns, purges) = tokio::join!(
            join_all(all.iter().map(|(_, node)| self.node(node))),
            join_all(self.resolvers.iter().map(|r| self.answer(r))),
            self.live(&geodns),
            self.purges(),
        );
        Sample {
            at,
            at_ms,
            nodes,
            answers,
            geodns,
            purges,
        }
    }

    async fn node(&self, node: &NodeEndpoint) -> NodeSample {
        let (health, applied) = tokio::join!(
            self.admin.health(&node.name, node.admin),
            self.admin.applied(&node.name, node.admin),
        );
        NodeSample {
            health: health.map_err(|e| e.to_string()),
            applied: applied.map_err(|e| e.to_string()),
        }
    }

    async fn answer(&self, resolver: &Result<Resolver, String>) -> Result<Answer, String> {
        let resolver = resolver.as_ref().map_err(Clone::clone)?;
        match tokio::time::timeout(self.timeout, resolver.ask()).await {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "GeoDNS at {} did not answer within {:?}",
                resolver.server, self.timeout
            )),
        }
    }

    async fn live(&self, url: &str) -> Result<(), String> {
        self.get(url, None).await.map(|_| ())
    }

    async fn purges(&self) -> Result<RecentPurges, String> {
        let publisher = self.endpoints.publisher.as_ref().ok_or(
            "the endpoints name no publisher, whose token lists recent purges: give the topology a [[publisher]]",
        )?;
        let url = format!(
            "{}/v1/purges?limit={RECENT_PURGES}",
            self.endpoints.purge_api
        );
        let body = self
            .get(&url, Some(&format!("Bearer {}", publisher.token)))
            .await?;
        serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{url}: not a list of recent purges ({e}); is the purge API older than the console?"
            )
        })
    }

    /// GETs `url`, `Ok` with the body for a `200`.
    async fn get(&self, url: &str, authorization: Option<&str>) -> Result<Bytes, String> {
        let mut request = Request::get(url);
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| format!("{url}: no answer: {e}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{url}: the body broke off: {e}"))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(format!(
                    "{url}: {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            Ok(body)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    /// A loopback address nothing listens on.
    async fn closed_port() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("address")
    }

    #[tokio::test]
    async fn a_topology_that_does_not_answer_is_sampled_as_errors_within_the_timeout() {
        let mut endpoints = Endpoints::planned(&Topology::default_local()).expect("fixed ports");
        let nowhere = closed_port().await;
        for region in &mut endpoints.regions {
            for edge in &mut region.edges {
                edge.admin = nowhere;
            }
        }
        for shield in &mut endpoints.shields {
            shield.admin = nowhere;
        }
        endpoints.geodns.admin = nowhere;
        endpoints.geodns.dns = nowhere;
        endpoints.purge_api = format!("http://{nowhere}");
        let probe = Probe::new(&endpoints, Duration::from_millis(300));
        let started = Instant::now();
        let sample = probe.sample().await;
        assert!(started.elapsed() < Duration::from_secs(2), "bounded");
        assert_eq!(sample.nodes.len(), 7);
        assert!(sample.nodes.iter().all(|n| n.health.is_err()));
        let why = sample.nodes[0].health.as_ref().unwrap_err();
        assert!(why.contains("eu-west-1"), "{why}");
        assert!(sample.answers.iter().all(Result::is_err));
        assert!(sample.geodns.is_err() && sample.purges.is_err());
    }
}
