//! Cluster state built from the ECS events the event inputs receive (issue #12 item 5).
//!
//! Every event with `source = "aws.ecs"` that an event input (HTTP `format = "eventbridge"`
//! or `"sns"`, the `sqs` input) has taken updates one process-wide [`EcsState`]:
//!
//! - **Tasks** (`ECS Task State Change`), keyed by `detail.taskArn`: cluster (the name from
//!   `detail.clusterArn`), `detail.group` (`service:NAME` or `family:NAME`), `lastStatus`,
//!   `desiredStatus`, task definition. ECS numbers the changes of one task in
//!   `detail.version` (ECS developer guide, *Handling events*: "the version field ... is
//!   incremented each time the task changes"), and EventBridge may deliver out of order and
//!   more than once, so an event is applied only when its version is higher than the one
//!   held: older and duplicate events change nothing. Stopped tasks are forgotten
//!   `stopped_retention` after they stopped.
//! - **Stops**: the first time a task is seen `STOPPED`, a stop (with `stopCode`,
//!   `stoppedReason` and each container's exit code and reason) is counted and kept in the
//!   recent-stops history.
//! - **Deployments** (`ECS Deployment State Change`): the last one per service (the
//!   service ARN in `resources[0]`; these events carry no `clusterArn`, the cluster is the
//!   second-to-last segment of the service ARN), with its outcome from `eventName`.
//! - **Service actions** (`ECS Service Action`): recent ones, with `eventType`
//!   (INFO / WARN / ERROR), `eventName` and `reason`.
//!
//! Service-action and deployment events have no version; a repeat delivery is recognised by
//! the event `id` (EventBridge keeps it across its retries), of which the last
//! [`SEEN_IDS`] are remembered.
//!
//! Memory is bounded by [`EcsLimits`]: at most `max_tasks` tasks (when full, the oldest
//! stopped task goes first, else the task updated longest ago), `history` entries in each
//! recent list, `max_services` services with a last deployment.
//!
//! Metrics (names fixed by PRODUCT.md): `firelane_ecs_task_stops_total{cluster,group,stop_code}`,
//! `firelane_ecs_container_exits_total{cluster,container,exit_code}`,
//! `firelane_ecs_service_events_total{cluster,service,event_type,event_name}`,
//! `firelane_ecs_deployments_total{service,event_name}` and the gauge
//! `firelane_ecs_tasks{cluster,group,last_status}` (tasks held, by status).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use crate::event::Record;

/// Event ids remembered to recognise repeat deliveries of unversioned events.
pub(crate) const SEEN_IDS: usize = 4096;

/// Caps of the model (`[admin.ecs]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsLimits {
    /// Tasks held at most (all statuses). Default 10 000 (about 4 MB).
    pub max_tasks: usize,
    /// Entries kept in each recent list (stops, service actions). Default 100.
    pub history: usize,
    /// Services whose last deployment is kept. Default 1 000.
    pub max_services: usize,
    /// How long a stopped task stays in the model (and the `STOPPED` gauge). Default 1 h.
    pub stopped_retention: Duration,
}

impl Default for EcsLimits {
    fn default() -> Self {
        EcsLimits {
            max_tasks: 10_000,
            history: 100,
            max_services: 1_000,
            stopped_retention: Duration::from_secs(3600),
        }
    }
}

/// The process-wide model (one per process, like the metrics recorder).
pub(crate) fn model() -> &'static EcsState {
    static MODEL: LazyLock<EcsState> = LazyLock::new(|| EcsState::new(EcsLimits::default()));
    &MODEL
}

/// Describes the ECS metrics for `/metrics` (`# HELP` lines).
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "firelane_ecs_task_stops_total",
        "ECS tasks seen stopping (first STOPPED event of each task), by cluster, group and stopCode"
    );
    metrics::describe_counter!(
        "firelane_ecs_container_exits_total",
        "Containers of stopped ECS tasks that exited, by cluster, container name and exit code"
    );
    metrics::describe_counter!(
        "firelane_ecs_service_events_total",
        "ECS Service Action events, by cluster, service, eventType and eventName"
    );
    metrics::describe_counter!(
        "firelane_ecs_deployments_total",
        "ECS Deployment State Change events, by service and eventName"
    );
    metrics::describe_gauge!(
        "firelane_ecs_tasks",
        "ECS tasks held in the cluster model, by cluster, group and lastStatus"
    );
}

