"""Image preprocessing that reproduces the pixel values of upstream's ``PrismaticImageProcessor``.

Per featurizer (DINOv2 first, then SigLIP/CLIP for fused backbones) a PIL RGB image goes through an
optional letterbox pad, ``TVF.resize`` (PIL, antialiased), ``TVF.center_crop``, ``TVF.to_tensor`` and
``TVF.normalize``; the featurizers' 3-channel results are stacked on the channel axis, and the images of
one observation (third-person first, then wrist) are concatenated on the channel axis as well.

The optional LIBERO centre crop re-states TensorFlow's ``convert_image_dtype`` + ``crop_and_resize``
(bilinear) + ``convert_image_dtype(saturate=True)`` in float32 numpy, bit for bit.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torchvision.transforms.functional as TVF
from torchvision.transforms import InterpolationMode

from vla_lab.config import JSONConfig
from vla_lab.errors import ConfigError, InputError
from vla_lab.processing.image_inputs import EXPECTED_IMAGES, ImageLike, is_image_like, load_image

RESIZE_STRATEGIES = ("resize-naive", "letterbox", "resize-crop")

# Names <-> the integer codes upstream saves in `tvf_resize_params` (PIL's resampling constants).
_INTERPOLATION_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_INTERPOLATION_NAMES = {code: name for name, code in _INTERPOLATION_CODES.items()}



def _bf16(values: Any) -> list[float]:
    return torch.tensor([float(v) for v in values], dtype=torch.bfloat16).float().tolist()


def _fill_from_mean(mean: Any) -> list[int]:
    return [int(float(m) * 255) for m in mean]


@dataclass
class ImageProcessorConfig(JSONConfig):
    """How images are turned into pixel values; ``means``/``stds`` hold one triple per featurizer."""

    resize_strategy: str = "resize-naive"
    image_size: int = 224
    means: list[list[float]] = field(default_factory=lambda: [[0.5, 0.5, 0.5]])
    stds: list[list[float]] = field(default_factory=lambda: [[0.5, 0.5, 0.5]])
    # Only for "letterbox"; None there means upstream's default, int(255 * mean) of the LAST featurizer.
    letterbox_fill: list[int] | None = None
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize_strategy not in RESIZE_STRATEGIES:
            raise ConfigError(
                f"resize_strategy: got {self.resize_strategy!r}, expected one of {RESIZE_STRATEGIES}"
            )
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"image_size: got {self.image_size!r}, expected a positive integer")
        if self.interpolation not in _INTERPOLATION_CODES:
            raise ConfigError(
                f"interpolation: got {self.interpolation!r}, expected one of {sorted(_INTERPOLATION_CODES)}"
            )
        self.means = [self._triple("means", i, m) for i, m in enumerate(self._featurizer_list("means"))]
        self.stds = [self._triple("stds", i, s) for i, s in enumerate(self._featurizer_list("stds"))]
        if len(self.means) != len(self.stds):
            raise ConfigError(
                f"stds: got {len(self.stds)} entries, expected {len(self.means)} (one per featurizer)"
            )
        for i, std in enumerate(self.stds):
            if any(s <= 0 for s in std):
                raise ConfigError(f"stds[{i}]: got {std}, expected positive values")
        if self.resize_strategy != "letterbox":
            if self.letterbox_fill is not None:
                raise ConfigError(
                    f"letterbox_fill: got {self.letterbox_fill!r} with resize_strategy "
                    f"{self.resize_strategy!r}, expected None (only 'letterbox' pads)"
                )
            return
        if self.letterbox_fill is None:
            self.letterbox_fill = _fill_from_mean(self.means[-1])
        fill = self.letterbox_fill
        if (
            not isinstance(fill, (list, tuple))
            or len(fill) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in fill)
        ):
            raise ConfigError(f"letterbox_fill: got {fill!r}, expected 3 integers in [0, 255] or None")
        self.letterbox_fill = list(fill)

    def _featurizer_list(self, name: str) -> list[Any]:
        value = getattr(self, name)
        if not isinstance(value, (list, tuple)) or len(value) not in (1, 2):
            raise ConfigError(f"{name}: got {value!r}, expected 1 or 2 triples (one per featurizer)")
        return list(value)

    @staticmethod
    def _triple(name: str, index: int, value: Any) -> list[float]:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(f"{name}[{index}]: got {value!r}, expected 3 numbers")
        return [float(v) for v in value]

    @property
    def num_featurizers(self) -> int:
        return len(self.means)

    @property
    def channels_per_image(self) -> int:
        return 3 * self.num_featurizers


    # --- upstream preprocessor_config.json ------------------------------------------------------

    def _resize_size(self) -> int | list[int]:
        # Upstream turns timm's int size into [H, W] only for "resize-naive".
        if self.resize_strategy == "resize-naive":
            return [self.image_size, self.image_size]
        return self.image_size

    def to_preprocessor_config(self) -> dict[str, Any]:
        """A dict laid out like upstream's ``preprocessor_config.json``."""
        n, size = self.num_featurizers, self.image_size
        letterbox = self.resize_strategy == "letterbox"
        return {
            "image_processor_type": "PrismaticImageProcessor",
            "image_resize_strategy": self.resize_strategy,
            "input_sizes": [[3, size, size] for _ in range(n)],
            "interpolations": [self.interpolation] * n,
            "means": copy.deepcopy(self.means),
            "stds": copy.deepcopy(self.stds),
            "tvf_crop_params": [{"output_size": [size, size]} for _ in range(n)],
            "tvf_do_letterbox": letterbox,
            "tvf_letterbox_fill": list(self.letterbox_fill) if letterbox and self.letterbox_fill is not None else None,
            "tvf_normalize_params": [
                {"inplace": False, "mean": list(m), "std": list(s)} for m, s in zip(self.means, self.stds)
            ],
            "tvf_resize_params": [
                {
                    "antialias": True,
                    "interpolation": _INTERPOLATION_CODES[self.interpolation],
                    "max_size": None,
                    "size": self._resize_size(),
                }
                for _ in range(n)
            ],
            "use_fused_vision_backbone": n > 1,
            "processor_class": "PrismaticProcessor",
        }

    @classmethod
    def from_preprocessor_config(cls, path_or_dict: str | Path | dict[str, Any]) -> ImageProcessorConfig:
        """Read the saved ``tvf_*`` values (the ones upstream actually applies) of a preprocessor config."""
        if isinstance(path_or_dict, dict):
            data = path_or_dict
        else:
            path = Path(path_or_dict)
            if path.is_dir():
                path = path / "preprocessor_config.json"
            if not path.is_file():
                raise ConfigError(f"preprocessor_config: got {str(path)!r}, expected an existing JSON file")
            data = json.loads(path.read_text())

        def get(key: str) -> Any:
            if key not in data:
                raise ConfigError(f"preprocessor_config.{key}: missing, expected the value upstream saves")
            return data[key]

        normalize, resize, crop = (
            get("tvf_normalize_params"),
            get("tvf_resize_params"),
            get("tvf_crop_params"),
        )
        n = len(normalize) if isinstance(normalize, list) else 0
        if n not in (1, 2) or not isinstance(resize, list) or not isinstance(crop, list):
            raise ConfigError(
                f"preprocessor_config.tvf_normalize_params: got {normalize!r}, expected 1 or 2 dicts"
            )
        if len(resize) != n or len(crop) != n:
            raise ConfigError(
                f"preprocessor_config.tvf_resize_params/tvf_crop_params: got {len(resize)}/{len(crop)} "
                f"entries, expected {n} (one per featurizer)"
            )
        do_letterbox = bool(get("tvf_do_letterbox"))

        sizes, kinds, interpolations = set(), set(), set()
        for i in range(n):
            out = crop[i].get("output_size")
            out = [out, out] if isinstance(out, int) else list(out or [])
            if len(out) == 1:
                out = out * 2
            if len(out) != 2 or out[0] != out[1]:
                raise ConfigError(
                    f"preprocessor_config.tvf_crop_params[{i}].output_size: "
                    f"got {crop[i].get('output_size')!r}, expected a square size"
                )
            sizes.add(int(out[0]))
            params = resize[i]
            if params.get("antialias", True) is not True or params.get("max_size") is not None:
                raise ConfigError(
                    f"preprocessor_config.tvf_resize_params[{i}]: got {params!r}, "
                    "expected antialias true and max_size null"
                )
            size = params.get("size")
            if isinstance(size, list) and len(size) == 1:
                size = size[0]
            if isinstance(size, int):
                kinds.add("letterbox" if do_letterbox else "resize-crop")
            elif isinstance(size, list) and len(size) == 2 and size[0] == size[1] and not do_letterbox:
                kinds.add("resize-naive")
                size = size[0]
            else:
                raise ConfigError(
                    f"preprocessor_config.tvf_resize_params[{i}].size: got {params.get('size')!r}, "
                    "expected an int or a square [H, W] (an int when letterboxing)"
                )
            sizes.add(int(size))
            code = params.get("interpolation")
            name = _INTERPOLATION_NAMES.get(code) if isinstance(code, int) else code
            if name not in _INTERPOLATION_CODES:
                raise ConfigError(
                    f"preprocessor_config.tvf_resize_params[{i}].interpolation: got {code!r}, "
                    f"expected one of {sorted(_INTERPOLATION_NAMES)} or {sorted(_INTERPOLATION_CODES)}"
                )
            interpolations.add(name)
        if len(sizes) != 1 or len(kinds) != 1 or len(interpolations) != 1:
            raise ConfigError(
                f"preprocessor_config.tvf_resize_params/tvf_crop_params: got sizes {sorted(sizes)}, "
                f"strategies {sorted(kinds)} and interpolations {sorted(interpolations)}, "
                "expected one of each (resize size equal to crop size)"
            )
        fill = None
        if do_letterbox:
            saved = data.get("tvf_letterbox_fill")
            # TVF.pad treats fill=None as black.
            fill = [0, 0, 0] if saved is None else [int(v) for v in saved]
        return cls(
            resize_strategy=kinds.pop(),
            image_size=sizes.pop(),
            means=[p.get("mean") for p in normalize],
            stds=[p.get("std") for p in normalize],
            letterbox_fill=fill,
            interpolation=interpolations.pop(),
        )

    @classmethod
    def for_timm_models(
        cls, timm_model_ids: list[str], image_size: int, resize_strategy: str = "resize-naive"
    ) -> ImageProcessorConfig:
        """Normalisation from timm's pretrained cfgs (offline), rounded to bf16 like released files."""
        import timm.models

        if isinstance(timm_model_ids, str) or not 1 <= len(timm_model_ids) <= 2:
            raise ConfigError(f"timm_model_ids: got {timm_model_ids!r}, expected a list of 1 or 2 timm ids")
        cfgs = []
        for i, model_id in enumerate(timm_model_ids):
            cfg = timm.models.get_pretrained_cfg(model_id)
            if cfg is None:
                raise ConfigError(
                    f"timm_model_ids[{i}]: got {model_id!r}, expected a timm model with a pretrained cfg"
                )
            cfgs.append(cfg)
        interpolations = {c.interpolation or "bicubic" for c in cfgs}
        if len(interpolations) != 1:
            raise ConfigError(
                f"timm_model_ids: got interpolations {sorted(interpolations)}, expected one for every model"
            )
        return cls(
            resize_strategy=resize_strategy,
            image_size=image_size,
            means=[_bf16(c.mean) for c in cfgs],
            stds=[_bf16(c.std) for c in cfgs],
            # Upstream derives the fill from the unrounded mean of the last featurizer.
            letterbox_fill=_fill_from_mean(cfgs[-1].mean) if resize_strategy == "letterbox" else None,
            interpolation=interpolations.pop(),
        )


