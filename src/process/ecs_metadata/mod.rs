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
//! Timing, chosen so that inputs never wait on the endpoint for long:
//! - the first `/task` request starts with the processor, in the background, and is retried
//!   (0.25 s doubling to 30 s) until it answers; records arriving before the first attempt
//!   finished wait for it, at most [`STARTUP_WAIT`]; after that, records without metadata pass
//!   unchanged (counted) until the endpoint answers;
//! - a `container_id` the last answer did not list triggers one refresh (once per id: Docker
//!   creates app containers after the router started, so their ids appear in `/task` later).
//!   The records of that batch wait for the refresh, at most [`REFRESH_WAIT`]. Refreshes are at
//!   least [`MIN_REFRESH_INTERVAL`] apart; requests meanwhile share the next one.
//! - outside ECS (`ECS_CONTAINER_METADATA_URI_V4` unset and no `endpoint`): one warning at
//!   start, records pass unchanged.
//!
//! Metrics: `firelane_ecs_metadata_requests_total{processor, result="ok"|"error"}` (`/task`
//! requests), `firelane_ecs_metadata_missing_total{processor, what="task"|"container"}`
//! (records that passed without the task's fields, or without `ecs_container_name`).

pub(crate) mod tmds;

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::Counter;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use tmds::{TaskInfo, Tmds};

/// The variable ECS sets in every container of a task (agent `container.go`).
pub(crate) const ENV_VAR: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// How long records wait for the first `/task` attempt at start-up.
pub(crate) const STARTUP_WAIT: Duration = Duration::from_secs(2);
/// How long the records with a new container id wait for the refresh it triggered.
pub(crate) const REFRESH_WAIT: Duration = Duration::from_secs(3);
/// Least time between two refreshes.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of one metadata request (the endpoint is local and answers in milliseconds).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry delays of the start-up requests: from the first to the largest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Container ids remembered as "refresh already asked for"; beyond it the set is cleared
/// (a client sending random ids costs at most one refresh per [`MIN_REFRESH_INTERVAL`]).
const MAX_ASKED: usize = 4096;

/// The field names, in the order they are added.
pub(crate) const FIELDS: [&str; 5] = [
    "ecs_cluster",
    "ecs_task_arn",
    "ecs_task_id",
    "ecs_task_definition",
    "ecs_container_name",
];

/// The keys of `[processors.NAME]` with `type = "ecs_metadata"`, besides `type`.
pub(crate) const KEYS: &[&str] = &["endpoint"];

/// One `ecs_metadata` processor's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EcsMetadataConfig {
    /// The Task Metadata Endpoint v4 base URL: `endpoint`, else `ECS_CONTAINER_METADATA_URI_V4`
    /// as read with the config. `None` outside ECS.
    pub endpoint: Option<String>,
}

impl EcsMetadataConfig {
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
        EcsMetadataConfig { endpoint }
    }

    /// For `firelane check`'s plan.
    pub(crate) fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("task metadata from {e}/task"),
            None => format!("{ENV_VAR} unset: records pass unchanged"),
        }
    }
}

/// `ECS_CONTAINER_METADATA_URI_V4` from `env`, `None` when unset or empty.
pub(crate) fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    env(ENV_VAR).filter(|v| !v.trim().is_empty())
}

