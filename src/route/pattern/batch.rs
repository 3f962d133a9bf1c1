//! `firelane test-pattern`: one case from the command line, or a stream of JSON lines.

use std::io::{self, BufRead, Write};

use serde_json::Value;

use super::Pattern;

/// Tests one pattern against one event, both JSON text. `Err` explains an invalid pattern
/// or an event that is not a JSON object.
pub fn test_pattern_cli(pattern: &str, event: &str) -> Result<bool, String> {
    let pattern = Pattern::parse(pattern).map_err(|e| e.to_string())?;
    let event: Value =
        serde_json::from_str(event).map_err(|e| format!("event is not valid JSON: {e}"))?;
    match &event {
        Value::Object(fields) => Ok(pattern.matches_fields(fields)),
        _ => Err("event must be a JSON object".into()),
    }
}

/// Reads JSON lines `{"pattern": P, "event": E}` (P and E are objects or JSON text in a
/// string) and writes one line per case, in order: `true`, `false` or `invalid: <reason>`.
/// Blank lines are skipped. Output is buffered and flushed whenever the input has nothing
/// more buffered, so an interactive or piped producer sees answers promptly while bulk
/// input is written in large chunks.
pub fn run_batch(mut input: impl BufRead, out: impl Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut partial: Vec<u8> = Vec::new();
    let mut dirty = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if !partial.is_empty() {
                answer(&partial, &mut out)?;
            }
            return out.flush();
        }
        let len = buf.len();
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            if partial.is_empty() {
                answer(line, &mut out)?;
            } else {
                partial.extend_from_slice(line);
                answer(&partial, &mut out)?;
                partial.clear();
            }
            dirty = true;
            start += nl + 1;
        }
        partial.extend_from_slice(&buf[start..]);
        input.consume(len);
        // Everything buffered has been consumed: the next read may block, so hand over
        // what we have first.
        if dirty {
            out.flush()?;
            dirty = false;
        }
    }
}

fn answer(line: &[u8], out: &mut impl Write) -> io::Result<()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match evaluate(line) {
        Ok(true) => out.write_all(b"true\n"),
        Ok(false) => out.write_all(b"false\n"),
        Err(reason) => {
            // Keep one answer per line whatever the reason contains.
            let reason = reason.replace(['\n', '\r'], " ");
            writeln!(out, "invalid: {reason}")
        }
    }
}

fn evaluate(line: &[u8]) -> Result<bool, String> {
    let case: Value =
        serde_json::from_slice(line).map_err(|e| format!("input line is not valid JSON: {e}"))?;
    let Value::Object(mut case) = case else {
        return Err("input line must be a JSON object with \"pattern\" and \"event\"".into());
    };
    let pattern = match case.remove("pattern") {
        Some(Value::String(text)) => Pattern::parse(&text),
        Some(v) => Pattern::from_value(&v),
        None => return Err("input line has no \"pattern\"".into()),
    }
    .map_err(|e| e.to_string())?;
    let event = match case.remove("event") {
        Some(Value::String(text)) => {
            serde_json::from_str(&text).map_err(|e| format!("event is not valid JSON: {e}"))?
        }
        Some(v) => v,
        None => return Err("input line has no \"event\"".into()),
    };
    match &event {
        Value::Object(fields) => Ok(pattern.matches_fields(fields)),
        _ => Err("event must be a JSON object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> String {
        let mut out = Vec::new();
        run_batch(input.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn batch_lines() {
        let input = concat!(
            r#"{"pattern": {"a": [1]}, "event": {"a": 1.0}}"#,
            "\n",
            r#"{"pattern": "{\"a\": [\"x\"], \"a\": [\"y\"]}", "event": "{\"a\": \"y\"}"}"#,
            "\n",
            "\n",
            r#"{"pattern": {"a": [12345678901234567890]}, "event": {"a": 12345678901234567891}}"#,
            "\n",
            r#"{"pattern": {"a": 5}, "event": {"a": 5}}"#,
            "\n",
            "not json\n",
            r#"{"pattern": {"a": [1]}, "event": [1]}"#,
            "\r\n",
            r#"{"pattern": {"a": [1]}}"#,
            "\n",
            r#"{"pattern": {"a": [1]}, "event": {"a": 1}}"#,
        );
        let got = run(input);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 8, "{got}");
        assert_eq!(&lines[..3], ["true", "true", "false"]);
        assert_eq!(
            lines[3],
            "invalid: a: match value must be an array or an object"
        );
        assert!(lines[4].starts_with("invalid: input line is not valid JSON"));
        assert_eq!(lines[5], "invalid: event must be a JSON object");
        assert_eq!(lines[6], "invalid: input line has no \"event\"");
        assert_eq!(lines[7], "true");
    }

    #[test]
    fn cli() {
        assert_eq!(
            test_pattern_cli(r#"{"source":["aws.ecs"]}"#, r#"{"source":"aws.ecs"}"#),
            Ok(true)
        );
        assert_eq!(
            test_pattern_cli(r#"{"source":["aws.ecs"]}"#, r#"{"source":"x"}"#),
            Ok(false)
        );
        assert!(test_pattern_cli(r#"{"source":"aws.ecs"}"#, "{}").is_err());
        assert!(test_pattern_cli(r#"{"source":["aws.ecs"]}"#, "[]").is_err());
    }
}
