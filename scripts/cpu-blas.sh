#!/usr/bin/env bash
# Sourced by the scripts that run the worker on the CPU: when WORKER_BLAS is
# not set and Intel MKL was installed with pip (`pip install mkl`), points
# WORKER_BLAS at its libmkl_rt (pip puts it under the interpreter's prefix,
# outside the linker's search path) on Intel processors, or anywhere
# OpenBLAS is not installed. On other processors MKL runs its generic
# kernels, and the worker's own choice (OpenBLAS first there) is faster.
# Otherwise the worker finds MKL or OpenBLAS (`apt-get install
# libopenblas0`) on the usual library path, or uses candle's own products.
if [ -z "${WORKER_BLAS:-}" ] && command -v python3 >/dev/null 2>&1; then
  WORKER_BLAS=$(python3 - <<'PY' 2>/dev/null
import glob, os, sys
found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so.*")))
print(found[-1] if found else "")
PY
)
  if [ -n "$WORKER_BLAS" ] && ! grep -q GenuineIntel /proc/cpuinfo 2>/dev/null &&
    ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then
    WORKER_BLAS=""
  fi
  if [ -n "$WORKER_BLAS" ]; then
    export WORKER_BLAS
  else
    unset WORKER_BLAS
  fi
fi
