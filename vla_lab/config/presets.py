"""Named model presets: the released architectures and small ones with the same topology."""

from __future__ import annotations

import copy
from typing import Any

from vla_lab.config.registry import CUSTOM_BACKBONE, QWEN25_05B_TEXT_CONFIG, VISION_BACKBONES


def _tiny_llm(**extra: Any) -> dict[str, Any]:
    llm = copy.deepcopy(QWEN25_05B_TEXT_CONFIG)
    llm.update(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_window_layers=2,
        max_position_embeddings=4096,
    )
    llm.update(extra)
    return llm


def _tiny_vision(image_size: int = 56, dims: tuple[int, int] = (32, 48), depth: int = 3) -> dict[str, Any]:
    return {
        "backbone_id": CUSTOM_BACKBONE,
        "timm_model_ids": list(VISION_BACKBONES["dinosiglip-vit-so-224px"]["timm_model_ids"]),
        "image_sizes": [image_size, image_size],
        "act_layers": [None, None],
        "timm_kwargs": [
            {"embed_dim": dims[0], "depth": depth, "num_heads": 2},
            {"embed_dim": dims[1], "depth": depth, "num_heads": 2},
        ],
        "fused": True,
    }


def _small_trained(image_size: int, vocab_size: int, tokenizer: str) -> dict[str, Any]:
    """The released Pro topology at the size vla-lab trains on a CPU: fused 4-block 64-wide ViT stand-ins
    with 16-px patches, a 4-layer 64-wide Qwen2 whose last token id is its eos, 16 action queries."""
    vit = {"embed_dim": 64, "depth": 4, "num_heads": 4, "patch_size": 16}
    return {
        "vision": {
            "backbone_id": CUSTOM_BACKBONE,
            "timm_model_ids": list(VISION_BACKBONES["dinosiglip-vit-so-224px"]["timm_model_ids"]),
            "image_sizes": [image_size, image_size],
            "act_layers": [None, None],
            "timm_kwargs": [dict(vit), dict(vit)],
            "fused": True,
        },
        "num_images": 2,
        "projector": "fused-gelu-mlp",
        "llm": {
            **QWEN25_05B_TEXT_CONFIG,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_window_layers": 4,
            "max_position_embeddings": 1024,
            "vocab_size": vocab_size,
            "bos_token_id": vocab_size - 1,
            "eos_token_id": vocab_size - 1,
        },
        "num_action_queries": 16,
        "robot": "libero",
        "use_proprio": True,
        "head_version": "pro",
        "head_num_heads": 8,
        "attention": "causal",
        "tokenizer": tokenizer,
        "prompt": "openvla",  # what they were trained with; their tokenizers have no chat tokens
    }


#: The released LIBERO Pro architecture (e.g. VLA-Adapter/LIBERO-Spatial-Pro).
_RELEASED_PRO: dict[str, Any] = {
    "vision": {"backbone_id": "dinosiglip-vit-so-224px"},
    "num_images": 2,
    "projector": "fused-gelu-mlp",
    "llm": copy.deepcopy(QWEN25_05B_TEXT_CONFIG),
    "robot": "libero",
    "use_proprio": True,
    "head_version": "pro",
    "attention": "causal",
}

PRESETS: dict[str, dict[str, Any]] = {
    "vla-adapter-pro-qwen2.5-0.5b": _RELEASED_PRO,
    # Same with the v1 bridge-attention head.
    "vla-adapter-qwen2.5-0.5b": {**copy.deepcopy(_RELEASED_PRO), "head_version": "v1"},
    # Same topology (fused DINOv2 + SigLIP, 2 images, proprio) with tiny widths and depths.
    "tiny": {
        "vision": _tiny_vision(),
        "num_images": 2,
        "projector": "fused-gelu-mlp",
        "llm": _tiny_llm(),
        "robot": "libero",
        "use_proprio": True,
        "head_version": "pro",
        "attention": "causal",
    },
    # The models trained on the synthetic tabletop world (vla_lab.tabletop): the released topology with
    # 64-px images (4x4 patches of 16 px), a 4-layer 64-wide Qwen2, 16 action queries and the world
    # tokenizer's vocabulary (vla_lab.worlds.tabletop.build_world_tokenizer(); <|endoftext|> = 380).
    "tabletop": _small_trained(image_size=64, vocab_size=381, tokenizer="tabletop"),
    # The models vla-lab trains on its own LIBERO demonstrations on a CPU (vla_lab.libero): the same widths
    # and depths at 96 px (6x6 patches of 16 px per image and ViT), LIBERO's 8-step chunks, and the LIBERO
    # tokenizer (every word of the 130 LIBERO instructions is one token; <|endoftext|> = 587).
    "libero-small": _small_trained(image_size=96, vocab_size=588, tokenizer="libero"),
}
