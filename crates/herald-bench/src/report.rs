//! Results: merged from every group, printed as a table, written as JSON and SVG.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use crate::Args;
use crate::subscribers::{Summary, from_pairs, histogram};

/// Measurements taken by the coordinator.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) events_published: u64,
    pub(crate) publish_failed: u64,
    pub(crate) publish_error: Option<String>,
    pub(crate) publish_seconds: f64,
    pub(crate) delivery_seconds: f64,
    pub(crate) connect_seconds: f64,
    pub(crate) server_rss_base: u64,
    pub(crate) server_rss_idle: u64,
    pub(crate) server_cpu: f64,
    pub(crate) bench_cpu: f64,
    pub(crate) bench_cpu_total: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) samples: u64,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub(crate) label: String,
    pub(crate) connections: u64,
    pub(crate) topics: usize,
    pub(crate) rate: f64,
    pub(crate) payload_bytes: usize,
    pub(crate) connected: u64,
    pub(crate) connect_failed: u64,
    pub(crate) connects_per_second: f64,
    pub(crate) closed_early: u64,
    pub(crate) events_published: u64,
    pub(crate) publish_failed: u64,
    pub(crate) publish_rate: f64,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) loss_percent: f64,
    pub(crate) duplicated: u64,
    /// Deliveries that are not accepted events of the subscriber's topic (another
    /// topic's, or of a publish answered with an error).
    pub(crate) unexpected: u64,
    pub(crate) subscribers_with_unexpected: u64,
    pub(crate) subscribers_with_loss: u64,
    pub(crate) max_loss_per_subscriber: u64,
    pub(crate) subscribers_with_dups: u64,
    pub(crate) deliveries_per_second: f64,
    pub(crate) latency_ms: Percentiles,
    pub(crate) server_rss_per_connection_bytes: Option<f64>,
    pub(crate) server_rss_idle_bytes: Option<u64>,
    pub(crate) server_cpu_seconds: Option<f64>,
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    pub(crate) bench_cpu_seconds: f64,
    pub(crate) bench_cpu_us_per_delivery: f64,
    pub(crate) errors: Vec<String>,
    pub(crate) run: Run,
}

fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles {
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
        samples: h.len(),
    }
}

impl Results {
    pub(crate) fn merge(args: &Args, summaries: &[Summary], run: Run) -> Self {
        let mut all = histogram();
        let mut s = Summary::default();
        let mut errors = Vec::new();
        for x in summaries {
            let _ = all.add(from_pairs(&x.latency));
            s.connected += x.connected;
            s.failed += x.failed;
            s.closed_early += x.closed_early;
            s.unique += x.unique;
            s.dups += x.dups;
            s.unexpected += x.unexpected;
            s.subscribers_with_unexpected += x.subscribers_with_unexpected;
            s.expected += x.expected;
            s.subscribers_with_loss += x.subscribers_with_loss;
            s.max_loss = s.max_loss.max(x.max_loss);
            s.subscribers_with_dups += x.subscribers_with_dups;
            s.cpu_seconds += x.cpu_seconds;
            errors.extend(x.first_errors.iter().cloned());
        }
        if let Some(e) = &run.publish_error {
            errors.push(format!("publish: {e}"));
        }
        errors.truncate(8);
        let lost = s.expected.saturating_sub(s.unique);
        let measured = !args.server_pids.is_empty();
        let bench_cpu = run.bench_cpu + s.cpu_seconds;
        Self {
            label: args.label.clone(),
            connections: args.connections as u64,
            topics: args.topics,
            rate: args.rate,
            payload_bytes: args.payload_bytes,
            connected: s.connected,
            connect_failed: s.failed,
            connects_per_second: s.connected as f64 / run.connect_seconds.max(1e-9),
            closed_early: s.closed_early,
            events_published: run.events_published,
            publish_failed: run.publish_failed,
            publish_rate: run.events_published as f64 / run.publish_seconds.max(1e-9),
            expected: s.expected,
            received: s.unique,
            lost,
            loss_percent: if s.expected == 0 {
                0.0
            } else {
                100.0 * lost as f64 / s.expected as f64
            },
            duplicated: s.dups,
            unexpected: s.unexpected,
            subscribers_with_unexpected: s.subscribers_with_unexpected,
            subscribers_with_loss: s.subscribers_with_loss,
            max_loss_per_subscriber: s.max_loss,
            subscribers_with_dups: s.subscribers_with_dups,
            deliveries_per_second: s.unique as f64 / run.delivery_seconds,
            latency_ms: percentiles(&all),
            server_rss_per_connection_bytes: (measured && s.connected > 0).then(|| {
                (run.server_rss_idle as f64 - run.server_rss_base as f64) / s.connected as f64
            }),
            server_rss_idle_bytes: measured.then_some(run.server_rss_idle),
            server_cpu_seconds: measured.then_some(run.server_cpu),
            server_cpu_us_per_delivery: (measured && s.unique > 0)
                .then(|| run.server_cpu * 1e6 / s.unique as f64),
            bench_cpu_seconds: bench_cpu,
            bench_cpu_us_per_delivery: if s.unique > 0 {
                bench_cpu * 1e6 / s.unique as f64
            } else {
                0.0
            },
            errors,
            run,
        }
    }
}

