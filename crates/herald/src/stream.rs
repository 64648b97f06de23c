//! One subscriber's event stream: resume, live delivery, heartbeats, the end.
//!
//! Order of work when a stream opens: register live on every topic, read each
//! topic's history after the cursor, then write `retry:` and the starting cursor,
//! `herald.reset` if some history is gone, the replayed events, and live events,
//! dropping any live event at or below a position already written (no race between
//! history and live, nothing twice).
//!
//! Slow subscribers: the stream reads its topics' broadcast rings only as fast as
//! the socket takes the bytes. One that falls a full ring behind gets `Lagged`, and
//! the stream ends after a `retry:` hint; the client resumes from its cursor.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::backend::BackendError;
use crate::cursor::TopicSet;
use crate::event::{Event, EventName, Position};
use crate::hub::{Hub, Inner};
use crate::sse::{self, Frame};

/// Coalesce queued frames into one write up to about this many bytes.
const COALESCE_BYTES: usize = 32 * 1024;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("the connection limit ({0}) is reached")]
    Full(usize),
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Counts an open stream and releases its topics when dropped.
#[derive(Debug)]
struct Registration {
    inner: Arc<Inner>,
    set: TopicSet,
}

impl Drop for Registration {
    fn drop(&mut self) {
        for t in self.set.topics() {
            self.inner.fanout.release(t);
            self.inner.backend.release(t);
        }
        self.inner.connections.fetch_sub(1, Ordering::Relaxed);
        self.inner.metrics.connections.dec();
        tracing::debug!(topics = self.set.topics().len(), "stream closed");
    }
}

struct Conn {
    /// Declared before `registration`: fields drop in order, so the receivers are
    /// gone when the registration releases the topics.
    live: StreamMap<usize, BroadcastStream<Frame>>,
    /// When the subscriber's credentials expire, if they do.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    heartbeat: broadcast::Receiver<Bytes>,
    /// With a write linger: the hub's flush ticks. After an event, the stream
    /// gathers more until the next tick, then writes them at once.
    flush: Option<broadcast::Receiver<()>>,
    /// Each topic's last position written to this client.
    positions: Vec<Position>,
    /// Written before anything live: retry, cursor, reset, history.
    prelude: Option<Bytes>,
    /// For streams on exclusive topics: per topic, the position of this stream's
    /// own takeover marker. A later marker means another stream took the topic.
    exclusive: Option<Box<[Option<Position>]>>,
    done: bool,
    registration: Registration,
}

/// Opens a stream for `set`, resuming from `cursor` (one position per topic).
pub(crate) async fn open(
    hub: &Hub,
    set: TopicSet,
    cursor: Option<Vec<Position>>,
    expires_at: Option<std::time::SystemTime>,
) -> Result<impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static, OpenError>
{
    let inner = &hub.inner;
    if inner.shutdown.is_cancelled() {
        return Err(OpenError::ShuttingDown);
    }
    let max = inner.config.max_connections;
    if inner.connections.fetch_add(1, Ordering::Relaxed) >= max {
        inner.connections.fetch_sub(1, Ordering::Relaxed);
        inner.metrics.connections_rejected.inc();
        return Err(OpenError::Full(max));
    }
    inner.metrics.connections.inc();
    inner.metrics.connections_total.inc();
    // From here on, dropping `registration` undoes the count and the subscriptions.
    let registration = Registration {
        inner: inner.clone(),
        set,
    };
    let set = &registration.set;

    // Live first...
    let mut live = StreamMap::with_capacity(set.topics().len());
    for (i, t) in set.topics().iter().enumerate() {
        live.insert(i, BroadcastStream::new(inner.fanout.subscribe(t)));
    }
    // ...make sure every instance's events reach this one...
    inner.backend.listen(set.topics()).await?;
    // ...take exclusive topics (streams holding them, anywhere, see the marker
    // after their own and end)...
    let exclusive = take_exclusive(inner, set).await?;
    // ...then history.
    let mut positions = Vec::with_capacity(set.topics().len());
    let mut reset = Vec::new();
    let mut replay: Vec<(usize, Frame)> = Vec::new();
    for (i, t) in set.topics().iter().enumerate() {
        let after = cursor.as_ref().map(|c| c[i]);
        let history = inner.backend.resume(t, after).await?;
        match after {
            Some(p) if !history.reset => positions.push(p),
            _ => positions.push(history.head),
        }
        if history.reset {
            reset.push(t.as_str());
        }
        replay.extend(history.frames.into_iter().map(|f| (i, f)));
    }
    // Positions carry their publish time: interleave topics roughly as published.
    replay.sort_by_key(|(_, f)| f.pos);

    let mut prelude = Chunk::default();
    prelude.push(inner.retry_frame.clone());
    let start_cursor = set.encode(&positions);
    if reset.is_empty() {
        prelude.push(sse::id_only(&start_cursor));
    } else {
        inner.metrics.resets.inc();
        let data = serde_json::json!({ "topics": reset }).to_string();
        prelude.push(sse::encode_event(
            Some(&start_cursor),
            "herald.reset",
            data.as_bytes(),
        ));
    }
    inner.metrics.events_replayed.inc_by(replay.len() as u64);
    inner.metrics.events_delivered.inc_by(replay.len() as u64);
    // Credentials that expire end the stream then (the client reconnects with new ones).
    let deadline = expires_at.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    });
    let mut conn = Conn {
        live,
        deadline,
        heartbeat: inner.heartbeat.subscribe(),
        flush: inner.flush.as_ref().map(broadcast::Sender::subscribe),
        positions,
        prelude: None,
        exclusive,
        done: false,
        registration,
    };
    for (i, frame) in replay {
        conn.write_chunk(i, &frame, &mut prelude);
    }
    conn.prelude = prelude.finish();
    tracing::debug!(
        topics = conn.positions.len(),
        resumed = cursor.is_some(),
        "stream opened"
    );
    Ok(futures_util::stream::unfold(conn, |mut conn| async move {
        let chunk = conn.next_chunk().await?;
        Some((Ok(chunk), conn))
    }))
}

