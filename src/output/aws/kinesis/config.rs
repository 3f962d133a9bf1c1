//! `type = "kinesis"`: `stream` (or `stream_arn`), `partition_key`, `oversize`, `log_key`,
//! and the AWS connection keys.

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::aws::config::{AWS_KEYS, config_error, format_for, read_aws, read_oversize};
use crate::output::aws::records::Oversize;
use crate::output::aws::{AwsSettings, offline};
use crate::output::core::OutputContext;
use crate::output::from_config::batch_settings;
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

use super::StreamId;

/// The `kinesis` output type (Kinesis Data Streams).
pub(crate) struct Kinesis;

/// A `kinesis` output's keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KinesisOutput {
    pub stream: StreamId,
    pub partition_key: Option<String>,
    pub oversize: Oversize,
    pub log_key: Option<String>,
    pub aws: AwsSettings,
}

impl OutputType for Kinesis {
    fn name(&self) -> &'static str {
        "kinesis"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "stream",
            "stream_arn",
            "partition_key",
            "oversize",
            "log_key",
            AWS_KEYS[0],
            AWS_KEYS[1],
            AWS_KEYS[2],
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let name = t.opt_string(d, "stream");
        let arn = t.opt_string(d, "stream_arn");
        let stream = match (name, arn) {
            (Some(n), None) => StreamId::Name(n),
            (None, Some(a)) => StreamId::Arn(a),
            (Some(n), Some(_)) => {
                d.error(
                    t.value_span("stream_arn"),
                    format!("{}: set `stream` or `stream_arn`, not both", t.path()),
                );
                StreamId::Name(n)
            }
            (None, None) => {
                // Either key will do, so the message names both.
                d.error(
                    t.span(),
                    format!(
                        "{}: missing required key `stream` (the stream's name) or `stream_arn`",
                        t.path()
                    ),
                );
                StreamId::Name(String::new())
            }
        };
        let partition_key = t.opt_string(d, "partition_key");
        let oversize = read_oversize(t, d);
        let log_key = t.opt_string(d, "log_key");
        let mut aws = read_aws(t, d);
        // The ARN says where the stream is: PutRecords must go to that region's endpoint,
        // whatever AWS_REGION the task runs in (a region that differs is refused at build).
        if aws.region.is_none()
            && let StreamId::Arn(a) = &stream
            && let Some(r) = super::arn_region(a)
        {
            aws.region = Some(r.to_string());
        }
        Box::new(KinesisOutput {
            stream,
            partition_key,
            oversize,
            log_key,
            aws,
        })
    }
}

impl KinesisOutput {
    /// The sink's settings for output `o`.
    fn sink_config(&self, o: &OutputSpec, batch: BatchSettings) -> super::KinesisConfig {
        super::KinesisConfig {
            name: o.name.clone(),
            stream: self.stream.clone(),
            partition_key: self.partition_key.clone(),
            oversize: self.oversize,
            format: format_for(o, &self.log_key),
            aws: self.aws.clone(),
            batch,
        }
    }

    /// The sink around a client that is never called (see [`offline`]).
    fn offline_sink(&self, o: &OutputSpec) -> Result<super::KinesisSink, super::BuildError> {
        let client = offline::kinesis(self.aws.region.as_deref());
        super::build_with_client(self.sink_config(o, batch_settings(o)), client)
    }
}

#[async_trait::async_trait]
impl OutputConfig for KinesisOutput {
    fn type_name(&self) -> &'static str {
        "kinesis"
    }

    fn describe(&self) -> String {
        self.stream.to_string()
    }

    fn default_batch(&self) -> BatchSettings {
        super::default_batch()
    }

    fn validate(&self, o: &OutputSpec) -> Result<(), OutputConfigError> {
        self.offline_sink(o).map(drop).map_err(config_error)
    }

    fn destination(&self, o: &OutputSpec, record: &Record) -> String {
        match self.offline_sink(o) {
            Ok(sink) => sink.destination(record),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn region_of(keys: &str) -> Option<String> {
        let text = format!(
            "[inputs.app]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n\
             [routes.all]\nto = [\"k\"]\n\
             [outputs.k]\ntype = \"kinesis\"\n{keys}\n"
        );
        let l = crate::config::parse(&text, "t.toml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let k = l.config.outputs[0]
            .kind
            .as_any()
            .downcast_ref::<KinesisOutput>();
        k.expect("a kinesis output").aws.region.clone()
    }

    /// `stream_arn` without `region`: the calls go to the stream's region (from the ARN),
    /// not to the task's AWS_REGION, where the stream would not be found.
    #[test]
    fn stream_arn_sets_the_default_region() {
        assert_eq!(
            region_of("stream_arn = \"arn:aws:kinesis:eu-west-1:123456789012:stream/s\""),
            Some("eu-west-1".into())
        );
        assert_eq!(
            region_of(
                "stream_arn = \"arn:aws:kinesis:eu-west-1:123456789012:stream/s\"\nregion = \"eu-west-1\""
            ),
            Some("eu-west-1".into())
        );
        assert_eq!(region_of("stream = \"s\""), None);
    }

    /// Neither `stream` nor `stream_arn`: the error names both.
    #[test]
    fn missing_stream_names_both_keys() {
        let text = "[inputs.app]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n\
                    [routes.all]\nto = [\"k\"]\n[outputs.k]\ntype = \"kinesis\"\n";
        let Err(e) = crate::config::parse(text, "t.toml", &|_| None) else {
            panic!("a kinesis output without a stream was accepted")
        };
        assert_eq!(e.errors.len(), 1, "{:?}", e.errors);
        assert!(
            e.errors[0]
                .contains("missing required key `stream` (the stream's name) or `stream_arn`"),
            "{:?}",
            e.errors
        );
    }
}
