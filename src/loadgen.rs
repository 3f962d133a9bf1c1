//! `firelane loadgen`: a forward-protocol load generator for sizing and benchmarks.
//!
//! Sends FireLens-shaped records (what Docker's fluentd driver produces for an ECS task) in any
//! of the four request modes over TCP or a unix socket, from several connections, optionally
//! waiting for acks, optionally rate-limited, and reports records/s and MB/s.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::input::forward::ListenAddr;
use crate::input::forward::client::{
    self, Compression, Entry, EventTime, ForwardClient, encode_compressed, encode_forward,
    encode_message, encode_packed,
};

/// Distinct records generated per connection; requests cycle through them.
const POOL: usize = 1024;
/// Socket read/write timeout of the generator's connections.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Request mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// `[tag, time, record]`, one record per request (what Docker's driver sends).
    Message,
    /// `[tag, [[time, record], …]]`.
    Forward,
    /// `[tag, bin(entries)]`.
    Packed,
    /// `[tag, bin(compressed entries), {"compressed": …}]`.
    Compressed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
/// Compression of the generated CompressedPackedForward requests (`--compress`).
pub enum LoadCompression {
    /// gzip (`compressed: "gzip"`), as Fluent Bit and fluentd send it.
    Gzip,
    /// zstd (`compressed: "zstd"`), as Fluent Bit sends it.
    Zstd,
}

#[derive(Debug, Clone, clap::Args)]
/// Command-line arguments of `firelane loadgen`: what to send, how fast and over how many
/// connections.
pub struct LoadgenArgs {
    /// Forward input to send to: tcp://HOST:PORT or unix:///PATH.
    #[arg(long, default_value = "tcp://127.0.0.1:24224", value_parser = ListenAddr::parse)]
    pub addr: ListenAddr,
    /// Request mode.
    #[arg(long, value_enum, default_value_t = LoadMode::Message)]
    pub mode: LoadMode,
    /// Total records to send (split over the connections).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Records per request for forward/packed/compressed. In message mode without --ack,
    /// the number of one-record requests written per socket write.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Parallel connections, one thread each.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Ask for an ack on every request and wait for it before sending the next.
    #[arg(long)]
    pub ack: bool,
    /// With --ack: requests sent ahead of their acks (pipelining, as fluentd does); acks
    /// must come back in request order or the run fails.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub ack_window: u32,
    /// Approximate length of the `log` field in bytes.
    #[arg(long, default_value_t = 200)]
    pub record_size: usize,
    /// Cap on records per second, over all connections.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Tag of every record. Default: web-firelens-<random task id>.
    #[arg(long)]
    pub tag: Option<String>,
    /// Compression of the compressed mode.
    #[arg(long, value_enum, default_value_t = LoadCompression::Gzip)]
    pub compression: LoadCompression,
    /// Shared key, for inputs that require the handshake.
    #[arg(long)]
    pub shared_key: Option<String>,
}

impl Default for LoadgenArgs {
    fn default() -> Self {
        LoadgenArgs {
            addr: ListenAddr::Tcp("127.0.0.1:24224".to_owned()),
            mode: LoadMode::Message,
            records: 100_000,
            batch: 100,
            connections: 1,
            ack: false,
            ack_window: 1,
            record_size: 200,
            rate: None,
            tag: None,
            compression: LoadCompression::Gzip,
            shared_key: None,
        }
    }
}

/// What a run achieved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadgenReport {
    pub(crate) records: u64,
    pub(crate) requests: u64,
    /// Bytes written to the socket (requests, including compression).
    pub bytes: u64,
    pub(crate) acks: u64,
    pub(crate) connections: usize,
    pub(crate) elapsed: Duration,
}

impl LoadgenReport {
    pub(crate) fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Megabytes (10^6 bytes) per second on the wire.
    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for LoadgenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "records sent: {} in {} requests over {} connection(s){}",
            self.records,
            self.requests,
            self.connections,
            if self.acks > 0 {
                format!(", {} acks received", self.acks)
            } else {
                String::new()
            }
        )?;
        writeln!(f, "elapsed:      {:.3} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "records/s:    {:.0}", self.records_per_sec())?;
        write!(
            f,
            "MB/s:         {:.2} ({} bytes on the wire)",
            self.mb_per_sec(),
            self.bytes
        )
    }
}

