//! `herald-bench`: a load tool for SSE hubs, Herald or any other.
//!
//! It opens N subscriber connections (spread over topics and source addresses, and
//! over worker processes when N exceeds what one process may hold), publishes M
//! events at R per second through any HTTP publish API, and reports connect rate,
//! deliveries (expected, received, lost, duplicated), deliveries per second,
//! publish-to-delivery latency percentiles, the server's memory per connection and
//! CPU per delivery, and its own CPU. See BENCHMARKS.md.

mod procfs;
mod publisher;
mod report;
mod subscribers;
mod wire;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use publisher::{PublishPlan, Published};
use subscribers::{Group, Plan, Summary, now_ns};

/// Load tool for SSE hubs: connections, deliveries, loss and latency.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version)]
pub(crate) struct Args {
    /// Subscribe URL; `{topic}` and `{i}` (subscriber number) are replaced. Repeat it
    /// to spread subscribers over several servers (subscriber i uses URL i mod count).
    #[arg(long, default_value = "http://127.0.0.1:8080/events?topic={topic}")]
    url: Vec<String>,
    /// Subscriber connections.
    #[arg(short = 'n', long, default_value_t = 100)]
    connections: usize,
    /// Topics; subscribers are assigned round-robin.
    #[arg(short = 't', long, default_value_t = 1)]
    topics: usize,
    /// Topic names are this prefix and a number.
    #[arg(long, default_value = "bench-")]
    topic_prefix: String,
    /// Publish URL; `{topic}` is replaced.
    #[arg(long, default_value = "http://127.0.0.1:8080/publish")]
    publish_url: String,
    /// Publish body; `{topic}` and `{payload}` (a JSON object) are replaced.
    #[arg(long, default_value = r#"{"topic":"{topic}","data":{payload}}"#)]
    publish_body: String,
    /// Content type of the publish requests.
    #[arg(long, default_value = "application/json")]
    publish_content_type: String,
    /// Events to publish (default: rate x duration).
    #[arg(short = 'm', long)]
    events: Option<u64>,
    /// Events per second.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    rate: f64,
    /// How long to publish when --events is not given.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Size of each event's JSON payload, in bytes (padded).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Concurrent publish connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Idle time with every connection open before publishing (memory is read at its end).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Longest wait for deliveries after the last publish; what has not arrived by
    /// then counts as lost.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Server process(es) to measure (RSS per connection, CPU per delivery).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Most connections one process holds; more are spread over worker processes.
    #[arg(long, default_value_t = 19_000)]
    per_process: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Spread client sockets over 127.0.0.2 .. 127.0.0.(1+N) (loopback targets only; 0: no binding).
    #[arg(long, default_value_t = 200)]
    source_ips: u8,
    /// Write the results as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart (latency over time, percentile curve) to this file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// A name for this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Internal: run as a worker process with this plan (JSON).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.worker {
        Some(plan) => rt.block_on(worker(serde_json::from_str(plan).context("worker plan")?)),
        None => rt.block_on(coordinate(args)),
    }
}

