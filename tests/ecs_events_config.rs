//! `config/ecs-events.toml` as shipped, end to end: the seeds' four pipelines from one file.
//! The file is loaded unchanged except for its two listen addresses (moved to free loopback
//! ports); everything it points at comes from its documented variables: `SLACK_WEBHOOK_URL`
//! names a loopback stand-in for Slack ([`FakeHttp`]), `AWS_ENDPOINT_URL` (the AWS SDK's own
//! variable) sends S3, SNS and CloudWatch Logs to moto, `AWS_ACCOUNT_ID` / `ALERTS_TOPIC` /
//! `EVENTS_BUCKET` name the test's topic and bucket. The seeds' sample events go in as an
//! EventBridge API destination posts them, and each pipeline must deliver what the seed's
//! Lambda did. Run through `scripts/test.sh` (it starts moto); without it the moto test
//! says so and returns.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::ecs_events::{Origin, Task, post};
use common::fake_http::FakeHttp;
use common::moto::{Aws, endpoint, rt, unique};
use common::sns_sqs::{notifications, topic_with_queue};
use common::{Router, free_port};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_firelane");
/// moto's default account: the topic the file names must be the one the test created.
const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const ORIGIN: Origin = Origin {
    account: ACCOUNT,
    region: REGION,
};
const CLUSTER: &str = "cluster-to-monitor-a";
const KEY: &str = "test-events-key";

