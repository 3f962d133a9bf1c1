use std::path::Path;

use super::classic::{self, Problems};
use super::translate::accessor_path;
use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "REGION" => Some("eu-west-1".into()),
        "STREAM" => Some("from-env".into()),
        _ => None,
    }
}

/// Translates `text` as the file `dir/fluent-bit.conf`.
fn translate_in(dir: &Path, text: &str) -> Result<(String, Vec<String>), ConfigErrors> {
    let path = dir.join("fluent-bit.conf");
    std::fs::write(&path, text).expect("write conf");
    to_toml(&path, text, &env)
}

fn translate(text: &str) -> Result<(String, Vec<String>), ConfigErrors> {
    let dir = tempfile::tempdir().expect("tempdir");
    translate_in(dir.path(), text)
}

fn errors(text: &str) -> Vec<String> {
    match translate(text) {
        Ok((toml, _)) => panic!("expected errors, got:\n{toml}"),
        Err(e) => e.errors,
    }
}

fn toml_of(text: &str) -> toml::Table {
    let (t, _) = translate(text).unwrap_or_else(|e| panic!("translation failed: {e}"));
    t.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{t}"))
}

fn at<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let mut v = t
        .get(first)
        .unwrap_or_else(|| panic!("no {first} in {t:#?}"));
    for p in parts {
        v = v
            .get(p)
            .unwrap_or_else(|| panic!("no {p} of {path} in {t:#?}"));
    }
    v
}

fn s<'a>(t: &'a toml::Table, path: &str) -> &'a str {
    at(t, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

#[test]
fn detects_classic_configs() {
    assert!(is_classic(Path::new("/x/fluent-bit.conf"), ""));
    assert!(is_classic(
        Path::new("cfg"),
        "# c\n\n[SERVICE]\n  Flush 1\n"
    ));
    assert!(is_classic(Path::new("cfg"), "@INCLUDE a.conf\n"));
    assert!(is_classic(Path::new("cfg"), "[ input ]\n"));
    assert!(!is_classic(
        Path::new("firelane.toml"),
        "[inputs.app]\ntype = \"forward\"\n"
    ));
    assert!(!is_classic(Path::new("cfg"), "[inputs.app]\n"));
}

#[test]
fn reader_sections_keys_set_include_and_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
    std::fs::write(
        dir.path().join("conf.d/b.conf"),
        "[OUTPUT]\n    Name null\n    Match b\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("conf.d/a.conf"),
        "[OUTPUT]\n    Name null\n    Match a\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("conf.d/skip.txt"), "garbage").expect("write");
    let main = dir.path().join("main.conf");
    let text = "# comment\n@SET who=world\n[service]\n    FLUSH 1\n    Greeting hello ${who} # not a comment\n@include conf.d/*.conf\n[INPUT]\n    name forward\n";
    let mut p = Problems::default();
    let sections = classic::read(&main, text, &mut p);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let kinds: Vec<&str> = sections.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["SERVICE", "OUTPUT", "OUTPUT", "INPUT"]);
    let service = &sections[0];
    assert_eq!(
        service.get("greeting").map(|e| e.value.as_str()),
        Some("hello world # not a comment")
    );
    assert_eq!(service.get("flush").map(|e| e.origin.line), Some(4));
    // Globbed includes, sorted, relative to the main file's directory.
    assert_eq!(
        sections[1].get("match").map(|e| e.value.as_str()),
        Some("a")
    );
    assert!(sections[1].origin.file.ends_with("conf.d/a.conf"));
    assert_eq!(
        sections[2].get("match").map(|e| e.value.as_str()),
        Some("b")
    );
    assert_eq!(sections[3].get("name").map(|e| e.origin.line), Some(8));
}

