//! The sending side: msgpack encoders for every request mode and a small blocking client.
//! Used by the load generator and by tests; firelane itself never sends forward requests.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;

use super::ListenAddr;
use super::decode::Plain;
use super::frame::{Split, Splitter};
use super::handshake;

/// Forward-protocol EventTime: seconds and nanoseconds since the epoch (ext type 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTime {
    /// Whole seconds since the Unix epoch (big-endian u32 in the ext payload).
    pub secs: u32,
    /// Nanoseconds within the second, 0..1_000_000_000.
    pub nanos: u32,
}

impl EventTime {
    /// From nanoseconds since the epoch; negative values clamp to 0 and seconds past
    /// `u32::MAX` (year 2106) clamp to `u32::MAX`.
    pub fn from_ns(ns: i64) -> Self {
        let ns = ns.max(0);
        EventTime {
            secs: u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX),
            nanos: (ns % 1_000_000_000) as u32,
        }
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_ns(crate::event::now_ns())
    }
}

/// One `[time, record]` entry; `record` is an encoded msgpack map (see [`encode_record`]).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The entry's EventTime.
    pub time: EventTime,
    /// The record: one msgpack map, already encoded.
    pub record: &'a [u8],
}

/// Compression of a CompressedPackedForward payload: one definition for every component.
pub use crate::config::Compression;

impl Compression {
    /// The value of the forward `compressed` option for a payload compressed so.
    #[cfg(test)]
    pub(crate) fn option_value(self) -> &'static str {
        self.as_str()
    }
}

// Writes into a Vec cannot fail; rmp's Result only exists for generic writers.
fn str_(b: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(b, s).ok();
}

fn str_bytes(b: &mut Vec<u8>, s: &[u8]) {
    rmp::encode::write_str_len(b, s.len() as u32).ok();
    b.extend_from_slice(s);
}

fn array(b: &mut Vec<u8>, n: usize) {
    rmp::encode::write_array_len(b, n as u32).ok();
}

fn map(b: &mut Vec<u8>, n: usize) {
    rmp::encode::write_map_len(b, n as u32).ok();
}

/// EventTime as fixext8 (`d7 00 ss ss ss ss nn nn nn nn`), as Docker's driver writes it.
pub(crate) fn write_event_time(b: &mut Vec<u8>, t: EventTime) {
    b.extend_from_slice(&[0xd7, 0x00]);
    b.extend_from_slice(&t.secs.to_be_bytes());
    b.extend_from_slice(&t.nanos.to_be_bytes());
}

/// A msgpack map of string fields (the shape Docker's driver sends).
pub fn encode_record(b: &mut Vec<u8>, fields: &[(&str, &str)]) {
    map(b, fields.len());
    for (k, v) in fields {
        str_(b, k);
        str_(b, v);
    }
}

/// A JSON object as a msgpack map (numbers become ints or floats, nesting is kept).
pub fn encode_json_record(b: &mut Vec<u8>, fields: &serde_json::Map<String, serde_json::Value>) {
    map(b, fields.len());
    for (k, v) in fields {
        str_(b, k);
        encode_json_value(b, v);
    }
}

fn encode_json_value(b: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => {
            rmp::encode::write_nil(b).ok();
        }
        Value::Bool(x) => {
            rmp::encode::write_bool(b, *x).ok();
        }
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmp::encode::write_uint(b, u).ok();
            } else if let Some(i) = n.as_i64() {
                rmp::encode::write_sint(b, i).ok();
            } else {
                rmp::encode::write_f64(b, n.as_f64().unwrap_or(0.0)).ok();
            }
        }
        Value::String(s) => str_(b, s),
        Value::Array(items) => {
            array(b, items.len());
            for i in items {
                encode_json_value(b, i);
            }
        }
        Value::Object(o) => encode_json_record(b, o),
    }
}

/// The option map: `size` when known, `compressed` when given, `chunk` when an ack is wanted.
fn write_option(
    b: &mut Vec<u8>,
    size: Option<usize>,
    compressed: Option<&str>,
    chunk: Option<&str>,
) {
    map(
        b,
        usize::from(size.is_some())
            + usize::from(compressed.is_some())
            + usize::from(chunk.is_some()),
    );
    if let Some(n) = size {
        str_(b, "size");
        rmp::encode::write_uint(b, n as u64).ok();
    }
    if let Some(c) = compressed {
        str_(b, "compressed");
        str_(b, c);
    }
    if let Some(c) = chunk {
        str_(b, "chunk");
        str_(b, c);
    }
}

/// Message mode: `[tag, time, record, option?]`. The option map is written only with a chunk
/// (like the Python logger; Docker's Go logger always writes one).
pub fn encode_message(
    b: &mut Vec<u8>,
    tag: &str,
    time: EventTime,
    record: &[u8],
    chunk: Option<&str>,
) {
    array(b, if chunk.is_some() { 4 } else { 3 });
    str_(b, tag);
    write_event_time(b, time);
    b.extend_from_slice(record);
    if chunk.is_some() {
        write_option(b, None, None, chunk);
    }
}

