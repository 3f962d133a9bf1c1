//! `type = "ecs_metadata"`: adds the ECS task's identity to every record, as FireLens'
//! generated `record_modifier` filter does for Fluent Bit (firelens-and-protocols §3.2, §3.4).
//!
//! Fields added (strings, only where the record does not have the field already, so a record
//! forwarded from another task's router keeps its own task's values):
//! - `ecs_cluster`: the cluster's name (also when the endpoint gives the cluster's ARN, as on
//!   Fargate);
//! - `ecs_task_arn`, `ecs_task_id` (the ARN's last `/` segment), `ecs_task_definition`
//!   (`family:revision`);
//! - `ecs_container_name`: the task definition's name of the container whose Docker id is the
//!   record's `container_id` (Docker's fluentd driver sends the id; its `container_name` is
//!   Docker's per-task name `/ecs-family-rev-name-hash`, useless for grouping). When the id is
//!   not in the task (a record from a client that is not a task container), the FireLens tag
//!   `<container name>-firelens-<task id>` of this task gives the name instead.
//!
//! Source: `${ECS_CONTAINER_METADATA_URI_V4}/task` (or `endpoint`), see [`tmds`].
//!
//! Timing: inputs never wait on the endpoint, and no record waits long.
//! - The first `/task` request starts with the processor, in the background, and is retried
//!   (0.25 s doubling to 30 s) until it answers. Records arriving before the first attempt
//!   finished are held (with a share of their request's acknowledgement, so the client is
//!   acked only once they are buffered; other streams flow on) until it finished, at most
//!   [`STARTUP_WAIT`]. After that, records without metadata pass unchanged (counted) until the
//!   endpoint answers.
//! - A `container_id` the last answer did not list triggers one refresh (once per id: Docker
//!   creates app containers after the router started, so their ids appear in `/task` later).
//!   That container's records are held until the refresh finished, at most [`REFRESH_WAIT`].
//!   Refreshes are at least [`MIN_REFRESH_INTERVAL`] apart; asks meanwhile share the next one.
//!   A failed refresh lets its ids ask again.
//! - Records of a stream (tag + `container_id` + `source`) behind a held one are held too, so
//!   a stream keeps its order.
//! - Outside ECS (`ECS_CONTAINER_METADATA_URI_V4` unset and no `endpoint`): one warning at
//!   start, records pass unchanged. `firelane route` (dry run, no network): unchanged.
//!
//! Metrics: `firelane_ecs_metadata_requests_total{processor, result="ok"|"error"}` (`/task`
//! requests), `firelane_ecs_metadata_missing_total{processor, what="task"|"container"}`
//! (records that passed without the task's fields, or without `ecs_container_name`).

pub(crate) mod tmds;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use metrics::Counter;
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::registry::{ProcessorConfig, ProcessorType};
use super::{Batch, BuildContext, Processor, StreamKey};
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::input::ack::AckToken;
use tmds::{TaskInfo, Tmds};

/// The variable ECS sets in every container of a task (agent `container.go`).
pub(crate) const ENV_VAR: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// How long records are held for the first `/task` attempt at start-up.
pub(crate) const STARTUP_WAIT: Duration = Duration::from_secs(2);
/// How long the records of a new container id are held for the refresh it triggered.
pub(crate) const REFRESH_WAIT: Duration = Duration::from_secs(3);
/// Least time between two refreshes.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of one metadata request (the endpoint is local and answers in milliseconds).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often held records are looked at.
const TICK: Duration = Duration::from_millis(20);
/// Retry delays of the start-up requests: from the first to the largest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Container ids remembered as "refresh asked for"; beyond it the map is cleared (a client
/// sending random ids costs at most one refresh per [`MIN_REFRESH_INTERVAL`]).
const MAX_ASKED: usize = 4096;

/// The field names, in the order they are added.
pub(crate) const FIELDS: [&str; 5] = [
    "ecs_cluster",
    "ecs_task_arn",
    "ecs_task_id",
    "ecs_task_definition",
    "ecs_container_name",
];

// === registry ===

/// The registry entry (`type = "ecs_metadata"`).
pub(crate) struct EcsMetadataType;

