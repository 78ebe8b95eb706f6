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
use common::summary::{RunSummary, SpecFile};

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
    /// (epoch, validation score)
    pub curve: Vec<(usize, f64)>,
    /// The test split's gold labels and predictions, and the predictions
    /// with the dendrite terms knocked out (dendritic runs).
    pub test_labels: Vec<usize>,
    pub test_predictions: Vec<usize>,
    pub knockout_predictions: Option<Vec<usize>>,
    pub mean_ablated_predictions: Option<Vec<usize>>,
    /// The run's notes (`metrics.json`).
    pub notes: Vec<String>,
    /// The sweep's primary contrast (`report.primary` of its spec).
    pub primary: Option<(String, String)>,
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
            test_labels: summary.test_labels,
            test_predictions: summary.test_predictions,
            mean_ablated_predictions: summary
                .knockout
                .as_ref()
                .and_then(|k| k.mean_ablated.as_ref())
                .map(|a| a.test_predictions.clone()),
            knockout_predictions: summary.knockout.map(|k| k.test_predictions),
            notes: summary.notes,
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
    let curves = training_curves(runs);
    if let Some(first) = runs.first().filter(|_| !curves.is_empty()) {
        let metric = first.metric.label();
        out.push((
            format!("Dendrite_vs_Baseline_Training{suffix}.png"),
            plots::training_comparison(
                &format!("{}: validation {metric} per epoch", g.model),
                metric,
                if curves.iter().any(|c| c.1.contains("mean of")) {
                    "split mean"
                } else {
                    "run"
                },
                &curves,
            )?,
        ));
    }
    Ok(out)
}

/// A line of the training figure: (arm, panel, (epoch, score) points).
type Curve = (String, String, Vec<(usize, f64)>);

/// Most panels of the training figure drawn one per (split, seed) pair;
/// above it, one panel per split.
const MOST_PAIR_PANELS: usize = 9;

/// The training figure's lines: (arm, panel, (epoch, validation score)).
/// One line per run and a panel per (split, seed) pair, or, when there are
/// more than [`MOST_PAIR_PANELS`] pairs, a panel per split with each arm's
/// mean over the seeds at every epoch (over the runs that reached it).
fn training_curves(runs: &[&SweepRun]) -> Vec<Curve> {
    let runs: Vec<&&SweepRun> = runs
        .iter()
        .filter(|r| r.curve.iter().any(|(_, y)| y.is_finite()))
        .collect();
    let pairs: std::collections::BTreeSet<(u64, u64)> = runs
        .iter()
        .map(|r| (r.row.split_seed, r.row.seed))
        .collect();
    if pairs.len() <= MOST_PAIR_PANELS {
        return runs
            .iter()
            .map(|r| {
                (
                    r.row.arm_name(),
                    format!("split {} · seed {}", r.row.split_seed, r.row.seed),
                    r.curve.clone(),
                )
            })
            .collect();
    }
    // (split, arm) -> epoch -> (sum, count), in order of first appearance.
    let mut order: Vec<(u64, String)> = Vec::new();
    let mut sums: std::collections::HashMap<
        (u64, String),
        std::collections::BTreeMap<usize, (f64, usize)>,
    > = std::collections::HashMap::new();
    let mut seeds: std::collections::HashMap<u64, std::collections::BTreeSet<u64>> =
        std::collections::HashMap::new();
    for r in &runs {
        let key = (r.row.split_seed, r.row.arm_name());
        if !sums.contains_key(&key) {
            order.push(key.clone());
        }
        seeds
            .entry(r.row.split_seed)
            .or_default()
            .insert(r.row.seed);
        let by_epoch = sums.entry(key).or_default();
        for &(e, y) in r.curve.iter().filter(|(_, y)| y.is_finite()) {
            let cell = by_epoch.entry(e).or_insert((0.0, 0));
            cell.0 += y;
            cell.1 += 1;
        }
    }
    order
        .into_iter()
        .map(|key| {
            let points = sums[&key]
                .iter()
                .map(|(&e, &(sum, n))| (e, sum / n as f64))
                .collect();
            let n = seeds[&key.0].len();
            (
                key.1,
                format!("split {} · mean of {n} seeds", key.0),
                points,
            )
        })
        .collect()
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

    /// Up to nine pairs the figure has a line per run; beyond, a panel per
    /// split with each named arm's mean over the seeds at each epoch.
    #[test]
    fn many_pairs_are_drawn_as_split_means_by_arm() {
        let mut runs = Vec::new();
        for split in 0..12u64 {
            for seed in 0..2u64 {
                for (arm, lift) in [("gated-linear", 0.1), ("restart", 0.0)] {
                    let mut r = run(Variant::Restart, seed, 0.9);
                    r.row.arm = arm.into();
                    r.row.split_seed = split;
                    r.curve = (1..=3 + seed as usize)
                        .map(|e| (e, lift + 0.01 * e as f64 + 0.1 * seed as f64))
                        .collect();
                    runs.push(r);
                }
            }
        }
        let refs: Vec<&SweepRun> = runs.iter().collect();
        let lines = training_curves(&refs);
        assert_eq!(lines.len(), 24, "12 splits x 2 arms");
        let (arm, panel, points) = &lines[0];
        assert_eq!(
            (arm.as_str(), panel.as_str()),
            ("gated-linear", "split 0 · mean of 2 seeds")
        );
        // Epochs 1-3: both seeds (mean offset 0.05); epoch 4: seed 1 only.
        let want = [(1, 0.16), (2, 0.17), (3, 0.18), (4, 0.24)];
        assert_eq!(points.len(), 4);
        for ((e, y), (we, wy)) in points.iter().zip(want) {
            assert_eq!(*e, we);
            assert!((y - wy).abs() < 1e-12, "{points:?}");
        }
        let few: Vec<&SweepRun> = runs.iter().filter(|r| r.row.split_seed < 4).collect();
        let lines = training_curves(&few);
        assert_eq!(lines.len(), 16, "8 pairs: a line per run");
        assert_eq!(lines[0].1, "split 0 · seed 0");
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
