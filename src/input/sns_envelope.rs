//! The SNS message envelope, shared by the HTTP input's `format = "sns"` (HTTP(S)
//! subscriptions, signatures verified there) and the SQS input's `format = "sns"` (SNS to
//! SQS without raw delivery: the queue policy authenticates the sender).
//!
//! SNS sends a JSON object (firelens-and-protocols.md §5.7; SNS developer guide, *Parsing
//! message formats*): `Type` (`Notification`, `SubscriptionConfirmation`,
//! `UnsubscribeConfirmation`), `MessageId`, `TopicArn`, `Message`, `Timestamp`, an optional
//! `Subject`, and the signature fields. A notification becomes one record by
//! [`message_record`]: the `Message` parsed as JSON when it is an object (an EventBridge
//! event routed through SNS), else `{"message": <text>}`, with [`notification_metadata`]
//! under an `sns` key.

pub(crate) use super::json::{json_kind, rfc3339_ns};
use std::sync::Arc;

use serde_json::Value;

use crate::event::{Fields, Record, now_ns};

/// `Type` of an envelope, and the `x-amz-sns-message-type` header of an HTTP delivery
/// (SNS developer guide, *HTTP/HTTPS headers*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// A message published to the topic.
    Notification,
    /// Sent once when the endpoint is subscribed; confirmed by a GET of `SubscribeURL`.
    SubscriptionConfirmation,
    /// Sent once when the endpoint is unsubscribed.
    UnsubscribeConfirmation,
}

impl MessageType {
    /// Parses a `Type` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Notification" => Some(MessageType::Notification),
            "SubscriptionConfirmation" => Some(MessageType::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Some(MessageType::UnsubscribeConfirmation),
            _ => None,
        }
    }

    /// The `Type` value.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Notification => "Notification",
            MessageType::SubscriptionConfirmation => "SubscriptionConfirmation",
            MessageType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }

    /// The envelope keys signed, in the order they are signed (SNS developer guide,
    /// *Verifying the signatures of Amazon SNS messages*). `Subject` is signed only when
    /// the notification has one.
    pub fn signed_keys(self) -> &'static [&'static str] {
        match self {
            MessageType::Notification => &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ],
            MessageType::SubscriptionConfirmation | MessageType::UnsubscribeConfirmation => &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ],
        }
    }
}

/// Why a body is not an SNS envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON (or not UTF-8).
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON that is not an SNS envelope: not an object, a required field missing or not a
    /// string, an unknown `Type`.
    #[error("not an SNS message: {0}")]
    NotAMessage(String),
}

/// Parses `body` as an envelope: a JSON object with a known `Type`. The other fields are
/// checked by whoever uses them ([`required`]).
pub fn parse_envelope(body: &[u8]) -> Result<(Fields, MessageType), EnvelopeError> {
    let envelope: Value = serde_json::from_slice(body).map_err(|e| EnvelopeError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Object(envelope) = envelope else {
        return Err(EnvelopeError::NotAMessage(format!(
            "expected a JSON object, found {}",
            json_kind(&envelope)
        )));
    };
    let ty = required(&envelope, "Type")?;
    let ty = MessageType::parse(ty)
        .ok_or_else(|| EnvelopeError::NotAMessage(format!("unknown Type {ty:?}")))?;
    Ok((envelope, ty))
}

/// `envelope[key]` as a string; a missing or non-string field is not an SNS message.
pub fn required<'a>(envelope: &'a Fields, key: &str) -> Result<&'a str, EnvelopeError> {
    match envelope.get(key) {
        Some(Value::String(s)) => Ok(s),
        None => Err(EnvelopeError::NotAMessage(format!("no {key:?}"))),
        Some(other) => Err(EnvelopeError::NotAMessage(format!(
            "{key:?} must be a string, found {}",
            json_kind(other)
        ))),
    }
}

/// What a notification's record keeps of its envelope, under the `sns` key: `Subject`
/// (when it is a string), `MessageId`, `TopicArn` and `Timestamp`.
pub fn notification_metadata(envelope: &Fields) -> Fields {
    let mut sns = Fields::new();
    for key in ["Subject", "MessageId", "TopicArn", "Timestamp"] {
        if let Some(v @ Value::String(_)) = envelope.get(key) {
            sns.insert(key.to_string(), v.clone());
        }
    }
    sns
}

/// The envelope's `Timestamp` in nanoseconds since the epoch, when it is RFC 3339.
pub fn timestamp_ns(envelope: &Fields) -> Option<i64> {
    envelope
        .get("Timestamp")
        .and_then(Value::as_str)
        .and_then(rfc3339_ns)
}

