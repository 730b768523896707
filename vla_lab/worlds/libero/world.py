"""LIBERO as a :class:`vla_lab.worlds.World`: a suite's tasks and init states, reset, step, counterfactuals.

An episode is (suite, task, init state), reset as upstream's evaluation does it (:class:`LiberoEnv`: the
init state, then the settle steps); its observation is what the policy reads (upstream's processing,
:func:`~vla_lab.worlds.libero.observation.prepare_observation`, 224² views and the 8-d state). The
simulator of a task is built when an episode of another task is reset, so episodes sorted by task reuse it.

Regions (in the policy's agentview frame, from MuJoCo's segmentation), read from the task's BDDL goal
(:func:`~vla_lab.worlds.libero.env.goal_objects`): ``target`` the objects the goal moves or changes (the bowl to
pick in libero_spatial; both objects of "put both the cream cheese box and the butter in the basket"),
``place`` the objects it puts them in or on (the plate, the basket; none for a region of the table),
``same_category`` the other objects of a target's LIBERO category (the other black bowl; only in scenes that have
one), ``distractors`` every other object and fixture, and ``background`` what is none of them (robot, table,
walls, floor).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from vla_lab.errors import InputError
from vla_lab.worlds.base import Episode, Observation, Step, check_action, check_variant
from vla_lab.worlds.libero.env import (
    CAMERA,
    LiberoEnv,
    check_suite,
    goal_objects,
    num_tasks,
    object_segmentation,
    open_simulator,
    release_simulator,
    task_info,
)
from vla_lab.worlds.libero.observation import prepare_observation, process_action
from vla_lab.worlds.libero.reuse import IMAGE_SUFFIX
from vla_lab.worlds.libero.suites import base_suite, base_task
from vla_lab.worlds.libero.suites import max_steps as default_steps

#: Size of the policy's square views.
POLICY_SIZE = 224


def episode_objects(env: LiberoEnv, names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The scene's objects by role (module docstring): ``target``, ``place``, ``same_category`` (lists, possibly
    empty) among ``names`` (default: every object and fixture)."""
    names = env.object_names if names is None else list(names)
    targets, places = goal_objects(env, names)
    kinds = {env.category(n) for n in targets}
    alike = [n for n in names if n not in targets and n not in places and env.category(n) in kinds]
    return {"target": targets, "place": places, "same_category": alike}


def episode_regions(env: LiberoEnv, size: int = POLICY_SIZE) -> dict[str, np.ndarray]:
    """``target`` / ``place`` / ``same_category`` / ``distractors`` / ``background`` pixel masks (size, size) of the
    current state (module docstring); ``place`` and ``same_category`` only where the scene has them."""
    labels, names = object_segmentation(env, size)
    roles = episode_objects(env, names)
    ids = {name: names.index(name) + 1 for role in roles.values() for name in role}
    regions = {"target": np.isin(labels, [ids[n] for n in roles["target"]])}
    for role in ("place", "same_category"):
        if roles[role]:
            regions[role] = np.isin(labels, [ids[n] for n in roles[role]])
    regions["distractors"] = (labels > 0) & ~np.isin(labels, list(ids.values()))
    regions["background"] = labels == 0
    return regions


