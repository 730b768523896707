"""Closed-loop episodes: the one evaluator of the world, and the summary of its episodes.

:func:`run_episodes` runs any number of scenes in lockstep: at every round the policy gets the
observations of all episodes still running and returns one action chunk per observation, of which
``execute`` actions are applied. :func:`rollout` (one scene, one observation at a time), :func:`evaluate`
(a list of seeds) and :func:`vla_lab.tabletop.evaluate_model` (a model, batched) are built on it, and
:func:`summarize` reduces the episodes of any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_lab.errors import InputError
from vla_lab.stats import wilson_interval
from vla_lab.worlds.base import Episode, Observation, Step
from vla_lab.worlds.runner import OpenLoop, run_lockstep
from vla_lab.worlds.tabletop.dynamics import expert_policy
from vla_lab.worlds.tabletop.env import TabletopWorld
from vla_lab.worlds.tabletop.scenes import KINDS, Scene, State, WorldConfig, sample_scene

OUTCOMES = ("success", "wrong_object", "timeout")

#: One observation -> a (chunk, 7) action chunk.
Policy = Callable[[Observation], np.ndarray]
#: The observations of the running episodes -> one (chunk, 7) action chunk each.
BatchPolicy = Callable[[Sequence[Observation]], Sequence[np.ndarray] | np.ndarray]
#: Called before each chunk is executed with (episode, row of the policy's batch, query number, state).
QueryCallback = Callable[[int, int, int, State], None]


def outcome(state: State) -> str:
    """``success`` (the target is held), ``wrong_object`` (another object was grasped) or ``timeout``."""
    return "success" if state.holding else "wrong_object" if state.failed else "timeout"


@dataclass
class RolloutResult:
    """One closed-loop episode. ``outcome`` is one of :data:`OUTCOMES`."""

    success: bool
    outcome: str
    steps: int
    queries: int
    positions: np.ndarray
    final_state: State
    frames: list[Observation] = field(default_factory=list, repr=False)

    def record(self, scene: Scene) -> dict[str, Any]:
        """The episode as a flat record: seed, kind, instruction, success, outcome, steps, queries, misses."""
        return {
            "seed": int(scene.seed),
            "kind": scene.kind,
            "instruction": scene.instruction,
            "success": bool(self.success),
            "outcome": self.outcome,
            "steps": int(self.steps),
            "queries": int(self.queries),
            "misses": int(self.final_state.misses),
        }


def run_episodes(
    scenes: Sequence[Scene],
    policy: BatchPolicy,
    *,
    max_steps: int | None = None,
    execute: int = 8,
    record: bool = False,
    on_query: QueryCallback | None = None,
    indexed: bool = False,
) -> list[RolloutResult]:
    """Run one episode per scene, in lockstep, until each succeeds, fails or reaches its step limit
    (:func:`vla_lab.worlds.runner.run_lockstep`, one :class:`TabletopWorld` per scene).

    An episode stops when the target (success) or another object (failure) is grasped, or after
    ``max_steps`` steps (``scene.config.max_steps`` by default). With ``record`` the observations given
    to the policy are kept in ``frames``. With ``indexed`` the policy is called as
    ``policy(observations, episodes, states)``: the indices into ``scenes`` of the rows and their states
    (for policies that treat each scene differently).
    """
    worlds = [TabletopWorld(s.config, max_steps) for s in scenes]
    episodes = [Episode("tabletop", ("", s.seed), s.instruction, {}, spec=s) for s in scenes]
    frames: list[list[Observation]] = [[] for _ in scenes]
    positions = [[s.gripper_start] for s in scenes]

    def chunks(observations: Sequence[Observation], slots: Sequence[int]) -> Any:
        if record:
            for slot, observation in zip(slots, observations):
                frames[slot].append(observation)
        if indexed:
            return policy(observations, slots, [worlds[s].state for s in slots])  # type: ignore[call-arg]
        return policy(observations)

    def query(slot: int, row: int, number: int) -> None:
        if on_query is not None:
            on_query(slot, row, number, worlds[slot].state)  # type: ignore[arg-type]

    def stepped(slot: int, _: Step) -> None:
        state = worlds[slot].state
        assert state is not None
        positions[slot].append((state.x, state.y))

    runs = run_lockstep(worlds, episodes, OpenLoop(chunks, execute, on_query=query), on_step=stepped)
    out = []
    for slot, run in enumerate(runs):
        state = worlds[slot].state
        assert state is not None
        out.append(RolloutResult(state.holding, outcome(state), state.steps, run.queries,
                                 np.asarray(positions[slot], dtype=np.float32), state, frames[slot]))
    return out


def rollout(
    scene: Scene,
    policy: Policy,
    max_steps: int | None = None,
    execute: int = 8,
    record: bool = False,
) -> RolloutResult:
    """Run ``policy`` closed loop on one scene: execute ``execute`` actions of each chunk, then query again."""
    return run_episodes([scene], lambda observations: [policy(o) for o in observations], max_steps=max_steps,
                        execute=execute, record=record)[0]


def evaluate(
    policy: Policy | str,
    seeds: Iterable[int],
    config: WorldConfig = WorldConfig(),
    max_steps: int | None = None,
    execute: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Success of ``policy`` over the scenes of ``seeds`` (``policy="expert"`` runs the expert), see :func:`summarize`.

    A policy with a ``reset()`` method is reset before each episode (episodes then run one at a time).
    """
    seeds = list(seeds)
    if isinstance(policy, str) and policy != "expert":
        raise InputError(f"policy: got {policy!r}, expected a callable or 'expert'")
    iterator: Iterable[int] = seeds
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(seeds, desc="evaluate", unit="episode")
    episodes = []
    for seed in iterator:
        scene = sample_scene(seed, config)
        if isinstance(policy, str):
            episode_policy = expert_policy(scene)
        else:
            episode_policy = policy
            reset = getattr(policy, "reset", None)
            if callable(reset):
                reset()
        episodes.append(rollout(scene, episode_policy, max_steps=max_steps, execute=execute).record(scene))
    return summarize(episodes)


