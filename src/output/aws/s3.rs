//! S3 output: objects of JSON lines (or raw `log_key` lines), optionally compressed.
//!
//! - Compression runs off the output's loop task: lines collect in raw blocks of
//!   `block_size` (gzip 256 KiB, zstd 1 MiB for the default 32 MiB objects); a full block is compressed on
//!   tokio's blocking pool as an independent gzip member / zstd frame while the loop goes
//!   on reading, so one busy output uses every core. An object is its members / frames
//!   concatenated in record order: a valid gzip file (RFC 1952 2.2) / zstd file (RFC 8878
//!   3.1) that standard decoders read whole. At most `blocks_in_flight_cap` blocks of an
//!   output are on the pool at once; beyond that the loop compresses the block itself.
//! - `max_bytes` is checked against the object that will land: compressed blocks count at
//!   their real size, blocks in flight and uncompressed lines at their worst case
//!   (incompressible). When that bound passes `max_bytes`, the loop takes the real sizes
//!   (waiting for the blocks in flight, then compressing the lines so far), so an object
//!   never exceeds `max_bytes` (unless one record alone does) and is filled to within a
//!   few percent of it. The send waits for the blocks still being compressed.
//! - `compression = "gzip"`: `Content-Encoding: gzip`, key extension `.gz`; `"zstd"`:
//!   `Content-Encoding: zstd`, extension `.zst`. The extension is appended unless the key
//!   template already ends with it. `Content-Type` defaults to `application/x-ndjson`
//!   (`text/plain; charset=utf-8` with `log_key`).
//! - Key: a [`Template`]. Records whose key renders differently (ignoring `{uuid}` and
//!   `{index}`) never share an object: the rendering without them is the partition. A key
//!   with neither `{uuid}` nor `{index}` gets `-{uuid}` inserted before the file extension
//!   (or at the end), because two objects with one key would overwrite each other.
//!   `{uuid}` is a random UUID v4 per object; `{index}` counts objects of this output from 0
//!   and restarts at 0 when the process restarts (not persisted), so use it with `{uuid}`
//!   or time fields. Both are fixed when the object's first record arrives, so a retried
//!   send rewrites the same key (no duplicate objects).
//! - Values from record data cannot shape the key's path ([`ValueEncoding::S3Key`]): an
//!   empty or missing value renders as `-` (no `//`), `%`, `/`, `\` and control characters
//!   inside a value are percent-encoded (`a/b` → `a%2Fb`), and a `.` or `..` path segment
//!   becomes `%2E` / `%2E%2E`. The text the config wrote is kept as it is.
//! - A key longer than S3's 1,024 bytes (a huge tag or field) is shortened, never dropped:
//!   it keeps its first bytes and ends with `-`, 16 hex digits of the SHA-256 of the whole
//!   key (uuid and index included, so objects stay distinct), the template's own file
//!   extension (`.json` of `…/{uuid}.json`) and the compression extension. The rule
//!   is decided per partition (rendering without `{uuid}`/`{index}` plus the most they can
//!   add), so all objects of a partition are named alike; each such record is counted in
//!   `firelane_output_oversize_records_total{output, action="renamed"}`.
//! - `align = "1h"`: an object is closed at the end of the wall-clock window (multiples of
//!   `align` since the Unix epoch, UTC) in which it was opened, and never mixes records
//!   from two windows of record time.
//! - Objects above 16 MiB go as multipart uploads: 8 MiB parts (larger when needed to stay
//!   within 10,000 parts, always ≥ 5 MiB), 4 in flight; a failed upload is aborted.

pub(crate) mod config;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectCannedAcl, StorageClass,
};
use bytes::Bytes;
use futures::StreamExt;

use super::{AwsSettings, BuildError, RecordFormat, classify, require_region, sdk_config};
use crate::event::Record;
use crate::output::compress::compress;
use crate::output::deliver::oversize_counter;
use crate::output::pool::BufferPool;
use crate::output::sink::{BatchBuilder, BatchSettings, Failure, Push, SendResult, Sink};
use crate::output::template::{Dynamic, Template, ValueEncoding};

/// Objects larger than this go as multipart uploads.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// S3's smallest part (except the last).
pub(crate) const MIN_PART: usize = 5 * 1024 * 1024;
pub(crate) const PREFERRED_PART: usize = 8 * 1024 * 1024;
pub(crate) const MAX_PARTS: usize = 10_000;
/// Objects are held in memory until sent; a ceiling keeps one misconfigured `max_bytes`
/// from asking for more than a sidecar can hold.
pub(crate) const MAX_OBJECT_BYTES: usize = 5 * 1024 * 1024 * 1024;
/// Longest S3 key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
const UPLOADS_IN_FLIGHT: usize = 4;
/// Room kept for the compressor's end of stream (gzip trailer, zstd epilogue).
const TRAILER_RESERVE: usize = 64;

/// `compression`: one definition for every component ([`crate::config::Compression`]).
pub use crate::config::Compression;

#[derive(Clone, Debug, PartialEq)]
/// An `[outputs.NAME]` of `type = "s3"`, validated (PutObject).
pub struct S3Config {
    /// The output's name (`[outputs.NAME]`), for log lines.
    pub name: String,
    /// `bucket`: the bucket's name.
    pub bucket: String,
    /// `key` template (strftime, `{tag}`, `{uuid}`, record fields); keys over S3's 1024
    /// bytes are shortened with a hash.
    pub key: String,
    /// `compression`: none, gzip or zstd; sets `Content-Encoding`.
    pub compression: Compression,
    /// `storage_class`, e.g. `STANDARD_IA`; `None` = the bucket's default.
    pub storage_class: Option<String>,
    /// `content_type` of every object; `None` = `application/x-ndjson`, or
    /// `text/plain; charset=utf-8` with `log_key`.
    pub content_type: Option<String>,
    /// Canned ACL, e.g. `bucket-owner-full-control`.
    pub acl: Option<String>,
    /// What a record becomes as a line (JSON line or `log_key`).
    pub format: RecordFormat,
    /// `align`: close objects on clock-aligned windows of this length (must divide a day).
    pub align: Option<Duration>,
    /// `force_path_style`: path-style URLs, as most local S3 servers need.
    pub force_path_style: bool,
    /// Region, endpoint and role.
    pub aws: AwsSettings,
    /// Object limits: `max_bytes` counts the compressed bytes that land.
    pub batch: BatchSettings,
}

/// Suggested defaults when the user gives no `batch` table.
pub(crate) fn default_batch() -> BatchSettings {
    BatchSettings {
        max_records: usize::MAX,
        max_bytes: 32 * 1024 * 1024,
        max_age: Duration::from_secs(300),
    }
}

struct Shared {
    name: String,
    client: aws_sdk_s3::Client,
    bucket: String,
    key: Template,
    extension: &'static str,
    compression: Compression,
    content_type: String,
    storage_class: Option<StorageClass>,
    acl: Option<ObjectCannedAcl>,
    format: RecordFormat,
    align_ns: Option<i64>,
    max_bytes: usize,
    max_records: usize,
    next_index: AtomicU64,
    /// Blocks of this output on the blocking pool now, and the most allowed
    /// ([`blocks_in_flight_cap`]).
    blocks_in_flight: AtomicUsize,
    blocks_in_flight_cap: usize,
    /// Raw block buffers, reused once their block is compressed (compressed objects only).
    raw_blocks: BufferPool,
    /// Compressed / raw size of the last block compressed, in millionths: the estimate
    /// for lines not yet compressed in an object with no block done yet.
    ratio_ppm: AtomicU32,
    /// `firelane_output_oversize_records_total{output, action="renamed"}`.
    renamed: metrics::Counter,
    /// What a shortened key keeps of its end besides the compression extension.
    file_extension: String,
}

