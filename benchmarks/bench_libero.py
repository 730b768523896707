"""What a LIBERO evaluation costs here: simulator construction, reset, step and render, a policy query, an
episode, and episodes per hour with 1 and with 2 processes (``torchrun``) -- as JSON.

    python benchmarks/bench_libero.py --out benchmarks/results/cpu-libero.json

The episode runs are ``vla-lab eval libero --model tiny`` on ``--tasks`` with ``--max-steps`` (default
40) steps each, so the policy costs almost nothing and the numbers are the simulator's; the full-size
model's query is timed on its own (``--no-full-size`` skips it). A benchmark, not a test: nothing here
asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vla_lab import files
from vla_lab.config import VLAConfig
from vla_lab.model import random_model
from vla_lab.policy import Policy
from vla_lab.worlds import Observation
from vla_lab.worlds.libero import LiberoWorld
from vla_lab.worlds.libero.env import CAMERA, DUMMY_ACTION, MAX_STEPS, LiberoEnv
from vla_lab.worlds.libero.observation import prepare_observation

SUITE = "libero_spatial"
SUITE_MAX = MAX_STEPS[SUITE]


def _ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1e3, 1), "min_ms": round(min(values) * 1e3, 1),
            "max_ms": round(max(values) * 1e3, 1), "n": len(values)}


def _timed(call: Any, repeats: int) -> tuple[dict[str, float], Any]:
    """``call()`` ``repeats`` times: the timings (:func:`_ms`) and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return _ms(times), out


def simulator(steps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    result: dict[str, Any] = {}
    start = time.perf_counter()
    env = LiberoEnv(SUITE, 0)
    result["construct_s"] = round(time.perf_counter() - start, 2)
    with env:
        start = time.perf_counter()
        obs = env.reset(0)
        result["reset_with_settle_steps_s"] = round(time.perf_counter() - start, 2)
        result["step_two_cameras_256"], stepped = _timed(lambda: env.step(DUMMY_ACTION), steps)
        obs = obs if stepped is None else stepped[0]
        sim = env.env.sim
        result["render_one_camera_256"] = _timed(lambda: sim.render(256, 256, camera_name=CAMERA), 5)[0]
        result["physics_substep"] = _timed(sim.step, 5)[0]
        prepared = prepare_observation(obs)
        observation = Observation([prepared["full_image"], prepared["wrist_image"]], env.instruction,
                                  prepared["state"])
    with LiberoEnv(SUITE, 0, render=False) as physics:  # the scripted expert's simulator: no cameras
        physics.reset(0)
        result["step_physics_only"] = _timed(lambda: physics.step(DUMMY_ACTION), steps)[0]
        result["camera_images_both_256"] = _timed(physics.camera_images, 5)[0]
    return result, {"observation": observation}


def policy_query(preset: str, sample: dict[str, Any], repeats: int) -> dict[str, Any]:
    model = random_model(VLAConfig.preset(preset), seed=0).eval()
    policy = Policy(model, LiberoWorld(SUITE))
    policy.predict([sample["observation"]])  # warm-up
    return {"preset": preset, **_timed(lambda: policy.predict([sample["observation"]]), repeats)[0]}


def episodes(processes: int, tasks: str, max_steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = ["-m", "vla_lab", "eval", "libero", "--model", "tiny", "--suite", SUITE, "--tasks", tasks,
                   "--trials", "1", "--max-steps", str(max_steps), "--out", str(out), "--json", "--no-progress"]
        if processes > 1:
            command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *command]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        records = json.loads(proc.stdout)["episodes"]
    n = len(records)
    return {"processes": processes, "episodes": n, "max_steps": max_steps, "wall_s": round(wall, 1),
            "episodes_per_hour": round(n / wall * 3600, 1),
            "per_episode_s": [round(sum(r[k] for k in ("reset_ms", "sim_ms", "policy_ms")) / 1e3, 1) for r in records],
            "steps": [r["steps"] for r in records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON here (replaced)")
    parser.add_argument("--steps", type=int, default=20, help="simulator steps timed")
    parser.add_argument("--tasks", default="0,1", help="tasks of the episode runs (one episode each)")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--no-full-size", dest="full_size", action="store_false")
    args = parser.parse_args()
    sim, sample = simulator(args.steps)
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "mujoco_gl": os.environ.get("MUJOCO_GL")},
        "suite": SUITE, "simulator": sim,
        "policy_query": [policy_query("tiny", sample, 5)],
    }
    if args.full_size:
        result["policy_query"].append(policy_query("vla-adapter-pro-qwen2.5-0.5b", sample, 2))
    result["runs"] = [episodes(1, args.tasks, args.max_steps), episodes(2, args.tasks, args.max_steps)]
    step = sim["step_two_cameras_256"]["median_ms"] / 1e3
    queries = -(-SUITE_MAX // 8)
    result["projected_full_episode_s"] = {
        q["preset"]: round(sim["reset_with_settle_steps_s"] + SUITE_MAX * step + queries * q["median_ms"] / 1e3, 1)
        for q in result["policy_query"]
    }
    result["projection_rule"] = (f"reset + {SUITE_MAX} steps x median step + {queries} queries x median query "
                                 "(a failed libero_spatial episode; construction once per task is not counted)")
    text = files.dumps(result)
    print(text)
    if args.out:
        files.write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
