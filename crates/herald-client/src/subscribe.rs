//! `GET /events`: a subscription that reconnects and resumes by itself.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Fuse, FusedStream};
use futures_util::{Stream, StreamExt};
use reqwest::Url;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::sse::{Item, Parser, SseEvent};
use crate::{Client, ClientError, bearer, error_from_response};

/// The reconnection delay until the hub sends its `retry:` hint.
const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// The default cap of the backoff between failing attempts.
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The shortest delay between *repeated* failing attempts, even if the hub asks
/// for `retry: 0`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// A stream that delivered no event ends the failure streak only if it stayed up
/// this long: a hub that ends every stream right after its opening lines is
/// retried with backoff, not in a tight loop.
const STABLE_STREAM: Duration = Duration::from_secs(1);
/// Longest delay honoured from `retry:` or `Retry-After`.
const MAX_HINT: Duration = Duration::from_secs(24 * 3600);
/// Default bound on one incomplete frame's size.
const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// One event delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The subscription's cursor after this event (the SSE `id:`): pass it to
    /// [`SubscribeBuilder::last_event_id`] to resume after this event later.
    pub cursor: String,
    /// The event name (`event:`), e.g. `comment_created`; `message` by default.
    pub name: String,
    /// The event's data, as published: one line of compact JSON.
    pub data: String,
    /// The topic the event was published to, on a subscription made with
    /// [`SubscribeBuilder::with_topic`] (`None` otherwise).
    pub topic: Option<String>,
}

impl Event {
    /// The data parsed as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// An event of one of the subscribed topics.
    Event(Event),
    /// The hub's `herald.reset`: events of these topics were lost beyond the
    /// hub's retained history (the cursor was too old); refetch their state.
    /// Empty when the hub did not say which: refetch everything.
    Reset {
        /// The topics to refetch.
        topics: Vec<String>,
    },
    /// The hub's `herald.replaced`: another subscriber took over these exclusive
    /// topics. The subscription ends after this message and does not reconnect.
    Replaced {
        /// The topics taken over.
        topics: Vec<String>,
    },
    /// A stream was opened (first connection or a reconnection).
    Connected,
    /// The stream ended or an attempt to open one failed (network error, EOF,
    /// 5xx, 429); the subscription reconnects after `retry_in`.
    Disconnected {
        /// What happened.
        error: String,
        /// How long the subscription waits before its next attempt.
        retry_in: Duration,
    },
}

/// Where a subscription's bearer token comes from.
#[derive(Clone)]
enum Bearer {
    Fixed(String),
    /// Asked before every connection attempt.
    Source(Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>),
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fixed(_) => "Bearer::Fixed(..)",
            Self::Source(_) => "Bearer::Source(..)",
        })
    }
}

/// Configures a subscription; from [`Client::subscribe`].
#[derive(Debug, Clone)]
pub struct SubscribeBuilder {
    client: Client,
    topics: Vec<String>,
    bearer: Option<Bearer>,
    envelope: bool,
    cursor: Option<String>,
    retry: Duration,
    max_backoff: Duration,
    idle_timeout: Option<Duration>,
    max_frame_bytes: usize,
}

