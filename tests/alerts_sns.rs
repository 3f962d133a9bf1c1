//! `type = "sns"` on moto: ECS events posted to an `http` input with
//! `format = "eventbridge"` are published, grouped, to a topic with an SQS subscription;
//! the test reads the SNS notifications back from the queue with the SQS SDK.
//! Run through `scripts/test.sh` (it starts moto); without it the tests say so and return.

mod common;

use std::time::Duration;

use common::ecs_events::{Origin, Task, post};
use common::moto::{Aws, endpoint, unique};
use common::sns_sqs::{notifications, topic_with_queue};
use common::{Router, free_port};
use serde_json::{Value, json};

/// A `Task State Change` to STOPPED in cluster `prod`, service `service`, task `n`,
/// essential container exit code 1.
fn stopped_task(service: &str, n: usize) -> Value {
    let origin = Origin {
        account: "111122223333",
        region: "us-east-1",
    };
    origin.task_event(
        &format!("{service}-{n}"),
        "2026-11-30T10:00:00Z",
        &Task {
            cluster: "prod",
            id: &format!("{service}{n:028x}"),
            definition: &format!("{service}:7"),
            group: &format!("service:{service}"),
        },
        json!({
            "lastStatus": "STOPPED",
            "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited",
            "containers": [{"name": "app", "exitCode": 1, "lastStatus": "STOPPED"}]
        }),
    )
}

fn start(ep: &str, topic: &str, extra: &str) -> (Router, String) {
    start_env(ep, topic, extra, &[])
}

fn start_env(ep: &str, topic: &str, extra: &str, env: &[(&str, &str)]) -> (Router, String) {
    let port = free_port();
    let config = format!(
        r#"
[inputs.events]
type = "http"
listen = "127.0.0.1:{port}"
format = "eventbridge"

[routes.task_failures]
pattern = '''{{"source": ["aws.ecs"], "detail": {{"lastStatus": ["STOPPED"]}}}}'''
to = ["alerts"]

[outputs.alerts]
type = "sns"
topic_arn = "{topic}"
endpoint_url = "{ep}"
region = "us-east-1"
retry = {{ initial_backoff = "100ms", max_backoff = "1s" }}
{extra}
"#
    );
    let router = Router::start_with(
        tempfile::tempdir().expect("tempdir"),
        &config,
        free_port(),
        env,
    );
    (router, format!("http://127.0.0.1:{port}/"))
}

/// A crash loop of 50 tasks of `web` and one failed task of `api`: three notifications
/// (two leads, one follow-up for `web` counting all 50), readable text, valid subjects.
#[test]
fn grouped_alerts_reach_an_sqs_subscription() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let (topic, queue) = topic_with_queue(&aws, &unique("alerts"), "alerts-q");
    let (router, url) = start(&ep, &topic, "window = \"3s\"");
    let web: Vec<Value> = (0..50).map(|n| stopped_task("web", n)).collect();
    for chunk in web.chunks(10) {
        post(&url, &Value::Array(chunk.to_vec()), None);
    }
    post(&url, &stopped_task("api", 0), None);
    let got = notifications(&aws, &queue, 3, Duration::from_secs(40));
    assert_eq!(got.len(), 3, "{got:#?}\n{}", router.logs());
    let find = |needle: &str| {
        got.iter()
            .find(|(s, m)| s.contains(needle) || m.contains(needle))
            .unwrap_or_else(|| panic!("no notification with {needle:?}: {got:#?}"))
    };
    let (subject, message) = find("ECS task stopped in prod: web");
    assert_eq!(subject, "ECS task stopped in prod: web");
    for want in [
        "Cluster: prod",
        "Task definition: web:7",
        "Stopped reason: Essential container in task exited",
        "app: exit 1",
        "https://us-east-1.console.aws.amazon.com/ecs/v2/clusters/prod/tasks/",
    ] {
        assert!(message.contains(want), "{want:?} not in {message}");
    }
    find("ECS task stopped in prod: api");
    let (subject, message) = find("49 more tasks stopped like this");
    assert!(message.contains("(50 in all since"), "{message}");
    assert!(subject.len() < 100 && subject.is_ascii(), "{subject}");
    let sent = router.wait_metric(
        "firelane_output_records_total",
        &["output=\"alerts\"", "result=\"sent\""],
        51.0,
        Duration::from_secs(10),
    );
    assert_eq!(sent, 51.0);
    // Nothing more: the loop stopped.
    assert!(notifications(&aws, &queue, 1, Duration::from_secs(5)).is_empty());
}

