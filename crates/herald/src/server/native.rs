//! Event streams served straight on the socket.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header write buffer for the whole
//! life of every connection; for a hub holding tens of thousands of idle streams
//! that is most of its memory. So [`Hub::serve`](crate::Hub::serve) reads each
//! connection's request head itself (a small buffer, freed once parsed): a
//! `GET /events` is answered here, writing the stream's chunks with one vectored
//! write each; anything else is handed to hyper and the app's router, with the bytes
//! already read put back in front of the socket ([`Rewind`]). Without a write
//! linger, the stream's socket is shared with the publishers of its topics, which
//! write to it while it is idle ([`crate::direct`]).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::stall::StallGuard;
use axum::http::request::Parts;
use axum::http::{Method, Request};

use tokio::sync::broadcast::error::RecvError;

use crate::direct::{Direct, Work};
use crate::http::ApiError;
use crate::http::events;
use crate::hub::Hub;
use crate::stream::Conn;

/// Largest request head read here; larger ones get 431.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;
/// hyper's own limit: a request with more headers gets 431 here, with a JSON body
/// (hyper's answer has none).
const HYPER_MAX_HEADERS: usize = 100;

/// What the head of a request asks for.
pub(crate) enum Head {
    /// `GET /events...`, as request parts (for the authorizer).
    Events { parts: Box<Parts>, http10: bool },
    /// Anything else: give the connection to hyper, replaying `buf`.
    Other,
    /// The head was too large: answer 431 and close.
    TooLarge,
    /// A head hyper would refuse with an empty body (malformed, ambiguous body
    /// framing, too many headers): answer this, with a JSON body, and close.
    Refused(ApiError),
}

/// Reads the request head into `buf` (within `deadline`); `None` when the client
/// went away or was too slow. `GET /events` is [`Head::Events`] only when `events`
/// (served here) is set; otherwise [`Head::Other`], for the router.
pub(crate) async fn read_head(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Duration,
    events: bool,
) -> Option<Head> {
    let parse = async {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(_)) => {
                    if let Err(e) = body_framing(req.headers) {
                        return Some(Head::Refused(e));
                    }
                    let is_events = events
                        && req.method == Some("GET")
                        && req
                            .path
                            .is_some_and(|p| p == "/events" || p.starts_with("/events?"));
                    let has_body = req.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("content-length") && h.value != b"0"
                            || h.name.eq_ignore_ascii_case("transfer-encoding")
                    });
                    if !is_events || has_body {
                        return Some(Head::Other);
                    }
                    let mut builder = Request::builder()
                        .method(Method::GET)
                        .uri(req.path.unwrap_or("/events"));
                    for h in req.headers.iter() {
                        builder = builder.header(h.name, h.value);
                    }
                    // Headers hyper would refuse: let hyper answer.
                    let Ok(request) = builder.body(()) else {
                        return Some(Head::Other);
                    };
                    return Some(Head::Events {
                        parts: Box::new(request.into_parts().0),
                        http10: req.version == Some(0),
                    });
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() >= MAX_HEAD {
                        return Some(Head::TooLarge);
                    }
                }
                // More headers than parsed here: hyper takes up to its own limit.
                Err(httparse::Error::TooManyHeaders) => {
                    let mut more = [httparse::EMPTY_HEADER; HYPER_MAX_HEADERS];
                    match httparse::Request::new(&mut more).parse(buf) {
                        Ok(httparse::Status::Complete(_)) => return Some(Head::Other),
                        Ok(httparse::Status::Partial) => {}
                        Err(httparse::Error::TooManyHeaders) => {
                            return Some(Head::Refused(ApiError::HeaderTooLarge(format!(
                                "the request has more than {HYPER_MAX_HEADERS} headers"
                            ))));
                        }
                        Err(e) => return Some(Head::Refused(malformed(e))),
                    }
                }
                Err(e) => return Some(Head::Refused(malformed(e))),
            }
            buf.reserve(1024);
            match socket.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, parse).await.ok().flatten()
}

fn malformed(e: httparse::Error) -> ApiError {
    ApiError::InvalidRequest(format!("malformed request: {e}"))
}