/// The S3 destination: one PutObject per finished object.
pub struct S3Sink {
    shared: Arc<Shared>,
}

/// Builds the sink: SDK client (region, endpoint, role, path style) and the key template.
///
/// # Errors
/// [`BuildError`] for a missing region or a key template that does not parse.
pub async fn build(cfg: S3Config) -> Result<S3Sink, BuildError> {
    let conf = sdk_config(&cfg.aws).await;
    require_region(&conf, &cfg.name)?;
    let mut b = aws_sdk_s3::config::Builder::from(&conf).force_path_style(cfg.force_path_style);
    if let Some(url) = &cfg.aws.endpoint_url {
        b = b.endpoint_url(url);
    }
    let client = aws_sdk_s3::Client::from_conf(b.build());
    build_with_client(cfg, client)
}

fn invalid(cfg: &S3Config, key: &'static str, value: &str, reason: String) -> BuildError {
    BuildError::Invalid {
        output: cfg.name.clone(),
        key,
        value: value.to_string(),
        reason,
    }
}

/// Builds the sink around an existing client (tests, or a shared client).
pub(crate) fn build_with_client(
    cfg: S3Config,
    client: aws_sdk_s3::Client,
) -> Result<S3Sink, BuildError> {
    if cfg.bucket.is_empty() {
        return Err(invalid(&cfg, "bucket", "", "must not be empty".into()));
    }
    let template_err = |source| BuildError::Template {
        output: cfg.name.clone(),
        key: "key",
        source,
    };
    let parsed = Template::parse(&cfg.key).map_err(template_err)?;
    let key = if parsed.has_uuid() || parsed.has_index() {
        parsed
    } else {
        Template::parse(&with_uuid(&cfg.key)).map_err(template_err)?
    }
    .with_encoding(ValueEncoding::S3Key);
    if let Some(w) = config::index_warning(&cfg.key) {
        tracing::warn!(output = %cfg.name, "{w}");
    }
    let storage_class = match &cfg.storage_class {
        None => None,
        Some(s) if StorageClass::values().contains(&s.as_str()) => {
            Some(StorageClass::from(s.as_str()))
        }
        Some(s) => {
            let reason = format!("expected one of {}", StorageClass::values().join(", "));
            return Err(invalid(&cfg, "storage_class", s, reason));
        }
    };
    let acl = match &cfg.acl {
        None => None,
        Some(s) if ObjectCannedAcl::values().contains(&s.as_str()) => {
            Some(ObjectCannedAcl::from(s.as_str()))
        }
        Some(s) => {
            let reason = format!("expected one of {}", ObjectCannedAcl::values().join(", "));
            return Err(invalid(&cfg, "acl", s, reason));
        }
    };
    let align_ns = match cfg.align {
        None => None,
        Some(d)
            if d >= Duration::from_secs(1)
                && d.as_secs() <= 7 * 86_400
                && d.subsec_nanos() == 0 =>
        {
            Some(d.as_secs() as i64 * 1_000_000_000)
        }
        Some(d) => {
            let reason = "must be whole seconds between 1s and 7d".into();
            return Err(invalid(&cfg, "align", &format!("{d:?}"), reason));
        }
    };
    let ext = cfg.compression.extension();
    let extension = if cfg.key.ends_with(ext) { "" } else { ext };
    let content_type = cfg.content_type.clone().unwrap_or_else(|| {
        if cfg.format.log_key.is_some() {
            "text/plain; charset=utf-8"
        } else {
            "application/x-ndjson"
        }
        .to_string()
    });
    let max_bytes = cfg.batch.max_bytes.clamp(1, MAX_OBJECT_BYTES);
    let shared = Shared {
        renamed: oversize_counter(&cfg.name, "renamed"),
        file_extension: file_extension(&key),
        name: cfg.name,
        client,
        bucket: cfg.bucket,
        key,
        extension,
        compression: cfg.compression,
        content_type,
        storage_class,
        acl,
        format: cfg.format,
        align_ns,
        max_bytes,
        max_records: cfg.batch.max_records.max(1),
        next_index: AtomicU64::new(0),
        blocks_in_flight: AtomicUsize::new(0),
        blocks_in_flight_cap: blocks_in_flight_cap(),
        raw_blocks: raw_block_pool(cfg.compression, max_bytes),
        ratio_ppm: AtomicU32::new(1_000_000),
    };
    Ok(S3Sink {
        shared: Arc::new(shared),
    })
}

impl Shared {
    fn note_ratio(&self, out: usize, raw: usize) {
        if raw > 0 {
            let ppm = (out as u128 * 1_000_000 / raw as u128).clamp(1, u32::MAX as u128);
            self.ratio_ppm.store(ppm as u32, Ordering::Relaxed);
        }
    }

    /// True when objects of the partition rendered as `partition` (no `{uuid}`/`{index}`)
    /// could get a key above [`MAX_KEY_BYTES`], so their keys are shortened.
    fn renames(&self, partition: &str) -> bool {
        partition.len() + self.key.dynamic_max_len() + self.extension.len() > MAX_KEY_BYTES
    }
}

/// Shortens `key` (without the compression extension) to fit in [`MAX_KEY_BYTES`] with
/// `-HASH`, the template's own file extension `tail` (when the key ends with it) and
/// `extension`: keeps the longest prefix that fits, not cutting a UTF-8 character or a `%XX`
/// escape, then `-`, `hash`, `tail`, `extension`.
fn shorten_key(key: &mut String, hash: &str, tail: &str, extension: &str) {
    let tail = if key.ends_with(tail) { tail } else { "" };
    key.truncate(key.len() - tail.len());
    let mut keep = super::floor_char_boundary(
        key,
        MAX_KEY_BYTES.saturating_sub(1 + hash.len() + tail.len() + extension.len()),
    );
    // An escape cut in two (`%2` of `%2F`) would read as a different character.
    for back in 1..=2 {
        if keep >= back && key.as_bytes()[keep - back] == b'%' {
            keep -= back;
            break;
        }
    }
    key.truncate(keep);
    key.push('-');
    key.push_str(hash);
    key.push_str(tail);
    key.push_str(extension);
}

/// The file extension a shortened key keeps: the template's final literal from its last
/// `.` (`.json` of `{tag}-{uuid}.json`), when that is a short extension.
fn file_extension(key: &Template) -> String {
    let lit = key.trailing_literal();
    match lit.rfind('.') {
        Some(i) if lit.len() - i <= 16 && !lit[i..].contains(['/', '%']) && lit.len() > i + 1 => {
            lit[i..].to_string()
        }
        _ => String::new(),
    }
}

/// 16 hex digits of the SHA-256 of `text`: stable across processes and versions, and not
/// steerable by whoever chooses the tag.
fn key_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut h, b| {
            let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{b:02x}"));
            h
        })
}

