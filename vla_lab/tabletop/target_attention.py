"""Does a tabletop model look at the object it was asked for? The target-attention ratio on tabletop scenes.

The measurement is :mod:`vla_lab.interp.target_attention` (the one for every world) on the start observation
of tabletop scenes (:class:`~vla_lab.worlds.tabletop.TabletopWorld`; both views, the wrist view centred on the
gripper): per scene and depth the mean attention per target patch and per distractor patch of a source
(``llm``: the action queries per decoder ``layer``; ``head``: the bridge head's task attention per ``block``).
:func:`target_attention_ratio` chooses the depth on validation scenes and reports it on others, with a
bootstrap interval over scenes. :func:`object_attention_ratio` is the per-scene, per-image ratio of a
patch-attention DataFrame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from vla_lab import interp
from vla_lab.errors import InputError
from vla_lab.interp import target_attention as ta
from vla_lab.model import VLAAdapter
from vla_lab.tabletop.evaluate import check_config, world_config
from vla_lab.worlds import tabletop as world

#: Validation scenes behind :func:`select_depth`.
SELECTION_EPISODES = 50
#: The columns naming a tabletop episode in :func:`target_attention`'s records.
UNIT = ("scene",)


def object_attention_ratio(
    patch_df: pd.DataFrame,
    scenes: Sequence[world.Scene],
    states: Sequence[world.State] | None = None,
    by: str = "block",
    views: Sequence[str] = world.VIEWS,
) -> pd.DataFrame:
    """Mean attention per target patch / mean attention per distractor patch, per sample, ``by`` and image.

    ``patch_df`` as for :func:`vla_lab.interp.region_attention` (e.g. from
    :func:`vla_lab.interp.head_task_patch_attention`); sample s is ``scenes[s]`` with the gripper at ``states[s]``
    (default: the start state), image i the view ``views[i]``. Columns: sample, ``by``, image, view,
    target_patches, distractors_patches, target_mean, distractors_mean, ratio (NaN when a view shows no
    target or no distractor patch).
    """
    if states is not None and len(states) != len(scenes):
        raise InputError(f"states: got {len(states)} states, expected {len(scenes)} (one per scene)")
    at = list(states) if states is not None else [None] * len(scenes)
    pixels = [[world.scene_regions(scene, state, view) for view in views] for scene, state in zip(scenes, at)]
    out = interp.scene_ratio(interp.region_attention(patch_df, ta.region_masks(pixels), by=by))
    if len(out) and int(out["image"].max()) >= len(views):
        raise InputError(f"views: got {len(views)} view names, expected one per image")
    out.insert(3, "view", [views[i] for i in out["image"]])
    return out


@torch.inference_mode()
def target_attention(
    model: VLAAdapter, split: str = "test", n: int = 200, *, start: int = 0, source: str = "llm", batch_size: int = 32
) -> pd.DataFrame:
    """Mean attention per target patch and per distractor patch, per scene and depth (tidy).

    Columns: scene (its seed), kind, ``layer`` (source ``llm``) or ``block`` (source ``head``), region
    (``target`` | ``distractors``), value. Both images count; a scene whose region covers no patch is
    left out of that region.
    """
    if source not in interp.SOURCES:
        raise InputError(f"source: got {source!r}, expected one of {interp.SOURCES}")
    check_config(model.config)
    env = world.TabletopWorld(world_config(model.config))
    episodes = env.episodes(split, n, start)
    values = ta.measure(model, env, [env.reset(e) for e in episodes], [source], batch_size=batch_size)
    values.insert(0, "kind", [episodes[s].columns["kind"] for s in values["sample"]])
    values.insert(0, "scene", [episodes[s].columns["scene"] for s in values["sample"]])
    depth = interp.SOURCE_DEPTH[source]
    return values.rename(columns={"depth": depth})[["scene", "kind", depth, "region", "value"]]


def _table(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`target_attention`'s records -> :func:`vla_lab.interp.target_attention.per_unit`'s table."""
    depth = interp.depth_column(df)
    return ta.per_unit(df.rename(columns={depth: "depth"}), UNIT)


def ratio_by_depth(df: pd.DataFrame) -> pd.Series:
    """Target-attention ratio per layer or block: mean over scenes per target patch / per distractor patch."""
    return ta.ratio_by_depth(_table(df))


def select_depth(model: VLAAdapter, source: str = "llm", n: int = SELECTION_EPISODES) -> tuple[int, pd.Series]:
    """The layer (``llm``) or block (``head``) with the highest ratio on ``n`` validation scenes (the rule; apply
    it before testing)."""
    return ta.select_depth(_table(target_attention(model, "validation", n, source=source)))


def target_attention_ratio(
    model: VLAAdapter, split: str = "test", n: int = 200, *, source: str = "llm", at: int | None = None,
    selection_episodes: int = SELECTION_EPISODES, seed: int = 0,
) -> dict[str, Any]:
    """The ratio on ``n`` scenes of ``split`` at depth ``at`` (default: the highest ratio on
    ``selection_episodes`` validation scenes), with a 95 % bootstrap interval over scenes (``seed``).

    Returns :meth:`RatioReport.to_dict <vla_lab.interp.target_attention.RatioReport.to_dict>` with ``source`` and
    ``depth_kind`` (``layer`` for ``llm``, ``block`` for ``head``): depth, rule, value, ci95, n, interval,
    ratio_by_depth (every depth of ``split``, for inspection only), selection_ratio_by_depth.
    """
    if source not in interp.SOURCES:
        raise InputError(f"source: got {source!r}, expected one of {interp.SOURCES}")
    selection = None
    if at is None:
        selection = _table(target_attention(model, "validation", selection_episodes, source=source))
    result = ta.report(_table(target_attention(model, split, n, source=source)), selection, at=at, seed=seed)
    return {"source": source, "depth_kind": interp.SOURCE_DEPTH[source], **result.to_dict()}
