use super::*;
use crate::input::http::{HttpAuth, HttpInputConfig};

/// The settings of an input of type `T`, or a panic naming what it is.
fn input_as<T: 'static>(i: &InputSpec) -> &T {
    match i.kind.as_any().downcast_ref::<T>() {
        Some(t) => t,
        None => panic!("input {} is of type {}", i.name, i.kind.type_name()),
    }
}

fn env(name: &str) -> Option<String> {
    match name {
        "EVENTS_KEY" => Some("k".into()),
        _ => None,
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.toml", &env) {
        Ok(_) => vec![],
        Err(e) => e.errors,
    }
}

#[test]
fn embedded_default_is_valid() {
    let l = parse(EMBEDDED_DEFAULT, "default", &env).expect("embedded default must parse");
    assert_eq!(l.config.inputs.len(), 2);
    assert_eq!(l.config.outputs[0].kind.type_name(), "stdout");
    assert_eq!(l.config.admin.listen.to_string(), "127.0.0.1:2020");
}

#[test]
fn reference_is_valid() {
    let text = include_str!("../../config/reference.toml");
    let l = parse(text, "reference.toml", &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.config.routes.len(), 4);
    assert_eq!(l.config.outputs.len(), 10);
}

#[test]
fn errors_are_located_and_all_reported() {
    let text = r#"
[inputs.app]
type = "forward"
listen = ["tcp://0.0.0.0:24224"]
bogus = 1

[routes.r]
from = ["ap"]
to = ["nowhere"]

[outputs.f]
type = "file"
path = 5
"#;
    let e = errors(text);
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:5:1: inputs.app: unknown key `bogus`")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with(
            "t.toml:8:9: route refers to unknown input \"ap\" (did you mean \"app\"?)"
        )),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:9:7: route refers to unknown output \"nowhere\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m
                .starts_with("t.toml:13:8: outputs.f.path: expected a string, found an integer")),
        "{e:?}"
    );
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn invalid_toml_is_located() {
    let e = errors("[admin]\nlisten = \n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.toml:2:"), "{e:?}");
}

#[test]
fn bad_units_and_types() {
    let text = r#"
[runtime]
shutdown_grace = "soon"
memory_limit = "12 parsecs"
[outputs.o]
type = "stdout"
batch = { max_records = "many", max_age = "5" }
buffer = { type = "tape", when_full = "panic" }
[inputs.i]
type = "http"
"#;
    let e = errors(text);
    assert_eq!(e.len(), 6, "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.contains("runtime.shutdown_grace") && m.starts_with("t.toml:3:"))
    );
    assert!(e.iter().any(|m| m.contains("outputs.o.buffer.type")));
}

#[test]
fn env_interpolation_and_missing_vars() {
    let ok = r#"
[inputs.e]
type = "http"
auth = { type = "api_key", header = "X-Api-Key", value = "${EVENTS_KEY}" }
[routes.r]
to = "o"
[outputs.o]
type = "null"
"#;
    let l = parse(ok, "t.toml", &env).unwrap();
    let h: &HttpInputConfig = input_as(&l.config.inputs[0]);
    assert_eq!(
        h.auth,
        HttpAuth::ApiKey {
            header: "x-api-key".into(),
            value: "k".into()
        }
    );
    let e = errors(&ok.replace("EVENTS_KEY", "MISSING_KEY"));
    assert!(
        e.iter().any(|m| m.contains("MISSING_KEY is not set")),
        "{e:?}"
    );
}

#[test]
fn dead_letter_must_exist_and_not_loop() {
    let text = r#"
[routes.r]
to = ["a"]
[outputs.a]
type = "null"
dead_letter = "b"
[outputs.b]
type = "null"
dead_letter = "a"
[outputs.c]
type = "null"
dead_letter = "zz"
"#;
    let e = errors(text);
    assert!(e.iter().any(|m| m.contains("loops back")), "{e:?}");
    assert!(
        e.iter().any(|m| m.contains("unknown output \"zz\"")),
        "{e:?}"
    );
}

