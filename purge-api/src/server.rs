//! The running purge API: the publishers' endpoints, the group committer in front of the
//! log, the fan-out (one push task per node with the embedded log, released in rounds by
//! [`crate::push_window`]; a watch of the nodes' watermarks with NATS), and per-purge
//! progress.
//!
//! A purge is answered `202` only once the log has it durably (the committer appends
//! every waiting purge in one fsync'd batch). From then on it cannot be lost: each node's
//! fan-out task pushes the log to the node from the node's own watermark until the node
//! acknowledges it, whatever happens to either side in between.
//!
//! The API's work per purge is O(nodes) at most: a node's acknowledgement updates
//! [`MinWatermark`] in O(log nodes), and "applied everywhere?" is one read of its minimum;
//! a round of pushes is one request per node whatever the purges it carries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use node_api::headers::NODE_TOKEN;
use node_api::purge::{
    BatchBuilder, LogTruncated, MAX_BATCH_BYTES, MAX_PURGE_BYTES, PurgeAck, PurgeLogPage,
    PurgeSummary, RecentPurges, SequencedPurge, encoded_len, tokens_match,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::admission::{Admission, QueueGate, Shed, cost};
use crate::config::{ConfigError, LogEngine, PurgeApiConfig};
use crate::encoded_tail::EncodedTail;
use crate::idempotency::{Claim, InFlight, KeyConflict, replay};
use crate::log::{FileLog, LogError, NewEntry, PurgeLog, Retention};
use crate::metrics::Metrics;
use crate::min_watermark::MinWatermark;
use crate::nats_log::NatsLog;
use crate::push_window::{BATCH, MIN_GAP, PushesInFlight, Rounds, WINDOW};
use crate::request::{Fingerprint, IdempotencyKey, PURGE_PATH, PurgeRequest};

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Limits(#[from] crate::admission::ConfigError),
    #[error("cannot open the purge log: {0}")]
    Log(#[from] LogError),
    #[error(transparent)]
    Tls(#[from] tls_certs::TlsError),
    #[error("cannot bind the purge API on {addr}: {source}; is another server using it?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How purges reach the nodes.
enum FanOut {
    /// This API pushes the log to every node's admin listener (embedded log).
    Push,
    /// Nodes read the NATS stream themselves; this API watches their watermarks.
    Watermarks {
        js: Box<async_nats::jetstream::Context>,
        stream: String,
    },
}

/// Most purges pushed to a node in one request. A batch is also bounded by bytes:
/// [`MAX_BATCH_BYTES`], what a node reads, so it always fits.
const PUSH_BATCH: usize = 500;

/// Newest purges kept encoded for the pushes ([`EncodedTail`]): enough for several
/// [`PUSH_BATCH`] pages, and bounded in bytes since one purge may take a megabyte.
const TAIL_ENTRIES: usize = 4 * PUSH_BATCH;
const TAIL_BYTES: usize = 16 << 20;

/// A purge waiting for the committer.
struct Pending {
    entry: NewEntry,
    done: oneshot::Sender<Result<u64, String>>,
    _ticket: crate::admission::QueueTicket,
    /// The `Idempotency-Key`, held until the log has the purge (or refused it).
    _claim: Option<Claim>,
}

/// One node's progress.
#[derive(Debug)]
struct Node {
    /// The node's place in [`Api::nodes`] and in [`Api::low`].
    index: usize,
    name: String,
    admin: String,
    /// Highest sequence number the node acknowledged as applied (with all before it); the
    /// same as the node's leaf in [`Api::low`], readable without its lock.
    acked: std::sync::atomic::AtomicU64,
    /// The node's time of the latest watermark report taken (NATS log), in Unix ms; 0
    /// before any.
    reported_at: std::sync::atomic::AtomicU64,
    /// Why the node is stuck: it refuses the next purge itself (a `4xx` other than `409`,
    /// even to a batch of that purge alone), so retrying alone will not move it. Shown by
    /// `GET /v1/purges/{id}` and the `purge_node_stuck` metric; cleared when it acks.
    stuck: Mutex<Option<String>>,
}

/// Everything the handlers share.
struct Api {
    /// The config the API started with; its sites and publishers are the first
    /// [`Directory`], which a reload replaces.
    config: PurgeApiConfig,
    directory: ArcSwap<Directory>,
    log: Arc<dyn PurgeLog>,
    admission: Admission,
    queue: QueueGate,
    commits: mpsc::Sender<Pending>,
    nodes: Vec<Arc<Node>>,
    /// The log's newest purges, encoded once for every node's push.
    tail: EncodedTail,
    /// Pushes on their way: a new round waits while many are.
    pushes: Arc<PushesInFlight>,
    /// Every node's watermark and their minimum, updated with each acknowledgement.
    low: Mutex<MinWatermark>,
    /// The highest purge applied on every node (`low`'s minimum), sent when it changes:
    /// wakes `?wait=` polls only when the answer to theirs may have changed.
    progress: watch::Sender<u64>,
    /// Accept time of purges not yet applied everywhere, in sequence order, for the
    /// propagation histogram.
    accepted: Mutex<BTreeMap<u64, Instant>>,
    /// Idempotency keys of purges admitted here and not yet in the log.
    in_flight: InFlight,
    metrics: Metrics,
}

/// Who may purge what: the sites and the publishers, replaced whole by
/// [`PurgeApiServer::reload_directory`] while the API runs.
#[derive(Debug)]
struct Directory {
    sites: Vec<crate::config::SiteConfig>,
    publishers: Vec<crate::config::PublisherConfig>,
}

/// A running purge API.
pub struct PurgeApiServer {
    api: Arc<Api>,
    addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for PurgeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PurgeApiServer {
    /// Opens the log, binds the listener and starts the committer and the fan-out tasks.
    ///
    /// With `[log] engine = "nats"` the log is the NATS stream: this instance does not
    /// push to nodes (they read the stream) but watches their watermarks in the stream's
    /// KV bucket, so it reports status for purges any instance accepted.
    pub async fn start(config: PurgeApiConfig) -> Result<Self, StartError> {
        config.validate()?;
        let retention = Retention {
            max_entries: config.log.retain_entries,
            max_age: config.log.retain_for,
        };
        match (&config.log.engine, &config.log.path, &config.log.nats) {
            (LogEngine::Nats, _, Some(nats)) => {
                let log = NatsLog::connect(nats, retention).await?;
                let fan_out = FanOut::Watermarks {
                    js: Box::new(log.jetstream()),
                    stream: log.stream_name().to_owned(),
                };
                Self::start_inner(config, log, fan_out).await
            }
            (LogEngine::Embedded, Some(path), _) => {
                let log = FileLog::open(path, retention)?;
                Self::start_inner(config, Arc::new(log), FanOut::Push).await
            }
            // `validate` refuses both.
            _ => Err(StartError::Config(ConfigError::Invalid(
                "[log] names no usable log".into(),
            ))),
        }
    }

    /// As [`PurgeApiServer::start`], with a given log, pushed to the nodes by this API.
    pub async fn start_with_log(
        config: PurgeApiConfig,
        log: Arc<dyn PurgeLog>,
    ) -> Result<Self, StartError> {
        Self::start_inner(config, log, FanOut::Push).await
    }

    async fn start_inner(
        config: PurgeApiConfig,
        log: Arc<dyn PurgeLog>,
        fan_out: FanOut,
    ) -> Result<Self, StartError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let per_publisher = config
            .publishers
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.rate.clone()?)))
            .collect();
        let (commits, pending) = mpsc::channel(config.queue.capacity.max(1));
        let nodes = config
            .nodes
            .iter()
            .enumerate()
            .map(|(index, n)| {
                Arc::new(Node {
                    index,
                    name: n.name.clone(),
                    admin: n
                        .admin
                        .as_deref()
                        .unwrap_or_default()
                        .trim_end_matches('/')
                        .to_owned(),
                    acked: Default::default(),
                    reported_at: Default::default(),
                    stuck: Mutex::default(),
                })
            })
            .collect();
        let low = MinWatermark::new(config.nodes.len());
        let api = Arc::new(Api {
            admission: Admission::new(config.rate.clone(), per_publisher)?,
            queue: QueueGate::new(config.queue.clone())?,
            commits,
            nodes,
            progress: watch::channel(low.everywhere()).0,
            tail: EncodedTail::new(TAIL_ENTRIES, TAIL_BYTES),
            pushes: Arc::new(PushesInFlight::new(config.nodes.len())),
            low: Mutex::new(low),
            accepted: Mutex::default(),
            in_flight: InFlight::default(),
            metrics: Metrics::default(),
            log,
            directory: ArcSwap::from_pointee(Directory {
                sites: config.sites.clone(),
                publishers: config.publishers.clone(),
            }),
            config,
        });
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut https_addr = None;
        tasks.spawn(commit_forever(api.clone(), pending, shutdown.subscribe()));
        match fan_out {
            FanOut::Push => {
                let (released, _) = watch::channel(api.log.head());
                for node in &api.nodes {
                    api.metrics.set_stuck(&node.name, false);
                    tasks.spawn(push_forever(
                        api.clone(),
                        node.clone(),
                        released.subscribe(),
                        shutdown.subscribe(),
                    ));
                }
                tasks.spawn(crate::push_window::release_forever(
                    api.log.subscribe(),
                    released,
                    Rounds::new(WINDOW, BATCH, MIN_GAP),
                    api.pushes.clone(),
                    shutdown.subscribe(),
                ));
            }
            FanOut::Watermarks { js, stream } => {
                let by_key: HashMap<String, Arc<Node>> = api
                    .nodes
                    .iter()
                    .map(|n| (node_api::nats::watermark_key(&n.name), n.clone()))
                    .collect();
                let (watcher, lagging) = (api.clone(), api.clone());
                tasks.spawn(crate::watermarks::watch_forever(
                    *js,
                    stream,
                    move |key, report: node_api::nats::WatermarkReport| {
                        let Some(node) = by_key.get(key) else {
                            return false;
                        };
                        // Older than a report already taken (a put seen after a newer
                        // message): not where the node is now.
                        if let Some(at) = report.at_ms
                            && node
                                .reported_at
                                .fetch_max(at, std::sync::atomic::Ordering::AcqRel)
                                > at
                        {
                            return false;
                        }
                        let news = acked(node) != report.watermark;
                        set_acked(&watcher, node, report.watermark);
                        news
                    },
                    move || {
                        let head = lagging.log.head();
                        lagging
                            .nodes
                            .iter()
                            .filter(|n| acked(n) < head)
                            .map(|n| node_api::nats::watermark_key(&n.name))
                            .collect()
                    },
                    shutdown.subscribe(),
                ));
            }
        }
        let app = router(api.clone());
        if let (Some(https_listen), Some(tls)) = (api.config.https_listen, &api.config.tls) {
            let certificates = Arc::new(tls_certs::Certificates::from_sources(vec![
                tls_certs::Source::new("purge-api", &[], &tls.cert, &tls.key),
            ])?);
            let mut server = certificates.server_config()?;
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            let listener =
                TcpListener::bind(https_listen)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: https_listen,
                        source,
                    })?;
            https_addr = Some(listener.local_addr().map_err(|source| StartError::Bind {
                addr: https_listen,
                source,
            })?);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            tasks.spawn(serve_https(
                listener,
                acceptor,
                app.clone(),
                shutdown.subscribe(),
            ));
            tasks.spawn(certificates.watch(Duration::from_secs(1), shutdown.subscribe()));
        }
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        tracing::info!(%addr, nodes = api.nodes.len(), head = api.log.head(), "purge API serving");
        Ok(Self {
            api,
            addr,
            https_addr,
            shutdown,
            tasks,
        })
    }

    /// Replaces who may purge what (a `cdn up` topology reload: a site added, a publisher
    /// given it). Checked as at start; refused, the running directory stays. The nodes,
    /// the log and the limits are what the API started with.
    pub fn reload_directory(
        &self,
        sites: Vec<crate::config::SiteConfig>,
        publishers: Vec<crate::config::PublisherConfig>,
    ) -> Result<(), ConfigError> {
        let mut next = self.api.config.clone();
        next.sites = sites;
        next.publishers = publishers;
        next.validate()?;
        self.api.directory.store(Arc::new(Directory {
            sites: next.sites,
            publishers: next.publishers,
        }));
        tracing::info!("purge API sites and publishers reloaded");
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTPS listener's address, when `https_listen` is set.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Stops serving and every task; purges already logged stay in the log.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API over TLS: each connection handshaken in its own task, then served by hyper
/// (HTTP/1.1) with the same router as the plain listener.
async fn serve_https(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (acceptor, app, mut stop) = (acceptor.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                _ => {
                    tracing::debug!(%peer, "TLS handshake failed or timed out");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |req| tower::ServiceExt::oneshot(app.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                stopped = stop.wait_for(|s| *s) => stopped.is_ok(),
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
    }
}

fn router(api: Arc<Api>) -> Router {
    // `purge` reads its body itself, bounded by the same limit, after the checks the head
    // allows; this bounds any extractor a later route may use.
    let body_limit = axum::extract::DefaultBodyLimit::max(api.config.limits.max_body_bytes);
    Router::new()
        .route(PURGE_PATH, post(purge))
        .route("/v1/purges", get(recent))
        .route("/v1/purges/{id}", get(status))
        .route("/v1/purge-log", get(read_log))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "live": true, "ready": true })) }),
        )
        .route("/metrics", get(metrics))
        .fallback(purge_method)
        .layer(body_limit)
        .with_state(api)
}

