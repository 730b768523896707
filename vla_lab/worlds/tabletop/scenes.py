"""A small synthetic tabletop world with known ground truth, for training and probing tiny VLA models.

The table is the square ``[-1, 1]²`` seen from above (``+x`` right, ``+y`` up = image row 0). It holds 3-4
flat objects of distinct colour/shape pairs and a parallel-jaw gripper. An instruction names one object
(the target); the task is to move the gripper over it and close. Observations follow LIBERO: a third-person
(top-down) image, a wrist image centred on the gripper, an 8-d proprio vector and the instruction; actions
are chunks of shape ``(8, 7)`` (dx, dy, dz, droll, dpitch, dyaw, gripper; gripper -1 = open, +1 = close).

Instruction kinds (``Scene.kind``), drawn with :attr:`WorldConfig.kind_proportions` (50/25/25 by default):

* ``attribute``: "pick up the blue square"; every object has its own colour, so colour alone suffices.
* ``disambiguation``: "grasp the red circle" in a scene that also holds a red non-circle and a non-red
  circle, so that neither colour nor shape alone identifies the target.
* ``relation``: "pick up the leftmost circle" (among at least two circles) or "pick up the object above the
  green square" (exactly one object lies above the anchor). The referent is separated from every other
  candidate by at least :attr:`WorldConfig.relation_margin` along the relation's axis.

Dynamics: each step moves the gripper by ``clip(action[:2], -1, 1) * max_step`` (0.1); ``action[6] > 0``
is a grasp attempt. Within ``grasp_radius`` (0.12, inside an object's footprint) of the target's centre it
grasps the target (success); within it of another object it grasps the wrong object (failure, the episode
ends); elsewhere it closes on nothing, the gripper opens again and the episode goes on (a "miss").
Episodes last at most ``max_steps`` (48); the expert needs at most about 18.

Seeds of disjoint splits (see :data:`SPLITS` and :func:`split_seeds`): train ``[0, 1e6)``, test
``[1e6, 2e6)``, validation ``[2e6, 3e6)``. A seed determines a scene (:func:`sample_scene`) and, for
training, a state and its expert label (:func:`sample_training_example`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_lab.errors import ConfigError, InputError

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "green": (40, 165, 70),
    "blue": (45, 90, 225),
    "yellow": (240, 210, 35),
    "purple": (150, 65, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
KINDS: tuple[str, ...] = ("attribute", "disambiguation", "relation")
VERBS: tuple[str, ...] = ("pick up", "grasp")
# word -> (axis, sign): axis 0 = x (right), 1 = y (up).
SUPERLATIVES: dict[str, tuple[int, int]] = {
    "leftmost": (0, -1),
    "rightmost": (0, 1),
    "topmost": (1, 1),
    "bottommost": (1, -1),
}
RELATIONS: dict[str, tuple[int, int]] = {
    "left of": (0, -1),
    "right of": (0, 1),
    "above": (1, 1),
    "below": (1, -1),
}
OBJECT_NOUN = "object"

VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {w for v in VERBS for w in v.split()}
        | {"the", OBJECT_NOUN}
        | set(COLORS)
        | set(SHAPES)
        | set(SUPERLATIVES)
        | {w for r in RELATIONS for w in r.split()}
    )
)
"""Every word an instruction can use (lowercase, no punctuation)."""

TABLE_RGB = np.array([176, 158, 134], dtype=np.float32)
OUTSIDE_RGB = (0, 0, 0)
GRIPPER_RGB = (250, 250, 250)

# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

SPLIT_SIZE = 1_000_000
SPLITS: dict[str, range] = {
    "train": range(0, SPLIT_SIZE),
    "test": range(SPLIT_SIZE, 2 * SPLIT_SIZE),
    "validation": range(2 * SPLIT_SIZE, 3 * SPLIT_SIZE),
}
"""Disjoint seed ranges. Train on ``train`` seeds, select checkpoints on ``validation``, report ``test``."""


def split_seeds(split: str, count: int, start: int = 0) -> range:
    """``count`` consecutive seeds of a split, beginning ``start`` seeds into it."""
    if split not in SPLITS:
        raise InputError(f"split: got {split!r}, expected one of {sorted(SPLITS)}")
    seeds = SPLITS[split]
    if count < 0 or start < 0 or start + count > len(seeds):
        raise InputError(
            f"split_seeds: start={start}, count={count} do not fit the {len(seeds)} seeds of {split}"
        )
    return seeds[start : start + count]


# ---------------------------------------------------------------------------------------------
# Configuration and data types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """Sizes, dynamics and sampling proportions of the world (lengths in table units, the table is 2 wide)."""

    image_size: int = 64
    wrist_zoom: float = 2.0
    min_objects: int = 3
    max_objects: int = 4
    object_radius: float = 0.14
    radius_jitter: float = 0.015
    object_gap: float = 0.15
    relation_margin: float = 0.3
    max_step: float = 0.1
    grasp_radius: float = 0.12
    close_radius: float = 0.06
    min_start_distance: float = 0.3
    max_steps: int = 48
    chunk: int = 8
    kind_proportions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    gripper_height: float = 0.1
    finger_open: float = 0.04
    near_target_fraction: float = 0.25
    action_noise: float = 0.3

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ConfigError(f"image_size: got {self.image_size}, expected at least 8")
        # Disambiguation scenes need 3 objects; 4 is what the table holds with the required gaps.
        if not 3 <= self.min_objects <= self.max_objects <= 4:
            raise ConfigError(
                f"min_objects/max_objects: got {self.min_objects}/{self.max_objects}, "
                "expected 3 <= min <= max <= 4"
            )
        if len(self.kind_proportions) != 3 or abs(sum(self.kind_proportions) - 1) > 1e-6:
            raise ConfigError(
                f"kind_proportions: got {self.kind_proportions}, expected 3 numbers summing to 1"
            )
        if not 0 < self.close_radius <= self.grasp_radius:
            raise ConfigError(
                f"close_radius: got {self.close_radius}, expected in (0, grasp_radius={self.grasp_radius}]"
            )
        if self.wrist_zoom < 1:
            raise ConfigError(f"wrist_zoom: got {self.wrist_zoom}, expected at least 1")


@dataclass(frozen=True)
class SceneObject:
    """A flat object on the table: ``radius`` is the circle radius; squares and triangles are scaled alike."""

    color: str
    shape: str
    x: float
    y: float
    radius: float

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def extent(self) -> float:
        """Radius of a disc around the centre that contains the whole shape."""
        return _TRIANGLE_SCALE * self.radius

    def contains(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Which points (broadcast ``xs`` against ``ys``) lie inside the shape."""
        px, py = xs - self.x, ys - self.y
        r = self.radius
        if self.shape == "circle":
            return px * px + py * py <= r * r
        if self.shape == "square":
            h = _SQUARE_SCALE * r
            return (np.abs(px) <= h) & (np.abs(py) <= h)
        # Upward equilateral triangle with circumradius R: three half-planes at inradius R / 2.
        big = _TRIANGLE_SCALE * r
        half = 0.5 * big
        s = 0.5 * math.sqrt(3.0)
        return (py >= -half) & (s * px + 0.5 * py <= half) & (-s * px + 0.5 * py <= half)


