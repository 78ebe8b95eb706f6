//! A run stopped after any epoch and resumed from the checkpoint it wrote
//! ends exactly as the run that never stopped: same history, scores,
//! predictions and trained tensors. MiniLM-L6 (MINILM_DIR) with LoRA
//! (dropout on, so the dropout and batch-order streams are resumed too),
//! dendrites added every two epochs (a switch restores the best snapshot,
//! adds a set and rebuilds AdamW and the schedule), on a small made-up
//! data set.

mod shared;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::artifacts::files::TRAINED_SAFETENSORS;
use common::spec::JobSpec;
use common::summary::RunSummary;
use worker::engine::error::JobError;
use worker::engine::pipeline::{self, RunOutput};
use worker::engine::train::checkpoint::Checkpoint;
use worker::engine::train::Progress;
use worker::engine::trained::RunIds;

use shared::write_data;

/// Keeps the checkpoint written after `stop_after` and stops training there.
struct StopAfter {
    stop_after: usize,
    saved: Option<Vec<u8>>,
    epochs: Vec<usize>,
}

impl Progress for StopAfter {
    fn start_epoch(&mut self, epoch: usize, _steps: usize) {
        self.epochs.push(epoch);
    }
    fn checkpoint(&mut self, epoch: usize, save: &mut dyn FnMut() -> candle_core::Result<Vec<u8>>) {
        if epoch == self.stop_after {
            self.saved = Some(save().unwrap());
        }
    }
    fn should_stop(&self) -> bool {
        self.saved.is_some()
    }
}

fn spec(data: &Path) -> JobSpec {
    let minilm = std::env::var("MINILM_DIR")
        .expect("MINILM_DIR must point at MiniLM-L6 (scripts/test.sh sets it)");
    toml::from_str(&format!(
        r#"
variant = "dendritic"
[model]
arch = "bert"
path = {minilm:?}
finetune = "lora"
max_len = 32
dropout = 0.1
[data]
path = {data:?}
[train]
epochs = 5
batch_size = 16
lr = 2e-3
warmup = 0.2
[lora]
r = 4
random_b = true
dropout = 0.1
[tracker]
mode = "fixed"
patience = 2
[dendrites]
targets = ["classifier", "pooler.dense"]
max = 2
init_scale = 0.1
"#,
        data = data.display().to_string(),
    ))
    .unwrap()
}

const IDS: RunIds = RunIds {
    sweep: "s",
    job_id: "j",
    config_hash: "h",
};

fn run(spec: &JobSpec, progress: &mut dyn Progress, resume: Option<&[u8]>) -> RunOutput {
    pipeline::run(spec, &IDS, &Device::Cpu, progress, resume).unwrap()
}

fn trained(out: &RunOutput) -> HashMap<String, Tensor> {
    let bytes = &out
        .files
        .iter()
        .find(|(n, _)| n == TRAINED_SAFETENSORS)
        .unwrap()
        .1;
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu).unwrap()
}

/// Everything a run measured but time.
fn untimed(s: &RunSummary) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    for k in ["train_seconds", "wall_seconds", "speed", "resumed_after"] {
        v.as_object_mut().unwrap().remove(k);
    }
    for r in v["history"].as_array_mut().unwrap() {
        for k in ["seconds", "train_seconds", "val_seconds"] {
            r.as_object_mut().unwrap().remove(k);
        }
    }
    v
}

#[test]
fn a_run_resumed_after_any_epoch_ends_as_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let spec = spec(tmp.path());
    let whole = run(
        &spec,
        &mut StopAfter {
            stop_after: 0,
            saved: None,
            epochs: vec![],
        },
        None,
    );
    assert_eq!(
        whole.summary.switch_epochs,
        vec![2, 4],
        "the run switches twice"
    );
    let expected = trained(&whole);
    // After a switch (best snapshot and current network differ) and after
    // an epoch that improved (the snapshot is the current network).
    for stop_after in [2, 3] {
        let mut first = StopAfter {
            stop_after,
            saved: None,
            epochs: vec![],
        };
        let stopped = pipeline::run(&spec, &IDS, &Device::Cpu, &mut first, None);
        assert!(matches!(stopped, Err(JobError::Stopped)));
        let ck = first.saved.expect("a checkpoint after the epoch");
        assert_eq!(Checkpoint::epoch_of(&ck).unwrap(), stop_after);
        let mut second = StopAfter {
            stop_after: 0,
            saved: None,
            epochs: vec![],
        };
        let resumed = run(&spec, &mut second, Some(&ck));
        assert_eq!(
            second.epochs,
            (stop_after + 1..=5).collect::<Vec<_>>(),
            "the resumed run trains only the epochs left"
        );
        assert_eq!(resumed.summary.resumed_after, Some(stop_after));
        assert_eq!(
            untimed(&resumed.summary),
            untimed(&whole.summary),
            "after epoch {stop_after}"
        );
        let got = trained(&resumed);
        assert_eq!(got.len(), expected.len());
        for (n, t) in &expected {
            let (a, b) = (t.flatten_all().unwrap(), got[n].flatten_all().unwrap());
            assert_eq!(
                a.to_vec1::<f32>().unwrap(),
                b.to_vec1::<f32>().unwrap(),
                "{n} after epoch {stop_after}"
            );
        }
    }
}

#[test]
fn a_checkpoint_of_another_configuration_is_not_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let mut spec = spec(tmp.path());
    spec.train.epochs = 3;
    let mut first = StopAfter {
        stop_after: 1,
        saved: None,
        epochs: vec![],
    };
    assert!(pipeline::run(&spec, &IDS, &Device::Cpu, &mut first, None).is_err());
    let ck = first.saved.unwrap();
    let other = RunIds {
        config_hash: "another",
        ..IDS
    };
    let mut second = StopAfter {
        stop_after: 0,
        saved: None,
        epochs: vec![],
    };
    let out = pipeline::run(&spec, &other, &Device::Cpu, &mut second, Some(&ck)).unwrap();
    assert_eq!(second.epochs, vec![1, 2, 3], "trained from the start");
    assert_eq!(out.summary.resumed_after, None);
    // Bytes that are no checkpoint at all: also from the start.
    let mut third = StopAfter {
        stop_after: 0,
        saved: None,
        epochs: vec![],
    };
    let garbage = b"not a checkpoint".to_vec();
    pipeline::run(&spec, &IDS, &Device::Cpu, &mut third, Some(&garbage)).unwrap();
    assert_eq!(third.epochs, vec![1, 2, 3]);
}
