//! Processors: per-input stages between an input and the router (`[processors.NAME]`,
//! applied in the order of an input's `processors = ["a", "b"]`).
//!
//! # Shape
//! A [`Processor`] takes a [`Batch`] (records in arrival order, plus the acknowledgement
//! tokens that must be settled once those records are buffered) and returns the batch that
//! goes on. It may change, drop, split, add or *hold* records:
//! - **Changing / dropping** (`fields`, `grep`, `parse_json`, `rewrite_tag`, `ecs_metadata`):
//!   return the records that go on with the batch's tokens. A dropped record is dropped by a
//!   policy the user chose and is counted (`firelane_processor_records_total`).
//! - **Holding** (`multiline`, `partial`: a line waits for the next one): keep the held
//!   records *and a share of the batch's tokens* ([`AckToken::share`]) and return the rest
//!   with the tokens. When the held records (or the record they became) are emitted later,
//!   the held shares go with them in the emitted batch. So a client's request is acknowledged
//!   only once everything it sent is buffered (src/input/ack.rs), while the input keeps
//!   reading the connection meanwhile.
//!
//! # Order
//! Per input, one [`Chain`] runs the processors in order for every batch, under one lock, and
//! batches reach the router in the order they were processed (the order lock is taken before
//! the chain lock is released). Streams (tag + `container_id` + `source`, see [`StreamKey`])
//! therefore keep their order through every processor, timers included.
//!
//! # Time
//! Processors that hold records say how often they want [`Processor::flush_due`] to be
//! called ([`Processor::tick`]); a task per input calls it, and records it returns go through
//! the processors after it. On shutdown (after the inputs stop reading, before the outputs
//! flush) [`Processor::flush_all`] empties every processor, and every later batch is flushed
//! right after it is processed.
//!
//! # Background work
//! [`ProcessorConfig::build`] runs inside the tokio runtime with a [`BuildContext`]: a
//! processor that needs start-up or refresh work (`ecs_metadata` fetching the task metadata
//! endpoint) spawns a task there that ends with [`BuildContext::shutdown`], and shares its
//! results with the processor through its own `Arc` state. [`Processor::process`] is async,
//! but it runs under the chain's lock: it must not wait on anything slow (a network call),
//! or every connection of the input waits with it. Fetch in the background and use what is
//! there.
//!
//! Adding a processor type: a module with a [`registry::ProcessorType`] and one line in
//! [`registry::PROCESSORS`].

pub(crate) mod ecs_metadata;
pub(crate) mod fields;
pub(crate) mod grep;
pub(crate) mod multiline;
pub(crate) mod parse_json;
pub(crate) mod partial;
pub(crate) mod registry;
pub(crate) mod rewrite_tag;
pub(crate) mod rule;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::event::Record;
use crate::input::ack::{AckToken, ack_pair};
use crate::input::{Ingest, IngestError};

pub(crate) use registry::{ProcessorConfig, ProcessorSpec};

/// Records in arrival order and the acknowledgement tokens to settle once they are
/// buffered (released when the router took them into every target buffer, failed
/// otherwise).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The records, in order.
    pub records: Vec<Record>,
    /// Tokens settled with the outcome of buffering `records`. May be non-empty while
    /// `records` is empty (every record was held or dropped): then they are released.
    pub acks: Vec<AckToken>,
}

impl Batch {
    /// A batch of `records` whose buffering settles `ack`.
    pub(crate) fn new(records: Vec<Record>, ack: AckToken) -> Batch {
        Batch {
            records,
            acks: vec![ack],
        }
    }

    /// Records with no token of their own (a test, `firelane route`).
    pub(crate) fn of(records: Vec<Record>) -> Batch {
        Batch {
            records,
            acks: Vec::new(),
        }
    }

    /// Appends `other`'s records (after this batch's) and tokens.
    pub(crate) fn append(&mut self, mut other: Batch) {
        if self.records.is_empty() {
            std::mem::swap(&mut self.records, &mut other.records);
        } else {
            self.records.append(&mut other.records);
        }
        self.acks.append(&mut other.acks);
    }

