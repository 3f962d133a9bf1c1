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

/// An error and its causes as one line, `outer: cause: root cause`, like anyhow's `{:#}`,
/// but each message once. Many errors (ours and our dependencies') both format their cause
/// into their own message and return it from `source()`; the plain chain would then print
/// `Not a directory (os error 20): Not a directory (os error 20)`. A cause whose text the
/// previous message already ends with is skipped.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !msg.is_empty() && !last.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        last = msg;
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_prints_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot create {path}: {source}")]
        struct Doubled {
            path: String,
            source: std::io::Error,
        }
        let io = std::io::Error::from_raw_os_error(20);
        let io_text = io.to_string();
        let e = anyhow::Error::new(Doubled {
            path: "/x".into(),
            source: io,
        })
        .context("output f: cannot open its buffer");
        // anyhow alone repeats the root cause: the regression this guards against.
        assert_eq!(format!("{e:#}").matches(&io_text).count(), 2);
        let line = super::error_chain(e.as_ref());
        assert_eq!(
            line,
            format!("output f: cannot open its buffer: cannot create /x: {io_text}")
        );
        // A cause not repeated by its parent is kept.
        let plain = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(super::error_chain(plain.as_ref()), "top: middle: root");
    }

    #[test]
    fn second_line_within_interval_is_suppressed() {
        assert_eq!(super::permit("test_key_a"), Some(0));
        assert_eq!(super::permit("test_key_a"), None);
        assert_eq!(super::permit("test_key_a"), None);
        assert_eq!(super::permit("test_key_b"), Some(0));
    }
}
