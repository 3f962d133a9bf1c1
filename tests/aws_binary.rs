//! The AWS outputs end to end: the real `firelane` binary, records in over the forward
//! protocol, S3 / Firehose / CloudWatch Logs out to a local moto server.
//!
//! moto accepts batches AWS would refuse (no 10,000-event, 1 MiB, 24 h, 500-record or
//! 4 MiB checks), so most tests put a small recording HTTP/1.1 proxy between the router
//! and moto and check every request against the AWS limits as it went over the wire. The
//! proxy can also refuse connections for a while, which simulates an outage without moto
//! losing its state.
//!
//! Run with `scripts/test.sh --test aws_binary` (it starts moto and exports
//! FIRELANE_TEST_AWS_ENDPOINT). Without that variable every test returns at once with a
//! loud message.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::kinesis::{StoredRecord, create_stream, read_all};
use common::moto::{Aws, endpoint, unique};
use common::{Router, free_port, noise};
use firelane::event::now_ns;
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, EventTime, ForwardClient};
use serde_json::{Value, json};

fn decode_body(enc: Option<&str>, body: &[u8]) -> String {
    let mut s = String::new();
    match enc {
        Some("gzip") => {
            flate2::read::MultiGzDecoder::new(body)
                .read_to_string(&mut s)
                .expect("gunzip");
        }
        Some("zstd") => {
            zstd::stream::read::Decoder::new(body)
                .expect("zstd")
                .read_to_string(&mut s)
                .expect("unzstd");
        }
        None => s = String::from_utf8(body.to_vec()).expect("utf-8 body"),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    s
}

// ---------------------------------------------------------------------------------------
// Sending records

/// Sends `(time_ns, record)` pairs as Forward-mode frames (≤ 1,000 entries, ≤ 4 MiB each),
/// each with a chunk id, and waits for every ack: when this returns, the router holds them.
fn send_forward(port: u16, tag: &str, records: &[(i64, Value)]) {
    let addr = ListenAddr::Tcp(format!("127.0.0.1:{port}"));
    let mut c = ForwardClient::connect(&addr, Duration::from_secs(60)).expect("connect forward");
    let mut start = 0;
    while start < records.len() {
        let mut encoded: Vec<(EventTime, Vec<u8>)> = Vec::new();
        let mut size = 0;
        while start + encoded.len() < records.len() && encoded.len() < 1000 && size < 4 << 20 {
            let (t, v) = &records[start + encoded.len()];
            let b = common::msgpack_record(v);
            size += b.len();
            encoded.push((EventTime::from_ns(*t), b));
        }
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
        c.send(&frame).expect("send frame");
        c.read_ack(&chunk).expect("ack");
        start += encoded.len();
    }
}

const SEC: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;

fn router_config(fwd: u16, outputs: &str) -> String {
    format!(
        r#"[runtime]
data_dir = "{{dir}}"
shutdown_grace = "20s"
memory_limit = "1GiB"
log_level = "info"

[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

{outputs}"#
    )
}

fn sent(r: &Router, output: &str) -> f64 {
    r.metric(
        "firelane_output_records_total",
        &[&format!("output=\"{output}\""), "result=\"sent\""],
    )
}

fn wait_sent(r: &Router, output: &str, want: usize, timeout: Duration) {
    let got = r.wait_metric(
        "firelane_output_records_total",
        &[&format!("output=\"{output}\""), "result=\"sent\""],
        want as f64,
        timeout,
    );
    assert_eq!(
        got as usize,
        want,
        "output {output}: sent records after {timeout:?}\n{}\n{}",
        r.metrics(),
        r.logs()
    );
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `seqs` is exactly 0..n, reporting missing and duplicated values.
fn assert_exactly_once(what: &str, mut seqs: Vec<u64>, n: u64) {
    seqs.sort_unstable();
    let mut dups = Vec::new();
    for w in seqs.windows(2) {
        if w[0] == w[1] {
            dups.push(w[0]);
        }
    }
    let have: HashSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<u64> = (0..n).filter(|i| !have.contains(i)).take(20).collect();
    assert!(
        dups.is_empty() && missing.is_empty() && seqs.len() as u64 == n,
        "{what}: {} records for {n}; duplicated {:?}; missing (first 20) {:?}",
        seqs.len(),
        &dups[..dups.len().min(20)],
        missing
    );
}

// ---------------------------------------------------------------------------------------
// Recording proxy

/// What one request looked like on the wire.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    /// `X-Amz-Target` (JSON APIs), e.g. `Logs_20140328.PutLogEvents`.
    target: String,
    /// Payload bytes (for S3 aws-chunked bodies, the decoded length).
    body_len: usize,
    status: u16,
    /// Error type and the start of the body of a failed request.
    error: String,
    detail: Detail,
}

#[derive(Clone, Debug)]
enum Detail {
    None,
    PutLogEvents {
        group: String,
        stream: String,
        events: usize,
        /// Σ UTF-8 message bytes + 26 per event, as AWS counts a batch.
        counted_bytes: usize,
        span_ms: i64,
        max_message: usize,
        sorted: bool,
    },
    PutRecordBatch {
        stream: String,
        records: usize,
        total: usize,
        max_record: usize,
    },
}

fn analyse(target: &str, body: &[u8]) -> Detail {
    let action = target.rsplit('.').next().unwrap_or("");
    match action {
        "PutLogEvents" => {
            let v: Value = serde_json::from_slice(body).expect("PutLogEvents JSON");
            let events = v["logEvents"].as_array().cloned().unwrap_or_default();
            let ts: Vec<i64> = events
                .iter()
                .map(|e| e["timestamp"].as_i64().unwrap_or(0))
                .collect();
            let sizes: Vec<usize> = events
                .iter()
                .map(|e| e["message"].as_str().map_or(0, str::len))
                .collect();
            Detail::PutLogEvents {
                group: v["logGroupName"].as_str().unwrap_or("").into(),
                stream: v["logStreamName"].as_str().unwrap_or("").into(),
                events: events.len(),
                counted_bytes: sizes.iter().sum::<usize>() + 26 * events.len(),
                span_ms: ts.iter().max().unwrap_or(&0) - ts.iter().min().unwrap_or(&0),
                max_message: sizes.iter().copied().max().unwrap_or(0),
                sorted: ts.windows(2).all(|w| w[0] <= w[1]),
            }
        }
        "PutRecordBatch" => {
            let v: Value = serde_json::from_slice(body).expect("PutRecordBatch JSON");
            let sizes: Vec<usize> = v["Records"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            base64::engine::general_purpose::STANDARD
                                .decode(r["Data"].as_str().unwrap_or(""))
                                .expect("base64 record")
                                .len()
                        })
                        .collect()
                })
                .unwrap_or_default();
            Detail::PutRecordBatch {
                stream: v["DeliveryStreamName"].as_str().unwrap_or("").into(),
                records: sizes.len(),
                total: sizes.iter().sum(),
                max_record: sizes.iter().copied().max().unwrap_or(0),
            }
        }
        _ => Detail::None,
    }
}

/// A loopback HTTP/1.1 proxy that forwards every request to `upstream` on a fresh
/// connection, records it, and can refuse service (close connections unanswered).
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

struct Head {
    raw: Vec<u8>,
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a request or response head; `None` on a clean EOF before any byte.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "EOF in head",
            ));
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            break;
        }
        lines.push(text);
    }
    let first = lines.first().cloned().unwrap_or_default();
    let headers = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        raw,
        first,
        headers,
    }))
}

/// How a message without Content-Length or chunking ends.
#[derive(Clone, Copy, PartialEq)]
enum Unframed {
    /// A request: no body.
    Empty,
    /// A response: the body runs to EOF.
    ToEof,
    /// No body at all (HEAD, 204, 304).
    None,
}

