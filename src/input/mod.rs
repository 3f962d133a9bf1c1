//! Inputs: network listeners that turn bytes into [`Record`]s and hand them to the router.

use crate::event::Record;

pub mod forward;
pub mod http;

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
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IngestError {
    #[error("buffers are full")]
    Full,
    #[error("router is shutting down")]
    ShuttingDown,
}
