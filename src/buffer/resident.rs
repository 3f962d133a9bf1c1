//! Counts, in the memory budget, the memory the process holds that no reservation does.
//!
//! Reservations count records, request buffers and batch bodies at their size, but the
//! process holds more than that: the allocator's rounding and fragmentation, queue
//! capacity, compressors and their output, connection pools. In the 2,000,000-record
//! burst of issue #10 (three outputs, `memory_limit = "32MiB"`) the budget held its 32 MiB
//! while the process held ~47 MiB of anonymous memory, ~36 MiB of it allocated and live
//! (glibc's `mallinfo2`): ECS kills a sidecar at its container's limit, not at what the
//! budget believes.
//!
//! The governor closes the gap by measurement. Every [`TICK`] it reads the process's
//! anonymous resident memory (Linux: `/proc/self/statm`, resident minus file-backed pages;
//! the code's pages are the fixed cost `memory_limit` does not cover) and holds, as one
//! reservation, what exceeds the budget's own count by more than the process's idle
//! overhead (that excess while nothing was reserved, normally at start) plus [`SLACK`].
//! Held budget is budget the inputs cannot take, so they push back earlier, and the
//! process's resident memory stays near `memory_limit` plus its fixed overhead whatever
//! the allocator does. When the excess shrinks, the hold is given back. While the excess
//! is above the slack it also asks glibc to return free pages to the kernel
//! (`malloc_trim`), at most every [`TRIM_EVERY`]: that is what lets resident memory, and
//! the hold, fall after a burst.
//!
//! Two bounds keep the router moving whatever the measurement says: the hold is at most
//! a quarter of the budget (at half, 120 HTTP clients retrying 900 KB requests on 503 under
//! a 32 MiB budget did not all get in within 4 minutes: `http_input`'s
//! `concurrent_large_posts_stay_within_the_memory_limit`), and never what the largest reservation waiting in
//! [`MemoryBudget::acquire`] needs to fit (so a request the budget can hold is never
//! starved by the governor).

use std::time::{Duration, Instant};

use super::budget::{MemoryBudget, Reservation, UNIT};

/// How often resident memory is read (one small `/proc` read).
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// Excess over the idle overhead that is not held: state built lazily (SDK clients, TLS
/// sessions, connection pools) and the allocator's working margin.
pub(crate) const SLACK: usize = 2 << 20;
/// Least time between two `malloc_trim` calls. A trim walks the heap with the allocator's
/// lock held (a few ms on a heap of tens of MiB), so it is not done on every tick.
pub(crate) const TRIM_EVERY: Duration = Duration::from_millis(500);
/// Changes of the hold smaller than this many units are not made, so the allocator's
/// small ups and downs do not churn the budget.
const STEP_UNITS: usize = 256;
/// How long the excess must stay below the hold before the hold is given back. A trim
/// drops resident memory at once, and a burst that is still going fills it again within
/// ~100 ms; given back at once, the hold let the inputs refill the heap after every
/// trim, and resident memory swung with it (issue #10's burst: 46 → 28 → 39 MiB anon).
pub(crate) const GIVE_BACK_AFTER: Duration = Duration::from_secs(1);

/// The governor's state; [`step`](Governor::step) is one tick.
pub(crate) struct Governor {
    budget: MemoryBudget,
    held: Reservation,
    /// Least excess of resident memory over the budget's count seen while nothing was
    /// reserved (units): the process's idle overhead. `None` until first seen.
    base: Option<usize>,
    last_trim: Option<Instant>,
    /// Since when the excess has stayed below the hold.
    lower_since: Option<Instant>,
}

impl Governor {
    pub(crate) fn new(budget: MemoryBudget) -> Self {
        Governor {
            budget,
            held: Reservation::empty(),
            base: None,
            last_trim: None,
            lower_since: None,
        }
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.held_units() * UNIT
    }

