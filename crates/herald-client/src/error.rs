//! What can go wrong talking to a hub.

use serde::Deserialize;
use thiserror::Error;

/// The hub's JSON error body, `{"error": code, "detail": text}` (plus `topics`
/// for 403), with the HTTP status it came with.
///
/// When the body is not the hub's JSON (e.g. a proxy's HTML page), `code` is
/// empty and `detail` holds the start of the body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The stable machine-readable code, e.g. `bad_topic`, `bad_cursor`, `forbidden`.
    pub code: String,
    /// The human-readable explanation.
    pub detail: String,
    /// For 403: the topics that were denied.
    pub topics: Vec<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code.is_empty() {
            write!(f, "HTTP {}: {}", self.status, self.detail)
        } else {
            write!(f, "HTTP {} {}: {}", self.status, self.code, self.detail)
        }
    }
}

#[derive(Deserialize)]
struct Body {
    error: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    topics: Vec<String>,
}

/// How much of an error body is kept when it is not the hub's JSON.
const TEXT_LIMIT: usize = 512;

impl ApiError {
    /// Reads an error answer's body (`body` at most a bounded prefix of it).
    pub(crate) fn from_body(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => Self {
                status,
                code: b.error,
                detail: b.detail,
                topics: b.topics,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let mut end = text.len().min(TEXT_LIMIT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                Self {
                    status,
                    code: String::new(),
                    detail: text[..end].trim().to_owned(),
                    topics: Vec::new(),
                }
            }
        }
    }
}

/// An error from [`Client`](crate::Client), a [`Subscription`](crate::Subscription)
/// or a [`Publisher`](crate::Publisher).
///
/// A subscription yields an `Err` only for what retrying cannot fix (the request
/// itself was refused, or the server does not speak SSE); it ends after it.
/// Network errors, EOF and 5xx answers are retried and reported as
/// [`Message::Disconnected`](crate::Message::Disconnected) instead.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not an absolute `http`/`https` URL.
    #[error("invalid hub URL: {0}")]
    InvalidUrl(String),
    /// A token or key cannot be sent as an HTTP header value.
    #[error("{0}")]
    InvalidHeader(String),
    /// 400: the request is invalid (`bad_topic`, `bad_cursor`, `no_topic`, …).
    #[error("bad request: {0}")]
    BadRequest(ApiError),
    /// 401: credentials are missing or invalid.
    #[error("unauthorized: {0}")]
    Unauthorized(ApiError),
    /// 403: the credentials do not allow these topics ([`ApiError::topics`]).
    #[error("forbidden: {0}")]
    Forbidden(ApiError),
    /// Any other unsuccessful status (for publishes, also 5xx; a subscription
    /// retries those instead).
    #[error("request failed: {0}")]
    Status(ApiError),
    /// A subscription's `200` answer was not `text/event-stream`, or a 2xx other
    /// than 200 (which per the SSE spec means "do not reconnect").
    #[error("not an event stream: {0}")]
    NotEventStream(String),
    /// The request could not be made or its answer not read (network, TLS, …).
    #[error("HTTP error: {0}")]
    Http(#[from] reqwest::Error),
    /// Data to publish could not be serialised, or the hub's answer not read.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
}

impl ClientError {
    /// Classifies an unsuccessful answer by status.
    pub(crate) fn from_status(e: ApiError) -> Self {
        match e.status {
            400 => Self::BadRequest(e),
            401 => Self::Unauthorized(e),
            403 => Self::Forbidden(e),
            _ => Self::Status(e),
        }
    }

    /// The hub's error body, for errors that carry one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::BadRequest(e) | Self::Unauthorized(e) | Self::Forbidden(e) | Self::Status(e) => {
                Some(e)
            }
            _ => None,
        }
    }

    /// The hub's error code (`bad_topic`, `bad_cursor`, `unauthorized`, …), if any.
    pub fn code(&self) -> Option<&str> {
        self.api_error()
            .map(|e| e.code.as_str())
            .filter(|c| !c.is_empty())
    }

    /// The HTTP status of an unsuccessful answer, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        self.api_error().map(|e| e.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hub_body_or_keeps_text() {
        let e = ApiError::from_body(
            403,
            br#"{"error":"forbidden","detail":"not allowed to subscribe to a","topics":["a"]}"#,
        );
        assert_eq!(e.code, "forbidden");
        assert_eq!(e.topics, ["a"]);
        let c = ClientError::from_status(e);
        assert!(matches!(c, ClientError::Forbidden(_)));
        assert_eq!(c.code(), Some("forbidden"));
        assert_eq!(c.status(), Some(403));

        let e = ApiError::from_body(502, "<html>bad gateway é</html>".repeat(100).as_bytes());
        assert_eq!(e.code, "");
        assert!(e.detail.len() <= TEXT_LIMIT && e.detail.starts_with("<html>"));
        let c = ClientError::from_status(e);
        assert!(matches!(c, ClientError::Status(_)));
        assert_eq!(c.code(), None);
    }
}
