//! In-memory buffer: a queue of records with byte accounting against both the buffer's own
//! `max_size` and the process-wide [`MemoryBudget`].
//!
//! Bytes are released on ack, not on `recv`: records handed to the delivery loop are still
//! in memory (in batches, in retries) until they are delivered or dead-lettered.
//! A push's budget reservation is held as one piece and returned when the last record of
//! that push is acked: the budget counts in KiB units, so per-record reservations would
//! overcount small records several times over.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::budget::{Credit, MemoryBudget, Reservation};
use super::{BufferError, BufferSettings, BufferStats, Entry, Gauges, PushReport, WhenFull};
use crate::event::Record;

struct Queued {
    seq: u64,
    record: Record,
    size: u64,
    group: u64,
}

struct Group {
    remaining: usize,
    _reservation: Reservation,
}

/// Hasher of the group numbers keying this buffer's map of pushes. They are counters the
/// buffer hands out, never chosen by a client, so SipHash's flooding resistance buys
/// nothing, and every push is looked up on its acks. One multiply by an
/// odd constant keeps consecutive numbers in distinct buckets (low bits) and spreads them
/// over the high bits the table's probe tags use.
#[derive(Default, Clone, Copy)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<SeqHasher>>;

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Size and group of the records handed to the reader and not yet acked.
    in_flight: InFlight,
    groups: SeqMap<Group>,
    next_seq: u64,
    next_group: u64,
    /// Bytes of queued + in-flight records, plus bytes reserved by pushes in progress.
    bytes: u64,
    records: u64,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the single reader (`notify_one` keeps a permit if it is not waiting yet).
    data: Notify,
    /// Wakes pushers waiting for space.
    space: Notify,
    max_size: u64,
    when_full: WhenFull,
    budget: MemoryBudget,
    gauges: Gauges,
}

impl Shared {
    fn publish(&self, st: &State) {
        self.gauges.set(BufferStats {
            bytes: st.bytes,
            records: st.records,
        });
    }
}

pub(super) fn open(
    output: &str,
    settings: &BufferSettings,
    budget: MemoryBudget,
) -> (Writer, Reader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        data: Notify::new(),
        space: Notify::new(),
        max_size: settings.max_size.max(1),
        when_full: settings.when_full,
        budget,
        gauges: Gauges::new(output),
    });
    shared.publish(&shared.state.lock());
    (
        Writer {
            shared: shared.clone(),
        },
        Reader { shared },
    )
}

/// How many of `sizes` fit into the free space; at least one when the buffer is empty, so
/// a record larger than `max_size` still passes once everything else has drained.
fn fitting(sizes: &[u64], used: u64, max: u64) -> (usize, u64) {
    let mut total = 0u64;
    let mut n = 0;
    for &s in sizes {
        let fits = used + total + s <= max || (used == 0 && n == 0);
        if !fits {
            break;
        }
        total += s;
        n += 1;
    }
    (n, total)
}

/// Records handed to the reader and not yet acked, one [`Span`] per `recv`. `recv` hands
/// out the queue's records in order, and sequence numbers are given in that order without
/// gaps, so a span is a contiguous range and a record is found by a binary search over the
/// spans plus an index: no per-record hashing, insert or removal (a hash map keyed by
/// sequence cost 8% of a PackedForward → null stream).
#[derive(Default)]
struct InFlight {
    /// In order of `Span::first`, not overlapping.
    spans: VecDeque<Span>,
    /// Spans with records still unacked.
    live: usize,
}

/// The records of one `recv`: sequence numbers `first ..first + records.len()`.
struct Span {
    first: u64,
    /// Size and group of each record; `ACKED` as its size once acked.
    records: Vec<(u64, u64)>,
    remaining: usize,
}

/// Size of a record already acked (a real size is far below it).
const ACKED: u64 = u64::MAX;

impl Span {
    fn new(first: u64, capacity: usize) -> Self {
        Span {
            first,
            records: Vec::with_capacity(capacity),
            remaining: 0,
        }
    }

    fn push(&mut self, size: u64, group: u64) {
        debug_assert!(size != ACKED);
        self.records.push((size, group));
        self.remaining += 1;
    }
}

