"""Configuration: what a model is (dataclasses, presets, named components) and the sequence vocabulary."""

from vla_lab.config.attention import (
    CONTENT_SEGMENTS,
    FINE_SEGMENTS,
    KEY_GROUPS,
    NAMED_MASKS,
    SEGMENTS,
    AttentionLike,
    AttentionSpec,
    coarse_segment,
    expand_segment,
)
from vla_lab.config.base import JSONConfig
from vla_lab.config.presets import PRESETS
from vla_lab.config.registry import (
    CUSTOM_BACKBONE,
    LEGACY_PROMPT,
    PROJECTORS,
    PROMPT_SPECIAL_TOKENS,
    PROMPT_TEMPLATES,
    PROMPTS,
    QWEN25_05B_TEXT_CONFIG,
    ROBOT_PRESETS,
    VISION_BACKBONES,
    canonical_projector,
)
from vla_lab.config.runtime import resolve_device, resolve_dtype
from vla_lab.config.vla import RobotConfig, VisionConfig, VLAConfig

__all__ = [
    "CONTENT_SEGMENTS",
    "CUSTOM_BACKBONE",
    "FINE_SEGMENTS",
    "KEY_GROUPS",
    "LEGACY_PROMPT",
    "NAMED_MASKS",
    "PRESETS",
    "PROJECTORS",
    "PROMPTS",
    "PROMPT_SPECIAL_TOKENS",
    "PROMPT_TEMPLATES",
    "QWEN25_05B_TEXT_CONFIG",
    "ROBOT_PRESETS",
    "SEGMENTS",
    "VISION_BACKBONES",
    "AttentionLike",
    "AttentionSpec",
    "JSONConfig",
    "RobotConfig",
    "VLAConfig",
    "VisionConfig",
    "canonical_projector",
    "coarse_segment",
    "expand_segment",
    "resolve_device",
    "resolve_dtype",
]
