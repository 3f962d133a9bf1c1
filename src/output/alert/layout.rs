//! The text of alert messages, one layout per kind of event, written once and rendered for
//! Slack (mrkdwn, Slack's "Formatting text for app surfaces") or as plain text (SNS e-mail
//! and SMS subscribers).
//!
//! Layouts (field names from the Amazon ECS Developer Guide, "Amazon ECS events"):
//! - `ECS Task State Change`: cluster, service or family (from `group`), task definition
//!   `family:revision`, `stopCode`, `stoppedReason`, each container's name, exit code and
//!   reason, the time, and a console link built from region, cluster and task id.
//! - `ECS Deployment State Change`: service, cluster, event name, deployment id, reason,
//!   time, a link to the service's deployments.
//! - `ECS Service Action`: level, event name, service, cluster, reason and the other scalar
//!   fields of `detail`, a link to the service's events.
//! - Anything else: the `detail-type` and `source` (or the tag) and the record's JSON.
//!
//! A follow-up says how many records it stands for, how many in all since the group's
//! first message, and shows one line for each of the first few.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::{AlertBatch, Kind};
use crate::event::Record;
use crate::output::template::{arn_region, arn_segment};

/// How a message is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Slack mrkdwn: `*bold*`, `<url|text>` links, `&`, `<`, `>` escaped.
    Slack,
    /// Plain text.
    Text,
}

/// Longest JSON shown by the generic layout, in bytes: a message stays readable, and far
/// under Slack's 40,000 characters of `text` and SNS's 256 KiB.
const JSON_LIMIT: usize = 2500;
/// Longest single value (a stop reason can be long), in characters.
const VALUE_LIMIT: usize = 500;

/// One message before it is written for a destination.
#[derive(Debug, Default)]
struct Message {
    title: String,
    fields: Vec<(&'static str, String)>,
    /// Bulleted lines (containers, samples).
    items: Vec<String>,
    /// A preformatted block (the generic layout's JSON).
    code: Option<String>,
    link: Option<(String, &'static str)>,
}

/// The text of `batch`.
pub(crate) fn render(batch: &AlertBatch, flavor: Flavor) -> String {
    let m = match batch.kind {
        Kind::Lead => batch.samples.first().map(lead).unwrap_or_default(),
        Kind::FollowUp => follow_up(batch),
    };
    write(&m, flavor)
}

/// A one-line summary of `batch` of at most `max` characters (SNS `Subject`).
pub(crate) fn subject(batch: &AlertBatch, max: usize) -> String {
    let title = match batch.kind {
        Kind::Lead => batch.samples.first().map(lead).unwrap_or_default().title,
        Kind::FollowUp => follow_up(batch).title,
    };
    clip(&title, max)
}

/// The first `max` characters of `s`, with `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn write(m: &Message, flavor: Flavor) -> String {
    let esc = |s: &str| match flavor {
        Flavor::Slack => s
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
        Flavor::Text => s.to_string(),
    };
    let mut out = String::new();
    match flavor {
        Flavor::Slack => {
            let _ = writeln!(out, "*{}*", esc(&m.title));
        }
        Flavor::Text => {
            let _ = writeln!(out, "{}", m.title);
        }
    }
    for (k, v) in &m.fields {
        let v = clip(v, VALUE_LIMIT);
        match flavor {
            Flavor::Slack => {
                let _ = writeln!(out, "*{k}:* {}", esc(&v));
            }
            Flavor::Text => {
                let _ = writeln!(out, "{k}: {v}");
            }
        }
    }
    for item in &m.items {
        let item = clip(item, VALUE_LIMIT);
        match flavor {
            Flavor::Slack => {
                let _ = writeln!(out, "• {}", esc(&item));
            }
            Flavor::Text => {
                let _ = writeln!(out, "  - {item}");
            }
        }
    }
    if let Some(code) = &m.code {
        match flavor {
            Flavor::Slack => {
                let _ = writeln!(out, "```{}```", esc(code));
            }
            Flavor::Text => {
                let _ = writeln!(out, "{code}");
            }
        }
    }
    if let Some((url, text)) = &m.link {
        match flavor {
            // The URL is built from ARN parts; `|` and `>` would end Slack's link early.
            Flavor::Slack => {
                let _ = writeln!(out, "<{}|{text}>", url.replace(['|', '>'], ""));
            }
            Flavor::Text => {
                let _ = writeln!(out, "{text}: {url}");
            }
        }
    }
    out.trim_end().to_string()
}

/// A string at a dotted path of `v`.
fn s<'v>(v: &'v Value, path: &str) -> Option<&'v str> {
    get(v, path)?.as_str().filter(|s| !s.is_empty())
}

