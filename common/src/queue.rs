//! Broker topology as data (pure): versioned queue and exchange names and
//! their arguments, with one delay queue per delay level. The AMQP client
//! only declares what this module describes; what happens to a finished
//! delivery is [`crate::settle`]'s.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::job::DeviceClass;

/// Bumped when the topology or message format changes incompatibly.
pub const TOPOLOGY_VERSION: u32 = 2;

/// A queue argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
}

/// Names of every exchange and queue, under a prefix (tests use unique ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Topology {
        Topology {
            prefix: prefix.to_string(),
        }
    }

    /// The direct exchange jobs are published to (routing key = device class).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs.v{TOPOLOGY_VERSION}", self.prefix)
    }

    /// The work queue of a device class.
    pub fn jobs_queue(&self, class: DeviceClass) -> String {
        format!(
            "{}.jobs.v{TOPOLOGY_VERSION}.{}",
            self.prefix,
            class.as_str()
        )
    }

    /// Where dead letters go, with their reason in a header.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead.v{TOPOLOGY_VERSION}", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead.v{TOPOLOGY_VERSION}", self.prefix)
    }

    /// The delay queue of a device class for one level of [`DELAY_LEVELS`]:
    /// its messages wait out the queue's TTL and dead-letter back to the
    /// jobs exchange. One queue per level, because a per-message TTL only
    /// expires at the head of a queue (a 60 s message would wait behind a
    /// 30 min one).
    pub fn delay_queue(&self, class: DeviceClass, level: Duration) -> String {
        format!(
            "{}.delay.v{TOPOLOGY_VERSION}.{}.{}s",
            self.prefix,
            class.as_str(),
            level.as_secs()
        )
    }

    /// Every delay queue of a class.
    pub fn delay_queues(&self, class: DeviceClass) -> Vec<String> {
        DELAY_LEVELS
            .iter()
            .map(|s| self.delay_queue(class, Duration::from_secs(*s)))
            .collect()
    }

    /// Arguments of a work queue: quorum (for `x-delivery-count`), a
    /// delivery limit after which a crashing job is dead-lettered.
    pub fn jobs_queue_args(&self, delivery_limit: i64) -> BTreeMap<String, Arg> {
        BTreeMap::from([
            ("x-queue-type".into(), Arg::Str("quorum".into())),
            ("x-delivery-limit".into(), Arg::Int(delivery_limit)),
            (
                "x-dead-letter-exchange".into(),
                Arg::Str(self.dead_exchange()),
            ),
            (
                "x-dead-letter-strategy".into(),
                Arg::Str("at-least-once".into()),
            ),
            ("x-overflow".into(), Arg::Str("reject-publish".into())),
            (
                "x-consumer-timeout".into(),
                Arg::Int(CONSUMER_TIMEOUT.as_millis() as i64),
            ),
        ])
    }

    /// Arguments of the delay queue of `class` for `level`: quorum with
    /// at-least-once dead-lettering, which needs `reject-publish` (a full
    /// queue refuses the publish, which the publisher confirm reports).
    pub fn delay_queue_args(&self, class: DeviceClass, level: Duration) -> BTreeMap<String, Arg> {
        BTreeMap::from([
            ("x-queue-type".into(), Arg::Str("quorum".into())),
            ("x-message-ttl".into(), Arg::Int(level.as_millis() as i64)),
            (
                "x-dead-letter-exchange".into(),
                Arg::Str(self.jobs_exchange()),
            ),
            (
                "x-dead-letter-routing-key".into(),
                Arg::Str(class.as_str().into()),
            ),
            (
                "x-dead-letter-strategy".into(),
                Arg::Str("at-least-once".into()),
            ),
            ("x-overflow".into(), Arg::Str("reject-publish".into())),
        ])
    }
}

/// How long a delivery may stay unacknowledged before the broker closes
/// its channel, set per work queue (RabbitMQ 3.12 and later read it; older
/// brokers use `consumer_timeout` in rabbitmq.conf). A job runs longer than
/// the 30 min default; a channel closed anyway is detected and the job
/// settled through Redis.
pub const CONSUMER_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Delay levels in seconds: a delay is rounded up to the next level (the
/// last one caps it).
pub const DELAY_LEVELS: [u64; 12] = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600];

/// The level a delay waits in: the shortest one at least as long.
pub fn delay_level(delay: Duration) -> Duration {
    let secs = DELAY_LEVELS
        .iter()
        .copied()
        .find(|l| Duration::from_secs(*l) >= delay)
        .unwrap_or(DELAY_LEVELS[DELAY_LEVELS.len() - 1]);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_versioned_and_prefixed() {
        let t = Topology::new("test-123");
        assert_eq!(t.jobs_queue(DeviceClass::Gpu), "test-123.jobs.v2.gpu");
        assert_eq!(
            t.delay_queue(DeviceClass::Cpu, Duration::from_secs(30)),
            "test-123.delay.v2.cpu.30s"
        );
        let args = t.jobs_queue_args(3);
        assert_eq!(args["x-queue-type"], Arg::Str("quorum".into()));
        assert_eq!(args["x-delivery-limit"], Arg::Int(3));
        assert_eq!(
            args["x-dead-letter-exchange"],
            Arg::Str("test-123.dead.v2".into())
        );
        let r = t.delay_queue_args(DeviceClass::Gpu, Duration::from_secs(5));
        assert_eq!(r["x-dead-letter-exchange"], Arg::Str(t.jobs_exchange()));
        assert_eq!(r["x-dead-letter-routing-key"], Arg::Str("gpu".into()));
        assert_eq!(r["x-message-ttl"], Arg::Int(5000));
        assert_eq!(r["x-overflow"], Arg::Str("reject-publish".into()));
        assert_eq!(t.delay_queues(DeviceClass::Cpu).len(), DELAY_LEVELS.len());
    }

    #[test]
    fn delays_round_up_to_a_level() {
        let s = Duration::from_secs;
        assert_eq!(delay_level(Duration::from_millis(1)), s(1));
        assert_eq!(delay_level(s(30)), s(30));
        assert_eq!(delay_level(s(31)), s(60));
        assert_eq!(delay_level(s(7200)), s(3600));
    }
}
