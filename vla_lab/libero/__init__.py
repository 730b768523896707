"""LIBERO: the benchmark VLA-Adapter was trained and evaluated on (optional: ``pip install -e '.[libero]'``).

* :mod:`.observation` -- a LIBERO observation as the policy's inputs, the policy's actions as LIBERO's;
* :mod:`.env` -- one task's simulator as upstream drives it, object masks, observations without a policy;
* :mod:`.evaluate` -- upstream's closed-loop protocol, resumable and sharded (``vla-lab eval libero``).

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
from vla_lab.libero.observation import prepare_observation, process_action

__all__ = [
    "MAX_STEPS",
    "SUITES",
    "LiberoEnv",
    "model_policy",
    "num_tasks",
    "object_masks",
    "object_segmentation",
    "observations",
    "prepare_observation",
    "process_action",
    "require_libero",
    "run_episode",
    "summarize",
    "task_info",
    "unnorm_key_for",
]
