"""``vla-lab predict``: JSON output, raw proprio normalised with the checkpoint's statistics, exit 2 on bad input."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from testkit import randomize

from vla_lab import VLAAdapter, VLAConfig
from vla_lab.cli import main
from vla_lab.model import load_pretrained, save_pretrained
from vla_lab.processing.normalization import normalize_proprio

INSTRUCTION = "Pick up the black bowl and place it on the plate"
SPATIAL, OBJECT = "libero_spatial_no_noops", "libero_object_no_noops"
RAW_PROPRIO = [-0.2, 0.25, 0.6, 3.1, 0.4, -0.28, 0.03, -0.01]
PROPRIO_ARG = ",".join(str(v) for v in RAW_PROPRIO)


def stats(shift: float) -> dict:
    return {
        "action": {
            "mask": [True] * 6 + [False],
            "q01": [-0.75 + shift, -0.8, -0.9, -0.1, -0.15, -0.2, -1.0],
            "q99": [0.9, 0.85 + shift, 0.95, 0.12, 0.2, 0.18, 1.0],
            "min": [-1.0] * 7,
            "max": [1.0] * 7,
        },
        "proprio": {
            "q01": [-0.3, -0.3, 0.0, 2.8, -0.5, -0.3, 0.0, -0.04],
            "q99": [0.1 + shift, 0.3, 1.2, 3.3, 0.5, 0.3, 0.04, 0.0],
            "min": [-1.0] * 8,
            "max": [4.0] * 8,
        },
    }


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_dirs(tmp_path_factory) -> tuple[VLAAdapter, Path, Path]:
    """A random tiny model saved twice: with one dataset's statistics and with two."""
    torch.manual_seed(0)
    config = VLAConfig.preset("tiny", norm_stats={SPATIAL: stats(0.0)})
    model = randomize(VLAAdapter(config), seed=5).eval()
    root = tmp_path_factory.mktemp("cli")
    one = save_pretrained(model, root / "one")
    two_model = copy.deepcopy(model)
    two_model.config.norm_stats = {SPATIAL: stats(0.0), OBJECT: stats(0.3)}
    two = save_pretrained(two_model, root / "two")
    return model, one, two


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("third_person.png", "wrist.png"):
        path = root / name
        PIL.Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return code, out, err


def predict_json(capsys, *args: str) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def image_args(paths: list[str]) -> list[str]:
    return [arg for p in paths for arg in ("--image", p)]


