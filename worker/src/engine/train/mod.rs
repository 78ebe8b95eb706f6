//! The training loop: batching, class-weighted loss, gradient accumulation
//! and clipping, the optimiser and schedule, per-epoch validation with
//! best-checkpoint selection, then test metrics at the best epoch.
//! Progress goes to an injected [`Progress`] sink; the loop itself does no IO.

pub mod optim;
pub mod tracker;

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use common::spec::{DendriteSpec, Metric, TrackerSpec, TrainSpec};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::engine::metrics::{self, Scores};
use crate::engine::models::{Batch, Model};
use crate::engine::nn::Ctx;
use optim::AdamW;
use tracker::{Decision, TrackerConfig, TrackerState};

/// A tokenized split: token ids and labels.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<usize>,
}

/// One epoch as recorded (1-based epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
    /// The selection metric's validation value, and its running score.
    pub val_score: f64,
    pub val_running: f64,
    /// The selection metric on the test split (reporting only).
    pub test_score: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
    pub train_seconds: f64,
    pub val_seconds: f64,
    /// Beat the best validation score so far (a snapshot was taken).
    pub improved: bool,
    /// Beat the best score of the current dendrite set (the tracker's
    /// "last improved" epoch).
    pub improved_current: bool,
    /// Its weights were thrown away by a later restore.
    pub discarded: bool,
    /// Dendrites per wrapped layer during this epoch.
    pub dendrites: usize,
    pub dendrite_params: usize,
    pub total_params: usize,
    /// Mean |T| per wrapped layer at the end of the epoch.
    pub gates: Vec<(String, f64)>,
}

/// Receives progress while training runs.
pub trait Progress {
    fn start_epoch(&mut self, _epoch: usize, _steps: usize) {}
    fn step(&mut self, _epoch: usize, _step: usize, _loss: f64) {}
    fn end_epoch(&mut self, _record: &EpochRecord) {}
    /// Polled before every batch: `true` stops training with [`STOPPED`].
    fn should_stop(&self) -> bool {
        false
    }
}

/// The error message of a run stopped through [`Progress::should_stop`].
pub const STOPPED: &str = "training stopped on request";

/// A sink that ignores progress.
pub struct Quiet;
impl Progress for Quiet {}

/// The trained parameters of the best epoch, and how training went.
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

/// Balanced class weights `n / (k * count_c)` (scikit-learn's "balanced").
pub fn balanced_weights(labels: &[usize], classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l] += 1;
    }
    let n = labels.len() as f64;
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (classes as f64 * c as f64)
            }
        })
        .collect()
}

/// Weighted cross-entropy with PyTorch's semantics:
/// `sum_i w[y_i] * nll_i / sum_i w[y_i]`. `logits`: `[b, k]` f32.
pub fn cross_entropy(logits: &Tensor, labels: &[usize], weights: Option<&[f64]>) -> Result<Tensor> {
    let (b, _) = logits.dims2()?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let idx = Tensor::from_vec(
        labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        (b, 1),
        logits.device(),
    )?;
    let picked = logp.gather(&idx, 1)?.squeeze(1)?; // [b]
    let w: Vec<f32> = labels
        .iter()
        .map(|&l| weights.map_or(1.0, |w| w[l] as f32))
        .collect();
    let total: f32 = w.iter().sum();
    let w = Tensor::from_vec(w, b, logits.device())?;
    (picked * w)?.sum_all()? * (-1.0 / total as f64)
}

/// Batches of indices: shuffled, then grouped by similar length (within
/// windows of 50 batches) to cut padding, then the batches shuffled.
pub fn make_batches(lengths: &[usize], batch: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.shuffle(rng);
    let window = batch * 50;
    let mut batches = Vec::new();
    for chunk in idx.chunks(window) {
        let mut c = chunk.to_vec();
        c.sort_by_key(|&i| lengths[i]);
        batches.extend(c.chunks(batch).map(|b| b.to_vec()));
    }
    batches.shuffle(rng);
    batches
}

