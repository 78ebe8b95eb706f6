//! One run from spec to results: resolve paths, load and split the data,
//! build the model, train, score on the test split at the best epoch,
//! measure latency and throughput, and render every artifact file in
//! memory. Callers decide where the files go.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Var};
use common::spec::{Arch, Finetune, JobSpec, ModelSpec, Variant};
use serde::Serialize;

use super::data::{self, LoadStats, LABELS};
use super::metrics::{self, Scores};
use super::models::{bert, phi, Batch, Model};
use super::nn::linear::LoraConfig;
use super::nn::params::{Params, TrainPolicy};
use super::nn::{compute_dtype, Ctx};
use super::tokenize::Tok;
use super::train::{self, Encoded, EpochRecord, Progress};

use super::{report, spec_path};

/// Why a run failed. `Permanent` failures (bad spec, missing files) will
/// fail the same way on any retry.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Tokenize(#[from] super::tokenize::TokenizeError),
    #[error(transparent)]
    Params(#[from] super::nn::params::ParamError),
    #[error("model config {path}: {message}")]
    Config { path: String, message: String },
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot write artifacts: {0}")]
    Artifacts(String),
    #[error("stopped on request")]
    Stopped,
}

impl JobError {
    /// Whether retrying the same spec cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            JobError::Candle(_) | JobError::Artifacts(_) | JobError::Stopped
        )
    }
}

/// A model ready to train or evaluate.
pub struct Loaded {
    pub model: Model,
    pub tok: Tok,
    pub trainable: Vec<(String, Var)>,
    pub frozen_params: usize,
    /// Trainable parameters of the base, adapters and head (dendrites not included).
    pub trainable_params: usize,
    /// Layers wrapped with dendrites (dendritic variant).
    pub dendrite_layers: Vec<String>,
}

/// Names of the classification head's tensors (their own learning rate).
pub fn head_prefixes(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Bert => &["classifier."],
        Arch::Phi => &["score."],
    }
}

