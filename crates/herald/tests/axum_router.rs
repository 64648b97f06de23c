//! The library's axum routes, served by plain `axum::serve` (as an app that merges
//! `hub.router()` into its own routes would), over a real loopback socket.

#![allow(clippy::unwrap_used)]

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::read_until;

/// Serves `app` with plain `axum::serve` on an ephemeral port.
async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Opens `/events?topic=<topics>` and reads up to its opening cursor.
async fn subscribe(addr: std::net::SocketAddr, topics: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /events?topic={topics} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut s, "id: ").await;
    s
}

/// POSTs an empty body to `path`; returns the whole answer.
async fn post_empty(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn events_and_errors_through_axum_serve() {
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    let addr = serve(axum::Router::new().merge(hub.router())).await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events?topic=a,b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut s, "id: ").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    let pos = hub
        .publish("b", "created", &serde_json::json!({"id": 7}))
        .await
        .unwrap();
    let got = read_until(&mut s, "data: {\"id\":7}").await;
    assert!(got.contains("event: created\ndata: {\"id\":7}\n"), "{got}");
    assert!(
        got.contains(&pos.to_string()),
        "the cursor holds the position: {got}"
    );

    let mut e = TcpStream::connect(addr).await.unwrap();
    e.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let err = read_until(&mut e, "}").await;
    assert!(err.starts_with("HTTP/1.1 400"), "{err}");
    assert!(err.contains(r#""error":"no_topic""#), "{err}");
}

#[tokio::test]
async fn authorize_hook_from_a_closure() {
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    // The app's own rule: a user (set by its auth middleware; a header here) may
    // read its own topic and the announcements.
    assert!(hub.set_authorizer(herald::auth::from_fn(|request, topic| {
        let user = request.headers.get("x-user").and_then(|v| v.to_str().ok());
        topic.as_str() == "announcements"
            || user.is_some_and(|u| topic.as_str() == format!("user:{u}"))
    })));
    assert!(
        !hub.set_authorizer(herald::auth::from_fn(|_, _| true)),
        "set once"
    );
    let addr = serve(axum::Router::new().merge(hub.router())).await;

    let mut ok = TcpStream::connect(addr).await.unwrap();
    ok.write_all(
        b"GET /events?topic=user:7,announcements HTTP/1.1\r\nHost: x\r\nX-User: 7\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(
        read_until(&mut ok, "id: ")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let mut denied = TcpStream::connect(addr).await.unwrap();
    denied
        .write_all(b"GET /events?topic=user:8,announcements HTTP/1.1\r\nHost: x\r\nX-User: 7\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut denied, "}").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains(r#""topics":["user:8"]"#), "{out}");
    // Publishing through the route follows the same rule; hub.publish() is trusted code.
    let mut p = TcpStream::connect(addr).await.unwrap();
    let body = r#"{"topic":"user:8","data":1}"#;
    p.write_all(
        format!("POST /publish HTTP/1.1\r\nHost: x\r\nX-User: 7\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            .as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_until(&mut p, "}").await.starts_with("HTTP/1.1 403"));
    assert!(hub.publish("user:8", "n", &1).await.is_ok());
}

#[tokio::test]
async fn authorize_hook_from_an_async_closure() {
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    hub.set_authorizer(herald::auth::from_async_fn(|request, topics| async move {
        let Some(user) = request
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return Err(herald::auth::AuthError::Unauthenticated(
                "log in first".into(),
            ));
        };
        Ok(topics
            .iter()
            .map(|t| t.as_str() == format!("user:{user}"))
            .collect())
    }));
    let addr = serve(axum::Router::new().merge(hub.router())).await;
    for (headers, status) in [("", "401"), ("X-User: 7\r\n", "403")] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /events?topic=user:8 HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let out = read_until(&mut s, "}").await;
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events?topic=user:8 HTTP/1.1\r\nHost: x\r\nX-User: 8\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until(&mut s, "id: ").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn publish_response_layer_publishes_successful_json_responses() {
    use axum::http::StatusCode;
    use axum::routing::post;

    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    async fn update(
        axum::extract::Path(id): axum::extract::Path<u64>,
    ) -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({"id": id, "status": "closed", "note": "a  b"}))
    }
    async fn refuse() -> (StatusCode, axum::Json<serde_json::Value>) {
        (
            StatusCode::CONFLICT,
            axum::Json(serde_json::json!({"error": "locked"})),
        )
    }
    let app = axum::Router::new()
        .route(
            "/tickets/{id}/status",
            post(update).layer(hub.publish_response("ticket:{id}", "ticket_status_changed")),
        )
        .route(
            "/tickets/{id}/lock",
            post(refuse).layer(hub.publish_response("ticket:{id}", "ticket_locked")),
        )
        .merge(hub.router());
    let addr = serve(app).await;

    let mut sub = subscribe(addr, "ticket:7").await;

    let post = |path: &'static str| post_empty(addr, path);
    // A refused request publishes nothing and its response is untouched.
    let refused = post("/tickets/7/lock").await;
    assert!(
        refused.starts_with("HTTP/1.1 409") && refused.ends_with(r#"{"error":"locked"}"#),
        "{refused}"
    );
    assert_eq!(hub.status().events_published, 0);
    // A successful one reaches the caller unchanged, and the subscribers.
    let ok = post("/tickets/7/status").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.ends_with(r#"{"id":7,"note":"a  b","status":"closed"}"#),
        "{ok}"
    );
    let got = read_until(&mut sub, "data: {").await;
    assert!(got.contains("event: ticket_status_changed\ndata: {\"id\":7,\"note\":\"a  b\",\"status\":\"closed\"}\n"), "{got}");
    assert_eq!(hub.status().events_published, 1);
}

#[tokio::test]
async fn publish_response_parameters_cannot_steer_the_topic() {
    use axum::extract::Path;
    use axum::routing::post;

    // Found by a review: parameters were filled one after another, so a value
    // holding `{id}` was filled again, and `:` or `/` in a value reached other
    // topics.
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    async fn echo(Path((org, id)): Path<(String, String)>) -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({"org": org, "id": id}))
    }
    let app = axum::Router::new()
        .route(
            "/orgs/{org}/tickets/{id}",
            post(echo).layer(hub.publish_response("org:{org}:ticket:{id}", "changed")),
        )
        .route(
            "/typo/{org}/{id}",
            post(echo).layer(hub.publish_response("org:{org}:ticket:{ticket}", "changed")),
        )
        .merge(hub.router());
    let addr = serve(app).await;
    let mut sub = subscribe(
        addr,
        "org:5:ticket:5,org:acme:ticket:5:x/y,org:acme:ticket:5",
    )
    .await;
    let post = |path: &'static str| post_empty(addr, path);
    for path in [
        "/orgs/%7Bid%7D/tickets/5",
        "/orgs/acme/tickets/5:x%2Fy",
        "/orgs/acme/tickets/5:x",
        "/typo/acme/5",
    ] {
        let answer = post(path).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{path}: the caller still gets its answer: {answer}"
        );
    }
    assert_eq!(hub.status().events_published, 0, "nothing was published");
    let rejected = hub
        .render_metrics()
        .lines()
        .find(|l| l.starts_with("herald_publish_rejected_total "))
        .map(str::to_owned);
    assert_eq!(rejected.as_deref(), Some("herald_publish_rejected_total 4"));
    // A plain value fills its place.
    post("/orgs/acme/tickets/5").await;
    let got = read_until(&mut sub, "data: {").await;
    assert!(got.contains(r#"data: {"id":"5","org":"acme"}"#), "{got}");
    assert_eq!(hub.status().events_published, 1);
}

#[tokio::test]
async fn has_subscriber_follows_streams() {
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    let addr = serve(axum::Router::new().merge(hub.router())).await;
    assert!(!hub.has_subscriber("session:1").await.unwrap());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events?topic=session:1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, "id: ").await;
    assert!(hub.has_subscriber("session:1").await.unwrap());
    drop(s);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while hub.has_subscriber("session:1").await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber never released"
        );
        tokio::task::yield_now().await;
    }
}

/// Credentials that expired before the stream opened (here, an authorizer's past
/// expiry; with a JWT, a slow resume): 401, and nothing is written.
#[tokio::test]
async fn credentials_expired_before_the_stream_opened_get_401() {
    use herald::auth::{AuthError, Authorize, Decision};
    use herald::backend::BoxFuture;
    use std::time::{Duration, SystemTime};

    #[derive(Debug)]
    struct ExpiredAlready;
    impl Authorize for ExpiredAlready {
        fn subscribe<'a>(
            &'a self,
            _request: &'a axum::http::request::Parts,
            topics: &'a [herald::event::Topic],
        ) -> BoxFuture<'a, Result<Decision, AuthError>> {
            let decision = Decision {
                allowed: vec![true; topics.len()],
                expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
            };
            Box::pin(std::future::ready(Ok(decision)))
        }
    }

    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    assert!(hub.set_authorizer(ExpiredAlready));
    let addr = serve(axum::Router::new().merge(hub.router())).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events?topic=a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, "}").await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(out.contains(r#""error":"unauthorized""#), "{out}");
    assert!(out.contains("expired"), "{out}");
    assert_eq!(hub.status().connections, 0);
}
