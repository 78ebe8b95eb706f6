//! Broker topology as data (pure): versioned queue and exchange names and
//! their arguments, and the retry / dead-letter decision for a finished
//! delivery. The AMQP client only declares what this module describes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::job::DeviceClass;

/// Bumped when the topology or message format changes incompatibly.
pub const TOPOLOGY_VERSION: u32 = 1;

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

    /// The delay queue of a device class: messages wait out their TTL and
    /// dead-letter back to the jobs exchange.
    pub fn retry_queue(&self, class: DeviceClass) -> String {
        format!(
            "{}.retry.v{TOPOLOGY_VERSION}.{}",
            self.prefix,
            class.as_str()
        )
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
        ])
    }

    /// Arguments of a delay queue for `class`.
    pub fn retry_queue_args(&self, class: DeviceClass) -> BTreeMap<String, Arg> {
        BTreeMap::from([
            ("x-queue-type".into(), Arg::Str("quorum".into())),
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
        ])
    }
}

/// How a run ended, as the worker classifies it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    /// Retrying cannot help (bad spec, missing weights or data).
    Permanent(String),
    /// May pass later (artifact store down, out of memory).
    Transient(String),
    /// The message cannot be read at all.
    Malformed(String),
    Cancelled,
}

/// What to do with the delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Ack,
    /// Ack, and republish to the delay queue with this TTL.
    RetryAfter(Duration),
    /// Reject without requeue (dead-letter) with this reason.
    DeadLetter(String),
}

/// Retry policy: transient failures are retried with exponential backoff
/// (`base * 2^(attempt-1)`, capped) up to `max_attempts`, then dead-lettered;
/// permanent and malformed ones are never retried.
pub fn disposition(
    outcome: &Outcome,
    attempt: u32,
    max_attempts: u32,
    base: Duration,
    cap: Duration,
) -> Disposition {
    match outcome {
        Outcome::Succeeded | Outcome::Cancelled | Outcome::Permanent(_) => Disposition::Ack,
        Outcome::Malformed(reason) => {
            Disposition::DeadLetter(format!("malformed message: {reason}"))
        }
        Outcome::Transient(reason) if attempt >= max_attempts => {
            Disposition::DeadLetter(format!("gave up after {attempt} attempts: {reason}"))
        }
        Outcome::Transient(_) => {
            let factor = 1u32 << (attempt.saturating_sub(1)).min(16);
            Disposition::RetryAfter((base * factor).min(cap))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_versioned_and_prefixed() {
        let t = Topology::new("test-123");
        assert_eq!(t.jobs_queue(DeviceClass::Gpu), "test-123.jobs.v1.gpu");
        assert_eq!(t.retry_queue(DeviceClass::Cpu), "test-123.retry.v1.cpu");
        let args = t.jobs_queue_args(3);
        assert_eq!(args["x-queue-type"], Arg::Str("quorum".into()));
        assert_eq!(args["x-delivery-limit"], Arg::Int(3));
        assert_eq!(
            args["x-dead-letter-exchange"],
            Arg::Str("test-123.dead.v1".into())
        );
        let r = t.retry_queue_args(DeviceClass::Gpu);
        assert_eq!(r["x-dead-letter-exchange"], Arg::Str(t.jobs_exchange()));
        assert_eq!(r["x-dead-letter-routing-key"], Arg::Str("gpu".into()));
    }

    #[test]
    fn retry_policy() {
        let (b, c) = (Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(
            disposition(&Outcome::Succeeded, 1, 3, b, c),
            Disposition::Ack
        );
        assert_eq!(
            disposition(&Outcome::Permanent("x".into()), 1, 3, b, c),
            Disposition::Ack
        );
        assert_eq!(
            disposition(&Outcome::Transient("s3".into()), 1, 3, b, c),
            Disposition::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(
            disposition(&Outcome::Transient("s3".into()), 2, 3, b, c),
            Disposition::RetryAfter(Duration::from_secs(20))
        );
        assert!(
            matches!(disposition(&Outcome::Transient("s3".into()), 3, 3, b, c), Disposition::DeadLetter(r) if r.contains("3 attempts"))
        );
        assert_eq!(
            disposition(
                &Outcome::Transient("s3".into()),
                2,
                9,
                Duration::from_secs(50),
                c
            ),
            Disposition::RetryAfter(c)
        );
        assert!(
            matches!(disposition(&Outcome::Malformed("bad json".into()), 1, 3, b, c), Disposition::DeadLetter(r) if r.contains("bad json"))
        );
    }
}
