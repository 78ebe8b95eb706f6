//! The optimiser step of f32 parameters in a few dispatches, with nothing
//! read back from the device: the gradients' sums of squares (one pass per
//! group of [`GROUP`] tensors), one scalar pass that turns them into the
//! global norm, the clip factor, the finite check and the bias corrections,
//! and AdamW over a group of tensors at once, which leaves every tensor as
//! it was when the norm was not finite. On CUDA each pass is one kernel of
//! `kernels.cu` (tensors passed by pointer); on the CPU its twin here
//! computes the same formulas, in f32 per element and f64 per scalar. The
//! step counts stay with the moments on the device until
//! [`FusedStep::state`] reads them, so a skipped step is learnt late (at
//! the next read), not by waiting for the device at every step.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor, Var};
use rayon::prelude::*;

/// Tensors per dispatch of the step's passes (`STEP_GROUP` of `kernels.cu`).
pub const GROUP: usize = 48;

/// Scalars of the step's state, in `kernels.cu`'s `ST_*` order.
pub const STATE: usize = 8;
/// Updates applied so far.
pub const ST_T: usize = 0;
/// Steps skipped for a non-finite gradient norm.
pub const ST_SKIPPED: usize = 1;
/// The last step's global gradient norm (after the rescale).
pub const ST_NORM: usize = 2;
/// The last applied step's gradient factor (rescale times clip factor).
pub const ST_FACTOR: usize = 3;
/// 1 when the last step was applied, 0 when it was skipped.
pub const ST_APPLY: usize = 4;
const ST_BC1: usize = 5;
const ST_SBC2: usize = 6;
const ST_LR: usize = 7;

/// AdamW's constants.
#[derive(Debug, Clone, Copy)]
pub struct Betas {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// What one optimiser step does with the gradients it is given.
#[derive(Debug, Clone, Copy)]
pub struct StepSpec {
    pub lr: f64,
    /// Factor on every gradient before the norm (a short accumulation
    /// group's sum becomes a mean over what it had).
    pub rescale: f64,
    /// Global-norm clipping of the rescaled gradients.
    pub clip: Option<f64>,
}

impl StepSpec {
    /// A plain step: no rescale, no clipping.
    pub fn plain(lr: f64) -> StepSpec {
        StepSpec {
            lr,
            rescale: 1.0,
            clip: None,
        }
    }
}

/// `x^n` by squaring, in the order of `kernels.cu`'s `powi` (so the twin
/// and the kernel get the same bias corrections).
fn powi(mut x: f64, mut n: u64) -> f64 {
    let mut r = 1.0;
    loop {
        if n & 1 == 1 {
            r *= x;
        }
        n >>= 1;
        if n == 0 {
            return r;
        }
        x *= x;
    }
}

/// The scalar pass: from the gradients' sum of squares, the norm, then
/// either a skipped step (non-finite norm) or the factor, step count and
/// bias corrections of an applied one (`step_finalize` of `kernels.cu`).
pub fn finalize(state: &mut [f64; STATE], sumsq: f64, spec: StepSpec, betas: Betas) {
    let norm = sumsq.sqrt() * spec.rescale;
    state[ST_NORM] = norm;
    if !norm.is_finite() {
        state[ST_SKIPPED] += 1.0;
        state[ST_APPLY] = 0.0;
        return;
    }
    let clip = spec.clip.unwrap_or(0.0);
    let clipped = if clip > 0.0 && norm > clip {
        clip / (norm + 1e-6)
    } else {
        1.0
    };
    let t = state[ST_T] + 1.0;
    state[ST_T] = t;
    state[ST_APPLY] = 1.0;
    state[ST_FACTOR] = spec.rescale * clipped;
    state[ST_BC1] = 1.0 - powi(betas.beta1, t as u64);
    state[ST_SBC2] = (1.0 - powi(betas.beta2, t as u64)).sqrt();
    state[ST_LR] = spec.lr;
}

/// One tensor's per-element constants of an applied step, as `step_adamw`
/// derives them: `[beta1, beta2, step, sqrt(bc2), decay, eps, factor]`.
fn hyper(state: &[f64; STATE], lr_mult: f64, wd: f64, betas: Betas) -> [f32; 7] {
    let lr = state[ST_LR] * lr_mult;
    [
        betas.beta1 as f32,
        betas.beta2 as f32,
        (lr / state[ST_BC1]) as f32,
        state[ST_SBC2] as f32,
        (1.0 - lr * wd) as f32,
        betas.eps as f32,
        state[ST_FACTOR] as f32,
    ]
}

/// One chunk of the AdamW update (`hyper` as [`hyper`]).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hyper: [f32; 7]) {
    let [b1, b2, step, sbc2, decay, eps, factor] = hyper;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * factor;
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let denom = v.sqrt() / sbc2 + eps;
        *p = *p * decay - step * *m / denom;
    }
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn sumsq_chunk(g: &[f32]) -> f32 {
    g.iter().map(|x| x * x).sum()
}

