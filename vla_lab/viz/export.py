"""Reproducible export of figures: PNG, SVG and PDF plus a JSON sidecar with the plotted numbers and provenance.

    viz.export_figure(fig, "segment_mass_layer3", "figures", provenance=viz.provenance(model, "causal", "..."))

Files are written atomically, never replaced silently, and carry no dates or versions, so a re-export
of the same figure is byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from vla_lab.files import write_atomic
from vla_lab.model import VLAAdapter
from vla_lab.version import __version__

#: Figure attribute holding the plotted numbers (a tidy DataFrame).
DATA_ATTR = "vla_lab_data"
#: Figure attribute naming the function that made it.
FUNCTION_ATTR = "vla_lab_function"
EXPORT_FORMATS = ("png", "svg", "pdf")
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


def provenance(
    model: VLAAdapter | str | Path | None, mode: AttentionLike | None, input_description: str, **extra: Any
) -> dict[str, Any]:
    """Where a figure's numbers came from: model (:attr:`VLAAdapter.source`) or its name, attention mask, input,
    version, time."""
    if isinstance(model, VLAAdapter):
        name: str | None = model.source
    else:
        name = None if model is None else str(model)
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
    return out


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
    existing = [p for p in paths if p.exists() or p.is_symlink()]
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
    the UTC time) and ``data``, the plotted numbers (default: the figure's own, :func:`plotted_data`).
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
    meta: dict[str, Any] = {
        "vla_lab_version": __version__,
        "function": getattr(fig, FUNCTION_ATTR, None),
        "created_utc": _now_utc(),
    }
    meta.update(provenance or {})
    sidecar = {
        "name": name,
        "files": [p.name for p in paths[:-1]],
        "provenance": to_jsonable(meta),
        "data": to_jsonable(data),
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
