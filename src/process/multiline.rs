//! `type = "multiline"`: joins the lines of one event (a stack trace) that arrive as
//! separate records into one record, per stream (tag + `container_id` + `source`).
//!
//! Every line of a stream either continues the event being joined or not; a line that does
//! not continue it ends it (the event is emitted) and may start the next one. `mode`:
//! - `"java"`: after any line, these continue: `\tat ...`, `... N more`,
//!   `... N common frames omitted`, `Caused by: ...`, `Suppressed: ...`,
//!   `nested exception is ...`, and an exception header (`java.lang.IllegalStateException:
//!   boom`, `com.x.FooError`) — so `logger.error("msg", e)`'s message line, exception and
//!   frames make one record;
//! - `"python"`: after any line, `Traceback (most recent call last):`; inside a traceback,
//!   indented lines (`  File ...`, the code), then the exception line (`ValueError: boom`),
//!   then chained tracebacks (`During handling of the above exception...`, `The above
//!   exception was the direct cause...`, blank lines);
//! - `"go"`: a `panic: ...` or `fatal error: ...` line starts an event; then blank lines,
//!   `goroutine N [...]:`, function lines (`main.main()`), indented file lines,
//!   `created by ...`, `[signal ...`, `[recovered]`, `exit status N` continue it. Other
//!   lines pass at once (they cannot start a trace);
//! - `"regex"`: a line matching `start` starts an event; while one is open, a line not
//!   matching `start` continues it when it matches `continue` (or always, without
//!   `continue`); other lines pass at once.
//!
//! The joined record is the first line's record (its fields and time) with `key` (default
//! `log`) the lines joined by `\n`. An event is emitted when a line ends it, when no line
//! came for `flush_timeout` (default 1s), when it reaches `max_lines` (default 1000) lines,
//! or at shutdown. A record without a string `key` ends its stream's event and passes.
//!
//! Counted in `firelane_processor_records_total{processor, result}`: `passed` (lines
//! emitted as they are), `joined` (lines that became part of a joined record), `merged`
//! (joined records emitted), `timeout`, `max_lines` and `shutdown` (events emitted for that
//! reason).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use regex::Regex;

use super::registry::{ProcessorConfig, ProcessorType};
use super::rule::compile_regex;
use super::{Batch, BuildContext, Processor, StreamKey, take_idle};
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::input::ack::AckToken;

/// The registry entry.
pub(crate) struct Multiline;

/// The languages (and the regex rules) a multiline processor knows.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Java / JVM stack traces.
    Java,
    /// Python tracebacks.
    Python,
    /// Go panics and goroutine dumps.
    Go,
    /// `start` / `continue` regexes.
    Regex {
        /// A line matching it starts an event.
        start: Regex,
        /// While an event is open, a line matching it (and not `start`) continues it;
        /// `None`: every line not matching `start` does.
        cont: Option<Regex>,
    },
}

/// Where an open event is, for the languages whose continuation depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A line that may be followed by a trace.
    Line,
    /// Python: inside a traceback's frames.
    PyFrames,
    /// Python: after the exception line (a chained traceback may follow).
    PyAfter,
    /// Python: after "During handling..." / "The above exception...": a new traceback.
    PyChain,
    /// Go: inside a panic.
    GoPanic,
    /// Regex: inside an event.
    Open,
}

/// The fixed rules of the languages, compiled once.
struct Rules {
    java: Regex,
    java_header: Regex,
    py_traceback: Regex,
    py_chain: Regex,
    go_start: Regex,
    go_cont: Regex,
}

