//! ECS events through the HTTP input with `format = "eventbridge"`, as an EventBridge API
//! destination posts them (API-key connection): the real binary on 127.0.0.1 into a file
//! output. The spec's and the seed articles' sample events keep their bodies, get their
//! detail-type as tag and their event time; arrays of events; 401 on a wrong key; 503 +
//! Retry-After while the buffer is full (and the refused event taken when retried, not
//! taken for a duplicate); bad bodies answered 400/413 whole, counted, other requests
//! unaffected; the same event `id` twice gives one record.

mod common;

use std::time::{Duration, Instant};

use common::fake_http::FakeHttp;
use common::{Router, free_port, read_jsonl, wait_lines};
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

const KEY: &str = "eb-connection-key";

// The examples of the Amazon ECS developer guide, *Amazon ECS events*.
const TASK_RUNNING: &str = r#"{"version":"0","id":"3317b2af-7005-947d-b652-f55e762e571a","detail-type":"ECS Task State Change","source":"aws.ecs",
 "account":"111122223333","time":"2020-01-23T17:57:58Z","region":"us-west-2",
 "resources":["arn:aws:ecs:us-west-2:111122223333:task/FargateCluster/c13b4cb40f1f4fe4a2971f76ae5a47ad"],
 "detail":{
  "attachments":[{"id":"1789bcae-ddfb-4d10-8ebe-8ac87ddba5b8","type":"eni","status":"ATTACHED",
    "details":[{"name":"subnetId","value":"subnet-abcd1234"},{"name":"networkInterfaceId","value":"eni-abcd1234"},
               {"name":"macAddress","value":"0a:98:eb:a7:29:ba"},{"name":"privateIPv4Address","value":"10.0.0.139"}]}],
  "availabilityZone":"us-west-2c","clusterArn":"arn:aws:ecs:us-west-2:111122223333:cluster/FargateCluster",
  "containers":[{"containerArn":"arn:aws:ecs:us-west-2:111122223333:container/cf159fd6-3e3f-4a9e-84f9-66cbe726af01",
    "lastStatus":"RUNNING","name":"FargateApp","image":"111122223333.dkr.ecr.us-west-2.amazonaws.com/hello-repository:latest",
    "imageDigest":"sha256:74b2c688c700ec95a93e478cdb959737c148df3fbf5ea706abe0318726e885e6",
    "runtimeId":"ad64cbc71c7fb31c55507ec24c9f77947132b03d48d9961115cf24f3b7307e1e",
    "taskArn":"arn:aws:ecs:us-west-2:111122223333:task/FargateCluster/c13b4cb40f1f4fe4a2971f76ae5a47ad",
    "networkInterfaces":[{"attachmentId":"1789bcae-ddfb-4d10-8ebe-8ac87ddba5b8","privateIpv4Address":"10.0.0.139"}],"cpu":"0"}],
  "createdAt":"2020-01-23T17:57:34.402Z","launchType":"FARGATE","cpu":"256","memory":"512","desiredStatus":"RUNNING",
  "group":"family:sample-fargate","lastStatus":"RUNNING","overrides":{"containerOverrides":[{"name":"FargateApp"}]},
  "connectivity":"CONNECTED","connectivityAt":"2020-01-23T17:57:38.453Z","pullStartedAt":"2020-01-23T17:57:52.103Z",
  "startedAt":"2020-01-23T17:57:58.103Z","pullStoppedAt":"2020-01-23T17:57:55.103Z","updatedAt":"2020-01-23T17:57:58.103Z",
  "taskArn":"arn:aws:ecs:us-west-2:111122223333:task/FargateCluster/c13b4cb40f1f4fe4a2971f76ae5a47ad",
  "taskDefinitionArn":"arn:aws:ecs:us-west-2:111122223333:task-definition/sample-fargate:1","version":4,"platformVersion":"1.3.0"}}"#;
