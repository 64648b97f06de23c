#![allow(clippy::unwrap_used)]
//! The client against a real hub (the `herald` library, served in-process on
//! 127.0.0.1:0), with a TCP proxy in between that can cut every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald::auth::{AuthError, from_async_fn, from_fn};
use herald::{Hub, HubConfig, ServeOptions};
use herald_client::{Client, ClientError, Event, Message, PublishEvent, Subscription};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// A failure guard only: every wait in these tests ends much sooner when things work.
const GUARD: Duration = Duration::from_secs(20);

fn config() -> HubConfig {
    HubConfig {
        retry: Duration::from_millis(50),
        heartbeat: Duration::from_millis(200),
        ..HubConfig::default()
    }
}

async fn start_hub(config: HubConfig) -> (Hub, SocketAddr) {
    let hub = Hub::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = hub.clone();
    tokio::spawn(async move {
        served
            .serve(
                listener,
                served.router(),
                ServeOptions::default(),
                std::future::pending(),
            )
            .await;
    });
    (hub, addr)
}

fn client(addr: SocketAddr) -> Client {
    Client::new(format!("http://{addr}")).unwrap()
}

/// The next message, whatever it is.
async fn next(sub: &mut Subscription) -> Option<Result<Message, ClientError>> {
    tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("timed out waiting for the subscription")
}

/// Skips connection notices; panics on anything but an event.
async fn next_event(sub: &mut Subscription) -> Event {
    loop {
        match next(sub).await.expect("the subscription ended").unwrap() {
            Message::Event(e) => return e,
            Message::Connected | Message::Disconnected { .. } => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// Waits for the subscription's next stream to open.
async fn connected(sub: &mut Subscription) {
    loop {
        match next(sub).await.expect("the subscription ended").unwrap() {
            Message::Connected => return,
            Message::Disconnected { .. } => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
}

/// Waits for the subscription to notice its stream is gone.
async fn disconnected(sub: &mut Subscription) {
    match next(sub).await.expect("the subscription ended").unwrap() {
        Message::Disconnected { .. } => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Comment {
    id: u64,
    thread: u64,
}

/// A TCP proxy that records each connection's request head and can cut every
/// open connection and refuse new ones.
struct Proxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
    refused: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let (cut, _) = broadcast::channel(4);
        let proxy = Self {
            addr,
            heads: heads.clone(),
            down: down.clone(),
            cut: cut.clone(),
            refused: refused.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if down.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let cut = cut.subscribe();
                tokio::spawn(forward(client, upstream, heads.clone(), cut));
            }
        });
        proxy
    }

    /// Closes every open connection; new ones are closed at once until `restore`.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    mut cut: broadcast::Receiver<()>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    // Read the request head, record it, pass it on.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    heads
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    if server.write_all(&head).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.recv() => {}
    }
}

/// The `last-event-id` header of a recorded request head.
fn last_event_id(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("last-event-id")
            .then(|| value.trim().to_owned())
    })
}

