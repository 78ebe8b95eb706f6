//! Dendrites on a linear layer `f` with `C` output channels (the last
//! dimension of its output). After `k` additions the layer holds modules
//! `g_0..g_{k-1}`, gate rows `T_j` (`[C]` each) and cascade weights `D_j`
//! (`[j, C]`, for `j >= 1`):
//!
//! ```text
//! a_0 = act(g_0(x))
//! a_j = act(g_j(x) + sum_{i<j} D_j[i] * a_i)
//! y   = f(x) + sum_j T_j * a_j
//! ```
//!
//! A new set starts with `T_k = 0` and `D_k = 0`, so adding one leaves the
//! network's function unchanged; every gate row in use keeps training (the
//! reference builds a new `k x C` gate tensor at each addition and trains it
//! whole). `g_j` is a full copy of `f`'s shape or a rank-`r` product `B_j A_j`.

use candle_core::{DType, Result, Tensor};
use common::spec::{Activation, DendriteKind};
use rand_chacha::ChaCha8Rng;

use super::matmul::matmul;
use super::params::{normal, Param};
use super::Pass;

/// One dendrite module `g_j`.
#[derive(Clone)]
pub enum Module {
    /// `x W^T + b`, W `[C, in]`.
    Full { w: Param, b: Option<Param> },
    /// `x A^T B^T + b`, A `[r, in]`, B `[C, r]`.
    LowRank {
        a: Param,
        b_mat: Param,
        b: Option<Param>,
    },
}

impl Module {
    fn forward(&self, x: &Tensor, ctx: &Pass) -> Result<Tensor> {
        let dt = x.dtype();
        let (y, b) = match self {
            Module::Full { w, b } => (matmul(x, &ctx.param(w, dt)?.t()?, None)?, b),
            Module::LowRank { a, b_mat, b } => (
                matmul(
                    &matmul(x, &ctx.param(a, dt)?.t()?, None)?,
                    &ctx.param(b_mat, dt)?.t()?,
                    None,
                )?,
                b,
            ),
        };
        match b {
            Some(b) => y.broadcast_add(&ctx.param(b, dt)?),
            None => Ok(y),
        }
    }

    fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut v = Vec::new();
        match self {
            Module::Full { w, b } => {
                v.push(("weight", w));
                if let Some(b) = b {
                    v.push(("bias", b));
                }
            }
            Module::LowRank { a, b_mat, b } => {
                v.push(("lora_A", a));
                v.push(("lora_B", b_mat));
                if let Some(b) = b {
                    v.push(("bias", b));
                }
            }
        }
        v
    }
}

/// The dendrites of one layer.
#[derive(Clone)]
pub struct Dendrites {
    pub kind: DendriteKind,
    pub rank: usize,
    pub activation: Activation,
    pub in_features: usize,
    pub channels: usize,
    pub bias: bool,
    pub modules: Vec<Module>,
    /// Gate rows, all trained.
    pub t: Vec<Param>,
    /// `d[j-1]` is `D_j` (`[j, C]`).
    pub d: Vec<Param>,
    /// The branch arm's plain linear branches: modules start at zero, the
    /// activation is the identity and every gate row is a constant 1.
    pub branch: bool,
}

fn act(x: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::Sigmoid => candle_nn::ops::sigmoid(x),
        Activation::Tanh => x.tanh(),
        Activation::Relu => x.relu(),
        Activation::Identity => Ok(x.clone()),
    }
}

fn draw(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    std: f64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (normal(rng) * std) as f32).collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?.to_device(device)
}

fn var(t: Tensor) -> Result<Param> {
    Ok(Param::Train(candle_core::Var::from_tensor(&t)?))
}

impl Dendrites {
    pub fn new(
        kind: DendriteKind,
        rank: usize,
        activation: Activation,
        in_features: usize,
        channels: usize,
        bias: bool,
    ) -> Dendrites {
        Dendrites {
            kind: resolve_kind(kind, in_features, channels),
            rank,
            activation,
            in_features,
            channels,
            bias,
            modules: Vec::new(),
            t: Vec::new(),
            d: Vec::new(),
            branch: false,
        }
    }

    /// Turns these dendrites into the branch arm's plain linear branches
    /// (gates and cascades of sets already present become constants).
    pub fn into_branch(mut self) -> Dendrites {
        self.branch = true;
        self.activation = Activation::Identity;
        let freeze = |p: Param| match p {
            Param::Train(v) => Param::Frozen(v.as_tensor().detach()),
            p => p,
        };
        self.t = std::mem::take(&mut self.t)
            .into_iter()
            .map(freeze)
            .collect();
        self.d = std::mem::take(&mut self.d)
            .into_iter()
            .map(freeze)
            .collect();
        self
    }

