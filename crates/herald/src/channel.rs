//! A topic's ring: one sender, many receivers, each receiving every frame sent
//! after it subscribed, in order, until it falls `capacity` frames behind.
//!
//! It does what `tokio::sync::broadcast` does for the fanout, with one difference
//! that matters for memory: it holds only the frames some receiver has yet to
//! read. `broadcast` allocates all `capacity` slots up front (~88 bytes each, 22
//! KiB per topic at the default 256), which is most of a connection's memory when
//! each connection has a topic of its own (`user:42`). Here an idle topic holds an
//! empty queue (with at most 8 slots' worth of memory kept from its last burst),
//! and a busy one as many frames as its slowest receiver is behind.
//!
//! One mutex per topic guards the queue; a sender notifies the waiting receivers.
//! Every operation under it is a few loads and stores (no allocation but the
//! queue's occasional growth, no await).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::fanout::DirectStreams;
use crate::sse::Frame;

/// Why [`Receiver::recv`] gave no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// The receiver fell this many frames behind: they are gone.
    Lagged(u64),
    /// The sender is gone and every frame was read.
    Closed,
}

/// Why [`Receiver::try_recv`] gave no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing new yet.
    Empty,
    /// The receiver fell this many frames behind: they are gone.
    Lagged(u64),
    /// The sender is gone and every frame was read.
    Closed,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Receivers waiting in [`Receiver::recv`], and a sender waiting in
    /// [`Sender::drained`] (rare: the receivers then wake once for nothing).
    sent: Notify,
    /// The streams publishers write to (kept here, in the ring's one allocation,
    /// so that a stream reaches it through its receiver).
    direct: DirectStreams,
}

struct Queue {
    /// Frames not yet read by every receiver that was there when each was sent,
    /// with how many of those receivers have yet to read it; the first has
    /// sequence number `head`.
    frames: VecDeque<(Frame, usize)>,
    head: u64,
    capacity: usize,
    receivers: usize,
    /// Receivers waiting in [`Receiver::recv`]: a send with none skips the wake.
    waiting: usize,
    /// A sender waits for the queue to hold at most this many frames.
    drain_below: Option<usize>,
    closed: bool,
}

impl Queue {
    fn tail(&self) -> u64 {
        self.head + self.frames.len() as u64
    }

    /// Drops the frames at the front that every receiver has read; true when
    /// that brought the queue down to what a waiting sender asked for.
    fn trim(&mut self) -> bool {
        while self.frames.front().is_some_and(|(_, left)| *left == 0) {
            self.frames.pop_front();
            self.head += 1;
        }
        // A burst grew the queue; give the memory back once it is read (a topic
        // whose readers keep up keeps its few slots).
        if self.frames.is_empty() && self.frames.capacity() > 8 {
            self.frames = VecDeque::new();
        }
        let drained = self.drain_below.is_some_and(|low| self.frames.len() <= low);
        if drained {
            self.drain_below = None;
        }
        drained
    }
}

/// The sending side; dropping it closes the ring (receivers get what is left,
/// then [`RecvError::Closed`]).
pub(crate) struct Sender(Arc<Shared>);

/// A ring, reached from one of its receivers (it does not keep the ring open).
pub(crate) struct RingRef(Arc<Shared>);

impl RingRef {
    /// The ring's direct streams.
    pub(crate) fn direct(&self) -> &DirectStreams {
        &self.0.direct
    }
}

/// One subscriber's place in the ring.
pub struct Receiver {
    shared: Arc<Shared>,
    /// Sequence number of the next frame to read.
    next: u64,
}

