//! Templates for S3 keys, CloudWatch Logs group/stream names and alert groups/subjects,
//! parsed once at config load.
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
//! - `{FIELD}`: any other record field. Strings render as they are, numbers and
//!   booleans as their JSON text. A missing, `null`, empty, object or array field renders as
//!   `-`, so a record without ECS metadata still lands (under a visible `-`) instead of being
//!   dropped. A value that is literally `-` is escaped by every encoding except
//!   [`ValueEncoding::Verbatim`] (`%2D`, or `#2D` in log groups), so `-` always means "no value".
//! - Paths into nested fields (events): `{detail.group}` (object keys joined by `.`),
//!   `{resources[0]}` and `{detail.containers[0].exitCode}` (array elements, 0-based;
//!   `[-1]` is the last). A top-level field whose name is the whole text (`{log.level}` as
//!   one flat key) wins over the path, so flat dotted keys keep working.
//! - Filters after `|`, applied left to right to a string value:
//!   `|arn[N]` is the N-th `/`-separated segment of an ARN's resource part (the text after
//!   the fifth `:`; ARN format in the AWS IAM User Guide, "IAM ARNs"), negative from the end:
//!   `{detail.clusterArn|arn[-1]}` is the cluster name (`cluster/NAME`),
//!   `{detail.taskArn|arn[-1]}` the task id (`task/CLUSTER/ID`) and
//!   `{resources[0]|arn[-2]}` the cluster of a service ARN (`service/CLUSTER/SERVICE`).
//!   `|arn_region` and `|arn_account` are the ARN's fourth and fifth fields. A value that is
//!   not an ARN, or a segment that does not exist, is missing.
//! - Alternatives with `??`: `{detail.clusterArn|arn[-1] ?? resources[0]|arn[-2]}` renders
//!   the first alternative that has a value (ECS Deployment State Change events carry no
//!   `clusterArn`, only the service ARN). The last alternative may be a quoted literal,
//!   `{detail.group ?? "none"}`, encoded like a value (it stands in for one, so it cannot
//!   add path segments either).
//!   `{tag}`, `{tag[N]}` and `{ecs_task_id}` may be alternatives too.
//! - `%Y %m %d %H %M %S` from the record's time in UTC, `%%` for a literal `%`.
//! - `${VAR}` / `${VAR:-default}`: the environment, read once at parse time.
//! - `{{` and `}}` for literal braces.
//!
//! Values from record data (`{tag}`, `{tag[N]}`, `{ecs_task_id}`, `{FIELD}`, paths) are written
//! through the destination's [`ValueEncoding`]; text from the config (literals, `${VAR}`,
//! `{hostname}`) is written as it is, so a `/` the user wrote stays a path separator while a
//! `/` inside a field value cannot create one. Every encoding is injective: two different
//! values never render the same name.

use std::fmt::Write as _;

use crate::event::Record;

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
    /// A record value: one or more alternatives (`a ?? b`), the first with a value wins.
    Value(Vec<Alternative>),
    Time(TimeField),
}

/// One alternative of a `{...}` value: where the value comes from and its filters.
#[derive(Clone, Debug, PartialEq)]
enum Alternative {
    /// A quoted literal (`"none"`): encoded like the value it stands in for.
    Literal(String),
    Source(Source, Vec<Filter>),
}

#[derive(Clone, Debug, PartialEq)]
enum Source {
    Tag,
    TagPart(usize),
    EcsTaskId,
    /// A field path; `raw` is the placeholder text, tried first as one top-level key.
    Path {
        raw: String,
        steps: Vec<Step>,
    },
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    /// Array element; negative counts from the end.
    Index(i64),
}

