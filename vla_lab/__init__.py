"""vla-lab: the VLA-Adapter vision-language-action model, as released, with tools to look inside it.

The package follows the data path: :mod:`vla_lab.config` (what a model is) -> :mod:`vla_lab.processing`
(observations -> inputs) -> :mod:`vla_lab.worlds` (model-free environments: the tabletop and LIBERO) ->
:mod:`vla_lab.model` (pixels -> patches -> sequence -> LLM -> head -> actions, and the released checkpoint
files) -> :mod:`vla_lab.policy` (a model acting in a world) -> :mod:`vla_lab.interp` (capture and analyses) ->
:mod:`vla_lab.viz` (figures, export, report) -> :mod:`vla_lab.tabletop` / :mod:`vla_lab.libero` (models in each
world) -> :mod:`vla_lab.registry` (every model by name) -> :mod:`vla_lab.training` / :mod:`vla_lab.bench` ->
:mod:`vla_lab.studies` (studies over many episodes, ablations, the demo) -> :mod:`vla_lab.cli`.
Each layer imports only the ones before it.
"""

from vla_lab.config import PRESETS, AttentionSpec, RobotConfig, VisionConfig, VLAConfig
from vla_lab.interp import ActivationCache, capture, run_with_cache
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
from vla_lab.version import __version__

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