/// Loss and predictions on a split (dropout off), batched by length.
pub fn evaluate(
    model: &Model,
    data: &Encoded,
    batch_size: usize,
    device: &Device,
    weights: Option<&[f64]>,
) -> Result<(f64, Vec<usize>)> {
    let ctx = Ctx::eval();
    let mut order: Vec<usize> = (0..data.ids.len()).collect();
    order.sort_by_key(|&i| data.ids[i].len());
    let mut preds = vec![0usize; data.ids.len()];
    let mut loss_sum = 0.0;
    let mut weight_sum = 0.0;
    for chunk in order.chunks(batch_size.max(1)) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| data.ids[i].clone()).collect();
        let labels: Vec<usize> = chunk.iter().map(|&i| data.labels[i]).collect();
        let batch = Batch::new(&rows, model.pad_id(), device)?;
        let logits = model.forward(&batch, &ctx)?.detach();
        let w: f64 = labels.iter().map(|&l| weights.map_or(1.0, |w| w[l])).sum();
        let loss = cross_entropy(&logits, &labels, weights)?.to_scalar::<f32>()? as f64;
        loss_sum += loss * w;
        weight_sum += w;
        let am = logits.argmax(1)?.to_vec1::<u32>()?;
        for (&i, p) in chunk.iter().zip(am) {
            preds[i] = p as usize;
        }
    }
    Ok((loss_sum / weight_sum.max(1e-12), preds))
}

fn score_of(s: &Scores, metric: Metric) -> f64 {
    match metric {
        Metric::Accuracy => s.accuracy,
        Metric::MacroF1 => s.macro_f1,
    }
}

/// What a training run needs besides the model and data.
pub struct RunConfig<'a> {
    pub train: &'a TrainSpec,
    pub tracker: &'a TrackerSpec,
    /// `Some` for the dendritic variant.
    pub dendrites: Option<&'a DendriteSpec>,
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

struct Snapshot {
    vars: Vec<Tensor>,
    dendrites: Vec<Option<crate::engine::nn::dendrite::Dendrites>>,
    state: TrackerState,
    epoch: usize,
}

fn build_optimizer(
    trainable: &[(String, Var)],
    head_prefixes: &[&str],
    spec: &TrainSpec,
) -> Result<AdamW> {
    let head_mult = spec.head_lr.map_or(1.0, |h| h / spec.lr);
    let groups: Vec<(String, Var, f64)> = trainable
        .iter()
        .map(|(n, v)| {
            let head = head_prefixes.iter().any(|p| n.starts_with(p)) && !n.contains(".dendrites.");
            (n.clone(), v.clone(), if head { head_mult } else { 1.0 })
        })
        .collect();
    AdamW::new(&groups, spec.weight_decay)
}

