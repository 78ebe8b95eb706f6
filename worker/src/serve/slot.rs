//! One job slot: its own broker connection and consumer, a delivery at a
//! time (admit -> execute -> settle), restarted on its own with backoff
//! when its connection or channel fails.

use std::sync::Arc;

use backon::BackoffBuilder;
use common::clock::now_ms;
use common::settle::{park, settle, Attempt};
use futures::StreamExt;
use lapin::message::Delivery;
use services::broker::Broker;

use super::admit::{admit, Admission};
use super::execute::execute;
use super::settle::{carry_out, Settling};
use super::{backoff, device_class, Ctx};

/// Runs the slot until shutdown, restarting it after failures.
pub(super) async fn supervise(ctx: Arc<Ctx>, index: usize, device: String) {
    let mut waits = backoff().without_max_times().build();
    while !ctx.stopping() {
        match run(&ctx, index, &device).await {
            Ok(()) => return,
            Err(e) => {
                let wait = waits.next().unwrap_or_default();
                tracing::warn!(slot = index, error = %e, "slot stopped; restarting in {wait:?}");
                let mut stop = ctx.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Consumes until shutdown (`Ok`) or a broker failure (`Err`).
async fn run(ctx: &Ctx, index: usize, device: &str) -> anyhow::Result<()> {
    let Some(broker) = ctx.connect().await else {
        return Ok(());
    };
    let class = device_class(device);
    let tag = format!("{}-slot{index}", ctx.worker_id);
    let (_channel, mut consumer) = broker.consume(class, &tag).await?;
    tracing::info!(slot = index, %device, "consuming");
    let mut stop = ctx.shutdown.clone();
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        match delivery {
            Some(Ok(d)) => handle(ctx, &broker, device, index, d).await?,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("consumer closed"),
        }
        if !broker.connection().status().connected() {
            anyhow::bail!("broker connection lost");
        }
    }
}

/// One delivery, from admission to acknowledgement.
async fn handle(
    ctx: &Ctx,
    broker: &Broker,
    device: &str,
    index: usize,
    d: Delivery,
) -> anyhow::Result<()> {
    let class = device_class(device);
    let delivered_attempt =
        services::broker::header(&d.properties, services::broker::ATTEMPT_HEADER)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
    let token = format!(
        "{}/slot{index}/{:016x}",
        ctx.worker_id,
        rand::random::<u64>()
    );
    let admission = admit(ctx, broker, &d, device, delivered_attempt, &token).await?;
    let (msg, attempt, decision, run) = match admission {
        Admission::Done => return Ok(()),
        Admission::Park { msg, attempt } => {
            let decision = park(attempt, &ctx.args.policy());
            (
                msg,
                Attempt {
                    attempt,
                    generation: 0,
                },
                decision,
                None,
            )
        }
        Admission::Run {
            msg,
            attempt,
            generation,
        } => {
            if let Ok(mut c) = ctx.current.lock() {
                c.insert(msg.job_id.clone());
            }
            let at = Attempt {
                attempt,
                generation,
            };
            let run = execute(ctx, device, &msg, at, &token).await;
            if let Ok(mut c) = ctx.current.lock() {
                c.remove(&msg.job_id);
            }
            tracing::info!(job = %msg.job_id, end = ?run.end, "run ended");
            let decision = settle(&run.end, at, &ctx.args.policy(), now_ms());
            (msg, at, decision, Some(run))
        }
    };
    // The run's lease is renewed until the outcome is settled; its tracker
    // run is closed after that, whatever the settle did.
    let settled = carry_out(
        ctx,
        broker,
        Settling {
            delivery: &d,
            msg: &msg,
            class,
            at: attempt,
            token: &token,
        },
        decision,
    )
    .await;
    if let Some(run) = run {
        run.close().await;
    }
    settled
}
