"""Studies at scale: models x conditions x scenes -> per-scene records -> summaries with 95 % intervals.

``vla-lab study NAME`` runs one (sharded under ``torchrun``); :func:`run_study` is the same in Python.
Studies: ``mask-swap``, ``knockout``, ``target-attention``, ``patching``, ``target-knockout`` and
``instruction-swap`` (see each module).
"""

from vla_lab.registry import ModelSpec, random_init_of, shipped_specs
from vla_lab.studies import (
    instruction_swap,
    knockout,
    mask_swap,
    patching,
    target_attention,
    target_knockout,
)
from vla_lab.studies.engine import (
    STUDIES,
    Study,
    StudyResult,
    StudySettings,
    Unit,
    register_study,
    run_study,
)
from vla_lab.studies.records import VERIFY_ATOL, VERIFY_RTOL, load_result, load_results, summary_table, verify_records

__all__ = [
    "STUDIES",
    "VERIFY_ATOL",
    "VERIFY_RTOL",
    "ModelSpec",
    "Study",
    "StudyResult",
    "StudySettings",
    "Unit",
    "instruction_swap",
    "knockout",
    "load_result",
    "load_results",
    "mask_swap",
    "patching",
    "random_init_of",
    "register_study",
    "run_study",
    "shipped_specs",
    "summary_table",
    "target_attention",
    "target_knockout",
    "verify_records",
]
