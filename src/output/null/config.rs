//! `type = "null"`: no keys of its own.

use std::time::Duration;

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::core::OutputContext;
use crate::output::registry::{OutputConfig, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

/// The `null` output type.
pub(crate) struct Null;

/// A `null` output's settings: none.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NullConfig;

impl OutputType for Null {
    fn name(&self) -> &'static str {
        "null"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn read(&self, _t: &mut Table<'_, '_>, _d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        Box::new(NullConfig)
    }
}

#[async_trait::async_trait]
impl OutputConfig for NullConfig {
    fn type_name(&self) -> &'static str {
        "null"
    }

    fn default_batch(&self) -> BatchSettings {
        BatchSettings {
            max_records: 4096,
            max_bytes: 4 << 20,
            max_age: Duration::from_millis(200),
        }
    }

    fn default_concurrency(&self) -> usize {
        1
    }

    fn destination(&self, _o: &OutputSpec, _record: &Record) -> String {
        "discarded (counted as sent)".to_string()
    }

    async fn start(
        &self,
        _o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = super::NullSink::new(&ctx.batch);
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
