//! The counters add up: per output, received = sent + dropped + dead_lettered + failed +
//! buffered; per input and route, every record is counted once; unrouted records are
//! counted. Checked on a running router with a healthy, a shedding and a filtered output.

mod common;

use std::time::Duration;

use common::{Router, free_port, metric_sum};

fn post(port: u16, tag: &str, body: String) -> u16 {
    let client = reqwest::blocking::Client::new();
    client
        .post(format!("http://127.0.0.1:{port}/tag/{tag}"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .expect("post")
        .status()
        .as_u16()
}

fn output_fates(text: &str, output: &str) -> (f64, f64) {
    let o = format!(r#"output="{output}""#);
    let received = metric_sum(text, "firelane_output_received_records_total", &[&o]);
    let mut accounted = metric_sum(text, "firelane_buffer_records", &[&o]);
    for result in ["sent", "dropped", "dead_lettered", "failed"] {
        let r = format!(r#"result="{result}""#);
        accounted += metric_sum(text, "firelane_output_records_total", &[&o, &r]);
    }
    (received, accounted)
}

#[test]
fn counters_add_up_per_input_route_and_output() {
    let http = free_port();
    let (_silent, stalled) = common::silent_peer();
    let cfg = format!(
        r#"
[inputs.web]
type = "http"
listen = "127.0.0.1:{http}"

[routes.app]
tag = ["app.*"]
to = ["good", "shed"]

[routes.errors]
pattern = {{ level = ["error"] }}
to = ["errors"]

[outputs.good]
type = "file"
path = "{{dir}}/good.jsonl"
batch = {{ max_age = "50ms" }}

[outputs.shed]
type = "http"
url = "http://{stalled}/"
timeout = "60s"
buffer = {{ max_size = "16KiB", when_full = "drop_newest" }}

[outputs.errors]
type = "null"
batch = {{ max_age = "50ms" }}
"#
    );
    let mut router = Router::start(&cfg);
    router.wait_ready(Duration::from_secs(20));

    let line = |i: u32| {
        let level = if i.is_multiple_of(5) { "error" } else { "info" };
        format!(
            "{{\"i\":{i},\"level\":\"{level}\",\"log\":\"{}\"}}\n",
            "x".repeat(100)
        )
    };
    let mut i = 0;
    for _ in 0..300 {
        let body: String = (0..10)
            .map(|_| {
                i += 1;
                line(i)
            })
            .collect();
        assert_eq!(post(http, "app.web", body), 200);
    }
    // 50 info records no route takes, and 10 error records only the pattern route takes.
    let info: String = (0..50)
        .map(|k| format!("{{\"k\":{k},\"level\":\"info\"}}\n"))
        .collect();
    assert_eq!(post(http, "other", info), 200);
    let errors: String = (0..10)
        .map(|k| format!("{{\"k\":{k},\"level\":\"error\"}}\n"))
        .collect();
    assert_eq!(post(http, "other", errors), 200);

    router.wait_metric(
        "firelane_output_records_total",
        &[r#"output="good""#, r#"result="sent""#],
        3000.0,
        Duration::from_secs(30),
    );
    router.wait_metric(
        "firelane_output_records_total",
        &[r#"output="errors""#, r#"result="sent""#],
        610.0,
        Duration::from_secs(30),
    );

    let text = router.metrics();
    assert_eq!(
        metric_sum(&text, "firelane_input_records_total", &[r#"input="web""#]),
        3060.0
    );
    assert_eq!(
        metric_sum(&text, "firelane_route_records_total", &[r#"route="app""#]),
        3000.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "firelane_route_records_total",
            &[r#"route="errors""#]
        ),
        610.0
    );
    assert_eq!(
        metric_sum(&text, "firelane_unrouted_records_total", &[]),
        50.0
    );

    for (output, want) in [("good", 3000.0), ("shed", 3000.0), ("errors", 610.0)] {
        let (received, accounted) = output_fates(&text, output);
        assert_eq!(received, want, "{output} received\n{text}");
        assert_eq!(
            received, accounted,
            "{output}: received != sent + dropped + dead_lettered + failed + buffered\n{text}"
        );
    }
    // The shedding output really shed (its 16 KiB buffer cannot hold 3000 records) and
    // said why.
    let shed_dropped = metric_sum(
        &text,
        "firelane_output_records_total",
        &[r#"output="shed""#, r#"result="dropped""#],
    );
    assert!(shed_dropped > 2000.0, "shed dropped only {shed_dropped}");
    assert_eq!(
        metric_sum(
            &text,
            "firelane_output_drops_total",
            &[r#"output="shed""#, r#"reason="buffer_full""#]
        ),
        shed_dropped
    );
    // And nothing it dropped was taken from the healthy output.
    assert_eq!(common::read_jsonl(&router.path("good.jsonl")).len(), 3000);
}
