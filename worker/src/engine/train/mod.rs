//! The training loop: batching, class-weighted loss, gradient accumulation
//! and clipping, the optimiser and schedule, per-epoch validation with
//! best-checkpoint selection, then test metrics at the best epoch.
//! Progress goes to an injected [`Progress`] sink; the loop itself does no IO.

pub mod optim;

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use common::spec::{Metric, TrainSpec};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::engine::metrics::{self, Scores};
use crate::engine::models::{Batch, Model};
use crate::engine::nn::Ctx;
use optim::{AdamW, Selection};

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
    pub lr: f64,
    pub seconds: f64,
    pub improved: bool,
}

/// Receives progress while training runs.
pub trait Progress {
    fn start_epoch(&mut self, _epoch: usize, _steps: usize) {}
    fn step(&mut self, _epoch: usize, _step: usize, _loss: f64) {}
    fn end_epoch(&mut self, _record: &EpochRecord) {}
}

/// A sink that ignores progress.
pub struct Quiet;
impl Progress for Quiet {}

/// The trained parameters of the best epoch, and how training went.
pub struct Trained {
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
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

/// Trains `model` in place and leaves it holding the best epoch's weights.
/// `trainable`: (name, var) of every trained tensor; names decide the
/// weight-decay group and whether the head learning rate applies.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Model,
    trainable: &[(String, Var)],
    head_prefixes: &[&str],
    spec: &TrainSpec,
    train_set: &Encoded,
    val_set: &Encoded,
    labels: &[&str],
    seed: u64,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Trained> {
    let classes = labels.len();
    let weights = spec
        .class_weights
        .then(|| balanced_weights(&train_set.labels, classes));
    let head_mult = spec.head_lr.map_or(1.0, |h| h / spec.lr);
    let groups: Vec<(String, Var, f64)> = trainable
        .iter()
        .map(|(n, v)| {
            let mult = if head_prefixes.iter().any(|p| n.starts_with(p)) {
                head_mult
            } else {
                1.0
            };
            (n.clone(), v.clone(), mult)
        })
        .collect();
    let vars: Vec<Var> = trainable.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(&groups, spec.weight_decay)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lengths: Vec<usize> = train_set.ids.iter().map(|r| r.len()).collect();
    let micro_per_epoch = train_set.ids.len().div_ceil(spec.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(spec.grad_accum);
    let total_steps = steps_per_epoch * spec.epochs;
    let warmup = (spec.warmup * total_steps as f64).round() as usize;
    let mut plateau_mult = 1.0;
    let mut step = 0usize;
    let mut sel = Selection::default();
    let mut best: Option<Vec<Tensor>> = None;
    let mut history = Vec::new();
    let started = Instant::now();
    for epoch in 1..=spec.epochs {
        let t0 = Instant::now();
        let batches = make_batches(&lengths, spec.batch_size, &mut rng);
        progress.start_epoch(epoch, batches.len());
        let ctx = Ctx::new(
            true,
            ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(epoch as u64)),
        );
        let mut acc: Option<GradStore> = None;
        let mut in_acc = 0;
        let mut loss_sum = 0.0;
        let mut lr = 0.0;
        for (bi, b) in batches.iter().enumerate() {
            let rows: Vec<Vec<u32>> = b.iter().map(|&i| train_set.ids[i].clone()).collect();
            let ys: Vec<usize> = b.iter().map(|&i| train_set.labels[i]).collect();
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
                lr = optim::scheduled_lr(spec.lr, step, total_steps, warmup, spec.schedule)
                    * plateau_mult;
                opt.step(&store, lr)?;
                step += 1;
                in_acc = 0;
            }
            progress.step(epoch, bi + 1, loss_val);
        }
        let train_loss = loss_sum / batches.len().max(1) as f64;
        let (val_loss, preds) = evaluate(
            model,
            val_set,
            spec.batch_size.max(32),
            device,
            weights.as_deref(),
        )?;
        let s = metrics::scores(&preds, &val_set.labels, labels);
        let (next, decision) = optim::on_epoch_end(
            &sel,
            epoch,
            score_of(&s, spec.metric),
            spec.plateau_factor.map(|f| (f, spec.plateau_patience)),
            spec.early_stop_patience,
        );
        sel = next;
        if decision.improved {
            best = Some(
                vars.iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<Result<_>>()?,
            );
        }
        plateau_mult *= decision.lr_factor;
        let record = EpochRecord {
            epoch,
            train_loss,
            val_loss,
            val_accuracy: s.accuracy,
            val_macro_f1: s.macro_f1,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
            improved: decision.improved,
        };
        progress.end_epoch(&record);
        history.push(record);
        if decision.stop {
            break;
        }
    }
    if let Some(best) = best {
        for (v, t) in vars.iter().zip(best) {
            v.set(&t)?;
        }
    }
    Ok(Trained {
        history,
        best_epoch: sel.best_epoch,
        train_seconds: started.elapsed().as_secs_f64(),
        steps: step,
    })
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
