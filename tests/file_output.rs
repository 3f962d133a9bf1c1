//! The `file` output on a filesystem that fills up: a batch that is written in part must not
//! leave a torn line behind for its retry to follow (found while benchmarking with a full
//! disk: "line 516309 is not JSON").

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Router, free_port, tmpfs::Tmpfs};

/// A 16 MiB tmpfs, 15 MiB of it taken by a filler file; ~6 MiB of acked records go to a
/// `file` output on it. Writes fail part way (ENOSPC after a short write) until the filler
/// is removed; then every line of the output must be one whole record and every record must
/// be there exactly once.
#[test]
fn a_batch_cut_short_by_a_full_disk_leaves_no_torn_line() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 15 << 20]).expect("filler");
    let out = fs.path().join("out.log");
    let http = free_port();
    let cfg = format!(
        r#"
[runtime]
memory_limit = "256MiB"

[inputs.events]
type = "http"
listen = "127.0.0.1:{http}"

[routes.all]
to = ["file"]

[outputs.file]
type = "file"
path = "{out}"
batch = {{ max_bytes = "256KiB", max_age = "50ms" }}
retry = {{ initial_backoff = "50ms", max_backoff = "200ms" }}
buffer = {{ max_size = "128MiB" }}
"#,
        out = out.display()
    );
    let router = Router::start(&cfg);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    const PER: u64 = 100;
    const TOTAL: u64 = 6_000;
    for from in (0..TOTAL).step_by(PER as usize) {
        let body: String = (from..from + PER)
            .map(|i| format!("{{\"i\":{i},\"log\":\"{}\"}}\n", "x".repeat(1000)))
            .collect();
        let r = client
            .post(format!("http://127.0.0.1:{http}/tag/app"))
            .body(body)
            .send()
            .expect("post");
        assert_eq!(r.status().as_u16(), 200, "request from {from}");
    }
    // The disk is full now: writes are failing and being retried.
    let deadline = Instant::now() + Duration::from_secs(30);
    while router.metric(
        "firelane_output_records_total",
        &[r#"output="file""#, r#"result="retried""#],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no write failed on the full disk\n{}",
            router.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&filler).expect("free the disk");

    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        // A read can overlap a write in progress: the text after the last newline may be a
        // line still being appended, so it is judged only once the router is done.
        let (whole, tail) = text.split_at(text.rfind('\n').map_or(0, |i| i + 1));
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        let mut torn = Vec::new();
        for (n, line) in whole.lines().enumerate() {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => match v["i"].as_u64() {
                    Some(i) => *seen.entry(i).or_default() += 1,
                    None => torn.push(n + 1),
                },
                Err(_) => torn.push(n + 1),
            }
        }
        assert!(
            torn.is_empty(),
            "lines {:?} are not whole records (of {})",
            &torn[..torn.len().min(5)],
            text.lines().count()
        );
        if seen.len() as u64 == TOTAL || Instant::now() > deadline {
            assert!(
                tail.is_empty() || seen.len() as u64 != TOTAL,
                "the file ends in a torn line after every record arrived: {:?}",
                &tail[..tail.len().min(80)]
            );
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        seen.len() as u64,
        TOTAL,
        "records missing after the disk freed"
    );
    let twice: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        twice.is_empty(),
        "records written twice: {:?}",
        &twice[..twice.len().min(10)]
    );
}