/// Inserts `-{uuid}` before the extension of the key's last path part (or at its end).
fn with_uuid(key: &str) -> String {
    let base_start = key.rfind('/').map_or(0, |i| i + 1);
    // The extension starts after the last placeholder: a `.` inside one (`{detail.group}`)
    // is part of a field path.
    let base_start = base_start + key[base_start..].rfind('}').map_or(0, |i| i + 1);
    let base = &key[base_start..];
    match base.find('.') {
        Some(dot) if !base[dot..].contains(['{', '%', '$']) => {
            let at = base_start + dot;
            format!("{}-{{uuid}}{}", &key[..at], &key[at..])
        }
        _ => format!("{key}-{{uuid}}"),
    }
}

/// Part size for a multipart upload of `len` bytes: ≥ 5 MiB, ≤ 10,000 parts.
pub(crate) fn part_size(len: usize) -> usize {
    const MIB: usize = 1024 * 1024;
    let needed = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(PREFERRED_PART).max(MIN_PART)
}

/// Raw bytes per compressed block: each block becomes one gzip member / zstd frame,
/// compressed on tokio's blocking pool. Gzip: 256 KiB, which loses nothing measurable to
/// deflate's 32 KiB window. Zstd: 1 MiB, because zstd finds repeats up to its window
/// (2 MiB at level 3) and smaller independent frames would lose them. Smaller objects get
/// smaller blocks (at least 32 / 8 per object) so that they too are compressed off the
/// output's loop task.
fn block_size(c: Compression, max_bytes: usize) -> usize {
    match c {
        Compression::Zstd => (max_bytes / 8).clamp(16 * 1024, 1024 * 1024),
        Compression::Gzip | Compression::None => (max_bytes / 32).clamp(16 * 1024, 256 * 1024),
    }
}

/// Room past `block_size` in a raw block's buffer for the line that fills it: lines up to
/// this size never make the buffer grow (and so reallocate and copy the block).
const BLOCK_SLACK: usize = 64 * 1024;

/// Spare raw blocks an output keeps for reuse (src/output/pool.rs): enough for the blocks
/// being compressed on a small host plus the one being filled, and about 1 MiB in all
/// (4 gzip blocks, 2 zstd blocks), since what a pool holds is outside the memory budget.
/// A block that grew past its slack for a long line is freed, not kept.
fn raw_block_pool(c: Compression, max_bytes: usize) -> BufferPool {
    let block = block_size(c, max_bytes) + BLOCK_SLACK;
    BufferPool::new(((1024 * 1024) / block).clamp(2, 4), block)
}

/// Most bytes `raw` input bytes can become as one gzip member / zstd frame
/// (incompressible input plus header, trailer and per-block overheads, with margin).
fn worst_case(raw: usize) -> usize {
    raw + raw / 128 + 32
}

/// Blocks of one output being compressed on the blocking pool at once, at most. At the
/// cap the loop task compresses the next block itself, which bounds the memory in flight
/// and slows the loop (and so the buffer and the inputs) to what the cores can compress.
fn blocks_in_flight_cap() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// The result of a block compressed on the blocking pool, waited for by the loop
/// (blocking, only at the end of an object) or by the send (async).
#[derive(Default)]
struct Slot {
    result: parking_lot::Mutex<Option<Result<Bytes, String>>>,
    done: parking_lot::Condvar,
    notify: tokio::sync::Notify,
}

impl Slot {
    /// Sets the result unless one is set already.
    fn set(&self, r: Result<Bytes, String>) {
        {
            let mut g = self.result.lock();
            if g.is_some() {
                return;
            }
            *g = Some(r);
        }
        self.done.notify_all();
        self.notify.notify_waiters();
    }

    fn try_get(&self) -> Option<Result<Bytes, String>> {
        self.result.lock().clone()
    }

    /// Blocks the calling thread until the block is compressed (one block's compression
    /// time at most: it is already running on the pool).
    fn wait(&self) -> Result<Bytes, String> {
        let mut g = self.result.lock();
        loop {
            if let Some(r) = g.as_ref() {
                return r.clone();
            }
            self.done.wait(&mut g);
        }
    }

    /// Waits for the block without blocking the task; cancel-safe.
    async fn get(&self) -> Result<Bytes, String> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_get() {
                return r;
            }
            notified.await;
        }
    }
}

/// Fills its slot with an error if the compression task is dropped without running
/// (runtime shutting down), so that nothing waits forever.
struct Fill(Arc<Slot>);

impl Drop for Fill {
    fn drop(&mut self) {
        self.0.set(Err(
            "the compression task did not run (shutting down)".into()
        ));
    }
}

/// Releases one of the output's in-flight block slots.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.blocks_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One gzip member / zstd frame of an object.
enum Block {
    Done(Bytes),
    /// On the blocking pool, from `raw` bytes of lines.
    Pending {
        raw: usize,
        slot: Arc<Slot>,
    },
}

/// An object being filled: lines compressed in blocks on the blocking pool.
pub struct S3Builder {
    shared: Arc<Shared>,
    records: usize,
    /// Lines not yet handed to a compressor (without compression: the whole object).
    raw: Vec<u8>,
    /// The object so far, in record order, except `raw`.
    blocks: Vec<Block>,
    /// Compressed bytes and raw bytes of the `Done` blocks.
    done_bytes: usize,
    done_raw: usize,
    /// Raw bytes of the `Pending` blocks, and the most they can compress to.
    pending_raw: usize,
    pending_worst: usize,
    /// Index of the first `Pending` block (blocks finish about in order).
    first_pending: usize,
    block_size: usize,
    error: Option<String>,
    key: Option<String>,
    window: Option<i64>,
    flush_at: Option<SystemTime>,
}

/// One finished object: its blocks, some maybe still being compressed; [`S3Batch::body`]
/// waits for them.
pub struct S3Batch {
    /// The object key, rendered.
    pub key: String,
    /// Records in the object.
    pub records: usize,
    blocks: parking_lot::Mutex<Vec<Block>>,
    body: tokio::sync::OnceCell<Result<Bytes, String>>,
}

impl S3Batch {
    /// The object's bytes: the blocks' members / frames concatenated, once every block is
    /// compressed. `Err` if a compressor failed. Cancel-safe; computed once.
    pub async fn body(&self) -> Result<Bytes, String> {
        self.body
            .get_or_init(|| async {
                let slots: Vec<Arc<Slot>> = self
                    .blocks
                    .lock()
                    .iter()
                    .filter_map(|b| match b {
                        Block::Pending { slot, .. } => Some(Arc::clone(slot)),
                        Block::Done(_) => None,
                    })
                    .collect();
                for slot in &slots {
                    slot.get().await?;
                }
                // No await from here on: the blocks are taken and the body set together,
                // so the compressed bytes are not held twice.
                let blocks = std::mem::take(&mut *self.blocks.lock());
                let mut parts = Vec::with_capacity(blocks.len());
                for b in blocks {
                    parts.push(match b {
                        Block::Done(bytes) => bytes,
                        Block::Pending { slot, .. } => slot.wait()?,
                    });
                }
                if parts.len() == 1 {
                    return Ok(parts.swap_remove(0));
                }
                let mut body = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for p in &parts {
                    body.extend_from_slice(p);
                }
                Ok(body.freeze())
            })
            .await
            .clone()
    }
}

impl S3Builder {
    /// Most bytes the object can land as: exact for compressed blocks, worst case for the
    /// rest.
    fn landed(&self) -> usize {
        if self.shared.compression == Compression::None {
            return self.raw.len();
        }
        let tail = if self.raw.is_empty() {
            0
        } else {
            worst_case(self.raw.len())
        };
        self.done_bytes + self.pending_worst + tail + TRAILER_RESERVE
    }

