//! Sweep-level comparison of runs from their `Results.csv` rows: mean and
//! standard deviation per variant, and paired dendritic-minus-baseline
//! differences on the same seeds. Runs are compared only within a
//! comparison group (same settings apart from variant, dendrites and seed).
//! Pure: text in, numbers and text out.

use std::collections::BTreeMap;

/// A malformed results table.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("results table: missing column `{0}`")]
    MissingColumn(String),
    #[error("results table line {line}: column `{column}`: cannot read {value:?}")]
    Value {
        line: usize,
        column: String,
        value: String,
    },
}

/// The columns of one run that comparisons use.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub job_id: String,
    pub model: String,
    pub variant: String,
    pub seed: u64,
    pub group: String,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    pub total_params: f64,
    pub trainable_params: f64,
    pub dendrites: f64,
    pub dendrite_params: f64,
    pub epochs: f64,
    pub train_seconds: f64,
}

/// Parses a `Results.csv` (header line plus rows; fields without quotes
/// or commas inside, as the worker writes them).
pub fn parse_results(text: &str) -> Result<Vec<Row>, ReportError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<&str> = header.split(',').collect();
    let idx = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| ReportError::MissingColumn(name.to_string()))
    };
    let names = [
        "job_id",
        "model",
        "variant",
        "seed",
        "comparison_group",
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "total_params",
        "trainable_params",
        "dendrites",
        "dendrite_params",
        "epochs",
        "train_seconds",
    ];
    let at: Vec<usize> = names.iter().map(|n| idx(n)).collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |k: usize| -> Result<&str, ReportError> {
            f.get(at[k]).copied().ok_or_else(|| ReportError::Value {
                line: i + 1,
                column: names[k].to_string(),
                value: String::new(),
            })
        };
        let num = |k: usize| -> Result<f64, ReportError> {
            let v = get(k)?;
            v.parse::<f64>().map_err(|_| ReportError::Value {
                line: i + 1,
                column: names[k].to_string(),
                value: v.to_string(),
            })
        };
        rows.push(Row {
            job_id: get(0)?.to_string(),
            model: get(1)?.to_string(),
            variant: get(2)?.to_string(),
            seed: num(3)? as u64,
            group: get(4)?.to_string(),
            accuracy: num(5)?,
            macro_f1: num(6)?,
            weighted_f1: num(7)?,
            total_params: num(8)?,
            trainable_params: num(9)?,
            dendrites: num(10)?,
            dendrite_params: num(11)?,
            epochs: num(12)?,
            train_seconds: num(13)?,
        });
    }
    Ok(rows)
}

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

/// Statistics of one variant within a group.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantStats {
    pub variant: String,
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
    pub variants: Vec<VariantStats>,
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
pub fn summarize(rows: &[Row]) -> Vec<GroupSummary> {
    let mut groups: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups.entry(&r.group).or_default().push(r);
    }
    let mut out = Vec::new();
    for (group, rs) in groups {
        let mut by_variant: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
        for r in &rs {
            by_variant.entry(&r.variant).or_default().push(r);
        }
        let mut variants = Vec::new();
        for (variant, mut vr) in by_variant {
            vr.sort_by_key(|r| r.seed);
            let col = |f: fn(&Row) -> f64| -> Vec<f64> { vr.iter().map(|r| f(r)).collect() };
            variants.push(VariantStats {
                variant: variant.to_string(),
                seeds: vr.iter().map(|r| r.seed).collect(),
                accuracy: mean_sd(&col(|r| r.accuracy)),
                macro_f1: mean_sd(&col(|r| r.macro_f1)),
                weighted_f1: mean_sd(&col(|r| r.weighted_f1)),
                total_params: mean_sd(&col(|r| r.total_params)),
                trainable_params: mean_sd(&col(|r| r.trainable_params)),
                dendrites: mean_sd(&col(|r| r.dendrites)),
                dendrite_params: mean_sd(&col(|r| r.dendrite_params)),
                epochs: mean_sd(&col(|r| r.epochs)),
                train_seconds: mean_sd(&col(|r| r.train_seconds)),
                accuracy_values: col(|r| r.accuracy),
                macro_f1_values: col(|r| r.macro_f1),
            });
        }
        // Baseline first, then the rest by name.
        variants.sort_by_key(|v| (v.variant != "baseline", v.variant.clone()));
        let base: BTreeMap<u64, &&Row> = rs
            .iter()
            .filter(|r| r.variant == "baseline")
            .map(|r| (r.seed, r))
            .collect();
        let mut paired: Vec<PairedDiff> = rs
            .iter()
            .filter(|r| r.variant == "dendritic")
            .filter_map(|d| {
                base.get(&d.seed).map(|b| PairedDiff {
                    seed: d.seed,
                    accuracy: d.accuracy - b.accuracy,
                    macro_f1: d.macro_f1 - b.macro_f1,
                })
            })
            .collect();
        paired.sort_by_key(|p| p.seed);
        out.push(GroupSummary {
            group: group.to_string(),
            model: rs[0].model.clone(),
            variants,
            paired,
        });
    }
    out
}

