"""What a demonstration costs before and after issue 27, and that it did not change: the scripted expert's episodes
recorded (every step's frames, both cameras, 128 px) on a simulator rebuilt at every reset that draws both cameras
at every step (``LiberoEnv(reuse=False)``, the earlier path) and on today's (frames drawn from the simulator data
robosuite sampled, when read; resets replayed), alternating episode by episode; every array compared -- as JSON.

    python benchmarks/bench_demos.py --task 0 --init-states 0:3 --out benchmarks/results/cpu-libero-demos.json

A benchmark, not a test; one torch / OpenMP thread.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _report import emit

from vla_lab.bench.inference import cpu_model
from vla_lab.libero.demos import DEMO_RESOLUTION, record_demo
from vla_lab.worlds.libero.env import LiberoEnv

SUITE = "libero_spatial"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--init-states", default="0:3", help="A:B")
    parser.add_argument("--out", help="also write the JSON here (replaced)")
    args = parser.parse_args()
    lo, hi = (int(x) for x in args.init_states.split(":"))
    envs = {}
    build = {}
    for name, reuse in (("earlier", False), ("today", True)):
        start = time.perf_counter()
        envs[name] = LiberoEnv(SUITE, args.task, resolution=DEMO_RESOLUTION, reuse=reuse)
        build[name] = time.perf_counter() - start
    rows = []
    try:
        for init_state in range(lo, hi):
            row: dict = {"init_state": init_state}
            demos = {}
            for name, env in envs.items():
                start = time.perf_counter()
                demos[name] = record_demo(env, init_state)
                row[f"{name}_s"] = round(time.perf_counter() - start, 2)
            a, b = demos["earlier"], demos["today"]
            row["steps"] = a["steps"]
            row["success"] = bool(a["success"])
            row["identical"] = bool(a["steps"] == b["steps"] and a["arrays"].keys() == b["arrays"].keys() and all(
                np.array_equal(a["arrays"][k], b["arrays"][k]) for k in a["arrays"]))
            rows.append(row)
    finally:
        for env in envs.values():
            env.close()
    result = {
        "command": f"python benchmarks/bench_demos.py --task {args.task} --init-states {args.init_states}",
        "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "suite": SUITE, "task": args.task, "resolution": DEMO_RESOLUTION,
        "build_s": {k: round(v, 2) for k, v in build.items()},
        "seconds_per_episode": {name: round(float(np.mean([r[f"{name}_s"] for r in rows])), 2)
                                for name in envs},
        "seconds_per_episode_after_the_first": {name: round(float(np.mean([r[f"{name}_s"] for r in rows[1:]])), 2)
                                                for name in envs} if len(rows) > 1 else None,
        "identical": sum(r["identical"] for r in rows), "episodes": len(rows),
        "note": "each episode is the expert's (~110-170 steps after the 10 settle steps); both cameras are drawn "
                "for every stored step either way, so what changed is the reset (no rebuild after a task's first) "
                "and the settle steps' frames (not drawn)",
        "rows": rows,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
