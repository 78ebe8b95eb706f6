//! Running an admitted job: training (or validation) on a blocking thread,
//! a watcher beside it, then the upload of every file.
//!
//! The watcher renews the lease only while training makes progress (a hung
//! step stops renewing, so another worker can take the job over), and
//! stops the run when the lease is lost to a later attempt, the job is
//! cancelled, its deadline passes or the worker shuts down. It keeps
//! renewing through the upload. One thing per file: this one runs the job
//! and decides how it ended; [`watch`] is the watcher and the reporter,
//! [`checkpoints`] the checkpoints, [`upload`] the storing of the files,
//! [`rescore`] validate jobs.

mod checkpoints;
mod rescore;
mod upload;
mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::artifacts::checkpoint_key;
use common::clock::now_ms;
use common::job::{JobKind, JobMessage};
use common::settle::{Attempt, RunEnd};

use super::Ctx;
use crate::engine::error::JobError;
use crate::engine::pipeline;
use crate::engine::trained::RunIds;
use crate::mlflow::{End, JobStart, JobTracker};
use checkpoints::{
    forget_checkpoint, resume_from, upload_checkpoints, Checkpoints, CHECKPOINT_UPLOAD_WAIT,
};
use rescore::validate;
use upload::{read_files, remove_stale_folders, results_of, stored_run, upload};
use watch::{watch, Reporter, Shared, StopReason, WatchCtx};

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
    // A whole stored folder of this job and configuration is its outcome
    // already; else files an earlier run left in the spool are stored.
    let stored = match &msg.kind {
        JobKind::Train => stored_run(ctx, msg).await,
        _ => None,
    };
    let spooled = match stored {
        Some(_) => {
            ctx.spool.remove(msg);
            None
        }
        None => ctx.spool.find(msg),
    };
    let result = match &msg.kind {
        _ if stored.is_some() => {
            tracing::info!(job = %msg.job_id, folder = ?stored, "an earlier attempt of this job and configuration stored its files: recording them, not training again");
            drop(reporter);
            Ok(Vec::new())
        }
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
        Ok(files) => match (shared.reason(), stored) {
            (StopReason::LeaseLost, _) => RunEnd::LeaseLost,
            (_, Some(folder)) => {
                let metrics = common::artifacts::files::METRICS_JSON;
                let files = match ctx.artifacts.get_opt(&format!("{folder}/{metrics}")).await {
                    Ok(Some(b)) => vec![(metrics.to_string(), b.to_vec())],
                    _ => Vec::new(),
                };
                forget_checkpoint(ctx, msg).await;
                remove_stale_folders(ctx, msg, &folder, at.generation).await;
                RunEnd::Succeeded {
                    artifacts: folder,
                    results: results_of(&files, None),
                }
            }
            _ => {
                let results = results_of(&files, spooled.as_deref());
                match upload(ctx, msg, at, spooled, files).await {
                    RunEnd::Succeeded { artifacts, .. } => RunEnd::Succeeded { artifacts, results },
                    end => end,
                }
            }
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
    let job = JobStart::from_message(msg, ctx.worker_id.clone(), at.attempt);
    Some(sink.start(job, &tokio::runtime::Handle::current()))
}

/// How the run's end reads in MLflow.
/// `last_attempt`: a transient failure is final (the job will be dead).
fn tracking_end(ctx: &Ctx, end: &RunEnd, last_attempt: bool, files: Vec<(String, Vec<u8>)>) -> End {
    match end {
        RunEnd::Succeeded { artifacts, .. } => End::Succeeded {
            files,
            link: Some(ctx.artifacts.url(artifacts)),
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
            crate::engine::device::open(&device_name).map_err(|e| JobError::Spec(e.to_string()))?;
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
pub(super) fn join_error(join: tokio::task::JoinError) -> JobError {
    let what = if join.is_panic() {
        "training panicked"
    } else {
        "training thread failed"
    };
    JobError::Transient(format!("{what}: {join}"))
}
