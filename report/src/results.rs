//! `Results.csv`: one row per run, the table people open first and the
//! one sweep reports are computed from. Written and read with the `csv`
//! crate through one serde type, so the writer's quoting is the reader's.

use common::spec::{Arch, Finetune, JobSpec, Variant};
use common::summary::RunSummary;
use serde::{Deserialize, Serialize};

use crate::ReportError;

/// One run's row. Field order is column order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsRow {
    pub job_id: String,
    pub sweep: String,
    pub model: String,
    pub arch: Arch,
    pub finetune: Finetune,
    pub variant: Variant,
    /// The run's arm: the sweep's `[arms.<name>]`, else the variant
    /// (empty in tables written before arms had names).
    #[serde(default)]
    pub arm: String,
    pub seed: u64,
    /// The data split's seed (`data.split.seed`): runs pair on (split_seed, seed).
    #[serde(default)]
    pub split_seed: u64,
    /// Test scores at the validation-selected epoch.
    pub accuracy: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    /// Validation scores at that epoch.
    #[serde(default)]
    pub val_accuracy: f64,
    #[serde(default)]
    pub val_macro_f1: f64,
    /// Test and validation scores with the dendrite terms knocked out
    /// (empty for runs without dendrites).
    #[serde(default)]
    pub knockout_accuracy: Option<f64>,
    #[serde(default)]
    pub knockout_macro_f1: Option<f64>,
    #[serde(default)]
    pub knockout_val_accuracy: Option<f64>,
    #[serde(default)]
    pub knockout_val_macro_f1: Option<f64>,
    /// The same with each dendrite term replaced by its training-split
    /// mean (mean ablation).
    #[serde(default)]
    pub mean_ablated_accuracy: Option<f64>,
    #[serde(default)]
    pub mean_ablated_macro_f1: Option<f64>,
    #[serde(default)]
    pub mean_ablated_val_accuracy: Option<f64>,
    #[serde(default)]
    pub mean_ablated_val_macro_f1: Option<f64>,
    pub latency_b1_p50_ms: f64,
    pub latency_b1_p95_ms: f64,
    pub throughput_b64_per_s: f64,
    pub total_params: usize,
    pub trainable_params: usize,
    pub dendrites: usize,
    pub dendrite_params: usize,
    pub epochs: usize,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub config_hash: String,
    pub comparison_group: String,
}

/// `x` rounded to `digits` decimals (the table shows no false precision).
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl ResultsRow {
    /// The row of a finished run of `spec`.
    pub fn new(spec: &JobSpec, s: &RunSummary) -> Self {
        ResultsRow {
            job_id: s.job_id.clone(),
            sweep: s.sweep.clone(),
            model: s.model.clone(),
            arch: spec.model.arch,
            finetune: spec.model.finetune,
            variant: spec.variant,
            arm: spec.arm_name(),
            seed: spec.seed,
            split_seed: spec.data.split.seed,
            accuracy: round(s.test.accuracy, 6),
            macro_f1: round(s.test.macro_f1, 6),
            weighted_f1: round(s.test.weighted_f1, 6),
            val_accuracy: round(s.val.accuracy, 6),
            val_macro_f1: round(s.val.macro_f1, 6),
            knockout_accuracy: s.knockout.as_ref().map(|k| round(k.test.accuracy, 6)),
            knockout_macro_f1: s.knockout.as_ref().map(|k| round(k.test.macro_f1, 6)),
            knockout_val_accuracy: s.knockout.as_ref().map(|k| round(k.val.accuracy, 6)),
            knockout_val_macro_f1: s.knockout.as_ref().map(|k| round(k.val.macro_f1, 6)),
            mean_ablated_accuracy: ablated(s).map(|a| round(a.test.accuracy, 6)),
            mean_ablated_macro_f1: ablated(s).map(|a| round(a.test.macro_f1, 6)),
            mean_ablated_val_accuracy: ablated(s).map(|a| round(a.val.accuracy, 6)),
            mean_ablated_val_macro_f1: ablated(s).map(|a| round(a.val.macro_f1, 6)),
            latency_b1_p50_ms: round(s.speed.latency_b1_p50_ms, 3),
            latency_b1_p95_ms: round(s.speed.latency_b1_p95_ms, 3),
            throughput_b64_per_s: round(s.speed.throughput_b64_per_s, 2),
            total_params: s.total_params,
            trainable_params: s.trainable_params,
            dendrites: s.dendrites,
            dendrite_params: s.dendrite_params,
            epochs: s.epochs_run,
            best_epoch: s.best_epoch,
            train_seconds: round(s.train_seconds, 1),
            config_hash: s.config_hash.clone(),
            comparison_group: spec.comparison_group(),
        }
    }

    /// The arm the run counts in: its named arm, else its variant.
    pub fn arm_name(&self) -> String {
        if self.arm.is_empty() {
            self.variant.to_string()
        } else {
            self.arm.clone()
        }
    }
}

fn ablated(s: &RunSummary) -> Option<&common::summary::Ablated> {
    s.knockout.as_ref()?.mean_ablated.as_ref()
}

/// Serialises records (one serde type) as CSV with a header line.
pub(crate) fn to_csv<T: Serialize>(what: &'static str, rows: &[T]) -> Result<Vec<u8>, ReportError> {
    let encode = |message: String| ReportError::Encode { what, message };
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| encode(e.to_string()))?;
    }
    w.into_inner().map_err(|e| encode(e.to_string()))
}

