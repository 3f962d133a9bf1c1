//! Fluent forward protocol v1 input: what Docker's `fluentd` log driver (FireLens), Fluent Bit,
//! fluentd and the Fluent logger libraries send.
//!
//! - Modes: Message, Forward, PackedForward, CompressedPackedForward (gzip, including several
//!   concatenated members, and zstd; the payload's magic bytes win over the `compressed` option).
//! - Times: integer seconds, float seconds, EventTime (fixext8 / ext8), msgpack's Timestamp
//!   extension (type -1, 32/64/96-bit); Fluent Bit's `[[time, metadata], record]` entries;
//!   Fluent Bit group markers are skipped; time 0 = now.
//! - Acks: a request with a `chunk` option is answered `{"ack": chunk}` once its records were
//!   accepted by the router (for disk buffers: persisted), never before. The ack waits for
//!   the request's [`crate::input::ack::AckToken`]s, which a stage holding records back
//!   (multiline, Docker partials) releases later; the connection keeps reading meanwhile, up
//!   to 256 unacknowledged requests, and acks go out strictly in request order. A request
//!   the router refuses as too large gets no ack (`kind = "too_large"`), the connection
//!   stays open.
//! - Optional shared-key handshake.
//! - Back-pressure: a connection does not read its next request until the previous one was
//!   ingested, so a full buffer stops the socket instead of growing memory.
//! - Shutdown: during the drain window (`runtime.drain_inputs`) open connections are still
//!   read and new ones accepted; at its end each connection is closed after its last
//!   complete request was ingested and acked.
//!
//! An unusable entry (bad time, a record that is not a usable map, not `[time, record]`) is
//! skipped and counted (`kind` = `bad_time`, `bad_record`, `bad_entry`); the rest of its
//! request is taken and acked, so a client never resends, and duplicates, the good entries.
//! A request whose framing is broken is refused whole (nothing of it is taken, no ack) and
//! closes that connection only. Both with a `firelane_input_errors_total{input,kind}`
//! increment and a rate-limited warning.

pub mod client;
pub(crate) mod config;
pub(crate) mod decode;
pub mod frame;
pub(crate) mod handshake;
pub(crate) mod metrics;
mod server;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use server::spawn;

/// Configuration of one `type = "forward"` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardConfig {
    /// Input name: the `input` label of the metrics and the route `from` name.
    pub name: String,
    /// Listeners, `tcp://HOST:PORT` or `unix:///PATH`. Default: `tcp://127.0.0.1:24224`.
    /// FireLens app containers write to `unix:///var/run/fluent.sock`.
    pub listen: Vec<ListenAddr>,
    /// When set, clients must pass the shared-key handshake before sending records.
    /// Default: none (FireLens never configures one).
    pub shared_key: Option<String>,
    /// Largest accepted request on the wire, in bytes. A larger request closes the
    /// connection (`kind = "frame_too_large"`). Default: 16 MiB.
    pub max_frame_bytes: usize,
    /// Largest decompressed CompressedPackedForward payload, in bytes. Beyond it the request
    /// is refused (`kind = "decompressed_too_large"`), without ever holding more than this
    /// many bytes. Default: 64 MiB.
    pub max_decompressed_bytes: usize,
    /// Permissions of unix sockets. Default: 0o666, so dockerd and containers running as
    /// other users can connect.
    pub socket_mode: u32,
    /// A request in progress must receive bytes at least this often, or its connection is
    /// closed (`kind = "read_timeout"`) and the memory its bytes held freed. `None` = no
    /// limit. Default: 30 s.
    pub read_timeout: Option<Duration>,
    /// A connection with nothing in progress (no partial request buffered) is closed after
    /// this long. `None` (default) = never: FireLens/Docker keep one connection per
    /// container open for its whole life, and a quiet container is normal.
    pub idle_timeout: Option<Duration>,
    /// Open connections (all listeners of the input together). Beyond it, new connections
    /// are closed right after accept (`kind = "too_many_connections"`), so a flood cannot
    /// take the file descriptors `/health` and the outputs need. Default: 1024.
    pub max_connections: usize,
    /// `firelens = true`: the FireLens defaults (see `config::FireLens`). Default: off.
    pub firelens: Option<config::FireLens>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            name: "forward".to_owned(),
            listen: vec![ListenAddr::Tcp("127.0.0.1:24224".to_owned())],
            shared_key: None,
            max_frame_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            socket_mode: 0o666,
            read_timeout: Some(Duration::from_secs(30)),
            idle_timeout: None,
            max_connections: 1024,
            firelens: None,
        }
    }
}

/// Where a forward input listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// `host:port`, e.g. `0.0.0.0:24224` or `[::1]:24224`.
    Tcp(String),
    /// Filesystem path of a unix stream socket.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses `tcp://HOST:PORT` or `unix:///ABSOLUTE/PATH`.
    pub(crate) fn parse(s: &str) -> Result<ListenAddr, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("`{s}`: expected tcp://HOST:PORT"))?;
            if host.is_empty() {
                return Err(format!(
                    "`{s}`: missing host (use 0.0.0.0 for all interfaces)"
                ));
            }
            port.parse::<u16>()
                .map_err(|_| format!("`{s}`: invalid port `{port}`"))?;
            Ok(ListenAddr::Tcp(rest.to_owned()))
        } else if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("`{s}`: expected an absolute path, unix:///PATH"));
            }
            if path.len() > 107 {
                return Err(format!("`{s}`: unix socket paths are limited to 107 bytes"));
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else {
            Err(format!("`{s}`: expected tcp://HOST:PORT or unix:///PATH"))
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ListenAddr::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            ListenAddr::parse("tcp://0.0.0.0:24224"),
            Ok(ListenAddr::Tcp("0.0.0.0:24224".into()))
        );
        assert_eq!(
            ListenAddr::parse("tcp://[::1]:1"),
            Ok(ListenAddr::Tcp("[::1]:1".into()))
        );
        assert_eq!(
            ListenAddr::parse("unix:///var/run/fluent.sock"),
            Ok(ListenAddr::Unix("/var/run/fluent.sock".into()))
        );
        for bad in [
            "0.0.0.0:24224",
            "tcp://0.0.0.0",
            "tcp://:24224",
            "tcp://h:99999",
            "unix://relative.sock",
            "udp://x:1",
        ] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ListenAddr::parse("unix:///a/b").map(|a| a.to_string()),
            Ok("unix:///a/b".into())
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ForwardConfig::default();
        assert_eq!(c.max_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(c.max_decompressed_bytes, 64 * 1024 * 1024);
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.listen, vec![ListenAddr::Tcp("127.0.0.1:24224".into())]);
    }
}
