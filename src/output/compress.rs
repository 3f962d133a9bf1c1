//! Whole-buffer compression of an output's payload: one S3 block, one HTTP body.
//!
//! - gzip: libdeflate (through `libdeflater`) at level 6, the level `gzip` and zlib
//!   default to. On FireLens-shaped JSON lines in 256 KiB blocks it takes about 35% less
//!   CPU than zlib-rs at the same level for the same size (README "Performance"), and a
//!   payload here is always whole in memory, which is the one thing libdeflate needs.
//! - zstd: level 3, zstd's default.
//!
//! Each call makes one complete gzip member (RFC 1952) or zstd frame (RFC 8878); members
//! and frames concatenate into a valid file (RFC 1952 §2.2, RFC 8878 §3.1).

use std::cell::RefCell;

use crate::config::Compression;

/// gzip's and zlib's default level.
const GZIP_LEVEL: i32 = 6;
/// zstd's default level.
const ZSTD_LEVEL: i32 = 3;

/// `raw` compressed as one gzip member / zstd frame (`None`: a copy).
///
/// Errors: only a failure of the zstd library (out of memory); gzip cannot fail, since
/// the output is sized to libdeflate's own bound for the input.
pub(crate) fn compress(c: Compression, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    match c {
        Compression::None => Ok(raw.to_vec()),
        Compression::Gzip => gzip(raw),
        Compression::Zstd => zstd(raw),
    }
}

/// Largest output a thread keeps a scratch buffer for: a zstd block (1 MiB of lines) or
/// a default-sized HTTP batch (1 MiB and a line) at their worst case. Larger payloads get
/// a buffer of their own, shrunk to what they hold. A thread's scratch is only as large as
/// the largest payload it compressed; compressing threads are the blocking pool's (at most
/// one per core per S3 output at a time, idle ones end after 10 s) and the async worker.
const SCRATCH_MAX: usize = 2 * 1024 * 1024;

fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    // One compressor per thread (blocking-pool threads, output tasks): a level 6
    // compressor is a few hundred KiB of match-finder state, too much to allocate for
    // every block. With it, a scratch buffer of the worst-case size, so that only the
    // compressed bytes (a third of the worst case for lines) are allocated per call.
    thread_local! {
        static GZIP: RefCell<Option<(libdeflater::Compressor, Vec<u8>)>> =
            const { RefCell::new(None) };
    }
    GZIP.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (c, scratch) = cell.get_or_insert_with(|| {
            let level = libdeflater::CompressionLvl::new(GZIP_LEVEL).unwrap_or_default();
            (libdeflater::Compressor::new(level), Vec::new())
        });
        let bound = c.gzip_compress_bound(raw.len());
        let failed = |e| std::io::Error::other(format!("gzip: {e:?}"));
        if bound <= SCRATCH_MAX {
            if scratch.len() < bound {
                scratch.resize(bound, 0);
            }
            let n = c.gzip_compress(raw, scratch).map_err(failed)?;
            return Ok(scratch[..n].to_vec());
        }
        let mut out = vec![0u8; bound];
        let n = c.gzip_compress(raw, &mut out).map_err(failed)?;
        out.truncate(n);
        out.shrink_to_fit();
        Ok(out)
    })
}

fn zstd(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    // One context per thread: a level 3 context is about 1 MiB, too much to allocate and
    // zero for every block. With it a scratch buffer, as for gzip: `Compressor::compress`
    // returns a Vec of the worst-case capacity, which a block would then hold.
    thread_local! {
        static ZSTD: RefCell<Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>> =
            const { RefCell::new(None) };
    }
    ZSTD.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some((zstd::bulk::Compressor::new(ZSTD_LEVEL)?, Vec::new()));
        }
        let Some((c, scratch)) = cell.as_mut() else {
            return Err(std::io::Error::other("no zstd context"));
        };
        let bound = zstd::zstd_safe::compress_bound(raw.len());
        if bound <= SCRATCH_MAX {
            scratch.clear();
            scratch.reserve(bound);
            c.compress_to_buffer(raw, scratch)?;
            return Ok(scratch.to_vec());
        }
        let mut out = c.compress(raw)?;
        out.shrink_to_fit();
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn lines(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("{{\"log\":\"line {i} of the test\",\"n\":{i}}}\n").into_bytes())
            .collect()
    }

    #[test]
    fn gzip_members_concatenate_into_one_valid_file() {
        let a = lines(5000);
        let b = lines(3);
        let mut file = compress(Compression::Gzip, &a).expect("gzip a");
        assert!(
            file.len() < a.len() / 3,
            "lines compress: {} of {}",
            file.len(),
            a.len()
        );
        assert_eq!(&file[..2], &[0x1f, 0x8b], "gzip magic");
        file.extend(compress(Compression::Gzip, &b).expect("gzip b"));
        file.extend(compress(Compression::Gzip, b"").expect("gzip empty"));
        let mut want = a.clone();
        want.extend(&b);
        assert_eq!(gunzip(&file), want);
    }

    #[test]
    fn incompressible_input_fits_and_output_is_not_oversized() {
        // xorshift bytes: nothing for deflate to find.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let raw: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let out = compress(Compression::Gzip, &raw).expect("gzip");
        assert_eq!(gunzip(&out), raw);
        assert!(out.capacity() < raw.len() + raw.len() / 64 + 1024);
        let small = compress(Compression::Gzip, &lines(100)).expect("gzip");
        assert!(
            small.capacity() <= small.len() + 64,
            "shrunk: {}",
            small.capacity()
        );
    }

    #[test]
    fn zstd_frames_concatenate_and_none_copies() {
        let a = lines(2000);
        let mut file = compress(Compression::Zstd, &a).expect("zstd");
        file.extend(compress(Compression::Zstd, b"tail\n").expect("zstd"));
        let got = zstd::stream::decode_all(&file[..]).expect("zstd file");
        let mut want = a.clone();
        want.extend(b"tail\n");
        assert_eq!(got, want);
        // A frame holds what it compressed to, not the worst case; past the scratch size
        // too.
        let one = compress(Compression::Zstd, &a).expect("zstd");
        assert!(
            one.capacity() <= one.len() + 64,
            "exact: {}",
            one.capacity()
        );
        let big = lines(120_000);
        assert!(big.len() > SCRATCH_MAX);
        let out = compress(Compression::Zstd, &big).expect("zstd");
        assert!(
            out.capacity() <= out.len() + 64,
            "shrunk: {}",
            out.capacity()
        );
        assert_eq!(zstd::stream::decode_all(&out[..]).expect("zstd big"), big);
        assert_eq!(compress(Compression::None, &a).expect("copy"), a);
    }
}
