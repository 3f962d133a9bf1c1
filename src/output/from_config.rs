//! Turns a validated `[outputs.NAME]` table into a running output: its buffer settings,
//! its delivery context and its sink (built by its type, [`super::registry`]). Defaults of
//! the generic keys (`batch`, `buffer`, `retry`, `concurrency`) live here.

use std::path::PathBuf;

use super::core::{DEFAULT_MAX_PARTITIONS, DeadLetter, OutputContext, OutputShutdown};
use super::encode::Encoding;
use super::registry::Started;
use super::retry::RetryPolicy;
use super::sink::BatchSettings;
use crate::buffer::{BufferKind, BufferReader, BufferSettings, BufferWriter};
use crate::config::{BufferSpec, OutputSpec};

/// Memory buffers hold decoded records and count against `runtime.memory_limit`.
pub(crate) const DEFAULT_MEMORY_BUFFER: u64 = 32 << 20;
pub(crate) const DEFAULT_DISK_BUFFER: u64 = 1 << 30;

/// Buffer settings of one output; `dir` is `data_dir/buffers/NAME`.
pub(crate) fn buffer_settings(spec: &BufferSpec, dir: PathBuf) -> BufferSettings {
    let when_full = spec.when_full;
    let mut settings = match spec.kind {
        BufferKind::Memory => {
            BufferSettings::memory(spec.max_size.unwrap_or(DEFAULT_MEMORY_BUFFER), when_full)
        }
        BufferKind::Disk => {
            BufferSettings::disk(dir, spec.max_size.unwrap_or(DEFAULT_DISK_BUFFER), when_full)
        }
    };
    settings.fsync = spec.fsync;
    settings
}

/// Least bytes one record holds in a memory buffer (`Record::approx_size` of an empty
/// record with a short tag), for [`batch_fill_warning`].
const MIN_RECORD_BYTES: u64 = 100;

/// `firelane check`'s warning for a configured batch limit that can never be reached
/// inside the output's buffer: records in an open batch stay in the buffer (and, for a
/// memory buffer, in `runtime.memory_limit`) until it is sent, and the delivery core seals
/// open batches early once they hold a large share of a half-full buffer. So a
/// `batch.max_bytes` above half the room (compressed or not: compressed bytes need at
/// least as many raw ones) or a `batch.max_records` whose smallest records would not fit
/// in half of it is never what seals a batch. Defaults are not checked: only what the
/// user set. `None` when the batch can fill.
pub(crate) fn batch_fill_warning(o: &OutputSpec, memory_limit: u64) -> Option<String> {
    let buffer = buffer_settings(&o.buffer, PathBuf::new());
    // Open batches hold decoded records in memory whatever the buffer type (a disk
    // buffer's records are read back into memory to be batched).
    let kind = match buffer.kind {
        BufferKind::Memory => "memory",
        BufferKind::Disk => "disk",
    };
    let (room, what) = if memory_limit < buffer.max_size {
        (
            memory_limit,
            format!("runtime.memory_limit ({})", human_bytes(memory_limit)),
        )
    } else {
        (
            buffer.max_size,
            format!("its {} {kind} buffer", human_bytes(buffer.max_size)),
        )
    };
    let half = room / 2;
    let mut problems = Vec::new();
    if let Some(b) = o.batch.max_bytes.filter(|&b| b > half) {
        let compressed = o.kind.compressed();
        problems.push(format!(
            "batch.max_bytes = {}{}",
            human_bytes(b),
            if compressed { " (compressed)" } else { "" }
        ));
    }
    if let Some(n) = o
        .batch
        .max_records
        .filter(|&n| n.saturating_mul(MIN_RECORD_BYTES) > half)
    {
        problems.push(format!("batch.max_records = {n}"));
    }
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "output {:?}: {} can never fill within {what}: batches are sealed early when the buffer is half full, or at max_age; raise buffer.max_size (and runtime.memory_limit) or lower the batch limit",
        o.name,
        problems.join(" and ")
    ))
}

