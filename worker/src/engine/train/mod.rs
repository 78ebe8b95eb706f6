//! The training loop: per epoch, train ([`epoch::train_epoch`]), validate
//! ([`epoch::validate_epoch`]), ask the tracker ([`common::tracker`]) what
//! to do, and do it: snapshot the best network, restore it, add a
//! dendrite set and restart the optimiser and the schedule, or stop.
//! Progress goes to an injected [`Progress`] sink; the loop does no IO.

pub mod accumulate;
pub mod epoch;
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
/// are taken from the model as they are added).
pub fn train(
    model: &mut Model,
    base_trainable: &[(String, Var)],
    cfg: &RunConfig,
    sets: &Sets,
    device: &Device,
    progress: &mut dyn Progress,
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
    let mut params = Optimised::new(base_trainable, model, cfg)?;
    let steps_per_epoch = sets
        .train
        .ids
        .len()
        .div_ceil(spec.batch_size)
        .div_ceil(spec.grad_accum);
    let mut schedule = LrSchedule::new(spec, steps_per_epoch);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut dendrite_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x00de_4d21_7e00);
    let mut state = TrackerState::default();
    let mut best: Option<Snapshot> = None;
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut switches = Vec::new();
    let started = Instant::now();
    for epoch in 1..=spec.epochs {
        let fit = train_epoch(
            model,
            &mut params,
            &mut schedule,
            sets.train,
            cfg,
            weights.as_deref(),
            epoch,
            &mut rng,
            device,
            progress,
        )?;
        let checked = validate_epoch(model, sets, cfg, weights.as_deref(), device)?;
        let step = tracker::add_validation_score(
            &tcfg,
            &state,
            best.as_ref().map(|b| &b.state),
            checked.score,
        );
        if let Some(snap_state) = step.snapshot.clone() {
            best = Some(Snapshot::take(model, &base_vars, snap_state, epoch)?);
        }
        let dendrite_params = params.param_count() - base_count + model.constant_dendrite_params();
        let counts = Counts {
            dendrite_params,
            total_params: cfg.frozen_params + base_count + dendrite_params,
        };
        let record = epoch_record(model, epoch, &fit, &checked, &step, counts)?;
        progress.end_epoch(&record);
        history.push(record);
        state = step.state;
        // The budget is spent: nothing more is added, the best snapshot wins.
        let decision = if epoch == spec.epochs {
            Decision::Complete
        } else {
            step.decision
        };
        // The smoke mode keeps what it grew; real runs restore the best.
        if decision != Decision::Continue && !tcfg.testing_capacity {
            if let Some(b) = &best {
                b.restore(model, &base_vars)?;
                for r in history.iter_mut().filter(|r| r.epoch > b.epoch) {
                    r.discarded = true;
                }
            }
        }
        match decision {
            Decision::Continue => {
                let since_improved =
                    state.epoch - 1 - state.epoch_last_improved.min(state.epoch - 1);
                schedule.end_epoch(epoch, since_improved);
            }
            Decision::Restructure => {
                if cfg.add_sets {
                    let scale = cfg.dendrites.map_or(0.01, |d| d.init_scale);
                    model.add_dendrite_set(&mut dendrite_rng, scale)?;
                }
                switches.push(epoch);
                params = Optimised::new(base_trainable, model, cfg)?;
                schedule.restart(epoch);
            }
            Decision::Complete => break,
        }
    }
    Ok(Trained {
        best_epoch: best.as_ref().map_or(history.len(), |b| b.epoch),
        tracker: best.map(|b| b.state).unwrap_or(state),
        history,
        switch_epochs: switches,
        train_seconds: started.elapsed().as_secs_f64(),
        steps: schedule.steps(),
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