/// A ring that keeps up to `capacity` frames for its slowest receiver.
pub(crate) fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            frames: VecDeque::new(),
            head: 0,
            capacity: capacity.max(1),
            receivers: 1,
            waiting: 0,
            drain_below: None,
            closed: false,
        }),
        sent: Notify::new(),
        direct: DirectStreams::default(),
    });
    let rx = Receiver {
        shared: shared.clone(),
        next: 0,
    };
    (Sender(shared), rx)
}

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    // Every update leaves the queue whole (no panic between its steps): ignore
    // poisoning.
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sender {
    /// Appends `frame` for every current receiver; returns how many there are (0:
    /// the frame is dropped). A receiver more than `capacity` frames behind loses
    /// the oldest.
    pub(crate) fn send(&self, frame: Frame) -> usize {
        let mut q = lock(&self.0);
        let receivers = q.receivers;
        if receivers == 0 || q.closed {
            return 0;
        }
        q.frames.push_back((frame, receivers));
        if q.frames.len() > q.capacity {
            q.frames.pop_front();
            q.head += 1;
            q.trim();
        }
        let wake = q.waiting > 0;
        drop(q);
        if wake {
            self.0.sent.notify_waiters();
        }
        receivers
    }

    /// A new receiver, which gets the frames sent from now on.
    pub(crate) fn subscribe(&self) -> Receiver {
        let mut q = lock(&self.0);
        q.receivers += 1;
        Receiver {
            shared: self.0.clone(),
            next: q.tail(),
        }
    }

    /// Frames some receiver has yet to read.
    pub(crate) fn len(&self) -> usize {
        lock(&self.0).frames.len()
    }

    /// Receivers alive.
    pub(crate) fn receiver_count(&self) -> usize {
        lock(&self.0).receivers
    }

    /// The ring's direct streams.
    pub(crate) fn direct(&self) -> &DirectStreams {
        &self.0.direct
    }

    /// Returns once the receivers have read all but `low` of the frames sent (at
    /// once if they have, or the ring is closed): a sender with many frames to
    /// send paces itself on its readers instead of overrunning them.
    pub(crate) async fn drained(&self, low: usize) {
        loop {
            let drained = self.0.sent.notified();
            tokio::pin!(drained);
            // Registered before the check, so a read between the two is not missed.
            drained.as_mut().enable();
            {
                let mut q = lock(&self.0);
                if q.frames.len() <= low || q.closed {
                    q.drain_below = None;
                    return;
                }
                q.drain_below = Some(low);
            }
            drained.await;
        }
    }

    /// Closes the ring now (as dropping the sender does): receivers get what is
    /// left, then [`RecvError::Closed`], and nothing sent from now on.
    pub(crate) fn close(&self) {
        lock(&self.0).closed = true;
        self.0.sent.notify_waiters();
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// The ring this receiver reads.
    pub(crate) fn ring(&self) -> RingRef {
        RingRef(self.shared.clone())
    }

    /// The next frame if there is one, without waiting.
    pub fn try_recv(&mut self) -> Result<Frame, TryRecvError> {
        take(&self.shared, &mut self.next)
    }

    /// The next frame, waiting for one. Cancel-safe: a frame is taken only when
    /// it is returned.
    pub async fn recv(&mut self) -> Result<Frame, RecvError> {
        let Self { shared, next } = self;
        loop {
            // Registered before the check, so a send between the two is not missed.
            let sent = shared.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            match take(shared, next) {
                Ok(frame) => return Ok(frame),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => {}
            }
            // Counted as waiting until the wait ends or is dropped: a send after
            // the count wakes it; one before it is seen by the count's check.
            if let Some(_waiting) = Waiting::enter(shared, *next) {
                sent.await;
            }
        }
    }
}

/// A receiver counted in [`Queue::waiting`] while it lives.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    /// Counts a receiver whose next frame is `next` as waiting, if that frame is
    /// still to come and the ring open; `None` when there is something to take.
    fn enter(shared: &'a Shared, next: u64) -> Option<Self> {
        let mut q = lock(shared);
        if q.closed || next < q.tail() {
            return None;
        }
        q.waiting += 1;
        Some(Self(shared))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.0).waiting -= 1;
    }
}

