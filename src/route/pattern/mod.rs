//! EventBridge event patterns: the engine behind every route's `pattern`.
//!
//! Semantics follow Amazon EventBridge's matcher, the open-source aws/event-ruler 2.x
//! (<https://github.com/aws/event-ruler>), as measured by running it; the measured cases are
//! `tests/data/pattern_cases.jsonl` (checked by `tests/pattern_conformance.rs`). Summarised:
//! - A pattern is a JSON object whose nested objects name paths; each path ends in a value
//!   list. All paths must be satisfied (AND); a path is satisfied when some leaf there
//!   matches some list entry (OR). Arrays add nothing to a path, so a list matches if any
//!   element matches. Objects, `[]`, `[[]]` and missing fields have no leaf: only
//!   `{"exists": false}` is true for them — `anything-but` included.
//! - Exact strings compare code point for code point, except that IP literals compare as
//!   addresses of the same family. Numbers compare numerically when both sides are
//!   "comparable" (the literal is exactly its double's shortest round-trip form), else by
//!   literal text. A string never equals a number.
//! - `prefix`, `suffix`, `equals-ignore-case` (also inside prefix/suffix), `wildcard` (`*`,
//!   `\*`, `\\`), `numeric`, `cidr` and `exists` behave as in event-ruler; each applies
//!   only to leaves of its own type. `anything-but` is true for any leaf its operand kind
//!   does not exclude (so `{"anything-but": "x"}` is true for `5`, `null`, `false`).
//! - `$or` may appear at any level and expands into alternatives (cross product).
//! - Fields under one array of objects must match within the same element (array
//!   consistency), including the declarative reading of `exists: false`.
//! - Duplicate keys: the last one wins (serde_json's map insert).
//!
//! Where firelane follows event-ruler rather than the AWS documentation:
//! - numeric comparison covers the full double range (the docs say ±1e9, 15 digits);
//!   non-comparable literals are invalid `numeric`/`anything-but` operands;
//! - `cidr` masks `/32` and `/128` are invalid; exact IP strings match other spellings;
//! - a numeric range needs bottom strictly below top;
//! - inside `$or`, operator names are reserved and may not be field names.
//!
//! Where firelane differs from event-ruler on its known bugs (outside the conformance set):
//! IPv6 leaves never match IPv4 ranges and vice versa; `anything-but` behaves as on the
//! `Machine` path (true for non-strings); `exactly` is not accepted; `exists: false` in
//! arrays of objects is evaluated declaratively instead of in sorted-key order.
//! firelane also rejects patterns whose `$or` expands to more than 1024 alternatives.
//!
//! Matching walks only the paths the pattern names, never re-parses JSON and never
//! allocates: operands are compiled once (lowercased strings, parsed CIDR ranges and
//! number bounds, wildcard pieces).

mod batch;
mod compile;
mod ip;
mod lint;
mod matcher;
mod number;
mod text;
mod values;

use serde_json::{Map, Value};

pub use batch::{run_batch, test_pattern_cli};
pub use lint::{LintWarning, lint};

use compile::Condition;
use matcher::{Trie, Walk};

/// Why a pattern was rejected. `path` names the field (dotted, `$or[i]` for branches),
/// empty for problems with the whole pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is not valid JSON: {0}")]
    /// The text is not JSON; the parser's message.
    Json(String),
    #[error("{}", at(.path, .message))]
    /// The JSON is not a valid event pattern (rules of aws/event-ruler 2.x).
    Invalid {
        /// Dotted path of the offending field; empty for the whole pattern.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn at(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

impl PatternError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> PatternError {
        PatternError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A compiled event pattern. Cheap to share; matching takes `&self`.
#[derive(Debug, Clone)]
pub struct Pattern {
    conditions: Vec<Condition>,
    /// One trie per `$or` alternative; the pattern matches when any does.
    alternatives: Vec<Trie>,
    /// Condition indices per alternative, kept for lint.
    alternative_conditions: Vec<Vec<usize>>,
    /// Paths replaced by a later occurrence in the same alternative, kept for lint.
    overridden: Vec<String>,
}

impl Pattern {
    /// Parses pattern JSON text. Number literals keep their text and duplicate keys resolve
    /// to the last occurrence.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| PatternError::Json(e.to_string()))?;
        Pattern::from_value(&value)
    }

    /// Compiles a pattern already held as a JSON value (e.g. a TOML table converted).
    pub fn from_value(value: &Value) -> Result<Pattern, PatternError> {
        let compiled = compile::compile(value)?;
        let alternatives = compiled
            .alternatives
            .iter()
            .map(|alt| Trie::build(&compiled.conditions, alt))
            .collect();
        Ok(Pattern {
            conditions: compiled.conditions,
            alternatives,
            alternative_conditions: compiled.alternatives,
            overridden: compiled.overridden,
        })
    }

    /// Matches an event. Anything other than a JSON object is not an event and never matches.
    pub fn matches(&self, event: &Value) -> bool {
        match event {
            Value::Object(fields) => self.matches_fields(fields),
            _ => false,
        }
    }

    /// Matches a record body (the top-level fields of an event).
    pub fn matches_fields(&self, fields: &Map<String, Value>) -> bool {
        let walk = Walk {
            conds: &self.conditions,
        };
        self.alternatives.iter().any(|t| walk.root(t, fields))
    }

    /// The top-level fields a match reads: a record body holding only these (those of
    /// them it has) matches exactly as the whole body does.
    pub(crate) fn top_level_keys(&self) -> impl Iterator<Item = &str> {
        self.alternatives.iter().flat_map(|t| t.child_keys())
    }

    pub(crate) fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    pub(crate) fn alternative_conditions(&self) -> &[Vec<usize>] {
        &self.alternative_conditions
    }

    pub(crate) fn overridden(&self) -> &[String] {
        &self.overridden
    }
}

#[cfg(test)]
mod tests;
