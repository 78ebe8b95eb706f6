//! Labels new sentences with a finished run: its `trained.safetensors` put
//! back onto the base model it was trained on, exactly as the run had it
//! (the spec recorded in the file builds the network, trained tensors
//! replace the base ones, dendrites are rebuilt from the saved tensors and
//! checked against the saved layout, LoRA adapters are then merged into
//! the base weights), and scored in length-sorted batches without a
//! gradient graph ([`Pass::inference`]).
//!
//! Before anything is built, the base model found is checked against the
//! one the run recorded ([`BaseModel`]); runs saved before that record
//! existed are checked by their tensors alone: every saved tensor must be
//! read by the model built from the spec, with its shape, and every
//! trained tensor of that model must come from the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::base_model::{BaseModel, BaseModelError};
use super::data::LABELS;
use super::error::JobError;
use super::load::{load_model, model_dir};
use super::models::{Batch, Model};
use super::nn::params::{Param, ParamError};
use super::nn::Pass;
use super::tokenize::{Tok, TokenizeError};
use super::trained::{read_trained, TrainedError, TrainedMeta};

/// Why a run cannot classify.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Trained(#[from] TrainedError),
    /// The base model named by the run (or given instead) cannot be used.
    #[error("{run}: base model: {message}")]
    Model { run: String, message: String },
    /// The base model found is not the one the run was trained on.
    #[error(
        "{run} was trained on another model: it was trained on {expected}, \
         but {dir} holds {found} (the {what} differ)"
    )]
    DifferentModel {
        run: String,
        expected: String,
        found: String,
        dir: String,
        what: String,
    },
    /// The trained tensors do not fit the network built from the spec on
    /// the base model found: a run saved before base models were recorded,
    /// put onto another model, or (`verified`: the base model is the one
    /// the run recorded) a file that does not match its own spec.
    #[error("{run}: its trained parameters do not fit the model in {dir} ({found}): {detail}{}", verified_note(.verified))]
    Mismatch {
        run: String,
        dir: String,
        found: String,
        detail: String,
        verified: bool,
    },
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
}

fn verified_note(verified: &bool) -> &'static str {
    if *verified {
        " (this is the base model the run recorded: the file does not match the spec it carries)"
    } else {
        ""
    }
}

/// How the base model was matched to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Weights and tokenizer equal the ones the run recorded.
    Fingerprint,
    /// The run recorded no base model (saved by an earlier version): only
    /// the trained tensors' names and shapes were checked.
    ShapesOnly,
}

/// One sentence's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index into [`Classifier::labels`].
    pub label: usize,
    /// Softmax of the logits, one per label.
    pub probabilities: Vec<f32>,
}

/// A finished run, ready to label sentences.
pub struct Classifier {
    model: Model,
    tok: Tok,
    device: Device,
    /// What the run's `trained.safetensors` recorded.
    pub meta: TrainedMeta,
    /// Where the base model was read from.
    pub model_dir: PathBuf,
    /// The base model found there.
    pub base_model: BaseModel,
    pub identity: Identity,
}

