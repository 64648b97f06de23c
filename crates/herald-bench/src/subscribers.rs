//! A group of subscriber connections in one process: connect (from many source
//! addresses), read and parse, account every delivery, record latency.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::wire::{Body, Seen, Sse, parse_head};

/// What a group connects to. Sent to worker processes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// Subscribe URLs with `{topic}` and `{i}` placeholders; subscriber i uses i mod len.
    pub(crate) url: Vec<String>,
    pub(crate) topics: usize,
    pub(crate) topic_prefix: String,
    /// Subscribers `first..first + count` of the whole run.
    pub(crate) first: usize,
    pub(crate) count: usize,
    /// Highest sequence number + 1 (bitset size per subscriber).
    pub(crate) max_events: usize,
    pub(crate) connect_concurrency: usize,
    /// Spread client sockets over 127.0.0.2 ..= 127.0.0.(1 + source_ips).
    pub(crate) source_ips: u8,
}

impl Plan {
    pub(crate) fn topic(&self, i: usize) -> String {
        format!("{}{}", self.topic_prefix, i % self.topics.max(1))
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Latency histograms: overall, and one per second of the run.
#[derive(Debug)]
pub(crate) struct Latency {
    pub(crate) all: Histogram<u64>,
    pub(crate) per_second: Vec<Histogram<u64>>,
    /// `ts` of the run's start, for the per-second buckets.
    pub(crate) origin_ns: u64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Latency {
    pub(crate) fn new() -> Self {
        Self {
            all: histogram(),
            per_second: Vec::new(),
            origin_ns: 0,
        }
    }

    fn record(&mut self, sent_ns: u64, recv_ns: u64) {
        let us = recv_ns.saturating_sub(sent_ns) / 1000;
        let us = us.clamp(1, 3_600_000_000);
        self.all.saturating_record(us);
        if self.origin_ns > 0 && recv_ns >= self.origin_ns {
            let sec = usize::try_from((recv_ns - self.origin_ns) / 1_000_000_000)
                .unwrap_or(0)
                .min(3600);
            while self.per_second.len() <= sec {
                self.per_second.push(histogram());
            }
            self.per_second[sec].saturating_record(us);
        }
    }
}

/// One connection's accounting.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) topic: usize,
    /// Distinct sequence numbers seen (any topic; for progress).
    pub(crate) unique: AtomicU64,
    pub(crate) dups: AtomicU64,
    pub(crate) connected: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// Which sequence numbers arrived (a bit each), matched against what the
    /// publisher had accepted for this subscriber's topic at the end.
    pub(crate) seen: Mutex<Vec<u64>>,
}

/// What the publisher had accepted: every sequence number below `events` except
/// `failed` (answered with an error or not at all). Sent to workers as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Accepted {
    pub(crate) events: u64,
    /// Sorted.
    pub(crate) failed: Vec<u64>,
}

impl Accepted {
    fn accepted(&self, seq: u64) -> bool {
        seq < self.events && self.failed.binary_search(&seq).is_err()
    }
}

/// A group of connections and what they saw.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) plan: Plan,
    pub(crate) conns: Vec<Arc<Conn>>,
    pub(crate) latency: Arc<Mutex<Latency>>,
    pub(crate) failed: AtomicU64,
    pub(crate) errors: Mutex<Vec<String>>,
    pub(crate) connect_time: Mutex<Duration>,
    /// Set when the run's drain window is over.
    pub(crate) stopped: AtomicBool,
}

/// What a group reports at the end (also a worker's JSON summary).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) closed_early: u64,
    pub(crate) connect_seconds: f64,
    /// Accepted events of its topic each subscriber received (counted once).
    pub(crate) unique: u64,
    /// Events a subscriber received that are not accepted events of its topic
    /// (another topic's, or a publish that was answered with an error).
    pub(crate) unexpected: u64,
    pub(crate) subscribers_with_unexpected: u64,
    pub(crate) dups: u64,
    pub(crate) expected: u64,
    pub(crate) subscribers_with_loss: u64,
    pub(crate) max_loss: u64,
    pub(crate) subscribers_with_dups: u64,
    /// Recorded latency values (µs) and their counts.
    pub(crate) latency: Vec<(u64, u64)>,
    pub(crate) per_second: Vec<Vec<(u64, u64)>>,
    pub(crate) cpu_seconds: f64,
    pub(crate) first_errors: Vec<String>,
}

fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub(crate) fn from_pairs(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = histogram();
    for &(v, c) in pairs {
        let _ = h.record_n(v.clamp(1, 3_600_000_000), c);
    }
    h
}

impl Group {
    pub(crate) fn new(plan: Plan) -> Arc<Self> {
        let conns = (plan.first..plan.first + plan.count)
            .map(|i| {
                Arc::new(Conn {
                    topic: i % plan.topics.max(1),
                    unique: AtomicU64::new(0),
                    dups: AtomicU64::new(0),
                    connected: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                    seen: Mutex::new(Vec::new()),
                })
            })
            .collect();
        Arc::new(Self {
            plan,
            conns,
            latency: Arc::new(Mutex::new(Latency::new())),
            failed: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            connect_time: Mutex::new(Duration::ZERO),
            stopped: AtomicBool::new(false),
        })
    }

