//! Shared plumbing of the AWS sinks (S3, Firehose, Kinesis Data Streams, CloudWatch Logs,
//! SNS): SDK configuration (credentials, region, endpoint, assumed role) and mapping SDK
//! errors to [`Failure`].
//!
//! Start-up never waits on instance metadata for long: the region is taken from the output's
//! config, then `AWS_REGION`/`AWS_DEFAULT_REGION`, then the profile, and only then from IMDS
//! through a client limited to one attempt with 1 s connect / 1 s read timeouts (about 2 s
//! worst case, the whole lookup capped at [`REGION_LOOKUP_LIMIT`]). In ECS the agent always
//! sets `AWS_REGION`, so IMDS is never reached there. Credentials are resolved lazily, on the
//! first request, through the standard chain (env vars, profile, web identity, the ECS task
//! role via `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`/`_FULL_URI`, then IMDS with the same
//! bounded client).

pub mod cloudwatch_logs;
pub(crate) mod config;
pub mod firehose;
pub mod kinesis;
pub mod records;
pub mod s3;
pub mod sns;

use std::time::Duration;

use aws_config::imds;
use aws_config::meta::region::RegionProviderChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::SharedCredentialsProvider;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

use crate::output::sink::Failure;
use crate::output::template::TemplateError;

/// The longest start-up may spend finding a region when none is configured.
pub(crate) const REGION_LOOKUP_LIMIT: Duration = Duration::from_secs(3);

/// Connection and credential settings every AWS output accepts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AwsSettings {
    /// `region`; when unset: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile, IMDS.
    pub region: Option<String>,
    /// `endpoint_url`: applies to this output's service only (not to STS for `role_arn`),
    /// so a local S3 server or a VPC endpoint does not break role assumption.
    pub endpoint_url: Option<String>,
    /// `role_arn`: assumed with STS using the credentials of the default chain.
    pub role_arn: Option<String>,
}

/// Why an AWS output could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("output {output}: no AWS region: set `region` or AWS_REGION")]
    /// Neither `region` nor the SDK's chain (AWS_REGION, profile) gives a region.
    NoRegion {
        /// The output's name.
        output: String,
    },
    #[error("output {output}: `{key}`: {source}")]
    /// A name template (`key`, `log_group`, `log_stream`) does not parse.
    Template {
        /// The output's name.
        output: String,
        /// The config key (`key`, `log_group`, …).
        key: &'static str,
        /// The template's parse error.
        #[source]
        source: TemplateError,
    },
    #[error("output {output}: `{key}` = {value:?}: {reason}")]
    /// A value AWS would refuse for good (a reserved log group prefix, a name too long,
    /// an unknown retention).
    Invalid {
        /// The output's name.
        output: String,
        /// The config key (`key`, `log_group`, …).
        key: &'static str,
        /// The value as configured.
        value: String,
        /// Why AWS would refuse it.
        reason: String,
    },
}

fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    // ring instead of aws-lc keeps the build free of a C crypto library.
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

fn bounded_imds(conf: &ProviderConfig) -> imds::Client {
    imds::Client::builder()
        .configure(conf)
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .operation_timeout(Duration::from_secs(2))
        .build()
}

/// Builds the SDK configuration for one output. `endpoint_url` is not applied here; each
/// sink sets it on its own service client (see [`AwsSettings::endpoint_url`]).
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let http = http_client();
    let provider_conf = ProviderConfig::without_region().with_http_client(http.clone());
    let imds_client = bounded_imds(&provider_conf);

    let region = match &settings.region {
        Some(r) => Some(Region::new(r.clone())),
        None => {
            let chain = RegionProviderChain::first_try(
                aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
            )
            .or_else(aws_config::profile::ProfileFileRegionProvider::builder().build())
            .or_else(
                imds::region::ImdsRegionProvider::builder()
                    .imds_client(imds_client.clone())
                    .build(),
            );
            tokio::time::timeout(REGION_LOOKUP_LIMIT, chain.region())
                .await
                .ok()
                .flatten()
        }
    };

    let provider_conf = provider_conf.with_region(region.clone());
    let mut chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .imds_client(imds_client)
        .configure(provider_conf);
    chain.set_region(region.clone());
    let default_creds = SharedCredentialsProvider::new(chain.build().await);

    let loader = || {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .region(region.clone())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    // One attempt of one request; a 64 MiB part at a slow 1 MB/s still fits.
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            // The delivery core retries with its own backoff; the SDK's short standard retry
            // only smooths single blips (and clock-skew corrections) inside one send.
            .retry_config(RetryConfig::standard().with_max_attempts(3))
    };

    let Some(role_arn) = &settings.role_arn else {
        return loader().credentials_provider(default_creds).load().await;
    };
    let base = loader().credentials_provider(default_creds).load().await;
    let mut assume = aws_config::sts::AssumeRoleProvider::builder(role_arn.clone())
        .session_name("firelane")
        .configure(&base);
    if let Some(r) = region.clone() {
        assume = assume.region(r);
    }
    let assumed = assume.build().await;
    loader().credentials_provider(assumed).load().await
}

