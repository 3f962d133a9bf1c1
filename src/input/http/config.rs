//! `type = "http"`: `listen`, `auth`, `max_body`, `format`, `tag`, `accept_timeout`,
//! `body_timeout`, `max_connections`, `header_timeout`, `idle_timeout`, `dedupe`, `sns`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::sns::SnsConfig;
use super::{BodyFormat, HttpAuth, HttpInputConfig};
use crate::buffer::budget::MemoryBudget;
use crate::config::reader::{Diagnostics, Table};
use crate::config::{Listen, read_server_limits};
use crate::input::Ingest;
use crate::input::drain::InputShutdown;
use crate::input::registry::{InputConfig, InputType};

/// EventBridge API destinations' "maximum client execution timeout of 5 seconds"
/// (EventBridge user guide, *API destinations*).
const EVENTBRIDGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `http` input type.
pub(crate) struct Http;

impl InputType for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "listen",
            "auth",
            "max_body",
            "format",
            "tag",
            "accept_timeout",
            "body_timeout",
            "max_connections",
            "header_timeout",
            "idle_timeout",
            "dedupe",
            "sns",
        ]
    }

    fn read(&self, name: &str, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn InputConfig> {
        let listen = t
            .opt_string(d, "listen")
            .unwrap_or_else(|| "127.0.0.1:8888".into());
        if listen.parse::<SocketAddr>().is_err() {
            d.error(
                t.value_span("listen"),
                format!("{}.listen: {listen:?} is not HOST:PORT", t.path()),
            );
        }
        let mut cfg = HttpInputConfig::new(name, &listen);
        if let Some(mut a) = t.opt_table(d, "auth") {
            cfg.auth = read_auth(&mut a, d);
        }
        if let Some(f) = t.opt_string(d, "format") {
            cfg.format = match f.as_str() {
                "auto" => BodyFormat::Auto,
                "json" => BodyFormat::Json,
                "ndjson" => BodyFormat::Ndjson,
                "eventbridge" => BodyFormat::EventBridge,
                "sns" => BodyFormat::Sns,
                _ => {
                    d.error(
                        t.value_span("format"),
                        format!(
                            "{}.format: expected auto, json, ndjson, eventbridge or sns",
                            t.path()
                        ),
                    );
                    BodyFormat::Auto
                }
            };
        }
        if matches!(cfg.format, BodyFormat::EventBridge | BodyFormat::Sns) {
            cfg.max_body = HttpInputConfig::EVENTBRIDGE_MAX_BODY;
        }
        if let Some(m) = t.opt_size(d, "max_body") {
            cfg.max_body = m as usize;
        }
        cfg.tag = t.opt_string(d, "tag");
        if let Some(to) = t.opt_duration(d, "accept_timeout") {
            // An API destination that times out retries the event (a duplicate if it was
            // taken after all) and, after 24 h of that, drops it: not a choice to allow.
            if to >= EVENTBRIDGE_TIMEOUT && cfg.format == BodyFormat::EventBridge {
                d.error(
                    t.value_span("accept_timeout"),
                    format!(
                        "{}.accept_timeout: must be below 5s with format = \"eventbridge\": \
                         API destinations give up on an answer after 5 s",
                        t.path()
                    ),
                );
            } else if to >= EVENTBRIDGE_TIMEOUT {
                d.warn(
                    t.value_span("accept_timeout"),
                    format!(
                        "{}.accept_timeout: EventBridge API destinations give up after 5 s; \
                     keep it below (a request is answered within about accept_timeout)",
                        t.path()
                    ),
                );
            }
            cfg.accept_timeout = to;
        }
        if let Some(to) = t.opt_duration(d, "body_timeout") {
            if to.is_zero() {
                d.error(
                    t.value_span("body_timeout"),
                    format!("{}.body_timeout: must be more than 0", t.path()),
                );
            } else {
                cfg.body_timeout = to;
            }
        }
        read_server_limits(t, d, &mut cfg.limits);
        if t.contains("dedupe") && !matches!(cfg.format, BodyFormat::EventBridge | BodyFormat::Sns)
        {
            d.error(
                t.value_span("dedupe"),
                format!(
                    "{}.dedupe: needs format = \"eventbridge\" or \"sns\" (the key is each \
                     event's `id`, or SNS's `MessageId`; other formats have no key)",
                    t.path()
                ),
            );
        }
        cfg.dedupe = crate::input::dedupe::read(t, d);
        if cfg.format == BodyFormat::Sns {
            let mut sns = SnsConfig::default();
            let errors_before = d.errors.len();
            if let Some(mut a) = t.opt_table(d, "sns") {
                sns = read_sns(&mut a, d);
            }
            // A signed delivery is genuine for its own topic only: anyone can create a topic in
            // their own account, subscribe nothing, and replay its signed messages here. Only
            // topic_arns ties the endpoint to the user's topics. (A topic_arns that failed to
            // read is an error already, not an empty list.)
            if sns.topic_arns.is_empty() && d.errors.len() == errors_before {
                let span = if t.contains("sns") {
                    t.value_span("sns")
                } else {
                    t.value_span("format")
                };
                d.warn(
                    span,
                    format!(
                        "{}: format = \"sns\" without sns.topic_arns accepts messages of any \
                         topic, any AWS account's (a genuine signed message can be replayed \
                         here); list your topics in sns.topic_arns",
                        t.path()
                    ),
                );
            }
            cfg.sns = Some(sns);
        } else if t.contains("sns") {
            t.mark_used("sns");
            d.error(
                t.value_span("sns"),
                format!("{}.sns: needs format = \"sns\"", t.path()),
            );
        }
        Box::new(cfg)
    }
}

