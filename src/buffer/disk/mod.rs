//! Disk buffer: an append-only log of checksummed segments, one writer thread per buffer.
//!
//! Layout under `dir` (`data_dir/buffers/<output>`):
//! - `<16-digit first seq>.seg`: records `first_seq, first_seq + 1, …` (see [`segment`]);
//! - `acks`: the persisted ack state: a low watermark (every seq below it is delivered) and
//!   the done ranges above it (see [`ledger`]); fixed size, overwritten in place;
//! - `lock`: `flock`ed while open, so two processes never share a buffer;
//! - `quarantine/`: damaged files and tails found at start-up, for a human to look at.
//!
//! Write path: `push` encodes frames on the caller's task, reserves space against `max_size`
//! and queues a request. The writer thread takes every queued request at once, writes them,
//! and issues one `fdatasync` for the whole group (with `FsyncPolicy::Always`) before
//! completing them: many concurrent small pushes share one sync.
//!
//! Read path: the reader streams frames straight from the segment files, at most one
//! `recv` worth (≤ `max_records`, ≤ [`READ_MAX_BYTES`]) at a time, so a buffer holding
//! gigabytes costs a few MiB of RAM. It only reads records the writer has committed.
//!
//! Acks mark seqs done in the ledger; the ack state is persisted at most every
//! [`PERSIST_EVERY`] (sooner when pushers wait for space or the disk is full) and on
//! shutdown, and every segment whose records are all done in the persisted state is
//! deleted, also above the watermark (one slow batch holding a low seq must not keep the
//! segments behind it). Invariant: every record that is not done in the persisted state is
//! still on disk, so a crash can duplicate but never lose.
//!
//! Space: `max_size` bounds the bytes of records not yet acked (a buffer is full only of
//! undelivered data). Segment files also hold acked records that share a segment with
//! unacked ones; that garbage is bounded by letting the files grow to at most
//! [`DISK_CAP_FACTOR`] × `max_size`.
//!
//! Full filesystem: a write that fails with `ENOSPC`/`EDQUOT` fails its pushes with that
//! error (inputs answer "disk full"), flags the buffer (see [`super::disk_full`]) and makes
//! the writer persist and free delivered segments at once. Persisting never needs a new
//! block (the ack file is preallocated and overwritten in place), so deliveries free space
//! and the buffer recovers without a restart.
//!
//! Start-up never fails because of what is in the directory: torn or corrupt frames end a
//! segment's valid prefix, the rest is moved to `quarantine/` and counted; a corrupt ack
//! file means "replay everything"; unknown files are left alone with a warning.

pub(crate) mod codec;
pub(crate) mod ledger;
pub(crate) mod segment;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use tokio::sync::{Notify, oneshot};

use super::{
    BufferError, BufferSettings, BufferStats, Entry, FsyncPolicy, Gauges, OpenReport, PushReport,
    WhenFull,
};
use crate::event::Record;
use ledger::{AckFile, AckState, Ledger};

/// Upper bound on payload bytes one `recv` reads from disk.
pub(crate) const READ_MAX_BYTES: usize = 4 << 20;
/// How often an advanced watermark is written to the ack file.
pub(crate) const PERSIST_EVERY: Duration = Duration::from_millis(100);
/// Damaged files kept in `quarantine/`; older ones are deleted so a crash loop cannot
/// fill the disk with evidence.
const QUARANTINE_KEEP: usize = 32;
const QUARANTINE_DIR: &str = "quarantine";
const LOCK_FILE: &str = "lock";
const MIN_SEGMENT_SIZE: u64 = 4096;
const READ_BUF: usize = 64 << 10;
/// Segment files may use up to this many times `max_size`: the acked records sharing
/// segments with unacked ones (see the module doc).
pub(crate) const DISK_CAP_FACTOR: u64 = 2;

#[derive(Clone, Copy, Debug)]
struct SegMeta {
    /// One past the last committed seq in this segment (== first seq when empty).
    end: u64,
    /// File bytes: header plus committed frames.
    bytes: u64,
    /// Committed records of this segment that are done (acked or skipped).
    acked: u64,
}

/// Frame bytes of the records of segment `first` that are not done. Records of a segment
/// are counted at its average size: exact when none or all are done, close in between
/// (keeping every record's size would cost memory per record).
fn seg_live(first: u64, m: &SegMeta) -> u64 {
    let records = m.end.saturating_sub(first);
    if records == 0 {
        return 0;
    }
    let payload = m.bytes.saturating_sub(segment::HEADER_LEN);
    let live = records - m.acked.min(records);
    (u128::from(payload) * u128::from(live) / u128::from(records)) as u64
}

struct WriteReq {
    frames: Vec<u8>,
    count: u64,
    done: oneshot::Sender<Result<(), BufferError>>,
}

struct State {
    requests: Vec<WriteReq>,
    /// The writer thread holds requests it took from `requests` and has not completed.
    writing: bool,
    closed: bool,
    shutdown: bool,
    /// Bytes of segment files.
    disk_bytes: u64,
    /// Frame bytes of committed records not yet done: what counts against `max_size`.
    live_bytes: u64,
    /// The last write failed for lack of space (`ENOSPC`/`EDQUOT`); cleared by a successful
    /// write or by deleting delivered segments.
    disk_full: bool,
    /// Bytes admitted by `push` and not yet written.
    reserved: u64,
    space_waiters: usize,
    segments: BTreeMap<u64, SegMeta>,
    ledger: Ledger,
    /// Committed records not yet acked.
    live_records: u64,
    /// The reader's position: seqs below it have been handed out (or skipped).
    read_seq: u64,
}

struct Core {
    output: String,
    dir: PathBuf,
    max_size: u64,
    /// Bound on `disk_bytes` (see [`DISK_CAP_FACTOR`]).
    disk_cap: u64,
    segment_size: u64,
    when_full: WhenFull,
    fsync: FsyncPolicy,
    state: Mutex<State>,
    wake_writer: Condvar,
    /// Wakes the reader (`notify_one` keeps a permit).
    data: Notify,
    /// Wakes pushers waiting for space.
    space: Notify,
    gauges: Gauges,
    disk_bytes_gauge: metrics::Gauge,
    disk_full_gauge: metrics::Gauge,
    syncs: AtomicU64,
    _lock: File,
}

impl Core {
    fn seg_path(&self, first_seq: u64) -> PathBuf {
        self.dir.join(segment::file_name(first_seq))
    }