impl ProcessorType for EcsMetadataType {
    fn name(&self) -> &'static str {
        "ecs_metadata"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["endpoint"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig> {
        Box::new(EcsMetadataConfig::read(t, d))
    }
}

/// One `ecs_metadata` processor's settings, and the metadata every input listing it shares
/// (one background refresher per `[processors.NAME]`).
pub(crate) struct EcsMetadataConfig {
    /// The Task Metadata Endpoint v4 base URL: `endpoint`, else `ECS_CONTAINER_METADATA_URI_V4`
    /// as read with the config. `None` outside ECS.
    pub endpoint: Option<String>,
    shared: OnceLock<EcsMetadata>,
}

impl std::fmt::Debug for EcsMetadataConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsMetadataConfig")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl EcsMetadataConfig {
    /// Settings for `endpoint` (`None`: outside ECS).
    pub(crate) fn new(endpoint: Option<String>) -> EcsMetadataConfig {
        EcsMetadataConfig {
            endpoint,
            shared: OnceLock::new(),
        }
    }

    /// Reads `endpoint` of `t`; the default comes from the environment of the config.
    pub(crate) fn read(t: &mut Table<'_, '_>, d: &mut Diagnostics) -> EcsMetadataConfig {
        let endpoint = match t.opt_string(d, "endpoint") {
            Some(e) => {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    d.error(
                        t.value_span("endpoint"),
                        format!(
                            "{}.endpoint: {e:?} is not an http:// URL (like http://169.254.170.2/v4/ID)",
                            t.path()
                        ),
                    );
                }
                Some(e)
            }
            None => from_env(t.env()),
        };
        EcsMetadataConfig::new(endpoint)
    }
}

impl ProcessorConfig for EcsMetadataConfig {
    fn type_name(&self) -> &'static str {
        "ecs_metadata"
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => format!(
                "adds ecs_cluster, ecs_task_arn, ecs_task_id, ecs_task_definition, ecs_container_name from {e}/task"
            ),
            None => format!("{ENV_VAR} unset (not in ECS): records pass unchanged"),
        }
    }

    fn holds_for(&self) -> Option<Duration> {
        // Outside ECS nothing is held.
        self.endpoint
            .as_ref()
            .map(|_| STARTUP_WAIT.max(REFRESH_WAIT) + TICK)
    }

    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor> {
        if ctx.dry_run {
            return Box::new(EcsMetadataProcessor::new(None));
        }
        let meta = self
            .shared
            .get_or_init(|| EcsMetadata::start(&ctx.name, self.endpoint.as_deref(), &ctx.shutdown));
        Box::new(EcsMetadataProcessor::new(Some(meta.clone())))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `ECS_CONTAINER_METADATA_URI_V4` from `env`, `None` when unset or empty.
pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    env(ENV_VAR).filter(|v| !v.trim().is_empty())
}

// === shared metadata ===

/// The task's metadata as last read, shared by every input's processor; cheap to clone.
#[derive(Clone)]
pub(crate) struct EcsMetadata {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// `false` outside ECS.
    enabled: bool,
    task: RwLock<Option<Arc<TaskInfo>>>,
    /// Container ids a refresh was asked for → the number of finished requests that means
    /// "the refresh for it is done".
    asked: parking_lot::Mutex<HashMap<String, u64>>,
    /// Wakes the refresher; capacity 1, so asks made while one is pending share it.
    refresh: mpsc::Sender<()>,
    /// `(started, finished)` `/task` requests.
    progress: watch::Sender<(u64, u64)>,
    missing_task: Counter,
    missing_container: Counter,
}

impl std::fmt::Debug for EcsMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsMetadata")
            .field("name", &self.inner.name)
            .field("task", &*self.inner.task.read())
            .finish()
    }
}

