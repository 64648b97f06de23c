//! The instance's one subscriber connection, owned by one task.
//!
//! The task keeps the set of watched topics (those with local subscribers) and, per
//! topic, the last position it dispatched. It SUBSCRIBEs a topic's channel when the
//! first local stream asks ([`Command::Listen`]) and UNSUBSCRIBEs when the fanout has
//! no subscriber left ([`Command::Release`]); the check happens in this task, so a
//! release racing a new subscription cannot drop it.
//!
//! When the connection is lost (a `Disconnection` push, a failed PING, an
//! unsolicited unsubscribe on a Cluster), the task reconnects with backoff,
//! re-subscribes every watched channel, and *then* reads each topic's stream after
//! its last dispatched position and dispatches what it missed, before any live
//! message that arrived meanwhile (those wait in the push queue and are dropped when
//! already caught up). When the stream cannot fill the gap (retention off, or
//! trimmed), the topic's local streams are ended so their clients resume and get
//! `herald.reset`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, Shared, read_stream};
use crate::backend::BackendError;
use crate::event::{Event, EventName, Position, Topic};
use crate::sse::Frame;

/// Requests from streams to the subscriber task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Make sure these topics are subscribed; answer when they are.
    Listen {
        topics: Vec<Topic>,
        done: oneshot::Sender<Result<(), BackendError>>,
    },
    /// The topic may have lost its last local subscriber.
    Release(Topic),
}

/// How often the connection is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Channels per SUBSCRIBE command when re-subscribing many.
const SUBSCRIBE_BATCH: usize = 500;
/// How long a catch-up waits for a topic's subscribers to read a slice of the
/// gap before it sends the next anyway.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

struct Watched {
    topic: Topic,
    /// Last position dispatched for this topic: where a catch-up starts.
    last: Position,
}

enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Self::Single(c) => {
                for batch in channels.chunks(SUBSCRIBE_BATCH) {
                    c.subscribe(batch).await?;
                }
                Ok(())
            }
            // One SSUBSCRIBE per channel: channels of different slots cannot share one.
            Self::Cluster(c) => {
                for ch in channels {
                    c.ssubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Single(c) => c.unsubscribe(channel).await,
            Self::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        let cmd = redis::cmd("PING");
        let res = match self {
            Self::Single(c) => {
                tokio::time::timeout(RESPONSE_TIMEOUT, cmd.query_async::<()>(c)).await
            }
            Self::Cluster(c) => {
                tokio::time::timeout(RESPONSE_TIMEOUT, cmd.query_async::<()>(c)).await
            }
        };
        res.unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "PING timed out",
            )))
        })
    }
}

type Pushes = mpsc::UnboundedSender<(u64, PushInfo)>;

