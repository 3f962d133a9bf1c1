//! `type = "http"`: `listen`, `auth`, `max_body`, `format`, `tag`, `accept_timeout`,
//! `body_timeout`, `max_connections`, `header_timeout`, `idle_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{BodyFormat, HttpAuth, HttpInputConfig};
use crate::buffer::budget::MemoryBudget;
use crate::config::reader::{Diagnostics, Table};
use crate::config::{Listen, read_server_limits};
use crate::input::Ingest;
use crate::input::drain::InputShutdown;
use crate::input::registry::{InputConfig, InputType};

/// The `http` input type.
pub struct Http;

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
        if let Some(m) = t.opt_size(d, "max_body") {
            cfg.max_body = m as usize;
        }
        if let Some(f) = t.opt_string(d, "format") {
            cfg.format = match f.as_str() {
                "auto" => BodyFormat::Auto,
                "json" => BodyFormat::Json,
                "ndjson" => BodyFormat::Ndjson,
                _ => {
                    d.error(
                        t.value_span("format"),
                        format!("{}.format: expected auto, json or ndjson", t.path()),
                    );
                    BodyFormat::Auto
                }
            };
        }
        cfg.tag = t.opt_string(d, "tag");
        if let Some(to) = t.opt_duration(d, "accept_timeout") {
            if to >= Duration::from_secs(5) {
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
        format!("{} ({auth})", self.listen)
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

fn read_auth(a: &mut Table<'_, '_>, d: &mut Diagnostics) -> HttpAuth {
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
