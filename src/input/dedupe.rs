//! `dedupe = { window = "10m", max_keys = 100000 }`: drops events an input has already
//! taken, by a key the input's format names (EventBridge: the event `id`; SNS and SQS:
//! `MessageId`).
//!
//! EventBridge API destinations, SNS and SQS all deliver at least once: a sender that timed
//! out, or whose answer was lost, sends the same event again (EventBridge user guide, *API
//! destinations*; SNS developer guide, *Amazon SNS message delivery retries*; SQS developer
//! guide, *Amazon SQS standard queues*: at-least-once delivery). A key is remembered only once its event was buffered ([`Dedupe::remember`],
//! after the input's acceptance), so a request that was refused (503) is taken when it is
//! retried, never dropped as a "duplicate" of something that was not kept. A duplicate is
//! answered like an accepted event (it is stored already) and counted in
//! `firelane_input_duplicates_total{input}`.
//!
//! Memory is bounded: at most `max_keys` keys, the oldest forgotten first, each kept for
//! `window` after it was first taken. The keys' memory is reserved from the process memory
//! budget as the set grows (in steps of [`KEYS_PER_STEP`]); when the budget cannot give
//! more, the oldest keys are forgotten early instead (a later repeat of one of them is
//! delivered twice, which at-least-once allows; nothing is lost).
//!
//! Two requests carrying the same key at the same moment are both taken (the key is
//! remembered after buffering, and waiting for the other request could hold a sender past
//! its timeout): de-duplication makes repeats rare, not impossible.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use parking_lot::Mutex;

use crate::buffer::budget::{MemoryBudget, Reservation};
use crate::config::reader::{Diagnostics, Table};

/// The `dedupe` settings of an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DedupeConfig {
    /// How long a key is remembered after its event was taken. Default 10 minutes (SNS
    /// retries for up to an hour with a custom policy, API destinations for 24 h, but the
    /// repeats that matter, after a lost answer, come within seconds to minutes).
    pub window: Duration,
    /// Most keys remembered at once; beyond it the oldest are forgotten. Default 100 000.
    pub max_keys: usize,
}

impl DedupeConfig {
    pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
    pub(crate) const DEFAULT_MAX_KEYS: usize = 100_000;
    /// Largest `max_keys` accepted: about 1.5 GiB of keys, far past any sidecar's memory.
    pub(crate) const MAX_MAX_KEYS: u64 = 10_000_000;
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window: Self::DEFAULT_WINDOW,
            max_keys: Self::DEFAULT_MAX_KEYS,
        }
    }
}

/// Reads the `dedupe` key of an input's table `t`: a table with `window` and `max_keys`
/// (both optional). `None` when the key is absent (or wrong, with the error in `d`).
pub(crate) fn read(t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Option<DedupeConfig> {
    let mut a = t.opt_table(d, "dedupe")?;
    let mut cfg = DedupeConfig::default();
    if let Some(w) = a.opt_duration(d, "window") {
        if w.is_zero() {
            d.error(
                a.value_span("window"),
                format!(
                    "{}.window: must be more than 0 (remove `dedupe` to turn it off)",
                    a.path()
                ),
            );
        } else {
            cfg.window = w;
        }
    }
    if let Some(n) = a.opt_u64(d, "max_keys") {
        if n == 0 || n > DedupeConfig::MAX_MAX_KEYS {
            d.error(
                a.value_span("max_keys"),
                format!(
                    "{}.max_keys: must be between 1 and {}",
                    a.path(),
                    DedupeConfig::MAX_MAX_KEYS
                ),
            );
        } else {
            cfg.max_keys = n as usize;
        }
    }
    a.finish_expecting(d, &["window", "max_keys"]);
    Some(cfg)
}

/// Memory reserved per remembered key: the key text (an EventBridge `id` or SNS
/// `MessageId` is a 36-character UUID), its `Arc`, a hash map slot and a queue slot.
pub(crate) const BYTES_PER_KEY: usize = 160;

/// Keys whose memory is reserved from the budget at once.
pub(crate) const KEYS_PER_STEP: usize = 1024;

/// What [`Dedupe::filter`] kept of a batch.
#[derive(Debug)]
pub(crate) struct Filtered<T> {
    /// The items not seen before, in their order.
    pub fresh: Vec<T>,
    /// The keys of `fresh` (those that have one), to [`Dedupe::remember`] once they are
    /// buffered.
    pub keys: Vec<Arc<str>>,
    /// How many items were dropped as repeats (already counted).
    pub duplicates: usize,
}

/// The keys one input has taken recently. Shared by all its connections (and pollers).
pub(crate) struct Dedupe {
    cfg: DedupeConfig,
    seen: Mutex<Seen>,
    budget: Option<MemoryBudget>,
    duplicates: Counter,
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe").field("cfg", &self.cfg).finish()
    }
}

