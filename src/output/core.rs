//! The delivery core every output runs: read from the output's buffer, partition, batch,
//! send with bounded concurrency, and report what happened to each record.
//!
//! Timing invariants (keep them true when changing defaults):
//! - a batch waits at most `max_age` (or until its `flush_at`) before it is sent;
//! - on `flush`, nothing waits for `max_age` any more: open batches go out at once;
//! - on `deadline` (shutdown grace minus a margin), retries stop and whatever is not
//!   delivered is counted and reported in one line; the process can then exit.
//!
//! Back-pressure: at most `concurrency` batches are in flight and at most `concurrency`
//! more wait, sealed, for a slot. While that queue is full the core stops reading its
//! buffer, the buffer fills, and the inputs slow down; nothing is dropped for it.
//!
//! Pressure sealing: records in an open batch stay in the buffer (and in the memory
//! budget) until that batch is sent, so a batch whose limits cannot be reached inside its
//! buffer (32 MiB of *compressed* S3 object in a 32 MiB buffer) would fill the buffer and
//! stall every input until `max_age`. So when the buffer (or the budget) is at least half
//! full and open batches hold a large share of it, the largest open batches are sealed
//! and sent now (see [`Pressure`]). Batches are then smaller than configured, but no ack
//! waits on a timer. A disk buffer deletes a segment file only once all its records are
//! done, so an open batch also pins files: when they near their cap with mostly
//! delivered data, the batches holding the oldest records are sealed (`reason="disk"`,
//! see `Pressure::pin_below`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::ops::AddAssign;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deliver::{AckProbe, Acks, Job, JobOf, OutputMetrics, Refusal, Shared, deliver, offer};
use super::retry::RetryPolicy;
use super::sink::{BatchBuilder, BatchSettings, Sink};
use crate::buffer::budget::{MemoryBudget, Reservation};
use crate::buffer::{BufferKind, BufferReader, BufferSettings, BufferWriter, Entry, WhenFull};

/// Upper bound on records taken from the buffer in one read.
const MAX_READ_CHUNK: usize = 4096;
/// After the deadline, delivery tasks get this long to notice before they are aborted.
const ABANDON_GRACE: Duration = Duration::from_secs(1);
/// How often pressure is re-checked while batches are open and nothing is read (another
/// output or an input may have filled the shared budget meanwhile).
const PRESSURE_RECHECK: Duration = Duration::from_millis(100);

/// What presses on an output's open batches: the fill of its own buffer (for disk
/// buffers also of its segment files) and of the process-wide memory budget. Without either (unit tests), only the batch limits and
/// `max_age` seal batches.
#[derive(Clone, Default)]
pub struct Pressure {
    /// The output's buffer and its `max_size` in bytes (memory: `Record::approx_size`;
    /// disk: bytes of live segment files).
    buffer: Option<(BufferWriter, u64)>,
    budget: Option<MemoryBudget>,
    /// Records read from a disk buffer are in memory once they sit in an open batch, but
    /// no buffer charged them to the budget: count them as budget use here. (A memory
    /// buffer charged them when they were pushed.)
    open_outside_budget: bool,
    /// The buffer drops newest when full: its batches' bodies, like its records, never
    /// take the quarter of the budget shedding leaves to the others.
    sheds: bool,
}

impl Pressure {
    /// Watches the buffer `writer` (opened with `settings`) and `budget`.
    pub(crate) fn new(
        writer: BufferWriter,
        settings: &BufferSettings,
        budget: MemoryBudget,
    ) -> Self {
        Pressure {
            buffer: Some((writer, settings.max_size.max(1))),
            budget: Some(budget),
            open_outside_budget: settings.kind == BufferKind::Disk,
            sheds: settings.when_full == WhenFull::DropNewest,
        }
    }

    fn is_active(&self) -> bool {
        self.buffer.is_some() || self.budget.is_some()
    }

