//! The unit that flows through firelane: a tagged, timestamped JSON object.
//!
//! # Representation
//!
//! A record's body is either the msgpack map a forward client sent, kept as bytes
//! ([`Record::from_packed`]: only maps the decoder found "plain", see [`packed`]), or a
//! tree of `serde_json` values (HTTP JSON input, forward records the decoder had to repair,
//! records changed after decoding). Both are behind a reference count, so cloning a record
//! for fan-out never copies its body. Readers use accessors that work on both: [`Record::get`]
//! for one top-level field (decodes only that field), [`Record::serialize_fields`] to write
//! the body through any serde serializer (JSON lines are transcoded straight from msgpack),
//! [`Record::fields`] for the whole tree. Writers use [`Record::fields_mut`], which turns a
//! packed body into a tree once.

pub(crate) mod packed;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde_json::Value;

/// Top-level fields of a record, in arrival order.
pub(crate) type Fields = serde_json::Map<String, serde_json::Value>;

/// Fixed bytes a packed record holds besides its body and tag: the `Record` itself where it
/// is stored (a buffer's queue, a batch), the allocator's rounding of the body allocation and
/// the shared header `Bytes` allocates on the first clone, plus [`HOLDING_OVERHEAD`].
const PACKED_OVERHEAD: usize = 112 + HOLDING_OVERHEAD;

/// What holding one record costs a memory buffer and a delivery core beside the `Record`
/// itself (56 bytes): its queue slot's sequence, size and group (`Queued` is 80 bytes), the
/// queue's and the batches' spare capacity (a `VecDeque` or `Vec` grows by doubling, so
/// up to as much again), and its entry in the in-flight map once read (24 bytes plus
/// control byte, at most 7/8 full). Left out, these were ~9 MiB of a 32 MiB budget's
/// burst that the budget did not see (glibc's `mallinfo2`, issue #10).
const HOLDING_OVERHEAD: usize = 64;

/// One log record or event.
///
/// `time_ns` is nanoseconds since the Unix epoch (UTC). The body is the record as JSON
/// outputs write it; patterns match against it. Two records are equal when tag, time and
/// fields are, whatever their representation.
#[derive(Clone)]
pub struct Record {
    pub(crate) tag: Arc<str>,
    pub(crate) time_ns: i64,
    body: Body,
}

#[derive(Clone)]
enum Body {
    /// A plain msgpack map exactly as received (its own allocation, copied out of the
    /// request so that a record never pins the rest of a frame: see `Record::from_packed`).
    Packed(Bytes),
    /// A tree: HTTP JSON input, repaired forward records, or after a mutation.
    Tree(Arc<Fields>),
}

impl Record {
    /// A record with a tree body.
    pub fn new(tag: impl Into<Arc<str>>, time_ns: i64, fields: Fields) -> Self {
        Record {
            tag: tag.into(),
            time_ns,
            body: Body::Tree(Arc::new(fields)),
        }
    }

    /// A record whose body is the plain msgpack map `map` (see [`packed`]); `None` when it
    /// is not one (then decode it to a tree instead). The check walks the bytes once.
    pub(crate) fn from_packed(tag: impl Into<Arc<str>>, time_ns: i64, map: Bytes) -> Option<Self> {
        (packed::scan_map(&map, 0) == Some(map.len())).then(|| Record {
            tag: tag.into(),
            time_ns,
            body: Body::Packed(map),
        })
    }

    /// [`Record::from_packed`] for bytes the caller has just checked with `scan_map`.
    pub(crate) fn from_checked_packed(tag: Arc<str>, time_ns: i64, map: Bytes) -> Self {
        Record {
            tag,
            time_ns,
            body: Body::Packed(map),
        }
    }

    /// The msgpack map of a packed record (`None` for a tree body).
    pub(crate) fn packed(&self) -> Option<&Bytes> {
        match &self.body {
            Body::Packed(b) => Some(b),
            Body::Tree(_) => None,
        }
    }

