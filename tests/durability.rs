//! Durability guarantees, end to end against the real binary on loopback: a record firelane
//! acknowledged (forward `chunk` ack) is delivered at least once across `kill -9`, torn
//! segments, throttling and shutdown; memory stays bounded; a stalled output does not hold
//! up another one; what cannot be delivered is counted (dropped, dead-lettered, lost).
//!
//! The destination of `type = "http"` outputs is [`FakeHttp`], the scriptable HTTP/1.1
//! server of `tests/common/fake_http.rs`. Records carry an integer field `i` so that deliveries can be
//! checked against what was acknowledged, record by record.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::fake_http::{FakeHttp, Reply};
use common::tmpfs::Tmpfs;
use common::{Router, free_port, read_jsonl, wait_lines};
use firelane::input::forward::ListenAddr;
use firelane::input::forward::client::{self, EventTime, ForwardClient};

// === forward client ===

struct Sender {
    client: ForwardClient,
    tag: String,
    pad: String,
}

impl Sender {
    fn connect(port: u16, timeout: Duration) -> Sender {
        let addr = ListenAddr::Tcp(format!("127.0.0.1:{port}"));
        Sender {
            client: ForwardClient::connect(&addr, timeout).expect("connect forward input"),
            tag: "app-firelens-1".into(),
            pad: "x".repeat(100),
        }
    }

    fn with_pad(mut self, bytes: usize) -> Sender {
        self.pad = "p".repeat(bytes);
        self
    }

    /// Sends records `ids` as one Forward-mode request with a chunk; does not wait.
    fn send(&mut self, ids: std::ops::Range<u64>) -> String {
        let recs: Vec<Vec<u8>> = ids
            .map(|i| common::msgpack_record(&serde_json::json!({"i": i, "log": self.pad})))
            .collect();
        let time = EventTime::now();
        let entries: Vec<client::Entry<'_>> = recs
            .iter()
            .map(|r| client::Entry { time, record: r })
            .collect();
        let chunk = client::new_chunk_id();
        let mut buf = Vec::new();
        client::encode_forward(&mut buf, &self.tag, &entries, Some(&chunk));
        self.client.send(&buf).expect("send forward request");
        chunk
    }

    /// Sends and waits for the ack: after this, firelane owes us these records.
    fn send_acked(&mut self, ids: std::ops::Range<u64>) {
        let chunk = self.send(ids.clone());
        self.client
            .read_ack(&chunk)
            .unwrap_or_else(|e| panic!("no ack for records {ids:?}: {e}"));
    }
}

fn ids(r: std::ops::Range<u64>) -> BTreeSet<u64> {
    r.collect()
}

/// Pushes `ids` in acked requests of `per` records.
fn send_all(s: &mut Sender, n: u64, per: u64) {
    send_range(s, 0, n, per);
}

