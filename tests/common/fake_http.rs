//! The one fake HTTP destination of the integration tests, for `type = "http"` outputs: a
//! small HTTP/1.1 server on 127.0.0.1 with keep-alive that answers each request as
//! scripted ([`Reply`]; 200 by default) and records what it was sent. Bodies are read by
//! `Content-Length` and gunzipped when `Content-Encoding: gzip`; records are NDJSON lines,
//! and those with an integer field `i` can be checked id by id against what was acked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How the destination answers a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// 200 OK with a small body; the request's records count as delivered.
    Ok,
    /// This status, with an optional `Retry-After` value; records not delivered.
    Status(u16, Option<&'static str>),
    /// Reads the request and never answers (until the server is dropped).
    Stall,
    /// 200 OK after this many milliseconds.
    Slow(u64),
}

/// One request as the destination saw it.
#[derive(Debug)]
pub struct Seen {
    /// When its body had been read.
    pub at: Instant,
    /// The status answered; 0 for [`Reply::Stall`].
    pub status: u16,
    /// The `i` of each of its records, in order.
    pub ids: Vec<u64>,
}

/// What the destination knows; tests may read it and change `script` / `default`.
#[derive(Default)]
pub struct State {
    /// Answers for the next requests, in order; then `default`.
    pub script: VecDeque<Reply>,
    /// The answer once `script` is empty ([`Reply::Ok`] when `None`).
    pub default: Option<Reply>,
    /// Every request, in the order they were read.
    pub seen: Vec<Seen>,
    /// TCP connections accepted.
    pub connections: usize,
    /// The body of every request answered 200 (gunzipped).
    pub bodies: Vec<Vec<u8>>,
    /// Every record line (valid JSON) of every request answered 200, parsed.
    pub delivered: Vec<serde_json::Value>,
}

/// A running fake destination; it stops accepting and answering when dropped, which frees
/// its port.
pub struct FakeHttp {
    port: u16,
    /// Shared with the server threads.
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeHttp {
    /// Binds a free port on 127.0.0.1 and answers 200 to everything.
    pub fn start() -> FakeHttp {
        FakeHttp::start_replying(Reply::Ok)
    }

    /// Binds a free port on 127.0.0.1 and answers `default` once any script is used up.
    pub fn start_replying(default: Reply) -> FakeHttp {
        FakeHttp::start_on(super::free_port(), default)
    }

    /// Starts on `port` (one handed out earlier while the destination was "down").
    pub fn start_on(port: u16, default: Reply) -> FakeHttp {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake http");
        FakeHttp::serve_replying(listener, default)
    }

    /// Serves an already bound `listener` with 200s, e.g. one from [`super::silent_peer`]
    /// that let the router's requests connect and hang (a stalled destination) until now.
    pub fn serve(listener: TcpListener) -> FakeHttp {
        FakeHttp::serve_replying(listener, Reply::Ok)
    }

    fn serve_replying(listener: TcpListener, default: Reply) -> FakeHttp {
        let port = listener.local_addr().expect("fake http address").port();
        // Non-blocking accept, so that the thread sees `stop` and drops the listener.
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State {
            default: Some(default),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let _ = sock.set_nonblocking(false);
                        lock(&st).connections += 1;
                        let (st, sp) = (st.clone(), sp.clone());
                        std::thread::spawn(move || serve_conn(sock, st, sp));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeHttp { port, state, stop }
    }

    /// The URL to put in an `http` output: `http://127.0.0.1:PORT/ingest`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    /// The state, locked (do not hold it while waiting for the router).
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Answers the next requests with `replies`, in order, before the default.
    pub fn script(&self, replies: &[Reply]) {
        self.state().script.extend(replies.iter().cloned());
    }

    /// How many requests were read (whatever was answered).
    pub fn requests(&self) -> usize {
        self.state().seen.len()
    }

    /// Every body answered 200 so far, in order, as UTF-8 (panics on a body that is not).
    pub fn bodies(&self) -> Vec<String> {
        self.state()
            .bodies
            .iter()
            .map(|b| String::from_utf8(b.clone()).expect("UTF-8 body"))
            .collect()
    }

    /// All bodies answered 200 so far, concatenated (lossy UTF-8).
    pub fn text(&self) -> String {
        self.state()
            .bodies
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// `i` of every delivered record, with how often each arrived.
    pub fn delivered_ids(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for v in &self.state().delivered {
            *m.entry(v["i"].as_u64().expect("record has i")).or_insert(0) += 1;
        }
        m
    }

    /// Waits until every id in `want` has been delivered at least once, or `timeout`;
    /// returns [`Self::delivered_ids`].
    pub fn wait_ids(&self, want: &BTreeSet<u64>, timeout: Duration) -> BTreeMap<u64, usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered_ids();
            if want.iter().all(|i| got.contains_key(i)) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Locks the state even if a server thread panicked while holding it.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One keep-alive connection: reads requests (Content-Length bodies), answers per script.
/// Reads time out every 200 ms so that the thread sees `stop`.
fn serve_conn(sock: TcpStream, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut w) = sock.try_clone() else {
        return;
    };
    let mut r = BufReader::new(sock);
    loop {
        // Request line and headers.
        let mut content_length = 0usize;
        let mut gzip = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if line.is_empty() {
                        continue;
                    }
                    // A partial line: keep reading it.
                    let mut rest = String::new();
                    while !rest.ends_with('\n') {
                        match r.read_line(&mut rest) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(_) if !stop.load(Ordering::Relaxed) => {}
                            Err(_) => return,
                        }
                    }
                    line.push_str(&rest);
                }
                Err(_) => return,
            }
            if first {
                first = false;
                if line.trim().is_empty() {
                    first = true;
                    continue;
                }
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("content-encoding")
                    && v.to_ascii_lowercase().contains("gzip")
                {
                    gzip = true;
                }
            }
        }
        let mut body = vec![0u8; content_length];
        let mut got = 0;
        while got < content_length {
            match r.read(&mut body[got..]) {
                Ok(0) => return,
                Ok(n) => got += n,
                Err(_) if !stop.load(Ordering::Relaxed) => {}
                Err(_) => return,
            }
        }
        if gzip {
            let mut plain = Vec::new();
            if flate2::read::MultiGzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .is_err()
            {
                let _ = w.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                return;
            }
            body = plain;
        }
        let records: Vec<serde_json::Value> = String::from_utf8_lossy(&body)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let ids = records.iter().filter_map(|v| v["i"].as_u64()).collect();
        let reply = {
            let mut st = lock(&state);
            let reply = st
                .script
                .pop_front()
                .or_else(|| st.default.clone())
                .unwrap_or(Reply::Ok);
            let status = match &reply {
                Reply::Ok | Reply::Slow(_) => 200,
                Reply::Status(s, _) => *s,
                Reply::Stall => 0,
            };
            st.seen.push(Seen {
                at: Instant::now(),
                status,
                ids,
            });
            if status == 200 {
                st.delivered.extend(records);
                st.bodies.push(body);
            }
            reply
        };
        let response = match reply {
            Reply::Slow(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string()
            }
            // A small body, as most webhook receivers send: the client must read it to
            // reuse the connection.
            Reply::Ok => "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{\"ok\":true}\n".to_string(),
            Reply::Status(code, retry_after) => {
                let ra = retry_after
                    .map(|v| format!("retry-after: {v}\r\n"))
                    .unwrap_or_default();
                format!("HTTP/1.1 {code} Scripted\r\n{ra}content-length: 7\r\n\r\nnot now")
            }
            Reply::Stall => {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
        };
        if w.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