impl InFlight {
    fn push(&mut self, span: Span) {
        debug_assert!(
            self.spans
                .back()
                .is_none_or(|s| s.first + s.records.len() as u64 <= span.first),
            "spans are handed out in sequence order"
        );
        if span.remaining > 0 {
            self.spans.push_back(span);
            self.live += 1;
        }
    }

    /// Size and group of record `seq`, if it is in flight; it no longer is afterwards. A
    /// sequence number acked before (or never handed out) gives `None`.
    fn take(&mut self, seq: u64) -> Option<(u64, u64)> {
        let i = self
            .spans
            .partition_point(|s| s.first <= seq)
            .checked_sub(1)?;
        let span = &mut self.spans[i];
        let slot = span
            .records
            .get_mut(usize::try_from(seq - span.first).ok()?)?;
        if slot.0 == ACKED {
            return None;
        }
        let taken = std::mem::replace(slot, (ACKED, 0));
        span.remaining -= 1;
        if span.remaining == 0 {
            span.records = Vec::new();
            self.live -= 1;
            while self.spans.front().is_some_and(|s| s.remaining == 0) {
                self.spans.pop_front();
            }
            // A batch retrying for a long time keeps the spans after it in the deque,
            // acked or not: dropping the acked ones now and then keeps that to the live
            // ones, whatever the length of the wait.
            if self.spans.len() > 2 * self.live + 16 {
                self.spans.retain(|s| s.remaining > 0);
            }
        }
        Some(taken)
    }
}

/// Local bytes reserved by a push in progress; returned if the push is cancelled.
struct Pending<'a> {
    shared: &'a Shared,
    bytes: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.shared.state.lock().bytes -= self.bytes;
            self.shared.space.notify_waiters();
        }
    }
}

// === impl Writer ===

#[derive(Clone)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
}

impl Writer {
    pub(crate) async fn push(&self, records: Vec<Record>) -> Result<PushReport, BufferError> {
        let mut report = PushReport::default();
        self.push_into(records, &mut report, &Credit::default())
            .await
            .map(|()| report)
    }

