//! The reconciler: brings Redis and the broker back in agreement after
//! faults that left a job with no message anywhere. One pass
//! ([`Reconciler::pass`]) republishes the stored message of `running` jobs
//! whose lease has expired and of `queued` jobs never confirmed as
//! published, after draining the dead-letter queue, recording each job found
//! there `dead` with the broker's reason (a letter that names no job is
//! kept in Redis). Republishing twice is harmless: a start is fenced, and a
//! finished job's extra message is dropped. Workers run a pass every
//! minute (one worker at a time, under a Redis lock); `producer reconcile`
//! runs one on demand.

use std::time::Duration;

use common::job::{DeviceClass, JobMessage};
use common::state::JobState;
use lapin::options::{BasicAckOptions, BasicGetOptions};

use crate::broker::{dead_reason, Broker, BrokerError};
use crate::state::{JobRecord, StateError, StateStore};
use common::clock::now_ms;

/// Reconciler failures.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
}

/// What a pass did, job by job.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `running` with no live lease: message published again.
    pub republished: Vec<String>,
    /// `queued` but never confirmed on the queue: message published.
    pub published: Vec<String>,
    /// `queued`, published, but received by no worker for
    /// [`LOST_AFTER`] grace periods with its work queue empty: published again.
    pub lost: Vec<String>,
    /// Found in the dead letters and recorded `dead`, with the reason.
    pub dead: Vec<(String, String)>,
    /// Dead letters naming no job, kept in Redis.
    pub unreadable: usize,
}

/// Why a job's message is published again (see [`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Republish {
    /// `running` with its lease expired, its attempt silent for a grace
    /// period and no copy of its message on the way.
    Running,
    /// `queued`, registered a grace period ago, never confirmed published.
    Unpublished,
    /// Published (`queued`, or `running` with its lease expired and a copy
    /// republished), yet no worker has received it for [`LOST_AFTER`]
    /// grace periods (its message was lost with a Redis write, a delay
    /// queue or a dead letter it never reached): if its work queue is empty.
    Lost,
}

/// Grace periods after which a published copy nobody received counts as lost.
pub const LOST_AFTER: u64 = 3;

/// What a pass does with job `r` at `now` (pure). A running job is
/// republished at most once until a worker receives that copy (or it is
/// [`LOST_AFTER`] grace periods old): a copy waiting behind busy workers is
/// not copied again at every pass.
pub fn decide(r: &JobRecord, now: u64, grace: u64) -> Option<Republish> {
    let age = |t: u64| now.saturating_sub(t);
    // A published copy that no worker has received yet.
    let unseen_copy = r.published_at > r.seen_at;
    match r.state {
        Some(JobState::Running) if age(r.started_at.max(r.seen_at)) > grace => {
            if !unseen_copy {
                Some(Republish::Running)
            } else if age(r.published_at) > LOST_AFTER * grace {
                Some(Republish::Lost)
            } else {
                None
            }
        }
        Some(JobState::Queued) if r.published_at == 0 && age(r.queued_at) > grace => {
            Some(Republish::Unpublished)
        }
        Some(JobState::Queued)
            if r.published_at != 0
                && age(r.published_at.max(r.seen_at).max(r.queued_at)) > LOST_AFTER * grace =>
        {
            Some(Republish::Lost)
        }
        _ => None,
    }
}

/// A reconciler over one namespace.
pub struct Reconciler<'a> {
    pub state: &'a StateStore,
    pub broker: &'a Broker,
    /// How long a job may look stuck before it is republished: longer than
    /// a lease (a live holder renews it well within) and than the time a
    /// producer takes between registering and publishing.
    pub grace: Duration,
}

