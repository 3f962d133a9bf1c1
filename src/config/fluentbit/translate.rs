//! Fluent Bit sections → firelane TOML.
//!
//! Each `[INPUT]` becomes an `[inputs.*]` table, each `[FILTER]` one or more
//! `[processors.*]` tables (the processor contract of issue #13) listed on the inputs whose
//! records its `Match` can select, each `[OUTPUT]` an `[outputs.*]` table fed by one
//! `[routes.*]` table carrying its `Match` as a tag glob (Fluent Bit fans a record out to
//! every output whose `Match` selects it; firelane routes without `final` do the same).
//! `[SERVICE]` keys map onto `[admin]` and `[runtime]`.
//!
//! Every option of every section is either translated or reported as unsupported, at its
//! line, with what to do instead: nothing is dropped silently. Every emitted TOML line
//! remembers the `.conf` line it came from, so errors the TOML loader finds later are
//! reported there too.

use std::collections::BTreeMap;
use std::time::Duration;

use super::classic::{Entry, Origin, Problems, Section};

/// The generated TOML and, per line, the `.conf` line it came from.
pub(crate) struct Generated {
    /// The lines of the TOML text.
    pub lines: Vec<String>,
    /// Per line of `lines`: where it came from (comments and blank lines: the next table's).
    pub origins: Vec<Option<Origin>>,
}

impl Generated {
    pub(crate) fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

/// A TOML table being built: its header and `key = value` lines (values already TOML).
struct TomlTable {
    header: String,
    at: Origin,
    comment: Option<String>,
    keys: Vec<(String, String, Origin)>,
}

impl TomlTable {
    fn new(header: impl Into<String>, at: &Origin) -> Self {
        TomlTable {
            header: header.into(),
            at: at.clone(),
            comment: None,
            keys: Vec::new(),
        }
    }

    fn set(&mut self, key: &str, value: String, at: &Origin) {
        self.keys.retain(|(k, _, _)| k != key);
        self.keys.push((key.to_string(), value, at.clone()));
    }

    fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|(k, _, _)| k == key)
    }
}

/// A TOML basic string.
pub(crate) fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key, bare when it can be.
fn k(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        q(s)
    }
}

fn arr(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

fn inline(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return "{}".into();
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(key, v)| format!("{} = {v}", k(key)))
        .collect();
    format!("{{ {} }}", body.join(", "))
}

/// The field the record's tag is copied to while tag-scoped `grep` filters run (Fluent
/// Bit's filters select records by tag; firelane's processors see every record of an
/// input, and their rules look at record fields). Removed again at the end of the chain.
pub(crate) const TAG_FIELD: &str = "_fluentbit_tag";

/// A section with a record of which entries were read, so that every entry nobody read
/// is reported as unsupported.
struct Sec<'a> {
    s: &'a Section,
    used: Vec<bool>,
    plugin: String,
    /// Every key the translation asked for, for "did you mean" hints.
    asked: Vec<&'static str>,
}

impl<'a> Sec<'a> {
    fn new(s: &'a Section) -> Self {
        let plugin = s
            .get("name")
            .map(|e| e.value.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let mut sec = Sec {
            s,
            used: vec![false; s.entries.len()],
            plugin,
            asked: Vec::new(),
        };
        sec.take("name");
        sec
    }

    /// The first entry of `key`, marked as read (every repetition too).
    fn take(&mut self, key: &'static str) -> Option<&'a Entry> {
        self.asked.push(key);
        let mut first = None;
        for (i, e) in self.s.entries.iter().enumerate() {
            if e.lower == key {
                self.used[i] = true;
                if first.is_none() {
                    first = Some(e);
                }
            }
        }
        first
    }

    /// Every entry of `key`, marked as read.
    fn take_all(&mut self, key: &'static str) -> Vec<&'a Entry> {
        self.asked.push(key);
        let mut out = Vec::new();
        for (i, e) in self.s.entries.iter().enumerate() {
            if e.lower == key {
                self.used[i] = true;
                out.push(e);
            }
        }
        out
    }

    /// Marks keys as read that firelane accepts and that need no translation (each with
    /// the reason documented in README "Coming from aws-for-fluent-bit").
    fn accept(&mut self, keys: &[&'static str]) {
        for key in keys {
            self.take(key);
        }
    }

    /// Marks every key as read: for a section rejected as a whole, whose keys need no
    /// error each.
    fn accept_all(&mut self) {
        self.used.iter_mut().for_each(|u| *u = true);
    }

    /// Marks every key starting with `prefix` as read.
    fn accept_prefix(&mut self, prefix: &str) {
        for (i, e) in self.s.entries.iter().enumerate() {
            if e.lower.starts_with(prefix) {
                self.used[i] = true;
            }
        }
    }

    /// Reports every entry nobody read.
    fn finish(&self, what: &str, p: &mut Problems) {
        for (i, e) in self.s.entries.iter().enumerate() {
            if !self.used[i] {
                let hint = crate::config::reader::closest(&e.lower, &self.asked)
                    .or_else(|| similar_prefix(&e.lower, &self.asked))
                    .map(|c| format!(" (did you mean {c}?)"))
                    .unwrap_or_default();
                p.error(
                    &e.origin,
                    format!(
                        "{what}: option {}{hint} is not supported by firelane; remove it, or see README \"Coming from aws-for-fluent-bit\" for what firelane offers instead",
                        e.key
                    ),
                );
            }
        }
    }
}

/// The asked key sharing the longest prefix (6 characters at least) with `key`: catches
/// `deliver_stream_name` for `delivery_stream`, beyond an edit distance of 2.
fn similar_prefix(key: &str, asked: &[&'static str]) -> Option<&'static str> {
    asked
        .iter()
        .map(|a| {
            (
                a.chars()
                    .zip(key.chars())
                    .take_while(|(x, y)| x == y)
                    .count(),
                *a,
            )
        })
        .filter(|(n, _)| *n >= 6)
        .max_by_key(|(n, _)| *n)
        .map(|(_, a)| a)
}

/// Fluent Bit booleans: on/off, true/false, yes/no, 1/0 (any case).
fn boolean(e: &Entry, value: &str, p: &mut Problems) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => {
            p.error(
                &e.origin,
                format!("{}: expected On or Off, found {value:?}", e.key),
            );
            None
        }
    }
}

/// Fluent Bit sizes (`flb_utils_size_to_bytes`): a number with an optional K, KB, M, MB,
/// G or GB suffix, any case, in powers of 1024.
fn size(e: &Entry, value: &str, p: &mut Problems) -> Option<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => 0,
    };
    match num.parse::<f64>() {
        Ok(n) if mult > 0 && n >= 0.0 => Some((n * mult as f64) as u64),
        _ => {
            p.error(
                &e.origin,
                format!("{}: {value:?} is not a size (e.g. 50MB, 512K)", e.key),
            );
            None
        }
    }
}

/// Fluent Bit durations (`flb_utils_time_to_seconds`, `Flush`): a number of seconds
/// (`Flush` takes fractions) with an optional s, m, h or d suffix.
fn duration(e: &Entry, value: &str, p: &mut Problems) -> Option<Duration> {
    let v = value.trim();
    let (num, mult) = match v.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('s') => (&v[..v.len() - 1], 1.0),
        Some('m') => (&v[..v.len() - 1], 60.0),
        Some('h') => (&v[..v.len() - 1], 3600.0),
        Some('d') => (&v[..v.len() - 1], 86400.0),
        _ => (v, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n >= 0.0 && n.is_finite() => Some(Duration::from_secs_f64(n * mult)),
        _ => {
            p.error(
                &e.origin,
                format!("{}: {value:?} is not a duration (e.g. 5, 30s, 10m)", e.key),
            );
            None
        }
    }
}

/// A duration as firelane writes it: whole seconds as "Ns", else milliseconds.
fn dur_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A size as firelane writes it: binary units when exact.
fn size_text(n: u64) -> String {
    for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{unit}", n / m);
        }
    }
    n.to_string()
}

/// The base of a section's firelane name: its `Alias`, else its plugin name.
fn base_name(sec: &mut Sec<'_>, env: &super::Env<'_>, p: &mut Problems) -> String {
    match sec.take("alias").and_then(|e| env.value(e, p)) {
        Some(alias) => ident(&alias),
        None => ident(&sec.plugin),
    }
}

/// A listen address `host:port`; an IPv6 host gets its brackets (`[::1]:24224`).
fn host_port(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", port.trim())
    } else {
        format!("{host}:{}", port.trim())
    }
}

/// A firelane name (letters, digits, `_`, `-`) from a plugin name or `Alias`.
fn ident(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() { "x".into() } else { out }
}

/// Escapes a literal for a firelane template: braces doubled, except those of `${VAR}`
/// (expanded from the environment by the loader, in templates too).
fn template_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i].replace('{', "{{").replace('}', "}}"));
        match rest[i..].find('}') {
            Some(end) => {
                out.push_str(&rest[i..i + end + 1]);
                rest = &rest[i + end + 1..];
            }
            None => {
                out.push_str(&rest[i..].replace('{', "{{"));
                rest = "";
            }
        }
    }
    out.push_str(&rest.replace('{', "{{").replace('}', "}}"));
    out
}

/// A value passed on as a TOML string for the TOML loader, which expands `${VAR}` itself
/// (and records the values of secret-looking variables for redaction). `$$` would be
/// read as an escaped `$`, so it is doubled.
fn pass(v: &str) -> String {
    q(&v.replace("$$", "$$$$"))
}

/// Record accessor (`$log`, `$kubernetes['labels']['app']`, `log`) → dotted path.
pub(crate) fn accessor_path(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix('$').unwrap_or(s);
    let (head, mut rest) = match s.find('[') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    if head.is_empty() || head.contains(['.', ' ', '$', '(', ')']) {
        return None;
    }
    let mut parts = vec![head.to_string()];
    while !rest.is_empty() {
        let inner = rest
            .strip_prefix("['")
            .or_else(|| rest.strip_prefix("[\""))?;
        let end = inner.find(['\'', '"'])?;
        parts.push(inner[..end].to_string());
        rest = inner[end + 1..].strip_prefix(']')?;
    }
    if parts.iter().any(|p| p.is_empty() || p.contains('.')) {
        return None;
    }
    Some(parts.join("."))
}

/// How a Fluent Bit template maps onto firelane's.
#[derive(Clone, Copy)]
struct TemplateRules {
    /// `$UUID`, `$INDEX` and strftime (s3_key_format).
    s3: bool,
    /// `$TAG[n]` allowed: the tag is split on the same delimiters as firelane's `{tag[n]}`
    /// (`.` and `-`).
    tag_parts: bool,
    /// `$key` / `$key['sub']` record accessors (the C plugins' `*_template` options).
    accessors: bool,
}

