//! One complete forward request (a msgpack object cut by [`super::frame`]) → records.
//!
//! Decoding works on borrowed bytes with a small cursor instead of building a generic msgpack
//! value tree first. A record map that is plain msgpack (see [`crate::event::packed`]) is kept
//! as its bytes: one allocation per record. Any other map is converted to a JSON tree, with the
//! repairs and counters described on [`Stats`].

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

use rmp::Marker;
use serde_json::{Map, Number, Value};

use super::frame::object_len;
use super::metrics::ErrorKind;
use bytes::Bytes;

use crate::event::{Fields, Record, packed};

/// Nesting limit for record values (the record map itself is level 1). Deeper records are
/// skipped (`bad_record`) rather than risking deep recursion on hostile input.
pub(crate) const MAX_DEPTH: usize = 64;

/// zstd window limit (2^23 = 8 MiB). A frame header may ask for a window of up to 2 GiB,
/// which the decoder would allocate up front; real senders use far smaller windows.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A request that must be refused (its framing is broken: wrong shape, undecodable payload),
/// or, inside [`decode_request`], one entry that is skipped (kinds `bad_time`, `bad_entry`,
/// `bad_record`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub(crate) struct DecodeError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl DecodeError {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        DecodeError {
            kind,
            detail: detail.into(),
        }
    }
}

fn bad_request(detail: impl Into<String>) -> DecodeError {
    DecodeError::new(ErrorKind::BadRequest, detail)
}

fn bad_time(detail: impl Into<String>) -> DecodeError {
    DecodeError::new(ErrorKind::BadTime, detail)
}

fn bad_entry(detail: impl Into<String>) -> DecodeError {
    DecodeError::new(ErrorKind::BadEntry, detail)
}

fn bad_record(detail: impl Into<String>) -> DecodeError {
    DecodeError::new(ErrorKind::BadRecord, detail)
}

fn truncated() -> DecodeError {
    DecodeError::new(ErrorKind::MalformedMsgpack, "truncated or invalid msgpack")
}

/// Counts of things that did not stop the request. Each skipped entry is counted once, under
/// the first reason found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Records (or tags) that contained non-UTF-8 strings, kept with U+FFFD.
    pub invalid_utf8: u64,
    /// Records kept with map keys that were neither strings nor integers (nil, a boolean, a
    /// float, a container, an ext value), each key replaced by its JSON text as Fluent Bit
    /// writes it (`"null"`, `"true"`, `"1.5"`, `"[1,2]"`). Counted once per record.
    pub bad_keys: u64,
    /// Entries skipped for their record: not a map, nesting beyond [`MAX_DEPTH`].
    pub bad_records: u64,
    /// Entries skipped for their time: not an integer, float, EventTime or msgpack
    /// Timestamp; negative; beyond year 2262 (the i64 nanosecond range).
    pub bad_times: u64,
    /// Entries that are not `[time, record]` / `[[time, metadata], record]`.
    pub bad_entries: u64,
    /// Fluent Bit group start/end markers skipped.
    pub markers: u64,
    /// Why the first entry of each kind was skipped (for the log line), so the line for
    /// one kind never shows another kind's reason.
    pub bad_time_reason: Option<String>,
    pub bad_record_reason: Option<String>,
    pub bad_entry_reason: Option<String>,
}

impl Stats {
    /// Counts one skipped entry under the kind of `e`.
    fn skipped(&mut self, e: DecodeError) {
        let (count, reason) = match e.kind {
            ErrorKind::BadTime => (&mut self.bad_times, &mut self.bad_time_reason),
            ErrorKind::BadRecord => (&mut self.bad_records, &mut self.bad_record_reason),
            _ => (&mut self.bad_entries, &mut self.bad_entry_reason),
        };
        *count += 1;
        reason.get_or_insert(e.detail);
    }

    /// Entries skipped, all kinds.
    #[cfg(test)]
    pub(crate) fn skipped_entries(&self) -> u64 {
        self.bad_records + self.bad_times + self.bad_entries
    }

    /// Skipped entries of one kind (`bad_time`, `bad_record`, `bad_entry`) with the reason
    /// of the first of them; `(0, None)` for any other kind.
    pub(crate) fn skips(&self, kind: ErrorKind) -> (u64, Option<&str>) {
        match kind {
            ErrorKind::BadTime => (self.bad_times, self.bad_time_reason.as_deref()),
            ErrorKind::BadRecord => (self.bad_records, self.bad_record_reason.as_deref()),
            ErrorKind::BadEntry => (self.bad_entries, self.bad_entry_reason.as_deref()),
            _ => (0, None),
        }
    }
}

/// What the request asked for besides its records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// A `nil` heartbeat: nothing to ingest, nothing to answer.
    pub heartbeat: bool,
    /// Byte range (within the frame) of the `chunk` option value, in its original msgpack
    /// encoding, so the ack can echo it byte for byte.
    pub chunk: Option<Range<usize>>,
    /// `fluent_signal` of a skipped metrics/traces request.
    pub skipped_signal: Option<i64>,
    /// Records appended to the output vector.
    pub records: usize,
}

/// Decoding limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `max_decompressed`: the most a PackedForward payload may inflate to, in bytes
    /// (`decompressed_too_large` beyond it).
    pub max_decompressed_bytes: usize,
    /// The most memory decoding one request may use, in bytes: its inflated payload plus
    /// the [`Record::approx_size`] of every record decoded so far. Decoding stops as soon as
    /// the cost passes it (error kind `too_large`, nothing kept), so a request of 3-byte
    /// entries that each become a ~140-byte record cannot outgrow the memory reserved
    /// for it. `usize::MAX` for no cap.
    pub max_decoded_bytes: usize,
}

/// The request's decoded cost passed [`Limits::max_decoded_bytes`].
fn over_cost(cap: usize) -> DecodeError {
    DecodeError::new(
        ErrorKind::TooLarge,
        format!("decoding the request needs more than {cap} bytes of memory"),
    )
}

/// The tag of a connection's previous request, shared with the next one when its bytes are
/// the same. In Message mode every record is a request of its own and clients send one tag
/// over and over (Docker's fluentd driver, FireLens), so this saves an allocation, a free
/// and a UTF-8 check per record. An invalid UTF-8 tag is never cached: each request that
/// has one is counted (`invalid_utf8`).
#[derive(Default)]
pub(crate) struct TagCache(Option<Arc<str>>);

impl TagCache {
    /// The tag for the string bytes `b`: the cached one if equal, else a new one (its
    /// invalid UTF-8 replaced with U+FFFD and counted in `stats`).
    fn tag(&mut self, b: &[u8], stats: &mut Stats) -> Arc<str> {
        if let Some(t) = &self.0
            && t.as_bytes() == b
        {
            return t.clone();
        }
        match packed::utf8_str(b) {
            // One allocation, straight into the `Arc`, not a `String` copied into one.
            Some(s) => {
                let t: Arc<str> = Arc::from(s);
                self.0 = Some(t.clone());
                t
            }
            None => {
                stats.invalid_utf8 += 1;
                Arc::from(String::from_utf8_lossy(b))
            }
        }
    }
}

/// Decodes one request, appending its records to `out`.
///
/// An entry that is well-formed msgpack but cannot be used (bad time, a record that is not
/// a usable map, an entry that is not `[time, record]`) is skipped and counted in `stats`;
/// the rest of the request is kept and the request stays acknowledgeable. A client resending
/// an unacked request would resend the same bad entry forever, duplicating its neighbours.
///
/// A request whose framing is broken (wrong shape, bad option types, an undecodable or
/// truncated payload) is an error, and then nothing of it is kept: `out` and `stats` are
/// left as they were, so the caller neither ingests part of it nor acks it. `now_ns`
/// replaces a time of 0.
pub(crate) fn decode_request(
    frame: &[u8],
    limits: &Limits,
    now_ns: i64,
    tags: &mut TagCache,
    out: &mut Vec<Record>,
    stats: &mut Stats,
) -> Result<Request, DecodeError> {
    let start_len = out.len();
    let stats_before = stats.clone();
    let result = decode_into(frame, limits, now_ns, tags, out, stats);
    if result.is_err() {
        out.truncate(start_len);
        *stats = stats_before;
    }
    result
}

fn decode_into(
    frame: &[u8],
    limits: &Limits,
    now_ns: i64,
    tags: &mut TagCache,
    out: &mut Vec<Record>,
    stats: &mut Stats,
) -> Result<Request, DecodeError> {
    let start_len = out.len();
    let mut cur = Cursor::new(frame);
    let len = match cur.next()? {
        Item::Nil => {
            return Ok(Request {
                heartbeat: true,
                ..Request::default()
            });
        }
        Item::Array(n) => n,
        other => {
            return Err(bad_request(format!(
                "request is {}, not an array",
                other.name()
            )));
        }
    };
    if !(2..=4).contains(&len) {
        return Err(bad_request(format!(
            "request array has {len} elements, expected 2 to 4"
        )));
    }
    let tag: Arc<str> = match cur.next()? {
        Item::Str(b) => tags.tag(b, stats),
        other => {
            return Err(bad_request(format!(
                "tag is {}, not a string",
                other.name()
            )));
        }
    };
    let second = cur.pos;
    let mode = Mode::of(cur.peek()?, len)?;
    let elements_before_option = match mode {
        Mode::Message => 3,
        Mode::Forward | Mode::Packed => 2,
    };
    if len < elements_before_option || len > elements_before_option + 1 {
        return Err(bad_request(format!(
            "{} mode request with {len} elements",
            mode.name()
        )));
    }

    // The option map comes last but decides how to read what precedes it (compression,
    // signal), so read it first by skipping over the body.
    let options = if len > elements_before_option {
        for _ in 1..elements_before_option {
            cur.skip()?;
        }
        read_options(&mut cur)?
    } else {
        Options::default()
    };
    let mut request = Request {
        chunk: options.chunk.clone(),
        ..Request::default()
    };
    if options.signal != 0 {
        request.skipped_signal = Some(options.signal);
        return Ok(request);
    }

    cur.pos = second;
    let mut sink = Sink {
        tag,
        now_ns,
        out,
        stats,
        cost: 0,
        cap: limits.max_decoded_bytes,
    };
    match mode {
        Mode::Message => {
            let start = cur.pos;
            if let Err(e) = read_time(&mut cur, now_ns).and_then(|t| sink.entry(t, &mut cur)) {
                // The frame is complete msgpack, so both elements can be stepped over.
                cur.pos = start;
                cur.skip()?;
                cur.skip()?;
                sink.stats.skipped(e);
            }
            sink.within_cap()?;
        }
        Mode::Forward => {
            let Item::Array(n) = cur.next()? else {
                return Err(bad_request("forward entries are not an array"));
            };
            for _ in 0..n {
                sink.array_entry(&mut cur)?;
                sink.within_cap()?;
            }
        }
        Mode::Packed => {
            let payload = match cur.next()? {
                Item::Str(b) | Item::Bin(b) => b,
                _ => return Err(bad_request("packed entries are not str or bin")),
            };
            let entries = inflate(payload, limits)?;
            if let Cow::Owned(inflated) = &entries {
                // The inflated payload lives until the last entry is decoded.
                sink.cost = inflated.capacity();
            }
            let mut inner = Cursor::new(&entries);
            while inner.pos < entries.len() {
                // Entries are concatenated with nothing between them. Any complete msgpack
                // object that is not `[time, record]` is one unusable entry (skipped as
                // `bad_entry`, exactly as in Forward mode); only bytes that are not msgpack
                // (a reserved marker, an object cut short) break the framing.
                sink.array_entry(&mut inner)?;
                sink.within_cap()?;
            }
        }
    }
    request.records = out.len() - start_len;
    Ok(request)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Message,
    Forward,
    Packed,
}

