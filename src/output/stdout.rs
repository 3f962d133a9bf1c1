//! `type = "stdout"`: JSON lines on standard output (the default output, and what ECS's
//! `awslogs` driver picks up from the router container).

pub(crate) mod config;

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::encode::Encoding;
use super::lines::{LinesBatch, LinesBatchBuilder, batch_pool};
use super::pool::BufferPool;
use super::sink::{BatchSettings, Failure, SendResult, Sink};

/// `[outputs.x] type = "stdout"` has no keys of its own.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct StdoutConfig {}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

pub(crate) struct StdoutSink {
    // Held across a whole batch so concurrent batches never interleave their lines.
    out: Mutex<Writer>,
    batch: BatchSettings,
    encoding: Arc<Encoding>,
    /// Batch buffers, reused from one batch to the next.
    pool: BufferPool,
}

impl StdoutSink {
    pub(crate) fn new(_config: &StdoutConfig, encoding: Encoding, batch: &BatchSettings) -> Self {
        Self::with_writer(Box::new(tokio::io::stdout()), encoding, batch)
    }

    /// Writes somewhere else (tests).
    pub(crate) fn with_writer(out: Writer, encoding: Encoding, batch: &BatchSettings) -> Self {
        StdoutSink {
            out: Mutex::new(out),
            batch: batch.clone(),
            encoding: Arc::new(encoding),
            pool: batch_pool(),
        }
    }
}

impl Sink for StdoutSink {
    type Builder = LinesBatchBuilder;
    /// One stream of records: every batch is alike.
    type Partition = ();

    fn partition(&self, _record: &crate::event::Record) -> Result<(), &'static str> {
        Ok(())
    }

    fn new_batch(&self, _partition: &()) -> LinesBatchBuilder {
        LinesBatchBuilder::new(&self.batch, self.encoding.clone(), &self.pool)
    }

    async fn send(&self, _partition: &(), batch: &LinesBatch) -> SendResult {
        let mut out = self.out.lock().await;
        let written = async {
            out.write_all(&batch.body).await?;
            out.flush().await
        }
        .await;
        match written {
            Ok(()) => SendResult::Delivered,
            Err(e) => SendResult::Failed(io_failure("stdout", &e)),
        }
    }
}

/// Local I/O errors: a reader that went away or missing permissions will not fix
/// themselves; anything else (disk full, EIO, …) is worth retrying with backoff.
pub(crate) fn io_failure(what: &str, e: &io::Error) -> Failure {
    let message = format!("{what}: {e}");
    match e.kind() {
        io::ErrorKind::BrokenPipe => Failure::permanent("broken_pipe", message),
        io::ErrorKind::PermissionDenied => Failure::permanent("permission_denied", message),
        _ => Failure::retryable("io_error", message),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::*;
    use crate::event::Record;
    use crate::output::core::{OutputContext, run};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl AsyncWrite for SharedBuf {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Short writes, to prove batches still never interleave.
            let n = buf.len().min(7);
            self.0.lock().extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_json_lines_with_tag_and_time() {
        let buf = SharedBuf::default();
        let batch = BatchSettings {
            max_records: 2,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        };
        let enc = Encoding {
            tag_key: Some("tag".into()),
            time_key: Some("time".into()),
        };
        let sink = Arc::new(StdoutSink::with_writer(Box::new(buf.clone()), enc, &batch));
        let (writer, reader) = crate::output::test_buffer();
        let records = (0..5)
            .map(|i| {
                let mut f = serde_json::Map::new();
                f.insert("log".into(), format!("line {i}").into());
                Record::new("web", 1_795_428_000_123_456_789 + i, f)
            })
            .collect();
        writer.push(records).await.unwrap();
        writer.close();
        let summary = run(OutputContext::new("stdout", batch), sink, reader).await;
        assert_eq!(summary.sent, 5);
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[0],
            r#"{"time":"2026-11-23T10:00:00.123456789Z","tag":"web","log":"line 0"}"#
        );
        assert_eq!(
            lines[4],
            r#"{"time":"2026-11-23T10:00:00.123456793Z","tag":"web","log":"line 4"}"#
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let f = io_failure("x", &io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!f.retryable);
        let f = io_failure("x", &io::Error::from(io::ErrorKind::StorageFull));
        assert!(f.retryable);
        assert_eq!(f.reason, "io_error");
    }
}
