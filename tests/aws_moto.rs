//! The AWS sinks against a local moto server (no AWS account, loopback only).
//!
//! ```sh
//! python3 -m venv .venv-moto && .venv-moto/bin/pip install 'moto[server]==5.2.5'
//! .venv-moto/bin/moto_server -H 127.0.0.1 -p 5123 &
//! FIRELANE_TEST_AWS_ENDPOINT=http://127.0.0.1:5123 AWS_ACCESS_KEY_ID=test \
//!   AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true cargo test --test aws_moto
//! ```
//! Without `FIRELANE_TEST_AWS_ENDPOINT` every test returns at once with a loud message.
//! moto enforces none of the batch limits and never fails partially (the unit tests in
//! `src/output/aws/` cover those); these tests prove what lands: every record, once, in
//! order, under the right names.

mod common;

use common::moto::{endpoint, unique};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::time::{Duration, Instant};

use firelane::event::{Record, now_ns};
use firelane::output::aws::cloudwatch_logs::{self, CloudWatchLogsConfig};
use firelane::output::aws::firehose::{self, FirehoseConfig, Oversize};
use firelane::output::aws::s3::{self, Compression, S3Config};
use firelane::output::aws::{AwsSettings, RecordFormat, sdk_config};
use firelane::output::sink::{BatchBuilder, BatchSettings, Push, SendResult, Sink};
use serde_json::json;

fn settings(ep: &str) -> AwsSettings {
    AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(ep.into()),
        role_arn: None,
    }
}

async fn s3_client(ep: &str) -> aws_sdk_s3::Client {
    let conf = sdk_config(&settings(ep)).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .endpoint_url(ep)
            .force_path_style(true)
            .build(),
    )
}

fn rec(tag: &str, time_ns: i64, fields: serde_json::Value) -> Record {
    let serde_json::Value::Object(m) = fields else {
        panic!("object")
    };
    Record::new(tag, time_ns, m)
}

/// A minimal stand-in for the delivery core: partitions, fills batches until `Full`, sends,
/// and requires every send to be `Delivered`. Returns the number of requests sent.
async fn deliver<S: Sink>(sink: &S, records: &[Record]) -> usize {
    let mut open: HashMap<S::Partition, S::Builder> = HashMap::new();
    let mut sent = 0;
    for r in records {
        let p = sink.partition(r).expect("partition");
        let b = open.entry(p.clone()).or_insert_with(|| sink.new_batch(&p));
        match b.push(r) {
            Push::Added | Push::Truncated => continue,
            Push::Full => {}
            Push::Rejected(why) | Push::Dropped(why) => panic!("refused: {why}"),
        }
        let full = std::mem::replace(b, sink.new_batch(&p));
        assert!(
            matches!(b.push(r), Push::Added | Push::Truncated),
            "fresh batch refused a record"
        );
        let batch = full.finish();
        assert_eq!(sink.send(&p, &batch).await, SendResult::Delivered);
        sent += 1;
    }
    for (p, b) in open {
        let batch = b.finish();
        assert_eq!(sink.send(&p, &batch).await, SendResult::Delivered);
        sent += 1;
    }
    sent
}

