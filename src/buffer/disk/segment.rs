//! Segment files: `<16-digit first seq>.seg`, a 24-byte header, then frames.
//!
//! Header: `b"FLNSEG\r\n"`, `u32 LE version`, `u32 LE reserved (0)`, `u64 LE first seq`.
//! Frame:  `[u32 LE payload length][u32 LE crc32 of payload][payload]`.
//! Record `first_seq + i` is frame `i`. The `\r\n` in the magic catches text-mode mangling.
//! A zero length is invalid on purpose: a crash can leave zero-filled blocks at the end of
//! a file, and crc32 of an empty payload is 0, so zeroes would otherwise read as frames.

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read, Seek};
use std::path::Path;

pub(crate) const MAGIC: [u8; 8] = *b"FLNSEG\r\n";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: u64 = 24;
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Larger payloads are refused on write and treated as corruption on read (a garbage length
/// must not make us allocate gigabytes).
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:016}.seg")
}

/// `Some(first seq)` for a name written by [`file_name`].
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() < 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn header(first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("file shorter than a segment header")]
    Short,
    #[error("not a segment file (bad magic)")]
    Magic,
    #[error("unsupported segment version {0}")]
    Version(u32),
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub(crate) fn read_header(r: &mut impl Read) -> Result<u64, HeaderError> {
    let mut h = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut h).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => HeaderError::Short,
        _ => HeaderError::Io(e),
    })?;
    if h[..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    Ok(u64::from_le_bytes(seq))
}

/// Appends one frame to `out`, the payload written by `fill`. Returns the payload length,
/// or `None` (and leaves `out` as it was) when the payload exceeds [`MAX_PAYLOAD`].
pub(crate) fn append_frame(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) -> Option<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    fill(out);
    let len = out.len() - start - FRAME_HEADER_LEN;
    if len == 0 || len > MAX_PAYLOAD {
        out.truncate(start);
        return None;
    }
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Some(len)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("truncated frame (torn write)")]
    Torn,
    #[error("invalid frame length {0}")]
    Length(u32),
    #[error("checksum mismatch")]
    Checksum,
    #[error(transparent)]
    Io(io::Error),
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, io::Error> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the next frame's payload into `payload`. `Ok(false)` at a clean end of file.
pub(crate) fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> Result<bool, FrameError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    match read_full(r, &mut h).map_err(FrameError::Io)? {
        0 => return Ok(false),
        FRAME_HEADER_LEN => {}
        _ => return Err(FrameError::Torn),
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len as usize > MAX_PAYLOAD {
        return Err(FrameError::Length(len));
    }
    payload.clear();
    payload.resize(len as usize, 0);
    if read_full(r, payload).map_err(FrameError::Io)? != len as usize {
        return Err(FrameError::Torn);
    }
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(true)
}

/// Skips one frame without reading or checking its payload (it was checked at start-up).
pub(crate) fn skip_frame(r: &mut BufReader<File>) -> Result<(), FrameError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    if read_full(r, &mut h).map_err(FrameError::Io)? != FRAME_HEADER_LEN {
        return Err(FrameError::Torn);
    }
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if len == 0 || len as usize > MAX_PAYLOAD {
        return Err(FrameError::Length(len));
    }
    r.seek_relative(i64::from(len)).map_err(FrameError::Io)
}

/// What a start-up scan found in one segment file.
#[derive(Debug)]
pub(crate) struct Scan {
    pub first_seq: u64,
    pub records: u64,
    /// Bytes of header plus valid frames: the file is good up to here.
    pub valid_len: u64,
    pub file_len: u64,
    /// Why the bytes after `valid_len` are unusable, if there are any.
    pub damage: Option<FrameError>,
}