#[test]
fn reader_reports_bad_lines_cycles_and_missing_includes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = dir.path().join("main.conf");
    std::fs::write(&main, "@INCLUDE main.conf\n").expect("write");
    let mut p = Problems::default();
    let text =
        "Flush 1\n[INPUT\n[INPUT]\n    Name\n@INCLUDE main.conf\n@INCLUDE nope.conf\n@FOO x\n";
    classic::read(&main, text, &mut p);
    let f = main.display().to_string();
    let want = [
        format!("{f}:1: \"Flush 1\" is outside any section"),
        format!("{f}:2: section header \"[INPUT\" has no closing"),
        format!("{f}:4: key Name has no value"),
        format!("{f}:5: @INCLUDE"),
        format!("{f}:6: @INCLUDE"),
        format!("{f}:7: unknown command @FOO"),
    ];
    assert_eq!(p.errors.len(), want.len(), "{:#?}", p.errors);
    for (got, want) in p.errors.iter().zip(&want) {
        assert!(
            got.starts_with(want.as_str()),
            "{got} does not start with {want}"
        );
    }
    assert!(p.errors[3].contains("cycle"), "{}", p.errors[3]);
}

#[test]
fn glob_matches_file_names() {
    assert!(classic::glob_match("*.conf", "a.conf"));
    assert!(classic::glob_match("out-?.conf", "out-1.conf"));
    assert!(!classic::glob_match("*.conf", "a.conf.bak"));
    assert!(classic::glob_match("a*b*c", "aXXbYc"));
}

#[test]
fn record_accessors_become_dotted_paths() {
    assert_eq!(accessor_path("$log").as_deref(), Some("log"));
    assert_eq!(accessor_path("log").as_deref(), Some("log"));
    assert_eq!(
        accessor_path("$kubernetes['labels']['app']").as_deref(),
        Some("kubernetes.labels.app")
    );
    assert_eq!(accessor_path("$a['b.c']"), None);
    assert_eq!(accessor_path("$"), None);
}

/// The ECS agent's generated file (spec §3.2), with a user file that greps and adds a
/// second output.
const AGENT_CLOUDWATCH: &str = "[INPUT]
    Name forward
    Mem_Buf_Limit 25MB
    unix_path /var/run/fluent.sock

[INPUT]
    Name forward
    Listen 127.0.0.1
    Port 24224

[INPUT]
    Name tcp
    Tag firelens-healthcheck
    Listen 127.0.0.1
    Port 8877

[FILTER]
    Name   grep
    Match app-firelens*
    Regex  log ERROR

[FILTER]
    Name   grep
    Match app-firelens*
    Exclude log DEBUG

[FILTER]
    Name record_modifier
    Match *
    Record ecs_cluster mycluster
    Record ecs_task_arn arn:aws:ecs:us-east-2:01234567891011:task/mycluster/3de392df6bfa470b
    Record ecs_task_definition demo:7

[OUTPUT]
    Name null
    Match firelens-healthcheck

[OUTPUT]
    Name cloudwatch_logs
    Match app-firelens*
    auto_create_group true
    log_group_name /ecs/demo
    log_stream_prefix app-
    log_retention_days 30
    region ${REGION}
";

