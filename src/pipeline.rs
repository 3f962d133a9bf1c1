//! The path from inputs to output buffers: route every record, then hand each output its
//! share and wait until every buffer accepted it. Only then may an input acknowledge.

use std::sync::Arc;

use metrics::Counter;

use crate::buffer::BufferWriter;
use crate::buffer::budget::{Credit, Reservation};
use crate::event::Record;
use crate::input::ack::AckToken;
use crate::input::{Ingest, IngestError};
use crate::route::{Decision, Router};

/// One output's entry point as seen by the router.
pub(crate) struct OutputPort {
    pub name: String,
    pub writer: BufferWriter,
    dropped: Counter,
    drop_reason: Counter,
    /// `firelane_output_received_records_total{output}`: records this output's buffer took
    /// (accepted, or dropped when full); not those a failed push never took.
    received: Counter,
    /// `firelane_output_refused_records_total{output, reason="too_large"}`: records refused
    /// before the ack because this output's buffer can never store them.
    refused_too_large: Counter,
}

impl OutputPort {
    pub(crate) fn new(name: &str, writer: BufferWriter) -> Self {
        let labels = [("output", name.to_string())];
        OutputPort {
            name: name.to_string(),
            writer,
            received: metrics::counter!("firelane_output_received_records_total", &labels),
            dropped: metrics::counter!("firelane_output_records_total", "output" => name.to_string(), "result" => "dropped"),
            drop_reason: metrics::counter!("firelane_output_drops_total", "output" => name.to_string(), "reason" => "buffer_full"),
            refused_too_large: metrics::counter!("firelane_output_refused_records_total", "output" => name.to_string(), "reason" => "too_large"),
        }
    }
}

pub(crate) struct Pipeline {
    router: Router,
    outputs: Vec<OutputPort>,
    route_counters: Vec<Counter>,
    unrouted: Counter,
}

