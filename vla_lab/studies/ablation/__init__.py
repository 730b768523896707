"""Architecture ablations of VLA-Adapter: projector x vision backbone x LLM attention mask.

* :mod:`.grid` -- the variants, their configurations (small stand-in ViTs or the real backbones) and
  parameter counts; combinations the released design does not define stay in every table with a reason;
* :mod:`.cost` -- forward latency and the memory a forward needs (:class:`PeakMemory`);
* :mod:`.runs` -- short training runs from scratch on the tabletop world, closed-loop evaluation and
  where the action queries attend;
* :mod:`.trained` -- architectures trained with the full recipe, compared with the preset from their
  ``mask-swap`` study records (paired per seed);
* :mod:`.plots` -- figures of those tables (import it explicitly; the rest does not need matplotlib).
"""

from vla_lab.studies.ablation.cost import (
    PeakMemory,
    cost_table,
    equal_parameter_cost,
    forward_peak_bytes,
    measure_cost,
)
from vla_lab.studies.ablation.grid import (
    BACKBONES,
    DESIGNS,
    MASKS,
    PIVOT_BACKBONE,
    PIVOT_PROJECTOR,
    SCALES,
    Variant,
    deepened_config,
    is_fused,
    parameter_counts,
    parameter_table,
    skip_reason,
    stand_in_vision,
    unused_vision_parameters,
    variant_config,
    variant_grid,
)
from vla_lab.studies.ablation.runs import (
    TrainResult,
    VariantRun,
    action_query_attention,
    constant_l1,
    data_for,
    evaluate_variant,
    pooled_success,
    run_grid,
    run_variant,
    short_recipe,
    summarize_runs,
    train_variant,
    trainer_config,
    uniform_mass,
)
from vla_lab.studies.ablation.trained import PRESET, architecture_of_recipe, compare_to_preset, trained_summary

__all__ = [
    "BACKBONES",
    "DESIGNS",
    "MASKS",
    "PIVOT_BACKBONE",
    "PIVOT_PROJECTOR",
    "PRESET",
    "SCALES",
    "PeakMemory",
    "TrainResult",
    "Variant",
    "VariantRun",
    "action_query_attention",
    "architecture_of_recipe",
    "compare_to_preset",
    "constant_l1",
    "cost_table",
    "data_for",
    "deepened_config",
    "equal_parameter_cost",
    "evaluate_variant",
    "forward_peak_bytes",
    "is_fused",
    "measure_cost",
    "parameter_counts",
    "parameter_table",
    "pooled_success",
    "run_grid",
    "run_variant",
    "short_recipe",
    "skip_reason",
    "stand_in_vision",
    "summarize_runs",
    "train_variant",
    "trained_summary",
    "trainer_config",
    "uniform_mass",
    "unused_vision_parameters",
    "variant_config",
    "variant_grid",
]