fn rules() -> &'static Rules {
    static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let re = |s: &str| Regex::new(s).unwrap_or_else(|e| unreachable!("fixed regex {s}: {e}"));
        Rules {
            java: re(r"^\s+at |^\s+\.\.\. \d+ (more|common frames omitted)|^\s*(Caused by|Suppressed): |^\s*nested exception is"),
            java_header: re(r"^([a-zA-Z_$][\w$]*\.)+[\w$]*(Exception|Error|Throwable)(: |:$|$)"),
            py_traceback: re(r"^Traceback \(most recent call last\):\s*$"),
            py_chain: re(r"^(During handling of the above exception, another exception occurred:|The above exception was the direct cause of the following exception:)\s*$"),
            go_start: re(r"^(panic: |fatal error: )"),
            go_cont: re(r"^$|^\s|^goroutine \d+ \[|^created by |^\[signal |^\[recovered\]|^exit status \d+|^[\w./*()\[\]-]+\(.*\)$"),
        }
    })
}

impl Mode {
    /// The state of an event `line` starts, or `None` when `line` cannot start one (it
    /// passes at once).
    fn start(&self, line: &str) -> Option<State> {
        match self {
            Mode::Java => Some(State::Line),
            // A `Traceback` header that itself starts the event (the stream's first line,
            // the line after a finished traceback, after an interruption) is already inside
            // the traceback: its frames follow. From State::Line they would end it.
            Mode::Python if rules().py_traceback.is_match(line) => Some(State::PyFrames),
            Mode::Python => Some(State::Line),
            Mode::Go => rules().go_start.is_match(line).then_some(State::GoPanic),
            Mode::Regex { start, .. } => start.is_match(line).then_some(State::Open),
        }
    }

