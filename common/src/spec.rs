//! The complete, self-contained description of one run: model, data, split,
//! training and adapter settings. A spec is what a job carries and what a run
//! saves next to its results; nothing outside it may change a run's outcome.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which family of network the weights belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// BERT encoders (BERT-base, MiniLM, FinBERT): `[CLS]` pooling.
    Bert,
    /// Phi-1.5 / Phi-2 decoders: last non-pad token pooling.
    Phi,
}

/// Which parameters are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    /// Every base weight is trained, except names matching `model.freeze`.
    Full,
    /// The base is frozen; LoRA adapters and the classification head train.
    Lora,
    /// Only the classification head trains.
    Head,
}

/// The compute precision of the frozen base and the activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 on CPU, bf16 on CUDA.
    Auto,
    F32,
    Bf16,
    F16,
}

/// Optional quantisation of the frozen base weights (LoRA / head training only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantize {
    None,
    /// 8-bit blocks of 32 (ggml Q8_0).
    Q8_0,
    /// 4-bit blocks of 32 (ggml Q4_0).
    Q4_0,
}

/// Where the weights and tokenizer come from, and how the network is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub arch: Arch,
    /// A directory holding `config.json`, `*.safetensors` and `tokenizer.json`.
    /// `${VAR}` and `${VAR:-default}` are expanded from the environment.
    #[serde(default)]
    pub path: Option<String>,
    /// A Hugging Face hub id, used when `path` is not set (needs the `hub` feature and network).
    #[serde(default)]
    pub hub_id: Option<String>,
    #[serde(default = "default_finetune")]
    pub finetune: Finetune,
    /// Name substrings of base weights kept frozen in `full` fine-tuning.
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Longest tokenized sentence; longer ones are truncated.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default = "default_precision")]
    pub precision: Precision,
    #[serde(default = "default_quantize")]
    pub quantize: Quantize,
    /// Dropout on hidden states and attention (`None`: the model config's value).
    #[serde(default)]
    pub dropout: Option<f64>,
}

fn default_finetune() -> Finetune {
    Finetune::Full
}
fn default_max_len() -> usize {
    128
}
fn default_precision() -> Precision {
    Precision::Auto
}
fn default_quantize() -> Quantize {
    Quantize::None
}

/// Which Financial PhraseBank agreement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Agreement {
    AllAgree,
    #[serde(rename = "75Agree")]
    Agree75,
    #[serde(rename = "66Agree")]
    Agree66,
    #[serde(rename = "50Agree")]
    Agree50,
}

impl Agreement {
    /// The file name of this subset inside the dataset.
    pub fn file_name(self) -> &'static str {
        match self {
            Agreement::AllAgree => "Sentences_AllAgree.txt",
            Agreement::Agree75 => "Sentences_75Agree.txt",
            Agreement::Agree66 => "Sentences_66Agree.txt",
            Agreement::Agree50 => "Sentences_50Agree.txt",
        }
    }
}

/// The data set and its split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A directory with `Sentences_*.txt`, or the path of `FinancialPhraseBank-v1.0.zip`.
    /// `${VAR}` and `${VAR:-default}` are expanded from the environment.
    #[serde(default)]
    pub path: Option<String>,
    /// A Hugging Face dataset id holding the original zip (needs the `hub` feature).
    #[serde(default)]
    pub hub_id: Option<String>,
    #[serde(default = "default_agreement")]
    pub agreement: Agreement,
    #[serde(default)]
    pub split: SplitSpec,
}

fn default_agreement() -> Agreement {
    Agreement::AllAgree
}

/// Stratified train/validation/test fractions and the split's own seed
/// (independent of the training seed, so every seed sees the same split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    #[serde(default = "default_train_frac")]
    pub train: f64,
    #[serde(default = "default_eval_frac")]
    pub val: f64,
    #[serde(default = "default_eval_frac")]
    pub test: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_train_frac() -> f64 {
    0.70
}
fn default_eval_frac() -> f64 {
    0.15
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            train: default_train_frac(),
            val: default_eval_frac(),
            test: default_eval_frac(),
            seed: 0,
        }
    }
}

