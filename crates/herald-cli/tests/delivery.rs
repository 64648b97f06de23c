//! Delivery through the real binary: publish -> receive, several topics, order,
//! resume with Last-Event-ID / last_event_id, herald.reset, slow subscribers.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use serde_json::json;
use support::{Herald, Sse, eventually, raw_get};

#[tokio::test]
async fn publish_then_receive_verbatim() {
    let h = Herald::start(&[]);
    let mut s = Sse::open(&h.url("/events?topic=comments"), None).await;
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache");
    assert_eq!(s.headers["x-accel-buffering"], "no");
    let data = json!({"id": 42, "text": "héllo\nworld \"quoted\"", "n": 1.50, "deep": {"a": [1, null, true]}});
    let pos = h.send("comments", "comment_created", data.clone()).await;
    let ev = s.next().await;
    assert_eq!(ev.event, "comment_created");
    assert_eq!(ev.id, pos);
    assert_eq!(ev.json(), data);
    // Verbatim: numbers keep their spelling, one data line.
    let (_, body) = h
        .publish_raw(
            "application/json",
            "{\"topic\": \"comments\",\n \"data\": {\n  \"n\": 1.50,  \"s\": \"a  b\"\n}}",
        )
        .await;
    let ev = s.next().await;
    assert_eq!(ev.event, "message", "default event name");
    assert_eq!(ev.id, body["position"]);
    assert_eq!(ev.data, r#"{"n":1.50,"s":"a  b"}"#);
}

#[tokio::test]
async fn first_bytes_are_retry_sent_at_once() {
    let h = Herald::start(&["--retry", "1500ms"]);
    let out = raw_get(
        h.addr,
        "GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n",
        "\n\n",
    )
    .await;
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    // Chunked encoding: the chunk size line, then the first SSE bytes.
    let first = body.lines().nth(1).expect("first line");
    assert_eq!(first, "retry: 1500", "{out}");
}

#[tokio::test]
async fn several_topics_one_connection_in_order_once() {
    let h = Herald::start(&[]);
    let mut s = Sse::open(&h.url("/events?topic=a,b&topic=c"), None).await;
    let mut expected: HashMap<&str, Vec<u64>> = HashMap::new();
    for i in 0..60u64 {
        let t = ["a", "b", "c"][(i % 3) as usize];
        h.send(t, "n", json!({"topic": t, "i": i})).await;
        expected.entry(t).or_default().push(i);
    }
    h.send("other", "n", json!({})).await; // not subscribed
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..60 {
        let ev = s.next().await.json();
        got.entry(ev["topic"].as_str().unwrap().to_owned())
            .or_default()
            .push(ev["i"].as_u64().unwrap());
    }
    for (t, want) in expected {
        assert_eq!(got[t], want, "topic {t}");
    }
}

#[tokio::test]
async fn envelope_names_each_events_topic() {
    // `envelope=1`: the data is `{"topic", "data"}`, live and replayed, on single-
    // and multi-topic streams, direct or not; the hub's own events stay as they are.
    let h = Herald::start(&["--retention-events", "4"]);
    let mut multi = Sse::open(&h.url("/events?topic=b,a&envelope=1"), None).await;
    let mut single = Sse::open(&h.url("/events?topic=a&envelope=true"), None).await;
    let mut plain = Sse::open(&h.url("/events?topic=a&envelope=0"), None).await;
    let pa = h.send("a", "created", json!({"id": 1})).await;
    h.send("b", "deleted", json!([1, "x"])).await;
    for (t, name, data) in [
        ("a", "created", json!({"id": 1})),
        ("b", "deleted", json!([1, "x"])),
    ] {
        let ev = multi.next().await;
        assert_eq!(ev.event, name);
        assert_eq!(ev.json(), json!({"topic": t, "data": data}));
    }
    let ev = single.next().await;
    assert_eq!(
        (ev.id.as_str(), ev.event.as_str()),
        (pa.as_str(), "created")
    );
    assert_eq!(ev.json(), json!({"topic": "a", "data": {"id": 1}}));
    assert_eq!(plain.next().await.json(), json!({"id": 1}));
    // Replayed from a cursor: enveloped too.
    let cursor = multi.last_id.clone();
    drop(multi);
    h.send("a", "n", json!("missed")).await;
    let mut resumed = Sse::open(&h.url("/events?topic=a,b&envelope=1"), Some(&cursor)).await;
    assert_eq!(
        resumed.next().await.json(),
        json!({"topic": "a", "data": "missed"})
    );
    // A reset is the hub's own event: not wrapped.
    for i in 0..6 {
        h.send("a", "n", json!(i)).await;
    }
    let mut stale = Sse::open(&h.url("/events?topic=a,b&envelope=1"), Some(&cursor)).await;
    let ev = stale.next().await;
    assert_eq!(ev.event, "herald.reset");
    assert_eq!(ev.json(), json!({"topics": ["a"]}));
    // Anything but 1/true/0/false is refused.
    let out = raw_get(
        h.addr,
        "GET /events?topic=a&envelope=yes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains(r#""error":"invalid_request""#), "{out}");
}

/// Subscribes, reads `before` events, disconnects, publishes more, and resumes.
async fn resume_case(topics: &[&str], via_query: bool) {
    let h = Herald::start(&[]);
    let q = topics.join(",");
    let mut s = Sse::open(&h.url(&format!("/events?topic={q}")), None).await;
    // The first topic gets two events before the cut; the others none.
    for i in 0..2 {
        h.send(topics[0], "n", json!({"t": topics[0], "i": i}))
            .await;
    }
    for _ in 0..2 {
        s.next().await;
    }
    let cursor = s.last_id.clone();
    drop(s);
    // Missed while away: events on every topic.
    let mut missed = Vec::new();
    for i in 2..6 {
        for t in topics {
            h.send(t, "n", json!({"t": t, "i": i})).await;
            missed.push((t.to_string(), i));
        }
    }
    let mut s = if via_query {
        let url = h.url(&format!("/events?topic={q}&last_event_id={cursor}"));
        Sse::open(&url, None).await
    } else {
        Sse::open(&h.url(&format!("/events?topic={q}")), Some(&cursor)).await
    };
    h.send(topics[0], "n", json!({"t": topics[0], "i": 100}))
        .await;
    let mut got = Vec::new();
    for _ in 0..missed.len() + 1 {
        let ev = s.next().await.json();
        got.push((
            ev["t"].as_str().unwrap().to_owned(),
            ev["i"].as_u64().unwrap(),
        ));
    }
    // Exactly the missed events (each topic in order), then the live one.
    assert_eq!(got.last(), Some(&(topics[0].to_owned(), 100)));
    for t in topics {
        let want: Vec<u64> = missed
            .iter()
            .filter(|(x, _)| x == t)
            .map(|(_, i)| *i as u64)
            .collect();
        let have: Vec<u64> = got[..got.len() - 1]
            .iter()
            .filter(|(x, _)| x == t)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(have, want, "topic {t}");
    }
    assert_eq!(got.len(), missed.len() + 1);
}

#[tokio::test]
async fn resume_single_topic_with_header() {
    resume_case(&["a"], false).await;
}

#[tokio::test]
async fn resume_single_topic_with_query() {
    resume_case(&["a"], true).await;
}

#[tokio::test]
async fn resume_multi_topic_with_header() {
    resume_case(&["a", "b", "c"], false).await;
}

#[tokio::test]
async fn resume_multi_topic_with_query() {
    resume_case(&["x:1", "y/2", "z@3"], true).await;
}

#[tokio::test]
async fn header_cursor_wins_over_query_cursor() {
    let h = Herald::start(&[]);
    let p1 = h.send("a", "n", json!(1)).await;
    let p2 = h.send("a", "n", json!(2)).await;
    h.send("a", "n", json!(3)).await;
    let url = h.url(&format!("/events?topic=a&last_event_id={p1}"));
    let mut s = Sse::open(&url, Some(&p2)).await;
    assert_eq!(s.next().await.json(), json!(3));
}

#[tokio::test]
async fn reconnect_before_any_event_loses_nothing() {
    // The stream's first frame carries the cursor, so a client that drops before
    // its first event still resumes from where it subscribed.
    let h = Herald::start(&[]);
    let s = Sse::open(&h.url("/events?topic=a,b"), None).await;
    let cursor = s.last_id.clone();
    assert!(!cursor.is_empty());
    drop(s);
    h.send("b", "n", json!("missed")).await;
    let mut s = Sse::open(&h.url("/events?topic=a,b"), Some(&cursor)).await;
    assert_eq!(s.next().await.json(), json!("missed"));
}

#[tokio::test]
async fn cursor_ahead_of_the_topics_gets_reset_event_first() {
    // A cursor newer than anything the topics held (from before a restart whose
    // clock stepped back, or made up): live events up to it would be taken for
    // duplicates and dropped, so the stream starts from now with `herald.reset`.
    let h = Herald::start(&[]);
    h.send("a", "n", json!(0)).await;
    let s = Sse::open(&h.url("/events?topic=a,b"), None).await;
    let fresh = s.last_id.clone();
    drop(s);
    let (_, sum) = fresh.split_once('~').unwrap();
    let ahead = format!("99999999999999-0,99999999999999-0~{sum}");
    let mut s = Sse::open(&h.url("/events?topic=a,b"), Some(&ahead)).await;
    let ev = s.next().await;
    assert_eq!(ev.event, "herald.reset");
    assert_eq!(ev.json(), json!({"topics": ["a", "b"]}));
    h.send("a", "n", json!("live a")).await;
    h.send("b", "n", json!("live b")).await;
    assert_eq!(s.next().await.json(), json!("live a"));
    assert_eq!(s.next().await.json(), json!("live b"));
}

#[tokio::test]
async fn stale_cursor_gets_reset_event_first() {
    let h = Herald::start(&["--retention-events", "3"]);
    let first = h.send("a", "n", json!(0)).await;
    for i in 1..10 {
        h.send("a", "n", json!(i)).await;
    }
    let s = Sse::open(&h.url("/events?topic=a,b"), None).await;
    let fresh = s.last_id.clone();
    drop(s);
    // A multi-topic cursor whose `a` position is trimmed away: build it from a
    // fresh cursor by swapping in the first position.
    let (positions, sum) = fresh.split_once('~').unwrap();
    let b_pos = positions.split(',').nth(1).unwrap();
    let stale = format!("{first},{b_pos}~{sum}");
    let mut s = Sse::open(&h.url("/events?topic=a,b"), Some(&stale)).await;
    let ev = s.next().await;
    assert_eq!(ev.event, "herald.reset");
    assert_eq!(ev.json(), json!({"topics": ["a"]}));
    // Then live, from now.
    h.send("a", "n", json!("live")).await;
    assert_eq!(s.next().await.json(), json!("live"));
    assert_eq!(h.metric("herald_resets_total").await, 1.0);

    // A cursor from before this process started: reset too, never a silent hole.
    let mut s = Sse::open(&h.url("/events?topic=c"), Some("1-0")).await;
    let ev = s.next().await;
    assert_eq!(ev.event, "herald.reset");
    assert_eq!(ev.json(), json!({"topics": ["c"]}));
}

#[tokio::test]
async fn slow_subscriber_is_dropped_fast_one_gets_everything() {
    let h = Herald::start(&["--queue-size", "4", "--write-timeout", "1s"]);
    // The slow client: a raw socket that sends its request and never reads.
    let slow = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (rd, mut wr) = slow.into_split();
    tokio::io::AsyncWriteExt::write_all(
        &mut wr,
        b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut fast = Sse::open(&h.url("/events?topic=t"), None).await;
    eventually("both subscribed", || async {
        h.status().await["subscriptions"] == 2
    })
    .await;

    let big = "x".repeat(30_000);
    let n = 600; // ~18 MB: more than the kernel buffers hold for the slow socket
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(fast.next().await.json()["i"].as_u64().unwrap());
        }
        (got, fast)
    });
    for i in 0..n {
        h.send("t", "n", json!({"i": i, "pad": big})).await;
    }
    let (got, _fast) = reader.await.unwrap();
    assert_eq!(
        got,
        (0..n).collect::<Vec<u64>>(),
        "the fast subscriber got everything in order"
    );
    // It stopped reading: its writes stall and the connection is closed.
    eventually("the slow subscriber was disconnected", || async {
        h.metric("herald_write_stalls_total").await >= 1.0
    })
    .await;
    eventually("only the fast subscriber is left", || async {
        h.status().await["subscriptions"] == 1
    })
    .await;
    drop((rd, wr));
}

