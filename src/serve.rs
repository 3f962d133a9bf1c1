//! HTTP/1.1 serving for the HTTP input and the admin port: a connection cap and the
//! request-head and keep-alive timeouts, so slow, silent or too many clients cannot take
//! file descriptors and memory that other clients (and `/health`) need.
//!
//! Why not `axum::serve`: it has neither a connection cap nor timeouts. Why not hyper's
//! `header_read_timeout`: its clock starts when a connection becomes idle, not when the
//! next request's first byte arrives, so it cannot keep an idle keep-alive connection open
//! longer than a client may take to send one request head. The timeouts here follow Go's
//! `net/http` server instead: `idle_timeout` waits for the first byte of the next request,
//! `header_timeout` then bounds the rest of its head (and, on a new connection, the whole
//! head from accept).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// hyper's per-connection read buffer, at most.
const MAX_BUF: usize = 64 * 1024;

/// Limits of one listener. Each listener has its own, so a flood on the HTTP input never
/// takes the admin port's connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at most; one more is accepted and closed at once (and counted), so
    /// the listener's file descriptors stay bounded.
    pub max_connections: usize,
    /// Time for a request head (request line and headers): from accept on a new connection,
    /// from the first byte of the next request on a keep-alive connection.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait, idle, for its next request; also how
    /// long an answer may wait for a client that stopped reading it.
    pub idle_timeout: Duration,
}

