//! Configuration, connection cleanup and graceful shutdown of the real binary.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use serde_json::json;
use support::{DEADLINE, Herald, Sse, client, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

#[test]
fn help_documents_every_flag_with_its_default_and_env() {
    let out = herald().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, default) in [
        ("--listen", Some("127.0.0.1:8080")),
        ("--heartbeat", Some("15s")),
        ("--heartbeat-event", None),
        ("--max-connections", Some("10000")),
        ("--queue-size", Some("256")),
        ("--max-payload-bytes", Some("65536")),
        ("--max-topics", Some("32")),
        ("--retention-events", Some("1000")),
        ("--retention-ttl", Some("1h")),
        ("--retry", Some("2s")),
        ("--write-timeout", Some("15s")),
        ("--header-read-timeout", Some("10s")),
        ("--shutdown-grace", Some("5s")),
        ("--log-format", Some("text")),
        ("--worker-threads", None),
        ("--config", None),
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
        let env = format!("HERALD_{}", flag[2..].replace('-', "_").to_uppercase());
        assert!(help.contains(&env), "{env} missing from\n{help}");
        if let Some(d) = default {
            assert!(
                help.contains(&format!("[default: {d}]")),
                "{flag} default {d} missing"
            );
        }
    }
}

#[tokio::test]
async fn the_readme_lists_every_metric() {
    let h = Herald::start(&[]);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let exposed: Vec<String> = h
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(exposed.len() > 10, "{exposed:?}");
    let missing: Vec<_> = exposed
        .iter()
        .filter(|m| !readme.contains(&format!("`{m}`")))
        .collect();
    assert!(missing.is_empty(), "metrics not in README.md: {missing:?}");
}

#[test]
fn invalid_values_stop_startup_with_a_clear_message() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--heartbeat", "soon"], &[], "--heartbeat"),
        (&["--max-connections=-1"], &[], "--max-connections"),
        (&["--listen", "nowhere"], &[], "--listen"),
        (&["--queue-size", "0"], &[], "queue_size"),
        (&["--max-topics", "0"], &[], "max_topics"),
        (&["--heartbeat", "1ms"], &[], "heartbeat"),
        (&["--log-format", "xml"], &[], "--log-format"),
        (&["--worker-threads", "0"], &[], "--worker-threads"),
        (&[], &[("HERALD_WORKER_THREADS", "all")], "--worker-threads"),
        (&[], &[("HERALD_MAX_TOPICS", "many")], "--max-topics"),
        (&[], &[("HERALD_RETRY", "x")], "--retry"),
        (&["--broadcast-topic", "all news"], &[], "broadcast_topic"),
        (
            &["--exclusive-prefix", "se ssion:"],
            &[],
            "exclusive_prefixes",
        ),
    ];
    for (args, env, needle) in cases {
        let mut cmd = herald();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(*args);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {needle} not in {err}");
    }
}

/// `--worker-threads` sets how many threads run the hub, and the hub works on one.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn worker_threads_set_the_runtime_size() {
    let threads = |h: &Herald| {
        std::fs::read_dir(format!("/proc/{}/task", h.child.id()))
            .unwrap()
            .count()
    };
    let one = Herald::start(&["--worker-threads", "1"]);
    let three = Herald::start_with_env(&[], &[("HERALD_WORKER_THREADS", "3")]);
    // The same threads besides the workers (the main thread), whatever they are.
    assert_eq!(threads(&three) - threads(&one), 2);
    let mut sse = Sse::open(&one.url("/events?topic=solo"), None).await;
    one.send("solo", "ping", json!({"n": 1})).await;
    let ev = sse.next().await;
    assert_eq!((ev.event.as_str(), ev.json()), ("ping", json!({"n": 1})));
}

