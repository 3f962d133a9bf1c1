//! Unit tests against a loopback metadata endpoint serving recorded answers
//! (`tests/data/tmds/`).

use std::sync::Arc;

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use serde_json::json;

use super::tmds::{NetworkMode, parse_network_mode, parse_task};
use super::*;

pub(crate) const EC2_TASK: &str = include_str!("../../../tests/data/tmds/ec2-task.json");
const EC2_BEFORE_APP: &str = include_str!("../../../tests/data/tmds/ec2-task-before-app.json");
pub(crate) const EC2_CONTAINER: &str = include_str!("../../../tests/data/tmds/ec2-container.json");
pub(crate) const FARGATE_TASK: &str = include_str!("../../../tests/data/tmds/fargate-task.json");
pub(crate) const FARGATE_CONTAINER: &str =
    include_str!("../../../tests/data/tmds/fargate-container.json");

const WEB_ID: &str = "8f1c2b6a9d0e4f3a7b5c6d7e8f9012345678901234567890abcdef0123456789";
const EC2_TASK_ID: &str = "3de392df6bf34bd0b2e2b4a1c3e9c7d1";

/// A loopback endpoint: serves `task` at `/v4/x/task` and `container` at `/v4/x` with
/// `status`, counting `/task` requests.
pub(crate) struct Endpoint {
    task: Mutex<&'static str>,
    container: &'static str,
    pub(crate) status: AtomicU16,
    task_hits: AtomicUsize,
}