/// Low-rank adapters on the frozen base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    #[serde(default = "default_rank")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Layer-name suffixes to adapt (empty: the architecture's default,
    /// `query,value` for BERT and `q_proj,k_proj,v_proj,dense` for Phi).
    #[serde(default)]
    pub targets: Vec<String>,
    /// Initialise B with N(0, 0.02) instead of zeros (the adapter then changes
    /// the function from step 0; used by gradient checks).
    #[serde(default)]
    pub random_b: bool,
}

fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            r: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            targets: Vec::new(),
            random_b: false,
        }
    }
}

/// How the learning rate moves within one training phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warm-up, then linear decay to zero at the last step.
    Linear,
    /// Linear warm-up, then constant.
    Constant,
}

/// Optimiser, schedule and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before one optimiser step.
    #[serde(default = "default_one")]
    pub grad_accum: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning rate of the classification head (`None`: `lr`).
    #[serde(default)]
    pub head_lr: Option<f64>,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Fraction of the optimiser steps spent warming up.
    #[serde(default = "default_warmup")]
    pub warmup: f64,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Multiply the learning rate by this factor when the validation score
    /// has not improved for `plateau_patience` epochs (`None`: off).
    #[serde(default)]
    pub plateau_factor: Option<f64>,
    #[serde(default = "default_one")]
    pub plateau_patience: usize,
    /// Clip the global gradient norm to this value (`None`: off).
    #[serde(default = "default_clip")]
    pub clip_norm: Option<f64>,
    /// Balanced class weights from the training split in the loss.
    #[serde(default = "default_true")]
    pub class_weights: bool,
    /// Validation score that picks the best epoch.
    #[serde(default = "default_metric")]
    pub metric: Metric,
}

/// Validation score used for model selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    MacroF1,
}

fn default_epochs() -> usize {
    3
}
fn default_batch() -> usize {
    16
}
fn default_one() -> usize {
    1
}
fn default_lr() -> f64 {
    5e-5
}
fn default_wd() -> f64 {
    0.01
}
fn default_warmup() -> f64 {
    0.1
}
fn default_schedule() -> Schedule {
    Schedule::Linear
}
fn default_clip() -> Option<f64> {
    Some(1.0)
}
fn default_true() -> bool {
    true
}
fn default_metric() -> Metric {
    Metric::MacroF1
}

impl Default for TrainSpec {
    fn default() -> Self {
        toml::from_str("").expect("all TrainSpec fields have defaults")
    }
}

/// Whether dendrites are added to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Baseline,
    Dendritic,
}

/// Everything that defines one run. Two equal specs give the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub model: ModelSpec,
    pub data: DataSpec,
    #[serde(default)]
    pub train: TrainSpec,
    /// LoRA settings; required when `model.finetune = "lora"`.
    #[serde(default)]
    pub lora: Option<LoraSpec>,
    #[serde(default = "default_variant")]
    pub variant: Variant,
    /// When to add dendrites and when to stop; the same rules for both variants.
    #[serde(default)]
    pub tracker: TrackerSpec,
    /// Where and what kind of dendrites (used by the `dendritic` variant).
    #[serde(default)]
    pub dendrites: DendriteSpec,
    /// Seed of initialisation, shuffling and dropout.
    #[serde(default)]
    pub seed: u64,
}

/// When the tracker considers switching (adding dendrites, or stopping a baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchMode {
    /// After `patience` epochs without improvement (and `patience` epochs since the last switch).
    History,
    /// Every `patience` epochs.
    Fixed,
    /// After every epoch.
    EveryEpoch,
    /// Never: plain training for `train.epochs` with best-epoch selection.
    Never,
}

/// The validation-driven tracker (see the README's dendrite section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerSpec {
    #[serde(default = "default_switch_mode")]
    pub mode: SwitchMode,
    /// Epochs without improvement before a switch (history mode), or the
    /// switch period (fixed mode).
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// Relative improvement needed, indexed by the number of dendrite sets added.
    #[serde(default = "default_thresholds")]
    pub improvement_thresholds: Vec<f64>,
    /// Absolute improvement needed.
    #[serde(default = "default_abs_threshold")]
    pub abs_threshold: f64,
    /// Running-score smoothing window (1: the raw score).
    #[serde(default = "default_one")]
    pub history_lookback: usize,
    /// Smoke test: add a set after each of the first epochs up to
    /// `dendrites.max` and stop; never for real experiments.
    #[serde(default)]
    pub testing_capacity: bool,
    /// Score the test split every epoch (reported per architecture, never used to select).
    #[serde(default = "default_true")]
    pub test_every_epoch: bool,
}