    /// Takes the results of blocks the pool has finished; with `wait`, waits for the
    /// oldest pending one first. `false` if a compressor failed.
    fn collect(&mut self, wait: bool) -> bool {
        let mut waited = !wait;
        let mut first_pending = None;
        for (i, b) in self.blocks.iter_mut().enumerate().skip(self.first_pending) {
            let Block::Pending { raw, slot } = b else {
                continue;
            };
            let got = if waited {
                slot.try_get()
            } else {
                waited = true;
                Some(slot.wait())
            };
            match got {
                None => {
                    first_pending.get_or_insert(i);
                }
                Some(Ok(bytes)) => {
                    self.done_bytes += bytes.len();
                    self.done_raw += *raw;
                    self.pending_raw -= *raw;
                    self.pending_worst -= worst_case(*raw);
                    *b = Block::Done(bytes);
                }
                Some(Err(e)) => {
                    self.error = Some(e);
                    return false;
                }
            }
        }
        self.first_pending = first_pending.unwrap_or(self.blocks.len());
        true
    }

    /// Compresses `self.raw[..upto]` as a block, on the pool or (at the output's cap of
    /// blocks in flight, without a runtime, or with `inline`) here.
    /// `last`: the object is finished, no block follows.
    fn submit(&mut self, upto: usize, inline: bool, last: bool) {
        if upto == 0 {
            return;
        }
        let s = &self.shared;
        let raw = if upto == self.raw.len() && last {
            // Nothing follows: no buffer for a next block.
            std::mem::take(&mut self.raw)
        } else {
            let rest = self.raw.split_off(upto);
            let capacity = (self.block_size + BLOCK_SLACK).max(rest.len());
            let raw = std::mem::replace(&mut self.raw, s.raw_blocks.take(capacity));
            self.raw.extend_from_slice(&rest);
            raw
        };
        let c = s.compression;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let slot_free =
            !inline && s.blocks_in_flight.fetch_add(1, Ordering::AcqRel) < s.blocks_in_flight_cap;
        if !inline && !slot_free {
            s.blocks_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        match runtime.filter(|_| slot_free) {
            Some(rt) => {
                let slot = Arc::new(Slot::default());
                let fill = Fill(Arc::clone(&slot));
                let in_flight = InFlight(Arc::clone(s));
                let len = raw.len();
                rt.spawn_blocking(move || {
                    let r = compress(c, &raw).map(Bytes::from);
                    if let Ok(out) = &r {
                        in_flight.0.note_ratio(out.len(), raw.len());
                    }
                    in_flight.0.raw_blocks.give(raw);
                    drop(in_flight);
                    fill.0.set(r.map_err(|e| e.to_string()));
                });
                self.pending_raw += len;
                self.pending_worst += worst_case(len);
                self.blocks.push(Block::Pending { raw: len, slot });
            }
            None => {
                if slot_free {
                    s.blocks_in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                match compress(c, &raw) {
                    Ok(out) => {
                        s.note_ratio(out.len(), raw.len());
                        self.done_bytes += out.len();
                        self.done_raw += raw.len();
                        self.blocks.push(Block::Done(Bytes::from(out)));
                    }
                    Err(e) => self.error = Some(e.to_string()),
                }
                s.raw_blocks.give(raw);
            }
        }
    }

    /// The line just written at `self.raw[line_start..]` took the object past
    /// `max_bytes` at its worst case: make the size exact where it is not (finished
    /// blocks, then waiting for those in flight, then compressing the lines before this
    /// one) until it fits. `false`: the object is full.
    fn make_room(&mut self, line_start: usize) -> bool {
        let max = self.shared.max_bytes;
        if self.shared.compression == Compression::None {
            return false;
        }
        if !self.collect(false) {
            return false;
        }
        while self.landed() > max && self.pending_raw > 0 {
            if !self.collect(true) {
                return false;
            }
        }
        if self.landed() > max && line_start > 0 {
            self.submit(line_start, true, false);
            if self.error.is_some() {
                return false;
            }
        }
        self.landed() <= max
    }

    fn open(&mut self, record: &Record) {
        let s = &self.shared;
        let uuid = uuid::Uuid::new_v4();
        let mut uuid_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let uuid = uuid.hyphenated().encode_lower(&mut uuid_buf);
        let index = s
            .key
            .has_index()
            .then(|| s.next_index.fetch_add(1, Ordering::Relaxed));
        let mut key = s.key.render_to_string(
            record,
            Dynamic {
                uuid: Some(uuid),
                index,
                preview: false,
            },
        );
        if s.renames(&s.key.render_to_string(record, Dynamic::default())) {
            let hash = key_hash(&key);
            shorten_key(&mut key, &hash, &s.file_extension, s.extension);
        } else {
            key.push_str(s.extension);
        }
        self.key = Some(key);
        if let Some(align) = s.align_ns {
            self.window = Some(record.time_ns.div_euclid(align));
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let now_ns = now.as_nanos().min(i64::MAX as u128) as i64;
            let end = (now_ns.div_euclid(align) + 1).saturating_mul(align);
            self.flush_at = Some(UNIX_EPOCH + Duration::from_nanos(end.max(0) as u64));
        }
    }
}

impl Drop for S3Builder {
    /// The raw block being filled goes back to the output's pool (empty once finished).
    fn drop(&mut self) {
        if self.shared.compression != Compression::None {
            self.shared.raw_blocks.give(std::mem::take(&mut self.raw));
        }
    }
}

impl BatchBuilder for S3Builder {
    type Batch = S3Batch;

    fn push(&mut self, record: &Record) -> Push {
        if self.error.is_some() {
            return if self.records == 0 {
                Push::Rejected("compression_error")
            } else {
                Push::Full
            };
        }
        let s = Arc::clone(&self.shared);
        if self.records > 0 {
            if self.records >= s.max_records {
                return Push::Full;
            }
            if let (Some(align), Some(w)) = (s.align_ns, self.window)
                && record.time_ns.div_euclid(align) != w
            {
                return Push::Full;
            }
        }
        let start = self.raw.len();
        s.format.write_line(record, &mut self.raw);
        let line_len = self.raw.len() - start;
        if self.records > 0 && self.landed() > s.max_bytes && !self.make_room(start) {
            // The line is the tail of `raw` (make_room may have compressed what preceded it).
            self.raw.truncate(self.raw.len() - line_len);
            if let Some(e) = &self.error {
                crate::warn_limited!(
                    "s3_compression",
                    "output {}: compressor failed: {e}",
                    s.name
                );
            }
            return Push::Full;
        }
        if self.records == 0 {
            self.open(record);
        }
        self.records += 1;
        if s.compression != Compression::None && self.raw.len() >= self.block_size {
            let all = self.raw.len();
            self.submit(all, false, false);
        }
        if let Some(e) = &self.error {
            crate::warn_limited!(
                "s3_compression",
                "output {}: compressor failed: {e}",
                s.name
            );
        }
        Push::Added
    }

    fn len(&self) -> usize {
        self.records
    }

    /// Exact for compressed blocks; blocks in flight and uncompressed lines are estimated
    /// at the ratio this object (else this output) has had so far.
    fn bytes(&self) -> usize {
        let rest = self.pending_raw + self.raw.len();
        if self.shared.compression == Compression::None {
            return rest;
        }
        let (out, raw) = if self.done_raw > 0 {
            (self.done_bytes as u128, self.done_raw as u128)
        } else {
            let ppm = self.shared.ratio_ppm.load(Ordering::Relaxed);
            (ppm as u128, 1_000_000u128)
        };
        self.done_bytes + (rest as u128 * out / raw) as usize
    }

    fn flush_at(&self) -> Option<SystemTime> {
        self.flush_at
    }

    fn finish(mut self) -> S3Batch {
        let key = self.key.take().unwrap_or_default();
        if self.error.is_none() && !self.raw.is_empty() {
            if self.shared.compression == Compression::None {
                let body = Bytes::from(std::mem::take(&mut self.raw));
                self.blocks.push(Block::Done(body));
            } else {
                let all = self.raw.len();
                self.submit(all, false, true);
            }
        }
        let body = tokio::sync::OnceCell::new();
        if let Some(e) = self.error.take() {
            let _ = body.set(Err(e));
            self.blocks.clear();
        }
        S3Batch {
            key,
            records: self.records,
            blocks: parking_lot::Mutex::new(std::mem::take(&mut self.blocks)),
            body,
        }
    }
}

impl Sink for S3Sink {
    type Builder = S3Builder;
    /// The object key rendered without `{uuid}` and `{index}` (shortened like the key
    /// when it could exceed S3's limit).
    type Partition = String;

    fn partition(&self, record: &Record) -> Result<String, &'static str> {
        let s = &self.shared;
        let mut p = s.key.render_to_string(record, Dynamic::default());
        if p.is_empty() {
            return Err("s3_key_empty");
        }
        if s.renames(&p) {
            s.renamed.increment(1);
            // The partition is only a map key: bound it too, the hash keeps it distinct.
            let hash = key_hash(&p);
            shorten_key(&mut p, &hash, "", "");
        }
        Ok(p)
    }

    /// What one open object holds besides its records: the raw block being filled
    /// (`block_size`: 256 KiB gzip, 1 MiB zstd for objects of 8 MiB and more) and 64 KiB
    /// for the line being written and the compressed blocks' slack. The compressors
    /// themselves live on the blocking pool, at most `blocks_in_flight_cap` per output (a
    /// deflate state about 300 KiB, a zstd level 3 context about 1 MiB, kept per pool
    /// thread), not per open object.
    fn open_batch_overhead(&self) -> usize {
        let s = &self.shared;
        match s.compression {
            Compression::None => 0,
            c => block_size(c, s.max_bytes) + (64 << 10),
        }
    }

    fn new_batch(&self, _partition: &String) -> S3Builder {
        let s = Arc::clone(&self.shared);
        let block_size = block_size(s.compression, s.max_bytes);
        let raw = match s.compression {
            // Uncompressed, the object is one buffer that becomes the body.
            Compression::None => Vec::new(),
            _ => s.raw_blocks.take(block_size + BLOCK_SLACK),
        };
        S3Builder {
            records: 0,
            raw,
            blocks: Vec::new(),
            done_bytes: 0,
            done_raw: 0,
            pending_raw: 0,
            pending_worst: 0,
            first_pending: 0,
            block_size,
            error: None,
            key: None,
            window: None,
            flush_at: None,
            shared: s,
        }
    }

    async fn send(&self, _partition: &String, batch: &S3Batch) -> SendResult {
        let body = match batch.body().await {
            Ok(body) => body,
            Err(e) => return SendResult::Failed(Failure::permanent("compression_error", e)),
        };
        let result = if body.len() > MULTIPART_THRESHOLD {
            self.multipart(batch, body).await
        } else {
            self.put(batch, body).await
        };
        match result {
            Ok(()) => SendResult::Delivered,
            Err(f) => SendResult::Failed(f),
        }
    }
}

impl S3Sink {
    /// Where `record` would be written, without writing it: `s3://BUCKET/KEY`, rendered and
    /// encoded exactly as the sink does, with `{uuid}` / `{index}` shown as placeholders (they
    /// are chosen per object). `Err` is the reason the sink would refuse the record.
    /// A key that would be shortened shows `{hash}` where its hash goes (it covers the
    /// per-object uuid/index, so it is only known per object).
    pub(crate) fn destination(&self, record: &Record) -> Result<String, &'static str> {
        let s = &self.shared;
        let p = s.key.render_to_string(record, Dynamic::default());
        if p.is_empty() {
            return Err("s3_key_empty");
        }
        let mut key = s.key.render_to_string(record, Dynamic::preview());
        if s.renames(&p) {
            shorten_key(&mut key, "{hash}", &s.file_extension, s.extension);
        } else {
            key.push_str(s.extension);
        }
        Ok(format!("s3://{}/{key}", s.bucket))
    }
}

