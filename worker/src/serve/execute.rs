//! Running an admitted job: training (or validation) on a blocking thread,
//! a watcher beside it, then the upload of every file.
//!
//! The watcher renews the lease only while training makes progress (a hung
//! step stops renewing, so another worker can take the job over), and
//! stops the run when the lease is lost to a later attempt, the job is
//! cancelled, its deadline passes or the worker shuts down. It keeps
//! renewing through the upload.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::artifacts::{checkpoint_key, job_prefix};
use common::job::{JobKind, JobMessage};
use common::settle::{Attempt, RunEnd};
use common::summary::EpochRecord;
use services::state::now_ms;

use super::Ctx;
use crate::engine::error::JobError;
use crate::engine::pipeline;
use crate::engine::train::Progress;
use crate::engine::trained::RunIds;
use crate::tracking::{End, EpochSender, JobStart, JobTracker};

/// Why the watcher stopped a run (the first reason wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum StopReason {
    None = 0,
    Cancelled = 1,
    ShutDown = 2,
    LeaseLost = 3,
    Deadline = 4,
}

/// What the training thread and the watcher share.
struct Shared {
    stop: AtomicBool,
    reason: AtomicU8,
    /// When training last made progress (ms since the epoch).
    progress_ms: AtomicU64,
    /// Training is over (uploading): renew regardless of progress.
    uploading: AtomicBool,
}

