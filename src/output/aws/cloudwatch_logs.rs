//! CloudWatch Logs output (`PutLogEvents`, no sequence tokens).
//!
//! Batch limits, by construction: ≤ 10,000 events; ≤ 1,048,576 bytes counted as UTF-8
//! message bytes + 26 per event; time span (newest − oldest, ms) < 24 h; events sorted by
//! time (stable, so equal timestamps keep arrival order) when the batch is finished.
//! Messages above [`MAX_MESSAGE_BYTES`] (1,000,000 bytes, the per-event cap Fluent Bit
//! uses under AWS's 1 MB event limit) are cut at a character boundary and end with
//! `…[truncated by firelane]` (the core counts them in
//! `firelane_output_oversize_records_total{output, action="truncated"}`). Empty messages, which
//! the API refuses, are rejected with reason `empty_message`.
//!
//! Group and stream come from templates (`/ecs/{ecs_cluster}/{container_name}`,
//! `{ecs_task_id}`). Values from record data are encoded, never replaced, so two different
//! values always give two different names (CreateLogGroup / CreateLogStream rules):
//! - group ([`ValueEncoding::LogGroup`]): bytes outside `[._-A-Za-z0-9]` become `#XX`
//!   (`my cluster` → `my#20cluster`, `#` → `#23`, `/` → `#2F`, so a value cannot add a
//!   level to the group path);
//! - stream ([`ValueEncoding::LogStream`]): `%`, `:`, `*` become `%25`, `%3A`, `%2A`;
//! - an empty or missing value renders as `-`, a value that is exactly `-` as `#2D` (group)
//!   or `%2D` (stream);
//! - a group that would start with `aws/` (reserved by CreateLogGroup; only a record value
//!   can produce it, e.g. `{ns}/app` with `ns` = `aws`) starts with `#61ws/` instead; a
//!   template whose own text starts with `aws/` is refused at start-up;
//! - a name longer than 512 characters keeps its first 495 and ends with `-` and 16 hex
//!   digits of a hash (FNV-1a 64) of the whole name, so long names stay distinct.
//!
//! Text written in the config itself (literals, `${VAR}`) must already be valid: a group
//! template with a character outside `[.-_/#A-Za-z0-9]`, or a stream template with `:` or
//! `*`, is refused at start-up. `{uuid}` is one random value per process (a stream per
//! router instance); `{index}` is refused.
//!
//! `auto_create` defaults to true: FireLens templates name groups and streams per cluster,
//! container and task, which nobody can create ahead of time (Fluent Bit's default of
//! false is a well-known cause of lost logs). Nothing is described or created per batch:
//! only when `PutLogEvents` answers `ResourceNotFoundException` does the sink call
//! `CreateLogStream`, and `CreateLogGroup` (with `tags`, then `PutRetentionPolicy` for
//! `retention_days`) only if the group is missing too; `ResourceAlreadyExistsException`
//! is success (another task won the race). Creation is serialized within the output, so
//! concurrent batches for a new stream create its group once. Then the put is retried once. A group that
//! already existed keeps its retention. No cache is kept: since creation happens only on
//! `ResourceNotFound`, an existing stream costs no extra call, and a stream deleted behind
//! our back is recreated.
//!
//! `rejectedLogEventsInfo` (too old, too new, expired) becomes permanent per-event
//! failures `too_old` / `too_new` / `expired`, never retried: the rest of the batch counts
//! as sent, the rejected events go to the dead-letter output if one is configured
//! (`result="dead_lettered"`), else count as `result="failed"`; the core's log line
//! (`permanent error too_old: PutLogEvents GROUP STREAM: …; N records failed`) says the same.

pub(crate) mod config;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::InputLogEvent;

use super::{
    AwsSettings, BuildError, RecordFormat, TRUNCATION_MARKER, classify, floor_char_boundary,
    require_region, sdk_config,
};
use crate::event::Record;
use crate::output::sink::{BatchBuilder, BatchSettings, Failure, Push, SendResult, Sink};
use crate::output::template::{Dynamic, Template, ValueEncoding};