fn shipped() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ecs-events.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shipped file with its listen addresses on loopback ports (the only edit): the
/// events input on `port`, the admin port on the harness's `{admin}`.
fn on_loopback(port: u16) -> String {
    let text = shipped();
    for addr in ["listen = \"0.0.0.0:8080\"", "listen = \"0.0.0.0:2020\""] {
        assert_eq!(
            text.matches(addr).count(),
            1,
            "config/ecs-events.toml no longer has `{addr}`; update this test"
        );
    }
    text.replace(
        "listen = \"0.0.0.0:8080\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    )
    .replace(
        "listen = \"0.0.0.0:2020\"",
        "listen = \"127.0.0.1:{admin}\"",
    )
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn arn(resource: &str) -> String {
    ORIGIN.arn(resource)
}

fn event(
    id: &str,
    detail_type: &str,
    time: DateTime<Utc>,
    resources: Value,
    detail: Value,
) -> Value {
    ORIGIN.event(id, detail_type, &rfc3339(time), resources, detail)
}

/// An `ECS Task State Change` of task `task_id` in the seeds' cluster.
fn task_event(
    id: &str,
    time: DateTime<Utc>,
    task_id: &str,
    group: &str,
    task_def: &str,
    status: Value,
) -> Value {
    let task = Task {
        cluster: CLUSTER,
        id: task_id,
        definition: task_def,
        group,
    };
    let mut e = ORIGIN.task_event(
        id,
        &rfc3339(time),
        &task,
        json!({
            "launchType": "FARGATE", "version": 5,
            "createdAt": rfc3339(time), "updatedAt": rfc3339(time)
        }),
    );
    if let (Some(d), Value::Object(s)) = (e["detail"].as_object_mut(), status) {
        d.extend(s);
    }
    e
}

/// The seeds' sample events, keyed by what each one is.
fn seed_events(now: DateTime<Utc>) -> BTreeMap<&'static str, Value> {
    let hour_ago = now - chrono::Duration::hours(1);
    let service = arn(&format!("service/{CLUSTER}/web"));
    let mut m = BTreeMap::new();
    // Seeds 000/003 (and 001's first rule): an essential container exited with code 1.
    m.insert(
        "exit_1",
        task_event(
            "e0000000-0000-4000-8000-000000000001",
            now,
            "0b69d5c0d0d74b4b9f2e9a0e0e0a0001",
            "service:web",
            "web:42",
            json!({
                "lastStatus": "STOPPED", "desiredStatus": "STOPPED",
                "stopCode": "EssentialContainerExited",
                "stoppedReason": "Essential container in task exited",
                "stoppedAt": rfc3339(now),
                "containers": [
                    {"name": "app", "exitCode": 1, "lastStatus": "STOPPED",
                     "reason": "OutOfMemoryError: Container killed due to memory usage"},
                    {"name": "log_router", "exitCode": 0, "lastStatus": "STOPPED"}
                ]
            }),
        ),
    );
    // Seed 001's second rule: a scheduled batch task that failed to start.
    m.insert(
        "failed_to_start",
        task_event(
            "e0000000-0000-4000-8000-000000000002",
            now,
            "0b69d5c0d0d74b4b9f2e9a0e0e0a0002",
            "family:nightly-batch",
            "nightly-batch:3",
            json!({
                "lastStatus": "STOPPED", "desiredStatus": "STOPPED",
                "stopCode": "TaskFailedToStart",
                "stoppedReason": "CannotPullContainerError: pull image manifest has been retried 5 time(s)",
                "containers": [{"name": "batch", "lastStatus": "STOPPED"}]
            }),
        ),
    );
    // A healthy task: archived and counted, never an alert.
    m.insert(
        "running",
        task_event(
            "e0000000-0000-4000-8000-000000000003",
            now,
            "0b69d5c0d0d74b4b9f2e9a0e0e0a0003",
            "service:web",
            "web:42",
            json!({
                "lastStatus": "RUNNING", "desiredStatus": "RUNNING",
                "containers": [{"name": "app", "lastStatus": "RUNNING"}]
            }),
        ),
    );
    // A task a deployment replaced (SIGTERM, exit 143): not a failure.
    m.insert(
        "replaced",
        task_event(
            "e0000000-0000-4000-8000-000000000004",
            now,
            "0b69d5c0d0d74b4b9f2e9a0e0e0a0004",
            "service:web",
            "web:41",
            json!({
                "lastStatus": "STOPPED", "desiredStatus": "STOPPED",
                "stopCode": "ServiceSchedulerInitiated",
                "stoppedReason": "Scaling activity initiated by (deployment ecs-svc/1234567890123456789)",
                "containers": [{"name": "app", "exitCode": 143, "lastStatus": "STOPPED"}]
            }),
        ),
    );
    // An hour earlier: archived under the previous hour's prefix.
    m.insert(
        "hour_ago",
        task_event(
            "e0000000-0000-4000-8000-000000000005",
            hour_ago,
            "0b69d5c0d0d74b4b9f2e9a0e0e0a0005",
            "service:web",
            "web:42",
            json!({"lastStatus": "PROVISIONING", "desiredStatus": "RUNNING", "containers": []}),
        ),
    );
    // Seed 002: a failed deployment. It has no clusterArn; the log group's cluster comes
    // from the service ARN.
    m.insert(
        "deployment_failed",
        event(
            "e0000000-0000-4000-8000-000000000006",
            "ECS Deployment State Change",
            now,
            json!([service]),
            json!({
                "eventType": "ERROR", "eventName": "SERVICE_DEPLOYMENT_FAILED",
                "deploymentId": "ecs-svc/1234567890123456789",
                "updatedAt": rfc3339(now),
                "reason": "ECS deployment circuit breaker: tasks failed to start."
            }),
        ),
    );
    m.insert(
        "service_warn",
        event(
            "e0000000-0000-4000-8000-000000000007",
            "ECS Service Action",
            now,
            json!([service]),
            json!({
                "eventType": "WARN", "eventName": "SERVICE_TASK_PLACEMENT_FAILURE",
                "clusterArn": arn(&format!("cluster/{CLUSTER}")),
                "createdAt": rfc3339(now),
                "reasons": ["RESOURCE:MEMORY"]
            }),
        ),
    );
    m.insert(
        "service_error",
        event(
            "e0000000-0000-4000-8000-000000000008",
            "ECS Service Action",
            now,
            json!([service]),
            json!({
                "eventType": "ERROR", "eventName": "SERVICE_DAEMON_PLACEMENT_CONSTRAINT_VIOLATED",
                "clusterArn": arn(&format!("cluster/{CLUSTER}")),
                "createdAt": rfc3339(now)
            }),
        ),
    );
    m
}

/// `n` more tasks of service `web` exiting with code 1 right after `exit_1`: a crash loop.
fn crash_loop(now: DateTime<Utc>, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e = seed_events(now)["exit_1"].clone();
            let task_id = format!("0b69d5c0d0d74b4b9f2e9a0e0e0b{i:04}");
            let task = arn(&format!("task/{CLUSTER}/{task_id}"));
            e["id"] = json!(format!("e0000000-0000-4000-8000-0000000a{i:04}"));
            e["resources"] = json!([task]);
            e["detail"]["taskArn"] = json!(task);
            e
        })
        .collect()
}