class LiberoWorld:
    """One LIBERO suite. ``resolution``: the cameras' (upstream's 256); ``seed``: the simulator's seed;
    ``reuse=False``: simulators rebuilt at every reset and drawn at every step (:class:`LiberoEnv`)."""

    stats_key: str
    #: Upstream evaluates models trained with random crops on the centre crop.
    center_crop = True

    def __init__(self, suite: str, resolution: int = 256, seed: int = 0, max_steps: int | None = None,
                 render: bool = True, reuse: bool = True) -> None:
        self.name = check_suite(suite)
        self.stats_key = suite
        self.resolution, self.seed, self.render, self.reuse = int(resolution), int(seed), bool(render), bool(reuse)
        self._max_steps = default_steps(suite) if max_steps is None else int(max_steps)
        self.env: LiberoEnv | None = None
        self.raw: dict[str, Any] | None = None
        self.steps = 0
        #: The latest action applied (None before the first step of an episode).
        self.last_action: np.ndarray | None = None
        self._heights: dict[str, float] = {}
        #: Draw the agentview at every step (``raw`` holds each step's frame, e.g. for a video), not only when observed.
        self.every_frame = False
        #: Give every observation of a step its region masks (a measure or an intervention through a rollout), not
        #: only the reset's.
        self.step_regions = False

    @property
    def max_steps(self) -> int:
        """The suite's step limit (upstream's) unless the constructor's ``max_steps`` says otherwise."""
        return self._max_steps

    def statistics_for(self, available: Collection[str]) -> str | None:
        """Upstream's choice: the suite's statistics, else ``<suite>_no_noops``; a perturbation suite's are its base
        suite's (:mod:`~vla_lab.worlds.libero.suites`); None for a model without any."""
        keys = list(available)
        if not keys:
            return None
        names = list(dict.fromkeys([self.name, base_suite(self.name)]))
        wanted = [k for name in names for k in (name, f"{name}_no_noops")]
        for key in wanted:
            if key in keys:
                return key
        raise InputError(f"unnorm_key: got a model with statistics for {sorted(keys)}, expected one of {wanted}")

    def process_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """Upstream's gripper post-processing (:func:`~vla_lab.worlds.libero.observation.process_action`)."""
        return process_action(chunk)

    def episode(self, task: int, init_state: int) -> Episode:
        """The episode of one task and init state (checked against the suite)."""
        info = task_info(self.name, task)
        if not info["num_init_states"]:
            raise InputError(f"init_state: got {init_state!r}, expected none: task {task} of {self.name} has no init "
                             "states (the package ships none)")
        if not isinstance(init_state, (int, np.integer)) or not 0 <= init_state < info["num_init_states"]:
            raise InputError(f"init_state: got {init_state!r}, expected 0..{info['num_init_states'] - 1} "
                             f"(task {task})")
        columns = {"suite": self.name, "task": int(task), "task_name": info["task_name"],
                   "init_state": int(init_state)}
        if base_suite(self.name) != self.name:  # a perturbation suite: which task of its base suite it perturbs
            columns["base_task"] = base_task(self.name, int(task))
        return Episode(self.name, (self.name, int(task), int(init_state)), info["instruction"], columns,
                       spec=int(task))

    def episodes(self, tasks: Sequence[int] | None = None, init_states: Sequence[int] | None = None,
                 **unknown: Any) -> list[Episode]:
        """Every (task, init state) of the selection, sorted; default every task and every init state."""
        if unknown:
            raise InputError(f"selection: got {sorted(unknown)}, expected tasks, init_states")
        chosen = range(num_tasks(self.name)) if tasks is None else sorted(set(tasks))
        out = []
        for task in chosen:
            states = range(task_info(self.name, task)["num_init_states"]) if init_states is None else init_states
            out += [self.episode(task, i) for i in sorted(set(states))]
        return out

    def simulator(self, episode: Episode) -> LiberoEnv:
        """The simulator of the episode's task (built when the last one was another task's)."""
        if episode.world != self.name or not isinstance(episode.spec, int):
            raise InputError(f"episode: got an episode of {episode.world!r}, expected one of {self.name!r}")
        if self.env is None or self.env.task_id != episode.spec:
            self.close(keep=False)  # another task's: not kept (a run goes through its tasks once)
            self.env = open_simulator(self.name, episode.spec, resolution=self.resolution, seed=self.seed,
                                      render=self.render, reuse=self.reuse)
        return self.env

    def _observation(self, instruction: str) -> Observation:
        assert self.raw is not None
        prepared = prepare_observation(self.raw, POLICY_SIZE)
        return Observation([prepared["full_image"], prepared["wrist_image"]], instruction, prepared["state"])

    def reset(self, episode: Episode, *, regions: bool = True) -> Observation:
        if not self.render:
            raise InputError("render: got a LiberoWorld without cameras (render=False), expected one that renders "
                             "to make observations (use simulator() for physics only)")
        env = self.simulator(episode)
        self.raw = env.reset(episode.key[2])
        self.steps, self.instruction, self.last_action = 0, episode.instruction, None
        self._heights = self._object_heights()
        observation = self._observation(episode.instruction)
        if regions:
            observation.regions = [episode_regions(env)]  # the wrist view has no masks
        return observation

    def step(self, action: Sequence[float] | np.ndarray, *, observe: bool = True) -> Step:
        """One simulator step (LIBERO units: gripper -1 opens, +1 closes); success when LIBERO says done."""
        if self.env is None or self.raw is None:
            raise InputError("step: got no running episode, expected reset(episode) first")
        frames = True if observe else [f"{CAMERA}{IMAGE_SUFFIX}"] if self.every_frame else False
        self.last_action = check_action(action)
        self.raw, _, success, _ = self.env.step(self.last_action, observe=frames)
        self.steps += 1
        observation = self._observation(self.instruction) if observe else None
        if observation is not None and self.step_regions:
            observation.regions = [episode_regions(self.env)]
        return Step(observation, success or self.steps >= self.max_steps, success)

    def _object_heights(self) -> dict[str, float]:
        assert self.env is not None
        inner = self.env.env.env
        sim = inner.sim
        return {name: float(sim.data.body_xpos[sim.model.body_name2id(obj.root_body)][2])
                for name, obj in inner.objects_dict.items()}

    def lifts(self) -> dict[str, float]:
        """How high (m) each movable object of the running episode stands above where it stood after the reset."""
        if self.env is None or self.raw is None:
            raise InputError("lifts: got no running episode, expected reset(episode) first")
        return {name: z - self._heights[name] for name, z in self._object_heights().items()}

    def counterfactual(self, episode: Episode, variant: str, *, seed: int = 0) -> Episode:
        """``other_instruction``: the instruction of another task of the suite (drawn with ``seed``) in this
        episode's scene; success is still this task's goal. ``target_swap`` is not offered: a LIBERO task's
        goal is its BDDL file's, and no other goal exists for the same scene."""
        check_variant(variant)
        if variant == "target_swap":
            raise InputError(f"variant: got 'target_swap' for {self.name}, expected 'other_instruction' (a LIBERO "
                             "task's goal is fixed by its BDDL file)")
        task = int(episode.key[1])
        others = [t for t in range(num_tasks(self.name))
                  if t != task and task_info(self.name, t)["instruction"] != episode.instruction]
        if not others:
            raise InputError(f"suite: got {self.name} with no other instruction, expected at least two tasks")
        donor = others[int(np.random.default_rng([int(seed), task, int(episode.key[2])]).integers(len(others)))]
        return self.with_instruction_of(episode, donor)

    def with_instruction_of(self, episode: Episode, task: int) -> Episode:
        """``episode``'s scene with task ``task``'s instruction (an ``other_instruction`` counterfactual; success is
        still the scene's own goal)."""
        columns = {**episode.columns, "instruction_from": int(task)}
        return Episode(self.name, episode.key, task_info(self.name, task)["instruction"], columns,
                       "other_instruction", episode.spec)

    def close(self, keep: bool = True) -> None:
        """Release the simulator: kept for the next world of this process that needs it (``keep_simulators``),
        or closed (``keep=False``)."""
        env, self.env, self.raw = self.env, None, None
        if env is not None and keep:
            release_simulator(env)
        elif env is not None:
            env.close()

    def __enter__(self) -> LiberoWorld:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(keep=exc_type is None)  # left on an exception: nothing to keep
