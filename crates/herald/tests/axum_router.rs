//! The library's axum routes, served by plain `axum::serve` (as an app that merges
//! `hub.router()` into its own routes would), over a real loopback socket.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(&buf).contains(needle) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn events_and_errors_through_axum_serve() {
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    let app = axum::Router::new().merge(hub.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

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
