//! Templates for S3 keys and CloudWatch Logs group/stream names, parsed once at config load.
//!
//! Syntax (one language for every output):
//! - `{tag}`: the record's tag; `{tag[N]}`: the N-th part (0-based) of the tag split on `.` and
//!   `-`. Both delimiters are used because FireLens tags are `<container>-firelens-<task id>`
//!   while Fluent Bit tags use dots; note that a container named `my-app` then yields
//!   `{tag[0]}` = `my`. A part that does not exist renders as `-`.
//! - `{uuid}`, `{index}`: per object (S3) values, supplied by the caller at render time;
//!   omitted when the caller supplies none (that is how partitions are rendered).
//! - `{hostname}`: the host name, read once at parse time.
//! - `{ecs_task_id}`: the field `ecs_task_id`, else the last `/` part of `ecs_task_arn`.
//! - `{FIELD}`: any other top-level record field. Strings render as they are, numbers and
//!   booleans as their JSON text. A missing, `null`, object or array field renders as `-`,
//!   so a record without ECS metadata still lands (under a visible `-`) instead of being
//!   dropped; destinations sanitize what they cannot accept.
//! - `%Y %m %d %H %M %S` from the record's time in UTC, `%%` for a literal `%`.
//! - `${VAR}` / `${VAR:-default}`: the environment, read once at parse time.
//! - `{{` and `}}` for literal braces.

use std::fmt::Write as _;

use crate::event::Record;

/// What a missing or non-scalar field renders as.
pub const MISSING: &str = "-";

/// A parse error, with the 1-based character column where it was found.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("template {template:?}, column {column}: {message}")]
pub struct TemplateError {
    pub template: String,
    pub column: usize,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum TimeField {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    Tag,
    TagPart(usize),
    Uuid,
    Index,
    EcsTaskId,
    Field(String),
    Time(TimeField),
}

/// Per-render values that are not derived from the record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dynamic<'a> {
    pub uuid: Option<&'a str>,
    pub index: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        Self::parse_with_env(text, &|name| std::env::var(name).ok())
    }

    fn parse_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Template, TemplateError> {
        let err = |byte: usize, message: String| TemplateError {
            template: text.to_string(),
            column: text[..byte].chars().count() + 1,
            message,
        };
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((pos, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(err(
                        pos,
                        "unmatched `}` (write `}}` for a literal brace)".into(),
                    ));
                }
                '{' => {
                    let start = pos + 1;
                    let end = text[start..]
                        .find('}')
                        .map(|i| start + i)
                        .ok_or_else(|| err(pos, "unclosed `{`".into()))?;
                    let name = &text[start..end];
                    let seg = parse_placeholder(name).map_err(|m| err(pos, m))?;
                    if let Some(seg) = seg {
                        if !lit.is_empty() {
                            segments.push(Segment::Literal(std::mem::take(&mut lit)));
                        }
                        segments.push(seg);
                    } else {
                        // {hostname}: constant for the life of the process.
                        lit.push_str(&gethostname::gethostname().to_string_lossy());
                    }
                    while chars.peek().is_some_and(|&(p, _)| p <= end) {
                        chars.next();
                    }
                }
                '%' => {
                    let field = match chars.next() {
                        Some((_, 'Y')) => TimeField::Year,
                        Some((_, 'm')) => TimeField::Month,
                        Some((_, 'd')) => TimeField::Day,
                        Some((_, 'H')) => TimeField::Hour,
                        Some((_, 'M')) => TimeField::Minute,
                        Some((_, 'S')) => TimeField::Second,
                        Some((_, '%')) => {
                            lit.push('%');
                            continue;
                        }
                        Some((_, other)) => {
                            return Err(err(
                                pos,
                                format!(
                                    "unsupported time field `%{other}` (use %Y %m %d %H %M %S or %%)"
                                ),
                            ));
                        }
                        None => {
                            return Err(err(pos, "`%` at end (write `%%` for a literal %)".into()));
                        }
                    };
                    if !lit.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut lit)));
                    }
                    segments.push(Segment::Time(field));
                }
                '$' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    let start = pos + 2;
                    let end = text[start..]
                        .find('}')
                        .map(|i| start + i)
                        .ok_or_else(|| err(pos, "unclosed `${`".into()))?;
                    let inner = &text[start..end];
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (inner, None),
                    };
                    if name.is_empty() {
                        return Err(err(pos, "empty environment variable name".into()));
                    }
                    match (env(name), default) {
                        (Some(v), _) if !(v.is_empty() && default.is_some()) => lit.push_str(&v),
                        (_, Some(d)) => lit.push_str(d),
                        (Some(v), None) => lit.push_str(&v),
                        (None, None) => {
                            return Err(err(
                                pos,
                                format!("environment variable {name} is not set"),
                            ));
                        }
                    }
                    while chars.peek().is_some_and(|&(p, _)| p <= end) {
                        chars.next();
                    }
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Literal(lit));
        }
        Ok(Template {
            source: text.to_string(),
            segments,
        })
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn has_uuid(&self) -> bool {
        self.segments.contains(&Segment::Uuid)
    }

    pub fn has_index(&self) -> bool {
        self.segments.contains(&Segment::Index)
    }

    /// True when every record renders the same text (no tag, field or time parts).
    pub fn is_static(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Appends the rendering for `record` to `out`; `{uuid}`/`{index}` come from `dynamic`
    /// and are left out when it has none. Allocates nothing beyond `out`'s growth.
    pub fn render(&self, record: &Record, dynamic: Dynamic<'_>, out: &mut String) {
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Tag => out.push_str(&record.tag),
                Segment::TagPart(n) => {
                    out.push_str(record.tag.split(['.', '-']).nth(*n).unwrap_or(MISSING))
                }
                Segment::Uuid => {
                    if let Some(u) = dynamic.uuid {
                        out.push_str(u);
                    }
                }
                Segment::Index => {
                    if let Some(i) = dynamic.index {
                        let _ = write!(out, "{i}");
                    }
                }
                Segment::EcsTaskId => render_task_id(record, out),
                Segment::Field(name) => render_value(record.fields.get(name.as_str()), out),
                Segment::Time(f) => render_time(record.time_ns, *f, out),
            }
        }
    }

    /// Convenience for tests and cold paths.
    pub fn render_to_string(&self, record: &Record, dynamic: Dynamic<'_>) -> String {
        let mut s = String::new();
        self.render(record, dynamic, &mut s);
        s
    }
}

