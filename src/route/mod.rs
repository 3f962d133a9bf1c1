//! Routing: which outputs a record reaches.
//!
//! Routes are tried in file order. A route takes a record when every condition it has
//! holds: `from` (input names), `tag` (globs, any of them) and `pattern` (an EventBridge
//! event pattern over the record body). Every matching route receives the record (fan-out)
//! until one with `final = true` matches. A record that reaches the same output through
//! several routes is delivered to that output once.

pub mod pattern;
pub(crate) mod tag;

use std::borrow::Cow;

use crate::event::{Fields, Record};
use pattern::Pattern;
use tag::TagGlob;

#[derive(Debug)]
pub(crate) struct Route {
    pub name: String,
    /// Input indices this route accepts; `None` = every input.
    pub from: Option<Vec<usize>>,
    /// Any glob may match; empty = every tag.
    pub tags: Vec<TagGlob>,
    pub pattern: Option<Pattern>,
    /// Output indices.
    pub to: Vec<usize>,
    pub is_final: bool,
}

impl Route {
    /// [`Route::accepts`] with the body a pattern reads cached in `body`: filled on first
    /// need (this route has a pattern and its `from` and `tag` conditions hold) with the
    /// fields named in `keys` (all fields when `None`), then reused by later routes.
    fn accepts_with<'r>(
        &self,
        input: usize,
        record: &'r Record,
        body: &mut Option<Cow<'r, Fields>>,
        keys: Option<&[Box<str>]>,
    ) -> bool {
        if let Some(from) = &self.from
            && !from.contains(&input)
        {
            return false;
        }
        if !self.tags.is_empty() && !self.tags.iter().any(|g| g.matches(&record.tag)) {
            return false;
        }
        match &self.pattern {
            Some(p) => p.matches_fields(body.get_or_insert_with(|| match keys {
                Some(keys) => record.select(keys),
                None => record.fields(),
            })),
            None => true,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Router {
    routes: Vec<Route>,
    /// Top-level fields any route's pattern reads, sorted, without duplicates.
    pattern_keys: Vec<Box<str>>,
    /// No route has a pattern: a decision depends on the input and the tag only.
    tag_only: bool,
}

/// The routes and outputs one record reaches.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Decision {
    pub routes: Vec<usize>,
    /// Distinct output indices, in first-reached order.
    pub outputs: Vec<usize>,
}

impl Decision {
    pub(crate) fn clear(&mut self) {
        self.routes.clear();
        self.outputs.clear();
    }
}

impl Router {
    pub(crate) fn new(routes: Vec<Route>) -> Self {
        let mut pattern_keys: Vec<Box<str>> = routes
            .iter()
            .filter_map(|r| r.pattern.as_ref())
            .flat_map(|p| p.top_level_keys())
            .map(Box::from)
            .collect();
        pattern_keys.sort_unstable();
        pattern_keys.dedup();
        let tag_only = routes.iter().all(|r| r.pattern.is_none());
        Router {
            routes,
            pattern_keys,
            tag_only,
        }
    }

    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether no route reads the record body (no `pattern`): then every record with the
    /// same input and tag reaches the same routes and outputs, and a caller may decide
    /// once for all of them.
    pub fn is_tag_only(&self) -> bool {
        self.tag_only
    }

    /// Fills `out` with the routes and outputs `record` from `input` reaches.
    /// `out` is reused by callers so routing allocates nothing per record for tag-only
    /// routes. Pattern routes read field values: the fields any pattern names are decoded
    /// once per record, on the first route that needs them, and shared by every pattern
    /// route after it (a packed body is never decoded whole for routing).
    pub(crate) fn decide(&self, input: usize, record: &Record, out: &mut Decision) {
        out.clear();
        let mut body: Option<Cow<'_, Fields>> = None;
        for (i, route) in self.routes.iter().enumerate() {
            if !route.accepts_with(input, record, &mut body, Some(&self.pattern_keys)) {
                continue;
            }
            out.routes.push(i);
            for &o in &route.to {
                if !out.outputs.contains(&o) {
                    out.outputs.push(o);
                }
            }
            if route.is_final {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(tag: &str, body: serde_json::Value) -> Record {
        let serde_json::Value::Object(m) = body else {
            panic!("test body must be an object")
        };
        Record::new(tag, 0, m)
    }

    fn route(
        name: &str,
        from: Option<Vec<usize>>,
        tags: &[&str],
        pat: Option<&str>,
        to: &[usize],
        fin: bool,
    ) -> Route {
        Route {
            name: name.into(),
            from,
            tags: tags.iter().map(|t| TagGlob::new(t).unwrap()).collect(),
            pattern: pat.map(|p| Pattern::parse(p).unwrap()),
            to: to.to_vec(),
            is_final: fin,
        }
    }

    #[test]
    fn fan_out_until_final_and_dedupe_outputs() {
        let r = Router::new(vec![
            route(
                "access",
                Some(vec![0]),
                &["*-firelens-*"],
                Some(r#"{"log":[{"prefix":"GET "}]}"#),
                &[0, 1],
                true,
            ),
            route("all_app", Some(vec![0]), &[], None, &[1], false),
            route("copy", None, &[], None, &[1, 2], false),
        ]);
        let mut d = Decision::default();
        r.decide(0, &rec("web-firelens-abc", json!({"log": "GET /"})), &mut d);
        assert_eq!(d.routes, vec![0]);
        assert_eq!(d.outputs, vec![0, 1]);

        r.decide(0, &rec("web-firelens-abc", json!({"log": "error"})), &mut d);
        assert_eq!(d.routes, vec![1, 2]);
        assert_eq!(d.outputs, vec![1, 2]);

        r.decide(1, &rec("events", json!({"log": "GET /"})), &mut d);
        assert_eq!(d.routes, vec![2]);
    }

    #[test]
    fn unrouted_when_nothing_matches() {
        let r = Router::new(vec![route("only_tag", None, &["app.*"], None, &[0], false)]);
        let mut d = Decision::default();
        r.decide(0, &rec("other", json!({})), &mut d);
        assert!(d.routes.is_empty() && d.outputs.is_empty());
    }

    fn packed(tag: &str, body: serde_json::Value) -> Record {
        let mut b = Vec::new();
        crate::input::forward::client::encode_json_record(&mut b, body.as_object().unwrap());
        Record::from_packed(tag, 0, bytes::Bytes::from(b)).unwrap()
    }

    /// Patterns see a packed record (only the fields they name decoded) exactly as they see
    /// the same record as a tree: nested fields, absent fields (`exists: false`), several
    /// pattern routes sharing one decode, a tag-only route that decodes nothing.
    #[test]
    fn packed_records_route_as_trees_do() {
        let r = Router::new(vec![
            route("tag", None, &["app.*"], None, &[0], false),
            route(
                "nested",
                None,
                &[],
                Some(r#"{"detail":{"state":["stopped"]}}"#),
                &[1],
                false,
            ),
            route(
                "absent",
                None,
                &[],
                Some(r#"{"level":[{"exists":false}]}"#),
                &[2],
                false,
            ),
            route(
                "num",
                None,
                &[],
                Some(r#"{"n":[{"numeric":[">",5]}]}"#),
                &[3],
                false,
            ),
            route(
                "prefix",
                None,
                &[],
                Some(r#"{"log":[{"prefix":"ERR"}]}"#),
                &[4],
                true,
            ),
            route("after_final", None, &[], None, &[5], false),
        ]);
        let bodies = [
            json!({"log": "ERR x", "detail": {"state": "stopped", "other": 1}, "n": 6}),
            json!({"log": "ok", "level": "info", "n": 5, "detail": {"state": "running"}}),
            json!({"detail": [{"state": "stopped"}], "n": 7.5}),
            json!({}),
        ];
        for tag in ["app.web", "other"] {
            for body in &bodies {
                let (mut want, mut got) = (Decision::default(), Decision::default());
                r.decide(0, &rec(tag, body.clone()), &mut want);
                r.decide(0, &packed(tag, body.clone()), &mut got);
                assert_eq!(got, want, "{tag} {body}");
            }
        }
        let mut d = Decision::default();
        r.decide(0, &packed("app.web", bodies[0].clone()), &mut d);
        assert_eq!(d.routes, vec![0, 1, 2, 3, 4]);
        let keys: Vec<&str> = r.pattern_keys.iter().map(|k| &**k).collect();
        assert_eq!(keys, ["detail", "level", "log", "n"]);
    }
}
