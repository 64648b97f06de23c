//! `herald-bench` runs a tiny scenario end to end against a real hub (the Herald
//! library serving on a loopback port, as `herald serve` does) and reports every
//! delivery, with zero loss and zero duplicates. No timing is asserted.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_scenario_reports_zero_loss() {
    let hub = herald::Hub::new(herald::HubConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = hub.clone();
    tokio::spawn(async move {
        server
            .serve(
                listener,
                server.router(),
                herald::ServeOptions::default(),
                std::future::pending(),
            )
            .await
    });
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let chart = dir.path().join("chart.svg");
    let out = tokio::task::spawn_blocking({
        let (json, chart) = (json.clone(), chart.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_herald-bench"))
                .args(["--url", &format!("http://{addr}/events?topic={{topic}}")])
                .args(["--publish-url", &format!("http://{addr}/publish")])
                .args([
                    "-n", "60", "-t", "3", "-r", "200", "-m", "90", "--hold", "0s", "--quiet",
                ])
                .args(["--per-process", "25"]) // exercise the worker processes too
                .arg("--json")
                .arg(&json)
                .arg("--chart")
                .arg(&chart)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["connected"], 60, "{r}");
    assert_eq!(r["events_published"], 90, "{r}");
    // 90 events over 3 topics, 20 subscribers per topic: 30 x 20 x 3.
    assert_eq!(r["expected"], 1800, "{r}");
    assert_eq!(r["received"], 1800, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["unexpected"], 0, "{r}");
    assert!(r["latency_ms"]["samples"].as_u64() == Some(1800), "{r}");
    assert!(stdout.contains("deliveries/s"), "{stdout}");
    assert!(std::fs::read_to_string(&chart).unwrap().starts_with("<svg"));
    assert_eq!(hub.status().events_published, 90);
}
