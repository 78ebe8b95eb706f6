#!/usr/bin/env python3
"""Turns one candle and one PyTorch `bench` JSON line into one JSON line per
measurement: case, candle_ms, pytorch_ms and ratio = candle / PyTorch
(below 1: candle is faster), plus the settings both ran with and the
worker's backend dispatches per training step and per batch-1 forward pass.
A PyTorch line holding ``error`` (it failed or is not installed) gives
``pytorch_ms`` and ``ratio`` null and says why in ``pytorch_error``.

Usage: ratios.py CASE CANDLE_JSON TORCH_JSON
"""

import json
import platform
import sys


def cpu_model() -> str:
    """The processor's model name, as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

MEASURES = [
    ("train step", "step_ms"),
    ("batch-1 latency p50", "latency_b1_p50_ms"),
    ("inference batch", "throughput_batch_ms"),
]


def lines(case: str, candle: dict, torch: dict):
    failed = torch.get("error")
    for label, key in MEASURES:
        c = candle[key]
        t = None if failed else torch[key]
        name = f"{case}: {label}"
        if key == "throughput_batch_ms":
            name += f" {candle['throughput_batch']}"
        line = {
            "case": name,
            "candle_ms": round(c, 2),
            "pytorch_ms": None if t is None else round(t, 2),
            "ratio": None if t is None else round(c / t, 3),
            "device": candle.get("device", "cpu"),
            "dtype": candle.get("dtype"),
            "threads": candle.get("threads"),
            "cpu_gemm": candle.get("cpu_gemm"),
            "torch": torch.get("torch"),
            "cpu": cpu_model(),
            "gpu": torch.get("gpu"),
        }
        if key == "step_ms":
            line["dispatches_per_step"] = candle.get("dispatches_per_step")
        if key == "latency_b1_p50_ms":
            line["dispatches_b1_forward"] = candle.get("dispatches_b1_forward")
        if failed:
            line["pytorch_error"] = failed
        yield line


def main(argv):
    case, candle, torch = argv[1], json.loads(argv[2]), json.loads(argv[3])
    for line in lines(case, candle, torch):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv)
