//! A fake ECS Task Metadata Endpoint v4 on 127.0.0.1 serving recorded answers
//! (`tests/data/tmds/`): `GET /v4/ID/task` and `GET /v4/ID`. Counts `/task` requests and can
//! swap its answers, to play a task whose containers Docker creates after the router.
//! Include with `#[path = "common/tmds.rs"] mod tmds;`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// `/task` of an EC2 task in bridge mode (`prod-east`, `checkout:42`, app `web`).
pub const EC2_TASK: &str = include_str!("../data/tmds/ec2-task.json");
/// The same task before Docker created `web`.
pub const EC2_BEFORE_APP: &str = include_str!("../data/tmds/ec2-task-before-app.json");
/// The router container of that task (`bridge`).
pub const EC2_CONTAINER: &str = include_str!("../data/tmds/ec2-container.json");
/// `/task` of a Fargate task (cluster ARN `…:cluster/payments`, `ledger-api:7`, app `api`).
pub const FARGATE_TASK: &str = include_str!("../data/tmds/fargate-task.json");
/// The router container of that task (`awsvpc`).
pub const FARGATE_CONTAINER: &str = include_str!("../data/tmds/fargate-container.json");

/// Docker id of `web` in [`EC2_TASK`].
pub const EC2_WEB_ID: &str = "8f1c2b6a9d0e4f3a7b5c6d7e8f9012345678901234567890abcdef0123456789";
/// Task id of [`EC2_TASK`].
pub const EC2_TASK_ID: &str = "3de392df6bf34bd0b2e2b4a1c3e9c7d1";
/// Docker id of `api` in [`FARGATE_TASK`].
pub const FARGATE_API_ID: &str = "febee046097849aba589d4435207c04a-1940473510";
/// Task id of [`FARGATE_TASK`].
pub const FARGATE_TASK_ID: &str = "febee046097849aba589d4435207c04a";

/// What the endpoint answers and has seen.
pub struct State {
    /// Body of `/task`.
    pub task: &'static str,
    /// Body of the container path.
    pub container: &'static str,
    /// `/task` requests answered.
    pub task_hits: usize,
}

/// A running fake endpoint; stops when dropped.
pub struct Tmds {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Tmds {
    /// Serves `task` and `container` on `port` (127.0.0.1).
    pub fn start_on(port: u16, task: &'static str, container: &'static str) -> Tmds {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake tmds");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State {
            task,
            container,
            task_hits: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let _ = sock.set_nonblocking(false);
                        let st = st.clone();
                        std::thread::spawn(move || answer(sock, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Tmds { port, state, stop }
    }

    /// Serves on a free port.
    pub fn start(task: &'static str, container: &'static str) -> Tmds {
        Tmds::start_on(super::free_port(), task, container)
    }

    /// What ECS puts in `ECS_CONTAINER_METADATA_URI_V4`, for a router on `port`.
    pub fn url_for(port: u16) -> String {
        format!("http://127.0.0.1:{port}/v4/0123456789abcdef-1234567890")
    }

    /// This endpoint's `ECS_CONTAINER_METADATA_URI_V4`.
    pub fn url(&self) -> String {
        Tmds::url_for(self.port)
    }

    /// The state, locked.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Tmds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(sock: TcpStream, state: &Mutex<State>) {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    let mut rd = BufReader::new(match sock.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if rd.read_line(&mut line).is_err() {
        return;
    }
    // Headers: read to the blank line (GETs have no body).
    loop {
        let mut h = String::new();
        match rd.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let (status, body) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if path.ends_with("/task") {
            st.task_hits += 1;
            ("200 OK", st.task)
        } else if path.starts_with("/v4/") {
            ("200 OK", st.container)
        } else {
            ("404 Not Found", "{}")
        }
    };
    let mut sock = sock;
    let _ = write!(
        sock,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