const INSTANCE: &str = r#"{"version":"0","id":"8952ba83-7be2-4ab5-9c32-6687532d15a2","detail-type":"ECS Container Instance State Change","source":"aws.ecs",
 "account":"111122223333","time":"2016-12-06T16:41:06Z","region":"us-east-1",
 "resources":["arn:aws:ecs:us-east-1:111122223333:container-instance/b54a2a04-046f-4331-9d74-3f6d7f6ca315"],
 "detail":{"agentConnected":true,
  "attributes":[{"name":"com.amazonaws.ecs.capability.logging-driver.syslog"},{"name":"com.amazonaws.ecs.capability.task-iam-role"}],
  "clusterArn":"arn:aws:ecs:us-east-1:111122223333:cluster/default",
  "containerInstanceArn":"arn:aws:ecs:us-east-1:111122223333:container-instance/b54a2a04-046f-4331-9d74-3f6d7f6ca315",
  "ec2InstanceId":"i-f3a8506b",
  "registeredResources":[{"name":"CPU","type":"INTEGER","integerValue":2048},{"name":"PORTS_UDP","type":"STRINGSET","stringSetValue":[]}],
  "remainingResources":[{"name":"CPU","type":"INTEGER","integerValue":1988},{"name":"PORTS_UDP","type":"STRINGSET","stringSetValue":[]}],
  "status":"ACTIVE","version":14801,
  "versionInfo":{"agentHash":"aebcbca","agentVersion":"1.13.0","dockerVersion":"DockerVersion: 1.11.2"},
  "updatedAt":"2016-12-06T16:41:06.991Z"}}"#;
const DEPLOYMENT_FAILED_DOCS: &str = r#"{"version":"0","id":"ddca6449-b258-46c0-8653-e0e3aEXAMPLE","detail-type":"ECS Deployment State Change","source":"aws.ecs",
 "account":"111122223333","time":"2020-05-23T12:31:14Z","region":"us-west-2",
 "resources":["arn:aws:ecs:us-west-2:111122223333:service/default/servicetest"],
 "detail":{"eventType":"ERROR","eventName":"SERVICE_DEPLOYMENT_FAILED","deploymentId":"ecs-svc/123",
  "updatedAt":"2020-05-23T11:11:11Z","reason":"ECS deployment circuit breaker: task failed to start."}}"#;
