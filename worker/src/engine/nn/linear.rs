//! The single linear layer used by every model: the injection point where
//! adapters attach. A layer knows its full dotted name (Hugging Face
//! naming), so adapters are placed by name pattern.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Result, Tensor};

use super::dendrite::Dendrites;
use super::lora::{adapter_delta, lora_linear, Adapter};
use super::matmul::matmul;
use super::ops;
use super::params::{Init, Param, Params};
use super::{DendriteUse, Pass};

/// The base weight of a linear layer (`[out, in]`).
#[derive(Clone)]
pub enum Weight {
    Dense(Param),
    Quantized(Arc<QTensor>),
}

/// Low-rank adapter: `y += (dropout(x) A^T B^T) * alpha / r`.
#[derive(Clone)]
pub struct Lora {
    pub a: Param,
    pub b: Param,
    pub scale: f64,
    pub dropout: f64,
}

impl Lora {
    /// The adapter with its factors `a`, `b` in the compute dtype.
    fn adapter<'a>(&self, a: &'a Tensor, b: &'a Tensor) -> Adapter<'a> {
        Adapter {
            a,
            b,
            scale: self.scale,
            dropout: self.dropout,
        }
    }
}

/// LoRA settings resolved for one model.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    pub random_b: bool,
}

impl LoraConfig {
    /// Whether the layer called `name` gets an adapter: its last segment
    /// (or its whole name) equals a target.
    pub fn matches(&self, name: &str) -> bool {
        let last = name.rsplit('.').next().unwrap_or(name);
        self.targets.iter().any(|t| t == last || t == name)
    }
}

/// A linear layer with optional bias and adapter.
#[derive(Clone)]
pub struct Linear {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Weight,
    pub bias: Option<Param>,
    pub lora: Option<Lora>,
    /// Dendrites wrapping this layer (the `dendritic` variant).
    pub dendrites: Option<Dendrites>,
}

impl Linear {
    /// Loads `{name}.weight` (and `{name}.bias` when `bias`) and attaches
    /// LoRA when `lora` targets this layer.
    pub fn load(
        p: &mut Params,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        lora: Option<&LoraConfig>,
    ) -> crate::engine::nn::params::Result<Linear> {
        let wname = format!("{name}.weight");
        let shape = [out_features, in_features];
        let weight = match p.quantized(&wname, &shape)? {
            Some(q) => Weight::Quantized(q),
            None => Weight::Dense(p.base(&wname, &shape)?),
        };
        let bias = if bias {
            Some(p.base(&format!("{name}.bias"), &[out_features])?)
        } else {
            None
        };
        let lora = match lora {
            Some(cfg) if cfg.matches(name) => {
                Some(new_lora(p, name, in_features, out_features, cfg)?)
            }
            _ => None,
        };
        Ok(Linear {
            name: name.to_string(),
            in_features,
            out_features,
            weight,
            bias,
            lora,
            dendrites: None,
        })
    }