impl Shared {
    fn stop(&self, why: StopReason) {
        let _ = self.reason.compare_exchange(
            StopReason::None as u8,
            why as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.stop.store(true, Ordering::SeqCst);
    }

    fn reason(&self) -> StopReason {
        match self.reason.load(Ordering::SeqCst) {
            1 => StopReason::Cancelled,
            2 => StopReason::ShutDown,
            3 => StopReason::LeaseLost,
            4 => StopReason::Deadline,
            _ => StopReason::None,
        }
    }
}

/// Sends progress to Redis from the training thread, and tells it to stop.
struct Reporter {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<(&'static str, String)>>,
    shared: Arc<Shared>,
    last_sent_ms: u64,
    tracked: Option<EpochSender>,
    metrics: super::metrics::Metrics,
    device: String,
    batch: u64,
    /// When the current epoch started, and its steps so far.
    epoch_started: Instant,
    epoch_steps: u64,
    checkpoints: Option<Checkpoints>,
}

/// Where a training job's checkpoints go: the spool at once, then S3 by
/// [`upload_checkpoints`] (the latest one; one still uploading when the
/// next comes is replaced).
struct Checkpoints {
    spool: super::spool::Spool,
    msg: JobMessage,
    latest: tokio::sync::watch::Sender<Option<bytes::Bytes>>,
}

impl Reporter {
    fn progressed(&self) {
        self.shared.progress_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl Shared {
    /// What the job's loops signal ([`crate::engine::beat`]): progress.
    fn heard(self: &Arc<Self>) -> impl Fn() + 'static {
        let shared = self.clone();
        move || shared.progress_ms.store(now_ms(), Ordering::Relaxed)
    }
}

impl Progress for Reporter {
    fn start_epoch(&mut self, epoch: usize, steps: usize) {
        self.progressed();
        self.epoch_started = Instant::now();
        self.epoch_steps = 0;
        let _ = self.tx.send(vec![
            ("epoch", epoch.to_string()),
            ("steps", steps.to_string()),
            ("step", "0".into()),
        ]);
    }
    fn step(&mut self, _epoch: usize, step: usize, loss: f64) {
        self.progressed();
        self.epoch_steps += 1;
        let secs = self.epoch_started.elapsed().as_secs_f64().max(1e-9);
        let rate = (self.epoch_steps * self.batch) as f64 / secs;
        self.metrics.step(&self.device, self.batch, rate);
        let now = now_ms();
        if now - self.last_sent_ms >= 2000 {
            self.last_sent_ms = now;
            let _ = self.tx.send(vec![
                ("step", step.to_string()),
                ("loss", format!("{loss:.4}")),
            ]);
        }
    }
    fn end_epoch(&mut self, r: &EpochRecord) {
        self.progressed();
        if let Some(t) = &self.tracked {
            t.send(r);
        }
        self.metrics.epoch(r.seconds);
        let _ = self.tx.send(vec![
            ("epoch", r.epoch.to_string()),
            ("val_accuracy", format!("{:.4}", r.val_accuracy)),
            ("val_macro_f1", format!("{:.4}", r.val_macro_f1)),
            ("train_loss", format!("{:.4}", r.train_loss)),
            ("dendrites", r.dendrites.to_string()),
            ("epoch_done", "1".into()),
        ]);
    }
    fn checkpoint(&mut self, epoch: usize, save: &mut dyn FnMut() -> candle_core::Result<Vec<u8>>) {
        let Some(c) = &self.checkpoints else {
            return;
        };
        let bytes = match save() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(job = %c.msg.job_id, epoch, error = %e, "cannot write a checkpoint");
                return;
            }
        };
        if let Err(e) = c.spool.save_checkpoint(&c.msg, &bytes) {
            tracing::warn!(job = %c.msg.job_id, epoch, error = %e, "cannot spool the checkpoint");
        }
        c.latest.send_replace(Some(bytes.into()));
        self.progressed();
    }
    fn should_stop(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }
}

/// How long a finished run waits for its last checkpoint's upload.
const CHECKPOINT_UPLOAD_WAIT: Duration = Duration::from_secs(60);

/// Uploads each checkpoint the training thread hands over, until it is done.
async fn upload_checkpoints(
    artifacts: services::artifacts::Artifacts,
    key: String,
    mut latest: tokio::sync::watch::Receiver<Option<bytes::Bytes>>,
) {
    while latest.changed().await.is_ok() {
        let Some(bytes) = latest.borrow_and_update().clone() else {
            continue;
        };
        if let Err(e) = artifacts.put(&key, bytes).await {
            tracing::warn!(key, error = %e, "cannot store the checkpoint; it waits in the spool");
        }
    }
}

/// The newest checkpoint of this job and configuration: this worker's
/// spool, else the store.
async fn resume_from(ctx: &Ctx, msg: &JobMessage) -> Option<Vec<u8>> {
    if let Some(b) = ctx.spool.checkpoint(msg) {
        return Some(b);
    }
    let key = checkpoint_key(&msg.sweep, &msg.job_id, &msg.config_hash);
    match ctx.artifacts.get_opt(&key).await {
        Ok(b) => b.map(|b| b.to_vec()),
        Err(e) => {
            tracing::warn!(job = %msg.job_id, error = %e, "cannot read the job's checkpoint; training from the start");
            None
        }
    }
}

/// Runs the job and stores its files; what happened, for [`super::settle`].
/// A finished run: how it ended, its watcher (still renewing the lease,
/// so that it holds until the outcome is recorded and acknowledged) and
/// its tracker run (still open, so that a slow tracker cannot hold the
/// lease hostage: it is closed after the acknowledgement).
pub(super) struct Executed {
    pub end: RunEnd,
    watcher: tokio::task::JoinHandle<()>,
    tracker: Option<(JobTracker, End)>,
}

impl Executed {
    /// After the delivery is settled: stops renewing, then ends the
    /// tracker's run (flushing what it has, within its flush bound).
    pub async fn close(self) {
        self.watcher.abort();
        if let Some((t, end)) = self.tracker {
            t.finish(end).await;
        }
    }
}

pub(super) async fn execute(
    ctx: &Ctx,
    device: &str,
    msg: &JobMessage,
    at: Attempt,
    token: &str,
) -> Executed {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        reason: AtomicU8::new(0),
        progress_ms: AtomicU64::new(now_ms()),
        uploading: AtomicBool::new(false),
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch(
        WatchCtx {
            state: ctx.state.clone(),
            job: msg.job_id.clone(),
            sweep: msg.sweep.clone(),
            token: token.to_string(),
            generation: at.generation,
            lease: ctx.args.lease(),
            stall: Duration::from_secs(ctx.args.stall_secs.max(1)),
            metrics: ctx.metrics.clone(),
            deadline: Duration::from_secs(ctx.args.deadline_secs.max(1)),
            shutdown: ctx.shutdown.clone(),
            hung: ctx.hung.clone(),
        },
        shared.clone(),
        rx,
    ));
    let tracker = track(ctx, msg, at);
    let (latest, uploads) = tokio::sync::watch::channel(None);
    let uploader = tokio::spawn(upload_checkpoints(
        ctx.artifacts.clone(),
        checkpoint_key(&msg.sweep, &msg.job_id, &msg.config_hash),
        uploads,
    ));
    let reporter = Reporter {
        tx,
        shared: shared.clone(),
        last_sent_ms: 0,
        tracked: tracker.as_ref().map(|t| t.epochs()),
        metrics: ctx.metrics.clone(),
        device: device.to_string(),
        batch: msg.spec.train.batch_size as u64,
        epoch_started: Instant::now(),
        epoch_steps: 0,
        checkpoints: Some(Checkpoints {
            spool: ctx.spool.clone(),
            msg: msg.clone(),
            latest,
        }),
    };
    ctx.metrics.job_started();
    let spooled = ctx.spool.find(msg);
    let result = match &msg.kind {
        _ if spooled.is_some() => {
            tracing::info!(job = %msg.job_id, "files of an earlier run of this job wait in the spool: storing them, not training again");
            drop(reporter);
            Ok(Vec::new())
        }
        JobKind::Train => {
            let resume = resume_from(ctx, msg).await;
            train(device, msg, reporter, resume).await
        }
        JobKind::Validate {
            source,
            split,
            knockout,
        } => {
            drop(reporter);
            let what = pipeline::Rescore {
                split: *split,
                knockout: *knockout,
            };
            validate(ctx, device, msg, source, what, shared.heard()).await
        }
    };
    shared.uploading.store(true, Ordering::SeqCst);
    // Training is over (its sender is gone): the last checkpoint's upload
    // ends before anything else, so that a hand-back leaves it for the
    // next attempt and a success removes it after it is stored.
    let mut uploader = uploader;
    if tokio::time::timeout(CHECKPOINT_UPLOAD_WAIT, &mut uploader)
        .await
        .is_err()
    {
        tracing::warn!(job = %msg.job_id, "the last checkpoint is still uploading: left to the spool");
        uploader.abort();
    }
    // What MLflow gets: the files as they are about to be stored.
    let tracked_files = match (&tracker, &result, &spooled) {
        (Some(_), Ok(files), None) => files.clone(),
        (Some(_), Ok(_), Some(dir)) => read_files(dir),
        _ => Vec::new(),
    };
    let end = match result {
        Ok(files) => match shared.reason() {
            StopReason::LeaseLost => RunEnd::LeaseLost,
            _ => upload(ctx, msg, at, spooled, files).await,
        },
        Err(JobError::Stopped) => match shared.reason() {
            StopReason::LeaseLost => RunEnd::LeaseLost,
            StopReason::ShutDown => RunEnd::ShutDown,
            StopReason::Deadline => {
                RunEnd::DeadlineExceeded(Duration::from_secs(ctx.args.deadline_secs))
            }
            StopReason::Cancelled | StopReason::None => RunEnd::Cancelled,
        },
        Err(e) if e.is_permanent() => RunEnd::Permanent(e.to_string()),
        Err(e) => RunEnd::Transient(e.to_string()),
    };
    // A lease lost during the upload: a later attempt owns the job.
    let end = if shared.reason() == StopReason::LeaseLost {
        RunEnd::LeaseLost
    } else {
        end
    };
    let last_attempt = at.attempt >= ctx.args.policy().max_attempts;
    ctx.metrics
        .job_ended(super::metrics::outcome_label(&end, last_attempt));
    let tracker = tracker.map(|t| (t, tracking_end(ctx, &end, last_attempt, tracked_files)));
    Executed {
        end,
        watcher,
        tracker,
    }
}

