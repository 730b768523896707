"""Does a policy look at the object it was asked for? Target attention on real LIBERO frames.

For an observation of :func:`vla_lab.worlds.libero.observations` the pixels of the task's objects of interest
(``target``) and of every other object and fixture (``distractors``) are known from MuJoCo's segmentation
rendering, in the policy's 224-px agentview frame. The model sees that frame centre-cropped
(:data:`~vla_lab.libero.data.CROP_SCALE` of the area) and cut into its patch grid; :func:`patch_masks` maps
the pixel masks the same way (a patch is ``target`` when any target pixel falls in it, ``distractors``
when a distractor pixel does and no target pixel). The wrist image has no masks (its regions are empty).

Per observation one forward pass is captured; the attention of a source on each patch is measured with
:func:`vla_lab.interp.region_attention` (``source="llm"``: the action queries in the LLM per ``layer``;
``source="head"``: the bridge head's task attention per ``block``). The target-attention ratio at a depth is
the mean over observations of the attention per target patch over the mean per distractor patch
(:func:`vla_lab.interp.pooled_ratio`); :func:`target_attention_ratio` picks the depth on one set of
observations (the training init states) and reports it on another, with a bootstrap interval over scenes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import interp
from vla_lab.errors import InputError
from vla_lab.interp.regions import RegionMasks
from vla_lab.libero.data import CROP_SCALE
from vla_lab.model import VLAAdapter, forward_inputs
from vla_lab.stats import ratio_of_means_interval
from vla_lab.worlds.libero.world import LiberoWorld

REGIONS = ("target", "distractors")


def crop_mask(mask: np.ndarray, scale: float = CROP_SCALE) -> np.ndarray:
    """A (S, S) pixel mask as the model sees its image: the central ``scale`` of the area, back at S
    (nearest pixel centres; the box of :func:`vla_lab.processing.images.center_crop_image`)."""
    size = mask.shape[0]
    if mask.ndim != 2 or mask.shape[1] != size:
        raise InputError(f"mask: got shape {mask.shape}, expected a square (S, S) mask")
    side = math.sqrt(scale)
    start = (1 - side) / 2 * size
    index = np.clip(np.floor(start + (np.arange(size) + 0.5) * side).astype(int), 0, size - 1)
    return np.asarray(mask[index][:, index])


def patch_masks(
    masks: Mapping[str, np.ndarray], grid: tuple[int, int], center_crop: bool = True
) -> dict[str, np.ndarray]:
    """``target`` / ``distractors`` pixel masks (S, S) -> patch masks ``grid`` = (rows, cols), bool."""
    rows, cols = (int(v) for v in grid)
    pooled = {}
    for region in REGIONS:
        mask = np.asarray(masks[region], dtype=bool)
        mask = crop_mask(mask) if center_crop else mask
        size = mask.shape[0]
        r = np.minimum(np.arange(size) * rows // size, rows - 1)
        c = np.minimum(np.arange(size) * cols // size, cols - 1)
        out = np.zeros((rows, cols), dtype=bool)
        ys, xs = np.nonzero(mask)
        out[r[ys], c[xs]] = True
        pooled[region] = out
    return {"target": pooled["target"], "distractors": pooled["distractors"] & ~pooled["target"]}


def observation_masks(observations: Sequence[Mapping[str, Any]]) -> RegionMasks:
    """Region masks for :func:`vla_lab.interp.region_attention`: sample s is ``observations[s]``; image 0
    (agentview) from its ``masks``, other images empty."""

    def masks(sample: int, image: int, grid: tuple[int, int]) -> dict[str, np.ndarray]:
        if sample >= len(observations):
            raise InputError(f"observations: got {len(observations)}, expected one per sample (sample {sample})")
        if image > 0:
            return {region: np.zeros(grid, dtype=bool) for region in REGIONS}
        return patch_masks(observations[sample]["masks"], grid)

    return masks


def observation_inputs(model: VLAAdapter, observations: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Forward keyword arguments for the observations, as the evaluation prepares them (centre crop, the
    state as proprio normalised with the suite's statistics)."""
    suites = {str(o["suite"]) for o in observations}
    if len(suites) != 1:
        raise InputError(f"observations: got suites {sorted(suites)}, expected observations of one suite")
    images = [[o["full_image"], o["wrist_image"]][: model.config.num_images] for o in observations]
    proprio = np.stack([o["state"] for o in observations]) if model.config.use_proprio else None
    key = LiberoWorld(suites.pop()).statistics_for(model.config.norm_stats or {})  # upstream's choice
    inputs = model.prepare_inputs(images, [str(o["instruction"]) for o in observations], proprio,
                                  unnorm_key=key, center_crop=True)
    return forward_inputs(inputs)


