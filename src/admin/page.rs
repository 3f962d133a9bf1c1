//! `GET /` on the admin port: the status page (issue #12 item 6).
//!
//! One self-contained HTML document: inline CSS, no script, no image, no link to anything
//! outside the page (a sidecar has no internet), rendered on the server so it reads with
//! JavaScript off, and reloading itself every [`REFRESH_SECS`] by `<meta http-equiv=refresh>`.
//! It shows the pipeline (inputs → routes → outputs with their record counts, rates, errors
//! and buffer fill, read from the same counters `/metrics` serves) and the cluster view from
//! [`super::ecs_state`]. Everything that comes from events or config is HTML-escaped.
//!
//! Rates are the counters' change since the previous page request divided by the time
//! between them (when at least a second apart; otherwise the last rates are shown again), so
//! the page's own refresh gives rates over [`REFRESH_SECS`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use parking_lot::Mutex;

use super::AdminState;
use super::ecs_state::{Snapshot, model};

/// Seconds between the page's reloads.
pub(crate) const REFRESH_SECS: u32 = 10;

/// The configured pipeline, as the page lists it.
#[derive(Debug, Default)]
pub(crate) struct PipelineView {
    /// (name, type, description) of each input.
    pub inputs: Vec<(String, String, String)>,
    /// Each route.
    pub routes: Vec<RouteView>,
    /// (name, type, buffer `max_size` in bytes) of each output.
    pub outputs: Vec<(String, String, u64)>,
    rates: Mutex<Rates>,
}

/// One route as the page lists it.
#[derive(Debug)]
pub(crate) struct RouteView {
    /// `[routes.NAME]`.
    pub name: String,
    /// `from` (empty: every input).
    pub from: Vec<String>,
    /// Tags and pattern, as text.
    pub matches: String,
    /// `to`.
    pub to: Vec<String>,
}

#[derive(Debug, Default)]
struct Rates {
    at: Option<Instant>,
    prev: HashMap<String, f64>,
    per_sec: HashMap<String, f64>,
}

impl PipelineView {
    /// The page's view of `config`; `buffer_max` gives an output's buffer size in bytes.
    pub(crate) fn of(
        config: &crate::config::Config,
        buffer_max: impl Fn(&crate::config::OutputSpec) -> u64,
    ) -> PipelineView {
        PipelineView {
            inputs: config
                .inputs
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        i.kind.type_name().to_string(),
                        i.kind.describe(),
                    )
                })
                .collect(),
            routes: config
                .routes
                .iter()
                .map(|r| {
                    let mut m = Vec::new();
                    if !r.tags.is_empty() {
                        let tags: Vec<&str> = r.tags.iter().map(|t| t.as_str()).collect();
                        m.push(format!("tag {}", tags.join(", ")));
                    }
                    if let Some(p) = &r.pattern_json {
                        m.push(format!("pattern {p}"));
                    }
                    if m.is_empty() {
                        m.push("everything".into());
                    }
                    if r.is_final {
                        m.push("(final)".into());
                    }
                    RouteView {
                        name: r.name.clone(),
                        from: r.from.clone(),
                        matches: m.join(" "),
                        to: r.to.clone(),
                    }
                })
                .collect(),
            outputs: config
                .outputs
                .iter()
                .map(|o| {
                    (
                        o.name.clone(),
                        o.kind.type_name().to_string(),
                        buffer_max(o),
                    )
                })
                .collect(),
            rates: Mutex::new(Rates::default()),
        }
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Sums of the samples of the Prometheus text `text`, keyed `metric|label=value` (by the
/// label `by`) and, when `also` is given, `metric|label=value|also=value2`.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut out: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("firelane_") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = parse_labels(labels);
        for key in ["input", "route", "output"] {
            if let Some(x) = labels.get(key) {
                *out.entry(format!("{name}|{x}")).or_default() += v;
                for sub in ["result", "kind"] {
                    if let Some(y) = labels.get(sub) {
                        *out.entry(format!("{name}|{x}|{y}")).or_default() += v;
                    }
                }
            }
        }
    }
    out
}

/// `a="x",b="y"` → {a: x, b: y} (Prometheus escapes `\"`, `\\` and `\n` in values).
fn parse_labels(s: &str) -> HashMap<&str, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',');
        let mut val = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len() - eq - 2;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, e)) => val.push(e),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(key, val);
        rest = &rest[(eq + 2 + end).min(rest.len())..];
    }
    out
}

