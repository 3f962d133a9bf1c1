//! Shared harness for integration tests: starts the real `firelane` binary on 127.0.0.1
//! with a config written to a temp dir, waits for `/ready`, and stops it when dropped.
#![allow(dead_code)]

pub mod ecs_events;
pub mod fake_http;
pub mod kinesis;
pub mod moto;
pub mod sns_sqs;
pub mod tmpfs;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on, for the router to bind. Taken below the kernel's ephemeral
/// range (32768+ on Linux), because a port from `bind(0)` that is released again can be
/// handed out as the source port of any outgoing connection before the router binds it.
/// A process-wide counter keeps parallel tests of one binary apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start at a pid-dependent offset so test binaries run one after another don't reuse
    // the ports of a router that may still be in TIME_WAIT.
    let start = (std::process::id() * 97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        // 24224 is the embedded default config's forward port, which tests/cli.rs binds.
        if port != 24224 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// A peer that takes connections (the kernel's listen backlog accepts them) and never
/// answers: an output pointed at it never delivers. Keep the listener alive as long as the
/// peer should stay silent; `accept` on it later to let the output recover.
pub fn silent_peer() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind silent peer");
    let addr = listener.local_addr().expect("silent peer address");
    (listener, addr)
}

/// True when the tests run in CI (`CI` set and not `0`/`false`, as GitHub Actions, GitLab
/// and `.ci/run` set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// A test peer (moto, Python) is missing. Under `CI` that is a failure: the test panics
/// with `why`. Elsewhere (a plain `cargo test` on a laptop) it prints one loud line per
/// `why` on stderr (written to the handle, not with `eprintln!`, so the harness cannot hide
/// it) and the caller skips the test.
pub fn peer_missing(why: &str) {
    use std::io::Write;
    assert!(
        !in_ci(),
        "{why}: CI is set, so a missing test peer is a failure (run scripts/test.sh)"
    );
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|w| w == why) {
        seen.push(why.to_string());
        let _ = std::io::stderr()
            .write_all(format!("\n*** SKIPPED: {why}; use scripts/test.sh ***\n").as_bytes());
    }
}

pub struct Router {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub admin: u16,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
}

impl Router {
    /// `config` may use `{dir}` (the temp dir) and `{admin}` (the admin port).
    pub fn start(config: &str) -> Router {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Router {
        let admin = free_port();
        Self::start_with(dir, config, admin, &[])
    }

    pub fn start_with(
        dir: tempfile::TempDir,
        config: &str,
        admin: u16,
        env: &[(&str, &str)],
    ) -> Router {
        let text = config
            .replace("{dir}", &dir.path().display().to_string())
            .replace("{admin}", &admin.to_string());
        let text = if text.contains("[admin]") {
            text
        } else {
            format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n{text}")
        };
        // Disk buffers default to /var/lib/firelane: shared by every run on the machine, so
        // a test would replay an earlier run's records. Keep them in the temp dir.
        let text = if text.contains("data_dir") {
            text
        } else {
            let data = format!("data_dir = \"{}/data\"\n", dir.path().display());
            match text.find("[runtime]\n") {
                Some(i) => {
                    let at = i + "[runtime]\n".len();
                    format!("{}{data}{}", &text[..at], &text[at..])
                }
                None => format!("[runtime]\n{data}{text}"),
            }
        };
        let config_path = dir.path().join("firelane.toml");
        std::fs::write(&config_path, text).expect("write config");
        let stderr_path = dir.path().join(format!(
            "router-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_firelane"));
        cmd.args(["run", "-c"])
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn firelane");
        let mut r = Router {
            child: Some(child),
            dir,
            admin,
            config_path,
            stderr_path,
        };
        r.wait_ready(Duration::from_secs(30));
        r
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("firelane exited early with {status}:\n{}", self.logs());
            }
            if let Ok(r) = http_get(&format!("http://127.0.0.1:{}/ready", self.admin))
                && r.0 == 200
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("firelane not ready after {timeout:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.admin))
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` strings).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Polls until `metric(name, labels) >= want` or the timeout passes; returns the last value.
    pub fn wait_metric(&self, name: &str, labels: &[&str], want: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name, labels);
            if v >= want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe_kill(c.id(), sig);
        }
    }

    /// Sends SIGTERM and waits for exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(15);
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("firelane did not exit within {timeout:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process and hands back its temp dir (to restart on the same data dir).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.kill9();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- firelane log ----\n{}", self.logs());
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Minimal HTTP/1.1 GET (no client dependency in the hot loop of readiness polling).
pub fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = std::net::TcpStream::connect_timeout(
        &hostport.parse().map_err(std::io::Error::other)?,
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    use std::io::Write;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `v` (a JSON object) as the MessagePack map of one Fluent forward record (an entry's
/// `record`); panics on any other JSON value.
pub fn msgpack_record(v: &serde_json::Value) -> Vec<u8> {
    let serde_json::Value::Object(m) = v else {
        panic!("a record is a JSON object, not {v}")
    };
    let mut b = Vec::new();
    firelane::input::forward::client::encode_json_record(&mut b, m);
    b
}

/// Reads a JSON-lines file (missing file = no lines). Only complete lines count: a file
/// read while the router appends to it may end in part of a line (a `write` of a batch is
/// not atomic against a concurrent read), which the next read sees whole.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let Ok(bytes) = std::fs::read(path) else {
        return vec![];
    };
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..=end],
        None => &[][..],
    };
    String::from_utf8_lossy(complete)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Waits until `path` holds at least `n` lines.
pub fn wait_lines(path: &Path, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = read_jsonl(path);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pseudo-random lowercase text (compresses like real logs, not like zeros).
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

/// Peak RSS (`VmHWM`) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib * 1024
}
