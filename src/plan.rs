//! What `firelane check` and `firelane route` print: the plan of a config, and where a
//! record would go. Nothing here starts a component: outputs render destinations through
//! their own code around clients that are never called.

use std::fmt::Write as _;

use crate::config::{BufferKind, Config, OutputSpec};
use crate::event::Record;
use crate::process::Chain;
use crate::route::Decision;
use crate::topology::build_router;

/// Human-readable plan for `firelane check`.
pub fn plan(config: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "inputs:");
    for i in &config.inputs {
        let procs = if i.processors.is_empty() {
            String::new()
        } else {
            format!(" → processors {}", i.processors.join(" → "))
        };
        let _ = writeln!(
            s,
            "  {} ({}): {}{procs}",
            i.name,
            i.kind.type_name(),
            i.kind.describe()
        );
    }
    if !config.processors.is_empty() {
        let _ = writeln!(s, "processors (applied in each input's order, per stream):");
        for p in &config.processors {
            let _ = writeln!(
                s,
                "  {} ({}): {}",
                p.name,
                p.kind.type_name(),
                p.kind.describe()
            );
        }
    }
    let _ = writeln!(
        s,
        "routes (in file order; every match receives the record until a final one):"
    );
    for r in &config.routes {
        let from = if r.from.is_empty() {
            "every input".to_string()
        } else {
            r.from.join(", ")
        };
        let mut cond = Vec::new();
        if !r.tags.is_empty() {
            cond.push(format!(
                "tag {}",
                r.tags
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        if let Some(p) = &r.pattern_json {
            cond.push(format!("pattern {p}"));
        }
        let cond = if cond.is_empty() {
            "every record".to_string()
        } else {
            cond.join(" and ")
        };
        let fin = if r.is_final { " (final)" } else { "" };
        let _ = writeln!(
            s,
            "  {}: from {from}, {cond} → {}{fin}",
            r.name,
            r.to.join(", ")
        );
    }
    let _ = writeln!(s, "outputs:");
    for o in &config.outputs {
        let buf = match o.buffer.kind {
            BufferKind::Memory => "memory buffer".to_string(),
            BufferKind::Disk => {
                format!(
                    "disk buffer in {}",
                    config
                        .runtime
                        .data_dir
                        .join("buffers")
                        .join(&o.name)
                        .display()
                )
            }
        };
        let dl = o
            .dead_letter
            .as_ref()
            .map(|d| format!(", dead letters → {d}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {} ({}): {}{buf}{dl}",
            o.name,
            o.kind.type_name(),
            describe(o)
        );
    }
    s
}

/// Where `o` writes, followed by `, ` (empty for outputs with nothing to say).
fn describe(o: &OutputSpec) -> String {
    let d = o.kind.describe();
    if d.is_empty() { d } else { format!("{d}, ") }
}

/// The record `route` tries: the JSON object `event`, now, tagged `tag` or else with an
/// EventBridge event's `detail-type` (empty without one). Also returns the tag.
fn record_of(event: &str, tag: Option<&str>) -> Result<(Record, String), String> {
    let fields = match serde_json::from_str::<serde_json::Value>(event) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return Err("the event must be a JSON object".into()),
        Err(e) => return Err(format!("invalid event JSON: {e}")),
    };
    let tag = tag
        .map(str::to_string)
        .unwrap_or_else(|| match fields.get("detail-type") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => String::new(),
        });
    Ok((
        Record::new(tag.as_str(), crate::event::now_ns(), fields),
        tag,
    ))
}

/// `firelane route`: which routes and outputs a record would reach.
pub fn dry_run(
    config: &Config,
    event: &str,
    tag: Option<&str>,
    input: Option<&str>,
) -> Result<String, String> {
    let (record, tag) = record_of(event, tag)?;
    let router = build_router(config);
    let inputs: Vec<(usize, &str)> = match input {
        Some(name) => match config.inputs.iter().position(|i| i.name == name) {
            Some(i) => vec![(i, name)],
            None => return Err(format!("no input named {name:?}")),
        },
        None => config
            .inputs
            .iter()
            .enumerate()
            .map(|(i, x)| (i, x.name.as_str()))
            .collect(),
    };
    let mut out = String::new();
    let mut d = Decision::default();
    let _ = writeln!(out, "tag: {tag:?}");
    for (i, name) in inputs {
        let spec = &config.inputs[i];
        let records = processed(config, i, &record);
        if !spec.processors.is_empty() {
            if records.is_empty() {
                let _ = writeln!(
                    out,
                    "from input {name}: after processors {}: no record left (dropped by a processor)",
                    spec.processors.join(" → ")
                );
                continue;
            }
            for r in &records {
                let _ = writeln!(
                    out,
                    "from input {name}: after processors {}: {}",
                    spec.processors.join(" → "),
                    show(r)
                );
            }
        }
        for record in &records {
            router.decide(i, record, &mut d);
            if d.routes.is_empty() {
                let _ = writeln!(
                    out,
                    "from input {name}: no route matches (record would be counted as unrouted and dropped)"
                );
                continue;
            }
            let routes: Vec<&str> = d
                .routes
                .iter()
                .map(|&r| router.routes()[r].name.as_str())
                .collect();
            let outputs: Vec<&str> = d
                .outputs
                .iter()
                .map(|&o| config.outputs[o].name.as_str())
                .collect();
            let _ = writeln!(
                out,
                "from input {name}: routes {} → outputs {}",
                routes.join(", "),
                outputs.join(", ")
            );
        }
    }
    Ok(out)
}

/// `record` after input `input`'s processors (itself when it has none): processed and
/// flushed, as if it were the last record before a stop.
fn processed(config: &Config, input: usize, record: &Record) -> Vec<Record> {
    let specs = config.processors_of(&config.inputs[input]);
    if specs.is_empty() {
        return vec![record.clone()];
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut chain = Chain::build(&specs, &config.inputs[input].name, true, &stop);
    // Processors in a dry run neither spawn nor wait on the network: no runtime needed.
    futures::executor::block_on(crate::process::dry_run(&mut chain, vec![record.clone()]))
}

/// A record as `route` shows it after processing: tag and JSON body.
fn show(r: &Record) -> String {
    let body = serde_json::Value::Object(r.fields().into_owned());
    format!("tag {:?} {body}", &*r.tag)
}

/// `route`, second part: for each output the record reaches (from the inputs considered),
/// where it would land, rendered by that output's own code without sending anything and
/// without AWS calls. The record gets the current time, which `%Y`… in templates use.
pub fn destinations(
    config: &Config,
    event: &str,
    tag: Option<&str>,
    input: Option<&str>,
) -> String {
    // `dry_run` has already refused anything that is not a JSON object.
    let Ok((record, _)) = record_of(event, tag) else {
        return String::new();
    };
    let router = build_router(config);
    let mut decision = Decision::default();
    // Each output with the first record (after processing) that reaches it.
    let mut reached: Vec<(usize, Record)> = Vec::new();
    for (i, spec) in config.inputs.iter().enumerate() {
        if input.is_some_and(|name| name != spec.name) {
            continue;
        }
        for r in processed(config, i, &record) {
            router.decide(i, &r, &mut decision);
            for &o in &decision.outputs {
                if !reached.iter().any(|(x, _)| *x == o) {
                    reached.push((o, r.clone()));
                }
            }
        }
    }
    if reached.is_empty() {
        return String::new();
    }
    let time = chrono::DateTime::from_timestamp_nanos(record.time_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut out = format!("destinations (record time {time}):\n");
    for (o, record) in reached {
        let spec = &config.outputs[o];
        let dest = spec.kind.destination(spec, &record);
        let _ = writeln!(out, "  {} ({}): {dest}", spec.name, spec.kind.type_name());
    }
    out
}
