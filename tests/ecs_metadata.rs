//! The `ecs_metadata` processor end to end: the real binary, a fake Task Metadata Endpoint v4
//! on loopback serving recorded EC2 and Fargate answers (`tests/data/tmds/`), records sent
//! over the forward protocol as Docker's fluentd driver does, and a file output.

mod common;
#[path = "common/tmds.rs"]
mod tmds;

use std::time::{Duration, Instant};

use common::{Router, free_port, wait_lines};
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, EventTime, ForwardClient};
use serde_json::{Value, json};
use tmds::Tmds;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A forward input with an `ecs_metadata` processor reading `endpoint` (none: the
/// environment), into a file.
fn config(port: u16, endpoint: Option<&str>) -> String {
    let endpoint = endpoint
        .map(|e| format!("endpoint = \"{e}\""))
        .unwrap_or_default();
    format!(
        r#"
[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{port}"]
processors = ["meta"]

[processors.meta]
type = "ecs_metadata"
{endpoint}

[routes.all]
from = ["app"]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "_tag"
batch = {{ max_records = 500, max_age = "50ms" }}
"#
    )
}

/// Sends one Message-mode request per record, like Docker's fluentd driver (EventTime, the
/// driver's four string fields), with a chunk so the call returns once the router took it.
fn send(port: u16, tag: &str, container_id: &str, lines: &[&str]) {
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{port}"));
    let mut c = ForwardClient::connect(&addr, TIMEOUT).expect("connect");
    for line in lines {
        let rec = common::msgpack_record(&json!({
            "container_id": container_id,
            "container_name": "/ecs-checkout-42-web-c8d9e0f1a2b3c4d5e600",
            "source": "stdout",
            "log": line,
        }));
        let chunk = client::new_chunk_id();
        let mut frame = Vec::new();
        client::encode_message(&mut frame, tag, EventTime::now(), &rec, Some(&chunk));
        c.send(&frame).expect("send");
        c.read_ack(&chunk).expect("ack");
    }
}

fn out(r: &Router, n: usize) -> Vec<Value> {
    let lines = wait_lines(&r.path("out.jsonl"), n, TIMEOUT);
    assert!(
        lines.len() >= n,
        "{} of {n} lines:\n{}",
        lines.len(),
        r.logs()
    );
    lines
}

fn by_log<'a>(lines: &'a [Value], log: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["log"] == log)
        .unwrap_or_else(|| panic!("no line {log:?} in {lines:?}"))
}

