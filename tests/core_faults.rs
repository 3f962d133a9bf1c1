//! Faults of the delivery core found in issue #9, each reproduced end to end on the real
//! binary: acked bursts on every output type's default batch config (no ack may wait on
//! a batch timer), records larger than a batch limit, and many open partitions.
//!
//! The AWS cases need moto: `FIRELANE_VENV=/work/venv scripts/test.sh --test core_faults`.
//! Without FIRELANE_TEST_AWS_ENDPOINT they return at once with a loud message; the local
//! cases (stdout, file, http, null) always run.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::fake_http::FakeHttp;
use common::moto::{Aws, endpoint, unique};
use common::{Router, free_port, msgpack_record, noise, peak_rss};
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, EventTime, ForwardClient};
use serde_json::{Value, json};

/// The longest any one ack may take. A batch timer (S3's `max_age` is 5 minutes) is far
/// longer; a debug build under load acks 1,000 records in well under a second.
const ACK_LIMIT: Duration = Duration::from_secs(20);
/// How long every record may take to land after the last ack.
const LAND_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Config and sending

/// A router with one forward input on `fwd` and `output` (the `[outputs.out]` table
/// body) taking every record; everything else at its default.
fn config(fwd: u16, output: &str) -> String {
    format!(
        r#"[runtime]
data_dir = "{{dir}}"
shutdown_grace = "30s"
# The test's client may still be connected when it stops the router: no drain window,
# so SIGTERM goes straight to flushing the outputs (what these tests check).
drain_inputs = "0s"

[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["out"]

[outputs.out]
{output}
"#
    )
}

/// Sends records `{"seq": i, "log": ...}` for `i` in `0..n` as CompressedPackedForward
/// (gzip, a `chunk` option, as in the issue), 1,000 per message, each message with a `chunk`, and waits for every ack before
/// the next message (what Fluent Bit does with `Require_ack_response`). Fails if any ack
/// takes longer than [`ACK_LIMIT`]. `tag_of(i)` is the tag of the message holding record i.
fn burst(fwd: u16, n: u64, log_len: usize, tag_of: impl Fn(u64) -> String) {
    burst_as(fwd, n, log_len, true, tag_of)
}

/// [`burst`] as CompressedPackedForward (gzip) or, with `compressed` false, as
/// PackedForward.
fn burst_as(fwd: u16, n: u64, log_len: usize, compressed: bool, tag_of: impl Fn(u64) -> String) {
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{fwd}"));
    let mut c = ForwardClient::connect(&addr, ACK_LIMIT).expect("connect forward");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut start = 0u64;
    while start < n {
        let end = (start + 1000).min(n);
        let records: Vec<Vec<u8>> = (start..end)
            .map(|i| msgpack_record(&json!({"seq": i, "log": noise(i, log_len)})))
            .collect();
        let time = EventTime::now();
        let entries: Vec<client::Entry<'_>> = records
            .iter()
            .map(|record| client::Entry { time, record })
            .collect();
        let chunk = client::new_chunk_id();
        let mut frame = Vec::new();
        if compressed {
            // One gzip member at the fastest level: the client's CPU is not under test.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&client::encode_entries(&entries))
                .expect("gzip");
            let payload = gz.finish().expect("gzip");
            client::encode_packed_payload(
                &mut frame,
                &tag_of(start),
                &payload,
                false,
                Some(entries.len()),
                Some("gzip"),
                Some(&chunk),
            );
        } else {
            client::encode_packed(&mut frame, &tag_of(start), &entries, Some(&chunk));
        }
        let sent = Instant::now();
        c.send(&frame).expect("send message");
        c.read_ack(&chunk).unwrap_or_else(|e| {
            panic!(
                "no ack for records {start}..{end} within {ACK_LIMIT:?} ({:?} into the burst): {e}",
                started.elapsed()
            )
        });
        slowest = slowest.max(sent.elapsed());
        start = end;
    }
    eprintln!(
        "burst of {n}: {:?}, slowest ack {slowest:?}",
        started.elapsed()
    );
}

fn tag(_: u64) -> String {
    "app-firelens-0123456789abcdef".to_owned()
}

/// Checks that `seqs` holds every value of `0..n` exactly once.
fn assert_exactly_once(what: &str, mut seqs: Vec<u64>, n: u64) {
    seqs.sort_unstable();
    let len = seqs.len();
    seqs.dedup();
    let dups = len - seqs.len();
    let missing = n as usize - seqs.iter().filter(|&&s| s < n).count();
    assert!(
        dups == 0 && missing == 0 && seqs.len() == n as usize,
        "{what}: {len} records, {dups} duplicates, {missing} of {n} missing"
    );
}

/// The `seq` of every JSON line in `text`.
fn seqs_of_lines(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}"));
            v["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("no seq in {l:.200}"))
        })
        .collect()
}

