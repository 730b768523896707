"""VLA-Adapters that act in the tabletop world (the world itself, model-free, is :mod:`vla_lab.worlds.tabletop`).

* :mod:`.models` -- the ``tabletop`` architecture, initialisation, the two shipped models, example inputs;
* :mod:`.data` -- training examples as model batches;
* :mod:`.evaluate` -- a model acting in the world (batched closed loop, held-out action L1);
* :mod:`.target_attention` -- attention on the target vs the distractors.
"""

from vla_lab.tabletop.data import MIN_LABEL_PIXELS, TabletopData, patch_labels, pixel_values
from vla_lab.tabletop.evaluate import action_l1, evaluate_model, evaluate_scenes, policy_for, predict, scene_inputs
from vla_lab.tabletop.models import (
    DATASET,
    EXAMPLE_SEED,
    INITS,
    MASKS,
    RECIPES,
    STATS_EXAMPLES,
    check_config,
    example_inputs,
    example_outlines,
    init_for_training,
    initial_model,
    load_shipped,
    shipped_name,
    shipped_path,
    sincos_position_embedding,
    stats_key,
    tabletop_config,
    world_config,
    world_processor,
    world_statistics,
)

__all__ = [
    "DATASET",
    "EXAMPLE_SEED",
    "INITS",
    "MASKS",
    "RECIPES",
    "MIN_LABEL_PIXELS",
    "STATS_EXAMPLES",
    "TabletopData",
    "action_l1",
    "initial_model",
    "check_config",
    "evaluate_model",
    "evaluate_scenes",
    "example_inputs",
    "example_outlines",
    "init_for_training",
    "load_shipped",
    "patch_labels",
    "pixel_values",
    "policy_for",
    "predict",
    "scene_inputs",
    "shipped_name",
    "shipped_path",
    "sincos_position_embedding",
    "stats_key",
    "tabletop_config",
    "world_config",
    "world_processor",
    "world_statistics",
]
