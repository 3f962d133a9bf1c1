//! The router's own logs: `tracing` to stderr, with rate limiting for floods.
//!
//! A client sending a million bad frames must produce one line per interval with a count,
//! not a million lines (which would itself become the outage).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often one kind of repeated warning may be printed.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

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
pub(crate) fn permit(key: &'static str) -> Option<u64> {
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

/// Installs the stderr logger. `RUST_LOG` overrides `level`. Colours only on a terminal
/// (never in a file or CloudWatch Logs, where escape codes are noise) and not with
/// `NO_COLOR`. Every line passes through [`sanitize_line`]: secrets redacted, one event
/// per line.
pub fn init(level: &str, json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = !json
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(LogWriter { keep_escape: ansi });
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

// ---------------------------------------------------------------------------------------
// Metric descriptions.

/// Every metric firelane exports (README, "Metrics and health"), with its kind, unit and the
/// Prometheus `# HELP` text. The exporter prints a description with its family once the
/// family has a sample.
const METRICS: &[(&str, MetricKind, &str)] = &[
    (
        "firelane_build_info",
        MetricKind::Gauge,
        "Always 1; the version label is the running firelane's version.",
    ),
    (
        "firelane_input_records_total",
        MetricKind::Counter,
        "Records an input accepted (decoded and handed to routing), per input.",
    ),
    (
        "firelane_input_bytes_total",
        MetricKind::Counter,
        "Bytes of requests an input read from clients, as sent on the wire (compressed if sent compressed), per input.",
    ),
    (
        "firelane_input_errors_total",
        MetricKind::Counter,
        "Requests, frames or records an input refused or could not read, per input and kind.",
    ),
    (
        "firelane_input_duplicates_total",
        MetricKind::Counter,
        "Records an input recognised as resent duplicates and dropped, per input.",
    ),
    (
        "firelane_route_records_total",
        MetricKind::Counter,
        "Records a route matched, per route.",
    ),
    (
        "firelane_unrouted_records_total",
        MetricKind::Counter,
        "Records no route took; they are dropped.",
    ),
    (
        "firelane_processor_records_total",
        MetricKind::Counter,
        "Records a processor handled, per processor and result (grep: kept, dropped; parse_json: parsed, not_json, missing; rewrite_tag: rewritten, unchanged; partial and multiline: passed, piece, joined, merged, and the reasons an incomplete line or event was emitted: timeout, max_size, max_lines, interrupted, shutdown; fields: processed).",
    ),
    (
        "firelane_processor_unbuffered_records_total",
        MetricKind::Counter,
        "Records an input's processors emitted that no output buffer took (refused as too large, or buffers closed); their clients get no acknowledgement. Per input.",
    ),
    (
        "firelane_output_received_records_total",
        MetricKind::Counter,
        "Records routed to an output and accepted into its buffer, per output.",
    ),
    (
        "firelane_output_records_total",
        MetricKind::Counter,
        "Records an output finished with, per output and result: sent, retried (per retry), failed, dropped, dead_lettered.",
    ),
    (
        "firelane_output_drops_total",
        MetricKind::Counter,
        "Records an output dropped by a policy the user chose, per output and reason (buffer_full: when_full = \"drop_newest\"; record_too_large: oversize = \"drop\").",
    ),
    (
        "firelane_output_oversize_records_total",
        MetricKind::Counter,
        "Records above the destination's per-record limit, per output and action (split, truncated, renamed: an S3 key shortened to fit).",
    ),
    (
        "firelane_output_bytes_total",
        MetricKind::Counter,
        "Bytes of request payload an output sent to its destination, retries included, per output.",
    ),
    (
        "firelane_output_batches_total",
        MetricKind::Counter,
        "Requests (batches) an output sent to its destination, retries included, per output.",
    ),
    (
        "firelane_output_request_seconds",
        MetricKind::Histogram,
        "Seconds each request to an output's destination took, per output.",
    ),
    (
        "firelane_output_open_partitions",
        MetricKind::Gauge,
        "Open batches (partitions: S3 key, CloudWatch group and stream, ...) an output holds, per output; capped by batch.max_partitions.",
    ),
    (
        "firelane_output_sealed_batches_total",
        MetricKind::Counter,
        "Batches an output sent before they were full or due, per output and reason: pressure (its buffer or the memory budget filled), partitions (batch.max_partitions reached), disk (open batches kept the disk buffer's oldest segment files from being deleted).",
    ),
    (
        "firelane_output_refused_records_total",
        MetricKind::Counter,
        "Records refused before the acknowledgement because an output can never take them, per output and reason.",
    ),
    (
        "firelane_memory_budget_used_bytes",
        MetricKind::Gauge,
        "Bytes runtime.memory_limit's budget holds at the scrape: buffered records, requests being decoded, sealed batch bodies (may pass the limit while outputs overdraw it).",
    ),
    (
        "firelane_memory_budget_limit_bytes",
        MetricKind::Gauge,
        "runtime.memory_limit in bytes (whole KiB).",
    ),
    (
        "firelane_memory_budget_unattributed_bytes",
        MetricKind::Gauge,
        "Part of the budget held for resident memory no reservation counts: anonymous memory beyond what is reserved, the idle overhead and 2 MiB (allocator overhead, fragmentation, queue capacity), at most a quarter of the limit, read every 50 ms.",
    ),
    (
        "firelane_buffer_bytes",
        MetricKind::Gauge,
        "Bytes held in an output's buffer, waiting for delivery, per output (disk buffers: the undelivered bytes that max_size bounds).",
    ),
    (
        "firelane_buffer_disk_bytes",
        MetricKind::Gauge,
        "Bytes of a disk buffer's segment files, delivered records sharing a file with undelivered ones included, per output.",
    ),
    (
        "firelane_buffer_disk_full",
        MetricKind::Gauge,
        "1 while a disk buffer's filesystem is full and its output refuses new records, else 0, per output.",
    ),
    (
        "firelane_buffer_records",
        MetricKind::Gauge,
        "Records held in an output's buffer, waiting for delivery, per output.",
    ),
    (
        "firelane_buffer_replayed_records_total",
        MetricKind::Counter,
        "Records found in an output's disk buffer at start-up and delivered again (a restart may resend some), per output.",
    ),
    (
        "firelane_buffer_quarantined_total",
        MetricKind::Counter,
        "Damaged disk buffer segments moved to the quarantine directory at start-up, per output.",
    ),
    (
        "firelane_ecs_task_stops_total",
        MetricKind::Counter,
        "ECS tasks stopped, from ECS Task State Change events, per cluster, group and stop code.",
    ),
    (
        "firelane_ecs_container_exits_total",
        MetricKind::Counter,
        "ECS containers that exited, from ECS Task State Change events, per cluster, container and exit code.",
    ),
    (
        "firelane_ecs_service_events_total",
        MetricKind::Counter,
        "ECS Service Action events, per cluster, service, event type and event name.",
    ),
    (
        "firelane_ecs_deployments_total",
        MetricKind::Counter,
        "ECS Deployment State Change events, per service and event name.",
    ),
    (
        "firelane_ecs_tasks",
        MetricKind::Gauge,
        "ECS tasks known from events, per cluster, group and last status.",
    ),
    (
        "firelane_ecs_metadata_requests_total",
        MetricKind::Counter,
        "Task Metadata Endpoint /task requests of an ecs_metadata processor, by result (ok, error).",
    ),
    (
        "firelane_ecs_metadata_missing_total",
        MetricKind::Counter,
        "Records an ecs_metadata processor passed on without task metadata (what=task) or without a container name (what=container).",
    ),
    (
        "firelane_processor_held_bytes",
        MetricKind::Gauge,
        "Bytes of the records an input's processors hold (partial lines, multiline events, records waiting for ECS metadata).",
    ),
    (
        "firelane_admin_unauthorized_total",
        MetricKind::Counter,
        "Admin port requests refused for missing or wrong credentials ([admin] auth).",
    ),
];

#[derive(Clone, Copy)]
enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Registers the `# HELP` text (and the unit) of every firelane metric with the installed
/// recorder. Call once, right after installing it; descriptions given before are lost.
pub(crate) fn describe_metrics() {
    for &(name, kind, help) in METRICS {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(name, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, help),
            MetricKind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Secrets and log-line hygiene.

/// Shortest value treated as a secret. Shorter ones ("1", "prod") would turn unrelated
/// text into `***` everywhere, and a real credential is never that short.
pub(crate) const MIN_SECRET_CHARS: usize = 6;

/// What a secret is replaced with.
pub(crate) const REDACTED: &str = "***";

/// The process-wide secrets: every form in which a value may appear in text we print,
/// longest first (so a secret containing another is replaced whole).
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers values to hide from everything firelane shows: `check`'s plan, its log
/// lines and dead-letter error text. Values shorter than [`MIN_SECRET_CHARS`] are ignored.
/// Each value is also registered as it appears JSON- or Debug-escaped (a log field, a
/// JSON log line) and percent-encoded (inside a URL in an HTTP client's error).
pub fn add_secrets<I: IntoIterator<Item = String>>(values: I) {
    let mut forms = Vec::new();
    for v in values {
        if v.chars().count() < MIN_SECRET_CHARS {
            continue;
        }
        let json = serde_json::to_string(&v).unwrap_or_default();
        let json = json.trim_matches('"').to_owned();
        let debug = format!("{v:?}").trim_matches('"').to_owned();
        let percent = percent_encode(&v);
        forms.extend([v, json, debug, percent]);
    }
    if forms.is_empty() {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    secrets.extend(forms);
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
}

/// `text` with every registered secret replaced by [`REDACTED`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), REDACTED));
        }
    }
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, the form a
/// value takes in a URL's query.
fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One formatted log event made safe to print: secrets redacted, and every control
/// character (but a tab, the final newline, and ESC when colours are on) escaped as
/// `\n`, `\r` or `\u{..}`, and so are the Unicode line and paragraph separators. Tags,
/// field names and values from records reach log messages (an error a peer sends back
/// often quotes the record); a raw newline in one would let a client forge a log line.
pub(crate) fn sanitize_line(line: &str, keep_escape: bool) -> Cow<'_, str> {
    let redacted = redact(line);
    let (body, end) = match redacted.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (&*redacted, ""),
    };
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t' && !(keep_escape && c == '\x1b'))
            || matches!(c, '\u{2028}' | '\u{2029}')
    };
    if !body.chars().any(unsafe_char) {
        return redacted;
    }
    let mut out = String::with_capacity(body.len() + 16);
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str(end);
    Cow::Owned(out)
}

