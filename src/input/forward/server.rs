//! Listeners and per-connection tasks.

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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::decode::{self, DecodeError, Limits, Stats};
use super::frame::{FrameError, Split, Splitter};
use super::handshake;
use super::metrics::{ErrorKind, InputMetrics};
use super::{ForwardConfig, ListenAddr};
use crate::buffer::budget::{MemoryBudget, Reservation};
use crate::event::Record;
use crate::input::Ingest;

/// Read granularity; also the buffer a connection keeps between small requests.
const READ_CHUNK: usize = 32 * 1024;
/// Requests at least this big are decoded on the blocking pool, so one big frame does not
/// stall the other connections sharing the runtime thread.
const BLOCKING_DECODE: usize = 256 * 1024;
/// A partial request at least this big reserves memory before more of it is read.
const BIG_FRAME: usize = 1 << 20;
/// Several small requests already in the read buffer are ingested together, up to this.
const MAX_BATCH_RECORDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// A client that stops reading acks (or never answers HELO) is cut off after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PING_BYTES: usize = 64 * 1024;
/// Ratio assumed between the decompressed and wire size when reserving memory ahead of
/// inflating; the reservation is corrected once the real size is known.
const ASSUMED_COMPRESSION_RATIO: usize = 10;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Binds every listener of `cfg`, then serves them until `shutdown` is cancelled.
///
/// Returns once all sockets are bound (so the caller can report readiness), or the first bind
/// error with the address in its context. Each returned task is one listener; it finishes
/// after shutdown once every connection it accepted has drained (read to EOF or idle for
/// `drain_idle`) and its records were ingested, so awaiting all of them means "input done".
pub async fn spawn(
    cfg: ForwardConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let metrics = InputMetrics::new(&cfg.name);
    spawn_with_metrics(cfg, ingest, budget, shutdown, metrics).await
}

