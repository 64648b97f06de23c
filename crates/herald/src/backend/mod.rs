//! Where events are ordered, kept for replay, and carried to every instance.
//!
//! # Delivery contract (every backend)
//!
//! - **Order.** Each topic's events get strictly increasing [`Position`]s, and every
//!   subscriber of the topic receives them in that order.
//! - **Publish.** [`Backend::publish`] returns only once the events are positioned,
//!   retained (when retention is on) and on their way to every instance's
//!   [`Fanout`]; an error means nothing of the batch was published, never a silent
//!   success.
//! - **Resume.** [`Backend::resume`] returns every retained event after a position.
//!   A stream registers its live subscription *before* calling it and drops live
//!   frames at or below the last replayed position, so nothing falls between
//!   history and live, and nothing arrives twice.
//! - **Gaps are told.** When the events after a position are no longer all retained
//!   (trimmed, expired, or lost with a restart), `resume` says so with
//!   [`History::reset`], and the client gets a `herald.reset` event: never a silent hole.
//! - **Slow subscribers** are the stream's business: the backend never waits for one.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;

use thiserror::Error;

use crate::event::{Event, Position, Topic};
use crate::sse::Frame;

#[allow(unused_imports)] // for the docs above
use crate::fanout::Fanout;

/// A boxed future, as returned by [`Backend`] methods (the trait is used as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend could not do what was asked.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The backend cannot be reached or refused the operation; retry later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

/// What [`Backend::resume`] found for one topic.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Retained events after the requested position, oldest first.
    pub frames: Vec<Frame>,
    /// True when events after the requested position may be missing from `frames`
    /// (the position is older than what is retained): the client must refetch.
    pub reset: bool,
    /// The topic's latest position: where a fresh or reset subscription starts.
    pub head: Position,
}

/// The engine behind a hub. See the module docs for the delivery contract.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for status pages (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Publishes a batch, all or nothing (except across the shards of a Redis
    /// Cluster, which are written one after the other); returns the positions, in
    /// batch order.
    fn publish<'a>(
        &'a self,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<Vec<Position>, BackendError>>;

    /// Called by the library's publish methods (never by the HTTP API) when
    /// [`publish`](Self::publish) failed: a backend configured to fail open counts
    /// and logs the loss and returns the positions to answer with (`0-0`); by
    /// default, `None`: the error stands.
    fn fail_open(&self, error: &BackendError, events: &[Event]) -> Option<Vec<Position>> {
        let _ = (error, events);
        None
    }

    /// Retained events of `topic` after `after` (`None`: only the head, for a fresh
    /// subscription).
    fn resume<'a>(
        &'a self,
        topic: &'a Topic,
        after: Option<Position>,
    ) -> BoxFuture<'a, Result<History, BackendError>>;

    /// Makes sure events of `topics` published on any instance reach this
    /// instance's [`Fanout`]; returns once they will. A stream calls it after
    /// registering in the fanout and before reading history, and writes nothing
    /// before it returns.
    fn listen<'a>(&'a self, topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Called when `topic` may have lost its last local subscriber; the backend
    /// stops listening for it when the fanout has none left.
    fn release(&self, topic: &Topic);

    /// Whether any instance has a subscriber on `topic` right now.
    fn has_subscriber<'a>(&'a self, topic: &'a Topic) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Whether the backend can take publishes now (`/health/ready`).
    fn ready(&self) -> BoxFuture<'_, bool>;

    /// Topics that currently hold retained events.
    fn retained_topics(&self) -> usize;
}