    /// With `open` bytes (by `Record::approx_size`) in open batches: `Some(target)` when
    /// open batches must be sealed until they hold at most `target` bytes.
    ///
    /// The rule, per resource (buffer `max_size`, budget `limit`): when at least half of
    /// it is used and open batches hold at least a quarter of the buffer (an eighth of the
    /// budget, which all outputs and inputs share), seal down to half that share. Half
    /// full leaves room for the inputs to keep flowing while the sealed batches are sent
    /// and acked; the share keeps a full buffer of *sending* batches (a slow destination)
    /// from shrinking batches that are not the cause.
    fn target(&self, open: usize) -> Option<usize> {
        let open = open as u64;
        let mut target: Option<u64> = None;
        if let Some((writer, max)) = &self.buffer {
            let used = writer.stats().bytes;
            if used.saturating_mul(2) >= *max && open.saturating_mul(4) >= *max {
                target = Some(max / 8);
            }
        }
        if let Some(budget) = &self.budget {
            let limit = budget.limit() as u64;
            let mut used = budget.used() as u64;
            if self.open_outside_budget {
                used = used.saturating_add(open);
            }
            if used.saturating_mul(2) >= limit && open.saturating_mul(8) >= limit {
                let t = limit / 16;
                target = Some(target.map_or(t, |x| x.min(t)));
            }
        }
        target.map(|t| t as usize)
    }

    /// Disk buffers: `Some(seq)` when open batches holding a record below `seq` must be
    /// sealed so that the oldest segment files can be deleted.
    ///
    /// A segment file goes only when all its records are done, so a quiet partition whose
    /// batch waits for `max_age` (one record every few seconds) pins every segment written
    /// meanwhile; the files reach their cap (2 × `max_size`) while the undelivered bytes
    /// are tiny, and the inputs stop although the buffer is not full of undelivered data.
    /// The rule: when the files use at least three quarters of their cap and at least
    /// half of the cap (`max_size`) is records already done, seal the open batches that
    /// hold records in the oldest half of the files. A few pinned segments (one quiet
    /// record, the segment being written, acks not yet persisted) stay under that, so
    /// batches are not shrunk for them; a slow destination (files full of *undelivered*
    /// records) does not meet the second half of the rule; the last quarter is headroom
    /// while the sealed batches are sent and their segments deleted.
    fn pin_below(&self) -> Option<u64> {
        let (writer, _) = self.buffer.as_ref()?;
        let u = writer.disk_usage()?;
        let done = u.disk_bytes.saturating_sub(u.live_bytes);
        (u.disk_bytes.saturating_mul(4) >= u.disk_cap.saturating_mul(3)
            && done.saturating_mul(2) >= u.disk_cap
            && u.oldest_half_end > 0)
            .then_some(u.oldest_half_end)
    }
}

/// The two shutdown signals of one output (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct OutputShutdown {
    /// Stop waiting for `max_age`; flush open batches now; keep delivering (with retries)
    /// until the buffer is closed and drained. Close the buffer writers before or after.
    pub flush: CancellationToken,
    /// Stop retrying and return; undelivered records are counted, not acknowledged.
    pub deadline: CancellationToken,
}

/// Where records this output gives up on go: another output's buffer.
#[derive(Clone)]
pub struct DeadLetter {
    /// The dead letter output's name, for log lines.
    pub name: String,
    pub writer: BufferWriter,
}

pub struct OutputContext {
    pub name: String,
    pub batch: BatchSettings,
    pub retry: RetryPolicy,
    /// Requests in flight at once (default 4). Use 1 where order matters (stdout, file).
    pub concurrency: usize,
    pub dead_letter: Option<DeadLetter>,
    pub shutdown: OutputShutdown,
    /// Shared with `/health`; keep a clone before calling [`run`].
    pub health: Arc<OutputHealth>,
    /// The kind of buffer behind this output. At the deadline, records left in a memory
    /// buffer are counted as undelivered (they are lost); a disk buffer keeps them.
    pub buffer: BufferKind,
    /// The buffer and budget whose fill seals open batches early (see [`Pressure`]).
    pub pressure: Pressure,
    /// Open batches (partitions) at most; at the cap the oldest is sealed to open a new
    /// one (`batch.max_partitions`, default [`DEFAULT_MAX_PARTITIONS`]).
    pub max_partitions: usize,
}

/// Default cap on open partitions per output. A partition is one S3 object key (or
/// CloudWatch stream) being filled; each holds a compressor (about 300 KiB for gzip,
/// about 1 MiB for zstd), so thousands of tags must not mean thousands of open objects.
pub(crate) const DEFAULT_MAX_PARTITIONS: usize = 256;

