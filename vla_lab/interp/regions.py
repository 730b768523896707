"""Attention on image regions (a target object, the distractors, ...) from patch-attention DataFrames.

One function measures, :func:`region_attention`; two reducers answer the two questions asked of it:

* :func:`scene_ratio` -- per scene (and per image, or both images pooled): mean attention per patch of
  one region over the mean per patch of another;
* :func:`pooled_ratio` -- per ``layer`` / ``block``: the per-scene region means (:func:`region_values`,
  both images pooled) averaged over scenes first, then divided (a ratio of means, robust to scenes where
  the denominator is tiny).

The region masks come from the caller (e.g. :func:`vla_lab.worlds.tabletop.object_patch_masks`), so this
module knows nothing about any particular world.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from vla_lab.errors import InputError
from vla_lab.interp.attention import query_patch_attention
from vla_lab.interp.capture import ActivationCache
from vla_lab.interp.head import head_task_patch_attention

#: ``masks(sample, image, grid) -> {region: boolean (rows, cols) mask}`` for one image of one sample.
RegionMasks = Callable[[int, int, tuple[int, int]], Mapping[str, np.ndarray]]
#: The depth columns a region DataFrame may carry (one of them).
DEPTHS = ("layer", "block", "hidden_index")


#: Where patch attention is read (a record's ``source``): the LLM's action queries (per ``layer``) or the bridge
#: head's task attention (per ``block``).
SOURCES = ("llm", "head")
SOURCE_DEPTH = {"llm": "layer", "head": "block"}


def source_patch_attention(cache: ActivationCache, source: str, offset: str = "released") -> pd.DataFrame:
    """Patch attention of a ``source`` (:data:`SOURCES`): :func:`~vla_lab.interp.query_patch_attention` of the
    action queries (``llm``) or :func:`~vla_lab.interp.head_task_patch_attention` with the model's hidden
    ``offset`` (``head``; the capture must record the head)."""
    if source not in SOURCES:
        raise InputError(f"source: got {source!r}, expected one of {SOURCES}")
    if source == "llm":
        return query_patch_attention(cache, "action_queries")
    return head_task_patch_attention(cache, offset=offset)


def region_attention(patch_df: pd.DataFrame, masks: RegionMasks, by: str = "layer") -> pd.DataFrame:
    """Head-mean attention on each region's patches, per sample, ``by`` (``layer`` or ``block``) and image.

    ``patch_df`` has columns sample, ``by``, head, image, row, col, value (as from
    :func:`vla_lab.interp.query_patch_attention` or :func:`vla_lab.interp.head_task_patch_attention`);
    heads are averaged first. Columns of the result: sample, ``by``, image, region, patches (the
    region's patch count), valid (those with a measured, non-NaN value) and total (their sum).
    """
    needed = ["sample", by, "head", "image", "row", "col", "value"]
    missing = [c for c in needed if c not in patch_df.columns]
    if missing:
        raise InputError(f"region_attention: DataFrame lacks column(s) {missing}, expected {needed}")
    mean = patch_df.groupby(["sample", by, "image", "row", "col"], sort=True)["value"].mean().reset_index()
    rows = []
    for (sample, key, image), part in mean.groupby(["sample", by, "image"], sort=True):
        grid = (int(part["row"].max()) + 1, int(part["col"].max()) + 1)
        values = np.full(grid, np.nan)
        values[part["row"].to_numpy(), part["col"].to_numpy()] = part["value"].to_numpy()
        for region, mask in masks(int(sample), int(image), grid).items():
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != grid:
                raise InputError(f"masks[{region!r}]: got shape {mask.shape}, expected the patch grid {grid}")
            inside = values[mask]
            measured = inside[~np.isnan(inside)]
            rows.append((int(sample), key, int(image), region, int(mask.sum()), int(measured.size),
                         float(measured.sum())))
    return pd.DataFrame(rows, columns=["sample", by, "image", "region", "patches", "valid", "total"])


def depth_column(df: pd.DataFrame) -> str:
    """The depth column (one of :data:`DEPTHS`) of a region DataFrame."""
    found = [c for c in DEPTHS if c in df.columns]
    if len(found) != 1:
        raise InputError(f"region DataFrame: got depth columns {found}, expected exactly one of {DEPTHS}")
    return found[0]


def _means(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Region sums pooled over everything but ``keys`` -> mean per measured patch (NaN without one)."""
    summed = df.groupby([*keys, "region"], sort=True)[["patches", "valid", "total"]].sum().reset_index()
    summed["mean"] = summed["total"] / summed["valid"].where(summed["valid"] > 0)
    return summed


def scene_ratio(
    regions: pd.DataFrame, numerator: str = "target", denominator: str = "distractors", pool_images: bool = False
) -> pd.DataFrame:
    """Per scene and ``layer`` / ``block`` (and image unless ``pool_images``): mean attention per
    ``numerator`` patch / per ``denominator`` patch.

    Columns: sample, depth, [image], {numerator}_patches, {denominator}_patches, {numerator}_mean,
    {denominator}_mean, ratio (NaN where a region has no patch or the denominator mean is not positive).
    """
    depth = depth_column(regions)
    keys = ["sample", depth] + ([] if pool_images else ["image"])
    means = _means(regions, keys)
    wide = means.set_index([*keys, "region"])[["patches", "mean"]].unstack("region")
    out = wide.index.to_frame(index=False)
    for region in (numerator, denominator):
        out[f"{region}_patches"] = wide[("patches", region)].fillna(0).to_numpy().astype(int)
    for region in (numerator, denominator):
        out[f"{region}_mean"] = wide[("mean", region)].to_numpy()
    has = (out[f"{numerator}_patches"] > 0) & (out[f"{denominator}_patches"] > 0)
    positive = out[f"{denominator}_mean"] > 0
    out["ratio"] = (out[f"{numerator}_mean"] / out[f"{denominator}_mean"]).where(has & positive)
    return out


def region_values(regions: pd.DataFrame) -> pd.DataFrame:
    """Per scene, ``layer`` / ``block`` and region: the mean per patch over both images (tidy).

    Columns: sample, depth, region, value; regions without patches in a scene are left out.
    """
    depth = depth_column(regions)
    per_scene = _means(regions, ["sample", depth])
    per_scene = per_scene[per_scene["patches"] > 0]
    return per_scene[["sample", depth, "region", "mean"]].rename(columns={"mean": "value"}).reset_index(drop=True)


def pooled_ratio(values: pd.DataFrame, numerator: str = "target", denominator: str = "distractors") -> pd.Series:
    """Per depth: the mean over scenes of ``numerator``'s mean per patch over ``denominator``'s (a ratio of means).

    ``values``: per-scene region means with a depth column, ``region`` and ``value`` (:func:`region_values`).
    """
    depth = depth_column(values)
    means = values.groupby([depth, "region"])["value"].mean().unstack("region")
    return (means[numerator] / means[denominator]).rename(f"{numerator}_{denominator}_ratio")


__all__ = [
    "DEPTHS", "SOURCES", "SOURCE_DEPTH", "RegionMasks", "depth_column", "pooled_ratio", "source_patch_attention",
    "region_attention", "region_values", "scene_ratio",
]
