"""The ``vla-lab`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from vla_lab.config import PRESETS, VLAConfig
from vla_lab.errors import VLALabError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def _command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


@_command("params")
def _params(args: argparse.Namespace) -> int:
    from vla_lab.model import build_on_meta

    counts = build_on_meta(VLAConfig.preset(args.preset)).parameter_counts()
    if args.json:
        _print_json(counts)
    else:
        width = max(len(k) for k in counts)
        for key, value in counts.items():
            print(f"{key:<{width}}  {value:>15,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="parameter counts per component of a preset (no weights needed)")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except VLALabError as exc:
        print(f"vla-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
