//! Property tests for the event-pattern engine: relations between operators that
//! EventBridge's matcher (aws/event-ruler 2.x, whose measured cases are
//! `tests/data/pattern_cases.jsonl`) implies, checked on generated values.

use firelane::route::pattern::Pattern;
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        // Modest by default so the debug suite stays fast; PROPTEST_CASES raises it for a soak.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        // Failures are reported with their minimal input; no regression files in tests/.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn pattern(v: &Value) -> Pattern {
    Pattern::from_value(v).unwrap_or_else(|e| panic!("{v} should be valid: {e}"))
}

fn m(p: &Value, event: &Value) -> bool {
    pattern(p).matches(event)
}

/// Parses JSON text keeping number literals as written (`arbitrary_precision`).
fn raw(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// An event `{"f": <literal>}` with the literal spelled exactly as given.
fn event_with(literal: &str) -> Value {
    raw(&format!(r#"{{"f": {literal}}}"#))
}

/// Strings that can never be IP literals (no `.` or `:`), from a small alphabet so that
/// equal strings come up often.
fn word() -> impl Strategy<Value = String> {
    "[abAB0-9é日 _-]{0,4}"
}

/// Several spellings of the same integer.
fn int_spellings(n: i64) -> Vec<String> {
    let mut out = vec![
        format!("{n}"),
        format!("{n}.0"),
        format!("{n}e0"),
        format!("{n}E+0"),
        format!("{n}0e-1"),
        format!("{n}.000"),
        format!("{n}00e-2"),
        format!("{:e}", n as f64),
    ];
    if n != 0 {
        // Move the decimal point: n × 10^3 × 10^-3.
        out.push(format!("{n}000e-3"));
    }
    out
}

/// Spellings of a finite double that all denote exactly its value.
fn float_spellings(v: f64) -> Vec<String> {
    vec![
        format!("{v}"),
        format!("{v:e}"),
        format!("{v:?}"),
        format!("{v:E}"),
    ]
}

/// A number leaf that is comparable, as (value, literal).
fn comparable_number() -> impl Strategy<Value = (f64, String)> {
    prop_oneof![
        (-1000i64..1000).prop_map(|n| (n as f64, n.to_string())),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| (v, format!("{v:e}"))),
        prop::sample::select(vec![0.1, -0.5, 2.5, 1e16, -2.5e20, 1.5e-7, 0.0, -0.0])
            .prop_map(|v| (v, format!("{v:?}"))),
    ]
}

/// A string or number leaf, as JSON text.
fn leaf_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        word().prop_map(|s| json!(s).to_string()),
        comparable_number().prop_map(|(_, lit)| lit),
    ]
}

/// Characters with a simple one-to-one case mapping (§2.5.5).
fn simple_case_char() -> impl Strategy<Value = char> {
    prop::sample::select(
        "aAbBzZ09 -éÉàÀøØþÞÿłŁŹźΑαΒβΩωΔδПпЯяЁёⱥȺ"
            .chars()
            .collect::<Vec<_>>(),
    )
}

fn simple_case_string() -> impl Strategy<Value = String> {
    prop::collection::vec(simple_case_char(), 0..6).prop_map(|v| v.into_iter().collect())
}

/// Re-cases each character of `s` according to `flips`.
fn recase(s: &str, flips: &[bool]) -> String {
    s.chars()
        .zip(flips.iter().cycle())
        .map(|(c, up)| {
            if *up {
                c.to_uppercase().next().unwrap_or(c)
            } else {
                c.to_lowercase().next().unwrap_or(c)
            }
        })
        .collect()
}

/// A small value list entry for `$or` / AND properties.
fn entry() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["v0", "v1", "v2"]).prop_map(|s| json!(s)),
        (0i64..3).prop_map(|n| json!(n)),
        Just(json!({"prefix": "v"})),
        Just(json!({"anything-but": "v1"})),
        Just(json!({"exists": false})),
        Just(json!({"exists": true})),
        Just(json!({"numeric": [">", 1]})),
        Just(json!(null)),
    ]
}

