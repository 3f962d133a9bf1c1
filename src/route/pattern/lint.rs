//! Warnings for patterns that are valid but almost certainly wrong.
//!
//! Two kinds: type mismatches against fields whose JSON type ECS fixes (a YAML/TOML
//! template turning `exitCode: [1]` into `["1"]` is a classic silent failure), and
//! conditions that provably never match. Every "never matches" warning is a proof, not a
//! guess; type warnings are only about the ECS event shapes listed below.

use std::fmt;

use super::Pattern;
use super::values::{AnythingBut, Op, ValueList};

/// One lint finding: the dotted field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    /// Dotted path of the field (`detail.state`; `$or[i]` for branches).
    pub path: String,
    /// What is wrong and why it matters, one sentence.
    pub message: String,
}

impl fmt::Display for LintWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    String,
    Bool,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Bool => "a boolean",
        }
    }
}

/// JSON types of ECS event fields (EventBridge `aws.ecs` events), by path from the root.
/// Sources: ECS event docs and schemas; `cpu`/`memory` are strings in events, counts and
/// exit codes are numbers.
const ECS_FIELDS: &[(&str, Kind)] = &[
    ("version", Kind::String),
    ("id", Kind::String),
    ("detail-type", Kind::String),
    ("source", Kind::String),
    ("account", Kind::String),
    ("time", Kind::String),
    ("region", Kind::String),
    ("resources", Kind::String),
    ("detail.version", Kind::Number),
    ("detail.clusterArn", Kind::String),
    ("detail.taskArn", Kind::String),
    ("detail.taskDefinitionArn", Kind::String),
    ("detail.containerInstanceArn", Kind::String),
    ("detail.cpu", Kind::String),
    ("detail.memory", Kind::String),
    ("detail.lastStatus", Kind::String),
    ("detail.desiredStatus", Kind::String),
    ("detail.stopCode", Kind::String),
    ("detail.stoppedReason", Kind::String),
    ("detail.launchType", Kind::String),
    ("detail.group", Kind::String),
    ("detail.startedBy", Kind::String),
    ("detail.availabilityZone", Kind::String),
    ("detail.platformVersion", Kind::String),
    ("detail.connectivity", Kind::String),
    ("detail.containers.exitCode", Kind::Number),
    ("detail.containers.cpu", Kind::String),
    ("detail.containers.memory", Kind::String),
    ("detail.containers.memoryReservation", Kind::String),
    ("detail.containers.name", Kind::String),
    ("detail.containers.lastStatus", Kind::String),
    ("detail.containers.reason", Kind::String),
    ("detail.containers.image", Kind::String),
    (
        "detail.containers.networkBindings.containerPort",
        Kind::Number,
    ),
    ("detail.containers.networkBindings.hostPort", Kind::Number),
    ("detail.containers.networkBindings.bindIP", Kind::String),
    ("detail.containers.networkBindings.protocol", Kind::String),
    ("detail.agentConnected", Kind::Bool),
    ("detail.runningTasksCount", Kind::Number),
    ("detail.pendingTasksCount", Kind::Number),
    ("detail.status", Kind::String),
    ("detail.ec2InstanceId", Kind::String),
    ("detail.registeredResources.integerValue", Kind::Number),
    ("detail.registeredResources.longValue", Kind::Number),
    ("detail.registeredResources.doubleValue", Kind::Number),
    ("detail.remainingResources.integerValue", Kind::Number),
    ("detail.remainingResources.longValue", Kind::Number),
    ("detail.remainingResources.doubleValue", Kind::Number),
    ("detail.eventType", Kind::String),
    ("detail.eventName", Kind::String),
    ("detail.reason", Kind::String),
    ("detail.deploymentId", Kind::String),
];

fn ecs_kind(path: &str) -> Option<Kind> {
    ECS_FIELDS.iter().find(|(p, _)| *p == path).map(|(_, k)| *k)
}

/// Lints a compiled pattern. Warnings are deduplicated and in pattern order.
pub fn lint(pattern: &Pattern) -> Vec<LintWarning> {
    let mut out: Vec<LintWarning> = Vec::new();
    let mut push = |path: &str, message: String| {
        if !out.iter().any(|w| w.path == path && w.message == message) {
            out.push(LintWarning {
                path: path.to_owned(),
                message,
            });
        }
    };
    let conds = pattern.conditions();
    for cond in conds {
        let path = cond.path_string();
        if let Some(kind) = ecs_kind(&path) {
            let field = cond.path.last().map(|k| &**k).unwrap_or("");
            for m in type_mismatches(&cond.list, kind, field) {
                push(&path, m);
            }
        }
        for op in &cond.list.ops {
            if let Op::Numeric(r) = op
                && r.is_empty()
            {
                push(
                    &path,
                    "numeric range contains no number, so this entry never matches".into(),
                );
            }
        }
    }

    for path in pattern.overridden() {
        push(
            path,
            "is named both outside and inside $or (or in two nested $or); as in EventBridge, the later one replaces the earlier in each combination".into(),
        );
    }
    let mut dead = 0;
    for alt in pattern.alternative_conditions() {
        if let Some((path, why)) = dead_alternative(pattern, alt) {
            dead += 1;
            push(&path, why);
        }
    }
    let total = pattern.alternative_conditions().len();
    if dead == total {
        push("", "this pattern can never match any event".into());
    }
    out
}