    /// One top-level field, without decoding the rest of the record (nor, for a string,
    /// copying it).
    pub(crate) fn get(&self, key: &str) -> Option<FieldRef<'_>> {
        match &self.body {
            Body::Tree(t) => t.get(key).map(FieldRef::Tree),
            Body::Packed(b) => packed::Entries::new(b)
                .find(|(k, _)| *k == key)
                .map(|(_, v)| FieldRef::Packed(v)),
        }
    }

    /// Whether the record has a top-level field `key` (decodes nothing).
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        match &self.body {
            Body::Tree(t) => t.contains_key(key),
            Body::Packed(b) => packed::Entries::new(b).any(|(k, _)| k == key),
        }
    }

    /// Number of top-level fields.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match &self.body {
            Body::Tree(t) => t.len(),
            Body::Packed(b) => packed::len(b),
        }
    }

    /// Top-level field names, in order.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<&str> {
        match &self.body {
            Body::Tree(t) => t.keys().map(String::as_str).collect(),
            Body::Packed(b) => packed::Entries::new(b).map(|(k, _)| k).collect(),
        }
    }

    /// The whole body as a tree: borrowed for a tree body, decoded (one allocation per key,
    /// string and number) for a packed one. For slow paths and tests.
    pub fn fields(&self) -> Cow<'_, Fields> {
        match &self.body {
            Body::Tree(t) => Cow::Borrowed(t),
            Body::Packed(b) => Cow::Owned(packed::to_fields(b)),
        }
    }

    /// The fields among `keys` (sorted) the record has: the whole tree, borrowed, for a tree
    /// body; for a packed one, only those fields decoded. What a pattern match reads.
    pub(crate) fn select(&self, keys: &[Box<str>]) -> Cow<'_, Fields> {
        match &self.body {
            Body::Tree(t) => Cow::Borrowed(t),
            Body::Packed(b) => Cow::Owned(
                packed::Entries::new(b)
                    .filter(|(k, _)| keys.binary_search_by(|x| (**x).cmp(k)).is_ok())
                    .map(|(k, v)| (k.to_owned(), packed::to_value(v)))
                    .collect(),
            ),
        }
    }

    /// Adds the string fields of `adds` that the record does not have yet (a key it has
    /// keeps its value; of keys repeated within `adds` the first wins), at the end, in
    /// order. A packed body stays packed: its msgpack is copied once with the entries
    /// appended instead of being decoded to a tree, which is what FireLens metadata on
    /// every record would otherwise cost. Returns how many fields were added.
    pub(crate) fn append_str_fields(&mut self, adds: &[(&str, &str)]) -> usize {
        let mut new: Vec<(&str, &str)> = Vec::with_capacity(adds.len());
        for &(k, v) in adds {
            if !self.contains_key(k) && !new.iter().any(|(n, _)| *n == k) {
                new.push((k, v));
            }
        }
        if new.is_empty() {
            return 0;
        }
        if let Body::Packed(b) = &self.body
            && let Some(map) = packed::append_str_entries(b, &new)
        {
            self.body = Body::Packed(Bytes::from(map));
            return new.len();
        }
        let fields = self.fields_mut();
        for (k, v) in &new {
            fields.insert((*k).to_owned(), Value::String((*v).to_owned()));
        }
        new.len()
    }

    /// The body for changing it in place: a packed body is decoded to a tree once; a tree
    /// shared with clones of this record is copied first (copy on write), so a change never
    /// shows in another output's copy.
    pub(crate) fn fields_mut(&mut self) -> &mut Fields {
        if let Body::Packed(b) = &self.body {
            self.body = Body::Tree(Arc::new(packed::to_fields(b)));
        }
        match &mut self.body {
            Body::Tree(t) => Arc::make_mut(t),
            // A packed body was replaced by its tree just above.
            Body::Packed(_) => unreachable!("packed body was just decoded"),
        }
    }

    /// Writes every top-level field, in order, as entries of `map` (a packed body is
    /// transcoded from msgpack; see [`packed`] for why the output is the tree's, byte for
    /// byte).
    pub(crate) fn serialize_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        match &self.body {
            Body::Tree(t) => {
                for (k, v) in t.iter() {
                    map.serialize_entry(k.as_str(), v)?;
                }
            }
            Body::Packed(b) => {
                for (k, v) in packed::Entries::new(b) {
                    map.serialize_entry(k, &packed::PackedValue(v))?;
                }
            }
        }
        Ok(())
    }

    /// Bytes the record holds, for the memory budget and buffer sizes.
    ///
    /// A packed record: its body bytes and tag plus a fixed overhead (the body is one
    /// allocation of its own, so this is close to exact). A tree: string bytes plus a fixed
    /// overhead per value, which tracks real heap use closely enough for admission control
    /// without walking allocator state. A body shared by clones is counted by each clone:
    /// outputs release their copies independently.
    pub(crate) fn approx_size(&self) -> usize {
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
        match &self.body {
            Body::Packed(b) => PACKED_OVERHEAD + self.tag.len() + b.len(),
            Body::Tree(t) => {
                64 + HOLDING_OVERHEAD
                    + self.tag.len()
                    + t.iter()
                        .map(|(k, v)| k.len() + 16 + value_size(v))
                        .sum::<usize>()
            }
        }
    }
}

/// A borrowed view of one top-level field (see [`Record::get`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum FieldRef<'a> {
    /// A value of a tree body.
    Tree(&'a Value),
    /// The msgpack bytes of one value of a packed body.
    Packed(&'a [u8]),
}

impl<'a> FieldRef<'a> {
    /// The value if it is a string.
    pub(crate) fn as_str(&self) -> Option<&'a str> {
        match self {
            FieldRef::Tree(v) => v.as_str(),
            FieldRef::Packed(b) => packed::as_str(b),
        }
    }

    /// The value as a tree (decoded for a packed body).
    pub(crate) fn to_value(self) -> Cow<'a, Value> {
        match self {
            FieldRef::Tree(v) => Cow::Borrowed(v),
            FieldRef::Packed(b) => Cow::Owned(packed::to_value(b)),
        }
    }
}

