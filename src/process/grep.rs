//! `type = "grep"`: keeps or drops records by rules (src/process/rule.rs): a regex on a
//! field (`{ key = "log", regex = "ERROR" }`, `key` a dotted path) or an EventBridge
//! pattern (`{ pattern = ... }`).
//!
//! `include` and `exclude` each take one rule or an array. `logical_op` says how rules
//! combine:
//! - `"legacy"` (default, Fluent Bit's `grep` without `Logical_Op`): a record is kept when
//!   every `include` rule matches and no `exclude` rule matches;
//! - `"and"`: kept when every `include` rule matches; dropped when every `exclude` rule
//!   matches;
//! - `"or"`: kept when any `include` rule matches; dropped when any `exclude` rule matches.
//!
//! A record whose field is missing does not match that field's rule. Dropped records are
//! counted (`firelane_processor_records_total{processor, result="dropped"}`).

use metrics::Counter;

use super::registry::{ProcessorConfig, ProcessorType};
use super::rule::{Rule, read_rules};
use super::{Batch, BuildContext, Processor};
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;

/// The registry entry.
pub(crate) struct Grep;

/// How `include` and `exclude` rules combine (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogicalOp {
    /// Every include must match; any exclude drops.
    Legacy,
    /// Every include must match; all excludes together drop.
    And,
    /// Any include keeps; any exclude drops.
    Or,
}

impl ProcessorType for Grep {
    fn name(&self) -> &'static str {
        "grep"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["include", "exclude", "logical_op"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig> {
        let include = read_rules(t, d, "include").unwrap_or_default();
        let exclude = read_rules(t, d, "exclude").unwrap_or_default();
        let op = match t.opt_string(d, "logical_op").as_deref() {
            None | Some("legacy") => LogicalOp::Legacy,
            Some("and") => LogicalOp::And,
            Some("or") => LogicalOp::Or,
            Some(other) => {
                d.error(
                    t.value_span("logical_op"),
                    format!(
                        "{}.logical_op: {other:?} is not one of \"legacy\", \"and\", \"or\"",
                        t.path()
                    ),
                );
                LogicalOp::Legacy
            }
        };
        if !t.contains("include") && !t.contains("exclude") {
            d.error(
                t.span(),
                format!("{}: a grep needs `include` or `exclude` rules", t.path()),
            );
        }
        Box::new(GrepConfig {
            include,
            exclude,
            op,
        })
    }
}

/// What `[processors.NAME] type = "grep"` says.
#[derive(Debug, Clone)]
pub(crate) struct GrepConfig {
    include: Vec<Rule>,
    exclude: Vec<Rule>,
    op: LogicalOp,
}

impl GrepConfig {
    /// Whether `record` goes on.
    pub(crate) fn keeps(&self, record: &Record) -> bool {
        let inc = &self.include;
        let exc = &self.exclude;
        match self.op {
            LogicalOp::Legacy => {
                inc.iter().all(|r| r.matches(record)) && !exc.iter().any(|r| r.matches(record))
            }
            LogicalOp::And => {
                inc.iter().all(|r| r.matches(record))
                    && (exc.is_empty() || !exc.iter().all(|r| r.matches(record)))
            }
            LogicalOp::Or => {
                (inc.is_empty() || inc.iter().any(|r| r.matches(record)))
                    && !exc.iter().any(|r| r.matches(record))
            }
        }
    }
}

impl ProcessorConfig for GrepConfig {
    fn type_name(&self) -> &'static str {
        "grep"
    }

