//! The seed articles' patterns against the seed articles' ECS events
//! (tests/data/seeds/, provenance in tests/data/seeds/SOURCES.md), plus realistic variants
//! of those events: other exit codes, several containers, a stop code.

use firelane::route::pattern::{Pattern, lint, run_batch, test_pattern_cli};
use serde_json::{Value, json};

const TASK_STOPPED: &str = include_str!("data/seeds/ecs-task-state-change-essential-exited.json");
const SERVICE_ACTION: &str = include_str!("data/seeds/ecs-service-action-placement-failure.json");
const DEPLOYMENT_FAILED: &str = include_str!("data/seeds/ecs-deployment-state-change-failed.json");
const P_EXIT_CODES: &str = include_str!("data/seeds/pattern-exitcode-1-127.json");
const P_STOP_CODE: &str = include_str!("data/seeds/pattern-stopcode-taskfailedtostart.json");
const P_EXIT_STRINGS: &str = include_str!("data/seeds/pattern-exitcode-strings-after-yaml.json");
const P_OR_PREFIX: &str = include_str!("data/seeds/pattern-or-deployment-prefix.json");

const MONITORED_A: &str = "arn:aws:ecs:ap-northeast-1:123456789012:cluster/cluster-to-monitor-a";
const MONITORED_B: &str = "arn:aws:ecs:ap-northeast-1:123456789012:cluster/cluster-to-monitor-b";
const SAMPLESTACK: &str = "arn:aws:ecs:ap-northeast-1:123456789012:cluster/samplestack";

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).unwrap_or_else(|e| panic!("seed pattern rejected: {e}\n{text}"))
}

fn event(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("seed event is not JSON: {e}"))
}

/// The seed task event moved to another cluster, with its one container's exit code set
/// (`None` removes it, as for a container that has not stopped).
fn task_event(cluster: &str, exit_code: Option<Value>) -> Value {
    let mut e = event(TASK_STOPPED);
    e["detail"]["clusterArn"] = json!(cluster);
    let container = &mut e["detail"]["containers"][0];
    match exit_code {
        Some(code) => container["exitCode"] = code,
        None => {
            if let Value::Object(c) = container {
                c.remove("exitCode");
            }
        }
    }
    e
}

/// Number literal kept as written (`127.0` stays `127.0`).
fn num(literal: &str) -> Value {
    serde_json::from_str(literal).unwrap_or_else(|e| panic!("{literal}: {e}"))
}