pub(crate) const MAX_EVENTS: usize = 10_000;
pub(crate) const MAX_BATCH_BYTES: usize = 1_048_576;
pub(crate) const EVENT_OVERHEAD: usize = 26;
pub(crate) const MAX_MESSAGE_BYTES: usize = 1_000_000;
pub(crate) const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
pub(crate) const MAX_NAME_CHARS: usize = 512;
/// CreateLogGroup: "Log group names can't start with the string aws/" (reserved for AWS
/// services; `/aws/…`, with a leading slash, is allowed and common).
pub(crate) const RESERVED_GROUP_PREFIX: &str = "aws/";
/// Values `PutRetentionPolicy` accepts.
pub(crate) const RETENTION_DAYS: &[i32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

#[derive(Clone, Debug, PartialEq)]
/// An `[outputs.NAME]` of `type = "cloudwatch_logs"`, validated (PutLogEvents).
pub struct CloudWatchLogsConfig {
    /// The output's name (`[outputs.NAME]`), for log lines.
    pub name: String,
    /// `log_group` template (record values encoded so they cannot add a path level; may
    /// not start with the reserved `aws/`; at most 512 characters).
    pub log_group: String,
    /// `log_stream` template (`:` and `*` encoded; at most 512 characters); default
    /// `{tag}`.
    pub log_stream: String,
    /// `auto_create`: create a missing group / stream on `ResourceNotFoundException`.
    pub auto_create: bool,
    /// `retention_days` set on groups this output creates; one of the values
    /// `PutRetentionPolicy` accepts.
    pub retention_days: Option<i32>,
    /// Tags for groups this output creates.
    pub tags: HashMap<String, String>,
    /// What a record becomes as an event message (JSON line or `log_key`).
    pub format: RecordFormat,
    /// Region, endpoint and role.
    pub aws: AwsSettings,
    /// Batch limits, clamped to PutLogEvents' 10,000 events and 1,048,576 bytes (each
    /// message plus 26 bytes).
    pub batch: BatchSettings,
}

/// Suggested defaults when the user gives no `batch` table.
pub fn default_batch() -> BatchSettings {
    BatchSettings {
        max_records: MAX_EVENTS,
        max_bytes: MAX_BATCH_BYTES,
        max_age: Duration::from_secs(5),
    }
}

struct Limits {
    max_events: usize,
    max_bytes: usize,
}

/// The CloudWatch Logs destination: PutLogEvents per stream, creating groups and streams
/// when allowed.
pub struct CloudWatchLogsSink {
    name: String,
    client: aws_sdk_cloudwatchlogs::Client,
    group: Template,
    stream: Template,
    process_uuid: String,
    auto_create: bool,
    retention_days: Option<i32>,
    tags: HashMap<String, String>,
    format: Arc<RecordFormat>,
    limits: Arc<Limits>,
    /// Serializes group/stream creation: concurrent batches for a new stream all get
    /// `ResourceNotFound`; the first creates group and stream, the others then find the
    /// stream there (`ResourceAlreadyExists`) instead of each creating the group again.
    create_lock: tokio::sync::Mutex<()>,
}

/// Builds the sink: SDK client (region, endpoint, role) and parsed name templates.
///
/// # Errors
/// [`BuildError`] for a missing region or a template that does not parse or names what
/// CloudWatch Logs would refuse.
pub async fn build(cfg: CloudWatchLogsConfig) -> Result<CloudWatchLogsSink, BuildError> {
    let conf = sdk_config(&cfg.aws).await;
    require_region(&conf, &cfg.name)?;
    let mut b = aws_sdk_cloudwatchlogs::config::Builder::from(&conf);
    if let Some(url) = &cfg.aws.endpoint_url {
        b = b.endpoint_url(url);
    }
    build_with_client(cfg, aws_sdk_cloudwatchlogs::Client::from_conf(b.build()))
}

pub(crate) fn build_with_client(
    cfg: CloudWatchLogsConfig,
    client: aws_sdk_cloudwatchlogs::Client,
) -> Result<CloudWatchLogsSink, BuildError> {
    let parse = |key: &'static str, text: &str, encoding: ValueEncoding| {
        let t = Template::parse(text).map_err(|source| BuildError::Template {
            output: cfg.name.clone(),
            key,
            source,
        })?;
        let invalid = |reason: String| BuildError::Invalid {
            output: cfg.name.clone(),
            key,
            value: text.to_string(),
            reason,
        };
        if text.is_empty() || t.has_index() {
            return Err(invalid("must be non-empty and cannot use {index}".into()));
        }
        // Record values are encoded at render time; the config's own text is checked once.
        let bad = t.literals().flat_map(str::chars).find(|&c| match encoding {
            ValueEncoding::LogGroup => !(c.is_ascii_alphanumeric() || "._-/#".contains(c)),
            _ => c == ':' || c == '*',
        });
        if let Some(c) = bad {
            let allowed = match encoding {
                ValueEncoding::LogGroup => "log group names allow only A-Z a-z 0-9 . _ - / #",
                _ => "log stream names cannot contain : or *",
            };
            return Err(invalid(format!(
                "{c:?} is not allowed ({allowed}; values from records are encoded, the template's own text is not)"
            )));
        }
        Ok(t.with_encoding(encoding))
    };
    let group = parse("log_group", &cfg.log_group, ValueEncoding::LogGroup)?;
    if group.leading_literal().starts_with(RESERVED_GROUP_PREFIX) {
        return Err(BuildError::Invalid {
            output: cfg.name.clone(),
            key: "log_group",
            value: cfg.log_group.clone(),
            reason: "log group names cannot start with \"aws/\" (reserved for AWS services; \
                     \"/aws/...\" is allowed)"
                .into(),
        });
    }
    let stream = parse("log_stream", &cfg.log_stream, ValueEncoding::LogStream)?;
    if let Some(days) = cfg.retention_days
        && !RETENTION_DAYS.contains(&days)
    {
        return Err(BuildError::Invalid {
            output: cfg.name,
            key: "retention_days",
            value: days.to_string(),
            reason: format!("expected one of {RETENTION_DAYS:?}"),
        });
    }
    Ok(CloudWatchLogsSink {
        name: cfg.name.clone(),
        client,
        group,
        stream,
        process_uuid: uuid::Uuid::new_v4().to_string(),
        auto_create: cfg.auto_create,
        retention_days: cfg.retention_days,
        tags: cfg.tags,
        format: Arc::new(cfg.format),
        create_lock: tokio::sync::Mutex::new(()),
        limits: Arc::new(Limits {
            max_events: cfg.batch.max_records.clamp(1, MAX_EVENTS),
            max_bytes: cfg.batch.max_bytes.clamp(1, MAX_BATCH_BYTES),
        }),
    })
}