impl Mode {
    /// The spec decides the mode by the type of the second element (an array: Forward; a
    /// string or bin: PackedForward; otherwise a time: Message). A second element that is no
    /// valid time (nil, a boolean, a map, a string in a 4-element request, which only Message
    /// mode has) is still a Message: its one entry is skipped as `bad_time` and its chunk
    /// acked, as for any other unusable entry. A 3-element request with a string second is
    /// read as PackedForward (its third element may be the option map holding the chunk).
    fn of(byte: u8, len: u32) -> Result<Mode, DecodeError> {
        Ok(match Marker::from_u8(byte) {
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64
            | Marker::F32
            | Marker::F64
            // Any ext is a time (EventTime, msgpack Timestamp); an unknown one is then
            // a bad time for that one entry, not a broken request.
            | Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32
            | Marker::Null
            | Marker::True
            | Marker::False
            | Marker::FixMap(_)
            | Marker::Map16
            | Marker::Map32 => Mode::Message,
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => Mode::Forward,
            Marker::FixStr(_)
            | Marker::Str8
            | Marker::Str16
            | Marker::Str32
            | Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32 => {
                if len == 4 {
                    Mode::Message
                } else {
                    Mode::Packed
                }
            }
            Marker::Reserved => {
                return Err(bad_request(
                    "second element is neither a time, entries nor a payload",
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Message => "Message",
            Mode::Forward => "Forward",
            Mode::Packed => "PackedForward",
        }
    }
}

#[derive(Debug, Default)]
struct Options {
    chunk: Option<Range<usize>>,
    signal: i64,
}

fn read_options(cur: &mut Cursor<'_>) -> Result<Options, DecodeError> {
    let mut options = Options::default();
    let n = match cur.next()? {
        Item::Nil => return Ok(options),
        Item::Map(n) => n,
        other => {
            return Err(bad_request(format!(
                "option is {}, not a map",
                other.name()
            )));
        }
    };
    for _ in 0..n {
        let key_start = cur.pos;
        let key = match cur.next()? {
            Item::Str(k) => k,
            _ => {
                cur.pos = key_start;
                cur.skip()?;
                cur.skip()?;
                continue;
            }
        };
        match key {
            b"chunk" => {
                let start = cur.pos;
                match cur.next()? {
                    Item::Str(_) | Item::Bin(_) => options.chunk = Some(start..cur.pos),
                    other => {
                        return Err(bad_request(format!(
                            "chunk is {}, not a string",
                            other.name()
                        )));
                    }
                }
            }
            // Advisory only: the payload's magic bytes decide (see `inflate`).
            b"compressed" => match cur.next()? {
                Item::Str(_) => {}
                other => {
                    return Err(bad_request(format!(
                        "compressed is {}, not a string",
                        other.name()
                    )));
                }
            },
            b"fluent_signal" => match cur.next()? {
                Item::UInt(v) => options.signal = i64::try_from(v).unwrap_or(i64::MAX),
                Item::Int(v) => options.signal = v,
                other => {
                    return Err(bad_request(format!(
                        "fluent_signal is {}, not an integer",
                        other.name()
                    )));
                }
            },
            _ => cur.skip()?,
        }
    }
    Ok(options)
}

/// Decompresses a PackedForward payload as its magic bytes say, whatever the `compressed`
/// option claims (Fluent Bit does the same). No magic means uncompressed: an uncompressed
/// payload starts with an entry array marker, which can never be taken for either magic.
///
/// Inflating also stops at [`Limits::max_decoded_bytes`] (kind `too_large`) when that is
/// the smaller cap: the inflated bytes are memory the request uses.
fn inflate<'a>(payload: &'a [u8], limits: &Limits) -> Result<Cow<'a, [u8]>, DecodeError> {
    let cost_cap = limits.max_decoded_bytes;
    let cap = limits.max_decompressed_bytes.min(cost_cap);
    let inflated = if payload.starts_with(&[0x1f, 0x8b]) {
        // Multi-member: fluentd may concatenate several gzip members in one payload.
        read_capped(flate2::read::MultiGzDecoder::new(payload), cap, "gzip")
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut decoder = zstd::stream::read::Decoder::with_buffer(payload)
            .map_err(|e| DecodeError::new(ErrorKind::DecompressFailed, format!("zstd: {e}")))?;
        decoder
            .window_log_max(ZSTD_WINDOW_LOG_MAX)
            .map_err(|e| DecodeError::new(ErrorKind::DecompressFailed, format!("zstd: {e}")))?;
        read_capped(decoder, cap, "zstd")
    } else {
        return Ok(Cow::Borrowed(payload));
    };
    match inflated {
        Ok(v) => Ok(Cow::Owned(v)),
        Err(e)
            if e.kind == ErrorKind::DecompressedTooLarge && cap < limits.max_decompressed_bytes =>
        {
            Err(over_cost(cost_cap))
        }
        Err(e) => Err(e),
    }
}

/// Reads everything from `reader`, failing as soon as the output would exceed `cap`. The
/// output vector never grows beyond `cap`, so a decompression bomb costs at most `cap` bytes
/// and the time to inflate them.
fn read_capped(mut reader: impl Read, cap: usize, what: &str) -> Result<Vec<u8>, DecodeError> {
    const STEP: usize = 64 * 1024;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; STEP];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DecodeError::new(
                    ErrorKind::DecompressFailed,
                    format!("{what}: {e}"),
                ));
            }
        };
        let needed = out.len() + n;
        if needed > cap {
            return Err(DecodeError::new(
                ErrorKind::DecompressedTooLarge,
                format!("{what} payload inflates beyond {cap} bytes"),
            ));
        }
        if needed > out.capacity() {
            let grow_to = (out.capacity() * 2).max(needed).min(cap);
            out.reserve_exact(grow_to - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

enum Time {
    Ns(i64),
    /// Fluent Bit group start/end marker: internal, not a log event.
    Marker,
}

/// Fluent Bit writes group markers as EventTime seconds -1 / -2 (as u32).
const GROUP_MARKERS: [u32; 2] = [0xFFFF_FFFF, 0xFFFF_FFFE];

fn secs_to_ns(secs: u64, nanos: u64, now_ns: i64) -> Result<Time, DecodeError> {
    if secs == 0 && nanos == 0 {
        return Ok(Time::Ns(now_ns));
    }
    secs.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(nanos))
        .and_then(|ns| i64::try_from(ns).ok())
        .map(Time::Ns)
        .ok_or_else(|| bad_time(format!("time {secs}s is out of range")))
}

/// msgpack's standard Timestamp extension (ext type -1), which msgpack libraries write for
/// their native time types (msgpack spec, "Timestamp extension type"):
/// - timestamp 32 (fixext4): uint32 seconds;
/// - timestamp 64 (fixext8): uint64 with nanoseconds in the upper 30 bits and seconds in the
///   lower 34;
/// - timestamp 96 (ext8, length 12): uint32 nanoseconds, then int64 seconds.
fn timestamp_ext(b: &[u8], now_ns: i64) -> Result<Time, DecodeError> {
    let (secs, nanos): (i64, u32) = match *b {
        [s0, s1, s2, s3] => (i64::from(u32::from_be_bytes([s0, s1, s2, s3])), 0),
        [b0, b1, b2, b3, b4, b5, b6, b7] => {
            let v = u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
            // 34 bits always fit in i64; 30 bits always fit in u32.
            ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
        }
        [n0, n1, n2, n3, s0, s1, s2, s3, s4, s5, s6, s7] => (
            i64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            u32::from_be_bytes([n0, n1, n2, n3]),
        ),
        _ => {
            return Err(bad_time(format!(
                "msgpack Timestamp of {} bytes (expected 4, 8 or 12)",
                b.len()
            )));
        }
    };
    if nanos > 999_999_999 {
        return Err(bad_time(format!(
            "msgpack Timestamp with {nanos} nanoseconds"
        )));
    }
    let secs = u64::try_from(secs)
        .map_err(|_| bad_time(format!("msgpack Timestamp {secs}s is before 1970")))?;
    secs_to_ns(secs, u64::from(nanos), now_ns)
}

/// An EventTime's payload (forward spec, "EventTime Ext Format": ext type 0 of 8 bytes,
/// big-endian u32 seconds then nanoseconds); the group markers are Fluent Bit's.
fn event_time(secs: [u8; 4], nanos: [u8; 4], now_ns: i64) -> Result<Time, DecodeError> {
    let secs = u32::from_be_bytes(secs);
    if GROUP_MARKERS.contains(&secs) {
        return Ok(Time::Marker);
    }
    secs_to_ns(
        u64::from(secs),
        u64::from(u32::from_be_bytes(nanos)),
        now_ns,
    )
}

fn read_time(cur: &mut Cursor<'_>, now_ns: i64) -> Result<Time, DecodeError> {
    match cur.next()? {
        Item::UInt(s) => secs_to_ns(s, 0, now_ns),
        Item::Int(-1 | -2) => Ok(Time::Marker),
        Item::Int(s) if s >= 0 => secs_to_ns(s as u64, 0, now_ns),
        Item::Float(f) if f.is_finite() && f >= 0.0 => {
            if f == 0.0 {
                return Ok(Time::Ns(now_ns));
            }
            if f * 1e9 >= i64::MAX as f64 {
                return Err(bad_time(format!("time {f} is out of range")));
            }
            // Seconds and fraction apart: `f * 1e9` rounds to a multiple of 256 ns for
            // present-day times, so 1700000000.25 would become ...249999872 ns.
            let secs = f.trunc();
            let nanos = ((f - secs) * 1e9).round().min(999_999_999.0);
            secs_to_ns(secs as u64, nanos as u64, now_ns)
        }
        Item::Ext(0, &[s0, s1, s2, s3, n0, n1, n2, n3]) => {
            event_time([s0, s1, s2, s3], [n0, n1, n2, n3], now_ns)
        }
        Item::Ext(-1, b) => timestamp_ext(b, now_ns),
        Item::Int(s) => Err(bad_time(format!("negative time {s}"))),
        Item::Float(f) => Err(bad_time(format!("invalid time {f}"))),
        Item::Ext(t, b) => Err(bad_time(format!(
            "time is ext type {t} of {} bytes, not EventTime",
            b.len()
        ))),
        other => Err(bad_time(format!("time is {}, not a time", other.name()))),
    }
}

/// Where decoded entries go.
struct Sink<'o> {
    tag: Arc<str>,
    now_ns: i64,
    out: &'o mut Vec<Record>,
    stats: &'o mut Stats,
    /// Memory the request uses so far: inflated payload plus decoded records.
    cost: usize,
    /// [`Limits::max_decoded_bytes`].
    cap: usize,
}

impl Sink<'_> {
    /// Checked after each entry, outside the per-entry error handling: passing the cap
    /// fails the whole request rather than skipping one entry.
    fn within_cap(&self) -> Result<(), DecodeError> {
        if self.cost > self.cap {
            return Err(over_cost(self.cap));
        }
        Ok(())
    }

    fn push(&mut self, record: Record) {
        self.cost = self.cost.saturating_add(record.approx_size());
        self.out.push(record);
    }

    /// One entry of a Forward array or a PackedForward payload. An entry that is complete
    /// msgpack but unusable is stepped over and counted; only msgpack that cannot be stepped
    /// over (a truncated payload) fails the request.
    fn array_entry(&mut self, cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
        let start = cur.pos;
        if let Err(e) = self.try_array_entry(cur) {
            cur.pos = start;
            cur.skip()?;
            self.stats.skipped(e);
        }
        Ok(())
    }

    /// `[time, record]` or Fluent Bit's `[[time, metadata], record]`.
    fn try_array_entry(&mut self, cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
        // What Fluent Bit, fluent-logger and Docker send: fixarray 2, then an EventTime
        // (fixext 8 of type 0: 0xd7 0x00 and 8 bytes). Read here in one step; the general
        // path below gives the same answer for these bytes, a token at a time.
        if let Some(&[0x92, 0xd7, 0x00, s0, s1, s2, s3, n0, n1, n2, n3]) =
            cur.buf.get(cur.pos..cur.pos.saturating_add(11))
        {
            cur.pos += 11;
            let time = event_time([s0, s1, s2, s3], [n0, n1, n2, n3], self.now_ns)?;
            return self.entry(time, cur);
        }
        match cur.next()? {
            Item::Array(2) => {}
            other => {
                return Err(bad_entry(format!(
                    "entry is {}, not [time, record]",
                    other.name()
                )));
            }
        }
        let time = match Marker::from_u8(cur.peek()?) {
            Marker::FixArray(2) => {
                cur.next()?;
                let time = read_time(cur, self.now_ns)?;
                // The metadata map carries Fluent Bit internals; firelane keeps only the record.
                match Marker::from_u8(cur.peek()?) {
                    Marker::FixMap(_) | Marker::Map16 | Marker::Map32 | Marker::Null => {
                        cur.skip()?
                    }
                    _ => return Err(bad_entry("event metadata is not a map")),
                }
                time
            }
            _ => read_time(cur, self.now_ns)?,
        };
        self.entry(time, cur)
    }

    fn entry(&mut self, time: Time, cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
        let ns = match time {
            Time::Ns(ns) => ns,
            Time::Marker => {
                self.stats.markers += 1;
                return cur.skip();
            }
        };
        // The common case: a map the tree path would take as it is stays msgpack (one
        // allocation for the whole body instead of one per key, string and number).
        let start = cur.pos;
        if let Some(end) = packed::scan_map(cur.buf, start) {
            // Copied out rather than sliced from the frame: a record must not keep the
            // rest of a (possibly 16 MiB, possibly inflated) request alive after its
            // siblings were delivered or dropped, uncounted by the memory budget.
            let body = Bytes::copy_from_slice(&cur.buf[start..end]);
            cur.pos = end;
            self.push(Record::from_checked_packed(self.tag.clone(), ns, body));
            return Ok(());
        }
        let fields = read_record(cur, self.stats)?;
        self.push(Record::new(self.tag.clone(), ns, fields));
        Ok(())
    }
}

