use super::*;

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
    assert_eq!(l.config.outputs.len(), 7);
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
    match &l.config.inputs[0].kind {
        InputKind::Http(h) => {
            assert_eq!(
                h.auth,
                HttpAuth::ApiKey {
                    header: "x-api-key".into(),
                    value: "k".into()
                }
            )
        }
        _ => panic!("expected http"),
    }
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
"#;
    let l = parse(text, "t.toml", &env).unwrap();
    assert!(
        l.warnings.iter().any(|w| w.contains("exitCode")),
        "{:?}",
        l.warnings
    );
}