#[tokio::test]
async fn slow_subscriber_resumes_without_loss() {
    // The dropped subscriber reconnects with its cursor and gets the rest.
    let h = Herald::start(&["--queue-size", "2", "--retention-events", "1000"]);
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    // Publish a burst while not reading: the stream lags and ends.
    let big = "y".repeat(50_000);
    for i in 0..300u64 {
        h.send("t", "n", json!({"i": i, "pad": big})).await;
    }
    let mut got: Vec<u64> = s
        .rest()
        .await
        .iter()
        .map(|e| e.json()["i"].as_u64().unwrap())
        .collect();
    assert!(got.len() < 300, "the stream was cut short");
    assert!(h.metric("herald_slow_subscribers_disconnected_total").await >= 1.0);
    let mut s = Sse::open(&h.url("/events?topic=t"), Some(&s.last_id.clone())).await;
    while got.len() < 300 {
        got.push(s.next().await.json()["i"].as_u64().unwrap());
    }
    assert_eq!(got, (0..300).collect::<Vec<u64>>());
}

#[tokio::test]
async fn heartbeats_arrive_as_comments_or_events() {
    let h = Herald::start(&["--heartbeat", "100ms"]);
    let out = raw_get(
        h.addr,
        "GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n",
        ": heartbeat\n",
    )
    .await;
    assert!(out.contains(": heartbeat\n"), "{out}");

    let h = Herald::start(&["--heartbeat", "100ms", "--heartbeat-event"]);
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    let ev = s.next().await;
    assert_eq!(ev.event, "heartbeat");
    assert_eq!(ev.data, "{}");
}

