//! The cluster state built from ECS events (issue #12 item 5), end to end: events posted to
//! an eventbridge HTTP input of the real binary, read back from `/metrics` and
//! `/api/ecs/state` on the admin port. Out-of-order and duplicate task events (versions
//! 3, 1, 2, 3) change nothing after the newest; repeated deployment / service-action events
//! count once; refused requests do not count; `[admin.ecs] max_tasks` holds; `[admin] auth`
//! guards everything but the health checks; the sqs input (on moto) feeds it too.

mod common;

use std::time::{Duration, Instant};

use common::ecs_events::{Origin, Task};
use common::{Router, free_port, metric_sum};
use reqwest::blocking::Client;
use serde_json::{Value, json};

const SERVICE_ACTION: &str = include_str!("data/seeds/ecs-service-action-placement-failure.json");
const DEPLOYMENT_FAILED: &str = include_str!("data/seeds/ecs-deployment-state-change-failed.json");

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// An eventbridge http input into a null output, `[admin]` extended by `admin_extra`.
fn start(admin_extra: &str) -> (Router, String) {
    let port = free_port();
    let admin = free_port();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
{admin_extra}

[inputs.events]
type = "http"
listen = "127.0.0.1:{port}"
format = "eventbridge"

[routes.all]
to = ["sink"]

[outputs.sink]
type = "null"
"#
    );
    let r = Router::start_with(tempfile::tempdir().expect("tempdir"), &config, admin, &[]);
    (r, format!("http://127.0.0.1:{port}/"))
}

/// An `ECS Task State Change` of task `task` (service `web` of cluster `prod`) at `version`.
fn task_event(task: &str, version: u64, status: &str) -> Value {
    let stopped = status == "STOPPED";
    let mut fields = json!({
        "lastStatus": status,
        "desiredStatus": if stopped { "STOPPED" } else { "RUNNING" },
        "updatedAt": format!("2026-11-30T10:00:0{version}.000Z"),
        "containers": [
            {"name": "app", "lastStatus": status},
            {"name": "log_router", "lastStatus": status}
        ],
        "version": version,
    });
    if stopped {
        fields["stopCode"] = json!("EssentialContainerExited");
        fields["stoppedReason"] = json!("Essential container in task exited");
        fields["stoppedAt"] = json!("2026-11-30T10:00:03.000Z");
        fields["containers"] = json!([
            {"name": "app", "lastStatus": "STOPPED", "exitCode": 1, "reason": "OutOfMemoryError: Container killed due to memory usage"},
            {"name": "log_router", "lastStatus": "STOPPED", "exitCode": 0}
        ]);
    }
    let origin = Origin {
        account: "111122223333",
        region: "eu-west-1",
    };
    origin.task_event(
        &format!("{task}-v{version}-{}", rand_suffix()),
        &format!("2026-11-30T10:00:0{version}Z"),
        &Task {
            cluster: "prod",
            id: task,
            definition: "web:42",
            group: "service:web",
        },
        fields,
    )
}

/// A distinct event id per delivery: EventBridge gives a redelivery the same id, but ECS
/// gives each of its (possibly repeated) state changes its own, so versions are what
/// orders tasks here, not ids.
fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u128
}

fn post(url: &str, body: &str) -> u16 {
    client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .status()
        .as_u16()
}