/// The frame numbered `*next`, if sent and still held; moves `*next` on.
fn take(shared: &Shared, next: &mut u64) -> Result<Frame, TryRecvError> {
    let mut q = lock(shared);
    if *next < q.head {
        let missed = q.head - *next;
        *next = q.head;
        return Err(TryRecvError::Lagged(missed));
    }
    let i = (*next - q.head) as usize;
    let Some((frame, left)) = q.frames.get_mut(i) else {
        return Err(if q.closed {
            TryRecvError::Closed
        } else {
            TryRecvError::Empty
        });
    };
    let frame = frame.clone();
    *left -= 1;
    *next += 1;
    if i == 0 && *left == 0 && q.trim() {
        shared.sent.notify_waiters();
    }
    Ok(frame)
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut q = lock(&self.shared);
        q.receivers -= 1;
        // The frames it had yet to read no longer wait for it.
        let from = self.next.max(q.head);
        let (head, tail) = (q.head, q.tail());
        for seq in from..tail {
            if let Some((_, left)) = q.frames.get_mut((seq - head) as usize) {
                debug_assert!(*left > 0, "a frame counted this receiver");
                *left = left.saturating_sub(1);
            }
        }
        if q.trim() {
            self.shared.sent.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventName, Position, Topic};

    fn frame(n: u64) -> Frame {
        let t = Topic::new("t").expect("topic");
        Frame::new(
            Position::new(n, 0),
            &Event::new(t, EventName::message(), n.to_string()),
        )
    }

    fn n(f: Frame) -> u64 {
        f.pos.ms
    }

    #[test]
    fn every_receiver_gets_what_was_sent_after_it_subscribed() {
        let (tx, mut a) = channel(4);
        assert_eq!(tx.send(frame(1)), 1);
        let mut b = tx.subscribe();
        assert_eq!(tx.send(frame(2)), 2);
        assert_eq!(n(a.try_recv().expect("1")), 1);
        assert_eq!(n(a.try_recv().expect("2")), 2);
        assert_eq!(a.try_recv().err(), Some(TryRecvError::Empty));
        assert_eq!(n(b.try_recv().expect("2")), 2);
        assert_eq!(b.try_recv().err(), Some(TryRecvError::Empty));
        assert_eq!(tx.len(), 0, "read by all: nothing held");
    }

    #[test]
    fn a_receiver_capacity_behind_lags_and_others_do_not() {
        let (tx, mut slow) = channel(4);
        let mut fast = tx.subscribe();
        for i in 1..=4 {
            tx.send(frame(i));
            assert_eq!(n(fast.try_recv().expect("fast")), i);
        }
        assert_eq!(tx.len(), 4, "held for the slow one");
        tx.send(frame(5));
        assert_eq!(n(fast.try_recv().expect("fast")), 5);
        assert_eq!(slow.try_recv().err(), Some(TryRecvError::Lagged(1)));
        assert_eq!(n(slow.try_recv().expect("then from the oldest kept")), 2);
    }

    #[test]
    fn dropping_a_receiver_frees_what_only_it_had_to_read() {
        let (tx, mut a) = channel(8);
        let b = tx.subscribe();
        for i in 1..=3 {
            tx.send(frame(i));
        }
        for _ in 1..=3 {
            a.try_recv().expect("a");
        }
        assert_eq!(tx.len(), 3);
        drop(b);
        assert_eq!((tx.len(), tx.receiver_count()), (0, 1));
        drop(a);
        assert_eq!(tx.send(frame(4)), 0, "no receiver: dropped");
        assert_eq!(tx.len(), 0);
    }

    #[test]
    fn a_burst_read_by_all_gives_its_memory_back() {
        let (tx, mut a) = channel(256);
        for i in 0..100 {
            tx.send(frame(i));
        }
        assert!(lock(&tx.0).frames.capacity() >= 100);
        for _ in 0..100 {
            a.try_recv().expect("frame");
        }
        assert_eq!(tx.len(), 0);
        assert!(
            lock(&tx.0).frames.capacity() <= 8,
            "slots kept after the burst"
        );
    }

    #[test]
    fn closing_gives_what_is_left_then_closed() {
        let (tx, mut a) = channel(4);
        tx.send(frame(1));
        drop(tx);
        assert_eq!(n(a.try_recv().expect("1")), 1);
        assert_eq!(a.try_recv().err(), Some(TryRecvError::Closed));
    }

    #[test]
    fn a_closed_ring_takes_nothing_more() {
        let (tx, mut a) = channel(4);
        tx.send(frame(1));
        tx.close();
        assert_eq!(tx.send(frame(2)), 0);
        assert_eq!(n(a.try_recv().expect("1")), 1);
        assert_eq!(a.try_recv().err(), Some(TryRecvError::Closed));
    }

    #[tokio::test]
    async fn drained_returns_once_the_slowest_reader_is_close_enough() {
        let (tx, mut a) = channel(8);
        let mut b = tx.subscribe();
        for i in 0..6 {
            tx.send(frame(i));
        }
        let tx = Arc::new(tx);
        let w = tx.clone();
        let waiter = tokio::spawn(async move { w.drained(2).await });
        for _ in 0..6 {
            a.try_recv().expect("a reads");
        }
        for _ in 0..3 {
            b.try_recv().expect("b reads");
        }
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "three frames still unread by b");
        b.try_recv().expect("b reads");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("drained once two are left")
            .expect("task");
        // Nothing to wait for: at once.
        tx.drained(2).await;
        // A reader leaving counts as having read.
        tx.send(frame(6));
        tx.send(frame(7));
        tx.send(frame(8));
        let w = tx.clone();
        let waiter = tokio::spawn(async move { w.drained(0).await });
        for _ in 0..3 {
            a.try_recv().expect("a reads");
        }
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "b has five frames unread");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("drained once b left")
            .expect("task");
    }

    #[tokio::test]
    async fn recv_waits_for_a_send_and_for_the_close() {
        let (tx, mut a) = channel(4);
        let reader = tokio::spawn(async move {
            let first = a.recv().await.map(n);
            let second = a.recv().await.map(n);
            (first, second)
        });
        tokio::task::yield_now().await;
        tx.send(frame(7));
        tokio::task::yield_now().await;
        drop(tx);
        let (first, second) = reader.await.expect("reader");
        assert_eq!(first, Ok(7));
        assert_eq!(second, Err(RecvError::Closed));
    }

    #[test]
    fn many_threads_each_get_every_frame_in_order() {
        let (tx, rx) = channel(1 << 16);
        let mut readers = vec![rx];
        for _ in 0..3 {
            readers.push(tx.subscribe());
        }
        let handles: Vec<_> = readers
            .into_iter()
            .map(|mut rx| {
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        match rx.try_recv() {
                            Ok(f) => got.push(n(f)),
                            Err(TryRecvError::Empty) => std::thread::yield_now(),
                            Err(TryRecvError::Closed) => return got,
                            Err(TryRecvError::Lagged(k)) => panic!("lagged {k}"),
                        }
                    }
                })
            })
            .collect();
        for i in 0..10_000 {
            tx.send(frame(i));
        }
        drop(tx);
        for h in handles {
            assert_eq!(h.join().expect("reader"), (0..10_000).collect::<Vec<_>>());
        }
    }
}
