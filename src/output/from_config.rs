//! Turns a validated `[outputs.NAME]` table into a running output: its buffer settings,
//! its delivery context and its sink. Defaults that the config leaves open live here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use super::aws::{AwsSettings, BuildError, RecordFormat, cloudwatch_logs, firehose, s3};
use super::core::{
    DEFAULT_MAX_PARTITIONS, DeadLetter, OutputContext, OutputHealth, OutputShutdown, OutputSummary,
};
use super::encode::Encoding;
use super::retry::RetryPolicy;
use super::sink::{BatchSettings, Sink};
use super::{file, http, null, stdout};
use crate::admin::HealthReport;
use crate::buffer::{
    BufferKind, BufferReader, BufferSettings, BufferWriter, FsyncPolicy, WhenFull,
};
use crate::config::{
    AwsSpec, BufferSpec, BufferType, Compression, FsyncSpec, OutputKind, OutputSpec, WhenFullSpec,
};

/// Memory buffers hold decoded records and count against `runtime.memory_limit`.
pub const DEFAULT_MEMORY_BUFFER: u64 = 32 << 20;
pub const DEFAULT_DISK_BUFFER: u64 = 1 << 30;

/// Buffer settings of one output; `dir` is `data_dir/buffers/NAME`.
pub fn buffer_settings(spec: &BufferSpec, dir: PathBuf) -> BufferSettings {
    let when_full = match spec.when_full {
        WhenFullSpec::Block => WhenFull::Block,
        WhenFullSpec::DropNewest => WhenFull::DropNewest,
    };
    let mut settings = match spec.kind {
        BufferType::Memory => {
            BufferSettings::memory(spec.max_size.unwrap_or(DEFAULT_MEMORY_BUFFER), when_full)
        }
        BufferType::Disk => {
            BufferSettings::disk(dir, spec.max_size.unwrap_or(DEFAULT_DISK_BUFFER), when_full)
        }
    };
    settings.fsync = match spec.fsync {
        FsyncSpec::Always => FsyncPolicy::Always,
        FsyncSpec::Interval(d) => FsyncPolicy::Interval(d),
        FsyncSpec::Never => FsyncPolicy::Never,
    };
    settings
}

/// Least bytes one record holds in a memory buffer (`Record::approx_size` of an empty
/// record with a short tag), for [`batch_fill_warning`].
const MIN_RECORD_BYTES: u64 = 100;

/// `firelane check`'s warning for a configured batch limit that can never be reached
/// inside the output's buffer: records in an open batch stay in the buffer (and, for a
/// memory buffer, in `runtime.memory_limit`) until it is sent, and the delivery core seals
/// open batches early once they hold a large share of a half-full buffer. So a
/// `batch.max_bytes` above half the room (compressed or not: compressed bytes need at
/// least as many raw ones) or a `batch.max_records` whose smallest records would not fit
/// in half of it is never what seals a batch. Defaults are not checked: only what the
/// user set. `None` when the batch can fill.
pub fn batch_fill_warning(o: &OutputSpec, memory_limit: u64) -> Option<String> {
    let buffer = buffer_settings(&o.buffer, PathBuf::new());
    // Open batches hold decoded records in memory whatever the buffer type (a disk
    // buffer's records are read back into memory to be batched).
    let kind = match buffer.kind {
        BufferKind::Memory => "memory",
        BufferKind::Disk => "disk",
    };
    let (room, what) = if memory_limit < buffer.max_size {
        (
            memory_limit,
            format!("runtime.memory_limit ({})", human_bytes(memory_limit)),
        )
    } else {
        (
            buffer.max_size,
            format!("its {} {kind} buffer", human_bytes(buffer.max_size)),
        )
    };
    let half = room / 2;
    let mut problems = Vec::new();
    if let Some(b) = o.batch.max_bytes.filter(|&b| b > half) {
        let compressed = match &o.kind {
            OutputKind::S3 { compression, .. } | OutputKind::Http { compression, .. } => {
                *compression != Compression::None
            }
            _ => false,
        };
        problems.push(format!(
            "batch.max_bytes = {}{}",
            human_bytes(b),
            if compressed { " (compressed)" } else { "" }
        ));
    }
    if let Some(n) = o
        .batch
        .max_records
        .filter(|&n| n.saturating_mul(MIN_RECORD_BYTES) > half)
    {
        problems.push(format!("batch.max_records = {n}"));
    }
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "output {:?}: {} can never fill within {what}: batches are sealed early when the buffer is half full, or at max_age; raise buffer.max_size (and runtime.memory_limit) or lower the batch limit",
        o.name,
        problems.join(" and ")
    ))
}

