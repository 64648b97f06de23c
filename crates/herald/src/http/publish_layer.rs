//! A tower layer that publishes a handler's successful JSON response.
//!
//! ```
//! use axum::{Json, Router, routing::post};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
//! async fn update(axum::extract::Path(id): axum::extract::Path<u64>) -> Json<serde_json::Value> {
//!     Json(serde_json::json!({"id": id, "status": "closed"}))
//! }
//! let app: Router = Router::new()
//!     .route(
//!         "/tickets/{id}/status",
//!         post(update).layer(hub.publish_response("ticket:{id}", "ticket_status_changed")),
//!     )
//!     .merge(hub.router());
//! # let _ = app;
//! # }
//! ```
//!
//! The topic template's `{name}` parts are filled from the route's path parameters,
//! in one pass (a value is never read as a template). A value must be 1 to 64 bytes
//! of `A-Z a-z 0-9 _ - . @`, like a token's `{sub}`: a caller cannot reach another
//! topic namespace through a `:` or `/` in a path segment.
//! Only 2xx responses with a JSON body are published; the caller gets the response
//! unchanged either way. A publish that fails (a parameter that cannot fill the
//! topic, a body that is not JSON, payload too large, backend down) is logged and
//! counted in `herald_publish_rejected_total`, and the response still goes out:
//! the handler's work is done and the caller must not see it fail.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody, to_bytes};
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::header;
use axum::response::Response;
use tower::{Layer, Service};

use crate::event::{Event, EventName, Topic, compact_json};
use crate::hub::Hub;

/// See the module docs; made by [`Hub::publish_response`].
#[derive(Debug, Clone)]
pub struct PublishResponseLayer {
    hub: Hub,
    topic: String,
    event: EventName,
}

impl Hub {
    /// A layer that publishes the handler's 2xx JSON response as `event` on the topic
    /// `topic` (with `{param}` filled from the path). Panics if `event` is not a
    /// valid event name (a programming error, caught at startup).
    pub fn publish_response(&self, topic: &str, event: &str) -> PublishResponseLayer {
        let event = match EventName::new(event) {
            Ok(e) => e,
            Err(e) => panic!("publish_response: {e}"),
        };
        PublishResponseLayer {
            hub: self.clone(),
            topic: topic.to_owned(),
            event,
        }
    }
}

impl<S> Layer<S> for PublishResponseLayer {
    type Service = PublishResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PublishResponse {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PublishResponseLayer`].
#[derive(Debug, Clone)]
pub struct PublishResponse<S> {
    inner: S,
    layer: PublishResponseLayer,
}

/// Fills `template`'s `{name}` parts from `params`, in one pass.
fn fill(template: &str, params: &[(&str, &str)]) -> Result<String, String> {
    let mut topic = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        topic.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("unclosed {{ in the topic template {template:?}"));
        };
        let name = &after[..close];
        let value = params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("the route has no path parameter {name:?}"))?;
        if !crate::auth::subject_ok(value) {
            return Err(format!(
                "path parameter {name} = {:?} cannot be placed in a topic: it must be \
                 1..=64 bytes of A-Z a-z 0-9 _ - . @",
                value.chars().take(64).collect::<String>()
            ));
        }
        topic.push_str(value);
        rest = &after[close + 1..];
    }
    topic.push_str(rest);
    Ok(topic)
}

impl<S> Service<Request> for PublishResponse<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was polled ready serves this call (tower's convention).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let topic = match RawPathParams::from_request_parts(&mut parts, &()).await {
                Ok(params) => fill(&layer.topic, &params.iter().collect::<Vec<_>>()),
                Err(_) => fill(&layer.topic, &[]),
            };
            let response = inner.call(Request::from_parts(parts, body)).await?;
            let is_json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if !response.status().is_success() || !is_json {
                return Ok(response);
            }
            // Only a body of known size that fits an event (pretty JSON may shrink
            // when compacted: allow 4x) is read; anything else passes through untouched.
            let limit = layer.hub.config().max_payload_bytes.saturating_mul(4) as u64;
            if response
                .body()
                .size_hint()
                .upper()
                .is_none_or(|n| n > limit)
            {
                tracing::warn!(
                    "publish_response: response body too large or unsized; not published"
                );
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let bytes = match to_bytes(body, usize::MAX).await {
                Ok(b) => b,
                Err(e) => {
                    // The handler's body failed while being read: the caller would
                    // have seen the same failure.
                    tracing::warn!(error = %e, "publish_response: cannot read the response body");
                    return Ok(Response::from_parts(parts, Body::empty()));
                }
            };
            let published = async {
                let checked = (|| {
                    let text = std::str::from_utf8(&bytes).map_err(|e| e.to_string())?;
                    serde_json::from_str::<&serde_json::value::RawValue>(text)
                        .map_err(|e| e.to_string())?;
                    let topic = Topic::new(&topic?).map_err(|e| e.to_string())?;
                    Ok::<_, String>(Event::new(topic, layer.event.clone(), compact_json(text)))
                })();
                let event = checked.inspect_err(|_| {
                    layer.hub.inner.metrics.publish_rejected.inc();
                })?;
                // Counts its own failures.
                layer
                    .hub
                    .publish_events(vec![event])
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = published {
                tracing::warn!(error = %e, "publish_response: the response was not published");
            }
            Ok(Response::from_parts(parts, Body::from(bytes)))
        })
    }
}