/// The ECS events of a batch an input is about to hand on, applied once the batch was taken
/// (a refused batch is retried by its sender and must not count twice).
pub(crate) struct Observed(Vec<(usize, Record)>);

impl Observed {
    /// Picks the `source = "aws.ecs"` records of `records` (cheap clones: bodies are shared);
    /// none when `events` is false (an input that does not take events: its records are
    /// application logs, whatever their fields say).
    pub(crate) fn of(events: bool, records: &[Record]) -> Observed {
        if !events {
            return Observed(Vec::new());
        }
        Observed(
            records
                .iter()
                .enumerate()
                .filter(|(_, r)| r.get("source").and_then(|v| v.as_str()) == Some("aws.ecs"))
                .map(|(i, r)| (i, r.clone()))
                .collect(),
        )
    }

    /// Applies the picked events whose index in the batch `taken` accepts.
    pub(crate) fn apply(self, taken: impl Fn(usize) -> bool) {
        if self.0.is_empty() {
            return;
        }
        let m = model();
        for (i, r) in self.0 {
            if taken(i) {
                m.apply(&Value::Object(r.fields().into_owned()));
            }
        }
    }
}

/// The cluster model: see the module documentation.
pub struct EcsState {
    inner: Mutex<Model>,
}

/// `GET /api/ecs/state`: the [`Snapshot`] as JSON.
pub(crate) async fn serve() -> impl axum::response::IntoResponse {
    let body = serde_json::to_string(&model().snapshot()).unwrap_or_else(|e| {
        // Plain data (strings, numbers, maps with string keys): cannot fail; said if it does.
        format!("{{\"error\":{:?}}}", e.to_string())
    });
    (
        axum::http::StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

impl EcsState {
    /// An empty model with these caps.
    pub fn new(limits: EcsLimits) -> Self {
        EcsState {
            inner: Mutex::new(Model::new(limits)),
        }
    }

    /// Replaces the caps (at startup, from `[admin.ecs]`); what exceeds them goes at the
    /// next event.
    pub(crate) fn set_limits(&self, limits: EcsLimits) {
        self.inner.lock().limits = limits;
    }

    /// Applies one event (the whole EventBridge event object). Events of other sources or
    /// types, and events missing what identifies them, change nothing.
    pub fn apply(&self, event: &Value) {
        self.inner.lock().apply(event, Instant::now());
    }

    /// The state as served at `GET /api/ecs/state`.
    pub fn snapshot(&self) -> Snapshot {
        let mut m = self.inner.lock();
        m.expire(Instant::now());
        m.snapshot()
    }
}

/// One task as held by the model.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// `detail.taskArn`.
    pub task_arn: String,
    /// The task id: the last segment of the task ARN.
    pub task_id: String,
    /// Cluster name (from `detail.clusterArn`).
    pub cluster: String,
    /// `detail.group`: `service:NAME` or `family:NAME`.
    pub group: String,
    /// `detail.lastStatus` (PROVISIONING, PENDING, ACTIVATING, RUNNING, DEACTIVATING,
    /// STOPPING, DEPROVISIONING, STOPPED).
    pub last_status: String,
    /// `detail.desiredStatus`.
    pub desired_status: String,
    /// The task definition as `family:revision`.
    pub task_definition: String,
    /// `detail.version` of the event applied last (absent when the event had none).
    pub version: Option<u64>,
    /// `detail.updatedAt` (or the event's `time`) of that event, as sent.
    pub updated_at: String,
}

/// A container of a stopped task.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerExit {
    /// Container name.
    pub name: String,
    /// Exit code, when the container ran.
    pub exit_code: Option<i64>,
    /// `reason` (why it stopped or never started), when given.
    pub reason: Option<String>,
}

