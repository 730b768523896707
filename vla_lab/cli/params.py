"""``vla-lab params``: parameter counts per component of a preset, built on the meta device (no weights)."""

from __future__ import annotations

import argparse

from vla_lab.cli import options
from vla_lab.config import VLAConfig
from vla_lab.model import meta_model


def register(sub: options.Subparsers) -> None:
    """Add ``params`` to the subparsers of the ``vla-lab`` parser."""
    p = sub.add_parser("params", help="parameter counts per component of a preset (no weights needed)")
    options.add_preset(p, required=True, help="the preset to count")
    options.add_json(p, "print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab params``."""
    counts = meta_model(VLAConfig.preset(args.preset)).parameter_counts()
    if args.json:
        options.print_json(counts)
    else:
        width = max(len(k) for k in counts)
        for key, value in counts.items():
            print(f"{key:<{width}}  {value:>15,}")
    return 0
