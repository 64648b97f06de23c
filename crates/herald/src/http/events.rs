//! `GET /events?topic=a,b`: open an event stream.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::cursor::TopicSet;
use crate::http::error::ApiError;
use crate::hub::Hub;
use crate::stream::{self, OpenError};

/// The query: every `topic=` value (each a comma-separated list) and the optional
/// `last_event_id=` cursor. Other parameters (cache busters) are ignored.
fn parse_query(query: Option<&str>) -> (Vec<String>, Option<String>) {
    let mut topics = Vec::new();
    let mut cursor = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "topic" => topics.push(v.into_owned()),
            "last_event_id" if !v.is_empty() => cursor = Some(v.into_owned()),
            _ => {}
        }
    }
    (topics, cursor)
}

pub(crate) async fn events(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let result = open(&hub, &headers, query.as_deref()).await;
    if let Err(e) = &result
        && e.status_and_code().0.is_client_error()
    {
        hub.inner.metrics.subscribe_rejected.inc();
    }
    result
}

async fn open(hub: &Hub, headers: &HeaderMap, query: Option<&str>) -> Result<Response, ApiError> {
    let (topics, query_cursor) = parse_query(query);
    let set = TopicSet::parse(topics.iter().map(String::as_str), hub.config().max_topics)?;
    // The header wins: EventSource keeps the first URL (with its `last_event_id`)
    // on reconnect and sends the newer cursor as `Last-Event-ID`.
    let header_cursor = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::BadCursor("invalid cursor: Last-Event-ID is not ASCII".into())
                })?
                .to_owned(),
        )
        .filter(|s| !s.is_empty()),
        None => None,
    };
    let cursor = header_cursor
        .or(query_cursor)
        .map(|c| set.decode(&c))
        .transpose()?;
    let body = stream::open(hub, set, cursor).await.map_err(|e| match e {
        OpenError::Full(_) | OpenError::ShuttingDown => ApiError::Unavailable(e.to_string()),
        OpenError::Backend(b) => b.into(),
    })?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
