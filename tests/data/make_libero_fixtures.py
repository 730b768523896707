"""FIXTURE GENERATOR for tests/data/libero_resize_fixtures.npz -- not a test, never imported by the tests.

It needs TensorFlow, which vla-lab does not depend on; run it with a throwaway virtual environment:

    python3.11 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy pillow
    cd <repository root> && /tmp/tfvenv/bin/python tests/data/make_libero_fixtures.py

The fixtures were made with tensorflow-cpu 2.21.0 on x86-64 Linux (glibc 2.36, a CPU with FMA). Everything
TensorFlow computes here is what upstream VLA-Adapter's LIBERO evaluation computes per camera image:
``encode_jpeg`` -> ``decode_image`` (the JPEG round trip) and then ``resize`` with ``lanczos3`` and
``antialias=True``, round, clip and cast to uint8 (``resize_image_for_policy``). The quaternion cases are
computed with robosuite's ``quat2axisangle`` formula, restated below in float64 numpy.

Inputs: the real LIBERO-Spatial frames of ``libero_spatial_observation.npz`` (224x224, and taken to 256x256 by
nearest-neighbour upsampling and by edge padding, which is the camera size upstream renders), plus synthetic
images: smooth gradients, a checkerboard, noise, saturated colours, 1-pixel details, and other sizes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

HERE = Path(__file__).resolve().parent
OUT = HERE / "libero_resize_fixtures.npz"
SIZES = (224, 128, 64)


def tf_round_trip(image: np.ndarray) -> np.ndarray:
    return tf.io.decode_image(tf.image.encode_jpeg(image), expand_animations=False, dtype=tf.uint8).numpy()


def tf_resize_for_policy(image: np.ndarray, size: int) -> np.ndarray:
    decoded = tf.io.decode_image(tf.image.encode_jpeg(image), expand_animations=False, dtype=tf.uint8)
    resized = tf.image.resize(decoded, (size, size), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def robosuite_quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite's formula (clip w, zero vector when the denominator is exactly 0), on a copy, float64."""
    q = np.array(quat, dtype=np.float64)
    q[3] = min(max(q[3], -1.0), 1.0)
    den = np.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return (q[:3] * 2.0 * math.acos(q[3])) / den


def images() -> dict[str, np.ndarray]:
    real = np.load(HERE / "libero_spatial_observation.npz")
    up = (np.arange(256) * 224) // 256
    rng = np.random.default_rng(20240607)
    yy, xx = np.mgrid[0:256, 0:256]
    gradient = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)
    checker = ((yy // 4 + xx // 4) % 2 * 255).astype(np.uint8)[..., None].repeat(3, axis=-1)
    saturated = np.zeros((256, 256, 3), np.uint8)
    saturated[:128, :, 0] = 255
    saturated[128:, :128, 1] = 255
    saturated[128:, 128:, 2] = 255
    saturated[96:160, 96:160] = (255, 255, 0)
    details = np.full((256, 256, 3), 128, np.uint8)
    details[rng.integers(0, 256, 300), rng.integers(0, 256, 300)] = rng.integers(0, 256, (300, 3), dtype=np.uint8)
    details[::17, :] = 0
    details[:, ::23] = 255
    return {
        "real_full_224": real["full_image"],
        "real_full_256": real["full_image"][up][:, up],
        "real_wrist_256": real["wrist_image"][up][:, up],
        "real_wrist_pad_256": np.pad(real["wrist_image"], ((16, 16), (16, 16), (0, 0)), mode="edge"),
        "gradient_256": gradient,
        "checker_256": checker,
        "noise_256": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "saturated_256": saturated,
        "details_256": details,
        "noise_37x53": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
        "gradient_300x410": np.stack(
            [np.mgrid[0:300, 0:410][1] * 255 // 409, np.mgrid[0:300, 0:410][0] * 255 // 299,
             np.full((300, 410), 77)], axis=-1
        ).astype(np.uint8),
    }


def quaternions() -> np.ndarray:
    rng = np.random.default_rng(7)
    random = rng.standard_normal((24, 4))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    edge = np.array([
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, -1.0],
        [1e-9, 0.0, 0.0, 1.0 + 2.2e-16],  # w slightly above 1 after float error
        [0.0, -1e-9, 0.0, -1.0 - 2.2e-16],
        [0.0, 0.0, 0.0, 1.0000001],
        [3e-8, 0.0, 0.0, 1.0 - 1.1e-16],  # just below 1: a tiny but non-zero denominator
        [1.0, 0.0, 0.0, 0.0],  # a half turn
        [0.0, 0.7071067811865476, 0.0, 0.7071067811865476],
        [0.9999, 0.0, 0.0, 0.01414142842854285],
    ])
    # near a LIBERO gripper pose (pointing down)
    near_gripper = np.array([[0.9998, 0.0021, 0.0195, 0.0052], [-0.9999, 0.0104, -0.0067, 0.0021]])
    return np.concatenate([edge, near_gripper, random]).astype(np.float64)


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    names = []
    for name, image in images().items():
        names.append(name)
        arrays[f"input__{name}"] = image
        arrays[f"jpeg__{name}"] = tf_round_trip(image)
        for size in SIZES:
            arrays[f"resize{size}__{name}"] = tf_resize_for_policy(image, size)
    quats = quaternions()
    arrays["quat__input"] = quats
    arrays["quat__axisangle"] = np.stack([robosuite_quat2axisangle(q) for q in quats])
    arrays["names"] = np.array(names)
    arrays["sizes"] = np.array(SIZES)
    arrays["tensorflow_version"] = np.array(tf.__version__)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(names)} images, {len(quats)} quaternions)")


if __name__ == "__main__":
    main()
