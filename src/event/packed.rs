//! Record bodies kept as the msgpack map a forward client sent ("plain" maps only).
//!
//! A plain map is one whose tree conversion (the forward decoder's `read_map`) would change
//! nothing and repair nothing, so the bytes and the tree are two spellings of one record:
//! - every map key is a str (msgpack `str8/16/32`/fixstr) holding valid UTF-8;
//! - every string value is valid UTF-8; no `bin`, no `ext` (the tree turns bin into a lossy
//!   string and ext into null);
//! - floats are finite (the tree turns NaN and infinities into null);
//! - no map has a key twice (the tree keeps the first position and the last value);
//! - containers nest no deeper than [`crate::input::forward::decode::MAX_DEPTH`]
//!   (deeper records are refused by the tree path: they must take it to be refused).
//!
//! `scan_map` checks this once, at decode time; everything else here reads bytes that
//! passed it. The readers still never index out of bounds: on bytes that are not plain they
//! stop early (a `None`, a null, a serializer error), never panic.

use std::cell::Cell;

use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

use super::Fields;
use crate::input::forward::decode::MAX_DEPTH;

/// `b` as a `str` when it is valid UTF-8. Every string of a record body is checked once
/// at decode time (`scan_map`), which made `core::str::from_utf8` a tenth of the forward
/// input's CPU for ~500-byte log lines (perf, issue #10); `simdutf8` checks the same
/// thing with SIMD (same answer for every input: its `basic` API only says valid or not).
pub(crate) fn utf8_str(b: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(b).ok()
}

/// Whether `b` is valid UTF-8, for checks that need no `str`. Map keys and short values
/// (`source`, `container_name`, a container id) are nearly always ASCII, and below 64 bytes
/// simdutf8 hands over to `core::str::from_utf8`, an out-of-line call that was 4% of the
/// forward input's CPU (perf, issue #10); `is_ascii` is inlined, word at a time.
#[inline]
pub(crate) fn is_utf8(b: &[u8]) -> bool {
    (b.len() < 64 && b.is_ascii()) || simdutf8::basic::from_utf8(b).is_ok()
}

/// Maps with at most this many keys are checked for duplicates pairwise (no allocation);
/// larger ones through a sorted list of their keys.
const PAIRWISE_KEYS: usize = 16;

/// One msgpack token of a plain map.
#[derive(Debug, Clone, Copy)]
enum Tok<'a> {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Array(u32),
    Map(u32),
    /// bin, ext or a reserved marker: never in a plain map.
    Other,
}