#[test]
fn agent_generated_config_translates() {
    let t = toml_of(AGENT_CLOUDWATCH);
    // Inputs: the socket, the TCP port, the health-check input.
    assert_eq!(s(&t, "inputs.forward.type"), "forward");
    assert_eq!(
        at(&t, "inputs.forward.listen").as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        at(&t, "inputs.forward.listen")[0].as_str(),
        Some("unix:///var/run/fluent.sock")
    );
    assert_eq!(
        at(&t, "inputs.forward_1.listen")[0].as_str(),
        Some("tcp://127.0.0.1:24224")
    );
    assert_eq!(s(&t, "inputs.tcp.type"), "tcp");
    assert_eq!(s(&t, "inputs.tcp.listen"), "127.0.0.1:8877");
    assert_eq!(s(&t, "inputs.tcp.tag"), "firelens-healthcheck");
    // Mem_Buf_Limit (powers of 1024, as Fluent Bit counts) → the memory budget.
    assert_eq!(s(&t, "runtime.memory_limit"), "25MiB");
    // The forward inputs run the tag-scoped greps between adding and removing the tag
    // field; the health-check input (fixed tag, not selected) only the metadata.
    let chain = |i: &str| -> Vec<String> {
        at(&t, &format!("inputs.{i}.processors"))
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        chain("forward"),
        [
            "fluentbit_tag_add",
            "grep_tagged",
            "grep_1_tagged",
            "record_modifier",
            "fluentbit_tag_remove"
        ]
    );
    assert_eq!(chain("forward_1"), chain("forward"));
    assert_eq!(chain("tcp"), ["record_modifier"]);
    assert_eq!(s(&t, "processors.grep_tagged.logical_op"), "or");
    assert_eq!(
        at(&t, "processors.grep_tagged.include")[1]
            .get("regex")
            .and_then(|v| v.as_str()),
        Some("ERROR")
    );
    assert_eq!(s(&t, "processors.grep_1_tagged.logical_op"), "and");
    assert_eq!(s(&t, "processors.record_modifier.type"), "fields");
    assert_eq!(
        s(&t, "processors.record_modifier.add.ecs_task_definition"),
        "demo:7"
    );
    // Outputs and one route each, carrying the Match.
    assert_eq!(s(&t, "outputs.null.type"), "null");
    assert_eq!(
        at(&t, "routes.null.tag")[0].as_str(),
        Some("firelens-healthcheck")
    );
    assert_eq!(s(&t, "outputs.cloudwatch_logs.log_group"), "/ecs/demo");
    assert_eq!(s(&t, "outputs.cloudwatch_logs.log_stream"), "app-{tag}");
    assert_eq!(
        at(&t, "outputs.cloudwatch_logs.retention_days").as_integer(),
        Some(30)
    );
    // ${VAR} is left for the TOML loader (which redacts secrets).
    assert_eq!(s(&t, "outputs.cloudwatch_logs.region"), "${REGION}");
    assert_eq!(
        at(&t, "routes.cloudwatch_logs.tag")[0].as_str(),
        Some("app-firelens*")
    );
    assert_eq!(
        at(&t, "routes.cloudwatch_logs.to")[0].as_str(),
        Some("cloudwatch_logs")
    );
}