#[derive(Clone, Debug, PartialEq)]
enum Filter {
    /// `|arn[N]`: `/`-segment of the ARN's resource part; negative counts from the end.
    Segment(i64),
    /// `|arn_region`.
    Region,
    /// `|arn_account`.
    Account,
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
                Segment::Value(alts) => render_alternatives(record, alts, enc, out),
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
        _ if name.starts_with("tag[") && !name.contains(['|', '?']) => {
            Segment::TagPart(parse_tag_part(name)?)
        }
        _ => {
            if name.contains(['{', '%', '$']) {
                return Err(format!("`{{{name}}}`: invalid field name"));
            }
            let alts: Vec<&str> = name.split("??").map(str::trim).collect();
            let mut parsed = Vec::with_capacity(alts.len());
            for (i, alt) in alts.iter().enumerate() {
                let last = i + 1 == alts.len();
                parsed.push(parse_alternative(alt, last, name)?);
            }
            Segment::Value(parsed)
        }
    };
    Ok(Some(seg))
}

fn parse_tag_part(name: &str) -> Result<usize, String> {
    name.strip_prefix("tag[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|d| d.parse::<usize>().ok())
        .ok_or_else(|| format!("`{{{name}}}`: expected {{tag[N]}} with N a number"))
}

fn parse_alternative(alt: &str, last: bool, whole: &str) -> Result<Alternative, String> {
    if alt.is_empty() {
        return Err(format!("`{{{whole}}}`: empty alternative around `??`"));
    }
    if let Some(q) = alt.strip_prefix('"') {
        let text = q
            .strip_suffix('"')
            .filter(|t| !t.contains('"'))
            .ok_or_else(|| format!("`{{{whole}}}`: unterminated quoted literal {alt}"))?;
        if !last {
            return Err(format!(
                "`{{{whole}}}`: a quoted literal can only be the last alternative"
            ));
        }
        return Ok(Alternative::Literal(text.to_string()));
    }
    // Filters follow the first `|`; a field name itself cannot contain one.
    let mut parts = alt.split('|').map(str::trim);
    let source = parts.next().unwrap_or("");
    let source = match source {
        "tag" => Source::Tag,
        "ecs_task_id" => Source::EcsTaskId,
        s if s.starts_with("tag[") => Source::TagPart(parse_tag_part(s)?),
        s => Source::Path {
            raw: s.to_string(),
            steps: parse_path(s).map_err(|m| format!("`{{{whole}}}`: {m}"))?,
        },
    };
    let filters = parts
        .map(|f| parse_filter(f).map_err(|m| format!("`{{{whole}}}`: {m}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Alternative::Source(source, filters))
}

/// `a.b[0].c[-1]` into steps.
fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    if path.is_empty() {
        return Err("empty field name".into());
    }
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && (steps.is_empty() || rest.is_empty()) {
            return Err(format!("empty key in path `{path}`"));
        }
        if !key.is_empty() {
            if key.contains(']') {
                return Err(format!("unmatched `]` in path `{path}`"));
            }
            steps.push(Step::Key(key.to_string()));
        }
        while !rest.is_empty() {
            let idx = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(n, tail)| n.trim().parse::<i64>().ok().map(|n| (n, tail)));
            let Some((n, tail)) = idx else {
                return Err(format!(
                    "path `{path}`: expected `[N]` with N a whole number (negative counts from the end)"
                ));
            };
            steps.push(Step::Index(n));
            rest = tail;
        }
    }
    Ok(steps)
}

fn parse_filter(f: &str) -> Result<Filter, String> {
    match f {
        "arn_region" => Ok(Filter::Region),
        "arn_account" => Ok(Filter::Account),
        _ => f
            .strip_prefix("arn[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.trim().parse::<i64>().ok())
            .map(Filter::Segment)
            .ok_or_else(|| {
                format!("unknown filter `|{f}` (known: |arn[N], |arn_region, |arn_account)")
            }),
    }
}

/// The element `i` of a list of `len`, negative counting from the end.
fn pick(len: usize, i: i64) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let i = if i < 0 { len + i } else { i };
    (0..len).contains(&i).then_some(i as usize)
}

/// The scalar text of `v` (strings as they are, numbers and booleans as JSON); `None` for
/// null, objects and arrays.
fn scalar_text(v: &serde_json::Value) -> Option<std::borrow::Cow<'_, str>> {
    use serde_json::Value;
    match v {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
            "true"
        } else {
            "false"
        })),
        _ => None,
    }
}

