//! `worker serve`: consumes jobs from RabbitMQ, one slot per device, and
//! runs them with the engine on a blocking thread so the async runtime
//! (and with it the AMQP heartbeats) never stalls.
//!
//! Delivery handling, in order:
//! 1. An unreadable message or invalid spec is dead-lettered with its reason.
//! 2. A job already succeeded or cancelled is acknowledged and skipped.
//! 3. The job's lease (Redis `SET NX PX`, renewed while it runs) must be
//!    free or held by a worker whose heartbeat has expired; a live holder
//!    means the job already runs elsewhere, so this delivery is dropped.
//! 4. The run's files go to `sweeps/<sweep>/jobs/<job>/attempt-<n>-<worker>/`; the
//!    job becomes `succeeded` (recording that folder) only after every file
//!    is stored, and the message is acknowledged only after that.
//! 5. Failures follow [`common::queue::disposition`]: permanent ones fail at
//!    once, transient ones go to the delay queue, crashes count towards the
//!    queue's delivery limit.
//!
//! Cancellation (a Redis flag) and shutdown stop training at the next batch;
//! on shutdown the job is handed back to the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use common::artifacts::job_prefix;
use common::config::Services;
use common::job::{DeviceClass, JobKind, JobMessage};
use common::queue::{disposition, Disposition, Outcome, Topology};
use common::state::{Event, JobState};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use services::artifacts::Artifacts;
use services::broker::Broker;
use services::state::{now_ms, StateStore, WorkerInfo};
use tokio::sync::watch;

use common::summary::EpochRecord;

use crate::engine::error::JobError;
use crate::engine::pipeline;
use crate::engine::train::Progress;
use crate::engine::trained::RunIds;

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Devices, one job slot each: `cpu`, or `cuda:0,cuda:1`.
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    /// This worker's id (default: host name and process id).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Seconds a job's lease lasts without renewal.
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// Seconds between heartbeats (the worker record lives three times that).
    #[arg(long, default_value_t = 10)]
    pub heartbeat_secs: u64,
    /// Attempts of a job that fails transiently before it is dead-lettered.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Deliveries of a job that keeps crashing its worker before RabbitMQ dead-letters it.
    #[arg(long, default_value_t = 3)]
    pub delivery_limit: i64,
    /// First retry delay in seconds (doubles per attempt).
    #[arg(long, default_value_t = 30)]
    pub retry_delay_secs: u64,
    /// CPU threads for tensor kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Environment variables specs may use as `${VAR}` besides `*_DIR`
    /// and `*_PATH` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub spec_env: Vec<String>,
}

