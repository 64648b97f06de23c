//! The embedded backend: one process, history in memory.
//!
//! Positions are `<milliseconds>-<sequence>` like Redis stream IDs. Each topic keeps
//! a ring of its last `retention_events` frames, none older than `retention_ttl`.
//! A topic's *horizon* is the newest position that is no longer retained: a cursor
//! at or after it resumes exactly, a cursor before it gets a reset. A topic unknown
//! to this process (never published here, or forgotten after its history expired)
//! has the horizon of the process start or of the newest forgotten history, so a
//! cursor from before a restart is reset, never silently resumed with a hole.

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

#[derive(Debug)]
struct State {
    rings: HashMap<Topic, Ring>,
    /// Horizon for topics without a ring: the process start, raised to the newest
    /// horizon of any ring forgotten since.
    default_horizon: Position,
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
                default_horizon: Position::new(now_ms(), 0),
            }),
            fanout,
            retention_events,
            retention_ttl,
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
        let mut state = self.lock();
        let mut forgotten = state.default_horizon;
        state.rings.retain(|_, ring| {
            expire(ring, cutoff);
            if ring.frames.is_empty() {
                forgotten = forgotten.max(ring.horizon);
                false
            } else {
                true
            }
        });
        state.default_horizon = forgotten;
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
        let mut state = self.lock();
        let default_horizon = state.default_horizon;
        for event in events {
            let ring = state
                .rings
                .entry(event.topic.clone())
                .or_insert_with(|| Ring {
                    last: default_horizon,
                    horizon: default_horizon,
                    frames: VecDeque::new(),
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
        drop(state);
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
        let default_horizon = state.default_horizon;
        let history = match state.rings.get_mut(topic) {
            // A cursor other than the default horizon is older (events may have
            // expired) or newer than anything this process held (a cursor from
            // before a restart whose clock stepped back): reset.
            None => History {
                frames: Vec::new(),
                reset: after.is_some_and(|p| p != default_horizon),
                head: default_horizon,
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
        // A cursor from before this process started.
        let h = b
            .resume(&Topic::new("other").unwrap(), Some(Position::new(1, 0)))
            .await
            .unwrap();
        assert!(h.reset);
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
        while now_ms() <= ps[0].ms {
            tokio::task::yield_now().await;
        }
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
