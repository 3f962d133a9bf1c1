//! Route matching cost: one record against 100 realistic routes, and `run_batch` throughput.
//!
//! `cargo bench --bench patterns -- --warm-up-time 1 --measurement-time 3`
//! Throughput is in records (or batch lines), so criterion's "elem/s" is records per second
//! and time / elements is the cost per record for all 100 routes.

use std::hint::black_box;
use std::io;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use firelane::route::pattern::{Pattern, run_batch};
use serde_json::{Map, Value, json};

const ACCOUNT: &str = "123456789012";
const SERVICES: [&str; 10] = [
    "web", "api", "worker", "billing", "auth", "search", "mailer", "cron", "ingest", "gateway",
];
const CLUSTERS: [&str; 3] = ["prod", "staging", "batch"];

fn cluster_arn(c: &str) -> String {
    format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{c}")
}

/// 100 routes in the proportions a FireLens/EventBridge deployment tends to have.
fn routes() -> Vec<Pattern> {
    let mut v: Vec<Value> = Vec::new();
    for (i, svc) in SERVICES.iter().enumerate() {
        let cluster = CLUSTERS[i % CLUSTERS.len()];
        // ECS events: exact source/detail-type/cluster.
        v.push(
            json!({"source": ["aws.ecs"], "detail-type": ["ECS Task State Change"],
                      "detail": {"clusterArn": [cluster_arn(cluster)], "lastStatus": ["STOPPED"]}}),
        );
        // Prefix on task definition ARNs.
        v.push(json!({"detail": {"taskDefinitionArn": [
            {"prefix": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{svc}:")}]}}));
        // Non-zero exit code of this service's container (array consistency).
        v.push(json!({"source": ["aws.ecs"], "detail": {"containers": {
            "name": [svc], "exitCode": [{"numeric": [">", 0]}]}}}));
        // Exit codes as in the seed rule.
        v.push(json!({"detail": {"clusterArn": [cluster_arn(cluster)], "containers": {"exitCode": [1, 127, 137]}}}));
        // anything-but on status, scoped to a service group.
        v.push(json!({"detail": {"group": [format!("service:{svc}")],
                                 "lastStatus": [{"anything-but": ["RUNNING", "PENDING", "PROVISIONING"]}]}}));
        // Log text wildcards.
        v.push(json!({"container_name": [svc], "log": [{"wildcard": "*ERROR*timeout*"}]}));
        v.push(json!({"ecs_cluster": [cluster], "log": [{"wildcard": format!("*{svc}*panicked at*")}]}));
        // $or across ECS events and log records.
        v.push(json!({"$or": [
            {"ecs_task_arn": [{"prefix": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/{cluster}/")}],
             "container_name": [svc]},
            {"detail": {"clusterArn": [cluster_arn(cluster)], "group": [format!("service:{svc}")]}}]}));
        // Tag-style log record routes: stream, level, JSON-in-log prefixes.
        v.push(json!({"ecs_cluster": [cluster], "container_name": [svc], "source": ["stderr"]}));
        v.push(json!({"container_name": [svc], "log": [
            {"prefix": "{\"level\":\"error\""}, {"prefix": "{\"level\":\"fatal\""},
            {"prefix": {"equals-ignore-case": "error"}}]}));
    }
    assert_eq!(v.len(), 100);
    v.iter()
        .map(|p| Pattern::from_value(p).unwrap_or_else(|e| panic!("bench route {p}: {e}")))
        .collect()
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("records are objects"),
    }
}

fn task_event(
    cluster: &str,
    svc: &str,
    last_status: &str,
    exit_web: Option<i64>,
    exit_sidecar: Option<i64>,
) -> Map<String, Value> {
    let task =
        format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/{cluster}/0f6c1b4e7d2a4d3b9c8e5f4a3b2c1d0e");
    let container = |name: &str, exit: Option<i64>| {
        let mut c = json!({
            "containerArn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:container/{cluster}/0f6c1b4e/{name}"),
            "lastStatus": last_status, "name": name,
            "image": format!("{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{name}:1.4.2"),
            "taskArn": task, "networkInterfaces": [{"attachmentId": "a1", "privateIpv4Address": "10.0.1.17"}],
            "cpu": "0", "memory": "512"
        });
        if let Some(code) = exit {
            c["exitCode"] = json!(code);
        }
        c
    };
    fields(json!({
        "version": "0", "id": "8f07966c-b005-4a0f-9ee9-63d2c41448b3",
        "detail-type": "ECS Task State Change", "source": "aws.ecs", "account": ACCOUNT,
        "time": "2024-05-14T09:21:44Z", "region": "us-east-1", "resources": [task],
        "detail": {
            "attachments": [{"id": "e1", "type": "eni", "status": "DELETED",
                             "details": [{"name": "subnetId", "value": "subnet-0a1b2c3d"}]}],
            "availabilityZone": "us-east-1a", "clusterArn": cluster_arn(cluster),
            "containers": [container(svc, exit_web), container("log_router", exit_sidecar)],
            "cpu": "512", "createdAt": "2024-05-14T09:20:01.671Z", "desiredStatus": "STOPPED",
            "group": format!("service:{svc}"), "launchType": "FARGATE", "lastStatus": last_status,
            "memory": "1024", "platformVersion": "1.4.0",
            "stoppedReason": "Essential container in task exited", "stopCode": "EssentialContainerExited",
            "taskArn": task,
            "taskDefinitionArn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{svc}:42"),
            "version": 5
        }
    }))
}

fn firelens_record(cluster: &str, svc: &str, stream: &str, log: &str) -> Map<String, Value> {
    fields(json!({
        "container_id": "0f6c1b4e7d2a4d3b9c8e5f4a3b2c1d0e-2785345478",
        "container_name": svc,
        "ecs_cluster": cluster,
        "ecs_task_arn": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/{cluster}/0f6c1b4e7d2a4d3b9c8e5f4a3b2c1d0e"),
        "ecs_task_definition": format!("{svc}:42"),
        "log": log,
        "source": stream
    }))
}

fn ecs_events() -> Vec<Map<String, Value>> {
    vec![
        task_event("prod", "web", "STOPPED", Some(137), Some(0)),
        task_event("prod", "api", "RUNNING", None, None),
        task_event("batch", "cron", "STOPPED", Some(0), Some(0)),
        task_event("staging", "ingest", "STOPPED", Some(1), Some(127)),
    ]
}

fn firelens_records() -> Vec<Map<String, Value>> {
    vec![
        firelens_record(
            "prod",
            "web",
            "stdout",
            "10.0.1.5 - - [14/May/2024:09:21:44 +0000] \"GET /healthz HTTP/1.1\" 200 2 \"-\" \"ELB-HealthChecker/2.0\"",
        ),
        firelens_record(
            "prod",
            "api",
            "stderr",
            "{\"level\":\"error\",\"ts\":\"2024-05-14T09:21:44Z\",\"msg\":\"upstream timeout\",\"route\":\"/v1/orders\"}",
        ),
        firelens_record(
            "prod",
            "worker",
            "stdout",
            "2024-05-14 09:21:44,120 INFO worker.jobs processed job=7f3a duration_ms=184",
        ),
        firelens_record(
            "batch",
            "cron",
            "stderr",
            "thread 'main' panicked at src/cron.rs:88:14: called `Result::unwrap()` on an `Err` value",
        ),
        firelens_record(
            "staging",
            "search",
            "stdout",
            "2024-05-14T09:21:44.512Z ERROR search: query timeout after 3000ms index=products",
        ),
        firelens_record(
            "prod",
            "gateway",
            "stdout",
            "upstream connect error or disconnect/reset before headers",
        ),
        firelens_record(
            "prod",
            "auth",
            "stdout",
            "{\"level\":\"info\",\"msg\":\"token refreshed\",\"user\":\"u-1842\"}",
        ),
        firelens_record(
            "staging",
            "mailer",
            "stderr",
            "Error: SMTP 421 try again later",
        ),
    ]
}

fn match_all(routes: &[Pattern], record: &Map<String, Value>) -> usize {
    routes.iter().filter(|r| r.matches_fields(record)).count()
}

fn bench_routes(c: &mut Criterion) {
    let routes = routes();
    let ecs = ecs_events();
    let logs = firelens_records();
    // Keep the routes honest: they must actually fire on some of the records.
    let hits: usize = ecs.iter().chain(&logs).map(|r| match_all(&routes, r)).sum();
    assert!(hits > 10, "routes match too little ({hits})");

    let mut g = c.benchmark_group("route_100");
    for (name, records) in [("ecs_task_state_change", &ecs), ("firelens_record", &logs)] {
        g.throughput(Throughput::Elements(records.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0;
                for r in records.iter() {
                    n += match_all(&routes, black_box(r));
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

/// 100,000 `{"pattern", "event"}` lines: parse both, compile, match, write the answer.
fn batch_input(lines: usize) -> Vec<u8> {
    let patterns = [
        json!({"source": ["aws.ecs"], "detail": {"containers": {"exitCode": [1, 127]}}}),
        json!({"container_name": ["api"], "log": [{"wildcard": "*timeout*"}]}),
        json!({"$or": [{"ecs_cluster": ["prod"]}, {"detail": {"lastStatus": [{"anything-but": "RUNNING"}]}}]}),
        json!({"detail": {"containers": {"exitCode": [{"numeric": [">=", 5, "<=", 5]}]}}}),
    ];
    let events: Vec<Value> = ecs_events()
        .into_iter()
        .chain(firelens_records())
        .map(Value::Object)
        .collect();
    let mut out = Vec::new();
    for i in 0..lines {
        let line =
            json!({"pattern": patterns[i % patterns.len()], "event": events[i % events.len()]});
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn bench_batch(c: &mut Criterion) {
    const LINES: usize = 100_000;
    let input = batch_input(LINES);
    let mut g = c.benchmark_group("run_batch");
    g.sample_size(10);
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("100k_lines", |b| {
        b.iter(|| run_batch(black_box(&input[..]), io::sink()).expect("batch into a sink"))
    });
    g.finish();
}

criterion_group!(benches, bench_routes, bench_batch);
criterion_main!(benches);
