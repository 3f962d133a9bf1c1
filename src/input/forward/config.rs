//! `type = "forward"`: `listen`, `shared_key`, `max_frame`, `max_decompressed`,
//! `socket_mode`, `read_timeout`, `idle_timeout`, `max_connections`, `firelens`.
//!
//! `firelens = true` sets up what the ECS agent's generated Fluent Bit config does for a
//! FireLens router (firelens-and-protocols §3.1, agent `firelensconfig_unix.go`): unless
//! `listen` is given, listen on `unix:///var/run/fluent.sock` (where ECS points Docker's
//! fluentd driver) and on TCP port 24224 for apps using a Fluent logger library, bound to
//! `127.0.0.1` in `awsvpc` mode (Fargate included) and `0.0.0.0` in `bridge` mode (apps reach
//! the router at its bridge IP), and not at all in `host` mode (as the agent). The mode is read
//! from `${ECS_CONTAINER_METADATA_URI_V4}` (`Networks[0].NetworkMode`) before binding, for at
//! most [`MODE_WAIT`]; with no answer by then, or outside ECS, TCP binds `127.0.0.1` (never
//! exposing the port by a guess; a warning says so).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{ForwardConfig, ListenAddr};
use crate::buffer::budget::MemoryBudget;
use crate::config::Listen;
use crate::config::reader::{Diagnostics, Table};
use crate::input::Ingest;
use crate::input::drain::InputShutdown;
use crate::input::registry::{InputConfig, InputType};
use crate::process::ProcessorSpec;
use crate::process::ecs_metadata::tmds::{NetworkMode, Tmds};
use crate::process::ecs_metadata::{self, REQUEST_TIMEOUT};
use crate::process::registry as processor_registry;
use toml::de::DeTable;

/// The `forward` input type.
pub(crate) struct Forward;

impl InputType for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "listen",
            "shared_key",
            "max_frame",
            "max_decompressed",
            "socket_mode",
            "read_timeout",
            "idle_timeout",
            "max_connections",
            "firelens",
        ]
    }

    fn read(&self, name: &str, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn InputConfig> {
        let defaults = ForwardConfig::default();
        let mut cfg = ForwardConfig {
            name: name.to_owned(),
            ..defaults.clone()
        };
        match t.opt_string_list(d, "listen") {
            Some(l) if l.is_empty() => d.error(
                t.value_span("listen"),
                format!("{}.listen: needs at least one address", t.path()),
            ),
            Some(l) => {
                cfg.listen = Vec::new();
                for a in l {
                    match check_listen_addr(a.get_ref())
                        .and_then(|()| ListenAddr::parse(a.get_ref()))
                    {
                        Ok(addr) => cfg.listen.push(addr),
                        Err(e) => d.error(a.span(), format!("{}.listen: {e}", t.path())),
                    }
                }
            }
            None => {}
        }
        cfg.shared_key = t.opt_string(d, "shared_key");
        // Like the HTTP input's secrets: an empty key (an unset `${VAR:-}`) would
        // authenticate every client that also uses the empty key.
        if cfg.shared_key.as_deref() == Some("") {
            d.error(
                t.value_span("shared_key"),
                format!(
                    "{}.shared_key: the key is empty (an unset ${{VAR:-}}?); refusing to accept any client with it",
                    t.path()
                ),
            );
        }
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = t.opt_size(d, "max_frame") {
            cfg.max_frame_bytes = size(n);
        }
        if let Some(n) = t.opt_size(d, "max_decompressed") {
            cfg.max_decompressed_bytes = size(n);
        }
        if let Some(m) = t.opt_string(d, "socket_mode") {
            match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                Ok(m) => cfg.socket_mode = m,
                Err(_) => d.error(
                    t.value_span("socket_mode"),
                    format!("{}.socket_mode: expected octal like \"0666\"", t.path()),
                ),
            }
        }
        // `0s` turns a timeout off.
        if let Some(v) = t.opt_duration(d, "read_timeout") {
            cfg.read_timeout = (!v.is_zero()).then_some(v);
        }
        if let Some(v) = t.opt_duration(d, "idle_timeout") {
            cfg.idle_timeout = (!v.is_zero()).then_some(v);
        }
        if let Some(n) = t.opt_count(d, "max_connections") {
            cfg.max_connections = n;
        }
        if t.opt_bool(d, "firelens") == Some(true) {
            let auto_listen = !t.contains("listen");
            if auto_listen {
                cfg.listen = vec![
                    ListenAddr::Unix(FIRELENS_SOCKET.into()),
                    ListenAddr::Tcp(format!("127.0.0.1:{FIRELENS_PORT}")),
                ];
            }
            let endpoint = ecs_metadata::from_env(t.env());
            let implied = firelens_processors(name, t, d, endpoint.clone());
            cfg.firelens = Some(FireLens {
                endpoint,
                auto_listen,
                implied,
            });
        }
        Box::new(cfg)
    }
}

