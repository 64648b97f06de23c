//! Every bad input gets its status and JSON error body, and changes nothing.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::{Herald, Sse, client, eventually, raw_get};

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, case: &str) {
    assert_eq!(status, want_status, "{case}: {body}");
    assert_eq!(body["error"], want_code, "{case}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{case}: detail missing in {body}"
    );
}

#[tokio::test]
async fn publish_errors() {
    let h = Herald::start(&["--max-payload-bytes", "100"]);
    let mut watcher = Sse::open(&h.url("/events?topic=a"), None).await;
    let long_topic = "t".repeat(201);
    let long_event = "e".repeat(101);
    let batch: Vec<Value> = (0..1001)
        .map(|_| json!({"topic": "a", "data": 1}))
        .collect();
    let batch = serde_json::to_string(&batch).unwrap();
    // More events for one topic than a subscriber's queue (256 by default).
    let one_topic: Vec<Value> = (0..257).map(|i| json!({"topic": "a", "data": i})).collect();
    let one_topic = serde_json::to_string(&one_topic).unwrap();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "text/plain",
            "wrong content type",
            r#"{"topic":"a","data":1}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            "",
            "no content type",
            r#"{"topic":"a","data":1}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            "application/json",
            "malformed",
            "{".into(),
            400,
            "malformed_json",
        ),
        (
            "application/json",
            "trailing garbage",
            r#"{"topic":"a","data":1} x"#.into(),
            400,
            "malformed_json",
        ),
        (
            "application/json",
            "empty body",
            "".into(),
            400,
            "malformed_json",
        ),
        (
            "application/json",
            "missing data",
            r#"{"topic":"a"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "missing topic",
            r#"{"data":1}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "unknown field",
            r#"{"topic":"a","data":1,"dta":2}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "topic not a string",
            r#"{"topic":5,"data":1}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "not an object",
            r#""hello""#.into(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "empty batch",
            "[]".into(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "batch too long",
            batch,
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "more events for one topic than the queue size",
            one_topic,
            400,
            "invalid_request",
        ),
        (
            "application/json",
            "empty topic",
            r#"{"topic":"","data":1}"#.into(),
            400,
            "bad_topic",
        ),
        (
            "application/json",
            "space in topic",
            r#"{"topic":"a b","data":1}"#.into(),
            400,
            "bad_topic",
        ),
        (
            "application/json",
            "comma in topic",
            r#"{"topic":"a,b","data":1}"#.into(),
            400,
            "bad_topic",
        ),
        (
            "application/json",
            "newline in topic",
            r#"{"topic":"a\nid: 1","data":1}"#.into(),
            400,
            "bad_topic",
        ),
        (
            "application/json",
            "non-ascii topic",
            r#"{"topic":"ü","data":1}"#.into(),
            400,
            "bad_topic",
        ),
        (
            "application/json",
            "wildcard topic",
            r#"{"topic":"a*","data":1}"#.into(),
            400,
            "bad_topic",
        ),
        (
            "application/json",
            "long topic",
            format!(r#"{{"topic":"{long_topic}","data":1}}"#),
            400,
            "bad_topic",
        ),
        (
            "application/json",
            "bad event name",
            r#"{"topic":"a","event":"a b","data":1}"#.into(),
            400,
            "bad_event_name",
        ),
        (
            "application/json",
            "CRLF event name",
            r#"{"topic":"a","event":"x\r\ndata: evil","data":1}"#.into(),
            400,
            "bad_event_name",
        ),
        (
            "application/json",
            "empty event name",
            r#"{"topic":"a","event":"","data":1}"#.into(),
            400,
            "bad_event_name",
        ),
        (
            "application/json",
            "long event name",
            format!(r#"{{"topic":"a","event":"{long_event}","data":1}}"#),
            400,
            "bad_event_name",
        ),
        (
            "application/json",
            "reserved event name",
            r#"{"topic":"a","event":"herald.reset","data":1}"#.into(),
            400,
            "bad_event_name",
        ),
        (
            "application/json",
            "payload too large",
            format!(r#"{{"topic":"a","data":"{}"}}"#, "x".repeat(99)),
            413,
            "payload_too_large",
        ),
        (
            "application/json",
            "one bad event spoils the batch",
            r#"[{"topic":"a","data":1},{"topic":"a","data":1,"x":0}]"#.into(),
            400,
            "invalid_request",
        ),
    ];
    for (ct, case, body, status, code) in cases {
        let mut req = client().post(h.url("/publish")).body(body);
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let got_status = res.status().as_u16();
        assert_eq!(res.headers()["content-type"], "application/json", "{case}");
        let got: Value = res.json().await.unwrap();
        assert_error(got_status, &got, status, code, case);
    }
    // A body over the request limit (1 MiB here).
    let (status, body) = h
        .publish_raw("application/json", vec![b' '; (1 << 20) + 1])
        .await;
    assert_error(status, &body, 413, "body_too_large", "body too large");
    // A body that cannot be read is not too large: 400 (it was 413).
    for (case, framing) in [
        (
            "bad chunk size",
            "Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "chunk size overflow",
            "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n{}\r\n",
        ),
    ] {
        let req = format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}"
        );
        let out = raw_get(h.addr, &req, "}").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{case}: {out}");
        assert!(
            out.contains(r#""error":"invalid_request""#),
            "{case}: {out}"
        );
    }
    // A rejected name comes back cut to 64 characters, not whole.
    let huge = "é".repeat(200_000);
    let (status, body) = h
        .publish_raw(
            "application/json",
            format!(r#"{{"topic":"{huge}","event":"{huge}","data":1}}"#),
        )
        .await;
    assert_error(status, &body, 400, "bad_topic", "megabyte topic");
    assert!(body.to_string().len() < 400, "{body}");
    let (status, body) = h
        .publish_raw(
            "application/json",
            format!(
                r#"{{"topic":"a","event":"{}","data":1}}"#,
                "e".repeat(400_000)
            ),
        )
        .await;
    assert_error(status, &body, 400, "bad_event_name", "long event name");
    assert!(body.to_string().len() < 400, "{body}");

    // The limit is on compact JSON: exactly 100 bytes passes, whitespace does not count.
    let hundred = format!(r#"{{ "topic": "a", "data": "{}" }}"#, "y".repeat(98));
    let (status, body) = h
        .publish_raw("application/json; charset=utf-8", hundred)
        .await;
    assert_eq!(status, 200, "{body}");
    // Nothing of the refused requests was published: the one accepted event is next.
    assert_eq!(watcher.next().await.json(), json!("y".repeat(98)));
    assert_eq!(h.status().await["events_published"], 1);
    assert!(h.metric("herald_publish_rejected_total").await >= 27.0);
}

#[tokio::test]
async fn subscribe_errors() {
    let h = Herald::start(&["--max-topics", "3"]);
    let fresh = Sse::open(&h.url("/events?topic=a,b"), None).await;
    let two_topic_cursor = fresh.last_id.clone();
    drop(fresh);
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("/events".into(), None, "no_topic"),
        ("/events?other=1".into(), None, "no_topic"),
        ("/events?topic=".into(), None, "bad_topic"),
        ("/events?topic=a,,b".into(), None, "bad_topic"),
        ("/events?topic=a%0Aid:%201".into(), None, "bad_topic"),
        ("/events?topic=a%0D%0Aevent:x".into(), None, "bad_topic"),
        ("/events?topic=*".into(), None, "bad_topic"),
        ("/events?topic=a%20b".into(), None, "bad_topic"),
        (
            format!("/events?topic={}", "t".repeat(201)),
            None,
            "bad_topic",
        ),
        ("/events?topic=a,b,c,d".into(), None, "too_many_topics"),
        (
            "/events?topic=a,b&topic=c,d".into(),
            None,
            "too_many_topics",
        ),
        ("/events?topic=a".into(), Some("garbage"), "bad_cursor"),
        ("/events?topic=a".into(), Some("1-2-3"), "bad_cursor"),
        (
            "/events?topic=a&last_event_id=1-x".into(),
            None,
            "bad_cursor",
        ),
        (
            "/events?topic=a&last_event_id=1-1%0Aevent:%20x".into(),
            None,
            "bad_cursor",
        ),
        (
            "/events?topic=a,c".into(),
            Some(two_topic_cursor.as_str()),
            "bad_cursor",
        ),
        (
            "/events?topic=a".into(),
            Some(two_topic_cursor.as_str()),
            "bad_cursor",
        ),
        ("/events?topic=a,b".into(), Some("1-0"), "bad_cursor"),
    ];
    for (path, cursor, code) in cases {
        let mut req = client().get(h.url(&path));
        if let Some(c) = cursor {
            req = req.header("last-event-id", c);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        assert_error(status, &body, 400, code, &format!("{path} {cursor:?}"));
    }
    // A non-ASCII Last-Event-ID header, sent raw.
    let out = raw_get(
        h.addr,
        "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \u{e9}\r\nConnection: close\r\n\r\n",
        "}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains(r#""error":"bad_cursor""#), "{out}");

    // Unknown paths and methods answer JSON too.
    let res = client().get(h.url("/nope")).send().await.unwrap();
    let status = res.status().as_u16();
    assert_error(status, &res.json().await.unwrap(), 404, "not_found", "404");
    let res = client().delete(h.url("/publish")).send().await.unwrap();
    let status = res.status().as_u16();
    assert_error(
        status,
        &res.json().await.unwrap(),
        405,
        "method_not_allowed",
        "405",
    );

    // Nothing was subscribed by any refused request.
    let st = h.status().await;
    assert_eq!(
        (st["connections"].as_u64(), st["topics"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
}

#[tokio::test]
async fn connection_limit_answers_503_with_retry_after() {
    let h = Herald::start(&["--max-connections", "2"]);
    let a = Sse::open(&h.url("/events?topic=a"), None).await;
    let _b = Sse::open(&h.url("/events?topic=b"), None).await;
    let res = client().get(h.url("/events?topic=c")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_error(503, &body, 503, "unavailable", "limit");
    assert_eq!(h.metric("herald_connections_rejected_total").await, 1.0);
    assert_eq!(
        h.status().await["topics"],
        2,
        "the refused stream subscribed nothing"
    );
    drop(a);
    eventually("a slot frees up", || async {
        h.status().await["connections"] == 1
    })
    .await;
    let _c = Sse::open(&h.url("/events?topic=c"), None).await;
}

#[tokio::test]
async fn nothing_injects_a_line_into_the_stream() {
    let h = Herald::start(&[]);
    let req = "GET /events?topic=t&last_event_id= HTTP/1.1\r\nHost: x\r\n\r\n";
    let reader = tokio::spawn({
        let addr = h.addr;
        async move { raw_get(addr, req, "\"end\"").await }
    });
    eventually("subscribed", || async {
        h.status().await["subscriptions"] == 1
    })
    .await;
    // Escaped newlines in strings stay escaped; pretty-printed JSON becomes one line.
    let evil = r#"{"topic":"t","event":"e","data":{"x":"a\nid: 666\n\nevent: evil\r\ndata: y"}}"#;
    let (status, _) = h.publish_raw("application/json", evil).await;
    assert_eq!(status, 200);
    let pretty = "{\"topic\":\"t\",\"data\":\n{\n  \"k\": [\n    1,\n    2\n  ]\n}\n}";
    let (status, _) = h.publish_raw("application/json", pretty).await;
    assert_eq!(status, 200);
    // Refused: names with CR/LF (publish), cursors with CR/LF (subscribe).
    let (status, _) = h
        .publish_raw(
            "application/json",
            r#"{"topic":"t","event":"a\nid: 1","data":1}"#,
        )
        .await;
    assert_eq!(status, 400);
    h.send("t", "e", json!("end")).await;
    let out = reader.await.unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap();
    let sse_lines: Vec<&str> = body
        .lines()
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    for l in &sse_lines {
        let field = l.split(':').next().unwrap();
        assert!(
            ["retry", "id", "event", "data", ""].contains(&field),
            "unexpected line {l:?} in\n{body}"
        );
        assert!(
            !l.starts_with("id: 666") && !l.starts_with("event: evil"),
            "{l:?}"
        );
    }
    let data_lines: Vec<&&str> = sse_lines
        .iter()
        .filter(|l| l.starts_with("data:"))
        .collect();
    assert_eq!(
        data_lines,
        [
            &r#"data: {"x":"a\nid: 666\n\nevent: evil\r\ndata: y"}"#,
            &r#"data: {"k":[1,2]}"#,
            &r#"data: "end""#
        ]
    );
}

/// Requests hyper would refuse with an empty body get the hub's JSON errors:
/// malformed heads, ambiguous body framing (a request-smuggling shape), control
/// characters in a header, too many headers.
#[tokio::test]
async fn malformed_and_ambiguous_requests_get_json_errors() {
    let h = Herald::start(&[]);
    let head = |extra: &str| format!("GET /events?topic=a HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let post = |extra: &str| {
        format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n{{}}"
        )
    };
    let many = |n: usize| {
        (0..n)
            .map(|i| format!("X-Pad-{i}: 1\r\n"))
            .collect::<String>()
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "garbage",
            "GARBAGE\r\n\r\n".into(),
            "400",
            "invalid_request",
        ),
        (
            "space in a header name",
            head("Bad Header: 1\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "unknown version",
            "GET /health HTTP/9.9\r\n\r\n".into(),
            "400",
            "invalid_request",
        ),
        (
            "bare CR in Last-Event-ID",
            head("Last-Event-ID: a\rb\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "NUL in Origin",
            head("Origin: a\0b\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "two lengths",
            post("Content-Length: 2\r\nContent-Length: 5\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "a list as length",
            post("Content-Length: 2, 2\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "negative length",
            post("Content-Length: -1\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "23-digit length",
            post(&format!("Content-Length: {}\r\n", "9".repeat(23))),
            "400",
            "invalid_request",
        ),
        (
            "identity coding",
            post("Transfer-Encoding: identity\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "two codings",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            "400",
            "invalid_request",
        ),
        (
            "101 headers",
            format!("GET /health HTTP/1.1\r\nHost: x\r\n{}\r\n", many(100)),
            "431",
            "header_too_large",
        ),
    ];
    for (case, req, status, code) in &cases {
        let out = raw_get(h.addr, req, "}").await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{case}: {out}"
        );
        assert!(
            out.contains("content-type: application/json"),
            "{case}: {out}"
        );
        assert!(
            out.contains(&format!(r#""error":"{code}""#)),
            "{case}: {out}"
        );
    }
    // Up to hyper's limit of 100 headers, a request is served.
    let out = raw_get(
        h.addr,
        &format!("GET /health HTTP/1.1\r\nHost: x\r\n{}\r\n", many(60)),
        "}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(h.status().await["events_published"], 0);
    assert_eq!(h.status().await["connections"], 0);
}

/// A publish whose body stops short is answered 408 after the head's read
/// timeout, instead of holding its connection for ever.
#[tokio::test]
async fn a_publish_body_that_never_arrives_gets_408() {
    let h = Herald::start(&["--header-read-timeout", "1s"]);
    let req = "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"topic\"";
    let out = raw_get(h.addr, req, "}").await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains(r#""error":"request_timeout""#), "{out}");
    assert_eq!(h.status().await["events_published"], 0);
}

#[tokio::test]
async fn oversized_heads_http10_and_pipelining() {
    let h = Herald::start(&[]);
    // A request head over 16 KiB: 431 with the JSON body.
    let big = format!(
        "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(17 * 1024)
    );
    let out = raw_get(h.addr, &big, "}").await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(out.contains(r#""error":"header_too_large""#), "{out}");
    // HTTP/1.0 clients get a close-delimited stream (no chunked encoding).
    let out = raw_get(h.addr, "GET /events?topic=a HTTP/1.0\r\n\r\n", "id: ").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("transfer-encoding"), "{out}");
    assert!(out.contains("\r\n\r\nretry: 2000\n\nid: "), "{out}");
    // Two pipelined requests on one connection, read ahead by the hub, answered by
    // the router in order.
    let out = raw_get(
        h.addr,
        "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "\"version\"",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    // A client that does not finish its head within --header-read-timeout is
    // dropped (slowloris): the connection closes with nothing answered.
    let h = Herald::start(&["--header-read-timeout", "300ms"]);
    let started = std::time::Instant::now();
    let out = raw_get(h.addr, "GET /events?topic=a HTTP/1.1\r\n", "\r\n\r\n").await;
    assert!(
        out.is_empty(),
        "nothing is answered before the head is complete: {out}"
    );
    assert!(
        started.elapsed() < support::DEADLINE,
        "closed by the server, not by the test's deadline"
    );
}