/// Reads a body framed by `head`: (raw bytes as on the wire, decoded payload, read to EOF).
fn read_body(
    r: &mut impl BufRead,
    head: &Head,
    unframed: Unframed,
) -> std::io::Result<(Vec<u8>, Vec<u8>, bool)> {
    if unframed == Unframed::None {
        return Ok((Vec::new(), Vec::new(), false));
    }
    let chunked = head
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut raw = Vec::new();
        let mut payload = Vec::new();
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line)?;
            raw.extend_from_slice(&line);
            let size_text = String::from_utf8_lossy(&line);
            let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = Vec::new();
                    r.read_until(b'\n', &mut t)?;
                    raw.extend_from_slice(&t);
                    if t == b"\r\n" || t.is_empty() {
                        break;
                    }
                }
                return Ok((raw, payload, false));
            }
            let mut data = vec![0u8; size + 2];
            r.read_exact(&mut data)?;
            raw.extend_from_slice(&data);
            payload.extend_from_slice(&data[..size]);
        }
    }
    if let Some(len) = head.get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut data = vec![0u8; len];
        r.read_exact(&mut data)?;
        return Ok((data.clone(), data, false));
    }
    if unframed == Unframed::Empty {
        return Ok((Vec::new(), Vec::new(), false));
    }
    let mut data = Vec::new();
    r.read_to_end(&mut data)?;
    Ok((data.clone(), data, true))
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let (s, d, rf) = (seen.clone(), down.clone(), refused.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, d, rf) = (s.clone(), d.clone(), rf.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &s, &d, &rf);
                });
            }
        });
        Proxy {
            port,
            seen,
            down,
            refused,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("proxy log").clone()
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

fn serve(
    conn: TcpStream,
    upstream: SocketAddr,
    seen: &Mutex<Vec<Seen>>,
    down: &AtomicBool,
    refused: &AtomicUsize,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut client_in = BufReader::new(conn.try_clone()?);
    let mut client_out = conn;
    loop {
        if down.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            let _ = client_out.shutdown(Shutdown::Both);
            return Ok(());
        }
        let Some(req) = read_head(&mut client_in)? else {
            return Ok(());
        };
        if down.load(Ordering::SeqCst) {
            // The request is read but never forwarded: the server never saw it.
            refused.fetch_add(1, Ordering::SeqCst);
            let _ = client_out.shutdown(Shutdown::Both);
            return Ok(());
        }
        if req
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            client_out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let (raw_body, payload, _) = read_body(&mut client_in, &req, Unframed::Empty)?;
        let mut parts = req.first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target_uri = parts.next().unwrap_or("").to_string();
        let (path, query) = match target_uri.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target_uri.clone(), String::new()),
        };
        let target = req.get("x-amz-target").unwrap_or("").to_string();
        let body_len = req
            .get("x-amz-decoded-content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(payload.len());
        let detail = analyse(&target, &payload);

        let up = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
        up.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut up_out = up.try_clone()?;
        up_out.write_all(&req.raw)?;
        up_out.write_all(&raw_body)?;
        let mut up_in = BufReader::new(up);
        let resp = loop {
            let Some(h) = read_head(&mut up_in)? else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "no response",
                ));
            };
            let code: u16 = h
                .first
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if (100..200).contains(&code) {
                continue;
            }
            break (h, code);
        };
        let (head, status) = resp;
        let unframed = if method == "HEAD" || status == 204 || status == 304 {
            Unframed::None
        } else {
            Unframed::ToEof
        };
        let (raw_resp, resp_payload, until_eof) = read_body(&mut up_in, &head, unframed)?;
        let error = if status >= 300 {
            let text = String::from_utf8_lossy(&resp_payload);
            format!(
                "{} {}",
                head.get("x-amzn-errortype").unwrap_or(""),
                &text[..text.len().min(300)]
            )
        } else {
            String::new()
        };
        seen.lock().expect("proxy log").push(Seen {
            method,
            path,
            query,
            target,
            body_len,
            status,
            error,
            detail,
        });
        client_out.write_all(&head.raw)?;
        client_out.write_all(&raw_resp)?;
        client_out.flush()?;
        if until_eof
            || head
                .get("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            let _ = client_out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

fn assert_cwl_limits(seen: &[Seen]) -> usize {
    let mut puts = 0;
    for s in seen {
        if let Detail::PutLogEvents {
            group,
            stream,
            events,
            counted_bytes,
            span_ms,
            max_message,
            sorted,
        } = &s.detail
        {
            puts += 1;
            let what = format!("PutLogEvents {group} {stream}");
            assert!(*events >= 1 && *events <= 10_000, "{what}: {events} events");
            assert!(
                *counted_bytes <= 1_048_576,
                "{what}: {counted_bytes} bytes (26 B/event)"
            );
            assert!(*span_ms <= 24 * 3_600_000, "{what}: spans {span_ms} ms");
            assert!(
                *max_message <= 1_048_576 - 26,
                "{what}: a {max_message}-byte event"
            );
            assert!(*sorted, "{what}: events not in chronological order");
            // The first put to a new stream finds it missing (auto_create creates it then).
            assert!(
                s.status == 200 || s.error.contains("ResourceNotFoundException"),
                "{what}: HTTP {} {}",
                s.status,
                s.error
            );
        }
    }
    puts
}

fn assert_firehose_limits(seen: &[Seen]) -> usize {
    let mut calls = 0;
    for s in seen {
        if let Detail::PutRecordBatch {
            records,
            total,
            max_record,
            ..
        } = &s.detail
        {
            calls += 1;
            assert!(
                *records >= 1 && *records <= 500,
                "PutRecordBatch with {records} records"
            );
            assert!(*total <= 4 * 1024 * 1024, "PutRecordBatch of {total} bytes");
            assert!(
                *max_record <= 1_024_000,
                "PutRecordBatch with a {max_record}-byte record"
            );
            assert_eq!(
                s.status, 200,
                "PutRecordBatch: HTTP {} {}",
                s.status, s.error
            );
        }
    }
    calls
}

/// For a router with outputs `{prefix}_dl` (dead letters to the file output `dlq` at
/// `{dir}/dlq.jsonl`) and `{prefix}_plain` (none), both to a destination that does not
/// exist: sends 20 records and checks that each is dead-lettered once at the first attempt
/// with `reason` and the service's error `code` in its message, counted `failed` on the
/// plain output, and never sent or retried. Returns the records sent.
fn assert_permanent_failure(
    r: &Router,
    fwd: u16,
    prefix: &str,
    reason: &str,
    code: &str,
) -> Vec<(i64, Value)> {
    let (dl, plain) = (format!("{prefix}_dl"), format!("{prefix}_plain"));
    let recs: Vec<(i64, Value)> = (0..20u64)
        .map(|i| (now_ns(), json!({"seq": i, "log": "x"})))
        .collect();
    send_forward(fwd, "nb", &recs);
    let lines = common::wait_lines(&r.path("dlq.jsonl"), 20, Duration::from_secs(30));
    assert_eq!(lines.len(), 20, "{}", r.logs());
    let mut seqs = Vec::new();
    for l in &lines {
        let e = &l["firelane_error"];
        assert_eq!(e["output"], dl.as_str(), "{l}");
        assert_eq!(e["reason"], reason, "{l}");
        assert!(e["message"].as_str().unwrap_or("").contains(code), "{l}");
        assert_eq!(e["attempts"], 1, "a permanent error is not retried: {l}");
        seqs.push(l["seq"].as_u64().expect("seq"));
    }
    assert_exactly_once("dead letters", seqs, 20);
    let failed = r.wait_metric(
        "firelane_output_records_total",
        &[&format!("output=\"{plain}\""), "result=\"failed\""],
        20.0,
        Duration::from_secs(30),
    );
    assert_eq!(failed, 20.0);
    let m = |o: &str, res: &str| {
        r.metric(
            "firelane_output_records_total",
            &[&format!("output=\"{o}\""), &format!("result=\"{res}\"")],
        )
    };
    assert_eq!(m(&dl, "dead_lettered"), 20.0);
    assert_eq!((m(&dl, "sent"), m(&plain, "sent")), (0.0, 0.0));
    assert_eq!((m(&dl, "retried"), m(&plain, "retried")), (0.0, 0.0));
    recs
}

// ---------------------------------------------------------------------------------------
// S3

/// 10,000 records under a key template using every kind of placeholder: every record lands
/// exactly once, in an object whose key matches the record's own values.
#[test]
fn s3_templated_keys_gzip_every_record_once() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-bin-s3");
    aws.create_bucket(&bucket);
    let prefix = unique("pfx");
    let fwd = free_port();
    let outputs = format!(
        r#"[routes.all]
to = ["s3"]

[outputs.s3]
type = "s3"
bucket = "{bucket}"
key = "${{FL_TEST_PREFIX}}/{{tag[0]}}/{{container_name}}/%Y/%m/%d/%H/{{tag}}-{{uuid}}.json"
compression = "gzip"
region = "us-east-1"
endpoint_url = "{ep}"
force_path_style = true
tag_key = "tag"
time_key = "time"
batch = {{ max_bytes = "256KiB", max_age = "1s" }}
"#
    );
    let r = Router::start_with(
        tempfile::tempdir().expect("tempdir"),
        &router_config(fwd, &outputs),
        free_port(),
        &[("FL_TEST_PREFIX", prefix.as_str())],
    );
    let tags = ["app-firelens-aaa111", "web.svc-firelens-bbb222"];
    let containers = [Some("app"), Some("sidecar"), None];
    let n = 10_000u64;
    let base = now_ns() - 3 * 3600 * SEC;
    let mut per_tag: BTreeMap<&str, Vec<(i64, Value)>> = BTreeMap::new();
    for i in 0..n {
        let mut v = json!({"seq": i, "log": format!("GET /item/{i} {}", noise(i, 60))});
        if let Some(c) = containers[(i % 3) as usize] {
            v["container_name"] = json!(c);
        }
        // Three distinct hours, so %H splits objects too.
        let t = base + ((i / 7) % 3) as i64 * 3600 * SEC + i as i64 * MS;
        per_tag
            .entry(tags[(i % 2) as usize])
            .or_default()
            .push((t, v));
    }
    for (tag, recs) in &per_tag {
        send_forward(fwd, tag, recs);
    }
    wait_sent(&r, "s3", n as usize, Duration::from_secs(60));

    let objects = aws.objects(&bucket, &format!("{prefix}/"));
    assert!(
        objects.len() >= 2 * 3 * 3,
        "expected ≥ 18 objects (tag × container × hour), got {}",
        objects.len()
    );
    let mut seqs = Vec::new();
    for (key, enc, body) in &objects {
        assert_eq!(enc.as_deref(), Some("gzip"), "{key}");
        assert!(key.ends_with(".json.gz"), "{key}");
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 8, "{key}");
        let [pfx, tag0, container, y, m, d, h, file] = parts[..] else {
            unreachable!()
        };
        assert_eq!(pfx, prefix);
        let text = decode_body(enc.as_deref(), body);
        assert!(text.ends_with('\n'), "{key}");
        for line in text.lines() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{key}: {e}: {line}"));
            let tag = v["tag"].as_str().expect("tag");
            // Every record matches its object's key: no object mixes template values.
            assert!(
                file.starts_with(&format!("{tag}-")),
                "{key} holds tag {tag}"
            );
            assert_eq!(tag0, tag.split(['.', '-']).next().unwrap_or(""), "{key}");
            assert_eq!(
                container,
                v["container_name"].as_str().unwrap_or("-"),
                "{key}"
            );
            let time = v["time"].as_str().expect("time");
            assert_eq!(&time[..13], format!("{y}-{m}-{d}T{h}"), "{key}: {time}");
            seqs.push(v["seq"].as_u64().expect("seq"));
        }
    }
    assert_exactly_once("S3 gzip", seqs, n);
    assert_eq!(
        r.metric(
            "firelane_output_records_total",
            &["output=\"s3\"", "result=\"failed\""]
        ),
        0.0
    );
}