/// Why this alternative can never match, if that is provable.
fn dead_alternative(pattern: &Pattern, alt: &[usize]) -> Option<(String, String)> {
    let conds = pattern.conditions();
    for &c in alt {
        let list = &conds[c].list;
        if never_satisfied(list) {
            return Some((
                conds[c].path_string(),
                "every entry is an empty numeric range, so this field never matches".into(),
            ));
        }
    }
    None
}

fn never_satisfied(list: &ValueList) -> bool {
    !list.exists_false
        && !list.exists_true
        && !list.match_true
        && !list.match_false
        && !list.match_null
        && list.strings.is_empty()
        && list.numbers.is_empty()
        && !list.ops.is_empty()
        && list
            .ops
            .iter()
            .all(|op| matches!(op, Op::Numeric(r) if r.is_empty()))
}

fn type_mismatches(list: &ValueList, kind: Kind, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    let sends = format!("ECS sends {field} as {}", kind.noun());
    if kind != Kind::String {
        for s in &list.strings {
            let hint = match kind {
                Kind::Number if s.text.parse::<f64>().is_ok() => {
                    format!("; write {} without quotes", s.text)
                }
                Kind::Bool if matches!(&*s.text, "true" | "false") => {
                    format!("; write {} without quotes", s.text)
                }
                _ => String::new(),
            };
            out.push(format!(
                "{:?} is a string but {sends}, so it never matches{hint}",
                s.text
            ));
        }
        for op in &list.ops {
            let name = match op {
                Op::Prefix(_) | Op::PrefixIgnoreCase(_) => Some("prefix"),
                Op::Suffix(_) | Op::SuffixIgnoreCase(_) => Some("suffix"),
                Op::EqualsIgnoreCase(_) => Some("equals-ignore-case"),
                Op::Wildcard(_) => Some("wildcard"),
                Op::Cidr(_) => Some("cidr"),
                _ => None,
            };
            if let Some(name) = name {
                out.push(format!(
                    "{name} only matches strings but {sends}, so it never matches"
                ));
            }
            if let Op::AnythingBut(AnythingBut::Strings(_) | AnythingBut::StringTests(_)) = op {
                out.push(format!(
                    "anything-but with strings never excludes {}: {sends}, so it matches every event that has the field",
                    kind.noun()
                ));
            }
        }
    }
    if kind != Kind::Number {
        for n in &list.numbers {
            let lit = match n {
                super::number::ExactNumber::Comparable(v) => v.to_string(),
                super::number::ExactNumber::Text(t) => t.to_string(),
            };
            out.push(format!(
                "{lit} is a number but {sends}, so it never matches"
            ));
        }
        for op in &list.ops {
            match op {
                Op::Numeric(_) => out.push(format!("numeric only matches numbers but {sends}, so it never matches")),
                Op::AnythingBut(AnythingBut::Numbers(_)) => out.push(format!(
                    "anything-but with numbers never excludes {}: {sends}, so it matches every event that has the field",
                    kind.noun()
                )),
                _ => {}
            }
        }
    }
    if kind != Kind::Bool && (list.match_true || list.match_false) {
        out.push(format!(
            "true/false is a boolean but {sends}, so it never matches"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(p: &str) -> Vec<String> {
        lint(&Pattern::parse(p).unwrap())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn string_exit_code() {
        let w = warnings(r#"{"detail":{"containers":{"exitCode":["1","127"]}}}"#);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with(
            "detail.containers.exitCode: \"1\" is a string but ECS sends exitCode as a number"
        ));
        assert!(w[0].ends_with("write 1 without quotes"));
        assert!(warnings(r#"{"detail":{"containers":{"exitCode":[1,127]}}}"#).is_empty());
    }

    #[test]
    fn number_cpu_and_bool() {
        let w = warnings(
            r#"{"detail":{"cpu":[256],"memory":[{"numeric":[">",512]}],"agentConnected":["true"]}}"#,
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("256 is a number but ECS sends cpu as a string"));
        assert!(w[1].contains("numeric only matches numbers"));
        assert!(w[2].contains("write true without quotes"));
        assert!(warnings(r#"{"version":["0"],"detail":{"version":[4]}}"#).is_empty());
        assert_eq!(warnings(r#"{"account":[123456789012]}"#).len(), 1);
    }

    #[test]
    fn never_matching() {
        let w = warnings(r#"{"x":[{"numeric":[">",1.7976931348623157e308]}]}"#);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w.last().unwrap().contains("can never match"));
        let w = warnings(r#"{"a":[{"exists":false}],"$or":[{"a":["x"]},{"b":["y"]}]}"#);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("a: is named both outside and inside $or"));
        let w =
            warnings(r#"{"$or":[{"x":[{"numeric":["<",-1.7976931348623157e308]}]},{"b":["y"]}]}"#);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].contains("every entry is an empty numeric range"));
        assert!(warnings(r#"{"a":[{"exists":false}],"b":{"c":["x"]}}"#).is_empty());
    }
}