    /// One tick at `now`, `anon` being the bytes of anonymous memory resident now. Adjusts
    /// the hold: up at once, down once the excess has stayed lower for
    /// [`GIVE_BACK_AFTER`] (or at once, to let a waiting request fit). Returns whether the
    /// excess is above the slack (the caller then trims the heap).
    pub(crate) fn step(&mut self, anon: usize, now: Instant) -> bool {
        let held = self.held.held_units();
        // What everyone else has reserved: the excess is measured against that, or the
        // hold would count itself.
        let others = (self.budget.used() / UNIT).saturating_sub(held);
        let excess = (anon / UNIT).saturating_sub(others);
        // The idle overhead is read only when nothing is reserved: under load, memory is
        // reserved before it is allocated, and the excess then reads low.
        if others == 0 {
            self.base = Some(self.base.map_or(excess, |b| b.min(excess)));
        }
        let Some(base) = self.base else {
            return false;
        };
        let over = excess.saturating_sub(base + SLACK / UNIT);
        let limit = self.budget.limit() / UNIT;
        let cap = (limit / 4).min(limit.saturating_sub(self.budget.largest_wait() / UNIT));
        let target = over.min(cap);
        if target >= held {
            self.lower_since = None;
            if target >= held + STEP_UNITS {
                let more = self.budget.take_now((target - held) * UNIT);
                self.held.merge(more);
            }
        } else if held > cap {
            self.held.give_back(held - cap);
        } else {
            let since = *self.lower_since.get_or_insert(now);
            if now.duration_since(since) >= GIVE_BACK_AFTER && target + STEP_UNITS <= held {
                self.held.give_back(held - target);
                self.lower_since = None;
            }
        }
        self.budget.set_unattributed(self.held());
        over > 0
    }

    /// [`step`](Self::step) plus the trim it may call for.
    fn tick(&mut self, anon: usize) {
        if self.step(anon, Instant::now())
            && self.last_trim.is_none_or(|t| t.elapsed() >= TRIM_EVERY)
        {
            trim_heap();
            self.last_trim = Some(Instant::now());
        }
    }
}

/// Starts the governor on the current runtime; `None` where resident memory cannot be
/// read (not Linux), and then the budget counts reservations only.
pub(crate) fn spawn(budget: MemoryBudget) -> Option<tokio::task::JoinHandle<()>> {
    anon_resident()?;
    let mut governor = Governor::new(budget);
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Some(anon) = anon_resident() {
                governor.tick(anon);
            }
        }
    }))
}

/// Anonymous resident memory of this process in bytes: `/proc/self/statm`'s resident
/// pages minus its shared (file-backed and shmem) pages, as proc(5) describes them.
/// `None` where there is no such file.
pub(crate) fn anon_resident() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_ascii_whitespace().skip(1);
    let resident: usize = fields.next()?.parse().ok()?;
    let shared: usize = fields.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared) * page_size())
}

fn page_size() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf reads a constant of the running system; no memory is touched.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            return n as usize;
        }
    }
    4096
}

