"""The language model: a stock transformers Qwen2, run layer by layer under our own 4-D mask.

The module tree is transformers' ``Qwen2ForCausalLM`` (keys ``language_model.model.*``), but the
forward is ours: embeddings in, every hidden state out, no logits (the action head never reads
them). Hidden states follow transformers' convention that upstream relied on: index 0 is the
embedding output, index i the output of layer i, and the last one is after the final RMSNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from vla_lab.sequence import additive_mask

#: Called after every decoder layer with (layer index, hidden state); may return a replacement.
LayerCallback = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def build_language_model(llm_config: dict[str, Any], attn_kernel: str = "sdpa") -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM from a text-config dict."""
    config = Qwen2Config(**{k: v for k, v in llm_config.items() if k != "model_type"})
    config._attn_implementation = attn_kernel
    return Qwen2ForCausalLM(config)


def set_attention_kernel(language_model: Qwen2ForCausalLM, kernel: str) -> None:
    """Switch between transformers' ``sdpa`` and ``eager`` attention on the same weights."""
    language_model.config._attn_implementation = kernel
    language_model.model.config._attn_implementation = kernel


def mask_for_kernel(allowed: torch.Tensor, kernel: str, dtype: torch.dtype) -> torch.Tensor:
    """Our (B, S, S) boolean mask in the form the kernel takes: boolean for SDPA, additive for eager."""
    if kernel == "eager":
        return additive_mask(allowed, dtype)
    return allowed[:, None]


def run_decoder(
    language_model: Qwen2ForCausalLM,
    inputs_embeds: torch.Tensor,
    allowed: torch.Tensor,
    kernel: str | None = None,
    on_layer: LayerCallback | None = None,
    **attention_kwargs: Any,
) -> list[torch.Tensor]:
    """Run every decoder layer; return the ``num_layers + 1`` hidden states.

    ``allowed`` is the (B, S, S) boolean mask from :func:`vla_lab.sequence.allowed_matrix`, handed
    to the layers in the form ``kernel`` takes (default: the model's attention implementation).
    ``on_layer`` sees (and may replace) each layer's output; ``attention_kwargs`` reach the
    attention function (capture hooks use them).
    """
    decoder = language_model.model
    kernel = kernel or decoder.config._attn_implementation
    mask = mask_for_kernel(allowed, kernel, inputs_embeds.dtype)
    masks = {"full_attention": mask, "sliding_attention": mask}
    seq = inputs_embeds.shape[1]
    position_ids = torch.arange(seq, device=inputs_embeds.device)[None]
    position_embeddings = decoder.rotary_emb(inputs_embeds, position_ids)
    hidden = inputs_embeds
    states = [hidden]
    layer_types = getattr(decoder.config, "layer_types", None) or ["full_attention"] * len(decoder.layers)
    for index, layer in enumerate(decoder.layers):
        hidden = layer(
            hidden,
            attention_mask=masks[layer_types[index]],
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            **attention_kwargs,
        )
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        if on_layer is not None:
            replaced = on_layer(index, hidden)
            hidden = hidden if replaced is None else replaced
        states.append(hidden)
    states[-1] = decoder.norm(hidden)
    return states


def count_llm_parameters(language_model: nn.Module) -> int:
    """Parameters of the LLM with tied embeddings counted once."""
    return sum(p.numel() for p in language_model.parameters())
