//! The library's helpers: the builder, route selection, broadcast, per-user topics
//! and exclusive (per-session) topics, over real loopback sockets.
//! (Exclusive topics across instances, on Redis, are tested in herald-cli's `redis` tests.)

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::{open_stream, read_to_close, serve};

/// Sends a request with `Connection: close` and returns the whole answer.
async fn request(addr: std::net::SocketAddr, head: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{head}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    read_to_close(&mut s).await
}

#[tokio::test]
async fn builder_applies_every_setting() {
    let hub = herald::Hub::builder()
        .heartbeat(Duration::from_millis(250))
        .retry(Duration::from_millis(1500))
        .retention(3, Duration::from_secs(60))
        .max_connections(7)
        .max_topics(2)
        .max_payload_bytes(100)
        .queue_size(16)
        .cors_origin("https://app.example.com")
        .broadcast_topic("all")
        .exclusive_prefix("session:")
        .build()
        .await
        .unwrap();
    let c = hub.config();
    assert_eq!(c.heartbeat, Duration::from_millis(250));
    assert_eq!(c.retry, Duration::from_millis(1500));
    assert_eq!(
        (c.retention_events, c.retention_ttl),
        (3, Duration::from_secs(60))
    );
    assert_eq!(
        (
            c.max_connections,
            c.max_topics,
            c.max_payload_bytes,
            c.queue_size
        ),
        (7, 2, 100, 16)
    );
    assert_eq!(c.cors_origins, ["https://app.example.com"]);
    assert_eq!(c.broadcast_topic.as_deref(), Some("all"));
    assert!(c.is_exclusive("session:1") && !c.is_exclusive("user:1"));

    let addr = serve(hub.router()).await;
    let (mut s, head) = open_stream(addr, "/events?topic=a", "").await;
    assert!(head.contains("retry: 1500\n"), "{head}");
    // Heartbeats arrive on their own, at the set pace: three of them could not
    // arrive within the read deadline (20 s) at the default 15 s.
    for _ in 0..3 {
        s.until(": heartbeat").await;
    }
    // The limits answer with JSON errors and publish nothing.
    let big = json!({"topic": "a", "data": "x".repeat(200)}).to_string();
    let answer = request(addr, "POST /publish HTTP/1.1", &big).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = request(addr, "GET /events?topic=a,b,c HTTP/1.1", "").await;
    assert!(answer.contains(r#""error":"too_many_topics""#), "{answer}");
}

#[tokio::test]
async fn builder_refuses_bad_settings_with_typed_errors() {
    for builder in [
        herald::Hub::builder().broadcast_topic("two words"),
        herald::Hub::builder().exclusive_prefix(""),
        herald::Hub::builder().exclusive_prefix("a,b"),
        herald::Hub::builder().max_topics(0),
    ] {
        let err = builder.build().await.unwrap_err();
        assert!(matches!(err, herald::HubError::Config(_)), "{err}");
    }
    // Redis that is not there: a typed error, not a hang or a panic.
    let err = herald::Hub::builder()
        .redis("not a url")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, herald::HubError::Redis(_)), "{err}");
}

#[tokio::test]
async fn builder_installs_the_authorizer() {
    let hub = herald::Hub::builder()
        .authorize(herald::auth::from_fn(|_, topic| topic.as_str() == "open"))
        .build()
        .await
        .unwrap();
    let addr = serve(hub.router()).await;
    let answer = request(addr, "GET /events?topic=open,secret HTTP/1.1", "").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("secret"), "{answer}");
    open_stream(addr, "/events?topic=open", "").await;
}

#[tokio::test]
async fn events_only_routes_merge_into_an_app_with_its_own_fallback() {
    let hub = herald::Hub::builder().build().await.unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .merge(hub.routes(herald::Routes {
            health: true,
            ..herald::Routes::EVENTS_ONLY
        }))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "app 404") });
    let addr = serve(app).await;
    let (mut s, _) = open_stream(addr, "/events?topic=t", "").await;
    hub.publish("t", "e", &1).await.unwrap();
    s.until("event: e\ndata: 1\n").await;
    assert!(
        request(addr, "GET /health/live HTTP/1.1", "")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Not mounted: the app's own fallback answers.
    for path in ["POST /publish", "GET /metrics", "GET /status"] {
        let answer = request(addr, &format!("{path} HTTP/1.1"), "{}").await;
        assert!(
            answer.starts_with("HTTP/1.1 404") && answer.ends_with("app 404"),
            "{answer}"
        );
    }
    assert!(request(addr, "GET / HTTP/1.1", "").await.ends_with("home"));
}

#[tokio::test]
async fn broadcast_reaches_every_stream_without_asking_or_authorization() {
    let hub = herald::Hub::builder()
        .broadcast_topic("announcements")
        .authorize(herald::auth::from_fn(|_, topic| {
            topic.as_str() != "announcements"
        }))
        .build()
        .await
        .unwrap();
    let addr = serve(hub.router()).await;
    let (mut a, _) = open_stream(addr, "/events?topic=comments", "").await;
    let (mut b, head_b) = open_stream(addr, "/events?topic=user:1,user:2", "").await;
    // Asking for it explicitly is still refused by the authorizer.
    let answer = request(addr, "GET /events?topic=announcements HTTP/1.1", "").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    hub.broadcast("maintenance", &json!({"in_minutes": 5}))
        .await
        .unwrap();
    for s in [&mut a, &mut b] {
        s.until("event: maintenance\ndata: {\"in_minutes\":5}\n")
            .await;
    }
    // The broadcast topic is part of the stream's cursor: a resume replays it.
    let cursor = head_b
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .to_owned();
    drop(b);
    hub.broadcast("second", &2).await.unwrap();
    let (mut b, _) = open_stream(
        addr,
        "/events?topic=user:1,user:2",
        &format!("Last-Event-ID: {cursor}\r\n"),
    )
    .await;
    let got = b.until("event: second\ndata: 2\n").await;
    assert!(
        got.contains("event: maintenance"),
        "both broadcasts replayed: {got}"
    );

    let plain = herald::Hub::builder().build().await.unwrap();
    assert!(matches!(
        plain.broadcast("x", &1).await,
        Err(herald::PublishError::NoBroadcastTopic)
    ));
}