/// `32MiB`, `1GiB`, or plain bytes, for messages.
fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if b >= unit && b.is_multiple_of(unit) {
            return format!("{}{name}", b / unit);
        }
    }
    format!("{b}B")
}

/// Batch limits: the sink's defaults, overridden key by key by `batch = { ... }`.
pub fn batch_settings(o: &OutputSpec) -> BatchSettings {
    let defaults = match &o.kind {
        // Local sinks: small, frequent writes keep `tail -f` and tests responsive.
        OutputKind::Stdout | OutputKind::File { .. } => BatchSettings {
            max_records: 1024,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(200),
        },
        OutputKind::Null => BatchSettings {
            max_records: 4096,
            max_bytes: 4 << 20,
            max_age: Duration::from_millis(200),
        },
        OutputKind::Http { .. } => BatchSettings {
            max_records: 1000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        },
        OutputKind::S3 { .. } => s3::default_batch(),
        OutputKind::Firehose { .. } => firehose::default_batch(),
        OutputKind::CloudWatchLogs { .. } => cloudwatch_logs::default_batch(),
    };
    BatchSettings {
        max_records: o
            .batch
            .max_records
            .map_or(defaults.max_records, |n| n as usize),
        max_bytes: o.batch.max_bytes.map_or(defaults.max_bytes, |n| n as usize),
        max_age: o.batch.max_age.unwrap_or(defaults.max_age),
    }
}

pub fn retry_policy(o: &OutputSpec) -> RetryPolicy {
    let d = RetryPolicy::default();
    RetryPolicy {
        initial_backoff: o.retry.initial_backoff.unwrap_or(d.initial_backoff),
        max_backoff: o.retry.max_backoff.unwrap_or(d.max_backoff),
        max_elapsed: o.retry.max_elapsed.or(d.max_elapsed),
        max_retries: o.retry.max_retries.or(d.max_retries),
    }
}

/// The delivery context of `o`. `dead_letter` is the writer of the output named in
/// `dead_letter = "..."`, if any.
pub fn context_for(
    o: &OutputSpec,
    dead_letter: Option<BufferWriter>,
    shutdown: OutputShutdown,
) -> OutputContext {
    let mut ctx = OutputContext::new(&o.name, batch_settings(o));
    ctx.retry = retry_policy(o);
    // Local sinks write in order; remote ones overlap requests for different keys/streams.
    let default_concurrency = match o.kind {
        OutputKind::Stdout | OutputKind::File { .. } | OutputKind::Null => 1,
        _ => 4,
    };
    ctx.concurrency = o.concurrency.unwrap_or(default_concurrency).max(1);
    ctx.max_partitions = o.batch.max_partitions.map_or(DEFAULT_MAX_PARTITIONS, |n| {
        n.clamp(1, usize::MAX as u64) as usize
    });
    ctx.dead_letter = dead_letter
        .zip(o.dead_letter.clone())
        .map(|(writer, name)| DeadLetter { name, writer });
    ctx.shutdown = shutdown;
    ctx.buffer = match o.buffer.kind {
        BufferType::Memory => BufferKind::Memory,
        BufferType::Disk => BufferKind::Disk,
    };
    ctx
}

fn encoding_for(o: &OutputSpec) -> Encoding {
    Encoding {
        tag_key: o.tag_key.clone(),
        time_key: o.time_key.clone(),
    }
}

fn format_for(o: &OutputSpec, log_key: &Option<String>) -> RecordFormat {
    RecordFormat {
        log_key: log_key.clone(),
        tag_key: o.tag_key.clone(),
        time_key: o.time_key.clone(),
    }
}

fn aws_settings(a: &AwsSpec) -> AwsSettings {
    AwsSettings {
        region: a.region.clone(),
        endpoint_url: a.endpoint_url.clone(),
        role_arn: a.role_arn.clone(),
    }
}

fn s3_compression(c: Compression) -> s3::Compression {
    match c {
        Compression::None => s3::Compression::None,
        Compression::Gzip => s3::Compression::Gzip,
        Compression::Zstd => s3::Compression::Zstd,
    }
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
/// network or AWS call (see [`validate`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputConfigError {
    /// The output's key the problem is in (`log_stream`, `headers`…), when there is one,
    /// so the config reader can point at its `file:line:col`.
    pub key: Option<&'static str>,
    /// What is wrong, without the output's name (the caller adds its location).
    pub message: String,
}

