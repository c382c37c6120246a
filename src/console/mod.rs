//! The operator console: a web page showing a running topology live (regions on a map and
//! in tables, every edge's and shield's health, connections, requests per second, hit
//! ratio and upstream state, what GeoDNS answers each region's clients, recent purges
//! with their progress over the nodes, and a drill as it runs). `cdn up` serves one;
//! `cdn console --endpoints FILE` serves one for a topology running elsewhere.
//!
//! The server does the asking: every `interval` it asks every component at once
//! ([`probe`]), each question bounded by a short timeout, and turns the answers into one
//! snapshot ([`state`]), keeping the previous round for rates and changes. The page (one
//! static file, no build step) reads `GET /api/state` about every second and draws it.
//! So the page needs no access to the nodes (no CORS), never sees the node token or the
//! publisher token, and any number of viewers cost the topology one round per interval.
//!
//! - `GET /`: the page.
//! - `GET /api/state`: the latest [`Snapshot`] as JSON.

pub mod probe;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::endpoints::Endpoints;
pub use state::Snapshot;

/// The page, with its styles and script inline.
const PAGE: &str = include_str!("page.html");

/// How the console asks.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Time between two rounds of questions.
    pub interval: Duration,
    /// Longest wait for any one answer; a node slower than this is shown down.
    pub timeout: Duration,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(800),
        }
    }
}

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "cannot listen on {addr} for the console: {source}; is another console using it? Pick another address, or port 0 for any free one"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running console.
#[derive(Debug)]
pub struct ConsoleServer {
    addr: SocketAddr,
    endpoints: watch::Sender<Endpoints>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ConsoleServer {
    /// Listens on `listen` and starts asking the topology `endpoints` describes.
    pub async fn start(
        endpoints: Endpoints,
        listen: SocketAddr,
        options: ConsoleOptions,
    ) -> Result<Self, ConsoleError> {
        let bind = |source| ConsoleError::Bind {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let (shutdown, stop) = watch::channel(false);
        let (latest, snapshots) = watch::channel(None);
        let (endpoints, watched) = watch::channel(endpoints);
        let mut tasks = JoinSet::new();
        tasks.spawn(collect_forever(watched, options, latest, stop.clone()));
        let app = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route("/api/state", get(state))
            .with_state(snapshots);
        let mut stop = stop;
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the console stopped serving");
            }
        });
        tracing::info!(%addr, "console serving");
        Ok(Self {
            addr,
            endpoints,
            shutdown,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shows the topology `endpoints` describes from the next round on (after a reload
    /// of `cdn up` changed it).
    pub fn set_endpoints(&self, endpoints: Endpoints) {
        self.endpoints.send_replace(endpoints);
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The latest snapshot, serialized once per round for every viewer.
type Latest = watch::Receiver<Option<Bytes>>;

/// Asks the topology every `interval` until stopped, publishing each round's snapshot.
async fn collect_forever(
    mut endpoints: watch::Receiver<Endpoints>,
    options: ConsoleOptions,
    latest: watch::Sender<Option<Bytes>>,
    mut stop: watch::Receiver<bool>,
) {
    let current = endpoints.borrow_and_update().clone();
    let mut probe = probe::Probe::new(&current, options.timeout);
    let mut collector = state::Collector::new(current);
    let mut ticks = tokio::time::interval(options.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if endpoints.has_changed().unwrap_or(false) {
            let current = endpoints.borrow_and_update().clone();
            probe = probe::Probe::new(&current, options.timeout);
            collector.set_endpoints(current);
        }
        let sample = tokio::select! {
            sample = probe.sample() => sample,
            _ = stop.wait_for(|s| *s) => return,
        };
        let snapshot = collector.snapshot(sample);
        match serde_json::to_vec(&snapshot) {
            Ok(json) => {
                latest.send_replace(Some(Bytes::from(json)));
            }
            Err(e) => tracing::error!(error = %e, "the console's snapshot does not serialize"),
        }
    }
}

/// How long `GET /api/state` waits for the first round before saying so.
const FIRST_ROUND: Duration = Duration::from_secs(5);

async fn state(State(mut snapshots): State<Latest>) -> Response {
    let first = tokio::time::timeout(FIRST_ROUND, snapshots.wait_for(Option::is_some)).await;
    let json = match first {
        Ok(Ok(json)) => json.clone().unwrap_or_default(),
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "error": "the console has not finished its first round of questions yet; retry"
                })),
            )
                .into_response();
        }
    };
    let mut response = json.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    #[tokio::test]
    async fn the_page_and_a_snapshot_of_a_topology_that_is_not_running() {
        let mut endpoints = Endpoints::planned(&Topology::default_local()).expect("fixed ports");
        // Nothing listens there: every node is shown down, and the console still answers.
        let nowhere = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("address");
        for region in &mut endpoints.regions {
            for edge in &mut region.edges {
                edge.admin = nowhere;
            }
        }
        for shield in &mut endpoints.shields {
            shield.admin = nowhere;
        }
        endpoints.purge_api = format!("http://{nowhere}");
        endpoints.geodns.dns = nowhere;
        endpoints.geodns.admin = nowhere;
        let options = ConsoleOptions {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
        };
        let console = ConsoleServer::start(endpoints, "127.0.0.1:0".parse().unwrap(), options)
            .await
            .expect("starts");
        let get = |path: &str| {
            let url = format!("http://{}{path}", console.addr());
            async move {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Empty<Bytes>>();
                let response = client.get(url.parse().unwrap()).await.expect("answers");
                let status = response.status();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                (status, body)
            }
        };
        let (status, page) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&page).contains("/api/state"));
        let (status, body) = get("/api/state").await;
        assert_eq!(status, StatusCode::OK);
        let state: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(state["regions"][0]["edges"][0]["health"], "down");
        assert_eq!(state["regions"][0]["health"], "down");
        assert_eq!(state["purge_api"]["up"], false);

        // A reloaded topology is shown from the next round on.
        let mut fewer = Endpoints::planned(&Topology::default_local()).expect("fixed ports");
        fewer.regions.truncate(1);
        console.set_endpoints(fewer);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) = get("/api/state").await;
            let state: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            if state["regions"].as_array().map(Vec::len) == Some(1) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still {state}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        console.shutdown().await;
    }
}