/// Keeps a rendered name within [`MAX_NAME_CHARS`] without merging two long names into
/// one: a longer name keeps its first 495 characters and ends with `-` and the 16 hex
/// digits of the FNV-1a 64 hash of the whole name (stable across processes and versions,
/// so a restarted router writes to the same stream).
fn fit_name(name: &mut String) {
    const HASH_SUFFIX: usize = 17;
    if name.chars().nth(MAX_NAME_CHARS).is_none() {
        return;
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    if let Some((keep, _)) = name.char_indices().nth(MAX_NAME_CHARS - HASH_SUFFIX) {
        name.truncate(keep);
    }
    let _ = write!(name, "-{hash:016x}");
}

/// A PutLogEvents batch being filled: events of one stream, within 24 h of each other.
pub struct CloudWatchLogsBuilder {
    format: Arc<RecordFormat>,
    limits: Arc<Limits>,
    events: Vec<(i64, String)>,
    bytes: usize,
    min_ts: i64,
    max_ts: i64,
    line: Vec<u8>,
}

/// One `PutLogEvents` request: events in time order, and for each the item number it had
/// when pushed.
#[derive(Debug)]
pub struct CloudWatchLogsBatch {
    pub(crate) events: Vec<(i64, String)>,
    pub(crate) items: Vec<usize>,
}

impl BatchBuilder for CloudWatchLogsBuilder {
    type Batch = CloudWatchLogsBatch;

    fn push(&mut self, record: &Record) -> Push {
        if self.events.len() >= self.limits.max_events {
            return Push::Full;
        }
        self.line.clear();
        self.format.write_line(record, &mut self.line);
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        let mut message = match std::str::from_utf8(&self.line) {
            Ok(s) => s.to_string(),
            Err(_) => String::from_utf8_lossy(&self.line).into_owned(),
        };
        if message.is_empty() {
            return Push::Rejected("empty_message");
        }
        let truncated = message.len() > MAX_MESSAGE_BYTES;
        if truncated {
            let keep = floor_char_boundary(&message, MAX_MESSAGE_BYTES - TRUNCATION_MARKER.len());
            message.truncate(keep);
            message.push_str(TRUNCATION_MARKER);
        }
        let size = message.len() + EVENT_OVERHEAD;
        let ts = (record.time_ns.div_euclid(1_000_000)).max(0);
        if !self.events.is_empty() {
            if self.bytes + size > self.limits.max_bytes {
                return Push::Full;
            }
            if self.max_ts.max(ts) - self.min_ts.min(ts) >= MAX_SPAN_MS {
                return Push::Full;
            }
            self.min_ts = self.min_ts.min(ts);
            self.max_ts = self.max_ts.max(ts);
        } else {
            self.min_ts = ts;
            self.max_ts = ts;
        }
        self.bytes += size;
        self.events.push((ts, message));
        if self.line.capacity() > 2 * MAX_MESSAGE_BYTES {
            self.line = Vec::new();
        }
        if truncated {
            Push::Truncated
        } else {
            Push::Added
        }
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn finish(self) -> CloudWatchLogsBatch {
        let mut tagged: Vec<(usize, (i64, String))> = self.events.into_iter().enumerate().collect();
        // Stable: equal timestamps keep arrival order.
        tagged.sort_by_key(|(_, (ts, _))| *ts);
        let (items, events) = tagged.into_iter().unzip();
        CloudWatchLogsBatch { events, items }
    }
}

/// Maps `rejectedLogEventsInfo` (indexes into the sorted batch) to per-item failures.
pub(crate) fn rejected_outcome(
    items: &[usize],
    too_new_start: Option<i32>,
    too_old_end: Option<i32>,
    expired_end: Option<i32>,
) -> SendResult {
    let n = items.len();
    let idx = |v: Option<i32>| v.map(|i| (i.max(0) as usize).min(n));
    let (too_new, too_old, expired) = (idx(too_new_start), idx(too_old_end), idx(expired_end));
    let mut failed = Vec::new();
    for (pos, &item) in items.iter().enumerate() {
        let reason = if expired.is_some_and(|e| pos < e) {
            "expired"
        } else if too_old.is_some_and(|e| pos < e) {
            "too_old"
        } else if too_new.is_some_and(|s| pos >= s) {
            "too_new"
        } else {
            continue;
        };
        let message = match reason {
            "expired" => "event older than the log group's retention",
            "too_old" => "event more than 14 days old",
            _ => "event more than 2 hours in the future",
        };
        failed.push((item, Failure::permanent(reason, message)));
    }
    if failed.is_empty() {
        return SendResult::Delivered;
    }
    failed.sort_by_key(|(i, _)| *i);
    SendResult::Partial(failed)
}

enum PutError {
    NotFound(Failure),
    Other(Failure),
}

impl CloudWatchLogsSink {
    async fn put(
        &self,
        group: &str,
        stream: &str,
        batch: &CloudWatchLogsBatch,
    ) -> Result<SendResult, PutError> {
        let mut events = Vec::with_capacity(batch.events.len());
        for (ts, msg) in &batch.events {
            let e = InputLogEvent::builder()
                .timestamp(*ts)
                .message(msg.clone())
                .build();
            match e {
                Ok(e) => events.push(e),
                Err(e) => {
                    return Err(PutError::Other(Failure::permanent(
                        "invalid_request",
                        e.to_string(),
                    )));
                }
            }
        }
        let result = self
            .client
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(events))
            .send()
            .await;
        match result {
            Ok(out) => {
                let Some(info) = out.rejected_log_events_info() else {
                    return Ok(SendResult::Delivered);
                };
                let r = rejected_outcome(
                    &batch.items,
                    info.too_new_log_event_start_index(),
                    info.too_old_log_event_end_index(),
                    info.expired_log_event_end_index(),
                );
                // No log line here: the core logs each reason once with the records' real
                // fate (failed, or dead-lettered), the same words as the metric it counts.
                Ok(match r {
                    SendResult::Partial(mut failed) => {
                        for (_, f) in &mut failed {
                            f.message = format!("PutLogEvents {group} {stream}: {}", f.message);
                        }
                        SendResult::Partial(failed)
                    }
                    other => other,
                })
            }
            Err(e) => {
                let mut f = classify(&e);
                f.message = format!("PutLogEvents {group} {stream}: {}", f.message);
                let not_found = e
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception());
                Err(if not_found {
                    PutError::NotFound(f)
                } else {
                    PutError::Other(f)
                })
            }
        }
    }

    async fn create_group(&self, group: &str) -> Result<(), Failure> {
        let tags = (!self.tags.is_empty()).then(|| self.tags.clone());
        match self
            .client
            .create_log_group()
            .log_group_name(group)
            .set_tags(tags)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(output = %self.name, "created log group {group}");
                if let Some(days) = self.retention_days {
                    let r = self
                        .client
                        .put_retention_policy()
                        .log_group_name(group)
                        .retention_in_days(days)
                        .send()
                        .await;
                    if let Err(e) = r {
                        // The group exists and logs can flow; a missing retention is not worth
                        // holding data back for.
                        crate::warn_limited!(
                            "cloudwatch_retention",
                            "output {}: could not set retention {days} d on {group}: {}",
                            self.name,
                            classify(&e).message
                        );
                    }
                }
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => {
                let mut f = classify(&e);
                f.message = format!("CreateLogGroup {group}: {}", f.message);
                Err(f)
            }
        }
    }

    async fn create_stream(&self, group: &str, stream: &str) -> Result<bool, Failure> {
        match self
            .client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => {
                tracing::debug!(output = %self.name, "created log stream {group} {stream}");
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_already_exists_exception()) =>
            {
                Ok(true)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(e) => {
                let mut f = classify(&e);
                f.message = format!("CreateLogStream {group} {stream}: {}", f.message);
                Err(f)
            }
        }
    }

    async fn ensure_stream(&self, group: &str, stream: &str) -> Result<(), Failure> {
        if self.create_stream(group, stream).await? {
            return Ok(());
        }
        self.create_group(group).await?;
        if self.create_stream(group, stream).await? {
            return Ok(());
        }
        Err(Failure::permanent(
            "resource_not_found",
            format!(
                "CreateLogStream {group} {stream}: the log group is still missing after it was created"
            ),
        ))
    }
}

