//! Carrying out a [`Decision`] for one delivery, in the order that keeps a
//! job from being lost: publish (retry, hand-back or park), record the
//! transition fenced by the attempt's generation and read it back, then
//! acknowledge. Redis errors are retried with backoff while the delivery
//! stays unacknowledged. A transition refused because a later attempt
//! started (the fence) records nothing: the delivery is parked instead, so
//! it is never acknowledged away while the job is unfinished.

use backon::Retryable;
use common::job::{DeviceClass, JobMessage};
use common::settle::{
    park, publish_retry_wait, Attempt, Decision, Publish, Record, PUBLISH_TRIES,
    SHUTDOWN_RECORD_TIMEOUT,
};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use services::broker::Broker;
use services::state::StateError;

use super::{backoff, best_effort, Ctx};

/// The delivery being settled and what it is about.
pub(super) struct Settling<'a> {
    pub delivery: &'a Delivery,
    pub msg: &'a JobMessage,
    pub class: DeviceClass,
    pub at: Attempt,
    pub token: &'a str,
}

pub(super) async fn carry_out(
    ctx: &Ctx,
    broker: &Broker,
    s: Settling<'_>,
    decision: Decision,
) -> anyhow::Result<()> {
    let job = &s.msg.job_id;
    if let Some(p) = &decision.publish {
        if let Err(e) = publish(broker, &s, p).await {
            // The delivery cannot be moved: return it to the queue (this
            // counts toward the delivery limit, which is what it is for).
            tracing::warn!(%job, error = %e, "cannot publish; returning the delivery to the queue");
            best_effort(
                "releasing the lease",
                job,
                ctx.state.release_lease(job, s.token).await,
            );
            s.delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
            return Ok(());
        }
    }
    if let Some(r) = &decision.record {
        match record(ctx, &s, r).await {
            Ok(()) => {}
            Err(RecordError::State(StateError::Superseded { generation, .. })) => {
                tracing::warn!(%job, generation, "a later attempt owns the job; this one records nothing");
                if decision.publish.is_none() {
                    let parked = park(s.at.attempt, &ctx.args.policy());
                    if let Some(p) = &parked.publish {
                        publish(broker, &s, p).await?;
                    }
                }
            }
            Err(RecordError::State(StateError::Refused { from, .. })) => {
                tracing::warn!(%job, %from, event = ?r.event, "transition refused; the job's state stands");
            }
            Err(e) => {
                // Redis unreachable at shutdown, or it no longer knows the
                // job (restarted empty): the delivery goes back to the
                // broker with this slot's connection, closed here, so that
                // it is delivered again (and the job registered again from
                // it) instead of holding the slot's one unacked delivery.
                tracing::warn!(%job, error = %e, "cannot record the outcome; returning the delivery with the connection");
                if let Err(close) = broker
                    .connection()
                    .close(200, "outcome not recorded".into())
                    .await
                {
                    tracing::warn!(%job, error = %close, "closing the broker connection failed");
                }
                anyhow::bail!("job {job}: the outcome could not be recorded: {e}");
            }
        }
    }
    if decision.publish.is_some() && decision.record.is_none() {
        // A parked copy is on its way back: the reconciler waits for it.
        if let Err(e) = ctx.state.mark_published(job).await {
            tracing::warn!(%job, error = %e, "cannot stamp the parked copy's publish time");
        }
    }
    if decision.publish.is_some() || decision.record.is_some() {
        best_effort(
            "releasing the lease",
            job,
            ctx.state.release_lease(job, s.token).await,
        );
    }
    if let Some(Publish::Now { .. }) = decision.publish {
        tracing::info!(%job, "handed back to the queue");
    }
    match s.delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) | Err(_) => tracing::warn!(
            %job,
            "the broker no longer knew this delivery (its channel closed); the outcome is recorded in Redis"
        ),
    }
    Ok(())
}

/// Publishes what the decision says, retried a few times with backoff.
async fn publish(broker: &Broker, s: &Settling<'_>, p: &Publish) -> anyhow::Result<()> {
    let body = match p {
        Publish::Later { attempt, .. } => {
            let mut msg = s.msg.clone();
            msg.attempt = *attempt;
            msg.encode()
        }
        Publish::Now { .. } => s.delivery.data.clone(),
    };
    let send = || async {
        match p {
            Publish::Later { attempt, delay } => {
                broker.publish_later(s.class, &body, *attempt, *delay).await
            }
            Publish::Now { attempt } => broker.publish_body(s.class, &body, *attempt).await,
        }
    };
    send.retry((1..PUBLISH_TRIES).map(publish_retry_wait))
        .notify(|e, wait| {
            tracing::warn!(job = %s.msg.job_id, error = %e, "publish failed; retrying in {wait:?}");
        })
        .await?;
    Ok(())
}

/// Records the transition under the attempt's generation, retrying while
/// Redis is unreachable (until shutdown), and reads it back.
async fn record(ctx: &Ctx, s: &Settling<'_>, r: &Record) -> Result<(), RecordError> {
    let job = &s.msg.job_id;
    let write = || async {
        // A refusal may be our own earlier write whose reply was lost:
        // reading the job back tells.
        match ctx
            .state
            .transition_attempt(job, r.event, s.at.generation, s.token, &r.fields)
            .await
        {
            Ok(_) | Err(StateError::Refused { .. }) => {}
            Err(e) => return Err(e),
        }
        verify(ctx, s, r).await
    };
    let mut stop = ctx.shutdown.clone();
    let shutting_down = *stop.borrow();
    let retried = write
        .retry(backoff().without_max_times())
        .when(|e| matches!(e, StateError::Redis(_)))
        .notify(|e, wait| {
            tracing::warn!(%job, error = %e, "cannot record the outcome; retrying in {wait:?}");
        });
    if shutting_down {
        // Shutting down: a bounded wait, then the broker takes the delivery back.
        tokio::time::timeout(SHUTDOWN_RECORD_TIMEOUT, retried)
            .await
            .map_err(|_| RecordError::GaveUp)??;
    } else {
        tokio::select! {
            r = retried => r?,
            _ = stop.wait_for(|s| *s) => return Err(RecordError::GaveUp),
        }
    }
    if r.event == common::state::Event::Cancel {
        best_effort(
            "clearing the cancel request",
            job,
            ctx.state.clear_cancel(job).await,
        );
    }
    let state = common::state::next(common::state::JobState::Running, r.event)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".into());
    let sent = ctx
        .state
        .event(
            &s.msg.sweep,
            &[
                ("job", job.clone()),
                ("state", state),
                ("generation", s.at.generation.to_string()),
            ],
        )
        .await;
    best_effort("recording an event", job, sent);
    Ok(())
}

/// Why an outcome could not be recorded.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("Redis stayed unreachable until the worker shut down")]
    GaveUp,
}

/// Reads the job back: the transition must be there, under our generation
/// and our lease token (another attempt's success is not ours).
async fn verify(ctx: &Ctx, s: &Settling<'_>, r: &Record) -> Result<(), StateError> {
    let job = &s.msg.job_id;
    let want = common::state::next(common::state::JobState::Running, r.event).ok();
    let got = ctx.state.record(job).await?;
    match got {
        Some(g)
            if g.generation == s.at.generation && g.lease_token == s.token && g.state == want =>
        {
            Ok(())
        }
        Some(g) if g.generation != s.at.generation || g.lease_token != s.token => {
            Err(StateError::Superseded {
                job: job.clone(),
                generation: s.at.generation,
            })
        }
        other => Err(StateError::Refused {
            job: job.clone(),
            from: other
                .and_then(|g| g.state)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            event: r.event,
        }),
    }
}