/// Everything a slot needs.
struct Ctx {
    args: ServeArgs,
    worker_id: String,
    broker: Arc<Broker>,
    state: StateStore,
    artifacts: Artifacts,
    shutdown: watch::Receiver<bool>,
    /// Jobs this worker runs now (reported by the heartbeat).
    current: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// Runs until `shutdown` turns true; reconnects after broker failures.
pub async fn serve(
    args: ServeArgs,
    services: Services,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let worker_id = args.worker_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let s3 = services
        .s3
        .as_ref()
        .context("no artifact store: set AWS_BUCKET (and AWS_ENDPOINT for MinIO)")?;
    let artifacts = Artifacts::s3(s3)?;
    let state = StateStore::connect(services.redis_url.expose(), &services.namespace).await?;
    let slots: Vec<(String, DeviceClass)> = args
        .devices
        .split(',')
        .map(|d| {
            let d = d.trim().to_string();
            let class = if d.starts_with("cuda") {
                DeviceClass::Gpu
            } else {
                DeviceClass::Cpu
            };
            (d, class)
        })
        .collect();
    let info = WorkerInfo {
        id: worker_id.clone(),
        host: std::env::var("HOSTNAME").unwrap_or_default(),
        devices: args.devices.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        jobs: String::new(),
        heartbeat_ms: 0,
    };
    let current: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    let hb_current = current.clone();
    let hb_state = state.clone();
    let hb_every = Duration::from_secs(args.heartbeat_secs.max(1));
    let mut hb_shutdown = shutdown.clone();
    let heartbeat = tokio::spawn(async move {
        loop {
            let mut info = info.clone();
            if let Ok(c) = hb_current.lock() {
                info.jobs = c.iter().cloned().collect::<Vec<_>>().join(",");
            }
            if let Err(e) = hb_state.heartbeat(&info, hb_every * 3).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(hb_every) => {}
                _ = hb_shutdown.changed() => break,
            }
        }
    });
    while !*shutdown.borrow() {
        let connect = || {
            Broker::connect(
                services.amqp_url.expose(),
                Topology::new(&services.namespace),
                args.delivery_limit,
            )
        };
        let mut stop = shutdown.clone();
        let broker = tokio::select! {
            b = connect.retry(backoff()).notify(|e, wait| {
                tracing::warn!(error = %e, "cannot reach RabbitMQ; retrying in {wait:?}");
            }) => Arc::new(b?),
            _ = stop.changed() => break,
        };
        tracing::info!(worker = %worker_id, devices = %args.devices, "serving");
        let ctx = Arc::new(Ctx {
            args: args.clone(),
            worker_id: worker_id.clone(),
            broker,
            state: state.clone(),
            artifacts: artifacts.clone(),
            shutdown: shutdown.clone(),
            current: current.clone(),
        });
        let mut tasks = Vec::new();
        for (i, (device, class)) in slots.iter().enumerate() {
            let ctx = ctx.clone();
            let device = device.clone();
            let class = *class;
            tasks.push(tokio::spawn(
                async move { slot(ctx, i, device, class).await },
            ));
        }
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "slot stopped; reconnecting"),
                Err(e) => tracing::error!(error = %e, "slot panicked; reconnecting"),
            }
        }
    }
    heartbeat.abort();
    Ok(())
}

async fn slot(
    ctx: Arc<Ctx>,
    index: usize,
    device: String,
    class: DeviceClass,
) -> anyhow::Result<()> {
    let tag = format!("{}-slot{index}", ctx.worker_id);
    let (_channel, mut consumer) = ctx.broker.consume(class, &tag).await?;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            _ = shutdown.changed() => return Ok(()),
        };
        match delivery {
            Some(Ok(d)) => handle(&ctx, &device, class, d).await?,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("consumer closed"),
        }
        if *ctx.shutdown.borrow() {
            return Ok(());
        }
    }
}

/// Waits until the lease is ours, or returns false when a live worker holds it.
async fn take_lease(ctx: &Ctx, job: &str) -> anyhow::Result<bool> {
    let ttl = Duration::from_secs(ctx.args.lease_secs);
    // Longer than a worker record lives without heartbeats (3 periods).
    let patience = Duration::from_secs(ctx.args.heartbeat_secs * 6 + 2);
    let started = std::time::Instant::now();
    loop {
        if ctx.state.acquire_lease(job, &ctx.worker_id, ttl).await? {
            return Ok(true);
        }
        let holder = ctx.state.lease_holder(job).await?;
        if holder.as_deref() == Some(ctx.worker_id.as_str()) {
            return Ok(true);
        }
        let alive = ctx
            .state
            .workers()
            .await?
            .iter()
            .any(|w| Some(&w.id) == holder.as_ref());
        if !alive {
            // The holder died: its lease is stale. Take it over.
            if let Some(h) = &holder {
                ctx.state.release_lease(job, h).await?;
            }
            continue;
        }
        if started.elapsed() > patience {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits between tries of a service that is out of reach: 1 s doubling to
/// 30 s, for as long as it takes.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
}

/// What a delivery comes to before any training.
enum Admission {
    /// Already finished, held by a live worker, or cancelled: acknowledged
    /// without running.
    Settled,
    /// Ours to run, as this attempt (the job is `running`, the lease ours).
    Run { attempt: u32 },
}

/// [`admit`], retried with backoff (1 s doubling to 30 s) while Redis is
/// unreachable, the delivery kept unacknowledged: dropping the channel
/// instead would requeue the message and count a delivery toward the
/// broker's dead-letter limit. `None` when the worker shuts down meanwhile.
async fn admit_while_reachable(
    ctx: &Ctx,
    msg: &JobMessage,
    device: &str,
    delivered_attempt: u32,
) -> anyhow::Result<Option<Admission>> {
    let mut stop = ctx.shutdown.clone();
    tokio::select! {
        a = (|| admit(ctx, msg, device, delivered_attempt))
            .retry(backoff())
            .when(redis_unreachable)
            .notify(|e, wait| {
                tracing::warn!(job = %msg.job_id, error = %e, "Redis unreachable before the job starts; retrying in {wait:?}");
            }) => a.map(Some),
        _ = stop.changed() => Ok(None),
    }
}

/// Whether an error is Redis being out of reach (as opposed to a refusal).
fn redis_unreachable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<services::state::StateError>(),
        Some(services::state::StateError::Redis(_))
    )
}

