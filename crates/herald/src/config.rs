//! The hub's settings, with the defaults `herald serve` documents.

use std::time::Duration;

use thiserror::Error;

/// Settings of a [`Hub`](crate::Hub). `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// How often an idle stream gets a heartbeat, so proxies and clients see it alive.
    pub heartbeat: Duration,
    /// Send heartbeats as `event: heartbeat` with a `data:` line (which browsers can
    /// listen for) instead of SSE comments (which they ignore).
    pub heartbeat_event: bool,
    /// The `retry:` hint: how long a client waits before reconnecting.
    pub retry: Duration,
    /// Open streams allowed at once; beyond it, 503 with `Retry-After`.
    pub max_connections: usize,
    /// How many events of one topic a subscriber may fall behind before its stream
    /// is ended (it resumes from its cursor). Also the most events one batch may
    /// hold for one topic
    /// ([`PublishError::BatchTooLarge`](crate::PublishError::BatchTooLarge)).
    pub queue_size: usize,
    /// Largest `data` of one event, as compact JSON, in bytes; beyond it, 413.
    pub max_payload_bytes: usize,
    /// Topics allowed on one connection.
    pub max_topics: usize,
    /// Events kept per topic for resume; 0 turns history off.
    pub retention_events: usize,
    /// How long events are kept for resume.
    pub retention_ttl: Duration,
    /// Origins allowed to use the hub from a browser page (CORS); `*` for any
    /// origin (then without credentials). Empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Open streams allowed from one client address (0: no limit); enforced by
    /// [`Hub::serve`](crate::Hub::serve).
    pub max_connections_per_ip: usize,
    /// A topic every stream receives on top of the topics it asked for, without
    /// asking or being authorized for it: what [`Hub::broadcast`](crate::Hub::broadcast)
    /// publishes to. `None` (the default): no broadcast topic.
    pub broadcast_topic: Option<String>,
    /// Topics starting with one of these prefixes (e.g. `session:`) are exclusive: a
    /// new stream on such a topic replaces the one that had it, on any instance.
    /// The replaced stream gets `herald.replaced` and ends.
    pub exclusive_prefixes: Vec<String>,
    /// Write each stream's events at most once per flush tick (one clock for all
    /// streams, ticking every `write_linger`, and early when a topic's ring is
    /// half full): an event less than a tick after the stream's previous write
    /// waits for the next tick, with all that arrives meanwhile; a first event
    /// after a quiet spell goes out at once. Zero (the default) writes at once.
    /// Trades up to this much latency for fewer writes per delivery on busy
    /// topics (see BENCHMARKS.md).
    pub write_linger: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            heartbeat_event: false,
            retry: Duration::from_secs(2),
            max_connections: 10_000,
            queue_size: 256,
            max_payload_bytes: 65_536,
            max_topics: 32,
            retention_events: 1000,
            retention_ttl: Duration::from_secs(3600),
            cors_origins: Vec::new(),
            max_connections_per_ip: 0,
            broadcast_topic: None,
            exclusive_prefixes: Vec::new(),
            write_linger: Duration::ZERO,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A value is out of its allowed range.
    #[error("{name} must be {rule}, got {value}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// What it must be.
        rule: &'static str,
        /// What it was.
        value: String,
    },
}

impl HubConfig {
    /// Checks every setting; [`Hub::new`](crate::Hub::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |name, rule, value: String| Err(ConfigError::OutOfRange { name, rule, value });
        if self.heartbeat < Duration::from_millis(10) {
            return err(
                "heartbeat",
                "at least 10ms",
                format!("{:?}", self.heartbeat),
            );
        }
        if self.retry > Duration::from_secs(24 * 3600) {
            return err("retry", "at most 24h", format!("{:?}", self.retry));
        }
        if self.max_connections == 0 {
            return err("max_connections", "at least 1", "0".into());
        }
        if self.queue_size == 0 || self.queue_size > 1 << 20 {
            return err(
                "queue_size",
                "between 1 and 1048576",
                self.queue_size.to_string(),
            );
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 16 << 20 {
            return err(
                "max_payload_bytes",
                "between 1 and 16777216",
                self.max_payload_bytes.to_string(),
            );
        }
        if self.max_topics == 0 || self.max_topics > 1024 {
            return err(
                "max_topics",
                "between 1 and 1024",
                self.max_topics.to_string(),
            );
        }
        if self.retention_ttl.is_zero() && self.retention_events > 0 {
            return err(
                "retention_ttl",
                "more than 0 while retention_events is on",
                "0s".into(),
            );
        }
        if self.cors_origins.iter().any(|o| o == "*") && self.cors_origins.len() > 1 {
            return err(
                "cors_origins",
                "either * alone or a list of origins",
                self.cors_origins.join(","),
            );
        }
        if let Some(o) = self.cors_origins.iter().find(|o| {
            *o != "*" && !(o.starts_with("http://") || o.starts_with("https://"))
                || o.contains(['\r', '\n', ' ', ','])
        }) {
            return err(
                "cors_origins",
                "origins like https://app.example.com",
                o.clone(),
            );
        }
        if self.write_linger > Duration::from_secs(1) {
            return err(
                "write_linger",
                "at most 1s",
                format!("{:?}", self.write_linger),
            );
        }
        if let Some(t) = &self.broadcast_topic
            && crate::Topic::new(t).is_err()
        {
            return err("broadcast_topic", "a valid topic name", format!("{t:?}"));
        }
        if let Some(p) = self
            .exclusive_prefixes
            .iter()
            .find(|p| crate::Topic::new(p).is_err())
        {
            return err(
                "exclusive_prefixes",
                "non-empty prefixes of topic-name characters",
                format!("{p:?}"),
            );
        }
        Ok(())
    }

    /// Whether `topic` is exclusive (one stream at a time, across instances).
    pub fn is_exclusive(&self, topic: &str) -> bool {
        self.exclusive_prefixes
            .iter()
            .any(|p| topic.starts_with(p.as_str()))
    }

    /// Largest publish request body: a batch of up to 16 maximal events, and never
    /// less than 1 MiB.
    pub fn max_body_bytes(&self) -> usize {
        self.max_payload_bytes
            .saturating_mul(16)
            .saturating_add(64 * 1024)
            .max(1 << 20)
    }
}
