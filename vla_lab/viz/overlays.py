"""Attention on image patches drawn over the images: patch overlays with object outlines.

:func:`patch_overlay` tints each patch by its attention (from :func:`vla_lab.interp.query_patch_attention`
or :func:`vla_lab.interp.head_task_patch_attention`), outlines regions such as the target, and hatches
patches without a value (NaN: never read), so that they are not mistaken for measured ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from vla_lab.errors import InputError
from vla_lab.interp import depth_column, patch_grid
from vla_lab.viz.plots import _finish, _head_label, _new_figure, _require, _select

_OUTLINE_COLORS = {"target": "#00e5ff", "distractors": "#ff2bd6", "anchor": "#ffd400", "gripper": "#ffffff"}
_EXTRA_COLORS = ("#7cfc00", "#ff8c00", "#1e90ff", "#ff4500", "#9acd32")
#: How a patch without a value (NaN: never read) is drawn, so that it is not mistaken for a measured one.
_NEVER_READ: dict[str, Any] = {"facecolor": "#d9d9d9", "edgecolor": "#4d4d4d", "hatch": "////", "label": "never read"}


# ---------------------------------------------------------------------------------------------
# Image patches
# ---------------------------------------------------------------------------------------------


def outlines_for_image(outlines: Mapping[str, Any] | None, image: int, num_images: int) -> dict[str, np.ndarray]:
    """The masks of ``outlines`` for one image: a 2-D mask belongs to image 0, a sequence has one per image."""
    found: dict[str, np.ndarray] = {}
    for name, value in (outlines or {}).items():
        if value is None:
            continue
        arr = np.asarray(value) if not isinstance(value, (list, tuple)) else None
        if arr is not None and arr.ndim == 2:
            mask = arr if image == 0 else None
        else:
            items = list(value) if arr is None else list(arr)
            if len(items) != num_images:
                raise InputError(f"outlines[{name!r}]: got {len(items)} masks, expected one per image ({num_images})")
            mask = items[image]
        if mask is not None:
            found[name] = np.asarray(mask, dtype=bool)
    return found


def _outline_color(name: str, index: int) -> str:
    return _OUTLINE_COLORS.get(name, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def patch_overlay(
    images: Any,
    patch_df: pd.DataFrame,
    sample: int = 0,
    layer: int | None = None,
    head: int | None = None,
    title: str | None = None,
    outlines: Mapping[str, Any] | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    image_names: Sequence[str] | None = None,
    *,
    block: int | None = None,
) -> Figure:
    """Each input image with its patch-attention grid upsampled and alpha-blended on top.

    ``patch_df``: :func:`vla_lab.interp.query_patch_attention` output (LLM ``layer``) or
    :func:`vla_lab.interp.head_task_patch_attention` output (head ``block``); the grid of each image is
    :func:`vla_lab.interp.patch_grid` (mean over heads, or one ``head``; over every depth unless ``layer``
    or ``block`` picks one). ``images``: uint8 (H, W, 3) arrays, one per image of the sample.
    ``outlines``: name -> boolean patch mask (rows, cols) for image 0, or a sequence with one mask (or None)
    per image; drawn as patch rectangles with a legend. A patch without a value (NaN, e.g. the one the head's
    released offset never reads) is hatched grey and listed as "never read" in the legend.
    """
    depth = depth_column(patch_df)
    if (depth == "layer" and block is not None) or (depth == "block" and layer is not None):
        raise InputError(f"patch_overlay: the DataFrame is indexed by {depth}; select with {depth}=")
    index = layer if depth == "layer" else block
    _require(patch_df, ["sample", depth, "head", "image", "row", "col", "value"], "patch_overlay")
    arrays = [np.asarray(images)] if isinstance(images, np.ndarray) and np.ndim(images) == 3 else [
        np.asarray(im) for im in images
    ]
    sel = _select(patch_df, "patch_overlay", sample=sample, head=head, **{depth: index})
    present = sorted(sel["image"].unique().tolist())
    if present != list(range(len(arrays))):
        raise InputError(f"images: got {len(arrays)} images, expected {len(present)} (the images in patch_df)")
    grids = [patch_grid(sel, sample=sample, image=i, **{depth: index}) for i in range(len(arrays))]
    vmax = max(float(np.nanmax(g)) for g in grids) or 1.0
    norm = Normalize(0.0, vmax)
    fig = _new_figure(3.6 * len(arrays) + 1.0, 3.9)
    axes = np.atleast_1d(fig.subplots(1, len(arrays), squeeze=False)).ravel()
    handles: dict[str, Patch] = {}
    frames, overlay, never_read = [], None, False
    for i, (ax, image, grid) in enumerate(zip(axes, arrays, grids)):
        height, width = image.shape[:2]
        ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest")
        overlay = ax.imshow(grid, extent=(0, width, height, 0), cmap=cmap, norm=norm, alpha=alpha,
                            interpolation="nearest")
        rows, cols = grid.shape
        cell_h, cell_w = height / rows, width / cols
        for r, c in zip(*np.nonzero(np.isnan(grid))):
            ax.add_patch(Rectangle((c * cell_w, r * cell_h), cell_w, cell_h, linewidth=0, **_NEVER_READ))
            never_read = True
        for k, (name, mask) in enumerate(outlines_for_image(outlines, i, len(arrays)).items()):
            if mask.shape != grid.shape:
                raise InputError(f"outlines[{name!r}]: got shape {mask.shape}, expected the patch grid {grid.shape}")
            color = _outline_color(name, k)
            for r, c in zip(*np.nonzero(mask)):
                ax.add_patch(Rectangle((c * cell_w, r * cell_h), cell_w, cell_h, fill=False, edgecolor=color,
                                       linewidth=1.6))
            handles.setdefault(name, Patch(facecolor="none", edgecolor=color, linewidth=1.6, label=name))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)" if i == 0 else "")
        name = image_names[i] if image_names else f"image {i}"
        ax.set_title(f"{name} ({rows}x{cols} patches)", fontsize=9)
        r_idx, c_idx = np.indices(grid.shape)
        frames.append(pd.DataFrame({"image": i, "row": r_idx.ravel(), "col": c_idx.ravel(), "value": grid.ravel()}))
    if overlay is not None:
        fig.colorbar(overlay, ax=axes.tolist(), label="attention on patch (mean over query tokens)", shrink=0.85)
    if never_read:
        handles[_NEVER_READ["label"]] = Patch(linewidth=0.6, **_NEVER_READ)
    if handles:
        fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=len(handles), fontsize=8)
    where = {"layer": "LLM layer", "block": "head block"}[depth]
    depth_text = f"mean over {depth}s" if index is None else f"{where} {index}"
    fig.suptitle(title or f"Attention on image patches, {depth_text}, {_head_label(head)}")
    data = pd.concat(frames, ignore_index=True)
    data.insert(0, "sample", sample)
    data.insert(1, depth, "mean" if index is None else index)
    data.insert(2, "head", "mean" if head is None else head)
    return _finish(fig, data, "patch_overlay")
