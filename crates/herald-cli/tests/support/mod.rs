//! Test helpers: start the real `herald` binary on an ephemeral port, talk HTTP to
//! it, read its event streams with an independent SSE parser (`eventsource-stream`).
#![allow(dead_code, unreachable_pub)]

pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;

/// How long any single wait may take before the test fails (a hang guard, not a
/// performance threshold).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `herald serve`, killed on drop.
pub struct Herald {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Herald {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Self {
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn herald");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("herald listening on http://").nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                panic!("herald did not start: {:?}", log.lock().unwrap());
            }
        };
        Self { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn publish(&self, body: Value) -> (u16, Value) {
        let res = client()
            .post(self.url("/publish"))
            .json(&body)
            .send()
            .await
            .expect("publish");
        let status = res.status().as_u16();
        (status, res.json().await.expect("json answer"))
    }

    /// Posts `body` as is with the given content type.
    pub async fn publish_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let res = client()
            .post(self.url("/publish"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("publish");
        let status = res.status().as_u16();
        (status, res.json().await.expect("json answer"))
    }

    /// Publishes one event and returns its position.
    pub async fn send(&self, topic: &str, event: &str, data: Value) -> String {
        let (status, body) = self
            .publish(serde_json::json!({"topic": topic, "event": event, "data": data}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["position"].as_str().expect("position").to_owned()
    }

    pub async fn status(&self) -> Value {
        get_json(&self.url("/status")).await
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of a metric line `name value`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

/// One received SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub id: String,
    pub event: String,
    pub data: String,
}

impl Ev {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("data is JSON")
    }
}

/// A parser that follows the WHATWG event-stream interpretation
/// (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>):
/// it tracks the last event ID the way a browser does (set at every dispatch, even
/// one with no data) and yields only the events a browser would fire.
#[derive(Default)]
struct Parser {
    buf: Vec<u8>,
    data: String,
    event: String,
    id_buffer: String,
    last_id: String,
    seen_cr: bool,
    /// Events dispatched with their last event ID; id-only dispatches as empty data.
    out: std::collections::VecDeque<Ev>,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.seen_cr {
                self.seen_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.seen_cr = true;
                    self.line();
                }
                b'\n' => self.line(),
                _ => self.buf.push(b),
            }
        }
    }

    fn line(&mut self) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
        if line.is_empty() {
            // Dispatch: the last event ID is set first, even when there is no data.
            self.last_id = self.id_buffer.clone();
            let data = std::mem::take(&mut self.data);
            let event = std::mem::take(&mut self.event);
            let data = data.strip_suffix('\n').map(str::to_owned);
            self.out.push_back(Ev {
                id: self.last_id.clone(),
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data: data.unwrap_or_default(),
            });
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (line.clone(), String::new()),
        };
        match field.as_str() {
            "data" => {
                self.data.push_str(&value);
                self.data.push('\n');
            }
            "event" => self.event = value,
            "id" if !value.contains('\0') => self.id_buffer = value,
            _ => {}
        }
    }
}

/// An open event stream, read with [`Parser`].
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: Parser,
    /// The last event ID, as EventSource keeps it.
    pub last_id: String,
}

impl Sse {
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = client().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = tokio::time::timeout(DEADLINE, req.send())
            .await
            .expect("open in time")
            .expect("open");
        let status = res.status().as_u16();
        assert_eq!(
            status,
            200,
            "stream refused: {}",
            res.text().await.unwrap_or_default()
        );
        let headers = res.headers().clone();
        let mut sse = Sse {
            status,
            headers,
            body: Box::pin(res.bytes_stream()),
            parser: Parser::default(),
            last_id: String::new(),
        };
        // The stream starts with `retry:` and an id-only frame carrying the cursor.
        // (`retry: N` and its blank line dispatch nothing; then the id-only frame.)
        let first = sse.next_raw().await.expect("retry frame");
        assert_eq!(
            first,
            Ev {
                id: String::new(),
                event: "message".into(),
                data: String::new()
            }
        );
        // Then the cursor: an id-only frame, or a `herald.reset` event carrying it.
        let cursor = sse.next_raw().await.expect("cursor frame");
        assert!(
            !cursor.id.is_empty(),
            "the stream starts with its cursor: {cursor:?}"
        );
        if !cursor.data.is_empty() {
            assert_eq!(cursor.event, "herald.reset");
            sse.parser.out.push_front(cursor);
        }
        sse
    }

    /// The next dispatch (including id-only ones, with empty data); `None` at the end.
    pub async fn next_raw(&mut self) -> Option<Ev> {
        loop {
            if let Some(ev) = self.parser.out.pop_front() {
                self.last_id = ev.id.clone();
                return Some(ev);
            }
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("event in time")?;
            let Ok(chunk) = chunk else { return None };
            self.parser.feed(&chunk);
        }
    }

    /// The next event with data (what a browser fires), within [`DEADLINE`]
    /// (heartbeats are comments: they would keep a bare loop waiting for ever).
    pub async fn next(&mut self) -> Ev {
        let next = async {
            loop {
                let ev = self.next_raw().await.expect("stream ended early");
                if !ev.data.is_empty() {
                    return ev;
                }
            }
        };
        tokio::time::timeout(DEADLINE, next)
            .await
            .expect("an event with data in time")
    }

    /// Events with data until the stream ends.
    pub async fn rest(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(ev) = self.next_raw().await {
            if !ev.data.is_empty() {
                out.push(ev);
            }
        }
        out
    }
}

/// Reads a raw HTTP response over a plain TCP socket until `until` appears in it
/// (or the connection ends); returns everything read.
pub async fn raw_get(addr: SocketAddr, request: &str, until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if String::from_utf8_lossy(&buf).contains(until) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Polls `check` until it returns true, failing after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
