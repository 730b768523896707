"""Scripted demonstrations in LIBERO's own HDF5 layout (``vla-lab libero demos``).

The expert (:mod:`vla_lab.worlds.libero.expert`) runs on a simulator that renders both cameras at ``resolution``
(LIBERO's own datasets use 128 px); every successful episode becomes a demonstration, failures are only
recorded. The run is :func:`vla_lab.libero.evaluate.run_episodes`'s: sharded round robin over torchrun
ranks, resumable, with ``episodes.jsonl`` / ``results.json`` saying which init states succeeded. Each kept
episode is first written whole to ``parts/`` (one small HDF5 file per episode, moved into place when
complete); when every episode has run, rank 0 gathers them into one file per task, ``<task name>_demo.hdf5``,
laid out as LIBERO's ``scripts/create_dataset.py`` writes it:

* ``data`` attributes: ``env_name``, ``env_args`` (JSON: ``type``, ``env_name``, ``problem_name``,
  ``bddl_file``, ``env_kwargs``: the keyword arguments of ``TASK_MAPPING[problem_name]``, the raw
  environment, with the controller's full ``controller_configs``), ``problem_info`` (JSON), ``bddl_file_name``,
  ``bddl_file_content``,
  ``macros_image_convention`` (``"opengl"``: images are stored upside down, as MuJoCo renders them),
  ``num_demos``, ``total``;
* ``data/demo_k`` (k = 0, 1, ... in init-state order): ``actions`` (T, 7), ``states`` (T, ...), ``robot_states``
  (T, 9), ``rewards`` and ``dones`` (T, uint8, 1 at the last step), ``obs/agentview_rgb`` and
  ``obs/eye_in_hand_rgb`` (T, H, W, 3 uint8), ``obs/ee_pos``, ``obs/ee_ori`` (axis-angle), ``obs/ee_states``,
  ``obs/gripper_states``, ``obs/joint_states``; attributes ``num_samples``, ``model_file`` (the scene's XML) and
  ``init_state`` (the flattened simulator state of step 0).

Step ``t`` holds the observation the expert chose action ``t`` on (after the settle steps of
:meth:`~vla_lab.worlds.libero.env.LiberoEnv.reset`). Two additions that LIBERO's readers ignore: ``target_pos``
(T, 3), the position of the object to pick (privileged state, for auxiliary losses), and the attributes
``init_state_index`` / ``target_object`` / ``env_seed``. Images are gzip-compressed (HDF5's standard filter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla_lab import files, parallel
from vla_lab.errors import InputError, error_text
from vla_lab.libero.evaluate import EpisodeKey, one_at_a_time, run_dir, run_episodes
from vla_lab.run_dir import RunDir
from vla_lab.worlds.base import Episode
from vla_lab.worlds.libero.env import LiberoEnv, task_info
from vla_lab.worlds.libero.expert import FAILED, run_expert_episode
from vla_lab.worlds.libero.observation import quat2axisangle
from vla_lab.worlds.libero.world import LiberoWorld

#: Render resolution of the demonstrations (both cameras), LIBERO's own.
DEMO_RESOLUTION = 128
PARTS_DIR, MANIFEST = "parts", "demos.json"
DEMOS_KIND = "libero-demos"
IMAGE_KEYS = {"agentview_rgb": "agentview_image", "eye_in_hand_rgb": "robot0_eye_in_hand_image"}


def _require_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise InputError("h5py: got no h5py, expected it installed: pip install -e '.[libero]'") from None
    return h5py


def demo_file_name(task_name: str) -> str:
    """LIBERO's name for a task's demonstration file."""
    return f"{task_name}_demo.hdf5"


def part_name(task: int, init_state: int) -> str:
    return f"task{task:02d}_init{init_state:02d}.hdf5"


def record_demo(env: LiberoEnv, init_state: int, max_steps: int | None = None) -> dict[str, Any]:
    """Run the expert from ``init_state`` on a rendering ``env``; the result of
    :func:`~vla_lab.worlds.libero.expert.run_expert_episode` plus ``arrays``, the demonstration's datasets."""
    if not env.render_cameras:
        raise InputError("env: got a LiberoEnv without cameras (render=False), expected one that renders")
    observations: list[dict[str, Any]] = []
    result = run_expert_episode(env, init_state, max_steps, observations=observations)
    steps = result["steps"]
    target = env.target_objects[0]

    def stack(key: str) -> np.ndarray:
        return np.stack([np.asarray(o[key]) for o in observations[:steps]])

    ee_pos = stack("robot0_eef_pos")
    ee_ori = np.stack([quat2axisangle(np.asarray(o["robot0_eef_quat"])) for o in observations[:steps]])
    gripper = stack("robot0_gripper_qpos")
    rewards = np.zeros(steps, dtype=np.uint8)
    if steps:
        rewards[-1] = 1
    arrays: dict[str, np.ndarray] = {
        "actions": np.asarray(result["actions"], dtype=np.float64),
        "states": np.asarray(result["states"][:steps]),
        "robot_states": np.concatenate([gripper, ee_pos, stack("robot0_eef_quat")], axis=1),
        "rewards": rewards,
        "dones": rewards.copy(),
        "target_pos": stack(f"{target}_pos"),
        "obs/ee_pos": ee_pos,
        "obs/ee_ori": ee_ori,
        "obs/ee_states": np.concatenate([ee_pos, ee_ori], axis=1),
        "obs/gripper_states": gripper,
        "obs/joint_states": stack("robot0_joint_pos"),
    }
    for name, key in IMAGE_KEYS.items():
        arrays[f"obs/{name}"] = stack(key).astype(np.uint8)
    return {**result, "arrays": arrays, "target_object": target}