fn param_count(vars: &[(String, Var)]) -> usize {
    vars.iter().map(|(_, v)| v.elem_count()).sum()
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
) -> Result<Trained> {
    let spec = cfg.train;
    let classes = cfg.labels.len();
    let weights = spec
        .class_weights
        .then(|| balanced_weights(&sets.train.labels, classes));
    let tcfg = TrackerConfig::from_spec(
        cfg.tracker,
        cfg.dendrites.is_some(),
        cfg.dendrites.map_or(0, |d| d.max),
        cfg.dendrites.map_or(1, |d| d.max_tries),
    );
    let base_vars: Vec<Var> = base_trainable.iter().map(|(_, v)| v.clone()).collect();
    let mut trainable: Vec<(String, Var)> = base_trainable.to_vec();
    trainable.extend(model.dendrite_trainables());
    let mut vars: Vec<Var> = trainable.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = build_optimizer(&trainable, cfg.head_prefixes, spec)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut dendrite_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x00de_4d21_7e00);
    let lengths: Vec<usize> = sets.train.ids.iter().map(|r| r.len()).collect();
    let micro_per_epoch = sets.train.ids.len().div_ceil(spec.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(spec.grad_accum);
    // The schedule restarts (warm-up, then decay over the remaining budget)
    // whenever dendrites are added.
    let mut phase_start = 0usize;
    let mut phase_steps = steps_per_epoch * spec.epochs;
    let mut warmup = (spec.warmup * phase_steps as f64).round() as usize;
    let mut plateau_mult = 1.0;
    let mut last_reduce = 0usize;
    let mut step = 0usize;
    let mut state = TrackerState::default();
    let mut best: Option<Snapshot> = None;
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut switches = Vec::new();
    let started = Instant::now();
    for epoch in 1..=spec.epochs {
        let t0 = Instant::now();
        let batches = make_batches(&lengths, spec.batch_size, &mut rng);
        progress.start_epoch(epoch, batches.len());
        let ctx = Ctx::new(
            true,
            ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1000).wrapping_add(epoch as u64)),
        );
        let mut acc: Option<GradStore> = None;
        let mut in_acc = 0;
        let mut loss_sum = 0.0;
        let mut lr = 0.0;
        for (bi, b) in batches.iter().enumerate() {
            if progress.should_stop() {
                candle_core::bail!("{STOPPED}");
            }
            let rows: Vec<Vec<u32>> = b.iter().map(|&i| sets.train.ids[i].clone()).collect();
            let ys: Vec<usize> = b.iter().map(|&i| sets.train.labels[i]).collect();
            let batch = Batch::new(&rows, model.pad_id(), device)?;
            let logits = model.forward(&batch, &ctx)?;
            let loss = cross_entropy(&logits, &ys, weights.as_deref())?;
            let loss_val = loss.to_scalar::<f32>()? as f64;
            if !loss_val.is_finite() {
                candle_core::bail!("loss is {loss_val} at epoch {epoch}, batch {bi}");
            }
            loss_sum += loss_val;
            let grads = (loss / spec.grad_accum as f64)?.backward()?;
            accumulate(&mut acc, grads, &vars)?;
            in_acc += 1;
            let last = bi + 1 == batches.len();
            if in_acc == spec.grad_accum || last {
                let Some(mut store) = acc.take() else {
                    candle_core::bail!("no gradients to apply");
                };
                if in_acc < spec.grad_accum {
                    // A short final group: rescale to a mean over what it had.
                    optim::scale_grads(&mut store, &vars, spec.grad_accum as f64 / in_acc as f64)?;
                }
                let norm = optim::grad_norm(&store, &vars)?;
                let f = optim::clip_factor(norm, spec.clip_norm);
                if f != 1.0 {
                    optim::scale_grads(&mut store, &vars, f)?;
                }
                lr = optim::scheduled_lr(
                    spec.lr,
                    step - phase_start,
                    phase_steps,
                    warmup,
                    spec.schedule,
                ) * plateau_mult;
                opt.step(&store, lr)?;
                step += 1;
                in_acc = 0;
            }
            progress.step(epoch, bi + 1, loss_val);
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let train_loss = loss_sum / batches.len().max(1) as f64;
        let t1 = Instant::now();
        let (val_loss, preds) = evaluate(
            model,
            sets.val,
            spec.batch_size.max(32),
            device,
            weights.as_deref(),
        )?;
        let s = metrics::scores(&preds, &sets.val.labels, cfg.labels);
        let score = score_of(&s, spec.metric);
        let val_seconds = t1.elapsed().as_secs_f64();
        let test_score = match sets.test {
            Some(test) if cfg.tracker.test_every_epoch => {
                let (_, tp) = evaluate(
                    model,
                    test,
                    spec.batch_size.max(32),
                    device,
                    weights.as_deref(),
                )?;
                Some(score_of(
                    &metrics::scores(&tp, &test.labels, cfg.labels),
                    spec.metric,
                ))
            }
            _ => None,
        };

        let tstep =
            tracker::add_validation_score(&tcfg, &state, best.as_ref().map(|b| &b.state), score);
        let improved = tstep.snapshot.is_some();
        let improved_current = tstep.improved_current;
        if let Some(snap_state) = tstep.snapshot.clone() {
            best = Some(Snapshot {
                vars: base_vars
                    .iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<Result<_>>()?,
                dendrites: model.dendrite_snapshot()?,
                state: snap_state,
                epoch,
            });
        }
        let summary = model.dendrite_summary()?;
        let dendrite_params =
            param_count(&trainable) - param_count(base_trainable) + frozen_dendrite_params(model);
        let record = EpochRecord {
            epoch,
            train_loss,
            val_loss,
            val_accuracy: s.accuracy,
            val_macro_f1: s.macro_f1,
            val_score: score,
            val_running: tstep.running,
            test_score,
            lr,
            seconds: train_seconds + val_seconds,
            train_seconds,
            val_seconds,
            improved,
            improved_current,
            discarded: false,
            dendrites: summary.first().map_or(0, |d| d.1),
            dendrite_params,
            total_params: cfg.frozen_params + param_count(base_trainable) + dendrite_params,
            gates: summary.iter().map(|(n, _, g)| (n.clone(), *g)).collect(),
        };
        progress.end_epoch(&record);
        history.push(record);

        let mut decision = tstep.decision;
        state = tstep.state;
        // The budget is spent: nothing more is added, the best snapshot wins.
        if epoch == spec.epochs && decision != Decision::Complete {
            decision = Decision::Complete;
        }
        // The smoke mode keeps what it grew; real runs restore the best.
        if decision != Decision::Continue && !tcfg.testing_capacity {
            if let Some(b) = &best {
                for (v, t) in base_vars.iter().zip(&b.vars) {
                    v.set(t)?;
                }
                model.restore_dendrites(&b.dendrites)?;
                for r in history.iter_mut().filter(|r| r.epoch > b.epoch) {
                    r.discarded = true;
                }
            }
        }
        match decision {
            Decision::Continue => {
                if let Some((factor, patience)) =
                    spec.plateau_factor.map(|f| (f, spec.plateau_patience))
                {
                    let since_improved =
                        state.epoch - 1 - state.epoch_last_improved.min(state.epoch - 1);
                    if tracker::plateau_reduce(since_improved, epoch - last_reduce, patience) {
                        plateau_mult *= factor;
                        last_reduce = epoch;
                    }
                }
            }
            Decision::Restructure => {
                model.add_dendrite_set(
                    &mut dendrite_rng,
                    cfg.dendrites.map_or(0.01, |d| d.init_scale),
                )?;
                switches.push(epoch);
                trainable = base_trainable.to_vec();
                trainable.extend(model.dendrite_trainables());
                vars = trainable.iter().map(|(_, v)| v.clone()).collect();
                opt = build_optimizer(&trainable, cfg.head_prefixes, spec)?;
                phase_start = step;
                phase_steps = steps_per_epoch * (spec.epochs - epoch).max(1);
                warmup = (spec.warmup * phase_steps as f64).round() as usize;
                plateau_mult = 1.0;
                last_reduce = epoch;
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
        steps: step,
    })
}

