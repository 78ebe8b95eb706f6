//! Loads base weights and hands each layer either a frozen tensor or a
//! trainable variable, by name. Every trainable tensor of a model is
//! registered here, in creation order, so the optimiser, the gradient
//! checks and the checkpoint writer all see the same list.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use common::spec::{HeadInit, Quantize};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What went wrong while loading weights.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("no *.safetensors files in {0}")]
    NoWeights(PathBuf),
    #[error("weight `{name}` not found in {dir} (tried: {tried})")]
    Missing {
        name: String,
        dir: String,
        tried: String,
    },
    #[error("weight `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ParamError>;

/// A weight as a layer sees it.
#[derive(Clone)]
pub enum Param {
    /// Frozen, stored in the compute dtype.
    Frozen(Tensor),
    /// Trained; an f32 master copy cast to the compute dtype on use.
    Train(Var),
}

impl Param {
    /// The tensor to compute with, in `dtype`.
    pub fn get(&self, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            Param::Frozen(t) if t.dtype() == dtype => Ok(t.clone()),
            // Frozen dendrite gate rows are kept in f32.
            Param::Frozen(t) => t.to_dtype(dtype),
            Param::Train(v) if v.dtype() == dtype => Ok(v.as_tensor().clone()),
            Param::Train(v) => v.as_tensor().to_dtype(dtype),
        }
    }
}

/// How a new trainable tensor is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Zeros,
    Normal(f64),
    Uniform(f64),
}

/// A standard normal sample (Box-Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Which base weights are trained.
pub struct TrainPolicy {
    /// Train base weights at all (full fine-tuning).
    pub train_base: bool,
    /// Name substrings of base weights that stay frozen even then.
    pub freeze: Vec<String>,
}

impl TrainPolicy {
    pub fn is_trainable(&self, name: &str) -> bool {
        self.train_base && !self.freeze.iter().any(|f| name.contains(f.as_str()))
    }
}

/// The weights of one model: the base checkpoint plus every trainable tensor.
pub struct Params {
    tensors: HashMap<String, Tensor>,
    dir: String,
    pub device: Device,
    pub dtype: DType,
    pub policy: TrainPolicy,
    pub quantize: Quantize,
    /// Whether a classification head found in the base checkpoint is used.
    pub head: HeadInit,
    /// Names given by overlays (trained parameters of an earlier run).
    overlaid: HashSet<String>,
    trainable: Vec<(String, Var)>,
    frozen_elems: usize,
    rng: ChaCha8Rng,
}