/// Starts the job's MLflow run, when a tracker is configured.
fn track(ctx: &Ctx, msg: &JobMessage, at: Attempt) -> Option<JobTracker> {
    let sink = ctx.tracking.as_ref()?;
    let (kind, params) = match &msg.kind {
        JobKind::Train => ("train", Vec::new()),
        JobKind::Validate {
            source,
            split,
            knockout,
        } => (
            "validate",
            vec![
                ("source".to_string(), source.clone()),
                ("eval_split".into(), split.to_string()),
                ("knockout".into(), knockout.to_string()),
            ],
        ),
    };
    let job = JobStart {
        sweep: msg.sweep.clone(),
        job_id: msg.job_id.clone(),
        config_hash: msg.config_hash.clone(),
        spec: msg.spec.clone(),
        worker: ctx.worker_id.clone(),
        attempt: at.attempt,
        kind,
        params,
    };
    Some(sink.start(job, &tokio::runtime::Handle::current()))
}

/// How the run's end reads in MLflow.
/// `last_attempt`: a transient failure is final (the job will be dead).
fn tracking_end(ctx: &Ctx, end: &RunEnd, last_attempt: bool, files: Vec<(String, Vec<u8>)>) -> End {
    match end {
        RunEnd::Succeeded { artifacts } => End::Succeeded {
            files,
            link: Some(format!(
                "{}/{artifacts}",
                ctx.artifacts.location.trim_end_matches('/')
            )),
        },
        RunEnd::Permanent(e) => End::Failed(e.clone()),
        RunEnd::Transient(e) if last_attempt => End::Failed(e.clone()),
        RunEnd::Transient(e) => End::Retrying(e.clone()),
        RunEnd::Cancelled => End::Killed("producer cancel".into()),
        RunEnd::ShutDown => End::Retrying("handed back: the worker shut down".into()),
        RunEnd::LeaseLost => End::Superseded,
        RunEnd::DeadlineExceeded(d) => End::Failed(format!("ran past its deadline of {d:?}")),
    }
}

