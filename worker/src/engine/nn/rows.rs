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

/// `sum(a[i] * b[i])` over 8 lanes, so that the loop vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `sum(a[i])` over 8 lanes.
fn sum(a: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for l in 0..8 {
            lanes[l] += x[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` without a library call (relative error below 3e-7 on the range
/// used here), written so that loops over it vectorise: round-to-nearest
/// by the 1.5 * 2^23 trick, a degree-6 polynomial on `[-ln2/2, ln2/2]`,
/// and the power of two put in the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
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
                let d = dot(y, g);
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = scale as f32 * y * (g - d);
                }
            }
        });
    Ok(Some(Tensor::from_vec(out, y.shape(), y.device())?))
}

/// Layer-norm backward of the normalisation with gain `w` (`[n]`):
/// `dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))`, `gw = dy * w`,
/// statistics recomputed from `x` (two passes: mean, then centred squares).
pub fn layer_norm_bwd(x: &Tensor, g: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let (Some(xv), Some(gv), Some(wv)) = (data(x)?, data(g)?, data(w)?) else {
        return Ok(None);
    };
    let n = wv.len();
    let mut out = vec![0f32; xv.len()];
    let rows = rows_per_chunk(n);
    let inv_n = 1.0 / n as f32;
    out.par_chunks_mut(n * rows)
        .zip(xv.par_chunks(n * rows).zip(gv.par_chunks(n * rows)))
        .for_each(|(o, (x, g))| {
            let (mut xhat, mut gw) = (vec![0f32; n], vec![0f32; n]);
            for ((o, x), g) in o.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                let mean = sum(x) * inv_n;
                for (c, &v) in xhat.iter_mut().zip(x) {
                    *c = v - mean;
                }
                let rstd = 1.0 / (dot(&xhat, &xhat) * inv_n + eps as f32).sqrt();
                for (((c, gw), &g), &w) in xhat.iter_mut().zip(gw.iter_mut()).zip(g).zip(&wv) {
                    *c *= rstd;
                    *gw = g * w;
                }
                let m1 = sum(&gw) * inv_n;
                let m2 = dot(&gw, &xhat) * inv_n;
                for ((o, &gw), &xh) in o.iter_mut().zip(&gw).zip(&xhat) {
                    *o = rstd * (gw - m1 - xh * m2);
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
                        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
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
    fn exp_is_within_its_bound() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            assert!(rel < 3e-7, "exp({x}): {rel}");
        }
    }

    #[test]
    fn layer_norm_rows_match_f64_reference() {
        let (rows, n) = (5, 37);
        let x = Tensor::randn(3f32, 2.0, (rows, n), &Device::Cpu).unwrap();
        let g = Tensor::randn(0f32, 1.0, (rows, n), &Device::Cpu).unwrap();
        let w = Tensor::randn(1f32, 0.3, n, &Device::Cpu).unwrap();
        let got = layer_norm_bwd(&x, &g, &w, 1e-5).unwrap().unwrap();
        let (xs, gs, ws) = (
            x.to_vec2::<f32>().unwrap(),
            g.to_vec2::<f32>().unwrap(),
            w.to_vec1::<f32>().unwrap(),
        );
        let got = got.to_vec2::<f32>().unwrap();
        for r in 0..rows {
            let xr: Vec<f64> = xs[r].iter().map(|&v| v as f64).collect();
            let mean = xr.iter().sum::<f64>() / n as f64;
            let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            let xh: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
            let gw: Vec<f64> = (0..n).map(|i| gs[r][i] as f64 * ws[i] as f64).collect();
            let m1 = gw.iter().sum::<f64>() / n as f64;
            let m2 = (0..n).map(|i| gw[i] * xh[i]).sum::<f64>() / n as f64;
            for i in 0..n {
                let want = rstd * (gw[i] - m1 - xh[i] * m2);
                assert!((got[r][i] as f64 - want).abs() < 1e-4, "row {r} col {i}");
            }
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
