//! Dendrites on real model code (the tiny BERT and Phi parity fixtures and
//! MiniLM-L6 with LoRA over a quantized base): additions leave the function
//! bit-identical, keep every gate row training, count parameters by the formula,
//! receive gradients, and reload from saved tensors without replaying
//! training.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::spec::{DendriteKind, DendriteSpec, JobSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use worker::engine::load::load_model;
use worker::engine::models::{bert, phi, Batch, Model};
use worker::engine::nn::params::{Param, Params, TrainPolicy};
use worker::engine::nn::Pass;
use worker::engine::train::cross_entropy;

fn fixture(name: &str) -> (HashMap<String, Tensor>, serde_json::Value, Vec<Vec<u32>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut t =
        candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)
            .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let ids = t.remove("input_ids").unwrap().to_vec2::<i64>().unwrap();
    let mask = t
        .remove("attention_mask")
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    for k in ["labels", "expected_logits"] {
        t.remove(k);
    }
    let rows = ids
        .iter()
        .zip(&mask)
        .map(|(r, m)| {
            r.iter()
                .zip(m)
                .filter(|(_, &m)| m == 1)
                .map(|(&x, _)| x as u32)
                .collect()
        })
        .collect();
    (t, meta, rows)
}

fn build(name: &str, tensors: HashMap<String, Tensor>, meta: &serde_json::Value) -> Model {
    let mut p = Params::from_tensors(
        tensors,
        &Device::Cpu,
        DType::F32,
        TrainPolicy {
            train_base: false,
            freeze: vec![],
        },
        0,
    );
    let cfg = meta["config"].clone();
    match name {
        "bert" => Model::Bert(
            bert::Bert::load(
                &mut p,
                serde_json::from_value(cfg).unwrap(),
                3,
                None,
                Some(0.0),
            )
            .unwrap(),
        ),
        _ => Model::Phi(
            phi::Phi::load(
                &mut p,
                serde_json::from_value(cfg).unwrap(),
                3,
                None,
                Some(0.0),
            )
            .unwrap(),
        ),
    }
}