/// Converts a Fluent Bit name template (`$TAG`, `$TAG[n]`, `$UUID`, `$INDEX`,
/// `$(ecs_task_id)`, `$(var['sub'])`, `$key['sub']`, `${VAR}`, strftime) to firelane's
/// template syntax (src/output/template.rs).
fn convert_template(s: &str, rules: TemplateRules) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '$' {
            let after = &rest[1..];
            if after.starts_with('{') {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
                out.push_str(&rest[..end + 2]);
                rest = &after[end + 1..];
                continue;
            }
            if let Some(inner) = after.strip_prefix('(') {
                let end = inner
                    .find(')')
                    .ok_or_else(|| format!("unterminated $( in {s:?}"))?;
                out.push_str(&placeholder(&inner[..end], rules)?);
                rest = &inner[end + 1..];
                continue;
            }
            if let Some(r) = after.strip_prefix("TAG") {
                if let Some(idx) = r.strip_prefix('[') {
                    let end = idx
                        .find(']')
                        .ok_or_else(|| format!("unterminated $TAG[ in {s:?}"))?;
                    out.push_str(&placeholder(&format!("tag[{}]", &idx[..end]), rules)?);
                    rest = &idx[end + 1..];
                } else {
                    out.push_str("{tag}");
                    rest = r;
                }
                continue;
            }
            if rules.s3 && after.starts_with("UUID") {
                out.push_str("{uuid}");
                rest = &after[4..];
                continue;
            }
            if rules.s3 && after.starts_with("INDEX") {
                out.push_str("{index}");
                rest = &after[5..];
                continue;
            }
            if rules.accessors {
                let len = after
                    .char_indices()
                    .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
                    .map_or(after.len(), |(i, _)| i);
                if len > 0 {
                    // Bracketed sub-keys: `['a']['b']`.
                    let mut end = len;
                    while after[end..].starts_with("['") || after[end..].starts_with("[\"") {
                        match after[end..].find(']') {
                            Some(j) => end += j + 1,
                            None => break,
                        }
                    }
                    out.push_str(&placeholder(&after[..end], rules)?);
                    rest = &after[end..];
                    continue;
                }
            }
            out.push('$');
            rest = after;
            continue;
        }
        if c == '%' && rules.s3 {
            let spec = rest[1..].chars().next();
            match spec {
                Some(x @ ('Y' | 'm' | 'd' | 'H' | 'M' | 'S' | '%')) => {
                    out.push('%');
                    out.push(x);
                    rest = &rest[2..];
                    continue;
                }
                Some(x) => {
                    return Err(format!(
                        "strftime %{x} is not supported (firelane keys take %Y %m %d %H %M %S)"
                    ));
                }
                None => return Err("a lone % at the end".into()),
            }
        }
        out.push_str(&template_literal(&rest[..c.len_utf8()]));
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

fn placeholder(inner: &str, rules: TemplateRules) -> Result<String, String> {
    let inner = inner.trim();
    if inner == "tag" {
        return Ok("{tag}".into());
    }
    if let Some(n) = inner.strip_prefix("tag[").and_then(|r| r.strip_suffix(']')) {
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("tag[{n}]: expected a number"))?;
        if !rules.tag_parts {
            return Err(format!(
                "tag part [{n}]: Fluent Bit splits the tag on \".\" here while firelane's {{tag[{n}]}} splits on \".\" and \"-\" (FireLens tags are <container>-firelens-<task id>); set s3_key_format_tag_delimiters .- or use the whole tag"
            ));
        }
        return Ok(format!("{{tag[{n}]}}"));
    }
    if inner == "uuid" {
        return Err(
            "$(uuid) is not supported in CloudWatch names; use $(ecs_task_id) or the tag".into(),
        );
    }
    match accessor_path(inner) {
        Some(path) => Ok(format!("{{{path}}}")),
        None => Err(format!("{inner:?} is not a record key firelane can read")),
    }
}

/// Glob of a Fluent Bit `Match` (`*` any run of characters), or a `Match_Regex` that is a
/// plain glob in disguise (`^app-.*$`).
enum TagMatch {
    All,
    Glob(String),
    Regex(String),
}

impl TagMatch {
    fn matches_static(&self, tag: &str) -> Option<bool> {
        match self {
            TagMatch::All => Some(true),
            TagMatch::Glob(g) => Some(super::classic::glob_match(&g.replace('?', "\u{0}"), tag)),
            TagMatch::Regex(r) => regex_lite_match(r, tag),
        }
    }

    /// The glob for a route's `tag`, if the match is one.
    fn glob(&self) -> Option<String> {
        match self {
            TagMatch::All => Some("*".into()),
            TagMatch::Glob(g) => Some(g.clone()),
            TagMatch::Regex(r) => regex_as_glob(r),
        }
    }
}

/// Static evaluation of a `Match_Regex` against a fixed tag, for the regexes firelane
/// can turn into globs; `None` otherwise.
fn regex_lite_match(r: &str, tag: &str) -> Option<bool> {
    regex_as_glob(r).map(|g| super::classic::glob_match(&g, tag))
}

/// `^literal(.*literal)*$`-shaped regexes as globs (`.*` → `*`); `None` for anything else.
fn regex_as_glob(r: &str) -> Option<String> {
    let anchored_start = r.starts_with('^');
    let anchored_end = r.ends_with('$') && !r.ends_with("\\$");
    let body = r.trim_start_matches('^');
    let body = if anchored_end {
        &body[..body.len() - 1]
    } else {
        body
    };
    let mut out = String::new();
    if !anchored_start {
        out.push('*');
    }
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push('*');
            }
            '\\' => match chars.next() {
                Some(x) if !x.is_ascii_alphanumeric() => out.push(x),
                _ => return None,
            },
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None;
            }
            c => out.push(c),
        }
    }
    if !anchored_end {
        out.push('*');
    }
    // `**` means the same as `*`.
    while out.contains("**") {
        out = out.replace("**", "*");
    }
    Some(out)
}

fn read_match(
    sec: &mut Sec<'_>,
    what: &str,
    p: &mut Problems,
    env: &super::Env<'_>,
) -> Option<TagMatch> {
    let m = sec.take("match");
    let mr = sec.take("match_regex");
    match (m, mr) {
        (Some(e), None) => {
            let v = env.value(e, p)?;
            let v = v.trim().to_string();
            if v.chars().all(|c| c == '*') {
                Some(TagMatch::All)
            } else {
                let mut g = v;
                while g.contains("**") {
                    g = g.replace("**", "*");
                }
                Some(TagMatch::Glob(g))
            }
        }
        (None, Some(e)) => {
            let v = env.value(e, p)?;
            if v.trim() == ".*" || v.trim() == "^.*$" {
                return Some(TagMatch::All);
            }
            Some(TagMatch::Regex(v.trim().to_string()))
        }
        (Some(_), Some(e)) => {
            p.error(
                &e.origin,
                format!("{what}: set Match or Match_Regex, not both"),
            );
            None
        }
        (None, None) => {
            // Fluent Bit: a filter or output without Match gets no records (a warning there);
            // here that is an error, since a section that can never act is a mistake.
            p.error(
                &sec.s.origin,
                format!("{what}: no Match: it would never receive a record (add Match *)"),
            );
            None
        }
    }
}

/// One translated input.
struct InputOut {
    table: TomlTable,
    /// The tag of every record (tcp's `Tag`), when it is fixed.
    static_tag: Option<String>,
    processors: Vec<String>,
    /// Whether a tag-scoped grep runs on it, so the tag field must be added and removed.
    needs_tag_field: bool,
    retagged: bool,
}