/// Refuses a body whose length is ambiguous (a request-smuggling shape): more than
/// one `Content-Length` or `Transfer-Encoding`, a length that is not a number, or
/// a transfer coding other than `chunked`.
fn body_framing(headers: &[httparse::Header<'_>]) -> Result<(), ApiError> {
    let bad = |what: &str| {
        Err(ApiError::InvalidRequest(format!(
            "ambiguous request body: {what}"
        )))
    };
    let named = |name: &'static str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let lengths = named("content-length");
    if lengths.len() > 1 {
        return bad("more than one Content-Length");
    }
    if lengths
        .first()
        .is_some_and(|v| v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit))
    {
        return bad("Content-Length is not a number");
    }
    let codings = named("transfer-encoding");
    if codings.len() > 1 {
        return bad("more than one Transfer-Encoding");
    }
    if codings
        .first()
        .is_some_and(|v| !v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return bad("the only transfer coding accepted is chunked");
    }
    Ok(())
}

/// Writes `status` with the JSON error body (and CORS headers) and closes.
pub(crate) async fn write_error(socket: &mut TcpStream, error: ApiError, cors: &str) {
    let (status, _) = error.status_and_code();
    let body = error.body();
    let extra: String = error
        .extra_headers()
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}{cors}connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(body.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// Serves one `GET /events` on `socket` until the stream ends or the client leaves.
pub(crate) async fn serve_events(
    hub: &Hub,
    mut socket: TcpStream,
    parts: Box<Parts>,
    http10: bool,
    write_timeout: Duration,
) {
    let cors = crate::http::cors::header_lines(hub, &parts.headers);
    let conn = match events::prepare(hub, &parts).await {
        Ok(s) => s,
        Err(e) => return write_error(&mut socket, e, &cors).await,
    };
    drop(parts);
    // HTTP/1.0 has no chunked encoding: the body ends when the connection does.
    let framing = if http10 {
        "connection: close\r\n"
    } else {
        "transfer-encoding: chunked\r\n"
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n{cors}{framing}\r\n"
    );
    drop(cors);
    let socket = Arc::new(socket);
    // Blocked writes time out; the timer is armed only while a write is blocked.
    let wr = StallGuard {
        io: Shared(socket.clone()),
        timeout: write_timeout,
        stall: None,
        stalled: hub.inner.metrics.write_stalls.clone(),
    };
    let out = Out {
        wr,
        rd: Shared(socket.clone()),
        head: Some(head.as_bytes()),
        http10,
    };
    // A write linger holds writes for a tick: only the stream's own task does that.
    if hub.inner.flush.is_some() {
        serve_stream(out, conn).await;
    } else {
        serve_direct(out, conn, socket).await;
    }
}

/// A stream's socket, as its task writes and reads it.
struct Out<'a> {
    wr: StallGuard<Shared>,
    rd: Shared,
    /// The response head, until the first write.
    head: Option<&'a [u8]>,
    http10: bool,
}

