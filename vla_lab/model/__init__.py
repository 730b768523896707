"""The VLA-Adapter model as released, stage by stage.

pixels -> patches (:mod:`.vision`) -> embeddings (:mod:`.projector`) -> sequence (:mod:`.sequence`)
-> LLM (:mod:`.llm`) -> bridge-attention head (:mod:`.action_head`) -> actions, wired in :mod:`.vla`;
:mod:`.checkpoint` reads and writes the released files, :mod:`.inputs` checks what ``forward`` takes,
:mod:`.fast` is the same computation for speed, :mod:`.seeded` builds models with seeded random weights.
"""

from vla_lab.model.checkpoint import default_dtype, stored_prompt
from vla_lab.model.fast import FastVLA
from vla_lab.model.inputs import FORWARD_KEYS, forward_inputs
from vla_lab.model.seeded import random_model
from vla_lab.model.sequence import AssemblyPlan, SequenceLayout, Span
from vla_lab.model.vla import (
    ActionPrediction,
    VLAAdapter,
    VLAOutput,
    load_pretrained,
    meta_model,
    save_pretrained,
)

__all__ = [
    "FORWARD_KEYS",
    "ActionPrediction",
    "AssemblyPlan",
    "FastVLA",
    "SequenceLayout",
    "Span",
    "VLAAdapter",
    "VLAOutput",
    "meta_model",
    "random_model",
    "default_dtype",
    "forward_inputs",
    "load_pretrained",
    "save_pretrained",
    "stored_prompt",
]