/// Elements per chunk of the CPU passes (elementwise, so any chunking
/// gives the same bits; sums are added in chunk order).
const CHUNK: usize = 1 << 15;

struct Param {
    var: Var,
    lr_mult: f64,
    wd: f64,
}

enum Buffers {
    Cpu {
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        state: [f64; STATE],
    },
    #[cfg(feature = "cuda")]
    Cuda {
        dev: candle_core::CudaDevice,
        m: Vec<cuda::Slice<f32>>,
        v: Vec<cuda::Slice<f32>>,
        state: cuda::Slice<f64>,
        partials: cuda::Slice<f32>,
    },
}

/// The fused optimiser step of a fixed list of parameters with their
/// moments and step state.
pub struct FusedStep {
    params: Vec<Param>,
    buffers: Buffers,
}

impl FusedStep {
    /// For `(variable, learning-rate multiplier, weight decay)`: `None`
    /// unless every variable is f32 and contiguous on the CPU or on one
    /// CUDA device (with the `cuda` feature) and none shares storage with
    /// another.
    pub fn new(params: &[(Var, f64, f64)]) -> Result<Option<FusedStep>> {
        let Some((first, _, _)) = params.first() else {
            return Ok(None);
        };
        let device = first.device();
        let fits = params.iter().enumerate().all(|(i, (v, _, _))| {
            v.dtype() == DType::F32
                && v.device().same_device(device)
                && v.as_tensor().is_contiguous()
                && params[..i]
                    .iter()
                    .all(|(w, _, _)| !w.as_tensor().same_storage(v.as_tensor()))
        });
        if !fits {
            return Ok(None);
        }
        let sizes: Vec<usize> = params.iter().map(|(v, _, _)| v.elem_count()).collect();
        let buffers = match device {
            Device::Cpu => Buffers::Cpu {
                m: sizes.iter().map(|&n| vec![0f32; n]).collect(),
                v: sizes.iter().map(|&n| vec![0f32; n]).collect(),
                state: [0.0; STATE],
            },
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => cuda::buffers(dev, &sizes)?,
            _ => return Ok(None),
        };
        Ok(Some(FusedStep {
            params: params
                .iter()
                .map(|(var, lr_mult, wd)| Param {
                    var: var.clone(),
                    lr_mult: *lr_mult,
                    wd: *wd,
                })
                .collect(),
            buffers,
        }))
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether there are no parameters (never: [`FusedStep::new`] needs one).
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// One step from the gradients in `grads` (parameters without one are
    /// left out of the norm and the update).
    pub fn step(&mut self, grads: &GradStore, spec: StepSpec, betas: Betas) -> Result<()> {
        let mut work = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let mut g = g.to_dtype(DType::F32)?.contiguous()?;
            // A gradient that is a parameter's own buffer would be locked
            // twice (and change under its own update).
            if self
                .params
                .iter()
                .any(|q| q.var.as_tensor().same_storage(&g))
            {
                g = g.copy()?;
            }
            work.push((i, g));
        }
        if work.is_empty() {
            return Ok(());
        }
        let groups = work.len().div_ceil(GROUP);
        for _ in 0..groups {
            candle_core::note_dispatch("step_sumsq");
        }
        candle_core::note_dispatch("step_finalize");
        for _ in 0..groups {
            candle_core::note_dispatch("step_adamw");
        }
        match &mut self.buffers {
            Buffers::Cpu { m, v, state } => cpu_step(&self.params, &work, m, v, state, spec, betas),
            #[cfg(feature = "cuda")]
            Buffers::Cuda {
                dev,
                m,
                v,
                state,
                partials,
            } => cuda::step(
                dev,
                &self.params,
                &work,
                cuda::Moments {
                    m,
                    v,
                    state,
                    partials,
                },
                spec,
                betas,
            ),
        }
    }