impl Pipeline {
    pub(crate) fn new(router: Router, outputs: Vec<OutputPort>) -> Arc<Self> {
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

    /// The `Ingest` handle for input number `input`.
    pub(crate) fn port(self: &Arc<Self>, input: usize, name: &str) -> Arc<dyn Ingest> {
        Arc::new(InputPort {
            pipeline: self.clone(),
            input,
            _name: name.to_string(),
        })
    }

    /// Splits `records` into each output's share. Also counts route hits (into
    /// `route_hits`) and records no route took.
    fn split(
        &self,
        input: usize,
        records: Vec<Record>,
        route_hits: &mut [u64],
    ) -> (Vec<Vec<Record>>, u64) {
        let mut shares: Vec<Vec<Record>> = (0..self.outputs.len()).map(|_| Vec::new()).collect();
        let mut decision = Decision::default();
        let mut unrouted = 0u64;
        // Without patterns a decision depends on the tag only, and the records of one
        // request (a forward request, an HTTP body) share their tag: decide once and hand
        // each output the whole request (the last one the vector itself).
        if self.router.is_tag_only()
            && let Some(first) = records.first()
            && records[1..]
                .iter()
                .all(|r| Arc::ptr_eq(&r.tag, &first.tag) || r.tag == first.tag)
        {
            self.router.decide(input, first, &mut decision);
            let n = records.len() as u64;
            for &r in &decision.routes {
                route_hits[r] += n;
            }
            match decision.outputs.split_last() {
                None => unrouted = n,
                Some((&last, rest)) => {
                    for &o in rest {
                        shares[o] = records.clone();
                    }
                    shares[last] = records;
                }
            }
            return (shares, unrouted);
        }
        for record in records {
            self.router.decide(input, &record, &mut decision);
            for &r in &decision.routes {
                route_hits[r] += 1;
            }
            match decision.outputs.split_last() {
                None => unrouted += 1,
                Some((&last, rest)) => {
                    for &o in rest {
                        shares[o].push(record.clone());
                    }
                    shares[last].push(record);
                }
            }
        }
        (shares, unrouted)
    }

    /// Routes `records` and pushes each output its share; the memory buffers draw from
    /// `credit` first (see [`Credit`]), what is left of it is given back on return.
    async fn submit(
        &self,
        input: usize,
        records: Vec<Record>,
        credit: Credit,
    ) -> Result<(), IngestError> {
        // Counted only once the request is taken (not refused as too large below).
        let mut route_hits = vec![0u64; self.route_counters.len()];
        let (shares, unrouted) = self.split(input, records, &mut route_hits);
        // A record some target buffer can never store is refused before anything is
        // pushed: the input answers with an error instead of acking a record that would
        // be dropped after the ack.
        for (o, share) in shares.iter().enumerate() {
            let port = &self.outputs[o];
            for record in share {
                if let Some((bytes, limit)) = port.writer.too_large(record) {
                    port.refused_too_large.increment(1);
                    crate::warn_limited!(
                        "record_too_large",
                        "output {}: refused a record of {bytes} bytes (its buffer takes at most {limit}); the input gets an error, nothing of its request is buffered",
                        port.name
                    );
                    return Err(IngestError::TooLarge {
                        bytes,
                        limit,
                        output: port.name.clone(),
                    });
                }
            }
        }
        for (counter, &n) in self.route_counters.iter().zip(&route_hits) {
            if n > 0 {
                counter.increment(n);
            }
        }
        if unrouted > 0 {
            self.unrouted.increment(unrouted);
        }
        let pushes = shares
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(o, share)| {
                let port = &self.outputs[o];
                let credit = &credit;
                async move { (port, port.writer.push_counted(share, credit).await) }
            });
        let mut result = Ok(());
        for (port, (report, outcome)) in futures::future::join_all(pushes).await {
            // What the buffer took (accepted, or dropped by `drop_newest` and counted as
            // dropped), also when the push failed part-way: received = sent + dropped +
            // dead_lettered + failed + buffered holds. Records a failed push did not take
            // are the input's error to report, not this output's.
            port.received
                .increment((report.accepted + report.dropped) as u64);
            match outcome.map(|()| report) {
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
                        // The check above should have caught it; refused before the ack
                        // all the same (the buffer took nothing of this push).
                        crate::buffer::BufferError::TooLarge { bytes, limit } => {
                            port.refused_too_large.increment(1);
                            IngestError::TooLarge {
                                bytes,
                                limit,
                                output: port.name.clone(),
                            }
                        }
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
        self.pipeline
            .submit(self.input, records, Credit::default())
            .await
    }

    async fn ingest_reserved(
        &self,
        records: Vec<Record>,
        ack: AckToken,
        held: Reservation,
    ) -> Result<(), IngestError> {
        let result = self
            .pipeline
            .submit(self.input, records, Credit::new(held))
            .await;
        ack.settle(&result);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::buffer::budget::MemoryBudget;
    use crate::buffer::{BufferSettings, WhenFull};
    use crate::route::Route;

    fn rec(i: u64) -> Record {
        let serde_json::Value::Object(m) = serde_json::json!({ "i": i }) else {
            unreachable!()
        };
        Record::new("app", 0, m)
    }

    /// A pipeline with one output, `out`, and one route taking every record there.
    fn every_record_to(writer: &BufferWriter) -> Arc<Pipeline> {
        let route = Route {
            name: "all".into(),
            from: None,
            tags: Vec::new(),
            pattern: None,
            to: vec![0],
            is_final: false,
        };
        Pipeline::new(
            Router::new(vec![route]),
            vec![OutputPort::new("out", writer.clone())],
        )
    }

    /// The tester's case: `received` was incremented before the push, so a push the
    /// buffer refused part-way (closed at shutdown, a failed disk write) counted records
    /// no buffer took, and received = sent + dropped + dead_lettered + failed + buffered
    /// no longer held. Here the buffer takes 2 of 5 records, then closes while the push
    /// waits for space: received is 2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn received_counts_what_the_buffer_took_when_a_push_fails() {
        let recorder = crate::test_support::TestRecorder::default();
        let size = rec(0).approx_size() as u64;
        let settings = BufferSettings::memory(2 * size, WhenFull::Block);
        let (writer, _reader, _) =
            crate::buffer::open("out", &settings, MemoryBudget::new(1 << 30)).expect("buffer");
        let pipeline = metrics::with_local_recorder(&recorder, || every_record_to(&writer));
        let ingest = pipeline.port(0, "in");
        let push = tokio::spawn(async move { ingest.ingest((0..5).map(rec).collect()).await });
        let t = std::time::Instant::now();
        while writer.stats().records < 2 && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(writer.stats().records, 2, "the first chunk is buffered");
        writer.close();
        let result = push.await.expect("ingest task");
        assert!(
            matches!(result, Err(IngestError::ShuttingDown)),
            "{result:?}"
        );
        assert_eq!(
            recorder.get("firelane_output_received_records_total{output=out}"),
            2
        );
    }

    /// A forward connection's decoded batch used to be memory the budget did not count
    /// while `ingest` waited out back-pressure (its reservation was dropped first). Handed
    /// along, it stays counted while the push waits, pays for the first buffer's share,
    /// and what is left over goes back when the push is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decoding_reservation_stays_counted_until_the_buffers_hold_the_records() {
        use crate::buffer::budget::UNIT;
        let size = rec(0).approx_size();
        let budget = MemoryBudget::new(1 << 20);
        let settings = BufferSettings::memory(2 * size as u64, WhenFull::Block);
        let (writer, mut reader, _) =
            crate::buffer::open("out", &settings, budget.clone()).expect("buffer");
        let pipeline = every_record_to(&writer);
        // The buffer is full: the next push waits for space.
        writer.push(vec![rec(0), rec(1)]).await.expect("prefill");
        let prefill = budget.used();
        let held = budget.acquire(64 * UNIT).await.expect("held");
        let ingest = pipeline.port(0, "in");
        let (token, _wait) = crate::input::ack::ack_pair();
        let push = tokio::spawn(async move {
            ingest
                .ingest_reserved(vec![rec(2), rec(3)], token, held)
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!push.is_finished(), "waits for buffer space");
        assert_eq!(
            budget.used(),
            prefill + 64 * UNIT,
            "the waiting batch is counted"
        );
        let entries = reader.recv(2).await.expect("entries");
        reader
            .acker()
            .ack(&entries.iter().map(|e| e.seq).collect::<Vec<_>>());
        push.await.expect("task").expect("ingested");
        assert_eq!(writer.stats().records, 2);
        assert_eq!(
            budget.used(),
            prefill,
            "the two new records cost what the two delivered did; the rest of the credit went back"
        );
    }

    fn tagged(tag: &str, i: u64) -> Record {
        let serde_json::Value::Object(m) = serde_json::json!({ "i": i }) else {
            unreachable!()
        };
        Record::new(tag, 0, m)
    }

    /// Tag-only routes decide once for a request whose records share a tag, and per record
    /// otherwise: both give every output the records (in order) and the counts that
    /// deciding per record gives, for fan-out, a tag no route takes and a mixed request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tag_only_routing_of_whole_requests_matches_per_record_routing() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let settings = BufferSettings::memory(1 << 20, WhenFull::Block);
        let budget = MemoryBudget::new(1 << 30);
        let (wa, mut ra, _) = crate::buffer::open("a", &settings, budget.clone()).expect("a");
        let (wb, mut rb, _) = crate::buffer::open("b", &settings, budget).expect("b");
        let route = |name: &str, tag: &str, to: Vec<usize>| Route {
            name: name.into(),
            from: None,
            tags: vec![crate::route::tag::TagGlob::new(tag).expect("glob")],
            pattern: None,
            to,
            is_final: false,
        };
        let pipeline = metrics::with_local_recorder(&recorder, || {
            Pipeline::new(
                Router::new(vec![
                    route("app", "app.*", vec![0, 1]),
                    route("web", "*.web", vec![1]),
                ]),
                vec![OutputPort::new("a", wa), OutputPort::new("b", wb)],
            )
        });
        assert!(pipeline.router.is_tag_only());
        let ingest = pipeline.port(0, "in");
        // One tag (one shared `Arc`, as the forward decoder makes): fan-out to both.
        let tag: Arc<str> = Arc::from("app.web");
        let same: Vec<Record> = (0..3)
            .map(|i| Record::new(tag.clone(), 0, tagged("x", i).fields().into_owned()))
            .collect();
        ingest.ingest(same).await.expect("same tag");
        // A tag no route takes.
        ingest
            .ingest(vec![tagged("other", 9)])
            .await
            .expect("unrouted");
        // Mixed tags (equal text in distinct allocations counts as one tag too).
        let mixed = vec![tagged("app.x", 3), tagged("db.web", 4), tagged("app.x", 5)];
        ingest.ingest(mixed).await.expect("mixed");

        let ids = |entries: Vec<crate::buffer::Entry>| -> Vec<(String, i64)> {
            entries
                .iter()
                .map(|e| {
                    let i = e.record.get("i").and_then(|v| v.to_value().as_i64());
                    (e.record.tag.to_string(), i.unwrap_or(-1))
                })
                .collect()
        };
        let got_a = ids(ra.recv(100).await.expect("a records"));
        let got_b = ids(rb.recv(100).await.expect("b records"));
        let want = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
            v.iter().map(|(t, i)| (t.to_string(), *i)).collect()
        };
        assert_eq!(
            got_a,
            want(&[
                ("app.web", 0),
                ("app.web", 1),
                ("app.web", 2),
                ("app.x", 3),
                ("app.x", 5)
            ])
        );
        assert_eq!(
            got_b,
            want(&[
                ("app.web", 0),
                ("app.web", 1),
                ("app.web", 2),
                ("app.x", 3),
                ("db.web", 4),
                ("app.x", 5)
            ])
        );
        let text = handle.render();
        let value = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(
            value(r#"firelane_route_records_total{route="app"}"#),
            Some(5.0),
            "{text}"
        );
        assert_eq!(
            value(r#"firelane_route_records_total{route="web"}"#),
            Some(4.0),
            "{text}"
        );
        assert_eq!(
            value("firelane_unrouted_records_total"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(r#"firelane_output_received_records_total{output="b"}"#),
            Some(6.0),
            "{text}"
        );
    }
}
