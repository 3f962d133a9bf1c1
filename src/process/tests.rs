//! The framework: deferred acks through a holding processor, order, timers, shutdown
//! flush, failures; and the `[processors]` config contract.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;

use serde_json::json;

use super::*;
use crate::input::ack::ack_pair;

fn rec(tag: &str, container: &str, log: &str) -> Record {
    let serde_json::Value::Object(m) =
        json!({"container_id": container, "source": "stdout", "log": log})
    else {
        unreachable!()
    };
    Record::new(tag, 0, m)
}

fn log_of(r: &Record) -> String {
    r.get("log")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Holds each stream's last record until the stream's next record arrives, `hold` has
/// passed, or a flush: the shape of multiline and partial.
struct HoldLast {
    hold: Duration,
    held: HashMap<StreamKey, (Record, Instant, Vec<AckToken>)>,
}

#[async_trait::async_trait]
impl Processor for HoldLast {
    async fn process(&mut self, batch: Batch) -> Batch {
        let mut out = Batch {
            records: Vec::new(),
            acks: Vec::new(),
        };
        let shares = batch.share_acks();
        for r in batch.records {
            let key = StreamKey::of(&r);
            if let Some((prev, _, acks)) = self.held.remove(&key) {
                out.records.push(prev);
                out.acks.extend(acks);
            }
            let acks = shares.iter().map(AckToken::share).collect();
            self.held.insert(key, (r, Instant::now(), acks));
        }
        for s in shares {
            s.release();
        }
        out.acks.extend(batch.acks);
        out
    }

    fn flush_due(&mut self, now: Instant) -> Batch {
        let mut out = Batch::default();
        for (r, _, acks) in take_idle(&mut self.held, now, self.hold, |(_, at, _)| *at) {
            out.records.push(r);
            out.acks.extend(acks);
        }
        out
    }

    fn flush_all(&mut self) -> Batch {
        let mut out = Batch::default();
        for (_, (r, _, acks)) in self.held.drain() {
            out.records.push(r);
            out.acks.extend(acks);
        }
        out
    }

    fn tick(&self) -> Option<Duration> {
        Some(Duration::from_millis(10))
    }
}

/// The router's side: records what it was given, or fails.
#[derive(Default)]
struct Sink {
    got: StdMutex<Vec<Record>>,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Ingest for Sink {
    async fn ingest(&self, records: Vec<Record>) -> Result<(), IngestError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(IngestError::ShuttingDown);
        }
        self.got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(records);
        Ok(())
    }
}

impl Sink {
    fn logs(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(log_of)
            .collect()
    }
}

fn held_input(hold: Duration) -> (Arc<ProcessedInput>, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let chain = Chain::of(vec![Box::new(HoldLast {
        hold,
        held: HashMap::new(),
    })]);
    (ProcessedInput::new("in", chain, sink.clone()), sink)
}

/// A request whose record is held is taken at once (the input reads on) but acknowledged
/// only once the record is buffered, here when the stream's next record pushes it out.
#[tokio::test]
async fn a_held_record_is_acked_only_once_it_is_buffered() {
    let (input, sink) = held_input(Duration::from_secs(3600));
    let (t1, mut w1) = ack_pair();
    input
        .ingest_acked(vec![rec("a", "c1", "one")], t1)
        .await
        .expect("taken");
    assert_eq!(w1.try_outcome(), None, "held: no ack yet");
    assert!(sink.logs().is_empty());
    let (t2, mut w2) = ack_pair();
    input
        .ingest_acked(vec![rec("a", "c1", "two")], t2)
        .await
        .expect("taken");
    assert_eq!(sink.logs(), ["one"]);
    assert_eq!(w1.try_outcome(), Some(Ok(())), "buffered: acked");
    assert_eq!(w2.try_outcome(), None);
    input.drain().await;
    assert_eq!(sink.logs(), ["one", "two"]);
    assert_eq!(w2.await, Ok(()));
}

/// A record held when the buffers refuse the flush is never acknowledged.
#[tokio::test]
async fn a_held_record_that_is_not_buffered_is_not_acked() {
    let (input, sink) = held_input(Duration::from_secs(3600));
    let (t1, w1) = ack_pair();
    input
        .ingest_acked(vec![rec("a", "c1", "one")], t1)
        .await
        .expect("taken");
    sink.fail.store(true, Ordering::SeqCst);
    input.drain().await;
    assert_eq!(w1.await, Err(IngestError::ShuttingDown));
}

