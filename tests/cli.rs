//! The command line end to end: `check`, `route`, `test-pattern`, `healthcheck`, `run` on
//! the embedded default and with `$FIRELANE_CONFIG`, config errors, and shutdown on SIGTERM.

mod common;

use std::io::{BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Router, free_port, http_get, read_jsonl};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_firelane");

fn firelane(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("FIRELANE_CONFIG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run firelane")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn assert_no_panic(o: &Output) {
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(!all.contains("panicked"), "firelane panicked:\n{all}");
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write file");
    p.display().to_string()
}

const PLAN_CONFIG: &str = r#"[admin]
listen = "127.0.0.1:2999"

[inputs.events]
type = "http"
listen = "127.0.0.1:18080"
auth = { type = "bearer", token = "t" }

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:24299"]

[routes.fails]
from = ["events"]
pattern = '{"source":["aws.ecs"],"detail":{"containers":{"exitCode":["1"]}}}'
to = ["archive", "alerts"]
final = true

[routes.access]
from = ["app"]
tag = ["*-firelens-*"]
pattern = { log = [{ prefix = "GET " }] }
to = "archive"

[outputs.archive]
type = "file"
path = "/tmp/firelane-cli-test/archive.jsonl"

[outputs.alerts]
type = "null"

[outputs.orphan]
type = "stdout"
"#;

#[test]
fn check_prints_the_plan_and_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "plan.toml", PLAN_CONFIG);
    let o = firelane(&["check", "-c", &path], &[]);
    assert_no_panic(&o);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}\n{}", text(&o.stderr));
    assert!(out.contains("config is valid"), "{out}");
    // inputs → routes → outputs, in that order.
    let pos = |s: &str| {
        out.find(s)
            .unwrap_or_else(|| panic!("missing {s:?} in:\n{out}"))
    };
    let (i, r, op) = (pos("inputs:"), pos("routes"), pos("outputs:"));
    assert!(i < r && r < op, "{out}");
    pos("events (http): 127.0.0.1:18080 (bearer auth)");
    pos("app (forward): tcp://127.0.0.1:24299");
    pos("fails: from events, pattern {\"source\":[\"aws.ecs\"]");
    pos("→ archive, alerts (final)");
    pos("access: from app, tag *-firelens-* and pattern");
    pos("archive (file): /tmp/firelane-cli-test/archive.jsonl");
    pos("orphan (stdout)");
    // Warnings, located: a string compared to a number ECS sends, an output nobody feeds,
    // records no route takes.
    let warn_lines: Vec<&str> = out.lines().filter(|l| l.ends_with("(warning)")).collect();
    let has = |prefix: &str, needle: &str| {
        warn_lines
            .iter()
            .any(|l| l.starts_with(&format!("{path}:{prefix}")) && l.contains(needle))
    };
    assert!(has("15:11: ", "exitCode"), "{warn_lines:#?}");
    assert!(
        has("32:10: ", "\"orphan\" receives nothing"),
        "{warn_lines:#?}"
    );
    assert!(
        warn_lines
            .iter()
            .any(|l| l.contains("firelane_unrouted_records_total")),
        "{warn_lines:#?}"
    );
    assert_eq!(warn_lines.len(), 3, "{warn_lines:#?}");
}

/// `${NAME}` (no default) and `${NAME:-default}` variables of a config's TOML lines (comment
/// lines are documentation, not config).
fn config_variables(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut required, mut optional) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            let inner = &rest[i + 2..];
            let Some(end) = inner.find('}') else { break };
            let var = &inner[..end];
            match var.split_once(":-") {
                Some((name, _)) => optional.push(name.to_string()),
                None => required.push(var.to_string()),
            }
            rest = &inner[end..];
        }
    }
    (required, optional)
}

/// A value for a required variable: a URL for `*_URL` ones (a Slack webhook must be one).
fn placeholder(var: &str) -> &'static str {
    if var.ends_with("_URL") {
        "https://hooks.example.com/placeholder-value"
    } else {
        "placeholder-value"
    }
}

/// Every file in config/ passes `check` as shipped, given only the variables it documents
/// as required (in its header comment and in the README); the optional ones are unset so
/// their defaults are checked too. Without a required variable `check` fails naming it.
#[test]
fn check_accepts_every_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("config")).expect("config dir") {
        let p = entry.expect("entry").path();
        if p.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        n += 1;
        let body = std::fs::read_to_string(&p).expect("read config");
        let header: String = body
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let (required, optional) = config_variables(&body);
        for var in &required {
            assert!(
                header.contains(var.as_str()),
                "{}: ${{{var}}} is required but the header comment does not name it:\n{header}",
                p.display()
            );
            assert!(
                readme.contains(&format!("`{var}`")),
                "{}: ${{{var}}} is required but README.md does not name it",
                p.display()
            );
        }
        let path = p.display().to_string();
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "-c", &path])
            .env_remove("FIRELANE_CONFIG")
            .stdin(Stdio::null());
        for var in &optional {
            cmd.env_remove(var);
        }
        for var in &required {
            cmd.env(var, placeholder(var));
        }
        let o = cmd.output().expect("run firelane");
        assert_no_panic(&o);
        assert_eq!(
            code(&o),
            0,
            "{path} with {required:?} set:\n{}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        for var in &required {
            let mut cmd = Command::new(BIN);
            cmd.args(["check", "-c", &path])
                .env_remove("FIRELANE_CONFIG")
                .env_remove(var)
                .stdin(Stdio::null());
            for other in required.iter().filter(|o| *o != var) {
                cmd.env(other, placeholder(other));
            }
            let o = cmd.output().expect("run firelane");
            assert_eq!(code(&o), 1, "{path} without {var}");
            assert!(
                text(&o.stderr).contains(&format!("environment variable {var} is not set")),
                "{path} without {var}:\n{}",
                text(&o.stderr)
            );
        }
    }
    assert!(n >= 7, "found {n} configs");
}

