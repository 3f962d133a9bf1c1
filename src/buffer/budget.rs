//! One process-wide byte budget covering decoded frames, queues and open batches.
//!
//! Everything that holds records in memory reserves bytes here first. When the budget is
//! spent, reservations wait, and the waiting is what pushes back on clients: the forward
//! input stops reading its socket and the HTTP input answers 503. The sidecar therefore
//! never grows until ECS OOM-kills the task (and the essential app container with it).
//!
//! A single reservation larger than the whole budget is refused up front ([`OverBudget`]):
//! granting it would let one request hold more memory than `memory_limit`, and waiting
//! would never help. Callers refuse the request for good (HTTP 413, forward `too_large`).
//!
//! One holder cannot wait: the outputs' delivery cores, whose sealed batches (request
//! bodies: JSON lines, compressed S3 objects) are memory beside the records they were
//! built from. A core waiting for memory only it can free would stall, so it takes what
//! it needs at once with [`MemoryBudget::take_now`], overdrawing the budget if it must.
//! The overdraft is a debt: memory released elsewhere pays it before anyone waiting
//! gets it, so the inputs stay held back until the process is within the limit again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Granularity of reservations: permits are counted in KiB so a `u32` permit count covers
/// budgets up to 4 TiB. Every reservation is rounded up to whole units.
pub(crate) const UNIT: usize = 1024;

/// Whole units for `bytes`: rounded up, and at least one (every reservation holds one).
fn units_of(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

/// A reservation no wait can satisfy: more bytes than the whole budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{bytes} bytes is more than the whole memory budget ({limit} bytes, runtime.memory_limit)")]
pub(crate) struct OverBudget {
    pub bytes: usize,
    pub limit: usize,
}

#[derive(Clone, Debug)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    debt: Arc<Debt>,
    limit_units: u32,
}

/// Units [`MemoryBudget::take_now`] granted beyond what was free. Invariant: `owed +
/// covered` is the sum of the live overdrafts, and the semaphore holds `covered` fewer
/// permits than the limit (they were forgotten to pay the debt, and come back when the
/// overdrawn reservation is dropped).
#[derive(Debug)]
struct Debt {
    sem: Arc<Semaphore>,
    /// Mirror of `state.owed`, read without the lock on every release.
    owed_hint: AtomicUsize,
    /// Units held by [`MemoryBudget::take_body`] reservations (overdrafts included).
    bodies: AtomicUsize,
    /// Bytes the resident-memory governor holds ([`super::resident`]), for the gauge.
    unattributed: AtomicUsize,
    /// Units wanted by each [`MemoryBudget::acquire`] waiting now (size → how many wait
    /// for it), so the governor never holds what one of them needs to fit at all.
    waits: Mutex<std::collections::BTreeMap<usize, usize>>,
    state: Mutex<DebtState>,
}

/// One waiting [`MemoryBudget::acquire`] in `Debt::waits`, removed when it ends (granted
/// or cancelled).
struct Waiting<'a> {
    debt: &'a Debt,
    units: usize,
}

impl<'a> Waiting<'a> {
    fn new(debt: &'a Debt, units: usize) -> Self {
        *debt.waits.lock().entry(units).or_default() += 1;
        Waiting { debt, units }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waits = self.debt.waits.lock();
        if let Some(n) = waits.get_mut(&self.units) {
            *n -= 1;
            if *n == 0 {
                waits.remove(&self.units);
            }
        }
    }
}

#[derive(Debug, Default)]
struct DebtState {
    /// Overdrawn units nobody has paid yet.
    owed: usize,
    /// Overdrawn units paid with released permits (forgotten from the semaphore).
    covered: usize,
}