/// `SdkConfig` has no region: AWS calls cannot work, so the output fails to build.
pub(crate) fn require_region(conf: &SdkConfig, output: &str) -> Result<(), BuildError> {
    if conf.region().is_none() {
        return Err(BuildError::NoRegion {
            output: output.to_string(),
        });
    }
    Ok(())
}

/// How a record becomes bytes in every AWS sink.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordFormat {
    /// `log_key`: send only this field's value. A string is sent as it is, any other value
    /// as its JSON text; a record without the field falls back to the full JSON line, so
    /// nothing is silently emptied (FireLens `log` is absent on some internal records).
    pub log_key: Option<String>,
    /// `tag_key` / `time_key`: added to full JSON lines by the shared encoder.
    pub tag_key: Option<String>,
    /// `time_key`: the event time (RFC 3339, UTC, nanoseconds) under this key.
    pub time_key: Option<String>,
}

impl RecordFormat {
    /// Appends the record's payload to `out`, always ending with `\n`.
    pub(crate) fn write_line(&self, record: &crate::event::Record, out: &mut Vec<u8>) {
        let field = self.log_key.as_deref().and_then(|k| record.get(k));
        match field.map(|f| (f, f.as_str())) {
            Some((_, Some(s))) => out.extend_from_slice(s.as_bytes()),
            Some((other, None)) => {
                let _ = serde_json::to_writer(&mut *out, &other);
            }
            None => {
                // Encoding a JSON map cannot fail in practice; an empty object keeps the
                // line count right if it ever does.
                if crate::output::encode::encode_json_line(
                    record,
                    self.tag_key.as_deref(),
                    self.time_key.as_deref(),
                    out,
                )
                .is_err()
                {
                    out.extend_from_slice(b"{}");
                }
            }
        }
        if out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
    }
}

/// SDK clients that are built but never called: sinks constructed only to check their
/// settings (`firelane check`) or to render a destination (`firelane route`). No
/// credentials are resolved and no request is made. The client needs a region; the
/// configured one is used, else any (it is dropped unused).
pub(crate) mod offline {
    use aws_config::{BehaviorVersion, Region};

    fn region(configured: Option<&str>) -> Region {
        Region::new(configured.unwrap_or("us-east-1").to_owned())
    }

    macro_rules! offline_client {
        ($name:ident, $sdk:ident) => {
            /// A client of this service that is never called (see the module docs).
            pub(crate) fn $name(configured_region: Option<&str>) -> $sdk::Client {
                let conf = $sdk::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .region(region(configured_region))
                    .build();
                $sdk::Client::from_conf(conf)
            }
        };
    }

    offline_client!(s3, aws_sdk_s3);
    offline_client!(firehose, aws_sdk_firehose);
    offline_client!(cloudwatch_logs, aws_sdk_cloudwatchlogs);
    offline_client!(sns, aws_sdk_sns);
    offline_client!(kinesis, aws_sdk_kinesis);
}

/// Ends a record cut to fit a per-record limit, so readers see it was cut.
pub(crate) const TRUNCATION_MARKER: &str = "…[truncated by firelane]";

/// Largest prefix of `s` no longer than `max` bytes that ends on a character boundary.
pub(crate) fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// What kind of SDK failure happened, without the SDK types (so it can be unit tested).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ErrorKind {
    Construction,
    Timeout,
    Dispatch {
        timeout: bool,
        user: bool,
    },
    /// The response could not be parsed.
    Response,
    Service,
}

