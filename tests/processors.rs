//! Processors end to end: the real `firelane` binary, records sent over the forward
//! protocol as Docker's fluentd log driver sends them (Message mode, string fields), landing
//! in a `file` output; `firelane check` and `firelane route` showing the processors.
//!
//! Run with `cargo test --locked --test processors`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Router, free_port, read_jsonl, wait_lines};
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, Entry, EventTime, ForwardClient};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_firelane");

/// A forward input with `processors`, every record to `{dir}/out.jsonl` (tag and time added).
fn config(port: u16, processors: &[&str], tables: &str) -> String {
    let list = processors
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{port}"]
processors = [{list}]

{tables}

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "_tag"
time_key = "_time"
batch = {{ max_records = 500, max_age = "50ms" }}
"#
    )
}

fn connect(port: u16) -> ForwardClient {
    ForwardClient::connect(&ListenAddr::Tcp(format!("127.0.0.1:{port}")), TIMEOUT)
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// One Docker-style record (every value a string) in Message mode.
fn message(
    b: &mut Vec<u8>,
    tag: &str,
    time: EventTime,
    fields: &[(&str, &str)],
    chunk: Option<&str>,
) {
    let mut rec = Vec::new();
    client::encode_record(&mut rec, fields);
    client::encode_message(b, tag, time, &rec, chunk);
}

/// One Docker log line of container `container` in Message mode: Docker's four fields, then
/// `extra`.
fn docker_record(
    b: &mut Vec<u8>,
    container: &str,
    time: EventTime,
    log: &str,
    extra: &[(&str, &str)],
) {
    let mut fields = vec![
        ("container_id", container),
        ("container_name", "/ecs-app"),
        ("source", "stdout"),
        ("log", log),
    ];
    fields.extend_from_slice(extra);
    message(b, "app-firelens-t1", time, &fields, None);
}

fn docker_line(b: &mut Vec<u8>, container: &str, time: EventTime, log: &str) {
    docker_record(b, container, time, log, &[]);
}

fn docker_piece(
    b: &mut Vec<u8>,
    container: &str,
    time: EventTime,
    id: &str,
    n: usize,
    last: bool,
    log: &str,
) {
    let ordinal = n.to_string();
    docker_record(
        b,
        container,
        time,
        log,
        &[
            ("partial_message", "true"),
            ("partial_id", id),
            ("partial_ordinal", &ordinal),
            ("partial_last", if last { "true" } else { "false" }),
        ],
    );
}

fn at(secs: u32) -> EventTime {
    EventTime { secs, nanos: 5 }
}

fn rfc3339(secs: u32, nanos: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(secs), nanos)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn log_of(v: &Value) -> &str {
    v["log"].as_str().unwrap_or("")
}

/// Text of `n` bytes that differs at every position mod 7919, so a piece out of place shows.
fn text(n: usize, seed: u8) -> String {
    (0..n)
        .map(|i| (b'a' + ((i % 7919 + seed as usize) % 26) as u8) as char)
        .collect()
}

/// Runs the binary with `args`, asserts it succeeded; its stdout.
fn firelane(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).output().expect("run firelane");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `firelane check` lists each input's processors and what they do; `firelane route` shows
/// the record after them and routes that.
#[test]
fn check_and_route_show_the_processors() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("c.toml");
    let text = r#"
[inputs.fwd]
type = "forward"
processors = ["json", "retag", "shape"]

[processors.json]
type = "parse_json"

[processors.retag]
type = "rewrite_tag"
match = { pattern = { level = ["error"] } }
tag = "errors.{tag[0]}"

[processors.shape]
type = "fields"
add = { origin = "{tag}" }
remove = ["secret"]

[routes.errors]
tag = "errors.*"
to = ["err"]
final = true

[routes.rest]
to = ["out"]

[outputs.err]
type = "stdout"

[outputs.out]
type = "null"
"#;
    std::fs::write(&path, text).expect("write");
    let p = path.display().to_string();
    let out = firelane(&["check", "-c", &p]);
    assert!(out.contains("→ processors json → retag → shape"), "{out}");
    assert!(
        out.contains("json (parse_json): log as JSON into the top level"),
        "{out}"
    );
    assert!(
        out.contains(
            "retag (rewrite_tag): when pattern {\"level\":[\"error\"]}: tag → \"errors.{tag[0]}\""
        ),
        "{out}"
    );
    assert!(
        out.contains("shape (fields): add origin; remove secret"),
        "{out}"
    );

    let event = r#"{"log": "{\"level\":\"error\",\"secret\":\"x\",\"msg\":\"boom\"}"}"#;
    let out = firelane(&["route", "-c", &p, "--tag", "web.1", "--event", event]);
    assert!(
        out.contains(r#"from input fwd: after processors json → retag → shape: tag "errors.web" {"level":"error","msg":"boom","origin":"errors.web"}"#),
        "{out}"
    );
    assert!(
        out.contains("from input fwd: routes errors → outputs err"),
        "{out}"
    );
    let out = firelane(&[
        "route",
        "-c",
        &p,
        "--tag",
        "web.1",
        "--event",
        r#"{"log": "plain"}"#,
    ]);
    assert!(out.contains("routes rest → outputs out"), "{out}");
}

/// Docker's split lines: a 100 KiB line in 16 KiB pieces interleaved with two other
/// containers' lines arrives whole with the first piece's time; pieces out of order are put
/// back; an unfinished line is flushed after `timeout`; a 5 MiB line hits `max_size`.
#[test]
fn docker_partial_lines() {
    let port = free_port();
    let r = Router::start(&config(
        port,
        &["fields", "partials"],
        r#"
[processors.fields]
type = "fields"
add = { seen = "yes" }

[processors.partials]
type = "partial"
timeout = "1s"
"#,
    ));
    let mut c = connect(port);
    let big = text(100 * 1024, 0);
    let pieces: Vec<&str> = big
        .as_bytes()
        .chunks(16 * 1024)
        .map(|p| std::str::from_utf8(p).expect("ascii"))
        .collect();
    assert_eq!(pieces.len(), 7);
    let mut b = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        // The first piece's time; Docker reuses it, a different one shows which is kept.
        docker_piece(
            &mut b,
            "c1",
            at(1_700_000_000 + i as u32),
            "id1",
            i + 1,
            i + 1 == pieces.len(),
            p,
        );
        docker_line(&mut b, "c2", at(1_700_000_100), &format!("c2 line {i}"));
        docker_line(&mut b, "c3", at(1_700_000_100), &format!("c3 line {i}"));
    }
    // Out of order: 2, 3, 1 (last = 3).
    let small = text(3000, 3);
    let parts = [&small[..1000], &small[1000..2000], &small[2000..]];
    for n in [2usize, 3, 1] {
        docker_piece(
            &mut b,
            "c2",
            at(1_700_000_200),
            "id2",
            n,
            n == 3,
            parts[n - 1],
        );
    }
    // Unfinished: no last piece ever comes.
    docker_piece(&mut b, "c3", at(1_700_000_300), "id3", 1, false, "never ");
    docker_piece(&mut b, "c3", at(1_700_000_300), "id3", 2, false, "finished");
    c.send(&b).expect("send");

    let lines = wait_lines(&r.path("out.jsonl"), 1 + 14 + 1 + 1, TIMEOUT);
    let whole: Vec<&Value> = lines
        .iter()
        .filter(|l| log_of(l).len() == big.len())
        .collect();
    assert_eq!(whole.len(), 1);
    assert_eq!(log_of(whole[0]), big);
    assert_eq!(whole[0]["_time"], rfc3339(1_700_000_000, 5));
    assert_eq!(
        whole[0]["seen"], "yes",
        "a processor before partial saw every piece"
    );
    for k in [
        "partial_message",
        "partial_id",
        "partial_ordinal",
        "partial_last",
        "partial_flush",
    ] {
        assert!(whole[0].get(k).is_none(), "{k} in {}", whole[0]);
    }
    for c in ["c2", "c3"] {
        let theirs: Vec<&str> = lines
            .iter()
            .filter(|l| l["container_id"] == c && log_of(l).starts_with(c))
            .map(log_of)
            .collect();
        let want: Vec<String> = (0..7).map(|i| format!("{c} line {i}")).collect();
        assert_eq!(theirs, want, "{c}'s lines, in order");
    }
    let reordered: Vec<&Value> = lines.iter().filter(|l| log_of(l) == small).collect();
    assert_eq!(
        reordered.len(),
        1,
        "pieces out of order joined in ordinal order"
    );
    let unfinished: Vec<&Value> = lines
        .iter()
        .filter(|l| log_of(l) == "never finished")
        .collect();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0]["partial_flush"], "timeout");

    // A 5 MiB line: emitted in max_size (1 MiB) parts, each marked, nothing lost.
    let huge = text(5 * 1024 * 1024, 7);
    let mut b = Vec::new();
    let pieces: Vec<&[u8]> = huge.as_bytes().chunks(16 * 1024).collect();
    for (i, p) in pieces.iter().enumerate() {
        let p = std::str::from_utf8(p).expect("ascii");
        docker_piece(
            &mut b,
            "c4",
            at(1_700_000_400),
            "id4",
            i + 1,
            i + 1 == pieces.len(),
            p,
        );
        if b.len() > 4 << 20 {
            c.send(&b).expect("send");
            b.clear();
        }
    }
    c.send(&b).expect("send");
    let before = lines.len();
    let lines = wait_lines(&r.path("out.jsonl"), before + 5, TIMEOUT);
    let parts: Vec<&Value> = lines[before..]
        .iter()
        .filter(|l| l["container_id"] == "c4")
        .collect();
    assert_eq!(parts.len(), 5, "5 MiB in 1 MiB parts");
    assert!(
        parts.iter().all(|p| p["partial_flush"] == "max_size"),
        "marked"
    );
    let joined: String = parts.iter().map(|p| log_of(p)).collect();
    assert!(joined == huge, "the parts, in order, are the line");
    assert!(
        r.metric(
            "firelane_processor_records_total",
            &["processor=\"partials\"", "result=\"max_size\""]
        ) >= 5.0
    );
    assert_eq!(
        r.metric(
            "firelane_processor_records_total",
            &["processor=\"partials\"", "result=\"timeout\""]
        ),
        1.0
    );
    let metrics = r.metrics();
    assert!(
        metrics.contains("# HELP firelane_processor_records_total "),
        "{metrics}"
    );
}