/// A pattern object over fields a, b, c with 1-2 fields.
fn branch() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c"]),
        prop::collection::vec(entry(), 1..3),
        1..3,
    )
    .prop_map(|m| {
        Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_owned(), Value::Array(v)))
                .collect(),
        )
    })
}

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["v0", "v1", "v2", "x"]).prop_map(|s| json!(s)),
        (0i64..3).prop_map(|n| json!(n)),
        Just(json!(null)),
        Just(json!(["v0", 1])),
        Just(json!([])),
        Just(json!({"z": 1})),
    ]
}

fn small_event() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c"]),
        small_value(),
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// Arbitrary JSON (bounded depth), for robustness and exists properties.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-100i64..100).prop_map(|n| json!(n)),
        "[a-c.:*\\\\]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c$]{0,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    /// For an event where the field has a string or number leaf, anything-but of x is the
    /// exact complement of x.
    #[test]
    fn anything_but_is_the_complement_of_exact(x in leaf_literal(), y in leaf_literal(), same in any::<bool>()) {
        let y = if same { x.clone() } else { y };
        let event = event_with(&y);
        let x_val = raw(&x);
        let exact = m(&json!({"f": [x_val.clone()]}), &event);
        let but = m(&json!({"f": [{"anything-but": [x_val.clone()]}]}), &event);
        prop_assert_ne!(exact, but, "x={} y={}", x, y);
        // The scalar operand form is the same as the one-element list.
        prop_assert_eq!(m(&json!({"f": [{"anything-but": x_val}]}), &event), but);
    }

    /// An integer matches itself however either side is spelled, as an exact value and as
    /// numeric equality, and never matches its string form.
    #[test]
    fn integer_equality_is_spelling_invariant(n in -1_000_000i64..1_000_000, a in 0usize..9, b in 0usize..9) {
        let spellings = int_spellings(n);
        let pa = &spellings[a % spellings.len()];
        let eb = &spellings[b % spellings.len()];
        let event = event_with(eb);
        prop_assert!(Pattern::parse(&format!(r#"{{"f":[{pa}]}}"#)).map(|p| p.matches(&event)).unwrap_or(false), "{} vs {}", pa, eb);
        let numeric = Pattern::parse(&format!(r#"{{"f":[{{"numeric":["=",{pa}]}}]}}"#)).map(|p| p.matches(&event));
        prop_assert_eq!(numeric, Ok(true), "numeric = {} vs {}", pa, eb);
        prop_assert!(!m(&json!({"f": [n.to_string()]}), &event), "string form of {} matched", n);
        prop_assert!(!m(&json!({"f": [n + 1]}), &event), "{} matched {}", n + 1, eb);
    }

    /// A double matches every spelling of itself and (as an exact value) nothing else.
    #[test]
    fn float_equality_is_spelling_invariant(
        v in any::<f64>().prop_filter("finite", |v| v.is_finite()),
        w in any::<f64>().prop_filter("finite", |v| v.is_finite()),
        a in 0usize..4,
        b in 0usize..4,
    ) {
        let sv = float_spellings(v);
        let pat = Pattern::parse(&format!(r#"{{"f":[{}]}}"#, sv[a])).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(pat.matches(&event_with(&sv[b])), "{} vs {}", sv[a], sv[b]);
        let sw = float_spellings(w);
        prop_assert_eq!(pat.matches(&event_with(&sw[b])), v == w, "{} vs {}", sv[a], sw[b]);
    }

    /// `numeric` comparisons agree with f64 comparisons for comparable numbers.
    #[test]
    fn numeric_agrees_with_f64((a, alit) in comparable_number(), (b, blit) in comparable_number()) {
        let event = event_with(&blit);
        for (op, want) in [("<", b < a), ("<=", b <= a), (">", b > a), (">=", b >= a), ("=", b == a)] {
            let p = Pattern::parse(&format!(r#"{{"f":[{{"numeric":["{op}",{alit}]}}]}}"#))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(p.matches(&event), want, "{} {} {}", blit, op, alit);
        }
    }

    #[test]
    fn prefix_and_suffix_are_starts_and_ends_with(p in ".{0,4}", s in ".{0,8}", glue in any::<bool>()) {
        let s = if glue { format!("{p}{s}") } else { s };
        let event = json!({"f": s});
        prop_assert_eq!(m(&json!({"f": [{"prefix": p}]}), &event), s.starts_with(&p));
        prop_assert_eq!(m(&json!({"f": [{"suffix": p}]}), &event), s.ends_with(&p));
        // Never true for a non-string leaf, even with an empty operand.
        prop_assert!(!m(&json!({"f": [{"prefix": p}]}), &json!({"f": 1})), "prefix matched a number");
    }

    /// equals-ignore-case agrees with comparing lowercased strings (for characters with a
    /// simple case mapping) and is symmetric; the prefix/suffix forms agree too.
    #[test]
    fn equals_ignore_case_is_lowercase_equality(
        a in simple_case_string(),
        b in simple_case_string(),
        flips in prop::collection::vec(any::<bool>(), 1..6),
        related in any::<bool>(),
    ) {
        let b = if related { recase(&a, &flips) } else { b };
        let want = a.to_lowercase() == b.to_lowercase();
        let ab = m(&json!({"f": [{"equals-ignore-case": a}]}), &json!({"f": b}));
        let ba = m(&json!({"f": [{"equals-ignore-case": b}]}), &json!({"f": a}));
        prop_assert_eq!(ab, want, "{:?} vs {:?}", a, b);
        prop_assert_eq!(ba, ab);
        let pre = m(&json!({"f": [{"prefix": {"equals-ignore-case": a}}]}), &json!({"f": b}));
        prop_assert_eq!(pre, b.to_lowercase().starts_with(&a.to_lowercase()));
        let suf = m(&json!({"f": [{"suffix": {"equals-ignore-case": a}}]}), &json!({"f": b}));
        prop_assert_eq!(suf, b.to_lowercase().ends_with(&a.to_lowercase()));
    }

    /// A wildcard with every `*` and `\` escaped is an exact match; `*s*` is "contains".
    #[test]
    fn wildcard_escaping_and_contains(s in "[ab*\\\\é]{0,5}", t in "[ab*\\\\é]{0,6}", glue in any::<bool>()) {
        let t = if glue { format!("x{s}y{t}") } else { t };
        let escaped: String = s.chars().flat_map(|c| match c {
            '*' | '\\' => vec!['\\', c],
            c => vec![c],
        }).collect();
        prop_assert_eq!(m(&json!({"f": [{"wildcard": escaped.clone()}]}), &json!({"f": t})), s == t);
        // `**` is invalid, so the empty operand is the single star.
        let contains = if s.is_empty() { "*".to_owned() } else { format!("*{escaped}*") };
        prop_assert_eq!(m(&json!({"f": [{"wildcard": contains}]}), &json!({"f": t})), t.contains(&s));
    }

    /// `$or` of A and B matches exactly when A or B does, at the top level and nested.
    #[test]
    fn or_is_disjunction(a in branch(), b in branch(), event in small_event()) {
        let want = m(&a, &event) || m(&b, &event);
        prop_assert_eq!(m(&json!({"$or": [a.clone(), b.clone()]}), &event), want);
        prop_assert_eq!(m(&json!({"d": {"$or": [a, b]}}), &json!({"d": event})), want);
    }

    /// Fields are AND'ed: merging two patterns on disjoint fields is conjunction.
    #[test]
    fn fields_are_conjunction(a in branch(), b in branch(), event in small_event()) {
        let (Value::Object(ma), Value::Object(mut mb)) = (a.clone(), b) else { unreachable!() };
        mb.retain(|k, _| !ma.contains_key(k));
        if !mb.is_empty() {
            let b = Value::Object(mb.clone());
            let mut merged = ma;
            merged.extend(mb);
            prop_assert_eq!(m(&Value::Object(merged), &event), m(&a, &event) && m(&b, &event));
        }
    }

    /// On a single top-level path, exists:true and exists:false are complements for any value.
    #[test]
    fn exists_true_and_false_are_complements(v in any_json()) {
        let event = json!({"f": v});
        prop_assert_ne!(m(&json!({"f": [{"exists": true}]}), &event), m(&json!({"f": [{"exists": false}]}), &event));
    }

    /// An array of leaves matches when some element would match on its own.
    #[test]
    fn array_matches_when_some_element_does(x in leaf_literal(), ys in prop::collection::vec(leaf_literal(), 0..4)) {
        let p = json!({"f": [raw(&x)]});
        let any = ys.iter().any(|y| m(&p, &event_with(y)));
        let arr = raw(&format!("[{}]", ys.join(",")));
        prop_assert_eq!(m(&p, &json!({"f": arr})), any);
    }

    /// Arbitrary JSON never panics the compiler or the matcher.
    #[test]
    fn arbitrary_patterns_and_events_do_not_panic(p in any_json(), e in any_json(), text in ".{0,24}") {
        if let Ok(pat) = Pattern::from_value(&p) {
            let _ = pat.matches(&e);
            let _ = pat.matches(&json!({"a": e}));
        }
        let _ = Pattern::parse(&text);
    }
}

// ---------------------------------------------------------------------------------------
// Array consistency against a brute-force model of §2.3/§2.7.
//
// The model flattens the event into leaves; a leaf reached through an object or array
// *element* of some array remembers (array id, element index). Leaves chosen for the
// positive conditions must agree on every array they share. A condition satisfied by
// absence (`exists: false`) needs no leaf at its path that agrees with all chosen leaves.
// Per-leaf verdicts come from the engine on a one-field pattern (tested elsewhere), so the
// model checks only the structural part.

struct Leaf {
    path: Vec<String>,
    value: Value,
    trail: Vec<(usize, usize)>,
}

fn flatten(
    v: &Value,
    path: &mut Vec<String>,
    trail: &mut Vec<(usize, usize)>,
    next_id: &mut usize,
    out: &mut Vec<Leaf>,
) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                path.push(k.clone());
                flatten(child, path, trail, next_id, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            let id = *next_id;
            *next_id += 1;
            for (i, e) in items.iter().enumerate() {
                if matches!(e, Value::Object(_) | Value::Array(_)) {
                    trail.push((id, i));
                    flatten(e, path, trail, next_id, out);
                    trail.pop();
                } else {
                    flatten(e, path, trail, next_id, out);
                }
            }
        }
        scalar => out.push(Leaf {
            path: path.clone(),
            value: scalar.clone(),
            trail: trail.clone(),
        }),
    }
}

fn agree(a: &Leaf, b: &Leaf) -> bool {
    a.trail
        .iter()
        .all(|(id, i)| b.trail.iter().all(|(id2, j)| id != id2 || i == j))
}

struct ModelCond {
    /// Leaves at the path that satisfy a non-`exists:false` entry.
    candidates: Vec<usize>,
    /// Every leaf at the path.
    at_path: Vec<usize>,
    /// May be satisfied by a leaf / by absence.
    by_leaf: bool,
    by_absence: bool,
}

fn model_matches(conds: &[(Vec<String>, Value)], event: &Value) -> bool {
    let mut leaves = Vec::new();
    flatten(event, &mut Vec::new(), &mut Vec::new(), &mut 0, &mut leaves);
    let model: Vec<ModelCond> = conds
        .iter()
        .map(|(path, list)| {
            let entries = list.as_array().cloned().unwrap_or_default();
            let by_absence = entries.contains(&json!({"exists": false}));
            let positive: Vec<Value> = entries
                .into_iter()
                .filter(|e| *e != json!({"exists": false}))
                .collect();
            let single = (!positive.is_empty()).then(|| pattern(&json!({"f": positive})));
            let at_path: Vec<usize> = (0..leaves.len())
                .filter(|&i| leaves[i].path == *path)
                .collect();
            let candidates = at_path
                .iter()
                .copied()
                .filter(|&i| {
                    single
                        .as_ref()
                        .is_some_and(|p| p.matches(&json!({"f": leaves[i].value})))
                })
                .collect();
            ModelCond {
                candidates,
                at_path,
                by_leaf: single.is_some(),
                by_absence,
            }
        })
        .collect();
    // Each condition is satisfied by a leaf or by absence; try every combination.
    let n = model.len();
    (0u32..1 << n).any(|absent_mask| {
        let absent = |c: usize| absent_mask & (1 << c) != 0;
        if (0..n).any(|c| {
            if absent(c) {
                !model[c].by_absence
            } else {
                !model[c].by_leaf
            }
        }) {
            return false;
        }
        let leaf_conds: Vec<usize> = (0..n).filter(|&c| !absent(c)).collect();
        let mut chosen = Vec::new();
        choose(
            &model,
            &leaves,
            &leaf_conds,
            &mut chosen,
            &|chosen: &[usize]| {
                (0..n).filter(|&c| absent(c)).all(|c| {
                    !model[c]
                        .at_path
                        .iter()
                        .any(|&l| chosen.iter().all(|&s| agree(&leaves[l], &leaves[s])))
                })
            },
        )
    })
}

fn choose(
    model: &[ModelCond],
    leaves: &[Leaf],
    todo: &[usize],
    chosen: &mut Vec<usize>,
    done: &dyn Fn(&[usize]) -> bool,
) -> bool {
    let Some((&c, rest)) = todo.split_first() else {
        return done(chosen);
    };
    for &l in &model[c].candidates {
        if chosen.iter().all(|&s| agree(&leaves[l], &leaves[s])) {
            chosen.push(l);
            let ok = choose(model, leaves, rest, chosen, done);
            chosen.pop();
            if ok {
                return true;
            }
        }
    }
    false
}

fn nested_event() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(1)),
        Just(json!(2)),
        Just(json!("x")),
        Just(Value::Null),
    ];
    let v = leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), inner, 0..3)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    });
    prop::collection::btree_map(prop::sample::select(vec!["a", "b"]), v, 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn model_list() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!([1]),
        json!([2]),
        json!(["x"]),
        json!([1, "x"]),
        json!([null]),
        json!([{"exists": true}]),
        json!([{"exists": false}]),
        json!([{"exists": false}, 1]),
        json!([{"anything-but": 1}]),
        json!([{"numeric": [">", 1]}]),
    ])
}

