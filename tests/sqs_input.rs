//! The `sqs` input end to end: the real `firelane` binary polling queues on a local moto
//! server, records out to a file or an `http` output.
//!
//! Run with `scripts/test.sh --test sqs_input` (it starts moto and exports
//! FIRELANE_TEST_AWS_ENDPOINT). Without that variable every test returns at once with a
//! loud message (and fails under CI).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use common::ecs_events::Origin;
use common::fake_http::FakeHttp;
use common::moto::{Aws, endpoint, rt};
use common::sns_sqs::create_queue;
use common::{Router, free_port, read_jsonl};
use serde_json::{Value, json};

/// Sends every body, 10 per SendMessageBatch.
fn send(c: &aws_sdk_sqs::Client, url: &str, bodies: &[String]) {
    rt().block_on(async {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .expect("entry")
                })
                .collect();
            let out = c
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("SendMessageBatch");
            assert!(out.failed().is_empty(), "{:?}", out.failed());
        }
    });
}

/// (visible, in flight) messages of the queue: nothing deleted is counted in either.
fn counts(c: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    rt().block_on(async {
        let out = c
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("GetQueueAttributes");
        let get = |k: QueueAttributeName| -> u64 {
            out.attributes()
                .and_then(|a| a.get(&k))
                .and_then(|v| v.parse().ok())
                .expect("attribute")
        };
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    })
}

/// Polls until the queue holds no message at all (every one deleted).
fn wait_empty(c: &aws_sdk_sqs::Client, url: &str, timeout: Duration) -> (u64, u64) {
    let deadline = Instant::now() + timeout;
    loop {
        let n = counts(c, url);
        if n == (0, 0) || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An ECS task state change event as EventBridge sends it to an SQS target.
/// Message bodies of task events `evt-<n>` for each `n` in `range`.
fn task_events(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|n| task_event(&format!("evt-{n}"), n).to_string())
        .collect()
}

fn task_event(id: &str, n: usize) -> Value {
    let origin = Origin {
        account: "111122223333",
        region: "us-east-1",
    };
    origin.event(
        id,
        "ECS Task State Change",
        "2026-01-23T17:57:58Z",
        json!([origin.arn(&format!("task/c/{n:032x}"))]),
        json!({"clusterArn": origin.arn("cluster/c"),
               "lastStatus": "STOPPED", "n": n, "pad": "x".repeat(n % 7 * 50)}),
    )
}

/// The same event delivered through an SNS topic subscribed by the queue (no raw delivery).
fn sns_envelope(event: &Value, message_id: &str) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": "arn:aws:sns:us-east-1:111122223333:ecs-events",
        "Subject": "ecs",
        "Message": event.to_string(),
        "Timestamp": "2026-01-23T17:58:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
    })
}

/// A loopback HTTP/1.1 proxy to moto that forwards one request at a time.
///
/// moto's ReceiveMessage is not atomic (it checks a message's visibility, then marks it
/// received, without a lock), so under concurrent receives from several replicas it
/// occasionally hands one message to two receivers, which real SQS does not do within the
/// visibility timeout. Serialising the calls keeps such duplicates out, so a duplicate seen
/// in the test is firelane's. Each request goes over a fresh upstream connection with
/// `Connection: close`, and the client's connection is closed after the answer.
fn serializing_proxy(upstream: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    serve_proxy(listener, upstream)
}