/// The logger's writer: stderr, each event through [`sanitize_line`].
#[derive(Clone, Copy)]
struct LogWriter {
    keep_escape: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        *self
    }
}

impl std::io::Write for LogWriter {
    /// The fmt layer formats a whole event into one buffer and writes it with one
    /// `write_all`, so `buf` is one event and its final newline.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let clean = sanitize_line(&text, self.keep_escape);
        std::io::stderr().lock().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
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
    /// Every metric the source registers (`counter!("firelane_…"`, `gauge!`, `histogram!`)
    /// has a description, so a new metric without HELP text fails here.
    #[test]
    fn every_metric_in_the_source_is_described() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).expect("read src").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut used = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read");
            for mac in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(mac) {
                    let rest = text[i + mac.len()..].trim_start();
                    if let Some(name) = rest.strip_prefix("\"firelane_") {
                        let end = name
                            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                            .unwrap_or(0);
                        if name[end..].starts_with('"') && end > 0 {
                            used.push(format!("firelane_{}", &name[..end]));
                        }
                    }
                }
            }
        }
        assert!(used.len() >= 10, "found only {used:?}");
        for name in used {
            assert!(
                super::METRICS.iter().any(|(n, _, _)| *n == name),
                "{name} has no description in telemetry::METRICS"
            );
        }
    }

    /// Every exported metric is documented in the README, the reference users read.
    #[test]
    fn every_described_metric_is_in_the_readme() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .expect("read README.md");
        let missing: Vec<&str> = super::METRICS
            .iter()
            .map(|(n, _, _)| *n)
            .filter(|n| !readme.contains(&format!("`{n}")))
            .collect();
        assert!(missing.is_empty(), "README.md does not name {missing:?}");
    }

    #[test]
    fn secrets_are_redacted_in_every_form_and_short_values_are_not() {
        super::add_secrets(["tok\"en/1234".to_string(), "abc".to_string()]);
        let r = |s: &str| super::redact(s).into_owned();
        assert_eq!(r("url?key=tok\"en/1234&x=1"), "url?key=***&x=1");
        assert_eq!(r(r#"{"m":"tok\"en/1234"}"#), r#"{"m":"***"}"#);
        assert_eq!(r("url?key=tok%22en%2F1234"), "url?key=***");
        assert_eq!(
            r("abc is too short to be a secret"),
            "abc is too short to be a secret"
        );
    }

    #[test]
    fn log_lines_cannot_be_forged_with_control_characters() {
        let line = "WARN bad frame from tag \"a\nERROR forged\r\u{1b}[31m\u{2028}\" (x)\tok\n";
        assert_eq!(
            super::sanitize_line(line, false),
            "WARN bad frame from tag \"a\\nERROR forged\\r\\u{1b}[31m\\u{2028}\" (x)\tok\n"
        );
        // Colours on: our own escape codes stay; the final newline always does.
        assert_eq!(
            super::sanitize_line("\u{1b}[2mx\u{1b}[0m\n", true),
            "\u{1b}[2mx\u{1b}[0m\n"
        );
        assert!(matches!(
            super::sanitize_line("plain line\n", false),
            std::borrow::Cow::Borrowed(_)
        ));
    }

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
