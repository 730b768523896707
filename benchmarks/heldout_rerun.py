"""The held-out evaluation of a shipped LIBERO model re-run as ``make_libero_records.sh`` made it (100 episodes,
init states 40-49 of every libero_spatial task, 2 processes under torchrun): its wall time, and every record
against the committed one (all fields but the timings) -- as JSON.

    python benchmarks/heldout_rerun.py --model libero-spatial-causal --out benchmarks/results/cpu-libero-heldout.json

The committed records were made on another machine before frames were drawn only when read and resets stopped
rebuilding the scene; their per-episode timings give the earlier cost. A benchmark, not a test.
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
from vla_lab.libero.evaluate import TIMING_FIELDS, read_records, record_key, untimed

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "notebooks" / "records" / "libero-eval"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="libero-spatial-causal")
    parser.add_argument("--out", help="also write the JSON here (replaced)")
    args = parser.parse_args()
    committed = {record_key(r): r for r in read_records(RECORDS / args.model / "episodes.jsonl")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                   "vla_lab", "eval", "libero", "--model", args.model, "--suite", "libero_spatial", "--init-states",
                   "40:50", "--out", str(run), "--no-progress"]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        rerun = {record_key(r): r for r in read_records(run / "episodes.jsonl")}

    rows = [{"task": k[1], "init_state": k[2], "success": rerun[k]["success"], "steps": rerun[k]["steps"],
             "committed_success": committed[k]["success"], "committed_steps": committed[k]["steps"],
             "identical_to_committed": untimed(rerun[k]) == untimed(committed[k])} for k in sorted(committed)]
    earlier = sum(sum(r[f] for f in TIMING_FIELDS) for r in committed.values()) / 1e3
    result = {
        "command": f"python benchmarks/heldout_rerun.py --model {args.model}",
        "eval_command": " ".join(["torchrun", *command[3:]]).replace(str(run), "RUN"),
        "machine": {"cpu_model": cpu_model(), "cores": os.cpu_count(), "omp_num_threads": 1},
        "episodes": len(rows), "wall_s": round(wall, 1),
        "committed_episode_seconds_per_rank": round(earlier / 2, 1),
        "committed_episode_seconds_note": "sum of the committed records' reset + sim + policy times over 2 ranks "
                                          "(another machine; model loading and simulator construction not included)",
        "successes": sum(r["success"] for r in rows), "committed_successes": sum(r["committed_success"] for r in rows),
        "identical_to_committed": sum(r["identical_to_committed"] for r in rows),
        "same_outcome_as_committed": sum(r["success"] == r["committed_success"] for r in rows),
        "rows": rows,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
