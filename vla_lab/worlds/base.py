"""What every world is: episodes, observations with named pixel regions, and an environment to step.

A world is model-free: it knows its scenes, renders what a policy sees and applies actions, and says
which pixels show which object. Models act in it from above (:mod:`vla_lab.model` never imports a world).

* :class:`Episode` -- one episode of a world: a sortable ``key`` (unique within the world), the
  instruction, the record columns that identify it, and which counterfactual it is (``variant``);
* :class:`Observation` -- the policy's views (in ``VLAConfig.num_images`` order), instruction, 8-d proprio
  and, when asked, pixel masks of :data:`REGIONS` per view;
* :class:`World` -- the protocol: :meth:`~World.episodes` of a selection, :meth:`~World.reset` to an
  episode, :meth:`~World.step` with a 7-d action, :meth:`~World.counterfactual` episodes, ``max_steps``
  and the ``stats_key`` of its actions' statistics.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vla_lab.errors import InputError

#: Region names of :attr:`Observation.regions`: the object to pick, the place it goes to (only in worlds
#: whose tasks have one), the other objects of the target's category (only in scenes that have them: LIBERO's
#: other black bowl), every other object, and what is no object (only where a world says: LIBERO's robot, table,
#: walls and floor).
REGIONS = ("target", "place", "same_category", "distractors", "background")
#: Counterfactual episodes every world offers: another episode's instruction in this episode's scene;
#: another object of this scene as the target (instruction naming it).
COUNTERFACTUALS = ("other_instruction", "target_swap")
#: The episode as given (no counterfactual).
ORIGINAL = "original"


@dataclass(frozen=True)
class Episode:
    """One episode of a world.

    ``key`` sorts episodes and identifies them within their world (tabletop: ``(split, seed)``; LIBERO:
    ``(suite, task, init_state)``); ``columns`` are the record columns that say which episode it is;
    ``variant`` is :data:`ORIGINAL` or one of :data:`COUNTERFACTUALS`; ``spec`` is the world's own
    description of the scene (a tabletop :class:`~vla_lab.worlds.tabletop.Scene`, a LIBERO task id).
    """

    world: str
    key: tuple[Any, ...]
    instruction: str
    columns: Mapping[str, Any]
    variant: str = ORIGINAL
    spec: Any = field(default=None, compare=False, repr=False)

    def record(self) -> dict[str, Any]:
        """The columns of a record of this episode: its identifying columns, instruction and variant."""
        return {**self.columns, "instruction": self.instruction, "variant": self.variant}


@dataclass
class Observation:
    """What a policy sees: ``images`` (uint8 (H, W, 3), primary view first), the instruction, the 8-d
    ``proprio``; when asked for, ``regions``: per image (in ``images`` order; a world may stop early when the
    later views have none) bool (H, W) masks of the :data:`REGIONS` that image shows."""

    images: list[np.ndarray]
    instruction: str
    proprio: np.ndarray
    regions: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def full_image(self) -> np.ndarray:
        """The third-person view."""
        return self.images[0]

    @property
    def wrist_image(self) -> np.ndarray:
        """The wrist camera's view."""
        return self.images[1]


@dataclass
class Step:
    """What :meth:`World.step` returns: the observation after the action (None when not asked for), whether
    the episode ended (success, failure or its step limit) and whether it succeeded."""

    observation: Observation | None
    done: bool
    success: bool


@runtime_checkable
class World(Protocol):
    """An environment of one world; holds at most one running episode (build one per lockstep slot)."""

    name: str
    #: Key of the action / proprio statistics a model trained on this world normalises with.
    stats_key: str
    #: Whether a policy's images are centre-cropped before the model (the world's evaluation protocol).
    center_crop: bool

    @property
    def max_steps(self) -> int:
        """Actions an episode may take (after any settle steps)."""
        ...

    def episodes(self, **selection: Any) -> list[Episode]:
        """The sorted episodes of a selection (keywords of the world's own kind)."""
        ...

    def reset(self, episode: Episode, *, regions: bool = True) -> Observation:
        """Start ``episode``; its first observation (with :attr:`Observation.regions` when ``regions``)."""
        ...

    def step(self, action: Sequence[float] | np.ndarray, *, observe: bool = True) -> Step:
        """Apply one 7-d action in the world's units (``observe=False``: no observation is made)."""
        ...

    def counterfactual(self, episode: Episode, variant: str, *, seed: int = 0) -> Episode:
        """``episode`` changed as :data:`COUNTERFACTUALS` names (``seed`` picks among the choices)."""
        ...

    def statistics_for(self, available: Collection[str]) -> str | None:
        """Which of a model's statistics (``norm_stats`` keys) to un-normalise with in this world (None: none)."""
        ...

    def process_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """A model's (chunk, 7) actions -> the world's action units (its evaluation protocol's post-processing)."""
        ...

    def close(self) -> None:
        """Release what the world holds (simulators)."""
        ...


def check_variant(variant: str) -> str:
    """``variant`` if it is a counterfactual a world offers, else a one-line error."""
    if variant not in COUNTERFACTUALS:
        raise InputError(f"variant: got {variant!r}, expected one of {list(COUNTERFACTUALS)}")
    return variant


def check_action(action: Sequence[float] | np.ndarray) -> np.ndarray:
    """A 7-d finite action as float64, else a one-line error."""
    values = np.asarray(action, dtype=np.float64)
    if values.shape != (7,) or not np.isfinite(values).all():
        raise InputError(f"action: got shape {values.shape} (finite: {bool(np.isfinite(values).all())}), "
                         "expected 7 finite numbers")
    return values