fn wait_sent(r: &Router, n: u64, timeout: Duration) {
    let got = r.wait_metric(
        "firelane_output_records_total",
        &["output=\"out\"", "result=\"sent\""],
        n as f64,
        timeout,
    );
    assert_eq!(
        got as u64,
        n,
        "records sent after {timeout:?}\n{}\n{}",
        r.metrics(),
        r.logs()
    );
}

/// SIGTERM: the router flushes its open batches (the tail of a burst would otherwise wait
/// for `max_age`) and must exit 0 within the grace period.
fn stop(r: Router) -> Router {
    stop_within(r, Duration::from_secs(60))
}

/// [`stop`] for a router whose `shutdown_grace` is longer than a minute.
fn stop_within(mut r: Router, timeout: Duration) -> Router {
    let status = r.terminate(timeout);
    assert!(status.success(), "exit status {status}\n{}", r.logs());
    let logs = r.logs();
    assert!(
        !logs.contains("at the shutdown deadline")
            && !logs.contains("shutdown finished before every record was delivered"),
        "records undelivered at shutdown\n{logs}"
    );
    r
}

/// Nothing was dropped, failed or dead-lettered on the way.
fn assert_no_loss(r: &Router) {
    let m = r.metrics();
    for result in ["dropped", "failed", "dead_lettered"] {
        let v = common::metric_sum(
            &m,
            "firelane_output_records_total",
            &["output=\"out\"", &format!("result=\"{result}\"")],
        );
        assert_eq!(v, 0.0, "{result} records\n{m}");
    }
}

// ---------------------------------------------------------------------------------------
// Local outputs: every default batch config takes a 300,000-record acked burst.

const BURST: u64 = 300_000;
/// `log` length: with the other fields about 230 bytes per record in the buffer, so the
/// burst is twice the default 32 MiB memory buffer.
const LOG_LEN: usize = 40;

