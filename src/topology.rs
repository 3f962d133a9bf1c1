//! Builds the running router from a [`Config`] and takes it down in order.
//!
//! Start-up: buffers (replaying what a previous run left on disk), outputs, router, inputs,
//! then readiness. Shutdown (SIGTERM/SIGINT), within `runtime.shutdown_grace`:
//! 1. not ready; inputs keep reading open connections and accepting new ones for
//!    `runtime.drain_inputs` (default half the grace), ending early once every client has
//!    closed; then they close their connections after the last complete request;
//!    processors hand on every record they hold (src/process);
//! 2. buffers are closed and every output flushes its open batches at once (no waiting for
//!    `max_age`), delivering with retries; dead-letter targets close after their sources;
//! 3. at the deadline outputs give up: disk buffers keep the rest for the next start,
//!    memory buffers report it as lost in one log line; then exit 0.
//!
//! A second signal exits at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, HealthReport, Readiness};
use crate::buffer::budget::MemoryBudget;
use crate::buffer::{self, BufferReader, BufferSettings, BufferWriter};
use crate::config::{Config, OutputSpec};
use crate::output;
use crate::output::core::{OutputShutdown, OutputSummary};
use crate::pipeline::{OutputPort, Pipeline};
use crate::process::{Chain, ProcessedInput};
use crate::route::{Route, Router};

/// Builds the router for `config` (index-resolved names).
pub(crate) fn build_router(config: &Config) -> Router {
    let input_idx = |n: &str| config.inputs.iter().position(|i| i.name == n);
    let output_idx = |n: &str| config.outputs.iter().position(|o| o.name == n);
    let routes = config
        .routes
        .iter()
        .map(|r| Route {
            name: r.name.clone(),
            from: if r.from.is_empty() {
                None
            } else {
                Some(r.from.iter().filter_map(|f| input_idx(f)).collect())
            },
            tags: r.tags.clone(),
            pattern: r.pattern.clone(),
            to: r.to.iter().filter_map(|t| output_idx(t)).collect(),
            is_final: r.is_final,
        })
        .collect();
    Router::new(routes)
}

struct RunningOutput {
    name: String,
    writer: BufferWriter,
    handle: JoinHandle<OutputSummary>,
}