impl Debt {
    /// A reservation going away: its own overdraft is cancelled (or, if released memory
    /// already paid it, those permits come back), then its permits pay what others owe,
    /// and only the rest returns to the budget.
    fn release(&self, permit: Option<OwnedSemaphorePermit>, overdraft: usize) {
        if overdraft == 0 && self.owed_hint.load(Ordering::Acquire) == 0 {
            return; // the permit drops: back to the budget
        }
        let mut st = self.state.lock();
        if overdraft > 0 {
            let cancelled = overdraft.min(st.owed);
            st.owed -= cancelled;
            let paid = overdraft - cancelled;
            st.covered = st.covered.saturating_sub(paid);
            if paid > 0 {
                self.sem.add_permits(paid);
            }
        }
        if st.owed > 0
            && let Some(mut p) = permit
        {
            let pay = st.owed.min(p.num_permits());
            if let Some(forgotten) = p.split(pay) {
                forgotten.forget();
                st.owed -= pay;
                st.covered += pay;
            }
        }
        self.owed_hint.store(st.owed, Ordering::Release);
    }

    fn owe(&self, units: usize) {
        let mut st = self.state.lock();
        st.owed += units;
        self.owed_hint.store(st.owed, Ordering::Release);
    }

    #[cfg(test)]
    fn owed(&self) -> usize {
        self.state.lock().owed
    }
}

/// Bytes held against the budget; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    /// Units granted beyond the budget ([`MemoryBudget::take_now`]).
    overdraft: usize,
    /// Units counted in `Debt::bodies` ([`MemoryBudget::take_body`]).
    body: usize,
    /// The budget's debt; `None` for a reservation that holds nothing.
    debt: Option<Arc<Debt>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(debt) = self.debt.take() {
            if self.body > 0 {
                debt.bodies.fetch_sub(self.body, Ordering::AcqRel);
            }
            debt.release(self.permit.take(), self.overdraft);
        }
    }
}

impl Reservation {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
    /// A reservation that holds nothing (for paths that do not count against the budget).
    pub(crate) fn empty() -> Self {
        Reservation {
            permit: None,
            bytes: 0,
            overdraft: 0,
            body: 0,
            debt: None,
        }
    }
    /// Moves `bytes` (rounded up to whole [`UNIT`]s) out of this reservation into a new
    /// one; `None`, with nothing moved, when this one holds fewer units (an overdraft is
    /// never moved).
    pub(crate) fn split_off(&mut self, bytes: usize) -> Option<Reservation> {
        let units = units_of(bytes);
        let permit = self.permit.as_mut()?.split(units)?;
        self.bytes = self.bytes.saturating_sub(units * UNIT);
        Some(Reservation {
            permit: Some(permit),
            bytes,
            overdraft: 0,
            body: 0,
            debt: self.debt.clone(),
        })
    }

    /// Whole units held (not counting an overdraft).
    fn units(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Units held, the overdraft included.
    pub(crate) fn held_units(&self) -> usize {
        self.units() + self.overdraft
    }

    /// Gives `units` of this reservation back (at most what it holds): its overdraft
    /// first (cancelling a debt nobody has paid yet, or returning what released memory
    /// paid for it), then permits, which pay what others owe before the budget gets them.
    pub(crate) fn give_back(&mut self, units: usize) {
        let Some(debt) = self.debt.clone() else {
            return;
        };
        let from_overdraft = units.min(self.overdraft);
        if from_overdraft > 0 {
            self.overdraft -= from_overdraft;
            debt.release(None, from_overdraft);
        }
        let from_permit = (units - from_overdraft).min(self.units());
        if from_permit > 0
            && let Some(part) = self.permit.as_mut().and_then(|p| p.split(from_permit))
        {
            debt.release(Some(part), 0);
        }
        self.bytes = self.held_units() * UNIT;
    }

    /// Folds another reservation into this one.
    pub(crate) fn merge(&mut self, mut other: Reservation) {
        self.bytes += other.bytes;
        self.overdraft += std::mem::take(&mut other.overdraft);
        self.body += std::mem::take(&mut other.body);
        if self.debt.is_none() {
            self.debt = other.debt.clone();
        }
        match (&mut self.permit, other.permit.take()) {
            (Some(a), Some(b)) => a.merge(b),
            (slot @ None, Some(b)) => *slot = Some(b),
            _ => {}
        }
    }
}

/// Budget an input already holds for records it hands on: a forward connection reserves
/// memory for a request while decoding it, and its records then wait in `ingest` until
/// their buffers reserve memory for them. Handed along as a credit, the buffer pushes of
/// those records draw from it before the shared budget, so the records stay counted,
/// once, from decoding until their buffer holds them (without it the decoded batches of
/// every connection waiting out back-pressure were memory the budget did not see).
///
/// The rule that keeps this free of deadlock is the one of the forward input's own
/// reservations: nobody waits for budget while holding part of it. A push the credit
/// cannot cover, even topped up without waiting, gives the whole credit back before it
/// waits ([`Credit::take`]). Shared, by reference, by the concurrent pushes of one ingest (one
/// per output).
/// Buffers that shed load (`drop_newest`) do not draw from it: a stalled output would keep
/// it for good, past the quarter of the budget shedding leaves to the others.
#[derive(Debug, Default)]
pub(crate) struct Credit(Mutex<Option<Reservation>>);

impl Credit {
    /// A credit of what `held` holds.
    pub(crate) fn new(held: Reservation) -> Self {
        Credit(Mutex::new(Some(held)))
    }

