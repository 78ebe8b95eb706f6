//! Fused kernels for what candle would otherwise compose from several
//! full-size ops on an accelerator: the backward passes of GELU (erf and
//! tanh), layer norm and softmax, the scaled + masked softmax forward, and
//! dropout drawn from a counter-based generator. On CUDA each is one kernel
//! of `kernels.cu` (PTX built by nvcc with the `cuda` feature); on the CPU
//! each runs its twin here, which computes the same formula element by
//! element in f32 for any float dtype. The parity tests compare a device's
//! kernels with the twins (`PARITY_DEVICE=cuda:0`) and the twins with the
//! composed candle ops; the CPU f32 training path keeps the faster row
//! kernels of [`super::rows`].
//!
//! Every op here is forward-only (`apply_op*_no_bwd`): the callers in
//! [`super::ops`] attach them as the backward of their own ops.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

/// Whether the fused kernels run for `t`: on the CPU (the twins) in f32,
/// bf16 or f16, and on CUDA (a build with the `cuda` feature) in f32 or
/// bf16. Elsewhere callers compose candle ops.
pub fn applies(t: &Tensor) -> bool {
    let dtype = t.dtype();
    match t.device() {
        candle_core::Device::Cpu => matches!(dtype, DType::F32 | DType::BF16 | DType::F16),
        candle_core::Device::Cuda(_) => {
            cfg!(feature = "cuda") && matches!(dtype, DType::F32 | DType::BF16)
        }
        _ => false,
    }
}

/// Which GELU: exact (`erf`) or the tanh approximation (`gelu_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    Erf,
    Tanh,
}

/// `dy * gelu'(x)` (same shape and dtype as `x`).
pub fn gelu_bwd(x: &Tensor, g: &Tensor, form: Gelu) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&g.contiguous()?, &GeluBwd(form))
}

/// Backward of the normalisation with gain `w` over the last dimension:
/// `dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))`, `gw = dy * w`
/// (`w`: f32, `[n]`).
pub fn layer_norm_bwd(x: &Tensor, g: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let w = w.to_dtype(DType::F32)?.contiguous()?;
    x.contiguous()?
        .apply_op3_no_bwd(&g.contiguous()?, &w, &LayerNormBwd { eps: eps as f32 })
}

/// `softmax(x * scale + mask)` over the last dimension; `mask` broadcasts
/// against `x` (read in place, not expanded) and has `x`'s dtype.
pub fn masked_softmax(x: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let mask = mask.to_dtype(x.dtype())?.broadcast_as(x.shape())?;
    x.contiguous()?.apply_op2_no_bwd(
        &mask,
        &MaskedSoftmax {
            scale: scale as f32,
        },
    )
}

/// `scale * y * (dy - sum(dy * y))` over the last dimension.
pub fn softmax_bwd(y: &Tensor, g: &Tensor, scale: f64) -> Result<Tensor> {
    y.contiguous()?.apply_op2_no_bwd(
        &g.contiguous()?,
        &SoftmaxBwd {
            scale: scale as f32,
        },
    )
}

/// Inverted dropout of `x` keeping each element with probability `keep`:
/// element `i` is kept when [`philox_word0`]`(i, seed)` is below
/// `keep * 2^32`, kept values are scaled by `1 / keep`. The same call on
/// the gradient is the backward (no mask is stored).
pub fn dropout(x: &Tensor, seed: u64, keep: f64) -> Result<Tensor> {
    scaled_dropout(x, seed, keep, 1.0)
}

/// [`dropout`] with the kept values scaled by `factor / keep` (a LoRA
/// adapter's scale rides on its input's mask).
pub fn scaled_dropout(x: &Tensor, seed: u64, keep: f64, factor: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op1_no_bwd(&Dropout::new(seed, keep, factor))
}

/// Word 0 of Philox4x32-10 for counter `(i, i >> 32, 0, 0)` and key
/// `(seed, seed >> 32)`, as `kernels.cu` computes it.
pub fn philox_word0(i: u64, seed: u64) -> u32 {
    let (mut c0, mut c1, mut c2, mut c3) = (i as u32, (i >> 32) as u32, 0u32, 0u32);
    let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
    for _ in 0..10 {
        let p0 = u64::from(0xD251_1F53u32) * u64::from(c0);
        let p1 = u64::from(0xCD9E_8D57u32) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
        k0 = k0.wrapping_add(0x9E37_79B9);
        k1 = k1.wrapping_add(0xBB67_AE85);
    }
    c0
}