fn assert_fields(line: &Value, cluster: &str, task_id: &str, task_def: &str, container: &str) {
    assert_eq!(line["ecs_cluster"], cluster, "{line}");
    assert_eq!(line["ecs_task_id"], task_id, "{line}");
    assert!(
        line["ecs_task_arn"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:ecs:") && a.ends_with(task_id)),
        "{line}"
    );
    assert_eq!(line["ecs_task_definition"], task_def, "{line}");
    assert_eq!(line["ecs_container_name"], container, "{line}");
    // Docker's fields are kept as they came.
    assert_eq!(line["source"], "stdout", "{line}");
    assert!(line["container_id"].is_string(), "{line}");
}

/// EC2 (short cluster name) and Fargate (cluster ARN, `<32 hex>-<10 digits>` ids): the five
/// fields on every record.
#[test]
fn every_record_gets_the_task_fields_ec2_and_fargate() {
    for (task, container, id, cluster, task_id, task_def, name) in [
        (
            tmds::EC2_TASK,
            tmds::EC2_CONTAINER,
            tmds::EC2_WEB_ID,
            "prod-east",
            tmds::EC2_TASK_ID,
            "checkout:42",
            "web",
        ),
        (
            tmds::FARGATE_TASK,
            tmds::FARGATE_CONTAINER,
            tmds::FARGATE_API_ID,
            "payments",
            tmds::FARGATE_TASK_ID,
            "ledger-api:7",
            "api",
        ),
    ] {
        let ep = Tmds::start(task, container);
        let port = free_port();
        let r = Router::start(&config(port, Some(&ep.url())));
        let tag = format!("{name}-firelens-{task_id}");
        let lines: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        send(port, &tag, id, &refs);
        let got = out(&r, 50);
        assert_eq!(got.len(), 50);
        for line in &got {
            assert_fields(line, cluster, task_id, task_def, name);
            assert_eq!(line["_tag"], tag.as_str());
        }
        assert_eq!(
            ep.state().task_hits,
            1,
            "one /task request for a known container"
        );
    }
}

/// The endpoint is down when the router starts: the router is ready at once, records flow
/// (without the fields, counted) instead of waiting; once the endpoint answers, records get
/// the fields.
#[test]
fn endpoint_down_at_start_then_up() {
    let ep_port = free_port();
    let port = free_port();
    let t0 = Instant::now();
    let r = Router::start(&config(port, Some(&Tmds::url_for(ep_port))));
    let t1 = Instant::now();
    send(port, "web-firelens-x", tmds::EC2_WEB_ID, &["while down"]);
    assert!(
        t1.elapsed() < Duration::from_secs(10),
        "a record waited {:?} for a dead endpoint",
        t1.elapsed()
    );
    let got = out(&r, 1);
    assert!(got[0].get("ecs_cluster").is_none(), "{}", got[0]);
    assert_eq!(got[0]["log"], "while down");
    assert!(
        r.metric(
            "firelane_ecs_metadata_missing_total",
            &["processor=\"meta\"", "what=\"task\""]
        ) >= 1.0
    );
    assert!(t0.elapsed() < Duration::from_secs(30));

    let ep = Tmds::start_on(ep_port, tmds::EC2_TASK, tmds::EC2_CONTAINER);
    r.wait_metric(
        "firelane_ecs_metadata_requests_total",
        &["processor=\"meta\"", "result=\"ok\""],
        1.0,
        Duration::from_secs(60),
    );
    send(port, "web-firelens-x", tmds::EC2_WEB_ID, &["after up"]);
    let got = out(&r, 2);
    assert_fields(
        by_log(&got, "after up"),
        "prod-east",
        tmds::EC2_TASK_ID,
        "checkout:42",
        "web",
    );
    assert!(ep.state().task_hits >= 1);
}

/// The router starts before Docker created the app container, so the first `/task` answer
/// lacks its id. The app's first records trigger exactly one refresh and carry the name;
/// later records of that container trigger none.
#[test]
fn unknown_container_id_triggers_exactly_one_refresh() {
    let ep = Tmds::start(tmds::EC2_BEFORE_APP, tmds::EC2_CONTAINER);
    let port = free_port();
    let r = Router::start(&config(port, Some(&ep.url())));
    r.wait_metric(
        "firelane_ecs_metadata_requests_total",
        &["processor=\"meta\"", "result=\"ok\""],
        1.0,
        TIMEOUT,
    );
    assert_eq!(ep.state().task_hits, 1);
    // Docker creates `web`.
    ep.state().task = tmds::EC2_TASK;
    send(port, "web-firelens-x", tmds::EC2_WEB_ID, &["a", "b", "c"]);
    send(port, "web-firelens-x", tmds::EC2_WEB_ID, &["d", "e"]);
    let got = out(&r, 5);
    for line in &got {
        assert_fields(line, "prod-east", tmds::EC2_TASK_ID, "checkout:42", "web");
    }
    // Past the refresh rate limit: nothing else was asked.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ep.state().task_hits, 2, "exactly one refresh");
    assert_eq!(
        r.metric(
            "firelane_ecs_metadata_requests_total",
            &["processor=\"meta\"", "result=\"ok\""]
        ),
        2.0
    );
}

/// Outside ECS (no `ECS_CONTAINER_METADATA_URI_V4`, no `endpoint`): one clear warning,
/// records pass unchanged.
#[test]
fn outside_ecs_records_pass_unchanged_with_one_warning() {
    assert!(
        std::env::var_os("ECS_CONTAINER_METADATA_URI_V4").is_none(),
        "this test runs outside ECS"
    );
    let port = free_port();
    let r = Router::start(&config(port, None));
    send(port, "web-firelens-x", tmds::EC2_WEB_ID, &["one", "two"]);
    let got = out(&r, 2);
    for line in &got {
        let mut keys: Vec<&str> = line
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["_tag", "container_id", "container_name", "log", "source"],
            "{line}"
        );
    }
    let logs = r.logs();
    assert_eq!(
        logs.matches("ECS_CONTAINER_METADATA_URI_V4 is not set")
            .count(),
        1,
        "{logs}"
    );
}
