"""vla-lab: the VLA-Adapter vision-language-action model, as released, with tools to look inside it."""

from vla_lab.config import PRESETS, RobotConfig, VisionConfig, VLAConfig
from vla_lab.model import ActionPrediction, VLAAdapter, VLAOutput, build_random
from vla_lab.sequence import AttentionSpec, SequenceLayout, Span

__version__ = "0.1.0"

# Stages that pull in more dependencies are imported after the core.
from vla_lab.capture import ActivationCache, capture, run_with_cache  # noqa: E402
from vla_lab.checkpoint import load_pretrained, save_pretrained  # noqa: E402
from vla_lab.tokenizer import load_qwen25_tokenizer  # noqa: E402

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
    "build_random",
    "capture",
    "load_pretrained",
    "load_qwen25_tokenizer",
    "run_with_cache",
    "save_pretrained",
]
