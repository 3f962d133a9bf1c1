//! Configuration: TOML text → validated [`Config`], or every problem at once.
//!
//! Two stages, as in ripgrep's flags: [`reader`] walks the spanned TOML tree with typed
//! getters (unknown keys and wrong types become located errors), then this module checks
//! what spans tables (dangling route targets, dead-letter cycles, outputs nobody feeds).
//! This module reads the generic keys (`admin`, `runtime`, routes, and every output's
//! `batch`, `buffer`, `retry`, `dead_letter`, `tag_key`, `time_key`, `concurrency`); each
//! input and output type reads its own keys through the same [`reader::Table`], found in
//! [`crate::input::registry`] / [`crate::output::registry`], and runs its sink's
//! construction checks ([`crate::output::registry::OutputConfig::validate`]) so that
//! `check` refuses what `run` would.

mod compression;
pub mod fluentbit;
pub(crate) mod reader;
pub(crate) mod redact;
pub(crate) mod units;

pub use compression::Compression;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::input::registry::{self as input_registry, InputConfig};
use crate::output::registry::{self, OutputConfig};
use crate::process::ProcessorSpec;
use crate::process::registry as processor_registry;
use crate::route::pattern::Pattern;
use crate::route::tag::TagGlob;
use crate::serve::ServerLimits;
use reader::{Diagnostics, Table};

/// The configuration used when no file is given or found: `config/default.toml` (README,
/// "Quick start").
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// Where `run` looks when `-c` and `$FIRELANE_CONFIG` are absent.
pub const SYSTEM_PATH: &str = "/etc/firelane/firelane.toml";

#[derive(Debug)]
/// A validated configuration: what `firelane run` starts and `firelane check` shows.
/// Built by [`load_file`] / [`parse`]; names are unique and every route points at outputs that
/// exist.
pub struct Config {
    pub(crate) admin: AdminSettings,
    /// `[runtime]`: shutdown timing, data directory, memory budget, logging.
    pub runtime: RuntimeSettings,
    pub(crate) inputs: Vec<InputSpec>,
    /// `[processors.NAME]`, in file order (inputs refer to them by name).
    pub(crate) processors: Vec<ProcessorSpec>,
    pub(crate) routes: Vec<RouteSpec>,
    pub(crate) outputs: Vec<OutputSpec>,
}

impl Config {
    /// The processors input `input` applies, in order (names that resolve; validation has
    /// refused the others).
    pub(crate) fn processors_of(&self, input: &InputSpec) -> Vec<&ProcessorSpec> {
        input
            .processors
            .iter()
            .filter_map(|n| self.processors.iter().find(|p| &p.name == n))
            .collect()
    }
}

#[derive(Debug, Clone)]
/// `[admin]`: the health and metrics server.
pub struct AdminSettings {
    pub(crate) listen: SocketAddr,
    /// `auth`: credentials the admin port asks for (the HTTP input's shapes); `/health` and
    /// `/ready` stay open for container health checks.
    pub(crate) auth: crate::input::http::HttpAuth,
    /// `[admin.ecs]`: caps of the cluster state built from ECS events.
    pub(crate) ecs: crate::admin::ecs_state::EcsLimits,
    /// Connection cap and timeouts of the admin port, apart from the inputs' so a flood on
    /// an input never takes `/health` down.
    pub limits: ServerLimits,
}

impl AdminSettings {
    /// Health checks, scrapes and a few people: far fewer than an input.
    pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 64;
}

#[derive(Debug, Clone)]
/// `[runtime]`: process-wide settings.
pub struct RuntimeSettings {
    /// Budget from SIGTERM to exit. ECS sends SIGKILL `stopTimeout` (default 30 s) after
    /// SIGTERM, so the default leaves 5 s of margin.
    pub shutdown_grace: Duration,
    /// How long after SIGTERM inputs keep reading open connections and accepting new ones
    /// (ending early once every client has closed), before outputs flush in what remains of
    /// `shutdown_grace`. `None` = half of `shutdown_grace`.
    pub drain_inputs: Option<Duration>,
    pub(crate) data_dir: PathBuf,
    /// Process-wide byte budget for records held in memory.
    pub memory_limit: u64,
    /// `log_level`: a `tracing` filter directive (`info`, `firelane=debug`, …);
    /// `RUST_LOG` overrides it.
    pub log_level: String,
    /// `log_json`: one JSON object per log line (for CloudWatch Logs Insights) instead of
    /// text.
    pub log_json: bool,
    /// `worker_threads`: threads of the async runtime that run inputs, routing and the
    /// delivery loops (≥ 1, default 1). Compression, large forward frames, file writes and
    /// disk buffers run on tokio's blocking pool whatever this is, so they use the other
    /// cores anyway; one worker saves the cross-thread wake-ups and cache misses of handing
    /// records between workers, which cost about a fifth of the CPU per record on the
    /// forward paths (issue #10).
    pub worker_threads: usize,
}

impl RuntimeSettings {
    pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(25);
    pub(crate) const DEFAULT_MEMORY_LIMIT: u64 = 128 * 1024 * 1024;
    pub(crate) const DEFAULT_WORKER_THREADS: usize = 1;
    /// More workers than this is a typo, not a sidecar (a Fargate task has at most 16 vCPUs).
    pub(crate) const MAX_WORKER_THREADS: usize = 64;

    /// The least of `shutdown_grace` that `drain_inputs` must leave for the outputs to
    /// flush: 1 s or a fifth of the grace, whichever is longer.
    pub(crate) fn min_flush(grace: Duration) -> Duration {
        (grace / 5).max(Duration::from_secs(1))
    }

    /// The input drain window after SIGTERM: `drain_inputs`, default half of
    /// `shutdown_grace`.
    pub(crate) fn drain_inputs(&self) -> Duration {
        self.drain_inputs.unwrap_or(self.shutdown_grace / 2)
    }
}

#[derive(Debug)]
/// One `[inputs.NAME]` table.
pub struct InputSpec {
    pub(crate) name: String,
    /// The keys of its type, read by that type ([`crate::input::registry`]).
    pub kind: Arc<dyn InputConfig>,
    /// `processors = ["a", "b"]`: names of `[processors.NAME]` tables, applied in this
    /// order to every record of this input before routing.
    pub(crate) processors: Vec<String>,
}

