//! `type = "slack"`: `webhook_url`, `group_by`, `window`, `max_per_minute`, `timeout`.

use std::time::Duration;

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::alert::AlertSettings;
use crate::output::core::OutputContext;
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

use super::{SlackError, SlackSink};

/// The `slack` output type.
pub(crate) struct Slack;

/// A `slack` output's keys. `Debug` hides the webhook's path, which is its secret.
#[derive(Clone, PartialEq)]
pub(crate) struct SlackOutput {
    /// The incoming webhook (`https://hooks.slack.com/services/...`); usually `${ENV}`.
    pub webhook_url: String,
    pub alerts: AlertSettings,
    /// One request, connect to last byte. Default 10 s.
    pub timeout: Duration,
}

impl std::fmt::Debug for SlackOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackOutput")
            .field(
                "webhook_url",
                &crate::config::redact::UrlOrigin(&self.webhook_url),
            )
            .field("alerts", &self.alerts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl OutputType for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn keys(&self) -> &'static [&'static str] {
        // The shared alert keys (`ALERT_KEYS`) and this type's own.
        &[
            "webhook_url",
            "group_by",
            "window",
            "max_per_minute",
            "timeout",
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let path = t.path().to_string();
        let webhook_url = t.string(d, "webhook_url").unwrap_or_default();
        if !(webhook_url.is_empty()
            || webhook_url.starts_with("http://")
            || webhook_url.starts_with("https://"))
        {
            d.error(
                t.value_span("webhook_url"),
                format!("{path}.webhook_url: expected an https:// URL"),
            );
        }
        let alerts = AlertSettings::read(t, d);
        let timeout = t
            .opt_duration(d, "timeout")
            .unwrap_or(Duration::from_secs(10));
        Box::new(SlackOutput {
            webhook_url,
            alerts,
            timeout,
        })
    }
}

impl SlackOutput {
    fn sink(&self) -> Result<SlackSink, OutputConfigError> {
        SlackSink::new(&self.webhook_url, &self.alerts, self.timeout).map_err(|e| {
            let key = match &e {
                SlackError::Url(_) => Some("webhook_url"),
                SlackError::GroupBy(_) => Some("group_by"),
                SlackError::Client(_) => None,
            };
            OutputConfigError {
                key,
                message: e.to_string(),
            }
        })
    }
}

#[async_trait::async_trait]
impl OutputConfig for SlackOutput {
    fn type_name(&self) -> &'static str {
        "slack"
    }

    fn describe(&self) -> String {
        redact_webhook(&self.webhook_url)
    }

    /// A batch is one message: a follow-up waits for the group's window (`max_age` is the
    /// window), and may stand for many records (it shows only a few).
    fn default_batch(&self) -> BatchSettings {
        BatchSettings {
            max_records: 100_000,
            max_bytes: 64 << 20,
            max_age: self.alerts.window,
        }
    }

    /// One message at a time: a group's follow-up never overtakes its lead, and the
    /// per-minute cap is simple to keep.
    fn default_concurrency(&self) -> usize {
        1
    }

    fn validate(&self, _o: &OutputSpec) -> Result<(), OutputConfigError> {
        self.sink().map(drop)
    }

    fn destination(&self, _o: &OutputSpec, record: &Record) -> String {
        match self.sink() {
            Ok(sink) => format!(
                "Slack webhook {}, group {:?}",
                redact_webhook(&self.webhook_url),
                &*crate::output::sink::Sink::partition(&sink, record).unwrap_or_default()
            ),
            Err(e) => format!("not started: {e}"),
        }
    }

    async fn start(
        &self,
        _o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = self.sink()?;
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The webhook URL without its path: an incoming webhook's path is its secret
/// (`/services/T…/B…/TOKEN`), and `check` / `route` output gets pasted into tickets.
fn redact_webhook(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/***", u.scheme(), u.host_str().unwrap_or_default()),
        Err(_) => "(a URL that does not parse)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_secret_is_not_shown() {
        assert_eq!(
            redact_webhook("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/***"
        );
    }

    fn errors(output: &str) -> Vec<String> {
        let text = format!(
            "[inputs.f]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"slack\"\n{output}\n"
        );
        match crate::config::parse(&text, "t.toml", &|_| None) {
            Ok(_) => vec![],
            Err(e) => e.errors,
        }
    }

    #[test]
    fn keys_are_checked() {
        assert!(errors("webhook_url = \"https://hooks.slack.com/x\"").is_empty());
        assert_eq!(errors("").len(), 1, "webhook_url is required");
        assert!(errors("webhook_url = \"ftp://x\"")[0].contains("webhook_url"));
        let e = errors("webhook_url = \"https://h/x\"\ngroup_by = \"{a|nope}\"");
        assert!(
            e[0].contains("group_by") && e[0].contains("unknown filter"),
            "{e:?}"
        );
        let e = errors("webhook_url = \"https://h/x\"\nwindow = \"0s\"");
        assert!(e[0].contains("window"), "{e:?}");
    }
}
