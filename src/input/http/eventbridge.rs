//! `format = "eventbridge"`: bodies as an EventBridge API destination posts them.
//!
//! An API destination sends one event per request, the event JSON as the body (EventBridge
//! user guide, *API destinations*). Other senders (a
//! replay script, a Lambda forwarding a batch) may post a JSON array of events; both are
//! taken here. Each event becomes one record: its fields exactly as sent, its tag the
//! event's `detail-type` (unless the request or the input names a tag), its time the
//! event's `time` (RFC 3339, as EventBridge writes it: `2020-01-23T17:57:58Z`).
//!
//! A request is all or nothing: one element that is not an event refuses the whole body
//! (400, nothing kept), so a sender that fixes and resends it does not duplicate the events
//! that were good. What counts as an event: a JSON object whose `source` and `detail-type`
//! are strings (the two fields PutEvents requires besides `Detail`, and the two every rule
//! pattern starts with). Anything else (`detail`, `id`, `time`, unknown fields) is kept as
//! sent and not checked: "ECS may add other event types, sources, and details in the
//! future" (ECS docs, *Amazon ECS events*).

use crate::input::json::{json_kind, rfc3339_ns};
use std::sync::Arc;

use serde_json::Value;

use crate::event::{Record, now_ns};

/// Why a body is not a batch of events. Answered 400: resending the same body cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventsError {
    /// Not JSON at all (or not UTF-8).
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// Valid JSON that is not an event or an array of events.
    #[error("{0}")]
    NotAnEvent(String),
}

impl EventsError {
    /// The `kind` label this refusal is counted under in `firelane_input_errors_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            EventsError::Json { .. } => "bad_body",
            EventsError::NotAnEvent(_) => "not_an_event",
        }
    }
}

/// The event's `id`: the key EventBridge keeps across its retries of one event, so the
/// de-duplication key of this format.
pub(crate) fn event_id(record: &Record) -> Option<&str> {
    record.get("id").and_then(|v| v.as_str())
}

