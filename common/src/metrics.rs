//! Classification metrics from predictions and gold labels, and latency
//! percentiles. Pure functions, no tensors.

use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Scores of a set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    pub per_class: Vec<ClassScores>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Computes all scores; classes without predictions get precision 0
/// (as scikit-learn's `zero_division=0`).
pub fn scores(pred: &[usize], gold: &[usize], labels: &[&str]) -> Scores {
    let k = labels.len();
    let mut confusion = vec![vec![0u64; k]; k];
    for (&p, &g) in pred.iter().zip(gold) {
        confusion[g][p] += 1;
    }
    let n = gold.len();
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    let mut per_class = Vec::with_capacity(k);
    for (c, label) in labels.iter().enumerate() {
        let tp = confusion[c][c] as f64;
        let predicted: u64 = (0..k).map(|g| confusion[g][c]).sum();
        let support: u64 = confusion[c].iter().sum();
        let precision = if predicted == 0 {
            0.0
        } else {
            tp / predicted as f64
        };
        let recall = if support == 0 {
            0.0
        } else {
            tp / support as f64
        };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        per_class.push(ClassScores {
            label: label.to_string(),
            precision,
            recall,
            f1,
            support: support as usize,
        });
    }
    let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / k.max(1) as f64;
    let weighted_f1 = if n == 0 {
        0.0
    } else {
        per_class
            .iter()
            .map(|c| c.f1 * c.support as f64)
            .sum::<f64>()
            / n as f64
    };
    Scores {
        n,
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        macro_f1,
        weighted_f1,
        per_class,
        confusion,
    }
}

/// The `q` quantile (0..=1) of `samples` by the nearest-rank method.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_scores() {
        // gold: 0 0 1 1 1 2 ; pred: 0 1 1 1 2 2
        let s = scores(&[0, 1, 1, 1, 2, 2], &[0, 0, 1, 1, 1, 2], &["a", "b", "c"]);
        assert_eq!(
            s.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 1], vec![0, 0, 1]]
        );
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // class a: p=1 r=.5 f1=2/3 ; b: p=2/3 r=2/3 f1=2/3 ; c: p=.5 r=1 f1=2/3
        for c in &s.per_class {
            assert!((c.f1 - 2.0 / 3.0).abs() < 1e-12, "{c:?}");
        }
        assert!((s.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.weighted_f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn missing_class_gives_zero_not_nan() {
        let s = scores(&[0, 0], &[0, 1], &["a", "b"]);
        assert_eq!(s.per_class[1].precision, 0.0);
        assert_eq!(s.per_class[1].f1, 0.0);
        assert!(s.macro_f1.is_finite());
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&[3.0], 0.95), 3.0);
    }
}
