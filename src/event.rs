//! The unit that flows through firelane: a tagged, timestamped JSON object.

use std::sync::Arc;

/// Top-level fields of a record, in arrival order.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// One log record or event.
///
/// `fields` is the record body as it will be written by JSON outputs. Patterns match against it.
/// `time_ns` is nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub tag: Arc<str>,
    pub time_ns: i64,
    pub fields: Fields,
}

impl Record {
    pub fn new(tag: impl Into<Arc<str>>, time_ns: i64, fields: Fields) -> Self {
        Record {
            tag: tag.into(),
            time_ns,
            fields,
        }
    }

    /// Rough in-memory footprint, used for the memory budget and buffer sizes.
    /// It counts string bytes plus a fixed overhead per value, which tracks real
    /// heap use closely enough for admission control without walking allocator state.
    pub fn approx_size(&self) -> usize {
        fn value_size(v: &serde_json::Value) -> usize {
            use serde_json::Value::*;
            32 + match v {
                Null | Bool(_) => 0,
                Number(n) => n.as_str().len(),
                String(s) => s.len(),
                Array(a) => a.iter().map(value_size).sum(),
                Object(o) => o.iter().map(|(k, v)| k.len() + 16 + value_size(v)).sum(),
            }
        }
        64 + self.tag.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + 16 + value_size(v))
                .sum::<usize>()
    }
}

/// Current time as nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_nanos().min(i64::MAX as u128) as i64
}