/// zstd objects, closed by clock-aligned windows (`align`) long before `max_age`, and each
/// holding records of one window only.
#[test]
fn s3_zstd_with_aligned_windows() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-bin-zst");
    aws.create_bucket(&bucket);
    let fwd = free_port();
    let outputs = format!(
        r#"[routes.all]
to = ["s3"]

[outputs.s3]
type = "s3"
bucket = "{bucket}"
key = "z/{{tag}}/{{index}}-{{uuid}}"
compression = "zstd"
align = "5s"
region = "us-east-1"
endpoint_url = "{ep}"
force_path_style = true
time_key = "time"
batch = {{ max_age = "300s" }}
"#
    );
    let r = Router::start(&router_config(fwd, &outputs));
    let n = 3_000u64;
    let base = (now_ns() / (5 * SEC) - 4) * 5 * SEC;
    // 10 ms apart: 30 s of record time, six 5 s windows.
    let recs: Vec<(i64, Value)> = (0..n)
        .map(|i| {
            (
                base + i as i64 * 10 * MS,
                json!({"seq": i, "log": noise(i, 40)}),
            )
        })
        .collect();
    let started = Instant::now();
    send_forward(fwd, "zz-firelens-1", &recs);
    // max_age is 5 minutes: only the window ends can close these objects in time.
    wait_sent(&r, "s3", n as usize, Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(60));
    let objects = aws.objects(&bucket, "z/zz-firelens-1/");
    let mut seqs = Vec::new();
    for (key, enc, body) in &objects {
        assert_eq!(enc.as_deref(), Some("zstd"), "{key}");
        assert!(key.ends_with(".zst"), "{key}");
        let text = decode_body(enc.as_deref(), body);
        let mut windows = HashSet::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("JSON line");
            let seq = v["seq"].as_u64().expect("seq");
            windows.insert((base + seq as i64 * 10 * MS).div_euclid(5 * SEC));
            seqs.push(seq);
        }
        assert_eq!(
            windows.len(),
            1,
            "{key} mixes record-time windows {windows:?}"
        );
    }
    assert!(objects.len() >= 6, "six windows, {} objects", objects.len());
    assert_exactly_once("S3 zstd aligned", seqs, n);
}

