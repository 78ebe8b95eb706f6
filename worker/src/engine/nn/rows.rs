//! CPU row kernels for the backward passes that candle would otherwise
//! compose from several full-size elementwise ops, and for erf-GELU: one
//! pass over each row, rows split over the thread pool. Each function
//! returns `None` unless every input is an f32 tensor on the CPU; callers
//! then use the composed candle ops (accelerators, other dtypes).

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// Contiguous f32 CPU data of `t`, or `None` when `t` is anything else.
fn data(t: &Tensor) -> Result<Option<Vec<f32>>> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Ok(None);
    }
    Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
}

/// Rows are handed to threads in chunks of about this many elements.
const CHUNK: usize = 1 << 14;

fn rows_per_chunk(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}

/// Softmax backward over the last dimension with a scale on the input:
/// `dx = scale * y * (dy - sum(dy * y))`.
pub fn softmax_bwd(y: &Tensor, g: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let (Some(yv), Some(gv)) = (data(y)?, data(g)?) else {
        return Ok(None);
    };
    let n = y.dim(candle_core::D::Minus1)?;
    let mut out = vec![0f32; yv.len()];
    let rows = rows_per_chunk(n);
    out.par_chunks_mut(n * rows)
        .zip(yv.par_chunks(n * rows).zip(gv.par_chunks(n * rows)))
        .for_each(|(o, (y, g))| {
            for ((o, y), g) in o.chunks_mut(n).zip(y.chunks(n)).zip(g.chunks(n)) {
                let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = scale as f32 * y * (g - dot);
                }
            }
        });
    Ok(Some(Tensor::from_vec(out, y.shape(), y.device())?))
}

/// Layer-norm backward of the normalisation with gain `w` (`[n]`):
/// `dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))`, `gw = dy * w`,
/// statistics recomputed from `x` in f64.
pub fn layer_norm_bwd(x: &Tensor, g: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let (Some(xv), Some(gv), Some(wv)) = (data(x)?, data(g)?, data(w)?) else {
        return Ok(None);
    };
    let n = wv.len();
    let mut out = vec![0f32; xv.len()];
    let rows = rows_per_chunk(n);
    out.par_chunks_mut(n * rows)
        .zip(xv.par_chunks(n * rows).zip(gv.par_chunks(n * rows)))
        .for_each(|(o, (x, g))| {
            let mut gw = vec![0f32; n];
            for ((o, x), g) in o.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                let rstd = 1.0 / (var + eps).sqrt();
                let (mut m1, mut m2) = (0f64, 0f64);
                for i in 0..n {
                    gw[i] = g[i] * wv[i];
                    let xhat = (x[i] as f64 - mean) * rstd;
                    m1 += gw[i] as f64;
                    m2 += gw[i] as f64 * xhat;
                }
                let (m1, m2) = (m1 / n as f64, m2 / n as f64);
                for i in 0..n {
                    let xhat = (x[i] as f64 - mean) * rstd;
                    o[i] = (rstd * (gw[i] as f64 - m1 - xhat * m2)) as f32;
                }
            }
        });
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
fn erf(x: f32) -> f32 {
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    s * (1.0 - poly * (-x * x).exp())
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// erf-GELU `x * Phi(x)` and, with `g`, its backward
/// `g * (Phi(x) + x * phi(x))`, elementwise over the thread pool.
pub fn gelu_erf(x: &Tensor, g: Option<&Tensor>) -> Result<Option<Tensor>> {
    let Some(xv) = data(x)? else {
        return Ok(None);
    };
    let gv = match g {
        Some(g) => match data(g)? {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let mut out = vec![0f32; xv.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xv.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (o, x))| {
            for (i, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
                *o = match &gv {
                    None => x * cdf,
                    Some(g) => {
                        let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                        g[c * CHUNK + i] * (cdf + x * pdf)
                    }
                };
            }
        });
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn erf_is_within_its_bound() {
        for i in -400..=400 {
            let x = i as f64 / 100.0;
            let want = candle_core::cpu::erf::erf_f64(x);
            assert!((erf(x as f32) as f64 - want).abs() < 5e-7, "erf({x})");
        }
    }

    #[test]
    fn gelu_matches_candle_forward() {
        let x = Tensor::randn(0f32, 2.0, (7, 33), &Device::Cpu).unwrap();
        let ours = gelu_erf(&x, None).unwrap().unwrap();
        assert!(max_diff(&ours, &x.gelu_erf().unwrap()) < 1e-6);
    }

    #[test]
    fn non_cpu_f32_inputs_fall_back() {
        let x = Tensor::randn(0f32, 1.0, (2, 4), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        assert!(gelu_erf(&x, None).unwrap().is_none());
    }
}