/// Why a value could not be converted.
enum ValueError {
    /// Drop this record, keep going.
    Reject(&'static str),
    Fatal(DecodeError),
}

impl From<DecodeError> for ValueError {
    fn from(e: DecodeError) -> Self {
        ValueError::Fatal(e)
    }
}

/// A record map → fields. A record that cannot be used is a `bad_record` error, for the
/// caller to skip its entry.
fn read_record(cur: &mut Cursor<'_>, stats: &mut Stats) -> Result<Fields, DecodeError> {
    let n = match cur.next()? {
        Item::Map(n) => n,
        other => {
            return Err(bad_record(format!("record is {}, not a map", other.name())));
        }
    };
    let mut faults = Faults::default();
    match read_map(cur, n, 1, &mut faults) {
        Ok(fields) => {
            stats.invalid_utf8 += faults.utf8_errors.min(1);
            stats.bad_keys += faults.bad_keys.min(1);
            Ok(fields)
        }
        Err(ValueError::Reject(reason)) => Err(bad_record(reason)),
        Err(ValueError::Fatal(e)) => Err(e),
    }
}

/// What was repaired while converting one record.
#[derive(Default)]
struct Faults {
    /// Strings with invalid UTF-8 (replaced with U+FFFD).
    utf8_errors: u64,
    /// Map keys that were neither strings nor integers (replaced by their JSON text).
    bad_keys: u64,
}

fn read_map(
    cur: &mut Cursor<'_>,
    n: u32,
    depth: usize,
    faults: &mut Faults,
) -> Result<Map<String, Value>, ValueError> {
    // Each pair takes at least two bytes: a hostile count cannot make us over-allocate.
    let mut map = Map::with_capacity((n as usize).min(cur.remaining() / 2));
    for _ in 0..n {
        let key_start = cur.pos;
        let key = match cur.next()? {
            Item::Str(b) | Item::Bin(b) => lossy(b, &mut faults.utf8_errors),
            Item::UInt(i) => i.to_string(),
            Item::Int(i) => i.to_string(),
            _ => {
                // JSON keys are strings. Fluent Bit writes any other msgpack key as its
                // JSON text in quotes (`"null"`, `"true"`, `"1.5"`); do the same instead of
                // dropping a whole record for one odd key, and count it.
                cur.pos = key_start;
                faults.bad_keys += 1;
                read_value(cur, depth, faults)?.to_string()
            }
        };
        let value = read_value(cur, depth, faults)?;
        map.insert(key, value);
    }
    Ok(map)
}

fn read_value(
    cur: &mut Cursor<'_>,
    depth: usize,
    faults: &mut Faults,
) -> Result<Value, ValueError> {
    Ok(match cur.next()? {
        Item::Nil => Value::Null,
        Item::Bool(b) => Value::Bool(b),
        Item::UInt(u) => Value::Number(u.into()),
        Item::Int(i) => Value::Number(i.into()),
        Item::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Item::Str(b) | Item::Bin(b) => Value::String(lossy(b, &mut faults.utf8_errors)),
        Item::Ext(..) => Value::Null,
        Item::Array(n) => {
            if depth >= MAX_DEPTH {
                return Err(ValueError::Reject("record nested too deeply"));
            }
            let mut items = Vec::with_capacity((n as usize).min(cur.remaining()));
            for _ in 0..n {
                items.push(read_value(cur, depth + 1, faults)?);
            }
            Value::Array(items)
        }
        Item::Map(n) => {
            if depth >= MAX_DEPTH {
                return Err(ValueError::Reject("record nested too deeply"));
            }
            Value::Object(read_map(cur, n, depth + 1, faults)?)
        }
    })
}

/// Docker writes log lines as msgpack str whatever their encoding; keep the line, replace
/// invalid sequences with U+FFFD and count it.
fn lossy(bytes: &[u8], utf8_errors: &mut u64) -> String {
    match packed::utf8_str(bytes) {
        Some(s) => s.to_owned(),
        None => {
            *utf8_errors += 1;
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

/// One msgpack item; containers only report their length, their children follow.
#[derive(Debug, Clone, Copy)]
enum Item<'a> {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(u32),
    Map(u32),
    Ext(i8, &'a [u8]),
}

impl Item<'_> {
    fn name(&self) -> &'static str {
        match self {
            Item::Nil => "nil",
            Item::Bool(_) => "a boolean",
            Item::UInt(_) | Item::Int(_) => "an integer",
            Item::Float(_) => "a float",
            Item::Str(_) => "a string",
            Item::Bin(_) => "binary",
            Item::Array(_) => "an array",
            Item::Map(_) => "a map",
            Item::Ext(..) => "an ext value",
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf.get(self.pos).copied().ok_or_else(truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(truncated)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len_field(&mut self, n: usize) -> Result<usize, DecodeError> {
        usize::try_from(self.be(n)?).map_err(|_| truncated())
    }

    /// Skips one whole object, containers included.
    fn skip(&mut self) -> Result<(), DecodeError> {
        let n = object_len(&self.buf[self.pos.min(self.buf.len())..]).ok_or_else(truncated)?;
        self.pos += n;
        Ok(())
    }

    fn ext(&mut self, len: usize) -> Result<Item<'a>, DecodeError> {
        let ty = self.take(1)?[0] as i8;
        Ok(Item::Ext(ty, self.take(len)?))
    }

    fn next(&mut self) -> Result<Item<'a>, DecodeError> {
        let byte = self.take(1)?[0];
        Ok(match Marker::from_u8(byte) {
            Marker::FixPos(n) => Item::UInt(u64::from(n)),
            Marker::FixNeg(n) => Item::Int(i64::from(n)),
            Marker::Null => Item::Nil,
            Marker::True => Item::Bool(true),
            Marker::False => Item::Bool(false),
            Marker::U8 => Item::UInt(self.be(1)?),
            Marker::U16 => Item::UInt(self.be(2)?),
            Marker::U32 => Item::UInt(self.be(4)?),
            Marker::U64 => Item::UInt(self.be(8)?),
            Marker::I8 => Item::Int(i64::from(self.be(1)? as u8 as i8)),
            Marker::I16 => Item::Int(i64::from(self.be(2)? as u16 as i16)),
            Marker::I32 => Item::Int(i64::from(self.be(4)? as u32 as i32)),
            Marker::I64 => Item::Int(self.be(8)? as i64),
            Marker::F32 => Item::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            Marker::F64 => Item::Float(f64::from_bits(self.be(8)?)),
            Marker::FixStr(n) => Item::Str(self.take(usize::from(n))?),
            Marker::Str8 => {
                let n = self.len_field(1)?;
                Item::Str(self.take(n)?)
            }
            Marker::Str16 => {
                let n = self.len_field(2)?;
                Item::Str(self.take(n)?)
            }
            Marker::Str32 => {
                let n = self.len_field(4)?;
                Item::Str(self.take(n)?)
            }
            Marker::Bin8 => {
                let n = self.len_field(1)?;
                Item::Bin(self.take(n)?)
            }
            Marker::Bin16 => {
                let n = self.len_field(2)?;
                Item::Bin(self.take(n)?)
            }
            Marker::Bin32 => {
                let n = self.len_field(4)?;
                Item::Bin(self.take(n)?)
            }
            Marker::FixArray(n) => Item::Array(u32::from(n)),
            Marker::Array16 => Item::Array(self.be(2)? as u32),
            Marker::Array32 => Item::Array(self.be(4)? as u32),
            Marker::FixMap(n) => Item::Map(u32::from(n)),
            Marker::Map16 => Item::Map(self.be(2)? as u32),
            Marker::Map32 => Item::Map(self.be(4)? as u32),
            Marker::FixExt1 => self.ext(1)?,
            Marker::FixExt2 => self.ext(2)?,
            Marker::FixExt4 => self.ext(4)?,
            Marker::FixExt8 => self.ext(8)?,
            Marker::FixExt16 => self.ext(16)?,
            Marker::Ext8 => {
                let n = self.len_field(1)?;
                self.ext(n)?
            }
            Marker::Ext16 => {
                let n = self.len_field(2)?;
                self.ext(n)?
            }
            Marker::Ext32 => {
                let n = self.len_field(4)?;
                self.ext(n)?
            }
            Marker::Reserved => return Err(truncated()),
        })
    }
}

/// A small owned msgpack tree, for the handshake and ack messages (never for records).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plain {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Array(Vec<Plain>),
    Map(Vec<(Plain, Plain)>),
    Ext(i8, Vec<u8>),
}

impl Plain {
    /// Parses one complete msgpack object (nesting up to [`MAX_DEPTH`]).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Plain, DecodeError> {
        let mut cur = Cursor::new(bytes);
        Plain::read(&mut cur, 0)
    }

    fn read(cur: &mut Cursor<'_>, depth: usize) -> Result<Plain, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(bad_request("message nested too deeply"));
        }
        Ok(match cur.next()? {
            Item::Nil => Plain::Nil,
            Item::Bool(b) => Plain::Bool(b),
            Item::UInt(u) => Plain::Int(i128::from(u)),
            Item::Int(i) => Plain::Int(i128::from(i)),
            Item::Float(f) => Plain::Float(f),
            Item::Str(s) => Plain::Str(s.to_vec()),
            Item::Bin(b) => Plain::Bin(b.to_vec()),
            Item::Ext(t, b) => Plain::Ext(t, b.to_vec()),
            Item::Array(n) => {
                let mut v = Vec::with_capacity((n as usize).min(cur.remaining()));
                for _ in 0..n {
                    v.push(Plain::read(cur, depth + 1)?);
                }
                Plain::Array(v)
            }
            Item::Map(n) => {
                let mut v = Vec::with_capacity((n as usize).min(cur.remaining() / 2));
                for _ in 0..n {
                    let k = Plain::read(cur, depth + 1)?;
                    v.push((k, Plain::read(cur, depth + 1)?));
                }
                Plain::Map(v)
            }
        })
    }

