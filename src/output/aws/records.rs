//! What the two record-batch APIs share: Firehose `PutRecordBatch` and Kinesis Data Streams
//! `PutRecords`. Both take up to 500 opaque records per call with a per-record and a
//! per-call byte limit, and both answer HTTP 200 with a count of failed records and one
//! result entry per request record, in request order (`FailedPutCount` /
//! `RequestResponses`, `FailedRecordCount` / `Records`).
//!
//! Shared here: the `oversize` policy for a record above the per-record limit
//! ([`Oversize`], [`fit`]) and the mapping of a partially failed answer back to the
//! delivery core's items ([`outcome`]).

use std::collections::BTreeMap;
use std::ops::Range;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::{TRUNCATION_MARKER, classify};
use crate::output::sink::{Failure, SendResult};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
/// `oversize`: what happens to a record above the service's per-record limit (Firehose
/// 1,000 KiB; Kinesis Data Streams 1 MiB including the partition key).
pub enum Oversize {
    /// The config's default (`oversize` unset): sent as consecutive records of at most the
    /// limit, only the last ending in `\n`; counted as `action="split"`.
    #[default]
    Split,
    /// Cut to the limit with a marker; counted as `action="truncated"`.
    Truncate,
    /// Dropped by the user's choice; counted as `dropped`.
    Drop,
}

/// How a line was made to fit, see [`fit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fitted {
    /// The line was cut (and marked).
    pub truncated: bool,
    /// Service records the line takes: 1, or more when split.
    pub pieces: usize,
}

/// Applies `policy` to `line` (which ends in `\n`) for a per-record limit of `record_max`
/// bytes. A line to split that is longer than `split_max` (what one call can carry) is
/// truncated to `split_max` first. Pieces are `line.chunks(record_max)`.
///
/// # Errors
/// `record_too_large` (a [`crate::output::sink::Push::Dropped`] reason) when the policy is
/// [`Oversize::Drop`] and the line is over the limit.
pub(crate) fn fit(
    policy: Oversize,
    line: &mut Vec<u8>,
    record_max: usize,
    split_max: usize,
) -> Result<Fitted, &'static str> {
    if line.len() <= record_max {
        return Ok(Fitted {
            truncated: false,
            pieces: 1,
        });
    }
    match policy {
        Oversize::Drop => Err("record_too_large"),
        Oversize::Truncate => {
            truncate_line(line, record_max);
            Ok(Fitted {
                truncated: true,
                pieces: 1,
            })
        }
        Oversize::Split => {
            let truncated = line.len() > split_max;
            if truncated {
                truncate_line(line, split_max);
            }
            Ok(Fitted {
                truncated,
                pieces: line.len().div_ceil(record_max),
            })
        }
    }
}