/// The translation of every section.
pub(crate) fn translate(sections: &[Section], env: &super::Env<'_>, p: &mut Problems) -> Generated {
    let mut tables_head: Vec<TomlTable> = Vec::new();
    let mut inputs: Vec<InputOut> = Vec::new();
    let mut processors: Vec<TomlTable> = Vec::new();
    let mut routes: Vec<TomlTable> = Vec::new();
    let mut outputs: Vec<TomlTable> = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut name_for = |base: &str| {
        let n = counts.entry(base.to_string()).or_insert(0);
        let name = if *n == 0 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        };
        *n += 1;
        name
    };

    // [PARSER] sections of the main file and of Parsers_File: name → format.
    let mut parsers: BTreeMap<String, (String, Origin)> = BTreeMap::new();
    let mut service = ServiceOut::default();
    for s in sections {
        match s.kind.as_str() {
            "SERVICE" => read_service(s, env, p, &mut service, &mut parsers),
            "PARSER" => read_parser(s, env, p, &mut parsers),
            _ => {}
        }
    }

    let mut mem_buf_total: u64 = 0;
    let mut any_filesystem = false;
    for s in sections.iter().filter(|s| s.kind == "INPUT") {
        let mut sec = Sec::new(s);
        let plugin = sec.plugin.clone();
        let name = name_for(&base_name(&mut sec, env, p));
        let mut t = TomlTable::new(format!("inputs.{name}"), &s.origin);
        t.comment = Some(format!("{} [INPUT] {plugin}", s.origin));
        let mut static_tag = None;
        if let Some(e) = sec.take("mem_buf_limit")
            && let Some(v) = env.value(e, p)
            && let Some(n) = size(e, &v, p)
        {
            mem_buf_total += n;
        }
        if let Some(e) = sec.take("storage.type")
            && let Some(v) = env.value(e, p)
        {
            match v.trim().to_ascii_lowercase().as_str() {
                "memory" => {}
                "filesystem" => any_filesystem = true,
                other => p.error(
                    &e.origin,
                    format!("storage.type: expected memory or filesystem, found {other:?}"),
                ),
            }
        }
        // Accepted without translation: see README (buffer sizes are firelane's own,
        // per-input thread settings do not exist).
        sec.accept(&[
            "buffer_chunk_size",
            "threaded",
            "storage.pause_on_chunks_overlimit",
            "log_level",
        ]);
        match plugin.as_str() {
            "forward" => {
                t.set("type", q("forward"), &s.origin);
                let mut listen = Vec::new();
                let mut listen_at = s.origin.clone();
                if let Some(e) = sec.take("unix_path") {
                    listen.push(format!("unix://{}", env.pass_raw(&e.value)));
                    listen_at = e.origin.clone();
                }
                let host = sec.take("listen");
                let port = sec.take("port");
                if host.is_some() || port.is_some() || listen.is_empty() {
                    let h = host
                        .and_then(|e| env.value(e, p))
                        .unwrap_or_else(|| "0.0.0.0".into());
                    let pt = port
                        .and_then(|e| env.value(e, p))
                        .unwrap_or_else(|| "24224".into());
                    listen.push(format!("tcp://{}", host_port(&h, &pt)));
                    if let Some(e) = port.or(host) {
                        listen_at = e.origin.clone();
                    }
                }
                let items: Vec<String> = listen.iter().map(|l| pass(l)).collect();
                t.set("listen", arr(&items), &listen_at);
                if let Some(e) = sec.take("unix_perm")
                    && let Some(v) = env.value(e, p)
                {
                    let v = v.trim();
                    let v = if v.starts_with('0') {
                        v.to_string()
                    } else {
                        format!("0{v}")
                    };
                    t.set("socket_mode", q(&v), &e.origin);
                }
                if let Some(e) = sec.take("buffer_max_size")
                    && let Some(v) = env.value(e, p)
                    && let Some(n) = size(e, &v, p)
                {
                    t.set("max_frame", q(&size_text(n)), &e.origin);
                }
                if let Some(e) = sec.take("shared_key") {
                    t.set("shared_key", pass(&e.value), &e.origin);
                }
                if let Some(e) = sec.take("tag") {
                    p.error(&e.origin, "[INPUT] forward: Tag (replacing the tag clients send) is not supported; routes and templates see the tag the client sent (FireLens: <container>-firelens-<task id>)");
                }
                if let Some(e) = sec.take("tag_prefix") {
                    p.error(&e.origin, "[INPUT] forward: Tag_Prefix is not supported; match the client's tags instead");
                }
            }
            "tcp" => {
                t.set("type", q("tcp"), &s.origin);
                let h = sec
                    .take("listen")
                    .and_then(|e| env.value(e, p))
                    .unwrap_or_else(|| "0.0.0.0".into());
                let port = sec.take("port");
                let pt = port
                    .and_then(|e| env.value(e, p))
                    .unwrap_or_else(|| "5170".into());
                let at = port
                    .map(|e| e.origin.clone())
                    .unwrap_or_else(|| s.origin.clone());
                t.set("listen", q(&host_port(&h, &pt)), &at);
                // Fluent Bit's tcp input tags records with the input's name ("tcp.0")
                // when no Tag is set.
                let tag = match sec.take("tag") {
                    Some(e) => env.value(e, p).unwrap_or_default(),
                    None => format!(
                        "tcp.{}",
                        inputs
                            .iter()
                            .filter(|i| i
                                .table
                                .keys
                                .iter()
                                .any(|(k, v, _)| k == "type" && v == "\"tcp\""))
                            .count()
                    ),
                };
                t.set("tag", q(&tag), &s.origin);
                static_tag = Some(tag);
                if let Some(e) = sec.take("format")
                    && let Some(v) = env.value(e, p)
                {
                    match v.trim().to_ascii_lowercase().as_str() {
                        "json" => {}
                        "none" => t.set("format", q("none"), &e.origin),
                        other => p.error(
                            &e.origin,
                            format!("[INPUT] tcp: Format {other} is not supported (json or none)"),
                        ),
                    }
                }
                if let Some(e) = sec.take("separator") {
                    p.error(
                        &e.origin,
                        "[INPUT] tcp: Separator is not supported; lines end at \\n",
                    );
                }
                // Buffer_Size (else Chunk_Size), in KB: the longest message.
                let chunk = sec.take("chunk_size");
                if let Some(e) = sec.take("buffer_size").or(chunk)
                    && let Some(v) = env.value(e, p)
                {
                    match v.trim().parse::<u64>() {
                        Ok(kb) if kb > 0 => t.set("max_line", q(&size_text(kb * 1024)), &e.origin),
                        _ => p.error(&e.origin, format!("{}: expected a size in KB", e.key)),
                    }
                }
            }
            other => {
                p.error(
                    &s.origin,
                    format!("[INPUT] {other}: firelane has no such input (forward, tcp; and firelane's own http and sqs inputs in a TOML config)"),
                );
                sec.accept_all();
            }
        }
        sec.finish(&format!("[INPUT] {plugin}"), p);
        inputs.push(InputOut {
            table: t,
            static_tag,
            processors: Vec::new(),
            needs_tag_field: false,
            retagged: false,
        });
    }

    // Filters, in file order: Fluent Bit runs them in that order on every record whose
    // tag their Match selects.
    for s in sections.iter().filter(|s| s.kind == "FILTER") {
        let mut sec = Sec::new(s);
        let plugin = sec.plugin.clone();
        let what = format!("[FILTER] {plugin}");
        let Some(m) = read_match(&mut sec, &what, p, env) else {
            sec.accept_all();
            continue;
        };
        let name = name_for(&base_name(&mut sec, env, p));
        sec.accept(&["log_level"]);
        // Which inputs it applies to, and whether it must be scoped by tag there.
        let mut unscoped_on = Vec::new();
        let mut scoped_on = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match (&input.static_tag, &m) {
                (_, TagMatch::All) => unscoped_on.push(i),
                (Some(tag), m) => match m.matches_static(tag) {
                    Some(true) => unscoped_on.push(i),
                    Some(false) => {}
                    None => scoped_on.push(i),
                },
                (None, _) => scoped_on.push(i),
            }
        }
        let mut made: Vec<TomlTable> = Vec::new();
        let mut scoped_made: Vec<TomlTable> = Vec::new();
        match plugin.as_str() {
            "grep" => {
                let rules = grep_rules(&mut sec, &what, env, p);
                if let Some(g) = &rules {
                    made.push(grep_unscoped(&name, g, &s.origin));
                    if !scoped_on.is_empty() {
                        match grep_scoped(&name, g, &m, &s.origin) {
                            Ok(ts) => scoped_made = ts,
                            Err(e) => {
                                p.error(&s.origin, format!("{what}: {e}"));
                                scoped_on.clear();
                            }
                        }
                    }
                }
            }
            other => {
                let t = match other {
                    "record_modifier" => record_modifier(&name, &mut sec, env, p),
                    "modify" => modify(&name, &mut sec, env, p),
                    "parser" => parser(&name, &mut sec, env, p, &parsers),
                    "multiline" => multiline(&name, &mut sec, env, p),
                    "rewrite_tag" => rewrite_tag(&name, &mut sec, env, p),
                    "nest" => nest(&name, &mut sec, env, p),
                    _ => {
                        p.error(
                            &s.origin,
                            format!("[FILTER] {other}: firelane has no such filter (supported: grep, record_modifier, modify, parser with a JSON parser, multiline, rewrite_tag)"),
                        );
                        sec.accept_all();
                        Vec::new()
                    }
                };
                if !scoped_on.is_empty() && !t.is_empty() {
                    let g = m.glob().unwrap_or_default();
                    p.error(
                        &sec.s.get("match").or(sec.s.get("match_regex")).map(|e| e.origin.clone()).unwrap_or_else(|| s.origin.clone()),
                        format!("{what}: Match {g} selects only some records of an input, and firelane runs {other} on every record of the inputs it is listed on; use Match * (and, for a forward input, give those containers their own input), or keep this filter in Fluent Bit"),
                    );
                    scoped_on.clear();
                }
                if other == "rewrite_tag" {
                    for &i in &unscoped_on {
                        inputs[i].retagged = true;
                    }
                }
                made = t;
            }
        }
        sec.finish(&what, p);
        let names: Vec<String> = made
            .iter()
            .map(|t| t.header["processors.".len()..].to_string())
            .collect();
        let scoped_names: Vec<String> = scoped_made
            .iter()
            .map(|t| t.header["processors.".len()..].to_string())
            .collect();
        for &i in &unscoped_on {
            inputs[i].processors.extend(names.iter().cloned());
        }
        for &i in &scoped_on {
            if inputs[i].retagged {
                p.error(&s.origin, format!("{what}: a grep with a partial Match after a rewrite_tag is not supported (the tag it would test changed on the way); move it before the rewrite_tag"));
                continue;
            }
            inputs[i].needs_tag_field = true;
            inputs[i].processors.extend(scoped_names.iter().cloned());
        }
        if !unscoped_on.is_empty() {
            processors.extend(made);
        }
        if !scoped_on.is_empty() {
            processors.extend(scoped_made);
        }
    }
    if inputs.iter().any(|i| i.needs_tag_field) {
        let at = sections
            .first()
            .map(|s| s.origin.clone())
            .unwrap_or(Origin {
                file: "".into(),
                line: 1,
            });
        let mut add = TomlTable::new("processors.fluentbit_tag_add", &at);
        add.comment = Some(
            "Tag-scoped grep filters test the tag through this field (removed after the last one)"
                .into(),
        );
        add.set("type", q("fields"), &at);
        add.set("add", inline(&[(TAG_FIELD.to_string(), q("{tag}"))]), &at);
        let mut rm = TomlTable::new("processors.fluentbit_tag_remove", &at);
        rm.set("type", q("fields"), &at);
        rm.set("remove", arr(&[q(TAG_FIELD)]), &at);
        processors.push(add);
        processors.push(rm);
        for i in inputs.iter_mut().filter(|i| i.needs_tag_field) {
            i.processors.insert(0, "fluentbit_tag_add".into());
            i.processors.push("fluentbit_tag_remove".into());
        }
    }
    for i in &mut inputs {
        if !i.processors.is_empty() {
            let items: Vec<String> = i.processors.iter().map(|n| q(n)).collect();
            let at = i.table.at.clone();
            i.table.set("processors", arr(&items), &at);
        }
    }

    for s in sections.iter().filter(|s| s.kind == "OUTPUT") {
        let mut sec = Sec::new(s);
        let plugin = sec.plugin.clone();
        let what = format!("[OUTPUT] {plugin}");
        let m = read_match(&mut sec, &what, p, env);
        let name = name_for(&base_name(&mut sec, env, p));
        let mut t = TomlTable::new(format!("outputs.{name}"), &s.origin);
        t.comment = Some(format!("{} [OUTPUT] {plugin}", s.origin));
        let ok = output(&plugin, &mut sec, &mut t, env, p, &service);
        common_output_keys(
            &mut sec,
            &mut t,
            env,
            p,
            (any_filesystem && plugin != "null").then_some(&service),
        );
        if ok && let Some(m) = m {
            let match_at = sec
                .s
                .get("match")
                .or(sec.s.get("match_regex"))
                .map(|e| e.origin.clone())
                .unwrap_or_else(|| s.origin.clone());
            let mut r = TomlTable::new(format!("routes.{name}"), &match_at);
            match m.glob() {
                Some(g) if g == "*" => {}
                Some(g) => r.set("tag", arr(&[q(&g)]), &match_at),
                None => p.error(&match_at, format!("{what}: Match_Regex {:?} is not supported: firelane routes match tags with globs (`*`); write Match with a glob", match m { TagMatch::Regex(r) => r, _ => String::new() })),
            }
            r.set("to", arr(&[q(&name)]), &match_at);
            routes.push(r);
        }
        sec.finish(&what, p);
        if ok {
            outputs.push(t);
        }
    }

    // [SERVICE] and the memory budget.
    if let Some(a) = service.admin.take() {
        tables_head.push(a);
    }
    let mut rt = service.runtime.take().unwrap_or_else(|| {
        TomlTable::new(
            "runtime",
            &sections
                .first()
                .map(|s| s.origin.clone())
                .unwrap_or(Origin {
                    file: "".into(),
                    line: 1,
                }),
        )
    });
    if mem_buf_total > 0 {
        // Mem_Buf_Limit bounds each input's records in memory; firelane has one budget for
        // the whole process (inputs, buffers, open batches): their sum. 4 MiB at least.
        let at = sections
            .iter()
            .filter(|s| s.kind == "INPUT")
            .find_map(|s| s.get("mem_buf_limit").map(|e| e.origin.clone()))
            .unwrap_or_else(|| rt.at.clone());
        let n = mem_buf_total.max(4 << 20);
        rt.set("memory_limit", q(&size_text(n)), &at);
    }
    if !rt.keys.is_empty() {
        tables_head.push(rt);
    }

    let mut g = Generated {
        lines: Vec::new(),
        origins: Vec::new(),
    };
    let push = |g: &mut Generated, line: String, at: Option<Origin>| {
        g.lines.push(line);
        g.origins.push(at);
    };
    push(
        &mut g,
        "# Translated from a Fluent Bit classic config by `firelane check --print-toml`.".into(),
        None,
    );
    push(
        &mut g,
        "# Each table names the .conf line it came from.".into(),
        None,
    );
    let all = tables_head
        .into_iter()
        .chain(inputs.into_iter().map(|i| i.table))
        .chain(processors)
        .chain(routes)
        .chain(outputs);
    for t in all {
        push(&mut g, String::new(), Some(t.at.clone()));
        push(
            &mut g,
            format!(
                "# {}",
                t.comment.clone().unwrap_or_else(|| t.at.to_string())
            ),
            Some(t.at.clone()),
        );
        push(&mut g, format!("[{}]", t.header), Some(t.at.clone()));
        for (key, v, at) in t.keys {
            push(&mut g, format!("{} = {v}", k(&key)), Some(at));
        }
    }
    g
}

