//! Differentiable building blocks that candle lacks, implements without a
//! backward pass, or differentiates with gradients for constants: each is
//! a fast forward on detached inputs [`attach`]ed with an exact backward.
//! This keeps candle's fused kernels (softmax, layer norm, quantized
//! matmul) on every device, and CPU row kernels where they exist.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor, D};

pub use super::attach::{attach, attach2, attach3};
use super::matmul::matmul;
use super::{fused, rows};

/// Softmax over the last dimension: fused forward, exact backward
/// `dx = y * (dy - sum(dy * y))`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.detach())?;
    attach("softmax-last-dim", x, y, |_, y, g| softmax_bwd(y, g, 1.0))
}

/// `softmax(x * scale + mask)` over the last dimension, `mask` broadcast
/// against `x` (additive, constant): one attached op, so no gradient is
/// built for the mask or the scaled scores. Backward
/// `dx = scale * y * (dy - sum(dy * y))`.
pub fn masked_softmax(x: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let xd = x.detach();
    let y = match rows::masked_softmax(&xd, mask, scale)? {
        Some(y) => y,
        None if fused::applies(&xd) => fused::masked_softmax(&xd, mask, scale)?,
        None => candle_nn::ops::softmax_last_dim(&(xd * scale)?.broadcast_add(mask)?)?,
    };
    attach("masked-softmax", x, y, move |_, y, g| {
        softmax_bwd(y, g, scale)
    })
}

/// `scale * y * (dy - sum(dy * y))`: one row kernel on the CPU, composed
/// ops (with the row sum in f32) elsewhere.
fn softmax_bwd(y: &Tensor, g: &Tensor, scale: f64) -> Result<Tensor> {
    if let Some(dx) = rows::softmax_bwd(y, g, scale)? {
        return Ok(dx);
    }
    if fused::applies(y) {
        return fused::softmax_bwd(y, g, scale);
    }
    let (yf, gf) = (y.to_dtype(DType::F32)?, g.to_dtype(DType::F32)?);
    let dot = (&gf * &yf)?.sum_keepdim(D::Minus1)?;
    ((yf * gf.broadcast_sub(&dot)?)? * scale)?.to_dtype(y.dtype())
}

/// Rotary embedding in rotate-half form over `x` `[b, h, s, d]` with
/// `cos`, `sin` `[s, d/2]`, on candle's fused kernel. The rotation is
/// orthogonal, so the backward rotates the gradient back:
/// `dx = rope(dy, cos, -sin)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    attach("rope", x, y, move |_, _, g| {
        candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &sin.neg()?)
    })
}

/// The CPU row kernel of an elementwise activation: `kernel(x, None)` is
/// the forward, `kernel(x, Some(dy))` the backward, `None` where it does
/// not apply (other devices and dtypes).
type RowKernel = fn(&Tensor, Option<&Tensor>) -> Result<Option<Tensor>>;

/// A GELU attached with its exact backward: the row kernel where it
/// applies, else `fwd` and the fused backward kernel (or, on devices
/// without one, the composed-op `bwd(x, dy)`).
fn activation(
    name: &'static str,
    x: &Tensor,
    kernel: RowKernel,
    form: fused::Gelu,
    fwd: fn(&Tensor) -> Result<Tensor>,
    bwd: fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let xd = x.detach();
    let y = match kernel(&xd, None)? {
        Some(y) => y,
        None => fwd(&xd)?,
    };
    attach(name, x, y, move |x, _, g| match kernel(x, Some(g))? {
        Some(dx) => Ok(dx),
        None if fused::applies(x) => fused::gelu_bwd(x, g, form),
        None => bwd(x, g),
    })
}

/// Exact (erf) GELU, attached with backward `dy * (Phi(x) + x * phi(x))`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    activation(
        "gelu-erf",
        x,
        rows::gelu_erf,
        fused::Gelu::Erf,
        Tensor::gelu_erf,
        |x, g| {
            let xf = x.to_dtype(DType::F32)?;
            let cdf = ((xf.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
            let pdf = ((xf.sqr()? * -0.5)?.exp()?
                * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2))?;
            let d = (cdf + (xf * pdf)?)?;
            (g.to_dtype(DType::F32)? * d)?.to_dtype(x.dtype())
        },
    )
}

/// [`gelu_erf`] that takes its input: computed in its buffer when no
/// gradient is built and nothing else holds it (inference on the CPU).
pub fn gelu_erf_owned(x: Tensor) -> Result<Tensor> {
    rows::in_place(x, rows::gelu_erf_in_place)?.or_else(|x| gelu_erf(&x))
}

/// [`gelu_tanh`] that takes its input, as [`gelu_erf_owned`].
pub fn gelu_tanh_owned(x: Tensor) -> Result<Tensor> {
    rows::in_place(x, rows::gelu_tanh_in_place)?.or_else(|x| gelu_tanh(&x))
}

