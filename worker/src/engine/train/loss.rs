//! The training objective: cross-entropy with balanced class weights, as
//! PyTorch computes it.

use candle_core::{Result, Tensor};

/// Balanced class weights `n / (k * count_c)` (scikit-learn's "balanced").
pub fn balanced_weights(labels: &[usize], classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l] += 1;
    }
    let n = labels.len() as f64;
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (classes as f64 * c as f64)
            }
        })
        .collect()
}

/// Weighted cross-entropy with PyTorch's semantics:
/// `sum_i w[y_i] * nll_i / sum_i w[y_i]`. `logits`: `[b, k]` f32.
pub fn cross_entropy(logits: &Tensor, labels: &[usize], weights: Option<&[f64]>) -> Result<Tensor> {
    let (b, _) = logits.dims2()?;
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let idx = Tensor::from_vec(
        labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        (b, 1),
        logits.device(),
    )?;
    let picked = logp.gather(&idx, 1)?.squeeze(1)?; // [b]
    let w: Vec<f32> = labels
        .iter()
        .map(|&l| weights.map_or(1.0, |w| w[l] as f32))
        .collect();
    let total: f32 = w.iter().sum();
    let w = Tensor::from_vec(w, b, logits.device())?;
    (picked * w)?.sum_all()? * (-1.0 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn balanced_weights_as_sklearn() {
        let w = balanced_weights(&[0, 1, 1, 1, 2, 2], 3);
        assert!((w[0] - 2.0).abs() < 1e-12);
        assert!((w[1] - 2.0 / 3.0).abs() < 1e-12);
        assert!((w[2] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn weighted_cross_entropy_matches_formula() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &dev).unwrap();
        let w = [0.5, 1.0, 2.0];
        let got = cross_entropy(&logits, &[1, 0], Some(&w))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        let nll0 = lse([1.0, 2.0, 0.5]) - 2.0;
        let nll1 = lse([0.0, 0.0, 3.0]) - 0.0;
        let want = (1.0 * nll0 + 0.5 * nll1) / 1.5;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
