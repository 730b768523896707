"""The world's dynamics, its expert, and the training examples and statistics drawn from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_lab.errors import InputError
from vla_lab.processing.normalization import array_statistics
from vla_lab.worlds.tabletop.render import Observation, proprio, render
from vla_lab.worlds.tabletop.scenes import Scene, State, WorldConfig, initial_state, sample_scene


@dataclass
class Example:
    """One training example: the observation at a state and the expert's action chunk from it."""

    full_image: np.ndarray
    wrist_image: np.ndarray
    instruction: str
    proprio: np.ndarray
    actions: np.ndarray
    scene: Scene = field(repr=False)
    state: State = field(repr=False)

    @property
    def images(self) -> list[np.ndarray]:
        return [self.full_image, self.wrist_image]




# ---------------------------------------------------------------------------------------------
# Dynamics and expert
# ---------------------------------------------------------------------------------------------


def step(scene: Scene, state: State, action: np.ndarray | Sequence[float]) -> State:
    """Apply one 7-d action: move by ``clip(action[:2]) * max_step``; ``action[6] > 0`` attempts a grasp.

    The attempt grasps the target if it is within ``grasp_radius`` (success), another object if that one
    is (failure), and otherwise closes on nothing: the gripper reopens and ``misses`` counts it. Pose dims
    2-5 are ignored. A finished episode's state is returned unchanged.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (7,):
        raise InputError(f"action: got shape {a.shape}, expected (7,)")
    if not np.isfinite(a).all():
        raise InputError(f"action: got non-finite values {a.tolist()}")
    if state.done:
        return state
    config = scene.config
    a = np.clip(a, -1.0, 1.0)
    x = float(np.clip(state.x + a[0] * config.max_step, -1.0, 1.0))
    y = float(np.clip(state.y + a[1] * config.max_step, -1.0, 1.0))
    closed, holding, failed, misses = state.closed, state.holding, state.failed, state.misses
    if a[6] > 0 and not closed:
        within = [math.hypot(x - o.x, y - o.y) <= config.grasp_radius for o in scene.objects]
        holding = within[scene.target]
        failed = not holding and any(within)
        closed = holding or failed
        misses += not closed
    return State(x, y, closed, state.steps + 1, holding, failed, misses)


def expert_action(scene: Scene, state: State) -> np.ndarray:
    """The expert's next action: straight towards the target (proportional, saturating at 1), then close."""
    action = np.zeros(7, dtype=np.float32)
    if state.done:
        action[6] = 1.0 if state.closed else -1.0
        return action
    target = scene.target_object
    dx, dy = target.x - state.x, target.y - state.y
    if math.hypot(dx, dy) <= scene.config.close_radius:
        action[6] = 1.0
        return action
    v = np.array([dx, dy]) / scene.config.max_step
    v /= max(1.0, float(np.abs(v).max()))
    action[:2] = v
    action[6] = -1.0
    return action


def expert_chunk(scene: Scene, state: State, chunk: int | None = None) -> np.ndarray:
    """``(chunk, 7)`` float32 expert actions, rolled forward on a copy of ``state`` (open-loop consistent)."""
    chunk = scene.config.chunk if chunk is None else chunk
    actions = np.zeros((chunk, 7), dtype=np.float32)
    for i in range(chunk):
        actions[i] = expert_action(scene, state)
        state = step(scene, state, actions[i])
    return actions


def expert_policy(scene: Scene) -> Callable[[Observation], np.ndarray]:
    """An observation policy that runs the expert, reading the gripper from the proprio (for baselines)."""

    def policy(observation: Observation) -> np.ndarray:
        p = observation.proprio
        state = State(float(p[0]), float(p[1]), closed=bool(p[6] < 0.5 * scene.config.finger_open))
        return expert_chunk(scene, state)

    return policy


# ---------------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------------


def _training_state(scene: Scene, rng: np.random.Generator) -> State:
    """A state near the expert's path: near the target, or along a noisy expert run from a spread start."""
    config = scene.config
    target = scene.target_object
    if rng.random() < config.near_target_fraction:
        # Skewed towards the target, so that "close now" states are common.
        distance = 0.6 * float(rng.random()) ** 1.5
        angle = float(rng.uniform(0, 2 * math.pi))
        x = float(np.clip(target.x + distance * math.cos(angle), -0.95, 0.95))
        y = float(np.clip(target.y + distance * math.sin(angle), -0.95, 0.95))
        return State(x, y)
    state = initial_state(scene)
    if rng.random() >= 0.5:
        x, y = (float(v) for v in rng.uniform(-0.95, 0.95, size=2))
        state = State(x, y)
    needed = math.ceil(max(abs(target.x - state.x), abs(target.y - state.y)) / config.max_step)
    for _ in range(int(rng.integers(0, needed + 3))):
        action = expert_action(scene, state)
        if rng.random() < 0.1:
            action[:2] = rng.uniform(-1, 1, size=2)
        else:
            action[:2] += rng.normal(0, config.action_noise, size=2)
        action[6] = -1.0
        state = step(scene, state, action)
    return State(state.x, state.y)


def _training_pair(seed: int, config: WorldConfig) -> tuple[Scene, State, np.ndarray]:
    scene = sample_scene(seed, config)
    state = _training_state(scene, np.random.default_rng((int(seed), 1)))
    return scene, state, expert_chunk(scene, state)


def sample_training_example(seed: int, config: WorldConfig = WorldConfig()) -> Example:
    """The scene of ``seed`` with a state on a perturbed expert trajectory and the expert chunk from there.

    Draw training seeds from ``SPLITS["train"]``; the state comes from a separate stream of the same seed.
    """
    scene, state, actions = _training_pair(seed, config)
    observation = render(scene, state)
    return Example(
        full_image=observation.full_image,
        wrist_image=observation.wrist_image,
        instruction=observation.instruction,
        proprio=observation.proprio,
        actions=actions,
        scene=scene,
        state=state,
    )


def dataset_statistics(
    num_examples: int = 10_000, seed: int = 0, config: WorldConfig = WorldConfig()
) -> dict[str, Any]:
    """Normalisation statistics of the training distribution, in the released ``dataset_statistics.json``
    layout under the dataset name ``tabletop``.

    Uses the examples of seeds ``seed .. seed + num_examples - 1``: action statistics over every row of
    their expert chunks, proprio over their states. ``num_trajectories`` counts scenes (one per example),
    ``num_transitions`` action rows. The action mask is True for the 6 pose dims, False for the gripper.
    """
    if num_examples < 1:
        raise InputError(f"num_examples: got {num_examples}, expected a positive integer")
    actions, proprios = [], []
    for s in range(seed, seed + num_examples):
        scene, state, chunk = _training_pair(s, config)
        actions.append(chunk)
        proprios.append(proprio(state, config))
    action_rows = np.concatenate(actions).astype(np.float64)
    proprio_rows = np.stack(proprios).astype(np.float64)
    return {
        "tabletop": {
            "action": array_statistics(action_rows, [True] * 6 + [False]),
            "proprio": array_statistics(proprio_rows, [True] * proprio_rows.shape[1]),
            "num_transitions": int(action_rows.shape[0]),
            "num_trajectories": int(num_examples),
        }
    }