pub(crate) fn print(r: &Results) {
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.1}{unit}"));
    let rows: Vec<(&str, String)> = vec![
        ("run", r.label.clone()),
        (
            "connections",
            format!(
                "{} ok, {} failed, {:.0}/s",
                r.connected, r.connect_failed, r.connects_per_second
            ),
        ),
        ("closed early", r.closed_early.to_string()),
        (
            "published",
            format!(
                "{} ok, {} failed, {:.1}/s",
                r.events_published, r.publish_failed, r.publish_rate
            ),
        ),
        (
            "deliveries",
            format!("{} of {} expected", r.received, r.expected),
        ),
        (
            "lost",
            format!(
                "{} ({:.3}%), {} subscribers lost some (max {})",
                r.lost, r.loss_percent, r.subscribers_with_loss, r.max_loss_per_subscriber
            ),
        ),
        (
            "duplicated",
            format!("{} ({} subscribers)", r.duplicated, r.subscribers_with_dups),
        ),
        (
            "unexpected",
            format!(
                "{} (another topic's, or not accepted; {} subscribers)",
                r.unexpected, r.subscribers_with_unexpected
            ),
        ),
        ("deliveries/s", format!("{:.0}", r.deliveries_per_second)),
        (
            "latency ms",
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                r.latency_ms.p50,
                r.latency_ms.p90,
                r.latency_ms.p99,
                r.latency_ms.p999,
                r.latency_ms.max
            ),
        ),
        (
            "server RSS/conn",
            opt(
                r.server_rss_per_connection_bytes.map(|b| b / 1024.0),
                " KiB",
            ),
        ),
        ("server CPU", opt(r.server_cpu_seconds, " s")),
        ("server CPU/deliv", opt(r.server_cpu_us_per_delivery, " µs")),
        (
            "bench CPU/deliv",
            format!(
                "{:.1} µs ({:.1} s)",
                r.bench_cpu_us_per_delivery, r.bench_cpu_seconds
            ),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<18} {v}");
    }
    for e in &r.errors {
        println!("{:<18} {e}", "error");
    }
}

/// Latency over time (p50/p99/max per second) and the percentile curve, as SVG.
pub(crate) fn chart(r: &Results, summaries: &[Summary], path: &Path) -> anyhow::Result<()> {
    let seconds = summaries
        .iter()
        .map(|s| s.per_second.len())
        .max()
        .unwrap_or(0);
    let mut per_sec = Vec::with_capacity(seconds);
    for sec in 0..seconds {
        let mut h = histogram();
        for s in summaries {
            if let Some(p) = s.per_second.get(sec) {
                let _ = h.add(from_pairs(p));
            }
        }
        per_sec.push(h);
    }
    let mut all = histogram();
    for s in summaries {
        let _ = all.add(from_pairs(&s.latency));
    }
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).context("chart")?;
    let (top, bottom) = root.split_vertically(400);
    let ms = |v: u64| v as f64 / 1000.0;
    let ymax = per_sec.iter().map(|h| ms(h.max())).fold(1.0f64, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&top)
        .caption(
            format!("{}: latency over time (ms)", r.label),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(seconds.max(1) as f64), 0f64..ymax)
        .context("chart")?;
    c.configure_mesh()
        .x_desc("second of the run")
        .y_desc("ms")
        .draw()
        .context("chart")?;
    for (q, color, name) in [(0.5, BLUE, "p50"), (0.99, RED, "p99"), (1.0, BLACK, "max")] {
        let pts: Vec<(f64, f64)> = per_sec
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| {
                (
                    i as f64 + 0.5,
                    ms(if q >= 1.0 {
                        h.max()
                    } else {
                        h.value_at_quantile(q)
                    }),
                )
            })
            .collect();
        c.draw_series(LineSeries::new(pts, color))
            .context("chart")?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .draw()
        .context("chart")?;

    // Percentile curve: x = number of nines (0 = p0, 1 = p90, 2 = p99, 3 = p99.9 ...).
    let ymax = ms(all.max()).max(0.001) * 1.1;
    let mut c = ChartBuilder::on(&bottom)
        .caption(
            "latency by percentile (ms); x: 1 = p90, 2 = p99, 3 = p99.9",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..5f64, 0f64..ymax)
        .context("chart")?;
    c.configure_mesh().y_desc("ms").draw().context("chart")?;
    let pts: Vec<(f64, f64)> = (0..=500)
        .map(|i| {
            let nines = i as f64 / 100.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, ms(all.value_at_quantile(q)))
        })
        .collect();
    c.draw_series(LineSeries::new(pts, RED)).context("chart")?;
    root.present().context("chart")?;
    Ok(())
}
