//! The statistics that compare the arms of a sweep. Runs are compared only
//! within a comparison group (same settings apart from variant, dendrite
//! settings, seed and split seed) and paired on (split seed, training
//! seed). Arms are the sweep's named arms (`[arms.<name>]`), else the
//! variants (`baseline`, `dendritic`, `restart`, `branch`), plus for each
//! arm of dendritic runs "<arm>, mean-ablated" (each dendrite term replaced
//! by its training-split mean: the knock-out the sentences use) and
//! "<arm>, knocked out" (the terms zeroed). Each contrast between two arms gets the paired mean
//! difference with a 95% t interval (test and validation), a sign test
//! over the pairs and McNemar's test on the pooled test predictions; and,
//! because the runs of one split share their sentences, the split-level
//! analysis the verdict rests on: the pairs' differences averaged per
//! split, a t interval and test over the splits, and Holm's adjustment over
//! the contrasts a report shows. The primary contrast (the sweep's
//! `report.primary`, `dendritic - restart` unless named) comes first. Pure.

use std::collections::BTreeMap;

use common::spec::Variant;

use crate::results::ResultsRow;
use crate::stats::{self, McNemar, MeanCi, SignTest};

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// The name of the dendritic arm's knocked-out (zeroed) runs.
pub const KNOCKOUT_ARM: &str = "dendritic, knocked out";

/// The suffix of an arm's knocked-out (dendrite terms zeroed) runs.
pub const KNOCKED_OUT: &str = ", knocked out";

/// The suffix of an arm's mean-ablated runs.
pub const MEAN_ABLATED: &str = ", mean-ablated";

/// The arm a re-scored arm (knock-out or mean ablation) re-scores, and
/// its rank among the re-scorings (1 mean-ablated, 2 knocked out); `None`
/// for an arm with runs of its own.
fn rescored(arm: &str) -> Option<(&str, usize)> {
    arm.strip_suffix(MEAN_ABLATED)
        .map(|b| (b, 1))
        .or_else(|| arm.strip_suffix(KNOCKED_OUT).map(|b| (b, 2)))
}

/// Whether an arm is a re-scoring of another arm's runs (knock-out or
/// mean ablation) rather than runs of its own.
pub fn is_ablation(arm: &str) -> bool {
    rescored(arm).is_some()
}

/// Differences smaller than this count as ties in the sign test (scores
/// are rounded to 6 decimals in `Results.csv`).
const TIE: f64 = 1e-9;

/// One run as an arm sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmRun {
    pub split_seed: u64,
    pub seed: u64,
    pub test_f1: f64,
    pub test_acc: f64,
    pub val_f1: f64,
    pub val_acc: f64,
    /// Gold labels and predictions of the test split (empty when unknown).
    pub gold: Vec<usize>,
    pub predictions: Vec<usize>,
}

/// What the comparison needs of one finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunScores {
    pub row: ResultsRow,
    pub test_labels: Vec<usize>,
    pub test_predictions: Vec<usize>,
    pub knockout_predictions: Option<Vec<usize>>,
    pub mean_ablated_predictions: Option<Vec<usize>>,
    /// The sweep's primary contrast (A, B), when it names one.
    pub primary: Option<(String, String)>,
}

impl RunScores {
    fn arm_run(&self) -> ArmRun {
        let r = &self.row;
        ArmRun {
            split_seed: r.split_seed,
            seed: r.seed,
            test_f1: r.macro_f1,
            test_acc: r.accuracy,
            val_f1: r.val_macro_f1,
            val_acc: r.val_accuracy,
            gold: self.test_labels.clone(),
            predictions: self.test_predictions.clone(),
        }
    }

    fn knockout_run(&self) -> Option<ArmRun> {
        let r = &self.row;
        Some(ArmRun {
            test_f1: r.knockout_macro_f1?,
            test_acc: r.knockout_accuracy?,
            val_f1: r.knockout_val_macro_f1.unwrap_or(f64::NAN),
            val_acc: r.knockout_val_accuracy.unwrap_or(f64::NAN),
            predictions: self.knockout_predictions.clone().unwrap_or_default(),
            ..self.arm_run()
        })
    }

