//! The output types firelane knows, one line each, and the contract every type fulfils.
//!
//! An output type reads and checks its own keys of an `[outputs.NAME]` table
//! ([`OutputType::read`]); what it reads ([`OutputConfig`]) describes itself for
//! `firelane check`, gives its batch defaults, runs the checks its sink makes at
//! construction ([`OutputConfig::validate`], the same for `check` and `run`), shows where
//! a record would land (`firelane route`) and starts its sink. The keys every output has
//! (`batch`, `buffer`, `retry`, `dead_letter`, `tag_key`, `time_key`, `concurrency`) are
//! read by [`crate::config`] and reach the type as [`OutputSpec`].
//!
//! Adding an output: its module (sink plus `config.rs` with an [`OutputType`]) and one line
//! in [`OUTPUTS`].

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::core::{OutputContext, OutputHealth, OutputSummary};
use super::sink::{BatchSettings, Sink};
use crate::admin::HealthReport;
use crate::buffer::BufferReader;
use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;

/// Every output type, in the order `check` lists them. The only list: config reading,
/// "unknown type" messages and the docs test all go through it.
pub(crate) static OUTPUTS: &[&dyn OutputType] = &[
    &super::stdout::config::Stdout,
    &super::null::config::Null,
    &super::file::config::File,
    &super::http::config::Http,
    &super::slack::config::Slack,
    &super::aws::s3::config::S3,
    &super::aws::firehose::config::Firehose,
    &super::aws::kinesis::config::Kinesis,
    &super::aws::cloudwatch_logs::config::CloudWatchLogs,
    &super::aws::sns::config::Sns,
];

/// The registered type named `name` (the `type = "..."` value).
pub(crate) fn find(name: &str) -> Option<&'static dyn OutputType> {
    OUTPUTS.iter().copied().find(|t| t.name() == name)
}

/// The `type` values of every registered output type.
pub(crate) fn names() -> Vec<&'static str> {
    OUTPUTS.iter().map(|t| t.name()).collect()
}

/// One kind of output (`type = "s3"`): reads its keys.
pub(crate) trait OutputType: Sync {
    /// The `type = "..."` value.
    fn name(&self) -> &'static str;

    /// Its own keys, besides the generic ones: the "did you mean" hints of the unknown-key
    /// error, and the list the docs test checks against `config/reference.toml`.
    fn keys(&self) -> &'static [&'static str];

    /// Reads and checks this type's keys of `t` (the `[outputs.NAME]` table). Problems go
    /// to `d`, located at their key; the result is only used when `d` has no error, so
    /// it may hold placeholders for values that failed. Keys it does not read are refused
    /// by the caller as unknown.
    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig>;
}

/// What a running output hands back: its delivery task and its `/health` view.
pub(crate) type Started = (JoinHandle<OutputSummary>, Arc<dyn HealthReport>);

/// The keys of one output of some type, as read from its table.
#[async_trait::async_trait]
pub trait OutputConfig: std::fmt::Debug + Send + Sync + 'static {
    /// The `type = "..."` value it was read from.
    fn type_name(&self) -> &'static str;

    /// Where it writes, for `firelane check`'s plan (`s3://bucket/key`, a URL, a path);
    /// empty when there is nothing to say (stdout, null).
    fn describe(&self) -> String {
        String::new()
    }

    /// Batch limits when `batch = { ... }` leaves them open.
    fn default_batch(&self) -> BatchSettings;

    /// Requests in flight at once when `concurrency` is unset: local sinks write in order,
    /// remote ones overlap requests for different keys / streams.
    fn default_concurrency(&self) -> usize {
        4
    }

    /// Whether `batch.max_bytes` counts compressed bytes (for `check`'s batch-fill warning).
    fn compressed(&self) -> bool {
        false
    }

    /// The checks its sink makes at construction, without opening files, resolving
    /// credentials or calling the network: exactly what `start` would refuse (the same
    /// settings through the same constructors). `o` is the whole output (name, generic
    /// keys). Returns the first problem the sink reports.
    fn validate(&self, o: &OutputSpec) -> Result<(), OutputConfigError> {
        let _ = o;
        Ok(())
    }

    /// Where `record` would land, rendered by the sink's own code without sending anything
    /// (`firelane route`). A refusal or a setting the sink would not start with is
    /// described in the text.
    fn destination(&self, o: &OutputSpec, record: &Record) -> String;

    /// Builds the sink (opening files, resolving the region) and starts its delivery loop
    /// on the buffer `reader`.
    async fn start(
        &self,
        o: &OutputSpec,
        ctx: OutputContext,
        reader: BufferReader,
    ) -> anyhow::Result<Started>;

    /// For tests and tools that look at one type's settings.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Runs `sink`'s delivery loop: the shared core ([`super::core::run`]) with its health view.
pub(crate) fn spawn<S: Sink>(ctx: OutputContext, sink: S, reader: BufferReader) -> Started {
    let health: Arc<dyn HealthReport> = Arc::new(HealthView {
        name: ctx.name.clone(),
        health: ctx.health.clone(),
    });
    (
        tokio::spawn(super::core::run(ctx, Arc::new(sink), reader)),
        health,
    )
}

/// `/health` view of one output.
struct HealthView {
    name: String,
    health: Arc<OutputHealth>,
}

impl HealthReport for HealthView {
    fn name(&self) -> &str {
        &self.name
    }

    fn report(&self) -> serde_json::Value {
        let last_success = self
            .health
            .last_success()
            .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
        serde_json::json!({
            "last_success": last_success,
            "consecutive_failures": self.health.consecutive_failures(),
            "last_failure": self.health.last_failure_reason(),
        })
    }
}

/// A setting of one output that its sink refuses at construction, found without any
/// network or AWS call (see [`OutputConfig::validate`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputConfigError {
    /// The output's key the problem is in (`log_stream`, `headers`…), when there is one,
    /// so the config reader can point at its `file:line:col`.
    pub key: Option<&'static str>,
    /// What is wrong, without the output's name (the caller adds its location).
    pub message: String,
}

impl OutputConfigError {
    /// A problem with `key`.
    pub(crate) fn new(key: &'static str, message: impl Into<String>) -> Self {
        OutputConfigError {
            key: Some(key),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for OutputConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key {
            Some(k) => write!(f, "`{k}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for OutputConfigError {}
