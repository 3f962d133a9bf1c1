//! `type = "file"`: `path`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::OutputSpec;
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;
use crate::output::core::OutputContext;
use crate::output::from_config::encoding_for;
use crate::output::registry::{OutputConfig, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;

/// The `file` output type.
pub(crate) struct File;

impl OutputType for File {
    fn name(&self) -> &'static str {
        "file"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["path"]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let path = t.string(d, "path").unwrap_or_default();
        Box::new(super::FileConfig {
            path: PathBuf::from(path),
        })
    }
}

#[async_trait::async_trait]
impl OutputConfig for super::FileConfig {
    fn type_name(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    /// Small, frequent writes keep `tail -f` and tests responsive.
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
        self.path.display().to_string()
    }

    async fn start(
        &self,
        o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = super::FileSink::new(self, encoding_for(o), &ctx.batch);
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
