//! `GET /events?topic=a,b`: open an event stream.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::Stream;

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
    let cursor = headers.get("last-event-id").map(|v| v.as_bytes());
    let body = prepare(&hub, query.as_deref(), cursor).await?;
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

/// Validates a subscription (query and `Last-Event-ID` header) and opens its stream;
/// shared by the axum route and the hub's own connection handling.
pub(crate) async fn prepare(
    hub: &Hub,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static, ApiError> {
    let result = open(hub, query, last_event_id).await;
    if let Err(e) = &result
        && e.status_and_code().0.is_client_error()
    {
        hub.inner.metrics.subscribe_rejected.inc();
    }
    result
}

async fn open(
    hub: &Hub,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static, ApiError> {
    let (topics, query_cursor) = parse_query(query);
    let set = TopicSet::parse(topics.iter().map(String::as_str), hub.config().max_topics)?;
    // The header wins: EventSource keeps the first URL (with its `last_event_id`)
    // on reconnect and sends the newer cursor as `Last-Event-ID`.
    let header_cursor = match last_event_id {
        Some(v) => Some(
            std::str::from_utf8(v)
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or_else(|| {
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
    stream::open(hub, set, cursor).await.map_err(|e| match e {
        OpenError::Full(_) | OpenError::ShuttingDown => ApiError::Unavailable(e.to_string()),
        OpenError::Backend(b) => b.into(),
    })
}
