//! SQS input (`type = "sqs"`): long-polls one queue and turns each message into a record.
//!
//! This is the third way EventBridge delivers outside Lambda (an SQS queue as the rule's
//! target, spec §5.8), and the one that scales past one task: several firelane replicas
//! poll the same queue, and SQS hands each message to one of them at a time.
//!
//! - `pollers` concurrent `ReceiveMessage` long polls (`MaxNumberOfMessages` 10,
//!   `WaitTimeSeconds` = `wait_time`).
//! - A message is deleted (`DeleteMessageBatch`) only once its record is buffered (its
//!   [`AckToken`](crate::input::ack::AckToken) released). While a batch waits longer than half
//!   the visibility timeout (full buffers, a slow disk) its messages' visibility is extended
//!   (`ChangeMessageVisibilityBatch`), so another replica does not receive them meanwhile.
//! - A message that cannot be parsed per `format` is counted
//!   (`firelane_input_errors_total{input, kind="bad_message"}`) and left alone: it becomes
//!   visible again after its visibility timeout, and the queue's redrive policy moves it to a
//!   dead-letter queue after `maxReceiveCount` receives. It is never deleted and never
//!   re-received in a hot loop.
//! - `ReceiveMessage` failures (throttling, network) back off exponentially with jitter,
//!   capped at 20 s.
//! - Shutdown: at SIGTERM the pollers stop receiving; batches in flight are finished (ingested
//!   and deleted) during the drain window; what is still unfinished at its end is returned to
//!   the queue (`ChangeMessageVisibilityBatch` with 0) for another replica. The drain window
//!   ends early once no batch is in flight.
//!
//! - `dedupe = { window, max_keys }` ([`crate::input::dedupe`]): a message whose key was
//!   taken within the window is deleted without a record (it is stored already) and counted
//!   in `firelane_input_duplicates_total{input}`. The key is the event `id` (`format =
//!   "eventbridge"`), the SNS `MessageId` (`format = "sns"`), else the SQS `MessageId` (also
//!   for an `eventbridge` body without a string `id`). A key is remembered only once its
//!   record is buffered; a repeat within one receive waits for its first copy and shares its
//!   fate (deleted when it is buffered, left or returned otherwise). The window is per
//!   process: replicas sharing a queue do not share it.
//!
//! Delivery is at least once (SQS standard queues are): a replica that dies between buffering
//! and deleting leaves the message to be received again.

pub(crate) mod config;
mod poll;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::event::{Fields, Record};
use crate::input::dedupe::DedupeConfig;
use crate::input::sns_envelope::{
    EnvelopeError, MessageType, json_kind, message_record, notification_metadata, parse_envelope,
    required, rfc3339_ns, timestamp_ns,
};
use crate::output::aws::AwsSettings;

pub(crate) use poll::spawn;

/// How a message body becomes a record (`format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SqsFormat {
    /// An EventBridge event (the body the rule's SQS target sends, spec §5.8): the record is
    /// the event object, tagged with its `detail-type`. Default.
    EventBridge,
    /// An SNS notification delivered to SQS without raw delivery (spec §5.7): the record is
    /// the envelope's `Message` (parsed when it is a JSON object, else
    /// `{"message": <text>}`), with `sns = {Subject, MessageId, TopicArn, Timestamp}`. No
    /// signature check: the queue policy is what authenticates the sender.
    Sns,
    /// Any JSON object, taken as it is, tagged with the input name.
    Json,
    /// Any body: `{"message": <body>}`, tagged with the input name.
    Text,
}

impl SqsFormat {
    /// The `format` value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SqsFormat::EventBridge => "eventbridge",
            SqsFormat::Sns => "sns",
            SqsFormat::Json => "json",
            SqsFormat::Text => "text",
        }
    }

    /// Parses a `format` value.
    pub(crate) fn parse(s: &str) -> Option<SqsFormat> {
        Some(match s {
            "eventbridge" => SqsFormat::EventBridge,
            "sns" => SqsFormat::Sns,
            "json" => SqsFormat::Json,
            "text" => SqsFormat::Text,
            _ => return None,
        })
    }
}