    /// No records and no tokens.
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.acks.is_empty()
    }

    /// A share of every token, for records this processor holds (see the module docs).
    #[allow(dead_code)] // holding processors (partial, multiline: next commits)
    pub(crate) fn share_acks(&self) -> Vec<AckToken> {
        self.acks.iter().map(AckToken::share).collect()
    }
}

/// One stage of an input's processing. See the module documentation for the contract
/// (order, holding records with shares of their tokens, time, shutdown).
#[async_trait::async_trait]
pub(crate) trait Processor: Send + 'static {
    /// Processes `batch` (records in arrival order) and returns what goes on, in order.
    /// Every token of `batch` must be returned (in the result) or kept with held records.
    async fn process(&mut self, batch: Batch) -> Batch;

    /// Emits held records whose time is up at `now` (`flush_timeout`, `timeout`). Called
    /// every [`Processor::tick`].
    fn flush_due(&mut self, _now: Instant) -> Batch {
        Batch::default()
    }

    /// Emits everything held: shutdown, or `firelane route`'s dry run.
    fn flush_all(&mut self) -> Batch {
        Batch::default()
    }

    /// How often [`Processor::flush_due`] should run; `None` for a processor that never
    /// holds records.
    fn tick(&self) -> Option<Duration> {
        None
    }

    /// Bytes of the records (and text) this processor holds now, as
    /// [`Record::approx_size`] counts them (`firelane_processor_held_bytes`). 0 for a
    /// processor that never holds records.
    fn held_bytes(&self) -> usize {
        0
    }
}

/// What a processor is built with.
#[derive(Clone, Debug)]
pub(crate) struct BuildContext {
    /// The `[processors.NAME]` name (metric label `processor`).
    pub name: String,
    /// The input whose records it processes (one instance per input that lists it).
    #[allow(dead_code)] // for processors that log or run background work (ecs_metadata)
    pub input: String,
    /// `firelane route`: no background tasks, no network; process what is given.
    #[allow(dead_code)] // for processors with background work (ecs_metadata)
    pub dry_run: bool,
    /// Cancelled when the router stops: background tasks end with it.
    #[allow(dead_code)] // for processors with background work (ecs_metadata)
    pub shutdown: CancellationToken,
}

impl BuildContext {
    /// `firelane_processor_records_total{processor=NAME, result}`.
    pub(crate) fn counter(&self, result: &'static str) -> Counter {
        metrics::counter!(
            "firelane_processor_records_total",
            "processor" => self.name.clone(),
            "result" => result
        )
    }
}

/// A stream: records that must stay in order and that a holding processor joins
/// (tag + `container_id` + `source`, as Docker's fluentd log driver sends them; records
/// without those fields share the stream of their tag).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StreamKey {
    tag: Arc<str>,
    container_id: Option<Box<str>>,
    source: Option<Box<str>>,
}

impl StreamKey {
    /// The stream `record` belongs to.
    pub(crate) fn of(record: &Record) -> StreamKey {
        let field = |k: &str| record.get(k).and_then(|v| v.as_str().map(Box::from));
        StreamKey {
            tag: record.tag.clone(),
            container_id: field("container_id"),
            source: field("source"),
        }
    }
}

/// Removes and returns the values of the streams idle for `timeout` or longer at `now`
/// (`touched`: when the stream last saw a record): what a holding processor's
/// `flush_due` releases. In no particular order (streams are independent).
pub(crate) fn take_idle<V>(
    open: &mut HashMap<StreamKey, V>,
    now: Instant,
    timeout: Duration,
    touched: impl Fn(&V) -> Instant,
) -> Vec<V> {
    let due: Vec<StreamKey> = open
        .iter()
        .filter(|(_, v)| now.saturating_duration_since(touched(v)) >= timeout)
        .map(|(k, _)| k.clone())
        .collect();
    due.iter().filter_map(|k| open.remove(k)).collect()
}