impl serde::Serialize for FieldRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldRef::Tree(v) => v.serialize(s),
            FieldRef::Packed(b) => packed::PackedValue(b).serialize(s),
        }
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.tag == other.tag
            && self.time_ns == other.time_ns
            && match (&self.body, &other.body) {
                (Body::Packed(a), Body::Packed(b)) if a == b => true,
                _ => self.fields() == other.fields(),
            }
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("tag", &self.tag)
            .field("time_ns", &self.time_ns)
            .field("packed", &matches!(self.body, Body::Packed(_)))
            .field("fields", &self.fields())
            .finish()
    }
}

/// Current time as nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_nanos().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packed_record() -> Record {
        let mut b = Vec::new();
        crate::input::forward::client::encode_json_record(
            &mut b,
            json!({"log": "line", "n": 1}).as_object().unwrap(),
        );
        Record::from_packed("t", 5, Bytes::from(b)).unwrap()
    }

    /// Fan-out clones share the body; a change made through one clone (a processor adding a
    /// field) never shows in another output's copy.
    #[test]
    fn clones_share_and_changes_copy_on_write() {
        let a = packed_record();
        let mut b = a.clone();
        assert_eq!(
            a.packed().map(|p| p.as_ptr()),
            b.packed().map(|p| p.as_ptr())
        );
        b.fields_mut().insert("added".into(), json!(true));
        assert!(b.packed().is_none());
        assert_eq!(b.keys(), ["log", "n", "added"]);
        assert_eq!(a.keys(), ["log", "n"]);
        let mut c = b.clone();
        c.fields_mut().shift_remove("log");
        assert_eq!(b.keys(), ["log", "n", "added"]);
        assert_eq!(c.keys(), ["n", "added"]);
        assert_eq!(a.get("log").and_then(|v| v.as_str()), Some("line"));
    }

    /// Appending string fields keeps a packed body packed and plain, and gives the record
    /// the tree path gives (same fields in the same order): also across the fixmap → map16
    /// header boundary, with a key the record has (kept) and a key repeated in the adds
    /// (first wins), and on a tree body.
    #[test]
    fn append_str_fields_keeps_packed_bodies_packed() {
        for keys in [2usize, 14, 15, 16, 70_000] {
            let mut m = serde_json::Map::new();
            for i in 0..keys {
                m.insert(format!("k{i}"), json!(i));
            }
            m.insert("log".into(), json!("line"));
            let mut b = Vec::new();
            crate::input::forward::client::encode_json_record(&mut b, &m);
            let mut p = Record::from_packed("t", 5, Bytes::from(b)).expect("plain");
            let mut t = Record::new("t", 5, m.clone());
            let adds = [
                ("ecs_cluster", "prod"),
                ("log", "not this"),
                ("ecs_task_id", "abc"),
                ("ecs_cluster", "nor this"),
            ];
            assert_eq!(p.append_str_fields(&adds), 2, "{keys} keys");
            assert_eq!(t.append_str_fields(&adds), 2);
            let map = p.packed().expect("still packed").clone();
            assert_eq!(packed::scan_map(&map, 0), Some(map.len()), "plain");
            assert_eq!(p, t, "{keys} keys");
            let order = |r: &Record| r.fields().keys().cloned().collect::<Vec<_>>();
            assert_eq!(order(&p), order(&t));
            assert_eq!(p.get("log").and_then(|v| v.as_str()), Some("line"));
            assert_eq!(p.get("ecs_cluster").and_then(|v| v.as_str()), Some("prod"));
            assert_eq!(p.append_str_fields(&adds), 0, "nothing left to add");
        }
    }

    #[test]
    fn equality_ignores_representation() {
        let p = packed_record();
        let t = Record::new("t", 5, p.fields().into_owned());
        assert_eq!(p, t);
        assert_ne!(p, Record::new("t", 6, p.fields().into_owned()));
        assert!(Record::from_packed("t", 0, Bytes::from_static(&[0x91, 0xc0])).is_none());
    }

    /// A packed record's size is its own bytes plus a fixed overhead: the budget counts what
    /// the body allocation holds, and far less than the tree the same record used to be.
    #[test]
    fn approx_size_of_a_packed_record_counts_its_bytes() {
        let p = packed_record();
        let len = p.packed().unwrap().len();
        assert_eq!(p.approx_size(), PACKED_OVERHEAD + 1 + len);
        assert!(p.approx_size() < Record::new("t", 5, p.fields().into_owned()).approx_size());
        // PACKED_OVERHEAD holds the record itself, up to 16 bytes of allocator rounding and
        // the 32-byte shared header `Bytes` allocates on the first clone.
        assert!(std::mem::size_of::<Record>() + 16 + 32 <= PACKED_OVERHEAD);
    }
}
