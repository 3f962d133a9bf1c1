//! Finds where one msgpack object ends in a growing byte buffer.
//!
//! Forward clients write requests back to back with no length prefix, so the only way to
//! know a request is complete is to walk its structure. The walk needs no stack: skipping an
//! array of `n` elements (or a map of `n` pairs) just means "`n` (or `2n`) more objects to
//! skip", so the whole state is one offset and one counter. That state survives between
//! reads, so a 16 MiB frame arriving in 4 KiB pieces is walked once, not once per read, and
//! str/bin/ext bodies are jumped over without being looked at (even before they arrived).

use rmp::Marker;

/// Why a frame can never become valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// 0xc1, the one byte msgpack never uses.
    #[error("invalid msgpack marker 0x{byte:02x} at offset {offset}")]
    Malformed {
        /// The marker byte found (0xc1).
        byte: u8,
        /// Its position, in bytes from the start of the frame.
        offset: usize,
    },
    /// A header (length or element count) proves the frame is bigger than allowed. Raised
    /// as soon as the header is seen, before any of the claimed bytes are buffered.
    #[error("frame of at least {at_least} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Lower bound of the frame size the header proves, in bytes.
        at_least: u64,
        /// The configured limit (`max_frame`), in bytes.
        max: usize,
    },
}

/// Result of [`Splitter::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// More bytes are needed. [`Splitter::min_len`] is a lower bound of the frame size.
    Incomplete,
    /// The first `n` bytes of the buffer are one complete msgpack object.
    Complete(usize),
    /// The buffer can never start a valid frame; the connection must be closed.
    Invalid(FrameError),
}

/// Resumable walker over one msgpack object at the start of a buffer.
///
/// Feed it the same buffer (grown by appending) until it answers `Complete(n)`; after the
/// caller consumed those `n` bytes, [`Splitter::reset`] starts the next frame.
#[derive(Debug, Clone)]
pub struct Splitter {
    /// Offset of the next object to skip. May point past the buffer end while a body is
    /// still arriving.
    pos: u64,
    /// Objects still to skip before the frame is complete.
    remaining: u64,
    max: usize,
}

impl Splitter {
    /// `max` is the largest accepted frame in bytes.
    pub fn new(max: usize) -> Self {
        Splitter {
            pos: 0,
            remaining: 1,
            max,
        }
    }

    /// Prepares for the next frame (the caller removed the previous one from the buffer).
    pub(crate) fn reset(&mut self) {
        self.pos = 0;
        self.remaining = 1;
    }

    /// True when nothing of the current frame has been walked yet.
    pub(crate) fn at_start(&self) -> bool {
        self.pos == 0
    }

    /// Lower bound of the current frame's size: bytes walked so far plus one byte for every
    /// object still owed. Used to size the read buffer and the memory reservation.
    pub(crate) fn min_len(&self) -> usize {
        usize::try_from(self.pos.saturating_add(self.remaining)).unwrap_or(usize::MAX)
    }

    /// Walks as far as `buf` allows. `buf` must start at the current frame's first byte and
    /// contain everything passed in earlier calls.
    pub fn advance(&mut self, buf: &[u8]) -> Split {
        let len = buf.len() as u64;
        while self.remaining > 0 {
            if self.pos >= len {
                return Split::Incomplete;
            }
            // `pos < len`, so it fits in usize.
            let at = self.pos as usize;
            let byte = buf[at];
            let head = match head_of(byte) {
                Some(h) => h,
                None => return Split::Invalid(FrameError::Malformed { byte, offset: at }),
            };
            let header_end = at + 1 + head.len_bytes;
            if header_end > buf.len() {
                return Split::Incomplete;
            }
            let n = read_be(&buf[at + 1..header_end]);
            let (body, children) = match head.count {
                Count::Fixed(body) => (body, 0),
                Count::Body(extra) => (n + extra, 0),
                Count::Elements(mult) => (0, n * mult),
                Count::FixElements(c) => (0, c),
            };
            let next = header_end as u64 + body;
            let remaining = self.remaining - 1 + children;
            // Every owed object takes at least one byte, so this is a true lower bound and a
            // gigabyte-claiming header is refused right here, with nothing allocated.
            let at_least = next.saturating_add(remaining);
            if at_least > self.max as u64 {
                return Split::Invalid(FrameError::TooLarge {
                    at_least,
                    max: self.max,
                });
            }
            self.pos = next;
            self.remaining = remaining;
        }
        if self.pos > len {
            Split::Incomplete
        } else {
            Split::Complete(self.pos as usize)
        }
    }
}

/// Length of the complete msgpack object at the start of `buf`, if it is complete and valid.
pub(crate) fn object_len(buf: &[u8]) -> Option<usize> {
    match Splitter::new(buf.len()).advance(buf) {
        Split::Complete(n) => Some(n),
        _ => None,
    }
}

/// How an object's size follows from its header.
#[derive(Clone, Copy)]
enum Count {
    /// Body of a fixed size (scalars, fixstr, fixext).
    Fixed(u64),
    /// Body is the length field plus this many bytes (the ext type byte).
    Body(u64),
    /// No body; the length field counts this many objects per unit (1 array, 2 map).
    Elements(u64),
    /// fixarray/fixmap: this many child objects, count taken from the marker itself.
    FixElements(u64),
}