// Seed articles (tests/data/seeds/SOURCES.md).
const TASK_STOPPED: &str = include_str!("data/seeds/ecs-task-state-change-essential-exited.json");
const SERVICE_ACTION: &str = include_str!("data/seeds/ecs-service-action-placement-failure.json");
const DEPLOYMENT_FAILED: &str = include_str!("data/seeds/ecs-deployment-state-change-failed.json");

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// Posts `body` as an API destination with an API_KEY connection does (its headers).
fn post_as_eventbridge(url: &str, body: impl Into<reqwest::blocking::Body>, key: &str) -> Response {
    client()
        .post(url)
        .header("user-agent", "Amazon/EventBridge/ApiDestinations")
        .header("content-type", "application/json; charset=utf-8")
        .header("range", "bytes=0-1048575")
        .header("x-api-key", key)
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

fn answer(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// An eventbridge http input `events` with API-key auth (plus `input_extra`) → file output
/// `out.jsonl`, the tag and time written under `_tag` and `_time` (an event has its own
/// `time`). Returns the router and the input's URL.
fn start(input_extra: &str) -> (Router, String) {
    let port = free_port();
    let config = format!(
        r#"
[inputs.events]
type = "http"
listen = "127.0.0.1:{port}"
format = "eventbridge"
auth = {{ type = "api_key", header = "x-api-key", value = "{KEY}" }}
{input_extra}

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "_tag"
time_key = "_time"
batch = {{ max_age = "100ms" }}
"#
    );
    let r = Router::start(&config);
    (r, format!("http://127.0.0.1:{port}"))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("sample event is JSON")
}

/// The record as the event was posted: without the `_tag` and `_time` the output adds.
fn as_posted(line: &Value) -> Value {
    let mut v = line.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("_tag");
        o.remove("_time");
    }
    v
}

/// The output's lines once `n` arrived and a while passed in which more could have (none
/// should).
fn settled(r: &Router, n: usize) -> Vec<Value> {
    wait_lines(&r.path("out.jsonl"), n, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(700));
    read_jsonl(&r.path("out.jsonl"))
}

fn rfc3339_ns(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .timestamp_nanos_opt()
        .expect("in range")
}

#[test]
fn sample_events_keep_their_bodies_tags_and_times() {
    let (r, base) = start("");
    let out = r.path("out.jsonl");
    let url = format!("{base}/");
    let singles = [
        TASK_RUNNING,
        INSTANCE,
        DEPLOYMENT_FAILED_DOCS,
        TASK_STOPPED,
        SERVICE_ACTION,
    ];
    for ev in singles {
        let (s, b) = answer(post_as_eventbridge(&url, ev, KEY));
        assert_eq!((s, b), (200, json!({"accepted": 1})), "{ev}");
    }
    // An array of events: one request, a record each. PUT as well as POST (an API
    // destination's HttpMethod is the user's choice).
    let array = format!("[{DEPLOYMENT_FAILED}, {DEPLOYMENT_FAILED_DOCS}]");
    let resp = client()
        .put(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json; charset=utf-8")
        .body(array)
        .send()
        .expect("PUT");
    assert_eq!(answer(resp), (200, json!({"accepted": 2})));
    // A tag named by the path replaces the detail-type.
    let (s, _) = answer(post_as_eventbridge(
        &format!("{base}/tag/ecs.events"),
        SERVICE_ACTION,
        KEY,
    ));
    assert_eq!(s, 200);

    let lines = wait_lines(&out, 8, Duration::from_secs(20));
    assert_eq!(lines.len(), 8, "{lines:#?}\n{}", r.logs());
    let mut sent: Vec<Value> = singles.iter().map(|e| parse(e)).collect();
    sent.push(parse(DEPLOYMENT_FAILED));
    sent.push(parse(DEPLOYMENT_FAILED_DOCS));
    sent.push(parse(SERVICE_ACTION));
    for (i, (line, ev)) in lines.iter().zip(&sent).enumerate() {
        assert_eq!(
            &as_posted(line),
            ev,
            "record {i}: the event exactly as posted"
        );
        let want_tag = if i == 7 {
            "ecs.events"
        } else {
            ev["detail-type"].as_str().expect("detail-type")
        };
        assert_eq!(line["_tag"], want_tag, "record {i}");
        let t = line["_time"].as_str().expect("_time");
        let event_time = ev["time"].as_str().expect("time");
        assert_eq!(
            rfc3339_ns(t),
            rfc3339_ns(event_time),
            "record {i}: the event's time"
        );
    }
    // Numbers and strings as sent (exitCode a number, cpu a string).
    assert_eq!(lines[3]["detail"]["containers"][0]["exitCode"], 1);
    assert_eq!(lines[0]["detail"]["cpu"], "256");
    assert_eq!(
        r.metric("firelane_input_records_total", &["input=\"events\""]),
        8.0
    );
}

#[test]
fn the_input_tag_replaces_the_detail_type() {
    let (r, base) = start("tag = \"ecs\"");
    let (s, _) = answer(post_as_eventbridge(&format!("{base}/"), TASK_STOPPED, KEY));
    assert_eq!(s, 200);
    let lines = wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(20));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["_tag"], "ecs");
}

#[test]
fn a_wrong_or_missing_key_is_401_and_nothing_is_kept() {
    let (r, base) = start("");
    let url = format!("{base}/");
    let (s, _) = answer(post_as_eventbridge(&url, TASK_STOPPED, "not-the-key"));
    assert_eq!(s, 401);
    let resp = client().post(&url).body(TASK_STOPPED).send().expect("POST");
    assert_eq!(resp.status().as_u16(), 401);
    // Other auth headers do not stand in for the key.
    let resp = client()
        .post(&url)
        .header("authorization", format!("Bearer {KEY}"))
        .body(TASK_STOPPED)
        .send()
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        r.metric(
            "firelane_input_errors_total",
            &["input=\"events\"", "kind=\"unauthorized\""]
        ),
        3.0
    );
    // The right key still works, and only its event is kept.
    let (s, _) = answer(post_as_eventbridge(&url, SERVICE_ACTION, KEY));
    assert_eq!(s, 200);
    let lines = settled(&r, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["detail-type"], "ECS Service Action");
}