/// The files of a spooled run, read back (those that can be).
fn read_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    services::artifacts::files_under(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, path)| std::fs::read(path).ok().map(|b| (name, b)))
        .collect()
}

/// Trains on a blocking thread; the run's files.
async fn train(
    device: &str,
    msg: &JobMessage,
    mut reporter: Reporter,
    resume: Option<Vec<u8>>,
) -> Result<Vec<(String, Vec<u8>)>, JobError> {
    let spec = msg.spec.clone();
    let (sweep, job_id, hash) = (
        msg.sweep.clone(),
        msg.job_id.clone(),
        msg.config_hash.clone(),
    );
    let device_name = device.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let device =
            crate::parse_device(&device_name).map_err(|e| JobError::Spec(e.to_string()))?;
        let ids = RunIds {
            sweep: &sweep,
            job_id: &job_id,
            config_hash: &hash,
        };
        let heard = reporter.shared.heard();
        crate::engine::beat::with(heard, || {
            pipeline::run(&spec, &ids, &device, &mut reporter, resume.as_deref())
        })
    })
    .await
    .map_err(join_error)??;
    Ok(out.files)
}

/// A training thread that panicked or was cancelled, as a transient error.
fn join_error(join: tokio::task::JoinError) -> JobError {
    let what = if join.is_panic() {
        "training panicked"
    } else {
        "training thread failed"
    };
    JobError::Transient(format!("{what}: {join}"))
}

/// Stores the files under this attempt's folder (unique per attempt,
/// generation and worker: a rerun never mixes its files with what an
/// earlier attempt may have left), with a manifest, from the spool: the
/// folder of an earlier run, or `files` written there first.
async fn upload(
    ctx: &Ctx,
    msg: &JobMessage,
    at: Attempt,
    spooled: Option<std::path::PathBuf>,
    files: Vec<(String, Vec<u8>)>,
) -> RunEnd {
    let folder = format!(
        "{}/attempt-{}-g{}-{}",
        job_prefix(&msg.sweep, &msg.job_id),
        at.attempt,
        at.generation,
        common::artifacts::sanitize(&ctx.worker_id)
    );
    let dir = match spooled {
        Some(dir) => dir,
        None => match ctx.spool.save(msg, &files) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(job = %msg.job_id, error = %e, "cannot spool the run's files; uploading from memory");
                return match ctx
                    .artifacts
                    .put_all(&folder, &with_manifest(msg, at, ctx, files))
                    .await
                {
                    Ok(()) => {
                        forget_checkpoint(ctx, msg).await;
                        RunEnd::Succeeded { artifacts: folder }
                    }
                    Err(e) => RunEnd::Transient(e.to_string()),
                };
            }
        },
    };
    let listed = match services::artifacts::files_under(&dir) {
        Ok(l) => l,
        Err(e) => return RunEnd::Transient(e.to_string()),
    };
    let sizes = listed
        .iter()
        .filter(|(n, _)| n != common::artifacts::files::MANIFEST_JSON)
        .map(|(n, p)| {
            (
                n.as_str(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        });
    let manifest = manifest(msg, at, ctx, sizes);
    if let Err(e) = std::fs::write(dir.join(common::artifacts::files::MANIFEST_JSON), manifest) {
        return RunEnd::Transient(format!("cannot write the manifest: {e}"));
    }
    match ctx.artifacts.put_dir(&folder, &dir).await {
        Ok(()) => {
            ctx.spool.remove(msg);
            forget_checkpoint(ctx, msg).await;
            RunEnd::Succeeded { artifacts: folder }
        }
        Err(e) => RunEnd::Transient(format!("{e} (the run's files wait in the spool)")),
    }
}

/// The job's files are stored: its checkpoints are of no further use.
async fn forget_checkpoint(ctx: &Ctx, msg: &JobMessage) {
    ctx.spool.remove_checkpoint(msg);
    let key = checkpoint_key(&msg.sweep, &msg.job_id, &msg.config_hash);
    if let Err(e) = ctx.artifacts.delete(&key).await {
        tracing::warn!(key, error = %e, "cannot remove the job's checkpoint");
    }
}

/// The attempt's manifest: who wrote it and every file with its size.
fn manifest<'a>(
    msg: &JobMessage,
    at: Attempt,
    ctx: &Ctx,
    files: impl Iterator<Item = (&'a str, u64)>,
) -> Vec<u8> {
    let listed: Vec<_> = files
        .map(|(n, bytes)| serde_json::json!({"name": n, "bytes": bytes}))
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "job_id": msg.job_id,
        "attempt": at.attempt,
        "generation": at.generation,
        "worker": ctx.worker_id,
        "files": listed,
    }))
    .unwrap_or_default()
}