/// The processors of one input, in order.
pub(crate) struct Chain {
    stages: Vec<Box<dyn Processor>>,
    /// `firelane_processor_held_bytes{input}` (`None`: `firelane route`, tests).
    gauge: Option<Gauge>,
    /// What the stages held after the last call ([`Processor::held_bytes`]).
    held: usize,
}

impl Chain {
    /// Builds the instances of `specs` for input `input`.
    pub(crate) fn build(
        specs: &[&ProcessorSpec],
        input: &str,
        dry_run: bool,
        shutdown: &CancellationToken,
    ) -> Chain {
        let stages = specs
            .iter()
            .map(|s| {
                s.kind.build(&BuildContext {
                    name: s.name.clone(),
                    input: input.to_string(),
                    dry_run,
                    shutdown: shutdown.clone(),
                })
            })
            .collect();
        Chain::of(stages)
    }

    /// A chain of ready processors, reported in no gauge.
    pub(crate) fn of(stages: Vec<Box<dyn Processor>>) -> Chain {
        Chain {
            stages,
            gauge: None,
            held: 0,
        }
    }

    /// Reports what the stages hold in `firelane_processor_held_bytes{input}` from now on.
    ///
    /// Held records are not reserved in the memory budget, by design: the chain runs under
    /// a lock the input's next records and its timer need, and a batch waits for its turn
    /// to be buffered while holding that lock, so budget the chain held could only be freed
    /// by a timer stuck behind a batch waiting for that very budget. The resident-memory
    /// governor (`crate::buffer::resident`) sees them instead, as memory no reservation
    /// counts, and holds the inputs back for it within its bounds (at most a quarter of the
    /// budget, never what a waiting reservation needs), which cannot stall the chain.
    pub(crate) fn reported_for(mut self, input: &str) -> Chain {
        let gauge = metrics::gauge!("firelane_processor_held_bytes", "input" => input.to_string());
        gauge.set(0.0);
        self.gauge = Some(gauge);
        self
    }

    /// Bytes the stages held after the last call.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.held
    }

    /// Takes the stages' held bytes after a call, for the gauge.
    fn note_held(&mut self) {
        self.held = self.stages.iter().map(|s| s.held_bytes()).sum();
        if let Some(g) = &self.gauge {
            g.set(self.held as f64);
        }
    }

    /// The shortest tick any stage asks for.
    pub(crate) fn tick(&self) -> Option<Duration> {
        self.stages.iter().filter_map(|s| s.tick()).min()
    }

    /// Runs `batch` through every stage.
    pub(crate) async fn process(&mut self, mut batch: Batch) -> Batch {
        for s in &mut self.stages {
            batch = s.process(batch).await;
        }
        self.note_held();
        batch
    }

    /// What the stages release at `now`; a stage's flushed records go through the stages
    /// after it (after that stage's own due records, which are older).
    pub(crate) async fn flush_due(&mut self, now: Instant) -> Batch {
        let mut carry = Batch::default();
        for s in &mut self.stages {
            let mut out = s.flush_due(now);
            if !carry.is_empty() {
                out.append(s.process(carry).await);
            }
            carry = out;
        }
        self.note_held();
        carry
    }

    /// Everything the stages hold, through the stages after each.
    pub(crate) async fn flush_all(&mut self) -> Batch {
        let mut carry = Batch::default();
        for s in &mut self.stages {
            let mut out = if carry.is_empty() {
                Batch::default()
            } else {
                s.process(carry).await
            };
            out.append(s.flush_all());
            carry = out;
        }
        self.note_held();
        carry
    }
}