async fn connect(shared: &Shared, generation: u64, pushes: Pushes) -> redis::RedisResult<Conn> {
    let sender = move |info: PushInfo| pushes.send((generation, info)).map_err(|_| ());
    if shared.cluster {
        let client = ClusterClient::builder(shared.urls.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .push_sender(sender)
            .build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    } else {
        let client = redis::Client::open(shared.urls[0].clone())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(sender);
        Ok(Conn::Single(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        ))
    }
}

/// The subscriber task. Ends when `stop` is cancelled or the backend is dropped.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stop: CancellationToken,
) {
    let mut task = Task {
        shared,
        watched: HashMap::new(),
    };
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    let mut generation = 0u64;
    let mut backoff = Duration::from_millis(50);
    loop {
        generation += 1;
        let mut conn = match connect(&task.shared, generation, push_tx.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "Redis subscriber cannot connect");
                if task.wait_down(backoff, &mut commands, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if generation > 1 {
            match task.resync(&mut conn).await {
                Ok(n) => {
                    task.shared.metrics.reconnects.inc();
                    tracing::info!(
                        caught_up = n,
                        topics = task.watched.len(),
                        "Redis subscriber reconnected"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis subscriber cannot re-subscribe");
                    if task.wait_down(backoff, &mut commands, &stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        backoff = Duration::from_millis(50);
        task.shared.subscribed.store(true, Ordering::Relaxed);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Serve until the connection is lost.
        let lost = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(cmd) => if let Err(e) = task.command(&mut conn, cmd).await {
                        break e;
                    },
                },
                push = push_rx.recv() => match push {
                    None => return,
                    Some((g, _)) if g != generation => {} // from a connection already replaced
                    Some((_, push)) => if let Err(e) = task.push(&mut conn, push).await {
                        break e;
                    },
                },
                _ = ping.tick() => if let Err(e) = conn.ping().await {
                    break e.to_string();
                },
            }
        };
        task.shared.subscribed.store(false, Ordering::Relaxed);
        tracing::warn!(reason = %lost, "Redis subscriber connection lost; reconnecting");
    }
}

struct Task {
    shared: Arc<Shared>,
    /// Channel name -> watched topic.
    watched: HashMap<String, Watched>,
}

impl Task {
    /// While Redis is unreachable: refuse new subscriptions (their streams answer
    /// 503), forget released topics, and wait `delay`. True when told to stop.
    async fn wait_down(
        &mut self,
        delay: Duration,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        stop: &CancellationToken,
    ) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return true,
                _ = &mut sleep => return false,
                cmd = commands.recv() => match cmd {
                    None => return true,
                    Some(Command::Listen { done, .. }) => {
                        let _ = done.send(Err(BackendError::Unavailable("Redis is unreachable".into())));
                    }
                    Some(Command::Release(topic)) => {
                        if !self.shared.fanout.has_subscribers(&topic) {
                            self.watched.remove(&self.shared.keys.channel(&topic));
                        }
                    }
                },
            }
        }
    }

    async fn command(&mut self, conn: &mut Conn, cmd: Command) -> Result<(), String> {
        match cmd {
            Command::Listen { topics, done } => {
                let new: Vec<(String, Topic)> = topics
                    .into_iter()
                    .map(|t| (self.shared.keys.channel(&t), t))
                    .filter(|(ch, _)| !self.watched.contains_key(ch))
                    .collect();
                if new.is_empty() {
                    let _ = done.send(Ok(()));
                    return Ok(());
                }
                let channels: Vec<String> = new.iter().map(|(c, _)| c.clone()).collect();
                if let Err(e) = conn.subscribe(&channels).await {
                    let _ = done.send(Err(BackendError::Unavailable(e.to_string())));
                    return Err(e.to_string());
                }
                // Subscribed: from here on every event reaches the push queue. Start
                // each topic's catch-up point at its stream's head.
                for (channel, topic) in new {
                    match read_stream(&self.shared, &topic, None).await {
                        Ok(h) => {
                            self.watched.insert(
                                channel,
                                Watched {
                                    topic,
                                    last: h.head,
                                },
                            );
                        }
                        Err(e) => {
                            let _ = done.send(Err(e));
                            return Err("cannot read a stream head".into());
                        }
                    }
                }
                let _ = done.send(Ok(()));
                Ok(())
            }
            Command::Release(topic) => {
                let channel = self.shared.keys.channel(&topic);
                if self.watched.contains_key(&channel)
                    && !self.shared.fanout.has_subscribers(&topic)
                {
                    self.watched.remove(&channel);
                    conn.unsubscribe(&channel)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }

    async fn push(&mut self, conn: &mut Conn, push: PushInfo) -> Result<(), String> {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                self.message(&push.data);
                Ok(())
            }
            PushKind::Disconnection => match conn {
                // A lone connection does not come back: replace it.
                Conn::Single(_) => Err("disconnected".into()),
                // A Cluster connection reconnects its node by itself, but does not
                // restore our shard channels reliably: do it, and catch up.
                Conn::Cluster(_) => {
                    self.shared.subscribed.store(false, Ordering::Relaxed);
                    let n = self.resync(conn).await?;
                    self.shared.metrics.reconnects.inc();
                    self.shared.subscribed.store(true, Ordering::Relaxed);
                    tracing::info!(caught_up = n, "Redis Cluster node reconnected");
                    Ok(())
                }
            },
            // The server dropped a shard channel we still want (slot migration).
            PushKind::SUnsubscribe => {
                let channel = push.data.first().and_then(as_str).unwrap_or_default();
                if let Some(w) = self.watched.get(channel) {
                    let topic = w.topic.clone();
                    conn.subscribe(&[channel.to_owned()])
                        .await
                        .map_err(|e| e.to_string())?;
                    self.catch_up(&topic).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Re-subscribes everything watched, then catches every topic up. Returns how
    /// many events were caught up.
    async fn resync(&mut self, conn: &mut Conn) -> Result<u64, String> {
        let channels: Vec<String> = self.watched.keys().cloned().collect();
        conn.subscribe(&channels).await.map_err(|e| e.to_string())?;
        let topics: Vec<Topic> = self.watched.values().map(|w| w.topic.clone()).collect();
        let mut total = 0;
        for topic in topics {
            total += self.catch_up(&topic).await.map_err(|e| e.to_string())?;
        }
        Ok(total)
    }

    /// Dispatches what `topic`'s stream holds after the last dispatched position.
    async fn catch_up(&mut self, topic: &Topic) -> Result<u64, BackendError> {
        let channel = self.shared.keys.channel(topic);
        let Some(last) = self.watched.get(&channel).map(|w| w.last) else {
            return Ok(0);
        };
        let history = read_stream(&self.shared, topic, Some(last)).await?;
        if history.reset {
            // The gap cannot be filled from the stream: end the local streams, whose
            // clients resume and learn it from `herald.reset`.
            tracing::warn!(%topic, "events lost while disconnected are not retained; resetting subscribers");
            self.shared.fanout.evict(topic);
            if let Some(w) = self.watched.get_mut(&channel) {
                w.last = history.head;
            }
            return Ok(0);
        }
        let n = history.frames.len() as u64;
        // A gap longer than the ring goes in slices of half of it, each once the
        // subscribers have read the one before (those that do not within
        // CATCH_UP_WAIT are slow, and lag as usual): a whole gap at once would
        // overrun every stream that reads from its own task.
        let capacity = self.shared.fanout.capacity();
        let slice = (capacity / 2).max(1);
        for (k, frame) in history.frames.into_iter().enumerate() {
            if k > 0 && k % slice == 0 {
                let low = capacity.saturating_sub(slice);
                self.shared.fanout.drained(topic, low, CATCH_UP_WAIT).await;
            }
            if let Some(w) = self.watched.get_mut(&channel) {
                w.last = frame.pos;
            }
            self.shared.fanout.dispatch(topic, frame);
        }
        self.shared.metrics.caught_up.inc_by(n);
        Ok(n)
    }

    fn message(&mut self, data: &[Value]) {
        let (Some(channel), Some(payload)) = (data.first().and_then(as_str), data.get(1)) else {
            return;
        };
        let Some(w) = self.watched.get_mut(channel) else {
            return; // unsubscribed meanwhile
        };
        let payload = match payload {
            Value::BulkString(b) => Bytes::copy_from_slice(b),
            _ => return,
        };
        let Some((pos, name, body)) = parse_message(&payload) else {
            tracing::warn!(%channel, "ignoring a malformed message on a Herald channel");
            return;
        };
        if pos <= w.last {
            return; // already dispatched by a catch-up
        }
        w.last = pos;
        let topic = w.topic.clone();
        let frame = Frame::new(pos, &Event::new(topic.clone(), name, body));
        self.shared.fanout.dispatch(&topic, frame);
    }
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// `<id>\n<event>\n<data>`, as `publish.lua` writes it.
fn parse_message(payload: &Bytes) -> Option<(Position, EventName, Bytes)> {
    let first = payload.iter().position(|&b| b == b'\n')?;
    let second = first + 1 + payload[first + 1..].iter().position(|&b| b == b'\n')?;
    let pos = std::str::from_utf8(&payload[..first]).ok()?.parse().ok()?;
    let name = EventName::stored(std::str::from_utf8(&payload[first + 1..second]).ok()?).ok()?;
    Some((pos, name, payload.slice(second + 1..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        let (p, n, d) = parse_message(&Bytes::from_static(b"5-1\nev\n{\"a\":\n1}")).unwrap();
        assert_eq!(
            (p, n.as_str(), &d[..]),
            (Position::new(5, 1), "ev", &b"{\"a\":\n1}"[..])
        );
        for bad in [
            &b""[..],
            b"5-1",
            b"5-1\nev",
            b"x\nev\nd",
            b"5-1\nbad name\nd",
        ] {
            assert!(parse_message(&Bytes::copy_from_slice(bad)).is_none());
        }
    }
}
