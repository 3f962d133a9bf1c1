//! JSON lines, the one encoding every firelane output writes: one record object per line,
//! optionally with the tag and the event time added under user-chosen keys.

use std::io::Write;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::event::Record;

/// `tag_key` / `time_key`, common to every output.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Encoding {
    /// Add the record's tag under this key.
    pub tag_key: Option<String>,
    /// Add the event time (RFC 3339, UTC, nanoseconds) under this key.
    pub time_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("record cannot be encoded as JSON: {0}")]
pub(crate) struct EncodeError(#[from] serde_json::Error);

/// Appends `record` as one JSON object plus `\n` to `out`. The added keys come first. A
/// record that already has a field under `tag_key` / `time_key` keeps it (an EventBridge
/// event's own `time`, a `tag` the application logged): data is never overwritten by
/// metadata, the key is not added to that record, and a warning names the key once per
/// process. A line never holds a duplicate key. On error `out` is left as it was.
pub(crate) fn encode_json_line(
    record: &Record,
    tag_key: Option<&str>,
    time_key: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    // The common case, a forward record without added keys, skips serde: the same bytes,
    // written several times faster (see `packed::write_json`).
    if tag_key.is_none()
        && time_key.is_none()
        && let Some(body) = record.packed()
    {
        if crate::event::packed::write_json(body, out).is_some() {
            out.push(b'\n');
            return Ok(());
        }
        out.truncate(start);
    }
    let view = LineView {
        record,
        tag_key,
        time_key,
    };
    match serde_json::to_writer(&mut *out, &view) {
        Ok(()) => {
            out.push(b'\n');
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(EncodeError(e))
        }
    }
}

/// [`encode_json_line`] with an [`Encoding`].
pub(crate) fn encode_with(
    record: &Record,
    encoding: &Encoding,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_json_line(
        record,
        encoding.tag_key.as_deref(),
        encoding.time_key.as_deref(),
        out,
    )
}

/// Serializes the record map with the extra keys spliced in, without copying the map.
struct LineView<'a> {
    record: &'a Record,
    tag_key: Option<&'a str>,
    time_key: Option<&'a str>,
}

impl Serialize for LineView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let record = self.record;
        if let Some(k) = self.time_key {
            if record.contains_key(k) {
                warn_kept_once("time_key", k);
            } else {
                let mut buf = [0u8; 35];
                let n = format_rfc3339_nanos(self.record.time_ns, &mut buf);
                // Only ASCII digits and punctuation are written, so this cannot fail.
                let s = std::str::from_utf8(&buf[..n]).unwrap_or("1970-01-01T00:00:00.000000000Z");
                map.serialize_entry(k, s)?;
            }
        }
        if let Some(k) = self.tag_key
            && Some(k) != self.time_key
        {
            if record.contains_key(k) {
                warn_kept_once("tag_key", k);
            } else {
                map.serialize_entry(k, &*self.record.tag)?;
            }
        }
        // Only keys the record lacks were added above, so no field is skipped here. A packed
        // body is transcoded from msgpack straight into the output.
        record.serialize_fields(&mut map)?;
        map.end()
    }
}