#[derive(Default)]
struct ServiceOut {
    admin: Option<TomlTable>,
    runtime: Option<TomlTable>,
    /// `Flush`: how often Fluent Bit hands records to the outputs; firelane's
    /// `batch.max_age` of the outputs that send per flush.
    flush: Option<(Duration, Origin)>,
    /// `storage.sync`: fsync of disk buffers.
    fsync: Option<(String, Origin)>,
}

fn read_service(
    s: &Section,
    env: &super::Env<'_>,
    p: &mut Problems,
    out: &mut ServiceOut,
    parsers: &mut BTreeMap<String, (String, Origin)>,
) {
    let mut sec = Sec::new(s);
    let mut rt = out
        .runtime
        .take()
        .unwrap_or_else(|| TomlTable::new("runtime", &s.origin));
    rt.comment = Some(format!("{} [SERVICE]", s.origin));
    if let Some(e) = sec.take("flush")
        && let Some(v) = env.value(e, p)
        && let Some(d) = duration(e, &v, p)
    {
        out.flush = Some((d.max(Duration::from_millis(1)), e.origin.clone()));
    }
    if let Some(e) = sec.take("grace")
        && let Some(v) = env.value(e, p)
        && let Some(d) = duration(e, &v, p)
    {
        rt.set("shutdown_grace", q(&dur_text(d)), &e.origin);
    }
    if let Some(e) = sec.take("log_level")
        && let Some(v) = env.value(e, p)
    {
        let level = match v.trim().to_ascii_lowercase().as_str() {
            "off" | "error" => Some("error"),
            "warn" | "warning" => Some("warn"),
            "info" => Some("info"),
            "debug" => Some("debug"),
            "trace" => Some("trace"),
            _ => None,
        };
        match level {
            Some(l) => rt.set("log_level", q(l), &e.origin),
            None => p.error(
                &e.origin,
                format!("Log_Level: expected off, error, warn, info, debug or trace, found {v:?}"),
            ),
        }
    }
    let server = sec.take("http_server");
    let on = server
        .and_then(|e| env.value(e, p).and_then(|v| boolean(e, &v, p)))
        .unwrap_or(false);
    let host = sec.take("http_listen");
    let port = sec.take("http_port");
    if on || port.is_some() {
        // Fluent Bit listens on 0.0.0.0 by default when HTTP_Server is On; firelane's
        // admin port stays on loopback unless HTTP_Listen says otherwise (health checks
        // run inside the task).
        let h = host
            .and_then(|e| env.value(e, p))
            .unwrap_or_else(|| "127.0.0.1".into());
        let pt = port
            .and_then(|e| env.value(e, p))
            .unwrap_or_else(|| "2020".into());
        let at = port
            .or(host)
            .or(server)
            .map(|e| e.origin.clone())
            .unwrap_or_else(|| s.origin.clone());
        let mut a = TomlTable::new("admin", &s.origin);
        a.comment = Some(format!("{} [SERVICE] HTTP_Server", s.origin));
        a.set("listen", q(&host_port(&h, &pt)), &at);
        out.admin = Some(a);
    }
    if let Some(e) = sec.take("storage.path") {
        rt.set("data_dir", pass(&e.value), &e.origin);
    }
    if let Some(e) = sec.take("storage.sync")
        && let Some(v) = env.value(e, p)
    {
        match v.trim().to_ascii_lowercase().as_str() {
            // "normal" leaves flushing to the OS; firelane syncs once a second then.
            "normal" => out.fsync = Some(("1s".into(), e.origin.clone())),
            "full" => out.fsync = Some(("always".into(), e.origin.clone())),
            other => p.error(
                &e.origin,
                format!("storage.sync: expected normal or full, found {other:?}"),
            ),
        }
    }
    for e in sec.take_all("parsers_file") {
        let Some(v) = env.value(e, p) else { continue };
        let path = std::path::PathBuf::from(v.trim());
        let path = if path.is_absolute() {
            path
        } else {
            std::path::Path::new(&*e.origin.file)
                .parent()
                .map(|d| d.join(&path))
                .unwrap_or(path)
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut sub = Problems::default();
                for ps in super::classic::read(&path, &text, &mut sub) {
                    if ps.kind == "PARSER" {
                        read_parser(&ps, env, &mut sub, parsers);
                    }
                }
                p.errors.extend(sub.errors);
                p.warnings.extend(sub.warnings);
            }
            // The stock parsers file of the aws-for-fluent-bit image is not in firelane's
            // image; its `json` and `docker` parsers are JSON parsers, known below.
            Err(_) if v.trim().starts_with("/fluent-bit/") => p.warn(
                &e.origin,
                format!("Parsers_File {}: not found; Fluent Bit's stock parsers json and docker are known without it", v.trim()),
            ),
            Err(err) => p.error(&e.origin, format!("Parsers_File {}: cannot read: {err}", path.display())),
        }
    }
    // Accepted with no effect: README "Coming from aws-for-fluent-bit" says why.
    sec.accept(&[
        "daemon",
        "health_check",
        "hc_errors_count",
        "hc_retry_failure_count",
        "hc_period",
        "storage.checksum",
        "storage.backlog.mem_limit",
        "storage.max_chunks_up",
        "storage.metrics",
        "storage.delete_irrecoverable_chunks",
        "log_file",
        "coro_stack_size",
        "scheduler.cap",
        "scheduler.base",
    ]);
    if let Some(e) = s.get("daemon")
        && env
            .value(e, &mut Problems::default())
            .and_then(|v| boolean(e, &v, &mut Problems::default()))
            == Some(true)
    {
        p.error(
            &e.origin,
            "Daemon On: firelane runs in the foreground (as a container's process must)",
        );
    }
    if let Some(e) = s.get("log_file") {
        p.error(&e.origin, "Log_File: firelane logs to stderr (the container's log driver takes it); remove Log_File");
    }
    sec.finish("[SERVICE]", p);
    out.runtime = Some(rt);
}

fn read_parser(
    s: &Section,
    env: &super::Env<'_>,
    p: &mut Problems,
    parsers: &mut BTreeMap<String, (String, Origin)>,
) {
    // Parsers are only checked when a filter uses them: an unused parser of a shared
    // parsers file is no reason to refuse the config.
    let Some(name) = s.get("name").and_then(|e| env.value(e, p)) else {
        return;
    };
    let format = s
        .get("format")
        .and_then(|e| env.value(e, p))
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    parsers.insert(name.trim().to_string(), (format, s.origin.clone()));
}

/// A grep filter's rules: (key path, regex) lists and the logical op.
struct GrepRules {
    include: Vec<(String, String)>,
    exclude: Vec<(String, String)>,
    op: Option<String>,
}

fn grep_rules(
    sec: &mut Sec<'_>,
    what: &str,
    env: &super::Env<'_>,
    p: &mut Problems,
) -> Option<GrepRules> {
    let mut ok = true;
    let rule = |e: &Entry, p: &mut Problems| -> Option<(String, String)> {
        let v = env.value(e, p)?;
        let v = v.trim();
        let Some((key, re)) = v.split_once(char::is_whitespace) else {
            p.error(&e.origin, format!("{what}: {} expects KEY REGEX", e.key));
            return None;
        };
        match accessor_path(key) {
            Some(path) => Some((path, re.trim().to_string())),
            None => {
                p.error(&e.origin, format!("{what}: {key:?} is not a record key firelane can read ($log, $a['b'] or log)"));
                None
            }
        }
    };
    let mut include = Vec::new();
    for e in sec.take_all("regex") {
        match rule(e, p) {
            Some(r) => include.push(r),
            None => ok = false,
        }
    }
    let mut exclude = Vec::new();
    for e in sec.take_all("exclude") {
        match rule(e, p) {
            Some(r) => exclude.push(r),
            None => ok = false,
        }
    }
    let op = match sec.take("logical_op") {
        Some(e) => match env.value(e, p).map(|v| v.trim().to_ascii_lowercase()) {
            Some(v) if v == "legacy" => None,
            Some(v) if v == "and" || v == "or" => {
                if !include.is_empty() && !exclude.is_empty() {
                    p.error(&e.origin, format!("{what}: Logical_Op {v} cannot combine Regex and Exclude rules (Fluent Bit refuses it too)"));
                    ok = false;
                }
                Some(v)
            }
            Some(v) => {
                p.error(
                    &e.origin,
                    format!("{what}: Logical_Op: expected legacy, AND or OR, found {v:?}"),
                );
                ok = false;
                None
            }
            None => None,
        },
        None => None,
    };
    if include.is_empty() && exclude.is_empty() {
        p.error(&sec.s.origin, format!("{what}: no Regex or Exclude rule"));
        ok = false;
    }
    ok.then_some(GrepRules {
        include,
        exclude,
        op,
    })
}

fn key_rule(key: &str, re: &str) -> String {
    inline(&[("key".into(), q(key)), ("regex".into(), q(re))])
}