/// An error answer: an RFC 9457 problem (`application/problem+json`) whose `detail` says
/// what was wrong and what to do. `error` repeats the detail for clients of the
/// `{"error": ...}` answers this API gave before.
fn problem(status: StatusCode, problem_type: &str, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": problem_type,
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "error": detail,
    });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A problem the status says everything about (`about:blank`, titled by the status).
fn error(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    problem(status, "about:blank", title, message)
}

/// `401` with the challenge RFC 9110 asks for.
fn unauthorized(why: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, why);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn key_conflict(conflict: &KeyConflict) -> Response {
    tracing::debug!(conflict = conflict.as_str(), "keyed purge refused");
    let status = StatusCode::from_u16(conflict.status()).unwrap_or(StatusCode::CONFLICT);
    let mut response = problem(
        status,
        conflict.problem_type(),
        conflict.title(),
        &conflict.to_string(),
    );
    if conflict.retry_later() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    response
}

/// A request body, read only while it stays within `limit` bytes: a declared
/// `Content-Length` over it is refused before a byte is read, a body that goes over it
/// (chunked, or longer than declared) as soon as it does. Either way `413`, and the API
/// holds at most `limit` bytes of it.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the body is over {limit} bytes, the most a purge request may have; split \
                 the purge into smaller ones (fewer URLs, tags, prefixes or hosts each)"
            ),
        )
    };
    // The declared length, where there is one (hyper checked it is a number).
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("the request body could not be read ({e}); send the request again"),
        )),
    }
}