/// A position in msgpack bytes. Every read is bounds-checked: `None` means the bytes end
/// early or hold something a plain map never holds.
struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Self {
        Rd { buf, pos }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The `N`-byte big-endian unsigned integer at the reader (a length, a count or a
    /// number's payload). `N` is a constant at every call, so this is one load and a byte
    /// swap, not a loop.
    #[inline(always)]
    fn be<const N: usize>(&mut self) -> Option<u64> {
        let bytes: [u8; N] = self.take(N)?.try_into().ok()?;
        Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// The `N`-byte big-endian length at the reader, as a `usize`.
    #[inline(always)]
    fn len<const N: usize>(&mut self) -> Option<usize> {
        usize::try_from(self.be::<N>()?).ok()
    }

    #[inline(always)]
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    #[inline(always)]
    fn skip_bytes(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// The bytes of the str at the reader (fixstr, str8/16/32); `None` for any other
    /// token, or when the bytes end early.
    #[inline(always)]
    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        match self.byte()? {
            b @ 0xa0..=0xbf => self.take(usize::from(b & 0x1f)),
            0xd9 => self.str_n::<1>(),
            0xda => self.str_n::<2>(),
            0xdb => self.str_n::<4>(),
            _ => None,
        }
    }

    /// The element count of the array or map whose marker `b` was just read: in the
    /// marker (fixarray, fixmap), or the 2- or 4-byte count after it (array16 / map16,
    /// array32 / map32).
    #[inline(always)]
    fn container_len(&mut self, b: u8) -> Option<u32> {
        match b {
            0xdc | 0xde => self.be::<2>().map(|n| n as u32),
            0xdd | 0xdf => self.be::<4>().map(|n| n as u32),
            _ => Some(u32::from(b & 0x0f)),
        }
    }

    /// The bytes of a str whose `N`-byte length is at the reader (str8/16/32 after their
    /// marker).
    #[inline(always)]
    fn str_n<const N: usize>(&mut self) -> Option<&'a [u8]> {
        let n = self.len::<N>()?;
        self.take(n)
    }

    /// The next token. Dispatches on the marker byte itself (msgpack spec, "Formats"),
    /// one jump where `rmp::Marker::from_u8` and a match on its result took two.
    fn next(&mut self) -> Option<Tok<'a>> {
        let b = self.byte()?;
        Some(match b {
            0x00..=0x7f => Tok::UInt(u64::from(b)),
            0x80..=0x8f => Tok::Map(u32::from(b & 0x0f)),
            0x90..=0x9f => Tok::Array(u32::from(b & 0x0f)),
            0xa0..=0xbf => Tok::Str(self.take(usize::from(b & 0x1f))?),
            0xc0 => Tok::Nil,
            0xc2 => Tok::Bool(false),
            0xc3 => Tok::Bool(true),
            0xcc => Tok::UInt(self.be::<1>()?),
            0xcd => Tok::UInt(self.be::<2>()?),
            0xce => Tok::UInt(self.be::<4>()?),
            0xcf => Tok::UInt(self.be::<8>()?),
            0xd0 => Tok::Int(i64::from(self.be::<1>()? as u8 as i8)),
            0xd1 => Tok::Int(i64::from(self.be::<2>()? as u16 as i16)),
            0xd2 => Tok::Int(i64::from(self.be::<4>()? as u32 as i32)),
            0xd3 => Tok::Int(self.be::<8>()? as i64),
            // As the forward decoder does: an f32 becomes the f64 of the same value.
            0xca => Tok::Float(f64::from(f32::from_bits(self.be::<4>()? as u32))),
            0xcb => Tok::Float(f64::from_bits(self.be::<8>()?)),
            0xd9 => Tok::Str(self.str_n::<1>()?),
            0xda => Tok::Str(self.str_n::<2>()?),
            0xdb => Tok::Str(self.str_n::<4>()?),
            0xdc => Tok::Array(self.be::<2>()? as u32),
            0xdd => Tok::Array(self.be::<4>()? as u32),
            0xde => Tok::Map(self.be::<2>()? as u32),
            0xdf => Tok::Map(self.be::<4>()? as u32),
            0xe0..=0xff => Tok::Int(i64::from(b as i8)),
            // 0xc1 (never used), bin (0xc4-0xc6), ext (0xc7-0xc9, 0xd4-0xd8).
            _ => Tok::Other,
        })
    }

    /// The next token as a map key (plain maps have str keys only).
    fn key(&mut self) -> Option<&'a str> {
        match self.next()? {
            Tok::Str(b) => utf8_str(b),
            _ => None,
        }
    }

    /// Steps over one whole value.
    fn skip(&mut self) -> Option<()> {
        // Containers are counted, not recursed: a remaining-items counter is enough.
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.next()? {
                Tok::Array(n) => pending += u64::from(n),
                Tok::Map(n) => pending += 2 * u64::from(n),
                Tok::Other => return None,
                _ => {}
            }
        }
        Some(())
    }
}

/// If the msgpack map starting at `buf[start]` is plain (see the module docs), the offset
/// just past it; `None` otherwise (the caller then takes the tree path, which repairs or
/// refuses what is not plain, and counts it).
pub(crate) fn scan_map(buf: &[u8], start: usize) -> Option<usize> {
    let mut rd = Rd::new(buf, start);
    let n = match rd.byte()? {
        b @ (0x80..=0x8f | 0xde | 0xdf) => rd.container_len(b)?,
        _ => return None,
    };
    scan_entries(&mut rd, n, 1)?;
    Some(rd.pos)
}

// The scan below reads marker bytes directly rather than through `Rd::next`: it runs on
// every byte of every forward record, and building and matching a `Tok` per value was
// about a third of the forward input's instructions (callgrind, issue #10).

/// `n` key/value pairs of a map whose values sit at nesting `depth` (the forward decoder's
/// `read_map` depth: the record map's values are at 1).
fn scan_entries(rd: &mut Rd<'_>, n: u32, depth: usize) -> Option<()> {
    let n = n as usize;
    if n > PAIRWISE_KEYS {
        return scan_large_entries(rd, n, depth);
    }
    let mut keys: [&[u8]; PAIRWISE_KEYS] = [&[]; PAIRWISE_KEYS];
    for i in 0..n {
        let k = rd.str_bytes()?;
        // Maps this small are the common case: comparing with the earlier keys costs a
        // few nanoseconds and no allocation.
        if !is_utf8(k) || keys[..i].contains(&k) {
            return None;
        }
        keys[i] = k;
        scan_value(rd, depth)?;
    }
    Some(())
}

/// [`scan_entries`] for maps of more than [`PAIRWISE_KEYS`] keys: duplicates are found
/// through a sorted list of the keys.
#[cold]
fn scan_large_entries(rd: &mut Rd<'_>, n: usize, depth: usize) -> Option<()> {
    // Each pair takes at least two bytes: a hostile count cannot over-allocate.
    let mut keys: Vec<&[u8]> = Vec::with_capacity(n.min(rd.buf.len().saturating_sub(rd.pos) / 2));
    for _ in 0..n {
        let k = rd.str_bytes()?;
        if !is_utf8(k) {
            return None;
        }
        keys.push(k);
        scan_value(rd, depth)?;
    }
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    Some(())
}