    /// A reservation of `bytes` drawn from the credit, topped up from `budget` if that
    /// needs no wait. `None` when even that falls short: then the whole credit has gone
    /// back to the budget (the caller is about to wait for budget, and must hold none of
    /// it meanwhile), and later calls find it empty.
    pub(crate) fn take(&self, budget: &MemoryBudget, bytes: usize) -> Option<Reservation> {
        let mut slot = self.0.lock();
        let held = slot.as_mut()?;
        let units = units_of(bytes);
        let have = held.units();
        if have >= units {
            return held.split_off(bytes);
        }
        if let Some(top_up) = budget.try_acquire((units - have) * UNIT) {
            let mut all = slot.take()?;
            all.merge(top_up);
            all.bytes = bytes;
            return Some(all);
        }
        *slot = None;
        None
    }
}

impl MemoryBudget {
    pub(crate) fn new(limit_bytes: usize) -> Self {
        let limit_units = (limit_bytes / UNIT).clamp(1, u32::MAX as usize >> 3) as u32;
        let sem = Arc::new(Semaphore::new(limit_units as usize));
        MemoryBudget {
            debt: Arc::new(Debt {
                sem: sem.clone(),
                owed_hint: AtomicUsize::new(0),
                bodies: AtomicUsize::new(0),
                unattributed: AtomicUsize::new(0),
                waits: Mutex::default(),
                state: Mutex::new(DebtState::default()),
            }),
            sem,
            limit_units,
        }
    }

    fn reservation(&self, permit: OwnedSemaphorePermit, bytes: usize) -> Reservation {
        Reservation {
            permit: Some(permit),
            bytes,
            overdraft: 0,
            body: 0,
            debt: Some(self.debt.clone()),
        }
    }

    /// `bytes` taken at once, whatever is free: what is not free is overdrawn, and memory
    /// released later pays the overdraft before anyone waiting gets it. For holders that
    /// must never wait (a delivery core's sealed batches: waiting for memory only the
    /// core itself can free would stall it). Never refused, even for more than the whole
    /// budget.
    pub(crate) fn take_now(&self, bytes: usize) -> Reservation {
        let units = units_of(bytes);
        loop {
            let free = self.sem.available_permits().min(units);
            let permit = match free {
                0 => None,
                n => match self.sem.clone().try_acquire_many_owned(n as u32) {
                    Ok(p) => Some(p),
                    // Taken by someone else meanwhile: look again.
                    Err(_) => continue,
                },
            };
            let overdraft = units - free;
            if overdraft > 0 {
                self.debt.owe(overdraft);
            }
            return Reservation {
                permit,
                bytes,
                overdraft,
                body: 0,
                debt: Some(self.debt.clone()),
            };
        }
    }