/// `Ok(None)` means `{hostname}` (folded into the literal text by the caller).
fn parse_placeholder(name: &str) -> Result<Option<Segment>, String> {
    let seg = match name {
        "" => return Err("empty `{}`".into()),
        "tag" => Segment::Tag,
        "uuid" => Segment::Uuid,
        "index" => Segment::Index,
        "hostname" => return Ok(None),
        "ecs_task_id" => Segment::EcsTaskId,
        _ => {
            if let Some(rest) = name.strip_prefix("tag[") {
                let n = rest
                    .strip_suffix(']')
                    .and_then(|d| d.parse::<usize>().ok())
                    .ok_or_else(|| format!("`{{{name}}}`: expected {{tag[N]}} with N a number"))?;
                Segment::TagPart(n)
            } else if name.contains(['{', '%', '$']) {
                return Err(format!("`{{{name}}}`: invalid field name"));
            } else {
                Segment::Field(name.to_string())
            }
        }
    };
    Ok(Some(seg))
}

fn render_value(v: Option<&serde_json::Value>, out: &mut String) {
    use serde_json::Value;
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Number(n)) => {
            let _ = write!(out, "{n}");
        }
        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        _ => out.push_str(MISSING),
    }
}

fn render_task_id(record: &Record, out: &mut String) {
    match record.fields.get("ecs_task_id") {
        Some(serde_json::Value::String(s)) => out.push_str(s),
        _ => match record.fields.get("ecs_task_arn") {
            Some(serde_json::Value::String(arn)) => {
                out.push_str(arn.rsplit('/').next().unwrap_or(MISSING))
            }
            _ => out.push_str(MISSING),
        },
    }
}

