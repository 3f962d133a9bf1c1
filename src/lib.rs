//! firelane: a log and event router for Amazon ECS.
//!
//! The data's path is the module tree: `input` (forward, HTTP) → `pipeline` (routing by
//! `route`) → `buffer` (one per output) → `output` (batching, retries, sinks). `config`
//! reads the TOML, `topology` wires and runs it, `plan` shows it (`check`, `route`), `admin` serves health and metrics.

#![warn(missing_docs)]

pub mod admin;
pub(crate) mod buffer;
pub mod config;
pub mod event;
pub mod input;
pub mod loadgen;
pub mod output;
pub(crate) mod pipeline;
pub mod plan;
pub(crate) mod process;
pub mod route;
pub(crate) mod serve;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_support;
pub mod topology;