def test_checkpoint_json_matches_predict_action(capsys, model_and_dirs, image_paths):
    _, one, _ = model_and_dirs
    common = ["--model", str(one), *image_args(image_paths), "--instruction", INSTRUCTION]
    result = predict_json(capsys, *common, "--proprio", PROPRIO_ARG)  # a negative first value, as its own argument
    assert predict_json(capsys, *common, f"--proprio={PROPRIO_ARG}") == result
    for key in ("actions", "normalized_actions", "prompt", "prompt_text", "input_ids", "num_patches",
                "sequence_length", "attention"):
        assert key in result, key
    assert np.asarray(result["actions"]).shape == (8, 7)
    assert np.asarray(result["normalized_actions"]).shape == (8, 7)
    assert result["prompt"] == "qwen-chat"  # the model's own (a Qwen2.5 tokenizer: the released prompt)
    assert result["prompt_text"].startswith("<|im_start|>system\n")
    assert f"user\nWhat action should the robot take to {INSTRUCTION.lower()}?<|im_end|>" in result["prompt_text"]
    in_out = predict_json(capsys, *common, "--prompt", "openvla")
    assert in_out["prompt"] == "openvla"
    assert in_out["prompt_text"] == f"In: What action should the robot take to {INSTRUCTION.lower()}?\nOut:"
    assert len(in_out["input_ids"]) < len(result["input_ids"]) and in_out["actions"] != result["actions"]
    assert result["unnormalized"] is True and result["unnorm_key"] == SPATIAL
    assert result["attention"] == "causal"
    assert result["num_patches"] == 2 * 16  # two 56-px images, 4 x 4 patches of 14 px
    assert result["sequence_length"] == result["num_patches"] + len(result["input_ids"]) + 64 + 1

    model = load_pretrained(one)
    pred = model.predict_action(image_paths, INSTRUCTION, proprio=RAW_PROPRIO)  # raw proprio, normalised inside
    np.testing.assert_array_equal(np.asarray(result["actions"]), pred.actions[0])
    normalized_actions = np.asarray(result["normalized_actions"], dtype=np.float32)
    np.testing.assert_array_equal(normalized_actions, pred.normalized_actions[0])
    assert result["input_ids"] == pred.input_ids[0]

    # The CLI's --proprio is the raw state: it equals feeding the normalised state, not the raw one, as normalised.
    normalized = normalize_proprio(RAW_PROPRIO, stats(0.0)["proprio"], "bounds_q99")
    assert not np.allclose(normalized, RAW_PROPRIO)
    same = model.predict_action(image_paths, INSTRUCTION, proprio=normalized, proprio_is_normalized=True)
    np.testing.assert_array_equal(same.normalized_actions, pred.normalized_actions)
    raw_as_normalized = model.predict_action(image_paths, INSTRUCTION, proprio=RAW_PROPRIO, proprio_is_normalized=True)
    assert not np.array_equal(raw_as_normalized.normalized_actions, pred.normalized_actions)

    # Un-normalisation with the checkpoint's action statistics.
    a_n = np.asarray(result["normalized_actions"])
    q01, q99 = np.asarray(stats(0.0)["action"]["q01"]), np.asarray(stats(0.0)["action"]["q99"])
    expected = 0.5 * (a_n + 1) * (q99 - q01 + 1e-8) + q01
    expected[:, 6] = a_n[:, 6]
    np.testing.assert_allclose(np.asarray(result["actions"]), expected, rtol=0, atol=1e-6)


def test_unnorm_key_chooses_statistics(capsys, model_and_dirs, image_paths):
    _, _, two = model_and_dirs
    common = ["--model", str(two), *image_args(image_paths), "--instruction", INSTRUCTION]
    common += ["--proprio", PROPRIO_ARG]
    spatial = predict_json(capsys, *common, "--unnorm-key", SPATIAL)
    other = predict_json(capsys, *common, "--unnorm-key", OBJECT)
    assert spatial["unnorm_key"] == SPATIAL and other["unnorm_key"] == OBJECT
    assert spatial["actions"] != other["actions"]
    model = load_pretrained(two)
    pred = model.predict_action(image_paths, INSTRUCTION, proprio=RAW_PROPRIO, unnorm_key=OBJECT)
    np.testing.assert_array_equal(np.asarray(other["actions"]), pred.actions[0])


def test_attention_dtype_and_center_crop_options(capsys, model_and_dirs, image_paths):
    model, one, _ = model_and_dirs
    common = ["--model", str(one), *image_args(image_paths), "--instruction", INSTRUCTION]
    causal = predict_json(capsys, *common)
    both = predict_json(capsys, *common, "--attention", "bidirectional", "--device", "cpu")
    assert both["attention"] == "bidirectional" and both["actions"] != causal["actions"]
    loaded = load_pretrained(one)
    zeros = [0.0] * 8  # no --proprio: zeros, already normalised
    want = loaded.predict_action(image_paths, INSTRUCTION, zeros, proprio_is_normalized=True, attention="bidirectional")
    np.testing.assert_array_equal(np.asarray(both["normalized_actions"], dtype=np.float32), want.normalized_actions[0])

    cropped = predict_json(capsys, *common, "--center-crop")
    assert cropped["normalized_actions"] != causal["normalized_actions"]
    half = predict_json(capsys, *common, "--dtype", "bfloat16")
    assert half["dtype"] == "bfloat16" and np.asarray(half["actions"]).shape == (8, 7)
    assert np.isfinite(np.asarray(half["actions"])).all()


