//! `type = "s3"`: `bucket`, `key`, `compression`, `storage_class`, `content_type`, `acl`,
//! `log_key`, `align`, `force_path_style`, and the AWS connection keys.

use std::time::Duration;

use crate::config::reader::{Diagnostics, Table};
use crate::config::{Compression, OutputSpec};
use crate::event::Record;
use crate::output::aws::config::{AWS_KEYS, config_error, format_for, read_aws, refused};
use crate::output::aws::{AwsSettings, offline};
use crate::output::core::OutputContext;
use crate::output::from_config::batch_settings;
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

/// The `s3` output type.
pub struct S3;

/// An `s3` output's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Output {
    pub bucket: String,
    /// The object key template.
    pub key: String,
    pub compression: Compression,
    pub storage_class: Option<String>,
    pub content_type: Option<String>,
    pub acl: Option<String>,
    pub log_key: Option<String>,
    pub align: Option<Duration>,
    pub force_path_style: bool,
    pub aws: AwsSettings,
}

/// The `key` template when none is given.
pub const DEFAULT_KEY: &str = "firelane/{tag}/%Y/%m/%d/%H/%M%S-{uuid}.log";

impl OutputType for S3 {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "bucket",
            "key",
            "compression",
            "storage_class",
            "content_type",
            "acl",
            "log_key",
            "align",
            "force_path_style",
            AWS_KEYS[0],
            AWS_KEYS[1],
            AWS_KEYS[2],
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let path = t.path().to_string();
        let bucket = t.string(d, "bucket").unwrap_or_default();
        let key = t.opt_string(d, "key").unwrap_or_else(|| DEFAULT_KEY.into());
        let compression = Compression::read(t, d, &Compression::ALL);
        let storage_class = t.opt_string(d, "storage_class");
        let content_type = t.opt_string(d, "content_type");
        let acl = t.opt_string(d, "acl");
        let log_key = t.opt_string(d, "log_key");
        let align = t.opt_duration(d, "align");
        if let Some(a) = align
            && (a.as_secs() == 0 || 86400 % a.as_secs() != 0)
        {
            d.error(
                t.value_span("align"),
                format!("{path}.align: must divide a day evenly (e.g. \"5m\", \"1h\")"),
            );
        }
        let force_path_style = t.opt_bool(d, "force_path_style").unwrap_or(false);
        let aws = read_aws(t, d);
        Box::new(S3Output {
            bucket,
            key,
            compression,
            storage_class,
            content_type,
            acl,
            log_key,
            align,
            force_path_style,
            aws,
        })
    }
}

impl S3Output {
    /// The sink's settings for output `o`.
    fn sink_config(&self, o: &OutputSpec, batch: BatchSettings) -> super::S3Config {
        super::S3Config {
            name: o.name.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            compression: self.compression,
            storage_class: self.storage_class.clone(),
            content_type: self.content_type.clone(),
            acl: self.acl.clone(),
            format: format_for(o, &self.log_key),
            align: self.align,
            force_path_style: self.force_path_style,
            aws: self.aws.clone(),
            batch,
        }
    }

    /// The sink around a client that is never called (see [`offline`]).
    fn offline_sink(&self, o: &OutputSpec) -> Result<super::S3Sink, super::BuildError> {
        let client = offline::s3(self.aws.region.as_deref());
        super::build_with_client(self.sink_config(o, batch_settings(o)), client)
    }
}

#[async_trait::async_trait]
impl OutputConfig for S3Output {
    fn type_name(&self) -> &'static str {
        "s3"
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn default_batch(&self) -> BatchSettings {
        super::default_batch()
    }

    fn compressed(&self) -> bool {
        self.compression != Compression::None
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
