"""Demonstrations and training settings are validated before ``train`` claims ``--out``: a NaN action, an empty
demonstration, grayscale or float frames, a wrong manifest total, a task file outside the directory, a NaN
learning rate or bad betas are one line, and ``--out`` is never created (so the same command, fixed, is not then
refused as "an earlier run")."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from testkit import assert_one_line_error, run_cli, snapshot, write_demos

from vla_lab.errors import ConfigError, InputError
from vla_lab.libero.data import read_demonstrations
from vla_lab.training.config import TrainConfig

h5py = pytest.importorskip("h5py")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return write_demos(tmp_path_factory.mktemp("demos") / "demos", tasks=1, demos=2, steps=5, size=32)


def edit_demo(name: str, change: Callable[[object], None]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        with h5py.File(directory / "task_0_demo.hdf5", "a") as f:
            change(f[f"data/{name}"])
    return edit


def replace(dataset: str, values: Callable[[np.ndarray], np.ndarray]) -> Callable[[object], None]:
    def change(demo) -> None:
        old = demo[dataset][()]
        del demo[dataset]
        demo[dataset] = values(old)
    return change


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        manifest = json.loads((directory / "demos.json").read_text())
        change(manifest)
        (directory / "demos.json").write_text(json.dumps(manifest))
    return edit


def nan_at(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    values[1, 2] = math.nan
    return values


CASES = {
    "NaN action": (edit_demo("demo_1", replace("actions", nan_at)), r"NaN or infinite values in actions of "
                                                                    r"task_0_demo\.hdf5 demo_1, expected finite"),
    "inf proprio": (edit_demo("demo_0", replace("obs/ee_states", lambda v: v * np.inf)),
                    r"NaN or infinite values in obs/ee_states"),
    "empty demo": (edit_demo("demo_0", lambda demo: [replace(k, lambda v: v[:0])(demo) for k in
                                                      ("actions", "obs/ee_states", "obs/gripper_states", "target_pos",
                                                       "obs/agentview_rgb", "obs/eye_in_hand_rgb")]),
                   r"an empty demonstration \(task_0_demo\.hdf5 demo_0\), expected at least one step"),
    "grayscale frames": (edit_demo("demo_0", replace("obs/agentview_rgb", lambda v: v[..., 0])),
                         r"obs/agentview_rgb of shape \(5, 32, 32\) and dtype uint8"),
    "float frames": (edit_demo("demo_1", replace("obs/eye_in_hand_rgb", lambda v: v / 255.0)),
                     r"obs/eye_in_hand_rgb of shape \(6, 32, 32, 3\) and dtype float64"),
    "missing camera": (edit_demo("demo_1", lambda demo: demo.__delitem__("obs/agentview_rgb")),
                       r"task_0_demo\.hdf5 demo_1 without obs/agentview_rgb"),
    "wrong total": (edit_manifest(lambda m: m.update(total=m["total"] + 1)),
                    r"got 11 steps in the files, expected the manifest's total 12"),
    "file outside": (edit_manifest(lambda m: m["tasks"]["0"].update(file="../../../../etc/passwd")),
                     r"got file '\.\./\.\./\.\./\.\./etc/passwd' for task 0 in demos\.json, expected a file name "
                     r"inside the directory"),
    "file is a directory": (lambda d: ((d / "task_0_demo.hdf5").unlink(), (d / "task_0_demo.hdf5").mkdir()),
                            r"task 0's file: got .*, which is a directory"),
    "not HDF5": (lambda d: (d / "task_0_demo.hdf5").write_bytes(b"not hdf5"), r"which h5py cannot read"),
    "num_demos too large": (lambda d: _set_num_demos(d, 3), r"num_demos 3 in task_0_demo\.hdf5"),
    "unknown suite": (edit_manifest(lambda m: m.update(suite="libero_99")), r"got suite 'libero_99' in demos\.json"),
}


def _set_num_demos(directory: Path, value: int) -> None:
    with h5py.File(directory / "task_0_demo.hdf5", "a") as f:
        f["data"].attrs["num_demos"] = value


@pytest.mark.parametrize("case", list(CASES))
def test_bad_demonstrations_are_refused_before_out_is_claimed(clean, tmp_path, case) -> None:
    edit, message = CASES[case]
    demos = tmp_path / "demos"
    shutil.copytree(clean, demos)
    edit(demos)
    with pytest.raises(InputError, match=message):
        read_demonstrations(demos)
    before = snapshot(demos)
    out = tmp_path / "run"
    status, stdout, err = run_cli(["train", "--data", demos, "--out", out, "--steps", "2"])
    line = assert_one_line_error(status, err, "train")
    assert line.startswith("vla-lab train: error: demos: ") or "demos: task 0's file" in line, line
    assert not out.exists() and stdout == ""
    assert snapshot(demos) == before  # nothing written beside the demonstrations either (no frame cache)


def test_clean_demonstrations_still_read(clean) -> None:
    demos = read_demonstrations(clean)
    assert [(d.task, d.init_state, len(d.actions)) for d in demos] == [(0, 0, 5), (0, 1, 6)]


@pytest.mark.parametrize(("changes", "message"), [
    ({"lr": math.nan}, r"^lr: got nan, expected a finite number$"),
    ({"lr": math.inf}, r"^lr: got inf, expected a finite number$"),
    ({"weight_decay": "0.1"}, r"^weight_decay: got '0\.1', expected a finite number$"),
    ({"grad_clip": -1.0}, r"^grad_clip: got -1\.0, expected a non-negative number$"),
    ({"betas": [0.9, 1.5]}, r"^betas: got \[0\.9, 1\.5\], expected two numbers in \[0, 1\)$"),
    ({"betas": [0.9]}, r"^betas: got \[0\.9\], expected two numbers in \[0, 1\)$"),
    ({"betas": ["a", "b"]}, r"^betas: got \['a', 'b'\], expected two numbers in \[0, 1\)$"),
    ({"min_lr_ratio": math.nan}, r"^min_lr_ratio: got nan, expected a finite number$"),
    ({"augment": "yes"}, r"^augment: got 'yes', expected true or false$"),  # a string was truthy
    ({"relabel": 1}, r"^relabel: got 1, expected true or false$"),
])
def test_train_settings_must_be_finite_numbers_in_range(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_a_nan_learning_rate_leaves_no_run_directory(tmp_path) -> None:
    out = tmp_path / "run"
    status, stdout, err = run_cli(["train", "--out", out, "--steps", "2", "--config", '{"lr": NaN}'])
    assert "lr: got nan, expected a finite number" in assert_one_line_error(status, err, "train")
    assert not out.exists()
    status, stdout, err = run_cli(["train", "--out", out, "--steps", "2", "--config", '{"betas": [0.9, 2]}'])
    assert "betas: got [0.9, 2]" in assert_one_line_error(status, err, "train")
    assert not out.exists()


def test_train_config_is_checked_after_data_applies(libero_demos, tmp_path) -> None:
    """``--config`` overrides the LIBERO recipe that ``--data`` selects, and the whole is checked once: a LIBERO-only
    field is accepted with ``--data``, and still refused for the tabletop world."""
    import argparse

    from vla_lab.cli.train import train_configs

    def configs(**given):
        fields = {"out": str(tmp_path / "run"), "resume": False, "data": None, "config": None, "model_config": None,
                  "attention": None, "steps": None, "seed": None, "device": None, "num_threads": None,
                  "test_episodes": None, "prompt": None}
        return train_configs(argparse.Namespace(**{**fields, **given}))

    config, model_config = configs(data=str(libero_demos), config='{"augment": true, "steps": 7}')
    assert config.augment and config.libero and config.steps == 7
    assert config.lr == TrainConfig.libero_recipe(str(libero_demos)).lr  # the recipe, not the tabletop default
    with pytest.raises(ConfigError, match=r"^--config: augment: got true with the tabletop world"):
        configs(config='{"augment": true}')
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"^--config: TrainConfig: got list, expected a JSON object of fields"):
        configs(data=str(libero_demos), config=str(tmp_path / "list.json"))