/// The record of a message: its JSON object, or `{"message": text}` for anything else;
/// `sns` added under the key `sns` when given and the message has no `sns` field of its
/// own. A message's own `sns` is kept as it is and the envelope's metadata left out (the
/// rule of outputs' `tag_key` / `time_key`: a record's own data is never overwritten),
/// with a warning once per process. An EventBridge event (an
/// object whose `detail-type` and `source` are strings) is tagged with its `detail-type`
/// and timed by its `time`; other messages by `timestamp` (the envelope's) or now.
/// `named_tag` (the request's or the input's `tag`) wins over the event's `detail-type`;
/// `default_tag` is the tag otherwise.
pub fn message_record(
    text: &str,
    sns: Option<Fields>,
    timestamp: Option<i64>,
    named_tag: Option<&Arc<str>>,
    default_tag: &Arc<str>,
) -> Record {
    // Only an object becomes the record: anything else is not parsed at all.
    let parsed = if looks_like_object(text) {
        serde_json::from_str::<Value>(text).ok()
    } else {
        None
    };
    let (mut fields, event) = match parsed {
        Some(Value::Object(fields)) => {
            let event = match (fields.get("detail-type"), fields.get("source")) {
                (Some(Value::String(dt)), Some(Value::String(_))) => Some((
                    Arc::<str>::from(dt.as_str()),
                    fields
                        .get("time")
                        .and_then(Value::as_str)
                        .and_then(rfc3339_ns),
                )),
                _ => None,
            };
            (fields, event)
        }
        _ => {
            let mut f = Fields::new();
            f.insert("message".into(), Value::String(text.to_string()));
            (f, None)
        }
    };
    if let Some(sns) = sns {
        if fields.contains_key(SNS_KEY) {
            warn_kept_once();
        } else {
            fields.insert(SNS_KEY.into(), Value::Object(sns));
        }
    }
    let (event_tag, event_time) = match event {
        Some((tag, time)) => (Some(tag), time),
        None => (None, None),
    };
    let tag = named_tag
        .cloned()
        .or(event_tag)
        .unwrap_or_else(|| default_tag.clone());
    let time = event_time.or(timestamp).unwrap_or_else(now_ns);
    Record::new(tag, time, fields)
}

/// The key a notification's record has its [`notification_metadata`] under.
pub const SNS_KEY: &str = "sns";

/// Warns once per process that messages carry their own `sns` field, kept in place of the
/// envelope's metadata.
fn warn_kept_once() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            key = SNS_KEY,
            "SNS messages already have a field \"sns\": it is kept as it is and the envelope's \
             metadata (MessageId, TopicArn, Timestamp, Subject) is not added to them; routes on \
             sns.TopicArn do not see these messages' topic"
        );
    }
}

/// Whether `text` may be a JSON object (its first non-blank character is `{`).
pub fn looks_like_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_parse_to_their_type_or_say_what_is_wrong() {
        let (env, ty) =
            parse_envelope(br#"{"Type":"Notification","MessageId":"m","Subject":null}"#).unwrap();
        assert_eq!(ty, MessageType::Notification);
        assert_eq!(required(&env, "MessageId"), Ok("m"));
        assert_eq!(
            required(&env, "TopicArn"),
            Err(EnvelopeError::NotAMessage("no \"TopicArn\"".into()))
        );
        assert_eq!(
            notification_metadata(&env).keys().collect::<Vec<_>>(),
            ["MessageId"],
            "a null Subject is left out"
        );
        for (body, want) in [
            (&b"[1]"[..], "found an array"),
            (b"{\"Type\":\"Other\"}", "unknown Type \"Other\""),
            (b"{\"Type\":3}", "\"Type\" must be a string, found a number"),
            (b"{}", "no \"Type\""),
        ] {
            let e = parse_envelope(body).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        assert!(matches!(
            parse_envelope(b"{nope"),
            Err(EnvelopeError::Json { line: 1, .. })
        ));
        for ty in [
            MessageType::Notification,
            MessageType::SubscriptionConfirmation,
            MessageType::UnsubscribeConfirmation,
        ] {
            assert_eq!(MessageType::parse(ty.name()), Some(ty));
        }
    }

    #[test]
    fn message_records() {
        let tag: Arc<str> = Arc::from("in");
        let mut sns = Fields::new();
        sns.insert("MessageId".into(), Value::from("m"));
        let event = r#"{"version":"0","id":"e","detail-type":"ECS Task State Change","source":"aws.ecs","time":"2020-01-23T17:57:58Z","detail":{}}"#;
        let r = message_record(event, Some(sns.clone()), Some(5), None, &tag);
        assert_eq!(&*r.tag, "ECS Task State Change");
        assert_eq!(r.time_ns, 1_579_802_278_000_000_000);
        assert_eq!(
            r.keys(),
            [
                "version",
                "id",
                "detail-type",
                "source",
                "time",
                "detail",
                "sns"
            ]
        );
        let named: Arc<str> = Arc::from("named");
        assert_eq!(
            &*message_record(event, None, None, Some(&named), &tag).tag,
            "named"
        );
        for text in ["hello", "[1,2]", "42", "{broken"] {
            let r = message_record(text, Some(sns.clone()), Some(5), None, &tag);
            assert_eq!(&*r.tag, "in");
            assert_eq!(r.time_ns, 5);
            assert_eq!(r.get("message").and_then(|v| v.as_str()), Some(text));
        }
        // A message with its own `sns` field keeps it; the envelope's metadata is not added.
        let own = r#"{"sns":{"mine":true},"a":1}"#;
        let r = message_record(own, Some(sns.clone()), Some(5), None, &tag);
        assert_eq!(r.keys(), ["sns", "a"]);
        assert_eq!(r.fields()["sns"], serde_json::json!({"mine": true}));
        let own = r#"{"sns":"text"}"#;
        let r = message_record(own, Some(sns.clone()), Some(5), None, &tag);
        assert_eq!(r.get("sns").and_then(|v| v.as_str()), Some("text"));
        // An object that is not an event: kept, input's tag, the SNS Timestamp.
        let r = message_record(r#"{"a":1}"#, None, Some(7), None, &tag);
        assert_eq!((&*r.tag, r.time_ns, r.keys()), ("in", 7, vec!["a"]));
    }
}