/// Slack message texts answered 200 so far.
fn slack_texts(slack: &FakeHttp) -> Vec<String> {
    slack
        .bodies()
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_str(b).expect("a Slack message is JSON");
            v["text"].as_str().expect("a text field").to_string()
        })
        .collect()
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ids_of(events: &[&Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn shipped_file_delivers_what_the_seeds_lambdas_did() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("ecs-events");
    aws.create_bucket(&bucket);
    let topic = unique("ecs-alerts");
    let (topic_arn, queue) = topic_with_queue(&aws, &topic, "ecs-alerts-q");
    assert_eq!(topic_arn, format!("arn:aws:sns:{REGION}:{ACCOUNT}:{topic}"));
    let slack = FakeHttp::start();

    let port = free_port();
    let webhook = slack.url();
    let mut router = Router::start_with(
        tempfile::tempdir().expect("tempdir"),
        &on_loopback(port),
        free_port(),
        &[
            ("EVENTS_KEY", KEY),
            ("SLACK_WEBHOOK_URL", &webhook),
            ("AWS_ACCOUNT_ID", ACCOUNT),
            ("ALERTS_TOPIC", &topic),
            ("EVENTS_BUCKET", &bucket),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT_URL", &ep),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/");

    let now = Utc::now();
    let events = seed_events(now);
    for e in events.values() {
        post(&url, e, Some(KEY));
    }
    // EventBridge delivers at least once: a repeat alerts and archives nothing more.
    post(&url, &events["exit_1"], Some(KEY));
    // The service keeps crashing: folded into one follow-up per output, sent when the
    // 60 s window ends (here: at shutdown, which sends pending follow-ups at once).
    let crashes = crash_loop(now, 5);
    for e in &crashes {
        post(&url, e, Some(KEY));
    }

    // 1a. Slack (seed 001): one message per failed task, the failed deployment and the
    // ERROR and WARN service actions; the replaced and the running task send none.
    let texts = wait_for(Duration::from_secs(30), || {
        let t = slack_texts(&slack);
        (t.len() >= 5).then_some(t)
    })
    .unwrap_or_else(|| panic!("{:#?}\n{}", slack_texts(&slack), router.logs()));
    let exited = texts
        .iter()
        .find(|t| t.contains("EssentialContainerExited"))
        .unwrap_or_else(|| panic!("no message for the exited task: {texts:#?}"));
    for want in [
        &format!("*Cluster:* {CLUSTER}") as &str,
        "*Task definition:* web:42",
        "*Stopped reason:* Essential container in task exited",
        "• app: exit 1",
        "OutOfMemoryError",
        &format!(
            "https://{REGION}.console.aws.amazon.com/ecs/v2/clusters/{CLUSTER}/tasks/0b69d5c0d0d74b4b9f2e9a0e0e0a0001"
        ),
    ] {
        assert!(exited.contains(want), "{want:?} not in:\n{exited}");
    }
    let not_started = texts
        .iter()
        .find(|t| t.contains("TaskFailedToStart"))
        .unwrap_or_else(|| panic!("no message for the task that failed to start: {texts:#?}"));
    for want in [
        &format!("*Cluster:* {CLUSTER}") as &str,
        "*Task definition:* nightly-batch:3",
        "CannotPullContainerError",
    ] {
        assert!(
            not_started.contains(want),
            "{want:?} not in:\n{not_started}"
        );
    }

    for (name, want) in [
        (
            "deployment",
            "ECS deployment failed: web in cluster-to-monitor-a",
        ),
        ("placement", "SERVICE_TASK_PLACEMENT_FAILURE"),
        ("daemon", "SERVICE_DAEMON_PLACEMENT_CONSTRAINT_VIOLATED"),
    ] {
        assert!(
            texts.iter().any(|t| t.contains(want)),
            "no {name} message ({want:?}): {texts:#?}"
        );
    }

    // 1b. SNS (seeds 000/003): the event JSON of each failed task lands in the queue.
    let notes = notifications(&aws, &queue, 2, Duration::from_secs(30));
    assert_eq!(notes.len(), 2, "{notes:#?}\n{}", router.logs());
    let published: BTreeSet<String> = notes
        .iter()
        .map(|(subject, message)| {
            assert!(
                subject.starts_with(&format!("ECS task failed in {CLUSTER}: "))
                    && subject.len() < 100,
                "{subject}"
            );
            let ev: Value = serde_json::from_str(message).expect("the event JSON");
            assert_eq!(ev["detail"]["lastStatus"], "STOPPED", "{ev}");
            ev["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(
        published,
        ids_of(&[&events["exit_1"], &events["failed_to_start"]])
    );

    // 3. CloudWatch Logs (seed 002): deployments and service actions in the cluster's
    // Container Insights group, each message the event JSON.
    let group = format!("/aws/events/ecs/containerinsights/{CLUSTER}/performance");
    let lifecycle = wait_for(Duration::from_secs(30), || {
        let mut ids = BTreeSet::new();
        for stream in ["ECS Deployment State Change", "ECS Service Action"] {
            for (_, m) in log_events_if_any(&aws, &group, stream) {
                let ev: Value = serde_json::from_str(&m).expect("the event JSON");
                assert_eq!(ev["detail-type"], stream, "{ev}");
                ids.insert(ev["id"].as_str().expect("id").to_string());
            }
        }
        (ids.len() >= 3).then_some(ids)
    })
    .unwrap_or_else(|| panic!("lifecycle events not in {group}\n{}", router.logs()));
    assert_eq!(
        lifecycle,
        ids_of(&[
            &events["deployment_failed"],
            &events["service_warn"],
            &events["service_error"]
        ])
    );
    assert_eq!(aws.retention(&group), Some(30));

    // No alert for the running, replaced, earlier or lifecycle events, none twice for the
    // repeat, and none yet for the crash loop (its window is open): give a wrong extra
    // message time to arrive.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(slack_texts(&slack).len(), 5, "{:#?}", slack_texts(&slack));
    assert!(notifications(&aws, &queue, 1, Duration::from_secs(2)).is_empty());

    // 2. S3: the archive batch (5 minutes) is flushed on SIGTERM, as when ECS stops the task.
    let status = router.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", router.logs());
    // The crash loop's follow-ups: one Slack message and one SNS message counting the five
    // further failures (six in all); the repeat of the first is not among them.
    let texts = slack_texts(&slack);
    assert_eq!(texts.len(), 6, "{texts:#?}\n{}", router.logs());
    let follow_up = &texts[5];
    assert!(
        follow_up.contains("5 more tasks stopped like this") && follow_up.contains("(6 in all"),
        "{follow_up}"
    );
    let notes = notifications(&aws, &queue, 1, Duration::from_secs(20));
    assert_eq!(notes.len(), 1, "{notes:#?}\n{}", router.logs());
    let doc: Value = serde_json::from_str(&notes[0].1).expect("a follow-up is JSON");
    assert_eq!(
        (doc["count"].as_u64(), doc["total"].as_u64()),
        (Some(5), Some(6)),
        "{doc}"
    );
    assert!(
        notes[0]
            .0
            .starts_with(&format!("ECS task failed in {CLUSTER}: service:web")),
        "{}",
        notes[0].0
    );

    let objects = aws.objects(&bucket, "");
    assert!(!objects.is_empty(), "nothing archived\n{}", router.logs());
    let mut archived: Vec<String> = Vec::new();
    for (key, _encoding, body) in &objects {
        let parts: Vec<&str> = key.split('/').collect();
        assert!(
            parts.len() == 6 && parts[0] == "events" && key.ends_with(".json.gz"),
            "{key}"
        );
        assert_eq!(&body[..2], &[0x1f, 0x8b], "{key} is not gzip");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        for line in text.lines() {
            let ev: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{key}: {e}: {line}"));
            let t: DateTime<Utc> = ev["time"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{key}: no time in {ev}"));
            assert_eq!(
                &parts[1..5].join("/"),
                &t.format("%Y/%m/%d/%H").to_string(),
                "{key} holds an event of {t}"
            );
            archived.push(ev["id"].as_str().expect("id").to_string());
        }
    }
    archived.sort();
    let mut everything: Vec<&Value> = events.values().collect();
    everything.extend(crashes.iter());
    let all: Vec<String> = ids_of(&everything).into_iter().collect();
    assert_eq!(archived, all, "every event once, the repeat not again");
    let hours: BTreeSet<&str> = objects
        .iter()
        .map(|(k, _, _)| &k[..k.rfind('/').unwrap_or(0)])
        .collect();
    assert_eq!(
        hours.len(),
        2,
        "the earlier event under its own hour: {hours:?}"
    );
}

/// The stream's events, or none while the stream does not exist yet.
fn log_events_if_any(aws: &Aws, group: &str, stream: &str) -> Vec<(i64, String)> {
    let exists = rt()
        .block_on(
            aws.logs
                .describe_log_streams()
                .log_group_name(group)
                .log_stream_name_prefix(stream)
                .send(),
        )
        .map(|o| {
            o.log_streams()
                .iter()
                .any(|s| s.log_stream_name() == Some(stream))
        })
        .unwrap_or(false);
    if exists {
        aws.log_events(group, stream)
    } else {
        Vec::new()
    }
}

/// `firelane check` accepts the file as shipped with its required variables, and names a
/// required variable that is missing.
#[test]
fn check_accepts_the_shipped_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ecs-events.toml");
    let run = |without: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "-c"])
            .arg(&path)
            .env_remove("FIRELANE_CONFIG")
            .env_remove("AWS_ENDPOINT_URL")
            .stdin(Stdio::null());
        for (k, v) in [
            ("EVENTS_KEY", "k"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T000/B000/XXXX",
            ),
            ("AWS_ACCOUNT_ID", ACCOUNT),
        ] {
            if Some(k) == without {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd.output().expect("run firelane check")
    };
    let ok = run(None);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    for var in ["SLACK_WEBHOOK_URL", "AWS_ACCOUNT_ID", "EVENTS_KEY"] {
        let o = run(Some(var));
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.status.success() && out.contains(var),
            "without {var}:\n{out}"
        );
    }
}
