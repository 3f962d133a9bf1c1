//! A strict reader over a spanned TOML tree that collects *every* problem at once.
//!
//! Each component reads its own table with typed getters; every getter records the key as
//! used, and [`Table::finish`] reports the keys nobody asked for. Problems are collected as
//! [`Diag`]s with byte spans and printed as `file:line:col: message`, so a user fixes a
//! broken config in one round instead of one error per run.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::units;

/// One error or warning, located in the source text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Diag {
    pub span: Range<usize>,
    pub message: String,
}

/// Collected errors and warnings for one config file.
pub(crate) struct Diagnostics {
    file: String,
    text: String,
    line_starts: Vec<usize>,
    pub errors: Vec<Diag>,
    pub warnings: Vec<Diag>,
}

impl Diagnostics {
    pub(crate) fn new(file: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Diagnostics {
            file: file.to_string(),
            text: text.to_string(),
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(Diag {
            span,
            message: message.into(),
        });
    }

    pub(crate) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Diag {
            span,
            message: message.into(),
        });
    }

    /// 1-based line and column, the column counted in characters (as rustc does), so a
    /// `é` or `→` earlier on the line does not push the column past the error.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts[line];
        let end = offset.min(self.text.len()).max(start);
        let col = match self.text.get(start..end) {
            Some(prefix) => prefix.chars().count(),
            // Not on a char boundary (cannot happen with spans from the TOML parser).
            None => end - start,
        };
        (line + 1, col + 1)
    }

    pub(crate) fn render(&self, d: &Diag) -> String {
        let (l, c) = self.line_col(d.span.start);
        format!("{}:{}:{}: {}", self.file, l, c, d.message)
    }

    pub(crate) fn rendered_errors(&self) -> Vec<String> {
        let mut v: Vec<&Diag> = self.errors.iter().collect();
        v.sort_by_key(|d| d.span.start);
        v.into_iter().map(|d| self.render(d)).collect()
    }

    pub(crate) fn rendered_warnings(&self) -> Vec<String> {
        let mut v: Vec<&Diag> = self.warnings.iter().collect();
        v.sort_by_key(|d| d.span.start);
        v.into_iter()
            .map(|d| format!("{} (warning)", self.render(d)))
            .collect()
    }
}

/// A value with its location, as handed to component readers.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Expands `${VAR}` and `${VAR:-default}` from the environment; `$$` is a literal `$`.
/// ECS injects secrets as environment variables, so this is how keys reach the config.
pub(crate) fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            // `${A:-${B}}` would otherwise end at the first `}` and leave a stray one behind.
            if default.is_some_and(|d| d.contains("${")) {
                return Err(format!(
                    "nested ${{…}} in the default of ${{{name}}} is not supported"
                ));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            match (env(name), default) {
                (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ));
                }
                (Some(v), None) => out.push_str(&v),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