impl OutputContext {
    /// Defaults for everything but the name and batch limits.
    pub(crate) fn new(name: impl Into<String>, batch: BatchSettings) -> Self {
        OutputContext {
            name: name.into(),
            batch,
            retry: RetryPolicy::default(),
            concurrency: 4,
            dead_letter: None,
            shutdown: OutputShutdown::default(),
            health: Arc::new(OutputHealth::default()),
            buffer: BufferKind::Memory,
            pressure: Pressure::default(),
            max_partitions: DEFAULT_MAX_PARTITIONS,
        }
    }
}

/// Final fates of the records `run` took from its buffer. They add up:
/// taken = sent + dropped + dead_lettered + failed + undelivered + unknown.
/// `lost` and `kept` say what the shutdown deadline meant for them (and, for `kept`, for
/// the records never taken); they are not part of that sum.
/// (The `failed` metric counts `failed + lost`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputSummary {
    pub sent: u64,
    /// Dropped by a per-record policy the user chose (Firehose `oversize = "drop"`).
    pub dropped: u64,
    pub dead_lettered: u64,
    /// Given up on with no dead letter (or one that refused them): refused by the sink
    /// (unencodable, a partition it cannot render), a permanent error, retries exhausted.
    pub failed: u64,
    /// Not sent at the shutdown deadline (open, queued, waiting for a retry); not
    /// acknowledged to the buffer.
    pub undelivered: u64,
    /// In a request the shutdown deadline cut off: it may have reached the destination.
    /// Not acknowledged to the buffer (a disk buffer sends them again: maybe twice).
    pub unknown: u64,
    /// Memory buffer: records that end with the process at the deadline (`undelivered`
    /// plus what was still in the buffer); counted in the `failed` metric.
    pub lost: u64,
    /// Disk buffer: records left in it at the deadline (taken or not), delivered after
    /// the next start; not failed.
    pub kept: u64,
}

impl AddAssign for OutputSummary {
    fn add_assign(&mut self, o: Self) {
        self.sent += o.sent;
        self.dropped += o.dropped;
        self.dead_lettered += o.dead_lettered;
        self.failed += o.failed;
        self.undelivered += o.undelivered;
        self.unknown += o.unknown;
        self.lost += o.lost;
        self.kept += o.kept;
    }
}

// === impl OutputHealth ===

/// Delivery health of one output, for `/health`: "is it delivering", not "is it running".
#[derive(Debug, Default)]
pub struct OutputHealth {
    /// Unix nanoseconds of the last request that delivered something; 0 = never.
    last_success_ns: AtomicI64,
    consecutive_failures: AtomicU32,
    last_failure: Mutex<Option<String>>,
}

impl OutputHealth {
    pub(crate) fn last_success(&self) -> Option<SystemTime> {
        match self.last_success_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)),
        }
    }

    /// Failed requests since the last one that delivered something.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Reason label of the most recent failed request.
    pub(crate) fn last_failure_reason(&self) -> Option<String> {
        self.last_failure.lock().clone()
    }

    pub(crate) fn success(&self) {
        self.last_success_ns
            .store(crate::event::now_ns().max(1), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self, reason: &str) {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_failure.lock();
        if last.as_deref() != Some(reason) {
            *last = Some(reason.to_owned());
        }
    }
}

// === run ===

/// Runs one output until its buffer is closed and drained (after `flush`) or the
/// `deadline` passes.
pub(crate) async fn run<S: Sink>(
    ctx: OutputContext,
    sink: Arc<S>,
    reader: BufferReader,
) -> OutputSummary {
    run_inner(ctx, sink, reader, None).await
}

/// One partition's open batch.
struct Open<B> {
    builder: B,
    entries: Vec<Entry>,
    due: Instant,
    /// Order of opening (a counter, not a clock: many open within one tick); the oldest
    /// is sealed first at the partition cap.
    opened: u64,
    /// `Record::approx_size` of `entries`: what this batch keeps in the buffer.
    held: usize,
    /// The builder's fixed cost ([`Sink::open_batch_overhead`]) held against the budget.
    _overhead: Reservation,
}

/// Every open batch of one output (keyed by the sink's partition `P`), with the byte and
/// partition counts pressure and the cap act on.
struct OpenBatches<P, B> {
    map: HashMap<P, Open<B>>,
    /// Sum of `held` over `map`.
    held: usize,
    /// Partitions opened so far, for [`Open::opened`].
    opened: u64,
    /// `firelane_output_open_partitions{output}`.
    gauge: Gauge,
}

