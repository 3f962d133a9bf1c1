//! Reader of Fluent Bit's classic configuration format (`fluent-bit.conf`).
//!
//! The format (Fluent Bit's `src/config_format/flb_cf_fluentbit.c`, and the file the ECS
//! agent writes, `go-config-generator-for-fluentd-and-fluentbit` `fluent-bit-template.go`):
//! - `[SECTION]` headers (`SERVICE`, `INPUT`, `FILTER`, `OUTPUT`, `PARSER`, …), names and
//!   keys case-insensitive;
//! - entries `Key value`: the key up to the first blank, the value the rest of the line,
//!   trimmed (a `#` inside a value is part of it: only whole-line comments exist);
//! - `@INCLUDE path` (relative to the main file's directory, `*` / `?` globs in the file
//!   name) and `@SET NAME=value` at the top level;
//! - `${NAME}` in values: an `@SET` variable, else the environment.
//!
//! Every section and entry keeps its `file:line` so that each later diagnostic points at
//! the line the user wrote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a section or entry was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The file, as it was named (the main path, or the path an `@INCLUDE` resolved to).
    pub file: Arc<str>,
    /// 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `Key value` line.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The key as written (for messages).
    pub key: String,
    /// The key in lower case (Fluent Bit compares keys case-insensitively).
    pub lower: String,
    /// The value with `@SET` variables substituted; `${VAR}` of the environment is kept.
    pub value: String,
    pub origin: Origin,
}

/// One `[NAME]` section and its entries in file order.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    /// The section name in upper case (`INPUT`, `FILTER`…).
    pub kind: String,
    pub origin: Origin,
    pub entries: Vec<Entry>,
}

impl Section {
    /// The first value of `key` (case-insensitive).
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.lower == key)
    }
}

/// Problems found while reading or translating, each rendered `file:line: message`.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Problems {
    pub(crate) fn error(&mut self, at: &Origin, message: impl std::fmt::Display) {
        self.errors.push(format!("{at}: {message}"));
    }

    pub(crate) fn warn(&mut self, at: &Origin, message: impl std::fmt::Display) {
        self.warnings.push(format!("{at}: {message}"));
    }
}

/// Includes nested deeper than this are refused (Fluent Bit has no limit and recurses
/// forever on a file that includes itself; a cycle is reported instead).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads `path` and everything it includes. Unreadable files, malformed lines and include
/// cycles are reported in `problems`; what could be read is returned.
pub(crate) fn read(path: &Path, text: &str, problems: &mut Problems) -> Vec<Section> {
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut r = Reader {
        root,
        vars: Vec::new(),
        sections: Vec::new(),
        stack: Vec::new(),
    };
    r.file(path, text, problems);
    r.sections
}

struct Reader {
    /// Directory of the main file: relative `@INCLUDE` paths start here (as in Fluent
    /// Bit, whatever file holds the `@INCLUDE`).
    root: PathBuf,
    /// `@SET` variables, in definition order.
    vars: Vec<(String, String)>,
    sections: Vec<Section>,
    /// Files being read, for cycle detection.
    stack: Vec<PathBuf>,
}