/// Worker protocol: stdout lines `progress <attempted> <connected> <unique>`,
/// `ready`, `summary <json>`; stdin lines `origin <ns>`, `stop <accepted json>`.
async fn worker(plan: Plan) -> anyhow::Result<()> {
    let group = Group::new(plan);
    let progress = {
        let group = group.clone();
        tokio::spawn(async move {
            loop {
                println!(
                    "progress {} {} {}",
                    group.attempted(),
                    group.connected(),
                    group.unique()
                );
                let _ = std::io::stdout().flush();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    group.connect_all().await;
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut cpu_at_origin = 0.0;
    while let Some(line) = lines.next_line().await? {
        if let Some(ns) = line.strip_prefix("origin ") {
            group.set_origin(ns.trim().parse().unwrap_or(0));
            cpu_at_origin = procfs::cpu_seconds("self").unwrap_or(0.0);
        } else if let Some(accepted) = line.strip_prefix("stop ") {
            let accepted: subscribers::Accepted = serde_json::from_str(accepted)?;
            let mut summary = group.summary(&accepted);
            summary.cpu_seconds = procfs::cpu_seconds("self").unwrap_or(0.0) - cpu_at_origin;
            progress.abort();
            println!("summary {}", serde_json::to_string(&summary)?);
            let _ = std::io::stdout().flush();
            return Ok(());
        }
    }
    Ok(())
}

struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    attempted: Arc<AtomicU64>,
    unique: Arc<AtomicU64>,
    ready: tokio::sync::watch::Receiver<bool>,
    summary: tokio::sync::oneshot::Receiver<Summary>,
}

fn spawn_worker(plan: &Plan) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--worker")
        .arg(serde_json::to_string(plan)?)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a worker process")?;
    let stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let attempted = Arc::new(AtomicU64::new(0));
    let unique = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let (sum_tx, summary) = tokio::sync::oneshot::channel();
    let (a, u) = (attempted.clone(), unique.clone());
    tokio::spawn(async move {
        let mut sum_tx = Some(sum_tx);
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(p) = line.strip_prefix("progress ") {
                let v: Vec<u64> = p.split(' ').filter_map(|x| x.parse().ok()).collect();
                if let [att, _, uniq] = v[..] {
                    a.store(att, Ordering::Relaxed);
                    u.store(uniq, Ordering::Relaxed);
                }
            } else if line == "ready" {
                let _ = ready_tx.send(true);
            } else if let Some(s) = line.strip_prefix("summary ")
                && let Ok(s) = serde_json::from_str(s)
                && let Some(tx) = sum_tx.take()
            {
                let _ = tx.send(s);
            }
        }
    });
    Ok(Worker {
        child,
        stdin,
        attempted,
        unique,
        ready,
        summary,
    })
}

fn bar(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} {what:<12} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}}"
    )) {
        b.set_style(style.progress_chars("=> "));
    }
    b
}

