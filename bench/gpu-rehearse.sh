#!/usr/bin/env bash
# Rehearses the GPU check end to end on the CPU, the way a device call runs
# it: bench/gpu-build.sh packs the CPU build of the test suite (BUILD=cpu),
# a bare copy of the tree holds only what the call would carry (tracked and
# untracked-not-ignored files, gpu-bin/, gpu-data/), and bench/gpu-check.sh
# runs there with DEVICE=cpu, a small Phi, one epoch of MiniLM on sentences
# cut to 48 tokens, and no Rust
# toolchain on PATH. Then the results are checked as the device tool would
# return them: every part passed, at most 8 flat files of at most 16 MiB
# with plain names, a benchmark line per measurement with its dispatch
# count, and the training run's metrics.
#
#   ./bench/gpu-rehearse.sh        # after ./scripts/test.sh (reuses its build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=cpu XZ_LEVEL="${XZ_LEVEL:-1}" ./bench/gpu-build.sh

bare=$(mktemp -d)
trap 'rm -rf "$bare"' EXIT
mkdir -p "$bare/tree"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -C "$bare/tree" -xf -
cp -r gpu-bin gpu-data "$bare/tree/"

# No Rust toolchain: drop every PATH folder holding cargo or rustc.
bare_path=$(echo "$PATH" | tr ':' '\n' |
  while IFS= read -r d; do [ -x "$d/cargo" ] || [ -x "$d/rustc" ] || echo "$d"; done |
  paste -sd:)
rc=0
(
  cd "$bare/tree"
  env -u CARGO_TARGET_DIR PATH="$bare_path" OUT="$bare/out" DEVICE=cpu SET=rehearsal \
    EPOCHS=1 MAX_LEN=48 TRAIN_CAP=360 BUDGET=700 bash -c '! command -v cargo >/dev/null && bash bench/gpu-check.sh'
) || rc=$?
echo "gpu-check.sh exit status: $rc"

python3 - "$bare/out" "$rc" <<'PY'
import json, os, re, sys

out, rc = sys.argv[1], int(sys.argv[2])
problems = []
entries = sorted(os.listdir(out))
print("files:", entries)
if len(entries) > 8:
    problems.append(f"{len(entries)} files under $OUT (at most 8 come back)")
for e in entries:
    p = os.path.join(out, e)
    if not os.path.isfile(p):
        problems.append(f"{e} is not a plain file")
    elif os.path.getsize(p) > 16 * 1024 * 1024:
        problems.append(f"{e} is over 16 MiB")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", e):
        problems.append(f"{e}: name would not come back")
def load(name, lines=False):
    path = os.path.join(out, name)
    if not os.path.isfile(path):
        problems.append(f"{name} missing")
        return [] if lines else {}
    with open(path) as f:
        return [json.loads(l) for l in f] if lines else json.load(f)

summary = load("summary.json")
for name in ("ldd", "parity", "rehearsal", "train"):
    part = summary.get(name)
    if not part or part.get("rc") != 0:
        problems.append(f"part {name}: {part}")
bench = load("gpu.jsonl", lines=True)
if len(bench) != 3 or any(b["candle_ms"] <= 0 for b in bench):
    problems.append(f"benchmark lines: {bench}")
elif not bench[0].get("dispatches_per_step"):
    problems.append("no dispatch count in the train-step line")
metrics = load("train-metrics.json")
if not metrics.get("test", {}).get("accuracy", 0) > 0.5:
    problems.append(f"training run test scores: {metrics.get('test')}")
if rc != 0:
    problems.append(f"gpu-check.sh exited {rc}")
if problems:
    sys.exit("rehearsal failed:\n  " + "\n  ".join(problems))
print(f"rehearsal passed in {summary['seconds']} s: "
      + ", ".join(f"{k} {v['seconds']} s" for k, v in summary.items() if isinstance(v, dict)))
PY