/// Configuration of one `type = "sqs"` input.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SqsConfig {
    /// Input name: the `input` label of the metrics, the route `from` name and the tag of
    /// records that have no `detail-type`.
    pub name: String,
    /// `queue_url`, e.g. `https://sqs.us-east-1.amazonaws.com/123456789012/ecs-events`.
    pub queue_url: String,
    /// `region` and `endpoint_url`. When `region` is unset it is taken from the queue URL's
    /// host (`sqs.<region>.amazonaws.com`), then from the standard chain (`AWS_REGION`...).
    pub aws: AwsSettings,
    /// Concurrent long polls. Default 2.
    pub pollers: usize,
    /// `WaitTimeSeconds` of each `ReceiveMessage`, 0–20 s. Default 20 s (fewest empty
    /// receives, which SQS bills).
    pub wait_time: Duration,
    /// `VisibilityTimeout` of each `ReceiveMessage`, whole seconds, 1 s–12 h. `None`
    /// (default): the queue's own, read with `GetQueueAttributes` at start.
    pub visibility_timeout: Option<Duration>,
    /// How bodies become records. Default [`SqsFormat::EventBridge`].
    pub format: SqsFormat,
    /// `dedupe`: drop repeats of a key ([`dedupe_key`]) within a window. Default off.
    pub dedupe: Option<DedupeConfig>,
}

impl SqsConfig {
    /// Default number of concurrent long polls.
    pub(crate) const DEFAULT_POLLERS: usize = 2;
    /// Default long-poll wait: SQS's maximum.
    pub(crate) const DEFAULT_WAIT_TIME: Duration = Duration::from_secs(20);
    /// SQS's longest `WaitTimeSeconds`.
    pub(crate) const MAX_WAIT_TIME: Duration = Duration::from_secs(20);
    /// SQS's longest visibility timeout (12 hours).
    pub(crate) const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(43_200);

    /// A config with every default, reading `queue_url`.
    pub(crate) fn new(name: &str, queue_url: &str) -> SqsConfig {
        SqsConfig {
            name: name.to_owned(),
            queue_url: queue_url.to_owned(),
            aws: AwsSettings::default(),
            pollers: Self::DEFAULT_POLLERS,
            wait_time: Self::DEFAULT_WAIT_TIME,
            visibility_timeout: None,
            format: SqsFormat::EventBridge,
            dedupe: None,
        }
    }
}

/// The de-duplication key of a record parsed with `format` from the message
/// `sqs_message_id`: the event `id` for `eventbridge` (EventBridge keeps it across its
/// retries, which arrive as new SQS messages), the SNS `MessageId` for `sns` (SNS keeps it
/// across its retries), else the SQS `MessageId` (SQS keeps it when it delivers one message
/// twice).
pub fn dedupe_key(format: SqsFormat, record: &Record, sqs_message_id: &str) -> Option<String> {
    let key = match format {
        SqsFormat::EventBridge => record.get("id").and_then(|v| v.as_str().map(str::to_owned)),
        SqsFormat::Sns => record.get("sns").and_then(|s| {
            s.to_value()
                .get("MessageId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }),
        SqsFormat::Json | SqsFormat::Text => None,
    };
    key.or_else(|| (!sqs_message_id.is_empty()).then(|| sqs_message_id.to_owned()))
}

/// The region in an SQS queue URL: `https://sqs.<region>.amazonaws.com[.cn]/...` or the
/// legacy `https://<region>.queue.amazonaws.com/...`. `None` for other hosts (a local
/// endpoint, a VPC endpoint's DNS name).
pub(crate) fn region_of_queue_url(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split(['/', ':']).next()?;
    let region = if let Some(h) = host.strip_prefix("sqs.") {
        h.strip_suffix(".amazonaws.com")
            .or_else(|| h.strip_suffix(".amazonaws.com.cn"))?
    } else {
        host.strip_suffix(".queue.amazonaws.com")?
    };
    let plausible = !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    plausible.then(|| region.to_owned())
}

/// Why a message body cannot become a record. The message is left in the queue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BadMessage {
    /// The body is not JSON at all.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body is JSON {0}, expected an object")]
    NotObject(&'static str),
    /// `format = "sns"` and the body is not an SNS notification envelope.
    #[error(
        "not an SNS notification envelope: {0} (raw message delivery on? then use format = \"eventbridge\", \"json\" or \"text\")"
    )]
    NotSnsEnvelope(String),
    /// `format = "sns"` and the body is an SNS `SubscriptionConfirmation` or
    /// `UnsubscribeConfirmation` (a cross-account subscription sends one to the queue). Not
    /// an event; the operator confirms it by opening `SubscribeURL`.
    #[error(
        "SNS {kind} for topic {topic}, not an event: to confirm the subscription, open its SubscribeURL {url}"
    )]
    SnsControl {
        kind: String,
        topic: String,
        url: String,
    },
}

