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
from collections.abc import Callable, Iterable, Sequence
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


@dataclass
class Observation:
    """What a policy sees. ``state`` is the 8-d proprio ``[x, y, z, 0, 0, 0, finger, -finger]``."""

    full_image: np.ndarray
    wrist_image: np.ndarray
    state: np.ndarray
    instruction: str

    @property
    def images(self) -> list[np.ndarray]:
        """Third-person image first, then the wrist image (the order of ``VLAConfig.num_images``)."""
        return [self.full_image, self.wrist_image]


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


OUTCOMES = ("success", "wrong_object", "timeout")


@dataclass
class RolloutResult:
    """One closed-loop episode. ``outcome`` is ``success``, ``wrong_object`` or ``timeout``."""

    success: bool
    outcome: str
    steps: int
    queries: int
    positions: np.ndarray
    final_state: State
    frames: list[Observation] = field(default_factory=list, repr=False)


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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def world_to_pixel(
    x: float | np.ndarray,
    y: float | np.ndarray,
    image_size: int = 64,
    center: tuple[float, float] = (0.0, 0.0),
    half_width: float = 1.0,
) -> tuple[Any, Any]:
    """Continuous ``(row, col)`` of table point ``(x, y)`` in a view; ``floor`` gives the pixel index.

    A view shows the square ``center ± half_width`` (the full view: ``(0, 0) ± 1``; the wrist view:
    ``gripper ± 1 / wrist_zoom``). Row 0 is the top (largest y), column 0 the left (smallest x); pixel
    ``(r, c)`` covers ``[r, r + 1) x [c, c + 1)`` and is coloured by what lies under its centre.
    """
    scale = image_size / (2.0 * half_width)
    col = (x - center[0]) * scale + image_size / 2.0
    row = (center[1] - y) * scale + image_size / 2.0
    return row, col


def _view(scene: Scene, view: str, state: State | None) -> tuple[tuple[float, float], float]:
    if view == "full":
        return (0.0, 0.0), 1.0
    if view == "wrist":
        state = state if state is not None else initial_state(scene)
        return (state.x, state.y), 1.0 / scene.config.wrist_zoom
    raise InputError(f"view: got {view!r}, expected 'full' or 'wrist'")


