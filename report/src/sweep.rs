//! The sweep-level report, one aggregator for `worker run` and `producer
//! report`: from each finished run's `Results.csv`, `metrics.json` and
//! `spec.json` ([`SweepRun::from_files`]) to the sweep's `Results.csv`,
//! `report.md` (mean ± sd per variant, paired dendritic − baseline
//! differences on the same seeds) and, per comparison group,
//! `variant_comparison.png`, `Accuracy_Improvement.png` and
//! `Dendrite_vs_Baseline_Training.png`.

use common::artifacts::files;
use common::spec::Metric;
use common::summary::{RunSummary, SpecFile};

use crate::compare::{self, GroupSummary};
use crate::plots;
use crate::results::{self, ResultsRow};
use crate::{Files, ReportError};

/// The files of a run that the sweep report reads, relative to the run's folder.
pub const RUN_FILES: [&str; 3] = [files::RESULTS_CSV, files::METRICS_JSON, files::SPEC_JSON];

/// What the sweep report needs of one finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    pub row: ResultsRow,
    pub metric: Metric,
    /// (epoch, validation score)
    pub curve: Vec<(usize, f64)>,
}

impl SweepRun {
    /// Reads a run from its files; `folder` names them in errors.
    pub fn from_files(
        folder: &str,
        results_csv: &[u8],
        metrics_json: &[u8],
        spec_json: &[u8],
    ) -> Result<Self, ReportError> {
        let name = |f: &str| format!("{folder}/{f}");
        let row = results::read(&name(files::RESULTS_CSV), results_csv)?
            .into_iter()
            .next()
            .ok_or_else(|| ReportError::Read {
                file: name(files::RESULTS_CSV),
                message: "no row".into(),
            })?;
        let json_err = |f: &str, e: serde_json::Error| ReportError::Read {
            file: name(f),
            message: e.to_string(),
        };
        let summary: RunSummary =
            serde_json::from_slice(metrics_json).map_err(|e| json_err(files::METRICS_JSON, e))?;
        let spec: SpecFile =
            serde_json::from_slice(spec_json).map_err(|e| json_err(files::SPEC_JSON, e))?;
        Ok(SweepRun {
            row,
            metric: spec.spec.train.metric,
            curve: summary
                .history
                .iter()
                .map(|r| (r.epoch, r.val_score))
                .collect(),
        })
    }
}