/// Warns once per process and (option, key) that records already carry the field
/// `tag_key` / `time_key` names, so it is kept and the metadata not added. Called only for
/// such records; the lock is taken only then.
fn warn_kept_once(option: &'static str, key: &str) {
    static WARNED: parking_lot::Mutex<Vec<(&'static str, String)>> =
        parking_lot::const_mutex(Vec::new());
    let mut warned = WARNED.lock();
    if warned.iter().any(|(o, k)| *o == option && k == key) {
        return;
    }
    warned.push((option, key.to_owned()));
    tracing::warn!(
        option,
        key,
        "records already have a field {key:?}: it is kept as it is and {option} = {key:?} is not added to them (choose another {option} to have both)"
    );
}

/// Writes `2026-11-23T10:00:00.123456789Z` into `buf`, returns the length. Hand-rolled
/// because it runs once per record on the hot path and chrono's formatter allocates.
pub(crate) fn format_rfc3339_nanos(time_ns: i64, buf: &mut [u8; 35]) -> usize {
    let secs = time_ns.div_euclid(1_000_000_000);
    let nanos = time_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    // i64 nanoseconds span years 1677..2262, always four digits.
    let mut w = &mut buf[..];
    let _ = write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        y,
        m,
        d,
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        nanos
    );
    35 - w.len()
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's published algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(fields: serde_json::Value, time_ns: i64) -> Record {
        let serde_json::Value::Object(map) = fields else {
            panic!("object")
        };
        Record::new("app-firelens-1", time_ns, map)
    }

    fn fmt(ns: i64) -> String {
        let mut buf = [0u8; 35];
        let n = format_rfc3339_nanos(ns, &mut buf);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn time_format_matches_chrono() {
        for ns in [
            0i64,
            1,
            -1,
            1_795_428_000_123_456_789, // 2026-11-23T10:00:00.123456789Z
            951_782_400_000_000_000,   // 2000-02-29
            i64::MAX,
            i64::MIN,
            -86_400_000_000_001,
        ] {
            let dt = chrono::DateTime::from_timestamp(
                ns.div_euclid(1_000_000_000),
                ns.rem_euclid(1_000_000_000) as u32,
            )
            .unwrap();
            let want = dt.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            assert_eq!(fmt(ns), want, "ns={ns}");
        }
        assert_eq!(
            fmt(1_795_428_000_123_456_789),
            "2026-11-23T10:00:00.123456789Z"
        );
    }

    #[test]
    fn plain_line_keeps_order_and_number_text() {
        let r: Record = rec(
            serde_json::from_str(r#"{"b":1.50,"a":"x\ny","n":12345678901234567890}"#).unwrap(),
            0,
        );
        let mut out = Vec::new();
        encode_json_line(&r, None, None, &mut out).unwrap();
        assert_eq!(
            out,
            b"{\"b\":1.50,\"a\":\"x\\ny\",\"n\":12345678901234567890}\n"
        );
    }

    #[test]
    fn tag_and_time_keys_come_first_and_never_replace_fields() {
        let r = rec(json!({"log": "hi"}), 1_795_428_000_123_456_789);
        let mut out = b"prefix\n".to_vec();
        encode_json_line(&r, Some("tag"), Some("time"), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "prefix\n{\"time\":\"2026-11-23T10:00:00.123456789Z\",\"tag\":\"app-firelens-1\",\"log\":\"hi\"}\n"
        );
        // An EventBridge event's own `time` and a logged `tag` are the record's data: kept,
        // in place, and nothing is added under those keys.
        let r = rec(
            json!({"log": "hi", "tag": "old", "time": "2026-11-23T09:59:58Z"}),
            1_795_428_000_123_456_789,
        );
        let mut out = Vec::new();
        encode_json_line(&r, Some("tag"), Some("time"), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"log\":\"hi\",\"tag\":\"old\",\"time\":\"2026-11-23T09:59:58Z\"}\n"
        );
        // Only the clashing key is left out; the other is still added.
        let r = rec(json!({"time": 5}), 0);
        let mut out = Vec::new();
        encode_json_line(&r, Some("tag"), Some("time"), &mut out).unwrap();
        assert_eq!(out, b"{\"tag\":\"app-firelens-1\",\"time\":5}\n");
        let r = rec(
            json!({"log": "hi", "tag": "old", "time": 5}),
            1_795_428_000_123_456_789,
        );
        let enc = Encoding {
            tag_key: Some("t".into()),
            time_key: None,
        };
        let mut out = Vec::new();
        encode_with(&r, &enc, &mut out).unwrap();
        assert_eq!(
            out,
            b"{\"t\":\"app-firelens-1\",\"log\":\"hi\",\"tag\":\"old\",\"time\":5}\n"
        );
    }

    #[test]
    fn same_key_for_tag_and_time_is_written_once() {
        let r = rec(json!({"log": "hi"}), 0);
        let mut out = Vec::new();
        encode_json_line(&r, Some("k"), Some("k"), &mut out).unwrap();
        assert_eq!(
            out,
            b"{\"k\":\"1970-01-01T00:00:00.000000000Z\",\"log\":\"hi\"}\n"
        );
    }
}
