#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! The parts, each a module with one job: [`event`] and [`sse`] (validated values
//! and their wire encoding), [`cursor`] (resume positions), `fanout` (the local
//! subscriber registry), [`backend`] (ordering, history and scale-out), `stream`
//! (one subscriber's connection), [`http`] (the axum routes), [`auth`] (who may
//! subscribe and publish), [`topics`] (the topic conventions); [`Hub`] ties them
//! together and [`HubBuilder`] configures it.

pub mod auth;
pub mod backend;
mod builder;
mod channel;
mod config;
pub mod cursor;
mod direct;
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
    pub use crate::channel::{Receiver, TryRecvError};
    pub use crate::fanout::Fanout;
    pub use crate::sse::Frame;
}
