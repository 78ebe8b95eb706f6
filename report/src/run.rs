//! A finished run's files, rendered from its [`RunSummary`]: `Results.csv`,
//! `metrics.json`, `spec.json`, `history.csv`, the training-curve and
//! confusion-matrix PNGs and, for dendritic runs, the `PAI/` folder
//! (`PAI.png` and the tables named as the reference library names them).
//! A validation's files come from its [`ValidationSummary`].

use common::artifacts::files;
use common::spec::JobSpec;
use common::summary::{EpochRecord, RunSummary, SpecFile, ValidationSummary};
use serde::Serialize;

use crate::plots::{self, CurvePoint, LayerSeries, PaiData, PaiEpoch};
use crate::results::{self, round, to_csv, ResultsRow};
use crate::{Files, ReportError};

fn json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, ReportError> {
    serde_json::to_vec_pretty(v).map_err(|e| ReportError::Encode {
        what,
        message: e.to_string(),
    })
}

/// `x` with `digits` significant digits (learning rates).
fn significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let magnitude = x.abs().log10().floor() as i32;
    round(x, digits - 1 - magnitude)
}

/// A row of `history.csv`.
#[derive(Serialize)]
struct HistoryRow {
    epoch: usize,
    train_loss: f64,
    val_loss: f64,
    val_accuracy: f64,
    val_macro_f1: f64,
    test_score: Option<f64>,
    lr: f64,
    seconds: f64,
    improved: bool,
    discarded: bool,
    dendrites: usize,
    dendrite_params: usize,
    total_params: usize,
}

impl From<&EpochRecord> for HistoryRow {
    fn from(r: &EpochRecord) -> Self {
        HistoryRow {
            epoch: r.epoch,
            train_loss: round(r.train_loss, 6),
            val_loss: round(r.val_loss, 6),
            val_accuracy: round(r.val_accuracy, 6),
            val_macro_f1: round(r.val_macro_f1, 6),
            test_score: r.test_score.map(|t| round(t, 6)),
            lr: significant(r.lr, 4),
            seconds: round(r.seconds, 2),
            improved: r.improved,
            discarded: r.discarded,
            dendrites: r.dendrites,
            dendrite_params: r.dendrite_params,
            total_params: r.total_params,
        }
    }
}

/// Every file of a run except the trained parameters (the worker writes
/// those, from tensors). Dendritic runs also get [`pai_files`].
pub fn run_files(spec: &JobSpec, s: &RunSummary) -> Result<Files, ReportError> {
    let spec_file = SpecFile {
        job_id: s.job_id.clone(),
        sweep: s.sweep.clone(),
        config_hash: s.config_hash.clone(),
        spec: spec.clone(),
    };
    let history: Vec<HistoryRow> = s.history.iter().map(HistoryRow::from).collect();
    let points: Vec<CurvePoint> = s
        .history
        .iter()
        .map(|r| CurvePoint {
            epoch: r.epoch,
            train_loss: r.train_loss,
            val_loss: r.val_loss,
            val_accuracy: r.val_accuracy,
            val_macro_f1: r.val_macro_f1,
        })
        .collect();
    let title = format!("{} ({}, seed {})", s.model, spec.variant, spec.seed);
    let labels: Vec<String> = s.test.per_class.iter().map(|c| c.label.clone()).collect();
    let matrix_title = format!("test set, best epoch {} (n = {})", s.best_epoch, s.test.n);
    Ok(vec![
        (
            files::RESULTS_CSV.into(),
            results::write(&[ResultsRow::new(spec, s)])?,
        ),
        (files::METRICS_JSON.into(), json("metrics.json", s)?),
        (files::SPEC_JSON.into(), json("spec.json", &spec_file)?),
        (files::HISTORY_CSV.into(), to_csv("history.csv", &history)?),
        (
            files::CURVES_PNG.into(),
            plots::training_curves(&title, &points)?,
        ),
        (
            files::CONFUSION_PNG.into(),
            plots::confusion_matrix(&matrix_title, &labels, &s.test.confusion)?,
        ),
    ])
}

