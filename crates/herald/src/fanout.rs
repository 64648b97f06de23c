//! The local registry: topic -> subscribers of this process.
//!
//! Each topic with local subscribers has one ring ([`crate::channel`]) of encoded
//! [`Frame`]s; a subscriber is a receiver on it (16 bytes when idle), and a
//! dispatch is one push whatever the number of subscribers. A subscriber that
//! falls more than the ring's capacity behind gets `Lagged` and is disconnected by
//! its stream: publishers never wait for a slow client.
//! (`../shared/notes/dependencies.md` §3 measured this against a queue per subscriber.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::channel::{self, Receiver, Sender};

use crate::direct::{self, Direct};
use crate::event::Topic;
use crate::sse::Frame;

/// Topic -> broadcast ring of this process's subscribers.
#[derive(Debug)]
pub struct Fanout {
    /// Held only for map lookups and inserts, never across an await or a socket write.
    topics: Mutex<HashMap<Topic, Arc<Ring>>>,
    /// Ring size per topic: how far a subscriber may fall behind.
    capacity: usize,
    /// With a write linger: the flush ticks, fired early when a ring fills up.
    flush: Option<Arc<FlushTicks>>,
}

/// The write linger's clock (one for the hub): a tick count, advanced every
/// `write_linger`, and a wake-up for the streams holding a write until the next tick.
///
/// A stream on a busy topic does not wake for each event: it waits for the tick
/// after its previous write and then writes everything that arrived meanwhile. An
/// event that finds a tick already passed since the stream's previous write goes
/// out at once, so a quiet stream gets no added latency.
#[derive(Debug, Default)]
pub(crate) struct FlushTicks {
    ticks: AtomicU64,
    notify: Notify,
}

impl FlushTicks {
    /// The ticks so far.
    pub(crate) fn now(&self) -> u64 {
        self.ticks.load(Ordering::Acquire)
    }

    /// Advances the clock and wakes every stream waiting for it.
    pub(crate) fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Returns once the clock has moved past `seen`.
    pub(crate) async fn after(&self, seen: u64) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a tick between the two is not missed.
        notified.as_mut().enable();
        if self.now() != seen {
            return;
        }
        notified.await;
    }
}

/// One topic's ring, and its direct streams ([`crate::direct`]).
pub struct Ring {
    /// The only sender: dropping the ring closes the channel. The channel holds
    /// the direct streams too: streams reach them through their receivers, not
    /// through the map, so a stream whose topic was evicted meanwhile (a new ring
    /// in the map, or none) still joins the ring it reads.
    tx: Sender,
}

/// Streams that publishers write to while they are idle. Read while writing to
/// them; written when one opens or closes.
///
/// An idle direct stream waits on no ring, so it would not notice its ring
/// closing (an evicted topic): when a ring is dropped, it closes its channel,
/// then marks this list closed and wakes the streams on it, which find the
/// channel closed. A stream that attaches later sees the mark: its receiver is
/// closed already, so its task finds that before it goes idle.
#[derive(Default)]
pub(crate) struct DirectStreams(RwLock<Streams>);

#[derive(Default)]
struct Streams {
    list: Vec<Arc<Direct>>,
    closed: bool,
}

impl DirectStreams {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Streams> {
        // Only push, retain and the close run under the write lock: ignore poisoning.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Streams> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets publishers write to `stream` while it is idle; nothing when the ring
    /// is closed already (the stream's receiver says so).
    pub(crate) fn attach(&self, stream: &Arc<Direct>) {
        let mut s = self.write();
        if !s.closed {
            s.list.push(stream.clone());
        }
    }

    /// Undoes [`DirectStreams::attach`] (before the stream is dropped).
    pub(crate) fn detach(&self, stream: &Arc<Direct>) {
        self.write().list.retain(|d| !Arc::ptr_eq(d, stream));
    }

    /// Marks the list closed and takes the streams on it.
    fn close(&self) -> Vec<Arc<Direct>> {
        let mut s = self.write();
        s.closed = true;
        std::mem::take(&mut s.list)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closed first: a woken stream, or one attaching after the mark, reads
        // `Closed` from its receiver.
        self.tx.close();
        let streams = self.tx.direct().close();
        streams.iter().for_each(|d| d.hand_over());
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("receivers", &self.tx.receiver_count())
            .finish_non_exhaustive()
    }
}

impl Ring {
    fn new(tx: Sender) -> Arc<Self> {
        Arc::new(Self { tx })
    }

    /// After a push: the idle direct streams get what their rings hold, written
    /// here, or (on a topic with many) their tasks are woken to write it.
    pub fn deliver(&self) {
        let streams = self.tx.direct().read();
        if streams.list.len() <= direct::INLINE_MAX {
            streams.list.iter().for_each(|d| d.offer());
        } else {
            streams.list.iter().for_each(|d| d.hand_over());
        }
    }
}

impl Fanout {
    /// A registry whose rings hold `capacity` frames per topic.
    pub fn new(capacity: usize) -> Self {
        Self::with_flush(capacity, None)
    }