def write_part(path: Path, demo: dict[str, Any], env: LiberoEnv, init_state: int) -> None:
    """One demonstration as ``demo`` group of a small HDF5 file, written beside ``path`` and moved into place."""
    h5py = _require_h5py()
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(temp, "w") as f:
            group = f.create_group("demo")
            for name, values in demo["arrays"].items():
                image = name.endswith("_rgb")
                group.create_dataset(name, data=values, compression="gzip" if image else None,
                                     compression_opts=4 if image else None,
                                     chunks=(1, *values.shape[1:]) if image else None)
            group.attrs["num_samples"] = int(demo["steps"])
            group.attrs["model_file"] = env.model_xml
            group.attrs["init_state"] = demo["arrays"]["states"][0]
            group.attrs["init_state_index"] = int(init_state)
            group.attrs["target_object"] = demo["target_object"]
            group.attrs["env_seed"] = int(env.seed)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _data_attributes(env: LiberoEnv, resolution: int) -> dict[str, Any]:
    """The ``data`` group's attributes, as LIBERO's dataset script sets them."""
    import robosuite
    from libero.libero.envs.bddl_utils import get_problem_info

    problem_info = get_problem_info(env.bddl_file)
    # The raw environment's keyword arguments (TASK_MAPPING[problem_name](**env_kwargs), as LIBERO's dataset script
    # builds it): those LIBERO's OffScreenRenderEnv passed when it built the simulator the expert ran in, with the
    # controller as its full configuration rather than the wrapper's controller name.
    controller = robosuite.load_controller_config(default_controller="OSC_POSE")
    env_kwargs = {"bddl_file_name": env.bddl_file, "robots": ["Panda"], "controller_configs": controller,
                  "gripper_types": "default", "initialization_noise": None, "use_camera_obs": True,
                  "has_renderer": False, "has_offscreen_renderer": True, "render_camera": "frontview",
                  "render_collision_mesh": False, "render_visual_mesh": True, "render_gpu_device_id": -1,
                  "control_freq": 20, "horizon": 1000, "ignore_done": False, "hard_reset": True,
                  "camera_names": ["agentview", "robot0_eye_in_hand"], "camera_heights": resolution,
                  "camera_widths": resolution, "camera_depths": False, "camera_segmentations": None,
                  "renderer": "mujoco", "renderer_config": None}
    env_name = type(env.env.env).__name__
    env_args = {"type": 1, "env_name": env_name, "problem_name": problem_info["problem_name"],
                "bddl_file": env.bddl_file, "env_kwargs": env_kwargs}
    return {"env_name": env_name, "env_args": json.dumps(env_args), "problem_info": json.dumps(problem_info),
            "bddl_file_name": env.bddl_file, "bddl_file_content": Path(env.bddl_file).read_text(encoding="utf-8"),
            "macros_image_convention": "opengl"}


