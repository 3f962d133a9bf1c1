//! Kinesis Data Firehose output (`PutRecordBatch`).
//!
//! Limits enforced by the batch builder, all on raw bytes before base64 (as the API counts
//! them): ≤ 500 Firehose records and ≤ 4 MiB per call, ≤ 1,000 KiB (1,024,000 bytes) per
//! Firehose record. Every record is newline-terminated. `aggregate = true` packs consecutive
//! records into one Firehose record up to 1,000 KiB (fewer, larger records; Firehose bills
//! per 5 KB record unit).
//!
//! A record above 1,000 KiB follows `oversize`:
//! - `split` (default): sent as consecutive Firehose records of ≤ 1,000 KiB (only the last
//!   ends with `\n`) in one call, so an S3 destination, which concatenates records, receives
//!   the line whole. Records above 4 MiB are truncated to 4 MiB first. Caveat: if Firehose
//!   rejects only some pieces, the core resends the whole record, so the destination can
//!   hold a duplicated fragment. Counted in
//!   `firelane_output_oversize_records_total{output, action="split"}`.
//! - `truncate`: cut at a UTF-8 boundary, `…[truncated by firelane]` and `\n` appended;
//!   the first 1,000 KiB stay searchable. Counted with `action="truncated"`.
//! - `drop`: dropped as the user chose ([`Push::Dropped`], reason `record_too_large`),
//!   counted as dropped by the core; not dead-lettered.
//!
//! Partial failures (`FailedPutCount > 0`) become [`SendResult::Partial`] listing only the
//! items inside failed Firehose records, so only those are resent: no duplicates of
//! delivered records.

pub(crate) mod config;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_firehose::primitives::Blob;

pub use super::records::Oversize;
use super::records::{self, Api, fit};
use super::{AwsSettings, BuildError, RecordFormat, require_region, sdk_config};
use crate::event::Record;
use crate::output::deliver::oversize_counter;
use crate::output::sink::{BatchBuilder, BatchSettings, Failure, Push, SendResult, Sink};

pub(crate) const MAX_RECORDS_PER_CALL: usize = 500;
pub(crate) const MAX_BYTES_PER_CALL: usize = 4 * 1024 * 1024;
pub(crate) const MAX_RECORD_BYTES: usize = 1_024_000;

#[derive(Clone, Debug, PartialEq)]
/// An `[outputs.NAME]` of `type = "firehose"`, validated (PutRecordBatch).
pub struct FirehoseConfig {
    /// The output's name (`[outputs.NAME]`), for log lines.
    pub name: String,
    /// `delivery_stream`: the Firehose stream's name.
    pub delivery_stream: String,
    /// `aggregate`: pack many newline-terminated records into each Firehose record (billed
    /// in 5 KB steps).
    pub aggregate: bool,
    /// `oversize`: see [`Oversize`].
    pub oversize: Oversize,
    /// What a record becomes (JSON line or `log_key`).
    pub format: RecordFormat,
    /// Region, endpoint and role.
    pub aws: AwsSettings,
    /// Batch limits, clamped to PutRecordBatch's 500 records and 4 MiB.
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
    /// `firelane_output_oversize_records_total{output, action="split"}`; truncation is
    /// counted by the core.
    split: metrics::Counter,
    aggregate: bool,
    oversize: Oversize,
    max_items: usize,
    max_bytes: usize,
}

/// The Firehose destination: PutRecordBatch, retrying only the records that failed.
pub struct FirehoseSink {
    name: String,
    client: aws_sdk_firehose::Client,
    stream: String,
    format: Arc<RecordFormat>,
    limits: Arc<Limits>,
}

/// Builds the sink (SDK client for region, endpoint, role).
///
/// # Errors
/// [`BuildError::NoRegion`] when no region is configured or found,
/// [`BuildError::Invalid`] for an empty `delivery_stream`.
pub async fn build(cfg: FirehoseConfig) -> Result<FirehoseSink, BuildError> {
    let conf = sdk_config(&cfg.aws).await;
    require_region(&conf, &cfg.name)?;
    let mut b = aws_sdk_firehose::config::Builder::from(&conf);
    if let Some(url) = &cfg.aws.endpoint_url {
        b = b.endpoint_url(url);
    }
    build_with_client(cfg, aws_sdk_firehose::Client::from_conf(b.build()))
}

