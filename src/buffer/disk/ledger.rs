//! Acknowledgement tracking: which seqs are done, and the persisted ack state.
//!
//! Outputs send concurrent requests, so acks arrive out of order. The ledger keeps the
//! done seqs above the watermark as disjoint ranges (acks come in runs, so there are few)
//! and advances the watermark over the contiguous prefix. The watermark and up to
//! [`MAX_PERSISTED_RANGES`] done ranges above it are persisted: on restart only seqs that
//! are not done are replayed, so one slow partition (a batch that waits for its `max_age`)
//! does not bring back everything acked behind it. An ack not persisted yet produces a
//! duplicate, never a loss.
//!
//! The ack file is written in place and never grows, so persisting needs no free block:
//! a buffer that filled its filesystem can still record deliveries and then delete the
//! delivered segments (see [`AckFile`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Every seq below this is done (delivered, dropped for good, or skipped as a gap).
    watermark: u64,
    /// Done ranges `start -> end` (end exclusive) above the watermark; disjoint, never adjacent.
    done: BTreeMap<u64, u64>,
    /// Bumped on every change, so the writer knows when there is something to persist.
    version: u64,
}

impl Ledger {
    pub(crate) fn new(watermark: u64) -> Self {
        Ledger {
            watermark,
            done: BTreeMap::new(),
            version: 0,
        }
    }

    /// The ledger a persisted [`AckState`] describes.
    pub(crate) fn from_state(state: &AckState) -> Self {
        let mut l = Ledger::new(state.watermark);
        for &(s, e) in &state.ranges {
            l.mark(s, e);
        }
        l
    }

    #[cfg(test)]
    pub(crate) fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Changes so far; equal versions mean equal content.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Number of separate done ranges held above the watermark (memory use indicator).
    #[cfg(test)]
    pub(crate) fn fragments(&self) -> usize {
        self.done.len()
    }

    pub(crate) fn is_done(&self, seq: u64) -> bool {
        seq < self.watermark
            || self
                .done
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| seq < end)
    }

    /// Whether any seq in `[start, end)` above the watermark is done by a range (not by the
    /// watermark): the reader then has to check record by record.
    pub(crate) fn has_ranges_in(&self, start: u64, end: u64) -> bool {
        start < end
            && self
                .done
                .range(..end)
                .next_back()
                .is_some_and(|(_, &e)| e > start)
    }

    /// How many seqs of `[start, end)` are done.
    pub(crate) fn done_in(&self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let mut n = self.watermark.clamp(start, end) - start;
        let from = start.max(self.watermark);
        if from >= end {
            return n;
        }
        let first = self
            .done
            .range(..=from)
            .next_back()
            .map_or(from, |(&s, _)| s);
        for (&s, &e) in self.done.range(first..end) {
            n += e.min(end).saturating_sub(s.max(from));
        }
        n
    }

    /// Marks `[start, end)` done. Returns how many of those seqs were not done before, so
    /// repeated acks are not counted twice.
    pub(crate) fn mark(&mut self, start: u64, end: u64) -> u64 {
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
        let newly = (end - start) - overlap;
        if newly > 0 {
            self.version += 1;
        }
        newly
    }

    /// Marks single seqs done, coalescing consecutive runs. Returns the newly done count.
    #[cfg(test)]
    pub(crate) fn mark_seqs(&mut self, seqs: &[u64]) -> u64 {
        let mut newly = 0;
        for_each_run(seqs, |s, e| newly += self.mark(s, e));
        newly
    }

    /// What to persist: the watermark and the lowest `max_ranges` done ranges (the ones a
    /// stuck low seq keeps from merging into the watermark). Ranges beyond are replayed
    /// after a crash: duplicates, not loss.
    pub(crate) fn snapshot(&self, max_ranges: usize) -> AckState {
        AckState {
            watermark: self.watermark,
            ranges: self
                .done
                .iter()
                .take(max_ranges)
                .map(|(&s, &e)| (s, e))
                .collect(),
        }
    }
}

/// Calls `f(start, end)` for every run of consecutive seqs in `seqs` (in the given order).
pub(crate) fn for_each_run(seqs: &[u64], mut f: impl FnMut(u64, u64)) {
    let mut iter = seqs.iter().copied();
    let Some(mut run_start) = iter.next() else {
        return;
    };
    let mut run_end = run_start.saturating_add(1);
    for seq in iter {
        if seq == run_end {
            run_end = run_end.saturating_add(1);
        } else {
            f(run_start, run_end);
            run_start = seq;
            run_end = seq.saturating_add(1);
        }
    }
    f(run_start, run_end)
}

