//! `POST /publish`: one event object, or an array of them (all or nothing).

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{Event, EventName, Topic, compact_json};
use crate::http::error::ApiError;
use crate::http::events;
use crate::hub::Hub;

/// Most events in one batch.
pub const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Serialize)]
pub(crate) struct Published {
    topic: String,
    position: String,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Answer {
    One(Published),
    Many(Vec<Published>),
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
        })
}

fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ApiError::InvalidRequest(e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedJson(e.to_string()),
    }
}

fn to_event(item: Item<'_>, max_payload: usize) -> Result<Event, ApiError> {
    let topic = Topic::new(&item.topic)?;
    let name = match item.event {
        Some(n) => EventName::new(&n)?,
        None => EventName::message(),
    };
    let data = compact_json(item.data.get());
    if data.len() > max_payload {
        return Err(ApiError::PayloadTooLarge(format!(
            "event data for topic {topic} is {} bytes as compact JSON, the limit is {max_payload}",
            data.len()
        )));
    }
    Ok(Event::new(topic, name, data))
}

pub(crate) async fn publish(
    State(hub): State<Hub>,
    parts: Parts,
    body: Body,
) -> Result<Json<Answer>, ApiError> {
    let parsed = async {
        let deadline = parts.extensions.get::<BodyDeadline>().map(|d| d.0);
        let (events, batch) = parse(&hub, &parts.headers, body, deadline).await?;
        let mut topics: Vec<Topic> = events.iter().map(|e| e.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        events::authorize(&hub, &parts, &topics, true).await?;
        Ok::<_, ApiError>((events, batch))
    };
    let (events, batch) = match parsed.await {
        Ok(parsed) => parsed,
        Err(e) => {
            hub.count_refusal(&e);
            hub.inner.metrics.publish_rejected.inc();
            return Err(e);
        }
    };
    let topics: Vec<String> = events.iter().map(|e| e.topic.to_string()).collect();
    // It counts its own failures, and never fails open: an HTTP publisher must
    // learn that its events were not taken.
    let positions = hub.publish_events_strict(&events).await?;
    let mut answers = topics
        .into_iter()
        .zip(positions)
        .map(|(topic, p)| Published {
            topic,
            position: p.to_string(),
        });
    Ok(Json(if batch {
        Answer::Many(answers.collect())
    } else {
        match answers.next() {
            Some(a) => Answer::One(a),
            None => return Err(ApiError::InvalidRequest("nothing was published".into())),
        }
    }))
}

/// Validates the request into events; the flag tells whether it was a batch.
/// How long the hub's own server waits for a publish body (its
/// `header_read_timeout`), put on each request it hands to the router. A client
/// that sends a head and then too little of its body is answered 408, not held.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadline(pub(crate) std::time::Duration);

async fn parse(
    hub: &Hub,
    headers: &HeaderMap,
    body: Body,
    deadline: Option<std::time::Duration>,
) -> Result<(Vec<Event>, bool), ApiError> {
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "publish with Content-Type: application/json".into(),
        ));
    }
    let limit = hub.config().max_body_bytes();
    let read = to_bytes(body, limit);
    let read = match deadline {
        Some(d) => tokio::time::timeout(d, read).await.map_err(|_| {
            ApiError::RequestTimeout(format!("the request body did not arrive within {d:?}"))
        })?,
        None => read.await,
    };
    let bytes = read.map_err(|e| {
        let e = e.into_inner();
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::BodyTooLarge(format!("the request body is larger than {limit} bytes"))
        } else {
            // Bad chunked framing, a body cut short: not a size problem.
            ApiError::InvalidRequest(format!("the request body could not be read: {e}"))
        }
    })?;
    let raw: &RawValue = serde_json::from_slice(&bytes).map_err(json_error)?;
    let max = hub.config().max_payload_bytes;
    let batch = raw.get().trim_start().starts_with('[');
    let events = if batch {
        let items: Vec<Item<'_>> = serde_json::from_str(raw.get()).map_err(json_error)?;
        if items.is_empty() {
            return Err(ApiError::InvalidRequest("the batch is empty".into()));
        }
        if items.len() > MAX_BATCH {
            return Err(ApiError::InvalidRequest(format!(
                "the batch holds {} events, at most {MAX_BATCH} are allowed",
                items.len()
            )));
        }
        items
            .into_iter()
            .map(|i| to_event(i, max))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let item: Item<'_> = serde_json::from_str(raw.get()).map_err(json_error)?;
        vec![to_event(item, max)?]
    };
    Ok((events, batch))
}
