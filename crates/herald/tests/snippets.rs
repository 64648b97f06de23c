//! The README's snippets, run against a real hub.
//!
//! The README (also the crate docs) has Rust blocks, which are doctests, and
//! blocks in other languages, which are run here, taken from the README text as it
//! is written:
//!
//! - the Python block (`httpx-sse`) runs with `python3` in a virtualenv cached under
//!   the target dir (`httpx` and `httpx-sse` from PyPI, installed once);
//! - the JavaScript block (`EventSource`) and the React hook block (JSX) run in Node
//!   through `tests/snippets/clients.mjs`, with the npm packages of
//!   `tests/browser/package.json` (`npm ci` when missing);
//! - the Rust client block is compiled as a doctest, and is also
//!   `tests/snippets/client.rs`, checked equal to the README's text and run here;
//! - the nginx block runs as a real `nginx` (Debian's package, in the foreground on
//!   a free loopback port, its upstreams pointed at the hub), and a stream through
//!   it must get an event as soon as it is published;
//! - the text blocks showing the 401/403 answers and the `herald.replaced` frame,
//!   and the `[dependencies]` block, are checked against the hub and the workspace.
//!
//! Each client follows a hub, gets a published event, is cut off by a restart of
//! the hub (a new in-memory hub on the same address, so the client's cursor is from
//! before: `herald.reset`), gets events again, and (except React) is replaced on its
//! exclusive session topic and stops. Nothing is skipped: without `python3` (and
//! its `venv` module: Debian's `python3-venv`), `node` (20.19 or newer) and `npm`,
//! or `nginx`, the tests fail and say what to install.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use herald::auth::jwt::{self, Claims, HeraldClaim, JwtAuthorizer, JwtConfig, JwtKey};
use herald::{Hub, HubBuilder, ServeOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

/// The Rust client snippet, exactly as in the README (checked below).
#[path = "snippets/client.rs"]
#[allow(dead_code, unreachable_pub)]
mod client;

const README: &str = include_str!("../README.md");
const CLIENT_RS: &str = include_str!("snippets/client.rs");
/// What the Python snippet needs, pinned.
const PY_PACKAGES: &[&str] = &["httpx==0.28.1", "httpx-sse==0.4.3"];
/// What `clients.mjs` needs from `tests/browser/node_modules`.
const NODE_PACKAGES: &[&str] = &["eventsource", "jsdom", "react", "react-dom", "sucrase"];

/// The contents of every fenced block whose info string is exactly `info`.
fn blocks(info: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in README.lines() {
        match &mut current {
            None if line.strip_prefix("```") == Some(info) => current = Some(String::new()),
            None => {}
            Some(_) if line == "```" => found.push(current.take().unwrap()),
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "an unclosed ```{info} block in README.md"
    );
    found
}

/// The one block of `info` for which `pick` is true.
fn block(info: &str, pick: impl Fn(&str) -> bool) -> String {
    let mut found: Vec<String> = blocks(info).into_iter().filter(|b| pick(b)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one such ```{info} block in README.md"
    );
    found.pop().unwrap()
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/`, from where this test binary is (`target/<profile>/deps/snippets-…`).
fn target_dir() -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.pop(); // the profile
    dir
}

/// Fails with what to install when `program --version` does not run.
fn require(program: &str, install: &str) -> String {
    require_with(program, "--version", install)
}

/// Fails with what to install when `program <version_flag>` does not run.
fn require_with(program: &str, version_flag: &str, install: &str) -> String {
    match StdCommand::new(program).arg(version_flag).output() {
        Ok(out) if out.status.success() => {
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text).trim().to_owned()
        }
        Ok(out) => panic!(
            "`{program} {version_flag}` failed ({}): {}\n{install}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            panic!("cannot run {program} ({e}): the README snippet tests need it.\n{install}")
        }
    }
}

// ---- the hub ------------------------------------------------------------------

/// A hub served with `Hub::serve` on a loopback address.
struct Server {
    hub: Hub,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `hub` with `app` on `addr` (port 0: any), retrying while the address
    /// is still taken by the previous server.
    async fn start(addr: SocketAddr, hub: Hub, app: Router) -> Self {
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    eprintln!("bind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = hub.clone();
        let options = ServeOptions {
            shutdown_grace: Duration::from_secs(2),
            ..ServeOptions::default()
        };
        let task = tokio::spawn(async move {
            serving
                .serve(listener, app, options, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            hub,
            addr,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends every stream (with a `retry:` hint) and stops listening.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the hub stops within 10 s")
            .unwrap();
    }

    /// Waits until a stream listens to `topic` (`want`) or none does (`!want`).
    async fn wait_subscriber(&self, topic: &str, want: bool) {
        let started = Instant::now();
        while self.hub.has_subscriber(topic).await.unwrap() != want {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{topic}: has_subscriber is still {} after 30 s",
                !want
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The hub every client snippet runs against: `session:` topics are exclusive (as
/// the snippets expect), clients reconnect after 200 ms.
fn hub_builder() -> HubBuilder {
    Hub::builder()
        .retry(Duration::from_millis(200))
        .exclusive_prefix("session:")
}

async fn hub() -> Hub {
    hub_builder().build().await.unwrap()
}

/// Opens `GET <path>` and reads until its cursor frame; the stream stays open.
async fn open_stream(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&got).contains("\nid: ") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the stream opens");
    let head = String::from_utf8_lossy(&got).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (s, head)
}

/// Everything until the peer closes (10 s at most).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the connection closes in time")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

// ---- client processes -----------------------------------------------------------

/// A snippet running as a child process, reporting on stdout line by line.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    said: Vec<String>,
}

impl Proc {
    fn spawn(name: &'static str, mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{name} (stderr): {line}");
            }
        });
        Self {
            name,
            stdin: child.stdin.take(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            said: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `pick` (30 s at most); returns it.
    async fn expect(&mut self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(until, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    eprintln!("{}: {line}", self.name);
                    self.said.push(line.clone());
                    if pick(&line) {
                        return line;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    panic!("{} ended before {what}; it said {:?}", self.name, self.said)
                }
                Err(_) => panic!(
                    "{what}: not within 30 s; {} said {:?}",
                    self.name, self.said
                ),
            }
        }
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for a successful exit (10 s at most).
    async fn exits_cleanly(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit; it said {:?}", self.name, self.said))
            .unwrap();
        assert!(
            status.success(),
            "{} exited with {status}; it said {:?}",
            self.name,
            self.said
        );
    }
}

/// A virtualenv with the Python snippet's packages, under the target dir: made and
/// filled once (PyPI), reused after.
fn python_env() -> PathBuf {
    static ONCE: Mutex<()> = Mutex::new(());
    let _once = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let install =
        "Install Python 3 with its venv module (on Debian: apt-get install python3 python3-venv).";
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("{}", require(&python, install));
    let dir = target_dir().join("snippets-venv");
    let marker = dir.join("herald-snippets-packages");
    let wanted = PY_PACKAGES.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = StdCommand::new(&python)
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{python} -m venv` failed: {}{}\n{install}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = StdCommand::new(dir.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PY_PACKAGES)
        .status()
        .unwrap();
    assert!(status.success(), "pip install {wanted} failed");
    std::fs::write(&marker, wanted).unwrap();
    dir
}

/// Node, with the npm packages `clients.mjs` needs (`npm ci` from the committed
/// lock when any is missing or not the pinned version).
fn node_env() -> PathBuf {
    static ONCE: Mutex<()> = Mutex::new(());
    let _once = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let install = "Install them with: apt-get install nodejs npm (scripts/test does).";
    eprintln!("node {}", require("node", install));
    require("npm", install);
    let browser = manifest_dir().join("tests/browser");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(browser.join("package.json")).unwrap())
            .unwrap();
    let current = NODE_PACKAGES.iter().all(|p| {
        let pinned = &manifest["devDependencies"][p];
        assert!(
            pinned.is_string(),
            "{p} is not a devDependency of tests/browser"
        );
        std::fs::read_to_string(browser.join("node_modules").join(p).join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|installed| installed["version"] == *pinned)
    });
    if !current {
        let status = StdCommand::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser)
            .status()
            .expect("cannot run npm");
        assert!(status.success(), "npm ci failed in {}", browser.display());
    }
    manifest_dir().join("tests/snippets")
}

fn node(mode: &str, url: &str) -> Proc {
    let dir = node_env();
    let mut command = Command::new("node");
    command
        .arg(dir.join("clients.mjs"))
        .arg(mode)
        .arg(url)
        .current_dir(&dir);
    Proc::spawn(if mode == "react" { "react" } else { "js" }, command)
}

/// What a client snippet prints at each step of [`follow_through_a_restart`].
struct Says {
    first: fn(&str) -> bool,
    reset: fn(&str) -> bool,
    second: fn(&str) -> bool,
    replaced: fn(&str) -> bool,
}

/// The scenario every client snippet follows, once it subscribed to `comments` and
/// `session:tab-1` on `a` (`a` sees a stream on `ready_topic`): an event; a restart
/// of the hub on the same address (a new in-memory hub, so the client's cursor is
/// from before it: `herald.reset`); an event after the resume; another stream
/// taking the session. Returns the restarted server.
async fn follow_through_a_restart(
    client: &mut Proc,
    a: Server,
    ready_topic: &str,
    says: Says,
) -> Server {
    a.wait_subscriber(ready_topic, true).await;
    let comment = |id, body: &str| ThreadComment {
        id,
        body: body.into(),
    };
    a.hub
        .publish("comments", "comment_created", &comment(7, "Looks good"))
        .await
        .unwrap();
    client.expect("the event", says.first).await;

    let addr = a.addr;
    a.stop().await;
    let hub_b = hub().await;
    let b = Server::start(addr, hub_b.clone(), hub_b.router()).await;
    client.expect("herald.reset", says.reset).await;
    b.wait_subscriber("comments", true).await;
    b.hub
        .publish("comments", "comment_created", &comment(8, "+1"))
        .await
        .unwrap();
    client
        .expect("an event after the resume", says.second)
        .await;

    let (_other, _) = open_stream(b.addr, "/events?topic=session:tab-1").await;
    client.expect("herald.replaced", says.replaced).await;
    b
}

// ---- the client snippets ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_httpx_sse_snippet_follows_resumes_and_stops_when_replaced() {
    let started = Instant::now();
    let venv = python_env();
    let script = tempfile::tempdir().unwrap();
    let follow_py = script.path().join("follow.py");
    std::fs::write(&follow_py, block("python", |_| true)).unwrap();
    eprintln!("venv ready after {:.1} s", started.elapsed().as_secs_f64());

    let hub_a = hub().await;
    let a = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        hub_a.clone(),
        hub_a.router(),
    )
    .await;
    let mut command = Command::new(venv.join("bin/python"));
    command
        .arg(&follow_py)
        .args(["comments", "session:tab-1"])
        .env("HERALD_URL", a.url())
        .env("PYTHONUNBUFFERED", "1");
    let mut py = Proc::spawn("python", command);

    let b = follow_through_a_restart(
        &mut py,
        a,
        "comments",
        Says {
            first: |l| l == "comment_created {'id': 7, 'body': 'Looks good'}",
            reset: |l| l.starts_with("refetch [") && l.contains("'comments'"),
            second: |l| l == "comment_created {'id': 8, 'body': '+1'}",
            replaced: |l| l == "replaced ['session:tab-1']",
        },
    )
    .await;
    py.exits_cleanly().await;
    b.stop().await;
    eprintln!(
        "python snippet passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_eventsource_snippet_handles_events_reset_and_replaced() {
    let started = Instant::now();
    let hub_a = hub().await;
    let a = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        hub_a.clone(),
        hub_a.router(),
    )
    .await;
    let mut js = node("eventsource", &a.url());

    let b = follow_through_a_restart(
        &mut js,
        a,
        "session:tab-1",
        Says {
            first: |l| l == "refetchComment 7",
            reset: |l| l == "refetchEverything comments",
            second: |l| l == "refetchComment 8",
            replaced: |l| l == "showNotice This session is open somewhere else.",
        },
    )
    .await;
    // EventSource.CLOSED, still after 500 ms: it did not reconnect.
    js.expect("the closed source", |l| l.starts_with("readyState"))
        .await;
    assert_eq!(js.said.last().unwrap(), "readyState 2");
    js.exits_cleanly().await;
    b.wait_subscriber("comments", false).await;
    b.stop().await;
    eprintln!(
        "EventSource snippet passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ThreadComment {
    id: u64,
    body: String,
}

type Store = Arc<Mutex<Vec<ThreadComment>>>;

/// The REST side of the README's `Comments` component: list and create a thread's
/// comments; creating publishes `comment_created` on `thread:{id}`.
fn thread_app(hub: &Hub, store: Store) -> Router {
    use axum::Json;
    use axum::extract::{Path, State};
    use axum::routing::{get, post};

    #[derive(Deserialize)]
    struct NewComment {
        body: String,
    }
    async fn list(
        State(store): State<Store>,
        Path(_thread): Path<u64>,
    ) -> Json<Vec<ThreadComment>> {
        Json(store.lock().unwrap().clone())
    }
    async fn create(
        State(store): State<Store>,
        Path(_thread): Path<u64>,
        Json(new): Json<NewComment>,
    ) -> Json<ThreadComment> {
        let mut store = store.lock().unwrap();
        let comment = ThreadComment {
            id: store.len() as u64 + 1,
            body: new.body,
        };
        store.push(comment.clone());
        Json(comment)
    }
    Router::new()
        .route(
            "/threads/{id}/comments",
            get(list)
                .merge(post(create).layer(hub.publish_response("thread:{id}", "comment_created"))),
        )
        .with_state(store)
        .merge(hub.router())
}

async fn post_comment(url: &str, body: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{url}/threads/1/comments"))
        .json(&json!({ "body": body }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn react_hook_snippet_renders_live_updates_and_refetches_after_a_reset() {
    let started = Instant::now();
    let store = Store::default();
    let hub_a = hub().await;
    let a = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        hub_a.clone(),
        thread_app(&hub_a, store.clone()),
    )
    .await;
    let mut react = node("react", &a.url());
    react.expect("connected", |l| l == "DOM live").await;
    a.wait_subscriber("thread:1", true).await;

    // POST → the layer publishes → the hook's handler refetches → the DOM shows it.
    post_comment(&a.url(), "first").await;
    react
        .expect("the new comment", |l| l == "DOM live|first")
        .await;

    // The hub goes away: the component says so.
    let addr = a.addr;
    a.stop().await;
    react
        .expect("disconnected", |l| l == "DOM reconnecting…|first")
        .await;
    // A comment the page was never told about (the hub was down)...
    store.lock().unwrap().push(ThreadComment {
        id: 2,
        body: "second".into(),
    });
    let hub_b = hub().await;
    let b = Server::start(addr, hub_b.clone(), thread_app(&hub_b, store.clone())).await;
    // ...shows up all the same: herald.reset made it refetch.
    react
        .expect("the refetch after herald.reset", |l| {
            l == "DOM live|first|second"
        })
        .await;
    post_comment(&b.url(), "third").await;
    react
        .expect("live again", |l| l == "DOM live|first|second|third")
        .await;

    // Unmounting closes the stream.
    react.send("DONE").await;
    react.expect("unmounted", |l| l == "UNMOUNTED").await;
    react.exits_cleanly().await;
    b.wait_subscriber("thread:1", false).await;
    b.stop().await;
    eprintln!(
        "React hook snippet passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn next_update(updates: &mut mpsc::Receiver<client::Update>) -> client::Update {
    tokio::time::timeout(Duration::from_secs(30), updates.recv())
        .await
        .expect("an update within 30 s")
        .expect("follow ended early")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_snippet_follows_resumes_and_stops_when_replaced() {
    use client::{Comment, Update};

    let started = Instant::now();
    let in_readme = block("rust,no_run", |b| b.contains("herald_client"));
    assert!(
        in_readme == CLIENT_RS,
        "tests/snippets/client.rs differs from the README's herald-client block: copy \
         the block there (or the file into the block)"
    );

    // Publishing needs the snippet's key on this hub.
    let hub_with_key = || {
        hub_builder().authorize(
            JwtAuthorizer::new(&JwtConfig {
                publish_keys: vec!["backend-key-0123456789".into()],
                ..JwtConfig::default()
            })
            .unwrap(),
        )
    };
    let hub_a = hub_with_key().build().await.unwrap();
    let a = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        hub_a.clone(),
        hub_a.router(),
    )
    .await;
    let url = a.url();
    let (tx, mut updates) = mpsc::channel(16);
    let following = tokio::spawn({
        let url = url.clone();
        async move { client::follow(&url, "3f9c", tx).await }
    });

    a.wait_subscriber("session:3f9c", true).await;
    let comment = Comment {
        id: 7,
        body: "Looks good".into(),
    };
    let position = client::announce(&url, &comment).await.unwrap();
    assert!(position.parse::<herald::Position>().is_ok(), "{position}");
    assert_eq!(next_update(&mut updates).await, Update::Comment(comment));
    // Without the key the hub refuses: the snippet's key is what got it through.
    let refused = herald_client::Client::new(&url)
        .unwrap()
        .publish("comments", "comment_created", &1)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused}");

    a.stop().await;
    let hub_b = hub_with_key().build().await.unwrap();
    let b = Server::start(
        url.strip_prefix("http://").unwrap().parse().unwrap(),
        hub_b.clone(),
        hub_b.router(),
    )
    .await;
    match next_update(&mut updates).await {
        Update::Refetch(topics) => assert!(topics.contains(&"comments".to_owned()), "{topics:?}"),
        other => panic!("expected a refetch, got {other:?}"),
    }
    b.wait_subscriber("comments", true).await;
    let again = Comment {
        id: 8,
        body: "+1".into(),
    };
    client::announce(&url, &again).await.unwrap();
    assert_eq!(next_update(&mut updates).await, Update::Comment(again));

    // Another client takes the session: `follow` returns.
    let (_other, _) = open_stream(b.addr, "/events?topic=session:3f9c").await;
    tokio::time::timeout(Duration::from_secs(10), following)
        .await
        .expect("follow returns when replaced")
        .unwrap()
        .unwrap();
    b.stop().await;
    eprintln!(
        "Rust client snippet passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// nginx, stopped when dropped.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_snippet_passes_streams_through_unbuffered() {
    let started = Instant::now();
    eprintln!(
        "{}",
        require_with(
            "nginx",
            "-v",
            "Install it with: apt-get install nginx (only its binary is used, run as a \
             foreground process on a free port)."
        )
    );
    let hub = hub().await;
    let server = Server::start("127.0.0.1:0".parse().unwrap(), hub.clone(), hub.router()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    // The README's block, on loopback: its upstreams become this hub.
    let snippet = block("nginx", |_| true);
    let mut upstreams = 0;
    let mut listens = 0;
    let site: String = snippet
        .lines()
        .map(|line| {
            if line.starts_with("upstream app {") {
                upstreams += 1;
                format!("upstream app {{ server {}; }}\n", server.addr)
            } else if line.trim() == "listen 80;" {
                listens += 1;
                format!("  listen 127.0.0.1:{port};\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(
        (upstreams, listens),
        (1, 1),
        "the README's nginx block changed shape"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{}}\nhttp {{\naccess_log off;\nclient_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\nfastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n{site}}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let _nginx = Nginx(
        StdCommand::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg("stderr")
            .spawn()
            .expect("cannot start nginx"),
    );
    let proxy = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let wait_start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            wait_start.elapsed() < Duration::from_secs(10),
            "nginx does not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A stream through nginx: the first event arrives as soon as it is published,
    // while the stream stays open (nothing waits for a buffer to fill).
    let mut stream = http
        .get(format!("{proxy}/events?topic=comments"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut got = String::new();
    while !got.contains("\nid: ") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the cursor frame comes through at once")
            .unwrap()
            .expect("the stream stays open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Published through nginx too (`location /`).
    let published = http
        .post(format!("{proxy}/publish"))
        .json(&json!({"topic": "comments", "event": "comment_created", "data": {"id": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status().as_u16(), 200);
    let sent = Instant::now();
    while !got.contains("event: comment_created\ndata: {\"id\":7}\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("the event comes through without buffering")
            .unwrap()
            .expect("the stream stays open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    drop(stream);
    server.stop().await;
    eprintln!(
        "nginx snippet passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---- the text blocks ----------------------------------------------------------

#[tokio::test]
async fn refusals_are_the_documented_json() {
    // The README's JWT setup.
    let secret = b"0123456789abcdef-change-me".to_vec();
    let hub = Hub::builder()
        .authorize(
            JwtAuthorizer::new(&JwtConfig {
                key: Some(JwtKey::Secret(secret.clone())),
                cookie: Some("session_token".into()),
                anonymous_topics: vec!["announcements".into()],
                ..JwtConfig::default()
            })
            .unwrap(),
        )
        .build()
        .await
        .unwrap();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), hub.clone(), hub.router()).await;
    let token = jwt::mint(
        &secret,
        &Claims {
            sub: Some("42".into()),
            exp: jwt::now_secs() + 3600,
            nbf: None,
            aud: None,
            iss: None,
            herald: HeraldClaim {
                subscribe: vec!["user:{sub}".into()],
                publish: vec![],
            },
        },
    )
    .unwrap();

    let text = block("text", |b| b.contains("HTTP/1.1 401"));
    let mut checked = 0;
    for exchange in text.split("\n\n") {
        let mut lines = exchange.lines();
        let (Some(request), Some(status), Some(body), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            panic!("expected request, status line and body: {exchange:?}");
        };
        let request = request.replace("<token of user 42>", &token);
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(
            format!("{request} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let answer = read_to_close(&mut s).await;
        let (head, got_body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(head.lines().next().unwrap(), status, "{request}");
        assert_eq!(got_body, body, "{request}");
        if status.contains("401") {
            assert!(
                head.to_ascii_lowercase()
                    .contains("\r\nwww-authenticate: bearer\r\n"),
                "{head}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 2);
    // With the token, the user's own topic opens.
    open_stream(
        server.addr,
        &format!("/events?topic=user:42&access_token={token}"),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_replaced_frame_is_the_documented_one() {
    let frame = block("text", |b| b.contains("event: herald.replaced"));
    let hub = hub().await;
    let server = Server::start("127.0.0.1:0".parse().unwrap(), hub.clone(), hub.router()).await;
    let (mut old, _) = open_stream(server.addr, "/events?topic=session:3f9c").await;
    let (_new, _) = open_stream(server.addr, "/events?topic=session:3f9c").await;
    let ended = read_to_close(&mut old).await;
    assert!(
        ended.contains(&format!("{frame}\n")),
        "{ended:?} lacks {frame:?}"
    );
    server.stop().await;
}

#[test]
fn dependency_versions_match_the_workspace() {
    let deps = block("toml", |b| b.starts_with("[dependencies]"));
    let workspace = std::fs::read_to_string(manifest_dir().join("../../Cargo.toml")).unwrap();
    let version_in = |line: &str| line.split('"').nth(1).map(str::to_owned);
    for line in deps.lines().skip(1) {
        let (name, spec) = line.split_once(" = ").unwrap();
        let wanted = version_in(spec).unwrap();
        let have = if name == "herald" {
            env!("CARGO_PKG_VERSION").to_owned()
        } else {
            workspace
                .lines()
                .find(|l| l.starts_with(&format!("{name} = ")))
                .and_then(version_in)
                .unwrap_or_else(|| panic!("{name} is not a workspace dependency"))
        };
        assert!(
            have == wanted || have.starts_with(&format!("{wanted}.")),
            "README asks for {name} {wanted}, the workspace has {have}"
        );
    }
}
