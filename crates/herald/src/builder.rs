//! [`HubBuilder`]: a hub's backend, timers, limits, retention and authorization,
//! set in one expression.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authorize;
use crate::backend::redis::RedisConfig;
use crate::config::HubConfig;
use crate::hub::{Hub, HubError};

/// Builds a [`Hub`]; start with [`Hub::builder`]. Every setting defaults to
/// [`HubConfig::default`]; the backend defaults to memory.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let hub = herald::Hub::builder()
///     .heartbeat(Duration::from_secs(20))
///     .retention(500, Duration::from_secs(600))
///     .max_topics(8)
///     .broadcast_topic("announcements")
///     .exclusive_prefix("session:")
///     .authorize(herald::auth::from_fn(|_request, topic| topic.as_str() != "admin"))
///     .build()
///     .await?;
/// let app: axum::Router = axum::Router::new().merge(hub.router());
/// # let _ = app;
/// # Ok(()) }
/// ```
///
/// With Redis (several instances with the same Redis act as one hub):
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = herald::Hub::builder()
///     .redis("redis://127.0.0.1:6379/0")
///     .build()
///     .await?;
/// # let _ = hub;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is awaited"]
#[derive(Debug, Default)]
pub struct HubBuilder {
    config: HubConfig,
    redis: Option<RedisConfig>,
    authorizer: Option<Arc<dyn Authorize>>,
}

impl Hub {
    /// A builder for a hub; see [`HubBuilder`].
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }
}

impl HubBuilder {
    /// Replaces every setting at once (the backend and authorizer are kept).
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// How often an idle stream gets a heartbeat (default 15 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.config.heartbeat = every;
        self
    }

    /// The `retry:` hint: how long a client waits before reconnecting (default 2 s).
    pub fn retry(mut self, after: Duration) -> Self {
        self.config.retry = after;
        self
    }

    /// Events kept per topic for resume (0: none) and for how long (default 1000, 1 h).
    pub fn retention(mut self, events: usize, ttl: Duration) -> Self {
        self.config.retention_events = events;
        self.config.retention_ttl = ttl;
        self
    }

    /// Open streams allowed at once (default 10,000).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Topics allowed on one stream (default 32).
    pub fn max_topics(mut self, max: usize) -> Self {
        self.config.max_topics = max;
        self
    }

    /// Largest event `data` as compact JSON, in bytes (default 64 KiB).
    pub fn max_payload_bytes(mut self, max: usize) -> Self {
        self.config.max_payload_bytes = max;
        self
    }

    /// How many events of one topic a subscriber may fall behind (default 256).
    pub fn queue_size(mut self, events: usize) -> Self {
        self.config.queue_size = events;
        self
    }

    /// Writes each stream's events at most once per flush tick (one clock, ticking
    /// every `linger`): an event that comes less than a tick after the stream's
    /// previous write waits for the next tick, with everything else that arrives
    /// meanwhile, and the stream does not wake for each of them. A first event
    /// after a quiet spell goes out at once. Fewer writes on busy topics, for up to
    /// `linger` of latency. Default 0: write at once.
    pub fn write_linger(mut self, linger: Duration) -> Self {
        self.config.write_linger = linger;
        self
    }

    /// Allows browser pages of `origin` (`*`: any) to use the hub across origins.
    pub fn cors_origin(mut self, origin: impl Into<String>) -> Self {
        self.config.cors_origins.push(origin.into());
        self
    }

    /// A topic every stream receives; [`Hub::broadcast`] publishes to it.
    pub fn broadcast_topic(mut self, topic: impl Into<String>) -> Self {
        self.config.broadcast_topic = Some(topic.into());
        self
    }

    /// Makes topics starting with `prefix` exclusive: a new stream on one replaces
    /// the stream that had it, on any instance (it gets `herald.replaced`).
    pub fn exclusive_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.exclusive_prefixes.push(prefix.into());
        self
    }

    /// Runs on Redis at `url` (`redis://…` or `rediss://…`) with the default
    /// channel prefix; see [`HubBuilder::redis_config`] for the rest.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(RedisConfig {
            urls: vec![url.into()],
            ..RedisConfig::default()
        });
        self
    }

    /// Runs on Redis (a node or a Cluster) with these settings.
    pub fn redis_config(mut self, redis: RedisConfig) -> Self {
        self.redis = Some(redis);
        self
    }

    /// Decides who may subscribe and publish through the routes (see [`crate::auth`]).
    pub fn authorize(mut self, authorizer: impl Authorize) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Starts the hub: checks the settings and, with Redis, connects. Must be
    /// awaited inside a tokio runtime.
    pub async fn build(self) -> Result<Hub, HubError> {
        let hub = match self.redis {
            Some(redis) => Hub::with_redis(self.config, redis).await?,
            None => Hub::new(self.config)?,
        };
        if let Some(a) = self.authorizer {
            hub.set_authorizer_arc(a);
        }
        Ok(hub)
    }
}
