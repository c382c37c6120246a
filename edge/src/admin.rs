//! The admin listener: `/healthz` and `/metrics`, kept off the public port so clients can
//! neither see nor load them.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::proxy::Edge;

/// The admin routes of a node.
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(edge)
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
