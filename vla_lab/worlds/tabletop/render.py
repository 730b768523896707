"""Rendering the world: a top-down third-person view and a wrist view centred on the gripper, the proprio,
and the ground-truth masks of which pixels and patches show each object."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_lab.errors import InputError
from vla_lab.worlds.base import Observation
from vla_lab.worlds.tabletop.scenes import GRIPPER_RGB, OUTSIDE_RGB, Scene, State, WorldConfig, initial_state

#: The views of an observation, in model order (third-person, then wrist).
VIEWS = ("full", "wrist")


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
    return Observation(images=[full, wrist], instruction=scene.instruction, proprio=proprio(state, config))


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
        return np.asarray(mask.reshape(rows, size // rows, cols, size // cols).any(axis=(1, 3)))

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