/// An empty config, or one without inputs or without outputs, is a mistake: `check` exits 1
/// and `run` exits 78 (EX_CONFIG), each with a line that says what is missing.
#[test]
fn empty_config_or_no_inputs_or_outputs_is_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("empty.toml", "", &["no inputs", "no outputs"][..]),
        (
            "comments.toml",
            "# only a comment\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            &["no inputs", "no outputs"][..],
        ),
        (
            "no-inputs.toml",
            "[inputs]\n[routes.all]\nto = [\"out\"]\n[outputs.out]\ntype = \"null\"\n",
            &["no inputs"][..],
        ),
        (
            "no-outputs.toml",
            "[inputs.h]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n",
            &["no outputs"][..],
        ),
    ];
    for (name, body, want) in cases {
        let path = write(dir.path(), name, body);
        let o = firelane(&["check", "-c", &path], &[]);
        assert_no_panic(&o);
        let err = text(&o.stderr);
        assert_eq!(code(&o), 1, "check {name}:\n{}{err}", text(&o.stdout));
        for w in want {
            assert!(
                err.contains(&format!("{w} are configured")),
                "check {name}: missing {w:?}:\n{err}"
            );
        }
        assert!(!text(&o.stdout).contains("config is valid"), "{name}");
        let o = firelane(&["run", "-c", &path], &[]);
        assert_no_panic(&o);
        assert_eq!(code(&o), 78, "run {name}:\n{}", text(&o.stderr));
    }
}

/// A reader that stops early (`firelane check | head -2`) does not make any printing
/// command panic; the command exits with its usual code.
#[test]
fn closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "plan.toml", PLAN_CONFIG);
    let event = r#"{"source":"aws.ecs","detail":{"containers":{"exitCode":"1"}}}"#;
    let runs: [(&[&str], i32); 4] = [
        (&["check", "-c", &path], 0),
        (&["route", "-c", &path, "--event", event], 0),
        (
            &[
                "test-pattern",
                "--pattern",
                r#"{"a":[1]}"#,
                "--event",
                r#"{"a":1}"#,
            ],
            0,
        ),
        (&["--help"], 0),
    ];
    for (args, want) in runs {
        // A pipe whose read end is closed before the command starts: every write to its
        // stdout fails with EPIPE, deterministically.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = Command::new(BIN)
            .args(args)
            .env_remove("FIRELANE_CONFIG")
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run firelane");
        let err = text(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
        assert!(err.is_empty(), "{args:?} wrote to stderr:\n{err}");
        assert_eq!(code(&o), want, "{args:?}:\n{err}");
    }
}

#[test]
fn config_errors_are_all_reported_with_locations() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Line numbers matter: each error below is asserted at its line and column.
    let bad = r#"[admin]
listen = "127.0.0.1:2020"
bogus = 1

[runtime]
shutdown_grace = "25 parsecs"
memory_limit = "12XB"

[inputs.web]
type = "http"
listen = "127.0.0.1:8080"
max_body = true
auth = { type = "api_key", header = "x-api-key", value = "${FIRELANE_TEST_SURELY_UNSET}" }

[inputs.hook]
type = "http"
listen = "127.0.0.1:8081"
auth = { type = "bearer", token = "${FIRELANE_TEST_SURELY_UNSET:-}" }

[routes.r1]
to = ["missing_out"]
pattern = { "detail-type" = ["x"] }

[outputs.f]
type = "file"
path = 42
batch = { max_age = "soon", max_bytes = "lots" }
colour = "blue"
"#;
    let path = write(dir.path(), "bad.toml", bad);
    let expected = [
        ("3:1", "admin: unknown key `bogus`"),
        ("6:18", "runtime.shutdown_grace:"),
        ("7:16", "runtime.memory_limit:"),
        ("12:12", "inputs.web.max_body: expected a size"),
        ("13:58", "FIRELANE_TEST_SURELY_UNSET is not set"),
        ("18:8", "inputs.hook.auth: the secret is empty"),
        ("21:7", "unknown output \"missing_out\""),
        (
            "26:8",
            "outputs.f.path: expected a string, found an integer",
        ),
        (
            "27:21",
            "outputs.f.batch.max_age: invalid duration \"soon\"",
        ),
        ("27:41", "outputs.f.batch.max_bytes: invalid size \"lots\""),
        ("28:1", "outputs.f: unknown key `colour`"),
    ];
    for args in [vec!["check", "-c", &path], vec!["run", "-c", &path]] {
        let o = firelane(&args, &[]);
        assert_no_panic(&o);
        let err = text(&o.stderr);
        let want_code = if args[0] == "check" { 1 } else { 78 };
        assert_eq!(code(&o), want_code, "{args:?}:\n{err}");
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with(&format!("{path}:")) && !l.ends_with("(warning)"))
            .collect();
        for (at, msg) in expected {
            let prefix = format!("{path}:{at}: ");
            assert!(
                errors
                    .iter()
                    .any(|l| l.starts_with(&prefix) && l.contains(msg)),
                "{args:?}: no error `{prefix}…{msg}…` in:\n{err}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{args:?}:\n{err}");
        assert!(
            err.contains(&format!("{} error(s)", expected.len())),
            "{err}"
        );
    }

    // Broken TOML syntax: one located error, exit 1, no panic.
    let path = write(
        dir.path(),
        "syntax.toml",
        "[admin]\nlisten = \"x\"\n[inputs.a\ntype = 1\n",
    );
    let o = firelane(&["check", "-c", &path], &[]);
    assert_no_panic(&o);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stderr).starts_with(&format!("{path}:3:")),
        "{}",
        text(&o.stderr)
    );

    // Not UTF-8, missing file, a directory: a message, exit 1, no panic.
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"[admin]\nlisten = \"caf\xe9\"\n").expect("write");
    for p in [
        path.display().to_string(),
        "/nonexistent/firelane.toml".into(),
        dir.path().display().to_string(),
    ] {
        let o = firelane(&["check", "-c", &p], &[]);
        assert_no_panic(&o);
        assert_eq!(code(&o), 1, "{p}");
        assert!(text(&o.stderr).contains(&p), "{p}: {}", text(&o.stderr));
    }
}

#[test]
fn environment_interpolation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = r#"[admin]
listen = "${FL_T_ADMIN:-127.0.0.1:2998}"

