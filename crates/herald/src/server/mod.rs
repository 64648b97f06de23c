//! Serving a router over TCP with the protections an SSE hub needs.
//!
//! `axum::serve` is fine for request/response apps; an event stream needs more:
//! a client that stops reading leaves its stream un-polled (hyper stops asking the
//! body for bytes when the socket is full), so the stream never learns it fell
//! behind. [`Hub::serve`] wraps every socket in a *write stall* guard: a write that
//! makes no progress for `write_timeout` closes the connection, which drops the
//! stream and frees its subscription. The guard arms a timer only while a write is
//! blocked, never for idle or healthy connections.

mod native;
pub(crate) use native::chunk_size_line;
mod stall;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::BytesMut;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::http::ApiError;
use crate::http::BodyDeadline;
use crate::hub::Hub;
use native::{Head, Rewind};
use stall::StallGuard;

/// How [`Hub::serve`] treats connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// A write blocked this long (the client stopped reading) closes the connection.
    pub write_timeout: Duration,
    /// Time allowed to send a request's head (slower clients are disconnected), and
    /// again a publish body (answered 408 after).
    pub header_read_timeout: Duration,
    /// How long shutdown waits for connections to finish before giving up on them.
    pub shutdown_grace: Duration,
    /// Answer `GET /events` (at the root: `/events?topic=..`) straight on the
    /// socket, before `app` sees the request: a few hundred bytes per idle stream
    /// instead of hyper's buffers (`herald serve` turns it on). Off by default,
    /// because those requests then bypass `app`: its layers (sessions, logins, rate
    /// limits) do not run and add no request extensions for the authorizer, and an
    /// `/events` route of the app's own is never reached. Turn it on when the app
    /// serves [`Hub::router`] at the root and guards `/events` only through the
    /// hub's authorizer, which sees the request's head either way.
    pub native_events: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            native_events: false,
        }
    }
}

impl Hub {
    /// Serves `app` (usually [`Hub::router`], possibly merged into an app's routes)
    /// on `listener` until `signal` completes; then ends every stream with a
    /// `retry:` hint ([`Hub::shutdown`]), stops accepting, and waits up to
    /// `options.shutdown_grace` for connections to close.
    ///
    /// Every request goes to `app` through hyper, except, with
    /// [`ServeOptions::native_events`], `GET /events`: the hub serves it itself,
    /// straight on the socket (see the `native` module: a few hundred bytes per idle
    /// stream instead of hyper's 16 KiB), and `app` never sees it.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        options: ServeOptions,
        signal: impl Future<Output = ()> + Send,
    ) {
        let graceful = GracefulShutdown::new();
        let tracker = TaskTracker::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        let http = Arc::new(http);
        // Shared: each connection's task holds it for its whole life, and tokio
        // rounds a task up to 128 bytes, so 48 bytes more per stream cost 128.
        let shared_options = Arc::new(options.clone());
        tokio::pin!(signal);
        loop {
            let (socket, peer) = tokio::select! {
                _ = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let conn = Connection {
                hub: self.clone(),
                app: app.clone(),
                http: http.clone(),
                watcher: graceful.watcher(),
                options: shared_options.clone(),
            };
            tracker.spawn(conn.run(socket, peer));
        }
        tracing::info!("shutting down: ending streams with a retry hint");
        self.shutdown();
        drop(listener);
        tracker.close();
        let drained = async {
            graceful.shutdown().await;
            tracker.wait().await;
        };
        if tokio::time::timeout(options.shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?options.shutdown_grace,
                "connections still open after the grace period"
            );
        }
    }
}

/// A stream counted against its client address's limit; released on drop.
pub(crate) struct IpSlot {
    hub: Hub,
    ip: std::net::IpAddr,
}

impl IpSlot {
    /// One of `ip`'s `max_connections_per_ip` stream slots, given back when
    /// dropped; `None` when all are taken (counted).
    pub(crate) fn take(hub: &Hub, ip: std::net::IpAddr) -> Option<Self> {
        let limit = hub.config().max_connections_per_ip;
        if limit == 0 {
            return Some(Self {
                hub: hub.clone(),
                ip,
            });
        }
        let mut per_ip = hub.inner.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limit {
            hub.inner.metrics.ip_limited.inc();
            return None;
        }
        *n += 1;
        Some(Self {
            hub: hub.clone(),
            ip,
        })
    }
}

impl IpSlot {
    /// The answer when [`IpSlot::take`] found every slot taken.
    pub(crate) fn refused(hub: &Hub) -> ApiError {
        ApiError::TooManyFromIp(format!(
            "at most {} streams may be open from one address",
            hub.config().max_connections_per_ip
        ))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if self.hub.config().max_connections_per_ip == 0 {
            return;
        }
        let mut per_ip = self
            .hub
            .inner
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// One accepted connection.
struct Connection {
    hub: Hub,
    app: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    watcher: Watcher,
    options: Arc<ServeOptions>,
}

impl Connection {
    async fn run(self, mut socket: TcpStream, peer: SocketAddr) {
        let mut buf = BytesMut::with_capacity(1024);
        let head = native::read_head(
            &mut socket,
            &mut buf,
            self.options.header_read_timeout,
            self.options.native_events,
        )
        .await;
        match head {
            None => {}
            Some(Head::TooLarge) => {
                native::write_error(
                    &mut socket,
                    ApiError::HeaderTooLarge("the request head is larger than 16 KiB".into()),
                    "",
                )
                .await;
            }
            Some(Head::Refused(error)) => {
                native::write_error(&mut socket, error, "").await;
            }
            Some(Head::Events { parts, http10 }) => {
                drop(buf);
                let Some(_slot) = IpSlot::take(&self.hub, peer.ip()) else {
                    let cors = crate::http::cors::header_lines(&self.hub, &parts.headers);
                    native::write_error(&mut socket, IpSlot::refused(&self.hub), &cors).await;
                    return;
                };
                native::serve_events(&self.hub, socket, parts, http10, self.options.write_timeout)
                    .await;
            }
            Some(Head::Other) => {
                let io = TokioIo::new(Rewind {
                    prefix: buf.freeze(),
                    io: StallGuard {
                        io: socket,
                        timeout: self.options.write_timeout,
                        stall: None,
                        stalled: self.hub.inner.metrics.write_stalls.clone(),
                    },
                });
                // Requests served by the router carry the client's address, so
                // an `/events` that ends up there (an absolute-form URI, say)
                // counts against the per-address limit too.
                let app =
                    self.app
                        .layer(axum::Extension(ConnectInfo(peer)))
                        .layer(axum::Extension(BodyDeadline(
                            self.options.header_read_timeout,
                        )));
                let conn = self
                    .http
                    .serve_connection(io, TowerToHyperService::new(app));
                if let Err(e) = self.watcher.watch(conn).await {
                    tracing::trace!(%peer, error = %e, "connection ended");
                }
            }
        }
    }
}
