//! `GET /events?topic=a,b`: open an event stream.

use std::net::SocketAddr;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::cursor::TopicSet;
use crate::event::Topic;
use crate::http::error::ApiError;
use crate::hub::Hub;
use crate::server::IpSlot;
use crate::stream::{self, Conn, OpenError};

/// What the query asks for.
struct Query {
    /// Every `topic=` value (each a comma-separated list).
    topics: Vec<String>,
    /// `last_event_id=`.
    cursor: Option<String>,
    /// `envelope=1`: each event's data as `{"topic": ..., "data": ...}`.
    envelope: bool,
}

/// Reads the query. Other parameters (cache busters, `access_token`) are ignored.
fn parse_query(query: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        topics: Vec::new(),
        cursor: None,
        envelope: false,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "topic" => q.topics.push(v.into_owned()),
            "last_event_id" if !v.is_empty() => q.cursor = Some(v.into_owned()),
            "envelope" => {
                q.envelope = match &*v {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    other => {
                        return Err(ApiError::InvalidRequest(format!(
                            "envelope must be 1 or 0, not {:?}",
                            other.chars().take(16).collect::<String>()
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

pub(crate) async fn events(State(hub): State<Hub>, parts: Parts) -> Result<Response, ApiError> {
    // With the client's address (the hub's own server gives it; so does an axum
    // server made with `into_make_service_with_connect_info::<SocketAddr>()`), the
    // stream holds one of its `max_connections_per_ip` slots while it lives.
    let slot = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => match IpSlot::take(&hub, peer.ip()) {
            Some(slot) => Some(slot),
            None => return Err(IpSlot::refused(&hub)),
        },
        None => None,
    };
    let body = prepare(&hub, &parts).await?;
    let body = body.into_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
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

/// Validates and authorizes a subscription and opens its stream; shared by the
/// axum route and the hub's own connection handling. Counts its refusals.
pub(crate) async fn prepare(hub: &Hub, parts: &Parts) -> Result<Conn, ApiError> {
    let result = open(hub, parts).await;
    if let Err(e) = &result {
        hub.count_refusal(e);
        if e.status_and_code().0.is_client_error() {
            hub.inner.metrics.subscribe_rejected.inc();
        }
    }
    result
}

/// Asks the hub's authorizer about `topics`: 401, or 403 naming the denied
/// topics, or the credentials' expiry.
pub(crate) async fn authorize(
    hub: &Hub,
    parts: &Parts,
    topics: &[Topic],
    publish: bool,
) -> Result<Option<SystemTime>, ApiError> {
    let Some(auth) = hub.authorizer() else {
        return Ok(None);
    };
    let decision = if publish {
        auth.publish(parts, topics).await?
    } else {
        auth.subscribe(parts, topics).await?
    };
    let denied: Vec<String> = topics
        .iter()
        .zip(decision.allowed.iter().chain(std::iter::repeat(&false)))
        .filter(|(_, ok)| !**ok)
        .map(|(t, _)| t.to_string())
        .collect();
    if denied.is_empty() {
        Ok(decision.expires_at)
    } else {
        Err(ApiError::Forbidden {
            detail: format!(
                "not allowed to {} {}",
                if publish {
                    "publish to"
                } else {
                    "subscribe to"
                },
                denied.join(", ")
            ),
            topics: denied,
        })
    }
}

/// Reads `cursor` for `set`. A cursor issued before the hub had its broadcast
/// topic (for `asked`, the topics without it) is read too: its topics resume
/// exactly, and the broadcast topic from position 0 (so a `herald.reset` for it,
/// as nothing says what the client saw there). Clients do not all get a 400 (and
/// browsers do not stop reconnecting) when a deploy adds a broadcast topic.
fn decode(
    set: &TopicSet,
    asked: Option<&TopicSet>,
    cursor: &str,
) -> Result<Vec<crate::event::Position>, crate::cursor::SubscriptionError> {
    set.decode(cursor).or_else(|e| {
        let Some(asked) = asked else {
            return Err(e);
        };
        let mine = asked.decode(cursor).map_err(|_| e)?;
        let mut theirs = mine.into_iter();
        Ok(set
            .topics()
            .iter()
            .map(|t| {
                if asked.topics().contains(t) {
                    theirs.next().unwrap_or_default()
                } else {
                    crate::event::Position::default()
                }
            })
            .collect())
    })
}

async fn open(hub: &Hub, parts: &Parts) -> Result<Conn, ApiError> {
    let Query {
        topics,
        cursor: query_cursor,
        envelope,
    } = parse_query(parts.uri.query())?;
    let max = hub.config().max_topics;
    let mut set = TopicSet::parse(topics.iter().map(String::as_str), max)?;
    let expires_at = authorize(hub, parts, set.topics(), false).await?;
    // Every stream gets the broadcast topic too, unasked and without authorization.
    let mut asked = None;
    if let Some(b) = &hub.config().broadcast_topic
        && !set.topics().iter().any(|t| t.as_str() == b)
    {
        let names = set.topics().iter().map(|t| t.as_str()).chain([b.as_str()]);
        let with_broadcast = TopicSet::parse(names, max + 1)?;
        asked = Some(std::mem::replace(&mut set, with_broadcast));
    }
    // The header wins: EventSource keeps the first URL (with its `last_event_id`)
    // on reconnect and sends the newer cursor as `Last-Event-ID`.
    let header_cursor = match parts.headers.get("last-event-id") {
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
        .map(|c| decode(&set, asked.as_ref(), &c))
        .transpose()?;
    stream::open(hub, set, cursor, expires_at, envelope)
        .await
        .map_err(|e| match e {
            OpenError::Full(_) | OpenError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            OpenError::Expired => ApiError::Unauthorized(e.to_string()),
            OpenError::Backend(b) => b.into(),
        })
}