impl Classifier {
    /// Builds the run's network from `trained` (a `trained.safetensors`)
    /// on its base model: the spec's model directory, or `model_dir` when
    /// given. `run` names the run in messages.
    pub fn load(
        trained: &Path,
        run: &str,
        model_dir_override: Option<&Path>,
        device: &Device,
    ) -> Result<Classifier, ClassifyError> {
        let meta = read_trained(trained)?;
        let mut spec = meta.spec.clone();
        spec.validate().map_err(|e| TrainedError {
            path: trained.display().to_string(),
            message: format!("the recorded spec: {e}"),
        })?;
        if let Some(d) = model_dir_override {
            spec.model.path = Some(d.display().to_string());
            spec.model.hub_id = None;
        }
        let model_err = |message: String| ClassifyError::Model {
            run: run.to_string(),
            message,
        };
        let dir = model_dir(&spec.model).map_err(|e| model_err(e.to_string()))?;
        let found =
            BaseModel::of_dir(&dir).map_err(|e: BaseModelError| model_err(e.to_string()))?;
        let identity = match &meta.base_model {
            Some(expected) => {
                let what = expected.differences(&found);
                if !what.is_empty() {
                    return Err(ClassifyError::DifferentModel {
                        run: run.to_string(),
                        expected: expected.describe(),
                        found: found.describe(),
                        dir: dir.display().to_string(),
                        what: what.join(" and "),
                    });
                }
                Identity::Fingerprint
            }
            None => Identity::ShapesOnly,
        };
        let mismatch = |detail: String| ClassifyError::Mismatch {
            run: run.to_string(),
            dir: dir.display().to_string(),
            found: found.describe(),
            detail,
            verified: identity == Identity::Fingerprint,
        };
        let loaded = match load_model(&spec, LABELS.len(), device, &[trained.to_path_buf()]) {
            Ok(l) => l,
            Err(JobError::Params(e @ (ParamError::Shape { .. } | ParamError::Missing { .. }))) => {
                return Err(mismatch(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let mut model = loaded.model;
        let mut used: BTreeMap<String, Vec<usize>> = loaded
            .trainable
            .iter()
            .map(|(n, v)| (n.clone(), v.dims().to_vec()))
            .collect();
        for (n, p) in model.dendrite_tensors() {
            let dims = match &p {
                Param::Train(v) => v.dims().to_vec(),
                Param::Frozen(t) => t.dims().to_vec(),
            };
            used.insert(n, dims);
        }
        let mut problems = fit_problems(&meta.tensors, &used);
        let built: Vec<(String, usize)> = model
            .dendrite_summary()?
            .into_iter()
            .map(|(n, c, _)| (n, c))
            .collect();
        problems.extend(layout_problems(&meta.dendrites, &built));
        if !problems.is_empty() {
            return Err(mismatch(problems.join("; ")));
        }
        model.merge_lora()?;
        Ok(Classifier {
            model,
            tok: loaded.tok,
            device: device.clone(),
            meta,
            model_dir: dir,
            base_model: found,
            identity,
        })
    }

    /// The label names, in the order of [`Prediction::probabilities`].
    pub fn labels(&self) -> &'static [&'static str] {
        &LABELS
    }

    /// Labels `texts`, `batch_size` sentences per forward pass (sentences
    /// of similar length together); results in input order.
    pub fn predict(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Vec<Prediction>, ClassifyError> {
        let ids = self.tok.encode_all(texts)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let ctx = Pass::inference();
        let mut out: Vec<Option<Prediction>> = vec![None; ids.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let batch = Batch::new(&rows, self.model.pad_id(), &self.device)?;
            let logits = self.model.forward(&batch, &ctx)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(logits) {
                out[i] = Some(prediction(&row));
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// Softmax (computed in f64) and the first largest logit.
fn prediction(logits: &[f32]) -> Prediction {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let label = logits
        .iter()
        .enumerate()
        .fold(0, |best, (i, &l)| if l > logits[best] { i } else { best });
    Prediction {
        label,
        probabilities: exp.iter().map(|e| (e / sum) as f32).collect(),
    }
}

/// How `used` (the trained tensors of the model built from the spec, with
/// their shapes) differs from `saved` (the file's): tensors saved but not
/// read, tensors the model trains that the file lacks (they would be
/// drawn at random), and shapes. Lists are cut after a few names.
fn fit_problems(
    saved: &BTreeMap<String, Vec<usize>>,
    used: &BTreeMap<String, Vec<usize>>,
) -> Vec<String> {
    let list = |names: Vec<&String>| {
        let n = names.len();
        let mut s: Vec<String> = names.into_iter().take(5).cloned().collect();
        if n > 5 {
            s.push(format!("and {} more", n - 5));
        }
        s.join(", ")
    };
    let mut out = Vec::new();
    let unused: Vec<&String> = saved.keys().filter(|n| !used.contains_key(*n)).collect();
    if !unused.is_empty() {
        out.push(format!(
            "saved tensors the model has no place for: {}",
            list(unused)
        ));
    }
    let absent: Vec<&String> = used.keys().filter(|n| !saved.contains_key(*n)).collect();
    if !absent.is_empty() {
        out.push(format!(
            "trained tensors missing from the file: {}",
            list(absent)
        ));
    }
    for (n, shape) in saved {
        if let Some(u) = used.get(n).filter(|u| *u != shape) {
            out.push(format!(
                "`{n}` is saved as {shape:?}, the model needs {u:?}"
            ));
        }
    }
    out
}

/// How the dendrites rebuilt (layer, count) differ from the layout the run
/// saved.
fn layout_problems(saved: &[(String, usize)], built: &[(String, usize)]) -> Vec<String> {
    let saved: BTreeMap<&str, usize> = saved.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let built: BTreeMap<&str, usize> = built.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let layers: std::collections::BTreeSet<&str> =
        saved.keys().chain(built.keys()).copied().collect();
    layers
        .into_iter()
        .filter_map(|l| {
            let (s, b) = (
                saved.get(l).copied().unwrap_or(0),
                built.get(l).copied().unwrap_or(0),
            );
            (s != b).then(|| format!("`{l}` was saved with {s} dendrite(s), {b} rebuilt"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(v: &[(&str, &[usize])]) -> BTreeMap<String, Vec<usize>> {
        v.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn softmax_and_label() {
        let p = prediction(&[1.0, 3.0, 2.0]);
        assert_eq!(p.label, 1);
        let sum: f32 = p.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert!(p.probabilities[1] > p.probabilities[2] && p.probabilities[2] > p.probabilities[0]);
        // Large logits do not overflow.
        let p = prediction(&[1000.0, -1000.0, 999.0]);
        assert_eq!(p.label, 0);
        assert!(p.probabilities.iter().all(|x| x.is_finite()));
        // Ties go to the first label.
        assert_eq!(prediction(&[2.0, 2.0, 1.0]).label, 0);
    }

    #[test]
    fn tensors_must_fit_both_ways() {
        let saved = shapes(&[
            ("classifier.weight", &[3, 384]),
            ("classifier.bias", &[3]),
            (
                "bert.encoder.layer.7.attention.self.query.lora_A",
                &[8, 384],
            ),
        ]);
        assert!(fit_problems(&saved, &saved).is_empty());
        let used = shapes(&[
            ("classifier.weight", &[3, 16]),
            ("classifier.bias", &[3]),
            ("pooler.dense.dendrites.0.T", &[16]),
        ]);
        let p = fit_problems(&saved, &used).join("\n");
        assert!(p.contains("no place for: bert.encoder.layer.7"), "{p}");
        assert!(
            p.contains("missing from the file: pooler.dense.dendrites.0.T"),
            "{p}"
        );
        assert!(
            p.contains("`classifier.weight` is saved as [3, 384], the model needs [3, 16]"),
            "{p}"
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let saved: BTreeMap<String, Vec<usize>> =
            (0..9).map(|i| (format!("t{i}"), vec![1])).collect();
        let p = fit_problems(&saved, &BTreeMap::new()).join("\n");
        assert!(p.contains("t4, and 4 more"), "{p}");
    }

    #[test]
    fn dendrite_layout_must_match() {
        let saved = vec![
            ("classifier".to_string(), 1),
            ("pooler.dense".to_string(), 1),
        ];
        assert!(layout_problems(&saved, &saved).is_empty());
        let built = vec![
            ("classifier".to_string(), 1),
            ("pooler.dense".to_string(), 0),
        ];
        let p = layout_problems(&saved, &built);
        assert_eq!(
            p,
            vec!["`pooler.dense` was saved with 1 dendrite(s), 0 rebuilt"]
        );
        // A layer wrapped without dendrites equals an unwrapped one.
        let built = vec![
            ("classifier".to_string(), 1),
            ("pooler.dense".to_string(), 1),
            ("x".to_string(), 0),
        ];
        assert!(layout_problems(&saved, &built).is_empty());
    }
}