    fn publish(&self, st: &State) {
        self.gauges.set(BufferStats {
            bytes: st.live_bytes,
            records: st.live_records,
        });
        self.disk_bytes_gauge.set(st.disk_bytes as f64);
    }
}

impl State {
    /// Marks `[start, end)` done in the ledger and takes the newly done committed records
    /// out of the live counts of their segments. Seqs outside every segment (gaps) are
    /// marked too. Returns how many committed records became done.
    fn mark_done(&mut self, start: u64, end: u64) -> u64 {
        let mut total = 0;
        let mut at = start;
        while at < end {
            let containing = self
                .segments
                .range(..=at)
                .next_back()
                .filter(|(_, m)| m.end > at)
                .map(|(&f, m)| (f, m.end));
            let seg = containing.or_else(|| {
                self.segments
                    .range(at..end)
                    .find(|(f, m)| m.end > **f)
                    .map(|(&f, m)| (f, m.end))
            });
            match seg {
                Some((first, seg_end)) if first <= at => {
                    let to = end.min(seg_end);
                    let newly = self.ledger.mark(at, to);
                    if newly > 0
                        && let Some(m) = self.segments.get_mut(&first)
                    {
                        let before = seg_live(first, m);
                        m.acked += newly;
                        let after = seg_live(first, m);
                        self.live_bytes = self.live_bytes.saturating_sub(before - after);
                        total += newly;
                    }
                    at = to;
                }
                Some((first, _)) => {
                    self.ledger.mark(at, first);
                    at = first;
                }
                None => {
                    self.ledger.mark(at, end);
                    at = end;
                }
            }
        }
        self.live_records = self.live_records.saturating_sub(total);
        total
    }

    /// Takes segment `first` out of the accounting (its file is about to be deleted).
    fn remove_segment(&mut self, first: u64) {
        if let Some(m) = self.segments.remove(&first) {
            self.disk_bytes = self.disk_bytes.saturating_sub(m.bytes);
            self.live_bytes = self.live_bytes.saturating_sub(seg_live(first, &m));
        }
    }
}

/// Owned by every handle; the last one to go stops the writer thread, which persists the
/// watermark one last time.
struct Guard {
    core: Arc<Core>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.core.state.lock().shutdown = true;
        self.core.wake_writer.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        super::clear_disk_full(&self.core.output, &self.core.dir);
    }
}

// === open ===

pub(super) fn open(
    output: &str,
    settings: &BufferSettings,
) -> Result<(Writer, Reader, OpenReport), BufferError> {
    let dir = settings.dir.clone();
    fs::create_dir_all(dir.join(QUARANTINE_DIR)).map_err(|e| {
        BufferError::io(
            format!("cannot create buffer directory {}", dir.display()),
            e,
        )
    })?;
    let lock = lock_dir(&dir)?;
    let (recovered, mut report) = recover(output, &dir);

    let max_size = settings.max_size.max(1);
    let segment_size = settings
        .segment_size
        .min(max_size / 4)
        .max(MIN_SEGMENT_SIZE);
    let disk_bytes = recovered.segments.values().map(|s| s.bytes).sum();
    let live_bytes = recovered
        .segments
        .iter()
        .map(|(&first, m)| seg_live(first, m))
        .sum();
    report.replayed_records = recovered.live_records;
    // Written in place from now on; created (needing 32 KiB) only now, after recovery
    // deleted what was delivered. If that fails, the writer retries on every persist.
    let snapshot = recovered.ledger.snapshot(ledger::MAX_PERSISTED_RANGES);
    let ack_file = match AckFile::open(&dir, recovered.loaded.as_ref(), &snapshot) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(output, dir = %dir.display(), error = %e,
                "disk buffer: cannot create the ack file; will retry (deliveries are not recorded until it exists)");
            None
        }
    };
    let persisted = match (&ack_file, &recovered.loaded) {
        (Some(_), Some(l)) if l.current_layout => l.state.clone(),
        (Some(_), _) => snapshot,
        (None, Some(l)) => l.state.clone(),
        (None, None) => AckState::default(),
    };
    let disk_full_gauge =
        metrics::gauge!("firelane_buffer_disk_full", "output" => output.to_string());
    disk_full_gauge.set(0.0);
    let core = Arc::new(Core {
        output: output.to_string(),
        dir,
        max_size,
        disk_cap: max_size.saturating_mul(DISK_CAP_FACTOR),
        segment_size,
        when_full: settings.when_full,
        fsync: settings.fsync,
        state: Mutex::new(State {
            requests: Vec::new(),
            writing: false,
            closed: false,
            shutdown: false,
            disk_bytes,
            live_bytes,
            disk_full: false,
            reserved: 0,
            space_waiters: 0,
            segments: recovered.segments,
            ledger: recovered.ledger,
            live_records: recovered.live_records,
            read_seq: recovered.start_seq,
        }),
        wake_writer: Condvar::new(),
        data: Notify::new(),
        space: Notify::new(),
        gauges: Gauges::new(output),
        disk_bytes_gauge: metrics::gauge!("firelane_buffer_disk_bytes", "output" => output.to_string()),
        disk_full_gauge,
        syncs: AtomicU64::new(0),
        _lock: lock,
    });
    core.publish(&core.state.lock());

    let mut thread = WriterThread {
        core: core.clone(),
        active: None,
        next_seq: recovered.next_seq,
        unsynced: false,
        dir_dirty: false,
        last_sync: Instant::now(),
        last_persist: Instant::now(),
        persisted_version: core.state.lock().ledger.version(),
        persisted,
        ack_file,
    };
    let handle = std::thread::Builder::new()
        .name(format!("buf-{output}"))
        .spawn(move || thread.run())
        .map_err(|e| BufferError::io("cannot start disk buffer writer thread", e))?;
    let guard = Arc::new(Guard {
        core,
        thread: Mutex::new(Some(handle)),
    });
    let reader = Reader {
        guard: guard.clone(),
        state: Arc::new(Mutex::new(ReadState {
            next_seq: recovered.start_seq,
            cur: None,
            resume: None,
            stash: VecDeque::new(),
            payload: Vec::new(),
        })),
        pending: None,
    };
    Ok((Writer { guard }, reader, report))
}

fn lock_dir(dir: &Path) -> Result<File, BufferError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BufferError::io(format!("cannot open {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(match err.kind() {
            io::ErrorKind::WouldBlock => BufferError::Locked(dir.to_path_buf()),
            _ => BufferError::io(format!("cannot lock {}", path.display()), err),
        });
    }
    Ok(file)
}