#[tokio::test]
async fn receives_typed_events() {
    let (_hub, addr) = start_hub(config()).await;
    let client = client(addr);
    let mut sub = client.subscribe(["comments"]).stream();
    assert_eq!(sub.topics(), ["comments"]);
    connected(&mut sub).await;

    let sent = Comment { id: 7, thread: 3 };
    let position = client
        .publish("comments", "comment_created", &sent)
        .await
        .unwrap();
    let event = next_event(&mut sub).await;
    assert_eq!(event.name, "comment_created");
    assert_eq!(event.data, r#"{"id":7,"thread":3}"#);
    assert_eq!(event.json::<Comment>().unwrap(), sent);
    // A single-topic cursor is the position itself.
    assert_eq!(event.cursor, position);
    assert_eq!(sub.cursor().as_deref(), Some(position.as_str()));

    // The default event name, and data that is not an object.
    client
        .publisher()
        .publish_batch(&[PublishEvent::new("comments", None, &"plain").unwrap()])
        .await
        .unwrap();
    let event = next_event(&mut sub).await;
    assert_eq!(event.name, "message");
    assert_eq!(event.json::<String>().unwrap(), "plain");
}

#[tokio::test]
async fn reconnect_before_any_event_resumes_from_the_opening_cursor() {
    // The stream's opening id-only frame sets the cursor: a client cut off before
    // its first event still gets what was published meanwhile, and nothing older.
    let (hub, addr) = start_hub(config()).await;
    let proxy = Proxy::start(addr).await;
    let head = hub.publish("t", "old", &0).await.unwrap().to_string();
    let mut sub = client(proxy.addr)
        .subscribe(["t"])
        .max_backoff(Duration::from_millis(300))
        .stream();
    connected(&mut sub).await;
    proxy.cut();
    disconnected(&mut sub).await;
    assert_eq!(sub.cursor().as_deref(), Some(head.as_str()));
    hub.publish("t", "new", &1).await.unwrap();
    proxy.restore();
    let e = next_event(&mut sub).await;
    assert_eq!((e.name.as_str(), e.data.as_str()), ("new", "1"));
    let heads = proxy.heads();
    assert_eq!(last_event_id(&heads[0]), None);
    assert_eq!(last_event_id(heads.last().unwrap()), Some(head));
}

#[tokio::test]
async fn with_topic_names_each_events_topic() {
    let (hub, addr) = start_hub(config()).await;
    let client = client(addr);
    let mut sub = client.subscribe(["a", "b"]).with_topic().stream();
    connected(&mut sub).await;
    hub.publish("b", "n", &serde_json::json!({"k": [1, 2]}))
        .await
        .unwrap();
    hub.publish("a", "n", &7).await.unwrap();
    // (The order across topics is not guaranteed.)
    let mut got = [next_event(&mut sub).await, next_event(&mut sub).await];
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(
        (got[0].topic.as_deref(), got[0].data.as_str()),
        (Some("a"), "7")
    );
    assert_eq!(
        (got[1].topic.as_deref(), got[1].data.as_str()),
        (Some("b"), r#"{"k":[1,2]}"#)
    );
    // Without it: no topic, the data as published.
    let mut plain = client.subscribe(["a"]).stream();
    connected(&mut plain).await;
    hub.publish("a", "n", &8).await.unwrap();
    let ev = next_event(&mut plain).await;
    assert_eq!((ev.topic, ev.data.as_str()), (None, "8"));
}

#[tokio::test]
async fn multi_topic_and_resume_from_a_saved_cursor() {
    let (hub, addr) = start_hub(config()).await;
    let client = client(addr);
    let mut sub = client.subscribe(["comments", "user:42"]).stream();
    connected(&mut sub).await;
    client.publish("user:42", "unread", &3).await.unwrap();
    client.publish("other", "ignored", &0).await.unwrap();
    client
        .publish("comments", "comment_created", &Comment { id: 1, thread: 1 })
        .await
        .unwrap();
    let mut got = [next_event(&mut sub).await, next_event(&mut sub).await];
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got[0].name, "comment_created");
    assert_eq!(got[1].name, "unread");
    assert_eq!(got[1].json::<u32>().unwrap(), 3);
    // A multi-topic cursor names a position per topic and a checksum.
    let cursor = sub.cursor().unwrap();
    assert!(cursor.contains(',') && cursor.contains('~'), "{cursor}");
    drop(sub);

    // Published while nobody listens; resumed later from the saved cursor.
    hub.publish("comments", "late", &1).await.unwrap();
    hub.publish("user:42", "late", &2).await.unwrap();
    hub.publish("comments", "late", &3).await.unwrap();
    let mut resumed = client
        .subscribe(["comments", "user:42"])
        .last_event_id(cursor)
        .stream();
    let mut data: Vec<u32> = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut resumed).await;
        assert_eq!(e.name, "late");
        data.push(e.json().unwrap());
    }
    data.sort_unstable();
    assert_eq!(data, [1, 2, 3]);
}

#[tokio::test]
async fn reconnects_and_resumes_without_loss_or_duplicates() {
    let (hub, addr) = start_hub(config()).await;
    let proxy = Proxy::start(addr).await;
    let publisher = client(addr).publisher();
    let mut sub = client(proxy.addr)
        .subscribe(["comments"])
        .max_backoff(Duration::from_millis(300))
        .stream();
    connected(&mut sub).await;
    for i in 1..=3u64 {
        publisher.publish("comments", "n", &i).await.unwrap();
    }
    for i in 1..=3u64 {
        assert_eq!(next_event(&mut sub).await.json::<u64>().unwrap(), i);
    }
    let cursor_before = sub.cursor().unwrap();
    assert_eq!(proxy.heads().len(), 1);
    assert_eq!(last_event_id(&proxy.heads()[0]), None);

    // Cut off: events published now must arrive after the reconnection.
    proxy.cut();
    disconnected(&mut sub).await;
    for i in 4..=8u64 {
        publisher.publish("comments", "n", &i).await.unwrap();
    }
    // Let at least one attempt be refused while the hub is unreachable.
    while proxy.refused.load(Ordering::SeqCst) == 0 {
        match next(&mut sub).await.unwrap().unwrap() {
            Message::Disconnected { .. } => {}
            other => panic!("unexpected while cut off: {other:?}"),
        }
    }
    proxy.restore();
    connected(&mut sub).await;
    for i in 4..=8u64 {
        let e = next_event(&mut sub).await;
        assert_eq!(e.json::<u64>().unwrap(), i);
    }
    // Nothing more was queued: the next event is the next one published.
    publisher.publish("comments", "n", &9u64).await.unwrap();
    let last = next_event(&mut sub).await;
    assert_eq!(last.json::<u64>().unwrap(), 9);
    assert_eq!(sub.cursor(), Some(last.cursor));

    // The reconnection sent the cursor of the last event seen before the cut.
    let heads = proxy.heads();
    assert_eq!(heads.len(), 2, "one reconnection got through: {heads:?}");
    assert_eq!(last_event_id(&heads[1]), Some(cursor_before));
    drop(hub);
}

