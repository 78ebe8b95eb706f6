#!/usr/bin/env bash
# Runs sweeps/exp4-adapted.toml a pair at a time: the four arms of one
# (split seed, seed) before the next, so that an interrupted run leaves
# whole pairs; a rerun skips finished jobs. PAIRS (pair numbers from 0, in
# the dry run's order) picks which pairs run, in that order. Usage:
#   [PAIRS="3 4 5"] scripts/exp4-adapted.sh [OUT] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cpu-blas.sh
out=${1:-runs}
threads=${2:-2}
worker=${WORKER:-worker}
sweep=sweeps/exp4-adapted.toml
jobs=$("$worker" run "$sweep" --dry-run | awk '{print $1}')
n=$(echo "$jobs" | wc -l)
arms=4
pairs=$((n / arms))
for p in ${PAIRS:-$(seq 0 $((pairs - 1)))}; do
  for a in $(seq 0 $((arms - 1))); do
    id=$(echo "$jobs" | sed -n "$((a * pairs + p + 1))p")
    "$worker" run "$sweep" --out "$out" --threads "$threads" --only "$id"
  done
done
