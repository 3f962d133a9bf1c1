//! Fluent Bit classic configs end to end: the ECS agent's generated file (spec §3.2) run by
//! the real binary, `check` listing every unsupported line, `check --print-toml` giving a
//! TOML that `check` accepts and that routes records to the same outputs, the FireLens
//! health input on TCP, and (with moto, `scripts/test.sh --test fluentbit_config`) delivery
//! to CloudWatch Logs, Firehose, Kinesis Data Streams and S3 under the names Fluent Bit
//! would use.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kinesis::{create_stream, read_all};
use common::moto::{Aws, endpoint, unique};
use common::{free_port, http_get, metric_sum};
use firelane::event::now_ns;
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, EventTime, ForwardClient};
use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firelane"))
}

/// A router started on a `.conf` file; killed when dropped.
struct FbRouter {
    child: Child,
    admin: u16,
    log: PathBuf,
}

impl FbRouter {
    fn start(conf: &Path, admin: u16, env: &[(&str, &str)]) -> FbRouter {
        let log = conf.with_extension("log");
        let child = bin()
            .args(["run", "-c"])
            .arg(conf)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn firelane");
        let r = FbRouter { child, admin, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&format!("http://127.0.0.1:{admin}/ready")) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "router not ready; log:\n{}",
                r.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.admin))
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn wait_metric(&self, name: &str, labels: &[&str], want: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = metric_sum(&self.metrics(), name, labels);
            if got >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} = {got}, want {want}; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait: outputs flush what they hold.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.logs();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("router did not stop; log:\n{}", self.logs());
    }
}

impl Drop for FbRouter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent's generated file for one app container `app` with `output` (its
/// `awsfirelens` options, written as the agent does: Name, Match, then sorted keys), the
/// health input on `health`, the forward socket in `dir`, metadata on, the user file
/// `@INCLUDE`d (spec §3.2). `[SERVICE]` is not written by the agent; the test adds one for
/// the admin port and the buffer directory, as a user's config-file would.
fn agent_conf(dir: &Path, fwd: u16, health: u16, admin: u16, outputs: &str) -> String {
    format!(
        "[SERVICE]
    Flush 1
    Grace 10
    HTTP_Server On
    HTTP_Listen 127.0.0.1
    HTTP_Port {admin}
    storage.path {dir}/data

[INPUT]
    Name forward
    Mem_Buf_Limit 25MB
    unix_path {dir}/fluent.sock

[INPUT]
    Name forward
    Listen 127.0.0.1
    Port {fwd}

[INPUT]
    Name tcp
    Tag firelens-healthcheck
    Listen 127.0.0.1
    Port {health}

[FILTER]
    Name record_modifier
    Match *
    Record ec2_instance_id i-123456789a
    Record ecs_cluster mycluster
    Record ecs_task_arn arn:aws:ecs:us-east-2:01234567891011:task/mycluster/3de392df6bfa470b97ed
    Record ecs_task_definition demo:7

@INCLUDE {dir}/external.conf

[OUTPUT]
    Name null
    Match firelens-healthcheck
{outputs}",
        dir = dir.display()
    )
}

/// The user's file: keep only lines with a level word, and copy errors to a local file.
fn external_conf(dir: &Path) -> String {
    format!(
        "[FILTER]
    Name grep
    Match *-firelens-*
    Regex log (INFO|WARN|ERROR)

[OUTPUT]
    Name file
    Match *-firelens-*
    Path {}
    File errors.jsonl
    Format plain
",
        dir.display()
    )
}

fn send(port: u16, tag: &str, lines: &[&str]) {
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{port}"));
    let mut c = ForwardClient::connect(&addr, Duration::from_secs(30)).expect("connect");
    let now = now_ns();
    let encoded: Vec<(EventTime, Vec<u8>)> = lines
        .iter()
        .map(|l| {
            let rec = json!({"log": l, "source": "stdout", "container_id": "abc", "container_name": "/ecs-demo-7-app"});
            (EventTime::from_ns(now), common::msgpack_record(&rec))
        })
        .collect();
    let entries: Vec<client::Entry<'_>> = encoded
        .iter()
        .map(|(time, record)| client::Entry {
            time: *time,
            record,
        })
        .collect();
    let chunk = client::new_chunk_id();
    let mut frame = Vec::new();
    client::encode_forward(&mut frame, tag, &entries, Some(&chunk));
    c.send(&frame).expect("send");
    c.read_ack(&chunk).expect("ack");
}