def _rate(successes: int, n: int) -> dict[str, Any]:
    return {"success_rate": successes / n if n else 0.0, "num_episodes": n,
            "success_ci95": list(wilson_interval(successes, n))}


def summarize(episodes: list[dict[str, Any]], action_l1: Sequence[float] = ()) -> dict[str, Any]:
    """Summary of episode records (:meth:`RolloutResult.record`), overall and per kind.

    Keys: ``success_rate``, ``num_episodes``, ``success_ci95`` (Wilson 95 % interval), ``outcomes``
    (counts), ``by_kind`` ({kind: rate, n, interval}); with ``action_l1`` (one value per episode) also
    ``action_l1`` and ``action_l1_by_kind`` (means); ``episodes`` last.
    """
    if action_l1 and len(action_l1) != len(episodes):
        raise InputError(f"action_l1: got {len(action_l1)} values, expected one per episode ({len(episodes)})")
    by_kind, l1_by_kind = {}, {}
    for kind in KINDS:
        rows = [i for i, e in enumerate(episodes) if e["kind"] == kind]
        if rows:
            by_kind[kind] = _rate(sum(episodes[i]["success"] for i in rows), len(rows))
            if action_l1:
                l1_by_kind[kind] = float(np.mean([action_l1[i] for i in rows]))
    result: dict[str, Any] = _rate(sum(e["success"] for e in episodes), len(episodes))
    result["outcomes"] = {name: sum(e["outcome"] == name for e in episodes) for name in OUTCOMES}
    result["by_kind"] = by_kind
    if action_l1:
        result["action_l1"] = float(np.mean(action_l1))
        result["action_l1_by_kind"] = l1_by_kind
    result["episodes"] = episodes
    return result
