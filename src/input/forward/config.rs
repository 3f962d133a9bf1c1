//! `type = "forward"`: `listen`, `shared_key`, `max_frame`, `max_decompressed`,
//! `socket_mode`, `read_timeout`, `idle_timeout`, `max_connections`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{ForwardConfig, ListenAddr};
use crate::buffer::budget::MemoryBudget;
use crate::config::Listen;
use crate::config::reader::{Diagnostics, Table};
use crate::input::Ingest;
use crate::input::drain::InputShutdown;
use crate::input::registry::{InputConfig, InputType};

/// The `forward` input type.
pub(crate) struct Forward;

impl InputType for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "listen",
            "shared_key",
            "max_frame",
            "max_decompressed",
            "socket_mode",
            "read_timeout",
            "idle_timeout",
            "max_connections",
        ]
    }

    fn read(&self, name: &str, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn InputConfig> {
        let defaults = ForwardConfig::default();
        let mut cfg = ForwardConfig {
            name: name.to_owned(),
            ..defaults.clone()
        };
        match t.opt_string_list(d, "listen") {
            Some(l) if l.is_empty() => d.error(
                t.value_span("listen"),
                format!("{}.listen: needs at least one address", t.path()),
            ),
            Some(l) => {
                cfg.listen = Vec::new();
                for a in l {
                    match check_listen_addr(a.get_ref())
                        .and_then(|()| ListenAddr::parse(a.get_ref()))
                    {
                        Ok(addr) => cfg.listen.push(addr),
                        Err(e) => d.error(a.span(), format!("{}.listen: {e}", t.path())),
                    }
                }
            }
            None => {}
        }
        cfg.shared_key = t.opt_string(d, "shared_key");
        // Like the HTTP input's secrets: an empty key (an unset `${VAR:-}`) would
        // authenticate every client that also uses the empty key.
        if cfg.shared_key.as_deref() == Some("") {
            d.error(
                t.value_span("shared_key"),
                format!(
                    "{}.shared_key: the key is empty (an unset ${{VAR:-}}?); refusing to accept any client with it",
                    t.path()
                ),
            );
        }
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = t.opt_size(d, "max_frame") {
            cfg.max_frame_bytes = size(n);
        }
        if let Some(n) = t.opt_size(d, "max_decompressed") {
            cfg.max_decompressed_bytes = size(n);
        }
        if let Some(m) = t.opt_string(d, "socket_mode") {
            match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                Ok(m) => cfg.socket_mode = m,
                Err(_) => d.error(
                    t.value_span("socket_mode"),
                    format!("{}.socket_mode: expected octal like \"0666\"", t.path()),
                ),
            }
        }
        // `0s` turns a timeout off.
        if let Some(v) = t.opt_duration(d, "read_timeout") {
            cfg.read_timeout = (!v.is_zero()).then_some(v);
        }
        if let Some(v) = t.opt_duration(d, "idle_timeout") {
            cfg.idle_timeout = (!v.is_zero()).then_some(v);
        }
        if let Some(n) = t.opt_u64(d, "max_connections") {
            if n == 0 {
                d.error(
                    t.value_span("max_connections"),
                    format!("{}.max_connections: must be at least 1", t.path()),
                );
            } else {
                cfg.max_connections = size(n);
            }
        }
        Box::new(cfg)
    }
}

/// A forward `listen` address as the config accepts it: stricter than
/// [`ListenAddr::parse`] (a numeric TCP host, so clashes can be found before binding).
fn check_listen_addr(s: &str) -> Result<(), String> {
    if let Some(hp) = s.strip_prefix("tcp://") {
        hp.parse::<SocketAddr>()
            .map(|_| ())
            .map_err(|_| format!("{s:?}: expected tcp://HOST:PORT with a numeric host"))
    } else if let Some(p) = s.strip_prefix("unix://") {
        if !p.starts_with('/') {
            return Err(format!(
                "{s:?}: unix socket path must be absolute (unix:///var/run/fluent.sock)"
            ));
        }
        if p.len() > 107 {
            return Err(format!("{s:?}: unix socket paths are limited to 107 bytes"));
        }
        Ok(())
    } else {
        Err(format!("{s:?}: expected tcp://HOST:PORT or unix:///PATH"))
    }
}

#[async_trait::async_trait]
impl InputConfig for ForwardConfig {
    fn type_name(&self) -> &'static str {
        "forward"
    }

    fn describe(&self) -> String {
        let addrs: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
        addrs.join(", ")
    }

    fn listens(&self) -> Vec<Listen> {
        self.listen
            .iter()
            .filter_map(|l| match l {
                ListenAddr::Tcp(hp) => hp.parse().ok().map(Listen::Tcp),
                ListenAddr::Unix(p) => Some(Listen::Unix(p.clone())),
            })
            .collect()
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