#[test]
fn null_default_takes_an_acked_burst() {
    let fwd = free_port();
    let r = Router::start(&config(fwd, r#"type = "null""#));
    burst_as(fwd, BURST, LOG_LEN, false, tag);
    wait_sent(&r, BURST, LAND_LIMIT);
    assert_no_loss(&r);
}

#[test]
fn stdout_default_takes_an_acked_burst() {
    let fwd = free_port();
    let mut r = Router::start(&config(fwd, r#"type = "stdout""#));
    let out = r.take_stdout().expect("router stdout");
    let reader = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            seqs.extend(seqs_of_lines(&line));
            if seqs.len() as u64 == BURST {
                break;
            }
        }
        seqs
    });
    burst_as(fwd, BURST, LOG_LEN, false, tag);
    assert_no_loss(&r);
    let _r = stop(r);
    let seqs = reader.join().expect("stdout reader");
    assert_exactly_once("stdout", seqs, BURST);
}

#[test]
fn file_default_takes_an_acked_burst() {
    let fwd = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let r = Router::start_in(
        dir,
        &config(
            fwd,
            &format!("type = \"file\"\npath = \"{}\"", path.display()),
        ),
    );
    burst_as(fwd, BURST, LOG_LEN, false, tag);
    assert_no_loss(&r);
    let _r = stop(r);
    let text = std::fs::read_to_string(&path).expect("read output file");
    assert_exactly_once("file", seqs_of_lines(&text), BURST);
}

#[test]
fn http_default_takes_an_acked_burst() {
    let server = FakeHttp::start();
    let fwd = free_port();
    let r = Router::start(&config(
        fwd,
        &format!("type = \"http\"\nurl = \"{}\"", server.url()),
    ));
    burst_as(fwd, BURST, LOG_LEN, false, tag);
    assert_no_loss(&r);
    let _r = stop(r);
    assert_exactly_once("http", seqs_of_lines(&server.text()), BURST);
}

// ---------------------------------------------------------------------------------------
// AWS outputs on moto

/// One moto test at a time: moto is a single Python process, and several bursts of
/// 200,000+ records against it at once (the test harness runs tests in parallel) make each
/// one slow enough to run into shutdown deadlines on a loaded 2-core machine.
fn moto_serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The text of every object under `prefix` (gunzipped when stored gzip), and how many
/// objects there were.
fn text_under(aws: &Aws, bucket: &str, prefix: &str) -> (String, usize) {
    let mut text = String::new();
    let mut objects = 0;
    for (key, enc, body) in aws.objects(bucket, prefix) {
        let gz = enc.as_deref() == Some("gzip") || key.ends_with(".gz");
        if gz {
            flate2::read::MultiGzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .expect("gunzip object");
        } else {
            text.push_str(std::str::from_utf8(&body).expect("utf-8 object"));
        }
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        objects += 1;
    }
    (text, objects)
}

/// Every message of a log stream.
fn log_messages(aws: &Aws, group: &str, stream: &str) -> Vec<String> {
    aws.log_events(group, stream)
        .into_iter()
        .map(|(_, message)| message)
        .collect()
}

fn s3_output(bucket: &str, key: &str, ep: &str, extra: &str) -> String {
    format!(
        r#"type = "s3"
bucket = "{bucket}"
key = "{key}"
compression = "gzip"
region = "us-east-1"
endpoint_url = "{ep}"
force_path_style = true
{extra}"#
    )
}

/// Issue #9: "The default S3 output stalls every input for up to 5 minutes": after
/// 63,000 records the 32 MiB memory buffer was full of one open batch that could only
/// seal at 32 MiB compressed or at `max_age`; no ack came, the client timed out.
#[test]
fn s3_default_takes_an_acked_burst() {
    let Some(ep) = endpoint() else { return };
    let _serial = moto_serial();
    let aws = Aws::new(&ep);
    let bucket = unique("fl-core-s3");
    aws.create_bucket(&bucket);
    let fwd = free_port();
    let r = Router::start(&config(
        fwd,
        &s3_output(&bucket, "logs/{tag}/{uuid}.json.gz", &ep, ""),
    ));
    burst(fwd, BURST, LOG_LEN, tag);
    assert_no_loss(&r);
    let _r = stop(r);
    let (text, objects) = text_under(&aws, &bucket, "logs/");
    assert_exactly_once("s3", seqs_of_lines(&text), BURST);
    assert!(objects >= 2, "sealed under pressure: {objects} objects");
}

/// The same with a batch far larger than the buffer: the issue's second config.
#[test]
fn s3_huge_batch_config_takes_an_acked_burst() {
    let Some(ep) = endpoint() else { return };
    let _serial = moto_serial();
    let aws = Aws::new(&ep);
    let bucket = unique("fl-core-s3big");
    aws.create_bucket(&bucket);
    let fwd = free_port();
    let r = Router::start(&config(
        fwd,
        &s3_output(
            &bucket,
            "logs/{uuid}.json.gz",
            &ep,
            r#"batch = { max_bytes = "256MiB", max_age = "10m" }"#,
        ),
    ));
    let n = 200_000;
    burst(fwd, n, LOG_LEN, tag);
    assert_no_loss(&r);
    let _r = stop(r);
    let (text, _) = text_under(&aws, &bucket, "logs/");
    assert_exactly_once("s3", seqs_of_lines(&text), n);
}

#[test]
fn firehose_default_takes_an_acked_burst() {
    let Some(ep) = endpoint() else { return };
    let _serial = moto_serial();
    let aws = Aws::new(&ep);
    let bucket = unique("fl-core-fhb");
    aws.create_bucket(&bucket);
    let stream = aws.create_delivery_stream(&bucket, "fh/");
    let fwd = free_port();
    let r = Router::start(&config(
        fwd,
        &format!(
            "type = \"firehose\"\ndelivery_stream = \"{stream}\"\nregion = \"us-east-1\"\nendpoint_url = \"{ep}\""
        ),
    ));
    burst(fwd, BURST, LOG_LEN, tag);
    assert_no_loss(&r);
    let _r = stop(r);
    let (text, _) = text_under(&aws, &bucket, "fh/");
    assert_exactly_once("firehose", seqs_of_lines(&text), BURST);
}

#[test]
fn cloudwatch_logs_default_takes_an_acked_burst() {
    let Some(ep) = endpoint() else { return };
    let _serial = moto_serial();
    let aws = Aws::new(&ep);
    let group = unique("/fl/core");
    let fwd = free_port();
    let r = Router::start(&config(
        fwd,
        &format!(
            "type = \"cloudwatch_logs\"\nlog_group = \"{group}\"\nlog_stream = \"s\"\nauto_create = true\nregion = \"us-east-1\"\nendpoint_url = \"{ep}\""
        ),
    ));
    burst(fwd, BURST, LOG_LEN, tag);
    assert_no_loss(&r);
    let _r = stop(r);
    let messages = log_messages(&aws, &group, "s");
    assert_exactly_once(
        "cloudwatch_logs",
        seqs_of_lines(&messages.join("\n")),
        BURST,
    );
}

// ---------------------------------------------------------------------------------------
// Issue #9: "A record larger than `batch.max_bytes` is acknowledged, then dropped."

/// The `log` of the issue: 1,048,576 characters, so the encoded line is over the
/// stdout/file/http default `max_bytes` of 1 MiB.
fn big_log() -> String {
    noise(7, 1 << 20)
}

fn post(url: &str, body: Vec<u8>) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// Records dropped by `output`, by any reason.
fn dropped(r: &Router, output: &str) -> f64 {
    r.metric(
        "firelane_output_records_total",
        &[&format!("output=\"{output}\""), "result=\"dropped\""],
    )
}

/// The embedded default config (what `firelane run` uses without a file) on free ports.
#[test]
fn http_record_over_max_bytes_reaches_stdout_on_the_embedded_default() {
    let (fwd, http, admin) = (free_port(), free_port(), free_port());
    let text = firelane::config::EMBEDDED_DEFAULT
        .replace("127.0.0.1:2020", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:24224", &format!("127.0.0.1:{fwd}"))
        .replace("127.0.0.1:8888", &format!("127.0.0.1:{http}"));
    assert!(text.contains(&format!("127.0.0.1:{http}")), "{text}");
    let mut r = Router::start_with(tempfile::tempdir().expect("tempdir"), &text, admin, &[]);
    let out = r.take_stdout().expect("router stdout");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            lines.push(line);
        }
        lines
    });
    let log = big_log();
    let (status, body) = post(
        &format!("http://127.0.0.1:{http}/tag/demo"),
        serde_json::to_vec(&json!({ "log": log })).expect("json"),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &format!("http://127.0.0.1:{http}/tag/demo"),
        br#"{"log":"small"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    r.wait_metric(
        "firelane_output_records_total",
        &["output=\"stdout\"", "result=\"sent\""],
        2.0,
        Duration::from_secs(30),
    );
    assert_eq!(dropped(&r, "stdout"), 0.0, "{}", r.metrics());
    let _r = stop(r);
    let lines = reader.join().expect("stdout reader");
    let got: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(got.len(), 2, "both records on stdout");
    assert_eq!(got[0]["tag"], "demo");
    assert!(
        got[0]["log"].as_str() == Some(log.as_str()),
        "record changed"
    );
    assert_eq!(got[1]["log"], "small");
}