fn rules_value(rules: &[String]) -> String {
    if rules.len() == 1 {
        rules[0].clone()
    } else {
        arr(rules)
    }
}

fn grep_unscoped(name: &str, g: &GrepRules, at: &Origin) -> TomlTable {
    let mut t = TomlTable::new(format!("processors.{name}"), at);
    t.comment = Some(format!("{at} [FILTER] grep"));
    t.set("type", q("grep"), at);
    if !g.include.is_empty() {
        let r: Vec<String> = g.include.iter().map(|(k, re)| key_rule(k, re)).collect();
        t.set("include", rules_value(&r), at);
    }
    if !g.exclude.is_empty() {
        let r: Vec<String> = g.exclude.iter().map(|(k, re)| key_rule(k, re)).collect();
        t.set("exclude", rules_value(&r), at);
    }
    if let Some(op) = &g.op {
        t.set("logical_op", q(op), at);
    }
    t
}

/// An EventBridge wildcard operand for a Fluent Bit glob (`*` as is; `\` escaped).
fn wildcard(glob: &str) -> String {
    glob.replace('\\', "\\\\")
}

/// The grep filter restricted to records whose tag `m` selects: a record of another tag
/// passes. Built from one or more grep processors over [`TAG_FIELD`]:
/// - a Regex rule X: keep when the tag is not selected or X matches (`or`);
/// - an Exclude rule E: drop when the tag is selected and E matches (`and`).
fn grep_scoped(
    name: &str,
    g: &GrepRules,
    m: &TagMatch,
    at: &Origin,
) -> Result<Vec<TomlTable>, String> {
    let (selected, not_selected) = match m {
        TagMatch::All => unreachable_all(),
        TagMatch::Glob(glob) => (
            format!(
                "{{ pattern = {{ {TAG_FIELD} = [{{ wildcard = {} }}] }} }}",
                q(&wildcard(glob))
            ),
            Some(format!(
                "{{ pattern = {{ {TAG_FIELD} = [{{ anything-but = {{ wildcard = {} }} }}] }} }}",
                q(&wildcard(glob))
            )),
        ),
        TagMatch::Regex(r) => match regex_as_glob(r) {
            Some(glob) => (
                format!(
                    "{{ pattern = {{ {TAG_FIELD} = [{{ wildcard = {} }}] }} }}",
                    q(&wildcard(&glob))
                ),
                Some(format!(
                    "{{ pattern = {{ {TAG_FIELD} = [{{ anything-but = {{ wildcard = {} }} }}] }} }}",
                    q(&wildcard(&glob))
                )),
            ),
            None => (key_rule(TAG_FIELD, r), None),
        },
    };
    let mut out = Vec::new();
    let mut n = 0;
    let mut table = |logical: &str, dir: &str, rules: Vec<String>| {
        let mut t = TomlTable::new(
            format!(
                "processors.{name}_tagged{}",
                if n == 0 {
                    String::new()
                } else {
                    format!("_{n}")
                }
            ),
            at,
        );
        n += 1;
        t.comment = Some(format!(
            "{at} [FILTER] grep, for the tags its Match selects"
        ));
        t.set("type", q("grep"), at);
        t.set(dir, arr(&rules), at);
        t.set("logical_op", q(logical), at);
        t
    };
    let op = g.op.as_deref().unwrap_or("legacy");
    if !g.include.is_empty() {
        let not_sel = not_selected.ok_or_else(|| "a Regex rule with a Match_Regex that is not a plain glob cannot be scoped to its tags; use Match with a glob".to_string())?;
        let rules: Vec<String> = g.include.iter().map(|(k, re)| key_rule(k, re)).collect();
        if op == "or" {
            let mut all = vec![not_sel];
            all.extend(rules);
            out.push(table("or", "include", all));
        } else {
            for r in rules {
                out.push(table("or", "include", vec![not_sel.clone(), r]));
            }
        }
    }
    if !g.exclude.is_empty() {
        let rules: Vec<String> = g.exclude.iter().map(|(k, re)| key_rule(k, re)).collect();
        if op == "and" {
            let mut all = vec![selected];
            all.extend(rules);
            out.push(table("and", "exclude", all));
        } else {
            for r in rules {
                out.push(table("and", "exclude", vec![selected.clone(), r]));
            }
        }
    }
    Ok(out)
}

fn unreachable_all() -> (String, Option<String>) {
    // Match * is never scoped (see the caller); an always-true pair keeps this total.
    (
        format!("{{ pattern = {{ {TAG_FIELD} = [{{ exists = true }}] }} }}"),
        Some(format!(
            "{{ pattern = {{ {TAG_FIELD} = [{{ exists = false }}] }} }}"
        )),
    )
}

/// `Record KEY VALUE` → fields add; `Remove_key` → fields remove.
fn record_modifier(
    name: &str,
    sec: &mut Sec<'_>,
    env: &super::Env<'_>,
    p: &mut Problems,
) -> Vec<TomlTable> {
    let at = sec.s.origin.clone();
    let mut t = TomlTable::new(format!("processors.{name}"), &at);
    t.comment = Some(format!("{at} [FILTER] record_modifier"));
    t.set("type", q("fields"), &at);
    let mut add = Vec::new();
    let mut add_at = at.clone();
    for e in sec.take_all("record") {
        let v = e.value.trim();
        match v.split_once(char::is_whitespace) {
            Some((key, value)) => {
                add.push((key.to_string(), pass(&template_literal(value.trim()))));
                add_at = e.origin.clone();
            }
            None => p.error(&e.origin, "Record expects KEY VALUE"),
        }
    }
    let mut remove = Vec::new();
    for e in sec.take_all("remove_key") {
        if let Some(v) = env.value(e, p) {
            remove.push(q(v.trim()));
        }
    }
    for key in ["allowlist_key", "whitelist_key"] {
        for e in sec.take_all(key) {
            p.error(&e.origin, format!("[FILTER] record_modifier: {} is not supported (keeping only listed keys); remove the other keys with Remove_key", e.key));
        }
    }
    if let Some(e) = sec.take("uuid_key") {
        p.error(
            &e.origin,
            "[FILTER] record_modifier: Uuid_key is not supported",
        );
    }
    if !add.is_empty() {
        t.set("add", inline(&add), &add_at);
    }
    if !remove.is_empty() {
        t.set("remove", arr(&remove), &at);
    }
    if add.is_empty() && remove.is_empty() {
        return Vec::new();
    }
    vec![t]
}

