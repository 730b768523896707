"""Reproducible export of figures: PNG, SVG and PDF plus a JSON sidecar with the plotted numbers and provenance.

    viz.export_figure(fig, "segment_mass_layer3", out_dir, provenance=viz.provenance(model, "causal", "..."))

Files are written atomically, never replaced silently, and the images carry no dates or versions, so a
re-export of the same figure is byte-identical. A sidecar always holds the plotted numbers (``data``), and
every path in it is relative to the repository root (:func:`sidecar_path`), never absolute.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine

from vla_lab.config import AttentionLike, AttentionSpec
from vla_lab.errors import ExportError, InputError
from vla_lab.files import present, write_atomic
from vla_lab.model import VLAAdapter
from vla_lab.version import __version__

#: Figure attribute holding the plotted numbers (a tidy DataFrame).
DATA_ATTR = "vla_lab_data"
#: Figure attribute naming the function that made it.
FUNCTION_ATTR = "vla_lab_function"
EXPORT_FORMATS = ("png", "svg", "pdf")
#: The repository: the directory holding the ``vla_lab`` package. Paths in sidecars are relative to it.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
_FOREIGN_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|[\\/]{2})")  # a drive letter or a UNC share
# Metadata that would change between runs (dates, software versions) is left out.
_SAVE_METADATA: dict[str, dict[str, Any]] = {
    "png": {"Software": None},
    "svg": {"Date": None},
    "pdf": {"CreationDate": None, "Producer": None},
}


def plotted_data(fig: Figure) -> pd.DataFrame | None:
    """The tidy DataFrame of the numbers ``fig`` shows (None for figures not made here)."""
    return getattr(fig, DATA_ATTR, None)



# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _now_utc() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def is_absolute_path(text: str) -> bool:
    """Whether ``text`` is an absolute path on any system: ``/...``, a drive letter (``C:\\...``) or a UNC share."""
    return "\n" not in text and (text.startswith("/") or bool(_FOREIGN_ABSOLUTE.match(text)))


def sidecar_path(path: str | Path, root: str | Path = REPOSITORY_ROOT) -> str:
    """``path`` as a sidecar records it: relative to the repository ``root``, with ``/`` separators.

    A path inside the repository becomes e.g. ``vla_lab/tabletop/checkpoints/tabletop-causal``; one outside it a
    relative path that leaves it (``../data/checkpoint``), so ``root / result`` is the same file. A relative
    ``path`` is taken as relative to ``root`` already. An absolute path with no relative form here (another
    drive, or another system's path) raises :class:`ExportError`.
    """
    text = os.fspath(path)
    if not is_absolute_path(text):
        return Path(text).as_posix()
    if not Path(text).is_absolute():
        raise ExportError(f"sidecar: got the path {text!r}, expected one this system can make relative to {root}")
    try:
        relative = os.path.relpath(Path(text).resolve(), Path(root).resolve())
    except ValueError as error:  # another drive
        raise ExportError(f"sidecar: got the path {text!r}, expected one with a path relative to {root}") from error
    return Path(relative).as_posix()


def relative_paths(obj: Any, root: str | Path = REPOSITORY_ROOT) -> Any:
    """``obj`` with every path in it made relative to the repository ``root`` (:func:`sidecar_path`).

    Path objects and strings that are absolute paths are converted; inside longer text, the repository's
    own absolute prefix is removed. Dicts, lists and tuples are copied, other values returned as they are.
    """
    prefix = str(Path(root).resolve()) + os.sep

    def convert(value: Any) -> Any:
        if isinstance(value, Path):
            return sidecar_path(value, root)
        if isinstance(value, str):
            return sidecar_path(value, root) if is_absolute_path(value) else value.replace(prefix, "")
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list) or type(value) is tuple:
            return type(value)(convert(v) for v in value)
        return value

    return convert(obj)


def provenance(
    model: VLAAdapter | str | Path | None, mode: AttentionLike | None, input_description: str, **extra: Any
) -> dict[str, Any]:
    """Where a figure's numbers came from: model (its checkpoint directory, or its configuration's name) or its
    name, attention mask, input, version, time. Paths are made relative to the repository (:func:`relative_paths`)."""
    if isinstance(model, VLAAdapter):
        name: str | None = sidecar_path(model.checkpoint_path) if model.checkpoint_path else model.config.name
    else:
        name = None if model is None else sidecar_path(model) if isinstance(model, Path) else str(model)
    if mode is not None and not isinstance(mode, str):
        mode = AttentionSpec.parse(mode).label
    out = {
        "model": name,
        "attention": mode,
        "input": input_description,
        "vla_lab_version": __version__,
        "created_utc": _now_utc(),
    }
    out.update(extra)
    return relative_paths(out)


def to_jsonable(obj: Any) -> Any:
    """DataFrames -> records, arrays -> lists, numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(obj, pd.DataFrame):
        return to_jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, pd.Series):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensors
        return to_jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return str(obj)


