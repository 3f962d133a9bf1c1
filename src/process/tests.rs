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

/// A Docker piece of line `id`, ordinal `n`, of container c1.
fn piece(id: &str, n: u64, last: bool, text: &str) -> Record {
    crate::process::tests::record(
        "app",
        json!({"container_id": "c1", "source": "stdout", "log": text,
               "partial_message": "true", "partial_id": id,
               "partial_ordinal": n.to_string(),
               "partial_last": if last { "true" } else { "false" }}),
    )
}

fn line_of(log: &str) -> Record {
    record(
        "app",
        json!({"container_id": "c1", "source": "stdout", "log": log}),
    )
}

/// What the chain reports held (`firelane_processor_held_bytes`) follows the records its
/// processors keep (as much as their pieces and lines take) and falls to 0 once they are
/// emitted: by completion, by timeout, at shutdown.
#[tokio::test]
async fn held_bytes_follow_what_the_processors_keep() {
    let mut chain = Chain::of(vec![
        build("type = \"partial\"\ntimeout = \"1s\"\nmax_size = \"1MiB\"\n"),
        build("type = \"multiline\"\nmode = \"java\"\nflush_timeout = \"1s\"\n"),
    ]);
    let text = "x".repeat(100_000);
    // Three pieces of 100 kB held: each counted as its record and its text.
    let out = chain
        .process(Batch::of(
            (1..=3).map(|n| piece("p1", n, false, &text)).collect(),
        ))
        .await;
    assert!(out.records.is_empty());
    let held = chain.held_bytes();
    assert!(
        (600_000..700_000).contains(&held),
        "3 pieces of 100 kB held: {held} bytes counted"
    );
    // The last piece completes the line: the joined record leaves partial, and it starts
    // a java event (not a continuation), which multiline now holds.
    let out = chain
        .process(Batch::of(vec![piece(
            "p1",
            4,
            true,
            "Exception in thread \"main\" boom",
        )]))
        .await;
    assert!(out.records.is_empty(), "{:?}", out.records.len());
    let joined = chain.held_bytes();
    assert!(
        (300_000..400_000).contains(&joined),
        "the joined line of 300 kB held by multiline: {joined} bytes counted"
    );
    // A continuation line grows it; a new line of the stream ends the event.
    chain
        .process(Batch::of(vec![line_of(&format!(
            "\tat {}",
            "y".repeat(50_000)
        ))]))
        .await;
    assert!(chain.held_bytes() >= joined + 50_000);
    let out = chain
        .process(Batch::of(vec![line_of("a plain line")]))
        .await;
    assert_eq!(out.records.len(), 1, "the joined event");
    let single = chain.held_bytes();
    assert!(single < 2048, "only the plain line is held: {single} bytes");
    // The timeout emits it; nothing is held.
    let out = chain
        .flush_due(Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(out.records.len(), 1);
    assert_eq!(chain.held_bytes(), 0);
    // Shutdown: what is held is emitted.
    chain
        .process(Batch::of(vec![piece("p2", 1, false, &text)]))
        .await;
    assert!(chain.held_bytes() >= 200_000);
    let out = chain.flush_all().await;
    assert_eq!(out.records.len(), 1);
    assert_eq!(chain.held_bytes(), 0);
}

/// The other ways a held line or event leaves or changes: a resent piece replaces the
/// earlier one (counted once), a `max_size` flush empties a line that stays open, a line
/// interrupted by a whole line of its stream, a `max_lines` flush.
#[tokio::test]
async fn held_bytes_after_resends_splits_interruptions_and_max_lines() {
    let mut partial = Chain::of(vec![build(
        "type = \"partial\"\ntimeout = \"1s\"\nmax_size = \"250KB\"\n",
    )]);
    let text = "x".repeat(100_000);
    partial
        .process(Batch::of(vec![piece("p1", 1, false, &text)]))
        .await;
    let one = partial.held_bytes();
    partial
        .process(Batch::of(vec![piece("p1", 1, false, &text)]))
        .await;
    assert_eq!(partial.held_bytes(), one, "a resend is counted once");
    // 3 × 100 kB passes max_size: the line is flushed and stays open, holding nothing.
    let out = partial
        .process(Batch::of(vec![
            piece("p1", 2, false, &text),
            piece("p1", 3, false, &text),
        ]))
        .await;
    assert_eq!(out.records.len(), 1, "flushed at max_size");
    assert_eq!(partial.held_bytes(), 0);
    partial
        .process(Batch::of(vec![piece("p1", 4, false, &text)]))
        .await;
    assert!(partial.held_bytes() >= 200_000);
    let out = partial.process(Batch::of(vec![line_of("whole")])).await;
    assert_eq!(
        out.records.len(),
        2,
        "the interrupted line, then the whole one"
    );
    assert_eq!(partial.held_bytes(), 0);

    let mut multiline = Chain::of(vec![build(
        "type = \"multiline\"\nmode = \"java\"\nflush_timeout = \"1s\"\nmax_lines = 3\n",
    )]);
    let out = multiline
        .process(Batch::of(vec![
            line_of("Exception in thread \"main\" boom"),
            line_of("\tat a"),
            line_of("\tat b"),
        ]))
        .await;
    assert_eq!(out.records.len(), 1, "flushed at max_lines");
    assert_eq!(multiline.held_bytes(), 0);
}