#[tokio::test]
async fn eof_reconnects_and_nothing_is_lost_or_repeated() {
    // The connection ends and the next attempt is let through at once: whether an
    // event is published before or after the reconnection, it arrives once.
    let (hub, addr) = start_hub(config()).await;
    let proxy = Proxy::start(addr).await;
    let mut sub = client(proxy.addr).subscribe(["t"]).stream();
    connected(&mut sub).await;
    hub.publish("t", "n", &1).await.unwrap();
    assert_eq!(next_event(&mut sub).await.json::<u32>().unwrap(), 1);
    proxy.cut();
    proxy.restore();
    hub.publish("t", "n", &2).await.unwrap();
    assert_eq!(next_event(&mut sub).await.json::<u32>().unwrap(), 2);
    hub.publish("t", "n", &3).await.unwrap();
    assert_eq!(next_event(&mut sub).await.json::<u32>().unwrap(), 3);
}

#[tokio::test]
async fn reset_when_the_cursor_is_older_than_retention() {
    let (hub, addr) = start_hub(HubConfig {
        retention_events: 2,
        ..config()
    })
    .await;
    let proxy = Proxy::start(addr).await;
    let mut sub = client(proxy.addr)
        .subscribe(["comments"])
        .max_backoff(Duration::from_millis(300))
        .stream();
    connected(&mut sub).await;
    hub.publish("comments", "n", &1).await.unwrap();
    assert_eq!(next_event(&mut sub).await.json::<u32>().unwrap(), 1);

    proxy.cut();
    disconnected(&mut sub).await;
    for i in 2..=6u32 {
        hub.publish("comments", "n", &i).await.unwrap();
    }
    proxy.restore();
    connected(&mut sub).await;
    match next(&mut sub).await.unwrap().unwrap() {
        Message::Reset { topics } => assert_eq!(topics, ["comments"]),
        other => panic!("expected a reset, got {other:?}"),
    }
    // After the reset, live events flow again from the hub's head.
    hub.publish("comments", "n", &7).await.unwrap();
    let e = next_event(&mut sub).await;
    assert_eq!(e.json::<u32>().unwrap(), 7);
    assert_eq!(sub.cursor(), Some(e.cursor));
}

#[tokio::test]
async fn bad_cursor_is_a_terminal_typed_error() {
    let (_hub, addr) = start_hub(config()).await;
    let proxy = Proxy::start(addr).await;
    let mut sub = client(proxy.addr)
        .subscribe(["comments"])
        .last_event_id("not-a-cursor")
        .stream();
    let err = next(&mut sub).await.unwrap().unwrap_err();
    let ClientError::BadRequest(body) = &err else {
        panic!("expected BadRequest, got {err:?}");
    };
    assert_eq!(body.status, 400);
    assert_eq!(body.code, "bad_cursor");
    assert!(!body.detail.is_empty());
    assert_eq!(err.code(), Some("bad_cursor"));
    // The stream ends, and was not retried.
    assert!(next(&mut sub).await.is_none());
    assert!(next(&mut sub).await.is_none());
    assert_eq!(proxy.heads().len(), 1);

    // No topic at all is a bad request too.
    let mut sub = client(addr).subscribe(Vec::<String>::new()).stream();
    let err = next(&mut sub).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("no_topic"));
}

#[tokio::test]
async fn forbidden_is_a_terminal_typed_error() {
    let (hub, addr) = start_hub(config()).await;
    assert!(hub.set_authorizer(from_fn(|_parts, _topic| false)));
    let proxy = Proxy::start(addr).await;
    let mut sub = client(proxy.addr).subscribe(["a", "b"]).stream();
    let err = next(&mut sub).await.unwrap().unwrap_err();
    let ClientError::Forbidden(body) = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert_eq!((body.status, body.code.as_str()), (403, "forbidden"));
    assert_eq!(body.topics, ["a", "b"]);
    assert!(next(&mut sub).await.is_none());
    assert_eq!(proxy.heads().len(), 1);

    let err = client(addr).publish("a", "x", &1).await.unwrap_err();
    assert!(matches!(err, ClientError::Forbidden(_)), "{err:?}");
}