#[test]
fn http_record_over_max_bytes_reaches_file_and_http_outputs() {
    let server = FakeHttp::start();
    let http = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let text = format!(
        r#"[runtime]
data_dir = "{{dir}}"

[inputs.web]
type = "http"
listen = "127.0.0.1:{http}"

[routes.all]
to = ["file", "web"]

[outputs.file]
type = "file"
path = "{path}"

[outputs.web]
type = "http"
url = "{url}"
compression = "gzip"
"#,
        path = path.display(),
        url = server.url()
    );
    let r = Router::start_in(dir, &text);
    let log = big_log();
    let mut body = Vec::new();
    for (i, l) in [(0, "before"), (1, log.as_str()), (2, "after")] {
        body.extend(serde_json::to_vec(&json!({"seq": i, "log": l})).expect("json"));
        body.push(b'\n');
    }
    let (status, text) = post(&format!("http://127.0.0.1:{http}/tag/demo"), body);
    assert_eq!(status, 200, "{text}");
    for o in ["file", "web"] {
        r.wait_metric(
            "firelane_output_records_total",
            &[&format!("output=\"{o}\""), "result=\"sent\""],
            3.0,
            Duration::from_secs(30),
        );
        assert_eq!(dropped(&r, o), 0.0, "{o}\n{}", r.metrics());
    }
    let _r = stop(r);
    for (what, text) in [
        ("file", std::fs::read_to_string(&path).expect("file output")),
        ("http", server.text()),
    ] {
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(got.len(), 3, "{what}: every record");
        // The http output sends up to 4 batches at once: find the big one by its seq.
        let big = got.iter().find(|v| v["seq"] == 1).expect("record 1");
        assert!(
            big["log"].as_str() == Some(log.as_str()),
            "{what}: record 1 changed"
        );
        assert_exactly_once(what, seqs_of_lines(&text), 3);
    }
}

