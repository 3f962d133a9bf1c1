//! Retry timing for failed deliveries: exponential backoff with full jitter, server
//! `Retry-After` hints, and the limits a user may set (`retry = { max_elapsed, … }`).
//!
//! Defaults are "retry until the shutdown deadline": logs are worth more than the cost of
//! retrying, and an outage longer than any fixed retry limit is exactly when a limit would
//! drop data (Fluent Bit's `retry_limit 1` is the cautionary tale). Back-pressure, not
//! dropping, is what keeps memory bounded while a destination is down.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::sink::Failure;

/// No delay is ever shorter than this, whatever the jitter draws or a server asks for,
/// so one batch can never retry more than 100 times a second.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(10);

/// A server may ask for a longer pause than `max_backoff` (e.g. `Retry-After: 120` during
/// maintenance). We honour it up to this multiple of `max_backoff` (60 s by default), and
/// never less than [`RETRY_AFTER_MIN_CAP`]: long enough to stop hammering a throttling API,
/// short enough that a bogus hint of hours does not park a batch until the shutdown deadline.
pub(crate) const RETRY_AFTER_CAP_FACTOR: u32 = 2;

/// A `Retry-After` up to this long is always honoured, whatever `max_backoff` says: a small
/// `max_backoff` tunes our own backoff, it is not a licence to retry a throttling server
/// sooner than it asked (`503` + `Retry-After: 1` with `max_backoff = "300ms"` would
/// otherwise be retried after 600 ms).
pub(crate) const RETRY_AFTER_MIN_CAP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid backoff: {0}")]
pub(crate) struct InvalidBackoff(&'static str);

// === impl Backoff ===

/// Exponential backoff with full jitter: the n-th delay (n from 0) is drawn uniformly from
/// `[0, min(max, initial * 2^n)]`, then raised to [`MIN_DELAY`]. Full jitter spreads the
/// retries of many batches (and many tasks) that failed at the same moment.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn try_new(initial: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        if initial < Duration::from_millis(1) {
            return Err(InvalidBackoff("initial_backoff must be at least 1ms"));
        }
        if max < initial {
            return Err(InvalidBackoff(
                "max_backoff must not be less than initial_backoff",
            ));
        }
        Ok(Backoff {
            initial,
            max,
            attempt: 0,
        })
    }

    pub(crate) fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the next draw, without advancing.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Draws the next delay and advances.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        let drawn = Duration::from_nanos(rand::rng().random_range(0..=nanos));
        drawn.max(MIN_DELAY)
    }

    #[cfg(test)]
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

// === impl RetryPolicy ===

/// What a user configures under `retry = { … }`.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Ceiling of the first delay. Default 100 ms: quick enough that a single dropped
    /// connection costs nothing noticeable.
    pub initial_backoff: Duration,
    /// Ceiling every later delay grows to. Default 30 s.
    pub max_backoff: Duration,
    /// Give up on a batch this long after its first attempt. Default `None`: retry until
    /// delivered or until the shutdown deadline.
    pub max_elapsed: Option<Duration>,
    /// Give up after this many retries (attempts − 1). Default `None`: no limit.
    pub max_retries: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_elapsed: None,
            max_retries: None,
        }
    }
}

impl RetryPolicy {
    /// Checks the values; config loading should call this to report errors at startup.
    pub(crate) fn validate(&self) -> Result<(), InvalidBackoff> {
        Backoff::try_new(self.initial_backoff, self.max_backoff).map(|_| ())
    }

    /// Retry state for one batch, started now. Out-of-range values (which `validate`
    /// reports at config time) are forced into range rather than panicking here.
    pub(crate) fn start(&self) -> RetryState {
        let initial = self.initial_backoff.max(Duration::from_millis(1));
        RetryState {
            backoff: Backoff {
                initial,
                max: self.max_backoff.max(initial),
                attempt: 0,
            },
            started: Instant::now(),
            retries: 0,
            max_elapsed: self.max_elapsed,
            max_retries: self.max_retries,
        }
    }
}

// === impl RetryState ===

/// Tracks the retries of one batch (and of the batches rebuilt from its failed items).
#[derive(Clone, Debug)]
pub(crate) struct RetryState {
    backoff: Backoff,
    started: Instant,
    retries: u32,
    max_elapsed: Option<Duration>,
    max_retries: Option<u32>,
}