/// Where ECS mounts the FireLens socket directory in the router container.
pub(crate) const FIRELENS_SOCKET: &str = "/var/run/fluent.sock";
/// The FireLens TCP forward port (`FLUENT_PORT` in app containers).
pub(crate) const FIRELENS_PORT: u16 = 24224;
/// How long binding waits for the metadata endpoint to tell the network mode.
pub(crate) const MODE_WAIT: Duration = Duration::from_secs(3);

/// `firelens = true` on a forward input.
#[derive(Debug, Clone)]
pub(crate) struct FireLens {
    /// The Task Metadata Endpoint v4 (`ECS_CONTAINER_METADATA_URI_V4` as read with the
    /// config); `None` outside ECS.
    pub endpoint: Option<String>,
    /// `listen` was not given: the FireLens socket and TCP 24224 on the address the network
    /// mode calls for.
    pub auto_listen: bool,
    /// `ecs_metadata` then `partial` with their defaults, named `INPUT.firelens.TYPE`.
    pub implied: Vec<ProcessorSpec>,
}

impl PartialEq for FireLens {
    fn eq(&self, other: &Self) -> bool {
        let names = |f: &FireLens| f.implied.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        self.endpoint == other.endpoint
            && self.auto_listen == other.auto_listen
            && names(self) == names(other)
    }
}

impl Eq for FireLens {}

/// The processors `firelens = true` implies for input `input`: `ecs_metadata` reading
/// `endpoint`, then `partial` (Docker's 16 KiB pieces), each with its type's defaults (read
/// from an empty table through the processor registry, so they are exactly the defaults a
/// `[processors.NAME]` table of that type has).
fn firelens_processors(
    input: &str,
    t: &Table<'_, '_>,
    d: &mut Diagnostics,
    endpoint: Option<String>,
) -> Vec<ProcessorSpec> {
    let mut out = vec![ProcessorSpec {
        name: format!("{input}.firelens.ecs_metadata"),
        kind: Arc::new(ecs_metadata::EcsMetadataConfig::new(endpoint)),
    }];
    // `partial` is its own module in src/process; registered there.
    if let Some(partial) = processor_registry::find("partial")
        && let Ok(empty) = DeTable::parse("")
    {
        let mut pt = Table::new(
            empty.get_ref(),
            t.value_span("firelens"),
            format!("{}.firelens", t.path()),
            t.env(),
        );
        out.push(ProcessorSpec {
            name: format!("{input}.firelens.partial"),
            kind: partial.read(&mut pt, d).into(),
        });
    }
    out
}