struct Recovered {
    segments: BTreeMap<u64, SegMeta>,
    /// What the ack file held (`None`: no file, or unusable).
    loaded: Option<ledger::Loaded>,
    /// The persisted ack state, plus the seqs found missing below the first segment.
    ledger: Ledger,
    /// First seq the reader looks at (everything below is done).
    start_seq: u64,
    /// First seq the writer assigns.
    next_seq: u64,
    live_records: u64,
}

/// Scans the directory, quarantines damage and deletes what the watermark covers.
/// Infallible by design: anything it cannot use is skipped with a warning.
fn recover(output: &str, dir: &Path) -> (Recovered, OpenReport) {
    let mut report = OpenReport::default();
    let loaded = match ledger::load(dir) {
        Ok(l) => l,
        Err(reason) => {
            tracing::warn!(output, dir = %dir.display(), %reason,
                "disk buffer: ack file unusable; replaying every record on disk (expect duplicates)");
            report.ack_state_lost = true;
            None
        }
    };
    let acks = loaded.as_ref().map(|l| l.state.clone()).unwrap_or_default();
    let watermark = acks.watermark;

    let mut names: Vec<(u64, String)> = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(seq) = segment::parse_file_name(&name) {
                    names.push((seq, name));
                } else if name != QUARANTINE_DIR && name != LOCK_FILE && !ledger::is_ack_file(&name)
                {
                    tracing::warn!(output, file = %dir.join(&name).display(), "disk buffer: ignoring unknown file");
                }
            }
        }
        Err(e) => {
            tracing::warn!(output, dir = %dir.display(), error = %e, "disk buffer: cannot list directory")
        }
    }
    names.sort();

    let mut segments = BTreeMap::new();
    let mut prev_end = 0u64;
    for (i, (seq, name)) in names.iter().enumerate() {
        let path = dir.join(name);
        // Wholly below the watermark (the next segment starts at or below it): delivered.
        if names.get(i + 1).is_some_and(|(next, _)| *next <= watermark) {
            remove_file_logged(output, &path);
            continue;
        }
        let scan = match segment::scan(&path) {
            Ok(s) => s,
            Err(segment::HeaderError::Io(e)) => {
                tracing::warn!(output, file = %path.display(), error = %e, "disk buffer: cannot read segment; skipping it");
                continue;
            }
            Err(e) => {
                let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                quarantine_file(output, dir, &path, name, &e.to_string(), bytes, &mut report);
                continue;
            }
        };
        if scan.first_seq != *seq || scan.first_seq < prev_end {
            let reason = format!(
                "header seq {} does not fit file name / previous segment",
                scan.first_seq
            );
            quarantine_file(
                output,
                dir,
                &path,
                name,
                &reason,
                scan.file_len,
                &mut report,
            );
            continue;
        }
        if let Some(damage) = &scan.damage {
            if scan.records == 0 {
                quarantine_file(
                    output,
                    dir,
                    &path,
                    name,
                    &damage.to_string(),
                    scan.file_len,
                    &mut report,
                );
                continue;
            }
            quarantine_tail(
                output,
                dir,
                &path,
                name,
                &scan,
                &damage.to_string(),
                &mut report,
            );
        }
        let end = scan.first_seq + scan.records;
        // Nothing in it, or every record done (below the watermark or in a done range).
        if scan.records == 0 || acks.covers(scan.first_seq, end) {
            remove_file_logged(output, &path);
            continue;
        }
        prev_end = end;
        segments.insert(
            scan.first_seq,
            SegMeta {
                end,
                bytes: scan.valid_len,
                acked: 0,
            },
        );
    }

    if report.quarantined_segments > 0 {
        metrics::counter!("firelane_buffer_quarantined_total", "output" => output.to_string())
            .increment(report.quarantined_segments);
        prune_quarantine(output, &dir.join(QUARANTINE_DIR));
    }
    let start_seq = segments
        .keys()
        .next()
        .map_or(watermark, |&first| first.max(watermark));
    // Never hand out a seq the ack state already calls done: it would be skipped.
    let next_seq = segments
        .values()
        .next_back()
        .map_or(start_seq, |s| s.end.max(start_seq))
        .max(acks.high());
    let mut ledger = Ledger::from_state(&acks);
    // Seqs below the first segment that are not on disk (quarantined) are done for good.
    ledger.mark(watermark, start_seq);
    let mut live_records = 0;
    for (&first, meta) in segments.iter_mut() {
        meta.acked = ledger.done_in(first, meta.end);
        live_records += meta.end - first - meta.acked;
        report.replayed_bytes += seg_live(first, meta);
    }
    if live_records > 0 {
        // Counted so a restart's replay (and the duplicates it may bring) is visible.
        metrics::counter!("firelane_buffer_replayed_records_total", "output" => output.to_string())
            .increment(live_records);
        tracing::info!(
            output,
            records = live_records,
            bytes = report.replayed_bytes,
            from_seq = start_seq,
            "disk buffer: replaying undelivered records"
        );
    }
    (
        Recovered {
            segments,
            loaded,
            ledger,
            start_seq,
            next_seq,
            live_records,
        },
        report,
    )
}

fn remove_file_logged(output: &str, path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(output, file = %path.display(), error = %e, "disk buffer: cannot delete segment");
    }
}

