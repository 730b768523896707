"""FIXTURE GENERATOR for tests/data/libero_sim_fixtures.npz -- not a test, never imported by the tests.

Upstream's LIBERO observation pipeline, computed with TensorFlow (which vla-lab does not depend on), on real
frames of the LIBERO simulator: ``libero_sim_observations.npz`` holds the raw 256x256 agentview and wrist
frames and the robot state of four scenes (libero_spatial task 0, libero_object task 3, libero_goal task 5,
libero_10 task 1; init state 0, the 10 settle steps, then 5 steps of a fixed action), rendered by
``vla_lab.worlds.libero.LiberoEnv`` with the ``libero`` extra (robosuite 1.4.0, MuJoCo 2.3.7, EGL on the CPU).
For each scene this writes what upstream's evaluation gives the policy: both images rotated by 180 degrees,
JPEG round trip, Lanczos-3 antialiased resize to 224, round and clip; the 8-d state with robosuite's
``quat2axisangle`` (both taken from ``make_libero_fixtures.py``). Run it with a throwaway environment:

    python3.11 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    cd <repository root> && /tmp/tfvenv/bin/python tests/data/make_libero_sim_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from make_libero_fixtures import robosuite_quat2axisangle, tf_resize_for_policy  # the same TF pipeline

HERE = Path(__file__).resolve().parent


def main() -> None:
    raw = np.load(HERE / "libero_sim_observations.npz")
    scenes = sorted({k.rsplit("_agentview", 1)[0] for k in raw.files if k.endswith("_agentview")})
    out: dict[str, np.ndarray] = {"scenes": np.array(scenes)}
    for scene in scenes:
        for camera, key in (("agentview", "full_image"), ("wrist", "wrist_image")):
            rotated = np.ascontiguousarray(raw[f"{scene}_{camera}"][::-1, ::-1])
            out[f"{scene}_{key}"] = tf_resize_for_policy(rotated, 224)
        out[f"{scene}_state"] = np.concatenate([
            raw[f"{scene}_robot0_eef_pos"], robosuite_quat2axisangle(raw[f"{scene}_robot0_eef_quat"]),
            raw[f"{scene}_robot0_gripper_qpos"],
        ])
    np.savez_compressed(HERE / "libero_sim_fixtures.npz", **out)
    print(f"{len(scenes)} scenes written with TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
