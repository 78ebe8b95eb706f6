//! A LoRA linear as one attached op: `y = x W^T (+ b) + s (drop(x) A^T) B^T`
//! with `W`, `b` frozen and `A` (`[r, in]`), `B` (`[out, r]`) trained.
//!
//! Composed from graph ops this is about a dozen nodes (dropout, two
//! products, the scale, the addition, and in backward a gradient for each
//! plus the sum of `x`'s two gradients). Here the forward is the frozen
//! product with the adapter's product accumulated into it (beta = 1 on the
//! CPU's BLAS path), the scale `s` rides on the dropout mask (kept values
//! `s / (1 - p)`; without dropout, on the small `[n, r]` factor), and the
//! hand-written backward computes exactly `dA`, `dB` and, when `x` needs
//! one, `dx = g W + drop(s (g B) A)` with the adapter's part accumulated
//! into the frozen one where there is no mask.

use candle_core::{Result, Tensor};

use super::matmul::{add_product, matmul};
use super::ops::attach3;
use super::{Draw, Pass};

/// The trained factors of an adapter, in the compute dtype, its scale
/// (`alpha / r`) and its input dropout rate.
pub struct Adapter<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    pub dropout: f64,
}

/// `x W^T (+ bias) + scale * (drop(x) A^T) B^T` over `x` `[n, in]`, with
/// `w` `[out, in]` and `bias` `[out]` frozen (detached) and the adapter's
/// factors attached with their gradients; the mask comes from `ctx`.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    adapter: Adapter<'_>,
    ctx: &Pass,
) -> Result<Tensor> {
    let Adapter { a, b, scale, .. } = adapter;
    let draw = ctx.scaled_draw(x, adapter.dropout, scale)?;
    // Where the mask carries no scale (no dropout), the `[n, r]` factors do.
    let factor = match draw {
        Draw::Keep => Some(scale),
        _ => None,
    };
    let scaled = move |t: Tensor| match factor {
        Some(s) => t * s,
        None => Ok(t),
    };
    let xd = x.detach();
    let dropped = draw.apply(&xd)?;
    let h = scaled(matmul(&dropped, &a.detach().t()?, None)?)?;
    let y = matmul(&xd, &w.t()?, bias)?;
    let y = add_product(y, &h, &b.detach().t()?)?;
    let w = w.detach();
    attach3("lora-linear", (x, a, b), y, move |i, needs, _, g| {
        let (a, b) = (i[1], i[2]);
        let db = match needs[2] {
            true => Some(matmul(&g.t()?, &h, None)?),
            false => None,
        };
        if !needs[0] && !needs[1] {
            return Ok(vec![None, None, db]);
        }
        // The gradient of `h` (`[n, r]`), the scale folded in.
        let dh = scaled(matmul(g, b, None)?)?;
        let da = match needs[1] {
            true => Some(matmul(&dh.t()?, &dropped, None)?),
            false => None,
        };
        let dx = match needs[0] {
            false => None,
            true => {
                let frozen = matmul(g, &w, None)?;
                Some(match &draw {
                    Draw::Keep => add_product(frozen, &dh, a)?,
                    d => (frozen + d.apply(&matmul(&dh, a, None)?)?)?,
                })
            }
        };
        Ok(vec![dx, da, db])
    })
}

