//! `type = "sns"`: `topic_arn`, `subject`, `format`, `group_by`, `window`,
//! `max_per_minute`, and the AWS connection keys.

use std::time::Duration;

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::alert::AlertSettings;
use crate::output::aws::config::{AWS_KEYS, config_error, read_aws};
use crate::output::aws::{AwsSettings, offline};
use crate::output::core::OutputContext;
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::{BatchSettings, Sink};
use crate::output::template::Template;

use super::{SnsConfig, SnsFormat};

/// The `sns` output type.
pub(crate) struct Sns;

/// An `sns` output's keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnsOutput {
    pub topic_arn: String,
    pub subject: Option<String>,
    pub format: SnsFormat,
    pub alerts: AlertSettings,
    pub aws: AwsSettings,
}

impl OutputType for Sns {
    fn name(&self) -> &'static str {
        "sns"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "topic_arn",
            "subject",
            "format",
            "group_by",
            "window",
            "max_per_minute",
            AWS_KEYS[0],
            AWS_KEYS[1],
            AWS_KEYS[2],
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let path = t.path().to_string();
        let topic_arn = t.string(d, "topic_arn").unwrap_or_default();
        let subject = t.opt_string(d, "subject");
        if let Some(s) = &subject
            && let Err(e) = Template::parse(s)
        {
            d.error(t.value_span("subject"), format!("{path}.subject: {e}"));
        }
        let format = match t.opt_string(d, "format").as_deref() {
            None | Some("text") => SnsFormat::Text,
            Some("json") => SnsFormat::Json,
            Some(_) => {
                d.error(
                    t.value_span("format"),
                    format!("{path}.format: expected text or json"),
                );
                SnsFormat::Text
            }
        };
        let alerts = AlertSettings::read(t, d);
        let aws = read_aws(t, d);
        Box::new(SnsOutput {
            topic_arn,
            subject,
            format,
            alerts,
            aws,
        })
    }
}

impl SnsOutput {
    fn sink_config(&self, o: &OutputSpec) -> SnsConfig {
        SnsConfig {
            name: o.name.clone(),
            topic_arn: self.topic_arn.clone(),
            subject: self.subject.clone(),
            format: self.format,
            alerts: self.alerts.clone(),
            aws: self.aws.clone(),
        }
    }

    /// The sink around a client that is never called (see [`offline`]).
    fn offline_sink(&self, o: &OutputSpec) -> Result<super::SnsSink, super::BuildError> {
        super::build_with_client(
            self.sink_config(o),
            offline::sns(self.aws.region.as_deref()),
        )
    }
}

#[async_trait::async_trait]
impl OutputConfig for SnsOutput {
    fn type_name(&self) -> &'static str {
        "sns"
    }

    fn describe(&self) -> String {
        self.topic_arn.clone()
    }

    /// A batch is one message: a follow-up waits for the group's window (`max_age` is the
    /// window) and may stand for many records (it shows only a few).
    fn default_batch(&self) -> BatchSettings {
        BatchSettings {
            max_records: 100_000,
            max_bytes: 64 << 20,
            max_age: self.alerts.window.max(Duration::from_millis(1)),
        }
    }

    /// Up to 10 messages at once, so that leads ready together share a PublishBatch call.
    fn default_concurrency(&self) -> usize {
        10
    }

    fn validate(&self, o: &OutputSpec) -> Result<(), OutputConfigError> {
        self.offline_sink(o).map(drop).map_err(config_error)
    }

    fn destination(&self, o: &OutputSpec, record: &Record) -> String {
        match self.offline_sink(o) {
            Ok(sink) => format!(
                "SNS topic {}, group {:?}",
                self.topic_arn,
                &*sink.partition(record).unwrap_or_default()
            ),
            Err(e) => format!("would not start: {e}"),
        }
    }

    async fn start(
        &self,
        o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = super::build(self.sink_config(o)).await?;
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