/// One object above 16 MiB goes as a multipart upload whose parts are all ≥ 5 MiB except
/// the last, and the object holds every record.
#[test]
fn s3_large_object_goes_multipart_with_valid_parts() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-bin-mp");
    aws.create_bucket(&bucket);
    let proxy = Proxy::start(&ep);
    let fwd = free_port();
    let n = 10_000u64;
    let outputs = format!(
        r#"[routes.all]
to = ["s3"]

[outputs.s3]
type = "s3"
bucket = "{bucket}"
key = "mp/{{uuid}}.log"
region = "us-east-1"
endpoint_url = "{url}"
force_path_style = true
batch = {{ max_records = {n}, max_bytes = "64MiB", max_age = "120s" }}
buffer = {{ max_size = "256MiB" }}
"#,
        url = proxy.url()
    );
    let r = Router::start(&router_config(fwd, &outputs));
    // ~2 KB per record: ~20 MB in one object.
    let recs: Vec<(i64, Value)> = (0..n)
        .map(|i| (now_ns(), json!({"seq": i, "log": noise(i, 2000)})))
        .collect();
    send_forward(fwd, "mp", &recs);
    wait_sent(&r, "s3", n as usize, Duration::from_secs(90));

    let seen = proxy.seen();
    let creates: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.method == "POST"
                && s.query
                    .split('&')
                    .any(|q| q == "uploads" || q == "uploads=")
        })
        .collect();
    assert_eq!(creates.len(), 1, "one CreateMultipartUpload: {seen:#?}");
    let mut parts: BTreeMap<u32, usize> = BTreeMap::new();
    for s in seen
        .iter()
        .filter(|s| s.method == "PUT" && s.query.contains("partNumber="))
    {
        let number: u32 = s
            .query
            .split('&')
            .find_map(|q| q.strip_prefix("partNumber="))
            .and_then(|v| v.parse().ok())
            .expect("part number");
        assert_eq!(s.status, 200, "UploadPart {number}: HTTP {}", s.status);
        parts.insert(number, s.body_len);
    }
    assert!(parts.len() >= 3, "parts: {parts:?}");
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        (1..=parts.len() as u32).collect::<Vec<_>>()
    );
    let last = parts.len() as u32;
    for (number, size) in &parts {
        if *number != last {
            assert!(*size >= 5 * 1024 * 1024, "part {number} is {size} bytes");
        }
    }
    let completes = seen
        .iter()
        .filter(|s| s.method == "POST" && s.query.contains("uploadId=") && s.status == 200)
        .count();
    assert_eq!(completes, 1);
    assert!(
        !seen.iter().any(|s| s.method == "PUT"
            && s.path.contains("/mp/")
            && !s.query.contains("partNumber=")),
        "no PutObject expected"
    );
    let objects = aws.objects(&bucket, "mp/");
    assert_eq!(objects.len(), 1);
    let (key, enc, body) = &objects[0];
    assert!(body.len() > 16 * 1024 * 1024, "{key}: {} bytes", body.len());
    assert_eq!(body.len(), parts.values().sum::<usize>());
    let seqs = decode_body(enc.as_deref(), body)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("line")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_exactly_once("S3 multipart", seqs, n);
}

/// The S3 endpoint refuses every connection for a while: records queue and retry, and
/// once it is back every record lands exactly once.
#[test]
fn s3_outage_then_recovery_loses_and_duplicates_nothing() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-bin-out");
    aws.create_bucket(&bucket);
    let proxy = Proxy::start(&ep);
    let fwd = free_port();
    let outputs = format!(
        r#"[routes.all]
to = ["s3"]

[outputs.s3]
type = "s3"
bucket = "{bucket}"
key = "o/{{uuid}}.json"
compression = "gzip"
region = "us-east-1"
endpoint_url = "{url}"
force_path_style = true
batch = {{ max_records = 200, max_age = "500ms" }}
retry = {{ initial_backoff = "100ms", max_backoff = "1s" }}
"#,
        url = proxy.url()
    );
    let r = Router::start(&router_config(fwd, &outputs));
    let batch = |from: u64, to: u64| -> Vec<(i64, Value)> {
        (from..to)
            .map(|i| (now_ns(), json!({"seq": i, "log": noise(i, 50)})))
            .collect()
    };
    send_forward(fwd, "o", &batch(0, 1_000));
    wait_sent(&r, "s3", 1_000, Duration::from_secs(30));

    proxy.set_down(true);
    send_forward(fwd, "o", &batch(1_000, 2_000));
    wait_until(
        "connections refused while down",
        Duration::from_secs(30),
        || proxy.refused.load(Ordering::SeqCst) >= 3,
    );
    wait_until("retries counted", Duration::from_secs(30), || {
        r.metric(
            "firelane_output_records_total",
            &["output=\"s3\"", "result=\"retried\""],
        ) > 0.0
    });
    assert_eq!(
        sent(&r, "s3"),
        1_000.0,
        "nothing can be sent while the endpoint is down"
    );
    send_forward(fwd, "o", &batch(2_000, 2_500));
    proxy.set_down(false);
    send_forward(fwd, "o", &batch(2_500, 3_000));
    wait_sent(&r, "s3", 3_000, Duration::from_secs(60));

    let mut seqs = Vec::new();
    for (key, enc, body) in aws.objects(&bucket, "o/") {
        for line in decode_body(enc.as_deref(), &body).lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{key}: {e}"));
            seqs.push(v["seq"].as_u64().expect("seq"));
        }
    }
    assert_exactly_once("S3 after outage", seqs, 3_000);
    assert_eq!(
        r.metric(
            "firelane_output_records_total",
            &["output=\"s3\"", "result=\"failed\""]
        ),
        0.0
    );
    let health = common::http_get(&format!("http://127.0.0.1:{}/health", r.admin)).expect("health");
    assert_eq!(health.0, 200);
}

/// Tester's report: a forward tag of 100,000 characters made the S3 key longer than the
/// limit; the record was acked, then dropped with drops_total{reason="s3_key_too_long"}.
/// Now the key is shortened within S3's 1,024 bytes (a prefix, then `-` and a hash of the
/// full key, then the extension), the records land, and they are counted as renamed.
#[test]
fn s3_key_above_the_limit_is_shortened_not_dropped() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-bin-longkey");
    aws.create_bucket(&bucket);
    let fwd = free_port();
    let outputs = format!(
        r#"[routes.all]
to = ["s3"]

[outputs.s3]
type = "s3"
bucket = "{bucket}"
key = "long/{{tag}}/{{uuid}}.log"
compression = "gzip"
region = "us-east-1"
endpoint_url = "{ep}"
force_path_style = true
batch = {{ max_age = "300ms" }}
"#
    );
    let r = Router::start(&router_config(fwd, &outputs));
    let long_tag = "t".repeat(100_000);
    let recs = |from: u64| -> Vec<(i64, Value)> {
        (from..from + 3)
            .map(|i| (now_ns(), json!({"seq": i, "log": "x"})))
            .collect()
    };
    send_forward(fwd, &long_tag, &recs(0));
    send_forward(fwd, "short", &recs(3));
    wait_sent(&r, "s3", 6, Duration::from_secs(60));

    let mut seqs = Vec::new();
    let mut long_keys = Vec::new();
    for (key, enc, body) in aws.objects(&bucket, "long/") {
        assert!(key.len() <= 1024, "{} bytes: {key}", key.len());
        assert!(key.ends_with(".log.gz"), "{key}");
        let text = decode_body(enc.as_deref(), &body);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("json line");
            seqs.push(v["seq"].as_u64().expect("seq"));
        }
        if key.starts_with("long/ttt") {
            long_keys.push(key);
        } else {
            assert!(key.starts_with("long/short/"), "{key}");
        }
    }
    assert_exactly_once("records", seqs, 6);
    assert!(!long_keys.is_empty());
    for key in &long_keys {
        assert_eq!(key.len(), 1024, "{key}");
        let stem = key.strip_suffix(".log.gz").expect("extension kept");
        let (prefix, hash) = stem.rsplit_once('-').expect("hash suffix");
        assert_eq!(prefix, format!("long/{}", &long_tag[..prefix.len() - 5]));
        assert!(
            hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{key}"
        );
    }
    assert_eq!(
        r.metric(
            "firelane_output_oversize_records_total",
            &["output=\"s3\"", "action=\"renamed\""]
        ),
        3.0,
        "{}",
        r.metrics()
    );
    assert_eq!(
        r.metric("firelane_output_drops_total", &["output=\"s3\""]),
        0.0,
        "{}",
        r.metrics()
    );
}