def assemble(out: Path, suite: str, keys: Sequence[EpisodeKey], records: Sequence[dict[str, Any]],
             resolution: int, seed: int) -> dict[str, Any]:
    """Gather the parts of the successful episodes into one LIBERO file per task; the manifest."""
    h5py = _require_h5py()
    kept = {(int(r["task"]), int(r["init_state"])) for r in records if r.get("kept")}
    tasks: dict[str, Any] = {}
    for task in sorted({k[1] for k in keys}):
        info = task_info(suite, task)
        parts = [(i, out / PARTS_DIR / part_name(task, i)) for (t, i) in sorted(kept) if t == task]
        missing = [str(p) for _, p in parts if not p.exists()]
        if missing:
            raise InputError(f"{PARTS_DIR}: got no file {missing[0]}, expected a part for every kept episode "
                             "(run again with --resume)")
        path = out / demo_file_name(info["task_name"])
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        total = 0
        try:
            with LiberoEnv(suite, task, resolution=resolution, seed=seed, render=False) as env, \
                    h5py.File(temp, "w") as f:
                data = f.create_group("data")
                for name, value in _data_attributes(env, resolution).items():
                    data.attrs[name] = value
                for k, (_, part) in enumerate(parts):
                    with h5py.File(part, "r") as source:
                        source.copy(source["demo"], data, name=f"demo_{k}")
                        total += int(source["demo"].attrs["num_samples"])
                data.attrs["num_demos"] = len(parts)
                data.attrs["total"] = total
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        tasks[str(task)] = {"task_name": info["task_name"], "instruction": info["instruction"],
                            "file": path.name, "num_demos": len(parts), "total": total,
                            "init_states": [i for i, _ in parts]}
    return {"suite": suite, "resolution": resolution, "seed": seed, "tasks": tasks,
            "num_demos": sum(t["num_demos"] for t in tasks.values()),
            "total": sum(t["total"] for t in tasks.values())}


def demos_run_dir(out: str | Path) -> RunDir:
    """The run directory of ``libero demos``: an evaluation run's files plus ``parts/``, the per-task
    ``*_demo.hdf5`` files and ``demos.json``."""
    return run_dir(out, DEMOS_KIND, markers=(PARTS_DIR, "*_demo.hdf5", MANIFEST),
                   records=(f"{PARTS_DIR}/*", "*_demo.hdf5", MANIFEST))


def generate(
    suite: str,
    keys: Sequence[EpisodeKey],
    out: str | Path,
    *,
    resolution: int = DEMO_RESOLUTION,
    max_steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    ranks: parallel.Ranks | None = None,
) -> dict[str, Any]:
    """Expert demonstrations of the episodes ``keys`` in the run directory ``out``; the manifest (also written
    to ``out/demos.json``) with the run's summary (:func:`vla_lab.libero.evaluate.summarize`) under ``run``."""
    ranks = parallel.Ranks() if ranks is None else ranks
    out = Path(out)
    parts = out / PARTS_DIR
    settings = {"model": "scripted expert", "max_steps": max_steps, "resolution": int(resolution)}

    def episode(suite_world: LiberoWorld, key: Episode, frames: Any) -> dict[str, Any]:
        try:
            env, init_state = suite_world.simulator(key), int(key.key[2])
            demo = record_demo(env, init_state, max_steps)
            if demo["success"]:
                parts.mkdir(parents=True, exist_ok=True)
                write_part(parts / part_name(env.task_id, init_state), demo, env, init_state)
        except Exception as exc:
            return {**FAILED, "kept": False, "error": error_text(exc)}
        fields = {k: v for k, v in demo.items() if k not in ("actions", "states", "arrays", "target_object")}
        return {**fields, "kept": bool(demo["success"]), "error": None}

    summary = run_episodes(one_at_a_time(episode), keys, out, settings, failed={**FAILED, "kept": False}, seed=seed,
                           resolution=resolution, resume=resume, overwrite=overwrite, progress=progress,
                           ranks=ranks, run=demos_run_dir(out))
    manifest: dict[str, Any] = {}
    if ranks.is_main:
        manifest = assemble(out, suite, keys, summary["episodes"], int(resolution), seed)
        manifest["run"] = {k: v for k, v in summary.items() if k != "episodes"}
        files.write_json(out / MANIFEST, manifest)
    parallel.barrier(ranks)
    if not ranks.is_main:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    return manifest
