//! The fused kernels (`engine::nn::fused`): on the device under test
//! against their CPU twins, the twins against candle's own composed ops
//! and autograd (the formulas), Philox against its published known-answer
//! vectors, the fused optimiser step against its CPU twin, and the LoRA
//! linear op against the layer composed of graph ops on the same device.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use worker::engine::nn::fused::{self, Gelu};
use worker::engine::nn::lora::{adapter_delta, lora_linear, Adapter};
use worker::engine::nn::matmul::{add_product, matmul};
use worker::engine::nn::Pass;
use worker::engine::train::fused_step::StepSpec;
use worker::engine::train::optim::AdamW;

use super::device;

/// Largest `|a - b| / (atol + rtol * max|b|)`: at most 1 passes.
fn rel_err(a: &Tensor, b: &Tensor, atol: f32, rtol: f32) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (atol + rtol * scale))
        .fold(0f32, f32::max)
}

/// Tolerances of a device-vs-twin comparison: f32 within 1e-5 of the
/// largest value; bf16 within two bf16 steps of it (the device rounds once
/// from f32, the twin too, but their f32 results may differ in the last
/// bits and land on either side of a rounding boundary).
fn tol(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::BF16 => (1e-6, 1.6e-2),
        _ => (1e-7, 1e-5),
    }
}