fn quarantine_name(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let qdir = dir.join(QUARANTINE_DIR);
    let mut candidate = qdir.join(format!("{secs:012}-{name}.{suffix}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = qdir.join(format!("{secs:012}-{name}.{n}.{suffix}"));
        n += 1;
    }
    candidate
}

fn quarantine_file(
    output: &str,
    dir: &Path,
    path: &Path,
    name: &str,
    reason: &str,
    bytes: u64,
    report: &mut OpenReport,
) {
    let target = quarantine_name(dir, name, "bad");
    report.quarantined_segments += 1;
    report.quarantined_bytes += bytes;
    match fs::rename(path, &target) {
        Ok(()) => {
            tracing::warn!(output, file = %path.display(), moved_to = %target.display(), bytes, reason,
            "disk buffer: unusable segment quarantined; its records are not replayed")
        }
        Err(e) => {
            tracing::warn!(output, file = %path.display(), error = %e, reason,
                "disk buffer: unusable segment could not be moved to quarantine; deleting it");
            remove_file_logged(output, path);
        }
    }
}

/// Copies the damaged remainder to quarantine, then cuts the segment back to its valid prefix.
fn quarantine_tail(
    output: &str,
    dir: &Path,
    path: &Path,
    name: &str,
    scan: &segment::Scan,
    reason: &str,
    report: &mut OpenReport,
) {
    let target = quarantine_name(dir, name, "tail");
    let tail = scan.file_len.saturating_sub(scan.valid_len);
    report.quarantined_segments += 1;
    report.quarantined_bytes += tail;
    let copied = (|| -> io::Result<()> {
        let mut src = File::open(path)?;
        src.seek(SeekFrom::Start(scan.valid_len))?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)?;
        io::copy(&mut src.take(tail), &mut dst)?;
        dst.sync_data()
    })();
    let cut = (|| -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(scan.valid_len)?;
        f.sync_all()
    })();
    match (&copied, &cut) {
        (Ok(()), Ok(())) => {
            tracing::warn!(output, file = %path.display(), moved_to = %target.display(),
            valid_records = scan.records, quarantined_bytes = tail, reason,
            "disk buffer: damaged segment tail quarantined (torn write or corruption); the valid prefix is kept")
        }
        _ => {
            tracing::warn!(output, file = %path.display(), valid_records = scan.records, quarantined_bytes = tail, reason,
            copy_error = ?copied.err(), truncate_error = ?cut.err(),
            "disk buffer: damaged segment tail found; could not fully quarantine it, only the valid prefix is used")
        }
    }
}