fn with_context(mut f: Failure, what: &str, bucket: &str, key: &str) -> Failure {
    f.message = format!("{what} s3://{bucket}/{key}: {}", f.message);
    f
}

impl S3Sink {
    async fn put(&self, batch: &S3Batch, body: Bytes) -> Result<(), Failure> {
        let s = &self.shared;
        s.client
            .put_object()
            .bucket(&s.bucket)
            .key(&batch.key)
            .body(ByteStream::from(body))
            .content_type(&s.content_type)
            .set_content_encoding(s.compression.content_encoding().map(String::from))
            .set_storage_class(s.storage_class.clone())
            .set_acl(s.acl.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| with_context(classify(&e), "PutObject", &s.bucket, &batch.key))
    }

    async fn multipart(&self, batch: &S3Batch, body: Bytes) -> Result<(), Failure> {
        let s = &self.shared;
        let created = s
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(&batch.key)
            .content_type(&s.content_type)
            .set_content_encoding(s.compression.content_encoding().map(String::from))
            .set_storage_class(s.storage_class.clone())
            .set_acl(s.acl.clone())
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| {
                with_context(classify(&e), "CreateMultipartUpload", &s.bucket, &batch.key)
            })?;
        let Some(upload_id) = created.upload_id().map(String::from) else {
            return Err(Failure::retryable(
                "bad_response",
                format!(
                    "CreateMultipartUpload s3://{}/{}: no upload id",
                    s.bucket, batch.key
                ),
            ));
        };
        match self.upload_parts(batch, &body, &upload_id).await {
            Ok(()) => Ok(()),
            Err(f) => {
                let abort = s
                    .client
                    .abort_multipart_upload()
                    .bucket(&s.bucket)
                    .key(&batch.key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                if let Err(e) = abort {
                    crate::warn_limited!(
                        "s3_abort_multipart",
                        "output {}: could not abort upload {upload_id} of s3://{}/{} (a lifecycle rule for incomplete uploads cleans it up): {}",
                        s.name,
                        s.bucket,
                        batch.key,
                        classify(&e).message
                    );
                }
                Err(f)
            }
        }
    }