[inputs.web]
type = "http"
listen = "${FL_T_LISTEN}"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "${FL_T_DIR:-/tmp/fl-default}/${FL_T_NAME}-$${literal}.jsonl"
"#;
    let path = write(dir.path(), "env.toml", cfg);
    let o = firelane(
        &["check", "-c", &path],
        &[("FL_T_LISTEN", "127.0.0.1:18181"), ("FL_T_NAME", "records")],
    );
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("web (http): 127.0.0.1:18181"), "{out}");
    assert!(
        out.contains("out (file): /tmp/fl-default/records-${literal}.jsonl"),
        "{out}"
    );

    // Set variables win over defaults; an empty one takes the default.
    let o = firelane(
        &["check", "-c", &path],
        &[
            ("FL_T_LISTEN", "127.0.0.1:18182"),
            ("FL_T_NAME", "r"),
            ("FL_T_DIR", "/srv/x"),
        ],
    );
    assert!(
        text(&o.stdout).contains("out (file): /srv/x/r-${literal}.jsonl"),
        "{}",
        text(&o.stdout)
    );
    let o = firelane(
        &["check", "-c", &path],
        &[
            ("FL_T_LISTEN", "127.0.0.1:18182"),
            ("FL_T_NAME", "r"),
            ("FL_T_DIR", ""),
        ],
    );
    assert!(
        text(&o.stdout).contains("out (file): /tmp/fl-default/r-${literal}.jsonl"),
        "{}",
        text(&o.stdout)
    );

    // Unset without default: both are reported, at their values.
    let o = firelane(&["check", "-c", &path], &[]);
    assert_eq!(code(&o), 1);
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{path}:6:10: inputs.web.listen: environment variable FL_T_LISTEN is not set"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:13:8: outputs.out.path: environment variable FL_T_NAME is not set"
        )),
        "{err}"
    );

    // A malformed reference is an error, not a literal.
    let path2 = write(
        dir.path(),
        "env2.toml",
        "[admin]\nlisten = \"${FL_T_ADMIN\"\n",
    );
    let o = firelane(&["check", "-c", &path2], &[]);
    assert_no_panic(&o);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stderr).contains(&format!("{path2}:2:10: admin.listen: unterminated")),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn test_pattern_exit_codes_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pattern =
        r#"{"source":["aws.ecs"],"detail":{"containers":{"exitCode":[{"anything-but":0}]}}}"#;
    let failed =
        r#"{"source":"aws.ecs","detail":{"containers":[{"exitCode":0},{"exitCode":137}]}}"#;
    let clean = r#"{"source":"aws.ecs","detail":{"containers":[{"exitCode":0}]}}"#;
    let tp = |p: &str, e: &str| firelane(&["test-pattern", "--pattern", p, "--event", e], &[]);

    let o = tp(pattern, failed);
    assert_eq!(
        (code(&o), text(&o.stdout).trim().to_string()),
        (0, "match".into())
    );
    let o = tp(pattern, clean);
    assert_eq!(
        (code(&o), text(&o.stdout).trim().to_string()),
        (1, "no match".into())
    );
    let o = tp(r#"{"source":"aws.ecs"}"#, clean);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stdout).starts_with("invalid: "),
        "{}",
        text(&o.stdout)
    );
    let o = tp("{not json", clean);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stdout).starts_with("invalid: "));

    // @file forms, for either or both.
    let pf = write(dir.path(), "p.json", pattern);
    let ef = write(dir.path(), "e.json", failed);
    let o = tp(&format!("@{pf}"), &format!("@{ef}"));
    assert_eq!(
        (code(&o), text(&o.stdout).trim().to_string()),
        (0, "match".into())
    );
    let o = tp(&format!("@{pf}"), clean);
    assert_eq!(code(&o), 1);
    let o = tp(pattern, &format!("@{ef}"));
    assert_eq!(code(&o), 0);
    let o = tp(&format!("@{}/missing.json", dir.path().display()), clean);
    assert_eq!(code(&o), 2);
    assert_no_panic(&o);
    assert!(
        text(&o.stderr).contains("missing.json"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn test_pattern_batch_streams_in_order() {
    let lines = [
        json!({"pattern": {"a": ["x"]}, "event": {"a": "x"}}).to_string(),
        json!({"pattern": {"a": ["x"]}, "event": {"a": "y"}}).to_string(),
        "this is not json".to_string(),
        json!({"pattern": {"a": "x"}, "event": {}}).to_string(),
        json!({"pattern": {"n": [{"numeric": [">", 1]}]}, "event": {"n": 2}}).to_string(),
        json!({"event": {"a": 1}}).to_string(),
        json!({"pattern": {"n": [{"numeric": [">", 1]}]}, "event": {"n": 1}}).to_string(),
    ];
    let mut child = Command::new(BIN)
        .args(["test-pattern", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    // Streaming: the answer to the first line arrives before the second line is written.
    writeln!(stdin, "{}", lines[0]).expect("write");
    stdin.flush().expect("flush");
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read first answer");
    assert_eq!(first.trim(), "true");
    for l in &lines[1..] {
        writeln!(stdin, "{l}").expect("write");
    }
    drop(stdin);
    let rest: Vec<String> = stdout.lines().map_while(Result::ok).collect();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert_eq!(rest.len(), 6, "{rest:#?}");
    assert_eq!(rest[0], "false");
    assert!(rest[1].starts_with("invalid: "), "{rest:#?}");
    assert!(rest[2].starts_with("invalid: "), "{rest:#?}");
    assert_eq!(rest[3], "true");
    assert!(rest[4].starts_with("invalid: "), "{rest:#?}");
    assert_eq!(rest[5], "false");
}

#[test]
fn route_dry_run_names_routes_and_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "plan.toml", PLAN_CONFIG);
    let ev = r#"{"source":"aws.ecs","detail-type":"ECS Task State Change","detail":{"containers":[{"exitCode":"1"}]}}"#;
    let o = firelane(&["route", "-c", &path, "--event", ev], &[]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("tag: \"ECS Task State Change\""), "{out}");
    assert!(
        out.contains("from input events: routes fails → outputs archive, alerts"),
        "{out}"
    );
    assert!(out.contains("from input app: no route matches"), "{out}");

    let log = r#"{"log":"GET /index.html 200"}"#;
    let ef = write(dir.path(), "log.json", log);
    let o = firelane(
        &[
            "route",
            "-c",
            &path,
            "--event",
            &format!("@{ef}"),
            "--tag",
            "web-firelens-abc123",
        ],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("tag: \"web-firelens-abc123\""), "{out}");
    assert!(
        out.contains("from input app: routes access → outputs archive"),
        "{out}"
    );
    assert!(out.contains("from input events: no route matches"), "{out}");

    let o = firelane(
        &["route", "-c", &path, "--event", log, "--tag", "other"],
        &[],
    );
    assert!(
        text(&o.stdout).contains("from input app: no route matches"),
        "{}",
        text(&o.stdout)
    );

    for bad in ["[1,2]", "{oops"] {
        let o = firelane(&["route", "-c", &path, "--event", bad], &[]);
        assert_no_panic(&o);
        assert_ne!(code(&o), 0, "{bad}");
        assert!(!text(&o.stderr).is_empty());
    }
}

#[test]
fn healthcheck_and_admin_endpoints() {
    let r = Router::start(
        r#"
[inputs.web]
type = "http"
listen = "127.0.0.1:0"

[routes.all]
to = ["n"]

[outputs.n]
type = "null"
"#,
    );
    let base = format!("http://127.0.0.1:{}", r.admin);
    let o = firelane(&["healthcheck", "--url", &format!("{base}/health")], &[]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let dead = format!("http://127.0.0.1:{}/health", free_port());
    let o = firelane(&["healthcheck", "--url", &dead, "--timeout-secs", "2"], &[]);
    assert_ne!(code(&o), 0);
    assert!(text(&o.stderr).contains("unhealthy"), "{}", text(&o.stderr));
    let o = firelane(&["healthcheck", "--url", &format!("{base}/nope")], &[]);
    assert_ne!(code(&o), 0, "a 404 is not healthy");

    let (s, body) = http_get(&format!("{base}/health")).expect("health");
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["ready"], true);
    assert!(v["outputs"]["n"].is_object(), "{v}");
    let (s, body) = http_get(&format!("{base}/ready")).expect("ready");
    assert_eq!((s, body.trim()), (200, "ready"));
    let (s, body) = http_get(&format!("{base}/metrics")).expect("metrics");
    assert_eq!(s, 200);
    assert!(body.contains("firelane_build_info{version=\""), "{body}");
}

/// Polls `f` until it returns Some or the timeout passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn port_busy(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

#[test]
fn run_without_any_config_uses_the_embedded_default() {
    if Path::new("/etc/firelane/firelane.toml").exists() {
        eprintln!(
            "SKIPPED: /etc/firelane/firelane.toml exists, so the embedded default is not used"
        );
        return;
    }
    let busy: Vec<u16> = [24224, 8888, 2020]
        .into_iter()
        .filter(|p| port_busy(*p))
        .collect();
    if !busy.is_empty() {
        eprintln!(
            "\n!!!!! SKIPPED run_without_any_config_uses_the_embedded_default: ports {busy:?} are busy !!!!!\n"
        );
        return;
    }
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .arg("run")
        // Empty counts as unset.
        .env("FIRELANE_CONFIG", "")
        .env_remove("RUST_LOG")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let guard = KillOnDrop(Some(child.id()));
    let ready = poll(Duration::from_secs(30), || {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("exited early: {s}");
        }
        http_get("http://127.0.0.1:2020/ready")
            .ok()
            .filter(|r| r.0 == 200)
    });
    assert!(
        ready.is_some(),
        "embedded default never became ready on 127.0.0.1:2020"
    );
    assert!(
        TcpStream::connect("127.0.0.1:24224").is_ok(),
        "forward input on 24224"
    );
    let resp = reqwest::blocking::Client::new()
        .post("http://127.0.0.1:8888/tag/from.test")
        .body(r#"{"hello":"default"}"#)
        .send()
        .expect("post to 8888");
    assert_eq!(resp.status().as_u16(), 200);
    // Everything goes to stdout as JSON lines with tag and time.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a JSON line on stdout within 20 s");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["hello"], "default");
    assert_eq!(v["tag"], "from.test");
    assert!(v["time"].is_string(), "{v}");
    let status = sigterm_and_wait(&mut child);
    drop(guard);
    let status = status.expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn run_reads_firelane_config_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[inputs.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n[routes.all]\nto = [\"n\"]\n[outputs.n]\ntype = \"null\"\n"
    );
    let path = write(dir.path(), "via-env.toml", &cfg);
    let mut child = Command::new(BIN)
        .arg("run")
        .env("FIRELANE_CONFIG", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let guard = KillOnDrop(Some(child.id()));
    assert!(becomes_ready(admin), "$FIRELANE_CONFIG not used");
    let status = sigterm_and_wait(&mut child);
    drop(guard);
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// Whether the admin endpoint on `admin` answers `/ready` with 200 within 30 s.
fn becomes_ready(admin: u16) -> bool {
    poll(Duration::from_secs(30), || {
        http_get(&format!("http://127.0.0.1:{admin}/ready"))
            .ok()
            .filter(|r| r.0 == 200)
    })
    .is_some()
}

/// Sends SIGTERM and waits up to 30 s for the exit.
fn sigterm_and_wait(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    unsafe_kill(child.id(), 15);
    poll(Duration::from_secs(30), || child.try_wait().ok().flatten())
}

/// `runtime.worker_threads` sizes the async runtime (default 1), and the config wins over
/// tokio's own `TOKIO_WORKER_THREADS`: the start-up line reports the runtime's real
/// worker count.
#[test]
fn worker_threads_sizes_the_runtime_and_the_environment_does_not_override_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (runtime, want) in [("", 1), ("[runtime]\nworker_threads = 3\n", 3)] {
        let admin = free_port();
        let cfg = format!(
            "{runtime}[admin]\nlisten = \"127.0.0.1:{admin}\"\n[inputs.web]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n[routes.all]\nto = [\"n\"]\n[outputs.n]\ntype = \"null\"\n"
        );
        let path = write(dir.path(), &format!("workers-{want}.toml"), &cfg);
        let mut child = Command::new(BIN)
            .args(["run", "-c", &path])
            .env_remove("FIRELANE_CONFIG")
            .env("TOKIO_WORKER_THREADS", "7")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let guard = KillOnDrop(Some(child.id()));
        let ready = becomes_ready(admin);
        let status = sigterm_and_wait(&mut child);
        drop(guard);
        let out = child.wait_with_output().expect("wait");
        let err = text(&out.stderr);
        assert!(ready, "{want}: never ready:\n{err}");
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
        let line = err
            .lines()
            .find(|l| l.contains("starting firelane"))
            .unwrap_or_else(|| panic!("no start-up line:\n{err}"));
        assert!(
            line.contains(&format!("worker_threads={want}")),
            "{want} workers expected: {line}"
        );
    }
}

struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take()
            && std::thread::panicking()
        {
            unsafe_kill(pid, 9);
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

#[test]
fn sigterm_flushes_every_acknowledged_record() {
    let port = free_port();
    let mut r = Router::start(&format!(
        r#"
[runtime]
shutdown_grace = "60s"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"
max_body = "4MiB"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "tag"
batch = {{ max_records = 1000000, max_bytes = "1GiB", max_age = "10m" }}
"#
    ));
    let out = r.path("out.jsonl");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    const REQUESTS: usize = 50;
    const PER: usize = 1000;
    for q in 0..REQUESTS {
        let body: String = (0..PER)
            .map(|i| format!("{{\"seq\":{},\"msg\":\"record {q}/{i}\"}}\n", q * PER + i))
            .collect();
        let resp = client
            .post(format!("http://127.0.0.1:{port}/tag/bulk"))
            .body(body)
            .send()
            .expect("post");
        assert_eq!(resp.status().as_u16(), 200, "request {q}");
    }
    let before = read_jsonl(&out).len();
    assert!(
        before < REQUESTS * PER,
        "records should still sit in the open batch, {before} written"
    );
    let started = Instant::now();
    let status = r.terminate(Duration::from_secs(90));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{}", r.logs());
    let lines = read_jsonl(&out);
    assert_eq!(
        lines.len(),
        REQUESTS * PER,
        "every acknowledged record is written before exit"
    );
    let mut seen = vec![false; REQUESTS * PER];
    for l in &lines {
        let seq = l["seq"].as_u64().expect("seq") as usize;
        assert!(!seen[seq], "duplicate {seq}");
        seen[seq] = true;
        assert_eq!(l["tag"], "bulk");
        assert_eq!(l["msg"], format!("record {}/{}", seq / PER, seq % PER));
    }
    eprintln!(
        "SIGTERM with {} records in flight: exit 0 after {took:?} (before: {before} on disk)",
        REQUESTS * PER
    );
}

#[test]
fn second_sigterm_during_a_slow_shutdown_exits_at_once() {
    // An http output whose peer never answers keeps the shutdown busy for the whole grace.
    let (silent, silent_addr) = common::silent_peer();
    let port = free_port();
    let mut r = Router::start(&format!(
        r#"
[runtime]
shutdown_grace = "90s"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["stuck"]

[outputs.stuck]
type = "http"
url = "http://{silent_addr}/ingest"
timeout = "10m"
batch = {{ max_age = "100ms" }}
"#
    ));
    let resp = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/"))
        .body(r#"{"a":1}"#)
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    r.signal(15);
    let shutting = poll(Duration::from_secs(20), || {
        r.logs().contains("shutting down").then_some(())
    });
    assert!(shutting.is_some(), "{}", r.logs());
    // Still busy flushing into the silent peer.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        r.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None))),
        "the first SIGTERM should wait for the stuck output:\n{}",
        r.logs()
    );
    let started = Instant::now();
    r.signal(15);
    let status = r.wait_exit(Duration::from_secs(15));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", r.logs());
    drop(silent);
}

#[test]
fn sigterm_while_clients_are_posting_loses_no_acknowledged_record() {
    let port = free_port();
    let mut r = Router::start(&format!(
        r#"
[runtime]
shutdown_grace = "60s"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
batch = {{ max_records = 1000000, max_bytes = "1GiB", max_age = "10m" }}
"#
    ));
    let out = r.path("out.jsonl");
    const PER: usize = 200;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posters: Vec<_> = (0..4)
        .map(|t| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let mut mine = Vec::new();
                for q in 0.. {
                    let base = (t * 1_000_000) + q * PER;
                    let body: String = (0..PER)
                        .map(|i| format!("{{\"seq\":{}}}\n", base + i))
                        .collect();
                    match client
                        .post(format!("http://127.0.0.1:{port}/"))
                        .body(body)
                        .send()
                    {
                        Ok(resp) if resp.status().as_u16() == 200 => {
                            mine.extend(base..base + PER);
                            acked.fetch_add(PER, std::sync::atomic::Ordering::SeqCst);
                        }
                        // 503 while shutting down, or the listener is gone: stop.
                        Ok(resp) => {
                            assert_eq!(resp.status().as_u16(), 503, "only 503 while shutting down");
                            break;
                        }
                        Err(_) => break,
                    }
                }
                mine
            })
        })
        .collect();
    let enough = poll(Duration::from_secs(60), || {
        (acked.load(std::sync::atomic::Ordering::SeqCst) >= 20_000).then_some(())
    });
    assert!(enough.is_some(), "posters too slow");
    let status = r.terminate(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "{}", r.logs());
    let mut want: Vec<usize> = posters
        .into_iter()
        .flat_map(|p| p.join().expect("poster"))
        .collect();
    want.sort_unstable();
    let mut got: Vec<usize> = read_jsonl(&out)
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq") as usize)
        .collect();
    got.sort_unstable();
    got.dedup();
    let missing: Vec<&usize> = want
        .iter()
        .filter(|s| got.binary_search(s).is_err())
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged, {} written; missing e.g. {missing:?}",
        want.len(),
        got.len()
    );
    eprintln!(
        "SIGTERM under load: {} acknowledged records, all written",
        want.len()
    );
}

#[test]
fn run_exits_with_one_clear_line_when_a_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:{}\"\n[inputs.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n[routes.all]\nto = [\"n\"]\n[outputs.n]\ntype = \"null\"\n",
        free_port()
    );
    let path = write(dir.path(), "busy.toml", &cfg);
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "-c", &path])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null());
    let o = cmd.output().expect("run");
    assert_no_panic(&o);
    assert_eq!(code(&o), 1);
    let err = text(&o.stderr);
    let want = format!("input web: cannot listen on 127.0.0.1:{port}");
    assert_eq!(err.matches(&want).count(), 1, "{err}");
    assert!(err.contains("in use"), "{err}");
    drop(taken);
}