/// `32MiB`, `1GiB`, or plain bytes, for messages.
fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if b >= unit && b.is_multiple_of(unit) {
            return format!("{}{name}", b / unit);
        }
    }
    format!("{b}B")
}

/// Batch limits: the sink's defaults, overridden key by key by `batch = { ... }`.
pub(crate) fn batch_settings(o: &OutputSpec) -> BatchSettings {
    let defaults = o.kind.default_batch();
    BatchSettings {
        max_records: o
            .batch
            .max_records
            .map_or(defaults.max_records, |n| n as usize),
        max_bytes: o.batch.max_bytes.map_or(defaults.max_bytes, |n| n as usize),
        max_age: o.batch.max_age.unwrap_or(defaults.max_age),
    }
}

pub(crate) fn retry_policy(o: &OutputSpec) -> RetryPolicy {
    let d = RetryPolicy::default();
    RetryPolicy {
        initial_backoff: o.retry.initial_backoff.unwrap_or(d.initial_backoff),
        max_backoff: o.retry.max_backoff.unwrap_or(d.max_backoff),
        max_elapsed: o.retry.max_elapsed.or(d.max_elapsed),
        max_retries: o.retry.max_retries.or(d.max_retries),
    }
}

/// The delivery context of `o`. `dead_letter` is the writer of the output named in
/// `dead_letter = "..."`, if any.
pub(crate) fn context_for(
    o: &OutputSpec,
    dead_letter: Option<BufferWriter>,
    shutdown: OutputShutdown,
) -> OutputContext {
    let mut ctx = OutputContext::new(&o.name, batch_settings(o));
    ctx.retry = retry_policy(o);
    ctx.concurrency = o.concurrency.unwrap_or(o.kind.default_concurrency()).max(1);
    ctx.max_partitions = o.batch.max_partitions.map_or(DEFAULT_MAX_PARTITIONS, |n| {
        n.clamp(1, usize::MAX as u64) as usize
    });
    ctx.dead_letter = dead_letter
        .zip(o.dead_letter.clone())
        .map(|(writer, name)| DeadLetter { name, writer });
    ctx.shutdown = shutdown;
    ctx.buffer = o.buffer.kind;
    ctx
}

/// How the line-based sinks (stdout, file, http) encode records of `o`.
pub(crate) fn encoding_for(o: &OutputSpec) -> Encoding {
    Encoding {
        tag_key: o.tag_key.clone(),
        time_key: o.time_key.clone(),
    }
}