impl CloudWatchLogsSink {
    /// The log group and stream `record` goes to: rendered, encoded and cut to 512
    /// characters. `Err` is the drop reason for a name that cannot be sent.
    fn names(
        &self,
        record: &Record,
        dynamic: Dynamic<'_>,
    ) -> Result<(String, String), &'static str> {
        let mut group = self.group.render_to_string(record, dynamic);
        if group.starts_with(RESERVED_GROUP_PREFIX) {
            // Only record values can get here (a template starting with `aws/` is refused
            // at start-up): write the first `a` as `#61`, the way values are encoded. Values
            // write `#` as `#23`, so no other value renders `#61ws/`.
            group.replace_range(..1, "#61");
        }
        fit_name(&mut group);
        let mut stream = self.stream.render_to_string(record, dynamic);
        fit_name(&mut stream);
        if group.is_empty() {
            return Err("invalid_log_group");
        }
        if stream.is_empty() {
            return Err("invalid_log_stream");
        }
        Ok((group, stream))
    }
}

impl CloudWatchLogsSink {
    /// Where `record` would be written, without calling AWS: `log group G, log stream S`,
    /// rendered, encoded and cut as the sink does; `{uuid}` (one per process) is shown as the
    /// placeholder. `Err` is the reason the sink would refuse the record.
    pub(crate) fn destination(&self, record: &Record) -> Result<String, &'static str> {
        let (group, stream) = self.names(record, Dynamic::preview())?;
        Ok(format!("log group {group}, log stream {stream}"))
    }
}

