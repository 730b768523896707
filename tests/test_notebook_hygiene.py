"""The committed notebooks and figures/: figures shown inline, exported only where a parameter says, and every
exported figure complete (PNG + SVG + PDF + a sidecar with data and no absolute path).

These tests read the committed files only; nothing is executed.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FIGURES = ROOT / "figures"
IMAGE_FORMATS = ("png", "svg", "pdf")
ABSOLUTE = re.compile(r"^(?:/|[A-Za-z]:[\\/]|\\\\)")
# Names that set matplotlib's global state (backend, rcParams, interactive mode, pyplot's figure registry).
GLOBAL_NAMES = {"use", "rcParams", "rc", "rcdefaults", "switch_backend", "ioff", "ion", "close", "interactive"}


def _cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict[str, Any]) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _code_cells(path: Path) -> list[dict[str, Any]]:
    return [c for c in _cells(path) if c["cell_type"] == "code"]


def _tree(cell: dict[str, Any]) -> ast.Module:
    return ast.parse(TransformerManager().transform_cell(_source(cell)))


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _exporters(path: Path) -> set[str]:
    """export_figure and the notebook's own functions that call it."""
    names = {"export_figure"}
    for cell in _code_cells(path):
        for node in ast.walk(_tree(cell)):
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(n, ast.Call) and _called(n) == "export_figure" for n in ast.walk(node)
            ):
                names.add(node.name)
    return names


def _exports(cell: dict[str, Any], exporters: set[str]) -> list[ast.Call]:
    """The calls that export a figure when the cell runs (not those inside the functions it defines)."""
    run = [s for s in _tree(cell).body if not isinstance(s, ast.FunctionDef)]
    return [n for s in run for n in ast.walk(s) if isinstance(n, ast.Call) and _called(n) in exporters]


def _images(cell: dict[str, Any]) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", [])
               if out["output_type"] in ("display_data", "execute_result"))


