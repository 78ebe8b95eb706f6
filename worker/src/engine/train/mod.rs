//! The training loop: per epoch, train ([`epoch::train_epoch`]), validate
//! ([`epoch::validate_epoch`]), ask the tracker ([`common::tracker`]) what
//! to do, and do it: snapshot the best network, restore it, add a
//! dendrite set and restart the optimiser and the schedule, or stop.
//! Progress goes to an injected [`Progress`] sink; the loop does no IO.

pub mod accumulate;
pub mod checkpoint;
pub mod epoch;
pub mod fused_step;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod snapshot;

use std::time::Instant;

use candle_core::{Device, Var};
use common::spec::{DendriteSpec, TrackerSpec, TrainSpec};
use common::summary::EpochRecord;
use common::tracker::{self, Decision, TrackerConfig, TrackerState};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::engine::models::Model;
pub use epoch::{cache_features, evaluate, evaluate_with, train_epoch, validate_epoch};
use epoch::{Checked, Fit, Optimised};
pub use loss::{balanced_weights, cross_entropy};
use schedule::LrSchedule;
use snapshot::Snapshot;

/// Why training ended early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// [`Progress::should_stop`] asked to stop.
    #[error("training stopped on request")]
    Stopped,
    #[error("loss is {loss} at epoch {epoch}, batch {batch}")]
    NonFinite {
        loss: f64,
        epoch: usize,
        batch: usize,
    },
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A tokenized split: token ids and labels, and the frozen body's
/// features once cached ([`epoch::cache_features`]).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<usize>,
    /// `[n, hidden]` body outputs in row order: training and evaluation
    /// then run the head only.
    pub features: Option<candle_core::Tensor>,
}

/// Receives progress while training runs.
pub trait Progress {
    fn start_epoch(&mut self, _epoch: usize, _steps: usize) {}
    fn step(&mut self, _epoch: usize, _step: usize, _loss: f64) {}
    fn end_epoch(&mut self, _record: &EpochRecord) {}
    /// After every epoch that training goes on from: `save` returns the
    /// run's resumable state as checkpoint bytes ([`checkpoint`]). Call it
    /// here or never: training goes on changing the tensors it reads.
    fn checkpoint(
        &mut self,
        _epoch: usize,
        _save: &mut dyn FnMut() -> candle_core::Result<Vec<u8>>,
    ) {
    }
    /// Polled before every batch: `true` ends training with [`TrainError::Stopped`].
    fn should_stop(&self) -> bool {
        false
    }
}

/// How training went; the model holds the best snapshot's weights.
pub struct Trained {
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    /// Epochs after which a dendrite set was added.
    pub switch_epochs: Vec<usize>,
    /// The tracker state stored with the best snapshot.
    pub tracker: TrackerState,
    pub train_seconds: f64,
    pub steps: usize,
}

/// What a training run needs besides the model and data.
pub struct RunConfig<'a> {
    pub train: &'a TrainSpec,
    pub tracker: &'a TrackerSpec,
    /// `Some` for the arms that restructure (dendritic, restart, branch): the
    /// tracker then follows the dendritic switch rules.
    pub dendrites: Option<&'a DendriteSpec>,
    /// Whether a restructure adds a set (dendritic: dendrites, branch:
    /// linear branches) or
    /// only restores, rebuilds AdamW and restarts the schedule (restart).
    pub add_sets: bool,
    pub head_prefixes: &'a [&'a str],
    pub labels: &'a [&'a str],
    pub seed: u64,
    /// Base parameters that never train (frozen or quantized), for counts.
    pub frozen_params: usize,
    /// The run's configuration hash, written into its checkpoints.
    pub key: &'a str,
}

/// What the loop carries from one epoch to the next besides the model:
/// with the model's tensors, what a checkpoint holds.
pub(crate) struct LoopState {
    params: Optimised,
    schedule: LrSchedule,
    rng: ChaCha8Rng,
    dendrite_rng: ChaCha8Rng,
    state: TrackerState,
    best: Option<Snapshot>,
    history: Vec<EpochRecord>,
    switches: Vec<usize>,
    /// Epochs finished.
    epoch: usize,
}

/// The seed of the stream new dendrite sets are drawn from.
fn dendrite_seed(seed: u64) -> u64 {
    seed ^ 0x00de_4d21_7e00
}

/// The splits of a run.
pub struct Sets<'a> {
    pub train: &'a Encoded,
    pub val: &'a Encoded,
    /// Scored every epoch for the per-architecture table when configured.
    pub test: Option<&'a Encoded>,
}

