//! `type = "fields"`: lifts, adds, removes, renames and copies top-level fields.
//!
//! Applied in this order, each in file order: `lift = { nested = "prefix" }` (the entries
//! of the object field `nested` become top-level fields, each name prefixed with `prefix`
//! (`""` for none), overwriting, and `nested` is removed; a `nested` that is missing or not
//! an object does nothing: Fluent Bit's `nest` filter with `Operation lift`),
//! `copy = { from = "to" }` (the value of `from`
//! also under `to`, overwriting), `rename = { old = "new" }` (moved, overwriting `new`; the
//! field keeps no position guarantee), `add = { key = "template" }` (sets, overwriting),
//! `add_if_missing = { key = "template" }` (only when the record has no `key`),
//! `remove = ["key", ...]`. Templates are the outputs' (src/output/template.rs: `{tag}`,
//! `{tag[0]}`, `{field}`, `${VAR}`, `%Y`...), rendered as text; a missing field renders `-`.
//! A `copy` or `rename` whose source field is missing does nothing.

use metrics::Counter;

use super::registry::{ProcessorConfig, ProcessorType};
use super::{Batch, BuildContext, Processor};
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::template::{Dynamic, Template};

/// The registry entry.
pub(crate) struct Fields;

impl ProcessorType for Fields {
    fn name(&self) -> &'static str {
        "fields"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["lift", "copy", "rename", "add", "add_if_missing", "remove"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig> {
        let path = t.path().to_string();
        let pairs = |t: &mut Table<'_, '_>, d: &mut Diagnostics, key: &str| {
            t.opt_string_map(d, key).unwrap_or_default()
        };
        let lift = pairs(t, d, "lift");
        let copy = pairs(t, d, "copy");
        let rename = pairs(t, d, "rename");
        let templates = |t: &mut Table<'_, '_>, d: &mut Diagnostics, key: &str| {
            let span = t.value_span(key);
            pairs(t, d, key)
                .into_iter()
                .filter_map(|(k, text)| match Template::parse(&text) {
                    Ok(tpl) => Some((k, tpl)),
                    Err(e) => {
                        d.error(span.clone(), format!("{path}.{key}.{k}: {e}"));
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let add = templates(t, d, "add");
        let add_if_missing = templates(t, d, "add_if_missing");
        let remove = t
            .opt_string_list(d, "remove")
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.into_inner())
            .collect::<Vec<_>>();
        if lift.is_empty()
            && copy.is_empty()
            && rename.is_empty()
            && add.is_empty()
            && add_if_missing.is_empty()
            && remove.is_empty()
        {
            d.warn(
                t.span(),
                format!(
                    "{path}: no lift, copy, rename, add, add_if_missing or remove: records pass unchanged"
                ),
            );
        }
        Box::new(FieldsConfig {
            lift,
            copy,
            rename,
            add,
            add_if_missing,
            remove,
        })
    }
}

/// What `[processors.NAME] type = "fields"` says.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldsConfig {
    /// (object field, prefix for its entries' names)
    lift: Vec<(String, String)>,
    copy: Vec<(String, String)>,
    rename: Vec<(String, String)>,
    add: Vec<(String, Template)>,
    add_if_missing: Vec<(String, Template)>,
    remove: Vec<String>,
}

impl ProcessorConfig for FieldsConfig {
    fn type_name(&self) -> &'static str {
        "fields"
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        let list = |v: Vec<String>| v.join(", ");
        if !self.lift.is_empty() {
            parts.push(format!(
                "lift {}",
                list(
                    self.lift
                        .iter()
                        .map(|(a, p)| if p.is_empty() {
                            a.clone()
                        } else {
                            format!("{a} (prefix {p})")
                        })
                        .collect()
                )
            ));
        }
        if !self.copy.is_empty() {
            parts.push(format!(
                "copy {}",
                list(
                    self.copy
                        .iter()
                        .map(|(a, b)| format!("{a} → {b}"))
                        .collect()
                )
            ));
        }
        if !self.rename.is_empty() {
            parts.push(format!(
                "rename {}",
                list(
                    self.rename
                        .iter()
                        .map(|(a, b)| format!("{a} → {b}"))
                        .collect()
                )
            ));
        }
        if !self.add.is_empty() {
            parts.push(format!(
                "add {}",
                list(self.add.iter().map(|(k, _)| k.clone()).collect())
            ));
        }
        if !self.add_if_missing.is_empty() {
            parts.push(format!(
                "add if missing {}",
                list(self.add_if_missing.iter().map(|(k, _)| k.clone()).collect())
            ));
        }
        if !self.remove.is_empty() {
            parts.push(format!("remove {}", self.remove.join(", ")));
        }
        parts.join("; ")
    }

    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor> {
        Box::new(FieldsProcessor {
            config: self.clone(),
            processed: ctx.counter("processed"),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct FieldsProcessor {
    config: FieldsConfig,
    /// `result="processed"`: records it applied its changes to.
    processed: Counter,
}

impl FieldsConfig {
    fn apply(&self, record: &mut Record) {
        // Templates read the record as it is before this processor's adds, so all `add`
        // values are rendered first (an `add` sees the copies and renames, not other adds).
        let render = |list: &[(String, Template)], r: &Record, only_missing: bool| {
            list.iter()
                .filter(|(k, _)| !only_missing || !r.contains_key(k))
                .map(|(k, t)| (k.clone(), t.render_to_string(r, Dynamic::default())))
                .collect::<Vec<(String, String)>>()
        };
        let needs_change = self
            .lift
            .iter()
            .any(|(k, _)| record.get(k).is_some_and(|v| v.to_value().is_object()))
            || !self.copy.is_empty()
            || self.rename.iter().any(|(a, _)| record.contains_key(a))
            || !self.add.is_empty()
            || self
                .add_if_missing
                .iter()
                .any(|(k, _)| !record.contains_key(k))
            || self.remove.iter().any(|k| record.contains_key(k));
        if !needs_change {
            return;
        }
        {
            let f = record.fields_mut();
            for (nested, prefix) in &self.lift {
                if !f.get(nested).is_some_and(serde_json::Value::is_object) {
                    continue;
                }
                if let Some(serde_json::Value::Object(inner)) = f.shift_remove(nested) {
                    for (k, v) in inner {
                        f.insert(format!("{prefix}{k}"), v);
                    }
                }
            }
            for (from, to) in &self.copy {
                if let Some(v) = f.get(from).cloned() {
                    f.insert(to.clone(), v);
                }
            }
            for (old, new) in &self.rename {
                if let Some(v) = f.shift_remove(old) {
                    f.insert(new.clone(), v);
                }
            }
        }
        let adds = render(&self.add, record, false);
        {
            let f = record.fields_mut();
            for (k, v) in adds {
                f.insert(k, serde_json::Value::String(v));
            }
        }
        let missing = render(&self.add_if_missing, record, true);
        let f = record.fields_mut();
        for (k, v) in missing {
            f.insert(k, serde_json::Value::String(v));
        }
        for k in &self.remove {
            f.shift_remove(k);
        }
    }
}

#[async_trait::async_trait]
impl Processor for FieldsProcessor {
    async fn process(&mut self, mut batch: Batch) -> Batch {
        for r in &mut batch.records {
            self.config.apply(r);
        }
        self.processed.increment(batch.records.len() as u64);
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::reader::Diagnostics;
    use serde_json::json;

    fn config(text: &str) -> Result<FieldsConfig, Vec<String>> {
        let full = format!("[processors.shape]\ntype = \"fields\"\n{text}");
        let root = toml::de::DeTable::parse(&full).expect("toml");
        let mut d = Diagnostics::new("t.toml", &full);
        let env = |_: &str| None;
        let top = Table::new(root.get_ref(), root.span(), "", &env);
        let mut top = top;
        let mut procs = top.opt_table(&mut d, "processors").expect("processors");
        let (_, mut t) = procs.subtables(&mut d).into_iter().next().expect("one");
        t.mark_used("type");
        let c = Fields.read(&mut t, &mut d);
        t.finish_expecting(&mut d, Fields.keys());
        if d.errors.is_empty() {
            Ok(c.as_any()
                .downcast_ref::<FieldsConfig>()
                .expect("fields")
                .clone())
        } else {
            Err(d.rendered_errors())
        }
    }

    fn rec(v: serde_json::Value) -> Record {
        let serde_json::Value::Object(m) = v else {
            unreachable!()
        };
        Record::new("web-firelens-abc", 0, m)
    }

    #[test]
    fn applies_copy_rename_add_add_if_missing_remove_in_that_order() {
        let c = config(
            r#"copy = { log = "message" }
rename = { container_name = "container" }
add = { service = "web", origin = "{tag[0]}:{container}" }
add_if_missing = { env = "prod", level = "info" }
remove = ["source", "nope"]
"#,
        )
        .expect("config");
        let mut r = rec(
            json!({"log": "hi", "container_name": "/ecs-x", "source": "stdout", "level": "warn"}),
        );
        c.apply(&mut r);
        assert_eq!(
            serde_json::Value::Object(r.fields().into_owned()),
            json!({"log": "hi", "level": "warn", "message": "hi", "container": "/ecs-x",
                   "service": "web", "origin": "web:/ecs-x", "env": "prod"})
        );
    }

    /// `lift` (Fluent Bit's `nest` with `Operation lift`): an object's entries move to the
    /// top level, prefixed, before the other operations see the record; a field that is not
    /// an object, or missing, is left as it is.
    #[test]
    fn lift_moves_an_objects_entries_up_before_the_other_operations() {
        let c = config(
            r#"lift = { kubernetes = "k8s_", plain = "" }
copy = { k8s_pod = "pod" }
"#,
        )
        .expect("config");
        let mut r = rec(
            json!({"log": "hi", "kubernetes": {"pod": "p-1", "ns": "default"},
                               "plain": "not an object"}),
        );
        c.apply(&mut r);
        assert_eq!(
            serde_json::Value::Object(r.fields().into_owned()),
            json!({"log": "hi", "plain": "not an object", "k8s_pod": "p-1", "k8s_ns": "default",
                   "pod": "p-1"})
        );
        let mut nested = rec(json!({"log": "x", "plain": {"a": 1, "log": "inner"}}));
        c.apply(&mut nested);
        assert_eq!(
            serde_json::Value::Object(nested.fields().into_owned()),
            json!({"log": "inner", "a": 1}),
            "an entry overwrites a top-level field of its name"
        );
    }

    #[test]
    fn a_bad_template_is_located() {
        let e = config("add = { x = \"{tag[\" }\n").expect_err("bad template");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.toml:3:7: processors.shape.add.x:"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_a_hint() {
        let e = config("renam = { a = \"b\" }\n").expect_err("unknown key");
        assert!(
            e[0].contains("unknown key `renam` (did you mean `rename`?)"),
            "{e:?}"
        );
    }
}
