//! Per-output buffers between the router and an output's delivery loop.
//!
//! Every output has one buffer, in memory or on disk (`buffer = { type, max_size, when_full }`).
//! Inputs push through [`BufferWriter`] (cloned per input) and are acknowledged to their
//! clients only after `push` resolves; the output's delivery loop takes records from the
//! single [`BufferReader`] and releases them with the [`Acker`] once they are delivered or
//! dead-lettered. A record stays in the buffer, counted against `max_size`, until acked,
//! so an output that cannot deliver stops the inputs (`block`) or sheds with a count
//! (`drop_newest`) instead of growing.
//!
//! Disk buffers (see [`disk`]) add at-least-once delivery across crashes: records pushed
//! (and synced per [`FsyncPolicy`]) are replayed after a restart until acked.

pub(crate) mod budget;
pub(crate) mod disk;
pub(crate) mod memory;
pub(crate) mod resident;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::event::Record;
use budget::MemoryBudget;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    Memory,
    Disk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// `push` waits until acks free space: inputs stop reading.
    Block,
    /// `push` accepts what fits and reports the rest as dropped.
    DropNewest,
}

/// When disk writes are made durable. Only meaningful for disk buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `push` resolves after `fdatasync`; concurrent pushes share one sync (group commit).
    /// Records acked to clients survive power loss.
    #[default]
    Always,
    /// `push` resolves after `write(2)`; a background `fdatasync` runs every interval.
    /// Survives a process crash (`kill -9`), may lose up to one interval on power loss.
    Interval(Duration),
    /// Never sync; the kernel writes back when it likes. Survives a process crash only.
    Never,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BufferSettings {
    pub kind: BufferKind,
    /// Memory: bytes by `Record::approx_size`. Disk: bytes of the frames of records not
    /// yet acked; the segment files may take up to twice this (acked records that share a
    /// segment with unacked ones, see [`disk::DISK_CAP_FACTOR`]).
    pub max_size: u64,
    pub when_full: WhenFull,
    pub fsync: FsyncPolicy,
    /// `data_dir/buffers/<output name>`; disk only.
    pub dir: PathBuf,
    /// Target size of one disk segment file. Clamped to at most a quarter of `max_size`,
    /// so acks can free space in steps smaller than the buffer.
    pub segment_size: u64,
}

impl BufferSettings {
    pub(crate) const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

    pub(crate) fn memory(max_size: u64, when_full: WhenFull) -> Self {
        BufferSettings {
            kind: BufferKind::Memory,
            max_size,
            when_full,
            fsync: FsyncPolicy::Always,
            dir: PathBuf::new(),
            segment_size: Self::DEFAULT_SEGMENT_SIZE,
        }
    }