/// [`serializing_proxy`] on an already bound `listener`.
fn serve_proxy(listener: TcpListener, upstream: &str) -> String {
    let upstream = upstream
        .strip_prefix("http://")
        .expect("http endpoint")
        .trim_end_matches('/')
        .to_owned();
    let port = listener.local_addr().expect("addr").port();
    let one_at_a_time = Arc::new(Mutex::new(()));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let upstream = upstream.clone();
            let lock = one_at_a_time.clone();
            std::thread::spawn(move || {
                let _ = forward_one(conn, &upstream, &lock);
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn forward_one(conn: TcpStream, upstream: &str, lock: &Mutex<()>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut client = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut head = Vec::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            head.extend_from_slice(b"connection: close\r\n\r\n");
            break;
        }
        if !lower.starts_with("connection:") {
            head.extend_from_slice(line.as_bytes());
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let answer = {
        let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut up = TcpStream::connect(upstream)?;
        up.write_all(&head)?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        answer
    };
    // Tell the client this connection ends with the answer.
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(answer.len());
    client.write_all(&answer[..split])?;
    client.write_all(b"\r\nconnection: close")?;
    client.write_all(&answer[split..])?;
    client.flush()
}

fn sqs_input(name: &str, url: &str, ep: &str, extra: &str) -> String {
    format!(
        "[inputs.{name}]\ntype = \"sqs\"\nqueue_url = \"{url}\"\nendpoint_url = \"{ep}\"\nregion = \"us-east-1\"\n{extra}\n{}",
        if extra.contains("wait_time") {
            ""
        } else {
            "wait_time = \"1s\"\n"
        }
    )
}

#[test]
fn two_replicas_sharing_queues_deliver_every_event_once() {
    let Some(ep) = endpoint() else { return };
    let c = Aws::new(&ep).sqs;
    let events_q = create_queue(&c, "events");
    let sns_q = create_queue(&c, "sns");
    // The replicas reach moto through the proxy (see there); wait_time 0 so that no empty
    // long poll holds it.
    let via = serializing_proxy(&ep);
    let config = format!(
        "{}{}[routes.all]\nto = [\"file\"]\n\n[outputs.file]\ntype = \"file\"\npath = \"{{dir}}/out.jsonl\"\nbatch = {{ max_age = \"200ms\" }}\n",
        sqs_input(
            "events",
            &events_q,
            &via,
            "visibility_timeout = \"60s\"\nwait_time = \"0s\""
        ),
        sqs_input(
            "sns_events",
            &sns_q,
            &via,
            "visibility_timeout = \"60s\"\nwait_time = \"0s\"\nformat = \"sns\""
        ),
    );
    let a = Router::start(&config);
    let b = Router::start(&config);

    // 700 events straight from an EventBridge rule, 300 through SNS.
    let direct = task_events(0..700);
    let via_sns: Vec<String> = (700..1000)
        .map(|n| sns_envelope(&task_event(&format!("evt-{n}"), n), &format!("sns-{n}")).to_string())
        .collect();
    send(&c, &events_q, &direct);
    send(&c, &sns_q, &via_sns);

    let lines = || {
        (
            read_jsonl(&a.path("out.jsonl")),
            read_jsonl(&b.path("out.jsonl")),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let (la, lb) = lines();
        if la.len() + lb.len() >= 1000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Anything late would be a duplicate: give it the time to show.
    std::thread::sleep(Duration::from_secs(2));
    let (la, lb) = lines();

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in la.iter().chain(&lb) {
        let id = r["id"].as_str().expect("event id").to_owned();
        *seen.entry(id.clone()).or_default() += 1;
        let n: usize = id["evt-".len()..].parse().expect("id number");
        assert_eq!(r["detail"]["n"], n, "{r}");
        assert_eq!(r["detail-type"], "ECS Task State Change");
        if n >= 700 {
            assert_eq!(r["sns"]["MessageId"], format!("sns-{n}"), "{r}");
            assert_eq!(r["sns"]["Subject"], "ecs");
            assert!(
                r.get("Signature").is_none(),
                "the envelope is unwrapped: {r}"
            );
        } else {
            assert!(r.get("sns").is_none(), "{r}");
        }
    }
    let want: BTreeSet<String> = (0..1000).map(|n| format!("evt-{n}")).collect();
    let got: BTreeSet<String> = seen.keys().cloned().collect();
    assert_eq!(
        got.symmetric_difference(&want).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "every event arrives"
    );
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    assert!(
        !la.is_empty() && !lb.is_empty(),
        "both replicas took part: {} and {}",
        la.len(),
        lb.len()
    );
    // Each message deleted once its record was buffered.
    assert_eq!(wait_empty(&c, &events_q, Duration::from_secs(30)), (0, 0));
    assert_eq!(wait_empty(&c, &sns_q, Duration::from_secs(30)), (0, 0));
    let taken: f64 = [&a, &b]
        .iter()
        .map(|r| r.metric("firelane_input_records_total", &[]))
        .sum();
    assert_eq!(taken, 1000.0);
}

#[test]
fn with_the_output_down_only_buffered_messages_are_deleted_and_all_arrive_after() {
    let Some(ep) = endpoint() else { return };
    let c = Aws::new(&ep).sqs;
    let q = create_queue(&c, "down");
    // Nothing listens on the output's port until the destination "recovers".
    let port = free_port();
    let config = format!(
        "{}[routes.all]\nto = [\"hook\"]\n\n[outputs.hook]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/ingest\"\n\
         batch = {{ max_records = 10, max_age = \"100ms\" }}\n\
         buffer = {{ type = \"memory\", max_size = \"16KiB\", when_full = \"block\" }}\n\
         retry = {{ initial_backoff = \"100ms\", max_backoff = \"1s\" }}\n",
        sqs_input("q", &q, &ep, "visibility_timeout = \"4s\""),
    );
    let r = Router::start(&config);
    let total = 200;
    let bodies = task_events(0..total);
    send(&c, &q, &bodies);

    // The buffer fills, then ingest blocks: the pollers hold their batches.
    r.wait_metric(
        "firelane_input_records_total",
        &[],
        1.0,
        Duration::from_secs(30),
    );
    // 2.5 visibility timeouts: without extensions the held batches would be visible again.
    std::thread::sleep(Duration::from_secs(10));
    let (visible, in_flight) = counts(&c, &q);
    let buffered = r.metric("firelane_input_records_total", &[]) as u64;
    let deleted = total as u64 - visible - in_flight;
    assert!(
        deleted <= buffered,
        "only buffered messages are deleted: {deleted} deleted, {buffered} buffered"
    );
    assert!(
        buffered < total as u64 / 2,
        "a 16 KiB buffer holds few events, got {buffered}"
    );
    assert!(
        in_flight > 0,
        "the batches waiting for buffer space stay hidden (visibility extended)"
    );
    assert_eq!(r.metric("firelane_input_errors_total", &[]), 0.0);

    // The destination recovers: every event arrives.
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the output's port");
    let hook = FakeHttp::serve(listener);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ids = BTreeSet::new();
    while Instant::now() < deadline {
        ids = hook
            .text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("NDJSON line");
                v["id"].as_str().expect("id").to_owned()
            })
            .collect();
        if ids.len() >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let want: BTreeSet<String> = (0..total).map(|n| format!("evt-{n}")).collect();
    assert_eq!(ids, want, "every event arrives once the output is back");
    assert_eq!(wait_empty(&c, &q, Duration::from_secs(30)), (0, 0));
}

#[test]
fn an_unparseable_message_is_counted_and_left_for_the_redrive_policy() {
    let Some(ep) = endpoint() else { return };
    let c = Aws::new(&ep).sqs;
    let q = create_queue(&c, "bad");
    let config = format!(
        "{}[routes.all]\nto = [\"file\"]\n\n[outputs.file]\ntype = \"file\"\npath = \"{{dir}}/out.jsonl\"\nbatch = {{ max_age = \"100ms\" }}\n",
        sqs_input(
            "q",
            &q,
            &ep,
            "visibility_timeout = \"2s\"\nformat = \"json\"\npollers = 1"
        ),
    );
    let mut r = Router::start(&config);
    send(
        &c,
        &q,
        &[
            "{\"ok\": 1, \"truncated\":".to_owned(),
            "{\"ok\": 2}".to_owned(),
        ],
    );
    let bad = ["input=\"q\"", "kind=\"bad_message\""];
    assert!(
        r.wait_metric(
            "firelane_input_errors_total",
            &bad,
            1.0,
            Duration::from_secs(30)
        ) >= 1.0
    );
    let lines = common::wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(30));
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["ok"], 2,
        "the good message of the same batch flows on"
    );

    // It comes back after its visibility timeout (never deleted), and not sooner: no hot
    // loop (at most one receive per visibility timeout).
    let first = Instant::now();
    let again = r.wait_metric(
        "firelane_input_errors_total",
        &bad,
        2.0,
        Duration::from_secs(30),
    );
    assert!(again >= 2.0, "received again after its visibility timeout");
    std::thread::sleep(Duration::from_secs(6));
    let receives = r.metric("firelane_input_errors_total", &bad);
    let allowed = 2.0 + (first.elapsed().as_secs_f64() / 2.0).ceil();
    assert!(
        receives <= allowed,
        "{receives} receives of the bad message in {:?} with a 2 s visibility timeout",
        first.elapsed()
    );
    assert!(
        r.logs()
            .contains("left in the queue for its redrive policy")
    );

    assert!(r.terminate(Duration::from_secs(40)).success());
    let (visible, in_flight) = counts(&c, &q);
    assert_eq!(
        visible + in_flight,
        1,
        "the bad message stays; the good one was deleted"
    );
    assert_eq!(read_jsonl(&r.path("out.jsonl")).len(), 1);
}

#[test]
fn at_shutdown_unfinished_messages_go_back_to_the_queue_at_once() {
    let Some(ep) = endpoint() else { return };
    let c = Aws::new(&ep).sqs;
    let q = create_queue(&c, "stop");
    // The output never answers, so the pollers' batches wait for buffer space when SIGTERM
    // comes; a 60 s visibility timeout would hide them for a minute if not returned.
    let port = free_port();
    let config = format!(
        "[runtime]\nshutdown_grace = \"6s\"\ndrain_inputs = \"1s\"\n\n{}[routes.all]\nto = [\"hook\"]\n\n\
         [outputs.hook]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/ingest\"\n\
         batch = {{ max_records = 10, max_age = \"100ms\" }}\n\
         buffer = {{ type = \"memory\", max_size = \"16KiB\", when_full = \"block\" }}\n",
        sqs_input("q", &q, &ep, "visibility_timeout = \"60s\""),
    );
    let mut r = Router::start(&config);
    let total = 100u64;
    let bodies = task_events(0..total as usize);
    send(&c, &q, &bodies);
    r.wait_metric(
        "firelane_input_records_total",
        &[],
        1.0,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (_, held) = counts(&c, &q);
    assert!(held > 0, "batches are waiting for buffer space");
    let buffered = r.metric("firelane_input_records_total", &[]) as u64;
    r.terminate(Duration::from_secs(30));
    let (visible, in_flight) = counts(&c, &q);
    assert_eq!(
        in_flight, 0,
        "nothing is left hidden for the rest of its visibility timeout"
    );
    assert!(
        total - visible <= buffered,
        "only buffered messages were deleted: {} gone, {buffered} buffered",
        total - visible
    );
}

/// Publishes to a new SNS topic on moto whose SQS subscription (raw delivery off) feeds
/// `queue_arn`: five ECS events as JSON, then one plain-text message. boto3 comes with moto
/// in the test venv.
const PY_PUBLISH: &str = r#"
import json, sys, uuid
import boto3
ep, queue_arn = sys.argv[1], sys.argv[2]
sns = boto3.client("sns", endpoint_url=ep, region_name="us-east-1")
topic = sns.create_topic(Name="ecs-events-" + uuid.uuid4().hex[:12])["TopicArn"]
sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
for n in range(5):
    event = {"version": "0", "id": "sns-evt-%d" % n, "detail-type": "ECS Task State Change",
             "source": "aws.ecs", "account": "123456789012", "time": "2026-01-23T17:57:58Z",
             "region": "us-east-1", "resources": [], "detail": {"n": n}}
    sns.publish(TopicArn=topic, Message=json.dumps(event), Subject="ecs")
sns.publish(TopicArn=topic, Message="deployment finished")
print(topic)
"#;

#[test]
fn envelopes_from_a_real_sns_subscription_are_unwrapped() {
    let Some(ep) = endpoint() else { return };
    let Ok(python) = std::env::var("FIRELANE_TEST_PYTHON") else {
        common::peer_missing("FIRELANE_TEST_PYTHON is not set; SNS publishing was NOT tested");
        return;
    };
    let c = Aws::new(&ep).sqs;
    let q = create_queue(&c, "from-sns");
    let arn = rt().block_on(async {
        c.get_queue_attributes()
            .queue_url(&q)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .expect("QueueArn")
            .clone()
    });
    let config = format!(
        "{}[routes.all]\nto = [\"file\"]\n\n[outputs.file]\ntype = \"file\"\npath = \"{{dir}}/out.jsonl\"\ntag_key = \"tag\"\nbatch = {{ max_age = \"100ms\" }}\n",
        // One poller: moto's ReceiveMessage is not atomic, and two long polls woken by one
        // publish can both take it (a 7th line here, not a router fault).
        sqs_input("q", &q, &ep, "format = \"sns\"\npollers = 1"),
    );
    let r = Router::start(&config);
    let out = std::process::Command::new(&python)
        .args(["-c", PY_PUBLISH, &ep, &arn])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let topic = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let lines = common::wait_lines(&r.path("out.jsonl"), 6, Duration::from_secs(60));
    assert_eq!(lines.len(), 6, "{lines:?}");
    let mut events: Vec<&Value> = lines.iter().filter(|l| l.get("detail").is_some()).collect();
    events.sort_by_key(|l| l["detail"]["n"].as_u64());
    assert_eq!(events.len(), 5);
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e["id"], format!("sns-evt-{n}"));
        assert_eq!(e["tag"], "ECS Task State Change");
        assert_eq!(e["sns"]["TopicArn"], topic.as_str());
        assert_eq!(e["sns"]["Subject"], "ecs");
        assert!(
            e["sns"]["MessageId"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        assert!(e["sns"]["Timestamp"].as_str().is_some());
        assert!(e.get("Signature").is_none() && e.get("Type").is_none());
    }
    let text = lines
        .iter()
        .find(|l| l.get("detail").is_none())
        .expect("the text message");
    assert_eq!(text["message"], "deployment finished");
    assert_eq!(text["tag"], "q");
    assert_eq!(r.metric("firelane_input_errors_total", &[]), 0.0);
    assert_eq!(wait_empty(&c, &q, Duration::from_secs(30)), (0, 0));
}

#[test]
fn a_replica_started_while_sqs_is_unreachable_recovers_by_itself() {
    let Some(ep) = endpoint() else { return };
    let c = Aws::new(&ep).sqs;
    let q = create_queue(&c, "outage");
    // SQS is reached through a port nothing listens on yet.
    let port = free_port();
    let config = format!(
        "{}[routes.all]\nto = [\"file\"]\n\n[outputs.file]\ntype = \"file\"\npath = \"{{dir}}/out.jsonl\"\nbatch = {{ max_age = \"100ms\" }}\n",
        sqs_input("q", &q, &format!("http://127.0.0.1:{port}"), ""),
    );
    let r = Router::start(&config);
    let failed = ["input=\"q\"", "kind=\"receive_failed\""];
    assert!(
        r.wait_metric(
            "firelane_input_errors_total",
            &failed,
            2.0,
            Duration::from_secs(60)
        ) >= 2.0,
        "failures are counted and retried"
    );
    assert!(r.logs().contains("cannot read queue"), "{}", r.logs());
    send(&c, &q, &[task_event("evt-after-outage", 1).to_string()]);
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the SQS port");
    serve_proxy(listener, &ep);
    // Backoff is capped at 20 s, plus the SDK's own retries.
    let lines = common::wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(90));
    assert_eq!(lines.len(), 1, "{}", r.logs());
    assert_eq!(lines[0]["id"], "evt-after-outage");
    assert_eq!(wait_empty(&c, &q, Duration::from_secs(30)), (0, 0));
}

#[test]
fn dedupe_deletes_a_repeated_event_without_a_second_record() {
    let Some(ep) = endpoint() else { return };
    let c = Aws::new(&ep).sqs;
    let q = create_queue(&c, "dedupe");
    let config = format!(
        "{}[routes.all]\nto = [\"file\"]\n\n[outputs.file]\ntype = \"file\"\npath = \"{{dir}}/out.jsonl\"\nbatch = {{ max_age = \"100ms\" }}\n",
        sqs_input(
            "q",
            &q,
            &ep,
            "dedupe = { window = \"10m\", max_keys = 1000 }\npollers = 1"
        ),
    );
    let r = Router::start(&config);
    // EventBridge delivered the same event twice (at least once): two SQS messages with
    // their own MessageIds, one event id. Sent apart, so the second is a repeat of a key
    // already taken; then a repeat within one receive, and an event of its own.
    let event = task_event("evt-twice", 1).to_string();
    send(&c, &q, std::slice::from_ref(&event));
    common::wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(30));
    send(&c, &q, &[event]);
    let dup = ["input=\"q\""];
    assert_eq!(
        r.wait_metric(
            "firelane_input_duplicates_total",
            &dup,
            1.0,
            Duration::from_secs(30)
        ),
        1.0
    );
    let other = task_event("evt-other", 2).to_string();
    send(&c, &q, &[other.clone(), other]);
    assert_eq!(wait_empty(&c, &q, Duration::from_secs(30)), (0, 0));
    // Anything late would be a second record: give it the time to show.
    std::thread::sleep(Duration::from_secs(2));
    let lines = read_jsonl(&r.path("out.jsonl"));
    let ids: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(ids, ["evt-twice", "evt-other"], "one record per event");
    assert_eq!(r.metric("firelane_input_duplicates_total", &dup), 2.0);
    assert_eq!(r.metric("firelane_input_records_total", &dup), 2.0);
    assert_eq!(r.metric("firelane_input_errors_total", &[]), 0.0);
}