impl ServerLimits {
    pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Below the 60 s idle timeout of an ALB in front, so the router is the one to close
    /// only rarely; clients that pool longer (Go: 90 s) retry on a closed idle connection.
    pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    /// Defaults with the given connection cap.
    pub(crate) fn new(max_connections: usize) -> Self {
        ServerLimits {
            max_connections,
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What the server did to a connection on its own, for the caller to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnEvent {
    /// Closed at accept: `max_connections` were already open.
    TooManyConnections,
    /// Closed: no complete request head within `header_timeout`.
    HeaderTimeout,
    /// Closed: the client read nothing of an answer for `idle_timeout`.
    WriteTimeout,
}

impl ConnEvent {
    /// The `kind` label of `firelane_input_errors_total`.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            ConnEvent::TooManyConnections => "too_many_connections",
            ConnEvent::HeaderTimeout => "header_timeout",
            ConnEvent::WriteTimeout => "write_timeout",
        }
    }
}

/// Called for every [`ConnEvent`].
pub(crate) type OnEvent = Arc<dyn Fn(ConnEvent) + Send + Sync>;

/// Serves `app` on `listener` until `shutdown`; then stops accepting, lets requests in
/// flight finish, closes idle connections and returns once every connection is closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ServerLimits,
    on_event: OnEvent,
    what: &str,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // EMFILE / ENFILE / ENOMEM: the process is out of something. Back off
                    // instead of spinning; connections wait in the kernel's backlog.
                    crate::warn_limited!("serve_accept", "{what}: cannot accept connections: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            on_event(ConnEvent::TooManyConnections);
            crate::warn_limited!(
                "serve_max_connections",
                "{what}: {} connections open (max_connections), closing new ones",
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_conn(
            stream,
            app.clone(),
            limits.clone(),
            on_event.clone(),
            shutdown.clone(),
        );
        conns.spawn(async move {
            conn.await;
            drop(slot);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Errors of one incoming connection (the peer gave up before accept), not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_conn(
    stream: TcpStream,
    app: axum::Router,
    limits: ServerLimits,
    on_event: OnEvent,
    shutdown: CancellationToken,
) {
    let state = Arc::new(Mutex::new(ConnState {
        phase: Phase::Idle {
            since: Instant::now(),
            fresh: true,
        },
        parked: None,
    }));
    let io = TimedStream {
        inner: stream,
        state: state.clone(),
        limits,
        on_event,
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        write_stalled: None,
        last_write: Instant::now(),
        write_sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // Busy from the head until both the handler's answer and the request body are
        // done (a handler may keep draining the body after it answered).
        let busy = Arc::new(Busy::start(state.clone()));
        let req = req.map(|inner| {
            Body::new(TrackedBody {
                inner,
                _busy: busy.clone(),
            })
        });
        let answer = hyper::service::Service::call(&app, req);
        async move {
            let r = answer.await;
            drop(busy);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // TimedStream enforces the head timeout; hyper's would also cut idle connections.
    // The read buffer (outside the memory budget) stays small per connection: 64 KiB
    // times max_connections is the most it can hold; request heads must fit in it.
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!("connection closed: {e}");
    }
}

/// Where a connection is in its request cycle, for the read timeouts.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for the first byte of a request (`fresh`: none served yet).
    Idle { since: Instant, fresh: bool },
    /// Some bytes of a request head arrived at `since`.
    Head { since: Instant },
    /// A request is being handled; the handler bounds its own body reads.
    Busy,
}

/// The phase, shared by the stream (reads) and the service (requests).
struct ConnState {
    phase: Phase,
    /// The reader parked while busy: hyper may have polled its read before the request
    /// ended, and must poll again to start the idle clock.
    parked: Option<Waker>,
}

type SharedState = Arc<Mutex<ConnState>>;

/// Marks the connection busy while alive; idle again once dropped.
struct Busy(SharedState);

impl Busy {
    fn start(state: SharedState) -> Self {
        state.lock().phase = Phase::Busy;
        Busy(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let parked = {
            let mut s = self.0.lock();
            s.phase = Phase::Idle {
                since: Instant::now(),
                fresh: false,
            };
            s.parked.take()
        };
        if let Some(w) = parked {
            w.wake();
        }
    }
}

/// A request body that keeps its connection marked busy until dropped.
struct TrackedBody {
    inner: Incoming,
    _busy: Arc<Busy>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TCP stream with the idle and head timeouts applied to its reads.
struct TimedStream {
    inner: TcpStream,
    state: SharedState,
    limits: ServerLimits,
    on_event: OnEvent,
    sleep: Pin<Box<Sleep>>,
    /// Since when writes have been pending without progress.
    write_stalled: Option<Instant>,
    /// When a write last made progress.
    last_write: Instant,
    write_sleep: Pin<Box<Sleep>>,
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let phase = self.state.lock().phase;
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if r.is_ok()
                    && buf.filled().len() > before
                    && let Phase::Idle { .. } = phase
                {
                    let mut s = self.state.lock();
                    if let Phase::Idle { .. } = s.phase {
                        s.phase = Phase::Head {
                            since: Instant::now(),
                        };
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.write_stalled.is_some() {
                    // An answer is still being written: its own clock bounds the connection
                    // (an idle close now would leave hyper waiting on that write).
                    return Poll::Pending;
                }
                let deadline = match phase {
                    Phase::Busy => {
                        let mut s = self.state.lock();
                        if let Phase::Busy = s.phase {
                            s.parked = Some(cx.waker().clone());
                            return Poll::Pending;
                        }
                        // The request ended meanwhile: poll again with the idle clock.
                        drop(s);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Phase::Idle { since, fresh: true } | Phase::Head { since } => {
                        since + self.limits.header_timeout
                    }
                    // Idle once the answer's last bytes went out, not when it was ready.
                    Phase::Idle {
                        since,
                        fresh: false,
                    } => since.max(self.last_write) + self.limits.idle_timeout,
                };
                if self.sleep.deadline() != deadline {
                    self.sleep.as_mut().reset(deadline);
                }
                if self.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Phase::Idle { fresh: false, .. } = phase {
                    // An idle keep-alive connection ends like a client's close: cleanly.
                    return Poll::Ready(Ok(()));
                }
                (self.on_event)(ConnEvent::HeaderTimeout);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request head within header_timeout",
                )))
            }
        }
    }
}

impl TimedStream {
    /// Bounds a write that makes no progress (a client that stopped reading its answer)
    /// to `idle_timeout`: `r` is the write's outcome, turned into an error once stalled.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_stalled = None;
            self.last_write = Instant::now();
            return r;
        }
        let since = *self.write_stalled.get_or_insert_with(Instant::now);
        let deadline = since + self.limits.idle_timeout;
        if self.write_sleep.deadline() != deadline {
            self.write_sleep.as_mut().reset(deadline);
        }
        if self.write_sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        (self.on_event)(ConnEvent::WriteTimeout);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing of the answer for idle_timeout",
        )))
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound_write(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound_write(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has nothing to flush: always ready, and no sign of the client reading.
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: ServerLimits) -> (std::net::SocketAddr, Arc<[AtomicUsize; 3]>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let c = counts.clone();
        let on_event: OnEvent = Arc::new(move |e| {
            let i = match e {
                ConnEvent::TooManyConnections => 0,
                ConnEvent::HeaderTimeout => 1,
                ConnEvent::WriteTimeout => 2,
            };
            c[i].fetch_add(1, Ordering::SeqCst);
        });
        let app = axum::Router::new()
            .route("/", get(|| async { "hi" }))
            .route("/big", get(|| async { vec![b'z'; 64 << 20] }));
        tokio::spawn(serve(
            listener,
            app,
            limits,
            on_event,
            "test",
            CancellationToken::new(),
        ));
        (addr, counts)
    }

    /// Reads until EOF or error; returns what arrived and whether it ended in a clean EOF.
    async fn read_all(s: &mut TcpStream) -> (String, bool) {
        let mut buf = Vec::new();
        let clean = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("the server closes")
            .is_ok();
        (String::from_utf8_lossy(&buf).into_owned(), clean)
    }

    #[tokio::test]
    async fn partial_head_times_out_and_is_counted() {
        let mut limits = ServerLimits::new(8);
        limits.header_timeout = Duration::from_millis(300);
        let (addr, counts) = start(limits).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut partial = TcpStream::connect(addr).await.expect("connect");
        partial
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let (got, _) = read_all(&mut partial).await;
        assert!(got.is_empty(), "no answer to half a head: {got:?}");
        let (got, _) = read_all(&mut silent).await;
        assert!(got.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(counts[1].load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_keep_alive_outlives_header_timeout_then_closes_cleanly() {
        let limits = ServerLimits {
            max_connections: 8,
            header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(1200),
        };
        let (addr, counts) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        s.write_all(req).await.expect("write");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("first answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Idle for longer than header_timeout: the connection is still usable.
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(req).await.expect("write");
        let n = s.read(&mut buf).await.expect("second answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Then idle past idle_timeout: closed cleanly, not counted as an error.
        let started = Instant::now();
        let (rest, clean) = read_all(&mut s).await;
        assert!(rest.is_empty() && clean, "{rest:?} clean={clean}");
        assert!(started.elapsed() >= Duration::from_millis(1000));
        assert_eq!(counts[1].load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_counted() {
        let mut limits = ServerLimits::new(2);
        limits.header_timeout = Duration::from_secs(30);
        let (addr, counts) = start(limits).await;
        let _a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        // Let the server accept both before the third arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
            .await
            .expect("closed at once");
        assert!(got.is_err() || buf.is_empty(), "no answer over the cap");
        assert_eq!(counts[0].load(Ordering::SeqCst), 1);
        // A slot frees when a connection closes.
        drop(_a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut d = TcpStream::connect(addr).await.expect("connect");
        d.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let (got, _) = read_all(&mut d).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_after_idle_timeout() {
        let limits = ServerLimits {
            max_connections: 8,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(500),
        };
        let (addr, counts) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        // 64 MiB cannot fit in the socket buffers: the server's write stalls.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counts[2].load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the stalled answer was never cut"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The connection is closed: what was buffered drains, then EOF or a reset.
        let mut sink = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        assert!(ended.is_ok(), "the connection was closed");
        assert!(sink.len() < 64 << 20, "the answer was cut short");
    }
}
