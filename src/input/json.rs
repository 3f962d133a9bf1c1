//! Small JSON helpers the JSON-speaking inputs share (HTTP, EventBridge, SNS, SQS).

use serde_json::Value;

/// Nanoseconds since the epoch of an RFC 3339 timestamp (an EventBridge event's `time`,
/// SNS's `Timestamp`: `2012-04-26T20:45:04.751Z`); `None` when it is not one or lies outside
/// what an `i64` of nanoseconds holds (years 1677 to 2262).
pub(crate) fn rfc3339_ns(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .timestamp_nanos_opt()
}

/// "a string", "an array", ...: what a JSON value is, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
