//! Prometheus metrics of one hub, in its own registry (no global state, so several
//! hubs in one process keep separate counts). Names are prefixed `herald_`.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::backend::redis::RedisMetrics;

/// The hub's counters. Cloning a metric shares it (they are `Arc`s inside).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections: Gauge,
    pub(crate) connections_total: Counter,
    pub(crate) connections_rejected: Counter,
    pub(crate) events_published: Counter,
    pub(crate) events_delivered: Counter,
    pub(crate) events_replayed: Counter,
    pub(crate) resets: Counter,
    pub(crate) replaced: Counter,
    pub(crate) slow_disconnected: Counter,
    pub(crate) write_stalls: Counter,
    pub(crate) writes_handed_back: Counter,
    pub(crate) publish_rejected: Counter,
    pub(crate) subscribe_rejected: Counter,
    pub(crate) unauthorized: Counter,
    pub(crate) forbidden: Counter,
    pub(crate) ip_limited: Counter,
    pub(crate) cors_rejected: Counter,
    pub(crate) publish_seconds: Histogram,
    pub(crate) redis: RedisMetrics,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Self {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_rejected: Counter::default(),
            events_published: Counter::default(),
            events_delivered: Counter::default(),
            events_replayed: Counter::default(),
            resets: Counter::default(),
            replaced: Counter::default(),
            slow_disconnected: Counter::default(),
            write_stalls: Counter::default(),
            writes_handed_back: Counter::default(),
            publish_rejected: Counter::default(),
            subscribe_rejected: Counter::default(),
            unauthorized: Counter::default(),
            forbidden: Counter::default(),
            ip_limited: Counter::default(),
            cors_rejected: Counter::default(),
            // 10 µs .. ~2.6 s
            publish_seconds: Histogram::new(exponential_buckets(0.00001, 4.0, 10)),
            redis: RedisMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "redis_reconnects",
            "Times the Redis subscriber connection was re-established",
            m.redis.reconnects.clone(),
        );
        registry.register(
            "redis_caught_up_events",
            "Events replayed from Redis streams after a subscriber reconnect",
            m.redis.caught_up.clone(),
        );
        registry.register(
            "publish_failed_open",
            "Publishes dropped because Redis was unreachable and fail-open is on (library only)",
            m.redis.publish_failed_open.clone(),
        );
        registry.register(
            "connections_open",
            "Open event streams",
            m.connections.clone(),
        );
        registry.register(
            "connections",
            "Event streams opened",
            m.connections_total.clone(),
        );
        registry.register(
            "connections_rejected",
            "Event streams refused at the connection limit",
            m.connections_rejected.clone(),
        );
        registry.register(
            "events_published",
            "Events accepted by publish",
            m.events_published.clone(),
        );
        registry.register(
            "events_delivered",
            "Events written to subscribers (one per subscriber per event)",
            m.events_delivered.clone(),
        );
        registry.register(
            "events_replayed",
            "Events sent from history on resume",
            m.events_replayed.clone(),
        );
        registry.register(
            "resets",
            "herald.reset events sent because a cursor was older than the retained history",
            m.resets.clone(),
        );
        registry.register(
            "streams_replaced",
            "Streams ended with herald.replaced because a newer stream took their exclusive topic",
            m.replaced.clone(),
        );
        registry.register(
            "slow_subscribers_disconnected",
            "Streams ended because their subscriber fell a full queue behind",
            m.slow_disconnected.clone(),
        );
        registry.register(
            "write_stalls",
            "Connections closed because the client stopped reading for write_timeout",
            m.write_stalls.clone(),
        );
        registry.register(
            "writes_handed_back",
            "Writes a publisher could not finish on an idle stream's full socket; the stream's own task finished them",
            m.writes_handed_back.clone(),
        );
        registry.register(
            "publish_rejected",
            "Publish requests refused (bad input, too large, backend unavailable)",
            m.publish_rejected.clone(),
        );
        registry.register(
            "subscribe_rejected",
            "Subscribe requests refused for bad input",
            m.subscribe_rejected.clone(),
        );
        registry.register(
            "unauthorized",
            "Requests refused with 401 (missing or invalid credentials)",
            m.unauthorized.clone(),
        );
        registry.register(
            "forbidden",
            "Requests refused with 403 (topics not allowed)",
            m.forbidden.clone(),
        );
        registry.register(
            "connections_per_ip_rejected",
            "Event streams refused at the per-client-address limit",
            m.ip_limited.clone(),
        );
        registry.register(
            "cors_rejected",
            "CORS preflights refused for their origin",
            m.cors_rejected.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time to publish one request or call, validation excluded",
            m.publish_seconds.clone(),
        );
        Self { registry, ..m }
    }

    pub(crate) fn observe_publish(&self, took: Duration) {
        self.publish_seconds.observe(took.as_secs_f64());
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