def _sidecars() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIGURES.glob("*.json"))}


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_notebooks_are_found():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_selects_the_inline_backend(path):
    """Figures built without pyplot display as images only under the inline backend, from the first cell on."""
    first = _code_cells(path)[0]
    assert "%matplotlib inline" in [line.strip() for line in _source(first).splitlines()]
    for cell in _code_cells(path)[1:]:
        assert "%matplotlib" not in _source(cell), "the backend is chosen once, in the first code cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_exported_only_where_the_parameter_says(path):
    """FIGURES comes from $VLA_LAB_FIGURES (else a temporary directory); nothing else names figures/."""
    first = _code_cells(path)[0]
    assignments = [n for n in ast.walk(_tree(first)) if isinstance(n, ast.Assign)
                   and [getattr(t, "id", None) for t in n.targets] == ["FIGURES"]]
    assert len(assignments) == 1, "the first code cell sets FIGURES"
    value = ast.unparse(assignments[0].value)
    assert value.startswith("os.environ.get('VLA_LAB_FIGURES') or tempfile.mkdtemp("), value
    exporters = _exporters(path)
    for index, cell in enumerate(_code_cells(path)):
        tree = _tree(cell)
        named = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and re.match(r"^\.?/?figures(/|$)", n.value)]
        assert not named, f"code cell {index} names the figures directory: {named}"
        if index == 0:
            continue
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "FIGURES"
                    and isinstance(n.ctx, ast.Store)], f"code cell {index} reassigns FIGURES"
        for call in (c for c in ast.walk(tree) if isinstance(c, ast.Call) and _called(c) == "export_figure"):
            out_dir = next((k.value for k in call.keywords if k.arg == "out_dir"),
                           call.args[2] if len(call.args) > 2 else None)
            assert isinstance(out_dir, ast.Name) and out_dir.id == "FIGURES", ast.unparse(call)
            assert "formats" not in [k.arg for k in call.keywords], f"{ast.unparse(call)}: PNG + SVG + PDF"
    assert len(exporters) > 1 or any(_exports(c, exporters) for c in _code_cells(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exported_figures_are_shown(path):
    """Every cell that exports a figure shows it, and the notebook shows at least as many images as it exported."""
    exporters = _exporters(path)
    for index, cell in enumerate(_code_cells(path)):
        if _exports(cell, exporters):
            assert _images(cell) >= 1, f"code cell {index} exports a figure but shows no image"
    exported = [name for name in _sidecars() if name.startswith(path.name[:3])]
    assert exported, f"no figures/{path.name[:3]}*.json"
    assert sum(_images(c) for c in _code_cells(path)) >= len(exported)


def _written_names(path: Path) -> tuple[set[str], set[str]]:
    """Figure names a notebook's code writes: exact string literals and the leading text of f-strings."""
    exact, prefixes = set(), set()
    stem = path.name[:3]
    for cell in _code_cells(path):
        for node in ast.walk(_tree(cell)):
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                if str(node.values[0].value).startswith(stem):
                    prefixes.add(str(node.values[0].value))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(stem):
                exact.add(node.value)
    return exact, prefixes


def test_every_figure_has_its_formats_and_a_sidecar():
    files = sorted(p for p in FIGURES.iterdir() if p.name != "README.md")
    assert files, "figures/ is empty"
    stems = {p.stem for p in files}
    for stem in stems:
        for suffix in (*IMAGE_FORMATS, "json"):
            assert (FIGURES / f"{stem}.{suffix}").is_file(), f"figures/{stem}.{suffix} is missing"
    assert {p.suffix for p in files} == {".png", ".svg", ".pdf", ".json"}
    for name, sidecar in _sidecars().items():
        assert sidecar["name"] == name and sidecar["files"] == [f"{name}.{f}" for f in IMAGE_FORMATS]


def test_no_stale_figures():
    """Every file in figures/ is one a notebook writes today."""
    by_number = {p.name[:3]: _written_names(p) for p in NOTEBOOKS}
    for name in _sidecars():
        exact, prefixes = by_number.get(name[:3], (set(), set()))
        assert name in exact or any(name.startswith(p) for p in prefixes), f"no notebook writes figures/{name}.*"


def test_sidecars_have_data_and_no_absolute_path():
    root = str(ROOT)
    for name, sidecar in _sidecars().items():
        assert sidecar.get("data") is not None, f"figures/{name}.json has no data"
        absolute = [s for s in _strings(sidecar) if ABSOLUTE.match(s) or root in s]
        assert not absolute, f"figures/{name}.json holds absolute paths: {absolute[:3]}"
        assert sidecar["provenance"].get("notebook"), f"figures/{name}.json does not name its notebook"


def _global_matplotlib(tree: ast.AST) -> list[str]:
    """pyplot imports and calls or attributes that change matplotlib's global state (rc_context is local)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("matplotlib.pyplot")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("matplotlib"):
            found += [f"{node.module}.{a.name}" for a in node.names
                      if "pyplot" in f"{node.module}.{a.name}" or a.name in GLOBAL_NAMES]
        elif (isinstance(node, ast.Attribute) and node.attr in GLOBAL_NAMES and isinstance(node.value, ast.Name)
              and node.value.id in ("matplotlib", "mpl", "plt", "pyplot")):
            found.append(ast.unparse(node))
    return found


def test_the_library_sets_no_global_matplotlib_state():
    """Figures are built without pyplot, and nothing changes the backend or rcParams for the caller."""
    found = [f"{path.relative_to(ROOT)}: {hit}" for path in sorted((ROOT / "vla_lab").rglob("*.py"))
             for hit in _global_matplotlib(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, found
    assert _global_matplotlib(ast.parse("import matplotlib\nmatplotlib.use('Agg')\nmatplotlib.rcParams['a'] = 1"))
    assert _global_matplotlib(ast.parse("import matplotlib.pyplot as plt"))
