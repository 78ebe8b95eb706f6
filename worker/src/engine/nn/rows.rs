//! CPU row kernels for the backward passes that candle would otherwise
//! compose from several full-size elementwise ops, and for attention
//! softmax and erf-GELU: one pass over each row, rows split over the thread
//! pool, each loop compiled for AVX-512 and AVX2 besides the baseline and
//! chosen at run time. Each function
//! returns `None` unless every input is an f32 tensor on the CPU; callers
//! then use the composed candle ops (accelerators, other dtypes).

use candle_core::{CpuStorage, DType, Result, Storage, StorageRef, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

/// The f32 elements of a CPU tensor in row-major order: its own buffer
/// when it is contiguous (read in place, no copy), a copy otherwise.
enum Data<'a> {
    Borrowed(StorageRef<'a>, usize, usize),
    Owned(Vec<f32>),
}

impl std::ops::Deref for Data<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Data::Borrowed(s, a, b) => match &**s {
                Storage::Cpu(CpuStorage::F32(v)) => &v[*a..*b],
                _ => unreachable!("checked when borrowed"),
            },
            Data::Owned(v) => v,
        }
    }
}

/// The f32 CPU data of `t`, or `None` when `t` is anything else.
fn data(t: &Tensor) -> Result<Option<Data<'_>>> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Ok(None);
    }
    let (s, l) = t.storage_and_layout();
    if let Some((a, b)) = l.contiguous_offsets() {
        if matches!(&*s, Storage::Cpu(CpuStorage::F32(_))) {
            return Ok(Some(Data::Borrowed(s, a, b)));
        }
    }
    drop(s);
    Ok(Some(Data::Owned(t.flatten_all()?.to_vec1::<f32>()?)))
}

/// `sum(a[i] * b[i])` over 8 lanes, so that the loop vectorises.
#[inline(always)]
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
#[inline(always)]
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

/// The largest of `a` (`-inf` when empty) over 16 lanes: a comparison
/// that keeps the lane's value, so that the loop vectorises (`f32::max`
/// handles NaN and stays scalar).
#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let c = a.chunks_exact(16);
    let tail = c
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for x in c {
        for l in 0..16 {
            lanes[l] = if x[l] > lanes[l] { x[l] } else { lanes[l] };
        }
    }
    lanes.iter().fold(tail, |m, &x| if x > m { x } else { m })
}

/// `e^x` without a library call (relative error below 3e-7 on the range
/// used here), written so that loops over it vectorise: round-to-nearest
/// by the 1.5 * 2^23 trick, a degree-6 polynomial on `[-ln2/2, ln2/2]`,
/// and the power of two put in the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    // Rounded to an integer by the shift; the integer also sits in the
    // low mantissa bits, read from there (an `as i32` cast saturates,
    // which keeps the loop from vectorising).
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let k = shifted - SHIFT;
    // Wrapping arithmetic: an overflow check (on in test builds) would
    // also keep the loop scalar; the values are small.
    let ki = (shifted.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits((ki.wrapping_add(127) << 23) as u32)
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
                softmax_bwd_row(o, y, g, scale as f32);
            }
        });
    Ok(Some(Tensor::from_vec(out, y.shape(), y.device())?))
}

