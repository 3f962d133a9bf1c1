//! Tests that look inside the disk buffer (sync counts, segment files). Behaviour end to
//! end, with the real binary, is tested in `tests/durability.rs`.

use super::*;
use crate::event::Fields;

fn rec(i: usize, pad: usize) -> Record {
    let mut f = Fields::new();
    f.insert("i".into(), serde_json::Value::from(i));
    f.insert("log".into(), serde_json::Value::String("x".repeat(pad)));
    Record::new("t", i as i64, f)
}

fn settings(dir: &Path, max_size: u64, segment_size: u64) -> BufferSettings {
    let mut s = BufferSettings::disk(dir, max_size, WhenFull::Block);
    s.segment_size = segment_size;
    s
}

fn seg_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (w, mut r, _) = open("gc1", &settings(dir.path(), 1 << 30, 64 << 20)).unwrap();
    let pushers = 64;
    let rounds = 10;
    let mut tasks = Vec::new();
    for p in 0..pushers {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..rounds {
                w.push(vec![rec(p * 1000 + k, 100)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let syncs = w.syncs();
    let pushes = (pushers * rounds) as u64;
    eprintln!("group commit: {pushes} pushes, {syncs} fdatasync calls");
    assert!(syncs >= 1);
    assert!(
        syncs < pushes,
        "expected pushes to share syncs: {syncs} syncs for {pushes} pushes"
    );
    // Per pusher, order is kept.
    let mut seen: Vec<Vec<usize>> = vec![Vec::new(); pushers];
    let mut got = 0;
    while got < pushes as usize {
        for e in r.recv(1000).await.unwrap() {
            let i = e.record.time_ns as usize;
            seen[i / 1000].push(i % 1000);
            got += 1;
        }
    }
    for s in seen {
        assert_eq!(s, (0..rounds).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn segments_roll_and_are_deleted_after_acks() {
    let dir = tempfile::tempdir().unwrap();
    let (w, mut r, _) = open("roll", &settings(dir.path(), 1 << 20, 4096)).unwrap();
    for i in 0..200 {
        w.push(vec![rec(i, 100)]).await.unwrap();
    }
    let files = seg_files(dir.path());
    assert!(files.len() >= 5, "expected several segments, got {files:?}");
    assert_eq!(files[0], segment::file_name(0));
    let bytes_before = w.disk_bytes();
    let live_before = w.stats().bytes;
    let on_disk: u64 = files
        .iter()
        .map(|f| fs::metadata(dir.path().join(f)).unwrap().len())
        .sum();
    assert_eq!(bytes_before, on_disk, "byte accounting matches the files");

    let mut seqs = Vec::new();
    while seqs.len() < 200 {
        seqs.extend(r.recv(64).await.unwrap().into_iter().map(|e| e.seq));
    }
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    let a = r.acker();
    a.ack(&seqs[..150]);
    // Deletion follows the next persist (≤ 100 ms).
    let deadline = Instant::now() + Duration::from_secs(3);
    while seg_files(dir.path()).len() == files.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = seg_files(dir.path());
    assert!(left.len() < files.len());
    // Every remaining segment still holds an unacked record.
    let firsts: Vec<u64> = left
        .iter()
        .map(|n| segment::parse_file_name(n).unwrap())
        .collect();
    let last_deleted_end = firsts[0];
    assert!(
        last_deleted_end <= 150,
        "segment starting at {last_deleted_end} would hold acked-only records"
    );
    assert!(w.disk_bytes() < bytes_before);
    assert!(
        w.stats().bytes < live_before / 3,
        "only 50 of 200 records are undelivered"
    );
    assert_eq!(w.stats().records, 50);
    let persisted = ledger::load(dir.path()).unwrap().unwrap().state;
    assert_eq!(persisted.watermark, 150);
}

#[tokio::test]
async fn fully_acked_active_segment_is_freed_for_a_blocked_push() {
    let dir = tempfile::tempdir().unwrap();
    // max 4 KiB = one segment: only deleting the open segment can make room.
    let (w, mut r, _) = open("active", &settings(dir.path(), 4096, 4096)).unwrap();
    let batch: Vec<Record> = (0..20).map(|i| rec(i, 100)).collect();
    assert_eq!(w.push(batch.clone()).await.unwrap().accepted, 20);
    let w2 = w.clone();
    let blocked = tokio::spawn(async move { w2.push(batch).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!blocked.is_finished(), "second push must wait for space");
    assert_eq!(seg_files(dir.path()).len(), 1);
    let mut seqs = Vec::new();
    while !blocked.is_finished() {
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(50), r.recv(1000)).await {
            let s: Vec<u64> = got.into_iter().map(|e| e.seq).collect();
            r.acker().ack(&s);
            seqs.extend(s);
        }
    }
    let rep = blocked.await.unwrap().unwrap();
    assert_eq!(rep.accepted, 20);
    while seqs.len() < 40 {
        seqs.extend(r.recv(1000).await.unwrap().into_iter().map(|e| e.seq));
    }
    assert_eq!(seqs, (0..40).collect::<Vec<_>>());
}

#[tokio::test]
async fn second_open_of_same_dir_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), 1 << 20, 4096);
    let first = open("lock", &s).unwrap();
    assert!(matches!(open("lock", &s), Err(BufferError::Locked(_))));
    drop(first);
    assert!(open("lock", &s).is_ok());
}

/// One record held back (a quiet partition's open batch) while everything after it is
/// acked: pushes never wait although far more than `max_size` passes through, the
/// acked segments behind the held record are deleted, and a reopen replays only it.
#[tokio::test]
async fn a_held_back_record_does_not_fill_the_buffer_or_come_back_with_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let max_size = 16 << 10;
    let s = settings(dir.path(), max_size, 4096);
    {
        let (w, mut r, _) = open("held", &s).unwrap();
        w.push(vec![rec(0, 100)]).await.unwrap();
        let first = r.recv(10).await.unwrap();
        assert_eq!(first.len(), 1);
        let acker = r.acker();
        // ~190 bytes per frame: 600 records are about 7 × max_size.
        for i in 1..600 {
            let pushed = tokio::time::timeout(Duration::from_secs(5), w.push(vec![rec(i, 100)]))
                .await
                .unwrap_or_else(|_| panic!("push {i} blocked: {} live bytes", w.stats().bytes))
                .unwrap();
            assert_eq!(pushed.accepted, 1);
            let got = r.recv(100).await.unwrap();
            let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
            assert!(!seqs.contains(&0));
            acker.ack(&seqs);
            assert!(w.stats().bytes <= max_size);
            assert!(
                w.disk_bytes() <= DISK_CAP_FACTOR * max_size,
                "segment files {} over the cap",
                w.disk_bytes()
            );
        }
        assert_eq!(w.stats().records, 1);
        assert!(w.stats().bytes < 300, "only the held record is undelivered");
        // Files: the held record's segment plus the open one, not the 600 records.
        let deadline = Instant::now() + Duration::from_secs(3);
        while seg_files(dir.path()).len() > 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let files = seg_files(dir.path());
        assert!(files.len() <= 2, "acked segments kept: {files:?}");
        assert_eq!(files[0], segment::file_name(0));
        w.close();
    }
    let (_w, mut r, report) = open("held", &s).unwrap();
    assert_eq!(report.replayed_records, 1, "{report:?}");
    let got = r.recv(1000).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [0]);
    assert_eq!(got[0].record.time_ns, 0);
    let more = tokio::time::timeout(Duration::from_millis(200), r.recv(1000)).await;
    assert!(more.is_err(), "acked records replayed: {more:?}");
}

/// Paths of open descriptors of this process that point to deleted files under `dir`.
fn deleted_but_open(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(&prefix) && p.ends_with("(deleted)"))
        .collect()
}