impl SubscribeBuilder {
    pub(crate) fn new(client: Client, topics: Vec<String>) -> Self {
        Self {
            client,
            topics,
            bearer: None,
            envelope: false,
            cursor: None,
            retry: DEFAULT_RETRY,
            max_backoff: DEFAULT_MAX_BACKOFF,
            idle_timeout: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// Sends `Authorization: Bearer <token>` (a subscriber JWT). The hub ends a
    /// stream when its token expires; with a fixed token the reconnection then
    /// fails with [`ClientError`] 401. Use [`Self::bearer_with`] for tokens that
    /// expire.
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(Bearer::Fixed(token.into()));
        self
    }

    /// Asks `token` for the bearer token before every connection attempt, so a
    /// stream ended by its token's expiry resumes with a fresh one. A 401 is
    /// retried once with a new token, then ends the subscription.
    ///
    /// ```no_run
    /// # async fn f(client: herald_client::Client) {
    /// let sub = client
    ///     .subscribe(["user:42"])
    ///     .bearer_with(|| async { fetch_token().await })
    ///     .stream();
    /// # }
    /// # async fn fetch_token() -> String { String::new() }
    /// ```
    pub fn bearer_with<F, Fut>(mut self, token: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = String> + Send + 'static,
    {
        self.bearer = Some(Bearer::Source(Arc::new(move || Box::pin(token()))));
        self
    }

    /// Asks the hub to say which topic each event came from (`envelope=1`):
    /// [`Event::topic`] is set, and [`Event::data`] is still the published data.
    pub fn with_topic(mut self) -> Self {
        self.envelope = true;
        self
    }

    /// Resumes after `cursor` (an [`Event::cursor`] or [`Subscription::cursor`]
    /// saved earlier, for the same topics): the hub replays what was published
    /// since. An empty cursor means none.
    pub fn last_event_id(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into()).filter(|c| !c.is_empty());
        self
    }

    /// The reconnection delay until the hub sends its `retry:` hint (default 2 s).
    pub fn retry(mut self, delay: Duration) -> Self {
        self.retry = delay.min(MAX_HINT);
        self
    }

    /// The longest wait between attempts when they keep failing (default 30 s;
    /// never less than the hub's `retry:` hint).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Reconnects when a stream delivers no bytes for this long (default: never).
    /// The hub sends a heartbeat every 15 s by default, so about three heartbeat
    /// intervals detects a dead connection that TCP would not report.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Drops the connection (and reconnects) when one incomplete frame grows past
    /// this many bytes (default 16 MiB).
    pub fn max_frame_bytes(mut self, max: usize) -> Self {
        self.max_frame_bytes = max;
        self
    }

    /// The subscription. It connects when first polled.
    pub fn stream(self) -> Subscription {
        let cursor = Arc::new(Mutex::new(self.cursor.clone()));
        let topics = self.topics.clone();
        let inner = Inner::new(self, cursor.clone());
        let stream = futures_util::stream::unfold(inner, |mut inner| async move {
            let item = inner.next().await?;
            Some((item, inner))
        })
        .boxed()
        .fuse();
        Subscription {
            stream,
            cursor,
            topics,
        }
    }
}

/// A running subscription: a [`Stream`] of [`Message`]s that reconnects and
/// resumes by itself. It yields an `Err` only for a refusal that retrying cannot
/// fix, and then ends; it also ends after [`Message::Replaced`].
pub struct Subscription {
    stream: Fuse<BoxStream<'static, Result<Message, ClientError>>>,
    cursor: Arc<Mutex<Option<String>>>,
    topics: Vec<String>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topics)
            .field("cursor", &self.cursor())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The cursor as of the last message yielded: what a reconnection sends as
    /// `Last-Event-ID`, and what to save to resume later. `None` before the first
    /// stream opened (unless a cursor was given).
    pub fn cursor(&self) -> Option<String> {
        self.cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The topics subscribed to, as given.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }
}

