//! The sweep-level report, one aggregator for `worker run` and `producer
//! report`: from each finished run's `Results.csv`, `metrics.json` and
//! `spec.json` ([`SweepRun::from_files`]) to the sweep's `Results.csv`,
//! `report.md` (per arm: test and validation scores; per contrast between
//! arms: paired differences on the same split and seed with 95% intervals,
//! sign and McNemar tests, and the result in sentences) and, per comparison
//! group, `variant_comparison.png`, `Accuracy_Improvement.png` and
//! `Dendrite_vs_Baseline_Training.png`.

use common::artifacts::files;
use common::spec::Metric;
use common::summary::{Arithmetic, RunSummary, SpecFile};

use crate::compare::{self, Contrast, GroupSummary, RunScores};
use crate::plots;
use crate::results::{self, ResultsRow};
use crate::stats::format_p;
use crate::{Files, ReportError};

/// The files of a run that the sweep report reads, relative to the run's folder.
pub const RUN_FILES: [&str; 3] = [files::RESULTS_CSV, files::METRICS_JSON, files::SPEC_JSON];

/// A sweep's finished runs as read back from a store ([`collect_runs`]).
#[derive(Debug, Default)]
pub struct Collected {
    pub runs: Vec<SweepRun>,
    /// Jobs with a run file absent from their folder (not finished, or
    /// not stored).
    pub missing: Vec<String>,
    /// Jobs whose files are there but do not read as a run, with why.
    pub unreadable: Vec<(String, ReportError)>,
}

/// Reads the runs of `folders` (job id, run folder) through `get`, a
/// store's read of one key (`None`: absent): the one collector behind
/// `worker run`'s and `producer report`'s sweep reports. A store error
/// ends the collection.
pub async fn collect_runs<F, Fut, E>(
    folders: &[(String, String)],
    mut get: F,
) -> Result<Collected, E>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Vec<u8>>, E>>,
{
    let mut out = Collected::default();
    'jobs: for (job, folder) in folders {
        let mut got = Vec::with_capacity(RUN_FILES.len());
        for f in RUN_FILES {
            match get(format!("{folder}/{f}")).await? {
                Some(b) => got.push(b),
                None => {
                    out.missing.push(job.clone());
                    continue 'jobs;
                }
            }
        }
        match SweepRun::from_files(folder, &got[0], &got[1], &got[2]) {
            Ok(run) => out.runs.push(run),
            Err(e) => out.unreadable.push((job.clone(), e)),
        }
    }
    Ok(out)
}

/// What the sweep report needs of one finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    pub row: ResultsRow,
    pub metric: Metric,
    /// The run's epochs as trained (discarded ones included).
    pub epochs: Vec<RunEpoch>,
    /// Epochs after which a set was added (or the arm restarted).
    pub switches: Vec<usize>,
    /// The epoch whose network the run kept.
    pub best_epoch: usize,
    /// The test split's gold labels and predictions, and the predictions
    /// with the dendrite terms knocked out (dendritic runs).
    pub test_labels: Vec<usize>,
    pub test_predictions: Vec<usize>,
    pub knockout_predictions: Option<Vec<usize>>,
    pub mean_ablated_predictions: Option<Vec<usize>>,
    /// The run's notes (`metrics.json`).
    pub notes: Vec<String>,
    /// What computed the run (`metrics.json`; absent in older runs).
    pub arithmetic: Option<Arithmetic>,
    /// The sweep's primary contrast (`report.primary` of its spec).
    pub primary: Option<(String, String)>,
}

