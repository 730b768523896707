"""Figures that compare one input under two masks (a :class:`vla_lab.interp.MaskComparison`): the segment-mass
difference and the cosine similarity of the hidden states, per ``hidden_index``.

    comparison = interp.compare_masks(model, batch, ("causal", "bidirectional"))
    fig = viz.mask_difference_heatmap(comparison, layer=2)
"""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vla_lab.errors import InputError
from vla_lab.viz.plots import (
    _draw_matrix,
    _figure_and_axes,
    _finish,
    _is_comparison,
    _matrix,
    _order,
    _require,
    _select,
)


def _comparison_parts(comparison: Any) -> tuple[pd.DataFrame, tuple[str, str]]:
    if _is_comparison(comparison):
        return comparison.attention, comparison.masks
    if isinstance(comparison, pd.DataFrame) and "difference" in comparison.columns:
        named = [c for c in comparison.columns
                 if c not in ("sample", "layer", "head", "query_segment", "key_segment", "difference")]
        return comparison, (named[0], named[1]) if len(named) == 2 else ("a", "b")
    raise InputError(f"comparison: got {type(comparison).__name__}, expected a MaskComparison or its .attention")


def mask_difference_heatmap(
    comparison: Any,
    layer: int | None = None,
    sample: int = 0,
    title: str | None = None,
    ax: Any = None,
    annotate: bool = True,
    cmap: str = "RdBu_r",
) -> Figure:
    """Segment-mass difference between two masks (second - first, e.g. bidirectional - causal), centred at 0.

    Mean over heads, and over layers when ``layer`` is None.
    """
    df, (first, second) = _comparison_parts(comparison)
    sel = _select(df, "mask_difference_heatmap", sample=sample, layer=layer)
    tidy, matrix, queries, keys = _matrix(sel, "difference")
    bound = float(np.nanmax(np.abs(matrix))) if matrix.size else 0.0
    bound = bound if bound > 0 else 1e-6
    fig, ax = _figure_and_axes(ax, 6.0, 4.6)
    image = _draw_matrix(ax, matrix, queries, keys, TwoSlopeNorm(0.0, -bound, bound), cmap, annotate)
    fig.colorbar(image, ax=ax, label=f"mass difference ({second} − {first})")
    where = "mean over layers" if layer is None else f"layer {layer}"
    ax.set_title(title or f"Segment mass difference: {second} − {first}\n({where}, mean over heads)", fontsize=10)
    tidy.insert(0, "layer", "mean" if layer is None else layer)
    tidy.insert(0, "sample", sample)
    return _finish(fig, tidy, "mask_difference_heatmap")


def hidden_cosine_curves(comparison: Any, sample: int | None = 0, title: str | None = None, ax: Any = None) -> Figure:
    """Per-segment cosine similarity of the hidden states under the two masks, vs hidden_index (0 = embeddings)."""
    if _is_comparison(comparison):
        df, masks = comparison.hidden_cosine, comparison.masks
    elif isinstance(comparison, pd.DataFrame):
        df, masks = comparison, ("a", "b")
    else:
        raise InputError(f"comparison: got {type(comparison).__name__}, expected a MaskComparison")
    _require(df, ["sample", "hidden_index", "segment", "cosine"], "hidden_cosine_curves")
    sel = _select(df, "hidden_cosine_curves", sample=sample)
    data = sel.groupby(["segment", "hidden_index"], sort=False)["cosine"].mean().reset_index()
    fig, ax = _figure_and_axes(ax, 6.4, 4.0)
    colors = matplotlib.colormaps["tab10"]
    for i, segment in enumerate(_order(data["segment"])):
        part = data[data["segment"] == segment].sort_values("hidden_index")
        ax.plot(part["hidden_index"], part["cosine"], marker="o", markersize=3, color=colors(i % 10), label=segment)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hidden_index (0 = embeddings, i = after LLM layer i - 1; the last after the final norm)")
    ax.set_ylabel("cosine similarity (mean over tokens)")
    ax.set_ylim(min(-0.02, float(data["cosine"].min()) - 0.02), 1.02)
    ax.legend(title="segment", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or f"Hidden states under {masks[0]} vs {masks[1]} attention", fontsize=10)
    return _finish(fig, data, "hidden_cosine_curves")
