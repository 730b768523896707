"""The package's shape: layers that depend one way, no import cycles, small modules, nothing read from outside;
and the tests' own: no test module imports another."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vla_lab"
MAX_MODULE_LINES = 520  # "no module over ~500 lines"


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_layers_contract_names_every_top_level_module():
    layers = next(c for c in _contracts() if c["type"] == "layers")
    assert layers["containers"] == ["vla_lab"] and layers["exhaustive"] is True
    declared = {name.strip() for layer in layers["layers"] for name in re.split(r"[|:]", layer)}
    present = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert declared == present
    # the data path, in order, from the bottom up
    order = [name.strip() for layer in reversed(layers["layers"]) for name in re.split(r"[|:]", layer)]
    path = ["config", "processing", "worlds", "model", "policy", "interp", "viz", "tabletop", "training", "studies",
            "cli"]
    assert [name for name in order if name in path] == path


def _lint(tmp_path: Path, extra: str = "", module: str = "model/sequence.py") -> subprocess.CompletedProcess:
    """Run import-linter on a copy of the package, with ``extra`` appended to ``vla_lab/<module>``."""
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "vla_lab", ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    if extra:
        target = source / "vla_lab" / module
        target.write_text(target.read_text() + extra)
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=source,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(source)})


@pytest.mark.slow
def test_import_linter_passes_and_sees_function_level_imports(tmp_path):
    assert _lint(tmp_path).returncode == 0
    upward = "\n\ndef _probe() -> None:\n    from vla_lab.tabletop import evaluate  # noqa: F401\n"
    broken = _lint(tmp_path / "upward", upward)
    assert broken.returncode != 0 and "vla_lab.model.sequence -> vla_lab.tabletop" in broken.stdout
    # worlds are model-free: below the model, not beside it
    model_in_world = "\n\ndef _probe() -> None:\n    from vla_lab.model import VLAAdapter  # noqa: F401\n"
    broken = _lint(tmp_path / "world", model_in_world, "worlds/libero/world.py")
    assert broken.returncode != 0 and "vla_lab.worlds.libero.world -> vla_lab.model" in broken.stdout
    cycle = "\n\ndef _probe() -> None:\n    from vla_lab.model.vla import VLAAdapter  # noqa: F401\n"
    broken = _lint(tmp_path / "cycle", cycle)
    assert broken.returncode != 0 and "No cycles are allowed in vla_lab.model" in broken.stdout


def test_no_module_is_long():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in lengths.items() if v > MAX_MODULE_LINES} == {}


def test_nothing_reads_outside_the_repository():
    """Tests, notebooks and the package use only files in the repository (a fresh clone has no ../shared)."""
    patterns = [r"\.\./shared", r"/ \"shared\"", r"/work/", r"shared/(fixtures|reference)"]
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "notebooks").glob("*.ipynb"),
             *(ROOT / "benchmarks").glob("*.py")]
    found = []
    for path in files:
        text = path.read_text()
        if path.name == Path(__file__).name:
            continue
        found += [f"{path.relative_to(ROOT)}: {p}" for p in patterns if re.search(p, text)]
    assert found == []


def test_the_package_is_typed():
    assert (PACKAGE / "py.typed").exists()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["mypy"]["packages"] == ["vla_lab"]
    assert config["project"]["requires-python"] == ">=3.11" and config["project"]["license"] == "MIT"


def _test_module_imports(source: str) -> list[str]:
    """The modules a test file imports that are test modules, ``conftest`` or anything under ``tests.`` (at any
    depth of the file: function-level imports count)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        found += [n for n in names if n.split(".")[0] in ("tests", "conftest") or
                  any(part.startswith("test_") for part in n.split("."))]
    return found


def test_no_test_module_imports_another():
    """Shared helpers live in ``tests/testkit.py`` and shared fixtures in ``conftest.py``: a test module imported
    by another runs twice under two names (``test_x`` and ``tests.test_x``) and ties the two modules' tiers."""
    assert _test_module_imports("from tests.test_train import read_metrics\n\ndef f():\n    import test_checkpoint\n"
                                "    from testkit import snapshot\n    from vla_lab.testing import x\n") == \
        ["tests.test_train", "test_checkpoint"]
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "notebooks").rglob("*.py")]
    found = {str(p.relative_to(ROOT)): _test_module_imports(p.read_text()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}
