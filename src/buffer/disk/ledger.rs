//! Acknowledgement tracking: which seqs are done, and the persisted low watermark.
//!
//! Outputs send concurrent requests, so acks arrive out of order. The ledger keeps the
//! done seqs above the watermark as disjoint ranges (acks come in runs, so there are few)
//! and advances the watermark over the contiguous prefix. Only the watermark is persisted:
//! on restart everything from it on is replayed, so an ack that had not been persisted yet
//! produces a duplicate, never a loss.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

#[derive(Debug, Default)]
pub struct Ledger {
    /// Every seq below this is done (delivered, dropped for good, or skipped as a gap).
    watermark: u64,
    /// Done ranges `start -> end` (end exclusive) above the watermark; disjoint, never adjacent.
    done: BTreeMap<u64, u64>,
}

impl Ledger {
    pub fn new(watermark: u64) -> Self {
        Ledger {
            watermark,
            done: BTreeMap::new(),
        }
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Number of separate done ranges held above the watermark (memory use indicator).
    pub fn fragments(&self) -> usize {
        self.done.len()
    }

    pub fn is_done(&self, seq: u64) -> bool {
        seq < self.watermark
            || self
                .done
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| seq < end)
    }

    /// Marks `[start, end)` done. Returns how many of those seqs were not done before, so
    /// repeated acks are not counted twice.
    pub fn mark(&mut self, start: u64, end: u64) -> u64 {
        let start = start.max(self.watermark);
        if start >= end {
            return 0;
        }
        let mut merged = (start, end);
        let mut overlap = 0;
        let touching: Vec<(u64, u64)> = self
            .done
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            overlap += e.min(end).saturating_sub(s.max(start));
            merged = (merged.0.min(s), merged.1.max(e));
            self.done.remove(&s);
        }
        if merged.0 == self.watermark {
            self.watermark = merged.1;
        } else {
            self.done.insert(merged.0, merged.1);
        }
        (end - start) - overlap
    }

    /// Marks single seqs done, coalescing consecutive runs. Returns the newly done count.
    pub fn mark_seqs(&mut self, seqs: &[u64]) -> u64 {
        let mut newly = 0;
        let mut iter = seqs.iter().copied();
        let Some(mut run_start) = iter.next() else {
            return 0;
        };
        let mut run_end = run_start.saturating_add(1);
        for seq in iter {
            if seq == run_end {
                run_end = run_end.saturating_add(1);
            } else {
                newly += self.mark(run_start, run_end);
                run_start = seq;
                run_end = seq.saturating_add(1);
            }
        }
        newly + self.mark(run_start, run_end)
    }
}

// === ack file ===

const ACK_FILE: &str = "acks";
const ACK_TMP: &str = "acks.tmp";
const ACK_MAGIC: [u8; 8] = *b"FLNACK\r\n";
const ACK_LEN: usize = 20;

pub fn is_ack_file(name: &str) -> bool {
    name == ACK_FILE || name == ACK_TMP
}

/// Writes the watermark atomically (temp file + rename). With `sync`, the data and the
/// rename are made durable before returning.
pub fn persist(dir: &Path, watermark: u64, sync: bool) -> io::Result<()> {
    let mut buf = [0u8; ACK_LEN];
    buf[..8].copy_from_slice(&ACK_MAGIC);
    buf[8..16].copy_from_slice(&watermark.to_le_bytes());
    let crc = crc32fast::hash(&buf[..16]);
    buf[16..20].copy_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(ACK_TMP);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(&buf)?;
    if sync {
        f.sync_data()?;
    }
    drop(f);
    fs::rename(&tmp, dir.join(ACK_FILE))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// `Ok(None)` when there is no ack file (fresh buffer); `Err(reason)` when it is unreadable
/// or corrupt, in which case the caller replays everything on disk.
pub fn load(dir: &Path) -> Result<Option<u64>, String> {
    let bytes = match fs::read(dir.join(ACK_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read ack file: {e}")),
    };
    if bytes.len() != ACK_LEN || bytes[..8] != ACK_MAGIC {
        return Err(format!(
            "ack file has unexpected content ({} bytes)",
            bytes.len()
        ));
    }
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32fast::hash(&bytes[..16]) != crc {
        return Err("ack file checksum mismatch".into());
    }
    let mut wm = [0u8; 8];
    wm.copy_from_slice(&bytes[8..16]);
    Ok(Some(u64::from_le_bytes(wm)))
}

/// Makes a directory's entries (new, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn watermark_advances_over_contiguous_prefix() {
        let mut l = Ledger::new(10);
        assert_eq!(l.mark_seqs(&[12, 13]), 2);
        assert_eq!(l.watermark(), 10);
        assert_eq!(l.mark_seqs(&[11]), 1);
        assert_eq!((l.watermark(), l.fragments()), (10, 1));
        assert_eq!(l.mark_seqs(&[10]), 1);
        assert_eq!((l.watermark(), l.fragments()), (14, 0));
        // Below the watermark and repeated acks count nothing.
        assert_eq!(l.mark_seqs(&[3, 13]), 0);
        assert_eq!(l.mark_seqs(&[20, 20, 21]), 2);
        assert_eq!(l.mark(19, 23), 2);
        assert!(l.is_done(22) && !l.is_done(23) && !l.is_done(14));
        assert_eq!(l.mark(14, 19), 5);
        assert_eq!((l.watermark(), l.fragments()), (23, 0));
    }

    proptest! {
        #[test]
        fn matches_a_set_model(acks in proptest::collection::vec((0u64..200, 1u64..5), 0..200)) {
            let mut l = Ledger::new(0);
            let mut model = std::collections::BTreeSet::new();
            for (s, n) in acks {
                let before = model.len();
                model.extend(s..s + n);
                prop_assert_eq!(l.mark(s, s + n), (model.len() - before) as u64);
                let wm = (0..).find(|x| !model.contains(x)).unwrap();
                prop_assert_eq!(l.watermark(), wm);
                for x in 0..210 {
                    prop_assert_eq!(l.is_done(x), model.contains(&x));
                }
            }
        }
    }

    #[test]
    fn ack_file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        persist(dir.path(), 12345, true).unwrap();
        assert_eq!(load(dir.path()), Ok(Some(12345)));
        persist(dir.path(), 99, false).unwrap();
        assert_eq!(load(dir.path()), Ok(Some(99)));
        let path = dir.path().join(ACK_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(load(dir.path()).is_err());
        fs::write(&path, b"garbage").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
