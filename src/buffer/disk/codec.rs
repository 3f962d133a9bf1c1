//! Record payload codec for disk segments.
//!
//! Layout: `[u8 version][u32 LE tag length][tag bytes][i64 LE time_ns][body]`, where the
//! version says what the body is:
//! - 1: the fields as JSON (records with a tree body). serde_json with `arbitrary_precision`
//!   and `preserve_order` keeps numbers' literal text and keys' order. Trees stay JSON because
//!   JSON input may hold numbers msgpack cannot carry (`1e400`, 30-digit integers).
//! - 2: the record's msgpack map as received (records with a packed body): written and read
//!   back without a conversion, and checked again on read (a corrupted body is an error, it
//!   never becomes a packed record that is not plain).
//!
//! A record read back equals the one written, in the same representation. Segments written
//! by builds that knew only version 1 read as before. Decoding never trusts a length from
//! the file; every error is a value, never a panic.

use bytes::Bytes;

use crate::event::{Fields, Record};

/// Tree body as JSON.
const VERSION_JSON: u8 = 1;
/// Packed body as msgpack.
const VERSION_MSGPACK: u8 = 2;
/// version + tag length + time.
const FIXED: usize = 1 + 4 + 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("payload too short ({0} bytes)")]
    Short(usize),
    #[error("unknown payload version {0}")]
    Version(u8),
    #[error("tag length {0} exceeds payload")]
    TagLength(u32),
    #[error("tag is not valid UTF-8")]
    TagUtf8,
    #[error("fields are not a JSON object: {0}")]
    Fields(String),
}

/// Appends the encoded record to `out`.
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) {
    let tag = record.tag.as_bytes();
    let packed = record.packed();
    out.reserve(FIXED + tag.len() + packed.map_or_else(|| record.approx_size(), Bytes::len));
    out.push(if packed.is_some() {
        VERSION_MSGPACK
    } else {
        VERSION_JSON
    });
    // A tag longer than 4 GiB cannot come through any input; clamp instead of panicking.
    let tag = &tag[..tag.len().min(u32::MAX as usize)];
    out.extend_from_slice(&(tag.len() as u32).to_le_bytes());
    out.extend_from_slice(tag);
    out.extend_from_slice(&record.time_ns.to_le_bytes());
    match packed {
        Some(body) => out.extend_from_slice(body),
        None => {
            // Serialising a Map<String, Value> into a Vec cannot fail (no I/O, string keys
            // only).
            if serde_json::to_writer(&mut *out, &*record.fields()).is_err() {
                out.extend_from_slice(b"{}");
            }
        }
    }
}

