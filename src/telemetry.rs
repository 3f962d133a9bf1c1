//! The router's own logs: `tracing` to stderr, with rate limiting for floods.
//!
//! A client sending a million bad frames must produce one line per interval with a count,
//! not a million lines (which would itself become the outage).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often one kind of repeated warning may be printed.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

struct Slot {
    last: Instant,
    suppressed: u64,
}

fn slots() -> &'static Mutex<HashMap<&'static str, Slot>> {
    static SLOTS: OnceLock<Mutex<HashMap<&'static str, Slot>>> = OnceLock::new();
    SLOTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Returns `Some(n)` when a line with key `key` may be printed now, `n` being how many
/// were suppressed since the last one; `None` when it must be suppressed.
pub fn permit(key: &'static str) -> Option<u64> {
    let now = Instant::now();
    let mut map = slots().lock();
    match map.get_mut(key) {
        None => {
            map.insert(
                key,
                Slot {
                    last: now,
                    suppressed: 0,
                },
            );
            Some(0)
        }
        Some(slot) if now.duration_since(slot.last) >= LOG_INTERVAL => {
            let n = slot.suppressed;
            slot.last = now;
            slot.suppressed = 0;
            Some(n)
        }
        Some(slot) => {
            slot.suppressed += 1;
            None
        }
    }
}

/// `warn_limited!("forward_decode", "bad frame from {}: {}", peer, err)` prints at most one
/// line per [`LOG_INTERVAL`] for each key, with the count of suppressed lines.
#[macro_export]
macro_rules! warn_limited {
    ($key:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $crate::telemetry::permit($key) {
            if suppressed > 0 {
                tracing::warn!(suppressed, "{} ({} similar messages suppressed)", format_args!($($arg)+), suppressed);
            } else {
                tracing::warn!("{}", format_args!($($arg)+));
            }
        }
    };
}

/// Installs the stderr logger. `RUST_LOG` overrides `level`.
pub fn init(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn second_line_within_interval_is_suppressed() {
        assert_eq!(super::permit("test_key_a"), Some(0));
        assert_eq!(super::permit("test_key_a"), None);
        assert_eq!(super::permit("test_key_a"), None);
        assert_eq!(super::permit("test_key_b"), Some(0));
    }
}