    pub(crate) fn as_str(&self) -> Option<&[u8]> {
        match self {
            Plain::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Value of a string key in a map.
    pub(crate) fn get(&self, key: &str) -> Option<&Plain> {
        match self {
            Plain::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key.as_bytes()))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// True when `frame` is a PackedForward request whose payload starts with gzip or zstd magic.
/// A cheap look at the headers, so the server can reserve memory before inflating.
pub(crate) fn is_compressed(frame: &[u8]) -> bool {
    let mut cur = Cursor::new(frame);
    let shape = (cur.next(), cur.next(), cur.next());
    match shape {
        (Ok(Item::Array(_)), Ok(Item::Str(_)), Ok(Item::Str(p) | Item::Bin(p))) => {
            p.starts_with(&[0x1f, 0x8b]) || p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {

    use rmp::encode as enc;
    use serde_json::json;

    use super::*;
    use crate::input::forward::client::{self, Compression, Entry, EventTime};

    const NOW: i64 = 1_000_000_000_000_000_000;
    const LIMITS: Limits = Limits {
        max_decompressed_bytes: 64 << 20,
        max_decoded_bytes: usize::MAX,
    };

    fn decode(frame: &[u8]) -> (Vec<Record>, Stats, Result<Request, DecodeError>) {
        decode_with(frame, &LIMITS)
    }

    /// One request decoded alone (fresh output, stats and tag cache) within `limits`.
    fn decode_with(
        frame: &[u8],
        limits: &Limits,
    ) -> (Vec<Record>, Stats, Result<Request, DecodeError>) {
        let mut out = Vec::new();
        let mut stats = Stats::default();
        let r = decode_request(
            frame,
            limits,
            NOW,
            &mut TagCache::default(),
            &mut out,
            &mut stats,
        );
        (out, stats, r)
    }

    fn ok(frame: &[u8]) -> (Vec<Record>, Stats, Request) {
        let (out, stats, r) = decode(frame);
        (out, stats, r.unwrap_or_else(|e| panic!("{e}")))
    }

    fn kind(frame: &[u8]) -> ErrorKind {
        decode(frame).2.expect_err("should fail").kind
    }

    fn record(log: &str) -> Vec<u8> {
        let mut b = Vec::new();
        client::encode_record(&mut b, &[("log", log)]);
        b
    }

    /// `[tag, <time written by f>, {"log": "x"}, option?]`
    fn message_with_time(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 3).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        f(&mut b);
        b.extend(record("x"));
        b
    }

    fn ext_time(b: &mut Vec<u8>, secs: u32, nanos: u32, ext8: bool) {
        if ext8 {
            b.extend([0xc7, 8, 0]);
        } else {
            b.extend([0xd7, 0]);
        }
        b.extend(secs.to_be_bytes());
        b.extend(nanos.to_be_bytes());
    }

    #[test]
    fn message_mode_with_every_time_form() {
        let cases: Vec<(Vec<u8>, i64)> = vec![
            (
                message_with_time(|b| drop(enc::write_uint(b, 1_700_000_000))),
                1_700_000_000_000_000_000,
            ),
            (
                message_with_time(|b| drop(enc::write_u64(b, 5))),
                5_000_000_000,
            ),
            (
                message_with_time(|b| drop(enc::write_i32(b, 7))),
                7_000_000_000,
            ),
            (message_with_time(|b| drop(enc::write_uint(b, 0))), NOW),
            (
                message_with_time(|b| drop(enc::write_f64(b, 1.5))),
                1_500_000_000,
            ),
            (
                message_with_time(|b| drop(enc::write_f32(b, 2.0))),
                2_000_000_000,
            ),
            (message_with_time(|b| drop(enc::write_f64(b, 0.0))), NOW),
            // Present-day float times keep their fraction: `f * 1e9` would round it to
            // a multiple of 256 ns (…249_999_872).
            (
                message_with_time(|b| drop(enc::write_f64(b, 1_700_000_000.25))),
                1_700_000_000_250_000_000,
            ),
            (
                message_with_time(|b| drop(enc::write_f64(b, 1_700_000_000.123))),
                1_700_000_000_122_999_907,
            ),
            (
                message_with_time(|b| ext_time(b, 1_700_000_000, 123, false)),
                1_700_000_000_000_000_123,
            ),
            (
                message_with_time(|b| ext_time(b, 1_700_000_000, 999_999_999, true)),
                1_700_000_000_999_999_999,
            ),
            (message_with_time(|b| ext_time(b, 0, 0, false)), NOW),
        ];
        for (i, (frame, ns)) in cases.iter().enumerate() {
            let (out, _, req) = ok(frame);
            assert_eq!(req.records, 1, "case {i}");
            assert_eq!(out[0].time_ns, *ns, "case {i}");
            assert_eq!(&*out[0].tag, "t");
            assert_eq!(
                *out[0].fields(),
                json!({"log": "x"}).as_object().unwrap().clone()
            );
        }
    }

    #[test]
    fn invalid_times_skip_the_entry_and_keep_the_request() {
        for frame in [
            message_with_time(|b| drop(enc::write_sint(b, -5))),
            message_with_time(|b| drop(enc::write_sint(b, -1_700_000_000))),
            message_with_time(|b| drop(enc::write_f64(b, f64::NAN))),
            message_with_time(|b| drop(enc::write_f64(b, -1.0))),
            message_with_time(|b| drop(enc::write_f64(b, 1e300))),
            message_with_time(|b| drop(enc::write_u64(b, u64::MAX))),
            message_with_time(|b| {
                enc::write_ext_meta(b, 8, 1).unwrap();
                b.extend([0; 8]);
            }),
            message_with_time(|b| {
                enc::write_ext_meta(b, 4, 0).unwrap();
                b.extend([0; 4]);
            }),
            // msgpack Timestamps: negative seconds, nanoseconds beyond 10^9, a bad length.
            message_with_time(|b| timestamp96(b, -1, 0)),
            message_with_time(|b| timestamp96(b, 1, 1_000_000_000)),
            message_with_time(|b| {
                b.extend([0xd7, 0xff]);
                b.extend(((1_000_000_000u64 << 34) | 5).to_be_bytes());
            }),
            message_with_time(|b| {
                enc::write_ext_meta(b, 2, -1).unwrap();
                b.extend([0; 2]);
            }),
            message_with_time(|b| timestamp96(b, i64::MAX, 0)),
        ] {
            let (out, stats, req) = ok(&frame);
            assert!(out.is_empty(), "{frame:02x?}");
            assert_eq!(req.records, 0);
            assert_eq!(
                (stats.bad_times, stats.skipped_entries()),
                (1, 1),
                "{frame:02x?}"
            );
            assert!(stats.bad_time_reason.is_some());
        }
    }

    /// `[tag, <second>, {"log": "x"}, {"chunk": "ck1"}]`
    fn message_with_time_and_chunk(second: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 4).unwrap();
        enc::write_str(&mut b, "m").unwrap();
        second(&mut b);
        b.extend(record("x"));
        with_chunk(&mut b);
        b
    }

    /// The tester's `["m", nil, {…}, {"chunk": …}]` and its relatives: a Message whose time
    /// is no time at all (nil, a string, a boolean, a map) is one unusable entry, skipped as
    /// `bad_time`; the request is not refused and its chunk is acked.
    #[test]
    fn message_mode_with_a_non_time_second_element_is_a_bad_time() {
        for (name, frame) in [
            (
                "nil",
                message_with_time_and_chunk(|b| drop(enc::write_nil(b))),
            ),
            (
                "string",
                message_with_time_and_chunk(|b| drop(enc::write_str(b, "2024-01-01T00:00:00Z"))),
            ),
            (
                "bin",
                message_with_time_and_chunk(|b| drop(enc::write_bin(b, b"17"))),
            ),
            (
                "boolean",
                message_with_time_and_chunk(|b| drop(enc::write_bool(b, true))),
            ),
            (
                "map",
                message_with_time_and_chunk(|b| drop(enc::write_map_len(b, 0))),
            ),
        ] {
            let (out, stats, req) = ok(&frame);
            assert!(out.is_empty(), "{name}");
            assert_eq!(req.records, 0, "{name}");
            assert_eq!(&frame[req.chunk.unwrap()], b"\xa3ck1", "{name}");
            assert_eq!((stats.bad_times, stats.skipped_entries()), (1, 1), "{name}");
            let reason = stats.bad_time_reason.unwrap();
            assert!(reason.contains("not a time"), "{name}: {reason}");
        }
        // Without an option a nil time is still only a skipped entry.
        let (out, stats, _) = ok(&message_with_time(|b| drop(enc::write_nil(b))));
        assert!(out.is_empty());
        assert_eq!(stats.bad_times, 1);
        // A 3-element request with a string second is a PackedForward with options.
        let mut packed = Vec::new();
        client::encode_packed_payload(
            &mut packed,
            "t",
            &record_entry("p"),
            false,
            None,
            None,
            Some("c"),
        );
        let (out, _, req) = ok(&packed);
        assert_eq!(out.len(), 1);
        assert!(req.chunk.is_some());
    }

    /// `[1700000000, {"log": log}]`
    fn record_entry(log: &str) -> Vec<u8> {
        let mut e = Vec::new();
        enc::write_array_len(&mut e, 2).unwrap();
        enc::write_uint(&mut e, 1_700_000_000).unwrap();
        e.extend(record(log));
        e
    }

    /// The tester's `[[t,{}],["str",{}],[t,"notmap"],[t]]`: each kind is logged with its
    /// own reason, not the last one found.
    #[test]
    fn each_skip_kind_keeps_its_own_reason() {
        let mut entries = record_entry("good");
        enc::write_array_len(&mut entries, 2).unwrap();
        enc::write_str(&mut entries, "str").unwrap();
        enc::write_map_len(&mut entries, 0).unwrap();
        enc::write_array_len(&mut entries, 2).unwrap();
        enc::write_uint(&mut entries, 1).unwrap();
        enc::write_str(&mut entries, "notmap").unwrap();
        enc::write_array_len(&mut entries, 1).unwrap();
        enc::write_uint(&mut entries, 1).unwrap();
        let mut forward = Vec::new();
        enc::write_array_len(&mut forward, 2).unwrap();
        enc::write_str(&mut forward, "t").unwrap();
        enc::write_array_len(&mut forward, 4).unwrap();
        forward.extend_from_slice(&entries);
        let mut packed = Vec::new();
        client::encode_packed_payload(&mut packed, "t", &entries, false, None, None, None);
        for (mode, frame) in [("Forward", forward), ("PackedForward", packed)] {
            let (out, stats, _) = ok(&frame);
            assert_eq!(out.len(), 1, "{mode}");
            let time = stats.skips(ErrorKind::BadTime);
            let rec = stats.skips(ErrorKind::BadRecord);
            let entry = stats.skips(ErrorKind::BadEntry);
            assert_eq!((time.0, rec.0, entry.0), (1, 1, 1), "{mode}");
            assert_eq!(time.1, Some("time is a string, not a time"), "{mode}");
            assert_eq!(rec.1, Some("record is a string, not a map"), "{mode}");
            assert_eq!(
                entry.1,
                Some("entry is an array, not [time, record]"),
                "{mode}"
            );
        }
    }

    /// In a PackedForward payload, elements that are valid msgpack but not entries are
    /// skipped as `bad_entry` exactly as in Forward mode; the good entries around them are
    /// kept and the chunk acked.
    #[test]
    fn packed_elements_that_are_not_entries_are_skipped() {
        let mut payload = Vec::new();
        enc::write_uint(&mut payload, 5).unwrap();
        payload.extend(record_entry("a"));
        enc::write_str(&mut payload, "junk").unwrap();
        payload.extend(record("bare record"));
        enc::write_nil(&mut payload).unwrap();
        payload.extend(record_entry("b"));
        let mut frames = Vec::new();
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "t", &payload, false, None, None, Some("ck1"));
        frames.push(("uncompressed", b));
        let mut forward = Vec::new();
        enc::write_array_len(&mut forward, 3).unwrap();
        enc::write_str(&mut forward, "t").unwrap();
        enc::write_array_len(&mut forward, 6).unwrap();
        forward.extend_from_slice(&payload);
        with_chunk(&mut forward);
        frames.push(("Forward", forward));
        for c in [Compression::Gzip, Compression::Zstd] {
            let z = client::compress(&payload, c).unwrap();
            let mut b = Vec::new();
            client::encode_packed_payload(
                &mut b,
                "t",
                &z,
                false,
                None,
                Some(c.option_value()),
                Some("ck1"),
            );
            frames.push((c.option_value(), b));
        }
        for (mode, frame) in &frames {
            let (out, stats, req) = ok(frame);
            let logs: Vec<Value> = out.iter().map(|r| r.fields()["log"].clone()).collect();
            assert_eq!(logs, [json!("a"), json!("b")], "{mode}");
            assert_eq!(&frame[req.chunk.unwrap()], b"\xa3ck1", "{mode}");
            assert_eq!(
                (stats.bad_entries, stats.skipped_entries()),
                (4, 4),
                "{mode}"
            );
        }
    }

    fn timestamp96(b: &mut Vec<u8>, secs: i64, nanos: u32) {
        b.extend([0xc7, 12, 0xff]);
        b.extend(nanos.to_be_bytes());
        b.extend(secs.to_be_bytes());
    }

    /// msgpack's Timestamp extension (type -1) in its three sizes, as msgpack libraries
    /// write their native time types; values from the msgpack spec's bit layouts.
    #[test]
    fn msgpack_timestamp_extension_in_all_three_sizes() {
        let ts32 = |b: &mut Vec<u8>| {
            b.extend([0xd6, 0xff]);
            b.extend(1_700_000_000u32.to_be_bytes());
        };
        // 64-bit: nanoseconds in the upper 30 bits, seconds in the lower 34. Seconds
        // beyond 2^32 (year 2106+) exercise the 34th bit.
        let ts64 = |secs: u64, nanos: u64| {
            move |b: &mut Vec<u8>| {
                b.extend([0xd7, 0xff]);
                b.extend(((nanos << 34) | secs).to_be_bytes());
            }
        };
        let cases: Vec<(&str, Vec<u8>, i64)> = vec![
            (
                "timestamp 32",
                message_with_time(ts32),
                1_700_000_000_000_000_000,
            ),
            (
                "timestamp 64",
                message_with_time(ts64(1_700_000_000, 123_456_789)),
                1_700_000_000_123_456_789,
            ),
            (
                "timestamp 64, 34-bit seconds",
                message_with_time(ts64(5_000_000_000, 999_999_999)),
                5_000_000_000_999_999_999,
            ),
            (
                "timestamp 96",
                message_with_time(|b| timestamp96(b, 1_700_000_000, 42)),
                1_700_000_000_000_000_042,
            ),
            (
                "timestamp 64 of zero is now",
                message_with_time(ts64(0, 0)),
                NOW,
            ),
        ];
        for (name, frame, ns) in &cases {
            let (out, stats, _) = ok(frame);
            assert_eq!(stats, Stats::default(), "{name}");
            assert_eq!(out.len(), 1, "{name}");
            assert_eq!(out[0].time_ns, *ns, "{name}");
        }
        // Inside Forward entries, in both entry forms.
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        timestamp96(&mut b, 1_700_000_001, 7);
        b.extend(record("a"));
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        ts64(1_700_000_002, 8)(&mut b);
        enc::write_map_len(&mut b, 0).unwrap();
        b.extend(record("b"));
        let (out, _, _) = ok(&b);
        let times: Vec<i64> = out.iter().map(|r| r.time_ns).collect();
        assert_eq!(
            times,
            [1_700_000_001_000_000_007, 1_700_000_002_000_000_008]
        );
    }

    /// Entries for `[[1700000000, {"log": before}], [<bad>, {"log": bad}], [1700000000,
    /// {"log": after}]]`.
    fn before_bad_after(bad_time: impl FnOnce(&mut Vec<u8>), bad_record: Option<&[u8]>) -> Vec<u8> {
        let mut e = Vec::new();
        enc::write_array_len(&mut e, 2).unwrap();
        enc::write_uint(&mut e, 1_700_000_000).unwrap();
        e.extend(record("before"));
        enc::write_array_len(&mut e, 2).unwrap();
        bad_time(&mut e);
        match bad_record {
            Some(r) => e.extend_from_slice(r),
            None => e.extend(record("bad")),
        }
        enc::write_array_len(&mut e, 2).unwrap();
        enc::write_uint(&mut e, 1_700_000_000).unwrap();
        e.extend(record("after"));
        e
    }

    fn with_chunk(b: &mut Vec<u8>) {
        enc::write_map_len(b, 1).unwrap();
        enc::write_str(b, "chunk").unwrap();
        enc::write_str(b, "ck1").unwrap();
    }

    /// The issue's request: one bad entry between two good ones, in every mode that has
    /// entries. The bad one is skipped and counted, the others kept once, the chunk acked.
    #[test]
    fn a_bad_entry_is_skipped_and_the_rest_of_the_request_kept() {
        let mut not_a_map = Vec::new();
        enc::write_str(&mut not_a_map, "not a map").unwrap();
        type Counter = fn(&Stats) -> u64;
        let bads: Vec<(&str, Vec<u8>, Counter)> = vec![
            (
                "string time",
                before_bad_after(|b| drop(enc::write_str(b, "2024-01-01T00:00:00Z")), None),
                |s| s.bad_times,
            ),
            (
                "negative integer time",
                before_bad_after(|b| drop(enc::write_sint(b, -1_700_000_000)), None),
                |s| s.bad_times,
            ),
            (
                "record not a map",
                before_bad_after(
                    |b| drop(enc::write_uint(b, 1_700_000_000)),
                    Some(&not_a_map),
                ),
                |s| s.bad_records,
            ),
        ];
        for (bad, entries, counter) in &bads {
            let mut forward = Vec::new();
            enc::write_array_len(&mut forward, 3).unwrap();
            enc::write_str(&mut forward, "t").unwrap();
            enc::write_array_len(&mut forward, 3).unwrap();
            forward.extend_from_slice(entries);
            with_chunk(&mut forward);
            let mut frames = vec![("Forward", forward)];
            let mut packed = Vec::new();
            client::encode_packed_payload(
                &mut packed,
                "t",
                entries,
                false,
                None,
                None,
                Some("ck1"),
            );
            frames.push(("PackedForward", packed));
            for c in [Compression::Gzip, Compression::Zstd] {
                let mut b = Vec::new();
                let z = client::compress(entries, c).unwrap();
                client::encode_packed_payload(
                    &mut b,
                    "t",
                    &z,
                    false,
                    None,
                    Some(c.option_value()),
                    Some("ck1"),
                );
                frames.push((c.option_value(), b));
            }
            for (mode, frame) in &frames {
                let (out, stats, req) = ok(frame);
                let logs: Vec<Value> = out.iter().map(|r| r.fields()["log"].clone()).collect();
                assert_eq!(logs, [json!("before"), json!("after")], "{bad} in {mode}");
                assert!(out.iter().all(|r| r.time_ns == 1_700_000_000_000_000_000));
                assert_eq!(req.records, 2);
                assert_eq!(&frame[req.chunk.unwrap()], b"\xa3ck1", "{bad} in {mode}");
                assert_eq!(counter(&stats), 1, "{bad} in {mode}");
                assert_eq!(stats.skipped_entries(), 1, "{bad} in {mode}");
            }
        }

        // Entries that are not [time, record] are skipped as bad_entry.
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 4).unwrap();
        enc::write_uint(&mut b, 5).unwrap();
        enc::write_array_len(&mut b, 3).unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        b.extend(record("three"));
        enc::write_nil(&mut b).unwrap();
        enc::write_array_len(&mut b, 2).unwrap(); // metadata not a map
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        b.extend(record("meta"));
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        b.extend(record("good"));
        let (out, stats, _) = ok(&b);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].fields()["log"], "good");
        assert_eq!((stats.bad_entries, stats.skipped_entries()), (3, 3));

        // Message mode: the only entry is skipped, the request is still acknowledgeable.
        let mut m = Vec::new();
        enc::write_array_len(&mut m, 4).unwrap();
        enc::write_str(&mut m, "t").unwrap();
        enc::write_sint(&mut m, -7).unwrap();
        m.extend(record("x"));
        with_chunk(&mut m);
        let (out, stats, req) = ok(&m);
        assert!(out.is_empty());
        assert_eq!(stats.bad_times, 1);
        assert!(req.chunk.is_some());
        let m = message_with_record(|b| drop(enc::write_str(b, "not a map")));
        let (out, stats, _) = ok(&m);
        assert!(out.is_empty());
        assert_eq!(stats.bad_records, 1);
    }