impl Stream for Subscription {
    type Item = Result<Message, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

impl FusedStream for Subscription {
    fn is_terminated(&self) -> bool {
        self.stream.is_terminated()
    }
}

/// A message waiting to be yielded, and the cursor it moves to (`Some("")`:
/// no cursor).
struct Queued {
    cursor: Option<String>,
    message: Option<Message>,
}

/// Why an attempt to open a stream failed.
enum Attempt {
    /// Not worth retrying: yield it and end.
    Fatal(ClientError),
    /// Retry after the backoff, and at least `at_least`.
    Retry { error: String, at_least: Duration },
}

struct Inner {
    client: Client,
    url: Url,
    bearer: Option<Bearer>,
    /// Events come as `{"topic", "data"}` (`envelope=1`).
    envelope: bool,
    /// The last attempt was refused with 401 (retried once with a fresh token).
    unauthorized: bool,
    /// Shared with the [`Subscription`]: updated as messages are yielded.
    cursor: Arc<Mutex<Option<String>>>,
    retry: Duration,
    max_backoff: Duration,
    idle_timeout: Option<Duration>,
    max_frame_bytes: usize,
    parser: Parser,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    queue: VecDeque<Queued>,
    /// Failed attempts and lost streams since a stream last delivered an event or
    /// stayed up for [`STABLE_STREAM`].
    failures: u32,
    /// When the current stream's response arrived.
    opened: Option<std::time::Instant>,
    /// The wait before the next attempt.
    wait: Option<Duration>,
    /// No more reconnecting: yield what is queued, then end.
    done: bool,
    /// A setup error to yield first (then end).
    fatal: Option<ClientError>,
}

#[derive(Deserialize)]
struct Topics {
    topics: Vec<String>,
}

/// An event's data on a stream opened with `envelope=1`.
#[derive(Deserialize)]
struct Envelope<'a> {
    topic: String,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

impl Inner {
    fn new(b: SubscribeBuilder, cursor: Arc<Mutex<Option<String>>>) -> Self {
        let (url, fatal) = match b.client.endpoint("events") {
            Ok(mut url) => {
                // No topic at all: let the hub say so (`no_topic`).
                if !b.topics.is_empty() {
                    url.query_pairs_mut()
                        .append_pair("topic", &b.topics.join(","));
                }
                if b.envelope {
                    url.query_pairs_mut().append_pair("envelope", "1");
                }
                (url, None)
            }
            Err(e) => (b.client.base.clone(), Some(e)),
        };
        let parser = match &b.cursor {
            Some(c) => Parser::with_last_event_id(c.clone()),
            None => Parser::new(),
        };
        Self {
            client: b.client,
            url,
            bearer: b.bearer,
            envelope: b.envelope,
            unauthorized: false,
            cursor,
            retry: b.retry,
            max_backoff: b.max_backoff,
            idle_timeout: b.idle_timeout,
            max_frame_bytes: b.max_frame_bytes,
            parser,
            body: None,
            queue: VecDeque::new(),
            failures: 0,
            opened: None,
            wait: None,
            done: false,
            fatal,
        }
    }

