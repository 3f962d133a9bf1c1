//! Value lists: the array at the end of a pattern path, compiled into operands ready to
//! test one event leaf without parsing or allocating.

use serde_json::{Map, Value};

use super::ip::{Cidr, IpLit, parse_ip};
use super::number::{ExactNumber, LazyNumber, comparable};
use super::text::{Wildcard, eq_ignore_case, fold, prefix_ignore_case, suffix_ignore_case};

/// An exact string; IP literals also remember their address so other spellings match.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExactString {
    pub(crate) text: Box<str>,
    ip: Option<IpLit>,
}

impl ExactString {
    fn matches(&self, s: &str) -> bool {
        if *self.text == *s {
            return true;
        }
        match self.ip {
            Some(ip) => parse_ip(s) == Some(ip),
            None => false,
        }
    }
}

/// One side of a numeric range; `None` bounds are open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bound {
    pub(crate) value: f64,
    pub(crate) inclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Range {
    pub(crate) low: Option<Bound>,
    pub(crate) high: Option<Bound>,
}

impl Range {
    fn contains(&self, x: f64) -> bool {
        let above = match self.low {
            None => true,
            Some(b) if b.inclusive => x >= b.value,
            Some(b) => x > b.value,
        };
        above
            && match self.high {
                None => true,
                Some(b) if b.inclusive => x <= b.value,
                Some(b) => x < b.value,
            }
    }

    /// True when no finite double lies in the range, e.g. `[">", 1.7976931348623157e308]`.
    pub(crate) fn is_empty(&self) -> bool {
        let lowest = match self.low {
            None => f64::MIN,
            Some(b) if b.inclusive => b.value,
            Some(b) => b.value.next_up(),
        };
        let highest = match self.high {
            None => f64::MAX,
            Some(b) if b.inclusive => b.value,
            Some(b) => b.value.next_down(),
        };
        !(lowest.is_finite() && highest.is_finite() && lowest <= highest)
    }
}

/// The string operators that `anything-but` can negate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StringTest {
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Operand already lowercased.
    EqualsIgnoreCase(Box<str>),
    Wildcard(Wildcard),
}

impl StringTest {
    fn matches(&self, s: &str) -> bool {
        match self {
            StringTest::Prefix(p) => s.starts_with(&**p),
            StringTest::Suffix(p) => s.ends_with(&**p),
            StringTest::EqualsIgnoreCase(p) => eq_ignore_case(s, p),
            StringTest::Wildcard(w) => w.matches(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AnythingBut {
    Strings(Vec<Box<str>>),
    Numbers(Vec<f64>),
    StringTests(Vec<StringTest>),
}

impl AnythingBut {
    /// True when the leaf is not excluded. Only operands of the leaf's own kind exclude it.
    fn allows(&self, leaf: &Value, lazy: &mut LazyNumber) -> bool {
        match (self, leaf) {
            (AnythingBut::Strings(list), Value::String(s)) => !list.iter().any(|x| **x == **s),
            (AnythingBut::StringTests(tests), Value::String(s)) => {
                !tests.iter().any(|t| t.matches(s))
            }
            (AnythingBut::Numbers(list), Value::Number(n)) => match lazy.get(n.as_str()) {
                Some(v) => !list.contains(&v),
                None => true,
            },
            _ => true,
        }
    }
}

/// A match expression other than plain values and `exists`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Operands of the `equals-ignore-case` forms are stored lowercased.
    PrefixIgnoreCase(Box<str>),
    SuffixIgnoreCase(Box<str>),
    EqualsIgnoreCase(Box<str>),
    Wildcard(Wildcard),
    Numeric(Range),
    Cidr(Cidr),
    AnythingBut(AnythingBut),
}

/// A compiled value list. Entries are OR'ed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ValueList {
    pub(crate) strings: Vec<ExactString>,
    pub(crate) numbers: Vec<ExactNumber>,
    pub(crate) match_true: bool,
    pub(crate) match_false: bool,
    pub(crate) match_null: bool,
    pub(crate) exists_true: bool,
    pub(crate) exists_false: bool,
    pub(crate) ops: Vec<Op>,
}

impl ValueList {
    /// True when some entry other than `{"exists": false}` is present, i.e. a leaf can
    /// satisfy the list.
    pub(crate) fn has_positive(&self) -> bool {
        self.exists_true
            || self.match_true
            || self.match_false
            || self.match_null
            || !self.strings.is_empty()
            || !self.numbers.is_empty()
            || !self.ops.is_empty()
    }

    /// Does this one leaf (a scalar) satisfy some entry?
    pub(crate) fn matches_leaf(&self, leaf: &Value) -> bool {
        if self.exists_true {
            return true;
        }
        match leaf {
            Value::String(s) => {
                self.strings.iter().any(|x| x.matches(s))
                    || self.ops.iter().any(|op| op_on_string(op, s))
            }
            Value::Number(n) => {
                let lit = n.as_str();
                let mut lazy = LazyNumber::default();
                self.numbers.iter().any(|x| x.matches(lit, &mut lazy))
                    || self.ops.iter().any(|op| match op {
                        Op::Numeric(r) => lazy.get(lit).is_some_and(|v| r.contains(v)),
                        Op::AnythingBut(a) => a.allows(leaf, &mut lazy),
                        _ => false,
                    })
            }
            Value::Bool(b) => {
                (if *b {
                    self.match_true
                } else {
                    self.match_false
                }) || self.any_anything_but()
            }
            Value::Null => self.match_null || self.any_anything_but(),
            Value::Array(_) | Value::Object(_) => false,
        }
    }

    /// Booleans and null are never excluded by any `anything-but` operand.
    fn any_anything_but(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::AnythingBut(_)))
    }
}

