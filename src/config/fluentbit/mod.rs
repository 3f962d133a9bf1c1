//! Fluent Bit classic configs (`fluent-bit.conf`, what the ECS agent writes for
//! `firelensConfiguration.type = "fluentbit"`): read ([`classic`]), translated into
//! firelane's TOML ([`translate`]), then loaded by the one TOML loader
//! ([`super::parse`]), so `run`, `check` and `check --print-toml` take one path and refuse
//! the same things.
//!
//! Every diagnostic names the `.conf` line: the translator's own directly, the TOML
//! loader's through the line map of the generated text.

pub(crate) mod classic;
pub(crate) mod translate;

#[cfg(test)]
mod tests;

use std::path::Path;

use super::{ConfigErrors, Loaded};
use classic::{Entry, Problems};

/// The default path of the file the ECS agent generates for a FireLens router of type
/// `fluentbit` (spec §3.1: bind-mounted at `/fluent-bit/etc/fluent-bit.conf`).
pub const FIRELENS_PATH: &str = "/fluent-bit/etc/fluent-bit.conf";

/// Whether `path`/`text` is a Fluent Bit classic config: the name ends in `.conf`, or the
/// first meaningful line is a `[SERVICE]` / `[INPUT]` / `[FILTER]` / `[OUTPUT]` /
/// `[PARSER]` header or an `@INCLUDE` / `@SET` command (a TOML file starts with a table
/// such as `[inputs.x]` or a `key = value`).
pub fn is_classic(path: &Path, text: &str) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("conf"))
    {
        return true;
    }
    let Some(first) = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
    else {
        return false;
    };
    let upper = first.to_ascii_uppercase();
    upper.starts_with("@INCLUDE")
        || upper.starts_with("@SET")
        || ["[SERVICE]", "[INPUT]", "[FILTER]", "[OUTPUT]", "[PARSER]"]
            .iter()
            .any(|h| upper.replace(' ', "") == *h)
}

/// Environment lookups for the values the translator interprets itself (ports, sizes,
/// Match). String values it passes on keep their `${VAR}` for the TOML loader.
pub(crate) struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    /// `e`'s value with `${VAR}` expanded; an unset variable is an error at `e`'s line.
    pub(crate) fn value(&self, e: &Entry, p: &mut Problems) -> Option<String> {
        match expand(&e.value, self.lookup) {
            Ok(v) => Some(v),
            Err(err) => {
                p.error(&e.origin, format!("{}: {err}", e.key));
                None
            }
        }
    }

    /// A value passed on as written.
    pub(crate) fn pass_raw(&self, v: &str) -> String {
        v.trim().to_string()
    }
}

/// Expands `${NAME}` from `env`. Fluent Bit expands an unset variable to nothing; here it
/// is an error (in ECS an unset variable is a missing secret or a typo, and an empty log
/// group or bucket would fail later, less clearly).
pub(crate) fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let name = &after[..end];
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The file name given to the TOML loader for the generated text; its `name:line:col:`
/// prefixes are rewritten to the `.conf` line.
const GENERATED: &str = "<fluent-bit translation>";

/// The TOML text equivalent to a Fluent Bit config, or every problem found (each
/// `file:line: message`). Warnings come with the text.
pub fn to_toml(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), ConfigErrors> {
    let (generated, problems) = translate_text(path, text, env);
    if !problems.errors.is_empty() {
        return Err(ConfigErrors {
            errors: problems.errors,
            warnings: problems.warnings,
            secrets: vec![],
        });
    }
    Ok((generated.text(), problems.warnings))
}

fn translate_text(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (translate::Generated, Problems) {
    let mut problems = Problems::default();
    let sections = classic::read(path, text, &mut problems);
    let env = Env { lookup: env };
    let generated = translate::translate(&sections, &env, &mut problems);
    (generated, problems)
}

/// Reads, translates and loads a Fluent Bit classic config: what `firelane run -c
/// fluent-bit.conf` runs.
pub fn load(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let (generated, problems) = translate_text(path, text, env);
    if !problems.errors.is_empty() {
        // The TOML of a partial translation would add errors that are only echoes of
        // these (a missing output, a dangling route).
        return Err(ConfigErrors {
            errors: problems.errors,
            warnings: problems.warnings,
            secrets: vec![],
        });
    }
    let remap = |msgs: Vec<String>| -> Vec<String> {
        msgs.into_iter()
            .map(|m| relocate(&m, &generated.origins))
            .collect()
    };
    match super::parse(&generated.text(), GENERATED, env) {
        Ok(mut loaded) => {
            let mut warnings = problems.warnings;
            warnings.extend(remap(std::mem::take(&mut loaded.warnings)));
            loaded.warnings = warnings;
            Ok(loaded)
        }
        Err(mut e) => {
            let mut warnings = problems.warnings;
            warnings.extend(remap(std::mem::take(&mut e.warnings)));
            e.errors = remap(std::mem::take(&mut e.errors));
            e.warnings = warnings;
            Err(e)
        }
    }
}

/// `<fluent-bit translation>:L:C: message` → `file.conf:line: message (in the translated
/// TOML: …)`.
fn relocate(message: &str, origins: &[Option<classic::Origin>]) -> String {
    let Some(rest) = message
        .strip_prefix(GENERATED)
        .and_then(|r| r.strip_prefix(':'))
    else {
        return message.to_string();
    };
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().and_then(|l| l.parse::<usize>().ok());
    let _col = parts.next();
    let body = parts.next().unwrap_or("").trim_start();
    let origin = line.and_then(|l| {
        origins
            .get(..l.min(origins.len()))
            .and_then(|o| o.iter().rev().find_map(|x| x.clone()))
    });
    match origin {
        Some(o) => {
            format!("{o}: {body} (in the translated TOML: see `firelane check --print-toml`)")
        }
        None => message.to_string(),
    }
}