#[derive(Debug)]
/// One `[routes.NAME]` table: which records (from, tags, pattern) go to which outputs.
pub struct RouteSpec {
    pub(crate) name: String,
    /// Input names; empty = every input.
    pub from: Vec<String>,
    pub(crate) tags: Vec<TagGlob>,
    pub(crate) pattern: Option<Pattern>,
    /// The pattern as compact JSON, for `firelane check` and `firelane route`.
    pub pattern_json: Option<String>,
    pub(crate) to: Vec<String>,
    pub(crate) is_final: bool,
}

#[derive(Debug, Clone, Default)]
/// An output's `batch = { … }` as written; each sink clamps it to its API's limits.
pub struct BatchSpec {
    pub(crate) max_records: Option<u64>,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age: Option<Duration>,
    /// Open partitions (S3 keys, CloudWatch streams being filled) at most.
    pub max_partitions: Option<u64>,
}

/// `buffer.type`, `buffer.when_full`, `buffer.fsync`: one definition each, the buffer's own.
pub(crate) use crate::buffer::{BufferKind, FsyncPolicy, WhenFull};

#[derive(Debug, Clone)]
/// An output's `buffer = { type, max_size, when_full, fsync }`.
pub struct BufferSpec {
    pub(crate) kind: BufferKind,
    pub(crate) max_size: Option<u64>,
    pub(crate) when_full: WhenFull,
    pub(crate) fsync: FsyncPolicy,
}

#[derive(Debug, Clone, Default)]
/// An output's `retry = { … }` as written; `None` = the output's default.
pub struct RetrySpec {
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) initial_backoff: Option<Duration>,
    pub(crate) max_backoff: Option<Duration>,
    pub(crate) max_retries: Option<u32>,
}

#[derive(Debug, Clone)]
/// One `[outputs.NAME]` table: the common keys, and its type's own in `kind`.
pub struct OutputSpec {
    pub(crate) name: String,
    /// The keys of its type, read by that type ([`crate::output::registry`]).
    pub kind: Arc<dyn OutputConfig>,
    pub(crate) batch: BatchSpec,
    pub(crate) buffer: BufferSpec,
    pub(crate) retry: RetrySpec,
    pub(crate) dead_letter: Option<String>,
    pub(crate) tag_key: Option<String>,
    /// `time_key`: the field the record's time is written to (RFC 3339, UTC, nanoseconds) before
    /// encoding; a field of that name the record already has is kept.
    pub time_key: Option<String>,
    /// Requests in flight at once (different keys / streams / batches).
    pub concurrency: Option<usize>,
}

/// A config that failed: every error, rendered `file:line:col: message`.
#[derive(Debug)]
pub struct ConfigErrors {
    /// Every error, `file:line:col: message`, in file order.
    pub errors: Vec<String>,
    /// Warnings found before the errors stopped the load (same format).
    pub warnings: Vec<String>,
    /// Values the config read from the environment (see [`Loaded::secrets`]): messages
    /// may quote them, so they go through the redactor before they are shown.
    pub secrets: Vec<String>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A loaded config plus its warnings.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// What `check` reports without failing: `file:line:col: message`, in file order.
    pub warnings: Vec<String>,
    /// The values `${VAR}` took from the environment (never defaults written in the file)
    /// that are secrets: the variable's name says so ([`is_secret_name`]: `TOKEN`, `KEY`,
    /// `PASSWORD`…), or the value sits under a key that carries credentials (`auth`,
    /// `headers`, `url`, `shared_key`), except [`PUBLIC_VARIABLES`]. ECS injects secrets
    /// (`secrets` in the task definition) as environment variables; the caller hands these
    /// to [`crate::telemetry::add_secrets`] so that they are shown as `***`. A listen
    /// address or a bucket from `${VAR}` stays visible.
    pub secrets: Vec<String>,
}

/// Environment variables whose values are configuration everybody may see, never secrets:
/// redacting the region would turn every AWS endpoint in a log line into `***`.
pub(crate) const PUBLIC_VARIABLES: &[&str] = &["AWS_REGION", "AWS_DEFAULT_REGION"];

/// Whether an environment variable's name marks its value as a secret (case-insensitive:
/// `TOKEN`, `SECRET`, `PASSWORD`, `PASSWD`, `PASSPHRASE`, `KEY`, `AUTH`, `CREDENTIAL`,
/// `API`, `PRIVATE`, `COOKIE`, `SESSION`, `SIGNATURE` anywhere in it).
pub(crate) fn is_secret_name(name: &str) -> bool {
    const MARKERS: &[&str] = &[
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "KEY",
        "AUTH",
        "CREDENTIAL",
        "API",
        "PRIVATE",
        "COOKIE",
        "SESSION",
        "SIGNATURE",
    ];
    let upper = name.to_ascii_uppercase();
    MARKERS.iter().any(|m| upper.contains(m))
}

/// Parses and validates `text` (named `file` in messages), reading `${VAR}` from `env`.
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let mut d = Diagnostics::new(file, text);
    let root = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            d.error(span, format!("invalid TOML: {}", e.message().trim()));
            return Err(ConfigErrors {
                errors: d.rendered_errors(),
                warnings: vec![],
                secrets: vec![],
            });
        }
    };
    // Every value the environment supplies passes through here: keep the secrets.
    let from_env = std::cell::RefCell::new(Vec::new());
    let recording = |name: &str| {
        let v = env(name);
        if let Some(v) = &v
            && !v.is_empty()
            && !PUBLIC_VARIABLES.contains(&name)
            && (is_secret_name(name) || reader::interpolating_credentials())
        {
            from_env.borrow_mut().push(v.clone());
        }
        v
    };
    let mut top = Table::new(root.get_ref(), root.span(), "", &recording);
    let config = read_config(&mut top, &mut d);
    top.finish_expecting(
        &mut d,
        &[
            "admin",
            "runtime",
            "inputs",
            "processors",
            "routes",
            "outputs",
        ],
    );
    let mut secrets = from_env.take();
    secrets.sort();
    secrets.dedup();
    if !d.errors.is_empty() {
        return Err(ConfigErrors {
            errors: d.rendered_errors(),
            warnings: d.rendered_warnings(),
            secrets,
        });
    }
    Ok(Loaded {
        config,
        warnings: d.rendered_warnings(),
        secrets,
    })
}

