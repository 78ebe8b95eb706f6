#!/usr/bin/env python3
"""PyTorch reference for `worker bench`.

Two kinds of model, as in the Rust benchmark:

* ``--arch bert``: a Hugging Face BERT checkpoint (for example
  all-MiniLM-L6-v2) fine-tuned in full as a 3-class classifier with the word
  embeddings frozen;
* ``--arch phi``: a randomly initialised ``PhiForSequenceClassification`` of
  the given shape (``--hidden 2560 --heads 32 --intermediate 10240`` is
  Phi-2's width), frozen, with PEFT LoRA (r, alpha = 2r, dropout 0.05) on
  q_proj, k_proj, v_proj and dense.

Measured on random token ids: training step time (forward, cross-entropy,
backward, AdamW step, zero_grad; dropout on), batch-1 inference latency
(p50 / p95) and inference throughput at ``--throughput-batch``, both under
``torch.inference_mode``. On CUDA every timing synchronises the device.
Exactly one JSON line is printed on stdout.

Requirements::

    pip install torch transformers safetensors peft

Usage::

    python3 bench/bench_torch.py --model-path /path/to/minilm --threads 2
    python3 bench/bench_torch.py --arch phi --layers 2 --batch 8 --threads 2
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, PhiConfig, PhiForSequenceClassification

NUM_LABELS = 3
TOKEN_LOW = 1000
TOKEN_HIGH = 29000  # exclusive
CLS_ID = 101
SEP_ID = 102
LATENCY_WARMUP = 5
THROUGHPUT_WARMUP = 2
THROUGHPUT_ITERS = 5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["bert", "phi"], default="bert")
    p.add_argument("--model-path", help="HF BERT directory (config.json + model.safetensors), --arch bert")
    p.add_argument("--finetune", default="full", help="ignored for phi (always LoRA); bert: full only")
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--intermediate", type=int, default=10240)
    p.add_argument("--vocab", type=int, default=51200)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--precision", choices=["auto", "f32", "bf16"], default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--throughput-batch", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--latency-samples", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def random_ids(args, batch: int) -> torch.Tensor:
    if args.arch == "phi":
        return torch.randint(0, 50000, (batch, args.seq), dtype=torch.int64, device=args.device)
    ids = torch.randint(TOKEN_LOW, TOKEN_HIGH, (batch, args.seq), dtype=torch.int64)
    ids[:, 0] = CLS_ID
    ids[:, -1] = SEP_ID
    return ids.to(args.device)


def sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def compute_dtype(args):
    if args.precision == "bf16" or (args.precision == "auto" and args.device.startswith("cuda")):
        return torch.bfloat16
    return torch.float32


def build_model(args):
    """The model under test and its trainable parameters."""
    dtype = compute_dtype(args)
    if args.arch == "bert":
        if not args.model_path:
            raise SystemExit("--arch bert needs --model-path")
        model = BertForSequenceClassification.from_pretrained(
            args.model_path, num_labels=NUM_LABELS, dtype=torch.float32
        )
        model.float()
        model.bert.embeddings.word_embeddings.weight.requires_grad = False
        return model.to(args.device)
    from peft import LoraConfig, get_peft_model

    cfg = PhiConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=2048,
        partial_rotary_factor=0.4,
        num_labels=NUM_LABELS,
        pad_token_id=50256,
    )
    # Built where it runs and in its dtype: no f32 copy of the whole model
    # on the CPU first (about 11 GB and a minute for Phi-2's shape).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = PhiForSequenceClassification(cfg)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(dtype=dtype, device=args.device)
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "dense"],
        modules_to_save=["score"],
        task_type="SEQ_CLS",
    )
    return get_peft_model(model, lora)


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile: index ceil(q * n) - 1 of the sorted values."""
    n = len(sorted_values)
    idx = max(0, min(n - 1, math.ceil(q * n) - 1))
    return sorted_values[idx]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = build_model(args)
    model.train()

    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_params = sum(p.numel() for p in trainable)
    total_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)

    # ---- training -------------------------------------------------------
    input_ids = random_ids(args, args.batch)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.randint(0, NUM_LABELS, (args.batch,), dtype=torch.int64, device=args.device)

    def train_step():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    for _ in range(args.warmup):
        train_step()
    sync(args)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    sync(args)
    elapsed = time.perf_counter() - start
    step_ms = elapsed * 1000.0 / args.steps
    train_samples_per_s = args.batch * args.steps / elapsed

    # ---- batch-1 latency ------------------------------------------------
    model.eval()
    with torch.inference_mode():
        ids1 = random_ids(args, 1)
        mask1 = torch.ones_like(ids1)
        for _ in range(LATENCY_WARMUP):
            model(input_ids=ids1, attention_mask=mask1)
        samples = []
        for _ in range(args.latency_samples):
            t0 = time.perf_counter()
            model(input_ids=ids1, attention_mask=mask1).logits.float().sum().item()
            samples.append((time.perf_counter() - t0) * 1000.0)
        samples.sort()
        p50 = percentile(samples, 0.50)
        p95 = percentile(samples, 0.95)

        # ---- batch-64 throughput ----------------------------------------
        ids_big = random_ids(args, args.throughput_batch)
        mask_big = torch.ones_like(ids_big)
        for _ in range(THROUGHPUT_WARMUP):
            model(input_ids=ids_big, attention_mask=mask_big)
        sync(args)
        t0 = time.perf_counter()
        for _ in range(THROUGHPUT_ITERS):
            model(input_ids=ids_big, attention_mask=mask_big)
        sync(args)
        thr_secs = time.perf_counter() - t0

    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "arch": args.arch,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
        "dtype": "bf16" if compute_dtype(args) == torch.bfloat16 else "f32",
        "threads": args.threads,
        "batch": args.batch,
        "seq": args.seq,
        "step_ms": round(step_ms, 3),
        "train_samples_per_s": round(train_samples_per_s, 3),
        "latency_b1_p50_ms": round(p50, 3),
        "latency_b1_p95_ms": round(p95, 3),
        "throughput_batch": args.throughput_batch,
        "throughput_batch_ms": round(thr_secs * 1000.0 / THROUGHPUT_ITERS, 3),
        "throughput_per_s": round(args.throughput_batch * THROUGHPUT_ITERS / thr_secs, 3),
        "trainable_params": trainable_params,
        "total_params": total_params,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