fn prune_quarantine(output: &str, qdir: &Path) {
    let Ok(entries) = fs::read_dir(qdir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    if names.len() <= QUARANTINE_KEEP {
        return;
    }
    names.sort();
    let excess = names.len() - QUARANTINE_KEEP;
    tracing::warn!(
        output,
        deleted = excess,
        keep = QUARANTINE_KEEP,
        "disk buffer: deleting oldest quarantined files"
    );
    for p in &names[..excess] {
        let _ = fs::remove_file(p);
    }
}

// === writer thread ===

struct Active {
    first_seq: u64,
    file: File,
    /// Bytes written (committed or not).
    len: u64,
}

struct WriterThread {
    core: Arc<Core>,
    active: Option<Active>,
    next_seq: u64,
    unsynced: bool,
    dir_dirty: bool,
    last_sync: Instant,
    last_persist: Instant,
    /// The ack state in the ack file, and the ledger version it was taken at.
    persisted: AckState,
    persisted_version: u64,
    /// `None` while it could not be created (full disk at start-up).
    ack_file: Option<AckFile>,
}

/// Whether a write failed because the filesystem (or the user's quota) is full.
fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Requests written to the active segment and waiting for one commit (sync + publish).
#[derive(Default)]
struct Batch {
    reqs: Vec<(oneshot::Sender<Result<(), BufferError>>, u64)>,
    records: u64,
    bytes: u64,
}

impl WriterThread {
    fn tick(&self) -> Duration {
        match self.core.fsync {
            FsyncPolicy::Interval(d) => d.clamp(Duration::from_millis(1), PERSIST_EVERY),
            _ => PERSIST_EVERY,
        }
    }

    fn run(&mut self) {
        loop {
            let (reqs, shutdown) = {
                let mut st = self.core.state.lock();
                if st.requests.is_empty() && !st.shutdown {
                    self.core.wake_writer.wait_for(&mut st, self.tick());
                }
                let reqs = std::mem::take(&mut st.requests);
                st.writing = !reqs.is_empty();
                (reqs, st.shutdown)
            };
            if !reqs.is_empty() {
                if self.core.state.lock().disk_full {
                    // Free what deliveries allow before trying to write again.
                    self.persist_and_collect(shutdown, true);
                }
                self.write_group(reqs);
            }
            self.housekeeping(shutdown);
            if shutdown {
                return;
            }
        }
    }

    fn sync_file(&mut self, which: &File) -> io::Result<()> {
        self.core.syncs.fetch_add(1, Ordering::Relaxed);
        which.sync_data()
    }

    fn write_group(&mut self, reqs: Vec<WriteReq>) {
        let mut batch = Batch::default();
        for req in reqs {
            let needs_roll = self
                .active
                .as_ref()
                .is_none_or(|a| a.len >= self.core.segment_size);
            if needs_roll {
                self.commit(&mut batch);
                if let Err(e) = self.roll() {
                    self.note_write_error(&e);
                    self.release(req.frames.len() as u64);
                    let _ = req
                        .done
                        .send(Err(BufferError::io("cannot create buffer segment", e)));
                    continue;
                }
            }
            let Some(active) = self.active.as_mut() else {
                continue;
            };
            match active.file.write_all(&req.frames) {
                Ok(()) => {
                    active.len += req.frames.len() as u64;
                    self.next_seq += req.count;
                    batch.reqs.push((req.done, req.count));
                    batch.records += req.count;
                    batch.bytes += req.frames.len() as u64;
                }
                Err(e) => {
                    self.note_write_error(&e);
                    crate::warn_limited!(
                        "buffer_write",
                        "disk buffer {}: write failed: {}",
                        self.core.output,
                        e
                    );
                    // Part of the request may be in the file. Bytes in a segment are never
                    // rewritten (the reader may have buffered them), so retire the segment
                    // after committing what precedes, and never reuse the seqs it may hold.
                    self.commit(&mut batch);
                    self.next_seq += req.count;
                    self.active = None;
                    self.release(req.frames.len() as u64);
                    let _ = req
                        .done
                        .send(Err(BufferError::io("cannot write buffer segment", e)));
                }
            }
        }
        self.commit(&mut batch);
        self.core.state.lock().writing = false;
        self.core.data.notify_one();
    }

    /// Flags a full filesystem (health, gauge, log once per episode).
    fn note_write_error(&self, e: &io::Error) {
        if !is_no_space(e) {
            return;
        }
        let mut st = self.core.state.lock();
        if st.disk_full {
            return;
        }
        st.disk_full = true;
        let (live, disk) = (st.live_bytes, st.disk_bytes);
        drop(st);
        tracing::error!(output = %self.core.output, dir = %self.core.dir.display(), error = %e,
            undelivered_bytes = live, segment_bytes = disk,
            "disk buffer: disk full; refusing records until deliveries free space");
        self.core.disk_full_gauge.set(1.0);
        super::set_disk_full(&self.core.output, &self.core.dir, &e.to_string());
        // Free what is already delivered at once rather than at the next tick.
        self.core.wake_writer.notify_one();
    }

    /// Space is back (a write succeeded or delivered segments were deleted).
    fn clear_disk_full(&self, st: &mut State) {
        if st.disk_full {
            st.disk_full = false;
            self.core.disk_full_gauge.set(0.0);
            super::clear_disk_full(&self.core.output, &self.core.dir);
            tracing::info!(output = %self.core.output, "disk buffer: space available again");
        }
    }

    fn release(&self, bytes: u64) {
        let mut st = self.core.state.lock();
        st.reserved = st.reserved.saturating_sub(bytes);
        drop(st);
        self.core.space.notify_waiters();
    }

    /// Makes `batch` durable per the policy, then visible to the reader, then completes it.
    fn commit(&mut self, batch: &mut Batch) {
        if batch.reqs.is_empty() {
            return;
        }
        let batch = std::mem::take(batch);
        let Some(active) = self.active.take() else {
            return;
        };
        let synced = match self.core.fsync {
            FsyncPolicy::Always => {
                let r = self.sync_file(&active.file);
                if r.is_ok() && self.dir_dirty {
                    self.dir_dirty = false;
                    ledger::sync_dir(&self.core.dir).map(|_| ())
                } else {
                    r
                }
            }
            _ => {
                self.unsynced = true;
                Ok(())
            }
        };
        let first = active.first_seq;
        match synced {
            Ok(()) => {
                self.active = Some(active);
                let mut st = self.core.state.lock();
                if let Some(seg) = st.segments.get_mut(&first) {
                    let before = seg_live(first, seg);
                    seg.end += batch.records;
                    seg.bytes += batch.bytes;
                    let after = seg_live(first, seg);
                    st.live_bytes = st.live_bytes - before + after;
                }
                st.disk_bytes += batch.bytes;
                st.reserved = st.reserved.saturating_sub(batch.bytes);
                st.live_records += batch.records;
                self.clear_disk_full(&mut st);
                self.core.publish(&st);
                drop(st);
                self.core.data.notify_one();
                for (done, _) in batch.reqs {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // Delayed allocation (ext4, xfs) can report a full disk only here.
                self.note_write_error(&e);
                // After a failed fsync the page cache state is unknown: retire the segment
                // (its committed prefix stays readable) and start a fresh one.
                tracing::error!(output = %self.core.output, error = %e,
                    "disk buffer: fsync failed; failing the pushes of this group and starting a new segment");
                let mut st = self.core.state.lock();
                st.reserved = st.reserved.saturating_sub(batch.bytes);
                st.disk_bytes += batch.bytes;
                if let Some(seg) = st.segments.get_mut(&first) {
                    seg.bytes += batch.bytes;
                }
                drop(st);
                self.core.space.notify_waiters();
                for (done, _) in batch.reqs {
                    let _ = done.send(Err(BufferError::io(
                        "cannot sync buffer segment",
                        io::Error::new(e.kind(), e.to_string()),
                    )));
                }
            }
        }
    }

    /// Seals the active segment and starts a new one at `next_seq`.
    fn roll(&mut self) -> io::Result<()> {
        if let Some(old) = self.active.take()
            && self.unsynced
            && self.core.fsync != FsyncPolicy::Never
        {
            if let Err(e) = self.sync_file(&old.file) {
                crate::warn_limited!(
                    "buffer_sync",
                    "disk buffer {}: fsync on seal failed: {}",
                    self.core.output,
                    e
                );
            }
            self.unsynced = false;
        }
        let first = self.next_seq;
        let path = self.core.seg_path(first);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let created = file.write_all(&segment::header(first));
        if let Err(e) = created {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.dir_dirty = true;
        let mut st = self.core.state.lock();
        st.segments.insert(
            first,
            SegMeta {
                end: first,
                bytes: segment::HEADER_LEN,
                acked: 0,
            },
        );
        st.disk_bytes += segment::HEADER_LEN;
        drop(st);
        self.active = Some(Active {
            first_seq: first,
            file,
            len: segment::HEADER_LEN,
        });
        Ok(())
    }

    fn housekeeping(&mut self, shutdown: bool) {
        if self.unsynced
            && let FsyncPolicy::Interval(every) = self.core.fsync
            && (shutdown || self.last_sync.elapsed() >= every)
        {
            if let Some(a) = self.active.take() {
                if let Err(e) = self.sync_file(&a.file) {
                    crate::warn_limited!(
                        "buffer_sync",
                        "disk buffer {}: periodic fsync failed: {}",
                        self.core.output,
                        e
                    );
                }
                self.active = Some(a);
            }
            if self.dir_dirty && ledger::sync_dir(&self.core.dir).is_ok() {
                self.dir_dirty = false;
            }
            self.unsynced = false;
            self.last_sync = Instant::now();
        }

        self.persist_and_collect(shutdown, false);
    }

    /// Persists the ack state when it changed (every [`PERSIST_EVERY`]; at once on
    /// shutdown, with `now`, or when pushers wait for space a persist would free), then
    /// deletes the segments it covers.
    fn persist_and_collect(&mut self, shutdown: bool, now: bool) {
        let snapshot = {
            let st = self.core.state.lock();
            let version = st.ledger.version();
            if version == self.persisted_version {
                None
            } else {
                let freeable = || {
                    st.segments
                        .iter()
                        .any(|(&first, m)| m.end > first && m.acked >= m.end - first)
                };
                let urgent = now || st.disk_full || (st.space_waiters > 0 && freeable());
                (shutdown || urgent || self.last_persist.elapsed() >= PERSIST_EVERY)
                    .then(|| (st.ledger.snapshot(ledger::MAX_PERSISTED_RANGES), version))
            }
        };
        if let Some((state, version)) = snapshot {
            // An ack file deleted under us (an operator's `rm` on a full disk): writing on
            // through the open descriptor would record acks in an unlinked inode that a
            // restart never sees. Let go of it; a new one is created below, or, while the
            // disk is too full for that, delivered segments are deleted without it.
            if self.ack_file.as_ref().is_some_and(|f| !f.is_linked()) {
                crate::warn_limited!(
                    "buffer_ack_deleted",
                    "disk buffer {}: the ack file was deleted; creating a new one",
                    self.core.output
                );
                self.ack_file = None;
            }
            let sync = self.core.fsync != FsyncPolicy::Never;
            let written = match self.ack_file.as_mut() {
                Some(f) => f.persist(&state, sync),
                None => AckFile::open(&self.core.dir, None, &state).map(|f| {
                    self.ack_file = Some(f);
                }),
            };
            match written {
                Ok(()) => {
                    self.persisted = state;
                    self.persisted_version = version;
                }
                Err(e) => crate::warn_limited!(
                    "buffer_ack_persist",
                    "disk buffer {}: cannot write ack file: {}",
                    self.core.output,
                    e
                ),
            }
            self.last_persist = Instant::now();
        }
        self.collect_garbage();
    }

    /// Deletes segments whose records are all done in the persisted ack state: below the
    /// watermark or inside a persisted done range.
    ///
    /// Without an ack file (it could not be created, or was deleted: see
    /// [`persist_and_collect`](Self::persist_and_collect)), segments whose records are all
    /// done in memory go too: a restart without an ack file replays everything on disk and
    /// trusts no done range, so deleting delivered records loses nothing; and next_seq
    /// after a restart is never below a surviving ack file's state (see `recover`). Keeping
    /// them until an ack file can be written would keep a full disk full forever: creating
    /// the file needs the very space only their deletion frees.
    fn collect_garbage(&mut self) {
        let active_first = self.active.as_ref().map(|a| a.first_seq);
        let no_ack_file = self.ack_file.is_none();
        let mut doomed = Vec::new();
        {
            let mut st = self.core.state.lock();
            let pressed = st.space_waiters > 0 || st.disk_full;
            let candidates: Vec<(u64, SegMeta)> = st
                .segments
                .iter()
                .filter(|(first, m)| {
                    if no_ack_file {
                        m.end > **first && st.ledger.done_in(**first, m.end) == m.end - **first
                    } else {
                        self.persisted.covers(**first, m.end)
                    }
                })
                .map(|(&first, &m)| (first, m))
                .collect();
            for (first, meta) in candidates {
                if Some(first) == active_first {
                    // The open segment goes only when pushers wait for its space (or the
                    // disk is full) and every record in it is done; the next push starts a
                    // new one.
                    if !pressed || meta.end != self.next_seq || meta.end == first {
                        continue;
                    }
                    self.active = None;
                    self.unsynced = false;
                }
                st.remove_segment(first);
                doomed.push(first);
            }
            if !doomed.is_empty() {
                self.clear_disk_full(&mut st);
                self.core.publish(&st);
            }
        }
        if doomed.is_empty() {
            return;
        }
        for first in doomed {
            remove_file_logged(&self.core.output, &self.core.seg_path(first));
        }
        self.core.space.notify_waiters();
    }
}

// === impl Writer ===

#[derive(Clone)]
pub(crate) struct Writer {
    guard: Arc<Guard>,
}

/// A snapshot of a disk buffer's file usage, for the delivery core's pressure check.
///
/// A segment file is deleted only when every record in it is done, so one record held in
/// an open batch (a quiet partition waiting for its `max_age`) keeps its whole segment,
/// and the segments written after it until they are done as well. `disk_bytes -
/// live_bytes` is that pinned garbage; the files may not grow past `disk_cap`, so a
/// writer would block on garbage. Sealing the open batches that hold records below
/// `oldest_half_end` lets the oldest half of the files go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiskUsage {
    /// Bytes of the segment files (`firelane_buffer_disk_bytes`).
    pub disk_bytes: u64,
    /// The most the files may take: [`DISK_CAP_FACTOR`] × `max_size`.
    pub disk_cap: u64,
    /// Frame bytes of records not yet done (`firelane_buffer_bytes`).
    pub live_bytes: u64,
    /// One past the last seq of the oldest segments that together hold at least half of
    /// `disk_bytes`, never counting the newest (active) segment (0 with fewer than two).
    pub oldest_half_end: u64,
}

/// Keeps `space_waiters` right even when a waiting push is cancelled.
struct Waiting<'a>(&'a Core);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.lock().space_waiters -= 1;
    }
}