/// A start-up error whose cause is both in its message and its `source()` (the disk
/// buffer's "cannot create buffer directory …: Not a directory") is printed once:
/// `…: Not a directory (os error 20)`, not `…: Not a directory (os error 20): Not a
/// directory (os error 20)`.
#[test]
fn run_prints_each_cause_of_an_error_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // data_dir below a regular file: creating the buffer directory fails with ENOTDIR.
    let file = write(dir.path(), "a-file", "");
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:{}\"\n[runtime]\ndata_dir = \"{file}/data\"\n[inputs.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{}\"\n[routes.all]\nto = [\"d\"]\n[outputs.d]\ntype = \"null\"\nbuffer = {{ type = \"disk\" }}\n",
        free_port(),
        free_port()
    );
    let path = write(dir.path(), "notdir.toml", &cfg);
    let o = Command::new(BIN)
        .args(["run", "-c", &path])
        .env("RUST_LOG", "error")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_no_panic(&o);
    assert_eq!(code(&o), 1);
    let err = text(&o.stderr);
    // ENOTDIR is 20 on Linux (asm-generic/errno-base.h).
    let cause = std::io::Error::from_raw_os_error(20).to_string();
    assert!(err.contains("output d: cannot open its buffer"), "{err}");
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
}

/// SIGHUP, SIGUSR1, SIGUSR2 and SIGALRM (whose default action kills a process at once) are
/// logged and ignored: the router keeps running and accepting; SIGQUIT then stops it
/// gracefully, like SIGTERM, and every acknowledged record is delivered.
#[test]
fn stray_signals_are_ignored_and_sigquit_drains() {
    let port = free_port();
    let mut r = Router::start(&format!(
        r#"
[runtime]
shutdown_grace = "60s"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
batch = {{ max_records = 1000000, max_bytes = "1GiB", max_age = "10m" }}
"#
    ));
    let out = r.path("out.jsonl");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let post = |seq: usize| {
        let resp = client
            .post(format!("http://127.0.0.1:{port}/tag/sig"))
            .body(format!("{{\"seq\":{seq}}}"))
            .send()
            .expect("post");
        assert_eq!(resp.status().as_u16(), 200, "record {seq}");
    };
    // (number, name) as on Linux x86_64 and aarch64 (signal(7)).
    let stray = [
        (1, "SIGHUP"),
        (10, "SIGUSR1"),
        (12, "SIGUSR2"),
        (14, "SIGALRM"),
    ];
    let mut sent = 0;
    for (sig, name) in stray {
        post(sent);
        sent += 1;
        r.signal(sig);
        // The warning is the proof the signal arrived and was handled, not merely lost.
        let logged = poll(Duration::from_secs(30), || {
            r.logs()
                .contains(&format!("{name} received and ignored"))
                .then_some(())
        });
        assert!(logged.is_some(), "no log line for {name}:\n{}", r.logs());
        let c = r.child.as_mut().expect("running");
        assert!(
            matches!(c.try_wait(), Ok(None)),
            "{name} stopped firelane:\n{}",
            r.logs()
        );
        assert_eq!(
            http_get(&format!("http://127.0.0.1:{}/ready", r.admin))
                .expect("ready")
                .0,
            200,
            "not ready after {name}"
        );
    }
    post(sent);
    sent += 1;
    assert!(
        read_jsonl(&out).len() < sent,
        "records should still sit in the open batch"
    );
    r.signal(3); // SIGQUIT
    let status = r.wait_exit(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "{}", r.logs());
    let logs = r.logs();
    assert!(
        logs.contains("SIGQUIT"),
        "shutdown does not name SIGQUIT:\n{logs}"
    );
    let mut seqs: Vec<u64> = read_jsonl(&out)
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..sent as u64).collect::<Vec<_>>(), "{logs}");
}