/// Parses a body of one event object or a JSON array of event objects into records.
///
/// `tag`: the tag the request or the input sets; `None` tags each record with its event's
/// `detail-type`.
pub(crate) fn parse(data: &[u8], tag: Option<&Arc<str>>) -> Result<Vec<Record>, EventsError> {
    let doc: Value = serde_json::from_slice(data).map_err(|e| EventsError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let now = now_ns();
    let (events, in_array) = match doc {
        Value::Object(fields) => (vec![Value::Object(fields)], false),
        Value::Array(items) if items.is_empty() => {
            return Err(EventsError::NotAnEvent(
                "an empty array: expected an event object or an array of events".into(),
            ));
        }
        Value::Array(items) => (items, true),
        other => {
            return Err(EventsError::NotAnEvent(format!(
                "expected an event object or an array of events, found {}",
                json_kind(&other)
            )));
        }
    };
    let mut records = Vec::with_capacity(events.len());
    for (i, v) in events.into_iter().enumerate() {
        let at = || {
            if in_array {
                format!("array element {i}")
            } else {
                "the body".to_string()
            }
        };
        let Value::Object(fields) = v else {
            return Err(EventsError::NotAnEvent(format!(
                "{}: expected an event object, found {}",
                at(),
                json_kind(&v)
            )));
        };
        let detail_type = match fields.get("detail-type") {
            Some(Value::String(s)) => Arc::<str>::from(s.as_str()),
            Some(other) => {
                return Err(EventsError::NotAnEvent(format!(
                    "{}: \"detail-type\" must be a string, found {}",
                    at(),
                    json_kind(other)
                )));
            }
            None => {
                return Err(EventsError::NotAnEvent(format!(
                    "{}: not an EventBridge event (no \"detail-type\")",
                    at()
                )));
            }
        };
        match fields.get("source") {
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(EventsError::NotAnEvent(format!(
                    "{}: \"source\" must be a string, found {}",
                    at(),
                    json_kind(other)
                )));
            }
            None => {
                return Err(EventsError::NotAnEvent(format!(
                    "{}: not an EventBridge event (no \"source\")",
                    at()
                )));
            }
        }
        let time_ns = fields
            .get("time")
            .and_then(Value::as_str)
            .and_then(rfc3339_ns)
            .unwrap_or(now);
        records.push(Record::new(
            tag.cloned().unwrap_or(detail_type),
            time_ns,
            fields,
        ));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = r#"{"version":"0","id":"3317b2af-7005-947d-b652-f55e762e571a","detail-type":"ECS Task State Change","source":"aws.ecs","account":"111122223333","time":"2020-01-23T17:57:58Z","region":"us-west-2","resources":["arn:aws:ecs:us-west-2:111122223333:task/FargateCluster/c13b4cb40f1f4fe4a2971f76ae5a47ad"],"detail":{"lastStatus":"RUNNING","version":4,"cpu":"256"}}"#;
    const ACTION: &str = r#"{"version":"0","id":"ddca6449-b258-46c0-8653-e0e3a6d0468b","detail-type":"ECS Service Action","source":"aws.ecs","account":"111122223333","time":"2019-11-19T19:55:38Z","region":"us-west-2","resources":["arn:aws:ecs:us-west-2:111122223333:service/default/servicetest"],"detail":{"eventType":"ERROR","eventName":"SERVICE_TASK_PLACEMENT_FAILURE"}}"#;

    #[test]
    fn one_event_is_one_record_kept_as_sent() {
        let r = parse(TASK.as_bytes(), None).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(&*r[0].tag, "ECS Task State Change");
        // 2020-01-23T17:57:58Z
        assert_eq!(r[0].time_ns, 1_579_802_278_000_000_000);
        let sent: Value = serde_json::from_str(TASK).unwrap();
        assert_eq!(Value::Object(r[0].fields().into_owned()), sent);
        // Field order as sent (outputs write them in this order).
        let keys = r[0].keys();
        assert_eq!(keys[..3], ["version", "id", "detail-type"]);
        assert_eq!(
            event_id(&r[0]),
            Some("3317b2af-7005-947d-b652-f55e762e571a")
        );
    }

    #[test]
    fn arrays_of_events_and_the_tag_setting() {
        let body = format!("[{TASK},{ACTION}]");
        let r = parse(body.as_bytes(), None).unwrap();
        let tags: Vec<&str> = r.iter().map(|r| &*r.tag).collect();
        assert_eq!(tags, ["ECS Task State Change", "ECS Service Action"]);
        let t: Arc<str> = Arc::from("ecs");
        let r = parse(body.as_bytes(), Some(&t)).unwrap();
        assert!(r.iter().all(|r| &*r.tag == "ecs"));
    }

    #[test]
    fn time_falls_back_to_now_when_not_rfc3339() {
        for time in [
            r#""yesterday""#,
            "1579802278",
            "null",
            r#""2020-13-40T00:00:00Z""#,
        ] {
            let body = format!(r#"{{"source":"s","detail-type":"d","time":{time}}}"#);
            let before = now_ns();
            let r = parse(body.as_bytes(), None).unwrap();
            assert!(r[0].time_ns >= before, "{time}");
        }
        let r = parse(
            br#"{"source":"s","detail-type":"d","time":"2020-01-23T19:57:58.5+02:00"}"#,
            None,
        )
        .unwrap();
        assert_eq!(r[0].time_ns, 1_579_802_278_500_000_000);
    }

    #[test]
    fn bodies_that_are_not_events_are_refused_whole() {
        let cases: &[(&str, &str, &str)] = &[
            ("{not json", "bad_body", "invalid JSON"),
            ("", "bad_body", "invalid JSON"),
            ("\u{ff}", "bad_body", "invalid JSON"),
            ("42", "not_an_event", "found a number"),
            ("[]", "not_an_event", "empty array"),
            (
                r#"{"source":"aws.ecs","detail":{}}"#,
                "not_an_event",
                "no \"detail-type\"",
            ),
            (r#"{"detail-type":"x"}"#, "not_an_event", "no \"source\""),
            (
                r#"{"detail-type":7,"source":"s"}"#,
                "not_an_event",
                "must be a string",
            ),
        ];
        for (body, kind, says) in cases {
            let e = parse(body.as_bytes(), None).unwrap_err();
            assert_eq!(e.kind(), *kind, "{body}");
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
        // One bad element refuses the good ones with it, and says which.
        let body = format!("[{TASK},\"oops\",{ACTION}]");
        let e = parse(body.as_bytes(), None).unwrap_err();
        assert_eq!(e.kind(), "not_an_event");
        assert!(e.to_string().contains("array element 1"), "{e}");
        let body = format!(r#"[{TASK},{{"source":"aws.ecs"}}]"#);
        let e = parse(body.as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("array element 1"), "{e}");
    }
}