async fn get_objects(
    c: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, Option<String>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in page.contents() {
            let key = o.key().unwrap().to_string();
            let got = c
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
            let enc = got.content_encoding().map(String::from);
            let body = got.body.collect().await.unwrap().into_bytes().to_vec();
            out.push((key, enc, body));
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    out
}

fn decode(enc: Option<&str>, body: &[u8]) -> String {
    let mut s = String::new();
    match enc {
        Some("gzip") => {
            flate2::read::MultiGzDecoder::new(body)
                .read_to_string(&mut s)
                .unwrap();
        }
        Some("zstd") => {
            zstd::stream::read::Decoder::new(body)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
        }
        None => s = String::from_utf8(body.to_vec()).unwrap(),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    s
}

fn s3_config(
    ep: &str,
    bucket: &str,
    key: &str,
    compression: Compression,
    max_bytes: usize,
) -> S3Config {
    S3Config {
        name: "s3_test".into(),
        bucket: bucket.into(),
        key: key.into(),
        compression,
        storage_class: None,
        content_type: None,
        acl: None,
        format: RecordFormat::default(),
        align: None,
        force_path_style: true,
        aws: settings(ep),
        batch: BatchSettings {
            max_records: usize::MAX,
            max_bytes,
            max_age: Duration::from_secs(60),
        },
    }
}

#[tokio::test]
async fn s3_objects_hold_exactly_the_records_under_templated_keys() {
    let Some(ep) = endpoint() else { return };
    let c = s3_client(&ep).await;
    let bucket = unique("fl-s3");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let t0 = 1_795_417_689_000_000_000i64; // 2026-11-23T07:08:09Z
    let records: Vec<Record> = (0..6_000i64)
        .map(|i| {
            let tag = if i % 2 == 0 { "web-firelens-t1" } else { "api-firelens-t2" };
            let cluster = if i % 3 == 0 { "blue" } else { "green" };
            rec(tag, t0 + i * 1_000_000, json!({"log": format!("line {i} {}", "x".repeat((i % 50) as usize)), "seq": i, "ecs_cluster": cluster}))
        })
        .collect();
    for (compression, ext) in [
        (Compression::Gzip, ".gz"),
        (Compression::Zstd, ".zst"),
        (Compression::None, ""),
    ] {
        let prefix = format!("{compression:?}");
        let key = format!("{prefix}/{{tag[0]}}/%Y/%m/%d/%H/{{ecs_cluster}}/{{uuid}}.json");
        let max_bytes = 8 * 1024;
        let sink = s3::build(s3_config(&ep, &bucket, &key, compression, max_bytes))
            .await
            .unwrap();
        let requests = deliver(&sink, &records).await;
        let objects = get_objects(&c, &bucket, &prefix).await;
        assert_eq!(objects.len(), requests);
        assert!(
            objects.len() > 4,
            "{compression:?}: max_bytes should split partitions into several objects"
        );
        let mut seen = Vec::new();
        for (key, enc, body) in &objects {
            assert!(body.len() <= max_bytes, "{key}: {} bytes", body.len());
            assert!(key.ends_with(&format!(".json{ext}")), "{key}");
            let parts: Vec<&str> = key.split('/').collect();
            assert_eq!(&parts[2..6], ["2026", "11", "23", "07"]);
            for line in decode(enc.as_deref(), body).lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                // Records with different template values never share an object.
                assert_eq!(v["ecs_cluster"].as_str().unwrap(), parts[6], "{key}");
                let seq = v["seq"].as_i64().unwrap();
                assert_eq!(parts[1], if seq % 2 == 0 { "web" } else { "api" });
                seen.push(seq);
            }
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..6_000).collect::<Vec<_>>(),
            "{compression:?}: every record exactly once"
        );
    }
}

#[tokio::test]
async fn s3_object_above_16_mib_goes_multipart() {
    let Some(ep) = endpoint() else { return };
    let c = s3_client(&ep).await;
    let bucket = unique("fl-mp");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let sink = s3::build(s3_config(
        &ep,
        &bucket,
        "mp/{uuid}.json",
        Compression::None,
        64 << 20,
    ))
    .await
    .unwrap();
    let filler = "y".repeat(1000);
    let records: Vec<Record> = (0..18_000)
        .map(|i| rec("t", now_ns(), json!({"seq": i, "pad": filler})))
        .collect();
    let p = sink.partition(&records[0]).unwrap();
    let mut b = sink.new_batch(&p);
    for r in &records {
        assert_eq!(b.push(r), Push::Added);
    }
    let batch = b.finish();
    let body = batch.body().await.expect("compressed");
    assert!(body.len() > s3::MULTIPART_THRESHOLD);
    assert_eq!(sink.send(&p, &batch).await, SendResult::Delivered);
    let head = c
        .head_object()
        .bucket(&bucket)
        .key(&batch.key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(body.len() as i64));
    // Multipart ETags end with -<number of parts>.
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-3"), "etag {etag}");
    let objects = get_objects(&c, &bucket, "mp/").await;
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].2, body.to_vec());
}