/// Inputs of every kernel: rows of 37 (not a multiple of the 32 lanes),
/// a mask broadcast over heads with some positions at -1e4.
fn inputs(dev: &Device, dtype: DType) -> (Tensor, Tensor, Tensor, Tensor) {
    let cpu = Device::Cpu;
    let x = Tensor::randn(0f32, 1.5, (2, 3, 5, 37), &cpu).unwrap();
    let g = Tensor::randn(0f32, 1.0, (2, 3, 5, 37), &cpu).unwrap();
    let w = Tensor::randn(1f32, 0.3, 37, &cpu).unwrap();
    let keep: Vec<f32> = (0..2 * 5 * 37)
        .map(|i| if i % 7 == 3 { -1e4 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(keep, (2, 1, 5, 37), &cpu).unwrap();
    let on = |t: Tensor| t.to_dtype(dtype).unwrap().to_device(dev).unwrap();
    (on(x), on(g), w.to_device(dev).unwrap(), on(mask))
}

#[test]
fn fused_kernels_on_the_device_match_their_cpu_twins() {
    let dev = device();
    for dtype in [DType::F32, DType::BF16] {
        let (x, g, w, mask) = inputs(&dev, dtype);
        let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
        let (xc, gc, wc, mc) = (cpu(&x), cpu(&g), cpu(&w), cpu(&mask));
        let (atol, rtol) = tol(dtype);
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            (
                "gelu-erf bwd",
                fused::gelu_bwd(&x, &g, Gelu::Erf).unwrap(),
                fused::gelu_bwd(&xc, &gc, Gelu::Erf).unwrap(),
            ),
            (
                "gelu-tanh bwd",
                fused::gelu_bwd(&x, &g, Gelu::Tanh).unwrap(),
                fused::gelu_bwd(&xc, &gc, Gelu::Tanh).unwrap(),
            ),
            (
                "layer-norm bwd",
                fused::layer_norm_bwd(&x, &g, &w, 1e-5).unwrap(),
                fused::layer_norm_bwd(&xc, &gc, &wc, 1e-5).unwrap(),
            ),
            (
                "masked softmax",
                fused::masked_softmax(&x, &mask, 0.3).unwrap(),
                fused::masked_softmax(&xc, &mc, 0.3).unwrap(),
            ),
            (
                "softmax bwd",
                fused::softmax_bwd(&x, &g, 0.3).unwrap(),
                fused::softmax_bwd(&xc, &gc, 0.3).unwrap(),
            ),
            (
                "dropout",
                fused::dropout(&x, 42, 0.9).unwrap(),
                fused::dropout(&xc, 42, 0.9).unwrap(),
            ),
            (
                "scaled dropout",
                fused::scaled_dropout(&x, 42, 0.9, 2.5).unwrap(),
                fused::scaled_dropout(&xc, 42, 0.9, 2.5).unwrap(),
            ),
        ];
        for (name, on_device, twin) in cases {
            assert_eq!(on_device.dtype(), dtype, "{name}");
            assert_eq!(on_device.dims(), x.dims(), "{name}");
            let e = rel_err(&cpu(&on_device), &twin, atol, rtol);
            assert!(
                e <= 1.0,
                "{name} ({dtype:?}) on {dev:?}: error {e} of tolerance"
            );
        }
    }
}

#[test]
fn fused_twins_compute_the_composed_formulas() {
    let cpu = Device::Cpu;
    let (x, g, w, mask) = inputs(&cpu, DType::F32);
    let close = |name: &str, a: &Tensor, b: &Tensor| {
        let e = rel_err(a, b, 1e-6, 2e-5);
        assert!(e <= 1.0, "{name}: error {e} of tolerance");
    };
    // Autograd of candle's own ops as the reference gradients.
    let grad_of = |f: &dyn Fn(&Tensor) -> Tensor| {
        let v = Var::from_tensor(&x).unwrap();
        let y = f(v.as_tensor());
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(v.as_tensor()).unwrap().clone()
    };
    close(
        "gelu-erf bwd",
        &fused::gelu_bwd(&x, &g, Gelu::Erf).unwrap(),
        &grad_of(&|t| t.gelu_erf().unwrap()),
    );
    close(
        "gelu-tanh bwd",
        &fused::gelu_bwd(&x, &g, Gelu::Tanh).unwrap(),
        &grad_of(&|t| t.gelu().unwrap()),
    );
    let norm = |t: &Tensor| {
        let mean = t.mean_keepdim(D::Minus1).unwrap();
        let c = t.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let rstd = (var + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
        c.broadcast_mul(&rstd).unwrap().broadcast_mul(&w).unwrap()
    };
    close(
        "layer-norm bwd",
        &fused::layer_norm_bwd(&x, &g, &w, 1e-5).unwrap(),
        &grad_of(&norm),
    );
    let softmax = |t: &Tensor| {
        let z = (t * 0.3).unwrap().broadcast_add(&mask).unwrap();
        candle_nn::ops::softmax(&z, D::Minus1).unwrap()
    };
    close(
        "masked softmax",
        &fused::masked_softmax(&x, &mask, 0.3).unwrap(),
        &softmax(&x),
    );
    let y = softmax(&x);
    let v = Var::from_tensor(&x).unwrap();
    let grads = (softmax(v.as_tensor()) * &g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    close(
        "softmax bwd",
        &fused::softmax_bwd(&y, &g, 0.3).unwrap(),
        grads.get(v.as_tensor()).unwrap(),
    );
    // The same draw, the kept values scaled by the factor too.
    close(
        "scaled dropout",
        &fused::scaled_dropout(&x, 42, 0.9, 2.5).unwrap(),
        &(fused::dropout(&x, 42, 0.9).unwrap() * 2.5).unwrap(),
    );
}

#[test]
fn philox_matches_known_answers_and_dropout_keeps_its_rate() {
    // Random123's known-answer vector for Philox4x32-10 at a zero counter and key.
    assert_eq!(fused::philox_word0(0, 0), 0x6627_e8d5);
    let x = Tensor::ones((400, 250), DType::F32, &Device::Cpu).unwrap();
    let keep = 0.9;
    let y = fused::dropout(&x, 7, keep).unwrap();
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let kept = v.iter().filter(|&&e| e != 0.0).count() as f64 / v.len() as f64;
    // 100 000 draws: the standard deviation of the rate is ~0.00095.
    assert!((kept - keep).abs() < 0.005, "kept fraction {kept}");
    let scale = (1.0 / keep) as f32;
    assert!(v.iter().all(|&e| e == 0.0 || e == scale));
    // The same seed draws the same mask (the backward relies on it).
    let again = fused::dropout(&x, 7, keep).unwrap();
    assert_eq!(again.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
    let other = fused::dropout(&x, 8, keep).unwrap();
    assert_ne!(other.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
}

/// The fused optimiser step on the device against its CPU twin: more
/// tensors than one launch takes, learning-rate multipliers and decays that
/// differ, rescaled and clipped gradients, and a step whose gradient is not
/// finite (skipped on the device, counted, and not applied).
#[test]
fn fused_optimiser_step_on_the_device_matches_the_cpu() {
    let dev = device();
    let n = worker::engine::train::fused_step::GROUP + 3;
    let run = |d: &Device| {
        let vars: Vec<Var> = (0..n)
            .map(|k| {
                let w0 = Tensor::arange(0f32, (4 * (1 + k % 5)) as f32, &Device::Cpu)
                    .unwrap()
                    .affine(0.1, k as f64 * 0.01)
                    .unwrap();
                Var::from_tensor(&w0.to_device(d).unwrap()).unwrap()
            })
            .collect();
        let groups: Vec<_> = vars
            .iter()
            .enumerate()
            .map(|(k, v)| (format!("w{k}"), v.clone(), 1.0 + (k % 3) as f64, 0.01))
            .collect();
        let mut opt = AdamW::with_groups(&groups).unwrap();
        for step in 0..4 {
            let mut loss = Tensor::zeros((), DType::F32, d).unwrap();
            for (k, v) in vars.iter().enumerate() {
                let mut target = Tensor::full(step as f32 - k as f32 * 0.05, v.shape(), d).unwrap();
                if step == 2 && k == n - 1 {
                    target = (target * f64::INFINITY).unwrap();
                }
                let term = (v.as_tensor() - target)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss = (loss + term).unwrap();
            }
            let spec = StepSpec {
                lr: 1e-2,
                rescale: if step == 1 { 2.0 } else { 1.0 },
                clip: Some(1.0),
            };
            opt.step_with(&loss.backward().unwrap(), spec).unwrap();
        }
        let weights: Vec<Tensor> = vars
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap()
            })
            .collect();
        let counts = (opt.steps().unwrap(), opt.skipped().unwrap());
        (
            Tensor::cat(&weights, 0).unwrap(),
            opt.moments().unwrap(),
            counts,
        )
    };
    let (w_dev, m_dev, counts_dev) = run(&dev);
    let (w_cpu, m_cpu, counts_cpu) = run(&Device::Cpu);
    assert_eq!(counts_cpu, (3, 1));
    assert_eq!(
        counts_dev, counts_cpu,
        "applied and skipped steps on {dev:?}"
    );
    let e = rel_err(&w_dev, &w_cpu, 1e-7, 1e-5);
    assert!(
        e <= 1.0,
        "optimiser step on {dev:?}: error {e} of tolerance"
    );
    let flat = |m: &[(Vec<f32>, Vec<f32>)]| {
        let v: Vec<f32> = m
            .iter()
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect();
        Tensor::new(v.as_slice(), &Device::Cpu).unwrap()
    };
    let e = rel_err(&flat(&m_dev), &flat(&m_cpu), 1e-7, 1e-5);
    assert!(
        e <= 1.0,
        "optimiser moments on {dev:?}: error {e} of tolerance"
    );
}

/// `c + a @ b` into `c`'s own buffer on the device under test (one cuBLAS
/// call with beta = 1 on CUDA) against the composed sum on the CPU, for a
/// row-major `b` and for a transposed view (as a LoRA adapter's `B^T`), in
/// f32 and bf16.
#[test]
fn add_product_on_the_device_matches_the_composed_sum() {
    let dev = device();
    let cpu = Device::Cpu;
    let (m, k, n) = (37, 16, 45);
    let c0 = Tensor::randn(0f32, 1.0, (m, n), &cpu).unwrap();
    let a0 = Tensor::randn(0f32, 1.0, (m, k), &cpu).unwrap();
    let b_rows = Tensor::randn(0f32, 1.0, (k, n), &cpu).unwrap();
    let b_cols = Tensor::randn(0f32, 1.0, (n, k), &cpu).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        for transposed in [false, true] {
            let on = |t: &Tensor, d: &Device| t.to_dtype(dtype).unwrap().to_device(d).unwrap();
            let b_of = |d: &Device| {
                if transposed {
                    on(&b_cols, d).t().unwrap()
                } else {
                    on(&b_rows, d)
                }
            };
            // A buffer of its own (a cast to the same dtype shares `c0`'s),
            // so that the product is accumulated into it.
            let c = on(&c0, &dev).copy().unwrap();
            let got = add_product(c, &on(&a0, &dev), &b_of(&dev)).unwrap();
            let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&cpu).unwrap();
            let want = (f32_of(&on(&c0, &cpu))
                + f32_of(&on(&a0, &cpu)).matmul(&f32_of(&b_of(&cpu))).unwrap())
            .unwrap();
            let (atol, rtol) = tol(dtype);
            let e = rel_err(&f32_of(&got), &want, atol, rtol);
            assert!(
                e <= 1.0,
                "add_product {dtype:?} (b transposed: {transposed}) on {dev:?}: error {e} of tolerance"
            );
        }
    }
}

/// The LoRA linear op on the device under test against the same layer
/// composed of graph ops there (dropout from the same seeded stream: the
/// same mask, scaled by the adapter's scale in the op), in f32 and bf16,
/// with dropout and without: output and the gradients of x, A and B.
#[test]
fn lora_linear_matches_the_composed_layer_on_the_device() {
    let dev = device();
    let (n, i, o, r) = (37, 40, 24, 8);
    let cpu = Device::Cpu;
    let rnd = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &cpu).unwrap();
    let (x0, w0, bias0, a0, b0, proj0) = (
        rnd(&[n, i]),
        rnd(&[o, i]),
        rnd(&[o]),
        rnd(&[r, i]),
        rnd(&[o, r]),
        rnd(&[n, o]),
    );
    for dtype in [DType::F32, DType::BF16] {
        let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
        let (w, bias, proj) = (on(&w0), on(&bias0), on(&proj0));
        for p in [0.0, 0.3] {
            let run = |fused_op: bool| {
                let x = Var::from_tensor(&x0.to_device(&dev).unwrap()).unwrap();
                let a = Var::from_tensor(&a0.to_device(&dev).unwrap()).unwrap();
                let b = Var::from_tensor(&b0.to_device(&dev).unwrap()).unwrap();
                let cast = |v: &Var| v.as_tensor().to_dtype(dtype).unwrap();
                let (xt, at, bt) = (cast(&x), cast(&a), cast(&b));
                let ctx = Pass::new(true, ChaCha8Rng::seed_from_u64(3));
                let ad = Adapter {
                    a: &at,
                    b: &bt,
                    scale: 2.0,
                    dropout: p,
                };
                let y = if fused_op {
                    lora_linear(&xt, &w, Some(&bias), ad, &ctx).unwrap()
                } else {
                    let frozen = matmul(&xt, &w.t().unwrap(), Some(&bias)).unwrap();
                    (frozen + adapter_delta(&xt, &ad, &ctx).unwrap()).unwrap()
                };
                let loss = (y.to_dtype(DType::F32).unwrap() * proj.to_dtype(DType::F32).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                let get = |v: &Var| grads.get(v.as_tensor()).unwrap().to_device(&cpu).unwrap();
                (y.to_device(&cpu).unwrap(), get(&x), get(&a), get(&b))
            };
            let fused_run = run(true);
            let composed = run(false);
            let (atol, rtol) = match dtype {
                DType::BF16 => (1e-3, 3e-2),
                _ => (1e-6, 2e-5),
            };
            for (name, f, c) in [
                ("y", &fused_run.0, &composed.0),
                ("dx", &fused_run.1, &composed.1),
                ("dA", &fused_run.2, &composed.2),
                ("dB", &fused_run.3, &composed.3),
            ] {
                let e = rel_err(f, c, atol, rtol);
                assert!(
                    e <= 1.0,
                    "{name} ({dtype:?}, dropout {p}) on {dev:?}: error {e} of tolerance"
                );
            }
        }
    }
}