/// Maps any SDK error of the three services to a [`Failure`] for the delivery core.
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let kind = match err {
        SdkError::ConstructionFailure(_) => ErrorKind::Construction,
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(d) => ErrorKind::Dispatch {
            timeout: d.is_timeout(),
            user: d.is_user(),
        },
        SdkError::ResponseError(_) => ErrorKind::Response,
        _ => ErrorKind::Service,
    };
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code();
    let detail = DisplayErrorContext(err).to_string();
    let mut failure = classify_parts(kind, code, status, &detail);
    failure.retry_after = err
        .raw_response()
        .and_then(|r| r.headers().get("retry-after"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    failure
}

const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "SlowDown",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    // Kinesis Data Streams (PutRecords / PutRecord): the stream's KMS key is throttled.
    "KMSThrottlingException",
    "LimitExceededException",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
];

pub(crate) fn classify_parts(
    kind: ErrorKind,
    code: Option<&str>,
    status: Option<u16>,
    detail: &str,
) -> Failure {
    let message = match (code, status) {
        (Some(c), Some(s)) => format!("{c} (HTTP {s}): {detail}"),
        (None, Some(s)) => format!("HTTP {s}: {detail}"),
        _ => detail.to_string(),
    };
    match kind {
        // Identity resolution fails here too; the ECS credentials endpoint or IMDS can be
        // briefly unavailable, so this is worth retrying rather than dead-lettering data.
        ErrorKind::Construction => {
            let reason = if detail.to_ascii_lowercase().contains("credential") {
                "credentials"
            } else {
                "request_construction"
            };
            return Failure::retryable(reason, message);
        }
        ErrorKind::Timeout | ErrorKind::Dispatch { timeout: true, .. } => {
            return Failure::retryable("timeout", message);
        }
        ErrorKind::Dispatch { user: true, .. } => {
            return Failure::permanent("invalid_request", message);
        }
        ErrorKind::Dispatch { .. } => return Failure::retryable("connection", message),
        ErrorKind::Response | ErrorKind::Service => {}
    }
    let code = code.unwrap_or("");
    if THROTTLING_CODES.contains(&code) || status == Some(429) {
        return Failure::retryable("throttled", message);
    }
    if code.starts_with("ServiceUnavailable") || status == Some(503) {
        return Failure::retryable("service_unavailable", message);
    }
    if matches!(code, "RequestTimeout" | "RequestTimeoutException") {
        return Failure::retryable("timeout", message);
    }
    if matches!(
        code,
        "ExpiredToken" | "ExpiredTokenException" | "RequestExpired"
    ) {
        return Failure::retryable("expired_credentials", message);
    }
    if matches!(code, "RequestTimeTooSkewed") {
        return Failure::retryable("clock_skew", message);
    }
    if matches!(
        code,
        "InternalError" | "InternalFailure" | "InternalServerError"
    ) || status.is_some_and(|s| s >= 500)
    {
        return Failure::retryable("server_error", message);
    }
    let permanent = |reason: &str| Failure::permanent(reason, message.clone());
    if code.starts_with("AccessDenied") || code == "Forbidden" {
        return permanent("access_denied");
    }
    match code {
        "UnrecognizedClientException"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "MissingAuthenticationToken" => {
            return permanent("invalid_credentials");
        }
        "NoSuchBucket" => return permanent("no_such_bucket"),
        "ResourceNotFoundException" => return permanent("resource_not_found"),
        "InvalidParameterException"
        | "InvalidParameterValue"
        | "ValidationException"
        | "InvalidArgument"
        | "InvalidRequest"
        | "InvalidArgumentException"
        | "InvalidParameterCombinationException"
        | "SerializationException"
        | "EntityTooLarge"
        | "EntityTooSmall"
        | "InvalidBucketName"
        | "KeyTooLongError" => {
            return permanent("invalid_request");
        }
        "DataAlreadyAcceptedException" | "InvalidSequenceTokenException" => {
            // Ignored by AWS since 2023; retrying cannot help.
            return permanent("invalid_request");
        }
        _ => {}
    }
    match status {
        Some(403) => permanent("access_denied"),
        Some(404) => permanent("not_found"),
        Some(s) if (400..500).contains(&s) => permanent("client_error"),
        // An unparseable or status-less answer: more likely a proxy or server hiccup.
        _ => Failure::retryable("bad_response", message),
    }
}

/// A loopback HTTP server that answers every request with one canned JSON response, so
/// unit tests can drive a sink's `send` through the real SDK client and response parsing.
#[cfg(test)]
pub(crate) mod canned {
    use std::io::{BufRead, BufReader, Read, Write};