#[tokio::test]
async fn s3_gzip_throughput() {
    let Some(ep) = endpoint() else { return };
    let c = s3_client(&ep).await;
    let bucket = unique("fl-tp");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let sink = s3::build(s3_config(
        &ep,
        &bucket,
        "tp/{uuid}",
        Compression::Gzip,
        8 << 20,
    ))
    .await
    .unwrap();
    let records: Vec<Record> = (0..100_000)
        .map(|i| {
            rec("app-firelens-1", now_ns(), json!({
                "log": format!("10.0.{}.{} - - [23/Nov/2026:07:08:09 +0000] \"GET /api/items/{i} HTTP/1.1\" 200 {}", i % 255, i % 7, i * 7 % 10_000),
                "source": "stdout", "container_name": "/ecs-app-1", "ecs_cluster": "prod"}))
        })
        .collect();
    let raw: usize = records
        .iter()
        .map(|r| serde_json::to_vec(&*r.fields()).unwrap().len() + 1)
        .sum();
    let started = Instant::now();
    let requests = deliver(&sink, &records).await;
    let secs = started.elapsed().as_secs_f64();
    let objects = get_objects(&c, &bucket, "tp/").await;
    let landed: usize = objects.iter().map(|o| o.2.len()).sum();
    // A throughput figure is only worth printing if every record arrived, once.
    assert_eq!(objects.len(), requests, "one object per PutObject");
    let lines: usize = objects
        .iter()
        .map(|o| decode(o.1.as_deref(), &o.2).lines().count())
        .sum();
    assert_eq!(lines, records.len(), "every record landed exactly once");
    assert!(
        landed < raw,
        "gzip made the objects smaller than the raw JSON"
    );
    eprintln!(
        "S3 gzip sink against moto: {:.1} MB raw JSON in {secs:.2} s = {:.1} MB/s ({} objects, {:.1} MB landed, debug build)",
        raw as f64 / 1e6,
        raw as f64 / 1e6 / secs,
        requests,
        landed as f64 / 1e6
    );
}

async fn firehose_setup(ep: &str) -> (aws_sdk_s3::Client, String, String) {
    let c = s3_client(ep).await;
    let bucket = unique("fl-fh");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let conf = sdk_config(&settings(ep)).await;
    let fh = aws_sdk_firehose::Client::from_conf(
        aws_sdk_firehose::config::Builder::from(&conf)
            .endpoint_url(ep)
            .build(),
    );
    let stream = unique("fl-stream");
    let dest = aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::123456789012:role/firehose")
        .bucket_arn(format!("arn:aws:s3:::{bucket}"))
        .prefix("fh/")
        .build()
        .unwrap();
    fh.create_delivery_stream()
        .delivery_stream_name(&stream)
        .delivery_stream_type(aws_sdk_firehose::types::DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(dest)
        .send()
        .await
        .unwrap();
    (c, bucket, stream)
}

#[tokio::test]
async fn firehose_records_arrive_in_the_bucket() {
    let Some(ep) = endpoint() else { return };
    for aggregate in [false, true] {
        let (c, bucket, stream) = firehose_setup(&ep).await;
        let sink = firehose::build(FirehoseConfig {
            name: "fh_test".into(),
            delivery_stream: stream,
            aggregate,
            oversize: Oversize::Truncate,
            format: RecordFormat::default(),
            aws: settings(&ep),
            batch: firehose::default_batch(),
        })
        .await
        .unwrap();
        let records: Vec<Record> = (0..1_200)
            .map(|i| rec("t", now_ns(), json!({"seq": i, "msg": "hello"})))
            .collect();
        let requests = deliver(&sink, &records).await;
        assert_eq!(
            requests,
            if aggregate { 1 } else { 3 },
            "aggregate={aggregate}"
        );
        let mut seen = Vec::new();
        for (_, _, body) in get_objects(&c, &bucket, "fh/").await {
            let body = if body.starts_with(&[0x1f, 0x8b]) {
                decode(Some("gzip"), &body)
            } else {
                String::from_utf8(body).unwrap()
            };
            assert!(body.ends_with('\n'));
            for line in body.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                seen.push(v["seq"].as_i64().unwrap());
            }
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..1_200).collect::<Vec<_>>(),
            "aggregate={aggregate}"
        );
    }
}

fn cwl_config(ep: &str, group: &str, stream: &str, auto_create: bool) -> CloudWatchLogsConfig {
    CloudWatchLogsConfig {
        name: "cwl_test".into(),
        log_group: group.into(),
        log_stream: stream.into(),
        auto_create,
        retention_days: Some(7),
        tags: HashMap::from([("team".to_string(), "sre".to_string())]),
        format: RecordFormat {
            log_key: Some("log".into()),
            ..Default::default()
        },
        aws: settings(ep),
        batch: cloudwatch_logs::default_batch(),
    }
}

async fn logs_client(ep: &str) -> aws_sdk_cloudwatchlogs::Client {
    let conf = sdk_config(&settings(ep)).await;
    aws_sdk_cloudwatchlogs::Client::from_conf(
        aws_sdk_cloudwatchlogs::config::Builder::from(&conf)
            .endpoint_url(ep)
            .build(),
    )
}

