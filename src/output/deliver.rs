//! The fate of records once they are in a batch: send, retry, retry only what failed,
//! dead-letter, count, acknowledge. Every record leaves through exactly one of
//! [`Shared::delivered`], [`Shared::give_up`] or the undelivered count at the deadline.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::core::{DeadLetter, OutputHealth, OutputSummary};
use super::retry::RetryPolicy;
use super::sink::{BatchBuilder, Failure, Push, SendResult, Sink};
use crate::buffer::budget::Reservation;
use crate::buffer::{Acker, Entry};

pub(crate) type BatchOf<S> = <<S as Sink>::Builder as BatchBuilder>::Batch;
/// A closed batch of sink `S`, with its partition.
pub(crate) type JobOf<S> = Job<<S as Sink>::Partition, BatchOf<S>>;

/// Field added to dead-lettered records.
pub(crate) const ERROR_FIELD: &str = "firelane_error";

/// A closed batch and the original records in it, in builder item order.
pub(crate) struct Job<P, B> {
    pub partition: P,
    pub batch: B,
    pub entries: Vec<Entry>,
    pub bytes: usize,
    /// Send attempts these records have already been through.
    pub attempts: u32,
    /// The memory budget held for the batch's body (`bytes`), beside its records' own
    /// (see `core::charge_sealed`); empty until the core charges it.
    pub memory: Reservation,
}

/// Why records are given up on. Only `Dropped` is a policy the user chose; the others
/// were acknowledged to a client and go to the dead letter output, else count as `failed`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// The sink can never send them ([`Push::Rejected`], a partition it cannot render).
    Rejected,
    /// Sending failed for good (permanent error, or retries exhausted).
    Failed,
    /// A per-record policy the user chose drops them ([`Push::Dropped`]).
    Dropped,
}

