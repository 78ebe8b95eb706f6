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
for seed in "${seeds[@]}"; do
  CHAOS_JOBS=$jobs CHAOS_SEED=$seed RUST_TEST_THREADS=1 \
    cargo test -p system-tests --test load chaos_every_job_exactly_once -- --nocapture 2>/dev/null \
    | grep -o 'chaos: seed .*' | tee -a "$out"
done
