//! The pollers of one `sqs` input: `ReceiveMessage`, ingest with ack tokens,
//! `DeleteMessageBatch`, and `ChangeMessageVisibilityBatch` to extend slow batches or return
//! unfinished ones at shutdown. See the module docs of [`super`] for the guarantees.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use metrics::Counter;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{SqsConfig, dedupe_key, parse_message, region_of_queue_url};
use crate::buffer::budget::MemoryBudget;
use crate::event::Record;
use crate::input::ack::ack_pair;
use crate::input::dedupe::Dedupe;
use crate::input::drain::InputShutdown;
use crate::input::{Ingest, IngestError};
use crate::output::aws::sdk_config;

/// First pause after a failed SQS call; doubles per failure.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between failed receives: a recovered queue is polled again within this.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// An empty receive that returned sooner than this (`wait_time = "0s"`, short polling) is
/// followed by a pause up to it, so an idle queue is not polled in a tight loop.
const MIN_EMPTY_CYCLE: Duration = Duration::from_secs(1);
/// Visibility timeout assumed when the queue's is 0: with 0 an unparseable message would
/// come straight back to the next receive. SQS's own default.
const FALLBACK_VISIBILITY: Duration = Duration::from_secs(30);
/// Attempts of one `DeleteMessageBatch` (a network blip must not cause duplicates).
const DELETE_ATTEMPTS: u32 = 4;
/// Bound of one delete or visibility call, so shutdown is never held by a dead network.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by the pollers of one input.
struct Shared {
    cfg: SqsConfig,
    client: Client,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    /// The input name: the tag of records without a `detail-type`.
    tag: Arc<str>,
    records: Counter,
    bytes: Counter,
    /// The visibility timeout in force, once known (config, else `GetQueueAttributes`).
    visibility: tokio::sync::OnceCell<Duration>,
    /// Keys taken recently (`dedupe`), shared by the pollers.
    dedupe: Option<Dedupe>,
}

impl Shared {
    fn error(&self, kind: &'static str, n: u64) {
        metrics::counter!("firelane_input_errors_total", "input" => self.cfg.name.clone(), "kind" => kind)
            .increment(n);
    }

    /// The visibility timeout receives ask for: `visibility_timeout`, else the queue's.
    async fn visibility_timeout(&self) -> Result<Duration, String> {
        if let Some(v) = self.cfg.visibility_timeout {
            return Ok(v);
        }
        self.visibility
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .get_queue_attributes()
                    .queue_url(&self.cfg.queue_url)
                    .attribute_names(QueueAttributeName::VisibilityTimeout)
                    .send()
                    .await
                    .map_err(|e| {
                        format!("GetQueueAttributes failed: {}", DisplayErrorContext(&e))
                    })?;
                let secs = out
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("GetQueueAttributes returned no VisibilityTimeout")?;
                if secs == 0 {
                    tracing::warn!(
                        input = %self.cfg.name,
                        "queue's visibility timeout is 0; receiving with {}s instead (set visibility_timeout to choose)",
                        FALLBACK_VISIBILITY.as_secs()
                    );
                    return Ok(FALLBACK_VISIBILITY);
                }
                Ok(Duration::from_secs(secs))
            })
            .await
            .copied()
    }
}

/// Exponential backoff with jitter: each pause is drawn from the upper half of the current
/// step (so pollers of several replicas spread out, yet never retry sooner than half the
/// step), and the step doubles up to [`MAX_BACKOFF`].
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { step: MIN_BACKOFF }
    }

    fn reset(&mut self) {
        self.step = MIN_BACKOFF;
    }

    fn next(&mut self) -> Duration {
        let ms = self.step.as_millis() as u64;
        let pause = Duration::from_millis(rand::rng().random_range(ms / 2..=ms));
        self.step = (self.step * 2).min(MAX_BACKOFF);
        pause
    }
}