async fn read_stream(
    c: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = c
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        let n = page.events().len();
        out.extend(
            page.events()
                .iter()
                .map(|e| (e.timestamp().unwrap(), e.message().unwrap().to_string())),
        );
        let next = page.next_forward_token().map(String::from);
        if n == 0 || next == token {
            break;
        }
        token = next;
    }
    out
}

#[tokio::test]
async fn cloudwatch_groups_and_streams_from_templates() {
    let Some(ep) = endpoint() else { return };
    let c = logs_client(&ep).await;
    let run = unique("run");
    let sink = cloudwatch_logs::build(cwl_config(
        &ep,
        &format!("/ecs/{run}/{{ecs_cluster}}/{{container_name}}"),
        "{ecs_task_id}",
        true,
    ))
    .await
    .unwrap();
    let base = now_ns() - 3_600_000_000_000;
    let mut records = Vec::new();
    for i in 0..400i64 {
        let cluster = ["blue", "green"][(i % 2) as usize];
        let task = ["aaa111", "bbb222"][((i / 2) % 2) as usize];
        // Out of order inside each batch; the sink sorts.
        let t = base + ((i * 7919) % 400) * 1_000_000;
        records.push(rec("t", t, json!({"log": format!("event {i}"), "ecs_cluster": cluster,
            "container_name": "app", "ecs_task_arn": format!("arn:aws:ecs:us-east-1:1:task/{cluster}/{task}")})));
    }
    assert_eq!(deliver(&sink, &records).await, 4);
    for cluster in ["blue", "green"] {
        let group = format!("/ecs/{run}/{cluster}/app");
        let desc = c
            .describe_log_groups()
            .log_group_name_prefix(&group)
            .send()
            .await
            .unwrap();
        assert_eq!(desc.log_groups()[0].retention_in_days(), Some(7));
        for task in ["aaa111", "bbb222"] {
            let events = read_stream(&c, &group, task).await;
            assert_eq!(events.len(), 100, "{group} {task}");
            assert!(events.windows(2).all(|w| w[0].0 <= w[1].0), "time order");
        }
    }

    // Without auto_create a missing stream is a permanent, labelled failure.
    let sink = cloudwatch_logs::build(cwl_config(&ep, &format!("/missing/{run}"), "s", false))
        .await
        .unwrap();
    let p = sink.partition(&records[0]).unwrap();
    let mut b = sink.new_batch(&p);
    b.push(&records[0]);
    match sink.send(&p, &b.finish()).await {
        SendResult::Failed(f) => assert!(!f.retryable && f.reason == "resource_not_found", "{f:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn cloudwatch_many_small_and_large_events_in_order() {
    let Some(ep) = endpoint() else { return };
    let c = logs_client(&ep).await;
    let group = unique("/fl/bulk");
    let sink = cloudwatch_logs::build(cwl_config(&ep, &group, "{tag}", true))
        .await
        .unwrap();
    let base = now_ns() - 600_000_000_000;
    let small: Vec<Record> = (0..50_000i64)
        .map(|i| {
            rec(
                "small",
                base + i * 1_000,
                json!({"log": format!("s{i:05}")}),
            )
        })
        .collect();
    let big = "L".repeat(100_000);
    let large: Vec<Record> = (0..300i64)
        .map(|i| {
            rec(
                "large",
                base + i * 1_000_000,
                json!({"log": format!("{i:03}{big}")}),
            )
        })
        .collect();
    assert_eq!(deliver(&sink, &small).await, 5);
    assert_eq!(
        deliver(&sink, &large).await,
        300usize.div_ceil(1_048_576 / 100_029)
    );
    let got = read_stream(&c, &group, "small").await;
    assert_eq!(got.len(), 50_000);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (_, m))| *m == format!("s{i:05}"))
    );
    let got = read_stream(&c, &group, "large").await;
    assert_eq!(got.len(), 300);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (_, m))| m.len() == 100_003 && m.starts_with(&format!("{i:03}")))
    );
}

