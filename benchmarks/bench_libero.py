"""What a LIBERO evaluation costs here: simulator construction, reset, step and render, a policy query, an
episode, and episodes per hour with 1 and with 2 processes (``torchrun``) -- as JSON.

    python benchmarks/bench_libero.py --out benchmarks/results/cpu-libero.json

The episode runs are ``vla-lab eval libero --model tiny`` on ``--tasks`` with ``--max-steps`` (default
40) steps each, so the policy costs almost nothing and the numbers are the simulator's; the full-size
model's query is timed on its own (``--no-full-size`` skips it). A benchmark, not a test: nothing here
asserts on time.

    python benchmarks/bench_libero.py --compare-upstream --tasks 0,5 --init-states 45:47 --out FILE

runs upstream's evaluation loop and vla-lab's interleaved on the same episodes with the same model
(``--model``, default ``libero-spatial-causal``; ``upstream_loop.py``): episodes per hour of each, their ratio
(``speedup``) and each episode's success and steps in both.
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
from vla_lab.worlds.libero import LiberoWorld, keep_compiled
from vla_lab.worlds.libero.env import CAMERA, DUMMY_ACTION, LiberoEnv
from vla_lab.worlds.libero.observation import prepare_observation
from vla_lab.worlds.libero.suites import MAX_STEPS

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


def _build_and_reset(task: int) -> tuple[float, float]:
    """Seconds to build task ``task``'s simulator and to run its first reset (which rebuilds the scene)."""
    start = time.perf_counter()
    with LiberoEnv(SUITE, task) as env:
        built = time.perf_counter()
        env.reset(0)
        return round(built - start, 2), round(time.perf_counter() - built, 2)


def simulator(steps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    result: dict[str, Any] = {}
    # The last compiled scene kept (the default): the first build compiles it, its rebuild copies it, and a
    # simulator of another task of the suite (the same scene XML) copies it twice.
    start = time.perf_counter()
    env = LiberoEnv(SUITE, 0)
    result["construct_s"] = round(time.perf_counter() - start, 2)
    with env:
        start = time.perf_counter()
        obs = env.reset(0)
        result["first_reset_with_settle_steps_s"] = round(time.perf_counter() - start, 2)  # rebuilds the scene
        result["another_task_construct_s"], result["another_task_first_reset_s"] = _build_and_reset(1)
        result["reset_with_settle_steps"] = _timed(lambda: env.reset(1), 3)[0]  # replays the first reset
        result["step_observed_two_cameras_256"], stepped = _timed(lambda: env.step(DUMMY_ACTION), steps)
        result["step_unobserved"] = _timed(lambda: env.step(DUMMY_ACTION, observe=False), steps)[0]
        obs = obs if stepped is None else stepped[0]
        sim = env.env.sim
        result["render_one_camera_256"] = _timed(lambda: sim.render(256, 256, camera_name=CAMERA), 5)[0]
        result["physics_substep"] = _timed(sim.step, 5)[0]
        result["prepare_observation_both_256"], prepared = _timed(lambda: prepare_observation(obs), 5)
        observation = Observation([prepared["full_image"], prepared["wrist_image"]], env.instruction,
                                  prepared["state"])
    previous = keep_compiled(False)  # robosuite's way: the scene compiled from its XML at every build and rebuild
    try:
        result["construct_compiling_s"], result["first_reset_compiling_s"] = _build_and_reset(1)
        with LiberoEnv(SUITE, 0, reuse=False) as upstream:  # upstream's way: rebuilt every reset, drawn every step
            upstream.reset(0)
            result["upstream_reset_with_settle_steps"] = _timed(lambda: upstream.reset(1), 2)[0]
            result["upstream_step_two_cameras_256"] = _timed(lambda: upstream.step(DUMMY_ACTION), steps)[0]
    finally:
        keep_compiled(previous)
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
    parser.add_argument("--compare-upstream", action="store_true",
                        help="upstream's loop vs vla-lab's on --tasks x --init-states (nothing else is measured)")
    parser.add_argument("--init-states", default="45:47", help="A:B, the init states of --compare-upstream")
    parser.add_argument("--model", default="libero-spatial-causal", help="the model of --compare-upstream")
    parser.add_argument("--resolution", type=int, default=256, help="camera pixels of --compare-upstream")
    args = parser.parse_args()
    if args.compare_upstream:
        _write(compare_upstream(args), args.out)
        return
    sim, sample = simulator(args.steps)
    result: dict[str, Any] = {
        "machine": _machine(),
        "suite": SUITE, "simulator": sim,
        "policy_query": [policy_query("tiny", sample, 5)],
    }
    if args.full_size:
        result["policy_query"].append(policy_query("vla-adapter-pro-qwen2.5-0.5b", sample, 2))
    result["runs"] = [episodes(1, args.tasks, args.max_steps), episodes(2, args.tasks, args.max_steps)]
    ms = {name: sim[name]["median_ms"] / 1e3 for name in ("reset_with_settle_steps", "step_unobserved",
                                                          "step_observed_two_cameras_256",
                                                          "prepare_observation_both_256")}
    queries = -(-SUITE_MAX // 8)
    observe = ms["step_observed_two_cameras_256"] - ms["step_unobserved"] + ms["prepare_observation_both_256"]
    result["projected_full_episode_s"] = {
        q["preset"]: round(ms["reset_with_settle_steps"] + SUITE_MAX * ms["step_unobserved"]
                           + queries * (observe + q["median_ms"] / 1e3), 1)
        for q in result["policy_query"]
    }
    result["projection_rule"] = (f"reset + {SUITE_MAX} unobserved steps + {queries} x (drawing and preparing an "
                                 "observation + a query), all medians (a failed libero_spatial episode; "
                                 "construction and the first reset once per task are not counted)")
    _write(result, args.out)


def _machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "mujoco_gl": os.environ.get("MUJOCO_GL")}


def _write(result: dict[str, Any], out: str | None) -> None:
    text = files.dumps(result)
    print(text)
    if out:
        files.write_text(out, text + "\n")


def compare_upstream(args: argparse.Namespace) -> dict[str, Any]:
    from upstream_loop import compare

    from vla_lab import registry
    from vla_lab.bench.inference import cpu_model

    start, stop = (int(x) for x in args.init_states.split(":"))
    tasks = [int(t) for t in args.tasks.split(",")]
    model = registry.create(args.model)
    result = compare(model, SUITE, tasks, list(range(start, stop)), args.resolution)
    command = (f"python benchmarks/bench_libero.py --compare-upstream --tasks {args.tasks} --init-states "
               f"{args.init_states} --model {args.model} --resolution {args.resolution}")
    return {"command": command, "model": args.model,
            "machine": {**_machine(), "cpu_model": cpu_model(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
            **result}


if __name__ == "__main__":
    main()
