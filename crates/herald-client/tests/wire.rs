#![allow(clippy::unwrap_used)]
//! The subscription against a scripted server: wire details a real hub does not
//! produce on demand (split CRLF, BOM, odd ids, 204, wrong content type, silence).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald_client::{Client, ClientError, Message, Subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GUARD: Duration = Duration::from_secs(20);
const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

/// What the server does on one connection.
#[derive(Clone)]
struct Script {
    /// Written one after another, each flushed on its own.
    chunks: Vec<Vec<u8>>,
    /// Keep the connection open afterwards (instead of closing it: EOF).
    hold: bool,
}

fn script(chunks: &[&[u8]], hold: bool) -> Script {
    Script {
        chunks: chunks.iter().map(|c| c.to_vec()).collect(),
        hold,
    }
}

/// Serves connection `i` with `scripts[i]` (the last one for any later
/// connection); records each request head.
async fn fake_server(scripts: Vec<Script>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let recorded = heads.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for i in 0.. {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            recorded
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let s = &scripts[i.min(scripts.len() - 1)];
            for chunk in &s.chunks {
                let _ = socket.write_all(chunk).await;
                let _ = socket.flush().await;
                tokio::task::yield_now().await;
            }
            if s.hold {
                held.push(socket);
            }
        }
    });
    (addr, heads)
}

async fn next(sub: &mut Subscription) -> Option<Result<Message, ClientError>> {
    tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("timed out waiting for the subscription")
}