const JAVA: &str = "ERROR request failed
java.lang.IllegalStateException: boom
\tat com.example.Foo.bar(Foo.java:10)
Caused by: java.io.IOException: disk
\tat com.example.Io.read(Io.java:3)
\t... 2 more";

const PYTHON: &str = "ERROR:root:failed
Traceback (most recent call last):
  File \"/app/main.py\", line 3, in <module>
    main()
KeyError: 'k'";

const GO: &str = "panic: runtime error: index out of range [3] with length 3

goroutine 1 [running]:
main.main()
\t/app/main.go:20 +0x1d
exit status 2";

/// Java, Python and Go traces from two interleaved containers each, joined per stream; the
/// last trace of each stream is still open when SIGTERM comes, and is delivered.
#[test]
fn multiline_traces_from_interleaved_streams_and_cut_by_sigterm() {
    let ports = [free_port(), free_port(), free_port()];
    let modes = ["java", "python", "go"];
    let mut text = String::new();
    for (i, mode) in modes.iter().enumerate() {
        text.push_str(&format!(
            "[inputs.{mode}]\ntype = \"forward\"\nlisten = [\"tcp://127.0.0.1:{}\"]\nprocessors = [\"{mode}\"]\n[processors.{mode}]\ntype = \"multiline\"\nmode = \"{mode}\"\nflush_timeout = \"1h\"\n",
            ports[i]
        ));
    }
    text.push_str(
        "[routes.all]\nto = [\"out\"]\n[outputs.out]\ntype = \"file\"\npath = \"{dir}/out.jsonl\"\ntag_key = \"_tag\"\nbatch = { max_records = 500, max_age = \"50ms\" }\n",
    );
    let mut r = Router::start(&text);
    for (i, trace) in [JAVA, PYTHON, GO].iter().enumerate() {
        let mut c = connect(ports[i]);
        let lines: Vec<&str> = trace.lines().collect();
        let mut b = Vec::new();
        // Twice per container, interleaved line by line; the second trace is cut (open).
        for round in 0..2 {
            for l in &lines {
                for container in ["a", "b"] {
                    message(
                        &mut b,
                        modes[i],
                        at(1_700_000_000 + round),
                        &[
                            ("container_id", container),
                            ("source", "stderr"),
                            ("log", l),
                        ],
                        None,
                    );
                }
            }
        }
        c.send(&b).expect("send");
    }
    // The first trace of each stream is emitted when the second begins.
    let got = wait_lines(&r.path("out.jsonl"), 6, TIMEOUT);
    assert_eq!(
        got.len(),
        6,
        "only the first traces: the second ones are open"
    );
    let status = r.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
    let got = read_jsonl(&r.path("out.jsonl"));
    for (mode, trace) in modes.iter().zip([JAVA, PYTHON, GO]) {
        for container in ["a", "b"] {
            let theirs: Vec<&str> = got
                .iter()
                .filter(|l| l["_tag"] == *mode && l["container_id"] == container)
                .map(log_of)
                .collect();
            assert_eq!(theirs, [trace, trace], "{mode} {container}");
        }
    }
    assert!(
        r.logs()
            .contains("processors flushed held records at shutdown"),
        "{}",
        r.logs()
    );
}

