//! Counters of the forward input, created once per input and cloned into connections so
//! the hot path never looks a metric up by name.

use std::sync::Arc;

use metrics::Counter;

/// Values of the `kind` label of `firelane_input_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Bytes that are not msgpack (reserved marker, truncated object inside a payload).
    MalformedMsgpack,
    /// A request larger than `max_frame_bytes`.
    FrameTooLarge,
    /// A compressed payload that does not decompress.
    DecompressFailed,
    /// A compressed payload that inflates beyond `max_decompressed_bytes`.
    DecompressedTooLarge,
    /// Valid msgpack with the wrong request shape: not an array, tag not a string, entries
    /// neither an array nor a payload of entries, bad option types. The whole request is
    /// refused and the connection closed.
    BadRequest,
    /// One entry skipped for its record (not a map, nesting deeper than 64); the rest of the
    /// request is kept and acked.
    BadRecord,
    /// One entry skipped for its time (nil, a string, a negative number, out of range, an
    /// unknown ext type); the rest of the request is kept and acked, in Message mode too.
    BadTime,
    /// One entry skipped because it is not `[time, record]` (in a Forward array or a
    /// PackedForward payload alike); the rest of the request is kept and acked.
    BadEntry,
    /// Records no output can ever take (larger than every limit that applies): the request
    /// is not acked, the connection stays open.
    TooLarge,
    /// Wrong shared key or malformed PING.
    AuthFailed,
    /// A string that is not UTF-8; the record is kept with U+FFFD replacements.
    InvalidUtf8,
    /// A record map key that is neither a string nor an integer (nil, a boolean, ...); the
    /// record is kept with the key written as its JSON text (`"null"`), as Fluent Bit does.
    BadKey,
    /// A request with `fluent_signal` metrics or traces; skipped.
    UnsupportedSignal,
    /// The connection closed in the middle of a request.
    TruncatedFrame,
    /// The router refused the records (shutting down, a buffer error); the connection is
    /// closed unacked.
    IngestFailed,
    /// A disk buffer's filesystem is full; the connection is closed unacked and the client
    /// resends once outputs have delivered and freed space.
    DiskFull,
    /// Socket read or write failure.
    Io,
    /// A request in progress received nothing for `read_timeout`; the connection is closed.
    ReadTimeout,
    /// A connection beyond `max_connections`, closed right after accept.
    TooManyConnections,
}

