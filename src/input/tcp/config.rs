//! `type = "tcp"`: `listen`, `tag`, `format`, `max_line`, `max_connections`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{TcpConfig, TcpFormat};
use crate::buffer::budget::MemoryBudget;
use crate::config::Listen;
use crate::config::reader::{Diagnostics, Table};
use crate::input::Ingest;
use crate::input::drain::InputShutdown;
use crate::input::registry::{InputConfig, InputType};

/// The `tcp` input type.
pub(crate) struct Tcp;

impl InputType for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["listen", "tag", "format", "max_line", "max_connections"]
    }

    fn read(&self, name: &str, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn InputConfig> {
        let mut cfg = TcpConfig {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 5170)),
            tag: name.to_owned(),
            format: TcpFormat::Json,
            max_line: 32 * 1024,
            max_connections: 64,
        };
        if let Some(l) = t.opt_string(d, "listen") {
            match l.parse::<SocketAddr>() {
                Ok(a) => cfg.listen = a,
                Err(_) => d.error(
                    t.value_span("listen"),
                    format!(
                        "{}.listen: {l:?} is not HOST:PORT (e.g. \"127.0.0.1:8877\")",
                        t.path()
                    ),
                ),
            }
        }
        if let Some(tag) = t.opt_string(d, "tag") {
            cfg.tag = tag;
        }
        match t.opt_string(d, "format").as_deref() {
            None | Some("json") => {}
            Some("none") => cfg.format = TcpFormat::None,
            Some(_) => d.error(
                t.value_span("format"),
                format!("{}.format: expected \"json\" or \"none\"", t.path()),
            ),
        }
        if let Some(n) = t.opt_size(d, "max_line") {
            if n == 0 {
                d.error(
                    t.value_span("max_line"),
                    format!("{}.max_line: must be more than 0", t.path()),
                );
            } else {
                cfg.max_line = usize::try_from(n).unwrap_or(usize::MAX);
            }
        }
        if let Some(n) = t.opt_count(d, "max_connections") {
            cfg.max_connections = n;
        }
        Box::new(cfg)
    }
}

#[async_trait::async_trait]
impl InputConfig for TcpConfig {
    fn type_name(&self) -> &'static str {
        "tcp"
    }

    fn describe(&self) -> String {
        let format = match self.format {
            TcpFormat::Json => "JSON lines",
            TcpFormat::None => "text lines",
        };
        format!("{} ({format}, tag {:?})", self.listen, self.tag)
    }

    fn listens(&self) -> Vec<Listen> {
        vec![Listen::Tcp(self.listen)]
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
