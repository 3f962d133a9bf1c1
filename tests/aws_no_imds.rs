//! Start-up without a region and with an instance metadata service that never answers must
//! give up quickly and fail the build with a clear error, not hang.
//! One test per binary: it changes the process environment before any thread starts.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use firelane::output::aws::cloudwatch_logs::{self, CloudWatchLogsConfig};
use firelane::output::aws::{AwsSettings, BuildError, RecordFormat, sdk_config};

#[test]
fn no_region_and_silent_imds_fails_fast() {
    // Accepts connections (the backlog does) but never answers: the worst kind of IMDS.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    // SAFETY: no other thread exists yet in this test binary's only test.
    unsafe {
        for k in [
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_PROFILE",
            "AWS_EC2_METADATA_DISABLED",
        ] {
            std::env::remove_var(k);
        }
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/firelane-test-config");
        std::env::set_var(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/firelane-test-credentials",
        );
        std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let conf = sdk_config(&AwsSettings::default()).await;
        let took = started.elapsed();
        assert!(conf.region().is_none());
        assert!(took < Duration::from_secs(4), "region lookup took {took:?}");

        let started = Instant::now();
        let cfg = CloudWatchLogsConfig {
            name: "logs".into(),
            log_group: "g".into(),
            log_stream: "s".into(),
            auto_create: true,
            retention_days: None,
            tags: Default::default(),
            format: RecordFormat::default(),
            aws: AwsSettings::default(),
            batch: cloudwatch_logs::default_batch(),
        };
        let err = cloudwatch_logs::build(cfg)
            .await
            .err()
            .expect("must fail without a region");
        assert!(matches!(err, BuildError::NoRegion { .. }), "{err}");
        assert!(err.to_string().contains("AWS_REGION"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(4));
    });
    drop(silent);
}