impl Writer {
    pub(crate) async fn push(&self, records: Vec<Record>) -> Result<PushReport, BufferError> {
        let mut report = PushReport::default();
        self.push_into(records, &mut report).await.map(|()| report)
    }

    /// [`push`](Self::push), adding what was accepted or dropped to `report` as it goes:
    /// on an error (closed, write failed) after some chunks went in, those stay counted.
    pub(crate) async fn push_into(
        &self,
        records: Vec<Record>,
        report: &mut PushReport,
    ) -> Result<(), BufferError> {
        let core = &*self.guard.core;
        // Frames of all records back to back; `ends[i]` is where record i's frame ends.
        let mut frames = Vec::with_capacity(records.len() * 256);
        let mut ends = Vec::with_capacity(records.len());
        for record in &records {
            if segment::append_frame(&mut frames, |out| codec::encode(record, out)).is_some() {
                ends.push(frames.len());
            } else {
                // Callers refuse such records before their ack (`BufferWriter::too_large`);
                // dropping one here would lose an acknowledged record without a policy.
                // The whole push is refused before anything of it is queued.
                let mut encoded = Vec::new();
                codec::encode(record, &mut encoded);
                if let Some(suppressed) = crate::telemetry::permit("buffer_oversized") {
                    tracing::error!(
                        output = %core.output,
                        bytes = encoded.len(),
                        limit = segment::MAX_PAYLOAD,
                        suppressed,
                        "disk buffer: refused a push holding a record larger than a frame can store; the caller should have refused it before its ack"
                    );
                }
                return Err(BufferError::TooLarge {
                    bytes: encoded.len(),
                    limit: segment::MAX_PAYLOAD,
                });
            }
        }
        drop(records);

        let mut done_bytes = 0usize; // frames before this offset are queued
        let mut done_records = 0usize;
        while done_records < ends.len() {
            let rx = loop {
                let mut notified = pin!(core.space.notified());
                notified.as_mut().enable();
                let waiting = {
                    let mut st = core.state.lock();
                    if st.closed {
                        return Err(BufferError::Closed);
                    }
                    // Only undelivered bytes count against max_size; the files may hold up
                    // to disk_cap (acked records sharing segments with unacked ones).
                    let live = st.live_bytes + st.reserved;
                    let disk = st.disk_bytes + st.reserved;
                    let empty = st.live_records == 0 && st.reserved == 0;
                    let mut n = 0;
                    let mut chunk_end = done_bytes;
                    for &end in &ends[done_records..] {
                        let size = (end - done_bytes) as u64;
                        let fits = live + size <= core.max_size && disk + size <= core.disk_cap;
                        // An empty buffer takes one record whatever its size.
                        let first_of_empty = empty && n == 0;
                        if !fits && !first_of_empty {
                            break;
                        }
                        chunk_end = end;
                        n += 1;
                    }
                    if n > 0 {
                        let bytes = chunk_end - done_bytes;
                        let chunk = if done_bytes == 0 && n == ends.len() {
                            std::mem::take(&mut frames)
                        } else {
                            frames[done_bytes..chunk_end].to_vec()
                        };
                        let (tx, rx) = oneshot::channel();
                        st.reserved += bytes as u64;
                        st.requests.push(WriteReq {
                            frames: chunk,
                            count: n as u64,
                            done: tx,
                        });
                        done_bytes = chunk_end;
                        done_records += n;
                        break (rx, n);
                    }
                    // Full of files, not of undelivered records: say so, a stall with
                    // `firelane_buffer_bytes` far under max_size is otherwise a mystery.
                    // (The delivery core seals the open batches that pin old segments.)
                    let next = ends[done_records] - done_bytes;
                    if live + next as u64 <= core.max_size {
                        crate::warn_limited!(
                            "buffer_disk_cap",
                            "disk buffer {}: segment files at their cap ({} of {} bytes) with only {} bytes undelivered: waiting for delivered segments to be deleted (segments are pinned by records still in open or retried batches)",
                            core.output,
                            st.disk_bytes,
                            core.disk_cap,
                            st.live_bytes
                        );
                    }
                    if core.when_full == WhenFull::DropNewest {
                        report.dropped += ends.len() - done_records;
                        return Ok(());
                    }
                    st.space_waiters += 1;
                    Waiting(core)
                };
                // Acks may already have freed whole segments that wait for the next tick.
                core.wake_writer.notify_one();
                notified.await;
                drop(waiting);
            };
            core.wake_writer.notify_one();
            match rx.0.await {
                Ok(Ok(())) => report.accepted += rx.1,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(BufferError::Closed),
            }
        }
        Ok(())
    }