    /// The same layer's dendrites with no set added yet.
    pub fn emptied(&self) -> Dendrites {
        Dendrites {
            modules: Vec::new(),
            t: Vec::new(),
            d: Vec::new(),
            ..self.clone()
        }
    }

    pub fn count(&self) -> usize {
        self.modules.len()
    }

    /// Adds one dendrite: `g_k` drawn from `N(0, 1) * init_scale`, `T_k = 0`,
    /// `D_k = 0`; the earlier gate rows keep training.
    pub fn add(
        &mut self,
        rng: &mut ChaCha8Rng,
        init_scale: f64,
        device: &candle_core::Device,
    ) -> Result<()> {
        let (c, i) = (self.channels, self.in_features);
        // A branch starts at zero (its gate is a constant 1); a dendrite
        // starts random behind a zero gate.
        let scale = if self.branch { 0.0 } else { init_scale };
        let bias = if self.bias {
            Some(var(draw(rng, &[c], scale, device)?)?)
        } else {
            None
        };
        let module = match self.kind {
            DendriteKind::Full | DendriteKind::Auto => Module::Full {
                w: var(draw(rng, &[c, i], scale, device)?)?,
                b: bias,
            },
            DendriteKind::LowRank => Module::LowRank {
                // A zero product needs one random factor to ever move.
                a: var(draw(rng, &[self.rank, i], init_scale, device)?)?,
                b_mat: var(draw(rng, &[c, self.rank], scale, device)?)?,
                b: bias,
            },
        };
        let k = self.modules.len();
        self.modules.push(module);
        self.t.push(if self.branch {
            Param::Frozen(Tensor::ones(c, DType::F32, device)?)
        } else {
            var(Tensor::zeros(c, DType::F32, device)?)?
        });
        if k >= 1 {
            let zeros = Tensor::zeros((k, c), DType::F32, device)?;
            // Branches are independent linear layers: no cascade.
            self.d.push(if self.branch {
                Param::Frozen(zeros)
            } else {
                var(zeros)?
            });
        }
        Ok(())
    }

    /// Parameters one addition costs now: `|params(g)| + C + k*C`.
    pub fn addition_cost(&self) -> usize {
        let c = self.channels;
        let g = match self.kind {
            DendriteKind::Full | DendriteKind::Auto => c * self.in_features,
            DendriteKind::LowRank => self.rank * (self.in_features + c),
        } + if self.bias { c } else { 0 };
        g + c + self.count() * c
    }

    /// The dendrite term `sum_j T_j * a_j` for `x` of shape `[n, in]`.
    pub fn forward(&self, x: &Tensor, ctx: &Pass) -> Result<Option<Tensor>> {
        if self.modules.is_empty() {
            return Ok(None);
        }
        let dt = x.dtype();
        let mut acts: Vec<Tensor> = Vec::with_capacity(self.modules.len());
        let mut out: Option<Tensor> = None;
        for (j, m) in self.modules.iter().enumerate() {
            let mut z = m.forward(x, ctx)?;
            if j >= 1 {
                let dj = ctx.param(&self.d[j - 1], dt)?; // [j, C]
                for (i, a) in acts.iter().enumerate() {
                    z = (z + a.broadcast_mul(&dj.get(i)?)?)?;
                }
            }
            let a = act(&z, self.activation)?;
            let term = a.broadcast_mul(&ctx.param(&self.t[j], dt)?)?;
            out = Some(match out {
                Some(o) => (o + term)?,
                None => term,
            });
            acts.push(a);
        }
        Ok(out)
    }

    /// Every dendrite tensor under `prefix` (the layer name): trainable and frozen.
    pub fn named(&self, prefix: &str) -> Vec<(String, Param)> {
        let mut v = Vec::new();
        for (j, m) in self.modules.iter().enumerate() {
            for (n, p) in m.params() {
                v.push((format!("{prefix}.dendrites.{j}.{n}"), p.clone()));
            }
            v.push((format!("{prefix}.dendrites.{j}.T"), self.t[j].clone()));
            if j >= 1 {
                v.push((format!("{prefix}.dendrites.{j}.D"), self.d[j - 1].clone()));
            }
        }
        v
    }