    fn mean_ablated_run(&self) -> Option<ArmRun> {
        let r = &self.row;
        Some(ArmRun {
            test_f1: r.mean_ablated_macro_f1?,
            test_acc: r.mean_ablated_accuracy?,
            val_f1: r.mean_ablated_val_macro_f1.unwrap_or(f64::NAN),
            val_acc: r.mean_ablated_val_accuracy.unwrap_or(f64::NAN),
            predictions: self.mean_ablated_predictions.clone().unwrap_or_default(),
            ..self.arm_run()
        })
    }
}

/// Statistics of one arm within a group: (mean, sd) per column.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmStats {
    pub arm: String,
    /// (split seed, seed) of each run, sorted.
    pub pairs: Vec<(u64, u64)>,
    pub test_f1: (f64, f64),
    pub test_acc: (f64, f64),
    pub val_f1: (f64, f64),
    pub val_acc: (f64, f64),
    /// Mean 95% interval of the test macro-F1 over runs.
    pub test_f1_ci: MeanCi,
    pub trainable_params: f64,
    pub dendrites: f64,
    pub dendrite_params: f64,
    pub epochs: f64,
    pub train_seconds: f64,
    /// Per-run values in pair order.
    pub test_f1_values: Vec<f64>,
    pub test_acc_values: Vec<f64>,
}

/// The paired difference A − B on one (split seed, seed) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairDiff {
    pub split_seed: u64,
    pub seed: u64,
    pub test_f1: f64,
    pub test_acc: f64,
    pub val_f1: f64,
    pub val_acc: f64,
}

/// Arm A against arm B on their common pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Contrast {
    pub a: String,
    pub b: String,
    /// The contrast the experiment is about (`report.primary`).
    pub headline: bool,
    pub pairs: Vec<PairDiff>,
    pub test_f1: MeanCi,
    pub test_acc: MeanCi,
    pub val_f1: MeanCi,
    pub val_acc: MeanCi,
    /// Over the pairs' test macro-F1 differences.
    pub sign: SignTest,
    /// On the pooled test predictions (when every pair has them). Pairs of
    /// one split share their test sentences, so the pooled counts are not
    /// independent and this p-value is optimistic; the sign test over
    /// pairs is the conservative one.
    pub mcnemar: Option<McNemar>,
    /// Test sentences per pair (the split's test size).
    pub test_sentences: usize,
    /// Over the splits: each split's mean test macro-F1 difference (its
    /// seeds averaged), with the t interval over splits.
    pub splits: MeanCi,
    /// Two-sided t test of the split means against zero.
    pub split_p: f64,
    /// `split_p` after Holm's adjustment over the group's contrasts.
    pub holm_p: f64,
}

impl Contrast {
    /// The label "A − B".
    pub fn label(&self) -> String {
        format!("{} − {}", self.a, self.b)
    }

    /// Whether the 95% interval of the test macro-F1 difference excludes zero.
    pub fn detected(&self) -> bool {
        self.test_f1.excludes_zero()
    }
}

/// The comparison of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    pub group: String,
    pub model: String,
    /// Baseline, dendritic, gated-linear, restart, branch, other named
    /// arms, then the re-scored arms (those present).
    pub arms: Vec<ArmStats>,
    pub contrasts: Vec<Contrast>,
}

fn arm_order(arm: &str) -> (usize, usize, String) {
    let (base, rescored) = rescored(arm).unwrap_or((arm, 0));
    let rank = match base {
        "baseline" => 0,
        "dendritic" => 1,
        "gated-linear" => 2,
        "restart" => 3,
        "branch" => 4,
        _ => 5,
    };
    (rescored, rank, base.to_string())
}