/// Walks `steps` from the record's top level. Allocates only when the top-level field is
/// packed msgpack (that field is decoded).
fn lookup<'a>(
    record: &'a Record,
    steps: &[Step],
) -> Option<std::borrow::Cow<'a, serde_json::Value>> {
    use std::borrow::Cow;
    fn walk<'v>(mut v: &'v serde_json::Value, steps: &[Step]) -> Option<&'v serde_json::Value> {
        for s in steps {
            v = match (s, v) {
                (Step::Key(k), serde_json::Value::Object(m)) => m.get(k)?,
                (Step::Index(i), serde_json::Value::Array(a)) => a.get(pick(a.len(), *i)?)?,
                _ => return None,
            };
        }
        Some(v)
    }
    let (Step::Key(first), rest) = steps.split_first()? else {
        return None;
    };
    match record.get(first)?.to_value() {
        Cow::Borrowed(v) => walk(v, rest).map(Cow::Borrowed),
        Cow::Owned(v) => walk(&v, rest).cloned().map(Cow::Owned),
    }
}

fn apply_filter<'a>(value: &'a str, f: &Filter) -> Option<&'a str> {
    // arn:partition:service:region:account-id:resource
    let mut fields = value.splitn(6, ':');
    if fields.next() != Some("arn") {
        return None;
    }
    let (_partition, _service) = (fields.next()?, fields.next()?);
    let (region, account, resource) = (fields.next()?, fields.next()?, fields.next()?);
    match f {
        Filter::Region => Some(region),
        Filter::Account => Some(account),
        Filter::Segment(i) => {
            let segs: Vec<&str> = resource.split('/').collect();
            segs.get(pick(segs.len(), *i)?).copied()
        }
    }
    .filter(|s| !s.is_empty())
}

/// The `i`-th `/` segment (negative from the end) of the resource part of `arn`, as the
/// `|arn[N]` filter takes it; `None` when `arn` is no ARN or has no such segment.
pub(crate) fn arn_segment(arn: &str, i: i64) -> Option<&str> {
    apply_filter(arn, &Filter::Segment(i))
}

/// The region field of `arn` (`|arn_region`).
pub(crate) fn arn_region(arn: &str) -> Option<&str> {
    apply_filter(arn, &Filter::Region)
}

/// The text of one alternative for `record`, `None` when it has no value.
fn alternative_text<'a>(
    record: &'a Record,
    source: &Source,
    filters: &[Filter],
) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    let text: Cow<'a, str> = match source {
        Source::Tag => Cow::Borrowed(&*record.tag),
        Source::TagPart(n) => Cow::Borrowed(record.tag.split(['.', '-']).nth(*n)?),
        Source::EcsTaskId => match record.get("ecs_task_id").and_then(|v| v.as_str()) {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Borrowed(
                record
                    .get("ecs_task_arn")?
                    .as_str()?
                    .rsplit('/')
                    .next()
                    .unwrap_or(""),
            ),
        },
        Source::Path { raw, steps } => {
            // The whole text as one top-level key first (flat dotted keys), read in place
            // when it is a string.
            if let Some(v) = record.get(raw) {
                match v.as_str() {
                    Some(s) => Cow::Borrowed(s),
                    None => Cow::Owned(scalar_text(&v.to_value())?.into_owned()),
                }
            } else if steps.len() > 1 {
                match lookup(record, steps)? {
                    Cow::Borrowed(v) => scalar_text(v)?,
                    Cow::Owned(v) => Cow::Owned(scalar_text(&v)?.into_owned()),
                }
            } else {
                return None;
            }
        }
    };
    let mut text = text;
    for f in filters {
        text = match text {
            Cow::Borrowed(s) => Cow::Borrowed(apply_filter(s, f)?),
            Cow::Owned(s) => Cow::Owned(apply_filter(&s, f)?.to_string()),
        };
    }
    (!text.is_empty()).then_some(text)
}