/// Runs the load and blocks until every record was sent (and acked, with `--ack`).
pub fn run(args: LoadgenArgs) -> anyhow::Result<LoadgenReport> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("web-firelens-{}", random_hex(&mut rand::rng(), 32)));
    let per_conn_rate = args
        .rate
        .map(|r| (r as f64 / args.connections as f64).max(1e-3));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|i| {
            let share = args.records / args.connections as u64
                + u64::from((i as u64) < args.records % args.connections as u64);
            let args = args.clone();
            let tag = tag.clone();
            thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || connection(&args, &tag, i, share, per_conn_rate))
                .context("starting a loadgen thread")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut report = LoadgenReport {
        connections: args.connections,
        ..LoadgenReport::default()
    };
    let mut first_error = None;
    for w in workers {
        match w.join() {
            Ok(Ok(part)) => {
                report.records += part.records;
                report.requests += part.requests;
                report.bytes += part.bytes;
                report.acks += part.acks;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow::anyhow!("a loadgen thread panicked"));
            }
        }
    }
    report.elapsed = started.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn connection(
    args: &LoadgenArgs,
    tag: &str,
    index: usize,
    records: u64,
    rate: Option<f64>,
) -> anyhow::Result<LoadgenReport> {
    let mut rng = SmallRng::seed_from_u64(0x5eed ^ index as u64);
    let pool = record_pool(&mut rng, args.record_size);
    let mut client = ForwardClient::connect(&args.addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {}", args.addr))?;
    if let Some(key) = &args.shared_key {
        client
            .handshake(key, "firelane-loadgen")
            .context("shared-key handshake")?;
    }
    let mut report = LoadgenReport::default();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut next = 0usize;
    let started = Instant::now();
    // Chunks sent and not yet acked, oldest first.
    let mut unacked = std::collections::VecDeque::new();
    let per_request = match args.mode {
        LoadMode::Message if args.ack => 1,
        _ => args.batch as u64,
    };
    while report.records < records {
        let n = per_request.min(records - report.records) as usize;
        let time = EventTime::now();
        let chunk = args.ack.then(client::new_chunk_id);
        buf.clear();
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(Entry {
                time,
                record: &pool[next % POOL],
            });
            next += 1;
        }
        match args.mode {
            LoadMode::Message => {
                // Without acks several messages share one write; each is still its own request.
                for e in &entries {
                    encode_message(&mut buf, tag, e.time, e.record, chunk.as_deref());
                }
            }
            LoadMode::Forward => encode_forward(&mut buf, tag, &entries, chunk.as_deref()),
            LoadMode::Packed => encode_packed(&mut buf, tag, &entries, chunk.as_deref()),
            LoadMode::Compressed => {
                let c = match args.compression {
                    LoadCompression::Gzip => Compression::Gzip,
                    LoadCompression::Zstd => Compression::Zstd,
                };
                encode_compressed(&mut buf, tag, &entries, c, chunk.as_deref())
                    .context("compressing")?;
            }
        }
        client.send(&buf).context("sending")?;
        if let Some(c) = chunk {
            unacked.push_back(c);
        }
        while unacked.len() >= args.ack_window as usize {
            read_oldest_ack(&mut client, &mut unacked, &mut report)?;
        }
        report.records += n as u64;
        report.requests += if args.mode == LoadMode::Message {
            n as u64
        } else {
            1
        };
        report.bytes += buf.len() as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(report.records as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    while !unacked.is_empty() {
        read_oldest_ack(&mut client, &mut unacked, &mut report)?;
    }
    client.finish().ok();
    Ok(report)
}

/// Waits for the ack of the oldest unacked chunk: acks come back in request order.
fn read_oldest_ack(
    client: &mut ForwardClient,
    unacked: &mut std::collections::VecDeque<String>,
    report: &mut LoadgenReport,
) -> anyhow::Result<()> {
    if let Some(c) = unacked.pop_front() {
        client
            .read_ack(&c)
            .with_context(|| format!("waiting for the ack of chunk {c:?} (acks in order)"))?;
        report.acks += 1;
    }
    Ok(())
}

/// Encoded records of one container: fixed id and name, varied lines.
fn record_pool(rng: &mut SmallRng, log_len: usize) -> Vec<Vec<u8>> {
    let container_id = random_hex(rng, 64);
    let container_name = format!("/ecs-app-1-web-{}", random_hex(rng, 20));
    (0..POOL)
        .map(|_| {
            let source = if rng.random_ratio(1, 5) {
                "stderr"
            } else {
                "stdout"
            };
            let log = log_line(rng, log_len);
            let mut b = Vec::with_capacity(log.len() + 160);
            client::encode_record(
                &mut b,
                &[
                    ("container_id", &container_id),
                    ("container_name", &container_name),
                    ("source", source),
                    ("log", &log),
                ],
            );
            b
        })
        .collect()
}

const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const PATHS: [&str; 6] = [
    "/",
    "/api/v1/orders",
    "/api/v1/users/42",
    "/health",
    "/static/app.js",
    "/login",
];
const STATUSES: [u16; 6] = [200, 200, 200, 201, 404, 500];
const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (X11; Linux x86_64)",
    "curl/8.5.0",
    "ELB-HealthChecker/2.0",
];
const LEVELS: [&str; 4] = ["info", "info", "warn", "error"];

/// An nginx-style access line or a JSON application line, padded or cut to about `len` bytes.
fn log_line(rng: &mut SmallRng, len: usize) -> String {
    let mut line = if rng.random_bool(0.6) {
        format!(
            "{}.{}.{}.{} - - [{:02}/Mar/2026:{:02}:{:02}:{:02} +0000] \"{} {} HTTP/1.1\" {} {} \"-\" \"{}\"",
            rng.random_range(1..255),
            rng.random_range(0..255),
            rng.random_range(0..255),
            rng.random_range(1..255),
            rng.random_range(1..29),
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..60),
            METHODS[rng.random_range(0..METHODS.len())],
            PATHS[rng.random_range(0..PATHS.len())],
            STATUSES[rng.random_range(0..STATUSES.len())],
            rng.random_range(0..50_000),
            AGENTS[rng.random_range(0..AGENTS.len())],
        )
    } else {
        format!(
            "{{\"level\":\"{}\",\"msg\":\"request handled\",\"request_id\":\"{}\",\"latency_ms\":{},\"user\":{}}}",
            LEVELS[rng.random_range(0..LEVELS.len())],
            random_hex(rng, 16),
            rng.random_range(1..2000),
            rng.random_range(1..100_000),
        )
    };
    if line.len() > len {
        line.truncate(len);
    } else if line.len() < len {
        line.push_str(" pad=");
        while line.len() < len {
            line.push(char::from(b'a' + rng.random_range(0..26u8)));
        }
    }
    line
}

