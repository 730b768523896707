"""A model acting under an intervention: forward passes on world observations and closed-loop episodes.

:func:`observation_inputs` turns observations into forward keyword arguments; :func:`run_closed_loop` runs
scenes in lockstep with any ``act(observations, episodes, states) -> normalised chunks`` (so an intervention may
depend on the scene); :func:`first_chunk_l1` compares a first chunk with the expert's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from vla_lab.model import VLAAdapter, forward_inputs
from vla_lab.processing.normalization import normalize_actions
from vla_lab.tabletop import stats_key, world

#: (observations of the running episodes, their indices into the scenes, their states) -> normalised chunks
#: (B, chunk, 7).
Act = Callable[[Sequence[world.Observation], Sequence[int], Sequence[world.State]], np.ndarray]


def observation_inputs(model: VLAAdapter, observations: Sequence[world.Observation]) -> dict[str, torch.Tensor]:
    """Forward keyword arguments for a batch of observations (images, instruction, raw proprio)."""
    n = model.config.num_images
    proprio = np.stack([o.state for o in observations]) if model.config.use_proprio else None
    inputs = model.prepare_inputs([o.images[:n] for o in observations], [o.instruction for o in observations],
                                  proprio)
    return forward_inputs(inputs)


def unnormalize(model: VLAAdapter, normalized: np.ndarray) -> np.ndarray:
    """Normalised chunks -> robot units with the model's world statistics."""
    return np.asarray(model.unnormalize(normalized, stats_key(model.config)), dtype=np.float64)


def expert_l1(model: VLAAdapter, scene: world.Scene, state: world.State, normalized: np.ndarray) -> float:
    """Mean |normalised chunk - normalised expert chunk| at ``state``."""
    stats = (model.config.norm_stats or {})[stats_key(model.config)]
    expert = world.expert_chunk(scene, state, model.config.robot.chunk)
    target = normalize_actions(expert, stats["action"], model.config.robot.normalization)
    return float(np.abs(normalized - target).mean())


def run_closed_loop(
    model: VLAAdapter, scenes: list[world.Scene], act: Act, execute: int = 8, max_steps: int | None = None
) -> list[dict[str, Any]]:
    """Closed-loop episodes of ``scenes`` (lockstep) with ``act`` choosing every chunk; one record per scene
    (:meth:`vla_lab.tabletop.world.RolloutResult.record`) plus ``action_l1`` of its first chunk."""
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