fn logits(model: &Model, rows: &[Vec<u32>]) -> Vec<f32> {
    let b = Batch::new(rows, model.pad_id(), &Device::Cpu).unwrap();
    model
        .forward(&b, &Pass::eval())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Gives every trainable gate row non-zero values, as training would.
fn perturb_gates(model: &mut Model, rng_seed: u64) {
    let mut i = rng_seed as f32;
    for (n, v) in model.dendrite_trainables() {
        if n.ends_with(".T") || n.ends_with(".D") {
            i += 1.0;
            let t = (Tensor::ones(v.shape(), DType::F32, &Device::Cpu).unwrap() * (0.1 * i as f64))
                .unwrap();
            v.set(&t).unwrap();
        }
    }
}

fn spec_all(kind: DendriteKind) -> DendriteSpec {
    DendriteSpec {
        targets: vec!["*".into()],
        kind,
        rank: 2,
        ..DendriteSpec::default()
    }
}

#[test]
fn additions_keep_logits_bit_identical_and_every_gate_row_trains() {
    for name in ["bert", "phi"] {
        for kind in [DendriteKind::Full, DendriteKind::LowRank] {
            let (t, meta, rows) = fixture(name);
            let mut m = build(name, t, &meta);
            let wrapped = m.attach_dendrites(&spec_all(kind), None).unwrap();
            assert!(wrapped.len() > 5, "{wrapped:?}");
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let before = logits(&m, &rows);
            m.add_dendrite_set(&mut rng, 0.01).unwrap();
            assert_eq!(
                before,
                logits(&m, &rows),
                "{name} {kind:?}: first addition changed the function"
            );
            perturb_gates(&mut m, 1);
            let trained = logits(&m, &rows);
            assert_ne!(before, trained, "gates must matter once non-zero");
            m.add_dendrite_set(&mut rng, 0.01).unwrap();
            assert_eq!(
                trained,
                logits(&m, &rows),
                "{name} {kind:?}: second addition changed the function"
            );
            let names: Vec<String> = m
                .dendrite_trainables()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert!(
                names.iter().any(|n| n.ends_with(".dendrites.0.T")),
                "older gate rows keep training"
            );
            assert!(names.iter().any(|n| n.ends_with(".dendrites.1.T")));
            assert!(names.iter().any(|n| n.ends_with(".dendrites.1.D")));
            assert!(names
                .iter()
                .any(|n| n.ends_with(".dendrites.0.weight") || n.ends_with(".dendrites.0.lora_A")));
        }
    }
}

#[test]
fn parameter_counts_follow_the_formula() {
    let (t, meta, _) = fixture("bert");
    let mut m = build("bert", t, &meta);
    m.attach_dendrites(&spec_all(DendriteKind::Full), None)
        .unwrap();
    let layers: Vec<(usize, usize, bool)> = m
        .linears_mut()
        .iter()
        .map(|l| (l.in_features, l.out_features, l.bias.is_some()))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let count = |m: &mut Model| -> usize {
        m.dendrite_tensors()
            .iter()
            .map(|(_, p)| p.get(DType::F32).unwrap().elem_count())
            .sum()
    };
    let mut total = 0;
    for k in 0..3 {
        let expected: usize = layers
            .iter()
            .map(|&(i, c, b)| (i * c + if b { c } else { 0 }) + c + k * c)
            .sum();
        m.add_dendrite_set(&mut rng, 0.01).unwrap();
        let now = count(&mut m);
        assert_eq!(now - total, expected, "addition {k}");
        total = now;
    }
}

#[test]
fn dendrites_reload_from_saved_tensors() {
    let (t, meta, rows) = fixture("phi");
    let mut m = build("phi", t.clone(), &meta);
    let spec = DendriteSpec::default();
    m.attach_dendrites(&spec, None).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    m.add_dendrite_set(&mut rng, 0.01).unwrap();
    perturb_gates(&mut m, 2);
    m.add_dendrite_set(&mut rng, 0.01).unwrap();
    perturb_gates(&mut m, 5);
    let want = logits(&m, &rows);
    let mut saved = t;
    for (n, p) in m.dendrite_tensors() {
        saved.insert(n, p.get(DType::F32).unwrap());
    }
    let mut p = Params::from_tensors(
        saved,
        &Device::Cpu,
        DType::F32,
        TrainPolicy {
            train_base: false,
            freeze: vec![],
        },
        0,
    );
    let cfg = meta["config"].clone();
    let mut fresh = Model::Phi(
        phi::Phi::load(
            &mut p,
            serde_json::from_value(cfg).unwrap(),
            3,
            None,
            Some(0.0),
        )
        .unwrap(),
    );
    fresh.attach_dendrites(&spec, Some(&p)).unwrap();
    assert_eq!(fresh.dendrite_summary().unwrap()[0].1, 2);
    assert_eq!(want, logits(&fresh, &rows));
    // Every gate row trains after a reload, as during training.
    let tensors = fresh.dendrite_tensors();
    let gates: Vec<_> = tensors.iter().filter(|(n, _)| n.ends_with(".T")).collect();
    assert!(gates.len() >= 2);
    assert!(gates.iter().all(|(_, p)| matches!(p, Param::Train(_))));
}

#[test]
fn dendrites_over_lora_on_a_quantized_base_get_gradients() {
    let minilm = std::env::var("MINILM_DIR")
        .expect("MINILM_DIR must point at MiniLM-L6 (scripts/test.sh sets it)");
    let spec: JobSpec = toml::from_str(&format!(
        "variant = \"dendritic\"\n[model]\narch = \"bert\"\npath = {minilm:?}\nfinetune = \"lora\"\nquantize = \"q8_0\"\n[data]\npath = \"-\"\n[lora]\nr = 4\nrandom_b = true\n[dendrites]\ntargets = [\"classifier\", \"pooler.dense\", \"*layer.5.output.dense\"]\nkind = \"low_rank\"\nrank = 4\n"
    ))
    .unwrap();
    let mut loaded = load_model(&spec, 3, &Device::Cpu, &[]).unwrap();
    assert_eq!(loaded.dendrite_layers.len(), 3);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    loaded.model.add_dendrite_set(&mut rng, 0.01).unwrap();
    perturb_gates(&mut loaded.model, 0);
    let ids = loaded
        .tok
        .encode_all(&["Profit rose.", "Sales fell sharply in the quarter."])
        .unwrap();
    let batch = Batch::new(&ids, loaded.model.pad_id(), &Device::Cpu).unwrap();
    let out = loaded.model.forward(&batch, &Pass::eval()).unwrap();
    let grads = cross_entropy(&out, &[2, 0], None)
        .unwrap()
        .backward()
        .unwrap();
    let mut all = loaded.trainable.clone();
    all.extend(loaded.model.dendrite_trainables());
    for (n, v) in &all {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{n}: no gradient"));
        let s = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(s > 0.0, "{n}: zero gradient");
    }
}

/// In bf16 compute, f32 gate rows are cast on use: two additions still
/// run forward and backward.
#[test]
fn bf16_compute_with_two_gate_rows() {
    let (t, meta, rows) = fixture("bert");
    let mut p = Params::from_tensors(
        t,
        &Device::Cpu,
        DType::BF16,
        TrainPolicy {
            train_base: false,
            freeze: vec![],
        },
        0,
    );
    let cfg = meta["config"].clone();
    let mut m = Model::Bert(
        bert::Bert::load(
            &mut p,
            serde_json::from_value(cfg).unwrap(),
            3,
            None,
            Some(0.0),
        )
        .unwrap(),
    );
    m.attach_dendrites(&spec_all(DendriteKind::Full), None)
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    m.add_dendrite_set(&mut rng, 0.01).unwrap();
    perturb_gates(&mut m, 1);
    m.add_dendrite_set(&mut rng, 0.01).unwrap();
    perturb_gates(&mut m, 2);
    let b = Batch::new(&rows, m.pad_id(), &Device::Cpu).unwrap();
    let out = m.forward(&b, &Pass::eval()).unwrap();
    let loss = cross_entropy(&out, &[0, 2, 1], None).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let grads = loss.backward().unwrap();
    for (n, v) in m.dendrite_trainables() {
        assert!(grads.get(v.as_tensor()).is_some(), "{n}: no gradient");
    }
}
