//! What the alert outputs (`slack`, `sns`) share: grouping, the per-minute cap and the text
//! layouts ([`layout`]).
//!
//! Grouping rides on the delivery core's partitions and batches: the partition of a record
//! is its group (`group_by`, rendered), and a batch is one message.
//! - The first record of a group that is not "hot" opens a *lead* batch that takes only
//!   that record and is due at once ([`BatchBuilder::flush_at`] = now): it goes out
//!   immediately, alone, and starts the group's window.
//! - Records of the group while the window is open go into a *follow-up* batch, due when
//!   the window ends; it is one message that says how many there were (and how many in all
//!   since the lead) and shows a few ([`SAMPLES`]). Sending a follow-up starts a new window,
//!   so a crash loop that goes on gives one message per window; a window with no record
//!   lets the group cool down, and its next record is a lead again.
//!
//! Nothing acknowledged is lost to the grouping: records folded into a follow-up stay in
//! the core's open batch (and in the buffer) until that message is sent, and are
//! acknowledged only then; on shutdown the core flushes open batches, so pending follow-ups
//! go out. A follow-up cut short by the batch limits or by buffer pressure is sent early;
//! the next one continues the count.
//!
//! `max_per_minute` caps the messages an output sends in any 60 s: a message over the cap
//! waits (it is not dropped), and records keep folding into the open follow-ups meanwhile.

pub(crate) mod layout;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::sink::{BatchBuilder, Push};
use super::template::{Dynamic, Template, TemplateError};
use crate::config::reader::{Diagnostics, Table};
use crate::event::Record;

/// Records a follow-up message shows (the first ones of its window).
pub(crate) const SAMPLES: usize = 3;
/// Default `window`.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Default `max_per_minute`: Slack allows about one message per second per incoming
/// webhook ("Rate limits", Slack API docs); more than one a second is no longer an alert.
pub(crate) const DEFAULT_MAX_PER_MINUTE: u32 = 60;
/// Groups remembered at most. A group whose window has ended is forgotten when a new one
/// needs room; past this, the oldest window is forgotten (its next record is a lead).
const MAX_GROUPS: usize = 10_000;

/// Default groups when `group_by` is unset, by `detail-type`: failed tasks of one service
/// with one stop code are one group (issue #12), deployments and service actions per
/// service and event name, container instances per instance and status; any other record
/// by its tag.
const DEFAULT_GROUPS: &[(&str, &str)] = &[
    (
        "ECS Task State Change",
        "task|{detail.clusterArn|arn[-1]}|{detail.group}|{detail.stopCode}",
    ),
    (
        "ECS Deployment State Change",
        "deployment|{resources[0]}|{detail.eventName}",
    ),
    (
        "ECS Service Action",
        "service_action|{resources[0]}|{detail.eventName}",
    ),
    (
        "ECS Container Instance State Change",
        "instance|{detail.containerInstanceArn}|{detail.status}",
    ),
];
const DEFAULT_OTHER_GROUP: &str = "tag|{tag}";

/// The keys both alert outputs share: `group_by`, `window`, `max_per_minute`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AlertSettings {
    /// Template of the group key; `None`: the defaults above.
    pub group_by: Option<String>,
    pub window: Duration,
    /// 0: no cap.
    pub max_per_minute: u32,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            group_by: None,
            window: DEFAULT_WINDOW,
            max_per_minute: DEFAULT_MAX_PER_MINUTE,
        }
    }
}

impl AlertSettings {
    /// Reads `group_by`, `window` and `max_per_minute` of an output table.
    pub(crate) fn read(t: &mut Table<'_, '_>, d: &mut Diagnostics) -> AlertSettings {
        let path = t.path().to_string();
        let group_by = t.opt_string(d, "group_by");
        if let Some(g) = &group_by
            && let Err(e) = Template::parse(g)
        {
            d.error(t.value_span("group_by"), format!("{path}.group_by: {e}"));
        }
        let window = t.opt_duration(d, "window").unwrap_or(DEFAULT_WINDOW);
        if window.is_zero() {
            d.error(
                t.value_span("window"),
                format!("{path}.window: must be greater than zero"),
            );
        }
        let max_per_minute = t
            .opt_u64(d, "max_per_minute")
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(DEFAULT_MAX_PER_MINUTE);
        AlertSettings {
            group_by,
            window,
            max_per_minute,
        }
    }
}

