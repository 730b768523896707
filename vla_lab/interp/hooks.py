"""The one grammar of hook names, and the functions that build them.

Hook names follow the module path of what they record, TransformerLens-style::

    llm.hook_embed                          llm.blocks.{layer}.hook_resid_post       llm.hook_norm_final
    llm.blocks.{layer}.attn.hook_{pattern|q|k|segment_pattern|query_profile|entropy|future_mass|head_mean}
    vision.{featurizer|fused_featurizer}.blocks.{layer}.attn.hook_pattern
    head.hook_{task_states|query_states|actions}   head.blocks.{block}.hook_{pattern|gate}

``layer`` is a decoder layer of the LLM (or a ViT block), 0-based; ``block`` a bridge block of the
action head. Either may be ``"*"`` to build a glob for :meth:`ActivationCache.names` /
:meth:`ActivationCache.stack`.
"""

from __future__ import annotations

import re

from vla_lab.errors import InputError

#: Hooks of the LLM outside its layers, of each layer, and of each layer's attention.
LLM_HOOKS = ("embed", "norm_final")
LLM_LAYER_HOOKS = ("resid_post",)
LLM_ATTENTION_HOOKS = ("pattern", "q", "k", "segment_pattern", "query_profile", "entropy", "future_mass", "head_mean")
#: Hooks of the action head outside its blocks, and of each block.
HEAD_HOOKS = ("task_states", "query_states", "actions")
HEAD_BLOCK_HOOKS = ("pattern", "gate")
FEATURIZERS = ("featurizer", "fused_featurizer")
#: The hooks whose tensors a capture can replace (``patches=``).
PATCHABLE = re.compile(r"llm\.(hook_embed|blocks\.\d+\.hook_resid_post)")

Index = int | str | None


def _index(value: Index, what: str) -> str:
    if value is None:
        raise InputError(f"{what}: got None, expected an index or '*'")
    if value != "*" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InputError(f"{what}: got {value!r}, expected a non-negative integer or '*'")
    return str(value)


def llm_hook(name: str, layer: Index = None) -> str:
    """``llm_hook("embed")``, ``llm_hook("resid_post", 3)``, ``llm_hook("pattern", 3)``, ``llm_hook("q", "*")``."""
    if name in LLM_HOOKS:
        if layer is not None:
            raise InputError(f"llm hook {name!r}: got layer={layer!r}, expected none")
        return f"llm.hook_{name}"
    if name in LLM_LAYER_HOOKS:
        return f"llm.blocks.{_index(layer, 'layer')}.hook_{name}"
    if name in LLM_ATTENTION_HOOKS:
        return f"llm.blocks.{_index(layer, 'layer')}.attn.hook_{name}"
    raise InputError(f"llm hook: got {name!r}, expected one of {LLM_HOOKS + LLM_LAYER_HOOKS + LLM_ATTENTION_HOOKS}")


def head_hook(name: str, block: Index = None) -> str:
    """``head_hook("actions")``, ``head_hook("pattern", 2)``, ``head_hook("gate", "*")``."""
    if name in HEAD_HOOKS:
        if block is not None:
            raise InputError(f"head hook {name!r}: got block={block!r}, expected none")
        return f"head.hook_{name}"
    if name in HEAD_BLOCK_HOOKS:
        return f"head.blocks.{_index(block, 'block')}.hook_{name}"
    raise InputError(f"head hook: got {name!r}, expected one of {HEAD_HOOKS + HEAD_BLOCK_HOOKS}")


def vision_hook(featurizer: str, layer: Index) -> str:
    """Attention probabilities of one ViT block: ``vision_hook("featurizer", 5)``."""
    if featurizer not in FEATURIZERS:
        raise InputError(f"featurizer: got {featurizer!r}, expected one of {FEATURIZERS}")
    return f"vision.{featurizer}.blocks.{_index(layer, 'layer')}.attn.hook_pattern"


def hook_names(num_layers: int, num_blocks: int, vision_blocks: dict[str, int] | None = None) -> list[str]:
    """Every hook name a model with these sizes can record (``vision_blocks``: featurizer -> its block count)."""
    names = [llm_hook(n) for n in LLM_HOOKS]
    for layer in range(num_layers):
        names += [llm_hook(n, layer) for n in LLM_LAYER_HOOKS + LLM_ATTENTION_HOOKS]
    names += [head_hook(n) for n in HEAD_HOOKS]
    for block in range(num_blocks):
        names += [head_hook(n, block) for n in HEAD_BLOCK_HOOKS]
    for featurizer, count in (vision_blocks or {}).items():
        names += [vision_hook(featurizer, layer) for layer in range(count)]
    return names