/// Walks every frame and checks its checksum. Header problems are returned as errors so the
/// caller can quarantine the whole file; frame problems end the scan with `damage` set.
pub(crate) fn scan(path: &Path) -> Result<Scan, HeaderError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(256 << 10, file);
    let first_seq = read_header(&mut r)?;
    let mut scan = Scan {
        first_seq,
        records: 0,
        valid_len: HEADER_LEN,
        file_len,
        damage: None,
    };
    let mut payload = Vec::new();
    loop {
        match read_frame(&mut r, &mut payload) {
            Ok(true) => {
                scan.records += 1;
                scan.valid_len += (FRAME_HEADER_LEN + payload.len()) as u64;
            }
            Ok(false) => break,
            Err(e) => {
                scan.damage = Some(e);
                break;
            }
        }
    }
    // Cheap sanity check that the position we think we are at is where the file is.
    if scan.damage.is_none() && r.stream_position().ok() != Some(scan.valid_len) {
        scan.damage = Some(FrameError::Torn);
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            append_frame(&mut out, |o| o.extend_from_slice(p)).unwrap();
        }
        out
    }

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(file_name(42), "0000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("000000000000004x.seg"), None);
        assert_eq!(parse_file_name("0000000000000042.tmp"), None);
        assert!(file_name(9) < file_name(10));
    }

    #[test]
    fn header_round_trip_and_errors() {
        assert_eq!(read_header(&mut Cursor::new(header(7))).unwrap(), 7);
        assert!(matches!(
            read_header(&mut Cursor::new(&header(7)[..10])),
            Err(HeaderError::Short)
        ));
        let mut h = header(7);
        h[0] = b'X';
        assert!(matches!(
            read_header(&mut Cursor::new(h)),
            Err(HeaderError::Magic)
        ));
        let mut h = header(7);
        h[8] = 2;
        assert!(matches!(
            read_header(&mut Cursor::new(h)),
            Err(HeaderError::Version(2))
        ));
    }

    #[test]
    fn frames_read_back_and_detect_damage() {
        let data = frames(&[b"one", b"two"]);
        let mut r = Cursor::new(&data);
        let mut p = Vec::new();
        assert!(read_frame(&mut r, &mut p).unwrap());
        assert_eq!(p, b"one");
        assert!(read_frame(&mut r, &mut p).unwrap());
        assert_eq!(p, b"two");
        assert!(!read_frame(&mut r, &mut p).unwrap());

        for cut in [1, 7, 9, 10] {
            let mut r = Cursor::new(&data[..cut]);
            assert!(
                matches!(read_frame(&mut r, &mut p), Err(FrameError::Torn)),
                "cut {cut}"
            );
        }
        let mut bad = data.clone();
        bad[9] ^= 0x40;
        assert!(matches!(
            read_frame(&mut Cursor::new(&bad), &mut p),
            Err(FrameError::Checksum)
        ));
        let zeroes = [0u8; 64];
        assert!(matches!(
            read_frame(&mut Cursor::new(&zeroes[..]), &mut p),
            Err(FrameError::Length(0))
        ));
        let mut huge = data.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut Cursor::new(&huge), &mut p),
            Err(FrameError::Length(_))
        ));
    }

    #[test]
    fn oversized_or_empty_payload_is_refused() {
        let mut out = vec![1, 2, 3];
        assert_eq!(append_frame(&mut out, |_| {}), None);
        assert_eq!(
            append_frame(&mut out, |o| o.resize(o.len() + MAX_PAYLOAD + 1, 0)),
            None
        );
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn scan_reports_valid_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(5));
        let mut bytes = header(5).to_vec();
        bytes.extend(frames(&[b"a", b"bb", b"ccc"]));
        let full = bytes.len() as u64;
        bytes.extend_from_slice(&[3, 0, 0, 0, 1]);
        std::fs::write(&path, &bytes).unwrap();
        let s = scan(&path).unwrap();
        assert_eq!((s.first_seq, s.records, s.valid_len), (5, 3, full));
        assert!(matches!(s.damage, Some(FrameError::Torn)));
        assert_eq!(s.file_len, full + 5);
    }
}
