//! `config/firelens.toml` end to end, as shipped (only addresses, the data directory and the
//! AWS endpoint changed for the test): the real binary, a fake Task Metadata Endpoint v4
//! serving recorded EC2 and Fargate answers, app lines sent over the unix socket the way
//! Docker's fluentd driver does for FireLens (Message mode, EventTime, no ack; fields
//! `container_id`, `container_name`, `source`, `log`), and CloudWatch Logs on moto: each
//! container's lines land in `/ecs/<cluster>/<task-definition container name>`, stream = the
//! task id, and a line Docker split into 16 KiB pieces arrives whole.
//!
//! Run with `scripts/test.sh --test firelens` (it starts moto and exports
//! FIRELANE_TEST_AWS_ENDPOINT); without it the test returns at once with a loud message.

mod common;
#[path = "common/tmds.rs"]
mod tmds;

use std::path::Path;
use std::time::{Duration, Instant};

use common::moto::{Aws, endpoint, unique};
use common::{Router, free_port};
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, EventTime, ForwardClient};
use serde_json::json;
use tmds::Tmds;

/// config/firelens.toml with the test's sockets, admin port and moto endpoint.
fn shipped_config(sock: &Path, ep: &str) -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/firelens.toml"))
            .expect("config/firelens.toml");
    let mut out = String::new();
    for line in text.lines() {
        match line.trim() {
            "listen = \"0.0.0.0:2020\"" => out.push_str("listen = \"127.0.0.1:{admin}\""),
            l if l.starts_with("firelens = true") => {
                out.push_str(line);
                // The FireLens socket path and TCP port are the machine's; keep the test's own.
                out.push_str(&format!("\nlisten = [\"unix://{}\"]", sock.display()));
            }
            "type = \"firehose\"" | "type = \"cloudwatch_logs\"" | "type = \"s3\"" => {
                out.push_str(line);
                out.push_str(&format!(
                    "\nregion = \"us-east-1\"\nendpoint_url = \"{ep}\""
                ));
                if line.contains("s3") {
                    out.push_str("\nforce_path_style = true");
                }
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    assert!(
        out.contains("unix://"),
        "firelens.toml has no `firelens = true` line"
    );
    out
}

/// Sends `lines` as one app container's log lines, the way Docker's fluentd driver does.
fn send_like_docker(sock: &Path, tag: &str, container_id: &str, lines: &[String]) {
    let addr = ListenAddr::Unix(sock.to_path_buf());
    let mut c = ForwardClient::connect(&addr, Duration::from_secs(30)).expect("connect");
    for (i, line) in lines.iter().enumerate() {
        let rec = common::msgpack_record(&json!({
            "container_id": container_id,
            "container_name": format!("/ecs-task-1-app-{}", &container_id[..12]),
            "source": if i % 2 == 0 { "stdout" } else { "stderr" },
            "log": line,
        }));
        let mut frame = Vec::new();
        client::encode_message(&mut frame, tag, EventTime::now(), &rec, None);
        c.send(&frame).expect("send");
    }
    c.finish().expect("close");
}

/// Sends `line` split into Docker's 16 KiB pieces (`partial_message`, `partial_id`,
/// `partial_ordinal`, `partial_last`, all strings; one time for every piece).
fn send_split_like_docker(sock: &Path, tag: &str, container_id: &str, line: &str) {
    let addr = ListenAddr::Unix(sock.to_path_buf());
    let mut c = ForwardClient::connect(&addr, Duration::from_secs(30)).expect("connect");
    let pieces: Vec<&str> = line
        .as_bytes()
        .chunks(16 * 1024)
        .map(|p| std::str::from_utf8(p).expect("ascii line"))
        .collect();
    let time = EventTime::now();
    let id = unique("partial").replace('-', "");
    for (i, piece) in pieces.iter().enumerate() {
        let rec = common::msgpack_record(&json!({
            "container_id": container_id,
            "container_name": format!("/ecs-task-1-app-{}", &container_id[..12]),
            "source": "stdout",
            "log": piece,
            "partial_message": "true",
            "partial_id": id,
            "partial_ordinal": (i + 1).to_string(),
            "partial_last": if i + 1 == pieces.len() { "true" } else { "false" },
        }));
        let mut frame = Vec::new();
        client::encode_message(&mut frame, tag, time, &rec, None);
        c.send(&frame).expect("send");
    }
    c.finish().expect("close");
}

#[test]
fn firelens_toml_lands_per_cluster_and_container_with_the_task_id_as_stream() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-firelens");
    aws.create_bucket(&bucket);
    let stream = aws.create_delivery_stream(&bucket, "access/");
    for (task, container, id, cluster, task_id, name) in [
        (
            tmds::EC2_TASK,
            tmds::EC2_CONTAINER,
            tmds::EC2_WEB_ID,
            "prod-east",
            tmds::EC2_TASK_ID,
            "web",
        ),
        (
            tmds::FARGATE_TASK,
            tmds::FARGATE_CONTAINER,
            tmds::FARGATE_API_ID,
            "payments",
            tmds::FARGATE_TASK_ID,
            "api",
        ),
    ] {
        let meta = Tmds::start(task, container);
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("run/fluent.sock");
        let data = dir.path().join("data").display().to_string();
        let r = Router::start_with(
            dir,
            &shipped_config(&sock, &ep),
            free_port(),
            &[
                ("ECS_CONTAINER_METADATA_URI_V4", meta.url().as_str()),
                ("FIRELANE_DATA_DIR", data.as_str()),
                ("ACCESS_STREAM", stream.as_str()),
                ("LOG_BUCKET", bucket.as_str()),
                ("AWS_REGION", "us-east-1"),
            ],
        );
        // Lines no earlier run sent: the group and stream names are the fixtures'.
        let run = unique("run");
        let lines: Vec<String> = (0..40)
            .map(|i| format!("{run} worker {i} handled job"))
            .collect();
        let tag = format!("{name}-firelens-{task_id}");
        // Docker writes one container's stream over one connection, in order; each send
        // here is its own connection (FireLens sends no acks), so the next one waits until
        // the router has taken what came before. Otherwise the next lines could overtake the
        // pieces and end the partial line early, as a real interleaving would.
        let taken = |n: f64| {
            let got = r.wait_metric(
                "firelane_input_records_total",
                &["input=\"app\""],
                n,
                Duration::from_secs(30),
            );
            assert!(got >= n, "the router took {got} of {n} records");
        };
        send_like_docker(&sock, &tag, id, &lines[..20]);
        taken(20.0);
        // A 40 KiB line: three pieces from Docker, one event in CloudWatch Logs (the
        // `partial` processor `firelens = true` implies).
        let long = format!("{run} long {}", "x".repeat(40 * 1024));
        send_split_like_docker(&sock, &tag, id, &long);
        taken(23.0);
        send_like_docker(&sock, &tag, id, &lines[20..]);
        let mut lines = lines;
        lines.insert(20, long);

        let group = format!("/ecs/{cluster}/{name}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let got = loop {
            let got: Vec<String> = groups_events(&aws, &group, task_id)
                .into_iter()
                .filter(|m| m.starts_with(&run))
                .collect();
            if got.len() >= lines.len() || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        // stdout and stderr are separate streams (and stderr lines also take the `errors`
        // route): order is kept per stream, not across them, so compare as sets.
        let (mut got, mut want) = (got, lines);
        got.sort();
        want.sort();
        assert_eq!(
            got.iter().map(String::len).collect::<Vec<_>>(),
            want.iter().map(String::len).collect::<Vec<_>>(),
            "{group} / {task_id}: every line once, the long one whole\n{}",
            r.logs()
        );
        assert_eq!(got, want, "{group} / {task_id} (log_key = \"log\")");
    }
}

/// The events of `group`/`stream`, empty while either does not exist yet.
fn groups_events(aws: &Aws, group: &str, stream: &str) -> Vec<String> {
    let exists = common::moto::rt().block_on(async {
        aws.logs
            .describe_log_streams()
            .log_group_name(group)
            .log_stream_name_prefix(stream)
            .send()
            .await
            .map(|o| {
                o.log_streams()
                    .iter()
                    .any(|s| s.log_stream_name() == Some(stream))
            })
            .unwrap_or(false)
    });
    if !exists {
        return Vec::new();
    }
    aws.log_events(group, stream)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}
