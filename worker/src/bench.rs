//! `worker bench`: training samples/s and batch-1 latency of one model on
//! synthetic token ids, with the same protocol as `bench/bench_torch.py`
//! (random ids in [1000, 29000) framed by 101/102, full fine-tuning with the
//! word embeddings frozen, AdamW, warm-up steps untimed). Prints one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use common::spec::JobSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::metrics::percentile;

use crate::engine::load::load_model;
use crate::engine::models::Batch;
use crate::engine::nn::Ctx;
use crate::engine::train::{cross_entropy, optim::AdamW};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, env = "MINILM_DIR")]
    model_path: PathBuf,
    /// `bert` or `phi`.
    #[arg(long, default_value = "bert")]
    arch: String,
    /// `full`, `lora` or `head`.
    #[arg(long, default_value = "full")]
    finetune: String,
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
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn main(a: BenchArgs) -> anyhow::Result<()> {
    let device = crate::parse_device(&a.device)?;
    let lora = if a.finetune == "lora" { "[lora]\n" } else { "" };
    let freeze = if a.finetune == "full" {
        "freeze = [\"word_embeddings\", \"embed_tokens\"]"
    } else {
        ""
    };
    let spec: JobSpec = toml::from_str(&format!(
        "seed = {}\n[model]\narch = {:?}\npath = {:?}\nfinetune = {:?}\n{freeze}\n[data]\npath = \"-\"\n{lora}",
        a.seed,
        a.arch,
        a.model_path.display().to_string(),
        a.finetune
    ))
    .context("bench settings")?;
    let loaded = load_model(&spec, 3, &device, &[])?;
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut rows_for = |n: usize| -> Vec<Vec<u32>> {
        (0..n)
            .map(|_| {
                let mut r: Vec<u32> = (0..a.seq).map(|_| rng.random_range(1000..29000)).collect();
                r[0] = 101;
                r[a.seq - 1] = 102;
                r
            })
            .collect()
    };
    let train_rows = rows_for(a.batch);
    let labels: Vec<usize> = (0..a.batch).map(|i| i % 3).collect();
    let groups: Vec<_> = loaded
        .trainable
        .iter()
        .map(|(n, v)| (n.clone(), v.clone(), 1.0))
        .collect();
    let mut opt = AdamW::new(&groups, 0.01)?;
    let batch = Batch::new(&train_rows, loaded.model.pad_id(), &device)?;
    let ctx = Ctx::new(true, ChaCha8Rng::seed_from_u64(a.seed));
    let mut step = || -> anyhow::Result<()> {
        let logits = loaded.model.forward(&batch, &ctx)?;
        let loss = cross_entropy(&logits, &labels, None)?;
        let grads = loss.backward()?;
        opt.step(&grads, a.lr)?;
        Ok(())
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let t = Instant::now();
    for _ in 0..a.steps {
        step()?;
    }
    let train_secs = t.elapsed().as_secs_f64();

    let eval = Ctx::eval();
    let one = rows_for(1);
    let single = Batch::new(&one, loaded.model.pad_id(), &device)?;
    let fwd = |b: &Batch| -> anyhow::Result<()> {
        loaded
            .model
            .forward(b, &eval)?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok(())
    };
    for _ in 0..5 {
        fwd(&single)?;
    }
    let mut lat = Vec::with_capacity(a.latency_samples);
    for _ in 0..a.latency_samples {
        let t = Instant::now();
        fwd(&single)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let big = Batch::new(&rows_for(64), loaded.model.pad_id(), &device)?;
    for _ in 0..2 {
        fwd(&big)?;
    }
    let t = Instant::now();
    for _ in 0..5 {
        fwd(&big)?;
    }
    let thr = 64.0 * 5.0 / t.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "framework": "candle",
        "device": a.device,
        "threads": a.threads,
        "batch": a.batch,
        "seq": a.seq,
        "finetune": a.finetune,
        "step_ms": train_secs * 1000.0 / a.steps as f64,
        "train_samples_per_s": (a.batch * a.steps) as f64 / train_secs,
        "latency_b1_p50_ms": percentile(&lat, 0.5),
        "latency_b1_p95_ms": percentile(&lat, 0.95),
        "throughput_b64_per_s": thr,
        "trainable_params": loaded.trainable_params,
        "total_params": loaded.trainable_params + loaded.frozen_params,
    });
    println!("{line}");
    Ok(())
}