def _pixel_centres(
    size: int, center: tuple[float, float], half_width: float
) -> tuple[np.ndarray, np.ndarray]:
    t = ((np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0) * half_width
    return (center[0] + t)[None, :], (center[1] - t)[:, None]


def _draw_view(scene: Scene, center: tuple[float, float], half_width: float) -> np.ndarray:
    size = scene.config.image_size
    xs, ys = _pixel_centres(size, center, half_width)
    image = scene.texture.sample(xs, ys)
    image = np.clip(image, 0, 255).astype(np.uint8)
    outside = (np.abs(xs) > 1.0) | (np.abs(ys) > 1.0)
    if outside.any():
        image[outside] = OUTSIDE_RGB
    for obj in scene.objects:
        reach = obj.extent + 2 * half_width / size
        if abs(obj.x - center[0]) > half_width + reach or abs(obj.y - center[1]) > half_width + reach:
            continue
        image[obj.contains(xs, ys)] = obj.rgb
    return image


def _gripper_rects(x: float, y: float, closed: bool) -> list[tuple[float, float, float, float]]:
    """The gripper glyph (two jaws joined at the top, open centre) as table-unit boxes (x0, y0, x1, y1)."""
    gap = 0.03 if closed else 0.09
    w, h = 0.03, 0.08
    return [
        (x - gap - w, y - h, x - gap, y + h),
        (x + gap, y - h, x + gap + w, y + h),
        (x - gap - w, y + h, x + gap + w, y + h + w),
    ]


def _gripper_mask(size: int, center: tuple[float, float], half_width: float, state: State) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in _gripper_rects(state.x, state.y, state.closed):
        top, left = world_to_pixel(x0, y1, size, center, half_width)
        bottom, right = world_to_pixel(x1, y0, size, center, half_width)
        r0, c0 = round(top), round(left)
        r1, c1 = max(round(bottom), r0 + 1), max(round(right), c0 + 1)
        mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask


def initial_state(scene: Scene) -> State:
    """The open gripper at the scene's start position."""
    return State(*scene.gripper_start)


def proprio(state: State, config: WorldConfig = WorldConfig()) -> np.ndarray:
    """LIBERO-like 8-d proprio: eef position, axis-angle (zero), two finger positions."""
    finger = 0.0 if state.closed else config.finger_open
    return np.array([state.x, state.y, config.gripper_height, 0, 0, 0, finger, -finger], dtype=np.float32)


def render(scene: Scene, state: State | None = None) -> Observation:
    """Render both views of ``scene`` with the gripper at ``state`` (the start state if omitted)."""
    config = scene.config
    state = state if state is not None else initial_state(scene)
    size = config.image_size
    key = ("full", size)
    if key not in scene._cache:
        scene._cache[key] = _draw_view(scene, (0.0, 0.0), 1.0)
    full = scene._cache[key].copy()
    full[_gripper_mask(size, (0.0, 0.0), 1.0, state)] = GRIPPER_RGB
    center, half_width = (state.x, state.y), 1.0 / config.wrist_zoom
    wrist = _draw_view(scene, center, half_width)
    wrist[_gripper_mask(size, center, half_width, state)] = GRIPPER_RGB
    return Observation(
        full_image=full, wrist_image=wrist, state=proprio(state, config), instruction=scene.instruction
    )


# ---------------------------------------------------------------------------------------------
# Ground-truth masks
# ---------------------------------------------------------------------------------------------


def object_pixel_masks(scene: Scene, view: str = "full", state: State | None = None) -> np.ndarray:
    """Boolean ``(num_objects, S, S)``: which pixels of a view show each object (before the gripper)."""
    center, half_width = _view(scene, view, state)
    xs, ys = _pixel_centres(scene.config.image_size, center, half_width)
    return np.stack([obj.contains(xs, ys) for obj in scene.objects])


def object_patch_masks(
    scene: Scene, grid: tuple[int, int], view: str = "full", state: State | None = None
) -> dict[str, np.ndarray]:
    """Which patches of a ``grid`` = (rows, cols) split of a view contain each object.

    Keys: ``target`` (patches with any target pixel), ``distractors`` (patches with any other object's pixel
    and no target pixel), ``anchor`` (the relation's anchor object, all False when there is none),
    ``gripper`` (patches with gripper pixels) and ``object_0``, ``object_1``, ... Boolean arrays of shape
    ``grid``. The wrist view is centred on ``state`` (the start state if omitted).
    """
    size = scene.config.image_size
    rows, cols = (int(v) for v in grid)
    if rows < 1 or cols < 1 or size % rows or size % cols:
        raise InputError(f"grid: got {tuple(grid)}, expected (rows, cols) dividing the image size {size}")
    state = state if state is not None else initial_state(scene)

    def pool(mask: np.ndarray) -> np.ndarray:
        return mask.reshape(rows, size // rows, cols, size // cols).any(axis=(1, 3))

    pixels = object_pixel_masks(scene, view, state)
    per_object = [pool(m) for m in pixels]
    target = per_object[scene.target]
    others = np.zeros_like(target)
    for i in scene.distractors:
        others |= per_object[i]
    center, half_width = _view(scene, view, state)
    masks = {
        "target": target,
        "distractors": others & ~target,
        "anchor": per_object[scene.anchor] if scene.anchor is not None else np.zeros_like(target),
        "gripper": pool(_gripper_mask(size, center, half_width, state)),
    }
    masks.update({f"object_{i}": m for i, m in enumerate(per_object)})
    return masks


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
        p = observation.state
        state = State(float(p[0]), float(p[1]), closed=bool(p[6] < 0.5 * scene.config.finger_open))
        return expert_chunk(scene, state)

    return policy


# ---------------------------------------------------------------------------------------------
# Closed-loop evaluation
# ---------------------------------------------------------------------------------------------

Policy = Callable[[Observation], np.ndarray]


def rollout(
    scene: Scene,
    policy: Policy,
    max_steps: int | None = None,
    execute: int = 8,
    record: bool = False,
) -> RolloutResult:
    """Run ``policy`` closed-loop: execute ``execute`` actions of each chunk, then query again.

    Succeeds when the target is grasped within ``max_steps`` (``config.max_steps`` by default). With
    ``record`` the observations given to the policy are kept in ``frames``.
    """
    max_steps = scene.config.max_steps if max_steps is None else max_steps
    if execute < 1:
        raise InputError(f"execute: got {execute}, expected a positive integer")
    state = initial_state(scene)
    positions = [(state.x, state.y)]
    frames: list[Observation] = []
    queries = 0
    while not state.done and state.steps < max_steps:
        observation = render(scene, state)
        if record:
            frames.append(observation)
        chunk = np.asarray(policy(observation), dtype=np.float64)
        queries += 1
        if chunk.ndim != 2 or chunk.shape[1] != 7 or chunk.shape[0] < 1:
            raise InputError(f"policy output: got shape {chunk.shape}, expected (chunk, 7)")
        for action in chunk[:execute]:
            state = step(scene, state, action)
            positions.append((state.x, state.y))
            if state.done or state.steps >= max_steps:
                break
    outcome = "success" if state.holding else "wrong_object" if state.failed else "timeout"
    return RolloutResult(
        success=state.holding,
        outcome=outcome,
        steps=state.steps,
        queries=queries,
        positions=np.asarray(positions, dtype=np.float32),
        final_state=state,
        frames=frames,
    )


def evaluate(
    policy: Policy | str,
    seeds: Iterable[int],
    config: WorldConfig = WorldConfig(),
    max_steps: int | None = None,
    execute: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Success rate of ``policy`` over the scenes of ``seeds`` (``policy="expert"`` runs the expert).

    A policy with a ``reset()`` method is reset before each episode. Returns ``success_rate``,
    ``num_episodes``, ``outcomes`` (counts), ``by_kind`` ({kind: {success_rate, num_episodes}}) and
    ``episodes`` (seed, kind, instruction, success, outcome, steps, queries per episode).
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
            if hasattr(policy, "reset"):
                policy.reset()
        result = rollout(scene, episode_policy, max_steps=max_steps, execute=execute)
        episodes.append(
            {
                "seed": int(seed),
                "kind": scene.kind,
                "instruction": scene.instruction,
                "success": bool(result.success),
                "outcome": result.outcome,
                "steps": int(result.steps),
                "queries": int(result.queries),
                "misses": int(result.final_state.misses),
            }
        )
    by_kind = {}
    for kind in KINDS:
        rows = [e for e in episodes if e["kind"] == kind]
        if rows:
            by_kind[kind] = {
                "success_rate": sum(e["success"] for e in rows) / len(rows),
                "num_episodes": len(rows),
            }
    outcomes = {
        name: sum(e["outcome"] == name for e in episodes) for name in OUTCOMES
    }
    return {
        "success_rate": sum(e["success"] for e in episodes) / len(episodes) if episodes else 0.0,
        "num_episodes": len(episodes),
        "outcomes": outcomes,
        "by_kind": by_kind,
        "episodes": episodes,
    }


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
        state = State(*(float(v) for v in rng.uniform(-0.95, 0.95, size=2)))
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
        proprio=observation.state,
        actions=actions,
        scene=scene,
        state=state,
    )


def _stats(values: np.ndarray, mask: list[bool]) -> dict[str, list]:
    return {
        "mean": [float(v) for v in values.mean(axis=0)],
        "std": [float(v) for v in values.std(axis=0)],
        "max": [float(v) for v in values.max(axis=0)],
        "min": [float(v) for v in values.min(axis=0)],
        "q01": [float(v) for v in np.quantile(values, 0.01, axis=0)],
        "q99": [float(v) for v in np.quantile(values, 0.99, axis=0)],
        "mask": mask,
    }


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
            "action": _stats(action_rows, [True] * 6 + [False]),
            "proprio": _stats(proprio_rows, [True] * proprio_rows.shape[1]),
            "num_transitions": int(action_rows.shape[0]),
            "num_trajectories": int(num_examples),
        }
    }