fn shed(shed: &Shed) -> Response {
    let status = StatusCode::from_u16(shed.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error(status, &shed.to_string());
    if let Some(secs) = shed.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The publisher a bearer token belongs to, or why the request is refused.
fn publisher(
    api: &Api,
    headers: &HeaderMap,
) -> Result<crate::config::PublisherConfig, &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("no Authorization header: send Authorization: Bearer <your publisher token>")?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or("Authorization must be Bearer <your publisher token>")?;
    api.directory
        .load()
        .publishers
        .iter()
        .find(|p| tokens_match(p.token.as_bytes(), token.as_bytes()))
        .cloned()
        .ok_or("unknown token: send Authorization: Bearer <token> with a publisher's token")
}

/// `POST /v1/purge`. What the head decides is decided before a byte of the body is read:
/// the token (`401`), the `Idempotency-Key` (`400`), a declared length over the limit
/// (`413`). Only then is the body read, bounded by the limit, so a body without a valid
/// token, or too large, costs the API a connection buffer rather than its size. The site
/// (`403`), which the body names, is checked after.
async fn purge(State(api): State<Arc<Api>>, request: axum::extract::Request) -> Response {
    let (head, body) = request.into_parts();
    let publisher = match publisher(&api, &head.headers) {
        Ok(p) => p,
        Err(why) => return unauthorized(why),
    };
    let key = match IdempotencyKey::from_headers(&head.headers) {
        Ok(key) => key,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let body = match read_body(body, api.config.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let request: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad purge request: {e}")),
    };
    submit(
        &api,
        &publisher,
        request,
        key,
        &head.method,
        head.uri.path(),
    )
    .await
}

/// `PURGE /<absolute URL>` (or `PURGE <absolute URL>`): one URL, hard.
async fn purge_method(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method.as_str() != "PURGE" {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    let publisher = match publisher(&api, &headers) {
        Ok(p) => p,
        Err(why) => return unauthorized(why),
    };
    let key = match IdempotencyKey::from_headers(&headers) {
        Ok(key) => key,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let url = if uri.scheme().is_some() {
        uri.to_string()
    } else {
        uri.path_and_query()
            .map_or("", |pq| pq.as_str())
            .trim_start_matches('/')
            .to_owned()
    };
    let host = url
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_ascii_lowercase));
    let directory = api.directory.load();
    let Some(site) = host.and_then(|host| {
        directory
            .sites
            .iter()
            .find(|s| s.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)))
    }) else {
        return error(
            StatusCode::BAD_REQUEST,
            "PURGE needs an absolute URL of a configured site, e.g. PURGE /https://assets.example.com/app.js",
        );
    };
    let request = PurgeRequest {
        site: site.name.clone(),
        urls: Some(vec![url]),
        ..Default::default()
    };
    submit(&api, &publisher, request, key, &method, uri.path()).await
}

