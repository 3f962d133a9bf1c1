//! `type = "file"`: JSON lines appended to `path`.
//!
//! Each batch is one `write` of the whole body (O_APPEND, so concurrent writers such as
//! a second router never split a line) followed by a flush. The file is reopened after
//! any error and when `path` no longer names the open file (logrotate moved it away).

pub(crate) mod config;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use super::encode::Encoding;
use super::lines::{LinesBatch, LinesBatchBuilder, batch_pool};
use super::pool::BufferPool;
use super::sink::{BatchSettings, Failure, SendResult, Sink};
use super::stdout::io_failure;

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FileConfig {
    pub path: PathBuf,
}

pub(crate) struct FileSink {
    path: Arc<PathBuf>,
    file: Arc<Mutex<Option<File>>>,
    batch: BatchSettings,
    encoding: Arc<Encoding>,
    /// Batch buffers, reused from one batch to the next.
    pool: BufferPool,
}

impl FileSink {
    /// Does not touch the file system: the file is opened on the first batch, so a
    /// volume mounted late does not fail startup.
    pub(crate) fn new(config: &FileConfig, encoding: Encoding, batch: &BatchSettings) -> Self {
        FileSink {
            path: Arc::new(config.path.clone()),
            file: Arc::new(Mutex::new(None)),
            batch: batch.clone(),
            encoding: Arc::new(encoding),
            pool: batch_pool(),
        }
    }
}

impl Sink for FileSink {
    type Builder = LinesBatchBuilder;
    /// One stream of records: every batch is alike.
    type Partition = ();

    fn partition(&self, _record: &crate::event::Record) -> Result<(), &'static str> {
        Ok(())
    }

    fn new_batch(&self, _partition: &()) -> LinesBatchBuilder {
        LinesBatchBuilder::new(&self.batch, self.encoding.clone(), &self.pool)
    }

    async fn send(&self, _partition: &(), batch: &LinesBatch) -> SendResult {
        let path = self.path.clone();
        let file = self.file.clone();
        let body = batch.body.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut slot = file.lock();
            if slot.as_ref().is_some_and(|f| !still_at_path(f, &path)) {
                *slot = None;
            }
            if slot.is_none() {
                let f = OpenOptions::new().create(true).append(true).open(&*path);
                *slot = Some(f.map_err(|e| io_failure(&format!("open {}", path.display()), &e))?);
            }
            let Some(f) = slot.as_mut() else {
                return Err(Failure::retryable("io_error", "file not open"));
            };
            // A failed write may have appended part of the batch (a full disk takes what
            // fits): cut the file back to where the batch began, so the retry appends it
            // whole instead of after a torn line. Appends come only from this sink and
            // under this lock, so the length before the write is where the batch starts.
            let start = f.metadata().map(|m| m.len());
            let res = f.write_all(&body).and_then(|()| f.flush());
            if let Err(e) = res {
                let rolled_back = match start {
                    Ok(len) => f.set_len(len).map_err(|t| t.to_string()),
                    Err(m) => Err(m.to_string()),
                };
                *slot = None;
                if let Err(why) = rolled_back {
                    tracing::error!(
                        path = %path.display(),
                        "could not cut a partly written batch off the file ({why}); its retry may follow a torn line"
                    );
                }
                return Err(io_failure(&format!("write {}", path.display()), &e));
            }
            Ok(())
        })
        .await;
        match written {
            Ok(Ok(())) => SendResult::Delivered,
            Ok(Err(failure)) => SendResult::Failed(failure),
            Err(e) => SendResult::Failed(Failure::retryable(
                "io_error",
                format!("file writer task: {e}"),
            )),
        }
    }
}

#[cfg(unix)]
fn still_at_path(f: &File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn still_at_path(_f: &File, path: &std::path::Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::Record;
    use crate::output::core::{OutputContext, run};
    use crate::output::sink::BatchBuilder;

    fn record(i: i64) -> Record {
        let mut f = serde_json::Map::new();
        f.insert("log".into(), format!("line {i}").into());
        f.insert("n".into(), serde_json::from_str("1.50").unwrap());
        Record::new("app", i, f)
    }

    #[tokio::test]
    async fn appends_json_lines_through_the_core() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        std::fs::write(&path, "existing\n").unwrap();
        let batch = BatchSettings {
            max_records: 2,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        };
        let enc = Encoding {
            tag_key: Some("tag".into()),
            time_key: None,
        };
        let sink = Arc::new(FileSink::new(
            &FileConfig { path: path.clone() },
            enc,
            &batch,
        ));
        let (writer, reader) = crate::output::test_buffer();
        writer.push((0..3).map(record).collect()).await.unwrap();
        writer.close();
        let mut ctx = OutputContext::new("file", batch);
        ctx.concurrency = 1;
        let summary = run(ctx, sink, reader).await;
        assert_eq!(summary.sent, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "existing\n\
             {\"tag\":\"app\",\"log\":\"line 0\",\"n\":1.50}\n\
             {\"tag\":\"app\",\"log\":\"line 1\",\"n\":1.50}\n\
             {\"tag\":\"app\",\"log\":\"line 2\",\"n\":1.50}\n"
        );
    }

    #[tokio::test]
    async fn reopens_after_rotation_and_fails_retryably_on_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let batch = BatchSettings {
            max_records: 10,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        };
        let sink = FileSink::new(
            &FileConfig { path: path.clone() },
            Encoding::default(),
            &batch,
        );
        let one = |i| {
            let mut b = sink.new_batch(&());
            assert_eq!(b.push(&record(i)), crate::output::sink::Push::Added);
            b.finish()
        };
        assert_eq!(sink.send(&(), &one(0)).await, SendResult::Delivered);
        std::fs::rename(&path, dir.path().join("out.log.1")).unwrap();
        assert_eq!(sink.send(&(), &one(1)).await, SendResult::Delivered);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.log.1"))
                .unwrap()
                .lines()
                .count(),
            1
        );

        let missing = FileSink::new(
            &FileConfig {
                path: dir.path().join("no/such/dir/x.log"),
            },
            Encoding::default(),
            &batch,
        );
        match missing.send(&(), &one(2)).await {
            SendResult::Failed(f) => {
                assert!(f.retryable && f.message.contains("no/such/dir"), "{f:?}")
            }
            other => panic!("expected failure, got {other:?}"),
        }
    }
}