/// Publishes a takeover marker on each exclusive topic of `set`; returns their
/// positions (none when no topic is exclusive).
async fn take_exclusive(
    inner: &Inner,
    set: &TopicSet,
) -> Result<Option<Box<[Option<Position>]>>, BackendError> {
    let config = &inner.config;
    if config.exclusive_prefixes.is_empty()
        || !set.topics().iter().any(|t| config.is_exclusive(t.as_str()))
    {
        return Ok(None);
    }
    let mut mine = vec![None; set.topics().len()].into_boxed_slice();
    let markers: Vec<(usize, Event)> = set
        .topics()
        .iter()
        .enumerate()
        .filter(|(_, t)| config.is_exclusive(t.as_str()))
        .map(|(i, t)| (i, Event::new(t.clone(), EventName::takeover(), "{}")))
        .collect();
    let events: Vec<Event> = markers.iter().map(|(_, e)| e.clone()).collect();
    let positions = inner.backend.publish(&events).await?;
    for ((i, _), pos) in markers.iter().zip(positions) {
        mine[*i] = Some(pos);
    }
    Ok(Some(mine))
}

/// Bytes gathered for one write: the first frame as is (no copy), later ones copied in.
#[derive(Default)]
struct Chunk {
    first: Option<Bytes>,
    rest: BytesMut,
}

impl Chunk {
    fn push(&mut self, b: Bytes) {
        match &self.first {
            None => self.first = Some(b),
            Some(first) => {
                if self.rest.is_empty() {
                    self.rest.extend_from_slice(first);
                }
                self.rest.extend_from_slice(&b);
            }
        }
    }

    fn len(&self) -> usize {
        if self.rest.is_empty() {
            self.first.as_ref().map_or(0, Bytes::len)
        } else {
            self.rest.len()
        }
    }

    fn finish(self) -> Option<Bytes> {
        if self.rest.is_empty() {
            self.first
        } else {
            Some(self.rest.freeze())
        }
    }
}

impl Conn {
    fn inner(&self) -> &Inner {
        &self.registration.inner
    }

    /// Appends `frame` of topic `i` unless it was written already; returns whether it was.
    fn write_chunk(&mut self, i: usize, frame: &Frame, out: &mut Chunk) -> bool {
        if self.done {
            return false;
        }
        let Some(last) = self.positions.get_mut(i) else {
            return false;
        };
        if frame.pos <= *last {
            return false;
        }
        *last = frame.pos;
        if frame.is_takeover() {
            let mine = self
                .exclusive
                .as_ref()
                .and_then(|m| m.get(i).copied().flatten());
            if mine.is_some_and(|p| frame.pos > p) {
                self.replaced(i, out);
            }
            return false;
        }
        if self.positions.len() == 1 {
            out.push(frame.full().clone());
        } else {
            let cursor = self.registration.set.encode(&self.positions);
            out.push(sse::id_line(&cursor));
            out.push(frame.body());
        }
        true
    }