/// A token interpolated into an `http` output's URL (`?api_key=${TOKEN}`) is shown as
/// `***` by `check`, in the delivery warnings on stderr, and in the dead-lettered
/// record's `firelane_error` text; the records themselves still reach the dead letter.
#[test]
fn interpolated_secrets_are_redacted_everywhere_they_are_shown() {
    const TOKEN: &str = "s3cr3t-T0ken-4711";
    // Nothing listens there: every send fails with "connection refused", an error whose
    // text quotes the URL, token included.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let port = free_port();
    let cfg = format!(
        r#"
[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["hook"]

[outputs.hook]
type = "http"
url = "http://127.0.0.1:{refused}/ingest?api_key=${{FIRELANE_TEST_TOKEN}}"
retry = {{ initial_backoff = "10ms", max_backoff = "20ms", max_retries = 1 }}
dead_letter = "dead"

[outputs.dead]
type = "file"
path = "{{dir}}/dead.jsonl"
"#
    );
    let env = [("FIRELANE_TEST_TOKEN", TOKEN), ("RUST_LOG", "info")];

    // check: the plan shows the URL, with the token redacted.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "secret.toml",
        &cfg.replace("{dir}", &dir.path().display().to_string()),
    );
    let o = firelane(&["check", "-c", &path], &env);
    let shown = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(code(&o), 0, "{shown}");
    assert!(!shown.contains(TOKEN), "check printed the token:\n{shown}");
    assert!(shown.contains("api_key=***"), "{shown}");

    // run: a record goes in, fails twice, and is dead-lettered.
    let admin = free_port();
    let mut r = Router::start_with(tempfile::tempdir().expect("tempdir"), &cfg, admin, &env);
    let resp = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/tag/app"))
        .body(r#"{"msg":"hello"}"#)
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let dead = common::wait_lines(&r.path("dead.jsonl"), 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "{}", r.logs());
    assert_eq!(dead[0]["msg"], "hello");
    let error = dead[0]["firelane_error"].to_string();
    assert!(!error.contains(TOKEN), "dead letter has the token: {error}");
    assert!(error.contains("api_key=***"), "{error}");
    let status = r.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let logs = r.logs();
    assert!(
        logs.contains("api_key=***"),
        "no delivery warning quoting the URL:\n{logs}"
    );
    assert!(!logs.contains(TOKEN), "the log has the token:\n{logs}");
}

/// A peer that answers every request `400 Bad Request: invalid tag: <the records' tag
/// fields>`, as many ingest APIs quote the offending data in their error. Serves until the
/// test ends.
fn echoing_error_peer() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = std::io::BufReader::new(s.try_clone().expect("clone"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            // The offending value as it is, not JSON-escaped: what a peer's error quotes.
            let tags: Vec<String> = String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["tag"].as_str().map(str::to_owned))
                .collect();
            let answer = format!("invalid tag: {}", tags.join(", "));
            let _ = write!(
                s,
                "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    port
}

/// A tag with a newline in it (from a client) reaches a warning of ours (the error an
/// HTTP output's peer sends back quotes the record): the newline is escaped, so it cannot
/// start a forged log line.
#[test]
fn record_data_cannot_forge_log_lines() {
    let peer = echoing_error_peer();
    let port = free_port();
    let mut r = Router::start(&format!(
        r#"
[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["hook"]

[outputs.hook]
type = "http"
url = "http://127.0.0.1:{peer}/ingest"
tag_key = "tag"
dead_letter = "dead"

[outputs.dead]
type = "file"
path = "{{dir}}/dead.jsonl"
tag_key = "tag"
"#
    ));
    // The tag is "app" CR LF "ERROR forged: admin password reset", percent-encoded in
    // the path.
    let resp = reqwest::blocking::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/tag/app%0D%0AERROR%20forged:%20admin%20password%20reset"
        ))
        .body(r#"{"msg":"one\ntwo"}"#)
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let dead = common::wait_lines(&r.path("dead.jsonl"), 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "{}", r.logs());
    assert_eq!(
        dead[0]["tag"], "app\r\nERROR forged: admin password reset",
        "the record itself is kept as it was"
    );
    let status = r.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let logs = r.logs();
    assert!(
        logs.contains(r"invalid tag: app\r\nERROR forged: admin password reset"),
        "the warning does not quote the escaped tag:\n{logs}"
    );
    for line in logs.lines() {
        assert!(
            !line.starts_with("ERROR forged") && !line.contains('\r'),
            "forged log line {line:?} in:\n{logs}"
        );
    }
}

/// `time_key = "time"` on an EventBridge event, which has its own `time`: the event's
/// value is kept (not replaced by the receive time), other records still get the key,
/// and one warning names the clash however many records have it.
#[test]
fn time_key_keeps_a_field_the_record_already_has_and_warns_once() {
    let port = free_port();
    let mut r = Router::start(&format!(
        r#"
[inputs.events]
type = "http"
listen = "127.0.0.1:{port}"

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "tag"
time_key = "time"
"#
    ));
    let body = concat!(
        r#"{"source":"aws.ecs","detail-type":"ECS Task State Change","time":"2026-11-23T09:59:58Z","id":1}"#,
        "\n",
        r#"{"source":"aws.ecs","detail-type":"ECS Task State Change","time":"2026-11-23T09:59:59Z","id":2}"#,
        "\n",
        r#"{"msg":"no time of its own","id":3}"#,
        "\n"
    );
    let resp = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/tag/ecs"))
        .body(body)
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let lines = common::wait_lines(&r.path("out.jsonl"), 3, Duration::from_secs(60));
    assert_eq!(lines.len(), 3, "{}", r.logs());
    let by_id = |id: u64| {
        lines
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("no record {id}: {lines:?}"))
    };
    assert_eq!(by_id(1)["time"], "2026-11-23T09:59:58Z");
    assert_eq!(by_id(2)["time"], "2026-11-23T09:59:59Z");
    let added = by_id(3)["time"].as_str().expect("time added").to_owned();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&added).is_ok() && added.ends_with('Z'),
        "{added}"
    );
    assert!(lines.iter().all(|l| l["tag"] == "ecs"), "{lines:?}");
    let status = r.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let logs = r.logs();
    assert_eq!(
        logs.matches("records already have a field \"time\"")
            .count(),
        1,
        "{logs}"
    );
}