#[test]
fn bad_config_files_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("max-topics = [1]", "must hold strings"),
        (
            "max-topics = {a = 1}",
            "must be a string, integer, boolean or list of strings",
        ),
        ("nonsense = 1", "unknown setting \"nonsense\""),
        ("max-topics = ", "invalid TOML"),
        ("max-topics = \"x\"", "--max-topics"),
    ] {
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, text).unwrap();
        let out = herald()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{text}: {needle} not in {err}");
    }
    let out = herald()
        .args(["serve", "--config", "/nonexistent/herald.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

/// The most topics a hub accepts on one connection, probed over HTTP.
async fn max_topics(h: &Herald) -> usize {
    for n in 1..=10 {
        let q: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let res = client()
            .get(h.url(&format!("/events?topic={}", q.join(","))))
            .send()
            .await
            .unwrap();
        if res.status() == 400 {
            return n - 1;
        }
    }
    panic!("no topic limit found");
}

#[tokio::test]
async fn flags_win_over_env_and_env_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(
        &path,
        "max_topics = 2\nheartbeat = \"100ms\"\nheartbeat-event = true\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();

    let h = Herald::start(&["--config", file]);
    assert_eq!(max_topics(&h).await, 2, "file");
    // The file's other settings apply too: heartbeat events every 100ms.
    let mut s = Sse::open(&h.url("/events?topic=x"), None).await;
    assert_eq!(s.next().await.event, "heartbeat");

    let h = Herald::start_with_env(&["--config", file], &[("HERALD_MAX_TOPICS", "3")]);
    assert_eq!(max_topics(&h).await, 3, "env over file");

    let h = Herald::start_with_env(
        &["--config", file, "--max-topics", "4"],
        &[("HERALD_MAX_TOPICS", "3")],
    );
    assert_eq!(max_topics(&h).await, 4, "flag over env");

    // The config file can come from the environment as well.
    let h = Herald::start_with_env(&[], &[("HERALD_CONFIG", file)]);
    assert_eq!(max_topics(&h).await, 2, "HERALD_CONFIG");
}

#[tokio::test]
async fn ten_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    let h = Herald::start(&["--max-connections", "20000"]);
    let addr = h.addr;
    let workers: Vec<_> = (0..20)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..500 {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let req =
                        format!("GET /events?topic=w{w},c{i},shared HTTP/1.1\r\nHost: x\r\n\r\n");
                    s.write_all(req.as_bytes()).await.unwrap();
                    // Read until the cursor frame arrived: the stream is registered.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !String::from_utf8_lossy(&buf).contains("id: ") {
                        let n = s.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "stream ended early");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(h.metric("herald_connections_total").await, 10_000.0);
    eventually("every stream cleaned up", || async {
        let st = h.status().await;
        st["connections"] == 0 && st["topics"] == 0 && st["subscriptions"] == 0
    })
    .await;
    assert_eq!(h.metric("herald_connections_open").await, 0.0);
}

#[tokio::test]
async fn sigterm_ends_streams_with_a_retry_hint_and_exits() {
    let mut h = Herald::start(&["--retry", "3s"]);
    let mut s = Sse::open(&h.url("/events?topic=a"), None).await;
    h.send("a", "n", json!(1)).await;
    assert_eq!(s.next().await.json(), json!(1));
    h.signal("TERM");
    // The stream ends (the client would reconnect after `retry`).
    assert!(s.rest().await.is_empty());
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = h.child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "herald did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let log = h.log.lock().unwrap().join("\n");
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test]
async fn shutdown_stream_ends_with_retry_line() {
    let h = Herald::start(&["--retry", "3s"]);
    let addr = h.addr;
    let reader = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /events?topic=a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    eventually("subscribed", || async {
        h.status().await["connections"] == 1
    })
    .await;
    h.signal("INT");
    let out = reader.await.unwrap();
    // The last SSE bytes before the chunked terminator are the retry hint.
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    let sse: Vec<&str> = body
        .lines()
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    assert_eq!(sse.last(), Some(&"retry: 3000"), "{out}");
    assert_eq!(
        sse.iter().filter(|l| l.starts_with("retry:")).count(),
        2,
        "{out}"
    );
}