fn frozen_dendrite_params(model: &mut Model) -> usize {
    model
        .dendrite_tensors()
        .iter()
        .filter_map(|(_, p)| match p {
            crate::engine::nn::params::Param::Frozen(t) => Some(t.elem_count()),
            _ => None,
        })
        .sum()
}

/// A gradient store with no entries (candle offers no constructor): the
/// backward of an untracked constant holds only that constant.
fn empty_store() -> Result<GradStore> {
    let c = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
    let mut s = c.backward()?;
    s.remove(&c);
    Ok(s)
}

/// Adds this micro-batch's parameter gradients into `acc`, keeping only
/// the parameters' entries (intermediate gradients are dropped at once).
fn accumulate(acc: &mut Option<GradStore>, mut grads: GradStore, vars: &[Var]) -> Result<()> {
    match acc {
        None => {
            let mut store = empty_store()?;
            for v in vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    store.insert(v.as_tensor(), g);
                }
            }
            *acc = Some(store);
        }
        Some(store) => {
            for v in vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    let sum = match store.remove(v.as_tensor()) {
                        Some(prev) => (prev + g)?,
                        None => g,
                    };
                    store.insert(v.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_weights_as_sklearn() {
        let w = balanced_weights(&[0, 1, 1, 1, 2, 2], 3);
        assert!((w[0] - 2.0).abs() < 1e-12);
        assert!((w[1] - 2.0 / 3.0).abs() < 1e-12);
        assert!((w[2] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn weighted_cross_entropy_matches_formula() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &dev).unwrap();
        let w = [0.5, 1.0, 2.0];
        let got = cross_entropy(&logits, &[1, 0], Some(&w))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        let nll0 = lse([1.0, 2.0, 0.5]) - 2.0;
        let nll1 = lse([0.0, 0.0, 3.0]) - 0.0;
        let want = (1.0 * nll0 + 0.5 * nll1) / 1.5;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn batches_cover_every_index_once() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 7) % 40 + 1).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let b = make_batches(&lengths, 16, &mut rng);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert!(b.iter().all(|x| x.len() <= 16));
        let mut rng2 = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(b, make_batches(&lengths, 16, &mut rng2));
    }
}
