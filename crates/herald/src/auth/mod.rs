//! Who may subscribe to and publish on which topics.
//!
//! An [`Authorize`] implementation sees the request (headers, cookies, query,
//! extensions an app's own middleware set) and all the topics asked for at once, so
//! one lookup can decide many topics. It answers, per topic, allowed or denied, or
//! fails with [`AuthError::Unauthenticated`] when credentials are missing or invalid.
//! The hub answers 401 for the latter, and 403 naming the denied topics when any is
//! denied; nothing is subscribed or published then.
//!
//! For the simple case, [`from_fn`] turns `|request, topic| -> bool` into an
//! authorizer. The hub's JWT authorizer is [`jwt::JwtAuthorizer`].

pub mod jwt;
mod pattern;

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::request::Parts;
use thiserror::Error;

pub(crate) use pattern::subject_ok;
pub use pattern::{Pattern, PatternError};

use crate::backend::BoxFuture;
use crate::event::Topic;

/// Why a request was refused before any topic was looked at.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No credentials, or invalid ones (bad signature, expired, malformed): 401.
    #[error("{0}")]
    Unauthenticated(String),
}

/// The answer for a request's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// One entry per topic asked about, in the same order: allowed or not.
    pub allowed: Vec<bool>,
    /// When the credentials stop being valid; an event stream ends then (the client
    /// reconnects with fresh credentials).
    pub expires_at: Option<SystemTime>,
}

impl Decision {
    /// Everything allowed, for ever.
    pub fn allow_all(topics: usize) -> Self {
        Self {
            allowed: vec![true; topics],
            expires_at: None,
        }
    }
}

/// Decides who may subscribe and publish. See the module docs.
pub trait Authorize: Send + Sync + std::fmt::Debug + 'static {
    /// May this request subscribe to each of `topics`?
    fn subscribe<'a>(
        &'a self,
        request: &'a Parts,
        topics: &'a [Topic],
    ) -> BoxFuture<'a, Result<Decision, AuthError>>;

    /// May this request publish to each of `topics`? (Defaults to the subscribe rule.)
    fn publish<'a>(
        &'a self,
        request: &'a Parts,
        topics: &'a [Topic],
    ) -> BoxFuture<'a, Result<Decision, AuthError>> {
        self.subscribe(request, topics)
    }
}

/// An authorizer from a function deciding one topic at a time, like the Python
/// libraries' `authorize(request, topic) -> bool`; used for subscribe and publish.
///
/// ```
/// use herald::auth::{from_fn, Authorize};
/// let auth = from_fn(|request, topic| {
///     let user = request.headers.get("x-user").and_then(|v| v.to_str().ok());
///     topic.as_str() == "announcements" || user.is_some_and(|u| topic.as_str() == format!("user:{u}"))
/// });
/// # let _ = auth;
/// ```
pub fn from_fn<F>(f: F) -> FnAuthorizer<F>
where
    F: Fn(&Parts, &Topic) -> bool + Send + Sync + 'static,
{
    FnAuthorizer(Arc::new(f))
}

/// An authorizer from an async function of the request and all its topics (one
/// database lookup can decide many topics); used for subscribe and publish.
///
/// ```
/// use herald::auth::{from_async_fn, AuthError};
/// let auth = from_async_fn(|request, topics| async move {
///     let Some(user) = request.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
///         return Err(AuthError::Unauthenticated("log in first".into()));
///     };
///     // e.g. one query: SELECT topic FROM grants WHERE user = $1 AND topic = ANY($2)
///     Ok(topics.iter().map(|t| t.as_str() == format!("user:{user}")).collect())
/// });
/// # let _ = auth;
/// ```
pub fn from_async_fn<F, Fut>(f: F) -> AsyncFnAuthorizer<F>
where
    F: Fn(Parts, Vec<Topic>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<bool>, AuthError>> + Send + 'static,
{
    AsyncFnAuthorizer(Arc::new(f))
}

/// See [`from_async_fn`].
pub struct AsyncFnAuthorizer<F>(Arc<F>);

impl<F> std::fmt::Debug for AsyncFnAuthorizer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncFnAuthorizer")
    }
}

impl<F, Fut> Authorize for AsyncFnAuthorizer<F>
where
    F: Fn(Parts, Vec<Topic>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<bool>, AuthError>> + Send + 'static,
{
    fn subscribe<'a>(
        &'a self,
        request: &'a Parts,
        topics: &'a [Topic],
    ) -> BoxFuture<'a, Result<Decision, AuthError>> {
        let fut = (self.0)(request.clone(), topics.to_vec());
        Box::pin(async move {
            Ok(Decision {
                allowed: fut.await?,
                expires_at: None,
            })
        })
    }
}

/// See [`from_fn`].
pub struct FnAuthorizer<F>(Arc<F>);

impl<F> std::fmt::Debug for FnAuthorizer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnAuthorizer")
    }
}

impl<F> Authorize for FnAuthorizer<F>
where
    F: Fn(&Parts, &Topic) -> bool + Send + Sync + 'static,
{
    fn subscribe<'a>(
        &'a self,
        request: &'a Parts,
        topics: &'a [Topic],
    ) -> BoxFuture<'a, Result<Decision, AuthError>> {
        let allowed = topics.iter().map(|t| (self.0)(request, t)).collect();
        Box::pin(std::future::ready(Ok(Decision {
            allowed,
            expires_at: None,
        })))
    }
}