    /// [`push`](Self::push), adding what was accepted or dropped to `report` as it goes:
    /// on an error (closed, write failed) after some chunks went in, those stay counted.
    /// Memory for the records is drawn from `credit` first (see [`Credit`]).
    pub(crate) async fn push_into(
        &self,
        records: Vec<Record>,
        report: &mut PushReport,
        credit: &Credit,
    ) -> Result<(), BufferError> {
        let sh = &*self.shared;
        let mut sizes: VecDeque<u64> = records.iter().map(|r| r.approx_size() as u64).collect();
        // A record larger than the whole memory budget can never be held; the pipeline
        // refuses it before the ack (`BufferWriter::too_large`). Reaching here is a broken
        // contract: the whole push is refused, nothing of it buffered, never a silent drop.
        if let Some(over) = sizes
            .iter()
            .find_map(|&s| sh.budget.check(s as usize).err())
        {
            if let Some(suppressed) = crate::telemetry::permit("memory_buffer_over_budget") {
                tracing::error!(
                    bytes = over.bytes,
                    limit = over.limit,
                    suppressed,
                    "memory buffer: refused a push holding a record larger than the whole memory budget; the caller should have refused it before its ack"
                );
            }
            return Err(BufferError::TooLarge {
                bytes: over.bytes,
                limit: over.limit,
            });
        }
        // A chunk never needs more than the whole budget: no record is larger (checked
        // above), and chunks of several stop at it.
        let max_size = sh.max_size.min(sh.budget.limit() as u64);
        let mut records: VecDeque<Record> = records.into();
        while !records.is_empty() {
            let mut pending = Pending {
                shared: sh,
                bytes: 0,
            };
            let (n, reservation) = match sh.when_full {
                WhenFull::DropNewest => {
                    let st = sh.state.lock();
                    if st.closed {
                        return Err(BufferError::Closed);
                    }
                    let (mut n, _) = fitting(sizes.make_contiguous(), st.bytes, max_size);
                    let mut reservation = None;
                    while n > 0 {
                        let bytes: u64 = sizes.iter().take(n).sum();
                        // Never the budget's last quarter: a stalled output that drops
                        // when full must not starve the outputs that wait for memory.
                        // Not from the credit: records a stalled output keeps would
                        // take it out of circulation, past the quarter kept free.
                        if let Some(r) = sh.budget.try_acquire_shedding(bytes as usize) {
                            reservation = Some(r);
                            break;
                        }
                        n /= 2;
                    }
                    let Some(reservation) = reservation else {
                        report.dropped += records.len();
                        return Ok(());
                    };
                    report.dropped += records.len() - n;
                    records.truncate(n);
                    sizes.truncate(n);
                    drop(st);
                    (n, reservation)
                }
                WhenFull::Block => {
                    let (n, bytes) = loop {
                        let mut notified = pin!(sh.space.notified());
                        notified.as_mut().enable();
                        {
                            let mut st = sh.state.lock();
                            if st.closed {
                                return Err(BufferError::Closed);
                            }
                            let (n, bytes) = fitting(sizes.make_contiguous(), st.bytes, max_size);
                            if n > 0 {
                                st.bytes += bytes;
                                break (n, bytes);
                            }
                        }
                        notified.await;
                    };
                    pending.bytes = bytes;
                    let reservation = match credit.take(&sh.budget, bytes as usize) {
                        Some(r) => r,
                        None => sh.budget.acquire(bytes as usize).await.map_err(|over| {
                            BufferError::TooLarge {
                                bytes: over.bytes,
                                limit: over.limit,
                            }
                        })?,
                    };
                    (n, reservation)
                }
            };
            let mut st = sh.state.lock();
            if st.closed {
                return Err(BufferError::Closed);
            }
            let group = st.next_group;
            st.next_group += 1;
            st.groups.insert(
                group,
                Group {
                    remaining: n,
                    _reservation: reservation,
                },
            );
            let mut chunk_bytes = 0;
            for (record, size) in records.drain(..n).zip(sizes.drain(..n)) {
                let seq = st.next_seq;
                st.next_seq += 1;
                chunk_bytes += size;
                st.queue.push_back(Queued {
                    seq,
                    record,
                    size,
                    group,
                });
            }
            // `pending` held the Block reservation; ownership moves to the queued records.
            if pending.bytes == 0 {
                st.bytes += chunk_bytes;
            }
            pending.bytes = 0;
            st.records += n as u64;
            report.accepted += n;
            sh.publish(&st);
            drop(st);
            sh.data.notify_one();
        }
        Ok(())
    }

    pub(crate) fn close(&self) {
        self.shared.state.lock().closed = true;
        self.shared.data.notify_one();
        self.shared.space.notify_waiters();
    }

    /// `Some((bytes, limit))` for a record larger than the whole memory budget: no wait
    /// can ever make room for it.
    pub(crate) fn too_large(&self, record: &Record) -> Option<(usize, usize)> {
        let bytes = record.approx_size();
        self.shared
            .budget
            .check(bytes)
            .err()
            .map(|over| (bytes, over.limit))
    }

    pub(crate) fn stats(&self) -> BufferStats {
        let st = self.shared.state.lock();
        BufferStats {
            bytes: st.bytes,
            records: st.records,
        }
    }
}

// === impl Reader ===

pub(crate) struct Reader {
    shared: Arc<Shared>,
}

impl Reader {
    pub(crate) async fn recv(&mut self, max_records: usize) -> Option<Vec<Entry>> {
        let max_records = max_records.max(1);
        loop {
            {
                let mut st = self.shared.state.lock();
                if !st.queue.is_empty() {
                    let n = max_records.min(st.queue.len());
                    let st = &mut *st;
                    let mut out = Vec::with_capacity(n);
                    let mut span = Span::new(st.queue[0].seq, n);
                    for q in st.queue.drain(..n) {
                        span.push(q.size, q.group);
                        out.push(Entry {
                            seq: q.seq,
                            record: q.record,
                        });
                    }
                    st.in_flight.push(span);
                    return Some(out);
                }
                if st.closed {
                    return None;
                }
            }
            self.shared.data.notified().await;
        }
    }