/// Pushes records `from..n` in acked requests of `per` records.
fn send_range(s: &mut Sender, from: u64, n: u64, per: u64) {
    let mut i = from;
    while i < n {
        let end = (i + per).min(n);
        s.send_acked(i..end);
        i = end;
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

fn pid(r: &Router) -> u32 {
    r.child.as_ref().expect("running").id()
}

/// Waits until a disk buffer's persisted ack state (`<dir>/acks`) has stopped changing: the
/// same bytes in five reads 300 ms apart, 1.2 s without a change (it is rewritten within
/// ~100 ms of an ack, after the previous write's fdatasync; a busy machine's fdatasync can
/// hold the next write back, which a fixed sleep would miss). Panics after 15 s.
fn wait_acks_settled(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    let mut same = 0;
    while same < 4 {
        assert!(
            Instant::now() < deadline,
            "{}/acks kept changing for 15 s",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(300));
        let now = std::fs::read(dir.join("acks")).ok();
        same = if now.is_some() && now == last {
            same + 1
        } else {
            0
        };
        last = now;
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A forward input and one `http` output named `web` with the given extra keys.
fn http_config(fwd: u16, url: &str, extra: &str) -> String {
    format!(
        r#"
[runtime]
data_dir = "{{dir}}/data"
shutdown_grace = "10s"
log_level = "info"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["web"]

[outputs.web]
type = "http"
url = "{url}"
timeout = "5s"
retry = {{ initial_backoff = "50ms", max_backoff = "300ms" }}
{extra}
"#
    )
}

const SECS: fn(u64) -> Duration = Duration::from_secs;

// === tests ===

/// kill -9 while acked records wait in a disk buffer for a destination that is down; on
/// restart (destination healthy) every acked record is delivered.
#[test]
fn kill9_with_destination_down_then_restart_delivers_every_acked_record() {
    for fsync in ["always", "1s", "never"] {
        kill9_then_restart(fsync);
    }
}

fn kill9_then_restart(fsync: &str) {
    eprintln!("fsync = {fsync:?}");
    let fwd = free_port();
    let dest_port = free_port(); // nobody listens yet: connection refused
    let url = format!("http://127.0.0.1:{dest_port}/ingest");
    let cfg = http_config(
        fwd,
        &url,
        &format!(
            r#"buffer = {{ type = "disk", fsync = "{fsync}" }}
batch = {{ max_records = 500, max_age = "100ms" }}"#
        ),
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    const N: u64 = 3000;
    send_all(&mut s, N, 100);
    // The output has tried and failed at least once: the records are not delivered yet.
    let retried = router.wait_metric(
        "firelane_output_records_total",
        &[r#"output="web""#, r#"result="retried""#],
        1.0,
        SECS(10),
    );
    assert!(retried >= 1.0, "no retry while the destination is down");
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &[r#"output="web""#, r#"result="sent""#]
        ),
        0.0
    );
    assert_eq!(
        router.metric("firelane_buffer_records", &[r#"output="web""#]),
        N as f64
    );
    let dir = router.into_dir(); // kill -9

    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    let router = Router::start_in(dir, &cfg);
    assert_eq!(
        router.metric(
            "firelane_buffer_replayed_records_total",
            &[r#"output="web""#]
        ),
        N as f64,
        "replay counted"
    );
    let got = dest.wait_ids(&ids(0..N), SECS(30));
    let missing: Vec<u64> = (0..N).filter(|i| !got.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "acked records lost after kill -9: {} missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let dups: usize = got.values().map(|c| c - 1).sum();
    eprintln!(
        "kill9 replay: {N} acked, {} delivered, {dups} duplicates",
        got.len()
    );
    assert!(got.keys().all(|i| *i < N), "unexpected ids");
    let sent = router.wait_metric(
        "firelane_output_records_total",
        &[r#"output="web""#, r#"result="sent""#],
        N as f64,
        SECS(5),
    );
    assert_eq!(sent as usize, got.values().sum::<usize>());
    assert!(
        router.logs().contains("replaying undelivered records"),
        "{}",
        router.logs()
    );
    // Delivered records leave the buffer.
    let deadline = Instant::now() + SECS(10);
    while router.metric("firelane_buffer_records", &[r#"output="web""#]) > 0.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        router.metric("firelane_buffer_records", &[r#"output="web""#]),
        0.0
    );
}

/// A torn newest segment: the valid prefix is delivered, the damaged tail quarantined and
/// counted, start-up continues.
#[test]
fn torn_last_segment_is_quarantined_and_the_valid_prefix_delivered() {
    // (damage, records of the 1000 that survive it)
    for (damage, survive) in [("truncate", 999), ("zeros", 1000), ("bitflip", 999)] {
        torn_case(damage, survive);
    }
}

fn torn_case(damage: &str, survive: u64) {
    eprintln!("damage: {damage}");
    let fwd = free_port();
    let dest_port = free_port();
    let url = format!("http://127.0.0.1:{dest_port}/ingest");
    let cfg = http_config(fwd, &url, r#"buffer = { type = "disk" }"#);
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    const N: u64 = 1000;
    send_all(&mut s, N, 100);
    let dir = router.into_dir();

    let bufdir = dir.path().join("data/buffers/web");
    let segs = segments(&bufdir);
    assert!(!segs.is_empty(), "no segment in {}", bufdir.display());
    let newest = segs.last().expect("segment");
    let len = std::fs::metadata(newest).expect("segment metadata").len();
    match damage {
        // Cut 10 bytes into the last record: a write torn by the crash.
        "truncate" => std::fs::OpenOptions::new()
            .write(true)
            .open(newest)
            .and_then(|f| f.set_len(len - 10))
            .expect("truncate"),
        // Zero-filled blocks after the last record (delayed allocation after a crash).
        "zeros" => std::fs::OpenOptions::new()
            .append(true)
            .open(newest)
            .and_then(|mut f| f.write_all(&[0u8; 4096]))
            .expect("append zeros"),
        // One flipped bit in the last record's payload: the checksum catches it.
        _ => {
            let mut bytes = std::fs::read(newest).expect("read segment");
            let at = bytes.len() - 5;
            bytes[at] ^= 0x01;
            std::fs::write(newest, bytes).expect("write segment");
        }
    }

    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    let router = Router::start_in(dir, &cfg);
    let got = dest.wait_ids(&ids(0..survive), SECS(30));
    let missing: Vec<u64> = (0..survive).filter(|i| !got.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "valid prefix not delivered: missing {missing:?}"
    );
    assert!(
        got.keys().all(|&i| i < survive),
        "a damaged record was delivered: {:?}",
        got.keys().filter(|&&i| i >= survive).collect::<Vec<_>>()
    );
    assert_eq!(
        router.metric("firelane_buffer_quarantined_total", &[r#"output="web""#]),
        1.0
    );
    assert_eq!(
        router.metric(
            "firelane_buffer_replayed_records_total",
            &[r#"output="web""#]
        ),
        survive as f64
    );
    let logs = router.logs();
    assert!(logs.contains("damaged segment tail quarantined"), "{logs}");
    let q: Vec<_> = std::fs::read_dir(bufdir.join("quarantine"))
        .expect("quarantine dir")
        .flatten()
        .collect();
    assert_eq!(q.len(), 1, "one quarantined tail");
    assert!(q[0].file_name().to_string_lossy().ends_with(".tail"));
    assert!(q[0].metadata().expect("meta").len() > 0);
    // Start-up went on: new records flow too.
    s = Sender::connect(fwd, SECS(10));
    s.send_acked(5000..5010);
    let got = dest.wait_ids(&ids(5000..5010), SECS(10));
    assert!((5000..5010).all(|i| got.contains_key(&i)));
}

/// 503 then 429, both with `Retry-After: 1`, then healthy: nothing lost, each retry waits
/// about a second, and there is no tight loop.
#[test]
fn retry_after_is_honoured_on_503_and_429() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Ok);
    dest.script(&[Reply::Status(503, Some("1")), Reply::Status(429, Some("1"))]);
    let cfg = http_config(
        fwd,
        &dest.url(),
        r#"batch = { max_records = 1000, max_age = "100ms" }"#,
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    s.send_acked(0..50);
    let got = dest.wait_ids(&ids(0..50), SECS(20));
    assert_eq!(got.len(), 50);
    assert!(got.values().all(|&c| c == 1), "delivered once each");
    let st = dest.state();
    let statuses: Vec<u16> = st.seen.iter().map(|x| x.status).collect();
    assert_eq!(
        statuses,
        vec![503, 429, 200],
        "one request per answer, no tight loop"
    );
    for pair in st.seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(950) && gap < SECS(5),
            "retry after {gap:?}, Retry-After said 1 s"
        );
        assert_eq!(pair[0].ids, pair[1].ids, "the same batch is retried");
    }
    drop(st);
    assert_eq!(
        router.wait_metric(
            "firelane_output_records_total",
            &[r#"output="web""#, r#"result="sent""#],
            50.0,
            SECS(5)
        ),
        50.0
    );
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &[r#"output="web""#, r#"result="retried""#]
        ),
        100.0
    );
    // Keep-alive: more batches go over the same connection(s), not one connection each.
    for k in 0..10u64 {
        s.send_acked(1000 + k * 10..1000 + k * 10 + 10);
        dest.wait_ids(&ids(1000 + k * 10..1000 + k * 10 + 10), SECS(10));
    }
    let st = dest.state();
    assert!(st.seen.len() >= 13);
    assert!(
        st.connections <= 3,
        "{} connections for {} requests: responses not read to the end, so never reused",
        st.connections,
        st.seen.len()
    );
}

/// One output stalled (never answers, or always 503) while a file output on the same route
/// keeps delivering everything promptly.
#[test]
fn stalled_output_does_not_hold_up_the_file_output() {
    for stall in [Reply::Stall, Reply::Status(503, None)] {
        let fwd = free_port();
        let dest = FakeHttp::start_replying(stall.clone());
        let cfg = format!(
            r#"
[runtime]
shutdown_grace = "2s"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["stuck", "local"]

[outputs.stuck]
type = "http"
url = "{}"
timeout = "60s"

[outputs.local]
type = "file"
path = "{{dir}}/local.jsonl"
"#,
            dest.url()
        );
        let router = Router::start(&cfg);
        let mut s = Sender::connect(fwd, SECS(10));
        const N: u64 = 20_000;
        let t0 = Instant::now();
        send_all(&mut s, N, 500);
        let acked = t0.elapsed();
        let lines = wait_lines(&router.path("local.jsonl"), N as usize, SECS(30));
        let all = t0.elapsed();
        eprintln!("{stall:?}: {N} records acked in {acked:?}, all in the file after {all:?}");
        assert_eq!(lines.len(), N as usize, "file output held up by {stall:?}");
        let got: BTreeSet<u64> = lines.iter().map(|v| v["i"].as_u64().expect("i")).collect();
        assert_eq!(got, ids(0..N));
        assert!(dest.requests() >= 1, "the stuck output did try");
        assert!(dest.delivered_ids().is_empty());
        assert_eq!(
            router.metric(
                "firelane_output_records_total",
                &[r#"output="stuck""#, r#"result="sent""#]
            ),
            0.0
        );
    }
}

/// SIGTERM with 100,000 records in an open batch (long max_age): delivered before exit,
/// within shutdown_grace, exit 0.
#[test]
fn sigterm_flushes_a_large_open_batch() {
    let fwd = free_port();
    let cfg = format!(
        r#"
[runtime]
shutdown_grace = "25s"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["local"]

[outputs.local]
type = "file"
path = "{{dir}}/local.jsonl"
batch = {{ max_records = 200000, max_bytes = "256MiB", max_age = "10m" }}
buffer = {{ max_size = "100MiB" }}
"#
    );
    let mut router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(20)).with_pad(20);
    const N: u64 = 100_000;
    send_all(&mut s, N, 2000);
    // Nothing is written while the batch is open.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        read_jsonl(&router.path("local.jsonl")).is_empty(),
        "batch closed before max_age"
    );
    let t0 = Instant::now();
    let status = router.terminate(SECS(30));
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status}\n{}", router.logs());
    assert!(took < SECS(25), "shutdown took {took:?}, grace is 25 s");
    let lines = read_jsonl(&router.path("local.jsonl"));
    let got: BTreeSet<u64> = lines.iter().map(|v| v["i"].as_u64().expect("i")).collect();
    assert_eq!(lines.len(), N as usize);
    assert_eq!(got, ids(0..N));
    eprintln!("SIGTERM flushed {N} records in {took:?}");
}

/// SIGTERM while the destination stays down: a disk buffer keeps the records for the next
/// start (which delivers them); a memory buffer counts them as lost in a clear log line.
#[test]
fn sigterm_with_destination_down_disk_keeps_memory_reports_lost() {
    // Disk.
    let fwd = free_port();
    let dest_port = free_port();
    let url = format!("http://127.0.0.1:{dest_port}/ingest");
    let cfg = http_config(fwd, &url, r#"buffer = { type = "disk" }"#)
        .replace(r#"shutdown_grace = "10s""#, r#"shutdown_grace = "3s""#);
    let mut router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    const N: u64 = 2000;
    send_all(&mut s, N, 200);
    let t0 = Instant::now();
    let status = router.terminate(SECS(15));
    assert!(status.success(), "exit status {status}\n{}", router.logs());
    assert!(
        t0.elapsed() < SECS(6),
        "shutdown took {:?} with a 3 s grace",
        t0.elapsed()
    );
    let logs = router.logs();
    // Every record is still on disk: all of them are kept, none reported lost.
    let want = format!(
        "output web: at the shutdown deadline {N} records are kept in the disk buffer for the next start"
    );
    assert!(logs.contains(&want), "no {want:?} in:\n{logs}");
    assert!(
        logs.contains(&format!(
            "0 lost (memory buffers), {N} kept in disk buffers"
        )),
        "{logs}"
    );
    let dir = router.into_dir();
    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    let router = Router::start_in(dir, &cfg);
    let got = dest.wait_ids(&ids(0..N), SECS(30));
    let missing = (0..N).filter(|i| !got.contains_key(i)).count();
    assert_eq!(
        missing, 0,
        "records kept on disk at SIGTERM were not delivered after restart"
    );
    drop(router);

    // Memory.
    let fwd = free_port();
    let dest_port = free_port();
    let url = format!("http://127.0.0.1:{dest_port}/ingest");
    let cfg =
        http_config(fwd, &url, "").replace(r#"shutdown_grace = "10s""#, r#"shutdown_grace = "3s""#);
    let mut router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    send_all(&mut s, N, 200);
    let status = router.terminate(SECS(15));
    assert!(status.success(), "exit status {status}\n{}", router.logs());
    let logs = router.logs();
    // Lost, or (a request cut off by the deadline) maybe arrived: together all of them.
    let line = logs
        .lines()
        .find(|l| l.contains("output web: at the shutdown deadline"))
        .unwrap_or_else(|| panic!("no clear loss line in:\n{logs}"));
    let number_after = |what: &str| -> u64 {
        let at = line
            .find(what)
            .map(|i| i + what.len())
            .unwrap_or(line.len());
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number after {what:?}: {line}"))
    };
    let lost = number_after("at the shutdown deadline ");
    let unknown = number_after("(memory buffer: lost) and ");
    assert_eq!(lost + unknown, N, "{line}");
}

/// A full disk buffer with `when_full = "block"` stops acks; once the destination recovers,
/// the client goes on and nothing acked is lost.
#[test]
fn full_disk_buffer_blocks_then_recovers_without_loss() {
    let fwd = free_port();
    let dest_port = free_port();
    let url = format!("http://127.0.0.1:{dest_port}/ingest");
    let cfg = http_config(
        fwd,
        &url,
        r#"buffer = { type = "disk", max_size = "256KiB", when_full = "block" }"#,
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(3));
    // ~150 bytes per record on disk: 256 KiB hold ~1700 records. Offer 5000.
    const N: u64 = 5000;
    let mut acked = 0u64;
    let mut blocked_at = None;
    while acked < N {
        let chunk = s.send(acked..acked + 100);
        match s.client.read_ack(&chunk) {
            Ok(()) => acked += 100,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
                blocked_at = Some((acked, chunk));
                break;
            }
        }
    }
    let (acked_before, chunk) = blocked_at.expect("a full buffer must stop the acks");
    assert!(
        (1000..N).contains(&acked_before),
        "blocked after {acked_before} records"
    );
    assert!(router.metric("firelane_buffer_bytes", &[r#"output="web""#]) <= 256.0 * 1024.0);
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &[r#"output="web""#, r#"result="dropped""#]
        ),
        0.0
    );

    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    // The pending request is acked once space frees up.
    let deadline = Instant::now() + SECS(30);
    loop {
        match s.client.read_ack(&chunk) {
            Ok(()) => break,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
            Err(e) => panic!("ack never came after recovery: {e}"),
        }
    }
    let mut acked = acked_before + 100;
    while acked < N {
        s.send_acked(acked..acked + 100);
        acked += 100;
    }
    let got = dest.wait_ids(&ids(0..N), SECS(30));
    let missing: Vec<u64> = (0..N).filter(|i| !got.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} acked records lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!("block: acks stopped after {acked_before} records; all {N} delivered after recovery");
}

/// `when_full = "drop_newest"`: drops are counted, everything accepted is delivered.
#[test]
fn full_disk_buffer_drop_newest_counts_drops_and_delivers_the_rest() {
    let fwd = free_port();
    let dest_port = free_port();
    let url = format!("http://127.0.0.1:{dest_port}/ingest");
    let cfg = http_config(
        fwd,
        &url,
        r#"buffer = { type = "disk", max_size = "256KiB", when_full = "drop_newest" }"#,
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    const N: u64 = 5000;
    send_all(&mut s, N, 100); // every request is acked, full buffer or not
    let dropped = router.metric(
        "firelane_output_records_total",
        &[r#"output="web""#, r#"result="dropped""#],
    );
    assert!(dropped > 0.0 && dropped < N as f64, "dropped {dropped}");
    let accepted = N - dropped as u64;
    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    let sent = router.wait_metric(
        "firelane_output_records_total",
        &[r#"output="web""#, r#"result="sent""#],
        accepted as f64,
        SECS(30),
    );
    assert_eq!(sent as u64, accepted);
    let got = dest.delivered_ids();
    assert_eq!(
        got.len() as u64,
        accepted,
        "every accepted record delivered once"
    );
    // The oldest records were kept: drop_newest drops what arrives after the buffer filled.
    assert!((0..1000).all(|i| got.contains_key(&i)));
    assert!(router.logs().contains("buffer full"), "drop not logged");
    eprintln!("drop_newest: {N} offered, {dropped} dropped, {accepted} delivered");
}

/// `runtime.memory_limit` of the memory-bound tests.
const LIMIT_MIB: u64 = 64;
/// Allowed peak RSS above it: allocator slack, thread stacks, code and the decode buffers
/// of the connections.
const OVERHEAD_MIB: u64 = 96;

/// Forward input → output `stuck`, an http output to `dest` (which stalls), with
/// `buffer` (a TOML inline table) under a `LIMIT_MIB` memory limit.
fn stalled_output_config(fwd: u16, dest: &FakeHttp, buffer: &str) -> String {
    format!(
        r#"
[runtime]
memory_limit = "{LIMIT_MIB}MiB"
shutdown_grace = "2s"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["stuck"]

[outputs.stuck]
type = "http"
url = "{}"
timeout = "120s"
buffer = {buffer}
"#,
        dest.url()
    )
}

/// Memory stays bounded while a stalled output's buffer is full: records are offered
/// through forward (drop_newest, so the whole volume passes through the decoder) and the
/// router's peak RSS stays under memory_limit + a fixed overhead.
#[test]
fn memory_stays_bounded_with_a_stalled_output() {
    // 1 GiB by default (about 10 s in debug); FIRELANE_TEST_OFFER_MIB changes it.
    let total_mib: u64 = std::env::var("FIRELANE_TEST_OFFER_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Stall);
    let cfg = stalled_output_config(
        fwd,
        &dest,
        r#"{ max_size = "48MiB", when_full = "drop_newest" }"#,
    );
    let router = Router::start(&cfg);
    let base = vm_hwm_kib(pid(&router));
    let mut s = Sender::connect(fwd, SECS(30)).with_pad(1000);
    const PER: u64 = 1000; // ~1 MiB per request
    let requests = total_mib; // one MiB each
    let t0 = Instant::now();
    for r in 0..requests {
        s.send_acked(r * PER..(r + 1) * PER);
    }
    let hwm = vm_hwm_kib(pid(&router));
    let dropped = router.metric(
        "firelane_output_records_total",
        &[r#"output="stuck""#, r#"result="dropped""#],
    );
    let buffered = router.metric("firelane_buffer_bytes", &[r#"output="stuck""#]);
    eprintln!(
        "memory: offered {total_mib} MiB in {:?}; VmHWM {} MiB (at start {} MiB); buffer {} MiB; dropped {dropped} records",
        t0.elapsed(),
        hwm / 1024,
        base / 1024,
        buffered / 1048576.0
    );
    assert!(dropped > 0.0, "the buffer never filled");
    assert!(buffered <= 48.0 * 1048576.0 + 1048576.0);
    assert!(
        hwm / 1024 <= LIMIT_MIB + OVERHEAD_MIB,
        "peak RSS {} MiB above {LIMIT_MIB} + {OVERHEAD_MIB} MiB",
        hwm / 1024
    );
}

/// A permanently failing output (HTTP 400) sends its records to the dead letter output
/// with the error attached, counted as dead_lettered.
#[test]
fn permanent_failures_go_to_the_dead_letter_output() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Status(400, None));
    let cfg = format!(
        r#"
[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["web"]

[outputs.web]
type = "http"
url = "{}"
dead_letter = "dlq"
batch = {{ max_age = "100ms" }}

[outputs.dlq]
type = "file"
path = "{{dir}}/dlq.jsonl"
"#,
        dest.url()
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    s.send_acked(0..50);
    let lines = wait_lines(&router.path("dlq.jsonl"), 50, SECS(15));
    assert_eq!(lines.len(), 50);
    let got: BTreeSet<u64> = lines.iter().map(|v| v["i"].as_u64().expect("i")).collect();
    assert_eq!(got, ids(0..50));
    for v in &lines {
        assert_eq!(
            v["log"].as_str().map(str::len),
            Some(100),
            "original fields kept: {v}"
        );
        let e = &v["firelane_error"];
        assert_eq!(e["output"], "web", "{v}");
        assert_eq!(e["reason"], "client_error", "{v}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains("400")),
            "{v}"
        );
        assert_eq!(e["attempts"], 1, "a 400 is not retried: {v}");
    }
    assert_eq!(dest.requests(), 1, "permanent error retried");
    assert_eq!(
        router.wait_metric(
            "firelane_output_records_total",
            &[r#"output="web""#, r#"result="dead_lettered""#],
            50.0,
            SECS(5)
        ),
        50.0
    );
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &[r#"output="web""#, r#"result="failed""#]
        ),
        0.0
    );
    assert_eq!(
        router.wait_metric(
            "firelane_output_records_total",
            &[r#"output="dlq""#, r#"result="sent""#],
            50.0,
            SECS(5)
        ),
        50.0
    );
}

/// Part of the records delivered, the rest waiting over several segments when kill -9
/// comes: after restart every acked record is delivered, delivered segments are gone, and
/// few records come twice (the ack watermark is persisted every 100 ms).
#[test]
fn kill9_after_partial_delivery_over_several_segments() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Ok);
    // 4 MiB buffer: 1 MiB segments of ~6000 records.
    let cfg = http_config(
        fwd,
        &dest.url(),
        r#"buffer = { type = "disk", max_size = "4MiB" }
batch = { max_records = 200, max_age = "50ms" }"#,
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    const DONE: u64 = 8000;
    send_range(&mut s, 0, DONE, 100);
    let got = dest.wait_ids(&ids(0..DONE), SECS(30));
    assert_eq!(got.len() as u64, DONE);
    // The watermark reaches the ack file within 100 ms; wait for the buffer to empty.
    let deadline = Instant::now() + SECS(10);
    while router.metric("firelane_buffer_records", &[r#"output="web""#]) > 0.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    dest.state().default = Some(Reply::Status(503, None));
    const N: u64 = 20_000;
    send_range(&mut s, DONE, N, 100);
    let bufdir = router.path("data/buffers/web");
    let before = segments(&bufdir);
    assert!(
        before.len() >= 2,
        "expected several segments, got {before:?}"
    );
    let dir = router.into_dir();

    dest.state().default = Some(Reply::Ok);
    let router = Router::start_in(dir, &cfg);
    let replayed = router.metric(
        "firelane_buffer_replayed_records_total",
        &[r#"output="web""#],
    );
    let got = dest.wait_ids(&ids(0..N), SECS(60));
    let missing: Vec<u64> = (0..N).filter(|i| !got.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} acked records lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let dups: usize = got.values().map(|c| c - 1).sum();
    eprintln!(
        "partial kill9: {N} acked, replayed {replayed}, {dups} duplicates; segments before kill {}",
        before.len()
    );
    assert!(replayed >= (N - DONE) as f64, "replayed {replayed}");
    // The first 8000 were delivered and acked long before the kill: not replayed.
    assert!(
        replayed < (N - DONE) as f64 + 1000.0,
        "replayed {replayed}: delivered records came back"
    );
    let deadline = Instant::now() + SECS(10);
    while router.metric("firelane_buffer_records", &[r#"output="web""#]) > 0.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        segments(&router.path("data/buffers/web")).len() <= 1,
        "delivered segments not deleted"
    );
}

/// After a clean shutdown (everything delivered), a restart replays nothing.
#[test]
fn clean_shutdown_leaves_nothing_to_replay() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Ok);
    let cfg = http_config(
        fwd,
        &dest.url(),
        r#"buffer = { type = "disk" }
batch = { max_age = "50ms" }"#,
    );
    let mut router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    const N: u64 = 3000;
    send_all(&mut s, N, 100);
    drop(s);
    let got = dest.wait_ids(&ids(0..N), SECS(20));
    assert_eq!(got.len() as u64, N);
    // SIGTERM right away: the last acks are at most a few ms old.
    assert!(router.terminate(SECS(15)).success());
    let dir = router.into_dir();
    let before = dest.requests();
    let router = Router::start_in(dir, &cfg);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        router.metric(
            "firelane_buffer_replayed_records_total",
            &[r#"output="web""#]
        ),
        0.0,
        "{}",
        router.logs()
    );
    assert_eq!(
        dest.requests(),
        before,
        "records delivered before a clean shutdown were sent again"
    );
}

/// The HTTP input answers 503 with Retry-After (never 4xx) while a disk buffer is full, and
/// accepts again once the destination recovers; every record answered 200 is delivered.
#[test]
fn http_input_answers_503_while_the_buffer_is_full() {
    let http = free_port();
    let dest_port = free_port();
    let cfg = format!(
        r#"
[runtime]
data_dir = "{{dir}}/data"

[inputs.events]
type = "http"
listen = "127.0.0.1:{http}"
accept_timeout = "500ms"

[routes.all]
to = ["web"]

[outputs.web]
type = "http"
url = "http://127.0.0.1:{dest_port}/ingest"
retry = {{ initial_backoff = "50ms", max_backoff = "300ms" }}
buffer = {{ type = "disk", max_size = "128KiB", when_full = "block" }}
"#
    );
    let _router = Router::start(&cfg);
    let client = reqwest::blocking::Client::builder()
        .timeout(SECS(10))
        .build()
        .expect("client");
    let post = |from: u64| {
        let body: String = (from..from + 50)
            .map(|i| format!("{{\"i\":{i},\"log\":\"{}\"}}\n", "y".repeat(100)))
            .collect();
        client
            .post(format!("http://127.0.0.1:{http}/tag/app"))
            .body(body)
            .send()
            .expect("post")
    };
    let mut accepted = BTreeSet::new();
    let mut next = 0u64;
    let refused = loop {
        assert!(next < 10_000, "the buffer never filled");
        let r = post(next);
        match r.status().as_u16() {
            200 => accepted.extend(next..next + 50),
            503 => break r,
            other => panic!("status {other} for a full buffer"),
        }
        next += 50;
    };
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "503 without Retry-After: {retry_after:?}"
    );
    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    // Once the destination drains the buffer, requests are accepted again.
    let deadline = Instant::now() + SECS(30);
    let resent = next;
    loop {
        let r = post(resent);
        if r.status().as_u16() == 200 {
            accepted.extend(resent..resent + 50);
            break;
        }
        assert_eq!(r.status().as_u16(), 503);
        assert!(Instant::now() < deadline, "still 503 after recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = dest.wait_ids(&accepted, SECS(30));
    let missing: Vec<&u64> = accepted.iter().filter(|i| !got.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "records answered 200 were lost: {missing:?}"
    );
    eprintln!(
        "http input: {} records accepted before 503 (Retry-After {retry_after:?})",
        next
    );
}

/// `when_full = "block"` with several clients and a stalled output: inputs stop reading,
/// and the router's peak RSS stays under memory_limit + overhead.
#[test]
fn memory_stays_bounded_when_blocking() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Stall);
    let cfg = stalled_output_config(
        fwd,
        &dest,
        r#"{ max_size = "256MiB", when_full = "block" }"#,
    );
    let router = Router::start(&cfg);
    // Four clients send 1 MiB requests until an ack takes longer than 3 s.
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = Sender::connect(fwd, SECS(3)).with_pad(1000);
                let mut sent = 0u64;
                loop {
                    let base = c * 1_000_000 + sent;
                    let chunk = s.send(base..base + 1000);
                    if s.client.read_ack(&chunk).is_err() {
                        return sent;
                    }
                    sent += 1000;
                    if sent > 400_000 {
                        return sent;
                    }
                }
            })
        })
        .collect();
    let acked: u64 = clients.into_iter().map(|h| h.join().expect("client")).sum();
    let hwm = vm_hwm_kib(pid(&router)) / 1024;
    let buffered = router.metric("firelane_buffer_bytes", &[r#"output="stuck""#]) / 1048576.0;
    eprintln!(
        "block: {acked} records acked before the inputs stopped; buffer {buffered:.1} MiB; VmHWM {hwm} MiB"
    );
    assert!(acked < 1_600_000, "inputs never pushed back");
    // The buffer's own max_size (256 MiB) is above memory_limit: the process budget wins.
    // (The gauge also counts pushes admitted by the buffer and still waiting for the
    // budget: at most one 1 MiB request per client.)
    assert!(
        buffered <= (LIMIT_MIB + 4) as f64,
        "buffer {buffered} MiB above memory_limit"
    );
    assert!(
        hwm <= LIMIT_MIB + OVERHEAD_MIB,
        "peak RSS {hwm} MiB above {LIMIT_MIB} + {OVERHEAD_MIB} MiB"
    );
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &[r#"output="stuck""#, r#"result="dropped""#]
        ),
        0.0
    );
}

/// A stalled `drop_newest` output whose buffer could take the whole memory budget must
/// shed its own records, not starve the other outputs of the same route.
#[test]
fn stalled_drop_newest_output_does_not_starve_others_of_memory() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Stall);
    let cfg = format!(
        r#"
[runtime]
memory_limit = "32MiB"
shutdown_grace = "2s"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["stuck", "local"]

[outputs.stuck]
type = "http"
url = "{}"
timeout = "120s"
buffer = {{ max_size = "64MiB", when_full = "drop_newest" }}

[outputs.local]
type = "file"
path = "{{dir}}/local.jsonl"
"#,
        dest.url()
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(20)).with_pad(1000);
    const N: u64 = 100_000; // ~100 MiB
    send_all(&mut s, N, 1000);
    let lines = wait_lines(&router.path("local.jsonl"), N as usize, SECS(60));
    assert_eq!(lines.len(), N as usize);
    let dropped = router.metric(
        "firelane_output_records_total",
        &[r#"output="stuck""#, r#"result="dropped""#],
    );
    assert!(dropped > 0.0, "the stuck buffer never filled");
    eprintln!("starve: {N} records through, stuck output dropped {dropped}");
}

/// kill -9 in the middle of steady delivery (acks out of order from 4 concurrent requests,
/// segments rolling): every acked record is delivered after restart.
#[test]
fn kill9_during_steady_delivery_loses_nothing() {
    let fwd = free_port();
    // 4 requests of 200 records per 400 ms: ~2,000 records/s, far slower than the client
    // even when each ack waits for a slow fdatasync, so a backlog is on disk when the kill
    // comes (at 8,000 records/s a slow disk let delivery keep up now and then).
    let dest = FakeHttp::start_replying(Reply::Slow(400));
    let cfg = http_config(
        fwd,
        &dest.url(),
        r#"buffer = { type = "disk", max_size = "16MiB" }
batch = { max_records = 200, max_age = "20ms" }
concurrency = 4"#,
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10)).with_pad(400);
    const N: u64 = 20_000; // ~10 MiB: three 4 MiB segments
    send_all(&mut s, N, 100);
    let sent_before = router.metric(
        "firelane_output_records_total",
        &[r#"output="web""#, r#"result="sent""#],
    );
    let dir = router.into_dir();
    let delivered_before = dest.delivered_ids().len();
    let router = Router::start_in(dir, &cfg);
    let got = dest.wait_ids(&ids(0..N), SECS(60));
    let missing: Vec<u64> = (0..N).filter(|i| !got.contains_key(i)).collect();
    let dups: usize = got.values().map(|c| c - 1).sum();
    let replayed = router.metric(
        "firelane_buffer_replayed_records_total",
        &[r#"output="web""#],
    );
    eprintln!(
        "steady kill9: {N} acked, {delivered_before} delivered before the kill (sent metric {sent_before}), replayed {replayed}, {dups} duplicates"
    );
    assert!(
        missing.is_empty(),
        "{} acked records lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        delivered_before < N as usize,
        "everything was delivered before the kill: the test proved nothing"
    );
}

/// Retries exhausted (`max_retries`) on a 503: dead-lettered with the attempts made; with
/// no dead letter output the records are counted as failed with a log line.
#[test]
fn exhausted_retries_are_dead_lettered_or_counted_failed() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Status(503, None));
    let cfg = format!(
        r#"
[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["web", "bare"]

[outputs.web]
type = "http"
url = "{url}"
dead_letter = "dlq"
batch = {{ max_age = "50ms" }}
retry = {{ initial_backoff = "10ms", max_backoff = "20ms", max_retries = 2 }}

[outputs.bare]
type = "http"
url = "{url}"
batch = {{ max_age = "50ms" }}
retry = {{ initial_backoff = "10ms", max_backoff = "20ms", max_retries = 2 }}

[outputs.dlq]
type = "file"
path = "{{dir}}/dlq.jsonl"
"#,
        url = dest.url()
    );
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(10));
    s.send_acked(0..20);
    let lines = wait_lines(&router.path("dlq.jsonl"), 20, SECS(15));
    assert_eq!(lines.len(), 20);
    for v in &lines {
        let e = &v["firelane_error"];
        assert_eq!(e["output"], "web", "{v}");
        assert_eq!(e["reason"], "server_error", "{v}");
        assert_eq!(e["attempts"], 3, "1 attempt + 2 retries: {v}");
    }
    let failed = router.wait_metric(
        "firelane_output_records_total",
        &[r#"output="bare""#, r#"result="failed""#],
        20.0,
        SECS(10),
    );
    assert_eq!(failed, 20.0);
    assert_eq!(
        router.metric(
            "firelane_output_records_total",
            &[r#"output="web""#, r#"result="dead_lettered""#]
        ),
        20.0
    );
    // Three requests per output, no more.
    assert_eq!(dest.requests(), 6);
    let logs = router.logs();
    assert!(
        logs.contains("output bare: giving up after retries, server_error"),
        "{logs}"
    );
}

/// SIGTERM while a client is held back by a full disk buffer (destination down): exit 0
/// within the grace period; every acked record is delivered after the restart.
#[test]
fn sigterm_while_blocked_on_a_full_disk_buffer() {
    let fwd = free_port();
    let dest_port = free_port();
    let url = format!("http://127.0.0.1:{dest_port}/ingest");
    let cfg = http_config(
        fwd,
        &url,
        r#"buffer = { type = "disk", max_size = "256KiB", when_full = "block" }"#,
    )
    .replace(r#"shutdown_grace = "10s""#, r#"shutdown_grace = "4s""#);
    let mut router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(2));
    let mut acked = 0u64;
    loop {
        let chunk = s.send(acked..acked + 100);
        if s.client.read_ack(&chunk).is_err() {
            break;
        }
        acked += 100;
        assert!(acked < 20_000, "the buffer never filled");
    }
    let t0 = Instant::now();
    let status = router.terminate(SECS(15));
    assert!(status.success(), "exit {status}\n{}", router.logs());
    assert!(t0.elapsed() < SECS(7), "shutdown took {:?}", t0.elapsed());
    let dir = router.into_dir();
    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    let _router = Router::start_in(dir, &cfg);
    let got = dest.wait_ids(&ids(0..acked), SECS(30));
    let missing = (0..acked).filter(|i| !got.contains_key(i)).count();
    assert_eq!(missing, 0, "{missing} of {acked} acked records lost");
}

// === full filesystem ===

/// The full-filesystem tests' router: an HTTP input on `http` → an `http` output `web` to
/// `dest_port` with a disk buffer (`max_size` far beyond the free space, `when_full =
/// "block"`) in `data`.
fn full_disk_config(data: &Path, http: u16, dest_port: u16) -> String {
    format!(
        r#"
[runtime]
data_dir = "{data}"
shutdown_grace = "5s"

[inputs.events]
type = "http"
listen = "127.0.0.1:{http}"
accept_timeout = "2s"

[routes.all]
to = ["web"]

[outputs.web]
type = "http"
url = "http://127.0.0.1:{dest_port}/ingest"
retry = {{ initial_backoff = "50ms", max_backoff = "300ms" }}
batch = {{ max_records = 500, max_age = "50ms" }}
buffer = {{ type = "disk", max_size = "1GiB", when_full = "block" }}
"#,
        data = data.display()
    )
}

/// Posts requests of [`Poster::PER`] records `{"i": n, "log": 1000 × "d"}` (~52 KiB, so
/// 20 MiB fill after about 400) to an HTTP input, numbering on from the last one, and
/// keeps the ids of those answered 200.
struct Poster {
    client: reqwest::blocking::Client,
    url: String,
    next: u64,
    /// `i` of every record of a request answered 200.
    acked: BTreeSet<u64>,
}

impl Poster {
    const PER: u64 = 50;

    fn new(http: u16) -> Poster {
        let client = reqwest::blocking::Client::builder()
            .timeout(SECS(10))
            .build()
            .expect("client");
        Poster {
            client,
            url: format!("http://127.0.0.1:{http}/tag/app"),
            next: 0,
            acked: BTreeSet::new(),
        }
    }

    /// Posts the next request: its status and body. Its ids are used up either way.
    fn post(&mut self) -> (u16, String) {
        let ids = self.next..self.next + Self::PER;
        self.next = ids.end;
        let body: String = ids
            .clone()
            .map(|i| format!("{{\"i\":{i},\"log\":\"{}\"}}\n", "d".repeat(1000)))
            .collect();
        let r = self.client.post(&self.url).body(body).send().expect("post");
        let status = r.status().as_u16();
        if status == 200 {
            self.acked.extend(ids);
        }
        (status, r.text().unwrap_or_default())
    }

    /// Posts until a request is answered 503 (the disk is full) and returns that body;
    /// any other answer, or 100,000 records posted, fails the test.
    fn until_refused(&mut self) -> String {
        loop {
            assert!(self.next < 100_000, "the filesystem never filled");
            match self.post() {
                (200, _) => {}
                (503, body) => return body,
                (other, body) => panic!("status {other} ({body}) while filling the disk"),
            }
        }
    }

    /// Posts every 100 ms until a request is answered 200; a refusal other than 503, or
    /// none accepted within 30 s, fails the test (with `router`'s log).
    fn until_accepted(&mut self, router: &Router) {
        let deadline = Instant::now() + SECS(30);
        loop {
            let (status, body) = self.post();
            if status == 200 {
                return;
            }
            assert_eq!(status, 503, "{body}");
            assert!(
                Instant::now() < deadline,
                "still refused 30 s after every record was delivered: {body}\n{}",
                router.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The issue's scenario: `data_dir` on a 20 MiB filesystem, a down `http` output with a disk
/// buffer whose `max_size` is far beyond the free space, HTTP requests acked until refused.
/// While full: 503 saying "disk full", `/ready` 503 and `/health` naming the output, the
/// refusals counted. Once the output is up: every acked record is delivered once, new
/// requests are accepted again without a restart, and a restart replays nothing.
#[test]
fn a_disk_buffer_that_fills_its_filesystem_recovers_without_restart() {
    let Some(fs) = Tmpfs::mount("20m") else {
        return;
    };
    let http = free_port();
    let dest_port = free_port();
    let cfg = full_disk_config(fs.path(), http, dest_port);
    let router = Router::start(&cfg);
    let mut poster = Poster::new(http);
    let admin = |path: &str| {
        common::http_get(&format!("http://127.0.0.1:{}{path}", router.admin)).expect("admin")
    };

    let refusal = poster.until_refused();
    assert!(
        refusal.contains("disk full"),
        "503 body does not say disk full: {refusal:?}"
    );
    assert!(
        poster.acked.len() > 10_000,
        "only {} records fit in 20 MiB",
        poster.acked.len()
    );
    let (ready, ready_body) = admin("/ready");
    assert_eq!(ready, 503, "/ready while the disk is full: {ready_body}");
    assert!(ready_body.contains("disk full"), "{ready_body}");
    let (health, health_body) = admin("/health");
    assert_eq!(health, 200, "liveness stays up: {health_body}");
    let h: serde_json::Value = serde_json::from_str(&health_body).expect("health JSON");
    assert_eq!(h["status"], "disk_full", "{health_body}");
    assert!(h["disk_full"]["web"]["error"].is_string(), "{health_body}");
    assert!(
        router.metric(
            "firelane_input_errors_total",
            &[r#"input="events""#, r#"kind="disk_full""#]
        ) >= 1.0
    );
    assert_eq!(
        router.metric("firelane_buffer_disk_full", &[r#"output="web""#]),
        1.0
    );
    // Still full a moment later: refused again, with the same answer.
    let (status, body) = poster.post();
    assert_eq!((status, body.contains("disk full")), (503, true), "{body}");

    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    let got = dest.wait_ids(&poster.acked, SECS(60));
    let missing = poster.acked.iter().filter(|i| !got.contains_key(i)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acked records lost",
        poster.acked.len()
    );
    let twice: Vec<u64> = got
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&i, _)| i)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");

    // Accepted again without a restart, once deliveries freed the space.
    poster.until_accepted(&router);
    for _ in 0..20 {
        let (status, body) = poster.post();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(admin("/ready").0, 200);
    let h: serde_json::Value = serde_json::from_str(&admin("/health").1).expect("health JSON");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(
        router.metric("firelane_buffer_disk_full", &[r#"output="web""#]),
        0.0
    );
    let got = dest.wait_ids(&poster.acked, SECS(30));
    assert!(poster.acked.iter().all(|i| got.contains_key(i)));

    // Everything delivered and recorded: a restart (even kill -9) replays nothing.
    let deadline = Instant::now() + SECS(10);
    while router.metric("firelane_buffer_records", &[r#"output="web""#]) > 0.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let requests = dest.requests();
    let dir = router.into_dir();
    let router = Router::start_in(dir, &cfg);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        router.metric(
            "firelane_buffer_replayed_records_total",
            &[r#"output="web""#]
        ),
        0.0,
        "{}",
        router.logs()
    );
    assert_eq!(dest.requests(), requests, "delivered records sent again");
    drop(router);
}

/// Issue #9: the ack file deleted (an operator freeing space by hand) while the disk is
/// full never recovered: creating a new ack file needs space, only deleting delivered
/// segments frees it, and segments were deleted only once an ack file recorded them.
/// Here: fill a 20 MiB filesystem with a down output's disk buffer, stop the router,
/// delete the ack file, fill the space that freed, restart, bring the output up. Every
/// acked record is delivered, the buffer frees its space and writes a new ack file, and
/// new requests are accepted again, without another restart.
#[test]
fn a_deleted_ack_file_on_a_full_disk_recovers_once_deliveries_free_space() {
    let Some(fs) = Tmpfs::mount("20m") else {
        return;
    };
    let http = free_port();
    let dest_port = free_port();
    let cfg = full_disk_config(fs.path(), http, dest_port);
    let mut poster = Poster::new(http);

    let mut router = Router::start(&cfg);
    let refusal = poster.until_refused();
    assert!(refusal.contains("disk full"), "{refusal}");
    router.kill9();
    let buffer_dir = fs.path().join("buffers").join("web");
    std::fs::remove_file(buffer_dir.join("acks")).expect("delete the ack file");
    // What its deletion freed is taken again: not even a new ack file fits now.
    let mut filler = std::fs::File::create(fs.path().join("filler")).expect("filler");
    let block = vec![b'f'; 4096];
    while filler
        .write_all(&block)
        .and_then(|()| filler.sync_data())
        .is_ok()
    {}
    drop(filler);

    let router = Router::start(&cfg);
    let dest = FakeHttp::start_on(dest_port, Reply::Ok);
    let got = dest.wait_ids(&poster.acked, SECS(60));
    let missing = poster.acked.iter().filter(|i| !got.contains_key(i)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acked records lost\n{}",
        poster.acked.len(),
        router.logs()
    );

    // The space comes back without a restart: new requests are taken.
    poster.until_accepted(&router);
    let got = dest.wait_ids(&poster.acked, SECS(30));
    assert!(poster.acked.iter().all(|i| got.contains_key(i)));
    // And the deliveries are recorded again: a new ack file.
    let deadline = Instant::now() + SECS(10);
    while !buffer_dir.join("acks").is_file() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        buffer_dir.join("acks").is_file(),
        "no new ack file\n{}",
        router.logs()
    );
    assert_eq!(
        router.metric("firelane_buffer_disk_full", &[r#"output="web""#]),
        0.0
    );
    drop(router);
}

// === out-of-order acks ===

/// One batch held (its request never answered, like a quiet partition's batch waiting for
/// its max_age) while the batches behind it are delivered: the buffer is full only of
/// undelivered data, so five times `max_size` passes through without blocking the input;
/// after kill -9 and a restart, only the held batch is replayed.
#[test]
fn one_held_batch_neither_fills_the_buffer_nor_replays_what_was_delivered() {
    let fwd = free_port();
    let dest = FakeHttp::start_replying(Reply::Ok);
    dest.script(&[Reply::Stall]);
    let cfg = http_config(
        fwd,
        &dest.url(),
        r#"buffer = { type = "disk", max_size = "1MiB" }
batch = { max_records = 100, max_age = "20ms" }
concurrency = 4"#,
    )
    .replace(r#"timeout = "5s""#, r#"timeout = "300s""#);
    let router = Router::start(&cfg);
    let mut s = Sender::connect(fwd, SECS(20)).with_pad(400);
    // ~500 bytes a record: 10,000 records are about 5 × max_size.
    const N: u64 = 10_000;
    let t0 = Instant::now();
    send_all(&mut s, N, 50);
    eprintln!("{N} records acked in {:?}", t0.elapsed());
    let held: BTreeSet<u64> = {
        let st = dest.state();
        assert_eq!(st.seen[0].status, 0, "the first request is the stalled one");
        st.seen[0].ids.iter().copied().collect()
    };
    assert!(!held.is_empty() && held.len() <= 100, "held {}", held.len());
    let rest: BTreeSet<u64> = (0..N).filter(|i| !held.contains(i)).collect();
    let got = dest.wait_ids(&rest, SECS(60));
    assert!(rest.iter().all(|i| got.contains_key(i)));
    // Everything but the held batch is acked: that is all the buffer holds.
    let deadline = Instant::now() + SECS(10);
    while router.metric("firelane_buffer_records", &[r#"output="web""#]) > held.len() as f64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        router.metric("firelane_buffer_records", &[r#"output="web""#]),
        held.len() as f64
    );
    assert!(router.metric("firelane_buffer_bytes", &[r#"output="web""#]) < 100_000.0);
    // The persisted ack state catches up: the acks file holds its final bytes (what a
    // restart after kill -9 reads), then, once it is fdatasync'ed, the segments behind the
    // held batch go. Both polled: a busy machine's fdatasync can be slow, and the segments
    // may be under the bound before the last acks are written.
    wait_acks_settled(&router.path("data/buffers/web"));
    let on_disk = || -> u64 {
        segments(&router.path("data/buffers/web"))
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    };
    let deadline = Instant::now() + SECS(15);
    while on_disk() > 2 << 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_disk = on_disk();
    assert!(
        on_disk <= 2 << 20,
        "{on_disk} bytes of segments for 1 MiB max_size"
    );

    let delivered_before: usize = dest.delivered_ids().values().sum();
    let dir = router.into_dir();
    let router = Router::start_in(dir, &cfg);
    let replayed = router.metric(
        "firelane_buffer_replayed_records_total",
        &[r#"output="web""#],
    );
    let got = dest.wait_ids(&ids(0..N), SECS(60));
    let missing = (0..N).filter(|i| !got.contains_key(i)).count();
    assert_eq!(missing, 0, "{missing} acked records lost");
    std::thread::sleep(Duration::from_millis(500));
    let got = dest.delivered_ids();
    let dups: usize = got.values().map(|c| c - 1).sum();
    eprintln!(
        "held batch of {}: {delivered_before} delivered before kill -9, replayed {replayed}, {dups} duplicates",
        held.len()
    );
    assert_eq!(
        replayed,
        held.len() as f64,
        "replayed more than the held batch"
    );
    assert!(dups <= held.len(), "{dups} duplicates");
}

// === metrics present from the start ===

/// The replayed and quarantined counters (and the disk gauges) are in `/metrics` at 0 as
/// soon as a buffer opens, for disk and memory buffers, so alerts on them work before the
/// first replay.
#[test]
fn buffer_counters_are_exported_at_zero_from_the_start() {
    let fwd = free_port();
    let cfg = format!(
        r#"
[runtime]
data_dir = "{{dir}}/data"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["ondisk", "inmem"]

[outputs.ondisk]
type = "null"
buffer = {{ type = "disk" }}

[outputs.inmem]
type = "null"
"#
    );
    let router = Router::start(&cfg);
    let text = router.metrics();
    let has = |line: &str| text.lines().any(|l| l == line);
    for output in ["ondisk", "inmem"] {
        for name in [
            "firelane_buffer_replayed_records_total",
            "firelane_buffer_quarantined_total",
        ] {
            let line = format!(r#"{name}{{output="{output}"}} 0"#);
            assert!(has(&line), "no {line:?} in /metrics:\n{text}");
        }
    }
    for name in ["firelane_buffer_disk_full", "firelane_buffer_disk_bytes"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!(r#"{name}{{output="ondisk"}} "#))),
            "no {name} for the disk buffer in /metrics:\n{text}"
        );
    }
}

/// The issue's S3 case on moto: one record tagged `quiet` opens a batch that waits for its
/// `max_age` (60 s), then a stream tagged `busy` of 5 × `max_size` goes to S3 in size-closed
/// batches. The input is never blocked (the buffer holds only the quiet record once the
/// busy ones are in S3), and after kill -9 and a restart at most the quiet batch (1 record)
/// comes twice. Run with `scripts/test.sh --test durability` (moto).
#[test]
fn s3_quiet_partition_does_not_block_or_replay_the_busy_one() {
    let Some(m) = MotoBucket::create("fl-quiet") else {
        return;
    };
    let in_s3 = |tag: &str| m.ids(tag);

    let fwd = free_port();
    let cfg = s3_quiet_busy_config(fwd, &m);
    let router = Router::start(&cfg);
    let mut quiet = Sender::connect(fwd, SECS(20));
    quiet.tag = "quiet".into();
    quiet.send_acked(0..1);
    let mut busy = Sender::connect(fwd, SECS(20)).with_pad(400);
    busy.tag = "busy".into();
    // ~500 bytes a record: 10,000 busy records are about 5 × max_size.
    const N: u64 = 10_000;
    let t0 = Instant::now();
    // At most ~0.5 MB per 150 ms. Unpaced, the stream (~10 MB/s here) outran the disk
    // buffer's ack persistence (every 100 ms): delivered segments waited for it while
    // the files passed 3/4 of their 2 MiB cap with half of it done, which is the rule that
    // seals batches pinning old segments (`reason="disk"`), so the quiet batch was sealed
    // now and then, rightly. Paced, the stream is still 5 × `max_size` and the rule has no
    // reason to fire.
    for from in (1..=N).step_by(1_000) {
        send_range(&mut busy, from, (from + 1_000).min(N + 1), 50);
        std::thread::sleep(Duration::from_millis(150));
    }
    eprintln!("{N} busy records acked in {:?}", t0.elapsed());
    // The busy batches close by size (64 KiB); the last one waits for max_age like the
    // quiet one. Wait until the buffer holds no more than those two open batches.
    let deadline = Instant::now() + SECS(60);
    let delivered = loop {
        let got = in_s3("busy");
        if got.len() as u64 >= N - 200 || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        delivered.len() as u64 >= N - 200,
        "only {} busy records in S3",
        delivered.len()
    );
    assert!(
        in_s3("quiet").is_empty(),
        "the quiet batch closed early; sealed early: {:?}",
        router
            .metrics()
            .lines()
            .filter(|l| l.starts_with("firelane_output_sealed_batches_total")
                || l.starts_with("firelane_buffer_disk"))
            .collect::<Vec<_>>()
    );
    let deadline = Instant::now() + SECS(10);
    while router.metric("firelane_buffer_records", &[r#"output="s3""#])
        > (N + 1 - delivered.len() as u64) as f64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_acks_settled(&router.path("data/buffers/s3")); // the ack state reaches the disk
    let open_batches = router.metric("firelane_buffer_records", &[r#"output="s3""#]) as u64;
    assert!(open_batches >= 1, "the quiet record is undelivered");

    let dir = router.into_dir(); // kill -9
    let mut router = Router::start_in(dir, &cfg);
    let replayed = router.metric(
        "firelane_buffer_replayed_records_total",
        &[r#"output="s3""#],
    );
    // SIGTERM flushes every open batch (quiet, and busy replays if any).
    assert!(router.terminate(SECS(40)).success(), "{}", router.logs());
    let busy_got = in_s3("busy");
    let quiet_got = in_s3("quiet");
    let missing = (1..=N).filter(|i| !busy_got.contains_key(i)).count();
    assert_eq!(missing, 0, "{missing} acked busy records lost");
    assert_eq!(quiet_got.get(&0), Some(&1), "quiet record: {quiet_got:?}");
    let dups: usize = busy_got.values().map(|c| c - 1).sum();
    eprintln!(
        "quiet partition: {} busy in S3 before kill -9, open batches {open_batches} records, replayed {replayed}, {dups} busy duplicates",
        delivered.len()
    );
    // Replayed: the quiet record and the busy records still in the open busy batch.
    assert!(
        replayed <= open_batches as f64,
        "replayed {replayed}, more than the {open_batches} undelivered"
    );
    assert!(dups <= 1, "{dups} duplicates: more than the quiet batch");
}

/// The S3 quiet/busy tests' router: a forward input on `fwd` → an `s3` output to `m`'s
/// bucket, objects keyed `<tag>/<uuid>.json`, batches of 64 KiB or 60 s, a 1 MiB disk
/// buffer.
fn s3_quiet_busy_config(fwd: u16, m: &MotoBucket) -> String {
    format!(
        r#"
[runtime]
data_dir = "{{dir}}/data"
shutdown_grace = "20s"

[inputs.app]
type = "forward"
listen = ["tcp://127.0.0.1:{fwd}"]

[routes.all]
to = ["s3"]

[outputs.s3]
type = "s3"
bucket = "{bucket}"
key = "{{tag}}/{{uuid}}.json"
compression = "none"
region = "us-east-1"
endpoint_url = "{ep}"
force_path_style = true
batch = {{ max_bytes = "64KiB", max_age = "60s" }}
buffer = {{ type = "disk", max_size = "1MiB" }}
"#,
        bucket = m.bucket,
        ep = m.ep
    )
}

/// A fresh bucket on the moto server of `scripts/test.sh`, and what the tests read back.
struct MotoBucket {
    rt: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
    ep: String,
    bucket: String,
}

impl MotoBucket {
    /// `None` (the test is skipped, or fails in CI) without moto.
    fn create(prefix: &str) -> Option<MotoBucket> {
        let ep = common::moto::endpoint()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let s3 = rt.block_on(async {
            let conf = firelane::output::aws::sdk_config(&firelane::output::aws::AwsSettings {
                region: Some("us-east-1".into()),
                endpoint_url: Some(ep.clone()),
                role_arn: None,
            })
            .await;
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&conf)
                    .endpoint_url(&ep)
                    .force_path_style(true)
                    .build(),
            )
        });
        let bucket = common::moto::unique(prefix);
        rt.block_on(s3.create_bucket().bucket(&bucket).send())
            .expect("create bucket");
        Some(MotoBucket { rt, s3, ep, bucket })
    }

    /// `i` of every record under `<tag>/` (JSON lines), with how often each is there.
    fn ids(&self, tag: &str) -> BTreeMap<u64, usize> {
        let (s3, bucket) = (&self.s3, &self.bucket);
        self.rt.block_on(async {
            let mut got = BTreeMap::new();
            let mut token = None;
            loop {
                let page = s3
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(format!("{tag}/"))
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list objects");
                for o in page.contents() {
                    let obj = s3
                        .get_object()
                        .bucket(bucket)
                        .key(o.key().expect("key"))
                        .send()
                        .await
                        .expect("get object");
                    let body = obj.body.collect().await.expect("body").into_bytes();
                    for line in String::from_utf8_lossy(&body).lines() {
                        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                        *got.entry(v["i"].as_u64().expect("i")).or_insert(0) += 1;
                    }
                }
                match page.next_continuation_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => break,
                }
            }
            got
        })
    }
}

/// The tester's case: a `quiet` tag sends one record every 50 ms while a `busy` tag sends
/// 10 × `max_size` to S3 (moto), `max_age = "60s"`. Every quiet record lands in another
/// segment file, and a segment is deleted only when all its records are delivered, so
/// before the fix the quiet batch pinned every segment: the files reached 2 × `max_size`
/// with almost nothing undelivered and the inputs stopped for the 60 s (no ack within
/// 20 s here). Now the open batches that pin the oldest files are sealed
/// (`reason="disk"`), the busy stream flows, and nothing is lost.
/// Run with `scripts/test.sh --test durability` (moto).
#[test]
fn s3_quiet_partition_interleaved_with_a_busy_one_does_not_pin_the_disk_buffer() {
    let Some(m) = MotoBucket::create("fl-pin") else {
        return;
    };
    let fwd = free_port();
    let cfg = s3_quiet_busy_config(fwd, &m);
    let mut router = Router::start(&cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut s = Sender::connect(fwd, SECS(20));
            s.tag = "quiet".into();
            let mut i = 1_000_000u64;
            while !stop.load(Ordering::Relaxed) {
                s.send_acked(i..i + 1);
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            i - 1_000_000
        })
    };
    let mut busy = Sender::connect(fwd, SECS(20)).with_pad(400);
    busy.tag = "busy".into();
    // ~500 bytes a record: 20,000 busy records are about 10 × max_size.
    const N: u64 = 20_000;
    let t0 = Instant::now();
    let mut max_disk = 0f64;
    let mut i = 0;
    while i < N {
        send_range(&mut busy, i, (i + 1000).min(N), 50);
        i += 1000;
        max_disk = max_disk.max(router.metric("firelane_buffer_disk_bytes", &[r#"output="s3""#]));
    }
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let quiet_sent = quiet.join().expect("quiet sender");
    let sealed = router.metric(
        "firelane_output_sealed_batches_total",
        &[r#"output="s3""#, r#"reason="disk""#],
    );
    eprintln!(
        "{N} busy records acked in {took:?} with {quiet_sent} quiet ones; \
         {sealed} batches sealed for the disk files, at most {max_disk} file bytes"
    );
    assert!(sealed >= 1.0, "no batch sealed for the disk files");
    assert!(max_disk <= (2 << 20) as f64, "{max_disk} file bytes");
    // Sent early, the quiet records are in S3 before any max_age.
    assert!(!m.ids("quiet").is_empty(), "no quiet batch sent early");
    assert!(router.terminate(SECS(40)).success(), "{}", router.logs());
    let busy_got = m.ids("busy");
    let missing = (0..N).filter(|i| !busy_got.contains_key(i)).count();
    assert_eq!(missing, 0, "{missing} acked busy records lost");
    let quiet_got = m.ids("quiet");
    let missing = (1_000_000..1_000_000 + quiet_sent)
        .filter(|i| !quiet_got.contains_key(i))
        .count();
    assert_eq!(missing, 0, "{missing} acked quiet records lost");
}