/// `softmax(x * scale + mask)` over the last dimension for attention
/// scores `x` (`[b, h, q, k]`) and an additive mask `[b, 1, 1 or q, k]`.
pub fn masked_softmax(x: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let (Ok((b, h, q, k)), Ok((mb, 1, mq, mk))) = (x.dims4(), mask.dims4()) else {
        return Ok(None);
    };
    if mb != b || mk != k || (mq != 1 && mq != q) {
        return Ok(None);
    }
    let (Some(xv), Some(mv)) = (data(x)?, data(mask)?) else {
        return Ok(None);
    };
    let scale = scale as f32;
    let mut out = vec![0f32; xv.len()];
    let rows = rows_per_chunk(k);
    out.par_chunks_mut(k * rows)
        .zip(xv.par_chunks(k * rows))
        .enumerate()
        .for_each(|(c, (o, x))| {
            for (i, (o, x)) in o.chunks_mut(k).zip(x.chunks(k)).enumerate() {
                let r = c * rows + i;
                let (batch, query) = (r / (h * q), r % q);
                let m0 = (batch * mq + if mq == 1 { 0 } else { query }) * k;
                softmax_row(o, x, &mv[m0..m0 + k], scale);
            }
        });
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
pub(crate) fn softmax_row(o: &mut [f32], x: &[f32], mask: &[f32], scale: f32) {
    for ((o, &x), &m) in o.iter_mut().zip(x).zip(mask) {
        *o = x * scale + m;
    }
    let max = max(o);
    for o in o.iter_mut() {
        *o = exp(*o - max);
    }
    let inv = 1.0 / sum(o);
    for o in o.iter_mut() {
        *o *= inv;
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn softmax_bwd_row(o: &mut [f32], y: &[f32], g: &[f32], scale: f32) {
    let d = dot(y, g);
    for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
        *o = scale * y * (g - d);
    }
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
    out.par_chunks_mut(n * rows)
        .zip(xv.par_chunks(n * rows).zip(gv.par_chunks(n * rows)))
        .for_each(|(o, (x, g))| {
            let mut scratch = (vec![0f32; n], vec![0f32; n]);
            for ((o, x), g) in o.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                layer_norm_bwd_row(o, x, g, &wv, eps as f32, &mut scratch);
            }
        });
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn layer_norm_bwd_row(
    o: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
    (xhat, gw): &mut (Vec<f32>, Vec<f32>),
) {
    let inv_n = 1.0 / x.len() as f32;
    let mean = sum(x) * inv_n;
    for (c, &v) in xhat.iter_mut().zip(x) {
        *c = v - mean;
    }
    let rstd = 1.0 / (dot(xhat, xhat) * inv_n + eps).sqrt();
    for (((c, gw), &g), &w) in xhat.iter_mut().zip(gw.iter_mut()).zip(g).zip(w) {
        *c *= rstd;
        *gw = g * w;
    }
    let m1 = sum(gw) * inv_n;
    let m2 = dot(gw, xhat) * inv_n;
    for ((o, &gw), &xh) in o.iter_mut().zip(gw.iter()).zip(xhat.iter()) {
        *o = rstd * (gw - m1 - xh * m2);
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// erf-GELU `x * Phi(x)` and, with `g`, its backward
/// `g * (Phi(x) + x * phi(x))`, elementwise over the thread pool.
pub fn gelu_erf(x: &Tensor, g: Option<&Tensor>) -> Result<Option<Tensor>> {
    elementwise(x, g, gelu_chunk, gelu_bwd_chunk)
}

/// tanh-GELU (`gelu_new`, `gelu_pytorch_tanh`)
/// `0.5 x (1 + tanh(c (x + 0.044715 x^3)))`, `c = sqrt(2 / pi)`, and with
/// `g` its backward, elementwise over the thread pool.
pub fn gelu_tanh(x: &Tensor, g: Option<&Tensor>) -> Result<Option<Tensor>> {
    elementwise(x, g, gelu_tanh_chunk, gelu_tanh_bwd_chunk)
}

/// `fwd(x)`, or `bwd(x, g)` when `g` is given, chunk by chunk.
fn elementwise(
    x: &Tensor,
    g: Option<&Tensor>,
    fwd: fn(&mut [f32], &[f32]),
    bwd: fn(&mut [f32], &[f32], &[f32]),
) -> Result<Option<Tensor>> {
    let Some(xv) = data(x)? else {
        return Ok(None);
    };
    let mut out = vec![0f32; xv.len()];
    match g {
        None => out
            .par_chunks_mut(CHUNK)
            .zip(xv.par_chunks(CHUNK))
            .for_each(|(o, x)| fwd(o, x)),
        Some(g) => {
            let Some(gv) = data(g)? else {
                return Ok(None);
            };
            out.par_chunks_mut(CHUNK)
                .zip(xv.par_chunks(CHUNK).zip(gv.par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| bwd(o, x, g))
        }
    }
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

/// `f` over `x`'s own buffer, chunk by chunk over the thread pool, when
/// `x` is an f32 CPU tensor that builds no gradient and that nothing else
/// holds (an activation under inference): no new buffer. Otherwise `x` is
/// handed back unchanged.
pub fn in_place(x: Tensor, f: fn(&mut [f32])) -> Result<std::result::Result<Tensor, Tensor>> {
    if x.track_op() {
        return Ok(Err(x));
    }
    Ok(match owned(x)? {
        Ok((mut v, shape)) => {
            v.par_chunks_mut(CHUNK).for_each(f);
            Ok(Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?)
        }
        Err(x) => Err(x),
    })
}

/// The f32 buffer of a CPU tensor that nothing else holds, moved out with
/// its shape (cut to the shape's elements); otherwise the tensor back.
fn owned(x: Tensor) -> Result<std::result::Result<(Vec<f32>, candle_core::Shape), Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(Err(x));
    }
    match x.into_storage() {
        Ok((Storage::Cpu(CpuStorage::F32(mut v)), shape)) => {
            v.truncate(shape.elem_count());
            Ok(Ok((v, shape)))
        }
        Ok(_) => candle_core::bail!("the buffer of an f32 CPU tensor is not f32"),
        Err(x) => Ok(Err(x)),
    }
}

/// `layer_norm(a + r) * w + b` over the last dimension, written into
/// `a`'s own buffer, when every input is an f32 CPU tensor that builds no
/// gradient and nothing else holds `a` (a residual block's output under
/// inference): one pass instead of an addition and a normalisation, each
/// with a new buffer. Otherwise `a` is handed back unchanged.
pub fn add_layer_norm_in_place(
    a: Tensor,
    r: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<std::result::Result<Tensor, Tensor>> {
    let n = a.dim(candle_core::D::Minus1)?;
    if [&a, r, w, b].iter().any(|t| t.track_op())
        || a.shape() != r.shape()
        || w.dims() != [n]
        || b.dims() != [n]
    {
        return Ok(Err(a));
    }
    let (Some(rv), Some(wv), Some(bv)) = (data(r)?, data(w)?, data(b)?) else {
        return Ok(Err(a));
    };
    Ok(match owned(a)? {
        Ok((mut v, shape)) => {
            let rows = rows_per_chunk(n);
            v.par_chunks_mut(n * rows)
                .zip(rv.par_chunks(n * rows))
                .for_each(|(o, r)| {
                    for (o, r) in o.chunks_mut(n).zip(r.chunks(n)) {
                        add_layer_norm_row(o, r, &wv, &bv, eps as f32);
                    }
                });
            Ok(Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?)
        }
        Err(a) => Err(a),
    })
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn add_layer_norm_row(o: &mut [f32], r: &[f32], w: &[f32], b: &[f32], eps: f32) {
    for (o, &r) in o.iter_mut().zip(r) {
        *o += r;
    }
    layer_norm_row(o, w, b, eps);
}

/// Layer norm over the last dimension with affine `w`, `b` (`[n]`), the
/// CPU f32 forward of every layer norm (so that the in-place and the
/// allocating forms give the same bits).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let n = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [n] || b.dims() != [n] {
        return Ok(None);
    }
    let (Some(xv), Some(wv), Some(bv)) = (data(x)?, data(w)?, data(b)?) else {
        return Ok(None);
    };
    let mut out = xv.to_vec();
    let rows = rows_per_chunk(n);
    out.par_chunks_mut(n * rows).for_each(|o| {
        for o in o.chunks_mut(n) {
            layer_norm_row(o, &wv, &bv, eps as f32);
        }
    });
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

/// One row's layer norm in place: mean, then centred squares (two
/// passes), then `(x - mean) * rstd * w + b`.
#[inline(always)]
fn layer_norm_row(o: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let inv_n = 1.0 / o.len() as f32;
    let mean = sum(o) * inv_n;
    for o in o.iter_mut() {
        *o -= mean;
    }
    let rstd = 1.0 / (dot(o, o) * inv_n + eps).sqrt();
    for ((o, &w), &b) in o.iter_mut().zip(w).zip(b) {
        *o = *o * rstd * w + b;
    }
}

/// erf-GELU in place (see [`in_place`]).
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
pub fn gelu_erf_in_place(o: &mut [f32]) {
    for o in o.iter_mut() {
        *o *= cdf(*o);
    }
}

/// tanh-GELU in place (see [`in_place`]).
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
pub fn gelu_tanh_in_place(o: &mut [f32]) {
    for o in o.iter_mut() {
        *o = gelu_tanh_of(*o);
    }
}

/// The standard normal CDF `Phi(x)`.
#[inline(always)]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// sqrt(2 / pi).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// `tanh(u) = 1 - 2 / (e^(2u) + 1)` (saturates cleanly: `exp` clamps).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn gelu_tanh_chunk(o: &mut [f32], x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = gelu_tanh_of(x);
    }
}

/// `0.5 x (1 + tanh(c (x + 0.044715 x^3)))`, one element.
#[inline(always)]
fn gelu_tanh_of(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x));
    0.5 * x * (1.0 + t)
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn gelu_tanh_bwd_chunk(o: &mut [f32], x: &[f32], g: &[f32]) {
    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
        let t = tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x));
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
        *o = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn gelu_chunk(o: &mut [f32], x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = x * cdf(x);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn gelu_bwd_chunk(o: &mut [f32], x: &[f32], g: &[f32]) {
    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        *o = g * (cdf(x) + x * pdf);
    }
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
    fn masked_softmax_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (2, 3, 5, 5), &dev).unwrap();
        for mask in [
            Tensor::randn(0f32, 2.0, (2, 1, 1, 5), &dev).unwrap(),
            Tensor::randn(0f32, 2.0, (2, 1, 5, 5), &dev).unwrap(),
        ] {
            let got = masked_softmax(&x, &mask, 0.5).unwrap().unwrap();
            let z = (&x * 0.5).unwrap().broadcast_add(&mask).unwrap();
            let want = candle_nn::ops::softmax_last_dim(&z).unwrap();
            assert!(max_diff(&got, &want) < 1e-6);
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

    /// In place where the input is free: the same values as the
    /// allocating kernels (GELUs) and as candle's `a + r` then layer norm;
    /// a held or tracked input is handed back untouched.
    #[test]
    fn in_place_kernels_match_and_decline_shared_inputs() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (7, 33), &dev).unwrap();
        let want = x.gelu_erf().unwrap();
        let own = x.copy().unwrap();
        let got = in_place(own, gelu_erf_in_place).unwrap().unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
        let own = x.copy().unwrap();
        let got = in_place(own, gelu_tanh_in_place).unwrap().unwrap();
        assert!(max_diff(&got, &gelu_tanh(&x, None).unwrap().unwrap()) < 1e-6);
        // Held elsewhere: handed back, values unchanged.
        let back = in_place(x.clone(), gelu_erf_in_place).unwrap().unwrap_err();
        assert!(max_diff(&back, &x) == 0.0);
        let tracked = candle_core::Var::from_tensor(&x).unwrap();
        assert!(in_place(tracked.as_tensor().clone(), gelu_erf_in_place)
            .unwrap()
            .is_err());

        let (a, r) = (
            Tensor::randn(1f32, 2.0, (2, 5, 37), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (2, 5, 37), &dev).unwrap(),
        );
        let w = Tensor::randn(1f32, 0.5, 37, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 37, &dev).unwrap();
        let want = candle_nn::ops::layer_norm(&(&a + &r).unwrap(), &w, &b, 1e-5).unwrap();
        let got = add_layer_norm_in_place(a.copy().unwrap(), &r, &w, &b, 1e-5)
            .unwrap()
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        let back = add_layer_norm_in_place(a.clone(), &r, &w, &b, 1e-5)
            .unwrap()
            .unwrap_err();
        assert!(max_diff(&back, &a) == 0.0);
    }
}