/// In-memory files plus their manifest (when the spool cannot be written).
fn with_manifest(
    msg: &JobMessage,
    at: Attempt,
    ctx: &Ctx,
    mut files: Vec<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let m = manifest(
        msg,
        at,
        ctx,
        files.iter().map(|(n, b)| (n.as_str(), b.len() as u64)),
    );
    files.push((common::artifacts::files::MANIFEST_JSON.into(), m));
    files
}

struct WatchCtx {
    state: services::state::StateStore,
    job: String,
    sweep: String,
    token: String,
    generation: u64,
    lease: Duration,
    stall: Duration,
    deadline: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    metrics: super::metrics::Metrics,
    /// Told when the job's thread has hung (no progress for stall + lease).
    hung: Arc<tokio::sync::Notify>,
}

/// Progress writer, lease renewal, and the cancel / shutdown / deadline
/// watch of one run.
async fn watch(
    mut w: WatchCtx,
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<(&'static str, String)>>,
) {
    let started = Instant::now();
    let mut watching_shutdown = true;
    let mut hung = false;
    let mut tick = tokio::time::interval((w.lease / 3).max(Duration::from_millis(500)));
    // After a freeze (SIGSTOP), one tick, not a burst of missed ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            fields = rx.recv(), if !rx.is_closed() => {
                let Some(fields) = fields else { continue };
                let epoch_done = fields.iter().any(|(k, _)| *k == "epoch_done");
                let f: Vec<(&str, String)> =
                    fields.into_iter().filter(|(k, _)| *k != "epoch_done").collect();
                let _ = w.state.set_fields(&w.job, &f).await;
                if epoch_done {
                    let mut ev = vec![("job", w.job.clone())];
                    ev.extend(f.iter().map(|(k, v)| (*k, v.clone())));
                    let _ = w.state.event(&w.sweep, &ev).await;
                }
            }
            _ = tick.tick() => {
                let idle = Duration::from_millis(
                    now_ms().saturating_sub(shared.progress_ms.load(Ordering::Relaxed)),
                );
                let working = !shared.uploading.load(Ordering::SeqCst);
                if working && idle > w.stall + w.lease && !hung {
                    // The lease is gone and the thread cannot be stopped:
                    // only a new process gets the slot back.
                    hung = true;
                    let why = format!("hung: job {} made no progress for {idle:?}", w.job);
                    tracing::error!(job = %w.job, ?idle, "the job's thread hung; the worker ends so that it is restarted");
                    w.metrics.hung(why);
                    w.hung.notify_one();
                }
                if shared.reason() == StopReason::LeaseLost {
                    // Nothing left to renew.
                } else if !shared.uploading.load(Ordering::SeqCst) && idle > w.stall {
                    tracing::warn!(job = %w.job, ?idle, "no training progress; the lease is left to expire");
                } else {
                    use services::state::Renewal;
                    let renewed = w
                        .state
                        .renew_or_reclaim(&w.job, &w.token, w.generation, w.lease)
                        .await;
                    w.metrics.renewal(match renewed {
                        Ok(Renewal::Renewed) => "renewed",
                        Ok(Renewal::Reclaimed) => "reclaimed",
                        Ok(Renewal::Lost) => "lost",
                        Err(_) => "error",
                    });
                    match renewed {
                        Ok(Renewal::Renewed) => {}
                        Ok(Renewal::Reclaimed) => {
                            tracing::info!(job = %w.job, "lease expired while Redis was unreachable; taken again");
                        }
                        Ok(Renewal::Lost) => {
                            tracing::warn!(job = %w.job, "lease lost to another attempt; stopping");
                            shared.stop(StopReason::LeaseLost);
                        }
                        Err(e) => tracing::warn!(job = %w.job, error = %e, "cannot renew the lease"),
                    }
                }
                if matches!(w.state.cancel_requested(&w.job).await, Ok(true)) {
                    shared.stop(StopReason::Cancelled);
                }
                if started.elapsed() > w.deadline {
                    shared.stop(StopReason::Deadline);
                }
            }
            changed = w.shutdown.changed(), if watching_shutdown => {
                if changed.is_err() || *w.shutdown.borrow() {
                    watching_shutdown = false;
                    shared.stop(StopReason::ShutDown);
                }
            }
        }
    }
}