/// The reader does not keep a segment open once it has read all of it: on a full disk the
/// blocks of a deleted but open file stay allocated, and the next write needs them.
#[tokio::test]
async fn a_fully_read_segment_is_not_held_open_after_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (w, mut r, _) = open("fds", &settings(dir.path(), 1 << 20, 4096)).unwrap();
    // One record at a time until the second segment starts: the first holds `n - 1`.
    let mut n = 0;
    while seg_files(dir.path()).len() < 2 {
        w.push(vec![rec(n, 100)]).await.unwrap();
        n += 1;
        assert!(n < 1000, "no second segment");
    }
    let in_first = n as u64 - 1;
    // Read exactly the first segment, to its end, and ack it.
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < in_first {
        let want = in_first as usize - seqs.len();
        seqs.extend(r.recv(want).await.unwrap().into_iter().map(|e| e.seq));
    }
    assert_eq!(seqs, (0..in_first).collect::<Vec<_>>());
    r.acker().ack(&seqs);
    let deadline = Instant::now() + Duration::from_secs(3);
    while seg_files(dir.path()).contains(&segment::file_name(0)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!seg_files(dir.path()).contains(&segment::file_name(0)));
    let held = deleted_but_open(dir.path());
    assert!(held.is_empty(), "deleted segments still open: {held:?}");
    // Reading goes on in the next segment.
    let next = r.recv(1000).await.unwrap();
    assert_eq!(next[0].seq, in_first);
}