/// `format = "json"`: the lead is the event as received, the follow-up a JSON summary with
/// the count, the total and samples; `subject` is a template.
#[test]
fn json_format_and_subject_template() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let (topic, queue) = topic_with_queue(&aws, &unique("alerts"), "alerts-q");
    let (_router, url) = start(
        &ep,
        &topic,
        "window = \"2s\"\nformat = \"json\"\nsubject = \"{detail.group} in {detail.clusterArn|arn[-1]}: {detail.stopCode}\"",
    );
    let events: Vec<Value> = (0..3).map(|n| stopped_task("web", n)).collect();
    post(&url, &Value::Array(events.clone()), None);
    let got = notifications(&aws, &queue, 2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "{got:#?}");
    let docs: Vec<(String, Value)> = got
        .iter()
        .map(|(s, m)| (s.clone(), serde_json::from_str(m).expect("JSON message")))
        .collect();
    let lead = docs
        .iter()
        .find(|(_, d)| d.get("detail").is_some())
        .expect("the lead event");
    assert_eq!(lead.0, "service:web in prod: EssentialContainerExited");
    assert_eq!(lead.1["detail"]["taskArn"], events[0]["detail"]["taskArn"]);
    let follow = docs
        .iter()
        .find(|(_, d)| d.get("samples").is_some())
        .expect("the follow-up");
    assert_eq!(
        (follow.1["count"].as_u64(), follow.1["total"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(follow.1["samples"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        follow.1["samples"][1]["detail"]["taskArn"],
        events[2]["detail"]["taskArn"]
    );
}

/// Leads of several groups ready at once (six services failing together) share
/// PublishBatch calls, and every one of them arrives with its own subject.
#[test]
fn leads_ready_together_share_publish_batch() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let (topic, queue) = topic_with_queue(&aws, &unique("alerts"), "alerts-q");
    let (router, url) = start_env(
        &ep,
        &topic,
        "",
        &[("RUST_LOG", "info,firelane::output::aws::sns=debug")],
    );
    let services = ["a1", "b2", "c3", "d4", "e5", "f6"];
    let events: Vec<Value> = services.iter().map(|s| stopped_task(s, 0)).collect();
    post(&url, &Value::Array(events), None);
    let got = notifications(&aws, &queue, services.len(), Duration::from_secs(30));
    let mut subjects: Vec<String> = got.into_iter().map(|(s, _)| s).collect();
    subjects.sort();
    let want: Vec<String> = services
        .iter()
        .map(|s| format!("ECS task stopped in prod: {s}"))
        .collect();
    assert_eq!(subjects, want, "{}", router.logs());
    let logs = router.logs();
    assert!(
        logs.contains("PublishBatch of messages ready together"),
        "no PublishBatch call:\n{logs}"
    );
}

/// What the SNS stand-in of [`a_failed_batch_entry_is_retried_alone`] was asked: per
/// request, its `Action` and the `Message` of each entry.
type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<String>)>>>;

/// A loopback stand-in for the SNS query API: Publish succeeds; the first PublishBatch
/// fails its entry `1` (InternalError, not the sender's fault), every later one succeeds.
fn fake_sns() -> (String, Calls) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let calls: Calls = Default::default();
    let seen = calls.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let Ok(mut w) = conn.try_clone() else { return };
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let form = reqwest::Url::parse(&format!(
                        "http://x/?{}",
                        String::from_utf8_lossy(&body)
                    ))
                    .expect("form");
                    let pairs: Vec<(String, String)> = form.query_pairs().into_owned().collect();
                    let action = pairs
                        .iter()
                        .find(|(k, _)| k == "Action")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let mut entries: Vec<(String, String)> = Vec::new();
                    for (k, v) in &pairs {
                        if k == "Message" {
                            entries.push((String::new(), v.clone()));
                        } else if let Some(rest) =
                            k.strip_prefix("PublishBatchRequestEntries.member.")
                        {
                            let (n, field) = rest.split_once('.').unwrap_or((rest, ""));
                            let n: usize = n.parse().unwrap_or(0);
                            if entries.len() < n {
                                entries.resize(n, Default::default());
                            }
                            match field {
                                "Id" => entries[n - 1].0 = v.clone(),
                                "Message" => entries[n - 1].1 = v.clone(),
                                _ => {}
                            }
                        }
                    }
                    let first_batch = {
                        let mut calls = seen.lock().unwrap_or_else(|e| e.into_inner());
                        let first = action == "PublishBatch"
                            && !calls.iter().any(|(a, _)| a == "PublishBatch");
                        calls.push((
                            action.clone(),
                            entries.iter().map(|e| e.1.clone()).collect(),
                        ));
                        first
                    };
                    let ns = "http://sns.amazonaws.com/doc/2010-03-31/";
                    let xml = if action == "PublishBatch" {
                        let (mut ok, mut failed) = (String::new(), String::new());
                        for (id, _) in &entries {
                            if first_batch && id == "1" {
                                failed.push_str(&format!("<member><Id>{id}</Id><Code>InternalError</Code><Message>injected</Message><SenderFault>false</SenderFault></member>"));
                            } else {
                                ok.push_str(&format!(
                                    "<member><Id>{id}</Id><MessageId>m-{id}</MessageId></member>"
                                ));
                            }
                        }
                        format!(
                            "<PublishBatchResponse xmlns=\"{ns}\"><PublishBatchResult><Successful>{ok}</Successful><Failed>{failed}</Failed></PublishBatchResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></PublishBatchResponse>"
                        )
                    } else {
                        format!(
                            "<PublishResponse xmlns=\"{ns}\"><PublishResult><MessageId>m</MessageId></PublishResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></PublishResponse>"
                        )
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{xml}",
                        xml.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, calls)
}

