//! Cross-origin access (CORS) for browser pages on other origins.
//!
//! Allowed origins come from [`HubConfig::cors_origins`](crate::HubConfig). An
//! allowed origin gets `Access-Control-Allow-Origin` with itself (and
//! `Allow-Credentials: true`, so cookies and `withCredentials` work) or `*` when
//! the setting is `*` (then without credentials, as the CORS spec requires).
//! Preflights are answered here: `GET`/`POST`, and the request headers
//! `Authorization`, `Content-Type`, `Last-Event-ID` and `Cache-Control`. A preflight
//! from another origin gets 403.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;
use crate::hub::Hub;

const ALLOW_HEADERS: &str = "authorization, content-type, last-event-id, cache-control";

/// The response headers for a request from `origin`, if it is allowed.
fn allowed(hub: &Hub, headers: &HeaderMap) -> Option<Vec<(&'static str, String)>> {
    let origins = &hub.config().cors_origins;
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    if origins.iter().any(|o| o == "*") {
        return Some(vec![("access-control-allow-origin", "*".into())]);
    }
    origins.iter().any(|o| o == origin).then(|| {
        vec![
            ("access-control-allow-origin", origin.to_owned()),
            ("access-control-allow-credentials", "true".into()),
            ("vary", "origin".into()),
        ]
    })
}

/// CORS headers as `name: value\r\n` lines, for responses written by hand.
pub(crate) fn header_lines(hub: &Hub, headers: &HeaderMap) -> String {
    allowed(hub, headers)
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

/// The router's CORS layer: answers preflights, adds headers to responses.
pub(crate) async fn middleware(State(hub): State<Hub>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_origin = headers.contains_key(header::ORIGIN);
    let preflight = request.method() == Method::OPTIONS
        && has_origin
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let cors = allowed(&hub, headers);
    if preflight {
        let Some(cors) = cors else {
            hub.inner.metrics.cors_rejected.inc();
            return ApiError::CorsForbidden("this origin may not use the hub".into())
                .into_response();
        };
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        for (k, v) in cors {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return res;
    }
    let mut res = next.run(request).await;
    for (k, v) in cors.unwrap_or_default() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            res.headers_mut().insert(k, v);
        }
    }
    res
}