    /// Broken framing refuses the whole request: nothing of it is kept, even the entries
    /// decoded before the break, and no skip is counted for it.
    #[test]
    fn broken_framing_keeps_nothing_of_the_request() {
        let mut payload =
            before_bad_after(|b| drop(enc::write_str(b, "2024-01-01T00:00:00Z")), None);
        payload.extend(before_bad_after(|b| drop(enc::write_uint(b, 1)), None));
        // Cut inside the last entry: 5 entries are complete, one of them bad.
        payload.truncate(payload.len() - 3);
        let mut frames = Vec::new();
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "t", &payload, false, None, None, Some("ck1"));
        frames.push(("PackedForward cut short", b, ErrorKind::MalformedMsgpack));
        let gz = client::compress(&payload, Compression::Gzip).unwrap();
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "t", &gz, false, None, Some("gzip"), Some("ck1"));
        frames.push(("gzip payload cut short", b, ErrorKind::MalformedMsgpack));
        // Valid entries, then a byte that is not msgpack (0xc1 is reserved).
        let mut p = before_bad_after(|b| drop(enc::write_uint(b, 1)), None);
        p.push(0xc1);
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "t", &p, false, None, None, Some("ck1"));
        frames.push(("payload not msgpack", b, ErrorKind::MalformedMsgpack));
        // Good entries, then a chunk option of the wrong type.
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 3).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 3).unwrap();
        b.extend(before_bad_after(|b| drop(enc::write_uint(b, 1)), None));
        enc::write_map_len(&mut b, 1).unwrap();
        enc::write_str(&mut b, "chunk").unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        frames.push(("chunk not a string", b, ErrorKind::BadRequest));
        for (name, frame, want) in frames {
            let mut out = vec![Record::new("earlier", 1, Fields::new())];
            let mut stats = Stats {
                invalid_utf8: 3,
                ..Stats::default()
            };
            let e = decode_request(
                &frame,
                &LIMITS,
                NOW,
                &mut TagCache::default(),
                &mut out,
                &mut stats,
            )
            .unwrap_err();
            assert_eq!(e.kind, want, "{name}: {e}");
            assert_eq!(out.len(), 1, "{name}: records of the refused request kept");
            assert_eq!(&*out[0].tag, "earlier");
            assert_eq!(
                stats,
                Stats {
                    invalid_utf8: 3,
                    ..Stats::default()
                },
                "{name}"
            );
        }
    }

    #[test]
    fn event_time_entries_read_in_one_step_keep_every_rule() {
        // Forward and PackedForward entries `[EventTime, record]` as fixext 8 take the
        // one-step path; as ext 8 (same value) the general one. Both must agree: a plain
        // time, zero (= now), a group marker, and a record that is not a map.
        for ext8 in [false, true] {
            let mut entries = Vec::new();
            for (secs, nanos, body) in [
                (1_700_000_000, 5, record("a")),
                (0, 0, record("b")),
                (0xFFFF_FFFF, 0, record("marker")),
                (12, 0, vec![0xa1, b'x']),
                (1_700_000_001, 999_999_999, record("c")),
            ] {
                enc::write_array_len(&mut entries, 2).unwrap();
                ext_time(&mut entries, secs, nanos, ext8);
                entries.extend(body);
            }
            let mut forward = Vec::new();
            enc::write_array_len(&mut forward, 2).unwrap();
            enc::write_str(&mut forward, "t").unwrap();
            enc::write_array_len(&mut forward, 5).unwrap();
            forward.extend(&entries);
            let mut packed = Vec::new();
            enc::write_array_len(&mut packed, 2).unwrap();
            enc::write_str(&mut packed, "t").unwrap();
            enc::write_bin(&mut packed, &entries).unwrap();
            for frame in [forward, packed] {
                let (out, stats, _) = ok(&frame);
                let got: Vec<(i64, String)> = out
                    .iter()
                    .map(|r| {
                        (
                            r.time_ns,
                            r.fields()["log"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect();
                assert_eq!(
                    got,
                    [
                        (1_700_000_000_000_000_005, "a".to_owned()),
                        (NOW, "b".to_owned()),
                        (1_700_000_001_999_999_999, "c".to_owned()),
                    ],
                    "ext8 {ext8}"
                );
                assert_eq!(stats.markers, 1, "ext8 {ext8}");
                assert_eq!(stats.skips(ErrorKind::BadRecord).0, 1, "ext8 {ext8}");
            }
        }
    }

    #[test]
    fn group_markers_are_skipped() {
        for secs in [0xFFFF_FFFF, 0xFFFF_FFFE] {
            let (out, stats, req) = ok(&message_with_time(|b| ext_time(b, secs, 0, false)));
            assert!(out.is_empty());
            assert_eq!(req.records, 0);
            assert_eq!(stats.markers, 1);
        }
        let (out, stats, _) = ok(&message_with_time(|b| drop(enc::write_sint(b, -1))));
        assert!(out.is_empty());
        assert_eq!(stats.markers, 1);

        // In a Forward frame: start marker, record, end marker.
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 3).unwrap();
        for secs in [0xFFFF_FFFF, 10, 0xFFFF_FFFE] {
            enc::write_array_len(&mut b, 2).unwrap();
            enc::write_array_len(&mut b, 2).unwrap();
            ext_time(&mut b, secs, 0, false);
            enc::write_map_len(&mut b, 0).unwrap();
            b.extend(record("r"));
        }
        let (out, stats, _) = ok(&b);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].time_ns, 10_000_000_000);
        assert_eq!(stats.markers, 2);
    }

    fn entries(n: usize) -> (Vec<Vec<u8>>, Vec<EventTime>) {
        let records = (0..n).map(|i| record(&format!("line {i}"))).collect();
        let times = (0..n)
            .map(|i| EventTime {
                secs: 100 + i as u32,
                nanos: i as u32,
            })
            .collect();
        (records, times)
    }

    fn as_entries<'a>(r: &'a [Vec<u8>], t: &[EventTime]) -> Vec<Entry<'a>> {
        r.iter()
            .zip(t)
            .map(|(record, time)| Entry {
                time: *time,
                record,
            })
            .collect()
    }

    fn check_lines(out: &[Record], n: usize) {
        assert_eq!(out.len(), n);
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r.fields()["log"], json!(format!("line {i}")));
            assert_eq!(r.time_ns, (100 + i as i64) * 1_000_000_000 + i as i64);
            assert_eq!(&*r.tag, "app-firelens-1");
        }
    }

    #[test]
    fn forward_packed_and_compressed_modes() {
        let (r, t) = entries(50);
        let e = as_entries(&r, &t);
        let mut frames = Vec::new();
        let mut b = Vec::new();
        client::encode_forward(&mut b, "app-firelens-1", &e, None);
        frames.push(("forward", b));
        let mut b = Vec::new();
        client::encode_packed(&mut b, "app-firelens-1", &e, Some("c1"));
        frames.push(("packed bin", b));
        let payload = client::encode_entries(&e);
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "app-firelens-1", &payload, true, None, None, None);
        frames.push(("packed str (fluentd)", b));
        let mut b = Vec::new();
        client::encode_packed_payload(
            &mut b,
            "app-firelens-1",
            &payload,
            true,
            None,
            Some("text"),
            None,
        );
        frames.push(("compressed=text", b));
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut b = Vec::new();
            client::encode_compressed(&mut b, "app-firelens-1", &e, c, None).unwrap();
            assert!(is_compressed(&b));
            frames.push((c.option_value(), b));
        }
        // Magic wins over the option, both ways.
        let gz = client::compress(&payload, Compression::Gzip).unwrap();
        let mut b = Vec::new();
        client::encode_packed_payload(
            &mut b,
            "app-firelens-1",
            &gz,
            false,
            None,
            Some("zstd"),
            None,
        );
        frames.push(("gzip labelled zstd", b));
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "app-firelens-1", &gz, true, None, None, None);
        frames.push(("gzip without option, as str", b));
        let mut b = Vec::new();
        client::encode_packed_payload(
            &mut b,
            "app-firelens-1",
            &payload,
            false,
            None,
            Some("gzip"),
            None,
        );
        frames.push(("plain labelled gzip", b));
        // Several gzip members, as fluentd appends them.
        let half = client::encode_entries(&e[..20]);
        let rest = client::encode_entries(&e[20..]);
        let multi = [
            client::compress(&half, Compression::Gzip).unwrap(),
            client::compress(&rest, Compression::Gzip).unwrap(),
        ]
        .concat();
        let mut b = Vec::new();
        client::encode_packed_payload(
            &mut b,
            "app-firelens-1",
            &multi,
            true,
            Some(50),
            Some("gzip"),
            None,
        );
        frames.push(("two gzip members", b));
        let zmulti = [
            client::compress(&half, Compression::Zstd).unwrap(),
            client::compress(&rest, Compression::Zstd).unwrap(),
        ]
        .concat();
        let mut b = Vec::new();
        client::encode_packed_payload(
            &mut b,
            "app-firelens-1",
            &zmulti,
            false,
            None,
            Some("zstd"),
            None,
        );
        frames.push(("two zstd frames", b));

        for (name, frame) in frames {
            let (out, _, req) = decode(&frame);
            let req = req.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(req.records, 50, "{name}");
            check_lines(&out, 50);
        }
    }

    #[test]
    fn fluent_bit_metadata_entries() {
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        ext_time(&mut b, 9, 9, false);
        enc::write_map_len(&mut b, 1).unwrap();
        enc::write_str(&mut b, "otel").unwrap();
        enc::write_map_len(&mut b, 0).unwrap();
        b.extend(record("a"));
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_uint(&mut b, 8).unwrap();
        enc::write_nil(&mut b).unwrap();
        b.extend(record("b"));
        let (out, _, _) = ok(&b);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].time_ns, 9_000_000_009);
        assert_eq!(out[0].fields()["log"], "a");
        assert_eq!(out[1].time_ns, 8_000_000_000);

        // Metadata that is not a map.
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 1).unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_uint(&mut b, 8).unwrap();
        enc::write_str(&mut b, "meta").unwrap();
        b.extend(record("b"));
        let (out, stats, _) = ok(&b);
        assert!(out.is_empty());
        assert_eq!(stats.bad_entries, 1);
    }

    fn message_with_option(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 4).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        b.extend(record("x"));
        f(&mut b);
        b
    }

    #[test]
    fn option_forms() {
        // Absent, nil (old Docker), empty map (Go logger), unknown keys.
        let (out, _, req) = ok(&message_with_time(|b| drop(enc::write_uint(b, 1))));
        assert_eq!((out.len(), req.chunk), (1, None));
        let (out, _, req) = ok(&message_with_option(|b| drop(enc::write_nil(b))));
        assert_eq!((out.len(), req.chunk), (1, None));
        let (out, _, _) = ok(&message_with_option(|b| drop(enc::write_map_len(b, 0))));
        assert_eq!(out.len(), 1);
        let frame = message_with_option(|b| {
            enc::write_map_len(b, 4).unwrap();
            enc::write_str(b, "size").unwrap();
            enc::write_uint(b, 1).unwrap();
            enc::write_uint(b, 7).unwrap(); // non-string key: ignored
            enc::write_array_len(b, 1).unwrap();
            enc::write_nil(b).unwrap();
            enc::write_array_len(b, 0).unwrap(); // container key: ignored
            enc::write_nil(b).unwrap();
            enc::write_str(b, "metadata").unwrap();
            enc::write_map_len(b, 1).unwrap();
            enc::write_str(b, "k").unwrap();
            enc::write_str(b, "v").unwrap();
        });
        assert_eq!(ok(&frame).0.len(), 1);
        // Not a map.
        assert_eq!(
            kind(&message_with_option(|b| drop(enc::write_uint(b, 3)))),
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn chunk_range_is_the_raw_encoding() {
        let chunk = "p8n9gmxTQVC8/nh2wlKKeQ==\n";
        let mut str_frame = Vec::new();
        client::encode_message(
            &mut str_frame,
            "t",
            EventTime { secs: 1, nanos: 0 },
            &record("x"),
            Some(chunk),
        );
        let (_, _, req) = ok(&str_frame);
        let range = req.chunk.unwrap();
        let mut expected = Vec::new();
        enc::write_str(&mut expected, chunk).unwrap();
        assert_eq!(&str_frame[range], &expected[..]);

        // bin chunk, written with a wasteful str32-like bin32 header: echoed as is.
        let bin_frame = message_with_option(|b| {
            enc::write_map_len(b, 1).unwrap();
            enc::write_str(b, "chunk").unwrap();
            b.extend([0xc6, 0, 0, 0, 3, 1, 2, 3]);
        });
        let (_, _, req) = ok(&bin_frame);
        assert_eq!(&bin_frame[req.chunk.unwrap()], &[0xc6, 0, 0, 0, 3, 1, 2, 3]);

        let int_chunk = message_with_option(|b| {
            enc::write_map_len(b, 1).unwrap();
            enc::write_str(b, "chunk").unwrap();
            enc::write_uint(b, 5).unwrap();
        });
        assert_eq!(kind(&int_chunk), ErrorKind::BadRequest);
        let int_compressed = message_with_option(|b| {
            enc::write_map_len(b, 1).unwrap();
            enc::write_str(b, "compressed").unwrap();
            enc::write_uint(b, 5).unwrap();
        });
        assert_eq!(kind(&int_compressed), ErrorKind::BadRequest);
    }

    #[test]
    fn non_log_signals_are_skipped_but_keep_their_chunk() {
        let frame = message_with_option(|b| {
            enc::write_map_len(b, 2).unwrap();
            enc::write_str(b, "fluent_signal").unwrap();
            enc::write_uint(b, 1).unwrap();
            enc::write_str(b, "chunk").unwrap();
            enc::write_str(b, "abc").unwrap();
        });
        let (out, _, req) = ok(&frame);
        assert!(out.is_empty());
        assert_eq!(req.skipped_signal, Some(1));
        assert!(req.chunk.is_some());
        let logs = message_with_option(|b| {
            enc::write_map_len(b, 1).unwrap();
            enc::write_str(b, "fluent_signal").unwrap();
            enc::write_uint(b, 0).unwrap();
        });
        assert_eq!(ok(&logs).0.len(), 1);
    }

    #[test]
    fn nil_is_a_heartbeat() {
        let (out, _, req) = ok(&[0xc0]);
        assert!(req.heartbeat);
        assert!(out.is_empty());
    }

    fn message_with_record(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 3).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        f(&mut b);
        b
    }

    #[test]
    fn value_conversion() {
        let frame = message_with_record(|b| {
            enc::write_map_len(b, 12).unwrap();
            enc::write_str(b, "z_first").unwrap();
            enc::write_nil(b).unwrap();
            enc::write_str(b, "bool").unwrap();
            enc::write_bool(b, true).unwrap();
            enc::write_str(b, "u64").unwrap();
            enc::write_u64(b, u64::MAX).unwrap();
            enc::write_str(b, "i64").unwrap();
            enc::write_i64(b, i64::MIN).unwrap();
            enc::write_str(b, "float").unwrap();
            enc::write_f64(b, 0.25).unwrap();
            enc::write_str(b, "nan").unwrap();
            enc::write_f64(b, f64::NAN).unwrap();
            enc::write_str(b, "inf").unwrap();
            enc::write_f32(b, f32::INFINITY).unwrap();
            enc::write_str(b, "bin").unwrap();
            enc::write_bin(b, b"bytes").unwrap();
            enc::write_str(b, "ext").unwrap();
            enc::write_ext_meta(b, 1, 9).unwrap();
            b.push(1);
            enc::write_uint(b, 42).unwrap(); // integer key
            enc::write_str(b, "int key").unwrap();
            enc::write_str(b, "nested").unwrap();
            enc::write_array_len(b, 2).unwrap();
            enc::write_map_len(b, 1).unwrap();
            enc::write_sint(b, -3).unwrap();
            enc::write_array_len(b, 0).unwrap();
            enc::write_str(b, "s").unwrap();
            enc::write_str(b, "a_last").unwrap();
            enc::write_str(b, "ü").unwrap();
        });
        let (out, stats, _) = ok(&frame);
        assert_eq!(stats, Stats::default());
        let expected = json!({
            "z_first": null, "bool": true, "u64": u64::MAX, "i64": i64::MIN, "float": 0.25,
            "nan": null, "inf": null, "bin": "bytes", "ext": null, "42": "int key",
            "nested": [{"-3": []}, "s"], "a_last": "ü"
        });
        assert_eq!(
            serde_json::Value::Object(out[0].fields().into_owned()),
            expected
        );
        // Order is the sender's, not sorted.
        let keys: Vec<_> = out[0].fields().keys().cloned().collect();
        assert_eq!(keys.first().map(String::as_str), Some("z_first"));
        assert_eq!(keys.last().map(String::as_str), Some("a_last"));
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted_but_kept() {
        let frame = message_with_record(|b| {
            enc::write_map_len(b, 2).unwrap();
            enc::write_str(b, "log").unwrap();
            b.extend([0xa4, b'o', 0xff, b'k', 0xfe]);
            enc::write_str(b, "bin").unwrap();
            enc::write_bin(b, &[0xc3]).unwrap();
        });
        let (out, stats, _) = ok(&frame);
        assert_eq!(out[0].fields()["log"], "o\u{fffd}k\u{fffd}");
        assert_eq!(out[0].fields()["bin"], "\u{fffd}");
        assert_eq!(stats.invalid_utf8, 1, "counted once per record");
    }

    /// A connection's requests share their tag while it stays the same: the second request's
    /// records hold the first one's `Arc`; another tag gets its own, and an invalid UTF-8
    /// tag is repaired and counted on every request, never cached.
    #[test]
    fn consecutive_requests_share_an_equal_tag() {
        fn message(tag: &[u8]) -> Vec<u8> {
            let mut b = Vec::new();
            enc::write_array_len(&mut b, 3).unwrap();
            enc::write_str_len(&mut b, tag.len() as u32).unwrap();
            b.extend(tag);
            enc::write_uint(&mut b, 1_700_000_000).unwrap();
            b.extend(record("x"));
            b
        }
        let mut tags = TagCache::default();
        let mut out = Vec::new();
        let mut stats = Stats::default();
        for tag in [&b"app"[..], b"app", b"other", b"o\xffk", b"o\xffk", b"app"] {
            decode_request(&message(tag), &LIMITS, NOW, &mut tags, &mut out, &mut stats)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let tags: Vec<&str> = out.iter().map(|r| &*r.tag).collect();
        assert_eq!(
            tags,
            ["app", "app", "other", "o\u{fffd}k", "o\u{fffd}k", "app"]
        );
        assert!(
            Arc::ptr_eq(&out[0].tag, &out[1].tag),
            "equal tags share one Arc"
        );
        assert!(
            !Arc::ptr_eq(&out[0].tag, &out[5].tag),
            "a changed tag is not kept"
        );
        assert_eq!(stats.invalid_utf8, 2, "each invalid tag counted");
    }

    /// A nil (or boolean, float, container) map key no longer drops the record: the key is
    /// written as its JSON text, as Fluent Bit does, and the record counted once.
    #[test]
    fn odd_map_keys_are_kept_as_their_json_text() {
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 3).unwrap();
        for i in 0..3 {
            enc::write_array_len(&mut b, 2).unwrap();
            enc::write_uint(&mut b, 1).unwrap();
            enc::write_map_len(&mut b, 2).unwrap();
            enc::write_str(&mut b, "n").unwrap();
            enc::write_uint(&mut b, i).unwrap();
            if i == 1 {
                enc::write_map_len(&mut b, 5).unwrap();
                enc::write_nil(&mut b).unwrap();
                enc::write_str(&mut b, "nil key").unwrap();
                enc::write_bool(&mut b, true).unwrap();
                enc::write_uint(&mut b, 1).unwrap();
                enc::write_f64(&mut b, 1.5).unwrap();
                enc::write_uint(&mut b, 2).unwrap();
                enc::write_array_len(&mut b, 2).unwrap();
                enc::write_uint(&mut b, 1).unwrap();
                enc::write_str(&mut b, "a").unwrap();
                enc::write_uint(&mut b, 3).unwrap();
                enc::write_str(&mut b, "k").unwrap();
                enc::write_uint(&mut b, 4).unwrap();
            } else {
                enc::write_str(&mut b, "k").unwrap();
            }
            enc::write_nil(&mut b).unwrap();
        }
        let (out, stats, req) = ok(&b);
        assert_eq!(req.records, 3);
        assert_eq!(out[0].fields()["n"], 0);
        // The second record's key is itself a map with odd keys: the whole key becomes
        // its JSON text.
        let key = r#"{"null":"nil key","true":1,"1.5":2,"[1,\"a\"]":3,"k":4}"#;
        assert_eq!(
            serde_json::Value::Object(out[1].fields().into_owned()),
            json!({"n": 1, key: null})
        );
        assert_eq!(out[2].fields()["n"], 2);
        assert_eq!(stats.bad_keys, 1, "counted once per record");
        assert_eq!(stats.skipped_entries(), 0);

        // The tester's case: a top-level nil key.
        let frame = message_with_record(|b| {
            enc::write_map_len(b, 2).unwrap();
            enc::write_nil(b).unwrap();
            enc::write_str(b, "v").unwrap();
            enc::write_str(b, "log").unwrap();
            enc::write_str(b, "kept").unwrap();
        });
        let (out, stats, _) = ok(&frame);
        assert_eq!(
            serde_json::Value::Object(out[0].fields().into_owned()),
            json!({"null": "v", "log": "kept"})
        );
        assert_eq!((stats.bad_keys, stats.bad_records), (1, 0));
    }

    fn nested(depth: usize) -> Vec<u8> {
        message_with_record(|b| {
            enc::write_map_len(b, 1).unwrap();
            enc::write_str(b, "deep").unwrap();
            for _ in 1..depth {
                enc::write_array_len(b, 1).unwrap();
            }
            enc::write_nil(b).unwrap();
        })
    }

    #[test]
    fn nesting_cap() {
        let (out, stats, _) = ok(&nested(MAX_DEPTH));
        assert_eq!((out.len(), stats.bad_records), (1, 0));
        let (out, stats, _) = ok(&nested(MAX_DEPTH + 1));
        assert_eq!((out.len(), stats.bad_records), (0, 1));
        // Far deeper than the stack would like: still just a dropped record.
        let (out, stats, _) = ok(&nested(100_000));
        assert_eq!((out.len(), stats.bad_records), (0, 1));
    }

    #[test]
    fn bad_shapes() {
        let mut map_root = Vec::new();
        enc::write_map_len(&mut map_root, 0).unwrap();
        let mut one = Vec::new();
        enc::write_array_len(&mut one, 1).unwrap();
        enc::write_str(&mut one, "t").unwrap();
        let mut five = message_with_option(|b| drop(enc::write_nil(b)));
        five[0] = 0x95;
        five.push(0xc0);
        let mut int_tag = Vec::new();
        enc::write_array_len(&mut int_tag, 3).unwrap();
        enc::write_uint(&mut int_tag, 1).unwrap();
        enc::write_uint(&mut int_tag, 1).unwrap();
        int_tag.extend(record("x"));
        let mut bool_second = Vec::new();
        enc::write_array_len(&mut bool_second, 2).unwrap();
        enc::write_str(&mut bool_second, "t").unwrap();
        enc::write_bool(&mut bool_second, true).unwrap();
        let mut forward_with_4 = Vec::new();
        enc::write_array_len(&mut forward_with_4, 4).unwrap();
        enc::write_str(&mut forward_with_4, "t").unwrap();
        enc::write_array_len(&mut forward_with_4, 0).unwrap();
        enc::write_nil(&mut forward_with_4).unwrap();
        enc::write_nil(&mut forward_with_4).unwrap();
        let mut message_with_2 = Vec::new();
        enc::write_array_len(&mut message_with_2, 2).unwrap();
        enc::write_str(&mut message_with_2, "t").unwrap();
        enc::write_uint(&mut message_with_2, 1).unwrap();
        for (name, frame) in [
            ("map root", map_root),
            ("int root", vec![0x05]),
            ("one element", one),
            ("five elements", five),
            ("int tag", int_tag),
            ("bool second element", bool_second),
            ("forward with 4 elements", forward_with_4),
            ("message with 2 elements", message_with_2),
        ] {
            assert_eq!(kind(&frame), ErrorKind::BadRequest, "{name}");
        }
    }

    #[test]
    fn entries_around_a_bad_entry_are_kept() {
        let (r, t) = entries(3);
        let e = as_entries(&r, &t);
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 3).unwrap();
        enc::write_str(&mut b, "app-firelens-1").unwrap();
        enc::write_array_len(&mut b, 4).unwrap();
        for entry in &e[..2] {
            enc::write_array_len(&mut b, 2).unwrap();
            client::write_event_time(&mut b, entry.time);
            b.extend_from_slice(entry.record);
        }
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_uint(&mut b, 1).unwrap();
        enc::write_str(&mut b, "not a map").unwrap();
        enc::write_array_len(&mut b, 2).unwrap();
        client::write_event_time(&mut b, e[2].time);
        b.extend_from_slice(e[2].record);
        enc::write_map_len(&mut b, 1).unwrap();
        enc::write_str(&mut b, "chunk").unwrap();
        enc::write_str(&mut b, "c").unwrap();
        let (out, stats, r) = decode(&b);
        assert!(r.unwrap().chunk.is_some());
        assert_eq!(stats.bad_records, 1);
        check_lines(&out, 3);

        // Truncated packed payload: framing is broken, nothing of the request is kept.
        let mut payload = client::encode_entries(&e);
        payload.truncate(payload.len() - 3);
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "app-firelens-1", &payload, false, None, None, None);
        let (out, _, r) = decode(&b);
        assert_eq!(r.unwrap_err().kind, ErrorKind::MalformedMsgpack);
        assert!(out.is_empty());
    }

    #[test]
    fn broken_compression_fails() {
        for payload in [
            vec![0x1f, 0x8b, 0x08, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff],
        ] {
            let mut b = Vec::new();
            client::encode_packed_payload(&mut b, "t", &payload, false, None, Some("gzip"), None);
            assert_eq!(kind(&b), ErrorKind::DecompressFailed, "{payload:02x?}");
        }
        // A valid gzip member followed by garbage.
        let (r, t) = entries(1);
        let mut gz = client::compress(
            &client::encode_entries(&as_entries(&r, &t)),
            Compression::Gzip,
        )
        .unwrap();
        gz.extend([1, 2, 3]);
        let mut b = Vec::new();
        client::encode_packed_payload(&mut b, "t", &gz, false, None, Some("gzip"), None);
        assert_eq!(kind(&b), ErrorKind::DecompressFailed);
    }

    /// 1 GiB of zeros as 1024 concatenated members of 1 MiB each: a few MB on the wire
    /// (how many depends on the compressor), under the default 16 MiB frame limit.
    fn bomb(c: Compression) -> Vec<u8> {
        let member = client::compress(&vec![0u8; 1 << 20], c).unwrap();
        let payload = member.repeat(1024);
        assert!(payload.len() < 16 << 20, "{} bytes", payload.len());
        let mut b = Vec::new();
        client::encode_packed_payload(
            &mut b,
            "t",
            &payload,
            false,
            None,
            Some(c.option_value()),
            None,
        );
        b
    }

    #[test]
    fn decompression_bombs_stop_at_the_cap() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let frame = bomb(c);
            // The error kind is the proof that inflating stopped at the cap instead of
            // producing the whole GiB (no timing assertion: speed is for benchmarks).
            let (out, _, r) = decode(&frame);
            let e = r.unwrap_err();
            assert_eq!(e.kind, ErrorKind::DecompressedTooLarge, "{e}");
            assert!(out.is_empty());

            // A small cap fails even faster.
            let mut out = Vec::new();
            let small = Limits {
                max_decompressed_bytes: 1 << 20,
                max_decoded_bytes: usize::MAX,
            };
            let e = decode_request(
                &frame,
                &small,
                NOW,
                &mut TagCache::default(),
                &mut out,
                &mut Stats::default(),
            )
            .unwrap_err();
            assert_eq!(e.kind, ErrorKind::DecompressedTooLarge);
        }
    }

    /// 3 wire bytes per `[0, {}]` entry become a record of ~115 bytes: decoding counts
    /// that cost (plus the inflated payload) and stops at `max_decoded_bytes`, keeping
    /// nothing of the request, instead of decoding all of it first.
    #[test]
    fn decoding_stops_at_the_cost_cap() {
        const N: usize = 10_000;
        let entries = [0x92u8, 0x00, 0x80].repeat(N);
        let with = |c: Compression| {
            let mut b = Vec::new();
            let payload = client::compress(&entries, c).unwrap();
            client::encode_packed_payload(&mut b, "t", &payload, false, None, None, Some("k"));
            b
        };
        let run = |frame: &[u8], cap: usize| {
            let limits = Limits {
                max_decompressed_bytes: 64 << 20,
                max_decoded_bytes: cap,
            };
            let (out, _, r) = decode_with(frame, &limits);
            (out, r)
        };
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let frame = with(c);
            let (out, r) = run(&frame, usize::MAX);
            assert_eq!(r.unwrap().records, N);
            let records: usize = out.iter().map(Record::approx_size).sum();
            assert!(records > 30 * entries.len(), "{records}");
            let inflated = if matches!(c, Compression::None) {
                0
            } else {
                entries.len()
            };
            // Room for the records and the inflated buffer (grown by doubling) decodes it
            // all; half of the records' cost is refused as too large.
            let (out, r) = run(&frame, records + 2 * inflated);
            assert_eq!(r.unwrap().records, N, "{c:?}");
            assert_eq!(out.len(), N);
            let (out, r) = run(&frame, records / 2);
            assert_eq!(r.unwrap_err().kind, ErrorKind::TooLarge, "{c:?}");
            assert!(out.is_empty());
            if !matches!(c, Compression::None) {
                // The inflated payload alone passes the cap: inflating stops there.
                let (out, r) = run(&frame, entries.len() / 2);
                let e = r.unwrap_err();
                assert_eq!(e.kind, ErrorKind::TooLarge, "{c:?}");
                assert!(out.is_empty());
            }
        }
        // Message mode counts too.
        let (_, r) = run(
            &message_with_time(|b| enc::write_uint(b, 1).map(drop).unwrap()),
            10,
        );
        assert_eq!(r.unwrap_err().kind, ErrorKind::TooLarge);
    }

    #[test]
    fn read_capped_never_grows_past_the_cap() {
        let data = vec![7u8; 300_000];
        let out = read_capped(&data[..], 300_000, "t").unwrap();
        assert_eq!(out.len(), 300_000);
        assert!(out.capacity() <= 300_000);
        assert_eq!(
            read_capped(&data[..], 299_999, "t").unwrap_err().kind,
            ErrorKind::DecompressedTooLarge
        );
    }

    #[test]
    fn plain_parses_small_messages() {
        let ack = client::expected_ack("x\n");
        let p = Plain::parse(&ack).unwrap();
        assert_eq!(p.get("ack"), Some(&Plain::Str(b"x\n".to_vec())));
        assert!(Plain::parse(&[0x92, 0x01]).is_err());
    }
}

