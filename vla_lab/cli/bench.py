"""``vla-lab bench``: latency of the straightforward and fast inference paths (and of captures)."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from vla_lab import files
from vla_lab.cli import options
from vla_lab.errors import InputError


def register(sub: options.Subparsers) -> None:
    """Add ``bench`` to the subparsers of the ``vla-lab`` parser."""
    p = sub.add_parser("bench", help="latency of the straightforward and fast paths (JSON)")
    options.add_model_arguments(p, attention=None, prompt=False)
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes to time (default 1)")
    p.add_argument("--paths", nargs="+", default=["straightforward", "fast"], choices=("straightforward", "fast"),
                   help="inference paths to time (default: both)")
    p.add_argument("--capture", nargs="*", default=[], choices=("segments", "full"), help="also time capture")
    p.add_argument("--capture-vision", dest="capture_vision", action="store_true",
                   help="captures also record every ViT layer's attention")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs (default 20)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    options.add_out(p, "also write the JSON to this file (never overwritten)")
    options.add_json(p, "print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab bench``."""
    import torch

    from vla_lab.bench.inference import run_benchmarks

    out = files.check_output_file(args.out, "--out") if args.out else None
    for name in ("batch", "warmup", "repeats", "threads"):
        values = getattr(args, name)
        minimum = 0 if name == "warmup" else 1
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < minimum:
                raise InputError(f"--{name}: got {value}, expected an integer >= {minimum}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = options.load_model(args)
    _check_batches_fit(model, args.batch)
    result = run_benchmarks(model, args.batch, tuple(args.paths), tuple(args.capture), args.warmup, args.repeats,
                            preset=args.model, capture_vision=args.capture_vision)
    text = files.dumps(result)
    if out is not None:
        files.write_text(out, text + "\n")
    if args.json:
        print(text)
        return 0
    for row in result["results"]:
        print(f"{row['name']:<28} batch {row['batch']:>3}  median {row['median_ms']:9.2f} ms  "
              f"[{row['min_ms']:.2f}, {row['max_ms']:.2f}]  {row['actions_per_second']:10.1f} actions/s  "
              f"peak {row['peak_memory_bytes'] / 2**20:8.1f} MiB")
    print(f"device: {result['results'][0]['device_name']}, dtype {args.dtype}")
    return 0


def _check_batches_fit(model: Any, batches: list[int]) -> None:
    """Refuse a batch whose synthetic images alone exceed this machine's memory (before allocating them)."""
    from vla_lab.bench.inference import pixel_shape

    per_sample = math.prod(pixel_shape(model.config)) * 4  # float32, as synthetic_batch draws them
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for batch in batches:
        if batch * per_sample > memory:
            raise InputError(f"--batch: got {batch} (its images alone {batch * per_sample / 2**30:.0f} GiB), "
                             f"expected a batch whose inputs fit in this machine's {memory / 2**30:.0f} GiB")
