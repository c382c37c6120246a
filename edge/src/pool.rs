//! A site's upstream servers as one thing to send requests to: balancing, per-server
//! connection caps, health (active probes and passive ejection) and budgeted retries.
//!
//! An edge's pool is the shield tier, balanced by `consistent_hash` on the cache key so
//! each object lives in one shield; a shield's pool is the origin servers, balanced by
//! whichever policy the site chose. A site with a single `upstream` is a pool of one
//! without probes.
//!
//! Invariants:
//! - A request goes to an available server (healthy by probes, not ejected, under its
//!   connection cap). When no server is available by health, it goes to one anyway (a
//!   "panic mode", as Envoy's): a health check that is wrong about every server must not
//!   turn into an outage of its own, and a real outage then fails fast at the socket.
//! - Only requests without a body and with an idempotent method are retried, only before
//!   any response reached the caller (so before a byte reached the client), on another
//!   server, and only within the pool's [`RetryBudget`], so retries cannot multiply an
//!   outage's load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::balance::Balancer;
use crate::config::{ConfigError, PoolConfig, ServerConfig, SiteConfig, base_url, probe_url};
use crate::health::{Health, HealthConfig, State, Transition};
use crate::metrics::Metrics;
use crate::retry_budget::{RetryBudget, RetryBudgetConfig};
use crate::upstream::{UpstreamBody, UpstreamClient, UpstreamError, empty_body};

/// One upstream server.
#[derive(Debug)]
pub struct Server {
    /// The configured URL: the server's name in logs and metric labels.
    pub url: String,
    scheme: Scheme,
    authority: Authority,
    max_connections: u64,
    probe: Uri,
    pub health: Health,
}

/// The upstream servers of one site.
#[derive(Debug)]
pub struct UpstreamPool {
    site: String,
    servers: Vec<Server>,
    balancer: Arc<Balancer>,
    retry: RetryBudget,
    health: HealthConfig,
    probes: bool,
}

/// The response of one upstream exchange, and which server gave it.
#[derive(Debug)]
pub struct Sent {
    pub response: Response<Incoming>,
    pub server: usize,
}