fn render_alternatives(
    record: &Record,
    alts: &[Alternative],
    enc: ValueEncoding,
    out: &mut String,
) {
    for alt in alts {
        match alt {
            Alternative::Literal(l) => return enc.push(l, out),
            Alternative::Source(source, filters) => {
                if let Some(t) = alternative_text(record, source, filters) {
                    return enc.push(&t, out);
                }
            }
        }
    }
    out.push_str(MISSING);
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

    /// The four ECS event types of EventBridge (shapes from the Amazon ECS Developer Guide,
    /// "Amazon ECS events"), trimmed to the fields the templates read.
    fn ecs_events() -> Vec<(&'static str, serde_json::Value)> {
        vec![
            (
                "ECS Task State Change",
                json!({"detail-type": "ECS Task State Change", "source": "aws.ecs",
                  "region": "us-west-2",
                  "resources": ["arn:aws:ecs:us-west-2:111122223333:task/prod/6f9a1e"],
                  "detail": {"clusterArn": "arn:aws:ecs:us-west-2:111122223333:cluster/prod",
                    "taskArn": "arn:aws:ecs:us-west-2:111122223333:task/prod/6f9a1e",
                    "group": "service:web", "lastStatus": "STOPPED",
                    "containers": [{"name": "app", "exitCode": 1}, {"name": "log_router", "exitCode": 0}]}}),
            ),
            (
                "ECS Container Instance State Change",
                json!({"detail-type": "ECS Container Instance State Change", "source": "aws.ecs",
                  "resources": ["arn:aws:ecs:us-west-2:111122223333:container-instance/prod/c0ffee"],
                  "detail": {"clusterArn": "arn:aws:ecs:us-west-2:111122223333:cluster/prod",
                    "status": "ACTIVE"}}),
            ),
            (
                "ECS Deployment State Change",
                json!({"detail-type": "ECS Deployment State Change", "source": "aws.ecs",
                  "resources": ["arn:aws:ecs:us-west-2:111122223333:service/prod/web"],
                  "detail": {"eventType": "ERROR", "eventName": "SERVICE_DEPLOYMENT_FAILED",
                    "deploymentId": "ecs-svc/123"}}),
            ),
            (
                "ECS Service Action",
                json!({"detail-type": "ECS Service Action", "source": "aws.ecs",
                  "resources": ["arn:aws:ecs:us-west-2:111122223333:service/prod/web"],
                  "detail": {"eventType": "WARN", "eventName": "SERVICE_TASK_PLACEMENT_FAILURE",
                    "clusterArn": "arn:aws:ecs:us-west-2:111122223333:cluster/prod"}}),
            ),
        ]
    }

    /// Seed 002 sends every ECS event type to `/aws/events/ecs/containerinsights/<cluster>/
    /// performance`; Deployment State Change events carry no `clusterArn`, so its cluster
    /// comes from the service ARN in `resources`.
    #[test]
    fn seed_002_log_group_for_all_four_ecs_event_types() {
        let t = parse(
            "/aws/events/ecs/containerinsights/{detail.clusterArn|arn[-1] ?? resources[0]|arn[-2]}/performance",
        )
        .unwrap()
        .with_encoding(ValueEncoding::LogGroup);
        for (kind, event) in ecs_events() {
            assert_eq!(
                t.render_to_string(&rec("eventbridge", event), Dynamic::default()),
                "/aws/events/ecs/containerinsights/prod/performance",
                "{kind}"
            );
        }
        // Without the fallback the deployment event has no cluster: a visible `-`.
        let only = parse("{detail.clusterArn|arn[-1]}").unwrap();
        let (_, deployment) = ecs_events().swap_remove(2);
        assert_eq!(
            only.render_to_string(&rec("t", deployment), Dynamic::default()),
            "-"
        );
    }

    #[test]
    fn paths_array_elements_and_arn_segments() {
        let (_, task) = ecs_events().swap_remove(0);
        let r = rec("t", task);
        let render = |t: &str| parse(t).unwrap().render_to_string(&r, Dynamic::default());
        assert_eq!(render("{detail.group}"), "service:web");
        assert_eq!(
            render("{resources[0]}"),
            "arn:aws:ecs:us-west-2:111122223333:task/prod/6f9a1e"
        );
        assert_eq!(render("{detail.containers[0].exitCode}"), "1");
        assert_eq!(render("{detail.containers[-1].name}"), "log_router");
        assert_eq!(render("{detail.containers[2].name}"), "-");
        assert_eq!(render("{detail.containers[-3].name}"), "-");
        assert_eq!(render("{detail.containers}"), "-", "arrays are not scalars");
        assert_eq!(render("{detail.nope.deeper}"), "-");
        assert_eq!(render("{detail.group[0]}"), "-", "a string is no array");
        assert_eq!(render("{detail.clusterArn|arn[-1]}"), "prod");
        assert_eq!(render("{detail.taskArn|arn[-1]}"), "6f9a1e");
        assert_eq!(render("{detail.taskArn|arn[1]}"), "prod");
        assert_eq!(render("{detail.taskArn|arn[0]}"), "task");
        assert_eq!(render("{detail.taskArn|arn[5]}"), "-");
        assert_eq!(
            render("{detail.taskArn|arn_region}/{detail.taskArn|arn_account}"),
            "us-west-2/111122223333"
        );
        // A value that is no ARN has no segments; a filter on a number neither.
        assert_eq!(render("{detail.group|arn[-1]}"), "-");
        assert_eq!(render("{detail.containers[0].exitCode|arn[0]}"), "-");
        // Alternatives: the first with a value; tag and literals as alternatives.
        assert_eq!(render("{detail.stopCode ?? detail.lastStatus}"), "STOPPED");
        assert_eq!(render("{detail.stopCode ?? \"none\"}"), "none");
        assert_eq!(render("{detail.stopCode??tag}"), "t");
        assert_eq!(render("{nope ?? ecs_task_id}"), "-");
        assert_eq!(render("{detail-type}"), "ECS Task State Change");
    }

    #[test]
    fn flat_dotted_keys_win_over_paths_and_values_stay_encoded() {
        let r = rec(
            "t",
            json!({"log.level": "warn", "log": {"level": "info"}, "a": {"b": "x/y"},
                   "arn": "arn:aws:ecs:r:1:service/c%1/s"}),
        );
        let render = |t: &str, e| {
            parse(t)
                .unwrap()
                .with_encoding(e)
                .render_to_string(&r, Dynamic::default())
        };
        assert_eq!(render("{log.level}", ValueEncoding::Verbatim), "warn");
        assert_eq!(render("k/{a.b}/x", ValueEncoding::S3Key), "k/x%2Fy/x");
        assert_eq!(render("/g/{a.b}", ValueEncoding::LogGroup), "/g/x#2Fy");
        assert_eq!(render("{arn|arn[-2]}", ValueEncoding::S3Key), "c%251");
        // A quoted literal stands in for a value: encoded like one.
        assert_eq!(
            render("k/{nope ?? \"a/b\"}", ValueEncoding::S3Key),
            "k/a%2Fb"
        );
    }

    #[test]
    fn paths_reach_into_packed_records() {
        let mut b = Vec::new();
        crate::input::forward::client::encode_json_record(
            &mut b,
            json!({"detail": {"containers": [{"exitCode": 137}]}, "log": "x"})
                .as_object()
                .unwrap(),
        );
        let r = Record::from_packed("t", 0, bytes::Bytes::from(b)).unwrap();
        assert!(r.packed().is_some());
        let t = parse("{detail.containers[0].exitCode}/{log}").unwrap();
        assert_eq!(t.render_to_string(&r, Dynamic::default()), "137/x");
    }

    #[test]
    fn bad_paths_filters_and_alternatives_are_refused() {
        for bad in [
            "{a..b}",
            "{a[x]}",
            "{a[1}",
            "{a]}",
            "{.a}",
            "{a|arn}",
            "{a|upper}",
            "{a ?? }",
            "{?? a}",
            "{\"x\" ?? a}",
            "{a ?? \"x}",
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad} parsed"));
            assert_eq!(e.column, 1, "{bad}: {e}");
        }
        assert!(parse("{a|arn[-2]|arn_region}").is_ok());
        assert!(parse("{[0]}").is_err());
    }
}
