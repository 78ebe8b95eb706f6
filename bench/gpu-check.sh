#!/usr/bin/env bash
# One prepared check for a GPU machine (run from the repository root, after
# ./bench/gpu-build.sh put gpu-bin/ and gpu-data/ beside it). Writes under
# $OUT (default gpu-out/):
#   gpu.txt            the GPU, driver and memory (nvidia-smi)
#   parity.txt         the PyTorch parity tests on cuda:0 (f32 logits within
#                      1e-4, gradients within 1e-5 + 1e-3 of the largest; bf16
#                      logits within 0.05 + 2% of the largest)
#   gpu.jsonl          Phi-2 shape (32 blocks, 2560 wide, bf16, LoRA r16 on
#                      q,k,v,dense), candle and PyTorch + PEFT one after the
#                      other: bs16/seq64 and bs32/seq128 steps, bs1 latency
#   runs/              a real MiniLM-L6 fine-tune (sweeps/quickstart.toml,
#                      3 epochs) on cuda:0, with its Results.csv and plots
#   summary.json       pass/fail of each part and its seconds
# Each part runs even when an earlier one failed; the exit status is the
# number of failed parts.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
BIN="${BIN:-gpu-bin}"
mkdir -p "$OUT"
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
  cublas=$(ldconfig -p | grep -o '/[^ ]*libcublas.so.13' | head -1)
  if [ -z "$cublas" ]; then
    cublas=$(python3 -c 'import nvidia.cu13, os; print(os.path.join(nvidia.cu13.__path__[0], "lib", "libcublas.so.13"))' 2>/dev/null || true)
  fi
  export LD_LIBRARY_PATH="${cublas:+$(dirname "$cublas"):}/usr/local/nvidia/lib64"
fi
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

failed=0
parts=()
part() {
  local name=$1
  shift
  local t0=$SECONDS rc=0
  echo "== $name"
  "$@" || rc=$?
  [ "$rc" = 0 ] || failed=$((failed + 1))
  parts+=("\"$name\": {\"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
}

part gpu bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee '$OUT/gpu.txt'"
part parity bash -c "PARITY_DEVICE=cuda:0 PARITY_FIXTURES=worker/tests/fixtures '$BIN/parity' --test-threads 1 2>&1 | tee '$OUT/parity.txt'; exit \${PIPESTATUS[0]}"
part bench env SET=gpu DEVICE=cuda:0 WORKER="$BIN/worker" OUT="$OUT/gpu.jsonl" STEPS=10 ./bench/compare.sh
part train env MINILM_DIR="$PWD/gpu-data/minilm" FPB_DIR="$PWD/gpu-data/fpb" \
  "$BIN/worker" run sweeps/quickstart.toml --device cuda:0 --out "$OUT/runs"

(IFS=,; echo "{${parts[*]}}") | tee "$OUT/summary.json"
exit "$failed"
