"""Latency of a forward to actions on the straightforward and the fast path (optionally under capture), as JSON.

A thin wrapper of ``vla-lab bench`` (the same options; JSON is always printed):

    python benchmarks/bench_inference.py --preset tiny --device cpu --dtype float32 --batch 1 8
    python benchmarks/bench_inference.py --preset vla-adapter-pro-qwen2.5-0.5b --capture segments full \
        --repeats 5 --out benchmarks/results/cpu-full-size.json

A benchmark, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import sys

from vla_lab.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "--json", *sys.argv[1:]]))
