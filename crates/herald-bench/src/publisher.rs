//! Publishes events at a steady rate through any hub's HTTP publish API, each
//! carrying its sequence number and send time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::subscribers::{now_ns, split_url};

#[derive(Debug, Clone)]
pub(crate) struct PublishPlan {
    /// POST URL with `{topic}` placeholders.
    pub(crate) url: String,
    /// Request body with `{topic}` and `{payload}` placeholders.
    pub(crate) body: String,
    pub(crate) content_type: String,
    pub(crate) topics: usize,
    pub(crate) topic_prefix: String,
    pub(crate) events: u64,
    pub(crate) rate: f64,
    pub(crate) payload_bytes: usize,
    pub(crate) connections: usize,
}

/// What publishing did.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Accepted events per topic index.
    pub(crate) per_topic: Vec<AtomicU64>,
    pub(crate) first_error: std::sync::Mutex<Option<String>>,
    /// Sequence numbers handed to the publishing connections: `0..sent`.
    pub(crate) sent: AtomicU64,
    /// Sequence numbers whose publish failed (an error status, or no answer).
    pub(crate) failed_seqs: std::sync::Mutex<Vec<u64>>,
}

impl Published {
    /// What the hub accepted, for matching deliveries against.
    pub(crate) fn accepted(&self) -> crate::subscribers::Accepted {
        let mut failed = self
            .failed_seqs
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        failed.sort_unstable();
        crate::subscribers::Accepted {
            events: self.sent.load(Ordering::Relaxed),
            failed,
        }
    }
}

/// The JSON payload of event `seq`, padded to about `size` bytes.
pub(crate) fn payload(seq: u64, ts_ns: u64, size: usize) -> String {
    let base = format!("{{\"seq\":{seq},\"ts\":{ts_ns},\"pad\":\"\"}}");
    let pad = size.saturating_sub(base.len());
    format!(
        "{{\"seq\":{seq},\"ts\":{ts_ns},\"pad\":\"{}\"}}",
        "x".repeat(pad)
    )
}

struct Client {
    url: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    async fn post(&mut self, url: &str, content_type: &str, body: &str) -> Result<u16, String> {
        let (addr, host, path) = split_url(url)?;
        if self.stream.is_none() || self.url != format!("{addr}") {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = s.set_nodelay(true);
            self.stream = Some(s);
            self.url = format!("{addr}");
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err("no connection".into());
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if let Err(e) = stream.write_all(req.as_bytes()).await {
            self.stream = None;
            return Err(format!("write: {e}"));
        }
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) => {
                    self.stream = None;
                    return Err("closed".into());
                }
                Ok(n) => n,
                Err(e) => {
                    self.stream = None;
                    return Err(format!("read: {e}"));
                }
            };
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or("bad status line")?;
            let body_len = self.buf.len() - end - 4;
            let mut close = head.contains("connection: close");
            let done = if let Some(cl) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                body_len >= cl
            } else if head.contains("transfer-encoding: chunked") {
                self.buf.ends_with(b"0\r\n\r\n")
            } else {
                // Close-delimited: do not reuse the connection.
                close = true;
                true
            };
            if done {
                if close {
                    self.stream = None;
                }
                return Ok(status);
            }
        }
    }
}

/// Publishes `plan.events` events at `plan.rate` per second, round-robin over the
/// topics. Returns once all requests are answered.
pub(crate) async fn run(
    plan: PublishPlan,
    done: Arc<Published>,
    on_sent: impl Fn() + Send + Sync + 'static,
) {
    let (tx, rx) = async_channel(plan.connections * 4);
    let on_sent = Arc::new(on_sent);
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    let start = Instant::now();
    let start_ns = now_ns();
    let mut workers = Vec::new();
    for _ in 0..plan.connections.max(1) {
        let rx = rx.clone();
        let plan = plan.clone();
        let done = done.clone();
        let on_sent = on_sent.clone();
        workers.push(tokio::spawn(async move {
            let mut client = Client {
                url: String::new(),
                stream: None,
                buf: Vec::new(),
            };
            while let Ok(seq) = recv(&rx).await {
                let topic_idx = (seq % plan.topics.max(1) as u64) as usize;
                let topic = format!("{}{}", plan.topic_prefix, topic_idx);
                // The time the event was due, not the time a connection got to it:
                // a publisher falling behind its schedule shows as latency.
                let ts = start_ns.saturating_add(interval_ns.saturating_mul(seq));
                let body = plan
                    .body
                    .replace("{topic}", &topic)
                    .replace("{payload}", &payload(seq, ts, plan.payload_bytes));
                let url = plan.url.replace("{topic}", &topic);
                match client.post(&url, &plan.content_type, &body).await {
                    Ok(s) if (200..300).contains(&s) => {
                        done.ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = done.per_topic.get(topic_idx) {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => {
                        done.failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = done.failed_seqs.lock() {
                            f.push(seq);
                        }
                        if let Ok(mut e) = done.first_error.lock()
                            && e.is_none()
                        {
                            *e = Some(format!("{other:?}"));
                        }
                    }
                }
                on_sent();
            }
        }));
    }
    drop(rx);
    for seq in 0..plan.events {
        let at = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(at.into()).await;
        if send(&tx, seq).await.is_err() {
            break;
        }
        done.sent.store(seq + 1, Ordering::Relaxed);
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
}

// A small multi-consumer queue over tokio's mpsc + a mutex, to spread sequence
// numbers over the publisher connections.
type Rx = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>;

fn async_channel(cap: usize) -> (tokio::sync::mpsc::Sender<u64>, Rx) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap.max(1));
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

async fn recv(rx: &Rx) -> Result<u64, ()> {
    rx.lock().await.recv().await.ok_or(())
}

async fn send(tx: &tokio::sync::mpsc::Sender<u64>, seq: u64) -> Result<(), ()> {
    tx.send(seq).await.map_err(|_| ())
}
