//! `type = "s3"`: `bucket`, `key`, `compression`, `storage_class`, `content_type`, `acl`,
//! `log_key`, `align`, `force_path_style`, and the AWS connection keys.

use std::time::Duration;

use crate::config::reader::{Diagnostics, Table};
use crate::config::{Compression, OutputSpec};
use crate::event::Record;
use crate::output::aws::config::{AWS_KEYS, config_error, format_for, read_aws, refused};
use crate::output::aws::{AwsSettings, offline};
use crate::output::core::OutputContext;
use crate::output::from_config::batch_settings;
use crate::output::registry::{OutputConfig, OutputConfigError, OutputType, Started, spawn};
use crate::output::sink::BatchSettings;
use crate::output::template::Template;

/// The `s3` output type.
pub(crate) struct S3;

/// An `s3` output's keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct S3Output {
    pub bucket: String,
    /// The object key template.
    pub key: String,
    pub compression: Compression,
    pub storage_class: Option<String>,
    pub content_type: Option<String>,
    pub acl: Option<String>,
    pub log_key: Option<String>,
    pub align: Option<Duration>,
    pub force_path_style: bool,
    pub aws: AwsSettings,
}

/// The `key` template when none is given.
pub(crate) const DEFAULT_KEY: &str = "firelane/{tag}/%Y/%m/%d/%H/%M%S-{uuid}.log";

impl OutputType for S3 {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "bucket",
            "key",
            "compression",
            "storage_class",
            "content_type",
            "acl",
            "log_key",
            "align",
            "force_path_style",
            AWS_KEYS[0],
            AWS_KEYS[1],
            AWS_KEYS[2],
        ]
    }

    fn read(&self, t: &mut Table<'_, '_>, d: &mut Diagnostics) -> Box<dyn OutputConfig> {
        let path = t.path().to_string();
        let bucket = t.string(d, "bucket").unwrap_or_default();
        // An empty name is refused by the sink itself ("must not be empty").
        if !bucket.is_empty()
            && let Err(reason) = check_bucket_name(&bucket)
        {
            d.error(
                t.value_span("bucket"),
                format!("{path}.bucket: {bucket:?}: {reason}"),
            );
        }
        let key = t.opt_string(d, "key").unwrap_or_else(|| DEFAULT_KEY.into());
        if let Some(w) = index_warning(&key) {
            d.warn(t.value_span("key"), format!("{path}.key: {w}"));
        }
        let compression = Compression::read(t, d, &Compression::ALL);
        let storage_class = t.opt_string(d, "storage_class");
        let content_type = t.opt_string(d, "content_type");
        let acl = t.opt_string(d, "acl");
        let log_key = t.opt_string(d, "log_key");
        let align = t.opt_duration(d, "align");
        if let Some(a) = align
            && (a.as_secs() == 0 || 86400 % a.as_secs() != 0)
        {
            d.error(
                t.value_span("align"),
                format!("{path}.align: must divide a day evenly (e.g. \"5m\", \"1h\")"),
            );
        }
        let force_path_style = t.opt_bool(d, "force_path_style").unwrap_or(false);
        let aws = read_aws(t, d);
        Box::new(S3Output {
            bucket,
            key,
            compression,
            storage_class,
            content_type,
            acl,
            log_key,
            align,
            force_path_style,
            aws,
        })
    }
}

