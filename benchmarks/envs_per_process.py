"""``eval libero --envs-per-process N`` against one environment at a time, in the same run: the same held-out
episodes of a shipped model evaluated both ways (two processes side by side, one core each), every record compared
(all fields but the timings), and each way's episodes per hour -- as JSON.

    python benchmarks/envs_per_process.py --envs-per-process 4 --init-states 40:42 \\
        --out benchmarks/results/cpu-libero-envs-per-process.json

On CPU the batched query buys little (the policy is ~3 % of an episode); the point here is that the records do not
change. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import emit

from vla_lab.bench.inference import cpu_model
from vla_lab.libero.evaluate import read_records, record_key, untimed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="libero-spatial-causal")
    parser.add_argument("--envs-per-process", dest="envs", type=int, default=4)
    parser.add_argument("--init-states", default="40:42", help="A:B of every libero_spatial task")
    parser.add_argument("--out", help="also write the JSON here (replaced)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    with tempfile.TemporaryDirectory() as tmp:
        commands, procs, walls = {}, {}, {}
        for n in (1, args.envs):
            commands[n] = [sys.executable, "-m", "vla_lab", "eval", "libero", "--model", args.model, "--suite",
                           "libero_spatial", "--init-states", args.init_states, "--envs-per-process", str(n),
                           "--out", str(Path(tmp) / f"n{n}"), "--no-progress"]
        starts = {}
        for n, command in commands.items():
            starts[n] = time.perf_counter()
            procs[n] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for n, proc in procs.items():
            _, err = proc.communicate()
            walls[n] = time.perf_counter() - starts[n]
            if proc.returncode != 0:
                raise SystemExit(err[-2000:])
        runs = {n: {record_key(r): r for r in read_records(Path(tmp) / f"n{n}" / "episodes.jsonl")} for n in commands}

    one, many = runs[1], runs[args.envs]
    rows = [{"task": k[1], "init_state": k[2],
             "one": {f: one[k][f] for f in ("success", "steps", "queries")},
             "together": {f: many[k][f] for f in ("success", "steps", "queries")},
             "identical": untimed(one[k]) == untimed(many[k])} for k in sorted(one)]
    result = {
        "command": f"python benchmarks/envs_per_process.py --envs-per-process {args.envs} --init-states "
                   f"{args.init_states} --model {args.model}",
        "eval_commands": {str(n): " ".join(["python", *c[1:]]).replace(tmp, "TMP") for n, c in commands.items()},
        "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "omp_num_threads": 1, "num_threads": 1},
        "envs_per_process": args.envs, "episodes": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "wall_s": {str(n): round(w, 1) for n, w in walls.items()},
        "episodes_per_hour": {str(n): round(len(rows) * 3600 / w, 1) for n, w in walls.items()},
        "note": "both ways ran at the same time, one process each on a 2-core machine; wall times include loading "
                "the model and building the simulators",
        "rows": rows,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