fn gelu_erf_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
    cdf + x * pdf
}

fn gelu_tanh_grad(x: f32) -> f32 {
    let c = 0.797_884_6_f32;
    let x2 = x * x;
    let t = (c * x * (1.0 + 0.044_715 * x2)).tanh();
    let du = c * (1.0 + 3.0 * 0.044_715 * x2);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

fn erf(x: f32) -> f32 {
    candle_core::cpu::erf::erf_f32(x)
}

// ---- CPU side: f32 views of the inputs, outputs in the input dtype --------

/// The elements of a CPU tensor in row-major order of its layout, as f32.
fn f32s(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let offsets = offsets(l);
    Ok(match s {
        CpuStorage::F32(v) => offsets.map(|o| v[o]).collect(),
        CpuStorage::BF16(v) => offsets.map(|o| v[o].to_f32()).collect(),
        CpuStorage::F16(v) => offsets.map(|o| v[o].to_f32()).collect(),
        other => candle_core::bail!("fused kernels: unsupported dtype {:?}", other.dtype()),
    })
}

/// Storage offsets of every element of `l`, row-major.
fn offsets(l: &Layout) -> impl Iterator<Item = usize> + '_ {
    let dims = l.dims();
    let stride = l.stride();
    let n = l.shape().elem_count();
    (0..n).map(move |mut i| {
        let mut o = l.start_offset();
        for d in (0..dims.len()).rev() {
            o += (i % dims[d]) * stride[d];
            i /= dims[d];
        }
        o
    })
}

/// `v` stored in `dtype`.
fn store(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        other => candle_core::bail!("fused kernels: unsupported dtype {other:?}"),
    })
}

/// Rows of the last dimension: (number of rows, row length).
fn rows_of(l: &Layout) -> (usize, usize) {
    let n = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / n, n)
}

struct GeluBwd(Gelu);

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "fused-gelu-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let grad = match self.0 {
            Gelu::Erf => gelu_erf_grad,
            Gelu::Tanh => gelu_tanh_grad,
        };
        let (x, g) = (f32s(s1, l1)?, f32s(s2, l2)?);
        let dx = x.iter().zip(&g).map(|(&x, &g)| g * grad(x)).collect();
        Ok((store(dx, s1.dtype())?, l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gelu_bwd(s1, l1, s2, l2, self.0 == Gelu::Tanh)
    }
}

struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, w) = (f32s(s1, l1)?, f32s(s2, l2)?, f32s(s3, l3)?);
        let (_, n) = rows_of(l1);
        let nf = n as f32;
        let mut dx = vec![0f32; x.len()];
        for ((xr, gr), dr) in x.chunks(n).zip(g.chunks(n)).zip(dx.chunks_mut(n)) {
            let mean = xr.iter().sum::<f32>() / nf;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / nf;
            let rstd = 1.0 / (var + self.eps).sqrt();
            let (mut sg, mut sgx) = (0f32, 0f32);
            for j in 0..n {
                let gw = gr[j] * w[j];
                sg += gw;
                sgx += gw * (xr[j] - mean) * rstd;
            }
            let (g_mean, gx_mean) = (sg / nf, sgx / nf);
            for j in 0..n {
                let xhat = (xr[j] - mean) * rstd;
                dr[j] = rstd * (gr[j] * w[j] - g_mean - xhat * gx_mean);
            }
        }
        Ok((store(dx, s1.dtype())?, l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::layer_norm_bwd(s1, l1, s2, l2, s3, l3, self.eps)
    }
}

struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, mask) = (f32s(s1, l1)?, f32s(s2, l2)?);
        let (_, n) = rows_of(l1);
        let mut y = vec![0f32; x.len()];
        for ((xr, mr), yr) in x.chunks(n).zip(mask.chunks(n)).zip(y.chunks_mut(n)) {
            let z = |j: usize| xr[j] * self.scale + mr[j];
            let mx = (0..n).map(z).fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = (0..n).map(|j| (z(j) - mx).exp()).sum();
            for (j, o) in yr.iter_mut().enumerate() {
                *o = (z(j) - mx).exp() / s;
            }
        }
        Ok((store(y, s1.dtype())?, l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::masked_softmax(s1, l1, s2, l2, self.scale)
    }
}

struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (f32s(s1, l1)?, f32s(s2, l2)?);
        let (_, n) = rows_of(l1);
        let mut dx = vec![0f32; y.len()];
        for ((yr, gr), dr) in y.chunks(n).zip(g.chunks(n)).zip(dx.chunks_mut(n)) {
            let d: f32 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            for j in 0..n {
                dr[j] = self.scale * yr[j] * (gr[j] - d);
            }
        }
        Ok((store(dx, s1.dtype())?, l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::softmax_bwd(s1, l1, s2, l2, self.scale)
    }
}

struct Dropout {
    seed: u64,
    /// Kept when the draw is below this (`keep * 2^32`).
    threshold: u64,
    scale: f32,
}

impl Dropout {
    fn new(seed: u64, keep: f64, factor: f64) -> Dropout {
        Dropout {
            seed,
            threshold: (keep * 4_294_967_296.0) as u64,
            scale: (factor / keep) as f32,
        }
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l)?;
        let y = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if u64::from(philox_word0(i as u64, self.seed)) < self.threshold {
                    v * self.scale
                } else {
                    0.0
                }
            })
            .collect();
        Ok((store(y, s.dtype())?, l.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::dropout(s, l, self.seed, self.threshold, self.scale)
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    //! Launches of the kernels of `kernels.cu` (one module, loaded once per
    //! device), f32 and bf16.

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
    const MODULE: &str = "fpb-engine-kernels";

    /// The suffix of a kernel's entry point for `dtype`.
    fn suffix(dtype: DType) -> Result<&'static str> {
        match dtype {
            DType::F32 => Ok("f32"),
            DType::BF16 => Ok("bf16"),
            other => candle_core::bail!("fused CUDA kernels: unsupported dtype {other:?}"),
        }
    }

    /// A contiguous input's elements.
    fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fused kernel: input not contiguous".into()))?;
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// Grid-stride launch over `n` elements.
    fn elementwise(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// One warp a row, 8 warps a block.
    fn warp_rows(rows: usize) -> LaunchConfig {
        let blocks = rows.div_ceil(8).clamp(1, 1 << 20) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn out<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every element is written by the kernel that follows.
        unsafe { dev.alloc::<T>(n) }
    }

    macro_rules! by_dtype {
        ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
            match $dtype {
                DType::F32 => $f::<f32>($($arg),*),
                DType::BF16 => $f::<half::bf16>($($arg),*),
                other => candle_core::bail!("fused CUDA kernels: unsupported dtype {other:?}"),
            }
        };
    }

    pub(crate) fn gelu_bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        tanh: bool,
    ) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr>(
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            tanh: bool,
        ) -> Result<CudaStorage> {
            let dev = &s1.device;
            let n = l1.shape().elem_count();
            let (x, g) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
            let dx = out::<T>(dev, n)?;
            let f = dev.get_or_load_custom_func(
                &format!("gelu_bwd_{}", suffix(s1.dtype())?),
                MODULE,
                PTX,
            )?;
            let mut b = f.builder();
            let tanh = i32::from(tanh);
            b.arg(&x).arg(&g).arg(&dx).arg(&n).arg(&tanh);
            // SAFETY: argument types match the kernel's signature.
            unsafe { b.launch(elementwise(n)) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
        }
        let s = by_dtype!(s1.dtype(), run(s1, l1, s2, l2, tanh))?;
        Ok((s, l1.shape().clone()))
    }

    pub(crate) fn layer_norm_bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr>(
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
            eps: f32,
        ) -> Result<CudaStorage> {
            let dev = &s1.device;
            let n = *l1.dims().last().unwrap_or(&1);
            let total = l1.shape().elem_count();
            let rows = total / n.max(1);
            let (x, g, w) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<f32>(s3, l3)?);
            let dx = out::<T>(dev, total)?;
            let f = dev.get_or_load_custom_func(
                &format!("layer_norm_bwd_{}", suffix(s1.dtype())?),
                MODULE,
                PTX,
            )?;
            let mut b = f.builder();
            let n32 = n as i32;
            b.arg(&x)
                .arg(&g)
                .arg(&w)
                .arg(&dx)
                .arg(&rows)
                .arg(&n32)
                .arg(&eps);
            let cfg = LaunchConfig {
                grid_dim: (rows.clamp(1, 1 << 20) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument types match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
        }
        let s = by_dtype!(s1.dtype(), run(s1, l1, s2, l2, s3, l3, eps))?;
        Ok((s, l1.shape().clone()))
    }

    pub(crate) fn masked_softmax(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr>(
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            scale: f32,
        ) -> Result<CudaStorage> {
            let dev = &s1.device;
            let dims = l1.dims();
            if dims.len() > 4 || dims.is_empty() {
                candle_core::bail!("fused masked softmax: rank {} (1 to 4)", dims.len());
            }
            // Dims and mask strides padded on the left to (d0, d1, d2, n).
            let pad = 4 - dims.len();
            let mut d = [1usize; 4];
            let mut ms = [0i64; 4];
            for (i, (&dim, &st)) in dims.iter().zip(l2.stride()).enumerate() {
                d[pad + i] = dim;
                ms[pad + i] = st as i64;
            }
            let total = l1.shape().elem_count();
            let n = d[3];
            let rows = total / n.max(1);
            let x = view::<T>(s1, l1)?;
            let mask = s2.as_cuda_slice::<T>()?.slice(l2.start_offset()..);
            let y = out::<T>(dev, total)?;
            let f = dev.get_or_load_custom_func(
                &format!("masked_softmax_{}", suffix(s1.dtype())?),
                MODULE,
                PTX,
            )?;
            let mut b = f.builder();
            let (n32, d1, d2) = (n as i32, d[1] as i32, d[2] as i32);
            b.arg(&x)
                .arg(&mask)
                .arg(&y)
                .arg(&rows)
                .arg(&n32)
                .arg(&d1)
                .arg(&d2);
            b.arg(&ms[0])
                .arg(&ms[1])
                .arg(&ms[2])
                .arg(&ms[3])
                .arg(&scale);
            // SAFETY: argument types match the kernel's signature; the mask
            // view covers every offset its strides reach (it broadcasts to x).
            unsafe { b.launch(warp_rows(rows)) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
        }
        let s = by_dtype!(s1.dtype(), run(s1, l1, s2, l2, scale))?;
        Ok((s, l1.shape().clone()))
    }

    pub(crate) fn softmax_bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr>(
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            scale: f32,
        ) -> Result<CudaStorage> {
            let dev = &s1.device;
            let n = *l1.dims().last().unwrap_or(&1);
            let total = l1.shape().elem_count();
            let rows = total / n.max(1);
            let (y, g) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
            let dx = out::<T>(dev, total)?;
            let f = dev.get_or_load_custom_func(
                &format!("softmax_bwd_{}", suffix(s1.dtype())?),
                MODULE,
                PTX,
            )?;
            let mut b = f.builder();
            let n32 = n as i32;
            b.arg(&y).arg(&g).arg(&dx).arg(&rows).arg(&n32).arg(&scale);
            // SAFETY: argument types match the kernel's signature.
            unsafe { b.launch(warp_rows(rows)) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
        }
        let s = by_dtype!(s1.dtype(), run(s1, l1, s2, l2, scale))?;
        Ok((s, l1.shape().clone()))
    }

    pub(crate) fn dropout(
        s: &CudaStorage,
        l: &Layout,
        seed: u64,
        threshold: u64,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        fn run<T: CudaDType + DeviceRepr>(
            s: &CudaStorage,
            l: &Layout,
            seed: u64,
            threshold: u64,
            scale: f32,
        ) -> Result<CudaStorage> {
            let dev = &s.device;
            let n = l.shape().elem_count();
            let x = view::<T>(s, l)?;
            let y = out::<T>(dev, n)?;
            let f = dev.get_or_load_custom_func(
                &format!("dropout_{}", suffix(s.dtype())?),
                MODULE,
                PTX,
            )?;
            let mut b = f.builder();
            b.arg(&x)
                .arg(&y)
                .arg(&n)
                .arg(&seed)
                .arg(&threshold)
                .arg(&scale);
            // SAFETY: argument types match the kernel's signature.
            unsafe { b.launch(elementwise(n)) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
        }
        let out = by_dtype!(s.dtype(), run(s, l, seed, threshold, scale))?;
        Ok((out, l.shape().clone()))
    }

    /// Tensors of one launch of the optimiser step's kernels, by device
    /// pointer (`StepTensors` of `kernels.cu`, field for field).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct StepTensors {
        pub p: [u64; STEP_GROUP],
        pub g: [u64; STEP_GROUP],
        pub m: [u64; STEP_GROUP],
        pub v: [u64; STEP_GROUP],
        pub n: [u64; STEP_GROUP],
        pub lr_mult: [f64; STEP_GROUP],
        pub wd: [f64; STEP_GROUP],
        pub count: i32,
    }

    /// Tensors per launch of the optimiser step's kernels (`STEP_GROUP`).
    pub(crate) const STEP_GROUP: usize = 48;

    // SAFETY: `repr(C)` plain data, laid out as the kernels' struct.
    unsafe impl DeviceRepr for StepTensors {}

    // Seven arrays of 8-byte values, an `int`, padding to 8: as nvcc lays
    // out `StepTensors`, within the 4 KiB of a launch's arguments.
    const _: () = assert!(std::mem::size_of::<StepTensors>() == 7 * 8 * STEP_GROUP + 8);

    impl StepTensors {
        pub(crate) fn empty() -> StepTensors {
            StepTensors {
                p: [0; STEP_GROUP],
                g: [0; STEP_GROUP],
                m: [0; STEP_GROUP],
                v: [0; STEP_GROUP],
                n: [0; STEP_GROUP],
                lr_mult: [0.0; STEP_GROUP],
                wd: [0.0; STEP_GROUP],
                count: 0,
            }
        }

        /// One block row per tensor, `blocks` blocks of 256 along each.
        fn grid(&self, blocks: u32) -> LaunchConfig {
            LaunchConfig {
                grid_dim: (blocks, self.count as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            }
        }
    }

    /// Blocks per tensor of `step_sumsq`: each writes one partial sum.
    pub(crate) const SUMSQ_BLOCKS: usize = 32;

    /// The partial sums of squares of a group's gradients, written to
    /// `partials[k * SUMSQ_BLOCKS ..]` for its tensor `k`.
    pub(crate) fn step_sumsq(
        dev: &CudaDevice,
        t: &StepTensors,
        partials: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let f = dev.get_or_load_custom_func("step_sumsq", MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(t).arg(partials);
        // SAFETY: argument types match the kernel's signature; `t` points at
        // `count` live gradients of `n` f32 elements, and `partials` holds
        // `count * SUMSQ_BLOCKS` floats.
        unsafe { b.launch(t.grid(SUMSQ_BLOCKS as u32)) }.w()?;
        Ok(())
    }

    /// The step's scalars from every partial sum (one block).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step_finalize(
        dev: &CudaDevice,
        partials: &CudaView<'_, f32>,
        state: &mut CudaSlice<f64>,
        rescale: f64,
        clip: f64,
        lr: f64,
        betas: (f64, f64),
    ) -> Result<()> {
        let f = dev.get_or_load_custom_func("step_finalize", MODULE, PTX)?;
        let count = partials.len();
        let mut b = f.builder();
        b.arg(partials).arg(&count).arg(state);
        b.arg(&rescale)
            .arg(&clip)
            .arg(&lr)
            .arg(&betas.0)
            .arg(&betas.1);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types match the kernel's signature; `state`
        // holds the eight scalars of `kernels.cu`'s `ST_*`.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    /// AdamW on a group's tensors in place (see `step_adamw`).
    pub(crate) fn step_adamw(
        dev: &CudaDevice,
        t: &StepTensors,
        state: &CudaSlice<f64>,
        b1: f32,
        b2: f32,
        eps: f32,
    ) -> Result<()> {
        let longest = t.n[..t.count as usize].iter().copied().max().unwrap_or(1);
        let blocks = (longest as usize).div_ceil(256).clamp(1, 1024) as u32;
        let f = dev.get_or_load_custom_func("step_adamw", MODULE, PTX)?;
        let mut b = f.builder();
        b.arg(t).arg(state).arg(&b1).arg(&b2).arg(&eps);
        // SAFETY: argument types match the kernel's signature; each of the
        // group's `count` tensors has four live buffers of `n` f32 elements.
        unsafe { b.launch(t.grid(blocks)) }.w()?;
        Ok(())
    }
}
