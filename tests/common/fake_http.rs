//! A fake HTTP destination for the `http` output: a minimal HTTP/1.1 server on 127.0.0.1
//! with keep-alive that answers 200 to every request and records each body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers 200 to every request and keeps
/// the body of each (gunzipped when `Content-Encoding: gzip`).
pub struct FakeHttp {
    port: u16,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeHttp {
    /// Bind a free port on 127.0.0.1 and serve it at once.
    pub fn start() -> FakeHttp {
        FakeHttp::serve(TcpListener::bind("127.0.0.1:0").expect("bind fake http"))
    }

    /// Serve an already bound `listener`, e.g. one from [`super::silent_peer`] that let the
    /// router's requests connect and hang (a stalled destination) until now.
    pub fn serve(listener: TcpListener) -> FakeHttp {
        let port = listener.local_addr().expect("addr").port();
        let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let keep = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let keep = keep.clone();
                std::thread::spawn(move || serve_http(conn, &keep));
            }
        });
        FakeHttp { port, bodies }
    }

    /// The URL to put in an `http` output: `http://127.0.0.1:PORT/ingest`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    /// Every body received so far, in order, as UTF-8 (panics on a body that is not).
    pub fn bodies(&self) -> Vec<String> {
        let bodies = self.bodies.lock().expect("bodies");
        bodies
            .iter()
            .map(|b| String::from_utf8(b.clone()).expect("UTF-8 body"))
            .collect()
    }

    /// All bodies received so far, concatenated (lossy UTF-8).
    pub fn text(&self) -> String {
        let bodies = self.bodies.lock().expect("bodies");
        bodies
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

fn serve_http(conn: TcpStream, keep: &Mutex<Vec<Vec<u8>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut gzip = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if gzip {
            let mut plain = Vec::new();
            if flate2::read::MultiGzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .is_err()
            {
                let _ = out.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                return;
            }
            body = plain;
        }
        keep.lock().expect("bodies").push(body);
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
