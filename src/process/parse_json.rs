//! `type = "parse_json"`: parses a field holding a JSON object (an app's structured log
//! line in `log`) into fields.
//!
//! `key` (default `"log"`) is the field parsed. `merge = true` (the default) puts the
//! object's fields at the top level, overwriting fields of the same name; `target = "NAME"`
//! puts the object under `NAME` instead. `keep_key = false` (the default) removes `key` after
//! a successful parse (when the object itself has a field named `key`, that value stays).
//! A value that is not a string holding a JSON object (plain text, an array, invalid JSON,
//! a missing field) leaves the record as it is, counted
//! (`firelane_processor_records_total{processor, result="not_json"|"missing"}`).

use metrics::Counter;

use super::registry::{ProcessorConfig, ProcessorType};
use super::{Batch, BuildContext, Processor};
use crate::config::reader::{Diagnostics, Table};
use crate::event::{Fields, Record};

/// The registry entry.
pub(crate) struct ParseJson;

impl ProcessorType for ParseJson {
    fn name(&self) -> &'static str {
        "parse_json"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["key", "merge", "target", "keep_key"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig> {
        let key = t.opt_string(d, "key").unwrap_or_else(|| "log".into());
        if key.is_empty() {
            d.error(
                t.value_span("key"),
                format!("{}.key: must not be empty", t.path()),
            );
        }
        let merge = t.opt_bool(d, "merge");
        let target = t.opt_string(d, "target");
        match (&target, merge) {
            (Some(_), Some(true)) => d.error(
                t.value_span("merge"),
                format!(
                    "{}: use either merge = true (fields at the top level) or target (fields under one key), not both",
                    t.path()
                ),
            ),
            (None, Some(false)) => d.error(
                t.value_span("merge"),
                format!(
                    "{}.merge: false needs a `target` key to put the fields under",
                    t.path()
                ),
            ),
            (Some(t_), _) if t_.is_empty() => d.error(
                t.value_span("target"),
                format!("{}.target: must not be empty", t.path()),
            ),
            _ => {}
        }
        let keep_key = t.opt_bool(d, "keep_key").unwrap_or(false);
        Box::new(ParseJsonConfig {
            key,
            target,
            keep_key,
        })
    }
}

/// What `[processors.NAME] type = "parse_json"` says.
#[derive(Debug, Clone)]
pub(crate) struct ParseJsonConfig {
    key: String,
    /// `None` = merge at the top level.
    target: Option<String>,
    keep_key: bool,
}

/// What one record's parse came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Parsed,
    NotJson,
    Missing,
}

impl ParseJsonConfig {
    fn apply(&self, record: &mut Record) -> Outcome {
        let parsed: Fields = {
            let Some(v) = record.get(&self.key) else {
                return Outcome::Missing;
            };
            let Some(text) = v.as_str() else {
                return Outcome::NotJson;
            };
            // Most log lines are plain text: look at the first character before parsing.
            if !text.trim_start().starts_with('{') {
                return Outcome::NotJson;
            }
            match serde_json::from_str::<Fields>(text) {
                Ok(m) => m,
                Err(_) => return Outcome::NotJson,
            }
        };
        let f = record.fields_mut();
        if !self.keep_key {
            f.shift_remove(&self.key);
        }
        match &self.target {
            Some(t) => {
                f.insert(t.clone(), serde_json::Value::Object(parsed));
            }
            None => {
                for (k, v) in parsed {
                    f.insert(k, v);
                }
            }
        }
        Outcome::Parsed
    }
}

impl ProcessorConfig for ParseJsonConfig {
    fn type_name(&self) -> &'static str {
        "parse_json"
    }

    fn describe(&self) -> String {
        format!(
            "{} as JSON {}{}",
            self.key,
            match &self.target {
                Some(t) => format!("into {t}"),
                None => "into the top level".to_string(),
            },
            if self.keep_key {
                format!(", keeping {}", self.key)
            } else {
                String::new()
            }
        )
    }

    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor> {
        Box::new(ParseJsonProcessor {
            config: self.clone(),
            parsed: ctx.counter("parsed"),
            not_json: ctx.counter("not_json"),
            missing: ctx.counter("missing"),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct ParseJsonProcessor {
    config: ParseJsonConfig,
    parsed: Counter,
    not_json: Counter,
    missing: Counter,
}

#[async_trait::async_trait]
impl Processor for ParseJsonProcessor {
    async fn process(&mut self, mut batch: Batch) -> Batch {
        let (mut parsed, mut not_json, mut missing) = (0u64, 0u64, 0u64);
        for r in &mut batch.records {
            match self.config.apply(r) {
                Outcome::Parsed => parsed += 1,
                Outcome::NotJson => not_json += 1,
                Outcome::Missing => missing += 1,
            }
        }
        self.parsed.increment(parsed);
        self.not_json.increment(not_json);
        self.missing.increment(missing);
        batch
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{body, record, spec};
    use super::*;

    fn config(extra: &str) -> ParseJsonConfig {
        let s =
            spec(&format!("type = \"parse_json\"\n{extra}")).unwrap_or_else(|e| panic!("{e:?}"));
        s.kind
            .as_any()
            .downcast_ref::<ParseJsonConfig>()
            .expect("parse_json")
            .clone()
    }

    #[test]
    fn merges_at_the_top_level_and_removes_the_key() {
        let c = config("");
        let mut r = record(
            "t",
            json!({"log": "{\"level\":\"error\",\"n\":1,\"source\":\"app\"}", "source": "stdout"}),
        );
        assert_eq!(c.apply(&mut r), Outcome::Parsed);
        assert_eq!(body(&r), json!({"source": "app", "level": "error", "n": 1}));
    }

    #[test]
    fn into_a_target_keeping_the_key() {
        let c = config("target = \"parsed\"\nkeep_key = true\nkey = \"msg\"");
        let mut r = record("t", json!({"msg": "  {\"a\": {\"b\": [1]}}\r"}));
        assert_eq!(c.apply(&mut r), Outcome::Parsed);
        assert_eq!(
            body(&r),
            json!({"msg": "  {\"a\": {\"b\": [1]}}\r", "parsed": {"a": {"b": [1]}}})
        );
    }

    #[test]
    fn what_is_not_a_json_object_is_left_as_is() {
        let c = config("");
        for v in [
            json!("plain text"),
            json!("[1,2]"),
            json!("{not json"),
            json!(5),
            json!("{\"a\":1} trailing"),
        ] {
            let mut r = record("t", json!({"log": v.clone()}));
            assert_eq!(c.apply(&mut r), Outcome::NotJson, "{v}");
            assert_eq!(body(&r), json!({"log": v}));
        }
        let mut r = record("t", json!({"other": 1}));
        assert_eq!(c.apply(&mut r), Outcome::Missing);
    }

    #[test]
    fn merge_and_target_conflict() {
        let e =
            spec("type = \"parse_json\"\nmerge = true\ntarget = \"x\"\n").expect_err("conflict");
        assert!(
            e[0].starts_with("t.toml:10:9: processors.p: use either merge"),
            "{e:?}"
        );
        let e = spec("type = \"parse_json\"\nmerge = false\n").expect_err("nowhere");
        assert!(e[0].contains("merge: false needs a `target`"), "{e:?}");
    }
}