#[async_trait::async_trait]
impl InputConfig for HttpInputConfig {
    fn type_name(&self) -> &'static str {
        "http"
    }

    fn describe(&self) -> String {
        let auth = match &self.auth {
            HttpAuth::None => "no auth",
            HttpAuth::ApiKey { .. } => "api_key auth",
            HttpAuth::Bearer { .. } => "bearer auth",
            HttpAuth::Basic { .. } => "basic auth",
        };
        let mut s = format!("{} ({auth}", self.listen);
        if self.format == BodyFormat::EventBridge {
            s.push_str("; EventBridge events");
        }
        if let Some(sns) = &self.sns {
            s.push_str("; SNS deliveries, signatures verified");
            if !sns.topic_arns.is_empty() {
                s.push_str(&format!(" (topics: {})", sns.topic_arns.join(", ")));
            }
            if sns.auto_confirm {
                s.push_str(", subscriptions confirmed");
            }
        }
        if let Some(d) = &self.dedupe {
            s.push_str(&format!(
                "; repeated ids dropped for {}, at most {} remembered",
                humanize(d.window),
                d.max_keys
            ));
        }
        s.push(')');
        s
    }

    fn listens(&self) -> Vec<Listen> {
        self.listen
            .parse()
            .ok()
            .map(Listen::Tcp)
            .into_iter()
            .collect()
    }

    async fn spawn(
        &self,
        ingest: Arc<dyn Ingest>,
        budget: MemoryBudget,
        shutdown: InputShutdown,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        Ok(vec![
            super::spawn(self.clone(), ingest, budget, shutdown).await?,
        ])
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `600s` as `10m`, `90s` as `90s`: durations as a config would write them.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The `sns` table: `topic_arns`, `auto_confirm`, `cert_hosts`, `ca_file`.
fn read_sns(a: &mut Table<'_, '_>, d: &mut Diagnostics) -> SnsConfig {
    let mut cfg = SnsConfig::default();
    let errors_before = d.errors.len();
    for arn in a.opt_string_list(d, "topic_arns").unwrap_or_default() {
        // arn:PARTITION:sns:REGION:ACCOUNT:NAME; a typo here would refuse every message.
        let parts: Vec<&str> = arn.get_ref().split(':').collect();
        if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" || parts[5].is_empty() {
            d.error(
                arn.span(),
                format!(
                    "{}.topic_arns: {:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)",
                    a.path(),
                    arn.get_ref()
                ),
            );
        }
        cfg.topic_arns.push(arn.into_inner());
    }
    cfg.auto_confirm = a.opt_bool(d, "auto_confirm").unwrap_or(false);
    // A topic_arns that failed to read is an error already, not an empty list.
    if cfg.auto_confirm && cfg.topic_arns.is_empty() && d.errors.len() == errors_before {
        d.warn(
            a.value_span("auto_confirm"),
            format!(
                "{}.auto_confirm: without topic_arns, a subscription of any topic (any \
                 account's) to this endpoint is confirmed; list the topics",
                a.path()
            ),
        );
    }
    if let Some(hosts) = a.opt_string_list(d, "cert_hosts") {
        if hosts.is_empty() {
            d.error(
                a.value_span("cert_hosts"),
                format!(
                    "{}.cert_hosts: empty: no certificate could be fetched (remove the key for \
                     the SNS endpoints)",
                    a.path()
                ),
            );
        }
        let mut list = Vec::new();
        for h in hosts {
            let host = h.get_ref().trim();
            if host.is_empty() || host.contains(['/', ':', ' ']) {
                d.error(
                    h.span(),
                    format!(
                        "{}.cert_hosts: {:?} is not a host name (no scheme, port or path)",
                        a.path(),
                        h.get_ref()
                    ),
                );
            }
            list.push(host.to_ascii_lowercase());
        }
        cfg.cert_hosts = Some(list);
    }
    if let Some(path) = a.opt_string(d, "ca_file") {
        if let Err(e) = super::sns::read_ca_file(std::path::Path::new(&path)) {
            d.error(
                a.value_span("ca_file"),
                format!("{}.ca_file: {e}", a.path()),
            );
        }
        cfg.ca_file = Some(path.into());
    }
    a.finish_expecting(d, &["topic_arns", "auto_confirm", "cert_hosts", "ca_file"]);
    cfg
}