    pub(crate) fn disk(dir: impl Into<PathBuf>, max_size: u64, when_full: WhenFull) -> Self {
        BufferSettings {
            kind: BufferKind::Disk,
            max_size,
            when_full,
            fsync: FsyncPolicy::Always,
            dir: dir.into(),
            segment_size: Self::DEFAULT_SEGMENT_SIZE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BufferError {
    #[error("buffer is closed")]
    Closed,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("buffer directory {0} is in use by another firelane process")]
    Locked(PathBuf),
    /// A record this buffer can never store (a disk frame holds at most
    /// [`disk::segment::MAX_PAYLOAD`] bytes; a memory buffer nothing larger than the whole
    /// memory budget). Callers check [`BufferWriter::too_large`]
    /// first, so the pipeline refuses such a record before the ack; reaching this is a
    /// broken contract, and the whole push is refused (nothing of it buffered) rather than
    /// the record silently dropped.
    #[error("record of {bytes} bytes is larger than the buffer can store ({limit} bytes)")]
    TooLarge { bytes: usize, limit: usize },
}

impl BufferError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BufferError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What `open` found on disk. All zero for memory buffers and fresh disk buffers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpenReport {
    /// Records found on disk that the persisted ack state does not mark done (below its
    /// watermark or in a done range); they will be delivered again.
    pub replayed_records: u64,
    /// Frame bytes of those records.
    pub replayed_bytes: u64,
    /// Segment files (or damaged tails of them) moved to `<dir>/quarantine/`.
    pub quarantined_segments: u64,
    pub quarantined_bytes: u64,
    /// The ack file was missing while segments existed, or corrupt: everything on disk is
    /// replayed, so `replayed_records` may include records delivered before.
    pub ack_state_lost: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PushReport {
    pub accepted: usize,
    /// Records not buffered because the buffer was full and `when_full = "drop_newest"`.
    /// The caller counts them in `firelane_output_records_total{result="dropped"}`. (A
    /// record too large to store is an error, [`BufferError::TooLarge`], never a drop.)
    pub dropped: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BufferStats {
    /// Memory: approx bytes of records not yet acked. Disk: frame bytes of records not yet
    /// acked (segment file bytes are `firelane_buffer_disk_bytes`).
    pub bytes: u64,
    /// Records pushed and not yet acked (including those handed to the reader).
    pub records: u64,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub seq: u64,
    pub record: Record,
}

/// Opens the buffer of `output`. Disk: creates the directory, recovers what is there
/// (quarantining damage), and starts the writer thread. Errors only for an unusable
/// directory (cannot create, lock held by another process), never for its contents.
pub(crate) fn open(
    output: &str,
    settings: &BufferSettings,
    budget: MemoryBudget,
) -> Result<(BufferWriter, BufferReader, OpenReport), BufferError> {
    // Present from the start (at 0), so dashboards and alerts (`increase(...) > 0`) see
    // the series before the first replay or quarantine ever happens.
    for name in [
        "firelane_buffer_replayed_records_total",
        "firelane_buffer_quarantined_total",
    ] {
        metrics::counter!(name, "output" => output.to_string()).increment(0);
    }
    match settings.kind {
        BufferKind::Memory => {
            let (w, r) = memory::open(output, settings, budget);
            Ok((
                BufferWriter(WriterImpl::Memory(w)),
                BufferReader(ReaderImpl::Memory(r)),
                OpenReport::default(),
            ))
        }
        BufferKind::Disk => {
            let (w, r, report) = disk::open(output, settings)?;
            Ok((
                BufferWriter(WriterImpl::Disk(w)),
                BufferReader(ReaderImpl::Disk(r)),
                report,
            ))
        }
    }
}

// === impl BufferWriter ===

/// Push side; clone one per input. All clones share the buffer.
#[derive(Clone)]
pub struct BufferWriter(WriterImpl);

#[derive(Clone)]
enum WriterImpl {
    Memory(memory::Writer),
    Disk(disk::Writer),
}

impl BufferWriter {
    /// Resolves once the records are accepted (disk: written and synced per the fsync
    /// policy), so the caller may acknowledge its client. `Block`: waits while full.
    /// `DropNewest`: keeps what fits, in order, and reports the rest as dropped.
    /// Cancel-safe: dropping the future may leave a prefix buffered, never corrupts state.
    pub(crate) async fn push(&self, records: Vec<Record>) -> Result<PushReport, BufferError> {
        match &self.0 {
            WriterImpl::Memory(w) => w.push(records).await,
            WriterImpl::Disk(w) => w.push(records).await,
        }
    }

    /// [`push`](Self::push) that also says what was taken when it fails: a push goes in
    /// chunks as space allows, so the buffer may close (shutdown) or a disk write fail
    /// after some records were accepted. Those stay buffered and will be delivered; the
    /// report counts them (accepted) and the records dropped so far, for accounting.
    /// A memory buffer draws the records' memory from `credit` first (see
    /// [`budget::Credit`]); a disk buffer holds none and leaves it.
    pub(crate) async fn push_counted(
        &self,
        records: Vec<Record>,
        credit: &budget::Credit,
    ) -> (PushReport, Result<(), BufferError>) {
        let mut report = PushReport::default();
        let result = match &self.0 {
            WriterImpl::Memory(w) => w.push_into(records, &mut report, credit).await,
            WriterImpl::Disk(w) => w.push_into(records, &mut report).await,
        };
        (report, result)
    }

    /// No more pushes (they fail with `Closed`, waiting ones too); the reader drains what
    /// is buffered and then gets `None`.
    pub(crate) fn close(&self) {
        match &self.0 {
            WriterImpl::Memory(w) => w.close(),
            WriterImpl::Disk(w) => w.close(),
        }
    }

    pub(crate) fn stats(&self) -> BufferStats {
        match &self.0 {
            WriterImpl::Memory(w) => w.stats(),
            WriterImpl::Disk(w) => w.stats(),
        }
    }

    /// Disk buffers: the segment files' usage (see [`disk::DiskUsage`]). `None` for
    /// memory buffers, which free each record when it is acked.
    pub(crate) fn disk_usage(&self) -> Option<disk::DiskUsage> {
        match &self.0 {
            WriterImpl::Memory(_) => None,
            WriterImpl::Disk(w) => Some(w.usage()),
        }
    }

    /// `Some((bytes, limit))` when this buffer can never store `record`, so that inputs
    /// refuse it before their ack instead of the buffer dropping it after. A memory buffer
    /// takes any record that fits in the whole memory budget (one larger than `max_size`
    /// passes once the buffer is empty); a disk buffer frames records of at most
    /// [`disk::segment::MAX_PAYLOAD`] encoded bytes.
    pub(crate) fn too_large(&self, record: &Record) -> Option<(usize, usize)> {
        match &self.0 {
            WriterImpl::Memory(w) => w.too_large(record),
            WriterImpl::Disk(_) => {
                let limit = disk::segment::MAX_PAYLOAD;
                // JSON escaping can grow a string at most sixfold (`\u0000`): below that
                // the exact (costly) encoding is not needed.
                if record.approx_size().saturating_mul(6) <= limit {
                    return None;
                }
                let mut encoded = Vec::new();
                disk::codec::encode(record, &mut encoded);
                (encoded.len() > limit).then_some((encoded.len(), limit))
            }
        }
    }
}

// === impl BufferReader ===

/// Read side; exactly one, owned by the output's delivery loop.
pub struct BufferReader(ReaderImpl);

enum ReaderImpl {
    Memory(memory::Reader),
    Disk(disk::Reader),
}

impl BufferReader {
    /// Waits for at least one record and returns up to `max_records` (disk: also at most
    /// about 4 MiB of payload per call). `None` once closed and drained. Cancel-safe:
    /// records are never lost when the future is dropped (use it in `select!`).
    pub(crate) async fn recv(&mut self, max_records: usize) -> Option<Vec<Entry>> {
        match &mut self.0 {
            ReaderImpl::Memory(r) => r.recv(max_records).await,
            ReaderImpl::Disk(r) => r.recv(max_records).await,
        }
    }

    /// Disk buffers: records pushed and not yet acked, which a restart delivers again
    /// (the shutdown summary's "kept for next start"). `None` for memory buffers, whose
    /// records end with the process.
    pub(crate) fn disk_records(&self) -> Option<u64> {
        match &self.0 {
            ReaderImpl::Memory(_) => None,
            ReaderImpl::Disk(r) => Some(r.unacked_records()),
        }
    }

    pub(crate) fn acker(&self) -> Acker {
        match &self.0 {
            ReaderImpl::Memory(r) => Acker(AckerImpl::Memory(r.acker())),
            ReaderImpl::Disk(r) => Acker(AckerImpl::Disk(r.acker())),
        }
    }
}

// === impl Acker ===

/// Releases records for good: delivered, or finally dropped / dead-lettered. Acks may come
/// in any order and from any thread; acking a seq twice is harmless.
#[derive(Clone)]
pub(crate) struct Acker(AckerImpl);

#[derive(Clone)]
enum AckerImpl {
    Memory(memory::Acker),
    Disk(disk::Acker),
}

impl Acker {
    pub(crate) fn ack(&self, seqs: &[u64]) {
        match &self.0 {
            AckerImpl::Memory(a) => a.ack(seqs),
            AckerImpl::Disk(a) => a.ack(seqs),
        }
    }
}

/// Gauges for one buffer, updated by the buffer itself.
#[derive(Clone)]
pub(crate) struct Gauges {
    bytes: metrics::Gauge,
    records: metrics::Gauge,
}

impl Gauges {
    pub(crate) fn new(output: &str) -> Self {
        let output = output.to_string();
        Gauges {
            bytes: metrics::gauge!("firelane_buffer_bytes", "output" => output.clone()),
            records: metrics::gauge!("firelane_buffer_records", "output" => output),
        }
    }

    pub(crate) fn set(&self, stats: BufferStats) {
        self.bytes.set(stats.bytes as f64);
        self.records.set(stats.records as f64);
    }
}

// === disk full status ===

/// A disk buffer whose last write failed for lack of space (`ENOSPC` or `EDQUOT`). Pushes
/// to it fail with that error (inputs answer "disk full", `kind="disk_full"`) until a write
/// succeeds again or deliveries free segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskFull {
    pub output: String,
    /// The buffer directory.
    pub dir: PathBuf,
    /// When the buffer first found the disk full (this episode).
    pub since: SystemTime,
    /// The OS error, e.g. "No space left on device (os error 28)".
    pub error: String,
}

/// Process-wide, so `/health` and `/ready` can report it without a handle on each buffer.
/// Keyed by output name and directory (tests open several buffers in one process).
static DISK_FULL: parking_lot::Mutex<BTreeMap<(String, PathBuf), DiskFull>> =
    parking_lot::Mutex::new(BTreeMap::new());

/// Disk buffers that are full right now, by output name.
pub(crate) fn disk_full() -> Vec<DiskFull> {
    DISK_FULL.lock().values().cloned().collect()
}

pub(crate) fn set_disk_full(output: &str, dir: &Path, error: &str) {
    DISK_FULL
        .lock()
        .entry((output.to_string(), dir.to_path_buf()))
        .or_insert_with(|| DiskFull {
            output: output.to_string(),
            dir: dir.to_path_buf(),
            since: SystemTime::now(),
            error: error.to_string(),
        });
}

pub(crate) fn clear_disk_full(output: &str, dir: &Path) {
    DISK_FULL
        .lock()
        .remove(&(output.to_string(), dir.to_path_buf()));
}
