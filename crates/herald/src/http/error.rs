//! Errors that reach HTTP: a status and the JSON body `{"error": code, "detail": text}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::backend::BackendError;
use crate::cursor::SubscriptionError;
use crate::event::NameError;
use crate::hub::PublishError;

/// An error answered before a stream starts, or to a publish.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The JSON is well-formed but not a publish request (missing or unknown field,
    /// wrong type, empty batch).
    #[error("{0}")]
    InvalidRequest(String),
    /// A topic name is invalid.
    #[error("{0}")]
    BadTopic(String),
    /// An event name is invalid or reserved.
    #[error("{0}")]
    BadEventName(String),
    /// No topic in the subscription.
    #[error("{0}")]
    NoTopic(String),
    /// More topics than allowed on one connection.
    #[error("{0}")]
    TooManyTopics(String),
    /// The cursor cannot be read or belongs to another topic set.
    #[error("{0}")]
    BadCursor(String),
    /// An event's data is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request body is too large.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The request's content type is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The connection limit is reached, or the hub is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The backend cannot take the request now.
    #[error("{0}")]
    BackendUnavailable(String),
    /// Missing or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right to some topics.
    #[error("{detail}")]
    Forbidden {
        /// Human text.
        detail: String,
        /// The denied topics.
        topics: Vec<String>,
    },
    /// Too many open streams from one client address.
    #[error("{0}")]
    TooManyFromIp(String),
    /// A CORS preflight from an origin that is not allowed.
    #[error("{0}")]
    CorsForbidden(String),
    /// The request head is too large.
    #[error("{0}")]
    HeaderTooLarge(String),
    /// The request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// No such route.
    #[error("{0}")]
    NotFound(String),
    /// The route exists with another method.
    #[error("{0}")]
    MethodNotAllowed(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a [String]>,
}

impl ApiError {
    /// The JSON body: `{"error": code, "detail": text}`, plus `"topics"` for 403.
    pub fn body(&self) -> String {
        let (_, code) = self.status_and_code();
        let topics = match self {
            ApiError::Forbidden { topics, .. } => Some(topics.as_slice()),
            _ => None,
        };
        serde_json::to_string(&Body {
            error: code,
            detail: self.to_string(),
            topics,
        })
        .unwrap_or_default()
    }

    /// Extra headers: `Retry-After` for 503 and 429, `WWW-Authenticate` for 401.
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status_and_code().0.as_u16() {
            503 | 429 => &[("retry-after", "1")],
            401 => &[("www-authenticate", "Bearer")],
            _ => &[],
        }
    }

    /// The HTTP status and the stable machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            BadTopic(_) => (StatusCode::BAD_REQUEST, "bad_topic"),
            BadEventName(_) => (StatusCode::BAD_REQUEST, "bad_event_name"),
            NoTopic(_) => (StatusCode::BAD_REQUEST, "no_topic"),
            TooManyTopics(_) => (StatusCode::BAD_REQUEST, "too_many_topics"),
            BadCursor(_) => (StatusCode::BAD_REQUEST, "bad_cursor"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            BackendUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            TooManyFromIp(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"),
            CorsForbidden(_) => (StatusCode::FORBIDDEN, "cors_origin_not_allowed"),
            HeaderTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
            ),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        let mut res = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body(),
        )
            .into_response();
        for (k, v) in self.extra_headers() {
            res.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        res
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Topic(_) => Self::BadTopic(e.to_string()),
            NameError::EventName(_) | NameError::ReservedEventName(_) => {
                Self::BadEventName(e.to_string())
            }
            NameError::Position(_) => Self::BadCursor(e.to_string()),
        }
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> Self {
        match e {
            SubscriptionError::NoTopic => Self::NoTopic(e.to_string()),
            SubscriptionError::BadTopic(n) => n.into(),
            SubscriptionError::TooManyTopics { .. } => Self::TooManyTopics(e.to_string()),
            SubscriptionError::BadCursor(_) => Self::BadCursor(e.to_string()),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Unauthenticated(d) => Self::Unauthorized(d),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        Self::BackendUnavailable(e.to_string())
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::BadName(n) => n.into(),
            PublishError::PayloadTooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
            PublishError::Serialize(_)
            | PublishError::EmptyBatch
            | PublishError::BatchTooLarge { .. }
            | PublishError::NoBroadcastTopic => Self::InvalidRequest(e.to_string()),
            PublishError::Backend(b) => b.into(),
        }
    }
}