/// A running `ecs_metadata` processor: cheap to clone, shares one background refresher.
#[derive(Clone)]
pub(crate) struct EcsMetadata {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// `None` outside ECS.
    enabled: bool,
    task: RwLock<Option<Arc<TaskInfo>>>,
    /// Container ids a refresh was asked for (each once).
    asked: Mutex<HashSet<String>>,
    /// Wakes the refresher; capacity 1, so requests made while one is pending share it.
    refresh: mpsc::Sender<()>,
    /// `(started, finished)` `/task` requests, for waiting on one that started after a need.
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
    /// Starts processor `name`: outside ECS, warns once; else spawns the background
    /// refresher (on the current tokio runtime), which ends when the last clone is dropped.
    pub(crate) fn start(name: &str, cfg: &EcsMetadataConfig) -> EcsMetadata {
        let client = match cfg
            .endpoint
            .as_deref()
            .map(|e| Tmds::new(e, REQUEST_TIMEOUT))
        {
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
        let labels = |what: &'static str| metrics::counter!("firelane_ecs_metadata_missing_total", "processor" => name.to_owned(), "what" => what);
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            enabled: client.is_some(),
            task: RwLock::new(None),
            asked: Mutex::new(HashSet::new()),
            refresh: tx,
            progress: watch::channel((0, 0)).0,
            missing_task: labels("task"),
            missing_container: labels("container"),
        });
        if let Some(client) = client {
            tokio::spawn(refresher(Arc::downgrade(&inner), client, rx));
        }
        EcsMetadata { inner }
    }

    /// The task as last read, if any.
    pub(crate) fn task(&self) -> Option<Arc<TaskInfo>> {
        self.inner.task.read().clone()
    }

    /// Adds the fields to every record of `records`, waiting (bounded, see the module doc)
    /// for the first answer at start-up and for a refresh when a new container id shows up.
    pub(crate) async fn process(&self, records: &mut [Record]) {
        let inner = &self.inner;
        if !inner.enabled {
            return;
        }
        let mut task = self.task();
        if task.is_none() {
            // Start-up: wait for the first attempt, whatever its outcome.
            let mut rx = inner.progress.subscribe();
            let _ = tokio::time::timeout(STARTUP_WAIT, rx.wait_for(|&(_, done)| done >= 1)).await;
            task = self.task();
        }
        if let Some(t) = &task {
            let new_ids = unknown_ids(t, records);
            if !new_ids.is_empty() && self.ask_refresh(new_ids) {
                // Wait for a request that started after the ask: one already running may
                // predate the container.
                let mut rx = inner.progress.subscribe();
                let (started, done) = *rx.borrow_and_update();
                let want = if started > done {
                    started + 1
                } else {
                    done + 1
                };
                let _ = tokio::time::timeout(REFRESH_WAIT, rx.wait_for(|&(_, d)| d >= want)).await;
                task = self.task();
            }
        }
        match &task {
            Some(t) => {
                for r in records.iter_mut() {
                    if !enrich(t, r) {
                        inner.missing_container.increment(1);
                    }
                }
            }
            None => {
                inner.missing_task.increment(records.len() as u64);
                crate::warn_limited!(
                    "ecs_metadata_missing",
                    "ecs_metadata {}: the task metadata endpoint has not answered yet; records pass without ECS fields",
                    inner.name
                );
            }
        }
    }

    /// Remembers `ids` as asked for and wakes the refresher; `false` when every id had been
    /// asked for already (its refresh did not list it: not a container of this task).
    fn ask_refresh(&self, ids: Vec<String>) -> bool {
        let mut asked = self.inner.asked.lock();
        if asked.len() + ids.len() > MAX_ASKED {
            asked.clear();
        }
        let mut any = false;
        for id in ids {
            any |= asked.insert(id);
        }
        drop(asked);
        if any {
            // Full: a refresh is already pending and will serve this ask too.
            let _ = self.inner.refresh.try_send(());
        }
        any
    }
}

/// The `container_id`s of `records` that `task` does not list, each once.
fn unknown_ids(task: &TaskInfo, records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        if r.contains_key("ecs_container_name") {
            continue;
        }
        if let Some(id) = r.get("container_id").and_then(|v| v.as_str())
            && !id.is_empty()
            && !task.containers.contains_key(id)
            && !out.iter().any(|o| o == id)
        {
            out.push(id.to_owned());
        }
    }
    out
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
    let name = if record.contains_key("ecs_container_name") {
        None
    } else {
        container_name(task, record).map(str::to_owned)
    };
    let named = name.is_some() || record.contains_key("ecs_container_name");
    let values = [
        Some(task.cluster.as_str()),
        Some(task.task_arn.as_str()),
        Some(task.task_id.as_str()),
        Some(task.task_definition.as_str()),
        name.as_deref(),
    ];
    // A packed body is decoded to a tree only if something is added.
    let adds: Vec<(&str, &str)> = FIELDS
        .iter()
        .zip(values)
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .filter(|(k, _)| !record.contains_key(k))
        .collect();
    if !adds.is_empty() {
        let fields = record.fields_mut();
        for (k, v) in adds {
            fields.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    }
    named
}

/// Reads `/task` until it answers, then once per refresh request, at most every
/// [`MIN_REFRESH_INTERVAL`]. Ends when the processor is dropped.
async fn refresher(inner: Weak<Inner>, client: Tmds, mut wake: mpsc::Receiver<()>) {
    let mut delay = RETRY_FIRST;
    let name = match inner.upgrade() {
        Some(i) => i.name.clone(),
        None => return,
    };
    let ok = metrics::counter!("firelane_ecs_metadata_requests_total", "processor" => name.clone(), "result" => "ok");
    let failed = metrics::counter!("firelane_ecs_metadata_requests_total", "processor" => name.clone(), "result" => "error");
    let mut have_task = false;
    loop {
        {
            let Some(i) = inner.upgrade() else { return };
            i.progress.send_modify(|(s, _)| *s += 1);
        }
        let result = client.task().await;
        let Some(i) = inner.upgrade() else { return };
        match result {
            Ok(task) => {
                ok.increment(1);
                let changed = i.task.read().as_deref() != Some(&task);
                if changed {
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
                // The ids this refresh was for may ask again (still at most one request
                // per MIN_REFRESH_INTERVAL).
                i.asked.lock().clear();
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
        if have_task {
            // Rate limit, then wait for a new container id.
            tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
            if wake.recv().await.is_none() {
                return;
            }
        } else {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