/// An `auth = { type = ... }` table: the HTTP input's, and `[admin] auth`.
pub(crate) fn read_auth(a: &mut Table<'_, '_>, d: &mut Diagnostics) -> HttpAuth {
    // Errors reported before this table must not hide an empty secret here (every error
    // at once); only a secret that failed to read (and was reported) is not empty-checked.
    let errors_before = d.errors.len();
    let ty = a.string(d, "type");
    let auth = match ty.as_deref() {
        Some("none") => HttpAuth::None,
        Some("api_key") => {
            let header = a
                .opt_string(d, "header")
                .unwrap_or_else(|| "x-api-key".into())
                .to_ascii_lowercase();
            // A name no request can carry would lock every client out without a word.
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                d.error(
                    a.value_span("header"),
                    format!(
                        "{}.header: {header:?} is not a valid HTTP header name",
                        a.path()
                    ),
                );
            }
            HttpAuth::ApiKey {
                header,
                value: a.string(d, "value").unwrap_or_default(),
            }
        }
        Some("bearer") => HttpAuth::Bearer {
            token: a.string(d, "token").unwrap_or_default(),
        },
        Some("basic") => HttpAuth::Basic {
            username: a.string(d, "username").unwrap_or_default(),
            password: a.string(d, "password").unwrap_or_default(),
        },
        Some(o) => {
            d.error(
                a.value_span("type"),
                format!(
                    "{}.type: unknown auth type {o:?} (api_key, bearer, basic, none)",
                    a.path()
                ),
            );
            HttpAuth::None
        }
        None => HttpAuth::None,
    };
    let secret_empty = match &auth {
        HttpAuth::ApiKey { value, .. } => value.is_empty(),
        HttpAuth::Bearer { token } => token.is_empty(),
        HttpAuth::Basic { password, .. } => password.is_empty(),
        HttpAuth::None => false,
    };
    if secret_empty && d.errors.len() == errors_before {
        d.error(a.span(), format!("{}: the secret is empty (an unset ${{VAR:-}}?); refusing to accept any credentials", a.path()));
    }
    a.finish_expecting(
        d,
        &["type", "header", "value", "token", "username", "password"],
    );
    auth
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::dedupe::DedupeConfig;

    /// The warnings of a config whose http input `e` has `keys`.
    fn warnings(keys: &str) -> Vec<String> {
        let text = format!(
            "[inputs.e]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n{keys}\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n"
        );
        match crate::config::parse(&text, "t.toml", &|_| None) {
            Ok(l) => l.warnings,
            Err(e) => panic!("{keys}: {:?}", e.errors),
        }
    }

    #[test]
    fn sns_without_topic_arns_is_warned() {
        let topics = |w: &[String]| w.iter().filter(|w| w.contains("sns.topic_arns")).count();
        for keys in [
            "format = \"sns\"",
            "format = \"sns\"\nsns = { cert_hosts = [\"localhost\"] }",
            "format = \"sns\"\nsns = { topic_arns = [] }",
        ] {
            let w = warnings(keys);
            assert_eq!(topics(&w), 1, "{keys}: {w:?}");
            assert!(w.iter().any(|w| w.contains("any AWS account")), "{w:?}");
        }
        // With auto_confirm the confirmation warning comes as well.
        let w = warnings("format = \"sns\"\nsns = { auto_confirm = true }");
        assert_eq!(topics(&w), 1, "{w:?}");
        assert!(w.iter().any(|w| w.contains("auto_confirm")), "{w:?}");
        let w = warnings(
            "format = \"sns\"\nsns = { topic_arns = [\"arn:aws:sns:us-west-2:111122223333:ecs\"] }",
        );
        assert_eq!(topics(&w), 0, "{w:?}");
        assert!(warnings("format = \"json\"").is_empty());
    }

    fn read(keys: &str) -> Result<HttpInputConfig, Vec<String>> {
        let text = format!(
            "[inputs.e]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n{keys}\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n"
        );
        match crate::config::parse(&text, "t.toml", &|_| None) {
            Ok(l) => match l.config.inputs[0]
                .kind
                .as_any()
                .downcast_ref::<HttpInputConfig>()
            {
                Some(c) => Ok(c.clone()),
                None => Err(vec!["not an http input".into()]),
            },
            Err(e) => Err(e.errors),
        }
    }

    #[test]
    fn eventbridge_format_defaults_and_dedupe() {
        let c = read("format = \"eventbridge\"").unwrap();
        assert_eq!(c.format, BodyFormat::EventBridge);
        assert_eq!(c.max_body, HttpInputConfig::EVENTBRIDGE_MAX_BODY);
        assert!(c.accept_timeout < EVENTBRIDGE_TIMEOUT);
        assert_eq!(c.dedupe, None, "off unless set");
        let c = read("format = \"eventbridge\"\nmax_body = \"4MiB\"\ndedupe = {}").unwrap();
        assert_eq!(c.max_body, 4 << 20);
        assert_eq!(c.dedupe, Some(DedupeConfig::default()));
        let c =
            read("format = \"eventbridge\"\ndedupe = { window = \"30s\", max_keys = 7 }").unwrap();
        assert_eq!(
            c.dedupe,
            Some(DedupeConfig {
                window: Duration::from_secs(30),
                max_keys: 7
            })
        );
        assert_eq!(
            c.describe(),
            "127.0.0.1:0 (no auth; EventBridge events; repeated ids dropped for 30s, at most 7 remembered)"
        );
        assert_eq!(
            read("").unwrap().max_body,
            HttpInputConfig::DEFAULT_MAX_BODY
        );
    }

    #[test]
    fn eventbridge_settings_that_cannot_work_are_refused() {
        let refused = |keys: &str, says: &str| {
            let e = read(keys).expect_err(keys);
            assert!(e.iter().any(|e| e.contains(says)), "{keys}: {e:?}");
        };
        refused(
            "format = \"eventbridge\"\naccept_timeout = \"5s\"",
            "must be below 5s",
        );
        refused("dedupe = {}", "needs format = \"eventbridge\"");
        refused(
            "format = \"eventbridge\"\ndedupe = { window = \"0s\" }",
            "window: must be more than 0",
        );
        refused(
            "format = \"eventbridge\"\ndedupe = { max_keys = 0 }",
            "max_keys: must be between",
        );
        refused(
            "format = \"eventbridge\"\ndedupe = { windows = \"1m\" }",
            "windows",
        );
        refused(
            "format = \"xml\"",
            "expected auto, json, ndjson, eventbridge or sns",
        );
        // Other formats keep the warning only.
        assert!(read("accept_timeout = \"5s\"").is_ok());
    }

    #[test]
    fn sns_format_and_keys() {
        let c = read("format = \"sns\"").unwrap();
        assert_eq!(c.format, BodyFormat::Sns);
        assert_eq!(c.sns, Some(SnsConfig::default()));
        assert_eq!(c.max_body, HttpInputConfig::EVENTBRIDGE_MAX_BODY);
        let c = read(
            "format = \"sns\"\ndedupe = {}\nsns = { topic_arns = [\"arn:aws:sns:us-west-2:111122223333:ecs\"], auto_confirm = true, cert_hosts = [\"LocalHost\"] }",
        )
        .unwrap();
        let sns = c.sns.clone().unwrap();
        assert_eq!(sns.topic_arns, ["arn:aws:sns:us-west-2:111122223333:ecs"]);
        assert!(sns.auto_confirm);
        assert_eq!(sns.cert_hosts, Some(vec!["localhost".to_string()]));
        assert_eq!(c.dedupe, Some(DedupeConfig::default()));
        assert!(
            c.describe().contains("SNS deliveries, signatures verified"),
            "{}",
            c.describe()
        );
    }

    #[test]
    fn sns_settings_that_cannot_work_are_refused() {
        let refused = |keys: &str, says: &str| {
            let e = read(keys).expect_err(keys);
            assert!(e.iter().any(|e| e.contains(says)), "{keys}: {e:?}");
        };
        refused("sns = {}", "needs format = \"sns\"");
        refused(
            "format = \"sns\"\nsns = { topic_arns = [\"my-topic\"] }",
            "is not an SNS topic ARN",
        );
        refused(
            "format = \"sns\"\nsns = { cert_hosts = [] }",
            "cert_hosts: empty",
        );
        refused(
            "format = \"sns\"\nsns = { cert_hosts = [\"https://x/\"] }",
            "is not a host name",
        );
        refused(
            "format = \"sns\"\nsns = { ca_file = \"/nonexistent/ca.pem\" }",
            "cannot read /nonexistent/ca.pem",
        );
        refused(
            "format = \"sns\"\nsns = { auto_confirms = true }",
            "auto_confirms",
        );
    }
}
