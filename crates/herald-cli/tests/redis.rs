//! Several Herald processes sharing real `redis-server` processes (one node, or a
//! 3-node Cluster): delivery across instances, resume on another instance, Redis
//! connection cuts and restarts, channel prefixes, subscription cleanup.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::redis::{Cluster, Redis, cli};
use support::{Herald, Sse, client, eventually};

fn on_redis(urls: &[String], extra: &[&str]) -> Herald {
    let mut args: Vec<&str> = urls.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Herald::start(&args)
}

fn redis_args(r: &Redis) -> Vec<String> {
    vec!["--redis-url".into(), r.url()]
}

/// Reads `n` events and groups their `i` by `t`, checking each topic's order.
async fn read_grouped(s: &mut Sse, n: usize) -> HashMap<String, Vec<u64>> {
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..n {
        let v = s.next().await.json();
        got.entry(v["t"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["i"].as_u64().unwrap());
    }
    got
}

#[tokio::test]
async fn subscribe_on_a_publish_on_b_in_order_once() {
    let r = Redis::start();
    let a = on_redis(&redis_args(&r), &[]);
    let b = on_redis(&redis_args(&r), &[]);
    assert_eq!(a.status().await["backend"], "redis");
    let topics: Vec<String> = (0..12).map(|i| format!("room:{i}")).collect();
    let mut multi = Sse::open(&a.url(&format!("/events?topic={}", topics.join(","))), None).await;
    let mut single = Sse::open(&a.url("/events?topic=room:0"), None).await;
    let mut expected: HashMap<String, Vec<u64>> = HashMap::new();
    for i in 0..240u64 {
        let t = &topics[(i % 12) as usize];
        // Alternate single events and batches, all through instance B.
        if i % 2 == 0 {
            b.send(t, "n", json!({"t": t, "i": i})).await;
        } else {
            let (status, body) = b
                .publish(json!([{"topic": t, "data": {"t": t, "i": i}}]))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        expected.entry(t.clone()).or_default().push(i);
    }
    assert_eq!(read_grouped(&mut multi, 240).await, expected);
    let single_got = read_grouped(&mut single, 20).await;
    assert_eq!(single_got["room:0"], expected["room:0"]);
    // Nothing more (nothing twice): a marker is the next event.
    b.send("room:0", "n", json!({"t": "end", "i": 0})).await;
    assert_eq!(multi.next().await.json()["t"], "end");
    assert_eq!(single.next().await.json()["t"], "end");
}

#[tokio::test]
async fn instance_killed_mid_stream_client_resumes_on_another() {
    let r = Redis::start();
    let mut a = on_redis(&redis_args(&r), &[]);
    let b = on_redis(&redis_args(&r), &[]);
    let mut s = Sse::open(&a.url("/events?topic=x,y"), None).await;
    for i in 0..10u64 {
        b.send(
            if i % 2 == 0 { "x" } else { "y" },
            "n",
            json!({"t": "xy", "i": i}),
        )
        .await;
    }
    // Order is per topic (x holds the even, y the odd); across topics it may interleave.
    let mut first: Vec<u64> = Vec::new();
    for _ in 0..10 {
        first.push(s.next().await.json()["i"].as_u64().unwrap());
    }
    let evens: Vec<u64> = first.iter().copied().filter(|i| i % 2 == 0).collect();
    assert_eq!(evens, [0, 2, 4, 6, 8]);
    first.sort_unstable();
    assert_eq!(first, (0..10).collect::<Vec<u64>>());
    let cursor = s.last_id.clone();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(s.rest().await.is_empty(), "the stream ends with instance A");
    for i in 10..30u64 {
        b.send(
            if i % 2 == 0 { "x" } else { "y" },
            "n",
            json!({"t": "xy", "i": i}),
        )
        .await;
    }
    let mut s = Sse::open(&b.url("/events?topic=x,y"), Some(&cursor)).await;
    b.send("x", "n", json!({"t": "xy", "i": 30})).await;
    let mut got = Vec::new();
    for _ in 10..=30 {
        got.push(s.next().await.json()["i"].as_u64().unwrap());
    }
    for parity in [0, 1] {
        let topic: Vec<u64> = got.iter().copied().filter(|i| i % 2 == parity).collect();
        assert!(
            topic.windows(2).all(|w| w[0] < w[1]),
            "in order per topic: {got:?}"
        );
    }
    got.sort_unstable(); // across x and y events may interleave
    assert_eq!(
        got,
        (10..=30).collect::<Vec<u64>>(),
        "nothing lost or repeated"
    );
}

#[tokio::test]
async fn subscriber_connection_cut_loses_nothing() {
    let r = Redis::start();
    let a = on_redis(&redis_args(&r), &[]);
    let b = on_redis(&redis_args(&r), &[]);
    let mut s = Sse::open(&a.url("/events?topic=p,q"), None).await;
    let n = 600u64;
    let publisher = {
        let url = b.url("/publish");
        tokio::spawn(async move {
            let c = client();
            for i in 0..n {
                let t = if i % 3 == 0 { "q" } else { "p" };
                let res = c
                    .post(&url)
                    .json(&json!({"topic": t, "data": {"t": t, "i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        })
    };
    // Cut every subscriber connection (A's, and B's which has none) a few times
    // while B publishes.
    let mut cuts = 0;
    while !publisher.is_finished() && cuts < 8 {
        r.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        cuts += 1;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    publisher.await.unwrap();
    let got = read_grouped(&mut s, n as usize).await;
    let want = |t: &str| {
        (0..n)
            .filter(|i| (i % 3 == 0) == (t == "q"))
            .collect::<Vec<u64>>()
    };
    assert_eq!(got["p"], want("p"), "p in order, once");
    assert_eq!(got["q"], want("q"), "q in order, once");
    assert!(a.metric("herald_redis_reconnects_total").await >= 1.0);
    // Nothing twice: the next event is the marker.
    b.send("p", "n", json!({"t": "end", "i": 0})).await;
    assert_eq!(s.next().await.json()["t"], "end");
}

/// After a subscriber outage, the catch-up gives a topic's streams the gap in
/// slices they can read, not all at once: with a queue of 8 and a write linger
/// (streams read from their own tasks), 20 missed events used to overrun the
/// stream, which was ended as slow.
#[tokio::test]
async fn a_catch_up_longer_than_the_queue_overruns_nobody() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = Redis::start();
    let h = on_redis(
        &redis_args(&r),
        &["--queue-size", "8", "--write-linger", "20ms"],
    );
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    h.send("t", "n", json!(0)).await;
    assert_eq!(next_data(&mut s).await, json!(0));
    // One connection of our own (redis-cli would be a new one): keep new
    // connections out, then cut the subscriber's, which cannot come back.
    let mut admin = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
        .await
        .unwrap();
    let mut command = async |args: &[&str]| {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        admin.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = admin.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(
        command(&["CONFIG", "SET", "maxclients", "1"])
            .await
            .starts_with("+OK")
    );
    command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    eventually("the subscriber is cut", || async {
        ready_status(&h).await == 503
    })
    .await;
    for i in 1..=20 {
        h.send("t", "n", json!(i)).await;
    }
    assert!(
        command(&["CONFIG", "SET", "maxclients", "10000"])
            .await
            .starts_with("+OK")
    );
    for i in 1..=20 {
        assert_eq!(next_data(&mut s).await, json!(i));
    }
    assert_eq!(h.metric("herald_redis_caught_up_events_total").await, 20.0);
    assert_eq!(
        h.metric("herald_slow_subscribers_disconnected_total").await,
        0.0
    );
}

#[tokio::test]
async fn redis_restart_is_survived_without_restarting_herald() {
    let mut r = Redis::start_persistent();
    let h = on_redis(
        &redis_args(&r),
        &["--heartbeat", "200ms", "--heartbeat-event"],
    );
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    let start_cursor = s.last_id.clone();
    let mut acked = Vec::new();
    for i in 0..5u64 {
        acked.push(h.send("t", "n", json!(i)).await);
    }
    for i in 0..5u64 {
        assert_eq!(next_data(&mut s).await, json!(i));
    }
    r.stop();
    eventually("not ready while Redis is down", || async {
        ready_status(&h).await == 503
    })
    .await;
    let res = client().get(h.url("/health/ready")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/json");
    let (status, body) = h.publish(json!({"topic": "t", "data": "lost?"})).await;
    assert_eq!(status, 503, "never a silent success: {body}");
    assert_eq!(body["error"], "backend_unavailable");
    // The SSE client stays connected: heartbeats keep arriving.
    assert_eq!(s.next().await.event, "heartbeat");
    // A new stream cannot be registered in Redis now: 503, not a stream that would miss events.
    let res = client()
        .get(h.url("/events?topic=other"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);

    r.restart();
    eventually("ready again", || async { ready_status(&h).await == 200 }).await;
    h.send("t", "n", json!("after")).await;
    assert_eq!(
        next_data(&mut s).await,
        json!("after"),
        "delivery resumed on the same stream"
    );
    // Every acknowledged event is still there to resume from.
    let mut again = Sse::open(&h.url("/events?topic=t"), Some(&start_cursor)).await;
    for i in 0..5u64 {
        let ev = again.next().await;
        assert_eq!(
            (ev.json(), ev.id.clone()),
            (json!(i), acked[i as usize].clone())
        );
    }
    assert_eq!(next_data(&mut again).await, json!("after"));
    assert!(h.metric("herald_redis_reconnects_total").await >= 1.0);
}

/// The status of `/health/ready`.
async fn ready_status(h: &Herald) -> u16 {
    client()
        .get(h.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The next event that is not a heartbeat.
async fn next_data(s: &mut Sse) -> Value {
    loop {
        let ev = s.next().await;
        if ev.event != "heartbeat" {
            return ev.json();
        }
    }
}

#[tokio::test]
async fn stale_cursor_on_redis_gets_reset() {
    let r = Redis::start();
    let h = on_redis(&redis_args(&r), &["--retention-events", "5"]);
    let first = h.send("t", "n", json!(0)).await;
    for i in 1..20 {
        h.send("t", "n", json!(i)).await;
    }
    let mut s = Sse::open(&h.url("/events?topic=t"), Some(&first)).await;
    let ev = s.next().await;
    assert_eq!(ev.event, "herald.reset");
    assert_eq!(ev.json(), json!({"topics": ["t"]}));
    // A cursor newer than anything the stream holds (Redis lost its data): reset.
    let mut s = Sse::open(&h.url("/events?topic=t"), Some("99999999999999-0")).await;
    assert_eq!(s.next().await.event, "herald.reset");
}

/// A topic's stream that is gone (expired after `--retention-ttl` of silence,
/// flushed, evicted) and created again by a later publish: a cursor from before
/// it gets a reset. It used to resume into the new stream as if nothing had been
/// missed, and event 2 was lost without a word.
#[tokio::test]
async fn a_stream_gone_and_created_again_resets_older_cursors() {
    let r = Redis::start();
    let h = on_redis(&redis_args(&r), &["--retention-ttl", "1s"]);
    let first = h.send("t", "n", json!(1)).await;
    h.send("t", "n", json!(2)).await;
    eventually("the stream expired", || async {
        r.cli(&["EXISTS", "herald:{t}:s"]).trim() == "0"
    })
    .await;
    h.send("t", "n", json!(3)).await;
    let mut s = Sse::open(&h.url("/events?topic=t"), Some(&first)).await;
    assert_eq!(s.next().await.event, "herald.reset");
    // The same after a flush (a restart without persistence, an eviction).
    let first = h.send("u", "n", json!(1)).await;
    h.send("u", "n", json!(2)).await;
    r.cli(&["FLUSHALL"]);
    h.send("u", "n", json!(3)).await;
    let mut s = Sse::open(&h.url("/events?topic=u"), Some(&first)).await;
    assert_eq!(s.next().await.event, "herald.reset");
}

/// A stream opened on a topic that has no stream in Redis (before its first
/// publish, or after it was lost) starts at a gap mark just before now: resuming
/// from it replays what was published meanwhile, exactly, without a reset.
#[tokio::test]
async fn a_cursor_from_before_a_topics_first_event_resumes_exactly() {
    let r = Redis::start();
    let h = on_redis(&redis_args(&r), &[]);
    let cursor_before = || async {
        let s = Sse::open(&h.url("/events?topic=t"), None).await;
        s.last_id.clone()
    };
    let cursor = cursor_before().await;
    h.send("t", "n", json!(1)).await;
    h.send("t", "n", json!(2)).await;
    let mut s = Sse::open(&h.url("/events?topic=t"), Some(&cursor)).await;
    assert_eq!(next_data(&mut s).await, json!(1));
    assert_eq!(next_data(&mut s).await, json!(2));
    drop(s);
    r.cli(&["FLUSHALL"]);
    let cursor = cursor_before().await;
    h.send("t", "n", json!(3)).await;
    let mut s = Sse::open(&h.url("/events?topic=t"), Some(&cursor)).await;
    assert_eq!(next_data(&mut s).await, json!(3));
    // The largest cursor there is: a reset (it was a 503 from the script).
    let max = "18446744073709551615-18446744073709551615";
    let mut s = Sse::open(&h.url("/events?topic=t"), Some(max)).await;
    assert_eq!(s.next().await.event, "herald.reset");
}

#[tokio::test]
async fn a_quiet_topics_mark_lives_while_streams_open_on_it() {
    // A topic with no stream keeps a gap mark (a cursor's resume point) for
    // --retention-ttl; every stream opening on it renews it, so reconnecting
    // clients of a topic quiet for longer than that are not reset.
    let r = Redis::start();
    let h = on_redis(&redis_args(&r), &["--retention-ttl", "1h"]);
    let first = Sse::open(&h.url("/events?topic=quiet"), None).await;
    let cursor = first.last_id.clone();
    drop(first);
    let key = "herald:{quiet}:h";
    let ttl = || r.cli(&["PTTL", key]).trim().parse::<i64>().unwrap();
    assert!(ttl() > 3_000_000, "the mark lives for the TTL: {}", ttl());
    // As if most of the TTL had passed.
    r.cli(&["PEXPIRE", key, "1000000"]);
    let s = Sse::open(&h.url("/events?topic=quiet"), Some(&cursor)).await;
    assert_eq!(s.last_id, cursor, "resumed exactly at the mark");
    assert!(ttl() > 1_000_000, "renewed: {}", ttl());
    drop(s);
    h.send("quiet", "n", json!("finally")).await;
    let mut s = Sse::open(&h.url("/events?topic=quiet"), Some(&cursor)).await;
    assert_eq!(s.next().await.json(), json!("finally"));
}

#[tokio::test]
async fn channel_prefixes_isolate_hubs_on_one_redis() {
    let r = Redis::start();
    let x = on_redis(&redis_args(&r), &["--channel-prefix", "staging"]);
    let y = on_redis(&redis_args(&r), &["--channel-prefix", "prod"]);
    let mut sx = Sse::open(&x.url("/events?topic=t"), None).await;
    let mut sy = Sse::open(&y.url("/events?topic=t"), None).await;
    y.send("t", "n", json!("prod only")).await;
    x.send("t", "n", json!("staging only")).await;
    assert_eq!(sx.next().await.json(), json!("staging only"));
    assert_eq!(sy.next().await.json(), json!("prod only"));
    let channels = r.cli(&["PUBSUB", "CHANNELS", "*"]);
    assert!(
        channels.contains("staging:{t}:c") && channels.contains("prod:{t}:c"),
        "{channels}"
    );
}

#[tokio::test]
async fn thousand_subscribers_leave_and_redis_subscriptions_return_to_zero() {
    let r = Redis::start();
    let h = on_redis(&redis_args(&r), &["--max-connections", "5000"]);
    let mut streams = Vec::new();
    for i in 0..1000 {
        streams.push(Sse::open(&h.url(&format!("/events?topic=t{},all", i % 100)), None).await);
    }
    let channels = r.cli(&["PUBSUB", "NUMSUB", "herald:{t7}:c", "herald:{all}:c"]);
    assert_eq!(
        channels.split_whitespace().collect::<Vec<_>>(),
        ["herald:{t7}:c", "1", "herald:{all}:c", "1"],
        "one Redis subscription per topic per instance"
    );
    assert_eq!(r.cli(&["PUBSUB", "NUMPAT"]).trim(), "0");
    let pubsub_clients = r.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    assert_eq!(
        pubsub_clients.lines().count(),
        1,
        "one subscriber connection: {pubsub_clients}"
    );
    assert_eq!(
        r.cli(&["PUBSUB", "CHANNELS", "herald:*"]).lines().count(),
        101
    );
    h.send("all", "n", json!("hello")).await;
    for s in &mut streams {
        assert_eq!(s.next().await.json(), json!("hello"));
    }
    drop(streams);
    eventually("every Redis subscription released", || async {
        r.cli(&["PUBSUB", "CHANNELS", "herald:*"]).trim().is_empty()
    })
    .await;
    let st = h.status().await;
    assert_eq!(
        (st["connections"].as_u64(), st["topics"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn redis_cluster_delivers_across_shards_and_resumes() {
    let c = Cluster::start();
    let mut args = c.url_args();
    args.push("--redis-cluster".into());
    let a = on_redis(&args, &[]);
    let b = on_redis(&args, &[]);
    assert_eq!(a.status().await["backend"], "redis-cluster");
    // Topics whose slots are on every shard.
    let mut topics: Vec<String> = Vec::new();
    let mut shards = [0usize; 3];
    for i in 0.. {
        let t = format!("shard-topic-{i}");
        let node = c.node_of(&format!("herald:{{{t}}}:s"));
        if shards[node] < 3 {
            shards[node] += 1;
            topics.push(t);
        }
        if shards.iter().all(|&n| n == 3) {
            break;
        }
    }
    let mut s = Sse::open(&a.url(&format!("/events?topic={}", topics.join(","))), None).await;
    let mut expected: HashMap<String, Vec<u64>> = HashMap::new();
    for i in 0..90u64 {
        let t = &topics[(i % 9) as usize];
        b.send(t, "n", json!({"t": t, "i": i})).await;
        expected.entry(t.clone()).or_default().push(i);
    }
    assert_eq!(read_grouped(&mut s, 90).await, expected);
    let cursor = s.last_id.clone();
    drop(s);

    // Cut the subscriber connections on every shard (the sharded-resubscribe case),
    // publish meanwhile, then check live delivery and resume.
    for n in &c.nodes {
        n.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    let mut live = Sse::open(&a.url(&format!("/events?topic={}", topics.join(","))), None).await;
    for n in &c.nodes {
        n.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    for i in 90..180u64 {
        let t = &topics[(i % 9) as usize];
        b.send(t, "n", json!({"t": t, "i": i})).await;
        expected.entry(t.clone()).or_default().push(i);
    }
    let got = read_grouped(&mut live, 90).await;
    for t in &topics {
        let want: Vec<u64> = expected[t].iter().copied().filter(|&i| i >= 90).collect();
        assert_eq!(got[t], want, "live after cuts, topic {t}");
    }
    let mut resumed = Sse::open(
        &b.url(&format!("/events?topic={}", topics.join(","))),
        Some(&cursor),
    )
    .await;
    let got = read_grouped(&mut resumed, 90).await;
    for t in &topics {
        let want: Vec<u64> = expected[t].iter().copied().filter(|&i| i >= 90).collect();
        assert_eq!(got[t], want, "resumed on another instance, topic {t}");
    }
    // Shard channels are released when the subscribers leave.
    drop((live, resumed));
    eventually("shard channels released", || async {
        c.nodes
            .iter()
            .all(|n| cli(n.port, &["PUBSUB", "SHARDCHANNELS"]).trim().is_empty())
    })
    .await;
}

#[tokio::test]
async fn a_deploy_adding_a_broadcast_topic_keeps_cursors_resuming() {
    // Instances before the deploy have no broadcast topic, those after have one:
    // a cursor from before resumes its topics exactly on an instance after, and
    // the broadcast topic (whose history it never saw) is reset.
    let r = Redis::start();
    let old = on_redis(&redis_args(&r), &[]);
    let new = on_redis(&redis_args(&r), &["--broadcast-topic", "all"]);
    let mut single = Sse::open(&old.url("/events?topic=a"), None).await;
    let mut multi = Sse::open(&old.url("/events?topic=a,b"), None).await;
    old.send("a", "n", json!(1)).await;
    assert_eq!(single.next().await.json(), json!(1));
    assert_eq!(multi.next().await.json(), json!(1));
    let (c1, c2) = (single.last_id.clone(), multi.last_id.clone());
    drop((single, multi));
    old.send("a", "n", json!(2)).await;
    old.send("b", "n", json!(3)).await;
    new.send("all", "notice", json!("broadcast")).await;
    for (topics, cursor, missed) in [
        ("a", &c1, vec![json!(2)]),
        ("a,b", &c2, vec![json!(2), json!(3)]),
    ] {
        let mut s = Sse::open(&new.url(&format!("/events?topic={topics}")), Some(cursor)).await;
        let ev = s.next().await;
        assert_eq!(
            (ev.event.as_str(), ev.json()),
            ("herald.reset", json!({"topics": ["all"]})),
            "{topics}"
        );
        for want in missed {
            assert_eq!(s.next().await.json(), want, "{topics}");
        }
        new.send("all", "notice", json!(topics)).await;
        assert_eq!(s.next().await.json(), json!(topics));
    }
}

#[tokio::test]
async fn retention_off_is_pure_pubsub_and_gaps_reset() {
    let r = Redis::start();
    let h = on_redis(&redis_args(&r), &["--retention-events", "0"]);
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    h.send("t", "n", json!(1)).await;
    assert_eq!(s.next().await.json(), json!(1));
    let cursor = s.last_id.clone();
    drop(s);
    h.send("t", "n", json!("missed")).await;
    assert_eq!(
        r.cli(&["XLEN", "herald:{t}:s"]).trim(),
        "0",
        "nothing retained"
    );
    let mut s = Sse::open(&h.url("/events?topic=t"), Some(&cursor)).await;
    assert_eq!(s.next().await.event, "herald.reset");
}

#[tokio::test]
async fn password_in_the_url() {
    let r = Redis::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        "s3cret",
    ]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", r.port);
    let h = on_redis(&["--redis-url".into(), url], &[]);
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    h.send("t", "n", json!("authenticated")).await;
    assert_eq!(s.next().await.json(), json!("authenticated"));
    // A wrong password stops startup with a clear message.
    let bad = format!("redis://:wrong@127.0.0.1:{}/0", r.port);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redis-url", &bad])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach Redis") || err.contains("WRONGPASS"),
        "{err}"
    );
}

#[tokio::test]
async fn rediss_tls_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=herald-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let port = support::redis::free_port().to_string();
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let r = Redis::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{port}/0");
    let h = Herald::start_with_env(&["--redis-url", &url], &[("SSL_CERT_FILE", &ca)]);
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    h.send("t", "n", json!("over TLS")).await;
    assert_eq!(s.next().await.json(), json!("over TLS"));
    let clients = r.cli(&["CLIENT", "LIST"]);
    assert!(
        clients.lines().count() >= 2,
        "herald is connected: {clients}"
    );
}

#[tokio::test]
async fn library_fail_open_publish_logs_counts_and_succeeds() {
    let mut r = Redis::start();
    let redis = herald::RedisConfig {
        urls: vec![r.url()],
        fail_open: true,
        ..Default::default()
    };
    let hub = herald::Hub::with_redis(herald::HubConfig::default(), redis)
        .await
        .unwrap();
    // The same hub's HTTP publish route, served by the app.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().merge(hub.router());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http_publish = |data: Value| async move {
        let res = client()
            .post(format!("http://{addr}/publish"))
            .json(&json!({"topic": "t", "data": data}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    let p = hub.publish("t", "n", &json!(1)).await.unwrap();
    assert!(p > herald::Position::default());
    assert_eq!(http_publish(json!(1)).await.0, 200);
    r.stop();
    let p = hub.publish("t", "n", &json!(2)).await.unwrap();
    assert_eq!(
        p,
        herald::Position::default(),
        "fail-open answers position 0-0"
    );
    assert!(
        hub.render_metrics()
            .contains("herald_publish_failed_open_total 1")
    );
    // The HTTP API never fails open: its publisher learns the events were not taken.
    let (status, body) = http_publish(json!(3)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "backend_unavailable", "{body}");
    assert!(
        hub.render_metrics()
            .contains("herald_publish_failed_open_total 1"),
        "the refused HTTP publish is not counted as failed open"
    );

    // The same hub without fail-open returns the error.
    r.restart();
    let strict = herald::Hub::with_redis(
        herald::HubConfig::default(),
        herald::RedisConfig {
            urls: vec![r.url()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    r.stop();
    assert!(matches!(
        strict.publish("t", "n", &json!(3)).await,
        Err(herald::PublishError::Backend(_))
    ));
}

/// `Hub::has_subscriber` answers for every instance: a subscriber on instance A is
/// seen from a library hub B sharing the Redis (single node and Cluster).
async fn has_subscriber_across_instances(urls: Vec<String>, cluster: bool, args: &[String]) {
    let a = on_redis(args, &[]);
    let b = herald::Hub::with_redis(
        herald::HubConfig::default(),
        herald::RedisConfig {
            urls,
            cluster,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!b.has_subscriber("session:abc").await.unwrap());
    let s = Sse::open(&a.url("/events?topic=session:abc"), None).await;
    assert!(b.has_subscriber("session:abc").await.unwrap());
    assert!(!b.has_subscriber("session:other").await.unwrap());
    drop(s);
    eventually("the subscriber is gone everywhere", || async {
        !b.has_subscriber("session:abc").await.unwrap()
    })
    .await;
    assert!(b.has_subscriber("bad topic").await.is_err());
}

#[tokio::test]
async fn has_subscriber_sees_other_instances() {
    let r = Redis::start();
    has_subscriber_across_instances(vec![r.url()], false, &redis_args(&r)).await;
}

#[tokio::test]
async fn has_subscriber_sees_other_instances_on_a_cluster() {
    let c = Cluster::start();
    let mut args = c.url_args();
    args.push("--redis-cluster".into());
    let urls = c.nodes.iter().map(|n| n.url()).collect();
    has_subscriber_across_instances(urls, true, &args).await;
}

/// Exclusive session topics across instances: a stream on instance A holds
/// `session:s1`; a subscriber (the Rust client) on instance B takes it over; A's
/// stream gets `herald.replaced` and ends; resuming A's cursor takes it back.
async fn exclusive_session_moves_between_instances(args: &[String]) {
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--exclusive-prefix", "session:", "--retry", "100ms"]);
    let a = Herald::start(&args);
    let b = Herald::start(&args);
    let mut first = Sse::open(&a.url("/events?topic=session:s1,news"), None).await;
    b.send("session:s1", "step", json!(1)).await;
    assert_eq!(first.next().await.json(), json!(1));
    let cursor = first.last_id.clone();

    let client = herald_client::Client::new(b.url("")).unwrap();
    let mut second = client.subscribe(["session:s1"]).stream();
    let connected = next_message(&mut second).await;
    assert!(
        matches!(connected, herald_client::Message::Connected),
        "{connected:?}"
    );
    let replaced = first.next().await;
    assert_eq!(replaced.event, "herald.replaced");
    assert_eq!(replaced.json(), json!({"topics": ["session:s1"]}));
    assert!(first.rest().await.is_empty(), "the replaced stream ends");

    a.send("session:s1", "step", json!(2)).await;
    match next_message(&mut second).await {
        herald_client::Message::Event(e) => {
            assert_eq!((e.name.as_str(), e.data.as_str()), ("step", "2"))
        }
        other => panic!("{other:?}"),
    }
    // Taking it back on A with the old cursor replays what was missed (and no
    // takeover marker), and B's subscriber is told and stops for good.
    let mut back = Sse::open(&a.url("/events?topic=session:s1,news"), Some(&cursor)).await;
    let ev = back.next().await;
    assert_eq!((ev.event.as_str(), ev.json()), ("step", json!(2)));
    match next_message(&mut second).await {
        herald_client::Message::Replaced { topics } => assert_eq!(topics, ["session:s1"]),
        other => panic!("{other:?}"),
    }
    let end = tokio::time::timeout(
        support::DEADLINE,
        futures_util::StreamExt::next(&mut second),
    )
    .await
    .unwrap();
    assert!(
        end.is_none(),
        "a replaced subscription does not reconnect: {end:?}"
    );
    b.send("session:s1", "step", json!(3)).await;
    assert_eq!(back.next().await.json(), json!(3));
    assert!(
        b.metric("herald_streams_replaced_total").await
            + a.metric("herald_streams_replaced_total").await
            >= 2.0
    );
}

async fn next_message(s: &mut herald_client::Subscription) -> herald_client::Message {
    use futures_util::StreamExt;
    tokio::time::timeout(support::DEADLINE, s.next())
        .await
        .expect("a message in time")
        .expect("the subscription goes on")
        .expect("no error")
}

#[tokio::test]
async fn exclusive_session_moves_between_instances_on_one_node() {
    let r = Redis::start();
    exclusive_session_moves_between_instances(&redis_args(&r)).await;
}

#[tokio::test]
async fn exclusive_session_moves_between_instances_on_a_cluster() {
    let c = Cluster::start();
    let mut args = c.url_args();
    args.push("--redis-cluster".into());
    exclusive_session_moves_between_instances(&args).await;
}

/// Redis comes back without its data (no persistence): the hub cannot tell what
/// it missed while away, so when it reconnects it ends its local streams of the
/// topic. An idle stream waits on nothing a publisher wakes: the topic's closed
/// ring wakes it. The client's resume from its cursor gets `herald.reset`.
#[tokio::test]
async fn redis_losing_its_data_ends_idle_streams_which_resume_with_a_reset() {
    let mut r = Redis::start();
    let h = on_redis(&redis_args(&r), &[]);
    let mut s = Sse::open(&h.url("/events?topic=t"), None).await;
    h.send("t", "n", json!(1)).await;
    assert_eq!(next_data(&mut s).await, json!(1));
    let cursor = s.last_id.clone();
    r.stop();
    r.restart();
    // The stream ends (after its `retry:` hint) with nothing published and no
    // heartbeat (15 s away) to wake it.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(10), s.rest())
        .await
        .expect("the stream ended");
    assert!(rest.is_empty(), "{rest:?}");
    let mut again = Sse::open(&h.url("/events?topic=t"), Some(&cursor)).await;
    assert_eq!(again.next().await.event, "herald.reset");
}
