"""What a demonstrations directory must hold before anything trains on it, checked before a run is claimed.

``demos.json`` (the manifest of ``vla-lab libero demos``) is an object naming a LIBERO suite, a non-negative
``total`` of steps and per task a ``file`` -- a plain file name inside the directory, never a path that leaves it
-- and an ``instruction``. Each task file is LIBERO's HDF5 layout with ``data.attrs["num_demos"]`` demonstrations,
each with at least one step: ``actions`` (T, 7), ``obs/ee_states`` (T, 6), ``obs/gripper_states`` (T, 2) and
``target_pos`` (T, 3), all finite, and both cameras (T, H, W, 3) uint8; the steps add up to the manifest's total.
Every failure is one line, ``demos: got …, expected …``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vla_lab import files
from vla_lab.errors import InputError
from vla_lab.libero.demos import MANIFEST
from vla_lab.worlds.libero.suites import SUITES

#: Datasets of a demonstration read as numbers: name -> width of each step's row.
NUMBERS = {"actions": 7, "obs/ee_states": 6, "obs/gripper_states": 2, "target_pos": 3}
CAMERAS = ("obs/agentview_rgb", "obs/eye_in_hand_rgb")
_DIRECTORY = "expected the output directory of 'vla-lab libero demos'"


def _fail(got: str, expected: str) -> InputError:
    return InputError(f"demos: got {got}, expected {expected}")


def check_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of ``directory``, its fields and task files checked (the files are not opened)."""
    directory = Path(directory)
    path = directory / MANIFEST
    what = files.not_a_file(path)
    if what is not None:
        raise _fail(f"{str(directory)!r}, whose {MANIFEST} {what}", _DIRECTORY)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(f"{str(directory)!r} without a readable {MANIFEST} ({type(exc).__name__})", _DIRECTORY) from None
    if not isinstance(manifest, dict):
        raise _fail(f"a {MANIFEST} holding a JSON {type(manifest).__name__}", "a JSON object")
    if manifest.get("suite") not in SUITES:
        raise _fail(f"suite {manifest.get('suite')!r} in {MANIFEST}", f"one of {list(SUITES)}")
    total = manifest.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise _fail(f"total {total!r} in {MANIFEST}", "a non-negative number of steps")
    tasks = manifest.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise _fail(f"tasks {tasks!r} in {MANIFEST}", "an object of task id -> {file, instruction}")
    for task, row in tasks.items():
        if not str(task).isdigit() or not isinstance(row, dict):
            raise _fail(f"task {task!r}: {row!r} in {MANIFEST}", "a task id and an object {file, instruction}")
        name = row.get("file")
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise _fail(f"file {name!r} for task {task} in {MANIFEST}", "a file name inside the directory")
        if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise _fail(f"instruction {row.get('instruction')!r} for task {task}", "the task's instruction")
        files.check_regular_file(directory / name, f"demos: task {task}'s file", "an HDF5 file of demonstrations")
    return manifest


def check_demo(demo: Any, where: str) -> dict[str, np.ndarray]:
    """The number datasets of one demonstration group (``where`` names it in errors), each checked."""
    index = demo.attrs.get("init_state_index")
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise _fail(f"init_state_index {index!r} in {where}", "the suite init state the demonstration starts from")
    arrays: dict[str, np.ndarray] = {}
    steps = None
    for name, width in NUMBERS.items():
        if name not in demo:
            raise _fail(f"{where} without {name}", f"the datasets {list(NUMBERS)} and {list(CAMERAS)}")
        values = np.asarray(demo[name][()])
        if values.ndim != 2 or values.shape[1] != width or values.dtype.kind not in "fiu":
            raise _fail(f"{name} of shape {values.shape} and dtype {values.dtype} in {where}",
                        f"(steps, {width}) numbers")
        if steps is None:
            steps = len(values)
            if steps == 0:
                raise _fail(f"an empty demonstration ({where})", "at least one step")
        if len(values) != steps:
            raise _fail(f"{len(values)} steps of {name} and {steps} of actions in {where}", "one row per step")
        if not np.isfinite(values).all():
            raise _fail(f"NaN or infinite values in {name} of {where}", "finite numbers")
        arrays[name] = values
    for name in CAMERAS:
        if name not in demo:
            raise _fail(f"{where} without {name}", f"the datasets {list(NUMBERS)} and {list(CAMERAS)}")
        shape, dtype = tuple(demo[name].shape), demo[name].dtype
        if len(shape) != 4 or shape[0] != steps or shape[3] != 3 or shape[1] != shape[2] or shape[1] < 16 or \
                dtype != np.uint8:
            raise _fail(f"{name} of shape {shape} and dtype {dtype} in {where}",
                        f"({steps}, size, size, 3) uint8 RGB frames, size >= 16")
    return arrays


def check_steps(counted: int, manifest: dict[str, Any]) -> None:
    """The steps of every demonstration add up to the manifest's total."""
    if counted != manifest["total"]:
        raise _fail(f"{counted} steps in the files", f"the manifest's total {manifest['total']}")


def num_demos(data: Any, where: str) -> int:
    """``data.attrs["num_demos"]``, checked against the ``demo_k`` groups the file holds."""
    value = data.attrs.get("num_demos")
    count = int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else -1
    if count < 1 or any(f"demo_{k}" not in data for k in range(count)):
        raise _fail(f"num_demos {value!r} in {where} (groups {sorted(data)[:5]})", "demo_0 .. demo_{num_demos - 1}")
    return count


def check_task_counts(row: dict[str, Any], task: str, demos: int, steps: int) -> None:
    """A task's ``num_demos`` and ``total`` in the manifest (when it states them) are what its file holds."""
    for field, counted in (("num_demos", demos), ("total", steps)):
        stated = row.get(field, counted)
        if stated != counted or isinstance(stated, bool):
            raise _fail(f"{field} {stated!r} for task {task} in {MANIFEST}", f"{counted}, what {row['file']} holds")
