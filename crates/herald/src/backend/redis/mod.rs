//! The Redis backend: many Herald instances as one hub.
//!
//! - **Publish** is one round trip: a Lua script ([`publish.lua`](./publish.lua))
//!   XADDs each event to its topic's stream (`MAXLEN retention_events`, TTL
//!   `retention_ttl`) and PUBLISHes `<id>\n<event>\n<data>` on the topic's channel,
//!   atomically, so live order is stream order and the position is the stream ID.
//!   On one node a whole batch is one script call (all or nothing); on a Cluster each
//!   event is one call on its topic's shard, in batch order.
//! - **Live**: one subscriber connection per instance carries every topic with local
//!   subscribers (SUBSCRIBE on the first, UNSUBSCRIBE after the last), see
//!   `subscriber`. On a Cluster it uses sharded pub/sub (SSUBSCRIBE/SPUBLISH); the
//!   stream key and the channel share a hash slot (`<prefix>:{<topic>}:s` and
//!   `<prefix>:{<topic>}:c`), so both live on the topic's shard.
//! - **Resume** reads the topic's stream after the cursor ([`resume.lua`](./resume.lua)).
//! - **Failures**: publishes fail with [`BackendError::Unavailable`] (the HTTP API
//!   answers 503), streams stay open, the subscriber reconnects with backoff,
//!   re-subscribes, and catches every topic up from the last position it delivered.
//!
//! Why the `redis` crate (redis-rs): it is actively maintained, speaks RESP3 (pub/sub
//! and commands on one connection), routes Cluster commands and sharded channels by
//! slot, and never drops pushes (its push channel is unbounded). Its own
//! resubscription is not used: the Cluster variant re-sends one SSUBSCRIBE per node
//! with channels of several slots, which Redis refuses (CROSSSLOT), and `fred`'s
//! subscriber drops messages past 32 by default (`../shared/notes/dependencies.md`).
//! Herald owns its subscriber connection instead: it re-subscribes each channel
//! itself after every reconnect and replays the gap from the streams.

mod subscriber;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, ProtocolVersion, Script, Value};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, BoxFuture, History};
use crate::event::{Event, EventName, Position, Topic};
use crate::fanout::Fanout;
use crate::sse::Frame;

/// How a hub reaches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://…`; for a Cluster, the
    /// seed nodes.
    pub urls: Vec<String>,
    /// Talk to a Redis Cluster (sharded pub/sub) instead of one node.
    pub cluster: bool,
    /// Prefix of every key and channel, so environments sharing a Redis stay apart.
    pub channel_prefix: String,
    /// Library only: when a publish cannot reach Redis, log and count the error and
    /// return position `0-0` instead of failing. The HTTP API never fails open.
    pub fail_open: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379/0".into()],
            cluster: false,
            channel_prefix: "herald".into(),
            fail_open: false,
        }
    }
}

/// Redis could not be set up.
#[derive(Debug, Error)]
pub enum RedisSetupError {
    /// A URL cannot be read.
    #[error("invalid Redis URL {url:?}: {source}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// No URL, or several without `cluster`.
    #[error("{0}")]
    Config(String),
    /// Redis did not answer.
    #[error("cannot reach Redis: {0}")]
    Unreachable(redis::RedisError),
    /// The channel prefix is unusable.
    #[error("invalid channel prefix {0:?}: use 1..=64 bytes of A-Z a-z 0-9 _ - . :")]
    BadPrefix(String),
}

/// Counters the backend reports in `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct RedisMetrics {
    pub(crate) reconnects: Counter,
    pub(crate) caught_up: Counter,
    pub(crate) publish_failed_open: Counter,
}

/// The connection used for commands (publish, resume, ping).
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Commands::Single",
            Self::Cluster(_) => "Commands::Cluster",
        })
    }
}

