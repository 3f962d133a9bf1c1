//! `type = "sns"`: alerts published to an SNS topic, grouped like Slack's (see
//! [`crate::output::alert`]).
//!
//! Each message is the same text as Slack's (plain, `format = "text"`, the default) or the
//! event JSON (`format = "json"`: a lead is the record's JSON; a follow-up is
//! `{"group", "count", "total", "first_at", "window_seconds", "samples": [...]}`), with a
//! `Subject` (used by e-mail subscriptions) of at most 100 printable ASCII characters
//! (SNS `Publish`: "must be ASCII text that begins with a letter, number, or punctuation
//! mark; must not include line breaks or control characters; less than 100 characters").
//! A message is at most 256 KiB (SNS's limit): a follow-up shows fewer samples, a lead
//! whose JSON is larger is sent as text.
//!
//! PublishBatch where it helps: messages that are ready together (leads of several groups
//! at once, e.g. many services failing in one deployment) are coalesced into PublishBatch
//! calls of up to 10 entries; each entry's result goes back to its own message, so a
//! failed entry is retried alone (its records are not resent with the others). A single
//! message is sent with Publish.

pub(crate) mod config;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_sns::types::PublishBatchRequestEntry;
use tokio::sync::{mpsc, oneshot};

use super::{AwsSettings, BuildError, classify, require_region, sdk_config};
use crate::event::Record;
use crate::output::alert::layout::{Flavor, render, subject as layout_subject};
use crate::output::alert::{AlertBatch, AlertBuilder, AlertSettings, Grouping, Kind};
use crate::output::sink::{Failure, SendResult, Sink};
use crate::output::template::{Dynamic, Template};

/// SNS's largest message (Publish / PublishBatch, per message), in bytes.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Subjects must be under 100 characters.
pub(crate) const MAX_SUBJECT_CHARS: usize = 99;
/// Entries per PublishBatch call.
const MAX_BATCH_ENTRIES: usize = 10;
/// How long a message waits for others to share its PublishBatch call.
const COALESCE: Duration = Duration::from_millis(5);

/// `format`: what a message holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnsFormat {
    /// The alert text (Slack's layouts as plain text).
    #[default]
    Text,
    /// The event JSON.
    Json,
}

/// An `[outputs.NAME]` of `type = "sns"`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SnsConfig {
    /// The output's name, for log lines.
    pub name: String,
    /// `topic_arn`.
    pub topic_arn: String,
    /// `subject`: a template rendered on the message's first record; default the alert's
    /// title.
    pub subject: Option<String>,
    /// `format`.
    pub format: SnsFormat,
    /// `group_by`, `window`, `max_per_minute`.
    pub(crate) alerts: AlertSettings,
    /// Region, endpoint and role.
    pub aws: AwsSettings,
}

/// One message waiting for the publisher task.
struct Pending {
    message: String,
    subject: String,
    done: oneshot::Sender<Result<(), Failure>>,
}

/// Publishes grouped alerts to one topic.
pub(crate) struct SnsSink {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    subject: Option<Template>,
    format: SnsFormat,
    grouping: Arc<Grouping>,
    /// The publisher task, started by the first send (construction may run outside a
    /// runtime, for `firelane check`).
    outbox: OnceLock<mpsc::UnboundedSender<Pending>>,
}

/// Builds the sink with a client for `cfg`'s region and endpoint.
pub(crate) async fn build(cfg: SnsConfig) -> Result<SnsSink, BuildError> {
    let conf = sdk_config(&cfg.aws).await;
    require_region(&conf, &cfg.name)?;
    let mut b = aws_sdk_sns::config::Builder::from(&conf);
    if let Some(url) = &cfg.aws.endpoint_url {
        b = b.endpoint_url(url);
    }
    build_with_client(cfg, aws_sdk_sns::Client::from_conf(b.build()))
}

/// Checks `cfg` and wraps `client` (never called here).
pub(crate) fn build_with_client(
    cfg: SnsConfig,
    client: aws_sdk_sns::Client,
) -> Result<SnsSink, BuildError> {
    let invalid = |key: &'static str, value: &str, reason: &str| BuildError::Invalid {
        output: cfg.name.clone(),
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    // arn:aws:sns:REGION:ACCOUNT:NAME
    let parts: Vec<&str> = cfg.topic_arn.split(':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" || parts[5].is_empty() {
        return Err(invalid(
            "topic_arn",
            &cfg.topic_arn,
            "expected an SNS topic ARN, arn:aws:sns:REGION:ACCOUNT:TOPIC",
        ));
    }
    let subject = match &cfg.subject {
        Some(s) => Some(Template::parse(s).map_err(|source| BuildError::Template {
            output: cfg.name.clone(),
            key: "subject",
            source,
        })?),
        None => None,
    };
    let grouping = Grouping::new(&cfg.alerts).map_err(|source| BuildError::Template {
        output: cfg.name.clone(),
        key: "group_by",
        source,
    })?;
    Ok(SnsSink {
        client,
        topic_arn: cfg.topic_arn,
        subject,
        format: cfg.format,
        grouping: Arc::new(grouping),
        outbox: OnceLock::new(),
    })
}

