//! `type = "slack"`: alerts to a Slack incoming webhook, grouped (see [`super::alert`]).
//!
//! Each message is one POST of `{"text": ...}` (mrkdwn) to `webhook_url` (Slack API docs,
//! "Sending messages using incoming webhooks"). Slack answers 200 `ok`; 429 with
//! `Retry-After` when over its rate limit (about one message per second per webhook), which
//! is honoured; 5xx, timeouts and connection errors are retried with backoff. Any other
//! status is permanent: a 400 (`invalid_payload`, `no_text`), 403 (`action_prohibited`,
//! `invalid_token`), 404 (`no_service`, `channel_not_found`: the webhook was removed) or 410
//! (`channel_is_archived`) will not change by sending again, so the message's records go
//! to the dead letter output or count as failed, with a log line naming what Slack said.

pub(crate) mod config;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};

use super::alert::layout::{Flavor, render};
use super::alert::{AlertBatch, AlertBuilder, AlertSettings, Grouping};
use super::http::{body_snippet, retry_after_of};
use super::sink::{Failure, SendResult, Sink};
use super::template::TemplateError;
use crate::event::Record;

/// How much of an error response goes into the log line.
const ERROR_BODY_LIMIT: usize = 512;

/// Why a `slack` output cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SlackError {
    #[error("webhook_url: {0}")]
    Url(String),
    #[error("group_by: {0}")]
    GroupBy(#[from] TemplateError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Posts alert messages to one incoming webhook.
pub(crate) struct SlackSink {
    client: reqwest::Client,
    url: Url,
    grouping: Arc<Grouping>,
}

impl SlackSink {
    /// Checks the URL and `group_by`; makes no connection.
    pub(crate) fn new(
        webhook_url: &str,
        alerts: &AlertSettings,
        timeout: Duration,
    ) -> Result<SlackSink, SlackError> {
        let url = Url::parse(webhook_url).map_err(|e| SlackError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SlackError::Url("scheme must be http or https".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(SlackSink {
            client,
            url,
            grouping: Arc::new(Grouping::new(alerts)?),
        })
    }
}

impl Sink for SlackSink {
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
        let body = serde_json::json!({ "text": render(batch, Flavor::Slack) });
        let request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        match request.send().await {
            Ok(response) => classify(response).await,
            Err(e) => {
                let reason = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connection_error"
                } else {
                    "request_error"
                };
                // reqwest's text names the URL, which holds the webhook's secret path.
                let mut message = format!("POST to the Slack webhook failed: {e}");
                if let Some(path) = Some(self.url.path()).filter(|p| p.len() > 1) {
                    message = message.replace(path, "/***");
                }
                SendResult::Failed(Failure::retryable(reason, message))
            }
        }
    }
}

async fn classify(mut response: reqwest::Response) -> SendResult {
    let status = response.status();
    if status.is_success() {
        return SendResult::Delivered;
    }
    let retry_after = retry_after_of(&response);
    let said = body_snippet(&mut response, ERROR_BODY_LIMIT).await;
    let mut failure = match status {
        StatusCode::TOO_MANY_REQUESTS => Failure::retryable(
            "throttled",
            format!("Slack rate limit (HTTP 429 {said}), waiting as its Retry-After says"),
        ),
        StatusCode::REQUEST_TIMEOUT => {
            Failure::retryable("request_timeout", format!("HTTP 408 {said}"))
        }
        s if s.is_server_error() => Failure::retryable("server_error", format!("HTTP {s} {said}")),
        s => {
            let hint = match s.as_u16() {
                400 => "the message was refused as malformed",
                403 => "the webhook is not allowed to post (revoked token or prohibited action)",
                404 => "the webhook does not exist any more or the URL is wrong",
                410 => "the channel is archived",
                _ => "Slack refused the request",
            };
            Failure::permanent(
                "client_error",
                format!("Slack answered HTTP {s} {said}: {hint}; not retried"),
            )
        }
    };
    failure.retry_after = retry_after;
    SendResult::Failed(failure)
}
