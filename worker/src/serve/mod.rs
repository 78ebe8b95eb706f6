//! `worker serve`: consumes jobs from RabbitMQ, one slot per device, and
//! runs them with the engine on a blocking thread so the async runtime
//! (and with it the AMQP heartbeats) never stalls.
//!
//! A delivery goes through three steps, one module each:
//! 1. [`admit`]: decode (an unreadable message is dead-lettered with its
//!    reason), register, and start the attempt in one Redis script that
//!    takes the lease with a per-delivery token and bumps the job's
//!    generation (the fence). A finished job is dropped; a job another
//!    attempt holds is parked in a delay queue, never acknowledged away.
//! 2. [`execute`]: train (or validate) while a watcher renews the lease as
//!    long as training makes progress, and stops the run when the lease is
//!    lost, the job is cancelled, its deadline passes or the worker shuts
//!    down; then store every file under
//!    `jobs/<job>/attempt-<n>-g<generation>-<worker>/`, from a [`spool`]
//!    on local disk (a retry after a long S3 outage uploads, not retrains).
//! 3. [`settle`]: carry out what [`common::settle::settle`] decides for
//!    the run's end: publish (retry, hand-back or park), record the
//!    transition fenced by the generation and re-read it, then acknowledge.
//!
//! Each slot has its own broker connection and is restarted on its own when
//! it fails; a reconciler task ([`services::reconcile`]) runs every
//! `--reconcile-secs` on one worker at a time.

mod admit;
mod execute;
pub mod metrics;
mod settle;
mod slot;
mod spool;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use common::config::Services;
use common::job::DeviceClass;
use common::queue::Topology;
use services::artifacts::Artifacts;
use services::broker::Broker;
use services::reconcile::Reconciler;
use services::state::{StateStore, WorkerInfo};
use tokio::sync::watch;

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Devices, one job slot each: `cpu`, or `cuda:0,cuda:1`.
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    /// This worker's id (default: host name, process id and a random
    /// suffix, so that a restarted container, whose process id repeats, is
    /// a new worker).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// The folder that keeps the artifacts when no bucket (`AWS_BUCKET`) is
    /// set; overrides `ARTIFACTS` (default `artifacts`).
    #[arg(long)]
    pub artifacts: Option<std::path::PathBuf>,
    /// Seconds a job's lease lasts without renewal.
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// Seconds between heartbeats (the worker record lives three times that).
    #[arg(long, default_value_t = 10)]
    pub heartbeat_secs: u64,
    /// Attempts of a job that fails transiently before it is recorded dead.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry delay in seconds (doubles per attempt).
    #[arg(long, default_value_t = 30)]
    pub retry_delay_secs: u64,
    /// Seconds a job may run in all before it is stopped and failed.
    #[arg(long, default_value_t = 48 * 3600)]
    pub deadline_secs: u64,
    /// Seconds without a training step after which the lease is no longer
    /// renewed (a hung step lets another worker take the job over).
    #[arg(long, default_value_t = 1800)]
    pub stall_secs: u64,
    /// Seconds between reconciler passes (0: none on this worker).
    #[arg(long, default_value_t = 60)]
    pub reconcile_secs: u64,
    /// Seconds a job may look stuck (running with no lease, queued never
    /// published) before the reconciler publishes its message again.
    #[arg(long, default_value_t = 300)]
    pub reconcile_grace_secs: u64,
    /// Where finished runs wait on local disk until their files are stored
    /// (default: the system's temporary folder).
    #[arg(long)]
    pub spool_dir: Option<std::path::PathBuf>,
    /// CPU threads for tensor kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Environment variables specs may use as `${VAR}` besides `*_DIR`
    /// and `*_PATH` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub spec_env: Vec<String>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g.
    /// `127.0.0.1:9464`; port 0 picks a free one, logged at start).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub tracking: crate::mlflow::TrackingArgs,
}

impl ServeArgs {
    fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(1))
    }

    /// The retry and parking policy of this worker.
    fn policy(&self) -> common::settle::Policy {
        common::settle::Policy {
            max_attempts: self.max_attempts.max(1),
            retry_base: Duration::from_secs(self.retry_delay_secs),
            retry_cap: Duration::from_secs(3600),
            // Long enough for a holder's lease to expire if it died.
            park: self.lease() + Duration::from_secs(1),
        }
    }
}