/// The host TCP 24224 binds for FireLens, from the task's network mode (see the module
/// doc); `None` in `host` mode.
async fn firelens_tcp_host(input: &str, endpoint: Option<&str>) -> Option<&'static str> {
    const LOOPBACK: &str = "127.0.0.1";
    let Some(endpoint) = endpoint else {
        tracing::warn!(
            input,
            "firelens: {} is not set (not in an ECS task?): TCP {FIRELENS_PORT} listens on {LOOPBACK}",
            ecs_metadata::ENV_VAR
        );
        return Some(LOOPBACK);
    };
    let client = match Tmds::new(endpoint, REQUEST_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                input,
                "firelens: {e}: TCP {FIRELENS_PORT} listens on {LOOPBACK}"
            );
            return Some(LOOPBACK);
        }
    };
    let deadline = tokio::time::Instant::now() + MODE_WAIT;
    let last_error = loop {
        let error = match tokio::time::timeout_at(deadline, client.network_mode()).await {
            Ok(Ok(mode)) => {
                let host = match mode {
                    Some(NetworkMode::Awsvpc) => Some(LOOPBACK),
                    Some(NetworkMode::Bridge) => Some("0.0.0.0"),
                    Some(NetworkMode::Host | NetworkMode::Other) => None,
                    None => {
                        tracing::warn!(
                            input,
                            "firelens: the metadata endpoint lists no network for this container: TCP {FIRELENS_PORT} listens on {LOOPBACK}"
                        );
                        return Some(LOOPBACK);
                    }
                };
                match host {
                    Some(h) => {
                        tracing::info!(input, network_mode = ?mode, "firelens: TCP {FIRELENS_PORT} listens on {h}")
                    }
                    None => {
                        tracing::info!(input, network_mode = ?mode, "firelens: no TCP listener in this network mode (as the ECS agent configures FireLens); apps log through {FIRELENS_SOCKET}")
                    }
                }
                return host;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
            break error;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tracing::warn!(
        input,
        endpoint = client.base(),
        "firelens: the network mode is unknown after {MODE_WAIT:?} ({last_error}): TCP {FIRELENS_PORT} listens on {LOOPBACK} (in bridge mode, set `listen` with tcp://0.0.0.0:{FIRELENS_PORT} for apps using FLUENT_HOST)"
    );
    Some(LOOPBACK)
}

/// A forward `listen` address as the config accepts it: stricter than
/// [`ListenAddr::parse`] (a numeric TCP host, so clashes can be found before binding).
fn check_listen_addr(s: &str) -> Result<(), String> {
    if let Some(hp) = s.strip_prefix("tcp://") {
        hp.parse::<SocketAddr>()
            .map(|_| ())
            .map_err(|_| format!("{s:?}: expected tcp://HOST:PORT with a numeric host"))
    } else if let Some(p) = s.strip_prefix("unix://") {
        if !p.starts_with('/') {
            return Err(format!(
                "{s:?}: unix socket path must be absolute (unix:///var/run/fluent.sock)"
            ));
        }
        if p.len() > 107 {
            return Err(format!("{s:?}: unix socket paths are limited to 107 bytes"));
        }
        Ok(())
    } else {
        Err(format!("{s:?}: expected tcp://HOST:PORT or unix:///PATH"))
    }
}

#[async_trait::async_trait]
impl InputConfig for ForwardConfig {
    fn type_name(&self) -> &'static str {
        "forward"
    }

    fn describe(&self) -> String {
        self.listen
            .iter()
            .map(|l| match (l, &self.firelens) {
                (ListenAddr::Tcp(_), Some(f)) if f.auto_listen => format!(
                    "tcp://127.0.0.1:{FIRELENS_PORT} (awsvpc) or tcp://0.0.0.0:{FIRELENS_PORT} (bridge), by the task's network mode"
                ),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn listens(&self) -> Vec<Listen> {
        let auto = self.firelens.as_ref().is_some_and(|f| f.auto_listen);
        self.listen
            .iter()
            .filter_map(|l| match l {
                // Bridge mode binds 0.0.0.0: clashes are checked against that.
                ListenAddr::Tcp(_) if auto => Some(Listen::Tcp(std::net::SocketAddr::from((
                    [0, 0, 0, 0],
                    FIRELENS_PORT,
                )))),
                ListenAddr::Tcp(hp) => hp.parse().ok().map(Listen::Tcp),
                ListenAddr::Unix(p) => Some(Listen::Unix(p.clone())),
            })
            .collect()
    }

    async fn spawn(
        &self,
        ingest: Arc<dyn Ingest>,
        budget: MemoryBudget,
        shutdown: InputShutdown,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut cfg = self.clone();
        if let Some(f) = &self.firelens
            && f.auto_listen
        {
            let host = firelens_tcp_host(&self.name, f.endpoint.as_deref()).await;
            cfg.listen.retain(|l| !matches!(l, ListenAddr::Tcp(_)));
            if let Some(h) = host {
                cfg.listen
                    .push(ListenAddr::Tcp(format!("{h}:{FIRELENS_PORT}")));
            }
        }
        super::spawn(cfg, ingest, budget, shutdown).await
    }

    fn implied_processors(&self) -> Vec<ProcessorSpec> {
        self.firelens
            .as_ref()
            .map(|f| f.implied.clone())
            .unwrap_or_default()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::process::ecs_metadata::tests::{
        EC2_CONTAINER, EC2_TASK, FARGATE_CONTAINER, FARGATE_TASK, serve,
    };

    fn forward(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ForwardConfig {
        let text = format!("{text}\n[outputs.o]\ntype = \"null\"\n[routes.r]\nto = [\"o\"]\n");
        let loaded = match crate::config::parse(&text, "t.toml", env) {
            Ok(l) => l,
            Err(e) => panic!("{:?}", e.errors),
        };
        let i = &loaded.config.inputs[0];
        match i.kind.as_any().downcast_ref::<ForwardConfig>() {
            Some(f) => f.clone(),
            None => panic!("not a forward input"),
        }
    }

    fn in_ecs(name: &str) -> Option<String> {
        (name == ecs_metadata::ENV_VAR).then(|| "http://169.254.170.2/v4/abc".to_owned())
    }

    #[test]
    fn firelens_sets_the_socket_and_port_24224() {
        let f = forward("[inputs.app]\ntype = \"forward\"\nfirelens = true", &in_ecs);
        assert_eq!(
            f.listen,
            vec![
                ListenAddr::Unix(FIRELENS_SOCKET.into()),
                ListenAddr::Tcp("127.0.0.1:24224".into())
            ]
        );
        let fl = f.firelens.as_ref().expect("firelens");
        assert_eq!(fl.endpoint.as_deref(), Some("http://169.254.170.2/v4/abc"));
        assert!(fl.auto_listen);
        // Clashes are checked against the widest address it may bind.
        assert!(
            f.listens()
                .contains(&Listen::Tcp("0.0.0.0:24224".parse().unwrap()))
        );
        assert!(f.describe().contains("by the task's network mode"));

        // `listen` given: the user's addresses, as written.
        let f = forward(
            "[inputs.app]\ntype = \"forward\"\nfirelens = true\nlisten = [\"tcp://127.0.0.1:7000\"]",
            &|_| None,
        );
        assert_eq!(f.listen, vec![ListenAddr::Tcp("127.0.0.1:7000".into())]);
        let fl = f.firelens.as_ref().expect("firelens");
        assert_eq!(fl.endpoint, None);
        assert!(!fl.auto_listen);
        let f = forward(
            "[inputs.app]\ntype = \"forward\"\nfirelens = false",
            &in_ecs,
        );
        assert_eq!(f.firelens, None);
        assert_eq!(f.listen, ForwardConfig::default().listen);
    }

    /// `firelens = true` puts `ecs_metadata` and then `partial` (once registered) before the
    /// input's own processors, with their defaults.
    #[test]
    fn firelens_implies_ecs_metadata_then_partial_before_the_listed_processors() {
        let text = "[inputs.app]\ntype = \"forward\"\nfirelens = true\nprocessors = [\"shape\"]\n\
                    [processors.shape]\ntype = \"fields\"\nadd = { x = \"1\" }\n\
                    [outputs.o]\ntype = \"null\"\n[routes.r]\nto = [\"o\"]\n";
        let loaded = match crate::config::parse(text, "t.toml", &in_ecs) {
            Ok(l) => l,
            Err(e) => panic!("{:?}", e.errors),
        };
        let c = &loaded.config;
        let chain: Vec<(&str, &str)> = c
            .processors_of(&c.inputs[0])
            .iter()
            .map(|p| (p.name.as_str(), p.kind.type_name()))
            .collect();
        let mut want = vec![("app.firelens.ecs_metadata", "ecs_metadata")];
        if processor_registry::find("partial").is_some() {
            want.push(("app.firelens.partial", "partial"));
        }
        want.push(("shape", "fields"));
        assert_eq!(chain, want);
        assert!(
            c.processors_of(&c.inputs[0])[0]
                .kind
                .describe()
                .contains("http://169.254.170.2/v4/abc/task")
        );
        // No "processor not used" warning for the implied ones.
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    /// TCP 24224 binds as the network mode says: 0.0.0.0 in bridge mode, 127.0.0.1 in awsvpc
    /// (Fargate), nothing in host mode; 127.0.0.1 outside ECS and when the endpoint does not
    /// answer in time.
    #[tokio::test]
    async fn tcp_host_follows_the_network_mode() {
        let (_ep, url) = serve(EC2_TASK, EC2_CONTAINER).await;
        assert_eq!(firelens_tcp_host("app", Some(&url)).await, Some("0.0.0.0"));
        let (_ep, url) = serve(FARGATE_TASK, FARGATE_CONTAINER).await;
        assert_eq!(
            firelens_tcp_host("app", Some(&url)).await,
            Some("127.0.0.1")
        );
        let host_mode =
            r#"{"DockerId":"x","Name":"log_router","Networks":[{"NetworkMode":"host"}]}"#;
        let (_ep, url) = serve(EC2_TASK, host_mode).await;
        assert_eq!(firelens_tcp_host("app", Some(&url)).await, None);
        assert_eq!(firelens_tcp_host("app", None).await, Some("127.0.0.1"));

        let (ep, url) = serve(EC2_TASK, EC2_CONTAINER).await;
        ep.status.store(500, Ordering::SeqCst);
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            firelens_tcp_host("app", Some(&url)).await,
            Some("127.0.0.1")
        );
        assert!(t0.elapsed() <= MODE_WAIT + Duration::from_secs(1));
    }
}
