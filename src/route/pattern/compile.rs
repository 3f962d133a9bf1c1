//! Pattern validation and compilation: JSON object → conditions → `$or` alternatives.

use serde_json::{Map, Value};

use super::PatternError;
use super::values::{ValueList, compile_list};

/// Upper bound on the number of alternatives `$or` expansion may produce. EventBridge
/// rejects "too complex" rules without publishing a number; this keeps a pathological
/// pattern (many nested `$or`) from costing memory and time on every record.
pub(crate) const MAX_ALTERNATIVES: usize = 1024;

/// Field names that may not appear anywhere inside a `$or` branch.
const RESERVED_IN_OR: &[&str] = &[
    "exactly",
    "equals-ignore-case",
    "prefix",
    "suffix",
    "anything-but",
    "exists",
    "wildcard",
    "numeric",
    "cidr",
    "=",
    "<",
    "<=",
    ">",
    ">=",
    "regex",
    "not-wildcard",
    "not-equals-ignore-case",
    "date-after",
    "date-on-or-after",
    "date-before",
    "date-on-or-before",
    "in-date-range",
    "ip-address-in-range",
    "ip-address-not-in-range",
];

/// A path and the value list its leaves must satisfy.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) path: Vec<Box<str>>,
    pub(crate) list: ValueList,
}

impl Condition {
    pub(crate) fn path_string(&self) -> String {
        self.path.join(".")
    }
}

/// Result of compiling: every condition once, and each alternative as indices into them.
pub(crate) struct Compiled {
    pub(crate) conditions: Vec<Condition>,
    pub(crate) alternatives: Vec<Vec<usize>>,
    /// Paths that one alternative named twice (through `$or`); the later one replaced the
    /// earlier, as EventBridge does. Reported by lint.
    pub(crate) overridden: Vec<String>,
}

pub(crate) fn compile(value: &Value) -> Result<Compiled, PatternError> {
    let Value::Object(root) = value else {
        return Err(PatternError::invalid(
            "",
            "event pattern must be a JSON object",
        ));
    };
    let mut cx = Cx {
        conditions: Vec::new(),
        overridden: Vec::new(),
    };
    let mut path = Vec::new();
    let mut shown = Vec::new();
    let alternatives = cx.object(root, &mut path, &mut shown, false)?;
    Ok(Compiled {
        conditions: cx.conditions,
        alternatives,
        overridden: cx.overridden,
    })
}

struct Cx {
    conditions: Vec<Condition>,
    overridden: Vec<String>,
}

fn show(shown: &[String]) -> String {
    let mut out = String::new();
    for part in shown {
        if !out.is_empty() && !part.starts_with('[') {
            out.push('.');
        }
        out.push_str(part);
    }
    out
}

impl Cx {
    /// Compiles one object level. `path` is the event path so far; `shown` is the same
    /// path for error messages, which also names `$or` branches.
    fn object(
        &mut self,
        obj: &Map<String, Value>,
        path: &mut Vec<Box<str>>,
        shown: &mut Vec<String>,
        in_or: bool,
    ) -> Result<Vec<Vec<usize>>, PatternError> {
        if obj.is_empty() {
            return Err(PatternError::invalid(
                show(shown),
                "empty objects are not allowed in a pattern",
            ));
        }
        let mut alts: Vec<Vec<usize>> = vec![Vec::new()];
        for (key, value) in obj {
            if key == "$or" {
                let branches = self.or(value, path, shown)?;
                alts = self.cross(&alts, &branches, shown)?;
                continue;
            }
            shown.push(key.clone());
            if in_or && RESERVED_IN_OR.contains(&key.as_str()) {
                return Err(PatternError::invalid(
                    show(shown),
                    format!("{key:?} is a reserved word and cannot be a field name inside $or"),
                ));
            }
            path.push(key.as_str().into());
            match value {
                Value::Array(items) => {
                    let list =
                        compile_list(items).map_err(|m| PatternError::invalid(show(shown), m))?;
                    let idx = self.conditions.len();
                    self.conditions.push(Condition {
                        path: path.clone(),
                        list,
                    });
                    alts = self.cross(&alts, &[vec![idx]], shown)?;
                }
                Value::Object(inner) => {
                    let sub = self.object(inner, path, shown, in_or)?;
                    alts = self.cross(&alts, &sub, shown)?;
                }
                _ => {
                    return Err(PatternError::invalid(
                        show(shown),
                        "match value must be an array or an object",
                    ));
                }
            }
            path.pop();
            shown.pop();
        }
        Ok(alts)
    }

    /// Every combination of an alternative from `a` with one from `b`. `b` comes later in
    /// the pattern, so where both name the same path, `b`'s condition replaces `a`'s (the
    /// rule EventBridge applies to paths repeated through `$or`).
    fn cross(
        &mut self,
        a: &[Vec<usize>],
        b: &[Vec<usize>],
        shown: &[String],
    ) -> Result<Vec<Vec<usize>>, PatternError> {
        if a.len().saturating_mul(b.len()) > MAX_ALTERNATIVES {
            return Err(too_complex(shown));
        }
        let mut out = Vec::with_capacity(a.len() * b.len());
        for x in a {
            for y in b {
                let mut alt = x.clone();
                for &c in y {
                    let path = &self.conditions[c].path;
                    if let Some(pos) = alt.iter().position(|&i| self.conditions[i].path == *path) {
                        alt.remove(pos);
                        let shown_path = self.conditions[c].path_string();
                        if !self.overridden.contains(&shown_path) {
                            self.overridden.push(shown_path);
                        }
                    }
                    alt.push(c);
                }
                out.push(alt);
            }
        }
        Ok(out)
    }

    fn or(
        &mut self,
        value: &Value,
        path: &mut Vec<Box<str>>,
        shown: &mut Vec<String>,
    ) -> Result<Vec<Vec<usize>>, PatternError> {
        shown.push("$or".into());
        let Value::Array(branches) = value else {
            return Err(PatternError::invalid(
                show(shown),
                "$or must be an array of objects",
            ));
        };
        if branches.len() < 2 {
            return Err(PatternError::invalid(
                show(shown),
                "$or needs at least two objects",
            ));
        }
        let mut union = Vec::new();
        for (i, branch) in branches.iter().enumerate() {
            shown.push(format!("[{i}]"));
            let Value::Object(obj) = branch else {
                return Err(PatternError::invalid(
                    show(shown),
                    "$or elements must be objects",
                ));
            };
            union.extend(self.object(obj, path, shown, true)?);
            if union.len() > MAX_ALTERNATIVES {
                return Err(too_complex(shown));
            }
            shown.pop();
        }
        shown.pop();
        Ok(union)
    }
}

fn too_complex(shown: &[String]) -> PatternError {
    PatternError::invalid(
        show(shown),
        format!("pattern is too complex: $or expands to more than {MAX_ALTERNATIVES} alternatives"),
    )
}
