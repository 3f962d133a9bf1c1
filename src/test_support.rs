//! Helpers shared by the library's unit tests (compiled only under `cfg(test)`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// A `metrics` recorder for tests: counts every counter (the sum of its increments) and
/// every histogram (the number of samples) under `name{label=value,…}`, labels sorted by
/// key. Gauges are not kept.
///
/// Install it with `metrics::with_local_recorder` or `metrics::set_default_local_recorder`
/// (both thread-local, so the code under test must register its metrics on that thread,
/// e.g. on a current-thread runtime). A handle registered there keeps counting on any
/// thread afterwards.
#[derive(Default)]
pub(crate) struct TestRecorder {
    values: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    /// The value under `key` as written by this recorder (`name{a=1,b=2}`, `name{}` for a
    /// metric without labels); 0 when it never registered.
    pub(crate) fn get(&self, key: &str) -> u64 {
        self.values
            .lock()
            .get(key)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// `(value of label, count)` for every series of metric `name` whose count is not 0,
    /// ordered by the whole key; series without `label` are left out.
    pub(crate) fn by_label(&self, name: &str, label: &str) -> Vec<(String, u64)> {
        let prefix = format!("{name}{{");
        let wanted = format!("{label}=");
        self.values
            .lock()
            .iter()
            .filter(|(key, v)| key.starts_with(&prefix) && v.load(Ordering::Relaxed) > 0)
            .filter_map(|(key, v)| {
                let labels = key[prefix.len()..].strip_suffix('}')?;
                let value = labels.split(',').find_map(|l| l.strip_prefix(&wanted))?;
                Some((value.to_string(), v.load(Ordering::Relaxed)))
            })
            .collect()
    }

    fn slot(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.values.lock().entry(name).or_default().clone()
    }
}

/// A histogram that only counts its samples.
struct SampleCount(Arc<AtomicU64>);

impl metrics::HistogramFn for SampleCount {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(Arc::new(SampleCount(self.slot(key))))
    }
}

mod tests {
    use super::*;

    #[test]
    fn counts_by_sorted_labels_and_selects_by_label() {
        let rec = TestRecorder::default();
        metrics::with_local_recorder(&rec, || {
            metrics::counter!("c", "kind" => "full", "input" => "web").increment(2);
            metrics::counter!("c", "input" => "web", "kind" => "full").increment(1);
            metrics::counter!("c", "input" => "web", "kind" => "idle").increment(0);
            metrics::counter!("c", "input" => "api").increment(5);
            metrics::counter!("plain").increment(4);
            metrics::histogram!("h", "o" => "x").record(0.5);
            metrics::histogram!("h", "o" => "x").record(1.5);
        });
        assert_eq!(rec.get("c{input=web,kind=full}"), 3);
        assert_eq!(rec.get("plain{}"), 4);
        assert_eq!(rec.get("h{o=x}"), 2);
        assert_eq!(rec.get("never{}"), 0);
        assert_eq!(rec.by_label("c", "kind"), [("full".to_string(), 3)]);
    }
}