impl Reader {
    fn file(&mut self, path: &Path, text: &str, problems: &mut Problems) {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.stack.push(canonical);
        let file: Arc<str> = Arc::from(path.display().to_string());
        // The section being filled lives in `self.sections` (last); `None` before the first
        // header or after an @INCLUDE (whose sections came in between).
        let mut open = false;
        for (i, raw) in text.lines().enumerate() {
            let origin = Origin {
                file: file.clone(),
                line: i + 1,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = strip_prefix_ci(line, "@include") {
                let target = self.substitute(rest.trim());
                if target.is_empty() {
                    problems.error(&origin, "@INCLUDE needs a path");
                } else {
                    self.include(&target, &origin, problems);
                }
                open = false;
                continue;
            }
            if let Some(rest) = strip_prefix_ci(line, "@set") {
                match rest.trim().split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        let v = self.substitute(v.trim());
                        let k = k.trim().to_string();
                        self.vars.retain(|(n, _)| *n != k);
                        self.vars.push((k, v));
                    }
                    _ => problems.error(&origin, "@SET expects NAME=value"),
                }
                continue;
            }
            if line.starts_with('@') {
                let word = line.split_whitespace().next().unwrap_or(line);
                problems.error(
                    &origin,
                    format!("unknown command {word}: only @INCLUDE and @SET exist"),
                );
                continue;
            }
            if let Some(inner) = line.strip_prefix('[') {
                let Some(name) = inner.strip_suffix(']') else {
                    problems.error(
                        &origin,
                        format!("section header {line:?} has no closing `]`"),
                    );
                    open = false;
                    continue;
                };
                let name = name.trim();
                if name.is_empty() {
                    problems.error(&origin, "empty section name `[]`");
                    open = false;
                    continue;
                }
                self.sections.push(Section {
                    kind: name.to_ascii_uppercase(),
                    origin,
                    entries: Vec::new(),
                });
                open = true;
                continue;
            }
            if !open {
                problems.error(
                    &origin,
                    format!("{line:?} is outside any section (add a [SECTION] header above it)"),
                );
                continue;
            }
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            if value.is_empty() {
                problems.error(&origin, format!("key {key} has no value"));
                continue;
            }
            let value = self.substitute(value);
            if let Some(section) = self.sections.last_mut() {
                section.entries.push(Entry {
                    key: key.to_string(),
                    lower: key.to_ascii_lowercase(),
                    value,
                    origin,
                });
            }
        }
        self.stack.pop();
    }

    /// Replaces `${NAME}` of an `@SET` variable; other `${…}` are left for the
    /// environment (see [`super::expand`]).
    fn substitute(&self, value: &str) -> String {
        if !value.contains("${") || self.vars.is_empty() {
            return value.to_string();
        }
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    match self.vars.iter().find(|(n, _)| n == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&rest[i..i + 2 + end + 1]),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn include(&mut self, target: &str, at: &Origin, problems: &mut Problems) {
        let target = super::expand(target, &|k| std::env::var(k).ok())
            .unwrap_or_else(|_| target.to_string());
        let path = {
            let p = PathBuf::from(&target);
            if p.is_absolute() {
                p
            } else {
                self.root.join(p)
            }
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let files = if name.contains(['*', '?']) {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            if dir.to_string_lossy().contains(['*', '?']) {
                problems.error(
                    at,
                    format!("@INCLUDE {target}: wildcards are supported in the file name only, not in directories"),
                );
                return;
            }
            let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .filter(|e| glob_match(&name, &e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect(),
                Err(e) => {
                    problems.error(
                        at,
                        format!("@INCLUDE {target}: cannot read {}: {e}", dir.display()),
                    );
                    return;
                }
            };
            // Fluent Bit reads glob matches in the order glob(3) returns them: sorted.
            found.sort();
            if found.is_empty() {
                problems.warn(at, format!("@INCLUDE {target}: no file matches"));
            }
            found
        } else {
            vec![path]
        };
        for f in files {
            let canonical = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            if self.stack.contains(&canonical) {
                problems.error(
                    at,
                    format!(
                        "@INCLUDE {}: the file includes itself (a cycle)",
                        f.display()
                    ),
                );
                continue;
            }
            if self.stack.len() >= MAX_INCLUDE_DEPTH {
                problems.error(
                    at,
                    format!(
                        "@INCLUDE {}: includes nested more than {MAX_INCLUDE_DEPTH} deep",
                        f.display()
                    ),
                );
                continue;
            }
            match std::fs::read_to_string(&f) {
                Ok(text) => self.file(&f, &text, problems),
                Err(e) => problems.error(at, format!("@INCLUDE {}: cannot read: {e}", f.display())),
            }
        }
    }
}

fn strip_prefix_ci<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let head = line.get(..prefix.len())?;
    let rest = &line[prefix.len()..];
    (head.eq_ignore_ascii_case(prefix)
        && (rest.is_empty() || rest.starts_with(char::is_whitespace)))
    .then_some(rest)
}

/// `*` (any run of characters) and `?` (one character) over a whole file name.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}
