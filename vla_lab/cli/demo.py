"""``vla-lab demo``: the main job -- evaluate the shipped tabletop models and export their attention figures."""

from __future__ import annotations

import argparse

from vla_lab.cli import options
from vla_lab.errors import InputError


def register(sub: options.Subparsers) -> None:
    """Add ``demo`` to the subparsers of the ``vla-lab`` parser."""
    p = sub.add_parser("demo", help="evaluate the shipped models and export their attention figures (main job)")
    options.add_out(p, "output directory (default: ./vla_lab_demo)", default="vla_lab_demo")
    p.add_argument("--episodes", type=int, default=200, help="held-out test scenes per model (default 200)")
    options.add_overwrite(p, "replace the files of an earlier demo in --out")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the random baseline")
    options.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The handler of ``vla-lab demo``."""
    from vla_lab.studies.demo import run_demo

    if args.episodes < 1:
        raise InputError(f"--episodes: got {args.episodes}, expected a positive integer")
    summary = run_demo(args.out, episodes=args.episodes, overwrite=args.overwrite, baseline=args.baseline)
    if args.json:
        options.print_json(summary)
        return 0
    print(f"shipped tabletop models on {summary['episodes']} held-out test scenes (closed loop):")
    for mask, m in summary["models"].items():
        layer = m["target_attention"]["llm_action_queries"]["depth"]
        low, high = m["success_ci95"]
        print(f"  {mask:<14} success {m['success_rate']:6.1%} [{low:.1%}, {high:.1%}]  action L1 {m['action_l1']:.4f}"
              f"  target-attention ratio {m['target_attention_ratio']:5.2f}x (LLM layer {layer})")
    for mask, m in summary["random_baseline"].items():
        layer = m["target_attention"]["llm_action_queries"]["depth"]
        print(f"  random init, {mask:<14}{'':53}target-attention ratio {m['target_attention_ratio']:5.2f}x "
              f"(LLM layer {layer})")
    print(f"figures and demo.json in {summary['out_dir']}/ ({summary['seconds']} s)")
    return 0