impl OutputConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        OutputConfigError {
            key: Some(key),
            message: message.into(),
        }
    }

    /// An AWS sink's [`BuildError`], reworded without the output's name.
    fn aws(e: BuildError) -> Self {
        match e {
            BuildError::NoRegion { .. } => {
                Self::new("region", "no AWS region: set `region` or AWS_REGION")
            }
            BuildError::Template { key, source, .. } => Self::new(key, source.to_string()),
            BuildError::Invalid {
                key, value, reason, ..
            } => Self::new(key, format!("{value:?}: {reason}")),
        }
    }

    fn http(e: http::HttpConfigError) -> Self {
        use http::HttpConfigError as E;
        let key = match &e {
            E::Url { .. } => Some("url"),
            E::Method(_) => Some("method"),
            E::Header { .. } => Some("headers"),
            E::Timeout => Some("timeout"),
            E::Client(_) => None,
        };
        OutputConfigError {
            key,
            message: e.to_string(),
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

/// The HTTP sink's settings from an `http` output's keys.
fn http_config(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    compression: Compression,
    timeout: Duration,
) -> Result<http::HttpConfig, OutputConfigError> {
    let compression = match compression {
        Compression::None => http::HttpCompression::None,
        Compression::Gzip => http::HttpCompression::Gzip,
        Compression::Zstd => {
            return Err(OutputConfigError::new(
                "compression",
                "http outputs support compression none or gzip",
            ));
        }
    };
    Ok(http::HttpConfig {
        url: url.to_string(),
        method: method.to_string(),
        headers: headers.to_vec(),
        compression,
        timeout,
    })
}

/// The settings of one AWS sink, as `start` hands them to its `build`.
enum AwsSinkConfig {
    S3(s3::S3Config),
    Firehose(firehose::FirehoseConfig),
    CloudWatchLogs(cloudwatch_logs::CloudWatchLogsConfig),
}

/// The AWS sink's settings of `o`; `None` for the other output types.
fn aws_config(
    o: &OutputSpec,
    batch: &BatchSettings,
) -> Option<Result<AwsSinkConfig, OutputConfigError>> {
    Some(Ok(match &o.kind {
        OutputKind::S3 {
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
        } => AwsSinkConfig::S3(s3::S3Config {
            name: o.name.clone(),
            bucket: bucket.clone(),
            key: key.clone(),
            compression: s3_compression(*compression),
            storage_class: storage_class.clone(),
            content_type: content_type.clone(),
            acl: acl.clone(),
            format: format_for(o, log_key),
            align: *align,
            force_path_style: *force_path_style,
            aws: aws_settings(aws),
            batch: batch.clone(),
        }),
        OutputKind::Firehose {
            delivery_stream,
            aggregate,
            oversize,
            log_key,
            aws,
        } => {
            let oversize = match oversize.as_str() {
                "truncate" => firehose::Oversize::Truncate,
                "drop" => firehose::Oversize::Drop,
                "split" => firehose::Oversize::Split,
                other => {
                    return Some(Err(OutputConfigError::new(
                        "oversize",
                        format!("{other:?}: expected split, truncate or drop"),
                    )));
                }
            };
            AwsSinkConfig::Firehose(firehose::FirehoseConfig {
                name: o.name.clone(),
                delivery_stream: delivery_stream.clone(),
                aggregate: *aggregate,
                oversize,
                format: format_for(o, log_key),
                aws: aws_settings(aws),
                batch: batch.clone(),
            })
        }
        OutputKind::CloudWatchLogs {
            log_group,
            log_stream,
            auto_create,
            retention_days,
            tags,
            log_key,
            aws,
        } => {
            let retention_days = match retention_days.map(i32::try_from).transpose() {
                Ok(d) => d,
                Err(_) => {
                    return Some(Err(OutputConfigError::new(
                        "retention_days",
                        "retention_days is too large",
                    )));
                }
            };
            AwsSinkConfig::CloudWatchLogs(cloudwatch_logs::CloudWatchLogsConfig {
                name: o.name.clone(),
                log_group: log_group.clone(),
                log_stream: log_stream.clone(),
                auto_create: *auto_create,
                retention_days,
                tags: tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                format: format_for(o, log_key),
                aws: aws_settings(aws),
                batch: batch.clone(),
            })
        }
        _ => return None,
    }))
}

/// Runs the construction-time checks of `o`'s sink, exactly those `start` runs (the same
/// settings through the same constructors), without opening files, resolving credentials
/// or calling AWS: AWS sinks are built around an SDK client that is never used. This is
/// what makes `firelane check`, and `run` before it binds a port, refuse what `start`
/// would refuse. Only the region lookup (`region` unset: env, profile, then IMDS) is left
/// to `start`, as it may need the network.
///
/// Returns the first problem the sink reports (sinks stop at their first).
pub fn validate(o: &OutputSpec) -> Result<(), OutputConfigError> {
    use super::aws::offline;
    let batch = batch_settings(o);
    match &o.kind {
        OutputKind::Stdout | OutputKind::Null | OutputKind::File { .. } => Ok(()),
        OutputKind::Http {
            url,
            method,
            headers,
            compression,
            timeout,
        } => {
            let config = http_config(url, method, headers, *compression, *timeout)?;
            http::HttpSink::new(&config, encoding_for(o), &batch)
                .map(drop)
                .map_err(OutputConfigError::http)
        }
        _ => match aws_config(o, &batch) {
            None => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(AwsSinkConfig::S3(cfg))) => {
                let client = offline::s3(cfg.aws.region.as_deref());
                s3::build_with_client(cfg, client)
                    .map(drop)
                    .map_err(OutputConfigError::aws)
            }
            Some(Ok(AwsSinkConfig::Firehose(cfg))) => {
                let client = offline::firehose(cfg.aws.region.as_deref());
                firehose::build_with_client(cfg, client)
                    .map(drop)
                    .map_err(OutputConfigError::aws)
            }
            Some(Ok(AwsSinkConfig::CloudWatchLogs(cfg))) => {
                let client = offline::cloudwatch_logs(cfg.aws.region.as_deref());
                cloudwatch_logs::build_with_client(cfg, client)
                    .map(drop)
                    .map_err(OutputConfigError::aws)
            }
        },
    }
}

/// Builds the sink of `o` (checking credentials-free settings, opening files) and starts
/// its delivery loop on the buffer `reader`.
pub async fn start(
    o: &OutputSpec,
    ctx: OutputContext,
    reader: BufferReader,
) -> anyhow::Result<(JoinHandle<OutputSummary>, Arc<dyn HealthReport>)> {
    fn spawn<S: Sink>(
        ctx: OutputContext,
        sink: S,
        reader: BufferReader,
    ) -> (JoinHandle<OutputSummary>, Arc<dyn HealthReport>) {
        let health: Arc<dyn HealthReport> = Arc::new(HealthView {
            name: ctx.name.clone(),
            health: ctx.health.clone(),
        });
        (
            tokio::spawn(super::core::run(ctx, Arc::new(sink), reader)),
            health,
        )
    }
    let batch = ctx.batch.clone();
    Ok(match &o.kind {
        OutputKind::Stdout => spawn(
            ctx,
            stdout::StdoutSink::new(&stdout::StdoutConfig {}, encoding_for(o), &batch),
            reader,
        ),
        OutputKind::Null => spawn(ctx, null::NullSink::new(&batch), reader),
        OutputKind::File { path } => {
            let config = file::FileConfig { path: path.clone() };
            spawn(
                ctx,
                file::FileSink::new(&config, encoding_for(o), &batch),
                reader,
            )
        }
        OutputKind::Http {
            url,
            method,
            headers,
            compression,
            timeout,
        } => {
            let config = http_config(url, method, headers, *compression, *timeout)?;
            spawn(
                ctx,
                http::HttpSink::new(&config, encoding_for(o), &batch)
                    .map_err(OutputConfigError::http)?,
                reader,
            )
        }
        _ => match aws_config(o, &batch).context("not an AWS output")?? {
            AwsSinkConfig::S3(cfg) => spawn(ctx, s3::build(cfg).await?, reader),
            AwsSinkConfig::Firehose(cfg) => spawn(ctx, firehose::build(cfg).await?, reader),
            AwsSinkConfig::CloudWatchLogs(cfg) => {
                spawn(ctx, cloudwatch_logs::build(cfg).await?, reader)
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn warnings(output: &str, runtime: &str) -> Vec<String> {
        let text = format!(
            "{runtime}\n[inputs.f]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\n{output}\n"
        );
        match parse(&text, "t.toml", &|_| None) {
            Ok(l) => l.warnings,
            Err(e) => panic!("{e}"),
        }
    }

    fn fill_warnings(output: &str, runtime: &str) -> Vec<String> {
        warnings(output, runtime)
            .into_iter()
            .filter(|w| w.contains("can never fill"))
            .collect()
    }

    const S3: &str = "type = \"s3\"\nbucket = \"b\"\nkey = \"k/{uuid}\"\ncompression = \"gzip\"";

    // Issue #9: `batch = { max_bytes = "256MiB", max_age = "10m" }` on S3 could never
    // fill its 32 MiB buffer, and `check` said nothing.
    #[test]
    fn check_warns_when_a_configured_batch_can_never_fill() {
        let w = fill_warnings(
            &format!("{S3}\nbatch = {{ max_bytes = \"256MiB\", max_age = \"10m\" }}"),
            "",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("batch.max_bytes = 256MiB (compressed)")
                && w[0].contains("32MiB memory buffer"),
            "{}",
            w[0]
        );
        // A record count whose smallest records cannot fit half the buffer.
        let w = fill_warnings("type = \"null\"\nbatch = { max_records = 1000000 }", "");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("batch.max_records = 1000000"), "{}", w[0]);
        // The memory limit caps a memory buffer larger than it.
        let w = fill_warnings(
            &format!(
                "{S3}\nbatch = {{ max_bytes = \"96MiB\" }}\nbuffer = {{ max_size = \"1GiB\" }}"
            ),
            "[runtime]\nmemory_limit = \"128MiB\"",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("runtime.memory_limit (128MiB)"), "{}", w[0]);
        // A disk buffer's open batches are in memory too.
        let w = fill_warnings(
            &format!(
                "{S3}\nbatch = {{ max_bytes = \"256MiB\" }}\nbuffer = {{ type = \"disk\", max_size = \"4GiB\" }}"
            ),
            "",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("runtime.memory_limit (128MiB)"), "{}", w[0]);
    }

    #[test]
    fn check_is_quiet_when_the_batch_fits_or_is_default() {
        assert!(fill_warnings(S3, "").is_empty());
        assert!(fill_warnings("type = \"firehose\"\ndelivery_stream = \"s\"", "").is_empty());
        assert!(
            fill_warnings(
                &format!("{S3}\nbatch = {{ max_bytes = \"256MiB\" }}\nbuffer = {{ type = \"disk\", max_size = \"4GiB\" }}"),
                "[runtime]\nmemory_limit = \"1GiB\""
            )
            .is_empty()
        );
        assert!(
            fill_warnings(
                &format!("{S3}\nbatch = {{ max_bytes = \"8MiB\", max_records = 10000 }}"),
                ""
            )
            .is_empty()
        );
    }

    #[test]
    fn shipped_configs_have_batches_that_fill() {
        let env = |_: &str| Some("x".to_owned());
        for (name, text) in [
            (
                "reference.toml",
                include_str!("../../config/reference.toml"),
            ),
            ("s3.toml", include_str!("../../config/s3.toml")),
            (
                "ecs-events.toml",
                include_str!("../../config/ecs-events.toml"),
            ),
            ("firelens.toml", include_str!("../../config/firelens.toml")),
            ("default.toml", crate::config::EMBEDDED_DEFAULT),
        ] {
            let l = parse(text, name, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
            let w: Vec<&String> = l
                .warnings
                .iter()
                .filter(|w| w.contains("can never fill"))
                .collect();
            assert!(w.is_empty(), "{name}: {w:?}");
        }
    }

    #[test]
    fn max_partitions_is_read_and_must_be_positive() {
        let text = format!(
            "[inputs.f]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\n{S3}\nbatch = {{ max_partitions = 16 }}\n"
        );
        let l = parse(&text, "t.toml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let o = &l.config.outputs[0];
        assert_eq!(o.batch.max_partitions, Some(16));
        let ctx = super::context_for(o, None, Default::default());
        assert_eq!(ctx.max_partitions, 16);
        let zero = text.replace("max_partitions = 16", "max_partitions = 0");
        assert!(parse(&zero, "t.toml", &|_| None).is_err());
        let o = &parse(
            &text.replace("batch = { max_partitions = 16 }", ""),
            "t.toml",
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .outputs[0];
        assert_eq!(
            super::context_for(o, None, Default::default()).max_partitions,
            crate::output::core::DEFAULT_MAX_PARTITIONS
        );
    }
}
