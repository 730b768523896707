"""Named components a configuration refers to: vision backbones, projectors, robot platforms, the Qwen2.5 LLM.

Like timm's registry, experiments swap a component by changing a string; the tables say what each name
builds (SPEC sections 3-5).
"""

from __future__ import annotations

from typing import Any

from vla_lab.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Vision backbones (SPEC section 3). The featurizer is the first timm id; for fused ids it is DINOv2.
# ---------------------------------------------------------------------------------------------

_DINO = "vit_large_patch14_reg4_dinov2.lvd142m"

VISION_BACKBONES: dict[str, dict[str, list]] = {
    "dinosiglip-vit-so-224px": {
        "timm_model_ids": [_DINO, "vit_so400m_patch14_siglip_224"],
        "image_sizes": [224, 224],
        "act_layers": [None, None],
    },
    "dinosiglip-vit-so-384px": {
        "timm_model_ids": [_DINO, "vit_so400m_patch14_siglip_384"],
        "image_sizes": [384, 384],
        "act_layers": [None, None],
    },
    "dinoclip-vit-l-336px": {
        "timm_model_ids": [_DINO, "vit_large_patch14_clip_336.openai"],
        "image_sizes": [336, 336],
        "act_layers": [None, "quick_gelu"],
    },
    "siglip-vit-so400m": {
        "timm_model_ids": ["vit_so400m_patch14_siglip_224"],
        "image_sizes": [224],
        "act_layers": [None],
    },
    "siglip-vit-so400m-384px": {
        "timm_model_ids": ["vit_so400m_patch14_siglip_384"],
        "image_sizes": [384],
        "act_layers": [None],
    },
    "dinov2-vit-l": {"timm_model_ids": [_DINO], "image_sizes": [224], "act_layers": [None]},
    "clip-vit-l": {
        "timm_model_ids": ["vit_large_patch14_clip_224.openai"],
        "image_sizes": [224],
        "act_layers": ["quick_gelu"],
    },
    "clip-vit-l-336px": {
        "timm_model_ids": ["vit_large_patch14_clip_336.openai"],
        "image_sizes": [336],
        "act_layers": ["quick_gelu"],
    },
    "in1k-vit-l": {
        "timm_model_ids": ["vit_large_patch16_224.augreg_in21k_ft_in1k"],
        "image_sizes": [224],
        "act_layers": [None],
    },
}

CUSTOM_BACKBONE = "custom"

# ---------------------------------------------------------------------------------------------
# Projectors (SPEC section 4); upstream `arch_specifier` spellings are accepted.
# ---------------------------------------------------------------------------------------------

PROJECTORS = ("linear", "gelu-mlp", "fused-gelu-mlp")
_PROJECTOR_ALIASES = {
    "linear": "linear",
    "no-align+linear": "linear",
    "gelu-mlp": "gelu-mlp",
    "no-align+gelu-mlp": "gelu-mlp",
    "fused-gelu-mlp": "fused-gelu-mlp",
    "no-align+fused-gelu-mlp": "fused-gelu-mlp",
}


def canonical_projector(name: str) -> str:
    """Map a projector name or an upstream ``arch_specifier`` to one of :data:`PROJECTORS`."""
    try:
        return _PROJECTOR_ALIASES[name]
    except KeyError:
        raise ConfigError(
            f"projector: got {name!r}, expected one of {sorted(_PROJECTOR_ALIASES)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Robot platforms (upstream `prismatic/vla/constants.py`, chosen here by configuration).
# ---------------------------------------------------------------------------------------------

NORMALIZATION_TYPES = ("bounds", "bounds_q99")

ROBOT_PRESETS: dict[str, dict[str, Any]] = {
    "libero": {"chunk": 8, "action_dim": 7, "proprio_dim": 8, "normalization": "bounds_q99"},
    "calvin": {"chunk": 8, "action_dim": 7, "proprio_dim": 8, "normalization": "bounds_q99"},
    "aloha": {"chunk": 25, "action_dim": 14, "proprio_dim": 14, "normalization": "bounds"},
    "bridge": {"chunk": 5, "action_dim": 7, "proprio_dim": 7, "normalization": "bounds_q99"},
}


# ---------------------------------------------------------------------------------------------
# Choices of the other VLAConfig fields.
# ---------------------------------------------------------------------------------------------

HEAD_VERSIONS = ("v1", "pro")
ATTENTION_KERNELS = ("sdpa", "eager")
HIDDEN_OFFSETS = ("released", "aligned")
TOKENIZERS = ("qwen2.5", "tabletop", "libero")

#: The prompts a model can be given, by name (SPEC section 1); ``{instruction}`` is the lower-cased task.
#: ``qwen-chat``: Qwen's chat template, what upstream's LIBERO evaluation and training build with
#: ``use_minivlm=True`` (their default, and every released checkpoint's); it ends in the assistant turn's
#: opening, as upstream's training cuts it. ``openvla``: upstream's other branch, the In/Out prompt.
PROMPT_TEMPLATES: dict[str, str] = {
    "qwen-chat": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat action should the robot take to {instruction}?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "openvla": "In: What action should the robot take to {instruction}?\nOut:",
}
PROMPTS = tuple(PROMPT_TEMPLATES)
#: Special tokens a tokenizer must encode as single ids for each prompt.
PROMPT_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {"qwen-chat": ("<|im_start|>", "<|im_end|>"), "openvla": ()}
#: The prompt of a vla-lab configuration saved before :class:`~vla_lab.config.VLAConfig` had a ``prompt``
#: field (vla-lab 0.1, before 0.2): every model of that version was trained and run with the In/Out prompt.
LEGACY_PROMPT = "openvla"

# The Qwen2.5-0.5B text config of the released checkpoints (SPEC section 5).
QWEN25_05B_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 24,
}
