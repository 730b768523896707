"""Training data from vla-lab's LIBERO demonstrations (:mod:`vla_lab.libero.demos`), as model batches.

One example per demonstration step: both cameras, the 8-d state (end-effector position, axis-angle, finger
positions) as proprio, and the action chunk from that step on (past the end, the last action repeats).
Actions are converted as upstream's LIBERO datasets are (the gripper from LIBERO's -1 open / +1 close to
1 open / 0 close) and normalised with statistics of the training demonstrations (``bounds_q99``, the
gripper passes through), stored under the suite's name so that :class:`vla_lab.policy.Policy` finds
them.

Images go through the evaluation's steps: rotated 180 degrees, the JPEG round trip and Lanczos-3 resize
to 224 (:func:`~vla_lab.worlds.libero.observation.resize_image_for_policy`, exactly as
:func:`~vla_lab.worlds.libero.prepare_observation`), then resized (PIL bicubic, antialiased) to :func:`cache_size`,
where a crop of :data:`CROP_SCALE` of the area is the model's image size (``policy_frames_<size>.npy`` next
to the demonstrations, built once). A batch takes such a square box of each frame at a random place
(upstream's random-resized-crop augmentation) or in the centre (``augment=False``; the evaluation's centre
crop) and resamples it to the model's size (``torchvision.ops.roi_align``, bilinear, 2x2 samples per pixel).
The evaluation instead crops the 224-px image and resizes that to the model's size; the two routes differ
only by resampling (a test bounds the difference).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from vla_lab.config import VLAConfig
from vla_lab.errors import InputError
from vla_lab.libero.demo_checks import check_demo, check_manifest, check_steps, check_task_counts, num_demos
from vla_lab.libero.demos import _require_h5py
from vla_lab.processing import ImageProcessor, QwenTokenizer
from vla_lab.processing.images import CENTER_CROP_SCALE, pixel_values
from vla_lab.processing.normalization import array_statistics, normalize_actions, normalize_proprio
from vla_lab.processing.processor import right_pad
from vla_lab.worlds.libero.observation import resize_image_for_policy

#: Area fraction of the crop (upstream's random-resized-crop scale and the evaluation's centre crop).
CROP_SCALE = CENTER_CROP_SCALE
CAMERAS = ("agentview_rgb", "eye_in_hand_rgb")
#: Size of the images the policy is given (``prepare_observation``).
POLICY_SIZE = 224


def libero_gripper(actions: np.ndarray) -> np.ndarray:
    """LIBERO actions (gripper -1 open, +1 close) in upstream's training convention (1 open, 0 close)."""
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., -1] = 1.0 - np.clip(out[..., -1], 0.0, 1.0)
    return out


def policy_frame(image: np.ndarray, size: int) -> np.ndarray:
    """A stored (upside-down) camera image as the policy sees it (rotated, JPEG, Lanczos to 224), resized
    to ``size`` (PIL bicubic, antialiased)."""
    prepared = resize_image_for_policy(np.ascontiguousarray(image[::-1, ::-1]), POLICY_SIZE)
    if size == POLICY_SIZE:
        return prepared
    return np.asarray(PIL.Image.fromarray(prepared).resize((size, size), PIL.Image.Resampling.BICUBIC))


