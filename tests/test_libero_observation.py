"""vla_lab.worlds.libero.observation against TensorFlow's outputs (tests/data/libero_resize_fixtures.npz).

The fixtures come from tests/data/make_libero_fixtures.py, run once with TensorFlow; these tests only read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla_lab.errors import InputError
from vla_lab.worlds.libero import (
    jpeg_round_trip,
    prepare_observation,
    process_action,
    quat2axisangle,
    resize_image_for_policy,
)
from vla_lab.worlds.libero import observation as libero_obs

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = np.load(DATA / "libero_resize_fixtures.npz")
NAMES = [str(n) for n in FIXTURES["names"]]
SIZES = [int(s) for s in FIXTURES["sizes"]]



def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_fixtures_cover_real_and_synthetic_images():
    assert any(n.startswith("real_") for n in NAMES) and len(NAMES) >= 10
    assert SIZES == [224, 128, 64]
    assert FIXTURES["input__real_full_256"].shape == (256, 256, 3)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_lanczos3_resize_equals_tensorflow_on_the_same_decoded_jpeg(name, size):
    """The resize alone (no JPEG library needed): TF's decoded JPEG in, TF's uint8 result out, bit for bit."""
    resized = libero_obs._resize_lanczos3(FIXTURES[f"jpeg__{name}"], size, size)
    assert resized.dtype == np.float32
    ours = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    assert _max_diff(ours, FIXTURES[f"resize{size}__{name}"]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_jpeg_round_trip_equals_tensorflow(name):
    image = FIXTURES[f"input__{name}"]
    out = jpeg_round_trip(image)
    assert _max_diff(out, FIXTURES[f"jpeg__{name}"]) == 0
    assert out.shape == image.shape


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_resize_image_for_policy_equals_tensorflow(name, size):
    out = resize_image_for_policy(FIXTURES[f"input__{name}"], size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert _max_diff(out, FIXTURES[f"resize{size}__{name}"]) == 0


def test_resize_image_for_policy_does_not_modify_its_input_and_accepts_views():
    image = FIXTURES["input__real_full_256"].copy()
    before = image.copy()
    flipped = resize_image_for_policy(image[::-1, ::-1])
    assert np.array_equal(image, before)
    assert np.array_equal(flipped, resize_image_for_policy(np.ascontiguousarray(image[::-1, ::-1])))


def test_sinf_is_glibcs_not_the_correctly_rounded_one():
    """Arguments where glibc's sinf (what TF's kernel calls) and float64 sin rounded to float32 disagree."""
    cases = [  # argument, glibc sinf, float32(sin(float64 argument))
        ("0x1.eebe96p-2", "0x1.dbb838p-2", "0x1.dbb83ap-2"),
        ("0x1.5ed7d8p-2", "0x1.5804e8p-2", "0x1.5804e6p-2"),
        ("0x1.d6b9ccp+1", "-0x1.05753ep-1", "-0x1.057540p-1"),
        ("0x1.370470p+1", "0x1.4e6cf0p-1", "0x1.4e6ceep-1"),
        ("0x1.a5b53ep+2", "0x1.347a86p-2", "0x1.347a84p-2"),
    ]
    args = np.array([float.fromhex(a) for a, _, _ in cases], dtype=np.float32)
    glibc = np.array([float.fromhex(g) for _, g, _ in cases], dtype=np.float32)
    rounded = np.array([float.fromhex(r) for _, _, r in cases], dtype=np.float32)
    assert np.array_equal(np.sin(args.astype(np.float64)).astype(np.float32), rounded)
    assert np.array_equal(libero_obs._glibc_sinf(args), glibc)
    grid = np.linspace(0, 9.5, 20001, dtype=np.float32)
    ulp = np.spacing(np.abs(np.sin(grid.astype(np.float64))).astype(np.float32))
    assert np.all(np.abs(libero_obs._glibc_sinf(grid) - np.sin(grid.astype(np.float64))) <= ulp)


def test_fma_emulation_rounds_once():
    a, b = np.array([1.0 + 2.0**-30]), np.array([1.0 - 2.0**-30])
    # a * b = 1 - 2^-60 exactly: a separate multiply rounds it to 1, a fused one keeps the -2^-60.
    assert libero_obs._fma(a, b, np.array([-1.0]))[0] == -(2.0**-60)
    assert (a * b - 1.0)[0] == 0.0


# ------------------------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------------------------


def test_quat2axisangle_matches_robosuites_formula():
    quats, expected = FIXTURES["quat__input"], FIXTURES["quat__axisangle"]
    ours = np.stack([quat2axisangle(q) for q in quats])
    assert ours.dtype == np.float64
    assert np.abs(ours - expected).max() <= 1e-6
    assert np.array_equal(ours, expected)  # achieved: bit for bit


@pytest.mark.parametrize("w", [1.0, -1.0, 1.0 + 2.2e-16, -1.0 - 2.2e-16, 1.5])
def test_quat2axisangle_is_zero_when_w_clips_to_one(w):
    quat = np.array([1e-9, 0.0, 0.0, w])
    before = quat.copy()
    assert np.array_equal(quat2axisangle(quat), np.zeros(3))
    assert np.array_equal(quat, before)  # upstream clips in place; we do not


def test_quat2axisangle_half_turn_and_errors():
    assert np.allclose(quat2axisangle([1.0, 0.0, 0.0, 0.0]), [np.pi, 0.0, 0.0])
    assert np.allclose(quat2axisangle([0.0, np.sin(0.25), 0.0, np.cos(0.25)]), [0.0, 0.5, 0.0])
    with pytest.raises(InputError, match="quat"):
        quat2axisangle([0.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------------
# Observation
# ------------------------------------------------------------------------------------------------


def _obs() -> dict[str, np.ndarray]:
    full = FIXTURES["input__real_full_256"]
    return {
        # robosuite renders upside down; prepare_observation turns the images by 180 degrees
        "agentview_image": np.ascontiguousarray(full[::-1, ::-1]),
        "robot0_eye_in_hand_image": np.ascontiguousarray(FIXTURES["input__real_wrist_256"][::-1, ::-1]),
        "robot0_eef_pos": np.array([-0.2, 0.05, 1.1]),
        "robot0_eef_quat": np.array([0.9998, 0.0021, 0.0195, 0.0052]),
        "robot0_gripper_qpos": np.array([0.039, -0.039]),
        "object_pos": np.zeros(3),  # extra keys are ignored
    }


def test_prepare_observation_rotates_resizes_and_builds_the_state():
    obs = _obs()
    out = prepare_observation(obs)
    assert set(out) == {"full_image", "wrist_image", "state"}
    assert _max_diff(out["full_image"], FIXTURES["resize224__real_full_256"]) == 0
    assert _max_diff(out["wrist_image"], FIXTURES["resize224__real_wrist_256"]) == 0
    state = out["state"]
    assert state.shape == (8,) and state.dtype == np.float64
    expected = np.concatenate([obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]),
                               obs["robot0_gripper_qpos"]])
    assert np.array_equal(state, expected)
    small = prepare_observation(obs, size=64)
    assert small["full_image"].shape == (64, 64, 3) and small["wrist_image"].dtype == np.uint8


def test_prepare_observation_applies_the_flip():
    obs = _obs()
    unflipped = resize_image_for_policy(obs["agentview_image"])
    assert _max_diff(prepare_observation(obs)["full_image"], unflipped) > 0


def test_prepare_observation_rejects_bad_observations():
    obs = _obs()
    with pytest.raises(InputError, match="missing keys"):
        prepare_observation({k: v for k, v in obs.items() if k != "robot0_eef_quat"})
    with pytest.raises(InputError, match="agentview_image"):
        prepare_observation({**obs, "agentview_image": obs["agentview_image"].astype(np.float32)})
    with pytest.raises(InputError, match="robot0_gripper_qpos"):
        prepare_observation({**obs, "robot0_gripper_qpos": np.zeros(3)})
    with pytest.raises(InputError, match="size"):
        prepare_observation(obs, size=0)
    with pytest.raises(InputError, match="obs"):
        prepare_observation([1, 2])  # type: ignore[arg-type]


def test_image_functions_reject_bad_images():
    with pytest.raises(InputError, match="image"):
        jpeg_round_trip(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="image"):
        resize_image_for_policy(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(InputError, match="size"):
        resize_image_for_policy(np.zeros((8, 8, 3), np.uint8), size=True)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Actions
# ------------------------------------------------------------------------------------------------


def test_process_action_maps_binarises_and_inverts_the_gripper():
    chunk = np.array([[0.1, -0.2, 0.3, 0.01, 0.02, -0.03, g] for g in [0.0, 0.2, 0.49, 0.5, 0.51, 0.9, 1.0, 1.7]])
    before = chunk.copy()
    out = process_action(chunk)
    assert np.array_equal(chunk, before)  # the input is not modified
    assert out is not chunk and out.shape == (8, 7) and out.dtype == np.float64
    assert np.array_equal(out[:, :6], chunk[:, :6])
    # [0, 1] -> [-1, 1] -> sign -> negated: below 0.5 closes (+1), above opens (-1), exactly 0.5 gives -0.0
    assert out[:, 6].tolist() == [1.0, 1.0, 1.0, 0.0, -1.0, -1.0, -1.0, -1.0]
    assert np.signbit(out[3, 6])


def test_process_action_single_action_dtypes_and_nan():
    single = np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.int64)
    out = process_action(single)
    assert out.shape == (7,) and out.dtype == np.float64 and out[-1] == -1.0
    f32 = process_action(np.array([0.5] * 6 + [0.2], dtype=np.float32))
    assert f32.dtype == np.float32 and f32[-1] == 1.0
    assert np.isnan(process_action(np.array([0.0] * 6 + [np.nan]))[-1])


@pytest.mark.parametrize("bad", [np.zeros(6), np.zeros((2, 8)), np.zeros((1, 2, 7)), np.array(["a"] * 7)])
def test_process_action_rejects_bad_shapes(bad):
    with pytest.raises(InputError, match="actions"):
        process_action(bad)


# --- real simulator frames -------------------------------------------------------------------------------

SIM = np.load(DATA / "libero_sim_observations.npz")
SIM_EXPECTED = np.load(DATA / "libero_sim_fixtures.npz")


@pytest.mark.parametrize("scene", [str(s) for s in SIM_EXPECTED["scenes"]])
def test_prepare_observation_equals_upstream_on_real_simulator_frames(scene: str) -> None:
    """Four scenes rendered by LIBERO's simulator (spatial, object, goal, 10): every pixel and the state as TF gives."""
    obs = {
        "agentview_image": SIM[f"{scene}_agentview"],
        "robot0_eye_in_hand_image": SIM[f"{scene}_wrist"],
        "robot0_eef_pos": SIM[f"{scene}_robot0_eef_pos"],
        "robot0_eef_quat": SIM[f"{scene}_robot0_eef_quat"],
        "robot0_gripper_qpos": SIM[f"{scene}_robot0_gripper_qpos"],
    }
    out = prepare_observation(obs)
    for key in ("full_image", "wrist_image"):
        assert _max_diff(out[key], SIM_EXPECTED[f"{scene}_{key}"]) == 0, key
    np.testing.assert_array_equal(out["state"], SIM_EXPECTED[f"{scene}_state"])
