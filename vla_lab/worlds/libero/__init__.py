"""LIBERO, model-free: the simulator as upstream's evaluation drives it, upstream's observation and action
processing, object regions, the scripted expert and the LIBERO word tokenizer (optional:
``pip install -e '.[libero]'``; the simulator is imported on first use only).

* :mod:`.observation` -- upstream's observation and action processing (180-degree rotation, TF's JPEG round
  trip and antialiased Lanczos-3 resize, the 8-d state, gripper post-processing) restated in numpy;
* :mod:`.suites` -- the benchmark's suites and LIBERO-PRO / LIBERO-Plus perturbation suites;
* :mod:`.compiled` -- the last compiled scene of the process, kept (a scene is compiled once, not twice per simulator);
* :mod:`.env` -- one task's simulator (:class:`LiberoEnv`), object masks, observations without a policy;
* :mod:`.world` -- a suite as a :class:`vla_lab.worlds.World` (:class:`LiberoWorld`);
* :mod:`.expert` -- a scripted pick-and-place expert on privileged state;
* :mod:`.tokenizer` -- the tokenizer of vla-lab's LIBERO models.
"""

from vla_lab.worlds.libero.compiled import keep_compiled
from vla_lab.worlds.libero.env import (
    LiberoEnv,
    keep_simulators,
    num_tasks,
    object_segmentation,
    require_libero,
    task_info,
)
from vla_lab.worlds.libero.observation import (
    jpeg_round_trip,
    prepare_observation,
    process_action,
    quat2axisangle,
    resize_image_for_policy,
)
from vla_lab.worlds.libero.suites import (
    ALL_SUITES,
    MAX_STEPS,
    PERTURBATION_SUITES,
    PERTURBATIONS,
    SUITES,
    base_suite,
    perturbation,
)
from vla_lab.worlds.libero.world import LiberoWorld, episode_regions

__all__ = [
    "ALL_SUITES",
    "MAX_STEPS",
    "PERTURBATIONS",
    "PERTURBATION_SUITES",
    "SUITES",
    "base_suite",
    "perturbation",
    "LiberoEnv",
    "LiberoWorld",
    "episode_regions",
    "jpeg_round_trip",
    "keep_compiled",
    "keep_simulators",
    "num_tasks",
    "object_segmentation",
    "prepare_observation",
    "process_action",
    "quat2axisangle",
    "require_libero",
    "resize_image_for_policy",
    "task_info",
]