impl Out<'_> {
    /// Writes `data` as a chunk, or the last chunk (and closes) when `None`.
    async fn chunk(&mut self, data: Option<&Bytes>) -> io::Result<()> {
        write_chunk(&mut self.wr, self.head.take(), data, self.http10).await?;
        if data.is_none() {
            self.wr.shutdown().await?;
        }
        Ok(())
    }

    /// Whether the client is still there: completes when it leaves (anything it
    /// sends is ignored: an EventSource sends nothing more).
    async fn left(&mut self) {
        let mut scratch = [0u8; 64];
        loop {
            match self.rd.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Drives `conn` as a stream of chunks (with a write linger).
async fn serve_stream(mut out: Out<'_>, conn: Conn) {
    let stream = conn.into_stream();
    tokio::pin!(stream);
    loop {
        // The stream first: while it has chunks ready, the socket's read side is
        // not polled (each poll of it registers to be woken); it is polled
        // whenever the stream waits, so a client that leaves is still noticed.
        let chunk = tokio::select! {
            biased;
            chunk = stream.next() => chunk,
            () = out.left() => return,
        };
        let data = match chunk {
            Some(Ok(b)) if b.is_empty() => continue,
            Some(Ok(b)) => Some(b),
            Some(Err(never)) => match never {},
            None => None,
        };
        if out.chunk(data.as_ref()).await.is_err() || data.is_none() {
            return;
        }
    }
}

/// Drives `conn` as a direct stream ([`crate::direct`]): publishers write to the
/// socket while it is idle; this task writes the prelude, heartbeats, what
/// publishers hand back, and the end.
async fn serve_direct(mut out: Out<'_>, conn: Conn, socket: Arc<TcpStream>) {
    // Taken apart before the first await: a `Conn` held across it would make every
    // direct stream's task larger for its whole life.
    let Conn {
        mut subs,
        mut deadline,
        mut heartbeat,
        prelude,
        mut replay,
        ..
    } = conn;
    // The head, the prelude and the history go out before publishers may write.
    let first = match prelude {
        Some(prelude) => out.chunk(Some(&prelude)).await,
        None => match out.head.take() {
            Some(head) => write_framed(&mut out.wr, head).await,
            None => Ok(()),
        },
    };
    if first.is_err() {
        return;
    }
    // (Shutdown or expired credentials stop the replay; the loop below ends the
    // stream then.)
    while !heartbeat.is_closed()
        && !crate::stream::expired(&deadline)
        && let Some(history) = subs.replay_chunk(&mut replay)
    {
        if out.chunk(Some(&history)).await.is_err() {
            return;
        }
    }
    drop(replay);
    let expires = deadline.as_ref().map(|d| d.deadline());
    let direct = Direct::new(subs, socket, out.http10, expires);
    let _attached = Attached::new(direct.clone());
    let mut beat = None;
    let mut end = false;
    loop {
        // The hub shutting down closes the heartbeat channel (one atomic load);
        // credentials that expired end a stream that never goes idle, too.
        end |= heartbeat.is_closed() || crate::stream::expired(&deadline);
        let done = match direct.take(&mut beat, end) {
            Work::Framed(b) => write_framed(&mut out.wr, &b).await.is_err(),
            Work::Data(b) => out.chunk(Some(&b)).await.is_err(),
            Work::End => {
                let _ = out.chunk(None).await;
                true
            }
            Work::Broken => true,
            Work::Idle => {
                tokio::select! {
                    biased;
                    () = direct.handed_over() => {}
                    () = crate::stream::expiry(&mut deadline) => {
                        tracing::debug!("credentials expired: ending the stream");
                        end = true;
                    }
                    b = heartbeat.recv() => match b {
                        Ok(b) => beat = Some(b),
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => end = true,
                    },
                    () = out.left() => return,
                }
                false
            }
        };
        if done {
            return;
        }
    }
}

/// A direct stream on its topics' rings; taken off them when dropped.
struct Attached(Arc<Direct>);

impl Attached {
    fn new(direct: Arc<Direct>) -> Self {
        direct.attach();
        Self(direct)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.detach();
    }
}

/// Writes bytes already framed.
async fn write_framed(wr: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    wr.write_all(bytes).await
}

/// A socket shared by a stream's task and the publishers of its topics: the task
/// reads and writes it through readiness, publishers only try to write.
struct Shared(Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The write side only: what was written is still delivered.
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Writes `[head] [chunk header] data CRLF` (or the last chunk when `data` is
/// `None`) with vectored writes, no copy of the frame bytes.
async fn write_chunk(
    wr: &mut (impl AsyncWrite + Unpin),
    head: Option<&[u8]>,
    data: Option<&Bytes>,
    http10: bool,
) -> io::Result<()> {
    let mut size = [0u8; 20];
    let size_len = match data {
        Some(d) if !http10 => chunk_size_line(d.len(), &mut size),
        _ => 0,
    };
    let tail: &[u8] = match (data, http10) {
        (_, true) => b"",
        (Some(_), false) => b"\r\n",
        (None, false) => b"0\r\n\r\n",
    };
    let mut parts: [&[u8]; 4] = [
        head.unwrap_or(b""),
        &size[..size_len],
        data.map_or(&b""[..], |d| &d[..]),
        tail,
    ];
    let mut first = 0;
    while first < parts.len() {
        if parts[first].is_empty() {
            first += 1;
            continue;
        }
        let mut slices = [IoSlice::new(b""); 4];
        let mut k = 0;
        for p in parts[first..].iter().filter(|p| !p.is_empty()) {
            slices[k] = IoSlice::new(p);
            k += 1;
        }
        let mut n = wr.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < parts.len() {
            let take = n.min(parts[first].len());
            parts[first] = &parts[first][take..];
            n -= take;
            if parts[first].is_empty() {
                first += 1;
            }
        }
    }
    Ok(())
}

/// Writes `<len in hex>\r\n` into `out`; returns its length (no allocation).
pub(crate) fn chunk_size_line(len: usize, out: &mut [u8; 20]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// A socket with bytes already read put back in front of it, for hyper.
pub(crate) struct Rewind<T> {
    pub(crate) prefix: Bytes,
    pub(crate) io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_in_hex() {
        for n in [0usize, 1, 15, 16, 255, 4096, 65535, 1 << 20, usize::MAX] {
            let mut out = [0u8; 20];
            let len = chunk_size_line(n, &mut out);
            assert_eq!(&out[..len], format!("{n:x}\r\n").as_bytes());
        }
    }
}