fn model_conditions() -> impl Strategy<Value = Vec<(Vec<String>, Value)>> {
    let path = prop::collection::vec(
        prop::sample::select(vec!["a".to_owned(), "b".to_owned()]),
        1..4,
    );
    prop::collection::vec((path, model_list()), 1..4).prop_map(|raw| {
        // A path cannot also be the prefix of another (its value is a list, not an object).
        let mut kept: Vec<(Vec<String>, Value)> = Vec::new();
        for (p, l) in raw {
            if kept
                .iter()
                .all(|(q, _)| !p.starts_with(q) && !q.starts_with(&p))
            {
                kept.push((p, l));
            }
        }
        kept
    })
}

fn build_pattern(conds: &[(Vec<String>, Value)]) -> Value {
    let mut root = serde_json::Map::new();
    for (path, list) in conds {
        let mut node = &mut root;
        for key in &path[..path.len() - 1] {
            node = match node.entry(key.clone()).or_insert_with(|| json!({})) {
                Value::Object(m) => m,
                _ => unreachable!("paths are prefix-free"),
            };
        }
        node.insert(path[path.len() - 1].clone(), list.clone());
    }
    Value::Object(root)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn array_consistency_matches_model(conds in model_conditions(), event in nested_event()) {
        let p = build_pattern(&conds);
        prop_assert_eq!(m(&p, &event), model_matches(&conds, &event), "pattern {} event {}", p, event);
    }
}
