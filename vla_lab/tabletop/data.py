"""Training data from the tabletop world: examples held in memory and turned into model batches.

Images are rendered at the model's own image size (:func:`vla_lab.tabletop.models.world_config`), so a
variant with another resolution trains on what it is evaluated on; :func:`patch_labels` gives what each
patch of its grid shows (the ground truth of the trainer's patch-description loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.model import meta_model
from vla_lab.processing import ImageProcessor, QwenTokenizer
from vla_lab.processing.images import pixel_values
from vla_lab.processing.normalization import normalize_actions, normalize_proprio
from vla_lab.processing.processor import right_pad
from vla_lab.tabletop.models import check_config, stats_key, world_config, world_processor
from vla_lab.worlds import tabletop as world

#: A patch shows an object when at least this many of its pixels do (in :func:`patch_labels`).
MIN_LABEL_PIXELS = 6


def _patch_grid(config: VLAConfig) -> tuple[int, int]:
    return meta_model(config).vision_backbone.patch_grid


def patch_labels(
    scene: world.Scene, state: world.State, grid: tuple[int, int], num_images: int = 2
) -> np.ndarray:
    """What each patch shows: (num_images * rows * cols, 2) int64 colour and shape classes.

    Class 0 is "no object"; otherwise 1 + the index in ``world.COLORS`` / ``world.SHAPES`` of the object
    covering most of the patch's pixels (at least :data:`MIN_LABEL_PIXELS`). Views in model order
    (third-person, wrist), patches row-major, as the projector emits them.
    """
    rows, cols = grid
    size = scene.config.image_size
    if rows < 1 or cols < 1 or size % rows or size % cols:
        raise InputError(f"patch grid: got {tuple(grid)}, expected (rows, cols) dividing the rendered size {size}")
    colors, shapes = list(world.COLORS), list(world.SHAPES)
    color_ids = np.array([colors.index(o.color) + 1 for o in scene.objects])
    shape_ids = np.array([shapes.index(o.shape) + 1 for o in scene.objects])
    out = []
    for view in world.VIEWS[:num_images]:
        pixels = world.object_pixel_masks(scene, view, state)
        cover = pixels.reshape(len(pixels), rows, size // rows, cols, size // cols).sum(axis=(2, 4))
        best = cover.argmax(axis=0)
        shown = cover.max(axis=0) >= MIN_LABEL_PIXELS
        classes = [np.where(shown, color_ids[best], 0), np.where(shown, shape_ids[best], 0)]
        out.append(np.stack(classes, -1).reshape(-1, 2))
    return np.concatenate(out).astype(np.int64)


@dataclass
class TabletopData:
    """World examples in memory (uint8 images, token ids, normalised proprio and actions) -> batches.

    Build with :meth:`generate`. ``batch(indices)`` returns ``pixel_values`` (B, C, H, W) float32,
    right-padded ``input_ids`` / ``attention_mask`` (B, L) int64, ``proprio`` (B, 8) float32 in [-1, 1]
    and ``actions`` (B, chunk, 7) float32 normalised to [-1, 1] (the gripper passes through as +-1).
    ``images`` holds each rendered observation once; ``image_index`` maps examples to them.
    """

    images: np.ndarray
    image_index: np.ndarray
    token_ids: list[list[int]]
    proprio: np.ndarray
    actions: np.ndarray
    kinds: list[str]
    seeds: list[int]
    image_processor: ImageProcessor
    pad_token_id: int
    patch_labels: np.ndarray | None = None
    targets: np.ndarray | None = None

    @classmethod
    def generate(
        cls,
        config: VLAConfig,
        seeds: Sequence[int],
        tokenizer: QwenTokenizer | None = None,
        progress: bool = False,
        relabel: bool = False,
        labels: bool = False,
    ) -> TabletopData:
        """``world.sample_training_example`` of every seed, prepared for ``config``.

        With ``relabel`` every example also appears once per other object of its scene, the same
        observation with that object named as the target and the expert chunk towards it
        (:func:`vla_lab.worlds.tabletop.relabeled_scenes`); such examples have kind
        ``"<scene kind>/relabel"``. With ``labels`` the ground truth of the auxiliary losses is kept too:
        :func:`patch_labels` per observation and the target's table position per example.
        """
        check_config(config)
        tokenizer = tokenizer or world.build_world_tokenizer()
        processor = world_processor(config, tokenizer)
        stats = (config.norm_stats or {})[stats_key(config)]
        normalization = config.robot.normalization
        rendering = world_config(config)
        seeds = [int(s) for s in seeds]
        iterator: Any = seeds
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(seeds, desc="examples", unit="ex", leave=False)
        images: list[np.ndarray] = []
        image_index: list[int] = []
        proprio: list[np.ndarray] = []
        actions: list[np.ndarray] = []
        kinds: list[str] = []
        example_seeds: list[int] = []
        grid = _patch_grid(config)
        observation_labels: list[np.ndarray] = []
        targets: list[tuple[float, float]] = []
        token_ids: list[list[int]] = []
        prompts: dict[str, list[int]] = {}

        def add(instruction: str, chunk: np.ndarray, kind: str, seed: int, state: np.ndarray,
                target: world.SceneObject) -> None:
            if instruction not in prompts:
                prompts[instruction] = processor.encode(instruction)
            token_ids.append(prompts[instruction])
            image_index.append(len(images) - 1)
            proprio.append(state)
            actions.append(chunk)
            kinds.append(kind)
            example_seeds.append(seed)
            targets.append((target.x, target.y))

        for seed in iterator:
            ex = world.sample_training_example(seed, rendering)
            images.append(np.stack(ex.images[: config.num_images]))
            if labels:
                observation_labels.append(patch_labels(ex.scene, ex.state, grid, config.num_images))
            add(ex.instruction, ex.actions, ex.scene.kind, seed, ex.proprio, ex.scene.target_object)
            if relabel:
                rng = np.random.default_rng((seed, 2))
                for scene in world.relabeled_scenes(ex.scene, rng):
                    chunk = world.expert_chunk(scene, ex.state, config.robot.chunk)
                    add(scene.instruction, chunk, f"{ex.scene.kind}/relabel", seed, ex.proprio, scene.target_object)
        return cls(
            images=np.stack(images),
            image_index=np.asarray(image_index, dtype=np.int64),
            token_ids=token_ids,
            proprio=normalize_proprio(np.stack(proprio), stats["proprio"], normalization).astype(np.float32),
            actions=normalize_actions(np.stack(actions), stats["action"], normalization).astype(np.float32),
            kinds=kinds,
            seeds=example_seeds,
            image_processor=processor.image_processor,
            pad_token_id=int(tokenizer.pad_token_id or 0),
            patch_labels=np.stack(observation_labels) if labels else None,
            targets=np.asarray(targets, dtype=np.float32) if labels else None,
        )

    def __len__(self) -> int:
        return len(self.seeds)

    def batch(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor, labels: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs and ``actions`` of the examples at ``indices``; with ``labels`` also
        ``patch_labels`` (B, patches, 2) and ``targets`` (B, 2) (data generated with ``labels=True``).
        ``generator`` is unused: the world's examples are not augmented."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        ids, mask = right_pad([self.token_ids[i] for i in idx], self.pad_token_id)
        out = {
            "pixel_values": pixel_values(self.images[self.image_index[idx]], self.image_processor),
            "input_ids": ids,
            "attention_mask": mask,
            "proprio": torch.from_numpy(self.proprio[idx]),
            "actions": torch.from_numpy(self.actions[idx]),
        }
        if labels:
            if self.patch_labels is None or self.targets is None:
                raise InputError("labels: this data was generated without labels; expected generate(labels=True)")
            out["patch_labels"] = torch.from_numpy(self.patch_labels[self.image_index[idx]])
            out["targets"] = torch.from_numpy(self.targets[idx])
        return out