/// [`spawn`] with counters the caller registered (tests install a local recorder).
pub(crate) async fn spawn_with_metrics(
    cfg: ForwardConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: CancellationToken,
    metrics: InputMetrics,
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
    let shared = Arc::new(Shared {
        limits: Limits {
            max_decompressed_bytes: cfg.max_decompressed_bytes,
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

async fn accept_loop(listener: Listener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = accept(&listener) => r,
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
                tracker.spawn(conn.run());
            }
            Ok(Accepted::Unix(stream)) => {
                let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
                let peer = format!("{}#{id}", listener.describe());
                let conn = Conn::new(stream, peer, shared.clone(), shutdown.clone());
                tracker.spawn(conn.run());
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
    wire_bytes: u64,
    /// Memory the batch needs: frames plus decoded records.
    mem_bytes: usize,
}

impl Batch {
    fn is_full(&self) -> bool {
        self.records.len() >= MAX_BATCH_RECORDS || self.mem_bytes >= MAX_BATCH_BYTES
    }
}

struct Conn<S> {
    stream: S,
    peer: String,
    sh: Arc<Shared>,
    shutdown: CancellationToken,
    draining: bool,
    buf: BytesMut,
    /// Budget held while reading and decoding the current batch (and a big partial frame);
    /// released when the batch is handed to `ingest`.
    held: Reservation,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    fn new(stream: S, peer: String, sh: Arc<Shared>, shutdown: CancellationToken) -> Self {
        Conn {
            stream,
            peer,
            sh,
            shutdown,
            draining: false,
            buf: BytesMut::with_capacity(READ_CHUNK),
            held: Reservation::empty(),
        }
    }

    async fn run(mut self) {
        tracing::debug!(peer = %self.peer, "forward connection opened");
        let result = match self.sh.cfg.shared_key.clone() {
            Some(key) => match self.handshake(&key).await {
                Ok(()) => self.serve().await,
                Err(e) => Err(e),
            },
            None => self.serve().await,
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
        let _ = self.stream.shutdown().await;
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
        loop {
            let mut batch = Batch::default();
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
            self.commit(batch).await?;
            if let Some(e) = fatal {
                return Err(e);
            }
            if more_buffered {
                continue;
            }
            if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                // Give back what one big request needed.
                self.buf = BytesMut::with_capacity(READ_CHUNK);
            }
            let frame_min = splitter.min_len();
            if frame_min >= BIG_FRAME {
                ensure(&mut self.held, &self.sh.budget, frame_min).await;
            }
            let spare = self.buf.capacity() - self.buf.len();
            if spare < READ_CHUNK / 2 {
                self.buf
                    .reserve(READ_CHUNK.max(frame_min.saturating_sub(self.buf.len())));
            }
            if !self.fill().await? {
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

    /// Reads more bytes. `Ok(false)` on EOF, or when draining and the client went quiet.
    async fn fill(&mut self) -> Result<bool, DecodeError> {
        loop {
            if self.draining {
                return match tokio::time::timeout(
                    self.sh.cfg.drain_idle,
                    self.stream.read_buf(&mut self.buf),
                )
                .await
                {
                    Err(_) => Ok(false),
                    Ok(r) => r.map(|n| n > 0).map_err(io_error),
                };
            }
            tokio::select! {
                r = self.stream.read_buf(&mut self.buf) => return r.map(|n| n > 0).map_err(io_error),
                _ = self.shutdown.cancelled() => self.draining = true,
            }
        }
    }

    async fn decode_into(&mut self, batch: &mut Batch, frame: Bytes) -> Result<(), DecodeError> {
        let wire = frame.len();
        let estimate = if decode::is_compressed(&frame) {
            wire + (wire * ASSUMED_COMPRESSION_RATIO).min(self.sh.limits.max_decompressed_bytes) * 2
        } else {
            wire * 3
        };
        ensure(&mut self.held, &self.sh.budget, batch.mem_bytes + estimate).await;

        let limits = self.sh.limits;
        let decoded = if wire >= BLOCKING_DECODE {
            tokio::task::spawn_blocking(move || decode_frame(frame, limits))
                .await
                .map_err(|e| err(ErrorKind::Io, format!("decoder task failed: {e}")))?
        } else {
            decode_frame(frame, limits)
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
        let skipped = &decoded.stats;
        for (kind, n) in [
            (ErrorKind::BadTime, skipped.bad_times),
            (ErrorKind::BadRecord, skipped.bad_records),
            (ErrorKind::BadEntry, skipped.bad_entries),
        ] {
            if n > 0 {
                m.error(kind, n);
                crate::warn_limited!(
                    kind.log_key(),
                    "forward input `{}`: skipped {n} entr{} ({kind}) from {}, kept the rest of the request: {}",
                    self.sh.cfg.name,
                    if n == 1 { "y" } else { "ies" },
                    self.peer,
                    skipped.skip_reason.as_deref().unwrap_or("unusable entry")
                );
            }
        }
        batch.mem_bytes += wire
            + decoded
                .records
                .iter()
                .map(Record::approx_size)
                .sum::<usize>();
        batch.records.extend(decoded.records);
        ensure(&mut self.held, &self.sh.budget, batch.mem_bytes).await;

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
        if let Some(range) = request.chunk {
            // `{"ack": <chunk exactly as received>}`
            batch
                .acks
                .extend_from_slice(&[0x81, 0xa3, b'a', b'c', b'k']);
            batch.acks.extend_from_slice(&decoded.frame[range]);
        }
        Ok(())
    }

    /// Ingests the batch, then sends its acks. Records of a request that failed half way
    /// are ingested too, but that request is not acked.
    async fn commit(&mut self, batch: Batch) -> Result<(), DecodeError> {
        let n = batch.records.len() as u64;
        // The buffers reserve budget for these records themselves while `ingest` waits.
        // Holding the decoding reservation across that wait would count the batch twice,
        // and a batch needing more than half of `memory_limit` would wait forever for
        // budget that only it holds. The connection reads nothing more until ingest
        // returns, so at most this one batch per connection is in memory uncounted.
        self.held = Reservation::empty();
        if n > 0 {
            if let Err(e) = self.sh.ingest.ingest(batch.records).await {
                return Err(err(
                    ErrorKind::IngestFailed,
                    format!("{n} record(s) not accepted: {e}"),
                ));
            }
            self.sh.metrics.records(n);
        }
        self.sh.metrics.bytes(batch.wire_bytes);
        if !batch.acks.is_empty() {
            self.write(&batch.acks).await?;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(bytes)).await {
            Ok(r) => r.map_err(io_error),
            Err(_) => Err(err(ErrorKind::Io, "client does not read its acks")),
        }
    }
}

/// Output of decoding one request; `frame` is kept for echoing the chunk.
struct Decoded {
    records: Vec<Record>,
    stats: Stats,
    result: Result<decode::Request, DecodeError>,
    frame: Bytes,
}

fn decode_frame(frame: Bytes, limits: Limits) -> Decoded {
    let mut records = Vec::new();
    let mut stats = Stats::default();
    let result = decode::decode_request(
        &frame,
        &limits,
        crate::event::now_ns(),
        &mut records,
        &mut stats,
    );
    Decoded {
        records,
        stats,
        result,
        frame,
    }
}

/// Tops `held` up to `bytes`. Never waits while holding a part: two connections each
/// holding half the budget and waiting for more would block each other forever.
async fn ensure(held: &mut Reservation, budget: &MemoryBudget, bytes: usize) {
    if held.bytes() >= bytes {
        return;
    }
    if let Some(extra) = budget.try_acquire(bytes - held.bytes()) {
        held.merge(extra);
        return;
    }
    *held = Reservation::empty();
    *held = budget.acquire(bytes).await;
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
