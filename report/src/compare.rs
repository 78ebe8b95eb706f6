//! The statistics that compare the runs of a sweep: mean and standard
//! deviation per variant, and paired dendritic-minus-baseline differences
//! on the same seeds. Runs are compared only within a comparison group
//! (same settings apart from variant, dendrites and seed). Pure.

use std::collections::BTreeMap;

use common::spec::Variant;

use crate::results::ResultsRow;

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

/// Statistics of one variant within a group: (mean, sd) per column.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantStats {
    pub variant: Variant,
    pub seeds: Vec<u64>,
    pub accuracy: (f64, f64),
    pub macro_f1: (f64, f64),
    pub weighted_f1: (f64, f64),
    pub total_params: (f64, f64),
    pub trainable_params: (f64, f64),
    pub dendrites: (f64, f64),
    pub dendrite_params: (f64, f64),
    pub epochs: (f64, f64),
    pub train_seconds: (f64, f64),
    /// Per-seed values, in seed order.
    pub accuracy_values: Vec<f64>,
    pub macro_f1_values: Vec<f64>,
}

impl VariantStats {
    fn of(variant: Variant, mut rows: Vec<&ResultsRow>) -> Self {
        rows.sort_by_key(|r| r.seed);
        let col = |f: fn(&ResultsRow) -> f64| -> Vec<f64> { rows.iter().map(|r| f(r)).collect() };
        VariantStats {
            variant,
            seeds: rows.iter().map(|r| r.seed).collect(),
            accuracy: mean_sd(&col(|r| r.accuracy)),
            macro_f1: mean_sd(&col(|r| r.macro_f1)),
            weighted_f1: mean_sd(&col(|r| r.weighted_f1)),
            total_params: mean_sd(&col(|r| r.total_params as f64)),
            trainable_params: mean_sd(&col(|r| r.trainable_params as f64)),
            dendrites: mean_sd(&col(|r| r.dendrites as f64)),
            dendrite_params: mean_sd(&col(|r| r.dendrite_params as f64)),
            epochs: mean_sd(&col(|r| r.epochs as f64)),
            train_seconds: mean_sd(&col(|r| r.train_seconds)),
            accuracy_values: col(|r| r.accuracy),
            macro_f1_values: col(|r| r.macro_f1),
        }
    }
}

/// Dendritic minus baseline on one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedDiff {
    pub seed: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// The comparison of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    pub group: String,
    pub model: String,
    /// Baseline first.
    pub variants: Vec<VariantStats>,
    /// In seed order.
    pub paired: Vec<PairedDiff>,
}

impl GroupSummary {
    /// Mean and sd of the paired accuracy and macro-F1 differences.
    pub fn paired_stats(&self) -> ((f64, f64), (f64, f64)) {
        let a: Vec<f64> = self.paired.iter().map(|p| p.accuracy).collect();
        let f: Vec<f64> = self.paired.iter().map(|p| p.macro_f1).collect();
        (mean_sd(&a), mean_sd(&f))
    }
}

/// Groups rows and computes per-variant statistics and paired differences.
pub fn summarize(rows: &[ResultsRow]) -> Vec<GroupSummary> {
    let mut groups: BTreeMap<&str, Vec<&ResultsRow>> = BTreeMap::new();
    for r in rows {
        groups.entry(&r.comparison_group).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(group, rs)| {
            let mut by_variant: BTreeMap<String, (Variant, Vec<&ResultsRow>)> = BTreeMap::new();
            for r in &rs {
                by_variant
                    .entry(r.variant.to_string())
                    .or_insert_with(|| (r.variant, Vec::new()))
                    .1
                    .push(r);
            }
            let mut variants: Vec<VariantStats> = by_variant
                .into_values()
                .map(|(v, rows)| VariantStats::of(v, rows))
                .collect();
            variants.sort_by_key(|v| (v.variant != Variant::Baseline, v.variant.to_string()));
            let base: BTreeMap<u64, &ResultsRow> = rs
                .iter()
                .filter(|r| r.variant == Variant::Baseline)
                .map(|r| (r.seed, *r))
                .collect();
            let mut paired: Vec<PairedDiff> = rs
                .iter()
                .filter(|r| r.variant == Variant::Dendritic)
                .filter_map(|d| {
                    base.get(&d.seed).map(|b| PairedDiff {
                        seed: d.seed,
                        accuracy: d.accuracy - b.accuracy,
                        macro_f1: d.macro_f1 - b.macro_f1,
                    })
                })
                .collect();
            paired.sort_by_key(|p| p.seed);
            GroupSummary {
                group: group.to_string(),
                model: rs[0].model.clone(),
                variants,
                paired,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::row;

    fn rows() -> Vec<ResultsRow> {
        vec![
            row("a", Variant::Baseline, 0, "g", 0.90),
            row("b", Variant::Dendritic, 0, "g", 0.92),
            row("c", Variant::Baseline, 1, "g", 0.94),
            row("d", Variant::Dendritic, 1, "g", 0.93),
            row("e", Variant::Baseline, 0, "other", 0.5),
        ]
    }

    #[test]
    fn means_sds_and_pairs() {
        let g = summarize(&rows());
        assert_eq!(g.len(), 2);
        let main = g.iter().find(|g| g.group == "g").unwrap();
        assert_eq!(main.variants[0].variant, Variant::Baseline);
        assert_eq!(main.variants[0].seeds, vec![0, 1]);
        let (m, sd) = main.variants[0].accuracy;
        assert!((m - 0.92).abs() < 1e-12);
        assert!((sd - (0.02f64 * 0.02 * 2.0).sqrt()).abs() < 1e-12);
        assert_eq!(main.paired.len(), 2);
        assert!((main.paired[0].accuracy - 0.02).abs() < 1e-12);
        assert!((main.paired[1].accuracy + 0.01).abs() < 1e-12);
        let ((da, _), _) = main.paired_stats();
        assert!((da - 0.005).abs() < 1e-12);
        let other = g.iter().find(|g| g.group == "other").unwrap();
        assert!(other.paired.is_empty());
    }

    #[test]
    fn single_value_has_zero_sd() {
        assert_eq!(mean_sd(&[0.5]), (0.5, 0.0));
        assert!(mean_sd(&[]).0.is_nan());
    }
}