impl<P: Hash + Eq + Clone, B: BatchBuilder> OpenBatches<P, B> {
    fn new(output: &str) -> Self {
        OpenBatches {
            map: HashMap::new(),
            held: 0,
            opened: 0,
            gauge: metrics::gauge!("firelane_output_open_partitions", "output" => output.to_owned()),
        }
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn next_due(&self) -> Option<Instant> {
        self.map.values().map(|o| o.due).min()
    }

    fn publish(&self) {
        self.gauge.set(self.map.len() as f64);
    }

    /// Seals the batch of `partition` (if it holds anything) onto `ready`.
    fn seal(&mut self, partition: &P, ready: &mut VecDeque<Job<P, B::Batch>>) {
        if let Some((partition, o)) = self.map.remove_entry(partition) {
            self.held -= o.held;
            push_sealed(partition, o, ready);
        }
    }

    fn seal_where(
        &mut self,
        ready: &mut VecDeque<Job<P, B::Batch>>,
        pick: impl Fn(&Open<B>) -> bool,
    ) {
        let keys: Vec<P> = self
            .map
            .iter()
            .filter(|(_, o)| pick(o))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.seal(&k, ready);
        }
    }

    fn seal_all(&mut self, ready: &mut VecDeque<Job<P, B::Batch>>) {
        self.seal_where(ready, |_| true);
    }

    /// Seals the largest batches until open batches hold at most `target` bytes.
    /// Returns how many were sealed.
    fn seal_down_to(&mut self, target: usize, ready: &mut VecDeque<Job<P, B::Batch>>) -> u64 {
        let mut sealed = 0;
        while self.held > target {
            let Some(k) = self
                .map
                .iter()
                .max_by_key(|(_, o)| o.held)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.seal(&k, ready);
            sealed += 1;
        }
        sealed
    }

    /// Seals every batch holding a record with a seq below `seq`. Returns how many.
    fn seal_holding_below(&mut self, seq: u64, ready: &mut VecDeque<Job<P, B::Batch>>) -> u64 {
        // Entries join a batch in read order, which is seq order: the first is the lowest.
        let before = self.map.len();
        self.seal_where(ready, |o| o.entries.first().is_some_and(|e| e.seq < seq));
        (before - self.map.len()) as u64
    }

    /// Seals the partition opened first. `false` if none is open.
    fn seal_oldest(&mut self, ready: &mut VecDeque<Job<P, B::Batch>>) -> bool {
        let Some(k) = self
            .map
            .iter()
            .min_by_key(|(_, o)| o.opened)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        self.seal(&k, ready);
        true
    }
}

/// `firelane_output_sealed_batches_total{output, reason}` for the early seals: `pressure`
/// (buffer or budget half full, see [`Pressure`]), `disk` (open batches pin a disk
/// buffer's oldest segment files) and `partitions` (at the partition cap or out of budget
/// for one more open batch). Batches sealed at their limits or at
/// `max_age` are not counted here.
fn sealed_counter(output: &str, reason: &'static str) -> Counter {
    metrics::counter!("firelane_output_sealed_batches_total", "output" => output.to_owned(), "reason" => reason)
}