#[tokio::test]
async fn bearer_tokens_and_unauthorized() {
    let (hub, addr) = start_hub(config()).await;
    // `Bearer good` may use `user:*` topics; no or another token is a 401.
    assert!(
        hub.set_authorizer(from_async_fn(|parts, topics| async move {
            let auth = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if auth != Some("Bearer good") {
                return Err(AuthError::Unauthenticated("log in first".into()));
            }
            Ok(topics
                .iter()
                .map(|t| t.as_str().starts_with("user:"))
                .collect())
        }))
    );
    let client = client(addr);

    let mut sub = client.subscribe(["user:1"]).stream();
    let err = next(&mut sub).await.unwrap().unwrap_err();
    let ClientError::Unauthorized(body) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert_eq!((body.status, body.code.as_str()), (401, "unauthorized"));
    assert!(next(&mut sub).await.is_none());

    let mut sub = client.subscribe(["user:1"]).bearer("wrong").stream();
    assert!(matches!(
        next(&mut sub).await.unwrap(),
        Err(ClientError::Unauthorized(_))
    ));

    let mut sub = client
        .subscribe(["user:1", "admin"])
        .bearer("good")
        .stream();
    let err = next(&mut sub).await.unwrap().unwrap_err();
    assert_eq!(err.api_error().unwrap().topics, ["admin"]);

    let mut sub = client.subscribe(["user:1"]).bearer("good").stream();
    connected(&mut sub).await;
    let err = client.publish("user:1", "x", &1).await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    let publisher = client.publisher().key("good");
    publisher.publish("user:1", "x", &1).await.unwrap();
    assert_eq!(next_event(&mut sub).await.json::<u32>().unwrap(), 1);
    let err = publisher.publish("admin", "x", &1).await.unwrap_err();
    assert!(matches!(err, ClientError::Forbidden(_)), "{err:?}");
}

#[tokio::test]
async fn unavailable_is_retried() {
    // One stream at a time: the second subscription gets 503 until the first leaves.
    let (hub, addr) = start_hub(HubConfig {
        max_connections: 1,
        ..config()
    })
    .await;
    let client = client(addr);
    let mut first = client.subscribe(["t"]).stream();
    connected(&mut first).await;
    let mut second = client
        .subscribe(["t"])
        .max_backoff(Duration::from_millis(200))
        .stream();
    match next(&mut second).await.unwrap().unwrap() {
        Message::Disconnected { error, retry_in } => {
            assert!(
                error.contains("503") && error.contains("unavailable"),
                "{error}"
            );
            // The hub's Retry-After (1 s) is honoured.
            assert!(retry_in >= Duration::from_secs(1), "{retry_in:?}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    drop(first);
    connected(&mut second).await;
    hub.publish("t", "n", &1).await.unwrap();
    assert_eq!(next_event(&mut second).await.json::<u32>().unwrap(), 1);
}

#[tokio::test]
async fn publisher_results_and_errors() {
    let (hub, addr) = start_hub(HubConfig {
        max_payload_bytes: 64,
        ..config()
    })
    .await;
    let client = client(addr);
    let publisher = client.publisher();

    let p1 = publisher.publish("t", "x", &1).await.unwrap();
    let ps = publisher
        .publish_batch(&[
            PublishEvent::new("t", Some("x"), &2).unwrap(),
            PublishEvent::new("u", None, &serde_json::json!({"k": true})).unwrap(),
            PublishEvent::new("t", Some("y"), &3).unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(ps.len(), 3);
    let parse = |p: &str| {
        let (ms, seq) = p.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    };
    assert!(parse(&p1) < parse(&ps[0]) && parse(&ps[0]) < parse(&ps[2]));
    let published = hub.status().events_published;
    assert_eq!(published, 4);

    let err = publisher.publish("bad topic!", "x", &1).await.unwrap_err();
    let ClientError::BadRequest(body) = &err else {
        panic!("expected BadRequest, got {err:?}");
    };
    assert_eq!((body.status, body.code.as_str()), (400, "bad_topic"));
    assert!(err.to_string().contains("bad_topic"), "{err}");

    let err = publisher
        .publish("t", "herald.reset", &1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("bad_event_name"));

    // A batch is all or nothing.
    let err = publisher
        .publish_batch(&[
            PublishEvent::new("t", None, &1).unwrap(),
            PublishEvent::new("", None, &2).unwrap(),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("bad_topic"));
    let err = publisher.publish_batch(&[]).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_request"));

    let err = publisher
        .publish("t", "x", &"y".repeat(100))
        .await
        .unwrap_err();
    let ClientError::Status(body) = &err else {
        panic!("expected Status, got {err:?}");
    };
    assert_eq!(
        (body.status, body.code.as_str()),
        (413, "payload_too_large")
    );
    assert_eq!(hub.status().events_published, published);

    // A hub served under a path prefix that does not exist: 404 with the hub's body.
    let err = Client::new(format!("http://{addr}/nowhere/"))
        .unwrap()
        .publish("t", "x", &1)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.code(), Some("not_found"));
}