def test_preset_without_statistics(capsys, image_paths):
    result = predict_json(capsys, "--model", "tiny", *image_args(image_paths), "--instruction", INSTRUCTION)
    assert result["unnormalized"] is False and result["unnorm_key"] is None
    assert result["actions"] == result["normalized_actions"]
    code, out, err = run(capsys, "--model", "tiny", *image_args(image_paths), "--instruction", INSTRUCTION)
    assert code == 0 and "normalized actions" in out and len(out.strip().splitlines()) == 3 + 8


@pytest.mark.parametrize(
    "which, extra, message",
    [
        ("one", ["--image-count", "1"], "num_images"),
        ("one", ["--unnorm-key", "bridge_orig"], "unnorm_key"),
        ("two", [], "unnorm_key"),
        ("one", ["--proprio", "0.1,abc"], "--proprio"),
        ("one", ["--proprio", "0.1,0.2"], "proprio"),
        ("one", ["--instruction", "   "], "instruction"),
        ("missing", [], "checkpoint"),
        ("one", ["--missing-image"], "image"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, model_and_dirs, image_paths, which, extra, message):
    _, one, two = model_and_dirs
    directory = {"one": one, "two": two, "missing": tmp_path / "nowhere"}[which]
    images = image_paths
    if "--image-count" in extra:
        images, extra = image_paths[:1], []
    if "--missing-image" in extra:
        images, extra = [image_paths[0], str(tmp_path / "no.png")], []
    args = ["--model", str(directory), *image_args(images), "--instruction", INSTRUCTION, *extra]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vla-lab predict: error:") and message in lines[0]


@pytest.mark.parametrize("entry", ["console script", "python -m vla_lab"])
def test_console_script(model_and_dirs, image_paths, entry):
    """The installed ``vla-lab`` script (pyproject's [project.scripts]) and ``python -m vla_lab`` are the CLI."""
    if entry == "console script":
        script = Path(sys.executable).with_name("vla-lab")
        assert script.exists(), f"{script} is missing: install the package (README set-up command)"
        launcher = [str(script)]
    else:
        launcher = [sys.executable, "-m", "vla_lab"]
    _, one, _ = model_and_dirs
    args = ["predict", "--model", str(one), *image_args(image_paths), "--instruction", INSTRUCTION]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count as this process: identical sums
    command = [*launcher, *args, "--proprio", PROPRIO_ARG, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    pred = load_pretrained(one).predict_action(image_paths, INSTRUCTION, proprio=RAW_PROPRIO)
    np.testing.assert_array_equal(np.asarray(result["actions"]), pred.actions[0])


def test_model_is_the_one_way_to_name_a_model(capsys, model_and_dirs, image_paths):
    """``--model`` takes registry names and directories (a shipped name predicts as its directory, a preset as the
    registry's seeded preset); ``--checkpoint`` / ``--preset`` are gone; an unknown name is one line."""
    from vla_lab import registry
    from vla_lab.tabletop import shipped_path

    _, one, _ = model_and_dirs
    common = [*image_args(image_paths), "--instruction", "pick up the red cube"]
    shipped = predict_json(capsys, "--model", "tabletop-causal", *common)
    assert shipped["actions"] == predict_json(capsys, "--model", str(shipped_path()), *common)["actions"]
    preset = predict_json(capsys, "--model", "tiny", "--seed", "3", *common)
    tiny = registry.create("tiny", seed=3)
    expected = tiny.predict_action(image_paths, "pick up the red cube", [0.0] * tiny.config.robot.proprio_dim,
                                   proprio_is_normalized=True)  # the CLI's zero state without --proprio
    np.testing.assert_allclose(np.asarray(preset["normalized_actions"]), expected.normalized_actions[0], atol=1e-6)
    assert preset["model"] == "preset tiny (random weights, seed 3)"
    for gone in ("--checkpoint", "--preset"):
        with pytest.raises(SystemExit) as exit_info:
            run(capsys, gone, str(one), *common)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "--model" in err
    code, out, err = run(capsys, "--model", "tabletop-causl", *common)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("vla-lab predict: error: --model: got 'tabletop-causl', expected a shipped model name")
