//! The input types firelane knows, one line each, and the contract every type fulfils.
//!
//! An input type reads and checks its own keys of an `[inputs.NAME]` table
//! ([`InputType::read`]); what it reads ([`InputConfig`]) describes itself for
//! `firelane check`, names the sockets it binds (so clashes are refused before `run`) and
//! starts its listeners. Adding an input: its module (with a `config.rs` holding an
//! [`InputType`]) and one line in [`INPUTS`].

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::Ingest;
use super::drain::InputShutdown;
use crate::buffer::budget::MemoryBudget;
use crate::config::Listen;
use crate::config::reader::{Diagnostics, Table};

/// Every input type. The only list: config reading, "unknown type" messages and the docs
/// test all go through it.
pub(crate) static INPUTS: &[&dyn InputType] = &[
    &super::forward::config::Forward,
    &super::http::config::Http,
    &super::sqs::config::Sqs,
    &super::tcp::config::Tcp,
];

/// The registered type named `name` (the `type = "..."` value).
pub(crate) fn find(name: &str) -> Option<&'static dyn InputType> {
    INPUTS.iter().copied().find(|t| t.name() == name)
}

/// The `type` values of every registered input type.
pub(crate) fn names() -> Vec<&'static str> {
    INPUTS.iter().map(|t| t.name()).collect()
}

/// One kind of input (`type = "forward"`): reads its keys.
pub(crate) trait InputType: Sync {
    /// The `type = "..."` value.
    fn name(&self) -> &'static str;

    /// Its keys besides `type`: the "did you mean" hints of the unknown-key error, and the
    /// list the docs test checks against `config/reference.toml`.
    fn keys(&self) -> &'static [&'static str];

    /// Reads and checks this type's keys of `t` (the `[inputs.NAME]` table of input
    /// `name`). Problems go to `d`, located at their key; the result is only used when `d`
    /// has no error. Keys it does not read are refused by the caller as unknown.
    fn read(&self, name: &str, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn InputConfig>;
}

/// The keys of one input of some type, as read from its table.
#[async_trait::async_trait]
pub trait InputConfig: std::fmt::Debug + Send + Sync + 'static {
    /// The `type = "..."` value it was read from.
    fn type_name(&self) -> &'static str;

    /// Where it listens and how, for `firelane check`'s plan.
    fn describe(&self) -> String;

    /// The sockets it binds that parsed (those that did not have their own error), for
    /// the "Address already in use" check.
    fn listens(&self) -> Vec<Listen>;

    /// Binds its listeners (an error names what could not be bound) and serves, handing
    /// records to `ingest`, until `shutdown`'s drain window is over. Each returned task
    /// ends once the input is done.
    async fn spawn(
        &self,
        ingest: Arc<dyn Ingest>,
        budget: MemoryBudget,
        shutdown: InputShutdown,
    ) -> anyhow::Result<Vec<JoinHandle<()>>>;

    /// Processors this input applies before those its `processors` key lists (forward's
    /// `firelens = true`: `ecs_metadata`, then `partial`). Default: none.
    fn implied_processors(&self) -> Vec<crate::process::ProcessorSpec> {
        Vec::new()
    }

    /// For tests and tools that look at one type's settings.
    fn as_any(&self) -> &dyn std::any::Any;
}