#[tokio::test]
async fn per_user_and_per_session_helpers_publish_to_their_topics() {
    let hub = herald::Hub::builder().build().await.unwrap();
    let addr = serve(hub.router()).await;
    let (mut s, _) = open_stream(addr, "/events?topic=user:42,session:abc", "").await;
    hub.publish_to_user("42", "invoice_paid", &json!({"invoice": 7}))
        .await
        .unwrap();
    s.until("event: invoice_paid\ndata: {\"invoice\":7}\n")
        .await;
    hub.publish_to_session("abc", "progress", &50)
        .await
        .unwrap();
    s.until("event: progress\ndata: 50\n").await;
    // An id that would reach another topic or inject a line is refused.
    for bad in ["42,admin", "", "4\n2"] {
        assert!(matches!(
            hub.publish_to_user(bad, "x", &1).await,
            Err(herald::PublishError::BadName(_))
        ));
    }
}

#[tokio::test]
async fn a_new_stream_on_an_exclusive_topic_replaces_the_old_one() {
    let hub = herald::Hub::builder()
        .exclusive_prefix("session:")
        .build()
        .await
        .unwrap();
    let addr = serve(hub.router()).await;
    // Non-exclusive topics are shared as usual.
    let (mut c1, _) = open_stream(addr, "/events?topic=comments", "").await;
    let (mut c2, _) = open_stream(addr, "/events?topic=comments", "").await;
    // (`Connection: close`: the server closes the socket when the stream ends.)
    let (mut old, head) = open_stream(
        addr,
        "/events?topic=session:abc,comments",
        "Connection: close\r\n",
    )
    .await;
    hub.publish_to_session("abc", "step", &1).await.unwrap();
    let got = old.until("event: step\ndata: 1\n").await;
    let cursor = (head + &got)
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .to_owned();

    // A second stream on the session takes it; the first is told and ends.
    let (mut new, new_head) =
        open_stream(addr, "/events?topic=session:abc", "Connection: close\r\n").await;
    let ended = old.rest_until_close().await;
    assert!(
        ended.contains(
            "retry: 86400000\nevent: herald.replaced\ndata: {\"topics\":[\"session:abc\"]}\n\n"
        ),
        "{ended}"
    );
    hub.publish_to_session("abc", "step", &2).await.unwrap();
    hub.publish("comments", "c", &3).await.unwrap();
    new.until("event: step\ndata: 2\n").await;
    for c in [&mut c1, &mut c2] {
        c.until("event: c\ndata: 3\n").await;
    }
    assert!(hub.has_subscriber("session:abc").await.unwrap());

    // Resuming the replaced stream's cursor takes the session back and replays what
    // it missed; the takeover markers themselves are never written to anyone.
    let (mut back, back_head) = open_stream(
        addr,
        "/events?topic=session:abc,comments",
        &format!("Last-Event-ID: {cursor}\r\n"),
    )
    .await;
    hub.publish_to_session("abc", "step", &4).await.unwrap();
    // (Replayed events of different topics may interleave either way; the live
    // event 4 comes after the replay.)
    let replay = back_head + &back.until("event: step\ndata: 4\n").await;
    assert!(replay.contains("event: step\ndata: 2\n"), "{replay}");
    assert!(replay.contains("event: c\ndata: 3\n"), "{replay}");
    assert!(!replay.contains("data: 1\n"), "nothing twice: {replay}");
    let ended = new_head + &new.rest_until_close().await;
    assert!(ended.contains("event: herald.replaced"), "{ended}");
    for text in [&replay, &ended, &got] {
        assert!(!text.contains("takeover"), "{text}");
    }
}

#[tokio::test]
async fn several_hubs_in_one_process_do_not_interfere() {
    let a = herald::Hub::builder().build().await.unwrap();
    let b = herald::Hub::builder()
        .broadcast_topic("all")
        .build()
        .await
        .unwrap();
    let addr_a = serve(a.router()).await;
    let addr_b = serve(b.router()).await;
    let (mut sa, _) = open_stream(addr_a, "/events?topic=t", "").await;
    let (mut sb, _) = open_stream(addr_b, "/events?topic=t", "").await;
    b.publish("t", "only_b", &1).await.unwrap();
    a.publish("t", "only_a", &2).await.unwrap();
    let got_a = sa.until("event: only_a\n").await;
    let got_b = sb.until("event: only_b\n").await;
    assert!(!got_a.contains("only_b") && !got_b.contains("only_a"));
    // Each hub has its own settings, counters and metrics registry.
    assert!(a.config().broadcast_topic.is_none());
    assert_eq!(
        (a.status().events_published, b.status().events_published),
        (1, 1)
    );
    assert!(
        a.render_metrics()
            .contains("herald_events_published_total 1")
    );
    a.shutdown();
    let ended = sa.rest_until_close_or_eof().await;
    assert!(ended.contains("retry:"), "{ended}");
    // Shutting one hub down leaves the other serving.
    b.publish("t", "still_b", &3).await.unwrap();
    sb.until("event: still_b\n").await;
}
