//! The embedded backend: one process, history in memory.
//!
//! Positions are `<milliseconds>-<sequence>` like Redis stream IDs. Each topic keeps
//! a ring of its last `retention_events` frames, none older than `retention_ttl`.
//! A topic's *horizon* is the newest position that is no longer retained: a cursor
//! at or after it resumes exactly, a cursor before it gets a reset. A topic whose
//! history expired is forgotten but keeps its horizon (a tombstone, the newest
//! [`MAX_FORGOTTEN`] of them), so its subscribers resume exactly however long it
//! stays quiet. A topic never published here has a mark one millisecond after the
//! process start (raised to the horizon of any tombstone dropped beyond that
//! number), so a cursor from before a restart, even from the millisecond of the
//! restart, is reset, never silently resumed with a hole. A topic without history
//! resumes only a cursor equal to its horizon.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::{Backend, BackendError, BoxFuture, History};
use crate::event::{Event, Position, Topic};
use crate::fanout::Fanout;
use crate::sse::Frame;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct Ring {
    /// Last position assigned in this topic.
    last: Position,
    /// Newest position no longer retained (everything after it is in `frames`).
    horizon: Position,
    frames: VecDeque<Frame>,
}

/// How many forgotten topics keep their horizon (about 100 bytes each).
pub(crate) const MAX_FORGOTTEN: usize = 100_000;

#[derive(Debug)]
struct State {
    rings: HashMap<Topic, Ring>,
    /// Horizons of topics whose history expired, the newest [`MAX_FORGOTTEN`].
    forgotten: HashMap<Topic, Position>,
    /// Topics in the order they were forgotten (possibly twice: the first entry of
    /// a topic forgotten again drops its tombstone early, which only errs towards
    /// a reset).
    forgotten_order: VecDeque<Topic>,
    /// Horizon for topics with neither a ring nor a tombstone: the process start,
    /// raised to the horizon of every tombstone dropped.
    default_horizon: Position,
}

impl State {
    /// The horizon of a topic without a ring.
    fn horizon_of(&self, topic: &Topic) -> Position {
        self.forgotten
            .get(topic)
            .copied()
            .unwrap_or(self.default_horizon)
    }
}

/// The in-memory backend (the default): no dependency, one process.
#[derive(Debug)]
pub struct MemoryBackend {
    /// One lock over all topics, held while a position is assigned, the frame stored
    /// and dispatched, so live order equals position order; never held across an await.
    state: Mutex<State>,
    fanout: Arc<Fanout>,
    retention_events: usize,
    retention_ttl: Duration,
    /// How many tombstones are kept ([`MAX_FORGOTTEN`]).
    max_forgotten: usize,
}

impl MemoryBackend {
    pub(crate) fn new(
        fanout: Arc<Fanout>,
        retention_events: usize,
        retention_ttl: Duration,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                rings: HashMap::new(),
                forgotten: HashMap::new(),
                forgotten_order: VecDeque::new(),
                // A millisecond after now: after every position a previous process
                // on this machine issued, even in the millisecond it stopped in (a
                // cursor from it equal to the mark would resume into a hole).
                default_horizon: Position::new(now_ms().saturating_add(1), 0),
            }),
            fanout,
            retention_events,
            retention_ttl,
            max_forgotten: MAX_FORGOTTEN,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent at each step, so a poisoned
        // lock (a panic elsewhere while holding it) is still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.retention_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops expired frames and forgets topics left with nothing retained.
    pub(crate) fn sweep(&self) {
        let cutoff = now_ms().saturating_sub(self.ttl_ms());
        let mut guard = self.lock();
        let state = &mut *guard;
        let (forgotten, order) = (&mut state.forgotten, &mut state.forgotten_order);
        state.rings.retain(|topic, ring| {
            expire(ring, cutoff);
            if ring.frames.is_empty() {
                forgotten.insert(topic.clone(), ring.horizon);
                order.push_back(topic.clone());
                false
            } else {
                true
            }
        });
        while state.forgotten_order.len() > self.max_forgotten {
            if let Some(topic) = state.forgotten_order.pop_front()
                && let Some(h) = state.forgotten.remove(&topic)
            {
                state.default_horizon = state.default_horizon.max(h);
            }
        }
    }
}