/// One epoch of a run, as the training figure draws it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunEpoch {
    pub epoch: usize,
    pub val_score: f64,
    pub train_loss: f64,
    /// Left behind by a restore: the run went on from an earlier snapshot.
    pub discarded: bool,
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
            epochs: summary
                .history
                .iter()
                .map(|r| RunEpoch {
                    epoch: r.epoch,
                    val_score: r.val_score,
                    train_loss: r.train_loss,
                    discarded: r.discarded,
                })
                .collect(),
            switches: summary.switch_epochs.clone(),
            best_epoch: summary.best_epoch,
            test_labels: summary.test_labels,
            test_predictions: summary.test_predictions,
            mean_ablated_predictions: summary
                .knockout
                .as_ref()
                .and_then(|k| k.mean_ablated.as_ref())
                .map(|a| a.test_predictions.clone()),
            knockout_predictions: summary.knockout.map(|k| k.test_predictions),
            notes: summary.notes,
            arithmetic: summary.arithmetic,
            primary: spec.spec.report.primary_arms().ok().flatten(),
        })
    }

    fn scores(&self) -> RunScores {
        RunScores {
            row: self.row.clone(),
            test_labels: self.test_labels.clone(),
            test_predictions: self.test_predictions.clone(),
            knockout_predictions: self.knockout_predictions.clone(),
            mean_ablated_predictions: self.mean_ablated_predictions.clone(),
            primary: self.primary.clone(),
        }
    }
}

/// "0.8123 ± 0.0101" (mean ± sample sd).
fn pm(x: (f64, f64)) -> String {
    if x.0.is_finite() {
        format!("{:.4} ± {:.4}", x.0, x.1)
    } else {
        "–".into()
    }
}

/// "+0.0031 [−0.0012, +0.0074]" (mean [95% CI]).
fn ci(c: &crate::stats::MeanCi) -> String {
    if !c.mean.is_finite() {
        "–".into()
    } else if c.lo.is_finite() {
        format!("{:+.4} [{:+.4}, {:+.4}]", c.mean, c.lo, c.hi)
    } else {
        format!("{:+.4}", c.mean)
    }
}

fn contrast_rows(c: &Contrast) -> String {
    let mc = c.mcnemar.map_or("–".into(), |m| {
        format!("{} / {} (p {})", m.only_a, m.only_b, format_p(m.p))
    });
    let by_split = if c.splits.lo.is_finite() {
        format!(
            "{} (p {}, Holm {})",
            ci(&c.splits),
            format_p(c.split_p),
            format_p(c.holm_p)
        )
    } else {
        "–".into()
    };
    format!(
        "| {}{} | {} | {} | {} | {} | {} | {} / {} / {} (p {}) | {} |\n",
        c.label(),
        if c.headline { " (primary)" } else { "" },
        c.pairs.len(),
        ci(&c.test_f1),
        by_split,
        ci(&c.val_f1),
        ci(&c.test_acc),
        c.sign.higher,
        c.sign.lower,
        c.sign.tied,
        format_p(c.sign.p),
        mc
    )
}