/// A bucket that does not exist is a permanent error: no retry loop, records counted as
/// failed, dead-lettered with the error attached where configured, a clear log line, and
/// the router keeps serving.
#[test]
fn s3_missing_bucket_is_permanent_and_dead_lettered() {
    let Some(ep) = endpoint() else { return };
    let fwd = free_port();
    let missing = unique("fl-bin-nobucket");
    let outputs = format!(
        r#"[routes.all]
to = ["s3_dl", "s3_plain"]

[outputs.s3_dl]
type = "s3"
bucket = "{missing}"
region = "us-east-1"
endpoint_url = "{ep}"
force_path_style = true
dead_letter = "dlq"
batch = {{ max_age = "300ms" }}

[outputs.s3_plain]
type = "s3"
bucket = "{missing}"
region = "us-east-1"
endpoint_url = "{ep}"
force_path_style = true
batch = {{ max_age = "300ms" }}

[outputs.dlq]
type = "file"
path = "{{dir}}/dlq.jsonl"
"#
    );
    let r = Router::start(&router_config(fwd, &outputs));
    let recs = assert_permanent_failure(&r, fwd, "s3", "no_such_bucket", "NoSuchBucket");
    let logs = r.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("s3_plain") && l.contains("NoSuchBucket") && l.contains(&missing)),
        "a log line names the output, the error and the bucket:\n{logs}"
    );
    // Still healthy and still taking records.
    let (status, body) =
        common::http_get(&format!("http://127.0.0.1:{}/health", r.admin)).expect("health");
    assert_eq!(status, 200, "{body}");
    send_forward(fwd, "nb", &recs[..5]);
    assert_eq!(
        common::wait_lines(&r.path("dlq.jsonl"), 25, Duration::from_secs(30)).len(),
        25
    );
}

// ---------------------------------------------------------------------------------------
// Firehose

/// Records reach the delivery stream's bucket exactly once, with and without aggregation;
/// a record above 1,000 KiB is split (default) or truncated (`oversize = "truncate"`) and
/// counted; every PutRecordBatch on the wire is within AWS's limits.
#[test]
fn firehose_records_arrive_within_limits() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let bucket = unique("fl-bin-fhb");
    aws.create_bucket(&bucket);
    let plain = aws.create_delivery_stream(&bucket, "plain/");
    let agg = aws.create_delivery_stream(&bucket, "agg/");
    let proxy = Proxy::start(&ep);
    let fwd = free_port();
    let outputs = format!(
        r#"[routes.all]
to = ["fh_plain", "fh_agg"]

[outputs.fh_plain]
type = "firehose"
delivery_stream = "{plain}"
log_key = "log"
region = "us-east-1"
endpoint_url = "{url}"
batch = {{ max_age = "1s" }}

[outputs.fh_agg]
type = "firehose"
delivery_stream = "{agg}"
aggregate = true
oversize = "truncate"
log_key = "log"
region = "us-east-1"
endpoint_url = "{url}"
batch = {{ max_age = "1s" }}
"#,
        url = proxy.url()
    );
    let r = Router::start(&router_config(fwd, &outputs));
    let n = 3_000u64;
    let mut recs: Vec<(i64, Value)> = (0..n)
        .map(|i| {
            (
                now_ns(),
                json!({"log": format!("seq={i} {}", noise(i, 1500))}),
            )
        })
        .collect();
    // One record above Firehose's 1,000 KiB limit.
    let big = format!("seq={n} {}", "B".repeat(1_100_000));
    recs.insert(1_234, (now_ns(), json!({ "log": big })));
    send_forward(fwd, "fh", &recs);
    wait_sent(&r, "fh_plain", n as usize + 1, Duration::from_secs(60));
    wait_sent(&r, "fh_agg", n as usize + 1, Duration::from_secs(60));

    let seen = proxy.seen();
    let calls = assert_firehose_limits(&seen);
    // 3,000 × 1.5 KB = 4.5 MB: more than one call's 4 MiB even before the big record.
    assert!(calls >= 4, "{calls} PutRecordBatch calls");
    let per_stream = |name: &str| -> (usize, usize) {
        seen.iter()
            .filter_map(|s| match &s.detail {
                Detail::PutRecordBatch {
                    stream,
                    records,
                    total,
                    ..
                } if stream == name => Some((*records, *total)),
                _ => None,
            })
            .fold((0, 0), |(r, t), (r2, t2)| (r + r2, t + t2))
    };
    // Without aggregation every line is its own Firehose record (the big one in 2 pieces);
    // with it, ≤ 1,000 KiB records packed with lines: 5.6 MB in fewer than 20.
    let (plain_records, plain_bytes) = per_stream(&plain);
    assert_eq!(plain_records, n as usize + 2);
    let (agg_records, agg_bytes) = per_stream(&agg);
    assert!(
        agg_records > 0 && agg_records < 20,
        "aggregated Firehose records: {agg_records}"
    );
    assert!(agg_bytes > 4_000_000 && plain_bytes > agg_bytes);

    for (prefix, whole_big) in [("plain/", true), ("agg/", false)] {
        let mut seqs = Vec::new();
        for (key, _, body) in aws.objects(&bucket, prefix) {
            // moto stores the concatenated record bytes (real Firehose may gzip).
            let text = if body.starts_with(&[0x1f, 0x8b]) {
                decode_body(Some("gzip"), &body)
            } else {
                String::from_utf8(body).expect("utf-8")
            };
            assert!(text.ends_with('\n'), "{key}");
            for line in text.lines() {
                let seq: u64 = line
                    .strip_prefix("seq=")
                    .and_then(|l| l.split(' ').next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{key}: bad line {:?}", &line[..line.len().min(80)]));
                if seq == n {
                    if whole_big {
                        assert_eq!(
                            line.len(),
                            format!("seq={n} ").len() + 1_100_000,
                            "split record rejoined"
                        );
                    } else {
                        assert!(line.len() < 1_024_000, "truncated: {}", line.len());
                        assert!(line.ends_with("…[truncated by firelane]"), "marker");
                    }
                }
                seqs.push(seq);
            }
        }
        assert_exactly_once(&format!("Firehose {prefix}"), seqs, n + 1);
    }
    let oversize = |o: &str, action: &str| {
        r.metric(
            "firelane_output_oversize_records_total",
            &[&format!("output=\"{o}\""), &format!("action=\"{action}\"")],
        )
    };
    assert_eq!(oversize("fh_plain", "split"), 1.0, "{}", r.metrics());
    assert_eq!(oversize("fh_agg", "truncated"), 1.0, "{}", r.metrics());
}

// ---------------------------------------------------------------------------------------
// Kinesis Data Streams
//
// moto numbers a shard's records max + 1 without a lock, so two PutRecords calls on one
// shard at once can overwrite each other's records (seen: 1 of 2,000 gone with the default
// concurrency 4 while both sides reported success); the exact-count tests send one call
// at a time.
//
// moto checks PutRecords against AWS's limits itself (≤ 500 records, ≤ 5 MiB and ≤ 1 MiB
// per record counting partition keys) and refuses the whole call otherwise, so a batch
// over a limit would show up here as failed records.

/// A stream's records joined back into lines: per shard and partition key, consecutive
/// records up to one that ends in `\n` (the pieces of a split record). Returns
/// (shard, partition key, line without its `\n`, pieces).
fn kinesis_lines(records: &[StoredRecord]) -> Vec<(String, String, String, usize)> {
    let mut open: BTreeMap<(String, String), (Vec<u8>, usize)> = BTreeMap::new();
    let mut out = Vec::new();
    for r in records {
        let k = (r.shard.clone(), r.partition_key.clone());
        let (buf, pieces) = open.entry(k.clone()).or_default();
        buf.extend_from_slice(&r.data);
        *pieces += 1;
        if buf.ends_with(b"\n") {
            let (mut line, pieces) = open.remove(&k).unwrap_or_default();
            line.pop();
            let text = String::from_utf8(line).expect("utf-8 record");
            out.push((k.0, k.1, text, pieces));
        }
    }
    assert!(
        open.is_empty(),
        "records without their last piece: {open:?}"
    );
    out
}