    /// The state after `line` when it continues an event in `state`; `None` when it ends it.
    fn next(&self, state: State, line: &str) -> Option<State> {
        let r = rules();
        match self {
            Mode::Java => {
                (r.java.is_match(line) || r.java_header.is_match(line)).then_some(State::Line)
            }
            Mode::Python => match state {
                State::Line | State::PyChain if r.py_traceback.is_match(line) => {
                    Some(State::PyFrames)
                }
                State::PyChain if line.trim().is_empty() => Some(State::PyChain),
                State::PyFrames if line.starts_with([' ', '\t']) => Some(State::PyFrames),
                // The exception line ends the frames.
                State::PyFrames if !line.trim().is_empty() => Some(State::PyAfter),
                State::PyAfter if line.trim().is_empty() => Some(State::PyAfter),
                State::PyAfter if r.py_chain.is_match(line) => Some(State::PyChain),
                _ => None,
            },
            Mode::Go => r.go_cont.is_match(line).then_some(State::GoPanic),
            Mode::Regex { start, cont } => {
                if start.is_match(line) {
                    return None;
                }
                match cont {
                    Some(c) => c.is_match(line).then_some(State::Open),
                    None => Some(State::Open),
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Mode::Java => "java",
            Mode::Python => "python",
            Mode::Go => "go",
            Mode::Regex { .. } => "regex",
        }
    }
}

impl ProcessorType for Multiline {
    fn name(&self) -> &'static str {
        "multiline"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "mode",
            "start",
            "continue",
            "key",
            "flush_timeout",
            "max_lines",
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig> {
        let path = t.path().to_string();
        let start = t.opt_string(d, "start");
        let cont = t.opt_string(d, "continue");
        let mode_name = t.opt_string(d, "mode");
        // Judged on the mode the user wrote, not on the Mode built: a `regex` mode whose
        // `start` is missing or invalid falls back to Java only to go on collecting errors,
        // and must not also be told its `start`/`continue` are "only for mode = regex".
        let regex_mode = mode_name.as_deref() == Some("regex");
        let mode = match mode_name.as_deref() {
            Some("java") => Mode::Java,
            Some("python") => Mode::Python,
            Some("go") => Mode::Go,
            Some("regex") => {
                let cont = cont.as_ref().and_then(|c| {
                    compile_regex(d, t.value_span("continue"), &format!("{path}.continue"), c)
                });
                match start {
                    Some(s) => {
                        match compile_regex(d, t.value_span("start"), &format!("{path}.start"), &s)
                        {
                            Some(start) => Mode::Regex { start, cont },
                            None => Mode::Java,
                        }
                    }
                    None => {
                        t.missing(d, "start");
                        Mode::Java
                    }
                }
            }
            Some(other) => {
                d.error(
                    t.value_span("mode"),
                    format!("{path}.mode: {other:?} is not one of \"java\", \"python\", \"go\", \"regex\""),
                );
                Mode::Java
            }
            None => {
                t.missing(d, "mode");
                Mode::Java
            }
        };
        if !regex_mode {
            for k in ["start", "continue"] {
                if t.contains(k) && t.contains("mode") {
                    d.error(
                        t.value_span(k),
                        format!("{path}.{k}: only for mode = \"regex\""),
                    );
                }
            }
        }
        let key = t.opt_string(d, "key").unwrap_or_else(|| "log".into());
        let mut flush_timeout = Duration::from_secs(1);
        if let Some(v) = t.opt_duration(d, "flush_timeout") {
            if v.is_zero() {
                d.error(
                    t.value_span("flush_timeout"),
                    format!("{path}.flush_timeout: must be more than 0"),
                );
            } else {
                flush_timeout = v;
            }
        }
        let mut max_lines = 1000;
        if let Some(n) = t.opt_u64(d, "max_lines") {
            if n < 2 {
                d.error(
                    t.value_span("max_lines"),
                    format!("{path}.max_lines: must be at least 2"),
                );
            } else {
                max_lines = usize::try_from(n).unwrap_or(usize::MAX);
            }
        }
        Box::new(MultilineConfig {
            mode: Arc::new(mode),
            key,
            flush_timeout,
            max_lines,
        })
    }
}

/// What `[processors.NAME] type = "multiline"` says.
#[derive(Debug, Clone)]
pub(crate) struct MultilineConfig {
    mode: Arc<Mode>,
    key: String,
    flush_timeout: Duration,
    max_lines: usize,
}

impl ProcessorConfig for MultilineConfig {
    fn type_name(&self) -> &'static str {
        "multiline"
    }

    fn describe(&self) -> String {
        let mode = match &*self.mode {
            Mode::Regex { start, cont } => format!(
                "regex start /{}/{}",
                start.as_str(),
                cont.as_ref()
                    .map(|c| format!(" continue /{}/", c.as_str()))
                    .unwrap_or_default()
            ),
            m => m.name().to_string(),
        };
        format!(
            "joins {mode} lines of {} per stream (flush_timeout {:?}, max_lines {})",
            self.key, self.flush_timeout, self.max_lines
        )
    }

    fn holds_for(&self) -> Option<Duration> {
        Some(self.flush_timeout)
    }

    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor> {
        Box::new(MultilineProcessor {
            config: self.clone(),
            batches: 0,
            open: HashMap::new(),
            passed: ctx.counter("passed"),
            joined: ctx.counter("joined"),
            merged: ctx.counter("merged"),
            timeout: ctx.counter("timeout"),
            max_lines: ctx.counter("max_lines"),
            shutdown: ctx.counter("shutdown"),
            held: 0,
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An event being joined.
struct Event {
    /// The first line's record.
    first: Record,
    /// Lines after the first.
    more: Vec<String>,
    state: State,
    touched: Instant,
    acks: Vec<AckToken>,
    /// The batch (`MultilineProcessor::batches`) whose tokens `acks` last took shares of.
    shared_in: u64,
    /// Memory the event takes: the first record's [`Record::approx_size`] and each further
    /// line with its `String`.
    cost: usize,
}

struct MultilineProcessor {
    config: MultilineConfig,
    /// Batches processed: tells whether an open event has shares of the current one.
    batches: u64,
    open: HashMap<StreamKey, Event>,
    passed: Counter,
    joined: Counter,
    merged: Counter,
    timeout: Counter,
    max_lines: Counter,
    shutdown: Counter,
    /// The sum of the open events' `cost` ([`Processor::held_bytes`]).
    held: usize,
}

impl MultilineProcessor {
    /// Emits `event`: the first record itself when it is one line, else the joined record.
    fn emit(&mut self, mut event: Event, out: &mut Batch) {
        self.held -= event.cost;
        out.acks.append(&mut event.acks);
        if event.more.is_empty() {
            self.passed.increment(1);
            out.records.push(event.first);
            return;
        }
        self.joined.increment(1 + event.more.len() as u64);
        self.merged.increment(1);
        let mut first = event.first;
        let mut text = first
            .get(&self.config.key)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        for l in &event.more {
            text.push('\n');
            text.push_str(l);
        }
        first
            .fields_mut()
            .insert(self.config.key.clone(), serde_json::Value::String(text));
        out.records.push(first);
    }
}

#[async_trait::async_trait]
impl Processor for MultilineProcessor {
    async fn process(&mut self, batch: Batch) -> Batch {
        let Batch { records, acks } = batch;
        let mut out = Batch {
            records: Vec::with_capacity(records.len()),
            acks,
        };
        let now = Instant::now();
        let mode = self.config.mode.clone();
        self.batches += 1;
        let batch_no = self.batches;
        for r in records {
            let key = StreamKey::of(&r);
            let line = r.get(&self.config.key).and_then(|v| v.as_str());
            let Some(line) = line else {
                if let Some(e) = self.open.remove(&key) {
                    self.emit(e, &mut out);
                }
                self.passed.increment(1);
                out.records.push(r);
                continue;
            };
            if let Some(e) = self.open.get_mut(&key)
                && let Some(state) = mode.next(e.state, line)
            {
                let cost = line.len() + std::mem::size_of::<String>();
                e.more.push(line.to_string());
                e.cost += cost;
                self.held += cost;
                e.state = state;
                e.touched = now;
                if e.shared_in != batch_no {
                    e.acks.extend(out.acks.iter().map(AckToken::share));
                    e.shared_in = batch_no;
                }
                if e.more.len() + 1 >= self.config.max_lines
                    && let Some(e) = self.open.remove(&key)
                {
                    self.max_lines.increment(1);
                    self.emit(e, &mut out);
                }
                continue;
            }
            if let Some(e) = self.open.remove(&key) {
                self.emit(e, &mut out);
            }
            match mode.start(line) {
                Some(state) => {
                    // Every held event has a share of the batch its lines came in.
                    let acks = out.acks.iter().map(AckToken::share).collect();
                    let cost = r.approx_size();
                    self.held += cost;
                    self.open.insert(
                        key,
                        Event {
                            first: r,
                            more: Vec::new(),
                            state,
                            touched: now,
                            acks,
                            shared_in: batch_no,
                            cost,
                        },
                    );
                }
                None => {
                    self.passed.increment(1);
                    out.records.push(r);
                }
            }
        }
        out
    }

    fn flush_due(&mut self, now: Instant) -> Batch {
        let mut out = Batch::default();
        for e in take_idle(&mut self.open, now, self.config.flush_timeout, |e| {
            e.touched
        }) {
            if !e.more.is_empty() {
                self.timeout.increment(1);
            }
            self.emit(e, &mut out);
        }
        out
    }

    fn flush_all(&mut self) -> Batch {
        let mut out = Batch::default();
        let open: Vec<Event> = self.open.drain().map(|(_, e)| e).collect();
        for e in open {
            if !e.more.is_empty() {
                self.shutdown.increment(1);
            }
            self.emit(e, &mut out);
        }
        out
    }

    fn tick(&self) -> Option<Duration> {
        Some(self.config.flush_timeout / 4)
    }

    fn held_bytes(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{build, record, spec};
    use super::*;

    fn line(container: &str, log: &str) -> Record {
        record(
            "app",
            json!({"container_id": container, "source": "stderr", "log": log}),
        )
    }

    /// Feeds the streams' lines interleaved one by one (c0 line 0, c1 line 0, …), then
    /// flushes; returns each container's records' `log`s.
    async fn run(body: &str, streams: &[&str]) -> Vec<Vec<String>> {
        let mut p = build(body);
        let lines: Vec<Vec<&str>> = streams.iter().map(|s| s.lines().collect()).collect();
        let longest = lines.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = Batch::default();
        for i in 0..longest {
            let batch: Vec<Record> = lines
                .iter()
                .enumerate()
                .filter_map(|(c, l)| l.get(i).map(|t| line(&format!("c{c}"), t)))
                .collect();
            out.append(p.process(Batch::of(batch)).await);
        }
        out.append(p.flush_all());
        (0..streams.len())
            .map(|c| {
                out.records
                    .iter()
                    .filter(|r| {
                        r.get("container_id").and_then(|v| v.as_str()) == Some(&format!("c{c}"))
                    })
                    .map(|r| {
                        r.get("log")
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
    }

    const JAVA: &str = "2026-11-30 12:00:00 INFO started
2026-11-30 12:00:01 ERROR request failed
java.lang.IllegalStateException: boom
\tat com.example.Foo.bar(Foo.java:10)
\tat com.example.Main.main(Main.java:5)
Caused by: java.io.IOException: disk
\tat com.example.Io.read(Io.java:3)
\t... 2 more
2026-11-30 12:00:02 INFO next";

    const PYTHON: &str = "INFO:root:started
ERROR:root:failed
Traceback (most recent call last):
  File \"/app/main.py\", line 3, in <module>
    main()
  File \"/app/main.py\", line 2, in main
    raise KeyError(\"k\")
KeyError: 'k'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/app/main.py\", line 5, in <module>
    raise ValueError(\"v\")
ValueError: v
INFO:root:after";

    const GO: &str = "2026/11/30 12:00:00 starting
panic: runtime error: index out of range [3] with length 3

goroutine 1 [running]:
main.lookup(...)
\t/app/main.go:12
main.main()
\t/app/main.go:20 +0x1d
exit status 2
2026/11/30 12:00:01 restarted";

    fn expect(text: &str, groups: &[std::ops::Range<usize>]) -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        groups.iter().map(|g| lines[g.clone()].join("\n")).collect()
    }

    #[tokio::test]
    async fn java_python_and_go_traces_from_interleaved_streams() {
        for (mode, text, groups) in [
            ("java", JAVA, vec![0..1, 1..8, 8..9]),
            ("python", PYTHON, vec![0..1, 1..15, 15..16]),
            ("go", GO, vec![0..1, 1..9, 9..10]),
        ] {
            let got = run(
                &format!("type = \"multiline\"\nmode = \"{mode}\"\n"),
                &[text, text, "a\nb"],
            )
            .await;
            let want = expect(text, &groups);
            assert_eq!(got[0], want, "{mode}");
            assert_eq!(got[1], want, "{mode}");
            assert_eq!(got[2], ["a", "b"], "{mode}");
        }
    }

    #[tokio::test]
    async fn python_traceback_that_starts_the_event_keeps_its_frames() {
        // The stream's first line is the header, and a second traceback follows the
        // first one's exception line directly (a retry loop logging with traceback.print_exc).
        let text = "Traceback (most recent call last):
  File \"x.py\", line 1, in <module>
    f()
ValueError: x
Traceback (most recent call last):
  File \"y.py\", line 2, in g
KeyError: 1
INFO:root:after";
        let got = run("type = \"multiline\"\nmode = \"python\"\n", &[text]).await;
        assert_eq!(got[0], expect(text, &[0..4, 4..7, 7..8]));
    }

    #[tokio::test]
    async fn regex_mode_with_and_without_continue() {
        let text = "[1] start\n cont a\n cont b\nstray\n[2] start\n cont";
        let got = run(
            "type = \"multiline\"\nmode = \"regex\"\nstart = '^\\[\\d+\\]'\ncontinue = '^ '\n",
            &[text],
        )
        .await;
        assert_eq!(
            got[0],
            ["[1] start\n cont a\n cont b", "stray", "[2] start\n cont"]
        );
        let got = run(
            "type = \"multiline\"\nmode = \"regex\"\nstart = '^\\['\n",
            &[text],
        )
        .await;
        assert_eq!(
            got[0],
            ["[1] start\n cont a\n cont b\nstray", "[2] start\n cont"]
        );
    }

    #[tokio::test]
    async fn max_lines_and_timeout_emit_and_the_first_line_keeps_its_time() {
        let mut p = build(
            "type = \"multiline\"\nmode = \"regex\"\nstart = '^S'\nmax_lines = 3\nflush_timeout = \"50ms\"\n",
        );
        let mut first = line("c", "S1");
        first.time_ns = 7;
        let out = p
            .process(Batch::of(vec![
                first,
                line("c", "a"),
                line("c", "b"),
                line("c", "c"),
            ]))
            .await;
        // "c" continues nothing open (the event was emitted) and does not start: passed.
        assert_eq!(out.records.len(), 2);
        assert_eq!(
            out.records[0].get("log").and_then(|v| v.as_str()),
            Some("S1\na\nb")
        );
        assert_eq!(out.records[0].time_ns, 7);
        assert_eq!(
            out.records[1].get("log").and_then(|v| v.as_str()),
            Some("c")
        );
        let out = p
            .process(Batch::of(vec![line("c", "S2"), line("c", "x")]))
            .await;
        assert!(out.records.is_empty());
        assert!(p.flush_due(Instant::now()).is_empty());
        let out = p.flush_due(Instant::now() + Duration::from_millis(60));
        assert_eq!(
            out.records[0].get("log").and_then(|v| v.as_str()),
            Some("S2\nx")
        );
    }

    /// The tester's case: in one request, an event ends and the next one starts; the new
    /// event, still held, must keep the request unacknowledged (it took no share before).
    #[tokio::test]
    async fn an_event_started_after_one_ended_in_the_same_batch_holds_the_ack() {
        let mut p = build("type = \"multiline\"\nmode = \"regex\"\nstart = '^S'\n");
        let (token, mut wait) = crate::input::ack::ack_pair();
        let out = p
            .process(Batch::new(
                vec![line("c", "S1"), line("c", "a"), line("c", "S2")],
                token,
            ))
            .await;
        assert_eq!(out.records.len(), 1);
        for a in out.acks {
            a.release();
        }
        assert_eq!(wait.try_outcome(), None, "S2 is held: no ack");
        for a in p.flush_all().acks {
            a.release();
        }
        assert_eq!(wait.try_outcome(), Some(Ok(())));
    }

    #[test]
    fn config_errors() {
        let e = spec("type = \"multiline\"\nmode = \"regex\"\n").expect_err("no start");
        assert!(e[0].contains("missing required key `start`"), "{e:?}");
        // An invalid `start` in regex mode is one error, not also "only for mode = regex".
        let e = spec("type = \"multiline\"\nmode = \"regex\"\nstart = \"((\"\ncontinue = \"x\"\n")
            .expect_err("bad start");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("processors.p.start: invalid regex"), "{e:?}");
        let e = spec("type = \"multiline\"\nmode = \"java\"\nstart = \"x\"\n")
            .expect_err("start without regex");
        assert!(
            e[0].starts_with("t.toml:11:9: processors.p.start: only for mode = \"regex\""),
            "{e:?}"
        );
        let e =
            spec("type = \"multiline\"\nmode = \"regex\"\nstart = \"(\"\n").expect_err("bad regex");
        assert!(e[0].contains("processors.p.start: invalid regex"), "{e:?}");
        let e = spec("type = \"multiline\"\nmode = \"ruby\"\n").expect_err("bad mode");
        assert!(e[0].contains("\"ruby\" is not one of"), "{e:?}");
    }
}