/// A Markdown report of every group.
pub fn to_markdown(sweep: &str, groups: &[GroupSummary]) -> String {
    let mut s = format!("# Sweep `{sweep}`\n\n");
    s.push_str(
        "Primary metric: test macro-F1 at the epoch selected on validation (accuracy beside it). \
         In the arm table \"±\" is the sample standard deviation over the arm's runs. \
         Contrasts pair runs on the same data split and training seed; \
         a contrast's value is the mean paired difference A − B with its 95% t interval in brackets; \
         the sign test counts pairs where A was higher / lower / tied on test macro-F1; \
         McNemar counts pooled test sentences right only under A / only under B \
         (runs of one split share their test sentences, so its p-value is optimistic). \
         The runs of one split are not independent: the verdict rests on the split-level column, \
         each split's seeds averaged, a t interval and test over the splits, \
         and the p-value adjusted by Holm over every contrast of the table. \
         The first contrast is the primary one, named before the run (`report.primary`). \
         An arm \"A, mean-ablated\" is A's runs scored with each dendrite term replaced by its mean \
         over the training split (what the dendrites add beyond a constant offset: the knock-out \
         the sentences use); \"A, knocked out\" zeroes the terms, which also removes the offset \
         (a sigmoid's output averages about 0.5), so it overstates what the dendrites do.\n\n",
    );
    for g in groups {
        s.push_str(&format!(
            "## {} (comparison group {})\n\n",
            g.model, g.group
        ));
        s.push_str("| arm | runs | test macro-F1 | test accuracy | val macro-F1 | val accuracy | trainable params | dendrites | dendrite params | epochs | train s |\n");
        s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for a in &g.arms {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} |\n",
                a.arm,
                a.pairs.len(),
                pm(a.test_f1),
                pm(a.test_acc),
                pm(a.val_f1),
                pm(a.val_acc),
                a.trainable_params,
                a.dendrites,
                a.dendrite_params,
                a.epochs,
                a.train_seconds
            ));
        }
        if !g.contrasts.is_empty() {
            s.push_str("\n| contrast A − B | pairs | Δ test macro-F1 [95% CI] | by split [95% CI] (t test p, Holm) | Δ val macro-F1 [95% CI] | Δ test accuracy [95% CI] | sign test higher / lower / tied | McNemar only A / only B (pooled) |\n");
            s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
            for c in &g.contrasts {
                s.push_str(&contrast_rows(c));
            }
            s.push_str("\nIn sentences:\n\n");
            for c in g
                .contrasts
                .iter()
                .filter(|c| !c.b.ends_with(compare::KNOCKED_OUT))
            {
                s.push_str(&format!("- {}\n", compare::sentences(c)));
            }
            s.push_str("\nPer pair (A − B, test macro-F1 / validation macro-F1):\n\n");
            let header: Vec<String> = g.contrasts.iter().map(|c| c.label()).collect();
            s.push_str(&format!("| split | seed | {} |\n", header.join(" | ")));
            s.push_str(&format!("| --- | --- |{}\n", " --- |".repeat(header.len())));
            let mut keys: Vec<(u64, u64)> = g
                .contrasts
                .iter()
                .flat_map(|c| c.pairs.iter().map(|p| (p.split_seed, p.seed)))
                .collect();
            keys.sort();
            keys.dedup();
            for (split, seed) in keys {
                let cells: Vec<String> = g
                    .contrasts
                    .iter()
                    .map(|c| {
                        c.pairs
                            .iter()
                            .find(|p| (p.split_seed, p.seed) == (split, seed))
                            .map_or("–".into(), |p| {
                                format!("{:+.4} / {:+.4}", p.test_f1, p.val_f1)
                            })
                    })
                    .collect();
                s.push_str(&format!("| {split} | {seed} | {} |\n", cells.join(" | ")));
            }
        }
        s.push('\n');
    }
    s
}

/// The figures of one comparison group; `suffix` tells groups apart.
fn group_figures(g: &GroupSummary, runs: &[&SweepRun], suffix: &str) -> Result<Files, ReportError> {
    let mut out = Vec::new();
    // Arms of their own only: a knock-out (tens of points lower) on the
    // same axis would flatten the arms the figure is about; report.md
    // tables it.
    let own: Vec<&compare::ArmStats> = g
        .arms
        .iter()
        .filter(|a| !compare::is_ablation(&a.arm))
        .collect();
    let arms: Vec<String> = own.iter().map(|a| a.arm.clone()).collect();
    let values: Vec<Vec<f64>> = own.iter().map(|a| a.test_f1_values.clone()).collect();
    out.push((
        format!("variant_comparison{suffix}.png"),
        plots::variant_comparison(
            &format!("{}: test macro-F1 per run (split × seed)", g.model),
            "test macro-F1",
            &arms,
            &values,
        )?,
    ));
    // The knock-out contrast (tens of points) stays in report.md: on the
    // same axis it would flatten the arm contrasts the figure is about.
    let shown: Vec<&Contrast> = g
        .contrasts
        .iter()
        .filter(|c| !compare::is_ablation(&c.b))
        .collect();
    if !shown.is_empty() {
        let bars = |test: fn(&compare::PairDiff) -> f64, val: fn(&compare::PairDiff) -> f64| {
            shown
                .iter()
                .map(|c| plots::Contrast {
                    label: c.label(),
                    test: plots::EffectBar::from_points(c.pairs.iter().map(test).collect()),
                    val: plots::EffectBar::from_points(c.pairs.iter().map(val).collect()),
                })
                .collect::<Vec<_>>()
        };
        out.push((
            format!("Accuracy_Improvement{suffix}.png"),
            plots::contrast_effects(
                &format!(
                    "{}: paired differences A − B (same split and seed), test beside validation",
                    g.model
                ),
                "macro-F1",
                &bars(|p| p.test_f1, |p| p.val_f1),
                &bars(|p| p.test_acc, |p| p.val_acc),
                shown[0].test_sentences,
            )?,
        ));
    }
    if let Some(first) = runs.first() {
        let metric = first.metric.label();
        let (arms, lines) = training_lines(runs, metric);
        if !lines.is_empty() {
            out.push((
                format!("Dendrite_vs_Baseline_Training{suffix}.png"),
                plots::training_comparison(
                    &format!(
                        "{}: validation {metric} and training loss per epoch",
                        g.model
                    ),
                    &arms,
                    &lines,
                )?,
            ));
        }
    }
    Ok(out)
}