/// Turns one message body into its record. `tag` is the input name (the tag of records
/// without a `detail-type`); `sent_ms` is the message's `SentTimestamp` (ms since the
/// epoch) when SQS gave it.
///
/// The record's time is the event's own when it has one (the EventBridge `time`, else the
/// SNS `Timestamp`), else when the message was sent, else now: a backlog drained after an
/// outage keeps the times its events happened at.
pub(crate) fn parse_message(
    body: &str,
    format: SqsFormat,
    tag: &Arc<str>,
    sent_ms: Option<i64>,
) -> Result<Record, BadMessage> {
    let sent_ns = sent_ms.and_then(|ms| ms.checked_mul(1_000_000));
    let fallback_ns = || sent_ns.unwrap_or_else(crate::event::now_ns);
    match format {
        SqsFormat::Text => {
            let mut fields = Fields::new();
            fields.insert("message".into(), Value::String(body.to_owned()));
            Ok(Record::new(tag.clone(), fallback_ns(), fields))
        }
        SqsFormat::Json => {
            let fields = object(body)?;
            Ok(Record::new(tag.clone(), fallback_ns(), fields))
        }
        SqsFormat::EventBridge => {
            let fields = object(body)?;
            let time = fields
                .get("time")
                .and_then(Value::as_str)
                .and_then(rfc3339_ns)
                .unwrap_or_else(fallback_ns);
            let tag = eventbridge_tag(&fields).unwrap_or_else(|| tag.clone());
            Ok(Record::new(tag, time, fields))
        }
        SqsFormat::Sns => {
            let not_envelope = |e: EnvelopeError| BadMessage::NotSnsEnvelope(e.to_string());
            let (env, ty) = parse_envelope(body.as_bytes()).map_err(not_envelope)?;
            if ty != MessageType::Notification {
                let field = |k: &str| env.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                return Err(BadMessage::SnsControl {
                    kind: ty.name().to_owned(),
                    topic: field("TopicArn"),
                    url: field("SubscribeURL"),
                });
            }
            let message = required(&env, "Message").map_err(not_envelope)?;
            // Every notification has them; one without is not what SNS sent.
            for k in ["MessageId", "TopicArn", "Timestamp"] {
                required(&env, k).map_err(not_envelope)?;
            }
            // The same record as the HTTP input's: the message (parsed when it is an
            // object), the envelope's metadata under `sns`.
            let timestamp = timestamp_ns(&env).or(sent_ns);
            Ok(message_record(
                message,
                Some(notification_metadata(&env)),
                timestamp,
                None,
                tag,
            ))
        }
    }
}

fn object(body: &str) -> Result<Fields, BadMessage> {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(BadMessage::NotObject(json_kind(&other))),
        Err(e) => Err(BadMessage::NotJson(e.to_string())),
    }
}

