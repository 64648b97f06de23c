//! `Hub::serve` with an app of its own: the app's layers and routes see `GET /events`
//! unless `ServeOptions::native_events` says the hub answers it on the socket.

#![allow(clippy::unwrap_used)]

mod common;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::{read_to_close, read_until};

/// The user the app's login layer puts on a request.
#[derive(Clone)]
struct User(String);

/// The app's login: a session header, or 401 before any route runs.
async fn login_required(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get("x-session")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match user {
        Some(u) => {
            request.extensions_mut().insert(User(u));
            next.run(request).await
        }
        None => (StatusCode::UNAUTHORIZED, "login first").into_response(),
    }
}

/// A hub whose authorizer grants `user:<name>` to the user the app's layer set.
fn hub() -> herald::Hub {
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    assert!(hub.set_authorizer(herald::auth::from_fn(|request, topic| {
        request
            .extensions
            .get::<User>()
            .is_some_and(|u| topic.as_str() == format!("user:{}", u.0))
    })));
    hub
}

async fn serve(hub: &herald::Hub, app: axum::Router, native_events: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = hub.clone();
    let options = herald::ServeOptions {
        native_events,
        ..herald::ServeOptions::default()
    };
    tokio::spawn(async move {
        hub.serve(listener, app, options, std::future::pending())
            .await
    });
    addr
}

async fn get(addr: std::net::SocketAddr, path: &str, session: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let session = session.map_or(String::new(), |u| format!("X-Session: {u}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{session}\r\n").as_bytes())
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn the_apps_layers_guard_events_and_feed_the_authorizer() {
    let hub = hub();
    let app = axum::Router::new()
        .merge(hub.router())
        .layer(from_fn(login_required));
    let addr = serve(&hub, app, false).await;

    // No session: the app's layer answers, no stream opens.
    let mut anonymous = get(addr, "/events?topic=user:ann", None).await;
    let got = read_until(&mut anonymous, "login first").await;
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");
    // A session: the authorizer sees the user the layer set.
    let mut ann = get(addr, "/events?topic=user:ann", Some("ann")).await;
    let got = read_until(&mut ann, "id: ").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    hub.publish("user:ann", "n", &1).await.unwrap();
    read_until(&mut ann, "data: 1\n").await;
    let mut bob = get(addr, "/events?topic=user:ann", Some("bob")).await;
    let got = read_until(&mut bob, "}").await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    assert_eq!(hub.status().connections, 1);
}

#[tokio::test]
async fn native_events_answer_on_the_socket_before_the_app() {
    // What `native_events` trades for memory: the app's layers do not run, so the
    // authorizer sees no user (403 for everyone) and the login layer answers nothing.
    let hub = hub();
    let app = axum::Router::new()
        .merge(hub.router())
        .layer(from_fn(login_required));
    let addr = serve(&hub, app, true).await;
    for session in [None, Some("ann")] {
        let mut s = get(addr, "/events?topic=user:ann", session).await;
        let got = read_until(&mut s, "}").await;
        assert!(got.starts_with("HTTP/1.1 403"), "{session:?}: {got}");
    }
    // Other requests still go through the app.
    let mut publish = TcpStream::connect(addr).await.unwrap();
    publish
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut publish).await;
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");
}

#[tokio::test]
async fn an_apps_own_events_route_is_reached() {
    // The hub nested under /sse; the app keeps /events for itself.
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    let app = axum::Router::new()
        .route(
            "/events",
            axum::routing::get(|| async { "the app's own events" }),
        )
        .nest("/sse", hub.router());
    let addr = serve(&hub, app, false).await;
    let mut own = get(addr, "/events?topic=a", None).await;
    let got = read_until(&mut own, "the app's own events").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let mut nested = get(addr, "/sse/events?topic=a", None).await;
    let got = read_until(&mut nested, "id: ").await;
    assert!(got.contains("text/event-stream"), "{got}");
}
