"""Does a source look at the object it was asked for? One target-attention measurement for every world.

A world's observation carries pixel masks of named regions (:attr:`vla_lab.worlds.Observation.regions`,
one dict per image): the object to pick (``target``), the place it goes to (``place``, where the task has
one), the other objects of the target's category (``same_category``, where the scene has them: LIBERO's other
black bowl) and every other object (``distractors``). :func:`patch_regions` maps them onto a model's patch
grid, after the world's centre crop when it has one; a patch belongs to the first of these regions it shows.
:func:`measure` captures one forward pass per batch of observations and returns, per observation, source,
depth (and head, when asked) and region, the mean attention per patch of that region over the images that show
it:

* ``source="llm"``: the action queries in the LLM, per decoder ``layer``;
* ``source="head"``: the bridge head's task attention, per ``block``.

The *target-attention ratio* at a depth is the mean over episodes of the attention per target patch over
the mean per patch of another region (:data:`AGAINST`: the distractors; the same-category objects), a ratio of
means over the episodes that show both. :func:`report` chooses
the depth on one set of episodes (the highest ratio) and reports it on another, with a 95 % bootstrap
interval that resamples the unit the episodes cluster by (a LIBERO task's init states share one layout);
:func:`compare` tests a model's per-unit ratios against another's (its random-init baseline) at each
one's chosen depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.errors import InputError
from vla_lab.interp.capture import capture
from vla_lab.interp.regions import (
    SOURCE_DEPTH,
    SOURCES,
    RegionMasks,
    region_attention,
    region_values,
    source_patch_attention,
)
from vla_lab.model import VLAAdapter
from vla_lab.policy import Policy
from vla_lab.processing.images import CENTER_CROP_SCALE
from vla_lab.stats import PairedTest, ratio_of_means_interval, wilcoxon_signed_rank
from vla_lab.worlds import REGIONS, Observation, World

#: Regions in the order a patch is assigned to them (a patch showing the target is a target patch).
REGION_ORDER = REGIONS
#: The ratio's numerator and its default denominator.
RATIO = ("target", "distractors")
#: The regions a target-attention ratio is taken against, and the ``metric`` name of each ratio.
AGAINST = {"distractors": "target_attention_ratio", "same_category": "target_vs_same_category_ratio"}


def crop_mask(mask: np.ndarray, scale: float = CENTER_CROP_SCALE) -> np.ndarray:
    """A square (S, S) pixel mask as the model sees its centre-cropped image: the central ``scale`` of the
    area, back at S (nearest pixel centres; the box of :func:`vla_lab.processing.images.center_crop_image`)."""
    size = mask.shape[0]
    if mask.ndim != 2 or mask.shape[1] != size:
        raise InputError(f"mask: got shape {mask.shape}, expected a square (S, S) mask")
    side = math.sqrt(scale)
    start = (1 - side) / 2 * size
    index = np.clip(np.floor(start + (np.arange(size) + 0.5) * side).astype(int), 0, size - 1)
    return np.asarray(mask[index][:, index])


def patch_regions(
    regions: Mapping[str, np.ndarray], grid: tuple[int, int], center_crop: bool = False
) -> dict[str, np.ndarray]:
    """Pixel masks (S, S) of :data:`REGION_ORDER` names -> bool patch masks of ``grid`` = (rows, cols); a patch
    goes to the first region it shows any pixel of. Unknown region names are refused."""
    unknown = sorted(set(regions) - set(REGION_ORDER))
    if unknown:
        raise InputError(f"regions: got {unknown}, expected names among {list(REGION_ORDER)}")
    rows, cols = (int(v) for v in grid)
    taken = np.zeros((rows, cols), dtype=bool)
    out = {}
    for name in REGION_ORDER:
        if name not in regions:
            continue
        mask = np.asarray(regions[name], dtype=bool)
        mask = crop_mask(mask) if center_crop else mask
        if mask.ndim != 2:
            raise InputError(f"regions[{name!r}]: got shape {mask.shape}, expected an (H, W) mask")
        height, width = mask.shape
        r = np.minimum(np.arange(height) * rows // height, rows - 1)
        c = np.minimum(np.arange(width) * cols // width, cols - 1)
        pooled = np.zeros((rows, cols), dtype=bool)
        ys, xs = np.nonzero(mask)
        pooled[r[ys], c[xs]] = True
        out[name] = pooled & ~taken
        taken |= pooled
    return out


def patch_coverage(mask: np.ndarray, grid: tuple[int, int], center_crop: bool = False) -> np.ndarray:
    """The share of each patch's pixels (float (rows, cols)) a pixel mask (S, S) covers, on the model's patch grid
    (after the centre crop when ``center_crop``); a patch of :func:`patch_regions` is one with a share above 0."""
    mask = np.asarray(mask, dtype=bool)
    mask = crop_mask(mask) if center_crop else mask
    if mask.ndim != 2:
        raise InputError(f"mask: got shape {mask.shape}, expected an (H, W) mask")
    rows, cols = (int(v) for v in grid)
    height, width = mask.shape
    r = np.minimum(np.arange(height) * rows // height, rows - 1)
    c = np.minimum(np.arange(width) * cols // width, cols - 1)
    covered = np.zeros((rows, cols))
    pixels = np.zeros((rows, cols))
    np.add.at(covered, (r[:, None], c[None, :]), mask)
    np.add.at(pixels, (r[:, None], c[None, :]), 1.0)
    return covered / pixels


def region_masks(regions: Sequence[Sequence[Mapping[str, np.ndarray]]], center_crop: bool = False) -> RegionMasks:
    """Region masks for :func:`vla_lab.interp.region_attention`: sample s, image i from the pixel masks
    ``regions[s][i]`` (as :attr:`Observation.regions <vla_lab.worlds.Observation.regions>` holds them; an
    image past the end of a sample's list has no regions)."""

    def masks(sample: int, image: int, grid: tuple[int, int]) -> dict[str, np.ndarray]:
        if sample >= len(regions):
            raise InputError(f"regions: got {len(regions)} samples, expected one per sample (sample {sample})")
        if image >= len(regions[sample]):
            return {}
        return patch_regions(regions[sample][image], grid, center_crop)

    return masks


@torch.inference_mode()
def measure(
    model: VLAAdapter, world: World, observations: Sequence[Observation], sources: Sequence[str] = SOURCES, *,
    heads: bool = False, batch_size: int = 32, prompt: str | None = None,
) -> pd.DataFrame:
    """Mean attention per patch of each region, per observation, source and depth (tidy).

    The observations are prepared as ``world``'s policy prepares them (:class:`~vla_lab.policy.Policy`: its views,
    statistics and centre crop). Columns: sample (index into ``observations``), source, depth, head (missing:
    the mean over heads; per head too with ``heads``), region, value. A region without patches in an
    observation is left out of it.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise InputError(f"source: got {list(sources)}, expected some of {SOURCES}")
    if observations and not any(o.regions for o in observations):
        raise InputError("observations: got none with region masks, expected observations made by "
                         "World.reset(episode, regions=True)")
    policy = Policy(model, world, prompt=prompt)
    was_training = model.training
    model.eval()
    frames = []
    try:
        for lo in range(0, len(observations), batch_size):
            part = list(observations[lo : lo + batch_size])
            masks = region_masks([o.regions for o in part], world.center_crop)
            with capture(model, "segments", hidden_states=False, head="head" in sources) as cache:
                model(**policy.forward_inputs(part))
            for source in sources:
                depth = SOURCE_DEPTH[source]
                patch_df = source_patch_attention(cache, source, model.config.hidden_offset)
                groups: list[tuple[int | None, pd.DataFrame]] = [(None, patch_df)]
                if heads:
                    groups += [(int(h), sub) for h, sub in patch_df.groupby("head", sort=True)]
                for head, sub in groups:
                    values = region_values(region_attention(sub, masks, by=depth)).rename(columns={depth: "depth"})
                    values["sample"] += lo
                    values.insert(1, "source", source)
                    values.insert(3, "head", head)
                    frames.append(values)
    finally:
        model.train(was_training)
    columns = ["sample", "source", "depth", "head", "region", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)[columns]
    out["head"] = out["head"].astype("Int64")
    return out


def per_unit(values: pd.DataFrame, unit: Sequence[str], against: str = "distractors") -> pd.DataFrame:
    """One row per ``unit`` (the columns naming an episode) and depth with the ``target`` and ``against`` means
    (a region of :data:`AGAINST`) and their ratio, for the episodes that show both (head means only). With a
    ``query`` column (an episode measured at several policy queries), the means are over the queries that show
    both regions."""
    if against not in AGAINST:
        raise InputError(f"against: got {against!r}, expected one of {list(AGAINST)}")
    keys, pair = [*unit, "depth"], ["target", against]
    mean = values[values["head"].isna()] if "head" in values.columns else values
    rows = [*keys, "query"] if "query" in mean.columns else keys
    wide = mean.pivot_table(index=rows, columns="region", values="value", aggfunc="first")
    for region in pair:
        if region not in wide.columns:
            wide[region] = np.nan
    wide = wide.dropna(subset=pair)
    if rows != keys:
        wide = wide.groupby(level=keys, sort=True)[pair].mean()
    wide = wide.reset_index()
    wide.columns.name = None
    wide["ratio"] = wide["target"] / wide[against]
    return wide[[*keys, *pair, "ratio"]]


def against_of(table: pd.DataFrame) -> str:
    """The region a :func:`per_unit` table's ratio is taken against."""
    found = [c for c in AGAINST if c in table.columns]
    if len(found) != 1:
        raise InputError(f"table: got columns {list(table.columns)}, expected one of {list(AGAINST)} (per_unit's)")
    return found[0]


def ratio_by_depth(table: pd.DataFrame) -> pd.Series:
    """Per depth: the mean target attention over the units of ``table`` (:func:`per_unit`) over the mean
    attention of the region it is taken against (a ratio of means)."""
    against = against_of(table)
    means = table.groupby("depth")[["target", against]].mean()
    return (means["target"] / means[against]).rename(AGAINST[against])


def select_depth(table: pd.DataFrame) -> tuple[int, pd.Series]:
    """The depth with the highest ratio of means on ``table`` and every depth's ratio."""
    ratios = ratio_by_depth(table)
    if ratios.empty or ratios.isna().all():
        raise InputError(f"selection: got no episode showing both the target and {against_of(table)}, expected at "
                         "least one")
    return int(ratios.idxmax()), ratios


def _clustered(table: pd.DataFrame, cluster: str | None) -> pd.DataFrame:
    """The resampling units: the rows themselves, or per ``cluster`` the sums of the target's and the other
    region's attention (their ratio of means is the rows' ratio of means)."""
    if cluster is None:
        return table
    return table.groupby(cluster, sort=True)[["target", against_of(table)]].sum().reset_index()


@dataclass
class RatioReport:
    """A target-attention ratio at a depth chosen on other episodes (:func:`report`)."""

    depth: int
    rule: str
    value: float
    ci95: tuple[float, float]
    n: int
    n_clusters: int
    interval: str
    ratio_by_depth: dict[int, float]
    selection_ratio_by_depth: dict[int, float] | None
    #: Per unit at the chosen depth: the unit columns, target, the region it is taken against, ratio.
    units: pd.DataFrame
    #: The region the ratio is taken against (:data:`AGAINST`).
    against: str = "distractors"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-unit table (JSON-ready)."""
        return {"against": self.against, "depth": self.depth, "rule": self.rule, "value": self.value,
                "ci95": list(self.ci95), "n": self.n,
                "n_clusters": self.n_clusters, "interval": self.interval, "ratio_by_depth": self.ratio_by_depth,
                "selection_ratio_by_depth": self.selection_ratio_by_depth}


def report(
    table: pd.DataFrame, selection: pd.DataFrame | None = None, *, at: int | None = None,
    cluster: str | None = None, seed: int = 0, n_resamples: int = 9999,
) -> RatioReport:
    """The ratio on ``table`` (:func:`per_unit` of the reported episodes) at depth ``at``, or at the depth
    :func:`select_depth` chooses on ``selection`` (the per-unit table of other episodes). The 95 % interval
    is a paired percentile bootstrap over the units, or over ``cluster`` (e.g. ``task``) when the episodes
    cluster by it."""
    chosen = None
    if at is None:
        if selection is None:
            raise InputError("selection: got none and no depth, expected selection episodes or at=<depth>")
        at, chosen = select_depth(selection)
        rule = f"argmax of the ratio on {int((selection['depth'] == at).sum())} selection episodes"
    else:
        rule = "given"
    ratios = ratio_by_depth(table)
    if at not in ratios.index:
        raise InputError(f"at: got {at}, expected a depth in {[int(d) for d in ratios.index]}")
    units = table[table["depth"] == at].drop(columns="depth").reset_index(drop=True)
    resampled = _clustered(units, cluster)
    against = against_of(table)
    low, high = ratio_of_means_interval(resampled["target"], resampled[against], seed=seed, n_resamples=n_resamples)
    over = "episodes" if cluster is None else f"{cluster}s"
    return RatioReport(
        depth=int(at), rule=rule, value=float(ratios.loc[at]), ci95=(low, high), n=len(units),
        n_clusters=len(resampled), interval=f"bootstrap over {over} (percentile, paired)",
        ratio_by_depth={int(k): float(v) for k, v in ratios.items()},
        selection_ratio_by_depth=None if chosen is None else {int(k): float(v) for k, v in chosen.items()},
        units=units, against=against,
    )


def compare(first: RatioReport, second: RatioReport, unit: Sequence[str], cluster: str | None = None) -> PairedTest:
    """Wilcoxon signed-rank test of ``first``'s per-unit ratios against ``second``'s on the units both measured
    (each at its own depth); per ``cluster`` (the ratio of its sums) when the episodes cluster."""
    if first.against != second.against:
        raise InputError(f"second: got a ratio against {second.against!r}, expected one against {first.against!r}")
    keys, against = list(unit), first.against
    both = first.units.merge(second.units, on=keys, suffixes=("", "_other"))
    if cluster is None:
        return wilcoxon_signed_rank(both["ratio"], both["ratio_other"])
    sums = both.groupby(cluster, sort=True)[["target", against, "target_other", f"{against}_other"]].sum()
    return wilcoxon_signed_rank(sums["target"] / sums[against], sums["target_other"] / sums[f"{against}_other"])


__all__ = [
    "AGAINST", "RATIO", "REGION_ORDER", "RatioReport", "against_of", "compare", "crop_mask", "measure",
    "patch_regions", "region_masks",
    "per_unit", "ratio_by_depth", "report", "select_depth",
]
