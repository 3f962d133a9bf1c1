//! The Fluent forward input end to end: the real `firelane` binary listening on TCP and a
//! unix socket, records landing in a `file` output, checked field by field.
//!
//! Covers every request mode and time encoding, acks, heartbeats, the shared-key handshake,
//! a third-party client (the `fluent-logger` PyPI package, via `$FIRELANE_TEST_PYTHON`;
//! skipped with a loud message without it), hostile input next to well-behaved clients,
//! unix socket housekeeping, lenient cases, SIGTERM draining, the memory budget, a stalled
//! output pushing back on the socket, and `firelane loadgen`.
//!
//! Run with `scripts/test.sh --test forward_input`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::fake_http::FakeHttp;
use common::{Router, free_port, http_get, peak_rss, read_jsonl, wait_lines};
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, Compression, Entry, EventTime, ForwardClient};
use serde_json::{Value, json};

/// 2023-11-14T22:13:20Z: every record of the mode tests is stamped near it.
const BASE: u32 = 1_700_000_000;
const TIMEOUT: Duration = Duration::from_secs(30);
const INPUT: &str = "input=\"fwd\"";

/// A forward input on TCP and a unix socket in a directory that does not exist yet, routed
/// to a JSON-lines file with the tag and time added.
fn config(port: u16, input_extra: &str, output: &str) -> String {
    format!(
        r#"
[runtime]
data_dir = "{{dir}}/data"

[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{port}", "unix://{{dir}}/run/sub/fluent.sock"]
{input_extra}

[routes.all]
from = ["fwd"]
to = ["out"]

{output}
"#
    )
}

const FILE_OUTPUT: &str = r#"
[outputs.out]
type = "file"
path = "{dir}/out.jsonl"
tag_key = "_tag"
time_key = "_time"
batch = { max_records = 500, max_age = "50ms" }
"#;

fn tcp(port: u16) -> ListenAddr {
    ListenAddr::Tcp(format!("127.0.0.1:{port}"))
}

fn unix(r: &Router) -> ListenAddr {
    ListenAddr::Unix(r.path("run/sub/fluent.sock"))
}

fn out_path(r: &Router) -> std::path::PathBuf {
    r.path("out.jsonl")
}

fn connect(addr: &ListenAddr) -> ForwardClient {
    ForwardClient::connect(addr, TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Raw msgpack, built here rather than with the crate's encoders, for shapes those encoders
// never produce (integer/float/ext8 times, Fluent Bit entries, markers, nil options).

/// The ways a sender may write an event time.
#[derive(Debug, Clone, Copy)]
enum T {
    /// Integer seconds (fluent-logger without nanosecond precision, old fluentd).
    Int(u32),
    /// Float seconds.
    Float(f64),
    /// EventTime as fixext8 (Docker, Fluent Bit).
    Fix(u32, u32),
    /// EventTime as ext8 with length 8 (some msgpack libraries never use fixext).
    Ext8(u32, u32),
}

impl T {
    fn write(self, b: &mut Vec<u8>) {
        match self {
            T::Int(s) => {
                rmp::encode::write_uint(b, u64::from(s)).unwrap();
            }
            T::Float(f) => rmp::encode::write_f64(b, f).unwrap(),
            T::Fix(s, n) => {
                b.extend([0xd7, 0x00]);
                b.extend(s.to_be_bytes());
                b.extend(n.to_be_bytes());
            }
            T::Ext8(s, n) => {
                b.extend([0xc7, 0x08, 0x00]);
                b.extend(s.to_be_bytes());
                b.extend(n.to_be_bytes());
            }
        }
    }

    /// The RFC 3339 text the file output must show, computed with chrono (not with the
    /// formatter under test).
    fn rfc3339(self) -> String {
        let (secs, nanos) = match self {
            T::Int(s) => (i64::from(s), 0),
            // Only values exact in binary are used (x.5, x.25).
            T::Float(f) => (f.trunc() as i64, (f.fract() * 1e9).round() as u32),
            T::Fix(s, n) | T::Ext8(s, n) => (i64::from(s), n),
        };
        rfc3339(secs, nanos)
    }
}

fn rfc3339(secs: i64, nanos: u32) -> String {
    chrono::DateTime::from_timestamp(secs, nanos)
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A record with strings, unicode, numbers, nesting, booleans and nil.
fn record(seq: u64, mode: &str) -> Vec<u8> {
    let mut b = Vec::new();
    rmp::encode::write_map_len(&mut b, 4).unwrap();
    rmp::encode::write_str(&mut b, "seq").unwrap();
    rmp::encode::write_uint(&mut b, seq).unwrap();
    rmp::encode::write_str(&mut b, "mode").unwrap();
    rmp::encode::write_str(&mut b, mode).unwrap();
    rmp::encode::write_str(&mut b, "msg").unwrap();
    rmp::encode::write_str(&mut b, &format!("line {seq} \"é\" ✓\n")).unwrap();
    rmp::encode::write_str(&mut b, "nested").unwrap();
    rmp::encode::write_map_len(&mut b, 2).unwrap();
    rmp::encode::write_str(&mut b, "a").unwrap();
    rmp::encode::write_array_len(&mut b, 4).unwrap();
    rmp::encode::write_uint(&mut b, 1).unwrap();
    rmp::encode::write_f64(&mut b, 2.5).unwrap();
    rmp::encode::write_bool(&mut b, true).unwrap();
    rmp::encode::write_nil(&mut b).unwrap();
    rmp::encode::write_str(&mut b, "neg").unwrap();
    rmp::encode::write_sint(&mut b, -7).unwrap();
    b
}

fn expected_line(tag: &str, time: &str, seq: u64, mode: &str) -> Value {
    json!({
        "_time": time,
        "_tag": tag,
        "seq": seq,
        "mode": mode,
        "msg": format!("line {seq} \"é\" ✓\n"),
        "nested": {"a": [1, 2.5, true, null], "neg": -7},
    })
}

/// How an entry is framed.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// `[time, record]`
    Plain,
    /// Fluent Bit 2.x+: `[[time, {metadata}], record]`
    FbMap,
    /// Fluent Bit with nil metadata: `[[time, nil], record]`
    FbNil,
}

fn write_entry(b: &mut Vec<u8>, form: Form, t: T, record: &[u8]) {
    rmp::encode::write_array_len(b, 2).unwrap();
    match form {
        Form::Plain => t.write(b),
        Form::FbMap => {
            rmp::encode::write_array_len(b, 2).unwrap();
            t.write(b);
            rmp::encode::write_map_len(b, 1).unwrap();
            rmp::encode::write_str(b, "otlp").unwrap();
            rmp::encode::write_map_len(b, 0).unwrap();
        }
        Form::FbNil => {
            rmp::encode::write_array_len(b, 2).unwrap();
            t.write(b);
            rmp::encode::write_nil(b).unwrap();
        }
    }
    b.extend_from_slice(record);
}

/// Fluent Bit group start (-1) or end (-2) marker: `[[EventTime(-n), {}], {}]`.
fn write_group_marker(b: &mut Vec<u8>, end: bool) {
    let secs = if end { 0xFFFF_FFFE } else { 0xFFFF_FFFF };
    rmp::encode::write_array_len(b, 2).unwrap();
    rmp::encode::write_array_len(b, 2).unwrap();
    T::Fix(secs, 0).write(b);
    rmp::encode::write_map_len(b, 1).unwrap();
    rmp::encode::write_str(b, "schema").unwrap();
    rmp::encode::write_str(b, "otlp").unwrap();
    rmp::encode::write_map_len(b, 0).unwrap();
}

/// The option element.
#[derive(Debug, Clone, Copy)]
enum Opt<'a> {
    Absent,
    Nil,
    /// A map, with `size`, `compressed` and `chunk` when given.
    Map {
        size: Option<usize>,
        compressed: Option<&'a str>,
        chunk: Option<&'a str>,
    },
}

impl Opt<'_> {
    fn present(&self) -> bool {
        !matches!(self, Opt::Absent)
    }

    fn write(&self, b: &mut Vec<u8>) {
        match *self {
            Opt::Absent => {}
            Opt::Nil => rmp::encode::write_nil(b).unwrap(),
            Opt::Map {
                size,
                compressed,
                chunk,
            } => {
                let n = usize::from(size.is_some())
                    + usize::from(compressed.is_some())
                    + usize::from(chunk.is_some());
                rmp::encode::write_map_len(b, n as u32).unwrap();
                if let Some(s) = size {
                    rmp::encode::write_str(b, "size").unwrap();
                    rmp::encode::write_uint(b, s as u64).unwrap();
                }
                if let Some(c) = compressed {
                    rmp::encode::write_str(b, "compressed").unwrap();
                    rmp::encode::write_str(b, c).unwrap();
                }
                if let Some(c) = chunk {
                    rmp::encode::write_str(b, "chunk").unwrap();
                    rmp::encode::write_str(b, c).unwrap();
                }
            }
        }
    }
}

fn opt_chunk(chunk: Option<&str>) -> Opt<'_> {
    Opt::Map {
        size: None,
        compressed: None,
        chunk,
    }
}

fn raw_message(tag: &str, t: T, record: &[u8], opt: Opt<'_>) -> Vec<u8> {
    let mut b = Vec::new();
    rmp::encode::write_array_len(&mut b, 3 + u32::from(opt.present())).unwrap();
    rmp::encode::write_str(&mut b, tag).unwrap();
    t.write(&mut b);
    b.extend_from_slice(record);
    opt.write(&mut b);
    b
}

fn raw_forward(tag: &str, entries: &[u8], count: u32, opt: Opt<'_>) -> Vec<u8> {
    let mut b = Vec::new();
    rmp::encode::write_array_len(&mut b, 2 + u32::from(opt.present())).unwrap();
    rmp::encode::write_str(&mut b, tag).unwrap();
    rmp::encode::write_array_len(&mut b, count).unwrap();
    b.extend_from_slice(entries);
    opt.write(&mut b);
    b
}

/// One request of `count` `entries` (their encoded bytes) for `tag`, with the option
/// `chunk`, in `mode`: "Forward" (an array of entries), "PackedForward" (a bin of them), or
/// "gzip" / "zstd" (CompressedPackedForward with that `compressed` option).
fn request_in_mode(mode: &str, tag: &str, entries: &[u8], count: u32, chunk: &str) -> Vec<u8> {
    let mut req = Vec::new();
    match mode {
        "Forward" => return raw_forward(tag, entries, count, opt_chunk(Some(chunk))),
        "PackedForward" => {
            client::encode_packed_payload(&mut req, tag, entries, false, None, None, Some(chunk))
        }
        z => {
            let payload = match z {
                "gzip" => gzip(entries),
                "zstd" => zstd(entries),
                other => panic!("no such mode {other}"),
            };
            client::encode_packed_payload(
                &mut req,
                tag,
                &payload,
                false,
                None,
                Some(z),
                Some(chunk),
            )
        }
    }
    req
}

fn gzip(data: &[u8]) -> Vec<u8> {
    client::compress(data, Compression::Gzip).unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    client::compress(data, Compression::Zstd).unwrap()
}

/// Reads from a raw socket until the peer closes it (EOF or reset). Returns false if the
/// connection is still open after `timeout`.
fn closed_by_peer(s: &mut dyn Read, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true, // reset: closed with unread data
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// Every mode, time encoding, option shape and ack, over TCP and the unix socket.

/// Collects what was sent and what must come out.
struct Expect {
    /// (tag, seq) → expected line.
    lines: BTreeMap<(String, u64), Value>,
    next_seq: u64,
}

impl Expect {
    fn add(&mut self, tag: &str, t: T, mode: &str) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = expected_line(tag, &t.rfc3339(), seq, mode);
        assert!(self.lines.insert((tag.to_owned(), seq), line).is_none());
        record(seq, mode)
    }
}