# ------------------------------------------------------------------------------------------------
# LIBERO centre crop: TensorFlow's ops re-stated in float32 numpy
# ------------------------------------------------------------------------------------------------


def _tf_sample_grid(
    start: np.float32, end: np.float32, in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: low index, high index, lerp weight, inside-mask, as TF's CPU kernel has them."""
    span = np.float32(in_size - 1)
    if out_size > 1:
        step = (end - start) * span / np.float32(out_size - 1)
        pos = start * span + np.arange(out_size, dtype=np.float32) * step
    else:
        # This branch of the kernel multiplies by a double 0.5 before storing a float.
        pos = np.array([np.float32(0.5 * float(start + end) * float(in_size - 1))], dtype=np.float32)
    inside = (pos >= 0) & (pos <= span)
    safe = np.where(inside, pos, np.float32(0))
    low = np.floor(safe).astype(np.int64)
    high = np.ceil(safe).astype(np.int64)
    lerp = safe - low.astype(np.float32)
    return low, high, lerp.astype(np.float32), inside


#: The area fraction upstream's evaluation keeps when it centre-crops (its models train on random crops of it).
CENTER_CROP_SCALE = 0.9


def center_crop_image(image: np.ndarray | PIL.Image.Image, scale: float = CENTER_CROP_SCALE) -> PIL.Image.Image:
    """Crop the central ``scale`` of the area and resize back to the input size, as upstream does in TF."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise InputError(f"scale: got {scale!r}, expected an area fraction in (0, 1]")
    pixels = np.asarray(load_image(image))
    height, width = pixels.shape[:2]

    # convert_image_dtype(uint8 -> float32): multiply by float32(1 / 255).
    img = pixels.astype(np.float32) * np.float32(1.0 / 255)

    # Box [y1, x1, y2, x2] built in float32 the way upstream's crop_and_resize helper builds it.
    side = np.clip(np.sqrt(np.float32(scale)), np.float32(0), np.float32(1))
    start = (np.float32(1) - side) / np.float32(2)
    end = start + side

    top_i, bottom_i, y_lerp, in_y = _tf_sample_grid(start, end, height, height)
    left_i, right_i, x_lerp, in_x = _tf_sample_grid(start, end, width, width)
    x_lerp = x_lerp[None, :, None]
    top_rows, bottom_rows = img[top_i], img[bottom_i]
    top = top_rows[:, left_i] + (top_rows[:, right_i] - top_rows[:, left_i]) * x_lerp
    bottom = bottom_rows[:, left_i] + (bottom_rows[:, right_i] - bottom_rows[:, left_i]) * x_lerp
    crop = top + (bottom - top) * y_lerp[:, None, None]
    crop[~in_y] = 0  # extrapolation_value
    crop[:, ~in_x] = 0

    # clip_by_value(0, 1), then convert_image_dtype(float32 -> uint8, saturate=True):
    # multiply by float32(255.5), clamp to [0, 255], truncating cast.
    scaled = np.clip(crop, np.float32(0), np.float32(1)) * np.float32(255.5)
    out = np.clip(scaled, np.float32(0), np.float32(255)).astype(np.uint8)
    return PIL.Image.fromarray(out).convert("RGB")


# ------------------------------------------------------------------------------------------------
# Processor
# ------------------------------------------------------------------------------------------------


class ImageProcessor:
    """Pixel values for one or more observations, channel-stacked per featurizer and per image."""

    def __init__(self, config: ImageProcessorConfig) -> None:
        self.config = config
        interpolation = InterpolationMode(config.interpolation)
        self._resize_kwargs = {
            "size": config._resize_size(),
            "interpolation": interpolation,
            "max_size": None,
            "antialias": True,
        }
        self._crop_size = [config.image_size, config.image_size]
        fill = config.letterbox_fill
        self._letterbox_fill = tuple(fill) if config.resize_strategy == "letterbox" and fill is not None else None

    def _letterbox(self, img: PIL.Image.Image) -> PIL.Image.Image:
        width, height = img.size
        side = max(width, height)
        pad_w, pad_h = (side - width) // 2, (side - height) // 2
        return TVF.pad(img, [pad_w, pad_h, pad_w, pad_h], fill=self._letterbox_fill, padding_mode="constant")

    def preprocess_image(
        self, image: ImageLike, center_crop: bool = False, name: str = "image"
    ) -> torch.Tensor:
        """One image -> float32 tensor of shape (3 * featurizers, image_size, image_size)."""
        img = load_image(image, name)
        if center_crop:
            img = center_crop_image(img)
        if self._letterbox_fill is not None:
            img = self._letterbox(img)
        # Every featurizer shares resize and crop parameters, so one resized image serves them all.
        pixels = TVF.to_tensor(TVF.center_crop(TVF.resize(img, **self._resize_kwargs), self._crop_size))
        stats = zip(self.config.means, self.config.stds)
        return torch.cat([TVF.normalize(pixels, mean, std) for mean, std in stats], dim=0)

    def __call__(self, images: Any, center_crop: bool = False, num_images: int | None = None) -> torch.Tensor:
        """Pixel values (B, 3 * featurizers * N, H, W) float32.

        ``images`` is one image, a list of the N images of one observation (B = 1), or a list of such lists.
        """
        if is_image_like(images):
            observations, names = [[images]], [["images"]]
        elif _nonempty_seq(images) and all(isinstance(o, (list, tuple)) for o in images):
            for b, obs in enumerate(images):
                if not obs:
                    raise InputError(
                        f"images[{b}]: got an empty {type(obs).__name__}, expected 1 or more images"
                    )
            observations = [list(obs) for obs in images]
            names = [[f"images[{b}][{i}]" for i in range(len(obs))] for b, obs in enumerate(images)]
        elif _nonempty_seq(images):
            observations, names = [list(images)], [[f"images[{i}]" for i in range(len(images))]]
        else:
            raise InputError(f"images: got {_describe(images)}, {EXPECTED_IMAGES}, or a list (of lists) of them")

        counts = {len(obs) for obs in observations}
        if num_images is not None and counts != {num_images}:
            raise InputError(
                f"num_images: got {sorted(counts)} image(s) per observation, expected {num_images}"
            )
        if len(counts) != 1:
            raise InputError(
                f"images: got {sorted(counts)} images per observation, expected one count for all"
            )
        batch = [
            torch.cat([self.preprocess_image(x, center_crop, name) for x, name in zip(obs, obs_names)], dim=0)
            for obs, obs_names in zip(observations, names)
        ]
        return torch.stack(batch, dim=0)


def _fast_pixels(image_processor: ImageProcessor, image_size: int) -> bool:
    """Whether images of ``image_size`` pass the processor unresized (then pixels are computed in bulk)."""
    cfg = image_processor.config
    return cfg.image_size == image_size and cfg.resize_strategy in ("resize-naive", "resize-crop")


def pixel_values(images: np.ndarray, image_processor: ImageProcessor) -> torch.Tensor:
    """uint8 (B, N, H, W, 3) -> float32 (B, N * 3 * featurizers, H, W), equal to the ``ImageProcessor``'s.

    Square images at the processor's size take a vectorised path (PIL's resize to the same size is the
    identity); anything else goes through the processor image by image.
    """
    batch, n, height, width, _ = images.shape
    if height != width or not _fast_pixels(image_processor, height):
        observations = [[images[b, i] for i in range(n)] for b in range(batch)]
        return image_processor(observations)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 1, 4, 2, 3).float().div(255)
    parts = []
    for mean, std in zip(image_processor.config.means, image_processor.config.stds):
        m = torch.tensor(mean, dtype=torch.float32)[None, None, :, None, None]
        s = torch.tensor(std, dtype=torch.float32)[None, None, :, None, None]
        parts.append((x - m) / s)
    # Per image: the featurizers' 3-channel results, then the next image.
    return torch.cat(parts, dim=2).reshape(batch, -1, height, width)


def _nonempty_seq(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0


def _describe(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        if not x:
            return f"empty {type(x).__name__}"
        kinds = sorted({type(v).__name__ for v in x})
        return f"{type(x).__name__} of {', '.join(kinds)}"
    return type(x).__name__


__all__ = [
    "CENTER_CROP_SCALE",
    "RESIZE_STRATEGIES",
    "ImageProcessor",
    "pixel_values",
    "ImageProcessorConfig",
    "center_crop_image",
    "load_image",
]