pub(crate) async fn run_inner<S: Sink>(
    ctx: OutputContext,
    sink: Arc<S>,
    reader: BufferReader,
    probe: Option<AckProbe>,
) -> OutputSummary {
    if let Err(e) = ctx.retry.validate() {
        tracing::warn!(output = %ctx.name, "{e}; using the nearest valid values");
    }
    let deadline = ctx.shutdown.deadline.clone();
    let flush = ctx.shutdown.flush.clone();
    let concurrency = ctx.concurrency.max(1);
    let max_records = ctx.batch.max_records.max(1);
    let max_bytes = ctx.batch.max_bytes.max(1);
    let max_age = ctx.batch.max_age;
    let max_partitions = ctx.max_partitions.max(1);
    let pressure = ctx.pressure;
    let sealed_pressure = sealed_counter(&ctx.name, "pressure");
    let sealed_partitions = sealed_counter(&ctx.name, "partitions");
    let sealed_disk = sealed_counter(&ctx.name, "disk");
    let output_name = ctx.name.clone();
    // Both pressure checks: the budget / buffer fill (largest batches first) and the disk
    // files pinned by open batches (batches holding the oldest records).
    let relieve = |open: &mut OpenBatches<S::Partition, S::Builder>,
                   ready: &mut VecDeque<JobOf<S>>| {
        if let Some(target) = pressure.target(open.held) {
            sealed_pressure.increment(open.seal_down_to(target, ready));
        }
        if let Some(below) = pressure.pin_below() {
            let n = open.seal_holding_below(below, ready);
            if n > 0 {
                tracing::debug!(output = %output_name, below, n,
                    "disk buffer files pinned by open batches: sealing them");
            }
            sealed_disk.increment(n);
        }
    };
    let shared = Arc::new(Shared {
        metrics: OutputMetrics::new(&ctx.name),
        name: ctx.name,
        sink,
        retry: ctx.retry,
        dead_letter: ctx.dead_letter,
        acks: Acks {
            acker: reader.acker(),
            probe,
        },
        deadline: deadline.clone(),
        health: ctx.health,
    });

    // The buffer is read in its own task so that a read is never cancelled half-way by
    // a timer firing (buffer reads need not be cancel-safe); the channel holds one chunk.
    let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(1);
    let chunk = max_records.min(MAX_READ_CHUNK);
    let reader_task = tokio::spawn(read_loop(reader, tx, chunk, deadline.clone()));

    let mut open: OpenBatches<S::Partition, S::Builder> = OpenBatches::new(&shared.name);
    open.publish();
    let mut ready: VecDeque<JobOf<S>> = VecDeque::new();
    let mut jobs: JoinSet<OutputSummary> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut tally = OutputSummary::default();
    let mut input_done = false;
    let mut flushing = false;
    let mut recheck = tokio::time::interval(PRESSURE_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        charge_sealed(&mut ready, &pressure);
        while jobs.len() < concurrency
            && let Some(job) = ready.pop_front()
        {
            let n = job.entries.len();
            let handle = jobs.spawn(deliver(shared.clone(), job));
            in_flight.insert(handle.id(), n);
        }
        open.publish();
        if input_done && open.is_empty() && ready.is_empty() && jobs.is_empty() {
            break;
        }
        let next_due = open.next_due();
        let can_read = !input_done && ready.len() < concurrency;
        let watch = pressure.is_active() && !open.is_empty();

        tokio::select! {
            biased;
            _ = deadline.cancelled() => {
                let pending = open.map.into_values().map(|o| o.entries.len()).sum::<usize>()
                    + ready.iter().map(|j| j.entries.len()).sum::<usize>();
                tally.undelivered += pending as u64;
                return abandon(&shared, tally, jobs, in_flight, reader_task, rx, ctx.buffer).await;
            }
            _ = flush.cancelled(), if !flushing => {
                flushing = true;
                open.seal_all(&mut ready);
            }
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                match done {
                    Ok((id, t)) => {
                        in_flight.remove(&id);
                        tally += t;
                    }
                    Err(e) => {
                        // A panicking sink: its records are neither delivered nor acknowledged.
                        let n = in_flight.remove(&e.id()).unwrap_or(0) as u64;
                        tracing::error!(output = %shared.name, "delivery task failed: {e}; {n} records not delivered");
                        shared.metrics.failed.increment(n);
                        tally.failed += n;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                open.seal_where(&mut ready, |o| o.due <= now);
            }
            _ = recheck.tick(), if watch => relieve(&mut open, &mut ready),
            msg = rx.recv(), if can_read => {
                let Some(entries) = msg else {
                    // Closed and drained: nothing more will join the open batches.
                    input_done = true;
                    open.seal_all(&mut ready);
                    continue;
                };
                let mut refused: Vec<(Entry, Refusal)> = Vec::new();
                for entry in entries {
                    let partition = match shared.sink.partition(&entry.record) {
                        Ok(p) => p,
                        Err(reason) => {
                            refused.push((entry, Refusal::Rejected(reason)));
                            continue;
                        }
                    };
                    if !open.map.contains_key(&partition) {
                        let o = new_open(
                            &*shared.sink,
                            &partition,
                            max_age,
                            max_partitions,
                            pressure.budget.as_ref(),
                            &mut open,
                            &mut ready,
                            &sealed_partitions,
                        );
                        open.map.insert(partition.clone(), o);
                    }
                    let Some(slot) = open.map.get_mut(&partition) else {
                        continue; // inserted just above
                    };
                    let size = entry.record.approx_size();
                    let o = offer(&*shared.sink, &partition, &mut slot.builder, &mut slot.entries, entry);
                    if let Some((batch, entries, bytes)) = o.sealed {
                        ready.push_back(Job { partition: partition.clone(), batch, entries, bytes, attempts: 0, memory: Reservation::empty() });
                        slot.due = Instant::now() + max_age;
                        open.held -= slot.held;
                        slot.held = 0;
                    }
                    if o.truncated {
                        shared.metrics.truncated.increment(1);
                    }
                    match o.refused {
                        Some(refusal) => refused.push(refusal),
                        None => {
                            slot.held += size;
                            open.held += size;
                        }
                    }
                    if let Some(at) = slot.builder.flush_at() {
                        slot.due = slot.due.min(instant_of(at));
                    }
                    // Send as soon as a limit is reached rather than on the next record;
                    // a partition left empty (its only record refused) is closed too.
                    let full = slot.builder.len() >= max_records || slot.builder.bytes() >= max_bytes;
                    if full || (slot.entries.is_empty() && slot.builder.is_empty()) {
                        open.seal(&partition, &mut ready);
                    }
                }
                if flushing {
                    open.seal_all(&mut ready);
                } else {
                    relieve(&mut open, &mut ready);
                }
                if !refused.is_empty() {
                    tally += shared.refuse(refused, 0).await;
                }
            }
        }
    }
    open.publish();
    // The reader task has ended (it closed the channel); nothing is left in it.
    let _ = reader_task.await;
    tally
}

/// Charges the memory budget for the bodies of batches sealed since the last call, held
/// until the batch is done. A body (JSON lines, a compressed S3 object, an SDK request's
/// entries) is memory beside the records it was built from, which their buffer counts;
/// uncounted, a 32 MiB budget let the process hold ~5 MiB more at a burst (issue #10).
///
/// The core cannot wait for memory (only its deliveries free it), so this never waits:
/// it overdraws the budget if it must ([`MemoryBudget::take_body`]), which holds the
/// inputs back until deliveries pay it off. A stalled destination keeps its bodies, so
/// two limits keep the rest of the router alive: all bodies together take at most half
/// the budget (beyond it they go uncounted), and an output that sheds load
/// (`drop_newest`) charges only what leaves a quarter free, never overdrawing.
fn charge_sealed<P, B>(ready: &mut VecDeque<Job<P, B>>, pressure: &Pressure) {
    let Some(budget) = &pressure.budget else {
        return;
    };
    for job in ready.iter_mut() {
        if job.bytes == 0 || job.memory.bytes() > 0 {
            continue;
        }
        job.memory = if pressure.sheds {
            budget
                .try_acquire_shedding(job.bytes)
                .unwrap_or_else(Reservation::empty)
        } else {
            budget.take_body(job.bytes)
        };
    }
}

/// A fresh open batch for `partition`. Makes room first: at `max_partitions` open
/// batches the oldest is sealed, and the builder's fixed cost is taken from the budget,
/// sealing the oldest batches while the budget cannot cover it. With nothing left to
/// seal, the batch opens uncounted: the core loop must never wait for memory that only
/// it can free.
#[allow(clippy::too_many_arguments)]
fn new_open<S: Sink>(
    sink: &S,
    partition: &S::Partition,
    max_age: Duration,
    max_partitions: usize,
    budget: Option<&MemoryBudget>,
    open: &mut OpenBatches<S::Partition, S::Builder>,
    ready: &mut VecDeque<JobOf<S>>,
    sealed: &Counter,
) -> Open<S::Builder> {
    while open.map.len() >= max_partitions && open.seal_oldest(ready) {
        sealed.increment(1);
    }
    let overhead = sink.open_batch_overhead();
    let mut reservation = Reservation::empty();
    if let Some(budget) = budget.filter(|_| overhead > 0) {
        loop {
            if let Some(r) = budget.try_acquire(overhead) {
                reservation = r;
                break;
            }
            if !open.seal_oldest(ready) {
                break;
            }
            sealed.increment(1);
        }
    }
    open.opened += 1;
    Open {
        builder: sink.new_batch(partition),
        entries: Vec::new(),
        due: Instant::now() + max_age,
        opened: open.opened,
        held: 0,
        _overhead: reservation,
    }
}

fn push_sealed<P, B: BatchBuilder>(
    partition: P,
    o: Open<B>,
    ready: &mut VecDeque<Job<P, B::Batch>>,
) {
    if o.entries.is_empty() {
        return;
    }
    let bytes = o.builder.bytes();
    ready.push_back(Job {
        partition,
        batch: o.builder.finish(),
        entries: o.entries,
        bytes,
        attempts: 0,
        memory: Reservation::empty(),
    });
}

/// Maps a wall-clock instant onto the (pausable) tokio clock.
fn instant_of(at: SystemTime) -> Instant {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + wait
}

async fn read_loop(
    mut reader: BufferReader,
    tx: mpsc::Sender<Vec<Entry>>,
    chunk: usize,
    deadline: CancellationToken,
) -> (BufferReader, usize) {
    loop {
        let got = tokio::select! {
            biased;
            _ = deadline.cancelled() => return (reader, 0),
            got = reader.recv(chunk) => got,
        };
        let Some(entries) = got else {
            return (reader, 0);
        };
        let n = entries.len();
        tokio::select! {
            biased;
            _ = deadline.cancelled() => return (reader, n),
            sent = tx.send(entries) => if sent.is_err() { return (reader, 0) },
        }
    }
}

/// The deadline passed: stop everything, count what was not delivered, say so once.
async fn abandon<S: Sink>(
    shared: &Arc<Shared<S>>,
    mut tally: OutputSummary,
    mut jobs: JoinSet<OutputSummary>,
    mut in_flight: HashMap<tokio::task::Id, usize>,
    reader_task: tokio::task::JoinHandle<(BufferReader, usize)>,
    mut rx: mpsc::Receiver<Vec<Entry>>,
    kind: BufferKind,
) -> OutputSummary {
    // Delivery tasks watch the deadline themselves and report what they still held.
    let drained = tokio::time::timeout(ABANDON_GRACE, async {
        while let Some(done) = jobs.join_next_with_id().await {
            match done {
                Ok((id, t)) => {
                    in_flight.remove(&id);
                    tally += t;
                }
                Err(e) => {
                    tally.undelivered += in_flight.remove(&e.id()).unwrap_or(0) as u64;
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        jobs.abort_all();
        tally.undelivered += in_flight.values().sum::<usize>() as u64;
    }
    let mut left = 0usize;
    let mut kept = None;
    if let Ok((mut reader, held)) = reader_task.await {
        left += held;
        while let Ok(chunk) = rx.try_recv() {
            left += chunk.len();
        }
        // Records still in a memory buffer die with the process: count them too. A disk
        // buffer keeps them; reading it through here would only cost time.
        if kind == BufferKind::Memory {
            while let Some(Some(chunk)) = reader.recv(MAX_READ_CHUNK).now_or_never() {
                left += chunk.len();
            }
        }
        kept = reader.disk_records();
    }
    tally.undelivered += left as u64;
    let name = &shared.name;
    match kind {
        BufferKind::Memory => {
            tally.lost = tally.undelivered;
            shared.metrics.failed.increment(tally.lost);
            if tally.lost > 0 || tally.unknown > 0 {
                tracing::error!(
                    output = %name, lost = tally.lost, unknown = tally.unknown,
                    "output {name}: at the shutdown deadline {} records were not delivered (memory buffer: lost) and {} were in requests the deadline cut off (they may have arrived)",
                    tally.lost,
                    tally.unknown
                );
            }
        }
        BufferKind::Disk => {
            // Everything not acknowledged is still on disk, read or not: that is the
            // number the next start replays.
            tally.kept = kept.unwrap_or(tally.undelivered + tally.unknown);
            if tally.kept > 0 {
                tracing::warn!(
                    output = %name, kept = tally.kept, unknown = tally.unknown,
                    "output {name}: at the shutdown deadline {} records are kept in the disk buffer for the next start ({} of them were in requests the deadline cut off: they may arrive twice)",
                    tally.kept,
                    tally.unknown
                );
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests;
