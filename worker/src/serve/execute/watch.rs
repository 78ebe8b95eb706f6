//! The two sides of a running job: on its thread, the [`Reporter`]
//! (the engine's [`Progress`]: live fields, epochs, checkpoints, the stop
//! flag); beside it, the [`watch`] task: it writes what the reporter sends
//! to Redis, renews the lease while the job makes progress, and stops the
//! run when the lease is lost, the job is cancelled, its deadline passes or
//! the worker shuts down. A job without progress for stall + lease has
//! hung: the worker is told, so that it can end.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clock::now_ms;
use common::summary::EpochRecord;

use super::checkpoints::Checkpoints;
use crate::engine::train::Progress;
use crate::mlflow::EpochSender;
use crate::serve::best_effort;

/// What the job's thread tells the watcher.
pub(super) enum Update {
    /// Live fields of the job's record.
    Progress(Vec<(&'static str, String)>),
    /// An epoch ended: its fields go to the record and the sweep's events.
    Epoch(Vec<(&'static str, String)>),
}

/// Why the watcher stopped a run (the first reason wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum StopReason {
    None = 0,
    Cancelled = 1,
    ShutDown = 2,
    LeaseLost = 3,
    Deadline = 4,
}

/// What the training thread and the watcher share.
pub(super) struct Shared {
    pub stop: AtomicBool,
    pub reason: AtomicU8,
    /// When training last made progress (ms since the epoch).
    pub progress_ms: AtomicU64,
    /// Training is over (uploading): renew regardless of progress.
    pub uploading: AtomicBool,
}

impl Shared {
    pub fn stop(&self, why: StopReason) {
        // The first reason wins: a later one finds it set and changes nothing.
        let _ = self.reason.compare_exchange(
            StopReason::None as u8,
            why as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn reason(&self) -> StopReason {
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
pub(super) struct Reporter {
    pub tx: tokio::sync::mpsc::UnboundedSender<Update>,
    pub shared: Arc<Shared>,
    pub last_sent_ms: u64,
    pub tracked: Option<EpochSender>,
    pub metrics: crate::serve::metrics::Metrics,
    pub device: String,
    pub batch: u64,
    /// When the current epoch started, and its steps so far.
    pub epoch_started: Instant,
    pub epoch_steps: u64,
    pub checkpoints: Option<Checkpoints>,
}

impl Reporter {
    pub fn progressed(&self) {
        self.shared.progressed();
    }
}

impl Shared {
    /// What the job's loops signal ([`crate::engine::beat`]): progress.
    pub fn heard(self: &Arc<Self>) -> impl Fn() + 'static {
        let shared = self.clone();
        move || shared.progressed()
    }

    /// The job made progress now.
    pub fn progressed(&self) {
        self.progress_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl Progress for Reporter {
    fn start_epoch(&mut self, epoch: usize, steps: usize) {
        self.progressed();
        self.epoch_started = Instant::now();
        self.epoch_steps = 0;
        let _ = self.tx.send(Update::Progress(vec![
            ("epoch", epoch.to_string()),
            ("steps", steps.to_string()),
            ("step", "0".into()),
        ]));
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
            let _ = self.tx.send(Update::Progress(vec![
                ("step", step.to_string()),
                ("loss", format!("{loss:.4}")),
            ]));
        }
    }
    fn end_epoch(&mut self, r: &EpochRecord) {
        self.progressed();
        if let Some(t) = &self.tracked {
            t.send(r);
        }
        self.metrics.epoch(r.seconds);
        let _ = self.tx.send(Update::Epoch(vec![
            ("epoch", r.epoch.to_string()),
            ("val_accuracy", format!("{:.4}", r.val_accuracy)),
            ("val_macro_f1", format!("{:.4}", r.val_macro_f1)),
            ("train_loss", format!("{:.4}", r.train_loss)),
            ("dendrites", r.dendrites.to_string()),
        ]));
    }
    fn checkpoint(&mut self, epoch: usize, save: &mut dyn FnMut() -> candle_core::Result<Vec<u8>>) {
        if let Some(c) = &self.checkpoints {
            c.save(epoch, save);
            self.progressed();
        }
    }
    fn should_stop(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }
}

pub(super) struct WatchCtx {
    pub state: services::state::StateStore,
    pub job: String,
    pub sweep: String,
    pub token: String,
    pub generation: u64,
    pub lease: Duration,
    pub stall: Duration,
    pub deadline: Duration,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub metrics: crate::serve::metrics::Metrics,
    /// Told when the job's thread has hung (no progress for stall + lease).
    pub hung: Arc<tokio::sync::Notify>,
}

/// Progress writer, lease renewal, and the cancel / shutdown / deadline
/// watch of one run.
pub(super) async fn watch(
    mut w: WatchCtx,
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Update>,
) {
    let started = Instant::now();
    let mut watching_shutdown = true;
    let mut hung = false;
    let mut tick = tokio::time::interval((w.lease / 3).max(Duration::from_millis(500)));
    // After a freeze (SIGSTOP), one tick, not a burst of missed ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = rx.recv(), if !rx.is_closed() => {
                let Some(update) = update else { continue };
                let (f, epoch_done) = match update {
                    Update::Progress(f) => (f, false),
                    Update::Epoch(f) => (f, true),
                };
                best_effort("recording progress", &w.job, w.state.set_fields(&w.job, &f).await);
                if epoch_done {
                    let mut ev = vec![("job", w.job.clone())];
                    ev.extend(f.iter().map(|(k, v)| (*k, v.clone())));
                    best_effort("recording an event", &w.job, w.state.event(&w.sweep, &ev).await);
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
