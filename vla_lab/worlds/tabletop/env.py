"""The tabletop world as a :class:`vla_lab.worlds.World`: episodes of a split, reset, step, counterfactuals."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from vla_lab.errors import InputError
from vla_lab.worlds.base import Episode, Observation, Step, check_action, check_variant
from vla_lab.worlds.tabletop.dynamics import step
from vla_lab.worlds.tabletop.render import VIEWS, object_pixel_masks, render
from vla_lab.worlds.tabletop.scenes import (
    SPLIT_SIZE,
    SPLITS,
    VERBS,
    Scene,
    State,
    WorldConfig,
    initial_state,
    resolve_instruction,
    sample_scene,
    split_seeds,
)

#: Dataset name of the world's action and proprio statistics in a model's ``norm_stats``.
STATS_KEY = "tabletop"


def statistics_key(available: Collection[str]) -> str | None:
    """Which of a model's statistics a tabletop model uses: ``tabletop``, else its first (None without any)."""
    keys = list(available)
    return None if not keys else STATS_KEY if STATS_KEY in keys else keys[0]


def verb_of(instruction: str) -> str:
    """The verb an instruction starts with (the first of :data:`VERBS` if none)."""
    return next((v for v in VERBS if instruction.startswith(v + " ")), VERBS[0])


def relabeled_scenes(scene: Scene, rng: np.random.Generator) -> list[Scene]:
    """The scene once per other object, that object the target, named by colour and shape.

    Every scene holds distinct colour/shape pairs, so "the C S" picks one object; in a disambiguation
    scene naming a distractor gives another disambiguation instruction. Objects, texture and images are
    those of ``scene``; only the instruction and the target change.
    """
    out = []
    for index, obj in enumerate(scene.objects):
        if index == scene.target:
            continue
        instruction = f"{VERBS[int(rng.integers(len(VERBS)))]} the {obj.name}"
        if resolve_instruction(scene.objects, instruction) != index:  # pragma: no cover - by construction
            continue
        out.append(dataclasses.replace(scene, target=index, instruction=instruction, anchor=None))
    return out


def scene_regions(scene: Scene, state: State | None = None, view: str = "full") -> dict[str, np.ndarray]:
    """Pixel masks of one view (the wrist view centred on ``state``): ``target`` and ``distractors`` (every
    other object, target pixels excluded); the world has no place target."""
    pixels = object_pixel_masks(scene, view, state)
    target = pixels[scene.target]
    others = np.zeros_like(target)
    for i in scene.distractors:
        others |= pixels[i]
    return {"target": target, "distractors": others & ~target}


class TabletopWorld:
    """The synthetic tabletop: an episode is one scene (a seed of a split) from the gripper's start state."""

    name = "tabletop"
    stats_key = STATS_KEY
    center_crop = False

    def __init__(self, config: WorldConfig = WorldConfig(), max_steps: int | None = None) -> None:
        self.config = config
        self._max_steps = config.max_steps if max_steps is None else int(max_steps)
        self.scene: Scene | None = None
        self.state: State | None = None

    @property
    def max_steps(self) -> int:
        """``config.max_steps`` unless the constructor's ``max_steps`` says otherwise."""
        return self._max_steps

    def statistics_for(self, available: Collection[str]) -> str | None:
        """``tabletop`` if the model has it, else its first statistics (None without any)."""
        return statistics_key(available)

    def process_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """The world takes a model's actions as they are."""
        return chunk

    def episode(self, split: str, seed: int) -> Episode:
        """The episode of one scene."""
        scene = sample_scene(seed, self.config)
        return Episode(self.name, (split, int(seed)), scene.instruction,
                       {"split": split, "scene": int(seed), "kind": scene.kind}, spec=scene)

    def episodes(self, split: str = "test", count: int = 200, start: int = 0, **unknown: Any) -> list[Episode]:
        """``count`` scenes of ``split`` from ``start`` seeds into it (:func:`split_seeds`)."""
        if unknown:
            raise InputError(f"selection: got {sorted(unknown)}, expected split, count, start")
        return [self.episode(split, seed) for seed in split_seeds(split, count, start)]

    def _scene(self, episode: Episode) -> Scene:
        if episode.world != self.name or not isinstance(episode.spec, Scene):
            raise InputError(f"episode: got an episode of {episode.world!r}, expected one of {self.name!r}")
        return episode.spec

    def reset(self, episode: Episode, *, regions: bool = True) -> Observation:
        self.scene = self._scene(episode)
        self.state = initial_state(self.scene)
        observation = render(self.scene, self.state)
        if regions:
            observation.regions = [scene_regions(self.scene, self.state, view) for view in VIEWS]
        return observation

    def step(self, action: Sequence[float] | np.ndarray, *, observe: bool = True) -> Step:
        """One action; with ``observe=False`` nothing is rendered (``observation`` is None)."""
        if self.scene is None or self.state is None:
            raise InputError("step: got no running episode, expected reset(episode) first")
        self.state = step(self.scene, self.state, check_action(action))
        done = self.state.done or self.state.steps >= self.max_steps
        observation = render(self.scene, self.state) if observe else None
        return Step(observation, done, bool(self.state.holding))

    def counterfactual(self, episode: Episode, variant: str, *, seed: int = 0) -> Episode:
        """``target_swap``: another object of the scene (drawn with ``seed``) is the target, named by colour and
        shape with the episode's verb; ``other_instruction``: the instruction of another scene of the split
        (drawn with ``seed``; success is still this scene's target). The episode's key stays; the variant and
        the donor (``target_from`` / ``instruction_from``) are in its columns."""
        scene = self._scene(episode)
        check_variant(variant)
        rng = np.random.default_rng([int(seed), int(scene.seed)])
        if variant == "target_swap":
            other = int(rng.permutation(scene.distractors)[0])
            obj = scene.objects[other]
            changed = dataclasses.replace(scene, target=other, anchor=None,
                                          instruction=f"{verb_of(scene.instruction)} the {obj.name}")
            columns = {**episode.columns, "target_from": int(scene.target)}
        else:
            split = episode.key[0]
            offset = int(scene.seed) - SPLITS[split].start
            while (donor_offset := int(rng.integers(SPLIT_SIZE))) == offset:  # pragma: no cover - 1e-6 chance
                continue
            donor = self.episode(split, SPLITS[split].start + donor_offset)
            changed = dataclasses.replace(scene, instruction=donor.instruction)
            columns = {**episode.columns, "instruction_from": donor.key[1]}
        return Episode(self.name, episode.key, changed.instruction, columns, variant, changed)

    def close(self) -> None:
        self.scene = self.state = None
