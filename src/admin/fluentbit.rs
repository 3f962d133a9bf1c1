//! Fluent Bit's monitoring endpoints, for FireLens health checks and dashboards written for
//! aws-for-fluent-bit (spec §3.5): `GET /api/v1/uptime`, `/api/v1/health`,
//! `/api/v1/metrics/prometheus`, on the admin port beside `/health` and `/metrics`.
//!
//! - uptime: `{"uptime_sec": N, "uptime_hr": "Fluent Bit has been running:  D day, H hour,
//!   M minute and S seconds"}` (Fluent Bit's `api/v1/uptime` text, kept so that scripts
//!   parsing it keep working).
//! - health: `200 ok` while the router runs, as `/health`. Fluent Bit answers `500 error`
//!   after `HC_Errors_Count` output errors in `HC_Period`, which makes ECS replace the task;
//!   firelane retries each record and keeps it buffered instead, and a replaced task would
//!   lose its memory buffers, so output errors do not fail this check (they show in
//!   `/health`'s body and the metrics).
//! - metrics/prometheus: firelane's counters under Fluent Bit's names, labelled `name` with
//!   the input or output name, in records: `fluentbit_input_records_total`,
//!   `fluentbit_input_bytes_total`, `fluentbit_output_proc_records_total`,
//!   `fluentbit_output_proc_bytes_total`, `fluentbit_output_retries_total`,
//!   `fluentbit_output_retries_failed_total`, `fluentbit_output_errors_total`,
//!   `fluentbit_output_dropped_records_total`, and `fluentbit_uptime`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AdminState;

/// When the admin server started (the router's uptime).
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the uptime clock (the first call wins).
pub(crate) fn start_clock() {
    STARTED.get_or_init(Instant::now);
}

fn uptime_secs() -> u64 {
    STARTED.get_or_init(Instant::now).elapsed().as_secs()
}

/// Fluent Bit's `uptime_hr` sentence for `secs`.
pub(crate) fn uptime_text(secs: u64) -> String {
    let (d, rest) = (secs / 86400, secs % 86400);
    let (h, rest) = (rest / 3600, rest % 3600);
    let (m, s) = (rest / 60, rest % 60);
    format!("Fluent Bit has been running:  {d} day, {h} hour, {m} minute and {s} seconds")
}

pub(crate) async fn uptime() -> impl IntoResponse {
    let secs = uptime_secs();
    let body = serde_json::json!({"uptime_sec": secs, "uptime_hr": uptime_text(secs)});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

pub(crate) async fn health() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

pub(crate) async fn prometheus(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        fluentbit_metrics(&s.prometheus.render(), uptime_secs()),
    )
}

/// A label a series must carry to be counted.
type Need = Option<(&'static str, &'static str)>;

/// (Fluent Bit name, firelane name, label holding the plugin name, required label).
const MAP: &[(&str, &str, &str, Need)] = &[
    (
        "fluentbit_input_records_total",
        "firelane_input_records_total",
        "input",
        None,
    ),
    (
        "fluentbit_input_bytes_total",
        "firelane_input_bytes_total",
        "input",
        None,
    ),
    (
        "fluentbit_output_proc_records_total",
        "firelane_output_records_total",
        "output",
        Some(("result", "sent")),
    ),
    (
        "fluentbit_output_proc_bytes_total",
        "firelane_output_bytes_total",
        "output",
        None,
    ),
    (
        "fluentbit_output_retries_total",
        "firelane_output_records_total",
        "output",
        Some(("result", "retried")),
    ),
    (
        "fluentbit_output_retries_failed_total",
        "firelane_output_records_total",
        "output",
        Some(("result", "failed")),
    ),
    (
        "fluentbit_output_errors_total",
        "firelane_output_records_total",
        "output",
        Some(("result", "failed")),
    ),
    (
        "fluentbit_output_dropped_records_total",
        "firelane_output_records_total",
        "output",
        Some(("result", "dropped")),
    ),
];

/// Fluent Bit-named metrics from firelane's Prometheus text.
pub(crate) fn fluentbit_metrics(text: &str, uptime: u64) -> String {
    // (fluent bit metric, name label) → sum
    let mut sums: BTreeMap<(&str, String), f64> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, l)) => (m, parse_labels(l.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        for (fb, fl, key, need) in MAP {
            if metric != *fl {
                continue;
            }
            if let Some((k, v)) = need
                && !labels.iter().any(|(lk, lv)| lk == k && lv == v)
            {
                continue;
            }
            let Some((_, name)) = labels.iter().find(|(lk, _)| lk == key) else {
                continue;
            };
            *sums.entry((fb, name.clone())).or_insert(0.0) += value;
        }
    }
    let mut out = String::new();
    let mut last = "";
    for ((metric, name), v) in &sums {
        if *metric != last {
            let _ = writeln!(out, "# TYPE {metric} counter");
            last = metric;
        }
        let _ = writeln!(out, "{metric}{{name=\"{}\"}} {v}", escape(name));
    }
    let _ = writeln!(out, "# TYPE fluentbit_uptime counter");
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let _ = writeln!(
        out,
        "fluentbit_uptime{{hostname=\"{}\"}} {uptime}",
        escape(&host)
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `a="x",b="y\"z"` → pairs (values unescaped).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = Some(eq + 2 + i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        match end {
            Some(e) => rest = &rest[e..],
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_sentence() {
        assert_eq!(
            uptime_text(90061),
            "Fluent Bit has been running:  1 day, 1 hour, 1 minute and 1 seconds"
        );
    }

    #[test]
    fn firelane_counters_under_fluent_bit_names() {
        let text = "# TYPE firelane_input_records_total counter
firelane_input_records_total{input=\"forward\"} 10
firelane_input_records_total{input=\"tcp\"} 1
firelane_output_records_total{output=\"cw\",result=\"sent\"} 7
firelane_output_records_total{output=\"cw\",result=\"retried\"} 2
firelane_output_records_total{output=\"cw\",result=\"failed\"} 1
firelane_output_records_total{output=\"q\\\"x\",result=\"dropped\"} 3
firelane_output_bytes_total{output=\"cw\"} 700
";
        let m = fluentbit_metrics(text, 5);
        for want in [
            "fluentbit_input_records_total{name=\"forward\"} 10",
            "fluentbit_input_records_total{name=\"tcp\"} 1",
            "fluentbit_output_proc_records_total{name=\"cw\"} 7",
            "fluentbit_output_retries_total{name=\"cw\"} 2",
            "fluentbit_output_retries_failed_total{name=\"cw\"} 1",
            "fluentbit_output_errors_total{name=\"cw\"} 1",
            "fluentbit_output_dropped_records_total{name=\"q\\\"x\"} 3",
            "fluentbit_output_proc_bytes_total{name=\"cw\"} 700",
            "# TYPE fluentbit_uptime counter",
        ] {
            assert!(m.contains(want), "no {want:?} in\n{m}");
        }
        assert!(!m.contains("firelane_"), "{m}");
    }
}
