//! `type = "rewrite_tag"`: a record that matches `match` (one rule as in `grep`:
//! `{ key, regex }` or `{ pattern }`) gets a new tag from the template `tag`, and is routed
//! under it; with `keep = true` the original record also goes on under its old tag (first).
//!
//! Unlike Fluent Bit's `rewrite_tag`, there is no emitter buffer: the record is changed in
//! place on the input's path, under the input's back-pressure, so a burst never leaves
//! matching records under the old tag. Templates are the outputs' (`{tag}`, `{tag[N]}`,
//! `{FIELD}` with `-` for a missing field, `${VAR}`).

use metrics::Counter;

use super::registry::{ProcessorConfig, ProcessorType};
use super::rule::{Rule, read_rule};
use super::{Batch, BuildContext, Processor};
use crate::config::reader::{Diagnostics, Table};
use crate::output::template::{Dynamic, Template};

/// The registry entry.
pub(crate) struct RewriteTag;

impl ProcessorType for RewriteTag {
    fn name(&self) -> &'static str {
        "rewrite_tag"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["match", "tag", "keep"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig> {
        let env = t.env();
        let what = format!("{}.match", t.path());
        let rule = match t.get("match") {
            Some(v) => read_rule(v, &what, env, d),
            None => {
                t.missing(d, "match");
                None
            }
        };
        let tag = match t.string(d, "tag") {
            // An empty tag would route records under "" (no tag glob a user writes takes
            // them, and `{tag}` in a key renders as "-"): a typo, not a choice.
            Some(text) if text.is_empty() => {
                d.error(
                    t.value_span("tag"),
                    format!("{}.tag: must not be empty", t.path()),
                );
                None
            }
            Some(text) => match Template::parse(&text) {
                Ok(tpl) => Some((tpl, text)),
                Err(e) => {
                    d.error(t.value_span("tag"), format!("{}.tag: {e}", t.path()));
                    None
                }
            },
            None => None,
        };
        let keep = t.opt_bool(d, "keep").unwrap_or(false);
        // Without a rule or a tag there are errors, and this value is never used.
        let (tag, tag_text) = tag.map_or((None, String::new()), |(t, s)| (Some(t), s));
        Box::new(RewriteTagConfig {
            rule,
            tag,
            tag_text,
            keep,
        })
    }
}

/// What `[processors.NAME] type = "rewrite_tag"` says.
#[derive(Debug, Clone)]
pub(crate) struct RewriteTagConfig {
    /// `None` only in a config that failed to read (never built).
    rule: Option<Rule>,
    /// `None` only in a config that failed to read (never built).
    tag: Option<Template>,
    /// The template as written, for `firelane check`.
    tag_text: String,
    keep: bool,
}

impl ProcessorConfig for RewriteTagConfig {
    fn type_name(&self) -> &'static str {
        "rewrite_tag"
    }

    fn describe(&self) -> String {
        format!(
            "when {}: tag → {:?}{}",
            self.rule.as_ref().map(Rule::describe).unwrap_or_default(),
            self.tag_text,
            if self.keep {
                " (the original goes on too)"
            } else {
                ""
            }
        )
    }

    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor> {
        Box::new(RewriteTagProcessor {
            config: self.clone(),
            rewritten: ctx.counter("rewritten"),
            unchanged: ctx.counter("unchanged"),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct RewriteTagProcessor {
    config: RewriteTagConfig,
    rewritten: Counter,
    unchanged: Counter,
}

#[async_trait::async_trait]
impl Processor for RewriteTagProcessor {
    async fn process(&mut self, mut batch: Batch) -> Batch {
        let c = &self.config;
        let (Some(rule), Some(template)) = (&c.rule, &c.tag) else {
            return batch;
        };
        let mut rewritten = 0u64;
        let mut tag = String::new();
        // One pass; a new vector only when `keep` adds records.
        if c.keep {
            let mut out = Vec::with_capacity(batch.records.len());
            for r in batch.records {
                if rule.matches(&r) {
                    tag.clear();
                    template.render(&r, Dynamic::default(), &mut tag);
                    let mut copy = r.clone();
                    copy.tag = tag.as_str().into();
                    out.push(r);
                    out.push(copy);
                    rewritten += 1;
                } else {
                    out.push(r);
                }
            }
            batch.records = out;
        } else {
            // Records of one request share their tag allocation; so do their new tags
            // when they render the same (the router decides once per shared tag).
            let mut last: Option<std::sync::Arc<str>> = None;
            for r in &mut batch.records {
                if rule.matches(r) {
                    tag.clear();
                    template.render(r, Dynamic::default(), &mut tag);
                    let new = match &last {
                        Some(l) if **l == *tag => l.clone(),
                        _ => {
                            let l: std::sync::Arc<str> = tag.as_str().into();
                            last = Some(l.clone());
                            l
                        }
                    };
                    r.tag = new;
                    rewritten += 1;
                }
            }
        }
        let n = batch.records.len() as u64;
        self.rewritten.increment(rewritten);
        self.unchanged
            .increment(n - rewritten - if c.keep { rewritten } else { 0 });
        batch
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Batch;
    use super::super::tests::{build, record, spec};

    fn tags(out: &Batch) -> Vec<String> {
        out.records.iter().map(|r| r.tag.to_string()).collect()
    }

    #[tokio::test]
    async fn matching_records_get_the_new_tag() {
        let mut p = build(
            "type = \"rewrite_tag\"\nmatch = { key = \"log\", regex = \"^ERROR\" }\ntag = \"errors.{tag[0]}.{level}\"\n",
        );
        let out = p
            .process(Batch::of(vec![
                record("web-firelens-1", json!({"log": "ERROR x", "level": "e"})),
                record("web-firelens-1", json!({"log": "INFO y"})),
                record("db-firelens-1", json!({"log": "ERROR z"})),
            ]))
            .await;
        assert_eq!(
            tags(&out),
            ["errors.web.e", "web-firelens-1", "errors.db.-"]
        );
    }

    #[tokio::test]
    async fn keep_sends_the_original_too() {
        let mut p = build(
            "type = \"rewrite_tag\"\nmatch = { pattern = { level = [\"error\"] } }\ntag = \"alerts\"\nkeep = true\n",
        );
        let out = p
            .process(Batch::of(vec![
                record("app", json!({"level": "error"})),
                record("app", json!({"level": "info"})),
            ]))
            .await;
        assert_eq!(tags(&out), ["app", "alerts", "app"]);
    }

    #[test]
    fn match_and_tag_are_required_and_checked() {
        let e = spec("type = \"rewrite_tag\"\n").expect_err("missing");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter().all(|e| e.contains("missing required key")),
            "{e:?}"
        );
        let e = spec(
            "type = \"rewrite_tag\"\nmatch = { key = \"log\", regex = \"x\" }\ntag = \"{tag[\"\n",
        )
        .expect_err("bad template");
        assert!(e[0].starts_with("t.toml:11:7: processors.p.tag:"), "{e:?}");
        let e =
            spec("type = \"rewrite_tag\"\nmatch = { key = \"log\", regex = \"x\" }\ntag = \"\"\n")
                .expect_err("empty tag");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:11:7: processors.p.tag: must not be empty"),
            "{e:?}"
        );
    }
}
