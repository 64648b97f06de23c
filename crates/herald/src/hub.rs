//! The hub: one backend, one local fanout, the shared timers, and the publish API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::auth::Authorize;
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{RedisBackend, RedisConfig, RedisSetupError};
use crate::backend::{Backend, BackendError};
use crate::config::{ConfigError, HubConfig};
use crate::event::{Event, EventName, NameError, Position, Topic};
use crate::fanout::{Fanout, FlushTicks};
use crate::metrics::Metrics;
use crate::sse;

/// Why a publish was refused. Nothing of the request was published.
#[derive(Debug, Error)]
pub enum PublishError {
    /// A topic or event name is invalid.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// An event's data is larger than `max_payload_bytes`.
    #[error("event data is {size} bytes as compact JSON, the limit is {max}")]
    PayloadTooLarge {
        /// The data's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The data could not be serialised as JSON.
    #[error("event data is not serialisable as JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The batch is empty.
    #[error("nothing to publish: the batch is empty")]
    EmptyBatch,
    /// The batch holds more events for one topic than a subscriber's queue
    /// ([`HubConfig::queue_size`](crate::HubConfig::queue_size)): pushed at once,
    /// they would overrun every subscriber of the topic.
    #[error(
        "the batch holds {count} events for topic {topic}, at most {max} (the queue size) are allowed per topic"
    )]
    BatchTooLarge {
        /// The topic.
        topic: String,
        /// Its events in the batch.
        count: usize,
        /// The queue size.
        max: usize,
    },
    /// The backend could not take the events.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// [`Hub::broadcast`] was called on a hub without a broadcast topic.
    #[error("this hub has no broadcast topic (set HubConfig::broadcast_topic)")]
    NoBroadcastTopic,
}

/// A hub could not start.
#[derive(Debug, Error)]
pub enum HubError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis is misconfigured or unreachable.
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
}

/// A snapshot of the hub, as `GET /status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The backend's name.
    pub backend: &'static str,
    /// Open event streams.
    pub connections: usize,
    /// Topics with at least one subscriber on this instance.
    pub topics: usize,
    /// Subscriptions on this instance (a stream on three topics counts three).
    pub subscriptions: usize,
    /// Topics holding retained history.
    pub retained_topics: usize,
    /// Events published through this instance since it started.
    pub events_published: u64,
    /// Seconds since the hub started.
    pub uptime_seconds: u64,
    /// The crate version.
    pub version: &'static str,
}

