//! The `firelane` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use firelane::config::{self, Loaded};

// The global allocator, chosen at build time by a cargo feature (figures in README
// "Performance"). Without either feature: the system allocator.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "firelane",
    version,
    about = "Log and event router for Amazon ECS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router.
    Run {
        /// Config file (default: $FIRELANE_CONFIG, then /etc/firelane/firelane.toml, then the embedded default).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config and print the plan: inputs → routes → outputs.
    Check {
        /// Config file: firelane TOML, or a Fluent Bit classic config (`*.conf`, or a file
        /// starting with [SERVICE] / [INPUT] / @INCLUDE).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print the firelane TOML equivalent to a Fluent Bit config (to migrate for good)
        /// instead of the plan; the config is validated first.
        #[arg(long)]
        print_toml: bool,
    },
    /// Test an EventBridge event pattern against an event (like `aws events test-event-pattern`).
    TestPattern {
        /// Pattern as JSON text or @file.
        #[arg(long, required_unless_present = "batch")]
        pattern: Option<String>,
        /// Event as JSON text or @file.
        #[arg(long, required_unless_present = "batch")]
        event: Option<String>,
        /// Read JSON lines {"pattern": …, "event": …} on stdin; print true / false / invalid: reason per line.
        #[arg(long, conflicts_with_all = ["pattern", "event"])]
        batch: bool,
    },
    /// Dry run: which routes a record matches and which outputs it would reach.
    Route {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The record body (JSON object) as text or @file.
        #[arg(long)]
        event: String,
        /// The record's tag (default: detail-type for EventBridge events, else empty).
        #[arg(long)]
        tag: Option<String>,
        /// The input it arrives on (default: every input, one line each).
        #[arg(long)]
        input: Option<String>,
    },
    /// Exit 0 when the admin /health endpoint answers; for ECS container health checks.
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:2020/health")]
        url: String,
        #[arg(long, default_value = "3")]
        timeout_secs: u64,
    },
    /// Forward-protocol load generator for sizing and benchmarks.
    Loadgen(firelane::loadgen::LoadgenArgs),
}

/// Writes a command's result to stdout. A reader that goes away early (`firelane check |
/// head -2`) is not an error: the rest of the output is discarded quietly and the command
/// keeps its exit code. Any other write error (a full disk) is reported once and exits 1.
fn out(args: std::fmt::Arguments<'_>) {
    static GONE: AtomicBool = AtomicBool::new(false);
    if GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            GONE.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "firelane: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// `print!` through [`out`].
macro_rules! out {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

/// `println!` through [`out`].
macro_rules! outln {
    () => { out(format_args!("\n")) };
    ($($arg:tt)*) => { out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Tunes glibc malloc before any thread starts. Fixes its mmap threshold at its 128 KiB
/// default. Left dynamic, glibc raises it (up
/// to 32 MiB) after the first large buffer is freed, so later multi-MiB request buffers and
/// batches come from the heap arenas and their pages stay resident after they are freed:
/// the process kept ~2x `memory_limit` resident after bursts of large forward requests
/// although the budget never allowed that much live data. Fixed, large buffers are
/// mmapped and returned to the kernel when freed, so RSS follows the budget.
///
/// Also caps glibc's malloc arenas at [`MALLOC_ARENAS`] unless `MALLOC_ARENA_MAX` says
/// otherwise. glibc gives threads their own arenas (up to 8 per core), and records are
/// decoded on one thread (a worker, the blocking pool) and freed on another: each arena
/// kept its own freed-but-resident pages: a 2,000,000-record burst under a 32 MiB budget
/// peaked at 88 MiB RSS with `MALLOC_ARENA_MAX=16` (the default on 2 cores) and at 70
/// with 1 (medians of 3, `scripts/bench_vs_fluentbit.py --only memory`), at the same CPU.
///
/// And raises the trim threshold to [`MALLOC_TRIM_THRESHOLD`] with [`MALLOC_TOP_PAD`]. At
/// glibc's 128 KiB, every wave of freed records shrank the heap and the next wave faulted
/// the same pages in again (`clear_page_erms` was 11% of PackedForward → null's CPU in
/// `perf`). What the heap now keeps free at its top is bounded by these, and the
/// resident-memory governor (`buffer::resident`) trims it when resident memory passes
/// what the budget holds. Release build, `scripts/bench.py` alternating runs, medians of
/// 5 (2026-12-01): PackedForward → null 0.67 → 0.60 CPU-s per 1M, → file 2.00 → 1.70;
/// the 32 MiB burst's peak RSS 54 → 56 MiB (medians of 3, within the target).
///
/// Each setting is left to glibc's own environment variable when that is set
/// (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_TOP_PAD_`), so they can be measured without a rebuild.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name: &str| std::env::var_os(name).is_none();
        let settings = [
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 * 1024),
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, MALLOC_ARENAS),
            (
                "MALLOC_TRIM_THRESHOLD_",
                libc::M_TRIM_THRESHOLD,
                MALLOC_TRIM_THRESHOLD,
            ),
            ("MALLOC_TOP_PAD_", libc::M_TOP_PAD, MALLOC_TOP_PAD),
        ];
        for (env, param, value) in settings {
            if unset(env) {
                // SAFETY: mallopt only changes allocator tuning; called before any other
                // thread exists.
                unsafe {
                    libc::mallopt(param, value);
                }
            }
        }
    }
}

