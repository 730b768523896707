"""Figures of the tidy DataFrames in :mod:`vla_lab.interp`.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (headless, no global
figure registry; Jupyter still displays it). The numbers a figure shows are attached to it as a tidy
DataFrame (:func:`vla_lab.viz.plotted_data`), and :func:`vla_lab.viz.export_figure` writes them next to
the image files.

    df = interp.segment_mass(cache)
    fig = viz.segment_heatmap(df, layer=3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from vla_lab.config import FINE_SEGMENTS
from vla_lab.errors import InputError
from vla_lab.interp import (
    ActivationCache,
    MaskComparison,
    head_attention,
    llm_hook,
    segment_mass,
)
from vla_lab.viz.export import DATA_ATTR, FUNCTION_ATTR

#: Segments in sequence order, coarse ``vision`` before its images (padding is never plotted).
_SEGMENT_ORDER = ("tok0", "vision", *FINE_SEGMENTS[1:-1])
_GROUP_COLORS = {"self": "#8da0cb", "action_queries": "#fc8d62", "proprio": "#e78ac3", "task": "#66c2a5"}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------



def _finish(fig: Figure, data: pd.DataFrame, function: str) -> Figure:
    setattr(fig, DATA_ATTR, data.reset_index(drop=True))
    setattr(fig, FUNCTION_ATTR, f"vla_lab.viz.{function}")
    return fig


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _figure_and_axes(ax: Any, width: float, height: float) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(width, height)
    return fig, fig.add_subplot()


def _is_cache(obj: Any) -> bool:
    return isinstance(obj, ActivationCache)


def _is_comparison(obj: Any) -> bool:
    return isinstance(obj, MaskComparison)


def _segment_df(obj: Any) -> pd.DataFrame:
    """Segment mass from a DataFrame, a cache or a mask comparison (long, with a ``mask`` column)."""
    if isinstance(obj, pd.DataFrame):
        return obj
    if _is_cache(obj):
        return segment_mass(obj)
    if _is_comparison(obj):
        keys = ["sample", "layer", "head", "query_segment", "key_segment"]
        return obj.attention.melt(id_vars=keys, value_vars=list(obj.masks), var_name="mask", value_name="value")
    raise InputError(f"data: got {type(obj).__name__}, expected a DataFrame, an ActivationCache or a MaskComparison")


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what}: DataFrame lacks column(s) {missing}, expected {list(columns)}")


def _select(df: pd.DataFrame, what: str, **conditions: Any) -> pd.DataFrame:
    """Rows matching every non-None condition; an empty selection is an error naming the values present."""
    sel = df
    for column, value in conditions.items():
        if value is None:
            continue
        sel = sel[sel[column] == value]
        if sel.empty:
            present = sorted(df[column].unique().tolist())
            raise InputError(f"{what}: got {column}={value!r}, expected one of {present}")
    return sel


def _one_mask(df: pd.DataFrame, mask: str | None, what: str) -> pd.DataFrame:
    """The rows of one attention mask when ``df`` has a ``mask`` column holding several."""
    if "mask" not in df.columns:
        if mask is not None:
            raise InputError(f"{what}: got mask={mask!r}, but the DataFrame has no mask column")
        return df
    if mask is None:
        masks = df["mask"].unique().tolist()
        if len(masks) > 1:
            raise InputError(f"{what}: the DataFrame holds masks {masks}, expected mask= one of them")
        return df
    return _select(df, what, mask=mask)


def _order(names: Sequence[str]) -> list[str]:
    """Segment names in sequence order (unknown names last, in their given order)."""
    unique = list(dict.fromkeys(names))
    known = [n for n in _SEGMENT_ORDER if n in unique]
    return known + [n for n in unique if n not in known]


def _matrix(sel: pd.DataFrame, value: str = "value") -> tuple[pd.DataFrame, np.ndarray, list[str], list[str]]:
    """(tidy means over everything but the segment pair, matrix, query names, key names)."""
    tidy = sel.groupby(["query_segment", "key_segment"], sort=False)[value].mean().reset_index()
    queries, keys = _order(tidy["query_segment"]), _order(tidy["key_segment"])
    table = tidy.pivot(index="query_segment", columns="key_segment", values=value).reindex(index=queries, columns=keys)
    return tidy, table.to_numpy(dtype=float), queries, keys


def _draw_matrix(
    ax: Any, matrix: np.ndarray, queries: list[str], keys: list[str], norm: Normalize, cmap: str, annotate: bool,
    labels: bool = True, fontsize: float = 8,
) -> Any:
    image = ax.imshow(matrix, cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(keys)), keys, rotation=40, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(queries)), queries, fontsize=fontsize)
    if labels:
        ax.set_xlabel("key segment")
        ax.set_ylabel("query segment")
    if annotate:
        cmap_obj = matplotlib.colormaps[cmap]
        for (i, j), v in np.ndenumerate(matrix):
            if np.isnan(v):
                continue
            r, g, b, _ = cmap_obj(norm(v))
            color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=color, fontsize=fontsize - 1)
    return image


def _head_label(head: int | None) -> str:
    return "mean over heads" if head is None else f"head {head}"


# ---------------------------------------------------------------------------------------------
# Segment mass
# ---------------------------------------------------------------------------------------------


def segment_heatmap(
    df: Any,
    layer: int,
    sample: int = 0,
    head: int | None = None,
    title: str | None = None,
    ax: Any = None,
    annotate: bool = True,
    cmap: str = "viridis",
    mask: str | None = None,
) -> Figure:
    """Query segment x key segment attention mass of one layer (head-mean when ``head`` is None).

    ``df``: :func:`vla_lab.interp.segment_mass` output (or an ActivationCache); with a ``mask``
    column holding several masks, ``mask`` picks one.
    """
    df = _one_mask(_segment_df(df), mask, "segment_heatmap")
    _require(df, ["sample", "layer", "head", "query_segment", "key_segment", "value"], "segment_heatmap")
    sel = _select(df, "segment_heatmap", sample=sample, layer=layer, head=head)
    tidy, matrix, queries, keys = _matrix(sel)
    fig, ax = _figure_and_axes(ax, 6.0, 4.6)
    image = _draw_matrix(ax, matrix, queries, keys, Normalize(0.0, 1.0), cmap, annotate)
    fig.colorbar(image, ax=ax, label="attention mass")
    ax.set_title(title or f"Segment attention mass, layer {layer}\n({_head_label(head)}, sample {sample})", fontsize=10)
    tidy.insert(0, "layer", layer)
    tidy.insert(0, "sample", sample)
    tidy.insert(2, "head", "mean" if head is None else head)
    return _finish(fig, tidy, "segment_heatmap")


def segment_heatmap_grid(
    df: Any,
    layers: Sequence[int] | None = None,
    sample: int = 0,
    head: int | None = None,
    title: str | None = None,
    ncols: int | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis",
    mask: str | None = None,
) -> Figure:
    """One small segment heatmap per layer, on a shared 0..1 colour scale with one colourbar.

    Values are annotated when there are at most 12 layers (``annotate`` overrides).
    """
    df = _one_mask(_segment_df(df), mask, "segment_heatmap_grid")
    _require(df, ["sample", "layer", "head", "query_segment", "key_segment", "value"], "segment_heatmap_grid")
    layers = sorted(df["layer"].unique().tolist()) if layers is None else list(layers)
    if not layers:
        raise InputError("layers: got an empty list, expected at least one layer")
    ncols = ncols or min(len(layers), 6)
    nrows = math.ceil(len(layers) / ncols)
    annotate = len(layers) <= 12 if annotate is None else annotate
    fig = _new_figure(2.6 * ncols + 1.2, 2.4 * nrows + 0.8)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    norm = Normalize(0.0, 1.0)
    frames, image = [], None
    for index, layer in enumerate(layers):
        ax = axes[index]
        sel = _select(df, "segment_heatmap_grid", sample=sample, layer=layer, head=head)
        tidy, matrix, queries, keys = _matrix(sel)
        first_col, last_row = index % ncols == 0, index >= len(layers) - ncols
        image = _draw_matrix(ax, matrix, queries, keys, norm, cmap, annotate, labels=False, fontsize=6)
        if not first_col:
            ax.set_yticklabels([])
        if not last_row:
            ax.set_xticklabels([])
        ax.set_title(f"layer {layer}", fontsize=9)
        tidy.insert(0, "layer", layer)
        frames.append(tidy)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.supxlabel("key segment")
    fig.supylabel("query segment")
    if image is not None:
        fig.colorbar(image, ax=axes[: len(layers)].tolist(), label="attention mass", shrink=0.9)
    fig.suptitle(title or f"Segment attention mass per layer ({_head_label(head)}, sample {sample})")
    data = pd.concat(frames, ignore_index=True)
    data.insert(0, "sample", sample)
    data.insert(2, "head", "mean" if head is None else head)
    return _finish(fig, data, "segment_heatmap_grid")


def segment_map_grid(
    df: pd.DataFrame,
    row: str,
    value: str = "value",
    spread: str | None = None,
    layers: Sequence[int] | None = None,
    log: bool = False,
    title: str | None = None,
    label: str = "attention mass",
    cmap: str = "viridis",
) -> Figure:
    """Segment maps of several conditions: one row of panels per value of ``row`` (in order of appearance), one
    column per layer, all on one colour scale (logarithmic with ``log``) with one colourbar.

    ``df`` holds one row per (``row``, layer, query_segment, key_segment) with the number ``value`` (e.g. a
    mean over scenes) and, optionally, ``spread`` (e.g. its standard deviation over scenes), annotated as
    ``value ± spread``. A cell whose value is exactly 0 (a path the mask closes) is hatched grey, not coloured.
    """
    columns = [row, "layer", "query_segment", "key_segment", value] + ([spread] if spread else [])
    _require(df, columns, "segment_map_grid")
    layers = sorted(df["layer"].unique().tolist()) if layers is None else list(layers)
    rows = list(dict.fromkeys(df[row]))
    if not layers or not rows:
        raise InputError("segment_map_grid: got no layers or no rows, expected at least one of each")
    positive = df.loc[df[value] > 0, value]
    high = float(positive.max()) if len(positive) else 1.0
    norm = LogNorm(float(positive.min()), high) if log and len(positive) else Normalize(0.0, max(high, 1e-12))
    fig = _new_figure(2.55 * len(layers) + 1.6, 2.35 * len(rows) + 0.9)
    axes = fig.subplots(len(rows), len(layers), squeeze=False)
    colormap = matplotlib.colormaps[cmap]
    image = None
    frames = []
    for i, name in enumerate(rows):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            sel = df[(df[row] == name) & (df["layer"] == layer)]
            tidy, matrix, queries, keys = _matrix(sel, value)
            shown = np.where(matrix > 0, matrix, np.nan)
            image = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto")
            for (qi, ki), v in np.ndenumerate(matrix):
                if v == 0:
                    ax.add_patch(Rectangle((ki - 0.5, qi - 0.5), 1, 1, facecolor="#d9d9d9", edgecolor="#8c8c8c",
                                           hatch="////", lw=0))
                    continue
                if np.isnan(v):
                    continue
                r, g, b, _ = colormap(norm(v))
                color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                text = f"{v:.2g}"
                if spread:
                    sd = sel[(sel["query_segment"] == queries[qi]) & (sel["key_segment"] == keys[ki])][spread]
                    text += f"\n±{float(sd.mean()):.1g}"
                ax.text(ki, qi, text, ha="center", va="center", color=color, fontsize=5)
            ax.set_xticks(range(len(keys)), keys if i == len(rows) - 1 else [], rotation=40, ha="right", fontsize=6)
            ax.set_yticks(range(len(queries)), queries if j == 0 else [], fontsize=6)
            if i == 0:
                ax.set_title(f"layer {layer}", fontsize=9)
            if j == 0:
                ax.set_ylabel(str(name), fontsize=7)
            frames.append(sel[columns])
    fig.supxlabel("key segment")
    fig.supylabel("query segment (rows of panels: " + row + ")")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label=label + (" (log scale)" if log else ""), shrink=0.6)
    fig.legend(handles=[Patch(facecolor="#d9d9d9", edgecolor="#8c8c8c", hatch="////", label="0: closed by the mask")],
               loc="outside lower right", fontsize=7, frameon=False)
    fig.suptitle(title or f"{label} per layer")
    return _finish(fig, pd.concat(frames, ignore_index=True), "segment_map_grid")


def token_attention_map(
    cache: ActivationCache,
    layer: int,
    sample: int = 0,
    head: int | None = None,
    title: str | None = None,
    ax: Any = None,
    log: bool = True,
    vmin: float = 1e-4,
) -> Figure:
    """The full query position x key position attention of one LLM layer (mean over heads unless ``head``),
    with every segment boundary drawn and labelled (a capture with ``mode="full"``; padding left out).

    On the ``log`` scale values below ``vmin`` are clipped to it; exact zeros (closed by the mask) are grey.
    """
    name = llm_hook("pattern", layer)
    if name not in cache:
        raise InputError(f"token_attention_map: the cache holds no {name}, expected a capture with mode='full'")
    layout = cache.layouts[sample]
    pattern = cache[name][sample].double()  # (H, S, S)
    maps = pattern.mean(0) if head is None else pattern[head]
    size = layout.num_tokens
    matrix = maps[:size, :size].cpu().numpy()
    fig, ax = _figure_and_axes(ax, 7.4, 6.4)
    norm: Normalize = LogNorm(vmin, 1.0, clip=True) if log else Normalize(0.0, float(matrix.max()) or 1.0)
    colormap = matplotlib.colormaps["magma"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.where(matrix > 0, matrix, np.nan), cmap=colormap, norm=norm, interpolation="nearest")
    spans = [(n, s) for n, s in layout.segments(fine=True).items() if n != "padding" and len(s)]
    for _, s in spans[1:]:
        for line in (ax.axhline, ax.axvline):
            line(s.start - 0.5, color="#00e5ff", lw=0.7)
    middles = [(s.start + s.stop - 1) / 2 for _, s in spans]
    names = [n for n, _ in spans]
    top = ax.secondary_xaxis("top")
    top.set_xticks(middles, names, rotation=40, ha="left", fontsize=7)
    right = ax.secondary_yaxis("right")
    right.set_yticks(middles, names, fontsize=7)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    fig.colorbar(image, ax=ax, label="attention probability" + (" (log scale)" if log else ""), pad=0.12, shrink=0.8)
    ax.set_title(title or f"LLM layer {layer}, {_head_label(head)}, sample {sample}", fontsize=10)
    q, k = np.indices(matrix.shape)
    data = pd.DataFrame({"layer": layer, "head": "mean" if head is None else head, "query_position": q.ravel(),
                         "key_position": k.ravel(), "value": matrix.ravel()})
    data["query_segment"] = [layout.segment_of(int(p)) for p in data["query_position"]]
    data["key_segment"] = [layout.segment_of(int(p)) for p in data["key_position"]]
    return _finish(fig, data, "token_attention_map")


def layer_curves(
    df: Any,
    query_segment: str | None = "action_queries",
    hue: str = "key_segment",
    sample: int | None = 0,
    title: str | None = None,
    ax: Any = None,
) -> Figure:
    """Attention mass vs layer: the mean over heads as a line, the range over heads (min..max) as a band.

    Rows are restricted to ``query_segment`` (None keeps all) and split into lines by ``hue``. A
    ``mask`` column (two masks' DataFrames concatenated, or a MaskComparison) gives one line style per
    mask. ``sample=None`` averages over samples first.
    """
    df = _segment_df(df)
    _require(df, ["layer", "head", "value", hue], "layer_curves")
    sel = _select(df, "layer_curves", query_segment=query_segment, sample=sample)
    has_mask = "mask" in sel.columns
    groups = ([hue] if hue else []) + (["mask"] if has_mask else [])
    per_head = sel.groupby([*groups, "layer", "head"], sort=False)["value"].mean().reset_index()
    stats = per_head.groupby([*groups, "layer"], sort=False)["value"].agg(["mean", "min", "max"]).reset_index()
    stats = stats.rename(columns={"min": "head_min", "max": "head_max"})
    fig, ax = _figure_and_axes(ax, 7.2, 4.0)
    hue_values = _order(stats[hue]) if hue in ("key_segment", "query_segment") else list(dict.fromkeys(stats[hue]))
    masks = list(dict.fromkeys(stats["mask"])) if has_mask else [None]
    colors = matplotlib.colormaps["tab10"]
    styles: tuple[Any, ...] = ("-", "--", ":", "-.")
    for i, value in enumerate(hue_values):
        for j, mask in enumerate(masks):
            part = stats[(stats[hue] == value) & ((stats["mask"] == mask) if has_mask else True)].sort_values("layer")
            if part.empty:
                continue
            ax.plot(part["layer"], part["mean"], styles[j % len(styles)], color=colors(i % 10), marker="o",
                    markersize=3)
            ax.fill_between(part["layer"], part["head_min"], part["head_max"], color=colors(i % 10), alpha=0.15,
                            linewidth=0)
    ax.set_xlabel("LLM layer")
    ax.set_ylabel("attention mass")
    ax.set_ylim(-0.02, 1.02)
    layers = sorted(stats["layer"].unique().tolist())
    if len(layers) <= 32:
        ax.set_xticks(layers)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=colors(i % 10), marker="o", markersize=3, label=str(v))
               for i, v in enumerate(hue_values)]
    if has_mask:
        handles.append(Line2D([], [], linestyle="none", label=""))
        handles += [Line2D([], [], color="0.3", linestyle=styles[j % len(styles)], label=str(m))
                    for j, m in enumerate(masks)]
    ax.legend(handles=handles, title=hue.replace("_", " "), fontsize=7, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    source = query_segment or "all queries"
    ax.set_title(title or f"Attention mass of {source} by layer\n(line: mean over heads, band: range over heads)",
                 fontsize=10)
    return _finish(fig, stats.rename(columns={"mean": "value"}), "layer_curves")


# ---------------------------------------------------------------------------------------------
# Bridge head
# ---------------------------------------------------------------------------------------------


def head_gates(head_df: Any, sample: int | None = 0, title: str | None = None) -> Figure:
    """Action head per block: tanh(gate) (bars) and the key-group shares of its attention (stacked, head-mean).

    ``head_df``: :func:`vla_lab.interp.head_attention` output (or an ActivationCache).
    """
    if _is_cache(head_df):
        head_df = head_attention(head_df)
    _require(head_df, ["block", "head", "key_group", "value", "gate"], "head_gates")
    sel = _select(head_df, "head_gates", sample=sample)
    gates = sel.groupby("block")["gate"].first()
    shares = sel.groupby(["block", "key_group"], sort=False)["value"].mean().unstack("key_group")
    groups = [g for g in _GROUP_COLORS if g in shares.columns] + [g for g in shares.columns if g not in _GROUP_COLORS]
    shares = shares[groups]
    blocks = gates.index.to_numpy()
    fig = _new_figure(9.6, 3.6)
    ax_gate, ax_share = fig.subplots(1, 2)
    ax_gate.bar(blocks, gates.to_numpy(), color="#4c72b0")
    ax_gate.axhline(0.0, color="black", linewidth=0.6)
    ax_gate.set_xlabel("head block")
    ax_gate.set_ylabel("tanh(gate)")
    ax_gate.set_title("Gate on the task (LLM) keys", fontsize=10)
    bottom = np.zeros(len(blocks))
    for group in groups:
        values = shares[group].to_numpy()
        ax_share.bar(blocks, values, bottom=bottom, label=group, color=_GROUP_COLORS.get(group))
        bottom += values
    ax_share.set_xlabel("head block")
    ax_share.set_ylabel("share of attention (mean over heads)")
    ax_share.set_ylim(0, max(1.0, float(bottom.max()) if len(bottom) else 1.0))
    ax_share.set_title("Key groups the chunk queries attend to", fontsize=10)
    ax_share.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="key group", title_fontsize=8)
    for ax in (ax_gate, ax_share):
        ax.set_xticks(blocks)
    fig.suptitle(title or "Bridge-attention action head: gates and key-group shares")
    data = shares.reset_index().melt(id_vars="block", var_name="key_group", value_name="value")
    data["gate"] = data["block"].map(gates)
    return _finish(fig, data, "head_gates")
