//! The two things a job does: [`run`] (load and split the data, build the
//! model, train, score the test split at the best epoch, measure speed and
//! render every artifact in memory) and [`validate`] (score earlier
//! trained parameters on a split of the same data). Both take the typed
//! splits from [`load::load_splits`]; callers decide where the files go.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use common::artifacts::files;
use common::job::EvalSplit;
use common::metrics;
use common::spec::{JobSpec, ModelSpec, Variant};
use common::summary::{Ablated, Knockout, RunSummary, ValidationSummary};

use super::base_model::BaseModel;
use super::data::LABELS;
use super::error::JobError;
use super::expand_env;
use super::load::{load_model, load_splits};
use super::models::{head_prefixes, Model};
use super::nn::Pass;
use super::speed::measure_speed;
use super::train::checkpoint::Checkpoint;
use super::train::{self, evaluate, evaluate_with, Progress, RunConfig, Sets};
use super::trained::{trained_safetensors, RunIds};

/// A finished run: its record and its files, rendered in memory.
pub struct RunOutput {
    pub summary: RunSummary,
    pub files: report::Files,
}

/// A short model name for tables: the last component of the path or hub id.
pub fn model_name(m: &ModelSpec) -> String {
    let raw = m.path.as_deref().or(m.hub_id.as_deref()).unwrap_or("?");
    let expanded = expand_env(raw).unwrap_or_else(|_| raw.to_string());
    let trimmed = expanded.trim_end_matches('/');
    let last = Path::new(trimmed)
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| trimmed.to_string());
    // Package layouts end in a generic "model" folder: use its parent.
    if last == "model" {
        Path::new(trimmed)
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or(last)
    } else {
        last
    }
}

/// Runs one job to completion; `resume`: the bytes of a checkpoint an
/// earlier attempt of the job wrote ([`Progress::checkpoint`]), used when
/// it is one of this configuration (otherwise the run starts afresh).
pub fn run(
    spec: &JobSpec,
    ids: &RunIds,
    device: &Device,
    progress: &mut dyn Progress,
    resume: Option<&[u8]>,
) -> Result<RunOutput, JobError> {
    let started = Instant::now();
    spec.validate().map_err(|e| JobError::Spec(e.to_string()))?;
    let resume = resume.and_then(|bytes| resumable(bytes, ids));
    let (split, stats) = load_splits(spec)?;
    let labels: Vec<&str> = LABELS.to_vec();
    let loaded = load_model(spec, labels.len(), device, &[])?;
    let base_model = BaseModel::of_dir(&loaded.dir)?;
    let eval_bs = spec.train.batch_size.max(32);
    let [tr, va, te] = encode_splits(spec, &loaded, &split, eval_bs, device)?;
    let adds_sets = matches!(spec.variant, Variant::Dendritic | Variant::Branch);
    let mut model = loaded.model;
    let base_trainable = loaded.trainable;
    let trained = train::train(
        &mut model,
        &base_trainable,
        &RunConfig {
            train: &spec.train,
            tracker: &spec.tracker,
            dendrites: spec.variant.restructures().then_some(&spec.dendrites),
            add_sets: adds_sets,
            head_prefixes: head_prefixes(spec.model.arch),
            labels: &labels,
            seed: spec.seed,
            frozen_params: loaded.frozen_params,
            key: ids.config_hash,
        },
        &Sets {
            train: &tr,
            val: &va,
            test: Some(&te),
        },
        device,
        progress,
        resume.as_ref(),
    )?;
    let weights = spec
        .train
        .class_weights
        .then(|| train::balanced_weights(&tr.labels, labels.len()));
    let (_, val_pred) = evaluate(&model, &va, eval_bs, device, weights.as_deref())?;
    let (_, test_pred) = evaluate(&model, &te, eval_bs, device, weights.as_deref())?;
    // Every dendritic or branch run gets a knock-out score, even one whose
    // kept network has no set (then it equals the plain score), so the
    // knocked-out arm has the same runs as its arm.
    let knockout = if adds_sets {
        Some(knockouts(
            &model,
            [&tr, &va, &te],
            eval_bs,
            device,
            &labels,
        )?)
    } else {
        None
    };
    let (saved, dendrite_params) = kept_tensors(&mut model, &base_trainable)?;
    // The branch arm's gates and cascades are constants, not trained.
    let constant_dendrite_params = model.constant_dendrite_params();
    let layout = model.dendrite_summary()?;
    let trained_file =
        trained_safetensors(&saved, spec, ids, &trained.tracker, &layout, &base_model)?;

    model.merge_lora()?;
    let speed = measure_speed(&model, &te.ids, device)?;
    let no_set =
        common::summary::no_set_note(adds_sets, &trained.switch_epochs, trained.history.len());
    let none_kept = common::summary::no_set_kept_note(
        adds_sets,
        &trained.switch_epochs,
        layout.first().map_or(0, |d| d.1),
        trained.best_epoch,
    );
    let summary = RunSummary {
        job_id: ids.job_id.to_string(),
        sweep: ids.sweep.to_string(),
        config_hash: ids.config_hash.to_string(),
        model: model_name(&spec.model),
        device: format!("{device:?}"),
        data: stats,
        split_sizes: [tr.ids.len(), va.ids.len(), te.ids.len()],
        epochs_run: trained.history.len(),
        history: trained.history,
        best_epoch: trained.best_epoch,
        optimizer_steps: trained.steps,
        val: metrics::scores(&val_pred, &va.labels, &labels),
        test: metrics::scores(&test_pred, &te.labels, &labels),
        test_labels: te.labels.clone(),
        test_predictions: test_pred,
        knockout,
        resumed_after: resume.as_ref().map(Checkpoint::epoch),
        notes: no_set.into_iter().chain(none_kept).collect(),
        speed,
        total_params: loaded.frozen_params + loaded.trainable_params + dendrite_params,
        trainable_params: loaded.trainable_params + dendrite_params - constant_dendrite_params,
        dendrites: layout.first().map_or(0, |d| d.1),
        dendrite_params,
        dendrite_layers: loaded.dendrite_layers,
        switch_epochs: trained.switch_epochs,
        tracker: trained.tracker,
        train_seconds: trained.train_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
        arithmetic: Some(super::device::arithmetic(device)),
    };
    let mut files = report::run::run_files(spec, &summary)?;
    if spec.variant.restructures() {
        files.extend(report::run::pai_files(spec, &summary)?);
    }
    files.push((files::TRAINED_SAFETENSORS.into(), trained_file));
    Ok(RunOutput { summary, files })
}

