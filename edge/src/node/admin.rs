//! The admin listener: `/healthz` and `/metrics`, kept off the public port so clients can
//! neither see nor load them, and the node commands (purges, drain, hot objects), which
//! need the node token: it is checked from the head before any body is read, and bodies
//! are read only up to an explicit limit per endpoint.

use std::sync::Arc;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use node_api::hot::{HotList, HotObject};
use node_api::{HealthReport, NodeState, RequestCounts};

use crate::cache::status::Outcome;
use crate::node::invalidation::ApplyError;
use crate::node::proxy::Edge;
use crate::node::reload::{ReloadError, Reloader};
use node_api::headers::NODE_TOKEN;
use node_api::purge::{MAX_BATCH_BYTES, MAX_RESET_BYTES, PurgeAck, PurgeBatch, tokens_match};

/// The admin routes of a node.
pub fn router(edge: Arc<Edge>, reloader: Arc<Reloader>) -> Router {
    let reload = Router::new()
        .route("/v1/config/reload", post(reload))
        .with_state(reloader);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/purge", post(purge))
        .route("/v1/purge/applied", get(applied))
        .route("/v1/purge/reset", post(reset))
        .route("/v1/drain", post(drain))
        .route("/v1/resume", post(resume))
        .route("/v1/hot", get(hot))
        .with_state(edge)
        .merge(reload)
}

/// Re-reads the node's config file and puts it in service: `200` with what changed, or
/// the reason it was refused (the running config stays): `422` for a file that does not
/// read or validate, `409` for changes only a restart can make (named) or a node started
/// without a file. Needs the node token.
async fn reload(State(reloader): State<Arc<Reloader>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(reloader.edge(), &headers) {
        return refused;
    }
    let reloading = reloader.clone();
    match tokio::task::spawn_blocking(move || reloading.reload_file()).await {
        Ok(Ok(reloaded)) => (StatusCode::OK, axum::Json(reloaded)).into_response(),
        Ok(Err(refused @ (ReloadError::Fixed(_) | ReloadError::NoFile))) => {
            error(StatusCode::CONFLICT, &refused.to_string())
        }
        Ok(Err(refused)) => error(StatusCode::UNPROCESSABLE_ENTITY, &refused.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reload failed; retry it",
        ),
    }
}

/// A batch of purges from the purge API, applied in order before the answer: `200` with
/// the new watermark, or `409` with the current one when the batch does not continue from
/// it (the API then resends from there).
///
/// The node token is checked from the head before a byte of the body is read (`401`/`403`
/// for a body never taken), then the body is read up to [`MAX_BATCH_BYTES`] (`413` past
/// it, at once when the declared length says so), the size the purge API keeps every
/// batch within.
async fn purge(State(edge): State<Arc<Edge>>, request: axum::extract::Request) -> Response {
    let (head, body) = request.into_parts();
    if let Some(refused) = refusal(&edge, &head.headers) {
        return refused;
    }
    let body = match read_body(body, MAX_BATCH_BYTES).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let batch: PurgeBatch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not a purge batch: {e}")),
    };
    let result = edge.apply_purges_async(batch).await;
    match result {
        Ok(Ok(applied)) => (StatusCode::OK, axum::Json(PurgeAck { applied })).into_response(),
        Ok(Err(ApplyError::Gap(gap))) => {
            let body = serde_json::json!({ "applied": gap.applied, "error": gap.to_string() });
            (StatusCode::CONFLICT, axum::Json(body)).into_response()
        }
        Ok(Err(ApplyError::Persist(e))) => {
            tracing::error!(node = %edge.name(), error = %e, "purges applied but not persisted");
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "applying the batch failed; resend it",
        ),
    }
}

/// A request body, read only while it stays within `limit` bytes: `413` for a declared
/// `Content-Length` over it before a byte is read, and as soon as a body goes over it.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over {limit} bytes, the most this endpoint reads"),
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("the body could not be read: {e}"),
        )),
    }
}

async fn applied(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&edge, &headers) {
        return refused;
    }
    let applied = edge.acknowledged_watermark();
    (StatusCode::OK, axum::Json(PurgeAck { applied })).into_response()
}

/// The purge API's answer to a node whose position fell out of the log's retention: the
/// node forgets its content and continues from the given sequence number. The token is
/// checked before the body is read, which is read up to [`MAX_RESET_BYTES`].
async fn reset(State(edge): State<Arc<Edge>>, request: axum::extract::Request) -> Response {
    let (head, body) = request.into_parts();
    if let Some(refused) = refusal(&edge, &head.headers) {
        return refused;
    }
    let body = match read_body(body, MAX_RESET_BYTES).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let Ok(PurgeAck { applied }) = serde_json::from_slice(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"applied\": N}");
    };
    // A reset to a position this node has already reached asks it to forget nothing: the
    // purge API's view of the node is older than the node (it caught up, or reset itself
    // when it found the log truncated, since the API last heard from it). Forgetting the
    // content again, and moving the watermark back, would only cost a refill.
    let current = edge.acknowledged_watermark();
    if applied <= current {
        return (StatusCode::OK, axum::Json(PurgeAck { applied: current })).into_response();
    }
    if let Err(e) = edge.reset_purges(applied) {
        tracing::error!(node = %edge.name(), error = %e, "reset applied but not persisted");
        return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    (StatusCode::OK, axum::Json(PurgeAck { applied })).into_response()
}