fn pm(x: (f64, f64), digits: usize) -> String {
    format!("{:.*} ± {:.*}", digits, x.0, digits, x.1)
}

/// A Markdown report of every group.
pub fn to_markdown(sweep: &str, groups: &[GroupSummary]) -> String {
    let mut s = format!("# Sweep `{sweep}`\n\n");
    for g in groups {
        s.push_str(&format!(
            "## {} (comparison group {})\n\n",
            g.model, g.group
        ));
        s.push_str("| variant | runs | accuracy | macro-F1 | weighted-F1 | trainable params | dendrites | dendrite params | epochs | train s |\n");
        s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for v in &g.variants {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} |\n",
                v.variant,
                v.seeds.len(),
                pm(v.accuracy, 4),
                pm(v.macro_f1, 4),
                pm(v.weighted_f1, 4),
                v.trainable_params.0,
                v.dendrites.0,
                v.dendrite_params.0,
                v.epochs.0,
                v.train_seconds.0
            ));
        }
        if !g.paired.is_empty() {
            let (a, f) = g.paired_stats();
            s.push_str(&format!(
                "\nPaired dendritic − baseline over {} seed(s): accuracy {:+.4} ± {:.4}, macro-F1 {:+.4} ± {:.4}\n\n",
                g.paired.len(),
                a.0,
                a.1,
                f.0,
                f.1
            ));
            s.push_str("| seed | Δ accuracy | Δ macro-F1 |\n| --- | --- | --- |\n");
            for p in &g.paired {
                s.push_str(&format!(
                    "| {} | {:+.4} | {:+.4} |\n",
                    p.seed, p.accuracy, p.macro_f1
                ));
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "job_id,model,variant,seed,comparison_group,accuracy,macro_f1,weighted_f1,total_params,trainable_params,dendrites,dendrite_params,epochs,train_seconds
a,m,baseline,0,g,0.90,0.80,0.9,100,10,0,0,3,10
b,m,dendritic,0,g,0.92,0.83,0.9,110,20,1,10,3,12
c,m,baseline,1,g,0.94,0.90,0.9,100,10,0,0,3,10
d,m,dendritic,1,g,0.93,0.88,0.9,110,20,1,10,3,12
e,m,baseline,0,other,0.5,0.5,0.5,1,1,0,0,1,1
";

    #[test]
    fn means_sds_and_pairs() {
        let rows = parse_results(CSV).unwrap();
        let g = summarize(&rows);
        assert_eq!(g.len(), 2);
        let main = g.iter().find(|g| g.group == "g").unwrap();
        assert_eq!(main.variants[0].variant, "baseline");
        let (m, sd) = main.variants[0].accuracy;
        assert!((m - 0.92).abs() < 1e-12);
        assert!((sd - (0.02f64 * 0.02 * 2.0).sqrt()).abs() < 1e-12);
        assert_eq!(main.paired.len(), 2);
        assert!((main.paired[0].accuracy - 0.02).abs() < 1e-12);
        assert!((main.paired[1].accuracy + 0.01).abs() < 1e-12);
        let ((da, _), _) = main.paired_stats();
        assert!((da - 0.005).abs() < 1e-12);
        let md = to_markdown("s", &g);
        assert!(md.contains("+0.0050"), "{md}");
        let other = g.iter().find(|g| g.group == "other").unwrap();
        assert!(other.paired.is_empty());
    }

    #[test]
    fn bad_values_name_line_and_column() {
        let e = parse_results(&CSV.replace("0.90,0.80", "x,0.80"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("accuracy"), "{e}");
        let e = parse_results("job_id\nx\n").unwrap_err().to_string();
        assert!(e.contains("missing column"), "{e}");
    }

    #[test]
    fn single_value_has_zero_sd() {
        assert_eq!(mean_sd(&[0.5]), (0.5, 0.0));
    }
}
