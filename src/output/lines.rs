//! A batch of JSON lines, sized on the encoded bytes (what actually lands), shared by the
//! stdout, file and http sinks.
//!
//! A batch's buffer is sized for a full batch from the start and, once the batch is sent
//! and dropped, goes back to its sink's [`BufferPool`] for the next one: growing a fresh
//! buffer by doubling copied each batch twice over, and faulted in every page of it
//! (see [`super::pool`]).

use std::sync::Arc;

use bytes::Bytes;

use super::pool::BufferPool;

use super::encode::{Encoding, encode_with};
use super::sink::{BatchBuilder, BatchSettings, Push};
use crate::event::Record;

/// A finished batch: newline-terminated JSON objects.
#[derive(Clone, Debug)]
pub(crate) struct LinesBatch {
    pub body: Bytes,
}

/// Room past `max_bytes` in a batch buffer for the line that finds the batch full (it is
/// encoded, then cut off again): lines up to this size never make the buffer grow.
const LINE_SLACK: usize = 64 * 1024;

/// Batch buffers larger than this are not kept for reuse: what a pool holds is outside
/// the memory budget, so it stays small (at most [`POOLED`] of these per sink).
const POOLED_MAX_BYTES: usize = 4 * 1024 * 1024 + LINE_SLACK;

/// Spare buffers a sink keeps: one for the batch being filled while another is sent.
const POOLED: usize = 2;

/// The pool of batch buffers a lines sink keeps.
pub(crate) fn batch_pool() -> BufferPool {
    BufferPool::new(POOLED, POOLED_MAX_BYTES)
}

pub(crate) struct LinesBatchBuilder {
    buf: Vec<u8>,
    len: usize,
    max_records: usize,
    max_bytes: usize,
    encoding: Arc<Encoding>,
    pool: BufferPool,
}

impl LinesBatchBuilder {
    /// Zero limits are treated as 1 so a builder can always take something. The buffer
    /// comes from `pool` and goes back to it when the finished batch is dropped.
    pub(crate) fn new(
        settings: &BatchSettings,
        encoding: Arc<Encoding>,
        pool: &BufferPool,
    ) -> Self {
        let max_bytes = settings.max_bytes.max(1);
        // Not more than the pool keeps: a larger limit grows the buffer as lines come.
        let capacity = (max_bytes + LINE_SLACK).min(POOLED_MAX_BYTES);
        LinesBatchBuilder {
            buf: pool.take(capacity),
            len: 0,
            max_records: settings.max_records.max(1),
            max_bytes,
            encoding,
            pool: pool.clone(),
        }
    }
}

impl BatchBuilder for LinesBatchBuilder {
    type Batch = LinesBatch;

    fn push(&mut self, record: &Record) -> Push {
        if self.len >= self.max_records {
            return Push::Full;
        }
        let start = self.buf.len();
        if encode_with(record, &self.encoding, &mut self.buf).is_err() {
            return Push::Rejected("unencodable");
        }
        // A line larger than `max_bytes` goes out as a batch of its own: the limit shapes
        // batches, it is no reason to drop a record an input has acknowledged.
        if self.buf.len() > self.max_bytes && self.len > 0 {
            self.buf.truncate(start);
            return Push::Full;
        }
        self.len += 1;
        Push::Added
    }

    fn len(&self) -> usize {
        self.len
    }

    fn bytes(&self) -> usize {
        self.buf.len()
    }

