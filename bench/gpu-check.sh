#!/usr/bin/env bash
# One prepared check for a GPU machine, run from the repository root after
# ./bench/gpu-build.sh put gpu-bin/ and gpu-data/ beside it (carry both):
#
#   bash bench/gpu-check.sh
#
# Needs no Rust toolchain: the binaries are unpacked with Python's standard
# library into a temporary folder. Parts, in order, each under its own
# time limit and all within BUDGET seconds (530):
#   ldd      every library the binaries need is found (fails fast)
#   parity   the PyTorch parity tests on $DEVICE
#   bs16     Phi-2 shape (32 blocks, 2560 wide, bf16, LoRA r16 on q,k,v,dense)
#   bs32     the same at bs32/seq128; worker bench then PyTorch + PEFT
#   train    a real MiniLM-L6 fine-tune (sweeps/quickstart.toml) on $DEVICE
# A part runs even when an earlier one failed (ldd excepted: nothing runs
# without its libraries); the exit status is the number of failed parts.
# At most 8 flat files are written under $OUT (default gpu-out/):
#   gpu.txt  ldd.txt  parity.txt  gpu.jsonl  bench.log  train.log
#   train-metrics.json  summary.json
#
# DEVICE=cpu SET=rehearsal EPOCHS=1 MAX_LEN=48 runs the same steps on the CPU
# (bench/gpu-rehearse.sh, with more time for the CPU's training run:
# TRAIN_CAP, BUDGET); CUDA library folders found on the machine are
# prepended to LD_LIBRARY_PATH whatever it held, and the line is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
DEVICE="${DEVICE:-cuda:0}"
SET="${SET:-gpu}"
BUDGET="${BUDGET:-530}"
TRAIN_CAP="${TRAIN_CAP:-150}"
EPOCHS="${EPOCHS:-}"
MAX_LEN="${MAX_LEN:-}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

# CUDA 13 libraries: the driver's folder, the CUDA toolkit's, and those the
# installed Python wheels (torch's nvidia-*) ship, always ahead of what
# LD_LIBRARY_PATH already holds.
cuda_dirs=$(python3 - <<'PY'
import os, site, sys
need = {"libcuda.so.1", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10",
        "libcudart.so.13", "libnvrtc.so.13"}
roots = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/local/cuda/lib64",
         "/usr/local/cuda/targets/x86_64-linux/lib"]
try:
    roots += [os.path.join(p, "nvidia") for p in site.getsitepackages()]
except AttributeError:
    pass
dirs = []
for root in roots:
    for d, _, files in os.walk(root):
        if need & set(files) and d not in dirs:
            dirs.append(d)
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${cuda_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
# CPU products through MKL where pip installed it (the CPU rehearsal).
. scripts/cpu-blas.sh

parts=()
failed=0
# part NAME CAP_SECONDS COMMAND...: runs COMMAND under `timeout` (its cap or
# what is left of the budget, whichever is less) and records rc and seconds.
part() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - (SECONDS - start))) t0=$SECONDS rc=0
  [ "$cap" -le "$left" ] || cap=$left
  echo "== $name (at most ${cap}s)"
  if [ "$cap" -le 5 ]; then
    rc=124
    echo "$name: no time left"
  else
    # Shell functions run in a child bash (exported below) so that
    # `timeout` can stop them with everything they started.
    timeout -k 5 "$cap" bash -c '"$@"' part "$@" || rc=$?
  fi
  [ "$rc" = 0 ] || failed=$((failed + 1))
  parts+=("\"$name\": {\"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
  return "$rc"
}
skip() {
  echo "== $1: skipped ($2)"
  parts+=("\"$1\": {\"skipped\": \"$2\"}")
}
summary() {
  (IFS=,; echo "{\"device\": \"$DEVICE\", \"seconds\": $((SECONDS - start)), ${parts[*]}}") |
    tee "$OUT/summary.json"
}

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
else
  echo "no nvidia-smi; device $DEVICE" >"$OUT/gpu.txt"
fi
cat "$OUT/gpu.txt"

unpack() {
  python3 - "$WORK/bin" <<'PY'
import sys, tarfile
with tarfile.open("gpu-bin/bins.tar.xz") as t:
    if hasattr(tarfile, "data_filter"):
        t.extractall(sys.argv[1], filter="data")
    else:
        t.extractall(sys.argv[1])
PY
}
ldd_check() {
  unpack || return 1
  chmod +x "$WORK/bin/worker" "$WORK/bin/parity"
  ldd "$WORK/bin/worker" "$WORK/bin/parity" >"$OUT/ldd.txt" 2>&1
  cat "$OUT/ldd.txt"
  ! grep -q 'not found' "$OUT/ldd.txt"
}
export OUT DEVICE EPOCHS MAX_LEN WORK
export -f unpack ldd_check
if ! part ldd 60 ldd_check; then
  echo "libraries missing (see ldd.txt): nothing else can run"
  summary
  exit "$failed"
fi
W="$WORK/bin/worker"
export W

part parity 120 bash -c "PARITY_DEVICE='$DEVICE' PARITY_FIXTURES=worker/tests/fixtures \
  '$WORK/bin/parity' --test-threads 1 >'$OUT/parity.txt' 2>&1; rc=\$?; tail -5 '$OUT/parity.txt'; exit \$rc"

: >"$OUT/gpu.jsonl"
bench() {
  env SET="$1" APPEND=1 DEVICE="$DEVICE" WORKER="$W" OUT="$OUT/gpu.jsonl" STEPS=10 \
    LOG="$OUT/bench.log" TIMEOUT="$2" ./bench/compare.sh
}
export -f bench
if [ "$SET" = gpu ]; then
  part bs16 170 bench gpu-bs16 80
  part bs32 200 bench gpu-bs32 95
else
  part "$SET" 170 bench "$SET" 80
fi

train() {
  python3 - "$WORK/minilm" <<'PY' || return 1
import lzma, os, shutil, sys
dst = sys.argv[1]
os.makedirs(dst, exist_ok=True)
for f in ("config.json", "tokenizer.json"):
    shutil.copy(os.path.join("gpu-data/minilm", f), dst)
with lzma.open("gpu-data/minilm/model.safetensors.xz") as src, \
        open(os.path.join(dst, "model.safetensors"), "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
  local sweep=sweeps/quickstart.toml
  if [ -n "$EPOCHS$MAX_LEN" ]; then
    sed -e "s/^epochs = .*/epochs = ${EPOCHS:-3}/" -e "s/^max_len = .*/max_len = ${MAX_LEN:-128}/" \
      sweeps/quickstart.toml >"$WORK/quickstart.toml"
    sweep="$WORK/quickstart.toml"
  fi
  MINILM_DIR="$WORK/minilm" FPB_DIR="$PWD/gpu-data/fpb" \
    "$W" run "$sweep" --device "$DEVICE" --out "$WORK/runs" >"$OUT/train.log" 2>&1
  local rc=$?
  tail -15 "$OUT/train.log"
  local metrics
  metrics=$(find "$WORK/runs" -name metrics.json | head -1)
  [ -n "$metrics" ] && cp "$metrics" "$OUT/train-metrics.json"
  return "$rc"
}
export -f train
if [ -f gpu-data/minilm/model.safetensors.xz ]; then
  part train "$TRAIN_CAP" train
else
  skip train "MiniLM not carried (gpu-data/minilm)"
fi

summary
exit "$failed"