#[derive(Clone, Copy)]
struct Head {
    /// Bytes of big-endian length after the marker.
    len_bytes: usize,
    count: Count,
}

fn head_of(byte: u8) -> Option<Head> {
    let h = |len_bytes, count| Some(Head { len_bytes, count });
    match Marker::from_u8(byte) {
        Marker::Reserved => None,
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            h(0, Count::Fixed(0))
        }
        Marker::FixStr(n) => h(0, Count::Fixed(n as u64)),
        Marker::FixArray(n) => h(0, Count::FixElements(n as u64)),
        Marker::FixMap(n) => h(0, Count::FixElements(2 * n as u64)),
        Marker::U8 | Marker::I8 => h(0, Count::Fixed(1)),
        Marker::U16 | Marker::I16 => h(0, Count::Fixed(2)),
        Marker::U32 | Marker::I32 | Marker::F32 => h(0, Count::Fixed(4)),
        Marker::U64 | Marker::I64 | Marker::F64 => h(0, Count::Fixed(8)),
        Marker::Str8 | Marker::Bin8 => h(1, Count::Body(0)),
        Marker::Str16 | Marker::Bin16 => h(2, Count::Body(0)),
        Marker::Str32 | Marker::Bin32 => h(4, Count::Body(0)),
        Marker::Ext8 => h(1, Count::Body(1)),
        Marker::Ext16 => h(2, Count::Body(1)),
        Marker::Ext32 => h(4, Count::Body(1)),
        Marker::FixExt1 => h(0, Count::Fixed(2)),
        Marker::FixExt2 => h(0, Count::Fixed(3)),
        Marker::FixExt4 => h(0, Count::Fixed(5)),
        Marker::FixExt8 => h(0, Count::Fixed(9)),
        Marker::FixExt16 => h(0, Count::Fixed(17)),
        Marker::Array16 => h(2, Count::Elements(1)),
        Marker::Array32 => h(4, Count::Elements(1)),
        Marker::Map16 => h(2, Count::Elements(2)),
        Marker::Map32 => h(4, Count::Elements(2)),
    }
}

