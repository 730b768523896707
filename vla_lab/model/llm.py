"""The language model: a stock transformers Qwen2, run layer by layer under our own 4-D mask.

The module tree is transformers' ``Qwen2ForCausalLM`` (keys ``language_model.model.*``), but the
forward is ours: embeddings in, hidden states out, no logits (the action head never reads them).
Hidden states are numbered by ``hidden_index``, transformers' convention that upstream relied on:
0 is the embedding output, i the output of decoder ``layer`` i - 1, and the last one is after the
final RMSNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from vla_lab.config.registry import ATTENTION_KERNELS
from vla_lab.errors import InputError

#: Called after every decoder layer with (layer, hidden state); may return a replacement.
LayerCallback = Callable[[int, torch.Tensor], "torch.Tensor | None"]
Kept = TypeVar("Kept")


def build_language_model(llm_config: dict[str, Any], attn_kernel: str = "sdpa") -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM from a text-config dict."""
    config = Qwen2Config(**{k: v for k, v in llm_config.items() if k != "model_type"})
    config._attn_implementation = attn_kernel
    return Qwen2ForCausalLM(config)


def set_attention_kernel(language_model: Qwen2ForCausalLM, kernel: str) -> None:
    """Switch transformers' attention function (``sdpa``, ``eager`` or a registered one) on the same weights."""
    language_model.config._attn_implementation = kernel
    language_model.model.config._attn_implementation = kernel


def check_kernel(kernel: str) -> str:
    if kernel not in ATTENTION_KERNELS:
        raise InputError(f"attn_kernel: got {kernel!r}, expected one of {ATTENTION_KERNELS}")
    return kernel


def rotary_embeddings(language_model: Qwen2ForCausalLM, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM's RoPE (cos, sin) for positions 0..S-1 of ``like`` (B, S, C)."""
    position_ids = torch.arange(like.shape[1], device=like.device)[None]
    cos, sin = language_model.model.rotary_emb(like, position_ids)
    return cos, sin


def run_decoder(
    language_model: Qwen2ForCausalLM,
    inputs_embeds: torch.Tensor,
    mask: torch.Tensor,
    *,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_layer: LayerCallback | None = None,
    keep: Callable[[torch.Tensor], Kept] | None = None,
    **attention_kwargs: Any,
) -> list[Kept]:
    """Run every decoder layer; return ``keep(state)`` for every hidden_index 0..L (the state itself by default).

    ``mask`` is already in the form the layers' kernel takes (:func:`vla_lab.model.sequence.mask_for_kernel`).
    ``on_layer`` sees (and may replace) each layer's output before the final norm; ``attention_kwargs``
    reach the attention function (capture hooks use them). ``keep`` lets a caller hold only what it
    needs of each state (the fast path keeps the positions the head reads).
    """
    decoder = language_model.model
    select: Callable[[torch.Tensor], Any] = keep if keep is not None else (lambda state: state)
    masks = {"full_attention": mask, "sliding_attention": mask}
    position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None]
    if position_embeddings is None:
        position_embeddings = rotary_embeddings(language_model, inputs_embeds)
    layer_types = getattr(decoder.config, "layer_types", None) or ["full_attention"] * len(decoder.layers)
    hidden = inputs_embeds
    kept = [select(hidden)]
    last = len(decoder.layers) - 1
    for layer, block in enumerate(decoder.layers):
        hidden = block(
            hidden,
            attention_mask=masks[layer_types[layer]],
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            **attention_kwargs,
        )
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        if on_layer is not None:
            replaced = on_layer(layer, hidden)
            hidden = hidden if replaced is None else replaced
        kept.append(select(decoder.norm(hidden) if layer == last else hidden))
    return kept


def count_parameters(module: nn.Module | None) -> int:
    """Parameters of a module (tied weights counted once, as ``parameters()`` does)."""
    return sum(p.numel() for p in module.parameters()) if module is not None else 0