/// One value at nesting `depth`; `None` if it is not plain (module docs) or the bytes end
/// early. Marker bytes as in the msgpack spec's "Formats" table.
fn scan_value(rd: &mut Rd<'_>, depth: usize) -> Option<()> {
    let b = rd.byte()?;
    match b {
        // positive and negative fixint, nil, false, true
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(()),
        0xa0..=0xbf => plain_str(rd.take(usize::from(b & 0x1f))?),
        0xd9 => plain_str(rd.str_n::<1>()?),
        0xda => plain_str(rd.str_n::<2>()?),
        0xdb => plain_str(rd.str_n::<4>()?),
        // uint 8/16/32/64, int 8/16/32/64
        0xcc | 0xd0 => rd.skip_bytes(1),
        0xcd | 0xd1 => rd.skip_bytes(2),
        0xce | 0xd2 => rd.skip_bytes(4),
        0xcf | 0xd3 => rd.skip_bytes(8),
        // The tree turns NaN and infinities into null: not plain.
        0xca => f32::from_bits(rd.be::<4>()? as u32)
            .is_finite()
            .then_some(()),
        0xcb => f64::from_bits(rd.be::<8>()?).is_finite().then_some(()),
        0x90..=0x9f | 0xdc | 0xdd => {
            let n = rd.container_len(b)?;
            scan_array(rd, n, depth)
        }
        0x80..=0x8f | 0xde | 0xdf => {
            let n = rd.container_len(b)?;
            scan_nested_map(rd, n, depth)
        }
        // 0xc1 (never used), bin (0xc4-0xc6), ext (0xc7-0xc9, 0xd4-0xd8).
        _ => None,
    }
}

#[inline(always)]
fn plain_str(b: &[u8]) -> Option<()> {
    is_utf8(b).then_some(())
}

fn scan_array(rd: &mut Rd<'_>, n: u32, depth: usize) -> Option<()> {
    if depth >= MAX_DEPTH {
        return None;
    }
    for _ in 0..n {
        scan_value(rd, depth + 1)?;
    }
    Some(())
}

fn scan_nested_map(rd: &mut Rd<'_>, n: u32, depth: usize) -> Option<()> {
    if depth >= MAX_DEPTH {
        return None;
    }
    scan_entries(rd, n, depth + 1)
}

/// Top-level entries of a plain map: `(key, the value's msgpack bytes)`, in order.
pub(crate) struct Entries<'a> {
    rd: Rd<'a>,
    left: u32,
}

impl<'a> Entries<'a> {
    pub(crate) fn new(map: &'a [u8]) -> Self {
        let mut rd = Rd::new(map, 0);
        let left = match rd.next() {
            Some(Tok::Map(n)) => n,
            _ => 0,
        };
        Entries { rd, left }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = (|| {
            let key = self.rd.key()?;
            let start = self.rd.pos;
            self.rd.skip()?;
            Some((key, self.rd.buf.get(start..self.rd.pos)?))
        })();
        if item.is_none() {
            self.left = 0;
        }
        item
    }
}

/// The plain map `map` with the str entries `adds` appended: the header's count grows,
/// the existing entries are copied as they are, the new ones follow in order. `None` when
/// `map` does not start with a map header, or the count would pass msgpack's `u32`.
///
/// The result is plain only if no key of `adds` is already in `map` and the keys of `adds`
/// are distinct: the caller ([`crate::event::Record::append_str_fields`]) makes sure. Its
/// tree is the old tree with the entries inserted at the end, as `Map::insert` does with
/// `preserve_order`, so JSON lines stay byte-identical to the tree path's.
pub(crate) fn append_str_entries(map: &[u8], adds: &[(&str, &str)]) -> Option<Vec<u8>> {
    let mut rd = Rd::new(map, 0);
    let Some(Tok::Map(n)) = rd.next() else {
        return None;
    };
    let count = u32::try_from(adds.len())
        .ok()
        .and_then(|a| n.checked_add(a))?;
    let extra: usize = adds.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(map.len() + extra + 4);
    // Writing into a Vec cannot fail.
    rmp::encode::write_map_len(&mut out, count).ok()?;
    out.extend_from_slice(&map[rd.pos..]);
    for (k, v) in adds {
        rmp::encode::write_str(&mut out, k).ok()?;
        rmp::encode::write_str(&mut out, v).ok()?;
    }
    Some(out)
}

/// Number of top-level entries of a plain map.
#[cfg(test)]
pub(crate) fn len(map: &[u8]) -> usize {
    match Rd::new(map, 0).next() {
        Some(Tok::Map(n)) => n as usize,
        _ => 0,
    }
}

/// The value if it is a msgpack str.
pub(crate) fn as_str(bytes: &[u8]) -> Option<&str> {
    match Rd::new(bytes, 0).next()? {
        Tok::Str(b) => utf8_str(b),
        _ => None,
    }
}

