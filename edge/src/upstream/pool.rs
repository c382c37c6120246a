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

use serde::Deserialize;

use crate::upstream::balance::{Balancer, Policy};
use crate::upstream::client::{UpstreamBody, UpstreamClient, UpstreamError, empty_body};
use crate::upstream::health::{Health, HealthConfig, State, Transition};
use crate::upstream::interim::Interim;
use crate::upstream::retry_budget::{RetryBudget, RetryBudgetConfig};

/// A site's upstream servers and how requests are spread over them.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `round_robin`, `weighted_round_robin`, `least_connections`, `consistent_hash` (by
    /// cache key: what edges use to pick a shield) or `ewma_latency`.
    #[serde(default)]
    pub balance: Policy,
    pub servers: Vec<ServerConfig>,
    /// Active probes of every server; passive ejection runs whether or not they do.
    #[serde(default = "default_true")]
    pub probes: bool,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub retry: RetryBudgetConfig,
}

/// One upstream server of a pool.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `http://host:port`.
    pub url: String,
    /// Share of traffic under `weighted_round_robin` and `least_connections`; at least 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Most requests in flight to this server at once; 0 is no limit.
    #[serde(default)]
    pub max_connections: u32,
    /// URL probed instead of `url` + `health.path` (e.g. a shield's admin `/healthz`).
    #[serde(default)]
    pub probe: Option<String>,
}

impl PoolConfig {
    /// A pool of `servers` with every other setting at its default.
    pub fn new(servers: Vec<ServerConfig>) -> Self {
        Self {
            balance: Policy::default(),
            servers,
            probes: default_true(),
            health: HealthConfig::default(),
            retry: RetryBudgetConfig::default(),
        }
    }
}

impl ServerConfig {
    /// The server at `url`, weight 1, no connection cap, probed at `url` + `health.path`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            weight: default_weight(),
            max_connections: 0,
            probe: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}

impl PoolConfig {
    /// The pool of a site with a single `upstream`: one server, no probes, no retries.
    pub fn single(url: &str) -> Self {
        Self {
            balance: Policy::default(),
            servers: vec![ServerConfig {
                url: url.to_owned(),
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
        }
    }

    /// Checks every server's URL, weight and probe; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("pool.servers must list at least one server".into());
        }
        let mut seen = std::collections::HashSet::new();
        for server in &self.servers {
            base_url("pool server", &server.url)?;
            if server.weight == 0 {
                return Err(format!(
                    "pool server {:?}: weight must be at least 1",
                    server.url
                ));
            }
            if let Some(probe) = &server.probe {
                probe_url(probe)?;
            }
            if !seen.insert(server.url.as_str()) {
                return Err(format!("pool server {:?} is listed twice", server.url));
            }
        }
        if !self.health.path.starts_with('/') {
            return Err(format!(
                "pool.health.path {:?} must start with '/'",
                self.health.path
            ));
        }
        Ok(())
    }
}

/// The scheme and authority of an upstream base URL (`http://host:port`), checked.
pub fn base_url(what: &str, url: &str) -> Result<(Scheme, Authority), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{what} {url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{what} {url:?} needs a scheme (http://)"))?;
    if scheme != Scheme::HTTP {
        return Err(format!(
            "{what} {url:?}: only http:// upstreams are supported yet"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{what} {url:?} needs a host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{what} {url:?} must be scheme://host[:port] with no path or query"
        ));
    }
    Ok((scheme, authority))
}

/// A probe URL: `http://host:port/path`.
pub fn probe_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("probe {url:?} is not a URL: {e}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) || uri.authority().is_none() {
        return Err(format!(
            "probe {url:?} must be an http://host:port/path URL"
        ));
    }
    Ok(uri)
}

/// What a pool reports while it works, for the node's metrics (which implement it). Each
/// method is called from the request or probe that caused it and must not block; the
/// labels are the configured site name and server URL, so their number is bounded.
pub trait PoolObserver {
    /// An exchange with `server` got a response head with `status` after `took`.
    fn server_response(&self, site: &str, server: &str, status: StatusCode, took: Duration);
    /// An exchange with `server` failed before a response (`kind`: [`UpstreamError::kind`]).
    fn server_error(&self, site: &str, server: &str, kind: &str);
    /// `server` was passively ejected after consecutive failures.
    fn server_ejected(&self, site: &str, server: &str);
    /// `server`'s health state now (published after every probe round and transition).
    fn server_state(&self, site: &str, server: &str, state: State);
    /// A retry on another server was `allowed` by the retry budget, or refused.
    fn retry(&self, allowed: bool);
}

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
    /// The pool of servers `pool` describes, for the site called `site` (its name in logs
    /// and metric labels). The error says which URL is wrong.
    pub fn new(site: &str, pool: &PoolConfig) -> Result<Self, String> {
        let mut servers = Vec::with_capacity(pool.servers.len());
        for server in &pool.servers {
            let (scheme, authority) = base_url("pool server", &server.url)?;
            let probe = match &server.probe {
                Some(url) => probe_url(url)?,
                None => probe_url(&format!("{scheme}://{authority}{}", pool.health.path))?,
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
            site: site.to_owned(),
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
    /// request without one, which alone may be retried. The 1xx heads of every attempt go
    /// to `interim`, when a client waits for them.
    pub async fn send<O: PoolObserver + ?Sized>(
        &self,
        client: &UpstreamClient,
        metrics: &O,
        key: &[u8],
        (method, target, headers): (&Method, &str, &HeaderMap),
        mut body: Option<UpstreamBody>,
        interim: Option<&Interim>,
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
            if let Some(interim) = interim {
                interim.attach(&mut request);
            }
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

    fn transition<O: PoolObserver + ?Sized>(
        &self,
        metrics: &O,
        index: usize,
        transition: Transition,
    ) {
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
    fn publish_states<O: PoolObserver + ?Sized>(&self, metrics: &O) {
        let now = Instant::now();
        for server in &self.servers {
            metrics.server_state(&self.site, &server.url, server.health.state(now));
        }
    }

    /// Probes every server each `health.interval` until the returned future is dropped.
    /// `host` is the `Host` the probes carry (the site's), so a shield or a virtual-hosted
    /// origin answers them as it answers the site.
    pub async fn probe_forever<O: PoolObserver + ?Sized>(
        &self,
        client: &UpstreamClient,
        metrics: &O,
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

    fn pool(servers: &str) -> UpstreamPool {
        let text = format!("servers = [{servers}]\n[health]\nconsecutive_failures = 1\n");
        let config: PoolConfig = toml::from_str(&text).expect("valid");
        config.validate().expect("valid");
        UpstreamPool::new("s", &config).expect("pool")
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
        let p = UpstreamPool::new("s", &PoolConfig::single("http://10.0.0.1:1")).expect("pool");
        assert_eq!(p.servers().len(), 1);
        assert!(!p.probes);
        assert_eq!(p.retry.max_attempts(), 1);
    }
}