impl Commands {
    async fn invoke(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> redis::RedisResult<Value> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        match self.clone() {
            Self::Single(mut c) => inv.invoke_async(&mut c).await,
            Self::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
    }

    async fn ping(&self) -> redis::RedisResult<()> {
        let cmd = redis::cmd("PING");
        match self.clone() {
            Self::Single(mut c) => cmd.query_async::<()>(&mut c).await,
            Self::Cluster(mut c) => cmd.query_async::<()>(&mut c).await,
        }
    }
}

/// Key and channel names of one deployment.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn stream(&self, topic: &Topic) -> String {
        format!("{}:{{{}}}:s", self.prefix, topic)
    }

    pub(crate) fn channel(&self, topic: &Topic) -> String {
        format!("{}:{{{}}}:c", self.prefix, topic)
    }

    /// The newest trimmed position of the topic's stream (see `publish.lua`).
    pub(crate) fn horizon(&self, topic: &Topic) -> String {
        format!("{}:{{{}}}:h", self.prefix, topic)
    }
}

/// What the backend and its subscriber task share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) commands: Commands,
    pub(crate) keys: Keys,
    pub(crate) cluster: bool,
    pub(crate) urls: Vec<redis::ConnectionInfo>,
    /// Whether the subscriber connection is up and subscribed.
    pub(crate) subscribed: AtomicBool,
    pub(crate) metrics: RedisMetrics,
    resume_script: Script,
    /// `retention_ttl` in milliseconds: a resume of a missing stream leaves a gap
    /// mark that lives this long (`resume.lua`).
    ttl_ms: String,
}

/// The Redis backend. See the module docs.
#[derive(Debug)]
pub struct RedisBackend {
    shared: Arc<Shared>,
    subscriber: mpsc::UnboundedSender<subscriber::Command>,
    publish_script: Script,
    retention_events: usize,
    retention_ttl: Duration,
    fail_open: bool,
    stop: CancellationToken,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Timeouts for talking to Redis: a dead Redis turns into a 503 quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

fn connection_info(url: &str) -> Result<redis::ConnectionInfo, RedisSetupError> {
    let info = url
        .into_connection_info()
        .map_err(|source| RedisSetupError::BadUrl {
            url: url.to_owned(),
            source,
        })?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok(info.set_redis_settings(settings))
}

impl RedisBackend {
    pub(crate) async fn connect(
        config: &RedisConfig,
        fanout: Arc<Fanout>,
        retention_events: usize,
        retention_ttl: Duration,
        metrics: RedisMetrics,
    ) -> Result<Self, RedisSetupError> {
        let prefix_ok = !config.channel_prefix.is_empty()
            && config.channel_prefix.len() <= 64
            && config
                .channel_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !prefix_ok {
            return Err(RedisSetupError::BadPrefix(config.channel_prefix.clone()));
        }
        if config.urls.is_empty() {
            return Err(RedisSetupError::Config("no Redis URL given".into()));
        }
        if !config.cluster && config.urls.len() > 1 {
            return Err(RedisSetupError::Config(
                "several Redis URLs are only accepted as Cluster seed nodes (--redis-cluster)"
                    .into(),
            ));
        }
        let urls = config
            .urls
            .iter()
            .map(|u| connection_info(u))
            .collect::<Result<Vec<_>, _>>()?;
        let commands = if config.cluster {
            let client = ClusterClient::builder(urls.clone())
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()
                .map_err(RedisSetupError::Unreachable)?;
            Commands::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(RedisSetupError::Unreachable)?,
            )
        } else {
            let client =
                redis::Client::open(urls[0].clone()).map_err(RedisSetupError::Unreachable)?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Commands::Single(
                ConnectionManager::new_with_config(client, cfg)
                    .await
                    .map_err(RedisSetupError::Unreachable)?,
            )
        };
        let shared = Arc::new(Shared {
            fanout,
            commands,
            keys: Keys {
                prefix: config.channel_prefix.clone(),
            },
            cluster: config.cluster,
            urls,
            subscribed: AtomicBool::new(false),
            metrics,
            resume_script: Script::new(include_str!("resume.lua")),
            ttl_ms: retention_ttl.as_millis().max(1).to_string(),
        });
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(subscriber::run(shared.clone(), rx, stop.clone()));
        Ok(Self {
            shared,
            subscriber: tx,
            publish_script: Script::new(include_str!("publish.lua")),
            retention_events,
            retention_ttl,
            fail_open: config.fail_open,
            stop,
        })
    }