/// Why [`offer`] did not put a record in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The sink can never send it: [`Push::Rejected`], or a partition it cannot render.
    Rejected(&'static str),
    /// A policy the user chose drops it: [`Push::Dropped`].
    Dropped(&'static str),
    /// A fresh, empty batch answered [`Push::Full`]: a bug in the sink.
    Broken,
}

/// Test hook recording every acknowledged sequence number.
pub(crate) type AckProbe = Arc<Mutex<Vec<u64>>>;

pub(crate) struct Acks {
    pub acker: Acker,
    pub probe: Option<AckProbe>,
}

impl Acks {
    fn ack(&self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        if let Some(p) = &self.probe {
            p.lock().extend_from_slice(&seqs);
        }
        self.acker.ack(&seqs);
    }
}

/// `firelane_output_oversize_records_total{output, action}`: records above a per-record
/// limit that were still sent, shortened (`"truncated"`, counted here for every sink that
/// answers [`Push::Truncated`]) or in pieces (`"split"`, counted by the sink that splits).
/// Records a sink refuses are dead-lettered or counted as failed instead (dropped only
/// under a policy the user chose, [`Push::Dropped`]).
pub(crate) fn oversize_counter(output: &str, action: &'static str) -> Counter {
    metrics::counter!(
        "firelane_output_oversize_records_total",
        "output" => output.to_owned(),
        "action" => action
    )
}

pub(crate) struct OutputMetrics {
    sent: Counter,
    retried: Counter,
    pub failed: Counter,
    dropped: Counter,
    dead_lettered: Counter,
    bytes: Counter,
    batches: Counter,
    request_seconds: Histogram,
    pub truncated: Counter,
}

impl OutputMetrics {
    pub(crate) fn new(output: &str) -> Self {
        let result = |r: &'static str| metrics::counter!("firelane_output_records_total", "output" => output.to_owned(), "result" => r);
        OutputMetrics {
            sent: result("sent"),
            retried: result("retried"),
            failed: result("failed"),
            dropped: result("dropped"),
            dead_lettered: result("dead_lettered"),
            bytes: metrics::counter!("firelane_output_bytes_total", "output" => output.to_owned()),
            batches: metrics::counter!("firelane_output_batches_total", "output" => output.to_owned()),
            request_seconds: metrics::histogram!("firelane_output_request_seconds", "output" => output.to_owned()),
            truncated: oversize_counter(output, "truncated"),
        }
    }
}

/// Everything a delivery task needs, shared by all of one output's tasks.
pub(crate) struct Shared<S> {
    pub name: String,
    pub sink: Arc<S>,
    pub retry: RetryPolicy,
    pub dead_letter: Option<DeadLetter>,
    pub acks: Acks,
    pub deadline: CancellationToken,
    pub health: Arc<OutputHealth>,
    pub metrics: OutputMetrics,
}

impl<S: Sink> Shared<S> {
    /// A failed attempt that will be retried: one WARN per output at once, then at most
    /// one per [`crate::telemetry::LOG_INTERVAL`] with the count of those suppressed, so an
    /// output that keeps failing (a missing directory, a revoked role) is visible at the
    /// default log level without flooding it.
    fn warn_retry(&self, failure: &Failure, records: usize, attempts: u32, delay: Duration) {
        crate::warn_limited!(
            log_key("output_retry", &self.name, ""),
            "output {}: send failed ({}): {}; retrying {} records in {:?} (attempt {})",
            self.name,
            failure.reason,
            crate::telemetry::redact(&failure.message),
            records,
            delay,
            attempts
        );
    }

    /// Records that reached the destination.
    pub(crate) fn delivered(&self, entries: &[Entry]) -> u64 {
        self.metrics.sent.increment(entries.len() as u64);
        self.acks.ack(entries);
        entries.len() as u64
    }

    /// Records [`offer`] (or partitioning) refused: those a user policy drops are counted
    /// as dropped, the rest go through [`give_up`](Self::give_up) as rejected.
    pub(crate) async fn refuse(
        &self,
        items: Vec<(Entry, Refusal)>,
        attempts: u32,
    ) -> OutputSummary {
        let mut rejected = Vec::new();
        let mut dropped = Vec::new();
        for (entry, refusal) in items {
            match refusal {
                Refusal::Broken => {
                    // ERROR, not WARN: a bug, not the data. Rate-limited like warnings.
                    if let Some(suppressed) =
                        crate::telemetry::permit(log_key("sink_contract", &self.name, ""))
                    {
                        tracing::error!(
                            output = %self.name,
                            suppressed,
                            "sink contract broken: an empty batch answered Full; the record goes to the dead letter output or counts as failed (reason too_large)"
                        );
                    }
                    rejected.push((entry, refused_failure("too_large")));
                }
                Refusal::Rejected(reason) => rejected.push((entry, refused_failure(reason))),
                Refusal::Dropped(reason) => dropped.push((entry, dropped_failure(reason))),
            }
        }
        let mut tally = self.give_up(rejected, attempts, GiveUp::Rejected).await;
        tally += self.give_up(dropped, attempts, GiveUp::Dropped).await;
        tally
    }

    /// Final handling of records that will not be delivered. Acknowledged records no user
    /// policy chose to drop (`Rejected`, `Failed`) go to the dead letter output if one is
    /// configured, else are counted as `failed`; `Dropped` ones (a policy the user chose)
    /// are counted as `dropped` and in `firelane_output_drops_total{reason}`. Either way
    /// they are acknowledged, except when the shutdown deadline interrupts the dead-letter
    /// push (then they stay unacknowledged and count as undelivered).
    pub(crate) async fn give_up(
        &self,
        items: Vec<(Entry, Failure)>,
        attempts: u32,
        kind: GiveUp,
    ) -> OutputSummary {
        let mut tally = OutputSummary::default();
        // One log line and one dead-letter push per distinct reason.
        let mut groups: Vec<(Failure, Vec<Entry>)> = Vec::new();
        for (entry, failure) in items {
            match groups.iter_mut().find(|(f, _)| f.reason == failure.reason) {
                Some((_, v)) => v.push(entry),
                None => groups.push((failure, vec![entry])),
            }
        }
        for (failure, entries) in groups {
            tally += self.give_up_group(entries, &failure, attempts, kind).await;
        }
        tally
    }

    async fn give_up_group(
        &self,
        entries: Vec<Entry>,
        failure: &Failure,
        attempts: u32,
        kind: GiveUp,
    ) -> OutputSummary {
        let mut tally = OutputSummary::default();
        let n = entries.len() as u64;
        if n == 0 {
            return tally;
        }
        let mut lost = n;
        let mut fate = String::from(match kind {
            GiveUp::Rejected | GiveUp::Failed => "failed (no dead letter output)",
            GiveUp::Dropped => "dropped (as configured)",
        });
        if let Some(dl) = self
            .dead_letter
            .as_ref()
            .filter(|_| kind != GiveUp::Dropped)
        {
            // A record the dead letter's buffer can never store (a disk buffer frames at
            // most 64 MiB; the error field adds to the record) is counted as failed here,
            // so it cannot make the buffer refuse the whole push.
            let mut unstorable = 0u64;
            let records: Vec<_> = entries
                .iter()
                .map(|e| with_error(e, &self.name, failure, attempts))
                .filter(|r| {
                    let refused = dl.writer.too_large(r).is_some();
                    unstorable += u64::from(refused);
                    !refused
                })
                .collect();
            let pushed = tokio::select! {
                biased;
                _ = self.deadline.cancelled() => {
                    tally.undelivered = n;
                    return tally;
                }
                r = dl.writer.push(records) => r,
            };
            match pushed {
                Ok(report) => {
                    let accepted = (report.accepted as u64).min(n);
                    tally.dead_lettered = accepted;
                    self.metrics.dead_lettered.increment(accepted);
                    lost = n - accepted;
                    fate = if lost == 0 {
                        format!("dead-lettered to '{}'", dl.name)
                    } else if unstorable == 0 {
                        format!(
                            "{accepted} dead-lettered to '{}', {lost} failed (refused by its full buffer)",
                            dl.name
                        )
                    } else {
                        format!(
                            "{accepted} dead-lettered to '{}', {lost} failed ({unstorable} larger than its buffer can store)",
                            dl.name
                        )
                    };
                }
                Err(e) => {
                    fate = format!(
                        "failed (dead letter output '{}' refused them: {e})",
                        dl.name
                    );
                }
            }
        }
        if lost > 0 {
            match kind {
                GiveUp::Dropped => {
                    tally.dropped = lost;
                    self.metrics.dropped.increment(lost);
                    metrics::counter!("firelane_output_drops_total", "output" => self.name.clone(), "reason" => failure.reason.clone())
                        .increment(lost);
                }
                GiveUp::Rejected | GiveUp::Failed => {
                    tally.failed = lost;
                    self.metrics.failed.increment(lost);
                }
            }
        }
        self.acks.ack(&entries);
        let what = match kind {
            GiveUp::Rejected => "record refused",
            GiveUp::Dropped => "record over a limit",
            GiveUp::Failed if failure.retryable => "giving up after retries,",
            GiveUp::Failed => "permanent error",
        };
        crate::warn_limited!(
            log_key("output_give_up", &self.name, &failure.reason),
            "output {}: {} {}: {}; {} records {} (attempts: {})",
            self.name,
            what,
            failure.reason,
            failure.message,
            n,
            fate,
            attempts
        );
        tally
    }
}

/// The record as it goes to the dead letter output: unchanged, plus why it got there.
fn with_error(
    entry: &Entry,
    output: &str,
    failure: &Failure,
    attempts: u32,
) -> crate::event::Record {
    let mut record = entry.record.clone();
    record.fields_mut().insert(
        ERROR_FIELD.to_owned(),
        json!({
            "output": output,
            "reason": failure.reason,
            // Error text may quote a URL with a token from ${VAR} in it.
            "message": crate::telemetry::redact(&failure.message),
            "attempts": Value::from(attempts),
        }),
    );
    record
}

/// `warn_limited!` keys must be `&'static str`; one leaked key per (kind, output, reason)
/// gives "once per reason per interval". Capped so a sink inventing reasons cannot leak.
fn log_key(kind: &'static str, output: &str, reason: &str) -> &'static str {
    const MAX_KEYS: usize = 512;
    type Keys = HashMap<(&'static str, String, String), &'static str>;
    static KEYS: OnceLock<Mutex<Keys>> = OnceLock::new();
    let mut keys = KEYS.get_or_init(Default::default).lock();
    let id = (kind, output.to_owned(), reason.to_owned());
    if let Some(k) = keys.get(&id) {
        return k;
    }
    if keys.len() >= MAX_KEYS {
        return kind;
    }
    let key: &'static str = Box::leak(format!("{kind}:{output}:{reason}").into_boxed_str());
    keys.insert(id, key);
    key
}

/// Sleeps `d`; `false` if the deadline came first.
async fn pause(deadline: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        biased;
        _ = deadline.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Outcome of offering one record to an open batch.
pub(crate) struct Offered<B> {
    /// The batch was full: this is it, closed; the record went into a fresh builder.
    pub sealed: Option<(B, Vec<Entry>, usize)>,
    /// The record was refused, and why.
    pub refused: Option<(Entry, Refusal)>,
    /// The record went in shortened to fit a per-record limit.
    pub truncated: bool,
}

/// Offers `entry` to `builder` (whose items are `entries`), rotating to a fresh builder
/// on `Full`. A fresh builder answering `Full` breaks the [`Push::Full`] contract (every
/// sink takes any record into an empty batch, or rejects it); offering again would loop
/// forever, so the record is refused as [`Refusal::Broken`]: an ERROR log, then dead
/// letter or `failed` like any rejection, never silently dropped.
pub(crate) fn offer<S: Sink>(
    sink: &S,
    partition: &S::Partition,
    builder: &mut S::Builder,
    entries: &mut Vec<Entry>,
    entry: Entry,
) -> Offered<BatchOf<S>> {
    let mut out = Offered {
        sealed: None,
        refused: None,
        truncated: false,
    };
    match builder.push(&entry.record) {
        Push::Added => entries.push(entry),
        Push::Truncated => {
            out.truncated = true;
            entries.push(entry);
        }
        Push::Rejected(reason) => out.refused = Some((entry, Refusal::Rejected(reason))),
        Push::Dropped(reason) => out.refused = Some((entry, Refusal::Dropped(reason))),
        Push::Full if builder.is_empty() => out.refused = Some((entry, Refusal::Broken)),
        Push::Full => {
            let old = std::mem::replace(builder, sink.new_batch(partition));
            let bytes = old.bytes();
            out.sealed = Some((old.finish(), std::mem::take(entries), bytes));
            match builder.push(&entry.record) {
                Push::Added => entries.push(entry),
                Push::Truncated => {
                    out.truncated = true;
                    entries.push(entry);
                }
                Push::Rejected(reason) => out.refused = Some((entry, Refusal::Rejected(reason))),
                Push::Dropped(reason) => out.refused = Some((entry, Refusal::Dropped(reason))),
                Push::Full => out.refused = Some((entry, Refusal::Broken)),
            }
        }
    }
    out
}

pub(crate) fn refused_failure(reason: &'static str) -> Failure {
    Failure::permanent(
        reason,
        format!("the sink cannot send this record ({reason})"),
    )
}

fn dropped_failure(reason: &'static str) -> Failure {
    Failure::permanent(
        reason,
        format!(
            "the record is over a per-record limit and the output's policy drops it ({reason})"
        ),
    )
}

/// Delivers one batch to the end: until every record is delivered, given up on, or the
/// shutdown deadline passes.
pub(crate) async fn deliver<S: Sink>(shared: Arc<Shared<S>>, job: JobOf<S>) -> OutputSummary {
    let mut tally = OutputSummary::default();
    let mut retry = shared.retry.start();
    let mut queue = VecDeque::from([job]);
    while let Some(mut job) = queue.pop_front() {
        loop {
            if shared.deadline.is_cancelled() {
                tally.undelivered += job.entries.len() as u64;
                tally.undelivered += queue.iter().map(|j| j.entries.len() as u64).sum::<u64>();
                return tally;
            }
            job.attempts = job.attempts.saturating_add(1);
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                _ = shared.deadline.cancelled() => None,
                r = shared.sink.send(&job.partition, &job.batch) => Some(r),
            };
            let Some(result) = result else {
                // The request may have reached the destination before the deadline cut
                // it: its records are not acknowledged (a disk buffer sends them again),
                // but neither are they reported lost.
                tally.unknown += job.entries.len() as u64;
                tally.undelivered += queue.iter().map(|j| j.entries.len() as u64).sum::<u64>();
                return tally;
            };
            shared
                .metrics
                .request_seconds
                .record(started.elapsed().as_secs_f64());
            match result {
                SendResult::Delivered => {
                    shared.metrics.batches.increment(1);
                    shared.metrics.bytes.increment(job.bytes as u64);
                    shared.health.success();
                    tally.sent += shared.delivered(&job.entries);
                    break;
                }
                SendResult::Failed(failure) => {
                    shared.health.failure(&failure.reason);
                    match retry.next(&failure) {
                        Some(delay) => {
                            shared.metrics.retried.increment(job.entries.len() as u64);
                            shared.warn_retry(&failure, job.entries.len(), job.attempts, delay);
                            if !pause(&shared.deadline, delay).await {
                                continue; // the deadline branch at the top counts them
                            }
                        }
                        None => {
                            let items = job
                                .entries
                                .into_iter()
                                .map(|e| (e, failure.clone()))
                                .collect();
                            tally += shared.give_up(items, job.attempts, GiveUp::Failed).await;
                            break;
                        }
                    }
                }
                SendResult::Partial(failures) => {
                    shared.metrics.batches.increment(1);
                    shared.metrics.bytes.increment(job.bytes as u64);
                    let n = job.entries.len();
                    let mut per_item: Vec<Option<Failure>> = vec![None; n];
                    for (i, f) in failures {
                        match per_item.get_mut(i) {
                            Some(slot) => *slot = Some(f),
                            None => crate::warn_limited!(
                                "output_partial_bad_index",
                                "output {}: sink reported a failure for item {} of a {}-item batch; ignored",
                                shared.name,
                                i,
                                n
                            ),
                        }
                    }
                    let mut ok = Vec::new();
                    let mut permanent = Vec::new();
                    let mut retryable = Vec::new();
                    for (entry, failure) in job.entries.into_iter().zip(per_item) {
                        match failure {
                            None => ok.push(entry),
                            Some(f) if f.retryable => retryable.push((entry, f)),
                            Some(f) => permanent.push((entry, f)),
                        }
                    }
                    if ok.is_empty() {
                        let reason = retryable
                            .first()
                            .or(permanent.first())
                            .map(|(_, f)| f.reason.as_str());
                        shared.health.failure(reason.unwrap_or("partial"));
                    } else {
                        shared.health.success();
                    }
                    tally.sent += shared.delivered(&ok);
                    tally += shared
                        .give_up(permanent, job.attempts, GiveUp::Failed)
                        .await;
                    if retryable.is_empty() {
                        break;
                    }
                    // The longest server hint among the failed items governs the pause.
                    let governing = retryable
                        .iter()
                        .map(|(_, f)| f)
                        .max_by_key(|f| f.retry_after)
                        .cloned()
                        .unwrap_or_else(|| Failure::retryable("partial", "partial failure"));
                    let Some(delay) = retry.next(&governing) else {
                        tally += shared
                            .give_up(retryable, job.attempts, GiveUp::Failed)
                            .await;
                        break;
                    };
                    shared.metrics.retried.increment(retryable.len() as u64);
                    shared.warn_retry(&governing, retryable.len(), job.attempts, delay);
                    let entries: Vec<Entry> = retryable.into_iter().map(|(e, _)| e).collect();
                    if !pause(&shared.deadline, delay).await {
                        tally.undelivered += entries.len() as u64;
                        tally.undelivered +=
                            queue.iter().map(|j| j.entries.len() as u64).sum::<u64>();
                        return tally;
                    }
                    let (mut rebuilt, refused) =
                        rebuild(&*shared.sink, &job.partition, entries, job.attempts);
                    tally += shared.refuse(refused, job.attempts).await;
                    // The retried records' batches are smaller than the one they came
                    // from: its charge covers them until they are done.
                    if let Some(first) = rebuilt.first_mut() {
                        first.memory = std::mem::replace(&mut job.memory, Reservation::empty());
                    }
                    for j in rebuilt.into_iter().rev() {
                        queue.push_front(j);
                    }
                    break;
                }
            }
        }
    }
    tally
}

/// Records a sink refused, with why.
type Refused = Vec<(Entry, Refusal)>;

/// Packs `entries` into as few fresh batches as the sink allows, in order.
fn rebuild<S: Sink>(
    sink: &S,
    partition: &S::Partition,
    entries: Vec<Entry>,
    attempts: u32,
) -> (Vec<JobOf<S>>, Refused) {
    let mut jobs = Vec::new();
    let mut refused = Vec::new();
    let mut builder = sink.new_batch(partition);
    let mut current = Vec::new();
    for entry in entries {
        let o = offer(sink, partition, &mut builder, &mut current, entry);
        if let Some((batch, entries, bytes)) = o.sealed {
            jobs.push(Job {
                partition: partition.clone(),
                batch,
                entries,
                bytes,
                attempts,
                memory: Reservation::empty(),
            });
        }
        if let Some(refusal) = o.refused {
            refused.push(refusal);
        }
    }
    if !current.is_empty() {
        let bytes = builder.bytes();
        jobs.push(Job {
            partition: partition.clone(),
            batch: builder.finish(),
            entries: current,
            bytes,
            attempts,
            memory: Reservation::empty(),
        });
    }
    (jobs, refused)
}
