//! Amazon ECS events (source `aws.ecs`) as EventBridge delivers them, for the tests that post
//! them to an `http` input with `format = "eventbridge"` or put them on an SQS queue. Shapes
//! from the Amazon ECS developer guide ("Amazon ECS events"); fields keep EventBridge's
//! order (serde_json preserves it here).

use std::time::Duration;

use serde_json::{Value, json};

/// The account and Region an event comes from (the envelope's `account` and `region`, and
/// the ARNs in it).
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub account: &'a str,
    pub region: &'a str,
}

/// The task a `Task State Change` is about.
#[derive(Clone, Copy, Debug)]
pub struct Task<'a> {
    /// Cluster name (the last segment of `clusterArn`).
    pub cluster: &'a str,
    /// Task id (the last segment of `taskArn`).
    pub id: &'a str,
    /// `family:revision` (the last segment of `taskDefinitionArn`).
    pub definition: &'a str,
    /// `service:<name>` or `family:<name>`.
    pub group: &'a str,
}

impl Origin<'_> {
    /// `arn:aws:ecs:<region>:<account>:<resource>`, e.g. resource `cluster/prod`.
    pub fn arn(&self, resource: &str) -> String {
        format!("arn:aws:ecs:{}:{}:{resource}", self.region, self.account)
    }

    /// The EventBridge envelope around `detail`; `time` is RFC 3339 text.
    pub fn event(
        &self,
        id: &str,
        detail_type: &str,
        time: &str,
        resources: Value,
        detail: Value,
    ) -> Value {
        json!({
            "version": "0", "id": id, "detail-type": detail_type, "source": "aws.ecs",
            "account": self.account, "time": time, "region": self.region,
            "resources": resources, "detail": detail
        })
    }

    /// An `ECS Task State Change` of `task`: the task ARN as the only resource, a detail of
    /// `clusterArn`, `taskArn`, `taskDefinitionArn` and `group`, then every field of
    /// `fields` (an object: `lastStatus`, `containers`, ...) in its order.
    pub fn task_event(&self, id: &str, time: &str, task: &Task, fields: Value) -> Value {
        let task_arn = self.arn(&format!("task/{}/{}", task.cluster, task.id));
        let mut detail = json!({
            "clusterArn": self.arn(&format!("cluster/{}", task.cluster)),
            "taskArn": task_arn,
            "taskDefinitionArn": self.arn(&format!("task-definition/{}", task.definition)),
            "group": task.group,
        });
        let Value::Object(fields) = fields else {
            panic!("task_event: fields must be a JSON object, not {fields}")
        };
        if let Some(d) = detail.as_object_mut() {
            d.extend(fields);
        }
        self.event(id, "ECS Task State Change", time, json!([task_arn]), detail)
    }
}

/// POSTs `body` (one event or an array of them) as JSON to an `http` input with
/// `format = "eventbridge"` at `url`, with header `x-api-key: <api_key>` when given, and
/// asserts the input answered 200.
pub fn post(url: &str, body: &Value, api_key: Option<&str>) {
    let mut req = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
        .post(url)
        .header("content-type", "application/json");
    if let Some(key) = api_key {
        req = req.header("x-api-key", key);
    }
    let resp = req
        .body(body.to_string())
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text());
}
