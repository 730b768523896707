"""A model acting under an intervention: closed-loop episodes in which the intervention may depend on the scene.

:func:`run_closed_loop` runs scenes in lockstep with any ``act(observations, episodes, states) -> normalised
chunks``; forward inputs come from :func:`vla_lab.tabletop.evaluate.observation_inputs`, the first chunk's
error from :func:`vla_lab.tabletop.evaluate.expert_l1`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vla_lab.model import VLAAdapter
from vla_lab.tabletop import stats_key
from vla_lab.tabletop.evaluate import expert_l1
from vla_lab.worlds import tabletop as world

#: (observations of the running episodes, their indices into the scenes, their states) -> normalised chunks
#: (B, chunk, 7).
Act = Callable[[Sequence[world.Observation], Sequence[int], Sequence[world.State]], np.ndarray]


def unnormalize(model: VLAAdapter, normalized: np.ndarray) -> np.ndarray:
    """Normalised chunks -> robot units with the model's world statistics."""
    return np.asarray(model.unnormalize(normalized, stats_key(model.config)), dtype=np.float64)


def run_closed_loop(
    model: VLAAdapter, scenes: list[world.Scene], act: Act, execute: int = 8, max_steps: int | None = None
) -> list[dict[str, Any]]:
    """Closed-loop episodes of ``scenes`` (lockstep) with ``act`` choosing every chunk; one record per scene
    (:meth:`vla_lab.worlds.tabletop.RolloutResult.record`) plus ``action_l1`` of its first chunk."""
    first = [float("nan")] * len(scenes)

    def policy(observations: Sequence[world.Observation], episodes: Sequence[int],
               states: Sequence[world.State]) -> np.ndarray:
        normalized = np.asarray(act(observations, episodes, states), dtype=np.float64)
        for row, episode in enumerate(episodes):
            if np.isnan(first[episode]):
                start = world.initial_state(scenes[episode])  # the first chunk is predicted at the start
                first[episode] = expert_l1(model, scenes[episode], start, normalized[row])
        return unnormalize(model, normalized)

    results = world.run_episodes(scenes, policy, execute=execute, max_steps=max_steps, indexed=True)  # type: ignore[arg-type]
    records = []
    for scene, result, l1 in zip(scenes, results, first):
        records.append({**result.record(scene), "action_l1": l1})
    return records