/// The adapter's term `scale * (drop(x) A^T) B^T` composed of graph ops
/// (dropout, two products, the scale on the small `B`): what
/// [`lora_linear`] adds, for a base it does not cover (a quantized weight,
/// a trained bias), and the reference its tests compare it with.
pub fn adapter_delta(x: &Tensor, adapter: &Adapter<'_>, ctx: &Pass) -> Result<Tensor> {
    let xin = ctx.dropout(x, adapter.dropout)?;
    // The scale goes on the small `B` (`[out, r]`), not the `[n, out]` output.
    let b = (adapter.b * adapter.scale)?;
    matmul(&matmul(&xin, &adapter.a.t()?, None)?, &b.t()?, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::nn::Pass;
    use candle_core::{Device, Var};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The same layer composed of graph ops: the frozen product plus
    /// [`adapter_delta`].
    fn composed(x: &Tensor, w: &Tensor, bias: &Tensor, ad: &Adapter, ctx: &Pass) -> Tensor {
        let y = matmul(x, &w.t().unwrap(), Some(bias)).unwrap();
        (y + adapter_delta(x, ad, ctx).unwrap()).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        let d = d.max(0).unwrap().to_scalar::<f32>().unwrap();
        let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        d / m.to_scalar::<f32>().unwrap().max(1e-6)
    }

    /// Output and the gradients of `x`, `A` and `B` against the composed
    /// layer, with dropout (same mask: same seed) and without, with `x`
    /// tracked and not; `W` and the bias get none.
    #[test]
    fn matches_the_composed_layer() {
        let dev = Device::Cpu;
        let (n, i, o, r) = (37, 24, 20, 4);
        let rnd = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &dev).unwrap();
        let (x0, w, bias, a0, b0, proj) = (
            rnd(&[n, i]),
            rnd(&[o, i]),
            rnd(&[o]),
            rnd(&[r, i]),
            rnd(&[o, r]),
            rnd(&[n, o]),
        );
        for p in [0.0, 0.3] {
            for x_tracked in [true, false] {
                let run = |fused: bool| {
                    let x = Var::from_tensor(&x0).unwrap();
                    let a = Var::from_tensor(&a0).unwrap();
                    let b = Var::from_tensor(&b0).unwrap();
                    let xt = match x_tracked {
                        true => x.as_tensor().clone(),
                        false => x0.clone(),
                    };
                    let ctx = Pass::new(true, ChaCha8Rng::seed_from_u64(5));
                    let ad = Adapter {
                        a: a.as_tensor(),
                        b: b.as_tensor(),
                        scale: 2.0,
                        dropout: p,
                    };
                    let y = match fused {
                        true => lora_linear(&xt, &w, Some(&bias), ad, &ctx).unwrap(),
                        false => composed(&xt, &w, &bias, &ad, &ctx),
                    };
                    let grads = (&y * &proj).unwrap().sum_all().unwrap().backward().unwrap();
                    let get = |v: &Var| grads.get(v.as_tensor()).cloned();
                    (y, get(&x), get(&a).unwrap(), get(&b).unwrap())
                };
                let (yf, dxf, daf, dbf) = run(true);
                let (yc, dxc, dac, dbc) = run(false);
                let case = format!("p {p}, x tracked {x_tracked}");
                assert!(max_rel(&yf, &yc) < 1e-5, "{case}: y");
                assert!(max_rel(&daf, &dac) < 1e-5, "{case}: dA");
                assert!(max_rel(&dbf, &dbc) < 1e-5, "{case}: dB");
                match (dxf, dxc) {
                    (Some(f), Some(c)) => assert!(max_rel(&f, &c) < 1e-5, "{case}: dx"),
                    (None, None) => assert!(!x_tracked, "{case}"),
                    other => panic!("{case}: dx {:?}", other.0.is_some()),
                }
                // Dropout changed the adapter's input (the masks matched).
                if p > 0.0 {
                    let plain = run_plain(&x0, &w, &bias, &a0, &b0);
                    assert!(max_rel(&yf, &plain) > 1e-4, "{case}: dropout applied");
                }
            }
        }
    }

    fn run_plain(x: &Tensor, w: &Tensor, bias: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        let ad = Adapter {
            a,
            b,
            scale: 2.0,
            dropout: 0.0,
        };
        lora_linear(
            x,
            w,
            Some(bias),
            ad,
            &Pass::new(true, ChaCha8Rng::seed_from_u64(5)),
        )
        .unwrap()
    }
}
