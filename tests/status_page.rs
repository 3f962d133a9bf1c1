//! The status page (`GET /` on the admin port, issue #12 item 6) in a real headless browser:
//! Debian's `chromium` (`FIRELANE_TEST_CHROMIUM` may point at another binary; scripts/test.sh
//! installs it when missing; under `CI` a missing one fails). The page loads with no failed
//! request and references nothing outside itself, shows the configured inputs, routes and
//! outputs and a service from the ECS events sent, escapes markup that comes in events, and
//! its screenshot is not blank (decoded with a stdlib-only PNG reader in Python).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Router, free_port, http_get, peer_missing};
use serde_json::json;

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FIRELANE_TEST_CHROMIUM")
        && !p.is_empty()
    {
        return Some(p.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    })
}

/// Runs `cmd`, killing it after `timeout`; returns (success, stdout, stderr).
fn run(mut cmd: Command, timeout: Duration) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::fs::File::create(dir.path().join("out")).expect("out");
    let err = std::fs::File::create(dir.path().join("err")).expect("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let ok = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
    (ok, read("out"), read("err"))
}

/// Headless chromium with a throw-away profile and none of its own background traffic, so
/// that every network line in its log is the page's.
fn browser(bin: &Path, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox", // tests run as root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn task_event(task: &str, version: u64, status: &str, reason: &str) -> serde_json::Value {
    json!({
        "version": "0",
        "id": format!("{task}-{version}"),
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": "111122223333",
        "time": "2026-11-30T10:00:00Z",
        "region": "eu-west-1",
        "resources": [format!("arn:aws:ecs:eu-west-1:111122223333:task/shop/{task}")],
        "detail": {
            "clusterArn": "arn:aws:ecs:eu-west-1:111122223333:cluster/shop",
            "taskArn": format!("arn:aws:ecs:eu-west-1:111122223333:task/shop/{task}"),
            "group": "service:checkout",
            "lastStatus": status,
            "desiredStatus": if status == "STOPPED" { "STOPPED" } else { "RUNNING" },
            "taskDefinitionArn": "arn:aws:ecs:eu-west-1:111122223333:task-definition/checkout:9",
            "stopCode": "EssentialContainerExited",
            "stoppedReason": reason,
            "containers": [{"name": "app", "exitCode": 137, "reason": reason}],
            "version": version,
        }
    })
}

/// Variance of the luminance of a PNG's pixels, from a stdlib-only decoder (zlib + the
/// five PNG row filters; 8-bit greyscale / RGB / RGBA, not interlaced, as chromium writes).
const PNG_STATS: &str = r#"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w = 8, b"", None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        assert depth == 8 and interlace == 0, (depth, interlace)
        bpp = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