pub(crate) fn build_with_client(
    cfg: FirehoseConfig,
    client: aws_sdk_firehose::Client,
) -> Result<FirehoseSink, BuildError> {
    if cfg.delivery_stream.is_empty() {
        return Err(BuildError::Invalid {
            output: cfg.name,
            key: "delivery_stream",
            value: String::new(),
            reason: "must not be empty".into(),
        });
    }
    Ok(FirehoseSink {
        name: cfg.name.clone(),
        client,
        stream: cfg.delivery_stream,
        format: Arc::new(cfg.format),
        limits: Arc::new(Limits {
            split: oversize_counter(&cfg.name, "split"),
            aggregate: cfg.aggregate,
            oversize: cfg.oversize,
            max_items: cfg.batch.max_records.max(1),
            max_bytes: cfg.batch.max_bytes.clamp(1, MAX_BYTES_PER_CALL),
        }),
    })
}

impl FirehoseSink {
    /// Where every record of this output goes: `delivery stream NAME` (the name is fixed
    /// in the config; no AWS call).
    pub(crate) fn destination(&self) -> String {
        format!("delivery stream {}", self.stream)
    }
}

/// A PutRecordBatch being filled (≤ 500 records, ≤ 4 MiB, ≤ 1,000 KiB per record).
pub struct FirehoseBuilder {
    format: Arc<RecordFormat>,
    limits: Arc<Limits>,
    records: Vec<Vec<u8>>,
    /// Items carried by each Firehose record (a range: aggregation packs several, a split
    /// record spreads one item over several Firehose records).
    owners: Vec<Range<usize>>,
    items: usize,
    bytes: usize,
    /// The last Firehose record may take more aggregated lines.
    open_aggregate: bool,
    line: Vec<u8>,
}

/// One `PutRecordBatch` request.
#[derive(Debug)]
pub struct FirehoseBatch {
    pub(crate) records: Vec<Vec<u8>>,
    pub(crate) owners: Vec<Range<usize>>,
}

impl BatchBuilder for FirehoseBuilder {
    type Batch = FirehoseBatch;

