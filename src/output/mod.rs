//! Outputs: the shared delivery core ([`core::run`]) and the sinks it drives.

pub mod aws;
pub mod core;
mod deliver;
pub mod encode;
pub mod file;
pub mod from_config;
pub mod http;
pub mod lines;
pub mod null;
pub mod registry;
pub mod retry;
pub mod sink;
pub mod stdout;
pub mod template;

pub use self::core::{DeadLetter, OutputContext, OutputHealth, OutputShutdown, OutputSummary, run};
pub use deliver::ERROR_FIELD;

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
