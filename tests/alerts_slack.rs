//! `type = "slack"` end to end: ECS events posted to an `http` input with
//! `format = "eventbridge"` (as an EventBridge API destination does) reach a loopback
//! stand-in for a Slack incoming webhook ([`FakeHttp`]), grouped: a crash loop of 200
//! stopped tasks is two messages; a pending follow-up is sent on shutdown; 429 +
//! Retry-After is waited out; a 400 is permanent, logged and counted.

mod common;

use std::time::{Duration, Instant};

use common::ecs_events::{Origin, Task, post};
use common::fake_http::{FakeHttp, Reply};
use common::{Router, free_port};
use serde_json::{Value, json};

/// A `Task State Change` to STOPPED of service `web` in cluster `prod` (the shape of the
/// Amazon ECS developer guide's example), task `n`, essential container exit code 1.
fn stopped_task(n: usize) -> Value {
    let origin = Origin {
        account: "111122223333",
        region: "us-west-2",
    };
    let id = format!("{n:032x}");
    let task = origin.arn(&format!("task/prod/{id}"));
    origin.task_event(
        &format!("00000000-0000-0000-0000-{n:012}"),
        "2026-11-30T10:00:00Z",
        &Task {
            cluster: "prod",
            id: &id,
            definition: "web:42",
            group: "service:web",
        },
        json!({
            "lastStatus": "STOPPED", "desiredStatus": "STOPPED",
            "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited",
            "stoppedAt": "2026-11-30T10:00:01Z", "version": 4,
            "containers": [
                {"name": "app", "exitCode": 1, "lastStatus": "STOPPED", "taskArn": task},
                {"name": "log_router", "exitCode": 0, "lastStatus": "STOPPED", "taskArn": task}
            ]
        }),
    )
}

/// An eventbridge input on a free port, the failed-task route of PRODUCT.md, and a slack
/// output to `webhook` with `slack_extra` keys. Returns the router and the input's URL.
fn start(webhook: &str, slack_extra: &str) -> (Router, String) {
    let port = free_port();
    let config = format!(
        r#"
[inputs.events]
type = "http"
listen = "127.0.0.1:{port}"
format = "eventbridge"

[routes.task_failures]
pattern = '''{{"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"],
              "detail": {{"lastStatus": ["STOPPED"],
                         "containers": {{"exitCode": [{{"anything-but": 0}}]}}}}}}'''
to = ["slack"]

[outputs.slack]
type = "slack"
webhook_url = "{webhook}"
retry = {{ initial_backoff = "100ms", max_backoff = "1s" }}
{slack_extra}
"#
    );
    (Router::start(&config), format!("http://127.0.0.1:{port}/"))
}