fn get(r: &Router, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = client().get(format!("http://127.0.0.1:{}{path}", r.admin));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

fn state(r: &Router) -> Value {
    let (status, body) = get(r, "/api/ecs/state", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `/api/ecs/state` until `events.applied + stale + repeated` reaches `n`.
fn wait_events(r: &Router, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = state(r);
        let e = &s["events"];
        let seen: u64 = ["applied", "stale", "repeated"]
            .iter()
            .map(|k| e[k].as_u64().unwrap_or(0))
            .sum();
        if seen >= n || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const TASKS: &str = "firelane_ecs_tasks";

#[test]
fn out_of_order_and_duplicate_task_events_leave_the_right_state() {
    let (r, url) = start("");
    // Task a: its STOPPED event (version 3) first, then the older PENDING (1) and RUNNING
    // (2), then the STOPPED event again (a duplicate delivery).
    for (v, st) in [
        (3, "STOPPED"),
        (1, "PENDING"),
        (2, "RUNNING"),
        (3, "STOPPED"),
    ] {
        let body = task_event("aaaa", v, st).to_string();
        assert_eq!(post(&url, &body), 200);
    }
    // Task b in order, in one request: PENDING then RUNNING.
    let both = json!([
        task_event("bbbb", 1, "PENDING"),
        task_event("bbbb", 2, "RUNNING")
    ]);
    assert_eq!(post(&url, &both.to_string()), 200);
    // A deployment and a service action, each delivered twice (same id: a redelivery).
    for _ in 0..2 {
        assert_eq!(post(&url, DEPLOYMENT_FAILED), 200);
        assert_eq!(post(&url, SERVICE_ACTION), 200);
    }
    let s = wait_events(&r, 10);

    let m = r.metrics();
    let prod = ["cluster=\"prod\"", "group=\"service:web\""];
    let gauge = |status: &str| {
        let mut labels = prod.to_vec();
        let l = format!("last_status=\"{status}\"");
        labels.push(&l);
        metric_sum(&m, TASKS, &labels)
    };
    assert_eq!(gauge("STOPPED"), 1.0, "{m}");
    assert_eq!(gauge("RUNNING"), 1.0, "{m}");
    assert_eq!(gauge("PENDING"), 0.0, "{m}");
    assert_eq!(metric_sum(&m, TASKS, &[]), 2.0, "two tasks in all:\n{m}");
    assert_eq!(
        metric_sum(
            &m,
            "firelane_ecs_task_stops_total",
            &[prod[0], prod[1], "stop_code=\"EssentialContainerExited\""]
        ),
        1.0,
        "one stop, however often and in whatever order it is told:\n{m}"
    );
    assert_eq!(
        metric_sum(&m, "firelane_ecs_task_stops_total", &[]),
        1.0,
        "{m}"
    );
    let exits = |container: &str, code: &str| {
        metric_sum(
            &m,
            "firelane_ecs_container_exits_total",
            &[
                "cluster=\"prod\"",
                &format!("container=\"{container}\""),
                &format!("exit_code=\"{code}\""),
            ],
        )
    };
    assert_eq!(exits("app", "1"), 1.0, "{m}");
    assert_eq!(exits("log_router", "0"), 1.0, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "firelane_ecs_deployments_total",
            &[
                "service=\"malformed_task\"",
                "event_name=\"SERVICE_DEPLOYMENT_FAILED\""
            ]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "firelane_ecs_service_events_total",
            &[
                "cluster=\"hogehoge_cluster\"",
                "service=\"nginx\"",
                "event_type=\"ERROR\"",
                "event_name=\"SERVICE_TASK_PLACEMENT_FAILURE\""
            ]
        ),
        1.0,
        "{m}"
    );

    // The JSON state says the same.
    assert_eq!(
        s["groups"],
        json!([{"cluster": "prod", "group": "service:web", "tasks": {"RUNNING": 1, "STOPPED": 1}}]),
        "{s:#}"
    );
    let tasks = s["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2, "{s:#}");
    assert_eq!(tasks[0]["task_id"], "aaaa");
    assert_eq!(tasks[0]["last_status"], "STOPPED");
    assert_eq!(tasks[0]["version"], 3);
    assert_eq!(tasks[0]["task_definition"], "web:42");
    assert_eq!(tasks[1]["task_id"], "bbbb");
    assert_eq!(tasks[1]["last_status"], "RUNNING");
    assert_eq!(tasks[1]["version"], 2);
    let stops = s["recent_stops"].as_array().expect("recent_stops");
    assert_eq!(stops.len(), 1, "{s:#}");
    assert_eq!(stops[0]["task_id"], "aaaa");
    assert_eq!(stops[0]["stop_code"], "EssentialContainerExited");
    assert_eq!(
        stops[0]["stopped_reason"],
        "Essential container in task exited"
    );
    assert_eq!(stops[0]["containers"][0]["exit_code"], 1);
    assert_eq!(
        stops[0]["containers"][0]["reason"],
        "OutOfMemoryError: Container killed due to memory usage"
    );
    let deps = s["deployments"].as_array().expect("deployments");
    assert_eq!(deps.len(), 1, "{s:#}");
    assert_eq!(deps[0]["cluster"], "hogehoge_cluster");
    assert_eq!(deps[0]["service"], "malformed_task");
    assert_eq!(deps[0]["outcome"], "failed");
    assert_eq!(
        deps[0]["reason"],
        "ECS deployment circuit breaker: tasks failed to start."
    );
    let actions = s["recent_service_actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "{s:#}");
    assert_eq!(actions[0]["reason"], "AGENT:DISCONNECTED");
    assert_eq!(s["events"]["applied"], 5, "{s:#}");
    assert_eq!(s["events"]["stale"], 3, "{s:#}");
    assert_eq!(s["events"]["repeated"], 2, "{s:#}");
}

/// A request the input refuses (400: one element is not an event) is not applied: the
/// sender fixes and resends it, and its events must count once.
#[test]
fn refused_requests_do_not_update_the_state() {
    let (r, url) = start("");
    let bad = json!([task_event("cccc", 3, "STOPPED"), {"not": "an event"}]);
    assert_eq!(post(&url, &bad.to_string()), 400);
    let good = json!([task_event("cccc", 3, "STOPPED")]);
    assert_eq!(post(&url, &good.to_string()), 200);
    let s = wait_events(&r, 1);
    assert_eq!(s["events"]["applied"], 1, "{s:#}");
    assert_eq!(r.metric("firelane_ecs_task_stops_total", &[]), 1.0);
}

#[test]
fn max_tasks_caps_the_model() {
    let (r, url) = start("ecs = { max_tasks = 2, history = 1 }");
    for t in ["t1", "t2", "t3"] {
        assert_eq!(post(&url, &task_event(t, 2, "RUNNING").to_string()), 200);
    }
    for t in ["s1", "s2"] {
        assert_eq!(post(&url, &task_event(t, 3, "STOPPED").to_string()), 200);
    }
    let s = wait_events(&r, 5);
    assert_eq!(s["tasks"].as_array().map(Vec::len), Some(2), "{s:#}");
    assert_eq!(s["events"]["tasks_evicted"], 3, "{s:#}");
    assert_eq!(s["limits"]["max_tasks"], 2);
    assert_eq!(r.metric(TASKS, &[]), 2.0, "{}", r.metrics());
    assert_eq!(
        s["recent_stops"].as_array().map(Vec::len),
        Some(1),
        "history = 1"
    );
    // Stops are counted even when their task is evicted later.
    assert_eq!(r.metric("firelane_ecs_task_stops_total", &[]), 2.0);
}

#[test]
fn admin_auth_guards_everything_but_health_checks() {
    let (r, url) = start(r#"auth = { type = "bearer", token = "s3cret" }"#);
    assert_eq!(
        post(&url, &task_event("dddd", 1, "PENDING").to_string()),
        200
    );
    for open in ["/health", "/ready"] {
        assert_eq!(get(&r, open, None).0, 200, "{open} stays open");
    }
    for path in ["/metrics", "/api/ecs/state"] {
        assert_eq!(get(&r, path, None).0, 401, "{path} without credentials");
        assert_eq!(
            get(&r, path, Some("Bearer wrong")).0,
            401,
            "{path} with a wrong token"
        );
        let (status, body) = get(&r, path, Some("Bearer s3cret"));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, m) = get(&r, "/metrics", Some("Bearer s3cret"));
    assert!(
        metric_sum(&m, "firelane_admin_unauthorized_total", &[]) >= 4.0,
        "{m}"
    );
}

#[test]
fn admin_basic_auth_asks_the_browser() {
    let (r, _) = start(r#"auth = { type = "basic", username = "ops", password = "pw" }"#);
    let resp = client()
        .get(format!("http://127.0.0.1:{}/api/ecs/state", r.admin))
        .send()
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic")),
        "{:?}",
        resp.headers()
    );
    let resp = client()
        .get(format!("http://127.0.0.1:{}/api/ecs/state", r.admin))
        .basic_auth("ops", Some("pw"))
        .send()
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn bad_admin_keys_are_refused_at_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[admin]
listen = "127.0.0.1:2020"
auth = { type = "bearer", token = "" }
ecs = { max_tasks = 0, stopped_retention = "soon", colour = "red" }

[inputs.in]
type = "http"
listen = "127.0.0.1:8888"

[routes.all]
to = ["out"]

[outputs.out]
type = "null"
"#,
    )
    .expect("write");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_firelane"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for want in [
        "admin.auth: the secret is empty",
        "admin.ecs.max_tasks: must be at least 1",
        "admin.ecs.stopped_retention",
        "colour",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// The sqs input feeds the model too: task events as an EventBridge rule's SQS target sends
/// them (the event JSON as the message body), versions 3, 1, 2, 3 sent in that order (a
/// standard queue may hand them out in any order).
#[test]
fn sqs_input_events_update_the_state() {
    let Some(ep) = common::moto::endpoint() else {
        return;
    };
    let client = common::moto::Aws::new(&ep).sqs;
    let url = common::sns_sqs::create_queue(&client, "ecs-state");
    common::moto::rt().block_on(async {
        for (v, st) in [
            (3, "STOPPED"),
            (1, "PENDING"),
            (2, "RUNNING"),
            (3, "STOPPED"),
        ] {
            client
                .send_message()
                .queue_url(&url)
                .message_body(task_event("qqqq", v, st).to_string())
                .send()
                .await
                .expect("SendMessage");
        }
    });
    let config = format!(
        r#"
[inputs.queue]
type = "sqs"
queue_url = "{url}"
endpoint_url = "{ep}"
region = "us-east-1"
wait_time = "1s"
# moto's ReceiveMessage is not atomic: two pollers can both take one message.
pollers = 1

[routes.all]
to = ["sink"]

[outputs.sink]
type = "null"
"#
    );
    let r = Router::start(&config);
    let s = wait_events(&r, 4);
    // A standard queue does not promise order, so the model may see them in any order.
    // Whatever the order, every event is counted once, at least one is applied, the newest
    // version wins and the task stops once.
    let e = &s["events"];
    let count = |k: &str| e[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        count("applied") + count("stale") + count("repeated"),
        4,
        "{s:#}"
    );
    assert!((1..=3).contains(&count("applied")), "{s:#}");
    assert_eq!(s["tasks"][0]["version"], 3, "{s:#}");
    assert_eq!(s["tasks"][0]["last_status"], "STOPPED", "{s:#}");
    assert_eq!(r.metric(TASKS, &["last_status=\"STOPPED\""]), 1.0);
    assert_eq!(r.metric("firelane_ecs_task_stops_total", &[]), 1.0);
}