thread_local! {
    /// Set while a value under a credential-bearing key is being interpolated.
    static CREDENTIAL_KEY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the `${VAR}` being looked up now sits in a value that carries credentials (an
/// `auth` table, `headers`, a `url` (query strings and userinfo hold tokens), a
/// `shared_key`, a `token` / `password`): the environment lookup treats its value as a
/// secret whatever the variable is called.
pub(crate) fn interpolating_credentials() -> bool {
    CREDENTIAL_KEY.with(|c| c.get())
}

/// A dotted key path (`outputs.hook.headers.authorization`) under which values carry
/// credentials.
fn is_credential_path(path: &str) -> bool {
    path.split('.').any(|seg| {
        matches!(
            seg,
            "auth" | "headers" | "url" | "shared_key" | "token" | "password" | "secret"
        )
    })
}

/// Reader for one TOML table. `path` is the dotted name used in messages (`outputs.s3`).
pub(crate) struct Table<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Range<usize>,
    path: String,
    used: HashSet<String>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn new(
        table: &'a DeTable<'i>,
        span: Range<usize>,
        path: impl Into<String>,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Table {
            table,
            span,
            path: path.into(),
            used: HashSet::new(),
            env,
        }
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn where_(&self) -> &str {
        if self.path.is_empty() {
            "top level"
        } else {
            &self.path
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// [`interpolate`] for the value of `key`, with [`interpolating_credentials`] telling
    /// the environment lookup whether that key carries credentials.
    fn interpolate(&self, key: &str, s: &str) -> Result<String, String> {
        let sensitive = is_credential_path(&self.child(key));
        CREDENTIAL_KEY.with(|c| c.set(sensitive));
        let out = interpolate(s, self.env);
        CREDENTIAL_KEY.with(|c| c.set(false));
        out
    }

    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub(crate) fn env(&self) -> &'a dyn Fn(&str) -> Option<String> {
        self.env
    }

    /// Raw access: marks the key used.
    pub(crate) fn get(&mut self, key: &str) -> Option<&'a Value<'i>> {
        let table: &'a DeTable<'i> = self.table;
        let found = table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v);
        if found.is_some() {
            self.used.insert(key.to_string());
        }
        found
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.table.iter().any(|(k, _)| k.get_ref().as_ref() == key)
    }

    /// Span of a key's value, or of the table when absent.
    pub(crate) fn value_span(&self, key: &str) -> Range<usize> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v.span())
            .unwrap_or_else(|| self.span.clone())
    }

    fn wrong_type(&self, d: &mut Diagnostics, key: &str, v: &Value<'_>, want: &str) {
        d.error(
            v.span(),
            format!(
                "{}: expected {want}, found {}",
                self.child(key),
                type_name(v.get_ref())
            ),
        );
    }

    pub(crate) fn missing(&self, d: &mut Diagnostics, key: &str) {
        d.error(
            self.span.clone(),
            format!("{}: missing required key `{key}`", self.where_()),
        );
    }

    pub(crate) fn opt_string(&mut self, d: &mut Diagnostics, key: &str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => match self.interpolate(key, s) {
                Ok(s) => Some(s),
                Err(e) => {
                    d.error(v.span(), format!("{}: {e}", self.child(key)));
                    None
                }
            },
            _ => {
                self.wrong_type(d, key, v, "a string");
                None
            }
        }
    }

    pub(crate) fn string(&mut self, d: &mut Diagnostics, key: &str) -> Option<String> {
        if !self.contains(key) {
            self.missing(d, key);
            return None;
        }
        self.opt_string(d, key)
    }

    pub(crate) fn opt_bool(&mut self, d: &mut Diagnostics, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(d, key, v, "true or false");
                None
            }
        }
    }

    /// A count that must be at least 1 (`max_connections`, `max_tasks`...): `None` when
    /// absent or invalid (0 is an error naming the key).
    pub(crate) fn opt_count(&mut self, d: &mut Diagnostics, key: &str) -> Option<usize> {
        let n = self.opt_u64(d, key)?;
        if n == 0 {
            d.error(
                self.value_span(key),
                format!("{}.{key}: must be at least 1", self.path()),
            );
            return None;
        }
        Some(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// A non-negative integer, or a string of one (`"${WORKERS:-2}"`: environment
    /// variables are interpolated in strings only, and ECS task definitions configure
    /// sidecars through the environment).
    pub(crate) fn opt_u64(&mut self, d: &mut Diagnostics, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => parse_u64(i.as_str(), i.radix()),
            DeValue::String(s) => match self.interpolate(key, s) {
                Ok(s) => parse_u64(&s, 10),
                Err(e) => Err(e.to_string()),
            },
            _ => {
                self.wrong_type(d, key, v, "an integer");
                return None;
            }
        };
        match parsed {
            Ok(n) => Some(n),
            Err(why) => {
                d.error(v.span(), format!("{}: {why}", self.child(key)));
                None
            }
        }
    }

    /// `"30s"`, `"5m"`, `"1h"`, `"250ms"`; a bare integer is seconds.
    pub(crate) fn opt_duration(&mut self, d: &mut Diagnostics, key: &str) -> Option<Duration> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => {
                match interpolate(s, self.env).and_then(|s| units::parse_duration(&s)) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        d.error(v.span(), format!("{}: {e}", self.child(key)));
                        None
                    }
                }
            }
            DeValue::Integer(i) => match i.as_str().parse::<u64>() {
                Ok(n) if i.radix() == 10 => Some(Duration::from_secs(n)),
                _ => {
                    d.error(
                        v.span(),
                        format!("{}: expected a duration like \"30s\"", self.child(key)),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(d, key, v, "a duration like \"30s\"");
                None
            }
        }
    }

    /// `"512KiB"`, `"5MiB"`, `"1GB"`; a bare integer is bytes.
    pub(crate) fn opt_size(&mut self, d: &mut Diagnostics, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => {
                match interpolate(s, self.env).and_then(|s| units::parse_size(&s)) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        d.error(v.span(), format!("{}: {e}", self.child(key)));
                        None
                    }
                }
            }
            DeValue::Integer(i) => match i.as_str().parse::<u64>() {
                Ok(n) if i.radix() == 10 => Some(n),
                _ => {
                    d.error(
                        v.span(),
                        format!("{}: expected a size like \"5MiB\"", self.child(key)),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(d, key, v, "a size like \"5MiB\"");
                None
            }
        }
    }

    /// A string or an array of strings (`to = "x"` and `to = ["x", "y"]` both work).
    pub(crate) fn opt_string_list(
        &mut self,
        d: &mut Diagnostics,
        key: &str,
    ) -> Option<Vec<Spanned<String>>> {
        let v = self.get(key)?;
        let one = |d: &mut Diagnostics, item: &Value<'_>| -> Option<Spanned<String>> {
            match item.get_ref() {
                DeValue::String(s) => match self.interpolate(key, s) {
                    Ok(s) => Some(Spanned::new(item.span(), s)),
                    Err(e) => {
                        d.error(item.span(), format!("{}: {e}", self.child(key)));
                        None
                    }
                },
                other => {
                    d.error(
                        item.span(),
                        format!(
                            "{}: expected strings, found {}",
                            self.child(key),
                            type_name(other)
                        ),
                    );
                    None
                }
            }
        };
        match v.get_ref() {
            DeValue::String(_) => one(d, v).map(|s| vec![s]),
            DeValue::Array(items) => Some(items.iter().filter_map(|i| one(d, i)).collect()),
            _ => {
                self.wrong_type(d, key, v, "a string or an array of strings");
                None
            }
        }
    }

    /// A nested table (`[x.y]` or inline `{ … }`).
    pub(crate) fn opt_table(&mut self, d: &mut Diagnostics, key: &str) -> Option<Table<'a, 'i>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::new(t, v.span(), self.child(key), self.env)),
            _ => {
                self.wrong_type(d, key, v, "a table");
                None
            }
        }
    }

    /// A table of string values (HTTP headers, resource tags), in file order.
    pub(crate) fn opt_string_map(
        &mut self,
        d: &mut Diagnostics,
        key: &str,
    ) -> Option<Vec<(String, String)>> {
        let mut t = self.opt_table(d, key)?;
        let mut out = Vec::new();
        let keys: Vec<String> = t.keys();
        for k in keys {
            if let Some(v) = t.opt_string(d, &k) {
                out.push((k, v));
            }
        }
        Some(out)
    }

    /// Keys in file order.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.table
            .iter()
            .map(|(k, _)| k.get_ref().to_string())
            .collect()
    }

    /// Sub-tables in file order (for `[inputs.NAME]`), with the key's span.
    pub(crate) fn subtables(
        &mut self,
        d: &mut Diagnostics,
    ) -> Vec<(Spanned<String>, Table<'a, 'i>)> {
        let table: &'a DeTable<'i> = self.table;
        let mut out = Vec::new();
        for (k, v) in table.iter() {
            let name = k.get_ref().to_string();
            self.used.insert(name.clone());
            match v.get_ref() {
                DeValue::Table(t) => out.push((
                    Spanned::new(k.span(), name.clone()),
                    Table::new(t, v.span(), self.child(&name), self.env),
                )),
                other => d.error(
                    v.span(),
                    format!(
                        "{}: expected a table, found {}",
                        self.child(&name),
                        type_name(other)
                    ),
                ),
            }
        }
        out
    }

    /// Reports every key that no getter asked for.
    pub(crate) fn finish(&self, d: &mut Diagnostics) {
        for (k, _) in self.table.iter() {
            if !self.used.contains(k.get_ref().as_ref()) {
                d.error(
                    k.span(),
                    format!("{}: unknown key `{}`", self.where_(), k.get_ref()),
                );
            }
        }
    }

    /// Like [`finish`](Self::finish), listing the accepted keys in the message.
    pub(crate) fn finish_expecting(&self, d: &mut Diagnostics, accepted: &[&str]) {
        for (k, _) in self.table.iter() {
            let name = k.get_ref().as_ref();
            if !self.used.contains(name) {
                let hint = closest(name, accepted)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                d.error(
                    k.span(),
                    format!("{}: unknown key `{name}`{hint}", self.where_()),
                );
            }
        }
    }

    /// Marks keys as consumed without reading them (read by someone else).
    pub(crate) fn mark_used(&mut self, key: &str) {
        self.used.insert(key.to_string());
    }
}

