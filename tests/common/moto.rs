//! The local AWS API server (moto) that `scripts/test.sh` starts for the AWS tests.

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