/// A varied set of entries: every time encoding, both Fluent Bit forms and group markers.
fn varied_entries(ex: &mut Expect, tag: &str, mode: &str, base: u32) -> (Vec<u8>, u32) {
    let cases = [
        (Form::Plain, T::Int(base)),
        (Form::Plain, T::Float(f64::from(base) + 0.5)),
        (Form::Plain, T::Fix(base + 1, 123_456_789)),
        (Form::Plain, T::Ext8(base + 2, 1)),
        (Form::FbMap, T::Fix(base + 3, 999_999_999)),
        (Form::FbNil, T::Ext8(base + 4, 42)),
        (Form::FbMap, T::Int(base + 5)),
        (Form::FbNil, T::Float(f64::from(base) + 6.25)),
    ];
    let mut b = Vec::new();
    write_group_marker(&mut b, false);
    for (form, t) in cases {
        let rec = ex.add(tag, t, mode);
        write_entry(&mut b, form, t, &rec);
    }
    write_group_marker(&mut b, true);
    (b, cases.len() as u32 + 2)
}

/// Sends one request; with a chunk, waits for its ack and checks that the records were
/// counted as accepted by the time the ack arrived.
fn send_acked(r: &Router, c: &mut ForwardClient, bytes: &[u8], chunk: Option<&str>, ex: &Expect) {
    c.send(bytes).unwrap();
    if let Some(chunk) = chunk {
        c.read_ack(chunk).unwrap_or_else(|e| panic!("ack: {e}"));
        let accepted = r.metric("firelane_input_records_total", &[INPUT]);
        assert!(
            accepted >= ex.lines.len() as f64,
            "acked before the records were accepted: {accepted} < {}",
            ex.lines.len()
        );
    }
}

fn run_modes(r: &Router, addr: &ListenAddr, transport: &str, ack: bool, ex: &mut Expect) {
    let mut c = connect(addr);
    let base = BASE + if ack { 100 } else { 0 } + if transport == "unix" { 1000 } else { 0 };
    let chunk = |name: &str| ack.then(|| format!("{transport}-{name}-{}", client::new_chunk_id()));
    let tag = |mode: &str| format!("{transport}.{}.{mode}", if ack { "ack" } else { "noack" });

    // Message: one request per time encoding. Without acks they go out in one write, with
    // heartbeats between them, and with the option absent, nil or a map without chunk.
    let mode = "message";
    let t = tag(mode);
    let mut batch = Vec::new();
    let times = [
        T::Int(base),
        T::Float(f64::from(base) + 0.25),
        T::Fix(base, 7),
        T::Ext8(base, 999_999_999),
    ];
    let opts = [
        Opt::Absent,
        Opt::Nil,
        Opt::Map {
            size: Some(1),
            compressed: None,
            chunk: None,
        },
        Opt::Absent,
    ];
    for (t_enc, opt) in times.into_iter().zip(opts) {
        let rec = ex.add(&t, t_enc, mode);
        let ch = chunk(mode);
        let opt = if ack { opt_chunk(ch.as_deref()) } else { opt };
        let req = raw_message(&t, t_enc, &rec, opt);
        if ack {
            c.send(&[0xc0]).unwrap(); // heartbeat: must not be answered
            send_acked(r, &mut c, &req, ch.as_deref(), ex);
        } else {
            batch.push(0xc0);
            batch.extend(req);
        }
    }
    c.send(&batch).unwrap();
    // The crate's own encoder (fixext8 EventTime).
    let now = EventTime {
        secs: base + 10,
        nanos: 5,
    };
    let rec = ex.add(&t, T::Fix(now.secs, now.nanos), mode);
    let ch = chunk(mode);
    let mut req = Vec::new();
    client::encode_message(&mut req, &t, now, &rec, ch.as_deref());
    send_acked(r, &mut c, &req, ch.as_deref(), ex);
    if ack {
        // A bin chunk is echoed in its original encoding.
        let rec = ex.add(&t, T::Int(base + 11), mode);
        let mut req = raw_message(&t, T::Int(base + 11), &rec, Opt::Absent);
        req[0] += 1;
        rmp::encode::write_map_len(&mut req, 1).unwrap();
        rmp::encode::write_str(&mut req, "chunk").unwrap();
        rmp::encode::write_bin(&mut req, &[0, 159, 255, 10]).unwrap();
        c.send(&req).unwrap();
        let got = c.read_message().unwrap();
        assert_eq!(
            got,
            [0x81, 0xa3, b'a', b'c', b'k', 0xc4, 4, 0, 159, 255, 10]
        );
    }

    // Forward: varied entries; option absent / nil / map, and with acks three requests
    // pipelined in one write, acked in order.
    let mode = "forward";
    let t = tag(mode);
    if ack {
        let mut pipelined = Vec::new();
        let mut chunks = Vec::new();
        for i in 0..3 {
            let (entries, n) = varied_entries(ex, &t, mode, base + 20 * i);
            let ch = chunk(mode);
            let opt = if i == 1 {
                Opt::Map {
                    size: Some(8),
                    compressed: None,
                    chunk: ch.as_deref(),
                }
            } else {
                opt_chunk(ch.as_deref())
            };
            pipelined.extend(raw_forward(&t, &entries, n, opt));
            chunks.push(ch);
        }
        c.send(&pipelined).unwrap();
        for ch in &chunks {
            c.read_ack(ch.as_deref().unwrap()).unwrap();
        }
    } else {
        for (i, opt) in [Opt::Absent, Opt::Nil, opt_chunk(None)]
            .into_iter()
            .enumerate()
        {
            let (entries, n) = varied_entries(ex, &t, mode, base + 20 * i as u32);
            c.send(&raw_forward(&t, &entries, n, opt)).unwrap();
        }
    }
    // The crate's Forward encoder.
    let recs: Vec<Vec<u8>> = (0..3u32)
        .map(|i| ex.add(&t, T::Fix(base + 70 + i, i), mode))
        .collect();
    let entries: Vec<Entry<'_>> = recs
        .iter()
        .enumerate()
        .map(|(i, rec)| Entry {
            time: EventTime {
                secs: base + 70 + i as u32,
                nanos: i as u32,
            },
            record: rec,
        })
        .collect();
    let ch = chunk(mode);
    let mut req = Vec::new();
    client::encode_forward(&mut req, &t, &entries, ch.as_deref());
    send_acked(r, &mut c, &req, ch.as_deref(), ex);

    // PackedForward, payload as bin and as str, with the crate's encoders.
    for (mode, as_str) in [("packed_bin", false), ("packed_str", true)] {
        let t = tag(mode);
        let (payload, _) = varied_entries(ex, &t, mode, base + 100);
        let ch = chunk(mode);
        let mut req = Vec::new();
        client::encode_packed_payload(&mut req, &t, &payload, as_str, None, None, ch.as_deref());
        send_acked(r, &mut c, &req, ch.as_deref(), ex);
        // Packed with the option absent entirely: `[tag, payload]`.
        if !ack {
            let (payload, _) = varied_entries(ex, &t, mode, base + 110);
            let mut req = Vec::new();
            rmp::encode::write_array_len(&mut req, 2).unwrap();
            rmp::encode::write_str(&mut req, &t).unwrap();
            if as_str {
                rmp::encode::write_str_len(&mut req, payload.len() as u32).unwrap();
                req.extend(&payload);
            } else {
                rmp::encode::write_bin(&mut req, &payload).unwrap();
            }
            c.send(&req).unwrap();
        }
    }
    let mode = "packed_bin";
    let t = tag(mode);
    let rec = ex.add(&t, T::Fix(base + 120, 1), mode);
    let ch = chunk(mode);
    let mut req = Vec::new();
    let e = [Entry {
        time: EventTime {
            secs: base + 120,
            nanos: 1,
        },
        record: &rec,
    }];
    client::encode_packed(&mut req, &t, &e, ch.as_deref());
    send_acked(r, &mut c, &req, ch.as_deref(), ex);

    // CompressedPackedForward: gzip as several concatenated members (fluentd appends one
    // member per write), zstd as two frames and through the crate's encoder, and
    // `compressed = "text"` (uncompressed payload announced as such).
    for (mode, members, offset) in [("gzip", 3, 200), ("zstd", 2, 300)] {
        let t = tag(mode);
        let mut payload = Vec::new();
        for i in 0..members {
            let (entries, _) = varied_entries(ex, &t, mode, base + offset + 20 * i);
            payload.extend(if mode == "gzip" {
                gzip(&entries)
            } else {
                zstd(&entries)
            });
        }
        let ch = chunk(mode);
        let mut req = Vec::new();
        client::encode_packed_payload(
            &mut req,
            &t,
            &payload,
            false,
            None,
            Some(mode),
            ch.as_deref(),
        );
        send_acked(r, &mut c, &req, ch.as_deref(), ex);
    }
    for (compression, mode) in [(Compression::Zstd, "zstd"), (Compression::Gzip, "gzip")] {
        let t = tag(mode);
        let rec = ex.add(&t, T::Fix(base + 350, 3), mode);
        let e = [Entry {
            time: EventTime {
                secs: base + 350,
                nanos: 3,
            },
            record: &rec,
        }];
        let ch = chunk(mode);
        let mut req = Vec::new();
        client::encode_compressed(&mut req, &t, &e, compression, ch.as_deref()).unwrap();
        send_acked(r, &mut c, &req, ch.as_deref(), ex);
    }

    let mode = "text";
    let t = tag(mode);
    let (payload, n) = varied_entries(ex, &t, mode, base + 400);
    let ch = chunk(mode);
    let mut req = Vec::new();
    client::encode_packed_payload(
        &mut req,
        &t,
        &payload,
        false,
        Some(n as usize),
        Some("text"),
        ch.as_deref(),
    );
    send_acked(r, &mut c, &req, ch.as_deref(), ex);

    // Nothing unasked for was sent back: the next message on the socket is this ack.
    let last = client::new_chunk_id();
    let rec = ex.add(&tag("message"), T::Int(base + 500), "message");
    c.send(&raw_message(
        &tag("message"),
        T::Int(base + 500),
        &rec,
        opt_chunk(Some(&last)),
    ))
    .unwrap();
    c.read_ack(&last).unwrap();
    c.finish().unwrap();
    assert!(c.read_message().is_err(), "server sent more than the acks");
}

#[test]
fn every_mode_time_and_option_over_tcp_and_unix() {
    let port = free_port();
    let r = Router::start(&config(port, "", FILE_OUTPUT));
    let mut ex = Expect {
        lines: BTreeMap::new(),
        next_seq: 0,
    };
    for (transport, addr) in [("tcp", tcp(port)), ("unix", unix(&r))] {
        for ack in [false, true] {
            run_modes(&r, &addr, transport, ack, &mut ex);
        }
    }
    let want = ex.lines.len();
    let lines = wait_lines(&out_path(&r), want, TIMEOUT);
    let mut got: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for l in lines {
        let tag = l["_tag"].as_str().expect("tag").to_owned();
        let seq = l["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {l}"));
        assert!(got.insert((tag, seq), l.clone()).is_none(), "duplicate {l}");
    }
    for (key, want_line) in &ex.lines {
        let line = got
            .get(key)
            .unwrap_or_else(|| panic!("missing {key:?}; got {} of {want} lines", got.len()));
        for (field, v) in want_line.as_object().unwrap() {
            assert_eq!(&line[field], v, "{key:?} field {field}: {line}");
        }
        assert_eq!(line, want_line, "{key:?}");
    }
    assert_eq!(got.len(), want, "extra lines (markers must be skipped)");
    assert_eq!(
        r.metric("firelane_input_records_total", &[INPUT]),
        want as f64
    );
    let errors = r.metric("firelane_input_errors_total", &[INPUT]);
    assert_eq!(errors, 0.0, "{}", r.metrics());
}