fn get<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// A scalar as text.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn event(r: &Record) -> Value {
    Value::Object(r.fields().into_owned())
}

fn kind_of(e: &Value) -> &str {
    s(e, "detail-type").unwrap_or("")
}

/// The cluster name: from `detail.clusterArn`, else from the resource ARN's second-to-last
/// segment (`service/CLUSTER/SERVICE`, `task/CLUSTER/ID`; Deployment State Change events
/// carry no `clusterArn`).
fn cluster(e: &Value) -> Option<String> {
    if let Some(c) = s(e, "detail.clusterArn").and_then(|a| arn_segment(a, -1)) {
        return Some(c.to_string());
    }
    // Only the long ARN format names the cluster (`task/CLUSTER/ID`); in the old one
    // (`task/ID`) the second-to-last segment is the resource type.
    let res = e.get("resources")?.get(0)?.as_str()?;
    arn_segment(res, 2)
        .and(arn_segment(res, -2))
        .map(str::to_string)
}

fn region(e: &Value, arn: Option<&str>) -> Option<String> {
    s(e, "region")
        .or_else(|| arn.and_then(arn_region))
        .map(str::to_string)
}

/// `service:web` → ("Service", "web"), `family:batch` → ("Family", "batch").
fn group_field(group: &str) -> (&'static str, String) {
    match group.split_once(':') {
        Some(("service", name)) => ("Service", name.to_string()),
        Some(("family", name)) => ("Family", name.to_string()),
        _ => ("Group", group.to_string()),
    }
}

fn console(region: &str, path: &str) -> String {
    format!("https://{region}.console.aws.amazon.com/ecs/v2/{path}?region={region}")
}

fn time_text(e: &Value, fallback_ns: i64, fields: &[&str]) -> String {
    fields
        .iter()
        .find_map(|f| s(e, f))
        .map(str::to_string)
        .unwrap_or_else(|| utc(fallback_ns))
}

fn utc(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn lead(r: &Record) -> Message {
    let e = event(r);
    match kind_of(&e) {
        "ECS Task State Change" => task(&e, r.time_ns),
        "ECS Deployment State Change" => deployment(&e, r.time_ns),
        "ECS Service Action" => service_action(&e, r.time_ns),
        _ => generic(r, &e),
    }
}

/// Each container: `web: exit 1 (reason)`.
fn containers(e: &Value) -> Vec<String> {
    let Some(list) = get(e, "detail.containers").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|c| {
            let name = s(c, "name").unwrap_or("(unnamed)");
            let mut line = match c.get("exitCode").and_then(text) {
                Some(code) => format!("{name}: exit {code}"),
                None => format!(
                    "{name}: no exit code ({})",
                    s(c, "lastStatus").unwrap_or("-")
                ),
            };
            if let Some(reason) = s(c, "reason") {
                let _ = write!(line, " ({reason})");
            }
            line
        })
        .collect()
}

fn task(e: &Value, time_ns: i64) -> Message {
    let task_arn = s(e, "detail.taskArn");
    let cluster = cluster(e);
    let status = s(e, "detail.lastStatus").unwrap_or("changed");
    let group = s(e, "detail.group").map(group_field);
    let who = group
        .as_ref()
        .map(|(_, n)| n.as_str())
        .or(cluster.as_deref())
        .unwrap_or("a task");
    let mut m = Message {
        title: format!(
            "ECS task {} in {}: {}",
            status.to_ascii_lowercase(),
            cluster.as_deref().unwrap_or("-"),
            who
        ),
        ..Message::default()
    };
    if let Some(c) = &cluster {
        m.fields.push(("Cluster", c.clone()));
    }
    if let Some((k, v)) = group {
        m.fields.push((k, v));
    }
    if let Some(td) = s(e, "detail.taskDefinitionArn").and_then(|a| arn_segment(a, -1)) {
        m.fields.push(("Task definition", td.to_string()));
    }
    if let Some(code) = s(e, "detail.stopCode") {
        m.fields.push(("Stop code", code.to_string()));
    }
    if let Some(reason) = s(e, "detail.stoppedReason") {
        m.fields.push(("Stopped reason", reason.to_string()));
    }
    let task_id = task_arn.and_then(|a| arn_segment(a, -1));
    if let Some(id) = task_id {
        m.fields.push(("Task", id.to_string()));
    }
    m.fields.push((
        "Time",
        time_text(
            e,
            time_ns,
            &["detail.stoppedAt", "detail.updatedAt", "time"],
        ),
    ));
    m.items = containers(e);
    if let (Some(region), Some(cluster), Some(id)) = (region(e, task_arn), &cluster, task_id) {
        m.link = Some((
            console(
                &region,
                &format!("clusters/{cluster}/tasks/{id}/configuration"),
            ),
            "Open the task in the ECS console",
        ));
    }
    m
}