/// Big-endian unsigned integer of 0, 1, 2 or 4 bytes.
fn read_be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    /// One sample of every msgpack format, each at the edges where the encoding changes.
    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        use rmp::encode::*;
        let str_of = |n: usize| enc(|v| write_str(v, &"x".repeat(n)).unwrap());
        let bin_of = |n: usize| enc(|v| write_bin(v, &vec![7u8; n]).unwrap());
        let ext_of = |n: usize| {
            enc(|v| {
                write_ext_meta(v, n as u32, 5).unwrap();
                v.extend(std::iter::repeat_n(1u8, n));
            })
        };
        let array_of = |n: u32| {
            enc(|v| {
                write_array_len(v, n).unwrap();
                for i in 0..n {
                    write_uint(v, u64::from(i)).unwrap();
                }
            })
        };
        let map_of = |n: u32| {
            enc(|v| {
                write_map_len(v, n).unwrap();
                for i in 0..n {
                    write_uint(v, u64::from(i)).unwrap();
                    write_nil(v).unwrap();
                }
            })
        };
        vec![
            ("nil", enc(|v| write_nil(v).unwrap())),
            ("true", enc(|v| write_bool(v, true).unwrap())),
            ("false", enc(|v| write_bool(v, false).unwrap())),
            ("fixpos", enc(|v| write_pfix(v, 127).unwrap())),
            ("fixneg", enc(|v| write_nfix(v, -32).unwrap())),
            ("u8", enc(|v| write_u8(v, 200).unwrap())),
            ("u16", enc(|v| write_u16(v, 60000).unwrap())),
            ("u32", enc(|v| write_u32(v, 4_000_000_000).unwrap())),
            ("u64", enc(|v| write_u64(v, u64::MAX).unwrap())),
            ("i8", enc(|v| write_i8(v, -100).unwrap())),
            ("i16", enc(|v| write_i16(v, -30000).unwrap())),
            ("i32", enc(|v| write_i32(v, -2_000_000_000).unwrap())),
            ("i64", enc(|v| write_i64(v, i64::MIN).unwrap())),
            ("f32", enc(|v| write_f32(v, 1.5).unwrap())),
            ("f64", enc(|v| write_f64(v, -2.25).unwrap())),
            ("fixstr0", str_of(0)),
            ("fixstr31", str_of(31)),
            ("str8", str_of(32)),
            ("str8max", str_of(255)),
            ("str16", str_of(256)),
            ("str32", str_of(65536)),
            ("bin8", bin_of(1)),
            ("bin16", bin_of(256)),
            ("bin32", bin_of(65536)),
            ("fixext1", ext_of(1)),
            ("fixext2", ext_of(2)),
            ("fixext4", ext_of(4)),
            ("fixext8", ext_of(8)),
            ("fixext16", ext_of(16)),
            ("ext8", ext_of(3)),
            ("ext16", ext_of(300)),
            ("ext32", ext_of(70000)),
            ("fixarray0", array_of(0)),
            ("fixarray15", array_of(15)),
            ("array16", array_of(16)),
            ("array32", array_of(65536)),
            ("fixmap15", map_of(15)),
            ("map16", map_of(16)),
            ("map32", map_of(65536)),
            (
                "nested",
                enc(|v| {
                    write_array_len(v, 3).unwrap();
                    write_str(v, "tag").unwrap();
                    write_array_len(v, 1).unwrap();
                    write_array_len(v, 2).unwrap();
                    write_ext_meta(v, 8, 0).unwrap();
                    v.extend([0, 0, 0, 1, 0, 0, 0, 2]);
                    write_map_len(v, 1).unwrap();
                    write_str(v, "log").unwrap();
                    write_array_len(v, 0).unwrap();
                    write_map_len(v, 0).unwrap();
                }),
            ),
        ]
    }

    #[test]
    fn every_format_is_complete_exactly_at_its_end() {
        for (name, bytes) in samples() {
            let mut with_next = bytes.clone();
            with_next.extend([0xc0, 0xc1]);
            assert_eq!(
                Splitter::new(1 << 20).advance(&with_next),
                Split::Complete(bytes.len()),
                "{name}"
            );
            assert_eq!(object_len(&bytes), Some(bytes.len()), "{name}");
            // Every cut of small samples; a spread of cuts of the 64 Ki-element ones,
            // which would otherwise cost a full scan per cut.
            let step = (bytes.len() / 256).max(1);
            let cuts = (0..bytes.len()).step_by(step).chain([bytes.len() - 1]);
            for cut in cuts {
                assert_eq!(
                    Splitter::new(1 << 20).advance(&bytes[..cut]),
                    Split::Incomplete,
                    "{name} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding_resumes() {
        for (name, bytes) in samples() {
            let mut s = Splitter::new(1 << 20);
            for cut in 0..bytes.len() {
                assert_eq!(s.advance(&bytes[..cut]), Split::Incomplete, "{name} {cut}");
                assert!(s.min_len() <= bytes.len(), "{name}: min_len overshoots");
            }
            assert_eq!(s.advance(&bytes), Split::Complete(bytes.len()), "{name}");
        }
    }

    #[test]
    fn back_to_back_frames_after_reset() {
        let a = enc(|v| rmp::encode::write_str(v, "first").unwrap());
        let b = enc(|v| {
            rmp::encode::write_array_len(v, 0).unwrap();
        });
        let mut buf = [a.clone(), b.clone()].concat();
        let mut s = Splitter::new(100);
        assert_eq!(s.advance(&buf), Split::Complete(a.len()));
        buf.drain(..a.len());
        s.reset();
        assert!(s.at_start());
        assert_eq!(s.advance(&buf), Split::Complete(b.len()));
    }

    #[test]
    fn body_length_is_known_before_it_arrives() {
        let frame = enc(|v| rmp::encode::write_bin(v, &[0u8; 1000]).unwrap());
        let mut s = Splitter::new(1 << 20);
        assert_eq!(s.advance(&frame[..3]), Split::Incomplete);
        assert_eq!(s.min_len(), 1003);
        assert_eq!(s.advance(&frame[..500]), Split::Incomplete);
        assert_eq!(s.advance(&frame), Split::Complete(1003));
    }

    #[test]
    fn reserved_marker_is_invalid() {
        assert_eq!(
            Splitter::new(100).advance(&[0x92, 0xa1, b'a', 0xc1]),
            Split::Invalid(FrameError::Malformed {
                byte: 0xc1,
                offset: 3
            })
        );
    }

    #[test]
    fn gigantic_headers_are_refused_from_the_header_alone() {
        let max = 16 << 20;
        for header in [
            vec![0xdb, 0xff, 0xff, 0xff, 0xff],       // str32 of 4 GiB
            vec![0xc6, 0x7f, 0xff, 0xff, 0xff],       // bin32 of 2 GiB
            vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x00], // ext32
            vec![0xdd, 0xff, 0xff, 0xff, 0xff],       // array32 of 4G elements
            vec![0xdf, 0x80, 0x00, 0x00, 0x00],       // map32 of 2G pairs
            vec![0x93, 0xa1, b't', 0xdd, 0x01, 0x00, 0x00, 0x00], // nested array of 16M
        ] {
            match Splitter::new(max).advance(&header) {
                Split::Invalid(FrameError::TooLarge { at_least, max: m }) => {
                    assert!(at_least > m as u64)
                }
                other => panic!("{header:02x?}: {other:?}"),
            }
        }
    }

    #[test]
    fn limit_is_inclusive() {
        let frame = enc(|v| rmp::encode::write_str(v, &"y".repeat(100)).unwrap());
        assert_eq!(Splitter::new(102).advance(&frame), Split::Complete(102));
        assert!(matches!(
            Splitter::new(101).advance(&frame),
            Split::Invalid(_)
        ));
    }
}
