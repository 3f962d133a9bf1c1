//! Listeners and per-connection tasks.

use std::collections::VecDeque;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::decode::{self, DecodeError, Limits, Stats, TagCache};
use super::frame::{FrameError, Split, Splitter};
use super::handshake;
use super::metrics::{ErrorKind, InputMetrics};
use super::{ForwardConfig, ListenAddr};
use crate::buffer::budget::{MemoryBudget, Reservation};
use crate::event::Record;
use crate::input::ack::{AckToken, AckWait, ack_pair};
use crate::input::drain::{ClientGuard, InputShutdown};
use crate::input::{Ingest, IngestError};

/// Read granularity; also the buffer a connection keeps between small requests.
const READ_CHUNK: usize = 32 * 1024;
/// Requests at least this big are decoded on the blocking pool, so one big frame does not
/// stall the other connections sharing the runtime thread.
const BLOCKING_DECODE: usize = 256 * 1024;
/// Read buffer a connection may hold without reserving memory from the budget (a fixed
/// per-connection overhead, bounded by `max_connections`). Beyond it, the bytes received
/// are reserved, never the size a frame header merely announces.
const FREE_READ_BUFFER: usize = 2 * READ_CHUNK;
/// How long a connection that receives a steady stream of small writes waits before its
/// next read, so that one wake-up, one read and one buffer push take many records.
/// Docker's fluentd driver (and so FireLens) writes one `[tag, time, record]` per log
/// line: read as they come, a busy container costs the router a wake-up, a read and a
/// push per line, and the kernel's context switches were most of its CPU. It waits out
/// of the reactor ([`Socket::rest`]), or each write would still wake a thread. Only
/// connections whose last read was small and came within twice this of the one before
/// wait; a client waiting for acks (`chunk`) never does, nor one sending seldom.
const READ_LINGER: Duration = Duration::from_millis(2);
/// How long a connection keeps the large read buffer of an acknowledged request, and its
/// large-request slot, while it waits for the client's next request
/// ([`Conn::keep_read_buffer`]). A client that sends a chunk, waits for its ack and sends
/// the next (`require_ack_response`) has its next request in well under this; growing a
/// fresh buffer for each ~0.5 MB request (copies and page faults as it doubles, a slot
/// taken and given back) was a quarter of the CPU of an acked stream. A client that goes
/// quiet gives the memory and the slot back after this.
const KEEP_LINGER: Duration = Duration::from_millis(20);
/// Several small requests already in the read buffer are ingested together, up to this.
const MAX_BATCH_RECORDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Longest record vector a connection keeps for its next request (`Conn::spare`): 28 KiB,
/// a fixed per-connection cost like its read buffer.
const SPARE_RECORDS: usize = 512;
/// A client that stops reading acks (or never answers HELO) is cut off after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PING_BYTES: usize = 64 * 1024;
/// Requests with a `chunk` that a connection may have taken but not yet acknowledged
/// (their records held back by a processor, or in flight to the buffers). At the bound the
/// connection stops reading until the oldest is settled. Each costs only its ack reply.
pub(crate) const MAX_UNACKED_REQUESTS: usize = 256;
/// Ratio assumed between the decompressed and wire size when reserving memory ahead of
/// inflating; the reservation is corrected once the real size is known.
const ASSUMED_COMPRESSION_RATIO: usize = 10;
/// The most memory one large request is assumed to need, in units of `max_frame_bytes`: its
/// read buffer, the records decoded from it, and the copy made while the buffer grows. It
/// sizes the input's large-request slots (see [`Shared::large_frames`]).
const LARGE_FRAME_COST: usize = 3;
/// Granularity of [`MemoryBudget`] permits; reservations are kept at whole units so a
/// reservation topped up many times never holds more units than its bytes say.
const BUDGET_UNIT: usize = 1024;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Binds every listener of `cfg`, then serves them until the drain window of `shutdown` is
/// over (see [`crate::input::drain`]): after SIGTERM connections are still read and new ones
/// accepted, each registered as an open client.
///
/// Returns once all sockets are bound (so the caller can report readiness), or the first bind
/// error with the address in its context. Each returned task is one listener; it finishes
/// after [`InputShutdown::stop`] once every connection it accepted has closed (by the client,
/// or at the window's end after its last complete request) and its records were ingested
/// and acked, so awaiting all of them means "input done".
pub(crate) async fn spawn(
    cfg: ForwardConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: InputShutdown,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let metrics = InputMetrics::new(&cfg.name);
    spawn_with_metrics(cfg, ingest, budget, shutdown, metrics).await
}

/// [`spawn`] with counters the caller registered (tests install a local recorder).
pub(crate) async fn spawn_with_metrics(
    cfg: ForwardConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: InputShutdown,
    metrics: InputMetrics,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    spawn_lingering(cfg, ingest, budget, shutdown, metrics, KEEP_LINGER).await
}

/// [`spawn_with_metrics`] with `keep_linger` in place of [`KEEP_LINGER`] (tests).
async fn spawn_lingering(
    cfg: ForwardConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: InputShutdown,
    metrics: InputMetrics,
    keep_linger: Duration,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut listeners = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        let bound = match addr {
            ListenAddr::Tcp(a) => {
                TcpListener::bind(a)
                    .await
                    .map(Listener::Tcp)
                    .with_context(|| {
                        format!("forward input `{}`: cannot listen on tcp://{a}", cfg.name)
                    })
            }
            ListenAddr::Unix(p) => bind_unix(p, cfg.socket_mode)
                .map(|l| Listener::Unix(l, p.clone()))
                .with_context(|| {
                    format!(
                        "forward input `{}`: cannot listen on unix://{}",
                        cfg.name,
                        p.display()
                    )
                }),
        };
        match bound {
            Ok(l) => listeners.push(l),
            Err(e) => {
                for l in listeners {
                    l.remove_socket_file();
                }
                return Err(e);
            }
        }
    }
    let slots =
        (budget.limit() / cfg.max_frame_bytes.max(1).saturating_mul(LARGE_FRAME_COST)).max(1);
    let shared = Arc::new(Shared {
        connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
        large_frames: Arc::new(tokio::sync::Semaphore::new(slots)),
        large_cap: budget.limit() / slots / BUDGET_UNIT * BUDGET_UNIT,
        large_waiting: std::sync::atomic::AtomicUsize::new(0),
        keep_linger,
        limits: Limits {
            max_decompressed_bytes: cfg.max_decompressed_bytes,
            // Set per request from what is reserved for it (`Conn::decode_into`).
            max_decoded_bytes: usize::MAX,
        },
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        cfg,
        ingest,
        budget,
        metrics,
    });
    for l in &listeners {
        tracing::info!(input = %shared.cfg.name, listen = %l.describe(), "forward input listening");
    }
    if let Some(limit) = open_files_limit()
        && (shared.cfg.max_connections as u64).saturating_add(FD_HEADROOM) > limit
    {
        // The cap only protects `/health` and the outputs if the process can open more
        // files than it lets clients take.
        tracing::warn!(
            input = %shared.cfg.name,
            max_connections = shared.cfg.max_connections,
            open_files_limit = limit,
            "max_connections leaves fewer than {FD_HEADROOM} file descriptors for everything else: raise the task's nofile ulimit or lower max_connections"
        );
    }
    Ok(listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, shared.clone(), shutdown.clone())))
        .collect())
}

/// Creates the socket's directory, replaces a stale socket file (never another kind of file,
/// never a socket someone still listens on) and opens it to `mode`.
fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another process is listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