    /// A registry that fires `flush` early when a topic's ring is half full, so
    /// streams holding writes for the linger drain it before anyone lags.
    pub(crate) fn with_flush(capacity: usize, flush: Option<Arc<FlushTicks>>) -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            flush,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, Arc<Ring>>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every operation is one insert/remove), so poisoning is ignored.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a subscriber: it receives every frame dispatched from now on.
    pub fn subscribe(&self, topic: &Topic) -> Receiver {
        let mut topics = self.lock();
        match topics.get(topic) {
            Some(ring) => ring.tx.subscribe(),
            None => {
                let (tx, rx) = channel::channel(self.capacity);
                topics.insert(topic.clone(), Ring::new(tx));
                rx
            }
        }
    }

    /// Hands `frame` to every local subscriber of `topic`; returns how many there are.
    pub fn dispatch(&self, topic: &Topic, frame: Frame) -> usize {
        let (n, ring) = self.push(topic, frame);
        if let Some(ring) = ring {
            ring.deliver();
        }
        n
    }

    /// Pushes `frame` onto `topic`'s ring: how many subscribers it has, and the
    /// ring, whose [`Ring::deliver`] the caller must call next (once it holds no
    /// lock: it may write to sockets).
    pub fn push(&self, topic: &Topic, frame: Frame) -> (usize, Option<Arc<Ring>>) {
        let topics = self.lock();
        match topics.get(topic) {
            // No receiver left (`send` gives 0): `release` is about to clean up;
            // nothing to deliver then.
            Some(ring) => {
                let n = ring.tx.send(frame);
                // Streams lingering for the next tick read nothing meanwhile: a
                // busy topic must not overrun them (a tick early costs a write).
                if let Some(flush) = &self.flush
                    && ring.tx.len() > self.capacity / 2
                {
                    flush.tick();
                }
                let direct = n > 0 && !ring.tx.direct().read().list.is_empty();
                (n, direct.then(|| ring.clone()))
            }
            None => (0, None),
        }
    }

    /// Forgets `topic` when its last subscriber is gone (call after dropping the receiver).
    pub(crate) fn release(&self, topic: &Topic) {
        let mut topics = self.lock();
        let gone = if topics
            .get(topic)
            .is_some_and(|ring| ring.tx.receiver_count() == 0)
        {
            topics.remove(topic)
        } else {
            None
        };
        // Dropped after the lock: dropping a ring wakes (and may drop) the direct
        // streams still on it, and a stream dropped releases its topics here.
        drop(topics);
        drop(gone);
    }

    /// Whether `topic` has a local subscriber.
    pub(crate) fn has_subscribers(&self, topic: &Topic) -> bool {
        self.lock()
            .get(topic)
            .is_some_and(|ring| ring.tx.receiver_count() > 0)
    }

    /// `topic`'s ring, if it has one (tests: to hold it as a publisher does).
    #[cfg(test)]
    pub(crate) fn ring(&self, topic: &Topic) -> Option<Arc<Ring>> {
        self.lock().get(topic).cloned()
    }

    /// Frames a topic's ring holds for its slowest subscriber.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits, at most `wait`, until `topic`'s subscribers have read all but `low`
    /// of the frames dispatched to it (at once if there is no such topic).
    pub(crate) async fn drained(&self, topic: &Topic, low: usize, wait: std::time::Duration) {
        let ring = self.lock().get(topic).cloned();
        if let Some(ring) = ring {
            let _ = tokio::time::timeout(wait, ring.tx.drained(low)).await;
        }
    }

    /// Ends every local subscription of `topic` (their streams end and resume).
    pub(crate) fn evict(&self, topic: &Topic) {
        // Closed once no publisher holds it any more; its direct streams are then
        // woken (`Ring`'s drop).
        let ring = self.lock().remove(topic);
        drop(ring);
    }

    /// Topics with at least one local subscriber.
    pub(crate) fn topic_count(&self) -> usize {
        self.lock().len()
    }

    /// Subscriptions (a connection on three topics counts three).
    pub(crate) fn subscription_count(&self) -> usize {
        self.lock()
            .values()
            .map(|ring| ring.tx.receiver_count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventName, Position};

    #[test]
    fn release_removes_only_empty_topics() {
        let f = Fanout::new(4);
        let t = Topic::new("t").unwrap();
        let a = f.subscribe(&t);
        let b = f.subscribe(&t);
        assert_eq!((f.topic_count(), f.subscription_count()), (1, 2));
        drop(a);
        f.release(&t);
        assert_eq!(f.topic_count(), 1);
        drop(b);
        f.release(&t);
        assert_eq!((f.topic_count(), f.subscription_count()), (0, 0));
        let ev = Event::new(t.clone(), EventName::message(), "1");
        assert_eq!(f.dispatch(&t, Frame::new(Position::new(1, 0), &ev)), 0);
    }
}