/// The packed representation against the tree path on the same msgpack: same fields, same
/// JSON line byte for byte, same answers from the accessors.
#[cfg(test)]
mod packed_vs_tree {
    use proptest::prelude::*;
    use rmp::encode as enc;

    use super::*;
    use crate::output::encode::encode_json_line;

    /// A msgpack value with the encoding choices a sender may make (smallest or wide
    /// integer markers, f32 or f64, fixstr or str8/16/32).
    #[derive(Debug, Clone)]
    enum G {
        Nil,
        Bool(bool),
        U(u64, u8),
        I(i64, u8),
        F32(f32),
        F64(f64),
        S(String, u8),
        A(Vec<G>),
        M(Vec<(String, G)>),
    }

    fn write_str(b: &mut Vec<u8>, s: &str, width: u8) {
        let n = s.len();
        match width % 4 {
            1 if n < 256 => b.extend_from_slice(&[0xd9, n as u8]),
            2 if n < 65_536 => {
                b.push(0xda);
                b.extend_from_slice(&(n as u16).to_be_bytes());
            }
            3 => {
                b.push(0xdb);
                b.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                enc::write_str_len(b, n as u32).unwrap();
            }
        }
        b.extend_from_slice(s.as_bytes());
    }

    fn write(b: &mut Vec<u8>, g: &G) {
        match g {
            G::Nil => enc::write_nil(b).unwrap(),
            G::Bool(x) => enc::write_bool(b, *x).unwrap(),
            G::U(u, w) => match (w % 3, u32::try_from(*u)) {
                (1, _) => enc::write_u64(b, *u).unwrap(),
                (2, Ok(small)) => enc::write_u32(b, small).unwrap(),
                _ => {
                    enc::write_uint(b, *u).unwrap();
                }
            },
            G::I(i, w) => match (w % 3, i32::try_from(*i)) {
                (1, _) => enc::write_i64(b, *i).unwrap(),
                (2, Ok(small)) => enc::write_i32(b, small).unwrap(),
                _ => {
                    enc::write_sint(b, *i).unwrap();
                }
            },
            G::F32(f) => enc::write_f32(b, *f).unwrap(),
            G::F64(f) => enc::write_f64(b, *f).unwrap(),
            G::S(s, w) => write_str(b, s, *w),
            G::A(items) => {
                enc::write_array_len(b, items.len() as u32).unwrap();
                for i in items {
                    write(b, i);
                }
            }
            G::M(pairs) => {
                enc::write_map_len(b, pairs.len() as u32).unwrap();
                for (k, v) in pairs {
                    write_str(b, k, k.len() as u8);
                    write(b, v);
                }
            }
        }
    }