/// Waits up to `dur` for the ack of `chunk`; `false` when none came.
fn ack_within(c: &mut ForwardClient, chunk: &str, dur: Duration) -> bool {
    let deadline = Instant::now() + dur;
    loop {
        match c.read_ack(chunk) {
            Ok(()) => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return false;
                }
            }
            Err(e) => panic!("reading the ack of {chunk}: {e}"),
        }
    }
}

/// With `chunk` acks and a multiline processor holding a line, the ack is sent only after
/// the merged record is buffered, and the connection keeps being read meanwhile.
#[test]
fn chunk_acks_wait_for_the_merged_record() {
    let port = free_port();
    let r = Router::start(&config(
        port,
        &["trace"],
        r#"
[processors.trace]
type = "multiline"
mode = "regex"
start = '^S'
continue = '^ '
flush_timeout = "1h"
"#,
    ));
    let mut c = ForwardClient::connect(
        &ListenAddr::Tcp(format!("127.0.0.1:{port}")),
        Duration::from_millis(200),
    )
    .expect("connect");
    let send = |c: &mut ForwardClient, log: &str, chunk: &str| {
        let mut b = Vec::new();
        message(
            &mut b,
            "app",
            at(1_700_000_000),
            &[("container_id", "c"), ("log", log)],
            Some(chunk),
        );
        c.send(&b).expect("send");
    };
    send(&mut c, "S start", "c1");
    assert!(
        !ack_within(&mut c, "c1", Duration::from_millis(800)),
        "held: no ack yet"
    );
    // The connection is still read: the next requests are taken.
    send(&mut c, " more", "c2");
    assert!(
        !ack_within(&mut c, "c1", Duration::from_millis(500)),
        "still held"
    );
    let received = |r: &Router| {
        r.metric(
            "firelane_output_received_records_total",
            &["output=\"out\""],
        )
    };
    assert_eq!(received(&r), 0.0, "nothing buffered yet");
    send(&mut c, "plain", "c3");
    for chunk in ["c1", "c2", "c3"] {
        assert!(ack_within(&mut c, chunk, TIMEOUT), "ack {chunk}");
        // Acked only once buffered: both records are in the output's buffer already.
        assert_eq!(received(&r), 2.0, "after the ack of {chunk}");
    }
    let lines = wait_lines(&r.path("out.jsonl"), 2, TIMEOUT);
    let logs: Vec<&str> = lines.iter().map(log_of).collect();
    assert_eq!(logs, ["S start\n more", "plain"]);
}