fn random_hex(rng: &mut impl Rng, n: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..n)
        .map(|_| char::from(HEX[rng.random_range(0..16)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_firelens_shaped() {
        let mut rng = SmallRng::seed_from_u64(1);
        let pool = record_pool(&mut rng, 300);
        let mut out = Vec::new();
        let mut stats = crate::input::forward::decode::Stats::default();
        let mut frame = Vec::new();
        encode_message(
            &mut frame,
            "web-firelens-0123",
            EventTime::from_ns(1_700_000_000_000_000_001),
            &pool[0],
            None,
        );
        crate::input::forward::decode::decode_request(
            &frame,
            &crate::input::forward::decode::Limits {
                max_decompressed_bytes: 1 << 20,
                max_decoded_bytes: usize::MAX,
            },
            0,
            &mut Default::default(),
            &mut out,
            &mut stats,
        )
        .unwrap();
        let r = &out[0];
        assert_eq!(r.time_ns, 1_700_000_000_000_000_001);
        let keys = r.keys();
        assert_eq!(keys, ["container_id", "container_name", "source", "log"]);
        assert_eq!(r.fields()["container_id"].as_str().unwrap().len(), 64);
        assert!(
            r.fields()["container_name"]
                .as_str()
                .unwrap()
                .starts_with("/ecs-app-1-web-")
        );
        assert_eq!(r.fields()["log"].as_str().unwrap().len(), 300);
        let distinct: std::collections::HashSet<_> = pool.iter().collect();
        assert!(distinct.len() > POOL / 2, "lines should vary");
    }

    #[test]
    fn short_record_size_truncates() {
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..50 {
            assert_eq!(log_line(&mut rng, 20).len(), 20);
        }
    }

    #[test]
    fn args_parse_from_the_command_line() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        let cli = Cli::try_parse_from([
            "loadgen",
            "--addr",
            "unix:///tmp/x.sock",
            "--mode",
            "compressed",
            "--records",
            "10",
            "--batch",
            "5",
            "--connections",
            "2",
            "--ack",
            "--ack-window",
            "8",
            "--rate",
            "100",
            "--compression",
            "zstd",
        ])
        .unwrap();
        assert_eq!(cli.args.addr, ListenAddr::Unix("/tmp/x.sock".into()));
        assert_eq!(cli.args.mode, LoadMode::Compressed);
        assert_eq!(cli.args.compression, LoadCompression::Zstd);
        assert!(cli.args.ack);
        assert_eq!(cli.args.ack_window, 8);
        assert_eq!(cli.args.rate, Some(100));
        assert!(Cli::try_parse_from(["loadgen", "--addr", "localhost:1"]).is_err());
    }
}