/// Every `firelane_*` family `/metrics` prints has a `# HELP` line (and a `# TYPE`).
#[test]
fn every_metric_family_has_help() {
    let port = free_port();
    let r = Router::start(&format!(
        r#"
[runtime]
data_dir = "{{dir}}/data"
memory_limit = "48MiB"

[inputs.web]
type = "http"
listen = "127.0.0.1:{port}"

[routes.app]
tag = ["app"]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
buffer = {{ type = "disk" }}
"#
    ));
    let resp = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/tag/app"))
        .body("{\"n\":1}\n{\"n\":2}\n")
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    // One more the route does not take, so the unrouted counter has a sample too.
    let resp = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/tag/other"))
        .body("{\"n\":3}\n")
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let lines = common::wait_lines(&r.path("out.jsonl"), 2, Duration::from_secs(60));
    assert_eq!(lines.len(), 2, "{lines:?}\n{}\n{}", r.metrics(), r.logs());
    let sent = r.wait_metric(
        "firelane_output_records_total",
        &["result=\"sent\""],
        2.0,
        Duration::from_secs(30),
    );
    assert_eq!(sent, 2.0);
    let text = r.metrics();
    let mut families: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("firelane_"))
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            // A histogram's samples are NAME_bucket / NAME_sum / NAME_count.
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                })
                .unwrap_or(name)
                .to_string()
        })
        .collect();
    families.sort();
    families.dedup();
    for want in [
        "firelane_build_info",
        "firelane_input_records_total",
        "firelane_input_bytes_total",
        "firelane_route_records_total",
        "firelane_unrouted_records_total",
        "firelane_output_records_total",
        "firelane_output_bytes_total",
        "firelane_output_batches_total",
        "firelane_output_request_seconds",
        "firelane_buffer_bytes",
        "firelane_buffer_records",
        "firelane_memory_budget_used_bytes",
        "firelane_memory_budget_limit_bytes",
    ] {
        assert!(
            families.iter().any(|f| f == want),
            "{want} missing:\n{text}"
        );
    }
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| !text.contains(&format!("# HELP {f} ")))
        .collect();
    assert!(missing.is_empty(), "no # HELP for {missing:?}:\n{text}");
    for f in &families {
        assert!(text.contains(&format!("# TYPE {f} ")), "no # TYPE for {f}");
    }
    // The budget gauges are read at the scrape: the limit is the config's, and an idle
    // router (its records delivered) holds next to nothing of it.
    let limit = r.wait_metric(
        "firelane_memory_budget_limit_bytes",
        &[],
        48.0 * 1024.0 * 1024.0,
        Duration::from_secs(10),
    );
    assert_eq!(limit, 48.0 * 1024.0 * 1024.0);
    let used = r.wait_metric(
        "firelane_memory_budget_used_bytes",
        &[],
        0.0,
        Duration::from_secs(10),
    );
    assert!(used < 1024.0 * 1024.0, "idle budget use {used}\n{text}");
}

