//! `type = "firehose"`: `delivery_stream`, `aggregate`, `oversize`, `log_key`, and the AWS
//! connection keys.

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::aws::config::{AWS_KEYS, config_error, format_for, read_aws, read_oversize};
use crate::output::aws::{AwsSettings, offline};
use crate::output::core::OutputContext;
use crate::output::from_config::batch_settings;
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

use super::Oversize;

/// The `firehose` output type.
pub(crate) struct Firehose;

/// A `firehose` output's keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FirehoseOutput {
    pub delivery_stream: String,
    pub aggregate: bool,
    pub oversize: Oversize,
    pub log_key: Option<String>,
    pub aws: AwsSettings,
}

impl OutputType for Firehose {
    fn name(&self) -> &'static str {
        "firehose"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "delivery_stream",
            "aggregate",
            "oversize",
            "log_key",
            AWS_KEYS[0],
            AWS_KEYS[1],
            AWS_KEYS[2],
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let delivery_stream = t.string(d, "delivery_stream").unwrap_or_default();
        let aggregate = t.opt_bool(d, "aggregate").unwrap_or(false);
        let oversize = read_oversize(t, d);
        let log_key = t.opt_string(d, "log_key");
        let aws = read_aws(t, d);
        Box::new(FirehoseOutput {
            delivery_stream,
            aggregate,
            oversize,
            log_key,
            aws,
        })
    }
}

impl FirehoseOutput {
    /// The sink's settings for output `o`.
    fn sink_config(&self, o: &OutputSpec, batch: BatchSettings) -> super::FirehoseConfig {
        super::FirehoseConfig {
            name: o.name.clone(),
            delivery_stream: self.delivery_stream.clone(),
            aggregate: self.aggregate,
            oversize: self.oversize,
            format: format_for(o, &self.log_key),
            aws: self.aws.clone(),
            batch,
        }
    }

    /// The sink around a client that is never called (see [`offline`]).
    fn offline_sink(&self, o: &OutputSpec) -> Result<super::FirehoseSink, super::BuildError> {
        let client = offline::firehose(self.aws.region.as_deref());
        super::build_with_client(self.sink_config(o, batch_settings(o)), client)
    }
}

#[async_trait::async_trait]
impl OutputConfig for FirehoseOutput {
    fn type_name(&self) -> &'static str {
        "firehose"
    }

    fn describe(&self) -> String {
        self.delivery_stream.clone()
    }

    fn default_batch(&self) -> BatchSettings {
        super::default_batch()
    }

    fn validate(&self, o: &OutputSpec) -> Result<(), OutputConfigError> {
        self.offline_sink(o).map(drop).map_err(config_error)
    }

    fn destination(&self, o: &OutputSpec, _record: &Record) -> String {
        match self.offline_sink(o) {
            Ok(sink) => sink.destination(),
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