/// The `Results.csv` text of some rows (header included, even when empty).
pub fn write(rows: &[ResultsRow]) -> Result<Vec<u8>, ReportError> {
    let encode = |e: &dyn std::fmt::Display| ReportError::Encode {
        what: "Results.csv",
        message: e.to_string(),
    };
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    w.write_record(HEADER).map_err(|e| encode(&e))?;
    for r in rows {
        w.serialize(r).map_err(|e| encode(&e))?;
    }
    w.into_inner().map_err(|e| encode(&e))
}

/// The columns of `Results.csv`, in order.
pub const HEADER: [&str; 34] = [
    "job_id",
    "sweep",
    "model",
    "arch",
    "finetune",
    "variant",
    "arm",
    "seed",
    "split_seed",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "val_accuracy",
    "val_macro_f1",
    "knockout_accuracy",
    "knockout_macro_f1",
    "knockout_val_accuracy",
    "knockout_val_macro_f1",
    "mean_ablated_accuracy",
    "mean_ablated_macro_f1",
    "mean_ablated_val_accuracy",
    "mean_ablated_val_macro_f1",
    "latency_b1_p50_ms",
    "latency_b1_p95_ms",
    "throughput_b64_per_s",
    "total_params",
    "trainable_params",
    "dendrites",
    "dendrite_params",
    "epochs",
    "best_epoch",
    "train_seconds",
    "config_hash",
    "comparison_group",
];

/// Reads a `Results.csv`; `file` names it in errors, which also give the
/// line and the column at fault.
pub fn read(file: &str, bytes: &[u8]) -> Result<Vec<ResultsRow>, ReportError> {
    let mut r = csv::Reader::from_reader(bytes);
    let headers = r
        .headers()
        .map_err(|e| ReportError::Read {
            file: file.to_string(),
            message: e.to_string(),
        })?
        .clone();
    let mut rows = Vec::new();
    for got in r.deserialize::<ResultsRow>() {
        rows.push(got.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            let column = match e.kind() {
                csv::ErrorKind::Deserialize { err, .. } => err
                    .field()
                    .and_then(|i| headers.get(i as usize))
                    .map(|c| format!(", column `{c}`"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            ReportError::Read {
                file: file.to_string(),
                message: format!("line {line}{column}: {e}"),
            }
        })?);
    }
    Ok(rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row with the given identity and scores, for tests.
    pub(crate) fn row(job: &str, variant: Variant, seed: u64, group: &str, acc: f64) -> ResultsRow {
        ResultsRow {
            job_id: job.into(),
            sweep: "s".into(),
            model: "m, \"quoted\"".into(),
            arch: Arch::Bert,
            finetune: Finetune::Full,
            variant,
            arm: variant.to_string(),
            seed,
            split_seed: 0,
            accuracy: acc,
            macro_f1: acc - 0.1,
            weighted_f1: acc,
            val_accuracy: acc,
            val_macro_f1: acc - 0.1,
            knockout_accuracy: (variant == Variant::Dendritic).then_some(acc - 0.01),
            knockout_macro_f1: (variant == Variant::Dendritic).then_some(acc - 0.11),
            knockout_val_accuracy: None,
            knockout_val_macro_f1: None,
            mean_ablated_accuracy: (variant == Variant::Dendritic).then_some(acc - 0.005),
            mean_ablated_macro_f1: (variant == Variant::Dendritic).then_some(acc - 0.105),
            mean_ablated_val_accuracy: None,
            mean_ablated_val_macro_f1: None,
            latency_b1_p50_ms: 1.5,
            latency_b1_p95_ms: 2.25,
            throughput_b64_per_s: 100.0,
            total_params: 100,
            trainable_params: 10,
            dendrites: usize::from(variant == Variant::Dendritic),
            dendrite_params: if variant == Variant::Dendritic { 10 } else { 0 },
            epochs: 3,
            best_epoch: 2,
            train_seconds: 10.5,
            config_hash: "abc".into(),
            comparison_group: group.into(),
        }
    }

    #[test]
    fn round_trip_keeps_every_field_and_quoting() {
        let rows = vec![
            row("a", Variant::Baseline, 0, "g", 0.9),
            row("b", Variant::Dendritic, 0, "g", 0.925),
        ];
        let bytes = write(&rows).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.lines().next().unwrap(), HEADER.join(","));
        assert!(text.contains("\"m, \"\"quoted\"\"\""), "{text}");
        assert_eq!(read("Results.csv", &bytes).unwrap(), rows);
    }

    #[test]
    fn empty_table_has_the_header() {
        let bytes = write(&[]).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap().trim(),
            HEADER.join(",")
        );
        assert!(read("x", &bytes).unwrap().is_empty());
    }

    #[test]
    fn bad_values_name_file_line_and_column() {
        let text = String::from_utf8(write(&[row("a", Variant::Baseline, 0, "g", 0.9)]).unwrap())
            .unwrap()
            .replace(",0.9,", ",x,");
        let e = read("runs/Results.csv", text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs/Results.csv"), "{e}");
        assert!(e.contains("line 2") && e.contains("`accuracy`"), "{e}");
        let e = read("r.csv", b"job_id\nx\n").unwrap_err().to_string();
        assert!(e.contains("r.csv") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn rounding() {
        assert_eq!(round(0.123_456_789, 6), 0.123_457);
        assert_eq!(round(12.345, 1), 12.3);
    }
}