    /// Stops counting: what arrives from now on is ignored (the drain is over).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub(crate) fn connected(&self) -> u64 {
        self.conns
            .iter()
            .filter(|c| c.connected.load(Ordering::Relaxed))
            .count() as u64
    }

    pub(crate) fn attempted(&self) -> u64 {
        self.connected() + self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn unique(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.unique.load(Ordering::Relaxed))
            .sum()
    }

    fn error(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errs) = self.errors.lock()
            && errs.len() < 5
        {
            errs.push(e);
        }
    }

    /// Opens every connection (bounded concurrency); returns when all attempts ended.
    pub(crate) async fn connect_all(self: &Arc<Self>) {
        let started = Instant::now();
        let sem = Arc::new(Semaphore::new(self.plan.connect_concurrency.max(1)));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for (k, conn) in self.conns.iter().enumerate() {
            let permit = match sem.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => break,
            };
            let group = self.clone();
            let conn = conn.clone();
            let done = done_tx.clone();
            let i = self.plan.first + k;
            tokio::spawn(async move {
                let stream = match group.open(i).await {
                    Ok(s) => s,
                    Err(e) => {
                        group.error(e);
                        drop(permit);
                        let _ = done.send(());
                        return;
                    }
                };
                drop(permit);
                let _ = done.send(());
                group.read(stream, &conn).await;
            });
        }
        drop(done_tx);
        let mut n = 0;
        while n < self.conns.len() && done_rx.recv().await.is_some() {
            n += 1;
        }
        if let Ok(mut t) = self.connect_time.lock() {
            *t = started.elapsed();
        }
    }

    async fn open(&self, i: usize) -> Result<(TcpStream, Body, Vec<u8>), String> {
        let template = self
            .plan
            .url
            .get(i % self.plan.url.len().max(1))
            .ok_or("no URL")?;
        let url = template
            .replace("{topic}", &self.plan.topic(i))
            .replace("{i}", &i.to_string());
        let (addr, host, path) = split_url(&url)?;
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if addr.ip().is_loopback() && self.plan.source_ips > 0 {
            // Bind a source address without a port: the port is picked at connect
            // time per destination, so each source address has its own port range.
            let _ = nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            );
            let last = 2 + (i % usize::from(self.plan.source_ips)) as u8;
            socket
                .bind(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(127, 0, 0, last),
                    0,
                )))
                .map_err(|e| format!("bind 127.0.0.{last}: {e}"))?;
        }
        let mut stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
                .await
                .map_err(|_| "no response head in 30s".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before the response head".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = parse_head(&buf) {
                let (status, body, end) = head?;
                if status != 200 {
                    return Err(format!("status {status}"));
                }
                return Ok((stream, body, buf[end..].to_vec()));
            }
            if buf.len() > 64 * 1024 {
                return Err("response head too large".into());
            }
        }
    }

    async fn read(&self, (mut stream, mut body, rest): (TcpStream, Body, Vec<u8>), conn: &Conn) {
        conn.connected.store(true, Ordering::Relaxed);
        let mut sse = Sse::default();
        if let Ok(mut seen) = conn.seen.lock() {
            *seen = vec![0u64; self.plan.max_events.div_ceil(64)];
        }
        let mut pending: Vec<(u64, u64)> = Vec::with_capacity(128);
        let mut buf = vec![0u8; 16 * 1024];
        let mut first = Some(rest);
        loop {
            let n = if let Some(rest) = first.take() {
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                n
            } else {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                }
            };
            let now = now_ns();
            let Ok(mut seen) = conn.seen.lock() else {
                break;
            };
            let stopped = &self.stopped;
            let mut on_event = |s: Seen| {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(seq) = usize::try_from(s.seq) else {
                    return;
                };
                let Some(word) = seen.get_mut(seq / 64) else {
                    return;
                };
                let bit = 1u64 << (seq % 64);
                if *word & bit != 0 {
                    conn.dups.fetch_add(1, Ordering::Relaxed);
                } else {
                    *word |= bit;
                    conn.unique.fetch_add(1, Ordering::Relaxed);
                    pending.push((s.ts_ns, now));
                }
            };
            let decoded = body.decode(&buf[..n], &mut |bytes| sse.feed(bytes, &mut on_event));
            drop(seen);
            if decoded.is_err() {
                break;
            }
            // Record latencies after every read: a subscriber that gets few events
            // must still have them counted before the run ends (an uncontended
            // lock per read is small next to the read itself).
            self.flush(&mut pending);
        }
        self.flush(&mut pending);
        conn.closed.store(true, Ordering::Relaxed);
    }

    fn flush(&self, pending: &mut Vec<(u64, u64)>) {
        if pending.is_empty() {
            return;
        }
        if let Ok(mut lat) = self.latency.lock() {
            for &(sent, recv) in pending.iter() {
                lat.record(sent, recv);
            }
        }
        pending.clear();
    }

    /// Sets the origin of the per-second latency buckets (the publish start).
    pub(crate) fn set_origin(&self, origin_ns: u64) {
        if let Ok(mut lat) = self.latency.lock() {
            lat.origin_ns = origin_ns;
        }
    }

    /// The group's results against what the publisher accepted: each subscriber
    /// is matched event by event against its topic's accepted sequence numbers,
    /// so an event it should not have got cannot make up for one it lost. A
    /// subscriber that never connected lost every event of its topic.
    pub(crate) fn summary(&self, accepted: &Accepted) -> Summary {
        self.stop();
        let mut s = Summary {
            connected: self.connected(),
            failed: self.failed.load(Ordering::Relaxed),
            connect_seconds: self
                .connect_time
                .lock()
                .map(|t| t.as_secs_f64())
                .unwrap_or(0.0),
            ..Summary::default()
        };
        let topics = self.plan.topics.max(1) as u64;
        for c in &self.conns {
            let mine = (c.topic as u64..accepted.events)
                .step_by(topics as usize)
                .filter(|&q| accepted.accepted(q));
            let expected = mine.clone().count() as u64;
            let (received, unexpected) = match c.seen.lock() {
                Ok(seen) if c.connected.load(Ordering::Relaxed) => {
                    let bit = |q: u64| {
                        seen.get((q / 64) as usize)
                            .is_some_and(|w| w & (1 << (q % 64)) != 0)
                    };
                    let received = mine.filter(|&q| bit(q)).count() as u64;
                    let all: u64 = seen.iter().map(|w| u64::from(w.count_ones())).sum();
                    (received, all - received)
                }
                _ => (0, 0),
            };
            let dups = c.dups.load(Ordering::Relaxed);
            s.expected += expected;
            s.unique += received;
            s.unexpected += unexpected;
            s.dups += dups;
            let lost = expected - received;
            if lost > 0 {
                s.subscribers_with_loss += 1;
                s.max_loss = s.max_loss.max(lost);
            }
            if unexpected > 0 {
                s.subscribers_with_unexpected += 1;
            }
            if dups > 0 {
                s.subscribers_with_dups += 1;
            }
            if c.closed.load(Ordering::Relaxed) {
                s.closed_early += 1;
            }
        }
        if let Ok(lat) = self.latency.lock() {
            s.latency = pairs(&lat.all);
            s.per_second = lat.per_second.iter().map(pairs).collect();
        }
        s.first_errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        s
    }
}