/// 2,000 records of 11 KB (500 of them are more than 5 MiB, so calls are cut by bytes),
/// every 97th of 400 KB, one of 1.5 MB, one 3 bytes under 1 MiB (over it with its
/// partition key), one with a 300-character partition key, into two 4-shard streams:
/// random keys (JSON lines; both big records split) and `partition_key = "{task}"` (named
/// by ARN; `log_key`; both big records truncated to 1 MiB with their key). Every record is
/// read back from every shard exactly once; one task's records share one shard.
#[test]
fn kinesis_delivers_every_record_once_across_shards() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let random = create_stream(&aws, 4);
    let by_task = create_stream(&aws, 4);
    let fwd = free_port();
    let outputs = format!(
        r#"[routes.all]
to = ["kds_random", "kds_task"]

[outputs.kds_random]
type = "kinesis"
stream = "{random}"
region = "us-east-1"
endpoint_url = "{ep}"
batch = {{ max_age = "1s" }}
concurrency = 1

[outputs.kds_task]
type = "kinesis"
stream_arn = "arn:aws:kinesis:us-east-1:123456789012:stream/{by_task}"
partition_key = "{{task}}"
log_key = "log"
oversize = "truncate"
region = "us-east-1"
endpoint_url = "{ep}"
batch = {{ max_age = "1s" }}
concurrency = 1
"#
    );
    let r = Router::start(&router_config(fwd, &outputs));
    let n = 2_000u64;
    let (big, edge, long_key) = (1_234u64, 1_500u64, 777u64);
    let log_of = |i: u64| match i {
        i if i == big => format!("seq={i} {}", "B".repeat(1_500_000)),
        // With its `\n`, 1 MiB - 3 bytes: fits alone, not with the key "task-0".
        i if i == edge => format!("seq={i} {}", "E".repeat(1_048_576 - 3 - 1 - 9)),
        i if i % 97 == 0 => format!("seq={i} {}", noise(i, 400_000)),
        i => format!("seq={i} {}", noise(i, 11_000)),
    };
    let task_of = |i: u64| {
        if i == long_key {
            "k".repeat(300)
        } else {
            format!("task-{}", i % 3)
        }
    };
    let recs: Vec<(i64, Value)> = (0..n)
        .map(|i| {
            (
                now_ns(),
                json!({"seq": i, "task": task_of(i), "log": log_of(i)}),
            )
        })
        .collect();
    send_forward(fwd, "kds", &recs);
    wait_sent(&r, "kds_random", n as usize, Duration::from_secs(120));
    wait_sent(&r, "kds_task", n as usize, Duration::from_secs(120));

    // Random keys: every shard gets records; the split record comes back whole.
    let stored = read_all(&aws, &random);
    assert_eq!(stored.len(), n as usize + 2, "two records split in two");
    let shards: HashSet<&str> = stored.iter().map(|s| s.shard.as_str()).collect();
    assert_eq!(shards.len(), 4, "random keys spread over every shard");
    let mut seqs = Vec::new();
    for (_, key, line, pieces) in kinesis_lines(&stored) {
        assert_eq!(key.len(), 32, "random key {key:?}");
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        let seq = v["seq"].as_u64().expect("seq");
        assert_eq!(v["log"].as_str(), Some(log_of(seq).as_str()), "seq {seq}");
        let split = seq == big || seq == edge;
        assert_eq!(pieces, if split { 2 } else { 1 }, "seq {seq}");
        seqs.push(seq);
    }
    assert_exactly_once("kds_random", seqs, n);

    // Keys from the template: one task, one key, one shard; the long key cut to 256.
    let stored = read_all(&aws, &by_task);
    assert_eq!(stored.len(), n as usize);
    let mut shard_of: BTreeMap<String, String> = BTreeMap::new();
    let mut seqs = Vec::new();
    for (shard, key, line, _) in kinesis_lines(&stored) {
        let seq: u64 = line
            .strip_prefix("seq=")
            .and_then(|l| l.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad line {:?}", &line[..line.len().min(80)]));
        if seq == long_key {
            assert_eq!(key, "k".repeat(256));
        } else {
            assert_eq!(key, task_of(seq), "seq {seq}");
        }
        if seq == big || seq == edge {
            assert!(line.ends_with("…[truncated by firelane]"), "marker");
            assert!(line.len() + 1 + key.len() <= 1024 * 1024, "{}", line.len());
            assert!(
                line.len() + 1 + key.len() > 1024 * 1024 - 8,
                "{}",
                line.len()
            );
        } else {
            assert_eq!(line, log_of(seq), "seq {seq}");
        }
        let first = shard_of.entry(key.clone()).or_insert_with(|| shard.clone());
        assert_eq!(*first, shard, "key {key} on two shards");
        seqs.push(seq);
    }
    assert_exactly_once("kds_task", seqs, n);

    let oversize = |o: &str, action: &str| {
        r.metric(
            "firelane_output_oversize_records_total",
            &[&format!("output=\"{o}\""), &format!("action=\"{action}\"")],
        )
    };
    assert_eq!(oversize("kds_random", "split"), 2.0, "{}", r.metrics());
    assert_eq!(oversize("kds_task", "truncated"), 2.0, "{}", r.metrics());
    assert_eq!(
        oversize("kds_task", "partition_key_truncated"),
        1.0,
        "{}",
        r.metrics()
    );
    assert_eq!(oversize("kds_random", "partition_key_truncated"), 0.0);
    let failed = |o: &str| {
        r.metric(
            "firelane_output_records_total",
            &[&format!("output=\"{o}\""), "result=\"failed\""],
        )
    };
    assert_eq!((failed("kds_random"), failed("kds_task")), (0.0, 0.0));
}

/// A stream that does not exist: ResourceNotFoundException is permanent, so every record
/// goes to the dead letter output at the first attempt (or is counted failed without one).
#[test]
fn kinesis_missing_stream_is_permanent_and_dead_lettered() {
    let Some(ep) = endpoint() else { return };
    let fwd = free_port();
    let missing = unique("fl-kds-none");
    let outputs = format!(
        r#"[routes.all]
to = ["kds_dl", "kds_plain"]

[outputs.kds_dl]
type = "kinesis"
stream = "{missing}"
region = "us-east-1"
endpoint_url = "{ep}"
dead_letter = "dlq"
batch = {{ max_age = "300ms" }}

[outputs.kds_plain]
type = "kinesis"
stream = "{missing}"
region = "us-east-1"
endpoint_url = "{ep}"
batch = {{ max_age = "300ms" }}

[outputs.dlq]
type = "file"
path = "{{dir}}/dlq.jsonl"
"#
    );
    let r = Router::start(&router_config(fwd, &outputs));
    assert_permanent_failure(
        &r,
        fwd,
        "kds",
        "resource_not_found",
        "ResourceNotFoundException",
    );
    assert!(
        r.logs()
            .lines()
            .any(|l| l.contains("kds_plain") && l.contains(&missing)),
        "a log line names the output and the stream:\n{}",
        r.logs()
    );
}

// ---------------------------------------------------------------------------------------
// CloudWatch Logs

fn cwl_outputs(url: &str) -> String {
    format!(
        r#"[routes.all]
to = ["cwl"]

[outputs.cwl]
type = "cloudwatch_logs"
log_group = "/ecs/{{ecs_cluster}}/{{container_name}}"
log_stream = "{{ecs_task_id}}"
auto_create = true
retention_days = 7
log_key = "log"
region = "us-east-1"
endpoint_url = "{url}"
batch = {{ max_age = "1s" }}
"#
    )
}

