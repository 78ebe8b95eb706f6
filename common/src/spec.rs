//! The complete, self-contained description of one run: model, data, split,
//! training and adapter settings. A spec is what a job carries and what a run
//! saves next to its results; nothing outside it may change a run's outcome.
//!
//! Every section has one `Default` (the values a sweep file may leave out)
//! and its own `validate`; every enum is spelled one way, its serde name,
//! which `Display` and `FromStr` also use.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `Display` and `FromStr` through the serde name, so each enum value has
/// exactly one spelling everywhere (files, tables, messages).
macro_rules! serde_names {
    ($($t:ty),* $(,)?) => {$(
        serde_plain::derive_display_from_serialize!($t);
        serde_plain::derive_fromstr_from_deserialize!($t);
    )*};
}

serde_names!(
    Arch,
    Finetune,
    HeadInit,
    Precision,
    Quantize,
    Agreement,
    Schedule,
    Metric,
    Variant,
    SwitchMode,
    DendriteKind,
    Activation,
);

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    /// Every base weight is trained, except names matching `model.freeze`.
    #[default]
    Full,
    /// The base is frozen; LoRA adapters and the classification head train.
    Lora,
    /// Only the classification head trains.
    Head,
}

/// Upper bounds a job may ask for: beyond them a spec is a mistake (or an
/// attempt to tie a worker up), not an experiment on this data set.
pub const MAX_EPOCHS: usize = 1000;
/// Sentences per micro-batch.
pub const MAX_BATCH: usize = 4096;
/// Tokens per sentence (Phi-2's context is 2048).
pub const MAX_LEN: usize = 4096;

/// Where the classification head's first values come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// A new head (N(0, 0.02) weights, zero bias), even when the
    /// checkpoint has one.
    #[default]
    Fresh,
    /// The checkpoint's own head (`classifier` / `score`), whose
    /// `id2label` must name this data set's labels in this order.
    Checkpoint,
}

impl HeadInit {
    fn is_fresh(&self) -> bool {
        *self == HeadInit::Fresh
    }
}

/// The compute precision of the frozen base and the activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 on CPU, bf16 on CUDA.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

/// Optional quantisation of the frozen base weights (LoRA / head training only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantize {
    #[default]
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
    #[serde(default)]
    pub finetune: Finetune,
    /// Name substrings of base weights kept frozen in `full` fine-tuning.
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Longest tokenized sentence; longer ones are truncated.
    #[serde(default = "ModelSpec::default_max_len")]
    pub max_len: usize,
    #[serde(default)]
    pub precision: Precision,
    #[serde(default)]
    pub quantize: Quantize,
    /// Dropout on hidden states and attention (`None`: the model config's value).
    #[serde(default)]
    pub dropout: Option<f64>,
    /// A fresh classification head (default) or the checkpoint's own.
    /// Left out of the canonical spec when fresh, so earlier hashes hold.
    #[serde(default, skip_serializing_if = "HeadInit::is_fresh")]
    pub head: HeadInit,
    /// With `finetune = "head"`: compute the frozen body's features (the
    /// pooler's or score layer's input) once, with dropout off in the body,
    /// and train the head on them: the same head training without the
    /// body's forward pass every epoch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_features: bool,
}

impl ModelSpec {
    fn default_max_len() -> usize {
        128
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.path.is_none() && self.hub_id.is_none() {
            return Err(bad("model.path", "set `model.path` or `model.hub_id`"));
        }
        if !(8..=MAX_LEN).contains(&self.max_len) {
            return Err(bad(
                "model.max_len",
                format!("must be between 8 and {MAX_LEN}"),
            ));
        }
        if self.quantize != Quantize::None && self.finetune == Finetune::Full {
            return Err(bad(
                "model.quantize",
                "a quantized base cannot be fine-tuned in full; use finetune = \"lora\" or \"head\"",
            ));
        }
        if self.cache_features && self.finetune != Finetune::Head {
            return Err(bad(
                "model.cache_features",
                "needs finetune = \"head\" (only a frozen body can be cached)",
            ));
        }
        if let Some(d) = self.dropout {
            if !(0.0..1.0).contains(&d) {
                return Err(bad("model.dropout", "must be in [0, 1)"));
            }
        }
        if self.arch == Arch::Phi && self.precision == Precision::F16 {
            return Err(bad(
                "model.precision",
                "f16 overflows in Phi's activations (Phi-2 was trained in bf16): use \"bf16\" or \"f32\"",
            ));
        }
        Ok(())
    }
}