/// `http://host:port/path?q` -> (address, host header, path).
pub(crate) fn split_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported: {url}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("no IPv4 address for {host}"))?;
    Ok((addr, host.to_owned(), path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(subscribers: usize, topics: usize, events: usize) -> Arc<Group> {
        Group::new(Plan {
            url: vec!["http://127.0.0.1:1/e?t={topic}".into()],
            topics,
            topic_prefix: "t".into(),
            first: 0,
            count: subscribers,
            max_events: events,
            connect_concurrency: 1,
            source_ips: 0,
        })
    }

    /// Marks `conn` connected and as having seen `seqs`.
    fn saw(g: &Group, conn: usize, seqs: &[u64]) {
        let c = &g.conns[conn];
        c.connected.store(true, Ordering::Relaxed);
        let mut seen = c.seen.lock().unwrap();
        *seen = vec![0; g.plan.max_events.div_ceil(64)];
        for &q in seqs {
            seen[(q / 64) as usize] |= 1 << (q % 64);
        }
    }

    #[test]
    fn deliveries_are_matched_event_by_event() {
        // Found by a review: loss was expected - distinct seen, so an event of
        // another topic made up for a lost one.
        let g = group(2, 2, 6);
        // Subscriber 0 (topic 0: 0, 2, 4) lost 4 and got topic 1's 1 instead;
        // subscriber 1 (topic 1: 1, 3, 5) got all of its own.
        saw(&g, 0, &[0, 2, 1]);
        saw(&g, 1, &[1, 3, 5]);
        let s = g.summary(&Accepted {
            events: 6,
            failed: vec![],
        });
        assert_eq!((s.expected, s.unique), (6, 5));
        assert_eq!((s.subscribers_with_loss, s.max_loss), (1, 1));
        assert_eq!((s.unexpected, s.subscribers_with_unexpected), (1, 1));
    }

    #[test]
    fn failed_publishes_are_not_expected_and_never_connected_subscribers_lost_all() {
        let g = group(3, 1, 4);
        // Event 2's publish failed, yet subscriber 0 got it; subscriber 2 never
        // connected.
        saw(&g, 0, &[0, 1, 2, 3]);
        saw(&g, 1, &[0, 1, 3]);
        let s = g.summary(&Accepted {
            events: 4,
            failed: vec![2],
        });
        assert_eq!(
            s.expected, 9,
            "three accepted events for each of three subscribers"
        );
        assert_eq!(s.unique, 6);
        assert_eq!((s.subscribers_with_loss, s.max_loss), (1, 3));
        assert_eq!((s.unexpected, s.subscribers_with_unexpected), (1, 1));
    }
}
