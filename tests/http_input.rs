//! HTTP input end to end: the real binary, `POST /` and `POST /tag/<tag>` into a file output.
//! Every answer the input documents (200, 400, 401, 413, 415, 503 + Retry-After), the
//! all-or-nothing rule for a request, and the error counters.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Router, free_port, peak_rss, wait_lines};
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

fn post(url: &str, body: impl Into<reqwest::blocking::Body>, headers: &[(&str, &str)]) -> Response {
    let mut req = client().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// One http input (no auth unless `input_extra` sets it) → route `all` → file output `out`.
fn start(input_extra: &str, output_extra: &str) -> (Router, String) {
    let port = free_port();
    let config = format!(
        r#"
[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"
{input_extra}

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "tag"
time_key = "time"
batch = {{ max_age = "100ms" }}
{output_extra}
"#
    );
    let r = Router::start(&config);
    (r, format!("http://127.0.0.1:{port}"))
}

type Headers = &'static [(&'static str, &'static str)];
/// (what, input URL, request headers)
type AuthCase<'a> = (&'static str, &'a String, Vec<(&'static str, String)>);

fn json_body(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

#[test]
fn accepted_shapes_land_field_by_field() {
    let (r, base) = start("", "");
    let out = r.path("out.jsonl");

    let (s, b) = json_body(post(&format!("{base}/"), r#"{"msg":"one","n":1}"#, &[]));
    assert_eq!((s, b), (200, json!({"accepted": 1})));

    let (s, b) = json_body(post(
        &format!("{base}/tag/app.web"),
        r#"[{"msg":"two","n":2},{"msg":"three","nested":{"a":[1,2]}}]"#,
        &[("content-type", "application/json")],
    ));
    assert_eq!((s, b), (200, json!({"accepted": 2})));

    let ndjson = "{\"msg\":\"four\"}\n\n{\"msg\":\"five\",\"ok\":true}\n";
    let (s, b) = json_body(post(
        &format!("{base}/tag/nd"),
        ndjson,
        &[("content-type", "application/x-ndjson")],
    ));
    assert_eq!((s, b), (200, json!({"accepted": 2})));

    let gz = gzip(b"{\"msg\":\"six\"}\n{\"msg\":\"seven\",\"u\":\"\xc3\xa9t\xc3\xa9\"}\n");
    let (s, b) = json_body(post(
        &format!("{base}/tag/gz"),
        gz,
        &[("content-encoding", "gzip")],
    ));
    assert_eq!((s, b), (200, json!({"accepted": 2})));

    // EventBridge events posted to `/` are tagged with their detail-type; an explicit
    // `/tag/<tag>` wins.
    let ev = json!({"version":"0","id":"e1","source":"aws.ecs","detail-type":"ECS Task State Change",
                    "account":"111122223333","region":"us-east-1","time":"2024-01-01T00:00:00Z",
                    "resources":[],"detail":{"lastStatus":"STOPPED"}});
    let (s, _) = json_body(post(&format!("{base}/"), ev.to_string(), &[]));
    assert_eq!(s, 200);
    let mut ev2 = ev.clone();
    ev2["id"] = json!("e2");
    let (s, _) = json_body(post(&format!("{base}/tag/explicit"), ev2.to_string(), &[]));
    assert_eq!(s, 200);

    // An empty body is accepted as zero records.
    let (s, b) = json_body(post(&format!("{base}/"), "", &[]));
    assert_eq!((s, b), (200, json!({"accepted": 0})));

    let lines = wait_lines(&out, 9, Duration::from_secs(20));
    assert_eq!(lines.len(), 9, "{lines:#?}\n{}", r.logs());
    let by_msg = |m: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["msg"] == m)
            .unwrap_or_else(|| panic!("no record {m}: {lines:#?}"))
    };
    let one = by_msg("one");
    assert_eq!(one["n"], 1);
    assert_eq!(one["tag"], "web", "default tag is the input name");
    let t = one["time"].as_str().expect("time_key is a string");
    assert!(
        t.ends_with('Z') && t.len() >= 20,
        "RFC 3339 UTC time, got {t}"
    );
    assert_eq!(by_msg("two")["tag"], "app.web");
    assert_eq!(by_msg("two")["n"], 2);
    assert_eq!(by_msg("three")["nested"], json!({"a": [1, 2]}));
    assert_eq!(by_msg("four")["tag"], "nd");
    assert_eq!(by_msg("five")["ok"], true);
    assert_eq!(by_msg("six")["tag"], "gz");
    assert_eq!(by_msg("seven")["u"], "été");
    let e1 = lines.iter().find(|l| l["id"] == "e1").expect("event e1");
    assert_eq!(e1["tag"], "ECS Task State Change");
    assert_eq!(e1["detail"]["lastStatus"], "STOPPED");
    assert_eq!(e1["detail-type"], "ECS Task State Change");
    let e2 = lines.iter().find(|l| l["id"] == "e2").expect("event e2");
    assert_eq!(e2["tag"], "explicit");
    // Exactly the fields that were posted, plus tag and time.
    let mut keys: Vec<&str> = one
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(keys, ["msg", "n", "tag", "time"]);

    let v = r.wait_metric(
        "firelane_input_records_total",
        &["input=\"web\""],
        9.0,
        Duration::from_secs(5),
    );
    assert_eq!(v, 9.0, "firelane_input_records_total{{input=\"web\"}}");
    assert!(r.metric("firelane_input_bytes_total", &["input=\"web\""]) > 0.0);
}

#[test]
fn bad_bodies_are_rejected_whole() {
    let (r, base) = start("", "");
    let out = r.path("out.jsonl");
    let url = format!("{base}/tag/bad");
    let cases: Vec<(&str, Vec<u8>, Headers)> = vec![
        ("malformed JSON", b"{\"a\":".to_vec(), &[]),
        ("trailing garbage", b"{\"a\":1} nope".to_vec(), &[]),
        (
            "NDJSON with one bad line",
            b"{\"keep\":1}\n{\"keep\":2}\n{bad}\n{\"keep\":3}\n".to_vec(),
            &[],
        ),
        ("bare number", b"42".to_vec(), &[]),
        ("bare string", b"\"hello\"".to_vec(), &[]),
        (
            "array containing a number",
            b"[{\"keep\":4}, 5]".to_vec(),
            &[],
        ),
        (
            "NDJSON with a non-object line",
            b"{\"keep\":6}\n[1]\n".to_vec(),
            &[],
        ),
        ("null", b"null".to_vec(), &[]),
        ("invalid UTF-8", b"{\"keep\":\"\xff\xfe\"}".to_vec(), &[]),
        (
            "invalid UTF-8 in NDJSON",
            b"{\"keep\":7}\n{\"x\":\"\xc3\x28\"}\n".to_vec(),
            &[],
        ),
        (
            "corrupt gzip",
            b"\x1f\x8b\x08\x00garbage".to_vec(),
            &[("content-encoding", "gzip")],
        ),
        (
            "gzip of a bad body",
            gzip(b"{\"keep\":8}\n{oops\n"),
            &[("content-encoding", "gzip")],
        ),
    ];
    for (what, body, headers) in &cases {
        let resp = post(&url, body.clone(), headers);
        let (s, b) = json_body(resp);
        assert_eq!(s, 400, "{what}: {b}");
        assert!(
            b["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: error message, got {b}"
        );
    }
    // Unsupported Content-Encoding: 415, nothing ingested.
    let (s, b) = json_body(post(&url, r#"{"keep":9}"#, &[("content-encoding", "br")]));
    assert_eq!(s, 415, "{b}");

    // The process lives on and the next good request goes through, alone.
    let (s, _) = json_body(post(&url, r#"{"marker":true}"#, &[]));
    assert_eq!(s, 200);
    let lines = wait_lines(&out, 1, Duration::from_secs(20));
    // Give a stray record from a rejected request the same chance to land.
    std::thread::sleep(Duration::from_millis(500));
    let lines_after = common::read_jsonl(&out);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(
        lines_after.len(),
        1,
        "nothing from a rejected request: {lines_after:#?}"
    );
    assert_eq!(lines_after[0]["marker"], true);
    assert_eq!(lines_after[0]["tag"], "bad");

    let bad = r.metric(
        "firelane_input_errors_total",
        &["input=\"web\"", "kind=\"bad_body\""],
    );
    assert_eq!(bad, cases.len() as f64, "{}", r.metrics());
    let enc = r.metric(
        "firelane_input_errors_total",
        &["input=\"web\"", "kind=\"bad_encoding\""],
    );
    assert_eq!(enc, 1.0);
    assert_eq!(
        r.metric("firelane_input_records_total", &["input=\"web\""]),
        1.0
    );
}

#[test]
fn body_limits_and_gzip_bombs() {
    let (r, base) = start("max_body = \"4KiB\"", "");
    let out = r.path("out.jsonl");
    let url = format!("{base}/");

    // Just under the limit: accepted.
    let filler = "x".repeat(4096 - 20);
    let ok = format!("{{\"fill\":\"{filler}\"}}");
    assert!(ok.len() <= 4096);
    let (s, b) = json_body(post(&url, ok.clone(), &[]));
    assert_eq!(s, 200, "{b}");

    // The server answers 413 as soon as it knows, possibly before the client has written
    // its whole body; so these requests read the answer while they write, and a write
    // that fails (broken pipe, reset) after the answer is the expected outcome.
    let addr = base.trim_start_matches("http://").to_string();
    let big = format!("{{\"fill\":\"{}\"}}", "y".repeat(5000));

    // Declared length over the limit.
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let (s, text) = post_while_reading(&addr, &head, vec![big.clone().into_bytes()]);
    assert_eq!(s, 413, "{text}");

    // Chunked (no Content-Length): the limit applies while reading.
    let head = format!("POST / HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut chunks: Vec<Vec<u8>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| [format!("{:x}\r\n", c.len()).as_bytes(), c, b"\r\n"].concat())
        .collect();
    chunks.push(b"0\r\n\r\n".to_vec());
    let (s, text) = post_while_reading(&addr, &head, chunks);
    assert_eq!(s, 413, "{text}");

    // `Expect: 100-continue` with a length over the limit: 413 at once, no 100 Continue
    // (the client never sends the body), and the connection closes.
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
    );
    let (s, text) = read_response(&mut raw_request(&addr, &head, b""));
    assert_eq!(s, 413, "{text}");
    assert!(!text.contains("100 Continue"), "{text}");

    // A gzip bomb: 2 MiB of JSON that compresses to a few KiB.
    let bomb_json = format!("{{\"fill\":\"{}\"}}", " ".repeat(2 << 20));
    let bomb = gzip(bomb_json.as_bytes());
    assert!(bomb.len() < 4096, "bomb is {} bytes compressed", bomb.len());
    let (s, b) = json_body(post(&url, bomb, &[("content-encoding", "gzip")]));
    assert_eq!(s, 413, "{b}");

    let too_large = r.metric(
        "firelane_input_errors_total",
        &["input=\"web\"", "kind=\"too_large\""],
    );
    assert_eq!(too_large, 4.0, "{}", r.metrics());

    let lines = wait_lines(&out, 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(400));
    let lines = if lines.len() == 1 {
        common::read_jsonl(&out)
    } else {
        lines
    };
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["fill"].as_str().map(str::len), Some(filler.len()));
}

/// Sends `head`, then writes `chunks` from another thread while this one reads the
/// response to its end. Write errors are ignored: the server may answer and close before
/// the body is written. Returns the status (0 when no answer came) and the response text.
fn post_while_reading(addr: &str, head: &str, chunks: Vec<Vec<u8>>) -> (u16, String) {
    let mut s = raw_request(addr, head, b"");
    let mut w = s.try_clone().expect("clone stream");
    let writer = std::thread::spawn(move || {
        for c in chunks {
            if w.write_all(&c).is_err() {
                break;
            }
        }
    });
    let answer = read_response(&mut s);
    let _ = writer.join();
    answer
}

#[test]
fn every_auth_type_answers_401_to_wrong_credentials() {
    let (pk, pb, pa, pn) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"
[inputs.key]
type = "http"
listen = "127.0.0.1:{pk}"
auth = {{ type = "api_key", header = "X-Api-Key", value = "${{TEST_EVENTS_KEY}}" }}

[inputs.bear]
type = "http"
listen = "127.0.0.1:{pb}"
auth = {{ type = "bearer", token = "tok-123" }}

[inputs.bas]
type = "http"
listen = "127.0.0.1:{pa}"
auth = {{ type = "basic", username = "alice", password = "s3cr:et" }}

[inputs.open]
type = "http"
listen = "127.0.0.1:{pn}"
auth = {{ type = "none" }}

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "tag"
batch = {{ max_age = "100ms" }}
"#
    );
    let r = Router::start_with(
        tempfile::tempdir().expect("tempdir"),
        &config,
        free_port(),
        &[("TEST_EVENTS_KEY", "k-from-env")],
    );
    let out = r.path("out.jsonl");
    let body = |who: &str| format!("{{\"who\":\"{who}\"}}");
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    let key = format!("http://127.0.0.1:{pk}/");
    let bearer = format!("http://127.0.0.1:{pb}/");
    let basic = format!("http://127.0.0.1:{pa}/");
    let open = format!("http://127.0.0.1:{pn}/");
    let denied: Vec<AuthCase> = vec![
        ("api_key missing", &key, vec![]),
        (
            "api_key wrong",
            &key,
            vec![("x-api-key", "k-from-envX".into())],
        ),
        (
            "api_key in another header",
            &key,
            vec![("authorization", "k-from-env".into())],
        ),
        (
            "api_key unexpanded",
            &key,
            vec![("x-api-key", "${TEST_EVENTS_KEY}".into())],
        ),
        ("bearer missing", &bearer, vec![]),
        (
            "bearer wrong",
            &bearer,
            vec![("authorization", "Bearer tok-124".into())],
        ),
        (
            "bearer empty",
            &bearer,
            vec![("authorization", "Bearer ".into())],
        ),
        (
            "bearer as basic",
            &bearer,
            vec![("authorization", format!("Basic {}", b64("tok-123")))],
        ),
        ("basic missing", &basic, vec![]),
        (
            "basic wrong password",
            &basic,
            vec![("authorization", format!("Basic {}", b64("alice:s3cr")))],
        ),
        (
            "basic wrong user",
            &basic,
            vec![("authorization", format!("Basic {}", b64("bob:s3cr:et")))],
        ),
        (
            "basic not base64",
            &basic,
            vec![("authorization", "Basic !!!".into())],
        ),
        (
            "basic as bearer",
            &basic,
            vec![("authorization", "Bearer alice:s3cr:et".into())],
        ),
    ];
    for (what, url, headers) in &denied {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = post(url, body(what), &h);
        let status = resp.status().as_u16();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("").to_string());
        assert_eq!(status, 401, "{what}");
        if url.as_str() == basic.as_str() {
            assert!(
                www.is_some_and(|w| w.starts_with("Basic")),
                "{what}: WWW-Authenticate"
            );
        }
    }
    let allowed: Vec<AuthCase> = vec![
        ("api_key ok", &key, vec![("x-api-key", "k-from-env".into())]),
        (
            "bearer ok",
            &bearer,
            vec![("authorization", "Bearer tok-123".into())],
        ),
        (
            "basic ok",
            &basic,
            vec![("authorization", format!("Basic {}", b64("alice:s3cr:et")))],
        ),
        ("none ok", &open, vec![]),
    ];
    for (what, url, headers) in &allowed {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, b) = json_body(post(url, body(what), &h));
        assert_eq!(s, 200, "{what}: {b}");
    }
    let lines = wait_lines(&out, 4, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let lines = if lines.len() == 4 {
        common::read_jsonl(&out)
    } else {
        lines
    };
    let mut who: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["who"].as_str().unwrap_or("?").to_string(),
                l["tag"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    who.sort();
    assert_eq!(
        who,
        vec![
            ("api_key ok".to_string(), "key".to_string()),
            ("basic ok".into(), "bas".into()),
            ("bearer ok".into(), "bear".into()),
            ("none ok".into(), "open".into()),
        ]
    );
    let unauth = |input: &str| {
        r.metric(
            "firelane_input_errors_total",
            &[&format!("input=\"{input}\""), "kind=\"unauthorized\""],
        )
    };
    assert_eq!(
        (unauth("key"), unauth("bear"), unauth("bas")),
        (4.0, 4.0, 5.0),
        "{}",
        r.metrics()
    );
    assert!(
        !r.logs().contains("k-from-env"),
        "the api key must not be logged"
    );
}

#[test]
fn full_buffer_answers_503_with_retry_after() {
    // An http output whose peer accepts connections (the kernel backlog does) but never
    // answers: nothing is ever delivered, so the small buffer fills and stays full.
    let (silent, silent_addr) = common::silent_peer();
    let port = free_port();
    let config = format!(
        r#"
[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"
accept_timeout = "300ms"

[routes.all]
to = ["stuck"]

[outputs.stuck]
type = "http"
url = "http://{silent_addr}/ingest"
timeout = "10m"
batch = {{ max_records = 5, max_age = "100ms" }}
buffer = {{ type = "memory", max_size = "32KiB", when_full = "block" }}
concurrency = 1
"#
    );
    let mut r = Router::start(&config);
    let url = format!("http://127.0.0.1:{port}/");
    let record = format!("{{\"pad\":\"{}\"}}", "p".repeat(900));
    let batch: String = (0..4).map(|_| format!("{record}\n")).collect();
    let started = Instant::now();
    let mut accepted = 0;
    let full = loop {
        let resp = post(&url, batch.clone(), &[]);
        match resp.status().as_u16() {
            200 => accepted += 4,
            503 => break resp,
            other => panic!(
                "unexpected status {other} after {accepted} records: {:?}",
                resp.text()
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && accepted < 2000,
            "the buffer never filled ({accepted} records accepted)"
        );
    };
    assert!(accepted > 0, "the first requests fit in the buffer");
    let retry_after = full
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {:?}",
        full.headers()
    );
    // Still full: later requests get 503 too, never 429 or another 4xx.
    for _ in 0..3 {
        let resp = post(&url, record.clone(), &[]);
        assert_eq!(resp.status().as_u16(), 503);
        assert!(resp.headers().contains_key("retry-after"));
    }
    let full_count = r.metric(
        "firelane_input_errors_total",
        &["input=\"web\"", "kind=\"full\""],
    );
    assert!(
        full_count >= 4.0,
        "kind=\"full\" counted, got {full_count}: {}",
        r.metrics()
    );
    assert_eq!(
        r.metric("firelane_input_records_total", &["input=\"web\""]),
        accepted as f64
    );
    // Admin endpoints stay responsive while the input pushes back.
    let (s, _) = common::http_get(&format!("http://127.0.0.1:{}/health", r.admin)).expect("health");
    assert_eq!(s, 200);
    r.kill9();
    drop(silent);
}

/// Opens a connection and sends a request head (and `body`), leaving it to the caller.
fn raw_request(addr: &str, head: &str, body: &[u8]) -> std::net::TcpStream {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    s
}

/// Reads a response until the server closes (or the read timeout); returns the status
/// (0 when nothing arrived) and the whole text.
fn read_response(s: &mut std::net::TcpStream) -> (u16, String) {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn slow_bodies_do_not_hold_the_memory_budget() {
    // 16 requests announce 8 MiB and send one byte. Budget used to be reserved from
    // Content-Length, so they took the whole 64 MiB and every other client got 503.
    let port = free_port();
    let config = format!(
        r#"
[runtime]
memory_limit = "64MiB"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"
body_timeout = "6s"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
batch = {{ max_age = "100ms" }}
"#
    );
    let r = Router::start(&config);
    let addr = format!("127.0.0.1:{port}");
    let head = format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 8388608\r\n\r\n");
    let started = Instant::now();
    let mut slow: Vec<_> = (0..16).map(|_| raw_request(&addr, &head, b"{")).collect();
    // Let the router take every head before the good client starts.
    std::thread::sleep(Duration::from_millis(300));

    for i in 0..20 {
        let (s, b) = json_body(post(
            &format!("http://{addr}/"),
            format!("{{\"good\":{i}}}"),
            &[],
        ));
        assert_eq!(s, 200, "good request {i}: {b}");
    }
    // No slow request has timed out yet: the good ones went through while all 16 were open.
    // (Counted, not timed: a loaded CI machine may take seconds for the 20 requests.)
    assert_eq!(
        r.metric(
            "firelane_input_errors_total",
            &["input=\"web\"", "kind=\"body_timeout\""]
        ),
        0.0,
        "the slow requests were closed before the good ones went through"
    );
    let lines = wait_lines(&r.path("out.jsonl"), 20, Duration::from_secs(20));
    assert_eq!(lines.len(), 20, "{lines:#?}");

    // The stalled requests are answered 408 and closed after body_timeout, and counted.
    for (i, s) in slow.iter_mut().enumerate() {
        let (status, text) = read_response(s);
        assert_eq!(status, 408, "slow request {i}: {text:?}");
    }
    // Answered by body_timeout (6 s), not left to the client's 20 s read timeout.
    assert!(started.elapsed() < Duration::from_secs(19));
    let timeouts = r.wait_metric(
        "firelane_input_errors_total",
        &["input=\"web\"", "kind=\"body_timeout\""],
        16.0,
        Duration::from_secs(5),
    );
    assert_eq!(timeouts, 16.0, "{}", r.metrics());
    assert_eq!(
        r.metric("firelane_input_errors_total", &["kind=\"full\""]),
        0.0
    );
}

#[test]
fn health_stays_up_under_a_connection_flood_on_the_input() {
    let port = free_port();
    let config = format!(
        r#"
[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"
max_connections = 16
header_timeout = "1s"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
batch = {{ max_age = "100ms" }}
"#
    );
    let r = Router::start(&config);
    // A file-descriptor limit as tight as a container's can be: without a cap, 300 idle
    // connections on the input take every descriptor and the admin port stops accepting.
    let pid = r.child.as_ref().expect("running").id();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=128:128"])
        .status()
        .expect("run prlimit");
    assert!(limited.success(), "prlimit failed");

    let addr = format!("127.0.0.1:{port}");
    // Bounded: a router that stops accepting fills its backlog (128), and connects hang.
    let sock: std::net::SocketAddr = addr.parse().expect("addr");
    let opening = Instant::now();
    let flood: Vec<std::net::TcpStream> = (0..300)
        .take_while(|_| opening.elapsed() < Duration::from_secs(15))
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(300)).ok()
        })
        .collect();
    assert!(
        flood.len() > 150,
        "more connections than the cap and the file limit: {}",
        flood.len()
    );
    let health = format!("http://127.0.0.1:{}/health", r.admin);
    for _ in 0..5 {
        let (s, body) = common::http_get(&health).expect("/health answers under the flood");
        assert_eq!(s, 200, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = r.wait_metric(
        "firelane_input_errors_total",
        &["input=\"web\"", "kind=\"too_many_connections\""],
        1.0,
        Duration::from_secs(10),
    );
    assert!(refused >= 1.0, "{}", r.metrics());
    // The silent connections are closed after header_timeout; the input serves again.
    let timed_out = r.wait_metric(
        "firelane_input_errors_total",
        &["input=\"web\"", "kind=\"header_timeout\""],
        16.0,
        Duration::from_secs(10),
    );
    assert!(timed_out >= 16.0, "{}", r.metrics());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = client()
            .post(format!("http://{addr}/"))
            .body(r#"{"after":"flood"}"#)
            .send();
        match resp {
            Ok(resp) if resp.status().as_u16() == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "the input never served again: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(flood);
    let lines = wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(20));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let (s, _) = common::http_get(&health).expect("health");
    assert_eq!(s, 200);
}

#[test]
fn deflate_bodies_zlib_wrapped_and_raw() {
    // RFC 9110: "deflate" is zlib-wrapped; some clients send raw deflate. Both are taken,
    // and both are capped like gzip.
    let (r, base) = start("max_body = \"4KiB\"", "");
    let url = format!("{base}/tag/z");
    let zlib = |data: &[u8]| {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("zlib");
        e.finish().expect("zlib")
    };
    let raw = |data: &[u8]| {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("deflate");
        e.finish().expect("deflate")
    };
    for (what, body) in [
        ("zlib", zlib(b"{\"via\":\"zlib\"}\n{\"via\":\"zlib2\"}\n")),
        ("raw", raw(b"{\"via\":\"raw\"}")),
    ] {
        let (s, b) = json_body(post(&url, body, &[("content-encoding", "deflate")]));
        assert_eq!(s, 200, "{what}: {b}");
    }
    let bomb_json = format!("{{\"fill\":\"{}\"}}", " ".repeat(2 << 20));
    for (what, bomb) in [
        ("zlib bomb", zlib(bomb_json.as_bytes())),
        ("raw bomb", raw(bomb_json.as_bytes())),
    ] {
        assert!(bomb.len() < 4096, "{what} is {} bytes", bomb.len());
        let (s, b) = json_body(post(&url, bomb, &[("content-encoding", "deflate")]));
        assert_eq!(s, 413, "{what}: {b}");
    }
    let (s, b) = json_body(post(
        &url,
        b"\x78\x9cnot deflate".to_vec(),
        &[("content-encoding", "Deflate")],
    ));
    assert_eq!(s, 400, "corrupt deflate: {b}");

    let lines = wait_lines(&r.path("out.jsonl"), 3, Duration::from_secs(20));
    let mut via: Vec<&str> = lines.iter().filter_map(|l| l["via"].as_str()).collect();
    via.sort_unstable();
    assert_eq!(via, ["raw", "zlib", "zlib2"], "{lines:#?}");
    assert_eq!(
        r.metric(
            "firelane_input_errors_total",
            &["input=\"web\"", "kind=\"too_large\""]
        ),
        2.0
    );
    assert_eq!(
        r.metric(
            "firelane_input_errors_total",
            &["input=\"web\"", "kind=\"bad_encoding\""]
        ),
        0.0
    );
}

/// Issue #9 (hostile tester): 120 concurrent POSTs of ~900 KB under
/// `memory_limit = "32MiB"` reached 110 MiB RSS: a request parsed its body outside the
/// budget whenever its reservation (about 3x the body) was not available. Now every
/// request is read and parsed within the budget or answered 503 + Retry-After; the
/// clients retry, and every record acknowledged arrives.
#[test]
fn concurrent_large_posts_stay_within_the_memory_limit() {
    let port = free_port();
    let config = format!(
        r#"
[runtime]
memory_limit = "32MiB"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["out"]

[outputs.out]
type = "null"
"#
    );
    let r = Router::start(&config);
    let pid = r.child.as_ref().expect("router process").id();
    let url = format!("http://127.0.0.1:{port}/tag/big");
    // ~900 KB of NDJSON in small records (many small values: parsing costs a multiple of
    // the body).
    let per_request = 6_000u64;
    let body = |req: u64| -> String {
        (0..per_request)
            .map(|i| {
                format!(
                    "{{\"req\":{req},\"i\":{i},\"lvl\":\"info\",\"ok\":true,\"log\":\"{}\"}}\n",
                    common::noise(req * per_request + i, 90)
                )
            })
            .collect()
    };
    assert!((800_000..1_100_000).contains(&body(0).len()));
    let requests = 120u64;
    let deadline = Instant::now() + Duration::from_secs(240);
    let threads: Vec<_> = (0..requests)
        .map(|req| {
            let url = url.clone();
            let body = body(req);
            std::thread::spawn(move || {
                let client = client();
                let mut unavailable = 0u32;
                loop {
                    let resp = client.post(&url).body(body.clone()).send();
                    match resp.as_ref().map(|r| r.status().as_u16()) {
                        Ok(200) => return unavailable,
                        Ok(503) => {
                            let resp = resp.expect("checked");
                            assert!(resp.headers().contains_key("retry-after"));
                            unavailable += 1;
                        }
                        Ok(other) => panic!("request {req}: status {other}"),
                        // Answered before the body was read (503 to a request that
                        // could not be held), the connection closed under the writer.
                        Err(_) => unavailable += 1,
                    }
                    assert!(Instant::now() < deadline, "request {req} never accepted");
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    let refused: u32 = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    let peak = peak_rss(pid);
    let total = (requests * per_request) as f64;
    assert_eq!(
        r.metric("firelane_input_records_total", &["input=\"web\""]),
        total
    );
    let sent = r.wait_metric(
        "firelane_output_records_total",
        &["output=\"out\"", "result=\"sent\""],
        total,
        Duration::from_secs(60),
    );
    // At least once: a request answered 503 after its accept_timeout may have left a
    // prefix in the buffer, which its retry sends again.
    assert!(
        sent >= total,
        "every acknowledged record arrives: {sent} of {total}"
    );
    eprintln!(
        "peak RSS {} MiB, {refused} answers 503 (retried)",
        peak >> 20
    );
    // The idle debug binary takes about 25 MiB, hyper's read buffers (64 KiB per
    // connection, outside the budget) up to 8 MiB here, and the allocator's arenas vary
    // with how the threads are scheduled. Measured: 285 MiB before the fix, 81-86 MiB
    // after on an idle machine, 93-99 MiB on the same 2-core machine under a parallel
    // build (the same for the commit before the processors landed), so the bound is
    // limit + 80 MiB: it still catches an uncounted request copy. The tighter target
    // (limit + 24 MiB, release build) is measured by scripts/bench_vs_fluentbit.sh.
    assert!(
        peak < (32 + 80) << 20,
        "peak RSS {} MiB under memory_limit 32MiB",
        peak >> 20
    );
}

/// A request the memory budget can never hold is refused for good (413), never answered
/// 503 (a client would retry it forever): announced bodies larger than a request may hold
/// (3/4 of `memory_limit`) before they are read, and bodies whose parsed form would not
/// fit once read. Smaller requests still flow, and nothing of the refused ones is stored.
#[test]
fn requests_the_budget_can_never_hold_are_413() {
    let port = free_port();
    let config = format!(
        r#"
[runtime]
memory_limit = "4MiB"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
batch = {{ max_age = "100ms" }}
"#
    );
    let r = Router::start(&config);
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}/");

    // 3.5 MiB announced: over the 3 MiB a request may hold, refused before it is read.
    let head = format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3670016\r\n\r\n");
    let (s, text) = post_while_reading(&addr, &head, vec![vec![b' '; 3670016]]);
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("memory_limit"), "{text}");

    // 650 KB of small records: the body fits, its parsed form (about 40x) never can.
    let small: String = (0..10_000)
        .map(|i| {
            format!(
                "{{\"i\":{i},\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":[1,2,3,4,5,6,7,8,9]}}\n"
            )
        })
        .collect();
    assert!(
        (512 << 10..2 << 20).contains(&small.len()),
        "{} bytes",
        small.len()
    );
    let (s, b) = json_body(post(&url, small, &[]));
    assert_eq!(s, 413, "{b}");
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("memory")),
        "{b}"
    );

    // Requests that fit are taken.
    let ok: String = (0..100).map(|i| format!("{{\"ok\":{i}}}\n")).collect();
    let (s, b) = json_body(post(&url, ok, &[]));
    assert_eq!((s, b), (200, json!({"accepted": 100})));
    let lines = wait_lines(&r.path("out.jsonl"), 100, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(400));
    let lines = common::read_jsonl(&r.path("out.jsonl"))
        .len()
        .max(lines.len());
    assert_eq!(lines, 100, "nothing of the refused requests");
    assert_eq!(
        r.metric(
            "firelane_input_errors_total",
            &["input=\"web\"", "kind=\"too_large\""]
        ),
        2.0,
        "{}",
        r.metrics()
    );
    assert_eq!(
        r.metric("firelane_input_errors_total", &["kind=\"full\""]),
        0.0
    );
}

/// Issue #9: `Content-Encoding: deflate, identity` (and `gzip, identity`, `identity`)
/// answered 415. RFC 9110 §8.4: the header lists the codings in the order they were
/// applied, possibly over several header lines; every listed coding that is supported is
/// undone, last first. A list with an unknown coding is still 415, nothing ingested.
#[test]
fn content_encoding_lists_are_decoded_in_order() {
    let (r, base) = start("", "");
    let url = format!("{base}/tag/enc");
    let zlib = |data: &[u8]| {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("zlib");
        e.finish().expect("zlib")
    };
    let body = |via: &str| format!("{{\"via\":\"{via}\"}}").into_bytes();
    // (what, body, request headers)
    type Case = (&'static str, Vec<u8>, Vec<(&'static str, &'static str)>);
    let cases: Vec<Case> = vec![
        (
            "deflate, identity",
            zlib(&body("deflate, identity")),
            vec![("content-encoding", "deflate, identity")],
        ),
        (
            "gzip, identity",
            gzip(&body("gzip, identity")),
            vec![("content-encoding", "gzip, identity")],
        ),
        (
            "identity",
            body("identity"),
            vec![("content-encoding", "identity")],
        ),
        (
            "identity, GZIP",
            gzip(&body("identity, GZIP")),
            vec![("content-encoding", "identity, GZIP")],
        ),
        // gzip applied first, then deflate: inflated first, then gunzipped.
        (
            "gzip, deflate",
            zlib(&gzip(&body("gzip, deflate"))),
            vec![("content-encoding", "gzip, deflate")],
        ),
        (
            "two header lines",
            zlib(&gzip(&body("two header lines"))),
            vec![
                ("content-encoding", "gzip"),
                ("content-encoding", "deflate"),
            ],
        ),
        (
            "empty list elements",
            gzip(&body("empty list elements")),
            vec![("content-encoding", " , gzip ,")],
        ),
    ];
    for (what, payload, headers) in &cases {
        let mut req = client().post(&url).body(payload.clone());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (s, b) = json_body(req.send().expect("post"));
        assert_eq!((s, &b), (200, &json!({"accepted": 1})), "{what}");
    }
    for header in ["gzip, br", "identity, compress", "deflate, gzip2"] {
        let (s, b) = json_body(post(
            &url,
            gzip(&body("refused")),
            &[("content-encoding", header)],
        ));
        assert_eq!(s, 415, "{header}: {b}");
    }
    // Codings undone in the wrong order would not parse: a gzip body declared as
    // "deflate, gzip" (deflate first) is no deflate stream once gunzipped.
    let (s, b) = json_body(post(
        &url,
        gzip(&zlib(&body("wrong order"))),
        &[("content-encoding", "gzip, deflate")],
    ));
    assert_eq!(s, 400, "{b}");

    wait_lines(&r.path("out.jsonl"), cases.len(), Duration::from_secs(20));
    // Give a stray record from a refused request the same chance to land.
    std::thread::sleep(Duration::from_millis(300));
    let lines = common::read_jsonl(&r.path("out.jsonl"));
    let mut via: Vec<&str> = lines.iter().filter_map(|l| l["via"].as_str()).collect();
    via.sort_unstable();
    let mut want: Vec<&str> = cases.iter().map(|(w, _, _)| *w).collect();
    want.sort_unstable();
    assert_eq!(via, want, "{lines:#?}");
    assert_eq!(
        r.metric(
            "firelane_input_errors_total",
            &["input=\"web\"", "kind=\"bad_encoding\""]
        ),
        3.0
    );
}