/// Which Financial PhraseBank agreement level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Agreement {
    #[default]
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
    pub fn file_name(self) -> String {
        format!("Sentences_{self}.txt")
    }
}

/// The data set and its split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// A directory with `Sentences_*.txt`, or the path of `FinancialPhraseBank-v1.0.zip`.
    /// `${VAR}` and `${VAR:-default}` are expanded from the environment.
    pub path: Option<String>,
    /// A Hugging Face dataset id holding the original zip (needs the `hub` feature).
    pub hub_id: Option<String>,
    pub agreement: Agreement,
    pub split: SplitSpec,
}

impl DataSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if self.path.is_none() && self.hub_id.is_none() {
            return Err(bad("data.path", "set `data.path` or `data.hub_id`"));
        }
        self.split.validate()
    }
}

/// Stratified train/validation/test fractions and the split's own seed
/// (independent of the training seed, so every seed sees the same split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSpec {
    pub train: f64,
    pub val: f64,
    pub test: f64,
    pub seed: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            train: 0.70,
            val: 0.15,
            test: 0.15,
            seed: 0,
        }
    }
}

impl SplitSpec {
    fn validate(&self) -> Result<(), SpecError> {
        for (name, v) in [
            ("train", self.train),
            ("val", self.val),
            ("test", self.test),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(bad(&format!("data.split.{name}"), "must be in (0, 1)"));
            }
        }
        if ((self.train + self.val + self.test) - 1.0).abs() > 1e-6 {
            return Err(bad("data.split", "train + val + test must sum to 1"));
        }
        Ok(())
    }
}

/// Low-rank adapters on the frozen base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Layer-name suffixes to adapt (empty: the architecture's default,
    /// `query,value` for BERT and `q_proj,k_proj,v_proj,dense` for Phi).
    pub targets: Vec<String>,
    /// Initialise B with N(0, 0.02) instead of zeros (the adapter then changes
    /// the function from step 0; used by gradient checks).
    pub random_b: bool,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Vec::new(),
            random_b: false,
        }
    }
}

impl LoraSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if self.r == 0 {
            return Err(bad("lora.r", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad("lora.dropout", "must be in [0, 1)"));
        }
        if self.targets.iter().any(|t| t.is_empty()) {
            return Err(bad("lora.targets", "names must not be empty"));
        }
        Ok(())
    }
}

/// How the learning rate moves within one training phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warm-up, then linear decay to zero at the last step.
    #[default]
    Linear,
    /// Linear warm-up, then constant.
    Constant,
}

/// Optimiser, schedule and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before one optimiser step.
    pub grad_accum: usize,
    pub lr: f64,
    /// Learning rate of the classification head (`None`: `lr`).
    pub head_lr: Option<f64>,
    pub weight_decay: f64,
    /// Fraction of the optimiser steps spent warming up.
    pub warmup: f64,
    pub schedule: Schedule,
    /// Multiply the learning rate by this factor when the validation score
    /// has not improved for `plateau_patience` epochs (`None`: off).
    pub plateau_factor: Option<f64>,
    pub plateau_patience: usize,
    /// Clip the global gradient norm to this value (`None`: off).
    pub clip_norm: Option<f64>,
    /// Balanced class weights from the training split in the loss.
    pub class_weights: bool,
    /// Validation score that picks the best epoch.
    pub metric: Metric,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            epochs: 3,
            batch_size: 16,
            grad_accum: 1,
            lr: 5e-5,
            head_lr: None,
            weight_decay: 0.01,
            warmup: 0.1,
            schedule: Schedule::default(),
            plateau_factor: None,
            plateau_patience: 1,
            clip_norm: Some(1.0),
            class_weights: true,
            metric: Metric::default(),
        }
    }
}