    pub(crate) fn close(&self) {
        let core = &self.guard.core;
        core.state.lock().closed = true;
        core.data.notify_one();
        core.space.notify_waiters();
        core.wake_writer.notify_one();
    }

    /// `bytes`: frame bytes of records not yet acked (what `max_size` bounds).
    pub(crate) fn stats(&self) -> BufferStats {
        let st = self.guard.core.state.lock();
        BufferStats {
            bytes: st.live_bytes,
            records: st.live_records,
        }
    }

    /// Bytes of the segment files (also `firelane_buffer_disk_bytes`).
    #[cfg(test)]
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.guard.core.state.lock().disk_bytes
    }

    /// How full the segment files are, and which records keep the oldest of them: see
    /// [`DiskUsage`].
    pub(crate) fn usage(&self) -> DiskUsage {
        let core = &self.guard.core;
        let st = core.state.lock();
        // The oldest segments holding half of the file bytes: once every record below
        // `oldest_half_end` is done, at least that half can be deleted.
        // The newest segment is being written: sealing for it would send every new
        // record at once, and it is freed only after it rotates anyway.
        let half = st.disk_bytes / 2;
        let mut sum = 0u64;
        let mut oldest_half_end = 0u64;
        let older = st.segments.len().saturating_sub(1);
        for (_, m) in st.segments.iter().take(older) {
            sum = sum.saturating_add(m.bytes);
            oldest_half_end = m.end;
            if sum >= half {
                break;
            }
        }
        DiskUsage {
            disk_bytes: st.disk_bytes,
            disk_cap: core.disk_cap,
            live_bytes: st.live_bytes,
            oldest_half_end,
        }
    }

    #[cfg(test)]
    fn syncs(&self) -> u64 {
        self.guard.core.syncs.load(Ordering::Relaxed)
    }
}

// === impl Reader ===

struct OpenSegment {
    first_seq: u64,
    file: BufReader<File>,
}

struct ReadState {
    next_seq: u64,
    cur: Option<OpenSegment>,
    /// Where reading stopped in a segment closed at its committed end: `(first seq, seq,
    /// byte offset)`, so reopening it seeks instead of skipping every frame.
    resume: Option<(u64, u64, u64)>,
    /// Records read from disk and not yet returned (only when a `recv` was cancelled, or
    /// `max_records` shrank between calls). Bounded by one read.
    stash: VecDeque<Entry>,
    payload: Vec<u8>,
}

pub(crate) struct Reader {
    guard: Arc<Guard>,
    state: Arc<Mutex<ReadState>>,
    /// A disk read in progress. Kept across cancellation so its records land in `stash`.
    pending: Option<tokio::task::JoinHandle<()>>,
}

impl Reader {
    pub(crate) async fn recv(&mut self, max_records: usize) -> Option<Vec<Entry>> {
        let max_records = max_records.max(1);
        loop {
            if let Some(h) = self.pending.as_mut() {
                let _ = h.await;
                self.pending = None;
            }
            {
                let mut rs = self.state.lock();
                if !rs.stash.is_empty() {
                    let n = max_records.min(rs.stash.len());
                    return Some(rs.stash.drain(..n).collect());
                }
            }
            let core = &self.guard.core;
            loop {
                let notified = core.data.notified();
                let next_seq = self.state.lock().next_seq;
                {
                    let st = core.state.lock();
                    if st
                        .segments
                        .values()
                        .next_back()
                        .is_some_and(|s| s.end > next_seq)
                    {
                        break;
                    }
                    if st.closed && st.requests.is_empty() && !st.writing {
                        return None;
                    }
                }
                notified.await;
            }
            let core = self.guard.core.clone();
            let state = self.state.clone();
            self.pending = Some(tokio::task::spawn_blocking(move || {
                fill(&core, &mut state.lock(), max_records);
            }));
        }
    }

    pub(crate) fn acker(&self) -> Acker {
        Acker {
            guard: self.guard.clone(),
        }
    }

    /// Committed records not yet acked (handed out or not): what a restart replays.
    pub(crate) fn unacked_records(&self) -> u64 {
        self.guard.core.state.lock().live_records
    }
}

