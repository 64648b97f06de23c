//! Serving a router over TCP with the protections an SSE hub needs.
//!
//! `axum::serve` is fine for request/response apps; an event stream needs more:
//! a client that stops reading leaves its stream un-polled (hyper stops asking the
//! body for bytes when the socket is full), so the stream never learns it fell
//! behind. [`Hub::serve`] wraps every socket in a *write stall* guard: a write that
//! makes no progress for `write_timeout` closes the connection, which drops the
//! stream and frees its subscription. The guard arms a timer only while a write is
//! blocked, never for idle or healthy connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

use crate::hub::Hub;

/// How [`Hub::serve`] treats connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// A write blocked this long (the client stopped reading) closes the connection.
    pub write_timeout: Duration,
    /// Time allowed to send a request's head; slower clients are disconnected.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for connections to finish before giving up on them.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A socket whose blocked writes time out.
struct StallGuard<T> {
    io: T,
    timeout: Duration,
    /// Armed while a write is pending; `None` while writes make progress.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: Counter,
}

impl<T> StallGuard<T> {
    fn poll_progress<R>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match res {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.stalled.inc();
                    tracing::debug!("write stalled for {timeout:?}: closing the connection");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.poll_progress(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.poll_progress(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_flush(cx);
        self.poll_progress(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Hub {
    /// Serves `app` (usually [`Hub::router`], possibly merged into an app's routes)
    /// on `listener` until `signal` completes; then ends every stream with a
    /// `retry:` hint ([`Hub::shutdown`]), stops accepting, and waits up to
    /// `options.shutdown_grace` for connections to close.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        options: ServeOptions,
        signal: impl Future<Output = ()> + Send,
    ) {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        let http = Arc::new(http);
        let stalled = self.inner.metrics.write_stalls.clone();
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
            let io = TokioIo::new(StallGuard {
                io: socket,
                timeout: options.write_timeout,
                stall: None,
                stalled: stalled.clone(),
            });
            let conn = http.serve_connection(io, TowerToHyperService::new(app.clone()));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::trace!(%peer, error = %e, "connection ended");
                }
            });
        }
        tracing::info!("shutting down: ending streams with a retry hint");
        self.shutdown();
        drop(listener);
        if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
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
