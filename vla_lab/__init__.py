"""vla-lab: the VLA-Adapter vision-language-action model, as released, with tools to look inside it.

The package follows the data path: :mod:`vla_lab.config` (what a model is) -> :mod:`vla_lab.processing`
(observations -> inputs) -> :mod:`vla_lab.worlds` (model-free environments: the tabletop and LIBERO) ->
:mod:`vla_lab.model` (pixels -> patches -> sequence -> LLM -> head -> actions, and the released checkpoint
files) -> :mod:`vla_lab.policy` (a model acting in a world) -> :mod:`vla_lab.interp` (capture and analyses) ->
:mod:`vla_lab.viz` (figures, export, report) -> :mod:`vla_lab.tabletop` / :mod:`vla_lab.libero` (models in each
world) -> :mod:`vla_lab.registry` (every model by name) -> :mod:`vla_lab.training` / :mod:`vla_lab.bench` ->
:mod:`vla_lab.studies` (studies over many episodes, ablations, the demo) -> :mod:`vla_lab.cli`.
Each layer imports only the ones before it.

The names below are imported on first use (PEP 562), so ``import vla_lab`` is instant and the command line
(:mod:`vla_lab.__main__`) can honour Ctrl-C while torch and transformers load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vla_lab.version import __version__

if TYPE_CHECKING:
    from vla_lab.config import PRESETS, AttentionSpec, RobotConfig, VisionConfig, VLAConfig
    from vla_lab.interp import ActivationCache, run_with_cache
    from vla_lab.interp.capture import capture
    from vla_lab.model import (
        ActionPrediction,
        SequenceLayout,
        Span,
        VLAAdapter,
        VLAOutput,
        load_pretrained,
        random_model,
        save_pretrained,
    )
    from vla_lab.processing import load_qwen25_tokenizer

_SOURCES = {
    "vla_lab.config": ("PRESETS", "AttentionSpec", "RobotConfig", "VisionConfig", "VLAConfig"),
    "vla_lab.interp": ("ActivationCache", "capture", "run_with_cache"),
    "vla_lab.model": ("ActionPrediction", "SequenceLayout", "Span", "VLAAdapter", "VLAOutput", "load_pretrained",
                      "random_model", "save_pretrained"),
    "vla_lab.processing": ("load_qwen25_tokenizer",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'vla_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


__all__ = [
    "PRESETS",
    "ActionPrediction",
    "ActivationCache",
    "AttentionSpec",
    "RobotConfig",
    "SequenceLayout",
    "Span",
    "VLAAdapter",
    "VLAConfig",
    "VLAOutput",
    "VisionConfig",
    "__version__",
    "random_model",
    "capture",
    "load_pretrained",
    "load_qwen25_tokenizer",
    "run_with_cache",
    "save_pretrained",
]
