//! Templates for S3 keys and CloudWatch Logs group/stream names, parsed once at config load.
//!
//! Syntax (one language for every output):
//! - `{tag}`: the record's tag; `{tag[N]}`: the N-th part (0-based) of the tag split on `.` and
//!   `-`. Both delimiters are used because FireLens tags are `<container>-firelens-<task id>`
//!   while Fluent Bit tags use dots; note that a container named `my-app` then yields
//!   `{tag[0]}` = `my`. A part that does not exist, or is empty (`a..b`), renders as `-`.
//! - `{uuid}`, `{index}`: per object (S3) values, supplied by the caller at render time;
//!   omitted when the caller supplies none (that is how partitions are rendered).
//! - `{hostname}`: the host name, read once at parse time.
//! - `{ecs_task_id}`: the field `ecs_task_id`, else the last `/` part of `ecs_task_arn`.
//! - `{FIELD}`: any other top-level record field. Strings render as they are, numbers and
//!   booleans as their JSON text. A missing, `null`, empty, object or array field renders as
//!   `-`, so a record without ECS metadata still lands (under a visible `-`) instead of being
//!   dropped. A value that is literally `-` is escaped by every encoding except
//!   [`ValueEncoding::Verbatim`] (`%2D`, or `#2D` in log groups), so `-` always means "no value".
//! - `%Y %m %d %H %M %S` from the record's time in UTC, `%%` for a literal `%`.
//! - `${VAR}` / `${VAR:-default}`: the environment, read once at parse time.
//! - `{{` and `}}` for literal braces.
//!
//! Values from record data (`{tag}`, `{tag[N]}`, `{ecs_task_id}`, `{FIELD}`) are written
//! through the destination's [`ValueEncoding`]; text from the config (literals, `${VAR}`,
//! `{hostname}`) is written as it is, so a `/` the user wrote stays a path separator while a
//! `/` inside a field value cannot create one. Every encoding is injective: two different
//! values never render the same name.

use std::fmt::Write as _;

use crate::event::{FieldRef, Record};

/// What a missing, empty or non-scalar value renders as.
pub(crate) const MISSING: &str = "-";

/// How values taken from record data are written into a rendered name, per destination.
/// Literal template text is never encoded. Each encoding escapes its own escape character,
/// so it is injective (different values never collide) and reversible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ValueEncoding {
    /// Values as they are.
    #[default]
    Verbatim,
    /// S3 object keys: `%`, `/`, `\` and control characters are percent-encoded (`%25`,
    /// `%2F`, `%5C`, `%0A`…), so a value cannot add or climb path segments; a value that is
    /// exactly `-` is `%2D`. After rendering,
    /// any `.` or `..` path segment of the key is written `%2E` / `%2E%2E`, because tools
    /// that copy a bucket to disk (`aws s3 sync`) would resolve them.
    S3Key,
    /// CloudWatch Logs group names (`[\.\-_/#A-Za-z0-9]+`, CreateLogGroup): every byte of
    /// the value's UTF-8 outside `[._\-A-Za-z0-9]` is written `#XX` (hex, upper case), a
    /// value that is exactly `-` is `#2D`;
    /// `#` itself is `#23` and `/` is `#2F` (so `{g}/{h}` with `a/b`,`c` and `a`,`b/c`
    /// are two groups). `%` is not allowed in group names, hence `#`.
    LogGroup,
    /// CloudWatch Logs stream names (no `:` or `*`, CreateLogStream): `%`, `:` and `*` are
    /// percent-encoded (`%25`, `%3A`, `%2A`), a value that is exactly `-` is `%2D`;
    /// everything else is kept.
    LogStream,
}

