//! Conformance cases for the event-pattern engine, one JSON object per line in
//! `tests/data/pattern_cases.jsonl`:
//! `{"name", "pattern", "event", "expect": true | false | "invalid", "path"?}`.
//!
//! `pattern` is either the pattern as JSON, or a JSON string holding pattern *text* (used for
//! text that is not JSON at all, duplicate keys and top-level scalars). For invalid patterns
//! `path` is the field the error must name (`""` for the whole pattern).
//!
//! Every case runs through `Pattern::from_value`, `Pattern::parse` of the re-serialised
//! JSON, and `run_batch`; all failures are reported together with their names.

use std::collections::HashSet;

use firelane::route::pattern::{Pattern, PatternError, run_batch};
use serde_json::{Map, Value};

const CASES: &str = include_str!("data/pattern_cases.jsonl");

#[derive(Debug)]
enum Expect {
    Match(bool),
    Invalid(Option<String>),
}

struct Case {
    line: usize,
    name: String,
    pattern: Value,
    event: Map<String, Value>,
    expect: Expect,
}

fn load() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut names = HashSet::new();
    for (i, text) in CASES.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let mut v: Map<String, Value> = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("pattern_cases.jsonl:{line} is not a JSON object: {e}"));
        let name = match v.remove("name") {
            Some(Value::String(s)) => s,
            other => panic!("line {line}: bad name {other:?}"),
        };
        assert!(
            names.insert(name.clone()),
            "line {line}: duplicate case name {name:?}"
        );
        let pattern = v
            .remove("pattern")
            .unwrap_or_else(|| panic!("{name}: no pattern"));
        let event = match v.remove("event") {
            Some(Value::Object(m)) => m,
            other => panic!("{name}: event must be an object, got {other:?}"),
        };
        let expect = match v.remove("expect") {
            Some(Value::Bool(b)) => Expect::Match(b),
            Some(Value::String(s)) if s == "invalid" => Expect::Invalid(match v.remove("path") {
                Some(Value::String(p)) => Some(p),
                None => None,
                other => panic!("{name}: bad path {other:?}"),
            }),
            other => panic!("{name}: bad expect {other:?}"),
        };
        assert!(
            v.is_empty(),
            "{name}: unknown keys {:?}",
            v.keys().collect::<Vec<_>>()
        );
        cases.push(Case {
            line,
            name,
            pattern,
            event,
            expect,
        });
    }
    cases
}

/// Compiles a case's pattern the ways the public API allows; the results must agree.
fn compile(case: &Case) -> Result<Result<Pattern, PatternError>, String> {
    match &case.pattern {
        Value::String(text) => Ok(Pattern::parse(text)),
        v => {
            let from_value = Pattern::from_value(v);
            let from_text = Pattern::parse(&v.to_string());
            match (&from_value, &from_text) {
                (Ok(_), Ok(_)) => {}
                (Err(a), Err(b)) if a == b => {}
                _ => {
                    return Err(format!(
                        "from_value and parse disagree: {:?} vs {:?}",
                        from_value.as_ref().err(),
                        from_text.as_ref().err()
                    ));
                }
            }
            Ok(from_value)
        }
    }
}

/// The verdict for one case, or why it failed.
fn check(case: &Case) -> Result<(), String> {
    let compiled = compile(case)?;
    match (&case.expect, compiled) {
        (Expect::Match(want), Ok(p)) => {
            let got = p.matches_fields(&case.event);
            let got_value = p.matches(&Value::Object(case.event.clone()));
            if got != got_value {
                return Err(format!("matches_fields={got} but matches={got_value}"));
            }
            if got != *want {
                return Err(format!("expected {want}, got {got}"));
            }
            Ok(())
        }
        (Expect::Match(want), Err(e)) => Err(format!(
            "expected {want}, but the pattern was rejected: {e}"
        )),
        (Expect::Invalid(_), Ok(_)) => Err("expected invalid, but the pattern was accepted".into()),
        (Expect::Invalid(path), Err(e)) => {
            let message = e.to_string();
            match (path, &e) {
                (None, _) => Ok(()),
                (Some(want), PatternError::Invalid { path: got, .. }) => {
                    if got != want {
                        return Err(format!(
                            "error names path {got:?}, expected {want:?} ({message})"
                        ));
                    }
                    if !want.is_empty() && !message.starts_with(&format!("{want}: ")) {
                        return Err(format!(
                            "message does not start with the path {want:?}: {message}"
                        ));
                    }
                    Ok(())
                }
                (Some(want), PatternError::Json(_)) => Err(format!(
                    "expected a pattern error at {want:?}, got a JSON error: {message}"
                )),
            }
        }
    }
}

#[test]
fn conformance_cases() {
    let cases = load();
    assert!(cases.len() >= 300, "only {} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            check(c)
                .err()
                .map(|why| format!("  line {} {:?}: {why}", c.line, c.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn case_mix_covers_every_verdict() {
    let cases = load();
    let count = |f: fn(&Expect) -> bool| cases.iter().filter(|c| f(&c.expect)).count();
    assert!(count(|e| matches!(e, Expect::Match(true))) >= 100);
    assert!(count(|e| matches!(e, Expect::Match(false))) >= 100);
    assert!(count(|e| matches!(e, Expect::Invalid(Some(_)))) >= 100);
}

/// All cases through the batch interface at once: one answer line per case, in order,
/// agreeing with the direct API.
#[test]
fn conformance_cases_through_run_batch() {
    let cases = load();
    let mut input = String::new();
    for c in &cases {
        let line =
            serde_json::json!({"pattern": c.pattern, "event": Value::Object(c.event.clone())});
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut out = Vec::new();
    run_batch(input.as_bytes(), &mut out).expect("run_batch on an in-memory buffer");
    let out = String::from_utf8(out).expect("batch output is UTF-8");
    let answers: Vec<&str> = out.lines().collect();
    assert_eq!(answers.len(), cases.len(), "one answer per case");
    let mut failures = Vec::new();
    for (c, answer) in cases.iter().zip(&answers) {
        let ok = match &c.expect {
            Expect::Match(true) => *answer == "true",
            Expect::Match(false) => *answer == "false",
            Expect::Invalid(Some(path)) if !path.is_empty() => {
                answer.starts_with(&format!("invalid: {path}: "))
            }
            Expect::Invalid(_) => answer.starts_with("invalid: "),
        };
        if !ok {
            failures.push(format!(
                "  line {} {:?}: batch answered {answer:?}",
                c.line, c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "batch disagreements:\n{}",
        failures.join("\n")
    );
}

#[test]
fn non_object_events_never_match() {
    let p = Pattern::parse(r#"{"f":[{"exists":false}]}"#).expect("valid pattern");
    for event in ["[]", "[{}]", "5", "\"f\"", "null", "true"] {
        let v: Value = serde_json::from_str(event).expect("test JSON");
        assert!(!p.matches(&v), "{event} is not an event");
    }
    assert!(p.matches(&serde_json::json!({})));
}