    fn finish(self) -> LinesBatch {
        LinesBatch {
            body: if self.buf.len() < self.buf.capacity() / 4 {
                // A batch sealed early (by `max_age`, or to relieve memory) keeps only
                // what it holds: the budget counts its length, not the full-size buffer.
                let body = Bytes::copy_from_slice(&self.buf);
                self.pool.give(self.buf);
                body
            } else {
                self.pool.bytes(self.buf)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(max_records: usize, max_bytes: usize) -> BatchSettings {
        BatchSettings {
            max_records,
            max_bytes,
            max_age: Duration::from_secs(1),
        }
    }

    fn rec(log: &str) -> Record {
        let mut f = serde_json::Map::new();
        f.insert("log".into(), log.into());
        Record::new("t", 0, f)
    }

    #[test]
    fn full_on_record_count() {
        let mut b = LinesBatchBuilder::new(&settings(2, 1 << 20), Arc::default(), &batch_pool());
        assert_eq!(b.push(&rec("a")), Push::Added);
        assert_eq!(b.push(&rec("b")), Push::Added);
        assert_eq!(b.push(&rec("c")), Push::Full);
        assert_eq!(b.len(), 2);
        let batch = b.finish();
        assert_eq!(&batch.body[..], b"{\"log\":\"a\"}\n{\"log\":\"b\"}\n");
    }

    #[test]
    fn full_on_encoded_bytes_and_state_unchanged() {
        // Each line is 12 bytes: {"log":"a"}\n
        let mut b = LinesBatchBuilder::new(&settings(100, 30), Arc::default(), &batch_pool());
        assert_eq!(b.push(&rec("a")), Push::Added);
        assert_eq!(b.push(&rec("b")), Push::Added);
        assert_eq!(b.bytes(), 24);
        assert_eq!(b.push(&rec("c")), Push::Full);
        assert_eq!(b.bytes(), 24);
        assert_eq!(b.len(), 2);
        // Exactly at the limit still fits.
        let mut b = LinesBatchBuilder::new(&settings(100, 24), Arc::default(), &batch_pool());
        assert_eq!(b.push(&rec("a")), Push::Added);
        assert_eq!(b.push(&rec("b")), Push::Added);
    }

    // Issue #9: a record larger than max_bytes was acknowledged, then dropped as
    // `too_large`. It now fills a batch of its own.
    #[test]
    fn oversized_record_goes_alone_in_a_fresh_builder() {
        let mut b = LinesBatchBuilder::new(&settings(100, 16), Arc::default(), &batch_pool());
        assert_eq!(b.push(&rec("ok")), Push::Added);
        assert_eq!(b.push(&rec("this line is far too long")), Push::Full);
        assert_eq!(b.len(), 1, "a full builder is unchanged");
        let mut b = LinesBatchBuilder::new(&settings(100, 16), Arc::default(), &batch_pool());
        assert_eq!(b.push(&rec("this line is far too long")), Push::Added);
        assert_eq!(b.push(&rec("ok")), Push::Full, "nothing joins it");
        let batch = b.finish();
        assert_eq!(
            &batch.body[..],
            b"{\"log\":\"this line is far too long\"}\n"
        );
    }

    #[test]
    fn encoding_keys_count_towards_bytes() {
        let enc = Arc::new(Encoding {
            tag_key: Some("tag".into()),
            time_key: None,
        });
        let mut b = LinesBatchBuilder::new(&settings(100, 1000), enc, &batch_pool());
        assert_eq!(b.push(&rec("a")), Push::Added);
        assert_eq!(b.bytes(), "{\"tag\":\"t\",\"log\":\"a\"}\n".len());
    }

    #[test]
    fn a_sent_batch_buffer_is_reused_by_the_next_batch() {
        let pool = batch_pool();
        let mut b = LinesBatchBuilder::new(&settings(100, 1 << 20), Arc::default(), &pool);
        assert!(
            b.buf.capacity() >= (1 << 20) + LINE_SLACK,
            "sized for a full batch"
        );
        // Over a quarter of the buffer: the batch's bytes are the buffer itself.
        let long = "a".repeat(300_000);
        b.push(&rec(&long));
        let first = b.finish();
        let ptr = first.body.as_ptr();
        let retry = first.clone();
        drop(first);
        assert_eq!(pool.spare(), 0, "a clone still holds the bytes");
        assert_eq!(retry.body.len(), long.len() + 11);
        drop(retry);
        assert_eq!(pool.spare(), 1);
        let mut b = LinesBatchBuilder::new(&settings(100, 1 << 20), Arc::default(), &pool);
        assert_eq!(pool.spare(), 0);
        assert_eq!(b.bytes(), 0, "a reused buffer starts empty");
        let other = "b".repeat(300_000);
        b.push(&rec(&other));
        let second = b.finish();
        assert_eq!(second.body.as_ptr(), ptr, "the same allocation");
        assert_eq!(
            &second.body[..],
            format!("{{\"log\":\"{other}\"}}\n").as_bytes()
        );
    }

    /// A batch sealed with little in it (by `max_age`) must not hold a full-size buffer
    /// that the memory budget, counting its length, does not see.
    #[test]
    fn a_small_batch_keeps_only_its_bytes_and_frees_the_buffer_at_once() {
        let pool = batch_pool();
        let mut b = LinesBatchBuilder::new(&settings(100, 1 << 20), Arc::default(), &pool);
        b.push(&rec("a"));
        let batch = b.finish();
        assert_eq!(&batch.body[..], b"{\"log\":\"a\"}\n");
        assert_eq!(
            pool.spare(),
            1,
            "the buffer went back while the batch is alive"
        );
        let b = LinesBatchBuilder::new(&settings(100, 1 << 20), Arc::default(), &pool);
        assert_ne!(b.buf.as_ptr(), batch.body.as_ptr());
        assert_eq!(
            &batch.body[..],
            b"{\"log\":\"a\"}\n",
            "untouched by the next batch"
        );
    }

    #[test]
    fn the_pool_keeps_few_and_small_buffers_and_outlives_nothing() {
        let pool = batch_pool();
        // Four builders at once, each with a buffer of its own.
        let builders: Vec<LinesBatchBuilder> = (0..4)
            .map(|_| LinesBatchBuilder::new(&settings(100, 1 << 10), Arc::default(), &pool))
            .collect();
        for mut b in builders {
            b.push(&rec("x"));
            drop(b.finish());
        }
        assert_eq!(pool.spare(), POOLED, "at most {POOLED} spare");
        // A limit past what the pool keeps: the buffer grows as needed and is let go.
        let big = batch_pool();
        let mut b = LinesBatchBuilder::new(&settings(100, 64 << 20), Arc::default(), &big);
        let long = "y".repeat(POOLED_MAX_BYTES);
        assert_eq!(b.push(&rec(&long)), Push::Added);
        drop(b.finish());
        assert_eq!(big.spare(), 0, "too large to keep");
        // Batches outliving their sink's pool just free their bytes.
        let gone = batch_pool();
        let mut b = LinesBatchBuilder::new(&settings(100, 1 << 10), Arc::default(), &gone);
        b.push(&rec("z"));
        let batch = b.finish();
        drop(gone);
        assert_eq!(&batch.body[..], b"{\"log\":\"z\"}\n");
    }
}
