//! Direct streams: a publisher writes an event straight to the sockets of the
//! streams that are waiting for one, instead of waking their tasks to do it.
//!
//! On the hub's own connections ([`Hub::serve`](crate::Hub::serve)) with no write
//! linger, a stream's receivers and positions ([`Subs`]) sit behind a mutex shared
//! with the publishers of its topics, and its socket is shared too. The stream's
//! task marks itself *idle* (under the mutex) when it has written everything its
//! rings hold, and then waits only for a heartbeat, expiry, a hand-over or the
//! client leaving: it is registered on none of its rings. A publisher pushes the
//! event onto the topic's ring and then, for each idle stream of the topic (when
//! the topic has at most [`INLINE_MAX`] of them), drains that stream's rings and
//! writes the bytes with one non-blocking vectored write. Nothing is woken and
//! nothing is polled: the write is the whole cost of the delivery.
//!
//! When the socket does not take everything at once, or the stream must end, the
//! publisher hands the stream back to its task: the bytes not written are kept
//! (`owed`), the stream is marked busy and its task woken; the task writes them
//! first, with the usual back-pressure and write timeout. Exactly one side writes
//! at a time: publishers only while the stream is idle, the task only after it
//! marked it busy, both under the mutex, so bytes never interleave, and the
//! receivers give every event once, in order, whoever reads them.
//!
//! Nothing is missed between the two: a publisher pushes onto the ring before it
//! takes a stream's mutex, and the task checks the rings under that mutex before it
//! goes idle. Whichever takes the mutex second sees the event.

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::channel::RingRef;
use crate::stream::{Chunk, Subs};

/// Topics with more idle streams than this are not written inline: the publisher
/// wakes their tasks instead, so that both cores share a large fan-out and the
/// publish request is answered at once (see BENCHMARKS.md).
pub(crate) const INLINE_MAX: usize = 128;

/// One direct stream: its state, its socket, and the wake-up for its task.
pub(crate) struct Direct {
    state: Mutex<State>,
    wake: Notify,
    socket: Arc<TcpStream>,
    /// HTTP/1.0: no chunked framing.
    http10: bool,
    /// When the credentials expire: from then on publishers write nothing (the
    /// task, woken by its own timer or by them, ends the stream).
    expires: Option<Instant>,
}

struct State {
    subs: Subs,
    /// The task waits: publishers may read the rings and write.
    idle: bool,
    /// Framed bytes a publisher could not write: the task writes them first.
    owed: Option<Bytes>,
    /// A publisher's write failed: the client is gone.
    broken: bool,
}

/// What the task does next.
pub(crate) enum Work {
    /// Write these bytes as they are (already framed).
    Framed(Bytes),
    /// Write these bytes as a chunk.
    Data(Bytes),
    /// The stream is over: write the last chunk and close.
    End,
    /// The socket failed under a publisher: close.
    Broken,
    /// Nothing to write: the stream is idle; wait.
    Idle,
}