impl ValueEncoding {
    /// Appends `value` to `out` encoded for this destination; an empty value renders as
    /// [`MISSING`] so it never leaves an empty path segment (`a//b`) or an empty name.
    pub(crate) fn push(self, value: &str, out: &mut String) {
        if value.is_empty() {
            out.push_str(MISSING);
            return;
        }
        // A value that is literally `-` is escaped so that only a missing value renders as
        // `-`: otherwise `"-"`, `null` and `""` would all share one name.
        if value == MISSING {
            out.push_str(match self {
                ValueEncoding::Verbatim => MISSING,
                ValueEncoding::S3Key | ValueEncoding::LogStream => "%2D",
                ValueEncoding::LogGroup => "#2D",
            });
            return;
        }
        match self {
            ValueEncoding::Verbatim => out.push_str(value),
            ValueEncoding::S3Key => {
                for c in value.chars() {
                    if matches!(c, '%' | '/' | '\\') || c.is_ascii_control() {
                        let _ = write!(out, "%{:02X}", c as u32);
                    } else {
                        out.push(c);
                    }
                }
            }
            ValueEncoding::LogGroup => {
                for b in value.bytes() {
                    if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                        out.push(b as char);
                    } else {
                        let _ = write!(out, "#{b:02X}");
                    }
                }
            }
            ValueEncoding::LogStream => {
                for c in value.chars() {
                    if matches!(c, '%' | ':' | '*') {
                        let _ = write!(out, "%{:02X}", c as u32);
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }
}

/// Rewrites every `.` or `..` path segment of an S3 key as `%2E` / `%2E%2E`.
fn encode_dot_segments(key: &str) -> Option<String> {
    if !key.split('/').any(|seg| seg == "." || seg == "..") {
        return None;
    }
    let parts: Vec<&str> = key
        .split('/')
        .map(|seg| match seg {
            "." => "%2E",
            ".." => "%2E%2E",
            other => other,
        })
        .collect();
    Some(parts.join("/"))
}

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
pub(crate) struct Dynamic<'a> {
    pub uuid: Option<&'a str>,
    pub index: Option<u64>,
    /// Write `{uuid}` and `{index}` as these placeholders instead (for `firelane route`,
    /// which shows where a record would go without creating an object).
    pub preview: bool,
}

impl Dynamic<'_> {
    /// Renders `{uuid}` and `{index}` as the placeholders themselves.
    pub(crate) fn preview() -> Dynamic<'static> {
        Dynamic {
            uuid: None,
            index: None,
            preview: true,
        }
    }
}

/// A parsed template; [`Template::render`] writes the name for one record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Template {
    source: String,
    segments: Vec<Segment>,
    encoding: ValueEncoding,
}

