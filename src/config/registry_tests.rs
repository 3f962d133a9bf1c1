//! The registries are the only lists of component types: every registered type is
//! documented in `config/reference.toml` with each of its keys, checks on its own from
//! that documentation, and is what "unknown type" errors offer.

use super::parse;
use crate::input::registry::{self as inputs, INPUTS};
use crate::output::registry::{self as outputs, OUTPUTS};
use crate::process::registry::{self as processors, PROCESSORS};

const REFERENCE: &str = include_str!("../../config/reference.toml");

fn env(name: &str) -> Option<String> {
    Some(format!("value-of-{name}").to_lowercase())
}

/// The `[kind.NAME]` tables of the reference, as (header, body) in file order.
fn sections(kind: &str) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for line in REFERENCE.lines() {
        if line.starts_with('[') {
            out.push((line, String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let prefix = format!("[{kind}.");
    out.into_iter()
        .filter(|(h, _)| h.starts_with(&prefix))
        .collect()
}

/// The reference table of `kind` whose `type` is `ty`.
fn section_of(kind: &str, ty: &str) -> String {
    let line = format!("type = \"{ty}\"");
    let found: Vec<String> = sections(kind)
        .into_iter()
        .filter(|(_, body)| body.lines().any(|l| l.trim() == line))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "config/reference.toml must document {kind} type {ty:?} in exactly one [{kind}.NAME] table"
    );
    found.into_iter().next().unwrap_or_default()
}

/// Whether `word` appears in `text` as a whole word (a key set, commented out, or named).
fn mentions(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

#[test]
fn type_names_are_unique() {
    let mut o = outputs::names();
    o.sort();
    o.dedup();
    assert_eq!(o.len(), OUTPUTS.len());
    let mut i = inputs::names();
    i.sort();
    i.dedup();
    assert_eq!(i.len(), INPUTS.len());
    let mut p = processors::names();
    p.sort();
    p.dedup();
    assert_eq!(p.len(), PROCESSORS.len());
}

#[test]
fn every_registered_type_is_documented_with_each_of_its_keys() {
    for t in OUTPUTS {
        let body = section_of("outputs", t.name());
        for key in t.keys() {
            assert!(
                mentions(&body, key),
                "config/reference.toml: the {} output's table does not document `{key}`",
                t.name()
            );
        }
    }
    for t in INPUTS {
        let body = section_of("inputs", t.name());
        for key in t.keys() {
            assert!(
                mentions(&body, key),
                "config/reference.toml: the {} input's table does not document `{key}`",
                t.name()
            );
        }
    }
    for t in PROCESSORS {
        let body = section_of("processors", t.name());
        for key in t.keys() {
            assert!(
                mentions(&body, key),
                "config/reference.toml: the {} processor's table does not document `{key}`",
                t.name()
            );
        }
    }
    // The list of output types in the reference's header is the registry's.
    let mut listed = REFERENCE
        .lines()
        .find_map(|l| l.strip_prefix("#   type "))
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .unwrap_or_default();
    listed.sort();
    let mut registered = outputs::names();
    registered.sort();
    assert_eq!(listed, registered);
}

#[test]
fn every_registered_type_checks_on_its_own_from_the_reference() {
    for t in OUTPUTS {
        let text = format!(
            "[inputs.i]\ntype = \"forward\"\nlisten = [\"tcp://127.0.0.1:0\"]\n[routes.r]\nto = [\"o\"]\n[outputs.o]\n{}",
            section_of("outputs", t.name())
        );
        let l = parse(&text, "t.toml", &env)
            .unwrap_or_else(|e| panic!("{} output from the reference: {e}", t.name()));
        assert_eq!(l.config.outputs[0].kind.type_name(), t.name());
    }
    for t in INPUTS {
        let text = format!(
            "[inputs.i]\n{}\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n",
            // The processors it lists are tables of their own, checked below.
            section_of("inputs", t.name())
                .lines()
                .filter(|l| !l.starts_with("processors ="))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let l = parse(&text, "t.toml", &env)
            .unwrap_or_else(|e| panic!("{} input from the reference: {e}", t.name()));
        assert_eq!(l.config.inputs[0].kind.type_name(), t.name());
    }
    for t in PROCESSORS {
        let text = format!(
            "[inputs.i]\ntype = \"forward\"\nprocessors = [\"p\"]\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n[processors.p]\n{}",
            section_of("processors", t.name())
        );
        let l = parse(&text, "t.toml", &env)
            .unwrap_or_else(|e| panic!("{} processor from the reference: {e}", t.name()));
        assert_eq!(l.config.processors[0].kind.type_name(), t.name());
    }
}

#[test]
fn unknown_types_are_answered_with_the_registered_names() {
    let text =
        "[inputs.i]\ntype = \"kafka\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"kafka\"\n";
    let errors = match parse(text, "t.toml", &env) {
        Ok(_) => panic!("unknown types were accepted"),
        Err(e) => e.errors,
    };
    assert_eq!(
        errors,
        vec![
            format!(
                "t.toml:2:8: inputs.i.type: unknown input type \"kafka\"; expected one of {:?}",
                inputs::names()
            ),
            format!(
                "t.toml:6:8: outputs.o.type: unknown output type \"kafka\"; expected one of {:?}",
                outputs::names()
            ),
        ]
    );
}

// A key a type lists but never reads would be refused as unknown, and the reference test
// above would then document a key that does not work.
#[test]
fn every_listed_key_is_read_by_its_type() {
    let errors = |text: &str| match parse(text, "t.toml", &env) {
        Ok(_) => vec![],
        Err(e) => e.errors,
    };
    for t in OUTPUTS {
        for key in t.keys() {
            let text = format!(
                "[inputs.i]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"{}\"\n{key} = 0\n",
                t.name()
            );
            let unknown: Vec<String> = errors(&text)
                .into_iter()
                .filter(|e| e.contains("unknown key"))
                .collect();
            assert!(unknown.is_empty(), "{} output: {unknown:?}", t.name());
        }
    }
    for t in INPUTS {
        for key in t.keys() {
            let text = format!(
                "[inputs.i]\ntype = \"{}\"\n{key} = 0\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"null\"\n",
                t.name()
            );
            let unknown: Vec<String> = errors(&text)
                .into_iter()
                .filter(|e| e.contains("unknown key"))
                .collect();
            assert!(unknown.is_empty(), "{} input: {unknown:?}", t.name());
        }
    }
}