    fn current_cursor(&self) -> Option<String> {
        self.cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn next(&mut self) -> Option<Result<Message, ClientError>> {
        if let Some(e) = self.fatal.take() {
            self.done = true;
            return Some(Err(e));
        }
        loop {
            if let Some(q) = self.queue.pop_front() {
                if let Some(c) = q.cursor {
                    *self.cursor.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(c).filter(|c| !c.is_empty());
                }
                match q.message {
                    Some(m) => return Some(Ok(m)),
                    None => continue,
                }
            }
            if self.done {
                self.body = None;
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                if let Some(wait) = self.wait.take() {
                    tokio::time::sleep(wait).await;
                }
                match self.connect().await {
                    Ok(body) => {
                        tracing::debug!(url = %self.url, "event stream open");
                        self.body = Some(body);
                        self.opened = Some(std::time::Instant::now());
                        self.parser.restart();
                        self.push(None, Message::Connected);
                    }
                    Err(Attempt::Fatal(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    Err(Attempt::Retry { error, at_least }) => self.schedule(error, at_least),
                }
                continue;
            };
            let next = match self.idle_timeout {
                None => body.next().await,
                Some(t) => match tokio::time::timeout(t, body.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.lost(format!("no data from the hub for {t:?}"));
                        continue;
                    }
                },
            };
            match next {
                Some(Ok(bytes)) => self.on_bytes(&bytes),
                Some(Err(e)) => self.lost(format!("reading the event stream: {e}")),
                None => self.lost("the hub ended the event stream".to_owned()),
            }
        }
    }

    fn push(&mut self, cursor: Option<String>, message: Message) {
        self.queue.push_back(Queued {
            cursor,
            message: Some(message),
        });
    }

    /// The current stream is gone: reconnect after the backoff.
    fn lost(&mut self, error: String) {
        self.body = None;
        // A stream that stayed up a while worked: the next attempt waits only the
        // hub's `retry:`.
        if self
            .opened
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_STREAM)
        {
            self.failures = 0;
        }
        self.schedule(error, Duration::ZERO);
    }

    fn schedule(&mut self, error: String, at_least: Duration) {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff(self.retry, self.max_backoff, self.failures, jitter()).max(at_least);
        tracing::debug!(%error, ?delay, failures = self.failures, "event stream lost; reconnecting");
        self.wait = Some(delay);
        self.push(
            None,
            Message::Disconnected {
                error,
                retry_in: delay,
            },
        );
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        for item in self.parser.feed(bytes) {
            match item {
                Item::Retry(ms) => {
                    self.retry = Duration::from_millis(ms).min(MAX_HINT);
                }
                Item::Id(id) => self.queue.push_back(Queued {
                    cursor: Some(id),
                    message: None,
                }),
                Item::Event(event) => {
                    // The stream works: the next loss waits only the hub's `retry:`.
                    self.failures = 0;
                    if self.on_event(event) {
                        // Replaced: nothing after it counts.
                        self.done = true;
                        self.body = None;
                        return;
                    }
                }
            }
        }
        if self.parser.buffered_bytes() > self.max_frame_bytes {
            self.lost(format!(
                "an event frame is larger than {} bytes",
                self.max_frame_bytes
            ));
        }
    }

    /// Queues what `event` means; returns true if the subscription is over.
    fn on_event(&mut self, event: SseEvent) -> bool {
        let SseEvent {
            id,
            own_id,
            event: name,
            data,
        } = event;
        let topics = || {
            serde_json::from_str::<Topics>(&data)
                .map(|t| t.topics)
                .unwrap_or_default()
        };
        match name.as_str() {
            "herald.reset" => {
                let topics = topics();
                self.push(Some(id), Message::Reset { topics });
            }
            "herald.replaced" => {
                let topics = topics();
                self.push(Some(id), Message::Replaced { topics });
                return true;
            }
            // `--heartbeat-event` heartbeats: never carry an id (published events do).
            "heartbeat" if !own_id => {}
            _ => {
                let (topic, data) = if self.envelope {
                    match serde_json::from_str::<Envelope>(&data) {
                        Ok(e) => (Some(e.topic), e.data.get().to_owned()),
                        Err(_) => (None, data),
                    }
                } else {
                    (None, data)
                };
                self.push(
                    Some(id.clone()),
                    Message::Event(Event {
                        cursor: id,
                        name,
                        data,
                        topic,
                    }),
                );
            }
        }
        false
    }

    async fn connect(&mut self) -> Result<BoxStream<'static, reqwest::Result<Bytes>>, Attempt> {
        let mut url = self.url.clone();
        let mut last_event_id = None;
        if let Some(cursor) = self.current_cursor() {
            // Hub cursors are printable ASCII; anything else (from another server)
            // goes in the query, which the hub also reads, percent-encoded.
            match HeaderValue::from_str(&cursor) {
                Ok(v) if cursor.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                    last_event_id = Some(v);
                }
                _ => {
                    url.query_pairs_mut().append_pair("last_event_id", &cursor);
                }
            }
        }
        let mut request = self
            .client
            .http
            .get(url)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(v) = last_event_id {
            request = request.header("last-event-id", v);
        }
        match &self.bearer {
            Some(Bearer::Fixed(token)) => {
                request = request.header(AUTHORIZATION, bearer(token).map_err(Attempt::Fatal)?);
            }
            Some(Bearer::Source(source)) => {
                let token = source().await;
                request = request.header(AUTHORIZATION, bearer(&token).map_err(Attempt::Fatal)?);
            }
            None => {}
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => return Err(Attempt::Fatal(e.into())),
            Err(e) => {
                return Err(Attempt::Retry {
                    error: format!("connecting: {e}"),
                    at_least: Duration::ZERO,
                });
            }
        };
        let status = response.status();
        // A token that expired: with a token source, try once more with a new one.
        let refused = status.as_u16() == 401;
        let retry_unauthorized =
            refused && !self.unauthorized && matches!(self.bearer, Some(Bearer::Source(_)));
        self.unauthorized = refused;
        if retry_unauthorized {
            let error = error_from_response(response).await;
            return Err(Attempt::Retry {
                error: error.to_string(),
                at_least: Duration::ZERO,
            });
        }
        if status.as_u16() == 200 {
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let mime = content_type.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("text/event-stream") {
                return Err(Attempt::Fatal(ClientError::NotEventStream(format!(
                    "Content-Type is {content_type:?}"
                ))));
            }
            return Ok(response.bytes_stream().boxed());
        }
        if status.is_success() {
            return Err(Attempt::Fatal(ClientError::NotEventStream(format!(
                "HTTP {status}"
            ))));
        }
        if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
            let at_least = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(Duration::ZERO, |s| Duration::from_secs(s).min(MAX_HINT));
            let error = error_from_response(response).await;
            return Err(Attempt::Retry {
                error: error.to_string(),
                at_least,
            });
        }
        Err(Attempt::Fatal(error_from_response(response).await))
    }
}

