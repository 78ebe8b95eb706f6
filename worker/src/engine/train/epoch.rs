//! One epoch of training (length-bucketed shuffled batches, dropout on,
//! gradient accumulation, one optimiser step per group) and one of
//! validation (loss and scores on the validation split, and the selection
//! metric on the test split when configured).

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use common::metrics::{self, Scores};
use common::spec::Metric;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::accumulate::GradAccumulator;
use super::fused_step::StepSpec;
use super::loss::cross_entropy;
use super::optim::AdamW;
use super::schedule::LrSchedule;
use super::{Encoded, Progress, RunConfig, Sets, TrainError};
use crate::engine::models::{Batch, Model};
use crate::engine::nn::Pass;

/// The parameters being trained and their optimiser; rebuilt whenever
/// dendrites are added.
pub struct Optimised {
    /// The parameters' names, in the optimiser's order.
    pub names: Vec<String>,
    pub vars: Vec<Var>,
    pub opt: AdamW,
}

impl Optimised {
    /// `base` and the model's dendrite tensors, with a fresh AdamW: the
    /// head, its dendrites included, gets `head_lr / lr` as its multiplier;
    /// dendrite tensors get `dendrites.weight_decay` (none by default) and
    /// `dendrites.lr` when set.
    pub fn new(base: &[(String, Var)], model: &mut Model, cfg: &RunConfig) -> Result<Self> {
        let mut trainable = base.to_vec();
        trainable.extend(model.dendrite_trainables());
        let spec = cfg.train;
        let added = Added {
            weight_decay: cfg.dendrites.map_or(0.0, |d| d.weight_decay),
            lr: cfg.dendrites.and_then(|d| d.lr),
        };
        let groups: Vec<(String, Var, f64, f64)> = trainable
            .iter()
            .map(|(n, v)| {
                let (mult, wd) = group_of(n, cfg.head_prefixes, spec, added);
                (n.clone(), v.clone(), mult, wd)
            })
            .collect();
        Ok(Optimised {
            names: trainable.iter().map(|(n, _)| n.clone()).collect(),
            vars: trainable.iter().map(|(_, v)| v.clone()).collect(),
            opt: AdamW::with_groups(&groups)?,
        })
    }

    /// Elements of every trained tensor.
    pub fn param_count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }
}

/// What the added tensors (dendrite sets, branches) train with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Added {
    pub weight_decay: f64,
    /// Their own learning rate (`dendrites.lr`), else their layer's.
    pub lr: Option<f64>,
}

/// A parameter's learning-rate multiplier and weight decay: the head, its
/// dendrites included, trains at `head_lr`, unless `added.lr` sets the
/// rate of the added tensors; those get `added.weight_decay`, everything
/// else `train.weight_decay`.
pub fn group_of(
    name: &str,
    head_prefixes: &[&str],
    spec: &common::spec::TrainSpec,
    added: Added,
) -> (f64, f64) {
    let head = head_prefixes.iter().any(|p| name.starts_with(p));
    let mult = match added.lr {
        Some(lr) if is_dendrite(name) => lr / spec.lr,
        _ if head => spec.head_lr.map_or(1.0, |h| h / spec.lr),
        _ => 1.0,
    };
    let wd = if is_dendrite(name) {
        added.weight_decay
    } else {
        spec.weight_decay
    };
    (mult, wd)
}