/// `(service, cluster)` from the event's service ARN (`resources[0]`).
fn service_of(e: &Value) -> (Option<String>, Option<&str>) {
    let arn = e
        .get("resources")
        .and_then(|r| r.get(0))
        .and_then(Value::as_str);
    let service = arn.and_then(|a| arn_segment(a, -1)).map(str::to_string);
    (service, arn)
}

fn deployment(e: &Value, time_ns: i64) -> Message {
    let (service, arn) = service_of(e);
    let cluster = cluster(e);
    let name = s(e, "detail.eventName").unwrap_or("deployment event");
    let what = match name {
        "SERVICE_DEPLOYMENT_FAILED" => "failed",
        "SERVICE_DEPLOYMENT_ROLLBACK_COMPLETED" | "SERVICE_DEPLOYMENT_ROLLBACK_IN_PROGRESS" => {
            "rolled back"
        }
        "SERVICE_DEPLOYMENT_COMPLETED" => "completed",
        "SERVICE_DEPLOYMENT_IN_PROGRESS" => "in progress",
        _ => name,
    };
    let mut m = Message {
        title: format!(
            "ECS deployment {what}: {} in {}",
            service.as_deref().unwrap_or("-"),
            cluster.as_deref().unwrap_or("-")
        ),
        ..Message::default()
    };
    push_service_fields(&mut m, e, &service, &cluster);
    m.fields.push(("Event", name.to_string()));
    for (label, path) in [
        ("Deployment", "detail.deploymentId"),
        ("Reason", "detail.reason"),
    ] {
        if let Some(v) = s(e, path) {
            m.fields.push((label, v.to_string()));
        }
    }
    m.fields
        .push(("Time", time_text(e, time_ns, &["detail.updatedAt", "time"])));
    if let (Some(region), Some(cluster), Some(service)) = (region(e, arn), &cluster, &service) {
        m.link = Some((
            console(
                &region,
                &format!("clusters/{cluster}/services/{service}/deployments"),
            ),
            "Open the service's deployments in the ECS console",
        ));
    }
    m
}

fn push_service_fields(
    m: &mut Message,
    e: &Value,
    service: &Option<String>,
    cluster: &Option<String>,
) {
    if let Some(c) = cluster {
        m.fields.push(("Cluster", c.clone()));
    }
    if let Some(sv) = service {
        m.fields.push(("Service", sv.clone()));
    }
    if let Some(level) = s(e, "detail.eventType") {
        m.fields.push(("Level", level.to_string()));
    }
}

fn service_action(e: &Value, time_ns: i64) -> Message {
    let (service, arn) = service_of(e);
    let cluster = cluster(e);
    let level = s(e, "detail.eventType").unwrap_or("INFO");
    let name = s(e, "detail.eventName").unwrap_or("service action");
    let mut m = Message {
        title: format!(
            "ECS service {level}: {name} for {} in {}",
            service.as_deref().unwrap_or("-"),
            cluster.as_deref().unwrap_or("-")
        ),
        ..Message::default()
    };
    push_service_fields(&mut m, e, &service, &cluster);
    m.fields.push(("Event", name.to_string()));
    if let Some(Value::Object(detail)) = e.get("detail") {
        for (k, v) in detail {
            if matches!(
                k.as_str(),
                "eventType" | "eventName" | "clusterArn" | "createdAt"
            ) {
                continue;
            }
            if let Some(t) = text(v) {
                m.items.push(format!("{k}: {t}"));
            } else if let Value::Array(a) = v {
                let parts: Vec<String> = a.iter().filter_map(text).collect();
                if !parts.is_empty() {
                    m.items.push(format!("{k}: {}", parts.join(", ")));
                }
            }
        }
    }
    m.fields
        .push(("Time", time_text(e, time_ns, &["detail.createdAt", "time"])));
    if let (Some(region), Some(cluster), Some(service)) = (region(e, arn), &cluster, &service) {
        m.link = Some((
            console(
                &region,
                &format!("clusters/{cluster}/services/{service}/events"),
            ),
            "Open the service's events in the ECS console",
        ));
    }
    m
}