#[test]
fn warnings_for_unfed_outputs() {
    let text = r#"
[inputs.f]
type = "forward"
[routes.r]
tag = ["x.*"]
to = ["a"]
[outputs.a]
type = "null"
[outputs.lonely]
type = "null"
"#;
    let l = parse(text, "t.toml", &env).unwrap();
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("\"lonely\" receives nothing")),
        "{:?}",
        l.warnings
    );
    assert!(
        l.warnings.iter().any(|w| w.contains("unrouted")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn patterns_as_table_or_json_and_invalid_ones() {
    let text = r#"
[routes.table]
pattern = { source = ["aws.ecs"], detail = { lastStatus = ["STOPPED"] } }
to = "o"
[routes.json]
pattern = '{"detail": {"containers": {"exitCode": [1, 127]}}}'
to = "o"
[routes.bad]
pattern = '{"detail": {"exitCode": [{"numeric": [">", 5, "<", 1]}]}}'
to = "o"
[outputs.o]
type = "null"
[inputs.i]
type = "http"
"#;
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:9:11: routes.bad.pattern: invalid event pattern"),
        "{e:?}"
    );
}

#[test]
fn string_compared_to_numeric_ecs_field_warns() {
    let text = r#"
[routes.r]
pattern = '{"detail": {"containers": {"exitCode": ["1"]}}}'
to = "o"
[outputs.o]
type = "null"
[inputs.i]
type = "http"
"#;
    let l = parse(text, "t.toml", &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        l.warnings.iter().any(|w| w.contains("exitCode")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn patterns_read_the_environment_in_values_only() {
    let text = r#"
[inputs.e]
type = "http"
[routes.json]
pattern = '{"detail":{"key":["${EVENTS_KEY}"]},"$or":[{"a":["x"]},{"b":["${NOPE:-dflt}"]}]}'
to = "o"
[routes.table]
pattern = { detail = { key = ["${EVENTS_KEY}", "$$literal"] } }
to = "o"
[outputs.o]
type = "null"
"#;
    let l = parse(text, "t.toml", &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        l.config.routes[0].pattern_json.as_deref(),
        Some(r#"{"detail":{"key":["k"]},"$or":[{"a":["x"]},{"b":["dflt"]}]}"#)
    );
    assert_eq!(
        l.config.routes[1].pattern_json.as_deref(),
        Some(r#"{"detail":{"key":["k","$literal"]}}"#)
    );
    let e = errors(&text.replace("${EVENTS_KEY}\"]},\"$or", "${MISSING_KEY}\"]},\"$or"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:5:11: routes.json.pattern:")
                && m.contains("MISSING_KEY is not set")),
        "{e:?}"
    );
}

#[test]
fn an_empty_secret_is_reported_along_with_other_errors() {
    let text = r#"
[admin]
bogus = 1
[inputs.e]
type = "http"
auth = { type = "bearer", token = "${NOPE:-}" }
"#;
    let e = errors(text);
    assert!(e.iter().any(|m| m.starts_with("t.toml:3:1:")), "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:6:8: inputs.e.auth: the secret is empty")),
        "{e:?}"
    );
}

#[test]
fn api_key_header_must_be_a_header_name() {
    let e = errors(
        "[inputs.e]\ntype = \"http\"\nauth = { type = \"api_key\", header = \"x api key\", value = \"v\" }\n",
    );
    assert!(
        e.iter()
            .any(|m| m
                .starts_with("t.toml:3:37: inputs.e.auth.header: \"x api key\" is not a valid")),
        "{e:?}"
    );
}

#[test]
fn columns_count_characters() {
    let e =
        errors("[outputs.o]\ntype = \"null\"\nbatch = { max_age = \"é\", max_records = \"x\" }\n");
    // `"x"` is character 40 of line 3 (byte 41: `é` takes two bytes).
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:3:40: outputs.o.batch.max_records")),
        "{e:?}"
    );
    let e = errors("[admin]\n\"clé\" = 1\n[inputs.\"é\"]\nx = \"é\" # é\ntype = \"http\"\n");
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:2:1: admin: unknown key `clé`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:3:9: input name \"é\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:4:1: inputs.é: unknown key `x`")),
        "{e:?}"
    );
}