/// Builds the sink of `o` through its type (checking credentials-free settings, opening
/// files, finding the AWS region) and starts its delivery loop on the buffer `reader`.
pub(crate) async fn start(
    o: &OutputSpec,
    ctx: OutputContext,
    reader: BufferReader,
) -> anyhow::Result<Started> {
    o.kind.start(o, ctx, reader).await
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn warnings(output: &str, runtime: &str) -> Vec<String> {
        let text = format!(
            "{runtime}\n[inputs.f]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\n{output}\n"
        );
        match parse(&text, "t.toml", &|_| None) {
            Ok(l) => l.warnings,
            Err(e) => panic!("{e}"),
        }
    }

    fn fill_warnings(output: &str, runtime: &str) -> Vec<String> {
        warnings(output, runtime)
            .into_iter()
            .filter(|w| w.contains("can never fill"))
            .collect()
    }

    const S3: &str =
        "type = \"s3\"\nbucket = \"logs-bucket\"\nkey = \"k/{uuid}\"\ncompression = \"gzip\"";

    // Issue #9: `batch = { max_bytes = "256MiB", max_age = "10m" }` on S3 could never
    // fill its 32 MiB buffer, and `check` said nothing.
    #[test]
    fn check_warns_when_a_configured_batch_can_never_fill() {
        let w = fill_warnings(
            &format!("{S3}\nbatch = {{ max_bytes = \"256MiB\", max_age = \"10m\" }}"),
            "",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("batch.max_bytes = 256MiB (compressed)")
                && w[0].contains("32MiB memory buffer"),
            "{}",
            w[0]
        );
        // A record count whose smallest records cannot fit half the buffer.
        let w = fill_warnings("type = \"null\"\nbatch = { max_records = 1000000 }", "");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("batch.max_records = 1000000"), "{}", w[0]);
        // The memory limit caps a memory buffer larger than it.
        let w = fill_warnings(
            &format!(
                "{S3}\nbatch = {{ max_bytes = \"96MiB\" }}\nbuffer = {{ max_size = \"1GiB\" }}"
            ),
            "[runtime]\nmemory_limit = \"128MiB\"",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("runtime.memory_limit (128MiB)"), "{}", w[0]);
        // A disk buffer's open batches are in memory too.
        let w = fill_warnings(
            &format!(
                "{S3}\nbatch = {{ max_bytes = \"256MiB\" }}\nbuffer = {{ type = \"disk\", max_size = \"4GiB\" }}"
            ),
            "",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("runtime.memory_limit (128MiB)"), "{}", w[0]);
    }

    #[test]
    fn check_is_quiet_when_the_batch_fits_or_is_default() {
        assert!(fill_warnings(S3, "").is_empty());
        assert!(fill_warnings("type = \"firehose\"\ndelivery_stream = \"s\"", "").is_empty());
        assert!(
            fill_warnings(
                &format!("{S3}\nbatch = {{ max_bytes = \"256MiB\" }}\nbuffer = {{ type = \"disk\", max_size = \"4GiB\" }}"),
                "[runtime]\nmemory_limit = \"1GiB\""
            )
            .is_empty()
        );
        assert!(
            fill_warnings(
                &format!("{S3}\nbatch = {{ max_bytes = \"8MiB\", max_records = 10000 }}"),
                ""
            )
            .is_empty()
        );
    }

    #[test]
    fn shipped_configs_have_batches_that_fill() {
        // A value every variable may take (an S3 bucket name too); a URL for `*_URL`
        // variables (a Slack webhook must be one).
        let env = |k: &str| {
            Some(if k.ends_with("_URL") {
                "https://hooks.example.com/x-value".to_owned()
            } else {
                "x-value".to_owned()
            })
        };
        for (name, text) in [
            (
                "reference.toml",
                include_str!("../../config/reference.toml"),
            ),
            ("s3.toml", include_str!("../../config/s3.toml")),
            (
                "ecs-events.toml",
                include_str!("../../config/ecs-events.toml"),
            ),
            ("firelens.toml", include_str!("../../config/firelens.toml")),
            ("default.toml", crate::config::EMBEDDED_DEFAULT),
        ] {
            let l = parse(text, name, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
            let w: Vec<&String> = l
                .warnings
                .iter()
                .filter(|w| w.contains("can never fill"))
                .collect();
            assert!(w.is_empty(), "{name}: {w:?}");
        }
    }

    #[test]
    fn max_partitions_is_read_and_must_be_positive() {
        let text = format!(
            "[inputs.f]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\n{S3}\nbatch = {{ max_partitions = 16 }}\n"
        );
        let l = parse(&text, "t.toml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let o = &l.config.outputs[0];
        assert_eq!(o.batch.max_partitions, Some(16));
        let ctx = super::context_for(o, None, Default::default());
        assert_eq!(ctx.max_partitions, 16);
        let zero = text.replace("max_partitions = 16", "max_partitions = 0");
        assert!(parse(&zero, "t.toml", &|_| None).is_err());
        let o = &parse(
            &text.replace("batch = { max_partitions = 16 }", ""),
            "t.toml",
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .outputs[0];
        assert_eq!(
            super::context_for(o, None, Default::default()).max_partitions,
            crate::output::core::DEFAULT_MAX_PARTITIONS
        );
    }
}
