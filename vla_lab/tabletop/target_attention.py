"""Does the model look at the object it was asked for? Attention on the target vs the distractors.

For every tabletop scene the patches covering the target and the distractor objects are known
(:func:`vla_lab.worlds.tabletop.object_patch_masks`, via :func:`scene_masks`). At each scene's start
observation one forward pass is captured and, per depth, the attention a source puts on each image
patch is measured with :func:`vla_lab.interp.region_attention`:

* ``source="llm"``: the action queries in the LLM (mean over the queries and over heads), per decoder ``layer``;
* ``source="head"``: the bridge head's attention on its task keys (mean over chunk rows and heads), per
  ``block``, with the patch positions of ``config.hidden_offset``.

The target-attention ratio at a depth is mean attention per target patch / mean attention per distractor
patch, both averaged over the scenes first (:func:`vla_lab.interp.pooled_ratio`, a ratio of means). The
depth it is reported at is fixed by :func:`select_depth` on the ``validation`` split, never chosen on the
split it is reported on. :func:`object_attention_ratio` is the per-scene, per-image ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import interp
from vla_lab.errors import InputError
from vla_lab.interp.regions import RegionMasks
from vla_lab.model import VLAAdapter
from vla_lab.tabletop.evaluate import scene_inputs
from vla_lab.worlds import tabletop as world

REGIONS = ("target", "distractors")
#: The depth column of each source.
#: Validation scenes behind :func:`select_depth`.
SELECTION_EPISODES = 50


def scene_masks(
    scenes: Sequence[world.Scene],
    states: Sequence[world.State] | None = None,
    views: Sequence[str] = world.VIEWS,
    regions: Sequence[str] = REGIONS,
) -> RegionMasks:
    """Region masks for :func:`vla_lab.interp.region_attention`: sample s is ``scenes[s]`` (gripper at
    ``states[s]``, the start state when omitted; it centres the wrist view), image i the view ``views[i]``."""
    if states is not None and len(states) != len(scenes):
        raise InputError(f"states: got {len(states)} states, expected {len(scenes)} (one per scene)")

    def masks(sample: int, image: int, grid: tuple[int, int]) -> dict[str, np.ndarray]:
        if sample >= len(scenes):
            raise InputError(f"scenes: got {len(scenes)} scenes, expected one per sample (sample {sample})")
        if image >= len(views):
            raise InputError(f"views: got {len(views)} view names, expected one for image {image}")
        state = states[sample] if states is not None else None
        found = world.object_patch_masks(scenes[sample], grid, view=views[image], state=state)
        return {region: found[region] for region in regions}

    return masks


def object_attention_ratio(
    patch_df: pd.DataFrame,
    scenes: Sequence[world.Scene],
    states: Sequence[world.State] | None = None,
    by: str = "block",
    views: Sequence[str] = world.VIEWS,
) -> pd.DataFrame:
    """Mean attention per target patch / mean attention per distractor patch, per sample, ``by`` and image.

    ``patch_df`` as for :func:`vla_lab.interp.region_attention` (e.g. from
    :func:`vla_lab.interp.head_task_patch_attention`). Columns: sample, ``by``, image, view,
    target_patches, distractors_patches, target_mean, distractors_mean, ratio (NaN when a view shows no
    target or no distractor patch).
    """
    regions = interp.region_attention(patch_df, scene_masks(scenes, states, views), by=by)
    out = interp.scene_ratio(regions)
    out.insert(3, "view", [views[i] for i in out["image"]])
    return out


@torch.inference_mode()
def target_attention(
    model: VLAAdapter, split: str = "test", n: int = 200, *, start: int = 0, source: str = "llm", batch_size: int = 32
) -> pd.DataFrame:
    """Mean attention per target patch and per distractor patch, per scene and depth (tidy).

    Columns: seed, kind, ``layer`` (source ``llm``) or ``block`` (source ``head``), region
    (``target`` | ``distractors``), value. Both images count; a scene whose region covers no patch is
    left out of that region.
    """
    if source not in interp.SOURCES:
        raise InputError(f"source: got {source!r}, expected one of {interp.SOURCES}")
    depth = interp.SOURCE_DEPTH[source]
    was_training = model.training
    model.eval()
    frames = []
    try:
        for lo in range(0, n, batch_size):
            forward, scenes, _ = scene_inputs(model, split, min(batch_size, n - lo), start + lo)
            with interp.capture(model, "segments", hidden_states=False, head=source == "head") as cache:
                model(**forward)
            regions = interp.region_attention(interp.source_patch_attention(cache, source, model.config.hidden_offset),
                                            scene_masks(scenes), by=depth)
            values = interp.region_values(regions)
            values.insert(0, "kind", [scenes[s].kind for s in values["sample"]])
            values.insert(0, "seed", [scenes[s].seed for s in values["sample"]])
            frames.append(values.drop(columns="sample"))
    finally:
        model.train(was_training)
    columns = ["seed", "kind", depth, "region", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def ratio_by_depth(df: pd.DataFrame) -> pd.Series:
    """Target-attention ratio per layer or block: mean over scenes per target patch / per distractor patch."""
    return interp.pooled_ratio(df).rename("target_attention_ratio")


def select_depth(model: VLAAdapter, source: str = "llm", n: int = SELECTION_EPISODES) -> tuple[int, pd.Series]:
    """The layer (``llm``) or block (``head``) with the highest ratio on ``n`` validation scenes (the rule; apply
    it before testing)."""
    ratios = ratio_by_depth(target_attention(model, "validation", n, source=source))
    return int(ratios.idxmax()), ratios


def target_attention_ratio(
    model: VLAAdapter, split: str = "test", n: int = 200, *, source: str = "llm", at: int | None = None,
    selection_episodes: int = SELECTION_EPISODES,
) -> dict[str, Any]:
    """The ratio on ``n`` scenes of ``split`` at depth ``at`` (default: :func:`select_depth` on validation).

    The depth is an LLM ``layer`` for ``source="llm"`` and a head ``block`` for ``source="head"``
    (:data:`vla_lab.interp.SOURCE_DEPTH`); the result names it by its kind. Returns ``{"source", "depth"
    (``layer`` or ``block``), <that kind>: the index, "depth_rule", "target_attention_ratio", "ratio_by_depth",
    "validation_ratio_by_depth"}``; ``ratio_by_depth`` (every depth of ``split``) is for inspection only.
    """
    validation = None
    rule = "given"
    if at is None:
        at, validation = select_depth(model, source, selection_episodes)
        rule = f"argmax of the ratio on {selection_episodes} validation scenes"
    ratios = ratio_by_depth(target_attention(model, split, n, source=source))
    depth = interp.SOURCE_DEPTH[source]
    if at not in ratios.index:
        raise InputError(f"at: got {at}, expected a {depth} in {list(ratios.index)}")
    return {
        "source": source,
        "depth": depth,
        depth: int(at),
        "depth_rule": rule,
        "target_attention_ratio": float(ratios.loc[at]),
        "ratio_by_depth": {int(k): float(v) for k, v in ratios.items()},
        "validation_ratio_by_depth": None if validation is None else {int(k): float(v) for k, v in validation.items()},
    }
