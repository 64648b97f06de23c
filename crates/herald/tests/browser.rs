//! The crm_comments page in a real browser: headless Chromium (Debian's `chromium`
//! package, `/usr/bin/chromium` or `$CHROMIUM`) driven by Node's `playwright-core`,
//! against the example running as a real process on a temporary SQLite database.
//!
//! The script is `tests/browser/crm.spec.mjs`; this test installs its one npm
//! package (`npm ci`, from the committed lock) when `node_modules` is missing, owns
//! the server process, and restarts it when the script asks (see the script's
//! header for the line protocol). It never skips: without Chromium, Node or npm it
//! fails and says what to install (`scripts/test` installs them).
//!
//! The screenshot lands in `<target dir>/browser-artifacts/crm_comments.png`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use common::{example, profile_dir};

/// Fails with what to install when `program --version` does not run.
fn require(program: &str, install: &str) -> String {
    match StdCommand::new(program).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!(
            "`{program} --version` failed ({}): {}\n{install}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run {program} ({e}): the browser test needs it.\n{install}"),
    }
}

/// The crm_comments server, on `addr` with the database `db`.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    async fn start(binary: &Path, addr: &str, db: &str) -> Self {
        let mut child = Command::new(binary)
            .env("ADDR", addr)
            .env("DATABASE_URL", db)
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the server did not start within 20 s")
            .unwrap()
            .expect("the server exited before listening");
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    /// SIGTERM, and a clean exit within 10 s.
    async fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the server did not exit within 10 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "the server exited with {status}");
    }
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .expect("the browser script said nothing for 90 s")
        .unwrap()
        .expect("the browser script ended without DONE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_comments_page_updates_live_and_survives_a_server_restart() {
    let started = Instant::now();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let install = "Install them with: apt-get install chromium nodejs npm (scripts/test does).";
    eprintln!("{}", require(&chromium, install));
    eprintln!("node {}", require("node", install));
    require("npm", install);

    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !scripts.join("node_modules/playwright-core").exists() {
        let status = StdCommand::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&scripts)
            .status()
            .expect("cannot run npm");
        assert!(status.success(), "npm ci failed in {}", scripts.display());
    }

    let binary = example("crm_comments");
    let dir = tempfile::tempdir().unwrap();
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("comments.db").display()
    );
    let mut server = Server::start(&binary, "127.0.0.1:0", &db).await;
    let addr = server.addr.clone();
    let screenshot = profile_dir()
        .parent()
        .unwrap()
        .join("browser-artifacts")
        .join("crm_comments.png");
    let _ = std::fs::remove_file(&screenshot);

    let mut node = Command::new("node")
        .arg("crm.spec.mjs")
        .arg(format!("http://{addr}"))
        .arg(&screenshot)
        .current_dir(&scripts)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run node");
    let mut to_node = node.stdin.take().unwrap();
    let mut from_node = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut shot = None;
    loop {
        let line = next_line(&mut from_node).await;
        eprintln!("browser: {line}");
        match line.split_once(' ').unwrap_or((&line, "")) {
            ("STOP", _) => {
                server.stop().await;
                to_node.write_all(b"STOPPED\n").await.unwrap();
            }
            ("START", _) => {
                server = Server::start(&binary, &addr, &db).await;
                // Right after the restart, before the pages have reconnected (their
                // retry is 2 s): a change they can only learn about by catching up.
                let answer = reqwest::Client::new()
                    .post(format!("http://{addr}/threads/1/comments"))
                    .json(&serde_json::json!({
                        "author": "REST client",
                        "body": "Posted over REST right after the restart, before the pages reconnected",
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status().as_u16(), 201);
                let created: serde_json::Value = answer.json().await.unwrap();
                let id = created["id"].as_i64().unwrap();
                to_node
                    .write_all(format!("STARTED {id}\n").as_bytes())
                    .await
                    .unwrap();
            }
            ("SCREENSHOT", path) => shot = Some(PathBuf::from(path)),
            ("DONE", _) => break,
            _ => panic!("unexpected line from the browser script: {line}"),
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("the browser script did not exit")
        .unwrap();
    assert!(status.success(), "the browser script failed: {status}");
    let shot = shot.expect("the browser script took no screenshot");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot at {}",
        shot.display()
    );
    println!("screenshot: {}", shot.display());
    eprintln!(
        "browser test passed in {:.1} s; screenshot: {}",
        started.elapsed().as_secs_f64(),
        shot.display()
    );
    server.stop().await;
}