#[test]
fn a_broken_output_is_reported_once_not_again_by_its_routes() {
    let e = errors(
        "[routes.r]\nto = [\"o\", \"gone\"]\n[outputs.o]\ntype = \"nope\"\ndead_letter = \"x\"\n[outputs.p]\ntype = \"null\"\ndead_letter = \"o\"\n[inputs.i]\ntype = \"http\"\n",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:4:8: outputs.o.type: unknown output type")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.contains("unknown output \"gone\"")),
        "{e:?}"
    );
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn no_inputs_or_no_outputs_is_an_error_unless_they_failed_to_read() {
    let e = errors("");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:1:1: no inputs are configured"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("t.toml:1:1: no outputs are configured"),
        "{e:?}"
    );
    let e = errors("[inputs.i]\ntype = \"http\"\n[outputs]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:3:1: no outputs are configured"),
        "{e:?}"
    );
    // An input and an output that exist but are wrong: their own errors, no "none configured".
    let e = errors("[inputs.i]\ntype = \"tape\"\n[outputs.o]\ntype = \"tape\"\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().all(|m| !m.contains("are configured")), "{e:?}");
}

#[test]
fn secrets_are_values_of_secret_named_variables_or_under_credential_keys() {
    let text = r#"
[inputs.e]
type = "http"
listen = "${LISTEN}"
auth = { type = "bearer", token = "${EVENTS_KEY}" }
[routes.all]
to = "o"
[outputs.o]
type = "http"
url = "http://example.com/${PATH_PART}?k=${NOPE:-in-the-file}&r=${AWS_REGION}"
headers = { x-team = "${TEAM}" }
[outputs.f]
type = "file"
path = "/tmp/${FILE_NAME}-${DB_PASSWORD}.jsonl"
"#;
    let env = |k: &str| {
        Some(
            match k {
                "AWS_REGION" => "eu-west-1",
                "LISTEN" => "127.0.0.1:9999",
                "EVENTS_KEY" => "k-events",
                "PATH_PART" => "path-part",
                "TEAM" => "team-x",
                "FILE_NAME" => "file-name",
                "DB_PASSWORD" => "pw-1234",
                _ => return None,
            }
            .to_string(),
        )
    };
    let l = parse(text, "t.toml", &env).unwrap_or_else(|e| panic!("{e}"));
    // Named like a secret (EVENTS_KEY, DB_PASSWORD) or under auth / url / headers; not the
    // listen address, a file name, a default from the file or the region.
    assert_eq!(
        l.secrets,
        vec!["k-events", "path-part", "pw-1234", "team-x"],
        "{:?}",
        l.secrets
    );
}

#[test]
fn http_listener_limits_and_timeouts() {
    let text = r#"
[admin]
listen = "127.0.0.1:2020"
max_connections = 8
header_timeout = "3s"
idle_timeout = "20s"
[inputs.web]
type = "http"
max_connections = 100
header_timeout = "5s"
idle_timeout = "30s"
body_timeout = "4s"
accept_timeout = "6s"
[routes.r]
to = ["a"]
[outputs.a]
type = "null"
"#;
    let l = parse(text, "t.toml", &env).unwrap_or_else(|e| panic!("{e}"));
    let a = &l.config.admin.limits;
    assert_eq!(
        (a.max_connections, a.header_timeout, a.idle_timeout),
        (8, Duration::from_secs(3), Duration::from_secs(20))
    );
    let h: &HttpInputConfig = input_as(&l.config.inputs[0]);
    assert_eq!(h.limits.max_connections, 100);
    assert_eq!(h.limits.header_timeout, Duration::from_secs(5));
    assert_eq!(h.limits.idle_timeout, Duration::from_secs(30));
    assert_eq!(h.body_timeout, Duration::from_secs(4));
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("accept_timeout") && w.contains("5 s")),
        "{:?}",
        l.warnings
    );

    let e = errors(
        r#"
[admin]
max_connections = 0
[inputs.web]
type = "http"
body_timeout = "0s"
idle_timeout = "0s"
[routes.r]
to = ["a"]
[outputs.a]
type = "null"
"#,
    );
    for key in ["admin.max_connections", "body_timeout", "idle_timeout"] {
        assert!(e.iter().any(|m| m.contains(key)), "{key}: {e:?}");
    }
}