/// A 1,000,000-record burst from four connections: every matching record goes on under the
/// new tag, every other one under its own (Fluent Bit's emitter would keep ~60% of matches
/// under the old tag).
#[test]
fn rewrite_tag_burst_misroutes_nothing() {
    let port = free_port();
    let r = Router::start(&format!(
        r#"
[inputs.fwd]
type = "forward"
listen = ["tcp://127.0.0.1:{port}"]
processors = ["retag"]

[processors.retag]
type = "rewrite_tag"
match = {{ key = "log", regex = "^ERROR" }}
tag = "errors.{{tag}}"

[routes.errors]
tag = "errors.app"
to = ["n1"]
final = true

[routes.app]
tag = "app"
to = ["n2"]
final = true

[routes.other]
to = ["n2"]

[outputs.n1]
type = "null"

[outputs.n2]
type = "null"
"#
    ));
    const PER_CONN: usize = 250_000;
    const BATCH: usize = 1000;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = connect(port);
                let recs: Vec<Vec<u8>> = (0..BATCH)
                    .map(|i| {
                        let mut rec = Vec::new();
                        let log = if i % 2 == 0 {
                            format!("ERROR {t} {i}")
                        } else {
                            format!("INFO {t} {i}")
                        };
                        client::encode_record(&mut rec, &[("log", &log)]);
                        rec
                    })
                    .collect();
                let entries: Vec<Entry<'_>> = recs
                    .iter()
                    .map(|r| Entry {
                        time: EventTime::now(),
                        record: r,
                    })
                    .collect();
                let mut b = Vec::new();
                client::encode_forward(&mut b, "app", &entries, None);
                for _ in 0..PER_CONN / BATCH {
                    c.send(&b).expect("send");
                }
                c.finish().ok();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender");
    }
    let total = 4.0 * PER_CONN as f64;
    let route = |name: &str| {
        r.metric(
            "firelane_route_records_total",
            &[&format!("route=\"{name}\"")],
        )
    };
    r.wait_metric(
        "firelane_route_records_total",
        &[],
        total,
        Duration::from_secs(300),
    );
    assert_eq!(route("errors"), total / 2.0);
    assert_eq!(route("app"), total / 2.0);
    assert_eq!(route("other"), 0.0);
    assert_eq!(
        r.metric(
            "firelane_processor_records_total",
            &["processor=\"retag\"", "result=\"rewritten\""]
        ),
        total / 2.0
    );
}