fn ecs_record(cluster: &str, container: &str, task: &str, log: String) -> Value {
    json!({
        "ecs_cluster": cluster,
        "container_name": container,
        "ecs_task_arn": format!("arn:aws:ecs:us-east-1:123456789012:task/{cluster}/{task}"),
        "log": log,
    })
}

/// 50,000 small and 300 large events into groups and streams created from templates:
/// every event present once, in order; every PutLogEvents within the limits.
#[test]
fn cloudwatch_burst_lands_in_order_within_limits() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let proxy = Proxy::start(&ep);
    let fwd = free_port();
    let r = Router::start(&router_config(fwd, &cwl_outputs(&proxy.url())));
    let cluster = unique("cl");
    let task = "0123456789abcdef";
    let base = now_ns() - 10 * 60 * SEC;
    let small_n = 50_000u64;
    let big_n = 300u64;
    let small: Vec<(i64, Value)> = (0..small_n)
        .map(|i| {
            (
                base + i as i64 * MS,
                ecs_record(&cluster, "app", task, format!("seq={i} {}", noise(i, 40))),
            )
        })
        .collect();
    let big: Vec<(i64, Value)> = (0..big_n)
        .map(|i| {
            (
                base + i as i64 * 10 * MS,
                ecs_record(
                    &cluster,
                    "big",
                    task,
                    format!("seq={i} {}", noise(i, 100_000)),
                ),
            )
        })
        .collect();
    let t = std::thread::spawn({
        let big = big.clone();
        move || send_forward(fwd, "big-firelens-0123456789abcdef", &big)
    });
    send_forward(fwd, "app-firelens-0123456789abcdef", &small);
    t.join().expect("sender");
    wait_sent(
        &r,
        "cwl",
        (small_n + big_n) as usize,
        Duration::from_secs(90),
    );

    for (container, want) in [("app", &small), ("big", &big)] {
        let group = format!("/ecs/{cluster}/{container}");
        let events = aws.log_events(&group, task);
        assert_eq!(events.len(), want.len(), "{group}");
        for (i, ((ts, msg), (t, v))) in events.iter().zip(want.iter()).enumerate() {
            assert_eq!(*ts, t / MS, "{group} event {i}");
            assert_eq!(msg, v["log"].as_str().unwrap_or(""), "{group} event {i}");
        }
        assert_eq!(aws.retention(&group), Some(7), "{group} retention");
    }
    let seen = proxy.seen();
    let puts = assert_cwl_limits(&seen);
    // 50,000 events need ≥ 5 calls; 300 × 100 KB need ≥ 29.
    assert!(puts >= 5 + 29, "{puts} PutLogEvents calls");
    let creates = seen
        .iter()
        .filter(|s| s.target.ends_with(".CreateLogGroup"))
        .count();
    assert_eq!(creates, 2, "one CreateLogGroup per group");
}

/// Events spanning 25 hours are split into batches of ≤ 24 h; a 1.1 MB event is truncated
/// with a marker and counted.
#[test]
fn cloudwatch_span_and_oversized_event() {
    let Some(ep) = endpoint() else { return };
    let aws = Aws::new(&ep);
    let proxy = Proxy::start(&ep);
    let fwd = free_port();
    let r = Router::start(&router_config(fwd, &cwl_outputs(&proxy.url())));
    let cluster = unique("cl");
    let task = "fedcba9876543210";
    let now = now_ns();
    let n = 201u64;
    // Every 7.5 minutes over 25 hours, oldest first.
    let span: Vec<(i64, Value)> = (0..n)
        .map(|i| {
            let t = now - 25 * 3600 * SEC + i as i64 * 450 * SEC - 60 * SEC;
            (t, ecs_record(&cluster, "span", task, format!("seq={i}")))
        })
        .collect();
    send_forward(fwd, "span-firelens-x", &span);
    let huge = ecs_record(
        &cluster,
        "huge",
        task,
        format!("start {}", "h".repeat(1_100_000)),
    );
    send_forward(fwd, "huge-firelens-x", &[(now, huge)]);
    wait_sent(&r, "cwl", n as usize + 1, Duration::from_secs(60));

    let events = aws.log_events(&format!("/ecs/{cluster}/span"), task);
    let got: Vec<(i64, String)> = events;
    let want: Vec<(i64, String)> = span
        .iter()
        .map(|(t, v)| (t / MS, v["log"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(got, want);
    let huge_events = aws.log_events(&format!("/ecs/{cluster}/huge"), task);
    assert_eq!(huge_events.len(), 1);
    let msg = &huge_events[0].1;
    assert!(msg.starts_with("start hhh"));
    assert!(msg.len() <= 1_000_000, "{} bytes", msg.len());
    assert!(msg.ends_with("…[truncated by firelane]"));
    let seen = proxy.seen();
    assert_cwl_limits(&seen);
    let span_puts = seen
        .iter()
        .filter(
            |s| matches!(&s.detail, Detail::PutLogEvents { group, .. } if group.ends_with("/span")),
        )
        .count();
    assert!(
        span_puts >= 2,
        "25 h of events need two batches, got {span_puts}"
    );
    assert_eq!(
        r.metric(
            "firelane_output_oversize_records_total",
            &["output=\"cwl\"", "action=\"truncated\""]
        ),
        1.0,
        "{}",
        r.metrics()
    );
    assert!(
        r.metric(
            "firelane_output_records_total",
            &["output=\"cwl\"", "result=\"failed\""]
        ) == 0.0
    );
}

/// A CloudWatch Logs endpoint that answers `PutLogEvents` the way AWS does today: events
/// more than 14 days old or 2 hours in the future are rejected individually and reported
/// in `rejectedLogEventsInfo` (`tooOldLogEventEndIndex` exclusive, `tooNewLogEventStartIndex`
/// inclusive), the rest is accepted. moto 5.2.5 reports those indexes off by one, hence
/// this stand-in. Returns its URL and the messages it accepted.
fn fake_cloudwatch_logs() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake CloudWatch Logs");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let acc = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let acc = acc.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                conn.set_read_timeout(Some(Duration::from_secs(60)))?;
                let mut input = BufReader::new(conn.try_clone()?);
                let mut out = conn;
                while let Some(head) = read_head(&mut input)? {
                    let (_, body, _) = read_body(&mut input, &head, Unframed::Empty)?;
                    let target = head.get("x-amz-target").unwrap_or("").to_string();
                    let answer = if target.ends_with(".PutLogEvents") {
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let now_ms = now_ns() / MS;
                        let (oldest, newest) = (now_ms - 14 * 86_400_000, now_ms + 2 * 3_600_000);
                        let events = v["logEvents"].as_array().cloned().unwrap_or_default();
                        let mut info = serde_json::Map::new();
                        let mut too_old_end = 0;
                        for (i, e) in events.iter().enumerate() {
                            let ts = e["timestamp"].as_i64().unwrap_or(0);
                            if ts < oldest {
                                too_old_end = i + 1;
                            } else if ts > newest {
                                info.entry("tooNewLogEventStartIndex").or_insert(json!(i));
                            } else {
                                let msg = e["message"].as_str().unwrap_or("").to_string();
                                acc.lock().expect("accepted").push(msg);
                            }
                        }
                        if too_old_end > 0 {
                            info.insert("tooOldLogEventEndIndex".into(), json!(too_old_end));
                        }
                        let mut resp = json!({"nextSequenceToken": "1"});
                        if !info.is_empty() {
                            resp["rejectedLogEventsInfo"] = Value::Object(info);
                        }
                        resp.to_string()
                    } else {
                        "{}".to_string()
                    };
                    write!(
                        out,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n\
                         content-length: {}\r\n\r\n{answer}",
                        answer.len()
                    )?;
                    out.flush()?;
                }
                Ok(())
            });
        }
    });
    (url, accepted)
}