/// Runs until SIGTERM/SIGINT, then shuts down within the grace period.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let prometheus = admin::install_metrics()?;
    let budget = MemoryBudget::new(config.runtime.memory_limit as usize);
    let readiness = Arc::new(Readiness::default());
    readiness.expect(config.inputs.len() + config.outputs.len());

    let flush = CancellationToken::new();
    let deadline = CancellationToken::new();

    // Buffers first, so a restart replays what is left before new records arrive.
    let mut writers = Vec::new();
    let mut readers: Vec<Option<BufferReader>> = Vec::new();
    for o in &config.outputs {
        let settings = buffer_settings(&config, o);
        let (w, r, report) = buffer::open(&o.name, &settings, budget.clone())
            .with_context(|| format!("output {}: cannot open its buffer", o.name))?;
        if report.replayed_records > 0 || report.quarantined_segments > 0 {
            tracing::info!(
                output = %o.name,
                replayed = report.replayed_records,
                quarantined_segments = report.quarantined_segments,
                "disk buffer reopened: undelivered records will be sent again"
            );
        }
        writers.push(w);
        readers.push(Some(r));
    }

    let mut running = Vec::new();
    let mut health: Vec<Arc<dyn HealthReport>> = Vec::new();
    for (i, o) in config.outputs.iter().enumerate() {
        let reader = readers[i].take().context("buffer reader used twice")?;
        let dead_letter = o
            .dead_letter
            .as_ref()
            .and_then(|n| config.outputs.iter().position(|x| &x.name == n))
            .map(|j| writers[j].clone());
        let mut ctx = output::from_config::context_for(
            o,
            dead_letter,
            OutputShutdown {
                flush: flush.clone(),
                deadline: deadline.clone(),
            },
        );
        // Open batches seal early when this buffer or the budget fills (output::core).
        ctx.pressure = output::core::Pressure::new(
            writers[i].clone(),
            &buffer_settings(&config, o),
            budget.clone(),
        );
        let (handle, h) = output::from_config::start(o, ctx, reader)
            .await
            .with_context(|| format!("output {}: cannot start", o.name))?;
        health.push(h);
        running.push(RunningOutput {
            name: o.name.clone(),
            writer: writers[i].clone(),
            handle,
        });
        readiness.component_ready();
    }

    let ports = config
        .outputs
        .iter()
        .zip(&writers)
        .map(|(o, w)| OutputPort::new(&o.name, w.clone()))
        .collect();
    let pipeline = Pipeline::new(build_router(&config), ports);

    let inputs_stop = crate::input::drain::InputShutdown::new();
    let mut input_tasks: Vec<JoinHandle<()>> = Vec::new();
    // Inputs with processors: the chain sits between the input and the router.
    let processors_stop = CancellationToken::new();
    let mut processed: Vec<Arc<ProcessedInput>> = Vec::new();
    let mut processor_timers: Vec<JoinHandle<()>> = Vec::new();
    for (i, spec) in config.inputs.iter().enumerate() {
        let mut ingest = pipeline.port(i, &spec.name);
        let specs = config.processors_of(spec);
        if !specs.is_empty() {
            let chain =
                Chain::build(&specs, &spec.name, false, &processors_stop).reported_for(&spec.name);
            let p = ProcessedInput::new(&spec.name, chain, ingest);
            processor_timers.extend(p.spawn_timer(processors_stop.clone()));
            processed.push(p.clone());
            ingest = p;
        }
        let tasks = spec
            .kind
            .spawn(ingest, budget.clone(), inputs_stop.clone())
            .await
            .with_context(|| format!("input {}", spec.name))?;
        input_tasks.extend(tasks);
        readiness.component_ready();
    }

    // Started once everything is built, so its first reading is the idle overhead.
    let governor = crate::buffer::resident::spawn(budget.clone());

    let admin_stop = CancellationToken::new();
    let state = Arc::new(AdminState {
        readiness: readiness.clone(),
        prometheus,
        outputs: health,
        auth: Arc::new(config.admin.auth.clone()),
        pipeline: admin::page::PipelineView::of(&config, |o| buffer_settings(&config, o).max_size),
        budget: budget.clone(),
    });
    admin::ecs_state::model().set_limits(config.admin.ecs.clone());
    let admin_task = admin::spawn(
        config.admin.listen,
        config.admin.limits.clone(),
        state,
        admin_stop.clone(),
    )
    .await?;
    tracing::info!(
        inputs = config.inputs.len(),
        routes = config.routes.len(),
        outputs = config.outputs.len(),
        "firelane is ready"
    );

    let signal = wait_for_signal().await;
    let started = tokio::time::Instant::now();
    let grace = config.runtime.shutdown_grace;
    tracing::info!(
        signal,
        grace_secs = grace.as_secs_f64(),
        "shutting down: draining inputs, flushing outputs"
    );
    tokio::spawn(async {
        let second = wait_for_signal().await;
        eprintln!("firelane: second {second}, exiting now");
        std::process::exit(130);
    });
    readiness.shutting_down();

    // 1. Inputs drain: open connections are still read and new ones accepted (apps flush
    //    their last lines while the task stops) for `drain_inputs`, ending early once every
    //    client has closed. Then inputs stop, and finish the requests they were handling.
    let window = config.runtime.drain_inputs();
    inputs_stop.begin_drain();
    let early = tokio::time::timeout(window, inputs_stop.all_clients_closed()).await;
    tracing::info!(
        window_secs = window.as_secs_f64(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        open_clients = inputs_stop.open_clients(),
        "input drain {}",
        if early.is_ok() {
            "ended: every client closed"
        } else {
            "window over: closing the remaining connections"
        }
    );
    inputs_stop.stop();
    // Processors hand on what they hold (a stack trace cut by the stop, an unfinished
    // Docker line) before the outputs flush; batches of requests the inputs still finish
    // are flushed as soon as they are processed.
    for p in &processed {
        p.drain().await;
    }
    let input_budget = (grace.saturating_sub(started.elapsed()) / 4).min(Duration::from_secs(5));
    let _ = tokio::time::timeout(input_budget, futures::future::join_all(input_tasks)).await;
    processors_stop.cancel();
    for p in &processed {
        p.drain().await;
    }
    let _ = futures::future::join_all(processor_timers).await;

    // 2. Outputs: flush now; close buffers so readers end once drained; dead-letter
    //    targets last, after every output that may still dead-letter into them.
    flush.cancel();
    let hard_stop = started + grace.saturating_sub(Duration::from_millis(500));
    let summaries = drain_outputs(&config.outputs, running, hard_stop, &deadline).await;

    let mut total = OutputSummary::default();
    for (name, s) in &summaries {
        total += *s;
        tracing::info!(output = %name, sent = s.sent, dropped = s.dropped, dead_lettered = s.dead_lettered, failed = s.failed, undelivered = s.undelivered, unknown = s.unknown, lost = s.lost, kept = s.kept, "output stopped");
    }
    // Three different fates, never added up: lost with a memory buffer, kept on disk for
    // the next start, and cut off mid-request (may have arrived; disk replays them).
    if total.lost > 0 || total.kept > 0 || total.unknown > 0 {
        tracing::warn!(
            lost = total.lost,
            kept = total.kept,
            unknown = total.unknown,
            "shutdown finished before every record was delivered: {} lost (memory buffers), {} kept in disk buffers for the next start, {} in requests cut off by the deadline (may have arrived)",
            total.lost,
            total.kept,
            total.unknown
        );
    }
    admin_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_millis(200), admin_task).await;
    if let Some(g) = governor {
        g.abort();
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "firelane stopped"
    );
    Ok(())
}