    /// A trainable classification head: weights N(0, 0.02), bias zero,
    /// or stored values as [`Params::new_head_tensor`] decides.
    pub fn new_head(
        p: &mut Params,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> crate::engine::nn::params::Result<Linear> {
        let w = p.new_head_tensor(
            &format!("{name}.weight"),
            &[out_features, in_features],
            Init::Normal(0.02),
        )?;
        let b = if bias {
            Some(Param::Train(p.new_head_tensor(
                &format!("{name}.bias"),
                &[out_features],
                Init::Zeros,
            )?))
        } else {
            None
        };
        Ok(Linear {
            name: name.to_string(),
            in_features,
            out_features,
            weight: Weight::Dense(Param::Train(w)),
            bias: b,
            lora: None,
            dendrites: None,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Pass) -> Result<Tensor> {
        let dtype = x.dtype();
        // One large GEMM over all leading dimensions.
        let dims = x.dims().to_vec();
        let lead: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((lead, self.in_features))?;
        // A bias that builds no gradient (frozen, or read detached under
        // inference) is added inside the product; a trained one is attached
        // after it, with its own backward.
        let bias = match &self.bias {
            Some(b) => Some(ctx.param(b, dtype)?),
            None => None,
        };
        let (frozen_bias, trained_bias) = match bias {
            Some(b) if b.track_op() => (None, Some(b)),
            b => (b, None),
        };
        let mut y = match (&self.weight, &self.lora) {
            // A frozen dense base with its adapter: one op (see `lora`).
            (Weight::Dense(w @ Param::Frozen(_)), Some(l)) if trained_bias.is_none() => {
                let (a, b) = (ctx.param(&l.a, dtype)?, ctx.param(&l.b, dtype)?);
                let w = ctx.param(w, dtype)?;
                return self.finish(
                    lora_linear(&x2, &w, frozen_bias.as_ref(), l.adapter(&a, &b), ctx)?,
                    &x2,
                    dims,
                    ctx,
                );
            }
            (Weight::Dense(w), _) => matmul(&x2, &ctx.param(w, dtype)?.t()?, frozen_bias.as_ref())?,
            (Weight::Quantized(q), _) => {
                let y = ops::quantized_matmul(&x2, q)?;
                match &frozen_bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        };
        if let Some(b) = &trained_bias {
            y = ops::bias_add(&y, b)?;
        }
        if let Some(l) = &self.lora {
            let (a, b) = (ctx.param(&l.a, dtype)?, ctx.param(&l.b, dtype)?);
            y = (y + adapter_delta(&x2, &l.adapter(&a, &b), ctx)?)?;
        }
        self.finish(y, &x2, dims, ctx)
    }

    /// The dendrite term added to `y` (`[N, out]`, from input `x2`), and
    /// `y` back in the input's leading dimensions.
    fn finish(
        &self,
        mut y: Tensor,
        x2: &Tensor,
        mut dims: Vec<usize>,
        ctx: &Pass,
    ) -> Result<Tensor> {
        if let Some(d) = &self.dendrites {
            match &ctx.dendrites {
                DendriteUse::Drop => {}
                DendriteUse::Mean(means) => {
                    if let Some(m) = means.get(&self.name) {
                        y = y.broadcast_add(&m.to_dtype(y.dtype())?)?;
                    }
                }
                DendriteUse::Keep | DendriteUse::Record(_) => {
                    if let Some(term) = d.forward(x2, ctx)? {
                        ctx.record_term(&self.name, &term)?;
                        y = (y + term)?;
                    }
                }
            }
        }
        *dims.last_mut().expect("rank >= 1") = self.out_features;
        y.reshape(dims)
    }

    /// Folds the adapter into a dense frozen base weight (inference).
    /// Quantized bases keep their adapter: merging would lose the quantization.
    pub fn merge_lora(&mut self) -> Result<()> {
        let (Some(l), Weight::Dense(Param::Frozen(w))) = (&self.lora, &self.weight) else {
            return Ok(());
        };
        // Detached: the merged weight is a constant, not a node of the
        // adapters' graph.
        let a = l.a.get(DType::F32)?.detach();
        let b = l.b.get(DType::F32)?.detach();
        let delta = (b.matmul(&a)? * l.scale)?;
        let merged = (w.to_dtype(DType::F32)? + delta)?
            .to_dtype(w.dtype())?
            .detach();
        self.weight = Weight::Dense(Param::Frozen(merged));
        self.lora = None;
        Ok(())
    }
}

fn new_lora(
    p: &mut Params,
    name: &str,
    in_features: usize,
    out_features: usize,
    cfg: &LoraConfig,
) -> crate::engine::nn::params::Result<Lora> {
    let r = cfg.r;
    // Kaiming-uniform with a = sqrt(5), as PEFT: U(-1/sqrt(in), 1/sqrt(in)).
    let bound = 1.0 / (in_features as f64).sqrt();
    let a = p.new_trainable(
        &format!("{name}.lora_A"),
        &[r, in_features],
        Init::Uniform(bound),
    )?;
    let b_init = if cfg.random_b {
        Init::Normal(0.02)
    } else {
        Init::Zeros
    };
    let b = p.new_trainable(&format!("{name}.lora_B"), &[out_features, r], b_init)?;
    Ok(Lora {
        a: Param::Train(a),
        b: Param::Train(b),
        scale: cfg.alpha / r as f64,
        dropout: cfg.dropout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::nn::params::TrainPolicy;
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    /// A LoRA layer over a frozen `[5, 7]` weight with a frozen bias.
    fn lora_layer() -> Linear {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "l.weight".to_string(),
                Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap(),
            ),
            (
                "l.bias".to_string(),
                Tensor::randn(0f32, 1.0, 5, &dev).unwrap(),
            ),
        ]);
        let policy = TrainPolicy {
            train_base: false,
            freeze: vec![],
        };
        let mut p = Params::from_tensors(tensors, &dev, DType::F32, policy, 0);
        let cfg = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: vec!["l".into()],
            random_b: true,
        };
        Linear::load(&mut p, "l", 7, 5, true, Some(&cfg)).unwrap()
    }

    /// Mean ablation: recording keeps the output, and the ablated output is
    /// the plain layer plus the recorded mean term, which differs from
    /// zeroing (knock-out) by exactly that mean.
    #[test]
    fn mean_ablation_replaces_the_term_by_its_recorded_mean() {
        use super::super::dendrite::Dendrites;
        use common::spec::{Activation, DendriteKind};
        use rand::SeedableRng;
        let dev = Device::Cpu;
        let mut layer = lora_layer();
        let mut d = Dendrites::new(DendriteKind::Full, 0, Activation::Sigmoid, 7, 5, true);
        d.add(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1), 1.0, &dev)
            .unwrap();
        // A gate that lets the term through (a new set's gate is zero).
        d.t[0] = Param::Frozen(Tensor::new(&[1f32, -2.0, 0.5, 3.0, 1.5], &dev).unwrap());
        layer.dendrites = Some(d);
        let x = Tensor::randn(0f32, 1.0, (6, 7), &dev).unwrap();
        let max = |t: Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let kept = layer.forward(&x, &Pass::inference()).unwrap();
        let recording = Pass::recording();
        let recorded = layer.forward(&x, &recording).unwrap();
        assert_eq!(max((&recorded - &kept).unwrap()), 0.0);
        let means = recording.dendrite_means().unwrap();
        let term = (&kept - layer.forward(&x, &Pass::knockout()).unwrap()).unwrap();
        let want = term.mean(0).unwrap();
        assert!(max((&means["l"] - &want).unwrap()) < 1e-5);
        assert!(max(want.clone()) > 0.1, "the term has a real mean");
        let ablated = layer.forward(&x, &Pass::mean_ablated(means)).unwrap();
        let zeroed = layer.forward(&x, &Pass::knockout()).unwrap();
        let offset = (&ablated - &zeroed).unwrap();
        assert!(max(offset.broadcast_sub(&want).unwrap()) < 1e-5);
    }

    /// The frozen weight costs no weight-gradient product: no gradient of
    /// its shape (or its transpose's, which is what a view would be keyed
    /// by) exists anywhere in the store, while the adapters get theirs.
    #[test]
    fn frozen_weight_gets_no_gradient() {
        let layer = lora_layer();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &Device::Cpu).unwrap()).unwrap();
        let y = layer.forward(x.as_tensor(), &Pass::eval()).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let shapes: Vec<Vec<usize>> = grads
            .get_ids()
            .map(|id| grads.get_id(*id).unwrap().dims().to_vec())
            .collect();
        assert!(
            !shapes.iter().any(|s| s == &[5, 7] || s == &[7, 5]),
            "a weight-shaped gradient was computed: {shapes:?}"
        );
        assert!(
            !shapes.iter().any(|s| s == &[5]),
            "bias gradient: {shapes:?}"
        );
        let lora = layer.lora.as_ref().unwrap();
        for p in [&lora.a, &lora.b] {
            let Param::Train(v) = p else { panic!() };
            assert!(grads.get(v.as_tensor()).is_some());
        }
    }

    /// Merging gives the same outputs and leaves no link to the adapters:
    /// the merged weight is a constant.
    #[test]
    fn merged_weight_is_detached() {
        let mut layer = lora_layer();
        let x = Tensor::randn(0f32, 1.0, (3, 7), &Device::Cpu).unwrap();
        let before = layer.forward(&x, &Pass::eval()).unwrap();
        let lora = layer.lora.clone().unwrap();
        layer.merge_lora().unwrap();
        let Weight::Dense(Param::Frozen(w)) = &layer.weight else {
            panic!("merged weight is frozen and dense")
        };
        assert!(!w.track_op(), "the merged weight records an op");
        let xv = Var::from_tensor(&x).unwrap();
        let after = layer.forward(xv.as_tensor(), &Pass::eval()).unwrap();
        let d = (&after - &before)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
        let grads = after.sum_all().unwrap().backward().unwrap();
        for p in [&lora.a, &lora.b] {
            let Param::Train(v) = p else { panic!() };
            assert!(
                grads.get(v.as_tensor()).is_none(),
                "gradient reached an adapter"
            );
        }
    }
}