    fn describe(&self) -> String {
        let join = |rules: &[Rule]| {
            rules
                .iter()
                .map(Rule::describe)
                .collect::<Vec<_>>()
                .join(match self.op {
                    LogicalOp::Or => " or ",
                    LogicalOp::And => " and ",
                    LogicalOp::Legacy => " and ",
                })
        };
        let mut parts = Vec::new();
        if !self.include.is_empty() {
            parts.push(format!("keep {}", join(&self.include)));
        }
        if !self.exclude.is_empty() {
            let ex = match self.op {
                LogicalOp::Legacy => self
                    .exclude
                    .iter()
                    .map(Rule::describe)
                    .collect::<Vec<_>>()
                    .join(" or "),
                _ => join(&self.exclude),
            };
            parts.push(format!("drop {ex}"));
        }
        parts.join("; ")
    }

    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor> {
        Box::new(GrepProcessor {
            config: self.clone(),
            kept: ctx.counter("kept"),
            dropped: ctx.counter("dropped"),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct GrepProcessor {
    config: GrepConfig,
    kept: Counter,
    dropped: Counter,
}

#[async_trait::async_trait]
impl Processor for GrepProcessor {
    async fn process(&mut self, mut batch: Batch) -> Batch {
        let before = batch.records.len();
        batch.records.retain(|r| self.config.keeps(r));
        let kept = batch.records.len();
        self.kept.increment(kept as u64);
        self.dropped.increment((before - kept) as u64);
        batch
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{record, spec};
    use super::*;

    fn grep(body: &str) -> GrepConfig {
        let s = spec(&format!("type = \"grep\"\n{body}")).unwrap_or_else(|e| panic!("{e:?}"));
        s.kind
            .as_any()
            .downcast_ref::<GrepConfig>()
            .expect("grep")
            .clone()
    }

    fn logs(c: &GrepConfig) -> Vec<&'static str> {
        let all = [
            ("ERROR db down", "db", 1),
            ("ERROR timeout", "web", 2),
            ("INFO ok", "web", 3),
            ("WARN slow", "db", 4),
        ];
        all.iter()
            .filter(|(log, app, n)| {
                c.keeps(&record(
                    "t",
                    json!({"log": log, "k8s": {"app": app}, "n": n}),
                ))
            })
            .map(|(log, _, _)| *log)
            .collect()
    }

    #[test]
    fn legacy_requires_every_include_and_drops_on_any_exclude() {
        let c = grep(
            r#"include = [{ key = "log", regex = "^ERROR" }, { key = "k8s.app", regex = "web|db" }]
exclude = [{ key = "log", regex = "timeout" }, { pattern = { n = [4] } }]"#,
        );
        assert_eq!(logs(&c), ["ERROR db down"]);
        let c = grep(r#"exclude = { key = "log", regex = "INFO" }"#);
        assert_eq!(logs(&c), ["ERROR db down", "ERROR timeout", "WARN slow"]);
    }

    #[test]
    fn or_keeps_on_any_include() {
        let c = grep(
            r#"logical_op = "or"
include = [{ key = "log", regex = "^WARN" }, { pattern = '{"k8s": {"app": ["web"]}}' }]"#,
        );
        assert_eq!(logs(&c), ["ERROR timeout", "INFO ok", "WARN slow"]);
    }

    #[test]
    fn and_drops_when_every_exclude_matches() {
        let c = grep(
            r#"logical_op = "and"
exclude = [{ key = "log", regex = "ERROR" }, { key = "k8s.app", regex = "^db$" }]"#,
        );
        assert_eq!(logs(&c), ["ERROR timeout", "INFO ok", "WARN slow"]);
    }

    #[test]
    fn a_number_field_matches_as_its_text_and_a_missing_one_never() {
        let c = grep(r#"include = { key = "n", regex = "^[12]$" }"#);
        assert_eq!(logs(&c), ["ERROR db down", "ERROR timeout"]);
        let c = grep(r#"include = { key = "nope", regex = "" }"#);
        assert!(logs(&c).is_empty());
    }

    #[test]
    fn bad_rules_are_located() {
        let e = spec(
            "type = \"grep\"\ninclude = [{ key = \"log\", regex = \"(\" }, { key = \"log\" }, 5]\nlogical_op = \"xor\"\n",
        )
        .expect_err("bad rules");
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:10:35: processors.p.include[0].regex: invalid regex"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.toml:10:42: processors.p.include[1]: missing required key `regex`"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("t.toml:10:59: processors.p.include[2]: expected a rule"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("t.toml:11:14: processors.p.logical_op: \"xor\""),
            "{e:?}"
        );
        let e = spec("type = \"grep\"\n").expect_err("no rules");
        assert!(e[0].contains("needs `include` or `exclude`"), "{e:?}");
        let e =
            spec("type = \"grep\"\ninclude = { pattern = { a = 1 } }\n").expect_err("bad pattern");
        assert!(
            e[0].contains("processors.p.include.pattern: invalid event pattern"),
            "{e:?}"
        );
    }
}