#[test]
fn bad_bodies_are_answered_whole_and_counted_while_good_ones_flow() {
    let (r, base) = start("");
    let url = format!("{base}/");
    let good = |id: &str| {
        let mut ev = parse(TASK_STOPPED);
        ev["id"] = json!(id);
        ev.to_string()
    };
    let count = |kind: &str| {
        r.metric(
            "firelane_input_errors_total",
            &["input=\"events\"", &format!("kind=\"{kind}\"")],
        )
    };

    assert_eq!(answer(post_as_eventbridge(&url, good("g1"), KEY)).0, 200);

    // 2 MB: over the format's 1 MiB max_body (an event is at most 256 KB). 413.
    let mut big = parse(TASK_STOPPED);
    big["detail"]["pad"] = json!("x".repeat(2_000_000));
    let (s, b) = answer(post_as_eventbridge(&url, big.to_string(), KEY));
    assert_eq!(s, 413, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than")),
        "{b}"
    );
    assert_eq!(count("too_large"), 1.0);

    // Invalid JSON: 400, kind="bad_body", the answer says where.
    let broken = &good("b1")[..200];
    let (s, b) = answer(post_as_eventbridge(&url, broken.to_string(), KEY));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid JSON")),
        "{b}"
    );
    assert_eq!(count("bad_body"), 1.0);

    // An array with one non-object: 400, the good events of it are not kept either.
    let arr = format!("[{}, 17, {}]", good("b2"), good("b3"));
    let (s, b) = answer(post_as_eventbridge(&url, arr, KEY));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("array element 1")),
        "{b}"
    );
    // A missing detail-type: not an event.
    let mut no_dt = parse(SERVICE_ACTION);
    no_dt.as_object_mut().map(|o| o.remove("detail-type"));
    let (s, b) = answer(post_as_eventbridge(&url, no_dt.to_string(), KEY));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("detail-type")),
        "{b}"
    );
    assert_eq!(count("not_an_event"), 2.0);

    assert_eq!(answer(post_as_eventbridge(&url, good("g2"), KEY)).0, 200);
    let lines = settled(&r, 2);
    let ids: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(ids, ["g1", "g2"], "only the good requests' events");
    // The router kept running through all of it.
    let (s, _) = common::http_get(&format!("http://127.0.0.1:{}/health", r.admin)).expect("health");
    assert_eq!(s, 200);
}

#[test]
fn the_same_event_id_twice_gives_one_record() {
    let (r, base) = start("dedupe = { window = \"10m\", max_keys = 1000 }");
    let url = format!("{base}/");
    let (s, b) = answer(post_as_eventbridge(&url, TASK_RUNNING, KEY));
    assert_eq!((s, b), (200, json!({"accepted": 1})));
    // EventBridge's retry of the same event (its answer was lost): 200, not kept again.
    let (s, b) = answer(post_as_eventbridge(&url, TASK_RUNNING, KEY));
    assert_eq!((s, b), (200, json!({"accepted": 0, "duplicates": 1})));
    // In an array: the repeat and an in-array repeat dropped, the new event kept.
    let arr = format!("[{TASK_RUNNING}, {SERVICE_ACTION}, {SERVICE_ACTION}]");
    let (s, b) = answer(post_as_eventbridge(&url, arr, KEY));
    assert_eq!((s, b), (200, json!({"accepted": 1, "duplicates": 2})));
    // A different id with the same content is a different event.
    let mut other = parse(TASK_RUNNING);
    other["id"] = json!("another-id");
    let (s, _) = answer(post_as_eventbridge(&url, other.to_string(), KEY));
    assert_eq!(s, 200);

    let lines = settled(&r, 3);
    let ids: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "3317b2af-7005-947d-b652-f55e762e571a",
            "a1ebd563-c04b-b162-a872-bfba7c743c35",
            "another-id"
        ]
    );
    assert_eq!(
        r.metric("firelane_input_duplicates_total", &["input=\"events\""]),
        3.0
    );
    assert_eq!(
        r.metric("firelane_input_records_total", &["input=\"events\""]),
        3.0
    );
    assert!(
        r.metrics()
            .contains("# HELP firelane_input_duplicates_total"),
        "described"
    );
}

