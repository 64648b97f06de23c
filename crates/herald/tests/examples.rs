//! The examples run: each is started as a real process and used over HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::read_until;

/// `target/<profile>/examples/<name>`. `cargo test` builds examples before running
/// tests; when only this test target was asked for, build the example here.
fn example(name: &str) -> std::path::PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "herald", "--example", name])
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the {name} example");
    let mut dir = std::env::current_exe().unwrap();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join(name)
}

#[tokio::test]
async fn minimal_example_publishes_created_comments() {
    let mut child = Command::new(example("minimal"))
        .env("ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the minimal example is built by cargo test");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .to_owned();

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
    let _ = child.kill();
    let _ = child.wait();
}
