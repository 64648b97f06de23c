//! `POST /publish`: one event, or a batch published all or nothing.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Client, ClientError, bearer, error_from_response};

/// Publishes events to a hub. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), herald_client::ClientError> {
/// use herald_client::{Client, PublishEvent};
///
/// let publisher = Client::new("http://127.0.0.1:8080")?.publisher().key("backend-key-0123456789");
/// let position = publisher.publish("user:42", "unread", &serde_json::json!({"unread": 3})).await?;
/// let positions = publisher
///     .publish_batch(&[
///         PublishEvent::new("a", None, &1)?,
///         PublishEvent::new("b", Some("x"), &serde_json::json!({"k": true}))?,
///     ])
///     .await?;
/// assert_eq!(positions.len(), 2);
/// # let _ = position;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    key: Option<String>,
    timeout: Duration,
}

/// One event of a batch for [`Publisher::publish_batch`].
#[derive(Debug, Clone, Serialize)]
pub struct PublishEvent {
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    data: Box<RawValue>,
}

impl PublishEvent {
    /// An event of type `event` (the hub's default, `message`, when `None`)
    /// carrying `data` serialised to JSON.
    pub fn new(
        topic: impl Into<String>,
        event: Option<&str>,
        data: &impl Serialize,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            topic: topic.into(),
            event: event.map(str::to_owned),
            data: serde_json::value::to_raw_value(data)?,
        })
    }

    /// The event's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[derive(Deserialize)]
struct Published {
    position: String,
}

impl Publisher {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            key: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends `Authorization: Bearer <key>` (a `--publish-key`, or a token with
    /// publish rights).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// How long one publish request may take in all (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Publishes `data` (serialised to JSON, delivered verbatim as the event's
    /// `data:`) as event `event` on `topic`; returns its position in the topic
    /// (`<milliseconds>-<sequence>`).
    pub async fn publish(
        &self,
        topic: &str,
        event: &str,
        data: &impl Serialize,
    ) -> Result<String, ClientError> {
        let body = serde_json::to_vec(&PublishEvent::new(topic, Some(event), data)?)?;
        let answer: Published = self.post(body).await?;
        Ok(answer.position)
    }

    /// Publishes `events` all or nothing, in order; returns their positions in
    /// the same order. The hub takes at most 1000 events per batch.
    pub async fn publish_batch(&self, events: &[PublishEvent]) -> Result<Vec<String>, ClientError> {
        let body = serde_json::to_vec(events)?;
        let answers: Vec<Published> = self.post(body).await?;
        Ok(answers.into_iter().map(|p| p.position).collect())
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, body: Vec<u8>) -> Result<T, ClientError> {
        let mut request = self
            .client
            .http
            .post(self.client.endpoint("publish")?)
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(body);
        if let Some(key) = &self.key {
            request = request.header(AUTHORIZATION, bearer(key)?);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(error_from_response(response).await);
        }
        let bytes = response.bytes().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
