//! Walking an event along a pattern's paths, with array consistency.
//!
//! Each alternative is a trie of paths. The walk looks up only the keys the pattern names.
//! Arrays are where it branches: leaves chosen for different fields under one array of
//! objects must come from the same element, so the walk picks one object/array element at
//! a time ("pins" it) and evaluates the whole sub-trie against it. Scalar elements of an
//! array are leaves at the array's own path and combine with any element; they travel down
//! in a stack-allocated `Free` chain.
//!
//! `{"exists": false}` uses the declarative reading: inside a pinned element it means "no
//! leaf in this element"; when no positive field pins an element it means "no leaf in any
//! element". A pinned element only counts when a positive match actually used it.

use serde_json::{Map, Value};

use super::compile::Condition;

#[derive(Debug, Clone, Default)]
pub(crate) struct Trie {
    /// Conditions whose path ends here.
    own: Vec<usize>,
    children: Vec<(Box<str>, Trie)>,
    /// Some condition strictly below needs a leaf (its list has no `exists: false`).
    desc_required: bool,
    /// Some condition here or below needs a leaf.
    any_required: bool,
    /// Conditions strictly below that may be satisfied by a leaf or by absence.
    desc_mixed: Vec<usize>,
    /// Same, including conditions at this node.
    all_mixed: Vec<usize>,
}

impl Trie {
    pub(crate) fn build(conds: &[Condition], alternative: &[usize]) -> Trie {
        let mut root = Trie::default();
        for &c in alternative {
            let mut node = &mut root;
            for key in &conds[c].path {
                let pos = match node.children.iter().position(|(k, _)| k == key) {
                    Some(p) => p,
                    None => {
                        node.children.push((key.clone(), Trie::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[pos].1;
            }
            node.own.push(c);
        }
        root.summarise(conds);
        root
    }

    fn summarise(&mut self, conds: &[Condition]) {
        let mut desc_required = false;
        let mut desc_mixed = Vec::new();
        for (_, child) in &mut self.children {
            child.summarise(conds);
            desc_required |= child.any_required;
            desc_mixed.extend_from_slice(&child.all_mixed);
        }
        let own_required = self.own.iter().any(|&c| !conds[c].list.exists_false);
        let mut all_mixed: Vec<usize> = self
            .own
            .iter()
            .copied()
            .filter(|&c| conds[c].list.exists_false && conds[c].list.has_positive())
            .collect();
        all_mixed.extend_from_slice(&desc_mixed);
        self.desc_required = desc_required;
        self.any_required = desc_required || own_required;
        self.desc_mixed = desc_mixed;
        self.all_mixed = all_mixed;
    }
}

/// Scalar elements of enclosing arrays at the current path.
struct Free<'a> {
    items: &'a [Value],
    next: Option<&'a Free<'a>>,
}

fn free_scalars<'a>(mut free: Option<&'a Free<'a>>) -> impl Iterator<Item = &'a Value> + 'a {
    std::iter::from_fn(move || {
        let f = free?;
        free = f.next;
        Some(f.items)
    })
    .flatten()
    .filter(|v| is_scalar(v))
}

/// Conditions that must be satisfied by a leaf, not by absence (see `pin`).
struct Forced<'a> {
    cond: usize,
    next: Option<&'a Forced<'a>>,
}

fn is_forced(mut f: Option<&Forced<'_>>, cond: usize) -> bool {
    while let Some(x) = f {
        if x.cond == cond {
            return true;
        }
        f = x.next;
    }
    false
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

impl Trie {
    /// Keys of this node's children: at the root, the top-level fields a match reads.
    pub(crate) fn child_keys(&self) -> impl Iterator<Item = &str> {
        self.children.iter().map(|(k, _)| &**k)
    }
}

pub(crate) struct Walk<'p> {
    pub(crate) conds: &'p [Condition],
}

impl<'p> Walk<'p> {
    pub(crate) fn root(&self, trie: &Trie, fields: &Map<String, Value>) -> bool {
        trie.children
            .iter()
            .all(|(k, child)| self.node(child, fields.get(&**k), None, None))
    }