/// Forward mode: `[tag, [[time, record], …], option?]`.
pub fn encode_forward(b: &mut Vec<u8>, tag: &str, entries: &[Entry<'_>], chunk: Option<&str>) {
    array(b, if chunk.is_some() { 3 } else { 2 });
    str_(b, tag);
    array(b, entries.len());
    for e in entries {
        write_entry(b, e);
    }
    if chunk.is_some() {
        write_option(b, None, None, chunk);
    }
}

fn write_entry(b: &mut Vec<u8>, e: &Entry<'_>) {
    array(b, 2);
    write_event_time(b, e.time);
    b.extend_from_slice(e.record);
}

/// Concatenated `[time, record]` entries: the PackedForward payload before compression.
pub fn encode_entries(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = Vec::with_capacity(entries.iter().map(|e| e.record.len() + 12).sum());
    for e in entries {
        write_entry(&mut b, e);
    }
    b
}

/// PackedForward: `[tag, bin(entries), {"size": n, "chunk"?}]`.
pub fn encode_packed(b: &mut Vec<u8>, tag: &str, entries: &[Entry<'_>], chunk: Option<&str>) {
    let payload = encode_entries(entries);
    encode_packed_payload(b, tag, &payload, false, Some(entries.len()), None, chunk);
}

/// CompressedPackedForward: `[tag, bin(compressed entries), {"size", "compressed", "chunk"?}]`.
pub fn encode_compressed(
    b: &mut Vec<u8>,
    tag: &str,
    entries: &[Entry<'_>],
    compression: Compression,
    chunk: Option<&str>,
) -> io::Result<()> {
    let payload = compress(&encode_entries(entries), compression)?;
    encode_packed_payload(
        b,
        tag,
        &payload,
        false,
        Some(entries.len()),
        compression.content_encoding(),
        chunk,
    );
    Ok(())
}

/// Low level PackedForward with a ready payload. `as_str` writes it as msgpack str, as
/// fluentd's `out_forward` does, instead of bin.
pub fn encode_packed_payload(
    b: &mut Vec<u8>,
    tag: &str,
    payload: &[u8],
    as_str: bool,
    size: Option<usize>,
    compressed: Option<&str>,
    chunk: Option<&str>,
) {
    array(b, 3);
    str_(b, tag);
    if as_str {
        str_bytes(b, payload);
    } else {
        rmp::encode::write_bin(b, payload).ok();
    }
    write_option(b, size, compressed, chunk);
}

/// Compresses a payload as one gzip member or one zstd frame (`None`: as it is).
pub fn compress(data: &[u8], compression: Compression) -> io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Zstd => zstd::stream::encode_all(data, 1),
    }
}

/// A new chunk id the way fluentd makes one: base64 of 16 random bytes, with the trailing
/// newline of Ruby's `Base64.encode64` (the ack must echo it exactly).
pub fn new_chunk_id() -> String {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    let mut s = base64::engine::general_purpose::STANDARD.encode(id);
    s.push('\n');
    s
}

/// The ack the server sends for `chunk`: `{"ack": chunk}`.
pub fn expected_ack(chunk: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(chunk.len() + 8);
    map(&mut b, 1);
    str_(&mut b, "ack");
    str_(&mut b, chunk);
    b
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Blocking forward client over TCP or a unix socket.
pub struct ForwardClient {
    stream: Stream,
    inbox: Vec<u8>,
}

impl ForwardClient {
    /// Connects; `timeout` bounds connecting (TCP) and every later read and write.
    pub fn connect(addr: &ListenAddr, timeout: Duration) -> io::Result<Self> {
        let stream = match addr {
            ListenAddr::Tcp(a) => {
                // Every resolved address in turn: `localhost` often resolves to ::1 first
                // while the router listens on 127.0.0.1 only.
                let mut result = Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot resolve {a}"),
                ));
                for sock in std::net::ToSocketAddrs::to_socket_addrs(a)? {
                    result = TcpStream::connect_timeout(&sock, timeout);
                    if result.is_ok() {
                        break;
                    }
                }
                let s = result?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Stream::Tcp(s)
            }
            ListenAddr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Stream::Unix(s)
            }
        };
        Ok(ForwardClient {
            stream,
            inbox: Vec::new(),
        })
    }

    /// Writes one encoded request (as built by the `encode_*` functions) in full.
    ///
    /// # Errors
    /// The socket's write error (e.g. the server closed the connection).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(bytes),
            Stream::Unix(s) => s.write_all(bytes),
        }
    }

    /// Reads one msgpack object sent by the server (ack, HELO, PONG).
    pub fn read_message(&mut self) -> io::Result<Vec<u8>> {
        let mut splitter = Splitter::new(1 << 20);
        loop {
            match splitter.advance(&self.inbox) {
                Split::Complete(n) => return Ok(self.inbox.drain(..n).collect()),
                Split::Invalid(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                Split::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut chunk)?,
                Stream::Unix(s) => s.read(&mut chunk)?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.inbox.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits for the ack of `chunk` and checks that it echoes the chunk exactly.
    pub fn read_ack(&mut self, chunk: &str) -> io::Result<()> {
        let msg = self.read_message()?;
        if msg == expected_ack(chunk) {
            return Ok(());
        }
        let shown = Plain::parse(&msg)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|_| format!("{msg:02x?}"));
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected ack {shown}"),
        ))
    }

    /// Runs the client side of the shared-key handshake.
    pub fn handshake(&mut self, shared_key: &str, hostname: &str) -> io::Result<()> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::PermissionDenied, e);
        let helo = self.read_message()?;
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = hex::encode(salt).into_bytes();
        let (ping, nonce) = handshake::client_ping(&helo, hostname, &salt, shared_key.as_bytes())
            .map_err(invalid)?;
        self.send(&ping)?;
        let pong = self.read_message()?;
        handshake::verify_pong(&pong, &salt, &nonce, shared_key.as_bytes()).map_err(invalid)
    }

    /// Half-closes the sending side so the server sees EOF.
    pub fn finish(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
}