#[tokio::test]
async fn cloudwatch_too_old_events_fail_permanently_not_retried() {
    let Some(ep) = endpoint() else { return };
    let group = unique("/fl/old");
    let sink = cloudwatch_logs::build(cwl_config(&ep, &group, "s", true))
        .await
        .unwrap();
    let day = 86_400_000_000_000i64;
    let now = now_ns();
    let fresh = rec("t", now, json!({"log": "fresh"}));
    let mut b = sink.new_batch(&sink.partition(&fresh).unwrap());
    b.push(&fresh);
    let old = rec(
        "t",
        now - 20 * day + 3_600_000_000_000,
        json!({"log": "old"}),
    );
    let p = sink.partition(&old).unwrap();
    // Span must stay < 24 h, so the old event needs its own batch; check both.
    assert_eq!(b.push(&old), Push::Full);
    assert_eq!(sink.send(&p, &b.finish()).await, SendResult::Delivered);
    let mut b = sink.new_batch(&p);
    for k in 0..3 {
        b.push(&rec(
            "t",
            now - 20 * day + k,
            json!({"log": format!("old{k}")}),
        ));
    }
    match sink.send(&p, &b.finish()).await {
        SendResult::Partial(f) => {
            // AWS reports tooOldLogEventEndIndex exclusive (3 here); moto 5.2.5 reports the
            // last old index (2). Either way: a prefix of the items, permanent, `too_old`.
            let idx: Vec<usize> = f.iter().map(|(i, _)| *i).collect();
            assert!(
                !idx.is_empty() && idx.iter().enumerate().all(|(n, i)| n == *i),
                "{idx:?}"
            );
            assert!(
                f.iter().all(|(_, f)| !f.retryable && f.reason == "too_old"),
                "{f:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Values from records cannot shape S3 key paths: an empty tag part renders `-` (no `//`),
/// `/` inside a field is percent-encoded (`../../etc` stays one segment), a `..` value
/// becomes `%2E%2E`. The keys land in S3 exactly as documented.
#[tokio::test]
async fn s3_keys_from_record_values_stay_inside_their_segment() {
    let Some(ep) = endpoint() else { return };
    let c = s3_client(&ep).await;
    let bucket = unique("fl-enc");
    c.create_bucket().bucket(&bucket).send().await.unwrap();
    let key = "enc/{tag[0]}/{tag[1]}/{tag[2]}/{path}/{empty}/{uuid}.json";
    let sink = s3::build(s3_config(&ep, &bucket, key, Compression::None, 1 << 20))
        .await
        .unwrap();
    let records = [
        rec(
            "a..b",
            0,
            json!({"path": "../../etc", "empty": "", "seq": 0}),
        ),
        rec("a..b", 0, json!({"path": "..", "seq": 1})),
        rec("a..b", 0, json!({"path": "x/y", "empty": "%", "seq": 2})),
    ];
    assert_eq!(deliver(&sink, &records).await, 3);
    let objects = get_objects(&c, &bucket, "enc/").await;
    let mut got: Vec<(String, i64)> = objects
        .iter()
        .map(|(key, _, body)| {
            let text = String::from_utf8_lossy(body);
            let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
            // Drop the random `{uuid}.json` part.
            let (prefix, uuid) = key.rsplit_once('/').unwrap();
            assert_eq!(uuid.len(), 36 + ".json".len(), "{key}");
            (prefix.to_string(), v["seq"].as_i64().unwrap())
        })
        .collect();
    got.sort_by_key(|(_, seq)| *seq);
    assert_eq!(
        got,
        vec![
            ("enc/a/-/b/..%2F..%2Fetc/-".to_string(), 0),
            ("enc/a/-/b/%2E%2E/-".to_string(), 1),
            ("enc/a/-/b/x%2Fy/%25".to_string(), 2),
        ]
    );
}

/// Values that the old sanitising merged (`a:b`, `a*b` and `a_b` were all `a_b`; `my cluster`
/// and `my_cluster` one group) now land in their own streams and groups.
#[tokio::test]
async fn cloudwatch_values_that_used_to_collide_get_their_own_streams() {
    let Some(ep) = endpoint() else { return };
    let c = logs_client(&ep).await;
    let run = unique("run");
    let sink = cloudwatch_logs::build(cwl_config(
        &ep,
        &format!("/fl/{run}/{{ecs_cluster}}"),
        "{task}",
        true,
    ))
    .await
    .unwrap();
    let base = now_ns() - 60_000_000_000;
    let mut records = Vec::new();
    let combos = [
        ("my cluster", "a:b"),
        ("my cluster", "a*b"),
        ("my cluster", "a_b"),
        ("my_cluster", "a:b"),
    ];
    for (i, (cluster, task)) in combos.iter().enumerate() {
        for k in 0..3i64 {
            records.push(rec(
                "t",
                base + k * 1_000_000,
                json!({"log": format!("{i}-{k}"), "ecs_cluster": cluster, "task": task}),
            ));
        }
    }
    assert_eq!(deliver(&sink, &records).await, 4);
    let expect = [
        ("my#20cluster", "a%3Ab", 0),
        ("my#20cluster", "a%2Ab", 1),
        ("my#20cluster", "a_b", 2),
        ("my_cluster", "a%3Ab", 3),
    ];
    for (group, stream, i) in expect {
        let group = format!("/fl/{run}/{group}");
        let got: Vec<String> = read_stream(&c, &group, stream)
            .await
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(
            got,
            ["0", "1", "2"].map(|k| format!("{i}-{k}")),
            "{group} {stream}"
        );
    }
}

/// Tester's report: with `log_group = "/ecs/{g}"`, records with `g` = `"-"`, `null` and `""`
/// all landed in `/ecs/-`; and `/ecs/{g}/{h}` with (`a/b`, `c`) and (`a`, `b/c`) both gave
/// `/ecs/a/b/c`. Now a literal `-` is `#2D` and a `/` inside a value is `#2F`: only a missing
/// (or null, or empty) value shares `-`, and each other record has its own group.
#[tokio::test]
async fn cloudwatch_dash_and_slash_values_get_their_own_groups() {
    let Some(ep) = endpoint() else { return };
    let c = logs_client(&ep).await;
    let run = unique("run");
    let sink = cloudwatch_logs::build(cwl_config(
        &ep,
        &format!("/fl/{run}/{{g}}/{{h}}"),
        "s",
        true,
    ))
    .await
    .unwrap();
    let base = now_ns() - 60_000_000_000;
    let cases = [
        (json!({"g": "-", "h": "c"}), "#2D/c"),
        (json!({"g": null, "h": "c"}), "-/c"),
        (json!({"g": "", "h": "c"}), "-/c"),
        (json!({"h": "c"}), "-/c"),
        (json!({"g": "a/b", "h": "c"}), "a#2Fb/c"),
        (json!({"g": "a", "h": "b/c"}), "a/b#2Fc"),
    ];
    let records: Vec<Record> = cases
        .iter()
        .enumerate()
        .map(|(i, (f, _))| {
            let mut f = f.clone();
            f["log"] = json!(format!("case {i}"));
            rec("t", base + i as i64 * 1_000_000, f)
        })
        .collect();
    assert_eq!(deliver(&sink, &records).await, 4);
    let mut want: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (i, (_, group)) in cases.iter().enumerate() {
        want.entry(group).or_default().push(format!("case {i}"));
    }
    for (group, messages) in want {
        let group = format!("/fl/{run}/{group}");
        let got: Vec<String> = read_stream(&c, &group, "s")
            .await
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(got, messages, "{group}");
    }
    let groups = c
        .describe_log_groups()
        .log_group_name_prefix(format!("/fl/{run}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(groups.log_groups().len(), 4, "{groups:?}");
}

/// CreateLogGroup refuses names that start with `aws/` (moto does not check it): a group
/// whose record value would start it that way is written `#61ws/…` and lands there.
#[tokio::test]
async fn cloudwatch_group_that_would_start_with_aws_slash_is_escaped() {
    let Some(ep) = endpoint() else { return };
    let c = logs_client(&ep).await;
    let run = unique("run");
    let sink = cloudwatch_logs::build(cwl_config(&ep, &format!("{{ns}}/{run}"), "s", true))
        .await
        .unwrap();
    let base = now_ns() - 60_000_000_000;
    let records = [
        rec("t", base, json!({"log": "reserved", "ns": "aws"})),
        rec("t", base + 1, json!({"log": "upper", "ns": "AWS"})),
    ];
    assert_eq!(deliver(&sink, &records).await, 2);
    for (group, message) in [("#61ws", "reserved"), ("AWS", "upper")] {
        let group = format!("{group}/{run}");
        let got: Vec<String> = read_stream(&c, &group, "s")
            .await
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(got, [message], "{group}");
    }
    let reserved = c
        .describe_log_groups()
        .log_group_name_prefix(format!("aws/{run}"))
        .send()
        .await
        .unwrap();
    assert!(reserved.log_groups().is_empty(), "{reserved:?}");
}
