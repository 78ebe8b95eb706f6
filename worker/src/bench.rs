//! `worker bench`: training step time and inference speed of one model on
//! synthetic token ids, with the same protocol as `bench/bench_torch.py`
//! (warm-up steps untimed, AdamW, dropout on while training, inference
//! without autograd). Two kinds of model:
//!
//! - `--arch bert` (default): a checkpoint directory (MiniLM-L6), full
//!   fine-tuning with the word embeddings frozen (or `--finetune lora|head`);
//! - `--arch phi`: a randomly initialised Phi of any shape (`--hidden 2560
//!   --layers 2 --heads 32 --intermediate 10240` is Phi-2's width), frozen
//!   base with LoRA on q, k, v and dense, so Phi-2's step is measured on
//!   any machine without its weights.
//!
//! Prints one JSON line, with the number of backend dispatches (kernel
//! launches and transfers on CUDA, kernel passes on the CPU) of one
//! training step and of one batch-1 forward pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use common::metrics::percentile;
use common::spec::{JobSpec, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::engine::load::load_model;
use crate::engine::models::{phi, Batch, Model};
use crate::engine::nn::linear::LoraConfig;
use crate::engine::nn::params::{Params, TrainPolicy};
use crate::engine::nn::{compute_dtype, Pass};
use crate::engine::train::{cross_entropy, optim::AdamW};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// `bert` (a checkpoint directory) or `phi` (random weights of the given shape).
    #[arg(long, default_value = "bert")]
    arch: String,
    /// Model directory (config.json, *.safetensors) for `--arch bert`.
    #[arg(long, env = "MINILM_DIR")]
    model_path: Option<PathBuf>,
    /// `full`, `lora` or `head` (`--arch bert`; Phi always trains LoRA).
    #[arg(long, default_value = "full")]
    finetune: String,
    /// Phi shape: hidden size.
    #[arg(long, default_value_t = 2560)]
    hidden: usize,
    /// Phi shape: number of blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Phi shape: attention heads.
    #[arg(long, default_value_t = 32)]
    heads: usize,
    /// Phi shape: MLP width.
    #[arg(long, default_value_t = 10240)]
    intermediate: usize,
    /// Phi shape: vocabulary.
    #[arg(long, default_value_t = 51200)]
    vocab: usize,
    /// Phi LoRA rank (alpha = 2r, dropout 0.05, on q, k, v, dense).
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// `auto` (bf16 on CUDA, f32 on CPU), `f32` or `bf16`.
    #[arg(long, default_value = "auto")]
    precision: Precision,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// CPU threads for tensor kernels.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 50)]
    latency_samples: usize,
    /// Batch size of the inference-throughput measurement.
    #[arg(long, default_value_t = 64)]
    throughput_batch: usize,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also print one training step's dispatches by operation (stderr).
    #[arg(long)]
    dispatch_breakdown: bool,
}

/// The model under test and its trainable tensors.
struct Subject {
    model: Model,
    trainable: Vec<(String, Var)>,
    frozen: usize,
    /// Token ids are drawn from this range.
    ids: std::ops::Range<u32>,
    /// `[CLS]`/`[SEP]` framing (BERT).
    framed: bool,
}