struct Shared {
    /// One permit per open connection (`max_connections`).
    connections: Arc<tokio::sync::Semaphore>,
    /// One permit per request that is being read, decoded or ingested with more than
    /// `FREE_READ_BUFFER` of read buffer (or whose buffer is kept, counted, for the
    /// client's next request: [`Conn::keep_read_buffer`]): `memory_limit / (3 × max_frame_bytes)`, at least
    /// one. Only a holder may wait for budget while holding budget (each at most
    /// `large_cap`, and all holders together at most `memory_limit`, so they never wait for
    /// each other forever); everyone else gives its reservation back before waiting. This
    /// keeps the memory of large requests counted while they wait, and bounds what is not
    /// counted (a request's records between decoding and the buffers' own reservation) to
    /// one request per slot.
    large_frames: Arc<tokio::sync::Semaphore>,
    /// Budget one slot holder may hold (`memory_limit / slots`, whole KiB).
    large_cap: usize,
    /// Connections waiting for a slot: while any do, no connection keeps its slot past the
    /// request it took it for ([`Conn::keep_read_buffer`]).
    large_waiting: std::sync::atomic::AtomicUsize,
    /// [`KEEP_LINGER`].
    keep_linger: Duration,
    cfg: ForwardConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    metrics: InputMetrics,
    limits: Limits,
    hostname: String,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp://{a}"),
                Err(_) => "tcp://?".to_owned(),
            },
            Listener::Unix(_, p) => format!("unix://{}", p.display()),
        }
    }

    fn remove_socket_file(&self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, shutdown: InputShutdown) {
    let tracker = TaskTracker::new();
    loop {
        // New connections are accepted during the drain window too: a container may
        // reconnect to flush its last lines.
        let accepted = tokio::select! {
            _ = shutdown.stopped() => break,
            r = accept(&listener) => r,
        };
        // Over the cap, a connection is closed right away (and counted) rather than left
        // in the backlog: the file descriptors it would take are the ones `/health` and
        // the outputs' sockets need.
        let permit = match (&accepted, shared.connections.clone().try_acquire_owned()) {
            (Err(_), _) => None,
            (Ok(_), Ok(permit)) => Some(permit),
            (Ok(_), Err(_)) => {
                shared.metrics.error(ErrorKind::TooManyConnections, 1);
                crate::warn_limited!(
                    ErrorKind::TooManyConnections.log_key(),
                    "forward input `{}`: {} connections open (max_connections); closing a new one on {}",
                    shared.cfg.name,
                    shared.cfg.max_connections,
                    listener.describe()
                );
                continue;
            }
        };
        match accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = Conn::new(
                    stream,
                    format!("tcp://{peer}"),
                    shared.clone(),
                    shutdown.clone(),
                );
                tracker.spawn(conn.run(permit, shutdown.client()));
            }
            Ok(Accepted::Unix(stream)) => {
                let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                let peer = format!("{}#{id}", listener.describe());
                let conn = Conn::new(stream, peer, shared.clone(), shutdown.clone());
                tracker.spawn(conn.run(permit, shutdown.client()));
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning on the error.
                crate::warn_limited!(
                    "forward_accept",
                    "forward input `{}`: accept on {} failed: {e}",
                    shared.cfg.name,
                    listener.describe()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    listener.remove_socket_file();
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tracing::debug!(input = %shared.cfg.name, "forward listener drained");
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Requests decoded from the read buffer, ingested together.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    /// `{"ack": chunk}` replies of the complete, valid requests, in order.
    acks: Vec<u8>,
    /// Requests in the batch, and how many of them asked for an ack.
    requests: usize,
    ack_requests: usize,
    /// The requests' frames (shared with the read buffer, not copied), kept to ingest them
    /// one by one when the batch as a whole is refused as too large: one oversized record
    /// must not take its neighbours' requests down with it.
    frames: Vec<Bytes>,
    wire_bytes: u64,
    /// Memory the batch needs: frames plus decoded records.
    mem_bytes: usize,
}

/// Requests taken by the router whose acks wait for their tokens ([`crate::input::ack`]),
/// oldest first. Acks go out strictly in this order.
#[derive(Default)]
struct PendingAcks {
    queue: VecDeque<PendingAck>,
    /// Requests in the queue (one entry may stand for a batch of them).
    requests: usize,
}

struct PendingAck {
    acks: Vec<u8>,
    requests: usize,
    wait: AckWait,
}

impl PendingAcks {
    fn push(&mut self, p: PendingAck) {
        self.requests += p.requests;
        self.queue.push_back(p);
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the connection must stop reading until the oldest request is settled.
    fn is_full(&self) -> bool {
        self.requests >= MAX_UNACKED_REQUESTS
    }

    /// The oldest entry with its outcome, once settled; never resolves while empty.
    /// Cancel-safe: an entry leaves the queue only in the poll that returns it.
    async fn next(&mut self) -> (PendingAck, Result<(), IngestError>) {
        let Some(head) = self.queue.front_mut() else {
            return std::future::pending().await;
        };
        let outcome = (&mut head.wait).await;
        // Always `Some`: the head was just awaited and nothing else touches the queue.
        let Some(done) = self.queue.pop_front() else {
            return std::future::pending().await;
        };
        self.requests -= done.requests;
        (done, outcome)
    }
}

impl Batch {
    fn is_full(&self) -> bool {
        self.records.len() >= MAX_BATCH_RECORDS || self.mem_bytes >= MAX_BATCH_BYTES
    }
}

/// A connection's socket: TCP or unix stream.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Takes the socket out of the runtime's reactor for `d`, then puts it back.
    ///
    /// Merely not reading for a while is not enough: the reactor registers sockets
    /// edge-triggered, and every write the peer makes is an edge that wakes a worker
    /// thread out of `epoll_wait`, whether any task reads or not. Out of the epoll set,
    /// arriving writes only queue in the kernel. Errors (the registration failed) close
    /// the connection; it never holds unacknowledged requests while resting.
    fn rest(self, d: Duration) -> impl Future<Output = std::io::Result<Self>> + Send;
}

impl Socket for tokio::net::TcpStream {
    async fn rest(self, d: Duration) -> std::io::Result<Self> {
        let std = self.into_std()?;
        tokio::time::sleep(d).await;
        tokio::net::TcpStream::from_std(std)
    }
}

impl Socket for tokio::net::UnixStream {
    async fn rest(self, d: Duration) -> std::io::Result<Self> {
        let std = self.into_std()?;
        tokio::time::sleep(d).await;
        tokio::net::UnixStream::from_std(std)
    }
}

/// Reads into `buf`; an error when the socket was lost resting.
async fn read_buf<S: Socket>(stream: &mut Option<S>, buf: &mut BytesMut) -> std::io::Result<usize> {
    match stream {
        Some(s) => s.read_buf(buf).await,
        None => Err(std::io::Error::other("connection lost while resting")),
    }
}

/// What [`READ_LINGER`] decides on: whether the connection receives a steady stream of
/// small writes.
#[derive(Default)]
struct ReadPacing {
    last: Option<tokio::time::Instant>,
    steady: bool,
}

impl ReadPacing {
    /// Notes a read of `n` bytes.
    fn filled(&mut self, n: usize) {
        let now = tokio::time::Instant::now();
        self.steady = n < READ_CHUNK / 2
            && self
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < 2 * READ_LINGER);
        self.last = Some(now);
    }
}

struct Conn<S> {
    /// `None` only while resting ([`Socket::rest`]) or after a rest failed.
    stream: Option<S>,
    peer: String,
    sh: Arc<Shared>,
    shutdown: InputShutdown,
    buf: BytesMut,
    /// Budget held while reading and decoding the current batch (and a big partial frame);
    /// released when the batch is handed to `ingest`.
    held: Reservation,
    pending: PendingAcks,
    /// This connection's large-request slot ([`Shared::large_frames`]), held from the
    /// moment its read buffer must grow beyond `FREE_READ_BUFFER` until the request's
    /// records were taken by the router and the buffer is small again, or, for a buffer
    /// kept for a client waiting for acks, until it goes quiet ([`KEEP_LINGER`]).
    large: Option<tokio::sync::OwnedSemaphorePermit>,
    /// While a slot is held, the request in progress must be complete by then
    /// (`read_timeout` after the slot was taken or the last request completed), so a
    /// client trickling a large request cannot keep the slot from others.
    large_deadline: Option<tokio::time::Instant>,
    /// The previous request's tag, for the next one to share (see [`TagCache`]).
    tags: TagCache,
    /// An emptied record vector kept from the last request decoded here, so that each
    /// Message-mode request (one record) does not allocate one of its own. At most
    /// [`SPARE_RECORDS`] long.
    spare: Vec<Record>,
    /// Wall-clock time (ns since the epoch) of the batch being read: the time of records
    /// sent without one. Read once per batch, not per request: in Message mode a clock
    /// read per request was 3% of the CPU.
    now_ns: i64,
}

/// What woke a connection waiting for bytes.
enum Woke {
    Read(std::io::Result<usize>),
    Settled(PendingAck, Result<(), IngestError>),
    Stopped,
    TimedOut,
    /// [`KEEP_LINGER`] passed with a kept read buffer and nothing read.
    Quiet,
}

impl<S: Socket> Conn<S> {
    fn new(stream: S, peer: String, sh: Arc<Shared>, shutdown: InputShutdown) -> Self {
        Conn {
            stream: Some(stream),
            peer,
            sh,
            shutdown,
            buf: BytesMut::with_capacity(READ_CHUNK),
            held: Reservation::empty(),
            pending: PendingAcks::default(),
            large: None,
            large_deadline: None,
            tags: TagCache::default(),
            spare: Vec::new(),
            now_ns: 0,
        }
    }

    /// Serves the connection; `_permit` is its place under `max_connections` and `_client`
    /// its registration for the shutdown drain (taken at accept, so the drain cannot end
    /// between accept and this task starting), both given back when it closes.
    async fn run(
        mut self,
        _permit: Option<tokio::sync::OwnedSemaphorePermit>,
        _client: ClientGuard,
    ) {
        tracing::debug!(peer = %self.peer, "forward connection opened");
        let result = match self.sh.cfg.shared_key.clone() {
            Some(key) => match self.handshake(&key).await {
                Ok(()) => self.serve().await,
                Err(e) => Err(e),
            },
            None => self.serve().await,
        };
        // Requests taken before the end still get their acks, so the client does not
        // resend (duplicate) them.
        let result = match (result, self.flush_acks().await) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        };
        if let Err(e) = result {
            self.sh.metrics.error(e.kind, 1);
            crate::warn_limited!(
                e.kind.log_key(),
                "forward input `{}`: closing connection from {}: {}",
                self.sh.cfg.name,
                self.peer,
                e
            );
        }
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.shutdown().await;
        }
        tracing::debug!(peer = %self.peer, "forward connection closed");
    }

    async fn handshake(&mut self, key: &str) -> Result<(), DecodeError> {
        let nonce = handshake::new_nonce();
        self.write(&handshake::helo(&nonce)).await?;
        let ping =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.read_one(MAX_PING_BYTES)).await {
                Ok(r) => r?,
                Err(_) => return Err(err(ErrorKind::AuthFailed, "no PING within 10s")),
            };
        let verdict = handshake::check_ping(&ping, &nonce, key.as_bytes(), &self.sh.hostname);
        self.write(&verdict.pong).await?;
        match verdict.failure {
            None => Ok(()),
            Some(reason) => Err(err(ErrorKind::AuthFailed, reason)),
        }
    }

    /// Reads exactly one msgpack object (handshake messages).
    async fn read_one(&mut self, max: usize) -> Result<Bytes, DecodeError> {
        let mut splitter = Splitter::new(max);
        loop {
            match splitter.advance(&self.buf) {
                Split::Complete(n) => return Ok(self.buf.split_to(n).freeze()),
                Split::Invalid(e) => return Err(frame_error(e)),
                Split::Incomplete => {}
            }
            self.buf.reserve(READ_CHUNK);
            if !self.fill().await? {
                return Err(err(
                    ErrorKind::AuthFailed,
                    "connection closed during the handshake",
                ));
            }
        }
    }

    async fn serve(&mut self) -> Result<(), DecodeError> {
        let mut splitter = Splitter::new(self.sh.cfg.max_frame_bytes);
        let mut pacing = ReadPacing::default();
        loop {
            let mut batch = Batch::default();
            self.now_ns = crate::event::now_ns();
            let size_at_start = self.buf.capacity();
            let mut fatal = None;
            loop {
                if splitter.at_start()
                    && let Some(&first) = self.buf.first()
                    && !is_request_start(first)
                {
                    fatal = Some(err(ErrorKind::BadRequest, "request is not an array"));
                    break;
                }
                match splitter.advance(&self.buf) {
                    Split::Incomplete => break,
                    Split::Invalid(e) => {
                        fatal = Some(frame_error(e));
                        break;
                    }
                    Split::Complete(n) => {
                        let frame = self.buf.split_to(n).freeze();
                        splitter.reset();
                        if self.large.is_some() {
                            self.large_deadline = self
                                .sh
                                .cfg
                                .read_timeout
                                .map(|d| tokio::time::Instant::now() + d);
                        }
                        if let Err(e) = self.decode_into(&mut batch, frame).await {
                            fatal = Some(e);
                            break;
                        }
                        if batch.is_full() {
                            break;
                        }
                    }
                }
            }
            let more_buffered = batch.is_full() && fatal.is_none();
            let acked = batch.ack_requests > 0;
            // A pass that cut nothing from the buffer (a request still arriving, or the pass
            // after a full batch) leaves it, and a buffer kept for this client, as they are.
            if batch.requests > 0 || fatal.is_some() {
                // A client waiting for its acks sends nothing more until this batch is
                // settled, so the buffer it filled is empty now: keep it, counted, for its
                // next request.
                let kept = if acked && fatal.is_none() && batch.wire_bytes > FREE_READ_BUFFER as u64
                {
                    self.reserve_kept_buffer(size_at_start)
                } else {
                    None
                };
                if kept.is_none() {
                    // Give back what one big request needed before its records are handed
                    // on (they are not counted until the buffers reserve them), not after.
                    self.shed_read_buffer();
                }
                self.commit(batch).await?;
                if let Some(r) = kept {
                    self.keep_read_buffer(size_at_start, r);
                }
            }
            if let Some(e) = fatal {
                return Err(e);
            }
            if self.large.is_some() && self.buf.capacity() <= FREE_READ_BUFFER {
                self.release_slot();
            }
            if more_buffered {
                continue;
            }
            let spare = self.buf.capacity() - self.buf.len();
            if spare < READ_CHUNK / 2 {
                // Grow with what actually arrived (doubling, so a big request is copied a
                // few times, not once per read), never to the size its header announces:
                // a header claiming 16 MiB followed by silence must cost nothing.
                let missing = splitter.min_len().saturating_sub(self.buf.len());
                let grow = READ_CHUNK.max(self.buf.len().min(missing));
                if self.large.is_none() && self.buf.len() + grow > FREE_READ_BUFFER {
                    self.take_large_slot().await?;
                }
                self.buf.reserve(grow);
            }
            if self.buf.capacity() > FREE_READ_BUFFER {
                // Counted as it is filled; may wait for memory others release (see
                // `ensure`).
                let cap = self.slot_cap();
                ensure(&mut self.held, &self.sh.budget, self.buf.capacity(), cap).await;
            }
            // Too many requests wait for their acks: read nothing more until the oldest
            // is settled, so a stage holding records back cannot make this grow forever.
            while self.pending.is_full() {
                let (p, outcome) = self.pending.next().await;
                self.answer(p, outcome).await?;
            }
            if pacing.steady && !acked && self.pending.is_empty() && splitter.at_start() {
                self.rest(READ_LINGER).await?;
            }
            let before = self.buf.len();
            let open = self.fill().await?;
            pacing.filled(self.buf.len().saturating_sub(before));
            if !open {
                if self.buf.is_empty() {
                    return Ok(());
                }
                return Err(err(
                    ErrorKind::TruncatedFrame,
                    format!(
                        "connection closed with {} bytes of an incomplete request",
                        self.buf.len()
                    ),
                ));
            }
        }
    }

    /// Waits `d` with the socket out of the reactor ([`Socket::rest`]).
    async fn rest(&mut self, d: Duration) -> Result<(), DecodeError> {
        let Some(stream) = self.stream.take() else {
            return Err(err(ErrorKind::Io, "connection lost while resting"));
        };
        self.stream = Some(stream.rest(d).await.map_err(io_error)?);
        Ok(())
    }

    /// Budget this connection may hold while waiting for more: `Some` only with a
    /// large-request slot.
    fn slot_cap(&self) -> Option<usize> {
        self.large.as_ref().map(|_| self.sh.large_cap)
    }

    /// Waits for a large-request slot, sending acks as their requests are settled
    /// meanwhile. Holds no budget while waiting (the read buffer is at most
    /// `FREE_READ_BUFFER`, a fixed per-connection cost).
    async fn take_large_slot(&mut self) -> Result<(), DecodeError> {
        let slots = self.sh.large_frames.clone();
        let sh = self.sh.clone();
        let _waiting = WaitingForSlot::new(&sh.large_waiting);
        let mut slot = std::pin::pin!(slots.acquire_owned());
        loop {
            let woke = tokio::select! {
                p = &mut slot => {
                    // The semaphore is never closed; without a slot the request is still
                    // read, only its memory is not held while waiting.
                    self.large = p.ok();
                    self.large_deadline =
                        self.sh.cfg.read_timeout.map(|d| tokio::time::Instant::now() + d);
                    return Ok(());
                }
                (p, outcome) = self.pending.next() => Woke::Settled(p, outcome),
                _ = self.shutdown.stopped() => Woke::Stopped,
            };
            match woke {
                Woke::Settled(p, outcome) => self.answer(p, outcome).await?,
                _ => {
                    return Err(err(
                        ErrorKind::TruncatedFrame,
                        format!(
                            "drain window over with {} bytes of an incomplete request waiting for memory (not acked)",
                            self.buf.len()
                        ),
                    ));
                }
            }
        }
    }

    /// Moves what is left in a read buffer grown for a large request (nothing, or the start
    /// of the next request) to a small one, so the large allocation is freed as soon as
    /// the requests cut from it are.
    fn shed_read_buffer(&mut self) {
        if (self.large.is_some() || self.buf.capacity() > FREE_READ_BUFFER)
            && self.buf.len() <= READ_CHUNK / 2
        {
            let mut small = BytesMut::with_capacity(READ_CHUNK);
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
    }

    /// Before an acknowledged batch is committed: the budget for keeping its read buffer
    /// (`size` bytes, its capacity when the batch began) for the client's next request,
    /// or `None` to shed it as usual. The buffer stays allocated while `commit` waits out
    /// back-pressure, so it is counted from now on, beside what the batch holds. Only
    /// taken without waiting (an empty buffer is not worth waiting for memory), while no
    /// other connection waits for a large-request slot (the slot is kept with the buffer),
    /// and when the buffer and the batch together stay within one slot's share
    /// ([`Shared::large_cap`]): then this connection holds at most that while `commit`
    /// waits, as the slots' rule in [`ensure`] requires.
    fn reserve_kept_buffer(&self, size: usize) -> Option<Reservation> {
        let waiting = self
            .sh
            .large_waiting
            .load(std::sync::atomic::Ordering::Relaxed);
        let bytes = size.next_multiple_of(BUDGET_UNIT);
        if self.large.is_none()
            || waiting > 0
            || self.buf.len() > READ_CHUNK / 2
            || bytes + self.held.bytes() > self.sh.large_cap
        {
            return None;
        }
        self.sh.budget.try_acquire(bytes)
    }

    /// After the batch was committed: makes the whole allocation of the read buffer its
    /// capacity again (the batch's frames, cut from it, are gone) and keeps it, with the
    /// large-request slot, counted by `reserved` ([`Conn::reserve_kept_buffer`]). Sheds it
    /// instead (giving `reserved` back) when something still points into it. A client that
    /// then goes quiet gives both back after [`KEEP_LINGER`] (see [`Conn::fill`]).
    fn keep_read_buffer(&mut self, size: usize, reserved: Reservation) {
        debug_assert!(self.held.bytes() == 0, "commit hands the reservation on");
        if self.large.is_some()
            && self.buf.len() <= READ_CHUNK / 2
            && self.buf.try_reclaim(size)
            && self.buf.capacity().min(self.sh.large_cap) <= reserved.bytes()
        {
            self.held = reserved;
            return;
        }
        drop(reserved);
        self.shed_read_buffer();
    }

    /// Gives back a kept read buffer, its reservation and its large-request slot.
    fn release_kept_buffer(&mut self) {
        self.shed_read_buffer();
        self.held = Reservation::empty();
        self.release_slot();
    }

    /// Gives the large-request slot back, and with it the deadline it set.
    fn release_slot(&mut self) {
        self.large = None;
        self.large_deadline = None;
    }

    /// Reads more bytes, sending acks as their requests are settled meanwhile. `Ok(false)`
    /// on EOF, at the end of the drain window, or after `idle_timeout`, with nothing in
    /// progress. A request in progress that receives nothing for `read_timeout`, or is cut
    /// by the window's end, is an error: its bytes are dropped, unacked (the client resends
    /// it), and the memory they held is freed.
    async fn fill(&mut self) -> Result<bool, DecodeError> {
        let in_progress = !self.buf.is_empty();
        let limit = if in_progress {
            self.sh.cfg.read_timeout
        } else {
            self.sh.cfg.idle_timeout
        };
        let gap_deadline = limit.map(|d| tokio::time::Instant::now() + d);
        let slot_deadline = self.large_deadline.filter(|_| in_progress);
        let deadline = match (gap_deadline, slot_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let slot_expired = slot_deadline.is_some() && slot_deadline == deadline;
        let timed_out = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timed_out);
        // A buffer kept after an acknowledged request (`keep_read_buffer`), with nothing of
        // the next request yet.
        let mut kept = !in_progress && self.large.is_some();
        let kept_until = tokio::time::sleep(if kept {
            self.sh.keep_linger
        } else {
            Duration::ZERO
        });
        tokio::pin!(kept_until);
        loop {
            // During the drain window (after SIGTERM) reading goes on as before: apps
            // flush their last lines while the task stops. Only the window's end stops it.
            let woke = tokio::select! {
                r = read_buf(&mut self.stream, &mut self.buf) => Woke::Read(r),
                (p, outcome) = self.pending.next() => Woke::Settled(p, outcome),
                _ = self.shutdown.stopped() => Woke::Stopped,
                _ = &mut timed_out => Woke::TimedOut,
                _ = &mut kept_until, if kept => Woke::Quiet,
            };
            match woke {
                Woke::Read(r) => return r.map(|n| n > 0).map_err(io_error),
                Woke::Quiet => {
                    kept = false;
                    self.release_kept_buffer();
                }
                Woke::Settled(p, outcome) => self.answer(p, outcome).await?,
                Woke::Stopped if in_progress => {
                    return Err(err(
                        ErrorKind::TruncatedFrame,
                        format!(
                            "drain window over with {} bytes of an incomplete request (not acked)",
                            self.buf.len()
                        ),
                    ));
                }
                Woke::Stopped => return Ok(false),
                Woke::TimedOut if slot_expired => {
                    return Err(err(
                        ErrorKind::ReadTimeout,
                        format!(
                            "a large request did not arrive within {:?} ({} bytes received); it held one of the input's large-request slots",
                            limit.unwrap_or_default(),
                            self.buf.len()
                        ),
                    ));
                }
                Woke::TimedOut if in_progress => {
                    return Err(err(
                        ErrorKind::ReadTimeout,
                        format!(
                            "no bytes for {:?} in the middle of a request ({} bytes received)",
                            limit.unwrap_or_default(),
                            self.buf.len()
                        ),
                    ));
                }
                Woke::TimedOut => {
                    tracing::debug!(peer = %self.peer, "closing idle forward connection");
                    return Ok(false);
                }
            }
        }
    }

    /// Decodes one request into `batch` within the memory budget.
    ///
    /// Decoding may use only what is reserved for it (the request's inflated payload and
    /// records, [`Limits::max_decoded_bytes`]); it stops as soon as the request needs
    /// more. It is then retried with four times the room (after handing on what is
    /// already batched and taking a large-request slot, so the extra budget is waited for
    /// the way large frames wait for it), up to what one request may hold
    /// ([`Shared::large_cap`], beside its frame). A request that needs more than that is
    /// refused before its ack (`too_large`, no ack; the connection stays open), having
    /// cost at most that much memory: a few wire bytes per entry each becoming a record
    /// of ~140 bytes cannot take the process past its budget.
    async fn decode_into(&mut self, batch: &mut Batch, frame: Bytes) -> Result<(), DecodeError> {
        let wire = frame.len();
        let compressed = decode::is_compressed(&frame);
        // The frame itself is the read buffer, already counted (up to the slot's share)
        // while it arrived; it is freed once the records are taken.
        let most = self.sh.large_cap;
        let mut allowed = if compressed {
            (wire * ASSUMED_COMPRESSION_RATIO).min(self.sh.limits.max_decompressed_bytes) * 2
        } else {
            wire * 2
        }
        .min(most);
        let mut decoded = loop {
            let cap = self.slot_cap();
            ensure(
                &mut self.held,
                &self.sh.budget,
                batch.mem_bytes + wire + allowed,
                cap,
            )
            .await;
            // What is really held for this request: `ensure` caps at the slot's share, so
            // requests batched before this one may leave it less than `allowed`. Alone in
            // its batch, a request may decode up to `most` beside its frame.
            let batch_empty = batch.requests == 0 && batch.records.is_empty();
            let room = if batch_empty {
                allowed
            } else {
                self.held
                    .bytes()
                    .saturating_sub(batch.mem_bytes + wire)
                    .min(allowed)
            };
            let decoded = self.decode(frame.clone(), compressed, room).await?;
            if !matches!(&decoded.result, Err(e) if e.kind == ErrorKind::TooLarge) {
                break decoded;
            }
            drop(decoded);
            if allowed >= most && batch_empty {
                self.sh.metrics.bytes(wire as u64);
                self.sh.metrics.error(ErrorKind::TooLarge, 1);
                crate::warn_limited!(
                    ErrorKind::TooLarge.log_key(),
                    "forward input `{}`: refused a request of {wire} bytes from {} without ack: decoding it needs more than the {most} bytes of memory one request may hold (memory_limit / large-request slots); send smaller requests or raise runtime.memory_limit",
                    self.sh.cfg.name,
                    self.peer
                );
                return Ok(());
            }
            if !batch_empty {
                // The requests decoded before this one make room for it.
                let earlier = std::mem::take(batch);
                self.commit(earlier).await?;
            }
            if self.large.is_none() {
                // A connection without a slot gives back what it holds before waiting
                // (see `ensure`); its read buffer is within `FREE_READ_BUFFER`.
                self.held = Reservation::empty();
                self.take_large_slot().await?;
            }
            allowed = allowed.saturating_mul(4).max(BUDGET_UNIT).min(most);
        };

        let m = &self.sh.metrics;
        if decoded.stats.invalid_utf8 > 0 {
            m.error(ErrorKind::InvalidUtf8, decoded.stats.invalid_utf8);
            crate::warn_limited!(
                ErrorKind::InvalidUtf8.log_key(),
                "forward input `{}`: {} record(s) from {} contained invalid UTF-8, replaced with U+FFFD",
                self.sh.cfg.name,
                decoded.stats.invalid_utf8,
                self.peer
            );
        }
        if decoded.stats.bad_keys > 0 {
            m.error(ErrorKind::BadKey, decoded.stats.bad_keys);
            crate::warn_limited!(
                ErrorKind::BadKey.log_key(),
                "forward input `{}`: {} record(s) from {} had map keys that are neither strings nor integers, kept with each such key written as its JSON text",
                self.sh.cfg.name,
                decoded.stats.bad_keys,
                self.peer
            );
        }
        let skipped = &decoded.stats;
        for kind in [
            ErrorKind::BadTime,
            ErrorKind::BadRecord,
            ErrorKind::BadEntry,
        ] {
            let (n, reason) = skipped.skips(kind);
            if n > 0 {
                m.error(kind, n);
                crate::warn_limited!(
                    kind.log_key(),
                    "forward input `{}`: skipped {n} entr{} ({kind}) from {}, kept the rest of the request: {}",
                    self.sh.cfg.name,
                    if n == 1 { "y" } else { "ies" },
                    self.peer,
                    reason.unwrap_or("unusable entry")
                );
            }
        }
        batch.mem_bytes += wire
            + decoded
                .records
                .iter()
                .map(Record::approx_size)
                .sum::<usize>();
        let records = &mut decoded.records;
        if batch.records.is_empty()
            && records.capacity() > SPARE_RECORDS
            && records.len() * 2 >= records.capacity()
        {
            // A big request, first of its batch: the batch takes its vector as it is
            // rather than a copy of every record. Only when it is at least half full: the
            // slack of a vector sized by guess (`decode`) is not counted by the budget,
            // and would travel on with the records.
            std::mem::swap(&mut batch.records, records);
        } else {
            batch.records.append(records);
            if records.capacity() <= SPARE_RECORDS {
                self.spare = std::mem::take(records);
            }
        }
        let cap = self.slot_cap();
        ensure(&mut self.held, &self.sh.budget, batch.mem_bytes, cap).await;

        let request = decoded.result?;
        batch.wire_bytes += wire as u64;
        if let Some(signal) = request.skipped_signal {
            // Acked anyway: resending it would never succeed.
            m.error(ErrorKind::UnsupportedSignal, 1);
            crate::warn_limited!(
                ErrorKind::UnsupportedSignal.log_key(),
                "forward input `{}`: skipped a fluent_signal={signal} (metrics/traces) request from {}",
                self.sh.cfg.name,
                self.peer
            );
        }
        batch.requests += 1;
        if let Some(range) = request.chunk {
            ack_reply(&mut batch.acks, &decoded.frame[range]);
            batch.ack_requests += 1;
        }
        batch.frames.push(decoded.frame);
        Ok(())
    }

    /// Decodes one frame using at most `max_decoded_bytes` of memory beside the frame
    /// ([`Limits::max_decoded_bytes`]), on the blocking pool when it is big or compressed
    /// (inflating may take up to `max_decompressed` bytes of work).
    async fn decode(
        &mut self,
        frame: Bytes,
        compressed: bool,
        max_decoded_bytes: usize,
    ) -> Result<Decoded, DecodeError> {
        let limits = Limits {
            max_decoded_bytes,
            ..self.sh.limits
        };
        let now_ns = self.now_ns;
        if compressed || frame.len() >= BLOCKING_DECODE {
            // Sized for records of ~400 bytes, what FireLens sends, so that a big request
            // does not grow its vector by doubling (at most 4096 entries, 224 KiB, here).
            let records = Vec::with_capacity((frame.len() / 400).min(MAX_BATCH_RECORDS));
            tokio::task::spawn_blocking(move || {
                decode_frame(frame, limits, now_ns, &mut TagCache::default(), records)
            })
            .await
            .map_err(|e| err(ErrorKind::Io, format!("decoder task failed: {e}")))
        } else {
            let records = std::mem::take(&mut self.spare);
            Ok(decode_frame(frame, limits, now_ns, &mut self.tags, records))
        }
    }

    /// Hands the batch to the router and queues its acks behind the earlier ones; they go
    /// out once its token is settled (see [`crate::input::ack`]). A batch refused as too
    /// large is retried request by request, so only the request holding the oversized
    /// record goes unacked (counted `too_large`); the connection stays open.
    async fn commit(&mut self, batch: Batch) -> Result<(), DecodeError> {
        // The decoding reservation goes along with the records: their memory buffers draw
        // from it, so the batch stays counted (once) while `ingest` waits out
        // back-pressure, where it used to be memory the budget did not see (8 connections
        // × a batch of up to 8 MiB). A push it cannot cover gives it all back before
        // waiting for budget, so no connection waits while holding budget
        // (`buffer::budget::Credit`); what is left over (the wire frames' share) is given
        // back once `ingest` returns. The connection reads nothing more until then.
        let held = std::mem::replace(&mut self.held, Reservation::empty());
        self.sh.metrics.bytes(batch.wire_bytes);
        let Batch {
            records,
            acks,
            requests,
            ack_requests,
            mut frames,
            ..
        } = batch;
        if frames.len() < 2 {
            frames.clear();
        }
        let Some(too_large) = self.take(records, acks, ack_requests, held).await? else {
            return Ok(());
        };
        if frames.is_empty() {
            self.refused_too_large(requests, &too_large);
            return Ok(());
        }
        for frame in frames {
            // Each decoded within its reservation before; one at a time now.
            let compressed = decode::is_compressed(&frame);
            let decoded = self.decode(frame, compressed, self.sh.large_cap).await?;
            // It decoded fine the first time; decoding is deterministic.
            let Ok(request) = decoded.result else {
                continue;
            };
            let mut acks = Vec::new();
            if let Some(range) = request.chunk.clone() {
                ack_reply(&mut acks, &decoded.frame[range]);
            }
            let ack_requests = usize::from(request.chunk.is_some());
            if let Some(e) = self
                .take(decoded.records, acks, ack_requests, Reservation::empty())
                .await?
            {
                self.refused_too_large(1, &e);
            }
        }
        Ok(())
    }

    /// Ingests records acknowledged together and queues their acks. `Ok(Some(e))` when they
    /// were refused as too large (nothing taken, nothing queued); transient refusals close
    /// the connection (the client resends elsewhere or later).
    async fn take(
        &mut self,
        records: Vec<Record>,
        acks: Vec<u8>,
        ack_requests: usize,
        held: Reservation,
    ) -> Result<Option<IngestError>, DecodeError> {
        let (token, wait) = ack_pair();
        if records.is_empty() {
            token.release();
        } else {
            let n = records.len() as u64;
            match self.ingest(records, token, held).await? {
                Ok(()) => self.sh.metrics.records(n),
                Err(e @ IngestError::TooLarge { .. }) => return Ok(Some(e)),
                Err(e) => {
                    return Err(err(
                        ErrorKind::of_ingest(&e),
                        format!("{n} record(s) not accepted: {e}"),
                    ));
                }
            }
        }
        if ack_requests > 0 {
            self.pending.push(PendingAck {
                acks,
                requests: ack_requests,
                wait,
            });
        }
        Ok(None)
    }

    /// `Ingest::ingest_reserved` (with `held`, the records' decoding reservation), sending
    /// the acks of earlier requests as they are settled while this one waits out
    /// back-pressure.
    async fn ingest(
        &mut self,
        records: Vec<Record>,
        token: AckToken,
        held: Reservation,
    ) -> Result<Result<(), IngestError>, DecodeError> {
        let ingest = self.sh.ingest.clone();
        let mut taking =
            std::pin::pin!(async move { ingest.ingest_reserved(records, token, held).await });
        loop {
            let (p, outcome) = tokio::select! {
                r = &mut taking => return Ok(r),
                settled = self.pending.next() => settled,
            };
            self.answer(p, outcome).await?;
        }
    }

    /// Sends the acks of settled requests; a request that failed after it was taken gets
    /// none (the client resends it).
    async fn answer(
        &mut self,
        p: PendingAck,
        outcome: Result<(), IngestError>,
    ) -> Result<(), DecodeError> {
        match outcome {
            Ok(()) => self.write(&p.acks).await,
            Err(e @ IngestError::TooLarge { .. }) => {
                self.refused_too_large(p.requests, &e);
                Ok(())
            }
            Err(e) => Err(err(
                ErrorKind::of_ingest(&e),
                format!("{} request(s) not acknowledged: {e}", p.requests),
            )),
        }
    }

    /// Waits for every queued request to be settled and sends their acks.
    async fn flush_acks(&mut self) -> Result<(), DecodeError> {
        while !self.pending.is_empty() {
            let (p, outcome) = self.pending.next().await;
            self.answer(p, outcome).await?;
        }
        Ok(())
    }

    fn refused_too_large(&self, requests: usize, e: &IngestError) {
        self.sh.metrics.error(ErrorKind::TooLarge, requests as u64);
        crate::warn_limited!(
            ErrorKind::TooLarge.log_key(),
            "forward input `{}`: refused {requests} request(s) from {} without ack: {e}",
            self.sh.cfg.name,
            self.peer
        );
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(err(ErrorKind::Io, "connection lost while resting"));
        };
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
            Ok(r) => r.map_err(io_error),
            Err(_) => Err(err(ErrorKind::Io, "client does not read its acks")),
        }
    }
}

