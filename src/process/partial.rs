//! `type = "partial"`: reassembles the lines Docker splits (moby `daemon/logger/copier.go`:
//! a line longer than its 16 KiB buffer is sent in pieces with `partial_message = "true"`,
//! `partial_id`, `partial_ordinal` = "1", "2"…, `partial_last` = "false" | "true"; every
//! value a string; shared facts in firelens-and-protocols.md §2.3).
//!
//! Pieces are joined per stream (tag + `container_id` + `source`) and `partial_id`, in
//! ordinal order (pieces that arrive out of order are put back in order), into one record:
//! the first piece's record and time, `log` the joined text, the `partial_*` fields
//! removed. Other streams' records flow past meanwhile. A line is emitted when its last
//! piece and every piece before it are there. Otherwise what is there is emitted, in order,
//! and marked with `partial_flush` saying why:
//! - `"timeout"`: no piece arrived for `timeout` (default 5s): Docker sends no final piece
//!   when a container's output ends mid-line;
//! - `"max_size"`: the joined text reached `max_size` (default 1MiB); later pieces of the
//!   same line make further records, also marked;
//! - `"interrupted"`: the stream went on with another line before this one was complete;
//! - `"shutdown"`: the router is stopping.
//!
//! Counted in `firelane_processor_records_total{processor, result}`: `passed` (records
//! that are not pieces), `piece` (pieces taken), `merged` (lines emitted whole), and one
//! count per flush reason above (records emitted incomplete).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use metrics::Counter;

use super::registry::{ProcessorConfig, ProcessorType};
use super::{Batch, BuildContext, Processor, StreamKey, take_idle};
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::input::ack::AckToken;

/// The registry entry.
pub(crate) struct Partial;

/// Docker's field names.
const MESSAGE: &str = "partial_message";
const ID: &str = "partial_id";
const ORDINAL: &str = "partial_ordinal";
const LAST: &str = "partial_last";
/// The field that marks a line emitted incomplete.
const FLUSH_MARK: &str = "partial_flush";
/// The field joined.
const LOG: &str = "log";

impl ProcessorType for Partial {
    fn name(&self) -> &'static str {
        "partial"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["timeout", "max_size"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig> {
        let mut c = PartialConfig::default();
        if let Some(v) = t.opt_duration(d, "timeout") {
            if v.is_zero() {
                d.error(
                    t.value_span("timeout"),
                    format!("{}.timeout: must be more than 0", t.path()),
                );
            } else {
                c.timeout = v;
            }
        }
        if let Some(v) = t.opt_size(d, "max_size") {
            if v < 1024 {
                d.error(
                    t.value_span("max_size"),
                    format!("{}.max_size: must be at least 1KiB", t.path()),
                );
            } else {
                c.max_size = usize::try_from(v).unwrap_or(usize::MAX);
            }
        }
        Box::new(c)
    }
}

/// What `[processors.NAME] type = "partial"` says.
#[derive(Debug, Clone)]
pub(crate) struct PartialConfig {
    /// An unfinished line is emitted this long after its latest piece.
    pub(crate) timeout: Duration,
    /// A line is emitted (marked) once its joined text reaches this many bytes.
    pub(crate) max_size: usize,
}

impl Default for PartialConfig {
    fn default() -> Self {
        PartialConfig {
            timeout: Duration::from_secs(5),
            max_size: 1024 * 1024,
        }
    }
}

impl ProcessorConfig for PartialConfig {
    fn type_name(&self) -> &'static str {
        "partial"
    }

    fn describe(&self) -> String {
        format!(
            "joins Docker partial lines (timeout {:?}, max_size {} bytes)",
            self.timeout, self.max_size
        )
    }