/// Everything a slot needs.
struct Ctx {
    args: ServeArgs,
    worker_id: String,
    /// This process, recorded with each start: a takeover by the process
    /// that held the job is no crash, whatever Redis remembers of its
    /// heartbeat.
    instance: String,
    services: Services,
    state: StateStore,
    artifacts: Artifacts,
    spool: spool::Spool,
    shutdown: watch::Receiver<bool>,
    /// Notified when a job's thread hangs: the worker hands back what else
    /// runs and ends ([`Hung`]).
    hung: Arc<tokio::sync::Notify>,
    /// Jobs this worker runs now (reported by the heartbeat).
    current: Mutex<BTreeSet<String>>,
    /// The MLflow sink, when one is configured.
    tracking: Option<crate::mlflow::Sink>,
    metrics: metrics::Metrics,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A broker connection, retried with backoff until it comes or the
    /// worker shuts down (`None`).
    async fn connect(&self) -> Option<Broker> {
        let connect = || {
            Broker::connect(
                self.services.amqp_url.expose(),
                Topology::new(&self.services.namespace),
                self.services.delivery_limit,
            )
        };
        let mut stop = self.shutdown.clone();
        tokio::select! {
            b = connect.retry(backoff().without_max_times()).notify(|e, wait| {
                tracing::warn!(error = %e, "cannot reach RabbitMQ; retrying in {wait:?}");
            }) => b.ok(),
            _ = stop.wait_for(|s| *s) => None,
        }
    }
}

/// This machine's name: `HOSTNAME` when the shell exports it, else the
/// kernel's (`/proc/sys/kernel/hostname`), else `worker`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// Waits between tries of a service that is out of reach: 1 s doubling to
/// 30 s.
/// Logs (at debug level) the failure of a call the outcome does not
/// depend on: an event for watchers, a progress field, a lease released
/// early (it expires on its own), a pending cancel cleared.
fn best_effort<T, E: std::fmt::Display>(what: &str, job: &str, r: Result<T, E>) {
    if let Err(e) = r {
        tracing::debug!(%job, error = %e, "{what} failed (best effort; the outcome does not depend on it)");
    }
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
}

fn device_class(device: &str) -> DeviceClass {
    if device.starts_with("cuda") {
        DeviceClass::Gpu
    } else {
        DeviceClass::Cpu
    }
}

/// `serve` ended because a job's thread hung: the caller must end the
/// process (the thread cannot be stopped, and a runtime waits for it).
#[derive(Debug, thiserror::Error)]
#[error("{0}: the worker ends so that its supervisor restarts it")]
pub struct Hung(pub String);

/// How long the other slots get to hand their jobs back when one hung.
const HUNG_HAND_BACK: Duration = Duration::from_secs(60);