/// Counts a connection in [`Shared::large_waiting`] while it lives.
struct WaitingForSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WaitingForSlot<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WaitingForSlot(count)
    }
}

impl Drop for WaitingForSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Output of decoding one request; `frame` is kept for echoing the chunk.
struct Decoded {
    records: Vec<Record>,
    stats: Stats,
    result: Result<decode::Request, DecodeError>,
    frame: Bytes,
}

/// Decodes `frame` into `records` (empty; its capacity is reused); records without a time
/// get `now_ns`.
fn decode_frame(
    frame: Bytes,
    limits: Limits,
    now_ns: i64,
    tags: &mut TagCache,
    mut records: Vec<Record>,
) -> Decoded {
    debug_assert!(records.is_empty());
    let mut stats = Stats::default();
    let result = decode::decode_request(&frame, &limits, now_ns, tags, &mut records, &mut stats);
    Decoded {
        records,
        stats,
        result,
        frame,
    }
}

/// File descriptors the rest of the router (admin server, outputs' connections, disk
/// buffer segments) is assumed to need beside forward clients.
const FD_HEADROOM: u64 = 128;

/// The process's soft limit of open files, if known.
fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Appends `{"ack": <chunk exactly as received>}`.
fn ack_reply(out: &mut Vec<u8>, chunk: &[u8]) {
    out.extend_from_slice(&[0x81, 0xa3, b'a', b'c', b'k']);
    out.extend_from_slice(chunk);
}

