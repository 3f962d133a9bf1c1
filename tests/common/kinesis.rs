//! Kinesis Data Streams on moto: create a stream, read back everything in it.

use super::moto::{Aws, rt, unique};

/// Creates a stream with `shards` shards and waits until it is ACTIVE; returns its name.
pub fn create_stream(aws: &Aws, shards: i32) -> String {
    let name = unique("fl-kds");
    rt().block_on(async {
        aws.kinesis
            .create_stream()
            .stream_name(&name)
            .shard_count(shards)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create stream {name}: {e:?}"));
        for _ in 0..100 {
            let d = aws
                .kinesis
                .describe_stream_summary()
                .stream_name(&name)
                .send()
                .await
                .expect("describe stream");
            let active = d.stream_description_summary().is_some_and(|s| {
                s.stream_status() == &aws_sdk_kinesis::types::StreamStatus::Active
            });
            if active {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("stream {name} never became ACTIVE");
    });
    name
}

/// One record as stored: its shard, partition key and data.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub shard: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Every record of every shard of `stream`, each shard read from TRIM_HORIZON to its end
/// (in sequence-number order within a shard).
pub fn read_all(aws: &Aws, stream: &str) -> Vec<StoredRecord> {
    rt().block_on(async {
        let shards = aws
            .kinesis
            .list_shards()
            .stream_name(stream)
            .send()
            .await
            .expect("list shards");
        let mut out = Vec::new();
        for shard in shards.shards() {
            let id = shard.shard_id().to_string();
            let mut iterator = aws
                .kinesis
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(&id)
                .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("shard iterator")
                .shard_iterator()
                .map(String::from);
            while let Some(it) = iterator {
                let page = aws
                    .kinesis
                    .get_records()
                    .shard_iterator(it)
                    .limit(10_000)
                    .send()
                    .await
                    .expect("get records");
                for r in page.records() {
                    out.push(StoredRecord {
                        shard: id.clone(),
                        partition_key: r.partition_key().unwrap_or_default().to_string(),
                        data: r.data().as_ref().to_vec(),
                    });
                }
                // An open shard always returns a next iterator: an empty page is its end.
                if page.records().is_empty() {
                    break;
                }
                iterator = page.next_shard_iterator().map(String::from);
            }
        }
        out
    })
}