impl TrainSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(bad(
                "train.epochs",
                format!("must be between 1 and {MAX_EPOCHS}"),
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(bad(
                "train.batch_size",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        if self.grad_accum == 0 {
            return Err(bad("train.grad_accum", "must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(bad("train.lr", "must be a positive number"));
        }
        if self.head_lr.is_some_and(|h| !(h >= 0.0 && h.is_finite())) {
            return Err(bad(
                "train.head_lr",
                "must be >= 0 (0 keeps the head fixed)",
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(bad("train.weight_decay", "must be >= 0"));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return Err(bad("train.warmup", "must be in [0, 1)"));
        }
        if let Some(f) = self.plateau_factor {
            if !(f > 0.0 && f < 1.0) {
                return Err(bad("train.plateau_factor", "must be in (0, 1)"));
            }
        }
        if let Some(c) = self.clip_norm {
            if c.is_nan() || c <= 0.0 {
                return Err(bad("train.clip_norm", "must be positive"));
            }
        }
        Ok(())
    }
}

/// Validation score used for model selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    #[default]
    MacroF1,
}

impl Metric {
    /// The name used in figure labels and prose ("accuracy", "macro-F1").
    pub fn label(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::MacroF1 => "macro-F1",
        }
    }
}

/// The arm of an experiment: what happens when the tracker switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// No dendrites: a switch is early stopping (history mode) or nothing.
    #[default]
    Baseline,
    /// A switch restores the best snapshot, adds a dendrite set and
    /// restarts the optimiser and the schedule.
    Dendritic,
    /// The control arm: a switch does everything the dendritic arm does
    /// (restore the best snapshot, fresh AdamW, schedule restarted) except
    /// adding the set, so a difference to it is the dendrites' own.
    Restart,
    /// The parameter-budget control: each switch adds, where a dendrite
    /// set would go, a plain zero-initialised linear branch of the same
    /// shape (`y = f(x) + W x + b`, no activation, no gate), with the
    /// dendritic arm's restores and restarts.
    Branch,
}

impl Variant {
    /// Whether the tracker runs the dendritic switch rules (restructures).
    pub fn restructures(self) -> bool {
        self != Variant::Baseline
    }
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
    #[serde(default)]
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
    /// How the sweep's report reads the runs (left out of the hash while
    /// it is the default, so that earlier hashes stand).
    #[serde(default, skip_serializing_if = "ReportSpec::is_default")]
    pub report: ReportSpec,
    /// The arm this run belongs to, named by the sweep's `[arms.<name>]`
    /// table (unset: the variant names the arm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

/// The report's reading of a sweep, fixed before the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// The contrast the experiment is about, `"A - B"` with A and B among
    /// `baseline`, `dendritic`, `restart`, `branch` (default
    /// `"dendritic - restart"`): `report.md` shows it first, and its
    /// split-level test is the one the sweep's verdict rests on.
    #[serde(default)]
    pub primary: Option<String>,
}

impl ReportSpec {
    fn is_default(&self) -> bool {
        *self == ReportSpec::default()
    }

    /// The arms of the primary contrast as written: `None` when unset.
    pub fn primary_arms(&self) -> Result<Option<(String, String)>, String> {
        let Some(p) = &self.primary else {
            return Ok(None);
        };
        let (a, b) = p.split_once(" - ").ok_or_else(|| {
            format!("`report.primary` = {p:?}: write it as \"A - B\", e.g. \"dendritic - branch\"")
        })?;
        let (a, b) = (a.trim(), b.trim());
        if a == b {
            return Err(format!(
                "`report.primary` = {p:?}: the two arms are the same"
            ));
        }
        Ok(Some((a.to_string(), b.to_string())))
    }

    /// [`ReportSpec::primary_arms`], both names among `arms`.
    pub fn check_primary(&self, arms: &[String]) -> Result<(), String> {
        let Some((a, b)) = self.primary_arms()? else {
            return Ok(());
        };
        for x in [a, b] {
            if !arms.contains(&x) {
                return Err(format!(
                    "`report.primary` = {:?}: {x:?} is not an arm ({})",
                    self.primary.as_deref().unwrap_or_default(),
                    arms.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The arm names a spec without a named arm can have: its variants.
pub const VARIANT_ARMS: [&str; 4] = ["baseline", "dendritic", "restart", "branch"];

/// Whether `name` can name an arm: letters, digits, '-' and '_'.
pub fn valid_arm_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// When the tracker considers switching (adding dendrites, or stopping a baseline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchMode {
    /// After `patience` epochs without improvement (and `patience` epochs since the last switch).
    #[default]
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
#[serde(default, deny_unknown_fields)]
pub struct TrackerSpec {
    pub mode: SwitchMode,
    /// Epochs without improvement before a switch (history mode), or the
    /// switch period (fixed mode).
    pub patience: usize,
    /// Relative improvement needed, indexed by the number of dendrite sets added.
    pub improvement_thresholds: Vec<f64>,
    /// Absolute improvement needed.
    pub abs_threshold: f64,
    /// Running-score smoothing window (1: the raw score).
    pub history_lookback: usize,
    /// Smoke test: add a set after each of the first epochs up to
    /// `dendrites.max` and stop; never for real experiments.
    pub testing_capacity: bool,
    /// Score the test split every epoch (reported per architecture, never used to select).
    pub test_every_epoch: bool,
}

impl Default for TrackerSpec {
    fn default() -> Self {
        TrackerSpec {
            mode: SwitchMode::default(),
            patience: 10,
            improvement_thresholds: vec![1e-3, 1e-4, 0.0],
            abs_threshold: 1e-5,
            history_lookback: 1,
            testing_capacity: false,
            test_every_epoch: true,
        }
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DendriteKind {
    /// `full` for layers with at most 1M weights, `low_rank` above.
    #[default]
    Auto,
    /// A full copy of the wrapped layer's shape (as the reference).
    Full,
    /// `B A x` with rank `dendrites.rank`: for big layers.
    LowRank,
}

/// Non-linearity of the dendrites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Sigmoid,
    Tanh,
    Relu,
    /// No non-linearity (the branch arm's linear branches).
    Identity,
}

/// Where and what kind of dendrites the `dendritic` variant adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DendriteSpec {
    /// Layer-name patterns: a layer's full name or its last segment, `*`
    /// matching any run of characters (empty: the architecture's default).
    pub targets: Vec<String>,
    pub kind: DendriteKind,
    pub rank: usize,
    pub activation: Activation,
    /// Standard deviation of a new dendrite's weights.
    pub init_scale: f64,
    /// Most dendrite sets added.
    pub max: usize,
    /// Fresh sets tried when a set fails to beat the best score.
    pub max_tries: usize,
    /// AdamW weight decay of dendrite weights, gates and cascade weights
    /// (none by default, as the reference advises).
    #[serde(skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
    /// Learning rate of the added tensors (dendrite sets, or the branch
    /// arm's linear branches); unset: the rate of the layer they are on.
    /// Lets a control arm be tuned on validation without moving the head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for DendriteSpec {
    fn default() -> Self {
        DendriteSpec {
            targets: Vec::new(),
            kind: DendriteKind::default(),
            rank: 8,
            activation: Activation::default(),
            init_scale: 0.01,
            max: 3,
            max_tries: 2,
            weight_decay: 0.0,
            lr: None,
        }
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
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(bad("dendrites.weight_decay", "must be >= 0"));
        }
        if self.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return Err(bad("dendrites.lr", "must be a positive number"));
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
    /// Checks everything that can be checked without touching files: each
    /// section, then the rules that tie sections together.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.model.validate()?;
        self.data.validate()?;
        self.train.validate()?;
        match (self.model.finetune, &self.lora) {
            (Finetune::Lora, None) => {
                return Err(bad(
                    "lora",
                    "`model.finetune = \"lora\"` needs a [lora] table",
                ))
            }
            (Finetune::Lora, Some(l)) => l.validate()?,
            (Finetune::Full | Finetune::Head, Some(_)) => {
                return Err(bad(
                    "lora",
                    "a [lora] table needs `model.finetune = \"lora\"`",
                ))
            }
            _ => {}
        }
        self.tracker.validate()?;
        self.dendrites.validate()?;
        if let Some(arm) = &self.arm {
            if !valid_arm_name(arm) {
                return Err(bad(
                    "arm",
                    format!("{arm:?}: use letters, digits, '-' or '_'"),
                ));
            }
            // The sweep checks the primary contrast against its arms.
            self.report
                .primary_arms()
                .map_err(|m| bad("report.primary", m))?;
        } else {
            let variants: Vec<String> = VARIANT_ARMS.iter().map(|s| s.to_string()).collect();
            self.report
                .check_primary(&variants)
                .map_err(|m| bad("report.primary", m))?;
        }
        Ok(())
    }

    /// The arm this run belongs to: its named arm, else its variant.
    pub fn arm_name(&self) -> String {
        self.arm.clone().unwrap_or_else(|| self.variant.to_string())
    }

    /// The hash shared by the runs that differ only in variant, dendrite
    /// settings, seed and split seed: runs with the same group are
    /// compared, and paired by (split seed, seed).
    pub fn comparison_group(&self) -> String {
        let mut s = self.clone();
        s.variant = Variant::Baseline;
        s.arm = None;
        s.dendrites = DendriteSpec::default();
        s.seed = 0;
        s.data.split.seed = 0;
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

    /// `minimal()`'s hash, as every earlier version computed it.
    const HASH_OF_MINIMAL: &str = "f5a8861182b1a48b";

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
    fn report_primary_names_two_arms_and_dendrite_lr_is_positive() {
        let mut s = minimal();
        s.report.primary = Some("dendritic - branch".into());
        assert_eq!(
            s.report.primary_arms().unwrap(),
            Some(("dendritic".to_string(), "branch".to_string()))
        );
        s.validate().unwrap();
        assert_ne!(s.config_hash(), minimal().config_hash());
        s.report.primary = Some("dendritic vs branch".into());
        assert_eq!(s.validate().unwrap_err().field, "report.primary");
        s.report.primary = Some("dendritic - gated".into());
        let e = s.validate().unwrap_err();
        assert!(e.reason.contains("\"gated\" is not an arm"), "{}", e.reason);
        let mut s = minimal();
        s.dendrites.lr = Some(0.0);
        assert_eq!(s.validate().unwrap_err().field, "dendrites.lr");
        s.dendrites.lr = Some(3e-3);
        s.validate().unwrap();
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
    fn sizes_have_upper_bounds() {
        let mut s = minimal();
        s.train.epochs = MAX_EPOCHS + 1;
        assert_eq!(s.validate().unwrap_err().field, "train.epochs");
        let mut s = minimal();
        s.train.batch_size = MAX_BATCH + 1;
        assert_eq!(s.validate().unwrap_err().field, "train.batch_size");
        let mut s = minimal();
        s.model.max_len = MAX_LEN + 1;
        assert_eq!(s.validate().unwrap_err().field, "model.max_len");
        s.model.max_len = MAX_LEN;
        s.validate().unwrap();
    }

    #[test]
    fn phi_refuses_f16() {
        let mut s = minimal();
        s.model.arch = Arch::Phi;
        s.model.precision = Precision::F16;
        assert_eq!(s.validate().unwrap_err().field, "model.precision");
        s.model.precision = Precision::Bf16;
        s.validate().unwrap();
    }

    #[test]
    fn checkpoint_head_is_asked_for_and_hashed() {
        let fresh = minimal();
        let mut reused = minimal();
        reused.model.head = "checkpoint".parse().unwrap();
        assert_eq!(reused.model.head, HeadInit::Checkpoint);
        assert_eq!(fresh.model.head, HeadInit::Fresh);
        // The default stays out of the canonical form; the choice is in it.
        assert_eq!(fresh.config_hash(), HASH_OF_MINIMAL);
        assert_ne!(reused.config_hash(), fresh.config_hash());
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
    fn every_enum_has_one_spelling() {
        assert_eq!(Metric::MacroF1.to_string(), "macro_f1");
        assert_eq!("macro_f1".parse::<Metric>().unwrap(), Metric::MacroF1);
        assert_eq!(Variant::Dendritic.to_string(), "dendritic");
        assert_eq!(SwitchMode::EveryEpoch.to_string(), "every_epoch");
        assert_eq!(Quantize::Q8_0.to_string(), "q8_0");
        assert_eq!(Agreement::Agree75.to_string(), "75Agree");
        assert_eq!(Agreement::Agree66.file_name(), "Sentences_66Agree.txt");
        assert!("macrof1".parse::<Metric>().is_err());
        let json = serde_json::to_value(Metric::MacroF1).unwrap();
        assert_eq!(json, serde_json::json!(Metric::MacroF1.to_string()));
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let t = TrainSpec::default();
        assert_eq!((t.epochs, t.batch_size, t.grad_accum), (3, 16, 1));
        assert_eq!((t.lr, t.weight_decay, t.warmup), (5e-5, 0.01, 0.1));
        assert_eq!((t.clip_norm, t.class_weights), (Some(1.0), true));
        let s = minimal();
        assert_eq!(s.train, t);
        assert_eq!(s.tracker, TrackerSpec::default());
        assert_eq!(s.dendrites, DendriteSpec::default());
        assert_eq!(s.tracker.patience, 10);
        assert_eq!(s.dendrites.max, 3);
        let m = &s.model;
        assert_eq!(
            (m.arch, m.finetune, m.max_len),
            (Arch::Bert, Finetune::Full, 128)
        );
        assert_eq!((m.precision, m.quantize), (Precision::Auto, Quantize::None));
    }

    #[test]
    fn hash_of_a_known_spec_is_unchanged() {
        // Pins the canonical JSON: results already stored are found again.
        assert_eq!(minimal().config_hash(), HASH_OF_MINIMAL);
    }

    #[test]
    fn each_section_names_its_field() {
        let mut s = minimal();
        s.train.head_lr = Some(-1.0);
        assert_eq!(s.validate().unwrap_err().field, "train.head_lr");
        let mut s = minimal();
        s.model.finetune = Finetune::Lora;
        s.lora = Some(LoraSpec {
            r: 0,
            ..LoraSpec::default()
        });
        assert_eq!(s.validate().unwrap_err().field, "lora.r");
        let mut s = minimal();
        s.dendrites.max = 0;
        assert_eq!(s.validate().unwrap_err().field, "dendrites.max");
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