/// Reads a config file from disk.
pub fn load_file(path: &std::path::Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        errors: vec![format!("{}: cannot read config: {e}", path.display())],
        warnings: vec![],
        secrets: vec![],
    })?;
    let env = |k: &str| std::env::var(k).ok();
    let base = path.parent().map(PathBuf::from);
    if fluentbit::is_classic(path, &text) {
        return with_base_dir(base, || fluentbit::load(path, &text, &env));
    }
    with_base_dir(base, || parse(&text, &path.display().to_string(), &env))
}

thread_local! {
    static BASE_DIR: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// `pattern_file` paths are relative to the config file's directory.
fn with_base_dir<T>(dir: Option<PathBuf>, f: impl FnOnce() -> T) -> T {
    BASE_DIR.with(|b| *b.borrow_mut() = dir);
    let out = f();
    BASE_DIR.with(|b| *b.borrow_mut() = None);
    out
}

fn resolve_path(p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        return path;
    }
    BASE_DIR
        .with(|b| b.borrow().as_ref().map(|d| d.join(&path)))
        .unwrap_or(path)
}

fn read_config(top: &mut Table<'_, '_>, d: &mut Diagnostics) -> Config {
    let admin = read_admin(top, d);
    let runtime = read_runtime(top, d);
    // Inputs and outputs that exist but failed to read: their own errors are reported, so
    // routes naming them must not add "unknown input/output" noise on top.
    let mut broken: Vec<String> = Vec::new();
    let (mut processors, processor_spans, broken_processors) = read_processors(top, d);
    // Processors inputs imply (forward's `firelens = true`), added after the checks of the
    // user's `processors` references.
    let mut implied_processors: Vec<ProcessorSpec> = Vec::new();
    // Each input's `processors` entries with their spans, for the cross-table checks.
    let mut processor_refs: Vec<Vec<Spanned<String>>> = Vec::new();
    let mut inputs = Vec::new();
    // Every socket the inputs listen on, with the input's name and the `listen` span.
    let mut listens: Vec<(String, Listen, std::ops::Range<usize>)> = Vec::new();
    if let Some(mut t) = top.opt_table(d, "inputs") {
        for (name, mut it) in t.subtables(d) {
            check_name(d, &name, "input");
            match read_input(&name, &mut it, d) {
                Some((kind, procs)) => {
                    let span = it.value_span("listen");
                    for addr in kind.listens() {
                        listens.push((name.get_ref().clone(), addr, span.clone()));
                    }
                    let implied = kind.implied_processors();
                    let names = implied
                        .iter()
                        .map(|p| p.name.clone())
                        .chain(procs.iter().map(|p| p.get_ref().clone()))
                        .collect();
                    implied_processors.extend(implied);
                    inputs.push(InputSpec {
                        name: name.get_ref().clone(),
                        kind,
                        processors: names,
                    });
                    processor_refs.push(procs);
                }
                None => broken.push(name.get_ref().clone()),
            }
        }
        t.finish(d);
    }
    let broken_inputs = broken.len();
    let mut outputs = Vec::new();
    let mut output_spans = Vec::new();
    if let Some(mut t) = top.opt_table(d, "outputs") {
        for (name, mut ot) in t.subtables(d) {
            check_name(d, &name, "output");
            let before = d.errors.len();
            match read_output(&name, &mut ot, d) {
                Some(o) => {
                    check_sink(&o, &ot, name.span(), before, d);
                    output_spans.push(name.span());
                    outputs.push(o);
                }
                None => broken.push(name.get_ref().clone()),
            }
        }
        t.finish(d);
    }
    let mut routes = Vec::new();
    let mut route_refs = Vec::new();
    if let Some(mut t) = top.opt_table(d, "routes") {
        for (name, mut rt) in t.subtables(d) {
            check_name(d, &name, "route");
            if let Some((r, refs)) = read_route(&name, &mut rt, d) {
                routes.push(r);
                route_refs.push(refs);
            }
        }
        t.finish(d);
    }
    // A router with nothing to receive or nowhere to send is a deployment mistake (an empty
    // or truncated file, a config mounted at the wrong path), not a valid plan: refuse it
    // loudly instead of starting and dropping or never seeing a record. Inputs or outputs
    // that exist but failed to read have their own errors already.
    if inputs.is_empty() && broken_inputs == 0 {
        d.error(
            top.value_span("inputs"),
            "no inputs are configured: nothing would be received (add an [inputs.NAME] table; see config/reference.toml)",
        );
    }
    if outputs.is_empty() && broken.len() == broken_inputs {
        d.error(
            top.value_span("outputs"),
            "no outputs are configured: records would have nowhere to go (add an [outputs.NAME] table; see config/reference.toml)",
        );
    }
    for (o, span) in outputs.iter().zip(&output_spans) {
        if let Some(w) = crate::output::from_config::batch_fill_warning(o, runtime.memory_limit) {
            d.warn(span.clone(), w);
        }
    }
    check_listen_clashes(d, &admin, &listens);
    check_processor_refs(
        d,
        &processors,
        &processor_spans,
        &broken_processors,
        &processor_refs,
    );
    check_http_holds(d, &inputs, &processors, &processor_refs);
    processors.extend(implied_processors);
    cross_check(
        d,
        top,
        &inputs,
        &outputs,
        &output_spans,
        &routes,
        &route_refs,
        &broken,
    );
    Config {
        admin,
        runtime,
        inputs,
        processors,
        routes,
        outputs,
    }
}

