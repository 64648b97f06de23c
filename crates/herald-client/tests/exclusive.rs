//! `herald.replaced` from a real hub: a second subscriber takes an exclusive
//! session topic; the first subscription yields `Replaced` and ends for good.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use herald::{Hub, HubConfig, ServeOptions};
use herald_client::{Client, ClientError, Message, Subscription};
use tokio::net::TcpListener;

const GUARD: Duration = Duration::from_secs(20);

async fn next(sub: &mut Subscription) -> Option<Result<Message, ClientError>> {
    tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("timed out waiting for the subscription")
}

async fn connected(sub: &mut Subscription) {
    loop {
        match next(sub).await.unwrap().unwrap() {
            Message::Connected => return,
            Message::Disconnected { .. } => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn replaced_by_a_newer_subscriber_ends_without_reconnecting() {
    let hub = Hub::new(HubConfig {
        retry: Duration::from_millis(50),
        exclusive_prefixes: vec!["session:".into()],
        ..HubConfig::default()
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = hub.clone();
    tokio::spawn(async move {
        let router = served.router();
        served
            .serve(
                listener,
                router,
                ServeOptions::default(),
                std::future::pending(),
            )
            .await;
    });
    let client = Client::new(format!("http://{addr}")).unwrap();

    let mut first = client.subscribe(["session:1", "news"]).stream();
    connected(&mut first).await;
    let mut second = client.subscribe(["session:1"]).stream();
    connected(&mut second).await;

    match next(&mut first).await.unwrap().unwrap() {
        Message::Replaced { topics } => assert_eq!(topics, ["session:1"]),
        other => panic!("expected Replaced, got {other:?}"),
    }
    assert!(next(&mut first).await.is_none());

    // The newer subscriber keeps the topic (the first did not take it back).
    hub.publish("session:1", "n", &1).await.unwrap();
    match next(&mut second).await.unwrap().unwrap() {
        Message::Event(e) => assert_eq!(e.data, "1"),
        other => panic!("unexpected {other:?}"),
    }
}