/// The partition of a CloudWatch Logs output: one log stream, named as `PutLogEvents`
/// takes it (`logGroupName`, `logStreamName`), already encoded and cut to the API limits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogStream {
    pub(crate) group: String,
    pub(crate) stream: String,
}

impl std::fmt::Display for LogStream {
    /// `group:stream` (a group name cannot contain `:`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.group, self.stream)
    }
}

impl Sink for CloudWatchLogsSink {
    type Builder = CloudWatchLogsBuilder;
    type Partition = LogStream;

    fn partition(&self, record: &Record) -> Result<LogStream, &'static str> {
        let dynamic = Dynamic {
            uuid: Some(&self.process_uuid),
            ..Dynamic::default()
        };
        let (group, stream) = self.names(record, dynamic)?;
        Ok(LogStream { group, stream })
    }

    fn new_batch(&self, _partition: &LogStream) -> CloudWatchLogsBuilder {
        CloudWatchLogsBuilder {
            format: Arc::clone(&self.format),
            limits: Arc::clone(&self.limits),
            events: Vec::new(),
            bytes: 0,
            min_ts: 0,
            max_ts: 0,
            line: Vec::new(),
        }
    }

    async fn send(&self, partition: &LogStream, batch: &CloudWatchLogsBatch) -> SendResult {
        let (group, stream) = (partition.group.as_str(), partition.stream.as_str());
        if batch.events.is_empty() {
            return SendResult::Delivered;
        }
        match self.put(group, stream, batch).await {
            Ok(r) => r,
            Err(PutError::Other(f)) => SendResult::Failed(f),
            Err(PutError::NotFound(f)) if !self.auto_create => SendResult::Failed(Failure {
                message: format!("{} (auto_create is off)", f.message),
                ..f
            }),
            Err(PutError::NotFound(_)) => {
                let created = {
                    let _one_at_a_time = self.create_lock.lock().await;
                    self.ensure_stream(group, stream).await
                };
                if let Err(f) = created {
                    return SendResult::Failed(f);
                }
                match self.put(group, stream, batch).await {
                    Ok(r) => r,
                    Err(PutError::Other(f) | PutError::NotFound(f)) => SendResult::Failed(f),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sink(group: &str, stream: &str) -> CloudWatchLogsSink {
        let conf = aws_sdk_cloudwatchlogs::Config::builder()
            .region(aws_sdk_cloudwatchlogs::config::Region::new("us-east-1"))
            .build();
        build_with_client(
            CloudWatchLogsConfig {
                name: "t".into(),
                log_group: group.into(),
                log_stream: stream.into(),
                auto_create: true,
                retention_days: None,
                tags: HashMap::new(),
                format: RecordFormat {
                    log_key: Some("log".into()),
                    ..Default::default()
                },
                aws: AwsSettings::default(),
                batch: default_batch(),
            },
            aws_sdk_cloudwatchlogs::Client::from_conf(conf),
        )
        .unwrap()
    }

    /// A record whose message is exactly `len` bytes.
    fn rec(len: usize, time_ms: i64) -> Record {
        let serde_json::Value::Object(m) = json!({"log": "m".repeat(len)}) else {
            unreachable!()
        };
        Record::new("t", time_ms * 1_000_000, m)
    }

    fn builder() -> CloudWatchLogsBuilder {
        sink("g", "s").new_batch(&gs())
    }

    #[test]
    fn at_most_10_000_events() {
        let mut b = builder();
        for i in 0..10_000 {
            assert_eq!(b.push(&rec(1, 1_000 + i)), Push::Added);
        }
        assert_eq!(b.push(&rec(1, 1_000)), Push::Full);
        assert_eq!(b.len(), 10_000);
        assert_eq!(b.bytes(), 10_000 * 27);
    }

    #[test]
    fn byte_limit_counts_26_bytes_per_event() {
        // 1,048,576 = 4 × (262,118 + 26): four such events fill a batch exactly.
        let mut b = builder();
        for _ in 0..4 {
            assert_eq!(b.push(&rec(262_118, 5)), Push::Added);
        }
        assert_eq!(b.bytes(), MAX_BATCH_BYTES);
        assert_eq!(b.push(&rec(1, 5)), Push::Full);

        // One byte over: 3 events + (262,119 + 26) = 1,048,577.
        let mut b = builder();
        for _ in 0..3 {
            b.push(&rec(262_118, 5));
        }
        assert_eq!(b.push(&rec(262_119, 5)), Push::Full);
        assert_eq!(b.push(&rec(262_118, 5)), Push::Added);

        // Without the overhead, 10,000 events of 104 bytes would fit (1,040,000); with it
        // (130 each) only 8,065 do.
        let mut b = builder();
        let mut n = 0;
        while b.push(&rec(104, 5)) == Push::Added {
            n += 1;
        }
        assert_eq!(n, MAX_BATCH_BYTES / 130);
    }

    #[test]
    fn span_stays_under_24_hours() {
        let h = 3_600_000;
        let mut b = builder();
        assert_eq!(b.push(&rec(1, 10 * h)), Push::Added);
        assert_eq!(b.push(&rec(1, 34 * h - 1)), Push::Added);
        assert_eq!(b.push(&rec(1, 34 * h)), Push::Full, "exactly 24 h");
        assert_eq!(b.push(&rec(1, 35 * h)), Push::Full, "25 h");
        // Older events widen the span too.
        assert_eq!(b.push(&rec(1, 10 * h - 1)), Push::Full);
        assert_eq!(b.push(&rec(1, 10 * h + 1)), Push::Added);
    }

    #[test]
    fn oversized_event_is_truncated_with_marker() {
        let mut b = builder();
        let serde_json::Value::Object(m) = json!({"log": "ü".repeat(550_000)}) else {
            unreachable!()
        };
        assert_eq!(b.push(&Record::new("t", 0, m)), Push::Truncated);
        assert_eq!(b.push(&rec(MAX_MESSAGE_BYTES, 0)), Push::Full);
        let batch = b.finish();
        let mut b = builder();
        assert_eq!(b.push(&rec(MAX_MESSAGE_BYTES, 0)), Push::Added);
        let at_limit = b.finish();
        let msg = &batch.events[0].1;
        assert!(msg.len() <= MAX_MESSAGE_BYTES && msg.len() > MAX_MESSAGE_BYTES - 30);
        assert!(msg.ends_with(TRUNCATION_MARKER));
        assert_eq!(at_limit.events[0].1.len(), MAX_MESSAGE_BYTES);
        // 1.1 MB message
        let mut b = builder();
        assert_eq!(b.push(&rec(1_100_000, 0)), Push::Truncated);
        assert_eq!(b.bytes(), MAX_MESSAGE_BYTES + EVENT_OVERHEAD);
        let mut b = builder();
        assert_eq!(b.push(&rec(0, 0)), Push::Rejected("empty_message"));
    }

    #[test]
    fn finish_sorts_stably_and_remembers_items() {
        let mut b = builder();
        let serde_json::Value::Object(m) = json!({"log": "x", "seq": 1}) else {
            unreachable!()
        };
        for (i, t) in [30, 10, 20, 10, 5].into_iter().enumerate() {
            let mut r = rec(1, t);
            *r.fields_mut() = m.clone();
            r.fields_mut().insert("log".into(), json!(format!("e{i}")));
            b.push(&r);
        }
        let batch = b.finish();
        let ts: Vec<i64> = batch.events.iter().map(|e| e.0).collect();
        assert_eq!(ts, vec![5, 10, 10, 20, 30]);
        assert_eq!(batch.items, vec![4, 1, 3, 2, 0]);
        assert_eq!(batch.events[1].1, "e1");
        assert_eq!(batch.events[2].1, "e3");
    }

    #[test]
    fn rejected_events_become_permanent_item_failures() {
        let items = vec![4, 1, 3, 2, 0];
        let SendResult::Partial(f) = rejected_outcome(&items, Some(4), Some(2), Some(1)) else {
            panic!()
        };
        let got: Vec<(usize, &str, bool)> = f
            .iter()
            .map(|(i, f)| (*i, f.reason.as_str(), f.retryable))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "too_new", false),
                (1, "too_old", false),
                (4, "expired", false)
            ]
        );
        assert_eq!(
            rejected_outcome(&items, None, None, None),
            SendResult::Delivered
        );
        assert_eq!(
            rejected_outcome(&items, Some(5), Some(0), None),
            SendResult::Delivered
        );
        // Out-of-range indexes from the server are clamped, not trusted.
        let SendResult::Partial(f) = rejected_outcome(&items, Some(-3), None, Some(99)) else {
            panic!()
        };
        assert_eq!(f.len(), 5);
        assert!(f.iter().all(|(_, f)| f.reason == "expired"));
    }

    /// A real `PutLogEvents` answer with `rejectedLogEventsInfo`, parsed by the SDK: the
    /// indexes (into the time-sorted batch) map back to the items as pushed.
    #[tokio::test]
    async fn send_maps_rejected_log_events_info_from_the_wire() {
        let url = crate::output::aws::canned::serve(
            200,
            r#"{"nextSequenceToken":"1","rejectedLogEventsInfo":
                {"tooOldLogEventEndIndex":1,"tooNewLogEventStartIndex":2}}"#,
        );
        let conf = crate::output::aws::canned::sdk_config(&url);
        let s = CloudWatchLogsSink {
            client: aws_sdk_cloudwatchlogs::Client::new(&conf),
            ..sink("g", "s")
        };
        let mut b = s.new_batch(&gs());
        // Items 0, 1, 2 at times 30, 10, 20: sorted, item 1 comes first and item 0 last.
        for t in [30, 10, 20] {
            assert_eq!(b.push(&rec(5, t)), Push::Added);
        }
        let SendResult::Partial(failed) = s.send(&gs(), &b.finish()).await else {
            panic!("expected a partial result")
        };
        let got: Vec<(usize, &str, bool)> = failed
            .iter()
            .map(|(i, f)| (*i, f.reason.as_str(), f.retryable))
            .collect();
        assert_eq!(got, vec![(0, "too_new", false), (1, "too_old", false)]);
        // The core logs and dead-letters this message: it names where the events were going.
        assert!(
            failed
                .iter()
                .all(|(_, f)| f.message.starts_with("PutLogEvents g s: event more than")),
            "{failed:?}"
        );
    }

    fn gs() -> LogStream {
        LogStream {
            group: "g".into(),
            stream: "s".into(),
        }
    }

    fn fields(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        let serde_json::Value::Object(m) = v else {
            unreachable!()
        };
        m
    }

    #[test]
    fn partitions_from_templates_are_encoded() {
        let s = sink("/ecs/{ecs_cluster}/{container_name}", "{ecs_task_id}");
        let r = Record::new(
            "t",
            0,
            fields(json!({
            "ecs_cluster": "my cluster", "container_name": "/ecs-demo-1-app",
            "ecs_task_arn": "arn:aws:ecs:us-east-1:1:task/my/abc123"})),
        );
        assert_eq!(
            s.partition(&r).unwrap().to_string(),
            "/ecs/my#20cluster/#2Fecs-demo-1-app:abc123"
        );
        // `a:b` and `a_b` were both `a_b` when `:` was replaced: now two streams.
        let s = sink("g", "{tag}-{x}");
        let p = |tag: &str| {
            s.partition(&Record::new(tag, 0, Default::default()))
                .unwrap()
                .to_string()
        };
        assert_eq!(p("a:b"), "g:a%3Ab--");
        assert_eq!(p("a_b"), "g:a_b--");
        assert_eq!(p("a*b"), "g:a%2Ab--");
        let s = sink("{long}", "s");
        let long = |c: &str| {
            s.partition(&Record::new("t", 0, fields(json!({"long": c.repeat(600)}))))
                .unwrap()
                .to_string()
        };
        let (y, z) = (long("y"), long("z"));
        assert_eq!(y.len(), 512 + 2);
        assert!(y.starts_with(&"y".repeat(495)), "{y}");
        assert_ne!(y, z);
        // Over the limit only by encoding: still cut and still distinct.
        let s = sink("{v}", "{v}");
        let a = s
            .partition(&Record::new("t", 0, fields(json!({"v": " ".repeat(200)}))))
            .unwrap()
            .to_string();
        let (g, st) = a.split_once(':').unwrap();
        assert_eq!((g.len(), st.len()), (512, 200));
        // A group from a value that would start with the reserved `aws/`: `#61ws/`, and
        // still distinct from every other value.
        let s = sink("{ns}/app", "s");
        let g = |ns: serde_json::Value| {
            s.partition(&Record::new("t", 0, fields(json!({ "ns": ns }))))
                .unwrap()
                .to_string()
        };
        assert_eq!(g(json!("aws")), "#61ws/app:s");
        assert_eq!(g(json!("aws/x")), "aws#2Fx/app:s");
        assert_eq!(g(json!("#61ws")), "#2361ws/app:s");
        assert_eq!(g(json!("AWS")), "AWS/app:s");
        let s = sink("a{x}/y", "s");
        let r = Record::new("t", 0, fields(json!({"x": "ws"})));
        assert_eq!(s.partition(&r).unwrap().to_string(), "#61ws/y:s");
        assert_eq!(
            s.destination(&r).unwrap(),
            "log group #61ws/y, log stream s"
        );
        let s = sink("g", "{uuid}");
        let a = s.partition(&rec(1, 0)).unwrap();
        assert_eq!(a, s.partition(&rec(1, 1)).unwrap());
        assert_eq!(a.to_string().len(), 2 + 36);
    }

    #[test]
    fn config_errors() {
        let conf = aws_sdk_cloudwatchlogs::Config::builder().build();
        let mut cfg = CloudWatchLogsConfig {
            name: "t".into(),
            log_group: "g".into(),
            log_stream: "{index}".into(),
            auto_create: true,
            retention_days: None,
            tags: HashMap::new(),
            format: RecordFormat::default(),
            aws: AwsSettings::default(),
            batch: default_batch(),
        };
        let c = aws_sdk_cloudwatchlogs::Client::from_conf(conf);
        assert!(build_with_client(cfg.clone(), c.clone()).is_err());
        cfg.log_stream = "s".into();
        cfg.retention_days = Some(8);
        let e = build_with_client(cfg.clone(), c.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("retention_days"), "{e}");
        cfg.retention_days = Some(30);
        assert!(build_with_client(cfg.clone(), c.clone()).is_ok());
        // The config's own text must be valid as it is; only record values are encoded.
        for (group, stream, bad) in [
            ("/ecs/my app/{x}", "s", "log_group"),
            ("/ecs/${FIRELANE_TEST_UNSET_VAR:-a:b}", "s", "log_group"),
            ("g", "{tag}:{x}", "log_stream"),
            ("g", "*", "log_stream"),
        ] {
            cfg.log_group = group.into();
            cfg.log_stream = stream.into();
            let e = build_with_client(cfg.clone(), c.clone())
                .err()
                .unwrap_or_else(|| panic!("{group} {stream} accepted"))
                .to_string();
            assert!(e.contains(bad) && e.contains("not allowed"), "{e}");
        }
        // `aws/` is reserved (CreateLogGroup); `/aws/` is not.
        for group in ["aws/ecs/{x}", "${FIRELANE_TEST_UNSET_VAR:-aws/x}/{x}"] {
            cfg.log_group = group.into();
            cfg.log_stream = "s".into();
            let e = build_with_client(cfg.clone(), c.clone())
                .err()
                .unwrap_or_else(|| panic!("{group} accepted"))
                .to_string();
            assert!(e.contains("log_group") && e.contains("aws/"), "{e}");
        }
        cfg.log_group = "/aws/ecs/#team-a/{x}".into();
        cfg.log_stream = "{tag} %Y-%m-%d #1".into();
        assert!(build_with_client(cfg, c).is_ok());
    }
}
