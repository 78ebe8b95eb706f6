#!/usr/bin/env bash
# Runs sweeps/mlflow-demo.toml (a baseline and a dendritic MiniLM run) with
# an MLflow tracking server of its own (sqlite, served artifacts) and takes
# screenshots of the MLflow UI comparing the two runs with headless
# Chromium, into docs/mlflow/ (or $1).
# Needs: mlflow (pip install mlflow), chromium, curl; MINILM_DIR and FPB_DIR
# as for the tests.
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
ui="http://127.0.0.1:$port"
shot() {
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1600,1100 --virtual-time-budget=30000 \
    --screenshot="$1" "$2" 2>/dev/null
}
shot "$out/compare-runs.png" "$ui/#/compare-runs?runs=$runs&experiments=[\"$exp\"]"
shot "$out/experiment-charts.png" "$ui/#/experiments/$exp?compareRunsMode=CHART"
echo "screenshots in $out/"