    /// Returns the endpoint URL. The server thread lives until the test process exits.
    pub(crate) fn serve(status: u16, body: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut req = vec![0u8; len];
                let _ = reader.read_exact(&mut req);
                let mut out = conn;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        url
    }

    /// SDK settings for a client pointed at `url` with static test credentials.
    pub(crate) fn sdk_config(url: &str) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(url)
            .http_client(super::http_client())
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::new("test", "test", None, None, "static"),
            ))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(code: &str, status: u16) -> Failure {
        classify_parts(ErrorKind::Service, Some(code), Some(status), "detail")
    }

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        for (code, status) in [
            ("ThrottlingException", 400),
            ("Throttling", 400),
            ("SlowDown", 503),
            ("RequestLimitExceeded", 400),
            ("ServiceUnavailableException", 500),
            ("LimitExceededException", 400),
            ("InternalError", 500),
            ("", 502),
            ("Whatever", 429),
        ] {
            let f = svc(code, status);
            assert!(f.retryable, "{code} {status}: {f:?}");
        }
        assert_eq!(svc("ThrottlingException", 400).reason, "throttled");
        assert_eq!(svc("SlowDown", 503).reason, "throttled");
        assert_eq!(
            svc("ServiceUnavailableException", 500).reason,
            "service_unavailable"
        );
        assert_eq!(svc("InternalError", 500).reason, "server_error");
    }

    #[test]
    fn client_errors_are_permanent_with_labels() {
        assert_eq!(
            svc("AccessDenied", 403),
            Failure::permanent("access_denied", svc("AccessDenied", 403).message)
        );
        assert_eq!(svc("AccessDeniedException", 400).reason, "access_denied");
        assert_eq!(svc("NoSuchBucket", 404).reason, "no_such_bucket");
        assert_eq!(
            svc("ResourceNotFoundException", 400).reason,
            "resource_not_found"
        );
        assert_eq!(
            svc("InvalidParameterException", 400).reason,
            "invalid_request"
        );
        assert_eq!(svc("ValidationException", 400).reason, "invalid_request");
        assert_eq!(
            svc("UnrecognizedClientException", 400).reason,
            "invalid_credentials"
        );
        assert_eq!(svc("SomethingNew", 400).reason, "client_error");
        for code in [
            "AccessDenied",
            "NoSuchBucket",
            "ResourceNotFoundException",
            "SomethingNew",
        ] {
            assert!(!svc(code, 400).retryable, "{code}");
        }
        assert!(
            svc("NoSuchBucket", 404)
                .message
                .contains("NoSuchBucket (HTTP 404)")
        );
    }

    #[test]
    fn transport_errors() {
        let f = classify_parts(ErrorKind::Timeout, None, None, "t");
        assert_eq!((f.retryable, f.reason.as_str()), (true, "timeout"));
        let f = classify_parts(
            ErrorKind::Dispatch {
                timeout: false,
                user: false,
            },
            None,
            None,
            "io",
        );
        assert_eq!((f.retryable, f.reason.as_str()), (true, "connection"));
        let f = classify_parts(
            ErrorKind::Construction,
            None,
            None,
            "failed to load Credentials",
        );
        assert_eq!((f.retryable, f.reason.as_str()), (true, "credentials"));
        let f = classify_parts(ErrorKind::Response, None, Some(500), "malformed");
        assert!(f.retryable);
        let f = classify_parts(ErrorKind::Response, None, None, "malformed");
        assert_eq!((f.retryable, f.reason.as_str()), (true, "bad_response"));
    }

    #[test]
    fn classify_reads_sdk_errors() {
        let err: SdkError<aws_sdk_s3::operation::put_object::PutObjectError, HttpResponse> =
            SdkError::timeout_error("slow");
        assert_eq!(classify(&err).reason, "timeout");
        let err: SdkError<aws_sdk_s3::operation::put_object::PutObjectError, HttpResponse> =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io("refused".into()));
        let f = classify(&err);
        assert_eq!((f.retryable, f.reason.as_str()), (true, "connection"));
    }

    #[tokio::test]
    async fn sdk_config_with_region_and_no_imds_does_not_wait() {
        let started = std::time::Instant::now();
        let conf = sdk_config(&AwsSettings {
            region: Some("eu-west-1".into()),
            endpoint_url: None,
            role_arn: None,
        })
        .await;
        assert_eq!(conf.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
