//! `firelane route` shows, for each output a record reaches, the destination it would get,
//! rendered by the output's own code (S3 bucket and key, CloudWatch group and stream,
//! Firehose stream, HTTP URL with secrets redacted, file path), without sending anything.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_firelane");

const CONFIG: &str = r#"[admin]
listen = "127.0.0.1:2999"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:24299"]

[inputs.events]
type = "http"
listen = "127.0.0.1:18080"
auth = { type = "bearer", token = "t" }

[routes.all]
from = ["app"]
to = ["archive", "logs", "stream", "hook", "local", "out", "nothing"]

[outputs.archive]
type = "s3"
bucket = "logs-bucket"
key = "logs/{tag[0]}/{tag[1]}/{path}/%Y/{ecs_task_id}.json"
compression = "gzip"
region = "eu-west-1"

[outputs.logs]
type = "cloudwatch_logs"
log_group = "/ecs/{ecs_cluster}/{container_name}"
log_stream = "{task}-{uuid}"

[outputs.stream]
type = "firehose"
delivery_stream = "access-logs"

[outputs.hook]
type = "http"
url = "https://user:hunter2@hooks.example.com/in?team=sre&token=s3cr3t&X-Amz-Signature=abc"

[outputs.local]
type = "file"
path = "/tmp/firelane-route-render.jsonl"

[outputs.out]
type = "stdout"

[outputs.nothing]
type = "null"
"#;

fn route(config: &Path, event: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "route",
        "-c",
        config.to_str().expect("utf-8 path"),
        "--event",
        event,
    ];
    args.extend_from_slice(extra);
    Command::new(BIN)
        .args(&args)
        .env_remove("FIRELANE_CONFIG")
        .env_remove("AWS_REGION")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .expect("run firelane")
}

/// The line for output `name` in the destinations section.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    let prefix = format!("  {name} (");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no destination line for {name}:\n{out}"))
}

#[test]
fn route_prints_rendered_destinations_without_sending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("firelane.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let event = r#"{"log": "GET /", "ecs_cluster": "my cluster", "container_name": "app",
        "task": "a:b", "path": "../../etc",
        "ecs_task_arn": "arn:aws:ecs:eu-west-1:1:task/c/abc123"}"#;
    let o = route(&config, event, &["--tag", "web..x"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("from input app: routes all → outputs archive"),
        "{out}"
    );

    // The record time the templates used, e.g. `destinations (record time 2026-11-30T11:40:00Z):`.
    let time = out
        .split("destinations (record time ")
        .nth(1)
        .and_then(|rest| rest.split("):").next())
        .unwrap_or_else(|| panic!("no destinations header:\n{out}"));
    let year = &time[..4];
    assert!(year.chars().all(|c| c.is_ascii_digit()), "{time}");

    // S3: empty tag part `-`, `/` in a value percent-encoded, `{uuid}` inserted and shown,
    // compression extension appended.
    assert_eq!(
        line(&out, "archive"),
        format!(
            "  archive (s3): s3://logs-bucket/logs/web/-/..%2F..%2Fetc/{year}/abc123-{{uuid}}.json.gz"
        )
    );
    assert_eq!(
        line(&out, "logs"),
        "  logs (cloudwatch_logs): log group /ecs/my#20cluster/app, log stream a%3Ab-{uuid}"
    );
    assert_eq!(
        line(&out, "stream"),
        "  stream (firehose): delivery stream access-logs"
    );
    assert_eq!(
        line(&out, "hook"),
        "  hook (http): POST https://user:***@hooks.example.com/in?team=sre&token=***&X-Amz-Signature=***"
    );
    assert_eq!(
        line(&out, "local"),
        "  local (file): /tmp/firelane-route-render.jsonl"
    );
    assert_eq!(line(&out, "out"), "  out (stdout): standard output");
    assert!(line(&out, "nothing").starts_with("  nothing (null): discarded"));
    // An output that would not start: the config is refused (the same check as `check`
    // and `run`), naming the output's key and where it is.
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        CONFIG.replace("\"nothing\"]", "\"nothing\", \"bad\"]")
            + "\n[outputs.bad]\ntype = \"cloudwatch_logs\"\nlog_group = \"/ecs/my app\"\nlog_stream = \"s\"\n",
    )
    .expect("write config");
    let o = route(&bad_config, event, &["--tag", "web..x"]);
    let bad = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{bad}");
    assert!(
        bad.contains("bad.toml:")
            && bad.contains("outputs.bad.log_group")
            && bad.contains("not allowed"),
        "{bad}"
    );
    for secret in ["hunter2", "s3cr3t", "=abc"] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }

    // A key above S3's 1,024 bytes is shortened, not refused: a prefix, then where the
    // per-object hash goes, then the extension.
    let long = format!(r#"{{"path": "{}"}}"#, "p".repeat(2000));
    let o = route(&config, &long, &["--tag", "web"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}");
    let archive = line(&out, "archive");
    let key = archive
        .strip_prefix("  archive (s3): s3://logs-bucket/")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        key.starts_with("logs/web/-/ppp") && key.ends_with("p-{hash}.json.gz"),
        "{out}"
    );
    assert!(key.len() <= 1024, "{}", key.len());

    // Nothing reached, nothing rendered.
    let o = route(&config, event, &["--tag", "web", "--input", "events"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("no route matches"), "{out}");
    assert!(!out.contains("destinations"), "{out}");
}

/// Tester's report: for S3, `firelane route` rendered `path` = `"-"`, `null` and `""` to the
/// same key, and CloudWatch groups kept a `/` from a value. Now only "no value" is `-`.
#[test]
fn route_keeps_a_literal_dash_apart_from_no_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("firelane.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let render = |path: &str| {
        let event = format!(
            r#"{{"path": {path}, "ecs_cluster": "a/b", "container_name": "-", "task": "-",
                "ecs_task_id": "t1", "time": "2026-11-30T11:40:00Z"}}"#
        );
        let o = route(&config, &event, &["--tag", "web.x"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(0), "{out}");
        (
            line(&out, "archive").to_string(),
            line(&out, "logs").to_string(),
        )
    };
    let (dash, logs) = render(r#""-""#);
    let (null, _) = render("null");
    let (empty, _) = render(r#""""#);
    assert!(dash.contains("/logs/web/x/%2D/"), "{dash}");
    assert!(null.contains("/logs/web/x/-/"), "{null}");
    assert_eq!(empty, null);
    assert_eq!(
        logs,
        "  logs (cloudwatch_logs): log group /ecs/a#2Fb/#2D, log stream %2D-{uuid}"
    );
}