/// Registers the job from its message, skips it when finished, held by a
/// live worker or cancelled, else takes the lease and records the start.
/// Each step can be repeated: registration and the lease are no-ops the
/// second time, and `Start` is allowed from `running`.
async fn admit(
    ctx: &Ctx,
    msg: &JobMessage,
    device: &str,
    delivered_attempt: u32,
) -> anyhow::Result<Admission> {
    let job = &msg.job_id;
    ctx.state
        .register_job(&msg.sweep, job, &[("variant", msg.variant.to_string())])
        .await?;
    if let Some(JobState::Succeeded | JobState::Cancelled) = ctx.state.state(job).await? {
        tracing::info!(%job, "already finished; skipping this delivery");
        return Ok(Admission::Settled);
    }
    if !take_lease(ctx, job).await? {
        tracing::info!(%job, "a live worker holds this job; dropping the duplicate delivery");
        return Ok(Admission::Settled);
    }
    if ctx.state.cancel_requested(job).await? {
        ctx.state.transition(job, Event::Cancel, &[]).await.ok();
        ctx.state.release_lease(job, &ctx.worker_id).await?;
        return Ok(Admission::Settled);
    }
    let attempt = msg.attempt.max(delivered_attempt);
    ctx.state
        .transition(
            job,
            Event::Start,
            &[
                ("worker", ctx.worker_id.clone()),
                ("device", device.to_string()),
                ("attempt", attempt.to_string()),
                ("started_at", now_ms().to_string()),
                ("error", String::new()),
            ],
        )
        .await?;
    ctx.state
        .event(
            &msg.sweep,
            &[
                ("job", job.clone()),
                ("state", "running".into()),
                ("worker", ctx.worker_id.clone()),
            ],
        )
        .await?;
    Ok(Admission::Run { attempt })
}

