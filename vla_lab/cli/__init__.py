"""The ``vla-lab`` command line: :func:`main` and the parser it builds from one list of command modules.

Every command module in :data:`COMMANDS` has the same shape: ``register(subparsers)`` adds its parser(s) to
the ``vla-lab`` parser with ``func=run`` as their default, and ``run(args) -> int`` runs the command. The
options more than one module takes are defined once, in :mod:`vla_lab.cli.options`; the command modules
import it and never each other.

Every failure ends a command with one line on stderr, ``vla-lab <command>: error: <field>: got ...,
expected ...``, and a non-zero exit status: 2 for bad input, unusable checkpoints, existing outputs and
bad options; 130 after Ctrl-C; 1 for anything unforeseen. Warnings are one line each too. ``--debug``
(anywhere on the line, or ``VLA_LAB_DEBUG=1``) shows the Python traceback instead. Under torchrun, what every
rank meets alike (an interrupt, a refused input or option) is said by rank 0 only (:func:`options.speaks`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from types import ModuleType
from typing import Any

from vla_lab.cli import attention, bench, demo, libero, params, predict, study, train
from vla_lab.cli.options import Parser, speaks
from vla_lab.errors import InputError, InterruptError, VLALabError

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order ``vla-lab --help`` lists their commands (``libero``: ``eval`` and ``libero``).
COMMANDS: tuple[ModuleType, ...] = (demo, train, params, predict, bench, attention, libero, study)


def build_parser() -> argparse.ArgumentParser:
    """The ``vla-lab`` parser: ``--debug`` and one subparser per command, each registered by its module."""
    parser = Parser(prog="vla-lab", description="VLA-Adapter as released, and tools to look inside it")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (also VLA_LAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and a non-zero exit status (see the module doc)."""
    argv = _attach_proprio_value(sys.argv[1:] if argv is None else list(argv))
    debug = "--debug" in argv or os.environ.get("VLA_LAB_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        if speaks():
            print(" ".join(["vla-lab", *argv[:1]]) + ": error: interrupted", file=sys.stderr)
        return 130
    prog = f"vla-lab {args.command}"

    def one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        text = " ".join(str(message).split())
        print(f"{prog}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = one_line_warning
        try:
            status: int = args.func(args)
            return status
        except BrokenPipeError:  # the reader of stdout went away (``| head``): nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except Exception as exc:
            if debug:
                raise
            if speaks() or not isinstance(exc, (InputError, InterruptError)):
                print(f"{prog}: error: {_describe(exc)}", file=sys.stderr)
            return 130 if isinstance(exc, InterruptError) else 2 if isinstance(exc, (VLALabError, OSError)) else 1
        except KeyboardInterrupt:
            if debug:
                raise
            if speaks():
                print(f"{prog}: error: interrupted", file=sys.stderr)
            return 130


def _attach_proprio_value(argv: list[str]) -> list[str]:
    """``--proprio -0.2,0.1`` -> ``--proprio=-0.2,0.1``: argparse takes a value starting with '-' for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--proprio" and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"--proprio={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _describe(exc: BaseException) -> str:
    """One line for any exception: vla_lab's own messages as they are, others with their type."""
    if isinstance(exc, VLALabError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename!r}" if exc.filename else ""
        text = f"file{where}: {exc.strerror}"
    elif isinstance(exc, MemoryError):
        text = "memory: the machine ran out of memory; expected a smaller model, batch or input"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
    return " ".join(text.split())

