//! The axum routes: `/events`, `/publish`, health, metrics and status.

pub(crate) mod cors;
mod error;
pub(crate) mod events;
mod publish;
mod publish_layer;

pub use error::ApiError;
pub use publish::MAX_BATCH;
pub use publish_layer::{PublishResponse, PublishResponseLayer};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::hub::{Hub, Status};

impl Hub {
    /// The hub's routes, to serve as they are or `merge`/`nest` into an app:
    /// `GET /events`, `POST /publish`, `GET /health`, `/health/live`,
    /// `/health/ready`, `/metrics` and `/status`. Unknown paths and methods get
    /// the JSON error body too.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/events", get(events::events))
            .route("/publish", post(publish::publish))
            .route("/health", get(health))
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/status", get(status))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                cors::middleware,
            ))
            .with_state(self.clone())
    }
}

async fn health(State(hub): State<Hub>) -> Response {
    let ready = hub.ready().await;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ok" } else { "degraded" },
        "live": true,
        "ready": ready,
        "backend": hub.status().backend,
    });
    (code, Json(body)).into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(hub): State<Hub>) -> Response {
    if hub.inner.shutdown.is_cancelled() {
        return ApiError::Unavailable("the hub is shutting down".into()).into_response();
    }
    if hub.ready().await {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError::BackendUnavailable("the backend cannot be reached".into()).into_response()
    }
}

async fn metrics(State(hub): State<Hub>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.render_metrics(),
    )
        .into_response()
}

async fn status(State(hub): State<Hub>) -> Json<Status> {
    Json(hub.status())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this method is not allowed on this path".into())
}
