//! AdamW with parameter groups (no weight decay on biases and norms, a
//! separate head learning rate) and global-norm gradient clipping.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// Whether a parameter is exempt from weight decay: biases and norm weights.
pub fn no_decay(name: &str) -> bool {
    name.ends_with(".bias")
        || name.contains("LayerNorm")
        || name.contains("layernorm")
        || name.contains("layer_norm")
        || name.ends_with(".gamma")
        || name.ends_with(".beta")
}

/// First and second moments of a tensor updated by the fused kernel.
enum Moments {
    Cpu(Vec<f32>, Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(
        candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
        candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
    ),
}

impl Moments {
    /// Zero moments for an f32 variable on the CPU or CUDA; `None` on other
    /// devices and dtypes (composed ops then).
    fn new(var: &Var) -> Result<Option<Moments>> {
        if var.dtype() != DType::F32 {
            return Ok(None);
        }
        let n = var.elem_count();
        match var.device() {
            candle_core::Device::Cpu => Ok(Some(Moments::Cpu(vec![0f32; n], vec![0f32; n]))),
            #[cfg(feature = "cuda")]
            candle_core::Device::Cuda(dev) => Ok(Some(Moments::Cuda(
                dev.alloc_zeros::<f32>(n)?,
                dev.alloc_zeros::<f32>(n)?,
            ))),
            _ => Ok(None),
        }
    }
}

struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    /// Fused path (CPU loop, CUDA kernel): moments updated in place.
    fused: Option<Mutex<Moments>>,
    weight_decay: f64,
    lr_mult: f64,
}

impl Slot {
    fn moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let host = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let Some(fused) = &self.fused else {
            return Ok((host(&self.m)?, host(&self.v)?));
        };
        let fused = fused
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        match (&*fused, self.var.device()) {
            (Moments::Cpu(m, v), _) => Ok((m.clone(), v.clone())),
            #[cfg(feature = "cuda")]
            (Moments::Cuda(m, v), candle_core::Device::Cuda(dev)) => {
                Ok((dev.clone_dtoh(m)?, dev.clone_dtoh(v)?))
            }
            #[cfg(feature = "cuda")]
            _ => candle_core::bail!("CUDA moments of a variable off the GPU"),
        }
    }

    fn load(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        let n = self.var.elem_count();
        if m.len() != n || v.len() != n {
            candle_core::bail!("optimiser moments of {} values, {n} expected", m.len());
        }
        let Some(fused) = &self.fused else {
            let back = |x: Vec<f32>| {
                Tensor::from_vec(x, self.var.shape(), &candle_core::Device::Cpu)?
                    .to_dtype(self.var.dtype())?
                    .to_device(self.var.device())
            };
            self.m = back(m)?;
            self.v = back(v)?;
            return Ok(());
        };
        let mut fused = fused
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        *fused = match self.var.device() {
            #[cfg(feature = "cuda")]
            candle_core::Device::Cuda(dev) => {
                Moments::Cuda(dev.clone_htod(&m)?, dev.clone_htod(&v)?)
            }
            _ => Moments::Cpu(m, v),
        };
        Ok(())
    }
}