/// The value one msgpack value decodes to, exactly as the forward decoder's tree path
/// builds it for plain input.
pub(crate) fn to_value(bytes: &[u8]) -> Value {
    read_value(&mut Rd::new(bytes, 0)).unwrap_or(Value::Null)
}

/// The whole map as fields (the slow path: one allocation per key and string).
pub(crate) fn to_fields(map: &[u8]) -> Fields {
    let mut rd = Rd::new(map, 0);
    match rd.next() {
        Some(Tok::Map(n)) => read_map(&mut rd, n).unwrap_or_default(),
        _ => Fields::new(),
    }
}

fn read_map(rd: &mut Rd<'_>, n: u32) -> Option<Map<String, Value>> {
    let mut map = Map::with_capacity((n as usize).min(rd.buf.len().saturating_sub(rd.pos) / 2));
    for _ in 0..n {
        let k = rd.key()?.to_owned();
        map.insert(k, read_value(rd)?);
    }
    Some(map)
}

fn read_value(rd: &mut Rd<'_>) -> Option<Value> {
    Some(match rd.next()? {
        Tok::Nil => Value::Null,
        Tok::Bool(b) => Value::Bool(b),
        Tok::UInt(u) => Value::Number(u.into()),
        Tok::Int(i) => Value::Number(i.into()),
        Tok::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Tok::Str(b) => Value::String(utf8_str(b)?.to_owned()),
        Tok::Array(n) => {
            let mut items =
                Vec::with_capacity((n as usize).min(rd.buf.len().saturating_sub(rd.pos)));
            for _ in 0..n {
                items.push(read_value(rd)?);
            }
            Value::Array(items)
        }
        Tok::Map(n) => Value::Object(read_map(rd, n)?),
        Tok::Other => return None,
    })
}

/// Serializes one value read from a shared position, so that children advance their
/// parent's reader (no second pass to find where a child ends).
struct At<'r, 'a> {
    buf: &'a [u8],
    pos: &'r Cell<usize>,
}

impl At<'_, '_> {
    fn next_tok<E: serde::ser::Error>(&self) -> Result<Tok<'_>, E> {
        let mut rd = Rd::new(self.buf, self.pos.get());
        let tok = rd
            .next()
            .ok_or_else(|| E::custom("record body is not plain msgpack"))?;
        self.pos.set(rd.pos);
        Ok(tok)
    }
}

fn utf8<E: serde::ser::Error>(b: &[u8]) -> Result<&str, E> {
    utf8_str(b).ok_or_else(|| E::custom("record body holds invalid UTF-8"))
}

impl Serialize for At<'_, '_> {
    /// Every case calls the serializer method that serde_json's `Value` calls for the value
    /// the tree path builds (u64/i64 for integers, f64 for floats, unit for nil, sized
    /// sequences and maps), so a JSON serializer writes byte for byte what it writes for
    /// the tree: same escaping, same float text.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.next_tok()? {
            Tok::Nil => s.serialize_unit(),
            Tok::Bool(b) => s.serialize_bool(b),
            Tok::UInt(u) => s.serialize_u64(u),
            Tok::Int(i) => s.serialize_i64(i),
            Tok::Float(f) => s.serialize_f64(f),
            Tok::Str(b) => s.serialize_str(utf8(b)?),
            Tok::Array(n) => {
                let mut seq = s.serialize_seq(Some(n as usize))?;
                for _ in 0..n {
                    seq.serialize_element(self)?;
                }
                seq.end()
            }
            Tok::Map(n) => {
                let mut map = s.serialize_map(Some(n as usize))?;
                for _ in 0..n {
                    match self.next_tok()? {
                        Tok::Str(k) => map.serialize_entry(utf8(k)?, self)?,
                        _ => return Err(S::Error::custom("record body has a non-string key")),
                    }
                }
                map.end()
            }
            Tok::Other => Err(S::Error::custom("record body is not plain msgpack")),
        }
    }
}

/// One msgpack value (e.g. from [`Entries`]) as a serde value.
pub(crate) struct PackedValue<'a>(pub(crate) &'a [u8]);

impl Serialize for PackedValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pos = Cell::new(0);
        At {
            buf: self.0,
            pos: &pos,
        }
        .serialize(s)
    }
}

/// Writes the plain map `map` as one JSON object to `out`: byte for byte what serde_json
/// writes for it through [`PackedValue`] (same escaping, same number text), without going
/// through serde. The JSON-lines outputs spend most of their CPU writing strings; this
/// looks at 8 bytes at a time for the few that need escaping ([`write_json_str`]).
/// `None` when the bytes are not plain (then `out` holds a partial object: the caller
/// truncates it and takes the serde path, which reports the error).
pub(crate) fn write_json(map: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut rd = Rd::new(map, 0);
    match rd.next()? {
        Tok::Map(n) => write_json_map(&mut rd, n, out, 0),
        _ => None,
    }
}