/// A router with a forward input (on the returned port) routing to two CloudWatch Logs
/// outputs at `url`, both writing to `log_group`: `cwl_failed` (stream `failed`, no dead
/// letter) and `cwl_dl` (stream `dl`, dead letters to the file output `dl`,
/// `{dir}/dead.jsonl`).
fn start_cwl_failed_and_dead_letter(url: &str, log_group: &str) -> (u16, Router) {
    let fwd = free_port();
    let outputs = format!(
        r#"[routes.all]
to = ["cwl_failed", "cwl_dl"]

[outputs.cwl_failed]
type = "cloudwatch_logs"
log_group = "{log_group}"
log_stream = "failed"
log_key = "log"
region = "us-east-1"
endpoint_url = "{url}"
batch = {{ max_age = "1s" }}

[outputs.cwl_dl]
type = "cloudwatch_logs"
log_group = "{log_group}"
log_stream = "dl"
log_key = "log"
region = "us-east-1"
endpoint_url = "{url}"
batch = {{ max_age = "1s" }}
dead_letter = "dl"

[outputs.dl]
type = "file"
path = "{{dir}}/dead.jsonl"
"#
    );
    let r = Router::start_with(
        tempfile::tempdir().expect("tempdir"),
        &router_config(fwd, &outputs),
        free_port(),
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    (fwd, r)
}

/// `firelane_output_records_total{output, result}` as the router exports it now.
fn records_total(r: &Router, output: &str, result: &str) -> f64 {
    r.metric(
        "firelane_output_records_total",
        &[
            &format!("output=\"{output}\""),
            &format!("result=\"{result}\""),
        ],
    )
}

/// Events CloudWatch rejects as too old / too new are counted exactly as the log line says:
/// `failed` without a dead-letter output, `dead_lettered` with one, never "dropped"; the
/// accepted events of the same batches count as sent. Needs no moto.
#[test]
fn cloudwatch_rejected_events_log_and_count_the_same_fate() {
    let (url, accepted) = fake_cloudwatch_logs();
    let (fwd, r) = start_cwl_failed_and_dead_letter(&url, "/fl/rejected");
    let now = now_ns();
    let day = 86_400 * SEC;
    let mut records = Vec::new();
    for i in 0..3 {
        records.push((now - i * SEC, json!({"log": format!("fresh{i}")})));
    }
    for i in 0..2 {
        records.push((now - 20 * day + i * SEC, json!({"log": format!("old{i}")})));
    }
    for i in 0..2 {
        records.push((
            now + 5 * 3600 * SEC + i * SEC,
            json!({"log": format!("new{i}")}),
        ));
    }
    send_forward(fwd, "app", &records);
    let t = Duration::from_secs(60);
    r.wait_metric(
        "firelane_output_records_total",
        &["output=\"cwl_failed\"", "result=\"failed\""],
        4.0,
        t,
    );
    r.wait_metric(
        "firelane_output_records_total",
        &["output=\"cwl_dl\"", "result=\"dead_lettered\""],
        4.0,
        t,
    );
    wait_sent(&r, "cwl_failed", 3, t);
    wait_sent(&r, "cwl_dl", 3, t);
    for o in ["cwl_failed", "cwl_dl"] {
        assert_eq!(records_total(&r, o, "dropped"), 0.0, "{o}\n{}", r.metrics());
        assert_eq!(
            records_total(&r, o, "retried"),
            0.0,
            "{o}: rejections are permanent"
        );
    }
    assert_eq!(
        records_total(&r, "cwl_dl", "failed"),
        0.0,
        "{}",
        r.metrics()
    );
    let mut got = accepted.lock().expect("accepted").clone();
    got.sort();
    assert_eq!(
        got,
        ["fresh0", "fresh0", "fresh1", "fresh1", "fresh2", "fresh2"]
    );

    // The dead letters say why, and where they were going.
    let dead = common::wait_lines(&r.path("dead.jsonl"), 4, t);
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|v| {
            let err = &v["firelane_error"];
            assert!(
                err["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("PutLogEvents /fl/rejected dl")),
                "{v}"
            );
            (
                err["reason"].as_str().unwrap_or("").to_string(),
                v["log"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("too_new".to_string(), "new0".to_string()),
            ("too_new".into(), "new1".into()),
            ("too_old".into(), "old0".into()),
            ("too_old".into(), "old1".into()),
        ]
    );

    // The log lines name the same fate as the metric, per output and reason.
    let logs = r.logs();
    for line in logs.lines().filter(|l| l.contains("cwl_")) {
        assert!(
            !line.contains("dropped"),
            "log says dropped, metric says otherwise: {line}"
        );
    }
    for reason in ["too_old", "too_new"] {
        let has = |o: &str, fate: &str| {
            logs.lines().any(|l| {
                l.contains(&format!("output {o}:"))
                    && l.contains(reason)
                    && l.contains("PutLogEvents /fl/rejected")
                    && l.contains(fate)
            })
        };
        assert!(has("cwl_failed", "records failed"), "{reason}:\n{logs}");
        assert!(has("cwl_dl", "dead-lettered to 'dl'"), "{reason}:\n{logs}");
    }
}

/// Issue #9 (acked, then dropped): a record the sink can never send (`Push::Rejected`:
/// here an empty CloudWatch message, which `PutLogEvents` does not allow) was counted as
/// `dropped`, though no policy of the user's chose to drop it. It goes to the dead letter
/// output when one is configured and counts as `failed` otherwise, never `dropped`; the
/// other records of the batch are sent. Needs no moto.
#[test]
fn cloudwatch_record_the_sink_refuses_is_dead_lettered_or_failed_never_dropped() {
    let (url, accepted) = fake_cloudwatch_logs();
    let (fwd, r) = start_cwl_failed_and_dead_letter(&url, "/fl/refused");
    let now = now_ns();
    let records = vec![
        (now, json!({"log": "before", "seq": 0})),
        (now, json!({"log": "", "seq": 1})),
        (now, json!({"log": "after", "seq": 2})),
    ];
    send_forward(fwd, "app", &records);
    let t = Duration::from_secs(60);
    wait_sent(&r, "cwl_failed", 2, t);
    wait_sent(&r, "cwl_dl", 2, t);
    let failed = r.wait_metric(
        "firelane_output_records_total",
        &["output=\"cwl_failed\"", "result=\"failed\""],
        1.0,
        t,
    );
    assert_eq!(failed, 1.0, "{}", r.metrics());
    let dead_lettered = r.wait_metric(
        "firelane_output_records_total",
        &["output=\"cwl_dl\"", "result=\"dead_lettered\""],
        1.0,
        t,
    );
    assert_eq!(dead_lettered, 1.0, "{}", r.metrics());
    for o in ["cwl_failed", "cwl_dl"] {
        assert_eq!(records_total(&r, o, "dropped"), 0.0, "{o}\n{}", r.metrics());
        assert_eq!(
            r.metric("firelane_output_drops_total", &[&format!("output=\"{o}\"")]),
            0.0,
            "{o}\n{}",
            r.metrics()
        );
    }
    assert_eq!(
        records_total(&r, "cwl_dl", "failed"),
        0.0,
        "{}",
        r.metrics()
    );
    let mut got = accepted.lock().expect("accepted").clone();
    got.sort();
    assert_eq!(got, ["after", "after", "before", "before"]);

    let dead = common::wait_lines(&r.path("dead.jsonl"), 1, t);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["seq"], 1);
    assert_eq!(dead[0]["firelane_error"]["reason"], "empty_message");
    assert_eq!(dead[0]["firelane_error"]["output"], "cwl_dl");

    let logs = r.logs();
    assert!(
        logs.lines().any(|l| l.contains("output cwl_failed:")
            && l.contains("empty_message")
            && l.contains("failed (no dead letter output)")),
        "{logs}"
    );
}
