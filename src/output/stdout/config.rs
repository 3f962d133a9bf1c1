//! `type = "stdout"`: no keys of its own.

use std::time::Duration;

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::core::OutputContext;
use crate::output::from_config::encoding_for;
use crate::output::registry::{OutputConfig, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

/// The `stdout` output type.
pub(crate) struct Stdout;

impl OutputType for Stdout {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn read(&self, _t: &mut Table<'_, '_>, _d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        Box::new(super::StdoutConfig {})
    }
}

#[async_trait::async_trait]
impl OutputConfig for super::StdoutConfig {
    fn type_name(&self) -> &'static str {
        "stdout"
    }

    /// Small, frequent writes keep `docker logs` / `tail -f` and tests responsive.
    fn default_batch(&self) -> BatchSettings {
        BatchSettings {
            max_records: 1024,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(200),
        }
    }

    fn default_concurrency(&self) -> usize {
        1
    }

    fn destination(&self, _o: &OutputSpec, _record: &Record) -> String {
        "standard output".to_string()
    }

    async fn start(
        &self,
        o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = super::StdoutSink::new(self, encoding_for(o), &ctx.batch);
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
