"""LIBERO, the benchmark the released VLA-Adapters were trained and evaluated on.

* :mod:`.observation` -- upstream's observation and action processing (180-degree rotation, TF's JPEG round
  trip and antialiased Lanczos-3 resize, the 8-d state, gripper post-processing) restated in numpy.
"""

from vla_lab.libero.observation import (
    jpeg_round_trip,
    prepare_observation,
    process_action,
    quat2axisangle,
    resize_image_for_policy,
)

__all__ = [
    "jpeg_round_trip",
    "prepare_observation",
    "process_action",
    "quat2axisangle",
    "resize_image_for_policy",
]