pub(crate) async fn serve(task: &'static str, container: &'static str) -> (Arc<Endpoint>, String) {
    use axum::extract::State;
    use axum::http::StatusCode;
    let ep = Arc::new(Endpoint {
        task: Mutex::new(task),
        container,
        status: AtomicU16::new(200),
        task_hits: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route(
            "/v4/x/task",
            axum::routing::get(|State(ep): State<Arc<Endpoint>>| async move {
                ep.task_hits.fetch_add(1, Ordering::SeqCst);
                let status = StatusCode::from_u16(ep.status.load(Ordering::SeqCst))
                    .unwrap_or(StatusCode::OK);
                (status, *ep.task.lock())
            }),
        )
        .route(
            "/v4/x",
            axum::routing::get(|State(ep): State<Arc<Endpoint>>| async move {
                let status = StatusCode::from_u16(ep.status.load(Ordering::SeqCst))
                    .unwrap_or(StatusCode::OK);
                (status, ep.container)
            }),
        )
        .with_state(ep.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v4/x", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (ep, url)
}

fn record(tag: &str, container_id: Option<&str>) -> Record {
    let mut f = Fields::new();
    f.insert("log".into(), json!("hello"));
    if let Some(id) = container_id {
        f.insert("container_id".into(), json!(id));
        f.insert(
            "container_name".into(),
            json!("/ecs-checkout-42-web-c8d9e0f1a2b3c4d5e600"),
        );
    }
    f.insert("source".into(), json!("stdout"));
    Record::new(tag, 1, f)
}

use crate::event::Fields;

fn field(r: &Record, k: &str) -> Option<String> {
    r.get(k).and_then(|v| v.as_str()).map(str::to_owned)
}

fn start(url: &str) -> EcsMetadataProcessor {
    EcsMetadataProcessor::new(Some(EcsMetadata::start(
        "meta",
        Some(url),
        &CancellationToken::new(),
    )))
}

/// Runs `records` through `p` as one request and lets its timer run until every record
/// came out (or 10 s); returns them with whether the request's acknowledgement was released.
async fn run(p: &mut EcsMetadataProcessor, records: Vec<Record>) -> (Vec<Record>, bool) {
    let n = records.len();
    let (token, mut wait) = crate::input::ack::ack_pair();
    let mut out = p.process(Batch::new(records, token)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.records.len() < n && Instant::now() < deadline {
        tokio::time::sleep(TICK).await;
        out.append(p.flush_due(Instant::now()));
    }
    let Batch { records, acks } = out;
    for a in acks {
        a.release();
    }
    let acked = matches!(wait.try_outcome(), Some(Ok(())));
    (records, acked)
}

#[test]
fn parses_the_ec2_shape() {
    let t = parse_task(EC2_TASK.as_bytes()).unwrap();
    assert_eq!(t.cluster, "prod-east");
    assert_eq!(
        t.task_arn,
        format!("arn:aws:ecs:us-east-1:111122223333:task/prod-east/{EC2_TASK_ID}")
    );
    assert_eq!(t.task_id, EC2_TASK_ID);
    assert_eq!(t.task_definition, "checkout:42");
    assert_eq!(t.launch_type.as_deref(), Some("EC2"));
    assert_eq!(t.containers.get(WEB_ID).map(String::as_str), Some("web"));
    assert_eq!(t.containers.len(), 2);
    assert_eq!(
        parse_network_mode(EC2_CONTAINER.as_bytes()).unwrap(),
        Some(NetworkMode::Bridge)
    );
    // Before Docker created `web`, only the router is known.
    let before = parse_task(EC2_BEFORE_APP.as_bytes()).unwrap();
    assert_eq!(before.containers.len(), 1);
}

#[test]
fn parses_the_fargate_shape_with_a_cluster_arn() {
    let t = parse_task(FARGATE_TASK.as_bytes()).unwrap();
    assert_eq!(t.cluster, "payments");
    assert_eq!(t.task_id, "febee046097849aba589d4435207c04a");
    assert_eq!(t.task_definition, "ledger-api:7");
    assert_eq!(
        t.containers
            .get("febee046097849aba589d4435207c04a-1940473510")
            .map(String::as_str),
        Some("api")
    );
    assert_eq!(
        parse_network_mode(FARGATE_CONTAINER.as_bytes()).unwrap(),
        Some(NetworkMode::Awsvpc)
    );
}

#[test]
fn odd_answers_are_errors_or_fallbacks_not_panics() {
    assert!(parse_task(b"").is_err());
    assert!(parse_task(b"[]").is_err());
    assert!(parse_task(br#"{"TaskARN":"nope","Family":"f","Revision":"1"}"#).is_err());
    // No `Cluster`: the new-format ARN names it; a numeric revision is accepted.
    let t = parse_task(br#"{"TaskARN":"arn:aws:ecs:r:1:task/c1/abc","Family":"f","Revision":3}"#)
        .unwrap();
    assert_eq!(
        (t.cluster.as_str(), t.task_definition.as_str()),
        ("c1", "f:3")
    );
    assert!(
        parse_task(br#"{"TaskARN":"arn:aws:ecs:r:1:task/abc","Family":"f","Revision":"1"}"#)
            .is_err()
    );
    assert_eq!(tmds::cluster_name("arn:aws:ecs:r:1:cluster/a"), "a");
    assert_eq!(tmds::cluster_name("plain"), "plain");
    assert_eq!(parse_network_mode(b"{}").unwrap(), None);
}

/// Every record gets the five fields, EC2 and Fargate, packed or tree bodies; fields a record
/// already has are kept.
#[tokio::test]
async fn every_record_gets_the_fields() {
    let (_ep, url) = serve(EC2_TASK, EC2_CONTAINER).await;
    let mut meta = start(&url);
    let mut records = vec![
        record("web-firelens-x", Some(WEB_ID)),
        record("web-firelens-x", Some(WEB_ID)),
    ];
    records[1]
        .fields_mut()
        .insert("ecs_cluster".into(), json!("upstream"));
    let (records, acked) = run(&mut meta, records).await;
    assert!(acked);
    for (i, r) in records.iter().enumerate() {
        let cluster = if i == 1 { "upstream" } else { "prod-east" };
        assert_eq!(field(r, "ecs_cluster").as_deref(), Some(cluster));
        assert_eq!(field(r, "ecs_task_id").as_deref(), Some(EC2_TASK_ID));
        assert_eq!(
            field(r, "ecs_task_arn").as_deref(),
            Some(
                "arn:aws:ecs:us-east-1:111122223333:task/prod-east/3de392df6bf34bd0b2e2b4a1c3e9c7d1"
            )
        );
        assert_eq!(
            field(r, "ecs_task_definition").as_deref(),
            Some("checkout:42")
        );
        assert_eq!(field(r, "ecs_container_name").as_deref(), Some("web"));
        assert_eq!(field(r, "log").as_deref(), Some("hello"));
    }

    let (_ep, url) = serve(FARGATE_TASK, FARGATE_CONTAINER).await;
    let mut meta = start(&url);
    let records = vec![record(
        "api-firelens-febee046097849aba589d4435207c04a",
        Some("febee046097849aba589d4435207c04a-1940473510"),
    )];
    let (records, _) = run(&mut meta, records).await;
    let r = &records[0];
    assert_eq!(field(r, "ecs_cluster").as_deref(), Some("payments"));
    assert_eq!(
        field(r, "ecs_task_id").as_deref(),
        Some("febee046097849aba589d4435207c04a")
    );
    assert_eq!(
        field(r, "ecs_task_definition").as_deref(),
        Some("ledger-api:7")
    );
    assert_eq!(field(r, "ecs_container_name").as_deref(), Some("api"));
}

/// Endpoint failing at start-up: records do not wait beyond the start-up bound and pass
/// unchanged; once it answers, records get the fields.
#[tokio::test]
async fn endpoint_down_at_start_then_up() {
    let (ep, url) = serve(EC2_TASK, EC2_CONTAINER).await;
    ep.status.store(503, Ordering::SeqCst);
    let mut meta = start(&url);
    let t0 = tokio::time::Instant::now();
    let (records, acked) = run(&mut meta, vec![record("t", Some(WEB_ID))]).await;
    assert!(acked);
    assert!(t0.elapsed() < STARTUP_WAIT + Duration::from_secs(1));
    assert_eq!(field(&records[0], "ecs_cluster"), None);
    assert_eq!(records[0].fields().len(), 4, "unchanged");
    let shared = meta.meta.clone().unwrap();
    assert!(shared.task().is_none());

    ep.status.store(200, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while shared.task().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never read the task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (records, _) = run(&mut meta, vec![record("t", Some(WEB_ID))]).await;
    assert_eq!(
        field(&records[0], "ecs_cluster").as_deref(),
        Some("prod-east")
    );
    assert_eq!(
        field(&records[0], "ecs_container_name").as_deref(),
        Some("web")
    );
    assert!(ep.task_hits.load(Ordering::SeqCst) >= 2, "retried");
}

/// The router starts before Docker created the app: the app's first records carry an id
/// the first answer did not list. They trigger one refresh (not one per record, nor per
/// batch), wait for it and get the name; an id no refresh can find costs one refresh only.
#[tokio::test]
async fn unknown_container_triggers_exactly_one_refresh() {
    let (ep, url) = serve(EC2_BEFORE_APP, EC2_CONTAINER).await;
    let mut meta = start(&url);
    let (first, _) = run(&mut meta, vec![record("t", None)]).await;
    assert_eq!(
        field(&first[0], "ecs_cluster").as_deref(),
        Some("prod-east")
    );
    assert_eq!(ep.task_hits.load(Ordering::SeqCst), 1);

    *ep.task.lock() = EC2_TASK;
    let batch: Vec<Record> = (0..3).map(|_| record("t", Some(WEB_ID))).collect();
    let (batch, acked) = run(&mut meta, batch).await;
    assert!(acked, "released once the held records came out");
    for r in &batch {
        assert_eq!(field(r, "ecs_container_name").as_deref(), Some("web"));
    }
    let later: Vec<Record> = (0..3).map(|_| record("t", Some(WEB_ID))).collect();
    let (later, _) = run(&mut meta, later).await;
    assert_eq!(later.len(), 3);
    assert_eq!(
        ep.task_hits.load(Ordering::SeqCst),
        2,
        "one refresh for the new id"
    );

    // Not a container of this task: one refresh, then it passes without a name (the tag is
    // not this task's FireLens tag), and asking again costs nothing.
    for _ in 0..3 {
        let (stranger, _) = run(&mut meta, vec![record("other", Some("0123456789abcdef"))]).await;
        assert_eq!(field(&stranger[0], "ecs_container_name"), None);
        assert_eq!(
            field(&stranger[0], "ecs_cluster").as_deref(),
            Some("prod-east")
        );
    }
    tokio::time::sleep(MIN_REFRESH_INTERVAL + Duration::from_millis(300)).await;
    assert_eq!(ep.task_hits.load(Ordering::SeqCst), 3);
}

/// No container id (an app using a Fluent logger over TCP): this task's FireLens tag names
/// the container.
#[tokio::test]
async fn firelens_tag_names_the_container_when_the_id_does_not() {
    let (_ep, url) = serve(EC2_TASK, EC2_CONTAINER).await;
    let mut meta = start(&url);
    let records = vec![
        record(&format!("worker-firelens-{EC2_TASK_ID}"), None),
        record("worker-firelens-someothertask", None),
    ];
    let (records, _) = run(&mut meta, records).await;
    assert_eq!(
        field(&records[0], "ecs_container_name").as_deref(),
        Some("worker")
    );
    assert_eq!(field(&records[1], "ecs_container_name"), None);
}

/// Outside ECS: records pass unchanged and nothing is requested.
#[tokio::test]
async fn outside_ecs_records_pass_unchanged() {
    let mut meta = EcsMetadataProcessor::new(Some(EcsMetadata::start(
        "meta",
        None,
        &CancellationToken::new(),
    )));
    assert!(meta.tick().is_none());
    let records = vec![record("t", Some(WEB_ID))];
    let before = records.clone();
    let (records, acked) = run(&mut meta, records).await;
    assert!(acked);
    assert_eq!(records, before);
    assert!(records[0].packed().is_none());
}

/// While a new container's records wait for the refresh, other streams flow on at once, the
/// held records keep their order, and the request is acknowledged only once they came out.
#[tokio::test]
async fn a_held_container_does_not_hold_other_streams() {
    const ROUTER_ID: &str = "e54cccfac2b87417f71877907f67879068420042828067ae0867e60a63529d35";
    let (ep, url) = serve(EC2_BEFORE_APP, EC2_CONTAINER).await;
    let mut meta = start(&url);
    let _ = run(&mut meta, vec![record("t", None)]).await;
    *ep.task.lock() = EC2_TASK;
    let mut web: Vec<Record> = (0..3).map(|_| record("t", Some(WEB_ID))).collect();
    for (i, r) in web.iter_mut().enumerate() {
        r.fields_mut().insert("i".into(), json!(i));
    }
    let mut batch = web;
    batch.insert(1, record("t", Some(ROUTER_ID)));
    let (token, mut wait) = crate::input::ack::ack_pair();
    let out = meta.process(Batch::new(batch, token)).await;
    assert_eq!(
        out.records.len(),
        1,
        "only the known container's record passes at once"
    );
    assert_eq!(
        field(&out.records[0], "ecs_container_name").as_deref(),
        Some("log_router")
    );
    for a in out.acks {
        a.release();
    }
    assert!(
        wait.try_outcome().is_none(),
        "not acked while records are held"
    );
    let mut released = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while released.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(TICK).await;
        let b = meta.flush_due(Instant::now());
        released.extend(b.records);
        for a in b.acks {
            a.release();
        }
    }
    let order: Vec<i64> = released
        .iter()
        .map(|r| r.get("i").and_then(|v| v.to_value().as_i64()).unwrap_or(-1))
        .collect();
    assert_eq!(order, [0, 1, 2]);
    for r in &released {
        assert_eq!(field(r, "ecs_container_name").as_deref(), Some("web"));
    }
    assert!(matches!(wait.try_outcome(), Some(Ok(()))));
}

/// SIGTERM while records are held: `flush_all` hands them on (with what is known).
#[tokio::test]
async fn flush_all_hands_on_held_records() {
    let (ep, url) = serve(EC2_BEFORE_APP, EC2_CONTAINER).await;
    let mut meta = start(&url);
    let _ = run(&mut meta, vec![record("t", None)]).await;
    *ep.task.lock() = EC2_TASK;
    let out = meta
        .process(Batch::of(vec![record("t", Some(WEB_ID))]))
        .await;
    assert!(out.records.is_empty());
    // The held record is reported (firelane_processor_held_bytes) until it leaves.
    let held = meta.held_bytes();
    assert!(
        (100..2000).contains(&held),
        "{held} bytes held for one record"
    );
    let all = meta.flush_all();
    assert_eq!(meta.held_bytes(), 0);
    assert_eq!(all.records.len(), 1);
    assert_eq!(
        field(&all.records[0], "ecs_cluster").as_deref(),
        Some("prod-east")
    );
}