/// Persisted acknowledgement state: every seq below `watermark` is done, and so is every
/// seq in the `ranges` (`[start, end)`, sorted, disjoint, all above the watermark).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AckState {
    pub watermark: u64,
    pub ranges: Vec<(u64, u64)>,
}

impl AckState {
    /// Whether every seq of `[start, end)` is done.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        let start = start.max(self.watermark);
        if start >= end {
            return true;
        }
        let i = self.ranges.partition_point(|&(s, _)| s <= start);
        i > 0 && self.ranges[i - 1].1 >= end
    }

    /// One past the highest done seq: seqs below it must never be handed out again.
    pub(crate) fn high(&self) -> u64 {
        self.ranges
            .last()
            .map_or(self.watermark, |&(_, e)| e.max(self.watermark))
    }
}

// === ack file ===
//
// Layout: two slots of `SLOT_LEN` bytes; a write goes to the slot not holding the newest
// state, so a torn write leaves the previous state readable. Slot:
//   [0..8)   magic `b"FLNACK2\n"`
//   [8..16)  u64 LE generation (the newer valid slot wins)
//   [16..24) u64 LE watermark
//   [24..28) u32 LE number of ranges n
//   [28..32) u32 LE crc32 of bytes [0..28) followed by the ranges
//   [32..32 + 16n) ranges: u64 LE start, u64 LE end
// The whole file is written once (zero-filled) when created; afterwards only overwritten
// in place, so on filesystems that update in place (ext4, xfs, tmpfs) no new block is ever
// needed. Version 1 files (20 bytes: `b"FLNACK\r\n"`, u64 watermark, u32 crc) are read and
// replaced at start-up.

const ACK_FILE: &str = "acks";
const ACK_TMP: &str = "acks.tmp";
const V1_MAGIC: [u8; 8] = *b"FLNACK\r\n";
const V1_LEN: usize = 20;
const SLOT_MAGIC: [u8; 8] = *b"FLNACK2\n";
const SLOT_HEADER: usize = 32;
const SLOT_LEN: usize = 16 << 10;
const FILE_LEN: usize = 2 * SLOT_LEN;
/// Done ranges above the watermark kept in the ack file (16 bytes each).
pub(crate) const MAX_PERSISTED_RANGES: usize = (SLOT_LEN - SLOT_HEADER) / 16;

pub(crate) fn is_ack_file(name: &str) -> bool {
    name == ACK_FILE || name == ACK_TMP
}

