//! `type = "http"`: `url`, `method`, `headers`, `compression`, `timeout`.

use std::time::Duration;

use crate::config::reader::{Diagnostics, Table};
use crate::config::{Compression, OutputSpec};
use crate::event::Record;
use crate::output::core::OutputContext;
use crate::output::from_config::{batch_settings, encoding_for};
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

use super::{HttpConfig, HttpConfigError, HttpSink};

/// The `http` output type.
pub(crate) struct Http;

/// An `http` output's keys: the sink's settings as read (`Debug` hides header values and
/// all of the URL but its origin, see [`HttpConfig`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HttpOutput(HttpConfig);

impl OutputType for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["url", "method", "headers", "compression", "timeout"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let path = t.path().to_string();
        let url = t.string(d, "url").unwrap_or_default();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            d.error(
                t.value_span("url"),
                format!("{path}.url: expected an http:// or https:// URL"),
            );
        }
        let method = t
            .opt_string(d, "method")
            .unwrap_or_else(|| "POST".into())
            .to_ascii_uppercase();
        if !["POST", "PUT", "PATCH"].contains(&method.as_str()) {
            d.error(
                t.value_span("method"),
                format!("{path}.method: expected POST, PUT or PATCH"),
            );
        }
        let headers = t.opt_string_map(d, "headers").unwrap_or_default();
        let compression = Compression::read(t, d, &[Compression::None, Compression::Gzip]);
        let timeout = t
            .opt_duration(d, "timeout")
            .unwrap_or(Duration::from_secs(30));
        Box::new(HttpOutput(HttpConfig {
            url,
            method,
            headers,
            compression,
            timeout,
        }))
    }
}

impl HttpOutput {
    /// The sink, built as `start` builds it (no connection is made).
    fn sink(&self, o: &OutputSpec, batch: &BatchSettings) -> Result<HttpSink, OutputConfigError> {
        HttpSink::new(&self.0, encoding_for(o), batch).map_err(config_error)
    }
}

/// The sink's error, at the key it is about.
fn config_error(e: HttpConfigError) -> OutputConfigError {
    use HttpConfigError as E;
    let key = match &e {
        E::Url { .. } => Some("url"),
        E::Method(_) => Some("method"),
        E::Header { .. } => Some("headers"),
        E::Timeout => Some("timeout"),
        E::Compression(_) => Some("compression"),
        E::Client(_) => None,
    };
    OutputConfigError {
        key,
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl OutputConfig for HttpOutput {
    fn type_name(&self) -> &'static str {
        "http"
    }

    fn describe(&self) -> String {
        self.0.url.clone()
    }

    fn default_batch(&self) -> BatchSettings {
        BatchSettings {
            max_records: 1000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        }
    }

    fn compressed(&self) -> bool {
        self.0.compression != Compression::None
    }

    fn validate(&self, o: &OutputSpec) -> Result<(), OutputConfigError> {
        self.sink(o, &batch_settings(o)).map(drop)
    }

    fn destination(&self, _o: &OutputSpec, _record: &Record) -> String {
        format!("{} {}", self.0.method, redact_url(&self.0.url))
    }

    async fn start(
        &self,
        o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = self.sink(o, &ctx.batch)?;
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The URL with its password and the values of query parameters that look like secrets
/// (`token`, `key`, `sig`, `code`…) replaced by `***`: `${ENV}` in the config may have put
/// a secret there, and `route` output gets pasted into tickets.
pub(crate) fn redact_url(text: &str) -> String {
    const SECRET_WORDS: &[&str] = &[
        "token",
        "key",
        "secret",
        "pass",
        "sig",
        "auth",
        "code",
        "credential",
        "session",
    ];
    let Ok(mut url) = reqwest::Url::parse(text) else {
        return "(a URL that does not parse)".to_string();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let v = if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(output: &str) -> Vec<String> {
        let text = format!(
            "[inputs.f]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n{output}\n"
        );
        match crate::config::parse(&text, "t.toml", &|_| None) {
            Ok(_) => vec![],
            Err(e) => e.errors,
        }
    }

    // One Compression for every component: the http output names what it can send, in
    // the config reader and in the sink's own constructor alike.
    #[test]
    fn zstd_is_refused_by_the_reader_and_the_sink() {
        assert_eq!(
            errors("compression = \"zstd\""),
            vec![
                "t.toml:8:15: outputs.o.compression: expected none or gzip, found \"zstd\""
                    .to_string()
            ]
        );
        assert!(errors("compression = \"gzip\"").is_empty());
        let config = HttpConfig {
            url: "http://127.0.0.1:9/".into(),
            compression: Compression::Zstd,
            ..HttpConfig::default()
        };
        let batch = BatchSettings {
            max_records: 10,
            max_bytes: 1 << 10,
            max_age: Duration::from_secs(1),
        };
        match HttpSink::new(&config, Default::default(), &batch) {
            Err(e) => assert_eq!(
                config_error(e),
                OutputConfigError::new(
                    "compression",
                    "compression zstd: http outputs support compression none or gzip"
                )
            ),
            Ok(_) => panic!("an http sink accepted zstd"),
        }
    }
}