async fn drain_outputs(
    outputs: &[OutputSpec],
    running: Vec<RunningOutput>,
    hard_stop: tokio::time::Instant,
    deadline: &CancellationToken,
) -> Vec<(String, OutputSummary)> {
    let n = running.len();
    let sources_of = |j: usize| -> Vec<usize> {
        (0..n)
            .filter(|&i| outputs[i].dead_letter.as_deref() == Some(outputs[j].name.as_str()))
            .collect()
    };
    let mut slots: Vec<Option<RunningOutput>> = running.into_iter().map(Some).collect();
    let mut done = vec![false; n];
    let mut summaries = Vec::new();
    while done.iter().any(|d| !d) {
        let wave: Vec<usize> = (0..n)
            .filter(|&j| !done[j] && sources_of(j).iter().all(|&s| done[s]))
            .collect();
        // A cycle is rejected by config validation; close everything if one slipped through.
        let wave = if wave.is_empty() {
            (0..n).filter(|&j| !done[j]).collect()
        } else {
            wave
        };
        let mut handles = Vec::new();
        for &j in &wave {
            if let Some(r) = slots[j].take() {
                r.writer.close();
                handles.push((j, r.name, r.handle));
            }
        }
        for (j, name, mut handle) in handles {
            let summary = tokio::select! {
                res = &mut handle => res.ok(),
                _ = tokio::time::sleep_until(hard_stop) => {
                    deadline.cancel();
                    tokio::time::timeout(Duration::from_millis(400), handle).await.ok().and_then(|r| r.ok())
                }
            };
            done[j] = true;
            summaries.push((name, summary.unwrap_or_default()));
        }
    }
    summaries
}

/// Waits for a signal that stops the router and returns its name: SIGTERM (ECS, `docker
/// stop`), SIGINT (a terminal's ctrl-c) or SIGQUIT (a terminal's ctrl-\\; fluentd and Fluent
/// Bit stop on it too). Each starts the same graceful shutdown. SIGQUIT's default action
/// would kill the process at once and lose the memory buffers, so it is taken over here.
/// Stray signals (SIGHUP, SIGUSR1/2, SIGALRM) are logged and ignored by `main`.
#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    ) else {
        // Without signal handlers we can only wait for ctrl-c.
        tracing::warn!("cannot install signal handlers; only SIGINT stops firelane gracefully");
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = quit.recv() => "SIGQUIT",
    }
}

fn buffer_settings(config: &Config, o: &OutputSpec) -> BufferSettings {
    output::from_config::buffer_settings(
        &o.buffer,
        config.runtime.data_dir.join("buffers").join(&o.name),
    )
}