/// `validation.json` and `confusion_matrix.png` of a validation.
pub fn validation_files(v: &ValidationSummary) -> Result<Files, ReportError> {
    let labels: Vec<String> = v.scores.per_class.iter().map(|c| c.label.clone()).collect();
    let title = format!("{} split of {} (n = {})", v.split, v.source, v.scores.n);
    Ok(vec![
        (files::VALIDATION_JSON.into(), json("validation.json", v)?),
        (
            files::CONFUSION_PNG.into(),
            plots::confusion_matrix(&title, &labels, &v.scores.confusion)?,
        ),
    ])
}

/// Per architecture (dendrite count): the best validation score, its epoch,
/// the parameter count and the test score at that epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchScore {
    pub dendrites: usize,
    pub total_params: usize,
    pub best_epoch: usize,
    #[serde(rename = "best_val_score")]
    pub val_score: f64,
    pub test_score: Option<f64>,
}

/// The headline table of a tracked run (pure): one row per architecture
/// that was kept, counting kept epochs only (epochs thrown away by a
/// restore, e.g. a failed dendrite set, are not an architecture's score).
pub fn best_arch_scores(history: &[EpochRecord]) -> Vec<ArchScore> {
    let mut out: Vec<ArchScore> = Vec::new();
    for r in history.iter().filter(|r| !r.discarded) {
        match out.iter_mut().find(|a| a.dendrites == r.dendrites) {
            Some(a) if r.val_score > a.val_score => {
                a.best_epoch = r.epoch;
                a.val_score = r.val_score;
                a.test_score = r.test_score;
                a.total_params = r.total_params;
            }
            Some(_) => {}
            None => out.push(ArchScore {
                dendrites: r.dendrites,
                total_params: r.total_params,
                best_epoch: r.epoch,
                val_score: r.val_score,
                test_score: r.test_score,
            }),
        }
    }
    out.sort_by_key(|a| a.dendrites);
    out
}

#[derive(Serialize)]
struct ScoreRow {
    epoch: usize,
    val_score: f64,
    val_running_score: f64,
    test_score: Option<f64>,
    train_loss: f64,
    val_loss: f64,
    improved: bool,
    discarded: bool,
    dendrites: usize,
}

#[derive(Serialize)]
struct TimeRow {
    epoch: usize,
    train_seconds: f64,
    val_seconds: f64,
}

#[derive(Serialize)]
struct LrRow {
    epoch: usize,
    learning_rate: f64,
}

#[derive(Serialize)]
struct ParamRow {
    epoch: usize,
    dendrites: usize,
    dendrite_params: usize,
    total_params: usize,
}

#[derive(Serialize)]
struct SwitchRow {
    switch: usize,
    epoch: usize,
    dendrites_after: Option<usize>,
}

/// The `PAI/` tables of a run.
fn pai_tables(s: &RunSummary) -> Result<Files, ReportError> {
    let h = &s.history;
    let scores: Vec<ScoreRow> = h
        .iter()
        .map(|r| ScoreRow {
            epoch: r.epoch,
            val_score: round(r.val_score, 6),
            val_running_score: round(r.val_running, 6),
            test_score: r.test_score.map(|t| round(t, 6)),
            train_loss: round(r.train_loss, 6),
            val_loss: round(r.val_loss, 6),
            improved: r.improved,
            discarded: r.discarded,
            dendrites: r.dendrites,
        })
        .collect();
    let times: Vec<TimeRow> = h
        .iter()
        .map(|r| TimeRow {
            epoch: r.epoch,
            train_seconds: round(r.train_seconds, 3),
            val_seconds: round(r.val_seconds, 3),
        })
        .collect();
    let lrs: Vec<LrRow> = h
        .iter()
        .map(|r| LrRow {
            epoch: r.epoch,
            learning_rate: significant(r.lr, 7),
        })
        .collect();
    let params: Vec<ParamRow> = h
        .iter()
        .map(|r| ParamRow {
            epoch: r.epoch,
            dendrites: r.dendrites,
            dendrite_params: r.dendrite_params,
            total_params: r.total_params,
        })
        .collect();
    let switches: Vec<SwitchRow> = s
        .switch_epochs
        .iter()
        .enumerate()
        .map(|(i, &e)| SwitchRow {
            switch: i + 1,
            epoch: e,
            dendrites_after: h.iter().find(|r| r.epoch == e + 1).map(|r| r.dendrites),
        })
        .collect();
    let arch: Vec<ArchScore> = best_arch_scores(h)
        .into_iter()
        .map(|a| ArchScore {
            val_score: round(a.val_score, 6),
            test_score: a.test_score.map(|t| round(t, 6)),
            ..a
        })
        .collect();
    Ok(vec![
        ("PAI/Scores.csv".into(), to_csv("Scores.csv", &scores)?),
        ("PAI/Times.csv".into(), to_csv("Times.csv", &times)?),
        (
            "PAI/learning_rate.csv".into(),
            to_csv("learning_rate.csv", &lrs)?,
        ),
        (
            "PAI/switch_epochs.csv".into(),
            csv_or_header(
                "switch_epochs.csv",
                &switches,
                "switch,epoch,dendrites_after",
            )?,
        ),
        (
            "PAI/param_counts.csv".into(),
            to_csv("param_counts.csv", &params)?,
        ),
        (
            "PAI/best_arch_scores.csv".into(),
            to_csv("best_arch_scores.csv", &arch)?,
        ),
    ])
}

