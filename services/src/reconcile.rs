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
use common::state::{Event, JobState};
use lapin::options::{BasicAckOptions, BasicGetOptions};

use crate::broker::{dead_reason, Broker, BrokerError};
use crate::state::{now_ms, JobRecord, StateError, StateStore};

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
    /// Found in the dead letters and recorded `dead`, with the reason.
    pub dead: Vec<(String, String)>,
    /// Dead letters naming no job, kept in Redis.
    pub unreadable: usize,
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
        for sweep in self.state.sweeps().await? {
            for id in self.state.sweep_jobs(&sweep).await? {
                let Some(r) = self.state.record(&id).await? else {
                    continue;
                };
                let stale = |t: u64| now.saturating_sub(t) > grace;
                let list = match r.state {
                    Some(JobState::Running)
                        if stale(r.started_at.max(r.published_at))
                            && !self.state.leased(&id).await? =>
                    {
                        &mut report.republished
                    }
                    Some(JobState::Queued) if r.published_at == 0 && stale(r.queued_at) => {
                        &mut report.published
                    }
                    _ => continue,
                };
                if self.republish(&r).await? {
                    list.push(id);
                }
            }
        }
        Ok(report)
    }

    /// Publishes a job's stored message again (now), then records when.
    /// `false` when the job has no stored message to send.
    pub async fn republish(&self, r: &JobRecord) -> Result<bool, ReconcileError> {
        let Ok(msg) = JobMessage::decode(r.message.as_bytes()) else {
            tracing::warn!(job = %r.id, "no readable stored message; submit its sweep again");
            return Ok(false);
        };
        let class = match r.device_class.as_str() {
            "cpu" => DeviceClass::Cpu,
            "gpu" => DeviceClass::Gpu,
            _ => msg.device,
        };
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
                Err(e) => {
                    self.state
                        .keep_dead_letter(&format!("{reason}: {e}"), &d.data)
                        .await?;
                    report.unreadable += 1;
                }
                Ok(msg) => {
                    if self.record_dead(&msg, &reason).await? {
                        report.dead.push((msg.job_id.clone(), reason));
                    }
                }
            }
            d.ack(BasicAckOptions::default()).await?;
        }
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// Records a dead-lettered job `dead` unless it is finished or a live
    /// attempt holds it (that attempt settles it). `true` when recorded.
    async fn record_dead(&self, msg: &JobMessage, reason: &str) -> Result<bool, ReconcileError> {
        let job = &msg.job_id;
        self.state.register_message(msg, &[]).await?;
        if self.state.leased(job).await? {
            return Ok(false);
        }
        match self
            .state
            .transition(
                job,
                Event::DeadLetter,
                &[
                    ("finished_at", now_ms().to_string()),
                    ("error", reason.to_string()),
                ],
            )
            .await
        {
            Ok(_) => {
                self.state
                    .event(
                        &msg.sweep,
                        &[("job", job.clone()), ("state", "dead".into())],
                    )
                    .await?;
                Ok(true)
            }
            Err(StateError::Refused { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