impl EcsMetadata {
    /// Starts processor `name`'s metadata: outside ECS (`endpoint` `None`), warns once; else
    /// spawns the background refresher (on the current tokio runtime), which ends with
    /// `shutdown` or when the last clone is dropped.
    pub(crate) fn start(
        name: &str,
        endpoint: Option<&str>,
        shutdown: &CancellationToken,
    ) -> EcsMetadata {
        let client = match endpoint.map(|e| Tmds::new(e, REQUEST_TIMEOUT)) {
            None => {
                tracing::warn!(
                    processor = name,
                    "ecs_metadata: {ENV_VAR} is not set (not running in an ECS task?) and no `endpoint` is configured: records pass without ecs_cluster, ecs_task_arn, ecs_task_id, ecs_task_definition, ecs_container_name"
                );
                None
            }
            Some(Err(e)) => {
                tracing::error!(
                    processor = name,
                    "ecs_metadata: {e}; records pass unchanged"
                );
                None
            }
            Some(Ok(c)) => Some(c),
        };
        let (tx, rx) = mpsc::channel(1);
        let missing = |what: &'static str| metrics::counter!("firelane_ecs_metadata_missing_total", "processor" => name.to_owned(), "what" => what);
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            enabled: client.is_some(),
            task: RwLock::new(None),
            asked: parking_lot::Mutex::new(HashMap::new()),
            refresh: tx,
            progress: watch::channel((0, 0)).0,
            missing_task: missing("task"),
            missing_container: missing("container"),
        });
        if let Some(client) = client {
            tokio::spawn(refresher(
                Arc::downgrade(&inner),
                client,
                rx,
                shutdown.clone(),
            ));
        }
        EcsMetadata { inner }
    }

    /// The task as last read, if any.
    pub(crate) fn task(&self) -> Option<Arc<TaskInfo>> {
        self.inner.task.read().clone()
    }

    /// Finished `/task` requests (answered or failed).
    fn finished(&self) -> u64 {
        self.inner.progress.borrow().1
    }

    /// Asks one refresh for the `ids` not asked for yet, and wakes the refresher.
    fn ask_refresh(&self, ids: Vec<String>) {
        let (started, finished) = *self.inner.progress.borrow();
        // A request already running may predate the container: wait for the next one.
        let want = started.max(finished) + 1;
        let mut asked = self.inner.asked.lock();
        if asked.len() + ids.len() > MAX_ASKED {
            asked.clear();
        }
        let mut any = false;
        for id in ids {
            asked.entry(id).or_insert_with(|| {
                any = true;
                want
            });
        }
        drop(asked);
        if any {
            // Full: a refresh is already pending and will serve this ask too.
            let _ = self.inner.refresh.try_send(());
        }
    }

    /// What `record` waits for: `Some(n)` = until `n` requests finished.
    fn wait_for(&self, task: Option<&TaskInfo>, finished: u64, record: &Record) -> Option<u64> {
        let Some(task) = task else {
            return (finished == 0).then_some(1);
        };
        let id = unknown_id(task, record)?;
        let want = *self.inner.asked.lock().get(id)?;
        (finished < want).then_some(want)
    }
}

/// The record's `container_id` if `task` does not list it and the record has no
/// `ecs_container_name` of its own.
fn unknown_id<'r>(task: &TaskInfo, record: &'r Record) -> Option<&'r str> {
    let id = record.get("container_id").and_then(|v| v.as_str())?;
    (!id.is_empty()
        && !task.containers.contains_key(id)
        && !record.contains_key("ecs_container_name"))
    .then_some(id)
}

/// The container's task definition name for `record`: by `container_id`, else from this
/// task's FireLens tag `<name>-firelens-<task id>`.
fn container_name<'t>(task: &'t TaskInfo, record: &'t Record) -> Option<&'t str> {
    if let Some(id) = record.get("container_id").and_then(|v| v.as_str())
        && let Some(name) = task.containers.get(id)
    {
        return Some(name);
    }
    record
        .tag
        .strip_suffix(task.task_id.as_str())
        .and_then(|t| t.strip_suffix("-firelens-"))
        .filter(|n| !n.is_empty())
}

/// Adds the task's fields to `record` where missing; `false` when the container's name
/// could not be found.
fn enrich(task: &TaskInfo, record: &mut Record) -> bool {
    let has_name = record.contains_key("ecs_container_name");
    let name = if has_name {
        None
    } else {
        container_name(task, record).map(str::to_owned)
    };
    let named = has_name || name.is_some();
    let values = [
        Some(task.cluster.as_str()),
        Some(task.task_arn.as_str()),
        Some(task.task_id.as_str()),
        Some(task.task_definition.as_str()),
        name.as_deref(),
    ];
    // Fields the record has keep their value; a packed body stays packed (the entries are
    // appended to its msgpack, not decoded into a tree).
    let adds: Vec<(&str, &str)> = FIELDS
        .iter()
        .zip(values)
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    record.append_str_fields(&adds);
    named
}