/// Runs until `shutdown` turns true, or a job's thread hangs ([`Hung`]).
pub async fn serve(
    args: ServeArgs,
    services: Services,
    external: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The slots stop on SIGTERM and when a job hangs.
    let (stop, shutdown) = watch::channel(false);
    let stop = Arc::new(stop);
    let forward = {
        let (stop, mut external) = (stop.clone(), external.clone());
        tokio::spawn(async move {
            if external.wait_for(|s| *s).await.is_ok() {
                let _ = stop.send(true);
            }
        })
    };
    let worker_id = args.worker_id.clone().unwrap_or_else(|| {
        let host = host_name();
        format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        )
    });
    let artifacts = Artifacts::open(&services)
        .with_context(|| format!("cannot open the artifact store {}", services.artifacts_dir))?;
    tracing::info!(store = %artifacts.location, "artifacts");
    let state = StateStore::connect(services.redis_url.expose(), &services.namespace).await?;
    let spool_base = args
        .spool_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("fpb-worker-spool"));
    let spool = spool::Spool::new(&spool_base, &services.namespace);
    spool.prune(SPOOL_KEEP);
    let tracking = crate::mlflow::Sink::from_args(&args.tracking)?;
    let devices: Vec<String> = args
        .devices
        .split(',')
        .map(|d| d.trim().to_string())
        .collect();
    let metrics = metrics::Metrics::new(&devices, artifacts.retries.clone());
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let bound = listener.local_addr()?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
        tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));
    }
    let ctx = Arc::new(Ctx {
        tracking,
        metrics,
        spool,
        args: args.clone(),
        worker_id: worker_id.clone(),
        instance: format!("{:016x}", rand::random::<u64>()),
        services,
        state,
        artifacts,
        shutdown,
        hung: Arc::default(),
        current: Mutex::default(),
    });
    let heartbeat = tokio::spawn(heartbeat(ctx.clone()));
    let pruner = tokio::spawn(prune_spool(ctx.clone()));
    let reconciler = tokio::spawn(reconcile(ctx.clone()));
    tracing::info!(worker = %worker_id, devices = %args.devices, "serving");
    let slots: Vec<_> = args
        .devices
        .split(',')
        .enumerate()
        .map(|(i, d)| tokio::spawn(slot::supervise(ctx.clone(), i, d.trim().to_string())))
        .collect();
    let running =
        |slots: &[tokio::task::JoinHandle<()>]| slots.iter().filter(|h| !h.is_finished()).count();
    let hung = loop {
        if running(&slots) == 0 {
            break None;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = ctx.hung.notified() => {
                let _ = stop.send(true);
                // The other slots hand their jobs back and end; the hung
                // one never does.
                let waited = Instant::now();
                while running(&slots) > 1 && waited.elapsed() < HUNG_HAND_BACK {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                break Some(ctx.metrics.liveness().unwrap_or_else(|| "hung".into()));
            }
        }
    };
    for s in slots.into_iter().filter(|h| h.is_finished()) {
        if let Err(e) = s.await {
            tracing::error!(error = %e, "slot supervisor failed");
        }
    }
    heartbeat.abort();
    reconciler.abort();
    pruner.abort();
    forward.abort();
    match hung {
        Some(why) => {
            // Gone: its hung job's takeover is a crash.
            if let Err(e) = ctx.state.forget_worker(&ctx.worker_id).await {
                tracing::warn!(error = %e, "cannot remove this worker's record");
            }
            Err(Hung(why).into())
        }
        None => Ok(()),
    }
}

/// How long a spooled run waits for its upload before it is removed (its
/// job ran elsewhere), and how often the spool is pruned while serving.
const SPOOL_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
const SPOOL_PRUNE_EVERY: Duration = Duration::from_secs(3600);

async fn prune_spool(ctx: Arc<Ctx>) {
    let mut stop = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SPOOL_PRUNE_EVERY) => {}
            _ = stop.changed() => return,
        }
        let c = ctx.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || c.spool.prune(SPOOL_KEEP)).await {
            tracing::warn!(error = %e, "pruning the spool failed");
        }
    }
}

async fn heartbeat(ctx: Arc<Ctx>) {
    let every = Duration::from_secs(ctx.args.heartbeat_secs.max(1));
    let mut stop = ctx.shutdown.clone();
    loop {
        let jobs = ctx
            .current
            .lock()
            .map(|c| c.iter().cloned().collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let info = WorkerInfo {
            id: ctx.worker_id.clone(),
            host: host_name(),
            devices: ctx.args.devices.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            jobs,
            heartbeat_ms: 0,
        };
        if let Err(e) = ctx.state.heartbeat(&info, every * 3).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
}

/// A reconciler pass every `--reconcile-secs`, on one worker at a time.
async fn reconcile(ctx: Arc<Ctx>) {
    if ctx.args.reconcile_secs == 0 {
        return;
    }
    let every = Duration::from_secs(ctx.args.reconcile_secs);
    let mut stop = ctx.shutdown.clone();
    let mut broker: Option<Broker> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if !matches!(
            ctx.state
                .try_lock("reconciler", &ctx.worker_id, every)
                .await,
            Ok(true)
        ) {
            continue;
        }
        if broker
            .as_ref()
            .is_none_or(|b| !b.connection().status().connected())
        {
            broker = ctx.connect().await;
        }
        let Some(b) = &broker else { return };
        let r = Reconciler {
            state: &ctx.state,
            broker: b,
            grace: Duration::from_secs(ctx.args.reconcile_grace_secs).max(ctx.args.lease() * 2),
        };
        match r.pass().await {
            Ok(report) if report != Default::default() => {
                tracing::info!(?report, "reconciler pass")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
        }
    }
}
