"""The ablation grid: projector x vision backbone x LLM attention mask, and each variant's parameters.

A :class:`Variant` names one cell of the grid. :func:`variant_config` derives its :class:`VLAConfig`
from a base configuration, either with small stand-in ViTs (the base's image size and ViT widths, the
real backbone's timm ids, activations and normalisation) or with the real backbone of SPEC section 3.
Combinations the released design does not define are kept in every table with a reason
(:func:`skip_reason`) instead of being silently dropped.

:func:`parameter_table` counts parameters per component on the ``meta`` device (no memory,
deterministic), including the ViT modules the model never runs (:func:`unused_vision_parameters`).
Every table is tidy (long format): one row per (variant, metric).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from vla_lab.config import PROJECTORS, VISION_BACKBONES, VLAConfig
from vla_lab.errors import ConfigError
from vla_lab.model import VLAAdapter, meta_model

#: Short backbone names -> the SPEC section 3 backbone id whose timm models they use.
BACKBONES: dict[str, str] = {
    "dinov2": "dinov2-vit-l",
    "siglip": "siglip-vit-so400m",
    "clip": "clip-vit-l",
    "dinov2+siglip": "dinosiglip-vit-so-224px",
    "dinov2+clip": "dinoclip-vit-l-336px",
}
MASKS = ("causal", "bidirectional")
SCALES = ("small", "real")
DESIGNS = ("full", "reduced")
#: The released architecture's backbone; the reduced design sweeps projectors on it.
PIVOT_BACKBONE = "dinov2+siglip"
#: The projector every backbone accepts; the reduced design sweeps backbones with it.
PIVOT_PROJECTOR = "gelu-mlp"


def is_fused(backbone: str) -> bool:
    """Whether ``backbone`` (a key of :data:`BACKBONES`) runs two ViTs fused on the feature axis."""
    return len(VISION_BACKBONES[_backbone_id(backbone)]["timm_model_ids"]) == 2


def _backbone_id(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone: got {backbone!r}, expected one of {list(BACKBONES)}")
    return BACKBONES[backbone]


def skip_reason(backbone: str, projector: str) -> str | None:
    """Why a (backbone, projector) pair is not run, or None when it is a defined architecture.

    ``fused-gelu-mlp`` is the projector of fused (two-ViT) backbones (SPEC section 4, released
    default with DINOv2 + SigLIP). ``VLAConfig`` does not enforce this (it builds the projector on any
    feature width), so the ablation refuses the pairing here, explicitly.
    """
    _backbone_id(backbone)
    if projector not in PROJECTORS:
        raise ConfigError(f"projector: got {projector!r}, expected one of {PROJECTORS}")
    if projector == "fused-gelu-mlp" and not is_fused(backbone):
        return f"fused-gelu-mlp needs a fused (two-ViT) backbone; {backbone} is a single ViT"
    return None


@dataclass(frozen=True)
class Variant:
    """One cell of the ablation grid."""

    backbone: str
    projector: str
    attention: str = "causal"

    def __post_init__(self) -> None:
        _backbone_id(self.backbone)
        if self.projector not in PROJECTORS:
            raise ConfigError(f"projector: got {self.projector!r}, expected one of {PROJECTORS}")
        if self.attention not in MASKS:
            raise ConfigError(f"attention: got {self.attention!r}, expected one of {MASKS}")

    @property
    def name(self) -> str:
        return f"{self.backbone} | {self.projector} | {self.attention}"

    @property
    def architecture(self) -> str:
        return f"{self.backbone} | {self.projector}"

    @property
    def skip_reason(self) -> str | None:
        return skip_reason(self.backbone, self.projector)

    @property
    def valid(self) -> bool:
        return self.skip_reason is None


def variant_grid(
    backbones: Sequence[str] = tuple(BACKBONES),
    projectors: Sequence[str] = PROJECTORS,
    masks: Sequence[str] = MASKS,
    design: str = "full",
) -> list[Variant]:
    """The variants of a design, invalid ones included (see :attr:`Variant.skip_reason`).

    ``full``: every backbone x projector x mask. ``reduced``: the projector sweep on
    :data:`PIVOT_BACKBONE` plus the backbone sweep with :data:`PIVOT_PROJECTOR`, for every mask
    (the pivots are used only if they are among ``backbones`` / ``projectors``).
    """
    if design not in DESIGNS:
        raise ConfigError(f"design: got {design!r}, expected one of {DESIGNS}")
    pairs = [(b, p) for b in backbones for p in projectors]
    if design == "reduced":
        pairs = [(b, p) for b, p in pairs if b == PIVOT_BACKBONE or p == PIVOT_PROJECTOR]
    return [Variant(b, p, m) for b, p in pairs for m in masks]


# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------


def stand_in_vision(base: VLAConfig, backbone: str) -> dict[str, Any]:
    """A small stand-in of ``backbone``: its timm ids, activations and normalisation, the base's sizes.

    Every ViT gets the base's first ``timm_kwargs`` (width, depth, heads, patch) and image size, so
    stand-ins differ from each other in architecture family and in the number of ViTs only.
    """
    known = VISION_BACKBONES[_backbone_id(backbone)]
    ids = list(known["timm_model_ids"])
    kwargs = dict(base.vision.timm_kwargs[0])
    return {
        "backbone_id": "custom",
        "timm_model_ids": ids,
        "image_sizes": [base.vision.image_size] * len(ids),
        "act_layers": list(known["act_layers"]),
        "timm_kwargs": [dict(kwargs) for _ in ids],
        "fused": len(ids) == 2,
    }


def variant_config(base: VLAConfig, variant: Variant, scale: str = "small") -> VLAConfig:
    """``base`` with the variant's backbone (stand-in or real), projector and attention mask.

    Raises :class:`ConfigError` for variants with a :func:`skip_reason`.
    """
    if scale not in SCALES:
        raise ConfigError(f"scale: got {scale!r}, expected one of {SCALES}")
    if variant.skip_reason:
        raise ConfigError(f"variant {variant.name}: {variant.skip_reason}")
    if scale == "small":
        vision = stand_in_vision(base, variant.backbone)
    else:
        vision = {"backbone_id": BACKBONES[variant.backbone]}
    name = f"{base.name}[{variant.backbone}|{variant.projector}|{scale}]"
    return base.replace(vision=vision, projector=variant.projector, attention=variant.attention, name=name)


def deepened_config(base: VLAConfig, variant: Variant, total: int, max_depth: int = 64) -> tuple[VLAConfig, int]:
    """The variant's small-scale configuration with its ViTs' depth set so its parameters come closest to ``total``.

    Every ViT of the stand-in gets the same depth (at least 2: features come from the second-to-last
    block, at most ``max_depth``). Parameters grow linearly with the depth: two counts give the line, and
    the depths either side of its solution are counted to pick the closer one. Returns the configuration
    and the chosen depth.
    """
    if total <= 0:
        raise ConfigError(f"total: got {total!r}, expected a positive number of parameters")

    config = variant_config(base, variant, "small")

    def at(depth: int) -> VLAConfig:
        vision = stand_in_vision(base, variant.backbone)
        vision["timm_kwargs"] = [{**k, "depth": depth} for k in vision["timm_kwargs"]]
        return config.replace(vision=vision, name=f"{config.name}[depth={depth}]")

    counts = {d: parameter_counts(at(d))["total"] for d in (2, 3)}
    solution = 2 + (total - counts[2]) / (counts[3] - counts[2])
    candidates = {min(max(d, 2), max_depth) for d in (math.floor(solution), math.ceil(solution))}
    counts = {d: counts[d] if d in counts else parameter_counts(at(d))["total"] for d in candidates}
    depth = min(counts, key=lambda d: (abs(counts[d] - total), d))
    return at(depth), depth


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def unused_vision_parameters(model: VLAAdapter) -> int:
    """Parameters of the ViT modules the forward never reaches.

    Features come from the second-to-last block (SPEC section 3), so the last block, the final norm
    and any pooling or classifier modules (e.g. SigLIP's attention pool) are built but not run.
    """
    total = 0
    for vit in (model.vision_backbone.featurizer, model.vision_backbone.fused_featurizer):
        if vit is None:
            continue
        unused: list[torch.nn.Module] = [vit.blocks[-1]]
        for name in ("norm", "attn_pool", "fc_norm", "head"):
            if getattr(vit, name, None) is not None:
                unused.append(getattr(vit, name))
        total += sum(p.numel() for m in unused for p in m.parameters())
    return total


def parameter_counts(config: VLAConfig) -> dict[str, int]:
    """``VLAAdapter.parameter_counts`` of ``config`` built on the meta device, plus unused ViT parameters."""
    model = meta_model(config)
    counts = model.parameter_counts()
    counts["vision.unused"] = unused_vision_parameters(model)
    return counts


def parameter_table(base: VLAConfig, variants: Iterable[Variant], scale: str = "small") -> pd.DataFrame:
    """Tidy parameter counts per architecture (masks do not change parameters).

    Columns: backbone, projector, scale, status, reason, component, value (NaN for skipped variants).
    """
    rows = []
    seen = set()
    for v in variants:
        if v.architecture in seen:
            continue
        seen.add(v.architecture)
        key = {"backbone": v.backbone, "projector": v.projector, "scale": scale}
        if not v.valid:
            rows.append({**key, "status": "skipped", "reason": v.skip_reason, "component": "total", "value": np.nan})
            continue
        for component, value in parameter_counts(variant_config(base, v, scale)).items():
            rows.append({**key, "status": "ok", "reason": "", "component": component, "value": value})
    return pd.DataFrame(rows)