pub fn main(a: BenchArgs) -> anyhow::Result<()> {
    let device = crate::engine::device::open(&a.device)?;
    let subject = match a.arch.as_str() {
        "bert" => checkpoint(&a, &device)?,
        "phi" => random_phi(&a, &device)?,
        other => anyhow::bail!("--arch {other:?}: use bert or phi"),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut rows_for = |n: usize| -> Vec<Vec<u32>> {
        (0..n)
            .map(|_| {
                let mut r: Vec<u32> = (0..a.seq)
                    .map(|_| rng.random_range(subject.ids.clone()))
                    .collect();
                if subject.framed {
                    r[0] = 101;
                    r[a.seq - 1] = 102;
                }
                r
            })
            .collect()
    };
    let model = &subject.model;
    let train_rows = rows_for(a.batch);
    let labels: Vec<usize> = (0..a.batch).map(|i| i % 3).collect();
    let groups: Vec<_> = subject
        .trainable
        .iter()
        .map(|(n, v)| (n.clone(), v.clone(), 1.0))
        .collect();
    let mut opt = AdamW::new(&groups, 0.01)?;
    let batch = Batch::new(&train_rows, model.pad_id(), &device)?;
    let ctx = Pass::new(true, ChaCha8Rng::seed_from_u64(a.seed));
    // The loss is read (which synchronises the device) after the last step
    // only, as PyTorch's loop does.
    let mut step = || -> anyhow::Result<Tensor> {
        let logits = model.forward(&batch, &ctx)?;
        let loss = cross_entropy(&logits, &labels, None)?;
        let grads = loss.backward()?;
        opt.step(&grads, a.lr)?;
        Ok(loss)
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let d0 = candle_core::dispatch_count();
    let t = Instant::now();
    let mut last = None;
    for _ in 0..a.steps {
        last = Some(step()?);
    }
    if let Some(loss) = last {
        loss.to_scalar::<f32>()?;
    }
    let train_secs = t.elapsed().as_secs_f64();
    let step_dispatches = (candle_core::dispatch_count() - d0) as f64 / a.steps as f64;
    if a.dispatch_breakdown {
        candle_core::set_dispatch_breakdown(true);
        step()?.to_scalar::<f32>()?;
        candle_core::set_dispatch_breakdown(false);
        for (op, n) in candle_core::dispatch_breakdown() {
            eprintln!("{n:>7} {op}");
        }
    }

    let eval = Pass::inference();
    let one = rows_for(1);
    let single = Batch::new(&one, model.pad_id(), &device)?;
    let fwd = |b: &Batch| -> anyhow::Result<()> {
        // Reading the result synchronises the device.
        model.forward(b, &eval)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    for _ in 0..5 {
        fwd(&single)?;
    }
    let d0 = candle_core::dispatch_count();
    fwd(&single)?;
    let b1_dispatches = candle_core::dispatch_count() - d0;
    let mut lat = Vec::with_capacity(a.latency_samples);
    for _ in 0..a.latency_samples {
        let t = Instant::now();
        fwd(&single)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let big = Batch::new(&rows_for(a.throughput_batch), model.pad_id(), &device)?;
    for _ in 0..2 {
        fwd(&big)?;
    }
    let t = Instant::now();
    let iters = 5;
    for _ in 0..iters {
        fwd(&big)?;
    }
    let thr_secs = t.elapsed().as_secs_f64();
    let trainable: usize = subject.trainable.iter().map(|(_, v)| v.elem_count()).sum();
    let line = serde_json::json!({
        "framework": "candle",
        "arch": a.arch,
        "device": a.device,
        "dtype": format!("{:?}", compute_dtype(&device, a.precision)).to_lowercase(),
        "threads": a.threads,
        "cpu_gemm": crate::engine::nn::matmul::cpu_backend(),
        "batch": a.batch,
        "seq": a.seq,
        "finetune": if a.arch == "phi" { "lora" } else { a.finetune.as_str() },
        "step_ms": train_secs * 1000.0 / a.steps as f64,
        "train_samples_per_s": (a.batch * a.steps) as f64 / train_secs,
        "dispatches_per_step": step_dispatches.round() as u64,
        "dispatches_b1_forward": b1_dispatches,
        "latency_b1_p50_ms": percentile(&lat, 0.5),
        "latency_b1_p95_ms": percentile(&lat, 0.95),
        "throughput_batch": a.throughput_batch,
        "throughput_batch_ms": thr_secs * 1000.0 / iters as f64,
        "throughput_per_s": (a.throughput_batch * iters) as f64 / thr_secs,
        "trainable_params": trainable,
        "total_params": trainable + subject.frozen,
    });
    println!("{line}");
    Ok(())
}

/// A BERT checkpoint loaded as a job would load it.
fn checkpoint(a: &BenchArgs, device: &Device) -> anyhow::Result<Subject> {
    let path = a
        .model_path
        .as_ref()
        .context("--arch bert needs --model-path (or MINILM_DIR)")?;
    let lora = if a.finetune == "lora" { "[lora]\n" } else { "" };
    let freeze = if a.finetune == "full" {
        "freeze = [\"word_embeddings\", \"embed_tokens\"]"
    } else {
        ""
    };
    let spec: JobSpec = toml::from_str(&format!(
        "seed = {}\n[model]\narch = \"bert\"\npath = {:?}\nfinetune = {:?}\nprecision = \"{}\"\n{freeze}\n[data]\npath = \"-\"\n{lora}",
        a.seed,
        path.display().to_string(),
        a.finetune,
        a.precision,
    ))
    .context("bench settings")?;
    let loaded = load_model(&spec, 3, device, &[])?;
    Ok(Subject {
        model: loaded.model,
        trainable: loaded.trainable,
        frozen: loaded.frozen_params,
        ids: 1000..29000,
        framed: true,
    })
}

/// A Phi of the requested shape with N(0, 0.02) weights, frozen, with
/// LoRA (r, alpha = 2r, dropout 0.05) on q, k, v and dense.
fn random_phi(a: &BenchArgs, device: &Device) -> anyhow::Result<Subject> {
    let cfg: phi::PhiConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": a.vocab,
        "hidden_size": a.hidden,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "intermediate_size": a.intermediate,
        "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.4,
        "pad_token_id": 50256,
    }))?;
    let (h, f) = (a.hidden, a.intermediate);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![a.vocab, h]),
        ("model.final_layernorm.weight".into(), vec![h]),
        ("model.final_layernorm.bias".into(), vec![h]),
    ];
    for i in 0..a.layers {
        let l = format!("model.layers.{i}");
        shapes.push((format!("{l}.input_layernorm.weight"), vec![h]));
        shapes.push((format!("{l}.input_layernorm.bias"), vec![h]));
        for (name, out, inp) in [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", h, h),
            ("self_attn.v_proj", h, h),
            ("self_attn.dense", h, h),
            ("mlp.fc1", f, h),
            ("mlp.fc2", h, f),
        ] {
            shapes.push((format!("{l}.{name}.weight"), vec![out, inp]));
            shapes.push((format!("{l}.{name}.bias"), vec![out]));
        }
    }
    let dtype = compute_dtype(device, a.precision);
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        let t = if name.contains("layernorm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else if shape.len() == 1 {
            Tensor::zeros(shape, DType::F32, device)?
        } else {
            Tensor::randn(0f32, 0.02, shape, device)?
        };
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    let policy = TrainPolicy {
        train_base: false,
        freeze: vec![],
    };
    let mut p = Params::from_tensors(tensors, device, dtype, policy, a.seed);
    let lora = LoraConfig {
        r: a.lora_r,
        alpha: 2.0 * a.lora_r as f64,
        dropout: 0.05,
        targets: ["q_proj", "k_proj", "v_proj", "dense"]
            .map(String::from)
            .to_vec(),
        random_b: false,
    };
    let model = phi::Phi::load(&mut p, cfg, 3, Some(&lora), None)?;
    let (frozen, _) = p.counts();
    let trainable = p.trainable().to_vec();
    p.release_checkpoint();
    Ok(Subject {
        model: Model::Phi(model),
        trainable,
        frozen,
        ids: 0..50000,
        framed: false,
    })
}