    fn push(&mut self, record: &Record) -> Push {
        if self.items >= self.limits.max_items {
            return Push::Full;
        }
        self.line.clear();
        self.format.write_line(record, &mut self.line);
        let (truncated, split) = match fit(
            self.limits.oversize,
            &mut self.line,
            MAX_RECORD_BYTES,
            MAX_BYTES_PER_CALL,
        ) {
            Ok(f) => (f.truncated, f.pieces > 1),
            Err(reason) => return Push::Dropped(reason),
        };
        let len = self.line.len();
        let empty = self.items == 0;
        let fits_bytes = self.bytes + len <= self.limits.max_bytes;
        if split {
            let pieces = len.div_ceil(MAX_RECORD_BYTES);
            if !empty && (!fits_bytes || self.records.len() + pieces > MAX_RECORDS_PER_CALL) {
                return Push::Full;
            }
            for piece in self.line.chunks(MAX_RECORD_BYTES) {
                self.records.push(piece.to_vec());
                self.owners.push(self.items..self.items + 1);
            }
            self.open_aggregate = false;
            crate::warn_limited!(
                "firehose_split",
                "record of {len} bytes above Firehose's 1,000 KiB limit sent as {pieces} pieces"
            );
        } else if self.limits.aggregate
            && self.open_aggregate
            && fits_bytes
            && self
                .records
                .last()
                .is_some_and(|r| r.len() + len <= MAX_RECORD_BYTES)
        {
            if let (Some(r), Some(o)) = (self.records.last_mut(), self.owners.last_mut()) {
                r.extend_from_slice(&self.line);
                o.end = self.items + 1;
            }
        } else {
            if !empty && (!fits_bytes || self.records.len() >= MAX_RECORDS_PER_CALL) {
                return Push::Full;
            }
            self.records.push(self.line.clone());
            self.owners.push(self.items..self.items + 1);
            self.open_aggregate = self.limits.aggregate && !truncated;
        }
        self.bytes += len;
        self.items += 1;
        if self.line.capacity() > 2 * MAX_RECORD_BYTES {
            self.line = Vec::new();
        }
        if split {
            self.limits.split.increment(1);
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

    fn finish(self) -> FirehoseBatch {
        FirehoseBatch {
            records: self.records,
            owners: self.owners,
        }
    }
}

/// Failure for one rejected Firehose record, from its `ErrorCode`.
fn entry_failure(code: &str, message: &str) -> Failure {
    let text = format!("{code}: {message}");
    if code.contains("AccessDenied") {
        return Failure::permanent("access_denied", text);
    }
    match code {
        "ServiceUnavailableException" => Failure::retryable("service_unavailable", text),
        "InternalFailure" => Failure::retryable("server_error", text),
        c if c.contains("Throttl") => Failure::retryable("throttled", text),
        // Unknown codes: retrying is safe (the core bounds it by `max_elapsed`); dropping is not.
        _ => Failure::retryable("firehose_error", text),
    }
}

/// How the shared record-batch code names and reads this API.
const API: Api = Api {
    service: "Firehose",
    warn_key: "firehose_partial",
    operation: "PutRecordBatch",
    failed_count: "FailedPutCount",
    entry_failure,
};

impl Sink for FirehoseSink {
    type Builder = FirehoseBuilder;
    /// One stream of records: every batch is alike.
    type Partition = ();

    fn partition(&self, _record: &Record) -> Result<(), &'static str> {
        Ok(())
    }

    fn new_batch(&self, _partition: &()) -> FirehoseBuilder {
        FirehoseBuilder {
            format: Arc::clone(&self.format),
            limits: Arc::clone(&self.limits),
            records: Vec::new(),
            owners: Vec::new(),
            items: 0,
            bytes: 0,
            open_aggregate: false,
            line: Vec::new(),
        }
    }

    async fn send(&self, _partition: &(), batch: &FirehoseBatch) -> SendResult {
        let mut records = Vec::with_capacity(batch.records.len());
        for data in &batch.records {
            match aws_sdk_firehose::types::Record::builder()
                .data(Blob::new(data.clone()))
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
        let result = self
            .client
            .put_record_batch()
            .delivery_stream_name(&self.stream)
            .set_records(Some(records))
            .send()
            .await;
        match result {
            Ok(out) => {
                let entries: Vec<(Option<&str>, Option<&str>)> = out
                    .request_responses()
                    .iter()
                    .map(|e| (e.error_code(), e.error_message()))
                    .collect();
                records::answered(
                    &API,
                    &self.name,
                    &self.stream,
                    &batch.owners,
                    out.failed_put_count(),
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

    fn sink(aggregate: bool, oversize: Oversize) -> FirehoseSink {
        let conf = aws_sdk_firehose::Config::builder()
            .region(aws_sdk_firehose::config::Region::new("us-east-1"))
            .build();
        build_with_client(
            FirehoseConfig {
                name: "t".into(),
                delivery_stream: "s".into(),
                aggregate,
                oversize,
                format: RecordFormat {
                    log_key: Some("log".into()),
                    ..Default::default()
                },
                aws: AwsSettings::default(),
                batch: default_batch(),
            },
            aws_sdk_firehose::Client::from_conf(conf),
        )
        .unwrap()
    }

    /// A record whose line (log + `\n`) is exactly `line_len` bytes.
    fn rec(line_len: usize) -> Record {
        let serde_json::Value::Object(m) = json!({"log": "a".repeat(line_len - 1)}) else {
            unreachable!()
        };
        Record::new("t", 0, m)
    }

    fn fill(b: &mut FirehoseBuilder, r: &Record) -> usize {
        let mut n = 0;
        while b.push(r) != Push::Full {
            n += 1;
            assert!(n < 100_000);
        }
        n
    }

    #[test]
    fn at_most_500_records() {
        let s = sink(false, Oversize::Truncate);
        let mut b = s.new_batch(&());
        assert_eq!(fill(&mut b, &rec(10)), 500);
        let batch = b.finish();
        assert_eq!(batch.records.len(), 500);
        assert!(
            batch
                .records
                .iter()
                .all(|r| r.len() == 10 && r.ends_with(b"\n"))
        );
    }

    #[test]
    fn at_most_4_mib_per_call() {
        let s = sink(false, Oversize::Truncate);
        // 4 MiB = 4 × 1,048,576; records of 1,048,576/4 + 1 bytes: 15 fit, the 16th would be 4 MiB + 16.
        let mut b = s.new_batch(&());
        assert_eq!(fill(&mut b, &rec(262_145)), 15);
        assert!(b.bytes() <= MAX_BYTES_PER_CALL);
        // Exactly 4 MiB fits; one byte more does not.
        let mut b = s.new_batch(&());
        for _ in 0..4 {
            assert_eq!(b.push(&rec(1_000_000)), Push::Added);
        }
        assert_eq!(b.push(&rec(194_304)), Push::Added);
        assert_eq!(b.bytes(), MAX_BYTES_PER_CALL);
        assert_eq!(b.push(&rec(1)), Push::Full);
    }

    #[test]
    fn oversized_record_policies() {
        let at_limit = rec(MAX_RECORD_BYTES);
        let over = rec(MAX_RECORD_BYTES + 1);

        let s = sink(false, Oversize::Truncate);
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&at_limit), Push::Added);
        assert_eq!(b.push(&over), Push::Truncated);
        let batch = b.finish();
        assert_eq!(batch.records[0].len(), MAX_RECORD_BYTES);
        let t = &batch.records[1];
        assert_eq!(t.len(), MAX_RECORD_BYTES);
        assert!(
            std::str::from_utf8(t)
                .unwrap()
                .ends_with("…[truncated by firelane]\n")
        );

        // Truncation never cuts a multi-byte character.
        let serde_json::Value::Object(m) = json!({"log": "é".repeat(600_000)}) else {
            unreachable!()
        };
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&Record::new("t", 0, m)), Push::Truncated);
        let batch = b.finish();
        assert!(std::str::from_utf8(&batch.records[0]).is_ok());
        assert!(batch.records[0].len() <= MAX_RECORD_BYTES);

        let s = sink(false, Oversize::Drop);
        assert_eq!(
            s.new_batch(&()).push(&over),
            Push::Dropped("record_too_large")
        );

        let s = sink(false, Oversize::Split);
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&rec(10)), Push::Added);
        assert_eq!(b.push(&rec(2_500_000)), Push::Added);
        assert_eq!(b.push(&rec(2_000_000)), Push::Full);
        let batch = b.finish();
        assert_eq!(batch.records.len(), 4);
        assert_eq!(batch.owners, vec![0..1, 1..2, 1..2, 1..2]);
        assert_eq!(batch.records[1].len(), MAX_RECORD_BYTES);
        let joined: Vec<u8> = batch.records[1..].concat();
        assert_eq!(joined.len(), 2_500_000);
        assert_eq!(joined.iter().filter(|&&c| c == b'\n').count(), 1);
        // A record above the 4 MiB call limit is truncated, then split, in a fresh batch.
        let mut b = s.new_batch(&());
        assert_eq!(b.push(&rec(5_000_000)), Push::Truncated);
        assert_eq!(b.bytes(), MAX_BYTES_PER_CALL);
    }

