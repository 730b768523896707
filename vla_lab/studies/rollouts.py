"""A model's closed-loop LIBERO episode kept query by query: what it saw and where the objects were.

:func:`rollout` runs one episode under upstream's protocol (:class:`~vla_lab.policy.Policy`) and keeps, at every
policy query, the observation (with the world's region masks), the step, the gripper's latest command and how high
the target and the same-category objects stand above their start; :class:`Rollout` turns them into the episode's
phases and the object it picked (:mod:`vla_lab.worlds.libero.phases`). Studies measure what they need on the kept
observations afterwards, with the same model or with another one (its random-init baseline on the same frames).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vla_lab.errors import InputError
from vla_lab.model import VLAAdapter
from vla_lab.policy import Forward, Intervene, Policy
from vla_lab.worlds import Episode, Observation, World
from vla_lab.worlds.libero.phases import episode_phases, picked_object
from vla_lab.worlds.libero.world import LiberoWorld, episode_objects
from vla_lab.worlds.runner import run_lockstep

#: The roles whose objects' heights a rollout keeps.
LIFTED_ROLES = ("target", "same_category")


@dataclass
class Rollout:
    """One episode, query by query (module docstring)."""

    observations: list[Observation] = field(default_factory=list)
    #: The episode step at which each query's observation was made (0: the reset's).
    steps_at: list[int] = field(default_factory=list)
    #: Per query: the highest lift (m) among each role's objects (:data:`LIFTED_ROLES`; roles the scene has).
    lifts: list[dict[str, float]] = field(default_factory=list)
    #: Per query: whether the gripper's latest command closes it.
    closed: list[bool] = field(default_factory=list)
    success: bool = False
    steps: int = 0
    error: str | None = None

    @property
    def phases(self) -> list[str]:
        """The phase of each query (:func:`~vla_lab.worlds.libero.phases.episode_phases`)."""
        return episode_phases([lift.get("target", 0.0) for lift in self.lifts], self.closed)

    @property
    def picked(self) -> str:
        """Which watched role's object the episode picked, or ``none``
        (:func:`~vla_lab.worlds.libero.phases.picked_object`)."""
        return picked_object(self.lifts, roles=self.roles)

    #: The roles watched (:func:`rollout`'s ``watch``), in order.
    roles: tuple[str, ...] = LIFTED_ROLES


def rollout(model: VLAAdapter, world: World, episode: Episode, execute: int = 8,
            intervene: Intervene | None = None, watch: Mapping[str, Sequence[str]] | None = None,
            regions: bool = True, forward: Forward | None = None) -> Rollout:
    """Run ``episode`` with ``model`` (and ``intervene`` / ``forward`` on every query, as
    :class:`~vla_lab.policy.Policy` takes them) and keep it query by query; an exception in
    the episode ends it as a failure with its ``error`` (what ran until then is kept). ``watch``: role -> object
    names whose heights are kept (default: the target and the same-category objects, :data:`LIFTED_ROLES`);
    ``regions`` False: the observations come without region masks (saves a segmentation drawing per query)."""
    if not isinstance(world, LiberoWorld):
        raise InputError(f"world: got {world.name!r}, expected a LIBERO suite (rollouts read the simulator)")
    kept = Rollout(roles=tuple(watch) if watch is not None else LIFTED_ROLES)
    roles: dict[str, list[str]] = {} if watch is None else {role: list(names) for role, names in watch.items()}
    policy = Policy(model, world, execute=execute, intervene=intervene, forward=forward)
    predict = policy.chunks

    def chunks(observations: Sequence[Observation], slots: Sequence[int]) -> np.ndarray:
        if not roles:
            assert world.env is not None
            roles.update({role: names for role, names in episode_objects(world.env).items() if role in LIFTED_ROLES})
        heights = world.lifts()
        kept.observations.append(observations[0])
        kept.steps_at.append(world.steps)
        kept.lifts.append({role: max(heights[n] for n in names if n in heights)
                           for role, names in roles.items() if any(n in heights for n in names)})
        kept.closed.append(world.last_action is not None and float(world.last_action[6]) > 0)
        return np.asarray(predict(observations, slots))

    policy.chunks = chunks
    before, world.step_regions = world.step_regions, regions
    try:
        run = run_lockstep([world], [episode], policy, regions=regions, isolate=True)[0]
    finally:
        world.step_regions = before
    kept.success, kept.steps, kept.error = run.success, run.steps, run.error
    return kept
