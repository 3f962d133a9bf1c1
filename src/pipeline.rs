//! The path from inputs to output buffers: route every record, then hand each output its
//! share and wait until every buffer accepted it. Only then may an input acknowledge.

use std::sync::Arc;

use metrics::Counter;

use crate::buffer::BufferWriter;
use crate::event::Record;
use crate::input::{Ingest, IngestError};
use crate::route::{Decision, Router};

/// One output's entry point as seen by the router.
pub struct OutputPort {
    pub name: String,
    pub writer: BufferWriter,
    received: Counter,
    dropped: Counter,
    drop_reason: Counter,
}

impl OutputPort {
    pub fn new(name: &str, writer: BufferWriter) -> Self {
        let labels = [("output", name.to_string())];
        OutputPort {
            name: name.to_string(),
            writer,
            received: metrics::counter!("firelane_output_received_records_total", &labels),
            dropped: metrics::counter!("firelane_output_records_total", "output" => name.to_string(), "result" => "dropped"),
            drop_reason: metrics::counter!("firelane_output_drops_total", "output" => name.to_string(), "reason" => "buffer_full"),
        }
    }
}

pub struct Pipeline {
    router: Router,
    outputs: Vec<OutputPort>,
    route_counters: Vec<Counter>,
    unrouted: Counter,
}

impl Pipeline {
    pub fn new(router: Router, outputs: Vec<OutputPort>) -> Arc<Self> {
        let route_counters = router
            .routes()
            .iter()
            .map(|r| metrics::counter!("firelane_route_records_total", "route" => r.name.clone()))
            .collect();
        Arc::new(Pipeline {
            router,
            outputs,
            route_counters,
            unrouted: metrics::counter!("firelane_unrouted_records_total"),
        })
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn outputs(&self) -> &[OutputPort] {
        &self.outputs
    }

    /// The `Ingest` handle for input number `input`.
    pub fn port(self: &Arc<Self>, input: usize, name: &str) -> Arc<dyn Ingest> {
        Arc::new(InputPort {
            pipeline: self.clone(),
            input,
            _name: name.to_string(),
        })
    }

    async fn submit(&self, input: usize, records: Vec<Record>) -> Result<(), IngestError> {
        let mut shares: Vec<Vec<Record>> = (0..self.outputs.len()).map(|_| Vec::new()).collect();
        let mut decision = Decision::default();
        for record in records {
            self.router.decide(input, &record, &mut decision);
            for &r in &decision.routes {
                self.route_counters[r].increment(1);
            }
            match decision.outputs.split_last() {
                None => self.unrouted.increment(1),
                Some((&last, rest)) => {
                    for &o in rest {
                        shares[o].push(record.clone());
                    }
                    shares[last].push(record);
                }
            }
        }
        let pushes = shares
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(o, share)| {
                let port = &self.outputs[o];
                port.received.increment(share.len() as u64);
                async move { (port, port.writer.push(share).await) }
            });
        let mut result = Ok(());
        for (port, outcome) in futures::future::join_all(pushes).await {
            match outcome {
                Ok(report) if report.dropped > 0 => {
                    port.dropped.increment(report.dropped as u64);
                    port.drop_reason.increment(report.dropped as u64);
                    crate::warn_limited!(
                        "buffer_full_drop",
                        "output {}: buffer full, {} records dropped (when_full = \"drop_newest\")",
                        port.name,
                        report.dropped
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    crate::warn_limited!(
                        "buffer_push_failed",
                        "output {}: buffer refused records: {e}",
                        port.name
                    );
                    result = Err(match e {
                        crate::buffer::BufferError::Closed => IngestError::ShuttingDown,
                        crate::buffer::BufferError::Io { ref source, .. }
                            if source.raw_os_error() == Some(libc::ENOSPC) =>
                        {
                            IngestError::DiskFull {
                                output: port.name.clone(),
                            }
                        }
                        other => IngestError::Buffer {
                            output: port.name.clone(),
                            reason: other.to_string(),
                        },
                    });
                }
            }
        }
        result
    }
}

struct InputPort {
    pipeline: Arc<Pipeline>,
    input: usize,
    _name: String,
}

#[async_trait::async_trait]
impl Ingest for InputPort {
    async fn ingest(&self, records: Vec<Record>) -> Result<(), IngestError> {
        self.pipeline.submit(self.input, records).await
    }
}