impl Params {
    /// Reads every `*.safetensors` file of `dir` (sorted by name), plus
    /// `overlays` (trained parameters from an earlier run) which take precedence.
    pub fn load(
        dir: &Path,
        overlays: &[PathBuf],
        device: &Device,
        dtype: DType,
        policy: TrainPolicy,
        quantize: Quantize,
        seed: u64,
    ) -> Result<Params> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| candle_core::Error::Msg(format!("cannot read {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ParamError::NoWeights(dir.to_path_buf()));
        }
        let base_files = files.len();
        files.extend(overlays.iter().cloned());
        let mut tensors = HashMap::new();
        let mut overlaid = HashSet::new();
        for (i, f) in files.iter().enumerate() {
            // Loaded to CPU first; moved to the device and dtype on first use.
            for (name, t) in candle_core::safetensors::load(f, &Device::Cpu)? {
                crate::engine::beat::beat();
                if i >= base_files {
                    overlaid.insert(name.clone());
                }
                tensors.insert(name, t);
            }
        }
        Ok(Params {
            tensors,
            dir: dir.display().to_string(),
            device: device.clone(),
            dtype,
            policy,
            quantize,
            head: HeadInit::Fresh,
            overlaid,
            trainable: Vec::new(),
            frozen_elems: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// Builds a store from in-memory tensors (tests and benchmarks).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
        policy: TrainPolicy,
        seed: u64,
    ) -> Params {
        Params {
            tensors,
            dir: "<memory>".into(),
            device: device.clone(),
            dtype,
            policy,
            quantize: Quantize::None,
            head: HeadInit::Fresh,
            overlaid: HashSet::new(),
            trainable: Vec::new(),
            frozen_elems: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A checkpoint tensor by name, as stored (f32 master copies are made by callers).
    pub fn get_raw(&self, name: &str) -> Option<Tensor> {
        self.tensors.get(name).and_then(|t| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_device(&self.device))
                .ok()
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The first of `names` present in the checkpoint.
    pub fn resolve(&self, names: &[String]) -> Result<String> {
        names
            .iter()
            .find(|n| self.tensors.contains_key(n.as_str()))
            .cloned()
            .ok_or_else(|| ParamError::Missing {
                name: names[0].clone(),
                dir: self.dir.clone(),
                tried: names.join(", "),
            })
    }

    fn raw(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| ParamError::Missing {
            name: name.to_string(),
            dir: self.dir.clone(),
            tried: name.to_string(),
        })?;
        if t.dims() != shape {
            return Err(ParamError::Shape {
                name: name.to_string(),
                got: t.dims().to_vec(),
                want: shape.to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// A base weight: trainable or frozen according to the policy.
    pub fn base(&mut self, name: &str, shape: &[usize]) -> Result<Param> {
        let t = self.raw(name, shape)?;
        if self.policy.is_trainable(name) {
            let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
            Ok(Param::Train(self.register(name, t)?))
        } else {
            self.frozen_elems += t.elem_count();
            Ok(Param::Frozen(
                t.to_dtype(self.dtype)?.to_device(&self.device)?,
            ))
        }
    }

    /// A frozen base weight quantized to the configured format, when the
    /// weight's shape allows it (rows a multiple of the 32-value block).
    pub fn quantized(&mut self, name: &str, shape: &[usize]) -> Result<Option<Arc<QTensor>>> {
        let kind = match self.quantize {
            Quantize::None => return Ok(None),
            Quantize::Q8_0 => GgmlDType::Q8_0,
            Quantize::Q4_0 => GgmlDType::Q4_0,
        };
        if self.policy.is_trainable(name) || !shape[shape.len() - 1].is_multiple_of(32) {
            return Ok(None);
        }
        let t = self.raw(name, shape)?.to_dtype(DType::F32)?;
        self.frozen_elems += t.elem_count();
        let q = QTensor::quantize_onto(&t, kind, &self.device)?;
        Ok(Some(Arc::new(q)))
    }

    /// A new trainable tensor: its value from the checkpoint when present
    /// (resuming or evaluating trained parameters), else drawn from `init`
    /// with the store's seeded RNG.
    pub fn new_trainable(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let t = if self.tensors.contains_key(name) {
            self.raw(name, shape)?
        } else {
            self.draw(shape, init)?
        };
        let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
        self.register(name, t)
    }

    /// A classification head tensor: the trained value of an earlier run
    /// when an overlay has it, the base checkpoint's only when
    /// [`Params::head`] asks for it, else drawn from `init` (a checkpoint's
    /// head was trained for another label set or order).
    pub fn new_head_tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let use_stored = self.overlaid.contains(name) || self.head == HeadInit::Checkpoint;
        if use_stored {
            return self.new_trainable(name, shape, init);
        }
        let t = self.draw(shape, init)?.to_device(&self.device)?;
        self.register(name, t)
    }

    /// A tensor drawn from `init` with the seeded RNG (on CPU, then moved).
    pub fn draw(&mut self, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let rng = &mut self.rng;
        let v: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Normal(std) => (0..n).map(|_| (normal(rng) * std) as f32).collect(),
            Init::Uniform(bound) => (0..n)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                .collect(),
        };
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    fn register(&mut self, name: &str, t: Tensor) -> Result<Var> {
        let var = Var::from_tensor(&t)?;
        self.trainable.push((name.to_string(), var.clone()));
        Ok(var)
    }

    /// Every trainable tensor, in creation order.
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.trainable
    }

    /// (frozen, trainable) parameter counts.
    pub fn counts(&self) -> (usize, usize) {
        let trainable = self.trainable.iter().map(|(_, v)| v.elem_count()).sum();
        (self.frozen_elems, trainable)
    }

    /// Drops the checkpoint tensors once the model is built.
    pub fn release_checkpoint(&mut self) {
        self.tensors.clear();
    }
}
