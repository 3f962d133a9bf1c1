//! The processor types firelane knows, one line each, and the contract every type fulfils.
//!
//! A processor type reads and checks its own keys of a `[processors.NAME]` table
//! ([`ProcessorType::read`]); what it reads ([`ProcessorConfig`]) describes itself for
//! `firelane check` and builds one [`Processor`] per input that lists it. Adding a
//! processor: its module and one line in [`PROCESSORS`].

use std::sync::Arc;

use super::{BuildContext, Processor};
use crate::config::reader::{Diagnostics, Table};

/// Every processor type. The only list: config reading, "unknown type" messages and the
/// docs test all go through it.
pub(crate) static PROCESSORS: &[&dyn ProcessorType] = &[
    &super::fields::Fields,
    &super::grep::Grep,
    &super::multiline::Multiline,
    &super::parse_json::ParseJson,
    &super::partial::Partial,
    &super::rewrite_tag::RewriteTag,
    &super::ecs_metadata::EcsMetadataType,
];

/// The registered type named `name` (the `type = "..."` value).
pub(crate) fn find(name: &str) -> Option<&'static dyn ProcessorType> {
    PROCESSORS.iter().copied().find(|t| t.name() == name)
}

/// The `type` values of every registered processor type.
pub(crate) fn names() -> Vec<&'static str> {
    PROCESSORS.iter().map(|t| t.name()).collect()
}

/// One kind of processor (`type = "multiline"`): reads its keys.
pub(crate) trait ProcessorType: Sync {
    /// The `type = "..."` value.
    fn name(&self) -> &'static str;

    /// Its keys besides `type`: the "did you mean" hints of the unknown-key error, and the
    /// list the docs test checks against `config/reference.toml`.
    fn keys(&self) -> &'static [&'static str];

    /// Reads and checks this type's keys of `t` (the `[processors.NAME]` table). Problems
    /// go to `d`, located at their key (`file:line:col`); the result is only used when `d`
    /// has no error. Keys it does not read are refused by the caller as unknown.
    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn ProcessorConfig>;
}

/// The keys of one processor of some type, as read from its table. Shared by every input
/// that lists the processor (each gets its own [`Processor`] from [`ProcessorConfig::build`];
/// state meant to be shared, such as a metadata cache, lives here behind an `Arc`).
pub(crate) trait ProcessorConfig: std::fmt::Debug + Send + Sync + 'static {
    /// The `type = "..."` value it was read from.
    fn type_name(&self) -> &'static str;

    /// What it does, in a few words, for `firelane check`'s plan.
    fn describe(&self) -> String;

    /// How long it may hold a record (its `timeout` / `flush_timeout`); `None` for a
    /// processor that never holds one. An HTTP request waits that long for its 2xx.
    fn holds_for(&self) -> Option<std::time::Duration> {
        None
    }

    /// A processor for one input. Called inside the tokio runtime (except for
    /// `ctx.dry_run`, where no task may be spawned): background tasks are spawned here and
    /// end with `ctx.shutdown`.
    fn build(&self, ctx: &BuildContext) -> Box<dyn Processor>;

    /// For tests and tools that look at one type's settings.
    #[allow(dead_code)] // tests
    fn as_any(&self) -> &dyn std::any::Any;
}

/// One `[processors.NAME]` table.
#[derive(Debug, Clone)]
pub struct ProcessorSpec {
    /// Its name, as inputs list it.
    pub(crate) name: String,
    /// The keys of its type.
    pub(crate) kind: Arc<dyn ProcessorConfig>,
}