#[test]
fn a_full_buffer_answers_503_and_the_refused_event_is_taken_on_retry() {
    // An http output whose peer takes connections but does not answer until it is served:
    // the small buffer fills and stays full until then.
    let (silent, silent_addr) = common::silent_peer();
    let port = free_port();
    let config = format!(
        r#"
[inputs.events]
type = "http"
listen = "127.0.0.1:{port}"
format = "eventbridge"
auth = {{ type = "api_key", header = "x-api-key", value = "{KEY}" }}
accept_timeout = "300ms"
dedupe = {{ window = "10m", max_keys = 1000 }}

[routes.all]
to = ["stuck"]

[outputs.stuck]
type = "http"
url = "http://{silent_addr}/ingest"
timeout = "10m"
batch = {{ max_records = 5, max_age = "100ms" }}
buffer = {{ type = "memory", max_size = "32KiB", when_full = "block" }}
retry = {{ initial_backoff = "100ms", max_backoff = "500ms" }}
concurrency = 1
"#
    );
    let r = Router::start(&config);
    let url = format!("http://127.0.0.1:{port}/");
    let event = |i: usize| {
        let mut ev = parse(SERVICE_ACTION);
        ev["id"] = json!(format!("ev-{i}"));
        ev["detail"]["pad"] = json!("p".repeat(900));
        ev.to_string()
    };
    let started = Instant::now();
    let mut accepted = 0;
    let full = loop {
        let resp = post_as_eventbridge(&url, event(accepted), KEY);
        match resp.status().as_u16() {
            200 => accepted += 1,
            503 => break resp,
            other => panic!("status {other} after {accepted} events: {:?}", resp.text()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && accepted < 2000,
            "the buffer never filled ({accepted} events accepted)"
        );
    };
    assert!(accepted > 0, "the first events fit");
    let retry_after = full
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s >= 1), "{:?}", full.headers());
    // Answered well within EventBridge's 5 s, and still 503 (never a 4xx) while full.
    let t = Instant::now();
    let again = post_as_eventbridge(&url, event(accepted), KEY);
    assert_eq!(again.status().as_u16(), 503);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(
        r.metric(
            "firelane_input_errors_total",
            &["input=\"events\"", "kind=\"full\""]
        ) >= 2.0
    );

    // The destination recovers: what was buffered is delivered, and EventBridge's retry of
    // the refused event is taken (the refusal did not mark it as seen).
    let sink = FakeHttp::serve(silent);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (s, b) = loop {
        let (s, b) = answer(post_as_eventbridge(&url, event(accepted), KEY));
        if s != 503 || Instant::now() > deadline {
            break (s, b);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((s, b), (200, json!({"accepted": 1})));
    // A second retry (the first one's answer lost) is the duplicate.
    let (s, b) = answer(post_as_eventbridge(&url, event(accepted), KEY));
    assert_eq!((s, b), (200, json!({"accepted": 0, "duplicates": 1})));

    let want = accepted + 1;
    let ids = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_string))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids(&sink.text()).len() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut got = ids(&sink.text());
    got.sort();
    let mut expected: Vec<String> = (0..want).map(|i| format!("ev-{i}")).collect();
    expected.sort();
    assert_eq!(
        got,
        expected,
        "every taken event delivered once\n{}",
        r.logs()
    );
    assert_eq!(
        r.metric("firelane_input_duplicates_total", &["input=\"events\""]),
        1.0
    );
}