impl ErrorKind {
    pub(crate) const ALL: [ErrorKind; 19] = [
        ErrorKind::MalformedMsgpack,
        ErrorKind::FrameTooLarge,
        ErrorKind::DecompressFailed,
        ErrorKind::DecompressedTooLarge,
        ErrorKind::BadRequest,
        ErrorKind::BadRecord,
        ErrorKind::BadTime,
        ErrorKind::BadEntry,
        ErrorKind::TooLarge,
        ErrorKind::AuthFailed,
        ErrorKind::InvalidUtf8,
        ErrorKind::BadKey,
        ErrorKind::UnsupportedSignal,
        ErrorKind::TruncatedFrame,
        ErrorKind::IngestFailed,
        ErrorKind::DiskFull,
        ErrorKind::Io,
        ErrorKind::ReadTimeout,
        ErrorKind::TooManyConnections,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MalformedMsgpack => "malformed_msgpack",
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::DecompressFailed => "decompress_failed",
            ErrorKind::DecompressedTooLarge => "decompressed_too_large",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::BadRecord => "bad_record",
            ErrorKind::BadTime => "bad_time",
            ErrorKind::BadEntry => "bad_entry",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::InvalidUtf8 => "invalid_utf8",
            ErrorKind::BadKey => "bad_key",
            ErrorKind::UnsupportedSignal => "unsupported_signal",
            ErrorKind::TruncatedFrame => "truncated_frame",
            ErrorKind::IngestFailed => "ingest_failed",
            ErrorKind::DiskFull => "disk_full",
            ErrorKind::Io => "io",
            ErrorKind::ReadTimeout => "read_timeout",
            ErrorKind::TooManyConnections => "too_many_connections",
        }
    }

    /// Rate-limit key for `warn_limited!`: one budget of log lines per kind.
    pub(crate) fn log_key(self) -> &'static str {
        match self {
            ErrorKind::MalformedMsgpack => "forward_malformed_msgpack",
            ErrorKind::FrameTooLarge => "forward_frame_too_large",
            ErrorKind::DecompressFailed => "forward_decompress_failed",
            ErrorKind::DecompressedTooLarge => "forward_decompressed_too_large",
            ErrorKind::BadRequest => "forward_bad_request",
            ErrorKind::BadRecord => "forward_bad_record",
            ErrorKind::BadTime => "forward_bad_time",
            ErrorKind::BadEntry => "forward_bad_entry",
            ErrorKind::TooLarge => "forward_too_large",
            ErrorKind::AuthFailed => "forward_auth_failed",
            ErrorKind::InvalidUtf8 => "forward_invalid_utf8",
            ErrorKind::BadKey => "forward_bad_key",
            ErrorKind::UnsupportedSignal => "forward_unsupported_signal",
            ErrorKind::TruncatedFrame => "forward_truncated_frame",
            ErrorKind::IngestFailed => "forward_ingest_failed",
            ErrorKind::DiskFull => "forward_disk_full",
            ErrorKind::Io => "forward_io",
            ErrorKind::ReadTimeout => "forward_read_timeout",
            ErrorKind::TooManyConnections => "forward_too_many_connections",
        }
    }

    /// The kind under which a refusal by the router is counted.
    pub(crate) fn of_ingest(e: &crate::input::IngestError) -> Self {
        match e {
            crate::input::IngestError::TooLarge { .. } => ErrorKind::TooLarge,
            crate::input::IngestError::DiskFull { .. } => ErrorKind::DiskFull,
            _ => ErrorKind::IngestFailed,
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Handles for one input's counters.
#[derive(Clone)]
pub(crate) struct InputMetrics {
    records: Counter,
    bytes: Counter,
    errors: Arc<[Counter]>,
}

impl InputMetrics {
    /// Registers the counters with the current recorder (all error kinds up front, so they
    /// show as 0 in `/metrics` before the first error).
    pub(crate) fn new(input: &str) -> Self {
        let records =
            metrics::counter!("firelane_input_records_total", "input" => input.to_owned());
        let bytes = metrics::counter!("firelane_input_bytes_total", "input" => input.to_owned());
        let errors = ErrorKind::ALL
            .iter()
            .map(|k| {
                metrics::counter!(
                    "firelane_input_errors_total",
                    "input" => input.to_owned(),
                    "kind" => k.as_str()
                )
            })
            .collect();
        InputMetrics {
            records,
            bytes,
            errors,
        }
    }

    pub(crate) fn records(&self, n: u64) {
        self.records.increment(n);
    }

    pub(crate) fn bytes(&self, n: u64) {
        self.bytes.increment(n);
    }

    pub(crate) fn error(&self, kind: ErrorKind, n: u64) {
        if let Some(c) = self.errors.get(kind.index()) {
            c.increment(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;
    use crate::input::IngestError;

    #[test]
    fn refusals_are_counted_under_what_happened() {
        let disk = IngestError::DiskFull {
            output: "s3".into(),
        };
        assert_eq!(ErrorKind::of_ingest(&disk).as_str(), "disk_full");
        let big = IngestError::TooLarge {
            bytes: 10,
            limit: 1,
            output: "s3".into(),
        };
        assert_eq!(ErrorKind::of_ingest(&big).as_str(), "too_large");
        assert_eq!(
            ErrorKind::of_ingest(&IngestError::ShuttingDown).as_str(),
            "ingest_failed"
        );
        // Every kind is exported, so each label exists at zero from the start.
        let labels: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
        assert!(labels.contains("disk_full"));
    }
}