impl UpstreamPool {
    /// The pool of a site's config: its `pool`, or its one `upstream`.
    pub fn from_site(config: &SiteConfig) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError::Site {
            site: config.name.clone(),
            message,
        };
        let single;
        let pool = match (&config.pool, &config.upstream) {
            (Some(pool), _) => pool,
            (None, Some(url)) => {
                single = PoolConfig {
                    balance: Default::default(),
                    servers: vec![ServerConfig {
                        url: url.clone(),
                        weight: 1,
                        max_connections: 0,
                        probe: None,
                    }],
                    probes: false,
                    health: HealthConfig::default(),
                    retry: RetryBudgetConfig {
                        attempts: 1,
                        ..Default::default()
                    },
                };
                &single
            }
            (None, None) => return Err(fail("no upstream configured".into())),
        };
        let mut servers = Vec::with_capacity(pool.servers.len());
        for server in &pool.servers {
            let (scheme, authority) = base_url("pool server", &server.url).map_err(fail)?;
            let probe = match &server.probe {
                Some(url) => probe_url(url).map_err(fail)?,
                None => probe_url(&format!("{scheme}://{authority}{}", pool.health.path))
                    .map_err(fail)?,
            };
            servers.push(Server {
                url: server.url.clone(),
                scheme,
                authority,
                max_connections: u64::from(server.max_connections),
                probe,
                health: Health::new(&pool.health),
            });
        }
        let balancer = Balancer::new(
            pool.balance,
            pool.servers.iter().map(|s| (s.url.clone(), s.weight)),
        );
        Ok(Self {
            site: config.name.clone(),
            servers,
            balancer: Arc::new(balancer),
            retry: RetryBudget::new(&pool.retry),
            health: pool.health.clone(),
            probes: pool.probes,
        })
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Whether probes say every server is down: misses of the site cannot be filled (the
    /// node is then `degraded`, see `node_api::NodeState`). Never without probes: one
    /// failed request proves nothing about a pool.
    pub fn all_down(&self, now: Instant) -> bool {
        self.probes
            && self
                .servers
                .iter()
                .all(|server| server.health.state(now) == State::Down)
    }

    /// Whether some server is available by health (up by probes, not ejected). When none
    /// is, a request is still sent (panic mode), but one that can be answered stale is
    /// better answered so at once than after a timeout.
    pub fn any_available(&self, now: Instant) -> bool {
        self.servers
            .iter()
            .any(|server| server.health.is_available(now))
    }

    /// Sends a request for `target` (origin-form) to a server chosen for `key`, retrying on
    /// another server where that is safe (see the module doc). `body` is `None` for a
    /// request without one, which alone may be retried.
    pub async fn send(
        &self,
        client: &UpstreamClient,
        metrics: &Metrics,
        key: &[u8],
        (method, target, headers): (&Method, &str, &HeaderMap),
        mut body: Option<UpstreamBody>,
    ) -> Result<Sent, UpstreamError> {
        self.retry.record_request(Instant::now());
        let retryable = body.is_none() && method.is_idempotent();
        let attempts = if retryable {
            self.retry.max_attempts().max(1)
        } else {
            1
        };
        let mut tried = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(index) = self.pick(key, &tried, Instant::now()) else {
                return Err(UpstreamError::NoServer(self.servers.len()));
            };
            tried.push(index);
            let server = &self.servers[index];
            let in_flight = self.balancer.begin(index);
            let mut request = Request::new(body.take().unwrap_or_else(empty_body));
            *request.method_mut() = method.clone();
            *request.uri_mut() = server.uri(target);
            *request.headers_mut() = headers.clone();
            let started = Instant::now();
            let result = client.send(request).await;
            let elapsed = started.elapsed();
            let now = Instant::now();
            // Whether the server failed; `None` when the exchange says nothing about it
            // (the client's own body broke it).
            let failed = match &result {
                Ok(response) => {
                    in_flight.record_latency(elapsed);
                    metrics.server_response(&self.site, &server.url, response.status(), elapsed);
                    Some(response.status().is_server_error())
                }
                Err(UpstreamError::Client(_)) => None,
                Err(error) => {
                    metrics.server_error(&self.site, &server.url, error.kind());
                    Some(true)
                }
            };
            drop(in_flight);
            match failed {
                Some(true) => {
                    if let Some(transition) = server.health.request_failed(now) {
                        self.transition(metrics, index, transition);
                    }
                }
                Some(false) => server.health.request_succeeded(now),
                None => {}
            }
            let worth_retrying = match &result {
                Ok(response) => matches!(
                    response.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
                Err(error) => error.retryable(),
            };
            if !worth_retrying || attempt >= attempts || tried.len() >= self.servers.len() {
                return result.map(|response| Sent {
                    response,
                    server: index,
                });
            }
            let allowed = self.retry.try_retry(now);
            metrics.retry(allowed);
            if !allowed {
                return result.map(|response| Sent {
                    response,
                    server: index,
                });
            }
            tracing::debug!(site = %self.site, server = %server.url, attempt, "retrying on another server");
        }
    }

    /// The server for `key` among those not yet `tried`: an available one if any, else any
    /// under its connection cap (panic mode).
    fn pick(&self, key: &[u8], tried: &[usize], now: Instant) -> Option<usize> {
        let open = |i: usize| {
            !tried.contains(&i)
                && (self.servers[i].max_connections == 0
                    || self.balancer.in_flight(i) < self.servers[i].max_connections)
        };
        self.balancer
            .pick(key, |i| open(i) && self.servers[i].health.is_available(now))
            .or_else(|| self.balancer.pick(key, open))
    }

    fn transition(&self, metrics: &Metrics, index: usize, transition: Transition) {
        let server = &self.servers[index];
        match transition {
            Transition::Ejected { until } => {
                metrics.server_ejected(&self.site, &server.url);
                tracing::warn!(site = %self.site, server = %server.url,
                    for_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
                    "upstream server ejected after consecutive failures");
            }
            Transition::WentDown => {
                tracing::warn!(site = %self.site, server = %server.url, "upstream server failed its health checks");
            }
            Transition::CameUp => {
                tracing::info!(site = %self.site, server = %server.url, "upstream server passes its health checks again");
            }
        }
        self.publish_states(metrics);
    }

    /// Sets every server's health gauge to its current state.
    fn publish_states(&self, metrics: &Metrics) {
        let now = Instant::now();
        for server in &self.servers {
            metrics.server_state(&self.site, &server.url, server.health.state(now));
        }
    }

    /// Probes every server each `health.interval` until the returned future is dropped.
    /// `host` is the `Host` the probes carry (the site's), so a shield or a virtual-hosted
    /// origin answers them as it answers the site.
    pub async fn probe_forever(
        &self,
        client: &UpstreamClient,
        metrics: &Metrics,
        host: HeaderValue,
    ) {
        self.publish_states(metrics);
        if !self.probes {
            return std::future::pending().await;
        }
        let mut ticks = tokio::time::interval(self.health.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut probes = tokio::task::JoinSet::new();
            for (index, server) in self.servers.iter().enumerate() {
                let (client, uri, host) = (client.clone(), server.probe.clone(), host.clone());
                let timeout = self.health.timeout;
                probes.spawn(async move { (index, probe(&client, uri, host, timeout).await) });
            }
            while let Some(Ok((index, ok))) = probes.join_next().await {
                if let Some(transition) = self.servers[index].health.probe(ok) {
                    self.transition(metrics, index, transition);
                }
            }
            self.publish_states(metrics);
        }
    }
}

impl Server {
    fn uri(&self, target: &str) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// The server's health as the metrics report it.
    pub fn state(&self, now: Instant) -> State {
        self.health.state(now)
    }
}

/// One probe: a `GET` that answers 2xx or 3xx within `timeout`.
async fn probe(client: &UpstreamClient, uri: Uri, host: HeaderValue, timeout: Duration) -> bool {
    let mut request = Request::new(empty_body());
    *request.uri_mut() = uri;
    request.headers_mut().insert(header::HOST, host);
    request.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("cdn-health-probe"),
    );
    match tokio::time::timeout(timeout, client.send(request)).await {
        Ok(Ok(response)) => {
            let ok = response.status().is_success() || response.status().is_redirection();
            // Read the (small) body so the connection can be reused.
            let _ = tokio::time::timeout(
                timeout,
                http_body_util::BodyExt::collect(response.into_body()),
            )
            .await;
            ok
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EdgeConfig;

    fn pool(servers: &str) -> UpstreamPool {
        let text = format!(
            "[[site]]\nname = \"s\"\nhosts = [\"a.test\"]\n[site.pool]\nservers = [{servers}]\n\
             [site.pool.health]\nconsecutive_failures = 1\n"
        );
        let config = EdgeConfig::from_toml(&text).expect("valid");
        UpstreamPool::from_site(&config.sites[0]).expect("pool")
    }

    #[test]
    fn ejected_servers_are_skipped_until_none_is_left_then_all_are_tried() {
        let p = pool(r#"{ url = "http://10.0.0.1:1" }, { url = "http://10.0.0.2:1" }"#);
        let now = Instant::now();
        p.servers[0].health.request_failed(now);
        assert_eq!(p.pick(b"k", &[], now), Some(1));
        assert_eq!(p.pick(b"k", &[], now), Some(1));
        p.servers[1].health.request_failed(now);
        // Panic mode: every server ejected, so every server is a candidate again.
        let picked = p.pick(b"k", &[], now).expect("a server");
        assert_eq!(p.pick(b"k", &[picked], now), Some(1 - picked));
        assert_eq!(p.pick(b"k", &[0, 1], now), None);
    }

    #[test]
    fn a_server_at_its_connection_cap_gets_nothing_more() {
        let p = pool(
            r#"{ url = "http://10.0.0.1:1", max_connections = 1 }, { url = "http://10.0.0.2:1" }"#,
        );
        let now = Instant::now();
        let held = p.balancer.begin(0);
        for _ in 0..4 {
            assert_eq!(p.pick(b"k", &[], now), Some(1));
        }
        drop(held);
        let picks: Vec<_> = (0..4).filter_map(|_| p.pick(b"k", &[], now)).collect();
        assert!(picks.contains(&0), "{picks:?}");
    }

    #[test]
    fn a_single_upstream_is_a_pool_of_one_without_probes_or_retries() {
        let text =
            "[[site]]\nname = \"s\"\nhosts = [\"a.test\"]\nupstream = \"http://10.0.0.1:1\"\n";
        let config = EdgeConfig::from_toml(text).expect("valid");
        let p = UpstreamPool::from_site(&config.sites[0]).expect("pool");
        assert_eq!(p.servers().len(), 1);
        assert!(!p.probes);
        assert_eq!(p.retry.max_attempts(), 1);
    }
}