/// The 002 samples mask account ids with runs of `X` of different lengths; this puts one
/// account id in every run of 9 or more.
fn unmask(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = 0;
    for c in text.chars().chain(std::iter::once('\0')) {
        if c == 'X' {
            run += 1;
            continue;
        }
        if run >= 9 {
            out.push_str("123456789012");
        } else {
            out.extend(std::iter::repeat_n('X', run));
        }
        run = 0;
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

#[test]
fn seed_task_event_as_recorded() {
    let e = event(TASK_STOPPED);
    // The article's console rule was "any detail type, any cluster".
    assert!(pattern(r#"{"source":["aws.ecs"]}"#).matches(&e));
    // The article's Lambda checks, written as a pattern.
    let lambda_check = pattern(
        r#"{"detail-type":["ECS Task State Change"],
            "detail":{"lastStatus":["STOPPED"],"stoppedReason":["Essential container in task exited"]}}"#,
    );
    assert!(lambda_check.matches(&e));
    // The exit-code rule watches other clusters.
    assert!(!pattern(P_EXIT_CODES).matches(&e));
    assert!(!pattern(P_STOP_CODE).matches(&e));
    // Same event with the cluster moved to a monitored one: exit code 1 is in [1, 127].
    assert!(pattern(P_EXIT_CODES).matches(&task_event(MONITORED_A, Some(json!(1)))));
}

#[test]
fn seed_exit_code_rule() {
    let p = pattern(P_EXIT_CODES);
    for (cluster, code, want) in [
        (MONITORED_A, Some(num("1")), true),
        (MONITORED_B, Some(num("127")), true),
        (MONITORED_B, Some(num("127.0")), true),
        (MONITORED_B, Some(num("1.27e2")), true),
        (MONITORED_A, Some(num("0")), false),
        (MONITORED_A, Some(num("137")), false),
        (MONITORED_A, Some(num("-1")), false),
        (MONITORED_A, None, false),
        (SAMPLESTACK, Some(num("1")), false),
        // What the article's YAML bug does to patterns, done to an event instead.
        (MONITORED_A, Some(json!("127")), false),
    ] {
        let e = task_event(cluster, code.clone());
        assert_eq!(p.matches(&e), want, "{cluster} exitCode {code:?}");
    }
    // Several containers: the rule fires if any container exited with 1 or 127.
    let mut e = task_event(MONITORED_A, Some(json!(0)));
    let mut sidecar = e["detail"]["containers"][0].clone();
    sidecar["name"] = json!("log_router");
    sidecar["exitCode"] = json!(127);
    if let Value::Array(cs) = &mut e["detail"]["containers"] {
        cs.push(sidecar);
    }
    assert!(p.matches(&e));
    // Array consistency: "web exited with 127" is false here (web exited 0).
    let web_127 = pattern(r#"{"detail":{"containers":{"name":["web"],"exitCode":[127]}}}"#);
    assert!(!web_127.matches(&e));
    assert!(
        pattern(r#"{"detail":{"containers":{"name":["log_router"],"exitCode":[127]}}}"#)
            .matches(&e)
    );
    assert!(lint(&p).is_empty(), "{:?}", lint(&p));
}

#[test]
fn exit_code_127_as_string_never_matches_and_lint_says_so() {
    // The article: YAML quoted the exit codes, so the stored pattern compares strings
    // with ECS's numbers and silently never fires.
    let p = pattern(P_EXIT_STRINGS);
    for code in ["1", "127", "127.0"] {
        assert!(
            !p.matches(&task_event(SAMPLESTACK, Some(num(code)))),
            "number {code}"
        );
    }
    assert!(
        p.matches(&task_event(SAMPLESTACK, Some(json!("127")))),
        "only a string exit code matches"
    );
    assert!(
        !pattern(r#"{"detail":{"containers":{"exitCode":["127"]}}}"#)
            .matches(&task_event(SAMPLESTACK, Some(json!(127))))
    );

    let warnings = lint(&p);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    for (w, code) in warnings.iter().zip(["1", "127"]) {
        assert_eq!(w.path, "detail.containers.exitCode");
        assert!(w.message.contains(&format!("{code:?}")), "{w}");
        assert!(w.message.contains("number"), "{w}");
        assert!(
            w.to_string().starts_with("detail.containers.exitCode: "),
            "{w}"
        );
    }
    // The fix the article applied (numbers) lints clean and matches.
    assert!(
        lint(&pattern(
            r#"{"detail":{"containers":{"exitCode":[1,127]}}}"#
        ))
        .is_empty()
    );
}

#[test]
fn seed_stop_code_rule() {
    let p = pattern(P_STOP_CODE);
    let with_stop_code = |cluster: &str, code: &str| {
        let mut e = task_event(cluster, None);
        e["detail"]["stopCode"] = json!(code);
        e
    };
    assert!(p.matches(&with_stop_code(MONITORED_A, "TaskFailedToStart")));
    assert!(p.matches(&with_stop_code(MONITORED_B, "TaskFailedToStart")));
    assert!(!p.matches(&with_stop_code(MONITORED_A, "EssentialContainerExited")));
    assert!(!p.matches(&with_stop_code(MONITORED_A, "taskfailedtostart")));
    assert!(!p.matches(&with_stop_code(SAMPLESTACK, "TaskFailedToStart")));
    assert!(
        !p.matches(&task_event(MONITORED_A, Some(json!(1)))),
        "no stopCode at all"
    );
    assert!(lint(&p).is_empty(), "{:?}", lint(&p));
}

#[test]
fn seed_or_prefix_rule() {
    let recorded = pattern(P_OR_PREFIX);
    let deployment = event(DEPLOYMENT_FAILED);
    let service_action = event(SERVICE_ACTION);
    // As recorded, the masked account ids differ in length between pattern and events,
    // so neither branch matches.
    assert!(!recorded.matches(&deployment));
    assert!(!recorded.matches(&service_action));
    assert!(!recorded.matches(&event(TASK_STOPPED)));

    let p = pattern(&unmask(P_OR_PREFIX));
    let deployment = event(&unmask(DEPLOYMENT_FAILED));
    let service_action = event(&unmask(SERVICE_ACTION));
    // Branch 1: deployment events have no clusterArn; the service ARN prefix finds them.
    assert!(p.matches(&deployment));
    // Branch 2: other events carry the cluster ARN.
    assert!(p.matches(&service_action));
    assert!(!p.matches(&event(TASK_STOPPED)), "another cluster");
    let mut moved = event(TASK_STOPPED);
    moved["detail"]["clusterArn"] =
        json!("arn:aws:ecs:ap-northeast-1:123456789012:cluster/hogehoge_cluster");
    assert!(p.matches(&moved));

    // The prefix is on the service ARN of this cluster only.
    let mut other = deployment.clone();
    other["resources"] =
        json!(["arn:aws:ecs:ap-northeast-1:123456789012:service/other_cluster/web"]);
    assert!(!p.matches(&other));
    // Branch 1 needs both its fields: a service action with a matching resource and no
    // clusterArn is not a deployment.
    let mut action_no_cluster = service_action.clone();
    if let Value::Object(d) = &mut action_no_cluster["detail"] {
        d.remove("clusterArn");
    }
    assert!(!p.matches(&action_no_cluster));
    // source is AND'ed with the whole $or.
    let mut not_ecs = deployment.clone();
    not_ecs["source"] = json!("aws.ec2");
    assert!(!p.matches(&not_ecs));
}

#[test]
fn seed_event_type_and_exit_code_rules() {
    // 002 suggests watching WARN/ERROR eventType; 001 wished for "exit code not 0".
    let severity = pattern(r#"{"source":["aws.ecs"],"detail":{"eventType":["WARN","ERROR"]}}"#);
    assert!(severity.matches(&event(SERVICE_ACTION)));
    assert!(severity.matches(&event(DEPLOYMENT_FAILED)));
    assert!(!severity.matches(&event(TASK_STOPPED)));

    let nonzero = pattern(r#"{"detail":{"containers":{"exitCode":[{"anything-but":0}]}}}"#);
    assert!(nonzero.matches(&event(TASK_STOPPED)));
    assert!(!nonzero.matches(&task_event(MONITORED_A, Some(json!(0)))));
    assert!(
        !nonzero.matches(&task_event(MONITORED_A, None)),
        "no exit code yet"
    );

    let circuit_breaker = pattern(
        r#"{"detail-type":["ECS Deployment State Change"],"detail":{"reason":[{"prefix":"ECS deployment circuit breaker"}]}}"#,
    );
    assert!(circuit_breaker.matches(&event(DEPLOYMENT_FAILED)));
    assert!(!circuit_breaker.matches(&event(SERVICE_ACTION)));
}

#[test]
fn seed_cases_through_the_cli_entry_point() {
    assert_eq!(test_pattern_cli(P_EXIT_CODES, TASK_STOPPED), Ok(false));
    assert_eq!(
        test_pattern_cli(
            r#"{"detail":{"containers":{"exitCode":[1]}}}"#,
            TASK_STOPPED
        ),
        Ok(true)
    );
    assert_eq!(
        test_pattern_cli(
            r#"{"detail":{"containers":{"exitCode":["1"]}}}"#,
            TASK_STOPPED
        ),
        Ok(false)
    );
    let err =
        test_pattern_cli(r#"{"detail":{"containers":{"exitCode":[]}}}"#, TASK_STOPPED).unwrap_err();
    assert!(err.starts_with("detail.containers.exitCode: "), "{err}");
    assert!(test_pattern_cli(P_STOP_CODE, "[1]").is_err());
}

/// `run_batch` answers one line per input line, in input order, with `invalid: <reason>`
/// for bad patterns and bad lines, skipping blank lines.
#[test]
fn run_batch_order_and_invalid_lines() {
    let compact = |text: &str| event(text).to_string();
    let task = compact(TASK_STOPPED);
    let lines = [
        format!(
            r#"{{"pattern": {}, "event": {task}}}"#,
            compact(P_EXIT_CODES)
        ),
        format!(
            r#"{{"pattern": {{"detail":{{"containers":{{"exitCode":[1]}}}}}}, "event": {task}}}"#
        ),
        String::new(),
        format!(
            r#"{{"pattern": {{"detail":{{"containers":{{"exitCode":[{{"numeric":[">=",5,"<=",5]}}]}}}}}}, "event": {task}}}"#
        ),
        // Pattern and event as JSON text in strings.
        format!(
            r#"{{"pattern": {}, "event": {}}}"#,
            json!(P_EXIT_STRINGS),
            json!(TASK_STOPPED)
        ),
        "this is not json".to_owned(),
        format!(r#"{{"pattern": {{"source":["aws.ecs"]}}, "event": [{task}]}}"#),
        format!(r#"{{"pattern": "{{", "event": {task}}}"#),
        format!(r#"{{"pattern": {{"source":["aws.ecs"]}}, "event": {task}}}"#),
    ];
    let input = lines.join("\n");
    let mut out = Vec::new();
    run_batch(input.as_bytes(), &mut out).expect("in-memory batch");
    let out = String::from_utf8(out).expect("UTF-8 output");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 8, "{out}");
    assert_eq!(got[0], "false");
    assert_eq!(got[1], "true");
    assert_eq!(
        got[2],
        "invalid: detail.containers.exitCode: numeric range needs bottom < top"
    );
    assert_eq!(got[3], "false");
    assert!(
        got[4].starts_with("invalid: ") && got[4].contains("JSON"),
        "{}",
        got[4]
    );
    assert_eq!(got[5], "invalid: event must be a JSON object");
    assert!(
        got[6].starts_with("invalid: pattern is not valid JSON"),
        "{}",
        got[6]
    );
    assert_eq!(got[7], "true");
    assert!(out.ends_with('\n'));
}