fn arm_stats(arm: &str, runs: &[(&ArmRun, &ResultsRow)]) -> ArmStats {
    let col = |f: fn(&ArmRun) -> f64| -> Vec<f64> { runs.iter().map(|(r, _)| f(r)).collect() };
    let row_mean = |f: fn(&ResultsRow) -> f64| -> f64 {
        mean_sd(&runs.iter().map(|(_, r)| f(r)).collect::<Vec<_>>()).0
    };
    let test_f1_values = col(|r| r.test_f1);
    ArmStats {
        arm: arm.to_string(),
        pairs: runs.iter().map(|(r, _)| (r.split_seed, r.seed)).collect(),
        test_f1: mean_sd(&test_f1_values),
        test_acc: mean_sd(&col(|r| r.test_acc)),
        val_f1: mean_sd(&col(|r| r.val_f1)),
        val_acc: mean_sd(&col(|r| r.val_acc)),
        test_f1_ci: stats::mean_ci(&test_f1_values),
        trainable_params: row_mean(|r| r.trainable_params as f64),
        dendrites: row_mean(|r| r.dendrites as f64),
        dendrite_params: row_mean(|r| r.dendrite_params as f64),
        epochs: row_mean(|r| r.epochs as f64),
        train_seconds: row_mean(|r| r.train_seconds),
        test_acc_values: col(|r| r.test_acc),
        test_f1_values,
    }
}

type ArmRuns = BTreeMap<(u64, u64), ArmRun>;

/// An arm's runs by (split seed, seed), each with its `Results.csv` row.
type ArmRows<'a> = BTreeMap<(u64, u64), (ArmRun, &'a ResultsRow)>;

fn contrast(a: &str, b: &str, ra: &ArmRuns, rb: &ArmRuns) -> Option<Contrast> {
    let common: Vec<(&ArmRun, &ArmRun)> = ra
        .iter()
        .filter_map(|(k, x)| rb.get(k).map(|y| (x, y)))
        .collect();
    if common.is_empty() {
        return None;
    }
    let pairs: Vec<PairDiff> = common
        .iter()
        .map(|(x, y)| PairDiff {
            split_seed: x.split_seed,
            seed: x.seed,
            test_f1: x.test_f1 - y.test_f1,
            test_acc: x.test_acc - y.test_acc,
            val_f1: x.val_f1 - y.val_f1,
            val_acc: x.val_acc - y.val_acc,
        })
        .collect();
    let col = |f: fn(&PairDiff) -> f64| -> Vec<f64> { pairs.iter().map(f).collect() };
    let mut by_split: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for p in &pairs {
        by_split.entry(p.split_seed).or_default().push(p.test_f1);
    }
    let split_means: Vec<f64> = by_split.values().map(|v| mean_sd(v).0).collect();
    let with_predictions = common.iter().all(|(x, y)| {
        !x.gold.is_empty()
            && x.gold == y.gold
            && x.predictions.len() == x.gold.len()
            && y.predictions.len() == x.gold.len()
    });
    let mcnemar = with_predictions.then(|| {
        let sets: Vec<(&[usize], &[usize], &[usize])> = common
            .iter()
            .map(|(x, y)| {
                (
                    x.gold.as_slice(),
                    x.predictions.as_slice(),
                    y.predictions.as_slice(),
                )
            })
            .collect();
        stats::mcnemar(&sets)
    });
    Some(Contrast {
        a: a.to_string(),
        b: b.to_string(),
        headline: false,
        test_f1: stats::mean_ci(&col(|p| p.test_f1)),
        test_acc: stats::mean_ci(&col(|p| p.test_acc)),
        val_f1: stats::mean_ci(&col(|p| p.val_f1)),
        val_acc: stats::mean_ci(&col(|p| p.val_acc)),
        sign: stats::sign_test(&col(|p| p.test_f1), TIE),
        mcnemar,
        test_sentences: common[0].0.gold.len(),
        splits: stats::mean_ci(&split_means),
        split_p: stats::t_test_p(&split_means),
        holm_p: f64::NAN,
        pairs,
    })
}

