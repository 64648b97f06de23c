//! Micro-benchmarks of the hot path: encoding an event once, cursors, and
//! dispatching one frame to many subscribers. `AllocProfiler` counts allocations, to
//! show that a dispatch allocates once per event, whatever the number of subscribers.
//!
//! Run with `cargo bench -p herald`.

#![allow(missing_docs, clippy::unwrap_used)]

use divan::{AllocProfiler, Bencher, black_box};
use herald::__bench::{Fanout, Frame};
use herald::{Event, EventName, Position, Topic, TopicSet};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

fn event(size: usize) -> Event {
    let data = format!(
        "{{\"id\":42,\"pad\":\"{}\"}}",
        "x".repeat(size.saturating_sub(20))
    );
    Event::new(
        Topic::new("comments:thread-7").unwrap(),
        EventName::new("comment_created").unwrap(),
        data,
    )
}

/// Encoding one event into its shared SSE frame (once per event, not per subscriber).
#[divan::bench(args = [100, 1000, 16_000])]
fn encode_frame(bencher: Bencher, size: usize) {
    let ev = event(size);
    bencher.bench(|| {
        Frame::new(
            black_box(Position::new(1_764_000_000_000, 7)),
            black_box(&ev),
        )
    });
}

/// Building the `id:` of a multi-topic connection.
#[divan::bench(args = [2, 8, 32])]
fn cursor_encode(bencher: Bencher, topics: usize) {
    let names: Vec<String> = (0..topics).map(|i| format!("topic-{i}")).collect();
    let set = TopicSet::parse(names.iter().map(String::as_str), 64).unwrap();
    let positions: Vec<Position> = (0..topics as u64)
        .map(|i| Position::new(1_764_000_000_000 + i, i))
        .collect();
    bencher.bench(|| set.encode(black_box(&positions)));
}

/// Reading a `Last-Event-ID` back.
#[divan::bench(args = [1, 8, 32])]
fn cursor_decode(bencher: Bencher, topics: usize) {
    let names: Vec<String> = (0..topics).map(|i| format!("topic-{i}")).collect();
    let set = TopicSet::parse(names.iter().map(String::as_str), 64).unwrap();
    let positions: Vec<Position> = (0..topics as u64)
        .map(|i| Position::new(1_764_000_000_000 + i, i))
        .collect();
    let cursor = set.encode(&positions);
    bencher.bench(|| set.decode(black_box(&cursor)).unwrap());
}

/// One event to N subscribers of a topic: encode once, dispatch once, every
/// subscriber receives a refcounted clone. Allocations per iteration stay the same
/// from 1 to 10,000 subscribers.
#[divan::bench(args = [1, 100, 1000, 10_000])]
fn dispatch_to_subscribers(bencher: Bencher, subscribers: usize) {
    let fanout = Fanout::new(1024);
    let topic = Topic::new("comments:thread-7").unwrap();
    let mut receivers: Vec<_> = (0..subscribers).map(|_| fanout.subscribe(&topic)).collect();
    let ev = event(100);
    let mut seq = 0;
    bencher.bench_local(|| {
        seq += 1;
        let frame = Frame::new(Position::new(1_764_000_000_000, seq), &ev);
        fanout.dispatch(&topic, frame);
        for rx in &mut receivers {
            black_box(rx.try_recv().unwrap());
        }
    });
}
