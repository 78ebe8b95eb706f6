//! AdamW with parameter groups (no weight decay on biases and norms, a
//! separate head learning rate), global-norm gradient clipping and a
//! skipped update when the gradients' norm is not finite. f32 parameters on
//! the CPU or CUDA take the fused step ([`super::fused_step`]: a few
//! dispatches, nothing read back); others compose candle ops and read the
//! norm at each step.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use super::fused_step::{Betas, FusedStep, StepSpec, ST_SKIPPED, ST_T};

/// Whether a parameter is exempt from weight decay: biases and norm weights.
pub fn no_decay(name: &str) -> bool {
    name.ends_with(".bias")
        || name.contains("LayerNorm")
        || name.contains("layernorm")
        || name.contains("layer_norm")
        || name.ends_with(".gamma")
        || name.ends_with(".beta")
}

/// A parameter updated by composed tensor ops.
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    weight_decay: f64,
    lr_mult: f64,
}

/// The composed update and its counts.
struct Composed {
    slots: Vec<Slot>,
    applied: u64,
    skipped: u64,
}

enum Update {
    Fused(Box<FusedStep>),
    Composed(Composed),
}

/// AdamW (decoupled weight decay, bias-corrected), as PyTorch's `AdamW`.
pub struct AdamW {
    update: Update,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamW {
    /// `params`: (name, variable, learning-rate multiplier), all with
    /// `weight_decay` (biases and norms with none).
    pub fn new(params: &[(String, Var, f64)], weight_decay: f64) -> Result<AdamW> {
        let groups: Vec<(String, Var, f64, f64)> = params
            .iter()
            .map(|(n, v, m)| (n.clone(), v.clone(), *m, weight_decay))
            .collect();
        AdamW::with_groups(&groups)
    }

    /// `params`: (name, variable, learning-rate multiplier, weight decay);
    /// biases and norms get no weight decay whatever their group says.
    pub fn with_groups(params: &[(String, Var, f64, f64)]) -> Result<AdamW> {
        AdamW::build(params, true)
    }

    fn build(params: &[(String, Var, f64, f64)], fuse: bool) -> Result<AdamW> {
        let decayed: Vec<(Var, f64, f64)> = params
            .iter()
            .map(|(name, var, lr_mult, wd)| {
                let wd = if no_decay(name) { 0.0 } else { *wd };
                (var.clone(), *lr_mult, wd)
            })
            .collect();
        let fused = if fuse {
            FusedStep::new(&decayed)?
        } else {
            None
        };
        let update = match fused {
            Some(f) => Update::Fused(Box::new(f)),
            None => Update::Composed(Composed {
                slots: decayed
                    .into_iter()
                    .map(|(var, lr_mult, weight_decay)| {
                        Ok(Slot {
                            m: var.zeros_like()?,
                            v: var.zeros_like()?,
                            var,
                            weight_decay,
                            lr_mult,
                        })
                    })
                    .collect::<Result<_>>()?,
                applied: 0,
                skipped: 0,
            }),
        };
        Ok(AdamW {
            update,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
    }

    fn betas(&self) -> Betas {
        Betas {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        }
    }

    /// Updates applied so far (skipped steps not counted). On a device
    /// this reads the step state, which waits for the device.
    pub fn steps(&self) -> Result<u64> {
        match &self.update {
            Update::Fused(f) => Ok(f.state()?[ST_T] as u64),
            Update::Composed(c) => Ok(c.applied),
        }
    }

    /// Steps skipped so far because the gradients' norm was not finite
    /// (read as [`AdamW::steps`] is).
    pub fn skipped(&self) -> Result<u64> {
        match &self.update {
            Update::Fused(f) => Ok(f.state()?[ST_SKIPPED] as u64),
            Update::Composed(c) => Ok(c.skipped),
        }
    }

    /// Every parameter's first and second moments, in f32, in the order
    /// the parameters were given.
    pub fn moments(&self) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let host = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        match &self.update {
            Update::Fused(f) => (0..f.len()).map(|i| f.moments(i)).collect(),
            Update::Composed(c) => c
                .slots
                .iter()
                .map(|s| Ok((host(&s.m)?, host(&s.v)?)))
                .collect(),
        }
    }

    /// Puts back what [`AdamW::moments`] and [`AdamW::steps`] returned for
    /// the same parameters.
    pub fn load(&mut self, steps: u64, moments: Vec<(Vec<f32>, Vec<f32>)>) -> Result<()> {
        let expected = match &self.update {
            Update::Fused(f) => f.len(),
            Update::Composed(c) => c.slots.len(),
        };
        if moments.len() != expected {
            candle_core::bail!(
                "optimiser state for {} parameters, {expected} expected",
                moments.len(),
            );
        }
        match &mut self.update {
            Update::Fused(f) => {
                for (i, (m, v)) in moments.into_iter().enumerate() {
                    f.load_moments(i, m, v)?;
                }
                f.set_steps(steps)
            }
            Update::Composed(c) => {
                for (s, (m, v)) in c.slots.iter_mut().zip(moments) {
                    let n = s.var.elem_count();
                    if m.len() != n || v.len() != n {
                        candle_core::bail!("optimiser moments of {} values, {n} expected", m.len());
                    }
                    let back = |x: Vec<f32>| {
                        Tensor::from_vec(x, s.var.shape(), &candle_core::Device::Cpu)?
                            .to_dtype(s.var.dtype())?
                            .to_device(s.var.device())
                    };
                    s.m = back(m)?;
                    s.v = back(v)?;
                }
                c.applied = steps;
                Ok(())
            }
        }
    }

    /// One update with learning rate `lr` from the gradients in `grads`
    /// (parameters without a gradient are left untouched; a non-finite
    /// gradient norm skips the update).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(grads, StepSpec::plain(lr))
    }

    /// One update from `grads` rescaled and clipped as `spec` says. When
    /// the rescaled gradients' global norm is not finite no parameter
    /// changes and the step is counted in [`AdamW::skipped`]; on the fused
    /// path that is decided on the device and learnt at the next read.
    pub fn step_with(&mut self, grads: &GradStore, spec: StepSpec) -> Result<()> {
        let betas = self.betas();
        match &mut self.update {
            Update::Fused(f) => f.step(grads, spec, betas),
            Update::Composed(c) => c.step(grads, spec, betas),
        }
    }
}

impl Composed {
    fn step(&mut self, grads: &GradStore, spec: StepSpec, b: Betas) -> Result<()> {
        let vars: Vec<Var> = self.slots.iter().map(|s| s.var.clone()).collect();
        let norm = grad_norm(grads, &vars)? * spec.rescale;
        if !norm.is_finite() {
            self.skipped += 1;
            return Ok(());
        }
        let factor = spec.rescale * clip_factor(norm, spec.clip);
        self.applied += 1;
        let t = self.applied as i32;
        let bc1 = 1.0 - b.beta1.powi(t);
        let bc2 = 1.0 - b.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let lr = spec.lr * s.lr_mult;
            let mut g = g.to_dtype(s.var.dtype())?;
            if factor != 1.0 {
                g = (g * factor)?;
            }
            s.m = ((&s.m * b.beta1)? + (&g * (1.0 - b.beta1))?)?;
            s.v = ((&s.v * b.beta2)? + (g.sqr()? * (1.0 - b.beta2))?)?;
            let denom = ((&s.v / bc2)?.sqrt()? + b.eps)?;
            let update = ((&s.m / bc1)? / denom)?;
            let decayed = (s.var.as_tensor() * (1.0 - lr * s.weight_decay))?;
            s.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Global L2 norm of the gradients of `vars`: the squared sums stay on the
/// gradients' device and are read back once.
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let sums = vars
        .iter()
        .filter_map(|v| grads.get(v.as_tensor()))
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()?;
    Ok(f64::from(total).sqrt())
}

/// The clipping factor for a gradient norm (1 when under the limit).
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(m) if norm > m && norm.is_finite() => m / (norm + 1e-6),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn global_norm_over_every_gradient() {
        let dev = Device::Cpu;
        let a = Var::new(&[0f32, 0.0], &dev).unwrap();
        let b = Var::new(&[0f32], &dev).unwrap();
        let unused = Var::new(&[0f32], &dev).unwrap();
        let x = Tensor::new(&[3f32, 4.0], &dev).unwrap();
        let y = Tensor::new(&[12f32], &dev).unwrap();
        let loss = ((a.as_tensor() * x).unwrap().sum_all().unwrap()
            + (b.as_tensor() * y).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let n = grad_norm(&grads, &[a, b, unused.clone()]).unwrap();
        assert!((n - 13.0).abs() < 1e-5, "{n}");
        assert_eq!(grad_norm(&grads, &[unused]).unwrap(), 0.0);
    }

    #[test]
    fn clipping_factor() {
        assert_eq!(clip_factor(0.5, Some(1.0)), 1.0);
        assert!((clip_factor(4.0, Some(1.0)) - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(4.0, None), 1.0);
    }

    #[test]
    fn decay_groups() {
        assert!(no_decay("classifier.bias"));
        assert!(no_decay("bert.encoder.layer.0.output.LayerNorm.weight"));
        assert!(no_decay("model.final_layernorm.weight"));
        assert!(!no_decay("classifier.weight"));
        assert!(!no_decay("x.query.lora_A"));
    }

    /// The fused CPU update and the tensor-op update agree with a
    /// hand-computed AdamW step.
    #[test]
    fn adamw_matches_reference() {
        let dev = Device::Cpu;
        let p0 = [1.0f32, -2.0, 0.5];
        let g = [0.1f32, -0.3, 0.0];
        let (lr, wd) = (0.01, 0.1);
        // Reference for step 1: m = 0.1 g, v = 0.001 g^2, mhat = g, vhat = g^2.
        let want: Vec<f32> = p0
            .iter()
            .zip(&g)
            .map(|(&p, &g)| {
                let p = p * (1.0 - (lr * wd) as f32);
                p - lr as f32 * g / (g.abs() + 1e-8)
            })
            .collect();
        let var = Var::new(&p0, &dev).unwrap();
        let mut opt = AdamW::new(&[("w".into(), var.clone(), 1.0)], wd).unwrap();
        let loss = (var.as_tensor() * Tensor::new(&g, &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, lr).unwrap();
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Tensor path (no fused state) gives the same.
        let var2 = Var::new(&p0, &dev).unwrap();
        let mut opt2 = AdamW::build(&[("w".into(), var2.clone(), 1.0, wd)], false).unwrap();
        assert!(matches!(opt2.update, Update::Composed(_)));
        assert!(matches!(opt.update, Update::Fused(_)));
        let loss = (var2.as_tensor() * Tensor::new(&g, &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt2.step(&loss.backward().unwrap(), lr).unwrap();
        let got2 = var2.as_tensor().to_vec1::<f32>().unwrap();
        for (a, b) in got2.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{got2:?} vs {want:?}");
        }
    }

    /// `sum(w_k * x_k)` over parameters and inputs: the gradient of `w_k`
    /// is `x_k`.
    fn grads_of(vars: &[Var], xs: &[Vec<f32>]) -> GradStore {
        let dev = Device::Cpu;
        let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
        for (v, x) in vars.iter().zip(xs) {
            let x = Tensor::new(x.as_slice(), &dev).unwrap();
            loss = (loss + (v.as_tensor() * x).unwrap().sum_all().unwrap()).unwrap();
        }
        loss.backward().unwrap()
    }

    fn spec(lr: f64, rescale: f64, clip: Option<f64>) -> StepSpec {
        StepSpec { lr, rescale, clip }
    }

    /// One parameter `w` with weight decay `wd`, fused or composed.
    fn single(w: &Var, wd: f64, fuse: bool) -> AdamW {
        AdamW::build(&[("w".into(), w.clone(), 1.0, wd)], fuse).unwrap()
    }

    fn both_paths(n: usize) -> [(AdamW, Vec<Var>); 2] {
        [true, false].map(|fuse| {
            let vars: Vec<Var> = (0..n)
                .map(|k| {
                    let w: Vec<f32> = (0..3 + k % 5).map(|i| (i + k) as f32 * 0.1).collect();
                    Var::new(w.as_slice(), &Device::Cpu).unwrap()
                })
                .collect();
            let groups: Vec<_> = vars
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let name = if k % 7 == 0 {
                        format!("p{k}.bias")
                    } else {
                        format!("p{k}")
                    };
                    (name, v.clone(), 1.0 + (k % 3) as f64, 0.05)
                })
                .collect();
            (AdamW::build(&groups, fuse).unwrap(), vars)
        })
    }

    /// The fused step (CPU twin) and the composed one agree over more
    /// tensors than one group, with rescale and clipping active, a
    /// skipped step in the middle, and bias correction counting applied
    /// updates only.
    #[test]
    fn fused_and_composed_steps_agree_with_clipping_and_a_skip() {
        let n = super::super::fused_step::GROUP + 5;
        let [(mut fused, fv), (mut composed, cv)] = both_paths(n);
        let specs = [
            spec(0.01, 1.0, Some(1.0)),
            spec(0.02, 2.0, Some(0.5)),
            spec(0.02, 1.0, Some(1.0)),
            spec(0.005, 1.5, None),
        ];
        for (step, spec) in specs.iter().enumerate() {
            let xs: Vec<Vec<f32>> = fv
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    (0..v.elem_count())
                        .map(|i| {
                            if step == 2 && k == n - 1 && i == 0 {
                                f32::NAN
                            } else {
                                ((i * 3 + k + step) % 11) as f32 * 0.3 - 1.5
                            }
                        })
                        .collect()
                })
                .collect();
            fused.step_with(&grads_of(&fv, &xs), *spec).unwrap();
            composed.step_with(&grads_of(&cv, &xs), *spec).unwrap();
        }
        assert_eq!((fused.steps().unwrap(), fused.skipped().unwrap()), (3, 1));
        assert_eq!(
            (composed.steps().unwrap(), composed.skipped().unwrap()),
            (3, 1)
        );
        for (a, b) in fv.iter().zip(&cv) {
            let (a, b) = (
                a.as_tensor().to_vec1::<f32>().unwrap(),
                b.as_tensor().to_vec1::<f32>().unwrap(),
            );
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{a:?} vs {b:?}");
            }
        }
        for ((am, av), (bm, bv)) in fused
            .moments()
            .unwrap()
            .iter()
            .zip(&composed.moments().unwrap())
        {
            for (x, y) in am.iter().zip(bm).chain(av.iter().zip(bv)) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    /// Clipping and rescaling show in the first moment (`0.1 g` after one
    /// update), which Adam's first update direction does not.
    #[test]
    fn clipping_and_rescale_scale_the_gradient() {
        for fuse in [true, false] {
            let w = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
            let mut opt = single(&w, 0.0, fuse);
            let g = grads_of(std::slice::from_ref(&w), &[vec![3.0, 4.0]]);
            opt.step_with(&g, spec(0.1, 1.0, Some(1.0))).unwrap();
            let (m, _) = &opt.moments().unwrap()[0];
            assert!(
                (m[0] - 0.06).abs() < 1e-6 && (m[1] - 0.08).abs() < 1e-6,
                "{m:?}"
            );
            let w = Var::new(&[0f32], &Device::Cpu).unwrap();
            let mut opt = single(&w, 0.0, fuse);
            let g = grads_of(std::slice::from_ref(&w), &[vec![2.0]]);
            opt.step_with(&g, spec(0.1, 4.0, None)).unwrap();
            assert!((opt.moments().unwrap()[0].0[0] - 0.8).abs() < 1e-6);
        }
    }

    /// A non-finite gradient leaves weights and moments as they were.
    #[test]
    fn a_non_finite_gradient_changes_nothing() {
        for fuse in [true, false] {
            for bad in [f32::NAN, f32::INFINITY] {
                let w = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
                let mut opt = single(&w, 0.1, fuse);
                let g = grads_of(std::slice::from_ref(&w), &[vec![bad, 1.0]]);
                opt.step_with(&g, spec(0.1, 1.0, Some(1.0))).unwrap();
                assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
                assert_eq!(opt.moments().unwrap()[0], (vec![0.0; 2], vec![0.0; 2]));
                assert_eq!((opt.steps().unwrap(), opt.skipped().unwrap()), (0, 1));
            }
        }
    }

    /// Moments and the step count survive a save and load (fused state).
    #[test]
    fn state_round_trips() {
        let [(mut a, av), (_, _)] = both_paths(3);
        let xs: Vec<Vec<f32>> = av.iter().map(|v| vec![0.5; v.elem_count()]).collect();
        a.step(&grads_of(&av, &xs), 0.01).unwrap();
        a.step(&grads_of(&av, &xs), 0.01).unwrap();
        let [(mut b, bv), (_, _)] = both_paths(3);
        b.load(a.steps().unwrap(), a.moments().unwrap()).unwrap();
        assert_eq!(b.steps().unwrap(), 2);
        assert_eq!(b.moments().unwrap(), a.moments().unwrap());
        for (x, y) in av.iter().zip(&bv) {
            y.set(x.as_tensor()).unwrap();
        }
        a.step(&grads_of(&av, &xs), 0.01).unwrap();
        b.step(&grads_of(&bv, &xs), 0.01).unwrap();
        for (x, y) in av.iter().zip(&bv) {
            assert_eq!(
                x.as_tensor().to_vec1::<f32>().unwrap(),
                y.as_tensor().to_vec1::<f32>().unwrap()
            );
        }
    }
}