/// Builds the SQS client and starts `cfg.pollers` pollers. Fails only when no region can be
/// found; an unreachable or missing queue is reported by the pollers (counted, logged,
/// retried with backoff), so a replica started during an SQS outage recovers by itself.
pub(crate) async fn spawn(
    cfg: SqsConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: InputShutdown,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut aws = cfg.aws.clone();
    // SigV4 must be signed for the queue's own region, which its URL names.
    if aws.region.is_none() {
        aws.region = region_of_queue_url(&cfg.queue_url);
    }
    let conf = sdk_config(&aws).await;
    if conf.region().is_none() {
        anyhow::bail!(
            "no AWS region: set `region`, AWS_REGION, or use the queue's https://sqs.REGION.amazonaws.com URL"
        );
    }
    let mut b = aws_sdk_sqs::config::Builder::from(&conf);
    if let Some(url) = &aws.endpoint_url {
        b = b.endpoint_url(url);
    }
    let client = Client::from_conf(b.build());
    tracing::info!(
        input = %cfg.name,
        queue_url = %cfg.queue_url,
        pollers = cfg.pollers,
        format = cfg.format.name(),
        "polling SQS queue"
    );
    let name = cfg.name.clone();
    let dedupe = cfg
        .dedupe
        .clone()
        .map(|d| Dedupe::new(d, &name, Some(budget.clone())));
    let shared = Arc::new(Shared {
        tag: Arc::from(cfg.name.as_str()),
        records: metrics::counter!("firelane_input_records_total", "input" => name.clone()),
        bytes: metrics::counter!("firelane_input_bytes_total", "input" => name),
        cfg,
        client,
        ingest,
        budget,
        visibility: tokio::sync::OnceCell::new(),
        dedupe,
    });
    Ok((0..shared.cfg.pollers)
        .map(|_| tokio::spawn(poller(shared.clone(), shutdown.clone())))
        .collect())
}

/// Waits `backoff`'s next pause; `true` when the drain began meanwhile (stop polling).
async fn pause(backoff: &mut Backoff, shutdown: &InputShutdown) -> bool {
    pause_for(backoff.next(), shutdown).await
}