/// `ingest` (HTTP) resolves only once held records are buffered; the timer flushes them.
#[tokio::test]
async fn the_timer_flushes_and_plain_ingest_waits_for_it() {
    let (input, sink) = held_input(Duration::from_millis(50));
    let stop = CancellationToken::new();
    let timer = input
        .spawn_timer(stop.clone())
        .expect("a holding chain has a timer");
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        input.ingest(vec![rec("a", "c1", "one"), rec("a", "c2", "x")]),
    )
    .await
    .expect("flushed by the timer")
    .expect("buffered");
    assert!(started.elapsed() >= Duration::from_millis(50));
    let mut logs = sink.logs();
    logs.sort();
    assert_eq!(logs, ["one", "x"]);
    stop.cancel();
    timer.await.expect("timer ends");
}

/// Streams keep their order through holding and timers, whatever the interleaving.
#[tokio::test]
async fn streams_keep_their_order() {
    let (input, sink) = held_input(Duration::from_millis(1));
    let stop = CancellationToken::new();
    let timer = input.spawn_timer(stop.clone()).expect("timer");
    for i in 0..300 {
        let batch = (0..3)
            .map(|c| rec("t", &format!("c{c}"), &format!("{c}:{i}")))
            .collect();
        input.ingest(batch).await.expect("buffered");
    }
    input.drain().await;
    stop.cancel();
    timer.await.expect("timer");
    let logs = sink.logs();
    assert_eq!(logs.len(), 900);
    for c in 0..3 {
        let seq: Vec<u32> = logs
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{c}:")))
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(seq, (0..300).collect::<Vec<_>>(), "stream c{c}");
    }
}

/// After shutdown began, a batch is flushed right after it is processed.
#[tokio::test]
async fn after_drain_nothing_is_held() {
    let (input, sink) = held_input(Duration::from_secs(3600));
    input.drain().await;
    let (t, w) = ack_pair();
    input
        .ingest_acked(vec![rec("a", "c1", "late")], t)
        .await
        .expect("taken");
    assert_eq!(sink.logs(), ["late"]);
    assert_eq!(w.await, Ok(()));
}

/// Records a stage flushes go through the stages after it.
#[tokio::test]
async fn flushed_records_pass_the_later_stages() {
    let text = "[processors.shape]\ntype = \"fields\"\nadd = { seen = \"yes\" }\n";
    let shape = parse_processor(text);
    let ctx = BuildContext {
        name: "shape".into(),
        input: "in".into(),
        dry_run: true,
        shutdown: CancellationToken::new(),
    };
    let mut chain = Chain::of(vec![
        Box::new(HoldLast {
            hold: Duration::ZERO,
            held: HashMap::new(),
        }),
        shape.kind.build(&ctx),
    ]);
    let out = chain.process(Batch::of(vec![rec("a", "c", "x")])).await;
    assert!(out.records.is_empty());
    let out = chain.flush_due(Instant::now()).await;
    assert_eq!(out.records.len(), 1);
    assert_eq!(
        out.records[0].get("seen").and_then(|v| v.as_str()),
        Some("yes")
    );
    let out = chain.process(Batch::of(vec![rec("a", "c", "y")])).await;
    assert!(out.records.is_empty());
    let out = dry_run(&mut chain, vec![]).await;
    assert_eq!(out.iter().map(log_of).collect::<Vec<_>>(), ["y"]);
}

fn env(_: &str) -> Option<String> {
    None
}

fn parse_processor(processors: &str) -> ProcessorSpec {
    let text = format!(
        "[inputs.i]\ntype = \"forward\"\nprocessors = [\"shape\"]\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n{processors}"
    );
    let l = crate::config::parse(&text, "t.toml", &env).expect("config");
    l.config
        .processors
        .into_iter()
        .next()
        .expect("one processor")
}

fn errors(text: &str) -> (Vec<String>, Vec<String>) {
    match crate::config::parse(text, "t.toml", &env) {
        Ok(l) => (vec![], l.warnings),
        Err(e) => (e.errors, e.warnings),
    }
}