/// Most panels of the training figure drawn one per (split, seed) pair;
/// above it, only the summary panels.
const MOST_PAIR_PANELS: usize = 9;

/// The training figure's arms, (arm, legend label "branch (9 runs)") in
/// order of first appearance, and its lines: up to [`MOST_PAIR_PANELS`]
/// pairs, a panel per (split, seed) pair with a line per run (selected
/// epoch, switches and discarded epochs marked); with more than one pair,
/// a panel of each arm's mean validation score at every epoch (over the
/// runs that reached it) with a band of ± 1 sd; always, a panel of each
/// arm's training loss drawn the same way.
fn training_lines(
    runs: &[&SweepRun],
    metric: &str,
) -> (Vec<(String, String)>, Vec<plots::RunLine>) {
    let runs: Vec<&&SweepRun> = runs
        .iter()
        .filter(|r| r.epochs.iter().any(|e| e.val_score.is_finite()))
        .collect();
    // Each arm's runs, in order of first appearance.
    let mut arms: Vec<(String, Vec<&SweepRun>)> = Vec::new();
    for r in &runs {
        let arm = r.row.arm_name();
        match arms.iter_mut().find(|(a, _)| *a == arm) {
            Some((_, of_arm)) => of_arm.push(r),
            None => arms.push((arm, vec![r])),
        }
    }
    let pairs: std::collections::BTreeSet<(u64, u64)> = runs
        .iter()
        .map(|r| (r.row.split_seed, r.row.seed))
        .collect();
    let quantity = format!("validation {metric}");
    let mut lines = Vec::new();
    if pairs.len() <= MOST_PAIR_PANELS {
        lines.extend(runs.iter().map(|r| {
            plots::RunLine {
                arm: r.row.arm_name(),
                panel: format!("split {} · seed {}", r.row.split_seed, r.row.seed),
                quantity: quantity.clone(),
                points: r
                    .epochs
                    .iter()
                    .map(|e| (e.epoch, e.val_score, e.discarded))
                    .collect(),
                band: Vec::new(),
                selected: Some(r.best_epoch),
                switches: r.switches.clone(),
            }
        }));
    }
    let counts: std::collections::BTreeSet<usize> = arms.iter().map(|a| a.1.len()).collect();
    let of_runs = match counts.iter().collect::<Vec<_>>()[..] {
        [&n] if n > 1 => format!("mean of {n} runs per arm ± 1 sd"),
        [&1] => "one run per arm".to_string(),
        _ => "mean of each arm's runs ± 1 sd".to_string(),
    };
    let summaries: [(&str, EpochValue, bool); 2] = [
        (&quantity, |e| e.val_score, pairs.len() > 1),
        ("training loss", |e| e.train_loss, true),
    ];
    for (name, value, shown) in summaries {
        if !shown {
            continue;
        }
        for (arm, of_arm) in &arms {
            let values = of_arm.iter().flat_map(|r| r.epochs.iter());
            let by_epoch = epoch_mean_sd(values.map(|e| (e.epoch, value(e))));
            lines.push(plots::RunLine {
                arm: arm.clone(),
                panel: format!("{name}: {of_runs}"),
                quantity: name.to_string(),
                points: by_epoch.iter().map(|&(e, m, ..)| (e, m, false)).collect(),
                band: by_epoch
                    .iter()
                    .filter(|b| b.3 > 1)
                    .map(|&(e, m, sd, _)| (e, m - sd, m + sd))
                    .collect(),
                selected: None,
                switches: Vec::new(),
            });
        }
    }
    let arms = arms
        .into_iter()
        .map(|(arm, of_arm)| {
            let n = of_arm.len();
            let label = format!("{arm} ({n} run{})", if n == 1 { "" } else { "s" });
            (arm, label)
        })
        .collect();
    (arms, lines)
}

