//! TCP input: newline-delimited JSON objects (or text lines), one record each, as Fluent
//! Bit's `tcp` input takes them. FireLens' generated config has one on 127.0.0.1:8877,
//! tagged `firelens-healthcheck` and routed to `null`, for the legacy container health
//! check `echo '{"health": "check"}' | nc 127.0.0.1 8877` (spec §3.1, §3.5): like Fluent
//! Bit, the input accepts the connection, reads, and answers nothing.
//!
//! A line that is not a JSON object (or array of objects) is counted
//! (`firelane_input_errors_total{kind="bad_json"}`) and skipped; a line longer than
//! `max_line` (default 32 KiB, Fluent Bit's `Chunk_Size`) is counted (`kind="too_large"`)
//! and the connection closed. Each line's bytes are reserved from the process memory
//! budget until the buffers took its records (waiting for it is the back-pressure).
//! Nothing is acknowledged on this protocol, so a record is taken when the router's
//! buffers take it.

pub(crate) mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::buffer::budget::MemoryBudget;
use crate::event::{Fields, Record, now_ns};
use crate::input::Ingest;
use crate::input::drain::InputShutdown;

/// How a line becomes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpFormat {
    /// A JSON object (or an array of objects) per line.
    Json,
    /// Any text: `{"log": "<line>"}`.
    None,
}

/// One `[inputs.NAME]` of type `tcp`.
#[derive(Debug, Clone)]
pub(crate) struct TcpConfig {
    pub(crate) name: String,
    pub(crate) listen: SocketAddr,
    pub(crate) tag: String,
    pub(crate) format: TcpFormat,
    /// Longest line in bytes; a longer one closes the connection.
    pub(crate) max_line: usize,
    /// Open connections at most; more are closed at accept.
    pub(crate) max_connections: usize,
}

async fn spawn(
    cfg: TcpConfig,
    ingest: Arc<dyn Ingest>,
    budget: MemoryBudget,
    shutdown: InputShutdown,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("input {}: cannot listen on {}: {e}", cfg.name, cfg.listen))?;
    tracing::info!(input = %cfg.name, listen = %cfg.listen, "tcp input listening");
    let cfg = Arc::new(cfg);
    let open = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shutdown.stopped() => break,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(input = %cfg.name, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                error(&cfg.name, "too_many_connections");
                drop(stream);
                continue;
            };
            let (cfg, ingest, shutdown) = (cfg.clone(), ingest.clone(), shutdown.clone());
            let budget = budget.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _client = shutdown.client();
                tokio::select! {
                    () = connection(&cfg, stream, &*ingest, &budget) => {}
                    () = shutdown.stopped() => {}
                }
                tracing::debug!(input = %cfg.name, %peer, "tcp connection closed");
            });
        }
    }))
}

fn error(input: &str, kind: &'static str) {
    metrics::counter!("firelane_input_errors_total", "input" => input.to_string(), "kind" => kind)
        .increment(1);
}

async fn connection(
    cfg: &TcpConfig,
    stream: TcpStream,
    ingest: &dyn Ingest,
    budget: &MemoryBudget,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read at most max_line + 1 bytes of one line, so a peer without newlines cannot
        // make us hold more than that.
        let mut limited = (&mut reader).take(cfg.max_line as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if line.len() > cfg.max_line && line.last() != Some(&b'\n') {
            error(&cfg.name, "too_large");
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let records = match to_records(cfg, text) {
            Some(r) => r,
            None => {
                error(&cfg.name, "bad_json");
                continue;
            }
        };
        let n = records.len() as u64;
        let bytes = line.len() as u64;
        // Records decoded from the line cost about twice its bytes until buffered.
        let Ok(_held) = budget.acquire(line.len() * 2).await else {
            error(&cfg.name, "too_large");
            return;
        };
        if let Err(e) = ingest.ingest(records).await {
            tracing::warn!(input = %cfg.name, "records refused: {e}");
            error(&cfg.name, "refused");
            return;
        }
        metrics::counter!("firelane_input_records_total", "input" => cfg.name.clone()).increment(n);
        metrics::counter!("firelane_input_bytes_total", "input" => cfg.name.clone())
            .increment(bytes);
    }
}

use tokio::io::AsyncReadExt as _;

fn to_records(cfg: &TcpConfig, text: &str) -> Option<Vec<Record>> {
    let now = now_ns();
    match cfg.format {
        TcpFormat::None => {
            let mut f = Fields::new();
            f.insert("log".into(), serde_json::Value::String(text.to_string()));
            Some(vec![Record::new(cfg.tag.as_str(), now, f)])
        }
        TcpFormat::Json => match serde_json::from_str::<serde_json::Value>(text).ok()? {
            serde_json::Value::Object(m) => Some(vec![Record::new(cfg.tag.as_str(), now, m)]),
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::Object(m) => Some(Record::new(cfg.tag.as_str(), now, m)),
                    _ => None,
                })
                .collect(),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(format: TcpFormat) -> TcpConfig {
        TcpConfig {
            name: "hc".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tag: "firelens-healthcheck".into(),
            format,
            max_line: 1024,
            max_connections: 4,
        }
    }

    #[test]
    fn json_lines_objects_and_arrays() {
        let c = cfg(TcpFormat::Json);
        let r = to_records(&c, r#"{"health": "check"}"#).expect("object");
        assert_eq!(r.len(), 1);
        assert_eq!(&*r[0].tag, "firelens-healthcheck");
        assert_eq!(r[0].get("health").and_then(|v| v.as_str()), Some("check"));
        assert_eq!(
            to_records(&c, r#"[{"a":1},{"b":2}]"#).map(|r| r.len()),
            Some(2)
        );
        assert!(to_records(&c, "not json").is_none());
        assert!(to_records(&c, "[1]").is_none());
        let r = to_records(&cfg(TcpFormat::None), "plain text").expect("text");
        assert_eq!(r[0].get("log").and_then(|v| v.as_str()), Some("plain text"));
    }
}
