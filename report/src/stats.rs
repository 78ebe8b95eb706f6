//! Paired statistics for comparing two arms of an experiment on the same
//! (split seed, training seed) pairs: the mean difference with a t-based
//! 95% confidence interval, an exact sign test over the pairs, and an exact
//! McNemar test on pooled per-sentence test predictions. Pure.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, StudentsT};

/// Mean of paired differences with a two-sided 95% t interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanCi {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation of the differences (0 for n = 1).
    pub sd: f64,
    /// 95% interval bounds (NaN below two pairs).
    pub lo: f64,
    pub hi: f64,
}

impl MeanCi {
    /// Whether the interval lies entirely on one side of zero.
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

/// Mean, sd and 95% t interval of `d` (NaN values are ignored).
pub fn mean_ci(d: &[f64]) -> MeanCi {
    let v: Vec<f64> = d.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return MeanCi {
            n,
            mean: f64::NAN,
            sd: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return MeanCi {
            n,
            mean,
            sd: 0.0,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .expect("n - 1 >= 1 degrees of freedom")
        .inverse_cdf(0.975);
    let half = t * sd / (n as f64).sqrt();
    MeanCi {
        n,
        mean,
        sd,
        lo: mean - half,
        hi: mean + half,
    }
}

/// Two-sided p-value of the one-sample t test of mean zero (NaN below two
/// values; 0 when every value is the same non-zero number).
pub fn t_test_p(d: &[f64]) -> f64 {
    let c = mean_ci(d);
    if c.n < 2 {
        return f64::NAN;
    }
    if c.sd == 0.0 {
        return if c.mean == 0.0 { 1.0 } else { 0.0 };
    }
    let t = c.mean / (c.sd / (c.n as f64).sqrt());
    let dist = StudentsT::new(0.0, 1.0, (c.n - 1) as f64).expect("n - 1 >= 1 degrees of freedom");
    (2.0 * (1.0 - dist.cdf(t.abs()))).min(1.0)
}

/// Holm's step-down adjustment of `p` (same order; NaN stays NaN and is
/// not counted among the tests).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_finite()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let m = idx.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running = 0.0_f64;
    for (rank, &i) in idx.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// Two-sided exact binomial p-value of `k` successes out of `n` at p = 1/2.
pub fn binomial_two_sided(k: u64, n: u64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let b = Binomial::new(0.5, n).expect("p = 0.5 is valid");
    let low = k.min(n - k);
    (2.0 * b.cdf(low)).min(1.0_f64)
}

/// Sign test over paired differences: ties (|d| < `tie`) are dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignTest {
    pub higher: usize,
    pub lower: usize,
    pub tied: usize,
    pub p: f64,
}

pub fn sign_test(d: &[f64], tie: f64) -> SignTest {
    let higher = d.iter().filter(|x| **x >= tie).count();
    let lower = d.iter().filter(|x| **x <= -tie).count();
    let tied = d.iter().filter(|x| x.is_finite()).count() - higher - lower;
    SignTest {
        higher,
        lower,
        tied,
        p: binomial_two_sided(higher as u64, (higher + lower) as u64),
    }
}

/// McNemar's exact test on pooled paired predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McNemar {
    /// Sentences right under A and wrong under B.
    pub only_a: usize,
    /// Sentences right under B and wrong under A.
    pub only_b: usize,
    /// Sentences compared (pooled over pairs).
    pub n: usize,
    pub p: f64,
}

/// `pairs`: for each (split seed, seed) pair, gold labels and A's and B's
/// predictions of the same test sentences.
pub fn mcnemar(pairs: &[(&[usize], &[usize], &[usize])]) -> McNemar {
    let (mut only_a, mut only_b, mut n) = (0, 0, 0);
    for (gold, a, b) in pairs {
        for ((g, x), y) in gold.iter().zip(a.iter()).zip(b.iter()) {
            n += 1;
            match (x == g, y == g) {
                (true, false) => only_a += 1,
                (false, true) => only_b += 1,
                _ => {}
            }
        }
    }
    McNemar {
        only_a,
        only_b,
        n,
        p: binomial_two_sided(only_a as u64, (only_a + only_b) as u64),
    }
}

/// A p-value as people read it: two decimals, three below 0.01, "< 0.001"
/// below that.
pub fn format_p(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < 0.001 {
        "< 0.001".into()
    } else if p < 0.01 {
        format!("= {p:.3}")
    } else {
        format!("= {:.2}", p).replace("= 1.00", "= 1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_interval_matches_the_table() {
        // n = 9, t(0.975, 8) = 2.306.
        let d = [0.01, 0.02, 0.0, 0.03, 0.01, 0.02, 0.015, 0.025, 0.005];
        let c = mean_ci(&d);
        assert_eq!(c.n, 9);
        assert!((c.mean - 0.015).abs() < 1e-12);
        let half = 2.306004 * c.sd / 3.0;
        assert!((c.hi - c.mean - half).abs() < 1e-6, "{c:?}");
        assert!(c.excludes_zero());
        assert!(mean_ci(&[0.1]).lo.is_nan());
        assert!(mean_ci(&[]).mean.is_nan());
    }

    #[test]
    fn exact_binomial_p_values() {
        // 9 of 9 the same way: 2 * 0.5^9.
        assert!((binomial_two_sided(9, 9) - 2.0 / 512.0).abs() < 1e-12);
        assert!((binomial_two_sided(0, 9) - 2.0 / 512.0).abs() < 1e-12);
        // 5 of 9: the whole distribution, capped at 1.
        assert_eq!(binomial_two_sided(5, 9), 1.0);
        assert_eq!(binomial_two_sided(0, 0), 1.0);
        // 2 of 10: 2 * (1 + 10 + 45) / 1024.
        assert!((binomial_two_sided(2, 10) - 112.0 / 1024.0).abs() < 1e-12);
    }

    #[test]
    fn sign_test_drops_ties() {
        let s = sign_test(&[0.01, -0.02, 0.0, 0.03, 1e-12], 1e-9);
        assert_eq!((s.higher, s.lower, s.tied), (2, 1, 2));
        assert_eq!(s.p, 1.0);
    }

    #[test]
    fn t_test_matches_a_known_value() {
        // d = [1, 2, 3, 4]: mean 2.5, sd 1.291, t = 3.873 on 3 df, p = 0.0305.
        let p = t_test_p(&[1.0, 2.0, 3.0, 4.0]);
        assert!((p - 0.030_466).abs() < 1e-4, "{p}");
        assert!(t_test_p(&[1.0]).is_nan());
        assert_eq!(t_test_p(&[0.0, 0.0]), 1.0);
    }

    #[test]
    fn holm_adjusts_step_down_and_keeps_order() {
        // Sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (monotone).
        let a = holm(&[0.04, 0.01, 0.02, f64::NAN]);
        let want = [0.04, 0.03, 0.04];
        for (x, w) in a.iter().zip(want) {
            assert!((x - w).abs() < 1e-12, "{a:?}");
        }
        assert!(a[3].is_nan());
        assert_eq!(holm(&[0.6, 0.7]), vec![1.0, 1.0]);
    }

    #[test]
    fn mcnemar_counts_discordant_sentences() {
        let gold = [0usize, 1, 2, 1, 0];
        let a = [0usize, 1, 2, 0, 1];
        let b = [0usize, 0, 1, 1, 1];
        let m = mcnemar(&[(&gold, &a, &b)]);
        assert_eq!((m.only_a, m.only_b, m.n), (2, 1, 5));
        assert_eq!(m.p, 1.0);
    }

    #[test]
    fn p_values_read_plainly() {
        assert_eq!(format_p(0.0004), "< 0.001");
        assert_eq!(format_p(0.0312), "= 0.03");
        assert_eq!(format_p(0.0039), "= 0.004");
        assert_eq!(format_p(1.0), "= 1");
    }
}