fn generic(r: &Record, e: &Value) -> Message {
    let title = match (s(e, "detail-type"), s(e, "source")) {
        (Some(kind), Some(source)) => format!("{kind} from {source}"),
        (Some(kind), None) => kind.to_string(),
        _ => format!("Record from {}", r.tag),
    };
    let mut json = serde_json::to_string_pretty(e).unwrap_or_default();
    if json.len() > JSON_LIMIT {
        let mut cut = JSON_LIMIT;
        while !json.is_char_boundary(cut) {
            cut -= 1;
        }
        json.truncate(cut);
        json.push_str("\n… (cut)");
    }
    Message {
        title,
        fields: vec![("Tag", r.tag.to_string()), ("Time", utc(r.time_ns))],
        code: Some(json),
        ..Message::default()
    }
}

/// `60s`, `5m`, `1h30m`.
fn window_text(d: Duration) -> String {
    let secs = d.as_secs().max(1);
    if secs < 120 {
        return format!("{secs}s");
    }
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// One line for a record of a follow-up.
fn sample_line(r: &Record) -> String {
    let e = event(r);
    match kind_of(&e) {
        "ECS Task State Change" => {
            let id = s(&e, "detail.taskArn")
                .and_then(|a| arn_segment(a, -1))
                .unwrap_or("-");
            let mut line = format!("task {id}");
            let exits = containers(&e);
            if !exits.is_empty() {
                let _ = write!(line, ": {}", exits.join("; "));
            }
            if let Some(reason) = s(&e, "detail.stoppedReason") {
                let _ = write!(line, " — {reason}");
            }
            line
        }
        "ECS Deployment State Change" | "ECS Service Action" => format!(
            "{} {}{}",
            time_text(&e, r.time_ns, &["time"]),
            s(&e, "detail.eventName").unwrap_or("-"),
            s(&e, "detail.reason")
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        ),
        _ => {
            let mut json = serde_json::to_string(&e).unwrap_or_default();
            if json.len() > 200 {
                let mut cut = 200;
                while !json.is_char_boundary(cut) {
                    cut -= 1;
                }
                json.truncate(cut);
                json.push('…');
            }
            json
        }
    }
}

fn follow_up(b: &AlertBatch) -> Message {
    let first = b.samples.first().map(|r| (event(r), r));
    let what = match first.as_ref().map(|(e, _)| kind_of(e)) {
        Some("ECS Task State Change") => "tasks stopped like this",
        Some("ECS Deployment State Change") => "deployment events like this",
        Some("ECS Service Action") => "service events like this",
        _ => "records like this",
    };
    let since = chrono::DateTime::<chrono::Utc>::from(b.first_at)
        .format("%H:%M:%S UTC")
        .to_string();
    let mut m = Message {
        title: format!(
            "{} more {what} in the last {} ({} in all since {since})",
            b.count,
            window_text(b.window),
            b.total
        ),
        ..Message::default()
    };
    if let Some((e, r)) = &first {
        // What the group has in common, from its first record.
        let lead = lead(r);
        for (k, v) in lead.fields {
            if matches!(
                k,
                "Cluster"
                    | "Service"
                    | "Family"
                    | "Group"
                    | "Task definition"
                    | "Stop code"
                    | "Level"
                    | "Event"
            ) {
                m.fields.push((k, v));
            }
        }
        if kind_of(e) != "ECS Task State Change" || m.fields.is_empty() {
            m.fields.push(("Group", b.group.to_string()));
        }
        m.link = lead.link.filter(|_| kind_of(e) != "ECS Task State Change");
    }
    m.items = b.samples.iter().map(sample_line).collect();
    let shown = b.samples.len();
    if b.count > shown {
        m.items
            .push(format!("… and {} more not shown", b.count - shown));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::SystemTime;

    /// Seconds since the Unix epoch.
    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rec(json: &str) -> Record {
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(json) else {
            panic!("object")
        };
        Record::new("ECS Task State Change", 1_000_000_000_000_000_000, m)
    }

    const STOPPED: &str = r#"{"detail-type":"ECS Task State Change","source":"aws.ecs","region":"us-west-2",
      "time":"2026-11-30T10:00:00Z",
      "detail":{"clusterArn":"arn:aws:ecs:us-west-2:111122223333:cluster/prod",
        "taskArn":"arn:aws:ecs:us-west-2:111122223333:task/prod/0123abcd",
        "taskDefinitionArn":"arn:aws:ecs:us-west-2:111122223333:task-definition/web:42",
        "group":"service:web","lastStatus":"STOPPED","stopCode":"EssentialContainerExited",
        "stoppedReason":"Essential container in task exited","stoppedAt":"2026-11-30T10:00:01Z",
        "containers":[{"name":"app","exitCode":1,"reason":"OutOfMemoryError: Container killed"},
                      {"name":"log_router","exitCode":0}]}}"#;

    fn batch(kind: Kind, samples: Vec<Record>, count: usize, total: u64) -> AlertBatch {
        AlertBatch {
            kind,
            group: Arc::from("g"),
            count,
            total,
            first_at: at(1_796_032_800),
            samples,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn task_stopped_layout_has_what_people_act_on() {
        let b = batch(Kind::Lead, vec![rec(STOPPED)], 1, 1);
        let text = render(&b, Flavor::Text);
        for want in [
            "ECS task stopped in prod: web",
            "Cluster: prod",
            "Service: web",
            "Task definition: web:42",
            "Stop code: EssentialContainerExited",
            "Stopped reason: Essential container in task exited",
            "app: exit 1 (OutOfMemoryError: Container killed)",
            "log_router: exit 0",
            "Time: 2026-11-30T10:00:01Z",
            "https://us-west-2.console.aws.amazon.com/ecs/v2/clusters/prod/tasks/0123abcd/configuration?region=us-west-2",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        let slack = render(&b, Flavor::Slack);
        assert!(
            slack.starts_with("*ECS task stopped in prod: web*"),
            "{slack}"
        );
        assert!(
            slack.contains("*Stop code:* EssentialContainerExited"),
            "{slack}"
        );
        assert!(
            slack.contains("|Open the task in the ECS console>"),
            "{slack}"
        );
        assert_eq!(subject(&b, 100), "ECS task stopped in prod: web");
        assert_eq!(subject(&b, 10).chars().count(), 10);
    }

    #[test]
    fn follow_up_counts_and_shows_a_few() {
        let b = batch(
            Kind::FollowUp,
            vec![rec(STOPPED), rec(STOPPED), rec(STOPPED)],
            199,
            200,
        );
        let text = render(&b, Flavor::Text);
        assert!(
            text.starts_with(
                "199 more tasks stopped like this in the last 60s (200 in all since 10:00:00 UTC)"
            ),
            "{text}"
        );
        assert!(text.contains("Cluster: prod"), "{text}");
        assert!(text.contains("task 0123abcd: app: exit 1"), "{text}");
        assert!(text.contains("… and 196 more not shown"), "{text}");
    }

    #[test]
    fn deployment_and_service_action_layouts() {
        let dep = rec(
            r#"{"detail-type":"ECS Deployment State Change","source":"aws.ecs","region":"us-west-2",
            "resources":["arn:aws:ecs:us-west-2:111122223333:service/default/servicetest"],
            "detail":{"eventType":"ERROR","eventName":"SERVICE_DEPLOYMENT_FAILED","deploymentId":"ecs-svc/123",
            "reason":"ECS deployment circuit breaker: task failed to start."}}"#,
        );
        let text = render(&batch(Kind::Lead, vec![dep], 1, 1), Flavor::Text);
        for want in [
            "ECS deployment failed: servicetest in default",
            "Deployment: ecs-svc/123",
            "Reason: ECS deployment circuit breaker",
            "clusters/default/services/servicetest/deployments",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        let action = rec(
            r#"{"detail-type":"ECS Service Action","source":"aws.ecs","region":"us-west-2",
            "resources":["arn:aws:ecs:us-west-2:111122223333:service/default/servicetest"],
            "detail":{"eventType":"WARN","eventName":"SERVICE_TASK_PLACEMENT_FAILURE",
            "clusterArn":"arn:aws:ecs:us-west-2:111122223333:cluster/default",
            "reason":"RESOURCE:MEMORY","capacityProviderArns":["arn:cp/a"]}}"#,
        );
        let text = render(&batch(Kind::Lead, vec![action], 1, 1), Flavor::Slack);
        for want in [
            "*ECS service WARN: SERVICE_TASK_PLACEMENT_FAILURE for servicetest in default*",
            "• reason: RESOURCE:MEMORY",
            "• capacityProviderArns: arn:cp/a",
            "services/servicetest/events?region=us-west-2|",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn generic_layout_shows_the_record_and_escapes_for_slack() {
        let r = Record::new(
            "app-firelens-1",
            0,
            serde_json::json!({"log": "<b> & x".repeat(1000)})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let slack = render(&batch(Kind::Lead, vec![r], 1, 1), Flavor::Slack);
        assert!(slack.starts_with("*Record from app-firelens-1*"), "{slack}");
        assert!(slack.contains("&lt;b&gt; &amp; x"), "{slack}");
        assert!(!slack.contains("<b>"));
        assert!(slack.contains("… (cut)"));
        assert!(slack.len() < 20_000);
    }
}