/// Whether a parameter belongs to a dendrite set (modules, gates, cascade).
pub fn is_dendrite(name: &str) -> bool {
    name.contains(".dendrites.")
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

/// What a training epoch measured.
pub struct Fit {
    /// Mean micro-batch loss.
    pub loss: f64,
    /// Optimiser steps whose gradients had a non-finite norm (no update).
    pub skipped_steps: u64,
    /// The learning rate of the last optimiser step.
    pub lr: f64,
    /// The lowest and highest learning rate of the epoch's steps.
    pub lr_range: (f64, f64),
    pub seconds: f64,
}

/// Micro-batch losses are read from the device this often (and at the end
/// of the epoch): a read waits for the device, so reading after every
/// forward would stall an accelerator's queue before each backward. A
/// non-finite loss is still reported with its batch; its gradients have a
/// non-finite norm, so no optimiser step applied them meanwhile.
const LOSS_READ_EVERY: usize = 8;

/// Trains one epoch (1-based `epoch`) over `data`.
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &Model,
    params: &mut Optimised,
    schedule: &mut LrSchedule,
    data: &Encoded,
    cfg: &RunConfig,
    weights: Option<&[f64]>,
    epoch: usize,
    rng: &mut ChaCha8Rng,
    device: &Device,
    progress: &mut dyn Progress,
) -> std::result::Result<Fit, TrainError> {
    let started = Instant::now();
    let spec = cfg.train;
    let lengths: Vec<usize> = data.ids.iter().map(|r| r.len()).collect();
    let batches = make_batches(&lengths, spec.batch_size, rng);
    progress.start_epoch(epoch, batches.len());
    let ctx = Pass::new(
        true,
        ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1000).wrapping_add(epoch as u64)),
    );
    let mut acc = GradAccumulator::new(spec.grad_accum);
    let skipped_before = params.opt.skipped()?;
    let (mut loss_sum, mut lr) = (0.0, 0.0);
    let mut lr_range = (f64::INFINITY, f64::NEG_INFINITY);
    let mut pending: Vec<Tensor> = Vec::with_capacity(LOSS_READ_EVERY);
    for (bi, b) in batches.iter().enumerate() {
        if progress.should_stop() {
            return Err(TrainError::Stopped);
        }
        let ys: Vec<usize> = b.iter().map(|&i| data.labels[i]).collect();
        let logits = logits_of(model, data, b, device, &ctx)?;
        let loss = cross_entropy(&logits, &ys, weights)?;
        pending.push(loss.detach());
        acc.add(acc.scale_loss(&loss)?.backward()?, &params.vars)?;
        if acc.ready(bi + 1 == batches.len()) {
            // The optimiser skips the update when the gradients' norm is
            // not finite; the schedule moves on either way (the count of
            // skipped steps is read with the epoch's end).
            let (grads, rescale) = acc.take()?;
            lr = schedule.lr();
            lr_range = (lr_range.0.min(lr), lr_range.1.max(lr));
            let step = StepSpec {
                lr,
                rescale,
                clip: spec.clip_norm,
            };
            params.opt.step_with(&grads, step)?;
            schedule.advance();
        }
        if pending.len() == LOSS_READ_EVERY || bi + 1 == batches.len() {
            let first = bi + 1 - pending.len();
            let values = Tensor::stack(&pending, 0)?.to_vec1::<f32>()?;
            pending.clear();
            for (i, v) in values.into_iter().enumerate() {
                let v = v as f64;
                if !v.is_finite() {
                    return Err(TrainError::NonFinite {
                        loss: v,
                        epoch,
                        batch: first + i,
                    });
                }
                loss_sum += v;
                progress.step(epoch, first + i + 1, v);
            }
        }
    }
    Ok(Fit {
        loss: loss_sum / batches.len().max(1) as f64,
        skipped_steps: params.opt.skipped()? - skipped_before,
        lr,
        lr_range: if lr_range.0 <= lr_range.1 {
            lr_range
        } else {
            (lr, lr)
        },
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The logits of rows `rows` of `data`: the head on cached features, or
/// the whole network on the token ids.
fn logits_of(
    model: &Model,
    data: &Encoded,
    rows: &[usize],
    device: &Device,
    ctx: &Pass,
) -> Result<Tensor> {
    match &data.features {
        Some(f) => {
            let idx: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
            let idx = Tensor::from_vec(idx, rows.len(), f.device())?;
            model.head(&f.index_select(&idx, 0)?, ctx)
        }
        None => {
            let ids: Vec<Vec<u32>> = rows.iter().map(|&i| data.ids[i].clone()).collect();
            model.forward(&Batch::new(&ids, model.pad_id(), device)?, ctx)
        }
    }
}

/// Computes the body's output for every row once (dropout off, no graph)
/// and stores it in `data.features`: a frozen body then costs one forward
/// pass instead of one per epoch ([`crate::engine::features`] keeps it
/// across runs).
pub fn cache_features(
    model: &Model,
    data: &mut Encoded,
    batch_size: usize,
    device: &Device,
) -> Result<()> {
    let ctx = Pass::inference();
    let mut order: Vec<usize> = (0..data.ids.len()).collect();
    order.sort_by_key(|&i| data.ids[i].len());
    let mut parts: Vec<(usize, Tensor)> = Vec::new();
    for chunk in order.chunks(batch_size.max(1)) {
        crate::engine::beat::beat();
        let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| data.ids[i].clone()).collect();
        let f = model
            .body(&Batch::new(&rows, model.pad_id(), device)?, &ctx)?
            .detach();
        for (k, &i) in chunk.iter().enumerate() {
            parts.push((i, f.get(k)?));
        }
    }
    parts.sort_by_key(|(i, _)| *i);
    let rows: Vec<Tensor> = parts.into_iter().map(|(_, t)| t).collect();
    data.features = Some(Tensor::stack(&rows, 0)?);
    Ok(())
}

/// Loss and predictions on a split (dropout off), batched by length.
pub fn evaluate(
    model: &Model,
    data: &Encoded,
    batch_size: usize,
    device: &Device,
    weights: Option<&[f64]>,
) -> Result<(f64, Vec<usize>)> {
    evaluate_with(model, data, batch_size, device, weights, &Pass::inference())
}

/// [`evaluate`] under a given context (e.g. [`Pass::knockout`]).
pub fn evaluate_with(
    model: &Model,
    data: &Encoded,
    batch_size: usize,
    device: &Device,
    weights: Option<&[f64]>,
    ctx: &Pass,
) -> Result<(f64, Vec<usize>)> {
    let mut order: Vec<usize> = (0..data.ids.len()).collect();
    order.sort_by_key(|&i| data.ids[i].len());
    let mut preds = vec![0usize; data.ids.len()];
    let mut loss_sum = 0.0;
    let mut weight_sum = 0.0;
    for chunk in order.chunks(batch_size.max(1)) {
        crate::engine::beat::beat();
        let labels: Vec<usize> = chunk.iter().map(|&i| data.labels[i]).collect();
        let logits = logits_of(model, data, chunk, device, ctx)?.detach();
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

/// The selection metric's value.
pub fn score_of(s: &Scores, metric: Metric) -> f64 {
    match metric {
        Metric::Accuracy => s.accuracy,
        Metric::MacroF1 => s.macro_f1,
    }
}

/// What a validation pass measured.
pub struct Checked {
    pub loss: f64,
    pub scores: Scores,
    /// The selection metric on the validation split.
    pub score: f64,
    /// The selection metric on the test split (reporting only).
    pub test_score: Option<f64>,
    pub seconds: f64,
}

/// Scores the model on the validation split, and on the test split when
/// the tracker asks for a test score every epoch.
pub fn validate_epoch(
    model: &Model,
    sets: &Sets,
    cfg: &RunConfig,
    weights: Option<&[f64]>,
    device: &Device,
) -> Result<Checked> {
    let started = Instant::now();
    let spec = cfg.train;
    let eval_bs = spec.batch_size.max(32);
    let (loss, preds) = evaluate(model, sets.val, eval_bs, device, weights)?;
    let scores = metrics::scores(&preds, &sets.val.labels, cfg.labels);
    let score = score_of(&scores, spec.metric);
    let seconds = started.elapsed().as_secs_f64();
    let test_score = match sets.test {
        Some(test) if cfg.tracker.test_every_epoch => {
            let (_, tp) = evaluate(model, test, eval_bs, device, weights)?;
            Some(score_of(
                &metrics::scores(&tp, &test.labels, cfg.labels),
                spec.metric,
            ))
        }
        _ => None,
    };
    Ok(Checked {
        loss,
        scores,
        score,
        test_score,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dendrites_train_at_the_head_rate_without_decay() {
        let spec = common::spec::TrainSpec {
            lr: 1e-4,
            head_lr: Some(1e-3),
            weight_decay: 0.01,
            ..Default::default()
        };
        let heads = ["classifier."];
        let g = |n: &str| group_of(n, &heads, &spec, Added::default());
        assert_eq!(g("classifier.weight"), (10.0, 0.01));
        assert_eq!(g("classifier.dendrites.0.T"), (10.0, 0.0));
        assert_eq!(g("classifier.dendrites.1.weight"), (10.0, 0.0));
        assert_eq!(g("bert.pooler.dense.dendrites.0.weight"), (1.0, 0.0));
        assert_eq!(
            g("bert.encoder.layer.0.attention.self.query.weight"),
            (1.0, 0.01)
        );
        let wd = Added {
            weight_decay: 0.05,
            lr: None,
        };
        assert_eq!(group_of("x.dendrites.0.D", &heads, &spec, wd).1, 0.05);
    }

    #[test]
    fn added_tensors_train_at_their_own_rate_and_the_head_keeps_its_own() {
        let spec = common::spec::TrainSpec {
            lr: 1e-2,
            weight_decay: 0.01,
            ..Default::default()
        };
        let heads = ["classifier."];
        let added = Added {
            weight_decay: 0.0,
            lr: Some(5e-3),
        };
        let g = |n: &str| group_of(n, &heads, &spec, added);
        assert_eq!(g("classifier.weight"), (1.0, 0.01));
        assert_eq!(g("classifier.dendrites.0.weight"), (0.5, 0.0));
        assert_eq!(g("bert.pooler.dense.dendrites.1.T"), (0.5, 0.0));
        assert_eq!(g("bert.pooler.dense.weight"), (1.0, 0.01));
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