fn check(conf: &Path) -> (bool, String, String) {
    let out = bin()
        .args(["check", "-c"])
        .arg(conf)
        .output()
        .expect("check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_lists_every_unsupported_line_and_run_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(
        &conf,
        "[INPUT]
    Name forward
    unix_path /tmp/x.sock
[FILTER]
    Name nest
    Match *
    Operation nest
[OUTPUT]
    Name kinesis_streams
    Match *
    stream_name s
[OUTPUT]
    Name kinesis_firehose
    Match *
    deliver_stream_name my-stream
    region us-west-2
",
    )
    .expect("write");
    let (ok, _, err) = check(&conf);
    assert!(!ok, "check accepted it: {err}");
    let f = conf.display().to_string();
    for needle in [
        format!("{f}:4: [FILTER] nest: Operation nest is not supported"),
        format!("{f}:8: [OUTPUT] kinesis_streams: stream is required"),
        format!(
            "{f}:11: [OUTPUT] kinesis_streams: option stream_name (did you mean stream?) is not supported"
        ),
        format!("{f}:12: [OUTPUT] kinesis_firehose: delivery_stream is required"),
        format!(
            "{f}:15: [OUTPUT] kinesis_firehose: option deliver_stream_name (did you mean delivery_stream?) is not supported"
        ),
    ] {
        assert!(err.contains(&needle), "no {needle:?} in:\n{err}");
    }
    // run refuses to start (EX_CONFIG) rather than dropping the sections.
    let out = bin().args(["run", "-c"]).arg(&conf).output().expect("run");
    assert_eq!(out.status.code(), Some(78), "{out:?}");
}

#[test]
fn print_toml_is_accepted_and_routes_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outputs = "
[OUTPUT]
    Name cloudwatch_logs
    Match app-firelens*
    auto_create_group true
    log_group_name /ecs/demo
    log_stream_prefix from-fluent-bit-
    region us-west-2

[OUTPUT]
    Name s3
    Match worker-firelens*
    bucket my-bucket
    region us-west-2
    s3_key_format /logs/$TAG/%Y/%m/%d/$UUID.log
