//! Herald: a Server-Sent Events notification hub.
//!
//! Browsers subscribe with a plain `EventSource` (`GET /events?topic=a,b`);
//! application code publishes small JSON notices to topics; each subscriber gets
//! every event of its topics, in order, and resumes after a reconnect without
//! losing or repeating one (`Last-Event-ID` carries a cursor of every topic's
//! position). The pattern is *notify, then fetch*: events are small, the REST API
//! stays the source of truth.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = herald::Hub::new(herald::HubConfig::default())?;
//! let app = axum::Router::new().merge(hub.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! # let publisher = hub.clone();
//! tokio::spawn(async move {
//!     publisher.publish("comments", "created", &serde_json::json!({"id": 1})).await
//! });
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The parts, each a module with one job: [`event`] and [`sse`] (validated values
//! and their wire encoding), [`cursor`] (resume positions), `fanout` (the local
//! subscriber registry), [`backend`] (ordering, history and scale-out), `stream`
//! (one subscriber's connection), [`http`] (the axum routes).

pub mod auth;
pub mod backend;
mod builder;
mod config;
pub mod cursor;
pub mod event;
mod fanout;
pub mod http;
mod hub;
mod metrics;
mod server;
pub mod sse;
mod stream;
pub mod topics;

pub use backend::redis::RedisConfig;
pub use builder::HubBuilder;
pub use config::{ConfigError, HubConfig};
pub use cursor::{SubscriptionError, TopicSet};
pub use event::{Event, EventName, NameError, Position, Topic, compact_json};
pub use http::Routes;
pub use hub::{Hub, HubError, PublishError, Status};
pub use server::ServeOptions;

/// Internals exposed for the micro-benchmarks in `benches/`; not a stable API.
#[doc(hidden)]
pub mod __bench {
    pub use crate::fanout::Fanout;
    pub use crate::sse::Frame;
}