lum = []
for y in range(h):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pr) & 255
    prev = line
    for x in range(0, stride, bpp * 2):
        px = line[x:x + bpp]
        lum.append(px[0] if bpp < 3 else (299 * px[0] + 587 * px[1] + 114 * px[2]) // 1000)
mean = sum(lum) / len(lum)
var = sum((v - mean) ** 2 for v in lum) / len(lum)
print(w, h, len(set(lum)), round(var, 1))
"#;

fn python() -> String {
    std::env::var("FIRELANE_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

#[test]
fn status_page_in_headless_chromium() {
    let Some(bin) = chromium() else {
        peer_missing("chromium (Debian package `chromium`) is not installed");
        return;
    };
    let port = free_port();
    let config = format!(
        r#"
[inputs.ecs_events]
type = "http"
listen = "127.0.0.1:{port}"
format = "eventbridge"

[routes.failed_tasks]
pattern = '{{"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"], "detail": {{"lastStatus": ["STOPPED"]}}}}'
to = ["alerts_file"]

[routes.archive]
to = ["archive_file"]

[outputs.alerts_file]
type = "file"
path = "{{dir}}/alerts.jsonl"

[outputs.archive_file]
type = "file"
path = "{{dir}}/archive.jsonl"
"#
    );
    let r = Router::start(&config);
    let url = format!("http://127.0.0.1:{port}/");
    let injected = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";
    let client = reqwest::blocking::Client::new();
    for ev in [
        task_event("t1", 2, "RUNNING", ""),
        task_event("t2", 1, "PENDING", ""),
        task_event("t3", 3, "STOPPED", injected),
    ] {
        let st = client
            .post(&url)
            .body(ev.to_string())
            .send()
            .expect("post")
            .status();
        assert_eq!(st.as_u16(), 200);
    }
    let page_url = format!("http://127.0.0.1:{}/", r.admin);
    // The state has the events before the browser looks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(&format!("http://127.0.0.1:{}/api/ecs/state", r.admin))
        .map(|(_, b)| b.contains("\"t3\""))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "events never reached the state");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The HTML as served: self-contained, escaped.
    let (status, html) = http_get(&page_url).expect("GET /");
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("<meta http-equiv=\"refresh\""),
        "refreshes itself"
    );
    let lower = html.to_ascii_lowercase();
    for external in [
        "http://", "https://", "//", "src=", "<link", "<script", "url(",
    ] {
        let hits: Vec<_> = lower.match_indices(external).collect();
        // `//` and `src=` may only appear escaped inside event text, never as markup.
        assert!(
            hits.is_empty() || (external == "src=" && !lower.contains("<img")),
            "page references {external:?}: {html}"
        );
    }
    assert!(
        html.contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;"),
        "event text escaped: {html}"
    );

    // In the browser: the DOM after load.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dump = browser(&bin, &tmp.path().join("profile-dom"));
    dump.arg("--dump-dom").arg(&page_url);
    let (ok, dom, log) = run(dump, Duration::from_secs(90));
    assert!(ok, "chromium --dump-dom failed:\n{log}");
    for want in [
        "ecs_events",
        "failed_tasks",
        "archive",
        "alerts_file",
        "archive_file",
        "service:checkout",
        "shop",
        "checkout:9",
        "EssentialContainerExited",
        "exit 137",
    ] {
        assert!(dom.contains(want), "{want:?} not on the page:\n{dom}");
    }
    // Running 1, pending 1, stopped 1 for the service.
    let services = dom
        .split("id=\"services\"")
        .nth(1)
        .and_then(|s| s.split("</table>").next())
        .unwrap_or("");
    assert!(services.contains("service:checkout"), "{services}");
    let cells: Vec<&str> = services
        .split("class=\"n")
        .skip(1)
        .map(|c| {
            c.split('>')
                .nth(1)
                .and_then(|c| c.split('<').next())
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        cells,
        ["1", "1", "1", "0"],
        "running, pending, stopped, other: {services}"
    );
    // The injected markup stayed text: no script ran (title unchanged), no image element.
    assert!(dom.contains("<title>firelane status</title>"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
    for failure in ["net::ERR_", "Failed to load resource", "Refused to"] {
        assert!(!log.contains(failure), "a request failed: {failure}\n{log}");
    }

    // A screenshot that is not blank.
    let shot = tmp.path().join("status.png");
    let mut cmd = browser(&bin, &tmp.path().join("profile-shot"));
    cmd.arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1000")
        .arg("--hide-scrollbars")
        .arg(&page_url);
    let (ok, _, log) = run(cmd, Duration::from_secs(90));
    assert!(ok && shot.is_file(), "chromium --screenshot failed:\n{log}");
    let mut py = Command::new(python());
    py.arg("-c").arg(PNG_STATS).arg(&shot);
    let (ok, stats, err) = run(py, Duration::from_secs(120));
    assert!(ok, "PNG decode failed: {err}");
    let v: Vec<f64> = stats
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(v.len(), 4, "{stats}");
    assert_eq!((v[0], v[1]), (1280.0, 1000.0), "{stats}");
    assert!(
        v[2] >= 10.0,
        "at least 10 grey levels (text, table lines): {stats}"
    );
    assert!(v[3] > 50.0, "luminance varies (not a blank page): {stats}");
}