/// A task's stop, as kept in the recent-stops history.
#[derive(Debug, Clone, Serialize)]
pub struct StopView {
    /// `detail.stoppedAt` (or the event's `time`), as sent.
    pub time: String,
    /// Cluster name.
    pub cluster: String,
    /// `detail.group`.
    pub group: String,
    /// Task id.
    pub task_id: String,
    /// Task definition `family:revision`.
    pub task_definition: String,
    /// `detail.stopCode` (e.g. `EssentialContainerExited`, `TaskFailedToStart`), when given.
    pub stop_code: Option<String>,
    /// `detail.stoppedReason`, when given.
    pub stopped_reason: Option<String>,
    /// Each container's exit.
    pub containers: Vec<ContainerExit>,
}

/// The last deployment of a service.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    /// The service ARN (`resources[0]`).
    pub service_arn: String,
    /// Cluster name (second-to-last segment of the service ARN).
    pub cluster: String,
    /// Service name (last segment).
    pub service: String,
    /// `detail.deploymentId`.
    pub deployment_id: Option<String>,
    /// `detail.eventName` (SERVICE_DEPLOYMENT_IN_PROGRESS / _COMPLETED / _FAILED).
    pub event_name: String,
    /// `detail.eventType` (INFO / ERROR).
    pub event_type: Option<String>,
    /// `in_progress`, `completed`, `failed`, or `unknown` for another event name.
    pub outcome: &'static str,
    /// `detail.reason`, when given.
    pub reason: Option<String>,
    /// `detail.updatedAt` (or the event's `time`), as sent.
    pub updated_at: String,
}

/// A service action event, as kept in the recent-actions history.
#[derive(Debug, Clone, Serialize)]
pub struct ActionView {
    /// The event's `time`, as sent.
    pub time: String,
    /// Cluster name.
    pub cluster: String,
    /// Service name.
    pub service: String,
    /// `detail.eventType` (INFO / WARN / ERROR).
    pub event_type: String,
    /// `detail.eventName` (e.g. SERVICE_TASK_PLACEMENT_FAILURE).
    pub event_name: String,
    /// `detail.reason`, when given.
    pub reason: Option<String>,
}

/// Task counts of one group of one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// Cluster name.
    pub cluster: String,
    /// `service:NAME` or `family:NAME`.
    pub group: String,
    /// Tasks held by `lastStatus`.
    pub tasks: BTreeMap<String, u64>,
}

/// `GET /api/ecs/state`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Task counts per cluster and group, sorted by cluster then group.
    pub groups: Vec<GroupView>,
    /// Tasks held, sorted by cluster, group, task id.
    pub tasks: Vec<TaskView>,
    /// Recent stops, newest first.
    pub recent_stops: Vec<StopView>,
    /// Last deployment per service, most recently updated first.
    pub deployments: Vec<DeploymentView>,
    /// Recent service actions, newest first.
    pub recent_service_actions: Vec<ActionView>,
    /// ECS events applied / ignored (older version, repeat id, missing fields).
    pub events: EventCounts,
    /// The caps in force.
    pub limits: LimitsView,
}

/// Counts of events the model saw.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EventCounts {
    /// Events that changed the model.
    pub applied: u64,
    /// Task events older than (or as old as) the version held.
    pub stale: u64,
    /// Events whose `id` was seen before.
    pub repeated: u64,
    /// ECS events of other types or missing what identifies them.
    pub ignored: u64,
    /// Tasks dropped to stay within `max_tasks`.
    pub tasks_evicted: u64,
}

/// [`EcsLimits`] as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsView {
    /// See [`EcsLimits::max_tasks`].
    pub max_tasks: usize,
    /// See [`EcsLimits::history`].
    pub history: usize,
    /// See [`EcsLimits::max_services`].
    pub max_services: usize,
    /// See [`EcsLimits::stopped_retention`], in seconds.
    pub stopped_retention_secs: u64,
}

struct Task {
    view: TaskView,
    /// Position in `order` (update sequence).
    seq: u64,
    /// When it was first seen STOPPED (for `stopped_retention`).
    stopped: Option<Instant>,
}