/// The same over forward with a `chunk`: acked, and then it must arrive.
#[test]
fn forward_record_over_max_bytes_is_acked_and_arrives() {
    let fwd = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let r = Router::start_in(
        dir,
        &config(
            fwd,
            &format!("type = \"file\"\npath = \"{}\"", path.display()),
        ),
    );
    let log = big_log();
    let records: Vec<Vec<u8>> = [(0, "before"), (1, log.as_str()), (2, "after")]
        .iter()
        .map(|(i, l)| msgpack_record(&json!({"seq": i, "log": l})))
        .collect();
    let time = EventTime::now();
    let entries: Vec<client::Entry<'_>> = records
        .iter()
        .map(|record| client::Entry { time, record })
        .collect();
    let chunk = client::new_chunk_id();
    let mut frame = Vec::new();
    client::encode_forward(&mut frame, "demo", &entries, Some(&chunk));
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{fwd}"));
    let mut c = ForwardClient::connect(&addr, ACK_LIMIT).expect("connect forward");
    c.send(&frame).expect("send");
    c.read_ack(&chunk).expect("ack");
    wait_sent(&r, 3, Duration::from_secs(30));
    assert_eq!(dropped(&r, "out"), 0.0, "{}", r.metrics());
    let _r = stop(r);
    let text = std::fs::read_to_string(&path).expect("file output");
    assert_exactly_once("file", seqs_of_lines(&text), 3);
    let big: Value = serde_json::from_str(text.lines().nth(1).expect("line 2")).expect("json");
    assert!(
        big["log"].as_str() == Some(log.as_str()),
        "record 1 changed"
    );
}