impl SnsSink {
    /// `Subject` for `batch`: the template on its first record, else the alert's title;
    /// made valid for SNS.
    pub(crate) fn subject_of(&self, batch: &AlertBatch) -> String {
        let raw = match (&self.subject, batch.samples.first()) {
            (Some(t), Some(r)) => t.render_to_string(r, Dynamic::default()),
            _ => layout_subject(batch, usize::MAX),
        };
        sns_subject(&raw)
    }

    /// The message body for `batch`.
    pub(crate) fn message_of(&self, batch: &AlertBatch) -> String {
        let text = || clip_bytes(render(batch, Flavor::Text), MAX_MESSAGE_BYTES);
        match (self.format, batch.kind) {
            (SnsFormat::Text, _) => text(),
            (SnsFormat::Json, Kind::Lead) => {
                let json = batch
                    .samples
                    .first()
                    .map(|r| event_json(r).to_string())
                    .unwrap_or_default();
                if json.len() <= MAX_MESSAGE_BYTES && !json.is_empty() {
                    json
                } else {
                    text()
                }
            }
            (SnsFormat::Json, Kind::FollowUp) => follow_up_json(batch),
        }
    }

    fn outbox(&self) -> &mpsc::UnboundedSender<Pending> {
        self.outbox.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(publisher(self.client.clone(), self.topic_arn.clone(), rx));
            tx
        })
    }
}

fn event_json(r: &Record) -> serde_json::Value {
    serde_json::Value::Object(r.fields().into_owned())
}

/// A follow-up as JSON, with as many samples as fit in a message.
fn follow_up_json(batch: &AlertBatch) -> String {
    let first_at = chrono::DateTime::<chrono::Utc>::from(batch.first_at).to_rfc3339();
    let mut samples: Vec<serde_json::Value> = batch.samples.iter().map(event_json).collect();
    loop {
        let doc = serde_json::json!({
            "group": &*batch.group,
            "count": batch.count,
            "total": batch.total,
            "first_at": first_at,
            "window_seconds": batch.window.as_secs(),
            "samples": samples,
        })
        .to_string();
        if doc.len() <= MAX_MESSAGE_BYTES || samples.is_empty() {
            return doc;
        }
        samples.pop();
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn clip_bytes(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A valid SNS `Subject`: printable ASCII (others become `?`), no line breaks, starting
/// with a letter, digit or punctuation, under 100 characters (cut with `...`).
pub(crate) fn sns_subject(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect::<String>()
        .trim()
        .to_string();
    if s.chars().count() > MAX_SUBJECT_CHARS {
        s.truncate(MAX_SUBJECT_CHARS - 3);
        s = s.trim_end().to_string();
        s.push_str("...");
    }
    if s.is_empty() {
        s = "firelane alert".to_string();
    }
    s
}

/// Publishes what the sends hand over: one message with Publish, several ready together
/// with PublishBatch (up to 10), each message's result back to its own send.
async fn publisher(
    client: aws_sdk_sns::Client,
    topic_arn: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + COALESCE;
        while batch.len() < MAX_BATCH_ENTRIES {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                _ => break,
            }
        }
        // A send cut off by the shutdown deadline no longer waits for its answer.
        batch.retain(|p| !p.done.is_closed());
        if batch.len() == 1 {
            let p = batch.remove(0);
            let r = client
                .publish()
                .topic_arn(&topic_arn)
                .message(&p.message)
                .subject(&p.subject)
                .send()
                .await;
            let _ = p.done.send(r.map(drop).map_err(|e| classify(&e)));
            continue;
        }
        if batch.is_empty() {
            continue;
        }
        tracing::debug!(topic = %topic_arn, entries = batch.len(), "PublishBatch of messages ready together");
        let entries: Vec<PublishBatchRequestEntry> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(&p.message)
                    .subject(&p.subject)
                    .build()
                    .ok()
            })
            .collect();
        let r = client
            .publish_batch()
            .topic_arn(&topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        match r {
            Err(e) => {
                let f = classify(&e);
                for p in batch {
                    let _ = p.done.send(Err(f.clone()));
                }
            }
            Ok(out) => {
                let mut results: Vec<Option<Result<(), Failure>>> = vec![None; batch.len()];
                for ok in out.successful() {
                    if let Some(slot) = ok.id().and_then(|i| i.parse::<usize>().ok())
                        && let Some(r) = results.get_mut(slot)
                    {
                        *r = Some(Ok(()));
                    }
                }
                for failed in out.failed() {
                    let Some(r) = failed
                        .id()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| results.get_mut(i))
                    else {
                        continue;
                    };
                    let message = format!(
                        "PublishBatch entry failed: {} {}",
                        failed.code(),
                        failed.message().unwrap_or("")
                    );
                    // SenderFault: the request itself is wrong (too long, bad subject);
                    // anything else (throttling, internal errors) may pass next time.
                    *r = Some(Err(
                        if failed.sender_fault() && failed.code() != "Throttling" {
                            Failure::permanent(entry_reason(failed.code()), message)
                        } else {
                            Failure::retryable(entry_reason(failed.code()), message)
                        },
                    ));
                }
                for (p, r) in batch.into_iter().zip(results) {
                    // An entry in neither list: its fate is unknown; sending it again may
                    // duplicate an alert, which beats losing it.
                    let r = r.unwrap_or_else(|| {
                        Err(Failure::retryable(
                            "unknown_entry",
                            "PublishBatch answered nothing for this entry",
                        ))
                    });
                    let _ = p.done.send(r);
                }
            }
        }
    }
}