/// What decides a record's group.
#[derive(Debug)]
enum GroupBy {
    Template(Template),
    Defaults {
        by_type: Vec<(&'static str, Template)>,
        other: Template,
    },
}

/// Where a group stands.
#[derive(Clone, Copy, Debug)]
struct GroupState {
    /// Records of the group after this go to a lead again.
    window_end: Instant,
    /// Records sent (or in the batch being finished) since the lead, the lead included.
    total: u64,
    /// When the lead went out.
    first_at: SystemTime,
}

/// The grouping state of one alert output, shared by its sink and its batch builders.
#[derive(Debug)]
pub(crate) struct Grouping {
    group_by: GroupBy,
    window: Duration,
    groups: Mutex<HashMap<Arc<str>, GroupState>>,
    rate: RateLimit,
}

/// Whether a batch is a group's first message or a follow-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Lead,
    FollowUp,
}

impl Grouping {
    /// Parses `group_by`.
    pub(crate) fn new(settings: &AlertSettings) -> Result<Grouping, TemplateError> {
        let group_by = match &settings.group_by {
            Some(g) => GroupBy::Template(Template::parse(g)?),
            None => GroupBy::Defaults {
                by_type: DEFAULT_GROUPS
                    .iter()
                    .map(|(k, t)| Template::parse(t).map(|t| (*k, t)))
                    .collect::<Result<_, _>>()?,
                other: Template::parse(DEFAULT_OTHER_GROUP)?,
            },
        };
        Ok(Grouping {
            group_by,
            window: settings.window.max(Duration::from_millis(1)),
            groups: Mutex::new(HashMap::new()),
            rate: RateLimit::new(settings.max_per_minute),
        })
    }

    /// The group key of `record`.
    pub(crate) fn group_of(&self, record: &Record) -> Arc<str> {
        let t = match &self.group_by {
            GroupBy::Template(t) => t,
            GroupBy::Defaults { by_type, other } => {
                let kind = record.get("detail-type").and_then(|v| v.as_str());
                by_type
                    .iter()
                    .find(|(k, _)| Some(*k) == kind)
                    .map_or(other, |(_, t)| t)
            }
        };
        Arc::from(t.render_to_string(record, Dynamic::default()))
    }

    /// A fresh batch for `group`: a lead when the group is cold (and the group's window
    /// starts now), else a follow-up due when the window ends.
    pub(crate) fn new_batch(self: &Arc<Self>, group: &Arc<str>) -> AlertBuilder {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let hot = groups.get(group).filter(|g| g.window_end > now).copied();
        let (kind, due) = match hot {
            Some(g) => (Kind::FollowUp, g.window_end),
            None => {
                if groups.len() >= MAX_GROUPS {
                    groups.retain(|_, g| g.window_end > now);
                }
                if groups.len() >= MAX_GROUPS
                    && let Some(oldest) = groups
                        .iter()
                        .min_by_key(|(_, g)| g.window_end)
                        .map(|(k, _)| k.clone())
                {
                    groups.remove(&oldest);
                }
                groups.insert(
                    group.clone(),
                    GroupState {
                        window_end: now + self.window,
                        total: 0,
                        first_at: SystemTime::now(),
                    },
                );
                (Kind::Lead, now)
            }
        };
        let flush_at = SystemTime::now() + due.saturating_duration_since(now);
        AlertBuilder {
            grouping: self.clone(),
            group: group.clone(),
            kind,
            flush_at,
            count: 0,
            samples: Vec::new(),
            bytes: 0,
        }
    }

