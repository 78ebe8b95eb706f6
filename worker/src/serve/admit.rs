//! Admission of a delivery: decode it, register the job from its message,
//! and start the attempt (lease, generation, `running`) in one Redis
//! script. Redis being out of reach is waited out with backoff while the
//! delivery stays unacknowledged: dropping the channel instead would
//! requeue the message and count a delivery toward the broker's
//! dead-letter limit.

use backon::Retryable;
use common::clock::now_ms;
use common::job::{JobMessage, MessageError, MESSAGE_VERSION};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use services::broker::Broker;
use services::state::{Start, StateError};

use super::{backoff, best_effort, Ctx};

/// What a delivery comes to before any training.
pub(super) enum Admission {
    /// Acknowledged already (finished job, unreadable message) or left to
    /// the broker (shutdown).
    Done,
    /// Another attempt holds the job: park the delivery.
    Park { msg: JobMessage, attempt: u32 },
    /// Ours to run (the job is `running`, the lease ours).
    Run {
        msg: JobMessage,
        attempt: u32,
        generation: u64,
    },
}

pub(super) async fn admit(
    ctx: &Ctx,
    broker: &Broker,
    d: &Delivery,
    device: &str,
    delivered_attempt: u32,
    token: &str,
) -> anyhow::Result<Admission> {
    let msg = match JobMessage::decode(&d.data) {
        Ok(m) => m,
        // A newer format (a rolling update under way): parked for a worker
        // that reads it, not dead-lettered.
        Err(MessageError::Version { found }) if found > MESSAGE_VERSION => {
            tracing::warn!(
                found,
                "a message of a newer version; parking it for a worker that reads it"
            );
            let park = ctx.args.policy().park;
            broker
                .publish_later(
                    super::device_class(device),
                    &d.data,
                    delivered_attempt,
                    park,
                )
                .await?;
            d.ack(BasicAckOptions::default()).await?;
            return Ok(Admission::Done);
        }
        Err(e) => {
            // A message that does not decode is not trusted to name a job:
            // it goes to the dead letters with its reason and records
            // nothing (it could name any job, another sweep's included).
            let reason = format!("rejected by worker {}: {e}", ctx.worker_id);
            tracing::warn!(%reason, "dead-lettering a message");
            broker.dead_letter(&d.data, &reason).await?;
            d.ack(BasicAckOptions::default()).await?;
            return Ok(Admission::Done);
        }
    };
    let attempt = msg.attempt.max(delivered_attempt);
    let mut stop = ctx.shutdown.clone();
    let started = tokio::select! {
        s = (|| start(ctx, &msg, device, attempt, token))
            .retry(backoff().without_max_times())
            .when(|e| matches!(e, StateError::Redis(_)))
            .notify(|e, wait| {
                tracing::warn!(job = %msg.job_id, error = %e, "Redis unreachable before the job starts; retrying in {wait:?}");
            }) => s?,
        // Shutting down: the delivery goes back with the channel.
        _ = stop.wait_for(|s| *s) => return Ok(Admission::Done),
    };
    let job = &msg.job_id;
    match started.clone() {
        Start::Started { generation } => {
            tracing::info!(%job, attempt, generation, "starting");
            // Best effort: the event stream is for watching, not for state.
            let sent = ctx
                .state
                .event(
                    &msg.sweep,
                    &[
                        ("job", job.clone()),
                        ("state", common::state::JobState::Running.to_string()),
                        ("worker", ctx.worker_id.clone()),
                        ("generation", generation.to_string()),
                    ],
                )
                .await;
            best_effort("recording an event", job, sent);
            Ok(Admission::Run {
                msg,
                attempt,
                generation,
            })
        }
        Start::Held(holder) => {
            tracing::info!(%job, %holder, "another attempt holds this job; parking the delivery");
            Ok(Admission::Park { msg, attempt })
        }
        Start::Finished(state) => {
            tracing::info!(%job, ?state, "already finished; dropping this delivery");
            d.ack(BasicAckOptions::default()).await?;
            Ok(Admission::Done)
        }
        Start::Abandoned(_) | Start::Cancelled => {
            // Recorded by the start script itself: say so, and drop it.
            let state = if started == Start::Cancelled {
                "cancelled"
            } else {
                "dead"
            };
            tracing::warn!(%job, ?started, "not started: recorded {state}");
            let sent = ctx
                .state
                .event(&msg.sweep, &[("job", job.clone()), ("state", state.into())])
                .await;
            best_effort("recording an event", job, sent);
            d.ack(BasicAckOptions::default()).await?;
            Ok(Admission::Done)
        }
    }
}

/// Registers the job from its message (a no-op when known) and starts it.
async fn start(
    ctx: &Ctx,
    msg: &JobMessage,
    device: &str,
    attempt: u32,
    token: &str,
) -> Result<Start, StateError> {
    let job = &msg.job_id;
    // Received now: published, and seen by a worker, at the same instant.
    let now = now_ms().to_string();
    ctx.state
        .register_message(msg, &[("published_at", now.clone()), ("seen_at", now)])
        .await?;
    ctx.state
        .start(
            job,
            token,
            ctx.args.lease(),
            ctx.services.delivery_limit as u32,
            &[
                ("worker", ctx.worker_id.clone()),
                ("instance", ctx.instance.clone()),
                ("device", device.to_string()),
                ("attempt", attempt.to_string()),
                ("started_at", now_ms().to_string()),
                // This copy is received: a copy the reconciler publishes
                // later is new (see services::reconcile::decide).
                ("seen_at", now_ms().to_string()),
                ("error", String::new()),
                ("step", "0".into()),
            ],
        )
        .await
}