// ---------------------------------------------------------------------------------------
// Shared-key handshake.

#[test]
fn shared_key_handshake() {
    let port = free_port();
    let r = Router::start(&config(port, "shared_key = \"s3cret-key\"", FILE_OUTPUT));
    let auth = ["kind=\"auth_failed\"", INPUT];

    // Right key, over both transports: records pass.
    for (i, addr) in [tcp(port), unix(&r)].iter().enumerate() {
        let mut c = connect(addr);
        c.handshake("s3cret-key", "app-host").unwrap();
        let chunk = client::new_chunk_id();
        let mut req = Vec::new();
        client::encode_message(
            &mut req,
            "secure",
            EventTime {
                secs: BASE,
                nanos: i as u32,
            },
            &record(i as u64, "secure"),
            Some(&chunk),
        );
        c.send(&req).unwrap();
        c.read_ack(&chunk).unwrap();
    }

    // Wrong key: PONG false, then the connection is closed and nothing is accepted.
    let mut c = connect(&tcp(port));
    let e = c.handshake("wrong", "app-host").unwrap_err();
    assert!(e.to_string().contains("shared_key mismatch"), "{e}");
    let mut req = Vec::new();
    client::encode_message(
        &mut req,
        "intruder",
        EventTime::now(),
        &record(99, "x"),
        None,
    );
    let _ = c.send(&req);
    assert!(c.read_message().is_err(), "connection must be closed");
    assert!(r.wait_metric("firelane_input_errors_total", &auth, 1.0, TIMEOUT) >= 1.0);

    // No handshake at all: a request where the PING should be.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(&req).unwrap();
    assert!(closed_by_peer(&mut s, TIMEOUT), "connection must be closed");
    assert!(r.wait_metric("firelane_input_errors_total", &auth, 2.0, TIMEOUT) >= 2.0);

    let lines = wait_lines(&out_path(&r), 2, TIMEOUT);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["_tag"], "secure");
        assert_eq!(l["seq"], i as u64);
        assert_eq!(l["_time"], rfc3339(i64::from(BASE), i as u32));
    }
    // Give a late intruder record a chance to show up before concluding it was refused.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_jsonl(&out_path(&r)).len(), 2);
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{}/health", r.admin))
            .unwrap()
            .0,
        200
    );
}

// ---------------------------------------------------------------------------------------
// A third-party client: fluent-logger (Python).

fn python() -> Option<String> {
    if let Ok(p) = std::env::var("FIRELANE_TEST_PYTHON")
        && !p.is_empty()
    {
        return Some(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return Some(venv.display().to_string());
    }
    common::peer_missing("FIRELANE_TEST_PYTHON is not set; fluent-logger was NOT tested");
    None
}

const PY_SENDER: &str = r#"
import sys, time
from fluent import sender
from fluent.sender import EventTime
host, port, n, ns, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
s = sender.FluentSender(prefix, host=host, port=port, nanosecond_precision=ns, timeout=10)
for i in range(n):
    t = EventTime(1700000000 + i, i * 1000 + 7) if ns else 1700000000 + i
    rec = {"seq": i, "msg": "hello %d ü\t\"q\"" % i, "f": 1.5, "list": [1, "a", None], "ok": True}
    if not s.emit_with_time("ev", t, rec):
        print("emit failed:", s.last_error, file=sys.stderr)
        sys.exit(1)
if not s.emit("now", {"seq": n}):
    print("emit failed:", s.last_error, file=sys.stderr)
    sys.exit(1)
s.close()
if s.last_error is not None:
    print("error:", s.last_error, file=sys.stderr)
    sys.exit(1)
print("sent", n + 1)
"#;

#[test]
fn fluent_logger_python_client() {
    let Some(py) = python() else { return };
    let port = free_port();
    let r = Router::start(&config(port, "", FILE_OUTPUT));
    const N: u64 = 500;
    let unix_host = format!("unix://{}", r.path("run/sub/fluent.sock").display());
    let runs = [
        ("127.0.0.1".to_owned(), false),
        (unix_host.clone(), true),
        ("127.0.0.1".to_owned(), true),
    ];
    for (run, (host, ns)) in runs.iter().enumerate() {
        let out = Command::new(&py)
            .args(["-c", PY_SENDER, host, &port.to_string(), &N.to_string()])
            .arg(if *ns { "1" } else { "0" })
            .arg(format!("py{run}"))
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "fluent-logger failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total = runs.len() * (N as usize + 1);
    let lines = wait_lines(&out_path(&r), total, TIMEOUT);
    assert_eq!(lines.len(), total);
    let now = chrono::Utc::now();
    let mut by_tag: HashMap<String, BTreeMap<u64, Value>> = HashMap::new();
    for l in lines {
        let tag = l["_tag"].as_str().expect("tag").to_owned();
        let seq = l["seq"].as_u64().expect("seq");
        assert!(
            by_tag
                .entry(tag)
                .or_default()
                .insert(seq, l.clone())
                .is_none(),
            "duplicate {l}"
        );
    }
    for (run, (_, ns)) in runs.iter().enumerate() {
        let records = by_tag.remove(&format!("py{run}.ev")).unwrap_or_default();
        assert_eq!(records.len(), N as usize, "run {run}");
        for (i, l) in records {
            let time = if *ns {
                rfc3339(i64::from(BASE) + i as i64, (i * 1000 + 7) as u32)
            } else {
                rfc3339(i64::from(BASE) + i as i64, 0)
            };
            let want = json!({
                "_time": time, "_tag": format!("py{run}.ev"), "seq": i,
                "msg": format!("hello {i} ü\t\"q\""), "f": 1.5,
                "list": [1, "a", null], "ok": true,
            });
            assert_eq!(l, want, "run {run} record {i}");
        }
        let last = by_tag
            .remove(&format!("py{run}.now"))
            .expect("emit() record");
        assert_eq!(last.len(), 1);
        let last = &last[&N];
        let t: chrono::DateTime<chrono::Utc> = last["_time"].as_str().unwrap().parse().unwrap();
        assert!(
            (now - t).num_seconds().abs() < 600,
            "emit() time {t} vs now {now}"
        );
        if !ns {
            assert_eq!(t.timestamp_subsec_nanos(), 0, "integer seconds");
        }
    }
    assert!(by_tag.is_empty(), "unexpected tags {:?}", by_tag.keys());
    assert_eq!(r.metric("firelane_input_errors_total", &[INPUT]), 0.0);
}

// ---------------------------------------------------------------------------------------
// Hostile input next to well-behaved clients.

/// Sends Forward requests of 5 records with acks until told to stop; returns how many
/// records were acked. Panics (failing the test) on any error.
fn good_client(addr: ListenAddr, tag: String, stop: Arc<AtomicBool>) -> u64 {
    let mut c = connect(&addr);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) || seq < 50 {
        let recs: Vec<Vec<u8>> = (seq..seq + 5).map(|s| record(s, "good")).collect();
        let entries: Vec<Entry<'_>> = recs
            .iter()
            .enumerate()
            .map(|(i, rec)| Entry {
                time: EventTime {
                    secs: BASE + (seq as u32 + i as u32),
                    nanos: 11,
                },
                record: rec,
            })
            .collect();
        let chunk = client::new_chunk_id();
        let mut req = Vec::new();
        client::encode_forward(&mut req, &tag, &entries, Some(&chunk));
        c.send(&req)
            .unwrap_or_else(|e| panic!("{tag}: send at {seq}: {e}"));
        c.read_ack(&chunk)
            .unwrap_or_else(|e| panic!("{tag}: ack at {seq}: {e}"));
        seq += 5;
    }
    c.finish().ok();
    seq
}

enum Via {
    Tcp,
    Unix,
}

fn raw_connect(r: &Router, port: u16, via: &Via) -> Box<dyn RawConn> {
    match via {
        Via::Tcp => {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            Box::new(s)
        }
        Via::Unix => {
            let s = UnixStream::connect(r.path("run/sub/fluent.sock")).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            Box::new(s)
        }
    }
}

trait RawConn: Read + Write {
    fn shutdown_write(&self);
}

impl RawConn for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl RawConn for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn hostile_cases() -> Vec<(&'static str, Vec<u8>, Option<&'static str>, bool)> {
    // (name, bytes, expected kind (None: any), half-close after sending)
    let mut cases: Vec<(&'static str, Vec<u8>, Option<&'static str>, bool)> = Vec::new();
    cases.push(("random bytes", noise(7, 64 * 1024), None, true));
    cases.push((
        "random bytes after an array header",
        {
            let mut b = vec![0x93];
            b.extend(noise(11, 4096));
            b
        },
        None,
        true,
    ));
    cases.push((
        "reserved marker",
        vec![0x93, 0xa1, b't', 0xc1],
        Some("malformed_msgpack"),
        false,
    ));
    cases.push((
        "top-level str32 of 4 GiB",
        vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        Some("bad_request"),
        false,
    ));
    let mut tag_str32 = vec![0x93, 0xdb, 0xff, 0xff, 0xff, 0xff];
    tag_str32.extend(vec![b'a'; 4096]);
    cases.push((
        "tag str32 of 4 GiB",
        tag_str32,
        Some("frame_too_large"),
        false,
    ));
    cases.push((
        "payload bin32 of 4 GiB",
        vec![0x92, 0xa1, b't', 0xc6, 0xff, 0xff, 0xff, 0xff, 0],
        Some("frame_too_large"),
        false,
    ));
    cases.push((
        "array32 of 4G elements",
        vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0],
        Some("frame_too_large"),
        false,
    ));
    cases.push((
        "entries array32 of 4G",
        vec![0x92, 0xa1, b't', 0xdd, 0xff, 0xff, 0xff, 0xff],
        Some("frame_too_large"),
        false,
    ));
    let mut truncated = raw_forward(
        "hostile",
        &{
            let mut e = Vec::new();
            for i in 0..20 {
                write_entry(&mut e, Form::Plain, T::Int(BASE), &record(i, "hostile"));
            }
            e
        },
        20,
        Opt::Absent,
    );
    truncated.truncate(truncated.len() / 2);
    cases.push((
        "truncated frame then close",
        truncated,
        Some("truncated_frame"),
        true,
    ));
    // 8 MiB of zeros in one gzip member (a few KB on the wire), limit 1 MiB.
    let bomb = gzip(&vec![0u8; 8 << 20]);
    let mut req = Vec::new();
    client::encode_packed_payload(
        &mut req,
        "hostile",
        &bomb,
        false,
        None,
        Some("gzip"),
        Some("c1"),
    );
    cases.push(("gzip bomb", req, Some("decompressed_too_large"), false));
    let bomb = zstd(&vec![0u8; 8 << 20]);
    let mut req = Vec::new();
    client::encode_packed_payload(
        &mut req,
        "hostile",
        &bomb,
        false,
        None,
        Some("zstd"),
        Some("c2"),
    );
    cases.push(("zstd bomb", req, Some("decompressed_too_large"), false));
    let mut broken_gzip = gzip(&record(1, "hostile"));
    let len = broken_gzip.len();
    broken_gzip[len / 2] ^= 0xff;
    let mut req = Vec::new();
    client::encode_packed_payload(
        &mut req,
        "hostile",
        &broken_gzip,
        false,
        None,
        Some("gzip"),
        None,
    );
    cases.push(("corrupt gzip", req, Some("decompress_failed"), false));
    // Wrong element types.
    let mut b = Vec::new();
    rmp::encode::write_array_len(&mut b, 3).unwrap();
    rmp::encode::write_uint(&mut b, 5).unwrap();
    T::Int(BASE).write(&mut b);
    b.extend(record(0, "hostile"));
    cases.push(("tag not a string", b, Some("bad_request"), false));
    let mut b = Vec::new();
    rmp::encode::write_array_len(&mut b, 2).unwrap();
    rmp::encode::write_str(&mut b, "hostile").unwrap();
    rmp::encode::write_map_len(&mut b, 0).unwrap();
    cases.push(("entries not an array", b, Some("bad_request"), false));
    // (Unusable entries, a bad time or a record that is not a map, do not close the
    // connection: see `a_bad_entry_is_skipped_and_the_rest_acked_once`.)
    // A PackedForward payload that is not msgpack (0xc1 is a reserved marker). A payload
    // of valid msgpack that is not entries is only unusable entries, skipped: see
    // `every_mode_skips_an_unusable_entry_and_acks`.
    let mut b = Vec::new();
    client::encode_packed_payload(&mut b, "hostile", &[0x05, 0xc1], false, None, None, None);
    cases.push((
        "packed payload not msgpack",
        b,
        Some("malformed_msgpack"),
        false,
    ));
    let mut b = Vec::new();
    client::encode_packed_payload(&mut b, "hostile", &[0x92, 0x01], false, None, None, None);
    cases.push((
        "packed payload cut short",
        b,
        Some("malformed_msgpack"),
        false,
    ));
    cases
}

