"""The shape of :mod:`vla_lab.cli`: one registration shape for every command module, each option defined once."""

from __future__ import annotations

import argparse
import ast
import inspect
import tomllib
from collections import defaultdict
from pathlib import Path

from vla_lab import cli
from vla_lab.cli import options

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "vla_lab" / "cli"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every parser that parses options: the commands without subcommands."""
    children = _subparsers(parser)
    if not children:
        yield path, parser
    for name, child in children.items():
        yield from _leaves(child, (*path, name))


def _command_module(top: argparse.ArgumentParser):
    """The command module whose ``run`` a top-level command's parser has as its ``func``."""
    func = top.get_default("func")
    return next(m for m in cli.COMMANDS if m.run is func)


def test_every_command_module_has_the_registration_shape():
    for module in cli.COMMANDS:
        assert module.__name__.startswith("vla_lab.cli."), module
        assert list(inspect.signature(module.register).parameters) == ["sub"], module.__name__
        assert list(inspect.signature(module.run).parameters) == ["args"], module.__name__
        assert module.register.__doc__ and module.run.__doc__, module.__name__
    tops = _subparsers(cli.build_parser())
    assert list(tops) == ["demo", "train", "params", "predict", "bench", "attention", "eval", "libero", "study"]
    used = {_command_module(parser) for parser in tops.values()}  # every top-level command runs a module's run
    assert used == set(cli.COMMANDS)
    # every command module is in the import-linter contract that keeps them from importing each other
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in contracts if c["type"] == "independence" and "vla_lab.cli.train" in c["modules"])
    assert sorted(independent["modules"]) == sorted(m.__name__ for m in cli.COMMANDS)
    files = {p.stem for p in CLI.glob("*.py")} - {"__init__", "options"}
    assert files == {m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS}


def _flag_definitions() -> dict[str, list[str]]:
    """Every flag an ``add_argument`` call of the package names -> where (``file:line``), read from the source."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                        found[arg.value].append(f"{path.name}:{node.lineno}")
    return found


def test_each_option_is_defined_once_and_shared_ones_in_the_options_module():
    definitions = _flag_definitions()
    assert {"--prompt", "--num-threads", "--device", "--out", "--overwrite", "--resume", "--json"} <= set(definitions)
    assert {flag: where for flag, where in definitions.items() if len(where) != 1} == {}
    # a flag that commands of two modules take is added by a function of vla_lab.cli.options
    modules_of: dict[str, set[str]] = defaultdict(set)
    for name, top in _subparsers(cli.build_parser()).items():
        for _, parser in _leaves(top, (name,)):
            for action in parser._actions:
                for flag in action.option_strings:
                    modules_of[flag].add(_command_module(top).__name__)
    shared = {flag for flag, modules in modules_of.items() if len(modules) > 1} - {"-h", "--help"}
    assert {"--prompt", "--num-threads", "--device", "--seed", "--out", "--overwrite", "--json"} <= shared
    assert {flag: definitions[flag] for flag in shared if not definitions[flag][0].startswith("options.py:")} == {}


def test_a_shared_option_parses_the_same_in_every_command(tmp_path):
    parser = cli.build_parser()
    given = ["--num-threads", "3", "--prompt", "openvla", "--device", "cpu"]
    train = parser.parse_args(["train", "--out", str(tmp_path), *given])
    study = parser.parse_args(["study", "knockout", *given])
    libero = parser.parse_args(["eval", "libero", "--model", "tiny", "--suite", "libero_spatial", *given])
    for args in (train, study, libero):
        assert (args.num_threads, args.prompt, args.device) == (3, "openvla", "cpu")
    assert options.add_prompt.__module__ == "vla_lab.cli.options"


def test_every_option_of_every_command_has_help():
    for path, parser in _leaves(cli.build_parser(), ("vla-lab",)):
        assert parser.format_help(), path
        missing = [a.option_strings or a.dest for a in parser._actions if not a.help]
        assert missing == [], (path, missing)