_SQUARE_SCALE = 0.85
_TRIANGLE_SCALE = 1.35


@dataclass(frozen=True, eq=False)
class _Texture:
    """A smooth table texture: value noise on a coarse grid plus a wood-like grain, in table coordinates."""

    base: np.ndarray
    grid: np.ndarray
    grain: tuple[float, float, float, float]

    def sample(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n = self.grid.shape[0] - 1
        u = (np.clip(xs, -1.0, 1.0) + 1.0) * (0.5 * n)
        v = (np.clip(ys, -1.0, 1.0) + 1.0) * (0.5 * n)
        i = np.minimum(u.astype(np.int64), n - 1)
        j = np.minimum(v.astype(np.int64), n - 1)
        fu, fv = u - i, v - j
        g = self.grid
        bottom = g[j, i] * (1 - fu) + g[j, i + 1] * fu
        top = g[j + 1, i] * (1 - fu) + g[j + 1, i + 1] * fu
        noise = bottom * (1 - fv) + top * fv
        freq, angle, phase, wobble = self.grain
        along = xs * math.cos(angle) + ys * math.sin(angle)
        across = -xs * math.sin(angle) + ys * math.cos(angle)
        grain = np.sin(freq * along + phase + wobble * np.sin(3.1 * across))
        shade = 9.0 * noise + 4.0 * grain
        return self.base + shade[..., None]


@dataclass(eq=False)
class Scene:
    """One episode's layout: objects, which one is the target, the instruction and the gripper's start."""

    seed: int
    objects: tuple[SceneObject, ...]
    target: int
    instruction: str
    kind: str
    gripper_start: tuple[float, float]
    anchor: int | None
    texture: _Texture = field(repr=False)
    config: WorldConfig = field(default_factory=WorldConfig, repr=False)
    _cache: dict[Any, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def target_object(self) -> SceneObject:
        return self.objects[self.target]

    @property
    def distractors(self) -> list[int]:
        return [i for i in range(len(self.objects)) if i != self.target]


@dataclass(frozen=True)
class State:
    """Gripper position, whether it is closed, steps taken, grasps that closed on nothing, and the outcome."""

    x: float
    y: float
    closed: bool = False
    steps: int = 0
    holding: bool = False
    failed: bool = False
    misses: int = 0

    @property
    def done(self) -> bool:
        return self.holding or self.failed

    @property
    def success(self) -> bool:
        return self.holding




def initial_state(scene: Scene) -> State:
    """The open gripper at the scene's start position."""
    return State(*scene.gripper_start)



# ---------------------------------------------------------------------------------------------
# Scene sampling
# ---------------------------------------------------------------------------------------------


def sample_scene(seed: int, config: WorldConfig = WorldConfig()) -> Scene:
    """The scene of ``seed``: same seed, same scene (objects, target, instruction, texture, gripper start)."""
    rng = np.random.default_rng(seed)
    kind = KINDS[int(rng.choice(len(KINDS), p=np.asarray(config.kind_proportions)))]
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    superlative = bool(rng.random() < 0.5)
    for _ in range(1000):
        if kind == "attribute":
            colors = [list(COLORS)[i] for i in rng.choice(len(COLORS), size=n, replace=False)]
            pairs = [(c, SHAPES[int(rng.integers(len(SHAPES)))]) for c in colors]
        elif kind == "disambiguation":
            pairs = _disambiguation_pairs(n, rng)
        else:
            combos = [(c, s) for c in COLORS for s in SHAPES]
            pairs = [combos[i] for i in rng.choice(len(combos), size=n, replace=False)]
        objects = _place_objects(pairs, rng, config)
        if objects is None:
            continue
        if kind == "relation":
            chosen = _choose_relation(objects, superlative, rng, config)
            if chosen is None:
                continue
            phrase, target, anchor = chosen
        else:
            target = 0 if kind == "disambiguation" else int(rng.integers(n))
            phrase, anchor = objects[target].name, None
        if kind == "disambiguation":
            order = rng.permutation(n)
            objects = [objects[i] for i in order]
            target = int(np.flatnonzero(order == 0)[0])
        start = _sample_start(objects[target], rng, config)
        verb = VERBS[int(rng.integers(len(VERBS)))]
        return Scene(
            seed=int(seed),
            objects=tuple(objects),
            target=target,
            instruction=f"{verb} the {phrase}",
            kind=kind,
            gripper_start=start,
            anchor=anchor,
            texture=_sample_texture(rng),
            config=config,
        )
    raise RuntimeError(f"sample_scene: no valid {kind} scene found for seed {seed}")  # pragma: no cover


def _disambiguation_pairs(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Target first, then a same-colour and a same-shape distractor, then (for 4 objects) any other pair."""
    colors = list(COLORS)
    c = colors[int(rng.integers(len(colors)))]
    s = SHAPES[int(rng.integers(len(SHAPES)))]
    other_shapes = [x for x in SHAPES if x != s]
    other_colors = [x for x in colors if x != c]
    pairs = [
        (c, s),
        (c, other_shapes[int(rng.integers(len(other_shapes)))]),
        (other_colors[int(rng.integers(len(other_colors)))], s),
    ]
    rest = [(cc, ss) for cc in colors for ss in SHAPES if (cc, ss) not in pairs]
    pairs += [rest[i] for i in rng.choice(len(rest), size=n - 3, replace=False)]
    return pairs


def _place_objects(
    pairs: Sequence[tuple[str, str]], rng: np.random.Generator, config: WorldConfig
) -> list[SceneObject] | None:
    objects: list[SceneObject] = []
    for color, shape in pairs:
        radius = config.object_radius + config.radius_jitter * float(rng.uniform(-1, 1))
        limit = 0.95 - _TRIANGLE_SCALE * radius
        for _ in range(200):
            x, y = (float(v) for v in rng.uniform(-limit, limit, size=2))
            if all(
                math.hypot(x - o.x, y - o.y) >= _TRIANGLE_SCALE * (radius + o.radius) + config.object_gap
                for o in objects
            ):
                objects.append(SceneObject(color, shape, x, y, radius))
                break
        else:
            return None
    return objects


def _choose_relation(
    objects: Sequence[SceneObject], superlative: bool, rng: np.random.Generator, config: WorldConfig
) -> tuple[str, int, int | None] | None:
    """A superlative ("leftmost circle") or relative ("object above the red square") phrase whose referent
    is unique with margin, as ``(phrase, target, anchor)``; None if the layout has none."""
    margin = config.relation_margin
    coords = np.array([[o.x, o.y] for o in objects])
    extremes: list[tuple[str, int, int | None]] = []
    for noun in (*SHAPES, OBJECT_NOUN):
        group = [i for i, o in enumerate(objects) if noun in (o.shape, OBJECT_NOUN)]
        if len(group) < 2:
            continue
        for word, (axis, sign) in SUPERLATIVES.items():
            values = sorted(((sign * coords[i, axis], i) for i in group), reverse=True)
            if values[0][0] - values[1][0] >= margin:
                extremes.append((f"{word} {noun}", values[0][1], None))
    relative: list[tuple[str, int, int | None]] = []
    for a, anchor in enumerate(objects):
        for words, (axis, sign) in RELATIONS.items():
            offsets = {i: sign * (coords[i, axis] - coords[a, axis]) for i in range(len(objects)) if i != a}
            beyond = [i for i, d in offsets.items() if d >= margin]
            clear = all(d >= margin or d <= -margin for d in offsets.values())
            if len(beyond) == 1 and clear:
                relative.append((f"{OBJECT_NOUN} {words} the {anchor.name}", beyond[0], a))
    options = extremes if superlative else relative
    if not options:
        return None
    return options[int(rng.integers(len(options)))]


def _sample_start(target: SceneObject, rng: np.random.Generator, config: WorldConfig) -> tuple[float, float]:
    while True:
        x, y = (float(v) for v in rng.uniform(-0.9, 0.9, size=2))
        if math.hypot(x - target.x, y - target.y) >= config.min_start_distance:
            return x, y


def _sample_texture(rng: np.random.Generator) -> _Texture:
    base = TABLE_RGB + rng.uniform(-10, 10, size=3).astype(np.float32)
    grid = rng.uniform(-1, 1, size=(17, 17)).astype(np.float32)
    grain = (
        float(rng.uniform(14, 30)),
        float(rng.uniform(0, math.pi)),
        float(rng.uniform(0, 2 * math.pi)),
        float(rng.uniform(0.5, 2.0)),
    )
    return _Texture(base=base, grid=grid, grain=grain)


# ---------------------------------------------------------------------------------------------
# Reference resolver
# ---------------------------------------------------------------------------------------------


def resolve_instruction(objects: Sequence[SceneObject] | Scene, instruction: str) -> int:
    """Index of the one object that ``instruction`` refers to, from the objects alone (no target info).

    Semantics: "the C S" is the object of colour C and shape S; "the leftmost S" (or ``object``) is the one
    with the smallest x among those of shape S; "the object left of the C S" is the one object other than
    the anchor with a smaller x (above/below compare y, +y up). Raises :class:`InputError` when the
    instruction does not parse or does not pick exactly one object.
    """
    if isinstance(objects, Scene):
        objects = objects.objects
    words = instruction.split()
    for verb in VERBS:
        n = len(verb.split())
        if words[:n] == verb.split():
            words = words[n:]
            break
    else:
        raise InputError(f"instruction: {instruction!r} does not start with one of {VERBS}")
    if not words or words[0] != "the":
        raise InputError(f"instruction: {instruction!r}, expected 'the' after the verb")
    words = words[1:]

    def unique(matches: list[int], what: str) -> int:
        if len(matches) != 1:
            raise InputError(
                f"instruction: {instruction!r}: {len(matches)} objects match {what!r}, expected 1"
            )
        return matches[0]

    if len(words) == 2 and words[0] in COLORS and words[1] in SHAPES:
        return unique(
            [i for i, o in enumerate(objects) if (o.color, o.shape) == tuple(words)], " ".join(words)
        )
    if len(words) == 2 and words[0] in SUPERLATIVES and words[1] in (*SHAPES, OBJECT_NOUN):
        axis, sign = SUPERLATIVES[words[0]]
        group = [i for i, o in enumerate(objects) if words[1] in (o.shape, OBJECT_NOUN)]
        if not group:
            raise InputError(f"instruction: {instruction!r}: no {words[1]} in the scene")
        values = [sign * (objects[i].x, objects[i].y)[axis] for i in group]
        best = max(values)
        return unique([i for i, v in zip(group, values) if v == best], " ".join(words))
    if len(words) >= 4 and words[0] == OBJECT_NOUN:
        rest = " ".join(words[1:])
        for relation, (axis, sign) in RELATIONS.items():
            if rest.startswith(relation + " the "):
                anchor_words = rest[len(relation) + 5 :].split()
                if len(anchor_words) == 2 and anchor_words[0] in COLORS and anchor_words[1] in SHAPES:
                    name = tuple(anchor_words)
                    a = unique(
                        [i for i, o in enumerate(objects) if (o.color, o.shape) == name], " ".join(name)
                    )
                    pos = [(o.x, o.y)[axis] for o in objects]
                    beyond = [i for i in range(len(objects)) if i != a and sign * (pos[i] - pos[a]) > 0]
                    return unique(beyond, " ".join(words))
    raise InputError(f"instruction: {instruction!r} does not parse with the world's grammar")