#[tokio::test]
async fn batch_publish_is_all_or_nothing() {
    let h = Herald::start(&[]);
    let mut s = Sse::open(&h.url("/events?topic=a,b"), None).await;
    let (status, body) = h
        .publish(json!([{"topic": "a", "data": 1}, {"topic": "bad topic", "data": 2}]))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_topic");
    let (status, body) = h
        .publish(json!([{"topic": "a", "data": 1}, {"topic": "b", "event": "e", "data": 2}]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert_eq!(body[1]["topic"], "b");
    // Order is per topic; across topics, both arrive (and nothing of the failed batch).
    let mut got = vec![s.next().await.json(), s.next().await.json()];
    got.sort_by_key(|v| v.as_u64());
    assert_eq!(
        got,
        [json!(1), json!(2)],
        "the failed batch published nothing"
    );
    assert_eq!(h.status().await["events_published"], 2);
}

/// A batch holds at most the queue size of events per topic: pushed at once, a
/// larger one would overrun every subscriber of the topic (they would all be
/// disconnected as slow). Up to it, every subscriber takes the whole batch.
#[tokio::test]
async fn a_batch_up_to_the_queue_size_per_topic_reaches_everyone() {
    let h = Herald::start(&["--queue-size", "64"]);
    let mut s = Sse::open(&h.url("/events?topic=a,b"), None).await;
    let batch = |topics: &[&str], n: usize| -> serde_json::Value {
        let items: Vec<serde_json::Value> = (0..n)
            .map(|i| json!({"topic": topics[i % topics.len()], "data": i}))
            .collect();
        json!(items)
    };
    // 64 on one topic; then 128 over two (more than 64 in all, 64 per topic).
    let (status, body) = h.publish(batch(&["a"], 64)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = h.publish(batch(&["a", "b"], 128)).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..64 {
        assert_eq!(s.next().await.json(), json!(i));
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..128 {
        let n = s.next().await.json().as_u64().unwrap();
        if n % 2 == 0 { a.push(n) } else { b.push(n) }
    }
    assert_eq!(a, (0..128).step_by(2).collect::<Vec<_>>());
    assert_eq!(b, (1..128).step_by(2).collect::<Vec<_>>());
    assert_eq!(
        h.metric("herald_slow_subscribers_disconnected_total").await,
        0.0
    );
    // 65 on one topic: refused, nothing published.
    let (status, body) = h.publish(batch(&["a"], 65)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("65 events for topic a"),
        "{body}"
    );
    assert_eq!(h.status().await["events_published"], 192);
}

#[tokio::test]
async fn broadcast_topic_reaches_every_stream() {
    let h = Herald::start(&["--broadcast-topic", "all"]);
    let mut a = Sse::open(&h.url("/events?topic=comments"), None).await;
    let mut b = Sse::open(&h.url("/events?topic=user:1,user:2"), None).await;
    h.send("all", "maintenance", json!({"in": 5})).await;
    for s in [&mut a, &mut b] {
        let ev = s.next().await;
        assert_eq!(
            (ev.event.as_str(), ev.json()),
            ("maintenance", json!({"in": 5}))
        );
    }
    // Resume covers the broadcast topic too.
    let cursor = a.last_id.clone();
    drop(a);
    h.send("all", "second", json!(2)).await;
    let mut a = Sse::open(&h.url("/events?topic=comments"), Some(&cursor)).await;
    assert_eq!(a.next().await.event, "second");
}

#[tokio::test]
async fn cursors_from_before_a_broadcast_topic_was_added_still_resume() {
    // Found by a review: a deploy that adds --broadcast-topic changed every
    // stream's topic set, so every saved cursor got 400 and browsers stopped.
    let before = Herald::start(&["--retention-events", "10"]);
    let single = Sse::open(&before.url("/events?topic=a"), None).await;
    let multi = Sse::open(&before.url("/events?topic=a,b"), None).await;
    let (single, multi) = (single.last_id.clone(), multi.last_id.clone());
    drop(before);
    let h = Herald::start(&["--broadcast-topic", "all"]);
    h.send("all", "notice", json!(0)).await;
    // (This hub started after those cursors: it resets what it cannot vouch for,
    // topics and broadcast alike; what matters is that the cursor is read.)
    for (topics, cursor) in [("a", &single), ("a,b", &multi)] {
        let mut s = Sse::open(&h.url(&format!("/events?topic={topics}")), Some(cursor)).await;
        let ev = s.next().await;
        assert_eq!(ev.event, "herald.reset", "{topics}");
        let reset = ev.json();
        assert!(
            reset["topics"].as_array().unwrap().contains(&json!("all")),
            "{topics}: {reset}"
        );
        h.send("a", "live", json!(topics)).await;
        assert_eq!(s.next().await.json(), json!(topics));
    }
    // A cursor of this hub from a stream without the broadcast topic cannot be
    // made (every stream has it), so a cursor for other topics is still refused.
    let out = raw_get(
        h.addr,
        &format!("GET /events?topic=c HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {multi}\r\nConnection: close\r\n\r\n"),
        "}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

#[tokio::test]
async fn exclusive_topic_keeps_only_the_newest_stream() {
    let h = Herald::start(&["--exclusive-prefix", "session:"]);
    let mut old = Sse::open(&h.url("/events?topic=session:9"), None).await;
    let mut shared = Sse::open(&h.url("/events?topic=room"), None).await;
    let mut new = Sse::open(&h.url("/events?topic=session:9"), None).await;
    let ev = old.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.json()),
        ("herald.replaced", json!({"topics": ["session:9"]}))
    );
    assert!(old.rest().await.is_empty());
    // Other topics are shared as before.
    let _also_room = Sse::open(&h.url("/events?topic=room"), None).await;
    h.send("session:9", "n", json!(1)).await;
    h.send("room", "n", json!(2)).await;
    assert_eq!(new.next().await.json(), json!(1));
    assert_eq!(shared.next().await.json(), json!(2));
    assert_eq!(h.metric("herald_streams_replaced_total").await, 1.0);
    // A resume from before the takeover replays the event and counts only it:
    // the takeover markers in the history are not written.
    let replayed = h.metric("herald_events_replayed_total").await;
    let delivered = h.metric("herald_events_delivered_total").await;
    let mut again = Sse::open(&h.url("/events?topic=session:9"), Some(&old.last_id)).await;
    assert_eq!(again.next().await.json(), json!(1));
    assert_eq!(
        h.metric("herald_events_replayed_total").await - replayed,
        1.0
    );
    assert_eq!(
        h.metric("herald_events_delivered_total").await - delivered,
        1.0
    );
}

#[tokio::test]
async fn write_linger_never_lets_a_burst_overrun_a_held_stream() {
    // A one-second linger and a ring of 8: a stream holding its writes for the
    // next tick would be overrun by this burst and cut as slow, but the hub
    // flushes early when a ring is half full.
    let h = Herald::start(&["--write-linger", "1s", "--queue-size", "8"]);
    let mut s = Sse::open(&h.url("/events?topic=a"), None).await;
    h.send("a", "n", json!(0)).await;
    assert_eq!(s.next().await.json(), json!(0));
    for i in 1..=40 {
        h.send("a", "n", json!(i)).await;
    }
    for i in 1..=40 {
        assert_eq!(s.next().await.json(), json!(i));
    }
    assert_eq!(
        h.metric("herald_slow_subscribers_disconnected_total").await,
        0.0
    );
}

#[tokio::test]
async fn write_linger_delivers_everything_in_order_once() {
    let h = Herald::start(&["--write-linger", "20ms"]);
    let mut single = Sse::open(&h.url("/events?topic=a"), None).await;
    let mut multi = Sse::open(&h.url("/events?topic=a,b"), None).await;
    for i in 0..30 {
        let t = if i % 3 == 0 { "b" } else { "a" };
        h.send(t, "n", json!({"t": t, "i": i})).await;
    }
    let mut a_single = Vec::new();
    for _ in 0..20 {
        a_single.push(single.next().await.json()["i"].as_u64().unwrap());
    }
    let want_a: Vec<u64> = (0..30).filter(|i| i % 3 != 0).collect();
    assert_eq!(a_single, want_a);
    let mut by_topic: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..30 {
        let v = multi.next().await.json();
        by_topic
            .entry(v["t"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["i"].as_u64().unwrap());
    }
    assert_eq!(by_topic["a"], want_a);
    assert_eq!(
        by_topic["b"],
        (0..30).filter(|i| i % 3 == 0).collect::<Vec<u64>>()
    );
    // A resume with the last cursor has nothing more to replay (nothing twice).
    let cursor = multi.last_id.clone();
    drop(multi);
    h.send("a", "n", json!({"t": "a", "i": 99})).await;
    let mut again = Sse::open(&h.url("/events?topic=a,b"), Some(&cursor)).await;
    assert_eq!(again.next().await.json()["i"], 99);
}

/// Reads `n` events from `s`: (publisher, sequence) pairs, checking that the
/// cursors only move forward.
async fn read_pairs(s: &mut Sse, n: usize) -> Vec<(u64, u64)> {
    let mut got = Vec::with_capacity(n);
    let mut last_id = String::new();
    while got.len() < n {
        let ev = s.next().await;
        // Single-topic cursors are positions `<ms>-<seq>`: compare them as numbers.
        let pos = |id: &str| -> (u64, u64) {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        };
        if !last_id.is_empty() && !ev.id.contains(',') {
            assert!(pos(&ev.id) > pos(&last_id), "{} after {last_id}", ev.id);
        }
        last_id = ev.id.clone();
        let v = ev.json();
        got.push((v["p"].as_u64().unwrap(), v["i"].as_u64().unwrap()));
    }
    got
}

/// Publishers write straight to idle streams (no wake of the stream's task):
/// several at once on one topic, each subscriber still gets every event once, in
/// the order the hub took them.
#[tokio::test]
async fn concurrent_publishers_reach_every_stream_once_in_order() {
    let h = Herald::start(&[]);
    let urls = ["/events?topic=t", "/events?topic=t,u", "/events?topic=u,t"];
    let mut subs = Vec::new();
    for i in 0..6 {
        subs.push(Sse::open(&h.url(urls[i % 3]), None).await);
    }
    let (publishers, per) = (4u64, 100u64);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move { read_pairs(&mut s, (publishers * per) as usize).await })
        })
        .collect();
    let sends: Vec<_> = (0..publishers)
        .map(|p| {
            let (url, client) = (h.url("/publish"), support::client());
            tokio::spawn(async move {
                for i in 0..per {
                    let res = client
                        .post(&url)
                        .json(&json!({"topic": "t", "data": {"p": p, "i": i}}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                }
            })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    for r in readers {
        let got = r.await.unwrap();
        // Each publisher's events in its order (it waited for each answer)...
        for p in 0..publishers {
            let mine: Vec<u64> = got.iter().filter(|e| e.0 == p).map(|e| e.1).collect();
            assert_eq!(mine, (0..per).collect::<Vec<_>>(), "publisher {p}");
        }
        // ...and nothing else, nothing twice.
        assert_eq!(got.len() as u64, publishers * per);
    }
    assert_eq!(
        h.metric("herald_events_delivered_total").await,
        (6 * publishers * per) as f64
    );
}

/// A socket that does not take a publisher's write at once: the publisher hands
/// the rest to the stream's own task, which writes it with back-pressure.
/// Nothing is lost, nothing repeated, nothing out of order.
#[tokio::test]
async fn a_full_socket_hands_the_write_back_and_loses_nothing() {
    let h = Herald::start(&["--queue-size", "1024"]);
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    let big = "x".repeat(30_000);
    let n = 600u64; // ~18 MB: more than the kernel buffers hold while the client waits
    // The client reads nothing until everything is published.
    for i in 0..n {
        h.send("t", "n", json!({"i": i, "pad": big})).await;
    }
    assert!(
        h.metric("herald_writes_handed_back_total").await >= 1.0,
        "the socket filled up and a publisher handed a write back"
    );
    for i in 0..n {
        assert_eq!(s.next().await.json()["i"], i);
    }
    assert_eq!(
        h.metric("herald_slow_subscribers_disconnected_total").await,
        0.0
    );
    assert_eq!(h.metric("herald_events_delivered_total").await, n as f64);
    // Then the stream is idle again: publishers write to it directly.
    let before = h.metric("herald_writes_handed_back_total").await;
    h.send("t", "n", json!({"i": n})).await;
    assert_eq!(s.next().await.json()["i"], n);
    assert_eq!(h.metric("herald_writes_handed_back_total").await, before);
}

/// The same over HTTP/1.0 (no chunked framing: a handed-back write must not add any).
#[tokio::test]
async fn a_full_http10_socket_loses_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Herald::start(&["--queue-size", "1024"]);
    let mut sock = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    sock.write_all(b"GET /events?topic=t HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    eventually("subscribed", || async {
        h.status().await["subscriptions"] == 1
    })
    .await;
    let big = "y".repeat(30_000);
    let n = 600u64;
    for i in 0..n {
        h.send("t", "n", json!({"i": i, "pad": big})).await;
    }
    assert!(h.metric("herald_writes_handed_back_total").await >= 1.0);
    let mut body = Vec::new();
    // Up to the end of the last event: its `data:` line and the blank line after it.
    let want = format!("\"i\":{},", n - 1);
    let mut buf = vec![0u8; 1 << 16];
    let tail = |body: &[u8]| {
        String::from_utf8_lossy(&body[body.len().saturating_sub(40_000)..]).into_owned()
    };
    while !(body.ends_with(b"\n\n") && tail(&body).contains(&want)) {
        let k = sock.read(&mut buf).await.unwrap();
        assert!(k > 0, "the stream ended early");
        body.extend_from_slice(&buf[..k]);
    }
    let text = String::from_utf8(body).unwrap();
    let (head, stream) = text.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("chunked"), "{head}");
    let got: Vec<u64> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

/// A topic with more streams than publishers write to inline (128): their tasks
/// are woken to write instead, and every stream gets everything.
#[tokio::test]
async fn a_large_fan_out_is_written_by_the_streams_tasks() {
    let h = Herald::start(&[]);
    let mut subs = Vec::new();
    for _ in 0..150 {
        subs.push(Sse::open(&h.url("/events?topic=t"), None).await);
    }
    let n = 20u64;
    for i in 0..n {
        h.send("t", "n", json!({"i": i})).await;
    }
    for s in &mut subs {
        for i in 0..n {
            assert_eq!(s.next().await.json()["i"], i);
        }
    }
    assert_eq!(
        h.metric("herald_events_delivered_total").await,
        (150 * n) as f64
    );
}