    /// The size of what the sets contribute, for the per-layer panel of
    /// `PAI.png` (0 without sets): dendrites, the mean over channels of
    /// `sum_j |T_j|` (a new set's zero gate row adds nothing, so the curve
    /// has no drop at an addition); branches (whose gates are a constant 1),
    /// the mean |W_j| of their weights (`B` for low-rank ones) summed over
    /// branches, for the same reason.
    pub fn magnitude(&self) -> Result<f64> {
        if self.t.is_empty() {
            return Ok(0.0);
        }
        let mean_abs = |p: &Param| -> Result<f64> {
            Ok(p.get(DType::F32)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64)
        };
        if self.branch {
            let mut sum = 0.0;
            for m in &self.modules {
                sum += match m {
                    Module::Full { w, .. } => mean_abs(w)?,
                    Module::LowRank { b_mat, .. } => mean_abs(b_mat)?,
                };
            }
            return Ok(sum);
        }
        let mut sum = 0.0;
        for t in &self.t {
            sum += mean_abs(t)?;
        }
        Ok(sum)
    }

    /// A deep copy (new variables), for best-model snapshots.
    pub fn snapshot(&self) -> Result<Dendrites> {
        let copy = |p: &Param| -> Result<Param> {
            Ok(match p {
                Param::Frozen(t) => Param::Frozen(t.copy()?.detach()),
                Param::Train(v) => {
                    Param::Train(candle_core::Var::from_tensor(&v.as_tensor().copy()?)?)
                }
            })
        };
        let copy_opt =
            |p: &Option<Param>| -> Result<Option<Param>> { p.as_ref().map(copy).transpose() };
        let modules = self
            .modules
            .iter()
            .map(|m| {
                Ok(match m {
                    Module::Full { w, b } => Module::Full {
                        w: copy(w)?,
                        b: copy_opt(b)?,
                    },
                    Module::LowRank { a, b_mat, b } => Module::LowRank {
                        a: copy(a)?,
                        b_mat: copy(b_mat)?,
                        b: copy_opt(b)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dendrites {
            modules,
            t: self.t.iter().map(copy).collect::<Result<_>>()?,
            d: self.d.iter().map(copy).collect::<Result<_>>()?,
            ..self.clone()
        })
    }

    /// Rebuilds dendrites from saved tensors named as in [`Dendrites::named`]
    /// (`get` returns a tensor by name). Every gate row is trainable (the
    /// branch arm's become constants in [`Dendrites::into_branch`]).
    pub fn from_saved(
        mut self,
        prefix: &str,
        mut get: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<Dendrites> {
        let mut j = 0;
        while let Some(t) = get(&format!("{prefix}.dendrites.{j}.T")) {
            let p = |get: &mut dyn FnMut(&str) -> Option<Tensor>, n: &str| -> Result<Tensor> {
                get(&format!("{prefix}.dendrites.{j}.{n}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("{prefix}.dendrites.{j}.{n} missing"))
                })
            };
            let b = if self.bias {
                Some(var(p(&mut get, "bias")?)?)
            } else {
                None
            };
            let m = match self.kind {
                DendriteKind::Full | DendriteKind::Auto => Module::Full {
                    w: var(p(&mut get, "weight")?)?,
                    b,
                },
                DendriteKind::LowRank => Module::LowRank {
                    a: var(p(&mut get, "lora_A")?)?,
                    b_mat: var(p(&mut get, "lora_B")?)?,
                    b,
                },
            };
            self.modules.push(m);
            self.t.push(if self.branch {
                Param::Frozen(t)
            } else {
                var(t)?
            });
            if j >= 1 {
                let d = p(&mut get, "D")?;
                self.d.push(if self.branch {
                    Param::Frozen(d)
                } else {
                    var(d)?
                });
            }
            j += 1;
        }
        Ok(self)
    }
}

/// Layers with more weights than this get low-rank dendrites under `auto`.
pub const AUTO_FULL_LIMIT: usize = 1 << 20;

/// The concrete kind for a layer (`auto` resolved by size).
pub fn resolve_kind(kind: DendriteKind, in_features: usize, channels: usize) -> DendriteKind {
    match kind {
        DendriteKind::Auto if in_features * channels <= AUTO_FULL_LIMIT => DendriteKind::Full,
        DendriteKind::Auto => DendriteKind::LowRank,
        k => k,
    }
}

/// Whether `name` matches a placement pattern: equal to the whole name or
/// its last segment, with `*` matching any run of characters.
pub fn matches(pattern: &str, name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    glob(pattern, name) || glob(pattern, last)
}

fn glob(p: &str, s: &str) -> bool {
    match p.split_once('*') {
        None => p == s,
        Some((head, rest)) => {
            if !s.starts_with(head) {
                return false;
            }
            let s = &s[head.len()..];
            (0..=s.len()).any(|i| s.is_char_boundary(i) && glob(rest, &s[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    #[test]
    fn patterns() {
        assert!(matches("classifier", "classifier"));
        assert!(matches("fc2", "model.layers.31.mlp.fc2"));
        assert!(matches(
            "model.layers.3*.mlp.fc2",
            "model.layers.31.mlp.fc2"
        ));
        assert!(!matches(
            "model.layers.3*.mlp.fc2",
            "model.layers.2.mlp.fc2"
        ));
        assert!(matches("*", "anything.at.all"));
        assert!(!matches("query", "bert.encoder.layer.0.attention.self.key"));
    }

    #[test]
    fn a_branch_is_a_zero_initialised_linear_layer() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut d =
            Dendrites::new(DendriteKind::Full, 0, Activation::Sigmoid, 4, 3, true).into_branch();
        d.add(&mut rng, 0.01, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let sum = |t: &Tensor| {
            t.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(sum(&d.forward(&x, &Pass::eval()).unwrap().unwrap()), 0.0);
        assert!(matches!(d.t[0], Param::Frozen(_)), "the gate is a constant");
        d.add(&mut rng, 0.01, &dev).unwrap();
        assert!(
            matches!(d.d[0], Param::Frozen(_)),
            "no cascade between branches"
        );
        d.modules.pop();
        d.t.pop();
        d.d.pop();
        // Once its weights move, the term is exactly x W^T + b (no activation).
        let w = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        d.modules[0] = Module::Full {
            w: Param::Frozen(w.clone()),
            b: Some(Param::Frozen(b.clone())),
        };
        let got = d.forward(&x, &Pass::eval()).unwrap().unwrap();
        let want = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(sum(&(got - want).unwrap()) < 1e-5);
    }

    /// The panel's size: gates summed over sets (a new zero row changes
    /// nothing), and a branch's mean |W| rather than its constant gate.
    #[test]
    fn magnitude_sums_gates_and_reads_branch_weights() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut d = Dendrites::new(DendriteKind::Full, 0, Activation::Sigmoid, 4, 2, true);
        d.add(&mut rng, 0.01, &dev).unwrap();
        d.t[0] = Param::Frozen(Tensor::new(&[0.5f32, -1.5], &dev).unwrap());
        assert!((d.magnitude().unwrap() - 1.0).abs() < 1e-6);
        d.add(&mut rng, 0.01, &dev).unwrap();
        assert!(
            (d.magnitude().unwrap() - 1.0).abs() < 1e-6,
            "a new zero row"
        );
        let mut b =
            Dendrites::new(DendriteKind::Full, 0, Activation::Sigmoid, 4, 2, true).into_branch();
        b.add(&mut rng, 0.01, &dev).unwrap();
        assert_eq!(b.magnitude().unwrap(), 0.0, "a branch starts at zero");
        b.modules[0] = Module::Full {
            w: Param::Frozen(Tensor::full(-0.25f32, (2, 4), &dev).unwrap()),
            b: None,
        };
        assert!((b.magnitude().unwrap() - 0.25).abs() < 1e-6);
        b.add(&mut rng, 0.01, &dev).unwrap();
        assert!(
            (b.magnitude().unwrap() - 0.25).abs() < 1e-6,
            "a new zero branch"
        );
    }

    #[test]
    fn addition_cost_follows_formula() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (i, c) = (7, 5);
        let mut d = Dendrites::new(DendriteKind::Full, 0, Activation::Sigmoid, i, c, true);
        let count = |d: &Dendrites| -> usize {
            d.named("x")
                .iter()
                .map(|(_, p)| p.get(DType::F32).unwrap().elem_count())
                .sum()
        };
        for k in 0..4 {
            let cost = d.addition_cost();
            assert_eq!(cost, (i * c + c) + c + k * c, "k = {k}");
            let before = count(&d);
            d.add(&mut rng, 0.01, &dev).unwrap();
            assert_eq!(count(&d) - before, cost);
        }
        let mut lr = Dendrites::new(DendriteKind::LowRank, 2, Activation::Tanh, i, c, false);
        assert_eq!(lr.addition_cost(), 2 * (i + c) + c);
        lr.add(&mut rng, 0.01, &dev).unwrap();
        assert_eq!(lr.addition_cost(), 2 * (i + c) + c + c);
    }

    #[test]
    fn new_set_contributes_exactly_zero_and_every_gate_trains() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut d = Dendrites::new(DendriteKind::Full, 0, Activation::Sigmoid, 4, 3, true);
        let x = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap();
        d.add(&mut rng, 0.01, &dev).unwrap();
        let y = d.forward(&x, &Pass::eval()).unwrap().unwrap();
        assert_eq!(
            y.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(matches!(d.t[0], Param::Train(_)));
        d.add(&mut rng, 0.01, &dev).unwrap();
        // As the reference: the older row keeps training with the new one.
        assert!(matches!(d.t[0], Param::Train(_)), "the first row trains");
        assert!(matches!(d.t[1], Param::Train(_)));
        assert_eq!(d.d[0].get(DType::F32).unwrap().dims(), &[1, 3]);
    }
}
