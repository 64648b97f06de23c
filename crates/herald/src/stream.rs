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

use crate::channel::{Receiver, RecvError, RingRef, TryRecvError};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

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
    #[error("the credentials expired before the stream opened")]
    Expired,
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

/// What a stream reads and has written: its receivers and its positions. In a
/// direct stream ([`crate::direct`]) it sits behind a mutex shared with publishers.
pub(crate) struct Subs {
    /// One receiver per topic, in the topic set's order. Declared before
    /// `registration`: fields drop in order, so the receivers are gone when the
    /// registration releases the topics.
    live: Vec<Receiver>,
    /// Each topic's last position written to this client.
    positions: Vec<Position>,
    /// For streams on exclusive topics: per topic, the position of this stream's
    /// own takeover marker. A later marker means another stream took the topic.
    exclusive: Option<Box<[Option<Position>]>>,
    pub(crate) done: bool,
    /// Opened with `envelope=1`: each event's data is written as
    /// `{"topic": ..., "data": ...}` (copied per stream, not shared).
    envelope: bool,
    registration: Registration,
}

/// Why draining the rings stopped short.
pub(crate) enum Stop {
    /// A ring overran this stream: it is too slow.
    Lagged,
    /// A ring was closed (the backend lost events it cannot replay live).
    Closed,
}

/// An open stream, before it is driven: as a [`Stream`] of chunks
/// ([`Conn::into_stream`]) or, on the hub's own connections, directly.
pub(crate) struct Conn {
    pub(crate) subs: Subs,
    /// When the subscriber's credentials expire, if they do.
    pub(crate) deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    pub(crate) heartbeat: broadcast::Receiver<Bytes>,
    /// With a write linger: the flush tick at this stream's last write of events.
    tick_seen: u64,
    /// With a write linger: the last write was held for a tick (the topic is busy),
    /// so the next one waits for the next tick without waking for each event.
    busy: bool,
    /// Written before anything live: retry, cursor, reset.
    pub(crate) prelude: Option<Bytes>,
    /// The history to replay after the prelude, in position order, written a
    /// chunk at a time (a resume over many topics of large events would
    /// otherwise gather all of it in one buffer).
    pub(crate) replay: Option<Box<Replay>>,
}

/// A stream's history still to write: (topic index, frame), in position order.
pub(crate) type Replay = std::vec::IntoIter<(usize, Frame)>;

/// Opens a stream for `set`, resuming from `cursor` (one position per topic).
pub(crate) async fn open(
    hub: &Hub,
    set: TopicSet,
    cursor: Option<Vec<Position>>,
    expires_at: Option<std::time::SystemTime>,
    envelope: bool,
) -> Result<Conn, OpenError> {
    let inner = &hub.inner;
    // Expired credentials (an authorizer's past expiry) open nothing, and take no
    // exclusive topic; checked again after the history, which may take a while.
    let expired = || expires_at.is_some_and(|at| at <= std::time::SystemTime::now());
    if expired() {
        return Err(OpenError::Expired);
    }
    // Taken first: there is none once the hub is shutting down, and a shutdown
    // from here on closes it, which ends the stream.
    let heartbeat = inner.heartbeats().ok_or(OpenError::ShuttingDown)?;
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
    let live: Vec<_> = set
        .topics()
        .iter()
        .map(|t| inner.fanout.subscribe(t))
        .collect();
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
    // Credentials that expired meanwhile (a slow resume): not even the history
    // is written.
    if expired() {
        return Err(OpenError::Expired);
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
    // Credentials that expire end the stream then (the client reconnects with new ones).
    let deadline = expires_at.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    });
    let subs = Subs {
        live,
        positions,
        exclusive,
        done: false,
        envelope,
        registration,
    };
    tracing::debug!(
        topics = subs.positions.len(),
        resumed = cursor.is_some(),
        "stream opened"
    );
    Ok(Conn {
        subs,
        deadline,
        heartbeat,
        tick_seen: 0,
        busy: false,
        prelude: prelude.finish(),
        replay: (!replay.is_empty()).then(|| Box::new(replay.into_iter())),
    })
}