/// A Server-Sent Events hub. Cheap to clone: clones share one hub.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
/// let app = axum::Router::new().merge(hub.router());
/// let pos = hub.publish("comments", "created", &serde_json::json!({"id": 42})).await.unwrap();
/// # let _ = (app, pos);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: HubConfig,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) metrics: Metrics,
    /// One heartbeat ticker for all streams: each stream holds a receiver (no timer
    /// per connection), and the heartbeat frame is shared. The only strong sender
    /// (the ticker holds a weak one): [`Hub::shutdown`] drops it, which closes the
    /// channel and so ends every stream, with no second wait per stream for it.
    heartbeat: Mutex<Option<broadcast::Sender<Bytes>>>,
    /// With a write linger: one flush clock for all streams, ticking every `write_linger`.
    pub(crate) flush: Option<Arc<FlushTicks>>,
    /// Cancelled by [`Hub::shutdown`]: every stream ends with a `retry:` hint.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the last clone of the hub is dropped: stops the timers.
    tasks: CancellationToken,
    /// Open streams, for the connection limit.
    pub(crate) connections: AtomicUsize,
    pub(crate) retry_frame: Bytes,
    started: Instant,
    /// Decides who may subscribe and publish; none: everyone may.
    pub(crate) authorizer: OnceLock<Arc<dyn Authorize>>,
    /// Open streams per client address (`Hub::serve` only).
    pub(crate) per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Inner {
    fn lock_heartbeat(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<Bytes>>> {
        // Only `take` and `subscribe` run under it: nothing to leave half-done.
        self.heartbeat.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream's heartbeat receiver; `None` once the hub is shutting down. The
    /// channel closes at shutdown: a stream ends when its receiver says so.
    pub(crate) fn heartbeats(&self) -> Option<broadcast::Receiver<Bytes>> {
        self.lock_heartbeat()
            .as_ref()
            .map(broadcast::Sender::subscribe)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}

impl Hub {
    /// Starts a hub on the in-memory backend. Must be called inside a tokio runtime
    /// (it starts the heartbeat and history-expiry timers).
    pub fn new(config: HubConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let flush = flush_ticks(&config);
        let fanout = Arc::new(Fanout::with_flush(config.queue_size, flush.clone()));
        let memory = Arc::new(MemoryBackend::new(
            fanout.clone(),
            config.retention_events,
            config.retention_ttl,
        ));
        let tasks = CancellationToken::new();
        spawn_sweeper(memory.clone(), tasks.clone());
        Ok(Self::assemble(
            config,
            fanout,
            flush,
            memory,
            Metrics::new(),
            tasks,
        ))
    }

    /// Starts a hub on Redis: several instances with the same Redis (and channel
    /// prefix) act as one hub. Fails when the settings are invalid or Redis cannot
    /// be reached; once running, Redis outages are survived (see
    /// [`backend::redis`](crate::backend::redis)).
    pub async fn with_redis(config: HubConfig, redis: RedisConfig) -> Result<Self, HubError> {
        config.validate()?;
        let flush = flush_ticks(&config);
        let fanout = Arc::new(Fanout::with_flush(config.queue_size, flush.clone()));
        let metrics = Metrics::new();
        let backend = RedisBackend::connect(
            &redis,
            fanout.clone(),
            config.retention_events,
            config.retention_ttl,
            metrics.redis.clone(),
        )
        .await?;
        Ok(Self::assemble(
            config,
            fanout,
            flush,
            Arc::new(backend),
            metrics,
            CancellationToken::new(),
        ))
    }

    fn assemble(
        config: HubConfig,
        fanout: Arc<Fanout>,
        flush: Option<Arc<FlushTicks>>,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
        tasks: CancellationToken,
    ) -> Self {
        let (heartbeat, _) = broadcast::channel(1);
        spawn_heartbeat(&config, heartbeat.downgrade(), tasks.clone());
        if let Some(f) = &flush {
            spawn_flush_ticker(config.write_linger, f.clone(), tasks.clone());
        }
        let retry_frame = sse::retry(u64::try_from(config.retry.as_millis()).unwrap_or(u64::MAX));
        Self {
            inner: Arc::new(Inner {
                config,
                fanout,
                backend,
                metrics,
                heartbeat: Mutex::new(Some(heartbeat)),
                flush,
                shutdown: CancellationToken::new(),
                tasks,
                connections: AtomicUsize::new(0),
                retry_frame,
                started: Instant::now(),
                authorizer: OnceLock::new(),
                per_ip: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets who may subscribe and publish through the HTTP routes (direct
    /// [`Hub::publish`] calls are trusted code and not checked). Can be set once;
    /// returns false if one was set already.
    pub fn set_authorizer(&self, authorizer: impl Authorize) -> bool {
        self.inner.authorizer.set(Arc::new(authorizer)).is_ok()
    }

    pub(crate) fn set_authorizer_arc(&self, authorizer: Arc<dyn Authorize>) -> bool {
        self.inner.authorizer.set(authorizer).is_ok()
    }

    /// Counts a refused request in the metric for its kind.
    pub(crate) fn count_refusal(&self, e: &crate::http::ApiError) {
        let m = &self.inner.metrics;
        match e.status_and_code().0.as_u16() {
            401 => m.unauthorized.inc(),
            403 => m.forbidden.inc(),
            _ => 0,
        };
    }

    pub(crate) fn authorizer(&self) -> Option<&Arc<dyn Authorize>> {
        self.inner.authorizer.get()
    }

    /// The settings the hub runs with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Publishes one event: `data` is serialised to JSON and sent verbatim as the
    /// `data:` line. Returns the event's position in its topic.
    pub async fn publish(
        &self,
        topic: &str,
        event: &str,
        data: &impl Serialize,
    ) -> Result<Position, PublishError> {
        let event = Event::new(
            Topic::new(topic)?,
            EventName::new(event)?,
            serde_json::to_vec(data)?,
        );
        let mut positions = self.publish_events(vec![event]).await?;
        positions.pop().ok_or(PublishError::EmptyBatch)
    }

    /// Publishes a batch, all or nothing (on a Redis Cluster: per shard, in
    /// order), in order. Returns the positions in batch order.
    ///
    /// With a Redis backend set to fail open
    /// ([`RedisConfig::fail_open`](crate::RedisConfig::fail_open)), a batch Redis
    /// cannot take is dropped and answered with positions `0-0`.
    pub async fn publish_events(&self, events: Vec<Event>) -> Result<Vec<Position>, PublishError> {
        self.publish_counted(&events, true).await
    }

    /// [`Self::publish_events`] that never fails open: the HTTP API's publish, whose
    /// callers must learn that their events were not taken.
    pub(crate) async fn publish_events_strict(
        &self,
        events: &[Event],
    ) -> Result<Vec<Position>, PublishError> {
        self.publish_counted(events, false).await
    }

    async fn publish_counted(
        &self,
        events: &[Event],
        may_fail_open: bool,
    ) -> Result<Vec<Position>, PublishError> {
        let result = match self.publish_checked(events).await {
            Err(PublishError::Backend(e)) if may_fail_open => {
                match self.inner.backend.fail_open(&e, events) {
                    Some(positions) => return Ok(positions),
                    None => Err(PublishError::Backend(e)),
                }
            }
            other => other,
        };
        if result.is_err() {
            self.inner.metrics.publish_rejected.inc();
        }
        result
    }

    async fn publish_checked(&self, events: &[Event]) -> Result<Vec<Position>, PublishError> {
        let inner = &self.inner;
        if events.is_empty() {
            return Err(PublishError::EmptyBatch);
        }
        let queue = inner.config.queue_size;
        if events.len() > queue {
            let mut per_topic = std::collections::HashMap::new();
            for e in events {
                let count = per_topic.entry(&e.topic).or_insert(0usize);
                *count += 1;
                if *count > queue {
                    let count = events.iter().filter(|x| x.topic == e.topic).count();
                    return Err(PublishError::BatchTooLarge {
                        topic: e.topic.as_str().to_owned(),
                        count,
                        max: queue,
                    });
                }
            }
        }
        let max = inner.config.max_payload_bytes;
        if let Some(e) = events.iter().find(|e| e.data.len() > max) {
            return Err(PublishError::PayloadTooLarge {
                size: e.data.len(),
                max,
            });
        }
        let started = Instant::now();
        let positions = inner.backend.publish(events).await?;
        inner.metrics.observe_publish(started.elapsed());
        inner.metrics.events_published.inc_by(events.len() as u64);
        Ok(positions)
    }

    /// Publishes to every open stream, on every instance: to the hub's broadcast
    /// topic ([`HubConfig::broadcast_topic`]), which every stream receives without
    /// asking for it. Broadcasts are retained and resumed like any topic's events.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = herald::Hub::builder().broadcast_topic("announcements").build().await?;
    /// hub.broadcast("maintenance", &serde_json::json!({"in_minutes": 5})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn broadcast(
        &self,
        event: &str,
        data: &impl Serialize,
    ) -> Result<Position, PublishError> {
        let topic = self
            .inner
            .config
            .broadcast_topic
            .as_deref()
            .ok_or(PublishError::NoBroadcastTopic)?;
        self.publish(topic, event, data).await
    }

    /// Publishes to one user's topic, `user:<user_id>` (see [`topics::user`](crate::topics::user)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = herald::Hub::builder().build().await?;
    /// hub.publish_to_user("42", "invoice_paid", &serde_json::json!({"invoice": 7})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_to_user(
        &self,
        user_id: &str,
        event: &str,
        data: &impl Serialize,
    ) -> Result<Position, PublishError> {
        let topic = crate::topics::user(user_id)?;
        self.publish(topic.as_str(), event, data).await
    }

    /// Publishes to one session's topic, `session:<session_id>` (see
    /// [`topics::session`](crate::topics::session)). With `session:` among
    /// [`HubConfig::exclusive_prefixes`], at most one stream holds a session, on
    /// any instance: the newest.
    pub async fn publish_to_session(
        &self,
        session_id: &str,
        event: &str,
        data: &impl Serialize,
    ) -> Result<Position, PublishError> {
        let topic = crate::topics::session(session_id)?;
        self.publish(topic.as_str(), event, data).await
    }

    /// Whether any subscriber, on this instance or (with Redis) any other, listens
    /// to `topic` now: e.g. to skip work nobody would be notified of.
    pub async fn has_subscriber(&self, topic: &str) -> Result<bool, PublishError> {
        let topic = Topic::new(topic)?;
        Ok(self.inner.backend.has_subscriber(&topic).await?)
    }

    /// Ends every open stream with a `retry:` hint (clients reconnect, elsewhere if
    /// a load balancer sends them there). New streams are refused with 503 after this.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        // Closing the heartbeat channel wakes every stream waiting for an event.
        drop(self.inner.lock_heartbeat().take());
    }

    /// A snapshot of connections, topics and counters.
    pub fn status(&self) -> Status {
        let inner = &self.inner;
        Status {
            backend: inner.backend.name(),
            connections: inner.connections.load(Ordering::Relaxed),
            topics: inner.fanout.topic_count(),
            subscriptions: inner.fanout.subscription_count(),
            retained_topics: inner.backend.retained_topics(),
            events_published: inner.metrics.events_published.get(),
            uptime_seconds: inner.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// Whether the backend can take publishes now.
    pub async fn ready(&self) -> bool {
        self.inner.backend.ready().await
    }

    /// The metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }
}

fn spawn_heartbeat(config: &HubConfig, tx: broadcast::WeakSender<Bytes>, stop: CancellationToken) {
    let frame = if config.heartbeat_event {
        sse::encode_event(None, "heartbeat", b"{}")
    } else {
        sse::comment("heartbeat")
    };
    let mut every = tokio::time::interval(config.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        every.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {
                    // Gone at shutdown: no more heartbeats.
                    let Some(tx) = tx.upgrade() else { return };
                    // No receiver (no stream open) is fine.
                    let _ = tx.send(frame.clone());
                }
            }
        }
    });
}

/// The write linger's clock, when the config asks for a linger.
fn flush_ticks(config: &HubConfig) -> Option<Arc<FlushTicks>> {
    (!config.write_linger.is_zero()).then(|| Arc::new(FlushTicks::default()))
}

fn spawn_flush_ticker(every: std::time::Duration, flush: Arc<FlushTicks>, stop: CancellationToken) {
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => flush.tick(),
            }
        }
    });
}

fn spawn_sweeper(memory: Arc<MemoryBackend>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => memory.sweep(),
            }
        }
    });
}