#[test]
fn config_names_and_types_are_checked_with_locations() {
    let text = r#"[inputs.i]
type = "forward"
processors = ["shape", "shpe", "shape"]
[processors.shape]
type = "fields"
add = { a = "b" }
[processors.other]
type = "multilne"
[processors.spare]
type = "fields"
remove = ["x"]
[routes.r]
to = ["o"]
[outputs.o]
type = "null"
"#;
    let (errors, _) = errors(text);
    assert_eq!(
        errors,
        vec![
            "t.toml:3:24: input refers to unknown processor \"shpe\" (did you mean \"shape\"?)",
            "t.toml:3:32: processor \"shape\" is listed twice for the same input",
            format!(
                "t.toml:8:8: processors.other.type: unknown processor type \"multilne\" (did you mean \"multiline\"?); expected one of {:?}",
                registry::names()
            )
            .as_str(),
        ]
    );
    let ok = text
        .replace("\"shpe\", \"shape\"", "\"other\"")
        .replace("multilne", "fields");
    let (errors, warnings) = self::errors(&ok);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("t.toml:9:13: processor \"spare\" is not used")),
        "{warnings:?}"
    );
}

#[test]
fn an_input_lists_its_processors_in_order() {
    let text = r#"[inputs.i]
type = "forward"
processors = ["b", "a"]
[processors.a]
type = "fields"
add = { a = "1" }
[processors.b]
type = "fields"
add = { b = "1" }
[routes.r]
to = ["o"]
[outputs.o]
type = "null"
"#;
    let l = crate::config::parse(text, "t.toml", &env).expect("config");
    let names: Vec<&str> = l
        .config
        .processors_of(&l.config.inputs[0])
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["b", "a"]);
}

/// `[processors.p]` with `body`, listed by an input: the spec, or the config's errors.
pub(crate) fn spec(body: &str) -> Result<ProcessorSpec, Vec<String>> {
    let text = format!(
        "[inputs.i]\ntype = \"forward\"\nprocessors = [\"p\"]\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n[processors.p]\n{body}"
    );
    match crate::config::parse(&text, "t.toml", &env) {
        Ok(l) => Ok(l
            .config
            .processors
            .into_iter()
            .next()
            .expect("one processor")),
        Err(e) => Err(e.errors),
    }
}

/// A processor instance of `body` (see [`spec`]), for a test.
pub(crate) fn build(body: &str) -> Box<dyn Processor> {
    let spec = spec(body).unwrap_or_else(|e| panic!("{e:?}"));
    spec.kind.build(&BuildContext {
        name: "p".into(),
        input: "i".into(),
        dry_run: false,
        shutdown: CancellationToken::new(),
    })
}

/// A record tagged `tag` with the JSON object `body`.
pub(crate) fn record(tag: &str, body: serde_json::Value) -> Record {
    let serde_json::Value::Object(m) = body else {
        panic!("a record body is an object")
    };
    Record::new(tag, 0, m)
}

/// A record's body as JSON.
pub(crate) fn body(r: &Record) -> serde_json::Value {
    serde_json::Value::Object(r.fields().into_owned())
}

/// A holding processor on an HTTP input whose timeout reaches `accept_timeout` is warned
/// about at the list entry: requests would time out and be retried.
#[test]
fn http_inputs_warn_about_holds_past_accept_timeout() {
    let text = |timeout: &str| {
        format!(
            r#"[inputs.web]
type = "http"
listen = "127.0.0.1:0"
processors = ["trace"]
[processors.trace]
type = "multiline"
mode = "java"
flush_timeout = "{timeout}"
[routes.r]
to = ["o"]
[outputs.o]
type = "null"
"#
        )
    };
    let (e, w) = errors(&text("2s"));
    assert!(e.is_empty(), "{e:?}");
    assert!(
        w.iter().any(|w| w.starts_with("t.toml:4:15: processor \"trace\" may hold a record for 2s, not less than input \"web\"'s accept_timeout (2s)")),
        "{w:?}"
    );
    let (e, w) = errors(&text("1s"));
    assert!(e.is_empty(), "{e:?}");
    assert!(!w.iter().any(|w| w.contains("may hold")), "{w:?}");
}