/// Waits for the next frame on any of `live`: the topic's index and what its ring
/// gave. `None` without topics.
///
/// Receiving is cancel-safe, so when one topic delivers, the waits on the others
/// are dropped without losing anything.
async fn recv_any(live: &mut [Receiver]) -> Option<(usize, Result<Frame, RecvError>)> {
    match live {
        [] => None,
        [rx] => Some((0, rx.recv().await)),
        rxs => {
            let waits = rxs.iter_mut().map(|rx| Box::pin(rx.recv()));
            let (got, i, _) = futures_util::future::select_all(waits).await;
            Some((i, got))
        }
    }
}

/// Whether the credentials' `deadline` has passed (by the clock, which may be
/// ahead of the timer's firing).
pub(crate) fn expired(deadline: &Option<std::pin::Pin<Box<tokio::time::Sleep>>>) -> bool {
    deadline
        .as_ref()
        .is_some_and(|d| tokio::time::Instant::now() >= d.deadline())
}

/// Completes when the credentials' `deadline` has passed; never without one.
pub(crate) async fn expiry(deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match deadline.as_mut() {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
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
pub(crate) struct Chunk {
    first: Option<Bytes>,
    rest: BytesMut,
}

impl Chunk {
    pub(crate) fn push(&mut self, b: Bytes) {
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

    pub(crate) fn len(&self) -> usize {
        if self.rest.is_empty() {
            self.first.as_ref().map_or(0, Bytes::len)
        } else {
            self.rest.len()
        }
    }

    pub(crate) fn finish(self) -> Option<Bytes> {
        if self.rest.is_empty() {
            self.first
        } else {
            Some(self.rest.freeze())
        }
    }
}

impl Subs {
    pub(crate) fn inner(&self) -> &Inner {
        &self.registration.inner
    }

    /// The rings its receivers read (to join their lists of direct streams).
    pub(crate) fn rings(&self) -> Vec<RingRef> {
        self.live.iter().map(Receiver::ring).collect()
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
            if self.envelope {
                out.push(frame.id_line());
            } else {
                out.push(frame.full().clone());
            }
        } else {
            let cursor = self.registration.set.encode(&self.positions);
            out.push(sse::id_line(&cursor));
            if !self.envelope {
                out.push(frame.body());
            }
        }
        if self.envelope {
            let topic = self
                .registration
                .set
                .topics()
                .get(i)
                .map_or("", |t| t.as_str());
            out.push(frame.body_in_envelope(topic));
        }
        true
    }

    /// The next part of `replay` to write (up to `COALESCE_BYTES`), or `None` once
    /// it is all written (then `replay` is `None`). Counts what it writes (a
    /// takeover marker in the history is not).
    pub(crate) fn replay_chunk(&mut self, replay: &mut Option<Box<Replay>>) -> Option<Bytes> {
        let frames = replay.as_mut()?;
        let mut chunk = Chunk::default();
        let mut replayed = 0u64;
        while chunk.len() < COALESCE_BYTES {
            let Some((i, frame)) = frames.next() else {
                *replay = None;
                break;
            };
            replayed += u64::from(self.write_chunk(i, &frame, &mut chunk));
        }
        let inner = self.inner();
        inner.metrics.events_replayed.inc_by(replayed);
        inner.metrics.events_delivered.inc_by(replayed);
        // Nothing written from a whole slice (takeover markers only): go on.
        chunk.finish().or_else(|| self.replay_chunk(replay))
    }

    /// Moves every frame queued on the live rings into `chunk` (up to
    /// `COALESCE_BYTES`), counting the ones written in `delivered`. Stops when a
    /// ring overran this stream or was closed.
    ///
    /// Takes one frame per topic in turn (topics interleave roughly as published),
    /// with `try_recv`: nothing registers to be woken, as a poll would.
    pub(crate) fn drain(&mut self, chunk: &mut Chunk, delivered: &mut u64) -> Result<(), Stop> {
        loop {
            let mut got = false;
            for i in 0..self.live.len() {
                if chunk.len() >= COALESCE_BYTES || self.done {
                    return Ok(());
                }
                match self.live[i].try_recv() {
                    Ok(frame) => {
                        got = true;
                        *delivered += u64::from(self.write_chunk(i, &frame, chunk));
                    }
                    Err(TryRecvError::Lagged(_)) => return Err(Stop::Lagged),
                    Err(TryRecvError::Closed) => return Err(Stop::Closed),
                    Err(TryRecvError::Empty) => {}
                }
            }
            if !got {
                return Ok(());
            }
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

    /// The last bytes of a stream that drained `chunk` (`delivered` events) and
    /// then stopped: counts them, and ends with the `retry:` hint.
    pub(crate) fn end(&mut self, mut chunk: Chunk, delivered: u64, stop: Stop) -> Bytes {
        self.inner().metrics.events_delivered.inc_by(delivered);
        self.done = true;
        match stop {
            Stop::Lagged => {
                self.inner().metrics.slow_disconnected.inc();
                tracing::debug!("slow subscriber disconnected");
            }
            Stop::Closed => tracing::debug!("a topic's ring closed: ending the stream"),
        }
        chunk.push(self.inner().retry_frame.clone());
        chunk.finish().unwrap_or_default()
    }

    /// Ends the stream with the `retry:` hint (shutdown, expired credentials),
    /// after what `chunk` holds.
    pub(crate) fn end_now(&mut self, mut chunk: Chunk) -> Bytes {
        self.done = true;
        chunk.push(self.inner().retry_frame.clone());
        chunk.finish().unwrap_or_default()
    }
}

impl Conn {
    /// The stream as chunks to write, for a response body.
    pub(crate) fn into_stream(
        self,
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut conn| async move {
            let chunk = conn.next_chunk().await?;
            Some((Ok(chunk), conn))
        })
    }

    /// The next part of the history to replay; see [`Subs::replay_chunk`].
    fn replay_chunk(&mut self) -> Option<Bytes> {
        self.subs.replay_chunk(&mut self.replay)
    }

    /// The next bytes to write, or `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(prelude) = self.prelude.take() {
            return Some(prelude);
        }
        if self.subs.done {
            return None;
        }
        // The hub is shutting down (one atomic load: a busy stream notices it
        // here), or the credentials expired (by the clock: their timer may not
        // have fired yet).
        if self.heartbeat.is_closed() || self.expired() {
            return Some(self.subs.end_now(Chunk::default()));
        }
        if let Some(history) = self.replay_chunk() {
            return Some(history);
        }
        let mut chunk = Chunk::default();
        let mut delivered = 0u64;
        // The hub, held apart from `self` (an `Arc`: no lock, unlike cloning the token).
        let inner = self.subs.registration.inner.clone();
        let shutdown = &inner.shutdown;
        if self.busy {
            // A write linger on a busy stream: no wake per event; at the next
            // flush tick, whatever arrived since the last write goes out in one.
            // On shutdown, what arrived is still written, and the wait below then
            // ends the stream; on expiry, nothing more is.
            let ticked = self.wait_tick(shutdown).await;
            if self.expired() {
                return Some(self.subs.end_now(chunk));
            }
            if let Err(stop) = self.subs.drain(&mut chunk, &mut delivered) {
                return Some(self.subs.end(chunk, delivered, stop));
            }
            self.busy = ticked && delivered > 0;
            if chunk.len() > 0 {
                return Some(self.finish(chunk, delivered));
            }
            // Quiet since the last write: wait as usual.
        }
        let deadline = &mut self.deadline;
        // Each wait registers to be woken; the heartbeat last, as it rarely has
        // anything. Shutdown closes the heartbeat channel, which wakes this.
        tokio::select! {
            biased;
            _ = expiry(deadline) => {
                tracing::debug!("credentials expired: ending the stream");
                return Some(self.subs.end_now(chunk));
            }
            item = recv_any(&mut self.subs.live) => match item {
                Some((i, Ok(frame))) => delivered += u64::from(self.subs.write_chunk(i, &frame, &mut chunk)),
                Some((_, Err(RecvError::Lagged(_)))) => return Some(self.subs.end(chunk, delivered, Stop::Lagged)),
                // A topic's ring was closed (the backend lost events it cannot replay
                // live): end the stream; the client's resume gets `herald.reset`.
                Some((_, Err(RecvError::Closed))) => return Some(self.subs.end(chunk, delivered, Stop::Closed)),
                // A set has at least one topic; ending is right if it has none.
                None => return None,
            },
            beat = self.heartbeat.recv() => match beat {
                Ok(b) => chunk.push(b),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Some(self.subs.end_now(chunk)),
            },
        }
        if self.expired() {
            // Woken by an event after the deadline, before its timer fired.
            return Some(self.subs.end_now(Chunk::default()));
        }
        // With a write linger, a stream writes events at most once per flush tick:
        // when its last write was after the latest tick, this event waits for the
        // next one, and so does every later event while they keep coming.
        if delivered > 0
            && let Some(flush) = self.subs.inner().flush.as_ref()
            && flush.now() == self.tick_seen
        {
            self.busy = self.wait_tick(shutdown).await;
            if self.expired() {
                // The event held for the tick goes out, then the end.
                inner.metrics.events_delivered.inc_by(delivered);
                return Some(self.subs.end_now(chunk));
            }
        }
        // Coalesce whatever else is queued already into the same write.
        if let Err(stop) = self.subs.drain(&mut chunk, &mut delivered) {
            return Some(self.subs.end(chunk, delivered, stop));
        }
        Some(self.finish(chunk, delivered))
    }

    /// Whether the credentials have expired: then nothing more is read from the
    /// rings (the client resumes with new credentials from where it stopped).
    fn expired(&self) -> bool {
        let expired = expired(&self.deadline);
        if expired {
            tracing::debug!("credentials expired: ending the stream");
        }
        expired
    }

    /// The bytes of `chunk` to write; counts the deliveries and notes the tick.
    fn finish(&mut self, chunk: Chunk, delivered: u64) -> Bytes {
        let inner = &self.subs.registration.inner;
        inner.metrics.events_delivered.inc_by(delivered);
        if delivered > 0
            && let Some(flush) = inner.flush.as_ref()
        {
            self.tick_seen = flush.now();
        }
        // Empty when only duplicates arrived (dropped): nothing to write yet.
        chunk.finish().unwrap_or_default()
    }

    /// Waits for the first flush tick after this stream's last write of events.
    /// `false` when the hub shuts down or the credentials expire first (the next
    /// wait ends the stream).
    async fn wait_tick(&mut self, shutdown: &CancellationToken) -> bool {
        let Some(flush) = self.subs.registration.inner.flush.as_ref() else {
            return true;
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = expiry(&mut self.deadline) => false,
            _ = flush.after(self.tick_seen) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The write linger's timing, on tokio's paused clock: time moves only when
    //! every task waits for a timer, so "went out at once" is an exact zero.

    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::time::Instant;

    use super::*;
    use crate::HubConfig;

    fn linger_hub(linger_ms: u64, queue_size: usize) -> Hub {
        Hub::new(HubConfig {
            write_linger: Duration::from_millis(linger_ms),
            queue_size,
            ..HubConfig::default()
        })
        .expect("valid config")
    }

    /// The `data:` values of one chunk.
    fn data(chunk: &Bytes) -> Vec<u64> {
        std::str::from_utf8(chunk)
            .expect("utf-8")
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| d.parse().expect("a number"))
            .collect()
    }

    async fn next(
        s: &mut (impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin),
    ) -> Bytes {
        match s.next().await {
            Some(Ok(b)) => b,
            None => panic!("the stream ended"),
        }
    }

    /// Opens a stream on `topics` as a stream of chunks.
    async fn open_stream(
        hub: &Hub,
        topics: &[&str],
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + use<> {
        let set = TopicSet::parse(topics.iter().copied(), 32).expect("topics");
        open(hub, set, None, None, false)
            .await
            .expect("opened")
            .into_stream()
    }

    /// Opens a stream on `a` whose credentials expire `after` from now, past its
    /// prelude.
    async fn open_expiring(
        hub: &Hub,
        after: Duration,
    ) -> std::pin::Pin<Box<impl Stream<Item = Result<Bytes, std::convert::Infallible>> + use<>>>
    {
        let set = TopicSet::parse(["a"], 32).expect("topic");
        let expires = std::time::SystemTime::now() + after;
        let conn = open(hub, set, None, Some(expires), false)
            .await
            .expect("opened");
        let mut s = Box::pin(conn.into_stream());
        assert!(data(&next(&mut s).await).is_empty(), "the prelude first");
        s
    }

    async fn publish(hub: &Hub, n: u64) {
        hub.publish("a", "n", &n).await.expect("published");
    }

    #[tokio::test]
    async fn a_long_history_is_replayed_a_chunk_at_a_time() {
        // Found by a review: the whole history went into one buffer before
        // anything was written (up to retention x payload x topics per request).
        let hub = Hub::new(HubConfig {
            retention_events: 1000,
            ..HubConfig::default()
        })
        .expect("valid config");
        let first = hub.publish("a", "n", &0u64).await.expect("published");
        let pad = "x".repeat(1000);
        for n in 1..200u64 {
            hub.publish("a", "n", &serde_json::json!([n, pad]))
                .await
                .expect("published");
        }
        let set = TopicSet::parse(["a"], 32).expect("topic");
        let conn = open(&hub, set, Some(vec![first]), None, false)
            .await
            .expect("opened");
        let mut s = Box::pin(conn.into_stream());
        let prelude = next(&mut s).await;
        assert!(prelude.starts_with(b"retry:"), "the prelude first");
        assert!(
            prelude.len() < 1024,
            "without the history: {}",
            prelude.len()
        );
        let mut got = Vec::new();
        let mut chunks = 0;
        while got.len() < 199 {
            let chunk = next(&mut s).await;
            assert!(chunk.len() <= COALESCE_BYTES + 2048, "{}", chunk.len());
            chunks += 1;
            for line in std::str::from_utf8(&chunk).expect("utf-8").lines() {
                if let Some(d) = line.strip_prefix("data: [") {
                    got.push(d.split(',').next().expect("n").parse::<u64>().expect("n"));
                }
            }
        }
        assert_eq!(
            got,
            (1..200).collect::<Vec<_>>(),
            "all of it, in order, once"
        );
        assert!(chunks >= 6, "~200 KB in 32 KiB chunks: {chunks}");
        // Then live.
        hub.publish("a", "n", &7u64).await.expect("published");
        assert_eq!(data(&next(&mut s).await), [7]);
        let replayed = hub
            .render_metrics()
            .lines()
            .find(|l| l.starts_with("herald_events_replayed_total "))
            .map(str::to_owned);
        assert_eq!(
            replayed.as_deref(),
            Some("herald_events_replayed_total 199")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn linger_holds_writes_only_while_events_keep_coming() {
        let hub = linger_hub(100, 256);
        let s = open_stream(&hub, &["a"]).await;
        let mut s = Box::pin(s);
        assert!(data(&next(&mut s).await).is_empty(), "the prelude first");
        // Between two ticks (every 100 ms from the start), not on one.
        tokio::time::sleep(Duration::from_millis(1050)).await;

        // The first event after a quiet spell goes out at once.
        publish(&hub, 1).await;
        let start = Instant::now();
        assert_eq!(data(&next(&mut s).await), [1]);
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Events right after a write wait for the next tick and share one write.
        publish(&hub, 2).await;
        publish(&hub, 3).await;
        assert_eq!(data(&next(&mut s).await), [2, 3]);
        let held = start.elapsed();
        assert!(
            held > Duration::ZERO && held <= Duration::from_millis(100),
            "{held:?}"
        );

        // While they keep coming, each write waits for the following tick.
        publish(&hub, 4).await;
        let start = Instant::now();
        assert_eq!(data(&next(&mut s).await), [4]);
        let held = start.elapsed();
        assert!(
            held > Duration::ZERO && held <= Duration::from_millis(100),
            "{held:?}"
        );

        // A tick with nothing to write ends the busy spell: the stream waits as
        // usual (no chunk, not even empty ones), and the next event goes out at once.
        let quiet = tokio::time::timeout(Duration::from_secs(1), s.next()).await;
        assert!(quiet.is_err(), "nothing to write: {quiet:?}");
        publish(&hub, 5).await;
        let start = Instant::now();
        assert_eq!(data(&next(&mut s).await), [5]);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(hub.inner.metrics.events_delivered.get(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn linger_never_lets_a_busy_topic_overrun_a_stream() {
        // A ring of 8 and a linger of a second: 40 events a millisecond apart
        // would overrun a stream that waited for the tick, so the fanout ticks early.
        let hub = linger_hub(1000, 8);
        let s = open_stream(&hub, &["a"]).await;
        let reader = tokio::spawn(async move {
            let mut s = Box::pin(s);
            let mut got = Vec::new();
            let mut writes = 0;
            while got.len() < 40 {
                let chunk = next(&mut s).await;
                writes += 1;
                got.extend(data(&chunk));
            }
            (got, writes)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        for n in 1..=40 {
            publish(&hub, n).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (got, writes) = reader.await.expect("reader");
        assert_eq!(got, (1..=40).collect::<Vec<_>>());
        assert_eq!(hub.inner.metrics.slow_disconnected.get(), 0);
        // Gathered, not one write per event (the prelude is one of them).
        assert!(writes < 20, "{writes} writes");
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_ends_a_lingering_stream_before_events_that_came_after() {
        // A stream holding writes for the linger (busy) when its credentials
        // expire: what was published after they expired is not written.
        let hub = linger_hub(100, 256);
        let mut s = open_expiring(&hub, Duration::from_secs(1)).await;
        publish(&hub, 1).await;
        assert_eq!(data(&next(&mut s).await), [1]);
        publish(&hub, 2).await;
        assert_eq!(data(&next(&mut s).await), [2], "held for a tick: busy");
        tokio::time::sleep(Duration::from_secs(2)).await;
        publish(&hub, 3).await;
        assert_eq!(next(&mut s).await, hub.inner.retry_frame);
        assert!(s.next().await.is_none(), "the stream ended");

        // Not busy, but holding an event for the linger when they expire: that
        // event is written, nothing is read from the ring after expiry.
        let hub = linger_hub(1000, 256);
        // Ticks every second from the hub's start; expiry between the first two.
        let mut s = open_expiring(&hub, Duration::from_millis(1500)).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        publish(&hub, 1).await;
        assert_eq!(data(&next(&mut s).await), [1], "at once");
        // The next write waits for the tick at 2 s; expiry comes first.
        publish(&hub, 2).await;
        publish(&hub, 3).await;
        let last = next(&mut s).await;
        assert_eq!(data(&last), [2]);
        assert!(last.ends_with(&hub.inner.retry_frame), "{last:?}");
        assert_eq!(hub.inner.metrics.events_delivered.get(), 2, "1 and 2");
        assert!(s.next().await.is_none(), "the stream ended");
    }

    #[tokio::test]
    async fn credentials_that_expired_before_the_stream_opened_open_nothing() {
        let hub = linger_hub(0, 256);
        publish(&hub, 1).await;
        let set = TopicSet::parse(["a"], 32).expect("topic");
        let past = std::time::SystemTime::now() - Duration::from_secs(1);
        let cursor = Some(vec![Position::new(0, 0)]);
        assert!(matches!(
            open(&hub, set, cursor, Some(past), false).await,
            Err(OpenError::Expired)
        ));
        assert_eq!(hub.inner.metrics.events_replayed.get(), 0);
        assert_eq!(
            hub.inner.metrics.connections_total.get(),
            0,
            "nothing opened"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_stream_with_events_still_queued() {
        // Shutdown closes the heartbeat channel; a stream with events waiting
        // notices it before reading them (and an idle one is woken by it).
        let hub = linger_hub(0, 256);
        let s = open_stream(&hub, &["a", "b"]).await;
        let mut s = Box::pin(s);
        assert!(data(&next(&mut s).await).is_empty(), "the prelude first");
        publish(&hub, 1).await;
        assert_eq!(data(&next(&mut s).await), [1]);
        for n in 2..=5 {
            publish(&hub, n).await;
        }
        hub.shutdown();
        assert_eq!(next(&mut s).await, hub.inner.retry_frame);
        assert!(s.next().await.is_none(), "the stream ended");
        assert!(matches!(
            open(
                &hub,
                TopicSet::parse(["a"], 32).expect("topic"),
                None,
                None,
                false
            )
            .await,
            Err(OpenError::ShuttingDown)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_on_several_topics_gets_each_in_order() {
        let hub = linger_hub(0, 256);
        let s = open_stream(&hub, &["a", "b", "c"]).await;
        let mut s = Box::pin(s);
        assert!(data(&next(&mut s).await).is_empty(), "the prelude first");
        let topic = |n: u64| ["a", "b", "c"][(n % 3) as usize];
        // Every topic wakes the stream by itself, at once (not at a heartbeat).
        for n in 1..=6u64 {
            hub.publish(topic(n), "n", &n).await.expect("published");
            let start = Instant::now();
            assert_eq!(data(&next(&mut s).await), [n]);
            assert_eq!(start.elapsed(), Duration::ZERO, "event {n}");
        }
        // Queued on all three: drained together, each topic in order, each event once.
        for n in 7..=30u64 {
            hub.publish(topic(n), "n", &n).await.expect("published");
        }
        let mut got = Vec::new();
        while got.len() < 24 {
            got.extend(data(&next(&mut s).await));
        }
        for t in 0..3u64 {
            let on_t: Vec<u64> = got.iter().copied().filter(|n| n % 3 == t).collect();
            assert!(on_t.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        }
        got.sort_unstable();
        assert_eq!(got, (7..=30).collect::<Vec<_>>());
    }
}