fn write_json_map(rd: &mut Rd<'_>, n: u32, out: &mut Vec<u8>, depth: usize) -> Option<()> {
    out.push(b'{');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        match rd.next()? {
            Tok::Str(k) => write_json_str(k, out)?,
            _ => return None,
        }
        out.push(b':');
        write_json_value(rd, out, depth + 1)?;
    }
    out.push(b'}');
    Some(())
}

fn write_json_value(rd: &mut Rd<'_>, out: &mut Vec<u8>, depth: usize) -> Option<()> {
    // Plain maps nest no deeper than MAX_DEPTH (checked by `scan_map`); the bound keeps
    // the recursion finite on bytes that somehow are not plain.
    if depth > MAX_DEPTH + 1 {
        return None;
    }
    use std::io::Write as _;
    match rd.next()? {
        Tok::Nil => out.extend_from_slice(b"null"),
        Tok::Bool(true) => out.extend_from_slice(b"true"),
        Tok::Bool(false) => out.extend_from_slice(b"false"),
        Tok::UInt(u) => write!(out, "{u}").ok()?,
        Tok::Int(i) => write!(out, "{i}").ok()?,
        // serde_json's own float text (ryu; non-finite as null), as the serde path writes.
        Tok::Float(f) => serde_json::to_writer(&mut *out, &f).ok()?,
        Tok::Str(b) => write_json_str(b, out)?,
        Tok::Array(n) => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                write_json_value(rd, out, depth + 1)?;
            }
            out.push(b']');
        }
        Tok::Map(n) => write_json_map(rd, n, out, depth)?,
        Tok::Other => return None,
    }
    Some(())
}

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([1; 8]);
/// `0x80` in every byte of a word.
const HIGHS: u64 = ONES * 0x80;

