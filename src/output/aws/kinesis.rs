//! Kinesis Data Streams output (`PutRecords`).
//!
//! Limits enforced by the batch builder (Kinesis API Reference, PutRecords), on raw bytes
//! before base64: ≤ 500 records per call; ≤ 5 MiB per call and ≤ 1 MiB per record, both
//! counting the data *and* the partition key. Every record is one newline-terminated line
//! (the JSON record, or the `log_key` field), as the `firehose` output writes them.
//!
//! Partition key: `partition_key` is a template (`{ecs_task_id}`, `{container_name}`…);
//! records with the same key go to the same shard (in the order sent with `concurrency = 1`;
//! with more requests in flight, or when a throttled record is resent, later records can
//! land before it). Unset, every record gets a random key (32 hex characters), spreading
//! records evenly over the shards, as Fluent Bit's `kinesis_streams` does. A key that
//! renders as nothing but `-` (every value it names is missing: `{container_id}` on a
//! record without it) is replaced by a random key too, as the Go `kinesis` plugin does for
//! a missing `partition_key` field, so records without the field do not all pile onto one
//! shard. Keys longer than 256 Unicode characters (the API limit) are cut to 256, counted in
//! `firelane_output_oversize_records_total{output, action="partition_key_truncated"}`.
//!
//! A record whose data and key exceed 1 MiB follows `oversize` (see
//! [`super::records::Oversize`]): `split` (default) sends it as consecutive records of
//! ≤ 1 MiB with the same partition key in one call, hence consecutive in one shard (only the
//! last ends with `\n`; a consumer that concatenates, such as Firehose reading the stream
//! into S3, gets the line whole); records above what one call carries (5 pieces) are
//! truncated first. Caveat, as for Firehose: when only some pieces are rejected, the whole
//! record is resent, so a consumer can see a duplicated fragment. `truncate` cuts the data
//! with a marker; `drop` drops it, counted.
//!
//! Partial failures (`FailedRecordCount > 0`) become [`SendResult::Partial`] listing only
//! the rejected records (`ProvisionedThroughputExceededException`, `InternalFailure`,
//! `KMSThrottlingException`: retried with the core's backoff; `KMS*` key problems and
//! access denied: permanent, to the dead letter output), so delivered records are never
//! sent twice. A whole call refused (`ResourceNotFoundException` for a missing stream,
//! `AccessDeniedException`, validation) is classified like every AWS sink's error.

pub(crate) mod config;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;

use super::records::{self, Api, Fitted, Oversize, fit};
use super::{AwsSettings, BuildError, RecordFormat, require_region, sdk_config};
use crate::event::Record;
use crate::output::deliver::oversize_counter;
use crate::output::sink::{BatchBuilder, BatchSettings, Failure, Push, SendResult, Sink};
use crate::output::template::{Dynamic, MISSING, Template};

/// Records per `PutRecords` call.
pub(crate) const MAX_RECORDS_PER_CALL: usize = 500;
/// Bytes per call: data plus partition keys.
pub(crate) const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;
/// Bytes per record: data plus partition key.
pub(crate) const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Unicode characters of a partition key.
pub(crate) const MAX_PARTITION_KEY_CHARS: usize = 256;

