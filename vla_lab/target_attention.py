"""Does the model look at the object it was asked for? Attention on the target vs the distractors.

For every tabletop scene the patches covering the target and the distractor objects are known
(:func:`vla_lab.world.object_patch_masks`). At each scene's start observation we capture one forward
pass and read, per layer, the attention that a reader puts on each image patch:

* ``source="llm"``: the action queries in the LLM (mean over the queries and over heads), per decoder layer;
* ``source="head"``: the bridge head's attention on its task keys (mean over chunk rows and heads), per
  block, with the patch positions of ``config.hidden_offset``.

The target-attention ratio of a layer is mean attention per target patch / mean attention per distractor
patch, both averaged over the scenes first (a ratio of means). The layer it is reported at is fixed by
:func:`select_layer` on the ``validation`` split, never chosen on the split it is reported on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab import analysis, tabletop, world
from vla_lab.capture import capture
from vla_lab.errors import InputError

SOURCES = ("llm", "head")
REGIONS = ("target", "distractors")
#: Validation scenes behind :func:`select_layer`.
SELECTION_EPISODES = 50


def _views(model: Any) -> list[str]:
    return ["full", "wrist"][: model.config.num_images]


def _patch_values(model: Any, cache: Any, source: str) -> np.ndarray:
    """(B, layers, images, rows, cols) attention per patch, mean over heads (and over queries)."""
    if source == "llm":
        df = analysis.query_patch_attention(cache, "action_queries")
        layer_key = "layer"
    else:
        df = analysis.head_task_patch_attention(cache, offset=model.config.hidden_offset)
        layer_key = "block"
    mean = df.groupby(["sample", layer_key, "image", "row", "col"], sort=True)["value"].mean()
    shape = tuple(int(mean.index.get_level_values(i).max()) + 1 for i in range(5))
    return mean.to_numpy().reshape(shape)


@torch.inference_mode()
def target_attention(
    model: Any, split: str = "test", n: int = 200, *, start: int = 0, source: str = "llm", batch_size: int = 32
) -> pd.DataFrame:
    """Mean attention per target patch and per distractor patch, per scene and layer (tidy).

    Columns: seed, kind, layer, region (``target`` | ``distractors``), value. Both images count; a scene
    whose region covers no patch is left out of that region.
    """
    if source not in SOURCES:
        raise InputError(f"source: got {source!r}, expected one of {SOURCES}")
    was_training = model.training
    model.eval()
    grid = tuple(model.vision_backbone.patch_grid)
    views = _views(model)
    rows: list[dict[str, Any]] = []
    try:
        for lo in range(0, n, batch_size):
            forward, scenes, _ = tabletop.scene_inputs(model, split, min(batch_size, n - lo), start + lo)
            with capture(model, "segments", hidden_states=False, head=source == "head") as cache:
                model(**forward)
            values = _patch_values(model, cache, source)
            for b, scene in enumerate(scenes):
                masks = [world.object_patch_masks(scene, grid, view=v) for v in views]
                for region in REGIONS:
                    region_mask = np.stack([m[region] for m in masks])  # (images, rows, cols)
                    if not region_mask.any():
                        continue
                    per_layer = np.nanmean(values[b][:, region_mask], axis=1)
                    for layer, value in enumerate(per_layer):
                        rows.append({"seed": scene.seed, "kind": scene.kind, "layer": layer, "region": region,
                                     "value": float(value)})
    finally:
        model.train(was_training)
    return pd.DataFrame(rows, columns=["seed", "kind", "layer", "region", "value"])


def ratio_by_layer(df: pd.DataFrame) -> pd.Series:
    """Target-attention ratio per layer: mean over scenes per target patch / per distractor patch."""
    means = df.groupby(["layer", "region"])["value"].mean().unstack("region")
    return (means["target"] / means["distractors"]).rename("target_attention_ratio")


def select_layer(model: Any, source: str = "llm", n: int = SELECTION_EPISODES) -> tuple[int, pd.Series]:
    """The layer with the highest ratio on ``n`` validation scenes (the rule; apply it before testing)."""
    ratios = ratio_by_layer(target_attention(model, "validation", n, source=source))
    return int(ratios.idxmax()), ratios


def target_attention_ratio(
    model: Any, split: str = "test", n: int = 200, *, source: str = "llm", layer: int | None = None,
    selection_episodes: int = SELECTION_EPISODES,
) -> dict[str, Any]:
    """The ratio on ``n`` scenes of ``split`` at ``layer`` (default: :func:`select_layer` on validation).

    Returns ``{"source", "layer", "layer_rule", "target_attention_ratio", "ratio_by_layer",
    "validation_ratio_by_layer"}``; ``ratio_by_layer`` (every layer of ``split``) is for inspection only.
    """
    validation = None
    rule = "given"
    if layer is None:
        layer, validation = select_layer(model, source, selection_episodes)
        rule = f"argmax of the ratio on {selection_episodes} validation scenes"
    ratios = ratio_by_layer(target_attention(model, split, n, source=source))
    if layer not in ratios.index:
        raise InputError(f"layer: got {layer}, expected one of {list(ratios.index)}")
    return {
        "source": source,
        "layer": int(layer),
        "layer_rule": rule,
        "target_attention_ratio": float(ratios.loc[layer]),
        "ratio_by_layer": {int(k): float(v) for k, v in ratios.items()},
        "validation_ratio_by_layer": None if validation is None else {int(k): float(v) for k, v in validation.items()},
    }