pub(crate) fn decode(payload: &[u8]) -> Result<Record, DecodeError> {
    if payload.len() < FIXED {
        return Err(DecodeError::Short(payload.len()));
    }
    let version = payload[0];
    if version != VERSION_JSON && version != VERSION_MSGPACK {
        return Err(DecodeError::Version(version));
    }
    let tag_len = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
    let rest = &payload[5..];
    let tag_end = tag_len as usize;
    if rest.len() < tag_end.saturating_add(8) {
        return Err(DecodeError::TagLength(tag_len));
    }
    let tag = std::str::from_utf8(&rest[..tag_end]).map_err(|_| DecodeError::TagUtf8)?;
    let mut time = [0u8; 8];
    time.copy_from_slice(&rest[tag_end..tag_end + 8]);
    let body = &rest[tag_end + 8..];
    let time_ns = i64::from_le_bytes(time);
    if version == VERSION_MSGPACK {
        return Record::from_packed(tag, time_ns, Bytes::copy_from_slice(body))
            .ok_or_else(|| DecodeError::Fields("body is not a plain msgpack map".to_owned()));
    }
    let fields: Fields =
        serde_json::from_slice(body).map_err(|e| DecodeError::Fields(e.to_string()))?;
    Ok(Record::new(tag, time_ns, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(fields: serde_json::Value) -> Record {
        let serde_json::Value::Object(map) = fields else {
            unreachable!("test input is an object")
        };
        Record::new("app-firelens-1234", -5, map)
    }

    fn round_trip(r: &Record) -> Record {
        let mut buf = Vec::new();
        encode(r, &mut buf);
        decode(&buf).unwrap()
    }

    #[test]
    fn round_trip_keeps_numbers_order_and_unicode() {
        let text = r#"{"z":1,"a":18446744073709551616123,"f":1.10,"e":1e400,"s":"héllo \u0000 ✓","n":null,"o":{"b":[1,2.50,{"c":true}]}}"#;
        let fields: Fields = serde_json::from_str(text).unwrap();
        let r = Record::new("t", i64::MAX, fields);
        let back = round_trip(&r);
        assert_eq!(back, r);
        // Literal number text survives (arbitrary_precision), key order too (preserve_order).
        assert_eq!(
            serde_json::to_string(&*back.fields()).unwrap(),
            serde_json::to_string(&*r.fields()).unwrap()
        );
        assert!(
            serde_json::to_string(&*back.fields())
                .unwrap()
                .contains("2.50")
        );
        let keys: Vec<_> = back.keys();
        assert_eq!(keys, ["z", "a", "f", "e", "s", "n", "o"]);
    }

    #[test]
    fn empty_tag_and_fields() {
        let r = Record::new("", 0, Fields::new());
        assert_eq!(round_trip(&r), r);
        let r = record(json!({"log": "x"}));
        assert_eq!(round_trip(&r), r);
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let mut buf = Vec::new();
        encode(&record(json!({"log": "hello"})), &mut buf);
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&buf[..5]), Err(DecodeError::Short(5)));
        let mut v = buf.clone();
        v[0] = 9;
        assert_eq!(decode(&v), Err(DecodeError::Version(9)));
        let mut v = buf.clone();
        v[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&v), Err(DecodeError::TagLength(u32::MAX)));
        let mut v = buf.clone();
        v[5] = 0xff;
        assert_eq!(decode(&v), Err(DecodeError::TagUtf8));
        assert!(matches!(
            decode(&buf[..buf.len() - 1]),
            Err(DecodeError::Fields(_))
        ));
        let mut v = buf[..FIXED + 17].to_vec();
        v.extend_from_slice(b"[1,2]");
        assert!(matches!(decode(&v), Err(DecodeError::Fields(_))));
    }

    /// A payload exactly as the build before version 2 wrote it (version 1, JSON body)
    /// still reads: segments on disk survive an upgrade.
    #[test]
    fn version_1_payload_from_the_previous_build_reads() {
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&3u32.to_le_bytes());
        v1.extend_from_slice(b"app");
        v1.extend_from_slice(&1_700_000_000_000_000_007i64.to_le_bytes());
        v1.extend_from_slice(br#"{"log":"hello","n":1.50,"o":{"a":[1]}}"#);
        let r = decode(&v1).unwrap();
        assert_eq!(&*r.tag, "app");
        assert_eq!(r.time_ns, 1_700_000_000_000_000_007);
        assert!(r.packed().is_none());
        assert_eq!(
            serde_json::to_string(&*r.fields()).unwrap(),
            r#"{"log":"hello","n":1.50,"o":{"a":[1]}}"#
        );
        // A tree record is still written as version 1, byte for byte as before.
        let mut again = Vec::new();
        encode(&r, &mut again);
        assert_eq!(again, v1);
    }

    fn packed_record() -> Record {
        let mut body = Vec::new();
        crate::input::forward::client::encode_json_record(
            &mut body,
            json!({"log": "hé\u{1}", "n": -3, "f": 0.5, "o": {"a": [true, null]}})
                .as_object()
                .unwrap(),
        );
        Record::from_packed("svc", 42, bytes::Bytes::from(body)).unwrap()
    }

    #[test]
    fn packed_records_are_stored_as_msgpack_and_stay_packed() {
        let r = packed_record();
        let mut buf = Vec::new();
        encode(&r, &mut buf);
        assert_eq!(buf[0], VERSION_MSGPACK);
        assert!(buf.ends_with(r.packed().unwrap()));
        let back = decode(&buf).unwrap();
        assert_eq!(back.packed(), r.packed());
        assert_eq!(back, r);
    }

    #[test]
    fn a_corrupt_msgpack_body_is_an_error() {
        let mut buf = Vec::new();
        encode(&packed_record(), &mut buf);
        // Cut short, and a body that is valid msgpack but not a plain map (a bin value).
        assert!(matches!(
            decode(&buf[..buf.len() - 1]),
            Err(DecodeError::Fields(_))
        ));
        let mut v = buf[..FIXED + 3].to_vec();
        v.extend_from_slice(&[0x81, 0xa1, b'a', 0xc4, 1, b'x']);
        assert!(matches!(decode(&v), Err(DecodeError::Fields(_))));
    }

    proptest::proptest! {
        /// Any payload (a torn or corrupt segment) decodes to an error or to a record
        /// that survives its own round trip; it never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(r) = decode(&bytes) {
                proptest::prop_assert_eq!(round_trip(&r), r);
            }
        }

        #[test]
        fn round_trip_strings(tag in ".{0,20}", key in ".{0,10}", val in ".{0,40}", t in proptest::prelude::any::<i64>()) {
            let mut f = Fields::new();
            f.insert(key, serde_json::Value::String(val));
            let r = Record::new(tag, t, f);
            proptest::prop_assert_eq!(round_trip(&r), r);
        }
    }
}