/// An input's [`Ingest`] with its processors in front of the router.
pub(crate) struct ProcessedInput {
    input: String,
    next: Arc<dyn Ingest>,
    chain: Mutex<Chain>,
    /// Taken (FIFO) before the chain lock is released, held while the batch is submitted:
    /// batches reach the buffers in processing order.
    order: Mutex<()>,
    /// Shutdown: every batch is flushed right after it is processed.
    draining: AtomicBool,
    /// `firelane_processor_unbuffered_records_total{input}`: records the processors emitted
    /// that no buffer took (refused as too large, buffers closed); their clients get no ack.
    unbuffered: Counter,
}

impl ProcessedInput {
    /// `chain` in front of `next` (the router's port for input `input`).
    pub(crate) fn new(input: &str, chain: Chain, next: Arc<dyn Ingest>) -> Arc<ProcessedInput> {
        Arc::new(ProcessedInput {
            input: input.to_string(),
            next,
            chain: Mutex::new(chain),
            order: Mutex::new(()),
            draining: AtomicBool::new(false),
            unbuffered: metrics::counter!("firelane_processor_unbuffered_records_total", "input" => input.to_string()),
        })
    }

    /// Runs the timer of the chain (if a stage holds records) until `stop`: every tick,
    /// what is due goes on to the router.
    pub(crate) fn spawn_timer(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let tick = self.chain.try_lock().ok()?.tick()?;
        let tick = tick.clamp(Duration::from_millis(5), Duration::from_secs(1));
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = interval.tick() => {}
                }
                let mut chain = this.chain.lock().await;
                let out = chain.flush_due(Instant::now()).await;
                if out.is_empty() {
                    continue;
                }
                let order = this.order.lock().await;
                drop(chain);
                let _ = this.submit(out).await;
                drop(order);
            }
        }))
    }

    /// Shutdown, after the inputs stopped accepting: flushes everything held, and from now
    /// on every batch right after it is processed (connections finishing their last request).
    pub(crate) async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let mut chain = self.chain.lock().await;
        let out = chain.flush_all().await;
        let order = self.order.lock().await;
        drop(chain);
        if !out.is_empty() {
            let n = out.records.len();
            if self.submit(out).await.is_ok() && n > 0 {
                tracing::info!(input = %self.input, records = n, "processors flushed held records at shutdown");
            }
        }
        drop(order);
    }

    /// Hands `batch` to the router and settles its tokens with the outcome.
    async fn submit(&self, batch: Batch) -> Result<(), IngestError> {
        let Batch { records, acks } = batch;
        let n = records.len();
        let result = if records.is_empty() {
            Ok(())
        } else {
            self.next.ingest(records).await
        };
        if let Err(e) = &result {
            self.unbuffered.increment(n as u64);
            crate::warn_limited!(
                "processor_submit_failed",
                "input {}: {n} processed record(s) were not buffered: {e}",
                self.input
            );
        }
        for a in acks {
            a.settle(&result);
        }
        result
    }
}

#[async_trait::async_trait]
impl Ingest for ProcessedInput {
    /// Resolves once every record of `records` is buffered, including those a processor
    /// held (HTTP answers 2xx only then).
    async fn ingest(&self, records: Vec<Record>) -> Result<(), IngestError> {
        let (token, wait) = ack_pair();
        self.ingest_acked(records, token).await?;
        wait.await
    }

    async fn ingest_acked(&self, records: Vec<Record>, ack: AckToken) -> Result<(), IngestError> {
        let mut chain = self.chain.lock().await;
        let mut out = chain.process(Batch::new(records, ack)).await;
        if self.draining.load(Ordering::SeqCst) {
            out.append(chain.flush_all().await);
        }
        let order = self.order.lock().await;
        drop(chain);
        let result = self.submit(out).await;
        drop(order);
        result
    }
}

/// Runs `records` through `chain` and flushes it: what `firelane route` shows.
pub(crate) async fn dry_run(chain: &mut Chain, records: Vec<Record>) -> Vec<Record> {
    let mut out = chain.process(Batch::of(records)).await;
    out.append(chain.flush_all().await);
    out.records
}

#[cfg(test)]
pub(crate) mod tests;