/// A line Docker split into pieces is memory while the processor waits for its last
/// piece: `firelane_processor_held_bytes{input}` shows it while it is held, and it goes
/// when the line leaves (by timeout here).
#[test]
fn held_pieces_are_reported_in_a_gauge() {
    let port = free_port();
    let r = Router::start(&config(
        port,
        &["partials"],
        "[processors.partials]\ntype = \"partial\"\ntimeout = \"10s\"\nmax_size = \"16MiB\"\n",
    ));
    let held = || r.metric("firelane_processor_held_bytes", &["input=\"fwd\""]);
    assert_eq!(held(), 0.0);
    let mut c = connect(port);
    let big = text(4 << 20, 1);
    let mut b = Vec::new();
    for (i, p) in big.as_bytes().chunks(16 * 1024).enumerate() {
        let p = std::str::from_utf8(p).expect("ascii");
        docker_piece(&mut b, "c1", at(1_700_000_000), "id1", i + 1, false, p);
    }
    c.send(&b).expect("send");
    // 256 pieces of 16 KiB (4 MiB of text) are held: each is counted with its record.
    let deadline = Instant::now() + Duration::from_secs(8);
    while held() < 8e6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_most = 2.0 * big.len() as f64 + 256.0 * 2048.0;
    assert!(
        (8e6..at_most).contains(&held()),
        "4 MiB of pieces held, reported {}",
        held()
    );
    // The timeout emits the unfinished line: nothing is held.
    let lines = wait_lines(&r.path("out.jsonl"), 1, TIMEOUT);
    assert_eq!(log_of(&lines[0]).len(), big.len());
    assert_eq!(held(), 0.0);
}