    fn script_args<'a>(&self, fixed: &'a [String; 3], events: &'a [Event]) -> Vec<&'a [u8]> {
        let mut args: Vec<&[u8]> = fixed.iter().map(|s| s.as_bytes()).collect();
        for e in events {
            args.push(e.name.as_str().as_bytes());
            args.push(&e.data);
        }
        args
    }

    /// Runs `publish.lua` for `events` (all in one slot on a Cluster); returns the IDs.
    async fn run_script(
        &self,
        fixed: &[String; 3],
        events: &[Event],
    ) -> Result<Vec<String>, BackendError> {
        let keys = &self.shared.keys;
        let k: Vec<String> = events
            .iter()
            .flat_map(|e| {
                [
                    keys.stream(&e.topic),
                    keys.channel(&e.topic),
                    keys.horizon(&e.topic),
                ]
            })
            .collect();
        let args = self.script_args(fixed, events);
        let v = self
            .shared
            .commands
            .invoke(&self.publish_script, &k, &args)
            .await
            .map_err(unavailable)?;
        redis::from_redis_value(v).map_err(unavailable)
    }

    async fn publish_strict(&self, events: &[Event]) -> Result<Vec<Position>, BackendError> {
        let fixed = [
            self.retention_events.to_string(),
            self.retention_ttl.as_millis().max(1).to_string(),
            if self.shared.cluster {
                "SPUBLISH"
            } else {
                "PUBLISH"
            }
            .to_owned(),
        ];
        let mut ids: Vec<String> = Vec::with_capacity(events.len());
        if self.shared.cluster {
            // One call per event, on its topic's shard, in batch order.
            for e in events {
                ids.extend(self.run_script(&fixed, std::slice::from_ref(e)).await?);
            }
        } else {
            // One atomic call for the whole batch.
            ids = self.run_script(&fixed, events).await?;
        }
        ids.iter()
            .map(|id| {
                id.parse::<Position>()
                    .map_err(|e| BackendError::Unavailable(format!("unexpected stream ID: {e}")))
            })
            .collect()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Reads a topic's stream for a resume; shared with the subscriber's catch-up.
pub(crate) async fn read_stream(
    shared: &Shared,
    topic: &Topic,
    after: Option<Position>,
) -> Result<History, BackendError> {
    // The first position after the cursor (XRANGE's exclusive form fails past the
    // largest ID; nothing comes after that one).
    let from = match after {
        Some(p) if p.seq < u64::MAX => Position::new(p.ms, p.seq + 1).to_string(),
        Some(p) if p.ms < u64::MAX => Position::new(p.ms + 1, 0).to_string(),
        _ => String::new(),
    };
    let v = shared
        .commands
        .invoke(
            &shared.resume_script,
            &[shared.keys.stream(topic), shared.keys.horizon(topic)],
            &[from.as_bytes(), shared.ttl_ms.as_bytes()],
        )
        .await
        .map_err(unavailable)?;
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let (last, trimmed, entries): (String, String, Vec<Entry>) =
        redis::from_redis_value(v).map_err(unavailable)?;
    let bad = |e| BackendError::Unavailable(format!("unexpected stream content: {e}"));
    if last.is_empty() {
        // No stream: never published, or gone (expired, flushed, evicted). Its gap
        // mark, a position just before the resume, is where a stream opened now
        // starts; the stream created by the next publish keeps it as its horizon,
        // so that cursor resumes exactly. Any other cursor may have missed events
        // of a stream that is gone: reset.
        let gap: Position = trimmed.parse().map_err(bad)?;
        return Ok(History {
            frames: Vec::new(),
            reset: after.is_some_and(|p| p != gap),
            head: gap,
        });
    }
    let last: Position = last.parse().map_err(bad)?;
    let trimmed: Position = trimmed.parse().map_err(bad)?;
    // Reset when events after the cursor were trimmed, or when the cursor is newer
    // than anything this stream ever held (the stream was lost and recreated).
    let reset = after.is_some_and(|p| p < trimmed || p > last);
    let mut frames = Vec::with_capacity(entries.len());
    if !reset {
        for (id, fields) in entries {
            let pos: Position = id.parse().map_err(bad)?;
            let mut name = None;
            let mut data = None;
            for (k, v) in fields {
                match k.as_str() {
                    "e" => name = Some(v),
                    "d" => data = Some(v),
                    _ => {}
                }
            }
            let (Some(name), Some(data)) = (name, data) else {
                continue;
            };
            let Some(name) = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| EventName::stored(n).ok())
            else {
                continue;
            };
            frames.push(Frame::new(pos, &Event::new(topic.clone(), name, data)));
        }
    }
    Ok(History {
        frames,
        reset,
        head: last,
    })
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        if self.shared.cluster {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn publish<'a>(
        &'a self,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<Vec<Position>, BackendError>> {
        Box::pin(self.publish_strict(events))
    }

    fn fail_open(&self, error: &BackendError, events: &[Event]) -> Option<Vec<Position>> {
        if !self.fail_open {
            return None;
        }
        self.shared.metrics.publish_failed_open.inc();
        tracing::warn!(%error, events = events.len(), "publish failed open: events dropped");
        Some(vec![Position::default(); events.len()])
    }

    fn resume<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<History, BackendError>> {
        Box::pin(read_stream(&self.shared, topic, after))
    }

    fn listen<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let (done, wait) = oneshot::channel();
            self.subscriber
                .send(subscriber::Command::Listen {
                    topics: topics.to_vec(),
                    done,
                })
                .map_err(|_| BackendError::Unavailable("the subscriber has stopped".into()))?;
            wait.await
                .map_err(|_| BackendError::Unavailable("the subscriber has stopped".into()))?
        })
    }

    fn release(&self, topic: &Topic) {
        let _ = self
            .subscriber
            .send(subscriber::Command::Release(topic.clone()));
    }

    fn has_subscriber<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            if self.shared.fanout.has_subscribers(topic) {
                return Ok(true);
            }
            // Every instance subscribes a topic's channel while it has local
            // subscribers, so Redis's count of the channel's subscribers answers
            // for the whole deployment.
            let channel = self.shared.keys.channel(topic);
            let cmd = if self.shared.cluster {
                "SHARDNUMSUB"
            } else {
                "NUMSUB"
            };
            let mut c = redis::cmd("PUBSUB");
            c.arg(cmd).arg(&channel);
            // A node answers [channel, count]; a Cluster client sums every node's.
            let counts: std::collections::HashMap<String, u64> = match self.shared.commands.clone()
            {
                Commands::Single(mut conn) => c.query_async(&mut conn).await,
                Commands::Cluster(mut conn) => c.query_async(&mut conn).await,
            }
            .map_err(unavailable)?;
            Ok(counts.values().any(|&n| n > 0))
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.shared.subscribed.load(Ordering::Relaxed)
                && tokio::time::timeout(RESPONSE_TIMEOUT, self.shared.commands.ping())
                    .await
                    .is_ok_and(|r| r.is_ok())
        })
    }

    fn retained_topics(&self) -> usize {
        // Streams live in Redis; counting them would scan the keyspace.
        0
    }
}