    /// Waits until one more message fits under `max_per_minute`, and counts it.
    pub(crate) async fn permit(&self) {
        self.rate.acquire().await
    }
}

/// Collects one message's records: one for a lead, any number for a follow-up (of which
/// the first [`SAMPLES`] are kept to show; the others stay only in the core's batch).
pub(crate) struct AlertBuilder {
    grouping: Arc<Grouping>,
    group: Arc<str>,
    kind: Kind,
    flush_at: SystemTime,
    count: usize,
    samples: Vec<Record>,
    bytes: usize,
}

/// One message to send: a group's lead or a follow-up.
#[derive(Debug)]
pub(crate) struct AlertBatch {
    pub kind: Kind,
    pub group: Arc<str>,
    /// Records this message stands for.
    pub count: usize,
    /// Records of the group since its lead, this message's included.
    pub total: u64,
    /// When the group's lead went out.
    pub first_at: SystemTime,
    /// The lead record, or the first few of a follow-up.
    pub samples: Vec<Record>,
    /// The group's window.
    pub window: Duration,
}

impl BatchBuilder for AlertBuilder {
    type Batch = AlertBatch;

    fn push(&mut self, record: &Record) -> Push {
        if self.kind == Kind::Lead && self.count >= 1 {
            return Push::Full;
        }
        self.count += 1;
        if self.samples.len() < SAMPLES {
            self.bytes += record.approx_size();
            self.samples.push(record.clone());
        }
        Push::Added
    }

    fn len(&self) -> usize {
        self.count
    }

    /// The records shown: what the message's size depends on.
    fn bytes(&self) -> usize {
        self.bytes
    }

    fn flush_at(&self) -> Option<SystemTime> {
        Some(self.flush_at)
    }

    /// Counts the message's records into its group and, for a follow-up, starts the next
    /// window (a crash loop that goes on gets one follow-up per window).
    fn finish(self) -> AlertBatch {
        let now = Instant::now();
        let mut groups = self.grouping.groups.lock();
        let state = groups.entry(self.group.clone()).or_insert(GroupState {
            window_end: now,
            total: 0,
            first_at: SystemTime::now(),
        });
        state.total += self.count as u64;
        if self.kind == Kind::FollowUp {
            state.window_end = state.window_end.max(now + self.grouping.window);
        }
        AlertBatch {
            kind: self.kind,
            group: self.group,
            count: self.count,
            total: state.total,
            first_at: state.first_at,
            samples: self.samples,
            window: self.grouping.window,
        }
    }
}

