//! Scaled dot-product attention for inference on the CPU in one pass per
//! batch row: for each head, the scores of that head (a few KiB, held in a
//! thread's cache), their masked softmax and the product with the values,
//! written straight into the merged `[b, s, heads * d]` layout. The full
//! `[b, heads, q, k]` score and probability tensors and the copy that
//! merges the heads are never made. Used where no gradient is built and
//! no dropout applies; [`attend`] returns `None` elsewhere.

use std::mem::MaybeUninit;

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::matmul::cpu::{operand, sgemm_ld, single_threaded};
use super::{matmul, rows};

/// `softmax(q k^T * scale + mask) v` merged over heads: `[b, q, heads*d]`,
/// from `q` `[b, heads, q, d]`, `k` and `v` `[b, heads, k, d]` (any
/// strides the product reads) and the additive `mask` `[b, 1, 1 or q, k]`.
/// `None` unless all are f32 CPU tensors that build no gradient and a CBLAS
/// library is loaded.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    if [q, k, v]
        .iter()
        .any(|t| t.track_op() || !matmul::reads_strided(t))
        || !mask.device().is_cpu()
        || mask.dtype() != DType::F32
    {
        return Ok(None);
    }
    let (b, heads, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    let (mb, mq) = match mask.dims4()? {
        (mb, 1, mq, mk) if mb == b && mk == sk && (mq == 1 || mq == sq) => (mb, mq),
        _ => return Ok(None),
    };
    if k.dims4()? != (b, heads, sk, d) || v.dims4()? != (b, heads, sk, d) {
        return Ok(None);
    }
    let mask = mask.contiguous()?;
    let (ms, ml) = mask.storage_and_layout();
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(ms), Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) =
        (&*ms, &*qs, &*ks, &*vs)
    else {
        return Ok(None);
    };
    let m = &ms.as_slice::<f32>()?[ml.start_offset()..ml.start_offset() + mb * mq * sk];
    let (qo, qc) = operand(qs, ql)?;
    let (ko, kc) = operand(ks, kl)?;
    let (vo, vc) = operand(vs, vl)?;
    let (qd, kd, vd) = (
        qc.as_deref().unwrap_or(qo.data),
        kc.as_deref().unwrap_or(ko.data),
        vc.as_deref().unwrap_or(vo.data),
    );
    let width = heads * d;
    let mut out: Vec<MaybeUninit<f32>> = Vec::with_capacity(b * sq * width);
    out.resize_with(b * sq * width, MaybeUninit::uninit);
    let scale = scale as f32;
    // Batch rows over the thread pool, and their heads within them; each
    // head's product has the shapes the composed ops give it (so the same
    // bits), into a buffer of its own, then copied into its columns.
    out.par_chunks_mut(sq * width)
        .enumerate()
        .for_each(|(bi, o)| {
            let per_head: Vec<Vec<f32>> = (0..heads)
                .into_par_iter()
                .map_init(
                    // Score and probability scratch, one pair per thread.
                    || (vec![0f32; sq * sk], vec![0f32; sq * sk]),
                    |(scores, probs), h| {
                        let i = bi * heads + h;
                        let mut head = vec![0f32; sq * d];
                        single_threaded(|| {
                            sgemm_ld(
                                (&qd[qo.offsets[i]..], qo.transposed, qo.ld),
                                (&kd[ko.offsets[i]..], !ko.transposed, ko.ld),
                                (sq, sk, d),
                                0.0,
                                (uninit(scores), sk),
                            );
                            for (r, (p, s)) in
                                probs.chunks_mut(sk).zip(scores.chunks(sk)).enumerate()
                            {
                                let m0 = (bi * mq + if mq == 1 { 0 } else { r }) * sk;
                                rows::softmax_row(p, s, &m[m0..m0 + sk], scale);
                            }
                            sgemm_ld(
                                (probs, false, sk),
                                (&vd[vo.offsets[i]..], vo.transposed, vo.ld),
                                (sq, d, sk),
                                0.0,
                                (uninit(&mut head), d),
                            );
                        });
                        head
                    },
                )
                .collect();
            for (h, head) in per_head.iter().enumerate() {
                for (row, src) in o.chunks_mut(width).zip(head.chunks(d)) {
                    for (dst, &v) in row[h * d..(h + 1) * d].iter_mut().zip(src) {
                        dst.write(v);
                    }
                }
            }
        });
    // SAFETY: every element was written: each head's columns of every row
    // were copied from its product.
    let out = unsafe {
        let mut out = std::mem::ManuallyDrop::new(out);
        Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity())
    };
    Ok(Some(Tensor::from_vec(out, (b, sq, width), q.device())?))
}

/// An initialised buffer seen as one to be overwritten (same layout).
fn uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's size and alignment, and every f32
    // is a valid MaybeUninit<f32>; the writer only stores f32 values.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// softmax(q k^T * scale + mask) v with candle's own ops, heads merged.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
        let (b, h, s, d) = q.dims4().unwrap();
        let q = q.contiguous().unwrap();
        let kt = k.transpose(2, 3).unwrap().contiguous().unwrap();
        let scores = (q.matmul(&kt).unwrap() * scale).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask).unwrap()).unwrap();
        p.matmul(&v.contiguous().unwrap())
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, s, h * d))
            .unwrap()
    }

    /// Heads as strided views of `[b, s, heads*d]` (as the models make
    /// them) and as contiguous tensors, key masks `[b, 1, 1, k]` and full
    /// masks `[b, 1, q, k]`, one query row and many: the same values as
    /// candle's composed ops. Tracked inputs are declined.
    #[test]
    fn matches_composed_ops() {
        if matmul::cpu_backend() == "candle" {
            eprintln!("no CBLAS library: the fused attention does not apply");
            return;
        }
        let dev = Device::Cpu;
        let (b, h, d, sk) = (3, 4, 8, 11);
        let heads = |s: usize| {
            let x = Tensor::randn(0f32, 1.0, (b, s, h * d), &dev).unwrap();
            x.reshape((b, s, h, d)).unwrap().transpose(1, 2).unwrap()
        };
        for sq in [1, sk] {
            let (q, k, v) = (heads(sq), heads(sk), heads(sk));
            let pad = Tensor::from_vec(
                (0..b * sk)
                    .map(|i| if i % sk >= sk - i / sk { -1e4f32 } else { 0.0 })
                    .collect::<Vec<_>>(),
                (b, 1, 1, sk),
                &dev,
            )
            .unwrap();
            let full = Tensor::randn(0f32, 1.0, (b, 1, sq, sk), &dev).unwrap();
            for mask in [&pad, &full] {
                for contiguous in [false, true] {
                    let c = |t: &Tensor| {
                        if contiguous {
                            t.contiguous().unwrap()
                        } else {
                            t.clone()
                        }
                    };
                    let got = attend(&c(&q), &c(&k), &c(&v), mask, 0.3).unwrap().unwrap();
                    let want = composed(&q, &k, &v, mask, 0.3);
                    assert_eq!(got.dims(), &[b, sq, h * d]);
                    let diff = (got - want)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(diff < 1e-5, "q {sq}, contiguous {contiguous}: {diff}");
                }
            }
        }
        let tracked = Var::from_tensor(&heads(sk).contiguous().unwrap()).unwrap();
        let k = heads(sk);
        let none = attend(
            tracked.as_tensor(),
            &k,
            &k,
            &Tensor::zeros((b, 1, 1, sk), DType::F32, &dev).unwrap(),
            1.0,
        )
        .unwrap();
        assert!(none.is_none());
    }
}