/// The model directory of a spec (local path; hub download with the `hub` feature).
pub fn model_dir(spec: &ModelSpec) -> Result<PathBuf, JobError> {
    if let Some(p) = &spec.path {
        let dir = spec_path("model.path", p).map_err(JobError::Spec)?;
        if !dir.is_dir() {
            return Err(JobError::Spec(format!(
                "`model.path`: {} is not a directory",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    match &spec.hub_id {
        Some(id) => hub_model(id),
        None => Err(JobError::Spec("`model.path`: not set".into())),
    }
}

#[cfg(feature = "hub")]
fn hub_model(id: &str) -> Result<PathBuf, JobError> {
    let api = hf_hub::api::sync::Api::new()
        .map_err(|e| JobError::Spec(format!("`model.hub_id`: {e}")))?;
    let repo = api.model(id.to_string());
    let mut dir = None;
    for f in ["config.json", "tokenizer.json"] {
        let p = repo
            .get(f)
            .map_err(|e| JobError::Spec(format!("`model.hub_id` {id}: {f}: {e}")))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    let info = repo
        .info()
        .map_err(|e| JobError::Spec(format!("`model.hub_id` {id}: {e}")))?;
    for s in info.siblings {
        if s.rfilename.ends_with(".safetensors") {
            repo.get(&s.rfilename).map_err(|e| {
                JobError::Spec(format!("`model.hub_id` {id}: {}: {e}", s.rfilename))
            })?;
        }
    }
    dir.ok_or_else(|| JobError::Spec(format!("`model.hub_id` {id}: nothing downloaded")))
}

#[cfg(not(feature = "hub"))]
fn hub_model(id: &str) -> Result<PathBuf, JobError> {
    Err(JobError::Spec(format!(
        "`model.hub_id` = {id:?} needs a worker built with `--features hub`; or set `model.path` to a local copy"
    )))
}

/// Default LoRA targets of each architecture.
pub fn default_lora_targets(arch: Arch) -> Vec<String> {
    match arch {
        Arch::Bert => vec!["query".into(), "value".into()],
        Arch::Phi => ["q_proj", "k_proj", "v_proj", "dense"]
            .map(String::from)
            .to_vec(),
    }
}

/// Loads weights, tokenizer and config into a trainable model.
/// `overlays`: trained-parameter files applied over the base checkpoint.
pub fn load_model(
    spec: &JobSpec,
    num_labels: usize,
    device: &Device,
    overlays: &[PathBuf],
) -> Result<Loaded, JobError> {
    let m = &spec.model;
    let dir = model_dir(m)?;
    let dtype = compute_dtype(device, m.precision);
    let policy = TrainPolicy {
        train_base: m.finetune == Finetune::Full,
        freeze: m.freeze.clone(),
    };
    let mut p = Params::load(&dir, overlays, device, dtype, policy, m.quantize, spec.seed)?;
    let lora = spec.lora.as_ref().map(|l| LoraConfig {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        targets: if l.targets.is_empty() {
            default_lora_targets(m.arch)
        } else {
            l.targets.clone()
        },
        random_b: l.random_b,
    });
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path).map_err(|e| JobError::Config {
        path: config_path.display().to_string(),
        message: e.to_string(),
    })?;
    let cfg_err = |e: serde_json::Error| JobError::Config {
        path: config_path.display().to_string(),
        message: e.to_string(),
    };
    let model = match m.arch {
        Arch::Bert => {
            let cfg: bert::BertConfig = serde_json::from_str(&config_text).map_err(cfg_err)?;
            Model::Bert(bert::Bert::load(
                &mut p,
                cfg,
                num_labels,
                lora.as_ref(),
                m.dropout,
            )?)
        }
        Arch::Phi => {
            let cfg: phi::PhiConfig = serde_json::from_str(&config_text).map_err(cfg_err)?;
            Model::Phi(phi::Phi::load(
                &mut p,
                cfg,
                num_labels,
                lora.as_ref(),
                m.dropout,
            )?)
        }
    };
    if let Some(l) = &lora {
        let adapted = p
            .trainable()
            .iter()
            .filter(|(n, _)| n.ends_with(".lora_A"))
            .count();
        if adapted == 0 {
            return Err(JobError::Spec(format!(
                "`lora.targets` {:?} match no linear layer of this model",
                l.targets
            )));
        }
    }
    let mut model = model;
    let dendrite_layers = if spec.variant == Variant::Dendritic {
        model.attach_dendrites(&spec.dendrites, Some(&p))?
    } else {
        Vec::new()
    };
    let tok = Tok::load(&dir.join("tokenizer.json"), m.max_len)?;
    let (frozen_params, trainable_params) = p.counts();
    let trainable = p.trainable().to_vec();
    p.release_checkpoint();
    Ok(Loaded {
        model,
        tok,
        trainable,
        frozen_params,
        trainable_params,
        dendrite_layers,
    })
}

/// Latency and throughput of the trained model.
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub latency_b1_p50_ms: f64,
    pub latency_b1_p95_ms: f64,
    pub latency_samples: usize,
    pub throughput_b64_per_s: f64,
}

/// Batch-1 latency over at least 50 sentences (after 5 warm-up runs) and
/// batch-64 throughput over the whole set.
pub fn measure_speed(
    model: &Model,
    ids: &[Vec<u32>],
    device: &Device,
) -> candle_core::Result<Speed> {
    let ctx = Ctx::eval();
    let run = |rows: &[Vec<u32>]| -> candle_core::Result<()> {
        let b = Batch::new(rows, model.pad_id(), device)?;
        let out = model.forward(&b, &ctx)?;
        // Reading the result synchronises the device.
        out.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    let n = ids.len().max(1);
    for i in 0..5 {
        run(std::slice::from_ref(&ids[i % n]))?;
    }
    let samples = n.max(50);
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        run(std::slice::from_ref(&ids[i % n]))?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let t = Instant::now();
    for chunk in ids.chunks(64) {
        run(chunk)?;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(Speed {
        latency_b1_p50_ms: metrics::percentile(&lat, 0.5),
        latency_b1_p95_ms: metrics::percentile(&lat, 0.95),
        latency_samples: samples,
        throughput_b64_per_s: ids.len() as f64 / secs.max(1e-9),
    })
}

/// Everything a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub job_id: String,
    pub sweep: String,
    pub config_hash: String,
    pub model: String,
    pub device: String,
    pub data: LoadStats,
    pub split_sizes: [usize; 3],
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub optimizer_steps: usize,
    pub val: Scores,
    pub test: Scores,
    pub speed: Speed,
    pub total_params: usize,
    pub trainable_params: usize,
    /// Dendrites per wrapped layer in the final (best) network.
    pub dendrites: usize,
    pub dendrite_params: usize,
    pub dendrite_layers: Vec<String>,
    /// Epochs after which a dendrite set was added.
    pub switch_epochs: Vec<usize>,
    pub tracker: super::train::tracker::TrackerState,
    pub train_seconds: f64,
    pub wall_seconds: f64,
}

/// Files rendered in memory: (name relative to the run's folder, bytes).
pub type Files = Vec<(String, Vec<u8>)>;

/// A run's files, rendered in memory: (file name, bytes).
pub struct RunOutput {
    pub summary: RunSummary,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Identifies a run in its artifacts.
pub struct RunIds<'a> {
    pub sweep: &'a str,
    pub job_id: &'a str,
    pub config_hash: &'a str,
}

/// A short model name for tables: the last component of the path or hub id.
pub fn model_name(m: &ModelSpec) -> String {
    let raw = m.path.as_deref().or(m.hub_id.as_deref()).unwrap_or("?");
    let expanded = super::expand_env(raw).unwrap_or_else(|_| raw.to_string());
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

/// Runs one job to completion.
pub fn run(
    spec: &JobSpec,
    ids: &RunIds,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<RunOutput, JobError> {
    let started = Instant::now();
    spec.validate().map_err(|e| JobError::Spec(e.to_string()))?;
    let data_path = match (&spec.data.path, &spec.data.hub_id) {
        (Some(p), _) => spec_path("data.path", p).map_err(JobError::Spec)?,
        (None, Some(id)) => hub_data(id)?,
        (None, None) => return Err(JobError::Spec("`data.path`: not set".into())),
    };
    let raw = data::load(&data_path, spec.data.agreement)?;
    let (examples, stats) = data::dedupe(raw);
    let split = data::split(&examples, &spec.data.split)?;
    let labels: Vec<&str> = LABELS.to_vec();

    let loaded = load_model(spec, labels.len(), device, &[])?;
    let encode = |set: &[data::Example]| -> Result<Encoded, JobError> {
        let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
        Ok(Encoded {
            ids: loaded.tok.encode_all(&texts)?,
            labels: set.iter().map(|e| e.label).collect(),
        })
    };
    let (tr, va, te) = (
        encode(&split.train)?,
        encode(&split.val)?,
        encode(&split.test)?,
    );
    let mut model = loaded.model;
    let base_trainable = loaded.trainable;
    let trained = train::train(
        &mut model,
        &base_trainable,
        &train::RunConfig {
            train: &spec.train,
            tracker: &spec.tracker,
            dendrites: (spec.variant == Variant::Dendritic).then_some(&spec.dendrites),
            head_prefixes: head_prefixes(spec.model.arch),
            labels: &labels,
            seed: spec.seed,
            frozen_params: loaded.frozen_params,
        },
        &train::Sets {
            train: &tr,
            val: &va,
            test: Some(&te),
        },
        device,
        progress,
    )
    .map_err(|e| {
        if e.to_string().contains(train::STOPPED) {
            JobError::Stopped
        } else {
            JobError::Candle(e)
        }
    })?;
    let weights = spec
        .train
        .class_weights
        .then(|| train::balanced_weights(&tr.labels, labels.len()));
    let eval_bs = spec.train.batch_size.max(32);
    let (_, val_pred) = train::evaluate(&model, &va, eval_bs, device, weights.as_deref())?;
    let (_, test_pred) = train::evaluate(&model, &te, eval_bs, device, weights.as_deref())?;
    let val = metrics::scores(&val_pred, &va.labels, &labels);
    let test = metrics::scores(&test_pred, &te.labels, &labels);
    let dendrite_tensors = model.dendrite_tensors();
    let dendrite_params: usize = dendrite_tensors
        .iter()
        .map(|(_, p)| p.get(candle_core::DType::F32).map(|t| t.elem_count()))
        .sum::<candle_core::Result<usize>>()?;
    let layout = model.dendrite_summary()?;
    let dendrites = layout.first().map_or(0, |d| d.1);
    let mut saved: Vec<(String, candle_core::Tensor)> = base_trainable
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    for (n, p) in &dendrite_tensors {
        saved.push((n.clone(), p.get(candle_core::DType::F32)?));
    }
    let trained_file = report::trained_safetensors(&saved, spec, ids, &trained.tracker, &layout)?;

    model.merge_lora()?;
    let speed = measure_speed(&model, &te.ids, device)?;

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
        val,
        test,
        speed,
        total_params: loaded.frozen_params + loaded.trainable_params + dendrite_params,
        trainable_params: loaded.trainable_params + dendrite_params,
        dendrites,
        dendrite_params,
        dendrite_layers: loaded.dendrite_layers,
        switch_epochs: trained.switch_epochs,
        tracker: trained.tracker,
        train_seconds: trained.train_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let mut files =
        report::run_files(spec, &summary).map_err(|e| JobError::Artifacts(e.to_string()))?;
    if spec.variant == Variant::Dendritic {
        files.extend(report::pai_files(spec, &summary).map_err(JobError::Artifacts)?);
    }
    files.push((
        common::artifacts::files::TRAINED_SAFETENSORS.into(),
        trained_file,
    ));
    Ok(RunOutput { summary, files })
}

#[cfg(feature = "hub")]
fn hub_data(id: &str) -> Result<PathBuf, JobError> {
    let api =
        hf_hub::api::sync::Api::new().map_err(|e| JobError::Spec(format!("`data.hub_id`: {e}")))?;
    api.dataset(id.to_string())
        .get("data/FinancialPhraseBank-v1.0.zip")
        .map_err(|e| JobError::Spec(format!("`data.hub_id` {id}: {e}")))
}

#[cfg(not(feature = "hub"))]
fn hub_data(id: &str) -> Result<PathBuf, JobError> {
    Err(JobError::Spec(format!(
        "`data.hub_id` = {id:?} needs a worker built with `--features hub`; or set `data.path`"
    )))
}

/// What a validation of earlier trained parameters reports.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationSummary {
    pub job_id: String,
    pub source: String,
    pub split: String,
    pub scores: Scores,
    pub speed: Speed,
    pub dendrites: usize,
    pub wall_seconds: f64,
}

/// Scores trained parameters (`trained`, a `trained.safetensors` of an
/// earlier run of `spec`) on the `val` or `test` split of that run, with
/// latency. Writes `validation.json` and `confusion_matrix.png`.
pub fn validate(
    spec: &JobSpec,
    trained: &Path,
    source: &str,
    split_name: &str,
    job_id: &str,
    device: &Device,
) -> Result<(ValidationSummary, Files), JobError> {
    let started = Instant::now();
    spec.validate().map_err(|e| JobError::Spec(e.to_string()))?;
    let data_path = match (&spec.data.path, &spec.data.hub_id) {
        (Some(p), _) => spec_path("data.path", p).map_err(JobError::Spec)?,
        (None, Some(id)) => hub_data(id)?,
        (None, None) => return Err(JobError::Spec("`data.path`: not set".into())),
    };
    let (examples, _) = data::dedupe(data::load(&data_path, spec.data.agreement)?);
    let split = data::split(&examples, &spec.data.split)?;
    let set = match split_name {
        "val" => split.val,
        "test" => split.test,
        other => {
            return Err(JobError::Spec(format!(
                "unknown split {other:?} (val or test)"
            )))
        }
    };
    let labels: Vec<&str> = LABELS.to_vec();
    let mut loaded = load_model(spec, labels.len(), device, &[trained.to_path_buf()])?;
    let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
    let enc = Encoded {
        ids: loaded.tok.encode_all(&texts)?,
        labels: set.iter().map(|e| e.label).collect(),
    };
    let (_, pred) = train::evaluate(
        &loaded.model,
        &enc,
        spec.train.batch_size.max(32),
        device,
        None,
    )?;
    let scores = metrics::scores(&pred, &enc.labels, &labels);
    let dendrites = loaded.model.dendrite_summary()?.first().map_or(0, |d| d.1);
    loaded.model.merge_lora()?;
    let speed = measure_speed(&loaded.model, &enc.ids, device)?;
    let summary = ValidationSummary {
        job_id: job_id.to_string(),
        source: source.to_string(),
        split: split_name.to_string(),
        scores,
        speed,
        dendrites,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let files = report::validation_files(&summary).map_err(JobError::Artifacts)?;
    Ok((summary, files))
}
