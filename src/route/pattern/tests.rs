//! Unit tests of whole-pattern behaviour; the conformance suite lives in tests/.

use serde_json::Value;

use super::{Pattern, PatternError};

fn m(pattern: &str, event: &str) -> bool {
    let p = Pattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
    let e: Value = serde_json::from_str(event).unwrap();
    p.matches(&e)
}

fn err(pattern: &str) -> String {
    match Pattern::parse(pattern) {
        Ok(_) => panic!("{pattern} should be invalid"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn error_messages_name_the_path() {
    assert_eq!(
        err(r#"{"detail":{"containers":{"exitCode":[{"numeric":[">=",5,"<=",5]}]}}}"#),
        "detail.containers.exitCode: numeric range needs bottom < top"
    );
    assert_eq!(err("[]"), "event pattern must be a JSON object");
    assert_eq!(
        err(r#"{"detail":{}}"#),
        "detail: empty objects are not allowed in a pattern"
    );
    assert_eq!(
        err(r#"{"a":{"$or":[{"b":["x"]},{"c":{"prefix":["y"]}}]}}"#),
        "a.$or[1].c.prefix: \"prefix\" is a reserved word and cannot be a field name inside $or"
    );
    assert!(matches!(Pattern::parse("{"), Err(PatternError::Json(_))));
}

#[test]
fn duplicate_keys_last_wins() {
    assert!(m(r#"{"a":["x"],"a":["y"]}"#, r#"{"a":"y"}"#));
    assert!(!m(r#"{"a":["x"],"a":["y"]}"#, r#"{"a":"x"}"#));
    // An invalid first occurrence is simply replaced.
    assert!(m(r#"{"a":5,"a":["y"]}"#, r#"{"a":"y"}"#));
}

#[test]
fn or_overrides_outer_path() {
    let p = r#"{"a":["x"],"$or":[{"a":["y"]},{"b":["z"]}]}"#;
    assert!(m(p, r#"{"a":"y"}"#));
    assert!(m(p, r#"{"a":"x","b":"z"}"#));
    assert!(!m(p, r#"{"a":"x"}"#));
}

#[test]
fn array_consistency() {
    let p = r#"{"employees":{"firstName":["Anna"],"lastName":["Jones"]}}"#;
    let e = r#"{"employees":[{"firstName":"John","lastName":"Doe"},{"firstName":"Anna","lastName":"Smith"},{"firstName":"Peter","lastName":"Jones"}]}"#;
    assert!(!m(p, e));
    assert!(m(
        r#"{"employees":{"firstName":["Anna"],"lastName":["Smith"]}}"#,
        e
    ));
    let absent = r#"{"c":{"exitCode":[{"exists":false}]}}"#;
    assert!(!m(absent, r#"{"c":[{"n":"a"},{"n":"b","exitCode":1}]}"#));
    assert!(m(absent, r#"{"c":[{"n":"a"},{"n":"b"}]}"#));
    let pinned = r#"{"c":{"n":["a"],"exitCode":[{"exists":false}]}}"#;
    assert!(m(pinned, r#"{"c":[{"n":"a"},{"n":"b","exitCode":1}]}"#));
    assert!(!m(pinned, r#"{"c":[{"n":"a","exitCode":0},{"n":"b"}]}"#));
    let mixed = r#"{"c":{"exitCode":[{"exists":false},1]}}"#;
    assert!(m(mixed, r#"{"c":[{"exitCode":2},{"exitCode":1}]}"#));
    assert!(!m(mixed, r#"{"c":[{"exitCode":2},{"n":"x"}]}"#));
    assert!(m(mixed, r#"{"c":[{"n":"y"},{"n":"x"}]}"#));
    // An empty element cannot supply the leaf a pinned condition needs.
    assert!(!m(mixed, r#"{"c":[{"exitCode":2},[]]}"#));
    assert!(!m(mixed, r#"{"c":[{"exitCode":2},[[]]]}"#));
    // Nested arrays keep consistency per element of the outer array.
    let nested = r#"{"a":{"x":[1],"y":[2]}}"#;
    assert!(m(nested, r#"{"a":[[{"x":1,"y":2}],[{"x":3}]]}"#));
    assert!(!m(nested, r#"{"a":[[{"x":1}],[{"y":2}]]}"#));
    // Leaves outside the array combine with anything.
    assert!(m(
        r#"{"s":["v"],"a":{"x":[1]}}"#,
        r#"{"s":"v","a":[{"x":0},{"x":1}]}"#
    ));
}

#[test]
fn leaves_and_absence() {
    let ex = r#"{"f":[{"exists":false}]}"#;
    for absent in [
        r#"{}"#,
        r#"{"f":{}}"#,
        r#"{"f":[]}"#,
        r#"{"f":[[]]}"#,
        r#"{"f":{"g":1}}"#,
    ] {
        assert!(m(ex, absent), "{absent}");
    }
    for present in [
        r#"{"f":null}"#,
        r#"{"f":[null]}"#,
        r#"{"f":""}"#,
        r#"{"f":0}"#,
        r#"{"f":[{"g":1},2]}"#,
    ] {
        assert!(!m(ex, present), "{present}");
    }
    assert!(!m(r#"{"f":[{"anything-but":"x"}]}"#, r#"{"f":{"g":1}}"#));
    assert!(m(
        r#"{"log":{"level":[{"exists":false}]}}"#,
        r#"{"log":"text"}"#
    ));
    assert!(!m(r#"{"f":[null]}"#, r#"{}"#));
}

#[test]
fn matches_fields_and_non_objects() {
    let p = Pattern::parse(r#"{"source":["stdout"]}"#).unwrap();
    let Value::Object(fields) = serde_json::json!({"source": "stdout", "log": "x"}) else {
        unreachable!()
    };
    assert!(p.matches_fields(&fields));
    assert!(!p.matches(&serde_json::json!(["stdout"])));
}
