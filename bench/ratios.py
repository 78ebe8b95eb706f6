#!/usr/bin/env python3
"""Turns one candle and one PyTorch `bench` JSON line into one JSON line per
measurement: case, candle_ms, pytorch_ms and ratio = candle / PyTorch
(below 1: candle is faster), plus the settings both ran with.

Usage: ratios.py CASE CANDLE_JSON TORCH_JSON
"""

import json
import sys

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
            "torch": torch.get("torch"),
        }


def main(argv):
    case, candle, torch = argv[1], json.loads(argv[2]), json.loads(argv[3])
    for line in lines(case, candle, torch):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv)