fn encode_slot(generation: u64, state: &AckState) -> Vec<u8> {
    let n = state.ranges.len().min(MAX_PERSISTED_RANGES);
    let mut buf = Vec::with_capacity(SLOT_HEADER + 16 * n);
    buf.extend_from_slice(&SLOT_MAGIC);
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(&state.watermark.to_le_bytes());
    buf.extend_from_slice(&(n as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    for &(s, e) in &state.ranges[..n] {
        buf.extend_from_slice(&s.to_le_bytes());
        buf.extend_from_slice(&e.to_le_bytes());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..28]);
    h.update(&buf[SLOT_HEADER..]);
    buf[28..32].copy_from_slice(&h.finalize().to_le_bytes());
    buf
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// `Some((generation, state))` for a valid slot; `None` for an empty, torn or corrupt one.
fn decode_slot(slot: &[u8]) -> Option<(u64, AckState)> {
    if slot.len() < SLOT_HEADER || slot[..8] != SLOT_MAGIC {
        return None;
    }
    let n = u32_at(slot, 24) as usize;
    if n > MAX_PERSISTED_RANGES || slot.len() < SLOT_HEADER + 16 * n {
        return None;
    }
    let body = &slot[SLOT_HEADER..SLOT_HEADER + 16 * n];
    let mut h = crc32fast::Hasher::new();
    h.update(&slot[..28]);
    h.update(body);
    if h.finalize() != u32_at(slot, 28) {
        return None;
    }
    let watermark = u64_at(slot, 16);
    let mut ranges = Vec::with_capacity(n);
    let mut prev = watermark;
    for i in 0..n {
        let (s, e) = (u64_at(body, 16 * i), u64_at(body, 16 * i + 8));
        // Written sorted and above the watermark; anything else is not ours.
        if s < prev || e <= s {
            return None;
        }
        ranges.push((s, e));
        prev = e;
    }
    Some((u64_at(slot, 8), AckState { watermark, ranges }))
}

/// What [`load`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub state: AckState,
    /// Generation of the slot read (0 for a version 1 file).
    pub generation: u64,
    /// The file has the current layout and size, so it can be written in place.
    pub current_layout: bool,
}

/// `Ok(None)` when there is no ack file (fresh buffer); `Err(reason)` when it is unreadable
/// or corrupt, in which case the caller replays everything on disk.
pub(crate) fn load(dir: &Path) -> Result<Option<Loaded>, String> {
    let bytes = match fs::read(dir.join(ACK_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read ack file: {e}")),
    };
    if bytes.len() == V1_LEN && bytes[..8] == V1_MAGIC {
        if crc32fast::hash(&bytes[..16]) != u32_at(&bytes, 16) {
            return Err("ack file checksum mismatch".into());
        }
        return Ok(Some(Loaded {
            state: AckState {
                watermark: u64_at(&bytes, 8),
                ranges: Vec::new(),
            },
            generation: 0,
            current_layout: false,
        }));
    }
    if bytes.len() != FILE_LEN {
        return Err(format!(
            "ack file has unexpected content ({} bytes)",
            bytes.len()
        ));
    }
    let newest = [&bytes[..SLOT_LEN], &bytes[SLOT_LEN..]]
        .into_iter()
        .filter_map(decode_slot)
        .max_by_key(|(generation, _)| *generation);
    match newest {
        Some((generation, state)) => Ok(Some(Loaded {
            state,
            generation,
            current_layout: true,
        })),
        None => Err("ack file checksum mismatch (no valid slot)".into()),
    }
}

/// The open ack file, written in place.
pub(crate) struct AckFile {
    file: File,
    /// Generation of the newest slot written.
    generation: u64,
}

impl AckFile {
    /// Opens the ack file for in-place writes, first writing a fresh full-size one holding
    /// `state` (temp file + rename) when there is none of the current layout. Creating
    /// needs `2 × 16 KiB` of free space; call it after delivered segments were deleted.
    pub(crate) fn open(
        dir: &Path,
        loaded: Option<&Loaded>,
        state: &AckState,
    ) -> io::Result<AckFile> {
        let path = dir.join(ACK_FILE);
        if let Some(l) = loaded.filter(|l| l.current_layout) {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if file.metadata()?.len() == FILE_LEN as u64 {
                return Ok(AckFile {
                    file,
                    generation: l.generation,
                });
            }
        }
        // Generation g lives in slot g % 2: the first in-place write (generation 2) then
        // goes to the other slot, and a torn write always leaves one valid state.
        let mut buf = vec![0u8; FILE_LEN];
        let slot = encode_slot(1, state);
        buf[SLOT_LEN..SLOT_LEN + slot.len()].copy_from_slice(&slot);
        let tmp = dir.join(ACK_TMP);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let written = f.write_all(&buf).and_then(|()| f.sync_data());
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        drop(f);
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(AckFile {
            file,
            generation: 1,
        })
    }

    /// Whether the file still has a name (it was not deleted while open). An error reading
    /// the metadata counts as linked: only a known deletion makes the caller recreate it.
    pub(crate) fn is_linked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map_or(true, |m| m.nlink() > 0)
    }

    /// Writes `state` over the older slot. With `sync`, durable before returning. Needs no
    /// new space. Ranges beyond [`MAX_PERSISTED_RANGES`] are left out.
    pub(crate) fn persist(&mut self, state: &AckState, sync: bool) -> io::Result<()> {
        let generation = self.generation + 1;
        let slot = encode_slot(generation, state);
        let offset = (generation % 2) * SLOT_LEN as u64;
        self.file.write_all_at(&slot, offset)?;
        if sync {
            self.file.sync_data()?;
        }
        self.generation = generation;
        Ok(())
    }
}

/// Makes a directory's entries (new, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
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
                let version = l.version();
                model.extend(s..s + n);
                let newly = l.mark(s, s + n);
                prop_assert_eq!(newly, (model.len() - before) as u64);
                prop_assert_eq!(l.version() != version, newly > 0);
                let wm = (0..).find(|x| !model.contains(x)).unwrap();
                prop_assert_eq!(l.watermark(), wm);
                for x in 0..210 {
                    prop_assert_eq!(l.is_done(x), model.contains(&x));
                }
                for (a, b) in [(0, 210), (5, 17), (50, 51), (100, 100), (190, 205)] {
                    let want = (a..b).filter(|x| model.contains(x)).count() as u64;
                    prop_assert_eq!(l.done_in(a, b), want, "done_in({}, {})", a, b);
                    let snap = l.snapshot(usize::MAX);
                    prop_assert_eq!(snap.covers(a, b), want == b - a);
                    let ranged = (a..b).any(|x| x >= wm && model.contains(&x));
                    prop_assert_eq!(l.has_ranges_in(a, b), ranged);
                }
                let back = Ledger::from_state(&l.snapshot(usize::MAX));
                for x in 0..210 {
                    prop_assert_eq!(back.is_done(x), model.contains(&x));
                }
            }
        }
    }

    fn state(watermark: u64, ranges: &[(u64, u64)]) -> AckState {
        AckState {
            watermark,
            ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn ack_file_round_trip_in_place() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        let mut f = AckFile::open(dir.path(), None, &state(7, &[])).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().state, state(7, &[]));
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let inode = ino(&dir.path().join(ACK_FILE));
        for (i, s) in [
            state(12345, &[(12400, 12500), (13000, 13001)]),
            state(99, &[]),
            state(100, &[(200, 300)]),
        ]
        .iter()
        .enumerate()
        {
            f.persist(s, i % 2 == 0).unwrap();
            let loaded = load(dir.path()).unwrap().unwrap();
            assert_eq!(&loaded.state, s);
            assert!(loaded.current_layout);
        }
        // Written in place: same file, same size.
        assert_eq!(ino(&dir.path().join(ACK_FILE)), inode);
        assert_eq!(
            fs::metadata(dir.path().join(ACK_FILE)).unwrap().len(),
            FILE_LEN as u64
        );
        // Reopening continues the generations.
        let loaded = load(dir.path()).unwrap();
        let mut f = AckFile::open(dir.path(), loaded.as_ref(), &state(0, &[])).unwrap();
        f.persist(&state(101, &[]), true).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().state, state(101, &[]));
    }

    #[test]
    fn a_torn_first_write_keeps_the_initial_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AckFile::open(dir.path(), None, &state(5, &[])).unwrap();
        f.persist(&state(9, &[]), true).unwrap();
        let path = dir.path().join(ACK_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let newest = (f.generation % 2) as usize * SLOT_LEN;
        bytes[newest + 17] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().state, state(5, &[]));
    }

    #[test]
    fn torn_newest_slot_falls_back_to_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AckFile::open(dir.path(), None, &state(1, &[])).unwrap();
        f.persist(&state(50, &[(60, 70)]), true).unwrap();
        f.persist(&state(80, &[]), true).unwrap();
        let path = dir.path().join(ACK_FILE);
        let newest = (f.generation % 2) as usize * SLOT_LEN;
        let mut bytes = fs::read(&path).unwrap();
        bytes[newest + 17] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(
            load(dir.path()).unwrap().unwrap().state,
            state(50, &[(60, 70)])
        );
        // Both slots bad: corrupt, replay everything.
        bytes[(1 - f.generation % 2) as usize * SLOT_LEN + 17] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(load(dir.path()).is_err());
        fs::write(&path, b"garbage").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn version_1_ack_file_is_read_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut v1 = Vec::new();
        v1.extend_from_slice(&V1_MAGIC);
        v1.extend_from_slice(&4242u64.to_le_bytes());
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join(ACK_FILE), &v1).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.state, state(4242, &[]));
        assert!(!loaded.current_layout);
        let _f = AckFile::open(dir.path(), Some(&loaded), &loaded.state).unwrap();
        let now = load(dir.path()).unwrap().unwrap();
        assert_eq!(now.state, state(4242, &[]));
        assert!(now.current_layout);
        v1[9] ^= 1;
        fs::write(dir.path().join(ACK_FILE), &v1).unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn ranges_beyond_the_slot_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::new(0);
        for i in 0..(MAX_PERSISTED_RANGES as u64 + 10) {
            l.mark(2 * i + 1, 2 * i + 2);
        }
        let snap = l.snapshot(MAX_PERSISTED_RANGES);
        assert_eq!(snap.ranges.len(), MAX_PERSISTED_RANGES);
        let mut f = AckFile::open(dir.path(), None, &AckState::default()).unwrap();
        f.persist(&snap, true).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().state, snap);
    }
}