fn fmt_num(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f7f8fa}\
h1{font-size:20px;margin:0 0 .2em}h2{font-size:16px;margin:1.4em 0 .4em;border-bottom:2px solid #d5d9e2}\
table{border-collapse:collapse;background:#fff;margin-bottom:.8em;min-width:40em}\
th,td{border:1px solid #d5d9e2;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#e9edf5}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:#b3261e;font-weight:600}.ok{color:#1e7b34}.muted{color:#6b7280}\
.flow{display:flex;gap:1.2em;align-items:flex-start;flex-wrap:wrap}\
.bar{display:inline-block;width:6em;height:.7em;background:#e5e7eb;vertical-align:middle}\
.bar i{display:block;height:100%;background:#2563eb}";

/// `GET /`: the page.
pub(crate) async fn serve(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let html = render(&s.pipeline, &s.prometheus.render(), &model().snapshot());
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
}

fn render(p: &PipelineView, metrics_text: &str, snap: &Snapshot) -> String {
    let now = samples(metrics_text);
    let rates = {
        let mut r = p.rates.lock();
        let t = Instant::now();
        let dt = r.at.map(|a| t.duration_since(a).as_secs_f64());
        if dt.is_none_or(|d| d >= 1.0) {
            if let Some(d) = dt {
                let per: HashMap<String, f64> = now
                    .iter()
                    .map(|(k, v)| {
                        let before = r.prev.get(k).copied().unwrap_or(0.0);
                        (k.clone(), ((v - before) / d).max(0.0))
                    })
                    .collect();
                r.per_sec = per;
            }
            r.prev = now.clone();
            r.at = Some(t);
        }
        r.per_sec.clone()
    };
    let get = |k: String| now.get(&k).copied().unwrap_or(0.0);
    let rate = |k: String| match rates.get(&k) {
        Some(v) => format!("{}/s", fmt_num(*v)),
        None => "…".to_string(),
    };
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>firelane status</title><style>{STYLE}</style></head><body>\
<h1>firelane {}</h1><p class=\"muted\">{} UTC · reloads every {REFRESH_SECS} s · rates since the previous load · JSON: /api/ecs/state, metrics: /metrics</p>",
        esc(env!("CARGO_PKG_VERSION")),
        esc(&chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string())
    );

    h.push_str("<h2>Pipeline</h2><div class=\"flow\">");
    // Inputs.
    h.push_str("<table id=\"inputs\"><tr><th>Input</th><th>Type</th><th>Records</th><th>Rate</th><th>Errors</th></tr>");
    for (name, ty, desc) in &p.inputs {
        let errors = get(format!("firelane_input_errors_total|{name}"));
        let _ = write!(
            h,
            "<tr><td title=\"{}\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{}</td></tr>",
            esc(desc),
            esc(name),
            esc(ty),
            fmt_num(get(format!("firelane_input_records_total|{name}"))),
            rate(format!("firelane_input_records_total|{name}")),
            if errors > 0.0 { " bad" } else { "" },
            fmt_num(errors)
        );
    }
    h.push_str("</table>");
    // Routes.
    h.push_str("<table id=\"routes\"><tr><th>Route</th><th>From</th><th>Match</th><th>To</th><th>Records</th><th>Rate</th></tr>");
    for r in &p.routes {
        let from = if r.from.is_empty() {
            "all inputs".to_string()
        } else {
            r.from.join(", ")
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>→ {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&r.name),
            esc(&from),
            esc(&r.matches),
            esc(&r.to.join(", ")),
            fmt_num(get(format!("firelane_route_records_total|{}", r.name))),
            rate(format!("firelane_route_records_total|{}", r.name)),
        );
    }
    let unrouted = metrics_text
        .lines()
        .find(|l| l.starts_with("firelane_unrouted_records_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let _ = write!(
        h,
        "<tr><td colspan=\"4\" class=\"muted\">unrouted (dropped)</td><td class=\"n{}\">{}</td><td></td></tr></table>",
        if unrouted > 0.0 { " bad" } else { "" },
        fmt_num(unrouted)
    );
    // Outputs.
    h.push_str("<table id=\"outputs\"><tr><th>Output</th><th>Type</th><th>Sent</th><th>Rate</th><th>Retried</th><th>Failed</th><th>Dead-lettered</th><th>Buffer</th></tr>");
    for (name, ty, max) in &p.outputs {
        let sent_key = format!("firelane_output_records_total|{name}|sent");
        let failed = get(format!("firelane_output_records_total|{name}|failed"));
        let dead = get(format!(
            "firelane_output_records_total|{name}|dead_lettered"
        ));
        let buffered = get(format!("firelane_buffer_bytes|{name}"));
        let fill = if *max > 0 {
            (buffered / *max as f64 * 100.0).clamp(0.0, 100.0)
        } else {
            0.0
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{}</td><td class=\"n{}\">{}</td>\
<td><span class=\"bar\"><i style=\"width:{fill:.0}%\"></i></span> {fill:.0}% ({}B of {}B)</td></tr>",
            esc(name),
            esc(ty),
            fmt_num(get(sent_key.clone())),
            rate(sent_key),
            fmt_num(get(format!("firelane_output_records_total|{name}|retried"))),
            if failed > 0.0 { " bad" } else { "" },
            fmt_num(failed),
            if dead > 0.0 { " bad" } else { "" },
            fmt_num(dead),
            fmt_num(buffered),
            fmt_num(*max as f64),
        );
    }
    h.push_str("</table></div>");

    // Cluster view.
    h.push_str("<h2>Services and task groups</h2>");
    if snap.groups.is_empty() {
        h.push_str("<p class=\"muted\">No ECS task events received yet (send them to an event input: http format = \"eventbridge\" or \"sns\", or sqs).</p>");
    } else {
        h.push_str("<table id=\"services\"><tr><th>Cluster</th><th>Service / family</th><th>Running</th><th>Pending</th><th>Stopped (recent)</th><th>Other</th></tr>");
        for g in &snap.groups {
            let n = |k: &str| g.tasks.get(k).copied().unwrap_or(0);
            let running = n("RUNNING");
            let pending = n("PENDING") + n("PROVISIONING") + n("ACTIVATING");
            let stopped = n("STOPPED");
            let other: u64 = g.tasks.values().sum::<u64>() - running - pending - stopped;
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"n ok\">{running}</td><td class=\"n\">{pending}</td><td class=\"n{}\">{stopped}</td><td class=\"n\">{other}</td></tr>",
                esc(&g.cluster),
                esc(&g.group),
                if stopped > 0 { " bad" } else { "" },
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Recent stopped tasks</h2>");
    if snap.recent_stops.is_empty() {
        h.push_str("<p class=\"muted\">None.</p>");
    } else {
        h.push_str("<table id=\"stops\"><tr><th>Stopped at</th><th>Cluster</th><th>Group</th><th>Task</th><th>Task definition</th><th>Stop code</th><th>Reason</th><th>Containers</th></tr>");
        for st in &snap.recent_stops {
            let containers: Vec<String> = st
                .containers
                .iter()
                .map(|c| {
                    let code = c
                        .exit_code
                        .map(|x| format!("exit {x}"))
                        .unwrap_or_else(|| "no exit code".into());
                    let cls = if c.exit_code.is_some_and(|x| x != 0) {
                        " class=\"bad\""
                    } else {
                        ""
                    };
                    match &c.reason {
                        Some(r) => format!(
                            "{}: <span{cls}>{}</span> ({})",
                            esc(&c.name),
                            esc(&code),
                            esc(r)
                        ),
                        None => format!("{}: <span{cls}>{}</span>", esc(&c.name), esc(&code)),
                    }
                })
                .collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&st.time),
                esc(&st.cluster),
                esc(&st.group),
                esc(&st.task_id),
                esc(&st.task_definition),
                esc(st.stop_code.as_deref().unwrap_or("")),
                esc(st.stopped_reason.as_deref().unwrap_or("")),
                containers.join("<br>")
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Deployments</h2>");
    if snap.deployments.is_empty() {
        h.push_str("<p class=\"muted\">None.</p>");
    } else {
        h.push_str("<table id=\"deployments\"><tr><th>Updated</th><th>Cluster</th><th>Service</th><th>Outcome</th><th>Event</th><th>Reason</th></tr>");
        for d in &snap.deployments {
            let cls = match d.outcome {
                "failed" => "bad",
                "completed" => "ok",
                _ => "",
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{cls}\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.updated_at),
                esc(&d.cluster),
                esc(&d.service),
                esc(d.outcome),
                esc(&d.event_name),
                esc(d.reason.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Service actions</h2>");
    if snap.recent_service_actions.is_empty() {
        h.push_str("<p class=\"muted\">None.</p>");
    } else {
        h.push_str("<table id=\"actions\"><tr><th>Time</th><th>Cluster</th><th>Service</th><th>Type</th><th>Event</th><th>Reason</th></tr>");
        for a in &snap.recent_service_actions {
            let cls = if a.event_type == "ERROR" || a.event_type == "WARN" {
                "bad"
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{cls}\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.time),
                esc(&a.cluster),
                esc(&a.service),
                esc(&a.event_type),
                esc(&a.event_name),
                esc(a.reason.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn reads_counters_by_label() {
        let text = "# TYPE x counter\n\
firelane_output_records_total{output=\"s3\",result=\"sent\"} 5\n\
firelane_output_records_total{output=\"s3\",result=\"failed\"} 2\n\
firelane_input_records_total{input=\"a\\\"b\"} 3\n";
        let s = samples(text);
        assert_eq!(s.get("firelane_output_records_total|s3|sent"), Some(&5.0));
        assert_eq!(s.get("firelane_output_records_total|s3"), Some(&7.0));
        assert_eq!(s.get("firelane_input_records_total|a\"b"), Some(&3.0));
    }
}