/// Reads `[processors.NAME]` tables through their types ([`crate::process::registry`]).
/// Returns the processors, their name spans, and the names of those that failed to read
/// (their own errors are reported; inputs listing them get no second error).
fn read_processors(
    top: &mut Table<'_, '_>,
    d: &mut Diagnostics,
) -> (Vec<ProcessorSpec>, Vec<std::ops::Range<usize>>, Vec<String>) {
    let mut specs = Vec::new();
    let mut spans = Vec::new();
    let mut broken = Vec::new();
    let Some(mut t) = top.opt_table(d, "processors") else {
        return (specs, spans, broken);
    };
    for (name, mut pt) in t.subtables(d) {
        check_name(d, &name, "processor");
        let Some(ty) = pt.string(d, "type") else {
            broken.push(name.get_ref().clone());
            continue;
        };
        let Some(processor_type) = processor_registry::find(&ty) else {
            let known = processor_registry::names();
            let hint = reader::closest(&ty, &known)
                .map(|c| format!(" (did you mean {c:?}?)"))
                .unwrap_or_default();
            d.error(
                pt.value_span("type"),
                format!(
                    "{}.type: unknown processor type {ty:?}{hint}; expected one of {known:?}",
                    pt.path()
                ),
            );
            broken.push(name.get_ref().clone());
            continue;
        };
        let kind: Arc<dyn crate::process::ProcessorConfig> = processor_type.read(&mut pt, d).into();
        let accepted: Vec<&str> = std::iter::once("type")
            .chain(processor_type.keys().iter().copied())
            .collect();
        pt.finish_expecting(d, &accepted);
        specs.push(ProcessorSpec {
            name: name.get_ref().clone(),
            kind,
        });
        spans.push(name.span());
    }
    t.finish(d);
    (specs, spans, broken)
}

/// An HTTP request is answered 2xx only once its records are buffered, so a processor
/// holding records (multiline, partial) makes it wait up to that processor's timeout; at or
/// beyond the input's `accept_timeout` the client gets 503 and retries records that are
/// then delivered twice.
fn check_http_holds(
    d: &mut Diagnostics,
    inputs: &[InputSpec],
    processors: &[ProcessorSpec],
    refs: &[Vec<Spanned<String>>],
) {
    for (input, list) in inputs.iter().zip(refs) {
        let Some(http) = input
            .kind
            .as_any()
            .downcast_ref::<crate::input::http::HttpInputConfig>()
        else {
            continue;
        };
        for r in list {
            let Some(p) = processors.iter().find(|p| &p.name == r.get_ref()) else {
                continue;
            };
            if let Some(hold) = p.kind.holds_for()
                && hold >= http.accept_timeout
            {
                d.warn(
                    r.span(),
                    format!(
                        "processor {:?} may hold a record for {hold:?}, not less than input {:?}'s accept_timeout ({:?}): requests would get 503 and their retries be delivered twice; lower its timeout or raise accept_timeout",
                        p.name, input.name, http.accept_timeout
                    ),
                );
            }
        }
    }
}

/// Every name in an input's `processors` must be a `[processors.NAME]` table; a processor
/// no input lists is a warning (it would never run).
fn check_processor_refs(
    d: &mut Diagnostics,
    processors: &[ProcessorSpec],
    spans: &[std::ops::Range<usize>],
    broken: &[String],
    refs: &[Vec<Spanned<String>>],
) {
    let names: Vec<&str> = processors.iter().map(|p| p.name.as_str()).collect();
    let mut used = vec![false; processors.len()];
    for list in refs {
        for (i, r) in list.iter().enumerate() {
            let name = r.get_ref();
            if list[..i].iter().any(|x| x.get_ref() == name) {
                d.error(
                    r.span(),
                    format!("processor {name:?} is listed twice for the same input"),
                );
            }
            match names.iter().position(|n| n == name) {
                Some(j) => used[j] = true,
                None if broken.contains(name) => {}
                None => {
                    let hint = reader::closest(name, &names)
                        .map(|c| format!(" (did you mean {c:?}?)"))
                        .unwrap_or_default();
                    d.error(
                        r.span(),
                        format!("input refers to unknown processor {name:?}{hint}"),
                    );
                }
            }
        }
    }
    for (j, p) in processors.iter().enumerate() {
        if !used[j] {
            d.warn(
                spans[j].clone(),
                format!(
                    "processor {:?} is not used: no input lists it in `processors`",
                    p.name
                ),
            );
        }
    }
}

fn check_name(d: &mut Diagnostics, name: &Spanned<String>, what: &str) {
    let ok = !name.get_ref().is_empty()
        && name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        d.error(
            name.span(),
            format!(
                "{what} name {:?} must use only letters, digits, `_` and `-`",
                name.get_ref()
            ),
        );
    }
}

fn read_admin(top: &mut Table<'_, '_>, d: &mut Diagnostics) -> AdminSettings {
    let default: SocketAddr = ([127, 0, 0, 1], 2020).into();
    let mut limits = ServerLimits::new(AdminSettings::DEFAULT_MAX_CONNECTIONS);
    let Some(mut t) = top.opt_table(d, "admin") else {
        return AdminSettings {
            listen: default,
            limits,
            auth: crate::input::http::HttpAuth::None,
            ecs: crate::admin::ecs_state::EcsLimits::default(),
        };
    };
    let listen = t
        .opt_string(d, "listen")
        .and_then(|s| match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                d.error(
                    t.value_span("listen"),
                    format!("admin.listen: {s:?} is not HOST:PORT (e.g. \"0.0.0.0:2020\")"),
                );
                None
            }
        })
        .unwrap_or(default);
    read_server_limits(&mut t, d, &mut limits);
    let auth = t
        .opt_table(d, "auth")
        .map(|mut a| crate::input::http::config::read_auth(&mut a, d))
        .unwrap_or(crate::input::http::HttpAuth::None);
    let ecs = t
        .opt_table(d, "ecs")
        .map(|mut e| read_ecs_limits(&mut e, d))
        .unwrap_or_default();
    t.finish_expecting(
        d,
        &[
            "listen",
            "max_connections",
            "header_timeout",
            "idle_timeout",
            "auth",
            "ecs",
        ],
    );
    AdminSettings {
        listen,
        limits,
        auth,
        ecs,
    }
}

