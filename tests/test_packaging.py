"""The set-up commands and dependency lists stay in step."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
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


def test_readme_test_command_collects_tests_and_notebooks_together():
    """The README's pytest arguments collect in one session without an error. Every ``conftest.py`` is imported
    under the name ``conftest``, so a test that imported helpers from one would get whichever loaded last."""
    pytest_args = shlex.split(readme_commands()["test"].split("-m pytest", 1)[1])
    command = [sys.executable, "-m", "pytest", *pytest_args, "--collect-only", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.splitlines()[-1].lower(), proc.stdout[-3000:]


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