def export_paths(name: str, out_dir: str | Path = "figures", formats: Sequence[str] = EXPORT_FORMATS) -> list[Path]:
    """The files :func:`export_figure` writes: one per format, then the JSON sidecar."""
    if not name or not re.fullmatch(r"[A-Za-z0-9_.+=-]+", name) or name.startswith("."):
        raise InputError(f"name: got {name!r}, expected a file stem of letters, digits and _.+=-")
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad or not formats:
        raise InputError(f"formats: got {list(formats)}, expected a non-empty subset of {list(EXPORT_FORMATS)}")
    directory = Path(out_dir)
    return [directory / f"{name}.{fmt}" for fmt in dict.fromkeys(formats)] + [directory / f"{name}.json"]


def check_free(paths: Sequence[Path]) -> None:
    """Raise :class:`ExportError` naming the first of ``paths`` that exists."""
    existing = [p for p in paths if present(p)]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ExportError(f"export: {existing[0]} already exists{more}; pass overwrite=True (--overwrite) to replace")


def _freeze_layout(fig: Figure) -> None:
    """Lay the figure out and fix the axes where they are (a no-op once frozen).

    Constrained layout moves the axes, which can change the ticks, which moves the axes again, so a
    figure drawn twice can differ by a fraction of a pixel. Two passes get within about 1e-4 of the
    fixed point; freezing then makes every later save of the figure byte-identical.
    """
    if fig.get_layout_engine() is None or isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        return
    for _ in range(2):
        fig.draw_without_rendering()
    fig.set_layout_engine("none")


def export_figure(
    fig: Figure,
    name: str,
    out_dir: str | Path = "figures",
    data: Any = None,
    provenance: Mapping[str, Any] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    overwrite: bool = False,
    dpi: int = 150,
) -> list[Path]:
    """Write ``{name}.png/.svg/.pdf`` and a ``{name}.json`` sidecar; return the paths written.

    The sidecar holds ``provenance`` (completed with the vla_lab version, the figure's function and
    the UTC time) and ``data``, the plotted numbers (default: the figure's own, :func:`plotted_data`);
    a figure with neither raises :class:`ExportError`, as does a path in either that cannot be made
    relative to the repository (every path is recorded relative to it, :func:`relative_paths`).
    Existing files are never replaced silently: unless ``overwrite``, :class:`ExportError` is raised
    before anything is written. Images carry no dates or versions, and the figure's layout is fixed
    at its first export, so re-exports are byte-identical (after changing an exported figure, call
    ``fig.set_layout_engine("constrained")`` to lay it out again).
    """
    paths = export_paths(name, out_dir, formats)
    if not overwrite:
        check_free(paths)
    if data is None:
        data = plotted_data(fig)
    numbers = to_jsonable(data)
    if numbers is None:
        raise ExportError(f"export: {name} has no data, expected data= the plotted numbers (the figure carries "
                          "none: it was not made by vla_lab.viz)")
    meta: dict[str, Any] = {
        "vla_lab_version": __version__,
        "function": getattr(fig, FUNCTION_ATTR, None),
        "created_utc": _now_utc(),
    }
    meta.update(provenance or {})
    sidecar = {
        "name": name,
        "files": [p.name for p in paths[:-1]],
        "provenance": relative_paths(to_jsonable(meta)),
        "data": relative_paths(numbers),
    }
    text = json.dumps(sidecar, indent=2, allow_nan=False) + "\n"
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    _freeze_layout(fig)
    with matplotlib.rc_context({"svg.hashsalt": "vla-lab", "svg.fonttype": "path", "pdf.fonttype": 42}):
        for path in paths[:-1]:
            fmt = path.suffix[1:]

            def save(temporary: Path, fmt: str = fmt) -> None:
                fig.savefig(temporary, format=fmt, dpi=dpi, metadata=_SAVE_METADATA[fmt])

            write_atomic(path, save)
    write_atomic(paths[-1], lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return paths