/// Records a holding processor keeps are counted in `runtime.memory_limit` while held (as
/// much as their pieces and lines take), and given back once emitted: by completion, by a
/// flush at `max_size` / `max_lines`, by timeout or at shutdown.
#[tokio::test]
async fn held_records_are_counted_in_the_memory_budget() {
    let budget = MemoryBudget::new(64 << 20);
    let mut chain = Chain::of(vec![
        build("type = \"partial\"\ntimeout = \"1s\"\nmax_size = \"1MiB\"\n"),
        build("type = \"multiline\"\nmode = \"java\"\nflush_timeout = \"1s\"\n"),
    ])
    .counted_in(budget.clone());
    let piece = |n: u64, last: bool, text: &str| {
        record(
            "app",
            json!({"container_id": "c1", "source": "stdout", "log": text,
                   "partial_message": "true", "partial_id": "p1",
                   "partial_ordinal": n.to_string(),
                   "partial_last": if last { "true" } else { "false" }}),
        )
    };
    let text = "x".repeat(100_000);
    // Three pieces of 100 kB held: each counted as its record and its text.
    let out = chain
        .process(Batch::of((1..=3).map(|n| piece(n, false, &text)).collect()))
        .await;
    assert!(out.records.is_empty());
    let held = budget.used();
    assert!(
        (600_000..700_000).contains(&held),
        "3 pieces of 100 kB held: {held} bytes counted"
    );
    // The last piece completes the line: the joined record leaves, and so does its count.
    // It starts a java event (not a continuation), which multiline now holds.
    let out = chain
        .process(Batch::of(vec![piece(
            4,
            true,
            "Exception in thread \"main\" boom",
        )]))
        .await;
    assert!(out.records.is_empty(), "{:?}", out.records.len());
    let joined = budget.used();
    assert!(
        (300_000..400_000).contains(&joined),
        "the joined line of 300 kB held by multiline: {joined} bytes counted"
    );
    // A continuation line grows it; a new line of the stream ends the event.
    let line = |log: &str| {
        record(
            "app",
            json!({"container_id": "c1", "source": "stdout", "log": log}),
        )
    };
    chain
        .process(Batch::of(vec![line(&format!(
            "\tat {}",
            "y".repeat(50_000)
        ))]))
        .await;
    assert!(
        budget.used() >= joined + 50_000,
        "{} after a 50 kB line",
        budget.used()
    );
    let out = chain.process(Batch::of(vec![line("a plain line")])).await;
    assert_eq!(out.records.len(), 1, "the joined event");
    let single = budget.used();
    assert!(
        single < 4096,
        "only the plain line is held: {single} bytes counted"
    );
    // The timeout emits it; nothing is held, nothing counted.
    let out = chain
        .flush_due(Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(out.records.len(), 1);
    assert_eq!(budget.used(), 0);
    // Shutdown: what is held is emitted and no longer counted.
    chain.process(Batch::of(vec![piece(1, false, &text)])).await;
    assert!(budget.used() >= 200_000);
    let out = chain.flush_all().await;
    assert_eq!(out.records.len(), 1);
    assert_eq!(budget.used(), 0);
}

/// A holder past the limit takes what it needs at once (the chain must not wait: the
/// records that would free it come through the same lock) and the budget shows the
/// overdraft, which holds the inputs back; it is paid back when the records leave.
#[tokio::test]
async fn held_records_past_the_limit_overdraw_without_waiting() {
    let budget = MemoryBudget::new(256 << 10);
    let mut chain = Chain::of(vec![build(
        "type = \"partial\"\ntimeout = \"1s\"\nmax_size = \"4MiB\"\n",
    )])
    .counted_in(budget.clone());
    let pieces: Vec<Record> = (1..=5)
        .map(|n| {
            record(
                "app",
                json!({"container_id": "c1", "source": "stdout", "log": "z".repeat(100_000),
                       "partial_message": "true", "partial_id": "p1",
                       "partial_ordinal": n.to_string(), "partial_last": "false"}),
            )
        })
        .collect();
    let out = tokio::time::timeout(Duration::from_secs(5), chain.process(Batch::of(pieces)))
        .await
        .expect("the chain never waits for memory");
    assert!(out.records.is_empty());
    assert!(
        budget.used() > budget.limit(),
        "{} of {}",
        budget.used(),
        budget.limit()
    );
    assert!(
        budget.try_acquire(1).is_none(),
        "the overdraft holds others back"
    );
    chain
        .flush_due(Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(budget.used(), 0);
    assert!(budget.try_acquire(1).is_some());
}
