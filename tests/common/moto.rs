//! The local AWS API server (moto) that `scripts/test.sh` starts for the AWS tests.

use std::io::Write;

/// moto's URL from `FIRELANE_TEST_AWS_ENDPOINT`. Without it (plain `cargo test`) the AWS
/// tests return at once, after one loud line on stderr (written to the handle, not with
/// `eprintln!`, so the harness cannot hide it).
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
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                let _ = std::io::stderr().write_all(
                    b"\n*** SKIPPED: FIRELANE_TEST_AWS_ENDPOINT is not set; nothing was tested against moto (use scripts/test.sh) ***\n",
                );
            });
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
