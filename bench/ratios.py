#!/usr/bin/env python3
"""Turns one candle and one PyTorch `bench` JSON line into one JSON line per
measurement: case, candle_ms, pytorch_ms and ratio = candle / PyTorch
(below 1: candle is faster), plus the settings both ran with.

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
    for label, key in MEASURES:
        c, t = candle[key], torch[key]
        name = f"{case}: {label}"
        if key == "throughput_batch_ms":
            name += f" {candle['throughput_batch']}"
        yield {
            "case": name,
            "candle_ms": round(c, 2),
            "pytorch_ms": round(t, 2),
            "ratio": round(c / t, 3),
            "device": candle.get("device", "cpu"),
            "dtype": candle.get("dtype"),
            "threads": candle.get("threads"),
            "cpu_gemm": candle.get("cpu_gemm"),
            "torch": torch.get("torch"),
            "cpu": cpu_model(),
            "gpu": torch.get("gpu"),
        }


def main(argv):
    case, candle, torch = argv[1], json.loads(argv[2]), json.loads(argv[3])
    for line in lines(case, candle, torch):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv)