/// `[admin.ecs]`: `max_tasks`, `history`, `max_services` (each at least 1),
/// `stopped_retention` (a duration).
fn read_ecs_limits(
    t: &mut Table<'_, '_>,
    d: &mut Diagnostics,
) -> crate::admin::ecs_state::EcsLimits {
    let mut l = crate::admin::ecs_state::EcsLimits::default();
    for (key, slot) in [
        ("max_tasks", &mut l.max_tasks),
        ("history", &mut l.history),
        ("max_services", &mut l.max_services),
    ] {
        if let Some(n) = t.opt_count(d, key) {
            *slot = n;
        }
    }
    if let Some(r) = t.opt_duration(d, "stopped_retention") {
        l.stopped_retention = r;
    }
    t.finish_expecting(
        d,
        &["max_tasks", "history", "max_services", "stopped_retention"],
    );
    l
}

/// `max_connections`, `header_timeout` and `idle_timeout` of an HTTP listener.
pub(crate) fn read_server_limits(
    t: &mut Table<'_, '_>,
    d: &mut Diagnostics,
    limits: &mut ServerLimits,
) {
    if let Some(n) = t.opt_count(d, "max_connections") {
        limits.max_connections = n;
    }
    for (key, slot) in [
        ("header_timeout", &mut limits.header_timeout),
        ("idle_timeout", &mut limits.idle_timeout),
    ] {
        if let Some(v) = t.opt_duration(d, key) {
            if v.is_zero() {
                d.error(
                    t.value_span(key),
                    format!("{}.{key}: must be more than 0", t.path()),
                );
            } else {
                *slot = v;
            }
        }
    }
}

fn read_runtime(top: &mut Table<'_, '_>, d: &mut Diagnostics) -> RuntimeSettings {
    let mut rt = RuntimeSettings {
        shutdown_grace: RuntimeSettings::DEFAULT_GRACE,
        drain_inputs: None,
        data_dir: PathBuf::from("/var/lib/firelane"),
        memory_limit: RuntimeSettings::DEFAULT_MEMORY_LIMIT,
        log_level: "info".into(),
        log_json: false,
        worker_threads: RuntimeSettings::DEFAULT_WORKER_THREADS,
    };
    let Some(mut t) = top.opt_table(d, "runtime") else {
        return rt;
    };
    if let Some(g) = t.opt_duration(d, "shutdown_grace") {
        // Below a second nothing can flush (ECS's own stopTimeout is at least 2 s).
        if g < Duration::from_secs(1) {
            d.error(
                t.value_span("shutdown_grace"),
                format!("runtime.shutdown_grace: {g:?} leaves no time to flush the outputs; set at least 1s"),
            );
        } else {
            rt.shutdown_grace = g;
        }
    }
    if let Some(w) = t.opt_duration(d, "drain_inputs") {
        // The outputs flush in what the drain leaves of the grace: a drain window equal
        // to the grace left no time at all, and the records read last were cut off.
        let flush = RuntimeSettings::min_flush(rt.shutdown_grace);
        let most = rt.shutdown_grace.saturating_sub(flush);
        if w > most {
            d.error(
                t.value_span("drain_inputs"),
                format!(
                    "runtime.drain_inputs: {w:?} leaves less than {flush:?} of shutdown_grace ({:?}) for the outputs to flush; set it to at most {}",
                    rt.shutdown_grace,
                    if most.is_zero() { "0s".to_string() } else { format!("{most:?}") }
                ),
            );
        } else {
            rt.drain_inputs = Some(w);
        }
    }
    if let Some(p) = t.opt_string(d, "data_dir") {
        rt.data_dir = PathBuf::from(p);
    }
    if let Some(m) = t.opt_size(d, "memory_limit") {
        if m < 4 * 1024 * 1024 {
            d.error(
                t.value_span("memory_limit"),
                "runtime.memory_limit: must be at least 4MiB",
            );
        } else {
            rt.memory_limit = m;
        }
    }
    if let Some(n) = t.opt_count(d, "worker_threads") {
        if n > RuntimeSettings::MAX_WORKER_THREADS {
            d.error(
                t.value_span("worker_threads"),
                format!(
                    "runtime.worker_threads: {n} is more than {}",
                    RuntimeSettings::MAX_WORKER_THREADS
                ),
            );
        } else {
            rt.worker_threads = n;
        }
    }
    if let Some(l) = t.opt_string(d, "log_level") {
        if ["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
            rt.log_level = l;
        } else {
            d.error(
                t.value_span("log_level"),
                "runtime.log_level: expected error, warn, info, debug or trace",
            );
        }
    }
    if let Some(f) = t.opt_string(d, "log_format") {
        match f.as_str() {
            "text" => rt.log_json = false,
            "json" => rt.log_json = true,
            _ => d.error(
                t.value_span("log_format"),
                "runtime.log_format: expected \"text\" or \"json\"",
            ),
        }
    }
    t.finish_expecting(
        d,
        &[
            "shutdown_grace",
            "drain_inputs",
            "data_dir",
            "memory_limit",
            "log_level",
            "log_format",
            "worker_threads",
        ],
    );
    rt
}

/// An input's type keys and its `processors` entries (with spans).
type InputRead = (Arc<dyn InputConfig>, Vec<Spanned<String>>);

/// Reads `[inputs.NAME]` through its type's [`InputType::read`](crate::input::registry::InputType::read).
fn read_input(
    name: &Spanned<String>,
    t: &mut Table<'_, '_>,
    d: &mut Diagnostics,
) -> Option<InputRead> {
    // Every input type takes `processors` (src/process), read here.
    let processors = t.opt_string_list(d, "processors").unwrap_or_default();
    let ty = t.string(d, "type")?;
    let Some(input_type) = input_registry::find(&ty) else {
        let path = t.path();
        let message = if ty == "sqs" {
            format!("{path}.type: the sqs input is not available in this version yet")
        } else {
            let known = input_registry::names();
            let hint = reader::closest(&ty, &known)
                .map(|c| format!(" (did you mean {c:?}?)"))
                .unwrap_or_default();
            format!("{path}.type: unknown input type {ty:?}{hint}; expected one of {known:?}")
        };
        d.error(t.value_span("type"), message);
        return None;
    };
    let kind: Arc<dyn InputConfig> = input_type.read(name.get_ref(), t, d).into();
    let accepted: Vec<&str> = ["type", "processors"]
        .into_iter()
        .chain(input_type.keys().iter().copied())
        .collect();
    t.finish_expecting(d, &accepted);
    Some((kind, processors))
}

