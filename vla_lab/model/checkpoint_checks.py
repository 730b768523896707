"""How the released files name our parameters, and the checks a checkpoint passes before a model is built.

A checkpoint is refused, with one line naming the file, the field and both values, when ``config.json``
is not in the released layout, when it and ``vla_lab_config.json`` disagree, when the configuration asks
for more layers than the weights hold, when a tensor is NaN or infinite, or when keys or shapes differ
from the model's (all such differences together, in :func:`mismatches`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vla_lab.config import VLAConfig
from vla_lab.errors import CheckpointError

VLA_LAB_CONFIG = "vla_lab_config.json"

# Our parameter name <-> the released file's name (regex on ours, replacement).
_LAYERSCALE = (re.compile(r"^(vision_backbone\.\w+\.blocks\.\d+\.ls[12])\.gamma$"), r"\1.scale_factor")
_LAYERSCALE_BACK = (re.compile(r"^(vision_backbone\.\w+\.blocks\.\d+\.ls[12])\.scale_factor$"), r"\1.gamma")


def to_released_key(name: str) -> str:
    """timm's LayerScale ``gamma`` is stored as ``scale_factor`` (transformers renames ``gamma``)."""
    return _LAYERSCALE[0].sub(_LAYERSCALE[1], name)


def from_released_key(name: str) -> str:
    return _LAYERSCALE_BACK[0].sub(_LAYERSCALE_BACK[1], name)


def mismatches(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` against the ``expected`` shapes, named as in the files."""
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])

    def listing(keys: list[str]) -> str:
        shown = ", ".join(to_released_key(k) for k in keys[:6])
        return shown + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

    if missing:
        problems.append(f"missing {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {listing(unexpected)}")
    if shaped:
        details = [f"{to_released_key(k)} {tuple(state[k].shape)} vs {expected[k]}" for k in shaped[:6]]
        problems.append("mis-shaped " + ", ".join(details) + (f" ({len(shaped)} in all)" if len(shaped) > 6 else ""))
    return problems


def check_released_layout(config_json: Any) -> None:
    """``config.json`` is what upstream's code reads: it must describe a model even beside vla_lab_config.json."""
    if not isinstance(config_json, dict):
        raise CheckpointError(f"checkpoint: config.json holds a JSON {type(config_json).__name__}, expected an object")
    expected = {"timm_model_ids": list, "vision_backbone_id": str, "image_sizes": list, "text_config": dict}
    for key, kind in expected.items():
        if key not in config_json:
            raise CheckpointError(f"checkpoint: config.json lacks {key!r}, expected the released layout")
        if not isinstance(config_json[key], kind):
            kind_name = {"dict": "object", "list": "array", "str": "string"}[kind.__name__]
            raise CheckpointError(
                f"checkpoint: config.json {key}: got {repr(config_json[key])[:60]}, expected a JSON {kind_name}"
            )


# Fields of config.json that vla_lab_config.json also holds: (config.json path, our path, our value).
def _shared_fields(config: VLAConfig) -> list[tuple[tuple[str, ...], str, Any]]:
    vision = config.vision
    fields: list[tuple[tuple[str, ...], str, Any]] = [
        (("timm_model_ids",), "vision.timm_model_ids", list(vision.timm_model_ids)),
        (("image_sizes",), "vision.image_sizes", list(vision.image_sizes)),
        (("use_fused_vision_backbone",), "vision.fused", bool(vision.fused)),
    ]
    fields += [(("text_config", key), f"llm.{key}", value) for key, value in config.llm.items()]
    return fields


def check_configs_agree(config_json: dict[str, Any], config: VLAConfig) -> None:
    """``config.json`` (what upstream's code reads) and ``vla_lab_config.json`` describe the same model.

    Every field both files hold must be equal; a disagreement is a CheckpointError naming both values.
    """
    for path, ours, value in _shared_fields(config):
        theirs: Any = config_json
        for key in path:
            theirs = theirs.get(key) if isinstance(theirs, dict) else None
        if theirs is None:
            continue
        if theirs != value:
            raise CheckpointError(
                f"checkpoint: config.json {'.'.join(path)} is {theirs!r} but {VLA_LAB_CONFIG} {ours} is {value!r}; "
                "expected the two files to describe the same model"
            )


_LLM_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.")
_HEAD_BLOCK = re.compile(r"^action_head\.model\.mlp_resnet_blocks\.(\d+)\.")


def check_sizes(config: VLAConfig, state: dict[str, torch.Tensor]) -> None:
    """The configuration's layer count against the weights, before a model is built from it.

    A configuration that asks for more layers than the files hold is refused here, naming both numbers,
    instead of building modules the weights cannot fill (shapes are compared afterwards, all together).
    """
    counts = {
        "LLM layers": ({int(m.group(1)) for k in state if (m := _LLM_LAYER.match(k))}, "llm.num_hidden_layers"),
        "action-head blocks": ({int(m.group(1)) for k in state if (m := _HEAD_BLOCK.match(k))},
                               "llm.num_hidden_layers (one head block per LLM layer)"),
    }
    for what, (found, field) in counts.items():
        if found and len(found) != config.num_llm_layers:
            raise CheckpointError(
                f"checkpoint: {field} is {config.num_llm_layers} but the weights hold {len(found)} {what}"
            )


def _named(keys: list[str]) -> str:
    shown = ", ".join(to_released_key(k) for k in keys[:3])
    return shown + (f" ({len(keys)} tensors in all)" if len(keys) > 3 else "")


def check_finite(state: dict[str, torch.Tensor], field: str = "checkpoint") -> None:
    """Refuse weights holding NaN or infinite values, naming the first tensors that do (``field`` starts the
    message: ``checkpoint`` when loading, ``save_pretrained`` when writing)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{field}: weights hold NaN or infinite values in {_named(bad)}; expected finite "
                              "numbers")


def check_floating(state: dict[str, torch.Tensor]) -> None:
    """Refuse weight tensors that are not floating point (every weight of the model is): loading an integer
    tensor would silently round what it was meant to hold."""
    bad = [k for k, v in state.items() if not v.is_floating_point()]
    if bad:
        dtypes = sorted({str(state[k].dtype).removeprefix("torch.") for k in bad})
        raise CheckpointError(f"checkpoint: weights hold {', '.join(dtypes)} tensors in {_named(bad)}; expected "
                              "floating-point weights")
