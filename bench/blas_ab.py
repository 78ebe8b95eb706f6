"""The worker's CPU product libraries side by side on this machine.

Runs `worker bench` for each case of compare.sh's cpu set with each
library in turn (WORKER_BLAS), interleaved, REPS times, and prints one JSON
line per case and library with the median training step, batch-1 latency
p50 and inference batch time, and the processor:

    python3 bench/blas_ab.py WORKER MKL_LIB OPENBLAS_LIB [REPS] > out.jsonl

Needs MINILM_DIR, and the random BERT 512x4 that compare.sh writes to
$TMPDIR/fpb-bench-bert-512x4 (its case is left out when missing).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

from ratios import cpu_model

STEPS = ["--threads", "2", "--steps", "5", "--warmup", "2", "--latency-samples", "10"]


def cases():
    minilm = os.environ["MINILM_DIR"]
    bert = os.path.join(tempfile.gettempdir(), "fpb-bench-bert-512x4")
    out = {
        "minilm-l6 full-ft bs16 seq64": ["--arch", "bert", "--model-path", minilm,
                                         "--batch", "16", "--seq", "64", "--throughput-batch", "64"],
        "phi2-shape 2 blocks lora-r16 bs8 seq64": ["--arch", "phi", "--layers", "2", "--batch", "8",
                                                   "--seq", "64", "--throughput-batch", "16"],
        "phi 1920-wide 2 blocks lora-r16 bs4 seq96": ["--arch", "phi", "--layers", "2", "--hidden", "1920",
                                                      "--heads", "24", "--intermediate", "7680", "--batch", "4",
                                                      "--seq", "96", "--throughput-batch", "8"],
    }
    if os.path.exists(os.path.join(bert, "model.safetensors")):
        out["bert 512x4 random full-ft bs8 seq96"] = ["--arch", "bert", "--model-path", bert, "--batch", "8",
                                                      "--seq", "96", "--throughput-batch", "32"]
    return out


def main():
    worker, libs, reps = sys.argv[1], {"mkl": sys.argv[2], "openblas": sys.argv[3]}, int(
        (sys.argv[4:] or ["3"])[0])
    for name, args in cases().items():
        runs = {lib: [] for lib in libs}
        for _ in range(reps):
            for lib, path in libs.items():
                env = dict(os.environ, WORKER_BLAS=path)
                out = subprocess.run([worker, "bench", *args, *STEPS], env=env, check=True,
                                     capture_output=True, text=True).stdout
                b = json.loads(out)
                if b["cpu_gemm"] != lib:
                    raise SystemExit(f"{path}: the worker ran {b['cpu_gemm']}, not {lib}")
                runs[lib].append(b)
        for lib, bs in runs.items():
            med = lambda k: round(statistics.median(b[k] for b in bs), 2)
            print(json.dumps({
                "case": name, "cpu_gemm": lib, "reps": reps,
                "step_ms": med("step_ms"), "latency_b1_p50_ms": med("latency_b1_p50_ms"),
                "throughput_batch_ms": med("throughput_batch_ms"),
                "step_ms_each": [round(b["step_ms"], 1) for b in bs],
                "threads": 2, "cpu": cpu_model(),
            }), flush=True)


if __name__ == "__main__":
    main()
