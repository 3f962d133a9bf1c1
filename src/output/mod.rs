//! Outputs: the shared delivery core ([`core::run`]) and the sinks it drives.

pub(crate) mod alert;
pub mod aws;
pub(crate) mod compress;
pub(crate) mod core;
mod deliver;
pub(crate) mod encode;
pub(crate) mod file;
pub(crate) mod from_config;
pub(crate) mod http;
pub(crate) mod lines;
pub(crate) mod null;
pub(crate) mod pool;
pub(crate) mod registry;
pub(crate) mod retry;
pub mod sink;
pub(crate) mod slack;
pub(crate) mod stdout;
pub(crate) mod template;

#[cfg(test)]
pub(crate) use self::core::{OutputContext, OutputSummary, run};
#[cfg(test)]
pub(crate) use deliver::ERROR_FIELD;

/// A roomy memory buffer for tests.
#[cfg(test)]
pub(crate) fn test_buffer() -> (crate::buffer::BufferWriter, crate::buffer::BufferReader) {
    use crate::buffer::{BufferSettings, WhenFull, budget::MemoryBudget};
    let settings = BufferSettings::memory(1 << 30, WhenFull::Block);
    match crate::buffer::open("test", &settings, MemoryBudget::new(1 << 30)) {
        Ok((writer, reader, _)) => (writer, reader),
        Err(e) => panic!("test buffer: {e}"),
    }
}
