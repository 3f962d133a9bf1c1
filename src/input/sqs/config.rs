//! `type = "sqs"`: `queue_url`, `region`, `endpoint_url`, `pollers`, `wait_time`,
//! `visibility_timeout`, `format`, `dedupe`.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{SqsConfig, SqsFormat};
use crate::buffer::budget::MemoryBudget;
use crate::config::Listen;
use crate::config::reader::{Diagnostics, Table};
use crate::input::Ingest;
use crate::input::drain::InputShutdown;
use crate::input::registry::{InputConfig, InputType};
use crate::output::aws::AwsSettings;

/// The `sqs` input type.
pub(crate) struct Sqs;

/// More concurrent long polls than this is a typo rather than a need: each poll takes up to
/// 10 messages, and replicas, not pollers, are how a queue's consumers scale.
const MAX_POLLERS: u64 = 64;

impl InputType for Sqs {
    fn name(&self) -> &'static str {
        "sqs"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "queue_url",
            "region",
            "endpoint_url",
            "pollers",
            "wait_time",
            "visibility_timeout",
            "format",
            "dedupe",
        ]
    }

    fn read(&self, name: &str, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn InputConfig> {
        let queue_url = t.string(d, "queue_url").unwrap_or_default();
        let is_url = queue_url.starts_with("https://") || queue_url.starts_with("http://");
        if !queue_url.is_empty() && !is_url {
            d.error(
                t.value_span("queue_url"),
                format!(
                    "{}.queue_url: expected the queue's URL, https://sqs.REGION.amazonaws.com/ACCOUNT/NAME (not its name or ARN)",
                    t.path()
                ),
            );
        } else if t.contains("queue_url") && queue_url.is_empty() {
            d.error(
                t.value_span("queue_url"),
                format!("{}.queue_url: is empty (an unset ${{VAR:-}}?)", t.path()),
            );
        }
        let mut cfg = SqsConfig::new(name, &queue_url);
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
        cfg.aws = AwsSettings {
            region: t.opt_string(d, "region"),
            endpoint_url,
            role_arn: None,
        };
        if let Some(n) = t.opt_u64(d, "pollers") {
            if (1..=MAX_POLLERS).contains(&n) {
                cfg.pollers = n as usize;
            } else {
                d.error(
                    t.value_span("pollers"),
                    format!("{}.pollers: expected 1 to {MAX_POLLERS}", t.path()),
                );
            }
        }
        if let Some(w) = t.opt_duration(d, "wait_time") {
            if w > SqsConfig::MAX_WAIT_TIME || w.subsec_nanos() != 0 {
                d.error(
                    t.value_span("wait_time"),
                    format!(
                        "{}.wait_time: expected whole seconds from \"0s\" to \"20s\" (SQS WaitTimeSeconds)",
                        t.path()
                    ),
                );
            } else {
                if w.is_zero() {
                    d.warn(
                        t.value_span("wait_time"),
                        format!(
                            "{}.wait_time: \"0s\" is short polling: each poller asks about once a second, and every empty receive is billed; long polls (up to \"20s\") wait for messages instead",
                            t.path()
                        ),
                    );
                }
                cfg.wait_time = w;
            }
        }
        if let Some(v) = t.opt_duration(d, "visibility_timeout") {
            // 0 would hand an unparseable message straight back to the next receive: the
            // hot loop the redrive policy exists to avoid.
            if v < Duration::from_secs(1)
                || v > SqsConfig::MAX_VISIBILITY_TIMEOUT
                || v.subsec_nanos() != 0
            {
                d.error(
                    t.value_span("visibility_timeout"),
                    format!(
                        "{}.visibility_timeout: expected whole seconds from \"1s\" to \"12h\" (SQS VisibilityTimeout)",
                        t.path()
                    ),
                );
            } else {
                cfg.visibility_timeout = Some(v);
            }
        }
        if let Some(f) = t.opt_string(d, "format") {
            match SqsFormat::parse(&f) {
                Some(f) => cfg.format = f,
                None => d.error(
                    t.value_span("format"),
                    format!(
                        "{}.format: expected \"eventbridge\", \"sns\", \"json\" or \"text\"",
                        t.path()
                    ),
                ),
            }
        }
        cfg.dedupe = crate::input::dedupe::read(t, d);
        Box::new(cfg)
    }
}

