//! Errors that reach HTTP: a status and the JSON body `{"error": code, "detail": text}`.

use axum::Json;
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
    /// The request head is too large.
    #[error("{0}")]
    HeaderTooLarge(String),
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
}

impl ApiError {
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
            HeaderTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
            ),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut res = (
            status,
            Json(Body {
                error: code,
                detail: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
            PublishError::Serialize(_) | PublishError::EmptyBatch => {
                Self::InvalidRequest(e.to_string())
            }
            PublishError::Backend(b) => b.into(),
        }
    }
}