/// A Markdown report of every group.
pub fn to_markdown(sweep: &str, groups: &[GroupSummary]) -> String {
    let pm = |x: (f64, f64)| format!("{:.4} ± {:.4}", x.0, x.1);
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
                pm(v.accuracy),
                pm(v.macro_f1),
                pm(v.weighted_f1),
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

/// The figures of one comparison group; `suffix` tells groups apart.
fn group_figures(g: &GroupSummary, runs: &[&SweepRun], suffix: &str) -> Result<Files, ReportError> {
    let mut out = Vec::new();
    let variants: Vec<String> = g.variants.iter().map(|v| v.variant.to_string()).collect();
    let values: Vec<Vec<f64>> = g
        .variants
        .iter()
        .map(|v| v.accuracy_values.clone())
        .collect();
    out.push((
        format!("variant_comparison{suffix}.png"),
        plots::variant_comparison(
            &format!("{}: test accuracy per seed", g.model),
            "test accuracy",
            &variants,
            &values,
        )?,
    ));
    if !g.paired.is_empty() {
        let seeds: Vec<String> = g
            .paired
            .iter()
            .map(|p| format!("seed {}", p.seed))
            .collect();
        let diffs: Vec<f64> = g.paired.iter().map(|p| p.accuracy).collect();
        out.push((
            format!("Accuracy_Improvement{suffix}.png"),
            plots::paired_differences(
                &format!(
                    "{}: dendritic − baseline test accuracy, same seed and split",
                    g.model
                ),
                "test accuracy",
                &seeds,
                &diffs,
            )?,
        ));
    }
    let curves: Vec<_> = runs
        .iter()
        .filter(|r| r.curve.iter().any(|(_, y)| y.is_finite()))
        .map(|r| {
            (
                r.row.variant.to_string(),
                format!("seed {}", r.row.seed),
                r.curve.clone(),
            )
        })
        .collect();
    if let Some(first) = runs.first().filter(|_| !curves.is_empty()) {
        let metric = first.metric.label();
        out.push((
            format!("Dendrite_vs_Baseline_Training{suffix}.png"),
            plots::training_comparison(
                &format!("{}: validation {metric} per epoch", g.model),
                metric,
                &curves,
            )?,
        ));
    }
    Ok(out)
}

/// The sweep's files from its finished runs: `Results.csv`, `report.md`
/// and the figures of each comparison group (names suffixed with the
/// group's first 8 characters when there are several groups).
pub fn sweep_files(sweep: &str, runs: &[SweepRun]) -> Result<Files, ReportError> {
    let rows: Vec<ResultsRow> = runs.iter().map(|r| r.row.clone()).collect();
    let groups = compare::summarize(&rows);
    let mut out = vec![
        (files::RESULTS_CSV.to_string(), results::write(&rows)?),
        (
            files::REPORT_MD.to_string(),
            to_markdown(sweep, &groups).into_bytes(),
        ),
    ];
    for g in &groups {
        let suffix = if groups.len() > 1 {
            format!("_{}", &g.group[..8.min(g.group.len())])
        } else {
            String::new()
        };
        let members: Vec<&SweepRun> = runs
            .iter()
            .filter(|r| r.row.comparison_group == g.group)
            .collect();
        out.extend(group_figures(g, &members, &suffix)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{run_files, tests as run_tests};
    use common::spec::Variant;

    fn run(variant: Variant, seed: u64, acc: f64) -> SweepRun {
        let mut spec = run_tests::spec();
        spec.variant = variant;
        spec.seed = seed;
        let mut s = run_tests::summary();
        s.job_id = format!("s-{variant}-{seed}");
        s.test.accuracy = acc;
        let files = run_files(&spec, &s).unwrap();
        let get = |n: &str| files.iter().find(|(f, _)| f == n).unwrap().1.clone();
        SweepRun::from_files(
            "runs/x",
            &get(files::RESULTS_CSV),
            &get(files::METRICS_JSON),
            &get(files::SPEC_JSON),
        )
        .unwrap()
    }

    #[test]
    fn a_sweep_report_from_run_files() {
        let runs = vec![
            run(Variant::Baseline, 0, 0.90),
            run(Variant::Dendritic, 0, 0.92),
            run(Variant::Baseline, 1, 0.94),
            run(Variant::Dendritic, 1, 0.93),
        ];
        assert_eq!(runs[0].metric, Metric::MacroF1);
        assert_eq!(runs[0].curve, vec![(1, 0.5), (2, 0.6), (3, 0.7)]);
        let files = sweep_files("s", &runs).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Results.csv",
                "report.md",
                "variant_comparison.png",
                "Accuracy_Improvement.png",
                "Dendrite_vs_Baseline_Training.png"
            ]
        );
        let md = String::from_utf8(files[1].1.clone()).unwrap();
        assert!(md.contains("accuracy +0.0050 ± 0.0212"), "{md}");
        assert!(md.contains("| baseline | 2 | 0.9200 ± 0.0283"), "{md}");
        assert_eq!(results::read("Results.csv", &files[0].1).unwrap().len(), 4);
    }

    #[test]
    fn unreadable_run_files_name_the_file() {
        let e = SweepRun::from_files("runs/x", b"job_id\n", b"{}", b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs/x/Results.csv"), "{e}");
        let ok = run(Variant::Baseline, 0, 0.9);
        let csv = results::write(&[ok.row]).unwrap();
        let e = SweepRun::from_files("runs/x", &csv, b"{", b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs/x/metrics.json"), "{e}");
    }
}
