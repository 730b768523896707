"""vla-lab: the VLA-Adapter vision-language-action model, as released, with tools to look inside it."""

from vla_lab.config import RobotConfig, VisionConfig, VLAConfig
from vla_lab.model import ActionPrediction, VLAAdapter, VLAOutput
from vla_lab.sequence import AttentionSpec, SequenceLayout, Span

__version__ = "0.1.0"

__all__ = [
    "ActionPrediction",
    "AttentionSpec",
    "RobotConfig",
    "SequenceLayout",
    "Span",
    "VLAAdapter",
    "VLAConfig",
    "VLAOutput",
    "VisionConfig",
    "__version__",
]