async fn handle(ctx: &Ctx, device: &str, class: DeviceClass, d: Delivery) -> anyhow::Result<()> {
    let msg = match JobMessage::decode(&d.data) {
        Ok(m) => m,
        Err(e) => {
            // A message that does not decode is not trusted to name a job:
            // it goes to the dead letters with its reason and records
            // nothing (it could name any job, another sweep's included).
            let reason = format!("rejected by worker {}: {e}", ctx.worker_id);
            tracing::warn!(%reason, "dead-lettering a message");
            ctx.broker.dead_letter(&d.data, &reason).await?;
            d.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    let job = msg.job_id.clone();
    let delivered_attempt =
        services::broker::header(&d.properties, services::broker::ATTEMPT_HEADER)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
    let attempt = match admit_while_reachable(ctx, &msg, device, delivered_attempt).await? {
        // Shutting down: the delivery goes back to the queue with the channel.
        None => return Ok(()),
        Some(Admission::Settled) => {
            d.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
        Some(Admission::Run { attempt }) => attempt,
    };

    if let Ok(mut c) = ctx.current.lock() {
        c.insert(job.clone());
    }
    let outcome = run_job(ctx, device, &msg, attempt).await;
    if let Ok(mut c) = ctx.current.lock() {
        c.remove(&job);
    }
    let (o, artifacts) = match outcome {
        Ok(folder) => (Outcome::Succeeded, Some(folder)),
        Err(RunFailure::Stopped) if *ctx.shutdown.borrow() => {
            // Hand the job back: another worker (or this one, restarted) runs it.
            ctx.state
                .transition(
                    &job,
                    Event::Requeue,
                    &[("error", "worker shut down".into())],
                )
                .await
                .ok();
            ctx.state.release_lease(&job, &ctx.worker_id).await?;
            d.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await?;
            return Ok(());
        }
        Err(RunFailure::Stopped) => (Outcome::Cancelled, None),
        Err(RunFailure::Permanent(e)) => (Outcome::Permanent(e), None),
        Err(RunFailure::Transient(e)) => (Outcome::Transient(e), None),
    };
    let disp = disposition(
        &o,
        attempt,
        ctx.args.max_attempts,
        Duration::from_secs(ctx.args.retry_delay_secs),
        Duration::from_secs(3600),
    );
    let finished = now_ms().to_string();
    match (&o, &disp) {
        (Outcome::Succeeded, _) => {
            let folder = artifacts.unwrap_or_default();
            ctx.state
                .transition(
                    &job,
                    Event::Succeed,
                    &[("finished_at", finished), ("artifacts", folder)],
                )
                .await
                .ok();
        }
        (Outcome::Cancelled, _) => {
            ctx.state
                .transition(&job, Event::Cancel, &[("finished_at", finished)])
                .await
                .ok();
            ctx.state.clear_cancel(&job).await?;
        }
        (Outcome::Permanent(e), _) => {
            ctx.state
                .transition(
                    &job,
                    Event::Fail,
                    &[("finished_at", finished), ("error", e.clone())],
                )
                .await
                .ok();
        }
        (Outcome::Transient(e), Disposition::RetryAfter(delay)) => {
            let mut next = msg.clone();
            next.attempt = attempt + 1;
            ctx.broker
                .retry_later(class, &next.encode(), attempt + 1, *delay)
                .await?;
            ctx.state
                .transition(
                    &job,
                    Event::Requeue,
                    &[(
                        "error",
                        format!("attempt {attempt}: {e}; retrying in {delay:?}"),
                    )],
                )
                .await
                .ok();
        }
        (_, Disposition::DeadLetter(reason)) => {
            ctx.broker.dead_letter(&d.data, reason).await?;
            ctx.state
                .transition(
                    &job,
                    Event::DeadLetter,
                    &[("finished_at", finished), ("error", reason.clone())],
                )
                .await
                .ok();
        }
        _ => {}
    }
    let state_now = ctx
        .state
        .state(&job)
        .await?
        .map(services::state::state_name)
        .unwrap_or("?");
    ctx.state
        .event(
            &msg.sweep,
            &[("job", job.clone()), ("state", state_now.to_string())],
        )
        .await?;
    ctx.state.release_lease(&job, &ctx.worker_id).await?;
    let acked = d.ack(BasicAckOptions::default()).await?;
    if !acked {
        tracing::warn!(%job, "the broker no longer knew this delivery (channel closed); its outcome is recorded");
    }
    Ok(())
}

enum RunFailure {
    Stopped,
    Permanent(String),
    Transient(String),
}

/// Sends progress to Redis from the training thread, and tells it to stop.
struct Reporter {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<(&'static str, String)>>,
    stop: Arc<AtomicBool>,
    last_step_ms: u64,
}

impl Progress for Reporter {
    fn start_epoch(&mut self, epoch: usize, steps: usize) {
        let _ = self.tx.send(vec![
            ("epoch", epoch.to_string()),
            ("steps", steps.to_string()),
            ("step", "0".into()),
        ]);
    }
    fn step(&mut self, _epoch: usize, step: usize, loss: f64) {
        let now = now_ms();
        if now - self.last_step_ms >= 2000 {
            self.last_step_ms = now;
            let _ = self.tx.send(vec![
                ("step", step.to_string()),
                ("loss", format!("{loss:.4}")),
            ]);
        }
    }
    fn end_epoch(&mut self, r: &EpochRecord) {
        let _ = self.tx.send(vec![
            ("epoch", r.epoch.to_string()),
            ("val_accuracy", format!("{:.4}", r.val_accuracy)),
            ("val_macro_f1", format!("{:.4}", r.val_macro_f1)),
            ("train_loss", format!("{:.4}", r.train_loss)),
            ("dendrites", r.dendrites.to_string()),
            ("epoch_done", "1".into()),
        ]);
    }
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

async fn run_job(
    ctx: &Ctx,
    device: &str,
    msg: &JobMessage,
    attempt: u32,
) -> Result<String, RunFailure> {
    if let JobKind::Validate { source, split } = &msg.kind {
        return validate_job(ctx, device, msg, attempt, source, *split).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(&'static str, String)>>();
    // Progress writer, lease renewal and cancel / shutdown watch.
    let job = msg.job_id.clone();
    let sweep = msg.sweep.clone();
    let state = ctx.state.clone();
    let worker = ctx.worker_id.clone();
    let lease = Duration::from_secs(ctx.args.lease_secs);
    let stop2 = stop.clone();
    let mut shutdown = ctx.shutdown.clone();
    let watcher = tokio::spawn(async move {
        let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(500)));
        loop {
            tokio::select! {
                fields = rx.recv() => {
                    let Some(fields) = fields else { break };
                    let epoch_done = fields.iter().any(|(k, _)| *k == "epoch_done");
                    let f: Vec<(&str, String)> = fields.into_iter().filter(|(k, _)| *k != "epoch_done").collect();
                    let _ = state.set_fields(&job, &f).await;
                    if epoch_done {
                        let mut ev = vec![("job", job.clone())];
                        ev.extend(f.iter().map(|(k, v)| (*k, v.clone())));
                        let _ = state.event(&sweep, &ev).await;
                    }
                }
                _ = tick.tick() => {
                    if !matches!(state.renew_lease(&job, &worker, lease).await, Ok(true)) {
                        tracing::warn!(%job, "lease lost");
                    }
                    if matches!(state.cancel_requested(&job).await, Ok(true)) {
                        stop2.store(true, Ordering::Relaxed);
                    }
                }
                _ = shutdown.changed() => stop2.store(true, Ordering::Relaxed),
            }
        }
    });
    let spec = msg.spec.clone();
    let sweep_name = msg.sweep.clone();
    let job_id = msg.job_id.clone();
    let hash = msg.config_hash.clone();
    let device_name = device.to_string();
    let reporter = Reporter {
        tx,
        stop: stop.clone(),
        last_step_ms: 0,
    };
    let result = tokio::task::spawn_blocking(move || {
        let mut reporter = reporter;
        let device =
            crate::parse_device(&device_name).map_err(|e| JobError::Spec(e.to_string()))?;
        let ids = RunIds {
            sweep: &sweep_name,
            job_id: &job_id,
            config_hash: &hash,
        };
        pipeline::run(&spec, &ids, &device, &mut reporter)
    })
    .await;
    watcher.abort();
    let out = match result {
        Err(join) => {
            let what = if join.is_panic() {
                "training panicked"
            } else {
                "training thread failed"
            };
            return Err(RunFailure::Transient(format!("{what}: {join}")));
        }
        Ok(Err(JobError::Stopped)) => return Err(RunFailure::Stopped),
        Ok(Err(e)) if e.is_permanent() => return Err(RunFailure::Permanent(e.to_string())),
        Ok(Err(e)) => return Err(RunFailure::Transient(e.to_string())),
        Ok(Ok(out)) => out,
    };
    // Unique per attempt and worker: a rerun after a crash never mixes
    // its files with what the crashed worker may have left.
    let folder = format!(
        "{}/attempt-{attempt}-{}",
        job_prefix(&msg.sweep, &msg.job_id),
        common::artifacts::sanitize(&ctx.worker_id)
    );
    let mut files = out.files;
    let manifest = serde_json::json!({
        "job_id": msg.job_id,
        "attempt": attempt,
        "worker": ctx.worker_id,
        "files": files.iter().map(|(n, b)| serde_json::json!({"name": n, "bytes": b.len()})).collect::<Vec<_>>(),
    });
    files.push((
        common::artifacts::files::MANIFEST_JSON.into(),
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    ));
    ctx.artifacts
        .put_all(&folder, &files)
        .await
        .map_err(|e| RunFailure::Transient(e.to_string()))?;
    Ok(folder)
}

/// The artifact key of the trained parameters a validate job names: a job
/// id (of a succeeded job) or `s3://<bucket>/<key>` in the configured bucket.
async fn trained_key(ctx: &Ctx, source: &str) -> Result<String, RunFailure> {
    if let Some(rest) = source.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| RunFailure::Permanent(format!("bad S3 URI {source:?}")))?;
        if !ctx
            .artifacts
            .location
            .starts_with(&format!("s3://{bucket}/"))
        {
            return Err(RunFailure::Permanent(format!(
                "{source} is not in this worker's bucket ({})",
                ctx.artifacts.location
            )));
        }
        let prefix = ctx
            .artifacts
            .location
            .trim_start_matches(&format!("s3://{bucket}/"))
            .to_string();
        let key = if prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&format!("{prefix}/")).unwrap_or(key)
        };
        return Ok(key.to_string());
    }
    let h = ctx
        .state
        .job(source)
        .await
        .map_err(|e| RunFailure::Transient(e.to_string()))?;
    match (h.get("state").map(String::as_str), h.get("artifacts")) {
        (Some("succeeded"), Some(folder)) => Ok(format!(
            "{folder}/{}",
            common::artifacts::files::TRAINED_SAFETENSORS
        )),
        (Some(st), _) => Err(RunFailure::Permanent(format!(
            "job {source} is {st}, not succeeded"
        ))),
        (None, _) => Err(RunFailure::Permanent(format!("no job {source:?}"))),
    }
}

async fn validate_job(
    ctx: &Ctx,
    device: &str,
    msg: &JobMessage,
    attempt: u32,
    source: &str,
    split: common::job::EvalSplit,
) -> Result<String, RunFailure> {
    let key = trained_key(ctx, source).await?;
    let bytes = ctx.artifacts.get(&key).await.map_err(|e| match e {
        services::artifacts::ArtifactError::Store(object_store::Error::NotFound { .. }) => {
            RunFailure::Permanent(format!("{key} not found"))
        }
        e => RunFailure::Transient(e.to_string()),
    })?;
    let tmp = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile()
        .map_err(|e| RunFailure::Transient(e.to_string()))?;
    std::fs::write(tmp.path(), &bytes).map_err(|e| RunFailure::Transient(e.to_string()))?;
    let spec = msg.spec.clone();
    let path = tmp.path().to_path_buf();
    let (source, job_id, device_name) =
        (source.to_string(), msg.job_id.clone(), device.to_string());
    let result = tokio::task::spawn_blocking(move || {
        let device =
            crate::parse_device(&device_name).map_err(|e| JobError::Spec(e.to_string()))?;
        pipeline::validate(&spec, &path, &source, split, &job_id, &device)
    })
    .await;
    drop(tmp);
    let (summary, files) = match result {
        Err(join) => {
            return Err(RunFailure::Transient(format!(
                "validation thread failed: {join}"
            )))
        }
        Ok(Err(e)) if e.is_permanent() => return Err(RunFailure::Permanent(e.to_string())),
        Ok(Err(e)) => return Err(RunFailure::Transient(e.to_string())),
        Ok(Ok(v)) => v,
    };
    let _ = ctx
        .state
        .set_fields(
            &msg.job_id,
            &[
                ("val_accuracy", format!("{:.4}", summary.scores.accuracy)),
                ("val_macro_f1", format!("{:.4}", summary.scores.macro_f1)),
            ],
        )
        .await;
    let folder = format!(
        "{}/attempt-{attempt}-{}",
        job_prefix(&msg.sweep, &msg.job_id),
        common::artifacts::sanitize(&ctx.worker_id)
    );
    ctx.artifacts
        .put_all(&folder, &files)
        .await
        .map_err(|e| RunFailure::Transient(e.to_string()))?;
    Ok(folder)
}
