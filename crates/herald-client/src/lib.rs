//! A typed Rust client for [Herald](https://github.com/herald-sse/herald), the
//! Server-Sent Events notification hub: subscribe to topics with automatic
//! reconnection and exact resume, and publish events.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use herald_client::{Client, Message};
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Comment {
//!     id: u64,
//!     thread: u64,
//! }
//!
//! # async fn run() -> Result<(), herald_client::ClientError> {
//! let client = Client::new("http://127.0.0.1:8080")?;
//!
//! // Subscribe: reconnects by itself and resumes from the last event seen.
//! let mut events = client
//!     .subscribe(["comments", "user:42"])
//!     .bearer("eyJhbGciOi...")
//!     .stream();
//!
//! // Publish (from anywhere: another task, another service).
//! let publisher = client.publisher().key("backend-key-0123456789");
//! let position = publisher
//!     .publish("comments", "comment_created", &Comment { id: 7, thread: 3 })
//!     .await?;
//! println!("published at {position}");
//!
//! while let Some(message) = events.next().await {
//!     match message? {
//!         Message::Event(event) if event.name == "comment_created" => {
//!             let comment: Comment = event.json()?;
//!             println!("comment {} on thread {}", comment.id, comment.thread);
//!         }
//!         Message::Reset { topics } => {
//!             // Events were lost beyond the hub's retained history: refetch.
//!             println!("refetch {topics:?}");
//!         }
//!         Message::Replaced { topics } => {
//!             // Another client took these exclusive topics; the stream ends now.
//!             println!("replaced on {topics:?}");
//!         }
//!         Message::Disconnected { error, retry_in } => {
//!             println!("disconnected ({error}), retrying in {retry_in:?}");
//!         }
//!         _ => {}
//!     }
//!     // Save `events.cursor()` to resume later with `.last_event_id(cursor)`.
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery
//!
//! Every `id:` the hub sends (including the id-only frame that opens each stream)
//! moves the subscription's [cursor](Subscription::cursor), as it is yielded. On
//! EOF, a network error or a 5xx/429 answer, the subscription waits (the hub's
//! `retry:` hint, 2 s until it sends one; exponential backoff with jitter up to
//! [`max_backoff`](SubscribeBuilder::max_backoff) when attempts keep failing: a
//! stream counts as working once it delivers an event or stays up for a second) and
//! reconnects with `Last-Event-ID` set to the cursor: the hub replays what was
//! missed on every topic, in order, none twice, or says [`Message::Reset`] for the
//! topics whose history is gone. Other 4xx answers are not retried: the stream
//! yields a [`ClientError`] carrying the hub's JSON error and ends; a 401 is
//! retried once when tokens come from [`SubscribeBuilder::bearer_with`] (the hub
//! ends a stream when its token expires). [`SubscribeBuilder::with_topic`] makes
//! each [`Event`] say which topic it was published to.
//!
//! The [`sse`] module is the WHATWG event-stream parser the subscription uses,
//! usable on its own.

mod error;
mod publish;
pub mod sse;
mod subscribe;

use std::time::Duration;

use reqwest::Url;

pub use error::{ApiError, ClientError};
pub use publish::{PublishEvent, Publisher};
pub use subscribe::{Event, Message, SubscribeBuilder, Subscription};

/// Largest error body read from an unsuccessful answer.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// A handle on one hub: cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// A client for the hub at `base_url` (e.g. `http://127.0.0.1:8080`, or
    /// `https://example.com/herald/` when it is served under a path).
    pub fn new(base_url: impl AsRef<str>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Self::with_http_client(base_url, http)
    }

    /// A client using `http` for its requests (own TLS roots, proxies, timeouts).
    /// Do not set an overall request timeout on it: event streams last indefinitely.
    pub fn with_http_client(
        base_url: impl AsRef<str>,
        http: reqwest::Client,
    ) -> Result<Self, ClientError> {
        let raw = base_url.as_ref();
        let mut base =
            Url::parse(raw).map_err(|e| ClientError::InvalidUrl(format!("{raw}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::InvalidUrl(format!(
                "{raw}: not an http or https URL"
            )));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { http, base })
    }

    /// The hub's base URL (always ending with `/`).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Starts a subscription to `topics`; configure it, then call
    /// [`stream`](SubscribeBuilder::stream).
    pub fn subscribe<I, S>(&self, topics: I) -> SubscribeBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SubscribeBuilder::new(self.clone(), topics.into_iter().map(Into::into).collect())
    }

    /// A publisher; give it a key or token with [`Publisher::key`] if the hub
    /// requires one.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.clone())
    }

    /// Publishes one event without credentials; returns its position in `topic`.
    /// Shorthand for `self.publisher().publish(topic, event, data)`.
    pub async fn publish(
        &self,
        topic: &str,
        event: &str,
        data: &impl serde::Serialize,
    ) -> Result<String, ClientError> {
        self.publisher().publish(topic, event, data).await
    }

    /// `path` under the base URL.
    fn endpoint(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::InvalidUrl(format!("{}{path}: {e}", self.base)))
    }
}

/// `Bearer <token>` as a header value (marked sensitive, kept out of debug output).
fn bearer(token: &str) -> Result<reqwest::header::HeaderValue, ClientError> {
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ClientError::InvalidHeader("the bearer token is not a valid header value".into())
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads an unsuccessful answer into the error it stands for.
async fn error_from_response(response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    ClientError::from_status(error::ApiError::from_body(
        status,
        &read_limited(response, ERROR_BODY_LIMIT).await,
    ))
}

/// Up to `limit` bytes of a body; whatever arrived if reading fails midway.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn base_urls_keep_their_path() {
        let c = Client::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            c.endpoint("events").unwrap().as_str(),
            "http://127.0.0.1:8080/events"
        );
        let c = Client::new("https://example.com/herald?x=1#f").unwrap();
        assert_eq!(
            c.endpoint("publish").unwrap().as_str(),
            "https://example.com/herald/publish"
        );
        let c = Client::new("https://example.com/herald/").unwrap();
        assert_eq!(c.base_url().as_str(), "https://example.com/herald/");
        assert!(matches!(
            Client::new("127.0.0.1:8080"),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            Client::new("ftp://example.com"),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            Client::new("mailto:a@example.com"),
            Err(ClientError::InvalidUrl(_))
        ));
    }
}