/// Trains `model` in place under the tracker's rules and leaves it holding
/// the best snapshot's weights and dendrites. `base_trainable`: every
/// trained tensor of the base network, adapters and head (dendrite tensors
/// are taken from the model as they are added). `resume`: a checkpoint of
/// the same run to go on from (the model freshly loaded, as for a start).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut Model,
    base_trainable: &[(String, Var)],
    cfg: &RunConfig,
    sets: &Sets,
    device: &Device,
    progress: &mut dyn Progress,
    resume: Option<&checkpoint::Checkpoint>,
) -> Result<Trained, TrainError> {
    let spec = cfg.train;
    let weights = spec
        .class_weights
        .then(|| balanced_weights(&sets.train.labels, cfg.labels.len()));
    let tcfg = TrackerConfig::from_spec(
        cfg.tracker,
        cfg.dendrites.is_some(),
        cfg.dendrites.map_or(0, |d| d.max),
        cfg.dendrites.map_or(1, |d| d.max_tries),
    );
    let base_vars: Vec<Var> = base_trainable.iter().map(|(_, v)| v.clone()).collect();
    let base_count: usize = base_vars.iter().map(|v| v.elem_count()).sum();
    let (mut lp, earlier_seconds) = match resume {
        Some(ck) => checkpoint::restore(ck, model, base_trainable, cfg, device)?,
        None => {
            let steps_per_epoch = sets
                .train
                .ids
                .len()
                .div_ceil(spec.batch_size)
                .div_ceil(spec.grad_accum);
            let lp = LoopState {
                params: Optimised::new(base_trainable, model, cfg)?,
                schedule: LrSchedule::new(spec, steps_per_epoch),
                rng: ChaCha8Rng::seed_from_u64(cfg.seed),
                dendrite_rng: ChaCha8Rng::seed_from_u64(dendrite_seed(cfg.seed)),
                state: TrackerState::default(),
                best: None,
                history: Vec::new(),
                switches: Vec::new(),
                epoch: 0,
            };
            (lp, 0.0)
        }
    };
    let started = Instant::now();
    for epoch in lp.epoch + 1..=spec.epochs {
        let fit = train_epoch(
            model,
            &mut lp.params,
            &mut lp.schedule,
            sets.train,
            cfg,
            weights.as_deref(),
            epoch,
            &mut lp.rng,
            device,
            progress,
        )?;
        let checked = validate_epoch(model, sets, cfg, weights.as_deref(), device)?;
        let step = tracker::add_validation_score(
            &tcfg,
            &lp.state,
            lp.best.as_ref().map(|b| &b.state),
            checked.score,
        );
        if let Some(snap_state) = step.snapshot.clone() {
            lp.best = Some(Snapshot::take(model, &base_vars, snap_state, epoch)?);
        }
        let dendrite_params =
            lp.params.param_count() - base_count + model.constant_dendrite_params();
        let counts = Counts {
            dendrite_params,
            total_params: cfg.frozen_params + base_count + dendrite_params,
        };
        let record = epoch_record(model, epoch, &fit, &checked, &step, counts)?;
        progress.end_epoch(&record);
        lp.history.push(record);
        lp.state = step.state;
        lp.epoch = epoch;
        // The budget is spent: nothing more is added, the best snapshot wins.
        let decision = if epoch == spec.epochs {
            Decision::Complete
        } else {
            step.decision
        };
        // The smoke mode keeps what it grew; real runs restore the best.
        if decision != Decision::Continue && !tcfg.testing_capacity {
            if let Some(b) = &lp.best {
                b.restore(model, &base_vars)?;
                for r in lp.history.iter_mut().filter(|r| r.epoch > b.epoch) {
                    r.discarded = true;
                }
            }
        }
        match decision {
            Decision::Continue => {
                let state = &lp.state;
                let since_improved =
                    state.epoch - 1 - state.epoch_last_improved.min(state.epoch - 1);
                lp.schedule.end_epoch(epoch, since_improved);
            }
            Decision::Restructure => {
                if cfg.add_sets {
                    let scale = cfg.dendrites.map_or(0.01, |d| d.init_scale);
                    model.add_dendrite_set(&mut lp.dendrite_rng, scale)?;
                }
                lp.switches.push(epoch);
                lp.params = Optimised::new(base_trainable, model, cfg)?;
                lp.schedule.restart(epoch);
            }
            Decision::Complete => break,
        }
        let seconds = earlier_seconds + started.elapsed().as_secs_f64();
        progress.checkpoint(epoch, &mut || {
            checkpoint::encode(cfg.key, epoch, model, base_trainable, &lp, seconds)
        });
    }
    Ok(Trained {
        best_epoch: lp.best.as_ref().map_or(lp.history.len(), |b| b.epoch),
        tracker: lp.best.map(|b| b.state).unwrap_or(lp.state),
        history: lp.history,
        switch_epochs: lp.switches,
        train_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
        steps: lp.schedule.steps(),
    })
}

/// Parameter counts of the network during an epoch.
struct Counts {
    dendrite_params: usize,
    total_params: usize,
}

/// The record of an epoch from what it measured and what the tracker said.
fn epoch_record(
    model: &mut Model,
    epoch: usize,
    fit: &Fit,
    checked: &Checked,
    step: &tracker::Step,
    counts: Counts,
) -> candle_core::Result<EpochRecord> {
    let layers = model.dendrite_summary()?;
    Ok(EpochRecord {
        epoch,
        train_loss: fit.loss,
        val_loss: checked.loss,
        val_accuracy: checked.scores.accuracy,
        val_macro_f1: checked.scores.macro_f1,
        val_score: checked.score,
        val_running: step.running,
        test_score: checked.test_score,
        lr: fit.lr,
        lr_min: fit.lr_range.0,
        lr_max: fit.lr_range.1,
        skipped_steps: fit.skipped_steps,
        seconds: fit.seconds + checked.seconds,
        train_seconds: fit.seconds,
        val_seconds: checked.seconds,
        improved: step.snapshot.is_some(),
        improved_current: step.improved_current,
        discarded: false,
        dendrites: layers.first().map_or(0, |d| d.1),
        dendrite_params: counts.dendrite_params,
        total_params: counts.total_params,
        gates: layers.iter().map(|(n, _, g)| (n.clone(), *g)).collect(),
    })
}
