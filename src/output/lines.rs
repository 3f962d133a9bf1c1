//! A batch of JSON lines, sized on the encoded bytes (what actually lands), shared by the
//! stdout, file and http sinks.

use std::sync::Arc;

use bytes::Bytes;

use super::encode::{Encoding, encode_with};
use super::sink::{BatchBuilder, BatchSettings, Push};
use crate::event::Record;

/// A finished batch: newline-terminated JSON objects.
#[derive(Clone, Debug)]
pub(crate) struct LinesBatch {
    pub body: Bytes,
}

pub(crate) struct LinesBatchBuilder {
    buf: Vec<u8>,
    len: usize,
    max_records: usize,
    max_bytes: usize,
    encoding: Arc<Encoding>,
}

impl LinesBatchBuilder {
    /// Zero limits are treated as 1 so a builder can always take something.
    pub(crate) fn new(settings: &BatchSettings, encoding: Arc<Encoding>) -> Self {
        LinesBatchBuilder {
            buf: Vec::new(),
            len: 0,
            max_records: settings.max_records.max(1),
            max_bytes: settings.max_bytes.max(1),
            encoding,
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
            body: Bytes::from(self.buf),
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
        let mut b = LinesBatchBuilder::new(&settings(2, 1 << 20), Arc::default());
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
        let mut b = LinesBatchBuilder::new(&settings(100, 30), Arc::default());
        assert_eq!(b.push(&rec("a")), Push::Added);
        assert_eq!(b.push(&rec("b")), Push::Added);
        assert_eq!(b.bytes(), 24);
        assert_eq!(b.push(&rec("c")), Push::Full);
        assert_eq!(b.bytes(), 24);
        assert_eq!(b.len(), 2);
        // Exactly at the limit still fits.
        let mut b = LinesBatchBuilder::new(&settings(100, 24), Arc::default());
        assert_eq!(b.push(&rec("a")), Push::Added);
        assert_eq!(b.push(&rec("b")), Push::Added);
    }

    // Issue #9: a record larger than max_bytes was acknowledged, then dropped as
    // `too_large`. It now fills a batch of its own.
    #[test]
    fn oversized_record_goes_alone_in_a_fresh_builder() {
        let mut b = LinesBatchBuilder::new(&settings(100, 16), Arc::default());
        assert_eq!(b.push(&rec("ok")), Push::Added);
        assert_eq!(b.push(&rec("this line is far too long")), Push::Full);
        assert_eq!(b.len(), 1, "a full builder is unchanged");
        let mut b = LinesBatchBuilder::new(&settings(100, 16), Arc::default());
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
        let mut b = LinesBatchBuilder::new(&settings(100, 1000), enc);
        assert_eq!(b.push(&rec("a")), Push::Added);
        assert_eq!(b.bytes(), "{\"tag\":\"t\",\"log\":\"a\"}\n".len());
    }
}