";
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(
        &conf,
        agent_conf(dir.path(), free_port(), free_port(), free_port(), outputs),
    )
    .expect("write");
    std::fs::write(dir.path().join("external.conf"), external_conf(dir.path())).expect("write");
    let (ok, plan, err) = check(&conf);
    assert!(ok, "check refused the agent's config:\n{err}");
    assert!(plan.contains("cloudwatch_logs"), "{plan}");
    let out = bin()
        .args(["check", "--print-toml", "-c"])
        .arg(&conf)
        .output()
        .expect("print-toml");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml_path = dir.path().join("firelane.toml");
    std::fs::write(&toml_path, &out.stdout).expect("write toml");
    let (ok, _, err) = check(&toml_path);
    assert!(ok, "check refused the printed TOML:\n{err}");
    // The same record reaches the same outputs, under the same names, from both.
    for tag in [
        "app-firelens-3de392df",
        "worker-firelens-3de392df",
        "firelens-healthcheck",
        "other",
    ] {
        let route = |c: &Path| {
            let out = bin()
                .args(["route", "-c"])
                .arg(c)
                .args(["--event", r#"{"log":"ERROR boom"}"#, "--tag", tag])
                .output()
                .expect("route");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The dry run stamps the record with the current second; two runs may straddle
            // one, so that line is compared without it.
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| match l.split_once(" (record time ") {
                    Some((head, _)) => head.to_string(),
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (a, b) = (route(&conf), route(&toml_path));
        assert_eq!(a, b, "tag {tag}: the .conf and its TOML route differently");
        if tag.starts_with("app-") {
            assert!(a.contains("cloudwatch_logs"), "{a}");
        }
    }
}

#[test]
fn health_input_takes_the_legacy_check_and_logs_have_no_colour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fwd, health, admin) = (free_port(), free_port(), free_port());
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(&conf, agent_conf(dir.path(), fwd, health, admin, "")).expect("write");
    std::fs::write(dir.path().join("external.conf"), external_conf(dir.path())).expect("write");
    let r = FbRouter::start(&conf, admin, &[]);
    // echo '{"health": "check"}' | nc 127.0.0.1 8877
    let mut s = TcpStream::connect(("127.0.0.1", health)).expect("connect health input");
    s.write_all(b"{\"health\": \"check\"}\n").expect("write");
    drop(s);
    r.wait_metric("firelane_input_records_total", &["input=\"tcp\""], 1.0);
    // The metadata filter applies to it too (Match *), and it goes to null.
    r.wait_metric("firelane_output_records_total", &["output=\"null\""], 1.0);
    // Fluent Bit's monitoring API on the same port (HTTP_Port).
    let get = |path: &str| http_get(&format!("http://127.0.0.1:{admin}{path}")).expect("GET");
    let (code, body) = get("/api/v1/uptime");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("uptime JSON");
    assert!(v["uptime_sec"].as_u64().is_some(), "{body}");
    assert!(
        v["uptime_hr"]
            .as_str()
            .is_some_and(|s| s.starts_with("Fluent Bit has been running:")),
        "{body}"
    );
    assert_eq!(get("/api/v1/health"), (200, "ok\n".to_string()));
    let (code, prom) = get("/api/v1/metrics/prometheus");
    assert_eq!(code, 200);
    assert!(
        prom.contains("fluentbit_input_records_total{name=\"tcp\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("fluentbit_output_proc_records_total{name=\"null\"} 1"),
        "{prom}"
    );
    let logs = r.stop();
    assert!(!logs.is_empty());
    assert!(
        !logs.contains('\u{1b}'),
        "stderr is a file, yet the log has ANSI escapes:\n{logs}"
    );
}

/// The generated configs of spec §3.2 / §3.5 (CloudWatch Logs, Firehose, S3; metadata,
/// an @INCLUDEd user file with a grep filter and a second output) against moto.
#[test]
fn generated_configs_deliver_under_fluent_bit_names() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-fb");
    aws.create_bucket(&bucket);
    let fh_bucket = unique("fl-fbfh");
    aws.create_bucket(&fh_bucket);
    let stream = aws.create_delivery_stream(&fh_bucket, "fh/");
    let group = format!("/ecs/{}", unique("fb"));
    let app_group = unique("app");
    let dir = tempfile::tempdir().expect("tempdir");
    let (fwd, health, admin) = (free_port(), free_port(), free_port());
    let outputs = format!(
        "
[OUTPUT]
    Name cloudwatch_logs
    Match web-firelens*
    auto_create_group true
    endpoint {ep}
    log_group_name {group}
    log_stream_prefix from-fluent-bit-
    region us-east-1
    retry_limit 2

[OUTPUT]
    Name cloudwatch
    Match job-firelens*
    auto_create_group true
    endpoint {ep}
    log_group_name /aws/ecs/containerinsights/$(ecs_cluster)/{app_group}
    log_stream_name $(ecs_task_id)
    log_key log
    region us-east-1

[OUTPUT]
    Name kinesis_firehose
    Match api-firelens*
    delivery_stream {stream}
    endpoint {ep}
    region us-east-1

[OUTPUT]
    Name s3
    Match worker-firelens*
    bucket {bucket}
    endpoint {ep}
    region us-east-1
    s3_key_format /${{ECS_CLUSTER_NAME}}/$TAG[0]/%Y/%m/%d/$UUID.log
    s3_key_format_tag_delimiters .-
    total_file_size 1M
    upload_timeout 1s
    use_put_object On
"
    );
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(&conf, agent_conf(dir.path(), fwd, health, admin, &outputs)).expect("write");
    std::fs::write(dir.path().join("external.conf"), external_conf(dir.path())).expect("write");
    let r = FbRouter::start(&conf, admin, &[("ECS_CLUSTER_NAME", "mycluster")]);
    let task = "3de392df6bfa470b97ed";
    let lines = ["INFO one", "DEBUG dropped by the user's grep", "ERROR two"];
    // The S3 key's date is the records' UTC day: taken here and again at the check, so a run
    // across midnight accepts either day.
    let sent_day = chrono::Utc::now().format("%Y/%m/%d").to_string();
    for app in ["web", "api", "worker", "job"] {
        send(fwd, &format!("{app}-firelens-{task}"), &lines);
    }
    r.wait_metric("firelane_output_records_total", &["output=\"file\""], 8.0);
    let logs = r.stop();

    // CloudWatch Logs: the group as written, the stream prefix + tag (C plugin).
    let events = aws.log_events(&group, &format!("from-fluent-bit-web-firelens-{task}"));
    let mut msgs: Vec<Value> = events
        .iter()
        .map(|(_, m)| serde_json::from_str(m).expect("JSON event"))
        .collect();
    msgs.sort_by_key(|m| m["log"].as_str().map(String::from));
    assert_eq!(msgs.len(), 2, "{msgs:?}\n{logs}");
    assert_eq!(msgs[0]["log"], "ERROR two");
    assert_eq!(msgs[1]["log"], "INFO one");
    assert_eq!(msgs[0]["ecs_cluster"], "mycluster");
    assert_eq!(msgs[0]["ecs_task_definition"], "demo:7");
    assert!(msgs[0].get("_fluentbit_tag").is_none(), "{:?}", msgs[0]);

    // CloudWatch Logs, Go plugin templates: $(ecs_cluster) and $(ecs_task_id) from the
    // agent's metadata; log_key sends the line alone.
    let events = aws.log_events(
        &format!("/aws/ecs/containerinsights/mycluster/{app_group}"),
        task,
    );
    let mut lines: Vec<&str> = events.iter().map(|(_, m)| m.as_str()).collect();
    lines.sort();
    assert_eq!(lines, ["ERROR two", "INFO one"], "{logs}");

    // S3: /<cluster>/$TAG[0]/%Y/%m/%d/$UUID.log without the leading "/".
    let objects = aws.objects(&bucket, "mycluster/worker/");
    assert_eq!(
        objects.len(),
        1,
        "{:?}\n{logs}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    let key = &objects[0].0;
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    assert!(
        [&sent_day, &today]
            .iter()
            .any(|d| key.starts_with(&format!("mycluster/worker/{d}/"))),
        "{key}"
    );
    assert!(key.ends_with(".log"), "{key}");
    let body = String::from_utf8_lossy(&objects[0].2).into_owned();
    let recs: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(recs.len(), 2, "{body}");
    assert!(recs.iter().all(|r| r.get("date").is_some()), "{body}");

    // Firehose → its S3 destination: JSON lines.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fh = loop {
        let o = aws.objects(&fh_bucket, "fh/");
        if !o.is_empty() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let all: String = fh
        .iter()
        .map(|o| String::from_utf8_lossy(&o.2).into_owned())
        .collect();
    assert_eq!(all.matches("\"log\":\"INFO one\"").count(), 1, "{all}");
    assert_eq!(all.matches("\"log\":\"ERROR two\"").count(), 1, "{all}");
    assert!(!all.contains("DEBUG"), "{all}");

    // The user's second output got the eight kept lines of all four containers.
    let file = std::fs::read_to_string(dir.path().join("errors.jsonl")).expect("file output");
    assert_eq!(file.lines().count(), 8, "{file}");
}

/// `kinesis_streams` (C plugin: random partition keys) and the Go `kinesis` plugin
/// (`partition_key container_id`, `log_key log`) from an agent-generated config, against
/// moto: each kept line lands once, as a newline-terminated record.
#[test]
fn kinesis_streams_conf_delivers() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let c_stream = create_stream(&aws, 2);
    let go_stream = create_stream(&aws, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (fwd, health, admin) = (free_port(), free_port(), free_port());
    let outputs = format!(
        "
[OUTPUT]
    Name kinesis_streams
    Match web-firelens*
    endpoint {ep}
    region us-east-1
    stream {c_stream}
    time_key time

[OUTPUT]
    Name kinesis
    Match api-firelens*
    append_newline true
    endpoint {ep}
    log_key log
    partition_key container_id
    region us-east-1
    stream {go_stream}
"
    );
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(&conf, agent_conf(dir.path(), fwd, health, admin, &outputs)).expect("write");
    std::fs::write(dir.path().join("external.conf"), external_conf(dir.path())).expect("write");
    let (ok, _, err) = check(&conf);
    assert!(ok, "check refused it: {err}");
    let r = FbRouter::start(&conf, admin, &[]);
    let task = "3de392df6bfa470b97ed";
    let lines = ["INFO one", "DEBUG dropped by the user's grep", "ERROR two"];
    for app in ["web", "api"] {
        send(fwd, &format!("{app}-firelens-{task}"), &lines);
    }
    r.wait_metric(
        "firelane_output_records_total",
        &["output=\"kinesis_streams\"", "result=\"sent\""],
        2.0,
    );
    r.wait_metric(
        "firelane_output_records_total",
        &["output=\"kinesis\"", "result=\"sent\""],
        2.0,
    );
    let logs = r.stop();

    // C plugin: the JSON record with the agent's metadata and time_key; random keys.
    let stored = read_all(&aws, &c_stream);
    let mut recs: Vec<Value> = stored
        .iter()
        .map(|s| {
            assert!(s.data.ends_with(b"\n"), "{s:?}");
            assert_eq!(s.partition_key.len(), 32, "random key: {s:?}");
            serde_json::from_slice(&s.data).expect("JSON record")
        })
        .collect();
    recs.sort_by_key(|m| m["log"].as_str().map(String::from));
    assert_eq!(recs.len(), 2, "{recs:?}\n{logs}");
    assert_eq!(recs[0]["log"], "ERROR two");
    assert_eq!(recs[1]["log"], "INFO one");
    assert_eq!(recs[0]["ecs_cluster"], "mycluster");
    assert!(
        recs[0]["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{:?}",
        recs[0]
    );

    // Go plugin: the log line alone, keyed by the record's container_id.
    let stored = read_all(&aws, &go_stream);
    let mut got: Vec<(String, String)> = stored
        .iter()
        .map(|s| {
            (
                String::from_utf8(s.data.clone()).expect("utf-8"),
                s.partition_key.clone(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("ERROR two\n".to_string(), "abc".to_string()),
            ("INFO one\n".to_string(), "abc".to_string())
        ],
        "{logs}"
    );
}