/// Tops `held` up to `bytes` (at most `slot_cap`, or the whole budget, in whole KiB).
///
/// Without a large-request slot (`slot_cap` is `None`) it never waits while holding a part:
/// two connections each holding half the budget and waiting for more would block each
/// other forever. A slot holder keeps what it holds while it waits: what it holds is
/// memory it really uses (a request half read), and slot holders together hold at most
/// the budget (see [`Shared::large_frames`]), so the budget they wait for is held by
/// others that release it without waiting for them.
async fn ensure(
    held: &mut Reservation,
    budget: &MemoryBudget,
    bytes: usize,
    slot_cap: Option<usize>,
) {
    // Whole units: `MemoryBudget` rounds every reservation up to a KiB, so topping up by
    // odd amounts would hold more units than `held.bytes()` says, and a holder could wait
    // for units that do not exist.
    let target = bytes
        .min(slot_cap.unwrap_or(budget.limit()))
        .next_multiple_of(BUDGET_UNIT);
    if held.bytes() >= target {
        return;
    }
    let extra = target - held.bytes();
    if let Some(r) = budget.try_acquire(extra) {
        held.merge(r);
        return;
    }
    // `target` is capped at the budget's limit above, so `acquire` never refuses it.
    if slot_cap.is_some() {
        if let Ok(r) = budget.acquire(extra).await {
            held.merge(r);
        }
        return;
    }
    *held = Reservation::empty();
    *held = budget
        .acquire(target)
        .await
        .unwrap_or_else(|_| Reservation::empty());
}

