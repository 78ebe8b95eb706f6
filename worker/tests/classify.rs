//! A finished run classifies as it was trained: a short run of MiniLM-L6
//! (MINILM_DIR) with LoRA adapters (random B, so they change the function)
//! on every layer and dendrites in the head, on a small made-up data set,
//! is put back together by [`Classifier`] from its `trained.safetensors`
//! alone: LoRA merged, dendrites rebuilt. Its labels are the run's test
//! predictions and its probabilities those of the unmerged network.

mod shared;

use std::path::{Path, PathBuf};

use shared::write_data;

use candle_core::Device;
use common::artifacts::files::TRAINED_SAFETENSORS;
use common::spec::JobSpec;
use worker::engine::classify::{Classifier, ClassifyError, Identity};
use worker::engine::load::{load_model, load_splits};
use worker::engine::models::Batch;
use worker::engine::nn::Pass;
use worker::engine::pipeline;
use worker::engine::train::Progress;
use worker::engine::trained::RunIds;

struct Quiet;
impl Progress for Quiet {}

fn minilm() -> String {
    std::env::var("MINILM_DIR")
        .expect("MINILM_DIR must point at MiniLM-L6 (scripts/test.sh sets it)")
}

fn spec(data: &Path) -> JobSpec {
    toml::from_str(&format!(
        r#"
variant = "dendritic"
[model]
arch = "bert"
path = {minilm:?}
finetune = "lora"
max_len = 32
[data]
path = {data:?}
[train]
epochs = 2
batch_size = 16
lr = 1e-3
warmup = 0.0
schedule = "constant"
[lora]
r = 4
random_b = true
[tracker]
testing_capacity = true
[dendrites]
targets = ["classifier", "pooler.dense"]
max = 1
init_scale = 0.1
"#,
        minilm = minilm(),
        data = data.display().to_string(),
    ))
    .unwrap()
}

/// Trains the run and stores its `trained.safetensors` in `dir`.
fn train(spec: &JobSpec, dir: &Path) -> (PathBuf, pipeline::RunOutput) {
    let ids = RunIds {
        sweep: "s",
        job_id: "j",
        config_hash: "h",
    };
    let out = pipeline::run(spec, &ids, &Device::Cpu, &mut Quiet, None).unwrap();
    let bytes = &out
        .files
        .iter()
        .find(|(n, _)| n == TRAINED_SAFETENSORS)
        .unwrap()
        .1;
    let path = dir.join(TRAINED_SAFETENSORS);
    std::fs::write(&path, bytes).unwrap();
    (path, out)
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[test]
fn a_lora_and_dendrite_run_classifies_as_it_was_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_data(&data);
    let spec = spec(&data);
    let (trained, out) = train(&spec, tmp.path());
    assert_eq!(
        out.summary.dendrites, 1,
        "the kept network has its dendrites"
    );

    let c = Classifier::load(&trained, "the run", None, &Device::Cpu).unwrap();
    assert_eq!(c.identity, Identity::Fingerprint);
    assert_eq!(c.meta.dendrites.len(), 2);
    let (split, _) = load_splits(&spec).unwrap();
    let texts: Vec<&str> = split.test.iter().map(|e| e.text.as_str()).collect();
    // Batches of 4, not the run's: labels do not depend on batching.
    let preds = c.predict(&texts, 4).unwrap();
    let labels: Vec<usize> = preds.iter().map(|p| p.label).collect();
    assert_eq!(labels, out.summary.test_predictions);

    // The network the run trained, unmerged, in one batch.
    let reference = load_model(&spec, 3, &Device::Cpu, std::slice::from_ref(&trained)).unwrap();
    let ids = reference.tok.encode_all(&texts).unwrap();
    let batch = Batch::new(&ids, reference.model.pad_id(), &Device::Cpu).unwrap();
    let logits = reference
        .model
        .forward(&batch, &Pass::inference())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (p, row) in preds.iter().zip(&logits) {
        for (a, b) in p.probabilities.iter().zip(softmax(row)) {
            assert!(
                (*a as f64 - b).abs() < 1e-5,
                "{:?} vs {row:?}",
                p.probabilities
            );
        }
    }
    // Without its dendrites the same network labels differently or with
    // other probabilities: the check above sees them.
    let knocked = reference
        .model
        .forward(&batch, &Pass::knockout())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let moved = logits
        .iter()
        .flatten()
        .zip(knocked.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-3,
        "the dendrites change the logits by {moved} only"
    );
}

/// A file that is not a run's parameters, and a base model directory that
/// is not there, are errors naming them.
#[test]
fn unusable_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(TRAINED_SAFETENSORS);
    std::fs::write(&path, b"not safetensors").unwrap();
    let e = Classifier::load(&path, "r", None, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");

    // A real header whose spec points at a model directory that is gone.
    let mut spec = spec(tmp.path());
    spec.model.path = Some("/nonexistent/minilm".into());
    let t = candle_core::Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let meta = std::collections::HashMap::from([(
        "spec".to_string(),
        serde_json::to_string(&spec).unwrap(),
    )]);
    std::fs::write(
        &path,
        safetensors::serialize(vec![("classifier.bias", t)], Some(meta)).unwrap(),
    )
    .unwrap();
    let e = Classifier::load(&path, "the run", None, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(e, ClassifyError::Model { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("the run: base model") && e.contains("/nonexistent/minilm"),
        "{e}"
    );
}