/// The wait before the next attempt after `failures` failures in a row: the hub's
/// `retry` hint after one, then exponential backoff capped at `max_backoff` (but
/// not below `retry`) with "equal jitter": half the delay fixed, half random.
fn backoff(retry: Duration, max_backoff: Duration, failures: u32, jitter: u64) -> Duration {
    if failures <= 1 {
        return retry;
    }
    let base = retry.max(MIN_BACKOFF);
    let cap = max_backoff.max(base);
    let exp = failures.saturating_sub(1).min(30);
    let full = base.saturating_mul(1 << exp).min(cap);
    let half = full / 2;
    // jitter % 1024 / 1024 of the other half.
    let extra = half.mul_f64((jitter % 1024) as f64 / 1024.0);
    (half + extra).max(base)
}

/// A pseudo-random number from the clock and a counter (splitmix64): enough to
/// spread reconnecting clients apart.
fn jitter() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos
        ^ COUNTER
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn first_loss_waits_the_hint_exactly() {
        assert_eq!(backoff(2 * S, 30 * S, 1, 12345), 2 * S);
        assert_eq!(backoff(Duration::ZERO, 30 * S, 1, 7), Duration::ZERO);
    }

    #[test]
    fn repeated_failures_back_off_with_jitter_within_bounds() {
        for jitter in [0, 1, 511, 1023, u64::MAX] {
            let mut last_cap = Duration::ZERO;
            for failures in 2..40 {
                let d = backoff(2 * S, 30 * S, failures, jitter);
                let full = (2 * S * (1 << (failures - 1).min(30))).min(30 * S);
                assert!(d >= 2 * S, "never below the hint");
                assert!(
                    d >= full / 2 && d <= full,
                    "{d:?} within [{full:?}/2, {full:?}]"
                );
                assert!(full >= last_cap);
                last_cap = full;
            }
            assert_eq!(last_cap, 30 * S);
        }
        // Different jitter values spread the delays.
        assert_ne!(
            backoff(2 * S, 30 * S, 5, 0),
            backoff(2 * S, 30 * S, 5, 1000)
        );
    }

    #[test]
    fn a_zero_hint_still_backs_off_and_the_hint_beats_the_cap() {
        assert!(backoff(Duration::ZERO, 30 * S, 2, 0) >= MIN_BACKOFF);
        assert!(backoff(Duration::ZERO, 30 * S, 9, 0) > MIN_BACKOFF);
        assert_eq!(backoff(60 * S, 30 * S, 5, 0), 60 * S);
    }

    #[test]
    fn jitter_varies() {
        let a: Vec<u64> = (0..8).map(|_| jitter() % 1024).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }
}
