#!/usr/bin/env bash
# Runs sweeps/mlflow-demo.toml (a baseline and a dendritic MiniLM run) with
# an MLflow tracking server of its own (sqlite, served artifacts) and takes
# screenshots of the MLflow UI comparing the two runs with headless
# Chromium (driven by Playwright: scripts/mlflow-ui-shots.py), into docs/mlflow/ (or $1).
# Needs: mlflow and playwright (pip), chromium (apt), curl; MINILM_DIR and
# FPB_DIR as for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/mlflow}
port=${MLFLOW_PORT:-5077}
api="http://127.0.0.1:$port/api/2.0/mlflow"
dir=$(mktemp -d)
mkdir -p "$out"

cargo build -q -p worker --bins
worker="${CARGO_TARGET_DIR:-target}/debug/worker"

mlflow server --backend-store-uri "sqlite:///$dir/mlflow.db" \
  --artifacts-destination "$dir/artifacts" --host 127.0.0.1 --port "$port" \
  --workers 1 >"$dir/mlflow.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 1; done

"$worker" run sweeps/mlflow-demo.toml --out "$dir/runs" --mlflow-uri "http://127.0.0.1:$port"

exp=$(curl -sf "$api/experiments/get-by-name?experiment_name=mlflow-demo" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["experiment"]["experiment_id"])')
runs=$(curl -sf -X POST "$api/runs/search" -H 'content-type: application/json' \
  -d "{\"experiment_ids\": [\"$exp\"]}" |
  python3 -c 'import json, sys; print(json.dumps([r["info"]["run_id"] for r in json.load(sys.stdin)["runs"]], separators=(",", ":")))')
python3 scripts/mlflow-ui-shots.py "http://127.0.0.1:$port" "$exp" "$runs" "$out"
echo "screenshots in $out/"
