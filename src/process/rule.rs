//! A record test shared by `grep` and `rewrite_tag`: `{ key = "a.b", regex = "..." }` (a
//! regex on a field, found by a dotted path) or `{ pattern = <EventBridge pattern> }`.

use std::borrow::Cow;

use regex::Regex;
use serde_json::Value;
use toml::de::DeValue;

use crate::config::reader::{self, Diagnostics, Table, Value as TomlValue};
use crate::event::Record;
use crate::route::pattern::Pattern;

/// One rule; see the module docs.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    /// A regex (Rust `regex` syntax, unanchored) on the field at `path`. A string field is
    /// matched as it is; a number or boolean as its JSON text; a missing field, `null`,
    /// object or array never matches.
    Regex {
        /// The dotted path as written (`a.b.c`).
        key: String,
        /// `key` split on `.`.
        path: Vec<String>,
        /// The compiled regex.
        regex: Regex,
    },
    /// An EventBridge event pattern on the record's fields.
    Pattern {
        /// The compiled pattern.
        pattern: Pattern,
        /// Its top-level keys, sorted (what [`Record::select`] decodes).
        keys: Vec<Box<str>>,
        /// Its compact JSON, for `firelane check`.
        json: String,
    },
}

impl Rule {
    /// Whether `record` matches.
    pub(crate) fn matches(&self, record: &Record) -> bool {
        match self {
            Rule::Regex { path, regex, .. } => match field_path(record, path) {
                Some(v) => match v.as_ref() {
                    Value::String(s) => regex.is_match(s),
                    Value::Number(n) => regex.is_match(n.as_str()),
                    Value::Bool(b) => regex.is_match(if *b { "true" } else { "false" }),
                    _ => false,
                },
                None => false,
            },
            Rule::Pattern { pattern, keys, .. } => pattern.matches_fields(&record.select(keys)),
        }
    }

    /// For `firelane check`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Rule::Regex { key, regex, .. } => format!("{key} =~ /{}/", regex.as_str()),
            Rule::Pattern { json, .. } => format!("pattern {json}"),
        }
    }
}

/// The value at a dotted path (`a.b.c`: field `a`, its key `b`, its key `c`); an array
/// element by index (`a.0`).
pub(crate) fn field_path<'r>(record: &'r Record, path: &[String]) -> Option<Cow<'r, Value>> {
    let (first, rest) = path.split_first()?;
    let top = record.get(first)?.to_value();
    if rest.is_empty() {
        return Some(top);
    }
    let walk = |mut v: &Value| -> Option<Value> {
        for seg in rest {
            v = match v {
                Value::Object(m) => m.get(seg.as_str())?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v.clone())
    };
    match top {
        Cow::Borrowed(v) => {
            let mut v = v;
            for seg in rest {
                v = match v {
                    Value::Object(m) => m.get(seg.as_str())?,
                    Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(Cow::Borrowed(v))
        }
        Cow::Owned(v) => walk(&v).map(Cow::Owned),
    }
}

/// Splits a dotted path; an empty segment (`a..b`, `.a`) is an error.
pub(crate) fn parse_path(key: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = key.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!(
            "{key:?} is not a dotted path (a.b.c) of field names"
        ));
    }
    Ok(parts)
}

/// Compiles a regex from the config, located errors to `d`.
pub(crate) fn compile_regex(
    d: &mut Diagnostics,
    span: std::ops::Range<usize>,
    what: &str,
    text: &str,
) -> Option<Regex> {
    match Regex::new(text) {
        Ok(r) => Some(r),
        Err(e) => {
            d.error(span, format!("{what}: invalid regex: {e}"));
            None
        }
    }
}

/// Reads one rule from the inline table `v` (at `what`, e.g. `processors.errors.include`).
pub(crate) fn read_rule(
    v: &TomlValue<'_>,
    what: &str,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diagnostics,
) -> Option<Rule> {
    let DeValue::Table(table) = v.get_ref() else {
        d.error(
            v.span(),
            format!(
                "{what}: expected a rule {{ key = \"log\", regex = \"...\" }} or {{ pattern = ... }}, found {}",
                reader::type_name(v.get_ref())
            ),
        );
        return None;
    };
    let mut t = Table::new(table, v.span(), what.to_string(), env);
    let before = d.errors.len();
    let rule = if t.contains("pattern") {
        for k in ["key", "regex"] {
            if t.contains(k) {
                d.error(
                    t.value_span(k),
                    format!("{what}: a rule has either `pattern` or `key` + `regex`, not both"),
                );
                t.mark_used(k);
            }
        }
        crate::config::read_pattern(&mut t, d, "pattern").map(|(pattern, json)| {
            let mut keys: Vec<Box<str>> = pattern.top_level_keys().map(Box::from).collect();
            keys.sort();
            keys.dedup();
            Rule::Pattern {
                pattern,
                keys,
                json,
            }
        })
    } else {
        let key = t.opt_string(d, "key");
        let regex = t.opt_string(d, "regex");
        match (key, regex) {
            (Some(key), Some(text)) => {
                let path = match parse_path(&key) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        d.error(t.value_span("key"), format!("{what}.key: {e}"));
                        None
                    }
                };
                let regex =
                    compile_regex(d, t.value_span("regex"), &format!("{what}.regex"), &text);
                match (path, regex) {
                    (Some(path), Some(regex)) => Some(Rule::Regex { key, path, regex }),
                    _ => None,
                }
            }
            (None, Some(_)) => {
                t.missing(d, "key");
                None
            }
            (Some(_), None) => {
                t.missing(d, "regex");
                None
            }
            (None, None) => {
                d.error(
                    v.span(),
                    format!("{what}: a rule needs `key` + `regex` or `pattern`"),
                );
                None
            }
        }
    };
    t.finish_expecting(d, &["key", "regex", "pattern"]);
    if d.errors.len() > before {
        return None;
    }
    rule
}

/// Reads `key` of `t` as one rule or an array of rules. `None` when absent.
pub(crate) fn read_rules(
    t: &mut Table<'_, '_>,
    d: &mut Diagnostics,
    key: &str,
) -> Option<Vec<Rule>> {
    let env = t.env();
    let what = format!("{}.{key}", t.path());
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::Array(items) => Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| read_rule(item, &format!("{what}[{i}]"), env, d))
                .collect(),
        ),
        _ => read_rule(v, &what, env, d).map(|r| vec![r]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Record {
        let Value::Object(m) = v else { unreachable!() };
        Record::new("t", 0, m)
    }

    #[test]
    fn dotted_paths_reach_nested_fields_and_array_items() {
        let r = rec(json!({"a": {"b": [{"c": "x"}]}, "n": 5}));
        let p = |s: &str| parse_path(s).expect("path");
        assert_eq!(field_path(&r, &p("a.b.0.c")).as_deref(), Some(&json!("x")));
        assert_eq!(field_path(&r, &p("n")).as_deref(), Some(&json!(5)));
        assert_eq!(field_path(&r, &p("a.z")), None);
        assert!(parse_path("a..b").is_err());
    }
}