    #[test]
    fn aggregation_packs_records_up_to_the_record_limit() {
        let s = sink(true, Oversize::Truncate);
        let mut b = s.new_batch(&());
        // 1,000 lines of 1,024 bytes = 1,024,000 bytes: exactly one Firehose record.
        for _ in 0..1000 {
            assert_eq!(b.push(&rec(1024)), Push::Added);
        }
        assert_eq!(b.push(&rec(1024)), Push::Added);
        assert_eq!(b.len(), 1001);
        let batch = b.finish();
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.records[0].len(), MAX_RECORD_BYTES);
        assert_eq!(batch.owners, vec![0..1000, 1000..1001]);

        // 4 MiB of small lines packs into 5 Firehose records instead of hitting 500.
        let mut b = s.new_batch(&());
        let n = fill(&mut b, &rec(100));
        assert_eq!(n, MAX_BYTES_PER_CALL / 100);
        let batch = b.finish();
        assert_eq!(
            batch.records.len(),
            MAX_BYTES_PER_CALL.div_ceil(MAX_RECORD_BYTES)
        );
        assert!(
            batch
                .records
                .iter()
                .all(|r| r.len() <= MAX_RECORD_BYTES && r.ends_with(b"\n"))
        );
        let covered: usize = batch.owners.iter().map(|r| r.len()).sum();
        assert_eq!(covered, n);
    }

    #[test]
    fn partial_failures_name_only_failed_items() {
        let owners = vec![0..1, 1..2, 2..3, 3..4];
        let entries = [
            (None, None),
            (Some("ServiceUnavailableException"), Some("Slow down.")),
            (None, None),
            (Some("InternalFailure"), Some("oops")),
        ];
        let SendResult::Partial(failed) = outcome(&owners, 2, &entries) else {
            panic!()
        };
        assert_eq!(
            failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(failed.iter().all(|(_, f)| f.retryable));
        assert_eq!(failed[0].1.reason, "service_unavailable");
        assert!(failed[0].1.message.contains("Slow down."));
        assert_eq!(outcome(&owners, 0, &[]), SendResult::Delivered);
        assert!(matches!(outcome(&owners, 1, &entries[..2]), SendResult::Failed(f) if f.retryable));
    }

    /// A real `PutRecordBatch` answer with `FailedPutCount` 1, parsed by the SDK: only the
    /// rejected record comes back, with its error code as the reason.
    #[tokio::test]
    async fn send_reports_a_partial_failure_from_the_wire() {
        let url = crate::output::aws::canned::serve(
            200,
            r#"{"FailedPutCount":1,"Encrypted":false,"RequestResponses":[
                {"RecordId":"a"},
                {"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down."},
                {"RecordId":"c"}]}"#,
        );
        let conf = crate::output::aws::canned::sdk_config(&url);
        let s = build_with_client(
            FirehoseConfig {
                name: "t".into(),
                delivery_stream: "s".into(),
                aggregate: false,
                oversize: Oversize::Split,
                format: RecordFormat::default(),
                aws: AwsSettings::default(),
                batch: default_batch(),
            },
            aws_sdk_firehose::Client::new(&conf),
        )
        .unwrap();
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
        assert_eq!(failed[0].1.reason, "service_unavailable");
        assert!(failed[0].1.message.contains("Slow down."));

        // A whole-call ServiceUnavailableException is a retryable failure of everything.
        let url = crate::output::aws::canned::serve(
            400,
            r#"{"__type":"ServiceUnavailableException","message":"busy"}"#,
        );
        let conf = crate::output::aws::canned::sdk_config(&url);
        let s = FirehoseSink {
            client: aws_sdk_firehose::Client::new(&conf),
            ..s
        };
        let mut b = s.new_batch(&());
        b.push(&rec(10));
        let SendResult::Failed(f) = s.send(&(), &b.finish()).await else {
            panic!("expected a failure")
        };
        assert!(f.retryable, "{f:?}");
        assert_eq!(f.reason, "service_unavailable");
    }

    #[test]
    fn aggregated_failure_maps_back_to_every_item_inside() {
        let owners = vec![0..1000, 1000..1500, 1500..1501];
        let entries = [
            (None, None),
            (Some("ServiceUnavailableException"), None),
            (None, None),
        ];
        let SendResult::Partial(failed) = outcome(&owners, 1, &entries) else {
            panic!()
        };
        let idx: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, (1000..1500).collect::<Vec<_>>());
        // A split item with one failed piece is retried once, as one item.
        let owners = vec![0..1, 1..2, 1..2];
        let entries = [
            (None, None),
            (Some("InternalFailure"), None),
            (Some("InternalFailure"), None),
        ];
        let SendResult::Partial(failed) = outcome(&owners, 2, &entries) else {
            panic!()
        };
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 1);
        assert!(!entry_failure("KMS.AccessDeniedException", "").retryable);
    }
}