fn default_switch_mode() -> SwitchMode {
    SwitchMode::History
}
fn default_patience() -> usize {
    10
}
fn default_thresholds() -> Vec<f64> {
    vec![1e-3, 1e-4, 0.0]
}
fn default_abs_threshold() -> f64 {
    1e-5
}

impl Default for TrackerSpec {
    fn default() -> Self {
        toml::from_str("").expect("all TrackerSpec fields have defaults")
    }
}

impl TrackerSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if self.patience == 0
            && self.mode != SwitchMode::EveryEpoch
            && self.mode != SwitchMode::Never
        {
            return Err(bad("tracker.patience", "must be at least 1"));
        }
        if self.improvement_thresholds.is_empty() {
            return Err(bad(
                "tracker.improvement_thresholds",
                "needs at least one value",
            ));
        }
        if self
            .improvement_thresholds
            .iter()
            .any(|t| !(0.0..1.0).contains(t))
        {
            return Err(bad(
                "tracker.improvement_thresholds",
                "values must be in [0, 1)",
            ));
        }
        if self.abs_threshold.is_nan() || self.abs_threshold < 0.0 {
            return Err(bad("tracker.abs_threshold", "must be >= 0"));
        }
        if self.history_lookback == 0 {
            return Err(bad("tracker.history_lookback", "must be at least 1"));
        }
        Ok(())
    }
}

/// The shape of each dendrite module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DendriteKind {
    /// `full` for layers with at most 1M weights, `low_rank` above.
    Auto,
    /// A full copy of the wrapped layer's shape (as the reference).
    Full,
    /// `B A x` with rank `dendrites.rank`: for big layers.
    LowRank,
}

/// Non-linearity of the dendrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Sigmoid,
    Tanh,
    Relu,
}

/// Where and what kind of dendrites the `dendritic` variant adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DendriteSpec {
    /// Layer-name patterns: a layer's full name or its last segment, `*`
    /// matching any run of characters (empty: the architecture's default).
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default = "default_dendrite_kind")]
    pub kind: DendriteKind,
    #[serde(default = "default_dendrite_rank")]
    pub rank: usize,
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Standard deviation of a new dendrite's weights.
    #[serde(default = "default_init_scale")]
    pub init_scale: f64,
    /// Most dendrite sets added.
    #[serde(default = "default_max_dendrites")]
    pub max: usize,
    /// Fresh sets tried when a set fails to beat the best score.
    #[serde(default = "default_max_tries")]
    pub max_tries: usize,
}

fn default_dendrite_kind() -> DendriteKind {
    DendriteKind::Auto
}
fn default_dendrite_rank() -> usize {
    8
}
fn default_activation() -> Activation {
    Activation::Sigmoid
}
fn default_init_scale() -> f64 {
    0.01
}
fn default_max_dendrites() -> usize {
    3
}
fn default_max_tries() -> usize {
    2
}

impl Default for DendriteSpec {
    fn default() -> Self {
        toml::from_str("").expect("all DendriteSpec fields have defaults")
    }
}

impl DendriteSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if self.kind != DendriteKind::Full && self.rank == 0 {
            return Err(bad("dendrites.rank", "must be at least 1"));
        }
        if !(self.init_scale > 0.0 && self.init_scale.is_finite()) {
            return Err(bad("dendrites.init_scale", "must be a positive number"));
        }
        if self.max == 0 {
            return Err(bad("dendrites.max", "must be at least 1"));
        }
        if self.max_tries == 0 {
            return Err(bad("dendrites.max_tries", "must be at least 1"));
        }
        if self.targets.iter().any(|t| t.is_empty()) {
            return Err(bad("dendrites.targets", "patterns must not be empty"));
        }
        Ok(())
    }
}

fn default_variant() -> Variant {
    Variant::Baseline
}