/// tanh-GELU (`gelu_new`), attached with its exact backward: a row
/// kernel on the CPU, candle's fused forward and composed ops elsewhere.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    activation(
        "gelu-tanh",
        x,
        rows::gelu_tanh,
        fused::Gelu::Tanh,
        Tensor::gelu,
        |x, g| {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let xf = x.to_dtype(DType::F32)?;
            let x2 = xf.sqr()?;
            let t = ((&xf * c)? * ((&x2 * 0.044_715)? + 1.0)?)?.tanh()?;
            let du = ((&x2 * (3.0 * 0.044_715))? + 1.0)? * c;
            let left = ((&t + 1.0)? * 0.5)?;
            let right = (((xf * 0.5)? * (t.sqr()?.affine(-1.0, 1.0)?))? * du?)?;
            (g.to_dtype(DType::F32)? * (left + right)?)?.to_dtype(x.dtype())
        },
    )
}

/// Layer norm over the last dimension with affine weight and bias, on
/// candle's fused kernel. A frozen affine is folded into the kernel (no
/// gradient built for it); a trained one is applied after the fused
/// normalisation. Backward of the normalisation with gain `w`:
/// `dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))`, `gw = dy * w`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if weight.track_op() || bias.track_op() {
        let hidden = x.dim(D::Minus1)?;
        let (ones, zeros) = unit_affine(hidden, x.dtype(), x.device())?;
        return affine(&normalize(x, &ones, &zeros, eps)?, weight, bias);
    }
    normalize(x, weight, bias, eps)
}

/// `x * w + b` with `w`, `b` broadcast over the leading dimensions of `x`:
/// `dx = dy * w`, `dw = colsum(dy * x)`, `db = colsum(dy)`.
pub fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = x.detach().broadcast_mul(w)?.broadcast_add(b)?;
    attach3("affine", (x, w, b), y, |i, needs, _, g| {
        let (x, w, b) = (i[0], i[1], i[2]);
        Ok(vec![
            needs[0].then(|| g.broadcast_mul(w)).transpose()?,
            needs[1].then(|| col_sum(&(g * x)?, w)).transpose()?,
            needs[2].then(|| col_sum(g, b)).transpose()?,
        ])
    })
}

/// `y + b` with `b` broadcast over the leading dimensions of `y` (a
/// trained bias or embedding table): `db = colsum(dy)`.
pub fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = y.detach().broadcast_add(&b.detach())?;
    attach2("bias-add", (y, b), out, |i, needs, _, g| {
        Ok(vec![
            needs[0].then(|| g.clone()),
            needs[1].then(|| col_sum(g, i[1])).transpose()?,
        ])
    })
}

/// `g` summed over its leading dimensions into `like`'s shape (one
/// matrix-vector product: `ones[1, N] @ g[N, C]`).
fn col_sum(g: &Tensor, like: &Tensor) -> Result<Tensor> {
    let c = like.elem_count();
    let g2 = g.reshape(((), c))?;
    let ones = Tensor::ones((1, g2.dim(0)?), g.dtype(), g.device())?;
    matmul(&ones, &g2, None)?.reshape(like.shape())
}

fn normalize(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let xd = x.detach();
    let y = match rows::layer_norm(&xd, weight, bias, eps)? {
        Some(y) => y,
        None => candle_nn::ops::layer_norm(&xd, weight, bias, eps as f32)?,
    };
    let w = weight.to_dtype(DType::F32)?;
    attach("layer-norm", x, y, move |x, _, g| {
        if let Some(dx) = rows::layer_norm_bwd(x, g, &w, eps)? {
            return Ok(dx);
        }
        if fused::applies(x) {
            return fused::layer_norm_bwd(x, g, &w, eps);
        }
        let xf = x.to_dtype(DType::F32)?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centred = xf.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let rstd = (var + eps)?.sqrt()?.recip()?;
        let xhat = centred.broadcast_mul(&rstd)?;
        let gw = g.to_dtype(DType::F32)?.broadcast_mul(&w)?;
        let g_mean = gw.mean_keepdim(D::Minus1)?;
        let gx_mean = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
        let inner = gw
            .broadcast_sub(&g_mean)?
            .sub(&xhat.broadcast_mul(&gx_mean)?)?;
        inner.broadcast_mul(&rstd)?.to_dtype(x.dtype())
    })
}

fn unit_affine(n: usize, dtype: DType, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    Ok((
        Tensor::ones(n, dtype, device)?,
        Tensor::zeros(n, dtype, device)?,
    ))
}