    /// The step state (read from the device: this waits for it).
    pub fn state(&self) -> Result<[f64; STATE]> {
        match &self.buffers {
            Buffers::Cpu { state, .. } => Ok(*state),
            #[cfg(feature = "cuda")]
            Buffers::Cuda { dev, state, .. } => {
                let v = dev.clone_dtoh(state)?;
                let mut out = [0.0; STATE];
                out.copy_from_slice(&v);
                Ok(out)
            }
        }
    }

    /// Sets the number of updates applied (a restored optimiser).
    pub fn set_steps(&mut self, applied: u64) -> Result<()> {
        let mut s = self.state()?;
        s[ST_T] = applied as f64;
        match &mut self.buffers {
            Buffers::Cpu { state, .. } => *state = s,
            #[cfg(feature = "cuda")]
            Buffers::Cuda { dev, state, .. } => *state = dev.clone_htod(&s.to_vec())?,
        }
        Ok(())
    }

    /// Parameter `i`'s first and second moments.
    pub fn moments(&self, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        match &self.buffers {
            Buffers::Cpu { m, v, .. } => Ok((m[i].clone(), v[i].clone())),
            #[cfg(feature = "cuda")]
            Buffers::Cuda { dev, m, v, .. } => Ok((dev.clone_dtoh(&m[i])?, dev.clone_dtoh(&v[i])?)),
        }
    }

    /// Puts back parameter `i`'s moments (as many values as it has).
    pub fn load_moments(&mut self, i: usize, mi: Vec<f32>, vi: Vec<f32>) -> Result<()> {
        let n = self.params[i].var.elem_count();
        if mi.len() != n || vi.len() != n {
            candle_core::bail!("optimiser moments of {} values, {n} expected", mi.len());
        }
        match &mut self.buffers {
            Buffers::Cpu { m, v, .. } => (m[i], v[i]) = (mi, vi),
            #[cfg(feature = "cuda")]
            Buffers::Cuda { dev, m, v, .. } => {
                m[i] = dev.clone_htod(&mi)?;
                v[i] = dev.clone_htod(&vi)?;
            }
        }
        Ok(())
    }
}

/// A contiguous f32 CPU tensor's elements.
fn cpu_f32<'a>(s: &'a Storage, l: &candle_core::Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(CpuStorage::F32(v)) = s else {
        candle_core::bail!("fused step: an f32 CPU tensor expected");
    };
    let a = l.start_offset();
    Ok(&v[a..a + l.shape().elem_count()])
}

