//! The image and the example task definition (Docker cannot run here): task-definition.json
//! is a valid `RegisterTaskDefinition` request (validated by botocore against the ECS
//! service model, through `FIRELANE_TEST_PYTHON`, which `scripts/test.sh` sets), and the
//! Dockerfile's paths, user and ports are the binary's defaults.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn task_definition() -> Value {
    let text = std::fs::read_to_string(root().join("task-definition.json")).expect("read");
    serde_json::from_str(&text).expect("task-definition.json is JSON")
}

/// botocore's own parameter validation (field names, types, required members) of the
/// RegisterTaskDefinition input shape, as the AWS CLI runs it before sending.
const VALIDATE: &str = r#"
import json, sys
import botocore.session
from botocore.validate import ParamValidator
model = botocore.session.get_session().get_service_model("ecs")
shape = model.operation_model("RegisterTaskDefinition").input_shape
params = json.load(open(sys.argv[1]))
report = ParamValidator().validate(params, shape)
if report.has_errors():
    print(report.generate_report())
    sys.exit(1)
print("valid")
"#;

#[test]
fn task_definition_is_a_valid_register_task_definition_request() {
    let Ok(python) = std::env::var("FIRELANE_TEST_PYTHON") else {
        common::peer_missing(
            "FIRELANE_TEST_PYTHON is not set; task-definition.json was not validated against the ECS model",
        );
        return;
    };
    let run = |path: &Path| {
        Command::new(&python)
            .args(["-c", VALIDATE])
            .arg(path)
            .output()
            .expect("run python")
    };
    let out = run(&root().join("task-definition.json"));
    assert!(
        out.status.success(),
        "task-definition.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a misspelt field and a wrong type are refused.
    let mut bad = task_definition();
    bad["containerDefinitions"][0]["stopTimeOut"] = Value::from(30);
    bad["containerDefinitions"][0]["memoryReservation"] = Value::from("192");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.json");
    std::fs::write(&path, bad.to_string()).expect("write");
    let out = run(&path);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("stopTimeOut"), "{report}");
    assert!(report.contains("memoryReservation"), "{report}");
}

#[test]
fn task_definition_router_settings() {
    let td = task_definition();
    let router = td["containerDefinitions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c.get("firelensConfiguration").is_some()))
        .expect("a FireLens router container");
    assert_eq!(router["essential"], true);
    // The agent chowns the socket directory to the router's user: set, and the image's.
    assert_eq!(router["user"], "65532:65532");
    assert!(router["memoryReservation"].as_u64().is_some());
    assert!(router["healthCheck"]["command"].is_array());
    let secrets = router["secrets"].as_array().expect("secrets");
    assert!(
        secrets.iter().all(|s| s["valueFrom"]
            .as_str()
            .is_some_and(|v| v.starts_with("arn:aws:ssm:"))),
        "{secrets:?}"
    );
    // SIGKILL comes stopTimeout seconds after SIGTERM: the router must be done before.
    let stop = router["stopTimeout"].as_u64().expect("stopTimeout");
    let cmd: Vec<&str> = router["command"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let conf = cmd
        .iter()
        .position(|a| *a == "-c")
        .and_then(|i| cmd.get(i + 1))
        .expect("-c in command");
    assert_eq!(*conf, firelane::config::SYSTEM_PATH);
    let loaded = firelane::config::load_file(&root().join("config/firelens.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded.config.runtime.shutdown_grace < Duration::from_secs(stop),
        "shutdown_grace {:?} is not below stopTimeout {stop}s",
        loaded.config.runtime.shutdown_grace
    );
}

/// The instructions of the Dockerfile's last stage, `(INSTRUCTION, arguments)`.
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let joined = text.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (ins, args) = line.split_once(' ').unwrap_or((line, ""));
        let ins = ins.to_ascii_uppercase();
        if ins == "FROM" {
            stage.clear();
        }
        stage.push((ins, args.trim().to_string()));
    }
    stage
}

#[test]
fn dockerfile_matches_the_binary_defaults() {
    let stage = final_stage();
    let all = |ins: &str| -> Vec<&str> {
        stage
            .iter()
            .filter(|(i, _)| i == ins)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    // The baked config is where `run` looks without -c.
    let copies = all("COPY");
    assert!(
        copies.iter().any(|c| c.ends_with(&format!(
            "config/firelens.toml {}",
            firelane::config::SYSTEM_PATH
        ))),
        "{copies:?}"
    );
    let binary = "/usr/local/bin/firelane";
    assert!(copies.iter().any(|c| c.ends_with(binary)), "{copies:?}");
    // Ports: the baked config's forward TCP port and admin port, nothing else.
    let loaded = firelane::config::load_file(&root().join("config/firelens.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = firelane::plan::plan(&loaded.config);
    let mut exposed: Vec<u16> = all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("port"))
        .collect();
    exposed.sort();
    let text: toml::Table = std::fs::read_to_string(root().join("config/firelens.toml"))
        .expect("read")
        .parse()
        .expect("TOML");
    let admin_port: u16 = text["admin"]["listen"]
        .as_str()
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("admin.listen");
    let mut want: Vec<u16> = plan
        .split("tcp://")
        .skip(1)
        .filter_map(|r| {
            let hostport = r.split([',', '\n', ' ']).next()?;
            hostport.rsplit_once(':')?.1.parse().ok()
        })
        .collect();
    want.push(admin_port);
    want.sort();
    // firelens = true names one port twice (awsvpc and bridge binds).
    want.dedup();
    assert_eq!(exposed, want, "EXPOSE vs the baked config's TCP ports");
    // The data directory (the default data_dir) is a volume owned by the user.
    assert!(
        all("VOLUME")
            .iter()
            .any(|v| v.contains("/var/lib/firelane"))
    );
    assert!(
        copies
            .iter()
            .any(|c| c.contains("--chown=65532:65532") && c.ends_with("/var/lib/firelane")),
        "{copies:?}"
    );
    // distroless' nonroot is 65532, the task definition's user.
    assert_eq!(all("USER"), ["nonroot:nonroot"]);
    assert!(
        stage
            .iter()
            .any(|(i, a)| i == "FROM" && a.contains(":nonroot"))
    );
    // The health check calls the binary's default URL, the admin port.
    let hc = all("HEALTHCHECK").join(" ");
    assert!(
        hc.contains(&format!("\"{binary}\", \"healthcheck\"")),
        "{hc}"
    );
    // `firelane healthcheck` without --url asks 127.0.0.1:2020.
    assert_eq!(admin_port, 2020);
    // The Fluent Bit path `run` reads when the agent wrote one is documented in the image.
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(text.contains(firelane::config::fluentbit::FIRELENS_PATH));
    assert_eq!(all("ENTRYPOINT"), [format!("[\"{binary}\"]").as_str()]);
}