/// What a summary panel draws of an epoch.
type EpochValue = fn(&RunEpoch) -> f64;

/// (epoch, mean, sd, count) of the finite values at each epoch, in epoch
/// order; sd 0 for a lone value.
fn epoch_mean_sd(values: impl Iterator<Item = (usize, f64)>) -> Vec<(usize, f64, f64, usize)> {
    let mut by_epoch: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
    for (e, v) in values.filter(|(_, v)| v.is_finite()) {
        by_epoch.entry(e).or_default().push(v);
    }
    by_epoch
        .into_iter()
        .map(|(e, v)| {
            let (mean, sd) = compare::mean_sd(&v);
            (e, mean, sd, v.len())
        })
        .collect()
}

/// "## Arithmetic": each processor, product library and thread count the
/// runs were computed with, and how many runs each (scores reproduce on
/// the same arithmetic; see [`Arithmetic`]).
fn arithmetic_section(runs: &[SweepRun]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for r in runs {
        let key = r
            .arithmetic
            .as_ref()
            .map_or_else(|| "not recorded".to_string(), Arithmetic::to_string);
        *counts.entry(key).or_default() += 1;
    }
    let lines: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("- {k}: {n} run{}\n", if *n == 1 { "" } else { "s" }))
        .collect();
    format!("## Arithmetic\n\n{}\n", lines.concat())
}

/// "## Notes": every run's notes, by job (empty when no run has one).
fn notes_section(runs: &[SweepRun]) -> String {
    let lines: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(|n| format!("- `{}`: {n}\n", r.row.job_id))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("## Notes\n\n{}\n", lines.concat())
}