/// A table that keeps its header when it has no rows.
fn csv_or_header<T: Serialize>(
    what: &'static str,
    rows: &[T],
    header: &str,
) -> Result<Vec<u8>, ReportError> {
    if rows.is_empty() {
        Ok(format!("{header}\n").into_bytes())
    } else {
        to_csv(what, rows)
    }
}

/// What `PAI.png` draws, from the run's records.
fn pai_data(spec: &JobSpec, s: &RunSummary) -> PaiData {
    let restart = spec.variant == common::spec::Variant::Restart;
    let h = &s.history;
    let mut layers: Vec<LayerSeries> = Vec::new();
    for r in h {
        for (name, g) in &r.gates {
            match layers.iter_mut().find(|l| &l.layer == name) {
                Some(l) => l.points.push((r.epoch, *g)),
                None => layers.push(LayerSeries {
                    layer: name.clone(),
                    points: vec![(r.epoch, *g)],
                }),
            }
        }
    }
    PaiData {
        title: format!(
            "{} {} split {} seed {}: {} {} in the best network",
            s.model,
            spec.variant,
            spec.data.split.seed,
            spec.seed,
            s.dendrites,
            if spec.variant == common::spec::Variant::Branch {
                "linear branch set(s)"
            } else {
                "dendrite set(s)"
            }
        ),
        score_name: spec.train.metric.label().to_string(),
        epochs: h
            .iter()
            .map(|r| PaiEpoch {
                epoch: r.epoch,
                val: r.val_score,
                val_running: r.val_running,
                train: None,
                test: r.test_score,
                lr: r.lr,
                lr_min: r.lr_min,
                lr_max: r.lr_max,
                train_seconds: r.train_seconds,
                val_seconds: r.val_seconds,
                discarded: r.discarded,
            })
            .collect(),
        switch_epochs: s.switch_epochs.clone(),
        best_epoch: Some(s.best_epoch),
        last_improved_epoch: s.last_improved_epoch(),
        layers,
        layer_quantity: if spec.variant == common::spec::Variant::Branch {
            "branches: Σ_j mean |W_j|"
        } else {
            "gates: channel mean of Σ_j |T_j|"
        }
        .to_string(),
        no_layers_note: if restart {
            "no dendrites in this arm (restores and restarts only)"
        } else {
            "no dendrites added"
        }
        .to_string(),
        switch_label: match spec.variant {
            common::spec::Variant::Restart => "restore + restart (no set added)",
            common::spec::Variant::Branch => "linear branch added",
            _ => "dendrites added",
        }
        .to_string(),
        added_lr_scale: spec.dendrites.lr.map(|lr| lr / spec.train.lr),
    }
}