#[derive(Default)]
struct Seen {
    /// Key -> when it was taken.
    at: HashMap<Arc<str>, Instant>,
    /// The same keys, oldest first (times never decrease: they are read under the lock).
    order: VecDeque<(Instant, Arc<str>)>,
    /// Budget held for the keys: one reservation per [`KEYS_PER_STEP`] keys of capacity.
    reserved: Vec<Reservation>,
}

impl Dedupe {
    /// A key set for input `input`, its memory reserved from `budget` (none: not counted,
    /// for tests and tools).
    pub(crate) fn new(cfg: DedupeConfig, input: &str, budget: Option<MemoryBudget>) -> Self {
        Dedupe {
            cfg,
            seen: Mutex::new(Seen::default()),
            budget,
            duplicates: metrics::counter!("firelane_input_duplicates_total", "input" => input.to_string()),
        }
    }

    /// Splits `items` into the ones whose key was not taken within the window (nor earlier
    /// in `items`) and repeats, which are dropped and counted. An item without a key
    /// (`key_of` gives `None`) is always fresh.
    pub(crate) fn filter<T>(
        &self,
        items: Vec<T>,
        key_of: impl Fn(&T) -> Option<&str>,
    ) -> Filtered<T> {
        self.filter_at(Instant::now(), items, key_of)
    }

    fn filter_at<T>(
        &self,
        now: Instant,
        items: Vec<T>,
        key_of: impl Fn(&T) -> Option<&str>,
    ) -> Filtered<T> {
        let mut fresh = Vec::with_capacity(items.len());
        let mut keys: Vec<Arc<str>> = Vec::with_capacity(items.len());
        // Repeats inside one batch; a set, so a body of many small events stays linear.
        let mut batch: HashSet<Arc<str>> = HashSet::new();
        let mut duplicates = 0;
        {
            let mut seen = self.seen.lock();
            seen.expire(now, self.cfg.window);
            for item in items {
                let Some(key) = key_of(&item) else {
                    fresh.push(item);
                    continue;
                };
                if seen.at.contains_key(key) || batch.contains(key) {
                    duplicates += 1;
                    continue;
                }
                let key: Arc<str> = Arc::from(key);
                batch.insert(key.clone());
                keys.push(key);
                fresh.push(item);
            }
        }
        if duplicates > 0 {
            self.duplicates.increment(duplicates as u64);
        }
        Filtered {
            fresh,
            keys,
            duplicates,
        }
    }

    /// Remembers `keys` as taken now. Call only once their events are buffered.
    pub(crate) fn remember(&self, keys: Vec<Arc<str>>) {
        self.remember_at(Instant::now(), keys);
    }

    fn remember_at(&self, now: Instant, keys: Vec<Arc<str>>) {
        if keys.is_empty() {
            return;
        }
        let mut seen = self.seen.lock();
        // Times in `order` never decrease: a caller's `now` older than the newest entry
        // (taken before the lock) counts as that entry's time.
        let now = seen.order.back().map_or(now, |(t, _)| now.max(*t));
        seen.expire(now, self.cfg.window);
        for key in keys {
            if seen.at.contains_key(&key) {
                // Taken twice at once (see the module docs): the first time stands.
                continue;
            }
            if seen.at.len() >= self.capacity(&mut seen) {
                seen.forget_oldest();
            }
            seen.at.insert(key.clone(), now);
            seen.order.push_back((now, key));
        }
        seen.release_unused();
    }

    /// How many keys fit now: `max_keys`, or fewer while the budget cannot hold them.
    /// Grows the reservation by a step when the set is full and the budget allows.
    fn capacity(&self, seen: &mut Seen) -> usize {
        let Some(budget) = &self.budget else {
            return self.cfg.max_keys;
        };
        let reserved_keys = seen.reserved.len() * KEYS_PER_STEP;
        if seen.at.len() >= reserved_keys && reserved_keys < self.cfg.max_keys {
            // Shedding: key memory is a convenience and must not take the memory that
            // buffers and inputs need to keep taking records.
            if let Some(r) = budget.try_acquire_shedding(KEYS_PER_STEP * BYTES_PER_KEY) {
                seen.reserved.push(r);
            }
        }
        (seen.reserved.len() * KEYS_PER_STEP).min(self.cfg.max_keys)
    }

    /// Keys remembered now (expired ones may still be counted until the next call).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.lock().at.len()
    }

    /// Whether no key is remembered.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the memory budget held for keys.
    #[cfg(test)]
    pub(crate) fn reserved_bytes(&self) -> usize {
        self.seen
            .lock()
            .reserved
            .iter()
            .map(Reservation::bytes)
            .sum()
    }
}