/// An EventBridge event (`source`, `detail-type`, `detail`) is tagged with its detail-type,
/// as the HTTP input does.
fn eventbridge_tag(fields: &Fields) -> Option<Arc<str>> {
    match (
        fields.get("source"),
        fields.get("detail-type"),
        fields.get("detail"),
    ) {
        (Some(Value::String(_)), Some(Value::String(dt)), Some(_)) => Some(Arc::from(dt.as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK_EVENT: &str = r#"{"version":"0","id":"3317b2af-7005-47ee-b3b4-1d1c2f7b5b36","detail-type":"ECS Task State Change","source":"aws.ecs","account":"111122223333","time":"2020-01-23T17:57:58Z","region":"us-west-2","resources":["arn:aws:ecs:us-west-2:111122223333:task/FargateCluster/c13b4cb40f1f4fe4a2971f76ae5a47ad"],"detail":{"lastStatus":"STOPPED","stopCode":"EssentialContainerExited"}}"#;

    fn tag() -> Arc<str> {
        Arc::from("queue")
    }

    fn sns_envelope(message: &str, subject: Option<&str>) -> String {
        let mut env = serde_json::json!({
            "Type": "Notification",
            "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
            "TopicArn": "arn:aws:sns:us-west-2:111122223333:ecs-events",
            "Message": message,
            "Timestamp": "2020-01-23T17:58:00.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-x.pem",
            "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe"
        });
        if let Some(s) = subject {
            env["Subject"] = Value::String(s.into());
        }
        env.to_string()
    }

    #[test]
    fn eventbridge_event_is_the_record_tagged_by_detail_type_at_its_time() {
        let r = parse_message(TASK_EVENT, SqsFormat::EventBridge, &tag(), Some(1)).unwrap();
        assert_eq!(&*r.tag, "ECS Task State Change");
        assert_eq!(r.time_ns, 1_579_802_278_000_000_000);
        let want: Fields = serde_json::from_str(TASK_EVENT).unwrap();
        assert_eq!(*r.fields(), want, "the event as sent, nothing added");
    }

    #[test]
    fn eventbridge_format_takes_other_objects_with_the_input_tag_and_sent_time() {
        // An input transformer on the rule can send any object.
        let r = parse_message(
            r#"{"cluster":"c"}"#,
            SqsFormat::EventBridge,
            &tag(),
            Some(5),
        )
        .unwrap();
        assert_eq!(&*r.tag, "queue");
        assert_eq!(r.time_ns, 5_000_000);
        assert_eq!(r.fields()["cluster"], "c");
    }

    #[test]
    fn sns_envelope_with_an_event_is_unwrapped_and_keeps_sns_metadata() {
        let body = sns_envelope(TASK_EVENT, Some("ecs"));
        let r = parse_message(&body, SqsFormat::Sns, &tag(), None).unwrap();
        assert_eq!(&*r.tag, "ECS Task State Change");
        assert_eq!(r.time_ns, 1_579_802_278_000_000_000, "the event's own time");
        assert_eq!(r.fields()["detail"]["stopCode"], "EssentialContainerExited");
        assert_eq!(
            r.fields()["sns"],
            serde_json::json!({
                "Subject": "ecs",
                "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
                "TopicArn": "arn:aws:sns:us-west-2:111122223333:ecs-events",
                "Timestamp": "2020-01-23T17:58:00.000Z"
            })
        );
        assert!(
            r.fields().get("Signature").is_none(),
            "envelope fields dropped"
        );
    }

    #[test]
    fn sns_text_message_becomes_message_field_without_subject_when_none() {
        for text in ["deploy finished", "[1,2]", "42", "{not json"] {
            let body = sns_envelope(text, None);
            let r = parse_message(&body, SqsFormat::Sns, &tag(), None).unwrap();
            assert_eq!(&*r.tag, "queue");
            assert_eq!(r.fields()["message"], text);
            assert!(r.fields()["sns"].get("Subject").is_none());
            assert_eq!(r.time_ns, 1_579_802_280_000_000_000, "SNS Timestamp");
        }
    }

    #[test]
    fn sns_format_refuses_what_is_not_a_notification_envelope() {
        let raw = parse_message(TASK_EVENT, SqsFormat::Sns, &tag(), None).unwrap_err();
        assert!(matches!(raw, BadMessage::NotSnsEnvelope(_)), "{raw}");
        assert!(raw.to_string().contains("raw message delivery"), "{raw}");
        let mut env: Value = serde_json::from_str(&sns_envelope("x", None)).unwrap();
        env["Type"] = "SubscriptionConfirmation".into();
        env["SubscribeURL"] =
            "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription".into();
        let e = parse_message(&env.to_string(), SqsFormat::Sns, &tag(), None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("SubscriptionConfirmation"), "{text}");
        assert!(
            text.contains("Action=ConfirmSubscription"),
            "the URL to open: {text}"
        );
        env["Type"] = "Other".into();
        let e = parse_message(&env.to_string(), SqsFormat::Sns, &tag(), None).unwrap_err();
        assert!(matches!(e, BadMessage::NotSnsEnvelope(_)), "{e}");
        for missing in ["Message", "MessageId", "TopicArn", "Timestamp"] {
            let mut env: Value = serde_json::from_str(&sns_envelope("x", None)).unwrap();
            env.as_object_mut().unwrap().remove(missing);
            let e = parse_message(&env.to_string(), SqsFormat::Sns, &tag(), None).unwrap_err();
            assert_eq!(
                e,
                BadMessage::NotSnsEnvelope(format!("not an SNS message: no {missing:?}"))
            );
        }
        assert!(matches!(
            parse_message("nope", SqsFormat::Sns, &tag(), None),
            Err(BadMessage::NotSnsEnvelope(_))
        ));
    }

    #[test]
    fn dedupe_key_is_the_event_id_the_sns_message_id_or_the_sqs_message_id() {
        let key = |body: &str, f| {
            let r = parse_message(body, f, &tag(), None).unwrap();
            dedupe_key(f, &r, "sqs-1")
        };
        let id = Some("3317b2af-7005-47ee-b3b4-1d1c2f7b5b36".to_owned());
        assert_eq!(key(TASK_EVENT, SqsFormat::EventBridge), id);
        // An input transformer's object without a string `id`: SQS's own MessageId.
        for body in [r#"{"cluster":"c"}"#, r#"{"id":7}"#] {
            assert_eq!(key(body, SqsFormat::EventBridge).as_deref(), Some("sqs-1"));
        }
        // SNS: the envelope's MessageId, not the event id inside.
        assert_eq!(
            key(&sns_envelope(TASK_EVENT, None), SqsFormat::Sns).as_deref(),
            Some("95df01b4-ee98-5cb9-9903-4c221d41eb5e")
        );
        assert_eq!(key(TASK_EVENT, SqsFormat::Json).as_deref(), Some("sqs-1"));
        assert_eq!(key("line", SqsFormat::Text).as_deref(), Some("sqs-1"));
        let r = parse_message("line", SqsFormat::Text, &tag(), None).unwrap();
        assert_eq!(dedupe_key(SqsFormat::Text, &r, ""), None);
    }

    #[test]
    fn json_format_takes_objects_only() {
        let r = parse_message(r#"{"a":1}"#, SqsFormat::Json, &tag(), Some(7)).unwrap();
        assert_eq!(&*r.tag, "queue");
        assert_eq!(r.time_ns, 7_000_000);
        assert_eq!(r.fields()["a"], 1);
        // Not tagged by detail-type: `json` takes the body as an opaque object.
        let r = parse_message(TASK_EVENT, SqsFormat::Json, &tag(), None).unwrap();
        assert_eq!(&*r.tag, "queue");
        for (body, want) in [
            ("[1]", BadMessage::NotObject("an array")),
            ("\"s\"", BadMessage::NotObject("a string")),
            ("null", BadMessage::NotObject("null")),
        ] {
            assert_eq!(
                parse_message(body, SqsFormat::Json, &tag(), None).unwrap_err(),
                want
            );
        }
        assert!(matches!(
            parse_message("{\"a\":", SqsFormat::EventBridge, &tag(), None),
            Err(BadMessage::NotJson(_))
        ));
    }

    #[test]
    fn text_format_takes_any_body() {
        for body in ["", "plain line", "{\"a\":1}"] {
            let r = parse_message(body, SqsFormat::Text, &tag(), Some(1)).unwrap();
            assert_eq!(r.fields().len(), 1);
            assert_eq!(r.fields()["message"], body);
            assert_eq!(&*r.tag, "queue");
        }
    }

    #[test]
    fn region_comes_from_aws_queue_urls_only() {
        let cases = [
            (
                "https://sqs.eu-west-1.amazonaws.com/123456789012/q",
                Some("eu-west-1"),
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
                Some("cn-north-1"),
            ),
            (
                "https://us-east-2.queue.amazonaws.com/123456789012/q",
                Some("us-east-2"),
            ),
            ("http://127.0.0.1:4566/000000000000/q", None),
            (
                "https://vpce-1a2b.sqs.us-east-1.vpce.amazonaws.com/1/q",
                None,
            ),
            ("sqs.us-east-1.amazonaws.com/1/q", None),
        ];
        for (url, want) in cases {
            assert_eq!(region_of_queue_url(url).as_deref(), want, "{url}");
        }
    }
}