    /// The next bytes to write, or `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(prelude) = self.prelude.take() {
            return Some(prelude);
        }
        if self.done {
            return None;
        }
        let mut chunk = Chunk::default();
        let mut delivered = 0u64;
        let shutdown = self.registration.inner.shutdown.clone();
        let deadline = &mut self.deadline;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                self.done = true;
                return Some(self.inner().retry_frame.clone());
            }
            _ = async {
                match deadline.as_mut() {
                    Some(d) => d.as_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::debug!("credentials expired: ending the stream");
                self.done = true;
                return Some(self.inner().retry_frame.clone());
            }
            item = self.live.next() => match item {
                // A topic's ring was closed (the backend lost events it cannot replay
                // live): end the stream; the client's resume gets `herald.reset`.
                _ if self.live.len() < self.positions.len() => {
                    self.done = true;
                    return Some(self.inner().retry_frame.clone());
                }
                Some((i, Ok(frame))) => delivered += u64::from(self.write_chunk(i, &frame, &mut chunk)),
                Some((_, Err(BroadcastStreamRecvError::Lagged(_)))) => return Some(self.end_slow(chunk)),
                // Senders live while a receiver does; this cannot happen, but ending is right if it does.
                None => return None,
            },
            beat = self.heartbeat.recv() => match beat {
                Ok(b) => chunk.push(b),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(self.inner().retry_frame.clone());
                }
            },
        }
        // With a write linger, wait that long after the first event for more to
        // join the same write (fewer writes per delivery, at the cost of latency).
        if delivered > 0
            && let Some(mut flush) = self.flush.take()
        {
            // Ticks that fired before this event do not count.
            while let Ok(()) | Err(broadcast::error::TryRecvError::Lagged(_)) = flush.try_recv() {}
            let mut slow = false;
            while chunk.len() < COALESCE_BYTES && !self.done {
                tokio::select! {
                    biased;
                    // Flush now; the next call ends the stream.
                    _ = shutdown.cancelled() => break,
                    _ = flush.recv() => break,
                    item = self.live.next() => match item {
                        Some((i, Ok(frame))) => {
                            delivered += u64::from(self.write_chunk(i, &frame, &mut chunk));
                        }
                        Some((_, Err(BroadcastStreamRecvError::Lagged(_)))) => {
                            slow = true;
                            break;
                        }
                        // A closed ring: the next call ends the stream.
                        None => break,
                    },
                }
            }
            self.flush = Some(flush);
            if slow {
                self.inner().metrics.events_delivered.inc_by(delivered);
                return Some(self.end_slow(chunk));
            }
        }
        // Coalesce whatever else is queued already into the same write.
        while chunk.len() < COALESCE_BYTES && !self.done {
            match self.live.next().now_or_never() {
                Some(Some((i, Ok(frame)))) => {
                    delivered += u64::from(self.write_chunk(i, &frame, &mut chunk));
                }
                Some(Some((_, Err(BroadcastStreamRecvError::Lagged(_))))) => {
                    self.inner().metrics.events_delivered.inc_by(delivered);
                    return Some(self.end_slow(chunk));
                }
                _ => break,
            }
        }
        self.inner().metrics.events_delivered.inc_by(delivered);
        match chunk.finish() {
            Some(b) => Some(b),
            // Only duplicates arrived (dropped); nothing to write yet.
            None => Some(Bytes::new()),
        }
    }

    /// Another stream took exclusive topic `i`: tell the client and end. The
    /// `retry:` of a day keeps a browser's `EventSource` from taking the topic
    /// back by reconnecting on its own.
    fn replaced(&mut self, i: usize, out: &mut Chunk) {
        self.done = true;
        self.inner().metrics.replaced.inc();
        let topic = self.registration.set.topics().get(i).map(|t| t.as_str());
        tracing::debug!(
            topic,
            "stream replaced by a newer one on an exclusive topic"
        );
        let data = serde_json::json!({ "topics": [topic] }).to_string();
        out.push(Bytes::from_static(b"retry: 86400000\n"));
        out.push(sse::encode_event(None, "herald.replaced", data.as_bytes()));
    }

    fn end_slow(&mut self, mut chunk: Chunk) -> Bytes {
        self.done = true;
        self.inner().metrics.slow_disconnected.inc();
        tracing::debug!("slow subscriber disconnected");
        chunk.push(self.inner().retry_frame.clone());
        chunk.finish().unwrap_or_default()
    }
}