impl Seen {
    /// Forgets keys taken `window` or longer before `now`.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_duration_since(*t) < window {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.at.remove(&key);
        }
    }

    /// Returns reservation steps more than one step beyond what the keys need (the slack
    /// step avoids giving back and taking again around a boundary).
    fn release_unused(&mut self) {
        let needed = self.at.len().div_ceil(KEYS_PER_STEP) + 1;
        while self.reserved.len() > needed {
            self.reserved.pop();
        }
        if self.at.capacity() > 4 * self.at.len().max(KEYS_PER_STEP) {
            self.at.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dd(window_s: u64, max_keys: usize) -> Dedupe {
        Dedupe::new(
            DedupeConfig {
                window: Duration::from_secs(window_s),
                max_keys,
            },
            "t",
            None,
        )
    }

    fn ids(v: &[&'static str]) -> Vec<&'static str> {
        v.to_vec()
    }

    fn key<'a>(s: &'a &'static str) -> Option<&'a str> {
        (!s.is_empty()).then_some(*s)
    }

    #[test]
    fn repeats_within_the_window_are_dropped_after_remembering() {
        let d = dd(60, 100);
        let t0 = Instant::now();
        let f = d.filter_at(t0, ids(&["a", "b", "a", ""]), key);
        // "a" twice in one batch: the second is a repeat. No key: always fresh.
        assert_eq!(f.fresh, ["a", "b", ""]);
        assert_eq!(f.duplicates, 1);
        // Not remembered yet (say the buffers refused the batch): a retry is fresh.
        let f = d.filter_at(t0, ids(&["a", "b"]), key);
        assert_eq!(f.fresh, ["a", "b"]);
        d.remember_at(t0, f.keys);
        let f = d.filter_at(t0 + Duration::from_secs(59), ids(&["a", "c", "b"]), key);
        assert_eq!(f.fresh, ["c"]);
        assert_eq!(f.duplicates, 2);
        // Window over: "a" is new again.
        let f = d.filter_at(t0 + Duration::from_secs(60), ids(&["a"]), key);
        assert_eq!(f.fresh, ["a"]);
        assert!(d.is_empty(), "expired keys are forgotten");
    }

    #[test]
    fn at_most_max_keys_the_oldest_forgotten_first() {
        let d = dd(3600, 3);
        let t0 = Instant::now();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            d.remember_at(t0 + Duration::from_secs(i as u64), vec![Arc::from(*k)]);
        }
        assert_eq!(d.len(), 3);
        let f = d.filter_at(t0 + Duration::from_secs(5), ids(&["a", "b", "c", "d"]), key);
        assert_eq!(f.fresh, ["a"], "only the oldest key was forgotten");
        // A burst of new keys far past the cap stays at the cap.
        let many: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("k{i}"))).collect();
        d.remember_at(t0 + Duration::from_secs(6), many);
        assert_eq!(d.len(), 3);
        let f = d.filter_at(
            t0 + Duration::from_secs(7),
            vec!["k999".to_string(), "k996".to_string()],
            |s| Some(s.as_str()),
        );
        assert_eq!(f.fresh, ["k996"]);
    }

    #[test]
    fn remembering_twice_keeps_the_first_time() {
        let d = dd(10, 100);
        let t0 = Instant::now();
        d.remember_at(t0, vec![Arc::from("a")]);
        d.remember_at(t0 + Duration::from_secs(5), vec![Arc::from("a")]);
        assert_eq!(d.len(), 1);
        let f = d.filter_at(t0 + Duration::from_secs(10), ids(&["a"]), key);
        assert_eq!(f.fresh, ["a"], "window counts from the first time");
    }

    #[test]
    fn key_memory_comes_from_the_budget_and_goes_back() {
        let budget = MemoryBudget::new(64 << 20);
        let d = Dedupe::new(
            DedupeConfig {
                window: Duration::from_secs(60),
                max_keys: 100_000,
            },
            "t",
            Some(budget.clone()),
        );
        let t0 = Instant::now();
        let keys: Vec<Arc<str>> = (0..5000).map(|i| Arc::from(format!("id-{i}"))).collect();
        d.remember_at(t0, keys);
        assert_eq!(d.len(), 5000);
        let held = d.reserved_bytes();
        assert!(held >= 5000 * BYTES_PER_KEY, "{held}");
        assert!(held <= (5000 + 2 * KEYS_PER_STEP) * BYTES_PER_KEY, "{held}");
        assert!(budget.used() >= held);
        // Expired: the next call forgets them and returns the budget but a slack step.
        d.remember_at(t0 + Duration::from_secs(61), vec![Arc::from("new")]);
        assert_eq!(d.len(), 1);
        assert!(d.reserved_bytes() <= 2 * KEYS_PER_STEP * BYTES_PER_KEY);
    }

    #[test]
    fn a_spent_budget_forgets_early_instead_of_growing() {
        // Enough for two steps of keys; shedding keeps a quarter of the budget free.
        let budget = MemoryBudget::new(4 * KEYS_PER_STEP * BYTES_PER_KEY);
        let d = Dedupe::new(DedupeConfig::default(), "t", Some(budget.clone()));
        let keys: Vec<Arc<str>> = (0..10 * KEYS_PER_STEP)
            .map(|i| Arc::from(format!("id-{i}")))
            .collect();
        d.remember_at(Instant::now(), keys);
        assert!(d.len() >= KEYS_PER_STEP, "{}", d.len());
        assert!(d.len() <= 3 * KEYS_PER_STEP, "{}", d.len());
        assert!(budget.available() >= budget.limit() / 4);
    }
}