/// A metrics label for a PublishBatch entry's error code.
fn entry_reason(code: &str) -> &'static str {
    match code {
        "Throttling" | "ThrottlingException" => "throttled",
        "InvalidParameter" | "InvalidParameterValue" => "invalid_parameter",
        "AuthorizationError" => "access_denied",
        "NotFound" => "not_found",
        "KMSThrottling" => "throttled",
        _ => "entry_failed",
    }
}

impl Sink for SnsSink {
    type Builder = AlertBuilder;
    /// The group key: one open message per group.
    type Partition = Arc<str>;

    fn partition(&self, record: &Record) -> Result<Arc<str>, &'static str> {
        Ok(self.grouping.group_of(record))
    }

    fn new_batch(&self, group: &Arc<str>) -> AlertBuilder {
        self.grouping.new_batch(group)
    }

    async fn send(&self, _group: &Arc<str>, batch: &AlertBatch) -> SendResult {
        self.grouping.permit().await;
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            message: self.message_of(batch),
            subject: self.subject_of(batch),
            done,
        };
        if self.outbox().send(pending).is_err() {
            return SendResult::Failed(Failure::retryable(
                "publisher_stopped",
                "the SNS publisher task stopped",
            ));
        }
        match answer.await {
            Ok(Ok(())) => SendResult::Delivered,
            Ok(Err(f)) => SendResult::Failed(f),
            Err(_) => SendResult::Failed(Failure::retryable(
                "publisher_stopped",
                "the SNS publisher task stopped before answering",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_valid_for_sns() {
        assert_eq!(
            sns_subject("ECS task stopped in prod: web"),
            "ECS task stopped in prod: web"
        );
        assert_eq!(sns_subject("a\nb\tc é"), "a b c ?");
        assert_eq!(sns_subject("  "), "firelane alert");
        let long = sns_subject(&"x".repeat(300));
        assert!(long.len() < 100 && long.ends_with("..."), "{long}");
    }

    fn config(topic: &str) -> SnsConfig {
        SnsConfig {
            name: "o".into(),
            topic_arn: topic.into(),
            subject: Some("{detail-type}: {detail.group}".into()),
            format: SnsFormat::Json,
            alerts: AlertSettings::default(),
            aws: AwsSettings::default(),
        }
    }

    #[test]
    fn topic_arn_and_subject_are_checked() {
        let client = super::super::offline::sns(None);
        assert!(
            build_with_client(
                config("arn:aws:sns:us-east-1:123456789012:alerts"),
                client.clone()
            )
            .is_ok()
        );
        for bad in [
            "alerts",
            "arn:aws:sqs:us-east-1:1:q",
            "arn:aws:sns:us-east-1:1:",
        ] {
            let e = build_with_client(config(bad), client.clone())
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("topic_arn")), "{bad}");
        }
        let mut c = config("arn:aws:sns:us-east-1:1:t");
        c.subject = Some("{x|nope}".into());
        assert!(build_with_client(c, client).is_err());
    }

    #[test]
    fn json_follow_ups_fit_in_a_message() {
        let big = serde_json::json!({"detail-type": "X", "log": "y".repeat(100_000)});
        let r = Record::new("t", 0, big.as_object().cloned().unwrap_or_default());
        let batch = AlertBatch {
            kind: Kind::FollowUp,
            group: Arc::from("g"),
            count: 10,
            total: 11,
            first_at: std::time::SystemTime::UNIX_EPOCH,
            samples: vec![r.clone(), r.clone(), r],
            window: Duration::from_secs(60),
        };
        let doc: serde_json::Value = serde_json::from_str(&follow_up_json(&batch)).unwrap();
        assert_eq!(doc["samples"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            (doc["count"].as_u64(), doc["total"].as_u64()),
            (Some(10), Some(11))
        );
    }
}