    fn node(
        &self,
        n: &Trie,
        v: Option<&Value>,
        free: Option<&Free<'_>>,
        forced: Option<&Forced<'_>>,
    ) -> bool {
        if let Some(Value::Array(items)) = v {
            return self.array(n, items, free, forced);
        }
        let leaf = v.filter(|v| is_scalar(v));
        for &c in &n.own {
            if !self.cond(c, leaf, free, forced) {
                return false;
            }
        }
        let obj = match v {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        n.children
            .iter()
            .all(|(k, child)| self.node(child, obj.and_then(|m| m.get(&**k)), None, forced))
    }

    fn cond(
        &self,
        c: usize,
        leaf: Option<&Value>,
        free: Option<&Free<'_>>,
        forced: Option<&Forced<'_>>,
    ) -> bool {
        let list = &self.conds[c].list;
        if leaf.is_some_and(|l| list.matches_leaf(l)) {
            return true;
        }
        let mut any_free = false;
        for s in free_scalars(free) {
            if list.matches_leaf(s) {
                return true;
            }
            any_free = true;
        }
        list.exists_false && leaf.is_none() && !any_free && !is_forced(forced, c)
    }

    fn array(
        &self,
        n: &Trie,
        items: &[Value],
        free: Option<&Free<'_>>,
        forced: Option<&Forced<'_>>,
    ) -> bool {
        let f = Free { items, next: free };
        if !n.desc_required && self.unpinned(n, items, &f, forced) {
            return true;
        }
        for e in items {
            let from_object = match e {
                Value::Object(_) if !n.children.is_empty() => true,
                Value::Array(_) => false,
                _ => continue,
            };
            let (required, mixed) = if from_object {
                (n.desc_required, &n.desc_mixed)
            } else {
                (n.any_required, &n.all_mixed)
            };
            if required {
                // A required field below can only take its leaf from this element, so any
                // success uses it.
                if self.node(n, Some(e), Some(&f), forced) {
                    return true;
                }
            } else {
                // Only fields that accept absence are left: the element counts only if one
                // of them matches a leaf in it.
                for &c in mixed {
                    let pin = Forced {
                        cond: c,
                        next: forced,
                    };
                    if self.node(n, Some(e), Some(&f), Some(&pin)) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// No element is pinned: fields at this path use the scalar elements, and every field
    /// below must be satisfied by absence across all elements.
    fn unpinned(
        &self,
        n: &Trie,
        items: &[Value],
        f: &Free<'_>,
        forced: Option<&Forced<'_>>,
    ) -> bool {
        // A forced condition below needs a leaf, which absence cannot give. Checked up front
        // because an empty array (`[]`, `[[]]`) would otherwise satisfy "every element is
        // absent" vacuously and let a pinned empty element count as a match.
        if n.desc_mixed.iter().any(|&c| is_forced(forced, c)) {
            return false;
        }
        let mut nested_leaf = None;
        for &c in &n.own {
            let list = &self.conds[c].list;
            let mut any_free = false;
            let mut ok = false;
            for s in free_scalars(Some(f)) {
                any_free = true;
                if list.matches_leaf(s) {
                    ok = true;
                    break;
                }
            }
            if !ok {
                let nested = *nested_leaf.get_or_insert_with(|| {
                    items
                        .iter()
                        .any(|e| matches!(e, Value::Array(_)) && has_leaf(e))
                });
                ok = list.exists_false && !any_free && !nested && !is_forced(forced, c);
            }
            if !ok {
                return false;
            }
        }
        items
            .iter()
            .all(|e| self.children_absent(n, Some(e), forced))
    }

    /// Every condition below `n` is satisfied by absence, given value `v` at `n`'s path.
    fn children_absent(&self, n: &Trie, v: Option<&Value>, forced: Option<&Forced<'_>>) -> bool {
        match v {
            Some(Value::Array(items)) => items
                .iter()
                .all(|e| self.children_absent(n, Some(e), forced)),
            Some(Value::Object(m)) => n
                .children
                .iter()
                .all(|(k, child)| self.absent(child, m.get(&**k), forced)),
            _ => n
                .children
                .iter()
                .all(|(_, child)| self.absent(child, None, forced)),
        }
    }

    fn absent(&self, n: &Trie, v: Option<&Value>, forced: Option<&Forced<'_>>) -> bool {
        if !n.own.is_empty() {
            let has = v.is_some_and(has_leaf);
            let ok = n
                .own
                .iter()
                .all(|&c| self.conds[c].list.exists_false && !has && !is_forced(forced, c));
            if !ok {
                return false;
            }
        }
        self.children_absent(n, v, forced)
    }
}

/// Is there a leaf at this value's own path (the value itself, or a scalar in nested arrays)?
fn has_leaf(v: &Value) -> bool {
    match v {
        Value::Array(items) => items
            .iter()
            .any(|e| !matches!(e, Value::Object(_)) && has_leaf(e)),
        Value::Object(_) => false,
        _ => true,
    }
}