/// Waits until the webhook has answered 200 to `n` messages (or `timeout`); their texts.
fn wait_messages(slack: &FakeHttp, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let texts: Vec<String> = slack
            .bodies()
            .iter()
            .map(|b| {
                let v: Value = serde_json::from_str(b).expect("a JSON body");
                v["text"].as_str().expect("a text field").to_string()
            })
            .collect();
        if texts.len() >= n || Instant::now() > deadline {
            return texts;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue #12: 200 failed tasks of one service within seconds are two messages, not 200:
/// the first at once with what people act on, one follow-up when the window ends that
/// counts them all. Every record is acknowledged as sent once its message went out.
#[test]
fn crash_loop_of_200_stopped_tasks_is_two_messages() {
    let slack = FakeHttp::start();
    // The window is long enough for the 104 requests on a loaded CI machine: all 200 are
    // in the one follow-up only if they arrive before it goes out.
    let (router, url) = start(&slack.url(), "window = \"10s\"");
    // One event per request as an API destination sends them, and a few arrays.
    for n in 0..100 {
        post(&url, &stopped_task(n), None);
    }
    let rest: Vec<Value> = (100..200).map(stopped_task).collect();
    for chunk in rest.chunks(25) {
        post(&url, &Value::Array(chunk.to_vec()), None);
    }
    let texts = wait_messages(&slack, 2, Duration::from_secs(30));
    assert_eq!(texts.len(), 2, "{texts:#?}\n{}", router.logs());
    let first = &texts[0];
    for want in [
        "*Cluster:* prod",
        "*Service:* web",
        "*Task definition:* web:42",
        "*Stop code:* EssentialContainerExited",
        "*Stopped reason:* Essential container in task exited",
        "• app: exit 1",
        "https://us-west-2.console.aws.amazon.com/ecs/v2/clusters/prod/tasks/00000000000000000000000000000000/configuration?region=us-west-2",
    ] {
        assert!(
            first.contains(want),
            "{want:?} not in the first message:\n{first}"
        );
    }
    let follow_up = &texts[1];
    assert!(
        follow_up.contains("199 more tasks stopped like this") && follow_up.contains("(200 in all"),
        "{follow_up}"
    );
    assert!(
        follow_up.contains("… and 196 more not shown"),
        "{follow_up}"
    );
    let sent = router.wait_metric(
        "firelane_output_records_total",
        &["output=\"slack\"", "result=\"sent\""],
        200.0,
        Duration::from_secs(10),
    );
    assert_eq!(sent, 200.0);
    // Nothing else follows: the loop stopped, the group cools down silently (waited past
    // the end of the next 10 s window).
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        slack.requests(),
        2,
        "{:#?}",
        wait_messages(&slack, 3, Duration::ZERO)
    );
}

/// Records folded into a follow-up are acknowledged only when it is sent; on shutdown the
/// pending follow-up goes out (a 10-minute window does not hold the exit).
#[test]
fn shutdown_sends_the_pending_follow_up() {
    let slack = FakeHttp::start();
    let (mut router, url) = start(&slack.url(), "window = \"10m\"");
    for n in 0..5 {
        post(&url, &stopped_task(n), None);
    }
    assert_eq!(wait_messages(&slack, 1, Duration::from_secs(20)).len(), 1);
    // The webhook has the lead; the router counts it once it reads the 200. The window is
    // 10 minutes, so a count above 1 here is a follow-up sent too early.
    let sent = router.wait_metric(
        "firelane_output_records_total",
        &["output=\"slack\"", "result=\"sent\""],
        1.0,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sent, 1.0, "only the lead is sent while the window is open");
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &["output=\"slack\"", "result=\"sent\""],
        ),
        1.0,
        "only the lead is sent while the window is open"
    );
    let status = router.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", router.logs());
    let texts = wait_messages(&slack, 2, Duration::from_secs(5));
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[1].contains("4 more tasks stopped like this"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("(5 in all"), "{}", texts[1]);
}

/// Slack's rate limit: 429 with `Retry-After: 2` is waited out, then the message goes.
#[test]
fn slack_429_retry_after_is_honoured() {
    let slack = FakeHttp::start();
    slack.script(&[Reply::Status(429, Some("2"))]);
    let (router, url) = start(&slack.url(), "");
    post(&url, &stopped_task(1), None);
    let texts = wait_messages(&slack, 1, Duration::from_secs(30));
    assert_eq!(texts.len(), 1, "{}", router.logs());
    let st = slack.state();
    assert_eq!(st.seen.len(), 2);
    assert_eq!((st.seen[0].status, st.seen[1].status), (429, 200));
    let waited = st.seen[1].at.duration_since(st.seen[0].at);
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}"
    );
    drop(st);
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &["output=\"slack\"", "result=\"retried\""]
        ),
        1.0
    );
}

/// Any other 4xx is permanent: one request, no retry, a log line saying what Slack
/// answered, the record counted as failed.
#[test]
fn slack_400_is_permanent_and_logged() {
    let slack = FakeHttp::start_replying(Reply::Status(400, None));
    let (router, url) = start(&slack.url(), "");
    post(&url, &stopped_task(1), None);
    let failed = router.wait_metric(
        "firelane_output_records_total",
        &["output=\"slack\"", "result=\"failed\""],
        1.0,
        Duration::from_secs(30),
    );
    assert_eq!(failed, 1.0, "{}", router.logs());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(slack.requests(), 1, "a 400 is not retried");
    let logs = router.logs();
    assert!(
        logs.contains("Slack answered HTTP 400") && logs.contains("not retried"),
        "{logs}"
    );
    assert!(
        !logs.contains("/ingest"),
        "the webhook path is a secret: {logs}"
    );
}