/// The artifact key of the trained parameters a validate job names: a job
/// id (of a succeeded job) or `s3://<bucket>/<key>` in the configured bucket.
async fn trained_key(ctx: &Ctx, source: &str) -> Result<String, JobError> {
    if let Some(rest) = source.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| JobError::Spec(format!("bad S3 URI {source:?}")))?;
        let Some(prefix) = ctx
            .artifacts
            .location
            .strip_prefix(&format!("s3://{bucket}"))
        else {
            return Err(JobError::Spec(format!(
                "{source} is not in this worker's bucket ({})",
                ctx.artifacts.location
            )));
        };
        let prefix = prefix.trim_matches('/');
        let key = if prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&format!("{prefix}/")).unwrap_or(key)
        };
        return Ok(key.to_string());
    }
    let r = ctx
        .state
        .record(source)
        .await
        .map_err(|e| JobError::Transient(e.to_string()))?;
    match r {
        Some(r) if r.state == Some(common::state::JobState::Succeeded) => Ok(format!(
            "{}/{}",
            r.artifacts,
            common::artifacts::files::TRAINED_SAFETENSORS
        )),
        Some(r) => Err(JobError::Spec(format!(
            "job {source} is {}, not succeeded",
            r.state
                .map(services::state::state_name)
                .unwrap_or("unknown")
        ))),
        None => Err(JobError::Spec(format!("no job {source:?}"))),
    }
}

/// Scores a finished run's trained parameters again; the files to store.
async fn validate(
    ctx: &Ctx,
    device: &str,
    msg: &JobMessage,
    source: &str,
    what: pipeline::Rescore,
    heard: impl Fn() + Send + 'static,
) -> Result<Vec<(String, Vec<u8>)>, JobError> {
    let key = trained_key(ctx, source).await?;
    let bytes = ctx.artifacts.get(&key).await.map_err(|e| match e {
        services::artifacts::ArtifactError::Store(object_store::Error::NotFound { .. }) => {
            JobError::Spec(format!("{key} not found"))
        }
        e => JobError::Transient(e.to_string()),
    })?;
    let tmp = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile()
        .map_err(|e| JobError::Transient(e.to_string()))?;
    std::fs::write(tmp.path(), &bytes).map_err(|e| JobError::Transient(e.to_string()))?;
    let spec = msg.spec.clone();
    let path = tmp.path().to_path_buf();
    let (source, job_id, device_name) =
        (source.to_string(), msg.job_id.clone(), device.to_string());
    let (summary, files) = tokio::task::spawn_blocking(move || {
        let device =
            crate::parse_device(&device_name).map_err(|e| JobError::Spec(e.to_string()))?;
        crate::engine::beat::with(heard, || {
            pipeline::validate(&spec, &path, &source, what, &job_id, &device)
        })
    })
    .await
    .map_err(join_error)??;
    drop(tmp);
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
    Ok(files)
}
