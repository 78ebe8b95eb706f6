//! Renders a finished run into files: `Results.csv`, `metrics.json`,
//! `spec.json`, `history.csv`, training-curve and confusion-matrix PNGs,
//! and the trained parameters as safetensors with the spec in their
//! metadata. Returns bytes; writing them anywhere is the caller's job.

use std::collections::HashMap;

use candle_core::{DType, Var};
use common::artifacts::files;
use common::spec::{JobSpec, Variant};

use super::job::{JobError, RunIds, RunSummary};
use super::plots::{self, CurvePoint};

/// Header of `Results.csv` (one row per run).
pub const RESULTS_HEADER: &str = "job_id,sweep,model,arch,finetune,variant,seed,accuracy,macro_f1,weighted_f1,latency_b1_p50_ms,latency_b1_p95_ms,throughput_b64_per_s,total_params,trainable_params,epochs,best_epoch,train_seconds,config_hash";

/// The `Results.csv` row of a run.
pub fn results_row(spec: &JobSpec, s: &RunSummary) -> String {
    let variant = match spec.variant {
        Variant::Baseline => "baseline",
        Variant::Dendritic => "dendritic",
    };
    format!(
        "{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.3},{:.3},{:.2},{},{},{},{},{:.1},{}",
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
        s.epochs_run,
        s.best_epoch,
        s.train_seconds,
        s.config_hash,
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
    let mut hist =
        String::from("epoch,train_loss,val_loss,val_accuracy,val_macro_f1,lr,seconds,improved\n");
    for r in &s.history {
        hist.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.3e},{:.2},{}\n",
            r.epoch,
            r.train_loss,
            r.val_loss,
            r.val_accuracy,
            r.val_macro_f1,
            r.lr,
            r.seconds,
            r.improved
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
    trainable: &[(String, Var)],
    spec: &JobSpec,
    ids: &RunIds,
) -> Result<Vec<u8>, JobError> {
    let mut tensors = Vec::with_capacity(trainable.len());
    for (name, var) in trainable {
        let t = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
        let data: Vec<f32> = t.to_vec1()?;
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((name.clone(), var.dims().to_vec(), bytes));
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
    meta.insert("job_id".to_string(), ids.job_id.to_string());
    meta.insert("sweep".to_string(), ids.sweep.to_string());
    meta.insert("config_hash".to_string(), ids.config_hash.to_string());
    safetensors::serialize(views, Some(meta)).map_err(|e| JobError::Artifacts(e.to_string()))
}