async fn coordinate(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 || args.topics == 0 {
        bail!("--connections and --topics must be at least 1");
    }
    let events = args
        .events
        .unwrap_or_else(|| (args.rate * args.duration.as_secs_f64()).round() as u64);
    let per = args.per_process.max(1);
    let plans: Vec<Plan> = (0..args.connections)
        .step_by(per)
        .map(|first| Plan {
            url: args.url.clone(),
            topics: args.topics,
            topic_prefix: args.topic_prefix.clone(),
            first,
            count: per.min(args.connections - first),
            max_events: usize::try_from(events).unwrap_or(usize::MAX),
            connect_concurrency: args.connect_concurrency,
            source_ips: args.source_ips,
        })
        .collect();

    let server_rss_base: u64 = args
        .server_pids
        .iter()
        .filter_map(|&p| procfs::rss_bytes(p))
        .sum();
    let bench_cpu_start = procfs::cpu_seconds("self").unwrap_or(0.0);

    // Connect: the first group here, the others in worker processes.
    let connect_started = Instant::now();
    let mut workers = plans[1..]
        .iter()
        .map(spawn_worker)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let local = Group::new(plans[0].clone());
    let connecting = {
        let local = local.clone();
        tokio::spawn(async move { local.connect_all().await })
    };
    let b = bar(args.quiet, args.connections as u64, "connecting");
    loop {
        let attempted = local.attempted()
            + workers
                .iter()
                .map(|w| w.attempted.load(Ordering::Relaxed))
                .sum::<u64>();
        b.set_position(attempted);
        if connecting.is_finished() && workers.iter().all(|w| *w.ready.borrow()) {
            break;
        }
        if workers
            .iter_mut()
            .any(|w| matches!(w.child.try_wait(), Ok(Some(_))))
        {
            bail!("a worker process ended early");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.finish_and_clear();
    let connect_seconds = connect_started.elapsed().as_secs_f64();

    tokio::time::sleep(args.hold).await;
    let server_rss_idle: u64 = args
        .server_pids
        .iter()
        .filter_map(|&p| procfs::rss_bytes(p))
        .sum();

    // Publish.
    let origin = now_ns();
    local.set_origin(origin);
    for w in &mut workers {
        w.stdin
            .write_all(format!("origin {origin}\n").as_bytes())
            .await?;
    }
    let server_cpu_start: f64 = args
        .server_pids
        .iter()
        .filter_map(|p| procfs::cpu_seconds(&p.to_string()))
        .sum();
    let bench_cpu_origin = procfs::cpu_seconds("self").unwrap_or(0.0);
    let published = Arc::new(Published {
        per_topic: (0..args.topics).map(|_| AtomicU64::new(0)).collect(),
        ..Published::default()
    });
    let subs_per_topic: Vec<u64> = (0..args.topics)
        .map(|t| {
            (0..args.connections)
                .filter(|i| i % args.topics == t)
                .count() as u64
        })
        .collect();
    let plan = PublishPlan {
        url: args.publish_url.clone(),
        body: args.publish_body.clone(),
        content_type: args.publish_content_type.clone(),
        topics: args.topics,
        topic_prefix: args.topic_prefix.clone(),
        events,
        rate: args.rate,
        payload_bytes: args.payload_bytes,
        connections: args.publishers,
    };
    let publish_started = Instant::now();
    let publishing = tokio::spawn(publisher::run(plan, published.clone(), || {}));
    let expected_total = |p: &Published| -> u64 {
        p.per_topic
            .iter()
            .zip(&subs_per_topic)
            .map(|(n, s)| n.load(Ordering::Relaxed) * s)
            .sum()
    };
    let b = bar(
        args.quiet,
        events * (args.connections as u64) / (args.topics as u64).max(1),
        "delivering",
    );
    let mut last_unique = 0;
    let mut last_change = Instant::now();
    let mut publish_seconds = 0.0;
    loop {
        let unique = local.unique()
            + workers
                .iter()
                .map(|w| w.unique.load(Ordering::Relaxed))
                .sum::<u64>();
        b.set_position(unique);
        if unique != last_unique {
            last_unique = unique;
            last_change = Instant::now();
        }
        if publishing.is_finished() {
            if publish_seconds == 0.0 {
                publish_seconds = publish_started.elapsed().as_secs_f64();
            }
            let expected = expected_total(&published);
            let quiet_for = last_change.elapsed();
            let draining_for = publish_started.elapsed().as_secs_f64() - publish_seconds;
            // Done when everything arrived, when nothing arrives any more, or when
            // the drain time is up (what has not arrived by then counts as lost).
            if unique >= expected
                || quiet_for > args.drain.min(Duration::from_secs(3))
                || draining_for > args.drain.as_secs_f64()
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.finish_and_clear();
    let delivery_seconds = last_change
        .duration_since(publish_started)
        .as_secs_f64()
        .max(1e-9);
    let server_cpu: f64 = args
        .server_pids
        .iter()
        .filter_map(|p| procfs::cpu_seconds(&p.to_string()))
        .sum::<f64>()
        - server_cpu_start;
    let bench_cpu_local = procfs::cpu_seconds("self").unwrap_or(0.0) - bench_cpu_origin;

    // Gather.
    // The drain is over: nothing that arrives from here on counts.
    local.stop();
    let accepted = published.accepted();
    let accepted_json = serde_json::to_string(&accepted)?;
    for w in &mut workers {
        w.stdin
            .write_all(format!("stop {accepted_json}\n").as_bytes())
            .await?;
    }
    let mut summaries = vec![local.summary(&accepted)];
    for w in workers {
        let s = tokio::time::timeout(Duration::from_secs(30), w.summary)
            .await
            .context("worker summary timed out")?
            .context("worker ended without a summary")?;
        summaries.push(s);
    }
    let results = report::Results::merge(
        &args,
        &summaries,
        report::Run {
            events_published: published.ok.load(Ordering::Relaxed),
            publish_failed: published.failed.load(Ordering::Relaxed),
            publish_error: published.first_error.lock().ok().and_then(|e| e.clone()),
            publish_seconds,
            delivery_seconds,
            connect_seconds,
            server_rss_base,
            server_rss_idle,
            server_cpu,
            bench_cpu: bench_cpu_local,
            bench_cpu_total: procfs::cpu_seconds("self").unwrap_or(0.0) - bench_cpu_start,
        },
    );
    report::print(&results);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if let Some(path) = &args.chart {
        report::chart(&results, &summaries, path)?;
    }
    Ok(())
}
