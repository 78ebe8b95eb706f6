//! Renders a finished run into files: `Results.csv`, `metrics.json`,
//! `spec.json`, `history.csv`, training-curve and confusion-matrix PNGs,
//! and the trained parameters as safetensors with the spec in their
//! metadata. Returns bytes; writing them anywhere is the caller's job.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use common::artifacts::files;
use common::spec::{JobSpec, Variant};

use super::job::{JobError, RunIds, RunSummary};
use super::plots::{self, CurvePoint};
use super::train::tracker::TrackerState;
use super::train::EpochRecord;

/// Header of `Results.csv` (one row per run).
pub const RESULTS_HEADER: &str = "job_id,sweep,model,arch,finetune,variant,seed,accuracy,macro_f1,weighted_f1,latency_b1_p50_ms,latency_b1_p95_ms,throughput_b64_per_s,total_params,trainable_params,dendrites,dendrite_params,epochs,best_epoch,train_seconds,config_hash,comparison_group";

/// The `Results.csv` row of a run.
pub fn results_row(spec: &JobSpec, s: &RunSummary) -> String {
    let variant = match spec.variant {
        Variant::Baseline => "baseline",
        Variant::Dendritic => "dendritic",
    };
    format!(
        "{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.3},{:.3},{:.2},{},{},{},{},{},{},{:.1},{},{}",
        csv_field(&s.job_id),
        csv_field(&s.sweep),
        csv_field(&s.model),
        enum_name(&spec.model.arch),
        enum_name(&spec.model.finetune),
        variant,
        spec.seed,
        s.test.accuracy,
        s.test.macro_f1,
        s.test.weighted_f1,
        s.speed.latency_b1_p50_ms,
        s.speed.latency_b1_p95_ms,
        s.speed.throughput_b64_per_s,
        s.total_params,
        s.trainable_params,
        s.dendrites,
        s.dendrite_params,
        s.epochs_run,
        s.best_epoch,
        s.train_seconds,
        s.config_hash,
        spec.comparison_group(),
    )
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Every file of a run except the trained parameters.
pub fn run_files(spec: &JobSpec, s: &RunSummary) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    out.push((
        files::RESULTS_CSV.to_string(),
        format!("{RESULTS_HEADER}\n{}\n", results_row(spec, s)).into_bytes(),
    ));
    out.push((
        files::METRICS_JSON.to_string(),
        serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?,
    ));
    let spec_doc = serde_json::json!({
        "job_id": s.job_id,
        "sweep": s.sweep,
        "config_hash": s.config_hash,
        "spec": spec,
    });
    out.push((
        files::SPEC_JSON.to_string(),
        serde_json::to_vec_pretty(&spec_doc).map_err(|e| e.to_string())?,
    ));
    let mut hist = String::from(
        "epoch,train_loss,val_loss,val_accuracy,val_macro_f1,test_score,lr,seconds,improved,discarded,dendrites,dendrite_params,total_params\n",
    );
    for r in &s.history {
        hist.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{},{:.3e},{:.2},{},{},{},{},{}\n",
            r.epoch,
            r.train_loss,
            r.val_loss,
            r.val_accuracy,
            r.val_macro_f1,
            opt(r.test_score),
            r.lr,
            r.seconds,
            r.improved,
            r.discarded,
            r.dendrites,
            r.dendrite_params,
            r.total_params
        ));
    }
    out.push((files::HISTORY_CSV.to_string(), hist.into_bytes()));

    let dir = std::env::temp_dir().join(format!(
        "worker-plots-{}-{}",
        std::process::id(),
        common::artifacts::sanitize(&s.job_id)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
    let title = format!(
        "{} ({}, seed {})",
        s.model,
        enum_name(&spec.variant),
        spec.seed
    );
    let curves = dir.join(files::CURVES_PNG);
    plots::training_curves(&curves, &title, &points).map_err(|e| e.to_string())?;
    let confusion = dir.join(files::CONFUSION_PNG);
    let labels: Vec<String> = s.test.per_class.iter().map(|c| c.label.clone()).collect();
    plots::confusion_matrix(
        &confusion,
        &format!("test set, best epoch {} (n = {})", s.best_epoch, s.test.n),
        &labels,
        &s.test.confusion,
    )
    .map_err(|e| e.to_string())?;
    for (name, path) in [
        (files::CURVES_PNG, curves),
        (files::CONFUSION_PNG, confusion),
    ] {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push((name.to_string(), bytes));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// The trained tensors (f32) as safetensors, with the spec and ids in the
/// metadata, so they reload onto the same architecture.
pub fn trained_safetensors(
    trained: &[(String, Tensor)],
    spec: &JobSpec,
    ids: &RunIds,
    tracker: &TrackerState,
    dendrite_layout: &[(String, usize, f64)],
) -> Result<Vec<u8>, JobError> {
    let mut tensors = Vec::with_capacity(trained.len());
    for (name, t) in trained {
        let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| JobError::Artifacts(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let mut meta = HashMap::new();
    meta.insert(
        "spec".to_string(),
        serde_json::to_string(spec).map_err(|e| JobError::Artifacts(e.to_string()))?,
    );
    meta.insert(
        "tracker".to_string(),
        serde_json::to_string(tracker).map_err(|e| JobError::Artifacts(e.to_string()))?,
    );
    let layout: Vec<serde_json::Value> = dendrite_layout
        .iter()
        .map(|(layer, count, _)| serde_json::json!({"layer": layer, "dendrites": count}))
        .collect();
    meta.insert(
        "dendrites".to_string(),
        serde_json::json!({
            "layers": layout,
            "kind": spec.dendrites.kind,
            "rank": spec.dendrites.rank,
            "activation": spec.dendrites.activation,
        })
        .to_string(),
    );
    meta.insert("job_id".to_string(), ids.job_id.to_string());
    meta.insert("sweep".to_string(), ids.sweep.to_string());
    meta.insert("config_hash".to_string(), ids.config_hash.to_string());
    safetensors::serialize(views, Some(meta)).map_err(|e| JobError::Artifacts(e.to_string()))
}

/// `validation.json` and `confusion_matrix.png` of a validation.
pub fn validation_files(
    v: &super::job::ValidationSummary,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = vec![(
        "validation.json".to_string(),
        serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?,
    )];
    let dir = temp_dir(&v.job_id, "validate")?;
    let png = dir.join(files::CONFUSION_PNG);
    let labels: Vec<String> = v.scores.per_class.iter().map(|c| c.label.clone()).collect();
    plots::confusion_matrix(
        &png,
        &format!("{} split of {} (n = {})", v.split, v.source, v.scores.n),
        &labels,
        &v.scores.confusion,
    )
    .map_err(|e| e.to_string())?;
    out.push((
        files::CONFUSION_PNG.to_string(),
        std::fs::read(&png).map_err(|e| format!("{}: {e}", png.display()))?,
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// Per architecture (dendrite count): the best validation score, its epoch,
/// the parameter count and the test score at that epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchScore {
    pub dendrites: usize,
    pub total_params: usize,
    pub best_epoch: usize,
    pub val_score: f64,
    pub test_score: Option<f64>,
}

/// The headline table of a tracked run (pure).
pub fn best_arch_scores(history: &[EpochRecord]) -> Vec<ArchScore> {
    let mut out: Vec<ArchScore> = Vec::new();
    for r in history {
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

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// The `PAI/` files of a run: `PAI.png` and the CSV tables, named as the
/// reference library names them.
pub fn pai_files(spec: &JobSpec, s: &RunSummary) -> Result<Vec<(String, Vec<u8>)>, String> {
    let h = &s.history;
    let mut out = Vec::new();
    let mut scores = String::from("epoch,val_score,val_running_score,test_score,train_loss,val_loss,improved,discarded,dendrites\n");
    let mut times = String::from("epoch,train_seconds,val_seconds\n");
    let mut lrs = String::from("epoch,learning_rate\n");
    let mut params = String::from("epoch,dendrites,dendrite_params,total_params\n");
    for r in h {
        scores.push_str(&format!(
            "{},{:.6},{:.6},{},{:.6},{:.6},{},{},{}\n",
            r.epoch,
            r.val_score,
            r.val_running,
            opt(r.test_score),
            r.train_loss,
            r.val_loss,
            r.improved,
            r.discarded,
            r.dendrites
        ));
        times.push_str(&format!(
            "{},{:.3},{:.3}\n",
            r.epoch, r.train_seconds, r.val_seconds
        ));
        lrs.push_str(&format!("{},{:.6e}\n", r.epoch, r.lr));
        params.push_str(&format!(
            "{},{},{},{}\n",
            r.epoch, r.dendrites, r.dendrite_params, r.total_params
        ));
    }
    let mut switches = String::from("switch,epoch,dendrites_after\n");
    for (i, e) in s.switch_epochs.iter().enumerate() {
        let after = h
            .iter()
            .find(|r| r.epoch == e + 1)
            .map_or(String::new(), |r| r.dendrites.to_string());
        switches.push_str(&format!("{},{},{}\n", i + 1, e, after));
    }
    let mut arch = String::from("dendrites,total_params,best_epoch,best_val_score,test_score\n");
    for a in best_arch_scores(h) {
        arch.push_str(&format!(
            "{},{},{},{:.6},{}\n",
            a.dendrites,
            a.total_params,
            a.best_epoch,
            a.val_score,
            opt(a.test_score)
        ));
    }
    for (name, body) in [
        ("Scores.csv", scores),
        ("Times.csv", times),
        ("learning_rate.csv", lrs),
        ("switch_epochs.csv", switches),
        ("param_counts.csv", params),
        ("best_arch_scores.csv", arch),
    ] {
        out.push((format!("PAI/{name}"), body.into_bytes()));
    }

    let metric = match spec.train.metric {
        common::spec::Metric::Accuracy => "accuracy",
        common::spec::Metric::MacroF1 => "macro-F1",
    };
    let mut layers: Vec<plots::LayerSeries> = Vec::new();
    for r in h {
        for (name, g) in &r.gates {
            match layers.iter_mut().find(|l| &l.layer == name) {
                Some(l) => l.points.push((r.epoch, *g)),
                None => layers.push(plots::LayerSeries {
                    layer: name.clone(),
                    points: vec![(r.epoch, *g)],
                }),
            }
        }
    }
    let data = plots::PaiData {
        title: format!(
            "{} {} seed {}: {} dendrite set(s) in the best network",
            s.model,
            enum_name(&spec.variant),
            spec.seed,
            s.dendrites
        ),
        score_name: metric.to_string(),
        epochs: h
            .iter()
            .map(|r| plots::PaiEpoch {
                epoch: r.epoch,
                val: r.val_score,
                val_running: r.val_running,
                train: None,
                test: r.test_score,
                lr: r.lr,
                train_seconds: r.train_seconds,
                val_seconds: r.val_seconds,
                discarded: r.discarded,
            })
            .collect(),
        switch_epochs: s.switch_epochs.clone(),
        best_epoch: Some(s.best_epoch),
        last_improved_epoch: h.iter().rev().find(|r| r.improved_current).map(|r| r.epoch),
        layers,
        layer_quantity: "mean |T| (gate weight) per layer".to_string(),
    };
    let dir = temp_dir(&s.job_id, "pai")?;
    let png = dir.join("PAI.png");
    plots::pai_figure(&png, &data).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&png).map_err(|e| format!("{}: {e}", png.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    out.push(("PAI/PAI.png".to_string(), bytes));
    Ok(out)
}

fn temp_dir(job: &str, what: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "worker-{what}-{}-{}",
        std::process::id(),
        common::artifacts::sanitize(job)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// One finished run's validation curve, for sweep comparisons.
#[derive(Debug, Clone)]
pub struct RunCurve {
    pub variant: String,
    pub group: String,
    pub seed: u64,
    pub metric: String,
    /// (epoch, validation score)
    pub points: Vec<(usize, f64)>,
}

/// Sweep-level comparison files from the sweep's `Results.csv` text and the
/// runs' histories: `report.md`, `Accuracy_Improvement.png` (paired
/// differences), `variant_comparison.png` and
/// `Dendrite_vs_Baseline_Training.png`, one set per comparison group
/// (suffixed with the group when there are several).
pub fn sweep_files(
    sweep: &str,
    results_csv: &str,
    histories: &[RunCurve],
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let rows = common::report::parse_results(results_csv).map_err(|e| e.to_string())?;
    let groups = common::report::summarize(&rows);
    let mut out = vec![(
        "report.md".to_string(),
        common::report::to_markdown(sweep, &groups).into_bytes(),
    )];
    let dir = temp_dir(sweep, "sweep")?;
    for g in &groups {
        let suffix = if groups.len() > 1 {
            format!("_{}", &g.group[..8.min(g.group.len())])
        } else {
            String::new()
        };
        let mut pngs = Vec::new();
        let variants: Vec<String> = g.variants.iter().map(|v| v.variant.clone()).collect();
        let values: Vec<Vec<f64>> = g
            .variants
            .iter()
            .map(|v| v.accuracy_values.clone())
            .collect();
        let p = dir.join(format!("variant_comparison{suffix}.png"));
        plots::variant_comparison(
            &p,
            &format!("{}: test accuracy per seed", g.model),
            "test accuracy",
            &variants,
            &values,
        )
        .map_err(|e| e.to_string())?;
        pngs.push(p);
        if !g.paired.is_empty() {
            let seeds: Vec<String> = g
                .paired
                .iter()
                .map(|p| format!("seed {}", p.seed))
                .collect();
            let diffs: Vec<f64> = g.paired.iter().map(|p| p.accuracy).collect();
            let p = dir.join(format!("Accuracy_Improvement{suffix}.png"));
            plots::paired_differences(
                &p,
                &format!(
                    "{}: dendritic − baseline test accuracy, same seed and split",
                    g.model
                ),
                "test accuracy",
                &seeds,
                &diffs,
            )
            .map_err(|e| e.to_string())?;
            pngs.push(p);
        }
        let runs: Vec<_> = histories
            .iter()
            .filter(|c| c.group == g.group)
            .map(|c| {
                (
                    c.variant.clone(),
                    format!("seed {}", c.seed),
                    c.points.clone(),
                )
            })
            .collect();
        if !runs.is_empty() {
            let metric = histories
                .first()
                .map(|h| h.metric.clone())
                .unwrap_or_default();
            let p = dir.join(format!("Dendrite_vs_Baseline_Training{suffix}.png"));
            plots::training_comparison(
                &p,
                &format!("{}: validation {metric} per epoch", g.model),
                &metric,
                &runs,
            )
            .map_err(|e| e.to_string())?;
            pngs.push(p);
        }
        for p in pngs {
            let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            out.push((name, bytes));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, dendrites: usize, val: f64, test: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: 0.0,
            val_loss: 0.0,
            val_accuracy: val,
            val_macro_f1: val,
            val_score: val,
            val_running: val,
            test_score: Some(test),
            lr: 0.0,
            seconds: 0.0,
            train_seconds: 0.0,
            val_seconds: 0.0,
            improved: false,
            improved_current: false,
            discarded: false,
            dendrites,
            dendrite_params: dendrites * 10,
            total_params: 100 + dendrites * 10,
            gates: vec![],
        }
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
}