/// Reads `/task` until it answers, then once per refresh ask, at most every
/// [`MIN_REFRESH_INTERVAL`]. Ends with `shutdown` or when the processor is dropped.
async fn refresher(
    inner: Weak<Inner>,
    client: Tmds,
    mut wake: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) {
    let name = match inner.upgrade() {
        Some(i) => i.name.clone(),
        None => return,
    };
    let ok = metrics::counter!("firelane_ecs_metadata_requests_total", "processor" => name.clone(), "result" => "ok");
    let failed = metrics::counter!("firelane_ecs_metadata_requests_total", "processor" => name.clone(), "result" => "error");
    let mut delay = RETRY_FIRST;
    let mut have_task = false;
    loop {
        {
            let Some(i) = inner.upgrade() else { return };
            i.progress.send_modify(|(s, _)| *s += 1);
        }
        let result = tokio::select! {
            r = client.task() => r,
            () = shutdown.cancelled() => return,
        };
        let Some(i) = inner.upgrade() else { return };
        match result {
            Ok(task) => {
                ok.increment(1);
                if i.task.read().as_deref() != Some(&task) {
                    tracing::info!(
                        processor = %name,
                        cluster = %task.cluster,
                        task_arn = %task.task_arn,
                        task_definition = %task.task_definition,
                        containers = task.containers.len(),
                        "ecs_metadata: task metadata read"
                    );
                }
                *i.task.write() = Some(Arc::new(task));
                have_task = true;
            }
            Err(e) => {
                failed.increment(1);
                if have_task {
                    // The ids this refresh was for may ask again (still at most one
                    // request per MIN_REFRESH_INTERVAL).
                    i.asked.lock().clear();
                }
                crate::warn_limited!(
                    "ecs_metadata_request",
                    "ecs_metadata {name}: {e}{}",
                    if have_task {
                        "; keeping the task metadata read before"
                    } else {
                        "; retrying, records pass without ECS fields meanwhile"
                    }
                );
            }
        }
        i.progress.send_modify(|(_, d)| *d += 1);
        drop(i);
        let pause = if have_task {
            MIN_REFRESH_INTERVAL
        } else {
            let d = delay;
            delay = (delay * 2).min(RETRY_MAX);
            d
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
        if have_task {
            // Wait for a new container id.
            tokio::select! {
                w = wake.recv() => if w.is_none() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

// === the processor ===

/// A record waiting for metadata, with shares of its request's acknowledgement.
struct Held {
    record: Record,
    acks: Vec<AckToken>,
    stream: StreamKey,
    /// Released once this many `/task` requests finished (0: only waits for its stream).
    want: u64,
    /// Released by then whatever the endpoint did.
    until: Instant,
    /// `record`'s [`Record::approx_size`] when it was held.
    cost: usize,
}

/// One input's `ecs_metadata` stage.
pub(crate) struct EcsMetadataProcessor {
    /// `None` in a dry run.
    meta: Option<EcsMetadata>,
    held: VecDeque<Held>,
    /// Held records per stream.
    held_streams: HashMap<StreamKey, usize>,
    /// The sum of the held records' `cost` ([`Processor::held_bytes`]).
    held_bytes: usize,
}

impl EcsMetadataProcessor {
    fn new(meta: Option<EcsMetadata>) -> EcsMetadataProcessor {
        EcsMetadataProcessor {
            meta: meta.filter(|m| m.inner.enabled),
            held: VecDeque::new(),
            held_streams: HashMap::new(),
            held_bytes: 0,
        }
    }

    /// Adds the fields (counting what is missing) with the task as now known.
    fn finish(meta: &EcsMetadata, task: Option<&TaskInfo>, record: &mut Record) {
        match task {
            Some(t) => {
                if !enrich(t, record) {
                    meta.inner.missing_container.increment(1);
                }
            }
            None => {
                meta.inner.missing_task.increment(1);
                crate::warn_limited!(
                    "ecs_metadata_missing",
                    "ecs_metadata {}: the task metadata endpoint has not answered yet; records pass without ECS fields",
                    meta.inner.name
                );
            }
        }
    }

    /// Releases held records, in order, whose wait is over (`all`: every one).
    fn release(&mut self, now: Instant, all: bool) -> Batch {
        let mut out = Batch::default();
        let Some(meta) = &self.meta else {
            return out;
        };
        if self.held.is_empty() {
            return out;
        }
        let finished = meta.finished();
        let task = meta.task();
        let mut blocked: Vec<StreamKey> = Vec::new();
        let mut keep = VecDeque::with_capacity(self.held.len());
        for mut h in self.held.drain(..) {
            let ready =
                all || (!blocked.contains(&h.stream) && (finished >= h.want || now >= h.until));
            if !ready {
                if !blocked.contains(&h.stream) {
                    blocked.push(h.stream.clone());
                }
                keep.push_back(h);
                continue;
            }
            if let Some(n) = self.held_streams.get_mut(&h.stream) {
                *n -= 1;
                if *n == 0 {
                    self.held_streams.remove(&h.stream);
                }
            }
            self.held_bytes -= h.cost;
            Self::finish(meta, task.as_deref(), &mut h.record);
            out.records.push(h.record);
            out.acks.extend(h.acks);
        }
        self.held = keep;
        out
    }
}

#[async_trait::async_trait]
impl Processor for EcsMetadataProcessor {
    async fn process(&mut self, batch: Batch) -> Batch {
        let Some(meta) = self.meta.clone() else {
            return batch;
        };
        let now = Instant::now();
        let mut task = meta.task();
        if let Some(t) = &task {
            let mut ids: Vec<String> = Vec::new();
            for r in &batch.records {
                if let Some(id) = unknown_id(t, r)
                    && !ids.iter().any(|i| i == id)
                {
                    ids.push(id.to_owned());
                }
            }
            if !ids.is_empty() {
                meta.ask_refresh(ids);
            }
        }
        let finished = meta.finished();
        // Held records of this input go first (older); then this batch.
        let mut out = self.release(now, false);
        task = meta.task().or(task);
        let Batch { records, acks } = batch;
        let mut shares: Option<Vec<AckToken>> = None;
        for mut r in records {
            let want = meta.wait_for(task.as_deref(), finished, &r);
            let stream =
                (want.is_some() || !self.held_streams.is_empty()).then(|| StreamKey::of(&r));
            let behind = stream
                .as_ref()
                .is_some_and(|s| self.held_streams.contains_key(s));
            match (want, stream) {
                (None, _) if !behind => {
                    Self::finish(&meta, task.as_deref(), &mut r);
                    out.records.push(r);
                }
                (want, Some(stream)) => {
                    let wait = if task.is_none() {
                        STARTUP_WAIT
                    } else {
                        REFRESH_WAIT
                    };
                    let shares =
                        shares.get_or_insert_with(|| acks.iter().map(AckToken::share).collect());
                    *self.held_streams.entry(stream.clone()).or_insert(0) += 1;
                    let cost = r.approx_size();
                    self.held_bytes += cost;
                    self.held.push_back(Held {
                        cost,
                        record: r,
                        acks: shares.iter().map(AckToken::share).collect(),
                        stream,
                        want: want.unwrap_or(0),
                        until: now + wait,
                    });
                }
                // `behind` implies a stream key was computed.
                (_, None) => {
                    Self::finish(&meta, task.as_deref(), &mut r);
                    out.records.push(r);
                }
            }
        }
        if let Some(s) = shares {
            for a in s {
                a.release();
            }
        }
        out.acks.extend(acks);
        out
    }

    fn flush_due(&mut self, now: Instant) -> Batch {
        self.release(now, false)
    }

    fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    fn flush_all(&mut self) -> Batch {
        self.release(Instant::now(), true)
    }

    fn tick(&self) -> Option<Duration> {
        self.meta.as_ref().map(|_| TICK)
    }
}

#[cfg(test)]
pub(crate) mod tests;