    pub(crate) fn acker(&self) -> Acker {
        Acker {
            shared: self.shared.clone(),
        }
    }
}

// === impl Acker ===

#[derive(Clone)]
pub(crate) struct Acker {
    shared: Arc<Shared>,
}

impl Acker {
    pub(crate) fn ack(&self, seqs: &[u64]) {
        let sh = &*self.shared;
        let mut guard = sh.state.lock();
        let st = &mut *guard;
        let mut freed = false;
        // Acks come in runs of one push's records: count a run's records, then settle its
        // group once, rather than looking the group up per record.
        let mut run: Option<(u64, usize)> = None;
        let settle = |groups: &mut SeqMap<Group>, (group, n): (u64, usize)| {
            if let Some(g) = groups.get_mut(&group) {
                g.remaining = g.remaining.saturating_sub(n);
                if g.remaining == 0 {
                    groups.remove(&group);
                }
            }
        };
        for seq in seqs {
            let Some((size, group)) = st.in_flight.take(*seq) else {
                continue;
            };
            st.bytes -= size;
            st.records -= 1;
            freed = true;
            match &mut run {
                Some((g, n)) if *g == group => *n += 1,
                _ => {
                    if let Some(done) = run.replace((group, 1)) {
                        settle(&mut st.groups, done);
                    }
                }
            }
        }
        if let Some(done) = run {
            settle(&mut st.groups, done);
        }
        if freed {
            sh.publish(st);
            drop(guard);
            sh.space.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn span(first: u64, n: u64) -> Span {
        let mut s = Span::new(first, n as usize);
        for i in 0..n {
            s.push(100 + first + i, first);
        }
        s
    }

    /// Each record is taken once, in any order; sequence numbers acked before, never handed
    /// out, or between spans give nothing.
    #[test]
    fn in_flight_takes_each_record_once_in_any_order() {
        let mut f = InFlight::default();
        f.push(span(10, 3));
        f.push(Span::new(13, 4));
        f.push(span(20, 2));
        assert_eq!(f.take(21), Some((121, 20)));
        assert_eq!(f.take(21), None, "acked twice");
        assert_eq!(f.take(11), Some((111, 10)));
        for none in [0, 9, 13, 15, 22, u64::MAX] {
            assert_eq!(f.take(none), None, "seq {none}");
        }
        assert_eq!(f.take(10), Some((110, 10)));
        assert_eq!(f.take(12), Some((112, 10)));
        assert_eq!(f.take(12), None);
        assert_eq!(
            (f.spans.len(), f.live),
            (1, 1),
            "the acked front span is gone"
        );
        assert_eq!(f.take(20), Some((120, 20)));
        assert_eq!((f.spans.len(), f.live), (0, 0));
    }

    /// One record left unacked at the front (a batch retrying for a long time) does not make
    /// the spans delivered after it pile up.
    #[test]
    fn in_flight_spans_after_a_stuck_one_are_dropped_once_acked() {
        let mut f = InFlight::default();
        f.push(span(0, 2));
        assert_eq!(f.take(1), Some((101, 0)));
        for k in 1..10_000u64 {
            f.push(span(k * 2, 2));
            assert_eq!(f.take(k * 2), Some((100 + k * 2, k * 2)));
            assert_eq!(f.take(k * 2 + 1), Some((101 + k * 2, k * 2)));
            assert!(f.spans.len() <= 2 * f.live + 17, "{} spans", f.spans.len());
        }
        assert_eq!(f.live, 1);
        assert_eq!(f.take(0), Some((100, 0)));
        assert_eq!((f.spans.len(), f.live), (0, 0));
        for k in 0..20_000 {
            assert_eq!(f.take(k), None);
        }
    }

    fn rec(i: usize) -> Record {
        let mut f = crate::event::Fields::new();
        f.insert(
            "log".into(),
            serde_json::Value::String(format!("line {i:04} {}", "x".repeat(100))),
        );
        Record::new("t", i as i64, f)
    }

    fn recs(range: std::ops::Range<usize>) -> Vec<Record> {
        range.map(rec).collect()
    }

    fn size() -> u64 {
        rec(0).approx_size() as u64
    }

    #[tokio::test]
    async fn fifo_round_trip_and_release_on_ack() {
        let budget = MemoryBudget::new(1 << 20);
        let (w, mut r) = open(
            "m1",
            &BufferSettings::memory(1 << 20, WhenFull::Block),
            budget.clone(),
        );
        assert_eq!(
            w.push(recs(0..10)).await.unwrap(),
            PushReport {
                accepted: 10,
                dropped: 0
            }
        );
        let got = r.recv(4).await.unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(got[2].record, rec(2));
        let rest = r.recv(100).await.unwrap();
        assert_eq!(rest.len(), 6);
        // Received but not acked: still counted.
        assert_eq!(w.stats().records, 10);
        assert!(budget.used() > 0);
        let a = r.acker();
        a.ack(&[9, 0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(w.stats().records, 1);
        assert!(
            budget.used() > 0,
            "group held until its last record is acked"
        );
        a.ack(&[8, 8, 8]);
        assert_eq!(
            w.stats(),
            BufferStats {
                bytes: 0,
                records: 0
            }
        );
        assert_eq!(budget.used(), 0);
        w.close();
        assert!(r.recv(1).await.is_none());
        assert!(matches!(w.push(recs(0..1)).await, Err(BufferError::Closed)));
    }

    #[tokio::test]
    async fn drop_newest_keeps_prefix_and_reports_rest() {
        let (w, mut r) = open(
            "m2",
            &BufferSettings::memory(size() * 5, WhenFull::DropNewest),
            MemoryBudget::new(1 << 20),
        );
        assert_eq!(
            w.push(recs(0..3)).await.unwrap(),
            PushReport {
                accepted: 3,
                dropped: 0
            }
        );
        assert_eq!(
            w.push(recs(3..8)).await.unwrap(),
            PushReport {
                accepted: 2,
                dropped: 3
            }
        );
        assert_eq!(
            w.push(recs(8..9)).await.unwrap(),
            PushReport {
                accepted: 0,
                dropped: 1
            }
        );
        let got = r.recv(100).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.record.time_ns).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        r.acker().ack(&[0, 1]);
        assert_eq!(
            w.push(recs(9..12)).await.unwrap(),
            PushReport {
                accepted: 2,
                dropped: 1
            }
        );
    }

    #[tokio::test]
    async fn drop_newest_respects_global_budget() {
        // Budget of 2 KiB; each record is ~200 B but a reservation rounds up to 1 KiB.
        let budget = MemoryBudget::new(2048);
        let (w, _r) = open(
            "m3",
            &BufferSettings::memory(1 << 20, WhenFull::DropNewest),
            budget.clone(),
        );
        let held = budget.try_acquire(2048).unwrap();
        assert_eq!(
            w.push(recs(0..4)).await.unwrap(),
            PushReport {
                accepted: 0,
                dropped: 4
            }
        );
        drop(held);
        assert_eq!(w.push(recs(0..4)).await.unwrap().accepted, 4);
    }

    #[tokio::test]
    async fn block_waits_for_ack_then_resumes() {
        let (w, mut r) = open(
            "m4",
            &BufferSettings::memory(size() * 4, WhenFull::Block),
            MemoryBudget::new(1 << 20),
        );
        w.push(recs(0..4)).await.unwrap();
        let w2 = w.clone();
        let pusher = tokio::spawn(async move { w2.push(recs(4..6)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pusher.is_finished(), "push must wait while full");
        let got = r.recv(2).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!pusher.is_finished(), "recv alone frees nothing");
        r.acker()
            .ack(&got.iter().map(|e| e.seq).collect::<Vec<_>>());
        let rep = tokio::time::timeout(Duration::from_secs(2), pusher)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            rep,
            PushReport {
                accepted: 2,
                dropped: 0
            }
        );
        let rest = r.recv(10).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn block_waits_for_global_budget_and_cancel_returns_space() {
        let budget = MemoryBudget::new(4096);
        let (w, _r) = open(
            "m5",
            &BufferSettings::memory(1 << 20, WhenFull::Block),
            budget.clone(),
        );
        let held = budget.try_acquire(4096).unwrap();
        let fut = w.push(recs(0..2));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fut)
                .await
                .is_err()
        );
        assert_eq!(
            w.stats().bytes,
            0,
            "cancelled push released its local reservation"
        );
        drop(held);
        assert_eq!(w.push(recs(0..2)).await.unwrap().accepted, 2);
    }

    #[tokio::test]
    async fn oversized_record_passes_when_empty_and_close_wakes_blocked() {
        let (w, mut r) = open(
            "m6",
            &BufferSettings::memory(10, WhenFull::Block),
            MemoryBudget::new(1 << 20),
        );
        assert_eq!(w.push(recs(0..1)).await.unwrap().accepted, 1);
        let w2 = w.clone();
        let pusher = tokio::spawn(async move { w2.push(recs(1..2)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.close();
        assert!(matches!(pusher.await.unwrap(), Err(BufferError::Closed)));
        assert_eq!(r.recv(10).await.unwrap().len(), 1);
        assert!(r.recv(10).await.is_none());
    }

    /// A record larger than the whole memory budget used to be taken with the whole
    /// budget reserved (the budget clamped it), so one record could hold more than
    /// `memory_limit`. `too_large` names it (the pipeline refuses it before the ack), and
    /// a push that holds one anyway is refused whole, in both `when_full` modes.
    #[tokio::test]
    async fn a_record_over_the_whole_budget_is_too_large_never_taken() {
        let budget = MemoryBudget::new(64 * 1024);
        for when_full in [WhenFull::Block, WhenFull::DropNewest] {
            let (w, _r) = open(
                "m",
                &BufferSettings::memory(1 << 30, when_full),
                budget.clone(),
            );
            let mut f = crate::event::Fields::new();
            f.insert("log".into(), "x".repeat(100 * 1024).into());
            let huge = Record::new("t", 0, f);
            let (bytes, limit) = w.too_large(&huge).expect("too large");
            assert!(bytes > limit && limit == 64 * 1024);
            assert!(w.too_large(&recs(0..1)[0]).is_none());
            let mut records = recs(0..2);
            records.insert(1, huge);
            let pushed = tokio::time::timeout(Duration::from_secs(5), w.push(records))
                .await
                .expect("refused without waiting");
            assert!(
                matches!(pushed, Err(BufferError::TooLarge { limit: 65536, .. })),
                "{pushed:?}"
            );
            assert_eq!(w.stats().records, 0, "nothing of the push taken");
            assert_eq!(budget.used(), 0);
            assert_eq!(w.push(recs(0..2)).await.unwrap().accepted, 2);
        }
    }

    /// Acks settle each push's budget reservation in runs (one group lookup per run of a
    /// push's records): acks that interleave two pushes, repeat, or name unknown seqs still
    /// release each push's reservation exactly when its last record is acked.
    #[tokio::test]
    async fn interleaved_acks_release_each_push_when_its_last_record_is_acked() {
        let budget = MemoryBudget::new(1 << 20);
        let (w, mut r) = open(
            "m",
            &BufferSettings::memory(1 << 20, WhenFull::Block),
            budget.clone(),
        );
        w.push(recs(0..3)).await.unwrap();
        let first = budget.used();
        assert!(first > 0);
        w.push(recs(3..6)).await.unwrap();
        let both = budget.used();
        assert!(both > first);
        let got = r.recv(100).await.unwrap();
        assert_eq!(got.len(), 6);
        let a = r.acker();
        // Runs: [0] of push 1, [3, 4] of push 2, [1] of push 1, an unknown seq, a repeat.
        a.ack(&[0, 3, 4, 1, 77, 0]);
        assert_eq!(w.stats().records, 2);
        assert_eq!(budget.used(), both, "no push fully acked yet");
        // Push 2's last record, then push 1's.
        a.ack(&[5]);
        assert_eq!(w.stats().records, 1);
        assert_eq!(budget.used(), first, "push 2's reservation returned");
        a.ack(&[2, 5]);
        assert_eq!(
            w.stats(),
            BufferStats {
                bytes: 0,
                records: 0
            }
        );
        assert_eq!(budget.used(), 0);
    }
}