fn op_on_string(op: &Op, s: &str) -> bool {
    match op {
        Op::Prefix(p) => s.starts_with(&**p),
        Op::Suffix(p) => s.ends_with(&**p),
        Op::PrefixIgnoreCase(p) => prefix_ignore_case(s, p),
        Op::SuffixIgnoreCase(p) => suffix_ignore_case(s, p),
        Op::EqualsIgnoreCase(p) => eq_ignore_case(s, p),
        Op::Wildcard(w) => w.matches(s),
        Op::Cidr(c) => c.contains(s),
        Op::AnythingBut(a) => a.allows_string(s),
        Op::Numeric(_) => false,
    }
}

impl AnythingBut {
    fn allows_string(&self, s: &str) -> bool {
        match self {
            AnythingBut::Strings(list) => !list.iter().any(|x| **x == *s),
            AnythingBut::StringTests(tests) => !tests.iter().any(|t| t.matches(s)),
            AnythingBut::Numbers(_) => true,
        }
    }
}

/// Compiles a value list. Errors are messages; the caller adds the path.
pub(crate) fn compile_list(items: &[Value]) -> Result<ValueList, String> {
    if items.is_empty() {
        return Err("value list must not be empty".into());
    }
    let mut list = ValueList::default();
    for item in items {
        match item {
            Value::String(s) => list.strings.push(ExactString {
                text: s.as_str().into(),
                ip: parse_ip(s),
            }),
            Value::Number(n) => list.numbers.push(ExactNumber::new(n.as_str())),
            Value::Bool(true) => list.match_true = true,
            Value::Bool(false) => list.match_false = true,
            Value::Null => list.match_null = true,
            Value::Array(_) => return Err("nested arrays are not allowed in a value list".into()),
            Value::Object(expr) => compile_expr(expr, &mut list)?,
        }
    }
    Ok(list)
}

