"""The set-up commands and dependency lists stay in step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> dict[str, str]:
    """The two set-up commands, marked ``<!-- main-command -->`` / ``<!-- test-command -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    found = {}
    for name in ("main", "test"):
        match = re.search(rf"<!-- {name}-command -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
        assert match, f"README.md has no {name}-command block"
        found[name] = match.group(1).strip()
    return found


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == readme_commands()["test"]


def test_readme_commands_install_everything_themselves():
    commands = readme_commands()
    assert commands["main"].startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert commands["main"].endswith("vla-lab demo")
    test = commands["test"]
    assert "'.[test,libero]'" in test and "--nbval-lax" in test and "notebooks" in test


def _requirement_names(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        name = re.split(r"[<>=!~ ]", req, maxsplit=1)[0].lower()
        out[name] = req.replace(" ", "")
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    pip_lines = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("- "):
            item = stripped[2:].strip()
            if not item.startswith("-e"):
                pip_lines.append(item)
    assert _requirement_names(pip_lines) == _requirement_names(wanted)