impl Reconciler<'_> {
    /// One pass: the dead letters first (a job found there is not
    /// republished), then every job.
    pub async fn pass(&self) -> Result<Report, ReconcileError> {
        let mut report = Report::default();
        self.drain_dead(&mut report).await?;
        let now = now_ms();
        let grace = self.grace.as_millis() as u64;
        let mut waiting = std::collections::HashMap::new();
        for sweep in self.state.sweeps().await? {
            for id in self.state.sweep_jobs(&sweep).await? {
                let Some(r) = self.state.record(&id).await? else {
                    continue;
                };
                let Some(why) = decide(&r, now, grace) else {
                    continue;
                };
                // A live attempt renews its lease: its job is not stuck.
                if r.state == Some(JobState::Running) && self.state.leased(&id).await? {
                    continue;
                }
                let list = match why {
                    Republish::Running => &mut report.republished,
                    Republish::Unpublished => &mut report.published,
                    // A copy may still wait on the work queue (a backlog):
                    // only an empty queue says it is lost.
                    Republish::Lost if self.queue_empty(&r, &mut waiting).await? => {
                        &mut report.lost
                    }
                    Republish::Lost => continue,
                };
                if self.republish(&r).await? {
                    list.push(id);
                }
            }
        }
        Ok(report)
    }

    /// Whether the work queue of the job's device class holds no message
    /// ready for delivery (asked once per class and pass).
    async fn queue_empty(
        &self,
        r: &JobRecord,
        waiting: &mut std::collections::HashMap<String, u32>,
    ) -> Result<bool, ReconcileError> {
        let class = DeviceClass::parse(&r.device_class).unwrap_or(DeviceClass::Cpu);
        let queue = self.broker.topology.jobs_queue(class);
        if let Some(n) = waiting.get(&queue) {
            return Ok(*n == 0);
        }
        let (ready, _) = self.broker.queue_counts(&queue).await?;
        waiting.insert(queue, ready);
        Ok(ready == 0)
    }

    /// Publishes a job's stored message again (now), then records when.
    /// `false` when the job has no stored message to send.
    pub async fn republish(&self, r: &JobRecord) -> Result<bool, ReconcileError> {
        let Ok(msg) = JobMessage::decode(r.message.as_bytes()) else {
            tracing::warn!(job = %r.id, "no readable stored message; submit its sweep again");
            return Ok(false);
        };
        let class = DeviceClass::parse(&r.device_class).unwrap_or(msg.device);
        self.broker
            .publish_body(class, r.message.as_bytes(), r.attempt)
            .await?;
        self.state.mark_published(&r.id).await?;
        tracing::info!(job = %r.id, state = ?r.state, "published the job's message again");
        Ok(true)
    }

    /// Empties the dead-letter queue into Redis.
    async fn drain_dead(&self, report: &mut Report) -> Result<(), ReconcileError> {
        let ch = self.broker.connection().create_channel().await?;
        let queue = self.broker.topology.dead_queue();
        while let Some(m) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await?
        {
            let d = m.delivery;
            let reason = dead_reason(&d.properties);
            match JobMessage::decode(&d.data) {
                Err(e) => match self
                    .lenient_dead(&d.data, &format!("{reason}: {e}"))
                    .await?
                {
                    Some((job, true)) => report.dead.push((job, reason)),
                    // A live attempt holds it, or it finished: its own record stands.
                    Some((_, false)) => {}
                    None => {
                        self.state
                            .keep_dead_letter(&format!("{reason}: {e}"), &d.data)
                            .await?;
                        report.unreadable += 1;
                    }
                },
                Ok(msg) => {
                    if self.record_dead(&msg, &reason).await? {
                        report.dead.push((msg.job_id.clone(), reason));
                    }
                }
            }
            d.ack(BasicAckOptions::default()).await?;
        }
        if let Err(e) = ch.close(200, "ok".into()).await {
            tracing::debug!(error = %e, "closing a channel (it closes with its connection anyway)");
        }
        Ok(())
    }

    /// Records a dead-lettered job `dead` unless it is finished or a live
    /// attempt holds it (that attempt settles it). `true` when recorded.
    /// A dead letter that does not decode as this version's message (a
    /// newer or older format, an invalid spec) but names a known job by
    /// `job_id`: that job is recorded dead (if queued or abandoned), so it
    /// is not left waiting for a message that is gone. The job and whether
    /// it was recorded dead; `None` when the letter names no known job.
    async fn lenient_dead(
        &self,
        body: &[u8],
        reason: &str,
    ) -> Result<Option<(String, bool)>, ReconcileError> {
        let Some(job) = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("job_id")?.as_str().map(str::to_string))
        else {
            return Ok(None);
        };
        let Some(r) = self.state.record(&job).await? else {
            return Ok(None);
        };
        let dead = self.mark_dead(&job, &r.sweep, reason).await?;
        Ok(Some((job, dead)))
    }

    /// Records `job` dead with `reason` unless an attempt holds it or it has
    /// finished (one step), with its event: whether it was.
    async fn mark_dead(
        &self,
        job: &str,
        sweep: &str,
        reason: &str,
    ) -> Result<bool, ReconcileError> {
        let fields = [
            ("finished_at", now_ms().to_string()),
            ("error", reason.to_string()),
        ];
        let dead = self.state.dead_letter(job, &fields).await?;
        if dead {
            self.state
                .event(
                    sweep,
                    &[
                        ("job", job.to_string()),
                        ("state", JobState::Dead.to_string()),
                    ],
                )
                .await?;
        }
        Ok(dead)
    }

    async fn record_dead(&self, msg: &JobMessage, reason: &str) -> Result<bool, ReconcileError> {
        let job = &msg.job_id;
        self.state.register_message(msg, &[]).await?;
        // One step: a running attempt with a live lease (or one that starts
        // meanwhile) records its own outcome under its fence.
        self.mark_dead(job, &msg.sweep, reason).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, started: u64, published: u64, seen: u64) -> JobRecord {
        JobRecord {
            state: Some(state),
            started_at: started,
            published_at: published,
            seen_at: seen,
            queued_at: 1,
            ..JobRecord::default()
        }
    }

    /// A stuck running job gets one copy, then none while that copy waits
    /// unreceived (however many passes), then one more once the copy is
    /// [`LOST_AFTER`] grace periods old; a copy received (and parked or
    /// started) counts as activity.
    #[test]
    fn one_copy_per_stuck_job_until_it_is_received_or_lost() {
        let g = 15_000;
        let stuck = job(JobState::Running, 1_000, 1_000, 1_000);
        assert_eq!(decide(&stuck, 1_000 + g, g), None);
        assert_eq!(decide(&stuck, 2_000 + g, g), Some(Republish::Running));
        // Republished at t = 20 000 (published_at moves, seen_at does not).
        let copied = JobRecord {
            published_at: 20_000,
            ..stuck.clone()
        };
        for pass in 1..=9 {
            assert_eq!(
                decide(&copied, 20_000 + pass * 5_000, g),
                None,
                "pass {pass}"
            );
        }
        assert_eq!(
            decide(&copied, 20_001 + LOST_AFTER * g, g),
            Some(Republish::Lost)
        );
        // Received at t = 30 000: silent again only a grace period later.
        let seen = JobRecord {
            seen_at: 30_000,
            ..copied
        };
        assert_eq!(decide(&seen, 30_000 + g, g), None);
        assert_eq!(decide(&seen, 30_001 + g, g), Some(Republish::Running));
    }

    /// Queued jobs: never published -> published after a grace period; published
    /// but received by no one for LOST_AFTER grace periods -> lost (checked
    /// against the queue by the pass); finished jobs are left alone.
    #[test]
    fn queued_jobs_unpublished_or_lost() {
        let g = 10_000;
        let never = JobRecord {
            published_at: 0,
            ..job(JobState::Queued, 0, 0, 0)
        };
        // Registered at t = 1.
        assert_eq!(decide(&never, 2 + g, g), Some(Republish::Unpublished));
        assert_eq!(decide(&never, 1 + g, g), None);
        let published = job(JobState::Queued, 0, 5_000, 0);
        assert_eq!(decide(&published, 5_000 + LOST_AFTER * g, g), None);
        assert_eq!(
            decide(&published, 5_001 + LOST_AFTER * g, g),
            Some(Republish::Lost)
        );
        for s in [
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Dead,
        ] {
            assert_eq!(decide(&job(s, 0, 0, 0), u64::MAX / 2, g), None, "{s:?}");
        }
    }
}