/// The primary contrast unless a sweep names another.
pub const DEFAULT_PRIMARY: (&str, &str) = ("dendritic", "restart");

/// The contrasts between arms of their own computed when both arms are
/// present (the primary one moved first); each arm with dendrite terms is
/// then compared with its mean-ablated and its knocked-out re-scoring.
const CONTRASTS: [(&str, &str); 7] = [
    ("dendritic", "restart"),
    ("dendritic", "branch"),
    ("dendritic", "gated-linear"),
    ("gated-linear", "branch"),
    ("branch", "restart"),
    ("dendritic", "baseline"),
    ("restart", "baseline"),
];

/// Groups runs, computes per-arm statistics and the paired contrasts, the
/// group's primary contrast first (`primary` of its runs, else
/// [`DEFAULT_PRIMARY`]), with Holm's adjustment over the group's contrasts.
pub fn summarize(runs: &[RunScores]) -> Vec<GroupSummary> {
    let mut groups: BTreeMap<&str, Vec<&RunScores>> = BTreeMap::new();
    for r in runs {
        groups.entry(&r.row.comparison_group).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(group, rs)| {
            // arm -> pair -> (run, row)
            let mut arms: BTreeMap<String, ArmRows> = BTreeMap::new();
            for r in &rs {
                let run = r.arm_run();
                let key = (run.split_seed, run.seed);
                let arm = r.row.arm_name();
                if r.row.variant == Variant::Dendritic {
                    if let Some(m) = r.mean_ablated_run() {
                        arms.entry(format!("{arm}{MEAN_ABLATED}"))
                            .or_default()
                            .insert(key, (m, &r.row));
                    }
                    if let Some(k) = r.knockout_run() {
                        arms.entry(format!("{arm}{KNOCKED_OUT}"))
                            .or_default()
                            .insert(key, (k, &r.row));
                    }
                }
                arms.entry(arm).or_default().insert(key, (run, &r.row));
            }
            let mut stats: Vec<ArmStats> = arms
                .iter()
                .map(|(arm, m)| {
                    let v: Vec<(&ArmRun, &ResultsRow)> = m.values().map(|(a, r)| (a, *r)).collect();
                    arm_stats(arm, &v)
                })
                .collect();
            stats.sort_by_key(|a| arm_order(&a.arm));
            let by_arm: BTreeMap<&str, ArmRuns> = arms
                .iter()
                .map(|(arm, m)| {
                    (
                        arm.as_str(),
                        m.iter().map(|(k, (a, _))| (*k, a.clone())).collect(),
                    )
                })
                .collect();
            let primary = rs
                .iter()
                .find_map(|r| r.primary.clone())
                .unwrap_or((DEFAULT_PRIMARY.0.into(), DEFAULT_PRIMARY.1.into()));
            let first = (primary.0.as_str(), primary.1.as_str());
            let mut order: Vec<(&str, &str)> = vec![first];
            order.extend(CONTRASTS.iter().copied().filter(|c| *c != first));
            order.extend(
                stats
                    .iter()
                    .filter_map(|a| rescored(&a.arm).map(|(base, _)| (base, a.arm.as_str())))
                    .filter(|c| *c != first),
            );
            let mut contrasts: Vec<Contrast> = order
                .iter()
                .filter_map(|(a, b)| contrast(a, b, by_arm.get(a)?, by_arm.get(b)?))
                .collect();
            if let Some(c) = contrasts.first_mut() {
                c.headline = (c.a.as_str(), c.b.as_str()) == order[0];
            }
            let adjusted = stats::holm(&contrasts.iter().map(|c| c.split_p).collect::<Vec<_>>());
            for (c, p) in contrasts.iter_mut().zip(adjusted) {
                c.holm_p = p;
            }
            GroupSummary {
                group: group.to_string(),
                model: rs[0].row.model.clone(),
                arms: stats,
                contrasts,
            }
        })
        .collect()
}

/// A signed difference in points of a metric in [0, 1], e.g. "+0.31".
fn points(x: f64) -> String {
    format!("{:+.2}", x * 100.0)
}