/// The CPU twin of the three passes.
fn cpu_step(
    params: &[Param],
    work: &[(usize, Tensor)],
    m: &mut [Vec<f32>],
    v: &mut [Vec<f32>],
    state: &mut [f64; STATE],
    spec: StepSpec,
    betas: Betas,
) -> Result<()> {
    let guards: Vec<_> = work.iter().map(|(_, g)| g.storage_and_layout()).collect();
    let grads = guards
        .iter()
        .map(|(s, l)| cpu_f32(s, l))
        .collect::<Result<Vec<_>>>()?;
    let sums: Vec<f64> = grads
        .par_iter()
        .map(|g| {
            let parts: Vec<f32> = g.par_chunks(CHUNK).map(sumsq_chunk).collect();
            parts.iter().map(|&x| f64::from(x)).sum()
        })
        .collect();
    finalize(state, sums.iter().sum(), spec, betas);
    if state[ST_APPLY] == 0.0 {
        return Ok(());
    }
    for ((i, _), g) in work.iter().zip(&grads) {
        let p = &params[*i];
        let h = hyper(state, p.lr_mult, p.wd, betas);
        // SAFETY: the gradients (the only storages locked here) were
        // checked not to share this parameter's storage.
        let (mut storage, layout) = unsafe { p.var.as_tensor().storage_mut_and_layout() };
        let Storage::Cpu(CpuStorage::F32(data)) = &mut *storage else {
            candle_core::bail!("fused step: an f32 CPU parameter expected");
        };
        if !layout.is_contiguous() {
            candle_core::bail!("fused step: a contiguous parameter expected");
        }
        let a = layout.start_offset();
        let data = &mut data[a..a + layout.shape().elem_count()];
        data.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m[*i].par_chunks_mut(CHUNK).zip(v[*i].par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, h));
    }
    Ok(())
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The three passes as kernel launches over device pointers.

    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
    use candle_core::{CudaDevice, Result, Storage, Tensor};

    use super::{Betas, Buffers, Param, StepSpec};
    use crate::engine::nn::fused::cuda::{
        step_adamw, step_finalize, step_sumsq, StepTensors, STEP_GROUP, SUMSQ_BLOCKS,
    };

    pub(super) type Slice<T> = candle_core::cuda_backend::cudarc::driver::CudaSlice<T>;

    const _: () = assert!(STEP_GROUP == super::GROUP);

    /// The optimiser's device buffers for one step.
    pub(super) struct Moments<'a> {
        pub m: &'a mut [Slice<f32>],
        pub v: &'a mut [Slice<f32>],
        pub state: &'a mut Slice<f64>,
        pub partials: &'a mut Slice<f32>,
    }

    pub(super) fn buffers(dev: &CudaDevice, sizes: &[usize]) -> Result<Buffers> {
        Ok(Buffers::Cuda {
            dev: dev.clone(),
            m: sizes
                .iter()
                .map(|&n| dev.alloc_zeros::<f32>(n))
                .collect::<Result<_>>()?,
            v: sizes
                .iter()
                .map(|&n| dev.alloc_zeros::<f32>(n))
                .collect::<Result<_>>()?,
            state: dev.alloc_zeros::<f64>(super::STATE)?,
            partials: dev.alloc_zeros::<f32>(sizes.len().max(1) * SUMSQ_BLOCKS)?,
        })
    }

    pub(super) fn step(
        dev: &CudaDevice,
        params: &[Param],
        work: &[(usize, Tensor)],
        Moments {
            m,
            v,
            state,
            partials,
        }: Moments<'_>,
        spec: StepSpec,
        betas: Betas,
    ) -> Result<()> {
        let stream = dev.cuda_stream();
        // Every operand stays locked until its kernels are queued.
        let g_guards: Vec<_> = work.iter().map(|(_, g)| g.storage_and_layout()).collect();
        // SAFETY: parameters share no storage with each other (checked when
        // built) nor with a gradient (copied in `FusedStep::step`).
        let mut p_guards: Vec<_> = work
            .iter()
            .map(|(i, _)| unsafe { params[*i].var.as_tensor().storage_mut_and_layout() })
            .collect();
        let mut groups = Vec::with_capacity(work.len().div_ceil(STEP_GROUP));
        for (k, ((i, _), ((gs, gl), (ps, pl)))) in work
            .iter()
            .zip(g_guards.iter().zip(p_guards.iter_mut()))
            .enumerate()
        {
            if k % STEP_GROUP == 0 {
                groups.push(StepTensors::empty());
            }
            let t = groups.last_mut().expect("a group was pushed");
            let j = t.count as usize;
            let (Storage::Cuda(gs), Storage::Cuda(ps)) = (&**gs, &mut **ps) else {
                candle_core::bail!("fused step: CUDA tensors expected");
            };
            let range = |l: &candle_core::Layout| {
                l.contiguous_offsets()
                    .ok_or_else(|| candle_core::Error::Msg("fused step: not contiguous".into()))
            };
            let (ga, gb) = range(gl)?;
            let (pa, pb) = range(pl)?;
            let gv = gs.as_cuda_slice::<f32>()?.slice(ga..gb);
            let mut pv = ps.as_cuda_slice_mut::<f32>()?.slice_mut(pa..pb);
            // The guards' events are dropped before the launches: there is
            // one stream, so the launches are ordered after every earlier
            // use of these buffers and before every later one.
            t.g[j] = gv.device_ptr(&stream).0;
            t.p[j] = pv.device_ptr_mut(&stream).0;
            t.m[j] = m[*i].device_ptr_mut(&stream).0;
            t.v[j] = v[*i].device_ptr_mut(&stream).0;
            t.n[j] = (pb - pa) as u64;
            t.lr_mult[j] = params[*i].lr_mult;
            t.wd[j] = params[*i].wd;
            t.count += 1;
        }
        for (j, t) in groups.iter().enumerate() {
            let a = j * STEP_GROUP * SUMSQ_BLOCKS;
            let mut part = partials.slice_mut(a..a + t.count as usize * SUMSQ_BLOCKS);
            step_sumsq(dev, t, &mut part)?;
        }
        let used = partials.slice(0..work.len() * SUMSQ_BLOCKS);
        step_finalize(
            dev,
            &used,
            state,
            spec.rescale,
            spec.clip.unwrap_or(0.0),
            spec.lr,
            (betas.beta1, betas.beta2),
        )?;
        for t in &groups {
            step_adamw(
                dev,
                t,
                state,
                betas.beta1 as f32,
                betas.beta2 as f32,
                betas.eps as f32,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BETAS: Betas = Betas {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };

    #[test]
    fn powers_by_squaring_match_powi() {
        for n in [1u64, 2, 3, 7, 100, 1001, 65_537] {
            let (a, b) = (powi(0.999, n), 0.999f64.powi(n as i32));
            assert!((a - b).abs() <= 1e-11 * b, "n = {n}: {a} vs {b}");
        }
        assert_eq!(powi(0.9, 3), 0.9 * (0.9 * 0.9));
    }

    #[test]
    fn a_non_finite_norm_skips_and_counts_without_advancing() {
        let mut s = [0.0; STATE];
        let spec = StepSpec {
            lr: 0.1,
            rescale: 2.0,
            clip: Some(1.0),
        };
        finalize(&mut s, 25.0, spec, BETAS);
        assert_eq!((s[ST_T], s[ST_APPLY], s[ST_NORM]), (1.0, 1.0, 10.0));
        assert!((s[ST_FACTOR] - 2.0 / (10.0 + 1e-6)).abs() < 1e-12);
        assert!((s[ST_BC1] - 0.1).abs() < 1e-12 && s[ST_LR] == 0.1);
        finalize(&mut s, f64::NAN, spec, BETAS);
        finalize(&mut s, f64::INFINITY, spec, BETAS);
        assert_eq!((s[ST_T], s[ST_SKIPPED], s[ST_APPLY]), (1.0, 2.0, 0.0));
        finalize(&mut s, 0.25, spec, BETAS);
        assert_eq!((s[ST_T], s[ST_APPLY], s[ST_FACTOR]), (2.0, 1.0, 2.0));
        assert!((s[ST_BC1] - (1.0 - 0.81)).abs() < 1e-12);
    }
}