/// Requests are arrays, or nil heartbeats. Anything else is refused at its first byte
/// instead of after buffering what might be a huge string.
fn is_request_start(byte: u8) -> bool {
    matches!(byte, 0x90..=0x9f | 0xdc | 0xdd | 0xc0)
}

fn err(kind: ErrorKind, detail: impl Into<String>) -> DecodeError {
    DecodeError {
        kind,
        detail: detail.into(),
    }
}

fn frame_error(e: FrameError) -> DecodeError {
    let kind = match e {
        FrameError::Malformed { .. } => ErrorKind::MalformedMsgpack,
        FrameError::TooLarge { .. } => ErrorKind::FrameTooLarge,
    };
    err(kind, e.to_string())
}

fn io_error(e: std::io::Error) -> DecodeError {
    err(ErrorKind::Io, e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    /// Reads are paced only for a steady stream of small writes: two small reads within
    /// twice [`READ_LINGER`]; a large read or a pause ends it.
    #[tokio::test(start_paused = true)]
    async fn only_a_steady_stream_of_small_writes_is_read_in_batches() {
        let mut p = ReadPacing::default();
        p.filled(600);
        assert!(!p.steady, "a first read");
        tokio::time::advance(Duration::from_micros(40)).await;
        p.filled(600);
        assert!(p.steady, "one line every 40 µs");
        tokio::time::advance(READ_LINGER).await;
        p.filled(20 * 600);
        assert!(p.steady, "what arrived while it waited");
        tokio::time::advance(Duration::from_micros(10)).await;
        p.filled(READ_CHUNK);
        assert!(!p.steady, "full reads need no waiting");
        tokio::time::advance(Duration::from_micros(10)).await;
        p.filled(600);
        assert!(p.steady);
        tokio::time::advance(Duration::from_millis(100)).await;
        p.filled(600);
        assert!(!p.steady, "a line now and then is read at once");
    }

    use tokio::net::UnixStream;

    use super::*;
    use crate::input::forward::client::{self, EventTime};
    use crate::input::forward::frame::object_len;

    /// A router stage that holds every request's token (as a multiline processor holds a
    /// line until the next one arrives), and refuses records with a `big` field as too
    /// large.
    #[derive(Default)]
    struct Holding {
        tokens: Mutex<Vec<AckToken>>,
        taken: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Ingest for Holding {
        async fn ingest(&self, _: Vec<Record>) -> Result<(), IngestError> {
            unreachable!("the forward input passes its ack tokens")
        }

        async fn ingest_acked(
            &self,
            records: Vec<Record>,
            ack: AckToken,
        ) -> Result<(), IngestError> {
            if records.iter().any(|r| r.contains_key("big")) {
                let e = IngestError::TooLarge {
                    bytes: 2,
                    limit: 1,
                    output: "o".into(),
                };
                ack.fail(e.clone());
                return Err(e);
            }
            let mut taken = self.taken.lock().unwrap();
            taken.extend(records.iter().map(|r| r.fields()["log"].to_string()));
            self.tokens.lock().unwrap().push(ack);
            Ok(())
        }
    }

    impl Holding {
        fn taken(&self) -> usize {
            self.taken.lock().unwrap().len()
        }

        /// Releases every held token, newest first: acks must still go out oldest first.
        fn release_all(&self) {
            let mut tokens = std::mem::take(&mut *self.tokens.lock().unwrap());
            while let Some(t) = tokens.pop() {
                t.release();
            }
        }
    }

    fn request(log: &str, chunk: &str) -> Vec<u8> {
        let mut rec = Vec::new();
        client::encode_record(&mut rec, &[("log", log)]);
        let mut b = Vec::new();
        client::encode_message(
            &mut b,
            "t",
            EventTime {
                secs: 1_700_000_000,
                nanos: 0,
            },
            &rec,
            Some(chunk),
        );
        b
    }

    fn big_request(chunk: &str) -> Vec<u8> {
        let mut rec = Vec::new();
        client::encode_record(&mut rec, &[("big", "x")]);
        let mut b = Vec::new();
        client::encode_message(&mut b, "t", EventTime::now(), &rec, Some(chunk));
        b
    }

    /// Reads acks until `n` arrived or nothing more comes for `quiet`.
    async fn read_acks(s: &mut UnixStream, inbox: &mut Vec<u8>, n: usize) -> Vec<Vec<u8>> {
        let mut acks = Vec::new();
        while acks.len() < n {
            while let Some(len) = object_len(inbox) {
                acks.push(inbox.drain(..len).collect());
            }
            if acks.len() >= n {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(k)) => inbox.extend_from_slice(&buf[..k]),
            }
        }
        acks
    }

    async fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Serves a forward input on a unix socket in `dir`; its counters render from the
    /// returned handle.
    async fn start(
        dir: &Path,
        ingest: Arc<Holding>,
    ) -> (
        PathBuf,
        metrics_exporter_prometheus::PrometheusHandle,
        InputShutdown,
    ) {
        start_with(dir, ingest, MemoryBudget::new(64 << 20), None, KEEP_LINGER).await
    }

    /// [`start`] with this budget, `max_frame_bytes` if given, and `keep_linger` for
    /// [`KEEP_LINGER`].
    async fn start_with(
        dir: &Path,
        ingest: Arc<dyn Ingest>,
        budget: MemoryBudget,
        max_frame_bytes: Option<usize>,
        keep_linger: Duration,
    ) -> (
        PathBuf,
        metrics_exporter_prometheus::PrometheusHandle,
        InputShutdown,
    ) {
        let sock = dir.join("fwd.sock");
        let mut cfg = ForwardConfig {
            name: "fwd".into(),
            listen: vec![ListenAddr::Unix(sock.clone())],
            ..ForwardConfig::default()
        };
        if let Some(n) = max_frame_bytes {
            cfg.max_frame_bytes = n;
        }
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let metrics = metrics::with_local_recorder(&recorder, || InputMetrics::new("fwd"));
        let shutdown = InputShutdown::new();
        spawn_lingering(cfg, ingest, budget, shutdown.clone(), metrics, keep_linger)
            .await
            .unwrap();
        (sock, handle, shutdown)
    }

    /// Acks of pipelined requests go out strictly in request order, only once their tokens
    /// are released; the connection reads on while they are held, up to
    /// `MAX_UNACKED_REQUESTS`, and then stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_requests_pipeline_up_to_the_bound_and_ack_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let holding = Arc::new(Holding::default());
        let (sock, _, shutdown) = start(dir.path(), holding.clone()).await;
        let mut s = UnixStream::connect(&sock).await.unwrap();
        let mut inbox = Vec::new();

        // The bound's worth of requests, written one by one without waiting for acks.
        for i in 0..MAX_UNACKED_REQUESTS {
            s.write_all(&request(&i.to_string(), &format!("c{i}")))
                .await
                .unwrap();
        }
        wait_until("all requests taken while held", || {
            holding.taken() == MAX_UNACKED_REQUESTS
        })
        .await;
        // More requests: the connection stops reading at the bound.
        let extra = 50;
        for i in MAX_UNACKED_REQUESTS..MAX_UNACKED_REQUESTS + extra {
            s.write_all(&request(&i.to_string(), &format!("c{i}")))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(holding.taken(), MAX_UNACKED_REQUESTS, "read past the bound");
        assert!(
            read_acks(&mut s, &mut inbox, 1).await.is_empty(),
            "acked before the tokens were released"
        );

        // Released newest first: acks still come oldest first, then the connection reads
        // on and the rest are taken.
        holding.release_all();
        let total = MAX_UNACKED_REQUESTS + extra;
        wait_until("the rest taken", || holding.taken() == total).await;
        holding.release_all();
        let acks = read_acks(&mut s, &mut inbox, total).await;
        let want: Vec<Vec<u8>> = (0..total)
            .map(|i| client::expected_ack(&format!("c{i}")))
            .collect();
        assert_eq!(acks.len(), total);
        assert!(acks == want, "acks out of order");
        let taken = holding.taken.lock().unwrap().clone();
        let in_order: Vec<String> = (0..total).map(|i| format!("\"{i}\"")).collect();
        assert_eq!(taken, in_order);
        shutdown.stop();
    }

    /// A request refused as too large gets no ack and is counted; requests batched with it
    /// are acked; the connection stays open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_large_is_not_acked_and_keeps_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let holding = Arc::new(Holding::default());
        let (sock, handle, shutdown) = start(dir.path(), holding.clone()).await;
        let mut s = UnixStream::connect(&sock).await.unwrap();
        let mut inbox = Vec::new();
        // One write: the three requests are usually decoded and ingested as one batch.
        let mut three = request("a", "c1");
        three.extend(big_request("c2"));
        three.extend(request("b", "c3"));
        s.write_all(&three).await.unwrap();
        wait_until("neighbours taken", || holding.taken() == 2).await;
        holding.release_all();
        let acks = read_acks(&mut s, &mut inbox, 2).await;
        assert_eq!(
            acks,
            vec![client::expected_ack("c1"), client::expected_ack("c3")]
        );
        // Still open.
        s.write_all(&request("c", "c4")).await.unwrap();
        wait_until("next request taken", || holding.taken() == 3).await;
        holding.release_all();
        assert_eq!(
            read_acks(&mut s, &mut inbox, 1).await,
            vec![client::expected_ack("c4")]
        );
        let text = handle.render();
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("firelane_input_errors_total") && l.contains("kind=\"too_large\"")
            })
            .unwrap_or_else(|| panic!("no too_large counter in\n{text}"));
        assert!(line.ends_with(" 1"), "{line}");
        shutdown.stop();
    }

    /// A router stage that settles every request at once and counts its records.
    #[derive(Default)]
    struct Passing(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl Ingest for Passing {
        async fn ingest(&self, _: Vec<Record>) -> Result<(), IngestError> {
            unreachable!("the forward input passes its ack tokens")
        }

        async fn ingest_acked(
            &self,
            records: Vec<Record>,
            ack: AckToken,
        ) -> Result<(), IngestError> {
            self.0
                .fetch_add(records.len(), std::sync::atomic::Ordering::Relaxed);
            ack.release();
            Ok(())
        }
    }

    /// A request of `n` records of ~1 KiB each, with a chunk: well beyond
    /// `FREE_READ_BUFFER` at 200, so reading it takes a large-request slot.
    fn large_request(n: usize, chunk: &str) -> Vec<u8> {
        let mut rec = Vec::new();
        client::encode_record(&mut rec, &[("log", &"x".repeat(1000))]);
        let entries: Vec<client::Entry<'_>> = (0..n)
            .map(|_| client::Entry {
                time: EventTime::now(),
                record: &rec,
            })
            .collect();
        let mut b = Vec::new();
        client::encode_forward(&mut b, "t", &entries, Some(chunk));
        b
    }

    /// Sends a large request and waits for its ack.
    async fn send_acked(s: &mut UnixStream, inbox: &mut Vec<u8>, chunk: &str) {
        s.write_all(&large_request(200, chunk)).await.unwrap();
        assert_eq!(
            read_acks(s, inbox, 1).await,
            vec![client::expected_ack(chunk)],
            "no ack for {chunk}"
        );
    }

    /// A forward input with exactly one large-request slot (8 MiB / (3 × 4 MiB) rounds to
    /// none, so one), passing every request on at once, and `keep_linger`.
    async fn one_slot(
        dir: &Path,
        keep_linger: Duration,
    ) -> (PathBuf, Arc<Passing>, MemoryBudget, InputShutdown) {
        let passing = Arc::new(Passing::default());
        let budget = MemoryBudget::new(8 << 20);
        let (sock, _, shutdown) = start_with(
            dir,
            passing.clone(),
            budget.clone(),
            Some(4 << 20),
            keep_linger,
        )
        .await;
        (sock, passing, budget, shutdown)
    }

    /// The read buffer kept after an acknowledged request (with its large-request slot, the
    /// only one here) is given back when the client goes quiet: the budget is whole again,
    /// and another connection gets the slot. The quiet one's next request is still read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_buffer_kept_for_acks_is_given_back_when_the_client_goes_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, passing, budget, shutdown) = one_slot(dir.path(), KEEP_LINGER).await;
        let mut a = UnixStream::connect(&sock).await.unwrap();
        let mut a_inbox = Vec::new();
        for i in 0..3 {
            send_acked(&mut a, &mut a_inbox, &format!("a{i}")).await;
        }
        wait_until("the quiet client's buffer given back", || {
            budget.used() == 0
        })
        .await;

        let mut b = UnixStream::connect(&sock).await.unwrap();
        let mut b_inbox = Vec::new();
        send_acked(&mut b, &mut b_inbox, "b0").await;
        send_acked(&mut a, &mut a_inbox, "a3").await;
        assert_eq!(
            passing.0.load(std::sync::atomic::Ordering::Relaxed),
            5 * 200
        );
        wait_until("every buffer given back", || budget.used() == 0).await;
        shutdown.stop();
    }

    /// A client sending its next request as soon as the last is acked keeps its read
    /// buffer (counted) and slot, but only while no other connection waits for one: another
    /// client's large request is read while the first goes on sending. The linger is an
    /// hour here, so only the waiting count can give the slot up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_acked_client_does_not_keep_the_slot_from_others() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _, budget, shutdown) = one_slot(dir.path(), Duration::from_secs(3600)).await;
        let b_acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut a = UnixStream::connect(&sock).await.unwrap();
        let mut a_inbox = Vec::new();
        send_acked(&mut a, &mut a_inbox, "a-first").await;
        // Kept, and counted: the request's ~200 KB buffer, no less.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            budget.used() >= 200 * 1000,
            "kept buffer not counted: {} bytes used",
            budget.used()
        );
        let b_task = {
            let sock = sock.clone();
            let b_acked = b_acked.clone();
            tokio::spawn(async move {
                let mut b = UnixStream::connect(&sock).await.unwrap();
                let mut b_inbox = Vec::new();
                send_acked(&mut b, &mut b_inbox, "b0").await;
                b_acked.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut sent = 0;
        while !b_acked.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(sent < 2000, "the other client never got the slot");
            send_acked(&mut a, &mut a_inbox, &format!("a{sent}")).await;
            sent += 1;
        }
        b_task.await.unwrap();
        // The first client's buffer is kept until it closes.
        drop(a);
        wait_until("every buffer given back", || budget.used() == 0).await;
        shutdown.stop();
    }
}