/// The sweep's files from its finished runs: `Results.csv`, `report.md`
/// and the figures of each comparison group (names suffixed with the
/// group's first 8 characters when there are several groups).
pub fn sweep_files(sweep: &str, runs: &[SweepRun]) -> Result<Files, ReportError> {
    let rows: Vec<ResultsRow> = runs.iter().map(|r| r.row.clone()).collect();
    let scores: Vec<RunScores> = runs.iter().map(SweepRun::scores).collect();
    let groups = compare::summarize(&scores);
    let mut md = to_markdown(sweep, &groups);
    md.push_str(&arithmetic_section(runs));
    md.push_str(&notes_section(runs));
    let mut out = vec![
        (files::RESULTS_CSV.to_string(), results::write(&rows)?),
        (files::REPORT_MD.to_string(), md.into_bytes()),
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

    /// Up to nine pairs the figure has a line per run with its marks;
    /// beyond, only the summary panels: each arm's mean at each epoch with
    /// a band of one sd, for validation and training loss.
    #[test]
    fn training_figure_lines() {
        let mut runs = Vec::new();
        for split in 0..12u64 {
            for seed in 0..2u64 {
                for (arm, lift) in [("gated-linear", 0.1), ("restart", 0.0)] {
                    let mut r = run(Variant::Restart, seed, 0.9);
                    r.row.arm = arm.into();
                    r.row.split_seed = split;
                    r.epochs = (1..=3 + seed as usize)
                        .map(|e| RunEpoch {
                            epoch: e,
                            val_score: lift + 0.01 * e as f64 + 0.1 * seed as f64,
                            train_loss: 1.0 / e as f64,
                            discarded: e == 2,
                        })
                        .collect();
                    r.switches = vec![1];
                    r.best_epoch = 3;
                    runs.push(r);
                }
            }
        }
        let refs: Vec<&SweepRun> = runs.iter().collect();
        let (arms, lines) = training_lines(&refs, "macro-F1");
        assert_eq!(
            arms,
            [
                (
                    "gated-linear".to_string(),
                    "gated-linear (24 runs)".to_string()
                ),
                ("restart".to_string(), "restart (24 runs)".to_string())
            ]
        );
        assert_eq!(lines.len(), 4, "24 pairs: 2 summary panels x 2 arms");
        let l = &lines[0];
        assert_eq!(
            (l.arm.as_str(), l.panel.as_str(), l.quantity.as_str()),
            (
                "gated-linear",
                "validation macro-F1: mean of 24 runs per arm ± 1 sd",
                "validation macro-F1"
            )
        );
        // Epochs 1-3: both seeds (mean offset 0.05); epoch 4: seed 1 only.
        let want = [(1, 0.16), (2, 0.17), (3, 0.18), (4, 0.24)];
        assert_eq!(l.points.len(), 4);
        for ((e, y, faded), (we, wy)) in l.points.iter().zip(want) {
            assert_eq!((*e, *faded), (we, false));
            assert!((y - wy).abs() < 1e-12, "{:?}", l.points);
        }
        // One sd of 12 values 0.1 above 12 others; none at epoch 4.
        let sd = (24.0 / 23.0 * 0.05f64.powi(2)).sqrt();
        assert_eq!(l.band.len(), 4);
        assert!((l.band[3].2 - l.band[3].1).abs() < 1e-12, "{:?}", l.band);
        assert!(
            (l.band[0].2 - l.band[0].1 - 2.0 * sd).abs() < 1e-12,
            "{:?}",
            l.band
        );
        let loss = &lines[2];
        assert_eq!(loss.panel, "training loss: mean of 24 runs per arm ± 1 sd");
        assert_eq!((loss.points[1].0, loss.points[1].1), (2, 0.5));
        assert!(
            loss.band.iter().all(|b| (b.2 - b.1).abs() < 1e-12),
            "every run has the same loss"
        );

        let few: Vec<&SweepRun> = runs.iter().filter(|r| r.row.split_seed < 4).collect();
        let (_, lines) = training_lines(&few, "macro-F1");
        assert_eq!(
            lines.len(),
            16 + 4,
            "8 pairs: a line per run, then the summaries"
        );
        let l = &lines[0];
        assert_eq!(l.panel, "split 0 · seed 0");
        assert_eq!((l.selected, l.switches.clone()), (Some(3), vec![1]));
        let (e, y, faded) = l.points[1];
        assert_eq!((e, faded), (2, true), "epoch 2 was discarded");
        assert!((y - 0.12).abs() < 1e-12);

        let one: Vec<&SweepRun> = runs.iter().take(1).collect();
        let (_, lines) = training_lines(&one, "macro-F1");
        assert!(lines[1].band.is_empty(), "no band of a lone run");
        let panels: Vec<&str> = lines.iter().map(|l| l.panel.as_str()).collect();
        assert_eq!(
            panels,
            ["split 0 · seed 0", "training loss: one run per arm"],
            "one pair: no mean panel"
        );
    }

    /// Every contrast row has a cell per column, the split-level interval
    /// with its t test and Holm p-values among them.
    #[test]
    fn contrast_rows_carry_the_split_level_cell() {
        let mut runs = Vec::new();
        for split in 0..3u64 {
            for (variant, lift) in [(Variant::Restart, 0.0), (Variant::Dendritic, 0.02)] {
                let mut r = run(variant, 0, 0.9);
                r.row.split_seed = split;
                r.row.macro_f1 = 0.7 + lift + 0.001 * (split * split) as f64 * lift * 50.0;
                runs.push(r);
            }
        }
        let scores: Vec<RunScores> = runs.iter().map(SweepRun::scores).collect();
        let md = to_markdown("s", &compare::summarize(&scores));
        let row = md
            .lines()
            .find(|l| l.starts_with("| dendritic − restart (primary) |"))
            .unwrap_or_else(|| panic!("{md}"));
        let header = md
            .lines()
            .find(|l| l.starts_with("| contrast A − B |"))
            .unwrap();
        assert_eq!(
            row.matches(" | ").count(),
            header.matches(" | ").count(),
            "{row}"
        );
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(cells[3].starts_with("+0.0"), "{row}");
        assert!(
            cells[3].contains("(p ") && cells[3].contains(", Holm "),
            "{row}"
        );
    }

    /// Each distinct arithmetic with its run count, older runs (without
    /// the field) counted as not recorded.
    #[test]
    fn the_report_says_what_computed_the_runs() {
        let mut runs = vec![
            run(Variant::Baseline, 0, 0.90),
            run(Variant::Dendritic, 0, 0.90),
            run(Variant::Baseline, 1, 0.90),
        ];
        runs[1].arithmetic.as_mut().unwrap().gemm = "mkl".into();
        runs[2].arithmetic = None;
        let text = String::from_utf8(sweep_files("s", &runs).unwrap()[1].1.clone()).unwrap();
        assert!(
            text.contains(
                "## Arithmetic\n\n- Test CPU, mkl, 2 threads: 1 run\n\
                 - Test CPU, openblas, 2 threads: 1 run\n- not recorded: 1 run\n\n"
            ),
            "{text}"
        );
        runs[1].arithmetic = runs[0].arithmetic.clone();
        runs[2].arithmetic = runs[0].arithmetic.clone();
        let text = String::from_utf8(sweep_files("s", &runs).unwrap()[1].1.clone()).unwrap();
        assert!(
            text.contains("## Arithmetic\n\n- Test CPU, openblas, 2 threads: 3 runs\n\n"),
            "{text}"
        );
    }

    #[test]
    fn run_notes_reach_the_report() {
        let mut runs = vec![
            run(Variant::Baseline, 0, 0.90),
            run(Variant::Dendritic, 0, 0.90),
        ];
        let files = sweep_files("s", &runs).unwrap();
        let md = |files: &Files| String::from_utf8(files[1].1.clone()).unwrap();
        assert!(!md(&files).contains("## Notes"));
        let note = common::summary::no_set_note(true, &[], 2).unwrap();
        runs[1].notes.push(note.clone());
        let text = md(&sweep_files("s", &runs).unwrap());
        assert!(
            text.ends_with(&format!("## Notes\n\n- `s-dendritic-0`: {note}\n\n")),
            "{text}"
        );
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
        let val: Vec<(usize, f64)> = runs[0]
            .epochs
            .iter()
            .map(|e| (e.epoch, e.val_score))
            .collect();
        assert_eq!(val, vec![(1, 0.5), (2, 0.6), (3, 0.7)]);
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
        // Pairs: seed 0 +0.02, seed 1 -0.01 (accuracy; macro-F1 is the same run summary).
        assert!(md.contains("| dendritic − baseline | 2 |"), "{md}");
        assert!(md.contains("| baseline | 2 |"), "{md}");
        assert!(
            md.contains("\"±\" is the sample standard deviation"),
            "{md}"
        );
        assert!(md.contains("In sentences:"), "{md}");
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