/// The contrast in plain sentences: effect, interval, sign test, McNemar
/// and the validation difference beside it.
pub fn sentences(c: &Contrast) -> String {
    let t = &c.test_f1;
    let mut s = format!(
        "{a} − {b}: over {n} pair(s), test macro-F1 differs by {m} points on average",
        a = c.a,
        b = c.b,
        n = t.n,
        m = points(t.mean)
    );
    if t.lo.is_finite() {
        s.push_str(&format!(" (95% CI {} to {})", points(t.lo), points(t.hi)));
        if c.detected() {
            let side = if t.mean > 0.0 { "higher" } else { "lower" };
            s.push_str(&format!(
                ": the interval excludes zero, {} scores {side} than {}.",
                c.a, c.b
            ));
        } else {
            s.push_str(": the interval includes zero, no difference is detected at this size.");
        }
    } else {
        s.push_str(" (one pair: no interval).");
    }
    s.push_str(&format!(
        " {} was higher on {} pair(s), lower on {}, tied on {} (sign test p {}).",
        c.a,
        c.sign.higher,
        c.sign.lower,
        c.sign.tied,
        stats::format_p(c.sign.p)
    ));
    let acc_sentences = c.test_acc.mean * c.test_sentences as f64;
    s.push_str(&format!(
        " Test accuracy differs by {} points, about {:+.1} of {} test sentences per pair.",
        points(c.test_acc.mean),
        acc_sentences,
        c.test_sentences
    ));
    let sp = &c.splits;
    if sp.lo.is_finite() {
        s.push_str(&format!(
            " By split (the seeds of a split averaged: the unit the verdict rests on), over {} split(s): {} points (95% CI {} to {}), t test p {}, Holm-adjusted p {} over the contrasts shown.",
            sp.n,
            points(sp.mean),
            points(sp.lo),
            points(sp.hi),
            stats::format_p(c.split_p),
            stats::format_p(c.holm_p)
        ));
    } else {
        s.push_str(&format!(
            " {} split(s): too few for a split-level test.",
            sp.n
        ));
    }
    if let Some(m) = &c.mcnemar {
        s.push_str(&format!(
            " Pooled over the pairs (sentences of one split counted once per seed, so not independent), {} test sentence(s) were right only under {} and {} only under {} (McNemar exact p {}).",
            m.only_a,
            c.a,
            m.only_b,
            c.b,
            stats::format_p(m.p)
        ));
    }
    if c.val_f1.mean.is_finite() {
        s.push_str(&format!(
            " On validation (the split that selected the epoch) the macro-F1 difference is {} points",
            points(c.val_f1.mean)
        ));
        if c.val_f1.lo.is_finite() {
            s.push_str(&format!(
                " (95% CI {} to {})",
                points(c.val_f1.lo),
                points(c.val_f1.hi)
            ));
        }
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::row;

    /// A run of `variant` on a pair with test macro-F1 `f1` (accuracy
    /// `f1 + 0.05`), predictions right on the first `right` of 100 sentences.
    fn run(variant: Variant, split: u64, seed: u64, f1: f64, right: usize) -> RunScores {
        let mut r = row(
            &format!("{variant}-{split}-{seed}"),
            variant,
            seed,
            "g",
            f1 + 0.05,
        );
        r.split_seed = split;
        r.macro_f1 = f1;
        r.val_macro_f1 = f1;
        r.val_accuracy = f1 + 0.05;
        r.knockout_macro_f1 = None;
        r.knockout_accuracy = None;
        r.mean_ablated_macro_f1 = None;
        r.mean_ablated_accuracy = None;
        let gold = vec![1usize; 100];
        let predictions = (0..100).map(|i| usize::from(i < right)).collect();
        RunScores {
            row: r,
            test_labels: gold,
            test_predictions: predictions,
            knockout_predictions: None,
            mean_ablated_predictions: None,
            primary: None,
        }
    }

    /// Noise from a fixed sequence: mean +0.00044, sd 0.0031 (a null
    /// effect's sample mean is never exactly zero).
    const NOISE: [f64; 9] = [
        0.004, -0.003, 0.002, -0.005, 0.001, 0.003, -0.002, 0.0, 0.004,
    ];

    fn experiment(effect: f64) -> Vec<RunScores> {
        let mut v = Vec::new();
        for split in 0..3u64 {
            for seed in 0..3u64 {
                let i = (split * 3 + seed) as usize;
                let base = 0.80 + 0.01 * split as f64 + 0.002 * seed as f64;
                v.push(run(Variant::Restart, split, seed, base, 80));
                v.push(run(
                    Variant::Dendritic,
                    split,
                    seed,
                    base + effect + NOISE[i],
                    80 + (effect * 100.0).round() as usize,
                ));
                v.push(run(Variant::Baseline, split, seed, base - 0.001, 80));
            }
        }
        v
    }

    #[test]
    fn a_synthetic_effect_is_detected() {
        let g = summarize(&experiment(0.02));
        assert_eq!(g.len(), 1, "split seeds share one group");
        let c = &g[0].contrasts[0];
        assert_eq!(
            (c.a.as_str(), c.b.as_str(), c.headline),
            ("dendritic", "restart", true)
        );
        assert_eq!(c.pairs.len(), 9);
        assert!((c.test_f1.mean - 0.02044).abs() < 1e-5, "{:?}", c.test_f1);
        assert!(c.detected(), "{:?}", c.test_f1);
        assert_eq!((c.sign.higher, c.sign.lower), (9, 0));
        assert!(c.sign.p < 0.01);
        let m = c.mcnemar.unwrap();
        assert_eq!((m.only_a, m.only_b, m.n), (18, 0, 900));
        assert!(m.p < 0.001);
        let text = sentences(c);
        assert!(text.contains("+2.04 points on average"), "{text}");
        assert!(
            text.contains("excludes zero, dendritic scores higher than restart"),
            "{text}"
        );
    }

    #[test]
    fn the_named_primary_comes_first_and_splits_are_the_unit() {
        let mut runs = experiment(0.02);
        for r in &mut runs {
            r.primary = Some(("dendritic".into(), "baseline".into()));
        }
        let g = &summarize(&runs)[0];
        let labels: Vec<(&str, &str, bool)> = g
            .contrasts
            .iter()
            .map(|c| (c.a.as_str(), c.b.as_str(), c.headline))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("dendritic", "baseline", true),
                ("dendritic", "restart", false),
                ("restart", "baseline", false)
            ]
        );
        // dendritic - restart by split: 0.02 plus each split's mean noise
        // (+0.001, -0.000333, +0.000667): three values, not nine pairs.
        let c = &g.contrasts[1];
        assert_eq!(c.splits.n, 3);
        assert!((c.splits.mean - 0.020_444).abs() < 1e-5, "{:?}", c.splits);
        let want = stats::t_test_p(&[0.021, 0.020 - 0.000_333_333, 0.020_666_667]);
        assert!((c.split_p - want).abs() < 1e-6, "{} {want}", c.split_p);
        // Holm over the three contrasts shown: never below the raw p, and
        // the smallest raw p times three.
        let raw: Vec<f64> = g.contrasts.iter().map(|c| c.split_p).collect();
        let adjusted: Vec<f64> = g.contrasts.iter().map(|c| c.holm_p).collect();
        assert_eq!(adjusted, stats::holm(&raw));
        let min = raw.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(adjusted
            .iter()
            .any(|p| (p - (3.0 * min).min(1.0)).abs() < 1e-12));
        assert!(sentences(c).contains("over 3 split(s)"), "{}", sentences(c));
    }

    #[test]
    fn a_null_effect_is_not_detected() {
        let g = summarize(&experiment(0.0));
        let c = &g[0].contrasts[0];
        assert!((c.test_f1.mean - 0.00044).abs() < 1e-5);
        assert!(!c.detected(), "{:?}", c.test_f1);
        assert!(c.test_f1.lo < 0.0 && c.test_f1.hi > 0.0);
        assert!(c.sign.p > 0.5);
        assert_eq!(c.mcnemar.unwrap().p, 1.0);
        assert!(sentences(c).contains("no difference is detected"));
    }

    #[test]
    fn arms_contrasts_and_knockout() {
        let mut runs = experiment(0.01);
        for r in runs
            .iter_mut()
            .filter(|r| r.row.variant == Variant::Dendritic)
        {
            r.row.knockout_macro_f1 = Some(r.row.macro_f1 - 0.01);
            r.row.knockout_accuracy = Some(r.row.accuracy - 0.01);
            r.knockout_predictions = Some(r.test_predictions.clone());
            r.row.mean_ablated_macro_f1 = Some(r.row.macro_f1 - 0.004);
            r.row.mean_ablated_accuracy = Some(r.row.accuracy - 0.004);
        }
        let g = &summarize(&runs)[0];
        let arms: Vec<&str> = g.arms.iter().map(|a| a.arm.as_str()).collect();
        assert_eq!(
            arms,
            [
                "baseline",
                "dendritic",
                "restart",
                "dendritic, mean-ablated",
                KNOCKOUT_ARM
            ]
        );
        let labels: Vec<String> = g.contrasts.iter().map(|c| c.label()).collect();
        assert_eq!(
            labels,
            [
                "dendritic − restart",
                "dendritic − baseline",
                "restart − baseline",
                "dendritic − dendritic, mean-ablated",
                "dendritic − dendritic, knocked out"
            ]
        );
        assert!((g.contrasts[3].test_f1.mean - 0.004).abs() < 1e-9);
        let ko = &g.contrasts[4];
        assert!((ko.test_f1.mean - 0.01).abs() < 1e-9);
        assert_eq!(ko.mcnemar.unwrap().only_a + ko.mcnemar.unwrap().only_b, 0);
        let rb = &g.contrasts[2];
        assert!((rb.test_f1.mean - 0.001).abs() < 1e-9);
        assert_eq!(g.arms[0].pairs.len(), 9);
    }

    /// Named arms count by name, not variant: two dendritic-variant arms
    /// are two arms, each with its own re-scored arms, in the fixed order.
    #[test]
    fn named_arms_are_compared_by_name() {
        let mut runs = experiment(0.01);
        let gated: Vec<RunScores> = runs
            .iter()
            .filter(|r| r.row.variant == Variant::Dendritic)
            .map(|r| {
                let mut g = r.clone();
                g.row.arm = "gated-linear".into();
                g.row.macro_f1 -= 0.003;
                g.row.mean_ablated_macro_f1 = Some(g.row.macro_f1 - 0.002);
                g.row.mean_ablated_accuracy = Some(g.row.accuracy);
                g.primary = Some(("dendritic".into(), "gated-linear".into()));
                g
            })
            .collect();
        runs.extend(gated);
        let g = &summarize(&runs)[0];
        let arms: Vec<&str> = g.arms.iter().map(|a| a.arm.as_str()).collect();
        assert_eq!(
            arms,
            [
                "baseline",
                "dendritic",
                "gated-linear",
                "restart",
                "gated-linear, mean-ablated"
            ]
        );
        let labels: Vec<String> = g.contrasts.iter().map(|c| c.label()).collect();
        assert_eq!(
            labels,
            [
                "dendritic − gated-linear",
                "dendritic − restart",
                "dendritic − baseline",
                "restart − baseline",
                "gated-linear − gated-linear, mean-ablated"
            ]
        );
        assert!((g.contrasts[0].test_f1.mean - 0.003).abs() < 1e-9);
        assert!((g.contrasts[4].test_f1.mean - 0.002).abs() < 1e-9);
    }

    #[test]
    fn single_value_has_zero_sd() {
        assert_eq!(mean_sd(&[0.5]), (0.5, 0.0));
        assert!(mean_sd(&[]).0.is_nan());
    }
}