/// A PublishBatch entry that failed is retried alone: the other messages of its call
/// are not sent again, and every alert arrives exactly once.
#[test]
fn a_failed_batch_entry_is_retried_alone() {
    let (ep, calls) = fake_sns();
    let (router, url) = start_env(
        &ep,
        "arn:aws:sns:us-east-1:111122223333:alerts",
        "",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let services = ["a1", "b2", "c3", "d4"];
    let events: Vec<Value> = services.iter().map(|s| stopped_task(s, 0)).collect();
    post(&url, &Value::Array(events), None);
    let sent = router.wait_metric(
        "firelane_output_records_total",
        &["output=\"alerts\"", "result=\"sent\""],
        4.0,
        Duration::from_secs(30),
    );
    assert_eq!(sent, 4.0, "{}", router.logs());
    let calls = calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let first = calls
        .iter()
        .position(|(a, m)| a == "PublishBatch" && m.len() >= 2)
        .unwrap_or_else(|| panic!("no PublishBatch with two entries: {calls:#?}"));
    let failed = calls[first].1[1].clone();
    // Delivered: every entry of every call, except the one entry that failed.
    let mut delivered: Vec<&String> = calls
        .iter()
        .enumerate()
        .flat_map(|(i, (_, m))| {
            m.iter()
                .enumerate()
                .filter(move |(j, _)| !(i == first && *j == 1))
        })
        .map(|(_, m)| m)
        .collect();
    delivered.sort();
    for s in services {
        let n = delivered
            .iter()
            .filter(|m| m.starts_with(&format!("ECS task stopped in prod: {s}\n")))
            .count();
        assert_eq!(n, 1, "{s}: {calls:#?}");
    }
    // The failed one went again, alone.
    let again = &calls[first + 1..];
    assert!(
        again.iter().any(|(_, m)| m.len() == 1 && m[0] == failed),
        "{calls:#?}"
    );
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &["output=\"alerts\"", "result=\"retried\""]
        ),
        1.0
    );
}
