//! Admin endpoints: `/health` (liveness, with per-output delivery status in the body),
//! `/ready` (every listener bound and every output started, and not shutting down) and
//! `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::serve::{OnEvent, ServerLimits};

pub(crate) mod auth;
pub(crate) mod ecs_state;
mod fluentbit;
pub(crate) mod page;

/// Readiness: ready once every registered component has checked in, until shutdown starts.
#[derive(Default)]
pub(crate) struct Readiness {
    pending: AtomicUsize,
    registered: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// Declares `n` components that must report ready.
    pub(crate) fn expect(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::SeqCst);
        self.registered.store(true, Ordering::SeqCst);
    }
    pub(crate) fn component_ready(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1));
    }
    pub(crate) fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    pub(crate) fn is_ready(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
            && self.pending.load(Ordering::SeqCst) == 0
            && !self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Something that can describe its health as a JSON value for `/health`.
pub trait HealthReport: Send + Sync {
    /// The key this report appears under in `/health` (an output's name).
    fn name(&self) -> &str;
    /// The current state as JSON (e.g. `{"status": "ok"}` or the last delivery error); called
    /// on every `/health` request, so it must be cheap and must not block.
    fn report(&self) -> serde_json::Value;
}

pub(crate) struct AdminState {
    pub readiness: Arc<Readiness>,
    pub prometheus: PrometheusHandle,
    pub outputs: Vec<Arc<dyn HealthReport>>,
    /// `[admin] auth` (see `auth.rs`: health checks stay open).
    pub auth: Arc<crate::input::http::HttpAuth>,
    /// What the status page lists (`page.rs`).
    pub pipeline: page::PipelineView,
    /// The process's memory budget (`runtime.memory_limit`), read at each scrape.
    pub budget: crate::buffer::budget::MemoryBudget,
}

/// Installs the global metrics recorder (once per process) and returns its handle.
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("firelane_output_request_seconds".into()),
            &buckets,
        )?
        .install_recorder()?;
    crate::telemetry::describe_metrics();
    ecs_state::describe_metrics();
    metrics::gauge!("firelane_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Binds the admin listener and serves it until `shutdown`, with its own connection cap and
/// timeouts (`limits`): clients of the inputs never take its connections.
pub(crate) async fn spawn(
    listen: SocketAddr,
    limits: ServerLimits,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin: cannot listen on {listen}: {e}"))?;
    let upkeep = state.prometheus.clone();
    tokio::spawn(async move {
        // Histograms are summarised lazily; run upkeep so memory stays flat between scrapes.
        let mut t = tokio::time::interval(Duration::from_secs(5));
        loop {
            t.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        // Issue #12: cluster state from ECS events (ecs_state.rs).
        .route("/api/ecs/state", get(ecs_state::serve))
        .route("/", get(page::serve))
        // What FireLens health checks and dashboards made for Fluent Bit call.
        .route("/api/v1/uptime", get(fluentbit::uptime))
        .route("/api/v1/health", get(fluentbit::health))
        .route("/api/v1/metrics/prometheus", get(fluentbit::prometheus))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require,
        ))
        .with_state(state);
    fluentbit::start_clock();
    tracing::info!(%listen, "admin listening (/ /health /ready /metrics /api/ecs/state /api/v1/...)");
    // Not counted as input errors (the admin port is no input); the cap logs when it bites.
    let on_event: OnEvent = Arc::new(|_| {});
    Ok(tokio::spawn(async move {
        crate::serve::serve(listener, app, limits, on_event, "admin", shutdown).await;
    }))
}

/// Disk buffers whose filesystem is full, for `/health` and `/ready`: output name →
/// `{dir, since (RFC 3339), error}`.
fn disk_full_report() -> serde_json::Map<String, serde_json::Value> {
    crate::buffer::disk_full()
        .into_iter()
        .map(|d| {
            let since = chrono::DateTime::<chrono::Utc>::from(d.since).to_rfc3339();
            let v = serde_json::json!({
                "dir": d.dir.display().to_string(),
                "since": since,
                "error": d.error,
            });
            (d.output, v)
        })
        .collect()
}

/// Liveness stays 200 while a disk buffer is full: restarting would not free the disk, and
/// on ECS a replaced task loses its ephemeral storage, buffer included. The body says
/// `"status": "disk_full"` and which outputs; `/ready` answers 503 meanwhile.
async fn health(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let outputs: serde_json::Map<String, serde_json::Value> = s
        .outputs
        .iter()
        .map(|o| (o.name().to_string(), o.report()))
        .collect();
    let disk_full = disk_full_report();
    let status = if disk_full.is_empty() {
        "ok"
    } else {
        "disk_full"
    };
    let ready = s.readiness.is_ready() && disk_full.is_empty();
    let body = serde_json::json!({
        "status": status,
        "ready": ready,
        "outputs": outputs,
        "disk_full": disk_full,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// 503 while starting, shutting down, or while a disk buffer is full (records sent now
/// would be refused).
async fn ready(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let full: Vec<String> = crate::buffer::disk_full()
        .into_iter()
        .map(|d| d.output)
        .collect();
    if !s.readiness.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
    } else if !full.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: disk full (output {})\n", full.join(", ")),
        )
    } else {
        (StatusCode::OK, "ready\n".to_string())
    }
}

async fn metrics_text(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    // Read at the scrape rather than on every reservation (the hot path takes several per
    // request).
    metrics::gauge!("firelane_memory_budget_used_bytes").set(s.budget.used() as f64);
    metrics::gauge!("firelane_memory_budget_limit_bytes").set(s.budget.limit() as f64);
    metrics::gauge!("firelane_memory_budget_unattributed_bytes")
        .set(s.budget.unattributed() as f64);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
}

/// `firelane healthcheck`: exit status for ECS container health checks in images without curl.
pub fn healthcheck(url: &str, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported, got {url:?}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {hostport}"))?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp)?;
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        anyhow::bail!("{url} answered {:?}", head.lines().next().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_latch() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        r.expect(2);
        r.component_ready();
        assert!(!r.is_ready());
        r.component_ready();
        assert!(r.is_ready());
        r.shutting_down();
        assert!(!r.is_ready());
    }
}
