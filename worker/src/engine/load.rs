//! From a spec to what training needs: the data set read, deduplicated
//! and split ([`load_splits`], one data-path resolution for every
//! pipeline), and the model with its tokenizer, adapters and dendrites
//! ([`load_model`]), from a local directory or, with the `hub` feature,
//! the Hugging Face hub.

use std::path::PathBuf;

use candle_core::{Device, Var};
use common::spec::{Arch, Finetune, HeadInit, JobSpec, ModelSpec, Variant};
use common::summary::LoadStats;

use super::data::{self, Split, LABELS};
use super::error::JobError;
use super::models::{bert, default_lora_targets, head_prefixes, phi, Model};
use super::nn::compute_dtype;
use super::nn::linear::LoraConfig;
use super::nn::params::{Params, TrainPolicy};
use super::spec_path;
use super::tokenize::Tok;
use super::train::Encoded;

/// A model ready to train or evaluate.
pub struct Loaded {
    pub model: Model,
    /// The directory the base weights, config and tokenizer came from.
    pub dir: PathBuf,
    pub tok: Tok,
    pub trainable: Vec<(String, Var)>,
    pub frozen_params: usize,
    /// Trainable parameters of the base, adapters and head (dendrites not included).
    pub trainable_params: usize,
    /// Layers wrapped with dendrites (dendritic variant).
    pub dendrite_layers: Vec<String>,
}

impl Loaded {
    /// Token ids and labels of some examples.
    pub fn encode(&self, set: &[data::Example]) -> Result<Encoded, JobError> {
        let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
        Ok(Encoded {
            ids: self.tok.encode_all(&texts)?,
            labels: set.iter().map(|e| e.label).collect(),
            features: None,
        })
    }
}

/// The data set file or directory of a spec (local path; hub download
/// with the `hub` feature).
pub fn data_path(spec: &JobSpec) -> Result<PathBuf, JobError> {
    match (&spec.data.path, &spec.data.hub_id) {
        (Some(p), _) => spec_path("data.path", p).map_err(JobError::Spec),
        (None, Some(id)) => hub_data(id),
        (None, None) => Err(JobError::Spec("`data.path`: not set".into())),
    }
}

/// The spec's data set, deduplicated and split, with what loading found.
pub fn load_splits(spec: &JobSpec) -> Result<(Split, LoadStats), JobError> {
    let read = data::load(&data_path(spec)?, spec.data.agreement)?;
    let (examples, mut stats) = data::dedupe(read.examples);
    stats.encoding = read.encoding.to_string();
    Ok((data::split(&examples, &spec.data.split)?, stats))
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
        dir = p.parent().map(std::path::Path::to_path_buf);
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
    p.head = m.head;
    let config = ConfigFile::read(&dir)?;
    if m.head == HeadInit::Checkpoint {
        let head = format!("{}weight", head_prefixes(m.arch)[0]);
        if !p.contains(&head) {
            return Err(JobError::Spec(format!(
                "`model.head` = \"checkpoint\": {} has no `{head}`",
                dir.display()
            )));
        }
        check_head_labels(&config.text, &config.path)?;
    }
    let lora = lora_config(spec);
    let mut model = build_model(m, &config, &mut p, num_labels, lora.as_ref())?;
    if let Some(l) = &lora {
        check_lora_matched(&p, l)?;
    }
    let dendrite_layers = match spec.variant {
        Variant::Dendritic => model.attach_dendrites(&spec.dendrites, Some(&p))?,
        Variant::Branch => {
            let names = model.attach_dendrites(&spec.dendrites, Some(&p))?;
            model.make_branches();
            names
        }
        Variant::Baseline | Variant::Restart => Vec::new(),
    };
    let tok = Tok::load(&dir.join("tokenizer.json"), m.max_len)?;
    let (frozen_params, trainable_params) = p.counts();
    let trainable = p.trainable().to_vec();
    p.release_checkpoint();
    Ok(Loaded {
        model,
        dir,
        tok,
        trainable,
        frozen_params,
        trainable_params,
        dendrite_layers,
    })
}

/// A checkpoint's `config.json`: its text and path (for errors).
struct ConfigFile {
    path: String,
    text: String,
}

impl ConfigFile {
    fn read(dir: &std::path::Path) -> Result<ConfigFile, JobError> {
        let path = dir.join("config.json").display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| JobError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(ConfigFile { path, text })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_str(&self.text).map_err(|e| JobError::Config {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

/// The spec's LoRA settings, with the architecture's default targets when
/// it names none.
fn lora_config(spec: &JobSpec) -> Option<LoraConfig> {
    spec.lora.as_ref().map(|l| LoraConfig {
        r: l.r,
        alpha: l.alpha,
        dropout: l.dropout,
        targets: if l.targets.is_empty() {
            default_lora_targets(spec.model.arch)
        } else {
            l.targets.clone()
        },
        random_b: l.random_b,
    })
}

/// The architecture's network on the loaded parameters.
fn build_model(
    m: &ModelSpec,
    config: &ConfigFile,
    p: &mut Params,
    num_labels: usize,
    lora: Option<&LoraConfig>,
) -> Result<Model, JobError> {
    Ok(match m.arch {
        Arch::Bert => Model::Bert(bert::Bert::load(
            p,
            config.parse()?,
            num_labels,
            lora,
            m.dropout,
        )?),
        Arch::Phi => Model::Phi(phi::Phi::load(
            p,
            config.parse()?,
            num_labels,
            lora,
            m.dropout,
        )?),
    })
}

/// LoRA targets that adapt no layer are a spec error, not a silent
/// baseline.
fn check_lora_matched(p: &Params, l: &LoraConfig) -> Result<(), JobError> {
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
    Ok(())
}

/// A checkpoint's head is only reused when its `id2label` names this data
/// set's labels in the same order (a FinBERT head, say, orders them
/// positive, negative, neutral).
pub fn check_head_labels(config_text: &str, path: &str) -> Result<(), JobError> {
    #[derive(serde::Deserialize)]
    struct Labels {
        #[serde(default)]
        id2label: std::collections::BTreeMap<String, String>,
    }
    let found: Labels = serde_json::from_str(config_text).map_err(|e| JobError::Config {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    let names: Vec<String> = (0..found.id2label.len())
        .map(|i| {
            found
                .id2label
                .get(&i.to_string())
                .map(|l| l.to_lowercase())
                .unwrap_or_default()
        })
        .collect();
    if names != LABELS {
        return Err(JobError::Spec(format!(
            "`model.head` = \"checkpoint\": {path} has id2label {:?}; this data set needs {LABELS:?} in that order (use the default fresh head)",
            found.id2label
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_head_needs_our_labels_in_our_order() {
        let ours = r#"{"id2label": {"0": "NEGATIVE", "1": "neutral", "2": "positive"}}"#;
        check_head_labels(ours, "c.json").unwrap();
        // FinBERT's order.
        let finbert = r#"{"id2label": {"0": "positive", "1": "negative", "2": "neutral"}}"#;
        let e = check_head_labels(finbert, "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.json") && e.contains("model.head"), "{e}");
        let generic = r#"{"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}"#;
        assert!(check_head_labels(generic, "c.json").is_err());
        assert!(check_head_labels("{}", "c.json").is_err());
    }
}
