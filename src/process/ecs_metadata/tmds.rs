//! The ECS Task Metadata Endpoint v4 (TMDS): the two answers firelane reads and what it keeps
//! of them.
//!
//! Shapes from the ECS agent (`ecs-agent/tmds/handlers/v2/response.go`,
//! `v4/state/response.go`) and the docs (*Task metadata endpoint version 4*):
//! - `${ECS_CONTAINER_METADATA_URI_V4}/task`: `Cluster` (a short name on EC2, often the full
//!   cluster ARN on Fargate), `TaskARN`, `Family`, `Revision` (a string), `LaunchType`,
//!   `Containers[]` with `DockerId` (empty until Docker created the container), `Name` (the
//!   task definition's container name), `Type` (`NORMAL`, or internal ones like `CNI_PAUSE`).
//! - `${ECS_CONTAINER_METADATA_URI_V4}` itself: this container, with `Networks[].NetworkMode`
//!   (`awsvpc`, `bridge`, `host`, `none`).
//!
//! Fields firelane does not read are ignored, so newer agents' additions never break parsing.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

/// Why a metadata request gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TmdsError {
    /// Connection refused, timeout, reset...
    #[error("request to {url} failed: {source}")]
    Request {
        /// What was requested.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// Any answer but 200 (the agent answers 500/404 while it does not know the task yet).
    #[error("{url} answered HTTP {status}")]
    Status {
        /// What was requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A 200 whose body is not the documented shape.
    #[error("{url}: unexpected answer: {reason}")]
    Shape {
        /// What was requested.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// What the processor keeps of one `/task` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskInfo {
    /// The cluster's name (`Cluster`, reduced to its name when it is an ARN).
    pub cluster: String,
    /// `TaskARN`.
    pub task_arn: String,
    /// The last `/` segment of `TaskARN`.
    pub task_id: String,
    /// `family:revision`.
    pub task_definition: String,
    /// `LaunchType` (`EC2`, `FARGATE`, `EXTERNAL`), when given.
    pub launch_type: Option<String>,
    /// `DockerId` → task definition container `Name`, for containers Docker has created.
    pub containers: HashMap<String, String>,
}

/// The network mode of the task, from this container's `Networks[0].NetworkMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetworkMode {
    /// `awsvpc` (every Fargate task): the task has its own network namespace.
    Awsvpc,
    /// `bridge`: app containers reach the router over Docker's bridge.
    Bridge,
    /// `host`: the instance's network namespace.
    Host,
    /// `none` or anything this version does not know.
    Other,
}

impl NetworkMode {
    fn parse(s: &str) -> NetworkMode {
        match s.to_ascii_lowercase().as_str() {
            "awsvpc" => NetworkMode::Awsvpc,
            "bridge" | "default" => NetworkMode::Bridge,
            "host" => NetworkMode::Host,
            _ => NetworkMode::Other,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskResponse {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(rename = "TaskARN")]
    task_arn: String,
    family: String,
    revision: serde_json::Value,
    #[serde(default)]
    launch_type: Option<String>,
    #[serde(default)]
    containers: Vec<ContainerResponse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerResponse {
    #[serde(default)]
    docker_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    networks: Vec<NetworkResponse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkResponse {
    #[serde(default)]
    network_mode: Option<String>,
}

/// The cluster's name from `Cluster`, which is a name or an ARN
/// (`arn:aws:ecs:REGION:ACCOUNT:cluster/NAME`), as the aws-for-fluent-bit init process
/// reduces it.
pub(crate) fn cluster_name(cluster: &str) -> &str {
    if cluster.starts_with("arn:") {
        match cluster.split_once(":cluster/") {
            Some((_, name)) => name,
            None => cluster.rsplit('/').next().unwrap_or(cluster),
        }
    } else {
        cluster
    }
}

/// Parses a `/task` body.
pub(crate) fn parse_task(body: &[u8]) -> Result<TaskInfo, String> {
    let t: TaskResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let task_id = t
        .task_arn
        .rsplit('/')
        .next()
        .filter(|id| !id.is_empty() && t.task_arn.starts_with("arn:"))
        .ok_or_else(|| format!("TaskARN {:?} is not a task ARN", t.task_arn))?
        .to_owned();
    // `Cluster` is always given by today's agents; a new-format task ARN
    // (`task/CLUSTER/ID`) names it too, for an endpoint that leaves it out.
    let cluster = match t.cluster.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => cluster_name(c).to_owned(),
        None => {
            let mut parts = t.task_arn.rsplit('/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(c), Some(_)) => c.to_owned(),
                _ => return Err("no Cluster and an old-format TaskARN".to_owned()),
            }
        }
    };
    let revision = match &t.revision {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(format!("Revision is {other}, expected a string")),
    };
    let containers = t
        .containers
        .into_iter()
        .filter_map(|c| match (c.docker_id, c.name) {
            (Some(id), Some(name)) if !id.is_empty() && !name.is_empty() => Some((id, name)),
            _ => None,
        })
        .collect();
    Ok(TaskInfo {
        cluster,
        task_arn: t.task_arn,
        task_id,
        task_definition: format!("{}:{revision}", t.family),
        launch_type: t.launch_type,
        containers,
    })
}

/// Parses a container body (`${ECS_CONTAINER_METADATA_URI_V4}`) for its network mode;
/// `None` when it lists no network.
pub(crate) fn parse_network_mode(body: &[u8]) -> Result<Option<NetworkMode>, String> {
    let c: ContainerResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(c.networks
        .iter()
        .find_map(|n| n.network_mode.as_deref())
        .map(NetworkMode::parse))
}

/// A client of one metadata endpoint.
#[derive(Clone, Debug)]
pub(crate) struct Tmds {
    base: String,
    client: reqwest::Client,
}

impl Tmds {
    /// A client for `base` (the value of `ECS_CONTAINER_METADATA_URI_V4`); every request is
    /// bounded by `timeout`.
    pub(crate) fn new(base: &str, timeout: Duration) -> Result<Tmds, String> {
        let client = reqwest::Client::builder()
            // The endpoint is a link-local address answering in milliseconds; never a
            // proxy (HTTP_PROXY in a task must not capture it).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("firelane/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the metadata HTTP client: {e}"))?;
        Ok(Tmds {
            base: base.trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// The endpoint, as configured.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    async fn get(&self, url: String) -> Result<bytes::Bytes, TmdsError> {
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|source| TmdsError::Request {
                url: url.clone(),
                source,
            })?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(TmdsError::Status {
                url,
                status: resp.status().as_u16(),
            });
        }
        resp.bytes()
            .await
            .map_err(|source| TmdsError::Request { url, source })
    }

    /// `GET {base}/task`.
    pub(crate) async fn task(&self) -> Result<TaskInfo, TmdsError> {
        let url = format!("{}/task", self.base);
        let body = self.get(url.clone()).await?;
        parse_task(&body).map_err(|reason| TmdsError::Shape { url, reason })
    }

    /// `GET {base}`: the task's network mode, `None` when the answer lists no network.
    pub(crate) async fn network_mode(&self) -> Result<Option<NetworkMode>, TmdsError> {
        let url = self.base.clone();
        let body = self.get(url.clone()).await?;
        parse_network_mode(&body).map_err(|reason| TmdsError::Shape { url, reason })
    }
}
