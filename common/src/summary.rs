//! The records a finished run leaves behind, as plain serde types: what
//! training did per epoch ([`EpochRecord`]), what loading the data found
//! ([`LoadStats`]), how fast the trained model is ([`Speed`]), the whole
//! run ([`RunSummary`], saved as `metrics.json`) and a later re-scoring of
//! its parameters ([`ValidationSummary`], saved as `validation.json`).
//! The worker fills them in; the report crate renders them; the producer
//! reads them back. Field names are the JSON field names.

use serde::{Deserialize, Serialize};

pub use crate::metrics::{ClassScores, Scores};
pub use crate::tracker::TrackerState;

/// What loading the data set found besides the examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadStats {
    pub lines: usize,
    pub exact_duplicates: usize,
    /// Sentences dropped because they appear with different labels.
    pub conflicting: usize,
    pub unique: usize,
    /// How the file's bytes were decoded: `latin-1` (the original files)
    /// or `utf-8` (valid UTF-8, a byte-order mark dropped).
    #[serde(default)]
    pub encoding: String,
}

/// Latency and throughput of a trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub latency_b1_p50_ms: f64,
    pub latency_b1_p95_ms: f64,
    pub latency_samples: usize,
    pub throughput_b64_per_s: f64,
}

/// One epoch as recorded (1-based epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
    /// The selection metric's validation value, and its running score.
    pub val_score: f64,
    pub val_running: f64,
    /// The selection metric on the test split (reporting only).
    pub test_score: Option<f64>,
    pub lr: f64,
    /// The lowest and highest learning rate of the epoch's optimiser steps
    /// (a restarted schedule shows as a band from warm-up to the peak).
    #[serde(default)]
    pub lr_min: f64,
    #[serde(default)]
    pub lr_max: f64,
    /// Optimiser steps skipped because the gradients' norm was not finite.
    #[serde(default)]
    pub skipped_steps: u64,
    pub seconds: f64,
    pub train_seconds: f64,
    pub val_seconds: f64,
    /// Beat the best validation score so far (a snapshot was taken).
    pub improved: bool,
    /// Beat the best score of the current dendrite set (the tracker's
    /// "last improved" epoch).
    pub improved_current: bool,
    /// Its weights were thrown away by a later restore.
    pub discarded: bool,
    /// Dendrites per wrapped layer during this epoch.
    pub dendrites: usize,
    pub dendrite_params: usize,
    pub total_params: usize,
    /// Mean |T| per wrapped layer at the end of the epoch.
    pub gates: Vec<(String, f64)>,
}

/// Everything a finished run reports (`metrics.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub job_id: String,
    pub sweep: String,
    pub config_hash: String,
    pub model: String,
    pub device: String,
    pub data: LoadStats,
    pub split_sizes: [usize; 3],
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub optimizer_steps: usize,
    pub val: Scores,
    pub test: Scores,
    pub speed: Speed,
    pub total_params: usize,
    pub trainable_params: usize,
    /// Dendrites per wrapped layer in the final (best) network.
    pub dendrites: usize,
    pub dendrite_params: usize,
    pub dendrite_layers: Vec<String>,
    /// Epochs after which a dendrite set was added.
    pub switch_epochs: Vec<usize>,
    pub tracker: TrackerState,
    pub train_seconds: f64,
    pub wall_seconds: f64,
    /// The test split's gold labels and the trained model's predictions,
    /// in the split's order (paired tests across runs of one split).
    #[serde(default)]
    pub test_labels: Vec<usize>,
    #[serde(default)]
    pub test_predictions: Vec<usize>,
    /// Scores with every dendrite term left out (knock-out), for runs that
    /// have dendrites: what the dendrites themselves contribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knockout: Option<Knockout>,
    /// The epoch of the checkpoint this run resumed from (an earlier
    /// attempt trained the epochs up to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_after: Option<usize>,
    /// What a reader of the scores must know (e.g. a dendritic run that
    /// never added a set, so it is its baseline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What computed the run. Runs of one configuration and seed give the
    /// same scores on the same arithmetic; on another processor or product
    /// library the last digits can differ, and with them a tie the tracker
    /// breaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arithmetic: Option<Arithmetic>,
}