impl Template {
    /// Parses `text` (see the module docs); values are written [`ValueEncoding::Verbatim`]
    /// until [`Template::with_encoding`] says otherwise.
    pub(crate) fn parse(text: &str) -> Result<Template, TemplateError> {
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
            encoding: ValueEncoding::Verbatim,
        })
    }

    /// The same template, writing record values with `encoding`.
    pub(crate) fn with_encoding(mut self, encoding: ValueEncoding) -> Template {
        self.encoding = encoding;
        self
    }

    /// The text that comes from the config rather than from records (literals, `${VAR}`,
    /// `{hostname}`), for destinations that validate it once at start-up.
    pub(crate) fn literals(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            _ => None,
        })
    }

    pub(crate) fn has_uuid(&self) -> bool {
        self.segments.contains(&Segment::Uuid)
    }

    pub(crate) fn has_index(&self) -> bool {
        self.segments.contains(&Segment::Index)
    }

    /// The most bytes `{uuid}` (36) and `{index}` (20, a `u64`) can add to a rendering made
    /// without them: the rendering with [`Dynamic::default`] plus this is an upper bound on
    /// every object's name.
    pub(crate) fn dynamic_max_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Uuid => uuid::fmt::Hyphenated::LENGTH,
                Segment::Index => 20,
                _ => 0,
            })
            .sum()
    }

    /// The literal text the template starts with (`/ecs/` of `/ecs/{ecs_cluster}`), or `""`
    /// when it starts with a placeholder.
    pub(crate) fn leading_literal(&self) -> &str {
        match self.segments.first() {
            Some(Segment::Literal(l)) => l,
            _ => "",
        }
    }

    /// The literal text the template ends with (`.json` of `k/{tag}-{uuid}.json`), or `""`
    /// when it ends with a placeholder.
    pub(crate) fn trailing_literal(&self) -> &str {
        match self.segments.last() {
            Some(Segment::Literal(l)) => l,
            _ => "",
        }
    }

    /// True when every record renders the same text (no tag, field or time parts).
    #[cfg(test)]
    pub(crate) fn is_static(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Appends the rendering for `record` to `out`; `{uuid}`/`{index}` come from `dynamic`
    /// and are left out when it has none. Record values go through the template's
    /// [`ValueEncoding`]. Allocates nothing beyond `out`'s growth, except for number fields
    /// and the rare S3 key with a `.`/`..` segment.
    pub(crate) fn render(&self, record: &Record, dynamic: Dynamic<'_>, out: &mut String) {
        let start = out.len();
        let enc = self.encoding;
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => out.push_str(s),
                Segment::Tag => enc.push(&record.tag, out),
                Segment::TagPart(n) => {
                    enc.push(record.tag.split(['.', '-']).nth(*n).unwrap_or(""), out)
                }
                Segment::Uuid if dynamic.preview => out.push_str("{uuid}"),
                Segment::Uuid => {
                    if let Some(u) = dynamic.uuid {
                        out.push_str(u);
                    }
                }
                Segment::Index if dynamic.preview => out.push_str("{index}"),
                Segment::Index => {
                    if let Some(i) = dynamic.index {
                        let _ = write!(out, "{i}");
                    }
                }
                Segment::EcsTaskId => render_task_id(record, enc, out),
                Segment::Field(name) => render_value(record.get(name.as_str()), enc, out),
                Segment::Time(f) => render_time(record.time_ns, *f, out),
            }
        }
        if enc == ValueEncoding::S3Key
            && let Some(fixed) = encode_dot_segments(&out[start..])
        {
            out.truncate(start);
            out.push_str(&fixed);
        }
    }

    /// Convenience for tests and cold paths.
    pub(crate) fn render_to_string(&self, record: &Record, dynamic: Dynamic<'_>) -> String {
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

fn render_value(v: Option<FieldRef<'_>>, enc: ValueEncoding, out: &mut String) {
    use serde_json::Value;
    // Strings (the usual key parts) are read in place; other values are decoded.
    if let Some(s) = v.and_then(|v| v.as_str()) {
        return enc.push(s, out);
    }
    match v.map(|v| v.to_value()).as_deref() {
        Some(Value::String(s)) => enc.push(s, out),
        Some(Value::Number(n)) => enc.push(&n.to_string(), out),
        Some(Value::Bool(b)) => enc.push(if *b { "true" } else { "false" }, out),
        _ => out.push_str(MISSING),
    }
}

fn render_task_id(record: &Record, enc: ValueEncoding, out: &mut String) {
    match record.get("ecs_task_id").and_then(|v| v.as_str()) {
        Some(s) => enc.push(s, out),
        _ => match record.get("ecs_task_arn").and_then(|v| v.as_str()) {
            Some(arn) => enc.push(arn.rsplit('/').next().unwrap_or(""), out),
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
                preview: false,
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
        assert_eq!(t.dynamic_max_len(), 36 + 20);
        assert_eq!(t.trailing_literal(), ".json");
        assert_eq!(t.leading_literal(), "prod/");
        assert_eq!(parse("a/{tag}").unwrap().trailing_literal(), "");
        assert_eq!(parse("{uuid}/{uuid}").unwrap().dynamic_max_len(), 72);
        assert_eq!(u64::MAX.to_string().len(), 20);
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

    fn encoded(t: &str, enc: ValueEncoding, r: &Record) -> String {
        parse(t)
            .unwrap()
            .with_encoding(enc)
            .render_to_string(r, Dynamic::default())
    }

    #[test]
    fn empty_and_missing_values_render_as_dash() {
        let r = rec(
            "a..b",
            json!({"empty": "", "ecs_task_arn": "arn:aws:ecs:us-east-1:1:task/c/"}),
        );
        for enc in [
            ValueEncoding::Verbatim,
            ValueEncoding::S3Key,
            ValueEncoding::LogGroup,
            ValueEncoding::LogStream,
        ] {
            // Tag part 1 of `a..b` is empty, part 7 does not exist.
            assert_eq!(
                encoded(
                    "k/{tag[0]}/{tag[1]}/{tag[2]}/{tag[7]}/{empty}/{nope}/{ecs_task_id}",
                    enc,
                    &r
                ),
                "k/a/-/b/-/-/-/-",
                "{enc:?}"
            );
        }
    }

    #[test]
    fn s3_values_cannot_make_path_segments() {
        let r = rec(
            "a..b",
            json!({"up": "../../etc", "dot": ".", "dots": "..", "slash": "a/b",
                   "pct": "a%2Fb", "ctl": "x\ny\\z", "sp": "a b+c", "n": 1.5}),
        );
        let t = "logs/{tag}/{up}/{dot}/{dots}/{slash}/{pct}/{ctl}/{sp}/{n}/{dot}{dot}/./x";
        assert_eq!(
            encoded(t, ValueEncoding::S3Key, &r),
            "logs/a..b/..%2F..%2Fetc/%2E/%2E%2E/a%2Fb/a%252Fb/x%0Ay%5Cz/a b+c/1.5/%2E%2E/%2E/x"
        );
        // The config's own `/` stays a separator; the value's `/` is inside one segment.
        assert_eq!(encoded(t, ValueEncoding::S3Key, &r).split('/').count(), 13);
        assert_eq!(encoded("{dots}", ValueEncoding::S3Key, &r), "%2E%2E");
        assert_eq!(encoded("{up}", ValueEncoding::Verbatim, &r), "../../etc");
    }

    #[test]
    fn cloudwatch_encodings_are_injective_and_valid() {
        let values = [
            "my cluster",
            "my_cluster",
            "my#cluster",
            "my#20cluster",
            "my:cluster",
            "my*cluster",
            "my%cluster",
            "my%3Acluster",
            "é",
            "#C3#A9",
            "a/b",
            "-",
            "x.y",
        ];
        let render = |enc: ValueEncoding, v: &str| {
            let r = rec("t", json!({ "v": v }));
            encoded("{v}", enc, &r)
        };
        let groups: Vec<String> = values
            .iter()
            .map(|v| render(ValueEncoding::LogGroup, v))
            .collect();
        let streams: Vec<String> = values
            .iter()
            .map(|v| render(ValueEncoding::LogStream, v))
            .collect();
        for names in [&groups, &streams] {
            let distinct: std::collections::HashSet<&String> = names.iter().collect();
            assert_eq!(distinct.len(), values.len(), "{names:?}");
        }
        assert!(
            groups
                .iter()
                .flat_map(|g| g.chars())
                .all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c)),
            "{groups:?}"
        );
        assert!(
            streams.iter().all(|s| !s.contains([':', '*'])),
            "{streams:?}"
        );
        assert_eq!(groups[0], "my#20cluster");
        assert_eq!(groups[2], "my#23cluster");
        assert_eq!(groups[8], "#C3#A9");
        assert_eq!(groups[10], "a#2Fb");
        assert_eq!(groups[11], "#2D");
        assert_eq!(streams[11], "%2D");
        assert_eq!(streams[0], "my cluster");
        assert_eq!(streams[4], "my%3Acluster");
        assert_eq!(streams[5], "my%2Acluster");
        assert_eq!(streams[7], "my%253Acluster");
    }

    /// Tester's report: `-`, `null` and `""` all landed in `/ecs/-`; and `/ecs/{g}/{h}` with
    /// (`a/b`, `c`) and (`a`, `b/c`) both gave `/ecs/a/b/c`.
    #[test]
    fn a_literal_dash_and_a_slash_in_a_value_do_not_collide() {
        let template = |enc| match enc {
            ValueEncoding::S3Key => "logs/{tag}/{g}/{h}/x",
            _ => "/ecs/{g}/{h}",
        };
        for enc in [
            ValueEncoding::S3Key,
            ValueEncoding::LogGroup,
            ValueEncoding::LogStream,
        ] {
            let names: Vec<String> = [
                json!({"g": "-", "h": "c"}),
                json!({"g": null, "h": "c"}),
                json!({"g": "a/b", "h": "c"}),
                json!({"g": "a", "h": "b/c"}),
            ]
            .into_iter()
            .map(|f| encoded(template(enc), enc, &rec("t", f)))
            .collect();
            // Streams keep `/` (it is no separator there): only the dash cases must differ.
            let n = if enc == ValueEncoding::LogStream {
                2
            } else {
                4
            };
            let distinct: std::collections::HashSet<&String> = names[..n].iter().collect();
            assert_eq!(distinct.len(), n, "{enc:?}: {names:?}");
            // Missing, null and empty stay one visible "no value".
            let empty = encoded(template(enc), enc, &rec("t", json!({"g": "", "h": "c"})));
            assert_eq!(empty, names[1], "{enc:?}");
        }
        let g = |f| encoded("/ecs/{g}/{h}", ValueEncoding::LogGroup, &rec("t", f));
        assert_eq!(g(json!({"g": "-", "h": "c"})), "/ecs/#2D/c");
        assert_eq!(g(json!({"h": "c"})), "/ecs/-/c");
        assert_eq!(g(json!({"g": "a/b", "h": "c"})), "/ecs/a#2Fb/c");
        assert_eq!(g(json!({"g": "a", "h": "b/c"})), "/ecs/a/b#2Fc");
        // A dash inside a value, or a negative number, is kept as it is.
        assert_eq!(g(json!({"g": "my-app", "h": -1})), "/ecs/my-app/-1");
        let k = |f| encoded("logs/{tag}/{g}/x", ValueEncoding::S3Key, &rec("-", f));
        assert_eq!(k(json!({"g": "-"})), "logs/%2D/%2D/x");
        assert_eq!(k(json!({})), "logs/%2D/-/x");
        assert_eq!(
            encoded("{g}", ValueEncoding::Verbatim, &rec("t", json!({"g": "-"}))),
            "-"
        );
    }

    #[test]
    fn preview_shows_uuid_and_index_placeholders() {
        let t = parse("k/{tag}/{uuid}-{index}").unwrap();
        assert_eq!(
            t.render_to_string(&rec("t", json!({})), Dynamic::preview()),
            "k/t/{uuid}-{index}"
        );
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
