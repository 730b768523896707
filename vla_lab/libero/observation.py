"""LIBERO observation -> the policy's inputs, and the policy's actions -> LIBERO actions.

PROVISIONAL: the same names and meaning as the module being written on the ``libero-obs`` branch, with a
PIL resize instead of the TensorFlow-equal one. It is replaced wholesale when that branch is merged.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import PIL.Image

from vla_lab.errors import InputError


def jpeg_round_trip(image: Any) -> np.ndarray:
    """``image`` (H, W, 3) uint8 encoded as JPEG and decoded again."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    buffer.seek(0)
    return np.asarray(PIL.Image.open(buffer).convert("RGB"))


def resize_image_for_policy(image: Any, size: int = 224) -> np.ndarray:
    """JPEG round trip, then a Lanczos resize to ``size`` x ``size`` (uint8)."""
    array = jpeg_round_trip(image)
    resized = PIL.Image.fromarray(array).resize((size, size), PIL.Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def quat2axisangle(quat: Any) -> np.ndarray:
    """Quaternion (x, y, z, w) -> axis-angle (3,); zero for the identity rotation."""
    q = np.asarray(quat, dtype=np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * np.arccos(w) / den


def prepare_observation(obs: dict[str, Any], size: int = 224) -> dict[str, Any]:
    """``full_image`` and ``wrist_image`` (rotated 180°, resized) and the 8-d ``state`` of a LIBERO observation."""
    for key in ("agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat",
                "robot0_gripper_qpos"):
        if key not in obs:
            raise InputError(f"obs: got keys {sorted(obs)}, expected {key!r}")
    state = np.concatenate([obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]])
    return {
        "full_image": resize_image_for_policy(obs["agentview_image"][::-1, ::-1], size),
        "wrist_image": resize_image_for_policy(obs["robot0_eye_in_hand_image"][::-1, ::-1], size),
        "state": state.astype(np.float64),
    }


def process_action(actions: Any) -> np.ndarray:
    """Gripper from [0, 1] to [-1, 1], binarised to its sign, then inverted (LIBERO: -1 opens); (7,) or (N, 7)."""
    out = np.array(actions, dtype=np.float64)
    if out.shape[-1] != 7 or out.ndim not in (1, 2):
        raise InputError(f"actions: got shape {out.shape}, expected (7,) or (N, 7)")
    gripper = np.sign(2.0 * out[..., -1] - 1.0)
    out[..., -1] = -gripper
    return out