/// The `PAI/` files of a run: the tables and `PAI.png`.
pub fn pai_files(spec: &JobSpec, s: &RunSummary) -> Result<Files, ReportError> {
    let mut out = pai_tables(s)?;
    out.push(("PAI/PAI.png".into(), plots::pai_figure(&pai_data(spec, s))?));
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use common::metrics::scores;
    use common::summary::{LoadStats, Speed, TrackerState};

    pub(crate) fn rec(epoch: usize, dendrites: usize, val: f64, test: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: 0.5 / epoch as f64,
            val_loss: 0.6 / epoch as f64,
            val_accuracy: val,
            val_macro_f1: val,
            val_score: val,
            val_running: val,
            test_score: Some(test),
            lr: 4.8512345e-5,
            lr_min: 1e-5,
            lr_max: 5e-5,
            skipped_steps: 0,
            seconds: 1.0,
            train_seconds: 0.75,
            val_seconds: 0.25,
            improved: false,
            improved_current: epoch == 2,
            discarded: false,
            dendrites,
            dendrite_params: dendrites * 10,
            total_params: 100 + dendrites * 10,
            gates: if dendrites > 0 {
                vec![("classifier".into(), 1e-3 * epoch as f64)]
            } else {
                vec![]
            },
        }
    }

    pub(crate) fn summary() -> RunSummary {
        let labels = ["negative", "neutral", "positive"];
        let test = scores(&[0, 1, 2, 2], &[0, 1, 2, 1], &labels);
        RunSummary {
            job_id: "s-000-abc".into(),
            sweep: "s".into(),
            config_hash: "abc".into(),
            model: "m".into(),
            device: "Cpu".into(),
            data: LoadStats::default(),
            split_sizes: [10, 4, 4],
            history: vec![
                rec(1, 0, 0.5, 0.4),
                rec(2, 0, 0.6, 0.55),
                rec(3, 1, 0.7, 0.65),
            ],
            best_epoch: 3,
            epochs_run: 3,
            optimizer_steps: 9,
            val: test.clone(),
            test,
            speed: Speed {
                latency_b1_p50_ms: 1.23456,
                latency_b1_p95_ms: 2.0,
                latency_samples: 50,
                throughput_b64_per_s: 99.999,
            },
            total_params: 110,
            trainable_params: 20,
            dendrites: 1,
            dendrite_params: 10,
            dendrite_layers: vec!["classifier".into()],
            switch_epochs: vec![2],
            tracker: TrackerState::default(),
            train_seconds: 3.12345,
            wall_seconds: 4.0,
            test_labels: vec![0, 1, 2, 1],
            test_predictions: vec![0, 1, 2, 2],
            knockout: None,
            resumed_after: None,
            notes: Vec::new(),
            arithmetic: Some(common::summary::Arithmetic {
                cpu: "Test CPU".into(),
                gemm: "openblas".into(),
                threads: 2,
            }),
        }
    }

    pub(crate) fn spec() -> JobSpec {
        let mut s: JobSpec = serde_json::from_value(serde_json::json!({
            "model": {"arch": "bert", "path": "/m"},
            "data": {"path": "/d"},
        }))
        .unwrap();
        s.variant = common::spec::Variant::Dendritic;
        s
    }

    fn file<'a>(files: &'a Files, name: &str) -> &'a [u8] {
        &files.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn run_files_keep_their_columns_and_fields() {
        let (spec, s) = (spec(), summary());
        let files = run_files(&spec, &s).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Results.csv",
                "metrics.json",
                "spec.json",
                "history.csv",
                "training_curves.png",
                "confusion_matrix.png"
            ]
        );
        let rows = results::read("Results.csv", file(&files, "Results.csv")).unwrap();
        assert_eq!(rows, vec![ResultsRow::new(&spec, &s)]);
        assert_eq!(rows[0].latency_b1_p50_ms, 1.235);
        assert_eq!(rows[0].train_seconds, 3.1);
        let back: RunSummary = serde_json::from_slice(file(&files, "metrics.json")).unwrap();
        assert_eq!(back, s);
        let sf: SpecFile = serde_json::from_slice(file(&files, "spec.json")).unwrap();
        assert_eq!((sf.spec, sf.job_id), (spec, s.job_id.clone()));
        let hist = String::from_utf8(file(&files, "history.csv").to_vec()).unwrap();
        let mut lines = hist.lines();
        assert_eq!(
            lines.next().unwrap(),
            "epoch,train_loss,val_loss,val_accuracy,val_macro_f1,test_score,lr,seconds,improved,discarded,dendrites,dendrite_params,total_params"
        );
        assert_eq!(
            lines.next().unwrap(),
            "1,0.5,0.6,0.5,0.5,0.4,0.00004851,1.0,false,false,0,0,100"
        );
        for png in ["training_curves.png", "confusion_matrix.png"] {
            assert_eq!(&file(&files, png)[1..4], b"PNG");
        }
    }

    #[test]
    fn pai_tables_match_the_history() {
        let files = pai_files(&spec(), &summary()).unwrap();
        let text = |n: &str| String::from_utf8(file(&files, n).to_vec()).unwrap();
        assert_eq!(
            text("PAI/Scores.csv").lines().next().unwrap(),
            "epoch,val_score,val_running_score,test_score,train_loss,val_loss,improved,discarded,dendrites"
        );
        assert_eq!(
            text("PAI/switch_epochs.csv"),
            "switch,epoch,dendrites_after\n1,2,1\n"
        );
        assert_eq!(
            text("PAI/best_arch_scores.csv"),
            "dendrites,total_params,best_epoch,best_val_score,test_score\n0,100,2,0.6,0.55\n1,110,3,0.7,0.65\n"
        );
        assert_eq!(text("PAI/Times.csv").lines().nth(1).unwrap(), "1,0.75,0.25");
        assert_eq!(
            text("PAI/learning_rate.csv").lines().nth(1).unwrap(),
            "1,0.00004851235"
        );
        assert_eq!(&file(&files, "PAI/PAI.png")[1..4], b"PNG");
        let mut s = summary();
        s.switch_epochs.clear();
        let files = pai_files(&spec(), &s).unwrap();
        assert_eq!(
            file(&files, "PAI/switch_epochs.csv"),
            b"switch,epoch,dendrites_after\n"
        );
    }

    #[test]
    fn arch_scores_take_best_validation_epoch_per_architecture() {
        let h = [
            rec(1, 0, 0.5, 0.4),
            rec(2, 0, 0.6, 0.55),
            rec(3, 1, 0.58, 0.6),
            rec(4, 1, 0.7, 0.65),
        ];
        let a = best_arch_scores(&h);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].best_epoch, a[0].test_score), (2, Some(0.55)));
        assert_eq!((a[1].best_epoch, a[1].total_params), (4, 110));
    }

    #[test]
    fn arch_scores_count_kept_epochs_only() {
        // A failed set (epochs 3-4, one dendrite) was thrown away by a
        // restore; a retried set (epoch 5) was kept.
        let mut h = vec![
            rec(1, 0, 0.5, 0.4),
            rec(2, 0, 0.6, 0.55),
            rec(3, 1, 0.9, 0.9),
            rec(4, 1, 0.8, 0.8),
            rec(5, 1, 0.62, 0.6),
        ];
        h[2].discarded = true;
        h[3].discarded = true;
        let a = best_arch_scores(&h);
        assert_eq!(a.len(), 2);
        assert_eq!((a[1].best_epoch, a[1].val_score), (5, 0.62));
        h[2].discarded = false;
        h[3].discarded = false;
        h.pop();
        h[2].discarded = true;
        h[3].discarded = true;
        assert_eq!(
            best_arch_scores(&h).len(),
            1,
            "an architecture never kept has no row"
        );
    }

    /// The PAI figure names what the arm adds: a branch arm's sets are
    /// linear branches, not dendrites.
    #[test]
    fn pai_titles_name_the_arms_sets() {
        let mut spec = spec();
        spec.variant = common::spec::Variant::Dendritic;
        let d = pai_data(&spec, &summary());
        assert!(
            d.title.ends_with("dendrite set(s) in the best network"),
            "{}",
            d.title
        );
        spec.variant = common::spec::Variant::Branch;
        let b = pai_data(&spec, &summary());
        assert!(
            b.title
                .ends_with("linear branch set(s) in the best network"),
            "{}",
            b.title
        );
        assert_eq!(b.layer_quantity, "branches: Σ_j mean |W_j|");
        assert_eq!(b.added_lr_scale, None);
        spec.train.lr = 2e-5;
        spec.dendrites.lr = Some(1e-3);
        assert_eq!(pai_data(&spec, &summary()).added_lr_scale, Some(50.0));
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(4.8512345e-5, 4), 4.851e-5);
        assert_eq!(significant(0.0, 4), 0.0);
        assert_eq!(significant(123456.0, 2), 120000.0);
    }
}