async fn message(sub: &mut Subscription) -> Message {
    next(sub).await.expect("ended").expect("an error")
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn replaced_ends_the_subscription_without_reconnecting() {
    let (addr, heads) = fake_server(vec![script(
        &[
            SSE_HEAD,
            b"retry: 10\n\nid: 5-0\n\n",
            b"retry: 86400000\nevent: herald.replaced\ndata: {\"topics\":[\"session:1\"]}\n\n",
        ],
        true,
    )])
    .await;
    let mut sub = Client::new(format!("http://{addr}"))
        .unwrap()
        .subscribe(["session:1"])
        .stream();
    assert_eq!(message(&mut sub).await, Message::Connected);
    assert_eq!(
        message(&mut sub).await,
        Message::Replaced {
            topics: vec!["session:1".into()]
        }
    );
    assert!(next(&mut sub).await.is_none());
    assert!(next(&mut sub).await.is_none());
    assert_eq!(sub.cursor().as_deref(), Some("5-0"));
    assert_eq!(heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn wire_details_and_cursors_across_reconnections() {
    let (addr, heads) = fake_server(vec![
        script(
            &[
                SSE_HEAD,
                b"\xEF\xBB\xBFretry: 30\r",
                b"\n\r\n: heartbeat\r\nid: c1\r\n\r\n",
                b"event: heartbeat\ndata: {}\n\n",
                b"id: c2\nevent: greet\ndata: hel",
                b"lo\r",
                b"\ndata: world\n\nid: c3\n\nid: c4\ndata: unfinished\n",
            ],
            false,
        ),
        script(&[SSE_HEAD, "id: \u{e9}5\n\n".as_bytes()], false),
        script(
            &[b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"],
            false,
        ),
    ])
    .await;
    let mut sub = Client::new(format!("http://{addr}"))
        .unwrap()
        .subscribe(["a", "b"])
        .bearer("tok")
        .max_backoff(Duration::from_millis(100))
        .stream();
    assert_eq!(message(&mut sub).await, Message::Connected);
    // The BOM, comments, the heartbeat event and id-only frames yield nothing.
    let Message::Event(e) = message(&mut sub).await else {
        panic!("an event")
    };
    assert_eq!(
        (e.cursor.as_str(), e.name.as_str(), e.data.as_str()),
        ("c2", "greet", "hello\nworld")
    );
    assert_eq!(sub.cursor().as_deref(), Some("c2"));
    // EOF: the id-only `c3` counts, the unfinished frame (and its id) does not;
    // the first reconnection waits the server's `retry:` exactly.
    match message(&mut sub).await {
        Message::Disconnected { retry_in, .. } => {
            assert_eq!(retry_in, Duration::from_millis(30));
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(sub.cursor().as_deref(), Some("c3"));
    assert_eq!(message(&mut sub).await, Message::Connected);
    assert!(matches!(
        message(&mut sub).await,
        Message::Disconnected { .. }
    ));
    assert_eq!(sub.cursor().as_deref(), Some("\u{e9}5"));
    // 204: the server says "stop"; terminal.
    let err = next(&mut sub).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::NotEventStream(_)), "{err:?}");
    assert!(next(&mut sub).await.is_none());

    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3);
    assert!(
        heads[0].starts_with("GET /events?topic=a%2Cb HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert_eq!(header(&heads[0], "accept"), Some("text/event-stream"));
    assert_eq!(header(&heads[0], "authorization"), Some("Bearer tok"));
    assert_eq!(header(&heads[0], "last-event-id"), None);
    assert_eq!(header(&heads[1], "last-event-id"), Some("c3"));
    assert_eq!(header(&heads[1], "authorization"), Some("Bearer tok"));
    // A cursor that is not printable ASCII travels in the query instead.
    assert_eq!(header(&heads[2], "last-event-id"), None);
    assert!(
        heads[2].starts_with("GET /events?topic=a%2Cb&last_event_id=%C3%A95 HTTP/1.1\r\n"),
        "{}",
        heads[2]
    );
}

#[tokio::test]
async fn streams_that_end_after_their_opening_lines_back_off() {
    // Found by a review: every parsed line (the opening `retry: 0` too) ended the
    // failure streak, so a hub that ended each stream right after it was retried
    // at once, for ever. Now only an event, or a stream that stayed up, does.
    let (addr, heads) = fake_server(vec![script(
        &[
            SSE_HEAD,
            b"retry: 0

id: 1-0

",
        ],
        false,
    )])
    .await;
    let mut sub = Client::new(format!("http://{addr}"))
        .unwrap()
        .subscribe(["a"])
        .stream();
    let mut waits = Vec::new();
    while waits.len() < 4 {
        match message(&mut sub).await {
            Message::Connected => {}
            Message::Disconnected { retry_in, .. } => waits.push(retry_in),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The hint once, then doubling from 100 ms (with jitter in the upper half).
    assert_eq!(waits[0], Duration::ZERO, "{waits:?}");
    assert!(waits[1] >= Duration::from_millis(100), "{waits:?}");
    assert!(waits[2] >= Duration::from_millis(200), "{waits:?}");
    assert!(waits[3] >= Duration::from_millis(400), "{waits:?}");
    assert!(heads.lock().unwrap().len() >= 4);
}

#[tokio::test]
async fn a_token_source_is_asked_before_every_attempt_and_a_401_retried_once() {
    // The hub ends a stream when its token expires; the reconnection with the
    // old token gets 401. A token source gives a fresh one each time.
    const UNAUTHORIZED: &[u8] = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 49\r\nConnection: close\r\n\r\n{\"error\":\"unauthorized\",\"detail\":\"expired 1234\"}";
    let (addr, heads) = fake_server(vec![
        script(&[SSE_HEAD, b"retry: 10\n\nid: 1-0\n\ndata: 1\n\n"], false),
        script(&[UNAUTHORIZED], false),
        script(&[SSE_HEAD, b"id: 2-0\ndata: 2\n\n"], false),
        script(&[UNAUTHORIZED], false),
    ])
    .await;
    let minted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = minted.clone();
    let mut sub = Client::new(format!("http://{addr}"))
        .unwrap()
        .subscribe(["a"])
        .bearer_with(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move { format!("tok-{n}") }
        })
        .max_backoff(Duration::from_millis(100))
        .stream();
    let mut events = 0;
    let err = loop {
        match next(&mut sub).await.expect("ended without an error") {
            Ok(Message::Event(_)) => events += 1,
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    // Stream, 401 (retried with a new token), stream, then 401 twice in a row.
    assert_eq!(events, 2);
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    let heads = heads.lock().unwrap().clone();
    let tokens: Vec<&str> = heads
        .iter()
        .map(|h| header(h, "authorization").unwrap_or(""))
        .collect();
    assert_eq!(
        tokens,
        [
            "Bearer tok-1",
            "Bearer tok-2",
            "Bearer tok-3",
            "Bearer tok-4",
            "Bearer tok-5"
        ]
    );
    assert_eq!(header(&heads[2], "last-event-id"), Some("1-0"));

    // A fixed token is not retried: the first 401 ends the subscription.
    let (addr, heads) = fake_server(vec![script(&[UNAUTHORIZED], false)]).await;
    let mut sub = Client::new(format!("http://{addr}"))
        .unwrap()
        .subscribe(["a"])
        .bearer("fixed")
        .stream();
    assert!(matches!(
        next(&mut sub).await.unwrap(),
        Err(ClientError::Unauthorized(_))
    ));
    assert_eq!(heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn not_an_event_stream_is_terminal() {
    let (addr, heads) = fake_server(vec![script(
        &[b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi"],
        false,
    )])
    .await;
    let mut sub = Client::new(format!("http://{addr}/base"))
        .unwrap()
        .subscribe(["a"])
        .stream();
    let err = next(&mut sub).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::NotEventStream(m) if m.contains("text/html")),
        "{err:?}"
    );
    assert!(next(&mut sub).await.is_none());
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].starts_with("GET /base/events?topic=a "),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_and_their_body() {
    let (addr, heads) = fake_server(vec![
        script(
            &[b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!"],
            false,
        ),
        script(
            &[b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"error\":\"upstream\",\"detail\":\"is down\"}"],
            false,
        ),
        script(&[SSE_HEAD, b"id: 1\ndata: x\n\n"], true),
    ])
    .await;
    let mut sub = Client::new(format!("http://{addr}"))
        .unwrap()
        .subscribe(["a"])
        .retry(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
        .stream();
    let Message::Disconnected { error, retry_in } = message(&mut sub).await else {
        panic!("expected Disconnected")
    };
    assert!(error.contains("500") && error.contains("oops!"), "{error}");
    assert_eq!(retry_in, Duration::from_millis(10));
    let Message::Disconnected { error, retry_in } = message(&mut sub).await else {
        panic!("expected Disconnected")
    };
    assert!(error.contains("upstream: is down"), "{error}");
    // Second failure in a row: backoff, here capped at its 100 ms floor.
    assert_eq!(retry_in, Duration::from_millis(100));
    assert_eq!(message(&mut sub).await, Message::Connected);
    let Message::Event(e) = message(&mut sub).await else {
        panic!("an event")
    };
    assert_eq!((e.cursor.as_str(), e.data.as_str()), ("1", "x"));
    assert_eq!(heads.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn idle_timeout_reconnects_a_silent_stream() {
    let (addr, heads) = fake_server(vec![script(&[SSE_HEAD, b"id: 7\n\n"], true)]).await;
    let mut sub = Client::new(format!("http://{addr}"))
        .unwrap()
        .subscribe(["a"])
        .retry(Duration::from_millis(10))
        .idle_timeout(Duration::from_millis(100))
        .stream();
    assert_eq!(message(&mut sub).await, Message::Connected);
    let Message::Disconnected { error, .. } = message(&mut sub).await else {
        panic!("expected Disconnected")
    };
    assert!(error.contains("no data"), "{error}");
    assert_eq!(message(&mut sub).await, Message::Connected);
    let heads = heads.lock().unwrap().clone();
    assert_eq!(header(&heads[1], "last-event-id"), Some("7"));
}
