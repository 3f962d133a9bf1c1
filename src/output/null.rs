//! `type = "null"`: accepts everything and discards it. Every record counts as sent,
//! which makes it the baseline for throughput tests of the rest of the pipeline.

pub(crate) mod config;

use super::sink::{BatchBuilder, BatchSettings, Push, SendResult, Sink};
use crate::event::Record;

pub(crate) struct NullSink {
    max_records: usize,
}

impl NullSink {
    pub(crate) fn new(batch: &BatchSettings) -> Self {
        NullSink {
            max_records: batch.max_records.max(1),
        }
    }
}

pub(crate) struct NullBatchBuilder {
    len: usize,
    max_records: usize,
}

impl BatchBuilder for NullBatchBuilder {
    /// How many records the batch held.
    type Batch = usize;

    fn push(&mut self, _record: &Record) -> Push {
        if self.len >= self.max_records {
            return Push::Full;
        }
        self.len += 1;
        Push::Added
    }

    fn len(&self) -> usize {
        self.len
    }

    fn bytes(&self) -> usize {
        0
    }

    fn finish(self) -> usize {
        self.len
    }
}

impl Sink for NullSink {
    type Builder = NullBatchBuilder;
    /// One stream of records: every batch is alike.
    type Partition = ();

    fn partition(&self, _record: &Record) -> Result<(), &'static str> {
        Ok(())
    }

    fn new_batch(&self, _partition: &()) -> NullBatchBuilder {
        NullBatchBuilder {
            len: 0,
            max_records: self.max_records,
        }
    }

    async fn send(&self, _partition: &(), _batch: &usize) -> SendResult {
        SendResult::Delivered
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::output::core::{OutputContext, run};

    #[tokio::test(start_paused = true)]
    async fn counts_everything_as_sent() {
        let batch = BatchSettings {
            max_records: 100,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        };
        let (writer, reader) = crate::output::test_buffer();
        let records = (0..1000)
            .map(|_| Record::new("t", 0, serde_json::Map::new()))
            .collect();
        writer.push(records).await.unwrap();
        writer.close();
        let summary = run(
            OutputContext::new("null", batch.clone()),
            Arc::new(NullSink::new(&batch)),
            reader,
        )
        .await;
        assert_eq!(summary.sent, 1000);
        assert_eq!(summary.failed + summary.dropped + summary.undelivered, 0);
    }
}