/// Validates, admits, logs and answers one purge, which `method path` asked for.
async fn submit(
    api: &Arc<Api>,
    publisher: &crate::config::PublisherConfig,
    request: PurgeRequest,
    idempotency_key: Option<IdempotencyKey>,
    method: &Method,
    path: &str,
) -> Response {
    let directory = api.directory.load_full();
    let Some(site) = directory.sites.iter().find(|s| s.name == request.site) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no site {:?} is configured", request.site),
        );
    };
    if !publisher.sites.contains(&site.name) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("this token may not purge site {:?}", site.name),
        );
    }
    let purge = match request.into_purge(site, api.config.limits.max_targets) {
        Ok(p) => p,
        Err(invalid) => return error(StatusCode::BAD_REQUEST, &invalid.to_string()),
    };
    // Every purge must fit in a batch a node reads. A body within `max_body_bytes` always
    // does (see `LimitsConfig::max_body_bytes`); a `PURGE` target's length is bounded only
    // by the request head, so this is checked here.
    let size = encoded_len(&purge);
    if size > MAX_PURGE_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "this purge takes {size} bytes as nodes receive it, over the {MAX_PURGE_BYTES} \
                 a purge may have; split it into smaller ones"
            ),
        );
    }
    // The claim first, then the log: a request finds its key either still claimed by the
    // request that used it or in the log, never in between (see `idempotency`).
    let mut keyed: Option<(Claim, Fingerprint)> = None;
    if let Some(key) = &idempotency_key {
        let fingerprint = Fingerprint::of(method.as_str(), path, &purge);
        let claim = match api.in_flight.claim(&publisher.name, key, &fingerprint) {
            Ok(claim) => claim,
            Err(conflict) => return key_conflict(&conflict),
        };
        match api.log.find_idempotent(&publisher.name, key.as_str()).await {
            Ok(Some(entry)) => {
                return match replay(&entry, &fingerprint) {
                    Ok(seq) => accepted(seq, StatusCode::OK),
                    Err(conflict) => key_conflict(&conflict),
                };
            }
            Ok(None) => {}
            Err(e) => return unavailable(api, &e),
        }
        keyed = Some((claim, fingerprint));
    }
    // The queue place first, then the tokens: a refusal by either takes nothing.
    let ticket = match api.queue.try_enter() {
        Ok(ticket) => ticket,
        Err(refused) => {
            api.metrics.shed(refused.as_str());
            return shed(&refused);
        }
    };
    if let Err(refused) = api
        .admission
        .admit(&publisher.name, cost(&purge), Instant::now())
    {
        api.metrics.shed(refused.as_str());
        return shed(&refused);
    }
    let (done, committed) = oneshot::channel();
    let (claim, request_fingerprint) = keyed.unzip();
    let entry = NewEntry {
        publisher: publisher.name.clone(),
        purge,
        idempotency_key: idempotency_key.map(IdempotencyKey::into_string),
        request_fingerprint,
        accepted_at_ms: unix_ms(),
    };
    // The ticket and the key's claim travel with the purge and are given back after the
    // append, so the queue bound also counts purges whose requester stopped waiting, and
    // a retry meanwhile is told to wait (`409`) rather than logging the purge twice.
    if api
        .commits
        .send(Pending {
            entry,
            done,
            _ticket: ticket,
            _claim: claim,
        })
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the purge API is shutting down",
        );
    }
    let result = tokio::time::timeout(api.queue.queue_timeout(), committed).await;
    match result {
        Ok(Ok(Ok(seq))) => {
            api.metrics.accepted();
            accepted(seq, StatusCode::ACCEPTED)
        }
        Ok(Ok(Err(message))) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the purge log is unavailable ({message}); the purge was not accepted, retry"
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
            response
        }
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the purge API is shutting down",
        ),
        Err(_) => {
            // Still queued: it may yet be logged (and then applied). A retry with the same
            // Idempotency-Key gets its id rather than a second purge.
            let refused = api.queue.timed_out();
            api.metrics.shed(refused.as_str());
            shed(&refused)
        }
    }
}