/// The three splits as token ids, with the frozen body's features cached
/// on them when the spec asks for it.
fn encode_splits(
    spec: &JobSpec,
    loaded: &super::load::Loaded,
    split: &super::data::Split,
    eval_bs: usize,
    device: &Device,
) -> Result<[train::Encoded; 3], JobError> {
    let (mut tr, mut va, mut te) = (
        loaded.encode(&split.train)?,
        loaded.encode(&split.val)?,
        loaded.encode(&split.test)?,
    );
    if spec.model.cache_features {
        check_cacheable(spec, loaded)?;
        let model_key = serde_json::to_string(&spec.model).unwrap_or_default();
        super::features::attach(
            &loaded.model,
            &model_key,
            &mut [&mut tr, &mut va, &mut te],
            eval_bs,
            device,
        )?;
    }
    Ok([tr, va, te])
}

/// The checkpoint to resume from, when `bytes` read as one of this
/// configuration; otherwise the run starts afresh, saying why.
fn resumable(bytes: &[u8], ids: &RunIds) -> Option<Checkpoint> {
    match Checkpoint::decode(bytes) {
        Ok(c) if c.key() == ids.config_hash => Some(c),
        Ok(c) => {
            tracing::warn!(job = %ids.job_id, theirs = %c.key(), "a checkpoint of another configuration: starting afresh");
            None
        }
        Err(e) => {
            tracing::warn!(job = %ids.job_id, error = %e, "an unreadable checkpoint: starting afresh");
            None
        }
    }
}