/// A spec that cannot run, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: `{field}`: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl JobSpec {
    /// Checks everything that can be checked without touching files.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.model.path.is_none() && self.model.hub_id.is_none() {
            return Err(bad("model.path", "set `model.path` or `model.hub_id`"));
        }
        if self.data.path.is_none() && self.data.hub_id.is_none() {
            return Err(bad("data.path", "set `data.path` or `data.hub_id`"));
        }
        if self.model.max_len < 8 {
            return Err(bad("model.max_len", "must be at least 8"));
        }
        let s = &self.data.split;
        for (name, v) in [("train", s.train), ("val", s.val), ("test", s.test)] {
            if !(v > 0.0 && v < 1.0) {
                return Err(bad(&format!("data.split.{name}"), "must be in (0, 1)"));
            }
        }
        if ((s.train + s.val + s.test) - 1.0).abs() > 1e-6 {
            return Err(bad("data.split", "train + val + test must sum to 1"));
        }
        let t = &self.train;
        if t.epochs == 0 {
            return Err(bad("train.epochs", "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(bad("train.batch_size", "must be at least 1"));
        }
        if t.grad_accum == 0 {
            return Err(bad("train.grad_accum", "must be at least 1"));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(bad("train.lr", "must be a positive number"));
        }
        if !(0.0..1.0).contains(&t.warmup) {
            return Err(bad("train.warmup", "must be in [0, 1)"));
        }
        if let Some(f) = t.plateau_factor {
            if !(f > 0.0 && f < 1.0) {
                return Err(bad("train.plateau_factor", "must be in (0, 1)"));
            }
        }
        if let Some(c) = t.clip_norm {
            if c <= 0.0 {
                return Err(bad("train.clip_norm", "must be positive"));
            }
        }
        match (self.model.finetune, &self.lora) {
            (Finetune::Lora, None) => {
                return Err(bad(
                    "lora",
                    "`model.finetune = \"lora\"` needs a [lora] table",
                ))
            }
            (Finetune::Lora, Some(l)) if l.r == 0 => {
                return Err(bad("lora.r", "must be at least 1"))
            }
            (Finetune::Full | Finetune::Head, Some(_)) => {
                return Err(bad(
                    "lora",
                    "a [lora] table needs `model.finetune = \"lora\"`",
                ))
            }
            _ => {}
        }
        if self.model.quantize != Quantize::None && self.model.finetune == Finetune::Full {
            return Err(bad(
                "model.quantize",
                "a quantized base cannot be fine-tuned in full; use finetune = \"lora\" or \"head\"",
            ));
        }
        self.tracker.validate()?;
        self.dendrites.validate()?;
        Ok(())
    }

    /// The hash shared by the runs that differ only in variant, dendrite
    /// settings and seed: runs with the same group are compared, and paired
    /// by seed.
    pub fn comparison_group(&self) -> String {
        let mut s = self.clone();
        s.variant = Variant::Baseline;
        s.dendrites = DendriteSpec::default();
        s.seed = 0;
        s.config_hash()
    }

    /// A stable hash of the spec (hex SHA-256 of its canonical JSON), shared
    /// by every job with the same settings.
    pub fn config_hash(&self) -> String {
        let value = serde_json::to_value(self).expect("specs serialise");
        let canonical = serde_json::to_string(&value).expect("values serialise");
        let digest = Sha256::digest(canonical.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> JobSpec {
        toml::from_str(
            r#"
            [model]
            arch = "bert"
            path = "/m"
            [data]
            path = "/d"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_fill_in_and_validate() {
        let s = minimal();
        assert_eq!(s.train.epochs, 3);
        assert_eq!(s.data.split.train, 0.70);
        assert_eq!(s.model.max_len, 128);
        s.validate().unwrap();
    }

    #[test]
    fn lora_needs_table() {
        let mut s = minimal();
        s.model.finetune = Finetune::Lora;
        assert_eq!(s.validate().unwrap_err().field, "lora");
        s.lora = Some(LoraSpec::default());
        s.validate().unwrap();
    }

    #[test]
    fn bad_split_names_field() {
        let mut s = minimal();
        s.data.split.test = 0.5;
        assert_eq!(s.validate().unwrap_err().field, "data.split");
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = minimal();
        let mut b = minimal();
        assert_eq!(a.config_hash(), b.config_hash());
        b.seed = 1;
        assert_ne!(a.config_hash(), b.config_hash());
        assert_eq!(a.config_hash().len(), 16);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let e = toml::from_str::<JobSpec>(
            "[model]\narch = \"bert\"\npath = \"/m\"\nbogus = 1\n[data]\npath = \"/d\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