/// Free bytes at the heap's top before `free` gives them back (see [`tune_malloc`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_THRESHOLD: libc::c_int = 4 << 20;

/// Extra bytes the heap grows by, and keeps when trimmed (see [`tune_malloc`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TOP_PAD: libc::c_int = 512 << 10;

/// glibc malloc arenas (see [`tune_malloc`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 1;

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config, print_toml } => {
            if print_toml {
                print_toml_of(config)
            } else {
                check(config)
            }
        }
        Command::TestPattern {
            pattern,
            event,
            batch,
        } => test_pattern(pattern, event, batch),
        Command::Route {
            config,
            event,
            tag,
            input,
        } => route(config, event, tag, input),
        Command::Healthcheck { url, timeout_secs } => {
            match firelane::admin::healthcheck(&url, Duration::from_secs(timeout_secs)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "unhealthy: {}",
                        firelane::telemetry::error_chain(e.as_ref())
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Loadgen(args) => match firelane::loadgen::run(args) {
            Ok(report) => {
                outln!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {}", firelane::telemetry::error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        },
    }
}

/// Finds and loads the config: `-c`, `$FIRELANE_CONFIG`, the system path, or the embedded default.
fn load(explicit: Option<PathBuf>) -> Result<(String, Loaded), config::ConfigErrors> {
    let path = explicit
        // An empty FIRELANE_CONFIG (a task definition's placeholder) counts as unset.
        .or_else(|| {
            std::env::var_os("FIRELANE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        // The file the ECS agent writes for a FireLens router of type "fluentbit": it holds
        // the app containers' outputs, so it wins over a config baked into the image.
        .or_else(|| {
            let p = PathBuf::from(config::fluentbit::FIRELENS_PATH);
            p.exists().then_some(p)
        })
        .or_else(|| {
            let p = PathBuf::from(config::SYSTEM_PATH);
            p.exists().then_some(p)
        });
    match path {
        Some(p) => config::load_file(&p).map(|l| (p.display().to_string(), l)),
        None => {
            let env = |k: &str| std::env::var(k).ok();
            config::parse(config::EMBEDDED_DEFAULT, "<embedded default>", &env)
                .map(|l| ("<embedded default>".to_string(), l))
        }
    }
}

fn print_errors(e: &config::ConfigErrors) {
    // A message may quote a value that came from the environment (a token in a URL).
    firelane::telemetry::add_secrets(e.secrets.iter().cloned());
    let redact = firelane::telemetry::redact;
    for w in &e.warnings {
        eprintln!("{}", redact(w));
    }
    for err in &e.errors {
        eprintln!("{}", redact(err));
    }
    eprintln!("config invalid: {} error(s)", e.errors.len());
}

fn run(config: Option<PathBuf>) -> ExitCode {
    let (source, loaded) = match load(config) {
        Ok(l) => l,
        Err(e) => {
            print_errors(&e);
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    firelane::telemetry::add_secrets(loaded.secrets.iter().cloned());
    firelane::telemetry::init(
        &loaded.config.runtime.log_level,
        loaded.config.runtime.log_json,
    );
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // Set explicitly, so TOKIO_WORKER_THREADS in the environment does not silently
    // override the config.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(loaded.config.runtime.worker_threads)
        .enable_all()
        .thread_name("firelane")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        config = %source,
        version = env!("CARGO_PKG_VERSION"),
        worker_threads = runtime.metrics().num_workers(),
        "starting firelane"
    );
    match runtime.block_on(async {
        tokio::spawn(ignore_stray_signals());
        firelane::topology::run(loaded.config).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The logger writes to stderr already; one line, not two.
            tracing::error!(
                "firelane stopped: {}",
                firelane::telemetry::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Signals whose default action would kill the router at once, silently, with the memory
/// buffers lost, though nobody asked it to stop: SIGHUP (sent by operators who expect a
/// reload, as fluentd and Fluent Bit do; a closing terminal), SIGUSR1/SIGUSR2 (fluentd's
/// "flush buffers" / "reload" and a common "dump state" signal) and SIGALRM. firelane does
/// not reload its config (a changed config takes a task restart), so each is logged and
/// ignored for the life of the process.
///
/// The handlers are installed when this is called (it must run inside the runtime), before
/// any input listens, so no record is acknowledged while one of these could still kill the
/// process; the returned future logs each delivery.
#[cfg(unix)]
fn ignore_stray_signals() -> impl std::future::Future<Output = ()> {
    use futures::StreamExt;
    use tokio::signal::unix::{SignalKind, signal};
    const NO_MEANING: &str = "it has no meaning to firelane";
    let mut pending = futures::stream::FuturesUnordered::new();
    for (kind, name, why) in [
        (
            SignalKind::hangup(),
            "SIGHUP",
            "firelane does not reload its config; restart the task to apply a new one",
        ),
        (SignalKind::user_defined1(), "SIGUSR1", NO_MEANING),
        (SignalKind::user_defined2(), "SIGUSR2", NO_MEANING),
        (SignalKind::alarm(), "SIGALRM", NO_MEANING),
    ] {
        match signal(kind) {
            Ok(s) => pending.push(next_signal(s, name, why)),
            Err(e) => tracing::warn!("cannot handle {name}: {e}; it would stop firelane"),
        }
    }
    async move {
        while let Some((s, name, why)) = pending.next().await {
            let Some(s) = s else { continue };
            tracing::warn!(signal = name, "{name} received and ignored: {why}");
            pending.push(next_signal(s, name, why));
        }
    }
}

/// Waits for the next delivery of `s` and hands the stream back to wait again (`None` if
/// the stream ended, which tokio documents as not happening for signals).
#[cfg(unix)]
async fn next_signal(
    mut s: tokio::signal::unix::Signal,
    name: &'static str,
    why: &'static str,
) -> (
    Option<tokio::signal::unix::Signal>,
    &'static str,
    &'static str,
) {
    let got = s.recv().await;
    (got.map(|()| s), name, why)
}

fn check(config: Option<PathBuf>) -> ExitCode {
    match load(config) {
        Ok((source, loaded)) => {
            // The plan shows URLs, headers and patterns: values from ${VAR} become ***.
            firelane::telemetry::add_secrets(loaded.secrets.iter().cloned());
            let redact = firelane::telemetry::redact;
            outln!("{source}: config is valid\n");
            out!("{}", redact(&firelane::plan::plan(&loaded.config)));
            if !loaded.warnings.is_empty() {
                outln!();
                for w in &loaded.warnings {
                    outln!("{}", redact(w));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_errors(&e);
            ExitCode::FAILURE
        }
    }
}

/// `check --print-toml`: the TOML translation of a Fluent Bit config, printed only when
/// the config is valid (the TOML is then accepted by `check` as it stands).
fn print_toml_of(config: Option<PathBuf>) -> ExitCode {
    let Some(path) = config.or_else(|| {
        let p = PathBuf::from(config::fluentbit::FIRELENS_PATH);
        p.exists().then_some(p)
    }) else {
        eprintln!("check --print-toml: give the Fluent Bit config with -c");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read config: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if !config::fluentbit::is_classic(&path, &text) {
        eprintln!(
            "check --print-toml: {} is not a Fluent Bit classic config (it is firelane TOML already)",
            path.display()
        );
        return ExitCode::from(2);
    }
    // Validate through the same path as `run` first: a TOML that `check` would refuse is
    // never printed.
    if let Err(e) = config::load_file(&path) {
        print_errors(&e);
        return ExitCode::FAILURE;
    }
    let env = |k: &str| std::env::var(k).ok();
    match config::fluentbit::to_toml(&path, &text, &env) {
        Ok((toml, warnings)) => {
            out!("{toml}");
            for w in warnings {
                eprintln!("{w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_errors(&e);
            ExitCode::FAILURE
        }
    }
}

fn read_arg(arg: &str) -> Result<String, String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}")),
        None => Ok(arg.to_string()),
    }
}

fn test_pattern(pattern: Option<String>, event: Option<String>, batch: bool) -> ExitCode {
    use firelane::route::pattern;
    if batch {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        return match pattern::run_batch(stdin.lock(), stdout.lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("test-pattern: {e}");
                ExitCode::from(2)
            }
        };
    }
    let (Some(p), Some(e)) = (pattern, event) else {
        eprintln!("test-pattern: --pattern and --event are required without --batch");
        return ExitCode::from(2);
    };
    let (p, e) = match (read_arg(&p), read_arg(&e)) {
        (Ok(p), Ok(e)) => (p, e),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("test-pattern: {err}");
            return ExitCode::from(2);
        }
    };
    match pattern::test_pattern_cli(&p, &e) {
        Ok(true) => {
            outln!("match");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            outln!("no match");
            ExitCode::from(1)
        }
        Err(reason) => {
            outln!("invalid: {reason}");
            ExitCode::from(2)
        }
    }
}

fn route(
    config: Option<PathBuf>,
    event: String,
    tag: Option<String>,
    input: Option<String>,
) -> ExitCode {
    let loaded = match load(config) {
        Ok((_, l)) => {
            firelane::telemetry::add_secrets(l.secrets.iter().cloned());
            l
        }
        Err(e) => {
            print_errors(&e);
            return ExitCode::from(2);
        }
    };
    let text = match read_arg(&event) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("route: {e}");
            return ExitCode::from(2);
        }
    };
    match firelane::plan::dry_run(&loaded.config, &text, tag.as_deref(), input.as_deref()) {
        Ok(out) => {
            out!("{}", firelane::telemetry::redact(&out));
            out!(
                "{}",
                firelane::telemetry::redact(&firelane::plan::destinations(
                    &loaded.config,
                    &text,
                    tag.as_deref(),
                    input.as_deref()
                ))
            );
            if std::io::stdout().is_terminal() {
                outln!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("route: {e}");
            ExitCode::from(2)
        }
    }
}