/// The knock-out scores of a network with dendrite terms: validation and
/// test with every term left out (zeroing), and with each layer's term
/// replaced by its mean over the training split (mean ablation, recorded
/// in one pass over `train`).
fn knockouts(
    model: &Model,
    [train, val, test]: [&train::Encoded; 3],
    eval_bs: usize,
    device: &Device,
    labels: &[&str],
) -> Result<Knockout, JobError> {
    let predict = |set: &train::Encoded, pass: &Pass| {
        evaluate_with(model, set, eval_bs, device, None, pass).map(|r| r.1)
    };
    let zeroed = Pass::knockout();
    let (kv, kt) = (predict(val, &zeroed)?, predict(test, &zeroed)?);
    let recording = Pass::recording();
    evaluate_with(model, train, eval_bs, device, None, &recording)?;
    let mean = Pass::mean_ablated(recording.dendrite_means()?);
    let (mv, mt) = (predict(val, &mean)?, predict(test, &mean)?);
    Ok(Knockout {
        val: metrics::scores(&kv, &val.labels, labels),
        test: metrics::scores(&kt, &test.labels, labels),
        test_predictions: kt,
        mean_ablated: Some(Ablated {
            val: metrics::scores(&mv, &val.labels, labels),
            test: metrics::scores(&mt, &test.labels, labels),
            test_predictions: mt,
        }),
    })
}

/// What a run keeps: its trained base tensors then its dendrite tensors
/// (in f32), and how many values the dendrite tensors hold.
fn kept_tensors(
    model: &mut Model,
    base_trainable: &[(String, Var)],
) -> Result<(Vec<(String, Tensor)>, usize), JobError> {
    let mut saved: Vec<(String, Tensor)> = base_trainable
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    for (n, p) in &model.dendrite_tensors() {
        saved.push((n.clone(), p.get(DType::F32)?));
    }
    let dendrite_params = saved[base_trainable.len()..]
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    Ok((saved, dendrite_params))
}

/// A cached body must be frozen: every trained tensor and every dendrite
/// must lie in the head (the pooler and classifier, or Phi's score layer).
fn check_cacheable(spec: &JobSpec, loaded: &super::load::Loaded) -> Result<(), JobError> {
    let in_head = |n: &str| {
        head_prefixes(spec.model.arch)
            .iter()
            .any(|p| n.starts_with(p) || n.starts_with(p.trim_end_matches('.')))
            || n.contains("pooler.")
            || n.ends_with("pooler.dense")
    };
    let outside: Vec<&str> = loaded
        .trainable
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(loaded.dendrite_layers.iter().map(|n| n.as_str()))
        .filter(|n| !in_head(n))
        .collect();
    if let Some(n) = outside.first() {
        return Err(JobError::Spec(format!(
            "`model.cache_features` needs a frozen body, but `{n}` (in the body) trains: \
             keep dendrites and trained weights in the head"
        )));
    }
    Ok(())
}

/// What a re-score measures: a split, with or without the dendrite terms.
#[derive(Debug, Clone, Copy)]
pub struct Rescore {
    pub split: EvalSplit,
    /// Leave every dendrite term out (the knock-out re-score).
    pub knockout: bool,
}

/// Scores trained parameters (`trained`, a `trained.safetensors` of an
/// earlier run of `spec`) on the `val` or `test` split of that run, with
/// latency: `validation.json` and `confusion_matrix.png`.
pub fn validate(
    spec: &JobSpec,
    trained: &Path,
    source: &str,
    what: Rescore,
    job_id: &str,
    device: &Device,
) -> Result<(ValidationSummary, report::Files), JobError> {
    let split = what.split;
    let started = Instant::now();
    spec.validate().map_err(|e| JobError::Spec(e.to_string()))?;
    let (splits, _) = load_splits(spec)?;
    let set = match split {
        EvalSplit::Val => splits.val,
        EvalSplit::Test => splits.test,
    };
    let labels: Vec<&str> = LABELS.to_vec();
    let mut loaded = load_model(spec, labels.len(), device, &[PathBuf::from(trained)])?;
    let enc = loaded.encode(&set)?;
    let ctx = if what.knockout {
        Pass::knockout()
    } else {
        Pass::inference()
    };
    let (_, pred) = evaluate_with(
        &loaded.model,
        &enc,
        spec.train.batch_size.max(32),
        device,
        None,
        &ctx,
    )?;
    let scores = metrics::scores(&pred, &enc.labels, &labels);
    let dendrites = loaded.model.dendrite_summary()?.first().map_or(0, |d| d.1);
    loaded.model.merge_lora()?;
    let speed = measure_speed(&loaded.model, &enc.ids, device)?;
    let summary = ValidationSummary {
        job_id: job_id.to_string(),
        source: source.to_string(),
        split: split.to_string(),
        knockout: what.knockout,
        scores,
        speed,
        dendrites,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let files = report::run::validation_files(&summary)?;
    Ok((summary, files))
}
