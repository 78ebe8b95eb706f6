#!/usr/bin/env python3
"""PyTorch reference for the CPU training-speed benchmark.

Fine-tunes a Hugging Face BERT checkpoint (for example all-MiniLM-L6-v2) as a
3-class sequence classifier on random data and measures:

* training step time and samples/s (forward, cross-entropy, backward, AdamW
  step, zero_grad) with the word embeddings frozen;
* batch-1 inference latency (p50 / p95);
* batch-64 inference throughput.

The protocol mirrors the Rust benchmark so the numbers are comparable.
Exactly one JSON line is printed on stdout.

Requirements::

    pip install torch transformers safetensors

Usage::

    python3 bench/bench_torch.py --model-path /path/to/minilm --threads 2
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification

NUM_LABELS = 3
TOKEN_LOW = 1000
TOKEN_HIGH = 29000  # exclusive
CLS_ID = 101
SEP_ID = 102
LATENCY_WARMUP = 5
THROUGHPUT_BATCH = 64
THROUGHPUT_WARMUP = 2
THROUGHPUT_ITERS = 5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True, help="HF BERT directory (config.json + model.safetensors)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--latency-samples", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def random_ids(batch: int, seq: int) -> torch.Tensor:
    ids = torch.randint(TOKEN_LOW, TOKEN_HIGH, (batch, seq), dtype=torch.int64)
    ids[:, 0] = CLS_ID
    ids[:, -1] = SEP_ID
    return ids


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile: index ceil(q * n) - 1 of the sorted values."""
    n = len(sorted_values)
    idx = max(0, min(n - 1, math.ceil(q * n) - 1))
    return sorted_values[idx]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = BertForSequenceClassification.from_pretrained(
        args.model_path, num_labels=NUM_LABELS, dtype=torch.float32
    )
    model.float()
    model.train()

    model.bert.embeddings.word_embeddings.weight.requires_grad = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_params = sum(p.numel() for p in trainable)
    total_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)

    # ---- training -------------------------------------------------------
    input_ids = random_ids(args.batch, args.seq)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.randint(0, NUM_LABELS, (args.batch,), dtype=torch.int64)

    def train_step():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    for _ in range(args.warmup):
        train_step()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    elapsed = time.perf_counter() - start
    step_ms = elapsed * 1000.0 / args.steps
    train_samples_per_s = args.batch * args.steps / elapsed

    # ---- batch-1 latency ------------------------------------------------
    model.eval()
    with torch.inference_mode():
        ids1 = random_ids(1, args.seq)
        mask1 = torch.ones_like(ids1)
        for _ in range(LATENCY_WARMUP):
            model(input_ids=ids1, attention_mask=mask1)
        samples = []
        for _ in range(args.latency_samples):
            t0 = time.perf_counter()
            model(input_ids=ids1, attention_mask=mask1)
            samples.append((time.perf_counter() - t0) * 1000.0)
        samples.sort()
        p50 = percentile(samples, 0.50)
        p95 = percentile(samples, 0.95)

        # ---- batch-64 throughput ----------------------------------------
        ids64 = random_ids(THROUGHPUT_BATCH, args.seq)
        mask64 = torch.ones_like(ids64)
        for _ in range(THROUGHPUT_WARMUP):
            model(input_ids=ids64, attention_mask=mask64)
        t0 = time.perf_counter()
        for _ in range(THROUGHPUT_ITERS):
            model(input_ids=ids64, attention_mask=mask64)
        throughput = THROUGHPUT_BATCH * THROUGHPUT_ITERS / (time.perf_counter() - t0)

    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "seq": args.seq,
        "step_ms": round(step_ms, 3),
        "train_samples_per_s": round(train_samples_per_s, 3),
        "latency_b1_p50_ms": round(p50, 3),
        "latency_b1_p95_ms": round(p95, 3),
        "throughput_b64_per_s": round(throughput, 3),
        "trainable_params": trainable_params,
        "total_params": total_params,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