/// Whether `name` follows the naming rules of S3 general purpose buckets ("Bucket naming
/// rules", Amazon S3 User Guide): 3 to 63 characters; only lowercase letters, digits, dots
/// and hyphens; a letter or digit first and last; no two adjacent dots; not an IPv4
/// address. `Err` says which rule it breaks. (Buckets created in us-east-1 before March
/// 2018 could break these rules; such names cannot be used in virtual-hosted-style
/// requests either.)
pub(crate) fn check_bucket_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if !(3..=63).contains(&len) {
        return Err(format!(
            "bucket names are 3 to 63 characters long, this one has {len}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "{c:?} is not allowed in a bucket name (only lowercase letters, digits, `.` and `-`)"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(name.chars().next()) || !alnum(name.chars().next_back()) {
        return Err("a bucket name starts and ends with a letter or digit".into());
    }
    if name.contains("..") {
        return Err("a bucket name has no two adjacent dots".into());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("a bucket name is not an IP address".into());
    }
    Ok(())
}

/// The warning for a `key` template that numbers objects with `{index}` but has no
/// `{uuid}`: shown by `check` at the key and logged by the sink when it starts. `None`
/// when the template does not parse (that error is reported on its own).
pub(crate) fn index_warning(key: &str) -> Option<String> {
    let t = Template::parse(key).ok()?;
    (t.has_index() && !t.has_uuid()).then(|| {
        format!(
            "S3 key {key:?} uses {{index}} without {{uuid}}: the index restarts at 0 with the process, \
             so objects of a restarted router can overwrite earlier ones"
        )
    })
}

impl S3Output {
    /// The sink's settings for output `o`.
    fn sink_config(&self, o: &OutputSpec, batch: BatchSettings) -> super::S3Config {
        super::S3Config {
            name: o.name.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            compression: self.compression,
            storage_class: self.storage_class.clone(),
            content_type: self.content_type.clone(),
            acl: self.acl.clone(),
            format: format_for(o, &self.log_key),
            align: self.align,
            force_path_style: self.force_path_style,
            aws: self.aws.clone(),
            batch,
        }
    }

    /// The sink around a client that is never called (see [`offline`]).
    fn offline_sink(&self, o: &OutputSpec) -> Result<super::S3Sink, super::BuildError> {
        let client = offline::s3(self.aws.region.as_deref());
        super::build_with_client(self.sink_config(o, batch_settings(o)), client)
    }
}

#[async_trait::async_trait]
impl OutputConfig for S3Output {
    fn type_name(&self) -> &'static str {
        "s3"
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    fn default_batch(&self) -> BatchSettings {
        super::default_batch()
    }

    fn compressed(&self) -> bool {
        self.compression != Compression::None
    }

    fn validate(&self, o: &OutputSpec) -> Result<(), OutputConfigError> {
        self.offline_sink(o).map(drop).map_err(config_error)
    }

    fn destination(&self, o: &OutputSpec, record: &Record) -> String {
        match self.offline_sink(o) {
            Ok(sink) => sink.destination(record).unwrap_or_else(refused),
            Err(e) => format!("would not start: {e}"),
        }
    }

    async fn start(
        &self,
        o: &OutputSpec,
        ctx: OutputContext,
        reader: crate::buffer::BufferReader,
    ) -> anyhow::Result<Started> {
        let sink = super::build(self.sink_config(o, ctx.batch.clone())).await?;
        Ok(spawn(ctx, sink, reader))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s3: &str) -> Result<Vec<String>, Vec<String>> {
        let text = format!(
            "[inputs.f]\ntype = \"forward\"\n[routes.r]\nto = [\"o\"]\n[outputs.o]\ntype = \"s3\"\nregion = \"us-east-1\"\n{s3}\n"
        );
        crate::config::parse(&text, "t.toml", &|_| None)
            .map(|l| l.warnings)
            .map_err(|e| e.errors)
    }

    #[test]
    fn bucket_names_follow_the_s3_rules() {
        for good in [
            "abc",
            "my-app-logs",
            "logs.example.com",
            "a1b2c3",
            "fl-bin-s3-0123456789ab",
            &"a".repeat(63),
        ] {
            assert_eq!(check_bucket_name(good), Ok(()), "{good}");
            assert!(check(&format!("bucket = \"{good}\"")).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("ab", "3 to 63 characters long, this one has 2"),
            (&"a".repeat(64), "3 to 63 characters long, this one has 64"),
            ("My-Bucket", "'M' is not allowed"),
            ("my_bucket", "'_' is not allowed"),
            ("-logs", "starts and ends with a letter or digit"),
            ("logs.", "starts and ends with a letter or digit"),
            ("my..logs", "no two adjacent dots"),
            ("192.168.5.4", "not an IP address"),
        ] {
            let e = check_bucket_name(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            let errors = check(&format!("bucket = \"{bad}\"")).expect_err(bad);
            assert_eq!(
                errors,
                vec![format!("t.toml:8:10: outputs.o.bucket: {bad:?}: {e}")],
                "{bad}"
            );
        }
        // An empty name keeps the sink's own message, once.
        assert_eq!(
            check("bucket = \"\""),
            Err(vec![
                "t.toml:8:10: outputs.o.bucket: \"\": must not be empty".to_string()
            ])
        );
    }

    // `run` logs this warning when the sink starts; `check` shows it at the key.
    #[test]
    fn check_warns_about_index_without_uuid() {
        let w = check("bucket = \"logs\"\nkey = \"logs/{tag}/{index}.json\"")
            .unwrap_or_else(|e| panic!("{e:?}"));
        let at_key: Vec<&String> = w.iter().filter(|w| w.contains("{index}")).collect();
        assert_eq!(
            at_key,
            vec![&"t.toml:9:7: outputs.o.key: S3 key \"logs/{tag}/{index}.json\" uses {index} without {uuid}: the index restarts at 0 with the process, so objects of a restarted router can overwrite earlier ones (warning)".to_string()]
        );
        for quiet in [
            "key = \"logs/{tag}/{index}-{uuid}.json\"",
            "key = \"logs/{tag}/{uuid}.json\"",
            "key = \"logs/{tag}.json\"",
        ] {
            let w =
                check(&format!("bucket = \"logs\"\n{quiet}")).unwrap_or_else(|e| panic!("{e:?}"));
            assert!(!w.iter().any(|w| w.contains("{index}")), "{quiet}: {w:?}");
        }
    }
}