async fn pause_for(d: Duration, shutdown: &InputShutdown) -> bool {
    tokio::select! {
        _ = shutdown.draining() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// One long-poll loop, until the drain window starts.
async fn poller(s: Arc<Shared>, shutdown: InputShutdown) {
    let mut backoff = Backoff::new();
    loop {
        let vt = tokio::select! {
            biased;
            _ = shutdown.draining() => return,
            vt = s.visibility_timeout() => vt,
        };
        let vt = match vt {
            Ok(vt) => vt,
            Err(e) => {
                s.error("receive_failed", 1);
                crate::warn_limited!(
                    "sqs_receive",
                    "input {}: cannot read queue {}: {e}",
                    s.cfg.name,
                    s.cfg.queue_url
                );
                if pause(&mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let started = Instant::now();
        let receive = s
            .client
            .receive_message()
            .queue_url(&s.cfg.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(secs_i32(s.cfg.wait_time))
            .visibility_timeout(secs_i32(vt))
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send();
        // A long poll cancelled here may have taken messages already: they become visible
        // again after the visibility timeout, for another replica (delayed, never lost).
        let out = tokio::select! {
            biased;
            _ = shutdown.draining() => return,
            out = receive => out,
        };
        match out {
            Err(e) => {
                s.error("receive_failed", 1);
                crate::warn_limited!(
                    "sqs_receive",
                    "input {}: ReceiveMessage on {} failed (retrying with backoff): {}",
                    s.cfg.name,
                    s.cfg.queue_url,
                    DisplayErrorContext(&e)
                );
                if pause(&mut backoff, &shutdown).await {
                    return;
                }
            }
            Ok(out) => {
                backoff.reset();
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    let rest = MIN_EMPTY_CYCLE.saturating_sub(started.elapsed());
                    if !rest.is_zero() && pause_for(rest, &shutdown).await {
                        return;
                    }
                    continue;
                }
                handle_batch(&s, messages, vt, &shutdown).await;
            }
        }
    }
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// A received message, as far as deleting it or changing its visibility goes.
struct Receipt {
    /// Id within one batch request (SQS wants them unique per request).
    entry_id: String,
    message_id: String,
    receipt: String,
}

/// A received message whose record is on its way to the buffers.
struct InFlight {
    message: Receipt,
    /// Its de-duplication key, remembered once the record is buffered (with `dedupe`).
    key: Option<Arc<str>>,
    /// Repeats of it in the same receive (same key): no record of their own; deleted when
    /// this one's record is buffered, left or returned with it otherwise.
    repeats: Vec<Receipt>,
}

impl InFlight {
    /// This message and its repeats.
    fn receipts(&self) -> impl Iterator<Item = &Receipt> {
        std::iter::once(&self.message).chain(&self.repeats)
    }
}

/// Parses, ingests and settles one `ReceiveMessage` result: deletes what was buffered (and
/// repeats of what was taken before), leaves the rest for the visibility timeout (or
/// returns it at shutdown).
async fn handle_batch(s: &Shared, messages: Vec<Message>, vt: Duration, shutdown: &InputShutdown) {
    // Holds the drain window open while this batch is in flight.
    let _client = shutdown.client();
    // Parsed messages: the receipt, the record, its body size and its key.
    let mut parsed: Vec<(Receipt, Record, usize, Option<String>)> =
        Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let message_id = m.message_id.clone().unwrap_or_default();
        let Some(receipt) = m.receipt_handle.clone() else {
            // SQS always sends one; without it the message can be neither deleted nor
            // extended, and it comes back after its visibility timeout.
            continue;
        };
        let body = m.body.as_deref().unwrap_or("");
        s.bytes.increment(body.len() as u64);
        let sent_ms = m
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|v| v.parse::<i64>().ok());
        match parse_message(body, s.cfg.format, &s.tag, sent_ms) {
            Ok(r) => {
                let key = s
                    .dedupe
                    .as_ref()
                    .and_then(|_| dedupe_key(s.cfg.format, &r, &message_id));
                let receipt = Receipt {
                    entry_id: i.to_string(),
                    message_id,
                    receipt,
                };
                parsed.push((receipt, r, body.len(), key));
            }
            Err(e) => {
                // Left alone: visible again after the visibility timeout, moved to the
                // dead-letter queue by the redrive policy after maxReceiveCount receives.
                s.error("bad_message", 1);
                crate::warn_limited!(
                    "sqs_bad_message",
                    "input {}: message {message_id} is not usable with format = {:?}, left in the queue for its redrive policy: {e}",
                    s.cfg.name,
                    s.cfg.format.name()
                );
            }
        }
    }
    let (pending, records, held_bytes) = match &s.dedupe {
        Some(d) => {
            let (pending, records, held_bytes, taken_before) = split_repeats(d, parsed);
            // Stored already (taken within the window): deleted now, without a record.
            let taken_before: Vec<&Receipt> = taken_before.iter().collect();
            delete(s, &taken_before).await;
            (pending, records, held_bytes)
        }
        None => {
            let mut pending = Vec::with_capacity(parsed.len());
            let mut records = Vec::with_capacity(parsed.len());
            let mut held_bytes = 0usize;
            for (message, r, len, _) in parsed {
                held_bytes += len;
                records.push(r);
                pending.push(InFlight {
                    message,
                    key: None,
                    repeats: Vec::new(),
                });
            }
            (pending, records, held_bytes)
        }
    };
    if pending.is_empty() {
        return;
    }

    let work = ingest_all(s, records, held_bytes);
    tokio::pin!(work);
    let half = (vt / 2).max(Duration::from_millis(500));
    let mut extend = tokio::time::interval_at(Instant::now() + half, half);
    // A late extension is followed by the next one half a timeout later, not by a burst.
    extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcomes = loop {
        tokio::select! {
            biased;
            out = &mut work => break Some(out),
            _ = shutdown.stopped() => break None,
            _ = extend.tick() => {
                // The batch waits (full buffers, a slow disk): keep its messages hidden from
                // other replicas for another visibility timeout.
                let all: Vec<&Receipt> = pending.iter().flat_map(InFlight::receipts).collect();
                change_visibility(s, &all, vt).await;
            }
        }
    };
    let Some(outcomes) = outcomes else {
        // The drain window is over: what is not settled goes back to the queue now, for
        // another replica, instead of after its visibility timeout.
        let all: Vec<&Receipt> = pending.iter().flat_map(InFlight::receipts).collect();
        change_visibility(s, &all, Duration::ZERO).await;
        return;
    };
    let mut done = Vec::new();
    let mut give_back = Vec::new();
    let mut taken_keys = Vec::new();
    for (m, outcome) in pending.iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                done.extend(m.receipts());
                taken_keys.extend(m.key.clone());
            }
            // Stopping: another replica (or this one after its restart) takes it.
            Err(IngestError::ShuttingDown) => give_back.extend(m.receipts()),
            // Too large for every output, a disk that is full or failing: left to come back
            // after the visibility timeout, and to the redrive policy if it never fits.
            Err(_) => {}
        }
    }
    // Remembered once buffered, before the delete: a delete that fails leaves the message
    // to come back, and then it is a repeat.
    if let Some(d) = &s.dedupe {
        d.remember(taken_keys);
    }
    delete(s, &done).await;
    change_visibility(s, &give_back, Duration::ZERO).await;
}

/// What [`split_repeats`] makes of a receive: the messages to ingest, their records and
/// body bytes, and the messages whose key was taken within the window.
type Split = (Vec<InFlight>, Vec<Record>, usize, Vec<Receipt>);

/// Sorts parsed messages by their key: fresh ones (to ingest), repeats of a fresh one of
/// the same receive (attached to it), and repeats of a key taken before (counted by
/// `dedupe` as duplicates; to delete).
fn split_repeats(d: &Dedupe, parsed: Vec<(Receipt, Record, usize, Option<String>)>) -> Split {
    let mut messages = Vec::with_capacity(parsed.len());
    let mut keyed = Vec::with_capacity(parsed.len());
    for (i, (receipt, r, len, key)) in parsed.into_iter().enumerate() {
        messages.push(Some((receipt, r, len)));
        keyed.push((i, key));
    }
    let f = d.filter(keyed.clone(), |(_, k)| k.as_deref());
    let mut pending: Vec<InFlight> = Vec::with_capacity(f.fresh.len());
    let mut records = Vec::with_capacity(f.fresh.len());
    let mut held_bytes = 0usize;
    // `f.keys` holds the keys of the fresh items that have one, in their order.
    let mut keys = f.keys.into_iter();
    // Key -> index in `pending` of the message of this receive that carries it.
    let mut first: HashMap<String, usize> = HashMap::new();
    for (i, key) in f.fresh {
        let Some((message, r, len)) = messages[i].take() else {
            continue;
        };
        let key = key.and_then(|k| {
            first.insert(k, pending.len());
            keys.next()
        });
        held_bytes += len;
        records.push(r);
        pending.push(InFlight {
            message,
            key,
            repeats: Vec::new(),
        });
    }
    let mut taken_before = Vec::new();
    for (i, key) in keyed {
        let Some((message, _, _)) = messages[i].take() else {
            continue;
        };
        match key.as_ref().and_then(|k| first.get(k)) {
            Some(&j) => pending[j].repeats.push(message),
            None => taken_before.push(message),
        }
    }
    (pending, records, held_bytes, taken_before)
}

/// Routes each message's record with its own ack token and waits until each is buffered
/// (or refused). One outcome per record, in order.
async fn ingest_all(
    s: &Shared,
    records: Vec<Record>,
    held_bytes: usize,
) -> Vec<Result<(), IngestError>> {
    // The parsed records are held against the process budget while they are routed (the
    // same factor as the HTTP input's decoded bodies); waiting here is back-pressure: this
    // poller receives nothing more meanwhile.
    let held = s.budget.acquire(held_bytes.saturating_mul(3)).await;
    let mut outcomes: Vec<Result<(), IngestError>> = vec![Ok(()); records.len()];
    let mut waits = Vec::with_capacity(records.len());
    // ECS events update the cluster state once buffered (a refused message comes again).
    // The sqs input is an event input whatever its format (a `json` queue may carry raw
    // events too).
    let ecs = crate::admin::ecs_state::Observed::of(true, &records);
    for (i, r) in records.into_iter().enumerate() {
        let (token, wait) = ack_pair();
        match s.ingest.ingest_acked(vec![r], token).await {
            Ok(()) => waits.push((i, wait)),
            Err(e) => outcomes[i] = Err(e),
        }
    }
    drop(held);
    for (i, wait) in waits {
        outcomes[i] = wait.await;
    }
    ecs.apply(|i| outcomes[i].is_ok());
    for outcome in &outcomes {
        match outcome {
            Ok(()) => s.records.increment(1),
            Err(e) => {
                s.error(e.kind(), 1);
                if !matches!(e, IngestError::ShuttingDown) {
                    crate::warn_limited!(
                        "sqs_ingest",
                        "input {}: a message's record was refused, the message stays in the queue: {e}",
                        s.cfg.name
                    );
                }
            }
        }
    }
    outcomes
}

/// Deletes buffered messages, retrying the call on errors (a failed delete means a
/// duplicate later, never a loss).
async fn delete(s: &Shared, messages: &[&Receipt]) {
    if messages.is_empty() {
        return;
    }
    let entries: Result<Vec<_>, _> = messages
        .iter()
        .map(|m| {
            DeleteMessageBatchRequestEntry::builder()
                .id(&m.entry_id)
                .receipt_handle(&m.receipt)
                .build()
        })
        .collect();
    let entries = match entries {
        Ok(e) => e,
        Err(e) => {
            // Cannot happen: both required fields are set above.
            s.error("delete_failed", messages.len() as u64);
            tracing::error!(input = %s.cfg.name, "DeleteMessageBatch request: {e}");
            return;
        }
    };
    let mut backoff = Backoff::new();
    for attempt in 1..=DELETE_ATTEMPTS {
        let call = s
            .client
            .delete_message_batch()
            .queue_url(&s.cfg.queue_url)
            .set_entries(Some(entries.clone()))
            .send();
        let error = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(out)) => {
                for f in out.failed() {
                    s.error("delete_failed", 1);
                    let message_id = messages
                        .iter()
                        .find(|m| m.entry_id == f.id())
                        .map_or("?", |m| m.message_id.as_str());
                    crate::warn_limited!(
                        "sqs_delete",
                        "input {}: message {message_id} was buffered but not deleted ({}: {}); it will be received again",
                        s.cfg.name,
                        f.code(),
                        f.message().unwrap_or("")
                    );
                }
                return;
            }
            Ok(Err(e)) => DisplayErrorContext(&e).to_string(),
            Err(_) => format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        };
        if attempt == DELETE_ATTEMPTS {
            s.error("delete_failed", messages.len() as u64);
            crate::warn_limited!(
                "sqs_delete",
                "input {}: DeleteMessageBatch failed {attempt} times, {} buffered messages will be received again: {error}",
                s.cfg.name,
                messages.len()
            );
            return;
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Sets the visibility timeout of `messages` to `to` from now: extends a slow batch, or
/// returns messages to the queue with 0. One attempt: a failed extension is retried at the
/// next tick, a failed return only delays the message until its timeout.
async fn change_visibility(s: &Shared, messages: &[&Receipt], to: Duration) {
    if messages.is_empty() {
        return;
    }
    let entries: Result<Vec<_>, _> = messages
        .iter()
        .map(|m| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(&m.entry_id)
                .receipt_handle(&m.receipt)
                .visibility_timeout(secs_i32(to))
                .build()
        })
        .collect();
    let failed = match entries {
        Err(e) => Err(e.to_string()),
        Ok(entries) => {
            let call = s
                .client
                .change_message_visibility_batch()
                .queue_url(&s.cfg.queue_url)
                .set_entries(Some(entries))
                .send();
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(out)) => Ok(out.failed().len()),
                Ok(Err(e)) => Err(DisplayErrorContext(&e).to_string()),
                Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
            }
        }
    };
    let (n, why) = match failed {
        Ok(0) => return,
        Ok(n) => (n, "some entries failed".to_owned()),
        Err(e) => (messages.len(), e),
    };
    s.error("visibility_failed", n as u64);
    crate::warn_limited!(
        "sqs_visibility",
        "input {}: ChangeMessageVisibilityBatch to {}s failed for {n} messages: {why}",
        s.cfg.name,
        to.as_secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;
    use crate::input::dedupe::DedupeConfig;

    fn message(i: usize, key: Option<&str>) -> (Receipt, Record, usize, Option<String>) {
        let receipt = Receipt {
            entry_id: i.to_string(),
            message_id: format!("m{i}"),
            receipt: format!("r{i}"),
        };
        let r = Record::new(Arc::from("t"), 0, Fields::new());
        (receipt, r, 10 + i, key.map(str::to_owned))
    }

    fn ids<'a>(r: impl IntoIterator<Item = &'a Receipt>) -> Vec<&'a str> {
        r.into_iter().map(|r| r.message_id.as_str()).collect()
    }

    #[test]
    fn repeats_are_deleted_if_taken_before_and_follow_their_first_copy_otherwise() {
        let d = Dedupe::new(DedupeConfig::default(), "q", None);
        d.remember(vec![Arc::from("a")]);
        let batch = vec![
            message(0, Some("a")),
            message(1, Some("b")),
            message(2, Some("b")),
            message(3, None),
            message(4, Some("c")),
            message(5, Some("a")),
        ];
        let (pending, records, held, taken_before) = split_repeats(&d, batch);
        assert_eq!(ids(&taken_before), ["m0", "m5"], "stored already: deleted");
        assert_eq!(ids(pending.iter().map(|p| &p.message)), ["m1", "m3", "m4"]);
        assert_eq!(records.len(), 3);
        assert_eq!(held, 11 + 13 + 14, "only the records ingested are held");
        assert_eq!(
            ids(&pending[0].repeats),
            ["m2"],
            "rides with its first copy"
        );
        assert_eq!(ids(pending[0].receipts()), ["m1", "m2"]);
        assert!(pending[1].repeats.is_empty() && pending[2].repeats.is_empty());
        let keys: Vec<Option<&str>> = pending.iter().map(|p| p.key.as_deref()).collect();
        assert_eq!(keys, [Some("b"), None, Some("c")]);
        // Nothing was remembered by splitting: a refused batch is taken when it comes back.
        assert_eq!(d.len(), 1);
        let (pending, _, _, taken_before) =
            split_repeats(&d, vec![message(0, Some("b")), message(1, Some("c"))]);
        assert_eq!((pending.len(), taken_before.len()), (2, 0));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let mut step = MIN_BACKOFF;
        for _ in 0..12 {
            let p = b.next();
            assert!(
                p >= step / 2 && p <= step,
                "{p:?} within [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(MAX_BACKOFF);
        }
        assert_eq!(b.step, MAX_BACKOFF);
        b.reset();
        assert!(b.next() <= MIN_BACKOFF);
    }
}