/// Output names a route refers to, with spans, for the cross-table checks.
struct RouteRefs {
    from: Vec<Spanned<String>>,
    to: Vec<Spanned<String>>,
    name_span: std::ops::Range<usize>,
    catch_all: bool,
}

fn read_route(
    name: &Spanned<String>,
    t: &mut Table<'_, '_>,
    d: &mut Diagnostics,
) -> Option<(RouteSpec, RouteRefs)> {
    let from = t.opt_string_list(d, "from").unwrap_or_default();
    let mut tags = Vec::new();
    for g in t.opt_string_list(d, "tag").unwrap_or_default() {
        match TagGlob::new(g.get_ref()) {
            Ok(glob) => tags.push(glob),
            Err(e) => d.error(g.span(), format!("{}.tag: {e}", t.path())),
        }
    }
    let mut pattern = read_pattern(t, d, "pattern");
    if let Some(file) = t.opt_string(d, "pattern_file") {
        let span = t.value_span("pattern_file");
        if pattern.is_some() {
            d.error(
                span.clone(),
                format!("{}: use either pattern or pattern_file, not both", t.path()),
            );
        }
        let path = resolve_path(&file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                pattern = compile_pattern(
                    PatternText::Text(text),
                    span,
                    &format!("{}.pattern", t.path()),
                    d,
                )
            }
            Err(e) => d.error(
                span,
                format!(
                    "{}.pattern_file: cannot read {}: {e}",
                    t.path(),
                    path.display()
                ),
            ),
        }
    }
    let to = match t.opt_string_list(d, "to") {
        Some(to) if !to.is_empty() => to,
        Some(_) => {
            d.error(
                t.value_span("to"),
                format!("{}.to: needs at least one output", t.path()),
            );
            vec![]
        }
        None => {
            t.missing(d, "to");
            vec![]
        }
    };
    let is_final = t.opt_bool(d, "final").unwrap_or(false);
    t.finish_expecting(
        d,
        &["from", "tag", "pattern", "pattern_file", "to", "final"],
    );
    let catch_all = tags.is_empty() && pattern.is_none();
    let (pattern, pattern_json) = match pattern {
        Some((p, json)) => (Some(p), Some(json)),
        None => (None, None),
    };
    let spec = RouteSpec {
        name: name.get_ref().clone(),
        from: from.iter().map(|s| s.get_ref().clone()).collect(),
        tags,
        pattern,
        pattern_json,
        to: to.iter().map(|s| s.get_ref().clone()).collect(),
        is_final,
    };
    Some((
        spec,
        RouteRefs {
            from,
            to,
            name_span: name.span(),
            catch_all,
        },
    ))
}

/// Reads `key` as an EventBridge event pattern: a TOML table, or the JSON text people have
/// from EventBridge or Terraform; `${VAR}` expanded in its string values. Errors (located)
/// go to `d`. Returns the compiled pattern and its compact JSON (for `check` and `route`).
pub(crate) fn read_pattern(
    t: &mut Table<'_, '_>,
    d: &mut Diagnostics,
    key: &str,
) -> Option<(Pattern, String)> {
    if let Some(v) = t.get(key) {
        let json = match v.get_ref() {
            DeValue::String(s) => {
                // JSON text as pasted from EventBridge or Terraform `jsonencode`.
                Some(PatternText::Text(s.to_string()))
            }
            DeValue::Table(_) => match reader::to_json(v.get_ref()) {
                Ok(j) => Some(PatternText::Value(j)),
                Err(e) => {
                    d.error(v.span(), format!("{}.{key}: {e}", t.path()));
                    None
                }
            },
            other => {
                d.error(
                    v.span(),
                    format!(
                        "{}.{key}: expected a table or JSON text, found {}",
                        t.path(),
                        reader::type_name(other)
                    ),
                );
                None
            }
        };
        // "Any string may use ${VAR}" holds for patterns too (a cluster ARN, an account id):
        // string values are expanded after parsing, so a value cannot break the JSON and
        // keys such as `$or` are left alone.
        let json = json.and_then(|p| match interpolate_pattern(p, t.env()) {
            Ok(p) => Some(p),
            Err(e) => {
                d.error(v.span(), format!("{}.{key}: {e}", t.path()));
                None
            }
        });
        if let Some(p) = json {
            return compile_pattern(p, v.span(), &format!("{}.{key}", t.path()), d);
        }
    }
    None
}

enum PatternText {
    Text(String),
    Value(serde_json::Value),
}