#[async_trait::async_trait]
impl InputConfig for SqsConfig {
    fn type_name(&self) -> &'static str {
        "sqs"
    }

    fn describe(&self) -> String {
        let vt = match self.visibility_timeout {
            Some(v) => format!("visibility {}s", v.as_secs()),
            None => "the queue's visibility timeout".to_owned(),
        };
        let dedupe = match &self.dedupe {
            Some(d) => format!(", dedupe {}s / {} keys", d.window.as_secs(), d.max_keys),
            None => String::new(),
        };
        format!(
            "{} (format {}, {} pollers, wait {}s, {vt}{dedupe})",
            self.queue_url,
            self.format.name(),
            self.pollers,
            self.wait_time.as_secs()
        )
    }

    fn listens(&self) -> Vec<Listen> {
        Vec::new()
    }

    async fn spawn(
        &self,
        ingest: Arc<dyn Ingest>,
        budget: MemoryBudget,
        shutdown: InputShutdown,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        super::spawn(self.clone(), ingest, budget, shutdown).await
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "[outputs.o]\ntype = \"null\"\n";

    fn read(input: &str) -> Result<SqsConfig, Vec<String>> {
        let text = format!("[inputs.q]\ntype = \"sqs\"\n{input}\n{OUT}");
        match crate::config::parse(&text, "t.toml", &|_| None) {
            Ok(l) => Ok(l.config.inputs[0]
                .kind
                .as_any()
                .downcast_ref::<SqsConfig>()
                .expect("an sqs input")
                .clone()),
            Err(e) => Err(e.errors),
        }
    }

    #[test]
    fn defaults_and_every_key() {
        let c = read("queue_url = \"https://sqs.eu-west-1.amazonaws.com/1/q\"").unwrap();
        assert_eq!(
            c,
            SqsConfig::new("q", "https://sqs.eu-west-1.amazonaws.com/1/q")
        );
        assert_eq!(c.pollers, 2);
        assert_eq!(c.wait_time, Duration::from_secs(20));
        assert_eq!(c.format, SqsFormat::EventBridge);
        let c = read(
            r#"queue_url = "http://127.0.0.1:5000/123456789012/q"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5000"
pollers = 4
wait_time = "1s"
visibility_timeout = "2m"
format = "sns""#,
        )
        .unwrap();
        assert_eq!(c.aws.region.as_deref(), Some("us-east-1"));
        assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.pollers, 4);
        assert_eq!(c.wait_time, Duration::from_secs(1));
        assert_eq!(c.visibility_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.format, SqsFormat::Sns);
        assert_eq!(c.dedupe, None, "off unless set");
        let c = read(
            "queue_url = \"https://sqs.eu-west-1.amazonaws.com/1/q\"\nformat = \"text\"\ndedupe = { window = \"30s\", max_keys = 7 }",
        )
        .unwrap();
        assert_eq!(
            c.dedupe,
            Some(crate::input::dedupe::DedupeConfig {
                window: Duration::from_secs(30),
                max_keys: 7
            }),
            "every format has a key (the SQS MessageId at least)"
        );
    }

    #[test]
    fn short_polling_is_warned_about() {
        let text = format!(
            "[inputs.q]\ntype = \"sqs\"\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/q\"\nwait_time = \"0s\"\n{OUT}"
        );
        let l = crate::config::parse(&text, "t.toml", &|_| None).expect("valid");
        assert!(
            l.warnings.iter().any(|w| w.contains("short polling")),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn bad_values_are_refused_at_their_key() {
        let url = "queue_url = \"https://sqs.eu-west-1.amazonaws.com/1/q\"\n";
        let cases = [
            ("", "queue_url"),
            ("queue_url = \"ecs-events\"", "not its name or ARN"),
            ("queue_url = \"\"", "is empty"),
            ("pollers = 0", "pollers: expected 1 to 64"),
            ("wait_time = \"21s\"", "wait_time"),
            ("wait_time = \"1500ms\"", "wait_time"),
            ("visibility_timeout = \"0s\"", "visibility_timeout"),
            ("visibility_timeout = \"13h\"", "visibility_timeout"),
            ("format = \"xml\"", "format: expected"),
            ("endpoint_url = \"localhost:4566\"", "endpoint_url"),
            ("dedupe = { window = \"0s\" }", "dedupe.window"),
            ("dedupe = { max_keys = 0 }", "dedupe.max_keys"),
            ("dedupe = { windows = \"1m\" }", "windows"),
        ];
        for (line, want) in cases {
            let text = if line.starts_with("queue_url") || line.is_empty() {
                line.to_owned()
            } else {
                format!("{url}{line}")
            };
            let e = read(&text).expect_err(line).join("\n");
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