/// Takes the node out of rotation: `/healthz` answers `503`, so GeoDNS stops answering
/// with it and upstream pools stop choosing it, while it keeps serving the clients that
/// still come (a regional failover drill, or maintenance). Needs the node token.
async fn drain(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    set_ready(&edge, &headers, false)
}

/// Puts a drained node back in rotation.
async fn resume(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    set_ready(&edge, &headers, true)
}

fn set_ready(edge: &Edge, headers: &HeaderMap, ready: bool) -> Response {
    if let Some(refused) = refusal(edge, headers) {
        return refused;
    }
    edge.set_ready(ready);
    tracing::info!(node = %edge.name(), ready, "readiness set over the admin API");
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "node": edge.name(), "ready": ready })),
    )
        .into_response()
}

/// Most objects `GET /v1/hot` lists.
const MAX_HOT: usize = 10_000;

#[derive(Debug, serde::Deserialize)]
struct HotQuery {
    #[serde(default = "default_hot_limit")]
    limit: usize,
}

fn default_hot_limit() -> usize {
    100
}

/// The node's most requested objects, as absolute URLs with their hit counts, for
/// `cdn warm` to copy into another region's caches. Needs the node token: the list
/// reveals what the publishers' users read.
async fn hot(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<HotQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refused) = refusal(&edge, &headers) {
        return refused;
    }
    let limit = match query {
        Ok(query) if (1..=MAX_HOT).contains(&query.limit) => query.limit,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("limit must be a whole number from 1 to {MAX_HOT}"),
            );
        }
    };
    let scanning = edge.clone();
    let Ok(hottest) = tokio::task::spawn_blocking(move || scanning.store().hottest(limit)).await
    else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the scan failed; retry");
    };
    let list = HotList {
        node: edge.name().to_owned(),
        objects: hottest
            .iter()
            .map(|(key, hits)| HotObject {
                url: key.locator().to_owned(),
                hits: *hits,
            })
            .collect(),
    };
    (StatusCode::OK, axum::Json(list)).into_response()
}

/// Purge endpoints need the node token: a purge API of another CDN, or anyone who can reach
/// the admin port by mistake, cannot empty this node. `None` when the caller may proceed.
fn refusal(edge: &Edge, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &edge.node_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "this node takes no admin commands (purges, drain, hot objects): set [purge] node_token in its config",
        ));
    };
    let given = headers.get(NODE_TOKEN).map(|v| v.as_bytes());
    if given.is_some_and(|given| tokens_match(given, expected.as_bytes())) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong cdn-node-token header",
        ))
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The node's [`HealthReport`]: `200` while it takes traffic (`ready`, or `degraded` when
/// some site's every upstream is down by probes: hits are still served), `503` while it
/// drains, so any health checker stops sending it clients. GeoDNS reads the state (a
/// degraded region is used only when no region is ready) and sums `connections` per
/// region to spill clients of a full one; the operator console turns the request counts
/// of two reports into requests per second and a hit ratio.
async fn healthz(State(edge): State<Arc<Edge>>) -> Response {
    let now = std::time::Instant::now();
    let upstreams_down: Vec<String> = edge
        .live()
        .sites
        .sites()
        .iter()
        .filter(|site| site.pool.all_down(now))
        .map(|site| site.name.clone())
        .collect();
    let state = if !edge.is_ready() {
        NodeState::Draining
    } else if !upstreams_down.is_empty() {
        NodeState::Degraded
    } else {
        NodeState::Ready
    };
    let report = HealthReport {
        node: edge.name().to_owned(),
        live: true,
        ready: state.takes_traffic(),
        state,
        upstreams_down,
        connections: edge.connections() as u64,
        upstream_in_flight: edge.admission.in_flight() as u64,
        upstream_capacity: edge.admission.capacity() as u64,
        shed: edge.admission.shed(),
        requests: request_counts(&edge),
    };
    let status = if state.takes_traffic() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// The node's request counters by cache outcome, as `edge_requests_total` counts them.
fn request_counts(edge: &Edge) -> RequestCounts {
    let count = |outcome| edge.metrics().requests(outcome);
    RequestCounts {
        hit: count(Outcome::Hit),
        miss: count(Outcome::Miss),
        stale: count(Outcome::Stale),
        pass: count(Outcome::Pass),
        refused: count(Outcome::Refused),
        error: count(Outcome::Error),
    }
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    let usage = edge.store().usage();
    if let Some(state) = edge.state() {
        edge.metrics()
            .persisted_state(state.watermark(), state.journal_len(), state.floor());
    }
    if let Some(hybrid) = edge.store().hybrid() {
        edge.metrics().disk_snapshot(hybrid);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        edge.metrics().render(usage),
    )
        .into_response()
}