/// Expands `${VAR}` in the pattern's string values. Text that is not JSON is left for
/// [`compile_pattern`] to report.
fn interpolate_pattern(
    p: PatternText,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PatternText, String> {
    fn walk(v: &mut serde_json::Value, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        match v {
            serde_json::Value::String(s) => *s = reader::interpolate(s, env)?,
            serde_json::Value::Array(items) => {
                for i in items {
                    walk(i, env)?;
                }
            }
            serde_json::Value::Object(m) => {
                for (_, x) in m.iter_mut() {
                    walk(x, env)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    match p {
        PatternText::Text(s) if s.contains('$') => {
            match serde_json::from_str::<serde_json::Value>(&s) {
                Ok(mut v) => {
                    walk(&mut v, env)?;
                    Ok(PatternText::Value(v))
                }
                Err(_) => Ok(PatternText::Text(s)),
            }
        }
        PatternText::Value(mut v) => {
            walk(&mut v, env)?;
            Ok(PatternText::Value(v))
        }
        text => Ok(text),
    }
}

fn compile_pattern(
    p: PatternText,
    span: std::ops::Range<usize>,
    path: &str,
    d: &mut Diagnostics,
) -> Option<(Pattern, String)> {
    let (compiled, json) = match p {
        PatternText::Text(s) => {
            let json = serde_json::from_str::<serde_json::Value>(&s)
                .map_or_else(|_| s.trim().to_string(), |v| v.to_string());
            (Pattern::parse(&s), json)
        }
        PatternText::Value(v) => (Pattern::from_value(&v), v.to_string()),
    };
    match compiled {
        Ok(p) => {
            for w in crate::route::pattern::lint(&p) {
                d.warn(span.clone(), format!("{path}: {w}"));
            }
            Some((p, json))
        }
        Err(e) => {
            d.error(span, format!("{path}: invalid event pattern: {e}"));
            None
        }
    }
}

const OUTPUT_COMMON: &[&str] = &[
    "type",
    "batch",
    "buffer",
    "retry",
    "dead_letter",
    "tag_key",
    "time_key",
    "concurrency",
];

fn read_output(
    name: &Spanned<String>,
    t: &mut Table<'_, '_>,
    d: &mut Diagnostics,
) -> Option<OutputSpec> {
    let ty = t.string(d, "type")?;
    let mut batch = BatchSpec::default();
    if let Some(mut b) = t.opt_table(d, "batch") {
        batch.max_records = b.opt_u64(d, "max_records");
        batch.max_bytes = b.opt_size(d, "max_bytes");
        batch.max_age = b.opt_duration(d, "max_age");
        batch.max_partitions = b.opt_u64(d, "max_partitions");
        if batch.max_records == Some(0)
            || batch.max_bytes == Some(0)
            || batch.max_partitions == Some(0)
        {
            d.error(
                b.span(),
                format!(
                    "{}: max_records, max_bytes and max_partitions must be greater than 0",
                    b.path()
                ),
            );
        }
        b.finish_expecting(
            d,
            &["max_records", "max_bytes", "max_age", "max_partitions"],
        );
    }
    let mut buffer = BufferSpec {
        kind: BufferKind::Memory,
        max_size: None,
        when_full: WhenFull::Block,
        fsync: FsyncPolicy::Always,
    };
    if let Some(mut b) = t.opt_table(d, "buffer") {
        match b.opt_string(d, "type").as_deref() {
            None | Some("memory") => {}
            Some("disk") => buffer.kind = BufferKind::Disk,
            Some(o) => d.error(
                b.value_span("type"),
                format!("{}.type: expected memory or disk, found {o:?}", b.path()),
            ),
        }
        buffer.max_size = b.opt_size(d, "max_size");
        match b.opt_string(d, "when_full").as_deref() {
            None | Some("block") => {}
            Some("drop_newest") => buffer.when_full = WhenFull::DropNewest,
            Some(o) => d.error(
                b.value_span("when_full"),
                format!(
                    "{}.when_full: expected block or drop_newest, found {o:?}",
                    b.path()
                ),
            ),
        }
        match b.opt_string(d, "fsync").as_deref() {
            None | Some("always") => {}
            Some("never") => buffer.fsync = FsyncPolicy::Never,
            Some(other) => match units::parse_duration(other) {
                Ok(i) => buffer.fsync = FsyncPolicy::Interval(i),
                Err(_) => d.error(
                    b.value_span("fsync"),
                    format!(
                        "{}.fsync: expected \"always\", \"never\" or an interval like \"1s\"",
                        b.path()
                    ),
                ),
            },
        }
        if buffer.kind == BufferKind::Memory && b.contains("fsync") {
            d.warn(
                b.value_span("fsync"),
                format!("{}.fsync only applies to disk buffers", b.path()),
            );
        }
        b.finish_expecting(d, &["type", "max_size", "when_full", "fsync"]);
    }
    let mut retry = RetrySpec::default();
    if let Some(mut r) = t.opt_table(d, "retry") {
        retry.max_elapsed = r.opt_duration(d, "max_elapsed");
        retry.initial_backoff = r.opt_duration(d, "initial_backoff");
        retry.max_backoff = r.opt_duration(d, "max_backoff");
        retry.max_retries = r
            .opt_u64(d, "max_retries")
            .map(|n| n.min(u32::MAX as u64) as u32);
        if let (Some(i), Some(m)) = (retry.initial_backoff, retry.max_backoff)
            && m < i
        {
            d.error(
                r.span(),
                format!(
                    "{}: max_backoff must not be less than initial_backoff",
                    r.path()
                ),
            );
        }
        r.finish_expecting(
            d,
            &[
                "max_elapsed",
                "initial_backoff",
                "max_backoff",
                "max_retries",
            ],
        );
    }
    let dead_letter = t.opt_string(d, "dead_letter");
    let tag_key = t.opt_string(d, "tag_key");
    let time_key = t.opt_string(d, "time_key");
    let concurrency = t
        .opt_u64(d, "concurrency")
        .map(|c| c.clamp(1, 256) as usize);

    let Some(output_type) = registry::find(&ty) else {
        unknown_output_type(t, d, &ty);
        return None;
    };
    let kind: Arc<dyn OutputConfig> = output_type.read(t, d).into();
    let accepted: Vec<&str> = OUTPUT_COMMON
        .iter()
        .chain(output_type.keys())
        .copied()
        .collect();
    t.finish_expecting(d, &accepted);
    Some(OutputSpec {
        name: name.get_ref().clone(),
        kind,
        batch,
        buffer,
        retry,
        dead_letter,
        tag_key,
        time_key,
        concurrency,
    })
}

/// The `type` of an output is none firelane has: say which ones it has (the registry's),
/// and the closest one.
fn unknown_output_type(t: &Table<'_, '_>, d: &mut Diagnostics, ty: &str) {
    let path = t.path();
    if ["slack", "sns"].contains(&ty) {
        d.error(
            t.value_span("type"),
            format!("{path}.type: the {ty} output is not available in this version yet"),
        );
        return;
    }
    let known = registry::names();
    let hint = reader::closest(ty, &known)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default();
    d.error(
        t.value_span("type"),
        format!("{path}.type: unknown output type {ty:?}{hint}; expected one of {known:?}"),
    );
}

/// The construction-time checks of `o`'s own sink, the ones `run` meets when it starts
/// the output ([`OutputConfig::validate`], no network or AWS call), located
/// at the key they concern. A key whose value this reader already refused (an error since
/// `before` at the same place or about the same key) is not reported twice.
fn check_sink(
    o: &OutputSpec,
    t: &Table<'_, '_>,
    name_span: std::ops::Range<usize>,
    before: usize,
    d: &mut Diagnostics,
) {
    let Err(e) = o.kind.validate(o) else {
        return;
    };
    let (what, span) = match e.key {
        Some(k) => (format!("{}.{k}", t.path()), t.value_span(k)),
        None => (t.path().to_string(), name_span),
    };
    let prefix = format!("{what}:");
    if d.errors[before..]
        .iter()
        .any(|x| x.span == span || x.message.starts_with(&prefix))
    {
        return;
    }
    d.error(span, format!("{what}: {}", e.message));
}

/// A socket an input or the admin server listens on.
#[derive(Clone, Debug, PartialEq)]
pub enum Listen {
    /// A TCP address with a numeric host.
    Tcp(SocketAddr),
    /// A unix stream socket's path.
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Whether binding both sockets fails with "Address already in use" on Linux: the same
/// unix path, or the same TCP port on the same address, or on a wildcard address that
/// covers the other (`0.0.0.0` covers every IPv4 address; `[::]` is dual-stack by default,
/// `net.ipv6.bindv6only = 0`, so it covers IPv4 too). Port 0 picks a free port: no clash.
fn listens_clash(a: &Listen, b: &Listen) -> bool {
    match (a, b) {
        (Listen::Unix(x), Listen::Unix(y)) => x == y,
        (Listen::Tcp(x), Listen::Tcp(y)) => {
            if x.port() != y.port() || x.port() == 0 {
                return false;
            }
            let (x, y) = (x.ip(), y.ip());
            let v6_any = |ip: std::net::IpAddr| ip.is_ipv6() && ip.is_unspecified();
            x == y
                || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified()))
                || v6_any(x)
                || v6_any(y)
        }
        _ => false,
    }
}

/// Two inputs, one input twice, or an input and the admin server on one socket: `run`
/// would fail at start-up with "Address already in use" after binding the first, so the
/// config is refused here, at the later `listen`.
fn check_listen_clashes(
    d: &mut Diagnostics,
    admin: &AdminSettings,
    listens: &[(String, Listen, std::ops::Range<usize>)],
) {
    let admin_listen = Listen::Tcp(admin.listen);
    for (i, (name, addr, span)) in listens.iter().enumerate() {
        if listens_clash(addr, &admin_listen) {
            d.error(
                span.clone(),
                format!(
                    "inputs.{name}.listen: {addr} clashes with admin.listen = \"{}\" (both would bind the same port: \"Address already in use\"); give each its own port",
                    admin.listen
                ),
            );
            continue;
        }
        if let Some((other, other_addr, _)) =
            listens[..i].iter().find(|(_, a, _)| listens_clash(addr, a))
        {
            let whose = if other == name {
                "is listed twice in this input".to_string()
            } else {
                format!("clashes with inputs.{other}.listen ({other_addr})")
            };
            d.error(
                span.clone(),
                format!(
                    "inputs.{name}.listen: {addr} {whose} (both would bind the same socket: \"Address already in use\"); give each its own address"
                ),
            );
        }
    }
}

// Every argument is one of read_config's collections; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn cross_check(
    d: &mut Diagnostics,
    top: &Table<'_, '_>,
    inputs: &[InputSpec],
    outputs: &[OutputSpec],
    output_spans: &[std::ops::Range<usize>],
    routes: &[RouteSpec],
    refs: &[RouteRefs],
    broken: &[String],
) {
    let input_names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let output_names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    let mut fed = vec![false; outputs.len()];
    for r in refs {
        for f in &r.from {
            if !input_names.contains(&f.get_ref().as_str()) && !broken.contains(f.get_ref()) {
                let hint = reader::closest(f.get_ref(), &input_names)
                    .map(|c| format!(" (did you mean {c:?}?)"))
                    .unwrap_or_default();
                d.error(
                    f.span(),
                    format!("route refers to unknown input {:?}{hint}", f.get_ref()),
                );
            }
        }
        for o in &r.to {
            match output_names.iter().position(|n| n == o.get_ref()) {
                Some(i) => fed[i] = true,
                None if broken.contains(o.get_ref()) => {}
                None => {
                    let hint = reader::closest(o.get_ref(), &output_names)
                        .map(|c| format!(" (did you mean {c:?}?)"))
                        .unwrap_or_default();
                    d.error(
                        o.span(),
                        format!("route refers to unknown output {:?}{hint}", o.get_ref()),
                    );
                }
            }
        }
    }
    // Dead letters: the target must exist, and chains must not loop.
    for (i, o) in outputs.iter().enumerate() {
        let Some(dl) = &o.dead_letter else { continue };
        let Some(j) = output_names.iter().position(|n| n == dl) else {
            if broken.contains(dl) {
                continue;
            }
            d.error(
                output_spans[i].clone(),
                format!("outputs.{}.dead_letter: unknown output {dl:?}", o.name),
            );
            continue;
        };
        fed[j] = true;
        let mut seen = vec![i];
        let mut cur = j;
        loop {
            if seen.contains(&cur) {
                d.error(
                    output_spans[i].clone(),
                    format!(
                        "outputs.{}.dead_letter: dead-letter chain loops back to {:?}",
                        o.name, outputs[cur].name
                    ),
                );
                break;
            }
            seen.push(cur);
            match outputs[cur]
                .dead_letter
                .as_ref()
                .and_then(|n| output_names.iter().position(|x| x == n))
            {
                Some(next) => cur = next,
                None => break,
            }
        }
    }
    for (i, o) in outputs.iter().enumerate() {
        if !fed[i] {
            d.warn(
                output_spans[i].clone(),
                format!("output {:?} receives nothing: no route sends to it", o.name),
            );
        }
    }
    // A route after a catch-all final route can never see a record from the same inputs.
    for (i, r) in refs.iter().enumerate() {
        if r.catch_all && routes[i].is_final && routes[i].from.is_empty() && i + 1 < routes.len() {
            d.warn(
                refs[i + 1].name_span.clone(),
                format!(
                    "route {:?} is unreachable: route {:?} takes every record and is final",
                    routes[i + 1].name,
                    routes[i].name
                ),
            );
        }
    }
    if !inputs.is_empty() && !refs.iter().any(|r| r.catch_all) {
        d.warn(top.value_span("routes"), "records that no route takes are counted in firelane_unrouted_records_total and dropped (add a route with no tag/pattern to catch them)");
    }
}

#[cfg(test)]
mod registry_tests;
#[cfg(test)]
mod tests;