def cache_size(image_size: int) -> int:
    """Side of the cached frames: a box of :data:`CROP_SCALE` of their area is ``image_size`` pixels wide."""
    return math.ceil(image_size / math.sqrt(CROP_SCALE))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The ``demos.json`` of a ``vla-lab libero demos`` directory, checked (:func:`.demo_checks.check_manifest`)."""
    return check_manifest(directory)


def _open(h5py: Any, path: Path, task: str) -> Any:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"demos: got task {task}'s file {str(path)!r}, which h5py cannot read ({reason}), "
                         "expected LIBERO's HDF5 layout") from None


@dataclass
class Demonstration:
    task: int
    instruction: str
    init_state: int
    actions: np.ndarray  # (T, 7) LIBERO units
    proprio: np.ndarray  # (T, 8)
    target: np.ndarray  # (T, 3)


def read_demonstrations(directory: str | Path, init_states: Sequence[int] | None = None) -> list[Demonstration]:
    """Every demonstration (without images) of the directory, by task then init state; ``init_states``
    keeps those whose suite init state is listed. Every demonstration is checked first
    (:mod:`.demo_checks`: shapes, dtypes, finite numbers, non-empty, the manifest's total), so a trainer learns
    of bad data before it claims its run directory."""
    h5py = _require_h5py()
    manifest = read_manifest(directory)
    keep = None if init_states is None else {int(i) for i in init_states}
    out, steps = [], 0
    for task, row in sorted(manifest["tasks"].items(), key=lambda kv: int(kv[0])):
        with _open(h5py, Path(directory) / row["file"], task) as f:
            if "data" not in f:
                raise InputError(f"demos: got task {task}'s file {row['file']!r} without a data group, expected "
                                 "LIBERO's HDF5 layout")
            count, task_steps = num_demos(f["data"], row["file"]), 0
            for k in range(count):
                demo = f[f"data/demo_{k}"]
                arrays = check_demo(demo, f"{row['file']} demo_{k}")
                task_steps += len(arrays["actions"])
                index = int(demo.attrs["init_state_index"])
                if keep is not None and index not in keep:
                    continue
                proprio = np.concatenate([arrays["obs/ee_states"], arrays["obs/gripper_states"]], axis=1)
                out.append(Demonstration(int(task), row["instruction"], index, arrays["actions"], proprio,
                                         arrays["target_pos"]))
        check_task_counts(row, task, count, task_steps)
        steps += task_steps
    check_steps(steps, manifest)
    return out


def demo_statistics(demos: Sequence[Demonstration], name: str) -> dict[str, Any]:
    """``dataset_statistics.json`` of the demonstrations under ``name``: actions (upstream's gripper
    convention; the gripper is not normalised) and proprio, over every step."""
    actions = libero_gripper(np.concatenate([d.actions for d in demos]))
    proprio = np.concatenate([d.proprio for d in demos]).astype(np.float64)
    return {name: {"action": array_statistics(actions, [True] * 6 + [False]),
                   "proprio": array_statistics(proprio, [True] * proprio.shape[1]),
                   "num_transitions": int(len(actions)), "num_trajectories": len(demos)}}


def chunks(actions: np.ndarray, chunk: int) -> np.ndarray:
    """(T, D) -> (T, chunk, D): the actions from each step on, the last one repeated past the end."""
    index = np.minimum(np.arange(len(actions))[:, None] + np.arange(chunk)[None], len(actions) - 1)
    return actions[index]


def _demo_frames(path: str, demo: int, size: int) -> np.ndarray:
    """(T, 2, size, size, 3): :func:`policy_frame` of both cameras of every step of one demonstration."""
    h5py = _require_h5py()
    with h5py.File(path, "r") as f:
        group = f[f"data/demo_{demo}"]
        cameras = [group[f"obs/{camera}"][()] for camera in CAMERAS]
    return np.stack([np.stack([policy_frame(image, size) for image in images]) for images in cameras], axis=1)


def frame_cache_path(directory: str | Path, size: int) -> Path:
    """Where :func:`frame_cache` keeps the frames at ``size`` (beside the demonstrations)."""
    return Path(directory) / f"policy_frames_{size}.npy"


def frame_cache(directory: str | Path, size: int, progress: bool = False, workers: int = 1) -> np.ndarray:
    """Every demonstration frame of both cameras as :func:`policy_frame` at ``size``: a read-only memory map
    (frames, 2, size, size, 3) uint8 of ``policy_frames_<size>.npy``, built (atomically, by ``workers``
    processes) on first use. Frames are in :func:`read_demonstrations` order (every demonstration), steps
    in order."""
    h5py = _require_h5py()
    directory = Path(directory)
    path = frame_cache_path(directory, size)
    if not path.exists():
        manifest = read_manifest(directory)
        total = int(manifest["total"])
        jobs = []
        for _, entry in sorted(manifest["tasks"].items(), key=lambda kv: int(kv[0])):
            with h5py.File(directory / entry["file"], "r") as f:
                jobs += [(str(directory / entry["file"]), k) for k in range(int(f["data"].attrs["num_demos"]))]
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            cache = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=(total, 2, size, size, 3))
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, desc=f"policy frames ({size} px)", unit="frame")
            row = 0
            with ProcessPoolExecutor(max_workers=max(1, int(workers))) as pool:
                for demo_frames in pool.map(_demo_frames, *zip(*jobs), [size] * len(jobs)):
                    if row + len(demo_frames) > total:
                        raise InputError(f"demos: got more frames in the files than the manifest's total {total}")
                    cache[row : row + len(demo_frames)] = demo_frames
                    row += len(demo_frames)
                    if bar is not None:
                        bar.update(len(demo_frames))
            if bar is not None:
                bar.close()
            if row != total:
                raise InputError(f"demos: got {row} frames in the files, expected the manifest's total {total}")
            cache.flush()
            del cache
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    frames: np.ndarray = np.load(path, mmap_mode="r")
    return frames


@dataclass
class LiberoDemoData:
    """LIBERO demonstration steps in memory -> model batches (the interface of
    :class:`vla_lab.tabletop.TabletopData`: ``len`` and ``batch``).

    Build with :meth:`load`. ``batch`` returns ``pixel_values`` (B, C, H, W), right-padded ``input_ids`` /
    ``attention_mask``, ``proprio`` (B, 8) and ``actions`` (B, chunk, 7) normalised; with ``labels`` also
    ``targets`` (B, 2), the target object's table position, standardised over the data.
    """

    frames: np.ndarray  # (all frames, 2, cache, cache, 3) uint8
    frame_index: np.ndarray  # example -> row of ``frames``
    token_ids: list[list[int]]  # per example
    proprio: np.ndarray
    actions: np.ndarray
    targets: np.ndarray
    tasks: np.ndarray
    init_states: np.ndarray
    steps: np.ndarray
    image_processor: ImageProcessor
    image_size: int
    num_images: int
    pad_token_id: int
    augment: bool = True
    target_mean: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.float32))
    target_std: np.ndarray = field(default_factory=lambda: np.ones(2, dtype=np.float32))

    @classmethod
    def load(
        cls, directory: str | Path, config: VLAConfig, tokenizer: QwenTokenizer, *,
        init_states: Sequence[int] | None = None, augment: bool = True, progress: bool = False,
        stats_key: str | None = None,
    ) -> LiberoDemoData:
        """The demonstrations of ``directory`` (those of ``init_states``), prepared for ``config`` (whose
        ``norm_stats[stats_key]``, default the manifest's suite, normalise actions and proprio)."""
        from vla_lab.processing import VLAProcessor

        processor = VLAProcessor.for_config(config, tokenizer=tokenizer)  # refuses a prompt the tokenizer lacks
        manifest = read_manifest(directory)
        key = stats_key or manifest["suite"]
        stats = (config.norm_stats or {}).get(key)
        if stats is None:
            raise InputError(f"norm_stats: got datasets {sorted(config.norm_stats or {})}, expected {key!r} "
                             "(demo_statistics of the demonstrations)")
        all_demos = read_demonstrations(directory)
        keep = None if init_states is None else {int(i) for i in init_states}
        demos = [d for d in all_demos if keep is None or d.init_state in keep]
        if not demos:
            raise InputError(f"init_states: got {init_states}, expected init states with demonstrations")
        image_size = config.vision.image_size
        frames = frame_cache(directory, cache_size(image_size), progress)
        offsets, row = {}, 0
        for d in all_demos:
            offsets[(d.task, d.init_state)] = row
            row += len(d.actions)
        prompts: dict[str, list[int]] = {}
        normalization = config.robot.normalization
        frame_index, token_ids, proprio, actions, targets, tasks, states, steps = [], [], [], [], [], [], [], []
        for d in demos:
            if d.instruction not in prompts:
                prompts[d.instruction] = processor.encode(d.instruction)
            n = len(d.actions)
            frame_index.append(offsets[(d.task, d.init_state)] + np.arange(n))
            token_ids.extend([prompts[d.instruction]] * n)
            proprio.append(d.proprio)
            actions.append(chunks(libero_gripper(d.actions), config.robot.chunk))
            targets.append(d.target[:, :2])
            tasks.append(np.full(n, d.task))
            states.append(np.full(n, d.init_state))
            steps.append(np.arange(n))
        target_rows = np.concatenate(targets).astype(np.float32)
        mean, std = target_rows.mean(axis=0), target_rows.std(axis=0) + 1e-6
        return cls(
            frames=frames, frame_index=np.concatenate(frame_index), token_ids=token_ids,
            proprio=normalize_proprio(np.concatenate(proprio), stats["proprio"], normalization).astype(np.float32),
            actions=normalize_actions(np.concatenate(actions), stats["action"], normalization).astype(np.float32),
            targets=((target_rows - mean) / std).astype(np.float32), tasks=np.concatenate(tasks),
            init_states=np.concatenate(states), steps=np.concatenate(steps),
            image_processor=processor.image_processor, image_size=image_size, num_images=config.num_images,
            pad_token_id=int(tokenizer.pad_token_id or 0), augment=augment, target_mean=mean, target_std=std,
        )

    def __len__(self) -> int:
        return len(self.frame_index)

    def crop_boxes(self, count: int, generator: torch.Generator | None) -> torch.Tensor:
        """(count, 4) boxes x1, y1, x2, y2 in cache pixels: :data:`CROP_SCALE` of the area, random when
        ``augment`` (positions from ``generator``), else centred."""
        cache = self.frames.shape[2]
        side = float(np.sqrt(CROP_SCALE)) * cache
        if self.augment:
            corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * (cache - side)
        else:
            corner = torch.full((count, 2), (cache - side) / 2, dtype=torch.float64)
        return torch.cat([corner, corner + side], dim=1).float()

    def images(self, indices: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """uint8 (B, num_images, size, size, 3): the examples' frames, cropped and resampled."""
        from torchvision.ops import roi_align

        rows = np.asarray(self.frame_index[indices])
        raw = torch.from_numpy(np.ascontiguousarray(self.frames[rows, : self.num_images]))
        b, n, size = raw.shape[0], raw.shape[1], self.image_size
        x = raw.reshape(b * n, *raw.shape[2:]).permute(0, 3, 1, 2).float()
        boxes = self.crop_boxes(b, generator).repeat_interleave(n, dim=0)  # one box for both cameras
        boxes = torch.cat([torch.arange(b * n, dtype=torch.float32)[:, None], boxes], dim=1)
        out = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(b, n, size, size, 3).numpy()

    def batch(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor, labels: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs and ``actions`` of the examples at ``indices``; crops drawn from ``generator``."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        ids, mask = right_pad([self.token_ids[i] for i in idx], self.pad_token_id)
        out = {
            "pixel_values": pixel_values(self.images(idx, generator), self.image_processor),
            "input_ids": ids,
            "attention_mask": mask,
            "proprio": torch.from_numpy(self.proprio[idx]),
            "actions": torch.from_numpy(self.actions[idx]),
        }
        if labels:
            out["targets"] = torch.from_numpy(self.targets[idx])
        return out