@torch.inference_mode()
def target_attention(
    model: VLAAdapter, observations: Sequence[Mapping[str, Any]], source: str = "llm", batch_size: int = 16,
) -> pd.DataFrame:
    """Mean attention per target patch and per distractor patch, per observation and depth (tidy).

    Columns: task, init_state, ``layer`` (``llm``) or ``block`` (``head``), region, value.
    """
    if source not in interp.SOURCES:
        raise InputError(f"source: got {source!r}, expected one of {interp.SOURCES}")
    depth = interp.SOURCE_DEPTH[source]
    was_training = model.training
    model.eval()
    frames = []
    try:
        for lo in range(0, len(observations), batch_size):
            part = list(observations[lo : lo + batch_size])
            with interp.capture(model, "segments", hidden_states=False, head=source == "head") as cache:
                model(**observation_inputs(model, part))
            patch_df = interp.source_patch_attention(cache, source, model.config.hidden_offset)
            values = interp.region_values(interp.region_attention(patch_df, observation_masks(part), by=depth))
            values.insert(0, "init_state", [int(part[s]["init_state"]) for s in values["sample"]])
            values.insert(0, "task", [int(part[s]["task"]) for s in values["sample"]])
            frames.append(values.drop(columns="sample"))
    finally:
        model.train(was_training)
    columns = ["task", "init_state", depth, "region", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def ratio_by_depth(values: pd.DataFrame) -> pd.Series:
    """Target-attention ratio per layer (or block): a ratio of means over observations."""
    return interp.pooled_ratio(values).rename("target_attention_ratio")


def target_attention_ratio(
    model: VLAAdapter, selection: Sequence[Mapping[str, Any]], report: Sequence[Mapping[str, Any]], *,
    source: str = "llm", depth: int | None = None, n_resamples: int = 9999,
) -> dict[str, Any]:
    """The ratio on the ``report`` observations at the depth with the highest ratio on ``selection`` (or
    ``depth``), with a 95 % bootstrap interval over the report scenes; the per-scene values under
    ``values`` (tidy, the report observations) for paired comparisons."""
    rule = "given"
    selected = None
    if depth is None:
        selected = ratio_by_depth(target_attention(model, selection, source))
        depth, rule = int(selected.idxmax()), f"argmax of the ratio on {len(selection)} selection observations"
    values = target_attention(model, report, source)
    column = interp.SOURCE_DEPTH[source]
    ratios = ratio_by_depth(values)
    if depth not in ratios.index:
        raise InputError(f"depth: got {depth}, expected one of {list(ratios.index)}")
    at = values[values[column] == depth].pivot_table(index=["task", "init_state"], columns="region",
                                                       values="value").dropna()
    low, high = ratio_of_means_interval(at["target"], at["distractors"], n_resamples=n_resamples)
    return {"source": source, "depth": column, column: int(depth), "rule": rule,
            "target_attention_ratio": float(ratios.loc[depth]), "ci95": [low, high], "n": int(len(at)),
            "ratio_by_depth": {int(k): float(v) for k, v in ratios.items()},
            "selection_ratio_by_depth": None if selected is None else {int(k): float(v) for k, v in selected.items()},
            "values": values}
