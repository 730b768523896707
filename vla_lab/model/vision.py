"""Pixels -> patch features: timm ViT featurizers, fused on the feature axis, images on the patch axis.

Each featurizer returns the patch tokens (no CLS or register tokens, no final norm) of its
second-to-last block, as upstream's ``get_intermediate_layers(x, n={depth - 2})`` does.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vla_lab.config import VisionConfig, VLAConfig
from vla_lab.errors import InputError


def create_featurizer(model_id: str, image_size: int, act_layer: str | None, **overrides: Any) -> VisionTransformer:
    """A randomly initialised timm ViT (never downloads weights)."""
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": image_size}
    if act_layer is not None:
        kwargs["act_layer"] = act_layer
    kwargs.update(overrides)
    try:
        vit = timm.create_model(model_id, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        raise InputError(f"vision.timm_model_ids: got {model_id!r}, which timm cannot build ({exc})") from None
    if not isinstance(vit, VisionTransformer):
        raise InputError(f"vision.timm_model_ids: got {model_id!r}, a {type(vit).__name__}; expected a timm ViT")
    return vit


def patch_features(vit: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, P, D): patch tokens after the second-to-last block."""
    index = len(vit.blocks) - 2
    features = vit.forward_intermediates(
        pixels, indices=[index], norm=False, output_fmt="NLC", intermediates_only=True, stop_early=True
    )
    if not isinstance(features, list) or len(features) != 1:  # intermediates_only gives a list, one per index
        raise RuntimeError(f"timm forward_intermediates: got {type(features).__name__}, expected one tensor in a list")
    return features[0]


class VisionBackbone(nn.Module):
    """One or two (fused) timm ViTs applied to every image of an observation.

    ``pixel_values`` has shape (B, N * C, H, W) with C = 6 for fused backbones (3 channels normalised
    for the featurizer, then 3 for the fused featurizer) and C = 3 otherwise; the output is
    (B, N * P, D) with D the sum of the featurizers' widths, DINOv2 first.
    """

    def __init__(self, vision: VisionConfig, num_images: int) -> None:
        super().__init__()
        self.config = vision
        self.num_images = num_images
        ids, sizes, acts, extra = vision.timm_model_ids, vision.image_sizes, vision.act_layers, vision.timm_kwargs
        self.featurizer = create_featurizer(ids[0], sizes[0], acts[0], **extra[0])
        self.fused_featurizer = (
            create_featurizer(ids[1], sizes[1], acts[1], **extra[1]) if vision.fused else None
        )
        grids = [tuple(self.featurizer.patch_embed.grid_size)]
        if self.fused_featurizer is not None:
            grids.append(tuple(self.fused_featurizer.patch_embed.grid_size))
            if grids[0] != grids[1]:
                raise InputError(f"vision.timm_model_ids: patch grids {grids[0]} and {grids[1]} differ; expected equal")
        self.patch_grid: tuple[int, int] = grids[0]

    @property
    def embed_dim(self) -> int:
        dim = self.featurizer.embed_dim
        return dim + (self.fused_featurizer.embed_dim if self.fused_featurizer is not None else 0)

    @property
    def patches_per_image(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def num_patches(self) -> int:
        return self.patches_per_image * self.num_images

    def check_pixels(self, pixel_values: torch.Tensor) -> None:
        """Raise a one-line InputError unless ``pixel_values`` fits this backbone."""
        per_image = self.config.channels_per_image
        size = self.config.image_size
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else type(pixel_values).__name__
            expected = f"(B, {per_image * self.num_images}, {size}, {size})"
            raise InputError(f"pixel_values: got {shape}, expected a {expected} tensor")
        channels = pixel_values.shape[1]
        if channels % per_image:
            kind = "fused (DINOv2 + second ViT)" if self.config.fused else "single"
            raise InputError(
                f"pixel_values: got {channels} channels, expected a multiple of {per_image} for a {kind} backbone "
                f"({per_image * self.num_images} for {self.num_images} image(s))"
            )
        if channels // per_image != self.num_images:
            raise InputError(
                f"pixel_values: got {channels // per_image} image(s) ({channels} channels), "
                f"expected num_images={self.num_images} ({per_image * self.num_images} channels)"
            )
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise InputError(
                f"pixel_values: got images of {tuple(pixel_values.shape[-2:])}, expected ({size}, {size})"
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixel_values)
        batch = pixel_values.shape[0]
        per_image = self.config.channels_per_image
        # All images of all observations go through each ViT in one call.
        images = pixel_values.reshape(batch * self.num_images, per_image, *pixel_values.shape[-2:])
        features = patch_features(self.featurizer, images[:, :3])
        if self.fused_featurizer is not None:
            features = torch.cat([features, patch_features(self.fused_featurizer, images[:, 3:])], dim=2)
        return features.reshape(batch, self.num_images * features.shape[1], features.shape[2])


def build_vision(config: VLAConfig) -> VisionBackbone:
    return VisionBackbone(config.vision, config.num_images)