/// A record a target buffer can never store (a disk buffer frames at most 64 MiB) is
/// refused with 413 before anything of the request is buffered or acknowledged.
/// The memory limit lets the input hold and parse the 65 MiB body (about twice its size):
/// under the default 128 MiB the input itself refuses it with 413 (see
/// `http_input::requests_the_budget_can_never_hold_are_413`), before any output sees it.
#[test]
fn record_no_output_can_take_is_refused_before_the_ack() {
    let http = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let text = format!(
        r#"[runtime]
data_dir = "{{dir}}"
memory_limit = "512MiB"

[inputs.web]
type = "http"
listen = "127.0.0.1:{http}"
max_body = "80MiB"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{path}"
buffer = {{ type = "disk" }}
"#,
        path = path.display(),
    );
    let r = Router::start_in(dir, &text);
    let url = format!("http://127.0.0.1:{http}/tag/demo");
    let mut body = br#"{"seq":0,"log":"small, same request"}"#.to_vec();
    body.push(b'\n');
    body.extend(br#"{"seq":1,"log":""#);
    body.extend(std::iter::repeat_n(b'x', 65 << 20));
    body.extend(b"\"}\n");
    let (status, text) = post(&url, body);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("out"), "names the output: {text}");
    // Good data still flows.
    let (status, text) = post(&url, br#"{"seq":2,"log":"next request"}"#.to_vec());
    assert_eq!(status, 200, "{text}");
    wait_sent(&r, 1, Duration::from_secs(30));
    let m = r.metrics();
    assert_eq!(
        common::metric_sum(
            &m,
            "firelane_output_refused_records_total",
            &["output=\"out\"", "reason=\"too_large\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(dropped(&r, "out"), 0.0, "{m}");
    let _r = stop(r);
    let text = std::fs::read_to_string(&path).expect("file output");
    assert_eq!(
        seqs_of_lines(&text),
        vec![2],
        "nothing of the refused request"
    );
}

// ---------------------------------------------------------------------------------------
// Issue #9: "Per-partition state outside the budget": an S3 key with {tag} and gzip, one
// record each for 5,000 tags, took 1.57 GiB of RSS under memory_limit = "128MiB".

#[test]
fn s3_many_tags_stay_within_the_memory_limit() {
    let Some(ep) = endpoint() else { return };
    let _serial = moto_serial();
    let aws = Aws::new(&ep);
    let bucket = unique("fl-core-tags");
    aws.create_bucket(&bucket);
    let fwd = free_port();
    let text = config(fwd, &s3_output(&bucket, "t/{tag}/{uuid}.json.gz", &ep, ""))
        .replace("[runtime]\n", "[runtime]\nmemory_limit = \"128MiB\"\n")
        // 5,000 objects: moto takes its time; the flush at SIGTERM must not be cut short.
        .replace("shutdown_grace = \"30s\"", "shutdown_grace = \"120s\"");
    let r = Router::start(&text);
    let pid = r.child.as_ref().expect("router process").id();
    let tags = 5_000u64;
    // One record per tag, one message per record, acks read in windows of 100.
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{fwd}"));
    let mut c = ForwardClient::connect(&addr, ACK_LIMIT).expect("connect forward");
    let mut max_open = 0.0f64;
    for start in (0..tags).step_by(100) {
        let mut chunks = Vec::new();
        for i in start..start + 100 {
            let record = msgpack_record(&json!({"seq": i, "log": noise(i, 200)}));
            let chunk = client::new_chunk_id();
            let mut frame = Vec::new();
            client::encode_forward(
                &mut frame,
                &format!("app{i}-firelens-0123456789abcdef"),
                &[client::Entry {
                    time: EventTime::now(),
                    record: &record,
                }],
                Some(&chunk),
            );
            c.send(&frame).expect("send");
            chunks.push(chunk);
        }
        for chunk in &chunks {
            c.read_ack(chunk)
                .unwrap_or_else(|e| panic!("ack near record {start}: {e}"));
        }
        max_open = max_open.max(r.metric("firelane_output_open_partitions", &["output=\"out\""]));
    }
    let peak = peak_rss(pid);
    let m = r.metrics();
    let capped = common::metric_sum(
        &m,
        "firelane_output_sealed_batches_total",
        &["output=\"out\"", "reason=\"partitions\""],
    );
    assert!(capped > 0.0, "partitions sealed at the cap or budget\n{m}");
    assert!(max_open <= 256.0, "open partitions peaked at {max_open}");
    assert!(
        peak < (128 + 64) << 20,
        "peak RSS {} MiB under memory_limit 128MiB",
        peak >> 20
    );
    // Grace is 120 s here: wait for it, plus a margin.
    let _r = stop_within(r, Duration::from_secs(150));
    let (text, objects) = text_under(&aws, &bucket, "t/");
    assert_exactly_once("s3", seqs_of_lines(&text), tags);
    assert_eq!(objects as u64, tags, "one object per tag");
    eprintln!(
        "peak RSS {} MiB, open partitions peaked at {max_open}",
        peak >> 20
    );
}

// ---------------------------------------------------------------------------------------
// An output that keeps failing is visible at the default log level

/// The tester's case: a file output whose `path` is in a missing directory retried 70+
/// times with nothing in the log at the default level. Now the first failed attempt is a
/// WARN with the reason at once, and further ones at most one per 10 s, with a count.
#[test]
fn retried_failures_are_warned_at_the_default_level_rate_limited() {
    let fwd = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no/such/dir/out.jsonl");
    let cfg = config(
        fwd,
        &format!("type = \"file\"\npath = \"{}\"", path.display()),
    )
    .replace(r#"shutdown_grace = "30s""#, r#"shutdown_grace = "2s""#);
    let r = Router::start_in(dir, &cfg);
    burst_as(fwd, 3, 20, false, tag);
    let started = Instant::now();
    let warned = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains("WARN") && l.contains("send failed (io_error)"))
            .map(str::to_owned)
            .collect()
    };
    let deadline = started + Duration::from_secs(30);
    while warned(&r.logs()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = warned(&r.logs());
    assert!(
        !lines.is_empty(),
        "no WARN for the failing output:\n{}",
        r.logs()
    );
    assert!(
        lines[0].contains("output out") && lines[0].contains("no/such/dir"),
        "the warning names neither the output nor the cause: {}",
        lines[0]
    );
    // Keep failing for a while: many attempts (3 records each), few lines.
    let retried = |r: &Router| {
        r.metric(
            "firelane_output_records_total",
            &[r#"output="out""#, r#"result="retried""#],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while retried(&r) < 3.0 * 6.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let attempts = retried(&r) / 3.0;
    let lines = warned(&r.logs()).len() as f64;
    let allowed = 1.0 + (started.elapsed().as_secs_f64() / 10.0).ceil();
    assert!(attempts >= 6.0, "only {attempts} retried attempts");
    assert!(
        lines <= allowed,
        "{lines} warnings for {attempts} failed attempts in {:?}",
        started.elapsed()
    );
}

/// Issue #9: a reservation larger than the whole memory budget was clamped to it and
/// granted, so a record larger than `memory_limit` was acked, held, and delivered with
/// more memory than the limit. Such a record can never be held: it is refused before
/// the ack (forward: no ack, `kind="too_large"`), and the next record flows.
#[test]
fn forward_record_larger_than_the_memory_limit_is_refused_before_the_ack() {
    let fwd = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.jsonl");
    let text = config(
        fwd,
        &format!("type = \"file\"\npath = \"{}\"", path.display()),
    )
    .replace("[runtime]\n", "[runtime]\nmemory_limit = \"8MiB\"\n");
    let r = Router::start_in(dir, &text);
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{fwd}"));
    let send = |c: &mut ForwardClient, seq: u64, log: &str| {
        let record = msgpack_record(&json!({"seq": seq, "log": log}));
        let chunk = client::new_chunk_id();
        let mut frame = Vec::new();
        client::encode_forward(
            &mut frame,
            "demo",
            &[client::Entry {
                time: EventTime::now(),
                record: &record,
            }],
            Some(&chunk),
        );
        c.send(&frame).expect("send");
        chunk
    };
    let mut c = ForwardClient::connect(&addr, Duration::from_secs(5)).expect("connect forward");
    // 10 MiB of log: under max_frame (16 MiB), over the whole 8 MiB budget.
    let chunk = send(&mut c, 0, &noise(3, 10 << 20));
    assert!(
        c.read_ack(&chunk).is_err(),
        "a record over the memory limit must not be acked"
    );
    let mut c = ForwardClient::connect(&addr, ACK_LIMIT).expect("reconnect forward");
    let chunk = send(&mut c, 1, "small");
    c.read_ack(&chunk).expect("ack for the next record");
    wait_sent(&r, 1, Duration::from_secs(30));
    let m = r.metrics();
    assert_eq!(
        common::metric_sum(
            &m,
            "firelane_input_errors_total",
            &["input=\"fwd\"", "kind=\"too_large\""]
        ),
        1.0,
        "{m}"
    );
    // The forward input refuses it while decoding (its decoded cost is more than one
    // request may hold), so no output's can-ever-store check sees it: nothing is counted
    // as refused by the output, and nothing of it reaches the file.
    assert_eq!(
        common::metric_sum(
            &m,
            "firelane_output_refused_records_total",
            &["output=\"out\""]
        ),
        0.0,
        "{m}"
    );
    let _r = stop(r);
    let text = std::fs::read_to_string(&path).expect("file output");
    assert_eq!(seqs_of_lines(&text), vec![1], "only the record that fits");
}
