"""Looking inside a model: capture every layer under one hook grammar, then analyse the cache.

* :mod:`.hooks` -- the hook names; :mod:`.capture` -- :func:`capture` / :func:`run_with_cache` and the
  :class:`ActivationCache`;
* :mod:`.attention` -- where the LLM's attention goes (segment mass, patches, entropy, rollout, mask audit);
* :mod:`.interventions` -- two masks on the same input, blocked paths, patched states;
* :mod:`.head` -- the bridge-attention head: key groups, gates, task patches, ablations of its inputs;
* :mod:`.regions` -- attention on image regions (target vs distractors);
* :mod:`.target_attention` -- the target-attention measurement of every world (depth chosen on one set of
  episodes, reported on another, with its interval and paired test).

Every analysis returns a tidy (long) DataFrame. Depth vocabulary: ``layer`` (LLM decoder layer, 0-based),
``hidden_index`` (0 = embeddings), ``block`` (action-head block; block b reads hidden_index b + 1).
"""

from vla_lab.interp import target_attention
from vla_lab.interp.attention import (
    MaskAudit,
    attention_entropy,
    attention_rollout,
    mask_audit,
    patch_grid,
    query_patch_attention,
    rollout_maps,
    segment_mass,
    segment_mass_summary,
    segment_positions,
)
from vla_lab.interp.capture import ActivationCache, capture, estimate_full_bytes, run_with_cache
from vla_lab.interp.head import (
    head_attention,
    head_forward,
    head_parameter_parts,
    head_states,
    head_task_patch_attention,
    key_group_sizes,
    path_ablation,
)
from vla_lab.interp.hooks import head_hook, llm_hook, vision_hook
from vla_lab.interp.interventions import (
    InterventionResult,
    MaskComparison,
    block_paths,
    compare_masks,
    intervene,
    patch_segments_from,
)
from vla_lab.interp.regions import (
    SOURCE_DEPTH,
    SOURCES,
    depth_column,
    pooled_ratio,
    region_attention,
    region_values,
    scene_ratio,
    source_patch_attention,
)

__all__ = [
    "SOURCES",
    "SOURCE_DEPTH",
    "ActivationCache",
    "InterventionResult",
    "MaskAudit",
    "MaskComparison",
    "attention_entropy",
    "attention_rollout",
    "block_paths",
    "capture",
    "compare_masks",
    "depth_column",
    "estimate_full_bytes",
    "head_attention",
    "head_forward",
    "head_hook",
    "head_parameter_parts",
    "head_states",
    "head_task_patch_attention",
    "intervene",
    "key_group_sizes",
    "llm_hook",
    "mask_audit",
    "patch_grid",
    "patch_segments_from",
    "path_ablation",
    "pooled_ratio",
    "query_patch_attention",
    "source_patch_attention",
    "region_attention",
    "target_attention",
    "region_values",
    "rollout_maps",
    "run_with_cache",
    "scene_ratio",
    "segment_mass",
    "segment_mass_summary",
    "segment_positions",
    "vision_hook",
]