fn expire(ring: &mut Ring, cutoff_ms: u64) {
    while ring.frames.front().is_some_and(|f| f.pos.ms < cutoff_ms) {
        if let Some(f) = ring.frames.pop_front() {
            ring.horizon = f.pos;
        }
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(
        &'a self,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<Vec<Position>, BackendError>> {
        let mut positions = Vec::with_capacity(events.len());
        let mut deliver = Vec::new();
        let now = now_ms();
        let mut guard = self.lock();
        let state = &mut *guard;
        for event in events {
            let ring = state.rings.entry(event.topic.clone()).or_insert_with(|| {
                // A forgotten topic continues from its tombstone.
                let horizon = state
                    .forgotten
                    .remove(&event.topic)
                    .unwrap_or(state.default_horizon);
                Ring {
                    last: horizon,
                    horizon,
                    frames: VecDeque::new(),
                }
            });
            let pos = ring.last.next_at(now);
            ring.last = pos;
            let frame = Frame::new(pos, event);
            if self.retention_events == 0 {
                ring.horizon = pos;
            } else {
                if ring.frames.len() >= self.retention_events
                    && let Some(old) = ring.frames.pop_front()
                {
                    ring.horizon = old.pos;
                }
                ring.frames.push_back(frame.clone());
            }
            // Pushed in position order under the lock; written to idle direct
            // streams after it (socket writes, which must not hold up publishers
            // of other topics).
            if let (_, Some(ring)) = self.fanout.push(&event.topic, frame) {
                deliver.push(ring);
            }
            positions.push(pos);
        }
        drop(guard);
        deliver.iter().for_each(|ring| ring.deliver());
        Box::pin(std::future::ready(Ok(positions)))
    }

    fn resume<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<History, BackendError>> {
        let cutoff = now_ms().saturating_sub(self.ttl_ms());
        let mut state = self.lock();
        let horizon = state.horizon_of(topic);
        let history = match state.rings.get_mut(topic) {
            // Every event the topic had here is at or before its horizon, and
            // every cursor this process issued for it since is its horizon (a
            // subscription's head, or the last event of a forgotten history). A
            // cursor at the horizon misses nothing. Any other may have: older
            // ones (events expired, or from before a restart or another process),
            // newer ones (from another process, or from before a restart whose
            // clock stepped back): reset.
            None => History {
                frames: Vec::new(),
                reset: after.is_some_and(|p| p != horizon),
                head: horizon,
            },
            Some(ring) => {
                expire(ring, cutoff);
                match after {
                    None => History {
                        frames: Vec::new(),
                        reset: false,
                        head: ring.last,
                    },
                    // Older than what is retained, or newer than the topic's
                    // last event (live events up to it would be taken for
                    // duplicates and dropped): reset.
                    Some(p) if p < ring.horizon || p > ring.last => History {
                        frames: Vec::new(),
                        reset: true,
                        head: ring.last,
                    },
                    Some(p) => {
                        let start = ring.frames.partition_point(|f| f.pos <= p);
                        History {
                            frames: ring.frames.range(start..).cloned().collect(),
                            reset: false,
                            head: ring.last,
                        }
                    }
                }
            }
        };
        drop(state);
        Box::pin(std::future::ready(Ok(history)))
    }

    fn listen<'a>(&'a self, _topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BackendError>> {
        // Publishes dispatch straight into this process's fanout.
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(&self, _topic: &Topic) {}

    fn has_subscriber<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(std::future::ready(Ok(self.fanout.has_subscribers(topic))))
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }

    fn retained_topics(&self) -> usize {
        self.lock().rings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventName;

    fn ev(t: &str, d: &str) -> Event {
        Event::new(Topic::new(t).unwrap(), EventName::message(), d.to_owned())
    }

    async fn publish(b: &MemoryBackend, t: &str, n: usize) -> Vec<Position> {
        let evs: Vec<Event> = (0..n).map(|i| ev(t, &i.to_string())).collect();
        b.publish(&evs).await.unwrap()
    }

    #[tokio::test]
    async fn resume_exact_and_reset_when_trimmed() {
        let b = MemoryBackend::new(Arc::new(Fanout::new(8)), 3, Duration::from_secs(60));
        let t = Topic::new("t").unwrap();
        let ps = publish(&b, "t", 5).await;
        assert!(ps.windows(2).all(|w| w[0] < w[1]));
        let h = b.resume(&t, Some(ps[1])).await.unwrap();
        assert!(!h.reset);
        assert_eq!(h.frames.iter().map(|f| f.pos).collect::<Vec<_>>(), ps[2..]);
        assert_eq!(h.head, ps[4]);
        // ps[0] is older than the three retained events.
        let h = b.resume(&t, Some(ps[0])).await.unwrap();
        assert!(h.reset && h.frames.is_empty());
        // A cursor from before this process started, even from the millisecond
        // it started in (found by a flaky test: a restart within a millisecond
        // of an event resumed that event's cursor into the new hub as if exact).
        let started = b
            .resume(&Topic::new("other").unwrap(), None)
            .await
            .unwrap()
            .head;
        let h = b
            .resume(
                &Topic::new("other").unwrap(),
                Some(Position::new(started.ms - 1, 0)),
            )
            .await
            .unwrap();
        assert!(h.reset);
        let h = b
            .resume(&Topic::new("other").unwrap(), Some(Position::new(1, 0)))
            .await
            .unwrap();
        assert!(h.reset);
    }

    /// Waits for the clock to pass `p`'s millisecond.
    async fn after_ms(p: Position) {
        while now_ms() <= p.ms {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn quiet_and_forgotten_topics_resume_exactly() {
        // Found by a review: once any topic's history expired, every cursor on a
        // topic without history (never published, or forgotten) got a reset.
        let b = MemoryBackend::new(Arc::new(Fanout::new(8)), 10, Duration::ZERO);
        let quiet = Topic::new("quiet").unwrap();
        let seen = Topic::new("seen").unwrap();
        let opened = b.resume(&quiet, None).await.unwrap().head;
        let ps = publish(&b, "seen", 2).await;
        publish(&b, "other", 3).await;
        after_ms(ps[1]).await;
        b.sweep();
        assert_eq!(b.retained_topics(), 0);
        let h = b.resume(&quiet, Some(opened)).await.unwrap();
        assert!(!h.reset, "a quiet topic's cursor resumes exactly");
        let h = b.resume(&seen, Some(ps[1])).await.unwrap();
        assert!(!h.reset && h.head == ps[1], "it saw everything: {h:?}");
        assert!(
            b.resume(&seen, Some(ps[0])).await.unwrap().reset,
            "it missed ps[1]"
        );
        let past_it = Position::new(ps[1].ms, ps[1].seq + 1);
        assert!(
            b.resume(&seen, Some(past_it)).await.unwrap().reset,
            "not its cursor"
        );
        // Published again, the topic continues after its tombstone.
        let again = publish(&b, "seen", 1).await;
        let h = b.resume(&seen, Some(ps[1])).await.unwrap();
        assert!(!h.reset && h.frames.len() == 1 && h.frames[0].pos == again[0]);
        assert!(b.resume(&seen, Some(ps[0])).await.unwrap().reset);
        // Any other cursor on a topic without history may have missed events:
        // after the mark (another process's, found by a review: a rolling deploy
        // overlaps two in-memory hubs), before this process, from the future.
        let after_mark = Position::new(opened.ms, opened.seq + 1);
        assert!(b.resume(&quiet, Some(after_mark)).await.unwrap().reset);
        let before = Position::new(opened.ms - 1, 0);
        assert!(b.resume(&quiet, Some(before)).await.unwrap().reset);
        let future = Position::new(now_ms() + 60_000, 0);
        assert!(b.resume(&quiet, Some(future)).await.unwrap().reset);
    }

    #[tokio::test]
    async fn dropped_tombstones_raise_the_default_horizon() {
        let mut b = MemoryBackend::new(Arc::new(Fanout::new(8)), 10, Duration::ZERO);
        b.max_forgotten = 2;
        let mut last = Vec::new();
        for t in ["a", "b", "c"] {
            last.push(publish(&b, t, 1).await[0]);
        }
        after_ms(last[2]).await;
        b.sweep();
        // Two tombstones kept; the third topic's horizon went into the default,
        // and nothing after it is older than the TTL (zero) here.
        let (kept, default) = {
            let state = b.lock();
            (state.forgotten.len(), state.default_horizon)
        };
        assert_eq!(kept, 2);
        assert!(default >= last[0]);
        for (t, p) in ["a", "b", "c"].iter().zip(&last) {
            let h = b.resume(&Topic::new(t).unwrap(), Some(*p)).await.unwrap();
            assert!(!h.reset, "{t}: its last position misses nothing");
            let older = Position::new(p.ms - 1, 0);
            let h = b
                .resume(&Topic::new(t).unwrap(), Some(older))
                .await
                .unwrap();
            assert!(h.reset, "{t}: an older cursor may have missed it");
        }
    }

    #[tokio::test]
    async fn retention_off_resets_any_missed_event() {
        let b = MemoryBackend::new(Arc::new(Fanout::new(8)), 0, Duration::from_secs(60));
        let t = Topic::new("t").unwrap();
        let ps = publish(&b, "t", 2).await;
        assert!(b.resume(&t, Some(ps[0])).await.unwrap().reset);
        assert!(!b.resume(&t, Some(ps[1])).await.unwrap().reset);
    }

    #[tokio::test]
    async fn sweep_forgets_expired_topics_and_keeps_their_horizon() {
        let b = MemoryBackend::new(Arc::new(Fanout::new(8)), 10, Duration::ZERO);
        let ps = publish(&b, "t", 1).await;
        // Positions are stamped with the current millisecond; wait for the next one.
        after_ms(ps[0]).await;
        b.sweep();
        assert_eq!(b.retained_topics(), 0);
        let before = Position::new(ps[0].ms - 1, 0);
        assert!(
            b.resume(&Topic::new("t").unwrap(), Some(before))
                .await
                .unwrap()
                .reset
        );
        assert!(
            !b.resume(&Topic::new("t").unwrap(), Some(ps[0]))
                .await
                .unwrap()
                .reset
        );
    }
}
