"""LIBERO: the benchmark VLA-Adapter was trained and evaluated on (optional: ``pip install -e '.[libero]'``).

* :mod:`.observation` -- upstream's observation and action processing (180-degree rotation, TF's JPEG round
  trip and antialiased Lanczos-3 resize, the 8-d state, gripper post-processing) restated in numpy;
* :mod:`.env` -- one task's simulator as upstream drives it, object masks, observations without a policy;
* :mod:`.evaluate` -- upstream's closed-loop protocol, resumable and sharded (``vla-lab eval libero``);
* :mod:`.expert` -- a scripted pick-and-place expert on privileged state (``vla-lab libero expert``);
* :mod:`.demos` -- its demonstrations in LIBERO's HDF5 layout (``vla-lab libero demos``);
* :mod:`.data` -- training batches from them (the evaluation's image steps, upstream's random crop);
* :mod:`.tokenizer`, :mod:`.models` -- the LIBERO tokenizer and vla-lab's LIBERO models (``libero-spatial-<mask>``);
* :mod:`.target_attention` -- attention on the target object's patches in real frames.

The simulator itself is imported on first use only. (The run function is ``vla_lab.libero.evaluate.evaluate``;
it is not re-exported here, where its name would hide its module.)
"""

from vla_lab.libero.env import (
    MAX_STEPS,
    SUITES,
    LiberoEnv,
    num_tasks,
    object_masks,
    object_segmentation,
    observations,
    require_libero,
    task_info,
)
from vla_lab.libero.evaluate import model_policy, run_episode, summarize, unnorm_key_for
from vla_lab.libero.observation import (
    jpeg_round_trip,
    prepare_observation,
    process_action,
    quat2axisangle,
    resize_image_for_policy,
)

__all__ = [
    "MAX_STEPS",
    "SUITES",
    "LiberoEnv",
    "jpeg_round_trip",
    "model_policy",
    "num_tasks",
    "object_masks",
    "object_segmentation",
    "observations",
    "prepare_observation",
    "process_action",
    "quat2axisangle",
    "require_libero",
    "resize_image_for_policy",
    "run_episode",
    "summarize",
    "task_info",
    "unnorm_key_for",
]