/// `usage()` is what the delivery core's disk pressure acts on: file bytes against the
/// cap, the done (delivered) share, and the seq below which records pin the oldest half
/// of the files, never counting the segment being written.
#[tokio::test]
async fn usage_names_the_records_that_pin_the_oldest_half_of_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let max_size = 64 << 10;
    let (w, mut r, _) = open("usage", &settings(dir.path(), max_size, 4096)).unwrap();
    let empty = w.usage();
    assert_eq!((empty.disk_bytes, empty.oldest_half_end), (0, 0));
    assert_eq!(empty.disk_cap, DISK_CAP_FACTOR * max_size);
    // ~190 bytes a frame, 4 KiB segments: 200 records make about 10 segments.
    for i in 0..200 {
        w.push(vec![rec(i, 100)]).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        got.extend(r.recv(200).await.unwrap().into_iter().map(|e| e.seq));
    }
    // Nothing acked yet, so the writer deletes no segment while we look.
    let u = w.usage();
    let segs: Vec<(u64, SegMeta)> = {
        let st = w.guard.core.state.lock();
        st.segments.iter().map(|(&f, m)| (f, *m)).collect()
    };
    assert!(segs.len() >= 4, "{} segments", segs.len());
    assert_eq!(u.disk_bytes, segs.iter().map(|(_, m)| m.bytes).sum::<u64>());
    // The oldest segments holding half of the bytes end at a segment boundary, before
    // the newest segment.
    let half: u64 = u.disk_bytes / 2;
    let mut sum = 0;
    let want = segs
        .iter()
        .find(|(_, m)| {
            sum += m.bytes;
            sum >= half
        })
        .map(|(_, m)| m.end);
    assert_eq!(Some(u.oldest_half_end), want);
    assert!(u.oldest_half_end > 0);
    assert!(
        u.oldest_half_end <= segs[segs.len() - 1].0,
        "the newest segment counts"
    );
    // Everything delivered but the first record (a quiet partition's open batch): the
    // files are then almost all done records.
    r.acker().ack(&got[1..]);
    let u = w.usage();
    assert!(u.live_bytes < 300, "only record 0 is undelivered: {u:?}");
}

/// A record no frame can hold used to be dropped by `push` (counted like a `drop_newest`
/// drop) after the pipeline's check had passed it, so an input could ack it and lose it.
/// Now the whole push is refused with `TooLarge` and nothing of it is buffered.
#[tokio::test]
async fn a_record_larger_than_a_frame_refuses_the_whole_push() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _r, _) = open("huge", &settings(dir.path(), 1 << 30, 64 << 20)).unwrap();
    let huge = rec(1, segment::MAX_PAYLOAD);
    assert!(
        crate::buffer::BufferWriter(crate::buffer::WriterImpl::Disk(w.clone()))
            .too_large(&huge)
            .is_some(),
        "the pipeline's check refuses it"
    );
    let mut report = PushReport::default();
    let result = w
        .push_into(vec![rec(0, 10), huge, rec(2, 10)], &mut report)
        .await;
    assert!(
        matches!(result, Err(BufferError::TooLarge { limit, .. }) if limit == segment::MAX_PAYLOAD),
        "{result:?}"
    );
    assert_eq!(
        report,
        PushReport::default(),
        "nothing accepted, nothing dropped"
    );
    assert_eq!(w.stats().records, 0);
    // The buffer goes on taking records.
    assert_eq!(w.push(vec![rec(3, 10)]).await.unwrap().accepted, 1);
}

/// The ack file deleted while the buffer runs (an operator's `rm` on a full disk): acks
/// used to go on into the unlinked inode, so the file never came back and a restart
/// replayed everything. Now the next persist notices and writes a new one.
#[tokio::test]
async fn a_deleted_ack_file_is_recreated_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (w, mut r, _) = open("rm", &settings(dir.path(), 1 << 20, 4096)).unwrap();
    for i in 0..100 {
        w.push(vec![rec(i, 100)]).await.unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 100 {
        seqs.extend(r.recv(64).await.unwrap().into_iter().map(|e| e.seq));
    }
    let a = r.acker();
    a.ack(&seqs[..40]);
    let watermark = || {
        ledger::load(dir.path())
            .ok()
            .flatten()
            .map(|l| l.state.watermark)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while watermark() != Some(40) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(watermark(), Some(40));
    fs::remove_file(dir.path().join("acks")).unwrap();
    a.ack(&seqs[40..70]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while watermark() != Some(70) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(watermark(), Some(70), "a new ack file holds the acks since");
}

/// No ack file (it could not be created on a full disk, or was deleted): delivered
/// segments are deleted all the same, from the acks held in memory. They used to stay
/// until an ack file could be written, which needs the very space they hold, so a full
/// disk stayed full for good.
#[tokio::test]
async fn without_an_ack_file_delivered_segments_are_still_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // Stands in for "the ack file cannot be created": a directory where it must go makes
    // creating it (a rename onto that name) fail, as ENOSPC does on a full disk.
    fs::create_dir(dir.path().join("acks")).unwrap();
    fs::write(dir.path().join("acks").join("keep"), b"x").unwrap();
    let (w, mut r, _) = open("noack", &settings(dir.path(), 1 << 20, 4096)).unwrap();
    for i in 0..200 {
        w.push(vec![rec(i, 100)]).await.unwrap();
    }
    let files = seg_files(dir.path());
    assert!(files.len() >= 5, "{files:?}");
    let mut seqs = Vec::new();
    while seqs.len() < 200 {
        seqs.extend(r.recv(64).await.unwrap().into_iter().map(|e| e.seq));
    }
    r.acker().ack(&seqs[..150]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while seg_files(dir.path()).len() == files.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = seg_files(dir.path());
    assert!(left.len() < files.len(), "{left:?}");
    let first_left = segment::parse_file_name(&left[0]).unwrap();
    assert!(first_left <= 150, "a segment with undelivered records went");
    assert_eq!(w.stats().records, 50);
}