/// Cuts `line` (which ends in `\n`) to at most `max` bytes, keeping UTF-8 valid, and marks it.
pub(crate) fn truncate_line(line: &mut Vec<u8>, max: usize) {
    let keep = max - TRUNCATION_MARKER.len() - 1;
    let mut cut = keep.min(line.len());
    // Step back over UTF-8 continuation bytes so the kept prefix stays valid text.
    while cut > 0 && cut < line.len() && (line[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    line.truncate(cut);
    line.extend_from_slice(TRUNCATION_MARKER.as_bytes());
    line.push(b'\n');
}

/// One record-batch API, for mapping its answers and naming it in messages.
pub(crate) struct Api {
    /// What the target is, in log lines (`Firehose`, `Kinesis stream`).
    pub service: &'static str,
    /// The rate-limiting key of its partial-failure warning.
    pub warn_key: &'static str,
    /// The operation (`PutRecordBatch`, `PutRecords`).
    pub operation: &'static str,
    /// Its failed-record count field (`FailedPutCount`, `FailedRecordCount`).
    pub failed_count: &'static str,
    /// The failure of one rejected record from its `(ErrorCode, ErrorMessage)`.
    pub entry_failure: fn(&str, &str) -> Failure,
}

/// Maps a batch answer to per-item outcomes. `owners[i]` are the items inside service
/// record `i` (several when aggregated, one item over several records when split);
/// `entries[i]` is that record's `(ErrorCode, ErrorMessage)`. An item fails when any of its
/// records failed, with the first failure met, so it is resent once, whole.
pub(crate) fn outcome(
    api: &Api,
    owners: &[Range<usize>],
    failed_count: i32,
    entries: &[(Option<&str>, Option<&str>)],
) -> SendResult {
    if failed_count <= 0 {
        return SendResult::Delivered;
    }
    if entries.len() != owners.len() {
        return SendResult::Failed(Failure::retryable(
            "bad_response",
            format!(
                "{}: {} {failed_count} but {} responses for {} records",
                api.operation,
                api.failed_count,
                entries.len(),
                owners.len()
            ),
        ));
    }
    let mut failed: BTreeMap<usize, Failure> = BTreeMap::new();
    for (range, (code, message)) in owners.iter().zip(entries) {
        let Some(code) = code else { continue };
        let f = (api.entry_failure)(code, message.unwrap_or(""));
        for item in range.clone() {
            failed.entry(item).or_insert_with(|| f.clone());
        }
    }
    if failed.is_empty() {
        return SendResult::Failed(Failure::retryable(
            "bad_response",
            format!(
                "{}: {} {failed_count} but no entry has an error code",
                api.operation, api.failed_count
            ),
        ));
    }
    SendResult::Partial(failed.into_iter().collect())
}

/// What an answered call means for its items ([`outcome`]), with one rate-limited warning
/// naming output, target and the first failure when some records were rejected.
pub(crate) fn answered(
    api: &Api,
    output: &str,
    target: &dyn std::fmt::Display,
    owners: &[Range<usize>],
    failed_count: i32,
    entries: &[(Option<&str>, Option<&str>)],
) -> SendResult {
    let r = outcome(api, owners, failed_count, entries);
    if let SendResult::Partial(failed) = &r {
        crate::warn_limited!(
            api.warn_key,
            "output {output}: {} {target} rejected {failed_count} of {} records ({}); only those are retried",
            api.service,
            owners.len(),
            failed.first().map_or("", |(_, f)| f.message.as_str())
        );
    }
    r
}

/// A call refused or lost as a whole: the SDK error classified ([`classify`]), its message
/// starting with the operation and the target.
pub(crate) fn call_failed<E>(
    api: &Api,
    target: &dyn std::fmt::Display,
    err: &SdkError<E, HttpResponse>,
) -> SendResult
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut f = classify(err);
    f.message = format!("{} {target}: {}", api.operation, f.message);
    SendResult::Failed(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_applies_each_policy() {
        let line = |n: usize| {
            let mut l = vec![b'a'; n - 1];
            l.push(b'\n');
            l
        };
        let mut l = line(10);
        assert_eq!(
            fit(Oversize::Drop, &mut l, 10, 40),
            Ok(Fitted {
                truncated: false,
                pieces: 1
            })
        );
        assert_eq!(
            fit(Oversize::Drop, &mut line(11), 10, 40),
            Err("record_too_large")
        );
        let mut l = line(100);
        let f = fit(Oversize::Truncate, &mut l, 50, 200).unwrap();
        assert_eq!((f.truncated, f.pieces, l.len()), (true, 1, 50));
        assert!(l.ends_with(format!("{TRUNCATION_MARKER}\n").as_bytes()));
        let mut l = line(101);
        let f = fit(Oversize::Split, &mut l, 50, 200).unwrap();
        assert_eq!((f.truncated, f.pieces, l.len()), (false, 3, 101));
        let mut l = line(500);
        let f = fit(Oversize::Split, &mut l, 50, 200).unwrap();
        assert_eq!((f.truncated, f.pieces, l.len()), (true, 4, 200));
    }
}
