"""Fuzzing LIBERO demonstration directories (``vla-lab libero demos`` output, what ``train --data`` reads) with
generated corruptions (hypothesis, derandomised), as ``test_fuzz.py`` does for checkpoints.

Every generated case breaks a valid directory (``testkit.write_demos``): bytes of a task file, a dataset's values
(NaN, inf, another dtype or shape, removed, emptied), the manifest (its JSON, a count, a file name, a path out of the
directory). The reader must refuse it with one of vla_lab's own one-line errors, before anything is trained, and
change no file; ``train --data`` on a sample of the cases must exit 2 with one line and create no ``--out``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import run_cli, snapshot, write_demos

from vla_lab.errors import VLALabError

h5py = pytest.importorskip("h5py")

READER_CASES = 150
CLI_EVERY = 10  # every tenth case also goes through `vla-lab train --data`
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DATASETS = ("actions", "obs/ee_states", "obs/gripper_states", "obs/agentview_rgb", "obs/eye_in_hand_rgb")


@pytest.fixture(scope="module")
def base_demos(tmp_path_factory) -> Path:
    return write_demos(tmp_path_factory.mktemp("fuzz-demos") / "demos", tasks=2, demos=2, steps=5, size=32)


def _manifest(d: Path) -> dict:
    return json.loads((d / "demos.json").read_text())


def _set_manifest(d: Path, text: str) -> None:
    (d / "demos.json").unlink()  # a hard link to the base's: write a new file
    (d / "demos.json").write_text(text)


def _replace(d: Path, task: int, demo: int, key: str, value: np.ndarray | None) -> None:
    with h5py.File(d / f"task_{task}_demo.hdf5", "r+") as f:
        path = f"data/demo_{demo}/{key}"
        del f[path]
        if value is not None:
            f[path] = value


@st.composite
def broken_directories(draw):
    kind = draw(st.sampled_from(["bytes", "truncate", "nan", "inf", "dtype", "shape", "remove", "empty",
                                 "manifest_json", "manifest_count", "manifest_file", "manifest_escape"]))
    task, demo = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    key = draw(st.sampled_from(DATASETS))
    fraction = draw(st.floats(0.05, 0.95))

    def mutate(d: Path) -> None:
        path = d / f"task_{task}_demo.hdf5"
        if kind in ("bytes", "truncate"):
            data = bytearray(path.read_bytes())
            cut = max(8, int(len(data) * fraction))
            if kind == "truncate":
                data = data[:cut]
            else:
                data[:cut] = bytes((b ^ 0x5A) for b in data[:cut])  # the header and the start of the data
            path.unlink()  # the base's file is a hard link: write a new one
            path.write_bytes(bytes(data))
            return
        if kind.startswith("manifest"):
            manifest = _manifest(d)
            if kind == "manifest_json":
                _set_manifest(d, json.dumps(manifest)[: int(40 * fraction)])
            elif kind == "manifest_count":
                manifest["tasks"][str(task)]["num_demos"] += 1 + int(3 * fraction)
                _set_manifest(d, json.dumps(manifest))
            elif kind == "manifest_file":
                manifest["tasks"][str(task)]["file"] = "missing.hdf5"
                _set_manifest(d, json.dumps(manifest))
            else:
                manifest["tasks"][str(task)]["file"] = "../" * (1 + int(4 * fraction)) + "etc/passwd"
                _set_manifest(d, json.dumps(manifest))
            return
        path.unlink()  # a private copy of the task file to edit in place
        shutil.copyfile(d.parent.parent / "base" / path.name, path)
        with h5py.File(path, "r") as f:
            value = np.asarray(f[f"data/demo_{demo}/{key}"])
        if kind == "nan" or kind == "inf":
            if not np.issubdtype(value.dtype, np.floating):
                value = value.astype(np.float32)  # images as floats are refused too
            value = value.copy()
            value.reshape(-1)[int((value.size - 1) * fraction)] = np.nan if kind == "nan" else -np.inf
        elif kind == "dtype":
            value = value.astype(np.float32 if value.dtype == np.uint8 else np.int64).astype(
                np.float32 if value.dtype == np.uint8 else "S8")
        elif kind == "shape":
            value = value[..., :-1] if value.ndim > 1 else value[:, None]
        elif kind == "empty":
            value = value[:0]
        else:
            value = None
        _replace(d, task, demo, key, value)

    return f"{kind}[task {task}, demo {demo}, {key}, fraction {fraction:.3f}]", mutate


def test_fuzz_demonstration_directories(base_demos, tmp_path_factory, monkeypatch) -> None:
    from vla_lab.libero.data import read_demonstrations

    root = tmp_path_factory.mktemp("fuzz-demo-cases")
    shutil.copytree(base_demos, root / "base")
    assert len(read_demonstrations(root / "base")) == 4  # the base is valid: every refusal comes from a mutation
    monkeypatch.chdir(root)
    tried: list[str] = []

    @settings(FUZZ, max_examples=READER_CASES)
    @given(broken_directories())
    def case(mutation) -> None:
        name, mutate = mutation
        tried.append(name)
        directory = root / f"case-{len(tried)}" / "demos"
        directory.mkdir(parents=True)
        for path in (root / "base").iterdir():
            (directory / path.name).hardlink_to(path)
        try:
            mutate(directory)
            before = snapshot(directory.parent)
            with pytest.raises(VLALabError) as info:
                read_demonstrations(directory)
            message = str(info.value)
            assert message and "\n" not in message, (name, message)
            if len(tried) % CLI_EVERY == 0:
                out = directory.parent / "run"
                status, stdout, stderr = run_cli(["train", "--data", directory, "--out", out, "--steps", "1",
                                                  "--no-progress"])
                lines = stderr.splitlines()
                assert status == 2 and len(lines) == 1 and "Traceback" not in stderr, (name, stderr)
                assert lines[0].startswith("vla-lab train: error: ") and not out.exists(), (name, stderr)
            assert snapshot(directory.parent) == before, f"the demonstrations changed: {name}"
        finally:
            shutil.rmtree(directory.parent)

    case()
    assert len(tried) >= READER_CASES * 0.9
    kinds = {name.split("[")[0] for name in tried}
    assert len(kinds) == 12, kinds