    async fn upload_parts(
        &self,
        batch: &S3Batch,
        body: &Bytes,
        upload_id: &str,
    ) -> Result<(), Failure> {
        let s = &self.shared;
        let size = part_size(body.len());
        let pieces: Vec<(i32, Bytes)> = (0..body.len().div_ceil(size))
            .map(|i| {
                let end = ((i + 1) * size).min(body.len());
                (i as i32 + 1, body.slice(i * size..end))
            })
            .collect();
        let uploads = pieces.into_iter().map(|(number, body)| async move {
            let out = s
                .client
                .upload_part()
                .bucket(&s.bucket)
                .key(&batch.key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| with_context(classify(&e), "UploadPart", &s.bucket, &batch.key))?;
            Ok::<_, Failure>(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(String::from))
                    .set_checksum_crc32(out.checksum_crc32().map(String::from))
                    .build(),
            )
        });
        let results: Vec<Result<CompletedPart, Failure>> = futures::stream::iter(uploads)
            .buffered(UPLOADS_IN_FLIGHT)
            .collect()
            .await;
        let parts = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        s.client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(&batch.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                with_context(
                    classify(&e),
                    "CompleteMultipartUpload",
                    &s.bucket,
                    &batch.key,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Read;

    fn client() -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    fn cfg(key: &str, compression: Compression, max_bytes: usize) -> S3Config {
        S3Config {
            name: "t".into(),
            bucket: "b".into(),
            key: key.into(),
            compression,
            storage_class: None,
            content_type: None,
            acl: None,
            format: RecordFormat::default(),
            align: None,
            force_path_style: true,
            aws: AwsSettings::default(),
            batch: BatchSettings {
                max_records: usize::MAX,
                max_bytes,
                max_age: Duration::from_secs(60),
            },
        }
    }

    fn sink(c: S3Config) -> S3Sink {
        build_with_client(c, client()).unwrap()
    }

    /// Pseudo-random text that compresses moderately, like real logs.
    fn rec(i: u64) -> Record {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let noise: String = (0..40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b'a' + (x % 26) as u8) as char
            })
            .collect();
        let serde_json::Value::Object(m) =
            json!({"log": format!("GET /item/{i} 200 {noise}"), "n": i})
        else {
            unreachable!()
        };
        Record::new("app-firelens-1", 1_795_417_689_000_000_000 + i as i64, m)
    }