/// One `modify` rule: (stage in the fields processor's order, its key there, the
/// record key, the value or new name, where it was written).
type ModifyOp = (usize, &'static str, String, Option<String>, Origin);

/// `key = value` pairs of one fields operation and the line of the last.
type PairsAt = (Vec<(String, String)>, Origin);

/// `modify` rules in order. The fields processor applies copy, rename, add,
/// add_if_missing, remove in that fixed order, so consecutive rules share a processor
/// only while they follow that order; otherwise a new one starts.
fn modify(name: &str, sec: &mut Sec<'_>, env: &super::Env<'_>, p: &mut Problems) -> Vec<TomlTable> {
    let at = sec.s.origin.clone();
    // (stage, op key, key, value, origin)
    let mut ops: Vec<ModifyOp> = Vec::new();
    for (i, e) in sec.s.entries.iter().enumerate() {
        let (stage, op, two) = match e.lower.as_str() {
            "copy" | "hard_copy" => (0, "copy", true),
            "rename" | "hard_rename" => (1, "rename", true),
            "set" => (2, "add", true),
            "add" => (3, "add_if_missing", true),
            "remove" => (4, "remove", false),
            "match" | "match_regex" | "name" | "alias" | "log_level" => continue,
            _ => continue,
        };
        sec.used[i] = true;
        let v = e.value.trim();
        if two {
            match v.split_once(char::is_whitespace) {
                Some((a, b)) => ops.push((
                    stage,
                    op,
                    a.to_string(),
                    Some(b.trim().to_string()),
                    e.origin.clone(),
                )),
                None => p.error(&e.origin, format!("{} expects KEY VALUE", e.key)),
            }
        } else {
            if let Some(v) = env.value(e, p) {
                ops.push((stage, op, v.trim().to_string(), None, e.origin.clone()));
            }
        }
    }
    for key in [
        "condition",
        "remove_wildcard",
        "remove_regex",
        "move_to_start",
        "move_to_end",
    ] {
        for e in sec.take_all(key) {
            p.error(&e.origin, format!("[FILTER] modify: {} is not supported; firelane's fields processor does copy, rename, set (add), add (add_if_missing) and remove", e.key));
        }
    }
    let mut out = Vec::new();
    let mut groups: Vec<Vec<ModifyOp>> = Vec::new();
    for op in ops {
        match groups.last_mut() {
            Some(g) if g.last().is_some_and(|l| l.0 <= op.0) => g.push(op),
            _ => groups.push(vec![op]),
        }
    }
    for (n, g) in groups.into_iter().enumerate() {
        let pname = if n == 0 {
            name.to_string()
        } else {
            format!("{name}_{n}")
        };
        let mut t = TomlTable::new(format!("processors.{pname}"), &at);
        t.comment = Some(format!("{at} [FILTER] modify"));
        t.set("type", q("fields"), &at);
        let mut maps: BTreeMap<&str, PairsAt> = BTreeMap::new();
        let mut remove = Vec::new();
        let mut remove_at = at.clone();
        for (_, op, key, value, origin) in g {
            match value {
                Some(v) => {
                    let v = if op == "copy" || op == "rename" {
                        pass(&v)
                    } else {
                        pass(&template_literal(&v))
                    };
                    let entry = maps
                        .entry(op)
                        .or_insert_with(|| (Vec::new(), origin.clone()));
                    entry.0.push((key, v));
                    entry.1 = origin;
                }
                None => {
                    remove.push(q(&key));
                    remove_at = origin;
                }
            }
        }
        for op in ["copy", "rename", "add", "add_if_missing"] {
            if let Some((pairs, origin)) = maps.remove(op) {
                t.set(op, inline(&pairs), &origin);
            }
        }
        if !remove.is_empty() {
            t.set("remove", arr(&remove), &remove_at);
        }
        out.push(t);
    }
    out
}

/// `nest` with `Operation lift` → a fields processor's `lift = { Nested_under = Add_prefix }`.
/// `Operation nest` (gathering keys under a new map) has no firelane counterpart.
fn nest(name: &str, sec: &mut Sec<'_>, env: &super::Env<'_>, p: &mut Problems) -> Vec<TomlTable> {
    let at = sec.s.origin.clone();
    let op = sec.take("operation").and_then(|e| env.value(e, p));
    let under = sec.take("nested_under").and_then(|e| env.value(e, p));
    let prefix = sec.take("add_prefix").and_then(|e| env.value(e, p));
    for key in ["wildcard", "nest_under", "remove_prefix"] {
        for e in sec.take_all(key) {
            p.error(&e.origin, format!("[FILTER] nest: {} is not supported; firelane's fields processor lifts one map (Operation lift, Nested_under, Add_prefix)", e.key));
        }
    }
    match op.as_deref().map(|o| o.trim().to_ascii_lowercase()) {
        Some(o) if o == "lift" => {}
        Some(o) => {
            p.error(&at, format!("[FILTER] nest: Operation {o} is not supported; only Operation lift (firelane's fields processor `lift`)"));
            return Vec::new();
        }
        None => {
            p.error(&at, "[FILTER] nest: Operation is required (lift)");
            return Vec::new();
        }
    }
    let Some(under) = under else {
        p.error(
            &at,
            "[FILTER] nest: Nested_under is required with Operation lift",
        );
        return Vec::new();
    };
    let mut t = TomlTable::new(format!("processors.{name}"), &at);
    t.comment = Some(format!("{at} [FILTER] nest (lift)"));
    t.set("type", q("fields"), &at);
    let prefix = prefix.map(|v| v.trim().to_string()).unwrap_or_default();
    t.set(
        "lift",
        inline(&[(under.trim().to_string(), pass(&prefix))]),
        &at,
    );
    vec![t]
}

/// `parser` with a JSON parser → parse_json merged into the record.
fn parser(
    name: &str,
    sec: &mut Sec<'_>,
    env: &super::Env<'_>,
    p: &mut Problems,
    parsers: &BTreeMap<String, (String, Origin)>,
) -> Vec<TomlTable> {
    let at = sec.s.origin.clone();
    let key = sec.take("key_name").and_then(|e| env.value(e, p));
    let Some(key) = key else {
        p.error(&at, "[FILTER] parser: Key_Name is required");
        return Vec::new();
    };
    let names = sec.take_all("parser");
    if names.len() != 1 {
        p.error(&at, "[FILTER] parser: exactly one Parser is supported");
        return Vec::new();
    }
    let pe = names[0];
    let Some(pname) = env.value(pe, p) else {
        return Vec::new();
    };
    let pname = pname.trim();
    let format = match parsers.get(pname) {
        Some((f, _)) => f.clone(),
        // The stock parsers of the aws-for-fluent-bit image (parsers.conf): both JSON.
        None if pname == "json" || pname == "docker" => "json".into(),
        None => {
            p.error(&pe.origin, format!("[FILTER] parser: parser {pname} is not defined (no [PARSER] with that Name here or in a Parsers_File)"));
            return Vec::new();
        }
    };
    if format != "json" {
        p.error(&pe.origin, format!("[FILTER] parser: parser {pname} has Format {format}; firelane parses JSON only (parse_json)"));
        return Vec::new();
    }
    let reserve = sec
        .take("reserve_data")
        .and_then(|e| env.value(e, p).and_then(|v| boolean(e, &v, p)))
        .unwrap_or(false);
    if !reserve {
        p.error(&at, "[FILTER] parser: without Reserve_Data On Fluent Bit drops every other key of the record; firelane keeps them (parse_json merges): add Reserve_Data On");
    }
    let preserve = sec
        .take("preserve_key")
        .and_then(|e| env.value(e, p).and_then(|v| boolean(e, &v, p)))
        .unwrap_or(false);
    if let Some(e) = sec.take("unescape_key") {
        p.error(&e.origin, "[FILTER] parser: Unescape_Key is not supported");
    }
    let mut t = TomlTable::new(format!("processors.{name}"), &at);
    t.comment = Some(format!("{at} [FILTER] parser ({pname}: json)"));
    t.set("type", q("parse_json"), &at);
    t.set("key", q(key.trim()), &at);
    t.set("merge", "true".into(), &at);
    t.set(
        "keep_key",
        if preserve { "true" } else { "false" }.into(),
        &at,
    );
    vec![t]
}

/// `multiline` with a built-in java/python/go parser, or `mode partial_message`.
fn multiline(
    name: &str,
    sec: &mut Sec<'_>,
    env: &super::Env<'_>,
    p: &mut Problems,
) -> Vec<TomlTable> {
    let at = sec.s.origin.clone();
    let mode = sec
        .take("mode")
        .and_then(|e| env.value(e, p))
        .map(|v| v.trim().to_ascii_lowercase());
    let key = sec
        .take("multiline.key_content")
        .and_then(|e| env.value(e, p));
    let flush = sec.take("flush_ms").and_then(|e| {
        env.value(e, p).and_then(|v| match v.trim().parse::<u64>() {
            Ok(ms) => Some(format!("{ms}ms")),
            Err(_) => {
                p.error(&e.origin, "flush_ms: expected milliseconds");
                None
            }
        })
    });
    sec.accept(&[
        "buffer",
        "emitter_name",
        "emitter_storage.type",
        "emitter_mem_buf_limit",
    ]);
    let mut t = TomlTable::new(format!("processors.{name}"), &at);
    t.comment = Some(format!("{at} [FILTER] multiline"));
    if mode.as_deref() == Some("partial_message") {
        t.set("type", q("partial"), &at);
        sec.take("multiline.parser");
        return vec![t];
    }
    if let Some(m) = &mode
        && m != "parser"
    {
        p.error(
            &at,
            format!("[FILTER] multiline: mode {m} is not supported (parser or partial_message)"),
        );
        return Vec::new();
    }
    let Some(pe) = sec.take("multiline.parser") else {
        p.error(&at, "[FILTER] multiline: multiline.parser is required");
        return Vec::new();
    };
    let Some(parsers) = env.value(pe, p) else {
        return Vec::new();
    };
    let list: Vec<String> = parsers
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if list.len() != 1 || !["java", "python", "go"].contains(&list[0].as_str()) {
        p.error(&pe.origin, format!("[FILTER] multiline: multiline.parser {parsers:?}: firelane has the built-in java, python and go modes, one per filter"));
        return Vec::new();
    }
    t.set("type", q("multiline"), &at);
    t.set("mode", q(&list[0]), &pe.origin);
    if let Some(key) = key {
        t.set("key", q(key.trim()), &at);
    }
    if let Some(f) = flush {
        t.set("flush_timeout", q(&f), &at);
    }
    vec![t]
}

/// `rewrite_tag` with one `Rule $KEY REGEX NEW_TAG KEEP`.
fn rewrite_tag(
    name: &str,
    sec: &mut Sec<'_>,
    env: &super::Env<'_>,
    p: &mut Problems,
) -> Vec<TomlTable> {
    let at = sec.s.origin.clone();
    sec.accept(&[
        "emitter_name",
        "emitter_storage.type",
        "emitter_mem_buf_limit",
    ]);
    let rules = sec.take_all("rule");
    if rules.len() != 1 {
        p.error(&at, "[FILTER] rewrite_tag: exactly one Rule per filter is supported (write one filter per rule)");
        return Vec::new();
    }
    let e = rules[0];
    let Some(v) = env.value(e, p) else {
        return Vec::new();
    };
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 4 {
        p.error(&e.origin, "Rule expects $KEY REGEX NEW_TAG KEEP");
        return Vec::new();
    }
    let Some(key) = accessor_path(parts[0]) else {
        p.error(
            &e.origin,
            format!("Rule: {:?} is not a record key firelane can read", parts[0]),
        );
        return Vec::new();
    };
    if (0..10).any(|d| parts[2].contains(&format!("${d}"))) {
        p.error(
            &e.origin,
            "Rule: regex captures ($1…) in the new tag are not supported",
        );
        return Vec::new();
    }
    let tag = match convert_template(
        parts[2],
        TemplateRules {
            s3: false,
            tag_parts: false,
            accessors: true,
        },
    ) {
        Ok(t) => t,
        Err(err) => {
            p.error(&e.origin, format!("Rule: new tag: {err}"));
            return Vec::new();
        }
    };
    let keep = boolean(e, parts[3], p).unwrap_or(false);
    let mut t = TomlTable::new(format!("processors.{name}"), &at);
    t.comment = Some(format!("{at} [FILTER] rewrite_tag"));
    t.set("type", q("rewrite_tag"), &at);
    t.set("match", key_rule(&key, parts[1]), &e.origin);
    t.set("tag", q(&tag), &e.origin);
    t.set("keep", keep.to_string(), &e.origin);
    vec![t]
}

/// `Retry_Limit`, `Workers`, `storage.total_limit_size` and the buffer type.
fn common_output_keys(
    sec: &mut Sec<'_>,
    t: &mut TomlTable,
    env: &super::Env<'_>,
    p: &mut Problems,
    disk: Option<&ServiceOut>,
) {
    if let Some(e) = sec.take("retry_limit")
        && let Some(v) = env.value(e, p)
    {
        match v.trim().to_ascii_lowercase().as_str() {
            // Fluent Bit: retry forever. firelane's default: until shutdown_grace ends.
            "no_limits" | "false" | "off" => {}
            "no_retries" => t.set(
                "retry",
                inline(&[("max_retries".into(), "0".into())]),
                &e.origin,
            ),
            n => match n.parse::<u32>() {
                Ok(n) => t.set(
                    "retry",
                    inline(&[("max_retries".into(), n.to_string())]),
                    &e.origin,
                ),
                Err(_) => p.error(
                    &e.origin,
                    format!("Retry_Limit: expected a number, no_limits or no_retries, found {v:?}"),
                ),
            },
        }
    }
    if let Some(e) = sec.take("workers")
        && let Some(v) = env.value(e, p)
    {
        match v.trim().parse::<u64>() {
            Ok(n) => t.set("concurrency", n.max(1).to_string(), &e.origin),
            Err(_) => p.error(&e.origin, "Workers: expected a number"),
        }
    }
    let limit = sec.take("storage.total_limit_size").and_then(|e| {
        env.value(e, p)
            .and_then(|v| size(e, &v, p))
            .map(|n| (n, e.origin.clone()))
    });
    if let Some(service) = disk {
        let mut b = vec![("type".to_string(), q("disk"))];
        if let Some((f, _)) = &service.fsync {
            b.push(("fsync".into(), q(f)));
        }
        if let Some((n, _)) = &limit {
            b.push(("max_size".into(), q(&size_text(*n))));
        }
        let at = limit
            .map(|(_, o)| o)
            .unwrap_or_else(|| sec.s.origin.clone());
        t.set("buffer", inline(&b), &at);
    } else if let Some((_, o)) = limit {
        p.warn(&o, "storage.total_limit_size applies to filesystem buffers; no input here has storage.type filesystem");
    }
    // Transport tuning with no firelane counterpart (connections are pooled and kept
    // alive by the AWS SDK / HTTP client).
    sec.accept_prefix("net.");
    sec.accept(&["log_level", "auto_retry_requests", "storage.type"]);
}

/// `log_key`, `time_key` and `time_key_format` of the Firehose and Kinesis plugins (C and
/// Go), which write one record per log record alike.
fn record_keys(sec: &mut Sec<'_>, t: &mut TomlTable, p: &mut Problems, what: &str) {
    if let Some(e) = sec.take("log_key") {
        t.set("log_key", pass(e.value.trim()), &e.origin);
    }
    if let Some(e) = sec.take("time_key") {
        t.set("time_key", pass(e.value.trim()), &e.origin);
        p.warn(&e.origin, "time_key: firelane writes the time as RFC 3339 with nanoseconds (2026-01-02T03:04:05.123456789Z), not time_key_format");
    }
    if let Some(e) = sec.take("time_key_format") {
        p.error(&e.origin, format!("{what}: time_key_format is not supported (firelane writes RFC 3339 UTC with nanoseconds); remove it"));
    }
}

/// The plugin's own options. Returns false when the plugin is not supported (reported).
fn output(
    plugin: &str,
    sec: &mut Sec<'_>,
    t: &mut TomlTable,
    env: &super::Env<'_>,
    p: &mut Problems,
    service: &ServiceOut,
) -> bool {
    let at = sec.s.origin.clone();
    let what = format!("[OUTPUT] {plugin}");
    let flush_age = |t: &mut TomlTable| {
        if let Some((d, o)) = &service.flush {
            t.set("batch", inline(&[("max_age".into(), q(&dur_text(*d)))]), o);
        }
    };
    let aws = |sec: &mut Sec<'_>, t: &mut TomlTable, p: &mut Problems, path_style: bool| {
        if let Some(e) = sec.take("region") {
            t.set("region", pass(e.value.trim()), &e.origin);
        }
        if let Some(e) = sec.take("endpoint") {
            let v = e.value.trim();
            let url =
                if v.starts_with("http://") || v.starts_with("https://") || v.starts_with("${") {
                    v.to_string()
                } else {
                    format!("https://{v}")
                };
            t.set("endpoint_url", pass(&url), &e.origin);
            if path_style {
                // Fluent Bit's s3 output addresses a custom endpoint path-style.
                t.set("force_path_style", "true".into(), &e.origin);
            }
        }
        if let Some(e) = sec.take("role_arn") {
            t.set("role_arn", pass(e.value.trim()), &e.origin);
        }
        for key in ["external_id", "sts_endpoint", "profile"] {
            if let Some(e) = sec.take(key) {
                p.error(&e.origin, format!("{what}: {} is not supported; firelane uses the standard AWS credential chain (task role) and role_arn", e.key));
            }
        }
    };
    match plugin {
        "cloudwatch_logs" | "cloudwatch" => {
            let go = plugin == "cloudwatch";
            t.set("type", q("cloudwatch_logs"), &at);
            aws(sec, t, p, false);
            // The Go plugin templates log_group_name / log_stream_name with $(…); the C
            // plugin has separate *_template options with record accessors and $TAG.
            let rules_go = TemplateRules {
                s3: false,
                tag_parts: false,
                accessors: false,
            };
            let rules_c = TemplateRules {
                s3: false,
                tag_parts: false,
                accessors: true,
            };
            let conv = |e: &Entry, rules: TemplateRules, p: &mut Problems| -> Option<String> {
                match convert_template(e.value.trim(), rules) {
                    Ok(s) => Some(s),
                    Err(err) => {
                        p.error(&e.origin, format!("{what}: {}: {err}", e.key));
                        None
                    }
                }
            };
            let static_name = |e: &Entry| template_literal(e.value.trim());
            let group = sec.take("log_group_name");
            let group_t = sec.take("log_group_template");
            let group_v = match (group_t, group) {
                (Some(e), _) => conv(e, rules_c, p).map(|v| (v, e.origin.clone())),
                (None, Some(e)) if go => conv(e, rules_go, p).map(|v| (v, e.origin.clone())),
                (None, Some(e)) => Some((static_name(e), e.origin.clone())),
                (None, None) => {
                    p.error(&at, format!("{what}: log_group_name is required"));
                    None
                }
            };
            if let Some((v, o)) = group_v {
                t.set("log_group", pass(&v), &o);
            }
            let stream = sec.take("log_stream_name");
            let prefix = sec.take("log_stream_prefix");
            let stream_t = sec.take("log_stream_template");
            let stream_v = match (stream_t, stream, prefix) {
                (_, Some(_), Some(e)) => {
                    p.error(
                        &e.origin,
                        format!("{what}: set log_stream_name or log_stream_prefix, not both"),
                    );
                    None
                }
                (Some(e), _, _) => conv(e, rules_c, p).map(|v| (v, e.origin.clone())),
                (None, Some(e), None) if go => conv(e, rules_go, p).map(|v| (v, e.origin.clone())),
                (None, Some(e), None) => Some((static_name(e), e.origin.clone())),
                // The stream is the prefix followed by the record's tag.
                (None, None, Some(e)) => {
                    let pre = if go {
                        conv(e, rules_go, p)
                    } else {
                        Some(static_name(e))
                    };
                    pre.map(|v| (format!("{v}{{tag}}"), e.origin.clone()))
                }
                (None, None, None) => {
                    p.error(
                        &at,
                        format!("{what}: log_stream_name or log_stream_prefix is required"),
                    );
                    None
                }
            };
            if let Some((v, o)) = stream_v {
                t.set("log_stream", pass(&v), &o);
            }
            // Fluent Bit creates streams always and groups with auto_create_group; firelane's
            // auto_create does both, so it stays on (see README).
            sec.take("auto_create_group");
            sec.take("auto_create_stream");
            if let Some(e) = sec.take("log_retention_days")
                && let Some(v) = env.value(e, p)
            {
                match v.trim().parse::<u64>() {
                    Ok(0) => {}
                    Ok(n) => t.set("retention_days", n.to_string(), &e.origin),
                    Err(_) => p.error(&e.origin, "log_retention_days: expected a number of days"),
                }
            }
            if let Some(e) = sec.take("log_key") {
                t.set("log_key", pass(e.value.trim()), &e.origin);
            }
            if let Some(e) = sec.take("new_log_group_tags")
                && let Some(v) = env.value(e, p)
            {
                let mut tags = Vec::new();
                for kv in v.split(',').filter(|s| !s.trim().is_empty()) {
                    match kv.split_once('=') {
                        Some((a, b)) => tags.push((a.trim().to_string(), q(b.trim()))),
                        None => p.error(
                            &e.origin,
                            "new_log_group_tags: expected key=value,key=value",
                        ),
                    }
                }
                t.set("tags", inline(&tags), &e.origin);
            }
            if let Some(e) = sec.take("log_format")
                && let Some(v) = env.value(e, p)
                && !v.trim().eq_ignore_ascii_case("json")
            {
                p.error(
                    &e.origin,
                    format!("{what}: log_format {} (EMF) is not supported", v.trim()),
                );
            }
            for key in [
                "log_group_class",
                "metric_namespace",
                "metric_dimensions",
                "default_log_group_name",
                "default_log_stream_name",
                "credentials_endpoint",
                "add_entity",
                "extra_user_agent",
            ] {
                if let Some(e) = sec.take(key) {
                    p.error(&e.origin, format!("{what}: {} is not supported", e.key));
                }
            }
            flush_age(t);
        }
        "kinesis_firehose" | "firehose" => {
            t.set("type", q("firehose"), &at);
            aws(sec, t, p, false);
            match sec.take("delivery_stream") {
                Some(e) => t.set("delivery_stream", pass(e.value.trim()), &e.origin),
                None => p.error(&at, format!("{what}: delivery_stream is required")),
            }
            record_keys(sec, t, p, &what);
            if let Some(e) = sec.take("compression")
                && let Some(v) = env.value(e, p)
                && !v.trim().eq_ignore_ascii_case("none")
            {
                p.error(&e.origin, format!("{what}: compression {} of each Firehose record is not supported; let the delivery stream compress (its S3 destination's CompressionFormat)", v.trim()));
            }
            if let Some(e) = sec.take("simple_aggregation")
                && let Some(v) = env.value(e, p)
                && boolean(e, &v, p) == Some(true)
            {
                t.set("aggregate", "true".into(), &e.origin);
            }
            for key in ["data_keys", "replace_dots"] {
                if let Some(e) = sec.take(key) {
                    p.error(&e.origin, format!("{what}: {} is not supported", e.key));
                }
            }
            flush_age(t);
        }
        "s3" => {
            t.set("type", q("s3"), &at);
            aws(sec, t, p, true);
            match sec.take("bucket") {
                Some(e) => t.set("bucket", pass(e.value.trim()), &e.origin),
                None => p.error(&at, format!("{what}: bucket is required")),
            }
            let delims = sec
                .take("s3_key_format_tag_delimiters")
                .and_then(|e| env.value(e, p))
                .unwrap_or_else(|| ".".into());
            let mut ds: Vec<char> = delims.trim().chars().collect();
            ds.sort();
            ds.dedup();
            let rules = TemplateRules {
                s3: true,
                tag_parts: ds == ['-', '.'],
                accessors: false,
            };
            let (fmt, fmt_at) = match sec.take("s3_key_format") {
                Some(e) => (e.value.trim().to_string(), e.origin.clone()),
                None => (
                    "/fluent-bit-logs/$TAG/%Y/%m/%d/%H/%M/%S".to_string(),
                    at.clone(),
                ),
            };
            match convert_template(&fmt, rules) {
                // S3 keys have no leading "/" (Fluent Bit's format requires one and sends
                // PutObject to /<bucket><key>).
                Ok(key) => t.set("key", pass(key.trim_start_matches('/')), &fmt_at),
                Err(err) => p.error(&fmt_at, format!("{what}: s3_key_format: {err}")),
            }
            let mut batch = Vec::new();
            if let Some(e) = sec.take("total_file_size")
                && let Some(v) = env.value(e, p)
                && let Some(n) = size(e, &v, p)
            {
                batch.push(("max_bytes".to_string(), q(&size_text(n)), e.origin.clone()));
            }
            if let Some(e) = sec.take("upload_timeout")
                && let Some(v) = env.value(e, p)
                && let Some(d) = duration(e, &v, p)
            {
                batch.push(("max_age".to_string(), q(&dur_text(d)), e.origin.clone()));
            } else {
                // Fluent Bit's default upload_timeout.
                batch.push(("max_age".to_string(), q("10m"), at.clone()));
            }
            let b_at = batch
                .last()
                .map(|b| b.2.clone())
                .unwrap_or_else(|| at.clone());
            let pairs: Vec<(String, String)> = batch.into_iter().map(|(a, b, _)| (a, b)).collect();
            t.set("batch", inline(&pairs), &b_at);
            if let Some(e) = sec.take("compression")
                && let Some(v) = env.value(e, p)
            {
                match v.trim().to_ascii_lowercase().as_str() {
                    "gzip" => t.set("compression", q("gzip"), &e.origin),
                    "zstd" => t.set("compression", q("zstd"), &e.origin),
                    "none" | "" => {}
                    other => p.error(
                        &e.origin,
                        format!("{what}: compression {other} is not supported (gzip, zstd)"),
                    ),
                }
            }
            if let Some(e) = sec.take("storage_class") {
                t.set("storage_class", pass(e.value.trim()), &e.origin);
            }
            if let Some(e) = sec.take("content_type") {
                t.set("content_type", pass(e.value.trim()), &e.origin);
            }
            if let Some(e) = sec.take("canned_acl") {
                t.set("acl", pass(e.value.trim()), &e.origin);
            }
            if let Some(e) = sec.take("log_key") {
                t.set("log_key", pass(e.value.trim()), &e.origin);
            }
            // Fluent Bit adds the record time under json_date_key ("date") to every line.
            match sec.take("json_date_key") {
                Some(e) => {
                    if let Some(v) = env.value(e, p)
                        && !matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "off")
                    {
                        t.set("time_key", pass(v.trim()), &e.origin);
                    }
                }
                None => t.set("time_key", q("date"), &at),
            }
            if let Some(e) = sec.take("json_date_format")
                && let Some(v) = env.value(e, p)
                && !v.trim().eq_ignore_ascii_case("iso8601")
            {
                p.error(&e.origin, format!("{what}: json_date_format {} is not supported (firelane writes RFC 3339 / ISO 8601 with nanoseconds); remove it", v.trim()));
            }
            if let Some(e) = sec.take("format")
                && let Some(v) = env.value(e, p)
                && !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "json" | "json_lines"
                )
            {
                p.error(
                    &e.origin,
                    format!("{what}: format {} is not supported (JSON lines)", v.trim()),
                );
            }
            for key in [
                "static_file_path",
                "send_content_md5",
                "retry_exhausted_action",
            ] {
                if let Some(e) = sec.take(key) {
                    p.error(&e.origin, format!("{what}: {} is not supported", e.key));
                }
            }
            // firelane decides PutObject vs multipart upload itself and buffers in its own
            // buffers (memory, or disk under runtime.data_dir), not in store_dir.
            sec.accept(&[
                "use_put_object",
                "upload_chunk_size",
                "store_dir",
                "store_dir_limit_size",
                "preserve_data_ordering",
            ]);
        }
        "null" => {
            t.set("type", q("null"), &at);
            flush_age(t);
        }
        "stdout" => {
            t.set("type", q("stdout"), &at);
            if let Some(e) = sec.take("format")
                && let Some(v) = env.value(e, p)
                && !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "json_lines" | "json"
                )
            {
                p.error(
                    &e.origin,
                    format!(
                        "{what}: format {} is not supported (firelane prints JSON lines)",
                        v.trim()
                    ),
                );
            }
            sec.accept(&["json_date_key", "json_date_format"]);
            flush_age(t);
        }
        "file" => {
            t.set("type", q("file"), &at);
            let dir = sec.take("path");
            match sec.take("file") {
                Some(f) => {
                    let path = match dir {
                        Some(d) => format!(
                            "{}/{}",
                            d.value.trim().trim_end_matches('/'),
                            f.value.trim()
                        ),
                        None => f.value.trim().to_string(),
                    };
                    t.set("path", pass(&path), &f.origin);
                }
                None => p.error(
                    &at,
                    format!("{what}: set File: firelane writes one file, not one per tag"),
                ),
            }
            match sec.take("format") {
                Some(e) => {
                    if let Some(v) = env.value(e, p)
                        && !v.trim().eq_ignore_ascii_case("plain")
                    {
                        p.error(&e.origin, format!("{what}: format {} is not supported (firelane writes JSON lines, as Format plain)", v.trim()));
                    }
                }
                None => p.warn(&at, format!("{what}: firelane writes each record as a JSON line (Fluent Bit's Format plain), not `tag: [time, record]`")),
            }
            sec.accept(&["mkdir"]);
            flush_age(t);
        }
        "http" => {
            t.set("type", q("http"), &at);
            let host = sec
                .take("host")
                .and_then(|e| env.value(e, p))
                .unwrap_or_else(|| "127.0.0.1".into());
            let port = sec
                .take("port")
                .and_then(|e| env.value(e, p))
                .unwrap_or_else(|| "80".into());
            let uri = sec
                .take("uri")
                .and_then(|e| env.value(e, p))
                .unwrap_or_else(|| "/".into());
            let tls = sec
                .take("tls")
                .and_then(|e| env.value(e, p).and_then(|v| boolean(e, &v, p)))
                .unwrap_or(false);
            sec.accept(&["tls.verify"]);
            let scheme = if tls { "https" } else { "http" };
            t.set(
                "url",
                pass(&format!(
                    "{scheme}://{}:{}{}",
                    host.trim(),
                    port.trim(),
                    uri.trim()
                )),
                &at,
            );
            match sec.take("format").and_then(|e| env.value(e, p).map(|v| (v, e))) {
                Some((v, _)) if v.trim().eq_ignore_ascii_case("json_lines") => {}
                Some((v, e)) => p.error(&e.origin, format!("{what}: format {} is not supported; firelane posts NDJSON (Format json_lines)", v.trim())),
                None => p.error(&at, format!("{what}: Fluent Bit's default format is msgpack; firelane posts NDJSON: set Format json_lines")),
            }
            let mut headers = Vec::new();
            for e in sec.take_all("header") {
                match e.value.trim().split_once(char::is_whitespace) {
                    Some((a, b)) => headers.push((a.to_string(), pass(b.trim()))),
                    None => p.error(&e.origin, "Header expects NAME VALUE"),
                }
            }
            if !headers.is_empty() {
                t.set("headers", inline(&headers), &at);
            }
            if let Some(e) = sec.take("compress")
                && let Some(v) = env.value(e, p)
            {
                match v.trim().to_ascii_lowercase().as_str() {
                    "gzip" => t.set("compression", q("gzip"), &e.origin),
                    other => p.error(
                        &e.origin,
                        format!("{what}: compress {other} is not supported (gzip)"),
                    ),
                }
            }
            match sec.take("json_date_key") {
                Some(e) => {
                    if let Some(v) = env.value(e, p)
                        && !matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "off")
                    {
                        t.set("time_key", pass(v.trim()), &e.origin);
                    }
                }
                None => t.set("time_key", q("date"), &at),
            }
            for key in [
                "http_user",
                "http_passwd",
                "json_date_format",
                "proxy",
                "allow_duplicated_headers",
            ] {
                if let Some(e) = sec.take(key) {
                    p.error(
                        &e.origin,
                        format!(
                            "{what}: {} is not supported; set an Authorization Header instead",
                            e.key
                        ),
                    );
                }
            }
            flush_age(t);
        }
        // The C plugin (`kinesis_streams`) and the Go plugin (`kinesis`,
        // amazon-kinesis-streams-for-fluent-bit) both write one newline-terminated JSON
        // record (or the `log_key` value) per Kinesis record, as firelane does.
        "kinesis_streams" | "kinesis" => {
            let go = plugin == "kinesis";
            t.set("type", q("kinesis"), &at);
            aws(sec, t, p, false);
            match sec.take("stream") {
                Some(e) => t.set("stream", pass(e.value.trim()), &e.origin),
                None => p.error(&at, format!("{what}: stream is required")),
            }
            record_keys(sec, t, p, &what);
            // The C plugin always uses a random key (firelane's default); the Go plugin's
            // `partition_key` names a field (`a->b` for a nested one) and falls back to a
            // random key when a record lacks it, which firelane does for a key that renders
            // only `-`.
            if go && let Some(e) = sec.take("partition_key") {
                let parts: Vec<&str> = e.value.trim().split("->").map(str::trim).collect();
                if parts
                    .iter()
                    .any(|k| k.is_empty() || k.contains(['{', '}', '[', ']', '|', '?', '$']))
                {
                    p.error(
                        &e.origin,
                        format!(
                            "{what}: partition_key {:?}: expected a field name, or fields joined by -> for a nested one",
                            e.value.trim()
                        ),
                    );
                } else {
                    t.set(
                        "partition_key",
                        q(&format!("{{{}}}", parts.join("."))),
                        &e.origin,
                    );
                }
            }
            if go {
                // The Go plugin sends one PutRecords at a time unless
                // `experimental_concurrency` is set, so one partition key's records land in
                // order; firelane's default concurrency (4) would not keep that. `Workers`,
                // read after this, still decides when given.
                let mut n = 1;
                let mut origin = at.clone();
                if let Some(e) = sec.take("experimental_concurrency")
                    && let Some(v) = env.value(e, p)
                {
                    match v.trim().parse::<u64>() {
                        Ok(c) => {
                            n = c.max(1);
                            origin = e.origin.clone();
                        }
                        Err(_) => p.error(
                            &e.origin,
                            format!("{what}: experimental_concurrency: expected a number"),
                        ),
                    }
                }
                t.set("concurrency", n.to_string(), &origin);
                // Its goroutines' retries: firelane's retry policy (Retry_Limit) applies.
                sec.accept(&["experimental_concurrency_retries"]);
            }
            if let Some(e) = sec.take("port")
                && let Some(v) = env.value(e, p)
                && v.trim() != "443"
            {
                p.error(
                    &e.origin,
                    format!(
                        "{what}: port {}: put the port in endpoint (https://HOST:PORT) instead",
                        v.trim()
                    ),
                );
            }
            if go
                && let Some(e) = sec.take("append_newline")
                && let Some(v) = env.value(e, p)
                && boolean(e, &v, p) == Some(false)
            {
                p.warn(
                    &e.origin,
                    "append_newline false: firelane ends every Kinesis record with a newline",
                );
            }
            for key in ["simple_aggregation", "aggregation"] {
                if let Some(e) = sec.take(key)
                    && let Some(v) = env.value(e, p)
                    && boolean(e, &v, p) == Some(true)
                {
                    p.error(&e.origin, format!("{what}: {} is not supported: firelane sends one Kinesis record per log record", e.key));
                }
            }
            if let Some(e) = sec.take("compression")
                && let Some(v) = env.value(e, p)
                && !v.trim().eq_ignore_ascii_case("none")
            {
                p.error(
                    &e.origin,
                    format!(
                        "{what}: compression {} of each Kinesis record is not supported",
                        v.trim()
                    ),
                );
            }
            for key in ["data_keys", "replace_dots"] {
                if let Some(e) = sec.take(key) {
                    p.error(&e.origin, format!("{what}: {} is not supported", e.key));
                }
            }
            flush_age(t);
        }
        other => {
            p.error(&at, format!("{what}: firelane has no such output (cloudwatch_logs, kinesis_firehose, kinesis_streams, s3, http, file, stdout, null)"));
            let _ = other;
            sec.accept_all();
            return false;
        }
    }
    if !t.has("type") {
        return false;
    }
    true
}
