"""Latency of a forward to actions on the straightforward and the fast path (optionally under capture), as JSON.

    python benchmarks/bench_inference.py --preset tiny --device cpu --dtype float32 --batch 1 8
    python benchmarks/bench_inference.py --preset vla-adapter-pro-qwen2.5-0.5b --capture segments full \
        --repeats 5 --out benchmarks/results/cpu-full-size.json

A benchmark, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vla_lab.bench import load_for_bench, run_benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny")
    source.add_argument("--checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--capture", nargs="*", default=[], choices=("segments", "full"))
    parser.add_argument("--paths", nargs="+", default=["straightforward", "fast"], choices=("straightforward", "fast"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="also write the JSON here (refuses to overwrite)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_for_bench(args.preset, args.checkpoint, args.dtype, args.device)
    result = run_benchmarks(model, args.batch, tuple(args.paths), tuple(args.capture), args.warmup, args.repeats,
                            preset=args.checkpoint or args.preset)
    text = json.dumps(result, indent=2)
    if args.out:
        if args.out.exists():
            print(f"error: {args.out} exists; choose another --out", file=sys.stderr)
            return 2
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