fn accepted(seq: u64, status: StatusCode) -> Response {
    let body = serde_json::json!({
        "id": seq.to_string(),
        "seq": seq,
        "status": format!("/v1/purges/{seq}"),
    });
    (status, axum::Json(body)).into_response()
}

fn unavailable(api: &Api, e: &LogError) -> Response {
    api.metrics.shed("log-unavailable");
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("the purge log is unavailable ({e}); retry"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1));
    response
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    /// Hold the answer until every node applied the purge, at most this long (`2s`, `500ms`).
    #[serde(default, with = "humantime_serde::option")]
    wait: Option<Duration>,
}

/// `GET /v1/purges/{id}`: which nodes applied the purge.
async fn status(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let publisher = match publisher(&api, &headers) {
        Ok(p) => p,
        Err(why) => return unauthorized(why),
    };
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "wait must be a duration such as 2s or 500ms",
        );
    };
    let Ok(seq) = id.parse::<u64>() else {
        return error(StatusCode::NOT_FOUND, &format!("no purge {id:?}"));
    };
    let entry = match api.log.read_after(seq.saturating_sub(1), 1).await {
        Ok(entries) => entries.into_iter().find(|e| e.seq == seq),
        Err(LogError::Truncated { .. }) => None,
        Err(e) => return unavailable(&api, &e),
    };
    // Another publisher's purge is reported as unknown, not as forbidden: ids are guessable.
    let Some(entry) = entry.filter(|e| e.publisher == publisher.name) else {
        return error(StatusCode::NOT_FOUND, &format!("no purge {id:?} of yours"));
    };
    if let Some(wait) = query.wait {
        let wait = wait.min(api.config.limits.max_wait);
        let mut progress = api.progress.subscribe();
        let _ =
            tokio::time::timeout(wait, progress.wait_for(|&everywhere| everywhere >= seq)).await;
    }
    let lagging: Vec<&Node> = api
        .nodes
        .iter()
        .filter(|n| acked(n) < seq)
        .map(|n| &**n)
        .collect();
    // Lagging nodes that refuse the next purge themselves: they need an operator.
    let stuck: Vec<serde_json::Value> = lagging
        .iter()
        .filter_map(|n| {
            let why = stuck_reason(n)?;
            Some(serde_json::json!({ "node": n.name, "error": why }))
        })
        .collect();
    let lagging: Vec<&str> = lagging.iter().map(|n| n.name.as_str()).collect();
    let body = serde_json::json!({
        "id": id,
        "seq": seq,
        "site": entry.purge.site,
        "selector": entry.purge.selector.kind(),
        "mode": entry.purge.mode,
        "state": if lagging.is_empty() { "done" } else { "in_progress" },
        "nodes": {
            "expected": api.nodes.len(),
            "applied": api.nodes.len() - lagging.len(),
            "lagging": lagging,
            "stuck": stuck,
        },
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct RecentQuery {
    #[serde(default = "default_recent")]
    limit: usize,
}

fn default_recent() -> usize {
    20
}

/// Most purges `GET /v1/purges` lists.
const MAX_RECENT: usize = 100;

/// How far back in the log `GET /v1/purges` looks for the caller's purges: a bound on the
/// work of one call whatever other publishers purge.
const RECENT_SCAN: usize = 1000;

/// `GET /v1/purges?limit=N`: the caller's most recent purges (at most `N`, 20 by default,
/// among the last [`RECENT_SCAN`] of the log), newest first, with each one's progress
/// over the nodes. The same token as `GET /v1/purges/{id}`: a publisher sees only its own.
async fn recent(
    State(api): State<Arc<Api>>,
    query: Result<Query<RecentQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let publisher = match publisher(&api, &headers) {
        Ok(p) => p,
        Err(why) => return unauthorized(why),
    };
    let limit = match query {
        Ok(Query(query)) if (1..=MAX_RECENT).contains(&query.limit) => query.limit,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("limit must be a whole number from 1 to {MAX_RECENT}"),
            );
        }
    };
    let head = api.log.head();
    let after = head.saturating_sub(RECENT_SCAN as u64);
    let entries = match api.log.read_after(after, RECENT_SCAN).await {
        Ok(entries) => entries,
        // The oldest purges scanned are no longer retained: read from the oldest kept.
        Err(LogError::Truncated { oldest }) => {
            match api
                .log
                .read_after(oldest.saturating_sub(1), RECENT_SCAN)
                .await
            {
                Ok(entries) => entries,
                Err(e) => return unavailable(&api, &e),
            }
        }
        Err(e) => return unavailable(&api, &e),
    };
    let purges = entries
        .into_iter()
        .rev()
        .filter(|e| e.publisher == publisher.name)
        .take(limit)
        .map(|e| {
            let lagging: Vec<String> = api
                .nodes
                .iter()
                .filter(|n| acked(n) < e.seq)
                .map(|n| n.name.clone())
                .collect();
            PurgeSummary {
                id: e.seq.to_string(),
                seq: e.seq,
                site: e.purge.site.clone(),
                selector: e.purge.selector.kind().to_owned(),
                targets: e.purge.selector.len(),
                mode: e.purge.mode,
                accepted_at_ms: e.accepted_at_ms,
                expected: api.nodes.len(),
                applied: api.nodes.len() - lagging.len(),
                lagging,
            }
        })
        .collect();
    (StatusCode::OK, axum::Json(RecentPurges { head, purges })).into_response()
}