    fn holds_for(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor> {
        Box::new(PartialProcessor {
            config: self.clone(),
            batches: 0,
            open: HashMap::new(),
            counters: Counters {
                passed: ctx.counter("passed"),
                piece: ctx.counter("piece"),
                merged: ctx.counter("merged"),
                timeout: ctx.counter("timeout"),
                max_size: ctx.counter("max_size"),
                interrupted: ctx.counter("interrupted"),
                shutdown: ctx.counter("shutdown"),
            },
            held: 0,
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Counters {
    passed: Counter,
    piece: Counter,
    merged: Counter,
    timeout: Counter,
    max_size: Counter,
    interrupted: Counter,
    shutdown: Counter,
}

/// Why an incomplete line is emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Timeout,
    MaxSize,
    Interrupted,
    Shutdown,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::MaxSize => "max_size",
            Reason::Interrupted => "interrupted",
            Reason::Shutdown => "shutdown",
        }
    }
}

/// One line being joined.
struct Line {
    id: String,
    /// Pieces by ordinal: the record (for the first one's fields and time) and its text.
    pieces: BTreeMap<u64, (Record, String)>,
    /// The ordinal of the piece marked last, once it came.
    last: Option<u64>,
    /// The first ordinal not emitted yet (1, or after a `max_size` flush the one after the
    /// highest emitted).
    next: u64,
    /// Bytes of text held.
    bytes: usize,
    /// Memory the held pieces take ([`Record::approx_size`] of each piece plus its text).
    cost: usize,
    /// A `max_size` flush already emitted part of this line: what follows is marked too.
    split: bool,
    /// When the latest piece came.
    touched: Instant,
    /// Shares of the tokens of every batch that brought a piece still held.
    acks: Vec<AckToken>,
    /// The batch (`PartialProcessor::batches`) whose tokens `acks` last took shares of.
    shared_in: u64,
}

struct PartialProcessor {
    config: PartialConfig,
    /// Batches processed: tells whether a held line has shares of the current one.
    batches: u64,
    open: HashMap<StreamKey, Line>,
    counters: Counters,
    /// The sum of the open lines' `cost` ([`Processor::held_bytes`]).
    held: usize,
}

/// A piece's partial fields, when the record is one.
struct Piece {
    id: String,
    ordinal: u64,
    last: bool,
}

/// `true` for `"true"` (Docker) and a boolean `true` (other senders).
fn truthy(r: &Record, key: &str) -> bool {
    r.get(key).is_some_and(|v| match v.as_str() {
        Some(s) => s.eq_ignore_ascii_case("true"),
        None => v.to_value().as_bool() == Some(true),
    })
}

fn piece_of(r: &Record) -> Option<Piece> {
    if !truthy(r, MESSAGE) {
        return None;
    }
    // Docker's pieces always carry their text as a string `log`. A record flagged as a
    // piece without one (a sender's bug: a number, an object, no `log`) cannot be joined
    // as text; it goes on whole, as it came, rather than contributing "" and losing its value.
    r.get(LOG).and_then(|v| v.as_str().map(|_| ()))?;
    let id = r.get(ID).and_then(|v| match v.as_str() {
        Some(s) => Some(s.to_string()),
        None => {
            let v = v.to_value();
            (!v.is_null()).then(|| v.to_string())
        }
    })?;
    let ordinal = r.get(ORDINAL).and_then(|v| match v.as_str() {
        Some(s) => s.trim().parse::<u64>().ok(),
        None => v.to_value().as_u64(),
    })?;
    Some(Piece {
        id,
        ordinal,
        last: truthy(r, LAST),
    })
}

impl Line {
    fn complete(&self) -> bool {
        self.last.is_some_and(|l| {
            l >= self.next
                && self.pieces.len() as u64 == l - self.next + 1
                && self.pieces.keys().next() == Some(&self.next)
        })
    }

    /// The joined record; `reason` marks an incomplete one. Returns the `cost` the line
    /// no longer holds.
    fn emit(&mut self, reason: Option<Reason>, out: &mut Batch) -> usize {
        let pieces = std::mem::take(&mut self.pieces);
        self.bytes = 0;
        let freed = std::mem::take(&mut self.cost);
        // The shares leave with the record: pieces that follow take new ones.
        self.shared_in = 0;
        if let Some(&highest) = pieces.keys().next_back() {
            self.next = highest + 1;
        }
        let mut it = pieces.into_values();
        let Some((mut first, text)) = it.next() else {
            out.acks.append(&mut self.acks);
            return freed;
        };
        let mut log = text;
        for (_, t) in it {
            log.push_str(&t);
        }
        let reason = reason.or(self.split.then_some(Reason::MaxSize));
        let f = first.fields_mut();
        for k in [MESSAGE, ID, ORDINAL, LAST] {
            f.shift_remove(k);
        }
        f.insert(LOG.to_string(), serde_json::Value::String(log));
        if let Some(r) = reason {
            f.insert(
                FLUSH_MARK.to_string(),
                serde_json::Value::String(r.as_str().into()),
            );
        }
        out.records.push(first);
        out.acks.append(&mut self.acks);
        freed
    }
}

impl PartialProcessor {
    fn count(&self, reason: Option<Reason>) {
        match reason {
            None => self.counters.merged.increment(1),
            Some(Reason::Timeout) => self.counters.timeout.increment(1),
            Some(Reason::MaxSize) => self.counters.max_size.increment(1),
            Some(Reason::Interrupted) => self.counters.interrupted.increment(1),
            Some(Reason::Shutdown) => self.counters.shutdown.increment(1),
        }
    }

    fn flush_line(&mut self, mut line: Line, reason: Reason, out: &mut Batch) {
        let reason = if line.split && reason != Reason::Shutdown {
            Reason::MaxSize
        } else {
            reason
        };
        self.count(Some(reason));
        self.held -= line.emit(Some(reason), out);
    }
}

#[async_trait::async_trait]
impl Processor for PartialProcessor {
    async fn process(&mut self, batch: Batch) -> Batch {
        let Batch { records, acks } = batch;
        let mut out = Batch {
            records: Vec::with_capacity(records.len()),
            acks,
        };
        let now = Instant::now();
        self.batches += 1;
        let batch_no = self.batches;
        let mut passed = 0u64;
        let mut pieces = 0u64;
        for r in records {
            let piece = piece_of(&r);
            if piece.is_none() && self.open.is_empty() {
                passed += 1;
                out.records.push(r);
                continue;
            }
            let key = StreamKey::of(&r);
            let Some(piece) = piece else {
                // The stream went on with a whole line: its open line will never complete.
                if let Some(line) = self.open.remove(&key) {
                    self.flush_line(line, Reason::Interrupted, &mut out);
                }
                passed += 1;
                out.records.push(r);
                continue;
            };
            pieces += 1;
            if self.open.get(&key).is_some_and(|l| l.id != piece.id)
                && let Some(line) = self.open.remove(&key)
            {
                self.flush_line(line, Reason::Interrupted, &mut out);
            }
            let text = r
                .get(LOG)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let line = self.open.entry(key.clone()).or_insert_with(|| Line {
                id: piece.id.clone(),
                pieces: BTreeMap::new(),
                last: None,
                next: 1,
                bytes: 0,
                cost: 0,
                split: false,
                touched: now,
                acks: Vec::new(),
                shared_in: 0,
            });
            // One share of this batch's tokens per held line (again after the line's
            // earlier pieces left with their shares).
            if line.shared_in != batch_no {
                line.acks.extend(out.acks.iter().map(AckToken::share));
                line.shared_in = batch_no;
            }
            line.touched = now;
            line.bytes += text.len();
            let cost = r.approx_size() + text.len();
            line.cost += cost;
            self.held += cost;
            if piece.last {
                line.last = Some(piece.ordinal);
            }
            // A repeated ordinal (a resend) replaces the earlier piece.
            if let Some((old_r, old)) = line.pieces.insert(piece.ordinal, (r, text)) {
                line.bytes -= old.len();
                let old_cost = old_r.approx_size() + old.len();
                line.cost -= old_cost;
                self.held -= old_cost;
            }
            if line.complete() {
                let reason = line.split.then_some(Reason::MaxSize);
                if let Some(mut line) = self.open.remove(&key) {
                    self.count(reason);
                    self.held -= line.emit(reason, &mut out);
                }
            } else if line.bytes >= self.config.max_size {
                line.split = true;
                self.counters.max_size.increment(1);
                self.held -= line.emit(Some(Reason::MaxSize), &mut out);
            }
        }
        self.counters.passed.increment(passed);
        self.counters.piece.increment(pieces);
        out
    }

    fn flush_due(&mut self, now: Instant) -> Batch {
        let mut out = Batch::default();
        for line in take_idle(&mut self.open, now, self.config.timeout, |l| l.touched) {
            self.flush_line(line, Reason::Timeout, &mut out);
        }
        out
    }

    fn flush_all(&mut self) -> Batch {
        let mut out = Batch::default();
        let open: Vec<Line> = self.open.drain().map(|(_, l)| l).collect();
        for line in open {
            self.flush_line(line, Reason::Shutdown, &mut out);
        }
        out
    }

    fn tick(&self) -> Option<Duration> {
        Some(self.config.timeout / 4)
    }

    fn held_bytes(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{body, build, record};
    use super::*;
    use crate::input::ack::ack_pair;

    fn piece(container: &str, id: &str, n: u64, last: bool, log: &str) -> Record {
        let mut r = record(
            "app-firelens-1",
            json!({"container_id": container, "container_name": "/app", "source": "stdout",
                   "log": log, "partial_message": "true", "partial_id": id,
                   "partial_ordinal": n.to_string(), "partial_last": if last { "true" } else { "false" }}),
        );
        r.time_ns = n as i64;
        r
    }

    fn line(container: &str, log: &str) -> Record {
        record(
            "app-firelens-1",
            json!({"container_id": container, "source": "stdout", "log": log}),
        )
    }

    fn logs(b: &Batch) -> Vec<String> {
        b.records
            .iter()
            .map(|r| {
                r.get("log")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_piece_without_a_string_log_goes_on_whole() {
        let mut p = build("type = \"partial\"\n");
        let odd = |log: serde_json::Value, n: u64, last: bool| {
            record(
                "app-firelens-1",
                json!({"container_id": "c", "source": "stdout", "log": log,
                       "partial_message": "true", "partial_id": "e",
                       "partial_ordinal": n.to_string(), "partial_last": last.to_string()}),
            )
        };
        let out = p
            .process(Batch::of(vec![
                odd(json!(123), 1, false),
                odd(json!({"n": 1}), 2, true),
            ]))
            .await;
        let logs: Vec<_> = out
            .records
            .iter()
            .map(|r| r.get("log").map(|v| v.to_value().into_owned()))
            .collect();
        assert_eq!(logs, vec![Some(json!(123)), Some(json!({"n": 1}))]);
        assert!(p.flush_all().records.is_empty(), "nothing held");
    }

    #[tokio::test]
    async fn pieces_join_in_ordinal_order_with_the_first_pieces_fields() {
        let mut p = build("type = \"partial\"\n");
        let out = p
            .process(Batch::of(vec![
                piece("c1", "x", 2, false, "bb"),
                line("c2", "other"),
                piece("c1", "x", 1, false, "aa"),
                piece("c1", "x", 3, true, "cc"),
            ]))
            .await;
        assert_eq!(logs(&out), ["other", "aabbcc"]);
        let joined = &out.records[1];
        assert_eq!(joined.time_ns, 1, "the first piece's time");
        assert_eq!(
            body(joined),
            json!({"container_id": "c1", "container_name": "/app", "source": "stdout", "log": "aabbcc"})
        );
    }

    #[tokio::test]
    async fn an_unfinished_line_is_flushed_after_the_timeout_marked() {
        let mut p = build("type = \"partial\"\ntimeout = \"50ms\"\n");
        let (token, mut wait) = ack_pair();
        let out = p
            .process(Batch::new(vec![piece("c1", "x", 1, false, "aa")], token))
            .await;
        assert!(out.records.is_empty());
        for a in out.acks {
            a.release();
        }
        assert_eq!(wait.try_outcome(), None, "the held piece keeps its share");
        assert!(p.flush_due(Instant::now()).is_empty());
        let out = p.flush_due(Instant::now() + Duration::from_millis(60));
        assert_eq!(logs(&out), ["aa"]);
        assert_eq!(
            out.records[0].get(FLUSH_MARK).and_then(|v| v.as_str()),
            Some("timeout")
        );
        for a in out.acks {
            a.release();
        }
        assert_eq!(wait.try_outcome(), Some(Ok(())));
    }

    #[tokio::test]
    async fn max_size_emits_what_it_has_marked() {
        let mut p = build("type = \"partial\"\nmax_size = \"1KiB\"\n");
        let chunk = "x".repeat(400);
        let mut out = Batch::default();
        for n in 1..=6 {
            out.append(
                p.process(Batch::of(vec![piece("c1", "x", n, n == 6, &chunk)]))
                    .await,
            );
        }
        let sizes: Vec<usize> = logs(&out).iter().map(String::len).collect();
        assert_eq!(sizes, [1200, 1200]);
        assert!(
            out.records
                .iter()
                .all(|r| r.get(FLUSH_MARK).and_then(|v| v.as_str()) == Some("max_size"))
        );
    }

    /// Pieces held after a `max_size` part left within the same request keep the request
    /// unacknowledged (their share left with the part).
    #[tokio::test]
    async fn pieces_held_after_a_max_size_part_hold_the_ack() {
        let mut p = build("type = \"partial\"\nmax_size = \"1KiB\"\n");
        let chunk = "x".repeat(400);
        let (token, mut wait) = ack_pair();
        let batch = (1..=4)
            .map(|n| piece("c1", "x", n, false, &chunk))
            .collect();
        let out = p.process(Batch::new(batch, token)).await;
        assert_eq!(
            logs(&out).iter().map(String::len).collect::<Vec<_>>(),
            [1200]
        );
        for a in out.acks {
            a.release();
        }
        assert_eq!(wait.try_outcome(), None, "piece 4 is held: no ack");
        for a in p.flush_all().acks {
            a.release();
        }
        assert_eq!(wait.try_outcome(), Some(Ok(())));
    }

    #[tokio::test]
    async fn a_whole_line_interrupts_and_shutdown_flushes() {
        let mut p = build("type = \"partial\"\n");
        let out = p
            .process(Batch::of(vec![
                piece("c1", "x", 1, false, "aa"),
                line("c1", "next"),
                piece("c1", "y", 1, false, "bb"),
            ]))
            .await;
        assert_eq!(logs(&out), ["aa", "next"]);
        assert_eq!(
            out.records[0].get(FLUSH_MARK).and_then(|v| v.as_str()),
            Some("interrupted")
        );
        let out = p.flush_all();
        assert_eq!(logs(&out), ["bb"]);
        assert_eq!(
            out.records[0].get(FLUSH_MARK).and_then(|v| v.as_str()),
            Some("shutdown")
        );
    }
}