    fn has_duplicate_keys(g: &G) -> bool {
        match g {
            G::A(items) => items.iter().any(has_duplicate_keys),
            G::M(pairs) => {
                let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                keys.sort_unstable();
                keys.windows(2).any(|w| w[0] == w[1])
                    || pairs.iter().any(|(_, v)| has_duplicate_keys(v))
            }
            _ => false,
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            // Any char: controls, quotes, backslashes, U+2028, astral planes.
            prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
            Just(String::new()),
            Just("\"\\/\u{0}\u{1f}\u{7f}\u{2028}\u{fffd}😀".to_owned()),
            "[a-z]{1,3}",
            Just("x".repeat(300)),
        ]
    }

    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            Just(1.0),
            Just(-0.0),
            Just(0.0),
            Just(1e300),
            Just(-1e-300),
            Just(5e-324),
            Just(f64::MAX),
            Just(0.1),
            Just(1e21),
            Just(123456789.0),
        ]
    }

    fn value() -> impl Strategy<Value = G> {
        let leaf = prop_oneof![
            Just(G::Nil),
            any::<bool>().prop_map(G::Bool),
            (
                prop_oneof![any::<u64>(), Just(u64::MAX), Just(0), Just(127), Just(128)],
                any::<u8>()
            )
                .prop_map(|(u, w)| G::U(u, w)),
            (
                prop_oneof![any::<i64>(), Just(i64::MIN), Just(-1), Just(-32), Just(-33)],
                any::<u8>()
            )
                .prop_map(|(i, w)| G::I(i, w)),
            any::<f32>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(G::F32),
            float().prop_map(G::F64),
            (text(), any::<u8>()).prop_map(|(s, w)| G::S(s, w)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(G::A),
                prop::collection::vec(("[a-d]{1,2}|.{0,4}", inner), 0..6).prop_map(G::M),
            ]
        })
    }

    fn record() -> impl Strategy<Value = Vec<(String, G)>> {
        // Keys from a small alphabet collide now and then (duplicates), and sometimes are
        // the `tag_key` / `time_key` of the encoding (the record keeps its own field).
        prop::collection::vec(
            (
                prop_oneof![
                    "[a-e]{1,2}",
                    Just("tag".to_owned()),
                    Just("time".to_owned()),
                    ".{0,6}"
                ],
                value(),
            ),
            0..24,
        )
    }

    fn line(r: &Record, tag_key: Option<&str>, time_key: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_json_line(r, tag_key, time_key, &mut out).expect("encodes");
        out
    }

    fn check(pairs: Vec<(String, G)>) -> Result<(), TestCaseError> {
        let g = G::M(pairs);
        let mut bytes = Vec::new();
        write(&mut bytes, &g);
        let mut stats = Stats::default();
        let tree = read_record(&mut Cursor::new(&bytes), &mut stats).expect("tree path");
        let tree = Record::new("app.tag", 1_700_000_000_123_456_789, tree);
        let packed = Record::from_packed("app.tag", tree.time_ns, Bytes::from(bytes.clone()));
        prop_assert_eq!(packed.is_some(), !has_duplicate_keys(&g));
        let Some(packed) = packed else {
            return Ok(());
        };
        prop_assert_eq!(&stats, &Stats::default());
        prop_assert_eq!(&*packed.fields(), &*tree.fields());
        for (tk, tmk) in [
            (None, None),
            (Some("tag"), Some("time")),
            (Some("t"), Some("@timestamp")),
            (Some("a"), None),
        ] {
            let (p, t) = (line(&packed, tk, tmk), line(&tree, tk, tmk));
            prop_assert_eq!(
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(&t),
                "tag_key {:?} time_key {:?}",
                tk,
                tmk
            );
        }
        prop_assert_eq!(packed.keys(), tree.keys());
        prop_assert_eq!(packed.len(), tree.len());
        for k in tree.keys() {
            let (p, t) = (packed.get(k).expect("key"), tree.get(k).expect("key"));
            prop_assert_eq!(p.to_value(), t.to_value());
            prop_assert_eq!(p.as_str(), t.as_str());
            prop_assert_eq!(
                serde_json::to_string(&p).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
        let absent = "\u{0}absent";
        prop_assert!(!packed.contains_key(absent));
        prop_assert!(packed.get(absent).is_none());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn packed_and_tree_agree(pairs in record()) {
            check(pairs)?;
        }
    }

    #[test]
    fn edge_cases_agree() {
        let cases: Vec<Vec<(String, G)>> = vec![
            vec![],
            vec![(
                "log".into(),
                G::S("a\u{0}\u{1}\n\t\"\\é😀\u{2028}".into(), 0),
            )],
            vec![
                ("u".into(), G::U(u64::MAX, 1)),
                ("i".into(), G::I(i64::MIN, 1)),
            ],
            vec![("p".into(), G::I(5, 1)), ("z".into(), G::I(0, 2))],
            vec![
                ("f".into(), G::F64(1.0)),
                ("g".into(), G::F64(1e300)),
                ("h".into(), G::F64(-0.0)),
                ("s".into(), G::F32(0.1)),
                ("t".into(), G::F32(-0.0)),
            ],
            vec![
                ("e".into(), G::M(vec![])),
                ("a".into(), G::A(vec![])),
                (
                    "n".into(),
                    G::M(vec![(
                        "x".into(),
                        G::A(vec![G::Nil, G::Bool(true), G::M(vec![])]),
                    )]),
                ),
            ],
            vec![
                ("tag".into(), G::S("own".into(), 3)),
                ("time".into(), G::U(1, 0)),
            ],
        ];
        for c in cases {
            check(c).expect("agree");
        }
    }

    #[test]
    fn decoder_keeps_plain_maps_packed_and_repairs_the_rest_as_before() {
        let mut b = Vec::new();
        enc::write_array_len(&mut b, 2).unwrap();
        enc::write_str(&mut b, "t").unwrap();
        enc::write_array_len(&mut b, 3).unwrap();
        for body in [
            G::M(vec![("log".into(), G::S("plain".into(), 0))]),
            // Duplicate key: the tree keeps the first position and the last value.
            G::M(vec![
                ("log".into(), G::S("first".into(), 0)),
                ("n".into(), G::U(1, 0)),
                ("log".into(), G::S("last".into(), 0)),
            ]),
            G::M(vec![("f".into(), G::F64(f64::NAN))]),
        ] {
            enc::write_array_len(&mut b, 2).unwrap();
            enc::write_uint(&mut b, 1_700_000_000).unwrap();
            write(&mut b, &body);
        }
        let mut out = Vec::new();
        let mut stats = Stats::default();
        let limits = Limits {
            max_decompressed_bytes: 1 << 20,
            max_decoded_bytes: usize::MAX,
        };
        decode_request(
            &b,
            &limits,
            0,
            &mut TagCache::default(),
            &mut out,
            &mut stats,
        )
        .expect("decodes");
        assert_eq!(out.len(), 3);
        assert!(out[0].packed().is_some());
        assert!(out[1].packed().is_none());
        assert_eq!(line(&out[1], None, None), b"{\"log\":\"last\",\"n\":1}\n");
        assert!(out[2].packed().is_none());
        assert_eq!(line(&out[2], None, None), b"{\"f\":null}\n");
    }
}