fn acked(node: &Node) -> u64 {
    node.acked.load(std::sync::atomic::Ordering::Acquire)
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    after: u64,
    #[serde(default = "default_page")]
    limit: usize,
}

fn default_page() -> usize {
    1000
}

/// `GET /v1/purge-log?after=N&limit=M`, for nodes catching up.
async fn read_log(
    State(api): State<Arc<Api>>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let token = headers.get(NODE_TOKEN).map(|v| v.as_bytes());
    if !token.is_some_and(|t| tokens_match(t, api.config.node_token.as_bytes())) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong cdn-node-token");
    }
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "use ?after=N&limit=M");
    };
    let head = api.log.head();
    match api
        .log
        .read_after(query.after, query.limit.min(10_000))
        .await
    {
        Ok(entries) => {
            let purges = entries
                .into_iter()
                .map(|e| SequencedPurge {
                    seq: e.seq,
                    purge: e.purge,
                })
                .collect();
            (StatusCode::OK, axum::Json(PurgeLogPage { head, purges })).into_response()
        }
        Err(LogError::Truncated { oldest }) => {
            (StatusCode::GONE, axum::Json(LogTruncated { oldest, head })).into_response()
        }
        Err(e) => unavailable(&api, &e),
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let lag = api.log.head().saturating_sub(*api.progress.borrow());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(api.log.head(), lag),
    )
        .into_response()
}