/// Runs `firelane run -c path` and waits at most 30 s for it to exit by itself; a router
/// that started (the fault: it would run until stopped) is killed and its output returned
/// with the exit code of the kill (-1), which no assertion accepts.
fn run_briefly(path: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(["run", "-c", path])
        .env_remove("FIRELANE_CONFIG")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        // No instance metadata lookups if an output started after all.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn firelane run");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("try_wait").is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().expect("wait firelane run")
}

/// Issue #9 round 2: `check` exited 0 on configs that `run` then refused at start-up
/// (exit 1): an output's own construction checks (templates, names, storage class, HTTP
/// headers) only ran when the output started, and listen-address clashes only showed as
/// "Address already in use". Each case: `check` exits 1 with one clear, located
/// (`file:line:col`) message, printed once; `run` exits 78 (config error) before it
/// starts anything.
#[test]
fn check_refuses_what_run_would_refuse_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cw = "type = \"cloudwatch_logs\"\nregion = \"us-east-1\"\n";
    let s3 = "type = \"s3\"\nregion = \"us-east-1\"\n";
    // (case, inputs (None: one forward input on a free port), output table body,
    //  text the one error line must contain)
    let cases: Vec<(&str, Option<String>, String, &str)> = vec![
        (
            "cw_stream_colon",
            None,
            format!("{cw}log_group = \"/ecs/{{tag}}\"\nlog_stream = \"{{tag}}:{{x}}\""),
            "outputs.out.log_stream: \"{tag}:{x}\": ':' is not allowed",
        ),
        (
            "cw_group_space",
            None,
            format!("{cw}log_group = \"/ecs/my app/{{tag}}\""),
            "outputs.out.log_group: \"/ecs/my app/{tag}\": ' ' is not allowed",
        ),
        (
            "cw_group_empty",
            None,
            format!("{cw}log_group = \"\""),
            "outputs.out.log_group: \"\": must be non-empty",
        ),
        (
            "cw_tag_negative_index",
            None,
            format!("{cw}log_group = \"/ecs/{{tag[-1]}}\""),
            "outputs.out.log_group: template \"/ecs/{tag[-1]}\", column 6",
        ),
        (
            "cw_unknown_time_field",
            None,
            format!("{cw}log_group = \"/ecs/%Q\""),
            "outputs.out.log_group: template \"/ecs/%Q\", column 6: unsupported time field `%Q`",
        ),
        (
            "s3_unclosed_brace",
            None,
            format!("{s3}bucket = \"logs-bucket\"\nkey = \"{{tag\""),
            "outputs.out.key: template \"{tag\", column 1: unclosed `{`",
        ),
        (
            "s3_empty_bucket",
            None,
            format!("{s3}bucket = \"\""),
            "outputs.out.bucket: \"\": must not be empty",
        ),
        (
            "s3_bucket_name",
            None,
            format!("{s3}bucket = \"My_Logs\""),
            "outputs.out.bucket: \"My_Logs\": 'M' is not allowed in a bucket name",
        ),
        (
            "s3_storage_class",
            None,
            format!("{s3}bucket = \"logs-bucket\"\nstorage_class = \"WRONG\""),
            "outputs.out.storage_class: \"WRONG\": expected one of",
        ),
        (
            "firehose_empty_stream",
            None,
            "type = \"firehose\"\nregion = \"us-east-1\"\ndelivery_stream = \"\"".to_string(),
            "outputs.out.delivery_stream: \"\": must not be empty",
        ),
        (
            "http_bad_header_name",
            None,
            format!(
                "type = \"http\"\nurl = \"http://127.0.0.1:{}/\"\nheaders = {{ \"bad header\" = \"x\" }}",
                free_port()
            ),
            "outputs.out.headers: header \"bad header\": invalid HTTP header name",
        ),
        (
            "same_listen_twice_in_one_input",
            Some({
                let p = free_port();
                format!(
                    "[inputs.f]\ntype = \"forward\"\nlisten = [\"tcp://127.0.0.1:{p}\", \"tcp://127.0.0.1:{p}\"]\n"
                )
            }),
            "type = \"null\"".to_string(),
            "is listed twice in this input",
        ),
        (
            "two_inputs_on_one_port",
            Some({
                let p = free_port();
                format!(
                    "[inputs.f]\ntype = \"forward\"\nlisten = [\"tcp://127.0.0.1:{p}\"]\n[inputs.web]\ntype = \"http\"\nlisten = \"0.0.0.0:{p}\"\n"
                )
            }),
            "type = \"null\"".to_string(),
            "inputs.web.listen: 0.0.0.0:",
        ),
        (
            "two_inputs_on_one_unix_path",
            Some({
                let sock = dir.path().join("fluent.sock");
                let sock = sock.display();
                format!(
                    "[inputs.a]\ntype = \"forward\"\nlisten = [\"unix://{sock}\"]\n[inputs.b]\ntype = \"forward\"\nlisten = [\"unix://{sock}\"]\n"
                )
            }),
            "type = \"null\"".to_string(),
            "clashes with inputs.a.listen",
        ),
        (
            "admin_and_http_input_on_one_port",
            Some("[inputs.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{admin}\"\n".to_string()),
            "type = \"null\"".to_string(),
            "clashes with admin.listen",
        ),
    ];
    for (case, inputs, output, needle) in cases {
        let admin = free_port();
        let inputs = inputs
            .unwrap_or_else(|| {
                format!(
                    "[inputs.f]\ntype = \"forward\"\nlisten = [\"tcp://127.0.0.1:{}\"]\n",
                    free_port()
                )
            })
            .replace("{admin}", &admin.to_string());
        let cfg = format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[runtime]\ndata_dir = \"{}\"\n{inputs}[routes.all]\nto = [\"out\"]\n[outputs.out]\n{output}\n",
            data.display()
        );
        let path = write(dir.path(), &format!("{case}.toml"), &cfg);

        let o = firelane(&["check", "-c", &path], &[]);
        assert_no_panic(&o);
        let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
        assert_eq!(code(&o), 1, "{case}: check must refuse:\n{cfg}\n{all}");
        assert_eq!(
            all.matches(needle).count(),
            1,
            "{case}: {needle:?} once:\n{all}"
        );
        let line = all
            .lines()
            .find(|l| l.contains(needle))
            .expect("the error line");
        // file:line:col: message
        let located = line
            .strip_prefix(&format!("{path}:"))
            .and_then(|rest| {
                let mut parts = rest.splitn(3, ':');
                let l = parts.next()?.parse::<u32>().ok()?;
                let c = parts.next()?.parse::<u32>().ok()?;
                Some(l > 0 && c > 0)
            })
            .unwrap_or(false);
        assert!(located, "{case}: not located at file:line:col: {line}");
        assert!(
            all.contains("config invalid: 1 error(s)"),
            "{case}: exactly one error:\n{all}"
        );

        let o = run_briefly(&path);
        assert_no_panic(&o);
        let err = text(&o.stderr);
        assert_eq!(code(&o), 78, "{case}: run must exit 78:\n{err}");
        assert_eq!(
            err.matches(needle).count(),
            1,
            "{case}: {needle:?} once:\n{err}"
        );
        assert!(
            !err.contains("starting firelane"),
            "{case}: run started before refusing the config:\n{err}"
        );
    }
}