impl RetryState {
    /// The delay before retrying after `failure`, or `None` when the batch must be given up
    /// (permanent failure, retry limit reached, or the delay would end past `max_elapsed`).
    pub(crate) fn next(&mut self, failure: &Failure) -> Option<Duration> {
        if !failure.retryable {
            return None;
        }
        if self.max_retries.is_some_and(|max| self.retries >= max) {
            return None;
        }
        let jittered = self.backoff.next_delay();
        let delay = match failure.retry_after {
            // The server knows its own recovery time better than our jitter does.
            Some(hint) if !hint.is_zero() => {
                let cap = self
                    .backoff
                    .max()
                    .saturating_mul(RETRY_AFTER_CAP_FACTOR)
                    .max(RETRY_AFTER_MIN_CAP);
                hint.min(cap).max(MIN_DELAY)
            }
            _ => jittered,
        };
        if let Some(max) = self.max_elapsed
            && self.started.elapsed() + delay > max
        {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }

    /// Retries scheduled so far.
    #[cfg(test)]
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn constructor_rejects_bad_values() {
        assert!(Backoff::try_new(ms(0), ms(10)).is_err());
        assert!(Backoff::try_new(ms(100), ms(10)).is_err());
        assert!(Backoff::try_new(ms(100), ms(100)).is_ok());
        let bad = RetryPolicy {
            max_backoff: ms(1),
            ..RetryPolicy::default()
        };
        assert!(bad.validate().is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }

    #[test]
    fn ceiling_doubles_up_to_max_and_draws_stay_inside() {
        let mut b = Backoff::try_new(ms(100), ms(1000)).unwrap();
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c.max(MIN_DELAY), "{d:?} > {c:?}");
            assert!(d >= MIN_DELAY);
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        // Huge attempt counts must not overflow.
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), ms(1000));
        b.reset();
        assert_eq!(b.ceiling(), ms(100));
    }

    #[test]
    fn jitter_is_full_not_constant() {
        let mut b = Backoff::try_new(ms(1000), ms(1000)).unwrap();
        let draws: Vec<_> = (0..200).map(|_| b.next_delay()).collect();
        assert!(draws.iter().any(|d| *d < ms(300)), "no low draws");
        assert!(draws.iter().any(|d| *d > ms(700)), "no high draws");
    }

    #[tokio::test(start_paused = true)]
    async fn max_retries_and_permanent_stop_retrying() {
        let policy = RetryPolicy {
            max_retries: Some(2),
            ..RetryPolicy::default()
        };
        let mut st = policy.start();
        let f = Failure::retryable("throttled", "slow down");
        assert!(st.next(&f).is_some());
        assert!(st.next(&f).is_some());
        assert_eq!(st.next(&f), None);
        let mut st = RetryPolicy::default().start();
        assert_eq!(st.next(&Failure::permanent("access_denied", "no")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_is_measured_from_first_attempt() {
        let policy = RetryPolicy {
            initial_backoff: ms(100),
            max_backoff: ms(100),
            max_elapsed: Some(Duration::from_secs(1)),
            max_retries: None,
        };
        let mut st = policy.start();
        let f = Failure::retryable("server_error", "503");
        let mut slept = Duration::ZERO;
        while let Some(d) = st.next(&f) {
            tokio::time::sleep(d).await;
            slept += d;
            assert!(slept <= Duration::from_secs(1));
        }
        // At least ten 100 ms-ceiling retries fit (MIN_DELAY floor is 10 ms).
        assert!(st.retries() >= 10, "only {} retries", st.retries());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_and_clamped() {
        let policy = RetryPolicy {
            max_backoff: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        let mut st = policy.start();
        let mut f = Failure::retryable("throttled", "429");
        f.retry_after = Some(Duration::from_secs(7));
        assert_eq!(st.next(&f), Some(Duration::from_secs(7)));
        f.retry_after = Some(Duration::from_secs(3600));
        assert_eq!(st.next(&f), Some(Duration::from_secs(60)));
        // A small max_backoff does not cut a server's hint short (up to RETRY_AFTER_MIN_CAP).
        let mut st = RetryPolicy {
            initial_backoff: ms(5),
            max_backoff: ms(10),
            ..RetryPolicy::default()
        }
        .start();
        f.retry_after = Some(Duration::from_secs(1));
        assert_eq!(st.next(&f), Some(Duration::from_secs(1)));
        f.retry_after = Some(Duration::from_secs(3600));
        assert_eq!(st.next(&f), Some(RETRY_AFTER_MIN_CAP));
        // Zero means "no hint": falls back to jittered backoff, still never a tight loop.
        f.retry_after = Some(Duration::ZERO);
        let d = st.next(&f).unwrap();
        assert!(d >= MIN_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_by_default_with_growing_delays() {
        let mut st = RetryPolicy::default().start();
        let f = Failure::retryable("timeout", "t");
        let mut total = Duration::ZERO;
        for _ in 0..1000 {
            let d = st.next(&f).expect("default policy never gives up");
            assert!(d >= MIN_DELAY && d <= Duration::from_secs(30));
            total += d;
        }
        // 1000 retries with a 30 s ceiling: mean ~15 s each, far from a tight loop.
        assert!(total > Duration::from_secs(3600), "total {total:?}");
    }
}