/// Which stream `PutRecords` names.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamId {
    /// `stream`: the stream's name (1–128 characters of `[a-zA-Z0-9_.-]`).
    Name(String),
    /// `stream_arn`: `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME` (for a stream of another
    /// account, with `role_arn`).
    Arn(String),
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamId::Name(n) | StreamId::Arn(n) => f.write_str(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
/// An `[outputs.NAME]` of `type = "kinesis"`, validated (PutRecords).
pub struct KinesisConfig {
    /// The output's name (`[outputs.NAME]`), for log lines and metrics.
    pub name: String,
    /// `stream` or `stream_arn`.
    pub stream: StreamId,
    /// `partition_key`: a template; `None` for a random key per record.
    pub partition_key: Option<String>,
    /// `oversize`: see [`Oversize`].
    pub oversize: Oversize,
    /// What a record becomes (JSON line or `log_key`).
    pub format: RecordFormat,
    /// Region, endpoint and role.
    pub aws: AwsSettings,
    /// Batch limits, clamped to PutRecords' 500 records and 5 MiB.
    pub batch: BatchSettings,
}

/// Suggested defaults when the user gives no `batch` table.
pub fn default_batch() -> BatchSettings {
    BatchSettings {
        max_records: usize::MAX,
        max_bytes: MAX_BYTES_PER_CALL,
        max_age: Duration::from_secs(5),
    }
}

struct Limits {
    /// `firelane_output_oversize_records_total{output, action="split"}`; truncation of the
    /// data is counted by the core.
    split: metrics::Counter,
    /// `…{action="partition_key_truncated"}`.
    key_cut: metrics::Counter,
    partition_key: Option<Template>,
    oversize: Oversize,
    max_items: usize,
    max_bytes: usize,
}

/// Whether a rendered partition key is empty or only `-`: every value the template names is
/// missing (`-` is what a missing value renders as), so the key carries no information and
/// a random one replaces it.
fn carries_nothing(key: &str) -> bool {
    key.bytes().all(|b| b == MISSING.as_bytes()[0])
}

impl Limits {
    /// The partition key of `record` into `out`; whether it had to be cut to 256 characters.
    fn partition_key(&self, record: &Record, out: &mut String) -> bool {
        out.clear();
        if let Some(t) = &self.partition_key {
            t.render(record, Dynamic::default(), out);
        }
        if carries_nothing(out) {
            out.clear();
            out.push_str(&uuid::Uuid::new_v4().simple().to_string());
            return false;
        }
        match out.char_indices().nth(MAX_PARTITION_KEY_CHARS) {
            Some((cut, _)) => {
                out.truncate(cut);
                true
            }
            None => false,
        }
    }
}

/// The Kinesis Data Streams destination: PutRecords, retrying only the records that failed.
pub struct KinesisSink {
    name: String,
    client: aws_sdk_kinesis::Client,
    stream: StreamId,
    format: Arc<RecordFormat>,
    limits: Arc<Limits>,
}

/// The region of a Kinesis stream ARN (`arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`),
/// when it has one.
pub(crate) fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

fn invalid(output: &str, key: &'static str, value: &str, reason: &str) -> BuildError {
    BuildError::Invalid {
        output: output.to_string(),
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Builds the sink (SDK client for region, endpoint, role).
///
/// # Errors
/// [`BuildError::NoRegion`] when no region is configured or found; see
/// [`build_with_client`] for the checks of the settings.
pub async fn build(cfg: KinesisConfig) -> Result<KinesisSink, BuildError> {
    let conf = sdk_config(&cfg.aws).await;
    require_region(&conf, &cfg.name)?;
    let mut b = aws_sdk_kinesis::config::Builder::from(&conf);
    if let Some(url) = &cfg.aws.endpoint_url {
        b = b.endpoint_url(url);
    }
    build_with_client(cfg, aws_sdk_kinesis::Client::from_conf(b.build()))
}

/// The sink around `client`.
///
/// # Errors
/// [`BuildError::Invalid`] for a stream name outside 1–128 `[a-zA-Z0-9_.-]` or an ARN that
/// is not a Kinesis stream's (CreateStream / PutRecords constraints), a `partition_key`
/// that is empty, uses `{uuid}`/`{index}` (per S3 object) or is a fixed text above 256
/// characters; [`BuildError::Template`] for one that does not parse.
pub(crate) fn build_with_client(
    cfg: KinesisConfig,
    client: aws_sdk_kinesis::Client,
) -> Result<KinesisSink, BuildError> {
    match &cfg.stream {
        StreamId::Name(n) => {
            if n.is_empty()
                || n.len() > 128
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(invalid(
                    &cfg.name,
                    "stream",
                    n,
                    "a stream name is 1 to 128 characters of a-z, A-Z, 0-9, _ . -",
                ));
            }
        }
        StreamId::Arn(a) => {
            let parts: Vec<&str> = a.splitn(6, ':').collect();
            if parts.len() != 6
                || parts[0] != "arn"
                || parts[2] != "kinesis"
                || !parts[5].starts_with("stream/")
            {
                return Err(invalid(
                    &cfg.name,
                    "stream_arn",
                    a,
                    "expected arn:aws:kinesis:REGION:ACCOUNT:stream/NAME",
                ));
            }
            // PutRecords goes to `region`'s endpoint; a stream of another region is not
            // found there, and every record would fail for good.
            if let (Some(stream_region), Some(region)) = (arn_region(a), &cfg.aws.region)
                && stream_region != region
            {
                return Err(invalid(
                    &cfg.name,
                    "stream_arn",
                    a,
                    &format!(
                        "the stream is in {stream_region} but region is {region}; set region = \"{stream_region}\" or leave it unset (it defaults to the ARN's)"
                    ),
                ));
            }
        }
    }
    let partition_key = match &cfg.partition_key {
        None => None,
        Some(text) => {
            let t = Template::parse(text).map_err(|source| BuildError::Template {
                output: cfg.name.clone(),
                key: "partition_key",
                source,
            })?;
            if t.has_uuid() || t.has_index() {
                return Err(invalid(
                    &cfg.name,
                    "partition_key",
                    text,
                    "{uuid} and {index} are per S3 object; leave partition_key unset for a random key per record",
                ));
            }
            let fixed: String = t.literals().collect();
            if t.is_static() && fixed.is_empty() {
                return Err(invalid(
                    &cfg.name,
                    "partition_key",
                    text,
                    "must not be empty; leave it unset for a random key per record",
                ));
            }
            if t.is_static() && fixed.chars().count() > MAX_PARTITION_KEY_CHARS {
                return Err(invalid(
                    &cfg.name,
                    "partition_key",
                    text,
                    "a partition key is at most 256 characters",
                ));
            }
            Some(t)
        }
    };
    Ok(KinesisSink {
        name: cfg.name.clone(),
        client,
        stream: cfg.stream,
        format: Arc::new(cfg.format),
        limits: Arc::new(Limits {
            split: oversize_counter(&cfg.name, "split"),
            key_cut: oversize_counter(&cfg.name, "partition_key_truncated"),
            partition_key,
            oversize: cfg.oversize,
            max_items: cfg.batch.max_records.max(1),
            max_bytes: cfg.batch.max_bytes.clamp(1, MAX_BYTES_PER_CALL),
        }),
    })
}

impl KinesisSink {
    /// Where `record` would go: `stream NAME, partition key KEY` (no AWS call).
    pub(crate) fn destination(&self, record: &Record) -> String {
        let key = match &self.limits.partition_key {
            None => "random".to_string(),
            Some(t) => {
                let mut k = String::new();
                t.render(record, Dynamic::default(), &mut k);
                if carries_nothing(&k) {
                    // Not the random key drawn for this dry run, which the user would take
                    // for the record's key.
                    format!("random (the template renders {k:?}: the fields it names are missing)")
                } else {
                    self.limits.partition_key(record, &mut k);
                    format!("{k:?}")
                }
            }
        };
        format!("stream {}, partition key {key}", self.stream)
    }
}

/// One PutRecords entry: data and partition key.
#[derive(Debug, PartialEq)]
pub struct Entry {
    /// The record's bytes (a whole line, or one piece of a split line).
    pub data: Vec<u8>,
    /// Its partition key (≤ 256 characters).
    pub partition_key: String,
}

/// A PutRecords being filled (≤ 500 records, ≤ 5 MiB, ≤ 1 MiB per record, keys included).
pub struct KinesisBuilder {
    format: Arc<RecordFormat>,
    limits: Arc<Limits>,
    entries: Vec<Entry>,
    /// The item each entry carries (one item spreads over several entries when split).
    owners: Vec<Range<usize>>,
    items: usize,
    bytes: usize,
    line: Vec<u8>,
    key: String,
}

/// One `PutRecords` request.
#[derive(Debug)]
pub struct KinesisBatch {
    pub(crate) entries: Vec<Entry>,
    pub(crate) owners: Vec<Range<usize>>,
}

impl BatchBuilder for KinesisBuilder {
    type Batch = KinesisBatch;

    fn push(&mut self, record: &Record) -> Push {
        if self.items >= self.limits.max_items {
            return Push::Full;
        }
        let key_cut = self.limits.partition_key(record, &mut self.key);
        let key_len = self.key.len();
        self.line.clear();
        self.format.write_line(record, &mut self.line);
        // The key counts towards both limits; a split record repeats it in every piece,
        // so a piece of `piece` data bytes costs exactly 1 MiB and 5 pieces fill a call.
        let piece = MAX_RECORD_BYTES - key_len;
        let Fitted { truncated, pieces } = match fit(
            self.limits.oversize,
            &mut self.line,
            piece,
            (MAX_BYTES_PER_CALL / MAX_RECORD_BYTES) * piece,
        ) {
            Ok(f) => f,
            Err(reason) => return Push::Dropped(reason),
        };
        let cost = self.line.len() + pieces * key_len;
        if self.items > 0
            && (self.bytes + cost > self.limits.max_bytes
                || self.entries.len() + pieces > MAX_RECORDS_PER_CALL)
        {
            return Push::Full;
        }
        for data in self.line.chunks(piece) {
            self.entries.push(Entry {
                data: data.to_vec(),
                partition_key: self.key.clone(),
            });
            self.owners.push(self.items..self.items + 1);
        }
        if pieces > 1 {
            self.limits.split.increment(1);
            crate::warn_limited!(
                "kinesis_split",
                "record of {} bytes above Kinesis's 1 MiB limit sent as {pieces} records",
                self.line.len()
            );
        }
        if key_cut {
            self.limits.key_cut.increment(1);
            crate::warn_limited!(
                "kinesis_key_cut",
                "partition key above 256 characters cut to 256"
            );
        }
        self.bytes += cost;
        self.items += 1;
        if self.line.capacity() > 2 * MAX_RECORD_BYTES {
            self.line = Vec::new();
        }
        if truncated {
            Push::Truncated
        } else {
            Push::Added
        }
    }

    fn len(&self) -> usize {
        self.items
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn finish(self) -> KinesisBatch {
        KinesisBatch {
            entries: self.entries,
            owners: self.owners,
        }
    }
}

/// Failure for one rejected record, from its `ErrorCode` (PutRecordsResultEntry documents
/// `ProvisionedThroughputExceededException` and `InternalFailure`; KMS-encrypted streams
/// also report the `KMS*` exceptions of PutRecord per record).
fn entry_failure(code: &str, message: &str) -> Failure {
    let text = format!("{code}: {message}");
    if code.contains("AccessDenied") {
        return Failure::permanent("access_denied", text);
    }
    match code {
        "ProvisionedThroughputExceededException" | "KMSThrottlingException" => {
            Failure::retryable("throttled", text)
        }
        "InternalFailure" => Failure::retryable("server_error", text),
        c if c.starts_with("ServiceUnavailable") => Failure::retryable("service_unavailable", text),
        // The stream's KMS key is disabled, missing or not usable: retrying the same
        // record cannot help until someone fixes the key.
        "KMSDisabledException"
        | "KMSInvalidStateException"
        | "KMSNotFoundException"
        | "KMSOptInRequired" => Failure::permanent("kms_key_unusable", text),
        // Unknown codes: retrying is safe (the core bounds it by `max_elapsed`); dropping is not.
        _ => Failure::retryable("kinesis_error", text),
    }
}

/// How the shared record-batch code names and reads this API.
const API: Api = Api {
    service: "Kinesis stream",
    warn_key: "kinesis_partial",
    operation: "PutRecords",
    failed_count: "FailedRecordCount",
    entry_failure,
};

impl Sink for KinesisSink {
    type Builder = KinesisBuilder;
    /// One stream; the partition key travels with each record inside the batch.
    type Partition = ();

    fn partition(&self, _record: &Record) -> Result<(), &'static str> {
        Ok(())
    }

    fn new_batch(&self, _partition: &()) -> KinesisBuilder {
        KinesisBuilder {
            format: Arc::clone(&self.format),
            limits: Arc::clone(&self.limits),
            entries: Vec::new(),
            owners: Vec::new(),
            items: 0,
            bytes: 0,
            line: Vec::new(),
            key: String::new(),
        }
    }

    async fn send(&self, _partition: &(), batch: &KinesisBatch) -> SendResult {
        let mut records = Vec::with_capacity(batch.entries.len());
        for e in &batch.entries {
            match aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data.clone()))
                .partition_key(&e.partition_key)
                .build()
            {
                Ok(r) => records.push(r),
                Err(e) => {
                    return SendResult::Failed(Failure::permanent(
                        "invalid_request",
                        e.to_string(),
                    ));
                }
            }
        }
        let req = self.client.put_records().set_records(Some(records));
        let req = match &self.stream {
            StreamId::Name(n) => req.stream_name(n),
            StreamId::Arn(a) => req.stream_arn(a),
        };
        match req.send().await {
            Ok(out) => {
                let entries: Vec<(Option<&str>, Option<&str>)> = out
                    .records()
                    .iter()
                    .map(|e| (e.error_code(), e.error_message()))
                    .collect();
                records::answered(
                    &API,
                    &self.name,
                    &self.stream,
                    &batch.owners,
                    out.failed_record_count().unwrap_or(0),
                    &entries,
                )
            }
            Err(e) => records::call_failed(&API, &self.stream, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`records::outcome`] of this API.
    fn outcome(
        owners: &[Range<usize>],
        failed_count: i32,
        entries: &[(Option<&str>, Option<&str>)],
    ) -> SendResult {
        records::outcome(&API, owners, failed_count, entries)
    }
    use serde_json::json;

    fn cfg(partition_key: Option<&str>, oversize: Oversize) -> KinesisConfig {
        KinesisConfig {
            name: "t".into(),
            stream: StreamId::Name("s".into()),
            partition_key: partition_key.map(String::from),
            oversize,
            format: RecordFormat {
                log_key: Some("log".into()),
                ..Default::default()
            },
            aws: AwsSettings::default(),
            batch: default_batch(),
        }
    }

    fn offline() -> aws_sdk_kinesis::Client {
        crate::output::aws::offline::kinesis(None)
    }

    fn sink(partition_key: Option<&str>, oversize: Oversize) -> KinesisSink {
        build_with_client(cfg(partition_key, oversize), offline()).unwrap()
    }

    /// A record whose line (log + `\n`) is exactly `line_len` bytes.
    fn rec(line_len: usize) -> Record {
        let serde_json::Value::Object(m) = json!({"log": "a".repeat(line_len - 1)}) else {
            unreachable!()
        };
        Record::new("t", 0, m)
    }

    fn fill(b: &mut KinesisBuilder, r: &Record) -> usize {
        let mut n = 0;
        while b.push(r) != Push::Full {
            n += 1;
            assert!(n < 100_000);
        }
        n
    }

    #[test]
    fn at_most_500_records() {
        let s = sink(None, Oversize::Truncate);
        let mut b = s.new_batch(&());
        assert_eq!(fill(&mut b, &rec(10)), 500);
        let batch = b.finish();
        assert_eq!(batch.entries.len(), 500);
        assert!(
            batch.entries.iter().all(|e| e.data.len() == 10
                && e.data.ends_with(b"\n")
                && e.partition_key.len() == 32)
        );
        // Random keys: (practically) all different.
        let keys: std::collections::HashSet<&str> = batch
            .entries
            .iter()
            .map(|e| e.partition_key.as_str())
            .collect();
        assert_eq!(keys.len(), 500);
    }

    #[test]
    fn at_most_5_mib_per_call_counting_partition_keys() {
        let key = "k".repeat(100);
        let s = sink(Some(&key), Oversize::Drop);
        // Each record costs its line plus 100 key bytes: 1 MiB exactly, so 5 fill a call.
        let one_mib = rec(MAX_RECORD_BYTES - 100);
        let mut b = s.new_batch(&());
        assert_eq!(fill(&mut b, &one_mib), 5);
        assert_eq!(b.bytes(), MAX_BYTES_PER_CALL);
        // Without counting keys, 5 lines of 1 MiB - 100 would leave room for a 500-byte line.
        assert_eq!(b.push(&rec(400)), Push::Full);
        let batch = b.finish();
        assert!(
            batch
                .entries
                .iter()
                .all(|e| e.data.len() + e.partition_key.len() == MAX_RECORD_BYTES)
        );
        // Small records with the 100-byte key: 5 MiB / (400 + 100) is above 500, so the
        // record count limits first.
        let mut b = s.new_batch(&());
        assert_eq!(fill(&mut b, &rec(400)), 500);
    }

    #[test]
    fn at_most_1_mib_per_record_counting_the_partition_key() {
        let key = "k".repeat(200);
        let at_limit = rec(MAX_RECORD_BYTES - 200);
        let over = rec(MAX_RECORD_BYTES - 199);

        let s = sink(Some(&key), Oversize::Drop);
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&at_limit), Push::Added);
        assert_eq!(b.push(&over), Push::Dropped("record_too_large"));

        let s = sink(Some(&key), Oversize::Truncate);
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&over), Push::Truncated);
        let batch = b.finish();
        assert_eq!(batch.entries.len(), 1);
        let e = &batch.entries[0];
        assert_eq!(e.data.len() + e.partition_key.len(), MAX_RECORD_BYTES);
        assert!(
            std::str::from_utf8(&e.data)
                .unwrap()
                .ends_with("…[truncated by firelane]\n")
        );

        let s = sink(Some(&key), Oversize::Split);
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&rec(10)), Push::Added);
        assert_eq!(b.push(&over), Push::Added);
        let batch = b.finish();
        assert_eq!(batch.entries.len(), 3);
        assert_eq!(batch.owners, vec![0..1, 1..2, 1..2]);
        assert_eq!(batch.entries[1].data.len(), MAX_RECORD_BYTES - 200);
        assert_eq!(batch.entries[2].data, b"\n");
        assert!(batch.entries.iter().all(|e| e.partition_key == key));
    }

    #[test]
    fn split_fills_at_most_one_call() {
        let s = sink(Some("{k}"), Oversize::Split);
        let serde_json::Value::Object(m) = json!({"log": "b".repeat(7_000_000), "k": "shard-key"})
        else {
            unreachable!()
        };
        let big = Record::new("t", 0, m);
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&rec(10)), Push::Added);
        // 7 MB does not fit next to another record: a fresh batch takes it, cut to 5 pieces.
        assert_eq!(b.push(&big), Push::Full);
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&big), Push::Truncated);
        assert_eq!(b.bytes(), MAX_BYTES_PER_CALL);
        assert_eq!(b.push(&rec(10)), Push::Full);
        let batch = b.finish();
        assert_eq!(batch.entries.len(), 5);
        assert!(batch.entries.iter().all(|e| e.partition_key == "shard-key"
            && e.data.len() + e.partition_key.len() == MAX_RECORD_BYTES));
        let joined: Vec<u8> = batch.entries.iter().flat_map(|e| e.data.clone()).collect();
        assert!(joined.ends_with("…[truncated by firelane]\n".as_bytes()));
        assert_eq!(joined.iter().filter(|&&c| c == b'\n').count(), 1);
    }

    #[test]
    fn partition_key_template_random_fallback_and_cut_to_256_chars() {
        let s = sink(Some("{container_name}-{k}"), Oversize::Split);
        let r = |v: serde_json::Value| {
            let serde_json::Value::Object(m) = v else {
                unreachable!()
            };
            Record::new("t", 0, m)
        };
        let mut b = s.new_batch(&());
        b.push(&r(json!({"log": "x", "container_name": "app", "k": 7})));
        // Every value missing: a random key, not "-" for all.
        b.push(&r(json!({"log": "y"})));
        b.push(&r(json!({"log": "y"})));
        // 300 two-byte characters: cut to 256 characters (512 bytes), on a char boundary.
        b.push(&r(
            json!({"log": "z", "container_name": "é".repeat(300), "k": 1}),
        ));
        let batch = b.finish();
        let keys: Vec<&str> = batch
            .entries
            .iter()
            .map(|e| e.partition_key.as_str())
            .collect();
        assert_eq!(keys[0], "app-7");
        assert_eq!(keys[1].len(), 32);
        assert_ne!(keys[1], keys[2]);
        assert_eq!(keys[3].chars().count(), MAX_PARTITION_KEY_CHARS);
        assert_eq!(keys[3], "é".repeat(256));
        // One missing value among others keeps the template's text.
        let mut k = String::new();
        assert!(!s.limits.partition_key(&r(json!({"k": 1})), &mut k));
        assert_eq!(k, "--1");
    }

    #[test]
    fn destination_names_stream_and_key() {
        let serde_json::Value::Object(m) = json!({"ecs_task_id": "abc"}) else {
            unreachable!()
        };
        let r = Record::new("t", 0, m);
        assert_eq!(
            sink(Some("{ecs_task_id}"), Oversize::Split).destination(&r),
            "stream s, partition key \"abc\""
        );
        assert_eq!(
            sink(None, Oversize::Split).destination(&r),
            "stream s, partition key random"
        );
        // The field is missing: say the key is random rather than show one random draw.
        assert_eq!(
            sink(Some("{container_id}"), Oversize::Split).destination(&r),
            "stream s, partition key random (the template renders \"-\": the fields it names are missing)"
        );
    }

    #[test]
    fn settings_aws_would_refuse_are_refused() {
        let err = |mut c: KinesisConfig| {
            build_with_client(c.clone(), offline()).err().map(|e| {
                c.name.clear();
                e.to_string()
            })
        };
        let mut c = cfg(None, Oversize::Split);
        c.stream = StreamId::Name("bad name".into());
        assert!(err(c.clone()).unwrap().contains("1 to 128"));
        c.stream = StreamId::Name("x".repeat(129));
        assert!(err(c.clone()).is_some());
        c.stream = StreamId::Arn("arn:aws:firehose:us-east-1:1:deliverystream/x".into());
        assert!(err(c.clone()).unwrap().contains("stream_arn"));
        c.stream = StreamId::Arn("arn:aws:kinesis:us-east-1:123456789012:stream/x".into());
        assert!(err(c.clone()).is_none());
        // A stream in another region than the calls go to.
        c.aws.region = Some("eu-west-1".into());
        let got = err(c.clone()).unwrap();
        assert!(
            got.contains("in us-east-1 but region is eu-west-1"),
            "{got}"
        );
        c.aws.region = Some("us-east-1".into());
        assert!(err(c.clone()).is_none());
        c.aws.region = None;
        for (key, why) in [
            ("", "must not be empty"),
            ("{uuid}", "per S3 object"),
            ("{unclosed", "unclosed"),
        ] {
            let got = err(cfg(Some(key), Oversize::Split)).unwrap();
            assert!(got.contains(why), "{key:?}: {got}");
        }
        let got = err(cfg(Some(&"p".repeat(257)), Oversize::Split)).unwrap();
        assert!(got.contains("256"), "{got}");
        assert!(err(cfg(Some(&"p".repeat(256)), Oversize::Split)).is_none());
    }

    #[test]
    fn partial_failures_name_only_failed_items() {
        let owners = vec![0..1, 1..2, 1..2, 2..3, 3..4];
        let entries = [
            (None, None),
            (
                Some("ProvisionedThroughputExceededException"),
                Some("Rate exceeded for shard shardId-000000000001"),
            ),
            (Some("InternalFailure"), None),
            (None, None),
            (Some("KMSAccessDeniedException"), Some("no")),
        ];
        let SendResult::Partial(failed) = outcome(&owners, 3, &entries) else {
            panic!()
        };
        let idx: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        // The split item 1 failed in two pieces: retried once, whole.
        assert_eq!(idx, vec![1, 3]);
        assert_eq!(failed[0].1.reason, "throttled");
        assert!(failed[0].1.retryable);
        assert!(failed[0].1.message.contains("shardId-000000000001"));
        assert_eq!(failed[1].1.reason, "access_denied");
        assert!(!failed[1].1.retryable);
        assert_eq!(outcome(&owners, 0, &[]), SendResult::Delivered);
        assert!(matches!(outcome(&owners, 1, &entries[..2]), SendResult::Failed(f) if f.retryable));
        assert!(entry_failure("KMSThrottlingException", "").retryable);
        assert!(!entry_failure("KMSDisabledException", "").retryable);
        assert!(entry_failure("SomethingNew", "").retryable);
    }

    fn canned_sink(url: &str) -> KinesisSink {
        let conf = crate::output::aws::canned::sdk_config(url);
        build_with_client(
            cfg(None, Oversize::Split),
            aws_sdk_kinesis::Client::new(&conf),
        )
        .unwrap()
    }

    /// A real `PutRecords` answer with `FailedRecordCount` 1, parsed by the SDK: only the
    /// throttled record comes back; a missing stream fails the whole call for good.
    #[tokio::test]
    async fn send_reports_partial_and_permanent_failures_from_the_wire() {
        let s = canned_sink(&crate::output::aws::canned::serve(
            200,
            r#"{"FailedRecordCount":1,"Records":[
                {"SequenceNumber":"1","ShardId":"shardId-000000000000"},
                {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard shardId-000000000001 in stream s"},
                {"SequenceNumber":"2","ShardId":"shardId-000000000000"}]}"#,
        ));
        let mut b = s.new_batch(&());
        for n in 10..13 {
            assert_eq!(b.push(&rec(n)), Push::Added);
        }
        let SendResult::Partial(failed) = s.send(&(), &b.finish()).await else {
            panic!("expected a partial failure")
        };
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 1);
        assert!(failed[0].1.retryable);
        assert_eq!(failed[0].1.reason, "throttled");
        assert!(failed[0].1.message.contains("Rate exceeded"));

        let s = canned_sink(&crate::output::aws::canned::serve(
            400,
            r#"{"__type":"ResourceNotFoundException","message":"Stream s under account 123456789012 not found."}"#,
        ));
        let mut b = s.new_batch(&());
        b.push(&rec(10));
        let SendResult::Failed(f) = s.send(&(), &b.finish()).await else {
            panic!("expected a failure")
        };
        assert!(!f.retryable, "{f:?}");
        assert_eq!(f.reason, "resource_not_found");
        assert!(f.message.contains("PutRecords s"), "{}", f.message);

        let s = canned_sink(&crate::output::aws::canned::serve(
            400,
            r#"{"__type":"ProvisionedThroughputExceededException","message":"slow down"}"#,
        ));
        let mut b = s.new_batch(&());
        b.push(&rec(10));
        let SendResult::Failed(f) = s.send(&(), &b.finish()).await else {
            panic!("expected a failure")
        };
        assert!(f.retryable, "{f:?}");
        assert_eq!(f.reason, "throttled");
    }

    /// PutRecords refuses a whole call with `KMSThrottlingException` (HTTP 400) when the
    /// stream's KMS key is throttled: a throttle, retried like the same code per record,
    /// never a permanent failure that sends the batch to the dead letter (or drops it).
    #[tokio::test]
    async fn whole_call_kms_throttling_is_retried() {
        let s = canned_sink(&crate::output::aws::canned::serve(
            400,
            r#"{"__type":"KMSThrottlingException","message":"Rate exceeded for KMS key"}"#,
        ));
        let mut b = s.new_batch(&());
        b.push(&rec(10));
        let SendResult::Failed(f) = s.send(&(), &b.finish()).await else {
            panic!("expected a failure")
        };
        assert!(f.retryable, "{f:?}");
        assert_eq!(f.reason, "throttled");
    }
}