#[test]
fn hostile_input_closes_only_that_connection() {
    let port = free_port();
    let mut r = Router::start(&config(port, "max_decompressed = \"1MiB\"", FILE_OUTPUT));
    let stop = Arc::new(AtomicBool::new(false));
    let goods: Vec<_> = [("good-tcp", tcp(port)), ("good-unix", unix(&r))]
        .into_iter()
        .map(|(tag, addr)| {
            let stop = stop.clone();
            let tag = tag.to_owned();
            std::thread::spawn(move || (tag.clone(), good_client(addr, tag, stop)))
        })
        .collect();

    let mut expected_errors = 0.0;
    for (i, (name, bytes, kind, half_close)) in hostile_cases().into_iter().enumerate() {
        let via = if i % 2 == 0 { Via::Tcp } else { Via::Unix };
        let kind_label = kind.map(|k| format!("kind=\"{k}\""));
        let labels: Vec<&str> = match &kind_label {
            Some(k) => vec![INPUT, k.as_str()],
            None => vec![INPUT],
        };
        let before = r.metric("firelane_input_errors_total", &labels);
        let mut s = raw_connect(&r, port, &via);
        // The server may close before everything was written: that is the point.
        let _ = s.write_all(&bytes);
        if half_close {
            s.shutdown_write();
        }
        assert!(
            closed_by_peer(&mut *s, TIMEOUT),
            "{name}: connection still open"
        );
        let after = r.wait_metric(
            "firelane_input_errors_total",
            &labels,
            before + 1.0,
            TIMEOUT,
        );
        assert_eq!(after, before + 1.0, "{name}: {labels:?}\n{}", r.metrics());
        expected_errors += 1.0;
        let health = http_get(&format!("http://127.0.0.1:{}/health", r.admin)).unwrap();
        assert_eq!(health.0, 200, "{name}: /health {health:?}");
    }

    // Invalid UTF-8 in the tag and in values is kept with U+FFFD, counted, and acked; the
    // connection stays usable.
    let utf8_before = r.metric(
        "firelane_input_errors_total",
        &[INPUT, "kind=\"invalid_utf8\""],
    );
    let mut c = connect(&tcp(port));
    for round in 0..2u32 {
        let chunk = client::new_chunk_id();
        let mut b = Vec::new();
        rmp::encode::write_array_len(&mut b, 4).unwrap();
        b.extend([0xa7, b'b', b'a', b'd', 0xff, b't', b'a', b'g']);
        T::Fix(BASE, round).write(&mut b);
        rmp::encode::write_map_len(&mut b, 3).unwrap();
        rmp::encode::write_str(&mut b, "log").unwrap();
        b.extend([0xa5, b'o', 0xc3, 0x28, b'k', 0xfe]);
        rmp::encode::write_str(&mut b, "round").unwrap();
        rmp::encode::write_uint(&mut b, u64::from(round)).unwrap();
        b.extend([0xa2, 0xe2, 0x82]); // a key that is a truncated UTF-8 sequence
        rmp::encode::write_str(&mut b, "v").unwrap();
        rmp::encode::write_map_len(&mut b, 1).unwrap();
        rmp::encode::write_str(&mut b, "chunk").unwrap();
        rmp::encode::write_str(&mut b, &chunk).unwrap();
        c.send(&b).unwrap();
        c.read_ack(&chunk).unwrap();
    }
    drop(c);
    let utf8_after = r.wait_metric(
        "firelane_input_errors_total",
        &[INPUT, "kind=\"invalid_utf8\""],
        utf8_before + 2.0,
        TIMEOUT,
    );
    assert!(
        utf8_after >= utf8_before + 2.0,
        "invalid_utf8 {utf8_before} → {utf8_after}"
    );

    stop.store(true, Ordering::Relaxed);
    let mut sent = HashMap::new();
    for g in goods {
        let (tag, n) = g.join().expect("good client failed");
        sent.insert(tag, n);
    }
    let total: u64 = sent.values().sum::<u64>() + 2;
    let lines = wait_lines(&out_path(&r), total as usize, TIMEOUT);
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for l in &lines {
        let tag = l["_tag"].as_str().unwrap().to_owned();
        match tag.as_str() {
            "good-tcp" | "good-unix" => {
                let seq = l["seq"].as_u64().unwrap();
                let want = expected_line(
                    &tag,
                    &rfc3339(i64::from(BASE) + seq as i64, 11),
                    seq,
                    "good",
                );
                assert_eq!(l, &want);
                seen.entry(tag).or_default().push(seq);
            }
            "bad\u{fffd}tag" => {
                let round = l["round"].as_u64().unwrap();
                assert_eq!(l["log"], "o\u{fffd}(k\u{fffd}");
                assert_eq!(l["\u{fffd}"], "v");
                assert_eq!(l["_time"], rfc3339(i64::from(BASE), round as u32));
            }
            other => panic!("unexpected record with tag {other:?}: {l}"),
        }
    }
    for (tag, n) in &sent {
        let mut seqs = seen.remove(tag).unwrap_or_default();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..*n).collect::<Vec<_>>(),
            "{tag}: lost or duplicated records"
        );
    }
    assert_eq!(lines.len() as u64, total);
    let alive = r.child.as_mut().map(|c| c.try_wait().map(|s| s.is_none()));
    assert!(
        matches!(alive, Some(Ok(true))),
        "firelane exited: {alive:?}"
    );
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{}/health", r.admin))
            .unwrap()
            .0,
        200
    );
    // Errors were counted once per bad connection, nothing else went wrong.
    let kinds_total = r.metric("firelane_input_errors_total", &[INPUT]);
    assert_eq!(
        kinds_total,
        expected_errors + (utf8_after - utf8_before),
        "{}",
        r.metrics()
    );
}

// ---------------------------------------------------------------------------------------
// Unix socket housekeeping.

#[test]
fn unix_socket_dir_stale_file_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale/fluent.sock");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    // A socket file left behind by a crashed process: bound once, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(
        std::fs::symlink_metadata(&stale)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert!(UnixStream::connect(&stale).is_err());

    let port = free_port();
    let cfg = format!(
        r#"
[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{port}", "unix://{{dir}}/stale/fluent.sock", "unix://{{dir}}/new/a/b/fluent.sock"]

[routes.all]
to = ["out"]
{FILE_OUTPUT}
"#
    );
    let r = Router::start_in(dir, &cfg);
    let fresh = r.path("new/a/b/fluent.sock");
    for (i, path) in [r.path("stale/fluent.sock"), fresh.clone()]
        .iter()
        .enumerate()
    {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(meta.file_type().is_socket(), "{}", path.display());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o666,
            "{}",
            path.display()
        );
        let mut c = connect(&ListenAddr::Unix(path.clone()));
        let chunk = client::new_chunk_id();
        let mut req = Vec::new();
        client::encode_message(
            &mut req,
            "sock",
            EventTime {
                secs: BASE,
                nanos: i as u32,
            },
            &record(i as u64, "sock"),
            Some(&chunk),
        );
        c.send(&req).unwrap();
        c.read_ack(&chunk).unwrap();
    }
    let lines = wait_lines(&out_path(&r), 2, TIMEOUT);
    assert_eq!(lines.len(), 2);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l,
            &expected_line(
                "sock",
                &rfc3339(i64::from(BASE), i as u32),
                i as u64,
                "sock"
            )
        );
    }
    // A second router on the same live socket must refuse rather than steal it.
    let second_cfg = r.path("second.toml");
    std::fs::write(
        &second_cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n[inputs.fwd]\ntype = \"forward\"\nlisten = [\"unix://{}\"]\n[routes.all]\nto = [\"out\"]\n[outputs.out]\ntype = \"null\"\n",
            free_port(),
            fresh.display()
        ),
    )
    .unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_firelane"))
        .args(["run", "-c"])
        .arg(&second_cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(second, TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("another process is listening"), "{stderr}");
    assert!(fresh.exists(), "the live socket must not be removed");
    let mut c = connect(&ListenAddr::Unix(fresh));
    let chunk = client::new_chunk_id();
    let mut req = Vec::new();
    let t = EventTime {
        secs: BASE,
        nanos: 2,
    };
    client::encode_message(&mut req, "sock", t, &record(2, "sock"), Some(&chunk));
    c.send(&req).unwrap();
    c.read_ack(&chunk).unwrap();
}