/// At most `per_minute` permits in any 60 s (a sliding window of the permits' times).
#[derive(Debug)]
struct RateLimit {
    per_minute: u32,
    sent: Mutex<VecDeque<Instant>>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl RateLimit {
    fn new(per_minute: u32) -> Self {
        RateLimit {
            per_minute,
            sent: Mutex::new(VecDeque::new()),
        }
    }

    async fn acquire(&self) {
        if self.per_minute == 0 {
            return;
        }
        let mut logged = false;
        loop {
            let wait = {
                let now = Instant::now();
                let mut sent = self.sent.lock();
                while sent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= MINUTE)
                {
                    sent.pop_front();
                }
                if sent.len() < self.per_minute as usize {
                    sent.push_back(now);
                    return;
                }
                sent.front().map_or(Duration::ZERO, |t| {
                    (*t + MINUTE).saturating_duration_since(now)
                })
            };
            if !logged {
                logged = true;
                tracing::info!(
                    per_minute = self.per_minute,
                    "alert output at max_per_minute: the next message waits {wait:?}"
                );
            }
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stopped(group: &str, task: &str) -> Record {
        let serde_json::Value::Object(m) = json!({
            "detail-type": "ECS Task State Change",
            "detail": {"clusterArn": "arn:aws:ecs:us-east-1:1:cluster/prod", "group": group,
                       "stopCode": "EssentialContainerExited", "taskArn": task}
        }) else {
            unreachable!()
        };
        Record::new("t", 0, m)
    }

    fn grouping(window: Duration) -> Arc<Grouping> {
        Arc::new(
            Grouping::new(&AlertSettings {
                window,
                ..AlertSettings::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn default_groups_by_cluster_group_and_stop_code() {
        let g = grouping(DEFAULT_WINDOW);
        assert_eq!(
            &*g.group_of(&stopped("service:web", "a")),
            "task|prod|service:web|EssentialContainerExited"
        );
        assert_eq!(
            g.group_of(&stopped("service:web", "a")),
            g.group_of(&stopped("service:web", "b"))
        );
        assert_ne!(
            g.group_of(&stopped("service:web", "a")),
            g.group_of(&stopped("service:api", "a"))
        );
        let other = Record::new("app-firelens-1", 0, Default::default());
        assert_eq!(&*g.group_of(&other), "tag|app-firelens-1");
    }

    #[test]
    fn group_by_template_decides_the_group() {
        let g = Grouping::new(&AlertSettings {
            group_by: Some("{detail.clusterArn|arn[-1] ?? resources[0]|arn[-2]}".into()),
            ..AlertSettings::default()
        })
        .unwrap();
        // Every service of one cluster is one group.
        assert_eq!(&*g.group_of(&stopped("service:web", "a")), "prod");
        assert_eq!(
            g.group_of(&stopped("service:web", "a")),
            g.group_of(&stopped("service:api", "b"))
        );
        assert!(
            Grouping::new(&AlertSettings {
                group_by: Some("{a|nope}".into()),
                ..AlertSettings::default()
            })
            .is_err()
        );
    }

    /// The first record goes alone and at once; the rest of the window folds into one
    /// follow-up that knows the total; a group that cooled down leads again.
    #[tokio::test(start_paused = true)]
    async fn lead_then_one_follow_up_per_window() {
        let g = grouping(Duration::from_secs(60));
        let r = stopped("service:web", "a");
        let key = g.group_of(&r);
        let mut lead = g.new_batch(&key);
        assert!(lead.flush_at().unwrap() <= SystemTime::now());
        assert_eq!(lead.push(&r), Push::Added);
        assert_eq!(lead.push(&r), Push::Full);
        let lead = lead.finish();
        assert_eq!((lead.kind, lead.count, lead.total), (Kind::Lead, 1, 1));

        let mut follow = g.new_batch(&key);
        let due = follow.flush_at().unwrap();
        assert!(due > SystemTime::now() + Duration::from_secs(59), "{due:?}");
        for _ in 0..199 {
            assert_eq!(follow.push(&r), Push::Added);
        }
        assert_eq!(follow.len(), 199);
        tokio::time::advance(Duration::from_secs(60)).await;
        let follow = follow.finish();
        assert_eq!(
            (
                follow.kind,
                follow.count,
                follow.total,
                follow.samples.len()
            ),
            (Kind::FollowUp, 199, 200, SAMPLES)
        );
        // Finishing the follow-up opened the next window: still a follow-up.
        tokio::time::advance(Duration::from_secs(30)).await;
        let next = g.new_batch(&key);
        assert_eq!(next.kind, Kind::FollowUp);
        drop(next);
        // A whole window without records: the group leads again, counting from 1.
        tokio::time::advance(Duration::from_secs(31)).await;
        let mut again = g.new_batch(&key);
        assert_eq!(again.kind, Kind::Lead);
        again.push(&r);
        assert_eq!(again.finish().total, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_per_minute_makes_messages_wait() {
        let rate = RateLimit::new(2);
        let start = Instant::now();
        rate.acquire().await;
        rate.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        rate.acquire().await;
        assert!(start.elapsed() >= MINUTE, "{:?}", start.elapsed());
        let unlimited = RateLimit::new(0);
        for _ in 0..1000 {
            unlimited.acquire().await;
        }
    }
}