/// The processor, matrix-product library and thread count of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arithmetic {
    /// The processor's model name (`/proc/cpuinfo`), or its architecture
    /// where that is not readable.
    pub cpu: String,
    /// Where the products ran: `mkl`, `openblas` or `candle` on the CPU,
    /// `cuda:N` on a GPU.
    pub gemm: String,
    /// CPU threads of the tensor kernels.
    pub threads: usize,
}

impl std::fmt::Display for Arithmetic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {}, {} threads", self.cpu, self.gemm, self.threads)
    }
}

/// The note of a run whose arm adds sets (dendritic, branch) but whose
/// tracker never switched in `epochs` epochs; `None` when it did.
pub fn no_set_note(adds_sets: bool, switches: &[usize], epochs: usize) -> Option<String> {
    (adds_sets && switches.is_empty()).then(|| {
        format!(
            "no set added: the tracker did not switch within {epochs} epochs, \
             so this run is its arm's baseline (more `train.epochs`, or a \
             lower `tracker.patience`, lets it switch)"
        )
    })
}

/// The note of a run whose arm adds sets and whose tracker switched, but
/// whose selected network kept none (every set tried failed to beat the
/// best validation score of epoch `best_epoch`); `None` otherwise.
pub fn no_set_kept_note(
    adds_sets: bool,
    switches: &[usize],
    kept: usize,
    best_epoch: usize,
) -> Option<String> {
    (adds_sets && !switches.is_empty() && kept == 0).then(|| {
        let at: Vec<String> = switches.iter().map(|e| e.to_string()).collect();
        format!(
            "no set kept: the sets tried after the switch at epoch {} never beat \
             the best validation score (epoch {best_epoch}), so the selected \
             network has none and scores as its arm's baseline",
            at.join(", ")
        )
    })
}

/// A run's parameters scored without their dendrite (or branch) terms:
/// zeroed (`val`, `test`) and, in `mean_ablated`, each layer's term
/// replaced by its mean over the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knockout {
    pub val: Scores,
    pub test: Scores,
    pub test_predictions: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_ablated: Option<Ablated>,
}

/// Scores with each dendrite term replaced by its training-split mean: a
/// sigmoid's output has a mean near 0.5, so zeroing `T * sigma(g(x))` also
/// takes away a constant offset the layer learned to expect; the mean
/// keeps the offset and removes only what varies with the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ablated {
    pub val: Scores,
    pub test: Scores,
    pub test_predictions: Vec<usize>,
}

impl RunSummary {
    /// The last epoch that beat the best score of its dendrite set.
    pub fn last_improved_epoch(&self) -> Option<usize> {
        self.history
            .iter()
            .rev()
            .find(|r| r.improved_current)
            .map(|r| r.epoch)
    }
}

/// What a validation of earlier trained parameters reports (`validation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationSummary {
    pub job_id: String,
    /// The job id or `s3://` URI the parameters came from.
    pub source: String,
    /// `val` or `test`.
    pub split: String,
    /// Scored with every dendrite term left out.
    #[serde(default)]
    pub knockout: bool,
    pub scores: Scores,
    pub speed: Speed,
    pub dendrites: usize,
    pub wall_seconds: f64,
}

/// `spec.json`: the exact spec that produced a run, with its ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecFile {
    pub job_id: String,
    pub sweep: String,
    pub config_hash: String,
    pub spec: crate::spec::JobSpec,
}

#[cfg(test)]
mod tests {
    use super::{no_set_kept_note, no_set_note};

    #[test]
    fn only_an_arm_that_adds_sets_and_never_switched_gets_the_note() {
        let note = no_set_note(true, &[], 2).unwrap();
        assert!(note.starts_with("no set added: the tracker did not switch within 2 epochs"));
        assert_eq!(no_set_note(true, &[3], 9), None);
        assert_eq!(no_set_note(false, &[], 2), None);
    }

    #[test]
    fn a_run_that_switched_but_kept_no_set_says_so() {
        let note = no_set_kept_note(true, &[6], 0, 4).unwrap();
        assert!(
            note.starts_with("no set kept: the sets tried after the switch at epoch 6")
                && note.contains("(epoch 4)"),
            "{note}"
        );
        assert_eq!(no_set_kept_note(true, &[6], 1, 8), None);
        assert_eq!(no_set_kept_note(true, &[], 0, 4), None);
        assert_eq!(no_set_kept_note(false, &[6], 0, 4), None);
    }
}