/// Waits for a child with a deadline (killing it on timeout) and collects its output.
fn wait_output(mut child: std::process::Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// firelane loadgen against the binary.

fn loadgen(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_firelane"))
        .arg("loadgen")
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "loadgen {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number after `label` in the report.
fn report_value(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in report:\n{report}"))
}

#[test]
fn loadgen_counts_every_record() {
    let port = free_port();
    let output = r#"
[outputs.out]
type = "null"
"#;
    let r = Router::start(&config(port, "", output));
    let addr = format!("tcp://127.0.0.1:{port}");
    const N: u64 = 20_000;
    let report = loadgen(&[
        "--addr",
        &addr,
        "--mode",
        "forward",
        "--records",
        &N.to_string(),
        "--ack",
        "--connections",
        "2",
        "--batch",
        "100",
    ]);
    assert!(
        report.contains(&format!(
            "records sent: {N} in 200 requests over 2 connection(s), 200 acks received"
        )),
        "{report}"
    );
    assert!(report_value(&report, "records/s:") > 0.0, "{report}");
    assert!(report_value(&report, "MB/s:") > 0.0, "{report}");
    // Acked means accepted: counted before loadgen returned.
    assert_eq!(r.metric("firelane_input_records_total", &[INPUT]), N as f64);
    let sent = r.wait_metric(
        "firelane_output_records_total",
        &["output=\"out\"", "result=\"sent\""],
        N as f64,
        TIMEOUT,
    );
    assert_eq!(sent, N as f64, "{}", r.metrics());

    // Every mode, with and without acks, over both transports.
    let unix_addr = format!("unix://{}", r.path("run/sub/fluent.sock").display());
    let mut total = N;
    let runs: &[(&str, &[&str])] = &[
        ("message", &[]),
        ("message", &["--ack"]),
        ("forward", &[]),
        ("packed", &[]),
        ("packed", &["--ack"]),
        // Pipelined: 16 chunks ahead of their acks, which must come back in order.
        ("forward", &["--ack", "--ack-window", "16"]),
        ("compressed", &[]),
        ("compressed", &["--ack", "--compression", "zstd"]),
        (
            "compressed",
            &["--compression", "zstd", "--connections", "3"],
        ),
    ];
    for (i, (mode, extra)) in runs.iter().enumerate() {
        let a = if i % 2 == 0 { &addr } else { &unix_addr };
        let mut args = vec![
            "--addr",
            a.as_str(),
            "--mode",
            mode,
            "--records",
            "1500",
            "--batch",
            "50",
        ];
        args.extend_from_slice(extra);
        let report = loadgen(&args);
        assert!(report.contains("records sent: 1500 "), "{args:?}: {report}");
        assert!(report_value(&report, "MB/s:") > 0.0);
        total += 1500;
        let got = r.wait_metric(
            "firelane_input_records_total",
            &[INPUT],
            total as f64,
            TIMEOUT,
        );
        assert_eq!(got, total as f64, "{args:?}");
    }
    let sent = r.wait_metric(
        "firelane_output_records_total",
        &["output=\"out\"", "result=\"sent\""],
        total as f64,
        TIMEOUT,
    );
    assert_eq!(sent, total as f64);
    assert_eq!(
        r.metric("firelane_input_errors_total", &[INPUT]),
        0.0,
        "{}",
        r.metrics()
    );
}

/// Docker's fluentd driver writes one Message per log line. A connection receiving such a
/// steady stream is read every few milliseconds with its socket out of the event loop
/// meanwhile (`Socket::rest`); over TCP and the unix socket at once, every line of every
/// connection arrives, each once, and a line sent after the stream, alone, still arrives.
#[test]
fn a_paced_stream_of_single_messages_arrives_whole() {
    let port = free_port();
    let out = r#"
[outputs.out]
type = "file"
path = "{dir}/out.jsonl"
tag_key = "_tag"
"#;
    let r = Router::start(&config(port, "", out));
    let tcp = format!("tcp://127.0.0.1:{port}");
    let unix = format!("unix://{}", r.path("run/sub/fluent.sock").display());
    const N: usize = 6_000;
    let senders: Vec<_> = [("tcp", tcp.clone()), ("unix", unix)]
        .into_iter()
        .map(|(tag, addr)| {
            std::thread::spawn(move || {
                loadgen(&[
                    "--addr",
                    &addr,
                    "--tag",
                    tag,
                    "--mode",
                    "message",
                    "--batch",
                    "1",
                    "--rate",
                    "3000",
                    "--records",
                    &N.to_string(),
                ])
            })
        })
        .collect();
    for s in senders {
        let report = s.join().expect("loadgen thread");
        assert!(report.contains(&format!("records sent: {N} ")), "{report}");
    }
    let lines = wait_lines(&r.path("out.jsonl"), 2 * N, TIMEOUT);
    assert_eq!(lines.len(), 2 * N, "every line, none twice");
    let mut per_transport: std::collections::HashMap<String, usize> = Default::default();
    for l in &lines {
        let tag = l["_tag"].as_str().expect("_tag").to_string();
        *per_transport.entry(tag).or_default() += 1;
        assert!(l["log"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
    }
    assert_eq!(per_transport.len(), 2, "{per_transport:?}");
    assert!(per_transport.values().all(|&n| n == N), "{per_transport:?}");
    // The streams are over; one more line, alone, is read at once.
    loadgen(&[
        "--addr",
        &tcp,
        "--mode",
        "message",
        "--batch",
        "1",
        "--records",
        "1",
    ]);
    assert_eq!(
        wait_lines(&r.path("out.jsonl"), 2 * N + 1, TIMEOUT).len(),
        2 * N + 1
    );
    assert_eq!(
        r.metric("firelane_input_errors_total", &[INPUT]),
        0.0,
        "{}",
        r.metrics()
    );
}

#[test]
fn loadgen_with_shared_key() {
    let port = free_port();
    let r = Router::start(&config(
        port,
        "shared_key = \"k3y\"",
        "[outputs.out]\ntype = \"null\"\n",
    ));
    let addr = format!("tcp://127.0.0.1:{port}");
    let report = loadgen(&[
        "--addr",
        &addr,
        "--mode",
        "packed",
        "--records",
        "1000",
        "--ack",
        "--shared-key",
        "k3y",
    ]);
    assert!(report.contains("records sent: 1000 "), "{report}");
    assert_eq!(r.metric("firelane_input_records_total", &[INPUT]), 1000.0);
    // The wrong key fails loudly instead of reporting records that were never accepted.
    let out = Command::new(env!("CARGO_BIN_EXE_firelane"))
        .args([
            "loadgen",
            "--addr",
            &addr,
            "--records",
            "10",
            "--shared-key",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shared_key mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Memory budget: a request that takes most of `memory_limit` must still be accepted.

#[test]
fn big_requests_under_a_small_memory_limit_are_acked() {
    let port = free_port();
    let cfg = config(port, "", FILE_OUTPUT)
        .replace("[runtime]\n", "[runtime]\nmemory_limit = \"4MiB\"\n");
    let r = Router::start(&cfg);
    let pad = "x".repeat(1000);
    let mut seq = 0u64;
    let mut c = ForwardClient::connect(&tcp(port), Duration::from_secs(15)).unwrap();
    // ~1.4 MiB per request, plain and gzip-compressed. Decoding the compressed one holds
    // its inflated payload (1.4 MB, in a buffer grown to 2 MiB) beside its records (1.6
    // MB) within the 4 MiB: a request whose decoding needs more than the whole budget is
    // refused (`requests_decoding_past_the_memory_budget_are_refused_unacked`).
    for compressed in [false, true] {
        let recs: Vec<Vec<u8>> = (seq..seq + 1400)
            .map(|s| {
                let mut b = Vec::new();
                client::encode_record(&mut b, &[("seq", &s.to_string()), ("pad", &pad)]);
                b
            })
            .collect();
        let t = EventTime {
            secs: BASE,
            nanos: 0,
        };
        let entries: Vec<Entry<'_>> = recs
            .iter()
            .map(|rec| Entry {
                time: t,
                record: rec,
            })
            .collect();
        let chunk = client::new_chunk_id();
        let mut req = Vec::new();
        if compressed {
            client::encode_compressed(&mut req, "big", &entries, Compression::Gzip, Some(&chunk))
                .unwrap();
        } else {
            client::encode_forward(&mut req, "big", &entries, Some(&chunk));
        }
        c.send(&req).unwrap();
        c.read_ack(&chunk)
            .unwrap_or_else(|e| panic!("compressed={compressed}: no ack: {e}\n{}", r.metrics()));
        seq += 1400;
    }
    let lines = wait_lines(&out_path(&r), seq as usize, TIMEOUT);
    assert_eq!(lines.len(), seq as usize);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i.to_string());
        assert_eq!(l["pad"], pad.as_str());
    }
}

// ---------------------------------------------------------------------------------------
// Lenient handling: what is kept, skipped or dropped alone, without closing the connection.

#[test]
fn zero_time_signals_and_bad_records_keep_the_connection() {
    let port = free_port();
    let r = Router::start(&config(port, "", FILE_OUTPUT));
    let mut c = connect(&tcp(port));
    let errors = |kind: &str| {
        r.metric(
            "firelane_input_errors_total",
            &[INPUT, &format!("kind=\"{kind}\"")],
        )
    };

    // Time 0 means "now".
    let before = chrono::Utc::now();
    let chunk = client::new_chunk_id();
    c.send(&raw_message(
        "zero",
        T::Int(0),
        &record(0, "zero"),
        opt_chunk(Some(&chunk)),
    ))
    .unwrap();
    c.read_ack(&chunk).unwrap();

    // A metrics/traces request (fluent_signal != 0) is skipped, counted, and still acked.
    let chunk = client::new_chunk_id();
    let mut req = raw_message("signal", T::Int(BASE), &record(1, "signal"), Opt::Absent);
    req[0] += 1;
    rmp::encode::write_map_len(&mut req, 2).unwrap();
    rmp::encode::write_str(&mut req, "fluent_signal").unwrap();
    rmp::encode::write_uint(&mut req, 2).unwrap();
    rmp::encode::write_str(&mut req, "chunk").unwrap();
    rmp::encode::write_str(&mut req, &chunk).unwrap();
    c.send(&req).unwrap();
    c.read_ack(&chunk).unwrap();

    // A record with a boolean key is kept with the key as its JSON text ("true", as Fluent
    // Bit writes it); one nested 100 levels deep is dropped alone; their neighbours, unknown
    // option keys and a payload announced as gzip but sent plain are fine.
    let mut entries = Vec::new();
    write_entry(&mut entries, Form::Plain, T::Int(BASE), &record(2, "kept"));
    let mut bad = Vec::new();
    rmp::encode::write_map_len(&mut bad, 1).unwrap();
    rmp::encode::write_bool(&mut bad, true).unwrap();
    rmp::encode::write_nil(&mut bad).unwrap();
    write_entry(&mut entries, Form::Plain, T::Int(BASE), &bad);
    let mut deep = Vec::new();
    rmp::encode::write_map_len(&mut deep, 1).unwrap();
    rmp::encode::write_str(&mut deep, "deep").unwrap();
    for _ in 0..100 {
        rmp::encode::write_array_len(&mut deep, 1).unwrap();
    }
    rmp::encode::write_nil(&mut deep).unwrap();
    write_entry(&mut entries, Form::Plain, T::Int(BASE), &deep);
    write_entry(
        &mut entries,
        Form::Plain,
        T::Int(BASE + 1),
        &record(3, "kept"),
    );
    let chunk = client::new_chunk_id();
    let mut req = Vec::new();
    rmp::encode::write_array_len(&mut req, 3).unwrap();
    rmp::encode::write_str(&mut req, "lenient").unwrap();
    rmp::encode::write_bin(&mut req, &entries).unwrap();
    rmp::encode::write_map_len(&mut req, 4).unwrap();
    rmp::encode::write_str(&mut req, "compressed").unwrap();
    rmp::encode::write_str(&mut req, "gzip").unwrap();
    rmp::encode::write_str(&mut req, "size").unwrap();
    rmp::encode::write_str(&mut req, "four").unwrap();
    rmp::encode::write_uint(&mut req, 7).unwrap();
    rmp::encode::write_str(&mut req, "integer key").unwrap();
    rmp::encode::write_str(&mut req, "chunk").unwrap();
    rmp::encode::write_str(&mut req, &chunk).unwrap();
    c.send(&req).unwrap();
    c.read_ack(&chunk).unwrap();

    let lines = wait_lines(&out_path(&r), 4, TIMEOUT);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let after = chrono::Utc::now();
    let t: chrono::DateTime<chrono::Utc> = lines[0]["_time"].as_str().unwrap().parse().unwrap();
    assert!(
        t >= before - chrono::Duration::seconds(1) && t <= after,
        "time 0 → {t}, not now"
    );
    let mut zero = lines[0].clone();
    zero["_time"] = json!("now");
    assert_eq!(zero, expected_line("zero", "now", 0, "zero"));
    assert_eq!(
        lines[1],
        expected_line("lenient", &rfc3339(i64::from(BASE), 0), 2, "kept")
    );
    assert_eq!(
        lines[2],
        json!({"_time": rfc3339(i64::from(BASE), 0), "_tag": "lenient", "true": null})
    );
    assert_eq!(
        lines[3],
        expected_line("lenient", &rfc3339(i64::from(BASE) + 1, 0), 3, "kept")
    );
    assert_eq!(errors("unsupported_signal"), 1.0);
    assert_eq!(errors("bad_key"), 1.0);
    assert_eq!(errors("bad_record"), 1.0);
    assert_eq!(
        r.metric("firelane_input_errors_total", &[INPUT]),
        3.0,
        "{}",
        r.metrics()
    );
    assert_eq!(r.metric("firelane_input_records_total", &[INPUT]), 4.0);
}

// ---------------------------------------------------------------------------------------
// SIGTERM: what was written before it is read, ingested and flushed; idle clients do not
// hold the exit up; the unix socket file is removed.

#[test]
fn sigterm_drains_open_connections() {
    let port = free_port();
    // The idle client never closes: the drain window runs out, then every connection is
    // closed after what it already sent was taken.
    let cfg =
        config(port, "", FILE_OUTPUT).replace("[runtime]\n", "[runtime]\ndrain_inputs = \"1s\"\n");
    let mut r = Router::start(&cfg);
    let sock = r.path("run/sub/fluent.sock");
    let mut idle = connect(&ListenAddr::Unix(sock.clone()));
    let mut c = connect(&tcp(port));
    // An acked request first, so the connection is surely accepted before the signal.
    let chunk = client::new_chunk_id();
    c.send(&raw_message(
        "drain",
        T::Int(BASE),
        &record(0, "drain"),
        opt_chunk(Some(&chunk)),
    ))
    .unwrap();
    c.read_ack(&chunk).unwrap();
    let recs: Vec<Vec<u8>> = (1..=1000).map(|s| record(s, "drain")).collect();
    for part in recs.chunks(100) {
        let entries: Vec<Entry<'_>> = part
            .iter()
            .map(|rec| Entry {
                time: EventTime {
                    secs: BASE,
                    nanos: 0,
                },
                record: rec,
            })
            .collect();
        let mut req = Vec::new();
        client::encode_forward(&mut req, "drain", &entries, None);
        c.send(&req).unwrap();
    }
    let status = r.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
    let lines = read_jsonl(&out_path(&r));
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..=1000).collect::<Vec<_>>());
    for l in &lines {
        let seq = l["seq"].as_u64().unwrap();
        assert_eq!(
            l,
            &expected_line("drain", &rfc3339(i64::from(BASE), 0), seq, "drain")
        );
    }
    assert!(!sock.exists(), "unix socket left behind");
    // Both connections were closed by the router.
    assert!(idle.read_message().is_err());
    assert!(c.read_message().is_err());
}

// ---------------------------------------------------------------------------------------
// Back-pressure: a stalled output with a small buffer stops the forward input from reading
// (acks stop coming), memory stays bounded, and nothing is lost once the output recovers.

#[test]
fn stalled_output_stops_reading_and_recovers() {
    // Bound but not accepting yet: the output's requests connect and then hang.
    let (http, http_addr) = common::silent_peer();
    let http_port = http_addr.port();
    let port = free_port();
    let output = format!(
        r#"
[outputs.out]
type = "http"
url = "http://127.0.0.1:{http_port}/ingest"
timeout = "120s"
tag_key = "_tag"
batch = {{ max_records = 100, max_age = "50ms" }}
buffer = {{ max_size = "64KiB" }}
"#
    );
    let r = Router::start(&config(port, "", &output));
    const TOTAL: u64 = 3000;
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sender = {
        let acked = acked.clone();
        let addr = tcp(port);
        std::thread::spawn(move || {
            let mut c = ForwardClient::connect(&addr, Duration::from_secs(120)).unwrap();
            let pad = "p".repeat(200);
            for start in (0..TOTAL).step_by(50) {
                let recs: Vec<Vec<u8>> = (start..start + 50)
                    .map(|s| {
                        let mut b = Vec::new();
                        client::encode_record(&mut b, &[("seq", &s.to_string()), ("pad", &pad)]);
                        b
                    })
                    .collect();
                let t = EventTime {
                    secs: BASE,
                    nanos: 0,
                };
                let entries: Vec<Entry<'_>> = recs
                    .iter()
                    .map(|rec| Entry {
                        time: t,
                        record: rec,
                    })
                    .collect();
                let chunk = client::new_chunk_id();
                let mut req = Vec::new();
                client::encode_forward(&mut req, "bp", &entries, Some(&chunk));
                c.send(&req).unwrap();
                c.read_ack(&chunk).unwrap();
                acked.store(start + 50, Ordering::SeqCst);
            }
        })
    };

    // Wait until acks stop: the buffer is full and the input no longer reads.
    let deadline = Instant::now() + TIMEOUT;
    let mut last = (acked.load(Ordering::SeqCst), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = acked.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acks never stalled ({now} acked)"
        );
    }
    let stalled_at = last.0;
    // ~270 bytes a record: the 64 KiB buffer plus batches in flight hold a few hundred.
    assert!(
        stalled_at < TOTAL / 2,
        "{stalled_at} of {TOTAL} records acked with the output stalled"
    );
    let buffered = r.metric("firelane_buffer_bytes", &["output=\"out\""]);
    assert!(buffered <= 64.0 * 1024.0, "buffer holds {buffered} bytes");
    let health = http_get(&format!("http://127.0.0.1:{}/health", r.admin)).unwrap();
    assert_eq!(health.0, 200, "{health:?}");

    // The output recovers: everything goes through, once.
    let server = FakeHttp::serve(http);
    sender.join().expect("sender failed");
    let sent = r.wait_metric(
        "firelane_output_records_total",
        &["output=\"out\"", "result=\"sent\""],
        TOTAL as f64,
        TIMEOUT,
    );
    assert_eq!(sent, TOTAL as f64, "{}", r.metrics());
    let mut seqs: Vec<u64> = server
        .bodies()
        .iter()
        .flat_map(|b| b.lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| {
            let v: Value = serde_json::from_str(&l).unwrap();
            assert_eq!(v["_tag"], "bp");
            v["seq"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..TOTAL).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// One unusable entry: skipped and counted with its kind, the rest of the request taken once
// and acked. Broken framing: nothing of the request taken, the connection closed.

/// Writes a time into an entry.
type WriteTime<'a> = &'a dyn Fn(&mut Vec<u8>);

/// `[[1700000000, {"log":"before"}], [<bad time>, <bad record>], [1700000000, {"log":"after"}]]`
fn before_bad_after(seq: u64, bad_time: WriteTime<'_>, bad_record: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    for (log, time) in [("before", None), ("bad", Some(bad_time)), ("after", None)] {
        rmp::encode::write_array_len(&mut e, 2).unwrap();
        match time {
            None => rmp::encode::write_uint(&mut e, u64::from(BASE))
                .map(drop)
                .unwrap(),
            Some(f) => f(&mut e),
        }
        if log == "bad" && !bad_record.is_empty() {
            e.extend_from_slice(bad_record);
        } else {
            rmp::encode::write_map_len(&mut e, 2).unwrap();
            rmp::encode::write_str(&mut e, "log").unwrap();
            rmp::encode::write_str(&mut e, log).unwrap();
            rmp::encode::write_str(&mut e, "seq").unwrap();
            rmp::encode::write_uint(&mut e, seq).unwrap();
        }
    }
    e
}

#[test]
fn a_bad_entry_is_skipped_and_the_rest_acked_once() {
    let port = free_port();
    let r = Router::start(&config(port, "", FILE_OUTPUT));
    let errors = |kind: &str| {
        r.metric(
            "firelane_input_errors_total",
            &[INPUT, &format!("kind=\"{kind}\"")],
        )
    };
    let mut c = connect(&tcp(port));

    // The issue's request, byte for byte, then sent again as a client does when no ack
    // comes: each time `before` and `after` once, and an ack.
    let issue: &[u8] = &[
        0x93, 0xa1, b't', 0x93, // ["t", [
        0x92, 0xce, 0x65, 0x53, 0xf1, 0x00, 0x81, 0xa3, b'l', b'o', b'g', 0xa6, b'b', b'e', b'f',
        b'o', b'r', b'e', // [1700000000, {"log":"before"}]
        0x92, 0xb4, b'2', b'0', b'2', b'4', b'-', b'0', b'1', b'-', b'0', b'1', b'T', b'0', b'0',
        b':', b'0', b'0', b':', b'0', b'0', b'Z', 0x81, 0xa3, b'l', b'o', b'g', 0xa3, b'b', b'a',
        b'd', // ["2024-01-01T00:00:00Z", {"log":"bad"}]
        0x92, 0xce, 0x65, 0x53, 0xf1, 0x00, 0x81, 0xa3, b'l', b'o', b'g', 0xa5, b'a', b'f', b't',
        b'e', b'r', // [1700000000, {"log":"after"}]
        0x81, 0xa5, b'c', b'h', b'u', b'n', b'k', 0xa3, b'c', b'k', b'1', // {"chunk":"ck1"}
    ];
    c.send(issue).unwrap();
    c.read_ack("ck1").unwrap();
    let lines = wait_lines(&out_path(&r), 2, TIMEOUT);
    let logs: Vec<&Value> = lines.iter().map(|l| &l["log"]).collect();
    assert_eq!(logs, [&json!("before"), &json!("after")]);
    for l in &lines {
        assert_eq!(l["_time"], rfc3339(i64::from(BASE), 0));
        assert_eq!(l["_tag"], "t");
    }
    assert_eq!(errors("bad_time"), 1.0, "{}", r.metrics());

    // Negative integer time and a record that is not a map, in every mode with entries.
    let not_a_map = {
        let mut b = Vec::new();
        rmp::encode::write_str(&mut b, "not a map").unwrap();
        b
    };
    let negative = |b: &mut Vec<u8>| drop(rmp::encode::write_sint(b, -1_700_000_000));
    let good_time = |b: &mut Vec<u8>| drop(rmp::encode::write_uint(b, u64::from(BASE)));
    let bads: [(&str, WriteTime<'_>, &[u8]); 2] = [
        ("bad_time", &negative, &[]),
        ("bad_record", &good_time, &not_a_map),
    ];
    let mut seq = 0;
    let mut want = Vec::new();
    for (kind, time, rec) in bads {
        for mode in ["Forward", "PackedForward", "gzip", "zstd"] {
            seq += 1;
            let entries = before_bad_after(seq, time, rec);
            let chunk = client::new_chunk_id();
            let req = request_in_mode(mode, "t", &entries, 3, &chunk);
            let before = errors(kind);
            c.send(&req).unwrap();
            c.read_ack(&chunk)
                .unwrap_or_else(|e| panic!("{kind} in {mode}: {e}"));
            assert_eq!(errors(kind), before + 1.0, "{kind} in {mode}");
            want.push((seq, "before"));
            want.push((seq, "after"));
        }
    }
    // Message mode: its one entry is skipped, the request still acked.
    let chunk = client::new_chunk_id();
    let mut req = Vec::new();
    rmp::encode::write_array_len(&mut req, 4).unwrap();
    rmp::encode::write_str(&mut req, "t").unwrap();
    rmp::encode::write_sint(&mut req, -5).unwrap();
    req.extend(record(99, "skipped"));
    opt_chunk(Some(&chunk)).write(&mut req);
    c.send(&req).unwrap();
    c.read_ack(&chunk).unwrap();

    let lines = wait_lines(&out_path(&r), 2 + want.len(), TIMEOUT);
    let got: Vec<(u64, &str)> = lines[2..]
        .iter()
        .map(|l| (l["seq"].as_u64().unwrap(), l["log"].as_str().unwrap()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(errors("bad_time"), 1.0 + 4.0 + 1.0);
    assert_eq!(errors("bad_record"), 4.0);
    assert_eq!(
        r.metric("firelane_input_errors_total", &[INPUT]),
        10.0,
        "nothing else counted: {}",
        r.metrics()
    );

    // Broken framing mid-request (a PackedForward payload cut inside its third entry, after
    // two good ones): nothing of it is taken, no ack, the connection is closed.
    let mut entries = before_bad_after(100, &good_time, &[]);
    entries.truncate(entries.len() - 4);
    let mut req = Vec::new();
    client::encode_packed_payload(&mut req, "t", &entries, false, None, None, Some("ck2"));
    c.send(&req).unwrap();
    assert!(c.read_message().is_err(), "acked or left open");
    r.wait_metric(
        "firelane_input_errors_total",
        &[INPUT, "kind=\"malformed_msgpack\""],
        1.0,
        TIMEOUT,
    );
    // A later request on a new connection lands after what came before, and nothing of the
    // broken one in between.
    let mut c = connect(&tcp(port));
    let chunk = client::new_chunk_id();
    c.send(&raw_message(
        "t",
        T::Int(BASE),
        &record(200, "last"),
        opt_chunk(Some(&chunk)),
    ))
    .unwrap();
    c.read_ack(&chunk).unwrap();
    let lines = wait_lines(&out_path(&r), 3 + want.len(), TIMEOUT);
    assert_eq!(lines.len(), 3 + want.len(), "{lines:#?}");
    assert_eq!(lines.last().unwrap()["seq"], 200);
    assert_eq!(
        r.metric("firelane_input_records_total", &[INPUT]),
        lines.len() as f64
    );
}

// ---------------------------------------------------------------------------------------
// Deferred acks: a client pipelining chunks without waiting gets its acks strictly in
// request order, and none for what is not buffered while the output is stalled.

#[test]
fn pipelined_chunks_are_acked_in_order_and_never_before_buffering() {
    use firelane::input::forward::frame::{Split, Splitter};
    let (http, http_addr) = common::silent_peer();
    let port = free_port();
    let output = format!(
        r#"
[outputs.out]
type = "http"
url = "http://127.0.0.1:{}/ingest"
timeout = "120s"
batch = {{ max_records = 100, max_age = "50ms" }}
buffer = {{ max_size = "64KiB" }}
"#,
        http_addr.port()
    );
    let r = Router::start(&config(port, "", &output));
    const REQUESTS: usize = 400;
    const PER_REQUEST: usize = 5;
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let pad = "p".repeat(200);
        for i in 0..REQUESTS {
            let recs: Vec<Vec<u8>> = (0..PER_REQUEST)
                .map(|j| {
                    let mut b = Vec::new();
                    let seq = (i * PER_REQUEST + j).to_string();
                    client::encode_record(&mut b, &[("seq", &seq), ("pad", &pad)]);
                    b
                })
                .collect();
            let entries: Vec<Entry<'_>> = recs
                .iter()
                .map(|rec| Entry {
                    time: EventTime {
                        secs: BASE,
                        nanos: 0,
                    },
                    record: rec,
                })
                .collect();
            let mut req = Vec::new();
            client::encode_forward(&mut req, "pipe", &entries, Some(&format!("c{i}")));
            writer.write_all(&req).unwrap();
        }
    });
    // Acks as they come, in a thread of their own: the writer never waits for them.
    let acks = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let reader = {
        let acks = acks.clone();
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut inbox = Vec::new();
            let mut buf = [0u8; 4096];
            while acks.lock().unwrap().len() < REQUESTS {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                inbox.extend_from_slice(&buf[..n]);
                while let Split::Complete(len) = Splitter::new(1 << 20).advance(&inbox) {
                    acks.lock().unwrap().push(inbox.drain(..len).collect());
                }
            }
        })
    };
    let want: Vec<Vec<u8>> = (0..REQUESTS)
        .map(|i| client::expected_ack(&format!("c{i}")))
        .collect();

    // The output is stalled: acks stop once the buffer is full, as a prefix in order.
    let deadline = Instant::now() + TIMEOUT;
    let mut last = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = acks.lock().unwrap().len();
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(Instant::now() < deadline, "acks never stalled ({now})");
    }
    let stalled = acks.lock().unwrap().clone();
    assert!(stalled.len() < REQUESTS / 2, "{} acked", stalled.len());
    assert!(stalled[..] == want[..stalled.len()], "acks out of order");
    // (The kernel's socket buffers may hold the rest of what the client wrote.)
    let taken = r.metric("firelane_input_records_total", &[INPUT]);
    assert!(
        taken < (REQUESTS * PER_REQUEST / 2) as f64,
        "the input kept reading a stalled pipeline: {taken} records taken"
    );
    // Every acked record is in the buffer (or already handed to the stalled output).
    let buffered = r.metric(
        "firelane_output_received_records_total",
        &["output=\"out\""],
    );
    assert!(
        buffered >= (stalled.len() * PER_REQUEST) as f64,
        "{} requests acked, {buffered} records buffered",
        stalled.len()
    );

    // The output recovers: every ack, in order; every record sent once.
    let server = FakeHttp::serve(http);
    sender.join().expect("sender failed");
    r.wait_metric(
        "firelane_output_records_total",
        &["output=\"out\"", "result=\"sent\""],
        (REQUESTS * PER_REQUEST) as f64,
        TIMEOUT,
    );
    let deadline = Instant::now() + TIMEOUT;
    while acks.lock().unwrap().len() < REQUESTS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = acks.lock().unwrap().clone();
    assert_eq!(all.len(), REQUESTS);
    assert!(all == want, "acks out of order");
    drop(s);
    reader.join().unwrap();
    let mut seqs: Vec<usize> = server
        .bodies()
        .iter()
        .flat_map(|b| b.lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| {
            let v: Value = serde_json::from_str(&l).unwrap();
            v["seq"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..REQUESTS * PER_REQUEST).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Slow and silent clients: memory is reserved for bytes received, never for what a header
// announces; a stalled request times out; a connection cap protects file descriptors.

/// Sends acked Forward requests of 5 records until `stop`, each ack awaited for at most
/// `ack_timeout`; returns the number of records acked (every one of them checked later).
fn steady_client(
    addr: ListenAddr,
    tag: &str,
    ack_timeout: Duration,
    acked: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let tag = tag.to_owned();
    std::thread::spawn(move || {
        let mut c = ForwardClient::connect(&addr, ack_timeout).unwrap();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let recs: Vec<Vec<u8>> = (seq..seq + 5).map(|s| record(s, "steady")).collect();
            let entries: Vec<Entry<'_>> = recs
                .iter()
                .map(|rec| Entry {
                    time: EventTime {
                        secs: BASE,
                        nanos: 0,
                    },
                    record: rec,
                })
                .collect();
            let chunk = client::new_chunk_id();
            let mut req = Vec::new();
            client::encode_forward(&mut req, &tag, &entries, Some(&chunk));
            c.send(&req).unwrap();
            c.read_ack(&chunk)
                .unwrap_or_else(|e| panic!("{tag}: no ack for records {seq}..: {e}"));
            seq += 5;
            acked.store(seq, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn frame_headers_from_silent_clients_do_not_take_the_memory_budget() {
    let port = free_port();
    let cfg = config(port, "read_timeout = \"6s\"", FILE_OUTPUT)
        .replace("[runtime]\n", "[runtime]\nmemory_limit = \"32MiB\"\n");
    let r = Router::start(&cfg);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let good = steady_client(
        tcp(port),
        "steady",
        Duration::from_secs(10),
        acked.clone(),
        stop.clone(),
    );
    while acked.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }

    // The issue's attack: eight connections, each a frame header announcing a 16 MiB bin
    // (`["big", <bin32 of 16 MiB - 64>]`), then nothing.
    let header = [0x92, 0xa3, b'b', b'i', b'g', 0xc6, 0x00, 0xff, 0xff, 0xc0];
    let mut attackers: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(&header).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s
        })
        .collect();
    // The good client keeps getting its acks while the headers sit there (well before
    // read_timeout cuts them off).
    std::thread::sleep(Duration::from_millis(300));
    let during = acked.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(4);
    while acked.load(Ordering::SeqCst) < during + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        acked.load(Ordering::SeqCst) >= during + 20,
        "the good client stalled behind the headers"
    );
    assert_eq!(
        r.metric(
            "firelane_input_errors_total",
            &[INPUT, "kind=\"read_timeout\""]
        ),
        0.0,
        "the headers were cut off before the good client was checked"
    );
    // A request in progress that makes no progress is cut off after read_timeout.
    for s in &mut attackers {
        assert!(
            closed_by_peer(s, TIMEOUT),
            "silent attacker still connected"
        );
    }
    assert_eq!(
        r.wait_metric(
            "firelane_input_errors_total",
            &[INPUT, "kind=\"read_timeout\""],
            8.0,
            TIMEOUT
        ),
        8.0
    );
    stop.store(true, Ordering::Relaxed);
    good.join().expect("good client failed");
    let n = acked.load(Ordering::SeqCst);
    let lines = wait_lines(&out_path(&r), n as usize, TIMEOUT);
    let mut seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>());
    assert_eq!(
        r.metric("firelane_input_errors_total", &[INPUT]),
        8.0,
        "{}",
        r.metrics()
    );
}

#[test]
fn connections_over_the_cap_are_closed_and_counted() {
    let port = free_port();
    let r = Router::start(&config(port, "max_connections = 3", FILE_OUTPUT));
    let acked_request = |c: &mut ForwardClient, seq: u64| {
        let chunk = client::new_chunk_id();
        c.send(&raw_message(
            "cap",
            T::Int(BASE),
            &record(seq, "cap"),
            opt_chunk(Some(&chunk)),
        ))?;
        c.read_ack(&chunk)
    };
    let mut open: Vec<ForwardClient> =
        vec![connect(&tcp(port)), connect(&unix(&r)), connect(&tcp(port))];
    for (i, c) in open.iter_mut().enumerate() {
        acked_request(c, i as u64).unwrap();
    }
    // A fourth, on either listener: closed at once and counted.
    for (i, addr) in [tcp(port), unix(&r)].iter().enumerate() {
        let mut extra = connect(addr);
        let refused = acked_request(&mut extra, 100 + i as u64);
        assert!(refused.is_err(), "connection over the cap was served");
        r.wait_metric(
            "firelane_input_errors_total",
            &[INPUT, "kind=\"too_many_connections\""],
            i as f64 + 1.0,
            TIMEOUT,
        );
    }
    // The open ones are unaffected.
    for (i, c) in open.iter_mut().enumerate() {
        acked_request(c, 10 + i as u64).unwrap();
    }
    // A closed connection frees its place.
    open.pop();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = connect(&tcp(port));
        if acked_request(&mut c, 20).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = wait_lines(&out_path(&r), 7, TIMEOUT);
    let mut seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [0, 1, 2, 10, 11, 12, 20]);
}

#[test]
fn an_empty_shared_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firelane.toml");
    std::fs::write(
        &path,
        r#"
[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:24224"]
shared_key = "${FIRELANE_TEST_UNSET_KEY:-}"

[outputs.out]
type = "null"

[routes.all]
to = ["out"]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firelane"))
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("FIRELANE_TEST_UNSET_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("shared_key"), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// SIGTERM drain window: open connections are still read and new ones accepted for
// `runtime.drain_inputs`; the router exits early once every client has closed.

#[test]
fn records_written_after_sigterm_arrive() {
    let port = free_port();
    // Default window: half of the default 25 s shutdown_grace.
    let mut r = Router::start(&config(port, "", FILE_OUTPUT));
    let sock = ListenAddr::Unix(r.path("run/sub/fluent.sock"));
    let send = |c: &mut ForwardClient, seq: u64| {
        // Like Docker's fluentd driver: Message mode, no chunk, no ack.
        c.send(&raw_message(
            "late",
            T::Int(BASE),
            &record(seq, "late"),
            Opt::Absent,
        ))
        .unwrap();
    };
    let mut c = connect(&sock);
    send(&mut c, 0);
    wait_lines(&out_path(&r), 1, TIMEOUT);

    let sigterm = Instant::now();
    r.signal(15);
    let at = |secs: f64| {
        let when = sigterm + Duration::from_secs_f64(secs);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
    };
    at(0.8);
    send(&mut c, 1);
    // A container that connects during the drain is accepted and read.
    at(1.2);
    let mut newcomer = connect(&sock);
    send(&mut newcomer, 2);
    newcomer.finish().unwrap();
    drop(newcomer);
    at(2.0);
    send(&mut c, 3);
    // The records are in the output before the last client closes: the router is still
    // draining, not exiting.
    let lines = wait_lines(&out_path(&r), 4, TIMEOUT);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let alive = r.child.as_mut().map(|c| c.try_wait().map(|s| s.is_none()));
    assert!(
        matches!(alive, Some(Ok(true))),
        "exited while a client was open"
    );
    c.finish().unwrap();
    drop(c);

    // Every client closed: the drain ends early, far before its 12.5 s window.
    let status = r.wait_exit(TIMEOUT);
    let took = sigterm.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    let lines = read_jsonl(&out_path(&r));
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    for l in &lines {
        let seq = l["seq"].as_u64().unwrap();
        assert_eq!(
            l,
            &expected_line("late", &rfc3339(i64::from(BASE), 0), seq, "late")
        );
    }
    assert!(
        !r.path("run/sub/fluent.sock").exists(),
        "unix socket left behind"
    );
}

#[test]
fn a_drain_window_leaving_no_time_to_flush_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firelane.toml");
    let write = |drain: &str| {
        std::fs::write(
            &path,
            format!(
                "[runtime]\nshutdown_grace = \"10s\"\ndrain_inputs = \"{drain}\"\n\n\
                 [inputs.fwd]\ntype = \"forward\"\n\n[outputs.out]\ntype = \"null\"\n\n\
                 [routes.all]\nto = [\"out\"]\n"
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_firelane"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap()
    };
    // Equal to the grace (the tester's case) or leaving less than a fifth of it (at
    // least 1 s) for the outputs to flush: refused with the largest accepted value.
    for drain in ["11s", "10s", "8001ms"] {
        let out = write(drain);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{drain} accepted: {stderr}");
        assert!(
            stderr.contains("drain_inputs") && stderr.contains("at most 8s"),
            "{stderr}"
        );
    }
    let out = write("8s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tester's reports: `[[t,{…}],5,[t,{…}]]` is skipped-and-acked in Forward mode, so the
/// same entries in PackedForward (plain, gzip, zstd) must be too, not refused with the
/// connection closed (the client would resend them forever); and a Message whose time is
/// nil or a string skips its one entry (`bad_time`) and acks its chunk. All on one
/// connection, which stays open throughout.
#[test]
fn every_mode_skips_an_unusable_entry_and_acks() {
    let port = free_port();
    let r = Router::start(&config(port, "", FILE_OUTPUT));
    let errors = |kind: &str| {
        r.metric(
            "firelane_input_errors_total",
            &[INPUT, &format!("kind=\"{kind}\"")],
        )
    };
    let mut c = connect(&tcp(port));
    let mut want = 0;
    for mode in ["Forward", "PackedForward", "gzip", "zstd"] {
        let mut entries = Vec::new();
        write_entry(&mut entries, Form::Plain, T::Int(BASE), &record(want, mode));
        rmp::encode::write_uint(&mut entries, 5).unwrap();
        write_entry(
            &mut entries,
            Form::Plain,
            T::Int(BASE),
            &record(want + 1, mode),
        );
        let chunk = client::new_chunk_id();
        let req = request_in_mode(mode, "t", &entries, 3, &chunk);
        let before = errors("bad_entry");
        c.send(&req).unwrap();
        c.read_ack(&chunk)
            .unwrap_or_else(|e| panic!("{mode}: no ack: {e}\n{}", r.metrics()));
        assert_eq!(errors("bad_entry"), before + 1.0, "{mode}");
        want += 2;
    }
    // ["m", nil | "a string", {…}, {"chunk": …}]
    for (i, second) in [0xc0u8, 0xa3].into_iter().enumerate() {
        let chunk = client::new_chunk_id();
        let mut req = Vec::new();
        rmp::encode::write_array_len(&mut req, 4).unwrap();
        rmp::encode::write_str(&mut req, "m").unwrap();
        req.push(second);
        if second == 0xa3 {
            req.extend(b"now");
        }
        req.extend(record(100, "message"));
        opt_chunk(Some(&chunk)).write(&mut req);
        c.send(&req).unwrap();
        c.read_ack(&chunk)
            .unwrap_or_else(|e| panic!("message {second:#x}: no ack: {e}\n{}", r.metrics()));
        assert_eq!(errors("bad_time"), i as f64 + 1.0);
    }
    // Still the same connection: a good request goes through after all of that.
    let chunk = client::new_chunk_id();
    c.send(&raw_message(
        "t",
        T::Int(BASE),
        &record(want, "last"),
        opt_chunk(Some(&chunk)),
    ))
    .unwrap();
    c.read_ack(&chunk).unwrap();
    let lines = wait_lines(&out_path(&r), want as usize + 1, TIMEOUT);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..=want).collect::<Vec<_>>());
    assert_eq!(
        r.metric("firelane_input_errors_total", &[INPUT]),
        6.0,
        "only the skipped entries counted: {}",
        r.metrics()
    );
}

/// The tester's report: with memory_limit = "64MiB", 16 connections each sending one valid
/// 14.4 MB Forward request peaked at 299 MiB of RSS (frames released from the budget before
/// ingest, every connection's full request buffered at once). Large requests now take one
/// of the input's large-request slots and keep their memory counted; the peak stays near
/// the limit (asserted with a generous margin) and every record arrives once.
#[test]
fn many_large_requests_stay_within_the_memory_limit() {
    const CONNECTIONS: usize = 12;
    const PER_REQUEST: usize = 18;
    const LOG_BYTES: usize = 800_000;
    const LIMIT_MIB: u64 = 64;
    let port = free_port();
    let cfg = config(port, "", FILE_OUTPUT).replace(
        "[runtime]\n",
        &format!("[runtime]\nmemory_limit = \"{LIMIT_MIB}MiB\"\n"),
    );
    let r = Router::start(&cfg);
    let pid = r.child.as_ref().expect("router running").id();
    let start_mib = peak_rss(pid) / (1024 * 1024);
    let log = "x".repeat(LOG_BYTES);
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let log = log.clone();
            let addr = tcp(port);
            std::thread::spawn(move || {
                let mut entries = Vec::new();
                for k in 0..PER_REQUEST {
                    let mut rec = Vec::new();
                    rmp::encode::write_map_len(&mut rec, 2).unwrap();
                    rmp::encode::write_str(&mut rec, "id").unwrap();
                    rmp::encode::write_str(&mut rec, &format!("r{i}_{k}")).unwrap();
                    rmp::encode::write_str(&mut rec, "log").unwrap();
                    rmp::encode::write_str(&mut rec, &log).unwrap();
                    write_entry(&mut entries, Form::Plain, T::Int(BASE), &rec);
                }
                let chunk = format!("big{i}");
                let req = raw_forward("big", &entries, PER_REQUEST as u32, opt_chunk(Some(&chunk)));
                let mut c = connect(&addr);
                c.send(&req).unwrap();
                c.read_ack(&chunk)
                    .unwrap_or_else(|e| panic!("request {i} not acked: {e}"));
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let want = CONNECTIONS * PER_REQUEST;
    let lines = wait_lines(&out_path(&r), want, Duration::from_secs(120));
    let peak = peak_rss(pid) / (1024 * 1024);
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["log"].as_str().map(str::len), Some(LOG_BYTES));
            l["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), want, "records lost or duplicated");
    assert_eq!(lines.len(), want);
    assert!(
        peak <= LIMIT_MIB + 64,
        "peak RSS {peak} MiB (at start {start_mib} MiB) for memory_limit {LIMIT_MIB} MiB"
    );
}

/// The tester's report: with memory_limit = "32MiB", requests of `[0, {}]` entries (3 bytes
/// on the wire, ~115 bytes decoded each) were decoded whole past the budget and acked: a
/// 65 KB gzip payload inflating to 64 MiB peaked at 3.17 GB RSS, a 16 MiB PackedForward at
/// 825 MB. Decoding now stops at what one request may hold: each is refused unacked
/// (`too_large`), the connection stays open for its next request, peak RSS stays near the
/// limit, and a client on another connection keeps getting its acks meanwhile.
#[test]
fn requests_decoding_past_the_memory_budget_are_refused_unacked() {
    const LIMIT_MIB: u64 = 32;
    let port = free_port();
    let cfg = config(port, "", FILE_OUTPUT).replace(
        "[runtime]\n",
        &format!("[runtime]\nmemory_limit = \"{LIMIT_MIB}MiB\"\n"),
    );
    let r = Router::start(&cfg);
    let pid = r.child.as_ref().expect("router running").id();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let good = steady_client(
        tcp(port),
        "steady",
        Duration::from_secs(60),
        acked.clone(),
        stop.clone(),
    );
    while acked.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }

    let entry = [0x92u8, 0x00, 0x80];
    let mut gzip = Vec::new();
    let inflated = entry.repeat(22_369_588);
    client::encode_packed_payload(
        &mut gzip,
        "t",
        &client::compress(&inflated, Compression::Gzip).unwrap(),
        false,
        None,
        Some("gzip"),
        Some("big"),
    );
    drop(inflated);
    let mut plain = Vec::new();
    client::encode_packed_payload(
        &mut plain,
        "t",
        &entry.repeat(5_592_000),
        false,
        None,
        None,
        Some("big"),
    );
    assert!(plain.len() <= 16 << 20, "{} bytes", plain.len());

    let mut c = connect(&tcp(port));
    for (i, (what, req)) in [("gzip", gzip), ("plain", plain)].into_iter().enumerate() {
        let during = acked.load(Ordering::SeqCst);
        c.send(&req).unwrap();
        drop(req);
        let deadline = Instant::now() + Duration::from_secs(60);
        while r.metric(
            "firelane_input_errors_total",
            &[INPUT, "kind=\"too_large\""],
        ) < (i + 1) as f64
        {
            assert!(
                Instant::now() < deadline,
                "{what}: not refused as too_large\n{}",
                r.metrics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Same connection: the next request's ack is the next message, so the refused
        // one got none.
        let chunk = format!("after-{what}");
        let mut rec = Vec::new();
        client::encode_record(&mut rec, &[("after", what)]);
        let mut next = Vec::new();
        client::encode_forward(
            &mut next,
            "after",
            &[Entry {
                time: EventTime {
                    secs: BASE,
                    nanos: 0,
                },
                record: &rec,
            }],
            Some(&chunk),
        );
        c.send(&next).unwrap();
        c.read_ack(&chunk)
            .unwrap_or_else(|e| panic!("{what}: connection not kept or big request acked: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::SeqCst) < during + 10 {
            assert!(Instant::now() < deadline, "{what}: the good client stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    stop.store(true, Ordering::SeqCst);
    good.join().expect("good client");
    let peak = peak_rss(pid) / (1024 * 1024);
    assert!(
        peak <= LIMIT_MIB + 64,
        "peak RSS {peak} MiB for memory_limit {LIMIT_MIB} MiB"
    );
    let lines = read_jsonl(&out_path(&r));
    assert!(
        lines.iter().all(|l| l["_tag"] != "t"),
        "records of a refused request were written"
    );
}
