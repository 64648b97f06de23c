//! The axum routes: `/events`, `/publish`, health, metrics and status.

pub(crate) mod cors;
mod error;
pub(crate) mod events;
mod publish;
mod publish_layer;

pub use error::ApiError;
pub(crate) use publish::BodyDeadline;
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

/// Which of the hub's routes [`Hub::routes`] mounts. `GET /events` always is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    /// `POST /publish`.
    pub publish: bool,
    /// `GET /health`, `/health/live`, `/health/ready`.
    pub health: bool,
    /// `GET /metrics` (Prometheus/OpenMetrics text).
    pub metrics: bool,
    /// `GET /status` (JSON).
    pub status: bool,
    /// JSON 404/405 bodies for every other path and method. Leave it off when
    /// merging into an app that has its own fallback (axum refuses two).
    pub fallback: bool,
}

impl Routes {
    /// Every route and the JSON fallback: what `herald serve` mounts.
    pub const ALL: Self = Self {
        publish: true,
        health: true,
        metrics: true,
        status: true,
        fallback: true,
    };

    /// `GET /events` alone: for an app that publishes from its own handlers.
    pub const EVENTS_ONLY: Self = Self {
        publish: false,
        health: false,
        metrics: false,
        status: false,
        fallback: false,
    };
}

impl Hub {
    /// The hub's routes, to serve as they are or `merge`/`nest` into an app:
    /// `GET /events`, `POST /publish`, `GET /health`, `/health/live`,
    /// `/health/ready`, `/metrics` and `/status`. Unknown paths and methods get
    /// the JSON error body too. Same as `hub.routes(Routes::ALL)`.
    pub fn router(&self) -> Router {
        self.routes(Routes::ALL)
    }

    /// The routes picked by `which`, with the hub's CORS handling.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use herald::Routes;
    /// let hub = herald::Hub::builder().build().await?;
    /// // The app keeps its own 404 handler; the hub adds /events and /health*.
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/", axum::routing::get(|| async { "home" }))
    ///     .merge(hub.routes(Routes { health: true, ..Routes::EVENTS_ONLY }))
    ///     .fallback(|| async { "custom 404" });
    /// # let _ = app;
    /// # Ok(()) }
    /// ```
    pub fn routes(&self, which: Routes) -> Router {
        let mut r = Router::new().route("/events", get(events::events));
        if which.publish {
            r = r.route("/publish", post(publish::publish));
        }
        if which.health {
            r = r
                .route("/health", get(health))
                .route("/health/live", get(live))
                .route("/health/ready", get(ready));
        }
        if which.metrics {
            r = r.route("/metrics", get(metrics));
        }
        if which.status {
            r = r.route("/status", get(status));
        }
        if which.fallback {
            r = r
                .fallback(not_found)
                .method_not_allowed_fallback(method_not_allowed);
        }
        r.layer(axum::middleware::from_fn_with_state(
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