/// Returns the heap's free pages to the kernel (glibc only; elsewhere a no-op).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives free memory inside the allocator back to the kernel,
    // under the allocator's own lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// `ms` milliseconds after `t0`.
    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn the_excess_beyond_idle_overhead_and_slack_is_held_and_given_back() {
        let budget = MemoryBudget::new(32 * MIB);
        let mut g = Governor::new(budget.clone());
        let t0 = Instant::now();
        // Idle: 3 MiB resident, nothing reserved. That is the base.
        assert!(!g.step(3 * MIB, t0));
        assert_eq!(g.held(), 0);
        // 10 MiB of records reserved, 21 MiB resident: 8 MiB beyond what they explain
        // and the idle 3 MiB, 6 MiB beyond the slack.
        let records = budget.acquire(10 * MIB).await.unwrap();
        assert!(g.step(21 * MIB, at(t0, 50)));
        assert_eq!(g.held(), 6 * MIB);
        assert_eq!(budget.used(), 16 * MIB);
        assert_eq!(budget.unattributed(), 6 * MIB);
        // Held budget is budget nobody else gets.
        assert!(budget.try_acquire(17 * MIB).is_none());
        assert!(budget.try_acquire(16 * MIB).is_some());
        // The records go and so does most of what came with them. The hold stays until
        // the excess has been lower for a second (a trim's dip is not the end of a burst).
        drop(records);
        assert!(!g.step(4 * MIB, at(t0, 100)));
        assert_eq!(g.held(), 6 * MIB);
        assert!(
            g.step(11 * MIB, at(t0, 600)),
            "back up to the hold: the wait starts again"
        );
        assert!(!g.step(4 * MIB, at(t0, 700)));
        assert!(!g.step(4 * MIB, at(t0, 1600)));
        assert_eq!(g.held(), 6 * MIB);
        assert!(!g.step(4 * MIB, at(t0, 1700)));
        assert_eq!(g.held(), 0);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.available(), budget.limit());
    }

    #[tokio::test]
    async fn the_hold_is_at_most_a_quarter_of_the_budget_and_overdraws_rather_than_wait() {
        let budget = MemoryBudget::new(32 * MIB);
        let mut g = Governor::new(budget.clone());
        let t0 = Instant::now();
        g.step(2 * MIB, t0);
        let records = budget.acquire(30 * MIB).await.unwrap();
        assert!(g.step(100 * MIB, at(t0, 50)));
        assert_eq!(g.held(), 8 * MIB, "capped at a quarter of the budget");
        // Only 2 MiB were free: the rest is a debt the records' release pays first.
        assert_eq!(budget.used(), 38 * MIB);
        drop(records);
        assert_eq!(budget.available(), 24 * MIB);
        // Still over: the hold stays; once resident memory falls, it goes.
        g.step(100 * MIB, at(t0, 100));
        assert_eq!(g.held(), 8 * MIB);
        g.step(2 * MIB, at(t0, 150));
        g.step(2 * MIB, at(t0, 1150));
        assert_eq!(g.held(), 0);
        assert_eq!(budget.available(), budget.limit());
    }

    #[tokio::test]
    async fn a_waiting_request_is_never_starved_by_the_hold() {
        let budget = MemoryBudget::new(32 * MIB);
        let mut g = Governor::new(budget.clone());
        let t0 = Instant::now();
        g.step(2 * MIB, t0);
        let small = budget.acquire(4 * MIB).await.unwrap();
        g.step(60 * MIB, at(t0, 50));
        assert_eq!(g.held(), 8 * MIB);
        // A request for 28 MiB fits the budget but not beside the hold and `small`.
        let b2 = budget.clone();
        let big = tokio::spawn(async move { b2.acquire(28 * MIB).await.map(|r| r.bytes()) });
        while budget.largest_wait() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.largest_wait(), 28 * MIB);
        // Resident memory stays high, yet the governor keeps only what leaves the
        // request room: 32 - 28 = 4 MiB, at once.
        g.step(60 * MIB, at(t0, 100));
        assert_eq!(g.held(), 4 * MIB);
        drop(small);
        let got = tokio::time::timeout(Duration::from_secs(5), big)
            .await
            .expect("the request is granted once `small` goes")
            .unwrap()
            .unwrap();
        assert_eq!(got, 28 * MIB);
        assert_eq!(budget.largest_wait(), 0);
    }

    #[test]
    fn nothing_is_held_before_the_idle_overhead_is_seen() {
        let budget = MemoryBudget::new(32 * MIB);
        let _records = budget.try_acquire(8 * MIB).unwrap();
        let mut g = Governor::new(budget.clone());
        assert!(!g.step(200 * MIB, Instant::now()));
        assert_eq!(g.held(), 0);
    }

    #[test]
    fn this_process_has_anonymous_resident_memory() {
        let anon = anon_resident().expect("/proc/self/statm on Linux");
        assert!(anon > 0 && anon < 64 << 30, "{anon}");
    }
}
