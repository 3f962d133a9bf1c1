//! Keys every AWS output accepts (`region`, `endpoint_url`, `role_arn`) and what the three
//! AWS output types share when they read and check their tables.

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::output::registry::OutputConfigError;

use super::records::Oversize;
use super::{AwsSettings, BuildError, RecordFormat};

/// The connection keys of every AWS output.
pub(crate) const AWS_KEYS: [&str; 3] = ["region", "endpoint_url", "role_arn"];

/// Reads `region`, `endpoint_url` and `role_arn`.
pub(crate) fn read_aws(t: &mut Table<'_, '_>, d: &mut Diagnostics) -> AwsSettings {
    let endpoint_url = t.opt_string(d, "endpoint_url");
    if let Some(u) = &endpoint_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        d.error(
            t.value_span("endpoint_url"),
            format!(
                "{}.endpoint_url: expected an http:// or https:// URL",
                t.path()
            ),
        );
    }
    AwsSettings {
        region: t.opt_string(d, "region"),
        endpoint_url,
        role_arn: t.opt_string(d, "role_arn"),
    }
}

/// Reads `oversize` (`split`, the default, `truncate` or `drop`) of the record-batch
/// outputs (`firehose`, `kinesis`).
pub(crate) fn read_oversize(t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Oversize {
    match t.opt_string(d, "oversize").as_deref() {
        None | Some("split") => Oversize::Split,
        Some("truncate") => Oversize::Truncate,
        Some("drop") => Oversize::Drop,
        Some(_) => {
            d.error(
                t.value_span("oversize"),
                format!("{}.oversize: expected split, truncate or drop", t.path()),
            );
            Oversize::Split
        }
    }
}

/// How records of `o` become bytes: its `log_key`, and the generic `tag_key` / `time_key`.
pub(crate) fn format_for(o: &OutputSpec, log_key: &Option<String>) -> RecordFormat {
    RecordFormat {
        log_key: log_key.clone(),
        tag_key: o.tag_key.clone(),
        time_key: o.time_key.clone(),
    }
}

/// An AWS sink's [`BuildError`], reworded without the output's name.
pub(crate) fn config_error(e: BuildError) -> OutputConfigError {
    match e {
        BuildError::NoRegion { .. } => {
            OutputConfigError::new("region", "no AWS region: set `region` or AWS_REGION")
        }
        BuildError::Template { key, source, .. } => OutputConfigError::new(key, source.to_string()),
        BuildError::Invalid {
            key, value, reason, ..
        } => OutputConfigError::new(key, format!("{value:?}: {reason}")),
    }
}

/// `firelane route`'s text for a record an AWS sink refuses.
pub(crate) fn refused(reason: &str) -> String {
    format!("refused ({reason}): dropped, or dead-lettered if configured")
}
