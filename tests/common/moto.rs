//! The local AWS API server (moto) that `scripts/test.sh` starts for the AWS tests, and
//! SDK clients talking straight to it for setup and checks.

use std::sync::OnceLock;

use firelane::output::aws::{AwsSettings, sdk_config};

/// moto's URL from `FIRELANE_TEST_AWS_ENDPOINT`. Without it the AWS tests fail under `CI`
/// and, on a plain `cargo test`, return at once after one loud line on stderr
/// (see [`super::peer_missing`]).
pub fn endpoint() -> Option<String> {
    match std::env::var("FIRELANE_TEST_AWS_ENDPOINT") {
        Ok(e) if !e.is_empty() => {
            assert!(
                std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
                "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (any values) and AWS_EC2_METADATA_DISABLED=true for moto"
            );
            Some(e)
        }
        _ => {
            super::peer_missing(
                "FIRELANE_TEST_AWS_ENDPOINT is not set; nothing was tested against moto",
            );
            None
        }
    }
}

/// A name no other test (or earlier run against the same moto) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// One multi-thread runtime per test binary for the SDK clients.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// SDK clients talking straight to moto (not through a proxy), for setup and checks.
pub struct Aws {
    pub s3: aws_sdk_s3::Client,
    pub firehose: aws_sdk_firehose::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub kinesis: aws_sdk_kinesis::Client,
}

impl Aws {
    /// Clients for S3 (path-style), Firehose, CloudWatch Logs, SNS, SQS and Kinesis on moto
    /// at `ep`.
    pub fn new(ep: &str) -> Aws {
        rt().block_on(async {
            let conf = sdk_config(&AwsSettings {
                region: Some("us-east-1".into()),
                endpoint_url: Some(ep.into()),
                role_arn: None,
            })
            .await;
            Aws {
                s3: aws_sdk_s3::Client::from_conf(
                    aws_sdk_s3::config::Builder::from(&conf)
                        .endpoint_url(ep)
                        .force_path_style(true)
                        .build(),
                ),
                firehose: aws_sdk_firehose::Client::from_conf(
                    aws_sdk_firehose::config::Builder::from(&conf)
                        .endpoint_url(ep)
                        .build(),
                ),
                logs: aws_sdk_cloudwatchlogs::Client::from_conf(
                    aws_sdk_cloudwatchlogs::config::Builder::from(&conf)
                        .endpoint_url(ep)
                        .build(),
                ),
                sns: aws_sdk_sns::Client::from_conf(
                    aws_sdk_sns::config::Builder::from(&conf)
                        .endpoint_url(ep)
                        .build(),
                ),
                sqs: aws_sdk_sqs::Client::from_conf(
                    aws_sdk_sqs::config::Builder::from(&conf)
                        .endpoint_url(ep)
                        .build(),
                ),
                kinesis: aws_sdk_kinesis::Client::from_conf(
                    aws_sdk_kinesis::config::Builder::from(&conf)
                        .endpoint_url(ep)
                        .build(),
                ),
            }
        })
    }

    /// Create bucket `bucket`, panicking on any error.
    pub fn create_bucket(&self, bucket: &str) {
        rt().block_on(self.s3.create_bucket().bucket(bucket).send())
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    /// Every object under `prefix`: (key, Content-Encoding, body).
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, Option<String>, Vec<u8>)> {
        rt().block_on(async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .s3
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list objects");
                for o in page.contents() {
                    let key = o.key().expect("key").to_string();
                    let got = self
                        .s3
                        .get_object()
                        .bucket(bucket)
                        .key(&key)
                        .send()
                        .await
                        .expect("get object");
                    let enc = got.content_encoding().map(String::from);
                    let body = got
                        .body
                        .collect()
                        .await
                        .expect("body")
                        .into_bytes()
                        .to_vec();
                    out.push((key, enc, body));
                }
                match page.next_continuation_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => break,
                }
            }
            out
        })
    }

    /// A DirectPut delivery stream into `bucket` under `prefix`; returns its name.
    pub fn create_delivery_stream(&self, bucket: &str, prefix: &str) -> String {
        let stream = unique("fl-fh");
        let dest = aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
            .role_arn("arn:aws:iam::123456789012:role/firehose")
            .bucket_arn(format!("arn:aws:s3:::{bucket}"))
            .prefix(prefix)
            .build()
            .expect("destination");
        rt().block_on(
            self.firehose
                .create_delivery_stream()
                .delivery_stream_name(&stream)
                .delivery_stream_type(aws_sdk_firehose::types::DeliveryStreamType::DirectPut)
                .extended_s3_destination_configuration(dest)
                .send(),
        )
        .expect("create delivery stream");
        stream
    }

    /// Every event of a stream, oldest first (GetLogEvents pages from the head).
    pub fn log_events(&self, group: &str, stream: &str) -> Vec<(i64, String)> {
        rt().block_on(async {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .logs
                    .get_log_events()
                    .log_group_name(group)
                    .log_stream_name(stream)
                    .start_from_head(true)
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("GetLogEvents {group} {stream}: {e:?}"));
                let n = page.events().len();
                out.extend(page.events().iter().map(|e| {
                    (
                        e.timestamp().unwrap_or(-1),
                        e.message().unwrap_or("").to_string(),
                    )
                }));
                let next = page.next_forward_token().map(String::from);
                if n == 0 || next == token {
                    break;
                }
                token = next;
            }
            out
        })
    }

    /// The retention (days) of log group `group`, `None` when it has none.
    pub fn retention(&self, group: &str) -> Option<i32> {
        rt().block_on(async {
            let out = self
                .logs
                .describe_log_groups()
                .log_group_name_prefix(group)
                .send()
                .await
                .expect("describe log groups");
            out.log_groups()
                .iter()
                .find(|g| g.log_group_name() == Some(group))
                .and_then(|g| g.retention_in_days())
        })
    }
}