/// Appends everything waiting in one batch per round: one fsync for many publishers.
async fn commit_forever(
    api: Arc<Api>,
    mut pending: mpsc::Receiver<Pending>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            first = pending.recv() => match first {
                Some(first) => first,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match pending.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let entries: Vec<NewEntry> = batch.iter().map(|p| p.entry.clone()).collect();
        let started = Instant::now();
        let result = api.log.append(entries).await.map_err(|e| e.to_string());
        api.queue.record_commit(batch.len(), started.elapsed());
        match result {
            Ok(seqs) => {
                let now = Instant::now();
                {
                    let mut accepted = api.accepted.lock().unwrap_or_else(PoisonError::into_inner);
                    // Read under the lock: `set_acked` raises it before taking the lock, so
                    // a purge some node reported before it was timed here is not kept
                    // waiting for the next rise.
                    let everywhere = *api.progress.borrow();
                    for seq in &seqs {
                        if *seq <= everywhere {
                            api.metrics.propagated(Duration::ZERO);
                        } else {
                            accepted.insert(*seq, now);
                        }
                    }
                }
                for (pending, seq) in batch.into_iter().zip(seqs) {
                    let _ = pending.done.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "purge log append failed: purges refused with 503");
                for pending in batch {
                    let _ = pending.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Pushes the log to one node, from the node's watermark, until it has everything
/// `released` (see [`crate::push_window`]); then waits for the next round. Failures back
/// off and retry: a purge in the log reaches every node in the end. A node that answers
/// `413` gets smaller batches, down to one purge; one that refuses even that is marked
/// stuck (see [`Node::stuck`]) and retried with backoff, never skipped: a purge is never
/// lost.
async fn push_forever(
    api: Arc<Api>,
    node: Arc<Node>,
    mut released: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pusher = Pusher {
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        outbox: VecDeque::new(),
        batch_limit: MAX_BATCH_BYTES,
    };
    let mut backoff = Duration::from_millis(20);
    let mut known = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let upto = *released.borrow_and_update();
        let result = if known {
            push_once(&api, &node, &mut pusher, upto).await
        } else {
            // Whatever is past the node's watermark is pushed now, not at the next append:
            // after a failed push the append that woke this task is long consumed.
            ask_applied(&api, &node, &pusher.client)
                .await
                .map(|applied| {
                    known = true;
                    set_acked(&api, &node, applied);
                    let more = applied < upto;
                    if !more {
                        // Nothing left to refuse.
                        unstick(&api, &node);
                    }
                    more
                })
        };
        match result {
            Ok(more) => {
                backoff = Duration::from_millis(20);
                if more {
                    continue;
                }
                tokio::select! {
                    _ = released.changed() => {}
                    // A node that restarted (watermark lower than acked) is found again.
                    () = tokio::time::sleep(Duration::from_secs(5)) => known = false,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Err(e) => {
                tracing::debug!(node = %node.name, error = %e, "purge push failed; retrying");
                known = false;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// What one node's push task keeps between pushes.
struct Pusher {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Purges read from the log and not yet acknowledged by the node, in order, each
    /// encoded as in a batch (shared with the other nodes' pushes through
    /// [`EncodedTail`]): a page of the log is read once, however many batches it takes.
    outbox: VecDeque<(u64, Bytes)>,
    /// Largest batch body sent to this node: [`MAX_BATCH_BYTES`], what a node of this
    /// version reads; halved by each `413` to a batch of more than one purge (a node with
    /// a smaller limit, or a proxy in front of it).
    batch_limit: usize,
}

/// Sends the next batch (with whatever the log has past the node's watermark, up to
/// [`PUSH_BATCH`]); `Ok(true)` when more of what is released, up to `upto`, is waiting.
async fn push_once(api: &Api, node: &Node, pusher: &mut Pusher, upto: u64) -> Result<bool, String> {
    let after = acked(node);
    if after >= upto {
        return Ok(false);
    }
    while pusher.outbox.front().is_some_and(|(seq, _)| *seq <= after) {
        pusher.outbox.pop_front();
    }
    if pusher
        .outbox
        .front()
        .is_some_and(|(seq, _)| *seq != after + 1)
    {
        // The node is elsewhere in the log (it restarted, or was reset): read again.
        pusher.outbox.clear();
    }
    if pusher.outbox.is_empty() {
        match api.tail.after(api.log.as_ref(), after, PUSH_BATCH).await {
            Ok(entries) => pusher.outbox.extend(entries),
            Err(LogError::Truncated { oldest }) => {
                return reset_node(api, node, pusher, after, oldest).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut batch = BatchBuilder::new(pusher.batch_limit);
    for (seq, encoded) in &pusher.outbox {
        if !batch.push_encoded(*seq, encoded) {
            break;
        }
    }
    let (purges, last) = (batch.len(), batch.last_seq());
    if purges == 0 {
        return Err(format!("the log has nothing after {after} below its head"));
    }
    let body = batch.finish();
    let bytes = body.len();
    api.metrics.pushed();
    let on_its_way = api.pushes.start();
    let (status, answer) = call(
        api,
        node,
        &pusher.client,
        Method::POST,
        "/v1/purge",
        Bytes::from(body),
    )
    .await?;
    drop(on_its_way);
    match status {
        StatusCode::OK | StatusCode::CONFLICT => {
            let applied = ack(status, &answer)?;
            unstick(api, node);
            set_acked(api, node, applied);
            Ok(applied < upto)
        }
        StatusCode::PAYLOAD_TOO_LARGE if purges > 1 => {
            api.metrics.push_too_large(&node.name);
            pusher.batch_limit = bytes / 2;
            tracing::warn!(
                node = %node.name, purges, bytes, limit = pusher.batch_limit,
                "node refused a batch as too large (413): sending it smaller batches"
            );
            Ok(true)
        }
        refused if refused.is_client_error() => {
            if refused == StatusCode::PAYLOAD_TOO_LARGE {
                api.metrics.push_too_large(&node.name);
            }
            let what = if purges == 1 {
                format!("purge {last} alone")
            } else {
                format!("purges {} to {last}", after + 1)
            };
            let why = format!(
                "the node answers {refused} to {what} ({bytes} bytes): {}",
                String::from_utf8_lossy(&answer)
            );
            stick(api, node, &why);
            Err(why)
        }
        other => Err(format!(
            "node answered {other} to purges {} to {last}",
            after + 1
        )),
    }
}

/// The purges this node missed are gone from the log: it must forget its content and go
/// on from the oldest purge still kept.
async fn reset_node(
    api: &Api,
    node: &Node,
    pusher: &mut Pusher,
    after: u64,
    oldest: u64,
) -> Result<bool, String> {
    tracing::warn!(node = %node.name, after, oldest, "node fell out of the log's retention: resetting it");
    pusher.outbox.clear();
    let body = serde_json::to_vec(&PurgeAck {
        applied: oldest - 1,
    })
    .map_err(|e| e.to_string())?;
    let (status, answer) = call(
        api,
        node,
        &pusher.client,
        Method::POST,
        "/v1/purge/reset",
        Bytes::from(body),
    )
    .await?;
    if status != StatusCode::OK {
        return Err(format!(
            "node answered {status} to a reset: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    set_acked(api, node, ack(status, &answer)?);
    Ok(true)
}

/// Marks `node` stuck: loudly, once per reason.
fn stick(api: &Api, node: &Node, why: &str) {
    let mut stuck = node.stuck.lock().unwrap_or_else(PoisonError::into_inner);
    if stuck.as_deref() != Some(why) {
        tracing::error!(
            node = %node.name, error = %why,
            "purge fan-out stuck: the node refuses the next purge and gets no more until it \
             takes it; retrying with backoff"
        );
        api.metrics.set_stuck(&node.name, true);
        *stuck = Some(why.to_owned());
    }
}

fn unstick(api: &Api, node: &Node) {
    let mut stuck = node.stuck.lock().unwrap_or_else(PoisonError::into_inner);
    if stuck.take().is_some() {
        tracing::info!(node = %node.name, "purge fan-out moving again");
        api.metrics.set_stuck(&node.name, false);
    }
}

fn stuck_reason(node: &Node) -> Option<String> {
    node.stuck
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

async fn ask_applied(
    api: &Api,
    node: &Node,
    client: &Client<HttpConnector, Full<Bytes>>,
) -> Result<u64, String> {
    let (status, answer) = call(
        api,
        node,
        client,
        Method::GET,
        "/v1/purge/applied",
        Bytes::new(),
    )
    .await?;
    if status == StatusCode::OK {
        return ack(status, &answer);
    }
    let why = format!(
        "the node answers {status} to GET /v1/purge/applied: {}",
        String::from_utf8_lossy(&answer)
    );
    if status.is_client_error() {
        // A wrong node token, or not a node of ours: no retry alone will help.
        stick(api, node, &why);
    }
    Err(why)
}

/// The watermark in a node's answer.
fn ack(status: StatusCode, body: &[u8]) -> Result<u64, String> {
    serde_json::from_slice::<PurgeAck>(body)
        .map(|ack| ack.applied)
        .map_err(|_| format!("node answered {status}: {}", String::from_utf8_lossy(body)))
}

/// One request to a node's admin API: its status and body.
async fn call(
    api: &Api,
    node: &Node,
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    let uri: Uri = format!("{}{path}", node.admin)
        .parse()
        .map_err(|e| format!("bad node address: {e}"))?;
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(token) = HeaderValue::from_str(&api.config.node_token) {
        headers.insert(NODE_TOKEN, token);
    }
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // A node's answers are small; more than this is not a node of ours.
    let body = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("node answered {status} with an unreadable body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Records a node's watermark; when that moves the highest purge applied everywhere,
/// wakes status polls and times the purges now applied everywhere. O(log nodes): no scan
/// of the nodes (see [`MinWatermark`]).
fn set_acked(api: &Api, node: &Node, applied: u64) {
    let everywhere = {
        let mut low = api.low.lock().unwrap_or_else(PoisonError::into_inner);
        // Under the lock, so the atomic and the tree agree on the latest value.
        node.acked
            .store(applied, std::sync::atomic::Ordering::Release);
        low.set(node.index, applied)
    };
    let rose = api.progress.send_if_modified(|current| {
        let rose = everywhere > *current;
        *current = everywhere;
        rose
    });
    if !rose {
        return;
    }
    let mut accepted = api.accepted.lock().unwrap_or_else(PoisonError::into_inner);
    let rest = match everywhere.checked_add(1) {
        Some(next) => accepted.split_off(&next),
        None => BTreeMap::new(),
    };
    let done = std::mem::replace(&mut *accepted, rest);
    drop(accepted);
    let now = Instant::now();
    for at in done.into_values() {
        api.metrics.propagated(now.duration_since(at));
    }
}
