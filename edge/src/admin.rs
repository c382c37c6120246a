//! The admin listener: `/healthz` and `/metrics`, kept off the public port so clients can
//! neither see nor load them.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::proxy::Edge;
use crate::purge::{NODE_TOKEN_HEADER, PurgeAck, PurgeBatch, tokens_match};

/// The admin routes of a node.
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/purge", post(purge))
        .route("/v1/purge/applied", get(applied))
        .route("/v1/purge/reset", post(reset))
        .with_state(edge)
}

/// A batch of purges from the purge API, applied in order before the answer: `200` with
/// the new watermark, or `409` with the current one when the batch does not continue from
/// it (the API then resends from there).
async fn purge(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refusal(&edge, &headers) {
        return refused;
    }
    let batch: PurgeBatch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not a purge batch: {e}")),
    };
    // Applying may scan the store (prefixes, hosts): off the async workers.
    let applying = edge.clone();
    let result = tokio::task::spawn_blocking(move || applying.apply_purges(&batch)).await;
    match result {
        Ok(Ok(applied)) => (StatusCode::OK, axum::Json(PurgeAck { applied })).into_response(),
        Ok(Err(gap)) => {
            let body = serde_json::json!({ "applied": gap.applied, "error": gap.to_string() });
            (StatusCode::CONFLICT, axum::Json(body)).into_response()
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "applying the batch failed; resend it",
        ),
    }
}

async fn applied(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&edge, &headers) {
        return refused;
    }
    let applied = edge.store().purge_watermark();
    (StatusCode::OK, axum::Json(PurgeAck { applied })).into_response()
}

/// The purge API's answer to a node whose position fell out of the log's retention: the
/// node forgets its content and continues from the given sequence number.
async fn reset(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refusal(&edge, &headers) {
        return refused;
    }
    let Ok(PurgeAck { applied }) = serde_json::from_slice(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"applied\": N}");
    };
    edge.reset_purges(applied);
    (StatusCode::OK, axum::Json(PurgeAck { applied })).into_response()
}

/// Purge endpoints need the node token: a purge API of another CDN, or anyone who can reach
/// the admin port by mistake, cannot empty this node. `None` when the caller may proceed.
fn refusal(edge: &Edge, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &edge.node_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "this node takes no purges: set [purge] node_token in its config",
        ));
    };
    let given = headers.get(NODE_TOKEN_HEADER).map(|v| v.as_bytes());
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

/// Liveness is answering at all; readiness is `ready: true` with `200`. A node that is
/// draining answers `503` so health checkers stop sending it clients. `connections` is
/// the node's load, which GeoDNS sums per region to spill clients of a full region.
async fn healthz(State(edge): State<Arc<Edge>>) -> Response {
    let ready = edge.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "node": edge.name(),
        "live": true,
        "ready": ready,
        "connections": edge.connections(),
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    let usage = edge.store().usage();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        edge.metrics().render(usage),
    )
        .into_response()
}
