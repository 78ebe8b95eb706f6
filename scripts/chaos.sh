#!/usr/bin/env bash
# The long chaos run: the 1000-job load over four workers with worker
# SIGKILLs, closes of every broker connection and Redis SIGKILLs on a
# seeded schedule (tests/load.rs, chaos_every_job_exactly_once), once per
# seed, each line of figures appended to docs/results/chaos.txt.
# Needs what scripts/test.sh needs (RabbitMQ, Redis, moto_server, the data).
# Usage: scripts/chaos.sh [JOBS] [SEED...]   (default: 1000 jobs, seeds 1 2 3)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-1000}
shift || true
seeds=("${@:-1 2 3}")
# shellcheck disable=SC2206
seeds=(${seeds[*]})
FPB_DIR="${FPB_DIR:-$(cd .. && pwd)/shared/data/financial_phrasebank}"
export FPB_DIR
cargo build --workspace --bins
out=docs/results/chaos.txt
{
  echo "# $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD), $(nproc) cores: scripts/chaos.sh $jobs ${seeds[*]}"
} >>"$out"
logs=$(mktemp -d)
for seed in "${seeds[@]}"; do
  log="$logs/seed-$seed.log"
  if CHAOS_JOBS=$jobs CHAOS_SEED=$seed RUST_TEST_THREADS=1 \
    cargo test -p system-tests --test load chaos_every_job_exactly_once -- --nocapture >"$log" 2>&1; then
    grep -o 'chaos: seed .*' "$log" | tee -a "$out"
  else
    echo "chaos: seed $seed FAILED: $(grep -m1 -A2 'panicked' "$log" | tr '\n' ' ')" | tee -a "$out"
    echo "the whole log: $log" >&2
  fi
done