fn single_key(expr: &Map<String, Value>) -> Result<(&str, &Value), String> {
    let mut it = expr.iter();
    match (it.next(), it.next()) {
        (Some((k, v)), None) => Ok((k.as_str(), v)),
        (None, _) => Err("empty match expression {}".into()),
        (Some(_), Some(_)) => Err(format!(
            "match expression must have exactly one key, found {}",
            expr.keys()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn compile_expr(expr: &Map<String, Value>, list: &mut ValueList) -> Result<(), String> {
    let (key, operand) = single_key(expr)?;
    let op = match key {
        "prefix" | "suffix" => {
            let prefix = key == "prefix";
            match operand {
                Value::String(s) if prefix => Op::Prefix(s.as_str().into()),
                Value::String(s) => Op::Suffix(s.as_str().into()),
                Value::Object(inner) => {
                    let (ik, iv) = single_key(inner).map_err(|e| format!("{key}: {e}"))?;
                    match (ik, iv) {
                        ("equals-ignore-case", Value::String(s)) if prefix => {
                            Op::PrefixIgnoreCase(fold(s))
                        }
                        ("equals-ignore-case", Value::String(s)) => Op::SuffixIgnoreCase(fold(s)),
                        ("equals-ignore-case", _) => {
                            return Err(format!(
                                "{key}: equals-ignore-case match must be a string"
                            ));
                        }
                        (other, _) => {
                            return Err(format!(
                                "{key} match takes a string or {{\"equals-ignore-case\": <string>}}, not {other:?}"
                            ));
                        }
                    }
                }
                _ => return Err(format!("{key} match must be a string")),
            }
        }
        "equals-ignore-case" => match operand {
            Value::String(s) => Op::EqualsIgnoreCase(fold(s)),
            _ => return Err("equals-ignore-case match must be a string".into()),
        },
        "wildcard" => match operand {
            Value::String(s) => Op::Wildcard(Wildcard::parse(s)?),
            _ => return Err("wildcard match must be a string".into()),
        },
        "exists" => {
            match operand {
                Value::Bool(true) => list.exists_true = true,
                Value::Bool(false) => list.exists_false = true,
                _ => return Err("exists match must be true or false".into()),
            }
            return Ok(());
        }
        "cidr" => match operand {
            Value::String(s) => Op::Cidr(Cidr::parse(s)?),
            _ => return Err("cidr match must be a string".into()),
        },
        "numeric" => Op::Numeric(compile_numeric(operand)?),
        "anything-but" => Op::AnythingBut(compile_anything_but(operand)?),
        other => return Err(format!("unrecognized match type {other:?}")),
    };
    list.ops.push(op);
    Ok(())
}

fn bound_value(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => comparable(n.as_str()).ok_or_else(|| {
            format!(
                "numeric bound {} cannot be compared exactly (it is not the shortest form of a double)",
                n.as_str()
            )
        }),
        _ => Err("numeric bounds must be JSON numbers".into()),
    }
}

fn compile_numeric(operand: &Value) -> Result<Range, String> {
    let Value::Array(terms) = operand else {
        return Err("numeric match must be an array".into());
    };
    let op = |v: &Value| v.as_str().map(str::to_owned);
    match terms.as_slice() {
        [o, n] => {
            let x = bound_value(n)?;
            let b = |inclusive| {
                Some(Bound {
                    value: x,
                    inclusive,
                })
            };
            match op(o).as_deref() {
                Some("=") => Ok(Range {
                    low: b(true),
                    high: b(true),
                }),
                Some("<") => Ok(Range {
                    low: None,
                    high: b(false),
                }),
                Some("<=") => Ok(Range {
                    low: None,
                    high: b(true),
                }),
                Some(">") => Ok(Range {
                    low: b(false),
                    high: None,
                }),
                Some(">=") => Ok(Range {
                    low: b(true),
                    high: None,
                }),
                _ => Err("numeric operator must be one of =, <, <=, >, >=".into()),
            }
        }
        [o1, n1, o2, n2] => {
            let low_incl = match op(o1).as_deref() {
                Some(">") => false,
                Some(">=") => true,
                _ => return Err("numeric range must start with \">\" or \">=\"".into()),
            };
            let high_incl = match op(o2).as_deref() {
                Some("<") => false,
                Some("<=") => true,
                _ => return Err("numeric range must end with \"<\" or \"<=\"".into()),
            };
            let (lo, hi) = (bound_value(n1)?, bound_value(n2)?);
            if lo >= hi {
                return Err("numeric range needs bottom < top".into());
            }
            Ok(Range {
                low: Some(Bound {
                    value: lo,
                    inclusive: low_incl,
                }),
                high: Some(Bound {
                    value: hi,
                    inclusive: high_incl,
                }),
            })
        }
        _ => Err(
            "numeric match must be [op, number] or [\">\"|\">=\", low, \"<\"|\"<=\", high]".into(),
        ),
    }
}

fn compile_anything_but(operand: &Value) -> Result<AnythingBut, String> {
    match operand {
        Value::String(s) => Ok(AnythingBut::Strings(vec![s.as_str().into()])),
        Value::Number(n) => Ok(AnythingBut::Numbers(vec![anything_but_number(n.as_str())?])),
        Value::Array(items) => {
            if items.is_empty() {
                return Err("anything-but list must not be empty".into());
            }
            if items.iter().all(Value::is_string) {
                Ok(AnythingBut::Strings(
                    items.iter().filter_map(Value::as_str).map(Into::into).collect(),
                ))
            } else if items.iter().all(Value::is_number) {
                let nums = items
                    .iter()
                    .map(|v| match v {
                        Value::Number(n) => anything_but_number(n.as_str()),
                        _ => Err(String::new()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(AnythingBut::Numbers(nums))
            } else {
                Err("anything-but list must contain only strings or only numbers".into())
            }
        }
        Value::Object(inner) => {
            let (key, v) = single_key(inner).map_err(|e| format!("anything-but: {e}"))?;
            let operands: Vec<&str> = match v {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
                    items.iter().filter_map(Value::as_str).collect()
                }
                _ => {
                    return Err(format!(
                        "anything-but {key:?} takes a string or a non-empty array of strings"
                    ));
                }
            };
            let tests = operands
                .into_iter()
                .map(|s| match key {
                    "prefix" | "suffix" if s.is_empty() => {
                        Err(format!("anything-but {key:?} must not be an empty string"))
                    }
                    "prefix" => Ok(StringTest::Prefix(s.into())),
                    "suffix" => Ok(StringTest::Suffix(s.into())),
                    "equals-ignore-case" => Ok(StringTest::EqualsIgnoreCase(fold(s))),
                    "wildcard" => Wildcard::parse(s).map(StringTest::Wildcard),
                    other => Err(format!(
                        "anything-but cannot be combined with {other:?} (only prefix, suffix, equals-ignore-case, wildcard)"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AnythingBut::StringTests(tests))
        }
        Value::Bool(_) | Value::Null => {
            Err("anything-but takes a string, a number, a list, or a prefix/suffix/equals-ignore-case/wildcard object".into())
        }
    }
}

fn anything_but_number(lit: &str) -> Result<f64, String> {
    comparable(lit).ok_or_else(|| {
        format!("anything-but number {lit} cannot be compared exactly (it is not the shortest form of a double)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(v: Value) -> Result<ValueList, String> {
        match v {
            Value::Array(a) => compile_list(&a),
            _ => Err("not a list".into()),
        }
    }

    #[test]
    fn anything_but_kinds() {
        let l = list(json!([{"anything-but": "foo"}])).unwrap();
        assert!(l.matches_leaf(&json!(5)));
        assert!(l.matches_leaf(&json!(null)));
        assert!(l.matches_leaf(&json!(false)));
        assert!(!l.matches_leaf(&json!("foo")));
        let l = list(json!([{"anything-but": 127}])).unwrap();
        assert!(l.matches_leaf(&json!("127")));
        assert!(!l.matches_leaf(&serde_json::from_str::<Value>("127.0").unwrap()));
        let l = list(json!([{"anything-but": {"prefix": "q"}}])).unwrap();
        assert!(l.matches_leaf(&json!(0)));
        assert!(!l.matches_leaf(&json!("quux")));
    }

    #[test]
    fn numeric_ranges() {
        let l = list(json!([{"numeric": [">", 0, "<=", 5]}])).unwrap();
        assert!(l.matches_leaf(&json!(5)));
        assert!(!l.matches_leaf(&json!(0)));
        assert!(!l.matches_leaf(&json!("3")));
        let bad = |v: Value| list(v).unwrap_err();
        assert_eq!(
            bad(json!([{"numeric": [">=", 5, "<=", 5]}])),
            "numeric range needs bottom < top"
        );
        assert!(bad(json!([{"numeric": ["=", 5, "<", 6]}])).contains("range must start"));
        assert!(bad(json!([{"numeric": [">", "5"]}])).contains("JSON numbers"));
        let r = Range {
            low: Some(Bound {
                value: f64::MAX,
                inclusive: false,
            }),
            high: None,
        };
        assert!(r.is_empty());
        let r = Range {
            low: Some(Bound {
                value: 1.0,
                inclusive: false,
            }),
            high: Some(Bound {
                value: 1.0f64.next_up(),
                inclusive: false,
            }),
        };
        assert!(r.is_empty());
        let r = Range {
            low: Some(Bound {
                value: 1.0,
                inclusive: true,
            }),
            high: Some(Bound {
                value: 1.0f64.next_up(),
                inclusive: false,
            }),
        };
        assert!(!r.is_empty());
    }
}