impl Direct {
    pub(crate) fn new(
        subs: Subs,
        socket: Arc<TcpStream>,
        http10: bool,
        expires: Option<Instant>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                subs,
                idle: false,
                owed: None,
                broken: false,
            }),
            wake: Notify::new(),
            socket,
            http10,
            expires,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under this lock leaves the state whole (a panic while
        // holding it is a bug elsewhere, not a half-written state): ignore poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets publishers write to this stream while it is idle: it joins the rings
    /// its receivers read (through their own handles, not the topic map: a topic
    /// evicted meanwhile has a new ring there, or none).
    pub(crate) fn attach(self: &Arc<Self>) {
        for ring in self.rings() {
            // A ring closed already: the receiver says so before the task goes idle.
            ring.direct().attach(self);
        }
    }

    /// Undoes [`Direct::attach`] (before the stream is dropped).
    pub(crate) fn detach(self: &Arc<Self>) {
        for ring in self.rings() {
            ring.direct().detach(self);
        }
    }

    /// The rings, copied out of the state: a ring's list is never locked while
    /// holding a stream's state (publishers lock them the other way round).
    fn rings(&self) -> Vec<RingRef> {
        self.lock().subs.rings()
    }

    /// A publisher's turn, after pushing onto one of this stream's rings: if the
    /// stream is idle, write what its rings hold straight to its socket.
    pub(crate) fn offer(&self) {
        let mut st = self.lock();
        if !st.idle {
            // Its task is writing, and checks the rings before it goes idle again.
            return;
        }
        if self.expires.is_some_and(|at| Instant::now() >= at) {
            // Expired, and its task has not noticed yet: it ends the stream.
            st.idle = false;
            self.wake.notify_one();
            return;
        }
        let mut chunk = Chunk::default();
        let mut delivered = 0;
        let data = match st.subs.drain(&mut chunk, &mut delivered) {
            Ok(()) => {
                st.subs.inner().metrics.events_delivered.inc_by(delivered);
                chunk.finish().unwrap_or_default()
            }
            Err(stop) => st.subs.end(chunk, delivered, stop),
        };
        if !data.is_empty() {
            let mut size = [0u8; 20];
            let size_len = if self.http10 {
                0
            } else {
                crate::server::chunk_size_line(data.len(), &mut size)
            };
            let tail: &[u8] = if self.http10 { b"" } else { b"\r\n" };
            let parts = [&size[..size_len], &data[..], tail];
            let total: usize = parts.iter().map(|p| p.len()).sum();
            let slices = parts.map(IoSlice::new);
            match self.socket.try_write_vectored(&slices) {
                Ok(n) if n == total => {}
                Ok(n) => st.owed = Some(rest(&parts, n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => st.owed = Some(rest(&parts, 0)),
                Err(e) => {
                    tracing::debug!(error = %e, "write to a subscriber failed");
                    st.broken = true;
                }
            }
        }
        if st.owed.is_some() {
            st.subs.inner().metrics.writes_handed_back.inc();
        }
        if st.owed.is_some() || st.broken || st.subs.done {
            st.idle = false;
            self.wake.notify_one();
        }
    }

    /// Wakes the task of an idle stream to read its rings itself (large fan-outs,
    /// closed rings).
    pub(crate) fn hand_over(&self) {
        let mut st = self.lock();
        if st.idle {
            st.idle = false;
            self.wake.notify_one();
        }
    }

    /// Completes when a publisher handed the stream back (it may also complete
    /// once for a hand-over the task noticed otherwise: [`Direct::take`] then
    /// finds nothing and the stream goes idle again).
    pub(crate) async fn handed_over(&self) {
        self.wake.notified().await;
    }

    /// The task's turn: marks the stream busy and says what to write next.
    /// `beat` is a heartbeat to write, `end` asks to end the stream (shutdown,
    /// expired credentials). When there is nothing to write, the stream is idle
    /// again (publishers write) and the task waits.
    pub(crate) fn take(&self, beat: &mut Option<Bytes>, end: bool) -> Work {
        let mut st = self.lock();
        st.idle = false;
        if st.broken {
            return Work::Broken;
        }
        if let Some(owed) = st.owed.take() {
            return Work::Framed(owed);
        }
        if st.subs.done {
            return Work::End;
        }
        let mut chunk = Chunk::default();
        if let Some(b) = beat.take() {
            chunk.push(b);
        }
        if end {
            return Work::Data(st.subs.end_now(chunk));
        }
        let mut delivered = 0;
        match st.subs.drain(&mut chunk, &mut delivered) {
            Ok(()) => {
                st.subs.inner().metrics.events_delivered.inc_by(delivered);
            }
            Err(stop) => return Work::Data(st.subs.end(chunk, delivered, stop)),
        }
        match chunk.finish() {
            Some(b) => Work::Data(b),
            None => {
                st.idle = true;
                Work::Idle
            }
        }
    }
}

/// The bytes of `parts` after the first `written`, in one buffer.
fn rest(parts: &[&[u8]], mut written: usize) -> Bytes {
    let mut out = BytesMut::new();
    for p in parts {
        let skip = written.min(p.len());
        written -= skip;
        out.extend_from_slice(&p[skip..]);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::{Direct, Work, rest};
    use crate::cursor::TopicSet;
    use crate::{Hub, HubConfig};

    #[tokio::test(start_paused = true)]
    async fn publishers_write_nothing_to_a_stream_whose_credentials_expired() {
        let hub = Hub::new(HubConfig::default()).expect("hub");
        let (client, server) = socket_pair().await;
        let set = TopicSet::parse(["a"], 32).expect("topic");
        let expires = SystemTime::now() + Duration::from_secs(1);
        let conn = crate::stream::open(&hub, set, None, Some(expires), false)
            .await
            .expect("opened");
        let at = conn.deadline.as_ref().map(|d| d.deadline());
        let direct = Direct::new(conn.subs, Arc::new(server), true, at);
        direct.attach();
        let read = |mut c: TcpStream| async move {
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_millis(100), c.read(&mut buf)).await;
            (c, n.map(|n| buf[..n.expect("read")].to_vec()))
        };
        // Idle: a publisher writes to it.
        assert!(matches!(direct.take(&mut None, false), Work::Idle));
        hub.publish("a", "n", &1).await.expect("published");
        let (client, got) = read(client).await;
        assert!(got.expect("written").ends_with(b"data: 1\n\n"));
        // Past the expiry, before its task's timer fires: nothing is written, and
        // the task is woken to end the stream.
        tokio::time::advance(Duration::from_secs(2)).await;
        hub.publish("a", "n", &2).await.expect("published");
        let (_client, got) = read(client).await;
        assert!(got.is_err(), "written after expiry: {got:?}");
        tokio::time::timeout(Duration::from_millis(100), direct.handed_over())
            .await
            .expect("the task is woken");
        direct.detach();
    }

    /// A stream that goes direct after its topic was evicted, while a publisher
    /// still held the old ring, is woken when that ring closes. It used to look
    /// its rings up by topic, find none (or the topic's new one), and sit idle on
    /// a closed receiver until its next heartbeat.
    #[tokio::test]
    async fn a_stream_attaching_after_its_topic_was_evicted_is_woken_when_the_ring_closes() {
        let hub = Hub::new(HubConfig::default()).expect("hub");
        let (_client, server) = socket_pair().await;
        let set = TopicSet::parse(["a"], 32).expect("topic");
        let conn = crate::stream::open(&hub, set, None, None, false)
            .await
            .expect("opened");
        let topic = crate::event::Topic::new("a").expect("topic");
        // A publisher between its push and its delivery holds the ring...
        let held = hub.inner.fanout.ring(&topic).expect("ring");
        hub.inner.fanout.push(&topic, frame(&topic, 1));
        // ...when the topic is evicted, and another stream opens it anew.
        hub.inner.fanout.evict(&topic);
        let _other = crate::stream::open(
            &hub,
            TopicSet::parse(["a"], 32).expect("topic"),
            None,
            None,
            false,
        )
        .await
        .expect("opened");
        let direct = Direct::new(conn.subs, Arc::new(server), true, None);
        direct.attach();
        // The frame pushed before the eviction is written; then the stream idles.
        assert!(matches!(direct.take(&mut None, false), Work::Data(_)));
        assert!(matches!(direct.take(&mut None, false), Work::Idle));
        // The publisher lets go: the old ring closes and wakes the stream, which
        // ends (its client resumes from its cursor).
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), direct.handed_over())
            .await
            .expect("the stream is woken when its ring closes");
        assert!(matches!(
            direct.take(&mut None, false),
            Work::Data(_) | Work::End
        ));
        direct.detach();
    }

    /// A connected loopback pair: (client, server).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// A frame on `topic` later than anything the stream has seen.
    fn frame(topic: &crate::event::Topic, n: u64) -> crate::sse::Frame {
        let ev = crate::event::Event::new(
            topic.clone(),
            crate::event::EventName::message(),
            n.to_string(),
        );
        crate::sse::Frame::new(crate::event::Position::new(u64::MAX / 2, n), &ev)
    }

    #[test]
    fn rest_skips_what_was_written_across_parts() {
        let parts: [&[u8]; 3] = [b"5\r\n", b"hello", b"\r\n"];
        for n in 0..=10 {
            let want = &b"5\r\nhello\r\n"[n..];
            assert_eq!(&rest(&parts, n)[..], want, "after {n} bytes");
        }
    }
}
