//! Inputs: network listeners that turn bytes into [`Record`]s and hand them to the router.

use crate::event::Record;

pub(crate) mod ack;
pub(crate) mod dedupe;
pub(crate) mod drain;
pub mod forward;
pub(crate) mod http;
pub(crate) mod json;
pub(crate) mod registry;
pub(crate) mod sns_envelope;
pub(crate) mod sqs;
pub(crate) mod tcp;

/// Where an input hands its records. Bound to one input name; the router behind it
/// fans records out to every matching output buffer.
#[async_trait::async_trait]
pub trait Ingest: Send + Sync + 'static {
    /// Routes and enqueues `records`. Resolves `Ok` only once every target buffer has
    /// accepted them (for disk buffers: written and synced per the fsync policy), so the
    /// caller may acknowledge the client afterwards. While buffers are full (`when_full =
    /// "block"`) this future does not resolve: that is the back-pressure signal. Callers
    /// that cannot wait (HTTP) wrap it in a timeout.
    async fn ingest(&self, records: Vec<Record>) -> Result<(), IngestError>;

    /// Like [`Ingest::ingest`], with the request's acknowledgement travelling along:
    /// resolves once the records were *taken* (back-pressure is over; the caller may read
    /// on), while `ack` is settled when they are *safe* (see [`ack`]), possibly later, by a
    /// stage that holds records back. An `Err` here means nothing was taken and `ack` was
    /// failed with the same error.
    ///
    /// Default: plain routing buffers records before `ingest` resolves, so `ack` is settled
    /// with its result.
    async fn ingest_acked(
        &self,
        records: Vec<Record>,
        ack: ack::AckToken,
    ) -> Result<(), IngestError> {
        let result = self.ingest(records).await;
        ack.settle(&result);
        result
    }

    /// Like [`Ingest::ingest_acked`], with memory the caller reserved for these records
    /// (a forward connection's decoding reservation): the router's memory buffers draw
    /// from it before the shared budget, so the records stay counted while they wait for
    /// their buffers ([`crate::buffer::budget::Credit`]). Whatever is left of it is given
    /// back when this resolves.
    ///
    /// Default: `held` is given back first and the records go through `ingest_acked`.
    async fn ingest_reserved(
        &self,
        records: Vec<Record>,
        ack: ack::AckToken,
        held: crate::buffer::budget::Reservation,
    ) -> Result<(), IngestError> {
        drop(held);
        self.ingest_acked(records, ack).await
    }
}

/// Why records could not be taken. Inputs map each kind to their protocol's answer (HTTP:
/// 503 + `Retry-After` for the transient kinds, 413 for [`IngestError::TooLarge`]; forward:
/// no ack) and count it with a `kind` label.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IngestError {
    /// Back-pressure: the buffers did not accept in time. Transient; the client retries.
    #[error("buffers are full")]
    Full,
    /// The router is stopping and takes no more records. Transient for the client: another
    /// replica, or this one after its restart, takes the retry.
    #[error("router is shutting down")]
    ShuttingDown,
    /// A record no configured output can ever take (larger than every limit that applies).
    /// Refused before the acknowledgement, never dropped after it.
    #[error("record of {bytes} bytes is larger than output {output} can take ({limit} bytes)")]
    TooLarge {
        /// The record's size (approximate in-memory size), in bytes.
        bytes: usize,
        /// The smallest limit that applies, in bytes.
        limit: usize,
        /// The output whose limit it is.
        output: String,
    },
    /// A disk buffer's filesystem is full. Transient: space returns as outputs deliver.
    #[error("disk full: output {output}'s buffer cannot write")]
    DiskFull {
        /// The output whose disk buffer cannot write.
        output: String,
    },
    /// A buffer failed for another reason (I/O error); the message says which and why.
    #[error("output {output}'s buffer failed: {reason}")]
    Buffer {
        /// The output whose buffer failed.
        output: String,
        /// The buffer's error, as text.
        reason: String,
    },
}

impl IngestError {
    /// Short `snake_case` label for metrics (`kind="..."`).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            IngestError::Full => "full",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::DiskFull { .. } => "disk_full",
            IngestError::Buffer { .. } => "buffer_error",
        }
    }
}