/// The accepted name within edit distance 2, for "did you mean" hints.
pub(crate) fn closest<'x>(name: &str, accepted: &[&'x str]) -> Option<&'x str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    accepted
        .iter()
        .map(|a| (dist(name, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, a)| a)
}

impl fmt::Debug for Table<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Table({})", self.path)
    }
}

/// Converts a TOML value into JSON (for patterns written as TOML tables).
pub(crate) fn to_json(v: &DeValue<'_>) -> Result<serde_json::Value, String> {
    Ok(match v {
        DeValue::String(s) => serde_json::Value::String(s.to_string()),
        DeValue::Integer(i) => {
            let n = i64::from_str_radix(i.as_str(), i.radix()).map_err(|e| e.to_string())?;
            serde_json::Value::Number(n.into())
        }
        DeValue::Float(f) => {
            // Keep the literal text so patterns see exactly what the user wrote.
            let text = f.as_str().replace('_', "");
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|_| format!("float {text} cannot be used in a pattern"))?
        }
        DeValue::Boolean(b) => serde_json::Value::Bool(*b),
        DeValue::Datetime(dt) => serde_json::Value::String(dt.to_string()),
        DeValue::Array(a) => serde_json::Value::Array(
            a.iter()
                .map(|x| to_json(x.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => {
            let mut m = serde_json::Map::new();
            for (k, v) in t.iter() {
                m.insert(k.get_ref().to_string(), to_json(v.get_ref())?);
            }
            serde_json::Value::Object(m)
        }
    })
}

/// `text` (digits in `radix`, an optional sign) as a `u64`; `-0` is 0.
fn parse_u64(text: &str, radix: u32) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if let Some(digits) = t.strip_prefix('-') {
        return if !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
            Ok(0)
        } else {
            Err(format!("expected a non-negative integer, found {text}"))
        };
    }
    u64::from_str_radix(&t.replace('_', ""), radix).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => format!("{text} is too large"),
        _ => format!("expected a non-negative integer, found {text:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("secret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_forms() {
        assert_eq!(interpolate("a${KEY}b", &env).unwrap(), "asecretb");
        assert_eq!(interpolate("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate("$$HOME", &env).unwrap(), "$HOME");
        assert_eq!(interpolate("cost $5", &env).unwrap(), "cost $5");
        assert!(
            interpolate("${NOPE}", &env)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(interpolate("${KEY", &env).is_err());
        assert!(interpolate("${BAD NAME}", &env).is_err());
        assert!(
            interpolate("${NOPE:-/tmp/${KEY}}", &env)
                .unwrap_err()
                .contains("nested")
        );
    }

    #[test]
    fn line_col_is_one_based() {
        let d = Diagnostics::new("f.toml", "ab\ncd\n");
        assert_eq!(d.line_col(0), (1, 1));
        assert_eq!(d.line_col(4), (2, 2));
        let d = Diagnostics::new("f.toml", "a = \"été\"\nb = 1 x\n");
        // `x` is the 7th character of line 2; `"` after `été` is the 9th of line 1.
        assert_eq!(d.line_col("a = \"été\"\nb = 1 ".len()), (2, 7));
        assert_eq!(d.line_col("a = \"été".len()), (1, 9));
    }

    #[test]
    fn did_you_mean() {
        assert_eq!(closest("bukcet", &["bucket", "key"]), Some("bucket"));
        assert_eq!(closest("zzzzzz", &["bucket", "key"]), None);
    }
}