#[test]
fn unsupported_plugins_and_options_are_listed_with_their_lines() {
    let errs = errors(
        "[SERVICE]
    Flush 1
    Bogus_Key x
[INPUT]
    Name tail
    Path /var/log/*.log
[FILTER]
    Name nest
    Match *
    Operation nest
[FILTER]
    Name lua
    Match *
[OUTPUT]
    Name kinesis_streams
    Match *
    stream_name my-stream
[OUTPUT]
    Name kinesis_firehose
    Match *
    deliver_stream_name my-stream
    region us-west-2
[OUTPUT]
    Name s3
    Match *
    bucket b
    s3_key_format /$TAG[1]/%j/x
    static_file_path On
",
    );
    assert_errors_at(
        &errs,
        &[
            (3, "option Bogus_Key is not supported"),
            (4, "[INPUT] tail: firelane has no such input"),
            (7, "[FILTER] nest: Operation nest is not supported"),
            (11, "[FILTER] lua: firelane has no such filter"),
            (14, "[OUTPUT] kinesis_streams: stream is required"),
            (
                17,
                "option stream_name (did you mean stream?) is not supported",
            ),
            (18, "delivery_stream is required"),
            (
                21,
                "option deliver_stream_name (did you mean delivery_stream?) is not supported",
            ),
            (27, "s3_key_format"),
            (28, "static_file_path is not supported"),
        ],
    );
}

/// Asserts that for each `(line, needle)` some error of `errs` is at that `.conf` line and
/// contains the needle.
fn assert_errors_at(errs: &[String], expected: &[(usize, &str)]) {
    let lines = errors_lines(errs);
    for &(line, needle) in expected {
        assert!(
            lines.iter().any(|(l, m)| *l == line && m.contains(needle)),
            "no error {needle:?} at line {line} in {errs:#?}"
        );
    }
}

fn errors_lines(errs: &[String]) -> Vec<(usize, String)> {
    errs.iter()
        .filter_map(|e| {
            let (_, rest) = e.split_once(".conf:")?;
            let (line, msg) = rest.split_once(": ")?;
            Some((line.parse().ok()?, msg.to_string()))
        })
        .collect()
}

#[test]
fn s3_key_format_tokens() {
    let t = toml_of(
        "[INPUT]
    Name forward
[OUTPUT]
    Name s3
    Match *
    bucket my-bucket
    region us-west-2
    total_file_size 1M
    upload_timeout 1m
    use_put_object On
    s3_key_format /${STREAM}/$TAG[0]/%Y/%m/%d/%H/%M/%S/$UUID-$INDEX.log
    s3_key_format_tag_delimiters .-
    compression gzip
",
    );
    assert_eq!(
        s(&t, "outputs.s3.key"),
        "${STREAM}/{tag[0]}/%Y/%m/%d/%H/%M/%S/{uuid}-{index}.log"
    );
    assert_eq!(s(&t, "outputs.s3.batch.max_bytes"), "1MiB");
    assert_eq!(s(&t, "outputs.s3.batch.max_age"), "60s");
    assert_eq!(s(&t, "outputs.s3.compression"), "gzip");
    // Fluent Bit's json_date_key default.
    assert_eq!(s(&t, "outputs.s3.time_key"), "date");
    // The default key format, without its leading "/".
    let t = toml_of("[INPUT]\n  Name forward\n[OUTPUT]\n  Name s3\n  Match *\n  bucket b-1\n");
    assert_eq!(
        s(&t, "outputs.s3.key"),
        "fluent-bit-logs/{tag}/%Y/%m/%d/%H/%M/%S"
    );
    assert_eq!(s(&t, "outputs.s3.batch.max_age"), "10m");
    // $TAG[n] with Fluent Bit's default "." delimiter would not split FireLens tags as
    // firelane's {tag[n]} does.
    let errs = errors(
        "[INPUT]\n  Name forward\n[OUTPUT]\n  Name s3\n  Match *\n  bucket b-1\n  s3_key_format /$TAG[0]/x\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(".conf:7:") && e.contains("s3_key_format_tag_delimiters")),
        "{errs:#?}"
    );
}

#[test]
fn cloudwatch_go_plugin_templates_and_service_keys() {
    let t = toml_of(
        "[SERVICE]
    Flush 2
    Grace 30
    Log_Level warning
    HTTP_Server On
    HTTP_Listen 0.0.0.0
    HTTP_Port 2021
    storage.path /var/lib/buffers
    storage.sync full
[INPUT]
    Name forward
    storage.type filesystem
[INPUT]
    Name tcp
    Port 5170
    Buffer_Size 64
[OUTPUT]
    Name cloudwatch
    Match *
    log_group_name /aws/ecs/containerinsights/$(ecs_cluster)/application
    log_stream_name $(ecs_task_id)
    auto_create_group true
    log_key log
    retry_limit 2
    storage.total_limit_size 1G
",
    );
    assert_eq!(
        s(&t, "outputs.cloudwatch.log_group"),
        "/aws/ecs/containerinsights/{ecs_cluster}/application"
    );
    assert_eq!(s(&t, "outputs.cloudwatch.log_stream"), "{ecs_task_id}");
    assert_eq!(s(&t, "outputs.cloudwatch.log_key"), "log");
    assert_eq!(s(&t, "outputs.cloudwatch.batch.max_age"), "2s");
    assert_eq!(
        at(&t, "outputs.cloudwatch.retry.max_retries").as_integer(),
        Some(2)
    );
    assert_eq!(s(&t, "outputs.cloudwatch.buffer.type"), "disk");
    assert_eq!(s(&t, "outputs.cloudwatch.buffer.max_size"), "1GiB");
    assert_eq!(s(&t, "outputs.cloudwatch.buffer.fsync"), "always");
    assert_eq!(s(&t, "runtime.shutdown_grace"), "30s");
    assert_eq!(s(&t, "runtime.log_level"), "warn");
    assert_eq!(s(&t, "runtime.data_dir"), "/var/lib/buffers");
    assert_eq!(s(&t, "admin.listen"), "0.0.0.0:2021");
    // Fluent Bit's tcp input: Buffer_Size in KB; tag "tcp.0" by default.
    assert_eq!(s(&t, "inputs.tcp.max_line"), "64KiB");
    assert_eq!(s(&t, "inputs.tcp.tag"), "tcp.0");
    assert_eq!(s(&t, "inputs.tcp.listen"), "0.0.0.0:5170");
}

#[test]
fn filters_map_onto_processors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("parsers.conf"),
        "[PARSER]\n    Name my_json\n    Format json\n[PARSER]\n    Name apache\n    Format regex\n    Regex ^x$\n",
    )
    .expect("write");
    let (text, _) = translate_in(
        dir.path(),
        "[SERVICE]
    Parsers_File parsers.conf
[INPUT]
    Name forward
[FILTER]
    Name parser
    Match *
    Key_Name log
    Parser my_json
    Reserve_Data On
[FILTER]
    Name modify
    Match *
    Rename a b
    Set env prod
    Copy b c
    Remove secret
[FILTER]
    Name multiline
    Match *
    multiline.key_content log
    multiline.parser java
[FILTER]
    Name multiline
    Match *
    mode partial_message
[FILTER]
    Name rewrite_tag
    Match *
    Rule $level ^error$ errors.$TAG false
[FILTER]
    Name grep
    Match *
    Regex $kubernetes['labels']['app'] ^web$
    Exclude log health
[OUTPUT]
    Name stdout
    Match *
",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let t: toml::Table = text.parse().expect("TOML");
    assert_eq!(s(&t, "processors.parser.type"), "parse_json");
    assert_eq!(s(&t, "processors.parser.key"), "log");
    assert_eq!(at(&t, "processors.parser.merge").as_bool(), Some(true));
    assert_eq!(at(&t, "processors.parser.keep_key").as_bool(), Some(false));
    // Rename, Set (add) in one processor; Copy comes after them in the file, so a second.
    assert_eq!(s(&t, "processors.modify.rename.a"), "b");
    assert_eq!(s(&t, "processors.modify.add.env"), "prod");
    assert_eq!(s(&t, "processors.modify_1.copy.b"), "c");
    assert_eq!(
        at(&t, "processors.modify_1.remove")[0].as_str(),
        Some("secret")
    );
    assert_eq!(s(&t, "processors.multiline.mode"), "java");
    assert_eq!(s(&t, "processors.multiline.key"), "log");
    assert_eq!(s(&t, "processors.multiline_1.type"), "partial");
    assert_eq!(s(&t, "processors.rewrite_tag.tag"), "errors.{tag}");
    assert_eq!(s(&t, "processors.rewrite_tag.match.key"), "level");
    assert_eq!(at(&t, "processors.rewrite_tag.keep").as_bool(), Some(false));
    assert_eq!(
        s(&t, "processors.grep.include.key"),
        "kubernetes.labels.app"
    );
    assert_eq!(s(&t, "processors.grep.exclude.regex"), "health");
    let chain: Vec<&str> = at(&t, "inputs.forward.processors")
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        chain,
        [
            "parser",
            "modify",
            "modify_1",
            "multiline",
            "multiline_1",
            "rewrite_tag",
            "grep"
        ]
    );
    // A regex parser, a parser without Reserve_Data, a scoped modify: refused at their lines.
    let (res, _) = (
        translate_in(
            dir.path(),
            "[SERVICE]
    Parsers_File parsers.conf
[INPUT]
    Name forward
[FILTER]
    Name parser
    Match *
    Key_Name log
    Parser apache
    Reserve_Data On
[FILTER]
    Name parser
    Match *
    Key_Name log
    Parser my_json
[FILTER]
    Name modify
    Match app-*
    Set a b
[OUTPUT]
    Name stdout
    Match *
",
        ),
        (),
    );
    let errs = res.err().map(|e| e.errors).unwrap_or_default();
    assert_errors_at(
        &errs,
        &[
            (9, "Format regex"),
            (11, "Reserve_Data On"),
            (18, "Match app-* selects only some records"),
        ],
    );
}

#[test]
fn unset_variables_are_errors_at_their_line() {
    let errs = errors(
        "[INPUT]\n    Name forward\n    Port ${NOPE}\n[OUTPUT]\n    Name null\n    Match *\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(".conf:3: Port: environment variable NOPE is not set")),
        "{errs:#?}"
    );
}

#[test]
fn loader_errors_point_at_the_conf_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fluent-bit.conf");
    // A bucket name S3 refuses: found by the TOML loader, reported at the .conf line.
    let text = "[INPUT]\n    Name forward\n[OUTPUT]\n    Name s3\n    Match *\n    bucket Not_A_Bucket\n    region us-east-1\n";
    std::fs::write(&path, text).expect("write");
    let err = load(&path, text, &env).expect_err("invalid bucket");
    let want = format!("{}:6: ", path.display());
    assert!(
        err.errors
            .iter()
            .any(|e| e.starts_with(&want) && e.contains("bucket")),
        "{:#?}",
        err.errors
    );
}

#[test]
fn environment_variables_survive_in_templates() {
    let t = toml_of(
        "[INPUT]
    Name forward
[FILTER]
    Name record_modifier
    Match *
    Record cluster ${ECS_CLUSTER}
    Record literal {braces}
[OUTPUT]
    Name cloudwatch_logs
    Match *
    log_group_name /ecs/${ECS_CLUSTER}
    log_stream_name static
    region us-east-1
",
    );
    assert_eq!(
        s(&t, "processors.record_modifier.add.cluster"),
        "${ECS_CLUSTER}"
    );
    assert_eq!(
        s(&t, "processors.record_modifier.add.literal"),
        "{{braces}}"
    );
    assert_eq!(
        s(&t, "outputs.cloudwatch_logs.log_group"),
        "/ecs/${ECS_CLUSTER}"
    );
}

/// `nest` with `Operation lift` becomes a fields processor's `lift`, which the loader
/// accepts; `Wildcard` (nest only) is refused at its line.
#[test]
fn nest_lift_becomes_a_fields_lift() {
    let t = toml_of(
        "[INPUT]
    Name forward
    Port 24224
[FILTER]
    Name nest
    Match *
    Operation lift
    Nested_under kubernetes
    Add_prefix k8s_
[OUTPUT]
    Name stdout
    Match *
",
    );
    assert_eq!(s(&t, "processors.nest.type"), "fields");
    assert_eq!(s(&t, "processors.nest.lift.kubernetes"), "k8s_");
    let errs = errors(
        "[INPUT]
    Name forward
[FILTER]
    Name nest
    Match *
    Operation lift
    Nested_under k
    Wildcard k*
[OUTPUT]
    Name null
    Match *
",
    );
    let lines = errors_lines(&errs);
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 8 && m.contains("Wildcard is not supported")),
        "{lines:?}"
    );
}

#[test]
fn kinesis_streams_and_the_go_kinesis_plugin_translate() {
    let (text, warnings) = translate(
        "[SERVICE]
    Flush 3
[INPUT]
    Name forward
[OUTPUT]
    Name kinesis_streams
    Match *
    region ${REGION}
    stream my-stream
    log_key log
    time_key time
    endpoint kinesis.example.com
    role_arn arn:aws:iam::123456789012:role/writer
    auto_retry_requests true
    port 443
    simple_aggregation false
    workers 2
[OUTPUT]
    Name kinesis
    Match *
    region us-west-2
    stream other
    partition_key kubernetes->pod_name
    append_newline true
    aggregation false
",
    )
    .unwrap_or_else(|e| panic!("translation failed: {e}"));
    let t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(s(&t, "outputs.kinesis_streams.type"), "kinesis");
    assert_eq!(s(&t, "outputs.kinesis_streams.stream"), "my-stream");
    // `${VAR}` is passed on for the TOML loader to expand.
    assert_eq!(s(&t, "outputs.kinesis_streams.region"), "${REGION}");
    assert_eq!(s(&t, "outputs.kinesis_streams.log_key"), "log");
    assert_eq!(s(&t, "outputs.kinesis_streams.time_key"), "time");
    assert_eq!(
        s(&t, "outputs.kinesis_streams.endpoint_url"),
        "https://kinesis.example.com"
    );
    assert_eq!(
        s(&t, "outputs.kinesis_streams.role_arn"),
        "arn:aws:iam::123456789012:role/writer"
    );
    assert_eq!(s(&t, "outputs.kinesis_streams.batch.max_age"), "3s");
    assert_eq!(
        at(&t, "outputs.kinesis_streams.concurrency").as_integer(),
        Some(2)
    );
    // The C plugin has no partition key option: random keys, firelane's default.
    assert!(
        at(&t, "outputs.kinesis_streams")
            .get("partition_key")
            .is_none()
    );
    assert_eq!(s(&t, "outputs.kinesis.type"), "kinesis");
    assert_eq!(s(&t, "outputs.kinesis.stream"), "other");
    assert_eq!(
        s(&t, "outputs.kinesis.partition_key"),
        "{kubernetes.pod_name}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("time_key")),
        "{warnings:?}"
    );

    let errs = errors(
        "[OUTPUT]
    Name kinesis
    Match *
    partition_key $(ecs_task_id)
    port 4567
    aggregation true
    compression zlib
    data_keys log
    time_key_format %s
    sts_endpoint https://sts.example.com
",
    );
    assert_errors_at(
        &errs,
        &[
            (1, "[OUTPUT] kinesis: stream is required"),
            (4, "partition_key \"$(ecs_task_id)\": expected a field name"),
            (5, "port 4567: put the port in endpoint"),
            (6, "aggregation is not supported"),
            (
                7,
                "compression zlib of each Kinesis record is not supported",
            ),
            (8, "data_keys is not supported"),
            (9, "time_key_format is not supported"),
            (10, "sts_endpoint is not supported"),
        ],
    );
}

/// The Go `kinesis` plugin sends one PutRecords at a time (unless `experimental_concurrency`
/// says otherwise), so one `partition_key`'s records land in order in their shard; the
/// translation keeps that (`concurrency = 1`) rather than firelane's default of 4, maps
/// `experimental_concurrency N` onto `concurrency`, lets `Workers` decide when given, and
/// accepts `experimental_concurrency_retries` (firelane's retry policy applies).
#[test]
fn go_kinesis_plugin_keeps_one_call_at_a_time() {
    let (text, _) = translate(
        "[INPUT]
    Name forward
[OUTPUT]
    Name kinesis
    Match a
    region us-west-2
    stream s
    partition_key container_id
[OUTPUT]
    Name kinesis
    Match b
    region us-west-2
    stream s
    experimental_concurrency 8
    experimental_concurrency_retries 4
[OUTPUT]
    Name kinesis
    Match c
    region us-west-2
    stream s
    workers 3
",
    )
    .unwrap_or_else(|e| panic!("translation failed: {e}"));
    let t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    let concurrency = |o: &str| at(&t, &format!("outputs.{o}.concurrency")).as_integer();
    assert_eq!(concurrency("kinesis"), Some(1), "{text}");
    assert_eq!(concurrency("kinesis_1"), Some(8), "{text}");
    assert_eq!(concurrency("kinesis_2"), Some(3), "{text}");
}
