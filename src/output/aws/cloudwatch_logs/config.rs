//! `type = "cloudwatch_logs"`: `log_group`, `log_stream`, `auto_create`, `retention_days`,
//! `tags`, `log_key`, and the AWS connection keys.

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::aws::config::{AWS_KEYS, config_error, format_for, read_aws, refused};
use crate::output::aws::{AwsSettings, offline};
use crate::output::core::OutputContext;
use crate::output::from_config::batch_settings;
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

use super::RETENTION_DAYS;

/// The `cloudwatch_logs` output type.
pub(crate) struct CloudWatchLogs;

/// A `cloudwatch_logs` output's keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CloudWatchLogsOutput {
    pub log_group: String,
    pub log_stream: String,
    pub auto_create: bool,
    /// One of [`RETENTION_DAYS`].
    pub retention_days: Option<i32>,
    pub tags: Vec<(String, String)>,
    pub log_key: Option<String>,
    pub aws: AwsSettings,
}

impl OutputType for CloudWatchLogs {
    fn name(&self) -> &'static str {
        "cloudwatch_logs"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "log_group",
            "log_stream",
            "auto_create",
            "retention_days",
            "tags",
            "log_key",
            AWS_KEYS[0],
            AWS_KEYS[1],
            AWS_KEYS[2],
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let log_group = t.string(d, "log_group").unwrap_or_default();
        let log_stream = t
            .opt_string(d, "log_stream")
            .unwrap_or_else(|| "{tag}".into());
        let auto_create = t.opt_bool(d, "auto_create").unwrap_or(true);
        let retention_days = t.opt_u64(d, "retention_days").and_then(|r| {
            match i32::try_from(r).ok().filter(|r| RETENTION_DAYS.contains(r)) {
                Some(r) => Some(r),
                None => {
                    d.error(
                        t.value_span("retention_days"),
                        format!(
                            "{}.retention_days: {r} is not a value CloudWatch Logs accepts ({RETENTION_DAYS:?})",
                            t.path()
                        ),
                    );
                    None
                }
            }
        });
        let tags = t.opt_string_map(d, "tags").unwrap_or_default();
        let log_key = t.opt_string(d, "log_key");
        let aws = read_aws(t, d);
        Box::new(CloudWatchLogsOutput {
            log_group,
            log_stream,
            auto_create,
            retention_days,
            tags,
            log_key,
            aws,
        })
    }
}

impl CloudWatchLogsOutput {
    /// The sink's settings for output `o`.
    fn sink_config(&self, o: &OutputSpec, batch: BatchSettings) -> super::CloudWatchLogsConfig {
        super::CloudWatchLogsConfig {
            name: o.name.clone(),
            log_group: self.log_group.clone(),
            log_stream: self.log_stream.clone(),
            auto_create: self.auto_create,
            retention_days: self.retention_days,
            tags: self.tags.iter().cloned().collect(),
            format: format_for(o, &self.log_key),
            aws: self.aws.clone(),
            batch,
        }
    }

    /// The sink around a client that is never called (see [`offline`]).
    fn offline_sink(&self, o: &OutputSpec) -> Result<super::CloudWatchLogsSink, super::BuildError> {
        let client = offline::cloudwatch_logs(self.aws.region.as_deref());
        super::build_with_client(self.sink_config(o, batch_settings(o)), client)
    }
}

#[async_trait::async_trait]
impl OutputConfig for CloudWatchLogsOutput {
    fn type_name(&self) -> &'static str {
        "cloudwatch_logs"
    }

    fn describe(&self) -> String {
        format!("{} / {}", self.log_group, self.log_stream)
    }

    fn default_batch(&self) -> BatchSettings {
        super::default_batch()
    }

    fn validate(&self, o: &OutputSpec) -> Result<(), OutputConfigError> {
        self.offline_sink(o).map(drop).map_err(config_error)
    }

    fn destination(&self, o: &OutputSpec, record: &Record) -> String {
        match self.offline_sink(o) {
            Ok(sink) => sink.destination(record).unwrap_or_else(refused),
            Err(e) => format!("would not start: {e}"),
        }
    }

    async fn start(
        &self,
        o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = super::build(self.sink_config(o, ctx.batch.clone())).await?;
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