/// `x @ w^T` for a frozen quantized weight: forward with candle's quantized
/// kernels, backward through the dequantized weight (re-dequantized on
/// every backward so that only the quantized copy stays resident).
pub fn quantized_matmul(x: &Tensor, w: &Arc<candle_core::quantized::QTensor>) -> Result<Tensor> {
    let mm = QMatMul::from_arc(w.clone())?;
    let xd = x.detach();
    let y = match xd.dtype() {
        DType::F32 => mm.forward(&xd)?,
        dt => mm.forward(&xd.to_dtype(DType::F32)?)?.to_dtype(dt)?,
    };
    let w = w.clone();
    attach("quantized-matmul", x, y, move |x, _, g| {
        let dense = w.dequantize(x.device())?.to_dtype(g.dtype())?;
        let out = dense.dim(0)?;
        let g2 = g.detach().reshape(((), out))?;
        matmul(&g2, &dense, None)?.reshape(x.shape())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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

    fn check_grad(
        f_fast: impl Fn(&Tensor) -> Result<Tensor>,
        f_ref: impl Fn(&Tensor) -> Result<Tensor>,
    ) {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let proj = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let grad_of = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = f(x.as_tensor()).unwrap();
            let loss = (y * &proj).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            grads.get(x.as_tensor()).unwrap().clone()
        };
        let fast = grad_of(&f_fast);
        let reference = grad_of(&f_ref);
        assert!(max_diff(&fast, &reference) < 1e-4, "{fast} vs {reference}");
        assert!(
            fast.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        let yf = f_fast(&x0).unwrap();
        let yr = f_ref(&x0).unwrap();
        assert!(max_diff(&yf, &yr) < 1e-5);
    }

    #[test]
    fn softmax_grad_matches_composed_ops() {
        check_grad(softmax_last_dim, |x| candle_nn::ops::softmax(x, D::Minus1));
    }

    #[test]
    fn masked_softmax_grad_matches_composed_ops() {
        let dev = Device::Cpu;
        let mask = Tensor::randn(0f32, 3.0, (1, 3, 16), &dev).unwrap();
        check_grad(
            |x| masked_softmax(x, &mask, 0.25),
            |x| candle_nn::ops::softmax(&(x * 0.25)?.broadcast_add(&mask)?, D::Minus1),
        );
    }

    #[test]
    fn rope_grad_matches_composed_ops() {
        let dev = Device::Cpu;
        // `check_grad` feeds `[2, 3, 16]`: one batch of 2 heads, 3 positions.
        let cos = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let four = |x: &Tensor| x.unsqueeze(0);
        check_grad(
            |x| rope(&four(x)?, &cos, &sin)?.squeeze(0),
            |x| candle_nn::rotary_emb::rope_slow(&four(x)?, &cos, &sin)?.squeeze(0),
        );
    }

    #[test]
    fn gelu_tanh_grad_matches_candle() {
        check_grad(gelu_tanh, |x| x.gelu());
    }

    #[test]
    fn gelu_tanh_composed_backward_matches_candle() {
        // The path devices without a row kernel take (bf16 on the CPU here).
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 2.0, (4, 16), &dev).unwrap();
        let grad = |fast: bool| {
            let x = Var::from_tensor(&x0.to_dtype(DType::BF16).unwrap()).unwrap();
            let y = if fast {
                gelu_tanh(x.as_tensor()).unwrap()
            } else {
                x.as_tensor().gelu().unwrap()
            };
            let g = y.sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().to_dtype(DType::F32).unwrap()
        };
        assert!(max_diff(&grad(true), &grad(false)) < 2e-2);
    }

    #[test]
    fn gelu_grad_matches_composed_ops() {
        check_grad(gelu_erf, |x| x.gelu_erf());
    }

    #[test]
    fn trained_layer_norm_affine_gets_exact_gradients() {
        let dev = Device::Cpu;
        let w0 = Tensor::randn(1f32, 0.1, 16, &dev).unwrap();
        let b0 = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        let x0 = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let proj = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let run = |fast: bool| {
            let (x, w, b) = (
                Var::from_tensor(&x0).unwrap(),
                Var::from_tensor(&w0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
            let y = if fast {
                layer_norm(xt, wt, bt, 1e-5)
            } else {
                candle_nn::ops::layer_norm_slow(xt, wt, bt, 1e-5)
            };
            let g = (y.unwrap() * &proj)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [xt, wt, bt].map(|t| g.get(t).unwrap().clone())
        };
        for (f, r) in run(true).iter().zip(run(false).iter()) {
            assert!(max_diff(f, r) < 1e-4, "{f} vs {r}");
        }
    }

    #[test]
    fn layer_norm_grad_matches_composed_ops() {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f32, 0.1, 16, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        check_grad(
            |x| layer_norm(x, &w, &b, 1e-5),
            |x| candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-5),
        );
    }

    #[test]
    fn quantized_matmul_input_grad_matches_dense_reference() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (16, 64), &dev).unwrap();
        let q = Arc::new(
            candle_core::quantized::QTensor::quantize(&w, candle_core::quantized::GgmlDType::Q8_0)
                .unwrap(),
        );
        let dense = q.dequantize(&dev).unwrap();
        let x0 = Tensor::randn(0f32, 1.0, (2, 3, 64), &dev).unwrap();
        let proj = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let y = quantized_matmul(x.as_tensor(), &q).unwrap();
        let g = (y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let got = g.get(x.as_tensor()).unwrap();
        let x2 = Var::from_tensor(&x0).unwrap();
        let y2 = x2
            .as_tensor()
            .broadcast_matmul(&dense.t().unwrap())
            .unwrap();
        let g2 = (y2 * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let want = g2.get(x2.as_tensor()).unwrap();
        let scale = want
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max_diff(got, want) / scale < 1e-5, "rel err too big");
        // Stock QMatMul cuts the graph: make sure we do not.
        assert!(max_diff(got, &got.zeros_like().unwrap()) > 0.0);
    }
}
