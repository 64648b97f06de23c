//! Helpers shared by the library's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads from `s` until `needle` has arrived (20 s at most); returns all read.
pub async fn read_until(s: &mut TcpStream, needle: &str) -> String {
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

/// Reads from `s` until the peer closes (20 s at most); returns all read.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("the connection closes in time")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Serves `app` on a loopback port with plain `axum::serve`; returns the address.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A client connection that keeps what it read past a needle for the next read.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads until `needle` has arrived (20 s at most); returns everything up to and
    /// including it, keeping the rest for the next call.
    pub async fn until(&mut self, needle: &str) -> String {
        let mut chunk = [0u8; 4096];
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(i) = find(&self.buf, needle.as_bytes()) {
                    return i + needle.len();
                }
                let n = self.s.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "closed early: {}",
                    String::from_utf8_lossy(&self.buf)
                );
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let end = found.unwrap_or_else(|_| {
            panic!(
                "{needle:?} did not arrive; got {}",
                String::from_utf8_lossy(&self.buf)
            )
        });
        let rest = self.buf.split_off(end);
        String::from_utf8_lossy(&std::mem::replace(&mut self.buf, rest)).into_owned()
    }

    /// Everything until the HTTP body ends (the chunked terminator) or the peer
    /// closes (20 s at most).
    pub async fn rest_until_close_or_eof(&mut self) -> String {
        self.until("\r\n0\r\n\r\n").await
    }

    /// Everything until the peer closes (20 s at most).
    pub async fn rest_until_close(&mut self) -> String {
        let mut rest = read_to_close(&mut self.s).await;
        rest.insert_str(0, &String::from_utf8_lossy(&std::mem::take(&mut self.buf)));
        rest
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens `GET <path>` and reads until the stream's cursor frame has arrived;
/// returns the connection and the head (HTTP head, `retry:` and cursor frame).
pub async fn open_stream(
    addr: std::net::SocketAddr,
    path: &str,
    extra_headers: &str,
) -> (Conn, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra_headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut c = Conn { s, buf: Vec::new() };
    let mut head = c.until("\nid: ").await;
    head += &c.until("\n\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (c, head)
}

/// `target/<profile>/examples/<name>`. `cargo test` builds examples before running
/// tests; when only one test target was asked for, the example is built here.
pub fn example(name: &str) -> std::path::PathBuf {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    // Without the variables cargo set for this test: build scripts that watch them
    // (ring's) would otherwise rebuild on every switch between this and a plain build.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| {
            [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        }) {
            cargo.env_remove(key);
        }
    }
    let status = cargo
        .args(["build", "--quiet", "-p", "herald", "--example", name])
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the {name} example");
    profile_dir().join("examples").join(name)
}

/// `target/<profile>`: where this test binary's examples and artifacts go.
pub fn profile_dir() -> std::path::PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}
