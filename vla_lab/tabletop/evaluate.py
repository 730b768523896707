"""A VLA-Adapter acting in the tabletop world: batched closed-loop evaluation, policies, held-out action L1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vla_lab.model import VLAAdapter, forward_inputs
from vla_lab.policy import Policy
from vla_lab.processing.normalization import normalize_actions
from vla_lab.tabletop.data import TabletopData
from vla_lab.tabletop.models import check_config, stats_key, world_config
from vla_lab.worlds import tabletop as world


def _policy(model: VLAAdapter, execute: int = 8) -> Policy:
    """The model acting in the tabletop world it was made for (its image size and chunk length)."""
    check_config(model.config)
    return Policy(model, world.TabletopWorld(world_config(model.config)), execute=execute)


def predict(model: VLAAdapter, observations: Sequence[world.Observation]) -> tuple[np.ndarray, np.ndarray]:
    """Un-normalised and normalised chunks (B, chunk, 7) for a batch of observations (raw proprio in)."""
    policy = _policy(model)
    actions = policy.predict(observations)
    assert policy.last_normalized is not None
    return actions, policy.last_normalized


def observation_inputs(model: VLAAdapter, observations: Sequence[world.Observation]) -> dict[str, torch.Tensor]:
    """Forward keyword arguments for a batch of observations (raw proprio normalised with the model's statistics)."""
    return forward_inputs(model.prepare_inputs(*_policy(model).inputs(observations)))


def expert_l1(model: VLAAdapter, scene: world.Scene, state: world.State, normalized: np.ndarray) -> float:
    """Mean |normalised chunk - normalised expert chunk| at ``state``."""
    stats = (model.config.norm_stats or {})[stats_key(model.config)]
    expert = world.expert_chunk(scene, state, model.config.robot.chunk)
    target = normalize_actions(expert, stats["action"], model.config.robot.normalization)
    return float(np.abs(normalized - target).mean())


def scene_inputs(
    model: VLAAdapter, split: str = "test", n: int = 32, start: int = 0
) -> tuple[dict[str, torch.Tensor], list[world.Scene], list[world.Observation]]:
    """Forward keyword arguments for the start observations of ``n`` scenes of ``split`` (one batch).

    Returns (``pixel_values`` / ``input_ids`` / ``attention_mask`` / ``proprio``, the scenes, their
    observations); the proprio is the raw state, normalised with the model's statistics.
    """
    check_config(model.config)
    config = world_config(model.config)
    scenes = [world.sample_scene(s, config) for s in world.split_seeds(split, n, start)]
    observations = [world.render(scene) for scene in scenes]
    return observation_inputs(model, observations), scenes, observations


def policy_for(model: VLAAdapter) -> world.Policy:
    """A ``world.rollout`` policy: observation -> un-normalised ``(chunk, 7)`` actions (raw proprio in)."""
    policy = _policy(model)

    def act(observation: world.Observation) -> np.ndarray:
        return policy.predict([observation])[0]

    return act


def evaluate_scenes(
    model: VLAAdapter, scenes: list[world.Scene], execute: int = 8, max_steps: int | None = None
) -> tuple[list[dict[str, Any]], list[float]]:
    """Closed-loop episodes of ``scenes`` in lockstep (one forward pass per round, the model's own mask):
    the episode records and the action L1 of each episode's first chunk against the expert's."""
    policy = _policy(model, execute)
    first = [float("nan")] * len(scenes)

    def on_query(episode: int, row: int, query: int, state: world.State) -> None:
        if query == 0:
            assert policy.last_normalized is not None
            first[episode] = expert_l1(model, scenes[episode], state, policy.last_normalized[row])

    results = world.run_episodes(scenes, policy.predict, max_steps=max_steps, execute=execute, on_query=on_query)
    return [result.record(scene) for scene, result in zip(scenes, results)], first


def evaluate_model(
    model: VLAAdapter,
    split: str = "test",
    n: int = 200,
    progress: bool = True,
    *,
    start: int = 0,
    execute: int = 8,
    batch_size: int = 64,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Closed-loop success of ``model`` on ``n`` scenes of ``split`` (:func:`vla_lab.worlds.tabletop.run_episodes`).

    Episodes run in lockstep, ``batch_size`` scenes at a time (one forward pass per round). Returns
    :func:`~vla_lab.worlds.tabletop.summarize`'s keys with ``action_l1``: the mean |normalised predicted -
    normalised expert| over the chunk at each scene's initial state (the first query of every episode),
    and ``action_l1_by_kind``.
    """
    check_config(model.config)
    was_training = model.training
    model.eval()
    config = world_config(model.config)
    seeds = list(world.split_seeds(split, n, start))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds), desc=f"evaluate {split}", unit="episode")
    episodes: list[dict[str, Any]] = []
    l1: list[float] = []
    try:
        for lo in range(0, len(seeds), batch_size):
            scenes = [world.sample_scene(s, config) for s in seeds[lo : lo + batch_size]]
            records, first = evaluate_scenes(model, scenes, execute, max_steps)
            episodes += records
            l1 += first
            if bar is not None:
                bar.update(len(scenes))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return world.summarize(episodes, l1)


@torch.inference_mode()
def action_l1(model: VLAAdapter, data: TabletopData, batch_size: int = 128) -> float:
    """Mean |normalised predicted - normalised expert| over every chunk of ``data`` (eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for lo in range(0, len(data), batch_size):
            batch = data.batch(range(lo, min(lo + batch_size, len(data))))
            target = batch.pop("actions").to(model.device)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch).normalized_actions.float()
            total += float((out - target).abs().sum())
            count += target.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)