    /// [`take_now`](Self::take_now) for a delivery core's sealed batch, while all such
    /// reservations together hold at most half the budget; beyond that, an empty
    /// reservation (the body goes uncounted). Bodies of a stalled destination are held
    /// for as long as it is stalled: the cap leaves the inputs and the other outputs at
    /// least half the budget whatever it does.
    pub(crate) fn take_body(&self, bytes: usize) -> Reservation {
        let units = units_of(bytes);
        let cap = self.limit_units as usize / 2;
        let claimed = self
            .debt
            .bodies
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + units <= cap).then_some(held + units)
            });
        if claimed.is_err() {
            return Reservation::empty();
        }
        let mut r = self.take_now(bytes);
        r.body = units;
        r
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit_units as usize * UNIT
    }

    /// Bytes held for resident memory no reservation counts ([`super::resident`]); part of
    /// [`used`](Self::used).
    pub(crate) fn unattributed(&self) -> usize {
        self.debt.unattributed.load(Ordering::Relaxed)
    }

    /// Bytes the largest [`acquire`](Self::acquire) waiting now wants (0: none waits).
    pub(crate) fn largest_wait(&self) -> usize {
        self.debt
            .waits
            .lock()
            .last_key_value()
            .map_or(0, |(units, _)| units * UNIT)
    }

    pub(crate) fn set_unattributed(&self, bytes: usize) {
        self.debt.unattributed.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn available(&self) -> usize {
        self.sem.available_permits() * UNIT
    }

    /// Bytes held, overdrafts included (so it may exceed [`limit`](Self::limit)).
    pub(crate) fn used(&self) -> usize {
        // The hint, not the lock: the delivery cores read this on every chunk of records.
        let owed = self.debt.owed_hint.load(Ordering::Acquire);
        self.limit().saturating_sub(self.available()) + owed * UNIT
    }

    /// Whole units for `bytes` (at least one), or [`OverBudget`] when they exceed the
    /// whole budget.
    fn units(&self, bytes: usize) -> Result<u32, OverBudget> {
        let units = units_of(bytes);
        if units > self.limit_units as usize {
            return Err(OverBudget {
                bytes,
                limit: self.limit(),
            });
        }
        Ok(units as u32)
    }

    /// `Err` when `bytes` can never be reserved (more than the whole budget), whatever
    /// is released: the check callers make before promising anything to a client.
    pub(crate) fn check(&self, bytes: usize) -> Result<(), OverBudget> {
        self.units(bytes).map(|_| ())
    }

    /// Waits until `bytes` are available. Refused at once, without waiting, when `bytes`
    /// is more than the whole budget. While it waits, the resident-memory governor holds
    /// none of what it needs ([`largest_wait`](Self::largest_wait)).
    pub(crate) async fn acquire(&self, bytes: usize) -> Result<Reservation, OverBudget> {
        let units = self.units(bytes)?;
        if let Ok(p) = self.sem.clone().try_acquire_many_owned(units) {
            return Ok(self.reservation(p, bytes));
        }
        let _waiting = Waiting::new(&self.debt, units as usize);
        Ok(match self.sem.clone().acquire_many_owned(units).await {
            Ok(p) => self.reservation(p, bytes),
            // The semaphore is never closed; an empty reservation is the safe answer.
            Err(_) => Reservation::empty(),
        })
    }

    /// The largest reservation [`try_acquire_shedding`](Self::try_acquire_shedding) can
    /// ever grant: three quarters of the budget (whole KiB). A request needing more can
    /// never be held by a caller that sheds; it is refused for good (HTTP 413), not
    /// retried (503).
    pub(crate) fn shedding_limit(&self) -> usize {
        (self.limit_units - self.limit_units / 4) as usize * UNIT
    }

    /// Like [`try_acquire`](Self::try_acquire), but only while a quarter of the budget
    /// would stay free afterwards. For buffers that shed load (`drop_newest`): a stalled
    /// output that drops when full must not take the whole budget, or every output that
    /// waits for memory (and the inputs decoding frames) would stall behind it, though
    /// it promised to drop rather than push back. The check and the take are not one
    /// atomic step: concurrent callers may dip into the reserve by one request each.
    pub(crate) fn try_acquire_shedding(&self, bytes: usize) -> Option<Reservation> {
        let units = self.units(bytes).ok()? as usize;
        let reserve = (self.limit_units / 4) as usize;
        if self.sem.available_permits() < units + reserve {
            return None;
        }
        self.try_acquire(bytes)
    }

    /// Takes `bytes` now or returns `None` when the budget is spent, or when `bytes` is
    /// more than the whole budget (see [`check`](Self::check) to tell the two apart).
    pub(crate) fn try_acquire(&self, bytes: usize) -> Option<Reservation> {
        let units = self.units(bytes).ok()?;
        self.sem
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(|p| self.reservation(p, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_return_on_drop() {
        let b = MemoryBudget::new(10 * UNIT);
        let r = b.acquire(4 * UNIT).await.unwrap();
        assert_eq!(b.used(), 4 * UNIT);
        assert!(b.try_acquire(7 * UNIT).is_none());
        drop(r);
        assert_eq!(b.used(), 0);
        assert!(b.try_acquire(7 * UNIT).is_some());
    }

    /// A reservation larger than the whole budget used to be clamped to it and granted,
    /// so one request could hold more than `memory_limit`. It is refused at once (never
    /// waiting), and nothing is taken; the whole budget itself can still be reserved.
    #[tokio::test]
    async fn a_reservation_over_the_whole_budget_is_refused_up_front() {
        let b = MemoryBudget::new(8 * UNIT);
        let over = OverBudget {
            bytes: 8 * UNIT + 1,
            limit: 8 * UNIT,
        };
        assert_eq!(b.check(8 * UNIT + 1), Err(over));
        assert_eq!(b.acquire(8 * UNIT + 1).await.unwrap_err(), over);
        assert!(b.try_acquire(100 * UNIT).is_none());
        assert!(b.try_acquire_shedding(100 * UNIT).is_none());
        assert_eq!(b.used(), 0, "nothing taken");
        // Refused even while the budget is busy: no waiting for what can never come.
        let held = b.acquire(UNIT).await.unwrap();
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), b.acquire(9 * UNIT))
            .await
            .expect("refused without waiting");
        assert!(refused.is_err());
        drop(held);
        assert_eq!(b.check(8 * UNIT), Ok(()));
        let all = b.acquire(8 * UNIT).await.unwrap();
        assert_eq!(b.available(), 0);
        drop(all);
        assert_eq!(b.available(), 8 * UNIT);
    }

    #[tokio::test]
    async fn shedding_leaves_a_quarter_free() {
        let b = MemoryBudget::new(8 * UNIT);
        let r = b
            .try_acquire_shedding(6 * UNIT)
            .expect("fits above the reserve");
        assert!(
            b.try_acquire_shedding(UNIT).is_none(),
            "would dip into the reserve"
        );
        assert!(
            b.try_acquire(2 * UNIT).is_some(),
            "the reserve is there for others"
        );
        drop(r);
        assert!(b.try_acquire_shedding(7 * UNIT).is_none());
    }

    #[tokio::test]
    async fn a_credit_pays_for_what_it_covers_and_gives_back_the_rest() {
        let b = MemoryBudget::new(16 * UNIT);
        let credit = Credit::new(b.acquire(6 * UNIT).await.unwrap());
        let first = credit.take(&b, 2 * UNIT + 1).expect("covered");
        assert_eq!(first.bytes(), 2 * UNIT + 1);
        assert_eq!(
            b.used(),
            6 * UNIT,
            "drawn from the credit, nothing new taken"
        );
        let second = credit.take(&b, 2 * UNIT).expect("covered");
        assert_eq!(b.used(), 6 * UNIT);
        drop(credit);
        assert_eq!(b.used(), 5 * UNIT, "the unit left over went back");
        drop((first, second));
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_credit_is_topped_up_only_without_waiting() {
        let b = MemoryBudget::new(16 * UNIT);
        let credit = Credit::new(b.acquire(2 * UNIT).await.unwrap());
        let r = credit
            .take(&b, 5 * UNIT)
            .expect("2 from the credit, 3 from the budget");
        assert_eq!(b.used(), 5 * UNIT);
        assert!(
            credit.take(&b, UNIT).is_none(),
            "the credit is spent: the caller acquires on its own"
        );
        drop(r);
        assert_eq!(b.used(), 0);
    }

    /// The deadlock rule: a push the credit cannot cover, even topped up, gives the
    /// whole credit back before its caller waits for budget.
    #[tokio::test]
    async fn a_credit_that_falls_short_is_given_back_whole() {
        let b = MemoryBudget::new(8 * UNIT);
        let other = b.acquire(4 * UNIT).await.unwrap();
        let credit = Credit::new(b.acquire(3 * UNIT).await.unwrap());
        assert!(credit.take(&b, 6 * UNIT).is_none(), "3 held + 1 free < 6");
        assert_eq!(b.used(), 4 * UNIT, "the credit went back to the budget");
        assert!(credit.take(&b, UNIT).is_none(), "and stays empty");
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), b.acquire(4 * UNIT))
            .await
            .expect("the budget the credit held is free for whoever waits");
        drop((waited, other));
        assert_eq!(b.used(), 0);
    }

    /// An overdraft holds back whoever waits until released memory has paid it, and
    /// every unit comes back once everything is dropped, in either order.
    #[tokio::test]
    async fn an_overdraft_is_paid_before_waiters_get_memory() {
        use std::time::Duration;
        for overdrawn_first in [true, false] {
            let b = MemoryBudget::new(8 * UNIT);
            let held = b.acquire(6 * UNIT).await.unwrap();
            let batch = b.take_now(5 * UNIT);
            assert_eq!(b.available(), 0, "the 2 free units were taken");
            assert_eq!(b.used(), 11 * UNIT, "3 units overdrawn, counted as used");
            let waiter = {
                let b = b.clone();
                tokio::spawn(async move { b.acquire(4 * UNIT).await.unwrap() })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished());
            if overdrawn_first {
                drop(batch);
                // The overdraft was never paid: cancelled; the 2 units it held go to the
                // waiter, which needs 4.
                assert_eq!(b.debt.owed(), 0);
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!waiter.is_finished());
                drop(held);
            } else {
                drop(held);
                // 3 of the 6 released units paid the overdraft: 3 left for the waiter,
                // which needs 4.
                assert_eq!(b.debt.owed(), 0);
                assert_eq!(b.debt.state.lock().covered, 3);
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!waiter.is_finished(), "the debt came first");
                drop(batch);
            }
            let got = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("the waiter gets its memory once the overdraft is gone")
                .unwrap();
            drop(got);
            assert_eq!(b.used(), 0);
            assert_eq!(b.available(), 8 * UNIT, "no unit lost or made up");
        }
    }

    /// `take_now` never waits and never refuses, even past the whole budget; a free
    /// budget is simply drawn from.
    #[tokio::test]
    async fn take_now_draws_what_is_free_and_never_refuses() {
        let b = MemoryBudget::new(4 * UNIT);
        let small = b.take_now(UNIT + 1);
        assert_eq!(b.used(), 2 * UNIT);
        let huge = b.take_now(100 * UNIT);
        assert_eq!(
            b.used(),
            101 * UNIT + UNIT,
            "2 + 100 units, 98 of them overdrawn"
        );
        assert!(b.try_acquire(UNIT).is_none());
        drop(small);
        assert_eq!(b.available(), 0, "released units pay the overdraft");
        let mut merged = b.take_now(UNIT);
        merged.merge(huge);
        drop(merged);
        assert_eq!(b.used(), 0);
        assert_eq!(b.available(), 4 * UNIT);
    }

    /// Bodies never hold more than half the budget, so a stalled destination keeping its
    /// batches cannot take the memory everyone else needs.
    #[tokio::test]
    async fn bodies_hold_at_most_half_the_budget() {
        let b = MemoryBudget::new(8 * UNIT);
        let first = b.take_body(3 * UNIT);
        assert_eq!(first.bytes(), 3 * UNIT);
        let over = b.take_body(2 * UNIT);
        assert_eq!(over.bytes(), 0, "3 + 2 > 4: uncounted");
        assert_eq!(b.used(), 3 * UNIT);
        let fits = b.take_body(UNIT);
        assert_eq!(fits.bytes(), UNIT);
        drop(first);
        assert_eq!(
            b.take_body(3 * UNIT).bytes(),
            3 * UNIT,
            "room again once freed"
        );
        drop(fits);
        assert_eq!(b.used(), 0);
        assert_eq!(b.debt.bodies.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn merge_keeps_both_permits() {
        let b = MemoryBudget::new(8 * UNIT);
        let mut r = b.acquire(2 * UNIT).await.unwrap();
        r.merge(b.acquire(3 * UNIT).await.unwrap());
        assert_eq!(r.bytes(), 5 * UNIT);
        assert_eq!(b.used(), 5 * UNIT);
        drop(r);
        assert_eq!(b.used(), 0);
    }
}
