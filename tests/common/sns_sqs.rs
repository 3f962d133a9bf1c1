//! SQS queues and SNS topics on moto: a fresh queue for tests of the `sqs` input, and a
//! topic with a queue subscribed to it for tests of the `sns` output (what firelane
//! publishes is read back from the queue as SNS notification envelopes).

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use super::moto::{Aws, rt, unique};

/// Creates a queue named after `prefix` (see [`unique`]); returns its URL.
pub fn create_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> String {
    let name = unique(prefix);
    rt().block_on(async {
        sqs.create_queue()
            .queue_name(&name)
            .send()
            .await
            .expect("CreateQueue")
            .queue_url()
            .expect("queue URL")
            .to_owned()
    })
}

/// Creates topic `topic` and a new queue named after `queue_prefix`, subscribed to the
/// topic with raw delivery off (so each message is an SNS notification envelope).
/// Returns (topic ARN, queue URL); panics on any error.
pub fn topic_with_queue(aws: &Aws, topic: &str, queue_prefix: &str) -> (String, String) {
    let queue = create_queue(&aws.sqs, queue_prefix);
    rt().block_on(async {
        let topic_arn = aws
            .sns
            .create_topic()
            .name(topic)
            .send()
            .await
            .expect("create topic")
            .topic_arn()
            .expect("topic arn")
            .to_string();
        let attrs = aws
            .sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes");
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .expect("queue arn")
            .clone();
        aws.sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .send()
            .await
            .expect("subscribe");
        (topic_arn, queue)
    })
}

/// Receives SNS notifications from `queue` (deleting each) until `n` arrived or `timeout`:
/// (Subject, Message) of each.
pub fn notifications(aws: &Aws, queue: &str, n: usize, timeout: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let out = rt()
            .block_on(
                aws.sqs
                    .receive_message()
                    .queue_url(queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send(),
            )
            .expect("receive");
        for m in out.messages() {
            let envelope: Value =
                serde_json::from_str(m.body().unwrap_or("")).expect("an SNS envelope");
            got.push((
                envelope["Subject"].as_str().unwrap_or("").to_string(),
                envelope["Message"].as_str().unwrap_or("").to_string(),
            ));
            if let Some(h) = m.receipt_handle() {
                let _ = rt().block_on(
                    aws.sqs
                        .delete_message()
                        .queue_url(queue)
                        .receipt_handle(h)
                        .send(),
                );
            }
        }
    }
    got
}