/// Which listen addresses `run` could not bind together (Linux, default dual-stack `[::]`).
#[test]
fn listen_clashes_follow_what_bind_refuses() {
    use super::{Listen, listens_clash};
    let tcp = |s: &str| Listen::Tcp(s.parse().expect("socket address"));
    let clash = |a: &str, b: &str| listens_clash(&tcp(a), &tcp(b));
    assert!(clash("127.0.0.1:2020", "127.0.0.1:2020"));
    assert!(clash("0.0.0.0:2020", "127.0.0.1:2020"));
    assert!(clash("10.0.0.1:2020", "0.0.0.0:2020"));
    assert!(clash("[::]:2020", "127.0.0.1:2020"));
    assert!(clash("[::]:2020", "[::1]:2020"));
    assert!(!clash("127.0.0.1:2020", "127.0.0.2:2020"));
    assert!(!clash("127.0.0.1:2020", "127.0.0.1:2021"));
    assert!(!clash("0.0.0.0:2020", "[::1]:2020"));
    assert!(!clash("127.0.0.1:0", "127.0.0.1:0"));
    let unix = |p: &str| Listen::Unix(p.into());
    assert!(listens_clash(&unix("/run/a.sock"), &unix("/run/a.sock")));
    assert!(!listens_clash(&unix("/run/a.sock"), &unix("/run/b.sock")));
    assert!(!listens_clash(&unix("/run/a.sock"), &tcp("127.0.0.1:2020")));
}

#[test]
fn shutdown_grace_below_a_second_and_a_drain_leaving_nothing_are_refused_clearly() {
    let base =
        "[inputs.i]\ntype = \"http\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n";
    for grace in ["0s", "500ms"] {
        let e = errors(&format!("[runtime]\nshutdown_grace = \"{grace}\"\n{base}"));
        assert!(
            e.len() == 1 && e[0].contains("shutdown_grace") && e[0].contains("at least 1s"),
            "{grace}: {e:?}"
        );
    }
    // 1 s of grace leaves nothing for a drain window: the message says "0s", not "0ns".
    let e = errors(&format!(
        "[runtime]\nshutdown_grace = \"1s\"\ndrain_inputs = \"1ms\"\n{base}"
    ));
    assert!(
        e.len() == 1 && e[0].contains("at most 0s") && !e[0].contains("0ns"),
        "{e:?}"
    );
    assert!(
        errors(&format!(
            "[runtime]\nshutdown_grace = \"1s\"\ndrain_inputs = \"0s\"\n{base}"
        ))
        .is_empty()
    );
}

#[test]
fn worker_threads_defaults_to_one_reads_the_environment_and_refuses_bad_counts() {
    let base =
        "[inputs.i]\ntype = \"http\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n";
    let threads = |runtime: &str| {
        parse(&format!("{runtime}{base}"), "t.toml", &env)
            .map(|l| l.config.runtime.worker_threads)
            .map_err(|e| e.errors)
    };
    assert_eq!(threads(""), Ok(1));
    assert_eq!(threads("[runtime]\nworker_threads = 4\n"), Ok(4));
    // From the environment: interpolation happens in strings, so a string of digits is
    // a number.
    assert_eq!(threads("[runtime]\nworker_threads = \"${WT:-2}\"\n"), Ok(2));
    for (value, says) in [
        ("0", "at least 1"),
        ("-0", "at least 1"),
        ("65", "more than 64"),
        ("99999999999999999999", "too large"),
        ("-3", "non-negative"),
        ("\"two\"", "non-negative integer, found \"two\""),
        ("1.5", "an integer"),
    ] {
        let e = threads(&format!("[runtime]\nworker_threads = {value}\n")).expect_err(value);
        assert!(
            e.len() == 1 && e[0].contains("runtime.worker_threads") && e[0].contains(says),
            "{value}: {e:?}"
        );
    }
}
