//! The examples run: each is started as a real process and used over HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{example, read_until};

#[tokio::test]
async fn minimal_example_publishes_created_comments() {
    let app = Running::start("minimal", &[]);
    let addr = &app.addr;
    let mut sub = TcpStream::connect(&addr).await.unwrap();
    sub.write_all(b"GET /events?topic=comments HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut sub, "id: ").await;
    let body = r#"{"text": "hello"}"#;
    let mut p = TcpStream::connect(&addr).await.unwrap();
    p.write_all(
        format!("POST /comments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    p.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = read_until(&mut sub, "data: ").await;
    assert!(
        got.contains("event: comment_created\ndata: {\"text\":\"hello\"}\n"),
        "{got}"
    );
}

// ---- crm_comments and authorized -------------------------------------------------

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

/// A running example, killed when dropped.
struct Running {
    child: std::process::Child,
    addr: String,
}

impl Running {
    /// Starts `name` with `envs` (and `ADDR=127.0.0.1:0` unless given); waits for
    /// its `listening on http://<addr>` line.
    fn start(name: &str, envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(example(name));
        command.env("ADDR", "127.0.0.1:0");
        command.envs(envs.iter().copied());
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("{name} printed {line:?} first"))
            .to_owned();
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, then the exit status (10 s at most).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type EventStream = Pin<
    Box<
        dyn Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// An open event stream (the subscription is live once the 200 has arrived).
struct Sse(EventStream);

impl Sse {
    /// Subscribes; on a refusal, its status and JSON body.
    async fn open(url: &str, bearer: Option<&str>) -> Result<Self, (u16, Value)> {
        use eventsource_stream::Eventsource;
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            let ct = response.headers()[reqwest::header::CONTENT_TYPE].clone();
            assert!(
                ct.to_str().unwrap().starts_with("application/json"),
                "{ct:?}"
            );
            return Err((status, response.json().await.unwrap()));
        }
        Ok(Self(Box::pin(response.bytes_stream().eventsource())))
    }

    /// The next event, as (name, data parsed as JSON); 10 s at most.
    async fn next(&mut self) -> (String, Value) {
        let event = tokio::time::timeout(Duration::from_secs(10), self.0.next())
            .await
            .expect("no event within 10 s")
            .expect("the stream ended")
            .unwrap();
        let data = serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {:?}", event.data));
        (event.event, data)
    }
}

/// Sends `body` (raw) with `content_type`; answers status and JSON body (`null` when
/// the body is empty).
async fn call(method: &str, url: &str, content_type: &str, body: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method, url);
    if !body.is_empty() {
        request = request
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

async fn send_json(method: &str, url: &str, body: &Value) -> (u16, Value) {
    call(method, url, "application/json", &body.to_string()).await
}

fn temp_db(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("comments.db").display()
    )
}

#[tokio::test]
async fn crm_comments_crud_publishes_ids_and_rejects_bad_input_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = temp_db(&dir);
    let mut app = Running::start("crm_comments", &[("DATABASE_URL", &db)]);
    let comments = app.url("/threads/7/comments");

    let (status, page) = {
        let r = reqwest::get(app.url("/")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 200);
    assert!(page.contains("new EventSource(") && page.contains("id=\"connection\""));
    assert_eq!(
        send_json("GET", &comments, &Value::Null).await,
        (200, json!([]))
    );

    let mut sub = Sse::open(&app.url("/events?topic=thread:7"), None)
        .await
        .unwrap();
    let mut other_thread = Sse::open(&app.url("/events?topic=thread:8"), None)
        .await
        .unwrap();

    // Create: 201 with the comment; the event carries its ids only.
    let (status, created) = send_json(
        "POST",
        &comments,
        &json!({"author": " Ann ", "body": "First!\nSecond line"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["thread_id"], 7);
    assert_eq!(created["author"], "Ann");
    assert_eq!(created["body"], "First!\nSecond line");
    assert_eq!(
        sub.next().await,
        ("comment_created".into(), json!({"id": id, "thread_id": 7}))
    );

    // Update, with PATCH and with PUT.
    for (method, text) in [("PATCH", "edited"), ("PUT", "edited again")] {
        let (status, updated) =
            send_json(method, &format!("{comments}/{id}"), &json!({"body": text})).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["body"], text);
        assert_eq!(
            sub.next().await,
            ("comment_updated".into(), json!({"id": id, "thread_id": 7}))
        );
    }
    let (status, one) = send_json("GET", &format!("{comments}/{id}"), &Value::Null).await;
    assert_eq!((status, &one["body"]), (200, &json!("edited again")));

    // Bad input: JSON errors, nothing stored, nothing published.
    let bad: [(&str, String, &str, &str, u16, &str); 11] = [
        (
            "POST",
            comments.clone(),
            "application/json",
            "{\"author\": ",
            400,
            "malformed_json",
        ),
        (
            "POST",
            comments.clone(),
            "text/plain",
            r#"{"author":"a","body":"b"}"#,
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            comments.clone(),
            "application/json",
            r#"{"author":"a"}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            comments.clone(),
            "application/json",
            r#"{"author":"a","body":"b","x":1}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            comments.clone(),
            "application/json",
            r#"{"author":"a","body":7}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            comments.clone(),
            "application/json",
            r#"{"author":"a","body":"   "}"#,
            422,
            "validation_failed",
        ),
        (
            "POST",
            comments.clone(),
            "application/json",
            r#"{"author":"","body":"b"}"#,
            422,
            "validation_failed",
        ),
        (
            "POST",
            app.url("/threads/abc/comments"),
            "application/json",
            r#"{"author":"a","body":"b"}"#,
            400,
            "bad_id",
        ),
        (
            "PATCH",
            format!("{comments}/999999"),
            "application/json",
            r#"{"body":"b"}"#,
            404,
            "not_found",
        ),
        (
            "PATCH",
            format!("{comments}/{id}"),
            "application/json",
            r#"{"body":""}"#,
            422,
            "validation_failed",
        ),
        (
            "DELETE",
            format!("{comments}/999999"),
            "",
            "",
            404,
            "not_found",
        ),
    ];
    for (method, url, content_type, body, status, code) in bad {
        let (got, answer) = call(method, &url, content_type, body).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{method} {url} {body}: {answer}"
        );
        assert!(
            answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{answer}"
        );
    }
    let (_, answer) = send_json(
        "POST",
        &comments,
        &json!({"author": "a", "body": "x".repeat(5001)}),
    )
    .await;
    assert_eq!(
        (answer["error"].as_str(), answer["field"].as_str()),
        (Some("validation_failed"), Some("body"))
    );
    // The hub's routes keep their own JSON errors.
    let (status, answer) = call("GET", &app.url("/nowhere"), "", "").await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));

    // Delete (published by the publish_response layer: the response is the event).
    let (status, deleted) = send_json("DELETE", &format!("{comments}/{id}"), &Value::Null).await;
    assert_eq!(
        (status, &deleted),
        (200, &json!({"id": id, "thread_id": 7}))
    );
    assert_eq!(
        sub.next().await,
        ("comment_deleted".into(), json!({"id": id, "thread_id": 7}))
    );
    assert_eq!(
        send_json("GET", &comments, &Value::Null).await,
        (200, json!([]))
    );

    // Another thread's topic got nothing of thread 7: its first event is its own.
    let (status, mine) = send_json(
        "POST",
        &app.url("/threads/8/comments"),
        &json!({"author": "Bo", "body": "thread 8"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        other_thread.next().await,
        (
            "comment_created".into(),
            json!({"id": mine["id"], "thread_id": 8})
        )
    );

    // SIGTERM: streams end (with a retry hint), the process exits cleanly, and the
    // comments are still there after a restart on the same database.
    let status = app.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sub.0.next())
            .await
            .expect("the stream did not end")
            .is_none_or(|r| r.is_err())
    );
    let app = Running::start("crm_comments", &[("DATABASE_URL", &db)]);
    let (status, list) = send_json("GET", &app.url("/threads/8/comments"), &Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["body"], "thread 8");
}

#[tokio::test]
async fn authorized_example_lets_each_user_subscribe_to_their_own_topic_only() {
    let secret = "a-test-secret-of-32-bytes-length";
    let app = Running::start("authorized", &[("JWT_SECRET", secret)]);
    let login = |user: &str| {
        let url = app.url("/login");
        let body = json!({ "user": user });
        async move {
            let (status, answer) = send_json("POST", &url, &body).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(
                answer["topic"],
                format!("user:{}", body["user"].as_str().unwrap())
            );
            answer["token"].as_str().unwrap().to_owned()
        }
    };
    let alice = login("alice").await;
    let bob = login("bob").await;
    let (status, answer) =
        send_json("POST", &app.url("/login"), &json!({"user": "no spaces"})).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (422, Some("validation_failed"))
    );

    // No token: 401; a bad token: 401; another user's topic: 403 naming it.
    let events = |topic: &str| app.url(&format!("/events?topic={topic}"));
    let (status, body) = Sse::open(&events("user:alice"), None).await.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _) = Sse::open(&events("user:alice"), Some("not.a.token"))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    let forged = herald::auth::jwt::mint(
        b"another-secret-0123456789",
        &herald::auth::jwt::Claims {
            sub: Some("alice".into()),
            exp: herald::auth::jwt::now_secs() + 60,
            nbf: None,
            aud: None,
            iss: None,
            herald: herald::auth::jwt::HeraldClaim {
                subscribe: vec!["user:{sub}".into()],
                publish: vec![],
            },
        },
    )
    .unwrap();
    let (status, _) = Sse::open(&events("user:alice"), Some(&forged))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = Sse::open(
        &format!("{}&access_token={alice}", events("user:bob")),
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert_eq!(body["topics"], json!(["user:bob"]), "{body}");
    let (status, _) = Sse::open(&events("user:alice,user:bob"), Some(&alice))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);

    // Own topic: 200, by query token (EventSource) or Bearer header.
    let mut alice_sub = Sse::open(
        &format!("{}&access_token={alice}", events("user:alice")),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    let mut bob_sub = Sse::open(&events("user:bob"), Some(&bob))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    // Users cannot publish on the hub's route, not even to themselves.
    let (status, _) = {
        let r = reqwest::Client::new()
            .post(app.url("/publish"))
            .bearer_auth(&alice)
            .json(&json!({"topic": "user:alice", "data": 1}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 403);

    // /notify: needs a sender; delivers to that user's streams only.
    let notify = |to: &str, token: Option<&str>, text: &str| {
        let mut r = reqwest::Client::new()
            .post(app.url(&format!("/notify/{to}")))
            .json(&json!({ "text": text }));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = notify("alice", None, "anonymous").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(notify("alice", Some(&bob), "for alice").await.0, 200);
    assert_eq!(notify("bob", Some(&alice), "for bob").await.0, 200);
    assert_eq!(
        notify("alice", Some(&alice), "for alice again").await.0,
        200
    );

    let (name, data) = alice_sub.next().await;
    assert_eq!(name, "notification");
    assert_eq!(
        (&data["from"], &data["text"]),
        (&json!("bob"), &json!("for alice"))
    );
    // Alice's next event is her second one: bob's never reached her stream.
    assert_eq!(alice_sub.next().await.1["text"], "for alice again");
    let (name, data) = bob_sub.next().await;
    assert_eq!(
        (name.as_str(), &data["from"], &data["text"]),
        ("notification", &json!("alice"), &json!("for bob"))
    );
}