/// AdamW (decoupled weight decay, bias-corrected), as PyTorch's `AdamW`.
pub struct AdamW {
    slots: Vec<Slot>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    step: u64,
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
        let mut slots = Vec::with_capacity(params.len());
        for (name, var, lr_mult, weight_decay) in params {
            let fused = Moments::new(var)?.map(Mutex::new);
            let (m, v) = if fused.is_some() {
                let empty = Tensor::zeros(0, DType::F32, var.device())?;
                (empty.clone(), empty)
            } else {
                (var.zeros_like()?, var.zeros_like()?)
            };
            slots.push(Slot {
                var: var.clone(),
                m,
                v,
                fused,
                weight_decay: if no_decay(name) { 0.0 } else { *weight_decay },
                lr_mult: *lr_mult,
            });
        }
        Ok(AdamW {
            slots,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
        })
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Every parameter's first and second moments, in f32, in the order
    /// the parameters were given.
    pub fn moments(&self) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        self.slots.iter().map(Slot::moments).collect()
    }

    /// Puts back what [`AdamW::moments`] and [`AdamW::steps`] returned for
    /// the same parameters.
    pub fn load(&mut self, steps: u64, moments: Vec<(Vec<f32>, Vec<f32>)>) -> Result<()> {
        if moments.len() != self.slots.len() {
            candle_core::bail!(
                "optimiser state for {} parameters, {} expected",
                moments.len(),
                self.slots.len()
            );
        }
        for (s, (m, v)) in self.slots.iter_mut().zip(moments) {
            s.load(m, v)?;
        }
        self.step = steps;
        Ok(())
    }

    /// One update with learning rate `lr` from the gradients in `grads`
    /// (parameters without a gradient are left untouched).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let lr = lr * s.lr_mult;
            if let Some(state) = &s.fused {
                let g = g.to_dtype(DType::F32)?.contiguous()?;
                s.var.as_tensor().inplace_op2(
                    &g,
                    &FusedAdamW {
                        state,
                        lr,
                        wd: s.weight_decay,
                        beta1: self.beta1,
                        beta2: self.beta2,
                        eps: self.eps,
                        bc1,
                        bc2,
                    },
                )?;
                continue;
            }
            let g = g.to_dtype(s.var.dtype())?;
            s.m = ((&s.m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            s.v = ((&s.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&s.v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&s.m / bc1)? / denom)?;
            let decayed = (s.var.as_tensor() * (1.0 - lr * s.weight_decay))?;
            s.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

struct FusedAdamW<'a> {
    state: &'a Mutex<Moments>,
    lr: f64,
    wd: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bc1: f64,
    bc2: f64,
}

impl FusedAdamW<'_> {
    fn moments(&self) -> Result<std::sync::MutexGuard<'_, Moments>> {
        self.state
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused AdamW: poisoned".into()))
    }

    /// `[beta1, beta2, lr / bc1, sqrt(bc2), 1 - lr * wd, eps]` in f32, as
    /// both the CPU loop and the CUDA kernel take them.
    fn hyper(&self) -> [f32; 6] {
        [
            self.beta1 as f32,
            self.beta2 as f32,
            (self.lr / self.bc1) as f32,
            self.bc2.sqrt() as f32,
            (1.0 - self.lr * self.wd) as f32,
            self.eps as f32,
        ]
    }
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    // Without the `cuda` feature the moments have one kind only.
    #[allow(irrefutable_let_patterns)]
    fn cpu_fwd(&self, p: &mut CpuStorage, lp: &Layout, g: &CpuStorage, lg: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (p, g) else {
            candle_core::bail!("fused AdamW needs f32 parameters and gradients");
        };
        if !lp.is_contiguous() || !lg.is_contiguous() {
            candle_core::bail!("fused AdamW needs contiguous tensors");
        }
        let n = lp.shape().elem_count();
        let p = &mut p[lp.start_offset()..lp.start_offset() + n];
        let g = &g[lg.start_offset()..lg.start_offset() + n];
        let mut st = self.moments()?;
        let Moments::Cpu(m, v) = &mut *st else {
            candle_core::bail!("fused AdamW: moments on another device");
        };
        let hyper = self.hyper();
        // Elementwise, so chunks over the thread pool give the same bits.
        const CHUNK: usize = 1 << 15;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, hyper));
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &mut candle_core::CudaStorage,
        lp: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<()> {
        let mut st = self.moments()?;
        let Moments::Cuda(m, v) = &mut *st else {
            candle_core::bail!("fused AdamW: moments on another device");
        };
        crate::engine::nn::fused::cuda::adamw(p, lp, g, lg, m, v, self.hyper())
    }
}

/// One chunk of the AdamW update (`hyper` as [`FusedAdamW::hyper`]).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hyper: [f32; 6]) {
    let [b1, b2, step, sbc2, decay, eps] = hyper;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let denom = v.sqrt() / sbc2 + eps;
        *p = *p * decay - step * *m / denom;
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

/// Scales every gradient by `factor` in the store.
pub fn scale_grads(grads: &mut GradStore, vars: &[Var], factor: f64) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let scaled = (g * factor)?;
            grads.insert(v.as_tensor(), scaled);
        }
    }
    Ok(())
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
        let mut opt2 = AdamW::new(&[("w".into(), var2.clone(), 1.0)], wd).unwrap();
        opt2.slots[0].fused = None;
        opt2.slots[0].m = var2.zeros_like().unwrap();
        opt2.slots[0].v = var2.zeros_like().unwrap();
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
}