/// The bytes of `w` (read little-endian) below `n` (`n` ≤ 0x80), as `0x80` in their place:
/// the "hasless" bit trick. A borrow only runs upward, so a byte can be flagged wrongly
/// only above one flagged rightly: the lowest flag is exact, and so is "none".
fn less_mask(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// The bytes of `w` that a JSON string must escape: `"`, `\\` and controls below 0x20
/// (RFC 8259 section 7). Exact in its lowest flag, as [`less_mask`].
fn escape_mask(w: u64) -> u64 {
    less_mask(w, 0x20)
        | less_mask(w ^ (ONES * u64::from(b'"')), 1)
        | less_mask(w ^ (ONES * u64::from(b'\\')), 1)
}

/// Writes `s` as a JSON string, escaped as serde_json escapes: `\"`, `\\` , `\b` `\t` `\n`
/// `\f` `\r`, other control characters as `\u00xx` (RFC 8259 section 7), all else as is.
/// Reads 8 bytes at a time and goes straight to the next byte to escape (the lowest flag
/// of [`escape_mask`]), copying the run before it whole.
/// `None` for bytes that are not UTF-8 (never in a plain map; checked only for strings
/// with bytes above 0x7f, ASCII being UTF-8).
fn write_json_str(s: &[u8], out: &mut Vec<u8>) -> Option<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut high = 0u64;
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        // The last word is padded with spaces, which need no escape.
        let mut bytes = [b' '; 8];
        let n = match s.get(i..i + 8) {
            Some(word) => {
                bytes.copy_from_slice(word);
                8
            }
            None => {
                let rest = &s[i..];
                bytes[..rest.len()].copy_from_slice(rest);
                rest.len()
            }
        };
        let w = u64::from_le_bytes(bytes);
        high |= w;
        let m = escape_mask(w);
        if m == 0 {
            i += n;
            continue;
        }
        // Flags are 0x80 at the flagged byte, so the lowest is at bit 8j + 7.
        i += (m.trailing_zeros() / 8) as usize;
        let b = s[i];
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        i += 1;
        start = i;
    }
    if high & HIGHS != 0 {
        utf8_str(s)?;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(v: &Value) -> Vec<u8> {
        let mut b = Vec::new();
        let Value::Object(m) = v else {
            panic!("test body must be an object")
        };
        crate::input::forward::client::encode_json_record(&mut b, m);
        b
    }

    #[test]
    fn plain_maps_are_recognised_and_read_back() {
        let v = serde_json::json!({"log": "a\"b\u{1}é", "n": -5, "u": u64::MAX, "f": 1.5,
            "nested": {"a": [1, {"b": null}], "e": {}}, "t": true});
        let b = mp(&v);
        assert_eq!(scan_map(&b, 0), Some(b.len()));
        assert_eq!(Value::Object(to_fields(&b)), v);
        let keys: Vec<_> = Entries::new(&b).map(|(k, _)| k).collect();
        assert_eq!(keys, ["log", "n", "u", "f", "nested", "t"]);
        assert_eq!(len(&b), 6);
        assert_eq!(
            serde_json::to_string(&PackedValue(&b)).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
    }

    /// The fast writer and serde_json agree byte for byte, on every escape, number and
    /// nesting (random values), and refuse what serde refuses.
    #[test]
    fn write_json_writes_what_serde_json_writes() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let chars = prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('x')),
            Just('"'),
            Just('\\'),
            Just('\u{7f}'),
            Just('é'),
            Just('😀'),
            proptest::char::range('a', 'z'),
        ];
        let string =
            proptest::collection::vec(chars, 0..40).prop_map(|v| v.into_iter().collect::<String>());
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            string.clone().prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z\"\\\\\u{1}é]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        let record = proptest::collection::btree_map(string, value, 0..8);
        let mut runner = TestRunner::new(Config::with_cases(3000));
        runner
            .run(&record, |m| {
                let v = Value::Object(m.into_iter().collect());
                let b = mp(&v);
                prop_assume!(scan_map(&b, 0) == Some(b.len()));
                let mut fast = Vec::new();
                prop_assert!(write_json(&b, &mut fast).is_some());
                let serde = serde_json::to_vec(&PackedValue(&b)).expect("serde");
                prop_assert_eq!(
                    String::from_utf8_lossy(&fast),
                    String::from_utf8_lossy(&serde)
                );
                Ok(())
            })
            .expect("fast and serde JSON agree");
        // Long runs around the 8-byte words, with an escape at every position.
        for len in 1..40 {
            for at in 0..len {
                let mut s = "a".repeat(len);
                s.replace_range(at..at + 1, "\n");
                let v = serde_json::json!({ "log": s });
                let b = mp(&v);
                let mut fast = Vec::new();
                assert!(write_json(&b, &mut fast).is_some());
                assert_eq!(fast, serde_json::to_vec(&v).expect("serde"), "{len} {at}");
            }
        }
        // Two escapes anywhere in a word, each kind against each, so that a borrow's
        // false flag above a control byte (0x1f then a space) can never be taken for one.
        for len in 2..20 {
            for a in 0..len {
                for b in a + 1..len {
                    for (x, y) in [
                        ("\u{1f}", " "),
                        ("\"", "\\"),
                        ("\u{0}", "\u{1f}"),
                        ("\t", "é"),
                    ] {
                        let mut s: Vec<String> = vec!["!".to_string(); len];
                        s[a] = x.to_string();
                        s[b] = y.to_string();
                        let v = serde_json::json!({ "log": s.concat() });
                        let mut fast = Vec::new();
                        assert!(write_json(&mp(&v), &mut fast).is_some());
                        assert_eq!(
                            fast,
                            serde_json::to_vec(&v).expect("serde"),
                            "{len} {a} {b}"
                        );
                    }
                }
            }
        }
        // Not plain: a bin value, invalid UTF-8, a non-string key.
        assert!(write_json(&[0x81, 0xa1, b'a', 0xc4, 1, 0], &mut Vec::new()).is_none());
        assert!(write_json(&[0x81, 0xa1, b'a', 0xa2, 0xc3, 0x28], &mut Vec::new()).is_none());
        assert!(write_json(&[0x81, 0x01, 0x02], &mut Vec::new()).is_none());
    }

    #[test]
    fn what_the_tree_path_repairs_is_not_plain() {
        // Duplicate key, top level and nested (small and large maps).
        assert_eq!(scan_map(&[0x82, 0xa1, b'a', 1, 0xa1, b'a', 2], 0), None);
        assert_eq!(
            scan_map(&[0x81, 0xa1, b'x', 0x82, 0xa1, b'a', 1, 0xa1, b'a', 2], 0),
            None
        );
        let mut big = vec![0xde, 0, 20];
        for i in 0..20u8 {
            big.extend_from_slice(&[0xa1, b'a' + (i % 19), i]);
        }
        assert_eq!(scan_map(&big, 0), None);
        big[3 + 19 * 3 + 1] = b'z';
        assert_eq!(scan_map(&big, 0), Some(big.len()));
        // Integer key, bin value, ext value, invalid UTF-8, NaN, a map of the same key bytes
        // written once as fixstr and once as str8 (still a duplicate).
        assert_eq!(scan_map(&[0x81, 0x01, 0x02], 0), None);
        assert_eq!(scan_map(&[0x81, 0xa1, b'a', 0xc4, 1, b'x'], 0), None);
        assert_eq!(scan_map(&[0x81, 0xa1, b'a', 0xd4, 1, 1], 0), None);
        assert_eq!(scan_map(&[0x81, 0xa1, b'a', 0xa1, 0xff], 0), None);
        let mut nan = vec![0x81, 0xa1, b'a', 0xcb];
        nan.extend_from_slice(&f64::NAN.to_be_bytes());
        assert_eq!(scan_map(&nan, 0), None);
        assert_eq!(scan_map(&[0x82, 0xa1, b'a', 1, 0xd9, 1, b'a', 2], 0), None);
        // Truncated.
        assert_eq!(scan_map(&[0x82, 0xa1, b'a', 1], 0), None);
    }

    /// The scan as it was written over `Rd::next` tokens before the byte-dispatch rewrite:
    /// the reference the fast scan must agree with.
    fn reference_scan(buf: &[u8]) -> Option<usize> {
        fn entries(rd: &mut Rd<'_>, n: u32, depth: usize) -> Option<()> {
            let mut keys: Vec<&[u8]> = Vec::new();
            for _ in 0..n {
                let Tok::Str(k) = rd.next()? else {
                    return None;
                };
                if !is_utf8(k) || keys.contains(&k) {
                    return None;
                }
                keys.push(k);
                value(rd, depth)?;
            }
            Some(())
        }
        fn value(rd: &mut Rd<'_>, depth: usize) -> Option<()> {
            match rd.next()? {
                Tok::Nil | Tok::Bool(_) | Tok::UInt(_) | Tok::Int(_) => Some(()),
                Tok::Float(f) => f.is_finite().then_some(()),
                Tok::Str(b) => is_utf8(b).then_some(()),
                Tok::Array(n) if depth < MAX_DEPTH => (0..n).try_for_each(|_| value(rd, depth + 1)),
                Tok::Map(n) if depth < MAX_DEPTH => entries(rd, n, depth + 1),
                _ => None,
            }
        }
        let mut rd = Rd::new(buf, 0);
        let Tok::Map(n) = rd.next()? else {
            return None;
        };
        entries(&mut rd, n, 1)?;
        Some(rd.pos)
    }

    #[test]
    fn the_scan_agrees_with_the_token_reference_on_any_token_stream() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        // One msgpack token in every encoding the spec has, including the ones a plain map
        // never holds, with lengths that may run past the end.
        let key = prop::sample::select(vec![&b"a"[..], b"b", b"log", b"\xff"]);
        let token = prop_oneof![
            (0u8..4).prop_map(|n| vec![0x80 | n]),
            (0u16..20).prop_map(|n| [vec![0xde], n.to_be_bytes().to_vec()].concat()),
            (0u32..3).prop_map(|n| [vec![0xdf], n.to_be_bytes().to_vec()].concat()),
            (0u8..3).prop_map(|n| vec![0x90 | n]),
            (0u16..3).prop_map(|n| [vec![0xdc], n.to_be_bytes().to_vec()].concat()),
            (0u32..3).prop_map(|n| [vec![0xdd], n.to_be_bytes().to_vec()].concat()),
            key.clone()
                .prop_map(|k| [vec![0xa0 | k.len() as u8], k.to_vec()].concat()),
            key.clone()
                .prop_map(|k| [vec![0xd9, k.len() as u8], k.to_vec()].concat()),
            key.clone()
                .prop_map(|k| [vec![0xda, 0, k.len() as u8], k.to_vec()].concat()),
            key.prop_map(|k| [vec![0xdb, 0, 0, 0, k.len() as u8], k.to_vec()].concat()),
            any::<u8>().prop_map(|b| vec![b]),
            (
                prop::sample::select(vec![0xcc_u8, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3]),
                any::<u64>()
            )
                .prop_map(|(m, v)| {
                    let w = [1, 2, 4, 8][usize::from(m & 3)];
                    [vec![m], v.to_be_bytes()[8 - w..].to_vec()].concat()
                }),
            prop::sample::select(vec![0.5_f64, f64::NAN, f64::INFINITY, -0.0]).prop_map(|f| [
                vec![0xcb],
                f.to_be_bytes().to_vec()
            ]
            .concat()),
            prop::sample::select(vec![1.5_f32, f32::NAN, f32::NEG_INFINITY]).prop_map(|f| [
                vec![0xca],
                f.to_be_bytes().to_vec()
            ]
            .concat()),
            Just(vec![0xc4, 1, b'x']),
            Just(vec![0xd4, 1, 2]),
            Just(vec![0xc7, 1, 5, 0]),
        ];
        let tokens = (
            (0u8..4).prop_map(|n| vec![0x80 | n]),
            proptest::collection::vec(token, 0..64),
        )
            .prop_map(|(head, toks)| [head, toks.concat()].concat());
        // Maps of more than PAIRWISE_KEYS keys (the sorted duplicate check), str keys
        // that sometimes repeat, as map16 at the top or nested one level down.
        let large = (proptest::collection::vec(0u16..60, 17..24), any::<bool>()).prop_map(
            |(keys, nested)| {
                let mut m = vec![0xde];
                m.extend((keys.len() as u16).to_be_bytes());
                for k in keys {
                    let k = format!("k{k}");
                    m.push(0xa0 | k.len() as u8);
                    m.extend(k.bytes());
                    m.push(0x01);
                }
                if nested {
                    [vec![0x81, 0xa1, b'n'], m].concat()
                } else {
                    m
                }
            },
        );
        let stream =
            (prop_oneof![3 => tokens, 1 => large], any::<usize>()).prop_map(|(mut b, cut)| {
                // Sometimes truncated anywhere.
                if cut % 4 == 0 {
                    b.truncate(cut % (b.len() + 1));
                }
                b
            });
        TestRunner::new(Config::with_cases(20_000))
            .run(&stream, |b| {
                prop_assert_eq!(scan_map(&b, 0), reference_scan(&b), "{:02x?}", b);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn nesting_limit_matches_the_tree_path() {
        // The record map's values are at depth 1; a container at depth MAX_DEPTH is refused.
        let nest = |levels: usize| {
            let mut b = vec![0x81, 0xa1, b'a'];
            b.extend(std::iter::repeat_n(0x91, levels));
            b.push(0xc0);
            b
        };
        assert!(scan_map(&nest(MAX_DEPTH - 1), 0).is_some());
        assert!(scan_map(&nest(MAX_DEPTH), 0).is_none());
        // The same with maps: `{"a": {"a": … null}}`.
        let nest_maps = |levels: usize| {
            let mut b = vec![0x81, 0xa1, b'a'];
            for _ in 0..levels {
                b.extend([0x81, 0xa1, b'a']);
            }
            b.push(0xc0);
            b
        };
        assert!(scan_map(&nest_maps(MAX_DEPTH - 1), 0).is_some());
        assert!(scan_map(&nest_maps(MAX_DEPTH), 0).is_none());
        for levels in [MAX_DEPTH - 1, MAX_DEPTH] {
            let b = nest_maps(levels);
            assert_eq!(scan_map(&b, 0), reference_scan(&b));
        }
    }

    #[test]
    fn tokens_follow_the_msgpack_marker_table() {
        // Every marker byte against rmp's table: the kind of token, and how many bytes
        // it takes (the payload is zeros, so lengths and counts are 0).
        use rmp::Marker as M;
        let mut bytes = [0u8; 40];
        for b in 0..=255u8 {
            bytes[0] = b;
            let mut rd = Rd::new(&bytes, 0);
            let tok = rd.next();
            let (ok, width) = match (M::from_u8(b), tok) {
                (M::FixPos(n), Some(Tok::UInt(v))) => (v == u64::from(n), 1),
                (M::FixNeg(n), Some(Tok::Int(v))) => (v == i64::from(n), 1),
                (M::Null, Some(Tok::Nil)) => (true, 1),
                (M::True, Some(Tok::Bool(v))) => (v, 1),
                (M::False, Some(Tok::Bool(v))) => (!v, 1),
                (M::U8, Some(Tok::UInt(0))) => (true, 2),
                (M::U16, Some(Tok::UInt(0))) => (true, 3),
                (M::U32, Some(Tok::UInt(0))) => (true, 5),
                (M::U64, Some(Tok::UInt(0))) => (true, 9),
                (M::I8, Some(Tok::Int(0))) => (true, 2),
                (M::I16, Some(Tok::Int(0))) => (true, 3),
                (M::I32, Some(Tok::Int(0))) => (true, 5),
                (M::I64, Some(Tok::Int(0))) => (true, 9),
                (M::F32, Some(Tok::Float(f))) => (f == 0.0, 5),
                (M::F64, Some(Tok::Float(f))) => (f == 0.0, 9),
                (M::FixStr(n), Some(Tok::Str(s))) => {
                    (s.len() == usize::from(n), 1 + usize::from(n))
                }
                (M::Str8, Some(Tok::Str(s))) => (s.is_empty(), 2),
                (M::Str16, Some(Tok::Str(s))) => (s.is_empty(), 3),
                (M::Str32, Some(Tok::Str(s))) => (s.is_empty(), 5),
                (M::FixArray(n), Some(Tok::Array(v))) => (v == u32::from(n), 1),
                (M::Array16, Some(Tok::Array(0))) => (true, 3),
                (M::Array32, Some(Tok::Array(0))) => (true, 5),
                (M::FixMap(n), Some(Tok::Map(v))) => (v == u32::from(n), 1),
                (M::Map16, Some(Tok::Map(0))) => (true, 3),
                (M::Map32, Some(Tok::Map(0))) => (true, 5),
                (
                    M::Reserved
                    | M::Bin8
                    | M::Bin16
                    | M::Bin32
                    | M::Ext8
                    | M::Ext16
                    | M::Ext32
                    | M::FixExt1
                    | M::FixExt2
                    | M::FixExt4
                    | M::FixExt8
                    | M::FixExt16,
                    Some(Tok::Other),
                ) => (true, 1),
                _ => (false, 0),
            };
            assert!(ok, "marker {b:#04x}: {tok:?}");
            assert_eq!(rd.pos, width, "marker {b:#04x}: bytes taken");
        }
    }
}