    fn decompress(c: Compression, body: &[u8]) -> String {
        let mut s = String::new();
        match c {
            Compression::None => s = String::from_utf8(body.to_vec()).unwrap(),
            Compression::Gzip => {
                flate2::read::MultiGzDecoder::new(body)
                    .read_to_string(&mut s)
                    .unwrap();
            }
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(body)
                    .unwrap()
                    .read_to_string(&mut s)
                    .unwrap();
            }
        }
        s
    }

    /// The object's bytes, waiting for blocks still on the pool.
    fn body(batch: &S3Batch) -> Bytes {
        futures::executor::block_on(batch.body()).unwrap()
    }

    /// A runtime whose blocking pool compresses blocks (entered by the caller).
    fn pool() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    /// Gzip members / zstd frames in `body`, by walking the frames (zstd) or by reading
    /// members one at a time (gzip).
    fn members(c: Compression, body: &[u8]) -> usize {
        let mut rest = body;
        let mut n = 0;
        while !rest.is_empty() {
            let len = match c {
                Compression::None => rest.len(),
                Compression::Gzip => {
                    let mut d = flate2::bufread::GzDecoder::new(rest);
                    std::io::copy(&mut d, &mut std::io::sink()).unwrap();
                    let left = d.into_inner().len();
                    rest.len() - left
                }
                Compression::Zstd => zstd::zstd_safe::find_frame_compressed_size(rest).unwrap(),
            };
            rest = &rest[len..];
            n += 1;
        }
        n
    }

    /// Fills objects of every compression and two sizes; with `on_pool`, inside a runtime
    /// so that blocks are compressed on its blocking pool.
    fn objects_fit_and_hold_every_record(on_pool: bool) {
        let rt = pool();
        let _entered = on_pool.then(|| rt.enter());
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            for max_bytes in [64 * 1024, 1024 * 1024] {
                let sink = sink(cfg("logs/{uuid}", c, max_bytes));
                let mut batches = Vec::new();
                let mut b = sink.new_batch(&String::new());
                let total = 40_000u64;
                for i in 0..total {
                    let r = rec(i);
                    match b.push(&r) {
                        Push::Added => {}
                        Push::Full => {
                            batches.push(
                                std::mem::replace(&mut b, sink.new_batch(&String::new())).finish(),
                            );
                            assert_eq!(b.push(&r), Push::Added);
                        }
                        other => panic!("{other:?}"),
                    }
                }
                batches.push(b.finish());
                let mut lines = 0u64;
                for (n, batch) in batches.iter().enumerate() {
                    let body = body(batch);
                    assert!(
                        body.len() <= max_bytes,
                        "{c:?} {} > {max_bytes}",
                        body.len()
                    );
                    if n + 1 < batches.len() {
                        // Filled to within a few percent: the limit is honest, not timid.
                        assert!(
                            body.len() * 100 >= max_bytes * 95,
                            "{c:?} underfilled {}",
                            body.len()
                        );
                    }
                    let text = decompress(c, &body);
                    for line in text.lines() {
                        let v: serde_json::Value = serde_json::from_str(line).unwrap();
                        assert_eq!(v["n"], json!(lines));
                        lines += 1;
                    }
                    assert_eq!(text.lines().count(), batch.records);
                }
                assert_eq!(lines, total, "{c:?}");
                if c != Compression::None {
                    assert!(
                        batches.len() < 40,
                        "{c:?}: compression should pack many records"
                    );
                }
            }
        }
    }

    #[test]
    fn compressed_objects_never_exceed_max_bytes_and_hold_every_record() {
        objects_fit_and_hold_every_record(false);
    }

    /// Issue #10: compression ran on the output's loop task. Blocks compressed on the
    /// blocking pool keep the same guarantees: size within `max_bytes`, filled, every
    /// record, in order.
    #[test]
    fn objects_compressed_on_the_blocking_pool_fit_and_hold_every_record() {
        objects_fit_and_hold_every_record(true);
    }

    /// An object is many gzip members / zstd frames (one per block), compressed on the
    /// pool; the standard multi-member decoders read the records back whole and in order,
    /// across block boundaries, and the body is the same when asked again (a retry).
    #[test]
    fn blocks_are_members_and_frames_read_back_in_order() {
        let rt = pool();
        let _entered = rt.enter();
        for c in [Compression::Gzip, Compression::Zstd] {
            // 2 MiB objects: 64 KiB (gzip) / 256 KiB (zstd) blocks; about 2.3 MB of lines
            // is 36 / 9 blocks.
            let sink = sink(cfg("logs/{uuid}", c, 2 << 20));
            // The second round fills blocks reused from the first (src/output/pool.rs).
            for _round in 0..2 {
                let mut b = sink.new_batch(&String::new());
                let total = 30_000u64;
                for i in 0..total {
                    assert_eq!(b.push(&rec(i)), Push::Added);
                }
                assert!(b.bytes() > 0 && b.bytes() < 2 << 20, "{}", b.bytes());
                let batch = b.finish();
                let body = body(&batch);
                assert_eq!(
                    futures::executor::block_on(batch.body()).unwrap(),
                    body,
                    "asked twice"
                );
                let n = members(c, &body);
                assert!(n >= 8, "{c:?}: {n} members");
                let text = decompress(c, &body);
                let got: Vec<u64> = text
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect();
                assert_eq!(got, (0..total).collect::<Vec<_>>(), "{c:?}");
                // The first member alone is a strict prefix of the lines: proof the object is
                // several members (a single-member reader would lose records).
                if c == Compression::Gzip {
                    let mut first = String::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_string(&mut first)
                        .unwrap();
                    assert!(first.len() < text.len() && text.starts_with(&first));
                }
            }
        }
    }

    /// Raw blocks compressed on the blocking pool go back to the output's pool for the
    /// next blocks; the last block of an object takes no fresh buffer just to drop it.
    #[test]
    fn raw_blocks_compressed_on_the_pool_are_given_back() {
        let rt = pool();
        let _entered = rt.enter();
        let sink = sink(cfg("logs/{uuid}", Compression::Gzip, 2 << 20));
        let mut b = sink.new_batch(&String::new());
        let mut i = 0;
        while b.pending_raw == 0 {
            assert_eq!(b.push(&rec(i)), Push::Added);
            i += 1;
        }
        for _ in 0..10 {
            assert_eq!(b.push(&rec(i)), Push::Added);
            i += 1;
        }
        assert_eq!(sink.shared.raw_blocks.spare(), 0);
        let batch = b.finish();
        let text = decompress(Compression::Gzip, &body(&batch));
        assert_eq!(text.lines().count() as u64, i);
        // Two blocks, both compressed on the pool (the cap is at least 2), both back.
        assert_eq!(members(Compression::Gzip, &body(&batch)), 2);
        assert_eq!(sink.shared.raw_blocks.spare(), 2);
    }

    /// At the output's cap of blocks in flight the loop compresses the next block itself
    /// (bounded memory, back-pressure); the object is the same lines either way.
    #[test]
    fn at_the_in_flight_cap_blocks_are_compressed_in_place() {
        let rt = pool();
        let _entered = rt.enter();
        let sink = sink(cfg("k/{uuid}", Compression::Gzip, 4 << 20));
        let cap = sink.shared.blocks_in_flight_cap;
        sink.shared.blocks_in_flight.store(cap, Ordering::SeqCst);
        let mut b = sink.new_batch(&String::new());
        for i in 0..10_000 {
            assert_eq!(b.push(&rec(i)), Push::Added);
        }
        assert!(b.blocks.len() >= 3, "{}", b.blocks.len());
        assert!(b.blocks.iter().all(|x| matches!(x, Block::Done(_))));
        assert_eq!(b.pending_raw, 0);
        let text = decompress(Compression::Gzip, &body(&b.finish()));
        assert_eq!(text.lines().count(), 10_000);
        assert_eq!(sink.shared.blocks_in_flight.load(Ordering::SeqCst), cap);
    }

    /// A block whose compression never ran (the runtime shutting down) fails the object
    /// as `compression_error`, permanently (dead-lettered, not retried, not lost), instead
    /// of leaving the send waiting forever.
    #[test]
    fn a_block_that_never_compressed_fails_the_send() {
        let sink = sink(cfg("k/{uuid}", Compression::Gzip, 1 << 20));
        let slot = Arc::new(Slot::default());
        drop(Fill(Arc::clone(&slot)));
        let batch = S3Batch {
            key: "k/x.gz".into(),
            records: 1,
            blocks: parking_lot::Mutex::new(vec![Block::Pending { raw: 10, slot }]),
            body: tokio::sync::OnceCell::new(),
        };
        match futures::executor::block_on(sink.send(&String::new(), &batch)) {
            SendResult::Failed(f) => {
                assert!(!f.retryable && f.reason == "compression_error", "{f:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_records_and_a_single_oversized_record() {
        let mut c = cfg("k", Compression::None, 1000);
        c.batch.max_records = 3;
        let sink = sink(c);
        let mut b = sink.new_batch(&String::new());
        let serde_json::Value::Object(m) = json!({"log": "x".repeat(5000)}) else {
            unreachable!()
        };
        let big = Record::new("t", 0, m);
        // A fresh batch never answers Full, even for a record above max_bytes.
        assert_eq!(b.push(&big), Push::Added);
        assert_eq!(b.push(&rec(1)), Push::Full);
        let mut b = sink.new_batch(&String::new());
        for i in 0..3 {
            assert_eq!(b.push(&rec(i)), Push::Added);
        }
        assert_eq!(b.push(&rec(3)), Push::Full);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn keys_partitions_and_extensions() {
        let s = sink(cfg(
            "logs/{tag[0]}/%Y/%m/%d/%H/{uuid}-{index}.json",
            Compression::Gzip,
            1 << 20,
        ));
        let r = rec(0);
        let p = s.partition(&r).unwrap();
        assert_eq!(p, "logs/app/2026/11/23/07/-.json");
        let mut b = s.new_batch(&p);
        b.push(&r);
        let key = b.finish().key;
        assert!(
            key.starts_with("logs/app/2026/11/23/07/") && key.ends_with("-0.json.gz"),
            "{key}"
        );
        let mut b = s.new_batch(&p);
        b.push(&r);
        assert!(b.finish().key.ends_with("-1.json.gz"));

        // No {uuid}/{index}: one is inserted before the extension; existing .gz is kept.
        let s = sink(cfg("events/%H/{tag}.json.gz", Compression::Gzip, 1 << 20));
        let mut b = s.new_batch(&String::new());
        b.push(&r);
        let key = b.finish().key;
        assert!(
            key.starts_with("events/07/app-firelens-1-") && key.ends_with(".json.gz"),
            "{key}"
        );
        assert_eq!(
            key.len(),
            "events/07/app-firelens-1-".len() + 36 + ".json.gz".len()
        );
        assert_eq!(with_uuid("a/b"), "a/b-{uuid}");
        assert_eq!(with_uuid("a.d/%H.{tag}"), "a.d/%H.{tag}-{uuid}");
        // A path placeholder's dot is no extension: the uuid goes after it, not into it.
        assert_eq!(with_uuid("e/{detail.group}"), "e/{detail.group}-{uuid}");
        assert_eq!(with_uuid("e/{a.b}.json"), "e/{a.b}-{uuid}.json");

        let s = sink(cfg("z/{uuid}", Compression::Zstd, 1 << 20));
        let mut b = s.new_batch(&String::new());
        b.push(&r);
        assert!(b.finish().key.ends_with(".zst"));

        let long = cfg(
            &format!("{}/{{uuid}}", "k".repeat(1000)),
            Compression::None,
            1 << 20,
        );
        // Tester's report: a key above the limit was acked, then dropped as
        // s3_key_too_long. Now it is shortened within 1,024 bytes, ending with a hash.
        let s = sink(long);
        let p = s.partition(&r).unwrap();
        assert!(
            p.len() <= MAX_KEY_BYTES && p.starts_with(&"k".repeat(900)),
            "{p}"
        );
        let key = |s: &S3Sink| {
            let mut b = s.new_batch(&String::new());
            b.push(&r);
            b.finish().key
        };
        let (k1, k2) = (key(&s), key(&s));
        assert_eq!(k1.len(), MAX_KEY_BYTES, "{k1}");
        assert!(k1.starts_with(&"k".repeat(1000)), "{k1}");
        assert_ne!(k1, k2, "two objects, two keys");
        let (_, hash) = k1.rsplit_once('-').unwrap();
        assert!(
            hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{k1}"
        );
        assert!(
            s.destination(&r)
                .unwrap()
                .ends_with(&format!("{}/{{uuid}}-{{hash}}", "k".repeat(1000))),
        );
        // With an extension, a long tag, and an escape at the cut: never `%2` alone.
        let s = sink(cfg("t/{tag}/x", Compression::Gzip, 1 << 20));
        for pad in 0..3 {
            let tag = format!("{}{}", "a".repeat(pad), "/".repeat(100_000));
            let r = Record::new(tag.as_str(), 0, Default::default());
            let mut b = s.new_batch(&String::new());
            b.push(&r);
            let k = b.finish().key;
            assert!(
                k.len() <= MAX_KEY_BYTES && k.ends_with(".gz"),
                "{}",
                k.len()
            );
            let body = &k[..k.len() - "-0123456789abcdef.gz".len()];
            assert!(body.ends_with("%2F"), "{pad}: {body}");
            let p = s.partition(&r).unwrap();
            assert!(p.len() <= MAX_KEY_BYTES);
        }
        // The template's own file extension survives the cut, before the compression one.
        let s = sink(cfg("j/{tag}/{uuid}.json", Compression::Gzip, 1 << 20));
        let r = Record::new("x".repeat(2000).as_str(), 0, Default::default());
        let mut b = s.new_batch(&String::new());
        b.push(&r);
        let k = b.finish().key;
        assert_eq!(k.len(), MAX_KEY_BYTES);
        assert!(k.starts_with("j/xxx") && k.ends_with(".json.gz"), "{k}");
        let d = s.destination(&r).unwrap();
        assert!(d.ends_with("x-{hash}.json.gz"), "{d}");
        // Just at the limit only because of the uuid: renamed too, consistently.
        let fill = MAX_KEY_BYTES - "j//.json.gz".len() - 36;
        let r = Record::new("y".repeat(fill).as_str(), 0, Default::default());
        let mut b = s.new_batch(&String::new());
        b.push(&r);
        assert_eq!(b.finish().key.len(), MAX_KEY_BYTES);
        let r = Record::new("y".repeat(fill + 1).as_str(), 0, Default::default());
        let mut b = s.new_batch(&String::new());
        b.push(&r);
        let k = b.finish().key;
        assert!(k.len() <= MAX_KEY_BYTES && k.ends_with(".json.gz"), "{k}");
        let stem = k.strip_suffix(".json.gz").unwrap();
        // A uuid's last group has 12 hex digits, the hash 16.
        assert_eq!(stem.rsplit_once('-').unwrap().1.len(), 16, "{k}");

        // Record values are encoded in partitions and object keys alike.
        let s = sink(cfg("k/{tag[1]}/{p}/{uuid}", Compression::Gzip, 1 << 20));
        let serde_json::Value::Object(m) = json!({"p": "../../etc"}) else {
            unreachable!()
        };
        let r = Record::new("a..b", 0, m);
        assert_eq!(s.partition(&r).unwrap(), "k/-/..%2F..%2Fetc/");
        let mut b = s.new_batch(&String::new());
        b.push(&r);
        let key = b.finish().key;
        assert!(
            key.starts_with("k/-/..%2F..%2Fetc/") && key.ends_with(".gz"),
            "{key}"
        );
    }

    /// `{tag[N]}` past the last part, an empty part, and fields that are missing, `null`,
    /// empty, objects or arrays all render as `-` (documented in the README and
    /// config/reference.toml), in the partition and the object key alike.
    #[test]
    fn out_of_range_tag_parts_and_missing_fields_render_as_dash() {
        let s = sink(cfg(
            "k/{tag[0]}/{tag[1]}/{tag[3]}/{tag[99]}/{missing}/{null}/{empty}/{obj}/{arr}/{ecs_task_id}/{n}/{uuid}",
            Compression::None,
            1 << 20,
        ));
        let serde_json::Value::Object(m) =
            json!({"null": null, "empty": "", "obj": {"a": 1}, "arr": [1], "n": 0})
        else {
            unreachable!()
        };
        let r = Record::new("app..x", 0, m);
        assert_eq!(s.partition(&r).unwrap(), "k/app/-/-/-/-/-/-/-/-/-/0/");
        let mut b = s.new_batch(&String::new());
        b.push(&r);
        let key = b.finish().key;
        assert!(key.starts_with("k/app/-/-/-/-/-/-/-/-/-/0/"), "{key}");
        assert_eq!(key.len(), "k/app/-/-/-/-/-/-/-/-/-/0/".len() + 36, "{key}");
        assert_eq!(
            s.destination(&r).unwrap(),
            "s3://b/k/app/-/-/-/-/-/-/-/-/-/0/{uuid}"
        );
    }

    #[test]
    fn config_errors() {
        let mut c = cfg("{tag", Compression::None, 1);
        assert!(matches!(
            build_with_client(c.clone(), client()),
            Err(BuildError::Template { .. })
        ));
        c.key = "k".into();
        c.storage_class = Some("FROZEN".into());
        let e = build_with_client(c.clone(), client())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("storage_class") && e.contains("STANDARD_IA"),
            "{e}"
        );
        c.storage_class = Some("STANDARD_IA".into());
        c.acl = Some("bucket-owner-full-control".into());
        assert!(build_with_client(c.clone(), client()).is_ok());
        c.align = Some(Duration::from_millis(1500));
        assert!(build_with_client(c, client()).is_err());
    }

    #[test]
    fn aligned_windows() {
        let mut c = cfg("k/{uuid}", Compression::None, 1 << 20);
        c.align = Some(Duration::from_secs(3600));
        let s = sink(c);
        let mut b = s.new_batch(&String::new());
        let mut r = rec(0);
        r.time_ns = 1_795_417_689_000_000_000; // 07:08:09
        assert_eq!(b.push(&r), Push::Added);
        let at = b.flush_at().unwrap();
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs % 3600, 0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(secs > now && secs <= now + 3600);
        r.time_ns += 3_000_000_000_000; // 07:58
        assert_eq!(b.push(&r), Push::Added);
        r.time_ns += 1_000_000_000_000; // 08:15: next window
        assert_eq!(b.push(&r), Push::Full);
        assert!(
            sink(cfg("k/{uuid}", Compression::None, 1))
                .new_batch(&String::new())
                .flush_at()
                .is_none()
        );
    }

    #[test]
    fn multipart_part_sizing() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(part_size(16 * MIB + 1), 8 * MIB);
        assert_eq!((16 * MIB + 1).div_ceil(part_size(16 * MIB + 1)), 3);
        assert_eq!(part_size(80_000 * MIB), 8 * MIB);
        assert_eq!(part_size(80_000 * MIB + 1), 9 * MIB);
        assert_eq!(part_size(MAX_OBJECT_BYTES), 8 * MIB);
        for len in [
            16 * MIB + 1,
            100 * MIB,
            79_999 * MIB,
            80_001 * MIB,
            200_000 * MIB,
            5_000_000 * MIB,
        ] {
            let p = part_size(len);
            assert!(p >= MIN_PART, "{len}");
            assert!(
                len.div_ceil(p) <= MAX_PARTS,
                "{len}: {} parts",
                len.div_ceil(p)
            );
        }
    }

    #[test]
    fn log_key_mode_sends_raw_lines() {
        let mut c = cfg("k/{uuid}", Compression::None, 1 << 20);
        c.format.log_key = Some("log".into());
        let s = sink(c);
        let mut b = s.new_batch(&String::new());
        b.push(&rec(7));
        let serde_json::Value::Object(m) = json!({"other": 1}) else {
            unreachable!()
        };
        b.push(&Record::new("t", 0, m));
        let body = body(&b.finish());
        let text = std::str::from_utf8(&body).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("GET /item/7 200 "));
        assert_eq!(lines.next().unwrap(), r#"{"other":1}"#);
        assert!(text.ends_with('\n'));
    }
}