/// Marks `[from, to)` done because it can never be delivered (gap or unreadable data).
fn skip(core: &Core, from: u64, to: u64) {
    let mut st = core.state.lock();
    if st.mark_done(from, to) > 0 {
        core.publish(&st);
    }
    if st.read_seq < to {
        st.read_seq = to;
    }
}

/// Blocking: reads up to `max_records` committed records into the stash.
fn fill(core: &Core, rs: &mut ReadState, max_records: usize) {
    let mut bytes = 0usize;
    while rs.stash.len() < max_records && bytes < READ_MAX_BYTES {
        let target = {
            let st = core.state.lock();
            let containing = st
                .segments
                .range(..=rs.next_seq)
                .next_back()
                .filter(|(_, s)| s.end > rs.next_seq);
            containing
                .or_else(|| st.segments.range(rs.next_seq..).find(|(f, s)| s.end > **f))
                .map(|(&first, s)| {
                    // Records acked before a restart (persisted done ranges) are not
                    // delivered again; check them one by one only where there are some.
                    let check_done = st.ledger.has_ranges_in(rs.next_seq.max(first), s.end);
                    (first, s.end, check_done)
                })
        };
        let Some((first, end, check_done)) = target else {
            break;
        };
        if first > rs.next_seq {
            // Seqs that hold nothing: quarantined tails, seqs retired after a write error.
            skip(core, rs.next_seq, first);
            rs.next_seq = first;
        }
        if rs.cur.as_ref().is_none_or(|c| c.first_seq != first) {
            rs.cur = None;
            let resume = rs
                .resume
                .take()
                .filter(|&(f, seq, _)| f == first && seq == rs.next_seq)
                .map(|(_, _, offset)| offset);
            match open_at(core, first, rs.next_seq, resume) {
                Ok(file) => {
                    rs.cur = Some(OpenSegment {
                        first_seq: first,
                        file,
                    })
                }
                Err(e) => {
                    crate::warn_limited!(
                        "buffer_read",
                        "disk buffer {}: cannot read segment {}: {}; skipping {} records",
                        core.output,
                        segment::file_name(first),
                        e,
                        end - rs.next_seq
                    );
                    skip(core, rs.next_seq, end);
                    rs.next_seq = end;
                    continue;
                }
            }
        }
        let Some(cur) = rs.cur.as_mut() else { break };
        let mut read_to = rs.next_seq;
        while read_to < end && rs.stash.len() < max_records && bytes < READ_MAX_BYTES {
            match segment::read_frame(&mut cur.file, &mut rs.payload) {
                Ok(true) if check_done && core.state.lock().ledger.is_done(read_to) => {
                    read_to += 1;
                }
                Ok(true) => {
                    bytes += rs.payload.len();
                    match codec::decode(&rs.payload) {
                        Ok(record) => rs.stash.push_back(Entry {
                            seq: read_to,
                            record,
                        }),
                        Err(e) => {
                            crate::warn_limited!(
                                "buffer_decode",
                                "disk buffer {}: undecodable record {} dropped: {}",
                                core.output,
                                read_to,
                                e
                            );
                            skip(core, read_to, read_to + 1);
                        }
                    }
                    read_to += 1;
                }
                other => {
                    // Checked at start-up or written by us: damage now means the disk changed
                    // under us. Give up on the rest of this segment rather than loop on it.
                    let why = match other {
                        Ok(_) => "unexpected end of file".to_string(),
                        Err(e) => e.to_string(),
                    };
                    crate::warn_limited!(
                        "buffer_read",
                        "disk buffer {}: segment {} unreadable at seq {}: {}; skipping {} records",
                        core.output,
                        segment::file_name(first),
                        read_to,
                        why,
                        end - read_to
                    );
                    skip(core, read_to, end);
                    read_to = end;
                    rs.cur = None;
                    break;
                }
            }
        }
        rs.next_seq = read_to;
        if read_to == end
            && let Some(mut cur) = rs.cur.take()
        {
            // Everything committed is read: close the file. An open descriptor keeps a
            // deleted segment's blocks allocated, and on a full disk those blocks are what
            // the next write needs.
            if let Ok(offset) = cur.file.stream_position() {
                rs.resume = Some((first, read_to, offset));
            }
        }
        let mut st = core.state.lock();
        if st.read_seq < read_to {
            st.read_seq = read_to;
        }
    }
    // Do not hold a large payload buffer between reads.
    if rs.payload.capacity() > READ_BUF {
        rs.payload = Vec::new();
    }
}

/// Opens segment `first` positioned at record `seq`: at byte `offset` when known (where an
/// earlier read of the same segment stopped), else by skipping the frames before it.
fn open_at(
    core: &Core,
    first: u64,
    seq: u64,
    offset: Option<u64>,
) -> Result<BufReader<File>, segment::FrameError> {
    let file = File::open(core.seg_path(first)).map_err(segment::FrameError::Io)?;
    let mut r = BufReader::with_capacity(READ_BUF, file);
    if let Some(offset) = offset {
        // The header was checked when this segment was opened the first time.
        r.seek(SeekFrom::Start(offset))
            .map_err(segment::FrameError::Io)?;
        return Ok(r);
    }
    match segment::read_header(&mut r) {
        Ok(h) if h == first => {}
        Ok(_) | Err(_) => return Err(segment::FrameError::Torn),
    }
    for _ in first..seq {
        segment::skip_frame(&mut r)?;
    }
    Ok(r)
}

// === impl Acker ===

#[derive(Clone)]
pub(crate) struct Acker {
    guard: Arc<Guard>,
}

impl Acker {
    pub(crate) fn ack(&self, seqs: &[u64]) {
        let core = &*self.guard.core;
        let mut st = core.state.lock();
        // Only seqs the reader handed out can be acked; anything else would let the
        // watermark jump over records not delivered yet.
        let limit = st.read_seq;
        let mut newly = 0;
        if seqs.iter().all(|&s| s < limit) {
            ledger::for_each_run(seqs, |s, e| newly += st.mark_done(s, e));
        } else {
            let valid: Vec<u64> = seqs.iter().copied().filter(|&s| s < limit).collect();
            ledger::for_each_run(&valid, |s, e| newly += st.mark_done(s, e));
        }
        core.publish(&st);
        let wake = st.space_waiters > 0 && newly > 0;
        drop(st);
        if wake {
            // Undelivered bytes went down: a waiting push may fit now. The writer may
            // also free whole segments if the files are at their cap.
            core.space.notify_waiters();
            core.wake_writer.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
