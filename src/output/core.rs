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

use std::collections::{HashMap, VecDeque};
use std::ops::AddAssign;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deliver::{
    AckProbe, Acks, BatchOf, GiveUp, Job, OutputMetrics, Shared, deliver, offer, refused_failure,
};
use super::retry::RetryPolicy;
use super::sink::{BatchBuilder, BatchSettings, Failure, Sink};
use crate::buffer::{BufferKind, BufferReader, BufferWriter, Entry};

/// Upper bound on records taken from the buffer in one read.
const MAX_READ_CHUNK: usize = 4096;
/// After the deadline, delivery tasks get this long to notice before they are aborted.
const ABANDON_GRACE: Duration = Duration::from_secs(1);

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
}

impl OutputContext {
    /// Defaults for everything but the name and batch limits.
    pub fn new(name: impl Into<String>, batch: BatchSettings) -> Self {
        OutputContext {
            name: name.into(),
            batch,
            retry: RetryPolicy::default(),
            concurrency: 4,
            dead_letter: None,
            shutdown: OutputShutdown::default(),
            health: Arc::new(OutputHealth::default()),
            buffer: BufferKind::Memory,
        }
    }
}

/// Final fates of the records `run` took from its buffer. They add up:
/// taken = sent + dropped + dead_lettered + failed + undelivered.
/// (The `failed` metric counts `failed + undelivered`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputSummary {
    pub sent: u64,
    /// Refused by the sink (too large, unencodable, bad partition) with no dead letter.
    pub dropped: u64,
    pub dead_lettered: u64,
    /// Given up on (permanent error or retries exhausted) with no dead letter.
    pub failed: u64,
    /// Still pending at the shutdown deadline; not acknowledged to the buffer.
    pub undelivered: u64,
}

impl AddAssign for OutputSummary {
    fn add_assign(&mut self, o: Self) {
        self.sent += o.sent;
        self.dropped += o.dropped;
        self.dead_lettered += o.dead_lettered;
        self.failed += o.failed;
        self.undelivered += o.undelivered;
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
    pub fn last_success(&self) -> Option<SystemTime> {
        match self.last_success_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)),
        }
    }

    /// Failed requests since the last one that delivered something.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Reason label of the most recent failed request.
    pub fn last_failure_reason(&self) -> Option<String> {
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
pub async fn run<S: Sink>(ctx: OutputContext, sink: Arc<S>, reader: BufferReader) -> OutputSummary {
    run_inner(ctx, sink, reader, None).await
}

/// One partition's open batch.
struct Open<B> {
    builder: B,
    entries: Vec<Entry>,
    due: Instant,
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

    let mut open: HashMap<String, Open<S::Builder>> = HashMap::new();
    let mut ready: VecDeque<Job<BatchOf<S>>> = VecDeque::new();
    let mut jobs: JoinSet<OutputSummary> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut tally = OutputSummary::default();
    let mut input_done = false;
    let mut flushing = false;

    loop {
        while jobs.len() < concurrency
            && let Some(job) = ready.pop_front()
        {
            let n = job.entries.len();
            let handle = jobs.spawn(deliver(shared.clone(), job));
            in_flight.insert(handle.id(), n);
        }
        if input_done && open.is_empty() && ready.is_empty() && jobs.is_empty() {
            break;
        }
        let next_due = open.values().map(|o| o.due).min();
        let can_read = !input_done && ready.len() < concurrency;

        tokio::select! {
            biased;
            _ = deadline.cancelled() => {
                let pending = open.into_values().map(|o| o.entries.len()).sum::<usize>()
                    + ready.iter().map(|j| j.entries.len()).sum::<usize>();
                tally.undelivered += pending as u64;
                return abandon(&shared, tally, jobs, in_flight, reader_task, rx, ctx.buffer).await;
            }
            _ = flush.cancelled(), if !flushing => {
                flushing = true;
                seal_all(&mut open, &mut ready, |_| true);
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
                seal_all(&mut open, &mut ready, |o| o.due <= now);
            }
            msg = rx.recv(), if can_read => {
                let Some(entries) = msg else {
                    // Closed and drained: nothing more will join the open batches.
                    input_done = true;
                    seal_all(&mut open, &mut ready, |_| true);
                    continue;
                };
                let mut refused: Vec<(Entry, Failure)> = Vec::new();
                for entry in entries {
                    let partition = match shared.sink.partition(&entry.record) {
                        Ok(p) => p,
                        Err(reason) => {
                            refused.push((entry, refused_failure(reason)));
                            continue;
                        }
                    };
                    let slot = open
                        .entry(partition.clone())
                        .or_insert_with(|| new_open(&*shared.sink, &partition, max_age));
                    let o = offer(&*shared.sink, &partition, &mut slot.builder, &mut slot.entries, entry);
                    if let Some((batch, entries, bytes)) = o.sealed {
                        ready.push_back(Job { partition: partition.clone(), batch, entries, bytes, attempts: 0 });
                        slot.due = Instant::now() + max_age;
                    }
                    if o.truncated {
                        shared.metrics.truncated.increment(1);
                    }
                    if let Some((entry, reason)) = o.refused {
                        refused.push((entry, refused_failure(reason)));
                    }
                    if let Some(at) = slot.builder.flush_at() {
                        slot.due = slot.due.min(instant_of(at));
                    }
                    // Send as soon as a limit is reached rather than on the next record.
                    if slot.builder.len() >= max_records || slot.builder.bytes() >= max_bytes {
                        seal_one(&mut open, &partition, &mut ready);
                    } else if slot.entries.is_empty() && slot.builder.is_empty() {
                        open.remove(&partition);
                    }
                }
                if flushing {
                    seal_all(&mut open, &mut ready, |_| true);
                }
                if !refused.is_empty() {
                    tally += shared.give_up(refused, 0, GiveUp::Rejected).await;
                }
            }
        }
    }
    // The reader task has ended (it closed the channel); nothing is left in it.
    let _ = reader_task.await;
    tally
}

fn new_open<S: Sink>(sink: &S, partition: &str, max_age: Duration) -> Open<S::Builder> {
    Open {
        builder: sink.new_batch(partition),
        entries: Vec::new(),
        due: Instant::now() + max_age,
    }
}

fn seal_one<B: BatchBuilder>(
    open: &mut HashMap<String, Open<B>>,
    partition: &str,
    ready: &mut VecDeque<Job<B::Batch>>,
) {
    if let Some((partition, o)) = open.remove_entry(partition) {
        push_sealed(partition, o, ready);
    }
}

fn seal_all<B: BatchBuilder>(
    open: &mut HashMap<String, Open<B>>,
    ready: &mut VecDeque<Job<B::Batch>>,
    pick: impl Fn(&Open<B>) -> bool,
) {
    let keys: Vec<String> = open
        .iter()
        .filter(|(_, o)| pick(o))
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        if let Some(o) = open.remove(&k) {
            push_sealed(k, o, ready);
        }
    }
}

fn push_sealed<B: BatchBuilder>(
    partition: String,
    o: Open<B>,
    ready: &mut VecDeque<Job<B::Batch>>,
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
    }
    tally.undelivered += left as u64;
    shared.metrics.failed.increment(tally.undelivered);
    if tally.undelivered > 0 {
        let fate = match kind {
            BufferKind::Memory => "memory buffer: lost",
            BufferKind::Disk => "disk buffer: kept for next start",
        };
        tracing::error!(
            output = %shared.name,
            "output {}: {} records undelivered at shutdown deadline ({fate})",
            shared.name,
            tally.undelivered
        );
    }
    tally
}

#[cfg(test)]
mod tests;