fn render_time(time_ns: i64, field: TimeField, out: &mut String) {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp(
        time_ns.div_euclid(1_000_000_000),
        time_ns.rem_euclid(1_000_000_000) as u32,
    )
    .unwrap_or_default();
    let _ = match field {
        TimeField::Year => write!(out, "{:04}", t.year()),
        TimeField::Month => write!(out, "{:02}", t.month()),
        TimeField::Day => write!(out, "{:02}", t.day()),
        TimeField::Hour => write!(out, "{:02}", t.hour()),
        TimeField::Minute => write!(out, "{:02}", t.minute()),
        TimeField::Second => write!(out, "{:02}", t.second()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(tag: &str, fields: serde_json::Value) -> Record {
        let serde_json::Value::Object(m) = fields else {
            panic!("object")
        };
        // 2026-11-23T07:08:09.5Z
        Record::new(tag, 1_795_417_689_500_000_000, m)
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "CLUSTER" => Some("prod".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse(t: &str) -> Result<Template, TemplateError> {
        Template::parse_with_env(t, &env)
    }

    #[test]
    fn renders_every_placeholder() {
        let t = parse("${CLUSTER}/{tag}/{tag[0]}/{tag[2]}/{tag[9]}/%Y/%m/%d/%H/%M/%S/{ecs_cluster}-{n}-{b}-{missing}-{obj}/{uuid}{index}.json")
            .unwrap();
        let r = rec(
            "app-firelens-abc.def",
            json!({"ecs_cluster": "c1", "n": 42, "b": true, "obj": {"a": 1}}),
        );
        let s = t.render_to_string(
            &r,
            Dynamic {
                uuid: Some("U"),
                index: Some(7),
            },
        );
        assert_eq!(
            s,
            "prod/app-firelens-abc.def/app/abc/-/2026/11/23/07/08/09/c1-42-true----/U7.json"
        );
        let p = t.render_to_string(&r, Dynamic::default());
        assert_eq!(
            p,
            "prod/app-firelens-abc.def/app/abc/-/2026/11/23/07/08/09/c1-42-true----/.json"
        );
        assert!(t.has_uuid() && t.has_index() && !t.is_static());
    }

    #[test]
    fn ecs_task_id_from_arn_or_field() {
        let t = parse("/ecs/{ecs_cluster}/{container_name}:{ecs_task_id}").unwrap();
        let r = rec(
            "x",
            json!({"ecs_cluster": "mycluster", "container_name": "/ecs-demo-1",
                   "ecs_task_arn": "arn:aws:ecs:us-east-2:0123:task/mycluster/3de392df"}),
        );
        assert_eq!(
            t.render_to_string(&r, Dynamic::default()),
            "/ecs/mycluster//ecs-demo-1:3de392df"
        );
        let r = rec("x", json!({"ecs_task_id": "given"}));
        assert_eq!(t.render_to_string(&r, Dynamic::default()), "/ecs/-/-:given");
        let r = rec("x", json!({}));
        assert_eq!(t.render_to_string(&r, Dynamic::default()), "/ecs/-/-:-");
    }

    #[test]
    fn env_defaults_and_escapes() {
        let t = parse("${NOPE:-dflt}/${EMPTY:-e}/${EMPTY}x/{{literal}}/100%%").unwrap();
        assert!(t.is_static());
        assert_eq!(
            t.render_to_string(&rec("t", json!({})), Dynamic::default()),
            "dflt/e/x/{literal}/100%"
        );
    }

    #[test]
    fn errors_name_the_column() {
        let e = parse("abc/{tag").unwrap_err();
        assert_eq!(e.column, 5);
        assert!(e.message.contains("unclosed"));
        let e = parse("ab%q").unwrap_err();
        assert_eq!(e.column, 3);
        assert!(e.to_string().contains("column 3"), "{e}");
        assert_eq!(parse("x/${NOPE}").unwrap_err().column, 3);
        assert_eq!(parse("é}").unwrap_err().column, 2);
        assert!(parse("{tag[x]}").is_err());
        assert!(parse("{}").is_err());
        assert!(parse("50%").is_err());
    }

    #[test]
    fn time_before_epoch_and_hostname() {
        let t = parse("%Y-%m-%d %H:%M:%S").unwrap();
        let r = Record::new("t", -1, Default::default());
        assert_eq!(
            t.render_to_string(&r, Dynamic::default()),
            "1969-12-31 23:59:59"
        );
        let h = parse("{hostname}").unwrap();
        assert!(h.is_static());
        assert!(!h.render_to_string(&r, Dynamic::default()).is_empty());
    }
}