struct Model {
    limits: EcsLimits,
    tasks: HashMap<String, Task>,
    /// Update sequence → task ARN, oldest first (eviction when `max_tasks` is reached).
    order: BTreeMap<u64, String>,
    /// Stopped tasks by their update sequence (ageing, first to evict).
    stopped: BTreeMap<u64, String>,
    next_seq: u64,
    /// Tasks held per (cluster, group, lastStatus): the gauge's values.
    counts: HashMap<(String, String, String), u64>,
    stops: VecDeque<StopView>,
    actions: VecDeque<ActionView>,
    deployments: HashMap<String, DeploymentView>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    events: EventCounts,
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The last `/`-separated segment of an ARN's resource (`…:task/CLUSTER/ID` → `ID`).
fn last_segment(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The cluster name of `arn:aws:ecs:R:A:cluster/NAME`.
fn cluster_name(arn: &str) -> String {
    last_segment(arn).to_string()
}

/// `arn:aws:ecs:R:A:service/CLUSTER/SERVICE` → (CLUSTER, SERVICE). Old-format service ARNs
/// (`service/SERVICE`, before 2021) have no cluster: empty then.
fn service_parts(arn: &str) -> (String, String) {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or(arn);
    let mut parts = resource.rsplit('/');
    let service = parts.next().unwrap_or("").to_string();
    let cluster = match (parts.next(), parts.next()) {
        (Some(c), Some(_)) => c.to_string(),
        _ => String::new(),
    };
    (cluster, service)
}

/// `arn:…:task-definition/FAMILY:REV` → `FAMILY:REV`.
fn task_definition(arn: &str) -> String {
    last_segment(arn).to_string()
}

impl Model {
    fn new(limits: EcsLimits) -> Self {
        Model {
            limits,
            tasks: HashMap::new(),
            order: BTreeMap::new(),
            stopped: BTreeMap::new(),
            next_seq: 0,
            counts: HashMap::new(),
            stops: VecDeque::new(),
            actions: VecDeque::new(),
            deployments: HashMap::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            events: EventCounts::default(),
        }
    }

    fn apply(&mut self, event: &Value, now: Instant) {
        if s(event, "source") != Some("aws.ecs") {
            return;
        }
        self.expire(now);
        let Some(detail) = event.get("detail").filter(|d| d.is_object()) else {
            self.events.ignored += 1;
            return;
        };
        let applied = match s(event, "detail-type") {
            Some("ECS Task State Change") => self.task(event, detail, now),
            Some("ECS Service Action") => self.once(event) && self.action(event, detail),
            Some("ECS Deployment State Change") => {
                self.once(event) && self.deployment(event, detail)
            }
            _ => {
                self.events.ignored += 1;
                false
            }
        };
        if applied {
            self.events.applied += 1;
        }
    }

    /// False (and counted) when the event's `id` was seen before; events without an id
    /// are taken.
    fn once(&mut self, event: &Value) -> bool {
        let Some(id) = s(event, "id") else {
            return true;
        };
        if self.seen.contains(id) {
            self.events.repeated += 1;
            return false;
        }
        if self.seen_order.len() >= SEEN_IDS
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_string());
        self.seen_order.push_back(id.to_string());
        true
    }

    fn count(&mut self, cluster: &str, group: &str, status: &str, delta: i64) {
        let key = (cluster.to_string(), group.to_string(), status.to_string());
        let n = self.counts.entry(key.clone()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        let value = *n as f64;
        if *n == 0 {
            self.counts.remove(&key);
        }
        metrics::gauge!("firelane_ecs_tasks", "cluster" => key.0, "group" => key.1, "last_status" => key.2)
            .set(value);
    }

    fn task(&mut self, event: &Value, detail: &Value, now: Instant) -> bool {
        let (Some(arn), Some(status)) = (s(detail, "taskArn"), s(detail, "lastStatus")) else {
            self.events.ignored += 1;
            return false;
        };
        let version = detail.get("version").and_then(Value::as_u64);
        if let Some(held) = self.tasks.get(arn) {
            // Unversioned events cannot be ordered: taken as they come.
            if let (Some(v), Some(h)) = (version, held.view.version)
                && v <= h
            {
                self.events.stale += 1;
                return false;
            }
        }
        let cluster = s(detail, "clusterArn")
            .map(cluster_name)
            .unwrap_or_default();
        let group = s(detail, "group").unwrap_or("").to_string();
        let updated_at = s(detail, "updatedAt")
            .or_else(|| s(event, "time"))
            .unwrap_or("")
            .to_string();
        let view = TaskView {
            task_arn: arn.to_string(),
            task_id: last_segment(arn).to_string(),
            cluster,
            group,
            last_status: status.to_string(),
            desired_status: s(detail, "desiredStatus").unwrap_or("").to_string(),
            task_definition: s(detail, "taskDefinitionArn")
                .map(task_definition)
                .unwrap_or_default(),
            version,
            updated_at,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let was_stopped = match self.tasks.remove(arn) {
            Some(old) => {
                self.order.remove(&old.seq);
                let v = &old.view;
                self.count(&v.cluster, &v.group, &v.last_status, -1);
                self.stopped.remove(&old.seq);
                old.stopped
            }
            None => {
                self.make_room();
                None
            }
        };
        let stopped = if status == "STOPPED" {
            if was_stopped.is_none() {
                self.record_stop(event, detail, &view);
            }
            self.stopped.insert(seq, arn.to_string());
            Some(was_stopped.unwrap_or(now))
        } else {
            None
        };
        self.count(&view.cluster, &view.group, &view.last_status, 1);
        self.order.insert(seq, arn.to_string());
        self.tasks
            .insert(arn.to_string(), Task { view, seq, stopped });
        true
    }

    fn record_stop(&mut self, event: &Value, detail: &Value, task: &TaskView) {
        let stop_code = s(detail, "stopCode").map(str::to_string);
        metrics::counter!("firelane_ecs_task_stops_total",
            "cluster" => task.cluster.clone(),
            "group" => task.group.clone(),
            "stop_code" => stop_code.clone().unwrap_or_default())
        .increment(1);
        let containers: Vec<ContainerExit> = detail
            .get("containers")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| ContainerExit {
                        name: s(c, "name").unwrap_or("").to_string(),
                        exit_code: c.get("exitCode").and_then(Value::as_i64),
                        reason: s(c, "reason").map(str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default();
        for c in &containers {
            // A container that never ran (image pull failed) has no exit code: the stop
            // counter and its reason cover it.
            if let Some(code) = c.exit_code {
                metrics::counter!("firelane_ecs_container_exits_total",
                    "cluster" => task.cluster.clone(),
                    "container" => c.name.clone(),
                    "exit_code" => code.to_string())
                .increment(1);
            }
        }
        let time = s(detail, "stoppedAt")
            .or_else(|| s(event, "time"))
            .unwrap_or("")
            .to_string();
        push_capped(
            &mut self.stops,
            StopView {
                time,
                cluster: task.cluster.clone(),
                group: task.group.clone(),
                task_id: task.task_id.clone(),
                task_definition: task.task_definition.clone(),
                stop_code,
                stopped_reason: s(detail, "stoppedReason").map(str::to_string),
                containers,
            },
            self.limits.history,
        );
    }

    /// Frees one slot when the tasks are at `max_tasks`: the oldest stopped task, else the
    /// task updated longest ago (a task whose STOPPED event was lost would otherwise stay).
    fn make_room(&mut self) {
        while self.tasks.len() >= self.limits.max_tasks.max(1) {
            let victim = match self.stopped.first_key_value() {
                Some((_, arn)) => arn.clone(),
                None => match self.order.first_key_value() {
                    Some((_, arn)) => arn.clone(),
                    None => return,
                },
            };
            self.forget(&victim);
            self.events.tasks_evicted += 1;
            crate::warn_limited!(
                "ecs_state_evict",
                "ECS cluster state: more than {} tasks, forgetting the oldest ([admin.ecs] max_tasks)",
                self.limits.max_tasks
            );
        }
    }

    fn forget(&mut self, arn: &str) {
        if let Some(t) = self.tasks.remove(arn) {
            self.order.remove(&t.seq);
            self.stopped.remove(&t.seq);
            let v = t.view;
            self.count(&v.cluster, &v.group, &v.last_status, -1);
        }
    }

    /// Forgets tasks stopped longer than `stopped_retention` ago.
    fn expire(&mut self, now: Instant) {
        let retention = self.limits.stopped_retention;
        while let Some((&seq, arn)) = self.stopped.first_key_value() {
            let old = self
                .tasks
                .get(arn)
                .and_then(|t| t.stopped)
                .is_none_or(|at| now.saturating_duration_since(at) >= retention);
            if !old {
                break;
            }
            let arn = arn.clone();
            self.stopped.remove(&seq);
            self.forget(&arn);
        }
    }

    fn action(&mut self, event: &Value, detail: &Value) -> bool {
        let service_arn = event
            .get("resources")
            .and_then(|r| r.get(0))
            .and_then(Value::as_str)
            .unwrap_or("");
        let (arn_cluster, service) = service_parts(service_arn);
        let cluster = s(detail, "clusterArn")
            .map(cluster_name)
            .unwrap_or(arn_cluster);
        let event_type = s(detail, "eventType").unwrap_or("").to_string();
        let event_name = s(detail, "eventName").unwrap_or("").to_string();
        metrics::counter!("firelane_ecs_service_events_total",
            "cluster" => cluster.clone(),
            "service" => service.clone(),
            "event_type" => event_type.clone(),
            "event_name" => event_name.clone())
        .increment(1);
        push_capped(
            &mut self.actions,
            ActionView {
                time: s(event, "time").unwrap_or("").to_string(),
                cluster,
                service,
                event_type,
                event_name,
                reason: s(detail, "reason").map(str::to_string),
            },
            self.limits.history,
        );
        true
    }

    fn deployment(&mut self, event: &Value, detail: &Value) -> bool {
        let Some(service_arn) = event
            .get("resources")
            .and_then(|r| r.get(0))
            .and_then(Value::as_str)
        else {
            self.events.ignored += 1;
            return false;
        };
        let (cluster, service) = service_parts(service_arn);
        let event_name = s(detail, "eventName").unwrap_or("").to_string();
        metrics::counter!("firelane_ecs_deployments_total",
            "service" => service.clone(),
            "event_name" => event_name.clone())
        .increment(1);
        let updated_at = s(detail, "updatedAt")
            .or_else(|| s(event, "time"))
            .unwrap_or("")
            .to_string();
        // A late event of an older step does not replace a newer one: RFC 3339 times as ECS
        // writes them (same zone, same precision) order as strings.
        if let Some(held) = self.deployments.get(service_arn)
            && held.updated_at > updated_at
        {
            return true;
        }
        let outcome = match event_name.as_str() {
            "SERVICE_DEPLOYMENT_IN_PROGRESS" => "in_progress",
            "SERVICE_DEPLOYMENT_COMPLETED" => "completed",
            "SERVICE_DEPLOYMENT_FAILED" => "failed",
            _ => "unknown",
        };
        if !self.deployments.contains_key(service_arn)
            && self.deployments.len() >= self.limits.max_services.max(1)
        {
            // The service updated longest ago makes room.
            if let Some(oldest) = self
                .deployments
                .values()
                .min_by(|a, b| a.updated_at.cmp(&b.updated_at))
                .map(|d| d.service_arn.clone())
            {
                self.deployments.remove(&oldest);
            }
        }
        self.deployments.insert(
            service_arn.to_string(),
            DeploymentView {
                service_arn: service_arn.to_string(),
                cluster,
                service,
                deployment_id: s(detail, "deploymentId").map(str::to_string),
                event_name,
                event_type: s(detail, "eventType").map(str::to_string),
                outcome,
                reason: s(detail, "reason").map(str::to_string),
                updated_at,
            },
        );
        true
    }

    fn snapshot(&self) -> Snapshot {
        let mut groups: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
        for ((c, g, st), n) in &self.counts {
            groups
                .entry((c.clone(), g.clone()))
                .or_default()
                .insert(st.clone(), *n);
        }
        let mut tasks: Vec<TaskView> = self.tasks.values().map(|t| t.view.clone()).collect();
        tasks.sort_by(|a, b| {
            (&a.cluster, &a.group, &a.task_id).cmp(&(&b.cluster, &b.group, &b.task_id))
        });
        let mut deployments: Vec<DeploymentView> = self.deployments.values().cloned().collect();
        deployments.sort_by(|a, b| b.updated_at.cmp(&a.updated_at));
        Snapshot {
            groups: groups
                .into_iter()
                .map(|((cluster, group), tasks)| GroupView {
                    cluster,
                    group,
                    tasks,
                })
                .collect(),
            tasks,
            recent_stops: self.stops.iter().rev().cloned().collect(),
            deployments,
            recent_service_actions: self.actions.iter().rev().cloned().collect(),
            events: self.events,
            limits: LimitsView {
                max_tasks: self.limits.max_tasks,
                history: self.limits.history,
                max_services: self.limits.max_services,
                stopped_retention_secs: self.limits.stopped_retention.as_secs(),
            },
        }
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, item: T, cap: usize) {
    while q.len() >= cap.max(1) {
        q.pop_front();
    }
    q.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(arn: &str, version: u64, status: &str) -> Value {
        json!({
            "id": format!("{arn}-{version}"),
            "source": "aws.ecs",
            "detail-type": "ECS Task State Change",
            "time": "2026-11-30T10:00:00Z",
            "detail": {
                "clusterArn": "arn:aws:ecs:us-east-1:1:cluster/prod",
                "taskArn": format!("arn:aws:ecs:us-east-1:1:task/prod/{arn}"),
                "group": "service:web",
                "lastStatus": status,
                "desiredStatus": if status == "STOPPED" { "STOPPED" } else { "RUNNING" },
                "taskDefinitionArn": "arn:aws:ecs:us-east-1:1:task-definition/web:7",
                "stopCode": "EssentialContainerExited",
                "stoppedReason": "Essential container in task exited",
                "containers": [{"name": "app", "exitCode": 1}],
                "version": version,
            }
        })
    }

    fn counts(m: &Model) -> BTreeMap<String, u64> {
        m.counts
            .iter()
            .map(|((_, _, st), n)| (st.clone(), *n))
            .collect()
    }

    #[test]
    fn latest_version_wins_whatever_the_order() {
        let mut m = Model::new(EcsLimits::default());
        let now = Instant::now();
        for (v, st) in [
            (3, "STOPPED"),
            (1, "PENDING"),
            (2, "RUNNING"),
            (3, "STOPPED"),
        ] {
            m.apply(&task("a", v, st), now);
        }
        assert_eq!(counts(&m), BTreeMap::from([("STOPPED".to_string(), 1)]));
        assert_eq!(m.stops.len(), 1, "one stop, however often it is told");
        assert_eq!(m.events.applied, 1);
        assert_eq!(m.events.stale, 3);
        let snap = m.snapshot();
        assert_eq!(snap.tasks[0].version, Some(3));
        assert_eq!(snap.tasks[0].task_definition, "web:7");
        assert_eq!(snap.recent_stops[0].containers[0].exit_code, Some(1));
    }

    #[test]
    fn in_order_updates_move_the_task_between_statuses() {
        let mut m = Model::new(EcsLimits::default());
        let now = Instant::now();
        m.apply(&task("a", 1, "PENDING"), now);
        m.apply(&task("b", 1, "PENDING"), now);
        m.apply(&task("a", 2, "RUNNING"), now);
        assert_eq!(
            counts(&m),
            BTreeMap::from([("PENDING".to_string(), 1), ("RUNNING".to_string(), 1)])
        );
        assert!(m.stops.is_empty());
    }

    #[test]
    fn stopped_tasks_age_out_and_caps_hold() {
        let limits = EcsLimits {
            max_tasks: 3,
            history: 2,
            stopped_retention: Duration::from_secs(60),
            ..EcsLimits::default()
        };
        let mut m = Model::new(limits);
        let t0 = Instant::now();
        m.apply(&task("r1", 2, "RUNNING"), t0);
        m.apply(&task("s1", 3, "STOPPED"), t0);
        m.apply(&task("s2", 3, "STOPPED"), t0);
        // Full: the oldest stopped task makes room, the running one stays.
        m.apply(&task("r2", 2, "RUNNING"), t0);
        assert_eq!(m.tasks.len(), 3);
        assert!(m.tasks.keys().any(|k| k.ends_with("/r1")));
        assert!(!m.tasks.keys().any(|k| k.ends_with("/s1")));
        assert_eq!(m.events.tasks_evicted, 1);
        m.apply(&task("s3", 3, "STOPPED"), t0);
        assert_eq!(m.stops.len(), 2, "history capped");
        // After the retention, stopped tasks are gone; running ones stay.
        m.expire(t0 + Duration::from_secs(61));
        assert!(m.tasks.values().all(|t| t.view.last_status == "RUNNING"));
        assert_eq!(counts(&m), BTreeMap::from([("RUNNING".to_string(), 2)]));
        // Without stopped tasks, the task updated longest ago goes.
        m.apply(&task("r3", 2, "RUNNING"), t0);
        m.apply(&task("r4", 2, "RUNNING"), t0);
        assert_eq!(m.tasks.len(), 3);
        assert!(!m.tasks.keys().any(|k| k.ends_with("/r1")));
    }

    #[test]
    fn deployments_and_actions() {
        let mut m = Model::new(EcsLimits::default());
        let now = Instant::now();
        let dep = |id: &str, name: &str, at: &str| {
            json!({
                "id": id, "source": "aws.ecs", "detail-type": "ECS Deployment State Change",
                "time": at,
                "resources": ["arn:aws:ecs:ap-northeast-1:1:service/hoge/web"],
                "detail": {"eventType": "INFO", "eventName": name, "deploymentId": "ecs-svc/1",
                           "updatedAt": at, "reason": "r"}
            })
        };
        m.apply(
            &dep(
                "1",
                "SERVICE_DEPLOYMENT_IN_PROGRESS",
                "2026-11-30T10:00:00Z",
            ),
            now,
        );
        m.apply(
            &dep("3", "SERVICE_DEPLOYMENT_FAILED", "2026-11-30T10:05:00Z"),
            now,
        );
        m.apply(
            &dep(
                "2",
                "SERVICE_DEPLOYMENT_IN_PROGRESS",
                "2026-11-30T10:01:00Z",
            ),
            now,
        );
        m.apply(
            &dep("3", "SERVICE_DEPLOYMENT_FAILED", "2026-11-30T10:05:00Z"),
            now,
        );
        let snap = m.snapshot();
        assert_eq!(snap.deployments.len(), 1);
        assert_eq!(snap.deployments[0].outcome, "failed");
        assert_eq!(snap.deployments[0].cluster, "hoge");
        assert_eq!(snap.deployments[0].service, "web");
        assert_eq!(snap.events.repeated, 1);
        let action = json!({
            "id": "x", "source": "aws.ecs", "detail-type": "ECS Service Action",
            "time": "2023-11-02T07:56:11Z",
            "resources": ["arn:aws:ecs:ap-northeast-1:1:service/hoge/nginx"],
            "detail": {"eventType": "ERROR", "eventName": "SERVICE_TASK_PLACEMENT_FAILURE",
                       "clusterArn": "arn:aws:ecs:ap-northeast-1:1:cluster/hoge",
                       "reason": "AGENT:DISCONNECTED"}
        });
        m.apply(&action, now);
        m.apply(&action, now);
        let snap = m.snapshot();
        assert_eq!(snap.recent_service_actions.len(), 1);
        assert_eq!(snap.recent_service_actions[0].service, "nginx");
        assert_eq!(snap.recent_service_actions[0].cluster, "hoge");
    }

    #[test]
    fn arn_segments() {
        assert_eq!(
            service_parts("arn:aws:ecs:us-east-1:1:service/prod/web"),
            ("prod".to_string(), "web".to_string())
        );
        assert_eq!(
            service_parts("arn:aws:ecs:us-east-1:1:service/web"),
            (String::new(), "web".to_string())
        );
        assert_eq!(cluster_name("arn:aws:ecs:us-east-1:1:cluster/prod"), "prod");
    }

    #[test]
    fn other_sources_and_broken_events_change_nothing() {
        let mut m = Model::new(EcsLimits::default());
        let now = Instant::now();
        m.apply(
            &json!({"source": "aws.ec2", "detail-type": "ECS Task State Change"}),
            now,
        );
        m.apply(
            &json!({"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": {}}),
            now,
        );
        m.apply(
            &json!({"source": "aws.ecs", "detail-type": "ECS Task State Change"}),
            now,
        );
        assert!(m.tasks.is_empty());
        assert_eq!(m.events.ignored, 2);
    }
}
