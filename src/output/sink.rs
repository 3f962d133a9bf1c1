//! The contract between the shared delivery core (batching, retries, acks, dead letters,
//! metrics) and each destination. A sink only knows how to pack records into its own
//! request shape within its API limits, and how to send one request.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, SystemTime};

use crate::event::Record;

/// Batch limits a user configured (`batch = { max_records, max_bytes, max_age }`).
/// Sinks clamp them to their API's hard limits.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSettings {
    /// Records per batch at most.
    pub max_records: usize,
    /// Measured on the bytes that land (encoded, and compressed where the sink compresses).
    pub max_bytes: usize,
    /// How long the oldest record of a batch may wait before the batch is sent.
    pub max_age: Duration,
}

/// What happened when a record was offered to a batch.
#[derive(Debug, PartialEq)]
pub enum Push {
    /// The record is in the batch.
    Added,
    /// The record is in the batch but had to be shortened to fit a per-record limit.
    Truncated,
    /// The batch cannot take this record; send the batch, then offer it to a fresh one.
    /// A fresh, empty builder must never answer `Full`.
    Full,
    /// The record can never be sent by this sink (e.g. unencodable). No user policy chose
    /// this and the record was acknowledged: it goes to the dead letter output with this
    /// reason (a short `snake_case` label) attached, else it is counted as `failed`.
    Rejected(&'static str),
    /// The record is over a per-record limit and a policy the user chose says to drop it
    /// (Firehose `oversize = "drop"`): counted as `dropped` and in
    /// `firelane_output_drops_total{reason}`, never dead-lettered.
    Dropped(&'static str),
}

/// Packs records into one request, enforcing the destination's limits by construction.
pub trait BatchBuilder: Send + 'static {
    /// What [`BatchBuilder::finish`] produces and [`Sink::send`] sends (a request body).
    type Batch: Send + Sync + 'static;
    /// Offer a record. Items are numbered in the order they were `Added`/`Truncated`,
    /// starting at 0; [`SendResult::Partial`] refers to those numbers.
    fn push(&mut self, record: &Record) -> Push;
    /// Number of records added.
    fn len(&self) -> usize;
    /// Whether no record was added.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes as they will land (after compression where applicable), for metrics.
    fn bytes(&self) -> usize;
    /// A wall-clock instant at which this batch must be sent even if not full
    /// (clock-aligned S3 windows). `None`: only `max_age` applies.
    fn flush_at(&self) -> Option<SystemTime> {
        None
    }
    /// Closes the batch for sending.
    fn finish(self) -> Self::Batch;
}

/// Why a request (or one item of it) failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Retrying may succeed (throttling, 5xx, timeouts, connection errors).
    pub retryable: bool,
    /// Server-supplied delay hint (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Short `snake_case` label for metrics and dead letters, e.g. `throttled`, `access_denied`.
    pub reason: String,
    /// Human-readable detail for the log line.
    pub message: String,
}

impl Failure {
    pub(crate) fn retryable(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            retryable: true,
            retry_after: None,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub(crate) fn permanent(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            retryable: false,
            retry_after: None,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Result of sending one batch.
#[derive(Debug, PartialEq)]
pub enum SendResult {
    /// Every item delivered.
    Delivered,
    /// Some items failed; every item not listed was delivered. The core retries only the
    /// listed retryable items (in a new batch) and dead-letters the permanent ones.
    Partial(Vec<(usize, Failure)>),
    /// Nothing was delivered.
    Failed(Failure),
}

/// One destination. The core is generic over `S: Sink`, so no boxing on the hot path.
pub trait Sink: Send + Sync + 'static {
    /// The batch builder of this destination, made by [`Sink::new_batch`].
    type Builder: BatchBuilder;
    /// What separates batches: records with different partitions never share one. A typed
    /// value rather than a rendered string, so that sinks without partitions (`()`) pay
    /// nothing per record and sinks with several names keep them apart (CloudWatch Logs:
    /// group and stream). `Debug` is how it appears in log lines.
    type Partition: Hash + Eq + Clone + Debug + Send + Sync + 'static;

    /// The partition of `record` (S3: the object key without `{uuid}`/`{index}`,
    /// CloudWatch Logs: group and stream). `Err(reason)` drops the record (e.g. a template
    /// field that renders an invalid stream name).
    fn partition(&self, record: &Record) -> Result<Self::Partition, &'static str>;

    /// A fresh, empty batch for `partition`.
    fn new_batch(&self, partition: &Self::Partition) -> Self::Builder;

    /// Bytes an open builder holds whatever its records (compressor state, buffers): the
    /// core charges it against the memory budget while the batch is open, so many open
    /// partitions cannot grow past `runtime.memory_limit`. Default 0 (nothing notable).
    fn open_batch_overhead(&self) -> usize {
        0
    }

    /// Send one batch. Called again with the same batch to retry a whole-batch failure,
    /// so it must not consume it.
    fn send(
        &self,
        partition: &Self::Partition,
        batch: &<Self::Builder as BatchBuilder>::Batch,
    ) -> impl Future<Output = SendResult> + Send;
}
